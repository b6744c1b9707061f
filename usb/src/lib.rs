//! qbkit-usb: the board on USB for qbkit-host, the only crate of the product that touches the USB
//! library (nusb).
//!
//! It moves *bundles* (opaque byte buffers; the format is `shared_frame`'s) between the laptop and a
//! qbkit board, one bundle per bulk transfer, and tells the driver when boards come and go.
//!
//! # Theory of operation
//!
//! ```text
//!  discover.rs   list_devices ─ filter (VID:PID, vendor iface 0xff, --serial) ─▶ Board / BoardInfo
//!  hotplug.rs    nusb::watch_devices  ┐
//!                slow rescan timer    ┴─▶ BoardWatch::next() ─▶ BoardEvent::{Arrived, Left}
//!  link.rs       Board ─ open, set configuration if unconfigured, claim ─▶ UsbLink
//!                UsbRx: IN_DEPTH transfers always submitted (+1 spare buffer) ─▶ recv_bundle() -> &[u8]
//!                UsbTx: send_bundle(&[u8]) copies into one of OUT_DEPTH pooled buffers ─▶ submit
//!  error.rs      nusb errors ─▶ UsbError with the fix (udev rule, WinUSB INF, busy interface)
//! ```
//!
//! # Invariants and bounds
//!
//! - Buffers are allocated once per link (`Endpoint::allocate`: zero-copy mmap on Linux) and reused;
//!   no allocation per transfer. Memory per link = `(in_depth + 1 + out_depth) × transfer size`.
//! - While the receiver is being polled, `in_depth` IN transfers are queued in the OS; the buffer
//!   lent to the caller by [`UsbRx::recv_bundle`] is the spare one, so lending it never lowers the
//!   queue depth.
//! - A vanished device completes every queued transfer with an error, so no call waits forever for
//!   a device that is gone: it returns [`UsbError::Disconnected`], and so does every later call.
//!
//! # ZLP rule (decision)
//!
//! A bulk transfer whose length is a non-zero multiple of wMaxPacketSize (512 at high speed, 1024 at
//! super speed) ends with a full packet, so the receiver's read does not end there.
//! - Gadget → host: the gadget pads such bundles (`BundleWriter::finish_usb`); the host asks for
//!   transfers of the maximum bundle size rounded up to a multiple of 1024, so one bundle is one
//!   transfer at both speeds. A zero-length IN completion (a ZLP the gadget sent anyway) is skipped.
//! - Host → gadget: bundles built with `finish_usb` are never a multiple; for any other buffer whose
//!   length is ([`shared_frame::needs_zlp`]) the transport submits a zero-length transfer right
//!   after it. nusb sends exactly what is submitted on every OS, so this is explicit and portable
//!   (WinUSB's SHORT_PACKET_TERMINATE policy and usbfs's URB_ZERO_PACKET flag are not needed).

mod discover;
mod error;
mod hotplug;
mod link;

pub use discover::{Board, BoardInfo, BoardState, DeviceFilter, VendorInterface, list_boards};
pub use error::{LINUX_PERMISSION_ADVICE, UsbError, WINDOWS_DRIVER_ADVICE, permission_advice};
pub use hotplug::{
    BoardEvent, BoardWatch, EventSource, RESCAN_WITH_HOTPLUG, RESCAN_WITHOUT_HOTPLUG, WatchStats,
};
pub use link::{UsbConfig, UsbLink, UsbRx, UsbTx};
pub use nusb::DeviceId;

/// IN transfers kept queued at all times (measured in docs/usb-library.md: 4 keeps the bus busy).
pub const DEFAULT_IN_DEPTH: usize = 4;
/// OUT transfers that may be in flight at once (2 is enough to keep the bus busy while the next
/// bundle is being built; more only adds latency).
pub const DEFAULT_OUT_DEPTH: usize = 2;
