//! Transfer buffers that go back where they came from instead of being freed: the bundles the
//! pump builds (bulk IN) return to the driver once their AIO write completed, and the buffers of
//! bulk OUT reads return to the reader once the driver wrote their packets to the TUN device.
//!
//! Why: a fresh 64 KiB allocation per bundle costs a `memset` (IN bundles were zeroed), page
//! faults whenever malloc trimmed and regrew its heap, and the allocator's own work; with FunctionFS
//! each buffer is only needed while its transfer is queued, so a handful of them serve the link.
//!
//! Data flow: [`channel`] → [`Returner`] (cloned to whoever drops a buffer; [`Returner::give`]
//! never blocks: a full return queue, or one whose [`Returned`] side is gone, frees the buffer) and
//! [`Returned`] (the owner takes buffers back with [`Returned::take`]). [`bytes_returning`] wraps
//! a bundle for the AIO write so that dropping the `Bytes` gives the `Vec` back.

use std::sync::mpsc;

use bytes::{Bytes, BytesMut};

/// Sending side: hands buffers back (see the module docs).
#[derive(Debug, Clone)]
pub struct Returner(mpsc::SyncSender<Vec<u8>>);

/// Receiving side: the buffers handed back so far.
#[derive(Debug)]
pub struct Returned(mpsc::Receiver<Vec<u8>>);

/// A return queue holding at most `depth` buffers (more are freed).
pub fn channel(depth: usize) -> (Returner, Returned) {
    let (tx, rx) = mpsc::sync_channel(depth);
    (Returner(tx), Returned(rx))
}

impl Returner {
    /// Hands `buf` back; frees it when the queue is full or nobody takes buffers back any more.
    pub fn give(&self, buf: Vec<u8>) {
        let _ = self.0.try_send(buf);
    }
}

impl Returned {
    /// A buffer handed back, if any.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.0.try_recv().ok()
    }

    /// An empty read buffer of at least `capacity` bytes: a returned one (no copy, no
    /// allocation) when there is one that large, else a new one.
    pub fn read_buffer(&self, capacity: usize) -> BytesMut {
        match self.take().filter(|b| b.capacity() >= capacity) {
            Some(mut v) => {
                v.clear();
                // Unique, so this reuses the allocation (`From<Bytes> for BytesMut`).
                BytesMut::from(Bytes::from(v))
            }
            None => BytesMut::with_capacity(capacity),
        }
    }
}

/// `Bytes` over `buf` that gives `buf` back through `home` when the last reference is dropped.
pub fn bytes_returning(buf: Vec<u8>, home: Returner) -> Bytes {
    Bytes::from_owner(Owned { buf, home })
}

struct Owned {
    buf: Vec<u8>,
    home: Returner,
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.home.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_bundle_comes_back_with_its_allocation() {
        let (home, back) = channel(4);
        let mut v = vec![7u8; 1000];
        v.reserve(64 * 1024);
        let (ptr, cap) = (v.as_ptr(), v.capacity());
        let b = bytes_returning(v, home);
        let clone = b.clone();
        assert_eq!(&b[..], &[7u8; 1000][..]);
        drop(b);
        assert!(back.take().is_none(), "still referenced by the clone");
        drop(clone);
        let v = back.take().expect("returned");
        assert_eq!((v.as_ptr(), v.capacity(), v.len()), (ptr, cap, 1000));
    }

    #[test]
    fn read_buffers_reuse_returned_allocations_of_the_right_size() {
        let (home, back) = channel(2);
        let v = Vec::with_capacity(65536);
        let ptr = v.as_ptr();
        home.give(v);
        home.give(Vec::with_capacity(100));
        let r = back.read_buffer(65536);
        assert_eq!((r.as_ptr(), r.len()), (ptr, 0), "same allocation, empty");
        assert!(r.capacity() >= 65536);
        let fresh = back.read_buffer(65536);
        assert!(fresh.capacity() >= 65536, "a too small one is not used");
        assert!(back.take().is_none());
    }

    #[test]
    fn a_full_or_abandoned_queue_frees_instead_of_blocking() {
        let (home, back) = channel(1);
        home.give(vec![1]);
        home.give(vec![2]);
        assert_eq!(back.take(), Some(vec![1]));
        assert_eq!(back.take(), None);
        drop(back);
        home.give(vec![3]);
    }
}
