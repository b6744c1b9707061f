//! The OS side of the NAT: carries out [`NatEvent`]s on real non-blocking sockets and reports
//! what the sockets did back as [`OsEvent`]s, which the driver feeds into the NAT.
//!
//! # NAT and sockets talk by events
//!
//! [`Sockets::handle_event`] never calls the NAT: it opens, writes, shuts down or closes sockets,
//! and what the OS answered (connected, refused, a datagram, an echo reply, an error) is queued.
//! The driver takes the queue with [`Sockets::poll_event`] and hands each event to the core's
//! `handle_os_event`. The only direct calls are the zero-copy TCP data calls of a socket service
//! ([`TcpData`]: the OS `read` into the flow's board-bound buffer, the OS `write` from its
//! board-sent bytes), made by [`Sockets::service_ready`]. A flow that the NAT says has data or
//! room (`TcpReadable`, `TcpWritable`), a socket just opened, or whose connect completed, is
//! scheduled for that service instead of being serviced at once; the driver runs
//! [`Sockets::service_scheduled`] before the core's output goes to the link, so a request of the
//! board reaches its server in the same work pass (not one bundle later). Datagram payloads wait in one buffer until polled; a service
//! pass stops early (the rest of its flows wait for the next pass) once [`MAX_QUEUED_BYTES`] wait.
//!
//! # Theory of operation
//!
//! Every flow of the core that needs the OS owns one socket here: a TCP stream (connected with a
//! non-blocking `connect`, so the board's SYN is answered only once the OS says yes), a
//! *connected* UDP socket (so the OS reports ICMP errors as `ECONNREFUSED` and friends), or an
//! unprivileged ping socket. Sockets are registered with tokio's reactor, but no task is spawned
//! per flow: each socket gets two small wakers (read, write) that push the flow's token into one
//! [`ReadyQueue`], and the driver's single task services exactly the sockets that became ready.
//! This is readiness fan-in, as `FuturesUnordered` does it, without per-flow futures or channels.
//!
//! # Backpressure (never buffer without bound)
//!
//! - OS → board: a TCP socket is read only *into* the core's board-bound buffer
//!   (`Nat::tcp_send_with` hands out its free space and we `read` straight into it). When the
//!   core has no room the flow is `paused` and its read interest dropped until `TcpWritable`.
//!   The kernel's receive buffer then fills and the server's TCP stalls.
//! - Board → OS: board bytes stay in the core (its advertised window shrinks) until the OS
//!   socket takes them (`Nat::tcp_recv_with` with `write` inside); on `WouldBlock` we wait for
//!   write readiness. The board's TCP stalls on the closed window.
//! - UDP/ICMP are lossy: a datagram the OS will not take now is dropped and counted.
//!
//! # Inbound flows (forwards, `connect`)
//!
//! A connection the laptop side opened (a forward's accepted TCP stream, a `qbkit-host connect`
//! client on the control socket) is *adopted* for a flow the core dials towards the board
//! (`Nat::open_inbound`): from then on it is serviced exactly like an outbound flow's socket.
//! It is not read until the board accepted (`TcpEstablished`; the core takes no bytes before).
//! A `connect` client first gets one line, `{"ok":true}` or `{"error":…}`, then raw bytes. A UDP
//! forward's peer is a flow whose datagrams for the board come from the forward's listener task
//! and whose replies leave through the forward's shared socket to that peer. When an inbound flow
//! ends, its byte counts are reported through [`Sockets::take_closed`].
//!
//! # Fairness
//!
//! One readiness service moves at most [`TCP_BUDGET`] bytes or [`DGRAM_BUDGET`] datagrams for a
//! flow; a flow with more to do is put on the `again` list and serviced on the next pass, after
//! the driver has drained the core's output to the link.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use qbkit_nat::{ConnectError, DatagramError, FlowError, FlowId, Nat, NatEvent, OsEvent};
use serde::Serialize;
use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpStream, UdpSocket};

use crate::platform;

/// Most bytes moved for one TCP flow in one direction per readiness service.
pub const TCP_BUDGET: usize = 1 << 20;
/// Most datagrams received for one UDP or ICMP flow per readiness service.
pub const DGRAM_BUDGET: usize = 64;
/// Receive scratch for one datagram (the largest UDP payload).
const DGRAM_BUF: usize = 65536;
/// Datagram bytes queued for the NAT after which a service pass stops (see the module docs).
pub const MAX_QUEUED_BYTES: usize = 1 << 20;
/// Closed flows after which the allocator may be trimmed (see `Sockets::note_closed`).
const TRIM_AFTER_CLOSED: usize = 64;

/// Which readiness a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read = 0,
    Write = 1,
}

fn token(flow: FlowId, dir: Dir) -> u64 {
    (flow.0 << 1) | dir as u64
}

fn untoken(t: u64) -> (FlowId, Dir) {
    (
        FlowId(t >> 1),
        if t & 1 == 0 { Dir::Read } else { Dir::Write },
    )
}

/// Tokens of sockets that became ready, and the driver task's waker.
#[derive(Debug, Default)]
pub struct ReadyQueue {
    inner: Mutex<ReadyInner>,
}

#[derive(Debug, Default)]
struct ReadyInner {
    tokens: Vec<u64>,
    waker: Option<Waker>,
}

impl ReadyQueue {
    fn lock(&self) -> MutexGuard<'_, ReadyInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, t: u64) {
        let mut g = self.lock();
        g.tokens.push(t);
        if let Some(w) = g.waker.take() {
            w.wake();
        }
    }

    fn take(&self, out: &mut Vec<u64>) {
        let mut g = self.lock();
        std::mem::swap(&mut g.tokens, out);
    }

    /// Ready when some socket became ready since the last [`Sockets::service_ready`].
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut g = self.lock();
        if g.tokens.is_empty() {
            g.waker = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

struct TokenWaker {
    token: u64,
    queue: Arc<ReadyQueue>,
}

impl Wake for TokenWaker {
    fn wake(self: Arc<Self>) {
        self.queue.push(self.token);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.push(self.token);
    }
}

/// Counters of the OS side; every drop has its own.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct SocketCounters {
    /// OS TCP connects started.
    pub tcp_connects: u64,
    /// OS TCP connects that failed (refused, unreachable, …).
    pub tcp_connect_failures: u64,
    /// TCP sockets that failed with an error after connecting (reported as RST to the board).
    pub tcp_resets_from_os: u64,
    /// TCP sockets closed with SO_LINGER 0 (RST to the server).
    pub tcp_resets_to_os: u64,
    /// Bytes read from OS TCP sockets (to the board).
    pub tcp_bytes_from_os: u64,
    /// Bytes written to OS TCP sockets (from the board).
    pub tcp_bytes_to_os: u64,
    /// UDP sockets opened.
    pub udp_opens: u64,
    /// UDP sockets that could not be opened.
    pub udp_open_failures: u64,
    /// Dropped: UDP datagram the OS would not take now (send buffer full).
    pub drop_udp_send_would_block: u64,
    /// Dropped: UDP datagram the OS rejected (error reported to the core).
    pub drop_udp_send_error: u64,
    /// UDP datagrams received from the OS.
    pub udp_datagrams_from_os: u64,
    /// Ping sockets opened.
    pub icmp_opens: u64,
    /// Echo requests the OS would not take or rejected.
    pub drop_icmp_send: u64,
    /// Echo requests when ping sockets are not allowed (reported as `IcmpUnavailable`).
    pub icmp_unavailable: u64,
    /// Packets on a ping socket that are not echo replies.
    pub drop_icmp_not_reply: u64,
    /// Events naming a flow this side does not know (already closed).
    pub drop_unknown_flow: u64,
    /// Laptop-side connections adopted for inbound flows (forwards, `connect`).
    pub inbound_adopted: u64,
    /// Dropped: a board reply on a UDP forward the OS would not send to the peer.
    pub drop_udp_forward_send: u64,
    /// Times the allocator was asked to give freed memory back after many flows closed.
    pub allocator_trims: u64,
}

/// A stream socket of a flow: an OS TCP connection, or a `qbkit-host connect` client.
#[derive(Debug)]
pub enum OsStream {
    /// A TCP connection (outbound flows, forward listeners).
    Tcp(TcpStream),
    /// A control-socket client that asked for `connect`.
    Control(platform::ControlStream),
}

impl OsStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Tcp(s) => s.poll_read_ready(cx),
            Self::Control(s) => s.poll_read_ready(cx),
        }
    }
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Tcp(s) => s.poll_write_ready(cx),
            Self::Control(s) => s.poll_write_ready(cx),
        }
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.try_read(buf),
            Self::Control(s) => s.try_read(buf),
        }
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.try_write(buf),
            Self::Control(s) => s.try_write(buf),
        }
    }
    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => SockRef::from(s).shutdown(Shutdown::Write),
            Self::Control(s) => platform::control_shutdown_write(s),
        }
    }
    /// Closing after this sends a RST (TCP only: a unix stream just closes).
    fn set_reset_on_close(&self) {
        match self {
            Self::Tcp(s) => {
                let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
            }
            Self::Control(_) => {}
        }
    }
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Self::Tcp(s) => Some(s),
            Self::Control(_) => None,
        }
    }
}

/// An inbound flow that ended (see [`Sockets::take_closed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedInbound {
    /// The flow.
    pub flow: FlowId,
    /// Payload bytes it carried to the board.
    pub to_board: u64,
    /// Payload bytes it carried from the board.
    pub from_board: u64,
    /// The board never accepted it (refused, no answer).
    pub refused: bool,
}

struct Wakers {
    read: Waker,
    write: Waker,
}

impl Wakers {
    fn new(flow: FlowId, queue: &Arc<ReadyQueue>) -> Self {
        let mk = |dir| {
            Waker::from(Arc::new(TokenWaker {
                token: token(flow, dir),
                queue: Arc::clone(queue),
            }))
        };
        Self {
            read: mk(Dir::Read),
            write: mk(Dir::Write),
        }
    }
}

#[allow(
    clippy::struct_excessive_bools,
    reason = "independent per-direction states of one connection"
)]
struct TcpFlow {
    stream: OsStream,
    wakers: Wakers,
    /// The non-blocking connect has not completed yet.
    connecting: bool,
    /// The core's board-bound buffer is full: do not read until `TcpWritable`.
    paused: bool,
    /// The OS side sent EOF (reported as `TcpEof`).
    read_closed: bool,
    /// The board has data for the OS socket (`TcpReadable` seen, not yet drained).
    board_data: bool,
    /// The laptop opened this flow (forward, `connect`): report it in `closed` when it ends.
    inbound: bool,
    /// The board accepted it (`TcpEstablished`); always true for outbound flows.
    established: bool,
    /// A `connect` client still waits for its reply line.
    greeting: bool,
    /// Payload bytes to / from the board.
    to_board: u64,
    from_board: u64,
}

impl TcpFlow {
    /// A stream of `flow`: an outbound OS connect still `connecting`, or a laptop-side stream
    /// adopted for an `inbound` flow (not read until the board accepted it).
    fn new(
        flow: FlowId,
        queue: &Arc<ReadyQueue>,
        stream: OsStream,
        inbound: bool,
        greeting: bool,
    ) -> Self {
        Self {
            stream,
            wakers: Wakers::new(flow, queue),
            connecting: !inbound,
            // An inbound stream waits for `TcpEstablished` → `TcpWritable`.
            paused: inbound,
            read_closed: false,
            board_data: false,
            inbound,
            established: !inbound,
            greeting,
            to_board: 0,
            from_board: 0,
        }
    }
}

struct DgramFlow {
    sock: UdpSocket,
    wakers: Wakers,
}

enum OsFlow {
    Tcp(TcpFlow),
    Udp(DgramFlow),
    /// A peer of a UDP forward: the board's replies go to `peer` through the forward's socket.
    UdpPeer {
        sock: Arc<UdpSocket>,
        peer: SocketAddr,
        to_board: u64,
        from_board: u64,
    },
    /// A ping socket; `None` until the first echo request opened it.
    Icmp(Option<DgramFlow>),
}

/// The OS sockets of every flow. See the module docs.
pub struct Sockets {
    flows: HashMap<FlowId, OsFlow>,
    queue: Arc<ReadyQueue>,
    /// Tokens that ran out of budget: service again on the next pass.
    again: Vec<u64>,
    /// Tokens of flows the core gave work (data or room, a new socket, a completed connect):
    /// serviced in the same work pass by [`Sockets::service_scheduled`].
    scheduled: Vec<u64>,
    scratch_tokens: Vec<u64>,
    buf: Vec<u8>,
    counters: SocketCounters,
    closed: Vec<ClosedInbound>,
    out: Outbox,
    /// Flows closed since the allocator was last trimmed (see `note_closed`).
    closed_since_trim: usize,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockets")
            .field("flows", &self.flows.len())
            .finish_non_exhaustive()
    }
}

impl Default for Sockets {
    fn default() -> Self {
        Self::new()
    }
}

impl Sockets {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            flows: HashMap::new(),
            queue: Arc::new(ReadyQueue::default()),
            again: Vec::new(),
            scheduled: Vec::new(),
            scratch_tokens: Vec::new(),
            buf: vec![0; DGRAM_BUF],
            counters: SocketCounters::default(),
            closed: Vec::new(),
            out: Outbox::default(),
            closed_since_trim: 0,
        }
    }

    /// The readiness queue the driver waits on.
    pub fn ready_queue(&self) -> Arc<ReadyQueue> {
        Arc::clone(&self.queue)
    }

    /// Open OS sockets.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// True when no socket is open.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The counters.
    pub fn counters(&self) -> &SocketCounters {
        &self.counters
    }

    /// True when some flow ran out of budget, or is scheduled, and wants another pass without
    /// waiting.
    pub fn has_more(&self) -> bool {
        !self.again.is_empty() || !self.scheduled.is_empty()
    }

    /// The next thing an OS socket did, for the NAT's `handle_os_event`, in the order it
    /// happened.
    pub fn poll_event(&mut self) -> Option<OsEvent<'_>> {
        self.out.poll()
    }

    /// Carries out one request of the core; what the OS answered is queued for
    /// [`poll_event`](Self::poll_event).
    pub fn handle_event(&mut self, ev: NatEvent) {
        match ev {
            NatEvent::TcpConnect { flow, src, dst } => self.tcp_connect(flow, src, dst),
            NatEvent::TcpEstablished { flow } => self.tcp_established(flow),
            NatEvent::TcpReadable { flow } => {
                if let Some(OsFlow::Tcp(t)) = self.flows.get_mut(&flow) {
                    t.board_data = true;
                    self.scheduled.push(token(flow, Dir::Write));
                } else {
                    self.counters.drop_unknown_flow += 1;
                }
            }
            NatEvent::TcpWritable { flow } => {
                if let Some(OsFlow::Tcp(t)) = self.flows.get_mut(&flow) {
                    t.paused = false;
                    self.scheduled.push(token(flow, Dir::Read));
                } else {
                    self.counters.drop_unknown_flow += 1;
                }
            }
            NatEvent::TcpShutdown { flow } => {
                if let Some(OsFlow::Tcp(t)) = self.flows.get(&flow) {
                    if let Err(e) = t.stream.shutdown_write() {
                        tracing::debug!(%flow, error = %e, "shutdown(write) failed");
                    }
                } else {
                    self.counters.drop_unknown_flow += 1;
                }
            }
            NatEvent::TcpClose { flow, reset } => {
                if let Some(OsFlow::Tcp(t)) = self.flows.get(&flow) {
                    if reset {
                        self.counters.tcp_resets_to_os += 1;
                        t.stream.set_reset_on_close();
                    }
                    if t.greeting {
                        reply_line(
                            &t.stream,
                            r#"{"error":"the board refused or did not answer the connection (nothing listens on that port?)"}"#,
                        );
                    }
                    tracing::trace!(%flow, reset, "tcp flow closed");
                }
                self.remove(flow);
            }
            NatEvent::UdpOpen { flow, dst, .. } => self.udp_open(flow, dst),
            NatEvent::UdpSend { flow, payload } => self.udp_send(flow, &payload),
            NatEvent::UdpClose { flow } | NatEvent::IcmpClose { flow } => self.remove(flow),
            NatEvent::IcmpEchoRequest {
                flow,
                dst,
                seq,
                payload,
            } => self.icmp_echo(flow, dst, seq, &payload),
            other => tracing::debug!(?other, "unhandled NAT event"),
        }
    }

    /// Services every socket that became ready (and those scheduled or left over from the
    /// last pass), moving TCP bytes with the NAT's data calls. Returns true when anything was
    /// serviced.
    pub fn service_ready(&mut self, nat: &mut Nat) -> bool {
        let mut tokens = std::mem::take(&mut self.scratch_tokens);
        self.queue.take(&mut tokens);
        tokens.append(&mut self.scheduled);
        tokens.append(&mut self.again);
        self.service_tokens(nat, tokens)
    }

    /// Services only the flows the core gave work since the last service (see
    /// [`handle_event`](Self::handle_event)), so that what the board sent reaches the OS, and a
    /// completed connect or a fresh socket is looked at, before the core's output goes to the
    /// link. Returns true when anything was serviced.
    pub fn service_scheduled(&mut self, nat: &mut Nat) -> bool {
        let mut tokens = std::mem::take(&mut self.scratch_tokens);
        tokens.append(&mut self.scheduled);
        self.service_tokens(nat, tokens)
    }

    fn service_tokens(&mut self, nat: &mut Nat, mut tokens: Vec<u64>) -> bool {
        let any = !tokens.is_empty();
        let mut tokens_left = tokens.drain(..);
        for t in tokens_left.by_ref() {
            let (flow, dir) = untoken(t);
            self.service(TcpData(nat), flow, dir);
            if self.out.bytes.len() >= MAX_QUEUED_BYTES {
                break;
            }
        }
        self.again.extend(tokens_left);
        self.scratch_tokens = tokens;
        any
    }

    fn service(&mut self, nat: TcpData<'_>, flow: FlowId, dir: Dir) {
        let Some(f) = self.flows.get_mut(&flow) else {
            return; // a stale wake-up of a closed socket
        };
        let mut cx = FlowCx {
            flow,
            nat,
            out: &mut self.out,
            counters: &mut self.counters,
        };
        let outcome = match f {
            OsFlow::Tcp(t) if t.connecting => cx.tcp_check_connect(t),
            OsFlow::Tcp(t) => cx.tcp_move(t, dir),
            OsFlow::Udp(d) => cx.dgram_recv(d, &mut self.buf, false),
            OsFlow::Icmp(Some(d)) => cx.dgram_recv(d, &mut self.buf, true),
            OsFlow::Icmp(None) | OsFlow::UdpPeer { .. } => Outcome::Idle,
        };
        match outcome {
            Outcome::Idle => {}
            Outcome::Again => self.again.push(token(flow, dir)),
            Outcome::Connected => {
                // The server may have spoken first, and the board may already have data: both
                // directions once the NAT has taken `TcpConnected`.
                self.scheduled.push(token(flow, Dir::Read));
                self.scheduled.push(token(flow, Dir::Write));
            }
            Outcome::Gone => self.remove(flow),
        }
    }

    /// Drops a flow's socket; an inbound flow is reported in [`take_closed`](Self::take_closed).
    fn remove(&mut self, flow: FlowId) {
        let Some(gone) = self.flows.remove(&flow) else {
            return;
        };
        self.note_closed();
        let closed = match gone {
            OsFlow::Tcp(t) if t.inbound => ClosedInbound {
                flow,
                to_board: t.to_board,
                from_board: t.from_board,
                refused: !t.established,
            },
            OsFlow::UdpPeer {
                to_board,
                from_board,
                ..
            } => ClosedInbound {
                flow,
                to_board,
                from_board,
                refused: false,
            },
            _ => return,
        };
        self.closed.push(closed);
    }

    /// Counts a closed flow; after many closed, shrinks the table and has the allocator give
    /// the memory of the closed flows (here and in the NAT) back to the OS. A trim comes once
    /// at least [`TRIM_AFTER_CLOSED`] flows, and at least as many as are still open, closed
    /// since the last one: at most one per halving of the table, so its cost (a walk of the
    /// allocator's free lists) stays small beside the closes it follows.
    fn note_closed(&mut self) {
        self.closed_since_trim += 1;
        if self.closed_since_trim < TRIM_AFTER_CLOSED.max(self.flows.len()) {
            return;
        }
        self.closed_since_trim = 0;
        if self.flows.capacity() > 4 * self.flows.len() + 256 {
            self.flows.shrink_to(2 * self.flows.len());
        }
        platform::trim_allocator();
        self.counters.allocator_trims += 1;
    }

    /// Inbound flows that ended since the last call.
    pub fn take_closed(&mut self) -> Vec<ClosedInbound> {
        std::mem::take(&mut self.closed)
    }

    /// Bytes (to, from the board) of an open inbound flow.
    pub fn flow_bytes(&self, flow: FlowId) -> Option<(u64, u64)> {
        match self.flows.get(&flow)? {
            OsFlow::Tcp(t) => Some((t.to_board, t.from_board)),
            OsFlow::UdpPeer {
                to_board,
                from_board,
                ..
            } => Some((*to_board, *from_board)),
            _ => None,
        }
    }

    /// Takes over a laptop-side stream for an inbound flow the core is dialling
    /// (`Nat::open_inbound`). With `greeting`, the client gets `{"ok":true}` once the board
    /// accepted (or an error line if it does not) before any data.
    pub fn adopt_stream(&mut self, flow: FlowId, stream: OsStream, greeting: bool) {
        self.counters.inbound_adopted += 1;
        let t = TcpFlow::new(flow, &self.queue, stream, true, greeting);
        self.flows.insert(flow, OsFlow::Tcp(t));
    }

    /// Records a UDP forward's peer for an inbound flow (`Nat::open_inbound`).
    pub fn adopt_udp_peer(&mut self, flow: FlowId, sock: Arc<UdpSocket>, peer: SocketAddr) {
        self.counters.inbound_adopted += 1;
        self.flows.insert(
            flow,
            OsFlow::UdpPeer {
                sock,
                peer,
                to_board: 0,
                from_board: 0,
            },
        );
    }

    /// Counts a datagram a UDP forward's peer sent to the board.
    pub fn note_udp_to_board(&mut self, flow: FlowId, len: usize) {
        if let Some(OsFlow::UdpPeer { to_board, .. }) = self.flows.get_mut(&flow) {
            *to_board += len as u64;
        }
    }

    fn tcp_established(&mut self, flow: FlowId) {
        let Some(OsFlow::Tcp(t)) = self.flows.get_mut(&flow) else {
            self.counters.drop_unknown_flow += 1;
            return;
        };
        t.established = true;
        if t.greeting {
            t.greeting = false;
            if !reply_line(&t.stream, r#"{"ok":true}"#) {
                tracing::debug!(%flow, "connect client went away before the board answered");
                self.out.push(OsEvent::TcpReset { flow });
                self.remove(flow);
                return;
            }
        }
        tracing::debug!(%flow, "the board accepted an inbound connection");
    }

    fn tcp_connect(&mut self, flow: FlowId, src: SocketAddr, dst: SocketAddr) {
        self.counters.tcp_connects += 1;
        match start_connect(dst) {
            Ok(stream) => {
                tracing::trace!(%flow, %src, %dst, "tcp connect");
                let t = TcpFlow::new(flow, &self.queue, OsStream::Tcp(stream), false, false);
                self.flows.insert(flow, OsFlow::Tcp(t));
                self.scheduled.push(token(flow, Dir::Write));
            }
            Err(e) => {
                self.counters.tcp_connect_failures += 1;
                tracing::debug!(%flow, %dst, error = %e, "tcp connect failed at once");
                let error = connect_error(&e);
                self.out.push(OsEvent::TcpConnectFailed { flow, error });
            }
        }
    }

    fn udp_open(&mut self, flow: FlowId, dst: SocketAddr) {
        match open_udp(dst) {
            Ok(sock) => {
                self.counters.udp_opens += 1;
                let d = DgramFlow {
                    sock,
                    wakers: Wakers::new(flow, &self.queue),
                };
                self.flows.insert(flow, OsFlow::Udp(d));
                self.scheduled.push(token(flow, Dir::Read));
            }
            Err(e) => {
                self.counters.udp_open_failures += 1;
                tracing::debug!(%flow, %dst, error = %e, "udp socket failed");
                let error = datagram_error(&e);
                self.out.push(OsEvent::UdpError { flow, error });
                if error == DatagramError::Failed {
                    return;
                }
                // A connect that reports unreachable leaves no usable socket either.
                self.out.push(OsEvent::UdpError {
                    flow,
                    error: DatagramError::Failed,
                });
            }
        }
    }

    fn udp_send(&mut self, flow: FlowId, payload: &[u8]) {
        let d = match self.flows.get_mut(&flow) {
            Some(OsFlow::Udp(d)) => d,
            Some(OsFlow::UdpPeer {
                sock,
                peer,
                from_board,
                ..
            }) => {
                *from_board += payload.len() as u64;
                if let Err(e) = SockRef::from(&**sock).send_to(payload, &(*peer).into()) {
                    self.counters.drop_udp_forward_send += 1;
                    tracing::debug!(%flow, %peer, error = %e, "reply to a UDP forward peer not sent");
                }
                return;
            }
            _ => {
                self.counters.drop_unknown_flow += 1;
                return;
            }
        };
        // A direct send, not tokio's `try_send`: that one refuses (WouldBlock) until the
        // reactor has seen the socket writable once, which would drop the first datagram of
        // every new flow (the DNS query, the first ping).
        match SockRef::from(&d.sock).send(payload) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.counters.drop_udp_send_would_block += 1;
            }
            Err(e) => {
                self.counters.drop_udp_send_error += 1;
                let error = datagram_error(&e);
                self.out.push(OsEvent::UdpError { flow, error });
                if error == DatagramError::Failed {
                    self.flows.remove(&flow);
                }
            }
        }
    }

    fn icmp_echo(&mut self, flow: FlowId, dst: IpAddr, seq: u16, payload: &[u8]) {
        let slot = self.flows.entry(flow).or_insert(OsFlow::Icmp(None));
        let OsFlow::Icmp(slot) = slot else {
            self.counters.drop_unknown_flow += 1;
            return;
        };
        if slot.is_none() {
            match platform::ping_socket(dst).and_then(into_udp) {
                Ok(sock) => {
                    self.counters.icmp_opens += 1;
                    *slot = Some(DgramFlow {
                        sock,
                        wakers: Wakers::new(flow, &self.queue),
                    });
                }
                Err(e) => {
                    self.flows.remove(&flow);
                    if matches!(
                        e.kind(),
                        io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
                    ) || e.raw_os_error() == Some(EPERM)
                    {
                        self.counters.icmp_unavailable += 1;
                        tracing::info!(error = %e, "ping sockets unavailable; only the gateway answers pings");
                        self.out.push(OsEvent::IcmpUnavailable { flow });
                    } else {
                        self.counters.drop_icmp_send += 1;
                        tracing::debug!(%flow, %dst, error = %e, "ping socket failed");
                    }
                    return;
                }
            }
        }
        let Some(d) = slot else { return };
        let pkt = platform::icmp_echo_request(dst, seq, payload);
        if let Err(e) = SockRef::from(&d.sock).send(&pkt) {
            self.counters.drop_icmp_send += 1;
            tracing::debug!(%flow, %dst, error = %e, "echo request not sent");
        }
        self.scheduled.push(token(flow, Dir::Read));
    }
}

/// `EPERM`, which Linux returns for ping sockets outside `ping_group_range` on some kernels.
const EPERM: i32 = 1;

enum Outcome {
    /// Nothing more to do until the next wake-up.
    Idle,
    /// Budget used up: service again on the next pass.
    Again,
    /// A connect completed: service both directions.
    Connected,
    /// The socket is finished (the core was told): drop it.
    Gone,
}

fn start_connect(dst: SocketAddr) -> io::Result<TcpStream> {
    // Non-blocking from the start where the OS can (one syscall per connection, not three).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let s = Socket::new(Domain::for_address(dst), Type::STREAM.nonblocking(), None)?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if connect_in_progress(&e) => {}
        Err(e) => return Err(e),
    }
    TcpStream::from_std(std::net::TcpStream::from(s))
}

fn connect_in_progress(e: &io::Error) -> bool {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        return true;
    }
    e.kind() == io::ErrorKind::WouldBlock
}

fn open_udp(dst: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(dst), Type::DGRAM, None)?;
    s.set_nonblocking(true)?;
    s.connect(&dst.into())?;
    into_udp(s)
}

/// Wraps a non-blocking datagram socket (UDP or ping) for the reactor.
fn into_udp(s: Socket) -> io::Result<UdpSocket> {
    s.set_nonblocking(true)?;
    UdpSocket::from_std(std::net::UdpSocket::from(s))
}

fn connect_error(e: &io::Error) -> ConnectError {
    // A kernel without IPv6 (ipv6.disable=1) cannot even open the socket.
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
        return ConnectError::NetUnreachable;
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectError::Refused,
        io::ErrorKind::HostUnreachable => ConnectError::HostUnreachable,
        // EADDRNOTAVAIL: no source address of the family (an IPv6 destination on a laptop with
        // link-local IPv6 only). The board hears "no route" at once and falls back to IPv4.
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::AddrNotAvailable => {
            ConnectError::NetUnreachable
        }
        io::ErrorKind::TimedOut => ConnectError::TimedOut,
        _ => ConnectError::Other,
    }
}

fn datagram_error(e: &io::Error) -> DatagramError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => DatagramError::PortUnreachable,
        io::ErrorKind::HostUnreachable => DatagramError::HostUnreachable,
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::AddrNotAvailable => {
            DatagramError::NetUnreachable
        }
        _ => DatagramError::Failed,
    }
}

/// The NAT's zero-copy TCP data calls, the only ones the socket layer makes directly.
struct TcpData<'a>(&'a mut Nat);

impl TcpData<'_> {
    /// `Nat::tcp_send_with`: the OS `read` fills the flow's board-bound buffer.
    fn send_with(
        &mut self,
        flow: FlowId,
        read: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<usize, FlowError> {
        self.0.tcp_send_with(flow, read)
    }

    /// `Nat::tcp_recv_with`: the OS `write` takes the board's bytes.
    fn recv_with(
        &mut self,
        flow: FlowId,
        write: impl FnOnce(&[u8]) -> usize,
    ) -> Result<usize, FlowError> {
        self.0.tcp_recv_with(flow, write)
    }
}

/// What the OS did, waiting for the driver (see [`Sockets::poll_event`]). Datagram payloads
/// wait in `bytes`, emptied once every event was taken.
#[derive(Debug, Default)]
struct Outbox {
    events: VecDeque<Queued>,
    bytes: Vec<u8>,
}

#[derive(Debug)]
enum Queued {
    /// An event without a payload.
    Event(OsEvent<'static>),
    /// `OsEvent::UdpReceived` with its payload in `Outbox::bytes`.
    Udp { flow: FlowId, payload: Range<usize> },
    /// `OsEvent::IcmpEchoReply` with its payload in `Outbox::bytes`.
    EchoReply {
        flow: FlowId,
        seq: u16,
        payload: Range<usize>,
    },
}

impl Outbox {
    fn push(&mut self, ev: OsEvent<'static>) {
        self.events.push_back(Queued::Event(ev));
    }

    fn keep(&mut self, payload: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        start..self.bytes.len()
    }

    fn poll(&mut self) -> Option<OsEvent<'_>> {
        let Some(q) = self.events.pop_front() else {
            self.bytes.clear();
            return None;
        };
        Some(match q {
            Queued::Event(ev) => ev,
            Queued::Udp { flow, payload } => OsEvent::UdpReceived {
                flow,
                payload: &self.bytes[payload],
            },
            Queued::EchoReply { flow, seq, payload } => OsEvent::IcmpEchoReply {
                flow,
                seq,
                payload: &self.bytes[payload],
            },
        })
    }
}

/// One flow's socket service: the flow, the NAT's data calls, and where its events and counters
/// go.
struct FlowCx<'a> {
    flow: FlowId,
    nat: TcpData<'a>,
    out: &'a mut Outbox,
    counters: &'a mut SocketCounters,
}

impl FlowCx<'_> {
    /// Completes a non-blocking connect: write readiness, then `SO_ERROR`. A socket the reactor
    /// has not reported yet is asked for its peer once: a loopback or LAN server completes the
    /// handshake within `connect` itself, and its board then gets the SYN-ACK in the pass that
    /// opened the socket instead of after one more turn of the reactor.
    fn tcp_check_connect(&mut self, t: &mut TcpFlow) -> Outcome {
        let flow = self.flow;
        let mut cx = Context::from_waker(&t.wakers.write);
        let Some(stream) = t.stream.tcp() else {
            t.connecting = false;
            return Outcome::Connected;
        };
        let err = match stream.poll_write_ready(&mut cx) {
            Poll::Pending if stream.peer_addr().is_ok() => None,
            Poll::Pending => return Outcome::Idle,
            Poll::Ready(Err(e)) => Some(e),
            Poll::Ready(Ok(())) => match stream.take_error() {
                Ok(None) => match stream.peer_addr() {
                    Ok(_) => None,
                    // Writable without an error but not connected: a spurious wake-up.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return Outcome::Idle,
                    Err(e) => Some(e),
                },
                Ok(Some(e)) | Err(e) => Some(e),
            },
        };
        if let Some(e) = err {
            tracing::debug!(%flow, error = %e, "tcp connect failed");
            let error = connect_error(&e);
            self.out.push(OsEvent::TcpConnectFailed { flow, error });
            return Outcome::Gone;
        }
        t.connecting = false;
        self.out.push(OsEvent::TcpConnected { flow });
        Outcome::Connected
    }

    /// Moves a TCP flow's bytes one way, `Read`: OS socket → core (→ board), only into the
    /// space the core offers; `Write`: core (board data) → OS socket, only what the OS accepts.
    fn tcp_move(&mut self, t: &mut TcpFlow, dir: Dir) -> Outcome {
        let (idle, waker) = match dir {
            Dir::Read => (t.paused || t.read_closed, &t.wakers.read),
            Dir::Write => (!t.board_data, &t.wakers.write),
        };
        if idle {
            return Outcome::Idle;
        }
        let mut cx = Context::from_waker(waker);
        let mut moved = 0;
        while moved < TCP_BUDGET {
            let stream = &t.stream;
            let ready = match dir {
                Dir::Read => stream.poll_read_ready(&mut cx),
                Dir::Write => stream.poll_write_ready(&mut cx),
            };
            if let Some(stop) = self.unready(ready) {
                return stop;
            }
            let mut res: Option<io::Result<usize>> = None;
            let taken = match dir {
                Dir::Read => self
                    .nat
                    .send_with(self.flow, |buf| keep(&mut res, stream.try_read(buf))),
                Dir::Write => self.nat.recv_with(self.flow, |data| {
                    if data.is_empty() {
                        return 0;
                    }
                    keep(&mut res, stream.try_write(data))
                }),
            };
            match (dir, taken, res) {
                // The board side is gone or closed: stop reading; the core ends the flow.
                (Dir::Read, Err(FlowError::SendClosed(_)), _) => {
                    t.read_closed = true;
                    return Outcome::Idle;
                }
                (Dir::Read, Err(_), _) => return Outcome::Idle,
                // No room in the core: wait for `TcpWritable`.
                (Dir::Read, Ok(_), None) => {
                    t.paused = true;
                    return Outcome::Idle;
                }
                (Dir::Read, Ok(_), Some(Ok(0))) => {
                    t.read_closed = true;
                    self.out.push(OsEvent::TcpEof { flow: self.flow });
                    return Outcome::Idle;
                }
                // Nothing buffered (or the flow is gone): done until the next `TcpReadable`.
                (Dir::Write, Err(_), _) | (Dir::Write, Ok(_), None) => {
                    t.board_data = false;
                    return Outcome::Idle;
                }
                (_, Ok(_), Some(r)) => {
                    let n = match self.bytes_moved(r) {
                        Ok(n) => n,
                        Err(gone) => return gone,
                    };
                    moved += n;
                    let n = n as u64;
                    match dir {
                        Dir::Read => {
                            t.to_board += n;
                            self.counters.tcp_bytes_from_os += n;
                        }
                        Dir::Write => {
                            t.from_board += n;
                            self.counters.tcp_bytes_to_os += n;
                        }
                    }
                }
            }
        }
        Outcome::Again
    }

    /// `None` when a TCP socket is ready; else what to return: `Idle` while it is not, the
    /// flow's end after an error (the board's connection is reset).
    fn unready(&mut self, poll: Poll<io::Result<()>>) -> Option<Outcome> {
        match poll {
            Poll::Pending => Some(Outcome::Idle),
            Poll::Ready(Ok(())) => None,
            Poll::Ready(Err(e)) => Some(self.tcp_failed(&e)),
        }
    }

    /// The bytes a TCP socket read or write moved (0 when it would block or was interrupted),
    /// or, after a real error, the flow's end (the board's connection is reset).
    fn bytes_moved(&mut self, r: io::Result<usize>) -> Result<usize, Outcome> {
        match r {
            Ok(n) => Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(self.tcp_failed(&e)),
        }
    }

    fn tcp_failed(&mut self, e: &io::Error) -> Outcome {
        let flow = self.flow;
        self.counters.tcp_resets_from_os += 1;
        tracing::debug!(%flow, error = %e, "tcp socket failed; resetting the board's connection");
        self.out.push(OsEvent::TcpReset { flow });
        Outcome::Gone
    }

    /// Receives up to [`DGRAM_BUDGET`] datagrams of a UDP flow, or echo replies of a ping
    /// socket (`icmp`), for the NAT.
    fn dgram_recv(&mut self, d: &mut DgramFlow, buf: &mut [u8], icmp: bool) -> Outcome {
        let flow = self.flow;
        let mut cx = Context::from_waker(&d.wakers.read);
        for _ in 0..DGRAM_BUDGET {
            match d.sock.poll_recv_ready(&mut cx) {
                Poll::Pending => return Outcome::Idle,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => {
                    if !icmp {
                        self.out.push(OsEvent::UdpError {
                            flow,
                            error: DatagramError::Failed,
                        });
                    }
                    return Outcome::Gone;
                }
            }
            match (d.sock.try_recv(buf), icmp) {
                (Err(e), _)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                (Ok(n), false) => {
                    self.counters.udp_datagrams_from_os += 1;
                    let payload = self.out.keep(&buf[..n]);
                    self.out.events.push_back(Queued::Udp { flow, payload });
                }
                (Ok(n), true) => match platform::parse_icmp_echo_reply(&buf[..n]) {
                    Some((seq, payload)) => {
                        let payload = self.out.keep(payload);
                        self.out
                            .events
                            .push_back(Queued::EchoReply { flow, seq, payload });
                    }
                    None => self.counters.drop_icmp_not_reply += 1,
                },
                // Errors queued on a ping socket (an ICMP error for an earlier request): no reply.
                (Err(_), true) => self.counters.drop_icmp_not_reply += 1,
                (Err(e), false) => {
                    let error = datagram_error(&e);
                    self.out.push(OsEvent::UdpError { flow, error });
                    if error == DatagramError::Failed {
                        return Outcome::Gone;
                    }
                }
            }
        }
        Outcome::Again
    }
}

/// Keeps the result of a socket call made inside a core callback in `res` and tells the core how
/// many bytes it moved (none on an error).
fn keep(res: &mut Option<io::Result<usize>>, r: io::Result<usize>) -> usize {
    let n = *r.as_ref().unwrap_or(&0);
    *res = Some(r);
    n
}

/// Writes one reply line to a `connect` client (a fresh socket: it fits its buffer). Returns
/// false when the client is gone.
fn reply_line(stream: &OsStream, line: &str) -> bool {
    let msg = format!("{line}\n");
    matches!(stream.try_write(msg.as_bytes()), Ok(n) if n == msg.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for id in [0u64, 1, 7, u64::MAX >> 1] {
            for dir in [Dir::Read, Dir::Write] {
                assert_eq!(untoken(token(FlowId(id), dir)), (FlowId(id), dir));
            }
        }
    }

    /// Closing flows trims the allocator once per halving of the table (and once at least
    /// `TRIM_AFTER_CLOSED` closed), not per close, and shrinks the table as it empties.
    #[tokio::test]
    async fn closing_many_flows_trims_once_per_halving() {
        let mut s = Sockets::new();
        let dst = SocketAddr::from(([127, 0, 0, 1], 9));
        let src = SocketAddr::from(([10, 47, 0, 2], 5000));
        for id in 1..=300 {
            let flow = FlowId(id);
            s.handle_event(NatEvent::UdpOpen { flow, src, dst });
        }
        assert_eq!(s.len(), 300, "{:?}", s.counters());
        let full = s.flows.capacity();
        let mut trims_at = Vec::new();
        for id in 1..=300 {
            s.handle_event(NatEvent::UdpClose { flow: FlowId(id) });
            if s.counters().allocator_trims > trims_at.len() as u64 {
                trims_at.push(s.len());
            }
        }
        // 150 closed with 150 open, 75 with 75, then 64 more (11 left); the last 11 not.
        assert_eq!(trims_at, [150, 75, 11]);
        assert!(s.is_empty());
        assert!(
            s.flows.capacity() < full,
            "{} of {full}",
            s.flows.capacity()
        );
    }

    /// A connect the kernel completed before the reactor looked (the server accepted it
    /// already) is reported by the service pass that follows `TcpConnect`.
    #[tokio::test]
    async fn a_connect_completed_at_once_is_reported_in_the_same_pass() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = listener.local_addr().unwrap();
        let mut nat = Nat::new(qbkit_nat::NatConfig::default(), qbkit_nat::Instant::ZERO).unwrap();
        let mut s = Sockets::new();
        let flow = FlowId(1);
        let src = SocketAddr::from(([10, 47, 0, 2], 5000));
        s.handle_event(NatEvent::TcpConnect { flow, src, dst });
        // The handshake is done once the server can accept it; no reactor turn in between.
        let (_server, _) = listener.accept().unwrap();
        assert!(s.service_scheduled(&mut nat));
        match s.poll_event() {
            Some(OsEvent::TcpConnected { flow: f }) => assert_eq!(f, flow),
            other => panic!("expected TcpConnected, got {other:?}"),
        }
    }

    #[test]
    fn connect_errors_map_to_what_the_board_should_see() {
        use io::ErrorKind as K;
        for (kind, want) in [
            (K::ConnectionRefused, ConnectError::Refused),
            (K::HostUnreachable, ConnectError::HostUnreachable),
            (K::NetworkUnreachable, ConnectError::NetUnreachable),
            (K::AddrNotAvailable, ConnectError::NetUnreachable),
            (K::TimedOut, ConnectError::TimedOut),
            (K::PermissionDenied, ConnectError::Other),
        ] {
            assert_eq!(connect_error(&io::Error::from(kind)), want, "{kind:?}");
        }
        for (kind, want) in [
            (K::ConnectionRefused, DatagramError::PortUnreachable),
            (K::Other, DatagramError::Failed),
        ] {
            assert_eq!(datagram_error(&io::Error::from(kind)), want, "{kind:?}");
        }
    }
}
