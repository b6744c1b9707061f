//! Fuzz target: the gadget's sans-IO pump (`qbkit_gadget::pump::Pump`) against an in-memory host
//! `Session`, driven by an arbitrary script: TUN packets, host packets, raw transfers, clock jumps,
//! link up/down on USB or a stream, LinkConfig offers and renegotiations, where the host restarts
//! with other `max_bundle`/MTU limits and both endpoints negotiate again mid-session.
//!
//! Properties checked after every step:
//! - every bundle the pump emits is well formed, never ends on wMaxPacketSize on USB, and once the
//!   pump has the current host's Hello it fits that host's `max_bundle` (the host accepts it);
//! - the host receives TUN packets unchanged, in order, each at most once;
//! - packet accounting: read from TUN = sent + dropped (counted) + staged; TUN bytes add up;
//! - nothing is stranded: with the link attached, draining `poll_transmit` empties staging, and a
//!   drained pump accepts TUN packets again while the carrier is on;
//! - timers make progress: running every due timer converges (no deadline in the past);
//! - the carrier is on only while the session is `Up`, and every applied LinkConfig passes the
//!   board's check with its overrides.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use qbkit_gadget::config::NetOverrides;
use qbkit_gadget::linkcheck;
use qbkit_gadget::pump::{Action, Pump, PumpConfig};
use shared_frame::{
    Bundle, BundleWriter, Cidr, Framing, Instant, LinkConfig, MAX_BUNDLE_LIMIT, RecordKind, Role,
    Session, SessionConfig,
};
use std::net::Ipv4Addr;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A TUN packet of `8 + len` bytes (tagged with its sequence number).
    Tun(u16),
    /// `n` TUN packets of `8 + len` bytes each.
    TunBurst(u8, u16),
    /// An empty TUN read.
    TunEmpty,
    /// The link has a free slot: the pump sends at most one bundle.
    SendOne,
    /// Bundles both ways until quiet (every slot free).
    Exchange,
    /// The host sends `n` IP packets of `len` bytes (plus its pending control).
    HostPackets(u8, u16),
    /// Raw bytes as a transfer from the host.
    Raw(Vec<u8>),
    /// The host restarts with these limits: its Hello reaches the board mid-session.
    Renegotiate {
        max_bundle: u32,
        max_mtu: u32,
    },
    /// The host offers another LinkConfig (MTU, IPv4 prefix).
    LinkConfig(u32, u8),
    /// Advance the clock by this many milliseconds and run due timers.
    Advance(u16),
    LinkDown,
    /// Link up: USB with wMaxPacketSize 64 << (n % 5) (`true`), or a stream.
    LinkUp(bool, u8),
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    board_max_bundle: u32,
    board_mtu: u16,
    ops: Vec<Op>,
}

fn link_config(mtu: u32, prefix: u8) -> LinkConfig {
    LinkConfig {
        ipv4: Some(Cidr {
            addr: Ipv4Addr::new(10, 47, 0, 2),
            prefix,
        }),
        gateway_v4: Some(Ipv4Addr::new(10, 47, 0, 1)),
        ipv6: None,
        gateway_v6: None,
        dns: vec![],
        mtu,
    }
}

/// The fill byte at offset `i` of TUN packet `seq` (after its 8-byte tag).
fn fill(seq: u32, i: usize) -> u8 {
    (seq as u8).wrapping_mul(31).wrapping_add(i as u8)
}

struct Harness {
    now: Instant,
    pump: Pump,
    overrides: NetOverrides,
    host: Session,
    host_identity: String,
    host_generation: u32,
    link_config: LinkConfig,
    /// Length of every TUN packet handed to the pump, by sequence number.
    tun_lens: Vec<usize>,
    tun_bytes: u64,
    /// The next sequence number the host may receive (order, no duplicates).
    next_rx: u32,
    /// IP packets in pump bundles the host refused (legal only while the pump had not yet seen
    /// the host's current Hello).
    lost_in_refused: u64,
    host_rx: u64,
    bundles_out: u64,
}

impl Harness {
    fn new(board_max_bundle: u32, board_mtu: u16) -> Self {
        let now = Instant::from_millis(1);
        let mut session = SessionConfig::new(Role::Board, "fuzz-board");
        session.max_bundle = board_max_bundle as usize % (MAX_BUNDLE_LIMIT + 1);
        let mut cfg = PumpConfig::new("fuzz-board");
        cfg.session = session;
        cfg.mtu = usize::from(board_mtu);
        let overrides = cfg.overrides.clone();
        let lc = link_config(16384, 24);
        let mut h = Self {
            now,
            pump: Pump::new(cfg, now),
            overrides,
            host: Session::new(SessionConfig::new(Role::Host, "x"), now),
            host_identity: String::new(),
            host_generation: 0,
            link_config: lc,
            tun_lens: Vec::new(),
            tun_bytes: 0,
            next_rx: 0,
            lost_in_refused: 0,
            host_rx: 0,
            bundles_out: 0,
        };
        h.restart_host(shared_frame::DEFAULT_MAX_BUNDLE as u32, 16384);
        h
    }

    fn restart_host(&mut self, max_bundle: u32, max_mtu: u32) {
        self.host_generation += 1;
        self.host_identity = format!("fuzz-host-{}", self.host_generation);
        let mut cfg = SessionConfig::new(Role::Host, self.host_identity.clone());
        cfg.max_bundle = max_bundle as usize % (MAX_BUNDLE_LIMIT + 1);
        cfg.max_mtu = max_mtu;
        cfg.link_config = Some(self.link_config.clone());
        self.host = Session::new(cfg, self.now);
    }

    /// Whether the pump negotiated with the current host (has its Hello).
    fn pump_knows_host(&self) -> bool {
        self.pump
            .session()
            .negotiated()
            .is_some_and(|n| n.peer.identity == self.host_identity)
    }

    fn tun(&mut self, len: usize) {
        let seq = self.tun_lens.len() as u32;
        let mut p = vec![0u8; len];
        if len >= 8 {
            p[..4].copy_from_slice(&seq.to_le_bytes());
            p[4..8].copy_from_slice(&(len as u32).to_le_bytes());
            for (i, b) in p[8..].iter_mut().enumerate() {
                *b = fill(seq, i);
            }
        }
        self.tun_lens.push(len);
        self.tun_bytes += len as u64;
        self.pump.handle_tun_packet(&p);
    }

    /// One bundle from the pump to the host, if it has one.
    fn send_one(&mut self) -> bool {
        let knew = self.pump_knows_host();
        let Some(b) = self.pump.poll_transmit() else {
            return false;
        };
        self.bundles_out += 1;
        let parsed = Bundle::new_checked(&b[..], MAX_BUNDLE_LIMIT).expect("pump bundle malformed");
        let ip_records = parsed
            .records()
            .filter(|r| r.as_ref().expect("pump record malformed").kind == RecordKind::Ip)
            .count() as u64;
        if let Some(Framing::Usb { max_packet_size }) = self.pump.framing() {
            assert_ne!(
                b.len() % max_packet_size,
                0,
                "USB bundle ends on wMaxPacketSize"
            );
        }
        let now = self.now;
        let (next_rx, lens, host_rx) = (&mut self.next_rx, &self.tun_lens, &mut self.host_rx);
        let res = self.host.handle_bundle(now, &b, |_, p| {
            assert!(p.len() >= 8, "an untagged packet reached the host");
            let seq = u32::from_le_bytes(p[..4].try_into().unwrap());
            assert!(seq >= *next_rx, "packet {seq} reordered or duplicated");
            assert!((seq as usize) < lens.len(), "packet {seq} never sent");
            assert_eq!(p.len(), lens[seq as usize], "packet {seq} length changed");
            for (i, &x) in p[8..].iter().enumerate() {
                assert_eq!(x, fill(seq, i), "packet {seq} corrupted at {i}");
            }
            *next_rx = seq + 1;
            *host_rx += 1;
        });
        if res.is_err() {
            assert!(
                !knew,
                "the pump knew the host's limit ({}) and sent a {}-byte bundle it refused: {res:?}",
                self.host.config().max_bundle,
                b.len()
            );
            self.lost_in_refused += ip_records;
        }
        true
    }

    fn host_sends(&mut self, packets: u8, len: u16) {
        let max = self.host.tx_max_bundle();
        let mut buf = vec![0u8; max];
        let mut w = BundleWriter::new(&mut buf, max);
        self.host.poll_control(&mut w);
        let pkt = vec![0x45u8; usize::from(len).max(1)];
        for _ in 0..packets {
            if w.push_ip(shared_frame::CHANNEL_NET, &pkt).is_err() {
                break;
            }
        }
        if w.is_empty() {
            return;
        }
        let n = w.finish();
        self.deliver(&buf[..n]);
    }

    fn deliver(&mut self, b: &[u8]) {
        let now = self.now;
        self.pump.handle_link_bundle(now, b, |_| true);
    }

    /// Bundles both ways until neither side has anything to say, then checks nothing is stranded.
    fn exchange(&mut self) {
        for _ in 0..8 {
            let mut moved = false;
            for _ in 0..64 {
                if !self.send_one() {
                    break;
                }
                moved = true;
            }
            if self.pump.framing().is_some() && self.host.has_pending_control() {
                self.host_sends(0, 0);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        if self.pump.framing().is_some() {
            while self.send_one() {}
            assert_eq!(
                self.pump.staged_packets(),
                0,
                "packets stranded in staging with every slot free"
            );
            if self.pump.carrier() {
                assert!(
                    self.pump.can_accept_tun(),
                    "a drained pump refuses TUN reads"
                );
            }
        }
    }

    fn advance(&mut self, ms: u16) {
        self.now = self.now + std::time::Duration::from_millis(u64::from(ms));
        let mut rounds = 0;
        while let Some(t) = self.pump.poll_timeout()
            && t <= self.now
        {
            self.pump.handle_timeout(self.now);
            rounds += 1;
            assert!(
                rounds < 64,
                "timers do not converge: deadline {t:?} stays due"
            );
        }
        self.host.handle_timeout(self.now);
        while self.host.poll_event().is_some() {}
    }

    fn check(&mut self) {
        while let Some(a) = self.pump.poll_action() {
            if let Action::ApplyLinkConfig(lc) = a {
                assert_eq!(
                    linkcheck::check(&self.overrides.apply(&lc)),
                    Ok(()),
                    "applied a LinkConfig the board refuses"
                );
                assert_eq!(self.pump.applied_link_config(), Some(&lc));
            }
        }
        let c = self.pump.counters();
        let s = self.pump.session().counters();
        assert_eq!(c.tun_rx_packets, self.tun_lens.len() as u64);
        assert_eq!(c.tun_rx_bytes, self.tun_bytes);
        assert_eq!(
            c.tun_rx_packets,
            s.tx_packets + s.tx_drops + self.pump.staged_packets() as u64,
            "packets from the TUN device unaccounted for: {c:?} {s:?}"
        );
        assert_eq!(
            s.tx_packets,
            self.host_rx + self.lost_in_refused,
            "sent packets the host never saw"
        );
        assert_eq!(c.tx_bundles, self.bundles_out);
        assert!(
            self.pump.staged_packets() * 8 <= MAX_BUNDLE_LIMIT,
            "staging beyond one bundle"
        );
        if self.pump.carrier() {
            assert!(self.pump.session().is_up() && self.pump.framing().is_some());
            assert!(self.pump.link_config_refused().is_none());
        } else {
            assert_eq!(
                self.pump.staged_packets(),
                0,
                "packets staged with the carrier off"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(input.board_max_bundle, input.board_mtu);
    for op in input.ops.into_iter().take(200) {
        match op {
            Op::Tun(len) => h.tun(8 + usize::from(len)),
            Op::TunBurst(n, len) => {
                for _ in 0..n % 64 {
                    h.tun(8 + usize::from(len));
                }
            }
            Op::TunEmpty => h.tun(0),
            Op::SendOne => {
                h.send_one();
            }
            Op::Exchange => h.exchange(),
            Op::HostPackets(n, len) => h.host_sends(n % 32, len),
            Op::Raw(bytes) => h.deliver(&bytes),
            Op::Renegotiate {
                max_bundle,
                max_mtu,
            } => {
                h.restart_host(max_bundle, max_mtu);
                h.host_sends(0, 0);
            }
            Op::LinkConfig(mtu, prefix) => {
                h.link_config = link_config(mtu, prefix);
                h.host.set_link_config(h.link_config.clone());
            }
            Op::Advance(ms) => h.advance(ms),
            Op::LinkDown => {
                let now = h.now;
                h.pump.handle_link_down(now);
            }
            Op::LinkUp(usb, n) => {
                let now = h.now;
                h.pump.handle_link_up(now, qbkit_fuzz::framing(usb, n));
                h.host.reset(now);
            }
            Op::Close => h.pump.close(),
        }
        h.check();
    }
    h.exchange();
    h.check();
});
