//! The pages of an idle flow's empty rings go back to the OS (`ring.rs`, `sockets.rs`): checked
//! with `mincore`, with data through the rings before and after, and never while a ring holds
//! bytes smoltcp will read again (queued, unacknowledged or out of order).

use smoltcp::iface::SocketHandle;
use smoltcp::time::Duration;

use super::stream::{drain, open, pattern, small_cfg};
use super::*;
use crate::sockets::RING_IDLE;
use crate::{FlowId, NatConfig};

/// The stream tests' small configuration, with the pages of idle rings given back by
/// `madvise` as qbkit-host does.
fn released_cfg() -> NatConfig {
    let mut cfg = small_cfg();
    cfg.page_release = Some(crate::ring::testing::madvise());
    cfg
}

/// Past the idle time: the pool's release check has run.
fn idle() -> Duration {
    RING_IDLE + Duration::from_millis(100)
}

fn released(h: &H) -> u64 {
    h.nat.counters().tcp_rings_released
}

fn resident(h: &H, flow: FlowId) -> [usize; 2] {
    let id = h.nat.tcp_socket_of(flow).expect("open flow");
    h.nat.sockets.resident_pages(id)
}

/// Board → OS and OS → board, each checked end to end.
fn both_ways(h: &mut H, board: &mut Board, s: SocketHandle, flow: FlowId, seed: u32) {
    let up = pattern(40 * 1024, seed);
    assert_eq!(board.sock(s).send_slice(&up).unwrap(), up.len());
    board.exchange(h);
    assert_eq!(drain(h, flow), up);
    let down = pattern(40 * 1024, seed + 1);
    assert_eq!(h.nat.tcp_send(flow, &down).unwrap(), down.len());
    board.exchange(h);
    let mut got = vec![0; 64 * 1024];
    let n = board.sock(s).recv_slice(&mut got).unwrap();
    assert_eq!(&got[..n], down);
}

/// A NAT with `cfg` and a flow from board port `port` that carried data both ways.
fn used_flow(cfg: NatConfig, port: u16, seed: u32) -> (H, Board, SocketHandle, FlowId) {
    let mut h = H::with(cfg);
    let mut board = Board::new(h.now, 1500);
    let (s, flow) = open(&mut h, &mut board, port, 256 * 1024);
    both_ways(&mut h, &mut board, s, flow, seed);
    (h, board, s, flow)
}

/// A flow that carried data both ways and then idled: both rings released.
fn released_once(port: u16, seed: u32) -> (H, Board, SocketHandle, FlowId) {
    let (mut h, board, s, flow) = used_flow(released_cfg(), port, seed);
    h.advance(idle());
    assert_eq!(released(&h), 2);
    (h, board, s, flow)
}

#[test]
fn an_idle_flow_gives_its_ring_pages_back_and_reuses_them() {
    let (mut h, mut board, s, flow) = used_flow(released_cfg(), 42000, 1);
    let [rx, tx] = resident(&h, flow);
    assert!(
        rx >= 8 && tx >= 8,
        "40 KiB each way commit pages: {rx} / {tx}"
    );
    assert_eq!(released(&h), 0);

    h.advance(idle());
    assert_eq!(released(&h), 2);
    assert_eq!(resident(&h, flow), [0, 0]);

    // Bytes written after the release read back; the next idle period releases again.
    both_ways(&mut h, &mut board, s, flow, 3);
    assert_ne!(resident(&h, flow), [0, 0]);
    h.advance(idle());
    assert_eq!(released(&h), 4);
    assert_eq!(resident(&h, flow), [0, 0]);
    both_ways(&mut h, &mut board, s, flow, 5);
}

#[test]
fn a_busy_flow_keeps_its_pages() {
    let mut h = H::with(released_cfg());
    let mut board = Board::new(h.now, 1500);
    let (s, flow) = open(&mut h, &mut board, 42001, 256 * 1024);
    for seed in 0..8 {
        h.advance(RING_IDLE / 2);
        both_ways(&mut h, &mut board, s, flow, 10 + 2 * seed);
    }
    assert_eq!(released(&h), 0);
    h.advance(idle());
    assert_eq!(released(&h), 2);
}

#[test]
fn an_out_of_order_segment_keeps_the_receive_ring() {
    // Pages of the receive ring hold data first, so a release would zero the held segment.
    let (mut h, mut board, s, flow) = released_once(42002, 20);

    let first = pattern(1000, 30);
    let second = pattern(1000, 31);
    board.sock(s).send_slice(&first).unwrap();
    let p1 = board.outgoing(h.now);
    board.sock(s).send_slice(&second).unwrap();
    let p2 = board.outgoing(h.now);
    assert_eq!((p1.len(), p2.len()), (1, 1), "one segment each");
    // The second segment arrives first: smoltcp keeps it in the ring, out of order.
    h.send(&p2[0]);
    h.recv();
    assert_eq!(h.nat.tcp_recv(flow, &mut [0; 100]).unwrap(), 0);
    h.advance(idle());
    // The transmit ring (empty) went, the receive ring did not.
    assert_eq!(released(&h), 3);
    assert_ne!(resident(&h, flow)[0], 0);

    h.send(&p1[0]);
    let mut want = first;
    want.extend_from_slice(&second);
    assert_eq!(drain(&mut h, flow), want);
    board.exchange(&mut h);
    h.advance(idle());
    assert_eq!(released(&h), 5);
}

#[test]
fn unacknowledged_bytes_keep_the_transmit_ring() {
    let (mut h, mut board, s, flow) = released_once(42003, 40);

    // The board never sees these segments: the bytes wait in the ring for a retransmission.
    let down = pattern(20 * 1024, 41);
    assert_eq!(h.nat.tcp_send(flow, &down).unwrap(), down.len());
    assert!(!h.recv().is_empty());
    h.advance(idle());
    assert_eq!(released(&h), 3, "only the (empty) receive ring");
    assert_ne!(resident(&h, flow)[1], 0);

    // The retransmissions come from the ring and carry the bytes.
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    for _ in 0..20 {
        board.exchange(&mut h);
        let n = board.sock(s).recv_slice(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        if got.len() == down.len() {
            break;
        }
        h.advance(Duration::from_millis(500));
    }
    assert_eq!(got, down);
}

#[test]
fn without_a_page_release_the_core_keeps_its_pages() {
    // The core makes no system call: with no PageRelease from the driver, idle rings stay.
    let (mut h, _board, _s, flow) = used_flow(small_cfg(), 42100, 7);
    h.advance(idle());
    assert_eq!(released(&h), 0);
    let [rx, tx] = resident(&h, flow);
    assert!(
        rx >= 8 && tx >= 8,
        "rings keep their pages: rx {rx} tx {tx}"
    );
}
