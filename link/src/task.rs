//! The link task contract both programs share, and the stream link task itself.
//!
//! A link is "something that delivers received bundles and accepts bundles to send, and can be
//! lost and come back". Every link task (a stream link here; the board on USB, over USB/IP or
//! FunctionFS in the programs) reports [`LinkEvent`]s on one channel to its program's event loop,
//! which never knows which kind of link it talks to.
//!
//! Data flow: a link task sends [`LinkEvent::Up`] with a bounded sender for outgoing bundles (its
//! capacity is the number of transfers in flight: while they are all queued the event loop stops
//! building bundles, so packets aggregate into the next one and TCP feels the backpressure), then
//! one [`LinkEvent::Bundle`] per received bundle (one USB transfer, or one bundle cut from a
//! stream), then [`LinkEvent::Down`] when the link is lost (also when the program drops the sender:
//! the peer's session timed out); after a reconnect it starts over with
//! `Up`. Bundles are complete `shared_frame` bundles in both directions; [`LinkUp::framing`] says
//! how to finish them ([`shared_frame::BundleWriter::finish_for`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use shared_frame::Framing;
use tokio::sync::mpsc;

use crate::auth::LinkKey;
use crate::{Connector, LinkError, LinkUrl};

/// Bundles queued to a stream writer: the "transfers in flight" of a stream link. Two keep the
/// socket busy while the next bundle is built; more only add latency.
pub const STREAM_TX_DEPTH: usize = 2;

/// Bundle buffers that go round between a program's event loop and its link task instead of
/// being allocated (and zero-filled) per bundle: the event loop builds an outgoing bundle in
/// one it [`take`](Self::take)s, the link task [`put`](Self::put)s it back once written; a
/// received bundle is [`copy`](Self::copy)'d into one by the link task and put back by the event
/// loop once handled. Both sides are optional: a side that does not give buffers back only
/// costs allocations. Keeps at most [`BufPool::KEEP`] buffers; more are freed.
///
/// A 64 KiB bundle allocated per bundle is an `mmap`, a zero-fill and an `munmap` each time with
/// glibc's mmap threshold at 64 KiB (qbkit-host sets it there, see its platform module).
///
/// The pool shrinks back when traffic calms down: buffers that sat in it for a whole
/// [`BufPool::TRIM_PERIOD`] (the fewest it held during the period) are freed at the first `put`
/// after the period. A bulk transfer fills the pool to its transfers in flight; the link's
/// keepalives afterwards need one or two, so a quiet link keeps ~100 KiB instead of 1.2 MiB.
#[derive(Debug, Clone, Default)]
pub struct BufPool(Arc<Mutex<Pool>>);

#[derive(Debug, Default)]
struct Pool {
    bufs: Vec<Vec<u8>>,
    /// The fewest buffers the pool held since the period began.
    low: usize,
    /// When the current period ends (`None` before the first `put`).
    period_end: Option<Instant>,
}

impl BufPool {
    /// Most buffers kept: the transfers in flight both ways plus the one being built.
    pub const KEEP: usize = 16;
    /// Buffers unused for this long are freed.
    pub const TRIM_PERIOD: Duration = Duration::from_secs(1);

    /// A buffer from the pool (its contents are what it last held), or a new empty one.
    pub fn take(&self) -> Vec<u8> {
        let mut pool = self.lock();
        let buf = pool.bufs.pop().unwrap_or_default();
        pool.low = pool.low.min(pool.bufs.len());
        buf
    }

    /// Gives a buffer back (its contents stay; the next user overwrites them).
    pub fn put(&self, buf: Vec<u8>) {
        self.put_at(buf, Instant::now());
    }

    fn put_at(&self, buf: Vec<u8>, now: Instant) {
        let mut pool = self.lock();
        if pool.bufs.len() < Self::KEEP && buf.capacity() > 0 {
            pool.bufs.push(buf);
        }
        if pool.period_end.is_some_and(|end| now < end) {
            return;
        }
        // The oldest buffers (the bottom of the stack) are the ones that sat unused (`low` is 0
        // before the first period).
        let unused = pool.low.min(pool.bufs.len());
        let freed: Vec<Vec<u8>> = pool.bufs.drain(..unused).collect();
        pool.low = pool.bufs.len();
        pool.period_end = Some(now + Self::TRIM_PERIOD);
        drop(pool);
        drop(freed);
    }

    /// A buffer from the pool holding exactly `data`.
    pub fn copy(&self, data: &[u8]) -> Vec<u8> {
        let mut buf = self.take();
        buf.clear();
        buf.extend_from_slice(data);
        buf
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A link that just came up.
#[derive(Debug)]
pub struct LinkUp {
    /// How to finish bundles for it.
    pub framing: Framing,
    /// Outgoing bundles; capacity = transfers in flight.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// Where the link task takes the buffers of received bundles and gives back those it wrote
    /// (see [`BufPool`]).
    pub pool: BufPool,
    /// For logs and `status` (peer address and whether it proved the key, USB bus/port).
    pub description: String,
}

/// What a link task reports to its program's event loop.
#[derive(Debug)]
pub enum LinkEvent {
    /// A link is attached.
    Up(LinkUp),
    /// One received bundle.
    Bundle(Vec<u8>),
    /// A listening link is bound here (the real port of a port-0 listener), before any peer
    /// connected: `status` shows it.
    Listening {
        /// The link with its bound address, e.g. `tcp-listen://127.0.0.1:36703`.
        url: String,
    },
    /// The link is gone (a new `Up` may follow).
    Down {
        /// Why, for logs and `status`.
        reason: String,
        /// True when the peer sent bytes that are not qbkit framing (counted by the board).
        framing_error: bool,
    },
    /// An attempt to establish the link failed before `Up`; the link task retries after a
    /// backoff (and has logged the reason once per change).
    Failed {
        /// Why, for `status`.
        reason: String,
    },
}

impl LinkEvent {
    /// A `Down` that is not a framing error.
    pub fn down(reason: impl Into<String>) -> Self {
        Self::Down {
            reason: reason.into(),
            framing_error: false,
        }
    }
}

/// Runs a stream link until `events` is closed or a one-shot link (stdio) ended: bind (a listener
/// reports [`LinkEvent::Listening`]), then connect or accept with capped exponential backoff
/// ([`crate::Backoff`]: also after a stream that ended at once, as `exec:false` does; a failed dial
/// is reported as [`LinkEvent::Failed`]) → `Up` with a sender of depth [`STREAM_TX_DEPTH`] →
/// bundles both ways ([`crate::pump`]; reading stops while `events` is full: backpressure onto
/// the stream) → `Down` on EOF or error → again.
/// With `key`, every stream is authenticated before `Up` (see [`crate::auth`]).
pub async fn run_stream(
    url: LinkUrl,
    key: Option<LinkKey>,
    max_bundle: usize,
    events: mpsc::Sender<LinkEvent>,
) {
    let Some(mut conn) = bound_connector(url, key).await else {
        return;
    };
    let bound = conn.bound_url();
    if bound.is_listener()
        && events
            .send(LinkEvent::Listening {
                url: bound.to_string(),
            })
            .await
            .is_err()
    {
        return;
    }
    // A failed dial never reached `Up`: the event loop hears of it for `status` (best effort; the
    // channel has room while no link is up).
    let failed = |reason: &str| {
        let _ = events.try_send(LinkEvent::Failed {
            reason: reason.to_owned(),
        });
    };
    while let Some(stream) = conn.connect_retrying(failed).await {
        let Some(res) = serve_stream(stream, conn.describe(), max_bundle, &events).await else {
            return;
        };
        let framing_error = matches!(res, Err(LinkError::Frame(_)));
        let reason = conn.ended(&res).await;
        if events
            .send(LinkEvent::Down {
                reason,
                framing_error,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A connector for `url`, its listener bound; `None` (logged) when it cannot start or listen.
async fn bound_connector(url: LinkUrl, key: Option<LinkKey>) -> Option<Connector> {
    let mut conn = Connector::with_key(url, key)
        .inspect_err(|e| tracing::error!(error = %e, "stream link cannot start"))
        .ok()?;
    if let Err(e) = conn.bind().await {
        tracing::error!(error = %e, "stream link cannot listen");
        return None;
    }
    Some(conn)
}

/// Runs one connected stream: `Up` with a sender of depth [`STREAM_TX_DEPTH`], then bundles both
/// ways until it ends. Returns how it ended (`PeerSilent` when the program dropped the link's
/// sender: the peer's session timed out), or `None` when `events` is closed.
async fn serve_stream(
    stream: (crate::LinkRead, crate::LinkWrite),
    description: String,
    max_bundle: usize,
    events: &mpsc::Sender<LinkEvent>,
) -> Option<Result<(), LinkError>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(STREAM_TX_DEPTH);
    let program_side = tx.downgrade();
    let pool = BufPool::default();
    let up = LinkUp {
        framing: Framing::Stream,
        tx,
        pool: pool.clone(),
        description,
    };
    events.send(LinkEvent::Up(up)).await.ok()?;
    let res = crate::pump(stream, max_bundle, rx, &pool, events, |b| {
        LinkEvent::Bundle(pool.copy(b))
    })
    .await;
    Some(match res {
        Ok(()) if program_side.upgrade().is_none() => Err(LinkError::PeerSilent),
        r => r,
    })
}

/// Serves every peer of a listening link at once (`tcp-listen://`, `unix-listen://` on a host
/// that serves several boards): bind (reporting the bound URL to `listening`), then accept (and,
/// with `key`, authenticate) peers one after another, with backoff after accept errors; each
/// accepted stream runs in a task of its own on the event channel `attach` gives it: `Up`, bundles
/// both ways, `Down` when it ends, then the guard `attach` returned with the channel is dropped
/// (it marks the channel's owner free for the next peer). Ends when the listener cannot bind or
/// `attach` returns `None` (the program is stopping).
pub async fn run_listener<A, F, G>(
    url: LinkUrl,
    key: Option<LinkKey>,
    max_bundle: usize,
    listening: impl FnOnce(String),
    mut attach: A,
) where
    A: FnMut() -> F,
    F: Future<Output = Option<(mpsc::Sender<LinkEvent>, G)>>,
    G: Send + 'static,
{
    let Some(mut conn) = bound_connector(url, key).await else {
        return;
    };
    listening(conn.bound_url().to_string());
    while let Some(stream) = conn.connect_retrying(|_| ()).await {
        let description = conn.describe();
        let Some((events, guard)) = attach().await else {
            return;
        };
        tokio::spawn(async move {
            let Some(res) = serve_stream(stream, description.clone(), max_bundle, &events).await
            else {
                return;
            };
            let reason = match &res {
                Ok(()) => "closed by the peer".to_owned(),
                Err(e) => e.to_string(),
            };
            tracing::info!(link = %description, %reason, "stream link down");
            let down = LinkEvent::Down {
                reason,
                framing_error: matches!(res, Err(LinkError::Frame(_))),
            };
            let _ = events.send(down).await;
            drop(guard);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(pool: &BufPool) -> usize {
        pool.lock().bufs.len()
    }

    /// A burst fills the pool; once only a keepalive goes round, two periods later one buffer is
    /// left. A pool in steady use keeps what it needs.
    #[test]
    fn the_pool_frees_the_buffers_a_quiet_link_no_longer_needs() {
        let pool = BufPool::default();
        let t0 = Instant::now();
        let burst: Vec<Vec<u8>> = (0..10).map(|_| vec![0u8; 70_000]).collect();
        for b in burst {
            pool.put_at(b, t0);
        }
        assert_eq!(held(&pool), 10);
        let mut t = t0;
        for _ in 0..3 {
            t += BufPool::TRIM_PERIOD + Duration::from_millis(1);
            let b = pool.take();
            assert_eq!(b.capacity(), 70_000, "a pooled buffer, not a new one");
            pool.put_at(b, t);
        }
        assert_eq!(held(&pool), 1, "only the keepalive's buffer stays");

        // Four in flight at all times, across many periods: none freed, none allocated.
        let busy = BufPool::default();
        for _ in 0..4 {
            busy.put_at(vec![0u8; 70_000], t0);
        }
        let mut t = t0;
        for _ in 0..50 {
            t += Duration::from_millis(100);
            let bufs: Vec<Vec<u8>> = (0..4).map(|_| busy.take()).collect();
            assert!(bufs.iter().all(|b| b.capacity() == 70_000), "all pooled");
            for b in bufs {
                busy.put_at(b, t);
            }
        }
        assert_eq!(held(&busy), 4);
    }
}
