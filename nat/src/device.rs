//! The smoltcp `Device` glue: a borrowed one-packet receive slot and a bounded board queue.
//!
//! Board → core: `handle_ip_packet` lends its slice to a [`SmolDevice`] for one
//! `poll_ingress_single` call, so TCP segments reach smoltcp without a copy. Core → board: smoltcp
//! (and the UDP/ICMP code) write packets into [`BoardQueue`], which `poll_ip_packet` drains.
//! The queue is bounded: `transmit()` refuses tokens when it is full, so smoltcp keeps unsent data
//! in its socket buffers (TCP backpressure) instead of growing the queue.

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

    pub(crate) fn len(&self) -> usize {
        self.packets.len()
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

/// A device that lends smoltcp at most one received packet and transmits into the board queue.
pub(crate) struct SmolDevice<'a> {
    pub(crate) rx: Option<&'a [u8]>,
    pub(crate) queue: &'a mut BoardQueue,
    pub(crate) caps: &'a DeviceCapabilities,
}

impl phy::Device for SmolDevice<'_> {
    type RxToken<'b>
        = RxTok<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxTok<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let pkt = self.rx.take()?;
        Some((
            RxTok(pkt),
            TxTok {
                queue: self.queue,
                force: true,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if self.queue.is_full() {
            self.queue.blocked = true;
            None
        } else {
            Some(TxTok {
                queue: self.queue,
                force: false,
            })
        }
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

pub(crate) struct TxTok<'a> {
    queue: &'a mut BoardQueue,
    force: bool,
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.queue
            .push_with(len, self.force, f)
            .unwrap_or_else(|f| {
                // Over the hard limit (only reachable for replies): build and discard.
                let mut scratch = vec![0; len];
                f(&mut scratch)
            })
    }
}
