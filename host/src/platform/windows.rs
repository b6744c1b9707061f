//! Windows backend of [`crate::platform`] (the APIs exist since Windows Vista; Rust's standard
//! Windows targets need Windows 10, see the README for 7 and 8). Tested under Wine by
//! `tests/netns/wine-e2e` and natively by the workflow's Windows job.
//!
//! - DNS and the laptop's own addresses: `GetAdaptersAddresses` through the `ipconfig` crate
//!   (it wraps the call and its linked lists; hickory-resolver reads Windows' resolvers the same
//!   way). The resolvers of the adapters that are up, lowest interface metric first (the order
//!   Windows' DNS client tries them), see [`qbkit_nat::resolvers::order_adapter_resolvers`].
//! - Ping: Windows has no unprivileged ping sockets, but the ICMP helper API
//!   (`IcmpSendEcho2`/`Icmp6SendEcho2`) sends echo requests without admin rights. [`ping_socket`]
//!   gives the socket layer what a ping socket would be: one end of a connected loopback UDP
//!   pair, whose other end is a helper thread that turns each echo request written to it into an
//!   `IcmpSendEcho2` call and writes the echo reply back as the ICMP message a ping socket
//!   returns. So `sockets.rs` is the same on every OS.
//! - The control channel: a named pipe (`\\.\pipe\qbkit-host-USER` by default), local clients
//!   only; the pipe's default DACL gives write access (needed to send a request) to the user
//!   who started the daemon, administrators and SYSTEM only.
//! - RSS: the working set (`K32GetProcessMemoryInfo`).
#![allow(
    unsafe_code,
    reason = "the ICMP helper API and GetProcessMemoryInfo are Win32 calls; each block carries its SAFETY note"
)]

use std::ffi::c_void;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
};
use windows_sys::Win32::Foundation::{ERROR_PIPE_BUSY, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    ICMP_ECHO_REPLY, ICMPV6_ECHO_REPLY_LH, Icmp6CreateFile, Icmp6ParseReplies, Icmp6SendEcho2,
    IcmpCloseHandle, IcmpCreateFile, IcmpSendEcho2,
};
use windows_sys::Win32::Networking::WinSock::{AF_INET6, SOCKADDR_IN6};
use windows_sys::Win32::System::ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS};
use windows_sys::Win32::System::Threading::GetCurrentProcess;

use qbkit_nat::resolvers::{AdapterResolvers, order_adapter_resolvers};

/// The adapters' resolvers in the order Windows uses them (see the module docs).
pub fn dns_servers() -> io::Result<Vec<SocketAddr>> {
    let adapters = ipconfig::get_adapters().map_err(io::Error::other)?;
    let list: Vec<AdapterResolvers> = adapters
        .iter()
        .map(|a| AdapterResolvers {
            up: a.oper_status() == ipconfig::OperStatus::IfOperStatusUp,
            metric: a.ipv4_metric().min(a.ipv6_metric()),
            ipv6_if_index: a.ipv6_if_index(),
            servers: a.dns_servers().to_vec(),
        })
        .collect();
    Ok(order_adapter_resolvers(&list))
}

/// Every unicast address of every adapter, without duplicates (for `--deny-lan`).
pub fn host_addrs() -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for a in ipconfig::get_adapters().map_err(io::Error::other)? {
        for ip in a.ip_addresses() {
            if !out.contains(ip) {
                out.push(*ip);
            }
        }
    }
    Ok(out)
}

/// Nothing to tune.
pub fn tune_allocator() {}

/// Nothing to trim.
pub fn trim_allocator() {}

/// Idle TCP rings keep their pages here (the NAT's page release is Linux's `madvise`).
pub fn page_release() -> Option<qbkit_nat::PageRelease> {
    None
}

/// Windows has no per-process socket limit to raise.
pub fn raise_fd_limit() {}

/// The working set of this process.
pub fn rss_bytes() -> Option<u64> {
    // SAFETY: PROCESS_MEMORY_COUNTERS is plain data; all-zero is a valid value.
    let mut pmc: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
    let size = u32::try_from(std::mem::size_of::<PROCESS_MEMORY_COUNTERS>()).ok()?;
    // SAFETY: the pseudo handle of the current process needs no closing; the call writes at most
    // `size` bytes into the valid struct we pass.
    let ok = unsafe { K32GetProcessMemoryInfo(GetCurrentProcess(), &raw mut pmc, size) };
    (ok != 0).then_some(pmc.WorkingSetSize as u64)
}

// --- control channel: a named pipe -------------------------------------------------------------

/// The client's end of a control connection.
pub type ControlClient = NamedPipeClient;

/// A control client connection as the daemon sees it: the pipe, with the half-close a pipe
/// lacks emulated on the reading side. After [`control_shutdown_write`] (the board closed its
/// side of a `connect`), reads report EOF, so the socket layer ends the flow and drops the pipe;
/// the client then reads what is still buffered, and EOF. Data the client sends after the board
/// closed is not delivered (a unix socket would deliver it).
#[derive(Debug)]
pub struct ControlStream {
    pipe: NamedPipeServer,
    read_closed: AtomicBool,
    /// The waker of the last pending `poll_read_ready`, woken by the emulated half-close.
    read_waker: Mutex<Option<Waker>>,
}

impl ControlStream {
    fn read_closed(&self) -> bool {
        self.read_closed.load(Ordering::Relaxed)
    }

    /// As `NamedPipeServer::poll_read_ready` (ready at once after the emulated half-close).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.read_closed() {
            return Poll::Ready(Ok(()));
        }
        let r = self.pipe.poll_read_ready(cx);
        if r.is_pending()
            && let Ok(mut w) = self.read_waker.lock()
        {
            *w = Some(cx.waker().clone());
        }
        r
    }

    /// As `NamedPipeServer::poll_write_ready`.
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.pipe.poll_write_ready(cx)
    }

    /// As `NamedPipeServer::try_read` (EOF after the emulated half-close).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read_closed() {
            return Ok(0);
        }
        self.pipe.try_read(buf)
    }

    /// As `NamedPipeServer::try_write`.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.pipe.try_write(buf)
    }
}

impl AsyncRead for ControlStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read_closed() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.get_mut().pipe).poll_read(cx, buf)
    }
}

impl AsyncWrite for ControlStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().pipe).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().pipe).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().pipe).poll_shutdown(cx)
    }
}

/// `\\.\pipe\qbkit-host-USERNAME` (one daemon per user, like the per-user path on Unix).
pub fn default_control_path() -> PathBuf {
    let user = std::env::var("USERNAME").unwrap_or_default();
    PathBuf::from(super::pipe_name(&format!("qbkit-host-{user}")))
}

/// The pipe a `--control` value names: a `\\.\pipe\…` path as is, any other path mapped to a
/// pipe named after it (so `--control C:\q\ctl` works the same for the daemon and its clients).
fn pipe_path(path: &Path) -> String {
    let s = path.to_string_lossy();
    if s.len() > 9 && s[..9].eq_ignore_ascii_case(r"\\.\pipe\") {
        s.into_owned()
    } else {
        super::pipe_name(&s)
    }
}

/// The daemon side of the control channel: the pipe instance waiting for the next client.
#[derive(Debug)]
pub struct ControlListener {
    name: String,
    next: NamedPipeServer,
}

impl ControlListener {
    /// Creates the first instance of the pipe; `AddrInUse` when another daemon owns the name.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let name = pipe_path(path);
        let taken = || {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another qbkit-host is serving the pipe {name} (use --control)"),
            )
        };
        // A daemon answering on the name (as on Unix, where the socket is probed the same way):
        // `first_pipe_instance` below says so too on Windows, but Wine ignores that flag.
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&name)
        {
            Ok(_) => return Err(taken()),
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY.cast_signed()) => {
                return Err(taken());
            }
            Err(_) => {}
        }
        let next = ServerOptions::new()
            .first_pipe_instance(true)
            .reject_remote_clients(true)
            .create(&name)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::PermissionDenied {
                    taken()
                } else {
                    e
                }
            })?;
        Ok(Self { name, next })
    }
}

/// Creates the control pipe (see [`ControlListener::bind`]).
pub fn control_listen(path: &Path) -> io::Result<ControlListener> {
    ControlListener::bind(path)
}

impl qbkit_link::control::Listener for ControlListener {
    type Stream = ControlStream;

    /// The next client: waits for one to connect to the waiting instance, and creates the next
    /// instance before handing the connected one over (so the name never disappears).
    async fn accept(&mut self) -> io::Result<ControlStream> {
        self.next.connect().await?;
        let next = ServerOptions::new()
            .reject_remote_clients(true)
            .create(&self.name)?;
        Ok(ControlStream {
            pipe: std::mem::replace(&mut self.next, next),
            read_closed: AtomicBool::new(false),
            read_waker: Mutex::new(None),
        })
    }
}

/// Connects a client to the daemon's pipe; a pipe whose instances are all busy is retried for
/// up to 2 s.
pub async fn control_connect(path: &Path) -> io::Result<ControlClient> {
    let name = pipe_path(path);
    let mut tries = 0;
    loop {
        match ClientOptions::new().open(&name) {
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY.cast_signed()) && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

/// Named pipes have no half-close: the connection ends instead (see [`ControlStream`]).
pub fn control_shutdown_write(s: &ControlStream) -> io::Result<()> {
    s.read_closed.store(true, Ordering::Relaxed);
    if let Some(w) = s.read_waker.lock().ok().and_then(|mut w| w.take()) {
        w.wake();
    }
    Ok(())
}

// --- ping through the ICMP helper API ----------------------------------------------------------

/// How long one echo request waits for its reply. Requests of one flow are sent one after the
/// other, so a lost reply delays the next request by at most this.
const ECHO_TIMEOUT_MS: u32 = 2000;
/// A helper whose flow sent nothing for this long exits (the NAT drops idle ICMP flows after
/// 30 s by default, and then never writes to the pair again).
const HELPER_IDLE: Duration = Duration::from_mins(2);
/// Largest echo payload `IcmpSendEcho2` takes.
const MAX_ECHO_DATA: usize = 65500;

/// A ping "socket" for `dst` (see the module docs): a non-blocking UDP socket connected to a
/// helper thread on loopback that carries its echo requests out through the ICMP helper API and
/// writes the echo replies back. Fails when the ICMP helper API cannot be opened.
pub fn ping_socket(dst: IpAddr) -> io::Result<Socket> {
    let icmp = IcmpHandle::open(dst)?;
    let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let nat_side = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    nat_side.bind(&lo.into())?;
    let nat_addr = nat_side
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("loopback socket without an address"))?;
    let helper = UdpSocket::bind(lo)?;
    helper.connect(nat_addr)?;
    helper.set_read_timeout(Some(HELPER_IDLE))?;
    nat_side.connect(&helper.local_addr()?.into())?;
    nat_side.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("qbkit-ping".into())
        .spawn(move || echo_helper(&icmp, dst, &helper))?;
    Ok(nat_side)
}

/// The helper thread of one ping "socket": echo request in, `IcmpSendEcho2`, echo reply out.
/// Ends after [`HELPER_IDLE`] without a request (its flow is gone by then), or when its socket
/// fails (Windows reports a reply sent to the flow's closed socket on the next receive).
fn echo_helper(icmp: &IcmpHandle, dst: IpAddr, sock: &UdpSocket) {
    let mut req = vec![0u8; 65536];
    let mut reply = vec![0u8; MAX_ECHO_DATA + 1024];
    loop {
        let n = match sock.recv(&mut req) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(%dst, error = %e, "ping helper done");
                return;
            }
        };
        let Some((seq, data)) = super::parse_icmp_echo_request(&req[..n]) else {
            continue;
        };
        if let Some(back) = icmp.echo(dst, data, &mut reply) {
            let _ = sock.send(&super::icmp_echo_reply(seq, back));
        }
    }
}

/// An ICMP helper API handle (`IcmpCreateFile` or `Icmp6CreateFile`), closed on drop.
struct IcmpHandle(HANDLE);

// SAFETY: an ICMP handle is a kernel handle, usable from any thread; it is used by one thread
// at a time (the helper that owns it).
unsafe impl Send for IcmpHandle {}

impl IcmpHandle {
    fn open(dst: IpAddr) -> io::Result<Self> {
        // SAFETY: both calls take no arguments and return a handle or INVALID_HANDLE_VALUE.
        let h = unsafe {
            match dst {
                IpAddr::V4(_) => IcmpCreateFile(),
                IpAddr::V6(_) => Icmp6CreateFile(),
            }
        };
        if h == INVALID_HANDLE_VALUE || h.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(h))
    }

    /// Sends one echo request with `data` and waits for its reply (at most
    /// [`ECHO_TIMEOUT_MS`]); the reply's data, a slice of `buf`, or `None` for no reply
    /// (timeout, unreachable, any error status).
    fn echo<'b>(&self, dst: IpAddr, data: &[u8], buf: &'b mut [u8]) -> Option<&'b [u8]> {
        let len = u16::try_from(data.len().min(MAX_ECHO_DATA)).ok()?;
        let size = u32::try_from(buf.len()).ok()?;
        let reply_data = match dst {
            IpAddr::V4(v4) => {
                // SAFETY: the handle is open; `data` is readable for `len` bytes; `buf` is
                // writable for `size` bytes, which is at least an ICMP_ECHO_REPLY plus the data
                // plus 8 bytes as the API asks; no event and no APC make the call synchronous.
                let n = unsafe {
                    IcmpSendEcho2(
                        self.0,
                        std::ptr::null_mut(),
                        None,
                        std::ptr::null(),
                        u32::from_ne_bytes(v4.octets()),
                        data.as_ptr().cast::<c_void>(),
                        len,
                        std::ptr::null(),
                        buf.as_mut_ptr().cast::<c_void>(),
                        size,
                        ECHO_TIMEOUT_MS,
                    )
                };
                if n == 0 {
                    return None; // no reply within the timeout, or an error
                }
                // SAFETY: after a successful call `buf` starts with an ICMP_ECHO_REPLY; read
                // unaligned because a Vec<u8> gives no alignment guarantee.
                let r = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<ICMP_ECHO_REPLY>()) };
                if r.Status != 0 {
                    return None;
                }
                // The reply's data pointer points into `buf`; taken as an offset, never deref'd.
                let start = (r.Data as usize).checked_sub(buf.as_ptr() as usize)?;
                start..start.checked_add(usize::from(r.DataSize))?
            }
            IpAddr::V6(v6) => {
                let src = sockaddr_in6(Ipv6Addr::UNSPECIFIED);
                let to = sockaddr_in6(v6);
                // SAFETY: as above; the two sockaddrs live until the call returns.
                let n = unsafe {
                    Icmp6SendEcho2(
                        self.0,
                        std::ptr::null_mut(),
                        None,
                        std::ptr::null(),
                        &raw const src,
                        &raw const to,
                        data.as_ptr().cast::<c_void>(),
                        len,
                        std::ptr::null(),
                        buf.as_mut_ptr().cast::<c_void>(),
                        size,
                        ECHO_TIMEOUT_MS,
                    )
                };
                if n == 0 {
                    return None;
                }
                // SAFETY: `buf` holds the replies of the successful call above.
                if unsafe { Icmp6ParseReplies(buf.as_mut_ptr().cast::<c_void>(), size) } == 0 {
                    return None;
                }
                // SAFETY: after parsing, `buf` starts with an ICMPV6_ECHO_REPLY; unaligned read.
                let r = unsafe {
                    std::ptr::read_unaligned(buf.as_ptr().cast::<ICMPV6_ECHO_REPLY_LH>())
                };
                if r.Status != 0 {
                    return None;
                }
                // The data follows the reply structure; the API reports no length for it, and
                // an echo reply carries the request's data.
                let start = std::mem::size_of::<ICMPV6_ECHO_REPLY_LH>();
                start..start + data.len()
            }
        };
        buf.get(reply_data)
    }
}

impl Drop for IcmpHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from IcmpCreateFile/Icmp6CreateFile and is closed once.
        unsafe { IcmpCloseHandle(self.0) };
    }
}

fn sockaddr_in6(ip: Ipv6Addr) -> SOCKADDR_IN6 {
    // SAFETY: SOCKADDR_IN6 is plain data; all-zero is a valid value.
    let mut sa: SOCKADDR_IN6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = AF_INET6;
    sa.sin6_addr.u.Byte = ip.octets();
    sa
}
