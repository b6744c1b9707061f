//! DNS failover through the core, played with a fake clock: a dead first resolver (silent, ICMP
//! error, refused TCP, unanswered TCP connect), every resolver dead, and a resolver list replaced
//! while queries wait.

use core::net::SocketAddr;

use smoltcp::time::Duration;

use super::*;
use crate::{ConnectError, DatagramError, FlowId, NatConfig, NatEvent, OsEvent};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const R1: &str = "192.0.2.1:53";
const R2: &str = "192.0.2.2:53";

fn two_resolvers() -> H {
    let mut cfg = NatConfig::default();
    cfg.dns_servers = vec![sa(R1), sa(R2)];
    H::with(cfg)
}

/// A DNS query with id `id`.
fn query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    q
}

/// Expects exactly an open of a UDP flow to `dst` followed by sends of `payloads`.
#[track_caller]
fn expect_open(h: &mut H, dst: &str, payloads: &[Vec<u8>]) -> FlowId {
    let ev = h.events();
    let (flow, rest) = match ev.as_slice() {
        [NatEvent::UdpOpen { flow, dst: d, .. }, rest @ ..] => {
            assert_eq!(*d, sa(dst), "{ev:?}");
            (*flow, rest)
        }
        other => panic!("expected UdpOpen to {dst}, got {other:?}"),
    };
    let sent: Vec<Vec<u8>> = rest
        .iter()
        .map(|e| match e {
            NatEvent::UdpSend { flow: f, payload } if *f == flow => payload.clone(),
            other => panic!("expected UdpSend on {flow}, got {other:?}"),
        })
        .collect();
    assert_eq!(sent, payloads);
    flow
}

/// Expects a move: the old flow closes, a new one opens to `dst` and gets `payloads`.
#[track_caller]
fn expect_move(h: &mut H, old: FlowId, dst: &str, payloads: &[Vec<u8>]) -> FlowId {
    let ev = h.events();
    match ev.as_slice() {
        [NatEvent::UdpClose { flow }, ..] => assert_eq!(*flow, old),
        other => panic!("expected UdpClose of {old}, got {other:?}"),
    }
    let mut rest = ev[1..].to_vec();
    let flow = match rest.first() {
        Some(NatEvent::UdpOpen { flow, dst: d, .. }) => {
            assert_eq!(*d, sa(dst));
            *flow
        }
        other => panic!("expected UdpOpen to {dst}, got {other:?}"),
    };
    assert_ne!(flow, old, "a moved flow gets a new id");
    rest.remove(0);
    let sent: Vec<Vec<u8>> = rest
        .into_iter()
        .map(|e| match e {
            NatEvent::UdpSend { payload, .. } => payload,
            other => panic!("expected UdpSend, got {other:?}"),
        })
        .collect();
    assert_eq!(sent, payloads);
    flow
}

#[test]
fn silent_first_resolver_fails_over_within_a_second_and_the_second_is_preferred() {
    let mut h = two_resolvers();
    let (b, g) = (ep(BOARD, 5353), ep(GATEWAY, 53));
    h.send(&udp(b, g, &query(1)));
    let f1 = expect_open(&mut h, R1, &[query(1)]);
    assert_eq!(
        h.nat.poll_timeout(h.now),
        Some(h.now + Duration::from_secs(1))
    );
    h.advance(Duration::from_millis(999));
    assert!(h.events().is_empty(), "no failover before the second is up");
    h.advance(Duration::from_millis(1));
    let f2 = expect_move(&mut h, f1, R2, &[query(1)]);
    assert_eq!(h.nat.counters().dns_failovers, 1);
    h.os(OsEvent::UdpReceived {
        flow: f2,
        payload: &query(1),
    });
    assert_eq!(
        udp_of(&h.recv_one()),
        (g, b, query(1)),
        "answer from gateway:53"
    );
    // A late answer from the old socket is stale.
    h.os(OsEvent::UdpReceived {
        flow: f1,
        payload: &query(1),
    });
    assert!(h.recv().is_empty());
    assert_eq!(h.nat.counters().drop_stale_os_event, 1);
    // The next query (another board port) goes straight to the resolver that answered.
    h.send(&udp(ep(BOARD, 5354), g, &query(2)));
    let f3 = expect_open(&mut h, R2, &[query(2)]);
    assert_eq!(h.nat.dns_servers(), (&[sa(R1), sa(R2)][..], Some(1)));
    h.os(OsEvent::UdpReceived {
        flow: f3,
        payload: &query(2),
    });
    assert_eq!(udp_of(&h.recv_one()).2, query(2));
    // Everything answered: nothing fails over later.
    h.advance(Duration::from_secs(5));
    assert!(h.events().is_empty());
    assert_eq!(h.nat.counters().dns_failovers, 1);
}

#[test]
fn icmp_error_from_a_resolver_fails_over_at_once_without_an_error_to_the_board() {
    let mut h = two_resolvers();
    let (b, g) = (ep(BOARD, 5353), ep(GATEWAY, 53));
    h.send(&udp(b, g, &query(7)));
    let f1 = expect_open(&mut h, R1, &[query(7)]);
    h.os(OsEvent::UdpError {
        flow: f1,
        error: DatagramError::PortUnreachable,
    });
    // The driver reports Failed after an error at open: stale now, the flow lives on.
    h.os(OsEvent::UdpError {
        flow: f1,
        error: DatagramError::Failed,
    });
    assert!(h.recv().is_empty(), "no ICMP error for the board");
    let f2 = expect_move(&mut h, f1, R2, &[query(7)]);
    h.os(OsEvent::UdpReceived {
        flow: f2,
        payload: &query(7),
    });
    assert_eq!(udp_of(&h.recv_one()).2, query(7));
}

#[test]
fn every_resolver_dead_gives_up_and_the_last_error_reaches_the_board() {
    let mut h = two_resolvers();
    let (b, g) = (ep(BOARD, 5353), ep(GATEWAY, 53));
    h.send(&udp(b, g, &query(3)));
    let f1 = expect_open(&mut h, R1, &[query(3)]);
    h.advance(Duration::from_secs(1));
    let f2 = expect_move(&mut h, f1, R2, &[query(3)]);
    h.advance(Duration::from_secs(1));
    assert!(h.events().is_empty(), "nothing left to try");
    assert_eq!(h.nat.counters().dns_unanswered, 1);
    assert_eq!(
        h.nat
            .poll_timeout(h.now)
            .map(|t| t > h.now + Duration::from_millis(900)),
        Some(true)
    );
    // An ICMP error now goes to the board as for any UDP flow.
    h.os(OsEvent::UdpError {
        flow: f2,
        error: DatagramError::PortUnreachable,
    });
    assert_eq!(icmp_of(&h.recv_one()).1, 3);
    // The board retries on the same port: a new round starts at R2 and may go back to R1.
    h.send(&udp(b, g, &query(4)));
    let ev = h.events();
    assert!(
        matches!(ev.as_slice(), [NatEvent::UdpSend { flow, .. }] if *flow == f2),
        "{ev:?}"
    );
    h.advance(Duration::from_secs(1));
    expect_move(&mut h, f2, R1, &[query(4)]);
}

#[test]
fn tcp_dns_fails_over_on_refused_and_on_an_unanswered_connect() {
    let mut h = two_resolvers();
    let g = ep(GATEWAY, 53);
    h.send(&syn(ep(BOARD, 40000), g, 1));
    let t1 = match h.events().as_slice() {
        [NatEvent::TcpConnect { flow, dst, .. }] if *dst == sa(R1) => *flow,
        other => panic!("{other:?}"),
    };
    h.os(OsEvent::TcpConnectFailed {
        flow: t1,
        error: ConnectError::Refused,
    });
    assert!(
        h.recv().is_empty(),
        "no RST to the board while a resolver is left"
    );
    let t2 = match h.events().as_slice() {
        [NatEvent::TcpConnect { flow, dst, .. }] if *dst == sa(R2) => *flow,
        other => panic!("{other:?}"),
    };
    h.os(OsEvent::TcpConnected { flow: t2 });
    assert!(
        seg_of(&h.recv_one()).syn,
        "SYN-ACK once the second resolver accepted"
    );
    // A connect that does not finish within a second: closed, the next resolver tried.
    h.send(&syn(ep(BOARD, 40001), g, 1));
    let t3 = match h.events().as_slice() {
        [NatEvent::TcpConnect { flow, dst, .. }] if *dst == sa(R2) => *flow,
        other => panic!("the preferred resolver is R2 now: {other:?}"),
    };
    h.advance(Duration::from_secs(1));
    match h.events().as_slice() {
        [
            NatEvent::TcpClose { flow, reset: true },
            NatEvent::TcpConnect { dst, .. },
        ] => {
            assert_eq!(*flow, t3);
            assert_eq!(*dst, sa(R1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.nat.counters().dns_failovers, 2);
}

#[test]
fn replaced_resolver_list_moves_waiting_queries_to_the_new_resolver() {
    let mut h = two_resolvers();
    let (b, g) = (ep(BOARD, 5353), ep(GATEWAY, 53));
    h.send(&udp(b, g, &query(5)));
    let f1 = expect_open(&mut h, R1, &[query(5)]);
    // The same list again changes nothing.
    h.nat.set_dns_servers(h.now, vec![sa(R1), sa(R2)]);
    assert!(h.events().is_empty());
    assert_eq!(h.nat.counters().dns_servers_changed, 0);
    let r3 = "198.51.100.53:53";
    h.nat.set_dns_servers(h.now, vec![sa(r3)]);
    let f2 = expect_move(&mut h, f1, r3, &[query(5)]);
    assert_eq!(h.nat.counters().dns_servers_changed, 1);
    assert_eq!(h.nat.dns_servers(), (&[sa(r3)][..], Some(0)));
    h.os(OsEvent::UdpReceived {
        flow: f2,
        payload: &query(5),
    });
    assert_eq!(udp_of(&h.recv_one()).2, query(5));
    // The same board port keeps the new resolver; a new one starts there too.
    h.send(&udp(ep(BOARD, 5360), g, &query(6)));
    expect_open(&mut h, r3, &[query(6)]);
}
