//! Bundles and records: the unit of one USB transfer and the unit of one IP packet or control message.
//!
//! Data flow: a sender appends records into a caller-owned buffer with [`BundleWriter`] (IP packets may
//! be read from the TUN device straight into the buffer through [`BundleWriter::payload_buf`] and
//! [`BundleWriter::commit`]), then [`BundleWriter::finish`] (streams) or
//! [`BundleWriter::finish_usb`] (USB transfers) writes the header. A receiver checks a received
//! buffer with [`Bundle::new_checked`] and walks [`Bundle::records`].
//!
//! Contract (smoltcp style): once `new_checked` succeeded, no accessor panics; the record iterator
//! checks every record header against the bundle bounds before it touches the payload.

use crate::FrameError;
use crate::control::Control;
use crate::error::Full;

/// How bundles are delimited on a link, which decides how they are finished
/// ([`BundleWriter::finish_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// USB bulk: one bundle per transfer, padded so it never ends on `max_packet_size`.
    Usb {
        /// wMaxPacketSize of the bulk endpoint at the current speed.
        max_packet_size: usize,
    },
    /// A byte stream: bundles back to back, bare.
    Stream,
}

/// The bundle magic, `QK`.
pub const MAGIC: [u8; 2] = *b"QK";
/// The framing version this build writes and accepts.
pub const FRAMING_VERSION: u8 = 1;
/// Size of the bundle header.
pub const BUNDLE_HEADER_LEN: usize = 8;
/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 4;
/// Records start on multiples of this (so IP headers are 4-byte aligned within the buffer).
pub const RECORD_ALIGN: usize = 4;
/// Bytes a USB sender appends when a transfer would otherwise end on a packet boundary.
pub const USB_PAD_LEN: usize = 4;
/// Largest record payload (the record length field is 16 bits; the largest IPv4/IPv6 packet).
pub const MAX_RECORD_PAYLOAD: usize = u16::MAX as usize;
/// Default and initial maximum bundle size, before negotiation.
pub const DEFAULT_MAX_BUNDLE: usize = 64 * 1024;
/// Largest maximum bundle size either side may announce; bounds every receive buffer.
pub const MAX_BUNDLE_LIMIT: usize = 1024 * 1024;
/// The smallest useful maximum bundle: one maximum-size record plus headers and pad.
pub const MIN_MAX_BUNDLE: usize = 4 * 1024;
/// Channel of the network (IP packets to and from the board's TUN device).
pub const CHANNEL_NET: u8 = 0;

/// The largest IP packet one bundle of at most `max_bundle` bytes carries: what a
/// [`BundleWriter`] of that size holds as its only record (so also with the USB pad). An MTU above
/// it cannot be sent on such a link.
pub const fn max_packet(max_bundle: usize) -> usize {
    let usable = if max_bundle < MAX_BUNDLE_LIMIT {
        max_bundle
    } else {
        MAX_BUNDLE_LIMIT
    } & !(RECORD_ALIGN - 1);
    let room = usable.saturating_sub(USB_PAD_LEN + BUNDLE_HEADER_LEN + RECORD_HEADER_LEN);
    if room < MAX_RECORD_PAYLOAD {
        room
    } else {
        MAX_RECORD_PAYLOAD
    }
}

mod field {
    use core::ops::Range;
    pub(super) const MAGIC: Range<usize> = 0..2;
    pub(super) const VERSION: usize = 2;
    pub(super) const FLAGS: usize = 3;
    pub(super) const LENGTH: Range<usize> = 4..8;

    pub(super) const REC_KIND: usize = 0;
    pub(super) const REC_CHANNEL: usize = 1;
    pub(super) const REC_LENGTH: Range<usize> = 2..4;
}

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// One IPv4 or IPv6 packet, unchanged.
    Ip,
    /// One control message ([`Control`]).
    Control,
    /// A kind this build does not know; receivers skip it (and count it).
    Unknown(u8),
}

impl RecordKind {
    /// The wire value.
    pub const fn to_u8(self) -> u8 {
        match self {
            Self::Ip => 1,
            Self::Control => 2,
            Self::Unknown(k) => k,
        }
    }

    /// From the wire value; 0 is reserved and invalid.
    pub const fn from_u8(v: u8) -> Result<Self, FrameError> {
        match v {
            0 => Err(FrameError::BadRecordKind(0)),
            1 => Ok(Self::Ip),
            2 => Ok(Self::Control),
            k => Ok(Self::Unknown(k)),
        }
    }
}

/// Rounds `n` up to the record alignment.
pub const fn align_up(n: usize) -> usize {
    (n + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// Tells whether a USB transfer of `len` bytes needs a zero-length packet (or padding) after it:
/// a bulk transfer whose length is a non-zero multiple of the endpoint's wMaxPacketSize (512 at high
/// speed, 1024 at super speed) does not end the receiver's read, which then waits for more data.
pub const fn needs_zlp(len: usize, max_packet_size: usize) -> bool {
    max_packet_size != 0 && len != 0 && len.is_multiple_of(max_packet_size)
}

/// Reads the bundle header at the start of `buf` and returns the bundle length it announces.
///
/// Checks magic, version and length bounds (`8..=max_bundle`, multiple of 4) but not whether the
/// buffer holds the whole bundle; the stream decoder uses this to learn how much to wait for.
pub fn peek_bundle_len(buf: &[u8], max_bundle: usize) -> Result<usize, FrameError> {
    if buf.len() < BUNDLE_HEADER_LEN {
        return Err(FrameError::Truncated {
            need: BUNDLE_HEADER_LEN,
            have: buf.len(),
        });
    }
    let magic = [buf[0], buf[1]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if buf[field::VERSION] != FRAMING_VERSION {
        return Err(FrameError::BadVersion(buf[field::VERSION]));
    }
    let len32 = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let len = len32 as usize;
    if len < BUNDLE_HEADER_LEN || len > max_bundle || !len.is_multiple_of(RECORD_ALIGN) {
        return Err(FrameError::BadLength {
            len: len32,
            max: max_bundle,
        });
    }
    Ok(len)
}

/// A read-only view of one bundle (zero-copy).
#[derive(Debug, Clone, Copy)]
pub struct Bundle<T: AsRef<[u8]>> {
    buffer: T,
    len: usize,
}

impl<T: AsRef<[u8]>> Bundle<T> {
    /// Checks a received buffer (a whole USB transfer, or one bundle cut from a stream).
    ///
    /// The buffer must hold exactly the bundle, optionally followed by the [`USB_PAD_LEN`]-byte pad.
    /// `max_bundle` is the receiver's limit (the negotiated maximum or [`MAX_BUNDLE_LIMIT`]).
    pub fn new_checked(buffer: T, max_bundle: usize) -> Result<Self, FrameError> {
        let data = buffer.as_ref();
        let len = peek_bundle_len(data, max_bundle.min(MAX_BUNDLE_LIMIT))?;
        if data.len() != len && data.len() != len + USB_PAD_LEN {
            return Err(FrameError::LengthMismatch {
                header: len,
                actual: data.len(),
            });
        }
        Ok(Self { buffer, len })
    }

    /// The bundle length from the header (without any pad).
    #[allow(
        clippy::len_without_is_empty,
        reason = "a bundle always has its header"
    )]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The reserved flags byte (0 in version 1; receivers ignore it).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The records, in order. After a structural error the iterator ends.
    pub fn records(&self) -> Records<'_> {
        Records {
            buf: &self.buffer.as_ref()[..self.len],
            offset: BUNDLE_HEADER_LEN,
            done: false,
        }
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// One record within a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// What the payload is.
    pub kind: RecordKind,
    /// The channel: [`CHANNEL_NET`] for the network; others are reserved for future endpoints.
    pub channel: u8,
    /// The payload, without alignment padding.
    pub payload: &'a [u8],
}

/// Iterator over the records of a [`Bundle`].
///
/// A record with a bad kind is reported and skipped (its length is still trustworthy); a record whose
/// length overruns the bundle ends the iteration, since nothing after it can be located.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    buf: &'a [u8],
    offset: usize,
    done: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.offset >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.offset..];
        if rest.len() < RECORD_HEADER_LEN {
            self.done = true;
            return Some(Err(FrameError::Truncated {
                need: RECORD_HEADER_LEN,
                have: rest.len(),
            }));
        }
        let len = u16::from_le_bytes([
            rest[field::REC_LENGTH.start],
            rest[field::REC_LENGTH.start + 1],
        ]) as usize;
        if RECORD_HEADER_LEN + len > rest.len() {
            self.done = true;
            return Some(Err(FrameError::RecordOverflow {
                offset: self.offset,
                len,
            }));
        }
        let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
        let kind = rest[field::REC_KIND];
        let channel = rest[field::REC_CHANNEL];
        // The last record's padding may be cut by the bundle end only if the bundle is not aligned,
        // which peek_bundle_len already rejects; min() keeps this total regardless.
        self.offset = (self.offset + align_up(RECORD_HEADER_LEN + len)).min(self.buf.len());
        Some(RecordKind::from_u8(kind).map(|kind| Record {
            kind,
            channel,
            payload,
        }))
    }
}

/// Appends records into a caller-owned buffer and writes the bundle header when finished.
///
/// No allocation happens per record. The writer never uses the last [`USB_PAD_LEN`] bytes of the
/// buffer, so [`finish_usb`](Self::finish_usb) can always pad; a buffer of the negotiated maximum
/// bundle size therefore holds bundles of at most `max_bundle - 4` bytes.
#[derive(Debug)]
pub struct BundleWriter<'a> {
    buf: &'a mut [u8],
    cap: usize,
    len: usize,
    records: usize,
}

impl<'a> BundleWriter<'a> {
    /// Starts an empty bundle in `buf`, using at most `max_bundle` bytes of it.
    ///
    /// # Panics
    /// If the usable size is smaller than [`MIN_MAX_BUNDLE`]: that is a programming error.
    pub fn new(buf: &'a mut [u8], max_bundle: usize) -> Self {
        let usable = buf.len().min(max_bundle).min(MAX_BUNDLE_LIMIT) & !(RECORD_ALIGN - 1);
        assert!(
            usable >= MIN_MAX_BUNDLE,
            "bundle buffer of {usable} bytes is too small"
        );
        Self {
            buf,
            cap: usable - USB_PAD_LEN,
            len: BUNDLE_HEADER_LEN,
            records: 0,
        }
    }

    /// True when no record has been appended.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Number of records appended.
    pub fn record_count(&self) -> usize {
        self.records
    }

    /// Bytes used so far, header included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The largest payload one more record can carry.
    pub fn available_payload(&self) -> usize {
        self.cap
            .saturating_sub(self.len + RECORD_HEADER_LEN)
            .min(MAX_RECORD_PAYLOAD)
    }

    /// Space for the payload of the next record: exactly `max_len` bytes, or [`Full`].
    /// Write the payload there, then call [`commit`](Self::commit) with its real length.
    pub fn payload_buf(&mut self, max_len: usize) -> Result<&mut [u8], Full> {
        if max_len > self.available_payload() {
            return Err(Full);
        }
        let start = self.len + RECORD_HEADER_LEN;
        Ok(&mut self.buf[start..start + max_len])
    }

    /// Appends a record whose `len` payload bytes were already written through
    /// [`payload_buf`](Self::payload_buf).
    pub fn commit(&mut self, kind: RecordKind, channel: u8, len: usize) -> Result<(), Full> {
        if len > self.available_payload() {
            return Err(Full);
        }
        let h = &mut self.buf[self.len..self.len + RECORD_HEADER_LEN];
        h[field::REC_KIND] = kind.to_u8();
        h[field::REC_CHANNEL] = channel;
        h[field::REC_LENGTH].copy_from_slice(&(len as u16).to_le_bytes());
        let end = self.len + RECORD_HEADER_LEN + len;
        let padded = self.len + align_up(RECORD_HEADER_LEN + len);
        self.buf[end..padded].fill(0);
        self.len = padded;
        self.records += 1;
        Ok(())
    }

    /// Appends a record with a copy of `payload`.
    pub fn push(&mut self, kind: RecordKind, channel: u8, payload: &[u8]) -> Result<(), Full> {
        self.payload_buf(payload.len())?.copy_from_slice(payload);
        self.commit(kind, channel, payload.len())
    }

    /// Appends one IP packet on `channel`.
    pub fn push_ip(&mut self, channel: u8, packet: &[u8]) -> Result<(), Full> {
        self.push(RecordKind::Ip, channel, packet)
    }

    /// Appends one control message (on channel 0).
    pub fn push_control(&mut self, msg: &Control) -> Result<(), Full> {
        let n = msg.buffer_len();
        let buf = self.payload_buf(n)?;
        msg.emit(buf);
        self.commit(RecordKind::Control, CHANNEL_NET, n)
    }

    fn write_header(&mut self) {
        let len = self.len as u32;
        let h = &mut self.buf[..BUNDLE_HEADER_LEN];
        h[field::MAGIC].copy_from_slice(&MAGIC);
        h[field::VERSION] = FRAMING_VERSION;
        h[field::FLAGS] = 0;
        h[field::LENGTH].copy_from_slice(&len.to_le_bytes());
    }

    /// Writes the header and returns the length to send on a link with this `framing`: the one
    /// place that chooses between [`finish`](Self::finish) and [`finish_usb`](Self::finish_usb).
    pub fn finish_for(self, framing: Framing) -> usize {
        match framing {
            Framing::Usb { max_packet_size } => self.finish_usb(max_packet_size),
            Framing::Stream => self.finish(),
        }
    }

    /// Writes the header and returns the bundle length: send `buf[..n]` on a byte stream.
    pub fn finish(mut self) -> usize {
        self.write_header();
        self.len
    }

    /// Writes the header and returns the transfer length for a USB endpoint with the given
    /// wMaxPacketSize: the bundle, plus a zeroed 4-byte pad when the bundle alone would end exactly on
    /// a packet boundary (see [`needs_zlp`]). Receivers accept and ignore the pad.
    pub fn finish_usb(mut self, max_packet_size: usize) -> usize {
        self.write_header();
        if needs_zlp(self.len, max_packet_size) {
            self.buf[self.len..self.len + USB_PAD_LEN].fill(0);
            self.len + USB_PAD_LEN
        } else {
            self.len
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn max_packet_is_what_one_bundle_carries() {
        for max in [MIN_MAX_BUNDLE, 4099, DEFAULT_MAX_BUNDLE, MAX_BUNDLE_LIMIT] {
            let n = max_packet(max);
            let mut buf = vec![0u8; max];
            let mut w = BundleWriter::new(&mut buf, max);
            assert!(w.push_ip(CHANNEL_NET, &vec![0x45; n]).is_ok(), "{max}");
            let mut w = BundleWriter::new(&mut buf, max);
            assert!(
                n == MAX_RECORD_PAYLOAD || w.push_ip(CHANNEL_NET, &vec![0x45; n + 1]).is_err(),
                "{max}"
            );
        }
        assert_eq!(max_packet(DEFAULT_MAX_BUNDLE), 65520);
        assert_eq!(max_packet(MIN_MAX_BUNDLE), 4080);
    }

    /// Two IP records: 5 bytes on channel 0 (padded to 8) and 4 bytes on channel 3.
    static TWO_RECORDS: [u8; 28] = [
        b'Q', b'K', 0x01, 0x00, 28, 0, 0, 0, // bundle header
        0x01, 0x00, 0x05, 0x00, 0x45, 0x00, 0x00, 0x05, 0xAB, 0x00, 0x00,
        0x00, // record 1 + pad
        0x01, 0x03, 0x04, 0x00, 0x60, 0x00, 0x00, 0x00, // record 2
    ];

    fn records(b: &Bundle<&[u8]>) -> Vec<Result<Record<'static>, FrameError>> {
        b.records()
            .map(|r| {
                r.map(|r| Record {
                    kind: r.kind,
                    channel: r.channel,
                    payload: Vec::leak(r.payload.to_vec()),
                })
            })
            .collect()
    }

    #[test]
    fn deconstruct() {
        let b = Bundle::new_checked(&TWO_RECORDS[..], DEFAULT_MAX_BUNDLE).unwrap();
        assert_eq!(b.len(), 28);
        assert_eq!(b.flags(), 0);
        assert_eq!(
            records(&b),
            vec![
                Ok(Record {
                    kind: RecordKind::Ip,
                    channel: 0,
                    payload: &[0x45, 0, 0, 5, 0xAB]
                }),
                Ok(Record {
                    kind: RecordKind::Ip,
                    channel: 3,
                    payload: &[0x60, 0, 0, 0]
                }),
            ]
        );
    }

    #[test]
    fn construct() {
        let mut buf = vec![0xEE; DEFAULT_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
        assert!(w.is_empty());
        w.push_ip(0, &[0x45, 0, 0, 5, 0xAB]).unwrap();
        w.push_ip(3, &[0x60, 0, 0, 0]).unwrap();
        assert_eq!(w.record_count(), 2);
        let n = w.finish();
        assert_eq!(&buf[..n], &TWO_RECORDS[..]);
    }

    #[test]
    fn construct_in_place_with_payload_buf() {
        let mut buf = vec![0xEE; MIN_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut buf, MIN_MAX_BUNDLE);
        let space = w.payload_buf(1500).unwrap();
        assert_eq!(space.len(), 1500);
        space[..5].copy_from_slice(&[0x45, 0, 0, 5, 0xAB]);
        w.commit(RecordKind::Ip, 0, 5).unwrap();
        w.push_ip(3, &[0x60, 0, 0, 0]).unwrap();
        let n = w.finish();
        assert_eq!(&buf[..n], &TWO_RECORDS[..]);
    }

    #[test]
    fn empty_bundle_round_trips() {
        let mut buf = vec![0; MIN_MAX_BUNDLE];
        let n = BundleWriter::new(&mut buf, MIN_MAX_BUNDLE).finish();
        assert_eq!(&buf[..n], b"QK\x01\x00\x08\x00\x00\x00");
        let b = Bundle::new_checked(&buf[..n], MIN_MAX_BUNDLE).unwrap();
        assert_eq!(b.records().count(), 0);
    }

    #[test]
    fn zero_length_and_maximum_length_records() {
        let max = 2 * DEFAULT_MAX_BUNDLE;
        let mut buf = vec![0; max];
        let mut w = BundleWriter::new(&mut buf, max);
        w.push(RecordKind::Unknown(9), 1, &[]).unwrap();
        let big: Vec<u8> = (0..MAX_RECORD_PAYLOAD).map(|i| i as u8).collect();
        w.push_ip(0, &big).unwrap();
        assert_eq!(w.push_ip(0, &vec![0; MAX_RECORD_PAYLOAD + 1]), Err(Full));
        let n = w.finish();
        assert_eq!(n, 8 + 4 + 4 + align_up(MAX_RECORD_PAYLOAD));
        let b = Bundle::new_checked(&buf[..n], max).unwrap();
        let got: Vec<_> = b.records().map(Result::unwrap).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].kind, RecordKind::Unknown(9));
        assert!(got[0].payload.is_empty());
        assert_eq!(got[1].payload, &big[..]);
        // The default maximum bundle cannot carry a 65535-byte record: the writer says Full.
        let mut small = vec![0; DEFAULT_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut small, DEFAULT_MAX_BUNDLE);
        assert_eq!(w.available_payload(), DEFAULT_MAX_BUNDLE - 4 - 8 - 4);
        assert_eq!(w.push_ip(0, &big), Err(Full));
        assert!(w.is_empty());
    }

    #[test]
    fn writer_fills_then_reports_full() {
        let mut buf = vec![0; MIN_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut buf, MIN_MAX_BUNDLE);
        let pkt = [0x45u8; 1000];
        let mut n = 0;
        while w.push_ip(0, &pkt).is_ok() {
            n += 1;
        }
        assert_eq!(n, 4); // 8 + 4 * 1004 = 4024 <= 4092; a fifth does not fit
        assert!(w.len() <= MIN_MAX_BUNDLE - USB_PAD_LEN);
        assert_eq!(w.payload_buf(w.available_payload() + 1), Err(Full));
        assert_eq!(
            w.commit(RecordKind::Ip, 0, w.available_payload() + 1),
            Err(Full)
        );
    }

    #[test]
    #[should_panic(expected = "too small")]
    fn writer_rejects_tiny_buffers() {
        let mut buf = [0u8; 100];
        let _ = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
    }

    #[test]
    fn needs_zlp_rule() {
        for mps in [512, 1024] {
            assert!(!needs_zlp(0, mps));
            assert!(!needs_zlp(mps - 4, mps));
            assert!(needs_zlp(mps, mps));
            assert!(!needs_zlp(mps + 4, mps));
            assert!(needs_zlp(3 * mps, mps));
            assert!(needs_zlp(DEFAULT_MAX_BUNDLE, mps));
        }
        assert!(!needs_zlp(512, 0));
        assert!(needs_zlp(1024, 512));
        assert!(!needs_zlp(512, 1024));
    }

    /// A bundle of exactly `len` bytes: one IP record filling it.
    fn bundle_of(buf: &mut [u8], len: usize, mps: usize) -> usize {
        let mut w = BundleWriter::new(buf, DEFAULT_MAX_BUNDLE);
        w.push_ip(0, &vec![0x45; len - 12]).unwrap();
        w.finish_usb(mps)
    }

    #[test]
    fn finish_usb_pads_on_packet_boundaries() {
        for mps in [512, 1024] {
            for len in [mps, 2 * mps, 16 * mps] {
                let mut buf = vec![0xEE; DEFAULT_MAX_BUNDLE];
                let n = bundle_of(&mut buf, len, mps);
                assert_eq!(n, len + USB_PAD_LEN, "mps {mps} len {len}");
                assert!(!needs_zlp(n, mps));
                assert_eq!(&buf[len..n], &[0; USB_PAD_LEN]);
                // The header says the bundle length; the pad is outside it.
                assert_eq!(&buf[4..8], &(len as u32).to_le_bytes());
                let b = Bundle::new_checked(&buf[..n], DEFAULT_MAX_BUNDLE).unwrap();
                assert_eq!(b.len(), len);
                assert_eq!(b.records().count(), 1);
                // The receiver accepts the bundle with or without pad, nothing else.
                assert!(Bundle::new_checked(&buf[..len], DEFAULT_MAX_BUNDLE).is_ok());
                for bad in [len - 4, len - 1, len + 1, len + 2, len + 3, len + 8] {
                    assert_eq!(
                        Bundle::new_checked(&buf[..bad], DEFAULT_MAX_BUNDLE).err(),
                        Some(FrameError::LengthMismatch {
                            header: len,
                            actual: bad
                        }),
                        "mps {mps} len {len} transfer {bad}"
                    );
                }
            }
            for len in [mps - 4, mps + 4, 2 * mps - 8] {
                let mut buf = vec![0xEE; DEFAULT_MAX_BUNDLE];
                assert_eq!(bundle_of(&mut buf, len, mps), len, "mps {mps} len {len}");
            }
        }
    }

    #[test]
    fn largest_bundle_can_always_be_padded() {
        // The writer keeps USB_PAD_LEN bytes spare, so a full bundle on a boundary still pads.
        let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
        let room = w.available_payload();
        w.push_ip(0, &vec![1; room]).unwrap();
        let n = w.finish_usb(512);
        assert_eq!(n, DEFAULT_MAX_BUNDLE - USB_PAD_LEN);
        assert!(Bundle::new_checked(&buf[..n], DEFAULT_MAX_BUNDLE).is_ok());
        let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
        w.push_ip(0, &vec![1; 127 * 512 - 12]).unwrap();
        assert_eq!(w.finish_usb(512), 127 * 512 + USB_PAD_LEN);
    }

    #[test]
    fn header_errors() {
        let t = |b: &[u8]| Bundle::new_checked(b, DEFAULT_MAX_BUNDLE).err();
        for n in 0..BUNDLE_HEADER_LEN {
            assert_eq!(
                t(&TWO_RECORDS[..n]),
                Some(FrameError::Truncated { need: 8, have: n })
            );
        }
        let mut b = TWO_RECORDS;
        b[0] = b'X';
        assert_eq!(t(&b), Some(FrameError::BadMagic([b'X', b'K'])));
        let mut b = TWO_RECORDS;
        b[2] = 2;
        assert_eq!(t(&b), Some(FrameError::BadVersion(2)));
        for len in [0u32, 4, 27, 30, 0x0001_0004, u32::MAX] {
            let mut b = TWO_RECORDS;
            b[4..8].copy_from_slice(&len.to_le_bytes());
            assert_eq!(
                t(&b),
                Some(FrameError::BadLength {
                    len,
                    max: DEFAULT_MAX_BUNDLE
                }),
                "len {len}"
            );
        }
        // Truncated bundle: header promises more than the transfer has.
        assert_eq!(
            t(&TWO_RECORDS[..20]),
            Some(FrameError::LengthMismatch {
                header: 28,
                actual: 20
            })
        );
        // The receiver's limit applies, and is itself capped at MAX_BUNDLE_LIMIT.
        assert!(Bundle::new_checked(&TWO_RECORDS[..], 24).is_err());
        assert!(Bundle::new_checked(&TWO_RECORDS[..], usize::MAX).is_ok());
    }

    #[test]
    fn record_errors() {
        // Record 1 claims 9 payload bytes: it overruns into record 2 and past the end.
        let mut b = TWO_RECORDS;
        b[10] = 17;
        let bundle = Bundle::new_checked(&b[..], DEFAULT_MAX_BUNDLE).unwrap();
        assert_eq!(
            records(&bundle),
            vec![Err(FrameError::RecordOverflow { offset: 8, len: 17 })]
        );
        // Kind 0 is reported and skipped; the next record is still delivered.
        let mut b = TWO_RECORDS;
        b[8] = 0;
        let bundle = Bundle::new_checked(&b[..], DEFAULT_MAX_BUNDLE).unwrap();
        let got = records(&bundle);
        assert_eq!(got[0], Err(FrameError::BadRecordKind(0)));
        assert_eq!(got[1].as_ref().unwrap().channel, 3);
        // Unknown kinds are values.
        let mut b = TWO_RECORDS;
        b[20] = 200;
        let bundle = Bundle::new_checked(&b[..], DEFAULT_MAX_BUNDLE).unwrap();
        assert_eq!(records(&bundle)[1].unwrap().kind, RecordKind::Unknown(200));
        // A second record cut by the bundle end overruns.
        let mut b = TWO_RECORDS;
        b[22] = 5;
        let bundle = Bundle::new_checked(&b[..], DEFAULT_MAX_BUNDLE).unwrap();
        assert_eq!(
            records(&bundle)[1],
            Err(FrameError::RecordOverflow { offset: 20, len: 5 })
        );
    }

    #[test]
    fn record_kind_values() {
        assert_eq!(RecordKind::from_u8(0), Err(FrameError::BadRecordKind(0)));
        for v in 1..=255u8 {
            assert_eq!(RecordKind::from_u8(v).unwrap().to_u8(), v);
        }
    }

    #[test]
    fn push_control_round_trips() {
        let msg = Control::Keepalive(crate::Keepalive {
            seq: 1,
            timestamp_us: 2,
        });
        let mut buf = vec![0; MIN_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut buf, MIN_MAX_BUNDLE);
        w.push_control(&msg).unwrap();
        let n = w.finish();
        let b = Bundle::new_checked(&buf[..n], MIN_MAX_BUNDLE).unwrap();
        let r = b.records().next().unwrap().unwrap();
        assert_eq!(r.kind, RecordKind::Control);
        assert_eq!(Control::parse(r.payload).unwrap(), msg);
    }
}
