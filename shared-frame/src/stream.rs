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

    /// Free space to read stream bytes into; never empty while the decoder is healthy.
    pub fn read_buf(&mut self) -> &mut [u8] {
        if self.start > 0 {
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
        self.start += len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        // Cannot fail: the header was checked and the slice is exactly the bundle.
        Some(Bundle::new_checked(&self.buf[s..s + len], self.max_bundle))
    }
}
