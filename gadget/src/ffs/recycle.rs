//! FunctionFS transfer buffers from the link's [`BufPool`] instead of fresh allocations: the
//! bundles the pump builds (bulk IN) go back to the pool once their AIO write completed, and bulk
//! OUT reads are made in pool buffers, which the driver puts back once it wrote their packets to
//! the TUN device.
//!
//! Why: a fresh 64 KiB allocation per bundle costs a `memset` (IN bundles were zeroed), page
//! faults whenever malloc trimmed and regrew its heap, and the allocator's own work; with FunctionFS
//! each buffer is only needed while its transfer is queued, so a handful of them serve the link.
//!
//! Data flow: the `usb-gadget` AIO queue takes `Bytes` for writes and `BytesMut` for reads, so
//! this module only adapts the pool's `Vec<u8>`s: [`bytes_returning`] wraps a bundle so that
//! dropping the last `Bytes` (when the AIO write is done) puts the `Vec` back into the pool, and
//! [`read_buffer`] turns a pool buffer into an empty `BytesMut` of the read size without copying.

use bytes::{Bytes, BytesMut};
use qbkit_link::BufPool;

/// An empty read buffer of at least `capacity` bytes, made from a pool buffer (no copy; only
/// grown when the pool had none that large).
pub fn read_buffer(pool: &BufPool, capacity: usize) -> BytesMut {
    let mut v = pool.take();
    v.clear();
    v.reserve_exact(capacity);
    // Unique, so this reuses the allocation (`From<Bytes> for BytesMut`).
    BytesMut::from(Bytes::from(v))
}

/// `Bytes` over `buf` that puts `buf` back into `pool` when the last reference is dropped.
pub fn bytes_returning(buf: Vec<u8>, pool: BufPool) -> Bytes {
    Bytes::from_owner(Owned { buf, pool })
}

struct Owned {
    buf: Vec<u8>,
    pool: BufPool,
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_bundle_goes_back_to_the_pool_with_its_allocation() {
        let pool = BufPool::default();
        let mut v = vec![7u8; 1000];
        v.reserve(64 * 1024);
        let (ptr, cap) = (v.as_ptr(), v.capacity());
        let b = bytes_returning(v, pool.clone());
        let clone = b.clone();
        assert_eq!(&b[..], &[7u8; 1000][..]);
        drop(b);
        assert_eq!(pool.take().capacity(), 0, "still referenced by the clone");
        drop(clone);
        let v = pool.take();
        assert_eq!((v.as_ptr(), v.capacity(), v.len()), (ptr, cap, 1000));
    }

    #[test]
    fn read_buffers_reuse_pool_allocations_and_grow_small_ones() {
        let pool = BufPool::default();
        let v = vec![1u8; 65536];
        let ptr = v.as_ptr();
        pool.put(v);
        let r = read_buffer(&pool, 65536);
        assert_eq!((r.as_ptr(), r.len()), (ptr, 0), "same allocation, empty");
        assert!(r.capacity() >= 65536);
        pool.put(Vec::with_capacity(100));
        let grown = read_buffer(&pool, 65536);
        assert!(
            grown.capacity() >= 65536,
            "a too small one is grown to the read size"
        );
        let fresh = read_buffer(&pool, 65536);
        assert!(fresh.capacity() >= 65536, "an empty pool gives a new one");
    }
}
