//! `qbkit-host status`: the snapshot the running driver serves on its control socket, and the
//! client that reads it.
//!
//! Protocol: the shape both programs share, [`qbkit_link::control`], on a unix socket (a named
//! pipe on Windows: [`crate::platform::control_listen`]): one request line, a JSON [`Request`]
//! (`{"op":"status"}`, `{"op":"forward_add","spec":"2222:22"}`, …; a client that sends nothing
//! and half-closes gets the status), read by a small task and handed to the driver loop, which
//! answers with one JSON document ([`Status`], or a [`Reply`]) written by another small task, so
//! a slow client never stalls the NAT. `connect` is the exception: after its `{"ok":true}` line
//! the same connection carries the raw bytes of a TCP connection to the board (see
//! `sockets.rs`). `--json` prints a document as is; the default output is a human summary.
//! [`LinkStatus`] (under `link`) has the same fields in `qbkit-gadget status`.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::time::Duration;

use qbkit_cli::printable;
pub use qbkit_link::control::LinkStatus;
use qbkit_link::control::{self, Incoming};
use qbkit_nat::{FlowInfo, Nat, Protocol};
use serde::{Deserialize, Serialize};
use shared_frame::{Session, Stats};

use crate::core::CoreCounters;
use crate::forward::ForwardStatus;
use crate::platform;
use crate::sockets::SocketCounters;

/// A control-socket request (one JSON line). `board` names the board it is for (its name in
/// `status`); it may be left out while the host serves one board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// The [`Status`] document: the host's (every board and the totals), or one board's.
    Status {
        /// Only this board.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        board: Option<String>,
    },
    /// Add a forward (`SPEC` as `--forward` takes it).
    ForwardAdd {
        /// The spec.
        spec: String,
        /// The board.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        board: Option<String>,
    },
    /// Remove a forward.
    ForwardRemove {
        /// The spec.
        spec: String,
        /// The board.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        board: Option<String>,
    },
    /// List the forwards.
    ForwardList {
        /// The board.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        board: Option<String>,
    },
    /// Turn this connection into a TCP connection to the board: `PORT`, `BOARD_IPV4:PORT`
    /// or `[BOARD_IPV6]:PORT`.
    Connect {
        /// The target.
        target: String,
        /// The board.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        board: Option<String>,
    },
}

impl Default for Request {
    /// What a client that sends nothing gets: the status.
    fn default() -> Self {
        Self::Status { board: None }
    }
}

impl Request {
    /// The board the request names, if any.
    pub fn board(&self) -> Option<&str> {
        match self {
            Self::Status { board }
            | Self::ForwardAdd { board, .. }
            | Self::ForwardRemove { board, .. }
            | Self::ForwardList { board }
            | Self::Connect { board, .. } => board.as_deref(),
        }
    }
}

/// The answer to every request but `status` (and `connect` once it succeeded: then `ok` only).
pub type Reply = control::Reply<ForwardsData>;

/// What a forward request returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardsData {
    /// The forwards after the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwards: Option<Vec<ForwardStatus>>,
}

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Program version.
    pub version: String,
    /// Process id of the daemon.
    pub pid: u32,
    /// Seconds since the driver started.
    pub uptime_s: f64,
    /// Resident memory of the daemon, if known on this OS.
    pub rss_bytes: Option<u64>,
    /// The `--transport` value.
    pub transport: String,
    /// The link and the session on it.
    pub link: LinkStatus,
    /// Flows by protocol.
    pub flow_counts: BTreeMap<String, u64>,
    /// OS sockets open.
    pub os_sockets: usize,
    /// Counters of the NAT core (`drop_*` are drops).
    pub nat: BTreeMap<String, u64>,
    /// Counters of the session (link protocol).
    pub session: BTreeMap<String, u64>,
    /// Counters of the OS socket side.
    pub sockets: BTreeMap<String, u64>,
    /// Counters of the driver loop.
    pub driver: BTreeMap<String, u64>,
    /// The board's own counters (its last Stats message).
    pub peer_stats: BTreeMap<String, u64>,
    /// Every flow.
    pub flows: Vec<FlowStatus>,
    /// Port forwards into the board.
    #[serde(default)]
    pub forwards: Vec<ForwardStatus>,
    /// The gateway's upstream DNS resolvers.
    #[serde(default)]
    pub dns: DnsStatus,
    /// Every board this host serves (one entry per board; the fields above are that board's,
    /// or with several boards their totals).
    #[serde(default)]
    pub boards: Vec<BoardStatus>,
}

/// One board in the host's [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoardStatus {
    /// Its name, what `--board` takes: the name the host's config file gives its serial, the USB
    /// serial, or `board-N` (the N-th board a stream listener served at once).
    pub name: String,
    /// Its USB serial (`--board` takes it too), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Its link and session.
    pub link: LinkStatus,
    /// Session bytes from the board.
    pub rx_bytes: u64,
    /// Session bytes to the board.
    pub tx_bytes: u64,
    /// Open flows.
    pub flows: usize,
    /// Its port forwards.
    pub forwards: usize,
}

impl DnsStatus {
    /// One line: the resolvers, the preferred one marked, and where they come from.
    pub fn render(&self) -> String {
        if self.servers.is_empty() {
            return "no upstream resolver (the board's DNS queries are refused)".to_owned();
        }
        let list: Vec<String> = self
            .servers
            .iter()
            .map(|s| {
                if Some(s) == self.preferred.as_ref() && self.servers.len() > 1 {
                    format!("{s} (preferred)")
                } else {
                    s.clone()
                }
            })
            .collect();
        let source = if self.following_system {
            format!("from the system, followed; {} changes", self.changes)
        } else {
            "pinned by --dns".to_owned()
        };
        format!("{} [{source}]", list.join(", "))
    }
}

/// The DNS part of [`Status`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DnsStatus {
    /// The upstream resolvers in use, in order.
    pub servers: Vec<String>,
    /// The one new queries go to first (the one that answered last).
    pub preferred: Option<String>,
    /// The system's resolvers are followed while running (false: pinned by `--dns`).
    pub following_system: bool,
    /// Re-reads of the system's resolvers, changes found, failed or empty re-reads.
    pub rereads: u64,
    /// Re-reads that found a different list.
    pub changes: u64,
    /// Re-reads that failed or found no resolver.
    pub reread_errors: u64,
}

/// One flow in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowStatus {
    /// Flow id.
    pub id: u64,
    /// `tcp`, `udp`, `icmp`.
    pub protocol: String,
    /// Board endpoint.
    pub src: String,
    /// Destination the board addressed.
    pub dst: String,
    /// Where the OS socket goes.
    pub os_dst: String,
    /// State name.
    pub state: String,
    /// Payload bytes from the board.
    pub bytes_from_board: u64,
    /// Payload bytes to the board.
    pub bytes_to_board: u64,
    /// Milliseconds since the last activity.
    pub idle_ms: u64,
    /// `out` (the board dialled) or `in` (a forward or `connect` dialled the board; `os_dst`
    /// is then the laptop-side peer).
    #[serde(default)]
    pub direction: String,
}

/// What the driver hands to [`Status::collect`].
pub(crate) struct Sources<'a> {
    pub(crate) transport: &'a str,
    pub(crate) link: Option<&'a str>,
    pub(crate) last_link_error: Option<&'a str>,
    pub(crate) session: &'a Session,
    pub(crate) nat: &'a Nat,
    pub(crate) flows: Vec<FlowInfo>,
    pub(crate) sockets: &'a SocketCounters,
    pub(crate) os_sockets: usize,
    pub(crate) driver: &'a CoreCounters,
    pub(crate) peer_stats: Option<&'a Stats>,
    pub(crate) uptime: Duration,
    pub(crate) forwards: Vec<ForwardStatus>,
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
        _ => "other",
    }
}

fn dns_status(nat: &Nat) -> DnsStatus {
    use std::sync::atomic::Ordering;
    let c = &crate::dns_watch::COUNTERS;
    let (servers, preferred) = nat.dns_servers();
    DnsStatus {
        servers: servers.iter().map(ToString::to_string).collect(),
        preferred: preferred
            .and_then(|i| servers.get(i))
            .map(ToString::to_string),
        following_system: c.watching.load(Ordering::Relaxed),
        rereads: c.rereads.load(Ordering::Relaxed),
        changes: c.changes.load(Ordering::Relaxed),
        reread_errors: c.errors.load(Ordering::Relaxed),
    }
}

/// A board that exported itself to `usbip-listen://` (`qbkit-host list --exported`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportedBoard {
    /// The link: listener, the board's address, devid, speed, VID:PID.
    pub link: String,
    /// The board's serial (its identity in Hello), once the session is up.
    pub serial: Option<String>,
    /// Session state.
    pub session: String,
}

impl Status {
    /// The board served through `usbip-listen://`, if one is attached.
    pub fn exported_board(&self) -> Option<ExportedBoard> {
        let link = self.link.description.as_ref()?;
        (self.transport.starts_with("usbip-listen://") && self.link.connected).then(|| {
            ExportedBoard {
                link: link.clone(),
                serial: self.link.peer.clone(),
                session: self.link.session.clone(),
            }
        })
    }
}

/// Serializes a counters struct into name → value (every field is a u64).
fn counter_map<T: Serialize>(c: &T) -> BTreeMap<String, u64> {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

impl Status {
    pub(crate) fn collect(s: &Sources<'_>) -> Self {
        let of_session = LinkStatus::of_session(s.session);
        let link = LinkStatus {
            connected: s.link.is_some(),
            description: s.link.map(str::to_owned),
            mtu: of_session.mtu.map(|m| m.min(s.nat.config().mtu as u32)),
            last_error: s.last_link_error.map(str::to_owned),
            ..of_session
        };
        let mut session: BTreeMap<String, u64> = s
            .session
            .counters()
            .named()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        // Stream-link handshakes (process-wide; zero without --key).
        session.extend(qbkit_link::auth::COUNTERS.named());
        let mut flow_counts = BTreeMap::new();
        for f in &s.flows {
            *flow_counts
                .entry(protocol_name(f.protocol).to_owned())
                .or_insert(0) += 1;
        }
        let flows = s
            .flows
            .iter()
            .map(|f| FlowStatus {
                id: f.id.0,
                protocol: protocol_name(f.protocol).to_owned(),
                src: f.src.to_string(),
                dst: f.dst.to_string(),
                os_dst: f.os_dst.to_string(),
                state: f.state.clone(),
                bytes_from_board: f.bytes_from_board,
                bytes_to_board: f.bytes_to_board,
                idle_ms: f.idle.total_millis(),
                direction: if f.inbound { "in" } else { "out" }.to_owned(),
            })
            .collect();
        let peer_stats = s
            .peer_stats
            .map(|st| {
                st.counters
                    .iter()
                    .map(|(id, v)| (format!("stat_{}", id.0), *v))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_s: s.uptime.as_secs_f64(),
            rss_bytes: crate::platform::rss_bytes(),
            transport: s.transport.to_owned(),
            link,
            flow_counts,
            os_sockets: s.os_sockets,
            nat: s
                .nat
                .counters()
                .iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            session,
            sockets: counter_map(s.sockets),
            driver: {
                let mut m = counter_map(s.driver);
                m.extend(control::COUNTERS.named());
                m
            },
            peer_stats,
            flows,
            forwards: s.forwards.clone(),
            dns: dns_status(s.nat),
            boards: Vec::new(),
        }
    }

    /// Non-zero drop counters: real drops (`section.name=N`), and the ones every healthy link
    /// sees, named for what they are (segments arriving after their connection closed, the
    /// board kernel's IPv6 multicast chatter).
    fn drop_lines(&self) -> (Vec<String>, Vec<String>) {
        let (mut drops, mut normal) = (Vec::new(), Vec::new());
        for (section, m) in [
            ("nat", &self.nat),
            ("session", &self.session),
            ("sockets", &self.sockets),
            ("driver", &self.driver),
        ] {
            for (k, v) in m {
                let is_drop = k.starts_with("drop_")
                    || k.starts_with("rx_bad")
                    || k == "tx_drops"
                    || k == "events_dropped";
                if !is_drop || *v == 0 {
                    continue;
                }
                match (section, k.as_str()) {
                    ("nat", "drop_tcp_no_flow") => {
                        normal.push(format!("{v} late TCP segments after a close"));
                    }
                    ("nat", "drop_ipv6_multicast") => {
                        normal.push(format!(
                            "{v} IPv6 multicast packets (router solicitations, MLD)"
                        ));
                    }
                    ("nat", "drop_stale_os_event") => {
                        normal.push(format!("{v} socket events for closed flows"));
                    }
                    _ => drops.push(format!("{section}.{k}={v}")),
                }
            }
        }
        (drops, normal)
    }

    /// A human-readable summary: link, traffic, every non-zero drop counter, the first flows.
    #[allow(
        clippy::many_single_char_names,
        reason = "short names keep the format lines readable"
    )]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let l = &self.link;
        let _ = writeln!(
            o,
            "qbkit-host {} (pid {}), up {:.0} s",
            self.version, self.pid, self.uptime_s
        );
        let _ = writeln!(
            o,
            "transport  {} ({})",
            self.transport,
            printable(l.description.as_deref().unwrap_or("no link"))
        );
        let _ = writeln!(
            o,
            "session    {}{}",
            l.session,
            match (&l.peer, l.protocol_version, l.mtu, l.max_bundle) {
                (Some(p), Some(v), Some(m), Some(b)) => format!(
                    ": {}, protocol v{v}, MTU {m}, bundles up to {b} B",
                    printable(p)
                ),
                _ => String::new(),
            }
        );
        if let Some(e) = &l.last_error {
            let _ = writeln!(o, "last error {}", printable(e));
        }
        if let Some(rtt) = l.rtt_us {
            let _ = writeln!(o, "rtt        {rtt} µs");
        }
        let _ = writeln!(o, "dns        {}", self.dns.render());
        if let Some(rss) = self.rss_bytes {
            let _ = writeln!(o, "memory     {} MiB resident", rss / 1024 / 1024);
        }
        let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "traffic    from board {} packets / {} bytes, to board {} packets / {} bytes",
            get(&self.nat, "rx_packets"),
            get(&self.nat, "rx_bytes"),
            get(&self.nat, "tx_packets"),
            get(&self.nat, "tx_bytes"),
        );
        let counts: Vec<String> = self
            .flow_counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let _ = writeln!(
            o,
            "flows      {} ({}), {} OS sockets",
            self.flows.len(),
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(", ")
            },
            self.os_sockets
        );
        let (drops, normal) = self.drop_lines();
        let _ = writeln!(
            o,
            "drops      {}",
            if drops.is_empty() {
                "none".to_owned()
            } else {
                drops.join(" ")
            }
        );
        if !normal.is_empty() {
            let _ = writeln!(o, "normal     {} (not faults)", normal.join(", "));
        }
        if self.boards.len() > 1 {
            o.push_str(&render_boards(&self.boards));
        }
        if !self.forwards.is_empty() {
            let _ = writeln!(o, "\nforwards");
            o.push_str(&render_forwards(&self.forwards));
        }
        if !self.flows.is_empty() {
            o.push_str(&render_flows(&self.flows));
        }
        o
    }
}

/// The boards as a table (`status` of a host serving several).
fn render_boards(boards: &[BoardStatus]) -> String {
    use std::fmt::Write as _;
    let mut o = format!(
        "\n{:<20} {:<10} {:<20} {:>12} {:>12} {:>6}  LINK\n",
        "BOARD", "SESSION", "PEER", "FROM BOARD", "TO BOARD", "FLOWS"
    );
    for b in boards {
        let name = match &b.serial {
            Some(s) if *s != b.name => format!("{} ({s})", b.name),
            _ => b.name.clone(),
        };
        let _ = writeln!(
            o,
            "{:<20} {:<10} {:<20} {:>12} {:>12} {:>6}  {}",
            printable(&name),
            b.link.session,
            printable(b.link.peer.as_deref().unwrap_or("-")),
            b.rx_bytes,
            b.tx_bytes,
            b.flows,
            printable(b.link.description.as_deref().unwrap_or("no link"))
        );
    }
    o
}

/// A board as the host names it: its name, and its USB serial when known.
#[derive(Debug, Clone, Default)]
pub(crate) struct BoardId {
    /// What `status` and `--board` call it.
    pub name: String,
    /// Its USB serial.
    pub serial: Option<String>,
}

/// Adds `from`'s counters to `into`'s.
fn add_counters(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        let e = into.entry(k.clone()).or_insert(0);
        *e = e.saturating_add(*v);
    }
}

impl Status {
    /// This board's line in the host's document.
    fn board(&self, id: &BoardId) -> BoardStatus {
        let get = |k: &str| self.session.get(k).copied().unwrap_or(0);
        BoardStatus {
            name: id.name.clone(),
            serial: id.serial.clone(),
            link: self.link.clone(),
            rx_bytes: get("rx_bytes"),
            tx_bytes: get("tx_bytes"),
            flows: self.flows.len(),
            forwards: self.forwards.len(),
        }
    }

    /// The host's document from its boards' (in order, at least one): one board's as it is, with
    /// its `boards` entry; several boards' counters, flows and forwards added up, the link
    /// `connected` while any is and its session `up` only when all are.
    pub(crate) fn host(transport: &str, mut boards: Vec<(BoardId, Self)>) -> Option<Self> {
        let list: Vec<BoardStatus> = boards.iter().map(|(n, s)| s.board(n)).collect();
        let several = boards.len() > 1;
        let mut rest = boards.split_off(1.min(boards.len()));
        let (_, mut total) = boards.pop()?;
        if several {
            let all_up = list.iter().all(|b| b.link.session == "up");
            total.link = LinkStatus {
                connected: list.iter().any(|b| b.link.connected),
                description: Some(format!("{} boards", list.len())),
                session: if all_up { "up" } else { "partly up" }.to_owned(),
                ..LinkStatus::default()
            };
        }
        for (_, s) in &mut rest {
            for (into, from) in [
                (&mut total.flow_counts, &s.flow_counts),
                (&mut total.nat, &s.nat),
                (&mut total.session, &s.session),
                (&mut total.sockets, &s.sockets),
                (&mut total.driver, &s.driver),
                (&mut total.peer_stats, &s.peer_stats),
            ] {
                add_counters(into, from);
            }
            total.os_sockets += s.os_sockets;
            total.flows.append(&mut s.flows);
            total.forwards.append(&mut s.forwards);
        }
        // Process-wide counters are in every board's snapshot: once, not summed.
        total.session.extend(qbkit_link::auth::COUNTERS.named());
        total.driver.extend(control::COUNTERS.named());
        transport.clone_into(&mut total.transport);
        total.boards = list;
        Some(total)
    }
}

/// A connected control client.
pub(crate) type ControlStream = platform::ControlStream;

/// A request read from a control client, with the client to answer.
pub(crate) type ControlMsg = Incoming<Request, ControlStream>;

/// Binds the control channel at `path` and serves it into `to_driver` (until that closes).
pub(crate) fn serve(
    path: &Path,
    to_driver: tokio::sync::mpsc::Sender<ControlMsg>,
) -> io::Result<()> {
    control::serve(platform::control_listen(path)?, to_driver);
    Ok(())
}

/// A current-thread runtime for the client commands (`status`, `forward`, `connect`).
fn client_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Client: sends `request` and returns the daemon's JSON answer (within 5 s).
pub fn request(path: &Path, request: &Request) -> io::Result<String> {
    client_runtime()?.block_on(async {
        let s = tokio::time::timeout(control::CLIENT_TIMEOUT, platform::control_connect(path))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the daemon did not answer"))??;
        control::exchange(s, request).await
    })
}

/// Client: reads the daemon's status document from `path`.
pub fn query(path: &Path) -> io::Result<String> {
    request(path, &Request::default())
}

/// Client of `qbkit-host connect`: asks the daemon for a connection to the board's port and
/// waits until the board accepted. The returned stream then carries that connection's bytes.
/// `board` names the board when the daemon serves several.
pub async fn connect_stream(
    path: &Path,
    target: &str,
    board: Option<&str>,
) -> io::Result<platform::ControlClient> {
    use tokio::io::AsyncWriteExt as _;
    let mut s = platform::control_connect(path).await?;
    let mut line = serde_json::to_vec(&Request::Connect {
        target: target.to_owned(),
        board: board.map(str::to_owned),
    })
    .map_err(io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line).await?;
    // The board answers within a round trip; a silent one within the NAT's connect timeout.
    let reply = tokio::time::timeout(Duration::from_secs(90), control::read_line(&mut s))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer from the daemon"))??;
    let reply: Reply = serde_json::from_slice(&reply).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the daemon closed the connection without an answer",
        )
    })?;
    if reply.ok {
        Ok(s)
    } else {
        Err(io::Error::other(
            reply.error.unwrap_or_else(|| "refused".to_owned()),
        ))
    }
}

/// `qbkit-host connect`: [`connect_stream`], then `input` → board and board → `output`
/// (flushed after every read: an interactive ssh session must not wait for a buffer to fill)
/// until the board's side closes. At the end of `input` the connection is half-closed, so the
/// board sees FIN and can still answer (Windows' named pipes cannot half-close: there the end
/// of `input` does not reach the board, and the connection ends when the board closes).
pub fn connect(
    path: &Path,
    target: &str,
    board: Option<&str>,
    input: impl tokio::io::AsyncRead + Unpin,
    output: impl tokio::io::AsyncWrite + Unpin,
) -> io::Result<()> {
    let rt = client_runtime()?;
    let r = rt.block_on(async {
        let s = connect_stream(path, target, board).await?;
        copy_both_ways(s, input, output).await
    });
    // A blocking stdin read may still be pending: do not wait for it.
    rt.shutdown_background();
    r
}

async fn copy_both_ways(
    s: platform::ControlClient,
    mut input: impl tokio::io::AsyncRead + Unpin,
    mut output: impl tokio::io::AsyncWrite + Unpin,
) -> io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut down, mut up) = tokio::io::split(s);
    let upload = async {
        let _ = tokio::io::copy(&mut input, &mut up).await;
        let _ = up.shutdown().await;
        std::future::pending::<()>().await;
    };
    let download = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = down.read(&mut buf).await?;
            if n == 0 {
                return io::Result::Ok(());
            }
            if output.write_all(&buf[..n]).await.is_err() || output.flush().await.is_err() {
                return Ok(());
            }
        }
    };
    tokio::select! {
        () = upload => Ok(()),
        r = download => r,
    }
}

/// The first flows as a table (`status`).
fn render_flows(flows: &[FlowStatus]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n{:>6} {:4} {:3} {:21} {:21} {:12} {:>10} {:>10}",
        "id", "prot", "dir", "board", "destination", "state", "up B", "down B"
    );
    for f in flows.iter().take(50) {
        let _ = writeln!(
            o,
            "{:>6} {:4} {:3} {:21} {:21} {:12} {:>10} {:>10}",
            f.id,
            f.protocol,
            f.direction,
            f.src,
            f.dst,
            f.state,
            f.bytes_from_board,
            f.bytes_to_board
        );
    }
    if flows.len() > 50 {
        let _ = writeln!(o, "… {} more (use --json)", flows.len() - 50);
    }
    o
}

/// ForwardsData as a table (`status`, `forward list`).
pub fn render_forwards(forwards: &[ForwardStatus]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:32} {:>6} {:>6} {:>8} {:>12} {:>12}",
        "forward", "conns", "active", "refused", "to board B", "from board B"
    );
    for f in forwards {
        let _ = writeln!(
            o,
            "{:32} {:>6} {:>6} {:>8} {:>12} {:>12}",
            f.spec, f.connections, f.active, f.refused, f.bytes_to_board, f.bytes_from_board
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board_doc(connected: bool, rx: u64, drops: u64) -> Status {
        serde_json::from_value(serde_json::json!({
            "version": "0", "pid": 1, "uptime_s": 1.0, "rss_bytes": null, "transport": "-",
            "link": {"connected": connected, "description": "unix-listen:///l", "session":
                     if connected { "up" } else { "connecting" }, "peer": "b"},
            "flow_counts": {"tcp": 1}, "os_sockets": 1,
            "nat": {"drop_board_queue_full": drops}, "session": {"rx_bytes": rx, "tx_bytes": 7},
            "sockets": {}, "driver": {}, "peer_stats": {},
            "flows": [{"id": 1, "protocol": "tcp", "src": "10.47.0.2:1", "dst": "192.0.2.1:80",
                       "os_dst": "192.0.2.1:80", "state": "established", "bytes_from_board": 0,
                       "bytes_to_board": 0, "idle_ms": 0, "direction": "out"}],
        }))
        .unwrap()
    }

    fn id(name: &str, serial: Option<&str>) -> BoardId {
        BoardId {
            name: name.into(),
            serial: serial.map(Into::into),
        }
    }

    #[test]
    fn host_status_is_one_boards_or_every_boards_totals() {
        let one = Status::host(
            "unix-listen:///l",
            vec![(id("board-1", None), board_doc(true, 5, 0))],
        )
        .unwrap();
        assert_eq!(one.link.description.as_deref(), Some("unix-listen:///l"));
        assert_eq!(one.boards.len(), 1);
        assert_eq!(
            (one.boards[0].name.as_str(), one.boards[0].rx_bytes),
            ("board-1", 5)
        );
        let boards = vec![
            (id("board-1", None), board_doc(true, 5, 1)),
            (id("lab-b", Some("MB-2")), board_doc(false, 10, 2)),
        ];
        let all = Status::host("unix-listen:///l", boards).unwrap();
        assert!(all.link.connected, "one board has a link");
        assert_eq!(all.link.session, "partly up");
        assert_eq!(all.nat["drop_board_queue_full"], 3);
        assert_eq!(all.session["rx_bytes"], 15);
        assert_eq!(
            (all.flow_counts["tcp"], all.flows.len(), all.os_sockets),
            (2, 2, 2)
        );
        let names: Vec<_> = all.boards.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["board-1", "lab-b"]);
        assert_eq!(all.boards[1].serial.as_deref(), Some("MB-2"));
        let text = all.render();
        assert!(text.contains("\nBOARD "), "{text}");
        assert!(text.contains("lab-b (MB-2)         connecting"), "{text}");
        assert!(Status::host("x", Vec::new()).is_none());
    }

    #[test]
    fn late_segments_are_not_shown_as_faults() {
        let doc = serde_json::json!({
            "version": "0", "pid": 1, "uptime_s": 1.0, "rss_bytes": null, "transport": "usb",
            "link": {"connected": true, "description": null, "session": "up", "version": 1,
                     "mtu": 16384, "max_bundle": 65536, "peer": null, "rtt_us": null},
            "flow_counts": {}, "os_sockets": 0,
            "nat": {"drop_tcp_no_flow": 35, "drop_ipv6_multicast": 1, "drop_board_queue_full": 2},
            "session": {}, "sockets": {}, "driver": {}, "peer_stats": {}, "flows": [],
        });
        let s: Status = serde_json::from_value(doc).unwrap();
        let text = s.render();
        assert!(
            text.contains("drops      nat.drop_board_queue_full=2\n"),
            "{text}"
        );
        assert!(
            text.contains("35 late TCP segments after a close"),
            "{text}"
        );
        assert!(
            text.contains("1 IPv6 multicast packets (router solicitations, MLD)"),
            "{text}"
        );
        assert!(!text.contains("drop_tcp_no_flow"), "{text}");
    }

    #[test]
    fn exported_board_only_for_a_connected_usbip_listen_link() {
        let doc = |transport: &str, connected: bool| {
            let d = serde_json::json!({
                "version": "0", "pid": 1, "uptime_s": 1.0, "rss_bytes": null,
                "transport": transport,
                "link": {"connected": connected,
                         "description": "usbip-listen://127.0.0.1:3240 board 127.0.0.1:5 devid 0x0",
                         "session": "up", "version": 1, "mtu": 16384, "max_bundle": 65536,
                         "peer": "F79DD63C8B6F", "rtt_us": null},
                "flow_counts": {}, "os_sockets": 0, "nat": {}, "session": {}, "sockets": {},
                "driver": {}, "peer_stats": {}, "flows": [],
            });
            serde_json::from_value::<Status>(d).unwrap()
        };
        let b = doc("usbip-listen://127.0.0.1:3240", true)
            .exported_board()
            .unwrap();
        assert_eq!(b.serial.as_deref(), Some("F79DD63C8B6F"));
        assert!(b.link.contains("board 127.0.0.1:5"), "{}", b.link);
        assert_eq!(b.session, "up");
        assert!(
            doc("usbip-listen://127.0.0.1:3240", false)
                .exported_board()
                .is_none()
        );
        assert!(doc("usb", true).exported_board().is_none());
    }
}
