//! Finding boards: which attached USB devices are qbkit boards, what `qbkit-host list` shows about
//! them, and which interface and endpoints of a board carry the bundles.
//!
//! Data flow: `nusb::list_devices` → [`DeviceFilter::matches`] (VID:PID, serial, and a vendor-class
//! interface when the OS lists interfaces) → [`Board`] (the nusb handle plus a [`BoardInfo`]
//! summary). [`VendorInterface::find`] reads the interface and the bulk endpoints from a
//! configuration descriptor; it is pure and tested on raw descriptor bytes.

use nusb::descriptors::{ConfigurationDescriptor, TransferType};
use nusb::transfer::Direction;
use nusb::{DeviceInfo, Speed};
use serde::Serialize;

use shared_frame::usb_id;

use super::UsbError;

/// Interface class of the board's network interface (vendor specific).
const VENDOR_CLASS: u8 = usb_id::INTERFACE_CLASS.0;

/// Which devices count as boards.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceFilter {
    /// USB vendor ID.
    pub vid: u16,
    /// USB product ID.
    pub pid: u16,
    /// Serial number (`--serial`); `None` accepts any.
    pub serial: Option<String>,
    /// Where it is plugged in (`--bus-path`, the [`BoardInfo::bus_path`] form); `None` accepts any.
    /// Tells apart two attachments of one board, e.g. the original and its USB/IP (vhci) import.
    pub bus_path: Option<String>,
}

impl Default for DeviceFilter {
    fn default() -> Self {
        Self {
            vid: usb_id::VID,
            pid: usb_id::PID,
            serial: None,
            bus_path: None,
        }
    }
}

impl DeviceFilter {
    /// The default IDs with an optional serial number.
    pub fn new(vid: u16, pid: u16, serial: Option<String>) -> Self {
        Self {
            vid,
            pid,
            serial,
            bus_path: None,
        }
    }

    /// Only the board plugged in at `bus_path` (`None`: anywhere).
    #[must_use]
    pub fn with_bus_path(mut self, bus_path: Option<String>) -> Self {
        self.bus_path = bus_path;
        self
    }

    /// Pure matching rule. `interface_classes` is empty when the OS does not list interfaces (an
    /// unconfigured device, or a platform that lists none); then the IDs decide alone and opening
    /// checks for the vendor interface.
    pub fn matches_ids(
        &self,
        vid: u16,
        pid: u16,
        serial: Option<&str>,
        interface_classes: &[u8],
    ) -> bool {
        vid == self.vid
            && pid == self.pid
            && self
                .serial
                .as_deref()
                .is_none_or(|want| serial == Some(want))
            && (interface_classes.is_empty() || interface_classes.contains(&VENDOR_CLASS))
    }

    /// Whether an enumerated device is a matching board.
    pub fn matches(&self, d: &DeviceInfo) -> bool {
        let classes: Vec<u8> = d.interfaces().map(nusb::InterfaceInfo::class).collect();
        self.matches_ids(d.vendor_id(), d.product_id(), d.serial_number(), &classes)
            && self
                .bus_path
                .as_deref()
                .is_none_or(|want| bus_path(d) == want)
    }
}

/// What a board is doing, as far as this program can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BoardState {
    /// Not probed (listing without opening).
    Unknown,
    /// This user can open and claim it.
    Ready,
    /// Another program holds the interface (typically a running `qbkit-host run`).
    InUse,
    /// The OS denied access (Linux: udev rule missing).
    NoPermission,
    /// Windows: WinUSB is not bound.
    NoDriver,
    /// Opening failed otherwise (see logs).
    Error,
}

/// One board as `qbkit-host list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BoardInfo {
    /// USB vendor ID.
    pub vid: u16,
    /// USB product ID.
    pub pid: u16,
    /// Serial number string, when the device has one.
    pub serial: Option<String>,
    /// Product string, when known without opening the device.
    pub product: Option<String>,
    /// Negotiated speed: `low`, `full`, `high`, `super`, `super-plus`.
    pub speed: Option<&'static str>,
    /// Where it is plugged in: `BUS-PORT.PORT…` (the Linux sysfs name; same form on every OS).
    pub bus_path: String,
    /// What the board is doing.
    pub state: BoardState,
}

/// A discovered board: the nusb handle to open it plus its summary.
#[derive(Debug, Clone)]
pub struct Board {
    pub(crate) device: DeviceInfo,
    info: BoardInfo,
}

impl Board {
    pub(crate) fn new(device: DeviceInfo) -> Self {
        let info = BoardInfo {
            vid: device.vendor_id(),
            pid: device.product_id(),
            serial: device.serial_number().map(str::to_owned),
            product: device.product_string().map(str::to_owned),
            speed: device.speed().map(speed_name),
            bus_path: bus_path(&device),
            state: BoardState::Unknown,
        };
        Self { device, info }
    }

    /// The summary.
    pub fn info(&self) -> &BoardInfo {
        &self.info
    }

    /// The OS's identity of this attachment (changes on every replug).
    pub fn id(&self) -> nusb::DeviceId {
        self.device.id()
    }

    /// Opens and claims the board briefly to fill in [`BoardInfo::state`]; a board that another
    /// program serves shows as [`BoardState::InUse`], and the probe does not disturb it.
    pub async fn probe(&mut self) -> BoardState {
        let state = match super::link::open_and_claim(self, true).await {
            Ok(_) => BoardState::Ready,
            Err(UsbError::Busy { .. }) => BoardState::InUse,
            Err(UsbError::PermissionDenied { .. }) => BoardState::NoPermission,
            Err(UsbError::DriverMissing { .. }) => BoardState::NoDriver,
            Err(e) => {
                tracing::debug!(error = %e, path = %self.info.bus_path, "probe failed");
                BoardState::Error
            }
        };
        self.info.state = state;
        state
    }
}

/// All attached boards that match `filter`, in bus order. `probe` opens each one to fill in its
/// state (for `qbkit-host list`).
pub async fn list_boards(filter: &DeviceFilter, probe: bool) -> Result<Vec<Board>, UsbError> {
    let devices = nusb::list_devices()
        .await
        .map_err(|source| UsbError::ListDevices { source })?;
    let mut boards: Vec<Board> = devices
        .filter(|d| filter.matches(d))
        .map(Board::new)
        .collect();
    boards.sort_by(|a, b| a.info.bus_path.cmp(&b.info.bus_path));
    if probe {
        for b in &mut boards {
            b.probe().await;
        }
    }
    Ok(boards)
}

/// Picks the one board to serve: the only match, or an error naming the fix.
pub(crate) fn choose(filter: &DeviceFilter, mut boards: Vec<Board>) -> Result<Board, UsbError> {
    match boards.len() {
        0 => Err(UsbError::NotFound {
            vid: filter.vid,
            pid: filter.pid,
            serial: filter.serial.clone(),
        }),
        1 => Ok(boards.remove(0)),
        _ => Err(UsbError::Ambiguous {
            serials: boards
                .iter()
                .map(|b| b.info.serial.clone().unwrap_or_else(|| "?".into()))
                .collect(),
        }),
    }
}

fn speed_name(s: Speed) -> &'static str {
    match s {
        Speed::Low => "low",
        Speed::Full => "full",
        Speed::High => "high",
        Speed::Super => "super",
        Speed::SuperPlus => "super-plus",
        _ => "unknown",
    }
}

#[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
fn bus_path(d: &DeviceInfo) -> String {
    format_bus_path(d.bus_id(), d.port_chain())
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn bus_path(_d: &DeviceInfo) -> String {
    "-".into()
}

/// `bus-port.port…` (the Linux sysfs device name), or the bus alone when the OS gave no port
/// chain. Numeric bus IDs lose their zero padding (nusb reports Linux bus 1 as `001`).
pub(crate) fn format_bus_path(bus: &str, ports: &[u8]) -> String {
    let bus = bus
        .parse::<u32>()
        .map_or_else(|_| bus.to_owned(), |n| n.to_string());
    if ports.is_empty() {
        return bus;
    }
    let chain: Vec<String> = ports.iter().map(u8::to_string).collect();
    format!("{bus}-{}", chain.join("."))
}

/// The board's bundle interface: the first vendor-class alternate setting with a bulk IN and a
/// bulk OUT endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VendorInterface {
    /// bInterfaceNumber.
    pub number: u8,
    /// bAlternateSetting.
    pub alt_setting: u8,
    /// Bulk IN endpoint address (0x8N).
    pub ep_in: u8,
    /// Bulk OUT endpoint address.
    pub ep_out: u8,
    /// wMaxPacketSize of the IN endpoint (512 high speed, 1024 super speed).
    pub in_max_packet: usize,
    /// wMaxPacketSize of the OUT endpoint.
    pub out_max_packet: usize,
}

impl VendorInterface {
    /// Finds the interface in a parsed configuration descriptor.
    pub fn find(config: &ConfigurationDescriptor<'_>) -> Option<Self> {
        config
            .interface_alt_settings()
            .filter(|alt| alt.class() == VENDOR_CLASS)
            .find_map(|alt| {
                let bulk = |dir| {
                    alt.endpoints().find(|ep| {
                        ep.transfer_type() == TransferType::Bulk && ep.direction() == dir
                    })
                };
                let (i, o) = (bulk(Direction::In)?, bulk(Direction::Out)?);
                Some(Self {
                    number: alt.interface_number(),
                    alt_setting: alt.alternate_setting(),
                    ep_in: i.address(),
                    ep_out: o.address(),
                    in_max_packet: i.max_packet_size(),
                    out_max_packet: o.max_packet_size(),
                })
            })
    }

    /// Parses a raw configuration descriptor (as read from the device) and finds the interface.
    pub fn from_raw(config: &[u8]) -> Option<Self> {
        ConfigurationDescriptor::new(config)
            .as_ref()
            .and_then(Self::find)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a configuration descriptor: interfaces of (class, [(ep addr, attributes, mps)]),
    /// with a SuperSpeed endpoint companion after each endpoint when `ss`.
    /// (endpoint address, bmAttributes, wMaxPacketSize)
    type Ep = (u8, u8, u16);

    fn config(ifaces: &[(u8, &[Ep])], ss: bool) -> Vec<u8> {
        let mut body = Vec::new();
        for (n, (class, eps)) in ifaces.iter().enumerate() {
            body.extend_from_slice(&[9, 4, n as u8, 0, eps.len() as u8, *class, 0, 0, 0]);
            for &(addr, attr, mps) in *eps {
                let m = mps.to_le_bytes();
                body.extend_from_slice(&[7, 5, addr, attr, m[0], m[1], 0]);
                if ss {
                    body.extend_from_slice(&[6, 0x30, 0, 0, 0, 0]);
                }
            }
        }
        let total = (9 + body.len()) as u16;
        let t = total.to_le_bytes();
        let mut v = vec![9, 2, t[0], t[1], ifaces.len() as u8, 1, 0, 0x80, 50];
        v.extend_from_slice(&body);
        v
    }

    #[test]
    fn finds_bulk_pair_high_speed() {
        let raw = config(&[(0xff, &[(0x02, 2, 512), (0x81, 2, 512)])], false);
        let vi = VendorInterface::from_raw(&raw).expect("found");
        assert_eq!(
            vi,
            VendorInterface {
                number: 0,
                alt_setting: 0,
                ep_in: 0x81,
                ep_out: 0x02,
                in_max_packet: 512,
                out_max_packet: 512
            }
        );
    }

    #[test]
    fn finds_bulk_pair_super_speed_after_other_interfaces() {
        // A CDC-like interface first, then ours with an interrupt endpoint before the bulk pair.
        let raw = config(
            &[
                (0x02, &[(0x83, 3, 16)]),
                (0xff, &[(0x84, 3, 64), (0x81, 2, 1024), (0x01, 2, 1024)]),
            ],
            true,
        );
        let vi = VendorInterface::from_raw(&raw).expect("found");
        assert_eq!(
            (vi.number, vi.ep_in, vi.ep_out, vi.in_max_packet),
            (1, 0x81, 0x01, 1024)
        );
    }

    #[test]
    fn rejects_devices_without_vendor_bulk_pair() {
        assert_eq!(
            VendorInterface::from_raw(&config(&[(0x02, &[(0x81, 2, 512), (0x02, 2, 512)])], false)),
            None
        );
        assert_eq!(
            VendorInterface::from_raw(&config(&[(0xff, &[(0x81, 2, 512)])], false)),
            None
        );
        assert_eq!(
            VendorInterface::from_raw(&[9, 2, 200, 0]),
            None,
            "truncated descriptor"
        );
        assert_eq!(VendorInterface::from_raw(&[]), None);
    }

    #[test]
    fn filter_matching() {
        let f = DeviceFilter::default();
        assert!(f.matches_ids(0x1209, 1, None, &[]));
        assert!(f.matches_ids(0x1209, 1, Some("x"), &[0xff]));
        assert!(f.matches_ids(0x1209, 1, Some("x"), &[0x02, 0xff]));
        assert!(!f.matches_ids(0x1209, 2, None, &[0xff]));
        assert!(!f.matches_ids(0x1d6b, 1, None, &[0xff]));
        assert!(
            !f.matches_ids(0x1209, 1, None, &[0x02, 0x0a]),
            "right IDs, no vendor interface"
        );
        let f = DeviceFilter::new(0x1209, 1, Some("abc".into()));
        assert!(f.matches_ids(0x1209, 1, Some("abc"), &[0xff]));
        assert!(!f.matches_ids(0x1209, 1, Some("abd"), &[0xff]));
        assert!(!f.matches_ids(0x1209, 1, None, &[0xff]));
    }

    #[test]
    fn bus_paths() {
        assert_eq!(format_bus_path("1", &[1]), "1-1");
        assert_eq!(format_bus_path("3", &[2, 4, 1]), "3-2.4.1");
        assert_eq!(format_bus_path("7", &[]), "7");
        assert_eq!(format_bus_path("001", &[1]), "1-1");
        assert_eq!(format_bus_path("014", &[3, 2]), "14-3.2");
    }

    #[test]
    fn board_info_json_shape() {
        let info = BoardInfo {
            vid: 0x1209,
            pid: 1,
            serial: Some("0001".into()),
            product: None,
            speed: Some("high"),
            bus_path: "1-1".into(),
            state: BoardState::InUse,
        };
        let json = serde_json::to_string(&info).expect("serializes");
        assert_eq!(
            json,
            r#"{"vid":4617,"pid":1,"serial":"0001","product":null,"speed":"high","bus_path":"1-1","state":"in-use"}"#
        );
    }
}
