//! Fuzz target: the NAT core (qbkit-nat) driven by an arbitrary script of board packets (raw bytes,
//! or well-formed TCP/UDP/ICMP packets with arbitrary fields so the fuzzer reaches flow state),
//! driver events for the flows it has seen, flows the laptop opens towards the board (forwards,
//! `connect`), TCP data calls and clock jumps. Nothing may panic, and
//! every packet the core sends to the board must be a valid IPv4 packet addressed to the board.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use qbkit_nat::{Duration, FlowId, Instant, Nat, NatConfig, NatEvent, Protocol};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber, UdpPacket, UdpRepr,
};

const BOARD: Ipv4Addr = Ipv4Addr::new(10, 47, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 47, 0, 1);

#[derive(Arbitrary, Debug)]
enum Op {
    /// Arbitrary bytes as one packet.
    Raw(Vec<u8>),
    /// A valid TCP segment from the board (flags: bit 0 SYN, 1 FIN, 2 RST, 3 has ACK).
    Tcp {
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
        sport: u8,
        dst: u8,
        dport: u8,
        payload: Vec<u8>,
    },
    /// A valid echo request from the board.
    Echo {
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

/// A handful of destinations covering every policy class.
fn dst_ip(sel: u8) -> Ipv4Addr {
    match sel % 8 {
        0 => GATEWAY,
        1 => Ipv4Addr::new(198, 51, 100, 7),
        2 => Ipv4Addr::LOCALHOST,
        3 => Ipv4Addr::new(192, 168, 1, 1),
        4 => Ipv4Addr::new(10, 47, 0, 9),
        5 => Ipv4Addr::new(224, 0, 0, 1),
        6 => Ipv4Addr::new(198, 51, 100, 8),
        _ => Ipv4Addr::new(169, 254, 1, 1),
    }
}

fn ipv4(dst: Ipv4Addr, proto: IpProtocol, len: usize, fill: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: BOARD,
        dst_addr: dst,
        next_header: proto,
        payload_len: len,
        hop_limit: 64,
    };
    let mut buf = vec![0; repr.buffer_len() + len];
    let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut p, &ChecksumCapabilities::default());
    fill(p.payload_mut());
    buf
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
                sport,
                dst,
                dport,
                flags,
                seq,
                ack,
                payload,
            } => {
                let d = dst_ip(dst);
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
                let pkt = ipv4(d, IpProtocol::Tcp, repr.buffer_len(), |b| {
                    repr.emit(
                        &mut TcpPacket::new_unchecked(b),
                        &BOARD.into(),
                        &d.into(),
                        &csum,
                    );
                });
                nat.handle_ip_packet(now, &pkt);
            }
            Op::Udp {
                sport,
                dst,
                dport,
                payload,
            } => {
                let d = dst_ip(dst);
                let payload = &payload[..payload.len().min(1400)];
                let repr = UdpRepr {
                    src_port: 2000 + u16::from(sport % 8),
                    dst_port: port(dport),
                };
                let pkt = ipv4(d, IpProtocol::Udp, 8 + payload.len(), |b| {
                    repr.emit(
                        &mut UdpPacket::new_unchecked(b),
                        &BOARD.into(),
                        &d.into(),
                        payload.len(),
                        |p| p.copy_from_slice(payload),
                        &csum,
                    );
                });
                nat.handle_ip_packet(now, &pkt);
            }
            Op::Echo {
                dst,
                ident,
                seq,
                data,
            } => {
                let d = dst_ip(dst);
                let repr = Icmpv4Repr::EchoRequest {
                    ident: u16::from(ident % 4),
                    seq_no: seq,
                    data: &data[..data.len().min(1400)],
                };
                let pkt = ipv4(d, IpProtocol::Icmp, repr.buffer_len(), |b| {
                    repr.emit(&mut Icmpv4Packet::new_unchecked(b), &csum);
                });
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
            Op::Inbound { udp, port, peer } => {
                let port = 1000 + u16::from(port % 8);
                let peer = SocketAddr::from(([127, 0, 0, 1], peer));
                let r = if udp {
                    nat.open_inbound(now, Protocol::Udp, port, peer)
                } else {
                    nat.open_inbound(now, Protocol::Tcp, port, peer)
                };
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
                    let p = Ipv4Packet::new_checked(&out[..n])
                        .expect("core emitted a truncated packet");
                    assert!(p.verify_checksum(), "core emitted a bad IPv4 checksum");
                    assert_eq!(
                        p.dst_addr(),
                        BOARD,
                        "core emitted a packet not for the board"
                    );
                }
            }
        }
        while let Some(ev) = nat.poll_event() {
            if let NatEvent::TcpConnect { flow, .. }
            | NatEvent::UdpOpen { flow, .. }
            | NatEvent::IcmpEchoRequest { flow, .. } = ev
            {
                if !flows.contains(&flow) {
                    flows.push(flow);
                }
            }
        }
        if let Some(t) = nat.poll_timeout(now) {
            assert!(t >= now, "poll_timeout in the past");
        }
    }
});
