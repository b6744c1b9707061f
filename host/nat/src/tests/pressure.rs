//! A board that keeps opening connections but never reads what the core queues for it: every
//! flow the core ends (eviction, timeout, reset) must free its socket whether or not its RST
//! could be queued, so sockets and their buffers stay bounded however long this goes on.

use smoltcp::socket::Socket;
use smoltcp::time::Duration;

use super::*;
use crate::{NatConfig, NatEvent, OsEvent};

/// Live smoltcp TCP sockets and the bytes of their receive and transmit buffers.
fn tcp_sockets(h: &H) -> (usize, usize) {
    h.nat
        .sockets
        .iter()
        .filter_map(|(_, s)| match s {
            Socket::Tcp(t) => Some(t.recv_capacity() + t.send_capacity()),
            #[allow(unreachable_patterns, reason = "other socket kinds depend on features")]
            _ => None,
        })
        .fold((0, 0), |(n, b), bytes| (n + 1, b + bytes))
}

#[test]
fn board_that_never_reads_keeps_sockets_bounded() {
    let mut cfg = NatConfig::default();
    cfg.max_flows = 8;
    let (max_flows, queue, per_flow) = (
        cfg.max_flows,
        cfg.max_queued_board_packets,
        cfg.tcp_rx_buffer + cfg.tcp_tx_buffer,
    );
    let mut h = H::with(cfg);
    // Flows in the table, plus at most one finished socket per board queue slot waiting to
    // send its RST.
    let bound = max_flows + queue;
    let mut peak = 0;
    for i in 0..10_000u32 {
        let port = u16::try_from(1024 + i).expect("port");
        h.send(&syn(ep(BOARD, port), ep(SERVER, 80), i));
        for ev in h.events() {
            if let NatEvent::TcpConnect { flow, .. } = ev {
                h.os(OsEvent::TcpConnected { flow });
            }
        }
        // The board never reads: nothing calls poll_ip_packet. The flow sits idle until the
        // next SYN may evict it.
        h.advance(Duration::from_secs(11));
        h.events();
        let (sockets, bytes) = tcp_sockets(&h);
        peak = peak.max(sockets);
        assert!(
            sockets <= bound && bytes <= bound * per_flow,
            "cycle {i}: {sockets} TCP sockets holding {bytes} buffer bytes (bound {bound} sockets)"
        );
    }
    assert!(h.nat.flow_count() <= max_flows);
    assert!(h.nat.counters().flows_evicted > 0, "{peak}");
}
