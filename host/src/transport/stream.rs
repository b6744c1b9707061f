//! Stream links (`--transport tcp://…`, `unix-listen://…`, `stdio`, `exec:…`): the same bundle
//! framing on any byte stream, with reconnect / re-accept on loss. URL parsing and the byte-stream
//! plumbing come from the shared `qbkit-link` crate, so host and gadget accept the same syntax.
//!
//! Data flow: [`run`] loops forever: connect (or accept) → [`LinkEvent::Up`] with a sender of
//! depth [`STREAM_TX_DEPTH`] → bundles read from the stream as [`LinkEvent::Bundle`] while a
//! writer drains the sender → on EOF or error [`LinkEvent::Down`] → reconnect with capped
//! exponential backoff (`qbkit_link::Backoff`: also after a stream that ended at once, as
//! `exec:false` does; a failed dial is reported as [`LinkEvent::Failed`]). Reading stops while
//! the driver's event channel is full (backpressure onto the stream, and from there onto the
//! board).

use qbkit_link::auth::LinkKey;
use qbkit_link::{Connector, LinkUrl};
use tokio::sync::mpsc;

use super::{Framing, LinkEvent, LinkUp};

/// Bundles queued to a stream writer: the "transfers in flight" of a stream link. Two keep the
/// socket busy while the driver builds the next bundle; more only add latency.
pub const STREAM_TX_DEPTH: usize = 2;

/// Runs a stream link until `events` is closed or a one-shot link (stdio) ended. With `key`,
/// every stream is authenticated before `Up` (see `qbkit_link::auth`).
pub async fn run(
    url: LinkUrl,
    key: Option<LinkKey>,
    max_bundle: usize,
    events: mpsc::Sender<LinkEvent>,
) {
    let Ok(mut conn) = Connector::with_key(url, key)
        .inspect_err(|e| tracing::error!(error = %e, "stream link cannot start"))
    else {
        return;
    };
    if let Err(e) = conn.bind().await {
        tracing::error!(error = %e, "stream link cannot listen");
        return;
    }
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
    // A failed dial never reached `Up`: the driver hears of it for `status` (best effort; the
    // channel has room while no link is up).
    let failed = |reason: &str| {
        let _ = events.try_send(LinkEvent::Failed {
            reason: reason.to_owned(),
        });
    };
    while let Some(stream) = conn.connect_retrying(failed).await {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(STREAM_TX_DEPTH);
        let up = LinkUp {
            framing: Framing::Stream,
            tx,
            // The real port of a port-0 listener, the peer and whether it proved the key.
            description: conn.describe(),
        };
        if events.send(LinkEvent::Up(up)).await.is_err() {
            return;
        }
        let res = qbkit_link::pump(stream, max_bundle, rx, &events, |b| {
            LinkEvent::Bundle(b.to_vec())
        })
        .await;
        let reason = conn.ended(&res).await;
        if events.send(LinkEvent::Down { reason }).await.is_err() {
            return;
        }
    }
}
