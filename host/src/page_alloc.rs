//! qbkit-host's global allocator on Linux: large allocations in mappings of their own with no
//! allocator header, everything else from the system allocator.
//!
//! Each flow's TCP rings (1 MiB, or 256 KiB past half the buffer budget) are large zeroed
//! allocations. From glibc (mmap threshold pinned at 64 KiB, `platform::tune_allocator`) each is
//! a mapping whose first page starts with glibc's chunk header, followed by the ring's first
//! bytes, so that page stays committed for as long as the flow lives: 8 KiB per idle flow, the
//! largest part of the NAT's RSS with thousands of flows open. Here a request of
//! [`MAPPED_MIN`] bytes or more (alignment at most a page) is an anonymous `mmap` of exactly its
//! size rounded up to pages, unmapped with the size its `Layout` states, grown or shrunk with
//! `mremap`. Every page of such a buffer is the buffer's alone, so the NAT can give all pages
//! of an idle flow's empty rings back (`MADV_DONTNEED`, qbkit-nat's `ring.rs`), and an
//! untouched one costs nothing. Allocation-for-allocation this is what glibc does above its
//! threshold (one mapping each, zeroed by the kernel, `mremap` on growth), minus the header;
//! smaller requests, and the rare larger ones aligned beyond a page, go to [`System`]. Whether
//! a block is mapped follows from its `Layout` alone, so `dealloc` and `realloc` need no
//! bookkeeping.
#![allow(
    unsafe_code,
    reason = "a GlobalAlloc forwarding to mmap/munmap/mremap and System; each block carries its SAFETY note"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Smallest request served by a mapping of its own: glibc's pinned mmap threshold and the
/// bundle buffers' size, at most the TCP rings' smallest size (`qbkit_nat::MIN_TCP_BUFFER`).
pub const MAPPED_MIN: usize = 64 << 10;
const _: () = assert!(MAPPED_MIN <= qbkit_nat::MIN_TCP_BUFFER);

/// The allocator; install with `#[global_allocator]` (the qbkit-host binary does, on Linux).
#[derive(Debug, Default, Clone, Copy)]
pub struct PageAlloc;

/// The page size, asked once (0: not asked yet).
static PAGE: AtomicUsize = AtomicUsize::new(0);

/// The OS page size, asked once (4096 if it cannot be asked).
pub(crate) fn page_size() -> usize {
    let p = PAGE.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: sysconf only reads a system parameter (and allocates nothing).
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let p = usize::try_from(n).ok().filter(|&p| p > 0).unwrap_or(4096);
    PAGE.store(p, Ordering::Relaxed);
    p
}

/// The smallest page size there is: mappings are at least this aligned.
const MIN_PAGE: usize = 4096;

/// Whether a block of this layout is (or is to be) a mapping of its own. Two comparisons with
/// constants: this is inlined into every allocation site, the mapping paths are not.
#[inline]
fn mapped(layout: Layout) -> bool {
    layout.size() >= MAPPED_MIN && layout.align() <= MIN_PAGE
}

/// The mapping length of a block of `size` bytes.
fn map_len(size: usize) -> usize {
    size.next_multiple_of(page_size())
}

/// A fresh zeroed anonymous mapping of `size` bytes (rounded up to pages), or null.
#[inline(never)]
fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            map_len(size),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        core::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: mapped blocks are page-aligned (their alignment is at most 4096), at least `size` bytes,
// zeroed, and released with the same length they were mapped with (derived from the Layout the
// caller must pass back); every other block is System's, with System's guarantees.
unsafe impl GlobalAlloc for PageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's layout (non-zero size, per GlobalAlloc).
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            // Anonymous mappings come zeroed: no memset, no page committed.
            map(layout.size())
        } else {
            // SAFETY: as in `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(layout) {
            // SAFETY: `ptr` is a live mapped block of this layout, not used afterwards.
            unsafe { unmap(ptr, layout.size()) };
        } else {
            // SAFETY: a System block of this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc::realloc's caller guarantees that new_size, rounded up to the
        // alignment, does not overflow isize, which is what this constructor needs.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (mapped(layout), mapped(new)) {
            (false, false) => {
                // SAFETY: a System block of `layout`, resized by System.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
            // SAFETY: a mapped block of `layout` (or one to become one), as `realloc_mapped`
            // requires.
            _ => unsafe { self.realloc_mapped(ptr, layout, new) },
        }
    }
}

impl PageAlloc {
    /// `realloc` where the old or the new layout is mapped: `mremap` if both are, else a block
    /// of the other kind with the contents copied over.
    ///
    /// # Safety
    /// `GlobalAlloc::realloc`'s contract, with `new` the new layout.
    #[inline(never)]
    unsafe fn realloc_mapped(&self, ptr: *mut u8, layout: Layout, new: Layout) -> *mut u8 {
        if mapped(layout) && mapped(new) {
            // SAFETY: `ptr` is a whole mapping of `map_len(old size)` bytes; MREMAP_MAYMOVE
            // keeps its contents (and zero-fills growth), and the old address is not used
            // again if it moved.
            let p = unsafe {
                libc::mremap(
                    ptr.cast(),
                    map_len(layout.size()),
                    map_len(new.size()),
                    libc::MREMAP_MAYMOVE,
                )
            };
            return if p == libc::MAP_FAILED {
                core::ptr::null_mut()
            } else {
                p.cast()
            };
        }
        // SAFETY: `new` has a non-zero size (it or `layout` is at least MAPPED_MIN, and a
        // shrink below it is still non-zero per GlobalAlloc::realloc's contract).
        let p = unsafe { self.alloc(new) };
        if !p.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new.size()));
                self.dealloc(ptr, layout);
            }
        }
        p
    }
}

/// Unmap a mapped block of `size` bytes.
///
/// # Safety
/// `ptr` came from `map` (or `mremap`) for a block of `size` bytes, so `map_len(size)` is
/// exactly its mapping's length; nothing uses it afterwards.
#[inline(never)]
unsafe fn unmap(ptr: *mut u8, size: usize) {
    // SAFETY: per the function's contract.
    unsafe { libc::munmap(ptr.cast(), map_len(size)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every page of the block is resident-able and ours: write a pattern, read it back.
    fn fill(p: *mut u8, len: usize, seed: u8) {
        // SAFETY: the test owns `len` bytes at `p`.
        let s = unsafe { core::slice::from_raw_parts_mut(p, len) };
        for (i, b) in s.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
    }

    fn check(p: *const u8, len: usize, seed: u8) {
        // SAFETY: the test owns at least `len` initialised bytes at `p`.
        let s = unsafe { core::slice::from_raw_parts(p, len) };
        for (i, &b) in s.iter().enumerate() {
            assert_eq!(b, (i as u8).wrapping_mul(31).wrapping_add(seed), "byte {i}");
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("layout")
    }

    #[test]
    fn large_blocks_are_page_aligned_zeroed_and_round_trip() {
        let a = PageAlloc;
        for size in [MAPPED_MIN, MAPPED_MIN + 1, 1 << 20, (1 << 20) + 123] {
            let lay = layout(size, 1);
            assert!(mapped(lay));
            // SAFETY: non-zero layout; the block is freed with the same layout.
            unsafe {
                let zeroed = a.alloc_zeroed(lay);
                assert!(!zeroed.is_null());
                assert_eq!(zeroed.addr() % page_size(), 0, "no header in front");
                let bytes = core::slice::from_raw_parts(zeroed, size);
                assert!(bytes.iter().all(|&b| b == 0));
                fill(zeroed, size, 3);
                check(zeroed, size, 3);
                a.dealloc(zeroed, lay);
                let plain = a.alloc(lay);
                assert!(!plain.is_null());
                fill(plain, size, 4);
                check(plain, size, 4);
                a.dealloc(plain, lay);
            }
        }
    }

    #[test]
    fn realloc_keeps_the_contents_within_and_across_the_threshold() {
        let a = PageAlloc;
        // small → large → larger → large → small, contents checked at each step.
        let sizes = [1000, MAPPED_MIN + 10, 3 << 20, MAPPED_MIN, 4000, 100];
        let mut l = layout(sizes[0], 8);
        // SAFETY: each step passes the block's current layout; the last one frees it.
        unsafe {
            let mut p = a.alloc(l);
            assert!(!p.is_null());
            fill(p, l.size(), 9);
            for &size in &sizes[1..] {
                let kept = l.size().min(size);
                p = a.realloc(p, l, size);
                assert!(!p.is_null());
                check(p, kept, 9);
                l = layout(size, 8);
                fill(p, size, 9);
                if mapped(l) {
                    assert_eq!(p.addr() % page_size(), 0);
                }
            }
            a.dealloc(p, l);
        }
    }

    #[test]
    fn small_and_over_aligned_blocks_go_to_the_system_allocator() {
        let a = PageAlloc;
        let over = layout(MAPPED_MIN, 4 * page_size());
        assert!(!mapped(over));
        assert!(!mapped(layout(MAPPED_MIN - 1, 1)));
        // SAFETY: non-zero layouts, freed with the same layout.
        unsafe {
            let p = a.alloc_zeroed(over);
            assert!(!p.is_null());
            assert_eq!(p.addr() % over.align(), 0);
            assert!(
                core::slice::from_raw_parts(p, over.size())
                    .iter()
                    .all(|&b| b == 0)
            );
            fill(p, over.size(), 5);
            let q = a.realloc(p, over, 2 * MAPPED_MIN);
            assert!(!q.is_null());
            assert_eq!(q.addr() % over.align(), 0);
            check(q, over.size(), 5);
            a.dealloc(q, layout(2 * MAPPED_MIN, over.align()));
        }
    }
}
