//! Fuzz target: the NAT core (qbkit-nat) driven by an arbitrary script of board packets (raw bytes,
//! or well-formed TCP/UDP/ICMP packets with arbitrary fields so the fuzzer reaches flow state),
//! driver events for the flows it has seen, flows the laptop opens towards the board (forwards,
//! `connect`), TCP data calls and clock jumps. Packets go over IPv4 or IPv6 (each well-formed op
//! picks), to destinations of every policy class of both; IPv6 ones may carry extension headers
//! (skippable chains, refused ones, a fragment header behind them); inbound flows dial either of
//! the board's addresses. Nothing may panic, and every packet the core sends to the board must be
//! a valid IPv4 or IPv6 packet addressed to the board.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use qbkit_nat::{Duration, FlowId, Instant, Nat, NatConfig, NatEvent, Protocol};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv4Packet, Ipv6Packet,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

const BOARD: Ipv4Addr = Ipv4Addr::new(10, 47, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 47, 0, 1);
const BOARD6: Ipv6Addr = Ipv6Addr::new(0xfd47, 0, 0, 0, 0, 0, 0, 2);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd47, 0, 0, 0, 0, 0, 0, 1);

#[derive(Arbitrary, Debug)]
enum Op {
    /// Arbitrary bytes as one packet.
    Raw(Vec<u8>),
    /// A valid TCP segment from the board (flags: bit 0 SYN, 1 FIN, 2 RST, 3 has ACK).
    Tcp {
        /// Over IPv6 instead of IPv4.
        v6: bool,
        /// IPv6 extension headers before the upper layer (`ext_chain`).
        exts: u8,
        sport: u8,
        dst: u8,
        dport: u8,
        flags: u8,
        seq: u32,
        ack: u32,
        payload: Vec<u8>,
    },
    /// A valid UDP datagram from the board.
    Udp {
        /// Over IPv6 instead of IPv4.
        v6: bool,
        /// IPv6 extension headers before the upper layer (`ext_chain`).
        exts: u8,
        sport: u8,
        dst: u8,
        dport: u8,
        payload: Vec<u8>,
    },
    /// A valid echo request from the board.
    Echo {
        /// Over IPv6 instead of IPv4.
        v6: bool,
        /// IPv6 extension headers before the upper layer (`ext_chain`).
        exts: u8,
        dst: u8,
        ident: u8,
        seq: u16,
        data: Vec<u8>,
    },
    /// A driver event for the n-th flow the core announced.
    Os {
        flow: u8,
        kind: u8,
        data: Vec<u8>,
    },
    /// Driver data calls on the n-th flow.
    Recv {
        flow: u8,
        len: u16,
    },
    Send {
        flow: u8,
        data: Vec<u8>,
    },
    /// The laptop opens a flow towards board port 1000 + port % 8 (a forward or `connect`).
    Inbound {
        /// To the board's IPv6 address (from the IPv6 gateway).
        v6: bool,
        udp: bool,
        port: u8,
        peer: u16,
    },
    /// Advance the clock (ms) and run timers.
    Advance(u16),
    /// Drain the board queue, maybe with a too-small buffer.
    Drain {
        small: bool,
    },
}

/// A handful of destinations covering every policy class of both versions.
fn dst_ip(v6: bool, sel: u8) -> IpAddr {
    if v6 {
        let a = match sel % 10 {
            0 => GATEWAY6,
            1 => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7),
            2 => Ipv6Addr::LOCALHOST,
            3 => Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
            4 => Ipv6Addr::new(0xfd47, 0, 0, 0, 0, 0, 0, 9),
            5 => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            6 => Ipv4Addr::LOCALHOST.to_ipv6_mapped(),
            7 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
            8 => Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0x7f00, 1),
            _ => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 8),
        };
        return a.into();
    }
    let a = match sel % 8 {
        0 => GATEWAY,
        1 => Ipv4Addr::new(198, 51, 100, 7),
        2 => Ipv4Addr::LOCALHOST,
        3 => Ipv4Addr::new(192, 168, 1, 1),
        4 => Ipv4Addr::new(10, 47, 0, 9),
        5 => Ipv4Addr::new(224, 0, 0, 1),
        6 => Ipv4Addr::new(198, 51, 100, 8),
        _ => Ipv4Addr::new(169, 254, 1, 1),
    };
    a.into()
}

/// The board's address of `dst`'s version.
fn board_for(dst: IpAddr) -> IpAddr {
    if dst.is_ipv6() {
        BOARD6.into()
    } else {
        BOARD.into()
    }
}

/// A packet from the board (of `dst`'s version) to `dst`; IPv6 with the extension headers of
/// `ext_chain(exts)`.
fn packet(
    dst: IpAddr,
    proto: IpProtocol,
    len: usize,
    exts: u8,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let pkt = qbkit_nat::testing::ip(board_for(dst), dst, proto, 64, len, fill);
    match ext_chain(exts) {
        [] => pkt,
        chain if dst.is_ipv6() => qbkit_nat::testing::with_ipv6_extensions(&pkt, chain),
        _ => pkt,
    }
}

const PAD_N: &[u8] = &[1, 4, 0, 0, 0, 0];
const ROUTER_ALERT: &[u8] = &[5, 2, 0, 0, 1, 0];
const ROUTE_DONE: &[u8] = &[0, 0, 0, 0, 0, 0];
const ROUTE_LEFT: &[u8] = &[0, 1, 0, 0, 0, 0];
const DISCARD_OPT: &[u8] = &[0x82, 4, 0, 0, 0, 0];
const BAD_TLV: &[u8] = &[1, 9, 0, 0, 0, 0];

/// IPv6 extension headers for a well-formed op: skippable chains, ones the core refuses, a
/// fragment header behind a skippable one; none for most values.
fn ext_chain(sel: u8) -> &'static [(IpProtocol, &'static [u8])] {
    use IpProtocol::{HopByHop as Hbh, Ipv6Frag as Frag, Ipv6Opts as Opts, Ipv6Route as Route};
    match sel % 16 {
        1 => &[(Hbh, ROUTER_ALERT)],
        2 => &[(Opts, PAD_N)],
        3 => &[(Hbh, PAD_N), (Opts, PAD_N), (Route, ROUTE_DONE)],
        4 => &[(Route, ROUTE_LEFT)],
        5 => &[(Opts, DISCARD_OPT)],
        6 => &[(Hbh, PAD_N), (Frag, ROUTE_DONE)],
        7 => &[(Opts, PAD_N), (Hbh, PAD_N)],
        8 => &[(Opts, BAD_TLV)],
        9 => &[(Opts, PAD_N); 9],
        _ => &[],
    }
}

fn port(p: u8) -> u16 {
    match p % 4 {
        0 => 53,
        1 => 80,
        // The first gateway ports inbound flows get: the board's answers to the laptop.
        2 => 49152 + u16::from(p / 4 % 4),
        _ => 1000 + u16::from(p),
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut cfg = NatConfig::default();
    cfg.dns_servers = vec!["192.0.2.53:53".parse::<SocketAddr>().unwrap()];
    cfg.max_flows = 16;
    cfg.max_connecting = 8;
    cfg.tcp_rx_buffer = 8192;
    cfg.tcp_tx_buffer = 8192;
    cfg.mtu = 1500;
    let mut now = Instant::from_secs(1);
    let mut nat = Nat::new(cfg, now).unwrap();
    let mut flows: Vec<FlowId> = Vec::new();
    let mut out = vec![0u8; 1500];
    let csum = ChecksumCapabilities::default();
    for op in ops.into_iter().take(64) {
        match op {
            Op::Raw(bytes) => nat.handle_ip_packet(now, &bytes),
            Op::Tcp {
                v6,
                sport,
                dst,
                dport,
                flags,
                seq,
                ack,
                payload,
                exts,
            } => {
                let d = dst_ip(v6, dst);
                let control = match flags & 7 {
                    1 => TcpControl::Syn,
                    2 => TcpControl::Fin,
                    4 => TcpControl::Rst,
                    _ => TcpControl::None,
                };
                let repr = TcpRepr {
                    src_port: 1000 + u16::from(sport % 8),
                    dst_port: port(dport),
                    control,
                    seq_number: TcpSeqNumber(seq.cast_signed()),
                    ack_number: (flags & 8 != 0).then_some(TcpSeqNumber(ack.cast_signed())),
                    window_len: 65535,
                    window_scale: (flags & 16 != 0).then_some(flags >> 5),
                    max_seg_size: (flags & 16 != 0).then_some(1460),
                    sack_permitted: false,
                    sack_ranges: [None; 3],
                    timestamp: None,
                    payload: &payload[..payload.len().min(1400)],
                };
                let pkt = packet(d, IpProtocol::Tcp, repr.buffer_len(), exts, |b| {
                    repr.emit(
                        &mut TcpPacket::new_unchecked(b),
                        &board_for(d).into(),
                        &d.into(),
                        &csum,
                    );
                });
                nat.handle_ip_packet(now, &pkt);
            }
            Op::Udp {
                v6,
                sport,
                dst,
                dport,
                payload,
                exts,
            } => {
                let d = dst_ip(v6, dst);
                let payload = &payload[..payload.len().min(1400)];
                let repr = UdpRepr {
                    src_port: 2000 + u16::from(sport % 8),
                    dst_port: port(dport),
                };
                let pkt = packet(d, IpProtocol::Udp, 8 + payload.len(), exts, |b| {
                    repr.emit(
                        &mut UdpPacket::new_unchecked(b),
                        &board_for(d).into(),
                        &d.into(),
                        payload.len(),
                        |p| p.copy_from_slice(payload),
                        &csum,
                    );
                });
                nat.handle_ip_packet(now, &pkt);
            }
            Op::Echo {
                v6,
                dst,
                ident,
                seq,
                data,
                exts,
            } => {
                let (ident, data) = (u16::from(ident % 4), &data[..data.len().min(1400)]);
                let pkt = match dst_ip(v6, dst) {
                    IpAddr::V6(d) => {
                        let repr = Icmpv6Repr::EchoRequest {
                            ident,
                            seq_no: seq,
                            data,
                        };
                        packet(d.into(), IpProtocol::Icmpv6, repr.buffer_len(), exts, |b| {
                            let mut p = Icmpv6Packet::new_unchecked(b);
                            repr.emit(&BOARD6, &d, &mut p, &csum);
                        })
                    }
                    d => {
                        let repr = Icmpv4Repr::EchoRequest {
                            ident,
                            seq_no: seq,
                            data,
                        };
                        packet(d, IpProtocol::Icmp, repr.buffer_len(), exts, |b| {
                            repr.emit(&mut Icmpv4Packet::new_unchecked(b), &csum);
                        })
                    }
                };
                nat.handle_ip_packet(now, &pkt);
            }
            Op::Os { flow, kind, data } => {
                let flow = flows
                    .get(usize::from(flow) % flows.len().max(1))
                    .copied()
                    .unwrap_or(FlowId(u64::from(flow)));
                let ev = qbkit_fuzz::os_event(flow, kind, &data);
                nat.handle_os_event(now, ev);
            }
            Op::Recv { flow, len } => {
                if let Some(&f) = flows.get(usize::from(flow) % flows.len().max(1)) {
                    let mut buf = vec![0; usize::from(len)];
                    let _ = nat.tcp_recv(f, &mut buf);
                }
            }
            Op::Send { flow, data } => {
                if let Some(&f) = flows.get(usize::from(flow) % flows.len().max(1)) {
                    let _ = nat.tcp_send(f, &data);
                }
            }
            Op::Inbound {
                v6,
                udp,
                port,
                peer,
            } => {
                let board = if v6 { IpAddr::V6(BOARD6) } else { BOARD.into() };
                let board = SocketAddr::new(board, 1000 + u16::from(port % 8));
                let peer = SocketAddr::from(([127, 0, 0, 1], peer));
                let proto = if udp { Protocol::Udp } else { Protocol::Tcp };
                let r = nat.open_inbound_to(now, proto, board, peer);
                if let Ok(f) = r {
                    flows.push(f);
                }
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms) * 50);
                nat.handle_timeout(now);
            }
            Op::Drain { small } => {
                let len = if small { 40 } else { out.len() };
                while let Some(n) = nat.poll_ip_packet(now, &mut out[..len]) {
                    check_for_board(&out[..n]);
                }
            }
        }
        while let Some(ev) = nat.poll_event() {
            if let NatEvent::TcpConnect { flow, .. }
            | NatEvent::UdpOpen { flow, .. }
            | NatEvent::IcmpEchoRequest { flow, .. } = ev
                && !flows.contains(&flow)
            {
                flows.push(flow);
            }
        }
        if let Some(t) = nat.poll_timeout(now) {
            assert!(t >= now, "poll_timeout in the past");
        }
    }
});

/// A packet the core sends must be a whole IPv4 (valid header checksum) or IPv6 packet for the
/// board.
fn check_for_board(pkt: &[u8]) {
    if pkt.first().is_some_and(|b| b >> 4 == 6) {
        let p = Ipv6Packet::new_checked(pkt).expect("core emitted a truncated IPv6 packet");
        assert_eq!(
            40 + usize::from(p.payload_len()),
            pkt.len(),
            "IPv6 payload length"
        );
        assert_eq!(
            p.dst_addr(),
            BOARD6,
            "core emitted a packet not for the board"
        );
        assert!(pkt.len() <= 1500, "larger than the MTU");
    } else {
        let p = Ipv4Packet::new_checked(pkt).expect("core emitted a truncated packet");
        assert!(p.verify_checksum(), "core emitted a bad IPv4 checksum");
        assert_eq!(
            p.dst_addr(),
            BOARD,
            "core emitted a packet not for the board"
        );
    }
}
