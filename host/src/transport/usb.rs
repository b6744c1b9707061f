//! The USB transport task (`--transport usb`, the default): waits for a board, serves it, and
//! serves it again after every replug, reporting [`LinkEvent`]s like every other transport.
//!
//! Data flow: [`BoardWatch`] (OS hotplug events, slow rescan as a fallback) → `Arrived` →
//! [`UsbLink::open_board`] (short retries while the OS finishes enumerating; slow retries while
//! access is denied, logging the fix once) → [`LinkEvent::Up`] with a bounded sender of depth
//! `out_depth` → two loops on one task: IN bundles (`in_depth` transfers always queued) →
//! [`LinkEvent::Bundle`], and bundles from the driver → [`crate::usb::UsbTx::send_bundle`] (at most
//! `out_depth` OUT transfers in flight; a ZLP only for a bundle that ends on a packet boundary,
//! which the driver's `finish_usb` padding never produces) → on unplug, transfer failure or the
//! driver closing the link (the board's session timed out) [`LinkEvent::Down`] → back to waiting
//! for the next `Arrived`, or reopening a board that is still attached.
//!
//! Each state change is one `info` line (`board arrived … via hotplug|rescan`, `serving`,
//! `board gone`); the VM scenario reads the `via` field to prove replugs are driven by hotplug.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{BufPool, Framing, LinkEvent, LinkUp};
use crate::usb::{
    Board, BoardEvent, BoardWatch, DeviceFilter, EventSource, UsbConfig, UsbError, UsbLink,
};

/// Quick re-opens after an arrival (the OS may still be configuring the device).
const OPEN_QUICK_TRIES: u32 = 20;
const OPEN_QUICK_DELAY: Duration = Duration::from_millis(100);
/// Re-open period while a present board cannot be opened (permissions, busy, stalled).
const OPEN_SLOW_DELAY: Duration = Duration::from_secs(2);
/// Linux configures a new device itself moments after announcing it; there the first half of
/// the quick tries leave an unconfigured board to the kernel (configuring it from here as well
/// races the kernel's own set-configuration, which then resets the interface under the claimed
/// endpoints). Elsewhere (macOS may leave a vendor device unconfigured) configure at once.
fn may_configure(tries: u32) -> bool {
    !cfg!(target_os = "linux") || tries >= OPEN_QUICK_TRIES / 2
}
/// How long a transfer that reports "disconnected" waits for the OS's removal event before the
/// board counts as still attached (reset or reconfigured under us) and is opened again.
const REMOVAL_GRACE: Duration = Duration::from_secs(1);
/// Delay before re-opening a board whose link failed while it stayed attached.
const REOPEN_DELAY: Duration = Duration::from_millis(200);

/// Runs the USB transport until the driver closes `events`.
pub async fn run(filter: DeviceFilter, cfg: UsbConfig, events: mpsc::Sender<LinkEvent>) {
    let mut watch = BoardWatch::new(filter);
    tracing::info!(
        hotplug = watch.has_hotplug(),
        "waiting for a qbkit board on USB"
    );
    // A board to (re)open without waiting for an event, and after what delay: set after a
    // failure that left the device attached.
    let mut retry: Option<(Board, Duration)> = None;
    let mut last_error: Option<String> = None;
    loop {
        let board = if let Some((b, delay)) = retry.take() {
            tokio::time::sleep(delay).await;
            b
        } else {
            match watch.next_with_source().await {
                Ok((BoardEvent::Arrived(b), via)) => {
                    let i = b.info();
                    tracing::info!(
                        path = %i.bus_path,
                        serial = i.serial.as_deref().unwrap_or("-"),
                        speed = i.speed.unwrap_or("?"),
                        %via,
                        "board arrived"
                    );
                    b
                }
                Ok((BoardEvent::Left { info, .. }, via)) => {
                    tracing::info!(path = %info.bus_path, %via, "board left");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot enumerate USB devices");
                    tokio::time::sleep(OPEN_SLOW_DELAY).await;
                    continue;
                }
            }
        };
        let link = match open(&board, cfg).await {
            Ok(l) => l,
            Err(e) if e.is_disconnect() => {
                let mut deferred = Vec::new();
                let gone = removed(&mut watch, board.id(), &mut deferred).await;
                watch.requeue(deferred);
                if gone {
                    tracing::info!(path = %board.info().bus_path, "board gone before it could be opened");
                } else {
                    tracing::info!(path = %board.info().bus_path, "board reset while opening; opening it again");
                    retry = Some((board, REOPEN_DELAY));
                }
                continue;
            }
            Err(e) => {
                // Logged in full once (it names the fix); repeats of the same failure at debug.
                let msg = e.to_string();
                if last_error.as_ref() == Some(&msg) {
                    tracing::debug!(error = %msg, "board still cannot be opened");
                } else {
                    tracing::error!("{msg} (retrying every {OPEN_SLOW_DELAY:?})");
                    last_error = Some(msg);
                }
                retry = Some((board, OPEN_SLOW_DELAY));
                continue;
            }
        };
        last_error = None;
        let mut deferred = Vec::new();
        let served = serve(link, cfg, &events, &mut watch, board.id(), &mut deferred).await;
        watch.requeue(deferred);
        match served {
            Served::Ended => return,
            Served::Down { reason, reopen } => {
                tracing::info!(path = %board.info().bus_path, %reason, "board link down");
                if events.send(LinkEvent::down(reason)).await.is_err() {
                    return;
                }
                if let Some(delay) = reopen {
                    tracing::info!(path = %board.info().bus_path, "board still attached; opening it again");
                    retry = Some((board, delay));
                }
            }
        }
    }
}

/// Reports each matching board once by name (its USB serial, or `usb-BUSPATH` without one) with
/// the filter that narrows to it, for a [`run`] of its own (`qbkit-host run` serving every board;
/// boards that share a serial are one name: tell them apart with `--bus-path`). Runs until
/// `found` is closed.
pub async fn discover(filter: DeviceFilter, found: mpsc::Sender<(String, DeviceFilter)>) {
    let mut watch = BoardWatch::new(filter.clone());
    let mut seen = std::collections::HashSet::new();
    loop {
        let board = tokio::select! {
            ev = watch.next_with_source() => ev,
            () = found.closed() => return,
        };
        match board {
            Ok((BoardEvent::Arrived(b), _)) => {
                let i = b.info();
                let (name, narrow) = match &i.serial {
                    Some(s) => {
                        let mut f = filter.clone();
                        f.serial = Some(s.clone());
                        (s.clone(), f)
                    }
                    None => (
                        format!("usb-{}", i.bus_path),
                        filter.clone().with_bus_path(Some(i.bus_path.clone())),
                    ),
                };
                if seen.insert(name.clone()) && found.send((name, narrow)).await.is_err() {
                    return;
                }
            }
            Ok((BoardEvent::Left { .. }, _)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot enumerate USB devices");
                tokio::time::sleep(OPEN_SLOW_DELAY).await;
            }
        }
    }
}

/// Opens a board, retrying briefly while the OS is still setting it up after an arrival.
async fn open(board: &Board, cfg: UsbConfig) -> Result<UsbLink, UsbError> {
    let mut tries = 0;
    loop {
        let configure = may_configure(tries);
        match UsbLink::open_board_with(board, cfg, configure).await {
            Ok(l) => return Ok(l),
            Err(e @ UsbError::PermissionDenied { .. }) => return Err(e),
            Err(e) if tries + 1 >= OPEN_QUICK_TRIES => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, tries, "open failed; retrying");
                tries += 1;
                tokio::time::sleep(OPEN_QUICK_DELAY).await;
            }
        }
    }
}

enum Served {
    /// The driver is gone.
    Ended,
    /// The link failed; `reopen` after what delay to open the board again when it is still
    /// attached, `None` when it was unplugged (wait for it to arrive again).
    Down {
        reason: String,
        reopen: Option<Duration>,
    },
}

/// Moves bundles both ways until the board goes away or the driver stops.
///
/// The hotplug watch is read meanwhile: the board's own removal ends the link at once, whatever
/// state its transfers are in (a transfer pending across an unplug must not be what notices it),
/// and other boards' events are kept in `deferred` for after this one.
async fn serve(
    link: UsbLink,
    cfg: UsbConfig,
    events: &mpsc::Sender<LinkEvent>,
    watch: &mut BoardWatch,
    id: crate::usb::DeviceId,
    deferred: &mut Vec<(BoardEvent, EventSource)>,
) -> Served {
    let info = link.info().clone();
    let iface = link.interface();
    let description = format!(
        "usb {} {}-speed{}",
        info.bus_path,
        info.speed.unwrap_or("?"),
        info.serial
            .as_deref()
            .map(|s| format!(" serial {s}"))
            .unwrap_or_default()
    );
    let (mut rx, mut tx) = link.split();
    let (btx, mut brx) = mpsc::channel::<Vec<u8>>(cfg.out_depth.max(1));
    let pool = BufPool::default();
    let up = LinkUp {
        framing: Framing::Usb {
            max_packet_size: iface.out_max_packet,
        },
        tx: btx,
        pool: pool.clone(),
        description: description.clone(),
    };
    tracing::info!(
        link = %description,
        in_flight_in = rx.in_flight(),
        out_depth = cfg.out_depth,
        mps = iface.out_max_packet,
        "serving board"
    );
    if events.send(LinkEvent::Up(up)).await.is_err() {
        return Served::Ended;
    }
    let reader = async {
        loop {
            let b = rx.recv_bundle().await?;
            if events.send(LinkEvent::Bundle(pool.copy(b))).await.is_err() {
                return Ok(false);
            }
        }
    };
    let writer = async {
        while let Some(b) = brx.recv().await {
            tx.send_bundle(&b).await?;
            pool.put(b);
        }
        Ok::<bool, UsbError>(false)
    };
    let unplugged = removal(watch, id, deferred);
    let res = tokio::select! {
        r = reader => r,
        r = writer => r,
        via = unplugged => {
            return Served::Down {
                reason: format!("the board at {} was unplugged (seen via {via})", info.bus_path),
                reopen: None,
            };
        }
    };
    match res {
        // The writer ended with the driver still there: it dropped the link because the board's
        // session timed out. Reopen the board rather than hold a silent one.
        Ok(_) if !events.is_closed() => Served::Down {
            reason: format!(
                "the board at {} went silent (its session timed out)",
                info.bus_path
            ),
            reopen: Some(REOPEN_DELAY),
        },
        Ok(_) => Served::Ended,
        Err(e) if e.is_disconnect() => {
            // Unplugged, or only reset/reconfigured (the kernel kills the transfers of an
            // interface it rebinds): the removal event tells them apart. Without one the board is
            // still there, and waiting for its arrival would wait forever.
            let gone = removed(watch, id, deferred).await;
            Served::Down {
                reopen: (!gone).then_some(REOPEN_DELAY),
                reason: e.to_string(),
            }
        }
        Err(e) => Served::Down {
            reopen: Some(OPEN_SLOW_DELAY),
            reason: e.to_string(),
        },
    }
}

/// Waits for the OS's removal event of board `id` and returns what noticed it; other boards'
/// events seen meanwhile go to `deferred`.
async fn removal(
    watch: &mut BoardWatch,
    id: crate::usb::DeviceId,
    deferred: &mut Vec<(BoardEvent, EventSource)>,
) -> EventSource {
    loop {
        match watch.next_with_source().await {
            Ok((BoardEvent::Left { id: left, .. }, via)) if left == id => return via,
            Ok(ev) => deferred.push(ev),
            Err(e) => {
                tracing::debug!(error = %e, "USB rescan failed while watching for the board's removal");
                tokio::time::sleep(OPEN_SLOW_DELAY).await;
            }
        }
    }
}

/// Whether the OS reports the removal of board `id` within [`REMOVAL_GRACE`] (see [`removal`]).
async fn removed(
    watch: &mut BoardWatch,
    id: crate::usb::DeviceId,
    deferred: &mut Vec<(BoardEvent, EventSource)>,
) -> bool {
    tokio::time::timeout(REMOVAL_GRACE, removal(watch, id, deferred))
        .await
        .is_ok()
}
