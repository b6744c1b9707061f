//! `Nat`: the public face of the core. Board packets come in through `handle_ip_packet`, are
//! checked (malformed, fragments, TTL, source, martians) and dispatched to `tcp.rs`, `udp.rs` or
//! `icmp.rs`; driver events come in through `handle_os_event`; packets for the board leave
//! through `poll_ip_packets` into the driver's sink (queued ones copied, then smoltcp's egress
//! writing TCP segments straight into it) or one by one through `poll_ip_packet`; both run
//! egress lazily, only once the queue is empty. Requests for the driver leave through
//! `poll_event`. Timers: `poll_timeout`/`handle_timeout` (TCP output waiting for a drain asks for
//! no timer).

use std::collections::VecDeque;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::iface::{Config as IfaceConfig, Interface};
use smoltcp::phy::{ChecksumCapabilities, DeviceCapabilities};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpProtocol, IpRepr, Ipv4Repr, Ipv6Repr};

use crate::counters::{LogLimiter, drop_pkt};
use crate::device::{self, BoardQueue, BoardSink, Direct, SmolDevice};
use crate::flow::{FlowInfo, FlowKind, FlowTable, Protocol, TcpPhase};
use crate::icmp::IcmpError;
use crate::ip::{IpPacket, Refused};
use crate::sockets::{SockId, TcpSockets};
use crate::{Counters, FlowId, NatConfig, NatError, NatEvent, OsEvent};

/// How often the aging scan runs while UDP, ICMP or connecting TCP flows exist.
const AGING_INTERVAL: Duration = Duration::from_secs(1);

/// The userspace NAT core. See the crate docs for the theory of operation and the driver loop.
pub struct Nat {
    pub(crate) cfg: NatConfig,
    pub(crate) now: Instant,
    pub(crate) iface: Interface,
    pub(crate) sockets: TcpSockets,
    pub(crate) caps: DeviceCapabilities,
    pub(crate) csum: ChecksumCapabilities,
    pub(crate) queue: BoardQueue,
    pub(crate) flows: FlowTable,
    pub(crate) events: VecDeque<NatEvent>,
    /// Payload bytes held by `UdpSend`/`IcmpEchoRequest` events not yet polled.
    pub(crate) queued_datagram_bytes: usize,
    /// TCP flows whose socket may have changed state since the last `process_dirty`.
    pub(crate) dirty: Vec<FlowId>,
    /// Sockets of flows that are gone but still have a RST to send.
    pub(crate) zombies: Vec<SockId>,
    /// Flows whose socket egress or a timer touched (reused buffer, empty between calls).
    pub(crate) touched: Vec<FlowId>,
    pub(crate) next_aging: Instant,
    pub(crate) ping_available: bool,
    /// Index in `cfg.dns_servers` of the resolver that answered last: new DNS flows start there.
    pub(crate) dns_preferred: usize,
    /// Earliest DNS failover deadline (may be early: the scan then finds nothing to do).
    pub(crate) dns_timer: Option<Instant>,
    /// The next gateway port to try for an inbound flow (see `inbound.rs`).
    pub(crate) next_inbound_port: u16,
    pub(crate) counters: Counters,
    pub(crate) log: LogLimiter,
}

impl core::fmt::Debug for Nat {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Nat")
            .field("flows", &self.flows.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Nat {
    /// Create a core. `now` starts its clock; every later call passes a `now` that does not go
    /// backwards.
    pub fn new(config: NatConfig, now: Instant) -> Result<Self, NatError> {
        config.validate()?;
        let caps = device::capabilities(config.mtu, config.verify_rx_checksums);
        let mut queue = BoardQueue::new(config.max_queued_board_packets);
        let mut iface_cfg = IfaceConfig::new(HardwareAddress::Ip);
        iface_cfg.random_seed = config.random_seed;
        let mut dev = SmolDevice::new(None, &mut queue, &caps, None);
        let mut iface = Interface::new(iface_cfg, &mut dev, now);
        // Any-IP mode: one address per IP version covering everything, default routes through
        // ourselves, and `any_ip` so smoltcp accepts segments for every destination the board
        // dials.
        // (The IPv6 one is in the discard-only 100::/64: sockets always name their own local
        // address, so it is never a source.)
        let any_v6 = Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 1);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::v4(0, 0, 0, 1), 0));
            let _ = addrs.push(IpCidr::new(any_v6.into(), 0));
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(0, 0, 0, 1))
            .map_err(|_| NatError::Route)?;
        iface
            .routes_mut()
            .add_default_ipv6_route(any_v6)
            .map_err(|_| NatError::Route)?;
        iface.set_any_ip(true);
        Ok(Self {
            csum: device::checksum_caps(config.verify_rx_checksums),
            ping_available: config.icmp_echo_via_os,
            log: LogLimiter::new(config.log_rate_per_sec, now),
            sockets: TcpSockets::new(config.shared_tcp_budget.clone(), config.page_release),
            cfg: config,
            now,
            iface,
            caps,
            queue,
            flows: FlowTable::default(),
            events: VecDeque::new(),
            queued_datagram_bytes: 0,
            dirty: Vec::new(),
            zombies: Vec::new(),
            touched: Vec::new(),
            next_aging: now + AGING_INTERVAL,
            next_inbound_port: 0,
            dns_preferred: 0,
            dns_timer: None,
            counters: Counters::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &NatConfig {
        &self.cfg
    }

    /// Replace the upstream DNS resolvers (e.g. after resolv.conf changed). New DNS flows start
    /// at the first; UDP DNS flows whose resolver is no longer listed move to it (their
    /// unanswered queries are sent again there). Drain `poll_event` afterwards.
    pub fn set_dns_servers(&mut self, now: Instant, servers: Vec<SocketAddr>) {
        self.now = now;
        if servers == self.cfg.dns_servers {
            return;
        }
        self.counters.dns_servers_changed += 1;
        self.cfg.dns_servers = servers;
        self.dns_preferred = 0;
        self.dns_servers_replaced();
    }

    /// The upstream resolvers in use, and the index of the preferred one (new queries go there
    /// first; `None` without resolvers).
    pub fn dns_servers(&self) -> (&[SocketAddr], Option<usize>) {
        let s = &self.cfg.dns_servers;
        (
            s,
            (!s.is_empty()).then_some(self.dns_preferred % s.len().max(1)),
        )
    }

    /// Feed one IP packet (IPv4 or IPv6) from the board. Never fails: anything unusable is
    /// counted in [`Counters`] (and answered with an ICMP error or RST where a host would
    /// answer). Afterwards drain `poll_ip_packet` and `poll_event`.
    pub fn handle_ip_packet(&mut self, now: Instant, packet: &[u8]) {
        self.now = now;
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += packet.len() as u64;
        self.ip_ingress(packet);
        self.process_dirty();
    }

    fn ip_ingress(&mut self, packet: &[u8]) {
        let ip = match IpPacket::parse(packet) {
            Ok(ip) => ip,
            Err(Refused::Malformed) => {
                return drop_pkt!(
                    self,
                    drop_malformed,
                    len = packet.len(),
                    "nat: not a valid IP packet"
                );
            }
            Err(Refused::Fragment) => {
                return drop_pkt!(
                    self,
                    drop_fragment,
                    len = packet.len(),
                    "nat: IP fragment dropped"
                );
            }
            Err(Refused::ExtensionHeader(h)) => {
                return drop_pkt!(self, drop_ipv6_extension_header, header = %h, "nat: IPv6 extension header dropped");
            }
        };
        if ip.is_v6() {
            self.counters.rx_ipv6_packets += 1;
            // Neighbour/router discovery and MLD chatter of the board's kernel goes to
            // multicast from link-local sources: dropped (counted) before the source check.
            if ip.dst.is_multicast() {
                return drop_pkt!(self, drop_ipv6_multicast, dst = %ip.dst, "nat: IPv6 multicast dropped");
            }
        }
        let board: IpAddr = match ip.src {
            IpAddr::V4(_) => self.cfg.board_ipv4.into(),
            IpAddr::V6(_) => self.cfg.board_ipv6.into(),
        };
        if ip.src != board {
            return drop_pkt!(self, drop_bad_source, src = %ip.src, "nat: source is not the board");
        }
        let dst = ip.dst;
        if crate::policy::is_martian(&self.cfg, dst) {
            return drop_pkt!(self, drop_martian, dst = %dst, "nat: martian destination");
        }
        if ip.is_v6() && ip.bytes.len() > self.cfg.mtu {
            // Larger than the link: the board learns the MTU (its path MTU discovery), the
            // packet is not fragmented or forwarded.
            drop_pkt!(
                self,
                drop_too_big_from_board,
                len = ip.bytes.len(),
                "nat: IPv6 packet larger than the MTU"
            );
            let mtu = u32::try_from(self.cfg.mtu).unwrap_or(u32::MAX);
            self.send_icmp_error(&ip, IcmpError::PacketTooBig(mtu));
            return;
        }
        if ip.hop_limit <= 1 && dst != self.gateway_for(dst) {
            drop_pkt!(self, drop_ttl_expired, dst = %dst, "nat: TTL expired");
            self.send_icmp_error(&ip, IcmpError::TimeExceeded);
            return;
        }
        match ip.protocol {
            IpProtocol::Tcp => self.tcp_ingress(&ip),
            IpProtocol::Udp => self.udp_ingress(&ip),
            IpProtocol::Icmp if !ip.is_v6() => self.icmp_ingress(&ip),
            IpProtocol::Icmpv6 if ip.is_v6() => self.icmp_ingress(&ip),
            p => {
                drop_pkt!(self, drop_unknown_protocol, protocol = %p, "nat: unknown protocol dropped");
            }
        }
    }

    /// Next packet for the board, copied into `out` (which should hold `NatConfig::mtu` bytes;
    /// a packet that does not fit is dropped and counted). Returns its length, or `None` when
    /// nothing is queued. Call until `None` after every `handle_*`/`tcp_*` call and whenever the
    /// link to the board can take packets again: TCP output is produced lazily here, so a driver
    /// that stops calling this applies backpressure to every flow.
    #[must_use]
    pub fn poll_ip_packet(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        self.now = now;
        loop {
            self.egress_if_drained();
            match self.queue.pop_into(out)? {
                Ok(n) => {
                    self.counters.count_tx(&out[..n]);
                    return Some(n);
                }
                Err(len) => drop_pkt!(
                    self,
                    drop_out_buffer_small,
                    len,
                    have = out.len(),
                    "nat: output buffer too small"
                ),
            }
        }
    }

    /// Packets for the board, written into `sink` (the free space of the bundle the driver is
    /// filling) until it is full or nothing is left: queued packets first (copied), then TCP
    /// output, which smoltcp writes straight into the sink. A socket whose next segment may not
    /// fit the sink's rest keeps its data for the next call (backpressure, as with
    /// `poll_ip_packet`). Returns the length of a queued packet the sink had no room for (it
    /// stays queued, first; a driver whose sinks can never hold it takes it with
    /// `poll_ip_packet` and drops it), or `None`. Call again for the next bundle while
    /// [`has_ip_packets`](Self::has_ip_packets), and drain `poll_event` afterwards.
    #[must_use]
    pub fn poll_ip_packets(&mut self, now: Instant, sink: &mut dyn BoardSink) -> Option<usize> {
        self.now = now;
        let mut empty = true;
        while let Some(len) = self.queue.front_len() {
            let Some(buf) = sink.buffer(len) else {
                return Some(len);
            };
            if let Some(Ok(n)) = self.queue.pop_into(buf) {
                self.counters.count_tx(&buf[..n]);
                sink.commit(n);
                empty = false;
            }
        }
        if self.wants_egress() {
            self.run_egress(Some((sink, empty)));
            // Egress moves socket states (FIN sent, TIME-WAIT, a timeout): their events are
            // ready for `poll_event` now, not at the next input.
            self.process_dirty();
        }
        self.queue.front_len()
    }

    /// Whether [`poll_ip_packets`](Self::poll_ip_packets) may have more: packets are queued or
    /// sockets wait for their egress turn.
    #[must_use]
    pub fn has_ip_packets(&self) -> bool {
        !self.queue.is_empty() || self.wants_egress()
    }

    /// Whether an egress run has work: sockets wait for their turn, or the last run stopped
    /// because the queue or the sink was full.
    fn wants_egress(&self) -> bool {
        self.sockets.has_pending() || self.queue.blocked
    }

    /// Lets smoltcp produce output once the board queue has drained (TCP output is lazy).
    fn egress_if_drained(&mut self) {
        if self.queue.is_empty() && self.wants_egress() {
            self.run_egress(None);
        }
    }

    /// Next request for the driver, or `None`. Call until `None` after every `handle_*` and
    /// `tcp_*` call.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<NatEvent> {
        let ev = self.events.pop_front()?;
        match &ev {
            NatEvent::UdpSend { payload, .. } | NatEvent::IcmpEchoRequest { payload, .. } => {
                self.queued_datagram_bytes -= payload.len();
            }
            _ => {}
        }
        Some(ev)
    }

    /// Feed what an OS socket did. Events for flows that no longer exist are counted in
    /// `drop_stale_os_event` and ignored (the flow ended while the driver was busy).
    pub fn handle_os_event(&mut self, now: Instant, event: OsEvent<'_>) {
        self.now = now;
        match event {
            OsEvent::TcpConnected { flow } => self.tcp_connected(flow),
            OsEvent::TcpConnectFailed { flow, error } => self.tcp_connect_failed(flow, error),
            OsEvent::TcpEof { flow } => self.tcp_os_eof(flow),
            OsEvent::TcpReset { flow } => self.tcp_os_reset(flow),
            OsEvent::UdpReceived { flow, payload } => self.udp_received(flow, payload),
            OsEvent::UdpError { flow, error } => self.udp_error(flow, error),
            OsEvent::IcmpEchoReply { flow, seq, payload } => self.icmp_reply(flow, seq, payload),
            OsEvent::IcmpUnavailable { flow } => self.icmp_unavailable(flow),
        }
        self.process_dirty();
    }

    /// When to call `handle_timeout` next (`None`: only when input arrives). May be `now`.
    /// Recompute after every call into the core.
    ///
    /// Sockets that input or a data call gave something to send are not a timer: their output
    /// is made by `poll_ip_packet` (or `poll_ip_packets`), which the driver calls after its input
    /// anyway. Running it from a timer at the start of the driver's next pass would send it
    /// before the driver answered the events of that same input: the ACK of an inbound
    /// handshake would leave alone, ahead of the laptop's first bytes that `TcpWritable` lets
    /// the driver hand in.
    #[must_use]
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        self.now = now;
        let mut t = self.sockets.next_deadline().map(|t| t.max(now));
        // While the board queue is full only draining it helps: `poll_ip_packet` runs egress.
        if self.queue.is_full() && t.is_some_and(|t| t <= now) {
            t = None;
        }
        if self.flows.needs_aging() {
            t = Some(t.map_or(self.next_aging, |t| t.min(self.next_aging)));
        }
        if let Some(r) = self.sockets.next_release() {
            t = Some(t.map_or(r, |t| t.min(r)));
        }
        if let Some(d) = self.dns_timer {
            t = Some(t.map_or(d, |t| t.min(d)));
        }
        t
    }

    /// Run timers: TCP retransmissions and timeouts, UDP/ICMP idle expiry, connect timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.sockets.due(now, &mut self.touched);
        self.counters.tcp_rings_released += self.sockets.release_idle(now);
        if self.sockets.has_pending() {
            self.run_egress(None);
        }
        self.mark_touched_dirty();
        if now >= self.next_aging {
            self.next_aging = now + AGING_INTERVAL;
            self.age_flows();
        }
        if self.dns_timer.is_some_and(|d| now >= d) {
            self.dns_timeouts();
        }
        self.process_dirty();
    }

    /// Counters since creation.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Number of flows in the table.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// A snapshot of every flow, sorted by id (for status output).
    pub fn flows(&self, now: Instant) -> Vec<FlowInfo> {
        let mut v: Vec<FlowInfo> = self
            .flows
            .iter()
            .map(|f| {
                let (src, dst) = f.key.endpoints();
                let inbound = match &f.kind {
                    FlowKind::Tcp(t) => t.inbound,
                    FlowKind::Udp(u) => u.inbound,
                    FlowKind::Icmp => false,
                };
                let (protocol, state) = match &f.kind {
                    FlowKind::Tcp(t) => (
                        Protocol::Tcp,
                        match &t.phase {
                            TcpPhase::Connecting { .. } => "connecting".to_owned(),
                            TcpPhase::Open { handle } => {
                                self.sockets.get(*handle).state().to_string()
                            }
                            TcpPhase::Draining { .. } => "draining".to_owned(),
                        },
                    ),
                    FlowKind::Udp(u) => (
                        Protocol::Udp,
                        if u.replied { "replied" } else { "active" }.to_owned(),
                    ),
                    FlowKind::Icmp => (Protocol::Icmp, "active".to_owned()),
                };
                FlowInfo {
                    id: f.id,
                    protocol,
                    src,
                    dst,
                    os_dst: f.os_dst,
                    state,
                    bytes_from_board: f.bytes_from_board,
                    bytes_to_board: f.bytes_to_board,
                    age: now - f.created,
                    idle: now - f.last_active,
                    inbound,
                }
            })
            .collect();
        v.sort_by_key(|f| f.id);
        v
    }

    /// Run smoltcp's egress for the pending sockets until they have nothing more to send or the
    /// board queue is full (see `sockets.rs`); the flows of the sockets it ran are looked at by
    /// the next `process_dirty`. With a sink (and whether it is still empty), TCP segments are
    /// written straight into it while they fit (`poll_ip_packets`).
    pub(crate) fn run_egress(&mut self, sink: Option<(&mut dyn BoardSink, bool)>) {
        self.queue.blocked = false;
        let direct = sink.map(|(sink, empty)| Direct::new(sink, &mut self.counters, empty));
        let mut dev = SmolDevice::new(None, &mut self.queue, &self.caps, direct);
        self.sockets
            .egress(&mut self.iface, self.now, &mut dev, &mut self.touched);
        self.egress_done();
    }

    /// After an egress run: the flows of the sockets it ran are looked at by the next
    /// `process_dirty`, and sockets whose last packet left are freed.
    fn egress_done(&mut self) {
        self.mark_touched_dirty();
        self.reap_zombies();
    }

    fn mark_touched_dirty(&mut self) {
        let mut touched = core::mem::take(&mut self.touched);
        for id in touched.drain(..) {
            self.mark_dirty(id);
        }
        self.touched = touched;
    }

    /// Hand one TCP packet to socket `to` without copying it (`None`: no socket takes it and
    /// smoltcp answers with a RST).
    pub(crate) fn smoltcp_ingress(&mut self, to: Option<SockId>, packet: &[u8]) {
        let mut dev = SmolDevice::new(Some(packet), &mut self.queue, &self.caps, None);
        self.sockets
            .ingress(to, &mut self.iface, self.now, &mut dev);
    }

    /// Queue an IPv4 or IPv6 packet for the board (`src` and `dst` of one version). `fill`
    /// writes the `payload_len` bytes after the IP header. `force` lets replies exceed the soft
    /// queue limit. Returns whether it was queued.
    pub(crate) fn emit_to_board(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        protocol: IpProtocol,
        payload_len: usize,
        force: bool,
        fill: impl FnOnce(&mut [u8], &ChecksumCapabilities),
    ) -> bool {
        let repr = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => IpRepr::Ipv4(Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: protocol,
                payload_len,
                hop_limit: 64,
            }),
            (IpAddr::V6(s), IpAddr::V6(d)) => IpRepr::Ipv6(Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: protocol,
                payload_len,
                hop_limit: 64,
            }),
            _ => return false,
        };
        let total = repr.buffer_len();
        if total > self.cfg.mtu {
            drop_pkt!(
                self,
                drop_too_big,
                len = total,
                "nat: packet for the board exceeds the MTU"
            );
            return false;
        }
        let csum = self.csum.clone();
        let header_len = repr.header_len();
        let ok = self
            .queue
            .push_with(total, force, |buf| {
                repr.emit(&mut buf[..], &csum);
                fill(&mut buf[header_len..], &csum);
            })
            .is_ok();
        if !ok {
            drop_pkt!(
                self,
                drop_board_queue_full,
                len = total,
                "nat: board queue full"
            );
        }
        ok
    }

    /// Queue an event carrying `payload_len` datagram bytes, if the byte budget allows.
    pub(crate) fn push_datagram_event(&mut self, ev: NatEvent, payload_len: usize) -> bool {
        if self.queued_datagram_bytes + payload_len > self.cfg.max_queued_datagram_bytes {
            drop_pkt!(self, drop_event_queue_full, flow = %ev.flow(), "nat: event queue over its byte limit");
            return false;
        }
        self.queued_datagram_bytes += payload_len;
        self.events.push_back(ev);
        true
    }

    /// Make room for one more flow: evict the longest-idle one if the table is full.
    /// Returns false (and counts) when the table is full of busy flows.
    pub(crate) fn make_room(&mut self) -> bool {
        if self.flows.len() < self.cfg.max_flows {
            return true;
        }
        if let Some(id) = self
            .flows
            .eviction_candidate(self.now, self.cfg.evict_min_idle)
        {
            self.counters.flows_evicted += 1;
            tracing::debug!(flow = %id, "nat: evicting idle flow");
            self.end_flow(id, true);
            true
        } else {
            drop_pkt!(
                self,
                drop_flow_limit,
                flows = self.flows.len(),
                "nat: flow table full"
            );
            false
        }
    }

    /// End a flow from the core's side (eviction, expiry): tell the board (RST for TCP) and the
    /// driver (close event).
    pub(crate) fn end_flow(&mut self, id: FlowId, reset_board: bool) {
        let Some(flow) = self.flows.remove(id) else {
            return;
        };
        match flow.kind {
            FlowKind::Tcp(t) => {
                match t.phase {
                    TcpPhase::Open { handle } => {
                        if reset_board {
                            self.sockets.get_mut(handle).abort();
                            self.counters.tcp_reset_to_board += 1;
                            self.park_zombie(handle);
                        } else {
                            self.sockets.remove(handle);
                        }
                    }
                    TcpPhase::Connecting { syn } => {
                        self.send_tcp_rst_for_syn(&syn);
                    }
                    TcpPhase::Draining { .. } => {}
                }
                self.events.push_back(NatEvent::TcpClose {
                    flow: id,
                    reset: true,
                });
            }
            FlowKind::Udp(_) => self.events.push_back(NatEvent::UdpClose { flow: id }),
            FlowKind::Icmp => self.events.push_back(NatEvent::IcmpClose { flow: id }),
        }
    }

    fn age_flows(&mut self) {
        if !self.flows.needs_aging() {
            return;
        }
        let now = self.now;
        let mut expired = Vec::new();
        for f in self.flows.aging() {
            let idle = now - f.last_active;
            let limit = match &f.kind {
                FlowKind::Tcp(t) if matches!(t.phase, TcpPhase::Connecting { .. }) => {
                    self.cfg.tcp_connect_timeout
                }
                FlowKind::Tcp(_) => continue,
                FlowKind::Udp(u) if u.replied && u.dns.is_none() => self.cfg.udp_stream_timeout,
                FlowKind::Udp(_) => self.cfg.udp_timeout,
                FlowKind::Icmp => self.cfg.icmp_timeout,
            };
            if idle >= limit {
                expired.push(f.id);
            }
        }
        for id in expired {
            self.counters.flows_expired += 1;
            let connecting = matches!(
                self.flows.get(id).map(|f| &f.kind),
                Some(FlowKind::Tcp(t)) if matches!(t.phase, TcpPhase::Connecting { .. })
            );
            if connecting {
                // The driver never answered: fail the board's connect with host unreachable.
                self.tcp_connect_failed(id, crate::ConnectError::TimedOut);
                self.events.push_back(NatEvent::TcpClose {
                    flow: id,
                    reset: true,
                });
            } else {
                self.end_flow(id, false);
            }
        }
    }
}
