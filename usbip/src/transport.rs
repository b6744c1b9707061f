//! The async USB/IP transport for qbkit-host (feature `tokio`): one [`UsbipLink`] per imported board,
//! moving *bundles* (one bulk transfer each, opaque bytes) over the board's vendor interface.
//!
//! # Theory of operation
//!
//! ```text
//!  connect(url) ─┬─ usbip://HOST[:PORT]/BUSID: TCP, OP_REQ_IMPORT → OP_REP_IMPORT (devid, config value)
//!                └─ qubes-usb:CMD: sh -c CMD, read "<devid> <speed>\n" from its stdout
//!  setup: GET_DESCRIPTOR(device) → VID:PID check; GET_DESCRIPTOR(config) → vendor interface
//!         (class 0xff, bulk IN + OUT); SET_CONFIGURATION only when the device is not configured
//!  run:   in_urbs bulk IN URBs of max_bundle bytes stay in flight; each completion is one bundle
//!         (recv_bundle hands it out and resubmits the URB); send_bundle submits one bulk OUT URB,
//!         at most out_urbs in flight (it waits for a completion when that many are pending)
//! ```
//!
//! All protocol state lives in the sans-IO [`Client`]; this file only moves its bytes. One private
//! step function (`drive`) writes pending command bytes and reads replies, whichever is ready first;
//! both are cancel-safe (a `write`/`read` either happened or did not, and the bytes are accounted at
//! once), so `recv_bundle` can sit in a `select!` and be dropped at any await point. A `send_bundle`
//! dropped after it queued its URB still sends the bundle on the next call.
//!
//! # Bounds and failure
//!
//! Buffered bundles are bounded by the IN URB count (a URB is resubmitted only after its bundle was
//! handed out). Connection setup (connect, import, descriptors) is bounded by
//! [`LinkOptions::setup_timeout`]; after that, waiting for bundles is unbounded by design (an idle
//! board sends nothing) and liveness is the session's keepalive. A peer that closes the stream or sends
//! garbage gives an error at once ([`TransportError`]); the caller drops the link and reconnects.
//!
//! # ZLP rule
//!
//! Every bulk OUT URB carries URB_ZERO_PACKET, so a bundle whose length is a multiple of wMaxPacketSize
//! still ends the board's read; the transport does not rely on shared-frame's `finish_usb` pad (it works
//! with padded and unpadded bundles alike). Bulk IN reads are `max_bundle` bytes and end on a short
//! packet; the board must pad or send a ZLP (`finish_usb` pads), as on real USB.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::Error;
use crate::client::{Client, ClientConfig, ClientEvent, TransferKind};
use crate::desc::{self, DeviceDescriptor, VendorBulk};
use crate::op::{self, DeviceInfo, Speed, USBIP_PORT};
use crate::urb::{SetupPacket, status_name};

/// Default VID:PID of a qbkit board (pid.codes test id).
pub const DEFAULT_VID_PID: (u16, u16) = (shared_frame::usb_id::VID, shared_frame::usb_id::PID);
/// Default maximum bundle size, the size of each bulk IN read.
pub const DEFAULT_MAX_BUNDLE: usize = 64 * 1024;
/// Longest `<devid> <speed>` line accepted from a qubes.USB service.
const MAX_QUBES_LINE: usize = 128;

/// Errors of the USB/IP transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The transport URL (or `list`'s HOST[:PORT]) does not parse. qbkit-host lists every
    /// transport form itself (`TransportSpec::forms`), so the reason names only what is wrong.
    #[error("invalid USB/IP address {url:?}: {reason}")]
    BadUrl {
        /// The text given.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Connecting, spawning, reading or writing failed.
    #[error("{what} {target}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// Address or command.
        target: String,
        /// The OS error.
        source: io::Error,
    },
    /// The peer sent something that is not valid USB/IP, or closed the stream mid-transfer.
    #[error("USB/IP protocol error from {target}: {source}")]
    Protocol {
        /// Address or command.
        target: String,
        /// The codec's diagnosis.
        source: Error,
    },
    /// The peer closed the stream with nothing pending.
    #[error("USB/IP peer {0} closed the connection")]
    Closed(String),
    /// The driver closed the link: the board's session timed out (it went silent).
    #[error("the board on {0} went silent (its session timed out); link closed")]
    Silent(String),
    /// The board withdrew itself (OP_REQ_UNEXPORT) from a device-side connect.
    #[error("the board on {0} unexported itself")]
    Unexported(String),
    /// A setup step did not finish within [`LinkOptions::setup_timeout`].
    #[error("USB/IP {what} with {target} timed out after {secs:.1} s")]
    Timeout {
        /// The step.
        what: &'static str,
        /// Address or command.
        target: String,
        /// The limit.
        secs: f64,
    },
    /// The qubes.USB service's first line is not `<devid> <speed>`.
    #[error("qubes.USB service {target} sent {line:?} instead of \"<devid> <speed>\": {reason}")]
    QubesLine {
        /// The command.
        target: String,
        /// What arrived (lossy text).
        line: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The imported device is not the expected board.
    #[error(
        "device {vid:04x}:{pid:04x} is not a qbkit board (expected {want_vid:04x}:{want_pid:04x}); \
         pick the right bus id with `qbkit-host list --usbip HOST`"
    )]
    WrongDevice {
        /// idVendor found.
        vid: u16,
        /// idProduct found.
        pid: u16,
        /// idVendor expected.
        want_vid: u16,
        /// idProduct expected.
        want_pid: u16,
    },
    /// The active configuration has no vendor interface with bulk IN and OUT endpoints.
    #[error("the device has no vendor-class (0xff) interface with bulk IN and OUT endpoints")]
    NoVendorInterface,
    /// A control request failed on the device.
    #[error("{what} failed: status {status} ({})", status_name(*status))]
    ControlFailed {
        /// The request.
        what: &'static str,
        /// URB status.
        status: i32,
    },
    /// A bulk transfer failed on the device.
    #[error("bulk transfer on endpoint {endpoint:#04x} failed: status {status} ({})", status_name(*status))]
    UrbFailed {
        /// Endpoint address.
        endpoint: u8,
        /// URB status.
        status: i32,
    },
    /// A bundle larger than the configured maximum.
    #[error("bundle of {len} bytes exceeds the maximum of {max}")]
    BundleTooLarge {
        /// Its length.
        len: usize,
        /// [`LinkOptions::max_bundle`].
        max: usize,
    },
}

/// Where the link goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `usbip://HOST[:PORT]/BUSID`: a usbipd over TCP.
    Usbip {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// TCP port (default 3240).
        port: u16,
        /// Bus id to import.
        busid: String,
    },
    /// `qubes-usb:CMD`: a command whose stdin/stdout is the qubes.USB service.
    QubesUsb {
        /// The command, run with `sh -c`.
        command: String,
    },
}

impl Target {
    /// Parses a transport URL.
    pub fn parse(url: &str) -> Result<Self, TransportError> {
        let bad = |reason| TransportError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        if let Some(cmd) = url.strip_prefix("qubes-usb:") {
            if cmd.trim().is_empty() {
                return Err(bad("qubes-usb: needs a command"));
            }
            return Ok(Self::QubesUsb {
                command: cmd.to_owned(),
            });
        }
        let rest = url
            .strip_prefix("usbip://")
            .ok_or_else(|| bad("expected usbip://HOST[:PORT]/BUSID or qubes-usb:COMMAND"))?;
        let (authority, busid) = rest
            .split_once('/')
            .ok_or_else(|| bad("usbip:// needs /BUSID after the host"))?;
        if busid.is_empty() || busid.len() >= op::BUSID_LEN || busid.contains('/') {
            return Err(bad("the bus id must be 1..31 characters, e.g. 1-1"));
        }
        let (host, port) = parse_host_port(authority).ok_or_else(|| bad(HOST_PORT_HELP))?;
        Ok(Self::Usbip {
            host,
            port,
            busid: busid.to_owned(),
        })
    }

    fn describe(&self) -> String {
        match self {
            Self::Usbip { host, port, busid } => format!("usbip://{host}:{port}/{busid}"),
            Self::QubesUsb { command } => format!("qubes-usb:{command}"),
        }
    }
}

/// Parses `usbip-listen://ADDR[:PORT]` (port 3240 by default) into a `HOST:PORT` to bind, with
/// an IPv6 address in brackets.
pub fn parse_listen(url: &str) -> Result<String, TransportError> {
    let bad = |reason| TransportError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("usbip-listen://")
        .ok_or_else(|| bad("expected usbip-listen://ADDR[:PORT]"))?;
    let (host, port) = parse_host_port(rest).ok_or_else(|| bad(HOST_PORT_HELP))?;
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| bad("usbip-listen:// needs an IP address to listen on, e.g. 127.0.0.1"))?;
    Ok(std::net::SocketAddr::new(ip, port).to_string())
}

/// Parses the device side's `usbip://HOST[:PORT]` (no bus id: the board offers itself) into host
/// and port (3240 by default).
pub fn parse_export(url: &str) -> Result<(String, u16), TransportError> {
    let bad = |reason| TransportError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("usbip://")
        .ok_or_else(|| bad("expected usbip://HOST[:PORT]"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(bad(
            "usbip://HOST[:PORT] takes no bus id: the board exports itself",
        ));
    }
    parse_host_port(rest).ok_or_else(|| bad(HOST_PORT_HELP))
}

/// What [`parse_host_port`] accepts, for errors.
const HOST_PORT_HELP: &str =
    "expected HOST[:PORT], with an IPv6 address in brackets (e.g. [::1]:3240 or [fd00::5])";

/// Splits `HOST[:PORT]` / `[V6]:PORT`; the port defaults to 3240.
fn parse_host_port(s: &str) -> Option<(String, u16)> {
    if let Some(r) = s.strip_prefix('[') {
        let (h, after) = r.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => USBIP_PORT,
            None => return None,
        };
        return (!h.is_empty()).then(|| (h.to_owned(), port));
    }
    let (h, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (s, USBIP_PORT),
    };
    (!h.is_empty() && !h.contains(':')).then(|| (h.to_owned(), port))
}

/// Knobs of a [`UsbipLink`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LinkOptions {
    /// Required VID:PID (`None`: any device with a vendor bulk interface).
    pub vid_pid: Option<(u16, u16)>,
    /// Bulk IN read size = largest bundle (default 64 KiB).
    pub max_bundle: usize,
    /// Bulk IN URBs kept in flight (default 4).
    pub in_urbs: usize,
    /// Bulk OUT URBs allowed in flight (default 2).
    pub out_urbs: usize,
    /// Bound on connect, import and the descriptor requests (default 10 s).
    pub setup_timeout: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            vid_pid: Some(DEFAULT_VID_PID),
            max_bundle: DEFAULT_MAX_BUNDLE,
            in_urbs: 4,
            out_urbs: 2,
            setup_timeout: Duration::from_secs(10),
        }
    }
}

impl LinkOptions {
    /// Sets [`Self::vid_pid`].
    #[must_use]
    pub fn vid_pid(mut self, v: Option<(u16, u16)>) -> Self {
        self.vid_pid = v;
        self
    }
    /// Sets [`Self::max_bundle`].
    #[must_use]
    pub fn max_bundle(mut self, n: usize) -> Self {
        self.max_bundle = n;
        self
    }
    /// Sets [`Self::in_urbs`] and [`Self::out_urbs`] (each at least 1).
    #[must_use]
    pub fn urbs(mut self, in_urbs: usize, out_urbs: usize) -> Self {
        self.in_urbs = in_urbs.max(1);
        self.out_urbs = out_urbs.max(1);
        self
    }
    /// Sets [`Self::setup_timeout`].
    #[must_use]
    pub fn setup_timeout(mut self, t: Duration) -> Self {
        self.setup_timeout = t;
        self
    }
}

/// What was found on the device at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// `busnum << 16 | devnum` on the server.
    pub devid: u32,
    /// Speed from the import reply or the qubes.USB line.
    pub speed: Speed,
    /// The import reply (usbip:// only).
    pub device: Option<DeviceInfo>,
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// The configuration in use.
    pub configuration: u8,
    /// The vendor interface and its bulk endpoints.
    pub bulk: VendorBulk,
}

/// Counters of one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bundles received.
    pub bundles_in: u64,
    /// Bytes received in bundles.
    pub bytes_in: u64,
    /// Bundles sent.
    pub bundles_out: u64,
    /// Bytes sent in bundles.
    pub bytes_out: u64,
    /// Bulk IN completions with no data (ZLPs), skipped.
    pub empty_in: u64,
}

type Reader = Pin<Box<dyn AsyncRead + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// A USB/IP connection to one board, moving bundles. See the module docs.
pub struct UsbipLink {
    target: String,
    reader: Reader,
    writer: Writer,
    _child: Option<Child>,
    client: Client,
    tx: Vec<u8>,
    tx_pos: usize,
    rbuf: Box<[u8]>,
    ready: VecDeque<Vec<u8>>,
    current: Vec<u8>,
    control_done: Option<crate::Completion>,
    out_in_flight: usize,
    opts: LinkOptions,
    ep_in: u8,
    ep_out: u8,
    info: Option<LinkInfo>,
    stats: LinkStats,
}

impl std::fmt::Debug for UsbipLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsbipLink")
            .field("target", &self.target)
            .field("info", &self.info)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Lists the devices a usbipd exports. `host` is `HOST[:PORT]` (or a `usbip://HOST[:PORT]` prefix).
pub async fn list(host: &str) -> Result<Vec<DeviceInfo>, TransportError> {
    list_with(host, Duration::from_secs(10)).await
}

/// [`list`] with an explicit bound on the whole exchange.
pub async fn list_with(host: &str, limit: Duration) -> Result<Vec<DeviceInfo>, TransportError> {
    let authority = host.strip_prefix("usbip://").unwrap_or(host);
    let authority = authority.split('/').next().unwrap_or_default();
    let (h, port) = parse_host_port(authority).ok_or_else(|| TransportError::BadUrl {
        url: host.to_owned(),
        reason: HOST_PORT_HELP,
    })?;
    let target = format!("{h}:{port}");
    bounded(limit, "device list", &target, async {
        let mut s = tcp_connect(&h, port, &target).await?;
        let mut req = Vec::new();
        op::emit_req_devlist(&mut req);
        s.write_all(&req)
            .await
            .map_err(io_err("write to", &target))?;
        let (devs, _) = read_op_reply(&mut s, &target, op::parse_rep_devlist).await?;
        Ok(devs)
    })
    .await
}

impl UsbipLink {
    /// Connects with default options (VID:PID 1209:0001, 64 KiB bundles, 4 IN + 2 OUT URBs).
    pub async fn connect(url: &str) -> Result<Self, TransportError> {
        Self::connect_with(url, LinkOptions::default()).await
    }

    /// Connects, imports, finds the vendor interface and starts the IN URBs.
    pub async fn connect_with(url: &str, opts: LinkOptions) -> Result<Self, TransportError> {
        let target = Target::parse(url)?;
        let name = target.describe();
        let limit = opts.setup_timeout;
        bounded(limit, "connect and setup", &name, async {
            let mut link = match &target {
                Target::Usbip { host, port, busid } => {
                    Self::open_usbip(host, *port, busid, &name, opts).await?
                }
                Target::QubesUsb { command } => Self::open_qubes(command, &name, opts).await?,
            };
            link.setup().await?;
            Ok(link)
        })
        .await
    }

    /// What was found on the device.
    pub fn info(&self) -> &LinkInfo {
        self.info.as_ref().expect("set by connect")
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Waits for the next bundle (one bulk IN transfer) and returns it. Cancel-safe.
    pub async fn recv_bundle(&mut self) -> Result<&[u8], TransportError> {
        while self.ready.is_empty() {
            self.drive().await?;
        }
        let data = self.ready.pop_front().unwrap_or_default();
        self.stats.bundles_in += 1;
        self.stats.bytes_in += data.len() as u64;
        self.resubmit_in()?;
        self.current = data;
        Ok(&self.current)
    }

    /// Sends one bundle as one bulk OUT transfer. Returns once the URB is queued and its bytes are
    /// written to the peer; waits first while [`LinkOptions::out_urbs`] URBs are in flight.
    pub async fn send_bundle(&mut self, bundle: &[u8]) -> Result<(), TransportError> {
        if bundle.len() > self.opts.max_bundle {
            return Err(TransportError::BundleTooLarge {
                len: bundle.len(),
                max: self.opts.max_bundle,
            });
        }
        while self.out_in_flight >= self.opts.out_urbs {
            self.drive().await?;
        }
        self.client
            .submit_bulk_out(self.ep_out, bundle)
            .map_err(|e| self.proto(e))?;
        self.out_in_flight += 1;
        self.stats.bundles_out += 1;
        self.stats.bytes_out += bundle.len() as u64;
        while self.tx_pos < self.tx.len() || self.client.transmit_pending() > 0 {
            self.drive().await?;
        }
        Ok(())
    }

    async fn open_usbip(
        host: &str,
        port: u16,
        busid: &str,
        name: &str,
        opts: LinkOptions,
    ) -> Result<Self, TransportError> {
        let mut s = tcp_connect(host, port, name).await?;
        let mut req = Vec::new();
        op::emit_req_import(&mut req, busid).map_err(|e| proto_err(name, e))?;
        s.write_all(&req).await.map_err(io_err("write to", name))?;
        let (dev, leftover) = read_op_reply(&mut s, name, op::parse_rep_import).await?;
        let mut link = Self::for_device(s, dev, name, opts);
        link.feed(&leftover)?;
        Ok(link)
    }

    /// A link over a TCP connection whose OP phase named `device` (import or export).
    fn for_device(s: TcpStream, device: DeviceInfo, name: &str, opts: LinkOptions) -> Self {
        let (r, w) = s.into_split();
        let mut link = Self::new(name, Box::pin(r), Box::pin(w), None, device.devid(), opts);
        link.info = Some(LinkInfo {
            devid: device.devid(),
            speed: device.speed,
            configuration: device.configuration_value,
            device: Some(device),
            vendor_id: 0,
            product_id: 0,
            bulk: placeholder_bulk(),
        });
        link
    }

    /// Application side of a device-side connect: drives the device a peer offered with
    /// OP_REQ_EXPORT (already read with [`crate::export::read_request`] and accepted with
    /// [`crate::export::reply`]) over the same connection, exactly like an imported one:
    /// descriptors, VID:PID check, configuration, IN URBs. `leftover` are bytes read after the
    /// request. Bounded by [`LinkOptions::setup_timeout`].
    pub async fn from_export(
        stream: TcpStream,
        device: DeviceInfo,
        leftover: &[u8],
        name: &str,
        opts: LinkOptions,
    ) -> Result<Self, TransportError> {
        let limit = opts.setup_timeout;
        stream
            .set_nodelay(true)
            .map_err(io_err("set TCP_NODELAY on", name))?;
        let mut link = Self::for_device(stream, device, name, opts);
        link.feed(leftover)?;
        bounded(limit, "setup", name, link.setup()).await?;
        Ok(link)
    }

    async fn open_qubes(
        command: &str,
        name: &str,
        opts: LinkOptions,
    ) -> Result<Self, TransportError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(io_err("spawn", name))?;
        let (Some(out), Some(inp)) = (child.stdout.take(), child.stdin.take()) else {
            return Err(TransportError::Io {
                what: "pipe",
                target: name.to_owned(),
                source: io::Error::other("no stdio pipes"),
            });
        };
        Self::from_qubes_pipes(Box::pin(out), Box::pin(inp), Some(child), name, opts).await
    }

    /// A qubes-usb link over a qubes.USB service that is already running: `out` is its stdout,
    /// `inp` its stdin. Reads the "<devid> <speed>" line, then sets the device up as
    /// [`connect_with`](Self::connect_with) does (bounded by [`LinkOptions::setup_timeout`]). The
    /// `usbip_transport` fuzz target drives the transport through this with in-memory pipes.
    pub async fn over_qubes_pipes(
        out: impl AsyncRead + Send + 'static,
        inp: impl AsyncWrite + Send + 'static,
        name: &str,
        opts: LinkOptions,
    ) -> Result<Self, TransportError> {
        let limit = opts.setup_timeout;
        bounded(limit, "connect and setup", name, async {
            let mut link =
                Self::from_qubes_pipes(Box::pin(out), Box::pin(inp), None, name, opts).await?;
            link.setup().await?;
            Ok(link)
        })
        .await
    }

    async fn from_qubes_pipes(
        mut out: Reader,
        inp: Writer,
        child: Option<Child>,
        name: &str,
        opts: LinkOptions,
    ) -> Result<Self, TransportError> {
        let (devid, speed, leftover) = read_qubes_line(&mut out, name).await?;
        let mut qlink = Self::new(name, out, inp, child, devid, opts);
        qlink.info = Some(LinkInfo {
            devid,
            speed,
            device: None,
            vendor_id: 0,
            product_id: 0,
            configuration: 0,
            bulk: placeholder_bulk(),
        });
        qlink.feed(&leftover)?;
        Ok(qlink)
    }

    fn new(
        name: &str,
        reader: Reader,
        writer: Writer,
        child: Option<Child>,
        devid: u32,
        opts: LinkOptions,
    ) -> Self {
        let cfg = ClientConfig::default().max_transfer(opts.max_bundle.max(64 * 1024));
        Self {
            target: name.to_owned(),
            reader,
            writer,
            _child: child,
            client: Client::new(devid, cfg),
            tx: Vec::new(),
            tx_pos: 0,
            rbuf: vec![0; 64 * 1024].into_boxed_slice(),
            ready: VecDeque::new(),
            current: Vec::new(),
            control_done: None,
            out_in_flight: 0,
            opts,
            ep_in: 0,
            ep_out: 0,
            info: None,
            stats: LinkStats::default(),
        }
    }

    /// Reads descriptors, checks the device, configures it if needed and starts the IN URBs.
    async fn setup(&mut self) -> Result<(), TransportError> {
        let dd = self
            .control(
                SetupPacket::get_descriptor(desc::DT_DEVICE, 0, 18),
                "GET_DESCRIPTOR(device)",
            )
            .await?;
        let dd = DeviceDescriptor::parse(&dd).map_err(|e| self.proto(e))?;
        if let Some((want_vid, want_pid)) = self.opts.vid_pid
            && (dd.vendor_id, dd.product_id) != (want_vid, want_pid)
        {
            return Err(TransportError::WrongDevice {
                vid: dd.vendor_id,
                pid: dd.product_id,
                want_vid,
                want_pid,
            });
        }
        let head = self
            .control(
                SetupPacket::get_descriptor(desc::DT_CONFIG, 0, 9),
                "GET_DESCRIPTOR(config)",
            )
            .await?;
        let (total, _) = desc::config_header(&head).map_err(|e| self.proto(e))?;
        let full = self
            .control(
                SetupPacket::get_descriptor(desc::DT_CONFIG, 0, total),
                "GET_DESCRIPTOR(config, full)",
            )
            .await?;
        let cfg = desc::parse_configuration(&full).map_err(|e| self.proto(e))?;
        let bulk = desc::find_vendor_bulk(&cfg).ok_or(TransportError::NoVendorInterface)?;
        let mut current = self.info.as_ref().map_or(0, |i| i.configuration);
        if self.info.as_ref().is_some_and(|i| i.device.is_none()) {
            // qubes-usb: no import reply told us; ask the device.
            let v = self
                .control(SetupPacket::get_configuration(), "GET_CONFIGURATION")
                .await?;
            current = v.first().copied().unwrap_or(0);
        }
        if current != cfg.value {
            tracing::debug!(target = %self.target, from = current, to = cfg.value, "SET_CONFIGURATION");
            self.control(
                SetupPacket::set_configuration(cfg.value),
                "SET_CONFIGURATION",
            )
            .await?;
        }
        self.ep_in = bulk.ep_in;
        self.ep_out = bulk.ep_out;
        if let Some(info) = self.info.as_mut() {
            info.vendor_id = dd.vendor_id;
            info.product_id = dd.product_id;
            info.configuration = cfg.value;
            info.bulk = bulk;
        }
        for _ in 0..self.opts.in_urbs {
            self.resubmit_in()?;
        }
        tracing::info!(target = %self.target, ?bulk, "USB/IP link up");
        Ok(())
    }

    async fn control(
        &mut self,
        setup: SetupPacket,
        what: &'static str,
    ) -> Result<Vec<u8>, TransportError> {
        let seq = self
            .client
            .submit_control(setup, &[])
            .map_err(|e| self.proto(e))?;
        loop {
            if let Some(c) = self.control_done.take_if(|c| c.seqnum == seq) {
                if c.status != 0 {
                    return Err(TransportError::ControlFailed {
                        what,
                        status: c.status,
                    });
                }
                return Ok(c.data);
            }
            self.drive().await?;
        }
    }

    fn resubmit_in(&mut self) -> Result<(), TransportError> {
        let len = u32::try_from(self.opts.max_bundle).unwrap_or(u32::MAX);
        self.client
            .submit_bulk_in(self.ep_in, len)
            .map(|_| ())
            .map_err(|e| self.proto(e))
    }

    fn proto(&self, source: Error) -> TransportError {
        proto_err(&self.target, source)
    }

    /// One step: write pending command bytes or read replies, whichever is ready first.
    async fn drive(&mut self) -> Result<(), TransportError> {
        if self.tx_pos == self.tx.len() {
            self.tx.clear();
            self.tx_pos = 0;
            if let Some(b) = self.client.poll_transmit() {
                self.tx = b;
            }
        }
        let want_write = self.tx_pos < self.tx.len();
        tokio::select! {
            biased;
            r = self.writer.write(&self.tx[self.tx_pos..]), if want_write => {
                let n = r.map_err(io_err("write to", &self.target))?;
                if n == 0 {
                    return Err(TransportError::Closed(self.target.clone()));
                }
                self.tx_pos += n;
            }
            r = self.reader.read(&mut self.rbuf) => {
                let n = r.map_err(io_err("read from", &self.target))?;
                if n == 0 {
                    self.client.handle_eof().map_err(|e| self.proto(e))?;
                    return Err(TransportError::Closed(self.target.clone()));
                }
                let rbuf = std::mem::take(&mut self.rbuf);
                let res = self.feed(&rbuf[..n]);
                self.rbuf = rbuf;
                res?;
            }
        }
        Ok(())
    }

    /// Feeds received bytes to the client and sorts its events.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.client.handle_bytes(bytes).map_err(|e| self.proto(e))?;
        while let Some(ev) = self.client.poll_event() {
            let ClientEvent::Completed(c) = ev else {
                continue;
            };
            if c.kind == TransferKind::Control {
                self.control_done = Some(c);
            } else if c.endpoint == self.ep_in {
                if c.status != 0 {
                    return Err(TransportError::UrbFailed {
                        endpoint: c.endpoint,
                        status: c.status,
                    });
                }
                if c.data.is_empty() {
                    self.stats.empty_in += 1;
                    self.resubmit_in()?;
                } else {
                    self.ready.push_back(c.data);
                }
            } else {
                self.out_in_flight = self.out_in_flight.saturating_sub(1);
                if c.status != 0 {
                    return Err(TransportError::UrbFailed {
                        endpoint: c.endpoint,
                        status: c.status,
                    });
                }
            }
        }
        Ok(())
    }
}

fn placeholder_bulk() -> VendorBulk {
    VendorBulk {
        interface: 0,
        ep_in: 0,
        mps_in: 0,
        ep_out: 0,
        mps_out: 0,
    }
}

/// Reads a qubes.USB service's first line, "<devid> <speed>[ extra]\n" (at most
/// `MAX_QUBES_LINE` bytes are read past the last one without a newline), and parses it; the bytes
/// read after the newline belong to the URB stream and are returned with it.
pub async fn read_qubes_line(
    out: &mut (impl AsyncRead + Unpin + ?Sized),
    name: &str,
) -> Result<(u32, Speed, Vec<u8>), TransportError> {
    let mut line = Vec::new();
    let mut buf = [0u8; MAX_QUBES_LINE];
    let nl = loop {
        if let Some(p) = line.iter().position(|&b| b == b'\n') {
            break p;
        }
        if line.len() > MAX_QUBES_LINE {
            return Err(qubes_err(name, &line, "no newline within 128 bytes"));
        }
        let n = out
            .read(&mut buf)
            .await
            .map_err(io_err("read from", name))?;
        if n == 0 {
            return Err(qubes_err(
                name,
                &line,
                "the service closed before sending it (device missing, policy denied, or \
                 qubes-usb-proxy not installed in the USB qube)",
            ));
        }
        line.extend_from_slice(&buf[..n]);
    };
    let leftover = line.split_off(nl + 1);
    let (devid, speed) = parse_qubes_line(&line[..nl]).map_err(|r| qubes_err(name, &line, r))?;
    Ok((devid, speed, leftover))
}

/// Parses `<devid> <speed>[ extra...]` (qubes-usb-proxy's usb-export writes `busnum << 16 | devnum`
/// and the sysfs speed text).
pub fn parse_qubes_line(line: &[u8]) -> Result<(u32, Speed), &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "not text")?;
    let mut f = text.split_ascii_whitespace();
    let devid = f
        .next()
        .ok_or("empty line")?
        .parse::<u32>()
        .map_err(|_| "devid is not a 32-bit number")?;
    let speed = f.next().ok_or("no speed")?;
    let speed =
        Speed::from_sysfs(speed).ok_or("unknown speed (expected 1.5, 12, 480, 5000, ...)")?;
    Ok((devid, speed))
}

fn qubes_err(name: &str, line: &[u8], reason: &'static str) -> TransportError {
    TransportError::QubesLine {
        target: name.to_owned(),
        line: String::from_utf8_lossy(line).into_owned(),
        reason,
    }
}

pub(crate) fn proto_err(name: &str, source: Error) -> TransportError {
    TransportError::Protocol {
        target: name.to_owned(),
        source,
    }
}

pub(crate) fn io_err(what: &'static str, target: &str) -> impl FnOnce(io::Error) -> TransportError {
    let target = target.to_owned();
    move |source| TransportError::Io {
        what,
        target,
        source,
    }
}

pub(crate) async fn bounded<T>(
    limit: Duration,
    what: &'static str,
    target: &str,
    f: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| {
        Err(TransportError::Timeout {
            what,
            target: target.to_owned(),
            secs: limit.as_secs_f64(),
        })
    })
}

pub(crate) async fn tcp_connect(
    host: &str,
    port: u16,
    name: &str,
) -> Result<TcpStream, TransportError> {
    let s = TcpStream::connect((host, port))
        .await
        .map_err(io_err("connect to", name))?;
    // URB commands are small and latency-bound; usbip's own tools set TCP_NODELAY too.
    s.set_nodelay(true)
        .map_err(io_err("set TCP_NODELAY on", name))?;
    Ok(s)
}

/// An incremental OP reply parser ([`op::parse_rep_devlist`], [`op::parse_rep_import`]).
type OpParser<T> = fn(&[u8]) -> Result<Option<(T, usize)>, Error>;

/// Reads until `parse` yields a complete OP reply; returns it and any bytes after it.
pub(crate) async fn read_op_reply<T>(
    s: &mut TcpStream,
    name: &str,
    parse: OpParser<T>,
) -> Result<(T, Vec<u8>), TransportError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((v, used)) = parse(&buf).map_err(|e| proto_err(name, e))? {
            return Ok((v, buf.split_off(used)));
        }
        let n = s
            .read(&mut chunk)
            .await
            .map_err(io_err("read from", name))?;
        if n == 0 {
            return Err(proto_err(
                name,
                Error::PeerClosed {
                    in_flight: 0,
                    partial: buf.len(),
                },
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_urls() {
        assert_eq!(
            parse_export("usbip://laptop").unwrap(),
            ("laptop".to_owned(), 3240)
        );
        assert_eq!(
            parse_export("usbip://[fd00::1]:4000/").unwrap(),
            ("fd00::1".to_owned(), 4000)
        );
        for bad in ["usbip://", "usbip://h/1-1", "tcp://h:1", "usbip://h:x"] {
            assert!(parse_export(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_urls() {
        assert_eq!(
            parse_listen("usbip-listen://127.0.0.1").unwrap(),
            "127.0.0.1:3240"
        );
        assert_eq!(
            parse_listen("usbip-listen://[::1]:4000").unwrap(),
            "[::1]:4000"
        );
        for bad in [
            "usbip-listen://",
            "usbip-listen://localhost:1",
            "usbip-listen://1.2.3.4:x",
            "usbip://127.0.0.1/1-1",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            Target::parse("usbip://127.0.0.1/1-1").unwrap(),
            Target::Usbip {
                host: "127.0.0.1".into(),
                port: 3240,
                busid: "1-1".into()
            }
        );
        assert_eq!(
            Target::parse("usbip://[::1]:4000/17-1.2").unwrap(),
            Target::Usbip {
                host: "::1".into(),
                port: 4000,
                busid: "17-1.2".into()
            }
        );
        assert_eq!(
            Target::parse("qubes-usb:qrexec-client-vm sys-usb qubes.USB+2-1").unwrap(),
            Target::QubesUsb {
                command: "qrexec-client-vm sys-usb qubes.USB+2-1".into()
            }
        );
        for bad in [
            "usbip://host",
            "usbip://host/",
            "usbip://:1/1-1",
            "usbip://h:x/1-1",
            "usbip://::1/1-1",
            "tcp://h:1",
            "qubes-usb: ",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn qubes_lines() {
        assert_eq!(parse_qubes_line(b"65538 480"), Ok((65538, Speed::High)));
        assert_eq!(parse_qubes_line(b"1 5000 extra"), Ok((1, Speed::Super)));
        assert!(parse_qubes_line(b"").is_err());
        assert!(parse_qubes_line(b"x 480").is_err());
        assert!(parse_qubes_line(b"1 fast").is_err());
        assert!(parse_qubes_line(&[0xff, b' ', b'1']).is_err());
    }
}
