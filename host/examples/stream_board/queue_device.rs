//! A queue-backed smoltcp IP device: the "TUN" of the in-process boards of the host's tests
//! (`tests/loopback.rs`, which includes this file by `#[path]`) and of this example.
//! Packets to the board are pushed to `rx`; packets the board sends come out of `tx`, and
//! [`QueueDevice::next_bundle`] packs them with the session's control messages for the host.

use std::collections::VecDeque;

use shared_frame::{BundleWriter, CHANNEL_NET, Session};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant as SmolInstant;

/// The largest IP packet the board's stack sends.
pub(crate) const MTU: usize = 16384;

/// A queue-backed IP device: the board's "TUN".
#[derive(Default)]
pub(crate) struct QueueDevice {
    pub(crate) rx: VecDeque<Vec<u8>>,
    pub(crate) tx: VecDeque<Vec<u8>>,
}

pub(crate) struct RxToken(Vec<u8>);
pub(crate) struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        let p = self.rx.pop_front()?;
        Some((RxToken(p), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = MTU;
        c
    }
}

impl QueueDevice {
    /// The next bundle for the host (the session's pending control messages, then queued
    /// packets as far as they fit), or `None` when there is nothing to send.
    pub(crate) fn next_bundle(&mut self, session: &mut Session) -> Option<Vec<u8>> {
        if !session.has_pending_control() && self.tx.is_empty() {
            return None;
        }
        let mut buf = vec![0u8; 65536];
        let mut w = BundleWriter::new(&mut buf, session.tx_max_bundle());
        session.poll_control(&mut w);
        while let Some(p) = self.tx.front() {
            if w.push_ip(CHANNEL_NET, p).is_err() {
                break;
            }
            self.tx.pop_front();
        }
        let n = w.finish();
        buf.truncate(n);
        Some(buf)
    }
}
