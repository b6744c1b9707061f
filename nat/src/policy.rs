//! Destination policy: where a board packet may go, and where its OS socket connects.
//!
//! Input: the destination the board addressed. Output: a [`Verdict`] — forward to an OS address
//! (possibly rewritten: gateway:53 → upstream resolver, gateway → 127.0.0.1 or ::1), or deny with
//! the counter to bump and the ICMP code to answer with. Pure function of the config.
//!
//! IPv6 follows the IPv4 rules class by class: `::1` and `fe80::/10` with host loopback and
//! link-local, `fc00::/7` (and the old site-local `fec0::/10`) with the LAN rule, multicast and
//! the unspecified address dropped, other addresses of the board's own prefix unreachable.
//! Addresses that carry an IPv4 address cannot be used to get around the IPv4 rules:
//! IPv4-mapped (`::ffff:0:0/96`) and IPv4-compatible (`::/96`) ones never appear on a wire and
//! would make an IPv6 OS socket talk IPv4, so they are martians; NAT64 (`64:ff9b::/96`,
//! `64:ff9b:1::/48`) and 6to4 (`2002::/16`) ones reach the IPv4 address they embed, so that
//! address must pass the IPv4 rules too.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::NatConfig;
use crate::icmp::Unreachable;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deny {
    /// Multicast, broadcast, unspecified, reserved: dropped silently.
    Martian,
    /// Loopback or link-local without `allow_host_loopback`.
    Loopback,
    /// Private network with `deny_lan`.
    Lan,
    /// One of the laptop's own addresses with `deny_lan`.
    HostAddr,
    /// A gateway port with no service, or another address on the board network.
    Gateway,
    /// DNS with no upstream resolver.
    NoDns,
}

impl Deny {
    /// The ICMP answer for a denied packet (None: silent drop).
    pub(crate) fn icmp_reason(self, to_gateway: bool) -> Option<Unreachable> {
        match self {
            Self::Martian => None,
            Self::Loopback | Self::Lan | Self::HostAddr => Some(Unreachable::Prohibited),
            Self::Gateway if to_gateway => Some(Unreachable::Port),
            Self::Gateway => Some(Unreachable::Host),
            Self::NoDns => Some(Unreachable::Port),
        }
    }

    /// What the user can change to allow it, for the log line (None: nothing; not a policy).
    pub(crate) fn allowed_by(self) -> Option<&'static str> {
        match self {
            Self::Loopback => Some("--allow-host-loopback"),
            Self::Lan | Self::HostAddr => Some("running without --deny-lan"),
            Self::Martian | Self::Gateway | Self::NoDns => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) os_dst: SocketAddr,
    pub(crate) dns: bool,
}

/// Whether the board may send anything to `ip` at all (martians are never forwarded).
pub(crate) fn is_martian(cfg: &NatConfig, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            ip.is_unspecified()
                || ip.is_multicast()
                || ip.is_broadcast()
                || o[0] == 0
                || o[0] >= 240
                || ip == subnet_broadcast(cfg)
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            ip.is_unspecified()
                || ip.is_multicast()
                || ip.to_ipv4_mapped().is_some()
                // IPv4-compatible (deprecated), except :: and ::1 (handled on their own).
                || (s[..6] == [0; 6] && !ip.is_loopback())
                // Discard-only 100::/64.
                || s[..4] == [0x100, 0, 0, 0]
        }
    }
}

fn subnet_broadcast(cfg: &NatConfig) -> Ipv4Addr {
    let mask = u32::MAX.checked_shr(u32::from(cfg.prefix_len)).unwrap_or(0);
    Ipv4Addr::from(u32::from(cfg.board_ipv4) | mask)
}

fn in_board_net(cfg: &NatConfig, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(cfg.prefix_len))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(cfg.board_ipv4) & mask
        }
        IpAddr::V6(ip) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(cfg.prefix_len_ipv6))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(cfg.board_ipv6) & mask
        }
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        // Unique local fc00::/7 and the deprecated site-local fec0::/10.
        IpAddr::V6(ip) => {
            let s0 = ip.segments()[0];
            s0 & 0xfe00 == 0xfc00 || s0 & 0xffc0 == 0xfec0
        }
    }
}

/// The IPv4 address a NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`) or 6to4 (`2002::/16`) address
/// leads to.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    if (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]) || (s[..3] == [0x64, 0xff9b, 1]) {
        Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        None
    }
}

fn is_gateway(cfg: &NatConfig, ip: IpAddr) -> bool {
    ip == IpAddr::V4(cfg.gateway_ipv4) || ip == IpAddr::V6(cfg.gateway_ipv6)
}

/// Decide where a TCP or UDP packet to `dst` goes. `dns_index` picks among the resolvers.
pub(crate) fn resolve(cfg: &NatConfig, dst: SocketAddr, dns_index: usize) -> Result<Target, Deny> {
    let ip = dst.ip();
    if is_martian(cfg, ip) {
        return Err(Deny::Martian);
    }
    if is_gateway(cfg, ip) {
        if dst.port() == 53 {
            if cfg.dns_servers.is_empty() {
                return Err(Deny::NoDns);
            }
            let server = cfg.dns_servers[dns_index % cfg.dns_servers.len()];
            return Ok(Target {
                os_dst: server,
                dns: true,
            });
        }
        if cfg.allow_host_loopback && cfg.map_gateway_to_loopback {
            let lo = match ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            return Ok(Target {
                os_dst: SocketAddr::new(lo, dst.port()),
                dns: false,
            });
        }
        return Err(Deny::Gateway);
    }
    check_ip(cfg, ip)?;
    Ok(Target {
        os_dst: dst,
        dns: false,
    })
}

/// The address part of the policy (also used for ICMP echo).
pub(crate) fn check_ip(cfg: &NatConfig, ip: IpAddr) -> Result<(), Deny> {
    if is_martian(cfg, ip) {
        return Err(Deny::Martian);
    }
    if in_board_net(cfg, ip) && !is_gateway(cfg, ip) {
        return Err(Deny::Gateway);
    }
    let loopback_or_link_local = match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unicast_link_local(),
    };
    if loopback_or_link_local {
        // The laptop's loopback is in `host_addrs` too; `allow_host_loopback` decides alone.
        return if cfg.allow_host_loopback {
            Ok(())
        } else {
            Err(Deny::Loopback)
        };
    }
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = embedded_ipv4(v6)
    {
        check_ip(cfg, IpAddr::V4(v4))?;
    }
    if cfg.deny_lan && is_private(ip) {
        return Err(Deny::Lan);
    }
    if cfg.deny_lan && cfg.host_addrs.contains(&ip) {
        return Err(Deny::HostAddr);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_dns_and_loopback_mapping() {
        let mut cfg = NatConfig::default();
        let gw = |p| SocketAddr::new(cfg_gw().into(), p);
        assert_eq!(resolve(&cfg, gw(53), 0), Err(Deny::NoDns));
        assert_eq!(resolve(&cfg, gw(80), 0), Err(Deny::Gateway));
        cfg.dns_servers = vec!["127.0.0.53:53".parse().unwrap()];
        assert_eq!(resolve(&cfg, gw(53), 0).unwrap().os_dst, cfg.dns_servers[0]);
        cfg.map_gateway_to_loopback = true;
        assert_eq!(
            resolve(&cfg, gw(80), 0),
            Err(Deny::Gateway),
            "mapping needs allow_host_loopback"
        );
        cfg.allow_host_loopback = true;
        assert_eq!(
            resolve(&cfg, gw(80), 0).unwrap().os_dst,
            "127.0.0.1:80".parse().unwrap()
        );
    }

    fn cfg_gw() -> Ipv4Addr {
        NatConfig::default().gateway_ipv4
    }

    #[test]
    fn address_classes() {
        let cfg = NatConfig::default();
        assert_eq!(check_ip(&cfg, ip("10.47.0.9")), Err(Deny::Gateway));
        assert_eq!(check_ip(&cfg, ip("10.47.0.255")), Err(Deny::Martian));
        assert_eq!(check_ip(&cfg, ip("224.0.0.1")), Err(Deny::Martian));
        assert_eq!(check_ip(&cfg, ip("198.51.100.7")), Ok(()));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const LAN: [&str; 6] = [
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.77.1",
        "100.64.0.1",
        "100.127.255.254",
    ];

    #[test]
    fn lan_is_reachable_by_default() {
        let cfg = NatConfig::default();
        assert!(!cfg.deny_lan && cfg.host_addrs.is_empty());
        for a in LAN {
            assert_eq!(check_ip(&cfg, ip(a)), Ok(()), "{a}");
        }
        let dst = SocketAddr::new(ip("192.168.77.1"), 8080);
        assert_eq!(resolve(&cfg, dst, 0).unwrap().os_dst, dst);
    }

    #[test]
    fn deny_lan_closes_private_networks_and_the_laptops_own_addresses() {
        let mut cfg = NatConfig {
            deny_lan: true,
            host_addrs: vec![
                "203.0.113.5".parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
                "2001:db8::5".parse().unwrap(),
            ],
            ..NatConfig::default()
        };
        for a in LAN {
            assert_eq!(check_ip(&cfg, ip(a)), Err(Deny::Lan), "{a}");
        }
        assert_eq!(check_ip(&cfg, ip("203.0.113.5")), Err(Deny::HostAddr));
        assert_eq!(
            check_ip(&cfg, ip("203.0.113.6")),
            Ok(()),
            "a neighbour is not the laptop"
        );
        assert_eq!(
            check_ip(&cfg, ip("100.128.0.1")),
            Ok(()),
            "outside 100.64/10"
        );
        assert_eq!(
            check_ip(&cfg, ip("172.32.0.1")),
            Ok(()),
            "outside 172.16/12"
        );
        // Loopback follows allow_host_loopback alone, even when it is one of the host addresses.
        assert_eq!(check_ip(&cfg, ip("127.0.0.1")), Err(Deny::Loopback));
        cfg.allow_host_loopback = true;
        assert_eq!(check_ip(&cfg, ip("127.0.0.1")), Ok(()));
        // Without deny_lan the laptop's own addresses are reachable like any other.
        cfg.deny_lan = false;
        assert_eq!(check_ip(&cfg, ip("203.0.113.5")), Ok(()));
        // DNS through the gateway is exempt: a LAN resolver still answers with deny_lan.
        cfg.deny_lan = true;
        cfg.dns_servers = vec!["192.168.1.1:53".parse().unwrap()];
        let gw53 = SocketAddr::new(cfg.gateway_ipv4.into(), 53);
        assert_eq!(resolve(&cfg, gw53, 0).unwrap().os_dst, cfg.dns_servers[0]);
    }

    #[test]
    fn loopback_and_link_local_are_denied_by_default() {
        let mut cfg = NatConfig::default();
        for a in ["127.0.0.1", "127.1.2.3", "169.254.169.254", "169.254.1.1"] {
            assert_eq!(check_ip(&cfg, ip(a)), Err(Deny::Loopback), "{a}");
        }
        cfg.allow_host_loopback = true;
        assert_eq!(check_ip(&cfg, ip("169.254.169.254")), Ok(()));
    }

    #[test]
    fn denials_answer_prohibited_and_name_the_flag() {
        for d in [Deny::Loopback, Deny::Lan, Deny::HostAddr] {
            assert_eq!(d.icmp_reason(false), Some(Unreachable::Prohibited));
        }
        assert_eq!(Deny::Loopback.allowed_by(), Some("--allow-host-loopback"));
        assert_eq!(Deny::Lan.allowed_by(), Some("running without --deny-lan"));
        assert_eq!(Deny::HostAddr.allowed_by(), Deny::Lan.allowed_by());
        assert_eq!(Deny::Martian.allowed_by(), None);
        assert_eq!(Deny::Gateway.allowed_by(), None);
    }

    #[test]
    fn ipv6_gateway_answers_dns_and_maps_to_v6_loopback() {
        let mut cfg = NatConfig::default();
        let gw = |p| SocketAddr::new(ip("fd47::1"), p);
        assert_eq!(resolve(&cfg, gw(53), 0), Err(Deny::NoDns));
        assert_eq!(resolve(&cfg, gw(80), 0), Err(Deny::Gateway));
        cfg.dns_servers = vec![
            "192.0.2.53:53".parse().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
        ];
        assert_eq!(resolve(&cfg, gw(53), 1).unwrap().os_dst, cfg.dns_servers[1]);
        assert!(resolve(&cfg, gw(53), 0).unwrap().dns);
        cfg.map_gateway_to_loopback = true;
        cfg.allow_host_loopback = true;
        assert_eq!(
            resolve(&cfg, gw(8080), 0).unwrap().os_dst,
            "[::1]:8080".parse().unwrap()
        );
    }

    #[test]
    fn ipv6_loopback_and_link_local_follow_the_host_loopback_rule() {
        let mut cfg = NatConfig::default();
        for a in ["::1", "fe80::1", "febf:ffff::1"] {
            assert_eq!(check_ip(&cfg, ip(a)), Err(Deny::Loopback), "{a}");
        }
        cfg.allow_host_loopback = true;
        for a in ["::1", "fe80::1"] {
            assert_eq!(check_ip(&cfg, ip(a)), Ok(()), "{a}");
        }
        let dst: SocketAddr = "[::1]:22".parse().unwrap();
        assert_eq!(resolve(&cfg, dst, 0).unwrap().os_dst, dst);
    }

    #[test]
    fn ipv6_unique_local_follows_the_lan_rule() {
        let mut cfg = NatConfig::default();
        for a in ["fc00::1", "fd12:3456::1", "fec0::1", "2001:db8::1"] {
            assert_eq!(check_ip(&cfg, ip(a)), Ok(()), "{a}");
        }
        cfg.deny_lan = true;
        cfg.host_addrs = vec![ip("2001:db8::5")];
        for a in ["fc00::1", "fd12:3456::1", "fec0::1"] {
            assert_eq!(check_ip(&cfg, ip(a)), Err(Deny::Lan), "{a}");
        }
        assert_eq!(check_ip(&cfg, ip("2001:db8::5")), Err(Deny::HostAddr));
        assert_eq!(check_ip(&cfg, ip("2001:db8::6")), Ok(()));
        assert_eq!(
            check_ip(&cfg, ip("fe00::1")),
            Ok(()),
            "outside fc00::/7 and fec0::/10"
        );
    }

    #[test]
    fn ipv6_multicast_unspecified_and_the_boards_own_prefix() {
        let cfg = NatConfig::default();
        for a in ["ff02::1", "ff05::2", "ff0e::1", "::", "100::1"] {
            assert_eq!(check_ip(&cfg, ip(a)), Err(Deny::Martian), "{a}");
            assert!(is_martian(&cfg, ip(a)), "{a}");
        }
        for a in ["fd47::2", "fd47::9", "fd47::ffff:1"] {
            assert_eq!(check_ip(&cfg, ip(a)), Err(Deny::Gateway), "{a}");
        }
        assert_eq!(check_ip(&cfg, ip("fd47::1")), Ok(()), "the gateway itself");
        assert_eq!(
            check_ip(&cfg, ip("fd47:0:0:1::9")),
            Ok(()),
            "outside the /64"
        );
        assert_eq!(
            Deny::Gateway.icmp_reason(false),
            Some(Unreachable::Host),
            "another board-network address is host unreachable"
        );
    }

    #[test]
    fn ipv4_in_ipv6_cannot_bypass_the_ipv4_rules() {
        let mut cfg = NatConfig::default();
        // Mapped and compatible addresses never travel on a wire; an IPv6 socket would speak
        // IPv4 to them.
        for a in [
            "::ffff:127.0.0.1",
            "::ffff:198.51.100.7",
            "::127.0.0.1",
            "::10.47.0.1",
        ] {
            assert_eq!(check_ip(&cfg, ip(a)), Err(Deny::Martian), "{a}");
            assert_eq!(
                resolve(&cfg, SocketAddr::new(ip(a), 80), 0),
                Err(Deny::Martian),
                "{a}"
            );
        }
        // NAT64 and 6to4 reach the IPv4 address they carry: it must pass the IPv4 rules.
        for a in [
            "64:ff9b::127.0.0.1",
            "64:ff9b:1::7f00:1",
            "2002:7f00:1::1",
            "64:ff9b::169.254.169.254",
        ] {
            assert_eq!(check_ip(&cfg, ip(a)), Err(Deny::Loopback), "{a}");
        }
        assert_eq!(check_ip(&cfg, ip("64:ff9b::10.47.0.9")), Err(Deny::Gateway));
        assert_eq!(check_ip(&cfg, ip("64:ff9b::224.0.0.1")), Err(Deny::Martian));
        assert_eq!(check_ip(&cfg, ip("64:ff9b::198.51.100.7")), Ok(()));
        assert_eq!(check_ip(&cfg, ip("2002:c633:6407::1")), Ok(()));
        cfg.deny_lan = true;
        cfg.host_addrs = vec![ip("203.0.113.5")];
        assert_eq!(check_ip(&cfg, ip("64:ff9b::192.168.1.1")), Err(Deny::Lan));
        assert_eq!(check_ip(&cfg, ip("2002:c0a8:101::1")), Err(Deny::Lan));
        assert_eq!(
            check_ip(&cfg, ip("64:ff9b::203.0.113.5")),
            Err(Deny::HostAddr)
        );
        cfg.allow_host_loopback = true;
        assert_eq!(check_ip(&cfg, ip("64:ff9b::127.0.0.1")), Ok(()));
        assert_eq!(
            check_ip(&cfg, ip("::ffff:127.0.0.1")),
            Err(Deny::Martian),
            "still never"
        );
    }
}
