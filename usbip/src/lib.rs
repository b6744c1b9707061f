//! qbkit-usbip: a userspace USB/IP client, so `qbkit-host` can reach a board exported by `usbipd`
//! (or by the qubes.USB service in a Qubes sys-usb qube) with no vhci-hcd module and no root.
//!
//! Protocol: USB/IP v1.1.1 as in the Linux kernel's `Documentation/usb/usbip_protocol.rst`.
//!
//! ```text
//!  usbip://HOST[:3240]/BUSID                        qubes-usb:CMD
//!  TCP connect                                      spawn CMD (e.g. qrexec-client-vm sys-usb qubes.USB+2-1)
//!  OP_REQ_DEVLIST → OP_REP_DEVLIST   (list only)    read "<devid> <speed>\n"
//!  OP_REQ_IMPORT  → OP_REP_IMPORT (devid)
//!            └──────────────┬──────────────────────────────┘
//!                 URB stream: CMD_SUBMIT/RET_SUBMIT, CMD_UNLINK/RET_UNLINK
//!                 GET_DESCRIPTOR (device, config) → [SET_CONFIGURATION] → vendor bulk IN/OUT
//!                 N bulk IN URBs of max-bundle size + M bulk OUT URBs in flight: one bundle each
//! ```
//!
//! # Layers
//!
//! - [`op`]: the connection-setup messages (device list, import), incremental parsers.
//! - [`urb`]: the 48-byte URB-stream headers ([`Pdu`]), setup packets, transfer flags.
//! - [`desc`]: the few USB descriptors needed to find the vendor interface.
//! - [`client`]: [`Client`], the sans-IO state machine (`submit_*` / `unlink` / `handle_bytes` /
//!   `handle_eof` / `poll_transmit` / `poll_event`). No I/O, no clock, no tokio, no libc.
//! - `transport` (feature `tokio`): [`transport::UsbipLink`] drives a `Client` over TCP or a child
//!   process and moves qbkit bundles; [`transport::list`] lists a server's devices.
//! - `export` (feature `tokio`): the device-side connect ("exporting devices"): the board dials the
//!   application side with OP_REQ_EXPORT; [`export::read_request`] / [`export::reply`] answer it and
//!   [`transport::UsbipLink::from_export`] drives the offered device like an imported one.
//! - `fake` (feature `fake`): an in-process fake usbipd with fault injection, for tests.
//!
//! Decoding is total: any byte sequence gives a value or an [`Error`], never a panic (unit tests,
//! proptests and the `usbip_codec` fuzz target).
//!
//! # Why not the `usbip` crate
//!
//! The `usbip` crate (jiegec/usbip, 0.9.0 checked) implements a USB/IP *server*: it emits
//! `UsbIpResponse` and parses `UsbIpCommand` straight from a tokio socket
//! (`UsbIpCommand::read_from_socket`), and it always depends on tokio, rusb and nusb. A client needs the
//! opposite direction (parse replies, emit commands), incrementally and without I/O, and its only
//! reusable part, the plain header structs, is twenty lines. So none of it is used; its message layout
//! agrees with ours (both follow the kernel document), which the byte fixtures here check against the
//! spec's tables and example captures directly.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod desc;
mod error;
pub mod op;
pub mod urb;

#[cfg(feature = "tokio")]
pub mod transport;

#[cfg(feature = "tokio")]
pub mod export;

#[cfg(feature = "fake")]
pub mod fake;

#[cfg(any(test, feature = "fake"))]
#[doc(hidden)]
pub mod testing;

pub use client::{Client, ClientConfig, ClientEvent, Completion, TransferKind};
pub use error::Error;
pub use op::{DeviceInfo, InterfaceInfo, Speed, USBIP_PORT};
pub use urb::{Direction, Pdu, SetupPacket, status_name};
