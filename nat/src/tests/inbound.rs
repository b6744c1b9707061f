//! Flows the laptop opens towards the board (forwards, `connect`): the core dials a smoltcp
//! "board kernel" from the gateway; accept, refusal, silence, data and close both ways,
//! resets both ways, UDP peers, limits. The TCP cases run over both IP versions: the board
//! dialled at fd47::2 is reached from fd47::1 the way 10.47.0.2 is from 10.47.0.1.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::time::Duration;

use super::*;
use crate::{FlowId, InboundError, NatConfig, NatEvent, OsEvent, Protocol};

fn peer(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// The board's address of each version with `port`, and the gateway address it is dialled from.
fn versions(port: u16) -> [(SocketAddr, IpAddr); 2] {
    [
        (SocketAddr::new(BOARD.into(), port), GATEWAY.into()),
        (SocketAddr::new(BOARD6.into(), port), GATEWAY6.into()),
    ]
}

fn cfg() -> NatConfig {
    let mut cfg = NatConfig::default();
    cfg.tcp_rx_buffer = 64 * 1024;
    cfg.tcp_tx_buffer = 64 * 1024;
    cfg.mtu = 1500;
    cfg
}

/// The laptop dials board port 22, the board accepts: returns (board socket, flow).
fn accepted(h: &mut H, board: &mut Board) -> (SocketHandle, FlowId) {
    accepted_at(h, board, SocketAddr::new(BOARD.into(), 22))
}

/// The laptop dials `to` (a board address and port), the board accepts.
fn accepted_at(h: &mut H, board: &mut Board, to: SocketAddr) -> (SocketHandle, FlowId) {
    let s = board.listen(to.port(), 64 * 1024);
    let flow = h
        .nat
        .open_inbound_to(h.now, Protocol::Tcp, to, peer(50000))
        .unwrap();
    // Nothing may be read from the laptop before the board accepted.
    assert_eq!(h.nat.tcp_send(flow, b"early").unwrap(), 0);
    let ev = board.exchange(h);
    assert_eq!(
        ev,
        vec![
            NatEvent::TcpEstablished { flow },
            NatEvent::TcpWritable { flow }
        ]
    );
    assert_eq!(board.sock(s).state(), State::Established);
    (s, flow)
}

#[test]
fn board_accepts_data_both_ways_and_half_close_keeps_every_byte() {
    for (to, gateway) in versions(22) {
        accepted_half_close(to, gateway);
    }
}

fn accepted_half_close(to: SocketAddr, gateway: IpAddr) {
    let mut h = H::with(cfg());
    let mut board = Board::new(h.now, 1500);
    let (s, flow) = accepted_at(&mut h, &mut board, to);
    let remote = board.sock(s).remote_endpoint().unwrap();
    assert_eq!(remote.addr, gateway.into(), "{to}");
    assert!(remote.port >= 49152, "gateway port {}", remote.port);
    let info = &h.nat.flows(h.now)[0];
    assert!(info.inbound);
    assert_eq!(info.src, to);
    assert_eq!(info.os_dst, peer(50000));

    // Laptop → board, then the laptop half-closes: the board reads everything, then EOF.
    assert_eq!(h.nat.tcp_send(flow, b"SSH-2.0-client\r\n").unwrap(), 16);
    h.os(OsEvent::TcpEof { flow });
    board.exchange(&mut h);
    let mut buf = [0u8; 64];
    let n = board.sock(s).recv_slice(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"SSH-2.0-client\r\n");
    assert!(!board.sock(s).may_recv(), "the board saw the FIN");

    // The board keeps talking after our FIN, then closes: the driver gets data, shutdown, close.
    board.sock(s).send_slice(b"SSH-2.0-board\r\n").unwrap();
    board.sock(s).close();
    let ev = board.exchange(&mut h);
    assert_eq!(ev, vec![NatEvent::TcpReadable { flow }]);
    let mut got = [0u8; 64];
    let n = h.nat.tcp_recv(flow, &mut got).unwrap();
    assert_eq!(&got[..n], b"SSH-2.0-board\r\n");
    let ev = h.events();
    assert_eq!(
        ev,
        vec![
            NatEvent::TcpShutdown { flow },
            NatEvent::TcpClose { flow, reset: false }
        ]
    );
    let c = h.nat.counters();
    assert_eq!((c.tcp_inbound, c.tcp_inbound_established), (1, 1));
    assert_eq!(h.nat.flow_count(), 0);
}

#[test]
fn closed_board_port_resets_the_laptop_connection_at_once() {
    for (to, _) in versions(2399) {
        let mut h = H::with(cfg());
        let mut board = Board::new(h.now, 1500);
        let flow = h
            .nat
            .open_inbound_to(h.now, Protocol::Tcp, to, peer(50001))
            .unwrap();
        // The board's stack answers the SYN with a RST; no time passes.
        let ev = board.exchange(&mut h);
        assert_eq!(ev, vec![NatEvent::TcpClose { flow, reset: true }], "{to}");
        assert_eq!(h.nat.counters().tcp_inbound_refused, 1);
        assert_eq!(h.nat.flow_count(), 0);
        assert_eq!(
            h.nat.tcp_send(flow, b"x"),
            Err(crate::FlowError::UnknownFlow(flow))
        );
    }
}

#[test]
fn only_the_boards_own_addresses_can_be_dialled() {
    let mut h = H::with(cfg());
    for ip in [
        IpAddr::V4(Ipv4Addr::new(10, 47, 0, 9)),
        IpAddr::V4(GATEWAY),
        IpAddr::V6(GATEWAY6),
        IpAddr::V6(Ipv6Addr::new(0xfd47, 0, 0, 0, 0, 0, 0, 9)),
        IpAddr::V6(Ipv4Addr::new(10, 47, 0, 2).to_ipv6_mapped()),
    ] {
        assert_eq!(
            h.nat
                .open_inbound_to(h.now, Protocol::Tcp, SocketAddr::new(ip, 22), peer(50004)),
            Err(InboundError::NotTheBoard(ip))
        );
    }
    assert_eq!(
        h.nat.open_inbound_to(
            h.now,
            Protocol::Tcp,
            SocketAddr::new(BOARD6.into(), 0),
            peer(50004)
        ),
        Err(InboundError::PortZero)
    );
    assert_eq!(h.nat.flow_count(), 0);
    assert!(h.recv().is_empty(), "nothing sent to the board");
}

#[test]
fn silent_board_times_out_with_a_reset() {
    for (to, gateway) in versions(22) {
        let mut c = cfg();
        c.tcp_connect_timeout = Duration::from_secs(5);
        let mut h = H::with(c);
        let flow = h
            .nat
            .open_inbound_to(h.now, Protocol::Tcp, to, peer(50002))
            .unwrap();
        let syns = h.recv();
        assert_eq!(syns.len(), 1);
        let (src, dst, syn_only) = tcp_ends(&syns[0]);
        assert!(syn_only, "{to}: not a bare SYN");
        assert_eq!((src.ip(), dst), (gateway, to));
        // The board never answers: retransmissions, then the flow ends with a reset.
        let mut closed = false;
        for _ in 0..100 {
            h.advance(Duration::from_millis(200));
            h.recv();
            if h.events()
                .contains(&NatEvent::TcpClose { flow, reset: true })
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "no close after the connect timeout ({to})");
        assert_eq!(h.nat.counters().tcp_inbound_refused, 1);
    }
}

/// Source, destination and "bare SYN" of a TCP segment to the board, IPv4 or IPv6.
fn tcp_ends(pkt: &[u8]) -> (SocketAddr, SocketAddr, bool) {
    use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};
    let (src, dst, payload): (IpAddr, IpAddr, &[u8]) = if pkt[0] >> 4 == 6 {
        let p = Ipv6Packet::new_checked(pkt).expect("IPv6");
        assert_eq!(p.next_header(), IpProtocol::Tcp);
        (p.src_addr().into(), p.dst_addr().into(), &pkt[40..])
    } else {
        let p = Ipv4Packet::new_checked(pkt).expect("IPv4");
        assert_eq!(p.next_header(), IpProtocol::Tcp);
        let hl = usize::from(p.header_len());
        (p.src_addr().into(), p.dst_addr().into(), &pkt[hl..])
    };
    let t = TcpPacket::new_checked(payload).expect("TCP");
    assert!(t.verify_checksum(&src.into(), &dst.into()), "TCP checksum");
    (
        SocketAddr::new(src, t.src_port()),
        SocketAddr::new(dst, t.dst_port()),
        t.syn() && !t.ack(),
    )
}

#[test]
fn resets_propagate_both_ways() {
    for (to, _) in versions(22) {
        let mut h = H::with(cfg());
        let mut board = Board::new(h.now, 1500);
        let (s, flow) = accepted_at(&mut h, &mut board, to);
        board.sock(s).abort();
        let ev = board.exchange(&mut h);
        assert_eq!(ev, vec![NatEvent::TcpClose { flow, reset: true }], "{to}");

        let (s, flow) = accepted_at(&mut h, &mut board, to);
        h.os(OsEvent::TcpReset { flow });
        board.exchange(&mut h);
        assert_eq!(
            board.sock(s).state(),
            State::Closed,
            "the board saw the RST ({to})"
        );
        assert_eq!(h.nat.flow_count(), 0);
        assert_eq!(h.nat.counters().tcp_reset_from_board, 1);
    }
}

#[test]
fn board_window_backpressures_the_laptop() {
    let mut h = H::with(cfg());
    let mut board = Board::new(h.now, 1500);
    let (s, flow) = accepted(&mut h, &mut board);
    // The board application does not read: our buffer and its window fill, then tcp_send stops.
    let data = vec![7u8; 512 * 1024];
    let mut sent = 0;
    for _ in 0..20 {
        sent += h.nat.tcp_send(flow, &data[sent..]).unwrap();
        board.exchange(&mut h);
    }
    assert!(
        sent <= 2 * 64 * 1024,
        "{sent} bytes taken with the board not reading"
    );
    assert_eq!(h.nat.tcp_send(flow, &data[sent..]).unwrap(), 0);
    // Reading on the board opens the window again: TcpWritable.
    let mut buf = vec![0; 256 * 1024];
    let mut writable = false;
    for _ in 0..20 {
        let _ = board.sock(s).recv_slice(&mut buf);
        if board
            .exchange(&mut h)
            .contains(&NatEvent::TcpWritable { flow })
        {
            writable = true;
            break;
        }
    }
    assert!(writable);
}

#[test]
fn udp_peer_gets_its_own_flow_and_replies() {
    let mut h = H::new();
    let a = h
        .nat
        .open_inbound(h.now, Protocol::Udp, 5353, peer(40000))
        .unwrap();
    let b = h
        .nat
        .open_inbound(h.now, Protocol::Udp, 5353, peer(40001))
        .unwrap();
    h.os(OsEvent::UdpReceived {
        flow: a,
        payload: b"from a",
    });
    h.os(OsEvent::UdpReceived {
        flow: b,
        payload: b"from b",
    });
    let pkts = h.recv();
    assert_eq!(pkts.len(), 2);
    let (src_a, dst_a, pa) = udp_of(&pkts[0]);
    let (src_b, dst_b, pb) = udp_of(&pkts[1]);
    assert_eq!(
        (pa.as_slice(), pb.as_slice()),
        (&b"from a"[..], &b"from b"[..])
    );
    assert_eq!((dst_a, dst_b), (ep(BOARD, 5353), ep(BOARD, 5353)));
    assert_eq!(*src_a.ip(), GATEWAY);
    assert_ne!(src_a, src_b, "one gateway port per peer");
    // The board answers each peer's gateway port: the reply goes to that peer's flow.
    h.send(&udp(ep(BOARD, 5353), src_b, b"to b"));
    assert_eq!(
        h.events(),
        vec![NatEvent::UdpSend {
            flow: b,
            payload: b"to b".to_vec()
        }]
    );
    // Idle peers age out like any UDP flow.
    h.advance(Duration::from_secs(200));
    let ev = h.events();
    assert!(ev.contains(&NatEvent::UdpClose { flow: a }), "{ev:?}");
    assert!(ev.contains(&NatEvent::UdpClose { flow: b }), "{ev:?}");
    assert_eq!(h.nat.counters().udp_inbound, 2);
}

#[test]
fn inbound_flows_share_the_flow_limit() {
    let mut c = cfg();
    c.max_flows = 2;
    let mut h = H::with(c);
    let mut board = Board::new(h.now, 1500);
    let _a = accepted(&mut h, &mut board);
    let _b = accepted(&mut h, &mut board);
    // Both busy (not idle long enough to evict): the third is refused and counted.
    assert_eq!(
        h.nat.open_inbound(h.now, Protocol::Tcp, 22, peer(50009)),
        Err(InboundError::NoRoom)
    );
    assert_eq!(h.nat.counters().drop_inbound_no_room, 1);
    assert_eq!(
        h.nat.open_inbound(h.now, Protocol::Tcp, 0, peer(50009)),
        Err(InboundError::PortZero)
    );
    // Once idle, the oldest is evicted with a reset both ways to make room.
    h.advance(Duration::from_secs(11));
    board.exchange(&mut h);
    assert!(
        h.nat
            .open_inbound(h.now, Protocol::Tcp, 22, peer(50010))
            .is_ok()
    );
    assert_eq!(h.nat.counters().flows_evicted, 1);
}

#[test]
fn board_syn_to_a_dialling_gateway_port_is_dropped_not_a_simultaneous_open() {
    // Found by fuzzing: smoltcp's simultaneous open (SYN-SENT receiving a bare SYN) leaves the
    // socket in a state whose window arithmetic panics. A board never dials the gateway's
    // ephemeral port itself; the core drops such a SYN and keeps waiting for the SYN-ACK.
    let mut h = H::with(cfg());
    let flow = h
        .nat
        .open_inbound(h.now, Protocol::Tcp, 22, peer(50003))
        .unwrap();
    let ours = seg_of(&h.recv()[0]);
    h.send(&syn(ep(BOARD, 22), ours.src, 10237));
    let _ = h.nat.poll_timeout(h.now);
    h.advance(Duration::from_millis(100));
    assert_eq!(h.nat.counters().drop_malformed, 1);
    assert!(h.events().is_empty());
    assert_eq!(
        h.nat.flow_count(),
        1,
        "the flow still waits for the board's SYN-ACK {flow}"
    );
}
