//! The engine side of `qbkit-host tray`: the same [`Engine`] and board supervisor as `qbkit-host
//! run` ([`crate::boards`]: a driver per board) in this process, plus a controller between the
//! supervisor and the tray icon.
//!
//! ```text
//!  boards::run ──watch<Vec<BoardView>>──▶ controller ──watch<Snapshot>──▶ tray::run
//!      ▲                                   │   ▲
//!      └──── BoardAction (connect/disconnect one board or all) ──┘   └──mpsc<Action>── menu clicks
//! ```
//!
//! The controller turns the boards' views into one [`Snapshot`] ([`snapshot`] for one board and
//! [`combine`] for several are the pure part: icon state, rates from byte-counter deltas, one
//! entry per board) and carries out the menu's actions: Connect and Disconnect, of one board or
//! of all, go to the supervisor (a disconnected board's driver keeps its flows and forwards),
//! Quit stops the supervisor, whose drivers say Bye to their boards. Nothing here waits for the
//! tray: a tray that is gone only closes the action channel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};

use super::{Action, BoardEntry, LinkState, ServedBoard, Snapshot};
use crate::boards::{self, BoardAction, BoardView};
use crate::driver;
use crate::engine::Engine;
use crate::report::Summary;

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
        served: Vec::new(),
    }
}

/// The tray's view of several boards: each board's [`snapshot`] as a menu entry, their totals
/// and the most urgent state for the icon (error, online, connecting, no board); one board's
/// view is its own snapshot. `rates` are per board, in `views`' order.
pub fn combine(views: &[BoardView], rates: &[Rates], connect_wanted: bool) -> Snapshot {
    let each: Vec<Snapshot> = views
        .iter()
        .zip(
            rates
                .iter()
                .copied()
                .chain(std::iter::repeat(Rates::default())),
        )
        .map(|(v, r)| snapshot(&v.summary, v.wanted, r, None))
        .collect();
    if let [one] = each.as_slice() {
        return one.clone();
    }
    let state = [LinkState::Error, LinkState::Online, LinkState::Connecting]
        .into_iter()
        .find(|st| each.iter().any(|s| s.state == *st))
        .unwrap_or(LinkState::NoBoard);
    Snapshot {
        state,
        rate_up_bps: each.iter().map(|s| s.rate_up_bps).sum(),
        rate_down_bps: each.iter().map(|s| s.rate_down_bps).sum(),
        flows: each.iter().map(|s| s.flows).sum(),
        connect_wanted,
        error: each.iter().find_map(|s| s.error.clone()),
        forwards: each.iter().flat_map(|s| s.forwards.clone()).collect(),
        served: views
            .iter()
            .zip(&each)
            .map(|(v, s)| ServedBoard {
                name: v.name.clone(),
                state: s.state,
                rate_up_bps: s.rate_up_bps,
                rate_down_bps: s.rate_down_bps,
                flows: s.flows,
                wanted: v.wanted,
            })
            .collect(),
        ..Snapshot::default()
    }
}

/// Runs the engine's boards and the controller until `shutdown`, Quit from the menu, or the
/// supervisor ends. Drops `snapshots` on return, which closes the tray.
pub async fn run(
    engine: Engine,
    snapshots: watch::Sender<Snapshot>,
    mut actions: mpsc::UnboundedReceiver<Action>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), driver::Error> {
    let (views_tx, mut views) = watch::channel(Vec::new());
    let (board_tx, board_rx) = mpsc::unbounded_channel();
    let quit = Notify::new();
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            () = quit.notified() => tracing::info!("quit from the tray menu"),
        }
    };
    let ui = boards::Ui {
        views: views_tx,
        actions: board_rx,
    };
    let supervisor = boards::run(engine, stop, Some(ui));

    let control = async {
        let mut connect_wanted = true;
        // Each board's last changed summary and when, for its rates.
        let mut last: HashMap<String, (Summary, Instant, Rates)> = HashMap::new();
        let mut actions_open = true;
        loop {
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        // The supervisor has ended; `run` returns with its result.
                        std::future::pending::<()>().await;
                    }
                }
                a = actions.recv(), if actions_open => match a {
                    Some(Action::Quit) => quit.notify_one(),
                    Some(Action::Disconnect(board)) => {
                        connect_wanted &= board.is_some();
                        let _ = board_tx.send(BoardAction::Disconnect(board));
                    }
                    Some(Action::Connect(board)) => {
                        connect_wanted |= board.is_none();
                        let _ = board_tx.send(BoardAction::Connect(board));
                    }
                    Some(a) => tracing::debug!(?a, "tray action"),
                    None => {
                        actions_open = false;
                        tracing::info!("the tray icon is gone; the engine keeps running");
                    }
                },
            }
            let now = Instant::now();
            let v = views.borrow_and_update().clone();
            let rates: Vec<Rates> = v
                .iter()
                .map(|b| match last.get_mut(&b.name) {
                    Some((prev, at, r)) if *prev != b.summary => {
                        *r = Rates::between(prev, &b.summary, now - *at);
                        (*prev, *at) = (b.summary.clone(), now);
                        *r
                    }
                    Some((_, _, r)) => *r,
                    None => {
                        last.insert(b.name.clone(), (b.summary.clone(), now, Rates::default()));
                        Rates::default()
                    }
                })
                .collect();
            let next = combine(&v, &rates, connect_wanted);
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
        r = supervisor => r,
        () = control => unreachable!("the controller loops until the supervisor ends"),
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

    #[test]
    fn several_boards_combine_into_entries_and_totals() {
        let r = Rates {
            up_bps: 100,
            down_bps: 200,
        };
        let view = |name: &str, s: Summary, wanted| BoardView {
            name: name.into(),
            summary: s,
            wanted,
        };
        let one = combine(&[view("board-1", up("unix:///l"), true)], &[r], true);
        assert!(one.served.is_empty(), "one board is shown as before");
        assert_eq!(one.state, LinkState::Online);
        let mut err = up("unix:///l");
        err.error = Some("peer speaks protocol version 0".into());
        let views = [
            view("lab-a", up("usb 1-1 high-speed serial MB-1"), true),
            view("lab-b", up("usb 1-2 high-speed serial MB-2"), false),
            view("lab-c", Summary::default(), true),
        ];
        let s = combine(&views, &[r, r, r], true);
        assert_eq!(s.state, LinkState::Online);
        assert_eq!((s.rate_up_bps, s.rate_down_bps, s.flows), (100, 200, 4));
        let entries: Vec<(&str, LinkState, bool)> = s
            .served
            .iter()
            .map(|b| (b.name.as_str(), b.state, b.wanted))
            .collect();
        assert_eq!(
            entries,
            [
                ("lab-a", LinkState::Online, true),
                ("lab-b", LinkState::NoBoard, false),
                ("lab-c", LinkState::NoBoard, true)
            ]
        );
        let with_err = combine(&[views[0].clone(), view("lab-d", err, true)], &[r], true);
        assert_eq!(with_err.state, LinkState::Error);
        assert_eq!(
            with_err.error.as_deref(),
            Some("peer speaks protocol version 0")
        );
    }
}
