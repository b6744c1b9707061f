//! Fixtures for the tests and examples of the crates that speak the protocol: a board Hello and
//! the default address plan (10.47.0.2/24 via 10.47.0.1, fd47::2/64 via fd47::1) as a
//! LinkConfig. Not part of the API.

use alloc::vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Capabilities, Cidr, Hello, LinkConfig, Role};

/// A board's Hello: version 1, every capability, 64 KiB bundles, MTU 16384.
pub fn board_hello(identity: &str) -> Hello {
    Hello {
        version: 1,
        role: Role::Board,
        flags: 0,
        capabilities: Capabilities::ALL,
        max_bundle: 65536,
        max_mtu: 16384,
        identity: identity.into(),
    }
}

/// The default IPv4 configuration: 10.47.0.2/24, gateway and DNS server 10.47.0.1, and `mtu`.
pub fn link_config_v4(mtu: u32) -> LinkConfig {
    LinkConfig {
        ipv4: Some(Cidr {
            addr: Ipv4Addr::new(10, 47, 0, 2),
            prefix: 24,
        }),
        gateway_v4: Some(Ipv4Addr::new(10, 47, 0, 1)),
        dns: vec![IpAddr::V4(Ipv4Addr::new(10, 47, 0, 1))],
        mtu,
        ..LinkConfig::default()
    }
}

/// The default dual-stack configuration: [`link_config_v4`] with MTU 16384, plus fd47::2/64,
/// gateway fd47::1, and fd47::1 as a second DNS server.
pub fn link_config_dual_stack() -> LinkConfig {
    let v6 = |last| Ipv6Addr::new(0xfd47, 0, 0, 0, 0, 0, 0, last);
    let mut lc = link_config_v4(16384);
    lc.ipv6 = Some(Cidr {
        addr: v6(2),
        prefix: 64,
    });
    lc.gateway_v6 = Some(v6(1));
    lc.dns.push(IpAddr::V6(v6(1)));
    lc
}
