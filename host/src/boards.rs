//! Several boards on one `qbkit-host run`: one driver per board, side by side, behind one control
//! socket.
//!
//! # Theory of operation
//!
//! ```text
//!  usb: transport::usb::discover ──(name, filter)──▶ supervisor ──▶ driver + usb::run for that board
//!  tcp-listen / unix-listen: qbkit_link::run_listener ──attach──▶ supervisor ──▶ a driver with no
//!    peer (or a new one); the peer's link task feeds it directly
//!  other transports (tcp://, unix://, stdio, exec:, usbip) ──▶ the one board's driver
//!  control socket ──Request──▶ supervisor ──by `board`──▶ that driver's BoardMsg channel
//!  status without a board ──▶ every driver's snapshot ──▶ Status::host (each board + totals)
//! ```
//!
//! A board's driver ([`driver::run_board`]) is the whole per-board unit: its core (session and
//! NAT: every board sees the same addresses behind its own gateway, and flows are never shared),
//! OS sockets, forwards and counters, on a task of its own. A flood or stall on one board never
//! waits for another: each driver's work pass is capped (received bundles per pass, bytes and
//! datagrams per flow) and then yields to the runtime, and link events come on a channel per
//! board. Shared: the control socket, the DNS watcher (one `watch` every driver follows) and the
//! live line (the totals of the drivers' [`Summary`]s).
//!
//! Naming (what `--board` takes, and `status` shows): on USB the name the host's config file
//! gives the board's serial ([`crate::config::HostFile`]), else the serial (`usb-BUSPATH` without
//! one); `--board` takes the serial of a named board too. A stream listener's boards are
//! `board-1`, `board-2`, … in the order it first needed that many at once; a connecting transport
//! has one board, `board-1`.
//!
//! Board lifetime: on USB every board the config file names has its driver from the start, with
//! the file's forwards for it (they listen before the board is plugged in; its serial is
//! reserved for it); without named boards the first driver starts at once. The first driver also
//! gets `--forward`'s forwards (so they listen before any board is there, as with one board). On
//! USB each board name keeps its driver across replugs (its flows survive a quick replug); an
//! unnamed board takes the unreserved driver started at once or a new one. A stream listener
//! hands each new peer to a driver that has none (the first such, so a single board that
//! reconnects keeps its flows), or starts another.
//!
//! The tray (`qbkit-host tray`, [`Ui`]): the same supervisor publishes every board's
//! [`BoardView`] (name, [`Summary`], whether it is wanted) and takes [`BoardAction`]s: Disconnect
//! a board stops its link task (USB, a connecting transport) or drops its stream peer, and tells
//! its driver the link is down (its flows and forwards stay); its driver takes no new peer until
//! Connect, which starts the link task again. Disconnect without a board does that to every board
//! and refuses new ones (a stream listener closes new peers at once) until Connect.
//!
//! Limits: each board's NAT has its own (`max_flows`, `--tcp-buffer-budget`), and all boards'
//! TCP buffers together stay within `--tcp-buffer-budget` too: one [`qbkit_nat::SharedBudget`]
//! every NAT counts its sockets into (an atomic counter, by the same half-full / small / refused
//! rule). Shared rather than split: boards come and go, a split needs their number in advance and
//! leaves an idle board's share unused, while one host with one board keeps the whole budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qbkit_link::control;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::driver::{self, BoardMsg};
use crate::engine::Engine;
use crate::report::{self, Summary};
use crate::status::{self, ControlMsg, Reply, Request, Status};
use crate::transport::{self, LinkEvent, TransportSpec};
use crate::usb::DeviceFilter;

/// How long the host's `status` waits for each board's snapshot.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// A peer of a stream listener is being served by a board's driver while this lives.
#[derive(Debug)]
pub struct Claim(Arc<AtomicBool>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// One board as the tray sees it ([`Ui`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardView {
    /// Its name (as `status` shows it).
    pub name: String,
    /// Its driver's latest summary.
    pub summary: Summary,
    /// Not disconnected from the menu.
    pub wanted: bool,
}

/// A menu choice for the supervisor: one board by name, or (`None`) every board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoardAction {
    /// Serve it (again).
    Connect(Option<String>),
    /// Stop serving it; its driver keeps its flows and forwards.
    Disconnect(Option<String>),
}

/// The tray's window on the supervisor.
#[derive(Debug)]
pub struct Ui {
    /// Every board's view, republished when one changes.
    pub views: watch::Sender<Vec<BoardView>>,
    /// The menu's choices.
    pub actions: mpsc::UnboundedReceiver<BoardAction>,
}

/// How often the tray's views are refreshed from the drivers' summaries.
const UI_REFRESH: Duration = Duration::from_millis(250);

/// How a board's link task is started again after a Disconnect.
#[derive(Debug, Clone)]
enum Relink {
    /// `transport::usb::run` for this board.
    Usb(DeviceFilter),
    /// The engine's connecting transport.
    Engine,
}

/// One board's driver, as the supervisor sees it.
struct Board {
    name: String,
    /// Its USB serial: reserved for it from the start when the config file names it, else once a
    /// board with one is attached.
    serial: Option<String>,
    /// Its link event channel; `None` for the one board of a connecting transport (whose end,
    /// closing the channel, ends the driver and the host).
    links: Option<mpsc::Sender<LinkEvent>>,
    control: mpsc::Sender<BoardMsg>,
    /// A link task serves it (a stream peer now, or on USB its board's `usb::run`).
    attached: Arc<AtomicBool>,
    summary: watch::Receiver<Summary>,
    /// Not disconnected from the tray menu.
    wanted: bool,
    /// Its link task, when the supervisor started it (USB, a connecting transport).
    link_task: Option<tokio::task::JoinHandle<()>>,
    /// How to start that task again.
    relink: Option<Relink>,
}

/// The supervisor's state.
struct Host {
    engine: Engine,
    boards: Vec<Board>,
    tasks: JoinSet<Result<(), driver::Error>>,
    dns: Option<watch::Receiver<Vec<std::net::SocketAddr>>>,
    stop: watch::Sender<bool>,
    /// The transport for `status` (a listener's bound URL once bound).
    transport: watch::Receiver<String>,
    /// The TCP buffer budget all boards' NATs share.
    budget: Arc<qbkit_nat::SharedBudget>,
    /// New boards are served (false after the tray's Disconnect of every board).
    accepting: bool,
}

/// Runs the boards of `engine`'s transport until `shutdown` completes, a driver fails, or (one
/// board on a connecting transport, without a `ui`) the transport ends. With `ui` (the tray) the
/// boards' views are published and the menu's actions carried out.
pub async fn run(
    engine: Engine,
    shutdown: impl Future<Output = ()>,
    mut ui: Option<Ui>,
) -> Result<(), driver::Error> {
    let (mut ctl_rx, dns) = driver::host_services(&engine.driver);
    let (transport_tx, transport_rx) = watch::channel(engine.driver.transport.clone());
    let engine_budget = engine.driver.nat.tcp_buffer_budget;
    let mut host = Host {
        engine,
        boards: Vec::new(),
        tasks: JoinSet::new(),
        dns,
        stop: watch::channel(false).0,
        transport: transport_rx,
        budget: Arc::new(qbkit_nat::SharedBudget::new(engine_budget)),
        accepting: true,
    };
    let (attach_tx, mut attach_rx) = mpsc::channel::<oneshot::Sender<Attached>>(4);
    let (usb_tx, mut usb_rx) = mpsc::channel::<(String, DeviceFilter)>(4);
    host.start_transport(
        ui.is_some(),
        move |bound| {
            let _ = transport_tx.send(bound);
        },
        attach_tx,
        usb_tx,
    );
    let mut ui_refresh = ui.as_ref().map(|_| tokio::time::interval(UI_REFRESH));
    let mut live = host
        .engine
        .driver
        .live_status
        .then(|| tokio::time::interval(Duration::from_secs(1)));
    let mut host_line = report::HostLine::default();
    let started = std::time::Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            Some(msg) = ctl_rx.recv() => host.route(msg),
            Some(reply) = attach_rx.recv() => {
                let _ = reply.send(host.attach());
            }
            Some((name, filter)) = usb_rx.recv() => host.usb_board(name, filter),
            Some(a) = async { ui.as_mut().expect("guarded").actions.recv().await }, if ui.is_some() => {
                host.act(a);
            }
            _ = async { ui_refresh.as_mut().expect("guarded").tick().await }, if ui_refresh.is_some() => {
                if let Some(u) = &ui {
                    host.publish(&u.views);
                }
            }
            done = host.tasks.join_next() => match done {
                Some(Ok(Ok(()))) if !host.tasks.is_empty() => {}
                Some(Ok(Err(e))) => break Err(e),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "a board's driver task failed");
                }
                // The one board's transport ended, or no driver is left.
                _ => break Ok(()),
            },
            _ = async { live.as_mut().expect("guarded").tick().await }, if live.is_some() => {
                let now = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                let summaries: Vec<Summary> =
                    host.boards.iter().map(|b| b.summary.borrow().clone()).collect();
                print_line(&host_line.render(now, &summaries));
            }
        }
    };
    // Every driver says Bye to its board.
    let _ = host.stop.send(true);
    while host.tasks.join_next().await.is_some() {}
    if live.is_some() {
        println!();
    }
    result
}

fn print_line(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// What a stream listener's peer is attached to: its board's link channel and the claim on it.
type Attached = (mpsc::Sender<LinkEvent>, Claim);

impl Host {
    /// Starts the transport: on USB the boards named in the config file (or the first board) and
    /// the discovery, on a stream listener the first board and the listener (its bound URL to
    /// `listening`, peers attached through `attach_tx`), else the one board and its transport task
    /// (with `keep_links`, the tray's, its channel is kept: Disconnect ends the task, not the host).
    fn start_transport(
        &mut self,
        keep_links: bool,
        listening: impl FnOnce(String) + Send + 'static,
        attach_tx: mpsc::Sender<oneshot::Sender<Attached>>,
        usb_tx: mpsc::Sender<(String, DeviceFilter)>,
    ) {
        match self.engine.transport.clone() {
            TransportSpec::Usb => {
                let named = self.engine.named_boards.boards.clone();
                for b in &named {
                    self.spawn_board(true, Some(b));
                }
                if named.is_empty() {
                    self.spawn_board(true, None);
                }
                tokio::spawn(transport::usb::discover(
                    self.engine.usb_filter.clone(),
                    usb_tx,
                ));
            }
            TransportSpec::Stream(url) if url.is_listener() => {
                self.spawn_board(true, None);
                tokio::spawn(qbkit_link::run_listener(
                    url,
                    self.engine.link_key.clone(),
                    self.engine.driver.max_bundle,
                    listening,
                    move || {
                        let attach_tx = attach_tx.clone();
                        async move {
                            let (tx, rx) = oneshot::channel();
                            attach_tx.send(tx).await.ok()?;
                            rx.await.ok()
                        }
                    },
                ));
            }
            _ => {
                // The tray keeps the channel: its Disconnect ends the transport task, not the host.
                let links = self.spawn_board(keep_links, None);
                let b = &mut self.boards[0];
                b.link_task = Some(
                    self.engine
                        .spawn_transport(self.engine.usb_filter.clone(), links),
                );
                b.relink = Some(Relink::Engine);
            }
        }
    }

    /// Starts the next board's driver (the first gets `--forward`'s forwards, a board named in
    /// the config file its forwards from there); returns its link channel, which the supervisor
    /// keeps too when `keep_links`.
    fn spawn_board(
        &mut self,
        keep_links: bool,
        named: Option<&crate::config::NamedBoard>,
    ) -> mpsc::Sender<LinkEvent> {
        let mut cfg = self.engine.driver.clone();
        if !self.boards.is_empty() {
            cfg.forwards.clear();
        }
        if let Some(n) = named {
            cfg.forwards.extend(n.forwards.iter().copied());
        }
        cfg.live_status = false;
        cfg.control_path = None;
        cfg.transport.clone_from(&self.transport.borrow());
        cfg.nat.shared_tcp_budget = Some(Arc::clone(&self.budget));
        let (summary_tx, summary) = watch::channel(Summary::default());
        cfg.summary = Some(summary_tx);
        let (links, link_rx) = mpsc::channel(transport::EVENT_QUEUE);
        let (control, control_rx) = mpsc::channel(16);
        let mut stop = self.stop.subscribe();
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        self.tasks.spawn(driver::run_board(
            cfg,
            link_rx,
            control_rx,
            self.dns.clone(),
            shutdown,
        ));
        let name = named.map_or_else(
            || format!("board-{}", self.boards.len() + 1),
            |n| n.name.clone(),
        );
        tracing::info!(board = %name, "board driver started");
        self.boards.push(Board {
            name,
            serial: named.map(|n| n.serial.clone()),
            links: keep_links.then(|| links.clone()),
            control,
            attached: Arc::new(AtomicBool::new(false)),
            summary,
            wanted: true,
            link_task: None,
            relink: None,
        });
        links
    }

    /// A new stream peer: the first board without one, or a new board.
    fn attach(&mut self) -> Attached {
        if !self.accepting {
            // A closed channel: the link task drops the peer at once (it dials again later).
            tracing::info!("stream peer refused: disconnected from the tray menu");
            return (mpsc::channel(1).0, Claim(Arc::new(AtomicBool::new(true))));
        }
        let free = self.boards.iter().position(|b| {
            b.links.is_some()
                && b.wanted
                && b.attached
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
        });
        let i = free.unwrap_or_else(|| {
            self.spawn_board(true, None);
            let i = self.boards.len() - 1;
            self.boards[i].attached.store(true, Ordering::Release);
            i
        });
        let b = &self.boards[i];
        tracing::info!(board = %b.name, "stream peer attached");
        let links = b.links.clone().unwrap_or_else(|| mpsc::channel(1).0);
        (links, Claim(Arc::clone(&b.attached)))
    }

    /// A USB board seen for the first time: the driver the config file reserved for its serial,
    /// else the first that has no USB board and no reserved serial (the one started at once) or
    /// a new one, named after it, and its own `usb::run`.
    fn usb_board(&mut self, name: String, filter: DeviceFilter) {
        let serial = filter.serial.clone();
        let reserved = serial.as_ref().and_then(|s| {
            self.boards
                .iter()
                .position(|b| b.serial.as_ref() == Some(s))
        });
        let free = reserved.or_else(|| {
            self.boards
                .iter()
                .position(|b| b.serial.is_none() && !b.attached.load(Ordering::Acquire))
        });
        let i = free.unwrap_or_else(|| {
            self.spawn_board(true, None);
            self.boards.len() - 1
        });
        let accepting = self.accepting;
        let b = &mut self.boards[i];
        b.attached.store(true, Ordering::Release);
        if reserved.is_none() {
            b.name = name;
            b.serial = serial;
        }
        b.wanted &= accepting;
        b.relink = Some(Relink::Usb(filter));
        tracing::info!(board = %b.name, serial = b.serial.as_deref().unwrap_or("-"), "serving USB board");
        self.relink(i);
    }

    /// Starts board `i`'s link task unless it runs, it has none, or it is not wanted.
    fn relink(&mut self, i: usize) {
        let b = &mut self.boards[i];
        if !b.wanted || b.link_task.is_some() {
            return;
        }
        let (Some(relink), Some(links)) = (b.relink.clone(), b.links.clone()) else {
            return;
        };
        b.link_task = Some(match relink {
            Relink::Usb(filter) => {
                tokio::spawn(transport::usb::run(filter, self.engine.usb, links))
            }
            Relink::Engine => self
                .engine
                .spawn_transport(self.engine.usb_filter.clone(), links),
        });
    }

    /// The tray's Connect or Disconnect, of one board or (no name) of every board.
    fn act(&mut self, action: BoardAction) {
        let (name, wanted) = match action {
            BoardAction::Connect(n) => (n, true),
            BoardAction::Disconnect(n) => (n, false),
        };
        if name.is_none() {
            self.accepting = wanted;
        }
        let picked: Vec<usize> = match name.as_deref() {
            None => (0..self.boards.len()).collect(),
            Some(n) => match self.find(Some(n)) {
                Ok(i) => vec![i],
                Err(e) => {
                    tracing::warn!(error = %e, "tray action for an unknown board");
                    return;
                }
            },
        };
        for i in picked {
            let b = &mut self.boards[i];
            tracing::info!(board = %b.name, wanted, "tray: {}", if wanted { "connect" } else { "disconnect" });
            b.wanted = wanted;
            if wanted {
                self.relink(i);
                continue;
            }
            if let Some(t) = b.link_task.take() {
                t.abort();
            }
            // The driver forgets the link (a stream peer's connection closes with it); its flows
            // and forwards stay for the next Connect. (A peer attached a moment ago may not be in
            // the summary yet: its claim says so.)
            let linked = b.attached.load(Ordering::Acquire) || b.summary.borrow().link.is_some();
            if linked && let Some(links) = b.links.clone() {
                tokio::spawn(async move {
                    let _ = links
                        .send(LinkEvent::down("disconnected from the tray menu"))
                        .await;
                });
            }
        }
    }

    /// Every board's view for the tray (sent only when something changed).
    fn publish(&self, views: &watch::Sender<Vec<BoardView>>) {
        let next: Vec<BoardView> = self
            .boards
            .iter()
            .map(|b| BoardView {
                name: b.name.clone(),
                summary: b.summary.borrow().clone(),
                wanted: b.wanted,
            })
            .collect();
        views.send_if_modified(|v| {
            let changed = *v != next;
            if changed {
                *v = next;
            }
            changed
        });
    }

    /// The board a request names (its index); without a name, the only board.
    fn find(&self, name: Option<&str>) -> Result<usize, String> {
        let names = || {
            self.boards
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(n) => self
                .boards
                .iter()
                .position(|b| b.name == n || b.serial.as_deref() == Some(n))
                .ok_or_else(|| {
                    format!("no board named {n:?}; this qbkit-host serves: {}", names())
                }),
            None if self.boards.len() == 1 => Ok(0),
            None if self.boards.is_empty() => {
                Err("no board is connected to this qbkit-host".to_owned())
            }
            None => Err(format!(
                "this qbkit-host serves {} boards ({}): name one with --board NAME",
                self.boards.len(),
                names()
            )),
        }
    }

    /// A control-socket request: the host's status here, the rest to the board it names.
    fn route(&self, msg: ControlMsg) {
        if matches!(msg.request, Request::Status { board: None }) {
            return self.host_status(msg.stream);
        }
        match self.find(msg.request.board()) {
            Ok(i) => {
                let tx = self.boards[i].control.clone();
                tokio::spawn(async move {
                    let _ = tx.send(BoardMsg::Control(msg)).await;
                });
            }
            Err(e) => control::reply(msg.stream, &Reply::error(e)),
        }
    }

    /// Every board's snapshot, then the host's document, in a small task (a busy board delays
    /// only this answer).
    fn host_status(&self, stream: status::ControlStream) {
        let asks: Vec<_> = self
            .boards
            .iter()
            .map(|b| {
                let (tx, rx) = oneshot::channel();
                let id = status::BoardId {
                    name: b.name.clone(),
                    serial: b.serial.clone(),
                };
                (id, b.control.clone(), tx, rx)
            })
            .collect();
        let transport = self.transport.borrow().clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            for (id, control, tx, rx) in asks {
                if control.send(BoardMsg::Status(tx)).await.is_err() {
                    continue;
                }
                if let Ok(Ok(s)) = tokio::time::timeout(STATUS_WAIT, rx).await {
                    got.push((id, s));
                }
            }
            match Status::host(&transport, got) {
                Some(s) => control::reply(stream, &s),
                None => control::reply(
                    stream,
                    &Reply::error("no board's driver answered (is qbkit-host stopping?)"),
                ),
            }
        });
    }
}
