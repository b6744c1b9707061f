//! Pieces shared by the Unix backends (Linux, macOS): ping sockets, the control channel (a unix
//! socket: its path, the listener and the client), and the laptop's own interface addresses
//! (`getifaddrs`, for the NAT's `--deny-lan`).
#![allow(
    unsafe_code,
    reason = "getuid, getrlimit and getifaddrs are libc calls; each block carries its SAFETY note"
)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, Socket, Type};

/// A control client connection as the daemon sees it.
pub type ControlStream = tokio::net::UnixStream;
/// The client's end of a control connection.
pub type ControlClient = tokio::net::UnixStream;

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

/// The daemon side of the control channel: a unix socket at a path, removed again on drop.
pub type ControlListener = qbkit_link::control::UnixControlListener;

/// Binds the control socket (replacing a stale one; a missing directory is created with mode
/// 0700). `AddrInUse` when another daemon answers on it.
pub fn control_listen(path: &Path) -> io::Result<ControlListener> {
    ControlListener::bind(
        path,
        "another qbkit-host is serving this control socket (use --control)",
    )
}

/// Connects a client to the daemon's control socket.
pub async fn control_connect(path: &Path) -> io::Result<ControlClient> {
    tokio::net::UnixStream::connect(path).await
}

/// Half-closes a control connection (the peer reads EOF and can still answer).
pub fn control_shutdown_write(s: &ControlStream) -> io::Result<()> {
    socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write)
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

/// Every address of every interface of this machine (`getifaddrs`), loopback included, without
/// duplicates. The NAT denies them to the board under `--deny-lan`.
pub fn host_addrs() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes the head of a list it allocates into the valid pointer we pass;
    // the list is freed below with freeifaddrs, once.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which is not freed yet.
        let ifa = unsafe { &*cur };
        // SAFETY: `ifa_addr` is null or points to a sockaddr of the family it names, valid as
        // long as the list.
        if let Some(ip) = unsafe { sockaddr_ip(ifa.ifa_addr) }
            && !out.contains(&ip)
        {
            out.push(ip);
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The IP address in a `sockaddr` of family `AF_INET` or `AF_INET6` (None: null or other family).
///
/// # Safety
/// `sa` is null or points to a readable sockaddr whose size matches its family.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: non-null and readable (the caller's contract); read unaligned to be safe.
    let family = i32::from(unsafe { std::ptr::read_unaligned(sa) }.sa_family);
    match family {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin = unsafe { std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in>()) };
            Some(IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6 = unsafe { std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in6>()) };
            Some(IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addrs_include_loopback() {
        let addrs = host_addrs().unwrap();
        assert!(
            addrs.contains(&IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
    }
}
