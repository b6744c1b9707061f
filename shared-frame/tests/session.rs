//! Session tests on a simulated link: a board `Session` and a host `Session` joined by an in-memory
//! USB pipe (`LinkPair`) with a fake clock and a fixed one-way latency. Bundles flow board → pipe →
//! host and back; the simulation jumps the clock to the next delivery or timer, so no test sleeps.

use std::collections::VecDeque;
use std::time::Duration;

use shared_frame::{
    Bundle, BundleWriter, Bye, ByeReason, Capabilities, Control, DEFAULT_MAX_BUNDLE, DownReason,
    FrameError, Hello, Instant, LinkConfig, LinkState, Role, Session, SessionConfig, SessionEvent,
    StatId, Stats,
};

const MPS: usize = 512;
const LATENCY: Duration = Duration::from_millis(3);

fn board_config() -> SessionConfig {
    SessionConfig::new(Role::Board, "board-1")
}

fn link_config() -> LinkConfig {
    shared_frame::testing::link_config_v4(16384)
}

fn host_config() -> SessionConfig {
    let mut c = SessionConfig::new(Role::Host, "host-1");
    c.link_config = Some(link_config());
    c
}

/// One end: its session, the IP packets it received and the events it reported.
struct Side {
    s: Session,
    tx_ip: VecDeque<Vec<u8>>,
    rx_ip: Vec<(u8, Vec<u8>)>,
    events: Vec<SessionEvent>,
    errors: Vec<FrameError>,
}

impl Side {
    fn new(cfg: SessionConfig, now: Instant) -> Self {
        Self {
            s: Session::new(cfg, now),
            tx_ip: VecDeque::new(),
            rx_ip: Vec::new(),
            events: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Builds the next USB transfer, the way a driver does: control first, then IP packets.
    fn transmit(&mut self) -> Option<Vec<u8>> {
        if !self.s.has_pending_control() && self.tx_ip.is_empty() {
            return None;
        }
        let max = self.s.tx_max_bundle();
        let mut buf = vec![0; max];
        let mut w = BundleWriter::new(&mut buf, max);
        self.s.poll_control(&mut w);
        while let Some(p) = self.tx_ip.front() {
            if w.push_ip(0, p).is_err() {
                break;
            }
            let p = self.tx_ip.pop_front().unwrap();
            self.s.record_tx(1, p.len() as u64);
        }
        let n = w.finish_usb(MPS);
        buf.truncate(n);
        Some(buf)
    }

    fn receive(&mut self, now: Instant, data: &[u8]) {
        let rx = &mut self.rx_ip;
        if let Err(e) = self
            .s
            .handle_bundle(now, data, |ch, p| rx.push((ch, p.to_vec())))
        {
            self.errors.push(e);
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(e) = self.s.poll_event() {
            self.events.push(e);
        }
    }

    fn ups(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, SessionEvent::Up(_)))
            .count()
    }

    fn downs(&self) -> Vec<DownReason> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Down(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum To {
    Board,
    Host,
}

/// The simulated link (quinn's `Pair`): a fake clock, a latency, and a switch that cuts the cable.
struct LinkPair {
    now: Instant,
    board: Side,
    host: Side,
    connected: bool,
    in_flight: VecDeque<(Instant, To, Vec<u8>)>,
    transfers: usize,
}

impl LinkPair {
    fn new(board: SessionConfig, host: SessionConfig) -> Self {
        let now = Instant::from_millis(1000);
        Self {
            now,
            board: Side::new(board, now),
            host: Side::new(host, now),
            connected: true,
            in_flight: VecDeque::new(),
            transfers: 0,
        }
    }

    fn default_pair() -> Self {
        Self::new(board_config(), host_config())
    }

    fn side(&mut self, to: To) -> &mut Side {
        match to {
            To::Board => &mut self.board,
            To::Host => &mut self.host,
        }
    }

    /// Sends everything both sides have to send now.
    fn flush(&mut self) {
        for (from, to) in [(To::Board, To::Host), (To::Host, To::Board)] {
            while let Some(t) = self.side(from).transmit() {
                self.transfers += 1;
                if self.connected {
                    self.in_flight.push_back((self.now + LATENCY, to, t));
                }
            }
        }
    }

    /// Runs the simulation until `now + d`: deliveries and timers in time order.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..1_000_000 {
            self.flush();
            let next_rx = self.in_flight.front().map(|x| x.0);
            let next = [
                next_rx,
                self.board.s.poll_timeout(),
                self.host.s.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t <= end => self.now = self.now.max(t),
                _ => {
                    self.now = end;
                    return;
                }
            }
            while self.in_flight.front().is_some_and(|x| x.0 <= self.now) {
                let (_, to, data) = self.in_flight.pop_front().unwrap();
                let now = self.now;
                self.side(to).receive(now, &data);
            }
            for to in [To::Board, To::Host] {
                let now = self.now;
                let side = self.side(to);
                if side.s.poll_timeout().is_some_and(|t| t <= now) {
                    side.s.handle_timeout(now);
                    side.drain();
                }
            }
        }
        panic!("simulation did not converge");
    }

    fn up(&mut self) {
        self.run_for(Duration::from_millis(50));
        assert!(self.board.s.is_up() && self.host.s.is_up());
    }
}

/// A bundle of control messages, built by hand to play a misbehaving peer.
fn control_bundle(msgs: &[Control]) -> Vec<u8> {
    let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
    let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
    for m in msgs {
        w.push_control(m).unwrap();
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn board_hello(version: u8, role: Role) -> Control {
    Control::Hello(Hello {
        version,
        role,
        flags: 0,
        capabilities: Capabilities::ALL,
        max_bundle: DEFAULT_MAX_BUNDLE as u32,
        max_mtu: 16384,
        identity: "fake".into(),
    })
}

#[test]
fn hello_exchange_brings_both_up_once() {
    let mut p = LinkPair::default_pair();
    assert_eq!(p.board.s.state(), LinkState::Connecting);
    p.up();
    // Both sent Hello at once; the replies do not produce a second Up.
    assert_eq!(p.board.ups(), 1, "{:?}", p.board.events);
    assert_eq!(p.host.ups(), 1, "{:?}", p.host.events);
    let n = p.board.s.negotiated().unwrap();
    assert_eq!(n.version, 1);
    assert_eq!(n.capabilities, Capabilities::ALL);
    assert_eq!(n.max_bundle, DEFAULT_MAX_BUNDLE);
    assert_eq!(n.peer.role, Role::Host);
    assert_eq!(n.peer.identity, "host-1");
    assert_eq!(p.host.s.negotiated().unwrap().peer.identity, "board-1");
    assert!(p.board.errors.is_empty() && p.host.errors.is_empty());
}

#[test]
fn one_side_starts_late() {
    let mut p = LinkPair::default_pair();
    p.connected = false;
    p.run_for(Duration::from_millis(1700));
    assert_eq!(p.board.s.state(), LinkState::Connecting);
    p.connected = true;
    p.run_for(Duration::from_millis(600));
    assert!(p.board.s.is_up() && p.host.s.is_up());
    assert_eq!((p.board.ups(), p.host.ups()), (1, 1));
}

#[test]
fn capabilities_and_limits_are_negotiated() {
    let mut b = board_config();
    b.capabilities = Capabilities::IPV6;
    b.max_bundle = 16 * 1024;
    b.max_mtu = 1500;
    let mut p = LinkPair::new(b, host_config());
    p.up();
    let h = p.host.s.negotiated().unwrap();
    assert_eq!(h.capabilities, Capabilities::IPV6);
    assert_eq!(h.max_bundle, 16 * 1024);
    assert_eq!(h.max_mtu, 1500);
    assert_eq!(p.host.s.tx_max_bundle(), 16 * 1024);
    assert_eq!(p.board.s.negotiated().unwrap().max_mtu, 1500);
}

#[test]
fn host_link_config_reaches_the_board() {
    let mut p = LinkPair::default_pair();
    p.up();
    let lcs: Vec<_> = p
        .board
        .events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::LinkConfig(lc) => Some(lc.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(lcs, vec![link_config()]);
    // A changed configuration is pushed while up.
    let mut lc2 = link_config();
    lc2.mtu = 9000;
    p.host.s.set_link_config(lc2.clone());
    p.run_for(Duration::from_millis(10));
    assert_eq!(p.board.events.last(), Some(&SessionEvent::LinkConfig(lc2)));
    // The host never accepts a LinkConfig.
    p.host.receive(
        p.now,
        &control_bundle(&[Control::LinkConfig(link_config())]),
    );
    assert_eq!(p.host.s.counters().rx_unexpected_controls, 1);
}

#[test]
fn board_without_link_config_asks_again() {
    // The host has no configuration at first: the board stays up and keeps saying Hello.
    let mut h = host_config();
    h.link_config = None;
    let mut p = LinkPair::new(board_config(), h);
    p.up();
    let t0 = p.transfers;
    p.run_for(Duration::from_secs(2));
    assert!(p.board.s.is_up());
    assert!(p.transfers > t0);
    p.host.s.set_link_config(link_config());
    p.run_for(Duration::from_millis(10));
    assert!(
        p.board
            .events
            .contains(&SessionEvent::LinkConfig(link_config()))
    );
}

#[test]
fn ip_packets_flow_both_ways() {
    let mut p = LinkPair::default_pair();
    p.up();
    for i in 0..100u16 {
        p.board.tx_ip.push_back(vec![0x45; 100 + usize::from(i)]);
        p.host.tx_ip.push_back(vec![0x60; 1500]);
    }
    p.run_for(Duration::from_millis(10));
    assert_eq!(p.host.rx_ip.len(), 100);
    assert_eq!(p.board.rx_ip.len(), 100);
    assert!(
        p.host
            .rx_ip
            .iter()
            .enumerate()
            .all(|(i, (ch, d))| *ch == 0 && d.len() == 100 + i)
    );
    assert_eq!(p.host.s.counters().rx_packets, 100);
    assert_eq!(p.board.s.counters().tx_packets, 100);
}

#[test]
fn keepalive_measures_rtt_and_keeps_the_link_up() {
    let mut p = LinkPair::default_pair();
    p.up();
    assert_eq!(p.board.s.rtt(), None);
    p.run_for(Duration::from_secs(30));
    assert!(p.board.s.is_up() && p.host.s.is_up());
    assert_eq!(p.board.s.rtt(), Some(2 * LATENCY));
    assert_eq!(p.host.s.rtt(), Some(2 * LATENCY));
    assert!(p.board.downs().is_empty());
    assert_eq!(p.board.s.counters().peer_timeouts, 0);
    // About one keepalive and one ack per second each way, plus the start.
    let tx = p.board.s.counters().tx_controls;
    assert!((50..=75).contains(&tx), "{tx}");
}

#[test]
fn peer_timeout_then_recovery() {
    let mut p = LinkPair::default_pair();
    p.up();
    p.connected = false;
    p.run_for(Duration::from_secs(4));
    assert!(p.board.s.is_up(), "peer_timeout is 5 s");
    p.run_for(Duration::from_millis(1100));
    assert_eq!(p.board.s.state(), LinkState::Down);
    assert_eq!(p.host.s.state(), LinkState::Down);
    assert_eq!(p.board.downs(), vec![DownReason::Timeout]);
    assert_eq!(p.host.downs(), vec![DownReason::Timeout]);
    assert_eq!(p.board.s.counters().peer_timeouts, 1);
    assert!(p.board.s.negotiated().is_none());
    // Hello retries while down are bounded by hello_interval.
    let t0 = p.transfers;
    p.run_for(Duration::from_secs(10));
    let hellos = p.transfers - t0;
    assert!((35..=45).contains(&hellos), "{hellos}");
    assert_eq!(p.board.s.counters().peer_timeouts, 1);
    p.connected = true;
    p.run_for(Duration::from_millis(600));
    assert!(p.board.s.is_up() && p.host.s.is_up());
    assert_eq!((p.board.ups(), p.host.ups()), (2, 2));
    assert_eq!(
        p.board
            .events
            .iter()
            .filter(|e| matches!(e, SessionEvent::LinkConfig(_)))
            .count(),
        2
    );
}

#[test]
fn reset_starts_over() {
    let mut p = LinkPair::default_pair();
    p.up();
    let now = p.now;
    p.board.s.reset(now);
    p.board.drain();
    assert_eq!(p.board.downs(), vec![DownReason::Reset]);
    assert_eq!(p.board.s.state(), LinkState::Connecting);
    assert!(p.board.s.has_pending_control());
    p.run_for(Duration::from_millis(50));
    assert!(p.board.s.is_up() && p.host.s.is_up());
    assert_eq!(p.board.ups(), 2);
    // The host saw a fresh Hello (a restarted peer) and re-announced itself and the config.
    assert_eq!(p.host.ups(), 2);
    // Reset while not up reports nothing.
    let mut s = Session::new(board_config(), now);
    s.reset(now);
    assert_eq!(s.poll_event(), None);
}

#[test]
fn bye_takes_the_link_down() {
    let mut p = LinkPair::default_pair();
    p.up();
    p.host.s.close(ByeReason::Shutdown, "host exiting");
    p.run_for(Duration::from_millis(4));
    assert_eq!(
        p.board.downs(),
        vec![DownReason::Bye(Bye {
            reason: ByeReason::Shutdown,
            message: "host exiting".into()
        })]
    );
    assert_eq!(p.board.s.state(), LinkState::Down);
    // The host process is gone: nothing answers, the board keeps retrying Hello.
    p.connected = false;
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.board.s.state(), LinkState::Down);
    assert_eq!(p.board.s.poll_timeout().map(|t| t > p.now), Some(true));
}

#[test]
fn version_mismatch_is_an_error_a_bye_and_a_counter() {
    let now = Instant::from_millis(5);
    let mut host = Side::new(host_config(), now);
    host.receive(now, &control_bundle(&[board_hello(0, Role::Board)]));
    assert_eq!(host.s.counters().version_mismatches, 1);
    assert_eq!(host.s.state(), LinkState::Connecting);
    assert_eq!(
        host.events,
        vec![SessionEvent::Error(FrameError::UnsupportedPeerVersion {
            peer: 0,
            min: 1,
            max: 1
        })]
    );
    let t = host.transmit().unwrap();
    let b = Bundle::new_checked(&t[..], DEFAULT_MAX_BUNDLE).unwrap();
    let first = b.records().next().unwrap().unwrap();
    let Ok(Control::Bye(bye)) = Control::parse(first.payload) else {
        panic!("expected a Bye first")
    };
    assert_eq!(bye.reason, ByeReason::VersionMismatch);
    assert!(bye.message.contains("version 0"), "{}", bye.message);
    // A newer peer is fine: both use our version.
    host.receive(now, &control_bundle(&[board_hello(7, Role::Board)]));
    assert!(host.s.is_up());
    assert_eq!(host.s.negotiated().unwrap().version, 1);
}

#[test]
fn wrong_role_and_tiny_limits_are_refused() {
    let now = Instant::ZERO;
    let mut host = Side::new(host_config(), now);
    for role in [Role::Host, Role::Unknown(9)] {
        host.receive(now, &control_bundle(&[board_hello(1, role)]));
    }
    let Control::Hello(mut tiny) = board_hello(1, Role::Board) else {
        unreachable!()
    };
    tiny.max_bundle = 1024;
    host.receive(now, &control_bundle(&[Control::Hello(tiny)]));
    assert_eq!(host.s.state(), LinkState::Connecting);
    assert_eq!(host.s.counters().rx_bad_controls, 3);
    let reasons: Vec<_> = host
        .events
        .iter()
        .map(|e| match e {
            SessionEvent::Error(FrameError::BadControl { reason, .. }) => *reason,
            e => panic!("unexpected {e:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "peer has the wrong role",
            "peer has the wrong role",
            "peer limits below the minimum"
        ]
    );
}

#[test]
fn unknown_control_kind_is_skipped() {
    let now = Instant::ZERO;
    let mut board = Side::new(board_config(), now);
    let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
    let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
    w.push(shared_frame::RecordKind::Control, 0, &[0x7f, 1, 2, 3])
        .unwrap();
    w.push(shared_frame::RecordKind::Unknown(33), 0, b"future")
        .unwrap();
    w.push_ip(0, b"packet").unwrap();
    let n = w.finish();
    board.receive(now, &buf[..n]);
    assert!(board.errors.is_empty());
    assert!(board.events.is_empty());
    assert_eq!(board.rx_ip, vec![(0, b"packet".to_vec())]);
    let c = board.s.counters();
    assert_eq!(c.rx_unknown_controls, 1);
    assert_eq!(c.rx_unknown_records, 1);
    assert_eq!(c.rx_controls, 1);
}

#[test]
fn control_flood_is_bounded() {
    let now = Instant::ZERO;
    let mut board = Side::new(board_config(), now);
    let stats = Control::Stats(Stats {
        counters: vec![(StatId::RX_BYTES, 1)],
    });
    let ka = Control::Keepalive(shared_frame::Keepalive {
        seq: 1,
        timestamp_us: 1,
    });
    let bad = Control::Unknown { kind: 1 }; // a Hello with no body: malformed
    let mut msgs = Vec::new();
    for _ in 0..400 {
        msgs.extend([stats.clone(), ka.clone(), bad.clone()]);
    }
    for chunk in msgs.chunks(1000) {
        board
            .s
            .handle_bundle(now, &control_bundle(chunk), |_, _| {})
            .unwrap();
    }
    // The event queue is capped; the rest is counted, not stored.
    let mut events = 0;
    while board.s.poll_event().is_some() {
        events += 1;
    }
    assert_eq!(events, shared_frame::session::MAX_EVENTS);
    let c = board.s.counters().clone();
    assert_eq!(c.events_dropped, 800 - 64);
    assert_eq!(c.rx_bad_controls, 400);
    // 400 keepalives leave one ack pending, not 400.
    let t = board.transmit().unwrap();
    let acks = Bundle::new_checked(&t[..], DEFAULT_MAX_BUNDLE)
        .unwrap()
        .records()
        .filter(|r| {
            matches!(
                Control::parse(r.as_ref().unwrap().payload),
                Ok(Control::KeepaliveAck(_))
            )
        })
        .count();
    assert_eq!(acks, 1);
}

#[test]
fn stats_travel_to_the_peer() {
    let mut p = LinkPair::default_pair();
    p.up();
    p.board.s.queue_stats();
    p.run_for(Duration::from_millis(10));
    let Some(SessionEvent::PeerStats(s)) = p
        .host
        .events
        .iter()
        .find(|e| matches!(e, SessionEvent::PeerStats(_)))
    else {
        panic!("no stats: {:?}", p.host.events)
    };
    let rx = s.counters.iter().find(|(id, _)| *id == StatId::RX_BUNDLES);
    assert!(rx.is_some_and(|&(_, v)| v > 0), "{s:?}");
}

#[test]
fn a_bad_transfer_is_dropped_alone() {
    let mut p = LinkPair::default_pair();
    p.up();
    let now = p.now;
    let mut good = Vec::new();
    {
        let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
        w.push_ip(0, b"hello").unwrap();
        let n = w.finish_usb(MPS);
        good.extend_from_slice(&buf[..n]);
    }
    let mut bad = good.clone();
    bad[0] = 0;
    p.host.receive(now, &bad);
    p.host.receive(now, &good[..good.len() - 1]);
    p.host.receive(now, &good);
    assert_eq!(p.host.rx_ip, vec![(0, b"hello".to_vec())]);
    assert_eq!(p.host.s.counters().rx_bad_bundles, 2);
    assert!(p.host.s.is_up());
}
