//! The local control socket (`/run/qbkit-gadget.sock`): `qbkit-gadget status` and `teardown` talk
//! to the running daemon through it, in the shape both programs share
//! ([`qbkit_link::control`]: one request line, `{"op":"status"}` or the bare word, one JSON
//! reply; accept errors counted and backed off).
//!
//! Data flow: [`serve`] binds the socket and runs the accept loop, which hands each request with
//! its client to the driver loop; the loop owns the state and answers from it ([`Status`], whose
//! `link` part has the same fields as `qbkit-host status`'s); the clients are [`request`].

use std::collections::BTreeMap;
use std::path::Path;

use qbkit_link::control::{self as shape, LinkStatus, UnixControlListener};
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// A request from a client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Report state and counters.
    #[default]
    Status,
    /// Remove the gadget and exit.
    Teardown,
}

/// A request with the client to answer.
pub type Pending = shape::Incoming<Request, UnixStream>;

/// What `status` reports. `version`, `pid`, `uptime_s`, `transport` and `link` are the fields of
/// `qbkit-host status` of the same names; the rest is the board's network interface.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Daemon version.
    pub version: String,
    /// Process id of the daemon.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_s: f64,
    /// The configured link (`functionfs` or a URL).
    pub transport: String,
    /// The attached link (`description`: its framing) and the session on it.
    pub link: LinkStatus,
    /// TUN device.
    pub tun: String,
    /// TUN carrier.
    pub carrier: bool,
    /// Why the carrier is kept off although the link is up: the host's LinkConfig was refused.
    #[serde(default)]
    pub refused: Option<String>,
    /// MTU applied to the TUN device (LinkConfig after static overrides).
    pub mtu: Option<u32>,
    /// Applied address (after static overrides).
    pub address: Option<String>,
    /// Applied IPv4 gateway.
    pub gateway: Option<String>,
    /// Applied DNS servers.
    pub dns: Vec<String>,
    /// Pump, session and control-socket counters, by name.
    pub counters: BTreeMap<String, u64>,
}

/// Binds the socket (replacing a stale one) and forwards requests to `to_driver`.
pub fn serve(path: &Path, to_driver: mpsc::Sender<Pending>) -> std::io::Result<()> {
    let listener = UnixControlListener::bind(
        path,
        "another qbkit-gadget is serving this control socket (use --control-socket)",
    )?;
    shape::serve(listener, to_driver);
    Ok(())
}

/// Client side: sends `req` and returns the reply.
pub async fn request(path: &Path, req: Request) -> std::io::Result<String> {
    shape::exchange(UnixStream::connect(path).await?, &req).await
}
