//! Per-OS bits behind one small API (nusb style): this file selects the backend with `cfg` and
//! re-exports the same names from each; the pure helpers shared by several backends live here.
//!
//! The API: [`dns_servers`] (the OS's upstream resolvers, for the gateway's DNS forwarding),
//! [`host_addrs`] (the laptop's own interface addresses, denied under `--deny-lan`),
//! [`ping_socket`] (an unprivileged ICMP echo socket, or the error that makes the NAT fall back
//! to answering the gateway only), [`tune_allocator`] (once at start-up), [`rss_bytes`] (for
//! `status`), [`raise_fd_limit`] (one socket per flow), and [`default_control_path`] (where `qbkit-host status` finds the daemon).

use std::net::{IpAddr, SocketAddr};

#[cfg(unix)]
mod unix;

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;

// macOS, and the other Unix systems (BSDs), which need nothing different.
#[cfg(all(unix, not(target_os = "linux")))]
#[path = "macos.rs"]
mod imp;

#[cfg(windows)]
#[path = "windows.rs"]
mod imp;

pub use imp::{
    default_control_path, dns_servers, host_addrs, ping_socket, raise_fd_limit, rss_bytes,
    tune_allocator,
};

/// The systemd-resolved stub listener; a resolv.conf naming it hides the real upstreams.
pub const RESOLVED_STUB: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 53));

/// The `nameserver` entries of a resolv.conf text, in order, without duplicates. Comments (`#`,
/// `;`), other options and malformed lines are skipped; an IPv6 zone suffix (`fe80::1%eth0`) is
/// dropped because the NAT cannot use scoped addresses.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        let addr = addr.split('%').next().unwrap_or(addr);
        if let Ok(ip) = addr.parse::<IpAddr>()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// Picks the upstream resolvers from resolv.conf texts: `main` is /etc/resolv.conf; when it
/// names only the systemd-resolved stub and `resolved` (/run/systemd/resolve/resolv.conf, the
/// real upstreams resolved uses) is present and non-empty, those are used instead. Port 53.
pub fn pick_dns_servers(main: &str, resolved: Option<&str>) -> Vec<SocketAddr> {
    let mut ips = parse_resolv_conf(main);
    if ips.contains(&RESOLVED_STUB)
        && let Some(upstream) = resolved.map(parse_resolv_conf)
        && !upstream.is_empty()
    {
        ips = upstream;
    }
    ips.into_iter().map(|ip| SocketAddr::new(ip, 53)).collect()
}

/// Builds an ICMP echo request (type 8) with `seq` and `payload`; the identifier is left 0
/// because ping sockets replace it with the socket's own. The checksum is filled in.
pub fn icmp_echo_request(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut pkt = Vec::with_capacity(8 + payload.len());
    pkt.extend_from_slice(&[8, 0, 0, 0, 0, 0]);
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(payload);
    let sum = internet_checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    pkt
}

/// Parses what a ping socket returns: an ICMP echo reply (type 0). Returns its sequence number
/// and data, or `None` for anything else.
pub fn parse_icmp_echo_reply(pkt: &[u8]) -> Option<(u16, &[u8])> {
    if pkt.len() < 8 || pkt[0] != 0 || pkt[1] != 0 {
        return None;
    }
    Some((u16::from_be_bytes([pkt[6], pkt[7]]), &pkt[8..]))
}

/// RFC 1071 checksum.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
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
    fn systemd_resolved_stub_is_replaced_by_upstreams() {
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\n";
        let upstream = "nameserver 192.0.2.1\nnameserver 192.0.2.2\n";
        let got = pick_dns_servers(stub, Some(upstream));
        assert_eq!(
            got,
            vec![
                "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
                "192.0.2.2:53".parse().unwrap()
            ]
        );
        // No resolved file (or an empty one): keep the stub, it still answers locally.
        assert_eq!(
            pick_dns_servers(stub, None),
            vec!["127.0.0.53:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            pick_dns_servers(stub, Some("# nothing\n")),
            vec!["127.0.0.53:53".parse::<SocketAddr>().unwrap()]
        );
        // Without the stub the resolved file is ignored.
        assert_eq!(
            pick_dns_servers("nameserver 127.0.0.1\n", Some(upstream)),
            vec!["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn echo_request_checksum_and_reply_parse() {
        let req = icmp_echo_request(7, b"abcdefgh");
        assert_eq!(req[0], 8);
        assert_eq!(
            internet_checksum(&req),
            0,
            "a packet with its checksum sums to zero"
        );
        let mut reply = req.clone();
        reply[0] = 0;
        assert_eq!(parse_icmp_echo_reply(&reply), Some((7, &b"abcdefgh"[..])));
        assert_eq!(parse_icmp_echo_reply(&req), None);
        assert_eq!(parse_icmp_echo_reply(&[0, 0, 0]), None);
    }
}
