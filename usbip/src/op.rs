//! The connection-setup messages (the "OP" phase), all big-endian: OP_REQ_DEVLIST / OP_REP_DEVLIST
//! and OP_REQ_IMPORT / OP_REP_IMPORT (kernel `Documentation/usb/usbip_protocol.rst`), and the
//! device-side "export" pair OP_REQ_EXPORT / OP_REP_EXPORT and OP_REQ_UNEXPORT / OP_REP_UNEXPORT
//! (codes defined in the kernel's `usbip_network.h`, used by the linux-usb "exporting devices"
//! series, v12: the device side connects to the application side and offers itself).
//!
//! ```text
//!  op_common (8):      version u16 = 0x0111 │ code u16 │ status u32
//!  OP_REQ_DEVLIST:     op_common(0x8005, 0)
//!  OP_REP_DEVLIST:     op_common(0x0005, st) │ ndev u32 │ ndev × (device (312) │ bNumInterfaces × iface (4))
//!  OP_REQ_IMPORT:      op_common(0x8003, 0) │ busid [32] NUL-padded
//!  OP_REP_IMPORT:      op_common(0x0003, st) │ device (312)      (device only when st = 0)
//!  device (312):       path[256] │ busid[32] │ busnum u32 │ devnum u32 │ speed u32 │ idVendor u16 │
//!                      idProduct u16 │ bcdDevice u16 │ class u8 │ subclass u8 │ protocol u8 │
//!                      bConfigurationValue u8 │ bNumConfigurations u8 │ bNumInterfaces u8
//!  iface (4):          class u8 │ subclass u8 │ protocol u8 │ pad u8
//!  OP_REQ_EXPORT:      op_common(0x8006, 0) │ device (312)       (device side → application side)
//!  OP_REP_EXPORT:      op_common(0x0006, st) │ returncode i32     (0 = accepted)
//!  OP_REQ_UNEXPORT:    op_common(0x8007, 0) │ device (312)       (on a new connection)
//!  OP_REP_UNEXPORT:    op_common(0x0007, st) │ returncode i32
//! ```
//!
//! The series sends `returncode` without byte-order conversion (its `PACK_OP_EXPORT_REPLY` is
//! empty), so only zero / non-zero is meaningful across machines: we send 0 or a big-endian 1 and
//! read any non-zero value (or a non-zero status) as a refusal. After an accepted export the same
//! connection carries the URB stream, exactly as after OP_REP_IMPORT, with the application side as
//! the one that submits.
//!
//! Data flow: the client emits a request with [`emit_req_devlist`] / [`emit_req_import`], then feeds
//! whatever bytes arrived to [`parse_rep_devlist`] / [`parse_rep_import`]. Those return `Ok(None)` while
//! the reply is incomplete (so a driver can read into a growing buffer), the value and the number of
//! bytes it used once it is complete, or an [`Error`] for anything malformed. Reply sizes are bounded
//! ([`MAX_DEVICES`], at most 255 interfaces per device), so a driver's buffer is bounded too.
//! The server-side emitters ([`emit_rep_devlist`], [`emit_rep_import`]) exist for tests and fake servers.

use crate::Error;

/// The protocol version on the wire: v1.1.1.
pub const USBIP_VERSION: u16 = 0x0111;
/// Default TCP port of usbipd.
pub const USBIP_PORT: u16 = 3240;
/// Request code: list exported devices.
pub const OP_REQ_DEVLIST: u16 = 0x8005;
/// Reply code: the device list.
pub const OP_REP_DEVLIST: u16 = 0x0005;
/// Request code: import (attach) a device.
pub const OP_REQ_IMPORT: u16 = 0x8003;
/// Reply code: import reply.
pub const OP_REP_IMPORT: u16 = 0x0003;
/// Request code: the device side offers (exports) itself to the application side.
pub const OP_REQ_EXPORT: u16 = 0x8006;
/// Reply code: export accepted or refused.
pub const OP_REP_EXPORT: u16 = 0x0006;
/// Request code: the device side withdraws an earlier export.
pub const OP_REQ_UNEXPORT: u16 = 0x8007;
/// Reply code: unexport done or refused.
pub const OP_REP_UNEXPORT: u16 = 0x0007;
/// Size of OP_REQ_EXPORT and OP_REQ_UNEXPORT.
pub const REQ_EXPORT_LEN: usize = OP_COMMON_LEN + DEVICE_LEN;
/// Size of OP_REP_EXPORT and OP_REP_UNEXPORT.
pub const REP_EXPORT_LEN: usize = OP_COMMON_LEN + 4;
/// Size of `op_common`.
pub const OP_COMMON_LEN: usize = 8;
/// Size of the device block in both replies.
pub const DEVICE_LEN: usize = 312;
/// Size of one interface entry in the device list.
pub const INTERFACE_LEN: usize = 4;
/// Size of OP_REQ_IMPORT.
pub const REQ_IMPORT_LEN: usize = OP_COMMON_LEN + BUSID_LEN;
/// Largest device list accepted (a usbipd exports what is bound to usbip-host; hundreds is absurd).
pub const MAX_DEVICES: u32 = 256;
/// Size of the sysfs path field.
pub const PATH_LEN: usize = 256;
/// Size of the bus id field.
pub const BUSID_LEN: usize = 32;

mod field {
    use core::ops::Range;
    pub(super) const VERSION: Range<usize> = 0..2;
    pub(super) const CODE: Range<usize> = 2..4;
    pub(super) const STATUS: Range<usize> = 4..8;
    pub(super) const NDEV: Range<usize> = 8..12;
    // Within the device block.
    pub(super) const PATH: Range<usize> = 0..256;
    pub(super) const BUSID: Range<usize> = 256..288;
    pub(super) const BUSNUM: usize = 288;
    pub(super) const DEVNUM: usize = 292;
    pub(super) const SPEED: usize = 296;
    pub(super) const ID_VENDOR: usize = 300;
    pub(super) const ID_PRODUCT: usize = 302;
    pub(super) const BCD_DEVICE: usize = 304;
    pub(super) const CLASS: usize = 306;
    pub(super) const SUBCLASS: usize = 307;
    pub(super) const PROTOCOL: usize = 308;
    pub(super) const CONFIG_VALUE: usize = 309;
    pub(super) const NUM_CONFIGS: usize = 310;
    pub(super) const NUM_INTERFACES: usize = 311;
}

/// USB device speed as usbipd reports it (kernel `enum usb_device_speed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Speed {
    /// 1.5 Mbit/s.
    Low,
    /// 12 Mbit/s.
    Full,
    /// 480 Mbit/s.
    High,
    /// Wireless USB (obsolete).
    Wireless,
    /// 5 Gbit/s.
    Super,
    /// 10 Gbit/s and above.
    SuperPlus,
    /// Unknown or a value this build does not know.
    Unknown(u32),
}

impl Speed {
    /// From the kernel enum value.
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Low,
            2 => Self::Full,
            3 => Self::High,
            4 => Self::Wireless,
            5 => Self::Super,
            6 => Self::SuperPlus,
            v => Self::Unknown(v),
        }
    }

    /// The kernel enum value.
    pub const fn to_u32(self) -> u32 {
        match self {
            Self::Low => 1,
            Self::Full => 2,
            Self::High => 3,
            Self::Wireless => 4,
            Self::Super => 5,
            Self::SuperPlus => 6,
            Self::Unknown(v) => v,
        }
    }

    /// Lower-case name, as `qbkit-host list` prints USB speeds: `low`, `full`, `high`, `wireless`,
    /// `super`, `super-plus`, `unknown`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Full => "full",
            Self::High => "high",
            Self::Wireless => "wireless",
            Self::Super => "super",
            Self::SuperPlus => "super-plus",
            Self::Unknown(_) => "unknown",
        }
    }

    /// From the sysfs `speed` text the qubes.USB service sends ("480", "5000", ...).
    pub fn from_sysfs(s: &str) -> Option<Self> {
        Some(match s {
            "1.5" => Self::Low,
            "12" => Self::Full,
            "480" => Self::High,
            "53.3-480" => Self::Wireless,
            "5000" => Self::Super,
            "10000" | "20000" => Self::SuperPlus,
            _ => return None,
        })
    }
}

/// One interface of an exported device, as listed by OP_REP_DEVLIST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InterfaceInfo {
    /// bInterfaceClass (0xff = vendor specific).
    pub class: u8,
    /// bInterfaceSubClass.
    pub subclass: u8,
    /// bInterfaceProtocol.
    pub protocol: u8,
}

/// An exported device, as in OP_REP_DEVLIST and OP_REP_IMPORT.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceInfo {
    /// sysfs path on the server (informational; non-UTF-8 bytes are replaced).
    pub path: String,
    /// Bus id on the server, e.g. "3-2": what OP_REQ_IMPORT names.
    pub busid: String,
    /// Bus number on the server.
    pub busnum: u32,
    /// Device number on the server.
    pub devnum: u32,
    /// Device speed.
    pub speed: Speed,
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// bcdDevice.
    pub bcd_device: u16,
    /// bDeviceClass.
    pub class: u8,
    /// bDeviceSubClass.
    pub subclass: u8,
    /// bDeviceProtocol.
    pub protocol: u8,
    /// The active configuration (0 = unconfigured).
    pub configuration_value: u8,
    /// bNumConfigurations.
    pub num_configurations: u8,
    /// bNumInterfaces of the active configuration.
    pub num_interfaces: u8,
    /// The interfaces (device list only; empty in an import reply).
    pub interfaces: Vec<InterfaceInfo>,
}

impl DeviceInfo {
    /// The `devid` every URB for this device carries: `busnum << 16 | devnum`.
    pub const fn devid(&self) -> u32 {
        (self.busnum << 16) | (self.devnum & 0xffff)
    }

    fn parse_block(b: &[u8]) -> Self {
        debug_assert!(b.len() >= DEVICE_LEN);
        Self {
            path: c_string(&b[field::PATH]),
            busid: c_string(&b[field::BUSID]),
            busnum: be32(b, field::BUSNUM),
            devnum: be32(b, field::DEVNUM),
            speed: Speed::from_u32(be32(b, field::SPEED)),
            vendor_id: be16(b, field::ID_VENDOR),
            product_id: be16(b, field::ID_PRODUCT),
            bcd_device: be16(b, field::BCD_DEVICE),
            class: b[field::CLASS],
            subclass: b[field::SUBCLASS],
            protocol: b[field::PROTOCOL],
            configuration_value: b[field::CONFIG_VALUE],
            num_configurations: b[field::NUM_CONFIGS],
            num_interfaces: b[field::NUM_INTERFACES],
            interfaces: Vec::new(),
        }
    }

    fn emit_block(&self, out: &mut Vec<u8>) {
        put_c_string(out, &self.path, PATH_LEN);
        put_c_string(out, &self.busid, BUSID_LEN);
        out.extend_from_slice(&self.busnum.to_be_bytes());
        out.extend_from_slice(&self.devnum.to_be_bytes());
        out.extend_from_slice(&self.speed.to_u32().to_be_bytes());
        out.extend_from_slice(&self.vendor_id.to_be_bytes());
        out.extend_from_slice(&self.product_id.to_be_bytes());
        out.extend_from_slice(&self.bcd_device.to_be_bytes());
        out.extend_from_slice(&[
            self.class,
            self.subclass,
            self.protocol,
            self.configuration_value,
            self.num_configurations,
            self.num_interfaces,
        ]);
    }
}

/// Appends OP_REQ_DEVLIST.
pub fn emit_req_devlist(out: &mut Vec<u8>) {
    emit_common(out, OP_REQ_DEVLIST, 0);
}

/// Appends OP_REQ_IMPORT for `busid`.
///
/// # Errors
/// [`Error::TransferTooLarge`] when the bus id does not fit the 32-byte field with its NUL.
pub fn emit_req_import(out: &mut Vec<u8>, busid: &str) -> Result<(), Error> {
    if busid.len() >= BUSID_LEN || busid.as_bytes().contains(&0) {
        return Err(Error::TransferTooLarge {
            len: busid.len(),
            max: BUSID_LEN - 1,
        });
    }
    emit_common(out, OP_REQ_IMPORT, 0);
    put_c_string(out, busid, BUSID_LEN);
    Ok(())
}

/// Parses OP_REP_DEVLIST from the start of `buf`.
///
/// Returns `Ok(None)` while the reply is incomplete, `Ok(Some((devices, used)))` once it is complete.
pub fn parse_rep_devlist(buf: &[u8]) -> Result<Option<(Vec<DeviceInfo>, usize)>, Error> {
    let Some(status) = parse_common(buf, OP_REP_DEVLIST)? else {
        return Ok(None);
    };
    if status != 0 {
        return Err(Error::OpRefused {
            op: "device list",
            status,
        });
    }
    if buf.len() < field::NDEV.end {
        return Ok(None);
    }
    let ndev = be32(buf, field::NDEV.start);
    if ndev > MAX_DEVICES {
        return Err(Error::TooManyDevices {
            n: ndev,
            max: MAX_DEVICES,
        });
    }
    let mut off = field::NDEV.end;
    let mut devices = Vec::with_capacity(ndev as usize);
    for _ in 0..ndev {
        let Some(block) = buf.get(off..off + DEVICE_LEN) else {
            return Ok(None);
        };
        let mut dev = DeviceInfo::parse_block(block);
        off += DEVICE_LEN;
        let n = usize::from(dev.num_interfaces);
        let Some(ifaces) = buf.get(off..off + n * INTERFACE_LEN) else {
            return Ok(None);
        };
        dev.interfaces = ifaces
            .chunks_exact(INTERFACE_LEN)
            .map(|i| InterfaceInfo {
                class: i[0],
                subclass: i[1],
                protocol: i[2],
            })
            .collect();
        off += n * INTERFACE_LEN;
        devices.push(dev);
    }
    Ok(Some((devices, off)))
}

/// Parses OP_REP_IMPORT from the start of `buf`.
///
/// Returns `Ok(None)` while the reply is incomplete, `Ok(Some((device, used)))` once it is complete;
/// a non-zero status is [`Error::OpRefused`].
pub fn parse_rep_import(buf: &[u8]) -> Result<Option<(DeviceInfo, usize)>, Error> {
    let Some(status) = parse_common(buf, OP_REP_IMPORT)? else {
        return Ok(None);
    };
    if status != 0 {
        return Err(Error::OpRefused {
            op: "import",
            status,
        });
    }
    let Some(block) = buf.get(OP_COMMON_LEN..OP_COMMON_LEN + DEVICE_LEN) else {
        return Ok(None);
    };
    Ok(Some((
        DeviceInfo::parse_block(block),
        OP_COMMON_LEN + DEVICE_LEN,
    )))
}

/// Appends OP_REP_DEVLIST (server side; for tests and fake servers).
pub fn emit_rep_devlist(out: &mut Vec<u8>, devices: &[DeviceInfo]) {
    emit_common(out, OP_REP_DEVLIST, 0);
    out.extend_from_slice(&(devices.len() as u32).to_be_bytes());
    for d in devices {
        d.emit_block(out);
        for i in d.interfaces.iter().take(usize::from(d.num_interfaces)) {
            out.extend_from_slice(&[i.class, i.subclass, i.protocol, 0]);
        }
    }
}

/// Appends OP_REP_IMPORT (server side; for tests and fake servers). `None` sends status 1 (ST_NA).
pub fn emit_rep_import(out: &mut Vec<u8>, device: Option<&DeviceInfo>) {
    match device {
        Some(d) => {
            emit_common(out, OP_REP_IMPORT, 0);
            d.emit_block(out);
        }
        None => emit_common(out, OP_REP_IMPORT, 1),
    }
}

/// Appends OP_REQ_EXPORT (device side) offering `device`.
pub fn emit_req_export(out: &mut Vec<u8>, device: &DeviceInfo) {
    emit_common(out, OP_REQ_EXPORT, 0);
    device.emit_block(out);
}

/// Appends OP_REQ_UNEXPORT (device side) withdrawing `device`.
pub fn emit_req_unexport(out: &mut Vec<u8>, device: &DeviceInfo) {
    emit_common(out, OP_REQ_UNEXPORT, 0);
    device.emit_block(out);
}

/// Appends OP_REP_EXPORT (application side): `accepted` or refused.
pub fn emit_rep_export(out: &mut Vec<u8>, accepted: bool) {
    emit_rep_returncode(out, OP_REP_EXPORT, accepted);
}

/// Appends OP_REP_UNEXPORT (application side): `done` or refused.
pub fn emit_rep_unexport(out: &mut Vec<u8>, done: bool) {
    emit_rep_returncode(out, OP_REP_UNEXPORT, done);
}

fn emit_rep_returncode(out: &mut Vec<u8>, code: u16, ok: bool) {
    emit_common(out, code, u32::from(!ok));
    out.extend_from_slice(&i32::from(!ok).to_be_bytes());
}

/// Parses OP_REP_EXPORT (device side). `Ok(None)` while incomplete, `Ok(Some(used))` when the export
/// was accepted; a refusal (non-zero status or returncode) is [`Error::OpRefused`].
pub fn parse_rep_export(buf: &[u8]) -> Result<Option<usize>, Error> {
    parse_rep_returncode(buf, OP_REP_EXPORT, "export")
}

/// Parses OP_REP_UNEXPORT (device side), like [`parse_rep_export`].
pub fn parse_rep_unexport(buf: &[u8]) -> Result<Option<usize>, Error> {
    parse_rep_returncode(buf, OP_REP_UNEXPORT, "unexport")
}

fn parse_rep_returncode(buf: &[u8], code: u16, op: &'static str) -> Result<Option<usize>, Error> {
    let Some(status) = parse_common(buf, code)? else {
        return Ok(None);
    };
    if buf.len() < REP_EXPORT_LEN {
        return Ok(None);
    }
    let returncode = be32(buf, OP_COMMON_LEN);
    match (status, returncode) {
        (0, 0) => Ok(Some(REP_EXPORT_LEN)),
        (0, rc) => Err(Error::OpRefused { op, status: rc }),
        (st, _) => Err(Error::OpRefused { op, status: st }),
    }
}

/// A request the server side reads: a usbipd's (device list, import), or the application side's
/// (export, unexport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpRequest {
    /// OP_REQ_DEVLIST.
    Devlist,
    /// OP_REQ_IMPORT with its bus id.
    Import(String),
    /// OP_REQ_EXPORT with the device offered.
    Export(DeviceInfo),
    /// OP_REQ_UNEXPORT with the device withdrawn.
    Unexport(DeviceInfo),
}

/// Parses an OP request (server side). `Ok(None)` while incomplete.
pub fn parse_op_request(buf: &[u8]) -> Result<Option<(OpRequest, usize)>, Error> {
    if buf.len() < OP_COMMON_LEN {
        return Ok(None);
    }
    let version = be16(buf, field::VERSION.start);
    if version != USBIP_VERSION {
        return Err(Error::BadVersion(version));
    }
    match be16(buf, field::CODE.start) {
        OP_REQ_DEVLIST => Ok(Some((OpRequest::Devlist, OP_COMMON_LEN))),
        OP_REQ_IMPORT => match buf.get(OP_COMMON_LEN..REQ_IMPORT_LEN) {
            Some(b) => Ok(Some((OpRequest::Import(c_string(b)), REQ_IMPORT_LEN))),
            None => Ok(None),
        },
        code @ (OP_REQ_EXPORT | OP_REQ_UNEXPORT) => {
            let Some(block) = buf.get(OP_COMMON_LEN..REQ_EXPORT_LEN) else {
                return Ok(None);
            };
            let dev = DeviceInfo::parse_block(block);
            let req = if code == OP_REQ_EXPORT {
                OpRequest::Export(dev)
            } else {
                OpRequest::Unexport(dev)
            };
            Ok(Some((req, REQ_EXPORT_LEN)))
        }
        code => Err(Error::BadField {
            message: "OP request",
            field: "code",
            value: u32::from(code),
        }),
    }
}

fn emit_common(out: &mut Vec<u8>, code: u16, status: u32) {
    out.extend_from_slice(&USBIP_VERSION.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&status.to_be_bytes());
}

/// Checks version and code; returns the status, or `None` while fewer than 8 bytes arrived.
fn parse_common(buf: &[u8], expected: u16) -> Result<Option<u32>, Error> {
    if buf.len() < OP_COMMON_LEN {
        return Ok(None);
    }
    let version = be16(buf, field::VERSION.start);
    if version != USBIP_VERSION {
        return Err(Error::BadVersion(version));
    }
    let code = be16(buf, field::CODE.start);
    if code != expected {
        return Err(Error::UnexpectedReply {
            expected,
            got: code,
        });
    }
    Ok(Some(be32(buf, field::STATUS.start)))
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Writes `s` NUL-padded to `len` bytes, truncated so that at least one NUL remains.
fn put_c_string(out: &mut Vec<u8>, s: &str, len: usize) {
    let bytes = &s.as_bytes()[..s.len().min(len - 1)];
    out.extend_from_slice(bytes);
    out.resize(out.len() + (len - bytes.len()), 0);
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OP_REQ_DEVLIST from the spec table: version 0x0111, code 0x8005, status 0.
    const REQ_DEVLIST: [u8; 8] = [0x01, 0x11, 0x80, 0x05, 0, 0, 0, 0];

    /// OP_REP_DEVLIST with one device, built field by field from the spec's offset table
    /// (busid at 0x10C, busnum at 0x12C, ... interfaces from 0x144).
    fn rep_devlist_fixture() -> Vec<u8> {
        let mut b = vec![0u8; 0x144 + 2 * 4];
        b[0..8].copy_from_slice(&[0x01, 0x11, 0x00, 0x05, 0, 0, 0, 0]);
        b[8..12].copy_from_slice(&[0, 0, 0, 1]); // ndev
        let path = b"/sys/devices/platform/dummy_hcd.0/usb17/17-1";
        b[0x0C..0x0C + path.len()].copy_from_slice(path);
        b[0x10C..0x110].copy_from_slice(b"17-1");
        b[0x12C..0x130].copy_from_slice(&[0, 0, 0, 17]); // busnum
        b[0x130..0x134].copy_from_slice(&[0, 0, 0, 2]); // devnum
        b[0x134..0x138].copy_from_slice(&[0, 0, 0, 3]); // speed: high
        b[0x138..0x13A].copy_from_slice(&[0x12, 0x09]); // idVendor
        b[0x13A..0x13C].copy_from_slice(&[0x00, 0x01]); // idProduct
        b[0x13C..0x13E].copy_from_slice(&[0x01, 0x00]); // bcdDevice
        b[0x13E] = 0; // class
        b[0x141] = 1; // bConfigurationValue
        b[0x142] = 1; // bNumConfigurations
        b[0x143] = 2; // bNumInterfaces
        b[0x144..0x148].copy_from_slice(&[0xff, 0x00, 0x00, 0x00]);
        b[0x148..0x14C].copy_from_slice(&[0x02, 0x0d, 0x00, 0x00]);
        b
    }

    fn expected_device() -> DeviceInfo {
        let interfaces = vec![
            InterfaceInfo {
                class: 0xff,
                subclass: 0,
                protocol: 0,
            },
            InterfaceInfo {
                class: 2,
                subclass: 0x0d,
                protocol: 0,
            },
        ];
        crate::testing::dummy_hcd_device(17, 1, interfaces)
    }

    #[test]
    fn req_devlist_bytes() {
        let mut out = Vec::new();
        emit_req_devlist(&mut out);
        assert_eq!(out, REQ_DEVLIST);
        assert_eq!(
            parse_op_request(&out).unwrap(),
            Some((OpRequest::Devlist, 8))
        );
    }

    #[test]
    fn req_import_bytes() {
        let mut out = Vec::new();
        emit_req_import(&mut out, "3-2").unwrap();
        let mut want = vec![0x01, 0x11, 0x80, 0x03, 0, 0, 0, 0, b'3', b'-', b'2'];
        want.resize(40, 0);
        assert_eq!(out, want);
        assert_eq!(
            parse_op_request(&out).unwrap(),
            Some((OpRequest::Import("3-2".into()), 40))
        );
        assert!(emit_req_import(&mut out, &"1".repeat(32)).is_err());
    }

    #[test]
    fn rep_devlist_fixture_parses() {
        let b = rep_devlist_fixture();
        let (devs, used) = parse_rep_devlist(&b).unwrap().unwrap();
        assert_eq!(used, b.len());
        assert_eq!(devs, vec![expected_device()]);
        assert_eq!(devs[0].devid(), 17 << 16 | 2);
        // Our encoder produces the same bytes.
        let mut out = Vec::new();
        emit_rep_devlist(&mut out, &devs);
        assert_eq!(out, b);
    }

    #[test]
    fn rep_devlist_incomplete_waits() {
        let b = rep_devlist_fixture();
        for n in 0..b.len() {
            assert_eq!(parse_rep_devlist(&b[..n]).unwrap(), None, "prefix {n}");
        }
    }

    #[test]
    fn rep_devlist_empty() {
        let b = [0x01, 0x11, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_rep_devlist(&b).unwrap(), Some((vec![], 12)));
    }

    #[test]
    fn rep_import_fixture_parses() {
        // OP_REP_IMPORT: the device block starts at 8 (busid at 0x108, busnum at 0x128, ...).
        let dl = rep_devlist_fixture();
        let mut b = vec![0x01, 0x11, 0x00, 0x03, 0, 0, 0, 0];
        b.extend_from_slice(&dl[12..12 + DEVICE_LEN]);
        assert_eq!(&b[0x108..0x10C], b"17-1");
        assert_eq!(&b[0x128..0x12C], &[0, 0, 0, 17]);
        let (dev, used) = parse_rep_import(&b).unwrap().unwrap();
        assert_eq!(used, 320);
        let mut want = expected_device();
        want.interfaces.clear();
        assert_eq!(dev, want);
        let mut out = Vec::new();
        emit_rep_import(&mut out, Some(&dev));
        assert_eq!(out, b);
        for n in 0..b.len() {
            assert_eq!(parse_rep_import(&b[..n]).unwrap(), None);
        }
    }

    #[test]
    fn rep_import_refused() {
        let b = [0x01, 0x11, 0x00, 0x03, 0, 0, 0, 1];
        assert_eq!(
            parse_rep_import(&b),
            Err(Error::OpRefused {
                op: "import",
                status: 1
            })
        );
    }

    #[test]
    fn garbage_replies_are_errors() {
        // An HTTP server on the port.
        assert_eq!(
            parse_rep_devlist(b"HTTP/1.1 400 Bad Request\r\n"),
            Err(Error::BadVersion(0x4854))
        );
        // A devlist reply where an import reply is expected.
        let b = [0x01, 0x11, 0x00, 0x05, 0, 0, 0, 0];
        assert_eq!(
            parse_rep_import(&b),
            Err(Error::UnexpectedReply {
                expected: OP_REP_IMPORT,
                got: OP_REP_DEVLIST
            })
        );
        // An absurd device count is refused before waiting for 4 GiB.
        let b = [0x01, 0x11, 0x00, 0x05, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            parse_rep_devlist(&b),
            Err(Error::TooManyDevices { .. })
        ));
    }

    #[test]
    fn export_round_trip_and_byte_layout() {
        let dev = crate::testing::dummy_hcd_device(1, 1, Vec::new());
        let mut out = Vec::new();
        emit_req_export(&mut out, &dev);
        assert_eq!(out.len(), REQ_EXPORT_LEN);
        assert_eq!(&out[..8], &[0x01, 0x11, 0x80, 0x06, 0, 0, 0, 0]);
        // The device block at 8, laid out as in OP_REP_IMPORT: busid at 8 + 0x100.
        assert_eq!(&out[0x108..0x108 + dev.busid.len()], dev.busid.as_bytes());
        for n in 0..out.len() {
            assert_eq!(parse_op_request(&out[..n]).unwrap(), None, "prefix {n}");
        }
        let mut want = dev.clone();
        want.interfaces.clear();
        assert_eq!(
            parse_op_request(&out).unwrap(),
            Some((OpRequest::Export(want.clone()), REQ_EXPORT_LEN))
        );
        out.clear();
        emit_req_unexport(&mut out, &dev);
        assert_eq!(&out[2..4], &[0x80, 0x07]);
        assert_eq!(
            parse_op_request(&out).unwrap(),
            Some((OpRequest::Unexport(want), REQ_EXPORT_LEN))
        );
    }

    #[test]
    fn export_replies() {
        let mut ok = Vec::new();
        emit_rep_export(&mut ok, true);
        assert_eq!(ok, [0x01, 0x11, 0x00, 0x06, 0, 0, 0, 0, 0, 0, 0, 0]);
        for n in 0..ok.len() {
            assert_eq!(parse_rep_export(&ok[..n]).unwrap(), None);
        }
        assert_eq!(parse_rep_export(&ok).unwrap(), Some(REP_EXPORT_LEN));
        let mut no = Vec::new();
        emit_rep_export(&mut no, false);
        assert!(matches!(
            parse_rep_export(&no),
            Err(Error::OpRefused { op: "export", .. })
        ));
        // The series' own application side: status 0 and a host-order (little-endian) returncode.
        let le = [0x01, 0x11, 0x00, 0x06, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(parse_rep_export(&le).is_err());
        // An unexport reply where an export reply is expected.
        let mut un = Vec::new();
        emit_rep_unexport(&mut un, true);
        assert_eq!(parse_rep_unexport(&un).unwrap(), Some(REP_EXPORT_LEN));
        assert!(matches!(
            parse_rep_export(&un),
            Err(Error::UnexpectedReply { .. })
        ));
    }

    #[test]
    fn speed_texts() {
        assert_eq!(Speed::from_sysfs("480"), Some(Speed::High));
        assert_eq!(Speed::from_sysfs("5000"), Some(Speed::Super));
        assert_eq!(Speed::from_sysfs("fast"), None);
        assert_eq!(Speed::High.name(), "high");
        assert_eq!(Speed::from_u32(6).name(), "super-plus");
        assert_eq!(Speed::from_u32(9).name(), "unknown");
        for v in 0..10 {
            assert_eq!(Speed::from_u32(v).to_u32(), v);
        }
    }
}
