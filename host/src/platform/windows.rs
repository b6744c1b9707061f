//! Windows backend of [`crate::platform`]. DNS: TODO(issue "host on Windows"): read the
//! adapters' resolvers with `GetAdaptersAddresses`; until then `--dns` must name them (an empty
//! list makes the gateway refuse DNS, and `qbkit-host run` says so). ICMP: Windows has no ping
//! sockets (only `IcmpSendEcho`), so echo requests report `IcmpUnavailable` and the NAT answers
//! pings to the gateway only. The control socket is not available yet.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use socket2::Socket;

/// No OS query yet: use `--dns`.
pub fn dns_servers() -> io::Result<Vec<SocketAddr>> {
    Ok(Vec::new())
}

/// Ping sockets do not exist on Windows.
pub fn ping_socket(_dst: IpAddr) -> io::Result<Socket> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "Windows has no unprivileged ping sockets",
    ))
}

/// Nothing to tune.
pub fn tune_allocator() {}

/// The laptop's own addresses: not read on Windows yet (an empty list), so `--deny-lan` closes
/// the private networks but not a public address of the laptop itself.
pub fn host_addrs() -> io::Result<Vec<IpAddr>> {
    Ok(Vec::new())
}

/// Windows has no per-process socket limit to raise.
pub fn raise_fd_limit() {}

/// Not measured on Windows yet.
pub fn rss_bytes() -> Option<u64> {
    None
}

/// A path under the user's temp dir (the control socket itself is Unix-only for now).
pub fn default_control_path() -> PathBuf {
    std::env::temp_dir().join("qbkit-host.sock")
}
