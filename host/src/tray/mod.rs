//! Tray icon for `qbkit-host tray`: one small API over two backends.
//!
//! ```text
//!  engine ──watch<Snapshot>──▶ tray::run ──▶ linux.rs  (StatusNotifierItem over D-Bus, ksni)
//!    ▲                           │      └──▶ native.rs (macOS / Windows, tray-icon + tao)
//!    └──────mpsc<Action>─────────┘  menu clicks; desktop chores (clipboard, log, autostart) in desktop.rs
//! ```
//!
//! The engine owns all state and publishes a [`Snapshot`] whenever something visible changes;
//! the tray only renders it ([`Model`] is the pure part: icon, tooltip and menu entries from a
//! snapshot, shared by every backend and unit-tested) and sends the user's choices back as
//! [`Action`]s. [`run`] blocks the calling thread (on macOS it must be the main thread) until
//! the user picks Quit or the engine drops its [`watch::Sender`]; the engine runs on its own
//! thread and never waits for the tray, so a missing tray host or a dead D-Bus connection
//! costs the icon, never the network.

pub mod app;
pub mod desktop;
pub mod icons;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as backend;
#[cfg(any(target_os = "macos", target_os = "windows"))]
mod native;
#[cfg(any(target_os = "macos", target_os = "windows"))]
use native as backend;
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
mod other;
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
use other as backend;

use std::fmt::Write as _;
use std::path::PathBuf;

use tokio::sync::{mpsc, watch};

/// What the icon shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkState {
    /// No board found (USB) or no peer attached (stream transports).
    #[default]
    NoBoard,
    /// A board is attached and the session is being set up.
    Connecting,
    /// The session is up: the board has internet.
    Online,
    /// Something needs the user's attention (see [`Snapshot::error`]).
    Error,
}

impl LinkState {
    /// Every state, in icon order.
    pub const ALL: [Self; 4] = [Self::NoBoard, Self::Connecting, Self::Online, Self::Error];

    /// Short human name.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoBoard => "no board",
            Self::Connecting => "connecting",
            Self::Online => "online",
            Self::Error => "error",
        }
    }
}

/// A board the engine can see (USB discovery) or is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BoardEntry {
    /// USB serial number (or the peer identity from Hello).
    pub serial: String,
    /// Where it is (USB bus path, peer address).
    pub location: String,
}

/// One of several boards the engine serves: its own entry in the menu.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServedBoard {
    /// Its name (as `qbkit-host status` shows it).
    pub name: String,
    /// Its state.
    pub state: LinkState,
    /// Bytes per second from the board.
    pub rate_up_bps: u64,
    /// Bytes per second to the board.
    pub rate_down_bps: u64,
    /// Its open NAT flows.
    pub flows: u64,
    /// Not disconnected from the menu.
    pub wanted: bool,
}

/// Everything the tray shows; published by the engine through a [`watch`] channel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// The state the icon shows.
    pub state: LinkState,
    /// Serial / identity of the attached board.
    pub board_serial: Option<String>,
    /// The board's IPv4 address on the link (what "copy address" copies).
    pub board_address: Option<String>,
    /// Link speed or kind, e.g. "USB 3 SuperSpeed" or "tcp 127.0.0.1:4747".
    pub link_speed: Option<String>,
    /// Bytes per second from the board (upload to the internet).
    pub rate_up_bps: u64,
    /// Bytes per second to the board.
    pub rate_down_bps: u64,
    /// Open NAT flows.
    pub flows: u64,
    /// Boards found, for the menu.
    pub boards: Vec<BoardEntry>,
    /// Whether the engine is connected to (or trying) a board; drives Connect/Disconnect.
    pub connect_wanted: bool,
    /// Error text for [`LinkState::Error`].
    pub error: Option<String>,
    /// Port forwards into the board, one line each (`ssh 127.0.0.1:2222 → tcp:22`).
    pub forwards: Vec<String>,
    /// Every board when the engine serves several (then the fields above are their totals);
    /// empty with one board.
    pub served: Vec<ServedBoard>,
}

/// What the user asked for, sent to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Connect to this board (name or serial), or to every board.
    Connect(Option<String>),
    /// Stop using this board (name), or every board (the engine keeps running, idle).
    Disconnect(Option<String>),
    /// The board's address was put on the clipboard (done by the tray).
    CopyAddress(String),
    /// The log file was opened in the user's viewer (done by the tray).
    OpenLog,
    /// Start at login was switched on or off (done by the tray).
    SetAutostart(bool),
    /// Quit the program.
    Quit,
}

/// Settings for [`run`].
#[derive(Debug, Clone)]
pub struct TrayConfig {
    /// File opened by "Open log".
    pub log_path: Option<PathBuf>,
    /// The command line started at login (default: this executable with `tray`).
    pub autostart_command: Vec<String>,
}

impl Default for TrayConfig {
    fn default() -> Self {
        let exe = std::env::current_exe()
            .map_or_else(|_| "qbkit-host".to_owned(), |p| p.display().to_string());
        Self {
            log_path: Some(desktop::default_log_path()),
            autostart_command: vec![exe, "tray".to_owned()],
        }
    }
}

/// Errors of the tray.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend could not start (no event loop, no runtime).
    #[error("tray: {0}")]
    Backend(String),
}

/// Shows the tray icon until the user picks Quit or the engine drops `snapshots`' sender.
///
/// Blocks the calling thread. On macOS call it on the main thread. When no tray host is running
/// (Linux without a StatusNotifierWatcher) it logs one line and keeps waiting: the icon appears
/// when a tray host starts, and the engine is not affected either way.
pub fn run(
    config: TrayConfig,
    snapshots: watch::Receiver<Snapshot>,
    actions: mpsc::UnboundedSender<Action>,
) -> Result<(), Error> {
    backend::run(config, snapshots, actions)
}

/// A menu entry's meaning, independent of the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuId {
    /// Informational line (disabled).
    Info,
    /// Connect to a board (serial) or the first found.
    Connect(Option<String>),
    /// Disconnect one board (name), or every board.
    Disconnect(Option<String>),
    /// Copy the board's address.
    CopyAddress,
    /// Open the log.
    OpenLog,
    /// Toggle start at login.
    Autostart,
    /// Quit.
    Quit,
}

impl MenuId {
    /// Stable string id (for backends whose menus carry string ids).
    pub fn to_key(&self) -> String {
        match self {
            Self::Info => "info".to_owned(),
            Self::Connect(None) => "connect".to_owned(),
            Self::Connect(Some(s)) => format!("connect:{s}"),
            Self::Disconnect(None) => "disconnect".to_owned(),
            Self::Disconnect(Some(n)) => format!("disconnect:{n}"),
            Self::CopyAddress => "copy-address".to_owned(),
            Self::OpenLog => "open-log".to_owned(),
            Self::Autostart => "autostart".to_owned(),
            Self::Quit => "quit".to_owned(),
        }
    }

    /// Inverse of [`Self::to_key`].
    pub fn from_key(key: &str) -> Option<Self> {
        Some(match key {
            "info" => Self::Info,
            "connect" => Self::Connect(None),
            "disconnect" => Self::Disconnect(None),
            "copy-address" => Self::CopyAddress,
            "open-log" => Self::OpenLog,
            "autostart" => Self::Autostart,
            "quit" => Self::Quit,
            k => match k.strip_prefix("disconnect:") {
                Some(n) => Self::Disconnect(Some(n.to_owned())),
                None => Self::Connect(Some(k.strip_prefix("connect:")?.to_owned())),
            },
        })
    }
}

/// One menu line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuEntry {
    /// A clickable (or disabled) item; `checked` is `Some` for check items.
    Item {
        /// What it does.
        id: MenuId,
        /// Text.
        label: String,
        /// Clickable.
        enabled: bool,
        /// Check state for toggles.
        checked: Option<bool>,
    },
    /// A separator line.
    Separator,
}

/// The pure view of a snapshot: what every backend draws.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Icon state.
    pub state: LinkState,
    /// Tooltip title (one line).
    pub title: String,
    /// Tooltip body (lines).
    pub body: Vec<String>,
    /// Menu.
    pub menu: Vec<MenuEntry>,
}

/// "1.2 MB/s" style rate.
pub fn format_rate(bps: u64) -> String {
    const UNITS: [&str; 4] = ["B/s", "kB/s", "MB/s", "GB/s"];
    #[allow(clippy::cast_precision_loss, reason = "display only")]
    let mut v = bps as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bps} B/s")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Model {
    /// Builds the view of `s`; `autostart` is the current start-at-login setting.
    #[allow(
        clippy::too_many_lines,
        reason = "one flat list of menu lines reads best"
    )]
    pub fn new(s: &Snapshot, autostart: bool) -> Self {
        let online = s
            .served
            .iter()
            .filter(|b| b.state == LinkState::Online)
            .count();
        let title = match (&s.state, &s.board_serial) {
            _ if !s.served.is_empty() => {
                format!("qbkit-net: {online} of {} boards online", s.served.len())
            }
            (LinkState::Online, Some(b)) => format!("qbkit-net: board {b} online"),
            (st, Some(b)) => format!("qbkit-net: board {b} {}", st.label()),
            (st, None) => format!("qbkit-net: {}", st.label()),
        };
        let mut body = Vec::new();
        if let Some(e) = &s.error {
            body.push(format!("error: {e}"));
        }
        if let Some(l) = &s.link_speed {
            body.push(format!("link: {l}"));
        }
        if let Some(a) = &s.board_address {
            body.push(format!("board address: {a}"));
        }
        if s.state == LinkState::Online {
            body.push(format!(
                "up {} / down {}",
                format_rate(s.rate_up_bps),
                format_rate(s.rate_down_bps)
            ));
            body.push(format!("{} open flows", s.flows));
        }
        for b in &s.served {
            body.push(format!("{}: {}", b.name, served_line(b)));
        }

        let mut menu = vec![
            MenuEntry::Item {
                id: MenuId::Info,
                label: title.clone(),
                enabled: false,
                checked: None,
            },
            MenuEntry::Separator,
        ];
        // Several boards: one entry each, clicking it connects or disconnects that board.
        for b in &s.served {
            let (id, verb) = if b.wanted {
                (MenuId::Disconnect(Some(b.name.clone())), "Disconnect")
            } else {
                (MenuId::Connect(Some(b.name.clone())), "Connect")
            };
            menu.push(MenuEntry::Item {
                id,
                label: format!("{verb} {} ({})", b.name, served_line(b)),
                enabled: true,
                checked: None,
            });
        }
        if s.boards.is_empty() && s.served.is_empty() {
            menu.push(MenuEntry::Item {
                id: MenuId::Info,
                label: "No boards found".to_owned(),
                enabled: false,
                checked: None,
            });
        }
        for b in &s.boards {
            let current = s.board_serial.as_deref() == Some(b.serial.as_str()) && s.connect_wanted;
            let mut label = format!("Board {}", b.serial);
            if !b.location.is_empty() {
                let _ = write!(label, " ({})", b.location);
            }
            menu.push(MenuEntry::Item {
                id: MenuId::Connect(Some(b.serial.clone())),
                label,
                enabled: !current,
                checked: Some(current),
            });
        }
        menu.push(if s.connect_wanted {
            MenuEntry::Item {
                id: MenuId::Disconnect(None),
                label: if s.served.is_empty() {
                    "Disconnect"
                } else {
                    "Disconnect all"
                }
                .to_owned(),
                enabled: true,
                checked: None,
            }
        } else {
            MenuEntry::Item {
                id: MenuId::Connect(None),
                label: "Connect".to_owned(),
                enabled: true,
                checked: None,
            }
        });
        menu.push(MenuEntry::Item {
            id: MenuId::CopyAddress,
            label: match &s.board_address {
                Some(a) => format!("Copy board address ({a})"),
                None => "Copy board address".to_owned(),
            },
            enabled: s.board_address.is_some(),
            checked: None,
        });
        if !s.forwards.is_empty() {
            menu.push(MenuEntry::Separator);
        }
        for f in &s.forwards {
            menu.push(MenuEntry::Item {
                id: MenuId::Info,
                label: format!("Forward: {f}"),
                enabled: false,
                checked: None,
            });
        }
        menu.push(MenuEntry::Separator);
        menu.push(MenuEntry::Item {
            id: MenuId::OpenLog,
            label: "Open log".to_owned(),
            enabled: true,
            checked: None,
        });
        menu.push(MenuEntry::Item {
            id: MenuId::Autostart,
            label: "Start at login".to_owned(),
            enabled: true,
            checked: Some(autostart),
        });
        menu.push(MenuEntry::Separator);
        menu.push(MenuEntry::Item {
            id: MenuId::Quit,
            label: "Quit".to_owned(),
            enabled: true,
            checked: None,
        });
        Self {
            state: s.state,
            title,
            body,
            menu,
        }
    }

    /// Title and body as one text (backends with a single-string tooltip).
    pub fn tooltip_text(&self) -> String {
        let mut t = self.title.clone();
        for l in &self.body {
            t.push('\n');
            t.push_str(l);
        }
        t
    }
}

/// One served board's state and, online, its rates and flows.
fn served_line(b: &ServedBoard) -> String {
    if b.state == LinkState::Online {
        format!(
            "online, up {} / down {}, {} flows",
            format_rate(b.rate_up_bps),
            format_rate(b.rate_down_bps),
            b.flows
        )
    } else if b.wanted {
        b.state.label().to_owned()
    } else {
        "disconnected".to_owned()
    }
}

/// Carries out a menu click: desktop chores happen here, then the action goes to the engine.
/// Returns the action sent (None for informational items) so backends can update local state.
pub(crate) fn dispatch(
    id: &MenuId,
    snapshot: &Snapshot,
    autostart_now: bool,
    config: &TrayConfig,
    actions: &mpsc::UnboundedSender<Action>,
) -> Option<Action> {
    let action = match id {
        MenuId::Info => return None,
        MenuId::Connect(serial) => Action::Connect(serial.clone()),
        MenuId::Disconnect(board) => Action::Disconnect(board.clone()),
        MenuId::CopyAddress => {
            let addr = snapshot.board_address.clone()?;
            desktop::copy_to_clipboard(&addr);
            Action::CopyAddress(addr)
        }
        MenuId::OpenLog => {
            if let Some(p) = &config.log_path {
                desktop::open_path(p);
            }
            Action::OpenLog
        }
        MenuId::Autostart => {
            let on = !autostart_now;
            if let Err(e) = desktop::set_autostart(on, &config.autostart_command) {
                tracing::warn!(error = %e, "cannot change start at login");
                return None;
            }
            Action::SetAutostart(on)
        }
        MenuId::Quit => Action::Quit,
    };
    // The engine may already be gone (quitting); nothing to do then.
    let _ = actions.send(action.clone());
    Some(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online() -> Snapshot {
        Snapshot {
            state: LinkState::Online,
            board_serial: Some("A1B2C3D4E5F6".into()),
            board_address: Some("10.47.0.2".into()),
            link_speed: Some("USB 2 high-speed".into()),
            rate_up_bps: 1_250_000,
            rate_down_bps: 999,
            flows: 7,
            boards: vec![BoardEntry {
                serial: "A1B2C3D4E5F6".into(),
                location: "1-2".into(),
            }],
            connect_wanted: true,
            error: None,
            forwards: Vec::new(),
            served: Vec::new(),
        }
    }

    #[test]
    fn tooltip_shows_board_speed_rates_flows() {
        let m = Model::new(&online(), false);
        assert_eq!(m.title, "qbkit-net: board A1B2C3D4E5F6 online");
        let t = m.tooltip_text();
        assert!(t.contains("link: USB 2 high-speed"), "{t}");
        assert!(t.contains("up 1.2 MB/s / down 999 B/s"), "{t}");
        assert!(t.contains("7 open flows"), "{t}");
        let idle = Model::new(&Snapshot::default(), false);
        assert_eq!(idle.title, "qbkit-net: no board");
        assert!(idle.body.is_empty());
    }

    #[test]
    fn menu_offers_the_right_actions() {
        let m = Model::new(&online(), true);
        let ids: Vec<(MenuId, bool, Option<bool>)> = m
            .menu
            .iter()
            .filter_map(|e| match e {
                MenuEntry::Item {
                    id,
                    enabled,
                    checked,
                    ..
                } => Some((id.clone(), *enabled, *checked)),
                MenuEntry::Separator => None,
            })
            .collect();
        assert!(ids.contains(&(
            MenuId::Connect(Some("A1B2C3D4E5F6".into())),
            false,
            Some(true)
        )));
        assert!(ids.contains(&(MenuId::Disconnect(None), true, None)));
        assert!(ids.contains(&(MenuId::CopyAddress, true, None)));
        assert!(ids.contains(&(MenuId::Autostart, true, Some(true))));
        assert_eq!(ids.last().unwrap().0, MenuId::Quit);
        let mut fwd = online();
        fwd.forwards = vec!["ssh 127.0.0.1:2222 → tcp:22".into()];
        let labels: Vec<String> = Model::new(&fwd, true)
            .menu
            .iter()
            .filter_map(|e| match e {
                MenuEntry::Item { label, .. } => Some(label.clone()),
                MenuEntry::Separator => None,
            })
            .collect();
        assert!(
            labels.contains(&"Forward: ssh 127.0.0.1:2222 → tcp:22".to_owned()),
            "{labels:?}"
        );
        let idle = Model::new(&Snapshot::default(), false);
        assert!(idle.menu.iter().any(|e| matches!(
            e,
            MenuEntry::Item {
                id: MenuId::Connect(None),
                enabled: true,
                ..
            }
        )));
        assert!(idle.menu.iter().any(|e| matches!(
            e,
            MenuEntry::Item {
                id: MenuId::CopyAddress,
                enabled: false,
                ..
            }
        )));
    }

    #[test]
    fn several_boards_get_an_entry_each() {
        let mut s = online();
        s.served = vec![
            ServedBoard {
                name: "lab-a".into(),
                state: LinkState::Online,
                rate_up_bps: 2_000,
                rate_down_bps: 3_000_000,
                flows: 2,
                wanted: true,
            },
            ServedBoard {
                name: "lab-b".into(),
                state: LinkState::NoBoard,
                wanted: false,
                ..ServedBoard::default()
            },
        ];
        let m = Model::new(&s, false);
        assert_eq!(m.title, "qbkit-net: 1 of 2 boards online");
        let t = m.tooltip_text();
        assert!(
            t.contains("lab-a: online, up 2.0 kB/s / down 3.0 MB/s, 2 flows"),
            "{t}"
        );
        assert!(t.contains("lab-b: disconnected"), "{t}");
        let items: Vec<(MenuId, String)> = m
            .menu
            .iter()
            .filter_map(|e| match e {
                MenuEntry::Item { id, label, .. } => Some((id.clone(), label.clone())),
                MenuEntry::Separator => None,
            })
            .collect();
        assert!(items.contains(&(
            MenuId::Disconnect(Some("lab-a".into())),
            "Disconnect lab-a (online, up 2.0 kB/s / down 3.0 MB/s, 2 flows)".into()
        )));
        assert!(items.contains(&(
            MenuId::Connect(Some("lab-b".into())),
            "Connect lab-b (disconnected)".into()
        )));
        assert!(items.contains(&(MenuId::Disconnect(None), "Disconnect all".into())));
    }

    #[test]
    fn menu_keys_round_trip() {
        for id in [
            MenuId::Info,
            MenuId::Connect(None),
            MenuId::Connect(Some("X:1".into())),
            MenuId::Disconnect(None),
            MenuId::Disconnect(Some("lab-a".into())),
            MenuId::CopyAddress,
            MenuId::OpenLog,
            MenuId::Autostart,
            MenuId::Quit,
        ] {
            assert_eq!(MenuId::from_key(&id.to_key()), Some(id));
        }
        assert_eq!(MenuId::from_key("bogus"), None);
    }

    #[test]
    fn dispatch_sends_engine_actions() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cfg = TrayConfig {
            log_path: None,
            autostart_command: vec!["qbkit-host".into(), "tray".into()],
        };
        let s = online();
        assert_eq!(dispatch(&MenuId::Info, &s, false, &cfg, &tx), None);
        dispatch(&MenuId::Disconnect(None), &s, false, &cfg, &tx);
        dispatch(&MenuId::Disconnect(Some("B".into())), &s, false, &cfg, &tx);
        dispatch(&MenuId::Connect(Some("A".into())), &s, false, &cfg, &tx);
        dispatch(&MenuId::Quit, &s, false, &cfg, &tx);
        assert_eq!(rx.try_recv().unwrap(), Action::Disconnect(None));
        assert_eq!(rx.try_recv().unwrap(), Action::Disconnect(Some("B".into())));
        assert_eq!(rx.try_recv().unwrap(), Action::Connect(Some("A".into())));
        assert_eq!(rx.try_recv().unwrap(), Action::Quit);
    }

    #[test]
    fn rates_format() {
        assert_eq!(format_rate(0), "0 B/s");
        assert_eq!(format_rate(12_345), "12.3 kB/s");
        assert_eq!(format_rate(3_000_000_000), "3.0 GB/s");
    }
}
