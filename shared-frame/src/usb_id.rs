//! The USB identity of a qbkit board, in one place: what the gadget announces, what the host looks
//! for, and what the udev rule (`udev/70-qbkit.rules`) and the Windows INF (`windows-inf/qbkit.inf`)
//! match. `tests/usb_id.rs` fails when those files disagree with the values here.
//!
//! 1209:0001 is the pid.codes *test* ID: fine for development, not for a product. A vendor with its
//! own VID:PID changes [`VID`] and [`PID`] here and the two IDs in the udev rule and the INF (the
//! test names the lines); the gadget's defaults, the host's discovery defaults, the USB/IP client,
//! the benches, the MS OS descriptors and the generated ConfigFS shell fallback all follow. A board
//! can also announce other IDs at run time (`qbkit-gadget --vid/--pid`, `[usb]` in gadget.toml); the
//! host then needs `--vid/--pid` and the udev rule a copy of its lines with those IDs.

/// USB vendor ID: pid.codes (<https://pid.codes>), an open-source VID.
pub const VID: u16 = 0x1209;
/// USB product ID: the pid.codes test PID. Replace with an allocated PID before shipping boards.
pub const PID: u16 = 0x0001;
/// bcdDevice. Bump rule: Windows caches MS OS descriptors per VID/PID/bcdDevice, so every release
/// that changes a descriptor (interfaces, endpoints, OS descriptors, GUID) increments it.
pub const BCD_DEVICE: u16 = 0x0100;
/// Interface class triple of the qbkit-net interface: vendor-specific, subclass 'Q', protocol 1.
pub const INTERFACE_CLASS: (u8, u8, u8) = (0xff, 0x51, 0x01);
/// Manufacturer string descriptor.
pub const MANUFACTURER: &str = "qbkit";
/// Product string descriptor.
pub const PRODUCT: &str = "qbkit-net";
/// Interface string descriptor (also the configuration string).
pub const INTERFACE_NAME: &str = "qbkit-net";
/// DeviceInterfaceGUID announced through the MS OS 1.0 extended properties (Windows 8+ binds
/// WinUSB with it, no INF); the INF for Windows 7 registers the same GUID.
pub const DEVICE_INTERFACE_GUID: &str = "{6199f4ea-793a-4b5b-8c3d-560c3e8c6dd5}";
/// MS OS 1.0 vendor code for the extended descriptor requests.
pub const MS_VENDOR_CODE: u8 = 0xf0;
