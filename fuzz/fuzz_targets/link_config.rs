//! Fuzz target: the pure part of applying the host's LinkConfig on the board: the board's static
//! overrides on top of the offer (`NetOverrides::apply`) and the safety check
//! (`qbkit_gadget::linkcheck::check`) that decides whether the board configures it as root.
//!
//! Properties: `check` agrees with an independent model of its rules (MTU range, shortest
//! prefixes, gateway inside the link prefix, computed here with masks); applying the overrides is
//! idempotent and every set override wins; a LinkConfig survives its wire encoding
//! (`Control::LinkConfig` emit → parse) unchanged, so what is checked is what the host sent (one
//! with a prefix longer than its address does not parse, and the check refuses it too).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use qbkit_gadget::config::{DnsMode, NetOverrides};
use qbkit_gadget::linkcheck::{self, LinkConfigError, MIN_PREFIX_V4, MIN_PREFIX_V6, MTU_RANGE};
use shared_frame::{Cidr, Control, LinkConfig};

#[derive(Arbitrary, Debug)]
struct Config {
    ipv4: Option<(u32, u8)>,
    gateway_v4: Option<u32>,
    ipv6: Option<(u128, u8)>,
    gateway_v6: Option<u128>,
    dns: Vec<(bool, u128)>,
    mtu: u32,
}

#[derive(Arbitrary, Debug)]
struct Input {
    offer: Config,
    /// The board's overrides: which fields of `over` are set.
    set: u8,
    over: Config,
}

fn link_config(c: &Config) -> LinkConfig {
    LinkConfig {
        ipv4: c.ipv4.map(|(a, p)| Cidr {
            addr: Ipv4Addr::from_bits(a),
            prefix: p,
        }),
        gateway_v4: c.gateway_v4.map(Ipv4Addr::from_bits),
        ipv6: c.ipv6.map(|(a, p)| Cidr {
            addr: Ipv6Addr::from_bits(a),
            prefix: p,
        }),
        gateway_v6: c.gateway_v6.map(Ipv6Addr::from_bits),
        dns: c
            .dns
            .iter()
            .take(8) // MAX_DNS: more are not encoded
            .map(|&(v4, a)| {
                if v4 {
                    IpAddr::V4(Ipv4Addr::from_bits(a as u32))
                } else {
                    IpAddr::V6(Ipv6Addr::from_bits(a))
                }
            })
            .collect(),
        mtu: c.mtu,
    }
}

/// The documented rules, written independently of `linkcheck` (masks instead of shifts).
fn model(lc: &LinkConfig) -> Result<(), LinkConfigError> {
    if !MTU_RANGE.contains(&lc.mtu) {
        return Err(LinkConfigError::Mtu(lc.mtu));
    }
    if let Some(c) = lc.ipv4
        && (c.prefix < MIN_PREFIX_V4 || c.prefix > 32)
    {
        return Err(LinkConfigError::PrefixV4(c.prefix));
    }
    if let Some(c) = lc.ipv6
        && (c.prefix < MIN_PREFIX_V6 || c.prefix > 128)
    {
        return Err(LinkConfigError::PrefixV6(c.prefix));
    }
    if let Some(gw) = lc.gateway_v4 {
        let inside = lc.ipv4.is_some_and(|c| {
            let mask = if c.prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(c.prefix))
            };
            c.addr.to_bits() & mask == gw.to_bits() & mask
        });
        if !inside {
            return Err(LinkConfigError::GatewayV4(gw));
        }
    }
    if let Some(gw) = lc.gateway_v6 {
        let inside = lc.ipv6.is_some_and(|c| {
            let mask = if c.prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(c.prefix))
            };
            c.addr.to_bits() & mask == gw.to_bits() & mask
        });
        if !inside {
            return Err(LinkConfigError::GatewayV6(gw));
        }
    }
    Ok(())
}

fuzz_target!(|input: Input| {
    let offer = link_config(&input.offer);
    let o = link_config(&input.over);
    let bit = |n: u8| input.set & (1 << n) != 0;
    let overrides = NetOverrides {
        ipv4: o.ipv4.filter(|_| bit(0)),
        gateway_v4: o.gateway_v4.filter(|_| bit(1)),
        ipv6: o.ipv6.filter(|_| bit(2)),
        gateway_v6: o.gateway_v6.filter(|_| bit(3)),
        dns: Some(o.dns.clone()).filter(|_| bit(4)),
        mtu: Some(o.mtu).filter(|_| bit(5)),
        default_route: bit(6),
        dns_mode: DnsMode::Auto,
    };
    let applied = overrides.apply(&offer);
    assert_eq!(
        overrides.apply(&applied),
        applied,
        "apply is not idempotent"
    );
    // A set override wins, an unset one leaves the offer.
    assert_eq!(applied.ipv4, overrides.ipv4.or(offer.ipv4));
    assert_eq!(
        applied.gateway_v4,
        overrides.gateway_v4.or(offer.gateway_v4)
    );
    assert_eq!(applied.ipv6, overrides.ipv6.or(offer.ipv6));
    assert_eq!(
        applied.gateway_v6,
        overrides.gateway_v6.or(offer.gateway_v6)
    );
    if bit(5) {
        assert_eq!(applied.mtu, o.mtu);
    } else {
        assert_eq!(applied.mtu, offer.mtu);
    }
    if !bit(4) {
        assert_eq!(applied.dns, offer.dns);
    }
    for lc in [&offer, &applied] {
        assert_eq!(linkcheck::check(lc), model(lc), "check disagrees on {lc:?}");
        // What the host encodes is what the board checks.
        let msg = Control::LinkConfig(lc.clone());
        let mut wire = vec![0; msg.buffer_len()];
        msg.emit(&mut wire);
        match Control::parse(&wire) {
            Ok(Control::LinkConfig(back)) => assert_eq!(&back, lc, "wire round trip"),
            Err(e) => {
                // The wire refuses prefixes longer than the address; the check refuses them too.
                let bad_prefix = lc.ipv4.is_some_and(|c| c.prefix > 32)
                    || lc.ipv6.is_some_and(|c| c.prefix > 128);
                assert!(bad_prefix, "emitted LinkConfig {lc:?} does not parse: {e}");
                assert!(linkcheck::check(lc).is_err());
            }
            Ok(other) => panic!("emitted LinkConfig parses as {other:?}"),
        }
    }
});
