//! Fuzz target: the host's sans-IO core (`qbkit_host_core::Core`: link session + NAT + bundle
//! assembly) against an in-memory board `Session`, driven by an arbitrary script: the board's
//! TCP/UDP/ICMP packets in bundles and raw transfers, what the OS sockets do (answers to the NAT's
//! requests), TCP data calls, clock jumps, link up/down on USB or a stream, bundles lost on the way
//! out, and renegotiations where the board restarts with other `max_bundle`/MTU limits.
//!
//! Properties checked after every step:
//! - every bundle is well formed, never ends on wMaxPacketSize on USB, reports as many packets as
//!   it carries IP records, and once the core has the current board's Hello it fits that board's
//!   `max_bundle` (the board accepts it);
//! - every packet for the board is a whole IPv4 packet with a good checksum addressed to it;
//! - nothing spins: draining `poll_transmit` ends, and once it returns `None` the core no longer
//!   says it wants to transmit;
//! - timers make progress: after `handle_timeout(now)` the session's deadline is in the future;
//! - the counters add up: bundles and bytes sent (minus those reported lost), bundles received.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use qbkit_host_core::{Core, CoreConfig};
use qbkit_nat::testing::{tcp_segment, udp};
use qbkit_nat::{FlowId, NatConfig, NatEvent, Protocol};
use shared_frame::{
    Bundle, BundleWriter, CHANNEL_NET, Framing, Instant, MAX_BUNDLE_LIMIT, RecordKind, Role,
    Session, SessionConfig,
};
use smoltcp::wire::{Ipv4Packet, TcpControl};

const BOARD: Ipv4Addr = Ipv4Addr::new(10, 47, 0, 2);
const MS: u64 = 1000;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A TCP segment from the board (control: 0 none, 1 SYN, 2 FIN, 3 RST).
    Tcp {
        sport: u8,
        dst: u8,
        control: u8,
        seq: u32,
        ack: Option<u32>,
        len: u16,
    },
    /// A UDP datagram from the board.
    Udp {
        sport: u8,
        dst: u8,
        len: u16,
    },
    /// Raw bytes as a transfer from the board.
    Raw(Vec<u8>),
    /// What the OS did for the n-th flow the NAT announced.
    Os {
        flow: u8,
        kind: u8,
        len: u16,
    },
    /// Data the OS socket of the n-th flow read (`tcp_send`) or the driver writes out (`tcp_recv`).
    Data {
        flow: u8,
        send: bool,
        len: u16,
    },
    /// The laptop opens a flow towards the board (a forward or `connect`).
    Inbound {
        udp: bool,
        port: u8,
    },
    /// The link has a free slot: the core sends at most one bundle.
    SendOne,
    /// Bundles both ways until quiet.
    Exchange,
    /// A bundle the transport lost while sending.
    Lost,
    /// The board restarts with these limits: its Hello reaches the core mid-session.
    Renegotiate {
        max_bundle: u32,
        max_mtu: u16,
    },
    /// Advance the clock by this many milliseconds and run due timers.
    Advance(u16),
    LinkDown,
    /// Link up: USB with wMaxPacketSize 64 << (n % 5) (`true`), or a stream.
    LinkUp(bool, u8),
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    host_max_bundle: u32,
    mtu: u16,
    ops: Vec<Op>,
}

fn dst(sel: u8) -> SocketAddrV4 {
    let ip = match sel % 4 {
        0 => Ipv4Addr::new(10, 47, 0, 1),
        1 => Ipv4Addr::new(198, 51, 100, 7),
        2 => Ipv4Addr::new(192, 168, 1, 1),
        _ => Ipv4Addr::new(198, 51, 100, 8),
    };
    let port = match sel / 4 % 3 {
        0 => 53,
        1 => 80,
        _ => 443,
    };
    SocketAddrV4::new(ip, port)
}

struct Harness {
    now: u64,
    core: Core,
    board: Session,
    board_identity: String,
    generation: u32,
    framing: Option<Framing>,
    flows: Vec<FlowId>,
    buf: Vec<u8>,
    sent: u64,
    sent_bytes: u64,
    received: u64,
}

impl Harness {
    fn restart_board(&mut self, max_bundle: u32, max_mtu: u16) {
        self.generation += 1;
        self.board_identity = format!("fuzz-board-{}", self.generation);
        let mut cfg = SessionConfig::new(Role::Board, self.board_identity.clone());
        cfg.max_bundle = max_bundle as usize % (MAX_BUNDLE_LIMIT + 1);
        cfg.max_mtu = u32::from(max_mtu);
        self.board = Session::new(cfg, Instant::from_micros(self.now));
    }

    fn core_knows_board(&self) -> bool {
        self.core
            .session()
            .negotiated()
            .is_some_and(|n| n.peer.identity == self.board_identity)
    }

    /// A bundle from the board: its pending control, then `packet` if it fits.
    fn board_sends(&mut self, packet: Option<&[u8]>) {
        let max = self.board.tx_max_bundle();
        let mut buf = vec![0u8; max];
        let mut w = BundleWriter::new(&mut buf, max);
        self.board.poll_control(&mut w);
        if let Some(p) = packet {
            let _ = w.push_ip(CHANNEL_NET, p);
        }
        if w.is_empty() {
            return;
        }
        let n = w.finish();
        self.deliver(&buf[..n]);
    }

    fn deliver(&mut self, b: &[u8]) {
        self.core.handle_bundle(self.now, b);
        self.received += 1;
        self.nat_events();
    }

    fn nat_events(&mut self) {
        while let Some(ev) = self.core.poll_nat_event() {
            if let NatEvent::TcpConnect { flow, .. }
            | NatEvent::UdpOpen { flow, .. }
            | NatEvent::IcmpEchoRequest { flow, .. } = ev
                && !self.flows.contains(&flow)
            {
                self.flows.push(flow);
            }
        }
    }

    fn flow(&self, n: u8) -> Option<FlowId> {
        self.flows
            .get(usize::from(n) % self.flows.len().max(1))
            .copied()
    }

    /// One bundle from the core to the board, if it has one; checks it.
    fn send_one(&mut self, lose: bool) -> bool {
        let knew = self.core_knows_board();
        let framing = self.framing;
        let Some(t) = self.core.poll_transmit(self.now, &mut self.buf) else {
            assert!(
                !self.core.wants_transmit(),
                "poll_transmit found nothing but the core still wants to transmit (the driver spins)"
            );
            return false;
        };
        let b = &self.buf[..t.len];
        let bundle = Bundle::new_checked(b, MAX_BUNDLE_LIMIT).expect("core bundle malformed");
        let mut ip = 0;
        for r in bundle.records() {
            let r = r.expect("core record malformed");
            if r.kind == RecordKind::Ip {
                ip += 1;
                let p = Ipv4Packet::new_checked(r.payload).expect("truncated IPv4 packet");
                assert!(p.verify_checksum(), "bad IPv4 checksum");
                assert_eq!(p.dst_addr(), BOARD, "a packet not for the board");
                assert_eq!(usize::from(p.total_len()), r.payload.len());
            }
        }
        assert_eq!(
            t.packets, ip,
            "Transmit::packets is not what the bundle carries"
        );
        if let Some(Framing::Usb { max_packet_size }) = framing {
            assert_ne!(
                t.len % max_packet_size,
                0,
                "USB bundle ends on wMaxPacketSize"
            );
        }
        if lose {
            self.core.record_tx_lost(t);
            return true;
        }
        self.sent += 1;
        self.sent_bytes += t.len as u64;
        let res = self
            .board
            .handle_bundle(Instant::from_micros(self.now), b, |_, _| {});
        assert!(
            res.is_ok() || !knew,
            "the core knew the board's limit ({}) and sent a {}-byte bundle it refused: {res:?}",
            self.board.config().max_bundle,
            t.len
        );
        true
    }

    fn exchange(&mut self) {
        for _ in 0..8 {
            let mut moved = false;
            for _ in 0..256 {
                if !self.send_one(false) {
                    break;
                }
                moved = true;
            }
            if self.core.has_link() && self.board.has_pending_control() {
                self.board_sends(None);
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    fn advance(&mut self, ms: u16) {
        self.now += u64::from(ms) * MS;
        self.core.handle_timeout(self.now);
        self.nat_events();
        let (session, _) = self.core.poll_timeout(self.now);
        if let Some(t) = session {
            assert!(
                t > self.now,
                "session deadline {t} not after now {}",
                self.now
            );
        }
        self.board.handle_timeout(Instant::from_micros(self.now));
        while self.board.poll_event().is_some() {}
    }

    fn check(&self) {
        let c = self.core.counters();
        assert_eq!(c.tx_bundles, self.sent, "tx_bundles");
        assert_eq!(c.tx_bundle_bytes, self.sent_bytes, "tx_bundle_bytes");
        assert_eq!(c.rx_bundles, self.received, "rx_bundles");
        assert!(c.drop_rx_bad_bundle <= c.rx_bundles);
        assert!(
            self.core.nat().flow_count() <= 16,
            "more flows than max_flows"
        );
    }
}

fuzz_target!(|input: Input| {
    let mut nat = NatConfig::default();
    nat.dns_servers = vec!["192.0.2.53:53".parse::<SocketAddr>().unwrap()];
    nat.max_flows = 16;
    nat.max_connecting = 8;
    nat.tcp_rx_buffer = 8192;
    nat.tcp_tx_buffer = 8192;
    nat.mtu = 1280 + usize::from(input.mtu) % 15105;
    let cfg = CoreConfig {
        nat,
        max_bundle: input.host_max_bundle as usize % (MAX_BUNDLE_LIMIT + 1),
        identity: "fuzz-host".into(),
    };
    let now = 1_000_000;
    let Ok(core) = Core::new(cfg, now) else {
        return;
    };
    let mut h = Harness {
        now,
        core,
        board: Session::new(
            SessionConfig::new(Role::Board, "x"),
            Instant::from_micros(now),
        ),
        board_identity: String::new(),
        generation: 0,
        framing: None,
        flows: Vec::new(),
        buf: Vec::new(),
        sent: 0,
        sent_bytes: 0,
        received: 0,
    };
    h.restart_board(65536, 16384);
    let board = |port: u8| SocketAddrV4::new(BOARD, 1000 + u16::from(port % 8));
    for op in input.ops.into_iter().take(128) {
        match op {
            Op::Tcp {
                sport,
                dst: d,
                control,
                seq,
                ack,
                len,
            } => {
                let control = match control % 4 {
                    1 => TcpControl::Syn,
                    2 => TcpControl::Fin,
                    3 => TcpControl::Rst,
                    _ => TcpControl::None,
                };
                let payload = vec![0x61; usize::from(len) % 1400];
                let p = tcp_segment(board(sport), dst(d), control, seq, ack, 1400, &payload);
                h.board_sends(Some(&p));
            }
            Op::Udp { sport, dst: d, len } => {
                let p = udp(board(sport), dst(d), &vec![0x62; usize::from(len) % 1400]);
                h.board_sends(Some(&p));
            }
            Op::Raw(bytes) => h.deliver(&bytes),
            Op::Os { flow, kind, len } => {
                let Some(flow) = h.flow(flow) else { continue };
                let data = vec![0x63; usize::from(len) % 20000];
                let ev = qbkit_fuzz::os_event(flow, kind, &data);
                let now = h.now;
                h.core.handle_os_event(now, ev);
                h.nat_events();
            }
            Op::Data { flow, send, len } => {
                let Some(flow) = h.flow(flow) else { continue };
                let mut data = vec![0x64; usize::from(len) % 20000];
                if send {
                    let _ = h.core.nat_mut().tcp_send(flow, &data);
                } else {
                    let _ = h.core.nat_mut().tcp_recv(flow, &mut data);
                }
                h.nat_events();
            }
            Op::Inbound { udp, port } => {
                let now = qbkit_nat::Instant::from_micros(h.now.cast_signed());
                let proto = if udp { Protocol::Udp } else { Protocol::Tcp };
                let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
                if let Ok(f) =
                    h.core
                        .nat_mut()
                        .open_inbound(now, proto, 1000 + u16::from(port % 8), peer)
                {
                    h.flows.push(f);
                }
                h.nat_events();
            }
            Op::SendOne => {
                h.send_one(false);
            }
            Op::Exchange => h.exchange(),
            Op::Lost => {
                h.send_one(true);
            }
            Op::Renegotiate {
                max_bundle,
                max_mtu,
            } => {
                h.restart_board(max_bundle, max_mtu);
                h.board_sends(None);
            }
            Op::Advance(ms) => h.advance(ms),
            Op::LinkDown => {
                let now = h.now;
                h.core.handle_link_down(now);
                h.framing = None;
            }
            Op::LinkUp(usb, n) => {
                let now = h.now;
                let f = qbkit_fuzz::framing(usb, n);
                h.core.handle_link_up(now, f);
                h.framing = Some(f);
                h.board.reset(Instant::from_micros(now));
            }
            Op::Close => h.core.close("fuzz"),
        }
        h.check();
    }
    h.exchange();
    h.check();
});
