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
