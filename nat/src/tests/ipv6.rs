//! IPv6 through the core with crafted packets: the same socket requests and events as IPv4,
//! ICMPv6 errors the board's stack understands (unreachable at once for Happy Eyeballs, hop
//! limit, packet too big), ICMPv6 echo, DNS on the gateway's IPv6 address, and the IPv6 policy.
//! Whole TCP conversations over IPv6 run in `stream.rs`.

use core::net::{IpAddr, Ipv6Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Duration;
use smoltcp::wire::{
    Icmpv6Packet, Icmpv6Repr, IpProtocol, IpRepr, TcpControl, TcpPacket, UdpPacket,
};

use super::*;
use crate::testing::{ip_payload, ipv6, with_ipv6_extensions};
use crate::{ConnectError, DatagramError, FlowId, NatConfig, NatEvent, OsEvent};

fn sa6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    ep6(ip, port).into()
}

/// (src, dst, type, code, body after the 4-byte ICMPv6 header) of an ICMPv6 packet to the
/// board, checksum checked.
#[track_caller]
fn icmp6_of(pkt: &[u8]) -> (Ipv6Addr, Ipv6Addr, u8, u8, Vec<u8>) {
    let (ip, payload) = ip_payload(pkt);
    let IpRepr::Ipv6(ip) = ip else {
        panic!("expected IPv6, got {ip:?}")
    };
    assert_eq!(ip.next_header, IpProtocol::Icmpv6);
    let i = Icmpv6Packet::new_checked(payload).expect("ICMPv6");
    assert!(
        i.verify_checksum(&ip.src_addr, &ip.dst_addr),
        "ICMPv6 checksum"
    );
    (
        ip.src_addr,
        ip.dst_addr,
        u8::from(i.msg_type()),
        i.msg_code(),
        payload[4..].to_vec(),
    )
}

fn echo6(src: Ipv6Addr, dst: Ipv6Addr, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let repr = Icmpv6Repr::EchoRequest {
        ident,
        seq_no,
        data,
    };
    ipv6(src, dst, IpProtocol::Icmpv6, 64, repr.buffer_len(), |b| {
        repr.emit(
            &src,
            &dst,
            &mut Icmpv6Packet::new_unchecked(b),
            &ChecksumCapabilities::default(),
        );
    })
}

#[track_caller]
fn expect_connect(h: &mut H, dst: SocketAddr) -> FlowId {
    match h.events().as_slice() {
        [NatEvent::TcpConnect { flow, dst: d, src }] => {
            assert_eq!((*d, src.ip()), (dst, IpAddr::V6(BOARD6)));
            *flow
        }
        other => panic!("expected one TcpConnect, got {other:?}"),
    }
}

#[test]
fn tcp_to_an_ipv6_destination_connects_an_ipv6_socket_then_answers_the_syn() {
    let mut h = H::new();
    let (b, s) = (sa6(BOARD6, 40000), sa6(SERVER6, 443));
    h.send(&syn(b, s, 7));
    assert!(h.recv().is_empty(), "no SYN-ACK before the OS connect");
    let flow = expect_connect(&mut h, s);
    h.os(OsEvent::TcpConnected { flow });
    let pkt = h.recv_one();
    let (ip, payload) = ip_payload(&pkt);
    assert!(matches!(ip, IpRepr::Ipv6(r) if r.src_addr == SERVER6 && r.dst_addr == BOARD6));
    let t = TcpPacket::new_checked(payload).unwrap();
    assert!(t.verify_checksum(&SERVER6.into(), &BOARD6.into()));
    assert!(t.syn() && t.ack() && t.ack_number().0 == 8);
    // The SYN-ACK's MSS leaves room for the 40-byte IPv6 header.
    let mss = TcpPacket::new_checked(payload)
        .ok()
        .and_then(|t| {
            smoltcp::wire::TcpRepr::parse(
                &t,
                &SERVER6.into(),
                &BOARD6.into(),
                &ChecksumCapabilities::default(),
            )
            .ok()
        })
        .and_then(|r| r.max_seg_size);
    assert_eq!(mss, Some(65520 - 40 - 20));
    assert_eq!(h.nat.counters().tx_ipv6_packets, 1);
    assert_eq!(h.nat.counters().rx_ipv6_packets, 1);
}

#[test]
fn refused_ipv6_connect_answers_rst_at_once() {
    let mut h = H::new();
    let (b, s) = (sa6(BOARD6, 40001), sa6(SERVER6, 9));
    h.send(&syn(b, s, 100));
    let flow = expect_connect(&mut h, s);
    h.os(OsEvent::TcpConnectFailed {
        flow,
        error: ConnectError::Refused,
    });
    let pkt = h.recv_one();
    let (_, payload) = ip_payload(&pkt);
    let t = TcpPacket::new_checked(payload).unwrap();
    assert!(t.verify_checksum(&SERVER6.into(), &BOARD6.into()));
    assert!(t.rst() && t.ack_number().0 == 101);
    assert_eq!(h.nat.counters().tcp_refused, 1);
    assert_eq!(h.nat.flow_count(), 0);
}

/// A laptop without IPv6 connectivity: its connect fails at once (ENETUNREACH, or
/// EADDRNOTAVAIL mapped to it by the driver) and the board hears ICMPv6 "no route" quoting its
/// SYN, so its connect() fails with ENETUNREACH and Happy Eyeballs moves to IPv4 without waiting.
#[test]
fn unreachable_ipv6_connect_answers_icmpv6_at_once_quoting_the_syn() {
    for (error, code) in [
        (ConnectError::NetUnreachable, 0),
        (ConnectError::HostUnreachable, 3),
        (ConnectError::Other, 1),
    ] {
        let mut h = H::new();
        let (b, s) = (sa6(BOARD6, 40002), sa6(SERVER6, 80));
        h.send(&syn(b, s, 0x0102_0304));
        let flow = expect_connect(&mut h, s);
        h.os(OsEvent::TcpConnectFailed { flow, error });
        let (from, to, ty, c, body) = icmp6_of(&h.recv_one());
        assert_eq!((from, to, ty, c), (GATEWAY6, BOARD6, 1, code), "{error:?}");
        // 4 unused bytes, then the quoted IPv6 header and the SYN's ports and sequence.
        let quoted = &body[4..];
        assert_eq!(quoted[0] >> 4, 6);
        assert_eq!(&quoted[8..24], &BOARD6.octets());
        assert_eq!(&quoted[24..40], &SERVER6.octets());
        assert_eq!(&quoted[40..48], &[0x9c, 0x42, 0, 80, 1, 2, 3, 4]);
        assert_eq!(h.nat.counters().tcp_connect_failed, 1);
        assert_eq!(h.nat.counters().icmp_errors_sent, 1);
        assert!(h.events().is_empty());
    }
}

#[test]
fn udp_over_ipv6_reply_error_and_idle_expiry() {
    let mut h = H::new();
    let (b, s) = (sa6(BOARD6, 5000), sa6(SERVER6, 7));
    h.send(&udp(b, s, b"ping"));
    let ev = h.events();
    let flow = match ev.as_slice() {
        [
            NatEvent::UdpOpen { flow, src, dst },
            NatEvent::UdpSend { payload, .. },
        ] => {
            assert_eq!((*src, *dst, payload.as_slice()), (b, s, &b"ping"[..]));
            *flow
        }
        other => panic!("{other:?}"),
    };
    h.os(OsEvent::UdpReceived {
        flow,
        payload: b"pong",
    });
    let pkt = h.recv_one();
    let (ip, payload) = ip_payload(&pkt);
    assert!(matches!(ip, IpRepr::Ipv6(r) if r.src_addr == SERVER6 && r.dst_addr == BOARD6));
    let u = UdpPacket::new_checked(payload).unwrap();
    assert!(u.verify_checksum(&SERVER6.into(), &BOARD6.into()));
    assert_eq!(
        (u.src_port(), u.dst_port(), u.payload()),
        (7, 5000, &b"pong"[..])
    );
    // Port unreachable comes from the destination, like a real host's.
    h.os(OsEvent::UdpError {
        flow,
        error: DatagramError::PortUnreachable,
    });
    let (from, _, ty, code, body) = icmp6_of(&h.recv_one());
    assert_eq!((from, ty, code), (SERVER6, 1, 4));
    assert_eq!(
        &body[4 + 40..4 + 44],
        &[0x13, 0x88, 0, 7],
        "quotes the ports"
    );
    h.advance(Duration::from_secs(181));
    assert_eq!(h.events(), vec![NatEvent::UdpClose { flow }]);
    assert_eq!(h.nat.flow_count(), 0);
}

#[test]
fn dns_on_the_gateways_ipv6_address_goes_to_every_kind_of_resolver() {
    let mut cfg = NatConfig::default();
    cfg.dns_servers = vec!["[2001:db8::53]:53".parse().unwrap()];
    let mut h = H::with(cfg);
    let (b, g) = (sa6(BOARD6, 5353), sa6(GATEWAY6, 53));
    let query = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    h.send(&udp(b, g, &query));
    let flow = match h.events().as_slice() {
        [
            NatEvent::UdpOpen { flow, dst, .. },
            NatEvent::UdpSend { .. },
        ] => {
            assert_eq!(*dst, "[2001:db8::53]:53".parse().unwrap());
            *flow
        }
        other => panic!("{other:?}"),
    };
    h.os(OsEvent::UdpReceived {
        flow,
        payload: &query,
    });
    let pkt = h.recv_one();
    let (ip, payload) = ip_payload(&pkt);
    assert!(
        matches!(ip, IpRepr::Ipv6(r) if r.src_addr == GATEWAY6),
        "the answer comes from the gateway"
    );
    assert_eq!(UdpPacket::new_checked(payload).unwrap().src_port(), 53);
    // TCP DNS on the IPv6 gateway, to an IPv4 resolver: the OS socket follows the resolver.
    let mut cfg = NatConfig::default();
    cfg.dns_servers = vec!["192.0.2.53:53".parse().unwrap()];
    let mut h = H::with(cfg);
    h.send(&syn(sa6(BOARD6, 40100), g, 1));
    expect_connect(&mut h, "192.0.2.53:53".parse().unwrap());
    assert_eq!(h.nat.counters().dns_forwarded, 1);
}

#[test]
fn icmpv6_echo_gateway_answers_others_go_to_the_os() {
    let mut h = H::new();
    h.send(&echo6(BOARD6, GATEWAY6, 9, 1, b"abc"));
    let (from, to, ty, code, body) = icmp6_of(&h.recv_one());
    assert_eq!((from, to, ty, code), (GATEWAY6, BOARD6, 129, 0));
    assert_eq!(body, [0, 9, 0, 1, b'a', b'b', b'c']);
    h.send(&echo6(BOARD6, SERVER6, 9, 2, b"xyz"));
    let flow = expect_echo_request(&mut h, SERVER6.into(), 2, b"xyz");
    h.os(OsEvent::IcmpEchoReply {
        flow,
        seq: 2,
        payload: b"xyz",
    });
    let (from, _, ty, _, body) = icmp6_of(&h.recv_one());
    assert_eq!((from, ty), (SERVER6, 129));
    assert_eq!(
        &body[..4],
        &[0, 9, 0, 2],
        "the board's identifier is restored"
    );
    assert_eq!(h.nat.counters().gateway_pings_answered, 1);
}

#[test]
fn ipv6_policy_denials_answer_icmpv6_and_count() {
    let mut h = H::new();
    // Host loopback: administratively prohibited, counted with the flag that allows it.
    h.send(&syn(sa6(BOARD6, 40200), sa6(Ipv6Addr::LOCALHOST, 22), 1));
    let (from, _, ty, code, _) = icmp6_of(&h.recv_one());
    assert_eq!((from, ty, code), (GATEWAY6, 1, 1));
    assert_eq!(h.nat.counters().drop_policy_loopback, 1);
    // Link-local too, and ICMPv6 echo follows the same rule.
    h.send(&echo6(BOARD6, "fe80::1".parse().unwrap(), 1, 1, b""));
    let (_, _, ty, code, _) = icmp6_of(&h.recv_one());
    assert_eq!((ty, code), (1, 1));
    assert_eq!(h.nat.counters().drop_policy_loopback, 2);
    // Another address of the board's prefix: address unreachable.
    h.send(&udp(
        sa6(BOARD6, 1),
        sa6("fd47::9".parse().unwrap(), 1),
        b"x",
    ));
    let (_, _, ty, code, _) = icmp6_of(&h.recv_one());
    assert_eq!((ty, code), (1, 3));
    // The gateway's closed ports: TCP RST, UDP port unreachable from the gateway.
    h.send(&syn(sa6(BOARD6, 40201), sa6(GATEWAY6, 80), 1));
    let pkt = h.recv_one();
    let (_, payload) = ip_payload(&pkt);
    assert!(TcpPacket::new_checked(payload).unwrap().rst());
    // IPv4-mapped: a martian, dropped without an answer.
    h.send(&syn(
        sa6(BOARD6, 40202),
        sa6("::ffff:127.0.0.1".parse().unwrap(), 22),
        1,
    ));
    assert!(h.recv().is_empty());
    assert_eq!(h.nat.counters().drop_martian, 1);
    assert!(h.events().is_empty());
    // deny_lan closes fc00::/7.
    let mut cfg = NatConfig::default();
    cfg.deny_lan = true;
    let mut h = H::with(cfg);
    h.send(&syn(
        sa6(BOARD6, 40203),
        sa6("fd00::1".parse().unwrap(), 80),
        1,
    ));
    let (_, _, ty, code, _) = icmp6_of(&h.recv_one());
    assert_eq!((ty, code), (1, 1));
    assert_eq!(h.nat.counters().drop_policy_lan, 1);
}

#[test]
fn hop_limit_packet_too_big_multicast_and_bad_sources() {
    let mut cfg = NatConfig::default();
    cfg.mtu = 1280;
    let mut h = H::with(cfg);
    // Hop limit 1: time exceeded from the gateway.
    let pkt = ipv6(BOARD6, SERVER6, IpProtocol::Udp, 1, 8, |b| {
        b.copy_from_slice(&[0, 1, 0, 7, 0, 8, 0, 0]);
    });
    h.send(&pkt);
    let (from, _, ty, code, _) = icmp6_of(&h.recv_one());
    assert_eq!((from, ty, code), (GATEWAY6, 3, 0));
    // Larger than the link: packet too big with the MTU, quoting what fits in 1280 bytes.
    let big = udp(sa6(BOARD6, 1), sa6(SERVER6, 7), &[7; 1400]);
    h.send(&big);
    let out = h.recv_one();
    assert!(out.len() <= 1280, "an ICMPv6 error fits the minimum MTU");
    let (from, _, ty, code, body) = icmp6_of(&out);
    assert_eq!((from, ty, code), (GATEWAY6, 2, 0));
    assert_eq!(&body[..4], &1280u32.to_be_bytes());
    assert_eq!(&body[4..44], &big[..40], "quotes the packet");
    assert_eq!(h.nat.counters().drop_too_big_from_board, 1);
    assert!(h.events().is_empty(), "nothing forwarded");
    // The board kernel's router solicitation and MLD reports: dropped, never answered.
    let fe80: Ipv6Addr = "fe80::2".parse().unwrap();
    h.send(&ipv6(
        fe80,
        "ff02::2".parse().unwrap(),
        IpProtocol::Icmpv6,
        255,
        8,
        |b| {
            b[0] = 133;
        },
    ));
    assert!(h.recv().is_empty());
    assert_eq!(h.nat.counters().drop_ipv6_multicast, 1);
    // Unicast from another source, and a fragment header: dropped and counted.
    h.send(&udp(sa6(fe80, 1), sa6(SERVER6, 7), b"x"));
    h.send(&ipv6(BOARD6, SERVER6, IpProtocol::Ipv6Frag, 64, 16, |_| {}));
    // (destination options of Pad1s whose next header is a hop-by-hop one, which must be first)
    h.send(&ipv6(BOARD6, SERVER6, IpProtocol::Ipv6Opts, 64, 16, |_| {}));
    let c = h.nat.counters();
    assert_eq!(
        (
            c.drop_bad_source,
            c.drop_fragment,
            c.drop_ipv6_extension_header
        ),
        (1, 1, 1)
    );
    assert!(h.recv().is_empty() && h.events().is_empty());
}

#[test]
fn ipv6_segments_for_no_flow_get_a_rst_from_smoltcp() {
    let mut h = H::new();
    let ack = tcp(
        sa6(BOARD6, 40300),
        sa6(SERVER6, 80),
        TcpControl::None,
        5,
        Some(9),
        b"",
    );
    h.send(&ack);
    let pkt = h.recv_one();
    let (_, payload) = ip_payload(&pkt);
    let t = TcpPacket::new_checked(payload).unwrap();
    assert!(t.rst());
    assert_eq!(h.nat.counters().drop_tcp_no_flow, 1);
}

/// Hop-by-hop (router alert) and destination options (PadN) headers, both skippable.
const EXTS: [(IpProtocol, &[u8]); 2] = [
    (IpProtocol::HopByHop, &[5, 2, 0, 0, 1, 0]),
    (IpProtocol::Ipv6Opts, &[1, 4, 0, 0, 0, 0]),
];

#[test]
fn extension_headers_are_skipped_for_tcp_udp_and_echo() {
    let mut h = H::new();
    // TCP: the SYN and a data segment carry extension headers; smoltcp sees them without.
    let (b, s) = (sa6(BOARD6, 40300), sa6(SERVER6, 443));
    h.send(&with_ipv6_extensions(&syn(b, s, 7), &EXTS));
    let flow = expect_connect(&mut h, s);
    h.os(OsEvent::TcpConnected { flow });
    let synack = h.recv_one();
    let (_, payload) = ip_payload(&synack);
    let isn = TcpPacket::new_checked(payload)
        .unwrap()
        .seq_number()
        .0
        .cast_unsigned();
    let data = tcp(
        b,
        s,
        TcpControl::None,
        8,
        Some(isn.wrapping_add(1)),
        b"hello",
    );
    h.send(&with_ipv6_extensions(&data, &EXTS));
    assert!(h.events().contains(&NatEvent::TcpReadable { flow }));
    let mut buf = [0u8; 16];
    assert_eq!(h.nat.tcp_recv(flow, &mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"hello");
    // UDP and an echo request to the gateway
    let (b, s) = (sa6(BOARD6, 5001), sa6(SERVER6, 7));
    h.send(&with_ipv6_extensions(&udp(b, s, b"dgram"), &EXTS));
    assert!(
        matches!(h.events().as_slice(), [NatEvent::UdpOpen { .. }, NatEvent::UdpSend { payload, .. }] if payload == b"dgram")
    );
    h.send(&with_ipv6_extensions(
        &echo6(BOARD6, GATEWAY6, 3, 1, b"e"),
        &EXTS,
    ));
    let pkts = h.recv(); // (with the ACK of the TCP data)
    let reply = pkts.iter().find(|p| p[6] == 58).expect("an echo reply");
    let (from, _, ty, _, _) = icmp6_of(reply);
    assert_eq!((from, ty), (GATEWAY6, 129));
    let c = h.nat.counters();
    assert_eq!(
        (
            c.drop_ipv6_extension_header,
            c.drop_malformed,
            c.drop_unknown_protocol
        ),
        (0, 0, 0)
    );
}

#[test]
fn icmpv6_errors_quote_the_extension_headers_as_they_came() {
    let mut h = H::new();
    // A denied destination ([::1]): unreachable, quoting the whole packet, headers included.
    let pkt = with_ipv6_extensions(
        &udp(sa6(BOARD6, 5002), sa6(Ipv6Addr::LOCALHOST, 53), b"q"),
        &EXTS,
    );
    h.send(&pkt);
    let (_, to, ty, code, body) = icmp6_of(&h.recv_one());
    assert_eq!((to, ty, code), (BOARD6, 1, 1));
    assert_eq!(&body[4..], &pkt[..], "the packet as the board sent it");
    // Hop limit 1 to the wan: time exceeded, quoting the same way.
    let mut pkt = with_ipv6_extensions(&udp(sa6(BOARD6, 5003), sa6(SERVER6, 7), b"t"), &EXTS);
    pkt[7] = 1;
    h.send(&pkt);
    let (_, _, ty, _, body) = icmp6_of(&h.recv_one());
    assert_eq!(ty, 3);
    assert_eq!(&body[4..], &pkt[..]);
}

#[test]
fn extension_headers_that_do_not_pass_are_counted_drops() {
    let mut h = H::new();
    let u = udp(sa6(BOARD6, 5004), sa6(SERVER6, 7), b"x");
    // source routing (segments left 1), a discard option, AH
    h.send(&with_ipv6_extensions(
        &u,
        &[(IpProtocol::Ipv6Route, &[0, 1, 0, 0, 0, 0])],
    ));
    h.send(&with_ipv6_extensions(
        &u,
        &[(IpProtocol::Ipv6Opts, &[0x82, 4, 0, 0, 0, 0])],
    ));
    h.send(&with_ipv6_extensions(&u, &[(IpProtocol::IpSecAh, &[0; 6])]));
    // a fragment header behind a skippable one, and a TLV running past its header
    h.send(&with_ipv6_extensions(
        &u,
        &[EXTS[0], (IpProtocol::Ipv6Frag, &[0; 6])],
    ));
    h.send(&with_ipv6_extensions(
        &u,
        &[(IpProtocol::Ipv6Opts, &[1, 9, 0, 0, 0, 0])],
    ));
    assert!(h.recv().is_empty() && h.events().is_empty());
    let c = h.nat.counters();
    assert_eq!(
        (
            c.drop_ipv6_extension_header,
            c.drop_fragment,
            c.drop_malformed
        ),
        (3, 1, 1)
    );
    assert_eq!(h.nat.flow_count(), 0);
}
