//! Sanity check of a LinkConfig before the board applies it as root (pure, no I/O).
//!
//! The host is not trusted to configure the board's routing: [`check`] refuses an IPv4 prefix
//! shorter than /8, an IPv6 prefix shorter than /48 (a /1 would route half the address space into
//! the link even with `--no-default-route`), an MTU outside 1280..=65520, and a gateway outside
//! the link prefix. [`crate::pump::Pump`] runs it on every offer (after the board's static
//! overrides) and keeps the carrier off while the configuration is refused.

use std::net::{Ipv4Addr, Ipv6Addr};

use shared_frame::LinkConfig;

/// Shortest IPv4 prefix the board accepts.
pub const MIN_PREFIX_V4: u8 = 8;
/// Shortest IPv6 prefix the board accepts.
pub const MIN_PREFIX_V6: u8 = 48;
/// Accepted link MTUs: IPv6's minimum up to what one default-size bundle carries (65520).
pub const MTU_RANGE: std::ops::RangeInclusive<u32> =
    1280..=shared_frame::max_packet(shared_frame::DEFAULT_MAX_BUNDLE) as u32;

/// Why a LinkConfig was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkConfigError {
    /// IPv4 prefix shorter than /8 or longer than /32.
    #[error("IPv4 prefix /{0} refused (allowed /{MIN_PREFIX_V4}../32)")]
    PrefixV4(u8),
    /// IPv6 prefix shorter than /48 or longer than /128.
    #[error("IPv6 prefix /{0} refused (allowed /{MIN_PREFIX_V6}../128)")]
    PrefixV6(u8),
    /// MTU outside [`MTU_RANGE`].
    #[error("MTU {0} refused (allowed 1280..=65520)")]
    Mtu(u32),
    /// The IPv4 gateway is not inside the board's IPv4 prefix (or there is no IPv4 address).
    #[error("IPv4 gateway {0} is outside the link prefix")]
    GatewayV4(Ipv4Addr),
    /// The IPv6 gateway is not inside the board's IPv6 prefix (or there is no IPv6 address).
    #[error("IPv6 gateway {0} is outside the link prefix")]
    GatewayV6(Ipv6Addr),
}

/// Checks `lc`; the first problem found is returned.
pub fn check(lc: &LinkConfig) -> Result<(), LinkConfigError> {
    if !MTU_RANGE.contains(&lc.mtu) {
        return Err(LinkConfigError::Mtu(lc.mtu));
    }
    if let Some(c) = lc.ipv4
        && !(MIN_PREFIX_V4..=32).contains(&c.prefix)
    {
        return Err(LinkConfigError::PrefixV4(c.prefix));
    }
    if let Some(c) = lc.ipv6
        && !(MIN_PREFIX_V6..=128).contains(&c.prefix)
    {
        return Err(LinkConfigError::PrefixV6(c.prefix));
    }
    if let Some(gw) = lc.gateway_v4
        && !lc
            .ipv4
            .is_some_and(|c| same_prefix(c.addr.to_bits(), gw.to_bits(), c.prefix))
    {
        return Err(LinkConfigError::GatewayV4(gw));
    }
    if let Some(gw) = lc.gateway_v6
        && !lc
            .ipv6
            .is_some_and(|c| same_prefix(c.addr.to_bits(), gw.to_bits(), c.prefix))
    {
        return Err(LinkConfigError::GatewayV6(gw));
    }
    Ok(())
}

/// Whether `a` and `b` (IPv4 or IPv6 bits, right-aligned in a u128) share the first `prefix`
/// bits of their width.
fn same_prefix<T: Into<u128>>(a: T, b: T, prefix: u8) -> bool {
    let width = u32::try_from(size_of::<T>() * 8).unwrap_or(128);
    let host_bits = width.saturating_sub(u32::from(prefix));
    let diff = a.into() ^ b.into();
    diff.checked_shr(host_bits).unwrap_or(0) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_frame::Cidr;
    use shared_frame::testing::{link_config_dual_stack, link_config_v4};

    #[test]
    fn the_hosts_default_offers_pass() {
        assert_eq!(check(&link_config_v4(16384)), Ok(()));
        assert_eq!(check(&link_config_dual_stack()), Ok(()));
        assert_eq!(check(&link_config_v4(1280)), Ok(()));
        assert_eq!(check(&link_config_v4(65520)), Ok(()));
        // Nothing at all (no addresses, no gateways) is harmless.
        let empty = LinkConfig {
            mtu: 1500,
            ..LinkConfig::default()
        };
        assert_eq!(check(&empty), Ok(()));
    }

    #[test]
    fn short_prefixes_are_refused() {
        let v4 = |prefix| {
            let mut lc = link_config_v4(1500);
            lc.gateway_v4 = None;
            lc.ipv4 = Some(Cidr {
                addr: Ipv4Addr::new(10, 47, 0, 2),
                prefix,
            });
            check(&lc)
        };
        let v6 = |prefix| {
            let mut lc = link_config_dual_stack();
            lc.gateway_v6 = None;
            lc.ipv6 = lc.ipv6.map(|c| Cidr { prefix, ..c });
            check(&lc)
        };
        for p in [8, 30, 32] {
            assert_eq!(v4(p), Ok(()), "/{p}");
        }
        for p in [0, 1, 7, 33] {
            assert_eq!(v4(p), Err(LinkConfigError::PrefixV4(p)), "/{p}");
        }
        for p in [48, 64, 128] {
            assert_eq!(v6(p), Ok(()), "/{p}");
        }
        for p in [0, 1, 47, 129] {
            assert_eq!(v6(p), Err(LinkConfigError::PrefixV6(p)), "/{p}");
        }
    }

    #[test]
    fn mtu_outside_the_range_is_refused() {
        for mtu in [1280, 1500, 16384, 65520] {
            assert_eq!(check(&link_config_v4(mtu)), Ok(()), "{mtu}");
        }
        for mtu in [0, 576, 1279, 65521, 65535, u32::MAX] {
            assert_eq!(
                check(&link_config_v4(mtu)),
                Err(LinkConfigError::Mtu(mtu)),
                "{mtu}"
            );
        }
    }

    #[test]
    fn gateway_outside_the_prefix_is_refused() {
        let mut lc = link_config_v4(1500);
        lc.gateway_v4 = Some(Ipv4Addr::new(10, 47, 1, 1));
        assert_eq!(
            check(&lc),
            Err(LinkConfigError::GatewayV4(Ipv4Addr::new(10, 47, 1, 1)))
        );
        lc.gateway_v4 = Some(Ipv4Addr::new(10, 47, 0, 254));
        assert_eq!(check(&lc), Ok(()));
        lc.ipv4 = None;
        assert!(
            matches!(check(&lc), Err(LinkConfigError::GatewayV4(_))),
            "gateway with no address"
        );

        let mut lc = link_config_dual_stack();
        let far: Ipv6Addr = "fd48::1".parse().unwrap();
        lc.gateway_v6 = Some(far);
        assert_eq!(check(&lc), Err(LinkConfigError::GatewayV6(far)));
        lc.gateway_v6 = Some("fd47::ffff:1".parse().unwrap());
        assert_eq!(check(&lc), Ok(()));
    }

    #[test]
    fn errors_say_what_was_refused() {
        assert_eq!(
            LinkConfigError::PrefixV4(1).to_string(),
            "IPv4 prefix /1 refused (allowed /8../32)"
        );
        assert!(LinkConfigError::Mtu(9).to_string().contains("1280..=65520"));
    }
}
