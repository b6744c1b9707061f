//! PURE: one end of a link, the part both programs share: the [`Session`], the [`Framing`] of the
//! attached link, and the assembly of outgoing bundles. The board's pump and the host's core
//! each wrap one and add their own packet source (the board's TUN staging, the host's NAT).
//!
//! ```text
//!  handle_link_up(framing) ─▶ Session reset (Hello again)      handle_link_down ─▶ Session reset
//!  handle_bundle ─▶ Session (control records) ─IP─▶ caller's callback
//!  transmit(buf, cap, fill) ─▶ Session control first ─▶ fill(packets) ─▶ finish_for(framing)
//!                               ─▶ Session::record_tx        (None: no link, or nothing to send)
//! ```

use crate::{BundleWriter, FrameError, Framing, Instant, Session, SessionConfig};

/// One bundle built by [`Endpoint::transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Bytes to send: `buf[..len]` (with the USB pad when the framing needs it).
    pub len: usize,
    /// IP packets in it.
    pub packets: u64,
    /// IP bytes in it.
    pub bytes: u64,
}

/// One end of a link (see the module docs).
#[derive(Debug)]
pub struct Endpoint {
    session: Session,
    framing: Option<Framing>,
}

impl Endpoint {
    /// An endpoint with no link attached.
    pub fn new(cfg: SessionConfig, now: Instant) -> Self {
        Self {
            session: Session::new(cfg, now),
            framing: None,
        }
    }

    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session, for timers, Stats, LinkConfig changes and Bye.
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// The attached link's framing (`None`: no link).
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// A link is attached: the session starts over with Hello.
    pub fn handle_link_up(&mut self, now: Instant, framing: Framing) {
        self.framing = Some(framing);
        self.session.reset(now);
    }

    /// The link is gone: the session is reset. Returns whether a link was attached.
    pub fn handle_link_down(&mut self, now: Instant) -> bool {
        self.session.reset(now);
        self.framing.take().is_some()
    }

    /// Stops transmitting on the attached link without touching the session (the caller closes a
    /// link whose peer went silent; `handle_link_down` follows). Returns whether one was attached.
    pub fn detach(&mut self) -> bool {
        self.framing.take().is_some()
    }

    /// One received bundle: control records go to the session, IP records to `on_ip` with
    /// their channel (see [`Session::handle_bundle`] for the errors).
    pub fn handle_bundle(
        &mut self,
        now: Instant,
        data: &[u8],
        on_ip: impl FnMut(u8, &[u8]),
    ) -> Result<(), FrameError> {
        self.session.handle_bundle(now, data, on_ip)
    }

    /// Whether [`transmit`](Self::transmit) may have something: a link is attached and the
    /// session or the caller (`more`) has something waiting.
    pub fn wants_transmit(&self, more: bool) -> bool {
        self.framing.is_some() && (more || self.session.has_pending_control())
    }

    /// Builds one bundle of at most `cap` bytes in `buf`: pending control records first, then
    /// what `fill` adds (it returns the IP packets and bytes it wrote; the session is lent to it
    /// for [`Session::record_tx_drop`]). `None` when no link is attached or the bundle is empty.
    pub fn transmit(
        &mut self,
        buf: &mut [u8],
        cap: usize,
        fill: impl FnOnce(&mut BundleWriter<'_>, &mut Session) -> (u64, u64),
    ) -> Option<Transmit> {
        let framing = self.framing?;
        let mut w = BundleWriter::new(buf, cap);
        self.session.poll_control(&mut w);
        let (packets, bytes) = fill(&mut w, &mut self.session);
        if w.is_empty() {
            return None;
        }
        let len = w.finish_for(framing);
        self.session.record_tx(packets, bytes);
        Some(Transmit {
            len,
            packets,
            bytes,
        })
    }
}
