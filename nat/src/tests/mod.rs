//! Deterministic tests of the NAT core: a fake clock, crafted board packets (smoltcp::wire Reprs),
//! a second smoltcp stack playing the board's kernel for whole TCP conversations, and the test
//! itself playing the driver with scripted `OsEvent`s. No sockets, no sleeping.

// NatConfig is #[non_exhaustive]: the driver sets fields on a default, and so do the tests.
#![allow(clippy::field_reassign_with_default)]

mod dns;
mod egress;
mod evict;
mod harness;
mod inbound;
mod ipv6;
mod packets;
mod pressure;
mod proto;
#[cfg(target_os = "linux")]
mod rings;
mod stream;

pub(crate) use harness::*;
pub(crate) use packets::*;
