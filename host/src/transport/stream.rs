//! Stream links (`--transport tcp://…`, `unix-listen://…`, `stdio`, `exec:…`): the same bundle
//! framing on any byte stream, with reconnect / re-accept on loss. URL parsing and the byte-stream
//! plumbing come from the shared `qbkit-link` crate, so host and gadget accept the same syntax.
//!
//! Data flow: [`run`] loops forever: connect (or accept) → [`LinkEvent::Up`] with a sender of
//! depth [`STREAM_TX_DEPTH`] → bundles read from the stream as [`LinkEvent::Bundle`] while a
//! writer drains the sender → on EOF or error [`LinkEvent::Down`] → reconnect with capped
//! exponential backoff. Reading stops while the driver's event channel is full (backpressure
//! onto the stream, and from there onto the board).

use std::time::Duration;

use qbkit_link::{BundleReader, Connector, LinkError, LinkUrl, write_bundle};
use tokio::sync::mpsc;

use super::{Framing, LinkEvent, LinkUp};

/// Bundles queued to a stream writer: the "transfers in flight" of a stream link. Two keep the
/// socket busy while the driver builds the next bundle; more only add latency.
pub const STREAM_TX_DEPTH: usize = 2;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs a stream link until `events` is closed or a one-shot link (stdio) ended.
pub async fn run(url: LinkUrl, max_bundle: usize, events: mpsc::Sender<LinkEvent>) {
    let mut conn = Connector::new(url);
    if let Err(e) = conn.bind().await {
        tracing::error!(error = %e, "stream link cannot listen");
        return;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let (r, mut w) = match conn.connect().await {
            Ok(s) => s,
            Err(LinkError::Exhausted(what)) => {
                tracing::info!(what, "stream link ended and cannot reconnect");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "stream link connect failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        tracing::info!(link = %conn.url(), "stream link connected");
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_TX_DEPTH);
        let up = LinkUp {
            framing: Framing::Stream,
            tx,
            description: conn.url().to_string(),
        };
        if events.send(LinkEvent::Up(up)).await.is_err() {
            return;
        }
        let mut reader = BundleReader::new(r, max_bundle);
        let writer = async {
            while let Some(b) = rx.recv().await {
                write_bundle(&mut w, &b).await?;
            }
            Ok::<(), LinkError>(())
        };
        let read = async {
            loop {
                match reader.next().await? {
                    Some(b) => {
                        if events.send(LinkEvent::Bundle(b.to_vec())).await.is_err() {
                            return Ok(());
                        }
                    }
                    None => return Ok(()),
                }
            }
        };
        let res = tokio::select! {
            r = writer => r,
            r = read => r,
        };
        let reason = match res {
            Ok(()) => "closed by the peer".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::info!(%reason, "stream link down");
        if events.send(LinkEvent::Down { reason }).await.is_err() {
            return;
        }
    }
}
