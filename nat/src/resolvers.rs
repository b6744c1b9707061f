//! Picking the upstream resolvers the gateway's DNS forwarding uses from what the OS reports: a
//! resolv.conf text (Linux, the BSDs, macOS' fallback), Windows' adapters, macOS' `scutil --dns`.
//! Pure, so it is unit-tested on every OS and fuzzed (`resolv_conf` target); qbkit-host's
//! platform backends do the OS calls and name the interfaces of IPv6 zones.
//!
//! - resolv.conf: [`parse_nameservers`], see there.
//! - Windows: each adapter's configured resolvers (`GetAdaptersAddresses`). Windows' DNS client
//!   tries the adapters that are up in interface-metric order (lowest first, the same order that
//!   picks the default route) and each adapter's servers in their configured order; that is the
//!   order returned. A link-local IPv6 resolver (`fe80::…`) is only reachable through its
//!   interface, so it carries the adapter's IPv6 interface index as its scope id.
//! - macOS: the system configuration's resolvers as `scutil --dns` prints them (configd's
//!   `dns_configuration_copy()`), not /etc/resolv.conf, which only mirrors the primary service's
//!   default resolver and misses VPN resolvers. The first section ("DNS configuration") lists
//!   the default resolver (no `domain`) and the supplemental ones a VPN or a profile adds for
//!   its domains (split DNS); the scoped section after it repeats per-interface copies and is
//!   ignored. Default resolvers come first (by `order`), then the supplemental ones (by
//!   `order`), skipping mDNS (`options : mdns`) and duplicates; `fe80::1%en0` carries the
//!   resolver's `if_index` as scope id, and a `port` line is honoured. The gateway forwards
//!   every name to this list, so a split resolver is used when the ones before it fail.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

/// The systemd-resolved stub listener; a resolv.conf naming it hides the real upstreams.
pub const RESOLVED_STUB: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 53));

/// The `nameserver` entries of a resolv.conf text as port-53 socket addresses, in order, without
/// duplicates. Comments (`#`, `;`), other options and malformed lines are skipped. An IPv6 zone
/// (`fe80::1%eth0`, `fe80::1%2`) becomes the address's scope id, numeric or through
/// `zone_index` (interface name → index); a link-local resolver whose zone is unknown is
/// skipped, since it cannot be reached without one.
pub fn parse_nameservers(text: &str, zone_index: impl Fn(&str) -> Option<u32>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        let (addr, zone) = match word.split_once('%') {
            Some((a, z)) => (a, Some(z)),
            None => (word, None),
        };
        let sa = match (addr.parse::<IpAddr>(), zone) {
            (Ok(IpAddr::V6(ip)), Some(z)) => {
                let Some(scope) = z.parse::<u32>().ok().or_else(|| zone_index(z)) else {
                    continue;
                };
                SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope))
            }
            (Ok(IpAddr::V6(ip)), None) if ip.is_unicast_link_local() => continue,
            (Ok(ip), _) => SocketAddr::new(ip, 53),
            (Err(_), _) => continue,
        };
        if !out.contains(&sa) {
            out.push(sa);
        }
    }
    out
}

/// The `nameserver` addresses of a resolv.conf text, in order, without duplicates and without
/// zones (see [`parse_nameservers`] for the scoped form the NAT uses).
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for sa in parse_nameservers(text, |_| Some(0)) {
        if !out.contains(&sa.ip()) {
            out.push(sa.ip());
        }
    }
    out
}

/// One Windows adapter's DNS configuration, as `GetAdaptersAddresses` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterResolvers {
    /// `OperStatus` is up.
    pub up: bool,
    /// The interface metric (lower is preferred).
    pub metric: u32,
    /// The IPv6 interface index: the scope id of its link-local addresses.
    pub ipv6_if_index: u32,
    /// The configured resolvers, in their configured order.
    pub servers: Vec<IpAddr>,
}

/// The resolvers of the adapters that are up, lowest metric first (stable for equal metrics),
/// port 53, without duplicates; link-local IPv6 ones scoped to their adapter.
pub fn order_adapter_resolvers(adapters: &[AdapterResolvers]) -> Vec<SocketAddr> {
    let mut up: Vec<&AdapterResolvers> = adapters.iter().filter(|a| a.up).collect();
    up.sort_by_key(|a| a.metric);
    let mut out = Vec::new();
    for a in up {
        for ip in &a.servers {
            let addr = match *ip {
                IpAddr::V6(v6) if v6.is_unicast_link_local() => {
                    SocketAddr::V6(SocketAddrV6::new(v6, 53, 0, a.ipv6_if_index))
                }
                ip => SocketAddr::new(ip, 53),
            };
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out
}

/// The resolvers of a `scutil --dns` output, as described in the module docs.
pub fn parse_scutil_dns(text: &str) -> Vec<SocketAddr> {
    #[derive(Default)]
    struct Resolver {
        servers: Vec<String>,
        domain: bool,
        mdns: bool,
        if_index: u32,
        port: u16,
        order: u64,
    }
    let mut resolvers: Vec<Resolver> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("DNS configuration (") {
            break; // the scoped copies
        }
        if line.starts_with("resolver #") {
            resolvers.push(Resolver {
                port: 53,
                order: u64::MAX,
                ..Resolver::default()
            });
            continue;
        }
        let (Some(r), Some((key, value))) = (resolvers.last_mut(), line.split_once(':')) else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key.split('[').next().unwrap_or(key) {
            "nameserver" => r.servers.push(value.to_owned()),
            "domain" => r.domain = true,
            "options" => r.mdns |= value.split_whitespace().any(|o| o == "mdns"),
            "if_index" => {
                r.if_index = value
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
            "port" => r.port = value.parse().unwrap_or(53),
            "order" => r.order = value.parse().unwrap_or(u64::MAX),
            _ => {}
        }
    }
    resolvers.retain(|r| !r.mdns);
    resolvers.sort_by_key(|r| (r.domain, r.order));
    let mut out = Vec::new();
    for r in &resolvers {
        for s in &r.servers {
            // A nameserver line may carry a zone (`fe80::1%en0`); the index comes from
            // `if_index`, since the name alone cannot be resolved without an OS call.
            let (ip, zoned) = match s.split_once('%') {
                Some((ip, _)) => (ip, true),
                None => (s.as_str(), false),
            };
            let Ok(ip) = ip.parse::<IpAddr>() else {
                continue;
            };
            let addr = match ip {
                IpAddr::V6(v6) if zoned || v6.is_unicast_link_local() => {
                    SocketAddr::V6(SocketAddrV6::new(v6, r.port, 0, r.if_index))
                }
                ip => SocketAddr::new(ip, r.port),
            };
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "# generated\nsearch example.org\nnameserver 192.0.2.53\n\
                    nameserver   2001:db8::53 # v6\n;nameserver 192.0.2.99\nnameserver fe80::1%eth0\n\
                    nameserver 192.0.2.53\nnameserver\nnameserver not-an-ip\noptions edns0\n";
        let got = parse_resolv_conf(text);
        assert_eq!(
            got,
            vec![
                "192.0.2.53".parse::<IpAddr>().unwrap(),
                "2001:db8::53".parse().unwrap(),
                "fe80::1".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn ipv6_link_local_resolvers_keep_their_zone() {
        let text = "nameserver fe80::1%eth7\nnameserver fe80::2%3\nnameserver fe80::3%nosuch\n\
                    nameserver fe80::4\nnameserver 2001:db8::53%eth7\nnameserver 192.0.2.1\n";
        let got = parse_nameservers(text, |z| (z == "eth7").then_some(7));
        let want: Vec<SocketAddr> = vec![
            SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 7).into(),
            SocketAddrV6::new("fe80::2".parse().unwrap(), 53, 0, 3).into(),
            SocketAddrV6::new("2001:db8::53".parse().unwrap(), 53, 0, 7).into(),
            "192.0.2.1:53".parse().unwrap(),
        ];
        assert_eq!(
            got, want,
            "unknown zones and zoneless link-local are skipped"
        );
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn windows_order_is_metric_then_configured() {
        let a = |up, metric, idx, servers: &[&str]| AdapterResolvers {
            up,
            metric,
            ipv6_if_index: idx,
            servers: servers.iter().map(|s| s.parse().unwrap()).collect(),
        };
        let got = order_adapter_resolvers(&[
            // Wi-Fi, metric 35: listed first by the API but preferred second.
            a(true, 35, 12, &["192.0.2.1", "fe80::1", "2001:db8::53"]),
            // Disconnected Ethernet: ignored.
            a(false, 5, 3, &["198.51.100.9"]),
            // VPN, metric 1: its resolvers first, in their order.
            a(true, 1, 20, &["10.8.0.1", "10.8.0.2"]),
            // Same metric as the Wi-Fi: after it (stable), duplicate dropped.
            a(true, 35, 14, &["192.0.2.1", "fe80::1"]),
        ]);
        assert_eq!(
            got,
            vec![
                sa("10.8.0.1:53"),
                sa("10.8.0.2:53"),
                sa("192.0.2.1:53"),
                sa("[fe80::1%12]:53"),
                sa("[2001:db8::53]:53"),
                sa("[fe80::1%14]:53"),
            ]
        );
        if let SocketAddr::V6(v6) = got[3] {
            assert_eq!(v6.scope_id(), 12);
        }
        assert!(order_adapter_resolvers(&[a(false, 1, 1, &["192.0.2.1"])]).is_empty());
    }

    /// Shaped like `scutil --dns` on macOS 14 with a split-tunnel VPN (utun4) for corp.example.
    const SCUTIL: &str = "\
DNS configuration

resolver #1
  search domain[0] : home.arpa
  nameserver[0] : 192.168.1.1
  nameserver[1] : fe80::1%en0
  if_index : 6 (en0)
  flags    : Request A records, Request AAAA records
  reach    : 0x00020002 (Reachable,Directly Reachable Address)
  order    : 200000

resolver #2
  domain   : corp.example
  nameserver[0] : 10.99.0.53
  nameserver[1] : 10.99.0.54
  port     : 5353
  if_index : 21 (utun4)
  flags    : Supplemental, Request A records
  reach    : 0x00000003 (Reachable,Transient Connection)
  order    : 102200

resolver #3
  domain   : local
  options  : mdns
  timeout  : 5
  flags    : Request A records, Request AAAA records
  reach    : 0x00000000 (Not Reachable)
  order    : 300000

resolver #4
  nameserver[0] : 192.168.1.1
  order    : 100000

DNS configuration (for scoped queries)

resolver #1
  search domain[0] : home.arpa
  nameserver[0] : 192.168.1.254
  if_index : 6 (en0)
  flags    : Scoped, Request A records
";

    #[test]
    fn scutil_default_then_split_resolvers() {
        let got = parse_scutil_dns(SCUTIL);
        assert_eq!(
            got,
            vec![
                // #4 (order 100000) before #1 (200000); 192.168.1.1 only once.
                sa("192.168.1.1:53"),
                sa("[fe80::1%6]:53"),
                // The VPN's split resolvers after the default ones, with their port.
                sa("10.99.0.53:5353"),
                sa("10.99.0.54:5353"),
            ]
        );
        assert!(parse_scutil_dns("").is_empty());
        assert!(
            parse_scutil_dns("DNS configuration\n\nNo DNS configuration available\n").is_empty()
        );
    }
}
