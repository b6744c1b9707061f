//! The core's smoltcp TCP sockets, each in a `SocketSet` of its own.
//!
//! smoltcp walks every socket of the set it is given: `poll_ingress_single` looks for the socket
//! that accepts a segment, `poll_egress` asks each one for a segment, `poll_at` asks each one for
//! its next deadline and `SocketSet::add` looks for a free slot. With all flows in one set every
//! board packet, every egress pass and every new connection cost O(open flows). Here a board
//! segment goes to the set of its own flow (the flow table found it by key), egress visits only
//! *pending* sockets (touched since their last egress: ingress, a data call, close/abort, a new
//! socket, a timer that came due) and every socket's next deadline sits in a min-heap. Per packet
//! and per connection the cost no longer depends on how many flows are open; an idle flow costs
//! nothing until a packet, a call or its timer touches it.
//!
//! ```text
//!  board segment ─▶ flow table (key) ─▶ ingress(id) ─▶ that socket's set ─▶ pending
//!  tcp_send/recv, close, abort ─▶ get_mut(id) ─▶ pending
//!  egress: pending sockets, one segment each per round (fair), until quiet or the sink/queue is
//!          full (a socket whose next segment may not fit the sink's rest waits, still pending)
//!          ─▶ settled: poll_at ─▶ timer heap (stale entries skipped by generation)
//!  handle_timeout ─▶ due() ─▶ pending again (and their flows looked at)
//! ```
//!
//! The pool also keeps the buffer bytes of all its sockets as a running total (the TCP buffer
//! budget), updated in `add` and `remove`, the one place sockets are freed, and adds them to the
//! budget it shares with other NATs, if any (taken back when the pool is dropped).
//!
//! Idle rings: a socket touched (ingress, a data call) may have committed pages in its rings.
//! Its first touch puts it on the *idle heap*, due [`RING_IDLE`] after its last touch; when it
//! comes due untouched, each ring that holds nothing smoltcp will read again gives its pages
//! back (`ring.rs`): the transmit ring when `send_queue() == 0`, the receive ring when
//! `recv_queue() == 0` and no board segment ended beyond the bytes taken from it (smoltcp keeps
//! out-of-order segments in the ring without counting them; `board_segment` and `took` track
//! that point). A ring that cannot go yet is looked at again every `RING_IDLE`. So an idle flow
//! holds no ring pages after half a second, one heap entry per touched socket per idle period
//! is the whole cost, and a busy flow is never released under its traffic.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::TcpSeqNumber;

use crate::FlowId;
use crate::device::SmolDevice;
use crate::ring::Ring;

/// How long a socket stays untouched before its empty rings give their pages back.
pub(crate) const RING_IDLE: Duration = Duration::from_millis(500);

/// A socket for the pool and the memory of its rings (receive, transmit).
pub(crate) struct NewSocket {
    pub(crate) sock: tcp::Socket<'static>,
    pub(crate) rings: [Ring; 2],
}

/// A socket of the pool. Ids are reused after `remove`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SockId(usize);

struct Slot {
    set: SocketSet<'static>,
    handle: SocketHandle,
    /// Receive + transmit capacity, as counted in `buffer_bytes`.
    capacity: usize,
    /// The flow it carries (`None` once it is a zombie waiting for its last packet).
    owner: Option<FlowId>,
    /// On the pending list.
    pending: bool,
    /// Generation of its live heap entry (entries with another generation are stale).
    timer_gen: u64,
    /// Its rings (receive, transmit) and whether each may hold committed pages.
    rings: [Ring; 2],
    held: [bool; 2],
    /// Last ingress or data call, and the serial of its idle-heap entry (0: none).
    last_touch: Instant,
    idle_serial: u64,
    /// The board's sequence number of the next byte `took` will see (known once its SYN
    /// passed), and the highest end of a board segment with data.
    rx_read: Option<TcpSeqNumber>,
    board_end: Option<TcpSeqNumber>,
    /// The largest segment payload the board takes, from its SYN (`None` before it).
    board_mss: Option<usize>,
}

impl Slot {
    /// Nothing in the receive ring will be read again: no queued bytes, and no board segment
    /// (kept out of order) ends beyond what was taken.
    fn rx_empty(&self) -> bool {
        let sock = self.set.get::<tcp::Socket<'static>>(self.handle);
        sock.recv_queue() == 0
            && match (self.board_end, self.rx_read) {
                (None, _) => true,
                (Some(end), Some(read)) => end <= read,
                (Some(_), None) => false,
            }
    }

    fn tx_empty(&self) -> bool {
        self.set
            .get::<tcp::Socket<'static>>(self.handle)
            .send_queue()
            == 0
    }
}

/// The sockets, the pending list and the timer heap.
#[derive(Default)]
pub(crate) struct TcpSockets {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    live: usize,
    buffer_bytes: usize,
    pending: Vec<SockId>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    next_gen: u64,
    /// Touched sockets by when their rings may be released: (due, slot, serial).
    idle: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// The latest time the pool was given (ingress, egress, timers; `None` before the first).
    now: Option<Instant>,
    /// For segments of no flow: smoltcp answers them with a RST.
    empty: Option<SocketSet<'static>>,
    /// The budget shared with other NATs (`NatConfig::shared_tcp_budget`).
    shared: Option<std::sync::Arc<crate::config::SharedBudget>>,
    /// How idle rings give their pages back; `None`: they keep them (no idle heap at all).
    page_release: Option<crate::config::PageRelease>,
    /// Sockets smoltcp was asked about (ingress, egress turns, deadlines), for tests.
    #[cfg(test)]
    pub(crate) visits: usize,
}

impl Drop for TcpSockets {
    fn drop(&mut self) {
        if let Some(b) = &self.shared {
            b.sub(self.buffer_bytes);
        }
    }
}

impl core::fmt::Debug for TcpSockets {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TcpSockets")
            .field("live", &self.live)
            .field("buffer_bytes", &self.buffer_bytes)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl TcpSockets {
    /// An empty pool that counts its buffers into `shared` too and releases idle rings' pages
    /// with `page_release`.
    pub(crate) fn new(
        shared: Option<std::sync::Arc<crate::config::SharedBudget>>,
        page_release: Option<crate::config::PageRelease>,
    ) -> Self {
        let mut pool = Self::default();
        pool.shared = shared;
        pool.page_release = page_release;
        pool
    }

    /// The budget shared with other NATs, if any.
    pub(crate) fn shared(&self) -> Option<&crate::config::SharedBudget> {
        self.shared.as_deref()
    }

    /// Add a socket (pending: a connecting socket has its SYN to send).
    pub(crate) fn add(&mut self, new: NewSocket) -> SockId {
        let NewSocket { sock, rings } = new;
        let capacity = sock.recv_capacity() + sock.send_capacity();
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(sock);
        let slot = Slot {
            set,
            handle,
            capacity,
            owner: None,
            pending: false,
            timer_gen: 0,
            rings,
            held: [false; 2],
            last_touch: self.now.unwrap_or(Instant::ZERO),
            idle_serial: 0,
            rx_read: None,
            board_end: None,
            board_mss: None,
        };
        // A free id may be stale: its slot went in `shrink_slots` (and may be in use again).
        let slots = &self.slots;
        let reuse =
            core::iter::from_fn(|| self.free.pop()).find(|&i| matches!(slots.get(i), Some(None)));
        let id = if let Some(i) = reuse {
            self.slots[i] = Some(slot);
            SockId(i)
        } else {
            self.slots.push(Some(slot));
            SockId(self.slots.len() - 1)
        };
        self.live += 1;
        self.buffer_bytes += capacity;
        if let Some(b) = &self.shared {
            b.add(capacity);
        }
        self.mark_pending(id);
        id
    }

    /// Free a socket; returns its buffer bytes. The only place a socket leaves the pool.
    pub(crate) fn remove(&mut self, id: SockId) -> usize {
        let Some(slot) = self.slots.get_mut(id.0).and_then(Option::take) else {
            return 0;
        };
        self.free.push(id.0);
        self.live -= 1;
        self.buffer_bytes -= slot.capacity;
        if let Some(b) = &self.shared {
            b.sub(slot.capacity);
        }
        if self.slots.capacity() > 4 * self.live + 64 {
            self.shrink_slots();
        }
        slot.capacity
    }

    /// After a burst: drop the free slots at the end (their ids are not held by anyone; heap
    /// entries that name them are stale by generation) and give the memory back. A live socket
    /// high up keeps the slots below it; later removals try again, each popping only the slots
    /// freed since (amortised O(1)).
    fn shrink_slots(&mut self) {
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        self.slots.shrink_to(2 * self.live);
        crate::flow::shrink_when_sparse!(self.pending);
    }

    /// Receive + transmit buffer bytes of every socket in the pool.
    pub(crate) fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Number of sockets.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Record which flow a socket carries (`None`: a zombie).
    pub(crate) fn set_owner(&mut self, id: SockId, owner: Option<FlowId>) {
        if let Some(s) = self.slot_mut(id) {
            s.owner = owner;
        }
    }

    fn slot(&self, id: SockId) -> &Slot {
        match self.slots.get(id.0) {
            Some(Some(s)) => s,
            // Ids come only from `add` and are dropped with their flow or zombie entry.
            _ => unreachable!("TCP socket {id:?} is not in the pool"),
        }
    }

    fn slot_mut(&mut self, id: SockId) -> Option<&mut Slot> {
        self.slots.get_mut(id.0).and_then(Option::as_mut)
    }

    pub(crate) fn get(&self, id: SockId) -> &tcp::Socket<'static> {
        let s = self.slot(id);
        s.set.get::<tcp::Socket<'static>>(s.handle)
    }

    /// The socket, to change: it becomes pending (a change may give it something to send or
    /// move its deadline) and touched (its rings may take bytes).
    pub(crate) fn get_mut(&mut self, id: SockId) -> &mut tcp::Socket<'static> {
        self.mark_pending(id);
        self.touch(id);
        self.get_mut_quiet(id)
    }

    /// Its rings may take bytes now: they count as holding pages, and it goes on the idle heap.
    fn touch(&mut self, id: SockId) {
        if self.page_release.is_none() {
            return;
        }
        let now = self.now.unwrap_or(Instant::ZERO);
        let Some(s) = self.slots.get_mut(id.0).and_then(Option::as_mut) else {
            return;
        };
        s.held = [true; 2];
        s.last_touch = now;
        if s.idle_serial == 0 {
            self.next_gen += 1;
            s.idle_serial = self.next_gen;
            self.idle
                .push(Reverse((now + RING_IDLE, id.0, self.next_gen)));
        }
    }

    /// A board segment for socket `id` (before smoltcp sees it): a SYN fixes where the board's
    /// bytes start and, by its MSS option `syn_mss`, the largest segment smoltcp sends the
    /// board; data may end beyond what was taken (out of order).
    pub(crate) fn board_segment(
        &mut self,
        id: SockId,
        seq: TcpSeqNumber,
        (syn, syn_mss): (bool, Option<u16>),
        len: usize,
    ) {
        let Some(s) = self.slot_mut(id) else {
            return;
        };
        if syn {
            if s.rx_read.is_none() {
                s.rx_read = Some(seq + 1);
            }
            s.board_mss = Some(effective_mss(syn_mss));
        }
        if len > 0 {
            let end = seq + usize::from(syn) + len;
            if s.board_end.is_none_or(|e| end > e) {
                s.board_end = Some(end);
            }
        }
    }

    /// `n` bytes were taken from socket `id`'s receive ring.
    pub(crate) fn took(&mut self, id: SockId, n: usize) {
        if let Some(s) = self.slot_mut(id)
            && let Some(read) = &mut s.rx_read
        {
            *read += n;
        }
    }

    /// When the next idle socket is due for `release_idle`.
    pub(crate) fn next_release(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, i, serial))) = self.idle.peek() {
            if matches!(self.slots.get(i), Some(Some(s)) if s.idle_serial == serial) {
                return Some(t);
            }
            self.idle.pop();
        }
        None
    }

    /// Give back the pages of the empty rings of every socket untouched for [`RING_IDLE`];
    /// returns how many rings were released. Sockets touched meanwhile, or with a ring that
    /// still holds bytes, are looked at again later; zombies are left alone (freed soon).
    pub(crate) fn release_idle(&mut self, now: Instant) -> u64 {
        self.now = Some(now);
        let mut released = 0;
        while let Some(&Reverse((t, i, serial))) = self.idle.peek() {
            if t > now {
                break;
            }
            self.idle.pop();
            let Some(Some(s)) = self.slots.get_mut(i) else {
                continue;
            };
            if s.idle_serial != serial {
                continue;
            }
            s.idle_serial = 0;
            if s.owner.is_none() {
                continue;
            }
            let again = if s.last_touch + RING_IDLE > now {
                s.last_touch + RING_IDLE
            } else {
                let empty = [s.rx_empty(), s.tx_empty()];
                let Some(how) = &self.page_release else {
                    continue;
                };
                for ((ring, held), empty) in s.rings.iter().zip(&mut s.held).zip(empty) {
                    if *held && empty {
                        ring.release(how);
                        *held = false;
                        released += 1;
                    }
                }
                if s.held == [false; 2] {
                    continue;
                }
                now + RING_IDLE
            };
            self.next_gen += 1;
            s.idle_serial = self.next_gen;
            self.idle.push(Reverse((again, i, self.next_gen)));
        }
        released
    }

    /// The socket, to look at or change without making it pending: the caller marks it
    /// (`mark_pending`) if it changed anything egress or its deadline depends on.
    pub(crate) fn get_mut_quiet(&mut self, id: SockId) -> &mut tcp::Socket<'static> {
        match self.slots.get_mut(id.0) {
            Some(Some(s)) => s.set.get_mut::<tcp::Socket<'static>>(s.handle),
            _ => unreachable!("TCP socket {id:?} is not in the pool"),
        }
    }

    pub(crate) fn mark_pending(&mut self, id: SockId) {
        if let Some(s) = self.slot_mut(id)
            && !s.pending
        {
            s.pending = true;
            self.pending.push(id);
        }
    }

    /// Something may be waiting to be sent.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Hand one board segment to socket `id` (`None`: no socket takes it, smoltcp answers a RST).
    pub(crate) fn ingress(
        &mut self,
        id: Option<SockId>,
        iface: &mut Interface,
        now: Instant,
        dev: &mut SmolDevice<'_>,
    ) {
        self.now = Some(now);
        let set = match id {
            Some(id) => {
                self.mark_pending(id);
                self.touch(id);
                match self.slots.get_mut(id.0) {
                    Some(Some(s)) => &mut s.set,
                    _ => unreachable!("TCP socket {id:?} is not in the pool"),
                }
            }
            None => self.empty.get_or_insert_with(|| SocketSet::new(Vec::new())),
        };
        #[cfg(test)]
        {
            self.visits += 1;
        }
        iface.poll_ingress_single(now, dev, set);
    }

    /// Run egress for the pending sockets, one segment from each per round so that bulk flows
    /// share the board queue or sink, until none has more or `dev` is full (the rest stay
    /// pending). A socket the device refused (its next segment may not fit the sink's rest)
    /// stays pending with its data; the others of the round still run (a small segment may
    /// fit). Every socket that finished its turn gets its next deadline on the heap and its flow
    /// pushed to `touched` (its state may have moved: a timeout, TIME-WAIT over).
    pub(crate) fn egress(
        &mut self,
        iface: &mut Interface,
        now: Instant,
        dev: &mut SmolDevice<'_>,
        touched: &mut Vec<FlowId>,
    ) {
        self.now = Some(now);
        let mut round = core::mem::take(&mut self.pending);
        let mut next = Vec::new();
        let mut held = Vec::new();
        while !round.is_empty() {
            for (k, &id) in round.iter().enumerate() {
                if dev.full() {
                    dev.queue.blocked = true;
                    next.extend_from_slice(&round[k..]);
                    break;
                }
                let Some(slot) = self.slots.get_mut(id.0).and_then(Option::as_mut) else {
                    continue;
                };
                if !slot.pending {
                    continue; // a duplicate of an id freed and reused meanwhile
                }
                #[cfg(test)]
                {
                    self.visits += 1;
                }
                dev.set_bound(
                    slot.set
                        .get::<tcp::Socket<'static>>(slot.handle)
                        .send_queue(),
                    slot.board_mss,
                );
                dev.refused = false;
                let before = dev.emitted;
                iface.poll_egress(now, dev, &mut slot.set);
                if dev.emitted > before {
                    next.push(id);
                    continue;
                }
                if dev.refused {
                    held.push(id);
                    continue;
                }
                slot.pending = false;
                touched.extend(slot.owner);
                let at = iface.poll_at(now, &slot.set);
                self.next_gen += 1;
                slot.timer_gen = self.next_gen;
                if let Some(t) = at {
                    self.timers.push(Reverse((t, id.0, self.next_gen)));
                }
            }
            if dev.full() {
                break;
            }
            round = core::mem::take(&mut next);
        }
        // What is left stays pending (its flag is still set); new ones may have joined.
        next.append(&mut held);
        next.append(&mut self.pending);
        self.pending = next;
        self.compact_timers();
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, i, g))) = self.timers.peek() {
            if self.is_live(i, g) {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    /// Sockets whose deadline has come become pending; their flows are pushed to `touched`.
    pub(crate) fn due(&mut self, now: Instant, touched: &mut Vec<FlowId>) {
        self.now = Some(now);
        while let Some(&Reverse((t, i, g))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.is_live(i, g) {
                let id = SockId(i);
                if let Some(s) = self.slot_mut(id) {
                    s.timer_gen = 0;
                    touched.extend(s.owner);
                }
                self.mark_pending(id);
            }
        }
    }

    fn is_live(&self, i: usize, generation: u64) -> bool {
        matches!(self.slots.get(i), Some(Some(s)) if s.timer_gen == generation)
    }

    /// Every settle pushes a heap entry and leaves the previous one stale: rebuild the heap from
    /// the live entries when stale ones outnumber them, so it stays O(sockets).
    fn compact_timers(&mut self) {
        if self.timers.len() <= 2 * self.live + 64 {
            return;
        }
        let slots = &self.slots;
        self.timers.retain(
            |&Reverse((_, i, g))| matches!(slots.get(i), Some(Some(s)) if s.timer_gen == g),
        );
        self.timers.shrink_to(2 * self.timers.len());
    }

    /// Bytes of the pool's own containers (capacity, not length), for tests.
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> usize {
        use core::mem::size_of;
        self.slots.capacity() * size_of::<Option<Slot>>()
            + (self.free.capacity() + self.pending.capacity()) * size_of::<usize>()
            + (self.timers.capacity() + self.idle.capacity())
                * size_of::<Reverse<(Instant, usize, u64)>>()
    }

    /// Resident whole pages of socket `id`'s rings (receive, transmit), for tests.
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) fn resident_pages(&self, id: SockId) -> [usize; 2] {
        let s = self.slot(id);
        [s.rings[0].resident_pages(), s.rings[1].resident_pages()]
    }

    /// The sockets in the pool, for tests that recount.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &tcp::Socket<'static>> {
        self.slots
            .iter()
            .flatten()
            .map(|s| s.set.get::<tcp::Socket<'static>>(s.handle))
    }
}

/// The segment size smoltcp uses towards a peer whose SYN carried `mss`: the option's value
/// (a zero one counts as absent, and it is never below smoltcp's floor), else TCP's default.
fn effective_mss(mss: Option<u16>) -> usize {
    match mss {
        Some(m) if m != 0 => usize::from(m).max(MIN_REMOTE_MSS),
        _ => DEFAULT_MSS,
    }
}

/// smoltcp's floor for a peer's MSS option, and its MSS when the option is absent (RFC 9293).
const MIN_REMOTE_MSS: usize = 48;
const DEFAULT_MSS: usize = 536;
