//! qbkit-nat: the I/O-free userspace NAT core of qbkit-host.
//!
//! The board's IP packets come in, requests to open, write and close ordinary OS sockets go
//! out, and what those sockets do comes back as events. The core never reads a clock, opens a
//! socket or touches a file: time is a parameter, sockets belong to the driver
//! (`host/src/driver.rs`), and tests drive it with a fake clock and scripted socket events.
//!
//! # Theory of operation
//!
//! ```text
//!  board ──IP──▶ handle_ip_packet ─┬─ TCP ─▶ smoltcp (any-IP) ─▶ tcp_recv ──▶ OS socket write
//!                                  ├─ UDP ─▶ UdpSend event ───────────────▶ OS socket send
//!                                  └─ ICMP ─▶ IcmpEchoRequest event ──────▶ ping socket
//!  board ◀─IP── poll_ip_packets ◀─ smoltcp egress ◀─ tcp_send ◀──────────── OS socket read
//!   (sink)   (or poll_ip_packet) ◀─ queue ◀─ UDP/ICMP packets, replies ◀─── OS socket recv
//! ```
//!
//! Packets for the board: while the driver fills a bundle it lends the core a [`BoardSink`] (the
//! bundle's free space); queued packets are copied into it first, then smoltcp writes TCP
//! segments straight into it, so a byte from an OS socket is copied into smoltcp's ring and from
//! there into the bundle, nothing more. What is made while no sink is lent (replies to the
//! board's packets, UDP and ICMP, egress a timer ran) waits in a bounded queue (`device.rs`).
//!
//! TCP is terminated in smoltcp in any-IP mode: the interface owns `0.0.0.1/0` (and `100::1/0`), routes
//! everything through itself and accepts every destination. A listening socket is created per
//! connection, for exactly the destination the board dialled, but only once the OS connect has
//! succeeded: the SYN is held (headers only) and replayed then. So the board sees a SYN-ACK only
//! for a destination that accepted, a RST for one that refused (its connect() fails with
//! ECONNREFUSED within one round trip, like slirp), and an ICMP unreachable for one that
//! could not be reached.
//!
//! Each smoltcp socket lives in a socket set of its own (`sockets.rs`): a board segment goes to
//! the socket of the flow the table found by key, egress runs only for sockets touched since
//! their last turn, and their deadlines sit in a heap, so per packet and per connection the cost
//! does not grow with the number of open flows (smoltcp itself walks every socket of a set).
//!
//! ## Limits
//!
//! Every resource is bounded by [`NatConfig`]: `max_flows` flows (4096), of which
//! `max_connecting` (512) may wait for an OS connect; per TCP flow a receive and a transmit
//! buffer (`tcp_rx_buffer`/`tcp_tx_buffer`, 1 MiB each, window scaling on) allocated zeroed, so
//! the OS commits pages only as data passes, and a flow idle for half a second gives the pages of
//! its empty buffers back (`ring.rs`; an idle flow then costs its socket state), and all TCP buffers
//! together within `tcp_buffer_budget` (4 GiB): past half of it new flows get 256 KiB buffers each
//! way (a smaller window), past all of it they are refused with a RST; the same rule holds for a
//! [`SharedBudget`] several NATs count into (`shared_tcp_budget`: one host's boards). A flow the core
//! ends (eviction, timeout, reset) frees its socket once its RST has been queued, or at once when
//! more such sockets wait than the board queue has slots (a board that stopped reading); at most
//! `max_queued_board_packets` packets (64) for the board and `max_queued_datagram_bytes` (4 MiB)
//! of UDP/ICMP payload in events. Nothing grows without bound: TCP stops reading (window) or
//! accepting (`tcp_send` returns less) when buffers are full; UDP and ICMP drop and count.
//! Fragments are dropped and counted (`drop_fragment`): the link MTU is large and the board's
//! stack does path MTU discovery, so they only come from oversized UDP, and reassembly would be
//! an unbounded buffer; an IPv6 fragment header likewise. Other IPv6 extension headers
//! (hop-by-hop, destination options, routing with no segments left) are walked to the upper
//! layer, bounded in count and length (`ip.rs`); those that ask for more than skipping are dropped
//! and counted (`drop_ipv6_extension_header`). An IPv6 packet
//! larger than the MTU is answered with ICMPv6 "packet too big" (the minimum MTU, 1280, is
//! enforced by [`NatConfig`]); the core never fragments.
//!
//! ## IPv4 and IPv6
//!
//! Both versions take the same path: the board has an address of each (`board_ipv4`,
//! `board_ipv6`), the gateway too, and a flow is whatever version the board dialled. The driver
//! opens an OS socket of the destination's family (after DNS rewriting: the gateway's port 53 on
//! either address may forward to a resolver of either version). Errors the board must hear at
//! once come as ICMP or ICMPv6 of the flow's version: on a laptop without IPv6 connectivity an
//! IPv6 connect fails at once (ENETUNREACH, EADDRNOTAVAIL) and the board gets ICMPv6 "no route",
//! so Happy Eyeballs clients move to IPv4 without waiting. The board kernel's IPv6 multicast
//! (router solicitations, MLD) is dropped and counted (`drop_ipv6_multicast`).
//!
//! ## Ports
//!
//! The core keeps no port space of its own: each flow is one OS socket, and the OS picks the
//! source port. The board's endpoints appear only inside the core. The gateway address
//! answers port 53 (UDP and TCP) by forwarding to the driver's upstream resolvers, answers echo
//! requests itself, and maps other ports to 127.0.0.1 only with `allow_host_loopback` and
//! `map_gateway_to_loopback`; otherwise its TCP ports refuse (RST) and UDP ports answer ICMP port
//! unreachable. Private networks are reachable unless `deny_lan`, which also denies the laptop's
//! own addresses (`host_addrs`); host loopback and link-local are denied unless
//! `allow_host_loopback`. Denied destinations, and other addresses of the board network, are
//! answered at once with ICMP "administratively prohibited" or "host unreachable", counted, and
//! logged (rate-limited) with the flag that would allow them; multicast and broadcast are dropped.
//!
//! ## Flow tracking and storage
//!
//! A flow is a TCP connection (board endpoint, destination), a UDP pair (same key), or an ICMP
//! echo identifier (board, destination, identifier). Flows live in a hash table keyed both ways:
//! by [`FlowId`] for the driver and by the board's 4-tuple for packets. Ids are never reused,
//! so late driver events for a finished flow are recognised and counted (`drop_stale_os_event`).
//! When the table is full, the flow idle longest (UDP/ICMP first) is evicted if it has been idle
//! at least `evict_min_idle`; TCP flows are evicted with a RST both ways.
//!
//! ## Events and states
//!
//! | TCP phase | board sees | enters on | leaves on |
//! |---|---|---|---|
//! | connecting | nothing (its SYNs are held) | SYN → `TcpConnect` | `TcpConnected` → open; `TcpConnectFailed` → RST / ICMP; board RST → `TcpClose` |
//! | open | SYN-ACK, data, FIN | SYN replayed into smoltcp | TIME-WAIT or CLOSED after LAST-ACK → draining; RST either way → gone |
//! | draining | nothing more (smoltcp socket freed) | both FINs done | driver took the last bytes → `TcpShutdown`, `TcpClose` |
//!
//! Driver-facing TCP events: `TcpReadable` (edge: board data waiting), `TcpWritable` (edge: room
//! for OS data after `tcp_send` ran short), `TcpShutdown` (board FIN, after its data),
//! `TcpClose{reset}` (flow over). OS side: `TcpConnected`, `TcpConnectFailed`, `TcpEof`
//! (becomes the board's FIN after queued data) and `TcpReset` (becomes a RST; no close event
//! follows). Events the driver caused itself (connect failure, reset, `UdpError::Failed`,
//! `IcmpUnavailable`) end a flow without a close event.
//!
//! ## Aging and timeout
//!
//! UDP flows expire after `udp_timeout` (30 s) idle, or `udp_stream_timeout` (180 s) once
//! replies were seen and the flow is not DNS (long-lived protocols keep their OS port); ICMP
//! echo flows after `icmp_timeout` (30 s); a connect the driver never answers after
//! `tcp_connect_timeout` (75 s, ICMP host unreachable to the board). Established TCP flows do
//! not age: they end by FIN or RST like a kernel connection, smoltcp aborts one whose board side
//! stops acknowledging queued data (or the handshake) for `tcp_timeout` (120 s; never armed on a
//! merely quiet flow), and eviction reclaims idle ones under
//! pressure. The aging scan runs once a second only while flows that age exist; a core with only
//! established TCP flows and nothing in flight asks for no timer at all, but once, half a second
//! after a flow's last traffic, to give its empty buffers' pages back.
//!
//! # Driving the core
//!
//! ```text
//! loop {
//!     wait for: link packet | OS socket readiness | timer (poll_timeout)
//!     feed:     handle_ip_packet / handle_os_event / tcp_recv / tcp_send / handle_timeout
//!     drain:    while has_ip_packets() { poll_ip_packets(now, &mut bundle); send it }
//!               (or: while let Some(n) = poll_ip_packet(now, &mut buf) { send to board })
//!               while let Some(ev) = poll_event() { act on OS sockets }
//!     timer  =  poll_timeout(now)
//! }
//! ```
//!
//! Drain both queues after every call: TCP output is produced lazily inside `poll_ip_packets`
//! (or `poll_ip_packet`), so a driver that stops calling it (because the link is busy)
//! backpressures every flow, and may call it again later to resume. Batching many `handle_ip_packet` calls before draining is
//! cheaper (one ACK per flow per batch).
//!
//! Memory note for the driver: with glibc, fix `M_MMAP_THRESHOLD` at no more than
//! [`MIN_TCP_BUFFER`] (qbkit-host sets 64 KiB) at start-up, so every TCP buffer,
//! the shrunk ones included, is a fresh mmap that commits pages only as data passes and goes
//! back to the OS when freed. Otherwise glibc raises the threshold after the first large free
//! and later TCP buffers come from the heap, where `calloc` must zero (commit) them in full and
//! freed memory is not returned: RSS then grows with churn (a 256 KiB buffer each way committed
//! in full is 512 KiB per idle flow). Better still (qbkit-host's `page_alloc` on Linux), serve
//! large blocks from mappings with no allocator header in their first page: an idle flow's
//! released buffers then hold no page at all.
// No unsafe code but in `ring` (the call into the driver's page release, and the tests'
// madvise/mincore), which carries SAFETY notes. The core itself makes no system call.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod counters;
mod device;
mod dns;
mod event;
mod flow;
mod icmp;
mod inbound;
mod ip;
mod nat;
mod policy;
pub mod resolvers;
#[allow(
    unsafe_code,
    reason = "calls the driver's unsafe page release (tests: madvise/mincore), each with its SAFETY note"
)]
mod ring;
mod sockets;
mod tcp;
mod udp;

pub use config::{
    DEFAULT_TCP_BUFFER_BUDGET, MAX_MTU, MIN_MTU, MIN_TCP_BUFFER, NatConfig, PageRelease,
    SharedBudget,
};
pub use counters::Counters;
pub use device::BoardSink;
pub use event::{ConnectError, DatagramError, FlowId, NatEvent, OsEvent};
pub use flow::{FlowInfo, Protocol};
pub use nat::Nat;
/// The clock type of the core: microseconds since an arbitrary start, chosen by the driver.
pub use smoltcp::time::{Duration, Instant};

/// Errors from creating a [`Nat`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NatError {
    /// The MTU is outside 1280..=65535 (1280: IPv6's minimum).
    #[error("MTU {0} is outside {MIN_MTU}..={MAX_MTU}")]
    BadMtu(usize),
    /// The prefix leaves no room for a board and a gateway.
    #[error("prefix length /{0} is too long (at most /30 for IPv4, /126 for IPv6)")]
    BadPrefix(u8),
    /// Board and gateway have the same address.
    #[error("board and gateway both use {0}")]
    SameAddress(core::net::IpAddr),
    /// A TCP buffer size is outside 4 KiB..=1 GiB.
    #[error("{name} = {size} bytes is outside 4096..=1073741824")]
    BadBuffer {
        /// Which setting.
        name: &'static str,
        /// Its value.
        size: usize,
    },
    /// `tcp_buffer_budget` cannot hold one flow with the smallest buffers.
    #[error(
        "tcp_buffer_budget = {0} bytes cannot hold one flow's smallest buffers (256 KiB each way)"
    )]
    SmallBufferBudget(usize),
    /// `max_flows` or `max_queued_board_packets` is zero.
    #[error("a flow or queue limit is zero")]
    ZeroLimit,
    /// smoltcp refused the default route (cannot happen with a fresh interface).
    #[error("could not install the any-IP default route")]
    Route,
}

/// Errors from the per-flow TCP calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// The flow does not exist (any more): it ended and its events may still be queued.
    #[error("flow {0} does not exist")]
    UnknownFlow(FlowId),
    /// The flow is UDP or ICMP.
    #[error("flow {0} is not TCP")]
    NotTcp(FlowId),
    /// The board-bound direction is closed (after `TcpEof`, or the board's side is gone).
    #[error("flow {0} cannot send to the board any more")]
    SendClosed(FlowId),
}

/// Why the core could not open a flow the laptop asked for (a forward or `connect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InboundError {
    /// Port 0 on the board.
    #[error("board port 0 is not a port")]
    PortZero,
    /// The flow table is full of busy flows, or every gateway port towards this board port is
    /// in use.
    #[error("no room for another flow (the flow table is full)")]
    NoRoom,
    /// The protocol has no ports to forward (ICMP).
    #[error("only TCP and UDP can be opened towards the board")]
    NoPorts,
    /// The address dialled is not one of the board's (`board_ipv4`, `board_ipv6`).
    #[error("{0} is not one of the board's addresses")]
    NotTheBoard(core::net::IpAddr),
}

#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;
