//! The sans-IO core between the TUN device and the link: bundles out, records in, the link session,
//! carrier and every drop counter. The driver ([`crate::driver`]) owns the clock and the file
//! descriptors and calls in here; tests drive it with a fake clock and an in-memory peer.
//!
//! # Theory of operation
//!
//! - **TUN → link.** The driver reads each TUN packet straight into the flat staging buffer
//!   ([`Pump::tun_buffer`], then [`Pump::handle_tun_read`]; [`Pump::handle_tun_packet`] copies one
//!   in for callers that have it elsewhere). The driver asks [`Pump::poll_transmit`] for a bundle
//!   whenever the link has a free transfer slot: when the endpoint is idle, every packet leaves at
//!   once (no flush timer), together with those the device already held behind it
//!   ([`Pump::drain_tun`]); while all slots are busy, packets keep aggregating into the next
//!   bundle. [`Pump::can_accept_tun`] keeps the reads going while the bundle being filled has
//!   room for a maximum-size packet or for half a bundle, whichever is less, and then is false:
//!   the driver stops reading the TUN device, so the kernel queue (not us) absorbs the burst.
//!   A packet read into less room than it needs is staged all the same and starts the next
//!   bundle (it is moved to the front of staging when the first one leaves). So at an MTU of
//!   up to half a bundle nothing ever waits for a second bundle, and at a larger one (65520:
//!   one full packet per 64 KiB bundle) small packets still aggregate into a bundle up to half
//!   full instead of leaving one per bundle behind a staged one. The host's core needs no such
//!   rule: it fills each bundle from the NAT's queue when a slot is free.
//!   Bundles are built in buffers handed in through [`Pump::recycle`] (the driver hands in one
//!   from the link's buffer pool whenever [`Pump::has_spare`] is false; the link task puts sent
//!   bundles back there) and built again in place: no allocation and no zeroing of the reused part.
//! - **Link → TUN.** [`Pump::handle_link_bundle`] hands each IP record to the driver's callback
//!   (zero-copy, a sub-slice of the received transfer); control records go to the
//!   [`Session`](shared_frame::Session).
//! - **Carrier** is on exactly while the link is attached (FunctionFS enabled, stream connected),
//!   the session is `Up` (a valid host Hello within the keepalive timeout) and the host's last
//!   LinkConfig was not refused. Changes come out as [`Action::Carrier`]; the host's LinkConfig
//!   comes out as [`Action::ApplyLinkConfig`] (once per distinct configuration) when it passes
//!   [`linkcheck::check`] after the board's static overrides; a refused one is counted
//!   (`link_config_refused`), logged (rate-limited) and keeps the carrier off, across link
//!   restarts, until the host offers a good one.
//! - **A silent host.** When the session times out on a stream link (a half-open TCP connection,
//!   a host that stopped answering), the pump detaches from it, counts it
//!   (`links_closed_silent`), logs one line and tells the driver to close it
//!   ([`Pump::poll_close_link`]), so the stream task redials with its backoff instead of holding a
//!   dead peer. A USB link stays attached: the host, not the board, re-enumerates it.
//!
//! # Events and states
//!
//! | input                         | effect                                                        |
//! |-------------------------------|---------------------------------------------------------------|
//! | `handle_link_up`              | session restarts with Hello; carrier waits for the peer Hello  |
//! | peer Hello (in a bundle)      | session `Up` → carrier on                                     |
//! | `handle_link_down`            | staged packets dropped (counted), session reset, carrier off  |
//! | peer timeout / Bye            | session `Down` → carrier off, staged packets dropped          |
//! | peer timeout on a stream link | also detached; `poll_close_link` → the driver closes it       |
//! | peer Hello, smaller bundles   | staged packets that no longer fit one are dropped (counted)   |
//! | refused LinkConfig            | counted, logged, carrier off; a good LinkConfig lifts it       |
//!
//! # Limits
//!
//! Staging holds at most one bundle of packets plus the one that starts the next (see above); its
//! buffer is at most that plus the room of one read; every bundle is at most the negotiated maximum;
//! the action queue holds at most one entry per kind of change between drains.

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::NetOverrides;
use crate::linkcheck::{self, LinkConfigError};
use shared_frame::{
    BUNDLE_HEADER_LEN, ByeReason, CHANNEL_NET, DownReason, Endpoint, Framing, Instant, LinkConfig,
    LinkState, LogLimit, MAX_RECORD_PAYLOAD, MIN_MAX_BUNDLE, RECORD_HEADER_LEN, Role, Session,
    SessionConfig, SessionEvent, Stats, USB_PAD_LEN,
};

/// Period of the Stats message sent to the host while the link is up.
pub const STATS_INTERVAL: Duration = Duration::from_secs(10);
/// Room reserved in a bundle for pending control records (a Hello with a 255-byte identity and
/// the other messages fit; what does not fit waits for the next bundle).
const CONTROL_ROOM: usize = 1024;
/// Bundle buffers kept for reuse: the link's transfers in flight plus the one being built.
const MAX_SPARE: usize = 8;
/// Most packets [`Pump::drain_tun`] stages after the read that woke the driver, so a board
/// that writes without pause still lets the driver get to its other inputs.
pub const TUN_DRAIN: usize = 64;

/// Something the driver must do to the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Set the TUN carrier.
    Carrier(bool),
    /// Apply this configuration (host offer, before static overrides).
    ApplyLinkConfig(LinkConfig),
}

/// Counters of the pump; every drop reason has its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PumpCounters {
    /// Packets read from the TUN device.
    pub tun_rx_packets: u64,
    /// Bytes read from the TUN device.
    pub tun_rx_bytes: u64,
    /// Packets written to the TUN device.
    pub tun_tx_packets: u64,
    /// Packets the TUN device refused.
    pub tun_write_errors: u64,
    /// TUN packets dropped because the carrier was off.
    pub drop_no_carrier: u64,
    /// TUN packets larger than a record or the negotiated MTU.
    pub drop_oversize: u64,
    /// TUN packets dropped because staging was full.
    pub drop_backpressure: u64,
    /// Staged packets dropped when the link or the session went down.
    pub drop_link_lost: u64,
    /// Received IP records on a channel other than the network.
    pub rx_unknown_channel: u64,
    /// Bundles handed to the link.
    pub tx_bundles: u64,
    /// Bytes handed to the link (including framing and padding).
    pub tx_bytes: u64,
    /// Received bundles with errors (bad magic/version/length, bad records).
    pub rx_frame_errors: u64,
    /// Protocol errors the session reported (bad control, version mismatch, ...).
    pub protocol_errors: u64,
    /// Link attach events.
    pub link_ups: u64,
    /// Link detach events.
    pub link_downs: u64,
    /// Carrier on transitions.
    pub carrier_ups: u64,
    /// LinkConfigs from the host refused by [`linkcheck::check`] (the link stays down).
    pub link_config_refused: u64,
    /// Stream links closed because the host's session timed out (it went silent after setup).
    pub links_closed_silent: u64,
}

/// Pump settings.
#[derive(Debug, Clone)]
pub struct PumpConfig {
    /// Session settings (role must be Board).
    pub session: SessionConfig,
    /// Largest packet accepted from the TUN device (the TUN MTU).
    pub mtu: usize,
    /// The board's static network settings; the host's offer is checked with them applied.
    pub overrides: NetOverrides,
}

impl PumpConfig {
    /// Defaults for a board with `identity` (its serial).
    pub fn new(identity: impl Into<String>) -> Self {
        let session = SessionConfig::new(Role::Board, identity);
        let mtu = session.max_mtu as usize;
        Self {
            session,
            mtu,
            overrides: NetOverrides::default(),
        }
    }
}

/// The core; see the module docs.
#[derive(Debug)]
pub struct Pump {
    /// Session + framing + bundle assembly, shared with the host's core.
    endpoint: Endpoint,
    mtu: usize,
    carrier: bool,
    /// Flat staging: `[len u16 LE][packet]...` in `staged[..staged_len]`; the rest is the room
    /// the next TUN read goes to (allocated once, never shrunk).
    staged: Vec<u8>,
    staged_len: usize,
    staged_packets: usize,
    /// Wire size of a bundle carrying all staged packets.
    staged_wire: usize,
    /// Sent bundles handed back for reuse (at most [`MAX_SPARE`]).
    spare: Vec<Vec<u8>>,
    actions: VecDeque<Action>,
    applied: Option<LinkConfig>,
    overrides: NetOverrides,
    /// Why the host's last LinkConfig was refused (carrier stays off while set).
    refused: Option<LinkConfigError>,
    peer_stats: Option<Stats>,
    next_stats: Option<Instant>,
    /// The host went silent on a stream link: the driver must close it ([`Pump::poll_close_link`]).
    close_link: bool,
    counters: PumpCounters,
    logs: LogLimits,
}

/// One rate limit per log line about what the host sends (everything is also counted).
#[derive(Debug, Default)]
struct LogLimits {
    bad_bundle: LogLimit,
    protocol_error: LogLimit,
    refused: LogLimit,
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Pump {
    /// A pump with no link attached.
    pub fn new(cfg: PumpConfig, now: Instant) -> Self {
        Self {
            endpoint: Endpoint::new(cfg.session, now),
            mtu: cfg.mtu.min(MAX_RECORD_PAYLOAD),
            carrier: false,
            staged: Vec::new(),
            staged_len: 0,
            staged_packets: 0,
            staged_wire: BUNDLE_HEADER_LEN,
            spare: Vec::new(),
            actions: VecDeque::new(),
            applied: None,
            overrides: cfg.overrides,
            refused: None,
            peer_stats: None,
            next_stats: None,
            close_link: false,
            counters: PumpCounters::default(),
            logs: LogLimits::default(),
        }
    }

    /// The session (state, negotiated values, its counters).
    pub fn session(&self) -> &Session {
        self.endpoint.session()
    }

    /// The pump counters.
    pub fn counters(&self) -> &PumpCounters {
        &self.counters
    }

    /// Carrier as last reported.
    pub fn carrier(&self) -> bool {
        self.carrier
    }

    /// The current link's framing, if attached.
    pub fn framing(&self) -> Option<Framing> {
        self.endpoint.framing()
    }

    /// The configuration last handed out with [`Action::ApplyLinkConfig`].
    pub fn applied_link_config(&self) -> Option<&LinkConfig> {
        self.applied.as_ref()
    }

    /// Why the host's last LinkConfig was refused, while the link is kept down for it.
    pub fn link_config_refused(&self) -> Option<&LinkConfigError> {
        self.refused.as_ref()
    }

    /// The peer's last Stats.
    pub fn peer_stats(&self) -> Option<&Stats> {
        self.peer_stats.as_ref()
    }

    /// Packets waiting for a transfer slot.
    pub fn staged_packets(&self) -> usize {
        self.staged_packets
    }

    /// Largest bundle to build now.
    fn tx_cap(&self) -> usize {
        let session = self.endpoint.session();
        session
            .tx_max_bundle()
            .min(session.config().max_bundle)
            .max(MIN_MAX_BUNDLE)
    }

    /// Largest IP packet we send now.
    fn max_packet(&self) -> usize {
        let negotiated = self
            .endpoint
            .session()
            .negotiated()
            .map_or(usize::MAX, |n| n.max_mtu as usize);
        self.mtu
            .min(negotiated)
            .min(shared_frame::max_packet(self.tx_cap()))
    }

    fn fits(&self, len: usize) -> bool {
        self.staged_wire + align4(RECORD_HEADER_LEN + len) <= self.tx_cap() - USB_PAD_LEN
    }

    /// True while the bundle being filled has room for a maximum-size packet or for half a
    /// bundle, whichever is less: TUN reads go on. While false the driver must not read the TUN
    /// device (backpressure). A packet read into less room than it needs starts the next bundle.
    pub fn can_accept_tun(&self) -> bool {
        let half = shared_frame::max_packet(self.tx_cap()) / 2;
        !self.carrier || self.fits(self.max_packet().min(half))
    }

    /// Where the next TUN packet is to be read to: room for the largest IP packet right behind
    /// the staged ones, so a staged packet is not copied on its way in. Follow the read with
    /// [`handle_tun_read`](Self::handle_tun_read).
    pub fn tun_buffer(&mut self) -> &mut [u8] {
        let start = self.staged_len + 2;
        let end = start + MAX_RECORD_PAYLOAD;
        if self.staged.len() < end {
            self.staged.resize(end, 0);
        }
        &mut self.staged[start..end]
    }

    /// A packet of `len` bytes was read into [`tun_buffer`](Self::tun_buffer): stage it (or drop
    /// and count it).
    pub fn handle_tun_read(&mut self, len: usize) {
        self.counters.tun_rx_packets += 1;
        self.counters.tun_rx_bytes += len as u64;
        if !self.carrier {
            self.counters.drop_no_carrier += 1;
            self.endpoint.session_mut().record_tx_drop(1);
        } else if len == 0 || len > self.max_packet() {
            self.counters.drop_oversize += 1;
            self.endpoint.session_mut().record_tx_drop(1);
        } else if !self.fits(len) && !self.can_accept_tun() {
            // Read although `can_accept_tun` said no (only what fits the bundle is taken then).
            self.counters.drop_backpressure += 1;
            self.endpoint.session_mut().record_tx_drop(1);
        } else {
            // max_packet() <= MAX_RECORD_PAYLOAD = u16::MAX.
            let at = self.staged_len;
            self.staged[at..at + 2].copy_from_slice(&(len as u16).to_le_bytes());
            self.staged_len += 2 + len;
            self.staged_packets += 1;
            self.staged_wire += align4(RECORD_HEADER_LEN + len);
        }
    }

    /// After a TUN read, stage what else the device holds right now: `read` fills the buffer it
    /// is given and returns `Some(Ok(len))`, or `None` when nothing more is waiting (it must not
    /// block). Stops at [`TUN_DRAIN`] packets, when staging is full, or at an error (returned).
    /// Packets the board's stack wrote back to back (a handshake's last ACK and the request, a
    /// FIN and the next SYN) then leave in one bundle: an idle link would otherwise take the
    /// first alone, costing both ends a bundle, a syscall and a wake-up each.
    pub fn drain_tun(
        &mut self,
        mut read: impl FnMut(&mut [u8]) -> Option<std::io::Result<usize>>,
    ) -> std::io::Result<()> {
        for _ in 0..TUN_DRAIN {
            if !self.can_accept_tun() {
                break;
            }
            match read(self.tun_buffer()) {
                Some(Ok(n)) => self.handle_tun_read(n),
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(())
    }

    /// A packet read from the TUN device into a buffer of the caller's (copied into staging).
    pub fn handle_tun_packet(&mut self, pkt: &[u8]) {
        let n = pkt.len().min(MAX_RECORD_PAYLOAD);
        self.tun_buffer()[..n].copy_from_slice(&pkt[..n]);
        self.handle_tun_read(pkt.len());
    }

    /// A bundle from [`poll_transmit`](Self::poll_transmit) the link is done with: the next
    /// bundle is built in it (kept up to a small bound; the rest are freed).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < MAX_SPARE {
            self.spare.push(buf);
        }
    }

    /// True when the next bundle has a recycled buffer to be built in.
    pub fn has_spare(&self) -> bool {
        !self.spare.is_empty()
    }

    /// True when [`poll_transmit`](Self::poll_transmit) has something to send.
    pub fn wants_transmit(&self) -> bool {
        self.endpoint.wants_transmit(self.staged_packets > 0)
    }

    /// The next bundle to send, when the link has a free transfer slot: pending control records
    /// first, then every staged packet that fits. Call again while it returns `Some` and slots
    /// remain; call after every `handle_*`.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if !self.wants_transmit() {
            return None;
        }
        // Only as large as what is waiting (a fresh buffer is zeroed: a ping or an ACK does not
        // pay for 64 KiB), at least the protocol minimum, at most the link's cap.
        let control = if self.endpoint.session().has_pending_control() {
            CONTROL_ROOM
        } else {
            0
        };
        let size = (BUNDLE_HEADER_LEN + control + self.staged_wire + USB_PAD_LEN)
            .max(MIN_MAX_BUNDLE)
            .min(self.tx_cap());
        // A recycled buffer keeps its last bundle's bytes; only what it grows by is zeroed. The
        // writer overwrites what it uses, padding included.
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.resize(size, 0);
        let max_packet = self.max_packet();
        let staged = &mut self.staged;
        let staged_len = &mut self.staged_len;
        let staged_packets = &mut self.staged_packets;
        let staged_wire = &mut self.staged_wire;
        let counters = &mut self.counters;
        let t = self.endpoint.transmit(&mut buf, size, |w, session| {
            let (mut off, mut taken, mut packets, mut bytes) = (0, 0, 0u64, 0u64);
            while off < *staged_len {
                let len = u16::from_le_bytes([staged[off], staged[off + 1]]) as usize;
                let pkt = &staged[off + 2..off + 2 + len];
                if len > max_packet {
                    // Staged for larger bundles than the peer takes since its last Hello: it
                    // can never leave, so it must not hold up the rest (or the TUN reads).
                    counters.drop_oversize += 1;
                    session.record_tx_drop(1);
                } else if w.push_ip(CHANNEL_NET, pkt).is_err() {
                    break;
                } else {
                    packets += 1;
                    bytes += len as u64;
                }
                off += 2 + len;
                taken += 1;
                *staged_wire -= align4(RECORD_HEADER_LEN + len);
            }
            // What did not fit moves to the front: the packet that starts the next bundle (read
            // while this one was past half full, see `can_accept_tun`) or packets a control
            // record crowded out.
            staged.copy_within(off..*staged_len, 0);
            *staged_len -= off;
            *staged_packets -= taken;
            (packets, bytes)
        })?;
        let n = t.len;
        self.counters.tx_bundles += 1;
        self.counters.tx_bytes += n as u64;
        buf.truncate(n);
        Some(buf)
    }

    /// A received bundle (one USB transfer, or one bundle cut from a stream). IP packets for the
    /// network channel go to `deliver`, which returns false when the TUN write failed.
    pub fn handle_link_bundle(
        &mut self,
        now: Instant,
        data: &[u8],
        mut deliver: impl FnMut(&[u8]) -> bool,
    ) {
        let counters = &mut self.counters;
        let res = self.endpoint.handle_bundle(now, data, |channel, pkt| {
            if channel != CHANNEL_NET {
                counters.rx_unknown_channel += 1;
            } else if deliver(pkt) {
                counters.tun_tx_packets += 1;
            } else {
                counters.tun_write_errors += 1;
            }
        });
        if let Err(e) = res {
            self.counters.rx_frame_errors += 1;
            if let Some(suppressed) = self.logs.bad_bundle.check(now) {
                tracing::warn!(error = %e, count = self.counters.rx_frame_errors, suppressed, "bad bundle from the host dropped");
            }
        }
        self.process_events(now);
    }

    /// The link is attached and can carry transfers (FunctionFS enabled, stream connected).
    pub fn handle_link_up(&mut self, now: Instant, framing: Framing) {
        self.counters.link_ups += 1;
        self.endpoint.handle_link_up(now, framing);
        self.process_events(now);
    }

    /// The link is gone (unbind, disable, suspend, stream lost).
    pub fn handle_link_down(&mut self, now: Instant) {
        if self.endpoint.handle_link_down(now) {
            self.counters.link_downs += 1;
        }
        self.process_events(now);
        self.update_carrier();
    }

    /// The stream carried bytes that are not qbkit framing (the link is then replaced).
    pub fn record_link_frame_error(&mut self) {
        self.counters.rx_frame_errors += 1;
    }

    /// A packet handed out by [`handle_link_bundle`](Self::handle_link_bundle) could not be
    /// written to the TUN device after all.
    pub fn record_tun_write_error(&mut self) {
        self.counters.tun_tx_packets = self.counters.tun_tx_packets.saturating_sub(1);
        self.counters.tun_write_errors += 1;
    }

    /// Queues a Bye for an orderly shutdown; send it with [`poll_transmit`](Self::poll_transmit).
    pub fn close(&mut self) {
        self.endpoint
            .session_mut()
            .close(ByeReason::Shutdown, "qbkit-gadget stopping");
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next; ask again after every call.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let s = self.endpoint.session().poll_timeout();
        match (s, self.next_stats) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs due timers: Hello retries, keepalives, peer timeout, Stats.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.session_mut().handle_timeout(now);
        if let Some(t) = self.next_stats
            && now >= t
        {
            self.endpoint.session_mut().queue_stats();
            self.next_stats = Some(now + STATS_INTERVAL);
        }
        self.process_events(now);
    }

    /// True once after the host's session timed out on a stream link: the driver must close that
    /// link so the stream task redials (the pump already treats it as gone; `handle_link_down`
    /// still follows).
    pub fn poll_close_link(&mut self) -> bool {
        std::mem::take(&mut self.close_link)
    }

    /// Next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn process_events(&mut self, now: Instant) {
        while let Some(ev) = self.endpoint.session_mut().poll_event() {
            match ev {
                SessionEvent::Up(n) => {
                    tracing::info!(version = n.version, peer = %n.peer.identity, max_bundle = n.max_bundle,
                        max_mtu = n.max_mtu, "link up");
                    self.next_stats = Some(now + STATS_INTERVAL);
                }
                SessionEvent::LinkConfig(lc) => self.offer_link_config(now, lc),
                SessionEvent::Down(reason) => {
                    tracing::info!(?reason, "link down");
                    self.next_stats = None;
                    // A silent host (half-open TCP) would hold the stream forever: it is closed so
                    // the stream task redials. USB has nothing to redial: the host re-enumerates.
                    if reason == DownReason::Timeout
                        && self.endpoint.framing() == Some(Framing::Stream)
                        && self.endpoint.detach()
                    {
                        self.close_link = true;
                        self.counters.links_closed_silent += 1;
                        tracing::warn!(
                            timeout = ?self.endpoint.session().config().peer_timeout,
                            "the host sent nothing within the peer timeout: closing the link so it is redialled"
                        );
                    }
                }
                SessionEvent::PeerStats(s) => self.peer_stats = Some(s),
                SessionEvent::Error(e) => {
                    self.counters.protocol_errors += 1;
                    if let Some(suppressed) = self.logs.protocol_error.check(now) {
                        tracing::warn!(error = %e, count = self.counters.protocol_errors, suppressed, "protocol error from the host");
                    }
                }
                _ => {}
            }
        }
        self.update_carrier();
    }

    /// Checks the host's offer (with the static overrides applied) and hands it to the driver,
    /// or refuses it and keeps the link down.
    fn offer_link_config(&mut self, now: Instant, lc: LinkConfig) {
        match linkcheck::check(&self.overrides.apply(&lc)) {
            Ok(()) => {
                self.refused = None;
                if self.applied.as_ref() != Some(&lc) {
                    self.applied = Some(lc.clone());
                    self.actions.push_back(Action::ApplyLinkConfig(lc));
                }
            }
            Err(e) => {
                self.counters.link_config_refused += 1;
                if let Some(suppressed) = self.logs.refused.check(now) {
                    tracing::error!(reason = %e, count = self.counters.link_config_refused, suppressed,
                        "link configuration from the host refused; the link stays down");
                }
                self.refused = Some(e);
            }
        }
    }

    fn update_carrier(&mut self) {
        let want = self.endpoint.framing().is_some()
            && self.endpoint.session().state() == LinkState::Up
            && self.refused.is_none();
        if want == self.carrier {
            return;
        }
        self.carrier = want;
        if want {
            self.counters.carrier_ups += 1;
        } else if self.staged_packets > 0 {
            self.counters.drop_link_lost += self.staged_packets as u64;
            self.endpoint
                .session_mut()
                .record_tx_drop(self.staged_packets as u64);
            self.staged_len = 0;
            self.staged_packets = 0;
            self.staged_wire = BUNDLE_HEADER_LEN;
        }
        // Only the latest carrier state matters to the driver.
        self.actions.retain(|a| !matches!(a, Action::Carrier(_)));
        self.actions.push_back(Action::Carrier(want));
    }
}

#[cfg(test)]
mod tests {

    use shared_frame::{Bundle, Cidr, Control, DEFAULT_MAX_BUNDLE, Hello, RecordKind};

    use shared_frame::BundleWriter;

    use super::*;

    fn ms(t: u64) -> Instant {
        Instant::from_millis(t)
    }

    fn link_config() -> LinkConfig {
        shared_frame::testing::link_config_v4(16384)
    }

    /// The largest link MTU, one full packet per 64 KiB bundle.
    const BIG_MTU: u32 = 65520;

    /// The host end of an in-memory link.
    struct Peer {
        s: Session,
        got: Vec<Vec<u8>>,
    }

    impl Peer {
        fn new(now: Instant) -> Self {
            Self::with_mtu(now, 16384)
        }
        fn with_mtu(now: Instant, mtu: u32) -> Self {
            let mut cfg = SessionConfig::new(Role::Host, "test-host");
            cfg.max_mtu = mtu;
            cfg.link_config = Some(shared_frame::testing::link_config_v4(mtu));
            Self {
                s: Session::new(cfg, now),
                got: Vec::new(),
            }
        }
        fn bundle(&mut self, packets: &[&[u8]]) -> Vec<u8> {
            let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
            let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
            self.s.poll_control(&mut w);
            for p in packets {
                w.push_ip(CHANNEL_NET, p).unwrap();
            }
            let n = w.finish();
            buf.truncate(n);
            buf
        }
        fn recv(&mut self, now: Instant, b: &[u8]) {
            let got = &mut self.got;
            self.s
                .handle_bundle(now, b, |_, p| got.push(p.to_vec()))
                .unwrap();
        }
    }

    fn deliver_into(v: &mut Vec<Vec<u8>>) -> impl FnMut(&[u8]) -> bool + '_ {
        |p| {
            v.push(p.to_vec());
            true
        }
    }

    /// Pump attached as a stream, handshake done, carrier on.
    fn up(now: Instant, framing: Framing) -> (Pump, Peer) {
        up_with_mtu(now, framing, 16384)
    }

    /// [`up`] with both ends offering link MTU `mtu`.
    fn up_with_mtu(now: Instant, framing: Framing, mtu: u32) -> (Pump, Peer) {
        let mut cfg = PumpConfig::new("BOARD1");
        cfg.session.max_mtu = mtu;
        cfg.mtu = mtu as usize;
        let mut p = Pump::new(cfg, now);
        let mut peer = Peer::with_mtu(now, mtu);
        p.handle_link_up(now, framing);
        let mut sink = Vec::new();
        for _ in 0..4 {
            let b = peer.bundle(&[]);
            if b.len() > BUNDLE_HEADER_LEN {
                p.handle_link_bundle(now, &b, deliver_into(&mut sink));
            }
            while let Some(b) = p.poll_transmit() {
                peer.recv(now, &b);
            }
        }
        assert!(p.carrier(), "handshake brings carrier up");
        let actions: Vec<_> = std::iter::from_fn(|| p.poll_action()).collect();
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert!(actions.contains(&Action::Carrier(true)));
        assert!(actions.contains(&Action::ApplyLinkConfig(
            shared_frame::testing::link_config_v4(mtu)
        )));
        assert_eq!(p.max_packet(), mtu as usize);
        (p, peer)
    }

    /// Bundles both ways until the peer has nothing more to say.
    fn exchange(p: &mut Pump, peer: &mut Peer, now: Instant) {
        for _ in 0..4 {
            let b = peer.bundle(&[]);
            if b.len() > BUNDLE_HEADER_LEN {
                p.handle_link_bundle(now, &b, |_| true);
            }
            while let Some(b) = p.poll_transmit() {
                peer.recv(now, &b);
            }
        }
    }

    /// Runs the pump's timers, its bundles going nowhere, until the host's silence turns the
    /// carrier off; returns that time.
    fn until_silent(p: &mut Pump, from: Instant) -> Instant {
        let mut t = from;
        while p.carrier() {
            t = p.poll_timeout().unwrap().max(t);
            p.handle_timeout(t);
            while p.poll_transmit().is_some() {}
        }
        t
    }

    #[test]
    fn refused_link_config_keeps_the_link_down_until_a_good_one() {
        let now = ms(0);
        let (mut p, mut peer) = up(now, Framing::Stream);
        let mut bad = link_config();
        bad.ipv4 = bad.ipv4.map(|c| Cidr { prefix: 1, ..c });
        peer.s.set_link_config(bad.clone());
        exchange(&mut p, &mut peer, ms(1));
        assert!(!p.carrier(), "a /1 keeps the link down");
        assert_eq!(p.poll_action(), Some(Action::Carrier(false)));
        assert_eq!(p.poll_action(), None, "nothing is applied");
        assert_eq!(p.counters().link_config_refused, 1);
        assert_eq!(p.link_config_refused(), Some(&LinkConfigError::PrefixV4(1)));
        // A relink with the same bad offer stays down.
        p.handle_link_down(ms(2));
        p.handle_link_up(ms(3), Framing::Stream);
        peer.s.reset(ms(3));
        exchange(&mut p, &mut peer, ms(3));
        assert!(!p.carrier());
        assert_eq!(p.counters().link_config_refused, 2);
        // The good one again: carrier back, nothing re-applied (it is what was applied).
        while p.poll_action().is_some() {}
        peer.s.set_link_config(link_config());
        exchange(&mut p, &mut peer, ms(4));
        assert!(p.carrier());
        assert_eq!(p.link_config_refused(), None);
        assert_eq!(p.poll_action(), Some(Action::Carrier(true)));
        assert_eq!(p.poll_action(), None);
        // A different good one is applied.
        let other = shared_frame::testing::link_config_v4(9000);
        peer.s.set_link_config(other.clone());
        exchange(&mut p, &mut peer, ms(5));
        assert_eq!(p.poll_action(), Some(Action::ApplyLinkConfig(other)));
    }

    #[test]
    fn link_config_is_checked_with_the_static_overrides() {
        let now = ms(0);
        let mut cfg = PumpConfig::new("B");
        cfg.overrides.mtu = Some(600);
        let mut p = Pump::new(cfg, now);
        let mut peer = Peer::new(now);
        p.handle_link_up(now, Framing::Stream);
        exchange(&mut p, &mut peer, now);
        assert_eq!(p.session().state(), LinkState::Up);
        assert!(!p.carrier(), "the board's own MTU 600 is refused too");
        assert_eq!(p.link_config_refused(), Some(&LinkConfigError::Mtu(600)));
        let actions: Vec<_> = std::iter::from_fn(|| p.poll_action()).collect();
        assert_eq!(
            actions,
            [Action::Carrier(false)],
            "nothing applied, carrier off"
        );
    }

    fn pkt(n: u8, len: usize) -> Vec<u8> {
        let mut v = vec![n; len];
        v[0] = 0x45;
        v
    }

    #[test]
    fn idle_link_sends_each_packet_at_once() {
        let (mut p, mut peer) = up(ms(0), Framing::Stream);
        let before = p.counters().tx_bundles;
        for i in 0..3 {
            p.handle_tun_packet(&pkt(i, 100));
            let b = p.poll_transmit().expect("idle link sends immediately");
            assert!(
                b.capacity() <= MIN_MAX_BUNDLE + CONTROL_ROOM,
                "a small packet gets a small buffer, not the link's 64 KiB"
            );
            peer.recv(ms(1), &b);
            assert!(p.poll_transmit().is_none());
        }
        assert_eq!(peer.got.len(), 3);
        assert_eq!(p.counters().tx_bundles - before, 3);
    }

    #[test]
    fn packets_waiting_together_leave_in_one_bundle() {
        let (mut p, mut peer) = up(ms(0), Framing::Stream);
        let before = p.counters().tx_bundles;
        // The driver read the handshake's ACK; the request is already waiting behind it.
        p.handle_tun_packet(&pkt(1, 40));
        let mut waiting = vec![pkt(2, 86)].into_iter();
        let mut reads = 0;
        p.drain_tun(|buf| {
            reads += 1;
            waiting.next().map(|w| {
                buf[..w.len()].copy_from_slice(&w);
                Ok(w.len())
            })
        })
        .unwrap();
        assert_eq!(reads, 2, "reads until the device has nothing more");
        let b = p.poll_transmit().expect("a bundle");
        assert!(
            p.poll_transmit().is_none(),
            "both packets are in the first bundle"
        );
        peer.recv(ms(1), &b);
        assert_eq!(peer.got, vec![pkt(1, 40), pkt(2, 86)]);
        assert_eq!(p.counters().tx_bundles - before, 1);
    }

    #[test]
    fn draining_the_tun_stops_at_full_staging_and_at_its_bound() {
        let (mut p, _peer) = up(ms(0), Framing::Stream);
        let mut reads = 0;
        p.drain_tun(|buf| {
            reads += 1;
            let n = 16000.min(buf.len());
            Some(Ok(n))
        })
        .unwrap();
        assert!(!p.can_accept_tun(), "staging is full");
        assert!(reads < TUN_DRAIN, "stopped by staging, not the bound");
        while p.poll_transmit().is_some() {}
        let mut reads = 0;
        p.drain_tun(|_| {
            reads += 1;
            Some(Ok(40))
        })
        .unwrap();
        assert_eq!(
            reads, TUN_DRAIN,
            "a board that never pauses gets TUN_DRAIN reads"
        );
        let err = p.drain_tun(|_| Some(Err(std::io::Error::other("gone"))));
        assert!(err.is_err(), "a read error is returned");
    }

    #[test]
    fn recycled_bundles_are_built_in_place_over_their_old_bytes() {
        let (mut p, mut peer) = up(ms(0), Framing::Stream);
        let mut old = vec![0xa5u8; DEFAULT_MAX_BUNDLE];
        old.truncate(3000);
        let ptr = old.as_ptr();
        assert!(!p.has_spare());
        p.recycle(old);
        assert!(p.has_spare());
        let sent: Vec<_> = (0..5u8).map(|i| pkt(i, 1001 + usize::from(i))).collect();
        for s in &sent {
            p.handle_tun_packet(s);
        }
        let b = p.poll_transmit().unwrap();
        assert_eq!(b.as_ptr(), ptr, "the recycled allocation is reused");
        let bundle = Bundle::new_checked(&b[..], DEFAULT_MAX_BUNDLE).unwrap();
        assert!(
            bundle.records().all(|r| r.is_ok()),
            "stale bytes never leak"
        );
        peer.recv(ms(1), &b);
        assert_eq!(peer.got, sent);
        for _ in 0..2 * MAX_SPARE {
            p.recycle(Vec::new());
        }
        assert_eq!(p.spare.len(), MAX_SPARE, "the spares are bounded");
    }

    #[test]
    fn packets_a_control_record_crowds_out_leave_in_order_with_the_next_bundle() {
        let (mut p, mut peer) = up(ms(0), Framing::Stream);
        // 43 packets of 1500 bytes and one of 844 fill a 64 KiB bundle to the last byte.
        let mut sent: Vec<_> = (0..43u8).map(|i| pkt(i, 1500)).collect();
        sent.push(pkt(43, 844));
        for s in &sent {
            p.handle_tun_packet(s);
        }
        assert_eq!(p.staged_packets(), 44);
        p.endpoint.session_mut().queue_stats();
        let first = p.poll_transmit().unwrap();
        assert!(
            p.staged_packets() > 0,
            "the Stats record crowded packets out"
        );
        peer.recv(ms(1), &first);
        let second = p.poll_transmit().expect("the rest");
        peer.recv(ms(1), &second);
        assert_eq!(p.staged_packets(), 0);
        assert_eq!(peer.got, sent, "all of them, in order, unchanged");
        // Staging is empty again and reads go to its start.
        p.handle_tun_packet(&pkt(44, 60));
        peer.recv(ms(2), &p.poll_transmit().unwrap());
        assert_eq!(peer.got.last(), Some(&pkt(44, 60)));
    }

    #[test]
    fn busy_link_aggregates_into_one_bundle() {
        let (mut p, mut peer) = up(ms(0), Framing::Stream);
        // All transfer slots busy: the driver does not call poll_transmit.
        let sent: Vec<_> = (0..10u8).map(|i| pkt(i, 200 + usize::from(i))).collect();
        for s in &sent {
            p.handle_tun_packet(s);
        }
        assert_eq!(p.staged_packets(), 10);
        let b = p.poll_transmit().unwrap();
        let bundle = Bundle::new_checked(&b[..], DEFAULT_MAX_BUNDLE).unwrap();
        let ip = bundle
            .records()
            .filter(|r| r.as_ref().unwrap().kind == RecordKind::Ip)
            .count();
        assert_eq!(ip, 10, "one bundle carries all ten");
        peer.recv(ms(1), &b);
        assert_eq!(peer.got, sent, "in order, unchanged");
        assert!(p.poll_transmit().is_none());
    }

    /// Stages what `waiting` holds the way the driver does: one awaited read, then the drain.
    fn read_tun(p: &mut Pump, waiting: &mut std::collections::VecDeque<Vec<u8>>) -> usize {
        let mut reads = 0;
        if p.can_accept_tun()
            && let Some(w) = waiting.pop_front()
        {
            p.handle_tun_packet(&w);
            reads += 1;
        }
        p.drain_tun(|buf| {
            let w = waiting.pop_front()?;
            buf[..w.len()].copy_from_slice(&w);
            reads += 1;
            Some(Ok(w.len()))
        })
        .unwrap();
        reads
    }

    fn ip_records(b: &[u8]) -> usize {
        Bundle::new_checked(b, DEFAULT_MAX_BUNDLE)
            .unwrap()
            .records()
            .filter(|r| r.as_ref().unwrap().kind == RecordKind::Ip)
            .count()
    }

    #[test]
    fn small_packets_aggregate_at_the_largest_mtu() {
        let (mut p, mut peer) = up_with_mtu(ms(0), Framing::Stream, BIG_MTU);
        // An ACK stream: 60 ACKs the board's stack wrote back to back.
        let sent: Vec<_> = (0..60u8).map(|i| pkt(i, 52)).collect();
        let mut waiting = sent.iter().cloned().collect();
        assert_eq!(read_tun(&mut p, &mut waiting), 60, "all read in one go");
        let b = p.poll_transmit().expect("a bundle");
        assert_eq!(ip_records(&b), 60, "one bundle carries all of them");
        assert!(p.poll_transmit().is_none());
        peer.recv(ms(1), &b);
        assert_eq!(peer.got, sent);
    }

    #[test]
    fn a_full_size_packet_behind_small_ones_starts_the_next_bundle() {
        let (mut p, mut peer) = up_with_mtu(ms(0), Framing::Stream, BIG_MTU);
        let big = |i| pkt(i, BIG_MTU as usize);
        let mut sent: Vec<_> = (0..5u8).map(|i| pkt(i, 300)).collect();
        sent.extend([big(5), pkt(6, 40), big(7), big(8), pkt(9, 80), pkt(10, 90)]);
        let mut waiting = sent.iter().cloned().collect();
        assert_eq!(
            read_tun(&mut p, &mut waiting),
            6,
            "the small ones and the big one behind them; then reads stop"
        );
        assert!(!p.can_accept_tun());
        let b = p.poll_transmit().unwrap();
        assert_eq!(ip_records(&b), 5, "the small ones together");
        peer.recv(ms(1), &b);
        let mut bundles = vec![5];
        while peer.got.len() < sent.len() {
            read_tun(&mut p, &mut waiting);
            let b = p.poll_transmit().expect("staged packets leave");
            bundles.push(ip_records(&b));
            peer.recv(ms(2), &b);
        }
        assert_eq!(peer.got, sent, "none lost, none reordered");
        // Each big one fills a bundle alone; a small one read just before a big one leaves
        // ahead of it (the big one was read into the room left behind it).
        assert_eq!(bundles, [5, 1, 1, 1, 1, 2]);
        let c = p.counters();
        assert_eq!(c.drop_backpressure + c.drop_oversize, 0);
    }

    #[test]
    fn staging_stays_bounded_at_every_mtu() {
        for mtu in [1500, 16384, 40000, BIG_MTU] {
            let (mut p, mut peer) = up_with_mtu(ms(0), Framing::Stream, mtu);
            let cap = p.tx_cap();
            // Sizes from a fixed pseudo-random walk, small and full-size mixed; the link sends
            // one bundle after every few reads, so staging is often full.
            let mut x = 0x2545_f491_u32;
            let mut sent = 0usize;
            for round in 0..400u32 {
                let mut waiting: std::collections::VecDeque<_> = (0..8)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        let len = match x % 4 {
                            0 => mtu as usize,
                            1 => 40 + (x >> 8) as usize % 1460,
                            _ => 52,
                        };
                        pkt(0, len)
                    })
                    .collect();
                sent += read_tun(&mut p, &mut waiting);
                assert!(
                    p.staged_wire <= cap + align4(RECORD_HEADER_LEN + mtu as usize),
                    "at most one bundle plus the packet that starts the next"
                );
                assert!(
                    p.staged.len() <= cap + 2 * (2 + MAX_RECORD_PAYLOAD),
                    "the buffer: that plus the room of one read"
                );
                if round % 3 == 0 {
                    while let Some(b) = p.poll_transmit() {
                        assert!(b.len() <= cap);
                        peer.recv(ms(1), &b);
                    }
                }
            }
            while let Some(b) = p.poll_transmit() {
                peer.recv(ms(1), &b);
            }
            assert_eq!(peer.got.len(), sent, "mtu {mtu}");
            assert_eq!(p.counters().drop_backpressure, 0);
        }
    }

    #[test]
    fn backpressure_stops_tun_reads_and_counts_overflow() {
        let (mut p, _peer) = up(ms(0), Framing::Stream);
        let big = pkt(7, 16000);
        let mut staged = 0;
        while p.can_accept_tun() {
            p.handle_tun_packet(&big);
            staged += 1;
            assert!(staged < 100);
        }
        assert_eq!(staged, 4, "a 64 KiB bundle holds four 16000-byte packets");
        assert_eq!(p.counters().drop_backpressure, 0);
        // A driver that reads anyway gets the packet dropped and counted, not queued.
        p.handle_tun_packet(&big);
        assert_eq!(p.counters().drop_backpressure, 1);
        let b = p.poll_transmit().unwrap();
        let bundle = Bundle::new_checked(&b[..], DEFAULT_MAX_BUNDLE).unwrap();
        assert_eq!(
            bundle.records().count(),
            4,
            "the bundle is sized for all that was staged"
        );
        assert_eq!(p.staged_packets(), 0);
        assert!(p.can_accept_tun(), "a free slot drains staging");
        p.handle_tun_packet(&vec![0x45; 20000]);
        assert_eq!(p.counters().drop_oversize, 1, "larger than the MTU");
    }

    #[test]
    fn smaller_max_bundle_mid_session_drops_what_no_longer_fits() {
        let (mut p, _old) = up(ms(0), Framing::Stream);
        let big = pkt(7, 16000);
        while p.can_accept_tun() {
            p.handle_tun_packet(&big);
        }
        assert_eq!(p.staged_packets(), 4);
        // The host restarts with 4 KiB bundles: its Hello renegotiates the running session.
        let mut cfg = SessionConfig::new(Role::Host, "restarted-host");
        cfg.link_config = Some(link_config());
        cfg.max_bundle = MIN_MAX_BUNDLE;
        let mut peer = Peer {
            s: Session::new(cfg, ms(1)),
            got: Vec::new(),
        };
        exchange(&mut p, &mut peer, ms(1));
        assert_eq!(p.session().tx_max_bundle(), MIN_MAX_BUNDLE);
        // The staged packets can never fit a 4 KiB bundle: dropped and counted, not stranded.
        assert_eq!(p.staged_packets(), 0);
        assert_eq!(p.counters().drop_oversize, 4);
        assert!(p.poll_transmit().is_none(), "nothing left to send");
        assert!(p.can_accept_tun(), "the TUN is read again");
        let small = pkt(8, 1000);
        p.handle_tun_packet(&small);
        let b = p.poll_transmit().expect("a bundle");
        assert!(b.len() <= MIN_MAX_BUNDLE);
        peer.recv(ms(2), &b);
        assert_eq!(peer.got, vec![small]);
    }

    #[test]
    fn a_bundle_limit_that_is_not_a_multiple_of_four_keeps_the_tun_read() {
        // Found by the gadget_pump fuzz target: with a peer max_bundle of 7498 the largest packet
        // the pump accepted did not fit an empty bundle once aligned, so `can_accept_tun` stayed
        // false with nothing staged and the driver never read the TUN device again.
        let now = ms(0);
        let mut p = Pump::new(PumpConfig::new("B"), now);
        let mut peer = Peer::new(now);
        let mut cfg = peer.s.config().clone();
        cfg.max_bundle = 7498;
        peer.s = Session::new(cfg, now);
        p.handle_link_up(now, Framing::Stream);
        exchange(&mut p, &mut peer, now);
        assert!(p.carrier());
        assert!(p.can_accept_tun(), "an empty pump must read the TUN device");
        p.handle_tun_packet(&pkt(1, p.max_packet()));
        assert_eq!(
            p.staged_packets(),
            1,
            "the largest accepted packet is staged"
        );
        let b = p.poll_transmit().unwrap();
        assert!(b.len() <= 7498);
        peer.recv(ms(1), &b);
        assert_eq!(peer.got.len(), 1);
    }

    #[test]
    fn carrier_follows_link_and_session() {
        let now = ms(0);
        let mut p = Pump::new(PumpConfig::new("B"), now);
        assert!(!p.carrier());
        p.handle_tun_packet(&pkt(1, 60));
        assert_eq!(p.counters().drop_no_carrier, 1);
        assert!(p.poll_transmit().is_none(), "no link, nothing to send");

        let (mut p, mut peer) = up(
            now,
            Framing::Usb {
                max_packet_size: 512,
            },
        );
        // Unplug: carrier off, staged packets dropped and counted.
        p.handle_tun_packet(&pkt(2, 60));
        p.handle_link_down(ms(10));
        assert!(!p.carrier());
        assert_eq!(p.poll_action(), Some(Action::Carrier(false)));
        assert_eq!(p.counters().drop_link_lost, 1);
        // Replug: carrier waits for the host Hello.
        p.handle_link_up(
            ms(20),
            Framing::Usb {
                max_packet_size: 512,
            },
        );
        assert!(!p.carrier());
        let hello = p.poll_transmit().expect("Hello on a new link");
        peer.s.reset(ms(20));
        peer.recv(ms(20), &hello);
        let reply = peer.bundle(&[]);
        p.handle_link_bundle(ms(21), &reply, |_| true);
        assert!(p.carrier());
        assert_eq!(p.poll_action(), Some(Action::Carrier(true)));
        assert_eq!(p.poll_action(), None, "same LinkConfig is not re-applied");

        // Keepalive timeout: the host stops answering.
        let t = until_silent(&mut p, ms(21));
        assert!(t >= ms(21) + Duration::from_secs(5));
        assert_eq!(p.session().counters().peer_timeouts, 1);
        assert_eq!(p.poll_action(), Some(Action::Carrier(false)));
        // USB stays attached: the host, not the board, re-enumerates it.
        assert!(!p.poll_close_link(), "a USB link is not closed");
        assert!(p.framing().is_some());
        assert_eq!(p.counters().links_closed_silent, 0);
    }

    #[test]
    fn a_silent_host_gets_its_stream_closed_once() {
        let (mut p, _peer) = up(ms(0), Framing::Stream);
        let t = until_silent(&mut p, ms(0));
        assert!(
            t >= ms(0) + Duration::from_secs(5),
            "only after the peer timeout"
        );
        assert!(
            p.poll_close_link(),
            "the silent host's stream is to be closed"
        );
        assert!(!p.poll_close_link(), "once");
        assert_eq!(p.counters().links_closed_silent, 1);
        assert_eq!(p.framing(), None, "nothing more is sent on it");
        assert!(p.poll_transmit().is_none());
        // The stream task reports it down, then redials: a new link starts with Hello.
        p.handle_link_down(t);
        p.handle_link_up(t, Framing::Stream);
        assert!(p.poll_transmit().is_some(), "Hello on the redialled link");
        assert!(!p.poll_close_link());
    }

    #[test]
    fn bad_frames_and_wrong_version_are_counted_and_survived() {
        let (mut p, mut peer) = up(ms(0), Framing::Stream);
        p.handle_link_bundle(ms(1), b"garbage that is not a bundle", |_| true);
        assert_eq!(p.counters().rx_frame_errors, 1);
        assert_eq!(p.session().counters().rx_bad_bundles, 1);

        let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
        w.push_control(&Control::Hello(Hello {
            version: 0,
            role: Role::Host,
            flags: 0,
            capabilities: shared_frame::Capabilities::ALL,
            max_bundle: 65536,
            max_mtu: 16384,
            identity: "old host".into(),
        }))
        .unwrap();
        let n = w.finish();
        p.handle_link_bundle(ms(2), &buf[..n], |_| true);
        assert_eq!(p.session().counters().version_mismatches, 1);
        assert_eq!(p.counters().protocol_errors, 1);

        // Still working: a packet from the host reaches the TUN callback.
        let b = peer.bundle(&[&pkt(9, 84)]);
        let mut got = Vec::new();
        p.handle_link_bundle(ms(3), &b, deliver_into(&mut got));
        assert_eq!(got, vec![pkt(9, 84)]);
        assert_eq!(p.counters().tun_tx_packets, 1);
    }

    #[test]
    fn usb_bundles_never_end_on_max_packet_size() {
        for mps in [512usize, 1024] {
            let (mut p, _peer) = up(
                ms(0),
                Framing::Usb {
                    max_packet_size: mps,
                },
            );
            // header 8 + record header 4 + payload = mps exactly.
            let payload = mps - BUNDLE_HEADER_LEN - RECORD_HEADER_LEN;
            p.handle_tun_packet(&pkt(1, payload));
            let b = p.poll_transmit().unwrap();
            assert_eq!(b.len(), mps + USB_PAD_LEN);
            assert_ne!(b.len() % mps, 0);
            p.handle_tun_packet(&pkt(1, payload - 4));
            assert_eq!(
                p.poll_transmit().unwrap().len(),
                mps - 4,
                "no pad when not needed"
            );
        }
    }

    #[test]
    fn tun_write_failures_are_counted() {
        let (mut p, mut peer) = up(ms(0), Framing::Stream);
        let b = peer.bundle(&[&pkt(1, 40), &pkt(2, 40)]);
        p.handle_link_bundle(ms(1), &b, |_| false);
        assert_eq!(p.counters().tun_write_errors, 2);
    }

    #[test]
    fn close_sends_bye() {
        let (mut p, mut peer) = up(ms(0), Framing::Stream);
        p.close();
        let b = p.poll_transmit().unwrap();
        peer.recv(ms(1), &b);
        assert!(
            std::iter::from_fn(|| peer.s.poll_event())
                .any(|e| matches!(e, SessionEvent::Down(shared_frame::DownReason::Bye(_))))
        );
    }
}
