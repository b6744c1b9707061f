//! The flow table: one entry per TCP connection, UDP 2-tuple pair or ICMP echo identifier.
//!
//! Entries are found by [`FlowKey`] (from board packets) and by [`FlowId`] (from driver calls).
//! The table is bounded by `NatConfig::max_flows`; `aging` holds the entries that the
//! once-a-second aging scan must look at (UDP, ICMP, TCP still connecting), so the scan never
//! walks established TCP flows and a table of only those never wakes the driver. Eviction finds
//! the longest-idle flow through a lazy min-heap per class (see `FlowTable::idle_order`), not by
//! walking the table for every new flow once it is full.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use core::net::{IpAddr, SocketAddr};

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::TcpRepr;

use crate::FlowId;
use crate::dns::Failover;
use crate::sockets::SockId;

/// How the board names a flow: its own endpoint and the destination it addressed (both of the
/// same IP version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FlowKey {
    Tcp {
        src: SocketAddr,
        dst: SocketAddr,
    },
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
    },
    Icmp {
        src: IpAddr,
        dst: IpAddr,
        ident: u16,
    },
}

/// The SYN a connecting flow waits to replay into smoltcp, without payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SynCopy {
    pub(crate) src: SocketAddr,
    pub(crate) dst: SocketAddr,
    pub(crate) seq: u32,
    pub(crate) window_len: u16,
    pub(crate) window_scale: Option<u8>,
    pub(crate) max_seg_size: Option<u16>,
    pub(crate) sack_permitted: bool,
    pub(crate) ttl: u8,
}

impl SynCopy {
    pub(crate) fn from_repr(src: SocketAddr, dst: SocketAddr, ttl: u8, r: &TcpRepr<'_>) -> Self {
        Self {
            src,
            dst,
            seq: r.seq_number.0.cast_unsigned(),
            window_len: r.window_len,
            window_scale: r.window_scale,
            max_seg_size: r.max_seg_size,
            sack_permitted: r.sack_permitted,
            ttl,
        }
    }
}

#[derive(Debug)]
pub(crate) enum TcpPhase {
    /// Waiting for the OS connect; the SYN is replayed into smoltcp on `TcpConnected`.
    Connecting { syn: SynCopy },
    /// A smoltcp socket carries the connection.
    Open { handle: SockId },
    /// smoltcp is done (TIME-WAIT or closed after LAST-ACK) but the driver has not taken all the
    /// board's data yet: the remainder lives here.
    Draining { tail: VecDeque<u8> },
}

#[derive(Debug)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent edge flags of one flow"
)]
pub(crate) struct TcpFlow {
    pub(crate) phase: TcpPhase,
    /// Emit `TcpReadable` when data is next available.
    pub(crate) readable_armed: bool,
    /// Emit `TcpWritable` when the socket next has room.
    pub(crate) writable_armed: bool,
    /// `TcpShutdown` was emitted.
    pub(crate) shutdown_sent: bool,
    /// The driver reported EOF from the OS side.
    pub(crate) os_eof: bool,
    /// The board's FIN has been seen (socket went through CLOSE-WAIT/LAST-ACK/CLOSING/TIME-WAIT).
    pub(crate) board_fin: bool,
    /// On the dirty list.
    pub(crate) dirty: bool,
    /// The laptop dialled the board (a forward or `connect`): the core's socket connects from
    /// the gateway and `TcpEstablished` is reported once the board accepts.
    pub(crate) inbound: bool,
    /// `TcpEstablished` was emitted (inbound flows only).
    pub(crate) established: bool,
    /// DNS forwarding to gateway:53: which resolvers the connect tried.
    pub(crate) dns: Option<Box<Failover>>,
}

impl TcpFlow {
    /// A flow in `phase` with every edge armed; `inbound` when the laptop dialled the board.
    pub(crate) fn new(phase: TcpPhase, inbound: bool) -> Self {
        Self {
            phase,
            readable_armed: true,
            writable_armed: true,
            shutdown_sent: false,
            os_eof: false,
            board_fin: false,
            dirty: false,
            inbound,
            established: false,
            dns: None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct UdpFlow {
    /// Replies came back from the OS side.
    pub(crate) replied: bool,
    /// This flow is DNS forwarding (short timeout, failover across resolvers).
    pub(crate) dns: Option<Box<Failover>>,
    /// The laptop side sent first (a UDP forward): the OS endpoint is a peer of the forward.
    pub(crate) inbound: bool,
}

#[derive(Debug)]
pub(crate) enum FlowKind {
    Tcp(TcpFlow),
    Udp(UdpFlow),
    Icmp,
}

#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) id: FlowId,
    pub(crate) key: FlowKey,
    /// Where the OS socket goes (after DNS and loopback rewriting).
    pub(crate) os_dst: SocketAddr,
    pub(crate) created: Instant,
    pub(crate) last_active: Instant,
    pub(crate) bytes_from_board: u64,
    pub(crate) bytes_to_board: u64,
    pub(crate) kind: FlowKind,
}

impl Flow {
    /// Whether the aging scan must look at this flow.
    pub(crate) fn needs_aging(&self) -> bool {
        match &self.kind {
            FlowKind::Tcp(t) => matches!(t.phase, TcpPhase::Connecting { .. }),
            FlowKind::Udp(_) | FlowKind::Icmp => true,
        }
    }
}

/// Bounded map of flows by id and by key.
#[derive(Debug, Default)]
pub(crate) struct FlowTable {
    by_id: HashMap<FlowId, Flow>,
    by_key: HashMap<FlowKey, FlowId>,
    next_id: u64,
    /// The flows whose `needs_aging` holds.
    aging: HashSet<FlowId>,
    /// Eviction order, UDP/ICMP flows (0) and TCP flows (1): (`last_active` when pushed, id).
    /// Lazy: `last_active` only grows, so every live flow has an entry no later than its
    /// `last_active`, and a top entry that still matches its flow is the longest idle of its
    /// class; entries of flows that were active since are pushed again with the new time,
    /// entries of removed flows dropped, when they reach the top.
    idle_order: [BinaryHeap<Reverse<(Instant, FlowId)>>; 2],
    pub(crate) connecting: usize,
}

impl FlowTable {
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn id_of(&self, key: &FlowKey) -> Option<FlowId> {
        self.by_key.get(key).copied()
    }

    pub(crate) fn get(&self, id: FlowId) -> Option<&Flow> {
        self.by_id.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: FlowId) -> Option<&mut Flow> {
        self.by_id.get_mut(&id)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.by_id.values()
    }

    /// Whether any flow needs the aging scan.
    pub(crate) fn needs_aging(&self) -> bool {
        !self.aging.is_empty()
    }

    /// The flows the aging scan looks at.
    pub(crate) fn aging(&self) -> impl Iterator<Item = &Flow> {
        self.aging.iter().filter_map(|id| self.by_id.get(id))
    }

    pub(crate) fn insert(
        &mut self,
        key: FlowKey,
        os_dst: SocketAddr,
        now: Instant,
        kind: FlowKind,
    ) -> FlowId {
        self.next_id += 1;
        let id = FlowId(self.next_id);
        let flow = Flow {
            id,
            key,
            os_dst,
            created: now,
            last_active: now,
            bytes_from_board: 0,
            bytes_to_board: 0,
            kind,
        };
        if flow.needs_aging() {
            self.aging.insert(id);
        }
        if is_connecting(&flow) {
            self.connecting += 1;
        }
        self.idle_order[idle_class(&flow)].push(Reverse((now, id)));
        self.by_key.insert(key, id);
        self.by_id.insert(id, flow);
        id
    }

    /// Rebuilds the eviction heap once stale entries (of removed or since active flows)
    /// outnumber the live ones, so it stays O(flows): amortised O(1) per call.
    fn compact_idle_order(&mut self) {
        let entries: usize = self.idle_order.iter().map(BinaryHeap::len).sum();
        if entries > 2 * self.by_id.len() + 64 {
            self.rebuild_idle_order();
        }
    }

    pub(crate) fn remove(&mut self, id: FlowId) -> Option<Flow> {
        let flow = self.by_id.remove(&id)?;
        self.by_key.remove(&flow.key);
        self.aging.remove(&id);
        if is_connecting(&flow) {
            self.connecting -= 1;
        }
        // A burst that ended gives its memory back; the eviction heap sheds removed flows'
        // entries here too (without evictions nothing else pops them).
        shrink_when_sparse!(self.by_id);
        shrink_when_sparse!(self.by_key);
        shrink_when_sparse!(self.aging);
        self.compact_idle_order();
        Some(flow)
    }

    /// Gives a flow a new id and OS destination (a DNS flow moving to another resolver): the
    /// old id is gone for good, so late events of the old socket are stale. Keeps the key, the
    /// kind, the age and the byte counts.
    pub(crate) fn rekey(&mut self, id: FlowId, os_dst: SocketAddr, now: Instant) -> Option<FlowId> {
        let old = self.remove(id)?;
        let new = self.insert(old.key, os_dst, now, old.kind);
        if let Some(f) = self.by_id.get_mut(&new) {
            f.created = old.created;
            f.bytes_from_board = old.bytes_from_board;
            f.bytes_to_board = old.bytes_to_board;
        }
        Some(new)
    }

    /// Move a TCP flow out of the connecting phase (keeps the counters right).
    pub(crate) fn set_tcp_phase(&mut self, id: FlowId, phase: TcpPhase) {
        let Some(flow) = self.by_id.get_mut(&id) else {
            return;
        };
        let conn = is_connecting(flow);
        if let FlowKind::Tcp(t) = &mut flow.kind {
            t.phase = phase;
        }
        let conn2 = is_connecting(flow);
        if flow.needs_aging() {
            self.aging.insert(id);
        } else {
            self.aging.remove(&id);
        }
        self.connecting = self.connecting + usize::from(conn2) - usize::from(conn);
    }

    /// The flow idle longest, if it has been idle at least `min_idle`. UDP and ICMP flows go
    /// before TCP flows (they are cheap to re-create).
    pub(crate) fn eviction_candidate(
        &mut self,
        now: Instant,
        min_idle: Duration,
    ) -> Option<FlowId> {
        self.compact_idle_order();
        (0..2).find_map(|class| {
            let f = self.longest_idle(class)?;
            (now - f.last_active >= min_idle || now < f.last_active).then_some(f.id)
        })
    }

    /// The longest idle flow of a class (see `idle_order`).
    fn longest_idle(&mut self, class: usize) -> Option<&Flow> {
        let heap = &mut self.idle_order[class];
        loop {
            let Reverse((at, id)) = *heap.peek()?;
            match self.by_id.get(&id) {
                Some(f) if f.last_active == at => break,
                Some(f) => {
                    let newer = f.last_active;
                    heap.pop();
                    heap.push(Reverse((newer, id)));
                }
                None => {
                    heap.pop();
                }
            }
        }
        let Reverse((_, id)) = *heap.peek()?;
        self.by_id.get(&id)
    }

    /// One entry per live flow again (entries of removed flows pile up while nothing is evicted).
    fn rebuild_idle_order(&mut self) {
        for heap in &mut self.idle_order {
            heap.clear();
        }
        for f in self.by_id.values() {
            self.idle_order[idle_class(f)].push(Reverse((f.last_active, f.id)));
        }
        for heap in &mut self.idle_order {
            heap.shrink_to(2 * heap.len());
        }
    }

    /// Bytes the table's own containers hold (their capacity, not their length), for tests.
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> usize {
        use core::mem::size_of;
        self.by_id.capacity() * size_of::<(FlowId, Flow)>()
            + self.by_key.capacity() * size_of::<(FlowKey, FlowId)>()
            + self.aging.capacity() * size_of::<FlowId>()
            + self
                .idle_order
                .iter()
                .map(BinaryHeap::capacity)
                .sum::<usize>()
                * size_of::<Reverse<(Instant, FlowId)>>()
    }
}

/// Lets a table (`HashMap`, `HashSet`, `Vec`) that fell to a quarter of its capacity give the
/// rest back (down to twice its length, so the next shrink waits for another halving): a burst of
/// thousands of flows must not keep its peak memory once it is over. Amortised O(1) per removal.
macro_rules! shrink_when_sparse {
    ($table:expr) => {{
        let table = &mut $table;
        if table.capacity() > 4 * table.len() + 64 {
            table.shrink_to(2 * table.len());
        }
    }};
}
pub(crate) use shrink_when_sparse;

/// Eviction class: UDP and ICMP flows (0) go before TCP flows (1).
fn idle_class(flow: &Flow) -> usize {
    usize::from(matches!(flow.kind, FlowKind::Tcp(_)))
}

fn is_connecting(flow: &Flow) -> bool {
    matches!(
        &flow.kind,
        FlowKind::Tcp(TcpFlow {
            phase: TcpPhase::Connecting { .. },
            ..
        })
    )
}

/// Transport protocol of a flow, for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP echo.
    Icmp,
}

/// A snapshot of one flow for `qbkit-host status`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlowInfo {
    /// The flow.
    pub id: FlowId,
    /// Its protocol.
    pub protocol: Protocol,
    /// The board's endpoint (ICMP: port is the echo identifier).
    pub src: SocketAddr,
    /// The destination the board addressed (ICMP: port is the echo identifier).
    pub dst: SocketAddr,
    /// Where the OS socket goes.
    pub os_dst: SocketAddr,
    /// A short state name: "connecting", smoltcp's TCP state, "draining", "active", "replied".
    pub state: String,
    /// Payload bytes from the board.
    pub bytes_from_board: u64,
    /// Payload bytes to the board.
    pub bytes_to_board: u64,
    /// Time since the flow was created.
    pub age: Duration,
    /// Time since the last packet or event.
    pub idle: Duration,
    /// The laptop opened this flow towards the board (a forward or `connect`); `dst` is then
    /// the gateway endpoint the board sees and `os_dst` the laptop-side peer.
    pub inbound: bool,
}

impl FlowKey {
    pub(crate) fn endpoints(&self) -> (SocketAddr, SocketAddr) {
        match *self {
            Self::Tcp { src, dst } | Self::Udp { src, dst } => (src, dst),
            Self::Icmp { src, dst, ident } => {
                (SocketAddr::new(src, ident), SocketAddr::new(dst, ident))
            }
        }
    }
}
