//! macOS backend of [`crate::platform`], also used on the other Unix systems (BSDs): resolv.conf
//! (on macOS maintained by configd from the system's DNS settings), ping sockets (macOS allows
//! `SOCK_DGRAM`/`IPPROTO_ICMP` for every user; elsewhere where the OS has them), no allocator
//! tuning, no RSS probe yet.

use std::io;
use std::net::SocketAddr;

pub use super::unix::{default_control_path, host_addrs, ping_socket, raise_fd_limit};

/// Upstream resolvers from /etc/resolv.conf (configd keeps it in sync with the primary service).
pub fn dns_servers() -> io::Result<Vec<SocketAddr>> {
    let main = std::fs::read_to_string("/etc/resolv.conf")?;
    Ok(super::pick_dns_servers(&main, None))
}

/// Nothing to tune: the system allocator returns large blocks to the OS by itself.
pub fn tune_allocator() {}

/// Not measured on macOS yet (needs `task_info`); `status` shows it as unknown.
pub fn rss_bytes() -> Option<u64> {
    None
}
