//! The memory of a TCP socket's ring buffer, and giving its pages back to the OS while the
//! ring holds nothing.
//!
//! A ring is allocated zeroed (`vec![0; len]`: with glibc's mmap threshold, or the host's page
//! allocator, a fresh mapping that commits pages only as bytes pass) and handed to smoltcp,
//! which never resizes it, so its address range stays valid until the socket is dropped. A
//! flow that once carried a few bytes keeps those pages committed while it sits idle; when
//! the pool (`sockets.rs`) finds the ring empty of everything smoltcp will read again (no
//! queued bytes, and for a receive ring no out-of-order segment either), [`Ring::release`]
//! gives the whole pages inside the range back through the driver's [`PageRelease`]
//! (qbkit-host: `MADV_DONTNEED`; the core itself makes no system call). smoltcp writes a byte
//! before it reads it, so the pages read as zeros (a fresh page on the next write) without
//! changing anything smoltcp sees. Only pages wholly inside the buffer are released, so an
//! allocator header in front of it or the next allocation behind it is never touched.

use crate::config::PageRelease;

/// The address range of one ring buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ring {
    addr: usize,
    len: usize,
}

impl Ring {
    /// A zeroed buffer of `len` bytes for smoltcp, and its range.
    pub(crate) fn alloc(len: usize) -> (Vec<u8>, Self) {
        let buf = vec![0; len];
        let ring = Self {
            // Exposed: `release` and `resident_pages` hand the range to the kernel.
            addr: buf.as_ptr().expose_provenance(),
            len,
        };
        (buf, ring)
    }

    /// The whole pages (of `page` bytes) inside the buffer: (start address, length), maybe empty.
    fn inner_pages(self, page: usize) -> (usize, usize) {
        let page = page.max(1);
        let start = self.addr.next_multiple_of(page);
        let end = (self.addr + self.len) / page * page;
        (start, end.saturating_sub(start))
    }

    /// Give the whole pages of the buffer back to the OS through `how`; returns how many bytes
    /// that covered (resident or not). The caller guarantees that smoltcp holds no byte in the
    /// ring it will read again (see the module docs) and that the socket owning it is alive.
    pub(crate) fn release(self, how: &PageRelease) -> usize {
        let (start, len) = self.inner_pages(how.page_size);
        if len == 0 {
            return 0;
        }
        // SAFETY: the range lies inside the live buffer of a socket the caller holds `&mut` to
        // (no other access runs meanwhile), and the caller guarantees no byte in it is read
        // before being written again: what `PageRelease::release` requires.
        unsafe { (how.release)(start, len) }
    }

    /// How many of the buffer's whole pages are resident (`mincore`), for tests.
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) fn resident_pages(self) -> usize {
        let page = testing::page_size();
        let (start, len) = self.inner_pages(page);
        let mut vec = vec![0u8; len / page];
        // SAFETY: mincore only reads the page tables of the range (inside a live buffer) and
        // writes one byte per page into `vec`, which has exactly that many.
        let rc = unsafe {
            libc::mincore(
                core::ptr::with_exposed_provenance_mut(start),
                len,
                vec.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|&&v| v & 1 != 0).count()
    }
}

/// What the tests give the NAT as its [`PageRelease`]: `madvise(MADV_DONTNEED)`, as qbkit-host
/// does (libc is a dev-dependency only: the core itself makes no system call).
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod testing {
    use crate::config::PageRelease;

    pub(crate) fn page_size() -> usize {
        // SAFETY: sysconf only reads a system parameter.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).unwrap_or(4096).max(1)
    }

    /// # Safety
    /// As [`PageRelease::release`].
    unsafe fn dont_need(addr: usize, len: usize) -> usize {
        // SAFETY: the caller's guarantee (PageRelease::release): memory it owns and reads
        // nothing of before writing again; MADV_DONTNEED on private anonymous memory only makes
        // it read as zeros later.
        let rc = unsafe {
            libc::madvise(
                core::ptr::with_exposed_provenance_mut(addr),
                len,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 { len } else { 0 }
    }

    pub(crate) fn madvise() -> PageRelease {
        PageRelease {
            page_size: page_size(),
            release: dont_need,
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn released_pages_leave_memory_and_take_new_writes() {
        let how = testing::madvise();
        let (mut buf, ring) = Ring::alloc(256 << 10);
        buf.fill(0xa5);
        let pages = ring.inner_pages(how.page_size).1 / how.page_size;
        assert!(pages >= 60, "{pages} whole pages");
        assert_eq!(ring.resident_pages(), pages);
        assert_eq!(ring.release(&how), pages * how.page_size);
        assert_eq!(ring.resident_pages(), 0);
        // Released pages read as zero and hold what is written next.
        let mid = buf.len() / 2;
        assert_eq!(buf[mid], 0);
        buf[mid..mid + 5].copy_from_slice(b"again");
        assert_eq!(&buf[mid..mid + 5], b"again");
        assert_eq!(ring.resident_pages(), 1);
    }

    #[test]
    fn a_buffer_smaller_than_a_page_releases_nothing() {
        let (mut buf, ring) = Ring::alloc(100);
        buf.fill(7);
        assert_eq!(ring.release(&testing::madvise()), 0);
        assert!(buf.iter().all(|&b| b == 7));
    }
}
