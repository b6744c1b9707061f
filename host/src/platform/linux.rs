//! Linux backend of [`crate::platform`]: resolv.conf (with systemd-resolved's stub handled),
//! ping sockets (`SOCK_DGRAM`/`IPPROTO_ICMP`, allowed by `net.ipv4.ping_group_range`), glibc
//! allocator tuning and RSS from /proc.
#![allow(
    unsafe_code,
    reason = "mallopt, malloc_trim and madvise are libc calls; the blocks below carry their SAFETY notes"
)]

use std::io;
use std::net::SocketAddr;

pub use super::unix::{
    ControlClient, ControlListener, ControlStream, control_connect, control_listen,
    control_shutdown_write, default_control_path, host_addrs, ping_socket, raise_fd_limit,
};

/// Upstream resolvers from /etc/resolv.conf; when it names the systemd-resolved stub
/// (127.0.0.53), the real upstreams from /run/systemd/resolve/resolv.conf.
pub fn dns_servers() -> io::Result<Vec<SocketAddr>> {
    let main = std::fs::read_to_string("/etc/resolv.conf")?;
    let resolved = std::fs::read_to_string("/run/systemd/resolve/resolv.conf").ok();
    Ok(super::pick_dns_servers(&main, resolved.as_deref()))
}

/// Where glibc's mmap threshold is pinned: at or below `qbkit_nat::MIN_TCP_BUFFER` (256 KiB) and
/// at the 64 KiB bundle buffers.
const MMAP_THRESHOLD: usize = 64 << 10;
const _: () = assert!(MMAP_THRESHOLD <= qbkit_nat::MIN_TCP_BUFFER);

/// Pins glibc's mmap threshold at [`MMAP_THRESHOLD`] so per-flow TCP buffers (1 MiB, or 256 KiB
/// once half the buffer budget is used) and bundle buffers are fresh mmaps: their pages are
/// committed only as data passes and returned when the flow ends. Without it glibc raises the
/// threshold after the first large free and RSS grows with churn: buffers then come from the
/// heap, committed in full by `calloc` (see the qbkit-nat crate docs).
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; it is called once at start-up before
    // other threads allocate, with a documented option and a positive value.
    unsafe {
        libc::mallopt(
            libc::M_MMAP_THRESHOLD,
            i32::try_from(MMAP_THRESHOLD).unwrap_or(i32::MAX),
        );
    }
}

/// How the NAT gives an idle TCP ring's pages back: `madvise(MADV_DONTNEED)` on whole pages
/// (the NAT core makes no system call; see qbkit-nat's `PageRelease`).
pub fn page_release() -> Option<qbkit_nat::PageRelease> {
    Some(qbkit_nat::PageRelease {
        page_size: crate::page_alloc::page_size(),
        release: dont_need,
    })
}

/// `madvise(MADV_DONTNEED)`: the NAT's [`qbkit_nat::PageRelease::release`].
///
/// # Safety
/// As `PageRelease::release`: memory the caller owns and reads nothing of before writing again.
unsafe fn dont_need(addr: usize, len: usize) -> usize {
    // SAFETY: the caller's guarantee; MADV_DONTNEED on private anonymous memory only makes the
    // range read as zeros later and commit nothing until written.
    let rc = unsafe {
        libc::madvise(
            std::ptr::with_exposed_provenance_mut(addr),
            len,
            libc::MADV_DONTNEED,
        )
    };
    if rc == 0 { len } else { 0 }
}

/// Hands the allocator's free memory back to the OS (glibc `malloc_trim(0)`: the top of every
/// arena and the free pages inside them). glibc returns only the top of the heap by itself, so
/// after many flows closed their freed socket state stays resident between live allocations.
pub fn trim_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds free; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident set size of this process (VmRSS from /proc/self/status).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
