//! Destination policy: where a board packet may go, and where its OS socket connects.
//!
//! Input: the destination the board addressed. Output: a [`Verdict`] — forward to an OS address
//! (possibly rewritten: gateway:53 → upstream resolver, gateway → 127.0.0.1), or deny with the
//! counter to bump and the ICMP code to answer with. Pure function of the config.

use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use smoltcp::wire::Icmpv4DstUnreachable;

use crate::NatConfig;

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
    pub(crate) fn icmp_reason(self, to_gateway: bool) -> Option<Icmpv4DstUnreachable> {
        match self {
            Self::Martian => None,
            Self::Loopback | Self::Lan | Self::HostAddr => {
                Some(Icmpv4DstUnreachable::CommProhibited)
            }
            Self::Gateway if to_gateway => Some(Icmpv4DstUnreachable::PortUnreachable),
            Self::Gateway => Some(Icmpv4DstUnreachable::HostUnreachable),
            Self::NoDns => Some(Icmpv4DstUnreachable::PortUnreachable),
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
pub(crate) fn is_martian(cfg: &NatConfig, ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || o[0] == 0
        || o[0] >= 240
        || ip == subnet_broadcast(cfg)
}

fn subnet_broadcast(cfg: &NatConfig) -> Ipv4Addr {
    let mask = u32::MAX.checked_shr(u32::from(cfg.prefix_len)).unwrap_or(0);
    Ipv4Addr::from(u32::from(cfg.board_ipv4) | mask)
}

fn in_board_net(cfg: &NatConfig, ip: Ipv4Addr) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(cfg.prefix_len))
        .unwrap_or(0);
    u32::from(ip) & mask == u32::from(cfg.board_ipv4) & mask
}

fn is_private(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)
}

/// Decide where a TCP or UDP packet to `dst` goes. `dns_index` picks among the resolvers.
pub(crate) fn resolve(
    cfg: &NatConfig,
    dst: SocketAddrV4,
    dns_index: usize,
) -> Result<Target, Deny> {
    let ip = *dst.ip();
    if is_martian(cfg, ip) {
        return Err(Deny::Martian);
    }
    if ip == cfg.gateway_ipv4 {
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
            return Ok(Target {
                os_dst: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), dst.port()),
                dns: false,
            });
        }
        return Err(Deny::Gateway);
    }
    check_ip(cfg, ip)?;
    Ok(Target {
        os_dst: dst.into(),
        dns: false,
    })
}

/// The address part of the policy (also used for ICMP echo).
pub(crate) fn check_ip(cfg: &NatConfig, ip: Ipv4Addr) -> Result<(), Deny> {
    if is_martian(cfg, ip) {
        return Err(Deny::Martian);
    }
    if in_board_net(cfg, ip) && ip != cfg.gateway_ipv4 {
        return Err(Deny::Gateway);
    }
    if ip.is_loopback() || ip.is_link_local() {
        // The laptop's loopback is in `host_addrs` too; `allow_host_loopback` decides alone.
        return if cfg.allow_host_loopback {
            Ok(())
        } else {
            Err(Deny::Loopback)
        };
    }
    if cfg.deny_lan && is_private(ip) {
        return Err(Deny::Lan);
    }
    if cfg.deny_lan && cfg.host_addrs.contains(&IpAddr::V4(ip)) {
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
        let gw = |p| SocketAddrV4::new(cfg_gw(), p);
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

    fn ip(s: &str) -> Ipv4Addr {
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
        let dst = SocketAddrV4::new(ip("192.168.77.1"), 8080);
        assert_eq!(resolve(&cfg, dst, 0).unwrap().os_dst, dst.into());
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
        let gw53 = SocketAddrV4::new(cfg.gateway_ipv4, 53);
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
            assert_eq!(
                d.icmp_reason(false),
                Some(Icmpv4DstUnreachable::CommProhibited)
            );
        }
        assert_eq!(Deny::Loopback.allowed_by(), Some("--allow-host-loopback"));
        assert_eq!(Deny::Lan.allowed_by(), Some("running without --deny-lan"));
        assert_eq!(Deny::HostAddr.allowed_by(), Deny::Lan.allowed_by());
        assert_eq!(Deny::Martian.allowed_by(), None);
        assert_eq!(Deny::Gateway.allowed_by(), None);
    }
}
