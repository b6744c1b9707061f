//! A board that keeps opening connections but never reads what the core queues for it: every
//! flow the core ends (eviction, timeout, reset) must free its socket whether or not its RST
//! could be queued, and all TCP buffers together stay within `tcp_buffer_budget`, however long
//! this goes on.

use smoltcp::time::Duration;

use super::*;
use crate::{Counters, NatConfig, NatEvent, OsEvent};

/// 10 000 cycles of SYN → OS connected → idle past `evict_min_idle`, with nothing ever taken from
/// the board queue. Asserts after every cycle that at most `max_flows` flows plus one finished
/// socket per board queue slot exist and that their buffers stay within the budget; returns the
/// peak socket count and the counters.
fn never_reading_board(cfg: NatConfig) -> (usize, Counters) {
    let (max_flows, budget) = (cfg.max_flows, cfg.tcp_buffer_budget);
    let bound = max_flows + cfg.max_queued_board_packets;
    let mut h = H::with(cfg);
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
        let (sockets, bytes) = (h.nat.sockets.len(), h.nat.tcp_buffer_bytes());
        peak = peak.max(sockets);
        assert!(
            sockets <= bound && bytes <= budget,
            "cycle {i}: {sockets} TCP sockets holding {bytes} buffer bytes (bound {bound} sockets, {budget} bytes)"
        );
    }
    assert!(h.nat.flow_count() <= max_flows);
    (peak, h.nat.counters().clone())
}

#[test]
fn board_that_never_reads_keeps_sockets_bounded() {
    let mut cfg = NatConfig::default();
    cfg.max_flows = 8;
    // The default budget holds 8 flows and 64 finished sockets: the zombie cap bounds them.
    let (peak, c) = never_reading_board(cfg.clone());
    assert_eq!(peak, 8 + 64, "{c:?}");
    assert!(
        c.flows_evicted > 9_000 && c.tcp_freed_unsent > 9_000,
        "{c:?}"
    );
    assert_eq!(c.drop_tcp_buffer_budget, 0, "{c:?}");
    // A 16 MiB budget: four full flows fit its first half, after that new flows get 256 KiB
    // each way, 32 sockets fill it; finished sockets give their buffers up to new flows, so none
    // is refused and the socket count stays at what the bytes allow, not the zombie cap.
    cfg.tcp_buffer_budget = 16 << 20;
    let (peak, c) = never_reading_board(cfg);
    assert_eq!(peak, 32, "{c:?}");
    assert!(
        c.flows_evicted > 9_000 && c.tcp_freed_unsent > 9_000,
        "{c:?}"
    );
    assert_eq!(c.drop_tcp_buffer_budget, 0, "{c:?}");
}

#[test]
fn near_the_buffer_budget_flows_shrink_then_are_refused_with_a_rst() {
    let mut cfg = NatConfig::default();
    cfg.tcp_rx_buffer = 1 << 20;
    cfg.tcp_tx_buffer = 1 << 20;
    // Full buffers while all stay within half the budget (two flows), then 256 KiB each way
    // until the whole budget is held (eight more), then a RST.
    cfg.tcp_buffer_budget = 8 << 20;
    let mut h = H::with(cfg);
    for port in 1..=11u16 {
        let (b, s) = (ep(BOARD, port), ep(SERVER, 80));
        h.send(&syn(b, s, 1000));
        let [NatEvent::TcpConnect { flow, .. }] = h.events()[..] else {
            panic!("no connect")
        };
        h.os(OsEvent::TcpConnected { flow });
        let seg = seg_of(&h.recv_one());
        if port <= 10 {
            assert!(seg.syn && !seg.rst, "SYN-ACK within the budget");
            assert!(h.events().is_empty());
        } else {
            assert!(seg.rst && seg.ack == Some(1001), "RST over the budget");
            assert_eq!(
                h.events(),
                vec![NatEvent::TcpClose { flow, reset: true }],
                "the driver closes the OS socket"
            );
        }
    }
    assert_eq!(h.nat.tcp_buffer_bytes(), 8 << 20);
    assert_eq!(h.nat.counters().tcp_buffers_shrunk, 8);
    assert_eq!(h.nat.counters().drop_tcp_buffer_budget, 1);
    assert_eq!(h.nat.flow_count(), 10);
}

#[test]
fn the_default_budget_opens_max_flows_connections() {
    let cfg = NatConfig::default();
    let max = cfg.max_flows;
    let mut h = H::with(cfg);
    for i in 0..max {
        let port = 1024 + u16::try_from(i).expect("port");
        h.send(&syn(ep(BOARD, port), ep(SERVER, 80), 1000));
        let [NatEvent::TcpConnect { flow, .. }] = h.events()[..] else {
            panic!("no connect for flow {i}")
        };
        h.os(OsEvent::TcpConnected { flow });
        let seg = seg_of(&h.recv_one());
        assert!(seg.syn && !seg.rst, "flow {i}: SYN-ACK");
    }
    assert_eq!(h.nat.flow_count(), max);
    assert_eq!(h.nat.counters().drop_tcp_buffer_budget, 0);
}

/// Opens one flow on `h` from board port `port`; true when the board got a SYN-ACK (false: a
/// RST, the budget is used up).
fn open_flow(h: &mut H, port: u16) -> bool {
    open_flow_id(h, port).1
}

/// [`open_flow`], with the flow's id.
fn open_flow_id(h: &mut H, port: u16) -> (crate::FlowId, bool) {
    h.send(&syn(ep(BOARD, port), ep(SERVER, 80), 1000));
    let [NatEvent::TcpConnect { flow, .. }] = h.events()[..] else {
        panic!("no connect for port {port}")
    };
    h.os(OsEvent::TcpConnected { flow });
    let seg = seg_of(&h.recv_one());
    h.events();
    (flow, seg.syn && !seg.rst)
}

#[test]
fn boards_sharing_a_budget_stay_within_it_together() {
    // Each board's own budget holds ten flows (two full, eight small); together they share one
    // of the same size, so two boards cannot hold twice that.
    let shared = std::sync::Arc::new(crate::SharedBudget::new(8 << 20));
    let mut cfg = NatConfig::default();
    cfg.tcp_rx_buffer = 1 << 20;
    cfg.tcp_tx_buffer = 1 << 20;
    cfg.tcp_buffer_budget = 8 << 20;
    cfg.shared_tcp_budget = Some(std::sync::Arc::clone(&shared));
    let mut a = H::with(cfg.clone());
    let mut b = H::with(cfg);
    assert!((1..=6u16).all(|p| open_flow(&mut a, p)), "board A: 6 flows");
    assert!((1..=4u16).all(|p| open_flow(&mut b, p)), "board B: 4 flows");
    assert_eq!(shared.used(), 8 << 20);
    assert_eq!(
        shared.used(),
        a.nat.tcp_buffer_bytes() + b.nat.tcp_buffer_bytes()
    );
    assert!(!open_flow(&mut b, 5), "the shared budget is used up");
    assert_eq!(b.nat.counters().drop_tcp_buffer_budget, 1);
    // A board that goes away gives its share back.
    drop(a);
    assert_eq!(shared.used(), b.nat.tcp_buffer_bytes());
    assert!(open_flow(&mut b, 6), "room again");
}

/// 2000 flows open at once, then all reset by the OS side: the flow table and the socket pool
/// give back the memory the burst made them grow to (they used to keep it for the daemon's life).
#[test]
fn a_burst_of_flows_gives_its_table_memory_back_when_it_ends() {
    let mut h = H::new();
    let empty = h.nat.flows.footprint() + h.nat.sockets.footprint();
    let mut flows = Vec::new();
    for port in 1..=2000u16 {
        let (flow, answered) = open_flow_id(&mut h, port);
        assert!(answered, "port {port}: SYN-ACK");
        flows.push(flow);
    }
    let full = h.nat.flows.footprint() + h.nat.sockets.footprint();
    for flow in flows {
        h.os(OsEvent::TcpReset { flow });
        h.recv();
        h.events();
    }
    h.advance(Duration::from_secs(5));
    h.recv();
    assert_eq!(h.nat.flow_count(), 0);
    let after = h.nat.flows.footprint() + h.nat.sockets.footprint();
    assert!(full > 300_000, "2000 flows: {full} bytes");
    assert!(
        after < empty + 32_768,
        "{after} bytes kept after the burst (empty {empty}, 2000 flows {full})"
    );
    // Slots and ids are reused correctly after the shrink (stale free ids skipped): three more
    // waves, each closing every other flow of the last, all answered.
    let mut open = Vec::new();
    for wave in 0..3u16 {
        for i in 0..300u16 {
            let port = 3000 + wave * 300 + i;
            let (flow, answered) = open_flow_id(&mut h, port);
            assert!(answered, "port {port}: SYN-ACK");
            open.push(flow);
        }
        let (keep, close): (Vec<_>, Vec<_>) =
            open.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        for (_, &flow) in close {
            h.os(OsEvent::TcpReset { flow });
            h.recv();
            h.events();
        }
        open = keep.into_iter().map(|(_, &f)| f).collect();
        assert_eq!(h.nat.flow_count(), open.len());
    }
}
