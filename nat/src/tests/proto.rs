//! Crafted-packet tests: TCP setup semantics, UDP, DNS, ICMP, policy, limits, bad input.

use core::net::SocketAddr;

use proptest::prelude::*;
use smoltcp::time::Duration;
use smoltcp::wire::{IpProtocol, TcpControl};

use super::*;
use crate::{ConnectError, DatagramError, FlowId, NatConfig, NatEvent, OsEvent};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[track_caller]
fn expect_connect(h: &mut H, dst: SocketAddr) -> FlowId {
    match h.events().as_slice() {
        [NatEvent::TcpConnect { flow, dst: d, .. }] => {
            assert_eq!(*d, dst);
            *flow
        }
        other => panic!("expected one TcpConnect, got {other:?}"),
    }
}

#[test]
fn syn_ack_only_after_os_connect_and_dup_syn_ignored() {
    let mut h = H::new();
    let (b, s) = (ep(BOARD, 40000), ep(SERVER, 80));
    h.send(&syn(b, s, 1000));
    let flow = expect_connect(&mut h, s.into());
    assert!(h.recv().is_empty(), "no SYN-ACK before the OS connect");
    // Retransmitted SYN: no second connect.
    h.advance(Duration::from_secs(1));
    h.send(&syn(b, s, 1000));
    assert!(h.events().is_empty());
    assert!(h.recv().is_empty());
    assert_eq!(h.nat.counters().tcp_dup_syn, 1);
    h.os(OsEvent::TcpConnected { flow });
    let sa = seg_of(&h.recv_one());
    assert!(sa.syn && !sa.rst);
    assert_eq!(sa.ack, Some(1001));
    assert_eq!((sa.src, sa.dst), (s, b));
    // The board completes the handshake: the driver may now send.
    h.send(&tcp(b, s, TcpControl::None, 1001, Some(sa.seq + 1), &[]));
    assert_eq!(h.events(), vec![NatEvent::TcpWritable { flow }]);
    assert_eq!(h.nat.counters().tcp_connected, 1);
}

#[test]
fn refused_connect_answers_rst_at_once() {
    let mut h = H::new();
    let (b, s) = (ep(BOARD, 40001), ep(SERVER, 81));
    h.send(&syn(b, s, 7));
    let flow = expect_connect(&mut h, s.into());
    h.os(OsEvent::TcpConnectFailed {
        flow,
        error: ConnectError::Refused,
    });
    let rst = seg_of(&h.recv_one());
    assert!(rst.rst);
    assert_eq!(
        rst.ack,
        Some(8),
        "RST|ACK must acknowledge the SYN for the board to accept it"
    );
    assert_eq!(h.nat.flow_count(), 0);
    assert_eq!(h.nat.counters().tcp_refused, 1);
    // A late event for the finished flow is stale, not a panic.
    h.os(OsEvent::TcpConnected { flow });
    assert_eq!(h.nat.counters().drop_stale_os_event, 1);
}

#[test]
fn unreachable_connect_answers_icmp_quoting_the_syn() {
    let mut h = H::new();
    let (b, s) = (ep(BOARD, 40002), ep(SERVER, 82));
    h.send(&syn(b, s, 0xdead_beef));
    let flow = expect_connect(&mut h, s.into());
    h.os(OsEvent::TcpConnectFailed {
        flow,
        error: ConnectError::HostUnreachable,
    });
    let (from, ty, code, data) = icmp_of(&h.recv_one());
    assert_eq!((from, ty, code), (GATEWAY, 3, 1));
    // Quoted: IPv4 header (20) + ports and sequence number.
    assert_eq!(&data[20 + 4..20 + 8], &0xdead_beef_u32.to_be_bytes());
    assert_eq!(h.nat.counters().tcp_connect_failed, 1);
}

#[test]
fn board_rst_while_connecting_cancels() {
    let mut h = H::new();
    let (b, s) = (ep(BOARD, 40003), ep(SERVER, 83));
    h.send(&syn(b, s, 5));
    let flow = expect_connect(&mut h, s.into());
    h.send(&tcp(b, s, TcpControl::Rst, 6, None, &[]));
    assert_eq!(h.events(), vec![NatEvent::TcpClose { flow, reset: true }]);
    assert_eq!(h.nat.flow_count(), 0);
}

#[test]
fn connect_timeout_when_driver_never_answers() {
    let mut h = H::new();
    let (b, s) = (ep(BOARD, 40004), ep(SERVER, 84));
    h.send(&syn(b, s, 5));
    let flow = expect_connect(&mut h, s.into());
    h.advance(Duration::from_secs(76));
    assert_eq!(h.events(), vec![NatEvent::TcpClose { flow, reset: true }]);
    let (_, ty, code, _) = icmp_of(&h.recv_one());
    assert_eq!((ty, code), (3, 1));
    assert_eq!(h.nat.counters().flows_expired, 1);
}

#[test]
fn segment_for_unknown_flow_gets_rst() {
    let mut h = H::new();
    h.send(&tcp(
        ep(BOARD, 40005),
        ep(SERVER, 85),
        TcpControl::None,
        100,
        Some(200),
        b"x",
    ));
    let r = seg_of(&h.recv_one());
    assert!(r.rst);
    assert_eq!(h.nat.counters().drop_tcp_no_flow, 1);
}

#[test]
fn udp_flow_reply_port_unreachable_and_idle_expiry() {
    let mut h = H::new();
    let (b, s) = (ep(BOARD, 5000), ep(SERVER, 7));
    h.send(&udp(b, s, b"ping"));
    let flow = match h.events().as_slice() {
        [
            NatEvent::UdpOpen { flow, dst, .. },
            NatEvent::UdpSend { flow: f2, payload },
        ] => {
            assert_eq!(
                (*dst, f2, payload.as_slice()),
                (SocketAddr::from(s), flow, &b"ping"[..])
            );
            *flow
        }
        other => panic!("{other:?}"),
    };
    h.send(&udp(b, s, b"again"));
    assert_eq!(
        h.events(),
        vec![NatEvent::UdpSend {
            flow,
            payload: b"again".to_vec()
        }]
    );
    h.os(OsEvent::UdpReceived {
        flow,
        payload: b"pong",
    });
    assert_eq!(udp_of(&h.recv_one()), (s, b, b"pong".to_vec()));
    let big = vec![0; 65_500];
    h.os(OsEvent::UdpReceived {
        flow,
        payload: &big,
    });
    assert!(h.recv().is_empty());
    assert_eq!(h.nat.counters().drop_too_big, 1);
    h.os(OsEvent::UdpError {
        flow,
        error: DatagramError::PortUnreachable,
    });
    let (from, ty, code, data) = icmp_of(&h.recv_one());
    assert_eq!((from, ty, code), (*s.ip(), 3, 3));
    assert_eq!(&data[20..24], &[0x13, 0x88, 0, 7], "quoted UDP ports");
    // Replied, non-DNS: the long timeout applies.
    h.advance(Duration::from_secs(31));
    assert!(h.events().is_empty());
    h.advance(Duration::from_secs(150));
    assert_eq!(h.events(), vec![NatEvent::UdpClose { flow }]);
    assert_eq!(h.nat.flow_count(), 0);
    // An unreplied flow expires after 30 s.
    h.send(&udp(b, s, b"x"));
    let flow2 = h.events()[0].flow();
    h.advance(Duration::from_secs(29));
    assert!(h.events().is_empty());
    h.advance(Duration::from_secs(2));
    assert_eq!(h.events(), vec![NatEvent::UdpClose { flow: flow2 }]);
}

#[test]
fn dns_to_gateway_is_forwarded_over_udp_and_tcp() {
    let mut cfg = NatConfig::default();
    cfg.dns_servers = vec![sa("127.0.0.53:53")];
    let mut h = H::with(cfg);
    let (b, g) = (ep(BOARD, 5353), ep(GATEWAY, 53));
    h.send(&udp(b, g, b"query"));
    let flow = match h.events().as_slice() {
        [
            NatEvent::UdpOpen { flow, dst, .. },
            NatEvent::UdpSend { .. },
        ] => {
            assert_eq!(
                *dst,
                sa("127.0.0.53:53"),
                "loopback resolver allowed despite the loopback policy"
            );
            *flow
        }
        other => panic!("{other:?}"),
    };
    h.os(OsEvent::UdpReceived {
        flow,
        payload: b"answer",
    });
    assert_eq!(
        udp_of(&h.recv_one()),
        (g, b, b"answer".to_vec()),
        "answer comes from gateway:53"
    );
    h.send(&syn(ep(BOARD, 40010), g, 1));
    let tflow = expect_connect(&mut h, sa("127.0.0.53:53"));
    h.os(OsEvent::TcpConnected { flow: tflow });
    assert!(seg_of(&h.recv_one()).syn);
    assert_eq!(h.nat.counters().dns_forwarded, 2);
    // Without resolvers: refused.
    h.nat.set_dns_servers(h.now, Vec::new());
    h.send(&udp(ep(BOARD, 5354), g, b"q"));
    assert_eq!(icmp_of(&h.recv_one()).1, 3);
    assert_eq!(h.nat.counters().drop_no_dns_server, 1);
}

#[test]
fn ping_through_events_gateway_answers_and_fallback() {
    let mut h = H::new();
    h.send(&echo(BOARD, GATEWAY, 9, 1, b"gw"));
    let (from, ty, _, data) = icmp_of(&h.recv_one());
    assert_eq!((from, ty), (GATEWAY, 0));
    assert_eq!(&data, b"gw");
    h.send(&echo(BOARD, SERVER, 9, 2, b"far"));
    let flow = expect_echo_request(&mut h, SERVER.into(), 2, b"far");
    assert!(h.recv().is_empty(), "no fake reply");
    h.os(OsEvent::IcmpEchoReply {
        flow,
        seq: 2,
        payload: b"far",
    });
    let pkt = h.recv_one();
    let (from, ty, _, data) = icmp_of(&pkt);
    assert_eq!((from, ty, data.as_slice()), (SERVER, 0, &b"far"[..]));
    assert_eq!(
        &pkt[24..26],
        &9u16.to_be_bytes(),
        "board's identifier restored"
    );
    // Ping sockets unavailable: only the gateway answers from now on.
    h.os(OsEvent::IcmpUnavailable { flow });
    h.send(&echo(BOARD, SERVER, 9, 3, b"far"));
    assert!(h.events().is_empty());
    assert!(h.recv().is_empty());
    assert_eq!(h.nat.counters().drop_ping_unavailable, 1);
    h.send(&echo(BOARD, GATEWAY, 9, 4, b"gw"));
    assert_eq!(icmp_of(&h.recv_one()).1, 0);
    assert_eq!(h.nat.counters().gateway_pings_answered, 2);
}

#[test]
fn policy_denials_are_answered_and_counted() {
    let mut h = H::new();
    h.send(&syn(
        ep(BOARD, 40020),
        ep(std::net::Ipv4Addr::LOCALHOST, 22),
        1,
    ));
    assert_eq!(icmp_of(&h.recv_one()).2, 13, "administratively prohibited");
    h.send(&syn(ep(BOARD, 40022), ep(GATEWAY, 8080), 1));
    assert!(seg_of(&h.recv_one()).rst, "closed gateway port refuses");
    h.send(&echo(BOARD, "169.254.1.1".parse().unwrap(), 1, 1, b""));
    assert_eq!(icmp_of(&h.recv_one()).2, 13);
    h.send(&udp(
        ep(BOARD, 40023),
        ep("224.0.0.251".parse().unwrap(), 5353),
        b"mdns",
    ));
    assert!(h.recv().is_empty(), "multicast is dropped silently");
    assert!(h.events().is_empty());
    let c = h.nat.counters();
    assert_eq!(
        (
            c.drop_policy_loopback,
            c.drop_policy_lan,
            c.drop_policy_gateway,
            c.drop_martian
        ),
        (2, 0, 1, 1)
    );
    // With allow_host_loopback + map_gateway_to_loopback the gateway reaches 127.0.0.1.
    let mut cfg = NatConfig::default();
    cfg.allow_host_loopback = true;
    cfg.map_gateway_to_loopback = true;
    let mut h = H::with(cfg);
    h.send(&syn(ep(BOARD, 40024), ep(GATEWAY, 8080), 1));
    expect_connect(&mut h, sa("127.0.0.1:8080"));
}

#[test]
fn lan_is_reachable_by_default_and_closed_by_deny_lan() {
    let lan = || ep("192.168.77.1".parse().unwrap(), 8080);
    let mut h = H::new();
    h.send(&syn(ep(BOARD, 40030), lan(), 1));
    expect_connect(&mut h, sa("192.168.77.1:8080"));
    h.send(&udp(
        ep(BOARD, 40031),
        ep("10.9.8.7".parse().unwrap(), 53),
        b"q",
    ));
    assert!(matches!(
        h.events()[..],
        [NatEvent::UdpOpen { .. }, NatEvent::UdpSend { .. }]
    ));

    let mut cfg = NatConfig::default();
    cfg.deny_lan = true;
    cfg.host_addrs = vec!["203.0.113.5".parse().unwrap()];
    let mut h = H::with(cfg);
    // A SYN to a denied address fails at once: ICMP administratively prohibited, no connect.
    h.send(&syn(ep(BOARD, 40032), lan(), 1));
    assert_eq!(icmp_of(&h.recv_one()).2, 13, "administratively prohibited");
    h.send(&udp(
        ep(BOARD, 40033),
        ep("100.64.0.1".parse().unwrap(), 53),
        b"q",
    ));
    assert_eq!(icmp_of(&h.recv_one()).2, 13);
    h.send(&syn(
        ep(BOARD, 40034),
        ep("203.0.113.5".parse().unwrap(), 22),
        1,
    ));
    assert_eq!(icmp_of(&h.recv_one()).2, 13, "the laptop's own address");
    h.send(&echo(BOARD, "172.16.0.1".parse().unwrap(), 1, 1, b""));
    assert_eq!(icmp_of(&h.recv_one()).2, 13);
    h.send(&syn(ep(BOARD, 40035), ep(SERVER, 80), 1));
    expect_connect(&mut h, SocketAddr::V4(ep(SERVER, 80)));
    let c = h.nat.counters();
    assert_eq!((c.drop_policy_lan, c.drop_policy_loopback), (4, 0));
}

#[test]
fn policy_denials_are_logged_at_the_rate_limit() {
    let mut cfg = NatConfig::default();
    cfg.deny_lan = true;
    cfg.log_rate_per_sec = 3;
    let mut h = H::with(cfg);
    for port in 0..10 {
        h.send(&syn(
            ep(BOARD, 41000 + port),
            ep("10.0.0.1".parse().unwrap(), 80),
            1,
        ));
        assert_eq!(icmp_of(&h.recv_one()).2, 13, "every SYN is answered");
    }
    let c = h.nat.counters();
    assert_eq!(c.drop_policy_lan, 10, "every denial is counted");
    assert_eq!(
        c.logs_suppressed, 7,
        "three lines logged in the window, the rest suppressed"
    );
}

#[test]
fn flow_limit_evicts_idle_flows_first() {
    let mut cfg = NatConfig::default();
    cfg.max_flows = 2;
    let mut h = H::with(cfg);
    h.send(&udp(ep(BOARD, 1), ep(SERVER, 7), b"a"));
    h.send(&udp(ep(BOARD, 2), ep(SERVER, 7), b"b"));
    let first = h.events()[0].flow();
    // Both busy: the third is refused.
    h.send(&udp(ep(BOARD, 3), ep(SERVER, 7), b"c"));
    assert_eq!(h.nat.counters().drop_flow_limit, 1);
    h.events();
    h.now += Duration::from_secs(11);
    h.send(&udp(ep(BOARD, 2), ep(SERVER, 7), b"b"));
    h.events();
    h.send(&udp(ep(BOARD, 3), ep(SERVER, 7), b"c"));
    let ev = h.events();
    assert_eq!(
        ev[0],
        NatEvent::UdpClose { flow: first },
        "idle flow evicted: {ev:?}"
    );
    assert!(matches!(ev[1], NatEvent::UdpOpen { .. }));
    assert_eq!(h.nat.counters().flows_evicted, 1);
    assert_eq!(h.nat.flow_count(), 2);
}

#[test]
fn syn_flood_is_bounded() {
    let mut cfg = NatConfig::default();
    cfg.max_connecting = 4;
    let mut h = H::with(cfg);
    for port in 1..=10 {
        h.send(&syn(ep(BOARD, port), ep(SERVER, 80), 1));
    }
    assert_eq!(h.events().len(), 4);
    assert_eq!(h.nat.counters().drop_syn_flood, 6);
}

#[test]
fn fragments_ttl_unknown_protocol_and_garbage_are_counted() {
    let mut h = H::new();
    let mut frag = udp(ep(BOARD, 1), ep(SERVER, 7), b"frag");
    frag[6] = 0x20; // more fragments
    let sum = {
        frag[10] = 0;
        frag[11] = 0;
        let mut p = smoltcp::wire::Ipv4Packet::new_unchecked(&mut frag[..]);
        p.fill_checksum();
        p.checksum()
    };
    assert_ne!(sum, 0);
    h.send(&frag);
    let ttl1 = ipv4(BOARD, SERVER, IpProtocol::Udp, 1, 8, |b| {
        b.copy_from_slice(&[0, 1, 0, 7, 0, 8, 0, 0]);
    });
    h.send(&ttl1);
    let (from, ty, ..) = icmp_of(&h.recv_one());
    assert_eq!((from, ty), (GATEWAY, 11), "time exceeded from the gateway");
    h.send(&ipv4(
        BOARD,
        SERVER,
        IpProtocol::Unknown(253),
        64,
        4,
        |_| {},
    ));
    h.send(&[0x45, 0, 0]);
    h.send(&[0x60; 40]);
    h.send(&[]);
    let c = h.nat.counters();
    assert_eq!(
        (
            c.drop_fragment,
            c.drop_ttl_expired,
            c.drop_unknown_protocol,
            c.drop_malformed,
        ),
        (1, 1, 1, 3),
        "an IPv6 header claiming more payload than it has is malformed"
    );
    assert!(h.events().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    /// Random bytes, and random mutations of valid packets, never panic the core.
    #[test]
    fn random_packets_never_panic(
        raw in proptest::collection::vec(any::<u8>(), 0..200),
        kind in 0u8..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        events in proptest::collection::vec((0u64..8, 0u8..6), 0..6),
    ) {
        let mut cfg = NatConfig::default();
        cfg.dns_servers = vec![sa("192.0.2.53:53")];
        let mut h = H::with(cfg);
        let mut pkt = match kind {
            0 => raw.clone(),
            1 => syn(ep(BOARD, 1000), ep(SERVER, 80), 1),
            2 => udp(ep(BOARD, 1000), ep(GATEWAY, 53), &raw),
            _ => echo(BOARD, SERVER, 1, 1, &raw),
        };
        for (i, v) in flips {
            if !pkt.is_empty() {
                let n = pkt.len();
                pkt[i % n] ^= v;
            }
        }
        h.send(&pkt);
        for (flow, what) in events {
            let flow = FlowId(flow);
            let ev = match what {
                0 => OsEvent::TcpConnected { flow },
                1 => OsEvent::TcpConnectFailed { flow, error: ConnectError::Refused },
                2 => OsEvent::TcpEof { flow },
                3 => OsEvent::UdpReceived { flow, payload: &raw },
                4 => OsEvent::IcmpEchoReply { flow, seq: 1, payload: &raw },
                _ => OsEvent::TcpReset { flow },
            };
            h.os(ev);
            h.send(&pkt);
        }
        h.recv();
        h.events();
        h.advance(Duration::from_secs(200));
    }
}
