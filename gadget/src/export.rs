//! `qbkit-gadget export usbip://HOST[:PORT]`: the device-side connect of USB/IP ("exporting
//! devices"). The gadget is bound to a `usbip-vudc` UDC instead of a hardware one; this task dials
//! the laptop's `qbkit-host run --transport usbip-listen://…`, offers the board with
//! OP_REQ_EXPORT and hands the accepted socket to the kernel (vudc's `usbip_sockfd`), which then
//! answers the laptop's URBs exactly as a USB controller would. For a board that can open a
//! connection out but cannot be reached (a remote lab, a customer network).
//!
//! # Theory of operation
//!
//! ```text
//!  wait until the vudc is usable: dev_desc readable (gadget bound, pulled up), usbip_status = 1
//!  → DeviceInfo from dev_desc + current_speed (busid = the UDC's name, as usbipd --device does)
//!  → TCP connect, OP_REQ_EXPORT, OP_REP_EXPORT (exactly 12 bytes read; the URBs after it are
//!    the kernel's) → write the socket's fd to usbip_sockfd, close ours (the kernel holds its own)
//!  → watch usbip_status: 2 (used) while the connection lives; back to 1 when the kernel dropped
//!    it (the laptop went away, the network broke) → dial again, with capped exponential backoff
//!  teardown (`qbkit-gadget export --stop`, `teardown`, SIGTERM): OP_REQ_UNEXPORT on a new
//!  connection, then usbip_sockfd = -1 if the kernel still holds the socket.
//! ```
//!
//! The vudc's sysfs attributes have no change notification, so the watch reads `usbip_status`
//! twice a second: a 2-byte read, and the only cost of an idle export.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qbkit_link::Backoff;
use qbkit_link::auth::{AuthRole, LinkKey};
use qbkit_usbip::{DeviceInfo, Speed};

/// Where the board exports itself: the laptop's `usbip-listen://` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTarget {
    /// Host name or address.
    pub host: String,
    /// TCP port (3240 by default).
    pub port: u16,
}

impl ExportTarget {
    /// Parses `usbip://HOST[:PORT]`.
    pub fn parse(url: &str) -> Result<Self, qbkit_usbip::transport::TransportError> {
        let (host, port) = qbkit_usbip::transport::parse_export(url)?;
        Ok(Self { host, port })
    }
}

impl std::fmt::Display for ExportTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "usbip://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "usbip://{}:{}", self.host, self.port)
        }
    }
}

/// The UDCs the `usbip-vudc` module created, by name.
const VUDC_PREFIX: &str = "usbip-vudc.";
const UDC_CLASS: &str = "/sys/class/udc";
/// Bounds of one export or unexport exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of the unexport at teardown: long enough for a tunnel's new connection, short enough
/// for a service stop.
const UNEXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The first `usbip-vudc.N` UDC, for `export` without `--udc`.
pub fn default_vudc() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(UDC_CLASS)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(VUDC_PREFIX))
        .collect();
    names.sort();
    names.into_iter().next()
}

/// The vudc's `usbip_status` (kernel `enum usbip_device_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VudcStatus {
    /// Ready for a socket.
    Available,
    /// A socket is attached.
    Used,
    /// The kernel marked the device unusable.
    Error,
}

/// Parses `usbip_status` ("1\n", "2\n", "3\n").
pub fn parse_status(text: &str) -> Option<VudcStatus> {
    match text.trim() {
        "1" => Some(VudcStatus::Available),
        "2" => Some(VudcStatus::Used),
        "3" => Some(VudcStatus::Error),
        _ => None,
    }
}

/// The record OP_REQ_EXPORT carries, from the vudc's cached device descriptor (`dev_desc`, 18
/// bytes, little-endian) and the UDC's `current_speed`, filled the way `usbipd --device` fills it
/// (bus and device number 0, bus id = the UDC's name).
pub fn device_info(
    udc: &str,
    path: &Path,
    dev_desc: &[u8],
    current_speed: &str,
) -> Option<DeviceInfo> {
    // bLength 18, bDescriptorType 1 (device).
    if dev_desc.len() < 18 || dev_desc[0] != 18 || dev_desc[1] != 1 {
        return None;
    }
    let le = |at: usize| u16::from_le_bytes([dev_desc[at], dev_desc[at + 1]]);
    let speed = match current_speed.trim() {
        "low-speed" => Speed::Low,
        "full-speed" => Speed::Full,
        "super-speed" => Speed::Super,
        "super-speed-plus" => Speed::SuperPlus,
        // vudc reports what the gadget asked for; high speed is its own default.
        _ => Speed::High,
    };
    Some(DeviceInfo {
        path: path.to_string_lossy().into_owned(),
        busid: udc.to_owned(),
        busnum: 0,
        devnum: 0,
        speed,
        vendor_id: le(8),
        product_id: le(10),
        bcd_device: le(12),
        class: dev_desc[4],
        subclass: dev_desc[5],
        protocol: dev_desc[6],
        configuration_value: 0,
        num_configurations: dev_desc[17],
        num_interfaces: 0,
        interfaces: Vec::new(),
    })
}

/// The sysfs files of one vudc.
#[derive(Debug, Clone)]
struct Vudc {
    name: String,
    /// The platform device (`/sys/devices/platform/usbip-vudc.N`).
    dev: PathBuf,
    class: PathBuf,
}

impl Vudc {
    fn new(name: &str) -> Self {
        let class = Path::new(UDC_CLASS).join(name);
        let dev =
            std::fs::canonicalize(class.join("device")).unwrap_or_else(|_| class.join("device"));
        Self {
            name: name.to_owned(),
            dev,
            class,
        }
    }

    fn status(&self) -> Option<VudcStatus> {
        parse_status(&std::fs::read_to_string(self.dev.join("usbip_status")).ok()?)
    }

    /// The export record once the gadget is bound and pulled up (`dev_desc` readable).
    fn device(&self) -> Option<DeviceInfo> {
        let desc = std::fs::read(self.dev.join("dev_desc")).ok()?;
        let speed = std::fs::read_to_string(self.class.join("current_speed")).unwrap_or_default();
        device_info(&self.name, &self.dev, &desc, &speed)
    }

    /// Gives the kernel the connected socket (`usbip_sockfd`); our descriptor is closed after,
    /// the kernel keeps its own reference.
    fn attach(&self, stream: tokio::net::TcpStream) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        std::fs::write(
            self.dev.join("usbip_sockfd"),
            stream.as_raw_fd().to_string(),
        )
    }

    fn detach(&self) -> std::io::Result<()> {
        std::fs::write(self.dev.join("usbip_sockfd"), "-1")
    }
}

/// One exchange with the application side on a new connection: connect, authenticate with `key`
/// when there is one (the laptop's usbip-listen off loopback requires it), then OP_REQ_EXPORT
/// (or OP_REQ_UNEXPORT) and its reply. Returns the socket, for the kernel after an export.
async fn exchange(
    target: &ExportTarget,
    device: &DeviceInfo,
    key: Option<&LinkKey>,
    unexport: bool,
    limit: Duration,
) -> Result<tokio::net::TcpStream, String> {
    let name = target.to_string();
    let steps = async {
        let mut s = qbkit_usbip::export::connect(&target.host, target.port, &name)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(key) = key {
            qbkit_link::auth::authenticate_stream(&mut s, AuthRole::Initiator, key)
                .await
                .map_err(|e| format!("{name}: link authentication failed: {e}"))?;
        }
        qbkit_usbip::export::request(&mut s, &name, device, unexport)
            .await
            .map_err(|e| e.to_string())?;
        Ok(s)
    };
    let what = if unexport { "unexport" } else { "export" };
    tokio::time::timeout(limit, steps)
        .await
        .unwrap_or_else(|_| Err(format!("{what} to {name} timed out after {limit:?}")))
}

/// Exports the board on `udc` to `target` and keeps it exported (redialling with backoff) until
/// the task is aborted. Logs each change of state once.
pub async fn run(target: ExportTarget, udc: String, key: Option<LinkKey>) {
    let dev = Vudc::new(&udc);
    let mut backoff = Backoff::new(target.to_string(), MIN_BACKOFF, MAX_BACKOFF);
    loop {
        let ready = (dev.status() == Some(VudcStatus::Available))
            .then(|| dev.device())
            .flatten();
        let Some(device) = ready else {
            // Not bound or pulled up yet, or the kernel still tears down the last connection.
            tokio::time::sleep(WATCH_INTERVAL).await;
            continue;
        };
        let exported = exchange(&target, &device, key.as_ref(), false, EXCHANGE_TIMEOUT).await;
        let failure = match exported {
            Ok(stream) => match dev.attach(stream) {
                Ok(()) => {
                    tracing::info!(%target, %udc, "board exported; the laptop drives it now");
                    backoff.up();
                    while dev.status() == Some(VudcStatus::Used) {
                        tokio::time::sleep(WATCH_INTERVAL).await;
                    }
                    // A connection the laptop drops at once is paced like a failed export.
                    let wait = backoff.down("the exported connection ended");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => format!("handing the socket to {udc}/usbip_sockfd: {e}"),
            },
            Err(e) => e,
        };
        tokio::time::sleep(backoff.failed(&failure)).await;
    }
}

/// Withdraws the export (teardown): OP_REQ_UNEXPORT to `target`, then releases the kernel's
/// socket if it still holds one. Failures are logged; teardown goes on.
pub async fn unexport(target: &ExportTarget, udc: &str, key: Option<&LinkKey>) {
    let dev = Vudc::new(udc);
    if dev.status() != Some(VudcStatus::Used) {
        return;
    }
    if let Some(device) = dev.device() {
        match exchange(target, &device, key, true, UNEXPORT_TIMEOUT).await {
            Ok(_) => tracing::info!(%target, "unexported"),
            Err(e) => tracing::warn!(error = %e, "unexport failed; releasing the socket locally"),
        }
    }
    if dev.status() == Some(VudcStatus::Used)
        && let Err(e) = dev.detach()
    {
        tracing::debug!(error = %e, "usbip_sockfd = -1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: [u8; 18] = [
        18, 1, 0x10, 0x02, 0xef, 0x02, 0x01, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1,
    ];

    #[test]
    fn device_record_from_dev_desc() {
        let d = device_info(
            "usbip-vudc.0",
            Path::new("/sys/devices/platform/usbip-vudc.0"),
            &DESC,
            "high-speed\n",
        )
        .unwrap();
        assert_eq!(
            (d.vendor_id, d.product_id, d.bcd_device),
            (0x1209, 0x0001, 0x0100)
        );
        assert_eq!((d.class, d.subclass, d.protocol), (0xef, 2, 1));
        assert_eq!(d.busid, "usbip-vudc.0");
        assert_eq!(d.speed, Speed::High);
        assert_eq!(d.num_configurations, 1);
        assert_eq!(
            device_info("v", Path::new("/"), &DESC, "super-speed")
                .unwrap()
                .speed,
            Speed::Super
        );
        assert!(device_info("v", Path::new("/"), &DESC[..17], "").is_none());
        let mut bad = DESC;
        bad[1] = 2;
        assert!(device_info("v", Path::new("/"), &bad, "").is_none());
    }

    #[test]
    fn status_texts() {
        assert_eq!(parse_status("1\n"), Some(VudcStatus::Available));
        assert_eq!(parse_status("2"), Some(VudcStatus::Used));
        assert_eq!(parse_status("3\n"), Some(VudcStatus::Error));
        assert_eq!(parse_status(""), None);
        assert_eq!(parse_status("x"), None);
    }

    #[test]
    fn targets() {
        let t = ExportTarget::parse("usbip://laptop:4000").unwrap();
        assert_eq!(t.to_string(), "usbip://laptop:4000");
        assert_eq!(
            ExportTarget::parse("usbip://[fd00::1]")
                .unwrap()
                .to_string(),
            "usbip://[fd00::1]:3240"
        );
        assert!(ExportTarget::parse("usbip://laptop/1-1").is_err());
    }
}
