//! Counters for every packet, flow and drop reason, and a rate limiter for drop logs.
//!
//! Every place in the core that drops something increments exactly one `drop_*` counter and
//! calls [`LogLimiter::allow`] before logging (the `drop_pkt!`/`drop_warn!` macros here do both),
//! so a flood of bad packets costs a counter increment and at most `log_rate_per_sec` log lines
//! per second.

use smoltcp::time::{Duration, Instant};

/// Increment a drop counter and log at `$level`, at the rate limit.
macro_rules! drop_at {
    ($level:expr, $nat:expr, $counter:ident, $($arg:tt)+) => {{
        $nat.counters.$counter += 1;
        if $nat.log.allow($nat.now, &mut $nat.counters) {
            tracing::event!($level, reason = stringify!($counter), $($arg)+);
        }
    }};
}
pub(crate) use drop_at;

/// Increment a drop counter and log at debug level, at the rate limit.
macro_rules! drop_pkt {
    ($($arg:tt)+) => { $crate::counters::drop_at!(tracing::Level::DEBUG, $($arg)+) };
}
pub(crate) use drop_pkt;

/// Like `drop_pkt!`, for drops that mean the core is under pressure (SYN flood, full table):
/// logged at warn level, still rate-limited.
macro_rules! drop_warn {
    ($($arg:tt)+) => { $crate::counters::drop_at!(tracing::Level::WARN, $($arg)+) };
}
pub(crate) use drop_warn;

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident, )*) => {
        /// Monotonic counters since the core was created. Read with [`Nat::counters`](crate::Nat::counters).
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Counters {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        impl Counters {
            /// One packet went to the board.
            pub(crate) fn count_tx(&mut self, packet: &[u8]) {
                self.tx_packets += 1;
                self.tx_bytes += packet.len() as u64;
                if packet.first().is_some_and(|b| b >> 4 == 6) {
                    self.tx_ipv6_packets += 1;
                }
            }

            /// Every counter as `(name, value)`, in declaration order (for status output).
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
                [$( (stringify!($name), self.$name), )*].into_iter()
            }
        }
    };
}

counters! {
    /// IP packets handed in by `handle_ip_packet`.
    rx_packets,
    /// Bytes of those packets.
    rx_bytes,
    /// IP packets handed out by `poll_ip_packet` or written into a sink by `poll_ip_packets`.
    tx_packets,
    /// Bytes of those packets.
    tx_bytes,
    /// Of `rx_packets`, the IPv6 ones.
    rx_ipv6_packets,
    /// Of `tx_packets`, the IPv6 ones.
    tx_ipv6_packets,
    /// TCP flows opened (SYN accepted, connect requested).
    tcp_flows,
    /// UDP flows opened.
    udp_flows,
    /// ICMP echo flows opened.
    icmp_flows,
    /// OS connects that succeeded.
    tcp_connected,
    /// OS connects refused (RST sent to the board).
    tcp_refused,
    /// OS connects that failed otherwise (ICMP error sent to the board).
    tcp_connect_failed,
    /// Retransmitted SYNs for a flow that is still connecting (ignored, no second connect).
    tcp_dup_syn,
    /// TCP resets sent to the board because the OS side reset, timed out or was evicted.
    tcp_reset_to_board,
    /// TCP resets received from the board.
    tcp_reset_from_board,
    /// Flows evicted to make room for new ones.
    flows_evicted,
    /// TCP flows given smaller buffers because `tcp_buffer_budget` was nearly used up.
    tcp_buffers_shrunk,
    /// Empty TCP ring buffers of idle flows whose pages were given back to the OS.
    tcp_rings_released,
    /// Finished TCP sockets freed before their RST (or the ACK of the board's FIN) could be
    /// queued, because the board was not reading; the board's next segment for such a flow is
    /// answered with a RST.
    tcp_freed_unsent,
    /// Flows that ended by idle timeout (UDP, ICMP) or connect timeout (TCP).
    flows_expired,
    /// ICMP errors (unreachable, time exceeded) generated towards the board.
    icmp_errors_sent,
    /// Echo requests to the gateway answered by the core itself.
    gateway_pings_answered,
    /// DNS queries forwarded (UDP datagrams and TCP connections to gateway:53).
    dns_forwarded,
    /// DNS flows moved to the next resolver (no answer within `dns_failover_timeout`, an ICMP
    /// error, or a failed TCP connect).
    dns_failovers,
    /// DNS query rounds in which no resolver answered (the queries were given up).
    dns_unanswered,
    /// Times the resolver list was replaced with a different one.
    dns_servers_changed,
    /// Dropped: not a valid IP packet (truncated, bad header, bad length, bad IPv4 header
    /// checksum).
    drop_malformed,
    /// Dropped: bad TCP/UDP/ICMP checksum (only with `verify_rx_checksums`).
    drop_bad_checksum,
    /// Dropped: IPv4 fragment or IPv6 fragment header (policy: not reassembled; the link MTU
    /// makes them rare).
    drop_fragment,
    /// Dropped: an IPv6 extension header the core does not pass: a routing header with segments
    /// left, an option whose type asks for a discard, AH, ESP, "no next header", a hop-by-hop
    /// header after the first, more than 8 headers or 1024 bytes of them. (Skippable ones are
    /// walked to the upper layer; bad lengths count as `drop_malformed`.)
    drop_ipv6_extension_header,
    /// Dropped: IPv6 multicast from the board (its kernel's router solicitations and MLD
    /// reports: nothing on this point-to-point link answers them).
    drop_ipv6_multicast,
    /// Dropped: IPv6 packet from the board larger than the MTU (ICMPv6 packet too big sent back).
    drop_too_big_from_board,
    /// Dropped: TTL 0 or 1 (an ICMP time exceeded is sent back, rate-limited).
    drop_ttl_expired,
    /// Dropped: protocol other than TCP, UDP, ICMP (ICMPv6).
    drop_unknown_protocol,
    /// Dropped: source is not the board's address.
    drop_bad_source,
    /// Dropped: destination is multicast, broadcast, unspecified or reserved (IPv6: also
    /// IPv4-mapped and -compatible addresses).
    drop_martian,
    /// Denied: destination is host loopback or link-local and `allow_host_loopback` is off.
    drop_policy_loopback,
    /// Denied: destination is a private network or one of the laptop's own addresses and
    /// `deny_lan` is on.
    drop_policy_lan,
    /// Denied: destination is another address on the board network, or a gateway port with no service.
    drop_policy_gateway,
    /// Dropped: DNS to the gateway with no upstream resolver configured.
    drop_no_dns_server,
    /// Dropped: flow table full and nothing idle enough to evict.
    drop_flow_limit,
    /// Dropped: a TCP flow refused (RST to the board) because `tcp_buffer_budget` is used up.
    drop_tcp_buffer_budget,
    /// Dropped: too many TCP connects pending (SYN flood protection).
    drop_syn_flood,
    /// TCP segment for no known flow (answered with RST by the TCP stack).
    drop_tcp_no_flow,
    /// Dropped: ICMP or ICMPv6 message other than echo request from the board.
    drop_icmp_type,
    /// Dropped: echo request while ping sockets are unavailable (only the gateway answers).
    drop_ping_unavailable,
    /// Connections the laptop opened towards the board (forwards, `connect`).
    tcp_inbound,
    /// Of those, the ones the board accepted (its SYN-ACK arrived).
    tcp_inbound_established,
    /// Of those, the ones the board refused (RST) or never answered.
    tcp_inbound_refused,
    /// UDP flows the laptop opened towards the board (one per forward peer).
    udp_inbound,
    /// Refused: a laptop-side connection or datagram for the board while the flow table was
    /// full of busy flows, or no gateway port was free.
    drop_inbound_no_room,
    /// Dropped: UDP payload or echo data while the event queue was over its byte limit.
    drop_event_queue_full,
    /// Dropped: packet for the board while the board queue was full.
    drop_board_queue_full,
    /// Dropped: a datagram or echo reply from the OS larger than the link MTU allows.
    drop_too_big,
    /// Dropped: `poll_ip_packet` output buffer smaller than the packet.
    drop_out_buffer_small,
    /// Driver events naming a flow that no longer exists or is of another kind.
    drop_stale_os_event,
    /// Log lines suppressed by the rate limiter.
    logs_suppressed,
}

/// Allows at most `per_sec` log lines per second; the rest are only counted.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    per_sec: u32,
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) fn new(per_sec: u32, now: Instant) -> Self {
        Self {
            per_sec,
            window_start: now,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether one more line may be logged now. Reports suppressed lines when a window opens.
    pub(crate) fn allow(&mut self, now: Instant, counters: &mut Counters) -> bool {
        if now >= self.window_start + Duration::from_secs(1) || now < self.window_start {
            if self.suppressed > 0 {
                tracing::warn!(
                    suppressed = self.suppressed,
                    "nat: drop log lines suppressed in the last window"
                );
            }
            self.window_start = now;
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < self.per_sec {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            counters.logs_suppressed += 1;
            false
        }
    }
}
