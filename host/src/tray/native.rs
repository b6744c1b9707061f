//! macOS and Windows tray backend: `tray-icon` (the Tauri project's maintained tray crate) with
//! a `tao` event loop on the calling thread (macOS requires the main thread).
//!
//! ```text
//!  watch<Snapshot> ─▶ feeder thread ─UserEvent::Snapshot─▶ event loop ─▶ set_icon / set_tooltip / set_menu
//!  menu click ─MenuEvent handler─UserEvent::Menu─▶ event loop ─▶ tray::dispatch ─▶ mpsc<Action>
//! ```
//!
//! The feeder thread owns a tiny runtime only to await `watch::Receiver::changed`; when the
//! engine drops its sender the feeder sends `EngineGone` and the loop exits.

use tao::event::{Event, StartCause};
use tao::event_loop::{ControlFlow, EventLoopBuilder};
use tao::platform::run_return::EventLoopExtRunReturn as _;
use tokio::sync::{mpsc, watch};
use tray_icon::menu::{CheckMenuItem, Menu, MenuEvent, MenuItem, PredefinedMenuItem};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};

use super::icons;
use super::{Action, Error, MenuEntry, MenuId, Model, Snapshot, TrayConfig};

/// Icon edge in pixels (the OS scales; 32 is crisp on both 1× and 2× menu bars).
const ICON_SIZE: u32 = 32;

enum UserEvent {
    Snapshot(Snapshot),
    Menu(MenuEvent),
    EngineGone,
}

fn icon_for(model: &Model) -> Option<Icon> {
    let px = icons::draw(model.state, ICON_SIZE);
    Icon::from_rgba(px.pixels, px.size, px.size).ok()
}

fn build_menu(model: &Model) -> Menu {
    let menu = Menu::new();
    for e in &model.menu {
        let r = match e {
            MenuEntry::Separator => menu.append(&PredefinedMenuItem::separator()),
            MenuEntry::Item {
                id,
                label,
                enabled,
                checked: Some(c),
            } => menu.append(&CheckMenuItem::with_id(
                id.to_key(),
                label,
                *enabled,
                *c,
                None,
            )),
            MenuEntry::Item {
                id, label, enabled, ..
            } => menu.append(&MenuItem::with_id(id.to_key(), label, *enabled, None)),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "tray menu item");
        }
    }
    menu
}

fn apply(tray: &TrayIcon, model: &Model) {
    if let Err(e) = tray.set_icon(icon_for(model)) {
        tracing::warn!(error = %e, "tray icon update");
    }
    // Windows limits tooltips to 127 characters.
    let tip: String = model.tooltip_text().chars().take(127).collect();
    if let Err(e) = tray.set_tooltip(Some(tip)) {
        tracing::warn!(error = %e, "tray tooltip update");
    }
    tray.set_menu(Some(Box::new(build_menu(model))));
}

pub(super) fn run(
    config: TrayConfig,
    mut snapshots: watch::Receiver<Snapshot>,
    actions: mpsc::UnboundedSender<Action>,
) -> Result<(), Error> {
    let mut event_loop = EventLoopBuilder::<UserEvent>::with_user_event().build();

    let proxy = event_loop.create_proxy();
    MenuEvent::set_event_handler(Some(move |e| {
        let _ = proxy.send_event(UserEvent::Menu(e));
    }));

    let proxy = event_loop.create_proxy();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| Error::Backend(format!("tray runtime: {e}")))?;
    std::thread::Builder::new()
        .name("qbkit-tray-feed".into())
        .spawn(move || {
            rt.block_on(async {
                while snapshots.changed().await.is_ok() {
                    let s = snapshots.borrow_and_update().clone();
                    if proxy.send_event(UserEvent::Snapshot(s)).is_err() {
                        return;
                    }
                }
                let _ = proxy.send_event(UserEvent::EngineGone);
            });
        })
        .map_err(|e| Error::Backend(format!("tray feeder thread: {e}")))?;

    let mut snapshot = Snapshot::default();
    let mut autostart = super::desktop::autostart_enabled();
    let mut tray: Option<TrayIcon> = None;
    event_loop.run_return(move |event, _, control_flow| {
        *control_flow = ControlFlow::Wait;
        match event {
            // tray-icon: create the icon once the loop runs (macOS needs a live NSApplication).
            Event::NewEvents(StartCause::Init) => {
                let model = Model::new(&snapshot, autostart);
                let built = TrayIconBuilder::new()
                    .with_menu(Box::new(build_menu(&model)))
                    .with_tooltip(model.tooltip_text().chars().take(127).collect::<String>())
                    .with_icon(icon_for(&model).unwrap_or_else(|| {
                        Icon::from_rgba(vec![0; 4], 1, 1).expect("1×1 icon is valid")
                    }))
                    .build();
                match built {
                    Ok(t) => tray = Some(t),
                    Err(e) => tracing::warn!(error = %e, "cannot create the tray icon; the board's network keeps working"),
                }
            }
            Event::UserEvent(UserEvent::Snapshot(s)) => {
                snapshot = s;
                if let Some(t) = &tray {
                    apply(t, &Model::new(&snapshot, autostart));
                }
            }
            Event::UserEvent(UserEvent::Menu(e)) => {
                let Some(id) = MenuId::from_key(e.id.as_ref()) else {
                    return;
                };
                match super::dispatch(&id, &snapshot, autostart, &config, &actions) {
                    Some(Action::Quit) => *control_flow = ControlFlow::Exit,
                    Some(Action::SetAutostart(on)) => {
                        autostart = on;
                        if let Some(t) = &tray {
                            apply(t, &Model::new(&snapshot, autostart));
                        }
                    }
                    _ => {}
                }
            }
            Event::UserEvent(UserEvent::EngineGone) => *control_flow = ControlFlow::Exit,
            _ => {}
        }
    });
    Ok(())
}
