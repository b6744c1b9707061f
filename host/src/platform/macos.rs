//! macOS backend of [`crate::platform`], also used on the other Unix systems (BSDs): the system
//! configuration's resolvers (`scutil --dns`, see `qbkit_nat::resolvers` for why not /etc/resolv.conf;
//! resolv.conf where scutil does not exist), ping sockets (macOS allows
//! `SOCK_DGRAM`/`IPPROTO_ICMP` for every user; elsewhere where the OS has them), no allocator
//! tuning, RSS from the `memory-stats` crate (`task_info` on macOS).

use std::io;
use std::net::SocketAddr;

pub use super::unix::{
    ControlClient, ControlListener, ControlStream, control_connect, control_listen,
    control_shutdown_write, default_control_path, host_addrs, ping_socket, raise_fd_limit,
};

/// The resolvers of the system configuration (`scutil --dns`), default ones first, then the
/// split-DNS ones; /etc/resolv.conf when scutil is not there or reports none.
pub fn dns_servers() -> io::Result<Vec<SocketAddr>> {
    if let Ok(out) = std::process::Command::new("scutil").arg("--dns").output()
        && out.status.success()
    {
        let found = qbkit_nat::resolvers::parse_scutil_dns(&String::from_utf8_lossy(&out.stdout));
        if !found.is_empty() {
            return Ok(found);
        }
    }
    let main = std::fs::read_to_string("/etc/resolv.conf")?;
    Ok(super::pick_dns_servers(&main, None))
}

/// Nothing to tune: the system allocator returns large blocks to the OS by itself.
pub fn tune_allocator() {}

/// Nothing to trim: the system allocator returns freed memory by itself.
pub fn trim_allocator() {}

/// Idle TCP rings keep their pages here (the NAT's page release is Linux's `madvise`).
pub fn page_release() -> Option<qbkit_nat::PageRelease> {
    None
}

/// Resident set size of this process (macOS: `task_info`'s resident size).
#[cfg(target_os = "macos")]
pub fn rss_bytes() -> Option<u64> {
    memory_stats::memory_stats().map(|m| m.physical_mem as u64)
}

/// Not measured on the BSDs.
#[cfg(not(target_os = "macos"))]
pub fn rss_bytes() -> Option<u64> {
    None
}
