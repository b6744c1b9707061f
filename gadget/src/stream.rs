//! I/O: stream links (`--link tcp://…`, `unix-listen://…`, `stdio`, …) on the same bundle framing,
//! with reconnect / re-accept on loss. URL parsing and the byte-stream plumbing come from the shared
//! `qbkit-link` crate, so the host accepts exactly the same syntax.
//!
//! Data flow: [`run`] loops forever: connect (or accept) → [`LinkEvent::Up`] with a bounded sender
//! for outgoing bundles → bundles read from the stream as [`LinkEvent::Bundle`] → on EOF or error
//! [`LinkEvent::Down`] → reconnect with capped exponential backoff.

use bytes::BytesMut;
use qbkit_link::auth::LinkKey;
use qbkit_link::{Connector, LinkError, LinkUrl};
use tokio::sync::mpsc;

use crate::pump::Transport;

/// Bundles queued to a stream writer: the "transfers in flight" of a stream link. While they are
/// all queued, the pump aggregates.
pub const STREAM_TX_DEPTH: usize = 2;

/// Which link the daemon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSpec {
    /// The USB FunctionFS interface (default).
    FunctionFs,
    /// A stream link.
    Stream(LinkUrl),
}

impl LinkSpec {
    /// Every form `--link` accepts: the one list `run --help` and parse errors show.
    pub fn forms() -> Vec<&'static str> {
        std::iter::once("functionfs")
            .chain(LinkUrl::FORMS)
            .collect()
    }

    /// The `--link` help text, built from [`forms`](Self::forms).
    pub fn help() -> String {
        format!(
            "The link to the host: functionfs (the USB gadget; default) or a stream link. One of: {}",
            Self::forms().join(", ")
        )
    }

    /// Parses `functionfs` or a stream link URL.
    pub fn parse(s: &str) -> Result<Self, LinkSpecError> {
        if s == "functionfs" || s == "ffs" || s == "usb" {
            Ok(Self::FunctionFs)
        } else {
            match LinkUrl::parse(s) {
                Ok(u) => Ok(Self::Stream(u)),
                Err(LinkError::BadUrl { url, reason }) => Err(LinkSpecError { url, reason }),
                Err(_) => Err(LinkSpecError {
                    url: s.to_owned(),
                    reason: "not a link",
                }),
            }
        }
    }
}

/// A `--link` value that does not parse; the message lists every accepted form.
#[derive(Debug, thiserror::Error)]
#[error("invalid link {url:?}: {reason}; expected one of: {}", LinkSpec::forms().join(", "))]
pub struct LinkSpecError {
    /// The text given.
    pub url: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl std::fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FunctionFs => f.write_str("functionfs"),
            Self::Stream(u) => u.fmt(f),
        }
    }
}

/// What a link task reports to the driver.
#[derive(Debug)]
pub enum LinkEvent {
    /// A link is attached; send bundles through `tx`.
    Up {
        /// How transfers are delimited.
        transport: Transport,
        /// Outgoing bundles; capacity = transfers in flight.
        tx: mpsc::Sender<Vec<u8>>,
    },
    /// A received bundle (one transfer).
    Bundle(BytesMut),
    /// The link is gone.
    Down {
        /// True when the stream carried bytes that are not qbkit framing.
        framing_error: bool,
    },
}

/// Runs a stream link forever (returns only when `events` is closed or stdio ended). With `key`,
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
    while let Some(stream) = conn.connect_retrying(|_| {}).await {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(STREAM_TX_DEPTH);
        if events
            .send(LinkEvent::Up {
                transport: Transport::Stream,
                tx,
            })
            .await
            .is_err()
        {
            return;
        }
        let res = qbkit_link::pump(stream, max_bundle, rx, &events, |b| {
            LinkEvent::Bundle(BytesMut::from(b))
        })
        .await;
        let framing_error = matches!(res, Err(LinkError::Frame(_)));
        conn.ended(&res).await;
        if events
            .send(LinkEvent::Down { framing_error })
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_spec_parses_every_form() {
        assert_eq!(LinkSpec::parse("functionfs").unwrap(), LinkSpec::FunctionFs);
        for s in qbkit_link::testing::URLS {
            let l = LinkSpec::parse(s).unwrap();
            assert_eq!(l.to_string(), s);
        }
        for bad in qbkit_link::testing::BAD_URLS {
            assert!(LinkSpec::parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
