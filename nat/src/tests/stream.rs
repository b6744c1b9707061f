//! Whole TCP conversations between a smoltcp "board kernel" and the core, with the test playing
//! the driver: data both ways with backpressure, half-close both ways, resets both ways, and a
//! multi-MiB transfer checked end to end. The conversations run over IPv4 and IPv6 alike.

use core::net::SocketAddr;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::time::Duration;

use super::*;
use crate::{FlowId, NatConfig, NatEvent, OsEvent};

/// The destinations the conversation tests run against: one IPv4, one IPv6.
fn servers() -> [SocketAddr; 2] {
    [ep(SERVER, 80).into(), ep6(SERVER6, 80).into()]
}

/// Connect a board socket through the core and answer the connect; returns (socket, flow).
pub(super) fn open(h: &mut H, board: &mut Board, port: u16, buf: usize) -> (SocketHandle, FlowId) {
    open_to(h, board, port, buf, ep(SERVER, 80).into())
}

/// `open` towards `dst`: the driver is asked to connect to exactly `dst`.
fn open_to(
    h: &mut H,
    board: &mut Board,
    port: u16,
    buf: usize,
    dst: SocketAddr,
) -> (SocketHandle, FlowId) {
    let s = board.connect(port, dst, buf);
    let ev = board.exchange(h);
    let [NatEvent::TcpConnect { flow, dst: d, .. }] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(*d, dst);
    let flow = *flow;
    assert_eq!(board.sock(s).state(), State::SynSent);
    h.os(OsEvent::TcpConnected { flow });
    let ev = board.exchange(h);
    assert_eq!(ev, vec![NatEvent::TcpWritable { flow }]);
    assert_eq!(board.sock(s).state(), State::Established);
    (s, flow)
}

pub(super) fn drain(h: &mut H, flow: FlowId) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 7000];
    loop {
        let n = h.nat.tcp_recv(flow, &mut buf).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

pub(super) fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(super) fn small_cfg() -> NatConfig {
    let mut cfg = NatConfig::default();
    cfg.tcp_rx_buffer = 64 * 1024;
    cfg.tcp_tx_buffer = 64 * 1024;
    cfg.mtu = 1500;
    cfg
}

#[test]
fn data_both_ways_with_backpressure() {
    let mut h = H::with(small_cfg());
    let mut board = Board::new(h.now, 1500);
    let (s, flow) = open(&mut h, &mut board, 41000, 256 * 1024);

    // Board → OS: the driver does not read, so the board's window closes at our buffer size.
    let up = pattern(200 * 1024, 1);
    let sent = board.sock(s).send_slice(&up).unwrap();
    assert_eq!(sent, up.len());
    let ev = board.exchange(&mut h);
    assert_eq!(ev, vec![NatEvent::TcpReadable { flow }]);
    let queued = board.sock(s).send_queue();
    assert!(
        queued >= 200 * 1024 - 64 * 1024,
        "board still holds {queued} bytes: window closed at 64 KiB"
    );
    // Reading opens the window; the rest flows. Readable fires again only after a drain.
    let mut got = Vec::new();
    for _ in 0..20 {
        got.extend(drain(&mut h, flow));
        board.exchange(&mut h);
        h.advance(Duration::from_millis(300));
    }
    got.extend(drain(&mut h, flow));
    assert_eq!(got, up);

    // OS → board: tcp_send takes at most the buffer; TcpWritable comes when the board acks.
    let down = pattern(150 * 1024, 2);
    let n = h.nat.tcp_send(flow, &down).unwrap();
    assert_eq!(n, 64 * 1024, "bounded by the transmit buffer");
    assert_eq!(h.nat.tcp_send(flow, &down[n..]).unwrap(), 0);
    assert_eq!(feed_down(&mut h, &mut board, s, flow, &down, n), down);
}

/// Feeds the rest of `down` (the first `sent` bytes were taken already) to the flow whenever it
/// is writable, as the board reads and acknowledges; returns what the board read.
pub(super) fn feed_down(
    h: &mut H,
    board: &mut Board,
    s: SocketHandle,
    flow: FlowId,
    down: &[u8],
    sent: usize,
) -> Vec<u8> {
    let mut off = sent;
    let mut rx = Vec::new();
    let mut buf = vec![0; 300 * 1024];
    for _ in 0..200 {
        let ev = board.exchange(h);
        let n = board.sock(s).recv_slice(&mut buf).unwrap();
        rx.extend_from_slice(&buf[..n]);
        if ev.contains(&NatEvent::TcpWritable { flow }) && off < down.len() {
            off += h.nat.tcp_send(flow, &down[off..]).unwrap();
        }
        if rx.len() == down.len() {
            break;
        }
        h.advance(Duration::from_millis(10));
    }
    rx
}

#[test]
fn half_close_board_first_then_os() {
    for dst in servers() {
        let mut h = H::with(small_cfg());
        let mut board = Board::new(h.now, 1500);
        let (s, flow) = open_to(&mut h, &mut board, 41001, 64 * 1024, dst);
        board.sock(s).send_slice(b"request").unwrap();
        board.sock(s).close();
        let ev = board.exchange(&mut h);
        // The FIN is not reported before the data is taken.
        assert_eq!(ev, vec![NatEvent::TcpReadable { flow }]);
        assert_eq!(drain(&mut h, flow), b"request");
        assert_eq!(h.events(), vec![NatEvent::TcpShutdown { flow }]);
        // The OS side keeps talking after the board's FIN, then closes.
        assert_eq!(h.nat.tcp_send(flow, b"response").unwrap(), 8);
        h.os(OsEvent::TcpEof { flow });
        let ev = board.exchange(&mut h);
        let mut buf = [0; 64];
        let n = board.sock(s).recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"response");
        assert!(
            !board.sock(s).may_recv(),
            "board saw our FIN after the data"
        );
        assert!(
            ev.contains(&NatEvent::TcpClose { flow, reset: false }),
            "{ev:?}"
        );
        assert_eq!(h.nat.flow_count(), 0);
    }
}

#[test]
fn half_close_os_first_then_board() {
    for dst in servers() {
        let mut h = H::with(small_cfg());
        let mut board = Board::new(h.now, 1500);
        let (s, flow) = open_to(&mut h, &mut board, 41002, 64 * 1024, dst);
        assert_eq!(h.nat.tcp_send(flow, b"banner").unwrap(), 6);
        h.os(OsEvent::TcpEof { flow });
        board.exchange(&mut h);
        let mut buf = [0; 64];
        let n = board.sock(s).recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"banner");
        assert_eq!(board.sock(s).state(), State::CloseWait);
        // The board keeps sending on its half, then closes; data arrives before the shutdown.
        board.sock(s).send_slice(b"late upload").unwrap();
        board.sock(s).close();
        let ev = board.exchange(&mut h);
        assert_eq!(ev, vec![NatEvent::TcpReadable { flow }]);
        assert_eq!(drain(&mut h, flow), b"late upload");
        assert_eq!(
            h.events(),
            vec![
                NatEvent::TcpShutdown { flow },
                NatEvent::TcpClose { flow, reset: false }
            ]
        );
        assert_eq!(h.nat.flow_count(), 0);
        assert!(matches!(
            board.sock(s).state(),
            State::Closed | State::TimeWait
        ));
    }
}

#[test]
fn reset_from_board_and_from_os() {
    for dst in servers() {
        let mut h = H::with(small_cfg());
        let mut board = Board::new(h.now, 1500);
        let (s, flow) = open_to(&mut h, &mut board, 41003, 64 * 1024, dst);
        board.sock(s).abort();
        let ev = board.exchange(&mut h);
        assert_eq!(ev, vec![NatEvent::TcpClose { flow, reset: true }]);
        assert_eq!(h.nat.counters().tcp_reset_from_board, 1);

        let (s, flow) = open_to(&mut h, &mut board, 41004, 64 * 1024, dst);
        h.os(OsEvent::TcpReset { flow });
        let ev = board.exchange(&mut h);
        assert!(
            ev.is_empty(),
            "the driver reported the reset, no close event: {ev:?}"
        );
        assert_eq!(board.sock(s).state(), State::Closed, "board saw the RST");
        assert_eq!(h.nat.flow_count(), 0);
        assert!(h.nat.zombies.is_empty(), "socket freed once its RST left");
    }
}

/// A few MiB each way through the core, with the board-side stack and the "OS" both running
/// a fake clock; compares checksums of what was sent and received.
#[test]
fn full_transfer_multi_mib_with_checksum() {
    for dst in servers() {
        let mut cfg = NatConfig::default();
        cfg.mtu = 16384;
        let mut h = H::with(cfg);
        let mut board = Board::new(h.now, 16384);
        let (s, flow) = open_to(&mut h, &mut board, 41005, 512 * 1024, dst);
        let up = pattern(4 << 20, 3);
        let down = pattern(3 << 20, 4);
        let (mut up_off, mut down_off) = (0, 0);
        let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
        let mut buf = vec![0; 256 * 1024];
        for _ in 0..20_000 {
            if up_off < up.len() {
                up_off += board.sock(s).send_slice(&up[up_off..]).unwrap();
            }
            if down_off < down.len() {
                down_off += h.nat.tcp_send(flow, &down[down_off..]).unwrap();
            }
            board.exchange(&mut h);
            got_up.extend(drain(&mut h, flow));
            if let Ok(n) = board.sock(s).recv_slice(&mut buf) {
                got_down.extend_from_slice(&buf[..n]);
            }
            if got_up.len() == up.len() && got_down.len() == down.len() {
                break;
            }
            h.advance(Duration::from_millis(1));
        }
        assert_eq!((got_up.len(), got_down.len()), (up.len(), down.len()));
        assert_eq!(fnv(&got_up), fnv(&up));
        assert_eq!(fnv(&got_down), fnv(&down));
        let c = h.nat.counters();
        assert_eq!(c.drop_board_queue_full + c.drop_out_buffer_small, 0);
        let info = h.nat.flows(h.now);
        assert_eq!(info[0].bytes_to_board, down.len() as u64);
    }
}

/// A core (`small_cfg`) with `n` established flows from board ports `first_port..`.
fn with_open_flows(n: u16, first_port: u16) -> (H, Board, Vec<(SocketHandle, FlowId)>) {
    let mut h = H::with(small_cfg());
    let mut board = Board::new(h.now, 1500);
    let flows = (0..n)
        .map(|i| open(&mut h, &mut board, first_port + i, 64 * 1024))
        .collect();
    (h, board, flows)
}

/// The board sends `up` (the driver takes it), the driver sends `down` towards the board.
fn round_trip(h: &mut H, board: &mut Board, s: SocketHandle, flow: FlowId, up: &[u8], down: &[u8]) {
    board.sock(s).send_slice(up).unwrap();
    board.exchange(h);
    assert_eq!(drain(h, flow), up);
    assert_eq!(h.nat.tcp_send(flow, down).unwrap(), down.len());
    board.exchange(h);
}

/// Established flows with nothing in flight ask for no timer, so 1000 idle flows cost no wakeups.
#[test]
fn idle_established_flows_need_no_timer() {
    let (mut h, mut board, flows) = with_open_flows(20, 42000);
    for &(s, flow) in &flows {
        round_trip(&mut h, &mut board, s, flow, b"hello", b"world");
    }
    h.advance(Duration::from_secs(1));
    board.exchange(&mut h);
    assert_eq!(h.nat.poll_timeout(h.now), None);
    // Hours of silence do not kill them (no idle timeout on established TCP).
    h.advance(Duration::from_secs(7200));
    board.exchange(&mut h);
    assert_eq!(h.nat.flow_count(), 20);
    let (s, flow) = flows[0];
    assert_eq!(h.nat.tcp_send(flow, b"still here").unwrap(), 10);
    board.exchange(&mut h);
    let mut buf = [0; 32];
    let n = board.sock(s).recv_slice(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"worldstill here");
}

/// The TCP buffer total that the budget checks is a running count: after every step of open /
/// close both ways / board RST / OS reset / eviction churn (with full and shrunk buffers) it
/// equals a recount of the sockets that exist.
#[test]
fn tcp_buffer_total_matches_a_recount_through_churn() {
    let mut cfg = small_cfg();
    cfg.max_flows = 4;
    cfg.tcp_rx_buffer = 1 << 20;
    cfg.tcp_tx_buffer = 1 << 20;
    // Two flows get full buffers, later ones 256 KiB each way.
    cfg.tcp_buffer_budget = 8 << 20;
    let mut h = H::with(cfg);
    let mut board = Board::new(h.now, 1500);
    let recount = |h: &H| -> usize {
        h.nat
            .sockets
            .iter()
            .map(|s| s.recv_capacity() + s.send_capacity())
            .sum()
    };
    for i in 0..40u16 {
        // Past evict_min_idle: a full table evicts its longest-idle flow for the new one.
        h.advance(Duration::from_secs(11));
        let s = board.connect(43000 + i, ep(SERVER, 80), 64 * 1024);
        let ev = board.exchange(&mut h);
        let Some(flow) = ev.iter().find_map(|e| match e {
            NatEvent::TcpConnect { flow, .. } => Some(*flow),
            _ => None,
        }) else {
            panic!("step {i}: no connect in {ev:?}")
        };
        h.os(OsEvent::TcpConnected { flow });
        board.exchange(&mut h);
        assert_eq!(board.sock(s).state(), State::Established, "step {i}");
        assert_eq!(h.nat.tcp_buffer_bytes(), recount(&h), "step {i}: open");
        match i % 4 {
            0 => {
                board.sock(s).close();
                board.exchange(&mut h);
                h.os(OsEvent::TcpEof { flow });
                board.exchange(&mut h);
            }
            1 => {
                board.sock(s).abort();
                board.exchange(&mut h);
            }
            2 => {
                h.os(OsEvent::TcpReset { flow });
                board.exchange(&mut h);
            }
            _ => {} // stays open until a later step evicts it
        }
        assert_eq!(h.nat.tcp_buffer_bytes(), recount(&h), "step {i}: churn");
    }
    let c = h.nat.counters();
    assert!(
        c.flows_evicted > 0 && c.tcp_buffers_shrunk > 0 && c.tcp_reset_from_board > 0,
        "{c:?}"
    );
    assert_eq!(c.drop_tcp_buffer_budget, 0, "{c:?}");
}

/// With 300 idle flows open, what one packet, one data call, one timer or one new connection
/// makes the core ask smoltcp about is a few sockets, not every open one (smoltcp walks every
/// socket of a set: each flow has a set of its own).
#[test]
fn idle_flows_are_not_visited_per_packet() {
    let (mut h, mut board, flows) = with_open_flows(300, 44000);
    h.advance(Duration::from_secs(1));
    board.exchange(&mut h);
    let visits = |h: &H| h.nat.sockets.visits;

    let before = visits(&h);
    let (s, flow) = flows[150];
    round_trip(&mut h, &mut board, s, flow, b"ping", b"pong");
    h.advance(Duration::from_secs(1));
    board.exchange(&mut h);
    let mut buf = [0; 8];
    assert_eq!(board.sock(s).recv_slice(&mut buf).unwrap(), 4);
    let one_flow = visits(&h) - before;
    assert!(
        one_flow < 30,
        "a round trip on one flow visited {one_flow} sockets"
    );

    let before = visits(&h);
    open(&mut h, &mut board, 45000, 64 * 1024);
    let new_flow = visits(&h) - before;
    assert!(
        new_flow < 30,
        "opening one more flow visited {new_flow} sockets"
    );
}

/// The board's request is acknowledged by our answer when the answer comes within
/// [`TCP_ACK_DELAY`](crate::tcp::TCP_ACK_DELAY) (one packet towards the board, not an ACK and
/// then the answer), and by an ACK of its own once that time passed without one.
#[test]
fn ack_rides_on_the_answer_or_follows_the_delay() {
    for dst in servers() {
        let mut h = H::with(small_cfg());
        let mut board = Board::new(h.now, 1500);
        let (s, flow) = open_to(&mut h, &mut board, 41003, 64 * 1024, dst);

        // A request answered at once: nothing goes to the board before the answer, which
        // carries the ACK.
        board.sock(s).send_slice(b"request").unwrap();
        let ev = board.exchange(&mut h);
        assert_eq!(ev, vec![NatEvent::TcpReadable { flow }]);
        assert_eq!(drain(&mut h, flow), b"request");
        assert!(h.recv().is_empty(), "a lone ACK left before the answer");
        assert_eq!(
            board.sock(s).send_queue(),
            7,
            "the request is not acknowledged yet"
        );
        assert_eq!(h.nat.tcp_send(flow, b"answer").unwrap(), 6);
        let answer = h.recv_one();
        board.deliver(answer);
        board.exchange(&mut h);
        assert_eq!(
            board.sock(s).send_queue(),
            0,
            "the answer acknowledged the request"
        );
        let mut buf = [0; 16];
        let n = board.sock(s).recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"answer");

        // A request nobody answers: acknowledged alone once the delay passed.
        board.sock(s).send_slice(b"more").unwrap();
        board.exchange(&mut h);
        assert_eq!(drain(&mut h, flow), b"more");
        assert!(h.recv().is_empty());
        assert_eq!(board.sock(s).send_queue(), 4);
        h.advance(crate::tcp::TCP_ACK_DELAY);
        board.exchange(&mut h);
        assert_eq!(
            board.sock(s).send_queue(),
            0,
            "acknowledged after the delay"
        );
    }
}
