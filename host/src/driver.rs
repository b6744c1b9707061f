//! The one event loop of `qbkit-host`: the select loop, the OS sockets and the clock around the
//! sans-IO [`Core`] (link session + NAT + bundle assembly), on one tokio current-thread task. This
//! is the only place that reads the clock.
//!
//! # Theory of operation
//!
//! ```text
//!  link task ──LinkEvent──▶ Core::handle_link_up / handle_bundle / handle_link_down
//!  Core::poll_nat_event ──▶ Sockets::handle_event (open, send, shut down, close OS sockets)
//!  OS sockets ──ready──▶ Sockets::service_ready ─▶ tcp_send_with / tcp_recv_with (data only)
//!  Sockets::poll_event (connected, refused, EOF, reset, datagram, echo reply) ──▶
//!    Core::handle_os_event
//!  link task ◀──bundle── Core::poll_transmit (when the link has a free slot)
//! ```
//!
//! Each turn of the loop first *works until quiescent*, then *waits*. Working means: run due
//! timers, take every received bundle already queued (batching packets is cheaper: one ACK per
//! flow per batch), service every ready socket, carry out every NAT event (which can produce more
//! events) and service the sockets those gave work, until the sockets and the core have nothing
//! more for each other, and only then hand bundles to the link while it has a free slot: bytes
//! the board sent reach their server before the ACK for them leaves, and bytes a socket gave us
//! leave in the same pass (request/response latency is one pass, not two). As in quinn's
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
//! busy the core is not drained, so output accumulates in it (TCP data in its sockets' rings,
//! within their windows, written straight into the next bundle; other packets in its bounded
//! board queue) and leaves together in the next bundle. An idle link therefore adds no
//! latency, and a busy one gets full bundles.
//!
//! Bundle buffers go round instead of being allocated per bundle: outgoing ones are taken from
//! the link's [`qbkit_link::BufPool`] and given back by the link task once written; received
//! ones are given back after the core handled them.
//!
//! # Link loss
//!
//! A board that sends nothing for the session's peer timeout (a half-open stream, a stalled
//! usbipd) gets its link closed: the core says so ([`Core::poll_close_link`]) and the driver drops
//! the link's sender, so the transport reports `Down` and re-accepts or redials instead of
//! holding a dead peer.
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
//! change and once a second; `qbkit-host tray` renders it, and `run`'s live line adds up every
//! board's. Publishing never waits. The summary is computed in [`crate::report`] from the core,
//! which owns the counters; the `status` snapshot in [`crate::status`].
//!
//! # One driver per board
//!
//! A driver serves one board. `qbkit-host run` starts one per board ([`run_board`], by
//! [`crate::boards`], which owns the control socket and the DNS watcher and routes requests to
//! the board they name as [`BoardMsg`]s); the tray runs one with its own ([`run`]).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use qbkit_link::control;
use qbkit_nat::{NatConfig, NatError, Protocol};
use tokio::sync::{mpsc, watch};
use tokio::time::Sleep;

use crate::core::{Core, CoreConfig};
use crate::forward::{self, ForwardSpec, Forwards, Inbound, Owner};
use crate::report::{self, Summary};
use crate::sockets::{OsStream, ReadyQueue, Sockets};
use crate::status::{self, ControlMsg, ForwardsData, Reply, Request, Status};
use crate::transport::{LinkEvent, LinkUp};

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
    /// Redraw a one-line summary (boards, rates, flows) on stdout every second (set when stdout
    /// is a terminal; logs then clear the line before they print, see `main.rs`). Drawn by
    /// [`crate::boards`] from every board's [`Summary`], not by a board's driver.
    pub live_status: bool,
    /// Publish a [`Summary`] here (front ends such as the tray; `None`: nothing is published).
    pub summary: Option<watch::Sender<Summary>>,
    /// Port forwards into the board opened at start (`--forward`).
    pub forwards: Vec<ForwardSpec>,
    /// Follow the system's resolvers while running ([`crate::dns_watch`]); off when `--dns`
    /// pinned them.
    pub follow_os_dns: bool,
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

/// Monotonic clock in microseconds since the driver started (the sans-IO cores' time base).
#[derive(Debug, Clone, Copy)]
struct Clock(std::time::Instant);

impl Clock {
    fn micros(self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
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
    core: Core,
    sockets: Sockets,
    ready: Arc<ReadyQueue>,
    link: Option<LinkUp>,
    link_description: Option<String>,
    /// Why the link was last lost or could not be established (for `status`).
    last_link_error: Option<String>,
    forwards: Forwards,
}

/// Runs the driver of one board with its own control socket and DNS watcher until `shutdown`
/// completes or the transport's event channel closes (`qbkit-host tray`; `run` serves boards
/// through [`crate::boards`], which shares those between the boards' drivers).
pub async fn run(
    cfg: DriverConfig,
    link_events: mpsc::Receiver<LinkEvent>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (mut ctl_rx, dns) = host_services(&cfg);
    let (board_tx, board_rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(m) = ctl_rx.recv().await {
            if board_tx.send(BoardMsg::Control(m)).await.is_err() {
                return;
            }
        }
    });
    run_board(cfg, link_events, board_rx, dns, shutdown).await
}

/// What one host process serves once, whatever the number of boards: the control socket (its
/// requests on the returned channel) and, when the system's resolvers are followed, the DNS
/// watcher. Without a control socket the boards are still served: only status, runtime forwards
/// and `connect` are missing.
pub(crate) fn host_services(
    cfg: &DriverConfig,
) -> (
    mpsc::Receiver<ControlMsg>,
    Option<watch::Receiver<Vec<std::net::SocketAddr>>>,
) {
    let (ctl_tx, ctl_rx) = mpsc::channel::<ControlMsg>(16);
    if let Some(p) = &cfg.control_path
        && let Err(e) = status::serve(p, ctl_tx)
    {
        tracing::warn!(path = %p.display(), error = %e, "no control socket: `status`, `forward` and `connect` will not reach this daemon");
    }
    let dns = cfg
        .follow_os_dns
        .then(|| crate::dns_watch::spawn(cfg.nat.dns_servers.clone()));
    (ctl_rx, dns)
}

/// What the host's board supervisor ([`crate::boards`]) asks of one board's driver.
#[derive(Debug)]
pub(crate) enum BoardMsg {
    /// A control-socket request routed to this board.
    Control(ControlMsg),
    /// This board's `status` snapshot, for the host's document.
    Status(tokio::sync::oneshot::Sender<Status>),
}

/// Runs the driver of one board until `shutdown` completes or the transport's event channel
/// closes: requests come on `control`, the system's resolvers (when followed) on `dns`.
pub(crate) async fn run_board(
    cfg: DriverConfig,
    mut link_events: mpsc::Receiver<LinkEvent>,
    mut control: mpsc::Receiver<BoardMsg>,
    mut dns_updates: Option<watch::Receiver<Vec<std::net::SocketAddr>>>,
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
    let mut summary_tick = d
        .cfg
        .summary
        .is_some()
        .then(|| tokio::time::interval(SUMMARY_PERIOD));
    loop {
        let deadline = d.work();
        if d.core.take_changed() {
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
            _ = async { summary_tick.as_mut().expect("guarded").tick().await }, if summary_tick.is_some() => {
                d.publish_summary();
            }
            Some(msg) = control.recv() => match msg {
                BoardMsg::Control(msg) => d.handle_control(msg),
                BoardMsg::Status(reply) => {
                    let _ = reply.send(d.status());
                }
            },
            Ok(()) = async { dns_updates.as_mut().expect("guarded").changed().await }, if dns_updates.is_some() => {
                let servers = dns_updates.as_mut().expect("guarded").borrow_and_update().clone();
                d.core.nat_mut().set_dns_servers(d.clock.nat(), servers);
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
        let core = Core::new(
            CoreConfig {
                nat: cfg.nat.clone(),
                max_bundle: cfg.max_bundle,
                identity: cfg.identity.clone(),
            },
            clock.micros(),
        )?;
        let sockets = Sockets::new();
        let ready = sockets.ready_queue();
        Ok(Self {
            clock,
            cfg,
            core,
            sockets,
            ready,
            link: None,
            link_description: None,
            last_link_error: None,
            forwards: Forwards::new(inbound),
        })
    }

    /// Works until quiescent; returns the next timer deadline (µs on the driver clock).
    fn work(&mut self) -> u64 {
        loop {
            self.core.counters_mut().passes += 1;
            // Timers first: they may queue control messages and packets.
            self.core.handle_timeout(self.clock.micros());
            if self.core.poll_close_link() {
                // Dropping the sender ends the link: the transport re-accepts or redials.
                self.link = None;
            }
            let mut progress = self.sockets.service_ready(self.core.nat_mut());
            while self.exchange() {
                progress = true;
            }
            for c in self.sockets.take_closed() {
                self.forwards
                    .closed(c.flow, c.to_board, c.from_board, c.refused);
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
        let (session, mut nat) = self.core.poll_timeout(now);
        if nat.is_some_and(|t| t <= now) {
            // A due timer of the core that needs the board queue to drain first: that only
            // helps once the link frees a slot, which wakes us anyway.
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
        self.link.is_some() && self.core.wants_transmit()
    }

    fn handle_link_event(&mut self, ev: LinkEvent) {
        let now = self.clock.micros();
        match ev {
            LinkEvent::Up(up) => {
                tracing::info!(link = %up.description, "link up");
                self.link_description = Some(up.description.clone());
                self.core.handle_link_up(now, up.framing);
                self.link = Some(up);
            }
            LinkEvent::Down { reason, .. } => {
                // The reason once per change: a peer that keeps failing the same way is paced by
                // the transport's backoff and logged there.
                if self.last_link_error.as_ref() == Some(&reason) {
                    tracing::debug!(%reason, "link down");
                } else {
                    tracing::warn!(%reason, "link down");
                }
                self.last_link_error = Some(reason);
                self.link = None;
                self.core.handle_link_down(now);
            }
            LinkEvent::Bundle(b) => {
                self.core.handle_bundle(now, &b);
                if let Some(link) = &self.link {
                    link.pool.put(b);
                }
            }
            LinkEvent::Listening { url } => self.cfg.transport = url,
            LinkEvent::Failed { reason } => self.last_link_error = Some(reason),
        }
    }

    /// One round between the sockets and the core: what the OS did goes in, what the core asks
    /// of the sockets is carried out, and the flows that got work are serviced. Returns true
    /// when anything happened.
    fn exchange(&mut self) -> bool {
        let mut any = self.feed_os_events();
        any |= self.drain_nat_events();
        any |= self.sockets.service_scheduled(self.core.nat_mut());
        any
    }

    /// Carries out every pending NAT event on the sockets. Returns true when there were any.
    fn drain_nat_events(&mut self) -> bool {
        let mut any = false;
        while let Some(ev) = self.core.poll_nat_event() {
            any = true;
            self.sockets.handle_event(ev);
        }
        any
    }

    /// Feeds what the OS sockets did into the core. Returns true when there was anything.
    fn feed_os_events(&mut self) -> bool {
        let now = self.clock.micros();
        let mut any = false;
        while let Some(ev) = self.sockets.poll_event() {
            any = true;
            self.core.handle_os_event(now, ev);
        }
        any
    }

    /// Hands bundles to the link while it has free slots and something is waiting. Returns true
    /// when at least one bundle was sent.
    fn transmit(&mut self) -> bool {
        let mut sent = false;
        while self.link_writable() && self.wants_transmit() {
            let Some(link) = &self.link else { break };
            // The link task gives written buffers back: no allocation or zero-fill per bundle.
            let mut buf = link.pool.take();
            let Some(t) = self.core.poll_transmit(self.clock.micros(), &mut buf) else {
                link.pool.put(buf);
                break;
            };
            if link.tx.try_send(buf).is_err() {
                // The transport went away between our capacity check and now; its Down event
                // follows. The packets are lost (TCP retransmits).
                self.core.record_tx_lost(t);
                break;
            }
            sent = true;
        }
        sent
    }

    /// The attached link's description, while one is attached.
    fn link_label(&self) -> Option<&str> {
        self.link
            .as_ref()
            .map(|_| self.link_description.as_deref().unwrap_or(""))
    }

    /// Publishes the current [`Summary`] when it differs from the last one (no wake-up for an
    /// idle link).
    fn publish_summary(&mut self) {
        let Some(tx) = &self.cfg.summary else { return };
        let next = report::summary(
            &self.core,
            self.link_label(),
            self.cfg.nat.board_ipv4,
            self.forwards.summary(),
        );
        report::publish(tx, next);
    }

    /// Sends a Bye if a link is up and waits briefly for it to leave.
    async fn goodbye(&mut self) {
        self.core.close("qbkit-host is stopping");
        let mut buf = Vec::new();
        if let Some(link) = &self.link
            && self
                .core
                .poll_transmit(self.clock.micros(), &mut buf)
                .is_some()
        {
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
            link: self.link_label(),
            last_link_error: self.last_link_error.as_deref(),
            session: self.core.session(),
            nat: self.core.nat(),
            flows: self.core.nat().flows(now),
            sockets: self.sockets.counters(),
            os_sockets: self.sockets.len(),
            driver: self.core.counters(),
            peer_stats: self.core.peer_stats(),
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
                let flow = if self.core.is_up() {
                    self.core
                        .nat_mut()
                        .open_inbound(now, Protocol::Tcp, board_port, peer)
                        .map_err(|e| {
                            tracing::debug!(%peer, board_port, error = %e, "forward: connection refused");
                        })
                } else {
                    self.core.counters_mut().inbound_no_session += 1;
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
                if !self.core.is_up() {
                    self.core.counters_mut().inbound_no_session += 1;
                    return;
                }
                let flow = match self.forwards.udp_flow(forward, board_port, peer) {
                    Some(f) => f,
                    None => {
                        match self
                            .core
                            .nat_mut()
                            .open_inbound(now, Protocol::Udp, board_port, peer)
                        {
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
                        }
                    }
                };
                self.sockets.note_udp_to_board(flow, payload.len());
                self.core.handle_os_event(
                    self.clock.micros(),
                    qbkit_nat::OsEvent::UdpReceived {
                        flow,
                        payload: &payload,
                    },
                );
            }
        }
    }

    /// A control-socket request.
    fn handle_control(&mut self, msg: ControlMsg) {
        let ControlMsg { request, stream } = msg;
        let forwards_reply = |d: &Self, r: Result<(), String>| match r {
            Ok(()) => Reply {
                ok: true,
                error: None,
                data: ForwardsData {
                    forwards: Some(d.forward_status()),
                },
            },
            Err(e) => Reply::error(e),
        };
        match request {
            Request::Status { .. } => control::reply(stream, &self.status()),
            Request::ForwardList { .. } => control::reply(stream, &forwards_reply(self, Ok(()))),
            Request::ForwardAdd { spec, .. } => {
                let r = ForwardSpec::parse(&spec)
                    .map_err(|e| e.to_string())
                    .and_then(|s| {
                        self.forwards
                            .add(s)
                            .map_err(|e| format!("forward {s}: {e}"))
                    });
                self.core.mark_changed();
                control::reply(stream, &forwards_reply(self, r));
            }
            Request::ForwardRemove { spec, .. } => {
                let r = ForwardSpec::parse(&spec)
                    .map_err(|e| e.to_string())
                    .and_then(|s| self.forwards.remove(&s).map_err(|e| e.to_string()));
                self.core.mark_changed();
                control::reply(stream, &forwards_reply(self, r));
            }
            Request::Connect { target, .. } => self.connect(stream, &target),
        }
    }

    /// `qbkit-host connect`: the control connection becomes a TCP connection to the board.
    fn connect(&mut self, stream: status::ControlStream, target: &str) {
        let board = (self.cfg.nat.board_ipv4, self.cfg.nat.board_ipv6);
        let to = match forward::connect_target(target, board) {
            Ok(to) => to,
            Err(e) => return control::reply(stream, &Reply::error(e)),
        };
        if !self.core.is_up() {
            self.core.counters_mut().inbound_no_session += 1;
            return control::reply(
                stream,
                &Reply::error("no board is connected to this qbkit-host"),
            );
        }
        let peer = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        match self
            .core
            .nat_mut()
            .open_inbound_to(self.clock.nat(), Protocol::Tcp, to, peer)
        {
            Ok(flow) => {
                self.sockets
                    .adopt_stream(flow, OsStream::Control(stream), true);
                self.forwards.opened(flow, Owner::Connect);
            }
            Err(e) => {
                control::reply(stream, &Reply::error(format!("board {to}: {e}")));
            }
        }
    }
}
