//! The two event vocabularies between the core and its driver.
//!
//! `NatEvent` flows core → driver (from [`Nat::poll_event`](crate::Nat::poll_event)): open, write,
//! shut down or close an OS socket, plus readiness hints for TCP data. `OsEvent` flows driver →
//! core (into [`Nat::handle_os_event`](crate::Nat::handle_os_event)): what the OS socket did.
//! Every event names a [`FlowId`]; ids are never reused, so an event for a finished flow is
//! recognised as stale, counted and ignored.

use core::fmt;
use core::net::{IpAddr, SocketAddr};

/// Identifies one flow (a TCP connection, a UDP 2-tuple pair, an ICMP echo id) for its whole life.
/// Ids increase monotonically and are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A request from the core to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatEvent {
    /// Open a non-blocking OS TCP connection to `dst` (already rewritten for DNS or the loopback
    /// mapping). Answer with [`OsEvent::TcpConnected`] or [`OsEvent::TcpConnectFailed`]; the
    /// board gets its SYN-ACK only after `TcpConnected`.
    TcpConnect {
        /// The new flow.
        flow: FlowId,
        /// The board's endpoint (for logs).
        src: SocketAddr,
        /// Where the OS socket connects to.
        dst: SocketAddr,
    },
    /// The board accepted a connection the laptop opened with
    /// [`Nat::open_inbound`](crate::Nat::open_inbound) (its SYN-ACK arrived). Comes once,
    /// before any data event of the flow. A refused or unanswered one ends with
    /// `TcpClose { reset: true }` instead.
    TcpEstablished {
        /// The flow.
        flow: FlowId,
    },
    /// Data from the board is waiting. Call [`Nat::tcp_recv`](crate::Nat::tcp_recv) (or
    /// `tcp_recv_with`) and write it to the OS socket until it returns 0 or the OS socket would
    /// block. Edge-triggered: it comes again only after a `tcp_recv` call has emptied the buffer.
    TcpReadable {
        /// The flow.
        flow: FlowId,
    },
    /// The board-bound buffer has room again after a `tcp_send` call filled it: resume reading
    /// the OS socket into [`Nat::tcp_send`](crate::Nat::tcp_send).
    TcpWritable {
        /// The flow.
        flow: FlowId,
    },
    /// The board closed its sending half and every byte it sent has been taken by `tcp_recv`:
    /// `shutdown(Write)` the OS socket. Keep reading the OS socket.
    TcpShutdown {
        /// The flow.
        flow: FlowId,
    },
    /// The flow is over: drop the OS socket. With `reset`, abort it so the peer sees a RST
    /// (set SO_LINGER to 0 before closing). No further events name this flow.
    TcpClose {
        /// The flow.
        flow: FlowId,
        /// The board reset the connection, or the flow was evicted or timed out.
        reset: bool,
    },
    /// Open a UDP socket connected to `dst` (connected, so the OS reports ICMP errors as
    /// `ECONNREFUSED` etc.). [`NatEvent::UdpSend`] events for the flow follow.
    UdpOpen {
        /// The new flow.
        flow: FlowId,
        /// The board's endpoint.
        src: SocketAddr,
        /// Where datagrams go (already rewritten for DNS or the loopback mapping).
        dst: SocketAddr,
    },
    /// Send one datagram on the flow's UDP socket.
    UdpSend {
        /// The flow.
        flow: FlowId,
        /// The UDP payload.
        payload: Vec<u8>,
    },
    /// The UDP flow expired or was evicted: close its socket.
    UdpClose {
        /// The flow.
        flow: FlowId,
    },
    /// Send an ICMP echo request to `dst` through an unprivileged ping socket (one per flow,
    /// opened on the first request). The OS picks its own identifier; reply with
    /// [`OsEvent::IcmpEchoReply`] carrying the sequence number and data of the reply, or
    /// [`OsEvent::IcmpUnavailable`] when ping sockets cannot be opened.
    IcmpEchoRequest {
        /// The flow (board address, destination, board's identifier).
        flow: FlowId,
        /// The destination.
        dst: IpAddr,
        /// Sequence number.
        seq: u16,
        /// Echo data.
        payload: Vec<u8>,
    },
    /// The ICMP echo flow expired or was evicted: close its ping socket.
    IcmpClose {
        /// The flow.
        flow: FlowId,
    },
}

impl NatEvent {
    /// The flow this event is about.
    pub fn flow(&self) -> FlowId {
        match self {
            Self::TcpConnect { flow, .. }
            | Self::TcpEstablished { flow }
            | Self::TcpReadable { flow }
            | Self::TcpWritable { flow }
            | Self::TcpShutdown { flow }
            | Self::TcpClose { flow, .. }
            | Self::UdpOpen { flow, .. }
            | Self::UdpSend { flow, .. }
            | Self::UdpClose { flow }
            | Self::IcmpEchoRequest { flow, .. }
            | Self::IcmpClose { flow } => *flow,
        }
    }
}

/// Why an OS connect failed. The board sees the matching error quickly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// `ECONNREFUSED`: the board gets a RST, its connect() fails with ECONNREFUSED.
    Refused,
    /// `EHOSTUNREACH`: ICMP host unreachable, the board sees EHOSTUNREACH.
    HostUnreachable,
    /// `ENETUNREACH`: ICMP network unreachable, the board sees ENETUNREACH.
    NetUnreachable,
    /// The OS connect timed out: ICMP host unreachable (EHOSTUNREACH on the board).
    TimedOut,
    /// Permission denied or any other error: ICMP administratively prohibited (EHOSTUNREACH).
    Other,
}

/// What went wrong on a UDP socket (errors the OS reports for a connected UDP socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatagramError {
    /// `ECONNREFUSED`: ICMP port unreachable goes back to the board.
    PortUnreachable,
    /// `EHOSTUNREACH`: ICMP host unreachable goes back to the board.
    HostUnreachable,
    /// `ENETUNREACH`: ICMP network unreachable goes back to the board.
    NetUnreachable,
    /// The socket could not be opened or is broken: the flow is closed, nothing is sent.
    Failed,
}

/// What an OS socket did, reported by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OsEvent<'a> {
    /// The OS connect of `NatEvent::TcpConnect` succeeded. The board gets its SYN-ACK now.
    TcpConnected {
        /// The flow.
        flow: FlowId,
    },
    /// The OS connect failed.
    TcpConnectFailed {
        /// The flow.
        flow: FlowId,
        /// Why.
        error: ConnectError,
    },
    /// The OS peer closed its sending half (read returned 0). The board gets a FIN after all data
    /// already given to `tcp_send`.
    TcpEof {
        /// The flow.
        flow: FlowId,
    },
    /// The OS connection was reset or failed (ECONNRESET, EPIPE, …). The board gets a RST and
    /// the flow ends without a `TcpClose` event (the driver already knows).
    TcpReset {
        /// The flow.
        flow: FlowId,
    },
    /// A datagram arrived on the flow's connected UDP socket.
    UdpReceived {
        /// The flow.
        flow: FlowId,
        /// Its payload.
        payload: &'a [u8],
    },
    /// The flow's UDP socket reported an error.
    UdpError {
        /// The flow.
        flow: FlowId,
        /// Which.
        error: DatagramError,
    },
    /// An echo reply arrived on the flow's ping socket.
    IcmpEchoReply {
        /// The flow.
        flow: FlowId,
        /// Sequence number of the reply.
        seq: u16,
        /// Echo data of the reply.
        payload: &'a [u8],
    },
    /// Ping sockets are not available (EACCES/EPERM, e.g. `net.ipv4.ping_group_range`): the core
    /// switches to answering pings to the gateway only, and drops the others (`drop_ping_unavailable`).
    IcmpUnavailable {
        /// The flow whose request failed.
        flow: FlowId,
    },
}
