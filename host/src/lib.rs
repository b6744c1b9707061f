//! qbkit-host library: transports (USB over qbkit-usb, USB/IP; stream links come from
//! qbkit-link), the sans-IO core (link session + NAT + bundles), the driver loop around it, the
//! OS socket side of the NAT, status reporting, the tray icon and per-OS bits. The binary
//! (`main.rs`) only parses arguments and runs an [`engine::Engine`] (`run`), or the same engine
//! with a tray icon ([`tray::app`]).
//!
//! ```text
//!  transport::{usb, usbip}, qbkit_link::run_stream ──LinkEvent──▶ driver ◀──▶ core (sans-IO:
//!                                      │  └──Summary──▶ tray::app ──▶ tray     Session + Nat)
//!                                      └──▶ sockets (OS TCP/UDP/ping sockets) ◀──▶ platform
//! ```

pub mod boards;
pub mod config;
/// The sans-IO core, a crate of its own (`host-core/`) so the fuzz targets reach it without the
/// host's I/O dependencies.
pub use qbkit_host_core as core;
pub mod dns_watch;
pub mod driver;
pub mod engine;
pub mod forward;
pub mod logfile;
#[cfg(target_os = "linux")]
pub mod page_alloc;
pub mod platform;
pub mod relay;
pub mod report;
pub mod sockets;
pub mod status;
pub mod transport;
pub mod tray;
pub use qbkit_usb as usb;
