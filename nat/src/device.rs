//! The smoltcp `Device` glue: a borrowed one-packet receive slot, a [`BoardSink`] that TCP
//! output is written straight into, and a bounded board queue for everything else.
//!
//! Board → core: `handle_ip_packet` lends its slice to a [`SmolDevice`] for one
//! `poll_ingress_single` call, so TCP segments reach smoltcp without a copy. Core → board: while
//! the driver fills a bundle (`poll_ip_packets`), smoltcp's egress writes each TCP segment
//! straight into the driver's [`BoardSink`] (the bundle's free space), so a byte read from an OS
//! socket is copied once more only, from the socket's ring into the bundle. Everything made while
//! no sink is lent (replies to board packets, UDP/ICMP packets, egress run by a timer, the
//! `poll_ip_packet` driver) and the one segment that turned out larger than the sink's rest go to
//! [`BoardQueue`], which is drained first, so the board sees packets in the order they were made.
//!
//! Backpressure: the queue is bounded and `transmit()` refuses tokens when it is full; with a sink
//! it refuses a socket whose next segment may not fit (its bound: the largest headers plus the
//! bytes it holds, at most the MTU) unless the sink holds nothing yet, and everything after a
//! segment went to the queue. A refused socket keeps its unsent data in its ring and stays pending
//! for the next bundle, so neither the queue nor a sink ever grows.
//!
//! Stale bytes: a sink's space held earlier bundles and is not cleared. smoltcp's TCP egress writes
//! every byte of the packet it asked for (IPv4 or IPv6 header without options, every TCP header
//! field, options padded to the header length with end-of-list bytes, the payload), so nothing old
//! shows through; `tests/egress.rs` checks that with a sink full of poison bytes. The queue's
//! buffers are zero-filled before anyone writes into them.

use std::collections::VecDeque;

use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Buffers kept for reuse after `poll_ip_packet` copied them out. Bounded so an idle core holds
/// little memory after a burst.
const POOL_MAX: usize = 16;

/// Packets waiting for the board, oldest first.
#[derive(Debug)]
pub(crate) struct BoardQueue {
    packets: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    limit: usize,
    /// Set when smoltcp was refused a token: egress must run again once the queue drains.
    pub(crate) blocked: bool,
}

impl BoardQueue {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            packets: VecDeque::new(),
            pool: Vec::new(),
            limit,
            blocked: false,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.packets.len() >= self.limit
    }

    /// Packets queued, for tests.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.packets.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Queue a packet of `len` bytes written by `fill`. `force` lets replies (RST, ACK for an
    /// ingress packet) exceed the soft limit up to twice it. Returns false when dropped.
    pub(crate) fn push_with<R, F: FnOnce(&mut [u8]) -> R>(
        &mut self,
        len: usize,
        force: bool,
        fill: F,
    ) -> Result<R, F> {
        let hard = if force { self.limit * 2 } else { self.limit };
        if self.packets.len() >= hard {
            return Err(fill);
        }
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        let r = fill(&mut buf);
        self.packets.push_back(buf);
        Ok(r)
    }

    /// Length of the oldest packet.
    pub(crate) fn front_len(&self) -> Option<usize> {
        self.packets.front().map(Vec::len)
    }

    /// Copy the oldest packet into `out`. `Err(len)` means `out` was too small; that packet is
    /// dropped.
    pub(crate) fn pop_into(&mut self, out: &mut [u8]) -> Option<Result<usize, usize>> {
        let buf = self.packets.pop_front()?;
        let len = buf.len();
        let res = if let Some(dst) = out.get_mut(..len) {
            dst.copy_from_slice(&buf);
            Ok(len)
        } else {
            Err(len)
        };
        if self.pool.len() < POOL_MAX {
            self.pool.push(buf);
        }
        Some(res)
    }
}

/// Where the driver lets the core write packets for the board: the free space of the bundle it
/// is filling ([`Nat::poll_ip_packets`](crate::Nat::poll_ip_packets)). Each packet is asked for
/// with its exact length, written in full, then committed.
pub trait BoardSink {
    /// The largest packet it takes now (0: full).
    fn room(&self) -> usize;
    /// Space for a packet of exactly `len` bytes, or `None` when it does not fit. The space may
    /// hold old bytes: the core writes every one of the `len` bytes before [`commit`](Self::commit).
    fn buffer(&mut self, len: usize) -> Option<&mut [u8]>;
    /// The packet written into the last [`buffer`](Self::buffer) is complete.
    fn commit(&mut self, len: usize);
}

/// The largest IP + TCP headers smoltcp puts in front of a segment's payload (IPv6 without
/// extension headers, 40; TCP with options, at most 60).
pub(crate) const MAX_TCP_HEADERS: usize = 40 + 60;

/// The sink lent to one egress run.
pub(crate) struct Direct<'a> {
    sink: &'a mut dyn BoardSink,
    counters: &'a mut crate::Counters,
    /// Nothing was written into the sink yet in this fill: the next segment is let through
    /// whatever its bound (it goes to the queue if it does not fit), so a sink smaller than
    /// the MTU cannot stall egress.
    empty: bool,
    /// A segment did not fit and went to the queue: nothing more goes to the sink (order).
    spilled: bool,
}

impl<'a> Direct<'a> {
    pub(crate) fn new(
        sink: &'a mut dyn BoardSink,
        counters: &'a mut crate::Counters,
        empty: bool,
    ) -> Self {
        Self {
            sink,
            counters,
            empty,
            spilled: false,
        }
    }
}

/// Device capabilities shared by every `SmolDevice`: IP medium, our MTU, checksums always
/// computed on transmit and verified on receive only when configured.
pub(crate) fn capabilities(mtu: usize, verify_rx: bool) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = mtu;
    caps.checksum = checksum_caps(verify_rx);
    caps
}

pub(crate) fn checksum_caps(verify_rx: bool) -> ChecksumCapabilities {
    let mut c = ChecksumCapabilities::default();
    let mode = if verify_rx {
        phy::Checksum::Both
    } else {
        phy::Checksum::Tx
    };
    c.tcp = mode;
    c.udp = mode;
    c.icmpv4 = mode;
    c.icmpv6 = mode;
    // The IPv4 header checksum is verified by the core itself before smoltcp sees the packet.
    c.ipv4 = phy::Checksum::Tx;
    c
}

/// A device that lends smoltcp at most one received packet and transmits into the sink, if one
/// is lent (egress while a bundle is filled), or the board queue.
pub(crate) struct SmolDevice<'a> {
    rx: Option<&'a [u8]>,
    pub(crate) queue: &'a mut BoardQueue,
    caps: &'a DeviceCapabilities,
    direct: Option<Direct<'a>>,
    /// With a sink: the bound of the next segment of the socket egress runs for.
    need: usize,
    /// `transmit()` refused a token since this was last cleared (the socket keeps its data).
    pub(crate) refused: bool,
    /// Packets made (into the sink or the queue).
    pub(crate) emitted: usize,
}

impl<'a> SmolDevice<'a> {
    pub(crate) fn new(
        rx: Option<&'a [u8]>,
        queue: &'a mut BoardQueue,
        caps: &'a DeviceCapabilities,
        direct: Option<Direct<'a>>,
    ) -> Self {
        Self {
            rx,
            queue,
            caps,
            direct,
            need: 0,
            refused: false,
            emitted: 0,
        }
    }

    /// No more segments go out in this egress run: the queue is full, or the sink is full or
    /// took its last segment (one went to the queue).
    pub(crate) fn full(&self) -> bool {
        match &self.direct {
            Some(d) => d.spilled || d.sink.room() == 0,
            None => self.queue.is_full(),
        }
    }

    /// Before egress runs for a socket holding `send_queue` bytes whose peer (the board)
    /// announced `board_mss` in its SYN: the largest packet it can make now. Without the MSS a
    /// board that clamps it below the link's (a router's 1460) would get one segment per
    /// bundle, each refused into the next one for room it never needs; a bound that turns out
    /// too small only sends that segment to the queue (it leads the next bundle).
    pub(crate) fn set_bound(&mut self, send_queue: usize, board_mss: Option<usize>) {
        let payload = board_mss.map_or(send_queue, |mss| send_queue.min(mss));
        self.need = self
            .caps
            .max_transmission_unit
            .min(MAX_TCP_HEADERS.saturating_add(payload));
    }

    fn may_transmit(&self) -> bool {
        match &self.direct {
            Some(d) => !d.spilled && (d.empty || d.sink.room() >= self.need),
            None => !self.queue.is_full(),
        }
    }
}

impl<'a> phy::Device for SmolDevice<'a> {
    type RxToken<'b>
        = RxTok<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxTok<'b, 'a>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let pkt = self.rx.take()?;
        Some((
            RxTok(pkt),
            TxTok {
                queue: self.queue,
                direct: None,
                emitted: &mut self.emitted,
                force: true,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if !self.may_transmit() {
            self.refused = true;
            self.queue.blocked = true;
            return None;
        }
        Some(TxTok {
            queue: self.queue,
            direct: self.direct.as_mut(),
            emitted: &mut self.emitted,
            force: false,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

pub(crate) struct RxTok<'a>(&'a [u8]);

impl phy::RxToken for RxTok<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

pub(crate) struct TxTok<'a, 'd> {
    queue: &'a mut BoardQueue,
    direct: Option<&'a mut Direct<'d>>,
    emitted: &'a mut usize,
    force: bool,
}

impl phy::TxToken for TxTok<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        *self.emitted += 1;
        if let Some(d) = self.direct {
            if let Some(buf) = d.sink.buffer(len) {
                let r = f(buf);
                d.counters.count_tx(buf);
                d.sink.commit(len);
                d.empty = false;
                return r;
            }
            // Larger than the sink's rest: queued, and the sink takes nothing more (order).
            d.spilled = true;
        }
        self.queue
            .push_with(len, self.force, f)
            .unwrap_or_else(|f| {
                // Over the hard limit (only reachable for replies): build and discard.
                let mut scratch = vec![0; len];
                f(&mut scratch)
            })
    }
}
