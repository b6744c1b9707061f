//! The link session: a sans-IO state machine shared by the board daemon and the host.
//!
//! # Theory of operation
//!
//! Both ends run one [`Session`] per link (one USB connection, one stream connection). The driver
//! feeds every received bundle to [`Session::handle_bundle`], which hands IP packets straight to a
//! callback (zero-copy) and consumes control records. Whenever the driver builds a bundle to send, it
//! first lets [`Session::poll_control`] append pending control records, then appends IP packets. It
//! calls [`Session::handle_timeout`] when [`Session::poll_timeout`] says so and drains
//! [`Session::poll_event`] after each call. The session never reads a clock and never does I/O.
//!
//! # Events and states
//!
//! | state        | entered when                                   | leaves when                         |
//! |--------------|------------------------------------------------|-------------------------------------|
//! | `Connecting` | created, or [`Session::reset`] (link replaced) | a valid peer Hello: `Up`            |
//! | `Up`         | a valid peer Hello                             | peer timeout or Bye: `Down`         |
//! | `Down`       | no bundle for `peer_timeout`, or a peer Bye    | a valid peer Hello: `Up`            |
//!
//! - Each side sends Hello on start and every `hello_interval` while not `Up`. A Hello without
//!   [`HELLO_FLAG_REPLY`] is answered with a Hello that has it, so a restarted peer learns about us
//!   at once and two replies never ping-pong.
//! - The host sends its LinkConfig after every peer Hello; a board that is `Up` without a LinkConfig
//!   for `hello_interval` sends a Hello again, which makes the host repeat both.
//! - While `Up`, each side sends a Keepalive every `keepalive_interval`; the peer echoes it
//!   (KeepaliveAck), which gives the round-trip time. Any valid bundle counts as proof of life.
//!
//! # Version negotiation
//!
//! Hello carries the highest protocol version the sender speaks. Both sides use
//! `min(own, peer)`; if that is below [`MIN_PROTOCOL_VERSION`] the link cannot work: the session
//! counts it, reports [`FrameError::UnsupportedPeerVersion`] as an event and sends a Bye with
//! [`ByeReason::VersionMismatch`]. Capabilities are the intersection of both sides' bits. Bundles
//! carrying Hello always use framing version 1, so Hellos are understood across versions.
//!
//! # Limits
//!
//! Pending control output is a fixed set of slots (one per kind), and the event queue holds at most
//! [`MAX_EVENTS`] entries (overflow is counted), so a peer flooding control records cannot make the
//! session allocate without bound.

use alloc::collections::VecDeque;
use alloc::string::String;
use core::time::Duration;

use crate::bundle::{
    Bundle, BundleWriter, DEFAULT_MAX_BUNDLE, MAX_BUNDLE_LIMIT, MIN_MAX_BUNDLE, RecordKind,
};
use crate::control::{
    Bye, ByeReason, Capabilities, Control, HELLO_FLAG_REPLY, Hello, Keepalive, LinkConfig,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Role, StatId, Stats,
};
use crate::{FrameError, Instant};

/// Most events queued before the driver drains them.
pub const MAX_EVENTS: usize = 64;

/// Default link MTU both ends announce (see docs/benchmarks.md for why it is large).
pub const DEFAULT_MTU: u32 = 65520;

/// How a session behaves; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Our role.
    pub role: Role,
    /// Our identity string (board serial, or host name and version).
    pub identity: String,
    /// Capabilities we implement.
    pub capabilities: Capabilities,
    /// Largest bundle we can receive.
    pub max_bundle: usize,
    /// Largest IP packet we can receive.
    pub max_mtu: u32,
    /// Hello retry period while not `Up`.
    pub hello_interval: Duration,
    /// Keepalive period while `Up`.
    pub keepalive_interval: Duration,
    /// Silence after which the peer is declared gone.
    pub peer_timeout: Duration,
    /// Host only: the configuration offered to the board.
    pub link_config: Option<LinkConfig>,
}

impl SessionConfig {
    /// Defaults for `role`.
    pub fn new(role: Role, identity: impl Into<String>) -> Self {
        Self {
            role,
            identity: identity.into(),
            capabilities: Capabilities::ALL,
            max_bundle: DEFAULT_MAX_BUNDLE,
            max_mtu: DEFAULT_MTU,
            hello_interval: Duration::from_millis(500),
            keepalive_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
            link_config: None,
        }
    }
}

/// The session's view of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Waiting for the first peer Hello.
    Connecting,
    /// Peer known and alive.
    Up,
    /// Peer timed out or said Bye; Hello is being retried.
    Down,
}

/// What both sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Protocol version in use.
    pub version: u8,
    /// Capabilities both sides implement.
    pub capabilities: Capabilities,
    /// Largest bundle to send to the peer.
    pub max_bundle: usize,
    /// Largest IP packet to send to the peer.
    pub max_mtu: u32,
    /// The peer's Hello.
    pub peer: Hello,
}

/// Why the link went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// No bundle for `peer_timeout`.
    Timeout,
    /// The peer said Bye.
    Bye(Bye),
    /// The driver replaced the link ([`Session::reset`]).
    Reset,
}

/// Something the driver should act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The peer is known; (re)apply anything that depends on it.
    Up(Negotiated),
    /// Board only: the host's configuration arrived (also on repeats; apply idempotently).
    LinkConfig(LinkConfig),
    /// The link is down.
    Down(DownReason),
    /// The peer's counters.
    PeerStats(Stats),
    /// A protocol error worth a log line (already counted).
    Error(FrameError),
}

/// Counters of everything the session saw; every drop has its own counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Valid bundles received.
    pub rx_bundles: u64,
    /// IP packets delivered.
    pub rx_packets: u64,
    /// IP bytes delivered.
    pub rx_bytes: u64,
    /// Control messages received.
    pub rx_controls: u64,
    /// Bundles dropped whole (bad magic, version, length).
    pub rx_bad_bundles: u64,
    /// Records dropped (bad kind, overrun, truncated).
    pub rx_bad_records: u64,
    /// Control messages that did not parse.
    pub rx_bad_controls: u64,
    /// Records of unknown kind skipped.
    pub rx_unknown_records: u64,
    /// Control messages of unknown kind skipped.
    pub rx_unknown_controls: u64,
    /// Empty IP records dropped.
    pub rx_empty_packets: u64,
    /// Control messages that make no sense for our role (e.g. LinkConfig at the host).
    pub rx_unexpected_controls: u64,
    /// Peer Hellos with an unsupported version.
    pub version_mismatches: u64,
    /// Times the peer was declared gone for silence.
    pub peer_timeouts: u64,
    /// Events dropped because the driver did not drain them.
    pub events_dropped: u64,
    /// IP packets sent (reported by the driver through [`Session::record_tx`]).
    pub tx_packets: u64,
    /// IP bytes sent.
    pub tx_bytes: u64,
    /// Packets the driver dropped before sending ([`Session::record_tx_drop`]).
    pub tx_drops: u64,
    /// Control messages sent.
    pub tx_controls: u64,
}

impl Counters {
    /// Every counter with its field name, in declaration order (for `status` output).
    pub fn named(&self) -> [(&'static str, u64); 18] {
        [
            ("rx_bundles", self.rx_bundles),
            ("rx_packets", self.rx_packets),
            ("rx_bytes", self.rx_bytes),
            ("rx_controls", self.rx_controls),
            ("rx_bad_bundles", self.rx_bad_bundles),
            ("rx_bad_records", self.rx_bad_records),
            ("rx_bad_controls", self.rx_bad_controls),
            ("rx_unknown_records", self.rx_unknown_records),
            ("rx_unknown_controls", self.rx_unknown_controls),
            ("rx_empty_packets", self.rx_empty_packets),
            ("rx_unexpected_controls", self.rx_unexpected_controls),
            ("version_mismatches", self.version_mismatches),
            ("peer_timeouts", self.peer_timeouts),
            ("events_dropped", self.events_dropped),
            ("tx_packets", self.tx_packets),
            ("tx_bytes", self.tx_bytes),
            ("tx_drops", self.tx_drops),
            ("tx_controls", self.tx_controls),
        ]
    }
}

/// The per-link state machine. See the module docs.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    state: LinkState,
    negotiated: Option<Negotiated>,
    have_link_config: bool,
    last_rx: Instant,
    next_hello: Instant,
    next_keepalive: Instant,
    keepalive_seq: u32,
    rtt: Option<Duration>,
    // Pending control output: one slot per kind (bounded by construction).
    send_bye: Option<Bye>,
    send_hello: Option<u8>,
    send_link_config: bool,
    send_keepalive_ack: Option<Keepalive>,
    send_keepalive: Option<Keepalive>,
    send_stats: Option<Stats>,
    events: VecDeque<SessionEvent>,
    counters: Counters,
}

impl Session {
    /// A new session in `Connecting` state with a Hello queued.
    pub fn new(mut cfg: SessionConfig, now: Instant) -> Self {
        cfg.max_bundle = cfg.max_bundle.clamp(MIN_MAX_BUNDLE, MAX_BUNDLE_LIMIT);
        let next_hello = now + cfg.hello_interval;
        Self {
            cfg,
            state: LinkState::Connecting,
            negotiated: None,
            have_link_config: false,
            last_rx: now,
            // The first Hello is already queued; the retry timer starts now.
            next_hello,
            next_keepalive: now,
            keepalive_seq: 0,
            rtt: None,
            send_bye: None,
            send_hello: Some(0),
            send_link_config: false,
            send_keepalive_ack: None,
            send_keepalive: None,
            send_stats: None,
            events: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The link state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// True when `Up`.
    pub fn is_up(&self) -> bool {
        self.state == LinkState::Up
    }

    /// What was negotiated with the current peer, if any.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The largest bundle to send: negotiated, or the default before negotiation.
    pub fn tx_max_bundle(&self) -> usize {
        self.negotiated
            .as_ref()
            .map_or(DEFAULT_MAX_BUNDLE, |n| n.max_bundle)
    }

    /// The last measured keepalive round trip.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The driver reports IP packets it sent.
    pub fn record_tx(&mut self, packets: u64, bytes: u64) {
        self.counters.tx_packets += packets;
        self.counters.tx_bytes += bytes;
    }

    /// The driver reports IP packets it dropped before sending.
    pub fn record_tx_drop(&mut self, packets: u64) {
        self.counters.tx_drops += packets;
    }

    /// The link was replaced (USB replug, stream reconnect): start over with Hello.
    pub fn reset(&mut self, now: Instant) {
        if self.state == LinkState::Up {
            self.push_event(SessionEvent::Down(DownReason::Reset));
        }
        self.state = LinkState::Connecting;
        self.negotiated = None;
        self.have_link_config = false;
        self.last_rx = now;
        self.send_bye = None;
        self.send_hello = Some(0);
        self.send_link_config = false;
        self.send_keepalive = None;
        self.send_keepalive_ack = None;
        self.next_hello = now + self.cfg.hello_interval;
    }

    /// Host: change the configuration offered to the board and send it if the link is up.
    pub fn set_link_config(&mut self, lc: LinkConfig) {
        self.cfg.link_config = Some(lc);
        self.send_link_config = self.state == LinkState::Up;
    }

    /// Queues our counters for the peer (replaces any not yet sent).
    pub fn queue_stats(&mut self) {
        let c = &self.counters;
        let counters = alloc::vec![
            (StatId::RX_BUNDLES, c.rx_bundles),
            (StatId::RX_PACKETS, c.rx_packets),
            (StatId::RX_BYTES, c.rx_bytes),
            (StatId::TX_PACKETS, c.tx_packets),
            (StatId::TX_BYTES, c.tx_bytes),
            (
                StatId::RX_ERRORS,
                c.rx_bad_bundles + c.rx_bad_records + c.rx_bad_controls
            ),
            (StatId::TX_DROPS, c.tx_drops),
        ];
        self.send_stats = Some(Stats { counters });
    }

    /// Queues a Bye (orderly shutdown); send it with [`poll_control`](Self::poll_control).
    pub fn close(&mut self, reason: ByeReason, message: impl Into<String>) {
        self.send_bye = Some(Bye {
            reason,
            message: message.into(),
        });
    }

    /// Next event for the driver.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    fn push_event(&mut self, ev: SessionEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.counters.events_dropped += 1;
        } else {
            self.events.push_back(ev);
        }
    }

    /// Handles one received bundle (a USB transfer or a bundle from the stream decoder): IP packets go
    /// to `on_ip(channel, packet)` in order, control records update the session.
    ///
    /// A bundle-level error drops the whole bundle; a record-level error drops the rest of the bundle
    /// after delivering the records before it. Both are counted and returned for logging; the session
    /// stays usable.
    pub fn handle_bundle(
        &mut self,
        now: Instant,
        data: &[u8],
        mut on_ip: impl FnMut(u8, &[u8]),
    ) -> Result<(), FrameError> {
        let bundle = match Bundle::new_checked(data, self.cfg.max_bundle) {
            Ok(b) => b,
            Err(e) => {
                self.counters.rx_bad_bundles += 1;
                return Err(e);
            }
        };
        self.counters.rx_bundles += 1;
        self.last_rx = now;
        let mut result = Ok(());
        for rec in bundle.records() {
            match rec {
                Ok(r) => match r.kind {
                    RecordKind::Ip if r.payload.is_empty() => self.counters.rx_empty_packets += 1,
                    RecordKind::Ip => {
                        self.counters.rx_packets += 1;
                        self.counters.rx_bytes += r.payload.len() as u64;
                        on_ip(r.channel, r.payload);
                    }
                    RecordKind::Control => self.handle_control(now, r.payload),
                    RecordKind::Unknown(_) => self.counters.rx_unknown_records += 1,
                },
                Err(e @ FrameError::BadRecordKind(_)) => {
                    self.counters.rx_bad_records += 1;
                    result = Err(e);
                }
                Err(e) => {
                    self.counters.rx_bad_records += 1;
                    return Err(e);
                }
            }
        }
        result
    }

    fn handle_control(&mut self, now: Instant, payload: &[u8]) {
        let msg = match Control::parse(payload) {
            Ok(m) => m,
            Err(e) => {
                self.counters.rx_bad_controls += 1;
                self.push_event(SessionEvent::Error(e));
                return;
            }
        };
        self.counters.rx_controls += 1;
        match msg {
            Control::Hello(h) => self.handle_hello(now, h),
            Control::LinkConfig(lc) if self.cfg.role == Role::Board => {
                self.have_link_config = true;
                self.push_event(SessionEvent::LinkConfig(lc));
            }
            Control::Keepalive(k) => self.send_keepalive_ack = Some(k),
            Control::KeepaliveAck(k) if k.seq == self.keepalive_seq => {
                self.rtt =
                    Some(now.saturating_duration_since(Instant::from_micros(k.timestamp_us)));
            }
            Control::KeepaliveAck(_) => {} // a late echo of an older probe
            Control::Stats(s) => self.push_event(SessionEvent::PeerStats(s)),
            Control::Bye(b) => {
                if self.state == LinkState::Up {
                    self.state = LinkState::Down;
                    self.negotiated = None;
                    self.have_link_config = false;
                    self.next_hello = now + self.cfg.hello_interval;
                }
                self.push_event(SessionEvent::Down(DownReason::Bye(b)));
            }
            Control::Unknown { .. } => self.counters.rx_unknown_controls += 1,
            Control::LinkConfig(_) => self.counters.rx_unexpected_controls += 1,
        }
    }

    fn handle_hello(&mut self, now: Instant, h: Hello) {
        let version = h.version.min(PROTOCOL_VERSION);
        if version < MIN_PROTOCOL_VERSION {
            self.counters.version_mismatches += 1;
            let e = FrameError::UnsupportedPeerVersion {
                peer: h.version,
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
            };
            self.push_event(SessionEvent::Error(e));
            self.send_bye = Some(Bye {
                reason: ByeReason::VersionMismatch,
                message: alloc::format!("{e}"),
            });
            return;
        }
        let expected = match self.cfg.role {
            Role::Board => Role::Host,
            _ => Role::Board,
        };
        if h.role != expected || (h.max_bundle as usize) < MIN_MAX_BUNDLE || h.max_mtu < 576 {
            self.counters.rx_bad_controls += 1;
            let reason = if h.role == expected {
                "peer limits below the minimum"
            } else {
                "peer has the wrong role"
            };
            self.push_event(SessionEvent::Error(FrameError::BadControl {
                kind: crate::control::kind::HELLO,
                reason,
            }));
            return;
        }
        let is_reply = h.flags & HELLO_FLAG_REPLY != 0;
        if !is_reply {
            self.send_hello = Some(HELLO_FLAG_REPLY);
        }
        // A reply from the peer we are already up with (both sides sent Hello at once) changes
        // nothing: no second Up event, no second LinkConfig.
        let same_peer = self.state == LinkState::Up
            && self.negotiated.as_ref().is_some_and(|n| {
                Hello {
                    flags: h.flags,
                    ..n.peer.clone()
                } == h
            });
        if is_reply && same_peer {
            return;
        }
        let n = Negotiated {
            version,
            capabilities: self.cfg.capabilities.intersect(h.capabilities),
            max_bundle: (h.max_bundle as usize).min(MAX_BUNDLE_LIMIT),
            max_mtu: h.max_mtu.min(self.cfg.max_mtu),
            peer: h,
        };
        self.state = LinkState::Up;
        self.negotiated = Some(n.clone());
        self.next_keepalive = now + self.cfg.keepalive_interval;
        self.next_hello = now + self.cfg.hello_interval;
        if self.cfg.role == Role::Host && self.cfg.link_config.is_some() {
            self.send_link_config = true;
        }
        self.push_event(SessionEvent::Up(n));
    }

    /// True when control records wait to be sent: the driver should send a bundle even if it has no
    /// IP packets.
    pub fn has_pending_control(&self) -> bool {
        self.send_bye.is_some()
            || self.send_hello.is_some()
            || (self.send_link_config && self.state == LinkState::Up)
            || self.send_keepalive_ack.is_some()
            || self.send_keepalive.is_some()
            || self.send_stats.is_some()
    }

    /// Appends pending control records to `w`; returns how many. Records that do not fit stay
    /// pending for the next bundle.
    pub fn poll_control(&mut self, w: &mut BundleWriter<'_>) -> usize {
        let n = self.append_control(w);
        self.counters.tx_controls += n as u64;
        n
    }

    fn append_control(&mut self, w: &mut BundleWriter<'_>) -> usize {
        let mut n = 0;
        if let Some(b) = self.send_bye.take() {
            if w.push_control(&Control::Bye(b.clone())).is_err() {
                self.send_bye = Some(b);
                return n;
            }
            n += 1;
        }
        if let Some(flags) = self.send_hello {
            let hello = Control::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: self.cfg.role,
                flags,
                capabilities: self.cfg.capabilities,
                max_bundle: self.cfg.max_bundle as u32,
                max_mtu: self.cfg.max_mtu,
                identity: self.cfg.identity.clone(),
            });
            if w.push_control(&hello).is_err() {
                return n;
            }
            self.send_hello = None;
            n += 1;
        }
        if self.send_link_config && self.state == LinkState::Up {
            if let Some(lc) = &self.cfg.link_config {
                if w.push_control(&Control::LinkConfig(lc.clone())).is_err() {
                    return n;
                }
                n += 1;
            }
            self.send_link_config = false;
        }
        let slots = [
            self.send_keepalive_ack.take().map(Control::KeepaliveAck),
            self.send_keepalive.take().map(Control::Keepalive),
            self.send_stats.take().map(Control::Stats),
        ];
        for msg in slots.into_iter().flatten() {
            if w.push_control(&msg).is_ok() {
                n += 1;
            } else {
                match msg {
                    Control::KeepaliveAck(k) => self.send_keepalive_ack = Some(k),
                    Control::Keepalive(k) => self.send_keepalive = Some(k),
                    Control::Stats(s) => self.send_stats = Some(s),
                    _ => {}
                }
            }
        }
        n
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next. Call again after every
    /// `handle_*` call, since they move the deadlines.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            LinkState::Up if self.cfg.role == Role::Board && !self.have_link_config => Some(
                self.next_keepalive
                    .min(self.last_rx + self.cfg.peer_timeout)
                    .min(self.next_hello),
            ),
            LinkState::Up => Some(
                self.next_keepalive
                    .min(self.last_rx + self.cfg.peer_timeout),
            ),
            LinkState::Connecting | LinkState::Down => Some(self.next_hello),
        }
    }

    /// Runs the timers due at `now`: Hello retries, keepalives, peer timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == LinkState::Up && now >= self.last_rx + self.cfg.peer_timeout {
            self.state = LinkState::Down;
            self.negotiated = None;
            self.have_link_config = false;
            self.counters.peer_timeouts += 1;
            self.push_event(SessionEvent::Down(DownReason::Timeout));
            self.next_hello = now;
        }
        let want_hello =
            self.state != LinkState::Up || (self.cfg.role == Role::Board && !self.have_link_config);
        if want_hello && now >= self.next_hello {
            self.send_hello.get_or_insert(0);
            self.next_hello = now + self.cfg.hello_interval;
        }
        if self.state == LinkState::Up && now >= self.next_keepalive {
            self.keepalive_seq = self.keepalive_seq.wrapping_add(1);
            self.send_keepalive = Some(Keepalive {
                seq: self.keepalive_seq,
                timestamp_us: now.as_micros(),
            });
            self.next_keepalive = now + self.cfg.keepalive_interval;
        }
    }
}
