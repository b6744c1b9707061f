//! The sans-IO USB/IP client after import: it numbers URBs, queues their CMD_SUBMIT / CMD_UNLINK
//! bytes, and turns the server's byte stream back into completions.
//!
//! # Theory of operation
//!
//! ```text
//!  submit_bulk_in / submit_bulk_out / submit_control / unlink ──► tx bytes ──► poll_transmit() ──► socket
//!  socket ──► handle_bytes(&[u8]) ──► header (48) ─► payload (IN data) ──► poll_event() ──► Completed / Unlinked
//!                                    handle_eof() ──► Ok, or PeerClosed if URBs or a message were pending
//! ```
//!
//! - Sequence numbers start at 1 and increase per URB and per unlink (0 is never used), as vhci-hcd does.
//! - Every URB in flight is in a table keyed by seqnum with its endpoint, direction and buffer length.
//!   A RET_SUBMIT is only accepted for a seqnum in that table; its payload length comes from the table
//!   (IN: actual_length bytes, OUT: none), because a server leaves the reply's direction field 0.
//! - Several URBs may be in flight on one endpoint; completions arrive in the server's order and are
//!   matched by seqnum, not by position.
//! - Unlink: after a RET_UNLINK the unlinked URB gets no RET_SUBMIT (usbip-host sends a completion that
//!   raced the unlink before the RET_UNLINK), so a URB still in the table then is cancelled.
//!
//! # Limits (all bounded)
//!
//! - URBs in flight: [`ClientConfig::max_in_flight`]; more submits fail with [`Error::InFlightLimit`].
//! - Bytes per transfer: [`ClientConfig::max_transfer`], for submits and therefore for replies
//!   (a reply can never carry more than its URB asked for, else [`Error::Overflow`]).
//! - Receive buffering: one 48-byte header plus the payload of the one reply being read.
//! - Transmit buffering: the queued commands, at most `max_in_flight` of them with their OUT data.
//!
//! # Errors
//!
//! Anything that cannot be a valid reply (unknown command, unknown seqnum, a length beyond the request,
//! isochronous descriptors) desynchronises the stream: `handle_bytes` returns the error and every later
//! call returns [`Error::Failed`] with it. The driver closes the connection and reconnects. Waiting is
//! the driver's business (this core has no timers): it bounds the connection setup with a deadline,
//! and a peer that closes the stream is reported by [`Client::handle_eof`].

use std::collections::{HashMap, VecDeque};

use crate::Error;
use crate::urb::{
    CmdSubmit, CmdUnlink, Direction, HEADER_LEN, Pdu, RetSubmit, RetUnlink, SetupPacket, flags,
};

/// Limits of a [`Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// URBs in flight at once, over all endpoints (default 64: far above the 4 IN + 2 OUT + 1 control
    /// the transport uses, far below anything that could exhaust memory).
    pub max_in_flight: usize,
    /// Largest transfer in bytes (default 1 MiB, the largest bundle qbkit allows).
    pub max_transfer: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            max_transfer: 1024 * 1024,
        }
    }
}

impl ClientConfig {
    /// Sets [`Self::max_in_flight`].
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }
    /// Sets [`Self::max_transfer`].
    #[must_use]
    pub fn max_transfer(mut self, n: usize) -> Self {
        self.max_transfer = n;
        self
    }
}

/// Transfer type of a URB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferKind {
    /// Endpoint 0 control transfer.
    Control,
    /// Bulk transfer.
    Bulk,
}

/// A finished URB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The URB's sequence number (as returned by the submit call).
    pub seqnum: u32,
    /// Endpoint address: number with bit 7 set for IN (control: 0x00 or 0x80).
    pub endpoint: u8,
    /// Control or bulk.
    pub kind: TransferKind,
    /// 0, or a negative errno ([`crate::status_name`]).
    pub status: i32,
    /// Bytes transferred.
    pub actual_length: u32,
    /// IN data (`actual_length` bytes); empty for OUT.
    pub data: Vec<u8>,
}

/// Output of the client for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A URB finished (successfully or with an error status).
    Completed(Completion),
    /// A CMD_UNLINK was answered.
    Unlinked {
        /// The URB that was to be unlinked.
        urb: u32,
        /// The RET_UNLINK status (-ECONNRESET when the URB was cancelled).
        status: i32,
        /// True when the URB had not completed: it is gone and gets no [`ClientEvent::Completed`].
        cancelled: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    endpoint: u8,
    kind: TransferKind,
    direction: Direction,
    requested: u32,
}

#[derive(Debug)]
enum Rx {
    /// Reading a header; `hdr_len` bytes of it are in `hdr`.
    Header,
    /// Reading the IN payload of a RET_SUBMIT.
    Payload {
        ret: RetSubmit,
        pending: Pending,
        data: Vec<u8>,
    },
}

/// The sans-IO USB/IP client for one imported device. See the module docs.
#[derive(Debug)]
pub struct Client {
    devid: u32,
    cfg: ClientConfig,
    next_seq: u32,
    in_flight: HashMap<u32, Pending>,
    /// CMD_UNLINK seqnum → the URB it unlinks.
    unlinks: HashMap<u32, u32>,
    tx: Vec<u8>,
    hdr: [u8; HEADER_LEN],
    hdr_len: usize,
    rx: Rx,
    events: VecDeque<ClientEvent>,
    failed: Option<Error>,
}

impl Client {
    /// A client for the device `devid` (`busnum << 16 | devnum`, from the import reply or the
    /// qubes.USB line).
    pub fn new(devid: u32, cfg: ClientConfig) -> Self {
        Self {
            devid,
            cfg,
            next_seq: 1,
            in_flight: HashMap::new(),
            unlinks: HashMap::new(),
            tx: Vec::new(),
            hdr: [0; HEADER_LEN],
            hdr_len: 0,
            rx: Rx::Header,
            events: VecDeque::new(),
            failed: None,
        }
    }

    /// The device id every command carries.
    pub fn devid(&self) -> u32 {
        self.devid
    }

    /// URBs submitted and not yet completed or cancelled.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// URBs in flight on one endpoint address (e.g. 0x81).
    pub fn in_flight_on(&self, endpoint: u8) -> usize {
        self.in_flight
            .values()
            .filter(|p| p.endpoint == endpoint)
            .count()
    }

    /// Submits a bulk IN URB of `len` bytes on endpoint number `ep` (1..=15, or the address 0x81..).
    ///
    /// A short packet ends the transfer early (no SHORT_NOT_OK): the completion carries what arrived.
    pub fn submit_bulk_in(&mut self, ep: u8, len: u32) -> Result<u32, Error> {
        let ep = Self::bulk_ep(ep, 0x80)?;
        self.submit(
            ep | 0x80,
            TransferKind::Bulk,
            Direction::In,
            flags::DIR_IN,
            len,
            [0; 8],
            &[],
        )
    }

    /// Submits a bulk OUT URB carrying `data` on endpoint number `ep` (1..=15).
    ///
    /// The URB carries URB_ZERO_PACKET, so a transfer whose length is a multiple of wMaxPacketSize
    /// ends with a zero-length packet and the device's read returns; callers need no padding.
    pub fn submit_bulk_out(&mut self, ep: u8, data: &[u8]) -> Result<u32, Error> {
        let ep = Self::bulk_ep(ep, 0)?;
        let len = self.check_len(data.len())?;
        self.submit(
            ep,
            TransferKind::Bulk,
            Direction::Out,
            flags::ZERO_PACKET,
            len,
            [0; 8],
            data,
        )
    }

    /// Submits a control transfer on endpoint 0. For an IN request `data` must be empty and
    /// `setup.length` bytes are read; for an OUT request `data` must be `setup.length` bytes.
    pub fn submit_control(&mut self, setup: SetupPacket, data: &[u8]) -> Result<u32, Error> {
        let dir = setup.direction();
        match dir {
            Direction::In if !data.is_empty() => {
                return Err(Error::BadSetup("data given for an IN request"));
            }
            Direction::Out if data.len() != usize::from(setup.length) => {
                return Err(Error::BadSetup("data length differs from wLength"));
            }
            _ => {}
        }
        let (endpoint, fl) = match dir {
            Direction::In => (0x80, flags::DIR_IN),
            Direction::Out => (0x00, 0),
        };
        self.submit(
            endpoint,
            TransferKind::Control,
            dir,
            fl,
            u32::from(setup.length),
            setup.to_bytes(),
            data,
        )
    }

    /// Asks the server to cancel URB `seqnum`. Returns the CMD_UNLINK's own seqnum; the answer is a
    /// [`ClientEvent::Unlinked`].
    pub fn unlink(&mut self, seqnum: u32) -> Result<u32, Error> {
        self.check_failed()?;
        if !self.in_flight.contains_key(&seqnum) {
            return Err(Error::NotInFlight(seqnum));
        }
        let seq = self.alloc_seq();
        Pdu::CmdUnlink(CmdUnlink {
            seqnum: seq,
            devid: self.devid,
            direction: 0,
            ep: 0,
            unlink_seqnum: seqnum,
        })
        .emit(&mut self.tx);
        self.unlinks.insert(seq, seqnum);
        Ok(seq)
    }

    /// Bytes of queued commands not yet taken by [`Self::poll_transmit`].
    pub fn transmit_pending(&self) -> usize {
        self.tx.len()
    }

    /// Bytes to write to the peer, all queued commands at once; `None` when nothing is queued.
    /// Call after every submit/unlink (or batch of them) and write everything it returns, in order.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.tx.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.tx))
        }
    }

    /// The next completion or unlink result. Call after `handle_bytes` until it returns `None`.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Feeds bytes received from the peer, in any split. Decodes every complete reply into events.
    ///
    /// # Errors
    /// A reply that cannot be valid (see the module docs); the client is then failed for good.
    pub fn handle_bytes(&mut self, mut input: &[u8]) -> Result<(), Error> {
        self.check_failed()?;
        while !input.is_empty() {
            let step = match &mut self.rx {
                Rx::Header => {
                    let n = (HEADER_LEN - self.hdr_len).min(input.len());
                    self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&input[..n]);
                    self.hdr_len += n;
                    input = &input[n..];
                    if self.hdr_len == HEADER_LEN {
                        self.hdr_len = 0;
                        self.on_header()
                    } else {
                        Ok(())
                    }
                }
                Rx::Payload { data, ret, .. } => {
                    let want = ret.actual_length as usize - data.len();
                    let n = want.min(input.len());
                    data.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if n == want
                        && let Rx::Payload { ret, pending, data } =
                            std::mem::replace(&mut self.rx, Rx::Header)
                    {
                        self.complete(ret, pending, data);
                    }
                    Ok(())
                }
            };
            if let Err(e) = step {
                self.failed = Some(e.clone());
                return Err(e);
            }
        }
        Ok(())
    }

    /// The peer closed its side of the stream.
    ///
    /// # Errors
    /// [`Error::PeerClosed`] when URBs were in flight or a reply was cut off: the device vanished
    /// mid-transfer. A close with nothing pending is `Ok`.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        let partial = match &self.rx {
            Rx::Header => self.hdr_len,
            Rx::Payload { data, .. } => HEADER_LEN + data.len(),
        };
        if self.in_flight.is_empty() && partial == 0 && self.failed.is_none() {
            return Ok(());
        }
        let e = Error::PeerClosed {
            in_flight: self.in_flight.len(),
            partial,
        };
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        Err(e)
    }

    fn check_failed(&self) -> Result<(), Error> {
        match &self.failed {
            Some(e) => Err(Error::Failed(Box::new(e.clone()))),
            None => Ok(()),
        }
    }

    fn check_len(&self, len: usize) -> Result<u32, Error> {
        if len > self.cfg.max_transfer || u32::try_from(len).is_err() {
            return Err(Error::TransferTooLarge {
                len,
                max: self.cfg.max_transfer,
            });
        }
        Ok(len as u32)
    }

    /// Accepts an endpoint number 1..=15 or an address with the expected direction bit.
    fn bulk_ep(ep: u8, dir_bit: u8) -> Result<u8, Error> {
        let n = ep & 0x0f;
        if n == 0 || ep & 0x70 != 0 || (ep & 0x80 != 0 && dir_bit == 0) {
            return Err(Error::BadEndpoint(ep));
        }
        Ok(n)
    }

    fn alloc_seq(&mut self) -> u32 {
        loop {
            let s = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1).max(1);
            if !self.in_flight.contains_key(&s) && !self.unlinks.contains_key(&s) {
                return s;
            }
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "private helper; each call site names its values"
    )]
    fn submit(
        &mut self,
        endpoint: u8,
        kind: TransferKind,
        direction: Direction,
        transfer_flags: u32,
        len: u32,
        setup: [u8; 8],
        out_data: &[u8],
    ) -> Result<u32, Error> {
        self.check_failed()?;
        self.check_len(len as usize)?;
        if self.in_flight.len() >= self.cfg.max_in_flight {
            return Err(Error::InFlightLimit {
                max: self.cfg.max_in_flight,
            });
        }
        let seqnum = self.alloc_seq();
        Pdu::CmdSubmit(CmdSubmit {
            seqnum,
            devid: self.devid,
            direction,
            ep: u32::from(endpoint & 0x0f),
            transfer_flags,
            transfer_buffer_length: len,
            start_frame: 0,
            number_of_packets: 0,
            interval: 0,
            setup,
        })
        .emit(&mut self.tx);
        self.tx.extend_from_slice(out_data);
        self.in_flight.insert(
            seqnum,
            Pending {
                endpoint,
                kind,
                direction,
                requested: len,
            },
        );
        Ok(seqnum)
    }

    fn on_header(&mut self) -> Result<(), Error> {
        match Pdu::parse(&self.hdr)? {
            Pdu::RetSubmit(ret) => {
                let Some(&pending) = self.in_flight.get(&ret.seqnum) else {
                    return Err(Error::UnknownSeqnum(ret.seqnum));
                };
                if ret.number_of_packets != 0 && ret.number_of_packets != u32::MAX {
                    return Err(Error::Isochronous {
                        seqnum: ret.seqnum,
                        packets: ret.number_of_packets,
                    });
                }
                if ret.actual_length > pending.requested {
                    return Err(Error::Overflow {
                        seqnum: ret.seqnum,
                        actual: ret.actual_length,
                        requested: pending.requested,
                    });
                }
                if pending.direction == Direction::In && ret.actual_length > 0 {
                    self.rx = Rx::Payload {
                        ret,
                        pending,
                        data: Vec::with_capacity(ret.actual_length as usize),
                    };
                } else {
                    self.complete(ret, pending, Vec::new());
                }
                Ok(())
            }
            Pdu::RetUnlink(RetUnlink { seqnum, status, .. }) => {
                let Some(urb) = self.unlinks.remove(&seqnum) else {
                    return Err(Error::UnknownSeqnum(seqnum));
                };
                let cancelled = self.in_flight.remove(&urb).is_some();
                self.events.push_back(ClientEvent::Unlinked {
                    urb,
                    status,
                    cancelled,
                });
                Ok(())
            }
            Pdu::CmdSubmit(_) => Err(Error::BadCommand(crate::urb::USBIP_CMD_SUBMIT)),
            Pdu::CmdUnlink(_) => Err(Error::BadCommand(crate::urb::USBIP_CMD_UNLINK)),
        }
    }

    fn complete(&mut self, ret: RetSubmit, pending: Pending, data: Vec<u8>) {
        self.in_flight.remove(&ret.seqnum);
        self.events.push_back(ClientEvent::Completed(Completion {
            seqnum: ret.seqnum,
            endpoint: pending.endpoint,
            kind: pending.kind,
            status: ret.status,
            actual_length: ret.actual_length,
            data,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{hex, ret_submit};
    use crate::urb::ECONNRESET;

    const DEVID: u32 = 0x0011_0002;

    fn completed(c: &mut Client) -> Completion {
        match c.poll_event() {
            Some(ClientEvent::Completed(x)) => x,
            other => panic!("expected a completion, got {other:?}"),
        }
    }

    #[test]
    fn control_get_descriptor_bytes_and_reply() {
        let mut c = Client::new(DEVID, ClientConfig::default());
        let seq = c
            .submit_control(SetupPacket::get_descriptor(1, 0, 18), &[])
            .unwrap();
        assert_eq!(seq, 1);
        // Built from the spec table: CMD_SUBMIT, seqnum 1, devid, direction IN, ep 0, flags DIR_IN,
        // length 18, start_frame 0, packets 0, interval 0, setup 80 06 00 01 00 00 12 00.
        let want = hex(
            "00000001 00000001 00110002 00000001 00000000 00000200 00000012 \
                        00000000 00000000 00000000 8006000100001200",
        );
        assert_eq!(c.poll_transmit().unwrap(), want);
        assert_eq!(c.poll_transmit(), None);
        // The reply: RET_SUBMIT header (spec table) then 18 bytes.
        let desc = [18, 1, 0, 2, 0, 0, 0, 64, 9, 0x12, 1, 0, 0, 1, 1, 2, 3, 1];
        let mut reply = hex(
            "00000003 00000001 00000000 00000000 00000000 00000000 00000012 \
                             00000000 00000000 00000000 0000000000000000",
        );
        reply.extend_from_slice(&desc);
        c.handle_bytes(&reply).unwrap();
        let done = completed(&mut c);
        assert_eq!(
            (done.seqnum, done.endpoint, done.status, done.kind),
            (1, 0x80, 0, TransferKind::Control)
        );
        assert_eq!(done.data, desc);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn bulk_out_bytes_carry_zero_packet() {
        let mut c = Client::new(DEVID, ClientConfig::default());
        c.submit_bulk_out(2, &[0xaa; 4]).unwrap();
        let want = hex(
            "00000001 00000001 00110002 00000000 00000002 00000040 00000004 \
                        00000000 00000000 00000000 0000000000000000 aaaaaaaa",
        );
        assert_eq!(c.poll_transmit().unwrap(), want);
        c.handle_bytes(&ret_submit(1, 0, 4, &[])).unwrap();
        let d = completed(&mut c);
        assert_eq!((d.endpoint, d.actual_length, d.data.len()), (0x02, 4, 0));
    }

    #[test]
    fn several_in_flight_completed_out_of_order_byte_by_byte() {
        let mut c = Client::new(DEVID, ClientConfig::default());
        let seqs: Vec<u32> = (0..4)
            .map(|_| c.submit_bulk_in(0x81, 512).unwrap())
            .collect();
        let o = c.submit_bulk_out(2, b"hello").unwrap();
        assert_eq!(c.in_flight_on(0x81), 4);
        assert_eq!(c.in_flight_on(0x02), 1);
        let _ = c.poll_transmit();
        let mut stream = ret_submit(seqs[2], 0, 3, b"abc");
        stream.extend(ret_submit(o, 0, 5, &[]));
        stream.extend(ret_submit(seqs[0], 0, 0, &[])); // zero-length IN completion
        stream.extend(ret_submit(seqs[1], -32, 2, b"xy")); // stall with partial data
        for b in &stream {
            c.handle_bytes(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(completed(&mut c).data, b"abc");
        assert_eq!(completed(&mut c).seqnum, o);
        assert!(completed(&mut c).data.is_empty());
        let st = completed(&mut c);
        assert_eq!((st.status, st.data.as_slice()), (-32, &b"xy"[..]));
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.in_flight(), 1);
    }

    #[test]
    fn unlink_cancelled_and_raced() {
        let mut c = Client::new(DEVID, ClientConfig::default());
        let a = c.submit_bulk_in(1, 64).unwrap();
        let b = c.submit_bulk_in(1, 64).unwrap();
        let ua = c.unlink(a).unwrap();
        let _ = c.poll_transmit();
        let mut unl = Vec::new();
        Pdu::RetUnlink(RetUnlink {
            seqnum: ua,
            devid: 0,
            direction: 0,
            ep: 0,
            status: ECONNRESET,
        })
        .emit(&mut unl);
        c.handle_bytes(&unl).unwrap();
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Unlinked {
                urb: a,
                status: ECONNRESET,
                cancelled: true
            })
        );
        // b completes before its unlink is answered with status 0.
        let ub = c.unlink(b).unwrap();
        c.handle_bytes(&ret_submit(b, 0, 1, b"z")).unwrap();
        let mut unl = Vec::new();
        Pdu::RetUnlink(RetUnlink {
            seqnum: ub,
            devid: 0,
            direction: 0,
            ep: 0,
            status: 0,
        })
        .emit(&mut unl);
        c.handle_bytes(&unl).unwrap();
        assert_eq!(completed(&mut c).seqnum, b);
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Unlinked {
                urb: b,
                status: 0,
                cancelled: false
            })
        );
        assert_eq!(c.unlink(b), Err(Error::NotInFlight(b)));
        // A completion for the cancelled URB now is garbage.
        assert_eq!(
            c.handle_bytes(&ret_submit(a, 0, 0, &[])),
            Err(Error::UnknownSeqnum(a))
        );
    }

    #[test]
    fn garbage_and_overflow_fail_the_stream() {
        let mut c = Client::new(DEVID, ClientConfig::default());
        let s = c.submit_bulk_in(1, 16).unwrap();
        assert_eq!(
            c.handle_bytes(&ret_submit(s, 0, 17, &[0; 17])),
            Err(Error::Overflow {
                seqnum: s,
                actual: 17,
                requested: 16
            })
        );
        assert!(matches!(
            c.handle_bytes(&[0]),
            Err(Error::Failed(e)) if matches!(*e, Error::Overflow { .. })
        ));
        assert!(matches!(c.submit_bulk_in(1, 1), Err(Error::Failed(_))));

        let mut c = Client::new(DEVID, ClientConfig::default());
        assert_eq!(
            c.handle_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n0123456789"),
            Err(Error::BadCommand(0x4854_5450))
        );
        let mut c = Client::new(DEVID, ClientConfig::default());
        let s = c.submit_bulk_in(1, 16).unwrap();
        let mut iso = ret_submit(s, 0, 0, &[]);
        iso[35] = 3;
        assert!(matches!(
            c.handle_bytes(&iso),
            Err(Error::Isochronous { .. })
        ));
    }

    #[test]
    fn eof_mid_urb_is_an_error() {
        let mut c = Client::new(DEVID, ClientConfig::default());
        assert_eq!(c.handle_eof(), Ok(()));
        let s = c.submit_bulk_in(1, 100).unwrap();
        let r = ret_submit(s, 0, 100, &[7; 100]);
        c.handle_bytes(&r[..60]).unwrap();
        assert_eq!(
            c.handle_eof(),
            Err(Error::PeerClosed {
                in_flight: 1,
                partial: 60
            })
        );
        let mut c = Client::new(DEVID, ClientConfig::default());
        c.submit_bulk_in(1, 100).unwrap();
        assert_eq!(
            c.handle_eof(),
            Err(Error::PeerClosed {
                in_flight: 1,
                partial: 0
            })
        );
    }

    #[test]
    fn limits() {
        let mut c = Client::new(
            DEVID,
            ClientConfig::default().max_in_flight(2).max_transfer(1000),
        );
        c.submit_bulk_in(1, 10).unwrap();
        assert!(matches!(
            c.submit_bulk_in(1, 1001),
            Err(Error::TransferTooLarge { .. })
        ));
        c.submit_bulk_in(1, 10).unwrap();
        assert_eq!(
            c.submit_bulk_out(1, b"x"),
            Err(Error::InFlightLimit { max: 2 })
        );
        assert_eq!(c.submit_bulk_in(0, 1), Err(Error::BadEndpoint(0)));
        assert_eq!(c.submit_bulk_out(0x81, b"x"), Err(Error::BadEndpoint(0x81)));
        assert!(matches!(
            c.submit_control(SetupPacket::set_configuration(1), b"x"),
            Err(Error::BadSetup(_))
        ));
    }
}
