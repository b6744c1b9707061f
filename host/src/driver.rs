//! The one event loop of `qbkit-host`: link (bundles in and out) + [`Session`] + [`Nat`] + OS
//! sockets + timers, on one tokio current-thread task. This is the only place that reads the
//! clock.
//!
//! # Theory of operation
//!
//! ```text
//!  transport task ──LinkEvent──▶ handle_bundle ─▶ Session ─IP─▶ Nat::handle_ip_packet
//!                                                               │ poll_event
//!  OS sockets ◀── Sockets::handle_event ◀──────────────────────┘
//!  OS sockets ──ready──▶ Sockets::service_ready ─▶ tcp_send_with / handle_os_event ─▶ Nat
//!  transport task ◀──bundle── transmit: poll_control + poll_ip_packet… (when a slot is free)
//! ```
//!
//! Each turn of the loop first *works until quiescent*, then *waits*. Working means: run due
//! timers, take every received bundle already queued (batching packets is cheaper: one ACK per
//! flow per batch), service every ready socket, carry out every NAT event (which can produce more
//! events), and hand bundles to the link while it has a free slot. As in quinn's
//! `ConnectionDriver`, one input can unlock several outputs (an ACK frees window, which lets a
//! socket be read, which queues packets, which arms a timer), so the work phase repeats until
//! neither a timer, an input nor a transmit produced anything. Then the task sleeps until a
//! bundle arrives, a socket becomes ready, the link frees a slot (only while output waits), the
//! earliest timer, or a control-socket client.
//!
//! # Aggregation
//!
//! There is no flush timer. Whenever the link has a free slot, everything the core has for the
//! board goes into one bundle (session control first) and leaves at once; while every slot is
//! busy the core is not drained, so packets accumulate in it (bounded by its board queue and
//! the TCP windows) and leave together in the next bundle. An idle link therefore adds no
//! latency, and a busy one gets full bundles.
//!
//! # Link loss
//!
//! A lost link resets the session (Hello again on the next link); flows stay, so a quick
//! reconnect (USB replug, stream re-accept) keeps the board's TCP connections alive. While no
//! link is up the core is not drained: TCP stalls on its windows, UDP for the board is dropped
//! and counted by the core.
//!
//! # Forwards and `connect`
//!
//! Forward listeners (`forward.rs`) hand accepted connections and received datagrams to the
//! loop through one channel; the loop asks the core for an inbound flow
//! (`Nat::open_inbound`) and gives the socket to [`Sockets`], after
//! which it is serviced like any other. Without a board session a new connection is reset at
//! once (the laptop client sees ECONNRESET, not a hang). Control-socket requests arrive as
//! parsed [`status::Request`]s; `connect` adopts the control connection itself as the flow's
//! stream.
//!
//! # Summary for front ends
//!
//! With [`DriverConfig::summary`] set, the loop publishes a small [`Summary`] (link, session,
//! peer, byte counters, flows, handshake error) on a `watch` channel after every link or session
//! change and once a second; `qbkit-host tray` renders it. Publishing never waits.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use qbkit_nat::{Nat, NatConfig, NatError, Protocol};
use shared_frame::{
    BundleWriter, ByeReason, CHANNEL_NET, Cidr, LinkConfig, RecordKind, Role, Session,
    SessionConfig, SessionEvent,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Sleep;

use crate::forward::{self, ForwardSpec, Forwards, Inbound, Owner};
use crate::sockets::{OsStream, ReadyQueue, Sockets};
use crate::status::{self, ControlMsg, Reply, Request, Status};
use crate::transport::{Framing, LinkEvent, LinkUp};

/// Received bundles handled per work pass before the core's output is drained (bounds latency
/// under a flood from the board).
const RX_BATCH: usize = 16;
/// While the link cannot take output, re-check the core's timers at least this often.
const BUSY_TIMER: Duration = Duration::from_millis(100);
/// How often [`Summary`] counters are refreshed (state changes are published at once).
const SUMMARY_PERIOD: Duration = Duration::from_secs(1);

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The NAT configuration is invalid.
    #[error("NAT configuration: {0}")]
    Nat(#[from] NatError),
    /// The control socket could not be created.
    #[error("control socket {path}: {source}")]
    Control {
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A `--forward` could not listen.
    #[error("forward {spec}: {source}")]
    Forward {
        /// The forward.
        spec: ForwardSpec,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the driver needs besides the link.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DriverConfig {
    /// The NAT core's configuration (addresses, MTU, policy, DNS upstreams).
    pub nat: NatConfig,
    /// Largest bundle we accept from the board.
    pub max_bundle: usize,
    /// Our identity in Hello.
    pub identity: String,
    /// The transport, for status output.
    pub transport: String,
    /// Where to serve `qbkit-host status` (`None`: no control socket).
    pub control_path: Option<PathBuf>,
    /// Redraw a one-line summary (link, rates, flows) on stdout every second (set when stdout
    /// is a terminal; logs then clear the line before they print, see `main.rs`).
    pub live_status: bool,
    /// Publish a [`Summary`] here (front ends such as the tray; `None`: nothing is published).
    pub summary: Option<watch::Sender<Summary>>,
    /// Port forwards into the board opened at start (`--forward`).
    pub forwards: Vec<ForwardSpec>,
    /// Follow the system's resolvers while running ([`crate::dns_watch`]); off when `--dns`
    /// pinned them.
    pub follow_os_dns: bool,
}

/// What a front end shows of the running engine (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// The attached link's description (`None`: no board / no peer).
    pub link: Option<String>,
    /// The session is up: the board has its configuration and internet.
    pub session_up: bool,
    /// The board's identity from its Hello, while the session is up.
    pub peer: Option<String>,
    /// The board's IPv4 address on the link, while the session is up.
    pub board_ipv4: Option<Ipv4Addr>,
    /// Session bytes received from the board so far.
    pub rx_bytes: u64,
    /// Session bytes sent to the board so far.
    pub tx_bytes: u64,
    /// Open NAT flows.
    pub flows: usize,
    /// Why the handshake on the current link failed (version mismatch, wrong role); cleared
    /// when the session comes up or the link goes away.
    pub error: Option<String>,
    /// One line per port forward (`ssh 127.0.0.1:2222 → tcp:22`).
    pub forwards: Vec<String>,
}

impl DriverConfig {
    /// Defaults around a NAT configuration.
    pub fn new(nat: NatConfig) -> Self {
        Self {
            nat,
            max_bundle: shared_frame::DEFAULT_MAX_BUNDLE,
            identity: format!("qbkit-host {}", env!("CARGO_PKG_VERSION")),
            transport: String::new(),
            control_path: None,
            live_status: false,
            summary: None,
            forwards: Vec::new(),
            follow_os_dns: false,
        }
    }
}

/// Counters of the driver itself.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct DriverCounters {
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
    /// Dropped: a packet from the core larger than one bundle to the board carries (the board
    /// renegotiated smaller bundles while flows sized for larger ones were open).
    pub drop_tx_too_big: u64,
    /// Work passes (loop turns).
    pub passes: u64,
    /// Inbound connections or datagrams refused because no board session was up (the NAT
    /// counts those it had no room for, `drop_inbound_no_room`).
    pub inbound_no_session: u64,
}

/// Monotonic clock in microseconds since the driver started (the sans-IO cores' time base).
#[derive(Debug, Clone, Copy)]
struct Clock(std::time::Instant);

impl Clock {
    fn micros(self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
    fn frame(self) -> shared_frame::Instant {
        shared_frame::Instant::from_micros(self.micros())
    }
    fn nat(self) -> qbkit_nat::Instant {
        qbkit_nat::Instant::from_micros(i64::try_from(self.micros()).unwrap_or(i64::MAX))
    }
    fn deadline(self, micros: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.0 + Duration::from_micros(micros))
    }
}

/// The loop's state. Built by [`run`].
struct Driver {
    clock: Clock,
    cfg: DriverConfig,
    nat: Nat,
    session: Session,
    sockets: Sockets,
    ready: Arc<ReadyQueue>,
    link: Option<LinkUp>,
    link_description: Option<String>,
    /// The core may have packets for the board (cleared when `poll_ip_packet` returns `None`).
    tx_pending: bool,
    /// A packet polled from the core that did not fit the last bundle: `scratch[..carry]`.
    carry: usize,
    scratch: Vec<u8>,
    /// A bundle buffer that came back unused.
    spare: Option<Vec<u8>>,
    peer_stats: Option<shared_frame::Stats>,
    counters: DriverCounters,
    /// Session byte counters (rx, tx) and time (µs) at the last live status line.
    live_prev: (u64, u64, u64),
    /// The board's identity while the session is up (for [`Summary`]).
    peer: Option<String>,
    /// Handshake failure on the current link (for [`Summary`]).
    handshake_error: Option<String>,
    /// Why the link was last lost or could not be established (for `status`).
    last_link_error: Option<String>,
    /// A link or session change happened since the last [`Summary`] was published.
    summary_dirty: bool,
    forwards: Forwards,
}

/// Runs the driver until `shutdown` completes or the transport's event channel closes.
pub async fn run(
    cfg: DriverConfig,
    mut link_events: mpsc::Receiver<LinkEvent>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let clock = Clock(std::time::Instant::now());
    let (inbound_tx, mut inbound_rx) = mpsc::channel(forward::UDP_QUEUE);
    let mut d = Driver::new(cfg, clock, inbound_tx)?;
    for spec in d.cfg.forwards.clone() {
        d.forwards
            .add(spec)
            .map_err(|source| Error::Forward { spec, source })?;
    }
    // Without a control socket the board is still served: only status, runtime forwards and
    // `connect` are missing.
    let mut control = match &d.cfg.control_path {
        Some(p) => match status::ControlServer::bind(p) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "no control socket: `status`, `forward` and `connect` will not reach this daemon");
                None
            }
        },
        None => None,
    };
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlMsg>(16);
    tracing::info!(
        board = %d.cfg.nat.board_ipv4,
        gateway = %d.cfg.nat.gateway_ipv4,
        mtu = d.cfg.nat.mtu,
        dns = ?d.cfg.nat.dns_servers,
        "driver started"
    );
    let mut shutdown = std::pin::pin!(shutdown);
    let mut sleep: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::from_hours(1)));
    let ready = Arc::clone(&d.ready);
    let mut live = d
        .cfg
        .live_status
        .then(|| tokio::time::interval(Duration::from_secs(1)));
    let mut summary_tick = d
        .cfg
        .summary
        .is_some()
        .then(|| tokio::time::interval(SUMMARY_PERIOD));
    let mut dns_updates = d
        .cfg
        .follow_os_dns
        .then(|| crate::dns_watch::spawn(d.cfg.nat.dns_servers.clone()));
    loop {
        let deadline = d.work();
        if d.summary_dirty {
            d.publish_summary();
        }
        sleep.as_mut().reset(clock.deadline(deadline));
        let want_tx = d.wants_transmit();
        let tx = d.link.as_ref().map(|l| l.tx.clone());
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            ev = link_events.recv() => {
                let Some(ev) = ev else {
                    tracing::info!("transport ended");
                    break;
                };
                d.handle_link_event(ev);
                // Take what else is queued: packets of one batch share one drain (one ACK per
                // flow per batch).
                for _ in 1..RX_BATCH {
                    let Ok(ev) = link_events.try_recv() else { break };
                    d.handle_link_event(ev);
                }
            }
            () = std::future::poll_fn(|cx| ready.poll_ready(cx)) => {}
            permit = async { tx.as_ref().expect("guarded").reserve().await }, if want_tx && tx.is_some() => {
                // Only a wake-up: the slot is used by `transmit` in the next work pass.
                drop(permit);
            }
            () = &mut sleep => {}
            _ = async { live.as_mut().expect("guarded").tick().await }, if live.is_some() => {
                d.print_live();
            }
            _ = async { summary_tick.as_mut().expect("guarded").tick().await }, if summary_tick.is_some() => {
                d.publish_summary();
            }
            conn = async { control.as_mut().expect("guarded").accept().await }, if control.is_some() => {
                if let Some(stream) = conn {
                    status::read_request(stream, ctl_tx.clone());
                }
            }
            Some(msg) = ctl_rx.recv() => d.handle_control(msg),
            Ok(()) = async { dns_updates.as_mut().expect("guarded").changed().await }, if dns_updates.is_some() => {
                let servers = dns_updates.as_mut().expect("guarded").borrow_and_update().clone();
                d.nat.set_dns_servers(d.clock.nat(), servers);
            }
            Some(ev) = inbound_rx.recv() => {
                d.handle_inbound(ev);
                for _ in 1..RX_BATCH {
                    let Ok(ev) = inbound_rx.try_recv() else { break };
                    d.handle_inbound(ev);
                }
            }
        }
    }
    d.goodbye().await;
    Ok(())
}

impl Driver {
    fn new(cfg: DriverConfig, clock: Clock, inbound: mpsc::Sender<Inbound>) -> Result<Self, Error> {
        let nat = Nat::new(cfg.nat.clone(), clock.nat())?;
        let mut scfg = SessionConfig::new(Role::Host, cfg.identity.clone());
        scfg.max_bundle = cfg.max_bundle;
        scfg.max_mtu = u32::try_from(cfg.nat.mtu).unwrap_or(u32::MAX);
        scfg.link_config = Some(link_config(&cfg.nat, cfg.nat.mtu));
        let session = Session::new(scfg, clock.frame());
        let sockets = Sockets::new();
        let ready = sockets.ready_queue();
        Ok(Self {
            clock,
            scratch: vec![0; cfg.nat.mtu],
            cfg,
            nat,
            session,
            sockets,
            ready,
            link: None,
            link_description: None,
            tx_pending: false,
            carry: 0,
            spare: None,
            peer_stats: None,
            counters: DriverCounters::default(),
            live_prev: (0, 0, 0),
            peer: None,
            handshake_error: None,
            last_link_error: None,
            summary_dirty: true,
            forwards: Forwards::new(inbound),
        })
    }

    /// Works until quiescent; returns the next timer deadline (µs on the driver clock).
    fn work(&mut self) -> u64 {
        loop {
            self.counters.passes += 1;
            let now = self.clock.micros();
            // Timers first: they may queue control messages and packets.
            if self
                .session
                .poll_timeout()
                .is_some_and(|t| t.as_micros() <= now)
            {
                self.session.handle_timeout(self.clock.frame());
            }
            if self
                .nat
                .poll_timeout(self.clock.nat())
                .is_some_and(|t| t.total_micros() <= now.cast_signed())
            {
                self.nat.handle_timeout(self.clock.nat());
                self.tx_pending = true;
            }
            self.drain_session_events();
            let mut progress = self.sockets.service_ready(&mut self.nat, self.clock.nat());
            progress |= self.drain_nat_events();
            for c in self.sockets.take_closed() {
                self.forwards
                    .closed(c.flow, c.to_board, c.from_board, c.refused);
            }
            if progress {
                self.tx_pending = true;
            }
            progress |= self.transmit();
            if !progress && !self.sockets.has_more() {
                break;
            }
        }
        self.next_deadline()
    }

    fn next_deadline(&mut self) -> u64 {
        let now = self.clock.micros();
        let session = self
            .session
            .poll_timeout()
            .map(shared_frame::Instant::as_micros);
        let mut nat = self
            .nat
            .poll_timeout(self.clock.nat())
            .map(|t| u64::try_from(t.total_micros()).unwrap_or(0));
        if nat.is_some_and(|t| t <= now) {
            // The core asks to be drained (or has a due timer that needs the board queue to
            // drain). That only helps once the link frees a slot, which wakes us anyway.
            nat = Some(now + BUSY_TIMER.as_micros() as u64);
        }
        [session, nat]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + 3_600_000_000)
    }

    fn link_writable(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.tx.capacity() > 0)
    }

    fn wants_transmit(&self) -> bool {
        self.link.is_some()
            && (self.tx_pending || self.carry > 0 || self.session.has_pending_control())
    }

    fn handle_link_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up(up) => {
                self.counters.link_ups += 1;
                tracing::info!(link = %up.description, "link up");
                self.link_description = Some(up.description.clone());
                self.link = Some(up);
                self.session.reset(self.clock.frame());
                self.tx_pending = true;
                self.handshake_error = None;
                self.summary_dirty = true;
            }
            LinkEvent::Down { reason, .. } => {
                self.counters.link_downs += 1;
                // The reason once per change: a peer that keeps failing the same way is paced by
                // the transport's backoff and logged there.
                if self.last_link_error.as_ref() == Some(&reason) {
                    tracing::debug!(%reason, "link down");
                } else {
                    tracing::warn!(%reason, "link down");
                }
                self.last_link_error = Some(reason);
                self.link = None;
                self.session.reset(self.clock.frame());
                self.drain_session_events();
                self.peer = None;
                self.handshake_error = None;
                self.summary_dirty = true;
            }
            LinkEvent::Bundle(b) => self.handle_bundle(&b),
            LinkEvent::Listening { url } => self.cfg.transport = url,
            LinkEvent::Failed { reason } => self.last_link_error = Some(reason),
        }
    }

    fn handle_bundle(&mut self, b: &[u8]) {
        self.counters.rx_bundles += 1;
        let now = self.clock.nat();
        let nat = &mut self.nat;
        let unknown = &mut self.counters.drop_rx_unknown_channel;
        let res = self
            .session
            .handle_bundle(self.clock.frame(), b, |ch, pkt| {
                if ch == CHANNEL_NET {
                    nat.handle_ip_packet(now, pkt);
                } else {
                    *unknown += 1;
                }
            });
        if let Err(e) = res {
            self.counters.drop_rx_bad_bundle += 1;
            tracing::debug!(error = %e, "bad bundle from the board");
        }
        self.tx_pending = true;
    }

    fn drain_session_events(&mut self) {
        while let Some(ev) = self.session.poll_event() {
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
                    self.summary_dirty = true;
                    // No packet may be larger than one bundle the board takes.
                    let mtu = (n.max_mtu as usize).min(shared_frame::max_packet(n.max_bundle));
                    if mtu < self.nat.config().mtu {
                        self.shrink_mtu(mtu);
                    }
                }
                SessionEvent::Down(reason) => {
                    tracing::info!(?reason, "board session down");
                    self.peer = None;
                    self.summary_dirty = true;
                }
                SessionEvent::PeerStats(s) => self.peer_stats = Some(s),
                SessionEvent::Error(e) => {
                    tracing::warn!(error = %e, "link protocol error");
                    // Before the session is up an error means the handshake failed (a version
                    // mismatch, a peer with the wrong role): the user has to act. Once up, a bad
                    // message is counted and the link goes on.
                    if !self.session.is_up() {
                        self.handshake_error = Some(e.to_string());
                        self.summary_dirty = true;
                    }
                }
                SessionEvent::LinkConfig(_) => {}
                other => tracing::debug!(?other, "session event"),
            }
        }
    }

    /// The board can take less than our MTU: offer it the smaller one, and size the core for it
    /// if no flow exists yet (the core's MTU is fixed at creation).
    fn shrink_mtu(&mut self, mtu: usize) {
        let mtu = mtu.max(qbkit_nat::MIN_MTU);
        self.session
            .set_link_config(link_config(&self.cfg.nat, mtu));
        if self.nat.flow_count() == 0 {
            let mut cfg = self.nat.config().clone();
            cfg.mtu = mtu;
            match Nat::new(cfg, self.clock.nat()) {
                Ok(nat) => {
                    self.nat = nat;
                    self.carry = 0;
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

    /// Carries out every pending NAT event. Returns true when there were any.
    fn drain_nat_events(&mut self) -> bool {
        let mut any = false;
        while let Some(ev) = self.nat.poll_event() {
            any = true;
            self.sockets
                .handle_event(&mut self.nat, self.clock.nat(), ev);
        }
        any
    }

    /// Hands bundles to the link while it has free slots and something is waiting. Returns true
    /// when at least one bundle was sent.
    fn transmit(&mut self) -> bool {
        let mut sent = false;
        while self.link_writable() && self.wants_transmit() {
            let max = self.session.tx_max_bundle();
            // The writer overwrites everything it emits, so a buffer kept from a pass that found
            // nothing to send is reused without zeroing it again.
            let mut buf = self.spare.take().unwrap_or_default();
            buf.resize(max, 0);
            let mut w = BundleWriter::new(&mut buf, max);
            self.session.poll_control(&mut w);
            let (packets, bytes) = self.fill_bundle(&mut w);
            if w.is_empty() {
                self.spare = Some(buf);
                break;
            }
            let framing = self.link.as_ref().map_or(Framing::Stream, |l| l.framing);
            let n = w.finish_for(framing);
            buf.truncate(n);
            self.session.record_tx(packets, bytes);
            let Some(link) = &self.link else { break };
            if link.tx.try_send(buf).is_err() {
                // The transport went away between our capacity check and now; its Down event
                // follows. The packets are lost (TCP retransmits).
                self.counters.drop_tx_link_gone += 1;
                self.session.record_tx_drop(packets);
                break;
            }
            self.counters.tx_bundles += 1;
            self.counters.tx_bundle_bytes += n as u64;
            sent = true;
        }
        sent
    }

    /// Moves packets from the core into `w` until it is full or the core is empty.
    fn fill_bundle(&mut self, w: &mut BundleWriter<'_>) -> (u64, u64) {
        let mtu = self.scratch.len();
        let fits = shared_frame::max_packet(self.session.tx_max_bundle());
        let now = self.clock.nat();
        let (mut packets, mut bytes) = (0u64, 0u64);
        if self.carry > fits {
            self.drop_too_big(self.carry, fits);
        } else if self.carry > 0 {
            if w.push_ip(CHANNEL_NET, &self.scratch[..self.carry]).is_err() {
                return (0, 0);
            }
            packets += 1;
            bytes += self.carry as u64;
            self.carry = 0;
        }
        loop {
            if w.available_payload() >= mtu {
                // Zero-copy: the core writes straight into the bundle.
                let out = w.payload_buf(mtu).expect("room was checked");
                let Some(n) = self.nat.poll_ip_packet(now, out) else {
                    self.tx_pending = false;
                    break;
                };
                w.commit(RecordKind::Ip, CHANNEL_NET, n)
                    .expect("the packet fits the space it was written to");
                packets += 1;
                bytes += n as u64;
            } else {
                let Some(n) = self.nat.poll_ip_packet(now, &mut self.scratch) else {
                    self.tx_pending = false;
                    break;
                };
                if n > fits {
                    self.drop_too_big(n, fits);
                    continue;
                }
                if w.push_ip(CHANNEL_NET, &self.scratch[..n]).is_err() {
                    self.carry = n;
                    break;
                }
                packets += 1;
                bytes += n as u64;
            }
        }
        (packets, bytes)
    }

    /// Drops a packet no bundle to the board can carry (instead of holding it, which would stall
    /// the link and spin the loop): counted, logged at the 1st, 2nd, 4th, 8th… time.
    fn drop_too_big(&mut self, len: usize, fits: usize) {
        self.carry = 0;
        self.counters.drop_tx_too_big += 1;
        let count = self.counters.drop_tx_too_big;
        if count.is_power_of_two() {
            tracing::warn!(
                len,
                fits,
                count,
                "packet larger than the board's bundles dropped (it renegotiated smaller bundles while flows were open)"
            );
        }
    }

    /// Redraws the live status line: link, rates both ways since the last line, flows.
    #[allow(clippy::cast_precision_loss, reason = "display only")]
    fn print_live(&mut self) {
        use std::io::Write as _;
        let now = self.clock.micros();
        let c = self.session.counters();
        let (rx0, tx0, t0) = self.live_prev;
        self.live_prev = (c.rx_bytes, c.tx_bytes, now);
        let secs = now.saturating_sub(t0).max(1) as f64 / 1e6;
        let mbit = |b: u64| b as f64 * 8.0 / secs / 1e6;
        let state = match (&self.link, &self.link_description) {
            (Some(_), Some(d)) if self.session.is_up() => d.as_str(),
            (Some(_), _) => "link up, no session yet",
            (None, _) => "waiting for the board",
        };
        let line = format!(
            "\r\x1b[K{state} | board→net {:.1} Mbit/s | net→board {:.1} Mbit/s | {} flows",
            mbit(c.rx_bytes.saturating_sub(rx0)),
            mbit(c.tx_bytes.saturating_sub(tx0)),
            self.nat.flow_count()
        );
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }

    /// Publishes the current [`Summary`] when it differs from the last one (no wake-up for an
    /// idle link).
    fn publish_summary(&mut self) {
        self.summary_dirty = false;
        let Some(tx) = &self.cfg.summary else { return };
        let up = self.session.is_up();
        let c = self.session.counters();
        let next = Summary {
            link: self
                .link
                .as_ref()
                .map(|_| self.link_description.clone().unwrap_or_default()),
            session_up: up,
            peer: self.peer.clone().filter(|_| up),
            board_ipv4: up.then_some(self.cfg.nat.board_ipv4),
            rx_bytes: c.rx_bytes,
            tx_bytes: c.tx_bytes,
            flows: self.nat.flow_count(),
            error: self.handshake_error.clone(),
            forwards: self.forwards.summary(),
        };
        tx.send_if_modified(|s| {
            let changed = *s != next;
            if changed {
                *s = next;
            }
            changed
        });
    }

    /// Sends a Bye if a link is up and waits briefly for it to leave.
    async fn goodbye(&mut self) {
        if self.cfg.live_status {
            println!();
        }
        self.session
            .close(ByeReason::Shutdown, "qbkit-host is stopping");
        if let Some(link) = &self.link {
            let mut buf = vec![0u8; self.session.tx_max_bundle()];
            let mut w = BundleWriter::new(&mut buf, self.session.tx_max_bundle());
            self.session.poll_control(&mut w);
            let n = w.finish_for(link.framing);
            buf.truncate(n);
            let _ = tokio::time::timeout(Duration::from_millis(500), link.tx.send(buf)).await;
            // Give the writer a moment to put it on the wire.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!("driver stopped");
    }

    fn status(&self) -> Status {
        let now = self.clock.nat();
        Status::collect(&status::Sources {
            transport: &self.cfg.transport,
            link: self
                .link
                .as_ref()
                .map(|_| self.link_description.as_deref().unwrap_or("")),
            last_link_error: self.last_link_error.as_deref(),
            session: &self.session,
            nat: &self.nat,
            flows: self.nat.flows(now),
            sockets: self.sockets.counters(),
            os_sockets: self.sockets.len(),
            driver: &self.counters,
            peer_stats: self.peer_stats.as_ref(),
            uptime: Duration::from_micros(self.clock.micros()),
            forwards: self.forward_status(),
        })
    }

    fn forward_status(&self) -> Vec<forward::ForwardStatus> {
        self.forwards.status(|f| self.sockets.flow_bytes(f))
    }

    /// A connection accepted or a datagram received by a forward listener.
    fn handle_inbound(&mut self, ev: Inbound) {
        let now = self.clock.nat();
        match ev {
            Inbound::Tcp {
                forward,
                board_port,
                stream,
                peer,
            } => {
                let flow = if self.session.is_up() {
                    self.nat
                        .open_inbound(now, Protocol::Tcp, board_port, peer)
                        .map_err(|e| {
                            tracing::debug!(%peer, board_port, error = %e, "forward: connection refused");
                        })
                } else {
                    self.counters.inbound_no_session += 1;
                    tracing::debug!(%peer, board_port, "forward: no board connected, connection reset");
                    Err(())
                };
                if let Ok(flow) = flow {
                    self.sockets
                        .adopt_stream(flow, OsStream::Tcp(stream), false);
                    self.forwards.opened(flow, Owner::Forward(forward));
                } else {
                    self.forwards.refused(forward);
                    // Reset, not a clean close: the client must not mistake it for an answer
                    // of the board's service.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
            }
            Inbound::Udp {
                forward,
                board_port,
                sock,
                peer,
                payload,
            } => {
                if !self.session.is_up() {
                    self.counters.inbound_no_session += 1;
                    return;
                }
                let flow = match self.forwards.udp_flow(forward, board_port, peer) {
                    Some(f) => f,
                    None => match self.nat.open_inbound(now, Protocol::Udp, board_port, peer) {
                        Ok(f) => {
                            self.sockets.adopt_udp_peer(f, sock, peer);
                            self.forwards.udp_opened(f, forward, board_port, peer);
                            f
                        }
                        Err(e) => {
                            self.forwards.refused(forward);
                            tracing::debug!(%peer, board_port, error = %e, "forward: datagram dropped");
                            return;
                        }
                    },
                };
                self.sockets.note_udp_to_board(flow, payload.len());
                self.nat.handle_os_event(
                    now,
                    qbkit_nat::OsEvent::UdpReceived {
                        flow,
                        payload: &payload,
                    },
                );
            }
        }
        self.tx_pending = true;
    }

    /// A control-socket request.
    fn handle_control(&mut self, msg: ControlMsg) {
        let ControlMsg { request, stream } = msg;
        let forwards_reply = |d: &Self, r: Result<(), String>| match r {
            Ok(()) => Reply {
                ok: true,
                error: None,
                forwards: Some(d.forward_status()),
            },
            Err(e) => Reply::error(e),
        };
        match request {
            Request::Status => status::reply_json(stream, &self.status()),
            Request::ForwardList => status::reply_json(stream, &forwards_reply(self, Ok(()))),
            Request::ForwardAdd { spec } => {
                let r = ForwardSpec::parse(&spec)
                    .map_err(|e| e.to_string())
                    .and_then(|s| {
                        self.forwards
                            .add(s)
                            .map_err(|e| format!("forward {s}: {e}"))
                    });
                self.summary_dirty = true;
                status::reply_json(stream, &forwards_reply(self, r));
            }
            Request::ForwardRemove { spec } => {
                let r = ForwardSpec::parse(&spec)
                    .map_err(|e| e.to_string())
                    .and_then(|s| self.forwards.remove(&s).map_err(|e| e.to_string()));
                self.summary_dirty = true;
                status::reply_json(stream, &forwards_reply(self, r));
            }
            Request::Connect { target } => self.connect(stream, &target),
        }
    }

    /// `qbkit-host connect`: the control connection becomes a TCP connection to the board.
    fn connect(&mut self, stream: status::ControlStream, target: &str) {
        let port = match forward::connect_target(target, self.cfg.nat.board_ipv4) {
            Ok(p) => p,
            Err(e) => return status::reply_json(stream, &Reply::error(e)),
        };
        if !self.session.is_up() {
            self.counters.inbound_no_session += 1;
            return status::reply_json(
                stream,
                &Reply::error("no board is connected to this qbkit-host"),
            );
        }
        let peer = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        match self
            .nat
            .open_inbound(self.clock.nat(), Protocol::Tcp, port, peer)
        {
            Ok(flow) => {
                self.sockets
                    .adopt_stream(flow, OsStream::Control(stream), true);
                self.forwards.opened(flow, Owner::Connect);
                self.tx_pending = true;
            }
            Err(e) => {
                status::reply_json(stream, &Reply::error(format!("board port {port}: {e}")));
            }
        }
    }
}

/// The LinkConfig offered to the board: its address, the gateway as router and DNS, the MTU.
pub fn link_config(nat: &NatConfig, mtu: usize) -> LinkConfig {
    LinkConfig {
        ipv4: Some(Cidr {
            addr: nat.board_ipv4,
            prefix: nat.prefix_len,
        }),
        gateway_v4: Some(nat.gateway_ipv4),
        // IPv6 is kept in the types; the core forwards IPv4 only until the IPv6 issue.
        ipv6: None,
        gateway_v6: None,
        dns: vec![IpAddr::V4(nat.gateway_ipv4)],
        mtu: u32::try_from(mtu).unwrap_or(u32::MAX),
    }
}
