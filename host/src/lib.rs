//! qbkit-host library: transports (USB, streams), the driver loop, the OS socket side of the NAT,
//! status reporting, the tray icon and per-OS bits. The binary (`main.rs`) only parses arguments
//! and runs an [`engine::Engine`] (`run`), or the same engine with a tray icon ([`tray::app`]).
//!
//! ```text
//!  transport::{stream, usb} ──LinkEvent──▶ driver ◀──▶ qbkit_nat::Nat (sans-IO)
//!                                            │  └──Summary──▶ tray::app ──▶ tray (icon, menu)
//!                                            └──▶ sockets (OS TCP/UDP/ping sockets) ◀──▶ platform
//! ```

pub mod config;
pub mod dns_watch;
pub mod driver;
pub mod engine;
pub mod forward;
pub mod platform;
pub mod relay;
pub mod sockets;
pub mod status;
pub mod transport;
pub mod tray;
pub use qbkit_usb as usb;
