//! The engine side of `qbkit-host tray`: the same [`Engine`] as `qbkit-host run` (transport task +
//! [`driver::run`]) in this process, plus a controller between the driver and the tray icon.
//!
//! ```text
//!  transport task ──LinkEvent──▶ driver::run ──watch<Summary>──▶ controller ──watch<Snapshot>──▶ tray::run
//!        ▲ abort / spawn                                          │  ▲
//!        └─────────────── Connect / Disconnect ───────────────────┘  └──mpsc<Action>── menu clicks
//! ```
//!
//! The controller turns each driver [`Summary`] into a [`Snapshot`] ([`snapshot`] is the pure
//! part: icon state, rates from byte-counter deltas, the board list) and carries out the menu's
//! actions: Disconnect aborts the transport task and tells the driver the link is down (the
//! driver and its flows keep running), Connect starts a transport task again (on USB for the
//! chosen serial), Quit stops the driver, which says Bye to the board. On USB the board list is
//! refreshed from enumeration every [`BOARD_SCAN`]; on a stream link it is the attached peer.
//! Nothing here waits for the tray: a tray that is gone only closes the action channel.

use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::{Action, BoardEntry, LinkState, Snapshot};
use crate::driver;
use crate::engine::Engine;
use crate::report::Summary;
use crate::transport::{self, LinkEvent, TransportSpec};
use crate::usb::{self, DeviceFilter};

/// How often the USB board list in the menu is refreshed.
const BOARD_SCAN: Duration = Duration::from_secs(3);

/// Rates measured between two summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// Bytes per second from the board.
    pub up_bps: u64,
    /// Bytes per second to the board.
    pub down_bps: u64,
}

impl Rates {
    /// Rates from two counter readings `elapsed` apart (zero when the counters went back, as
    /// after a new session).
    pub fn between(prev: &Summary, next: &Summary, elapsed: Duration) -> Self {
        let micros = elapsed.as_micros().max(1);
        let per_s = |a: u64, b: u64| {
            u64::try_from(u128::from(b.saturating_sub(a)) * 1_000_000 / micros).unwrap_or(u64::MAX)
        };
        Self {
            up_bps: per_s(prev.rx_bytes, next.rx_bytes),
            down_bps: per_s(prev.tx_bytes, next.tx_bytes),
        }
    }
}

/// The USB serial in a USB link description (`usb 1-2 high-speed serial ABC`).
fn usb_serial(link: &str) -> Option<&str> {
    link.strip_prefix("usb ")?
        .split_once(" serial ")
        .map(|(_, s)| s)
}

/// The tray's view of the engine: pure, so it is unit-tested.
///
/// `connect_wanted` is false after Disconnect; `usb_boards` is the latest USB enumeration
/// (`None` on stream links, where the attached peer is the only board).
pub fn snapshot(
    s: &Summary,
    connect_wanted: bool,
    rates: Rates,
    usb_boards: Option<&[BoardEntry]>,
) -> Snapshot {
    let state = match (&s.link, &s.error) {
        _ if !connect_wanted => LinkState::NoBoard,
        (Some(_), Some(_)) => LinkState::Error,
        (None, _) => LinkState::NoBoard,
        (Some(_), None) if s.session_up => LinkState::Online,
        (Some(_), None) => LinkState::Connecting,
    };
    let attached = connect_wanted && s.link.is_some();
    let serial = s
        .link
        .as_deref()
        .and_then(usb_serial)
        .map(str::to_owned)
        .or_else(|| s.peer.clone())
        .filter(|_| attached);
    let boards = match usb_boards {
        Some(b) => b.to_vec(),
        None => match (&s.link, &serial) {
            (Some(l), Some(id)) if attached => vec![BoardEntry {
                serial: id.clone(),
                location: l.clone(),
            }],
            _ => Vec::new(),
        },
    };
    let online = state == LinkState::Online;
    Snapshot {
        state,
        board_serial: serial,
        board_address: s.board_ipv4.filter(|_| online).map(|a| a.to_string()),
        link_speed: s.link.clone().filter(|_| attached),
        rate_up_bps: if online { rates.up_bps } else { 0 },
        rate_down_bps: if online { rates.down_bps } else { 0 },
        flows: if online { s.flows as u64 } else { 0 },
        boards,
        connect_wanted,
        error: s.error.clone().filter(|_| attached),
        forwards: s.forwards.clone(),
    }
}

/// Starts, stops and restarts the transport task for the menu.
struct Controller {
    engine: Engine,
    events: mpsc::Sender<LinkEvent>,
    task: Option<JoinHandle<()>>,
    /// The board chosen in the menu (USB), else the command line's `--serial`.
    serial: Option<String>,
    /// The link the driver has (from the last summary): a Down must follow an abort.
    link_up: bool,
}

impl Controller {
    /// Starts the transport task unless it runs; `serial` (USB) replaces the chosen board
    /// (the caller disconnects first when it changes).
    fn connect(&mut self, serial: Option<String>) {
        if let Some(s) = serial {
            self.serial = Some(s);
        }
        if self.task.is_none() {
            let mut filter = self.engine.usb_filter.clone();
            filter.serial.clone_from(&self.serial);
            tracing::info!(serial = ?self.serial, "connecting (tray)");
            self.task = Some(self.engine.spawn_transport(filter, self.events.clone()));
        }
    }

    async fn disconnect(&mut self) {
        let Some(t) = self.task.take() else { return };
        t.abort();
        let _ = t.await;
        tracing::info!("disconnected from the tray menu");
        if self.link_up {
            self.link_up = false;
            let _ = self
                .events
                .send(LinkEvent::down("disconnected from the tray menu"))
                .await;
        }
    }
}

/// Runs the engine and the controller until `shutdown`, Quit from the menu, or the transport
/// ends. Drops `snapshots` on return, which closes the tray.
pub async fn run(
    engine: Engine,
    snapshots: watch::Sender<Snapshot>,
    mut actions: mpsc::UnboundedReceiver<Action>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), driver::Error> {
    let (summary_tx, mut summaries) = watch::channel(Summary::default());
    let mut cfg = engine.driver.clone();
    cfg.summary = Some(summary_tx);
    let scan_filter = DeviceFilter::new(engine.usb_filter.vid, engine.usb_filter.pid, None);
    let is_usb = engine.transport == TransportSpec::Usb;
    let (events, link_events) = mpsc::channel(transport::EVENT_QUEUE);
    let mut ctl = Controller {
        serial: engine.usb_filter.serial.clone(),
        engine,
        events,
        task: None,
        link_up: false,
    };
    ctl.connect(None);

    let quit = Notify::new();
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            () = quit.notified() => tracing::info!("quit from the tray menu"),
        }
    };
    let driver = driver::run(cfg, link_events, stop);

    let control = async {
        let mut connect_wanted = true;
        let mut last = (Summary::default(), Instant::now());
        let mut rates = Rates::default();
        let mut usb_boards: Option<Vec<BoardEntry>> = is_usb.then(Vec::new);
        let mut scan = tokio::time::interval(BOARD_SCAN);
        let mut actions_open = true;
        loop {
            tokio::select! {
                changed = summaries.changed() => {
                    if changed.is_err() {
                        // The driver has ended; `run` returns with its result.
                        std::future::pending::<()>().await;
                    }
                    let s = summaries.borrow_and_update().clone();
                    let now = Instant::now();
                    rates = Rates::between(&last.0, &s, now - last.1);
                    ctl.link_up = s.link.is_some();
                    last = (s, now);
                }
                a = actions.recv(), if actions_open => match a {
                    Some(Action::Quit) => quit.notify_one(),
                    Some(Action::Disconnect) => {
                        connect_wanted = false;
                        ctl.disconnect().await;
                    }
                    Some(Action::Connect(serial)) => {
                        connect_wanted = true;
                        if serial.is_some() && serial != ctl.serial {
                            ctl.disconnect().await;
                        }
                        ctl.connect(serial);
                    }
                    Some(a) => tracing::debug!(?a, "tray action"),
                    None => {
                        actions_open = false;
                        tracing::info!("the tray icon is gone; the engine keeps running");
                    }
                },
                _ = scan.tick(), if is_usb => {
                    match usb::list_boards(&scan_filter, false).await {
                        Ok(found) => {
                            usb_boards = Some(found.iter().map(|b| {
                                let i = b.info();
                                BoardEntry {
                                    serial: i.serial.clone().unwrap_or_else(|| "-".into()),
                                    location: i.bus_path.clone(),
                                }
                            }).collect());
                        }
                        Err(e) => tracing::debug!(error = %e, "board scan"),
                    }
                }
            }
            let next = snapshot(&last.0, connect_wanted, rates, usb_boards.as_deref());
            snapshots.send_if_modified(|s| {
                let changed = *s != next;
                if changed {
                    *s = next;
                }
                changed
            });
        }
    };
    tokio::select! {
        r = driver => r,
        () = control => unreachable!("the controller loops until the driver ends"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn up(link: &str) -> Summary {
        Summary {
            link: Some(link.into()),
            session_up: true,
            peer: Some("qbkit-gadget 0.1.0".into()),
            board_ipv4: Some(Ipv4Addr::new(10, 47, 0, 2)),
            rx_bytes: 2_000_000,
            tx_bytes: 500_000,
            flows: 4,
            error: None,
            forwards: Vec::new(),
        }
    }

    #[test]
    fn states_follow_link_session_and_error() {
        let none = Summary::default();
        let r = Rates::default();
        assert_eq!(snapshot(&none, true, r, None).state, LinkState::NoBoard);
        let mut s = up("unix:///tmp/q.sock");
        s.session_up = false;
        s.peer = None;
        assert_eq!(snapshot(&s, true, r, None).state, LinkState::Connecting);
        s.error = Some("peer speaks protocol version 0".into());
        let e = snapshot(&s, true, r, None);
        assert_eq!(e.state, LinkState::Error);
        assert_eq!(e.error.as_deref(), Some("peer speaks protocol version 0"));
        let on = snapshot(&up("unix:///tmp/q.sock"), true, r, None);
        assert_eq!(on.state, LinkState::Online);
        assert_eq!(on.board_address.as_deref(), Some("10.47.0.2"));
        assert_eq!(on.flows, 4);
        let off = snapshot(&up("unix:///tmp/q.sock"), false, r, None);
        assert_eq!(off.state, LinkState::NoBoard);
        assert!(!off.connect_wanted && off.board_serial.is_none() && off.boards.is_empty());
    }

    #[test]
    fn serial_from_usb_description_or_peer() {
        let r = Rates::default();
        let usb_list = [BoardEntry {
            serial: "ABC123".into(),
            location: "1-2".into(),
        }];
        let s = snapshot(
            &up("usb 1-2 high-speed serial ABC123"),
            true,
            r,
            Some(&usb_list),
        );
        assert_eq!(s.board_serial.as_deref(), Some("ABC123"));
        assert_eq!(s.boards, usb_list);
        let s = snapshot(&up("tcp://127.0.0.1:4747"), true, r, None);
        assert_eq!(s.board_serial.as_deref(), Some("qbkit-gadget 0.1.0"));
        assert_eq!(
            s.boards,
            [BoardEntry {
                serial: "qbkit-gadget 0.1.0".into(),
                location: "tcp://127.0.0.1:4747".into()
            }]
        );
        assert_eq!(usb_serial("usb 1-2 high-speed"), None);
    }

    #[test]
    fn rates_from_counter_deltas() {
        let a = up("x");
        let mut b = a.clone();
        b.rx_bytes += 1_000_000;
        b.tx_bytes += 250;
        let r = Rates::between(&a, &b, Duration::from_millis(500));
        assert_eq!(
            r,
            Rates {
                up_bps: 2_000_000,
                down_bps: 500
            }
        );
        // A new session restarts the counters: no negative rate.
        assert_eq!(
            Rates::between(&b, &Summary::default(), Duration::from_secs(1)),
            Rates::default()
        );
        let s = snapshot(&b, true, r, None);
        assert_eq!((s.rate_up_bps, s.rate_down_bps), (2_000_000, 500));
    }
}
