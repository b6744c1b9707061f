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
