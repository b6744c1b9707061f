//! PURE: the sans-IO core of `qbkit-host`: the link [`Session`] + the [`Nat`] + bundle assembly,
//! with no clock, no sockets and no tokio. qbkit-host's driver owns those and calls in here; the
//! tests below drive it with a simulated clock and a scripted board, and so does the `host_core`
//! fuzz target (a crate of its own so that the fuzz build does not need qbkit-host's I/O).
//!
//! # Theory of operation
//!
//! ```text
//!  handle_link_up / handle_link_down ─▶ Session reset (Hello again), framing of the new link
//!  handle_bundle ─▶ Session ─IP─▶ Nat::handle_ip_packet ─▶ poll_nat_event (socket requests)
//!  handle_os_event (what the OS sockets did) ─▶ Nat;  nat_mut: the zero-copy tcp_recv/tcp_send
//!  handle_timeout ─▶ Session + Nat timers;  poll_timeout: the earliest of both
//!  poll_transmit ─▶ one bundle: session control first, then packets from the Nat: its queued
//!                   ones copied in, then TCP segments smoltcp writes straight into the bundle
//!                   (Nat::poll_ip_packets); what does not fit waits for the next bundle, in order
//!  close ─▶ Bye, then poll_transmit once more (goodbye)
//! ```
//!
//! Time is microseconds on the caller's monotonic clock (`now`), the time base of both cores.
//!
//! # Limit changes
//!
//! - The board's Hello announces its largest bundle: every bundle after that is at most
//!   [`Session::tx_max_bundle`]. Before the Hello it is our own default.
//! - The board's Hello announces its MTU: when it is below ours the LinkConfig offers the smaller
//!   one, and the Nat is rebuilt for it while no flow exists (its MTU is fixed at creation); with
//!   flows it keeps its MTU and says so in the log.
//!
//! # Link loss
//!
//! A lost link resets the session (Hello again on the next link); flows stay, so a quick
//! reconnect keeps the board's TCP connections alive. While no link is up nothing is transmitted.
//! A session that times out on an attached link (the board went silent) detaches it and asks the
//! caller to close it ([`Core::poll_close_link`]), so the transport can reconnect.

use std::net::IpAddr;

use qbkit_nat::{BoardSink, Nat, NatConfig, NatError, NatEvent, OsEvent};
use shared_frame::{
    BundleWriter, ByeReason, CHANNEL_NET, Cidr, DownReason, Endpoint, Framing, LinkConfig,
    LogLimit, RecordKind, Role, Session, SessionConfig, SessionEvent, Stats, Transmit,
};

/// Counters of the host's link endpoint and event loop (`status` shows them as `driver`).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct CoreCounters {
    /// Bundles received from the link.
    pub rx_bundles: u64,
    /// Bundles sent to the link.
    pub tx_bundles: u64,
    /// Bytes of bundles sent.
    pub tx_bundle_bytes: u64,
    /// Times a link came up.
    pub link_ups: u64,
    /// Times a link went down.
    pub link_downs: u64,
    /// Dropped: received bundle that failed to parse (counted in detail by the session).
    pub drop_rx_bad_bundle: u64,
    /// Dropped: IP record on a channel other than the network.
    pub drop_rx_unknown_channel: u64,
    /// Dropped: a bundle the transport refused because it went away while sending.
    pub drop_tx_link_gone: u64,
    /// Links closed because the board's session timed out (it went silent after setup).
    pub links_closed_silent: u64,
    /// Dropped: a packet from the NAT larger than one bundle to the board carries (the board
    /// renegotiated smaller bundles while flows sized for larger ones were open).
    pub drop_tx_too_big: u64,
    /// Work passes of the event loop (loop turns).
    pub passes: u64,
    /// Inbound connections or datagrams refused because no board session was up (the NAT
    /// counts those it had no room for, `drop_inbound_no_room`).
    pub inbound_no_session: u64,
}

/// What the core needs to start.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The NAT's configuration (addresses, MTU, policy, DNS upstreams).
    pub nat: NatConfig,
    /// Largest bundle we accept from the board.
    pub max_bundle: usize,
    /// Our identity in Hello.
    pub identity: String,
}

/// The sans-IO host core (see the module docs).
pub struct Core {
    cfg: CoreConfig,
    /// Session + framing + bundle assembly, shared with the board's pump.
    endpoint: Endpoint,
    nat: Nat,
    /// The Nat may have packets for the board (cleared when `poll_ip_packet` returns `None`).
    tx_pending: bool,
    /// Where a packet too large for the board's bundles is polled to be dropped.
    scratch: Vec<u8>,
    /// Where a bundle is built when the caller's buffer is short (see [`Core::poll_transmit`]);
    /// zero-filled once, up to the largest bundle.
    tx_scratch: Vec<u8>,
    counters: CoreCounters,
    peer: Option<String>,
    peer_stats: Option<Stats>,
    handshake_error: Option<String>,
    /// A link or session change happened since [`Core::take_changed`] last returned true.
    changed: bool,
    /// The board went silent: the driver must close the link ([`Core::poll_close_link`]).
    close_link: bool,
    logs: LogLimits,
}

/// One rate limit per log line about what the board sends (everything is also counted).
#[derive(Debug, Default)]
struct LogLimits {
    bad_bundle: LogLimit,
    protocol_error: LogLimit,
    too_big: LogLimit,
}

fn frame_time(now: u64) -> shared_frame::Instant {
    shared_frame::Instant::from_micros(now)
}

fn nat_time(now: u64) -> qbkit_nat::Instant {
    qbkit_nat::Instant::from_micros(i64::try_from(now).unwrap_or(i64::MAX))
}

impl Core {
    /// A core at time `now` (µs), no link attached.
    pub fn new(cfg: CoreConfig, now: u64) -> Result<Self, NatError> {
        let nat = Nat::new(cfg.nat.clone(), nat_time(now))?;
        let mut scfg = SessionConfig::new(Role::Host, cfg.identity.clone());
        scfg.max_bundle = cfg.max_bundle;
        scfg.max_mtu = u32::try_from(cfg.nat.mtu).unwrap_or(u32::MAX);
        scfg.link_config = Some(link_config(&cfg.nat, cfg.nat.mtu));
        Ok(Self {
            endpoint: Endpoint::new(scfg, frame_time(now)),
            scratch: vec![0; cfg.nat.mtu],
            tx_scratch: Vec::new(),
            cfg,
            nat,
            tx_pending: false,
            counters: CoreCounters::default(),
            peer: None,
            peer_stats: None,
            handshake_error: None,
            changed: true,
            close_link: false,
            logs: LogLimits::default(),
        })
    }

    /// A link came up: the session starts over with Hello.
    pub fn handle_link_up(&mut self, now: u64, framing: Framing) {
        self.counters.link_ups += 1;
        self.endpoint.handle_link_up(frame_time(now), framing);
        self.tx_pending = true;
        self.handshake_error = None;
        self.changed = true;
    }

    /// The link is gone: session reset, nothing is transmitted until the next link.
    pub fn handle_link_down(&mut self, now: u64) {
        self.counters.link_downs += 1;
        self.endpoint.handle_link_down(frame_time(now));
        self.drain_session_events(now);
        self.peer = None;
        self.handshake_error = None;
        self.changed = true;
    }

    /// One bundle from the board.
    pub fn handle_bundle(&mut self, now: u64, b: &[u8]) {
        self.counters.rx_bundles += 1;
        let nat = &mut self.nat;
        let unknown = &mut self.counters.drop_rx_unknown_channel;
        let res = self.endpoint.handle_bundle(frame_time(now), b, |ch, pkt| {
            if ch == CHANNEL_NET {
                nat.handle_ip_packet(nat_time(now), pkt);
            } else {
                *unknown += 1;
            }
        });
        if let Err(e) = res {
            self.counters.drop_rx_bad_bundle += 1;
            if let Some(suppressed) = self.logs.bad_bundle.check(frame_time(now)) {
                tracing::warn!(error = %e, count = self.counters.drop_rx_bad_bundle, suppressed, "bad bundle from the board dropped");
            }
        }
        self.tx_pending = true;
        self.drain_session_events(now);
    }

    /// What an OS socket did (see [`OsEvent`]).
    pub fn handle_os_event(&mut self, now: u64, ev: OsEvent<'_>) {
        self.nat.handle_os_event(nat_time(now), ev);
        self.tx_pending = true;
    }

    /// Runs the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        let session = self.endpoint.session_mut();
        if session.poll_timeout().is_some_and(|t| t.as_micros() <= now) {
            session.handle_timeout(frame_time(now));
        }
        if self
            .nat
            .poll_timeout(nat_time(now))
            .is_some_and(|t| t.total_micros() <= now.cast_signed())
        {
            self.nat.handle_timeout(nat_time(now));
            self.tx_pending = true;
        }
        self.drain_session_events(now);
    }

    /// The earliest timer of the session and the Nat (µs), if any. A Nat timer at or before `now`
    /// means it waits for the board queue to drain, which only a free link slot helps.
    pub fn poll_timeout(&mut self, now: u64) -> (Option<u64>, Option<u64>) {
        let session = self
            .endpoint
            .session()
            .poll_timeout()
            .map(shared_frame::Instant::as_micros);
        let nat = self
            .nat
            .poll_timeout(nat_time(now))
            .map(|t| u64::try_from(t.total_micros()).unwrap_or(0));
        (session, nat)
    }

    /// The next request of the Nat to the socket layer.
    pub fn poll_nat_event(&mut self) -> Option<NatEvent> {
        self.nat.poll_event()
    }

    /// The Nat, for the zero-copy TCP reads and writes, inbound flows and status.
    pub fn nat_mut(&mut self) -> &mut Nat {
        self.tx_pending = true;
        &mut self.nat
    }

    /// The Nat, read-only.
    pub fn nat(&self) -> &Nat {
        &self.nat
    }

    /// The link session.
    pub fn session(&self) -> &Session {
        self.endpoint.session()
    }

    /// Whether a board session is up.
    pub fn is_up(&self) -> bool {
        self.endpoint.session().is_up()
    }

    /// True once after the board's session timed out on an attached link: the caller must close
    /// that link (the core already treats it as gone; `handle_link_down` still follows).
    pub fn poll_close_link(&mut self) -> bool {
        std::mem::take(&mut self.close_link)
    }

    /// Whether a link is attached.
    pub fn has_link(&self) -> bool {
        self.endpoint.framing().is_some()
    }

    /// Whether a bundle may be waiting ([`Core::poll_transmit`] may still find nothing).
    pub fn wants_transmit(&self) -> bool {
        self.endpoint.wants_transmit(self.tx_pending)
    }

    /// Builds the next bundle into `buf` (which then holds exactly the bundle, `Transmit::len`
    /// bytes; what it held before is overwritten), or `None` when there is no link or nothing to
    /// send (`buf` is then left as it was or longer).
    ///
    /// The writer needs the largest bundle's room, but zero-filling room that it overwrites or
    /// never uses costs as much as the bundle itself: a buffer that held a large bundle (a
    /// recycled one, in bulk transfers) is built in place and only its tail is filled; any other
    /// is built in the core's own buffer and then gets a copy of just the bundle (an ACK costs
    /// its own few bytes, not 64 KiB).
    pub fn poll_transmit(&mut self, now: u64, buf: &mut Vec<u8>) -> Option<Transmit> {
        if !self.wants_transmit() {
            return None;
        }
        let max = self.endpoint.session().tx_max_bundle();
        let in_place = buf.len() >= max / 2;
        let room = if in_place {
            buf.resize(max, 0);
            &mut buf[..]
        } else {
            if self.tx_scratch.len() < max {
                self.tx_scratch.resize(max, 0);
            }
            &mut self.tx_scratch[..max]
        };
        let mut out = Outgoing {
            nat: &mut self.nat,
            scratch: &mut self.scratch,
            pending: &mut self.tx_pending,
            counters: &mut self.counters,
            too_big_log: &mut self.logs.too_big,
        };
        let t = self.endpoint.transmit(room, max, |w, _| {
            out.fill(now, shared_frame::max_packet(max), w)
        })?;
        if in_place {
            buf.truncate(t.len);
        } else {
            buf.clear();
            buf.extend_from_slice(&self.tx_scratch[..t.len]);
        }
        self.counters.tx_bundles += 1;
        self.counters.tx_bundle_bytes += t.len as u64;
        Some(t)
    }

    /// A bundle from [`Core::poll_transmit`] could not be handed to the link (it went away while
    /// sending); its packets are lost (TCP retransmits).
    pub fn record_tx_lost(&mut self, t: Transmit) {
        self.counters.tx_bundles -= 1;
        self.counters.tx_bundle_bytes -= t.len as u64;
        self.counters.drop_tx_link_gone += 1;
        self.endpoint.session_mut().record_tx_drop(t.packets);
    }

    /// Says goodbye: a Bye goes out with the next [`Core::poll_transmit`].
    pub fn close(&mut self, message: &str) {
        self.endpoint
            .session_mut()
            .close(ByeReason::Shutdown, message);
    }

    /// The counters (the event loop adds its own).
    pub fn counters_mut(&mut self) -> &mut CoreCounters {
        &mut self.counters
    }

    /// The counters.
    pub fn counters(&self) -> &CoreCounters {
        &self.counters
    }

    /// The board's identity while the session is up.
    pub fn peer(&self) -> Option<&str> {
        self.peer.as_deref().filter(|_| self.is_up())
    }

    /// The board's last Stats message.
    pub fn peer_stats(&self) -> Option<&Stats> {
        self.peer_stats.as_ref()
    }

    /// Why the handshake on the current link failed (version mismatch, wrong role).
    pub fn handshake_error(&self) -> Option<&str> {
        self.handshake_error.as_deref()
    }

    /// True once after every link or session change (front ends republish then).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// A change the front ends must see that the core does not know about (forwards).
    pub fn mark_changed(&mut self) {
        self.changed = true;
    }

    fn drain_session_events(&mut self, now: u64) {
        while let Some(ev) = self.endpoint.session_mut().poll_event() {
            match ev {
                SessionEvent::Up(n) => {
                    tracing::info!(
                        peer = %n.peer.identity,
                        version = n.version,
                        mtu = n.max_mtu,
                        max_bundle = n.max_bundle,
                        "board connected"
                    );
                    self.peer = Some(n.peer.identity.clone());
                    self.handshake_error = None;
                    self.changed = true;
                    // No packet may be larger than one bundle the board takes.
                    let mtu = (n.max_mtu as usize).min(shared_frame::max_packet(n.max_bundle));
                    if mtu < self.nat.config().mtu {
                        self.shrink_mtu(now, mtu);
                    }
                }
                SessionEvent::Down(reason) => {
                    tracing::info!(?reason, "board session down");
                    self.peer = None;
                    self.changed = true;
                    // A silent peer (half-open stream, stalled usbipd) would hold the transport
                    // forever: the link is closed so the transport re-accepts or redials.
                    if reason == DownReason::Timeout && self.endpoint.detach() {
                        self.close_link = true;
                        self.counters.links_closed_silent += 1;
                        tracing::warn!(
                            timeout = ?self.endpoint.session().config().peer_timeout,
                            "the board sent nothing within the peer timeout: closing the link so the transport reconnects"
                        );
                    }
                }
                SessionEvent::PeerStats(s) => self.peer_stats = Some(s),
                SessionEvent::Error(e) => {
                    // Counted by the session (rx_bad_controls, …); one line a second at most.
                    if let Some(suppressed) = self.logs.protocol_error.check(frame_time(now)) {
                        tracing::warn!(error = %e, suppressed, "link protocol error");
                    }
                    // Before the session is up an error means the handshake failed (a version
                    // mismatch, a peer with the wrong role): the user has to act. Once up, a bad
                    // message is counted and the link goes on.
                    if !self.is_up() {
                        self.handshake_error = Some(e.to_string());
                        self.changed = true;
                    }
                }
                SessionEvent::LinkConfig(_) => {}
                other => tracing::debug!(?other, "session event"),
            }
        }
    }

    /// The board can take less than our MTU: offer it the smaller one, and size the Nat for it
    /// if no flow exists yet (the Nat's MTU is fixed at creation).
    fn shrink_mtu(&mut self, now: u64, mtu: usize) {
        let mtu = mtu.max(qbkit_nat::MIN_MTU);
        self.endpoint
            .session_mut()
            .set_link_config(link_config(&self.cfg.nat, mtu));
        if self.nat.flow_count() == 0 {
            let mut cfg = self.nat.config().clone();
            cfg.mtu = mtu;
            match Nat::new(cfg, nat_time(now)) {
                Ok(nat) => {
                    self.nat = nat;
                    self.scratch.truncate(mtu);
                    tracing::info!(mtu, "NAT resized for the board's MTU");
                }
                Err(e) => tracing::warn!(error = %e, "cannot resize the NAT"),
            }
        } else {
            tracing::warn!(
                mtu,
                "board MTU is below ours while flows exist; keeping the NAT's MTU"
            );
        }
    }
}

/// What a bundle is filled from: the Nat's queue of packets for the board.
struct Outgoing<'a> {
    nat: &'a mut Nat,
    scratch: &'a mut [u8],
    /// The Nat may have more (cleared when it has nothing queued).
    pending: &'a mut bool,
    counters: &'a mut CoreCounters,
    too_big_log: &'a mut LogLimit,
}

impl Outgoing<'_> {
    /// Fills `w` from the Nat until the bundle is full or the Nat has nothing more: its queued
    /// packets are copied in, then smoltcp writes TCP segments straight into the bundle's free
    /// space ([`Nat::poll_ip_packets`]); what does not fit waits for the next bundle, in order.
    /// A queued packet larger than `fits` (what one bundle to the board carries) is dropped.
    fn fill(&mut self, now: u64, fits: usize, w: &mut BundleWriter<'_>) -> (u64, u64) {
        let t = now;
        let now = nat_time(now);
        let mut sink = BundleSink {
            w,
            packets: 0,
            bytes: 0,
        };
        while let Some(len) = self.nat.poll_ip_packets(now, &mut sink) {
            if len <= fits {
                break;
            }
            let _ = self.nat.poll_ip_packet(now, self.scratch);
            self.drop_too_big(t, len, fits);
        }
        *self.pending = self.nat.has_ip_packets();
        (sink.packets, sink.bytes)
    }

    /// Drops a packet no bundle to the board can carry (instead of holding it, which would stall
    /// the link and spin the loop): counted, logged at most once a second.
    fn drop_too_big(&mut self, now: u64, len: usize, fits: usize) {
        self.counters.drop_tx_too_big += 1;
        let count = self.counters.drop_tx_too_big;
        if let Some(suppressed) = self.too_big_log.check(frame_time(now)) {
            tracing::warn!(
                len,
                fits,
                count,
                suppressed,
                "packet larger than the board's bundles dropped (it renegotiated smaller bundles while flows were open)"
            );
        }
    }
}

/// A bundle being filled, as the Nat's sink for packets to the board: each packet is one IP
/// record on the network channel, written in place.
struct BundleSink<'w, 'b> {
    w: &'w mut BundleWriter<'b>,
    packets: u64,
    bytes: u64,
}

impl BoardSink for BundleSink<'_, '_> {
    fn room(&self) -> usize {
        self.w.available_payload()
    }

    fn buffer(&mut self, len: usize) -> Option<&mut [u8]> {
        self.w.payload_buf(len).ok()
    }

    fn commit(&mut self, len: usize) {
        if self.w.commit(RecordKind::Ip, CHANNEL_NET, len).is_ok() {
            self.packets += 1;
            self.bytes += len as u64;
        }
    }
}

/// The LinkConfig offered to the board: its IPv4 and IPv6 addresses, the gateway of each as
/// router and DNS server, the MTU. The board gets IPv6 even when the laptop has none: the core
/// answers its IPv6 connects with ICMPv6 "no route" at once, so dual-stack clients fall back to
/// IPv4 without waiting.
pub fn link_config(nat: &NatConfig, mtu: usize) -> LinkConfig {
    LinkConfig {
        ipv4: Some(Cidr {
            addr: nat.board_ipv4,
            prefix: nat.prefix_len,
        }),
        gateway_v4: Some(nat.gateway_ipv4),
        ipv6: Some(Cidr {
            addr: nat.board_ipv6,
            prefix: nat.prefix_len_ipv6,
        }),
        gateway_v6: Some(nat.gateway_ipv6),
        dns: vec![IpAddr::V4(nat.gateway_ipv4), IpAddr::V6(nat.gateway_ipv6)],
        mtu: u32::try_from(mtu).unwrap_or(u32::MAX),
    }
}

/// Tests in the style of quinn-proto's `Pair`: the core and a scripted board (a board-role
/// [`Session`] plus hand-made IP packets) exchange bundles in memory on a simulated clock; the
/// test plays the OS sockets by answering the core's [`NatEvent`]s. No tokio, no sockets.
#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    use qbkit_nat::Protocol;
    use qbkit_nat::testing::{seg_of, tcp_segment, udp, udp_of};
    use shared_frame::{Bundle, Control, LinkState, SessionConfig};
    use smoltcp::wire::TcpControl;

    use super::*;

    const MS: u64 = 1000;
    const BOARD: Ipv4Addr = Ipv4Addr::new(10, 47, 0, 2);
    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    const USB: Framing = Framing::Usb {
        max_packet_size: 512,
    };

    fn ep(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(ip, port)
    }

    /// The core, a scripted board and the simulated clock.
    struct Pair {
        now: u64,
        core: Core,
        board: Session,
        /// IP packets the board received.
        board_rx: Vec<Vec<u8>>,
        /// Control messages the board received, in order.
        board_control: Vec<Control>,
        /// Sizes of the bundles the board received.
        bundle_sizes: Vec<usize>,
        /// Requests of the core to the socket layer, in order.
        nat_events: Vec<NatEvent>,
    }

    impl Pair {
        /// Every bundle sent since `bundle_sizes` was last cleared fits the smallest `max_bundle`
        /// a peer may ask for (plus the USB pad).
        fn assert_bundles_fit_smallest_max_bundle(&self) {
            let limit = shared_frame::MIN_MAX_BUNDLE + shared_frame::USB_PAD_LEN;
            assert!(
                self.bundle_sizes.iter().all(|&n| n <= limit),
                "{:?}",
                self.bundle_sizes
            );
        }

        fn new(board_cfg: SessionConfig) -> Self {
            let cfg = CoreConfig {
                nat: NatConfig::default(),
                max_bundle: shared_frame::DEFAULT_MAX_BUNDLE,
                identity: "qbkit-host test".into(),
            };
            Self {
                now: 0,
                core: Core::new(cfg, 0).unwrap(),
                board: Session::new(board_cfg, frame_time(0)),
                board_rx: Vec::new(),
                board_control: Vec::new(),
                bundle_sizes: Vec::new(),
                nat_events: Vec::new(),
            }
        }

        fn board_cfg() -> SessionConfig {
            SessionConfig::new(Role::Board, "scripted board")
        }

        /// A linked pair after the handshake.
        fn connected(board_cfg: SessionConfig, framing: Framing) -> Self {
            let mut p = Self::new(board_cfg);
            p.core.handle_link_up(0, framing);
            p.exchange(&[]);
            assert!(p.core.is_up() && p.board.is_up(), "handshake");
            p
        }

        /// The board sends one bundle (its control messages and `packets`), then bundles go both
        /// ways until neither side has anything more; the core's NAT events are collected.
        fn exchange(&mut self, packets: &[Vec<u8>]) {
            let mut packets = packets;
            for _ in 0..16 {
                let mut buf = vec![0; shared_frame::DEFAULT_MAX_BUNDLE];
                let mut w = BundleWriter::new(&mut buf, self.board.tx_max_bundle());
                self.board.poll_control(&mut w);
                for p in packets {
                    w.push_ip(CHANNEL_NET, p).unwrap();
                }
                packets = &[];
                let sent_any = !w.is_empty();
                if sent_any {
                    let n = w.finish();
                    self.core.handle_bundle(self.now, &buf[..n]);
                }
                self.nat_events
                    .extend(std::iter::from_fn(|| self.core.poll_nat_event()));
                let mut got_any = false;
                let mut out = Vec::new();
                while let Some(t) = self.core.poll_transmit(self.now, &mut out) {
                    got_any = true;
                    self.deliver(&out[..t.len]);
                }
                if !sent_any && !got_any {
                    return;
                }
            }
            panic!("the pair did not settle");
        }

        fn deliver(&mut self, b: &[u8]) {
            self.bundle_sizes.push(b.len());
            let bundle = Bundle::new_checked(b, shared_frame::MAX_BUNDLE_LIMIT).unwrap();
            for r in bundle.records() {
                let r = r.unwrap();
                if r.kind == shared_frame::RecordKind::Control {
                    self.board_control.push(Control::parse(r.payload).unwrap());
                }
            }
            let rx = &mut self.board_rx;
            self.board
                .handle_bundle(frame_time(self.now), b, |_, p| rx.push(p.to_vec()))
                .unwrap();
        }

        /// Moves the clock and runs both sides' timers (nothing crosses the link).
        fn advance(&mut self, dt: u64) {
            self.now += dt;
            self.core.handle_timeout(self.now);
            self.board.handle_timeout(frame_time(self.now));
        }

        fn os(&mut self, ev: OsEvent<'_>) {
            self.core.handle_os_event(self.now, ev);
            self.exchange(&[]);
        }

        fn take_events(&mut self) -> Vec<NatEvent> {
            std::mem::take(&mut self.nat_events)
        }

        fn take_rx(&mut self) -> Vec<Vec<u8>> {
            std::mem::take(&mut self.board_rx)
        }
    }

    #[test]
    fn hello_and_link_config_bring_the_session_up() {
        // The host offers the default (65520); a board configured smaller sets the link's MTU.
        let mut board = Pair::board_cfg();
        board.max_mtu = 16384;
        let mut p = Pair::new(board);
        assert!(
            p.core.poll_transmit(0, &mut Vec::new()).is_none(),
            "no link, no bundle"
        );
        p.core.handle_link_up(0, Framing::Stream);
        p.exchange(&[]);
        assert!(p.core.is_up());
        assert_eq!(p.core.peer(), Some("scripted board"));
        assert_eq!(p.board.state(), LinkState::Up);
        let lc = p
            .board_control
            .iter()
            .find_map(|c| match c {
                Control::LinkConfig(lc) => Some(lc.clone()),
                _ => None,
            })
            .expect("the board got a LinkConfig");
        assert_eq!(
            lc,
            link_config(&NatConfig::default(), 16384),
            "board MTU 16384 wins"
        );
        assert_eq!(
            lc,
            shared_frame::testing::link_config_dual_stack(),
            "both versions, as docs/protocol.md shows the default LinkConfig"
        );
        assert!(p.core.take_changed(), "front ends are told");
        assert_eq!(p.core.counters().link_ups, 1);
    }

    #[test]
    fn tcp_open_data_half_close_and_reset() {
        let mut p = Pair::connected(Pair::board_cfg(), USB);
        let (b, s) = (ep(BOARD, 40000), ep(SERVER, 80));
        let seg = |ctl, seq, ack, data: &[u8]| tcp_segment(b, s, ctl, seq, ack, 1460, data);
        p.exchange(&[seg(TcpControl::Syn, 1000, None, b"")]);
        let ev = p.take_events();
        let [NatEvent::TcpConnect { flow, dst, .. }] = ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(dst, SocketAddr::V4(s));
        assert!(p.take_rx().is_empty(), "no SYN-ACK before the OS connect");
        p.os(OsEvent::TcpConnected { flow });
        let synack = seg_of(&p.take_rx()[0]);
        assert!(synack.syn && synack.ack == Some(1001));
        let isn = synack.seq.wrapping_add(1);

        // Board → server.
        p.exchange(&[seg(TcpControl::None, 1001, Some(isn), b"hello")]);
        let ev = p.take_events();
        assert!(ev.contains(&NatEvent::TcpReadable { flow }), "{ev:?}");
        let mut buf = [0u8; 64];
        let n = p.core.nat_mut().tcp_recv(flow, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        // Server → board.
        assert_eq!(p.core.nat_mut().tcp_send(flow, b"world").unwrap(), 5);
        p.exchange(&[]);
        let data: Vec<u8> = p
            .take_rx()
            .iter()
            .map(|pkt| seg_of(pkt))
            .flat_map(|s| s.payload)
            .collect();
        assert_eq!(data, b"world");

        // The board closes its half: the OS socket is shut down for writing.
        p.exchange(&[seg(TcpControl::Fin, 1006, Some(isn + 5), b"")]);
        let ev = p.take_events();
        assert!(ev.contains(&NatEvent::TcpShutdown { flow }), "{ev:?}");
        // Then resets: the OS socket is aborted.
        p.exchange(&[seg(TcpControl::Rst, 1007, None, b"")]);
        let ev = p.take_events();
        assert!(
            ev.contains(&NatEvent::TcpClose { flow, reset: true }),
            "{ev:?}"
        );
    }

    /// The laptop dials the board (a forward), the board accepts, and the laptop's first bytes
    /// are already waiting. The driver's pass runs the core's timers first, then the socket
    /// events, then transmits: the bytes must leave with the handshake's ACK in one segment,
    /// not behind a bare ACK the timers sent before the socket layer had its turn (the board
    /// would take two packets where one carries both).
    #[test]
    fn an_inbound_flows_first_bytes_ride_on_the_handshakes_ack() {
        let mut p = Pair::connected(Pair::board_cfg(), USB);
        let board = SocketAddr::V4(ep(BOARD, 22));
        let laptop = SocketAddr::V4(ep(Ipv4Addr::LOCALHOST, 50000));
        let now = nat_time(p.now);
        let flow = p
            .core
            .nat_mut()
            .open_inbound_to(now, Protocol::Tcp, board, laptop)
            .unwrap();
        p.exchange(&[]);
        let syn = seg_of(&p.take_rx()[0]);
        assert!(syn.syn && syn.ack.is_none(), "the core dials the board");
        let synack = tcp_segment(
            ep(BOARD, 22),
            syn.src,
            TcpControl::Syn,
            7000,
            Some(syn.seq.wrapping_add(1)),
            1460,
            b"",
        );
        // One driver pass, in the driver's order (`driver::Driver::work`).
        let mut buf = vec![0; shared_frame::DEFAULT_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut buf, p.board.tx_max_bundle());
        w.push_ip(CHANNEL_NET, &synack).unwrap();
        let n = w.finish();
        p.core.handle_bundle(p.now, &buf[..n]);
        p.core.handle_timeout(p.now);
        let ev: Vec<_> = std::iter::from_fn(|| p.core.poll_nat_event()).collect();
        assert_eq!(
            ev,
            [
                NatEvent::TcpEstablished { flow },
                NatEvent::TcpWritable { flow }
            ]
        );
        let request = b"SSH-2.0-laptop\r\n";
        assert_eq!(
            p.core.nat_mut().tcp_send(flow, request).unwrap(),
            request.len()
        );
        let mut out = Vec::new();
        while let Some(t) = p.core.poll_transmit(p.now, &mut out) {
            p.deliver(&out[..t.len]);
        }
        let segs: Vec<_> = p.take_rx().iter().map(|pkt| seg_of(pkt)).collect();
        let [seg] = &segs[..] else {
            panic!("one segment expected: {segs:?}")
        };
        assert_eq!(seg.ack, Some(7001), "it acknowledges the SYN-ACK");
        assert_eq!(seg.payload, request);
    }

    #[test]
    fn udp_both_ways() {
        let mut p = Pair::connected(Pair::board_cfg(), Framing::Stream);
        let (b, s) = (ep(BOARD, 5353), ep(SERVER, 9999));
        p.exchange(&[udp(b, s, b"ping")]);
        let ev = p.take_events();
        let [
            NatEvent::UdpOpen { flow, dst, .. },
            NatEvent::UdpSend {
                flow: f2,
                ref payload,
            },
        ] = ev[..]
        else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (dst, f2, payload.as_slice()),
            (SocketAddr::V4(s), flow, &b"ping"[..])
        );
        p.os(OsEvent::UdpReceived {
            flow,
            payload: b"pong",
        });
        let rx = p.take_rx();
        assert_eq!(udp_of(&rx[0]), (s, b, b"pong".to_vec()));
    }

    #[test]
    fn a_recycled_buffer_ends_up_holding_exactly_the_new_bundle() {
        // Buffers come back from the link task holding old bundles, short or long: the new bundle
        // replaces them whole (built in place in a long one, copied out of the core's own buffer
        // into a short one), and nothing of the old bytes reaches the board.
        let mut p = Pair::connected(Pair::board_cfg(), Framing::Stream);
        let (b, s) = (ep(BOARD, 5355), ep(SERVER, 9999));
        p.exchange(&[udp(b, s, b"x")]);
        let flow = p.take_events()[0].flow();
        let max = p.core.session().tx_max_bundle();
        for (held, len) in [
            (0, 10),
            (max, 10),
            (max / 2, 16000),
            (100, 16000),
            (max, 16000),
        ] {
            let payload = vec![7u8; len];
            p.core.handle_os_event(
                p.now,
                OsEvent::UdpReceived {
                    flow,
                    payload: &payload,
                },
            );
            let mut buf = vec![0xEE; held];
            let t = p.core.poll_transmit(p.now, &mut buf).expect("a bundle");
            assert_eq!(buf.len(), t.len, "held {held}");
            p.deliver(&buf);
            let rx = p.take_rx();
            assert_eq!(rx.len(), 1, "held {held}");
            assert_eq!(udp_of(&rx[0]), (s, b, payload), "held {held}");
        }
    }

    #[test]
    fn a_packet_that_does_not_fit_waits_queued_for_the_next_bundle_in_order() {
        // At the largest MTU a bundle holds one full packet: what does not fit the room left
        // stays in the Nat's queue and opens the next bundle, sizes mixed, order kept.
        let mut cfg = Pair::board_cfg();
        cfg.max_mtu = 65520;
        let mut p = Pair::connected(cfg, Framing::Stream);
        let (b, s) = (ep(BOARD, 5356), ep(SERVER, 9999));
        p.exchange(&[udp(b, s, b"x")]);
        let flow = p.take_events()[0].flow();
        let sizes = [40000, 30000, 100, 65000, 10, 20];
        for (i, &len) in sizes.iter().enumerate() {
            let payload = vec![i as u8; len];
            p.core.handle_os_event(
                p.now,
                OsEvent::UdpReceived {
                    flow,
                    payload: &payload,
                },
            );
        }
        p.bundle_sizes.clear();
        p.exchange(&[]);
        let got: Vec<Vec<u8>> = p.take_rx().iter().map(|pkt| udp_of(pkt).2).collect();
        let want: Vec<Vec<u8>> = (0u8..).zip(sizes).map(|(i, len)| vec![i; len]).collect();
        assert_eq!(got, want);
        assert_eq!(
            p.bundle_sizes.len(),
            3,
            "40000 | 30000 100 | 65000 10 20: {:?}",
            p.bundle_sizes
        );
        assert_eq!(p.core.counters().drop_tx_too_big, 0);
    }

    #[test]
    fn a_download_is_written_into_recycled_bundles_whole_and_in_order() {
        // TCP segments are written by smoltcp straight into the bundle, here recycled buffers
        // full of an old bundle's bytes: every segment arrives intact (checksums), in order, the
        // bundles carry several, and the counters match what crossed. The board's link MTU is
        // 16384, as its SYN's MSS says (at 65520 a full segment fills a bundle alone).
        let mut board = Pair::board_cfg();
        board.max_mtu = 16384;
        let mut p = Pair::connected(board, USB);
        let (b, s) = (ep(BOARD, 40001), ep(SERVER, 80));
        p.exchange(&[tcp_segment(b, s, TcpControl::Syn, 1000, None, 16344, b"")]);
        let [NatEvent::TcpConnect { flow, .. }] = p.take_events()[..] else {
            panic!("no connect")
        };
        p.os(OsEvent::TcpConnected { flow });
        let synack = seg_of(&p.take_rx()[0]);
        let isn = synack.seq.wrapping_add(1);
        p.exchange(&[tcp_segment(
            b,
            s,
            TcpControl::None,
            1001,
            Some(isn),
            16344,
            b"",
        )]);
        let before = p.core.nat().counters().clone();

        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = p.core.nat_mut().tcp_send(flow, &data).unwrap();
        assert!(sent > 100_000, "{sent}");
        assert!(p.core.wants_transmit());
        let max = p.core.session().tx_max_bundle();
        let mut got = Vec::new();
        let (mut packets, mut bytes, mut bundles, mut shared) = (0u64, 0u64, 0, 0);
        loop {
            let mut buf = vec![0xEE; max];
            let Some(tx) = p.core.poll_transmit(p.now, &mut buf) else {
                break;
            };
            bundles += 1;
            let bundle =
                Bundle::new_checked(&buf[..tx.len], shared_frame::MAX_BUNDLE_LIMIT).unwrap();
            let mut in_bundle = 0;
            for rec in bundle.records() {
                let rec = rec.unwrap();
                let seg = seg_of(rec.payload);
                assert_eq!(seg.seq, isn.wrapping_add(got.len() as u32), "in order");
                got.extend_from_slice(&seg.payload);
                packets += 1;
                bytes += rec.payload.len() as u64;
                in_bundle += 1;
            }
            shared += usize::from(in_bundle >= 2);
        }
        assert_eq!(got, data[..sent]);
        assert!(
            bundles >= 3 && shared >= bundles - 1,
            "{shared} of {bundles}"
        );
        let c = p.core.nat().counters();
        assert_eq!(c.tx_packets - before.tx_packets, packets);
        assert_eq!(c.tx_bytes - before.tx_bytes, bytes);
        assert_eq!(p.core.counters().drop_tx_too_big, 0);
    }

    #[test]
    fn a_smaller_board_mtu_shrinks_the_offer_and_the_nat() {
        let mut cfg = Pair::board_cfg();
        cfg.max_mtu = 1500;
        let p = Pair::connected(cfg, Framing::Stream);
        assert_eq!(p.core.nat().config().mtu, 1500, "the NAT is rebuilt for it");
        let lc = p.board.negotiated().map(|n| n.max_mtu);
        assert_eq!(lc, Some(1500));
        assert!(p.board_control.iter().any(
            |c| matches!(c, Control::LinkConfig(lc) if *lc == link_config(&NatConfig::default(), 1500))
        ));
    }

    #[test]
    fn a_smaller_max_bundle_from_the_board_bounds_every_bundle() {
        let mut cfg = Pair::board_cfg();
        cfg.max_bundle = shared_frame::MIN_MAX_BUNDLE;
        cfg.max_mtu = 1500;
        let mut p = Pair::connected(cfg, USB);
        let (b, s) = (ep(BOARD, 5353), ep(SERVER, 9999));
        p.exchange(&[udp(b, s, b"x")]);
        let ev = p.take_events();
        let flow = ev[0].flow();
        p.bundle_sizes.clear();
        // More than one small bundle of datagrams for the board: several bundles, each within
        // the board's limit (plus the USB pad).
        let payload = [7u8; 1000];
        for _ in 0..20 {
            p.core.handle_os_event(
                p.now,
                OsEvent::UdpReceived {
                    flow,
                    payload: &payload,
                },
            );
        }
        p.exchange(&[]);
        assert_eq!(p.take_rx().len(), 20, "every datagram arrives");
        assert!(p.bundle_sizes.len() > 1, "{:?}", p.bundle_sizes);
        p.assert_bundles_fit_smallest_max_bundle();
    }

    #[test]
    fn smaller_bundles_mid_session_drop_what_no_longer_fits_and_nothing_waits() {
        let mut p = Pair::connected(Pair::board_cfg(), USB);
        let (b, s) = (ep(BOARD, 5354), ep(SERVER, 9999));
        p.exchange(&[udp(b, s, b"x")]);
        let flow = p.take_events()[0].flow();
        // The board restarts with 4 KiB bundles while the flow is open: the NAT keeps its MTU.
        let mut cfg = SessionConfig::new(Role::Board, "restarted board");
        cfg.max_bundle = shared_frame::MIN_MAX_BUNDLE;
        p.board = Session::new(cfg, frame_time(p.now));
        p.exchange(&[]);
        assert_eq!(
            p.core.session().tx_max_bundle(),
            shared_frame::MIN_MAX_BUNDLE
        );
        p.bundle_sizes.clear();
        for len in [8000, 100] {
            p.core.handle_os_event(
                p.now,
                OsEvent::UdpReceived {
                    flow,
                    payload: &vec![7u8; len],
                },
            );
        }
        p.exchange(&[]);
        // The 8 KiB datagram can never cross: dropped and counted, not carried; the next one
        // arrives and nothing is left waiting.
        let rx = p.take_rx();
        assert_eq!(rx.len(), 1, "only the small datagram arrives");
        assert_eq!(p.core.counters().drop_tx_too_big, 1);
        assert!(!p.core.wants_transmit(), "nothing waits for a bundle");
        assert!(p.core.poll_transmit(p.now, &mut Vec::new()).is_none());
        p.assert_bundles_fit_smallest_max_bundle();
    }

    #[test]
    fn a_silent_board_times_out_and_a_relink_starts_over() {
        let mut p = Pair::connected(Pair::board_cfg(), Framing::Stream);
        p.core.take_changed();
        // Nothing crosses the link for longer than the peer timeout (5 s).
        for _ in 0..60 {
            p.advance(100 * MS);
        }
        assert!(!p.core.is_up(), "session timed out");
        assert_eq!(p.core.peer(), None);
        assert!(p.core.take_changed());
        assert!(
            p.core.poll_close_link(),
            "the silent board's link is to be closed"
        );
        assert!(!p.core.poll_close_link(), "once");
        assert!(!p.core.has_link());
        assert_eq!(p.core.counters().links_closed_silent, 1);
        p.core.handle_link_down(p.now);
        assert!(!p.core.has_link());
        assert!(p.core.poll_transmit(p.now, &mut Vec::new()).is_none());
        p.board.reset(frame_time(p.now));
        p.core.handle_link_up(p.now, Framing::Stream);
        p.exchange(&[]);
        assert!(p.core.is_up(), "a new link brings a new session");
        assert_eq!(
            (p.core.counters().link_ups, p.core.counters().link_downs),
            (2, 1)
        );
    }

    #[test]
    fn goodbye_sends_a_bye() {
        let mut p = Pair::connected(Pair::board_cfg(), USB);
        p.board_control.clear();
        p.core.close("stopping");
        let mut buf = Vec::new();
        let t = p
            .core
            .poll_transmit(p.now, &mut buf)
            .expect("a bundle with the Bye");
        p.deliver(&buf[..t.len]);
        assert!(
            p.board_control.iter().any(|c| matches!(c, Control::Bye(_))),
            "{:?}",
            p.board_control
        );
        assert!(!p.board.is_up(), "the board saw the Bye");
    }
}
