//! Pieces shared by the Unix backends (Linux, macOS): ping sockets and the control socket path.
#![allow(
    unsafe_code,
    reason = "getuid is a libc call; the block carries its SAFETY note"
)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use socket2::{Domain, Protocol, Socket, Type};

/// An unprivileged ICMP echo ("ping") socket connected to `dst`, non-blocking. The kernel picks
/// the echo identifier and filters replies by it. Fails with `PermissionDenied` when the OS does
/// not allow them (Linux: the group is outside `net.ipv4.ping_group_range`).
pub fn ping_socket(dst: IpAddr) -> io::Result<Socket> {
    let (domain, proto) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let s = Socket::new(domain, Type::DGRAM, Some(proto))?;
    s.set_nonblocking(true)?;
    s.connect(&SocketAddr::new(dst, 0).into())?;
    Ok(s)
}

/// `$XDG_RUNTIME_DIR/qbkit-host.sock`, or `/run/qbkit-host/control.sock` for root, or
/// `/tmp/qbkit-host-UID/control.sock` otherwise.
pub fn default_control_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("qbkit-host.sock");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        PathBuf::from("/run/qbkit-host/control.sock")
    } else {
        PathBuf::from(format!("/tmp/qbkit-host-{uid}/control.sock"))
    }
}

/// Raises the soft open-files limit to the hard limit: every flow is one OS socket, and the
/// default soft limit (1024 on most Linux systems) is below the NAT's flow limit.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid rlimit struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let old = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the valid rlimit struct we pass; raising the soft limit up to
        // the hard limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } == 0 {
            tracing::debug!(old, new = lim.rlim_cur, "raised the open-files limit");
        }
    }
}
