//! Stream links shared by `qbkit-gadget` (`--link`) and `qbkit-host` (`--transport`): the same bundle
//! framing on any byte stream, for tests, Qubes qrexec and network export of a board.
//!
//! Data flow: [`LinkUrl::parse`] turns the command-line value into a [`LinkUrl`]; a [`Connector`] turns
//! that into a fresh byte stream each time the previous one is lost (it re-dials, or re-accepts on a
//! listener it keeps bound); [`BundleReader`] cuts the stream into bundles with
//! [`shared_frame::StreamDecoder`] (bounded buffering, one read buffer allocated once) and
//! [`write_bundle`] writes one. Both programs run the one stream link task on top of these,
//! [`run_stream`]: [`Connector::connect_retrying`] (capped exponential backoff, [`backoff`]), then
//! [`pump`] (bundles both ways until the stream ends), then [`Connector::ended`] (the reason; a
//! dialled stream that ended before it proved stable delays the next dial like a failed one), then
//! again, reporting the [`LinkEvent`]s every link task of both programs reports ([`task`]). The
//! session logic (Hello, keepalives) is not here: it
//! lives in [`shared_frame::Session`], driven by each program's event loop.
//!
//! Authentication ([`auth`]): with a pre-shared key ([`Connector::with_key`]) every new stream runs
//! a mutual challenge-response before the first bundle; `tcp://` and `tcp-listen://` on a
//! non-loopback address refuse to run without one ([`LinkUrl::requires_key`]). A listener runs the
//! handshakes of several peers concurrently, each bounded by [`auth::HANDSHAKE_TIMEOUT`], so a
//! silent or wrong peer never holds the accept slot. Loopback TCP and unix sockets stay keyless
//! unless a key is given (file permissions protect unix sockets). Bundles after the handshake are
//! not encrypted: for untrusted networks run the link over SSH or qrexec.
//!
//! Both programs' local control channel (`status` and the other client commands) has one shape
//! too: [`control`].

pub mod auth;
pub mod backoff;
pub mod control;
pub mod task;
#[cfg(unix)]
mod unix;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use shared_frame::{Bundle, FrameError, StreamDecoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::auth::{AuthError, AuthRole, LinkKey};
pub use crate::backoff::Backoff;
pub use crate::task::{BufPool, LinkEvent, LinkUp, STREAM_TX_DEPTH, run_listener, run_stream};

/// Handshakes a listener runs at once; a connection beyond them is closed at once (counted in
/// [`auth::AuthCounters::busy`]).
pub const MAX_PENDING_HANDSHAKES: usize = 16;

/// First wait of [`Connector::connect_retrying`] after a failed connect; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait of [`Connector::connect_retrying`].
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long [`Connector::ended`] waits for an exec'd command that closed its stdout to exit.
const CHILD_EXIT_WAIT: Duration = Duration::from_secs(1);

/// The read half of a link stream.
pub type LinkRead = Pin<Box<dyn AsyncRead + Send>>;
/// The write half of a link stream.
pub type LinkWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// Errors of stream links.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The link URL does not parse.
    #[error("invalid link {url:?}: {reason}")]
    BadUrl {
        /// The text given.
        url: String,
        /// What is wrong, with the accepted forms.
        reason: &'static str,
    },
    /// Connecting, listening or spawning failed.
    #[error("{what} {target}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The address, path or command.
        target: String,
        /// The OS error.
        source: io::Error,
    },
    /// The stream carried bytes that are not qbkit framing; the stream must be closed.
    #[error("framing error on the link: {0}")]
    Frame(FrameError),
    /// The link cannot be re-established (stdio is used once).
    #[error("{0} cannot reconnect")]
    Exhausted(&'static str),
    /// A `tcp://` or `tcp-listen://` link on a non-loopback address without a key.
    #[error(
        "{url} is reachable from the network: stream links there need a pre-shared key \
         (make one with `keygen FILE`, give the same file to --key on both ends), \
         or use a loopback address, a unix socket, SSH or qrexec"
    )]
    KeyRequired {
        /// The link.
        url: String,
    },
    /// The program closed the link because the peer's session timed out (it sent nothing).
    #[error("the peer went silent (its session timed out); link closed")]
    PeerSilent,
    /// The peer failed the authentication handshake.
    #[error("{peer}: {source}")]
    Auth {
        /// The peer (address or link).
        peer: String,
        /// What failed.
        source: AuthError,
    },
}

/// Link URLs for the tests of the programs that accept them. Not part of the API.
#[doc(hidden)]
pub mod testing {
    /// One URL of every form, each printed back exactly as written.
    pub const URLS: [&str; 6] = [
        "tcp://127.0.0.1:4747",
        "tcp-listen://127.0.0.1:4747",
        "unix:///run/q.sock",
        "unix-listen:///run/q.sock",
        "stdio",
        "exec:ssh board qbkit-gadget run --link stdio",
    ];

    /// Values that are not link URLs.
    pub const BAD_URLS: [&str; 5] = ["udp://x:1", "unix://relative", "tcp://nohost", "exec:", ""];
}

/// Where a stream link goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkUrl {
    /// `tcp://HOST:PORT`: dial, re-dial when lost.
    Tcp(String),
    /// `tcp-listen://ADDR:PORT`: listen, accept one peer at a time.
    TcpListen(SocketAddr),
    /// `unix:///PATH`: dial a unix socket.
    Unix(PathBuf),
    /// `unix-listen:///PATH`: listen on a unix socket (a stale socket file is replaced).
    UnixListen(PathBuf),
    /// `stdio`: stdin and stdout (qrexec services, `ssh`), once.
    Stdio,
    /// `exec:COMMAND`: run COMMAND with `sh -c` and talk to its stdin/stdout; re-run when it exits.
    Exec(String),
}

impl LinkUrl {
    /// The accepted forms, in the order `--help` and parse errors of both programs list them
    /// (each program puts its own forms in front: `usb`, `functionfs`, …).
    pub const FORMS: [&'static str; 6] = [
        "tcp://HOST:PORT",
        "tcp-listen://ADDR:PORT",
        "unix:///PATH",
        "unix-listen:///PATH",
        "stdio",
        "exec:COMMAND",
    ];

    /// Parses a link URL.
    pub fn parse(s: &str) -> Result<Self, LinkError> {
        let bad = |reason| LinkError::BadUrl {
            url: s.to_owned(),
            reason,
        };
        if s == "stdio" || s == "-" {
            return Ok(Self::Stdio);
        }
        if let Some(cmd) = s.strip_prefix("exec:") {
            return if cmd.trim().is_empty() {
                Err(bad("exec: needs a command"))
            } else {
                Ok(Self::Exec(cmd.to_owned()))
            };
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(bad("not a known form"));
        };
        match scheme {
            "tcp" => {
                if rest
                    .rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
                {
                    return Err(bad("tcp:// needs HOST:PORT"));
                }
                Ok(Self::Tcp(rest.to_owned()))
            }
            "tcp-listen" => rest
                .parse()
                .map(Self::TcpListen)
                .map_err(|_| bad("tcp-listen:// needs ADDR:PORT, e.g. 127.0.0.1:4747")),
            "unix" | "unix-listen" => {
                if !rest.starts_with('/') {
                    return Err(bad("unix paths must be absolute: unix:///run/qbkit.sock"));
                }
                let p = PathBuf::from(rest);
                Ok(if scheme == "unix" {
                    Self::Unix(p)
                } else {
                    Self::UnixListen(p)
                })
            }
            _ => Err(bad("unknown scheme")),
        }
    }

    /// The address of a TCP listener that others than this machine can reach (not loopback):
    /// such a link needs a key ([`requires_key`](Self::requires_key)), and its traffic is still
    /// not encrypted. `None` for loopback listeners and every other form.
    pub fn exposed_listener(&self) -> Option<SocketAddr> {
        match self {
            Self::TcpListen(a) if !a.ip().is_loopback() => Some(*a),
            _ => None,
        }
    }

    /// True when the link must not run without a pre-shared key: `tcp-listen://` on a
    /// non-loopback address, and `tcp://` to anything but a loopback address or `localhost`.
    pub fn requires_key(&self) -> bool {
        match self {
            Self::TcpListen(a) => !a.ip().is_loopback(),
            Self::Tcp(hostport) => {
                let host = hostport
                    .rsplit_once(':')
                    .map_or(hostport.as_str(), |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                !(host.eq_ignore_ascii_case("localhost")
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback()))
            }
            _ => false,
        }
    }

    /// Checks the key rule at start-up: `Err(KeyRequired)` for a link that
    /// [`requires_key`](Self::requires_key) when no key is given.
    pub fn check_key(&self, have_key: bool) -> Result<(), LinkError> {
        if self.requires_key() && !have_key {
            return Err(LinkError::KeyRequired {
                url: self.to_string(),
            });
        }
        Ok(())
    }

    /// True for the forms that wait for a peer rather than dial one.
    pub fn is_listener(&self) -> bool {
        matches!(self, Self::TcpListen(_) | Self::UnixListen(_))
    }
}

impl fmt::Display for LinkUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "tcp://{a}"),
            Self::TcpListen(a) => write!(f, "tcp-listen://{a}"),
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::UnixListen(p) => write!(f, "unix-listen://{}", p.display()),
            Self::Stdio => f.write_str("stdio"),
            Self::Exec(c) => write!(f, "exec:{c}"),
        }
    }
}

enum Listener {
    None,
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixListener),
}

/// Produces a fresh stream for a [`LinkUrl`] each time [`Connector::connect`] is called: the first
/// connection and every reconnection after a loss. Listeners stay bound between accepts.
pub struct Connector {
    url: LinkUrl,
    key: Option<LinkKey>,
    listener: Listener,
    stdio_used: bool,
    child: Option<tokio::process::Child>,
    peer: Option<String>,
    backoff: Backoff,
    /// The wait before the next dial, after a stream that ended too soon.
    pending_wait: Duration,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn io_err(what: &'static str, target: impl fmt::Display) -> impl FnOnce(io::Error) -> LinkError {
    move |source| LinkError::Io {
        what,
        target: target.to_string(),
        source,
    }
}

impl Connector {
    /// A connector; listeners are bound on the first [`connect`](Self::connect).
    pub fn new(url: LinkUrl) -> Self {
        Self {
            backoff: Backoff::new(url.to_string(), FIRST_BACKOFF, MAX_BACKOFF),
            url,
            key: None,
            listener: Listener::None,
            stdio_used: false,
            child: None,
            peer: None,
            pending_wait: Duration::ZERO,
        }
    }

    /// A connector that authenticates every stream with `key` (see [`auth`]) when one is given.
    /// Without one, a link that [`requires_key`](LinkUrl::requires_key) is refused here.
    pub fn with_key(url: LinkUrl, key: Option<LinkKey>) -> Result<Self, LinkError> {
        url.check_key(key.is_some())?;
        let mut c = Self::new(url);
        c.key = key;
        Ok(c)
    }

    /// Whether streams are authenticated.
    pub fn authenticated(&self) -> bool {
        self.key.is_some()
    }

    /// The link and its current peer for logs and `status`, e.g.
    /// `tcp-listen://0.0.0.0:4747 (peer 192.0.2.7:50122, authenticated)`.
    pub fn describe(&self) -> String {
        let url = self.bound_url();
        match (&self.peer, self.authenticated()) {
            (Some(p), true) => format!("{url} (peer {p}, authenticated)"),
            (Some(p), false) => format!("{url} (peer {p})"),
            (None, true) => format!("{url} (authenticated)"),
            (None, false) => url.to_string(),
        }
    }

    /// The URL.
    pub fn url(&self) -> &LinkUrl {
        &self.url
    }

    /// The bound address of a `tcp-listen` link after [`bind`](Self::bind) (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        // Not a match with `_`: on Windows (no unix listener) that arm is one variant, which
        // clippy's pedantic set rejects.
        if let Listener::Tcp(l) = &self.listener {
            l.local_addr().ok()
        } else {
            None
        }
    }

    /// The URL with a bound listener's real address (`tcp-listen://127.0.0.1:40123` for a
    /// `tcp-listen://127.0.0.1:0` link after [`bind`](Self::bind)); the URL itself otherwise.
    pub fn bound_url(&self) -> LinkUrl {
        match (&self.url, self.local_addr()) {
            (LinkUrl::TcpListen(_), Some(a)) => LinkUrl::TcpListen(a),
            (u, _) => u.clone(),
        }
    }

    /// Binds a listening link now (a no-op for the other forms), so address-in-use and permission
    /// errors show at start-up and peers can connect before the first [`connect`](Self::connect).
    pub async fn bind(&mut self) -> Result<(), LinkError> {
        if !matches!(self.listener, Listener::None) {
            return Ok(());
        }
        self.url.check_key(self.key.is_some())?;
        match &self.url {
            LinkUrl::TcpListen(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(io_err("listen on", addr))?;
                if let Some(addr) = self.url.exposed_listener() {
                    tracing::warn!(
                        %addr,
                        "stream link listens on a non-loopback address: peers must prove the \
                         link key, but the traffic is not encrypted; carry the link over SSH or \
                         qrexec through untrusted networks"
                    );
                }
                // The bound address, so port 0 shows the port the OS chose.
                let bound = l.local_addr().map_err(io_err("listen on", addr))?;
                tracing::info!("listening on {bound}");
                self.listener = Listener::Tcp(l);
            }
            #[cfg(unix)]
            LinkUrl::UnixListen(path) => {
                match std::fs::remove_file(path) {
                    Ok(()) => tracing::debug!(path = %path.display(), "removed stale socket"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove stale socket", path.display())(e)),
                }
                let l = UnixListener::bind(path).map_err(io_err("listen on", path.display()))?;
                tracing::info!("listening on {}", path.display());
                self.listener = Listener::Unix(l);
            }
            _ => {}
        }
        Ok(())
    }

    /// Waits for the next stream: dials, accepts or spawns, then authenticates it when the
    /// connector has a key. Dial and handshake failures are returned (the caller retries with
    /// backoff); a listener keeps waiting for a peer that passes.
    pub async fn connect(&mut self) -> Result<(LinkRead, LinkWrite), LinkError> {
        if let Some(mut c) = self.child.take() {
            // The previous exec'd peer is gone or being replaced; never leave it running.
            let _ = c.kill().await;
        }
        self.bind().await?;
        self.peer = None;
        let (stream, peer) = if self.url.is_listener() {
            match self.key.clone() {
                None => self.accept().await?,
                Some(key) => self.accept_authenticated(&key).await?,
            }
        } else {
            let (stream, peer) = self.dial().await?;
            match &self.key {
                None => (stream, peer),
                Some(key) => {
                    // The side that dialled (or ran the command) speaks first; stdio answers.
                    let role = if self.url == LinkUrl::Stdio {
                        AuthRole::Responder
                    } else {
                        AuthRole::Initiator
                    };
                    let stream = auth::authenticate(stream, role, key)
                        .await
                        .map_err(|source| LinkError::Auth {
                            peer: peer.clone(),
                            source,
                        })?;
                    tracing::info!(%peer, "stream link peer authenticated");
                    (stream, peer)
                }
            }
        };
        self.peer = Some(peer);
        Ok(stream)
    }

    /// Accepts one peer (no authentication).
    async fn accept(&self) -> Result<((LinkRead, LinkWrite), String), LinkError> {
        match (&self.url, &self.listener) {
            (LinkUrl::TcpListen(addr), Listener::Tcp(l)) => {
                let (s, peer) = l.accept().await.map_err(io_err("accept on", addr))?;
                tracing::info!(%peer, "stream link accepted");
                s.set_nodelay(true).ok();
                let (r, w) = s.into_split();
                Ok(((Box::pin(r), Box::pin(w)), peer.to_string()))
            }
            #[cfg(unix)]
            (LinkUrl::UnixListen(path), Listener::Unix(l)) => {
                let (s, _) = l
                    .accept()
                    .await
                    .map_err(io_err("accept on", path.display()))?;
                tracing::info!(path = %path.display(), "stream link accepted");
                let (r, w) = unix::split(s).map_err(io_err("accept on", path.display()))?;
                // Unix peers are unnamed; the path is already in the link's URL.
                Ok(((Box::pin(r), Box::pin(w)), "a local process".to_owned()))
            }
            _ => Err(LinkError::BadUrl {
                url: self.url.to_string(),
                reason: "not a listening link, or not supported on this OS",
            }),
        }
    }

    /// Accepts peers and runs their handshakes concurrently (at most
    /// [`MAX_PENDING_HANDSHAKES`], each bounded by [`auth::HANDSHAKE_TIMEOUT`]) until one
    /// proves the key; the others are dropped. A failed or silent peer never blocks the next.
    async fn accept_authenticated(
        &self,
        key: &LinkKey,
    ) -> Result<((LinkRead, LinkWrite), String), LinkError> {
        let mut pending = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.accept() => {
                    let (stream, peer) = accepted?;
                    if pending.len() >= MAX_PENDING_HANDSHAKES {
                        auth::COUNTERS.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        auth_failure_log(&peer, &AuthError::Io("too many handshakes at once".into()));
                        continue;
                    }
                    let key = key.clone();
                    pending.spawn(async move {
                        let res = auth::authenticate(stream, AuthRole::Responder, &key).await;
                        (res, peer)
                    });
                }
                Some(done) = pending.join_next() => match done {
                    Ok((Ok(stream), peer)) => {
                        tracing::info!(%peer, "stream link peer authenticated");
                        return Ok((stream, peer));
                    }
                    Ok((Err(e), peer)) => auth_failure_log(&peer, &e),
                    Err(e) => tracing::warn!(error = %e, "link handshake task failed"),
                },
            }
        }
    }

    /// Dials, spawns or takes stdio (no authentication).
    async fn dial(&mut self) -> Result<((LinkRead, LinkWrite), String), LinkError> {
        match &self.url {
            LinkUrl::Tcp(addr) => {
                let s = TcpStream::connect(addr)
                    .await
                    .map_err(io_err("connect to", addr))?;
                s.set_nodelay(true).ok();
                let peer = s
                    .peer_addr()
                    .map_or_else(|_| addr.clone(), |a| a.to_string());
                let (r, w) = s.into_split();
                Ok(((Box::pin(r), Box::pin(w)), peer))
            }
            #[cfg(unix)]
            LinkUrl::Unix(path) => {
                let s = UnixStream::connect(path)
                    .await
                    .map_err(io_err("connect to", path.display()))?;
                let (r, w) = unix::split(s).map_err(io_err("connect to", path.display()))?;
                Ok(((Box::pin(r), Box::pin(w)), path.display().to_string()))
            }
            LinkUrl::Stdio => {
                if std::mem::replace(&mut self.stdio_used, true) {
                    return Err(LinkError::Exhausted("stdio"));
                }
                Ok((
                    (Box::pin(tokio::io::stdin()), Box::pin(tokio::io::stdout())),
                    "stdio".to_owned(),
                ))
            }
            LinkUrl::Exec(cmd) => {
                let mut child = exec_command(cmd)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(io_err("run", cmd))?;
                let (Some(r), Some(w)) = (child.stdout.take(), child.stdin.take()) else {
                    return Err(io_err("run", cmd)(io::Error::other("no stdio pipes")));
                };
                self.child = Some(child);
                Ok(((Box::pin(r), Box::pin(w)), format!("exec:{cmd}")))
            }
            _ => Err(LinkError::BadUrl {
                url: self.url.to_string(),
                reason: "unix sockets are not supported on this OS",
            }),
        }
    }
}

/// [`shared_frame::LogLimit::check`] now, for a limit that I/O code keeps in a `static` (the
/// sans-IO cores pass their own time instead): `Some(left_out)` when a line may be logged.
pub fn log_allowed(limit: &std::sync::Mutex<shared_frame::LogLimit>) -> Option<u64> {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let since = EPOCH.get_or_init(std::time::Instant::now).elapsed();
    let now =
        shared_frame::Instant::from_micros(u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
    limit.lock().ok()?.check(now)
}

/// Logs a failed handshake at warn level, at most one line a second (the rest are counted in
/// [`auth::COUNTERS`] and summarised in the next line).
fn auth_failure_log(peer: &str, error: &AuthError) {
    static LIMIT: std::sync::Mutex<shared_frame::LogLimit> =
        std::sync::Mutex::new(shared_frame::LogLimit::new());
    if let Some(suppressed) = log_allowed(&LIMIT) {
        tracing::warn!(%peer, %error, suppressed, "stream link peer rejected");
    }
}

impl Connector {
    /// [`connect`](Self::connect) until it succeeds, waiting after each failure (100 ms, doubling up
    /// to 5 s; the reason logged once per change and handed to `on_failure`), and first after a
    /// dialled stream that [`ended`](Self::ended) too soon. `None` when the link cannot be
    /// re-established ([`LinkError::Exhausted`]).
    pub async fn connect_retrying(
        &mut self,
        mut on_failure: impl FnMut(&str),
    ) -> Option<(LinkRead, LinkWrite)> {
        tokio::time::sleep(std::mem::take(&mut self.pending_wait)).await;
        loop {
            match self.connect().await {
                Ok(s) => {
                    tracing::debug!(link = %self.url, "stream link connected");
                    self.backoff.up();
                    return Some(s);
                }
                Err(LinkError::Exhausted(what)) => {
                    tracing::info!(what, "stream link ended and cannot reconnect");
                    return None;
                }
                Err(e @ LinkError::KeyRequired { .. }) => {
                    tracing::error!(error = %e, "stream link cannot start");
                    return None;
                }
                Err(e) => {
                    let reason = e.to_string();
                    let wait = self.backoff.failed(&reason);
                    on_failure(&reason);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The stream [`connect_retrying`](Self::connect_retrying) returned has ended with `res`
    /// (what [`pump`] returned): the reason for logs and status (with an exec'd command's exit
    /// status). A dialled or exec'd stream that ended before [`backoff::STABLE`] delays the next
    /// dial; a listener waits for its next peer anyway.
    pub async fn ended(&mut self, res: &Result<(), LinkError>) -> String {
        let mut reason = match res {
            Ok(()) => "closed by the peer".to_owned(),
            Err(e) => e.to_string(),
        };
        // An exec'd command that exited is the cause; a broken pipe or EOF only its symptom (which
        // of the two shows first is a race, and the reason must not flip between them).
        if let Some(child) = &mut self.child
            && let Ok(Ok(status)) = tokio::time::timeout(CHILD_EXIT_WAIT, child.wait()).await
        {
            tracing::debug!(%reason, "stream link ended");
            reason = format!("the command ended with {status}");
        }
        if self.url.is_listener() || self.url == LinkUrl::Stdio {
            tracing::info!(link = %self.url, %reason, "stream link down");
        } else {
            self.pending_wait = self.backoff.down(&reason);
        }
        reason
    }
}

#[cfg(unix)]
fn exec_command(cmd: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c").arg(cmd);
    c
}

#[cfg(windows)]
fn exec_command(cmd: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("cmd");
    c.arg("/C").arg(cmd);
    c
}

impl Drop for Connector {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let (LinkUrl::UnixListen(p), Listener::Unix(_)) = (&self.url, &self.listener) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Cuts bundles out of a byte stream.
pub struct BundleReader {
    read: LinkRead,
    decoder: StreamDecoder,
}

impl fmt::Debug for BundleReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleReader")
            .field("buffered", &self.decoder.buffered())
            .finish_non_exhaustive()
    }
}

impl BundleReader {
    /// A reader accepting bundles of up to `max_bundle` bytes.
    pub fn new(read: LinkRead, max_bundle: usize) -> Self {
        Self {
            read,
            decoder: StreamDecoder::new(max_bundle),
        }
    }

    /// The next bundle's bytes, or `None` at a clean end of stream (between bundles).
    ///
    /// Cancel-safe: bytes read before a cancellation stay buffered.
    pub async fn next(&mut self) -> Result<Option<&[u8]>, LinkError> {
        loop {
            // Decide with an immutable probe first so the returned borrow does not overlap the read.
            let ready = match self.decoder.next_bundle() {
                Some(Ok(b)) => Some(b.len()),
                Some(Err(e)) => return Err(LinkError::Frame(e)),
                None => None,
            };
            if let Some(len) = ready {
                debug_assert_eq!(self.decoder.last_bundle().len(), len);
                return Ok(Some(self.decoder.last_bundle()));
            }
            let n = self
                .read
                .read(self.decoder.read_buf())
                .await
                .map_err(io_err("read from", "link"))?;
            if n == 0 {
                if self.decoder.buffered() == 0 {
                    return Ok(None);
                }
                return Err(LinkError::Io {
                    what: "read from",
                    target: "link".into(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream ended inside a bundle",
                    ),
                });
            }
            self.decoder.commit(n);
        }
    }
}

/// Writes one finished bundle (the output of [`shared_frame::BundleWriter::finish`]).
pub async fn write_bundle(w: &mut LinkWrite, bundle: &[u8]) -> Result<(), LinkError> {
    debug_assert!(Bundle::new_checked(bundle, shared_frame::MAX_BUNDLE_LIMIT).is_ok());
    w.write_all(bundle)
        .await
        .map_err(io_err("write to", "link"))?;
    w.flush().await.map_err(io_err("flush", "link"))
}

/// Carries bundles both ways over one connected stream until it ends: every bundle from
/// `outgoing` is written (and its buffer given back to `pool`), and every bundle read is turned
/// into an event by `wrap` and sent on `events` (waiting while it is full: backpressure onto the
/// stream).
///
/// `Ok` when the peer closed the stream between bundles, or `outgoing` (even during a write the
/// peer does not take) or `events` was closed;
/// an error when reading or writing failed or the peer sent bytes that are not qbkit framing.
pub async fn pump<T>(
    (read, mut write): (LinkRead, LinkWrite),
    max_bundle: usize,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    pool: &BufPool,
    events: &mpsc::Sender<T>,
    wrap: impl Fn(&[u8]) -> T,
) -> Result<(), LinkError> {
    let mut reader = BundleReader::new(read, max_bundle);
    let writer = async {
        let mut next = None;
        loop {
            let b = match next.take() {
                Some(b) => b,
                None => match outgoing.recv().await {
                    Some(b) => b,
                    None => return Ok(()),
                },
            };
            // A peer that stopped reading can block a write forever: when the driver closes
            // `outgoing` meanwhile (its session timed out), the link ends without waiting.
            {
                let mut write_one = std::pin::pin!(write_bundle(&mut write, &b));
                loop {
                    tokio::select! {
                        biased;
                        r = &mut write_one => {
                            r?;
                            break;
                        }
                        m = outgoing.recv(), if next.is_none() => match m {
                            Some(b) => next = Some(b),
                            None => return Ok::<(), LinkError>(()),
                        },
                    }
                }
            }
            pool.put(b);
        }
    };
    let read = async {
        while let Some(b) = reader.next().await? {
            if events.send(wrap(b)).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    };
    tokio::select! {
        r = writer => r,
        r = read => r,
    }
}
