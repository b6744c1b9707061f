//! Per-OS bits behind one small API (nusb style): this file selects the backend with `cfg` and
//! re-exports the same names from each; the pure helpers shared by several backends live here.
//!
//! The API: [`dns_servers`] (the OS's upstream resolvers, for the gateway's DNS forwarding),
//! [`host_addrs`] (the laptop's own interface addresses, denied under `--deny-lan`),
//! [`ping_socket`] (an unprivileged ICMP echo socket, or the error that makes the NAT fall back
//! to answering the gateway only), [`tune_allocator`] (once at start-up), [`trim_allocator`] (after many flows closed), [`rss_bytes`] (for
//! `status`), [`raise_fd_limit`] (one socket per flow), and the control channel that `qbkit-host
//! status`, `forward` and `connect` talk to: [`default_control_path`], [`control_listen`] (the
//! daemon's side, a [`qbkit_link::control::Listener`]), [`control_connect`] (the client's), [`ControlStream`] (one client connection,
//! with [`control_shutdown_write`]). On Unix it is a unix socket, on Windows a named pipe.
//!
//! Pure helpers used by several backends (packet builders) live here, so they are unit-tested on
//! every OS; the resolver parsers (resolv.conf, Windows adapters, `scutil --dns`) are I/O-free and
//! live in `qbkit_nat::resolvers`, where the `resolv_conf` fuzz target reaches them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[cfg(unix)]
mod unix;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as imp;

// macOS, and the other Unix systems (BSDs), which need nothing different.
#[cfg(all(unix, not(target_os = "linux")))]
mod macos;
#[cfg(all(unix, not(target_os = "linux")))]
use macos as imp;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

pub use imp::{
    ControlClient, ControlListener, ControlStream, control_connect, control_listen,
    control_shutdown_write, default_control_path, dns_servers, host_addrs, page_release,
    ping_socket, raise_fd_limit, rss_bytes, trim_allocator, tune_allocator,
};

pub use qbkit_nat::resolvers::{RESOLVED_STUB, parse_nameservers};

/// An XDG base directory (Linux and other freedesktop systems): `$VAR` when it is an absolute
/// path (the spec says to ignore a relative one), else `$HOME/home_rel`; `None` without either.
pub fn xdg_dir(var: &str, home_rel: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(home_rel)))
}

/// Picks the upstream resolvers from resolv.conf texts: `main` is /etc/resolv.conf; when it
/// names the systemd-resolved stub and `resolved` (/run/systemd/resolve/resolv.conf, the real
/// upstreams resolved uses) is present and non-empty, those are used instead. Port 53; IPv6
/// zones kept as scope ids (interface names looked up on this machine).
pub fn pick_dns_servers(main: &str, resolved: Option<&str>) -> Vec<SocketAddr> {
    let mut servers = parse_nameservers(main, interface_index);
    if servers.iter().any(|s| s.ip() == RESOLVED_STUB)
        && let Some(upstream) = resolved.map(|r| parse_nameservers(r, interface_index))
        && !upstream.is_empty()
    {
        servers = upstream;
    }
    servers
}

/// The index of the network interface `name` (for IPv6 zones), if this OS has one by that name.
pub fn interface_index(name: &str) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return None;
        }
        std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = name;
        None
    }
}

/// Builds an echo request for `dst`'s version (ICMP type 8, ICMPv6 type 128) with `seq` and
/// `payload`; the identifier is left 0 because ping sockets replace it with the socket's own.
/// The checksum is filled in (ICMPv6: the kernel fills it, as it covers the IPv6 addresses).
pub fn icmp_echo_request(dst: IpAddr, seq: u16, payload: &[u8]) -> Vec<u8> {
    match dst {
        IpAddr::V4(_) => icmp_echo(ICMP_ECHO_REQUEST, seq, payload),
        IpAddr::V6(_) => {
            let mut pkt = icmp_echo(ICMPV6_ECHO_REQUEST, seq, payload);
            pkt[2..4].fill(0);
            pkt
        }
    }
}

/// Builds the ICMP echo reply (type 0) a ping socket returns for `seq` (Windows' ping helper).
pub fn icmp_echo_reply(seq: u16, payload: &[u8]) -> Vec<u8> {
    icmp_echo(ICMP_ECHO_REPLY, seq, payload)
}

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

fn icmp_echo(kind: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut pkt = Vec::with_capacity(8 + payload.len());
    pkt.extend_from_slice(&[kind, 0, 0, 0, 0, 0]);
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(payload);
    let sum = internet_checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    pkt
}

/// Parses what a ping socket returns: an ICMP (type 0) or ICMPv6 (type 129) echo reply; a
/// ping socket only returns its own version's. Returns its sequence number and data, or `None`
/// for anything else.
pub fn parse_icmp_echo_reply(pkt: &[u8]) -> Option<(u16, &[u8])> {
    parse_icmp_echo([ICMP_ECHO_REPLY, ICMPV6_ECHO_REPLY], pkt)
}

/// Parses an ICMP (type 8) or ICMPv6 (type 128) echo request, as the socket layer writes it
/// to a ping socket: its sequence number and data, or `None` for anything else.
pub fn parse_icmp_echo_request(pkt: &[u8]) -> Option<(u16, &[u8])> {
    parse_icmp_echo([ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST], pkt)
}

fn parse_icmp_echo(kinds: [u8; 2], pkt: &[u8]) -> Option<(u16, &[u8])> {
    if pkt.len() < 8 || !kinds.contains(&pkt[0]) || pkt[1] != 0 {
        return None;
    }
    Some((u16::from_be_bytes([pkt[6], pkt[7]]), &pkt[8..]))
}

/// The named pipe for a control-channel name on Windows: `\\.\pipe\` and the name, with the
/// backslashes a pipe name may not contain replaced by `/`.
pub fn pipe_name(name: &str) -> String {
    format!(r"\\.\pipe\{}", name.replace('\\', "/"))
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
    #[cfg(target_os = "linux")]
    use std::net::SocketAddrV6;

    #[test]
    fn link_local_resolver_zone_named_by_this_machine() {
        // The loopback interface exists everywhere this runs (Linux: index from /sys).
        #[cfg(target_os = "linux")]
        assert_eq!(
            pick_dns_servers("nameserver fe80::9%lo\n", None),
            vec![SocketAddr::V6(SocketAddrV6::new(
                "fe80::9".parse().unwrap(),
                53,
                0,
                1
            ))]
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
        let v4 = IpAddr::from([198, 51, 100, 7]);
        let req = icmp_echo_request(v4, 7, b"abcdefgh");
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
        assert_eq!(parse_icmp_echo_request(&req), Some((7, &b"abcdefgh"[..])));
        assert_eq!(parse_icmp_echo_request(&reply), None);
        // What Windows' ping helper writes back is a valid reply with its checksum.
        let built = icmp_echo_reply(7, b"abcdefgh");
        assert_eq!(built, {
            let mut r = icmp_echo_request(v4, 7, b"abcdefgh");
            r[0] = 0;
            r[2..4].fill(0);
            let sum = internet_checksum(&r);
            r[2..4].copy_from_slice(&sum.to_be_bytes());
            r
        });
        assert_eq!(internet_checksum(&built), 0);
        // ICMPv6: types 128/129, checksum left to the kernel.
        let req6 = icmp_echo_request("2001:db8::7".parse().unwrap(), 7, b"abcdefgh");
        assert_eq!(&req6[..8], &[128, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(parse_icmp_echo_request(&req6), Some((7, &b"abcdefgh"[..])));
        let mut reply6 = req6.clone();
        reply6[0] = 129;
        assert_eq!(parse_icmp_echo_reply(&reply6), Some((7, &b"abcdefgh"[..])));
        assert_eq!(parse_icmp_echo_reply(&req6), None);
    }

    #[test]
    fn pipe_names() {
        assert_eq!(pipe_name("qbkit-host-ann"), r"\\.\pipe\qbkit-host-ann");
        assert_eq!(pipe_name(r"C:\q\ctl"), r"\\.\pipe\C:/q/ctl");
    }
}
