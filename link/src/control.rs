//! The control channel both programs serve (`qbkit-gadget status`/`teardown`, `qbkit-host
//! status`/`forward`/`connect`): one shape, one request line in, one JSON document out, and the
//! link part of both `status` documents ([`LinkStatus`], the same field names on both sides).
//!
//! Protocol: a client connects and writes one line, a JSON request tagged by `op`
//! (`{"op":"status"}`); a bare word is the request of that name without arguments (`status`,
//! `teardown`: what a shell and `socat` send), and an empty line or a half-close without a line is
//! the program's default request (the status). The daemon answers with one JSON document and
//! closes; a request that does not parse gets `{"ok":false,"error":…}` at once.
//!
//! Data flow: [`serve`] runs the accept loop in a task of its own; each client gets a small task
//! that reads its line (at most [`MAX_REQUEST`] bytes within [`CLIENT_TIMEOUT`]) and hands the
//! parsed request with the client's stream ([`Incoming`]) to the program's event loop, which owns
//! the state and answers through [`reply`] (another small task: a slow client never stalls the
//! loop) or keeps the stream (the host's `connect`). A failing `accept()` (EMFILE: out of
//! descriptors) is counted ([`COUNTERS`], `control_accept_errors` in both `status` documents) and
//! waits a backoff (10 ms doubling to 1 s, logged once per change) instead of spinning while the
//! client waits in the backlog. The per-OS part is the [`Listener`]: [`UnixControlListener`] here,
//! the host's named pipe on Windows. Clients use [`exchange`].

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shared_frame::{LinkState, Session};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::Backoff;

/// The longest request line a client may send.
pub const MAX_REQUEST: usize = 4096;
/// How long a client may take to send its request, and to take its answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The link and its session, as both programs' `status` reports it under `link`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// A link is attached (stream connected, USB device claimed, FunctionFS bound).
    pub connected: bool,
    /// Which: the peer address, path or USB port on the host; the framing on the board.
    pub description: Option<String>,
    /// Session state: `connecting`, `up`, `down`.
    pub session: String,
    /// Negotiated protocol version.
    pub protocol_version: Option<u8>,
    /// Negotiated MTU of the link (the largest IP packet either side sends on it).
    pub mtu: Option<u32>,
    /// Negotiated largest bundle towards the peer.
    pub max_bundle: Option<usize>,
    /// The peer's identity from its Hello.
    pub peer: Option<String>,
    /// Last keepalive round trip in microseconds.
    pub rtt_us: Option<u64>,
    /// Why the link was last lost or could not be established, kept after it came back.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl LinkStatus {
    /// The session's part (state, negotiated values, round trip); `connected`, `description` and
    /// `last_error` are the caller's.
    pub fn of_session(session: &Session) -> Self {
        let neg = session.negotiated();
        Self {
            connected: false,
            description: None,
            session: match session.state() {
                LinkState::Connecting => "connecting",
                LinkState::Up => "up",
                LinkState::Down => "down",
            }
            .to_owned(),
            protocol_version: neg.map(|n| n.version),
            mtu: neg.map(|n| n.max_mtu),
            max_bundle: neg.map(|n| n.max_bundle),
            peer: neg.map(|n| n.peer.identity.clone()),
            rtt_us: session
                .rtt()
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            last_error: None,
        }
    }
}

/// The answer to a request that is not a status (and to one that does not parse).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply<T = ()> {
    /// The request was carried out.
    #[serde(default)]
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the request returns, if anything.
    #[serde(flatten)]
    pub data: T,
}

impl<T: Default> Reply<T> {
    /// A failure.
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            data: T::default(),
        }
    }
}

/// Counters of the control channel (process-wide: one server per process).
#[derive(Debug, Default)]
pub struct ControlCounters {
    /// Failed `accept()`s.
    pub accept_errors: AtomicU64,
    /// Requests that did not parse (answered with an error).
    pub bad_requests: AtomicU64,
}

impl ControlCounters {
    /// Name → value, as the `status` documents show them.
    pub fn named(&self) -> [(String, u64); 2] {
        [
            (
                "control_accept_errors".to_owned(),
                self.accept_errors.load(Ordering::Relaxed),
            ),
            (
                "control_bad_requests".to_owned(),
                self.bad_requests.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// This process's control-channel counters.
pub static COUNTERS: ControlCounters = ControlCounters {
    accept_errors: AtomicU64::new(0),
    bad_requests: AtomicU64::new(0),
};

/// The daemon's side of a control channel (per OS).
pub trait Listener: Send + 'static {
    /// One client connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next client.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// A parsed request with the stream of the client that sent it.
#[derive(Debug)]
pub struct Incoming<R, S> {
    /// What the client asked.
    pub request: R,
    /// Where the answer goes.
    pub stream: S,
}

/// Runs the accept loop of `listener` in a task until `to_loop` closes (then the listener is
/// dropped). Requests are `R`, tagged by `op` (see the module); `R::default()` is the request of
/// a client that sends nothing.
pub fn serve<L, R>(
    mut listener: L,
    to_loop: mpsc::Sender<Incoming<R, L::Stream>>,
) -> tokio::task::JoinHandle<()>
where
    L: Listener,
    R: DeserializeOwned + Default + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Backoff::new(
            "control socket accept",
            Duration::from_millis(10),
            Duration::from_secs(1),
        );
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = to_loop.closed() => return,
            };
            match accepted {
                Ok(stream) => {
                    backoff.reset();
                    tokio::spawn(read_request(stream, to_loop.clone()));
                }
                Err(e) => {
                    COUNTERS.accept_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff.failed(&e.to_string())).await;
                }
            }
        }
    })
}

/// Parses one request line (see the module: JSON, a bare word, or nothing).
pub fn parse_request<R: DeserializeOwned + Default>(line: &[u8]) -> Result<R, String> {
    let text = std::str::from_utf8(line)
        .map_err(|_| "the request is not UTF-8".to_owned())?
        .trim();
    if text.is_empty() {
        return Ok(R::default());
    }
    let r = if text.starts_with('{') {
        serde_json::from_str(text)
    } else {
        serde_json::from_value(serde_json::json!({ "op": text }))
    };
    r.map_err(|e| {
        let shown: String = text.chars().take(64).collect();
        format!("bad request {shown:?}: {e}")
    })
}

async fn read_request<R, S>(mut stream: S, to_loop: mpsc::Sender<Incoming<R, S>>)
where
    R: DeserializeOwned + Default,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let line = match tokio::time::timeout(CLIENT_TIMEOUT, read_line(&mut stream)).await {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => return tracing::debug!(error = %e, "control client went away"),
        Err(_) => return tracing::debug!("control client sent no request in 5 s"),
    };
    match parse_request(&line) {
        Ok(request) => {
            let _ = to_loop.send(Incoming { request, stream }).await;
        }
        Err(e) => {
            COUNTERS.bad_requests.fetch_add(1, Ordering::Relaxed);
            reply(stream, &Reply::<()>::error(e));
        }
    }
}

/// Reads one line (without its newline) of at most [`MAX_REQUEST`] bytes, byte by byte: nothing
/// after the newline is consumed (the host's `connect` turns the rest of the connection into raw
/// data). EOF ends the line too.
pub async fn read_line<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < MAX_REQUEST {
        if s.read(&mut b).await? == 0 || b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    Ok(line)
}

/// Writes one JSON document and a newline to a client from a small task, then closes (the event
/// loop never waits for a client).
pub fn reply<S, T>(mut stream: S, doc: &T)
where
    S: AsyncWrite + Unpin + Send + 'static,
    T: Serialize + ?Sized,
{
    let Ok(mut doc) = serde_json::to_vec(doc) else {
        return;
    };
    doc.push(b'\n');
    tokio::spawn(async move {
        let w = async {
            stream.write_all(&doc).await?;
            stream.shutdown().await
        };
        if let Ok(Err(e)) = tokio::time::timeout(CLIENT_TIMEOUT, w).await {
            tracing::debug!(error = %e, "control client went away");
        }
    });
}

/// Client: sends `request` as one JSON line on `stream` and returns the daemon's answer (all it
/// writes until it closes, within [`CLIENT_TIMEOUT`]).
pub async fn exchange<S, R>(mut stream: S, request: &R) -> io::Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: Serialize + ?Sized,
{
    let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
    line.push(b'\n');
    let exchange = async {
        stream.write_all(&line).await?;
        let mut doc = String::new();
        stream.read_to_string(&mut doc).await?;
        Ok(doc)
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the daemon did not answer within 5 s",
            ))
        })
}

#[cfg(unix)]
pub use unix::UnixControlListener;

#[cfg(unix)]
mod unix {
    use std::io;
    use std::path::{Path, PathBuf};

    /// A control channel on a unix socket at a path, removed again on drop.
    #[derive(Debug)]
    pub struct UnixControlListener {
        listener: tokio::net::UnixListener,
        path: PathBuf,
    }

    impl UnixControlListener {
        /// Binds the socket (replacing a stale one; a missing directory is created with mode
        /// 0700). `AddrInUse` when another daemon answers on it (`hint` says what to do).
        pub fn bind(path: &Path, hint: &str) -> io::Result<Self> {
            use std::os::unix::fs::PermissionsExt as _;
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
                && !dir.exists()
            {
                std::fs::create_dir_all(dir)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, hint.to_owned()));
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let listener = tokio::net::UnixListener::bind(path)?;
            Ok(Self {
                listener,
                path: path.to_owned(),
            })
        }
    }

    impl super::Listener for UnixControlListener {
        type Stream = tokio::net::UnixStream;

        async fn accept(&mut self) -> io::Result<Self::Stream> {
            self.listener.accept().await.map(|(s, _)| s)
        }
    }

    impl Drop for UnixControlListener {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Eq, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    enum Req {
        #[default]
        Status,
        Teardown,
        Add {
            spec: String,
        },
    }

    #[test]
    fn requests_parse_as_json_bare_word_or_nothing() {
        assert_eq!(parse_request::<Req>(b""), Ok(Req::Status));
        assert_eq!(parse_request::<Req>(b" \r"), Ok(Req::Status));
        assert_eq!(parse_request::<Req>(b"teardown"), Ok(Req::Teardown));
        assert_eq!(
            parse_request::<Req>(b"{\"op\":\"teardown\"}"),
            Ok(Req::Teardown)
        );
        assert_eq!(
            parse_request::<Req>(b"{\"op\":\"add\",\"spec\":\"x\"}"),
            Ok(Req::Add { spec: "x".into() })
        );
        assert!(parse_request::<Req>(b"add").is_err());
        assert!(parse_request::<Req>(b"reboot").is_err());
        assert!(parse_request::<Req>(b"\xff").is_err());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_unix_client_gets_its_answer_and_a_bad_request_an_error() {
        let dir = std::env::temp_dir().join(format!("qbkit-link-control-{}", std::process::id()));
        let path = dir.join("c.sock");
        let listener = UnixControlListener::bind(&path, "taken").unwrap();
        assert_eq!(
            UnixControlListener::bind(&path, "taken")
                .unwrap_err()
                .kind(),
            io::ErrorKind::AddrInUse
        );
        let (tx, mut rx) = mpsc::channel::<Incoming<Req, _>>(4);
        let server = serve(listener, tx);
        let answer = tokio::spawn(async move {
            while let Some(Incoming { request, stream }) = rx.recv().await {
                reply(stream, &format!("{request:?}"));
            }
        });
        let ask = |line: &'static str| {
            let path = path.clone();
            async move {
                let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
                s.write_all(line.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            }
        };
        assert_eq!(ask("teardown\n").await, "\"Teardown\"\n");
        assert_eq!(ask("").await, "\"Status\"\n");
        let bad: Reply = serde_json::from_str(&ask("reboot\n").await).unwrap();
        assert!(!bad.ok && bad.error.unwrap().contains("reboot"));
        let s = tokio::net::UnixStream::connect(&path).await.unwrap();
        assert_eq!(
            exchange(s, &serde_json::json!({"op": "status"}))
                .await
                .unwrap(),
            "\"Status\"\n"
        );
        answer.abort();
        let _ = answer.await;
        // The loop's receiver is gone: the accept task ends and drops the listener (the path).
        server.await.unwrap();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
