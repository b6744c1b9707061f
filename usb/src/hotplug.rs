//! Watching boards come and go: hotplug events from the OS, with a slow rescan as a safety net and
//! as the only source where hotplug is unavailable.
//!
//! Data flow: `nusb::watch_devices()` (udev netlink on Linux, IOKit on macOS, CM notifications on
//! Windows) → filter → `known` set → [`BoardEvent`]s; every `rescan` period, or at once on the first
//! call, `nusb::list_devices` is diffed against `known` and the differences become the same events.
//! Each board is reported `Arrived` once per attachment and `Left` once, whatever the source.
//!
//! Bounds: `known` holds one entry per attached matching device; queued events are at most two per
//! device per call.
//!
//! Linux needs udevd (or a relay of kernel uevents in udev's format, as tests/vm runs) for hotplug
//! events; without them only the rescan notices changes. A board that vanishes while a link is
//! open is reported by the link itself ([`crate::UsbError::Disconnected`]), not only here.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_core::Stream;
use nusb::DeviceId;
use nusb::hotplug::{HotplugEvent, HotplugWatch};

use super::discover::{Board, BoardInfo, DeviceFilter};
use super::{UsbError, discover};

/// Rescan period while OS hotplug events work (a safety net for lost events).
pub const RESCAN_WITH_HOTPLUG: Duration = Duration::from_secs(10);
/// Rescan period where hotplug is unavailable.
pub const RESCAN_WITHOUT_HOTPLUG: Duration = Duration::from_secs(2);

/// A board came or went.
#[derive(Debug, Clone)]
#[cfg_attr(
    windows,
    expect(
        clippy::large_enum_variant,
        reason = "nusb's Windows DeviceInfo is large; a few events per plug, boxing buys nothing"
    )
)]
pub enum BoardEvent {
    /// A matching board is attached (reported for boards already present on the first call too).
    Arrived(Board),
    /// A board reported earlier is gone.
    Left {
        /// The attachment that ended.
        id: DeviceId,
        /// What it was.
        info: BoardInfo,
    },
}

/// What noticed a board event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    /// An OS hotplug notification.
    Hotplug,
    /// The periodic rescan (or the first scan at start).
    Rescan,
}

impl std::fmt::Display for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hotplug => "hotplug",
            Self::Rescan => "rescan",
        })
    }
}

/// Where the events came from (tests assert replugs are seen through hotplug, not the timer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Events that came from OS hotplug notifications.
    pub from_hotplug: u64,
    /// Events that came from a rescan.
    pub from_rescan: u64,
}

/// Yields [`BoardEvent`]s for boards matching a filter.
pub struct BoardWatch {
    filter: DeviceFilter,
    hotplug: Option<HotplugWatch>,
    known: HashMap<DeviceId, BoardInfo>,
    queue: VecDeque<(BoardEvent, EventSource)>,
    rescan: Duration,
    next_rescan: tokio::time::Instant,
    stats: WatchStats,
}

impl std::fmt::Debug for BoardWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoardWatch")
            .field("filter", &self.filter)
            .field("hotplug", &self.hotplug.is_some())
            .field("known", &self.known.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl BoardWatch {
    /// Starts watching. Falls back to rescanning every [`RESCAN_WITHOUT_HOTPLUG`] when the OS
    /// gives no hotplug events. Must be called inside a tokio runtime (for the rescan timer).
    pub fn new(filter: DeviceFilter) -> Self {
        let hotplug = match nusb::watch_devices() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "USB hotplug unavailable; rescanning every {RESCAN_WITHOUT_HOTPLUG:?}");
                None
            }
        };
        let rescan = if hotplug.is_some() {
            RESCAN_WITH_HOTPLUG
        } else {
            RESCAN_WITHOUT_HOTPLUG
        };
        Self::with_parts(filter, hotplug, rescan)
    }

    /// Like [`new`](Self::new) with an explicit rescan period (tests use a long one to prove that
    /// hotplug events alone drive reconnection).
    pub fn with_rescan(filter: DeviceFilter, rescan: Duration) -> Self {
        Self::with_parts(filter, nusb::watch_devices().ok(), rescan)
    }

    fn with_parts(filter: DeviceFilter, hotplug: Option<HotplugWatch>, rescan: Duration) -> Self {
        Self {
            filter,
            hotplug,
            known: HashMap::new(),
            queue: VecDeque::new(),
            rescan,
            next_rescan: tokio::time::Instant::now(),
            stats: WatchStats::default(),
        }
    }

    /// Whether OS hotplug events are in use.
    pub fn has_hotplug(&self) -> bool {
        self.hotplug.is_some()
    }

    /// Event counts by source.
    pub fn stats(&self) -> WatchStats {
        self.stats
    }

    /// Boards currently known to be attached.
    pub fn boards(&self) -> impl Iterator<Item = &BoardInfo> {
        self.known.values()
    }

    /// Puts events taken with [`next_with_source`](Self::next_with_source) back, in order, ahead
    /// of newer ones (the transport defers arrivals of other boards while it serves one).
    pub fn requeue(&mut self, events: impl IntoIterator<Item = (BoardEvent, EventSource)>) {
        let mut evs: Vec<_> = events.into_iter().collect();
        while let Some(ev) = evs.pop() {
            self.queue.push_front(ev);
        }
    }

    /// The next arrival or removal. Cancel-safe.
    pub async fn next(&mut self) -> Result<BoardEvent, UsbError> {
        self.next_with_source().await.map(|(ev, _)| ev)
    }

    /// The next arrival or removal and what noticed it. Cancel-safe.
    pub async fn next_with_source(&mut self) -> Result<(BoardEvent, EventSource), UsbError> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Ok(ev);
            }
            let hot = async {
                match self.hotplug.as_mut() {
                    Some(w) => {
                        std::future::poll_fn(|cx| std::pin::Pin::new(&mut *w).poll_next(cx)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = hot => {
                    if let Some(ev) = ev {
                        self.handle_hotplug(ev);
                    } else {
                        tracing::warn!("USB hotplug stream ended; rescanning every {RESCAN_WITHOUT_HOTPLUG:?}");
                        self.hotplug = None;
                        self.rescan = RESCAN_WITHOUT_HOTPLUG;
                    }
                }
                () = tokio::time::sleep_until(self.next_rescan) => {
                    self.next_rescan = tokio::time::Instant::now() + self.rescan;
                    self.rescan_now().await?;
                }
            }
        }
    }

    fn handle_hotplug(&mut self, ev: HotplugEvent) {
        match ev {
            HotplugEvent::Connected(d) => {
                if self.filter.matches(&d) && !self.known.contains_key(&d.id()) {
                    let board = Board::new(d);
                    self.known.insert(board.id(), board.info().clone());
                    self.stats.from_hotplug += 1;
                    self.queue
                        .push_back((BoardEvent::Arrived(board), EventSource::Hotplug));
                }
            }
            HotplugEvent::Disconnected(id) => {
                if let Some(info) = self.known.remove(&id) {
                    self.stats.from_hotplug += 1;
                    self.queue
                        .push_back((BoardEvent::Left { id, info }, EventSource::Hotplug));
                }
            }
        }
    }

    async fn rescan_now(&mut self) -> Result<(), UsbError> {
        let boards = discover::list_boards(&self.filter, false).await?;
        let present: Vec<DeviceId> = boards.iter().map(Board::id).collect();
        let gone: Vec<DeviceId> = self
            .known
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(info) = self.known.remove(&id) {
                self.stats.from_rescan += 1;
                self.queue
                    .push_back((BoardEvent::Left { id, info }, EventSource::Rescan));
            }
        }
        for board in boards {
            if let std::collections::hash_map::Entry::Vacant(e) = self.known.entry(board.id()) {
                e.insert(board.info().clone());
                self.stats.from_rescan += 1;
                self.queue
                    .push_back((BoardEvent::Arrived(board), EventSource::Rescan));
            }
        }
        Ok(())
    }
}
