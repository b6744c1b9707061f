//! The local control socket (`/run/qbkit-gadget.sock`): `qbkit-gadget status` and `teardown` talk
//! to the running daemon through it. One request line (`status` or `teardown`), one JSON reply line.
//!
//! Data flow: [`serve`] accepts connections and forwards each request with a reply channel to the
//! driver loop, which owns the state and answers from it; the clients are [`request`]. A failing
//! `accept()` (EMFILE: out of descriptors) is counted ([`ACCEPT_ERRORS`], `status`'s
//! `control_accept_errors`) and waits a backoff (10 ms doubling to 1 s, logged once per change)
//! before the next try, instead of retrying at once while the client waits in the backlog.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use qbkit_link::Backoff;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// A request from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Report state and counters.
    Status,
    /// Remove the gadget and exit.
    Teardown,
}

/// A request with the channel for its JSON reply.
pub type Pending = (Request, oneshot::Sender<String>);

/// What `status` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Daemon version.
    pub version: String,
    /// The link (`functionfs` or a URL).
    pub link: String,
    /// TUN device.
    pub tun: String,
    /// Session state: connecting, up, down (the same name as in `qbkit-host status`).
    pub session: String,
    /// TUN carrier.
    pub carrier: bool,
    /// Why the carrier is kept off although the link is up: the host's LinkConfig was refused.
    #[serde(default)]
    pub refused: Option<String>,
    /// Transport of the attached link, if any.
    pub transport: Option<String>,
    /// Negotiated protocol version.
    pub protocol_version: Option<u8>,
    /// Negotiated max bundle size towards the host.
    pub max_bundle: Option<usize>,
    /// Largest packet the host accepts (negotiated in Hello).
    pub link_mtu: Option<u32>,
    /// MTU applied to the TUN device (LinkConfig after static overrides).
    pub mtu: Option<u32>,
    /// The host's identity.
    pub peer: Option<String>,
    /// Applied address (after static overrides).
    pub address: Option<String>,
    /// Applied IPv4 gateway.
    pub gateway: Option<String>,
    /// Applied DNS servers.
    pub dns: Vec<String>,
    /// Last keepalive round trip in µs.
    pub rtt_us: Option<u64>,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Pump and session counters, by name.
    pub counters: BTreeMap<String, u64>,
}

/// Failed `accept()`s of the control socket since start.
pub static ACCEPT_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Binds the socket (replacing a stale one) and forwards requests to `to_driver`.
pub fn serve(path: &Path, to_driver: mpsc::Sender<Pending>) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    tokio::spawn(async move {
        let mut backoff = Backoff::new(
            "control socket accept",
            Duration::from_millis(10),
            Duration::from_secs(1),
        );
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff.reset();
                    stream
                }
                Err(e) => {
                    ACCEPT_ERRORS.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff.failed(&e.to_string())).await;
                    continue;
                }
            };
            let to_driver = to_driver.clone();
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), handle(stream, to_driver)).await;
            });
        }
    });
    Ok(())
}

async fn handle(stream: UnixStream, to_driver: mpsc::Sender<Pending>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let req = match line.trim() {
        "status" => Request::Status,
        "teardown" => Request::Teardown,
        other => {
            w.write_all(format!("{{\"error\":\"unknown request {other:?}\"}}\n").as_bytes())
                .await?;
            return Ok(());
        }
    };
    let (tx, rx) = oneshot::channel();
    if to_driver.send((req, tx)).await.is_err() {
        return Ok(());
    }
    if let Ok(mut reply) = rx.await {
        reply.push('\n');
        w.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

/// Client side: sends `req` and returns the reply line.
pub async fn request(path: &Path, req: Request) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path).await?;
    let line = match req {
        Request::Status => "status\n",
        Request::Teardown => "teardown\n",
    };
    s.write_all(line.as_bytes()).await?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).await?;
    Ok(reply)
}
