//! The stream codec: bundles back to back on a byte stream (TCP, unix socket, stdio, qrexec).
//!
//! Data flow: the transport reads into [`StreamDecoder::read_buf`], reports how much arrived with
//! [`StreamDecoder::commit`], then takes whole bundles from [`StreamDecoder::next_bundle`] until it
//! returns `None`. Reads may split bundles anywhere, down to single bytes.
//!
//! Buffering is bounded: the decoder owns one buffer of `max_bundle` bytes, allocated once. A bundle
//! header announcing more than `max_bundle`, a wrong magic or a wrong framing version is a *fatal*
//! framing error: a byte stream has no markers to resynchronise on, so the decoder stops, keeps
//! returning the error, and the transport must close the stream and reconnect (the session then
//! starts over with Hello). Senders write [`crate::BundleWriter::finish`] output unchanged; there is no
//! padding on streams.

use alloc::vec;
use alloc::vec::Vec;

use crate::FrameError;
use crate::bundle::{BUNDLE_HEADER_LEN, Bundle, MAX_BUNDLE_LIMIT, MIN_MAX_BUNDLE, peek_bundle_len};

/// Incremental decoder of bundles from a byte stream.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_bundle: usize,
    fatal: Option<FrameError>,
    /// Position of the bundle most recently returned by `next_bundle`.
    last: (usize, usize),
}

impl StreamDecoder {
    /// A decoder accepting bundles of up to `max_bundle` bytes (clamped to the protocol limits).
    pub fn new(max_bundle: usize) -> Self {
        let max_bundle = max_bundle.clamp(MIN_MAX_BUNDLE, MAX_BUNDLE_LIMIT);
        Self {
            buf: vec![0; max_bundle],
            start: 0,
            end: 0,
            max_bundle,
            fatal: None,
            last: (0, 0),
        }
    }

    /// The largest bundle accepted.
    pub fn max_bundle(&self) -> usize {
        self.max_bundle
    }

    /// Bytes received but not yet returned as bundles.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The fatal error, once one happened.
    pub fn fatal(&self) -> Option<FrameError> {
        self.fatal
    }

    /// Free space to read stream bytes into; never empty while the decoder is healthy, and at least a
    /// quarter of the buffer unless the bytes of one bundle fill more than that.
    ///
    /// Unconsumed bytes are moved to the front only when the free tail drops below a quarter of the
    /// buffer, so each received byte is moved at most a few times however small the reads are.
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.last = (0, 0);
        if self.start > 0 && self.buf.len() - self.end < self.buf.len() / 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written at the start of [`read_buf`](Self::read_buf).
    ///
    /// # Panics
    /// If `n` exceeds the space `read_buf` returned.
    pub fn commit(&mut self, n: usize) {
        assert!(self.end + n <= self.buf.len(), "commit beyond read_buf");
        self.end += n;
    }

    /// Copies as much of `data` as fits into the buffer and returns how many bytes were taken.
    /// Call [`next_bundle`](Self::next_bundle) until `None` before offering the rest.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let space = self.read_buf();
        let n = space.len().min(data.len());
        space[..n].copy_from_slice(&data[..n]);
        self.commit(n);
        n
    }

    /// The bytes of the bundle most recently returned by [`next_bundle`](Self::next_bundle); empty
    /// once [`read_buf`](Self::read_buf) or [`feed`](Self::feed) was called since. Lets async readers
    /// return the bundle after the borrow of `next_bundle` ended.
    pub fn last_bundle(&self) -> &[u8] {
        &self.buf[self.last.0..self.last.1]
    }

    /// The next whole bundle, `None` if more bytes are needed, or the fatal framing error.
    pub fn next_bundle(&mut self) -> Option<Result<Bundle<&[u8]>, FrameError>> {
        if let Some(e) = self.fatal {
            return Some(Err(e));
        }
        let avail = &self.buf[self.start..self.end];
        if avail.len() < BUNDLE_HEADER_LEN {
            return None;
        }
        let len = match peek_bundle_len(avail, self.max_bundle) {
            Ok(len) => len,
            Err(e) => {
                self.fatal = Some(e);
                return Some(Err(e));
            }
        };
        if avail.len() < len {
            return None;
        }
        let s = self.start;
        self.last = (s, s + len);
        self.start += len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        // Cannot fail: the header was checked and the slice is exactly the bundle.
        Some(Bundle::new_checked(&self.buf[s..s + len], self.max_bundle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{BundleWriter, DEFAULT_MAX_BUNDLE};

    fn bundle(packets: &[&[u8]]) -> Vec<u8> {
        let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
        for p in packets {
            w.push_ip(0, p).unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// Feeds `stream` in chunks of `chunk` bytes and returns the payloads of every bundle.
    fn decode(stream: &[u8], chunk: usize) -> Result<Vec<Vec<Vec<u8>>>, FrameError> {
        let mut d = StreamDecoder::new(DEFAULT_MAX_BUNDLE);
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            let mut piece = piece;
            while !piece.is_empty() {
                let n = d.feed(piece);
                piece = &piece[n..];
                while let Some(b) = d.next_bundle() {
                    let b = b?;
                    out.push(b.records().map(|r| r.unwrap().payload.to_vec()).collect());
                }
            }
        }
        assert_eq!(d.buffered(), 0, "bytes left over");
        Ok(out)
    }

    #[test]
    fn bundles_back_to_back_split_anywhere() {
        let a = bundle(&[b"first", b"second packet"]);
        let b = bundle(&[]);
        let c = bundle(&[&[7; 3000]]);
        let stream = [a, b, c].concat();
        let want = vec![
            vec![b"first".to_vec(), b"second packet".to_vec()],
            vec![],
            vec![vec![7; 3000]],
        ];
        for chunk in [1, 2, 3, 5, 7, 8, 64, 1000, stream.len()] {
            assert_eq!(decode(&stream, chunk).unwrap(), want, "chunk {chunk}");
        }
    }

    #[test]
    fn split_at_every_byte() {
        let stream = [bundle(&[b"abc"]), bundle(&[b"defgh", b"i"])].concat();
        for cut in 0..=stream.len() {
            let mut d = StreamDecoder::new(DEFAULT_MAX_BUNDLE);
            let mut n = 0;
            for part in [&stream[..cut], &stream[cut..]] {
                assert_eq!(d.feed(part), part.len());
                while let Some(b) = d.next_bundle() {
                    b.unwrap();
                    n += 1;
                }
            }
            assert_eq!(n, 2, "cut {cut}");
        }
    }

    #[test]
    fn read_buf_and_commit() {
        let s = bundle(&[b"xyz"]);
        let mut d = StreamDecoder::new(1);
        assert_eq!(d.max_bundle(), MIN_MAX_BUNDLE);
        let space = d.read_buf();
        assert_eq!(space.len(), MIN_MAX_BUNDLE);
        space[..s.len()].copy_from_slice(&s);
        d.commit(s.len());
        assert_eq!(d.buffered(), s.len());
        assert_eq!(d.next_bundle().unwrap().unwrap().len(), s.len());
        assert_eq!(d.last_bundle(), &s[..]);
        assert!(d.next_bundle().is_none());
        let _ = d.read_buf();
        assert!(d.last_bundle().is_empty());
    }

    #[test]
    fn a_full_buffer_of_one_bundle_is_accepted() {
        let mut d = StreamDecoder::new(MIN_MAX_BUNDLE);
        let mut buf = vec![0; MIN_MAX_BUNDLE + 4];
        let mut w = BundleWriter::new(&mut buf, MIN_MAX_BUNDLE + 4);
        w.push_ip(0, &vec![1; MIN_MAX_BUNDLE - 12]).unwrap();
        let n = w.finish();
        assert_eq!(n, MIN_MAX_BUNDLE);
        assert_eq!(d.feed(&buf[..n]), n);
        assert!(d.read_buf().is_empty());
        assert_eq!(d.next_bundle().unwrap().unwrap().len(), n);
        assert_eq!(d.read_buf().len(), MIN_MAX_BUNDLE);
    }

    #[test]
    fn framing_errors_are_fatal_and_sticky() {
        let good = bundle(&[b"ok"]);
        let mut bad_magic = good.clone();
        bad_magic[1] = b'X';
        let mut bad_version = good.clone();
        bad_version[2] = 9;
        let mut too_long = good.clone();
        too_long[4..8].copy_from_slice(&(DEFAULT_MAX_BUNDLE as u32 + 4).to_le_bytes());
        let mut unaligned = good.clone();
        unaligned[4] += 1;
        // A USB pad on a stream desynchronises it: the pad is read as the next header.
        let padded = [good.clone(), vec![0; 4], good.clone()].concat();
        let cases = [
            (bad_magic, FrameError::BadMagic(*b"QX")),
            (bad_version, FrameError::BadVersion(9)),
            (
                too_long,
                FrameError::BadLength {
                    len: DEFAULT_MAX_BUNDLE as u32 + 4,
                    max: DEFAULT_MAX_BUNDLE,
                },
            ),
            (
                unaligned,
                FrameError::BadLength {
                    len: good.len() as u32 + 1,
                    max: DEFAULT_MAX_BUNDLE,
                },
            ),
        ];
        for (bytes, want) in cases {
            let stream = [good.clone(), bytes, good.clone()].concat();
            let mut d = StreamDecoder::new(DEFAULT_MAX_BUNDLE);
            d.feed(&stream);
            assert!(d.next_bundle().unwrap().is_ok());
            assert_eq!(d.next_bundle().unwrap().err(), Some(want));
            assert_eq!(d.fatal(), Some(want));
            // Sticky: even more good bytes do not revive it.
            d.feed(&good);
            assert_eq!(d.next_bundle().unwrap().err(), Some(want));
        }
        let mut d = StreamDecoder::new(DEFAULT_MAX_BUNDLE);
        d.feed(&padded);
        assert!(d.next_bundle().unwrap().is_ok());
        assert!(matches!(
            d.next_bundle(),
            Some(Err(FrameError::BadMagic([0, 0])))
        ));
    }
}
