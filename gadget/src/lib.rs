//! qbkit-gadget: the board daemon of qbkit-net, as a library so the binary stays thin and the pure
//! parts are unit-tested without root.
//!
//! Data flow: [`config`] merges defaults, the TOML file and flags into a [`config::GadgetSpec`] and
//! network overrides. [`configfs::plan`] and [`ffs::descriptors`] turn the spec into data (ConfigFS
//! layout, FunctionFS descriptor blobs) without I/O; [`ffs::usb`] registers it with the `usb-gadget`
//! crate. [`pump::Pump`] is the sans-IO core between the TUN device and the link (bundles, session,
//! carrier, counters, and the [`linkcheck`] of the host's LinkConfig); [`driver`] is the one I/O loop that feeds it from the TUN device
//! ([`netcfg`] applies addresses, routes, MTU, carrier; [`dns`] installs resolvers) and from a link
//! (FunctionFS in [`ffs::usb`], byte streams in [`stream`]). [`control`] answers `status` and
//! `teardown` on a local unix socket.
#![cfg(target_os = "linux")]
#![warn(missing_docs)]

pub mod config;
pub mod configfs;
#[cfg(feature = "daemon")]
pub mod control;
#[cfg(feature = "daemon")]
pub mod dns;
#[cfg(feature = "daemon")]
pub mod driver;
#[cfg(feature = "daemon")]
pub mod export;
#[cfg(feature = "daemon")]
pub mod ffs;
pub mod linkcheck;
#[cfg(feature = "daemon")]
pub mod netcfg;
pub mod pump;
#[cfg(feature = "daemon")]
pub mod stream;
