//! Keeps the gateway's upstream resolvers in step with the laptop's: a laptop that moves from
//! home Wi-Fi to a VPN changes its resolvers, and the board's DNS must follow.
//!
//! # Theory of operation
//!
//! [`spawn`] starts a task that re-reads [`platform::dns_servers`] whenever the system's
//! configuration may have changed and publishes each *different*, non-empty list on a `watch`
//! channel; the driver hands it to `Nat::set_dns_servers`, which moves waiting queries.
//!
//! - Linux: inotify on /etc/resolv.conf itself (in-place writes, and the bind mount
//!   `ip netns exec` puts there), on its directory (replacement by rename, a new symlink), on the
//!   directory of the file it links to (systemd-resolved, NetworkManager and resolvconf rewrite
//!   theirs by rename under /run), and on /run/systemd/resolve (the upstreams behind resolved's
//!   127.0.0.53 stub). Watches are re-added after every change, so a replaced file or a moved
//!   symlink is followed. A write is acted on when it is complete (`IN_CLOSE_WRITE`, `IN_MOVED_TO`).
//! - Elsewhere (macOS, Windows): a re-read every [`POLL_INTERVAL`].
//!
//! `--dns` pins the resolvers: no task is started. An empty list (a laptop offline for a moment)
//! keeps the previous one; read errors keep it too. Changes are logged at info level (they are
//! rare); errors at most once per [`ERROR_LOG_INTERVAL`]. Counters: [`COUNTERS`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::platform;

/// How often the resolvers are re-read where no change notification is used.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// At most one log line per this interval for failed re-reads.
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_mins(1);

/// Counters of the resolver watch (shown by `status`).
#[derive(Debug)]
pub struct DnsWatchCounters {
    /// The watch runs (false: `--dns` pinned the resolvers, or it could not start).
    pub watching: AtomicBool,
    /// Re-reads of the system's resolvers.
    pub rereads: AtomicU64,
    /// Re-reads that gave a different list (published to the NAT).
    pub changes: AtomicU64,
    /// Re-reads that failed or gave no resolver (the previous list stays).
    pub errors: AtomicU64,
}

/// The counters of this process.
pub static COUNTERS: DnsWatchCounters = DnsWatchCounters {
    watching: AtomicBool::new(false),
    rereads: AtomicU64::new(0),
    changes: AtomicU64::new(0),
    errors: AtomicU64::new(0),
};

/// What a re-read decides, given the list in force (pure; see [`Tracker::update`]).
#[derive(Debug, Default)]
pub struct Tracker {
    current: Vec<SocketAddr>,
    last_error_log: Option<std::time::Instant>,
}

impl Tracker {
    /// A tracker starting from the list in force.
    pub fn new(current: Vec<SocketAddr>) -> Self {
        Self {
            current,
            last_error_log: None,
        }
    }

    /// Takes one re-read; returns the list to publish when it differs from the one in force
    /// and is not empty. Counts and logs.
    pub fn update(&mut self, read: io::Result<Vec<SocketAddr>>) -> Option<Vec<SocketAddr>> {
        COUNTERS.rereads.fetch_add(1, Ordering::Relaxed);
        let servers = match read {
            Ok(s) if !s.is_empty() => s,
            Ok(_) => {
                self.error(
                    "the system lists no DNS resolver; keeping the previous ones",
                    None,
                );
                return None;
            }
            Err(e) => {
                self.error(
                    "cannot re-read the system's DNS resolvers; keeping the previous ones",
                    Some(&e),
                );
                return None;
            }
        };
        if servers == self.current {
            return None;
        }
        COUNTERS.changes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(from = ?self.current, to = ?servers, "the system's DNS resolvers changed; the board follows");
        self.current.clone_from(&servers);
        Some(servers)
    }

    fn error(&mut self, msg: &'static str, e: Option<&io::Error>) {
        COUNTERS.errors.fetch_add(1, Ordering::Relaxed);
        let now = std::time::Instant::now();
        if self
            .last_error_log
            .is_none_or(|t| now.duration_since(t) >= ERROR_LOG_INTERVAL)
        {
            self.last_error_log = Some(now);
            if let Some(e) = e {
                tracing::warn!(error = %e, "{msg}");
            } else {
                tracing::warn!("{msg}");
            }
        }
    }
}

/// Starts watching the system's resolvers (see the module docs) on the current tokio runtime;
/// `initial` is the list in force. Returns the channel the driver reads; the task ends when it
/// is dropped.
pub fn spawn(initial: Vec<SocketAddr>) -> watch::Receiver<Vec<SocketAddr>> {
    let (tx, rx) = watch::channel(initial.clone());
    let tracker = Tracker::new(initial);
    #[cfg(target_os = "linux")]
    {
        match linux::Watcher::new() {
            Ok(w) => {
                tokio::spawn(linux::run(w, tracker, tx));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch /etc/resolv.conf; re-reading it every {POLL_INTERVAL:?} instead");
                tokio::spawn(poll(tracker, tx));
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    tokio::spawn(poll(tracker, tx));
    COUNTERS.watching.store(true, Ordering::Relaxed);
    rx
}

/// Re-reads every [`POLL_INTERVAL`] until the driver is gone.
async fn poll(mut tracker: Tracker, tx: watch::Sender<Vec<SocketAddr>>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(s) = tracker.update(platform::dns_servers())
            && tx.send(s).is_err()
        {
            return;
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::pin::Pin;

    use futures_core::Stream;
    use inotify::{EventOwned, EventStream, Inotify, WatchMask, Watches};
    use tokio::sync::watch;

    use super::Tracker;
    use crate::platform;

    const RESOLV_CONF: &str = "/etc/resolv.conf";
    const RESOLVED_DIR: &str = "/run/systemd/resolve";

    pub(super) struct Watcher {
        watches: Watches,
        events: EventStream<[u8; 4096]>,
    }

    impl Watcher {
        pub(super) fn new() -> io::Result<Self> {
            let inotify = Inotify::init()?;
            let mut w = Self {
                watches: inotify.watches(),
                events: inotify.into_event_stream([0u8; 4096])?,
            };
            w.rewatch();
            Ok(w)
        }

        /// (Re-)adds every watch; paths that do not exist (yet) are skipped. Adding a watch
        /// that exists only refreshes it.
        fn rewatch(&mut self) {
            let file_mask = WatchMask::CLOSE_WRITE
                | WatchMask::ATTRIB
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF;
            let dir_mask = WatchMask::CLOSE_WRITE
                | WatchMask::CREATE
                | WatchMask::MOVED_TO
                | WatchMask::DELETE
                | WatchMask::ONLYDIR;
            let _ = self.watches.add(RESOLV_CONF, file_mask);
            for dir in watched_dirs() {
                let _ = self.watches.add(&dir, dir_mask);
            }
        }

        async fn next(&mut self) -> Option<io::Result<EventOwned>> {
            std::future::poll_fn(|cx| Pin::new(&mut self.events).poll_next(cx)).await
        }
    }

    /// /etc, the directory of the file /etc/resolv.conf links to, and resolved's directory.
    fn watched_dirs() -> Vec<PathBuf> {
        let mut dirs = vec![PathBuf::from("/etc"), PathBuf::from(RESOLVED_DIR)];
        if let Ok(target) = std::fs::canonicalize(RESOLV_CONF)
            && let Some(parent) = target.parent()
            && !dirs.iter().any(|d| d == parent)
        {
            dirs.push(parent.to_path_buf());
        }
        dirs.retain(|d| Path::new(d).is_dir());
        dirs
    }

    /// Whether an event concerns a file the resolvers come from: any event on the watched
    /// file itself (no name), and in the directories resolv.conf and the files resolved,
    /// NetworkManager and resolvconf keep (`*resolv.conf`).
    fn relevant(e: &EventOwned) -> bool {
        e.name
            .as_ref()
            .is_none_or(|n| n.to_string_lossy().ends_with("resolv.conf"))
    }

    pub(super) async fn run(
        mut w: Watcher,
        mut tracker: Tracker,
        tx: watch::Sender<Vec<SocketAddr>>,
    ) {
        loop {
            let ev = tokio::select! {
                ev = w.next() => ev,
                () = tx.closed() => return,
            };
            match ev {
                Some(Ok(e)) if relevant(&e) => {}
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "resolv.conf watch failed; the resolvers stay as they are");
                    return;
                }
                None => return,
            }
            w.rewatch();
            if let Some(s) = tracker.update(platform::dns_servers())
                && tx.send(s).is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_different_non_empty_lists_are_published() {
        let mut t = Tracker::new(vec![sa("192.0.2.1:53")]);
        assert_eq!(t.update(Ok(vec![sa("192.0.2.1:53")])), None, "unchanged");
        assert_eq!(t.update(Ok(vec![])), None, "empty keeps the old list");
        assert_eq!(
            t.update(Err(io::Error::from(io::ErrorKind::NotFound))),
            None,
            "an error keeps the old list"
        );
        let new = vec![sa("198.51.100.53:53"), sa("192.0.2.1:53")];
        assert_eq!(t.update(Ok(new.clone())), Some(new.clone()));
        assert_eq!(t.update(Ok(new)), None, "published once");
        assert!(COUNTERS.rereads.load(Ordering::Relaxed) >= 5);
        assert!(COUNTERS.errors.load(Ordering::Relaxed) >= 2);
    }
}
