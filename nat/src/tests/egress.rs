//! Packets for the board written straight into the driver's sink (`poll_ip_packets`): whole TCP
//! conversations through small bundles, the queue drained first and a segment that did not fit
//! leading the next bundle, a full sink keeping the data in the socket, no stale byte of the sink
//! showing through, and the tx counters.

use core::net::SocketAddr;

use smoltcp::iface::SocketHandle;

use super::stream::{drain, feed_down, open, pattern, small_cfg};
use super::*;
use crate::testing::{seg_of, udp, udp_of};
use crate::{FlowId, NatEvent, OsEvent};

/// Sends `down` from the OS to the board through the core as the link allows; returns what the
/// board read.
fn download(h: &mut H, board: &mut Board, s: SocketHandle, flow: FlowId, down: &[u8]) -> Vec<u8> {
    let sent = h.nat.tcp_send(flow, down).unwrap();
    feed_down(h, board, s, flow, down, sent)
}

/// The packets the board got, counted as the core counts them.
fn assert_counted(h: &H) {
    let pkts: Vec<&Vec<u8>> = h.bundles.iter().flatten().collect();
    let c = h.nat.counters();
    assert_eq!(c.tx_packets, pkts.len() as u64);
    assert_eq!(c.tx_bytes, pkts.iter().map(|p| p.len() as u64).sum::<u64>());
    let v6 = pkts.iter().filter(|p| p[0] >> 4 == 6).count() as u64;
    assert_eq!(c.tx_ipv6_packets, v6);
}

#[test]
fn a_download_through_small_bundles_arrives_whole_and_in_order() {
    for dst in [
        SocketAddr::from(ep(SERVER, 80)),
        SocketAddr::from(ep6(SERVER6, 80)),
    ] {
        let mut h = H::with(small_cfg());
        // Room for two full segments and a bit: the third waits in its socket.
        h.sink = Some((3500, 0xA5));
        let mut board = Board::new(h.now, 1500);
        let s = board.connect(41000, dst, 256 * 1024);
        let ev = board.exchange(&mut h);
        let [NatEvent::TcpConnect { flow, .. }] = ev[..] else {
            panic!("{ev:?}")
        };
        h.os(OsEvent::TcpConnected { flow });
        board.exchange(&mut h);
        let down = pattern(300 * 1024, 7);
        assert_eq!(download(&mut h, &mut board, s, flow, &down), down);
        assert!(
            h.bundles.iter().any(|b| b.len() == 2),
            "full bundles carry two segments"
        );
        assert!(h.bundles.iter().flatten().all(|p| p.len() <= 1500));
        assert_eq!(h.nat.queue.len(), 0);
        assert_counted(&h);
    }
}

#[test]
fn queued_packets_go_first_and_a_segment_too_big_for_the_rest_leads_the_next_bundle() {
    let mut h = H::with(small_cfg());
    let mut board = Board::new(h.now, 1500);
    let (s, flow) = open(&mut h, &mut board, 41001, 256 * 1024);
    let (bep, srv) = (ep(BOARD, 5353), ep(SERVER, 9999));
    h.send(&udp(bep, srv, b"q"));
    let udp_flow = h.events()[0].flow();
    h.recv();
    let before = h.nat.counters().clone();

    let data = pattern(4000, 3);
    assert_eq!(h.nat.tcp_send(flow, &data).unwrap(), data.len());

    // A bundle with less room than a full segment (the board took smaller bundles): the first
    // segment is let through, does not fit and waits queued; nothing more is made.
    let mut small = TestSink::new(1000, 0xEE);
    let waiting = h
        .nat
        .poll_ip_packets(h.now, &mut small)
        .expect("the segment waits");
    assert!(small.packets.is_empty());
    assert!(waiting > 1000, "{waiting}");
    assert_eq!(h.nat.queue.len(), 1);
    assert!(h.nat.has_ip_packets());

    // A UDP datagram arrives meanwhile: queued behind the segment.
    h.os(OsEvent::UdpReceived {
        flow: udp_flow,
        payload: b"first",
    });

    // The next bundle starts with the queued packets in order, then the rest of the data comes
    // straight from smoltcp.
    let mut next = TestSink::new(16000, 0xEE);
    assert_eq!(h.nat.poll_ip_packets(h.now, &mut next), None);
    assert_eq!(next.packets[0].len(), waiting);
    assert_eq!(udp_of(&next.packets[1]), (srv, bep, b"first".to_vec()));
    let tcp: Vec<&Vec<u8>> = next.packets.iter().filter(|p| p[9] == 6).collect();
    assert!(tcp.len() > 2, "direct segments follow");
    let got: Vec<u8> = tcp.iter().flat_map(|p| seg_of(p).payload).collect();
    assert_eq!(got, data, "in order, nothing lost or repeated");
    assert_eq!(h.nat.queue.len(), 0);

    let c = h.nat.counters();
    let all: Vec<&Vec<u8>> = next.packets.iter().collect();
    assert_eq!(c.tx_packets - before.tx_packets, all.len() as u64);
    assert_eq!(
        c.tx_bytes - before.tx_bytes,
        all.iter().map(|p| p.len() as u64).sum::<u64>()
    );
    for p in tcp {
        board.deliver(p.clone());
    }
    board.exchange(&mut h);
    let mut buf = vec![0; 8000];
    let n = board.sock(s).recv_slice(&mut buf).unwrap();
    assert_eq!(&buf[..n], &data[..]);
}

#[test]
fn a_sink_without_room_leaves_the_data_in_the_socket() {
    let mut h = H::with(small_cfg());
    let mut board = Board::new(h.now, 1500);
    let (s, flow) = open(&mut h, &mut board, 41002, 256 * 1024);
    let before = h.nat.counters().clone();
    let data = pattern(64 * 1024, 4);
    assert_eq!(h.nat.tcp_send(flow, &data).unwrap(), data.len());
    for _ in 0..3 {
        let mut full = TestSink::new(0, 0);
        assert_eq!(h.nat.poll_ip_packets(h.now, &mut full), None);
        assert!(full.packets.is_empty());
        assert_eq!(h.nat.queue.len(), 0, "nothing is queued instead");
        assert!(h.nat.has_ip_packets(), "the socket still has its data");
        assert!(
            h.nat.poll_timeout(h.now).is_none_or(|t| t > h.now),
            "waiting for the link asks for no timer"
        );
    }
    assert_eq!(h.nat.tcp_send(flow, &data).unwrap(), 0, "its ring is full");
    assert_eq!(h.nat.counters(), &before);
    // Once the link takes bundles again, everything arrives.
    h.sink = Some((16000, 0));
    board.exchange(&mut h);
    let mut buf = vec![0; 128 * 1024];
    let n = board.sock(s).recv_slice(&mut buf).unwrap();
    assert_eq!(&buf[..n], &data[..]);
}

/// One scripted conversation (IPv4 and IPv6 handshakes with options, data, FIN both ways, an OS
/// reset, a UDP reply) through bundles whose unused bytes are `poison`; returns every packet the
/// board got.
fn conversation(poison: u8) -> Vec<Vec<u8>> {
    let mut h = H::with(small_cfg());
    h.sink = Some((4000, poison));
    let mut board = Board::new(h.now, 1500);
    let mut flows = Vec::new();
    for (i, dst) in [
        SocketAddr::from(ep(SERVER, 80)),
        SocketAddr::from(ep6(SERVER6, 80)),
    ]
    .into_iter()
    .enumerate()
    {
        let port = 42000 + i as u16;
        let s = board.connect(port, dst, 64 * 1024);
        let ev = board.exchange(&mut h);
        let [NatEvent::TcpConnect { flow, .. }] = ev[..] else {
            panic!("{ev:?}")
        };
        h.os(OsEvent::TcpConnected { flow });
        board.exchange(&mut h);
        flows.push((s, flow));
    }
    for (k, &(s, flow)) in flows.iter().enumerate() {
        let down = pattern(5000 + 333 * k, 9 + k as u32);
        assert_eq!(download(&mut h, &mut board, s, flow, &down), down);
        board.sock(s).send_slice(b"bye").unwrap();
        board.sock(s).close();
        board.exchange(&mut h);
        assert_eq!(drain(&mut h, flow), b"bye");
    }
    h.os(OsEvent::TcpEof { flow: flows[0].1 });
    board.exchange(&mut h);
    h.os(OsEvent::TcpReset { flow: flows[1].1 });
    board.exchange(&mut h);
    let (bep, srv) = (ep(BOARD, 5353), ep(SERVER, 9999));
    h.send(&udp(bep, srv, b"q"));
    let udp_flow = h.events()[0].flow();
    h.os(OsEvent::UdpReceived {
        flow: udp_flow,
        payload: b"answer",
    });
    h.recv();
    assert_counted(&h);
    h.bundles.into_iter().flatten().collect()
}

#[test]
fn no_stale_byte_of_the_sink_reaches_the_board() {
    // The same conversation twice, into sinks full of 0x00 and of 0xFF: any byte smoltcp or the
    // core left unwritten would differ.
    let zeros = conversation(0x00);
    let ones = conversation(0xFF);
    assert_eq!(zeros.len(), ones.len());
    for (i, (a, b)) in zeros.iter().zip(&ones).enumerate() {
        assert_eq!(a, b, "packet {i}");
    }
    let v6 = zeros.iter().filter(|p| p[0] >> 4 == 6).count();
    assert!(v6 > 5, "IPv6 segments were checked ({v6})");
    let (syn_acks, rsts) = zeros
        .iter()
        .filter(|p| p[0] >> 4 == 4 && p[9] == 6)
        .map(|p| seg_of(p))
        .fold((0, 0), |(a, r), s| {
            (a + usize::from(s.syn), r + usize::from(s.rst))
        });
    assert_eq!(
        syn_acks, 1,
        "the IPv4 SYN-ACK with its options (padded) was checked"
    );
    assert_eq!(rsts, 0);
    let v6_rst = zeros
        .iter()
        .filter(|p| p[0] >> 4 == 6 && p[6] == 6)
        .any(|p| p[40 + 13] & 0x04 != 0);
    assert!(v6_rst, "the IPv6 RST was checked");
}

/// A board whose MSS is below the link's (a router clamping it to 1460 on a 65520 link): its
/// segments share a bundle as they do at a 1500 MTU, instead of each waiting for a bundle of
/// its own because the room check assumed a link-sized segment.
#[test]
fn a_board_with_a_clamped_mss_gets_full_bundles() {
    let mut cfg = small_cfg();
    cfg.mtu = 65520;
    cfg.tcp_tx_buffer = 256 * 1024;
    let mut h = H::with(cfg);
    h.sink = Some((16 * 1024, 0x5A));
    let mut board = Board::new(h.now, 1500);
    let (s, flow) = open(&mut h, &mut board, 41003, 256 * 1024);
    let down = pattern(200 * 1024, 9);
    assert_eq!(download(&mut h, &mut board, s, flow, &down), down);
    assert!(h.bundles.iter().flatten().all(|p| p.len() <= 1500));
    let most = h.bundles.iter().map(Vec::len).max().unwrap_or(0);
    assert!(
        most >= 10,
        "a 16 KiB bundle holds 11 segments of 1460 bytes; the fullest held {most}"
    );
    assert_counted(&h);
}
