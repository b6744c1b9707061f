//! Linux tray backend: a StatusNotifierItem on the session bus via `ksni` (pure Rust D-Bus, no
//! GTK). KDE shows it natively, GNOME with the AppIndicator extension, XEmbed-only panels
//! through a bridge such as snixembed.
//!
//! ```text
//!  watch<Snapshot> ──changed──▶ handle.update(|item| item.snapshot = …) ──▶ PropertiesChanged /
//!                                                                          NewIcon/NewToolTip/NewStatus
//!  menu click (D-Bus) ──▶ Item::menu closure ──▶ tray::dispatch ──▶ mpsc<Action>
//! ```
//!
//! No tray host: ksni is started with `assume_sni_available`, so a missing
//! `org.kde.StatusNotifierWatcher` is reported once through `watcher_offline` (one log line)
//! and ksni keeps watching `NameOwnerChanged`; it registers again whenever a watcher appears
//! (also after a panel restart). When that registration fails (hosts such as gtk-sni-tray own
//! the watcher name a moment before they export the object, so the first call gets
//! UnknownObject) the service is started again with a backoff (250 ms doubling to [`RETRY`],
//! from the start for each watcher that appears), since ksni does not retry.
//! No session bus at all, or a lost bus connection: retried every [`RETRY`]; the engine never
//! waits for any of this. ksni does not notice a dead bus connection itself (its service loop
//! just stops seeing signals), so a second small connection pings the bus daemon every
//! [`PROBE`]; when the ping fails the service is started again on a fresh connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ksni::TrayMethods as _;
use tokio::sync::{Notify, mpsc, watch};

use super::icons;
use super::{Action, Error, LinkState, MenuEntry, Model, Snapshot, TrayConfig};

/// Wait between attempts to reach the session bus.
const RETRY: Duration = Duration::from_secs(5);
/// First wait before re-registering after a failed registration; doubles up to [`RETRY`].
const RESPAWN_FIRST: Duration = Duration::from_millis(250);
/// How often the bus connection is checked (and how long a ping may take).
const PROBE: Duration = Duration::from_secs(2);
/// Pixmap sizes offered to the tray host (it picks the closest).
const SIZES: [u32; 5] = [16, 22, 24, 32, 48];

struct Item {
    snapshot: Snapshot,
    autostart: bool,
    config: Arc<TrayConfig>,
    actions: mpsc::UnboundedSender<Action>,
    quit: Arc<Notify>,
    /// Pixmaps per state, drawn once.
    pixmaps: Arc<[Vec<ksni::Icon>; 4]>,
    /// Whether "no tray host" was already logged (one line per outage, not per retry).
    offline_logged: Arc<AtomicBool>,
    /// Asks [`serve`] to start the service again (registration failed; see `watcher_offline`).
    respawn: Arc<Notify>,
    /// Set when a watcher appears: its registration attempts start at the shortest backoff.
    fresh_watcher: Arc<AtomicBool>,
}

fn state_index(s: LinkState) -> usize {
    match s {
        LinkState::NoBoard => 0,
        LinkState::Connecting => 1,
        LinkState::Online => 2,
        LinkState::Error => 3,
    }
}

fn draw_pixmaps() -> [Vec<ksni::Icon>; 4] {
    LinkState::ALL.map(|s| {
        SIZES
            .iter()
            .map(|&n| ksni::Icon {
                width: n.cast_signed(),
                height: n.cast_signed(),
                data: icons::draw(s, n).to_argb_be(),
            })
            .collect()
    })
}

impl ksni::Tray for Item {
    fn id(&self) -> String {
        "qbkit-host".into()
    }

    fn title(&self) -> String {
        "qbkit-net".into()
    }

    fn category(&self) -> ksni::Category {
        ksni::Category::Hardware
    }

    fn status(&self) -> ksni::Status {
        match self.snapshot.state {
            LinkState::Error => ksni::Status::NeedsAttention,
            LinkState::Online | LinkState::Connecting => ksni::Status::Active,
            LinkState::NoBoard => ksni::Status::Passive,
        }
    }

    fn icon_pixmap(&self) -> Vec<ksni::Icon> {
        self.pixmaps[state_index(self.snapshot.state)].clone()
    }

    fn attention_icon_pixmap(&self) -> Vec<ksni::Icon> {
        self.pixmaps[state_index(LinkState::Error)].clone()
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        let m = Model::new(&self.snapshot, self.autostart);
        ksni::ToolTip {
            icon_name: String::new(),
            icon_pixmap: Vec::new(),
            title: m.title,
            description: m.body.join("\n"),
        }
    }

    fn activate(&mut self, _x: i32, _y: i32) {
        // Left click: nothing to open (no window); the menu is on the right click.
    }

    fn menu(&self) -> Vec<ksni::MenuItem<Self>> {
        use ksni::menu::{CheckmarkItem, StandardItem};
        Model::new(&self.snapshot, self.autostart)
            .menu
            .into_iter()
            .map(|e| match e {
                MenuEntry::Separator => ksni::MenuItem::Separator,
                MenuEntry::Item {
                    id,
                    label,
                    enabled,
                    checked,
                } => {
                    let activate = Box::new(move |this: &mut Self| {
                        let sent = super::dispatch(
                            &id,
                            &this.snapshot,
                            this.autostart,
                            &this.config,
                            &this.actions,
                        );
                        match sent {
                            Some(Action::SetAutostart(on)) => this.autostart = on,
                            Some(Action::Quit) => this.quit.notify_one(),
                            _ => {}
                        }
                    });
                    match checked {
                        Some(checked) => CheckmarkItem {
                            label,
                            enabled,
                            checked,
                            activate,
                            ..Default::default()
                        }
                        .into(),
                        None => StandardItem {
                            label,
                            enabled,
                            activate,
                            ..Default::default()
                        }
                        .into(),
                    }
                }
            })
            .collect()
    }

    fn watcher_online(&self) {
        self.offline_logged.store(false, Ordering::Relaxed);
        self.fresh_watcher.store(true, Ordering::Relaxed);
        tracing::info!("tray host is back; registering the tray icon again");
    }

    fn watcher_offline(&self, reason: ksni::OfflineReason) -> bool {
        if !self.offline_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                ?reason,
                "no tray host (StatusNotifierWatcher) on the session bus: no icon until one starts; \
                 the board's network keeps working"
            );
        }
        // A watcher that vanished (`No`) or has no owner yet (`ServiceUnknown`) is handled by
        // ksni: it registers when the name appears. Any other failed registration is not
        // retried by ksni; it happens when a host claims the watcher name before exporting its
        // object (gtk-sni-tray does), so start the service again after a short backoff.
        let unowned = matches!(
            reason,
            ksni::OfflineReason::No
                | ksni::OfflineReason::Error(ksni::Error::Watcher(
                    zbus::fdo::Error::ServiceUnknown(_)
                ))
        );
        if !unowned {
            self.respawn.notify_one();
        }
        true
    }
}

pub(super) fn run(
    config: TrayConfig,
    snapshots: watch::Receiver<Snapshot>,
    actions: mpsc::UnboundedSender<Action>,
) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Backend(format!("tray runtime: {e}")))?;
    rt.block_on(serve(config, snapshots, actions));
    Ok(())
}

/// Whether the session bus answers a Ping within [`PROBE`] on `conn`.
async fn bus_alive(conn: Option<&zbus::Connection>) -> bool {
    let Some(conn) = conn else { return false };
    let ping = conn.call_method(
        Some("org.freedesktop.DBus"),
        "/org/freedesktop/DBus",
        Some("org.freedesktop.DBus.Peer"),
        "Ping",
        &(),
    );
    matches!(tokio::time::timeout(PROBE, ping).await, Ok(Ok(_)))
}

/// Keeps one ksni service alive and fed until Quit or the engine goes away.
async fn serve(
    config: TrayConfig,
    mut snapshots: watch::Receiver<Snapshot>,
    actions: mpsc::UnboundedSender<Action>,
) {
    let config = Arc::new(config);
    let quit = Arc::new(Notify::new());
    let pixmaps = Arc::new(draw_pixmaps());
    let offline_logged = Arc::new(AtomicBool::new(false));
    let autostart = super::desktop::autostart_enabled();
    let mut bus_error_logged = false;
    let respawn = Arc::new(Notify::new());
    let fresh_watcher = Arc::new(AtomicBool::new(false));
    let mut backoff = RESPAWN_FIRST;
    loop {
        let item = Item {
            snapshot: snapshots.borrow_and_update().clone(),
            autostart,
            config: config.clone(),
            actions: actions.clone(),
            quit: quit.clone(),
            pixmaps: pixmaps.clone(),
            offline_logged: offline_logged.clone(),
            respawn: respawn.clone(),
            fresh_watcher: fresh_watcher.clone(),
        };
        // How long to wait before the next attempt when this one gets no service.
        let mut retry_in = RETRY;
        let handle = match item.assume_sni_available(true).spawn().await {
            Ok(h) => {
                bus_error_logged = false;
                Some(h)
            }
            // The watcher name has an owner but its object refused the registration: a tray
            // host that is still starting (it owns the name before it exports the object).
            // Try again soon; the wait doubles up to RETRY while it keeps refusing.
            Err(ksni::Error::Watcher(e)) => {
                tracing::debug!(error = %e, "tray host not ready; registering again in {backoff:?}");
                retry_in = backoff;
                backoff = (backoff * 2).min(RETRY);
                None
            }
            Err(e) => {
                if !bus_error_logged {
                    tracing::warn!(error = %e, "tray icon unavailable (no D-Bus session bus?); retrying every {} s, the board's network keeps working", RETRY.as_secs());
                    bus_error_logged = true;
                }
                None
            }
        };
        let retry_at = tokio::time::Instant::now() + retry_in;
        let probe = match &handle {
            Some(_) => zbus::Connection::session().await.ok(),
            None => None,
        };
        // Feed snapshots until the service dies (bus lost), the user quits or the engine ends.
        loop {
            let closed = async {
                match &handle {
                    // ksni has no "closed" notification: poll its handle and the bus.
                    Some(h) => {
                        while !h.is_closed() && bus_alive(probe.as_ref()).await {
                            tokio::time::sleep(PROBE).await;
                        }
                    }
                    // A deadline, not a fresh sleep per pass: snapshots arrive every second
                    // while a board is online and would otherwise push the retry out forever.
                    None => tokio::time::sleep_until(retry_at).await,
                }
            };
            tokio::select! {
                () = respawn.notified() => {
                    if fresh_watcher.swap(false, Ordering::Relaxed) {
                        backoff = RESPAWN_FIRST;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY);
                    if let Some(h) = &handle { h.shutdown().await; }
                    break;
                }
                () = quit.notified() => {
                    if let Some(h) = &handle { h.shutdown().await; }
                    return;
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        if let Some(h) = &handle { h.shutdown().await; }
                        return;
                    }
                    let s = snapshots.borrow_and_update().clone();
                    if let Some(h) = &handle {
                        h.update(|item| item.snapshot = s).await;
                    }
                }
                () = closed => {
                    if let Some(h) = &handle {
                        tracing::warn!("tray icon lost its D-Bus connection; reconnecting");
                        // Stop ksni's service task before dropping its handle (with its bus
                        // gone and no handle it would have nothing left to wait on).
                        let _ = tokio::time::timeout(PROBE, h.shutdown()).await;
                    }
                    break;
                }
            }
        }
    }
}
