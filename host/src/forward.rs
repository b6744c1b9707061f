//! Port forwards into the board: `--forward`/`-L` specs, their laptop-side listeners, and the
//! table the driver keeps of them.
//!
//! # Theory of operation
//!
//! ```text
//!  laptop client ─▶ listener task (TCP accept / UDP recv_from) ─Inbound─▶ driver
//!  driver: Nat::open_inbound ─▶ Sockets adopts the stream / peer
//!  board ◀─ gateway:EPHEMERAL ─ NAT flow ─ OS stream ─▶ laptop client (both ways, like any flow)
//! ```
//!
//! A forward is a spec (protocol, bind address, a laptop port range mapped one to one onto a
//! board port range) plus one listener task per laptop port. A task only accepts (TCP) or
//! receives (UDP) and hands what it got to the driver through a bounded channel; everything
//! else — the flow, its limits, its bytes — is the driver's and the NAT core's, exactly as for a
//! connection the board opened. Removing a forward aborts its tasks (closing the listeners);
//! connections already open keep running until they end.
//!
//! UDP keeps one NAT flow per laptop peer (address and port), so replies from the board go back
//! to the peer that sent to it; a peer's flow ages out with the NAT's UDP timeouts.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use qbkit_nat::FlowId;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Datagrams waiting for the driver per forward before further ones are dropped and counted.
pub const UDP_QUEUE: usize = 1024;

/// Transport protocol of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP connections.
    Tcp,
    /// UDP datagrams, one flow per laptop peer.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// One `--forward` spec: `[tcp/|udp/][BIND_ADDR:]LAPTOP_PORT[-END]:BOARD_PORT[-END]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ForwardSpec {
    /// TCP or UDP.
    pub proto: Proto,
    /// Where the laptop listens (default 127.0.0.1; a forward on 127.0.0.1 listens on [::1] as
    /// well, when the laptop has it).
    pub bind: IpAddr,
    /// First laptop port.
    pub laptop_port: u16,
    /// First board port.
    pub board_port: u16,
    /// Ports in the range (1 for a single port).
    pub count: u16,
}

/// A spec that does not parse, naming the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad forward {spec:?}: {why} (expected [tcp/|udp/][BIND_ADDR:]LAPTOP_PORT[-END]:BOARD_PORT[-END], e.g. 2222:22)"
)]
pub struct SpecError {
    spec: String,
    why: String,
}

impl ForwardSpec {
    /// Parses a spec (see the type docs).
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let err = |why: String| SpecError {
            spec: s.to_owned(),
            why,
        };
        let (proto, rest) = if let Some(r) = s.strip_prefix("tcp/") {
            (Proto::Tcp, r)
        } else if let Some(r) = s.strip_prefix("udp/") {
            (Proto::Udp, r)
        } else if let Some((p, _)) = s.split_once('/') {
            return Err(err(format!("protocol {p:?} is not tcp or udp")));
        } else {
            (Proto::Tcp, s)
        };
        let (head, board) = rest
            .rsplit_once(':')
            .ok_or_else(|| err("no board port (LAPTOP_PORT:BOARD_PORT)".into()))?;
        let (bind, laptop) = match head.rsplit_once(':') {
            Some((addr, port)) if head.starts_with('[') || !addr.contains(':') => {
                (Some(addr), port)
            }
            Some(_) => return Err(err("an IPv6 bind address needs brackets: [::1]".into())),
            None => (None, head),
        };
        let bind = match bind {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(a) => {
                let a = a
                    .strip_prefix('[')
                    .and_then(|a| a.strip_suffix(']'))
                    .unwrap_or(a);
                a.parse()
                    .map_err(|_| err(format!("bind address {a:?} is not an IP address")))?
            }
        };
        let (laptop_port, laptop_n) = port_range(laptop).map_err(|w| err(format!("laptop {w}")))?;
        let (board_port, board_n) = port_range(board).map_err(|w| err(format!("board {w}")))?;
        if laptop_n != board_n {
            return Err(err(format!(
                "the laptop range has {laptop_n} ports and the board range {board_n}"
            )));
        }
        Ok(Self {
            proto,
            bind,
            laptop_port,
            board_port,
            count: laptop_n,
        })
    }

    /// The laptop-side socket address of each port in the range, with its board port.
    pub fn ports(&self) -> impl Iterator<Item = (SocketAddr, u16)> + '_ {
        (0..self.count).map(|i| {
            (
                SocketAddr::new(self.bind, self.laptop_port + i),
                self.board_port + i,
            )
        })
    }

    /// Whether the listeners are reachable from other machines.
    pub fn is_public(&self) -> bool {
        !self.bind.is_loopback()
    }
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("port {p:?} is not a port number (1-65535)")),
    };
    match s.split_once('-') {
        None => Ok((port(s)?, 1)),
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if b < a {
                return Err(format!("range {s:?} ends before it starts"));
            }
            Ok((a, b - a + 1))
        }
    }
}

impl fmt::Display for ForwardSpec {
    /// The canonical form: `tcp/127.0.0.1:2222:22`, `udp/[::1]:8000-8002:9000-9002`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |p: u16| {
            if self.count == 1 {
                p.to_string()
            } else {
                format!("{p}-{}", p + (self.count - 1))
            }
        };
        let bind = match self.bind {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        write!(
            f,
            "{}/{bind}:{}:{}",
            self.proto,
            range(self.laptop_port),
            range(self.board_port)
        )
    }
}

/// Something a listener task got for the driver.
#[derive(Debug)]
pub enum Inbound {
    /// A laptop client connected to a TCP forward.
    Tcp {
        /// The forward.
        forward: u32,
        /// The board port it maps to.
        board_port: u16,
        /// The accepted connection.
        stream: TcpStream,
        /// The client.
        peer: SocketAddr,
    },
    /// A datagram arrived on a UDP forward.
    Udp {
        /// The forward.
        forward: u32,
        /// The board port it maps to.
        board_port: u16,
        /// The forward's socket (replies leave through it).
        sock: Arc<UdpSocket>,
        /// The sender.
        peer: SocketAddr,
        /// The payload.
        payload: Vec<u8>,
    },
}

/// A forward's counters and state, as `status` and `forward list` show them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardStatus {
    /// The canonical spec (what `forward remove` takes).
    pub spec: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The laptop-side address (the first one of a range).
    pub bind: String,
    /// The board port (the first one of a range).
    pub board_port: u16,
    /// Ports in the range.
    pub ports: u16,
    /// Connections (TCP) or peer flows (UDP) opened so far.
    pub connections: u64,
    /// Of those, open now.
    pub active: u64,
    /// Connections the board refused or did not answer, or the NAT had no room for.
    pub refused: u64,
    /// Payload bytes sent to the board (closed connections, plus open ones at the snapshot).
    pub bytes_to_board: u64,
    /// Payload bytes received from the board.
    pub bytes_from_board: u64,
    /// Datagrams dropped because the driver was behind (UDP only).
    pub dropped: u64,
}

struct Entry {
    id: u32,
    spec: ForwardSpec,
    tasks: Vec<JoinHandle<()>>,
    stats: ForwardStatus,
    /// Datagrams its UDP listener tasks dropped (they run beside the driver, hence atomic).
    dropped: Arc<AtomicU64>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Who owns an inbound flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A forward (by id).
    Forward(u32),
    /// A `qbkit-host connect` client.
    Connect,
}

/// The forwards of a running driver and the inbound flows they own.
pub struct Forwards {
    entries: Vec<Entry>,
    next_id: u32,
    tx: mpsc::Sender<Inbound>,
    /// Live inbound flows → owner.
    flows: HashMap<FlowId, Owner>,
    /// UDP peers (forward, board port, peer) → their flow, and back.
    udp_peers: HashMap<UdpPeer, FlowId>,
    udp_flow_key: HashMap<FlowId, UdpPeer>,
}

/// A laptop peer of one port of a UDP forward: (forward, board port, peer address).
type UdpPeer = (u32, u16, SocketAddr);

impl fmt::Debug for Forwards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwards")
            .field("forwards", &self.entries.len())
            .field("flows", &self.flows.len())
            .finish_non_exhaustive()
    }
}

impl Forwards {
    /// An empty table whose listeners send to `tx`.
    pub fn new(tx: mpsc::Sender<Inbound>) -> Self {
        Self {
            entries: Vec::new(),
            next_id: 1,
            tx,
            flows: HashMap::new(),
            udp_peers: HashMap::new(),
            udp_flow_key: HashMap::new(),
        }
    }

    /// Opens the listeners of `spec` (all or none) and starts their tasks. Must run inside the
    /// tokio runtime.
    pub fn add(&mut self, spec: ForwardSpec) -> io::Result<()> {
        if self.entries.iter().any(|e| e.spec == spec) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("forward {spec} exists already"),
            ));
        }
        let id = self.next_id;
        let dropped = Arc::<AtomicU64>::default();
        let listen = |addr: SocketAddr, board_port: u16| -> io::Result<JoinHandle<()>> {
            Ok(match spec.proto {
                Proto::Tcp => {
                    let l = bind_tcp(addr)?;
                    tokio::spawn(accept_loop(l, id, board_port, self.tx.clone()))
                }
                Proto::Udp => {
                    let s = Arc::new(bind_udp(addr)?);
                    tokio::spawn(recv_loop(
                        s,
                        id,
                        board_port,
                        self.tx.clone(),
                        Arc::clone(&dropped),
                    ))
                }
            })
        };
        let mut tasks = Vec::new();
        for (addr, board_port) in spec.ports() {
            tasks.push(listen(addr, board_port)?);
            // A forward on 127.0.0.1 (the default) listens on [::1] too, where `localhost`
            // often resolves first; a laptop without IPv6 loopback keeps the IPv4 listener.
            if addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) {
                let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port());
                match listen(v6, board_port) {
                    Ok(t) => tasks.push(t),
                    Err(e) => {
                        tracing::debug!(%v6, error = %e, "forward: no IPv6 loopback listener");
                    }
                }
            }
        }
        self.next_id += 1;
        if spec.is_public() {
            tracing::warn!(forward = %spec, "the board's port is now reachable from the networks of {}", spec.bind);
        }
        tracing::info!(forward = %spec, "forward added");
        self.entries.push(Entry {
            id,
            spec,
            tasks,
            stats: ForwardStatus {
                spec: spec.to_string(),
                protocol: spec.proto.to_string(),
                bind: SocketAddr::new(spec.bind, spec.laptop_port).to_string(),
                board_port: spec.board_port,
                ports: spec.count,
                ..ForwardStatus::default()
            },
            dropped,
        });
        Ok(())
    }

    /// Closes the listeners of `spec`; open connections keep running.
    pub fn remove(&mut self, spec: &ForwardSpec) -> io::Result<()> {
        let i = self
            .entries
            .iter()
            .position(|e| e.spec == *spec)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no forward {spec}")))?;
        self.entries.remove(i);
        tracing::info!(forward = %spec, "forward removed");
        Ok(())
    }

    fn stats(&mut self, id: u32) -> Option<&mut ForwardStatus> {
        self.entries
            .iter_mut()
            .find(|e| e.id == id)
            .map(|e| &mut e.stats)
    }

    /// A new inbound flow of `owner` is open.
    pub fn opened(&mut self, flow: FlowId, owner: Owner) {
        self.flows.insert(flow, owner);
        if let Owner::Forward(id) = owner
            && let Some(s) = self.stats(id)
        {
            s.connections += 1;
            s.active += 1;
        }
    }

    /// A forward could not open a flow (the NAT had no room, no board session).
    pub fn refused(&mut self, forward: u32) {
        if let Some(s) = self.stats(forward) {
            s.refused += 1;
        }
    }

    /// An inbound flow ended with these byte counts; `refused` when the board never accepted it.
    pub fn closed(&mut self, flow: FlowId, to_board: u64, from_board: u64, refused: bool) {
        let Some(owner) = self.flows.remove(&flow) else {
            return;
        };
        if let Some(key) = self.udp_flow_key.remove(&flow) {
            self.udp_peers.remove(&key);
        }
        if let Owner::Forward(id) = owner
            && let Some(s) = self.stats(id)
        {
            s.active = s.active.saturating_sub(1);
            s.bytes_to_board += to_board;
            s.bytes_from_board += from_board;
            if refused {
                s.refused += 1;
            }
        }
    }

    /// The flow of a UDP forward's peer, if one is open.
    pub fn udp_flow(&self, forward: u32, board_port: u16, peer: SocketAddr) -> Option<FlowId> {
        self.udp_peers.get(&(forward, board_port, peer)).copied()
    }

    /// Records the flow of a new UDP peer.
    pub fn udp_opened(&mut self, flow: FlowId, forward: u32, board_port: u16, peer: SocketAddr) {
        self.udp_peers.insert((forward, board_port, peer), flow);
        self.udp_flow_key.insert(flow, (forward, board_port, peer));
        self.opened(flow, Owner::Forward(forward));
    }

    /// Every forward's status; `live` gives the bytes (to, from the board) of an open flow.
    pub fn status(&self, live: impl Fn(FlowId) -> Option<(u64, u64)>) -> Vec<ForwardStatus> {
        let mut out: Vec<ForwardStatus> = self
            .entries
            .iter()
            .map(|e| ForwardStatus {
                dropped: e.dropped.load(Ordering::Relaxed),
                ..e.stats.clone()
            })
            .collect();
        for (flow, owner) in &self.flows {
            let Owner::Forward(id) = owner else { continue };
            if let (Some(i), Some((to, from))) =
                (self.entries.iter().position(|e| e.id == *id), live(*flow))
            {
                out[i].bytes_to_board += to;
                out[i].bytes_from_board += from;
            }
        }
        out
    }

    /// One line per forward for front ends: `tcp 127.0.0.1:2222 → board:22`.
    pub fn summary(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| {
                let name = match (e.spec.proto, e.spec.board_port) {
                    (Proto::Tcp, 22) => "ssh ".to_owned(),
                    (Proto::Tcp, 80 | 8080) => "http ".to_owned(),
                    _ => String::new(),
                };
                format!(
                    "{name}{} → {}:{}",
                    e.stats.bind, e.spec.proto, e.spec.board_port
                )
            })
            .collect()
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    #[cfg(unix)]
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    TcpListener::from_std(s.into())
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(addr)?;
    // tokio needs it: a blocking socket would block the driver's one thread in recv_from.
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

async fn accept_loop(l: TcpListener, forward: u32, board_port: u16, tx: mpsc::Sender<Inbound>) {
    loop {
        match l.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let ev = Inbound::Tcp {
                    forward,
                    board_port,
                    stream,
                    peer,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "forward accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn recv_loop(
    sock: Arc<UdpSocket>,
    forward: u32,
    board_port: u16,
    tx: mpsc::Sender<Inbound>,
    dropped: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                let ev = Inbound::Udp {
                    forward,
                    board_port,
                    sock: Arc::clone(&sock),
                    peer,
                    payload: buf[..n].to_vec(),
                };
                match tx.try_send(ev) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            // ICMP errors from earlier replies (ECONNREFUSED) and the like: keep receiving.
            Err(e) => tracing::debug!(error = %e, "forward recv failed"),
        }
    }
}

/// Parses `connect`'s target: `PORT` (the board's IPv4 address), `BOARD_IPV4:PORT` or
/// `[BOARD_IPV6]:PORT`; the address must be one of the board's (`board`: IPv4, IPv6).
pub fn connect_target(s: &str, board: (Ipv4Addr, Ipv6Addr)) -> Result<SocketAddr, String> {
    let (addr, port) = match s.rsplit_once(':') {
        Some((a, p)) => (Some(a), p),
        None => (None, s),
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("{port:?} is not a port number (1-65535)")),
    };
    let Some(a) = addr else {
        return Ok(SocketAddr::new(board.0.into(), port));
    };
    let ip = match a.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .and_then(|a6| a6.parse::<Ipv6Addr>().ok())
            .map(IpAddr::V6),
        None if a.contains(':') => {
            return Err(format!("an IPv6 address needs brackets: [{a}]:{port}"));
        }
        None => a.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
    .ok_or_else(|| format!("{a:?} is not an IP address"))?;
    if ip != IpAddr::V4(board.0) && ip != IpAddr::V6(board.1) {
        return Err(format!(
            "{ip} is not the board's address ({} or [{}])",
            board.0, board.1
        ));
    }
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A default (127.0.0.1) forward takes connections on [::1] too, for the same board port.
    #[tokio::test]
    async fn loopback_forwards_listen_on_both_loopbacks() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("SKIP: this machine has no IPv6 loopback");
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let (tx, mut rx) = mpsc::channel(4);
        let mut fwd = Forwards::new(tx);
        fwd.add(ForwardSpec::parse(&format!("{port}:22")).unwrap())
            .unwrap();
        for host in ["127.0.0.1", "[::1]"] {
            let _client = TcpStream::connect(format!("{host}:{port}")).await.unwrap();
            let Some(Inbound::Tcp {
                board_port, peer, ..
            }) = rx.recv().await
            else {
                panic!("no connection from {host}")
            };
            assert_eq!(board_port, 22);
            assert_eq!(peer.is_ipv6(), host.starts_with('['), "{host}");
        }
        // Two listeners for the one port: 127.0.0.1 and [::1].
        assert_eq!(fwd.entries[0].tasks.len(), 2, "one listener per loopback");
    }

    #[test]
    fn specs_parse_and_print_canonically() {
        for (s, want) in [
            ("2222:22", "tcp/127.0.0.1:2222:22"),
            ("tcp/2222:22", "tcp/127.0.0.1:2222:22"),
            ("udp/5353:53", "udp/127.0.0.1:5353:53"),
            ("0.0.0.0:8080:80", "tcp/0.0.0.0:8080:80"),
            ("8000-8010:8000-8010", "tcp/127.0.0.1:8000-8010:8000-8010"),
            ("[::1]:2222:22", "tcp/[::1]:2222:22"),
            (
                "udp/[::]:7000-7001:9000-9001",
                "udp/[::]:7000-7001:9000-9001",
            ),
        ] {
            let spec = ForwardSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(spec.to_string(), want, "{s}");
            assert_eq!(
                ForwardSpec::parse(want).unwrap(),
                spec,
                "round trip of {want}"
            );
        }
        let r = ForwardSpec::parse("8000-8002:9000-9002").unwrap();
        let ports: Vec<_> = r.ports().map(|(a, b)| (a.port(), b)).collect();
        assert_eq!(ports, vec![(8000, 9000), (8001, 9001), (8002, 9002)]);
        assert!(!r.is_public());
        assert!(ForwardSpec::parse("0.0.0.0:80:80").unwrap().is_public());
    }

    #[test]
    fn bad_specs_name_the_wrong_part() {
        for (s, part) in [
            ("22", "no board port"),
            ("sctp/1:2", "protocol \"sctp\""),
            ("abc:22", "laptop port \"abc\""),
            ("2222:0", "board port \"0\""),
            ("2222:70000", "board port \"70000\""),
            ("1.2.3:2222:22", "bind address \"1.2.3\""),
            ("::1:2222:22", "brackets"),
            ("8000-8010:80", "11 ports"),
            ("9-8:9-8", "ends before it starts"),
        ] {
            let e = ForwardSpec::parse(s).expect_err(s).to_string();
            assert!(e.contains(part), "{s}: {e}");
            assert!(e.contains("e.g. 2222:22"), "{e}");
        }
    }

    #[test]
    fn connect_targets() {
        let board = (Ipv4Addr::new(10, 47, 0, 2), "fd47::2".parse().unwrap());
        let at = |s: &str| Ok(s.parse::<SocketAddr>().unwrap());
        assert_eq!(connect_target("22", board), at("10.47.0.2:22"));
        assert_eq!(connect_target("10.47.0.2:22", board), at("10.47.0.2:22"));
        assert_eq!(connect_target("[fd47::2]:22", board), at("[fd47::2]:22"));
        assert_eq!(
            connect_target("[fd47:0::2]:2222", board),
            at("[fd47::2]:2222")
        );
        for (bad, why) in [
            (
                "10.47.0.9:22",
                "not the board's address (10.47.0.2 or [fd47::2])",
            ),
            ("[fd47::1]:22", "not the board's address"),
            ("[::ffff:10.47.0.2]:22", "not the board's address"),
            ("fd47::2:22", "needs brackets: [fd47::2]:22"),
            ("[fd47::2:22", "is not an IP address"),
            ("board:22", "is not an IP address"),
            ("0", "not a port number"),
            ("ssh", "not a port number"),
            ("[fd47::2]:", "not a port number"),
        ] {
            let e = connect_target(bad, board).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
