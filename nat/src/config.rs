//! NatConfig: every limit, timeout, address and policy switch of the NAT core, with defaults.
//!
//! The driver builds one `NatConfig` (defaults, then flags and config file), hands it to
//! [`Nat::new`](crate::Nat::new), and may later replace the DNS upstreams with
//! [`Nat::set_dns_servers`](crate::Nat::set_dns_servers). Nothing here is read from the OS.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::time::Duration;

/// Configuration of a [`Nat`](crate::Nat). Start from [`NatConfig::default`] and change fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent policy switches, each documented"
)]
pub struct NatConfig {
    /// The board's IPv4 address (default 10.47.0.2). Packets to the board are addressed to it.
    pub board_ipv4: Ipv4Addr,
    /// The gateway's IPv4 address (default 10.47.0.1): answers DNS on port 53, echo requests, and
    /// maps to host loopback when [`map_gateway_to_loopback`](Self::map_gateway_to_loopback) is on.
    pub gateway_ipv4: Ipv4Addr,
    /// Prefix length of the board network (default 24). Other addresses inside it are unreachable.
    pub prefix_len: u8,
    /// The board's IPv6 address (default fd47::2): IPv6 packets from the board must come from
    /// it, and answers go to it.
    pub board_ipv6: Ipv6Addr,
    /// The gateway's IPv6 address (default fd47::1): answers DNS on port 53 and echo requests,
    /// like the IPv4 gateway (mapped to `::1` with `map_gateway_to_loopback`).
    pub gateway_ipv6: Ipv6Addr,
    /// Prefix length of the board's IPv6 network (default 64). Other addresses inside it are
    /// unreachable.
    pub prefix_len_ipv6: u8,
    /// Link MTU (default 65520): the largest IP packet sent to the board, and the TCP MSS base.
    /// `poll_ip_packet` needs an output buffer at least this large.
    pub mtu: usize,
    /// Upstream DNS resolvers the gateway's port 53 forwards to (UDP and TCP). The driver reads
    /// them from the OS (resolv.conf, systemd-resolved). Empty: DNS to the gateway is refused.
    /// These addresses are exempt from the loopback/LAN policy.
    pub dns_servers: Vec<SocketAddr>,
    /// Let the board reach host loopback (127.0.0.0/8, ::1) and link-local (169.254.0.0/16,
    /// fe80::/10). Default off.
    pub allow_host_loopback: bool,
    /// Map the gateway addresses (other than DNS) to 127.0.0.1 and ::1, like slirp's 10.0.2.2. Only takes
    /// effect together with `allow_host_loopback`. Default off.
    pub map_gateway_to_loopback: bool,
    /// Deny private networks (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) and every address in
    /// [`host_addrs`](Self::host_addrs). Default off: like slirp4netns, pasta and Windows ICS the
    /// board reaches what the laptop reaches (DESIGN.md, Defaults). Loopback and link-local
    /// addresses follow `allow_host_loopback` either way.
    pub deny_lan: bool,
    /// The laptop's own interface addresses; denied when `deny_lan` is on. The driver reads them
    /// from the OS at start (empty where it cannot).
    pub host_addrs: Vec<IpAddr>,
    /// Most flows of all kinds at once (default 4096). When full, the longest-idle flow that has
    /// been idle at least `evict_min_idle` is evicted; otherwise the new flow is dropped.
    pub max_flows: usize,
    /// Most TCP flows waiting for the OS connect (default 512). More SYNs are counted as
    /// `drop_syn_flood` and dropped (the board retries them).
    pub max_connecting: usize,
    /// A flow must be idle this long before it may be evicted for a new one (default 10 s).
    pub evict_min_idle: Duration,
    /// TCP receive buffer (board → OS) per flow, bytes (default 1 MiB). It is the advertised
    /// window (with window scaling) and is committed by the OS only as data passes through it.
    pub tcp_rx_buffer: usize,
    /// TCP transmit buffer (OS → board) per flow, bytes (default 1 MiB).
    pub tcp_tx_buffer: usize,
    /// All TCP socket buffers together, bytes (default 4 GiB): the receive and transmit
    /// buffers of every flow and of finished sockets still owing the board their last packet.
    /// New flows get full buffers while all of them stay within half of it, then
    /// [`MIN_TCP_BUFFER`] each way (`tcp_buffers_shrunk`, a smaller window); when even those do
    /// not fit the whole budget a new flow is refused with a RST (`drop_tcp_buffer_budget`). This bounds what a board
    /// can pin by opening connections and never reading.
    pub tcp_buffer_budget: usize,
    /// How the NAT gives an idle TCP ring's pages back to the OS (see `sockets.rs`, "Idle rings").
    /// The core makes no system call itself: the driver supplies this (qbkit-host on Linux:
    /// `madvise(MADV_DONTNEED)`). `None` (the default) keeps every committed page.
    pub page_release: Option<PageRelease>,
    /// A budget this NAT shares with others (the NATs of every board one host serves): its
    /// sockets' buffers count into it too, and a new flow must fit both (default `None`).
    pub shared_tcp_budget: Option<std::sync::Arc<SharedBudget>>,
    /// Abort a TCP flow whose board side stops acknowledging queued data or the handshake for
    /// this long (default 120 s). Quiet flows with nothing in flight never time out.
    pub tcp_timeout: Duration,
    /// Give up on an OS connect the driver never answered (default 75 s, Linux's SYN retry span).
    pub tcp_connect_timeout: Duration,
    /// Idle timeout of a UDP flow that has not seen a reply, or of any DNS flow (default 30 s).
    pub udp_timeout: Duration,
    /// Idle timeout of a non-DNS UDP flow that has seen replies (default 180 s, like conntrack's
    /// "stream" state): long-lived protocols (QUIC, VPNs, games) keep their port.
    pub udp_stream_timeout: Duration,
    /// Idle timeout of an ICMP echo flow (default 30 s).
    pub icmp_timeout: Duration,
    /// A DNS query (or a TCP connect to a resolver) unanswered this long moves to the next
    /// upstream resolver (default 1 s; see the `dns` module).
    pub dns_failover_timeout: Duration,
    /// Bytes of UDP payload and ICMP echo data queued in events the driver has not polled yet
    /// (default 4 MiB). Beyond it datagrams are dropped (`drop_event_queue_full`).
    pub max_queued_datagram_bytes: usize,
    /// Packets queued for the board that the driver has not polled yet (default 64). TCP stops
    /// producing at this mark (backpressure); UDP/ICMP packets beyond it are dropped.
    pub max_queued_board_packets: usize,
    /// Send echo requests to the OS (ping sockets). When off, or after the driver reports
    /// `OsEvent::IcmpUnavailable`, only pings to the gateway are answered.
    pub icmp_echo_via_os: bool,
    /// Verify TCP/UDP/ICMP checksums of packets from the board (default off: USB bulk transfers
    /// carry a CRC and stream transports are reliable, so this only costs CPU). The IPv4 header
    /// checksum is always verified.
    pub verify_rx_checksums: bool,
    /// Seed for TCP initial sequence numbers. The driver should pass a random value.
    pub random_seed: u64,
    /// At most this many drop log lines per second (default 10); the rest are counted and
    /// summarised.
    pub log_rate_per_sec: u32,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            board_ipv4: Ipv4Addr::new(10, 47, 0, 2),
            gateway_ipv4: Ipv4Addr::new(10, 47, 0, 1),
            prefix_len: 24,
            board_ipv6: Ipv6Addr::new(0xfd47, 0, 0, 0, 0, 0, 0, 2),
            gateway_ipv6: Ipv6Addr::new(0xfd47, 0, 0, 0, 0, 0, 0, 1),
            prefix_len_ipv6: 64,
            mtu: 65520,
            dns_servers: Vec::new(),
            allow_host_loopback: false,
            map_gateway_to_loopback: false,
            deny_lan: false,
            host_addrs: Vec::new(),
            max_flows: 4096,
            max_connecting: 512,
            evict_min_idle: Duration::from_secs(10),
            tcp_rx_buffer: 1 << 20,
            tcp_tx_buffer: 1 << 20,
            tcp_buffer_budget: DEFAULT_TCP_BUFFER_BUDGET,
            shared_tcp_budget: None,
            page_release: None,
            tcp_timeout: Duration::from_secs(120),
            tcp_connect_timeout: Duration::from_secs(75),
            udp_timeout: Duration::from_secs(30),
            udp_stream_timeout: Duration::from_secs(180),
            icmp_timeout: Duration::from_secs(30),
            dns_failover_timeout: Duration::from_secs(1),
            max_queued_datagram_bytes: 4 << 20,
            max_queued_board_packets: 64,
            icmp_echo_via_os: true,
            verify_rx_checksums: false,
            random_seed: 0x7162_6b69_745f_6e61,
            log_rate_per_sec: 10,
        }
    }
}

/// TCP buffer bytes several [`Nat`](crate::Nat)s share ([`NatConfig::shared_tcp_budget`]): each
/// adds its sockets' buffers as it creates them and takes them back as it frees them (also when
/// it is dropped), so together they stay within `limit` by the same rule as one NAT's own budget
/// (full buffers within half of it, the smallest ones up to all of it, refused beyond).
#[derive(Debug)]
pub struct SharedBudget {
    limit: usize,
    used: core::sync::atomic::AtomicUsize,
}

impl SharedBudget {
    /// A budget of `limit` bytes, nothing used.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: core::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes the sharing NATs' sockets hold now.
    pub fn used(&self) -> usize {
        self.used.load(core::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn add(&self, bytes: usize) {
        self.used
            .fetch_add(bytes, core::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, bytes: usize) {
        self.used
            .fetch_sub(bytes, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Two configurations share a budget only when it is the same one.
impl PartialEq for SharedBudget {
    fn eq(&self, other: &Self) -> bool {
        core::ptr::eq(self, other)
    }
}

impl Eq for SharedBudget {}

/// The driver's way to give whole pages back to the OS ([`NatConfig::page_release`]).
#[derive(Debug, Clone, Copy)]
pub struct PageRelease {
    /// The OS page size: only whole pages inside a ring are given back.
    pub page_size: usize,
    /// Gives the `len` bytes at address `addr` (page-aligned, whole pages) back to the OS so
    /// that they read as zeros afterwards and commit no memory until written; returns the bytes
    /// released (0 if it failed: nothing changed).
    ///
    /// # Safety
    /// The range is memory the caller owns and reads nothing of before writing it again.
    pub release: unsafe fn(addr: usize, len: usize) -> usize,
}

impl PartialEq for PageRelease {
    fn eq(&self, other: &Self) -> bool {
        self.page_size == other.page_size && core::ptr::fn_addr_eq(self.release, other.release)
    }
}

impl Eq for PageRelease {}

/// Default of [`NatConfig::tcp_buffer_budget`] (4 GiB, or all of a 32-bit address space): 1024
/// flows with full 1 MiB buffers both ways in the first half, then [`MIN_TCP_BUFFER`] ones up to
/// the default `max_flows` (4096). Buffers come zeroed from the OS (with the driver's mmap
/// threshold at or below [`MIN_TCP_BUFFER`], see the crate docs) and cost memory only as data passes, so
/// the default keeps an ordinary board's connections (hundreds, idle) on full buffers and bounds
/// a board that pins them by never reading.
pub const DEFAULT_TCP_BUFFER_BUDGET: usize = (1usize << 30).saturating_mul(4);
/// Under budget pressure a flow's buffers shrink to no less than this each way (or the configured
/// size, if smaller): a window that still carries a bulk transfer at several Gbit/s over the
/// link's round trip, so a download that starts after thousands of idle flows still moves at
/// speed (64 KiB, one large segment, halved it). The default budget still opens `max_flows`
/// flows with it: 1024 full pairs (2 GiB) and 3072 of these (1.5 GiB) fit 4 GiB.
pub const MIN_TCP_BUFFER: usize = 256 << 10;

/// Smallest MTU the core accepts: IPv6's minimum link MTU (RFC 8200), so every link carries
/// both versions (IPv4's minimum of 576 would starve TCP anyway).
pub const MIN_MTU: usize = 1280;
/// Largest MTU: an IPv4 total length is 16 bits.
pub const MAX_MTU: usize = 65535;

impl NatConfig {
    /// Check the values that would make the core misbehave.
    pub(crate) fn validate(&self) -> Result<(), crate::NatError> {
        use crate::NatError;
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(NatError::BadMtu(self.mtu));
        }
        if self.prefix_len > 30 {
            return Err(NatError::BadPrefix(self.prefix_len));
        }
        if self.board_ipv4 == self.gateway_ipv4 {
            return Err(NatError::SameAddress(self.board_ipv4.into()));
        }
        if self.board_ipv6 == self.gateway_ipv6 {
            return Err(NatError::SameAddress(self.board_ipv6.into()));
        }
        if self.prefix_len_ipv6 > 126 {
            return Err(NatError::BadPrefix(self.prefix_len_ipv6));
        }
        for (name, size) in [
            ("tcp_rx_buffer", self.tcp_rx_buffer),
            ("tcp_tx_buffer", self.tcp_tx_buffer),
        ] {
            if !(4096..=1 << 30).contains(&size) {
                return Err(NatError::BadBuffer { name, size });
            }
        }
        let smallest_flow =
            self.tcp_rx_buffer.min(MIN_TCP_BUFFER) + self.tcp_tx_buffer.min(MIN_TCP_BUFFER);
        if self.tcp_buffer_budget < smallest_flow {
            return Err(NatError::SmallBufferBudget(self.tcp_buffer_budget));
        }
        if self.max_flows == 0 || self.max_queued_board_packets == 0 {
            return Err(NatError::ZeroLimit);
        }
        Ok(())
    }
}
