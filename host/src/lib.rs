//! qbkit-host library: transports (USB, streams), the driver loop, the OS socket side of the NAT,
//! status reporting and per-OS bits. The binary (`main.rs`) only parses arguments and calls
//! [`driver::run`].
//!
//! ```text
//!  transport::{stream, usb} ──LinkEvent──▶ driver ◀──▶ qbkit_nat::Nat (sans-IO)
//!                                            │
//!                                            └──▶ sockets (OS TCP/UDP/ping sockets) ◀──▶ platform
//! ```

pub mod config;
pub mod driver;
pub mod platform;
pub mod sockets;
pub mod status;
pub mod transport;
pub mod usb;
