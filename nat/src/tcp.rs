//! TCP: board connections terminated in smoltcp (any-IP), relayed to OS sockets by the driver.
//!
//! A new SYN creates a flow in the *connecting* phase and a `TcpConnect` event; the SYN itself
//! (headers only) is kept and nothing is answered. On `TcpConnected` a listening smoltcp socket is
//! created for exactly that endpoint and the SYN is replayed into it, so the SYN-ACK leaves only
//! now; refusal answers the SYN with a RST (ECONNREFUSED on the board), other failures with an
//! ICMP unreachable. Retransmitted SYNs while connecting are counted and ignored.
//!
//! Data: board → OS bytes stay in the socket's receive buffer until the driver takes them with
//! `tcp_recv`/`tcp_recv_with` (the advertised window shrinks meanwhile: backpressure to the
//! board); OS → board bytes go into the transmit buffer with `tcp_send`/`tcp_send_with`, which
//! accept only what fits (backpressure to the OS socket). Readiness events are edge-triggered.
//!
//! Close: the board's FIN becomes `TcpShutdown` once its data is drained; the OS EOF becomes
//! our FIN after the queued data. When smoltcp is done (TIME-WAIT, or CLOSED after LAST-ACK)
//! the socket is freed at once and any unread board data moves to a small owned tail.
//! Resets propagate both ways (`TcpReset` → RST to the board; board RST → `TcpClose{reset}`).

use std::collections::VecDeque;

use core::net::SocketAddr;

use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration, Instant};
use tracing::Level;

use smoltcp::wire::{IpEndpoint, IpProtocol, IpRepr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

use crate::counters::{drop_at, drop_pkt, drop_warn};
use crate::dns::Failover;
use crate::flow::{Flow, FlowKey, FlowKind, FlowTable, SynCopy, TcpFlow, TcpPhase};
use crate::icmp::{IcmpError, Quoted, Unreachable};
use crate::ip::IpPacket;
use crate::policy::{self, Deny};
use crate::ring::Ring;
use crate::sockets::{NewSocket, SockId};
use crate::{ConnectError, FlowError, FlowId, MIN_TCP_BUFFER, Nat, NatEvent};

/// How long the board's data may wait for our ACK when we have nothing to send (smoltcp's
/// delayed ACK; it still ACKs at once once a full segment is unacknowledged, and any packet we
/// send carries the ACK). A request whose answer comes back within it costs the link one bundle
/// each way instead of two towards the board (the ACK alone, then the answer); a server slower
/// than that gets the ACK after it, far below any sender's retransmission timeout.
pub(crate) const TCP_ACK_DELAY: Duration = Duration::from_millis(1);

impl Nat {
    /// A RST from the board ends a flow that has no smoltcp socket (connecting or draining):
    /// counted, and the driver closes the OS socket with a RST.
    fn board_reset_closes(&mut self, id: FlowId) {
        self.counters.tcp_reset_from_board += 1;
        self.remove_tcp_flow_reset(id);
    }

    /// Forgets a TCP flow and has the driver close its OS socket with a RST.
    fn remove_tcp_flow_reset(&mut self, id: FlowId) {
        self.flows.remove(id);
        self.events.push_back(NatEvent::TcpClose {
            flow: id,
            reset: true,
        });
    }

    pub(crate) fn tcp_ingress(&mut self, ip: &IpPacket<'_>) {
        let Ok(seg) = TcpPacket::new_checked(ip.payload()) else {
            return drop_pkt!(self, drop_malformed, "nat: bad TCP header");
        };
        let (src_ip, dst_ip) = (ip.src, ip.dst);
        if self.cfg.verify_rx_checksums && !seg.verify_checksum(&src_ip.into(), &dst_ip.into()) {
            return drop_pkt!(self, drop_bad_checksum, "nat: bad TCP checksum");
        }
        if seg.src_port() == 0 || seg.dst_port() == 0 {
            return drop_pkt!(self, drop_malformed, "nat: TCP port 0");
        }
        let src = SocketAddr::new(src_ip, seg.src_port());
        let dst = SocketAddr::new(dst_ip, seg.dst_port());
        let key = FlowKey::Tcp { src, dst };
        let Some(id) = self.flows.id_of(&key) else {
            if seg.syn() && !seg.ack() && !seg.rst() && !seg.fin() {
                self.tcp_new_flow(ip, &seg, src, dst);
            } else if seg.rst() {
                self.counters.drop_tcp_no_flow += 1;
            } else {
                // smoltcp answers a segment for no connection with a RST (or the finished
                // socket of this connection, still waiting to send its last packet, takes it).
                drop_pkt!(self, drop_tcp_no_flow, %src, %dst, "nat: TCP segment for no flow");
                let zombie = self.zombie_of(src, dst);
                self.smoltcp_ingress(zombie, &ip.without_extensions());
            }
            return;
        };
        let now = self.now;
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        flow.last_active = now;
        flow.bytes_from_board += seg.payload().len() as u64;
        let FlowKind::Tcp(t) = &mut flow.kind else {
            return;
        };
        match &mut t.phase {
            TcpPhase::Connecting { syn } => {
                if seg.rst() {
                    // The board gave up before the OS connect finished.
                    self.board_reset_closes(id);
                } else if seg.syn() && !seg.ack() {
                    self.counters.tcp_dup_syn += 1;
                    if let Ok(r) = TcpRepr::parse(&seg, &src_ip.into(), &dst_ip.into(), &self.csum)
                    {
                        *syn = SynCopy::from_repr(src, dst, ip.hop_limit, &r);
                    }
                }
                // Anything else cannot be valid yet: the board has no SYN-ACK.
            }
            TcpPhase::Open { handle } => {
                let handle = *handle;
                if t.inbound && !t.established && seg.syn() && !seg.ack() {
                    // A bare SYN to the port the core is dialling from: a simultaneous open,
                    // which no board does (smoltcp's handling of it breaks its window
                    // arithmetic). The board's SYN-ACK is still awaited.
                    return drop_pkt!(self, drop_malformed, %src, %dst, "nat: SYN to a gateway port that is dialling the board");
                }
                if seg.rst() {
                    self.counters.tcp_reset_from_board += 1;
                }
                if seg.fin() {
                    // The board's FIN is acknowledged at once (no [`TCP_ACK_DELAY`]): no data
                    // of ours may follow to carry the ACK, and a socket that ends with it (a
                    // zombie in TIME-WAIT) is freed once egress ran, not once a timer fired.
                    self.sockets.get_mut(handle).set_ack_delay(None);
                }
                let len = seg.payload().len();
                let syn_mss = seg
                    .syn()
                    .then(|| seg.options_summary().ok().and_then(|o| o.max_segment_size))
                    .flatten();
                self.sockets
                    .board_segment(handle, seg.seq_number(), (seg.syn(), syn_mss), len);
                self.mark_dirty(id);
                self.smoltcp_ingress(Some(handle), &ip.without_extensions());
            }
            TcpPhase::Draining { .. } => {
                if seg.rst() {
                    self.board_reset_closes(id);
                }
                // Retransmitted FIN/ACKs of a finished connection are ignored.
            }
        }
    }

    fn tcp_new_flow(
        &mut self,
        ip: &IpPacket<'_>,
        seg: &TcpPacket<&[u8]>,
        src: SocketAddr,
        dst: SocketAddr,
    ) {
        let Ok(repr) = TcpRepr::parse(seg, &src.ip().into(), &dst.ip().into(), &self.csum) else {
            return drop_pkt!(self, drop_malformed, "nat: bad TCP options");
        };
        let syn = SynCopy::from_repr(src, dst, ip.hop_limit, &repr);
        let target = match policy::resolve(&self.cfg, dst, self.dns_preferred) {
            Ok(t) => t,
            Err(deny) => {
                self.count_denial(deny, dst);
                match deny {
                    Deny::Martian => {}
                    // A gateway port with no service behaves like a closed port.
                    Deny::NoDns => self.send_tcp_rst_for_syn(&syn),
                    Deny::Gateway if dst.ip() == self.gateway_for(dst.ip()) => {
                        self.send_tcp_rst_for_syn(&syn);
                    }
                    _ => {
                        if let Some(reason) = deny.icmp_reason(false) {
                            self.send_icmp_error(ip, IcmpError::Unreachable(reason));
                        }
                    }
                }
                return;
            }
        };
        if self.flows.connecting >= self.cfg.max_connecting {
            return drop_warn!(self, drop_syn_flood, %src, %dst, "nat: too many pending connects, SYN dropped");
        }
        if !self.make_room() {
            return;
        }
        let mut flow = TcpFlow::new(TcpPhase::Connecting { syn }, false);
        if target.dns {
            flow.dns = Some(Box::new(Failover::connecting(target.os_dst, self.now)));
        }
        let id = self.flows.insert(
            FlowKey::Tcp { src, dst },
            target.os_dst,
            self.now,
            FlowKind::Tcp(flow),
        );
        self.counters.tcp_flows += 1;
        if target.dns {
            self.counters.dns_forwarded += 1;
            self.dns_connecting(id);
        }
        tracing::trace!(flow = %id, %src, dst = %target.os_dst, "nat: TCP connect");
        self.events.push_back(NatEvent::TcpConnect {
            flow: id,
            src,
            dst: target.os_dst,
        });
    }

    pub(crate) fn count_denial(&mut self, deny: Deny, dst: SocketAddr) {
        match deny {
            Deny::Martian => drop_pkt!(self, drop_martian, %dst, "nat: martian destination"),
            // Policy denials: the user may want them, so the line says how (info, rate-limited).
            Deny::Loopback => drop_at!(Level::INFO, self, drop_policy_loopback, %dst,
                allowed_by = deny.allowed_by(), "nat: host loopback or link-local destination denied"),
            Deny::Lan => drop_at!(Level::INFO, self, drop_policy_lan, %dst,
                allowed_by = deny.allowed_by(), "nat: LAN destination denied"),
            Deny::HostAddr => drop_at!(Level::INFO, self, drop_policy_lan, %dst,
                allowed_by = deny.allowed_by(), "nat: this laptop's own address denied"),
            Deny::Gateway => {
                drop_pkt!(self, drop_policy_gateway, %dst, "nat: no service at this address");
            }
            Deny::NoDns => {
                drop_pkt!(self, drop_no_dns_server, %dst, "nat: DNS query but no upstream resolver");
            }
        }
    }

    /// Answer a SYN with RST|ACK: the board's connect() fails with ECONNREFUSED.
    pub(crate) fn send_tcp_rst_for_syn(&mut self, syn: &SynCopy) {
        let repr = TcpRepr {
            src_port: syn.dst.port(),
            dst_port: syn.src.port(),
            control: TcpControl::Rst,
            seq_number: TcpSeqNumber(0),
            ack_number: Some(TcpSeqNumber(syn.seq.wrapping_add(1).cast_signed())),
            window_len: 0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let (s, d) = (syn.dst.ip(), syn.src.ip());
        self.counters.tcp_reset_to_board += 1;
        self.emit_to_board(
            s,
            d,
            IpProtocol::Tcp,
            repr.header_len(),
            true,
            |buf, csum| {
                repr.emit(
                    &mut TcpPacket::new_unchecked(buf),
                    &s.into(),
                    &d.into(),
                    csum,
                );
            },
        );
    }

    /// The board's SYN of a flow still waiting for its OS connect; `None` (counted as a stale OS
    /// event) when the flow is gone or already connected.
    fn connecting_syn(&mut self, id: FlowId) -> Option<SynCopy> {
        if let Some(FlowKind::Tcp(TcpFlow {
            phase: TcpPhase::Connecting { syn },
            ..
        })) = self.flows.get(id).map(|f| &f.kind)
        {
            Some(*syn)
        } else {
            self.counters.drop_stale_os_event += 1;
            None
        }
    }

    pub(crate) fn tcp_connected(&mut self, id: FlowId) {
        let Some(syn) = self.connecting_syn(id) else {
            return;
        };
        self.dns_answered(id, None);
        if !self.zombies.is_empty() {
            // A reset socket on the same 4-tuple must send its RST before the new SYN arrives.
            self.run_egress(None);
        }
        // SYN-RECEIVED: the board must finish the handshake within tcp_timeout.
        let Some(mut new) = self.new_tcp_socket(self.cfg.tcp_timeout) else {
            // Over the buffer budget: refuse the board (RST) and have the driver close the OS
            // socket it just connected.
            self.send_tcp_rst_for_syn(&syn);
            self.remove_tcp_flow_reset(id);
            return;
        };
        let local = IpEndpoint::new(syn.dst.ip().into(), syn.dst.port());
        let handle = match new.sock.listen(local) {
            Ok(()) => self.sockets.add(new),
            Err(_) => return self.tcp_connect_failed(id, ConnectError::Other),
        };
        // Replay the SYN (headers only) into the fresh listening socket.
        let repr = TcpRepr {
            src_port: syn.src.port(),
            dst_port: syn.dst.port(),
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(syn.seq.cast_signed()),
            ack_number: None,
            window_len: syn.window_len,
            window_scale: syn.window_scale,
            max_seg_size: syn.max_seg_size,
            sack_permitted: syn.sack_permitted,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let (src, dst) = (syn.src.ip().into(), syn.dst.ip().into());
        // Board and destination addresses of one flow are always of one version.
        let ip_repr = IpRepr::new(src, dst, IpProtocol::Tcp, repr.header_len(), syn.ttl);
        let mut buf = vec![0; ip_repr.buffer_len()];
        ip_repr.emit(&mut buf[..], &self.csum);
        repr.emit(
            &mut TcpPacket::new_unchecked(&mut buf[ip_repr.header_len()..]),
            &src,
            &dst,
            &self.csum,
        );
        self.sockets
            .board_segment(handle, repr.seq_number, (true, repr.max_seg_size), 0);
        self.smoltcp_ingress(Some(handle), &buf);
        if self.sockets.get(handle).state() != State::SynReceived {
            self.sockets.remove(handle);
            return self.tcp_connect_failed(id, ConnectError::Other);
        }
        self.flows.set_tcp_phase(id, TcpPhase::Open { handle });
        self.sockets.set_owner(handle, Some(id));
        self.counters.tcp_connected += 1;
        if let Some(f) = self.flows.get_mut(id) {
            f.last_active = self.now;
        }
        self.mark_dirty(id);
    }

    /// A smoltcp socket for a flow, either direction: the configured buffers, no Nagle, no
    /// delayed ACK, and `handshake_timeout` armed for the handshake (`set_timeout` keeps it armed
    /// only while the board owes us something).
    /// `None` (counted, logged) when `tcp_buffer_budget` cannot hold even the smallest buffers.
    pub(crate) fn new_tcp_socket(&mut self, handshake_timeout: Duration) -> Option<NewSocket> {
        let (rx, tx) = self.tcp_buffer_sizes()?;
        // Zeroed allocations come straight from the OS and cost memory only once written (an
        // idle flow holds a few pages, not two full windows); the pool gives the pages of an
        // idle flow's empty rings back (`ring.rs`).
        let (rx_buf, rx_ring) = Ring::alloc(rx);
        let (tx_buf, tx_ring) = Ring::alloc(tx);
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(rx_buf),
            tcp::SocketBuffer::new(tx_buf),
        );
        sock.set_nagle_enabled(false);
        sock.set_ack_delay(Some(TCP_ACK_DELAY));
        sock.set_timeout(Some(handshake_timeout));
        Some(NewSocket {
            sock,
            rings: [rx_ring, tx_ring],
        })
    }

    /// Bytes of receive and transmit buffer held by every TCP socket (flows and zombies).
    pub(crate) fn tcp_buffer_bytes(&self) -> usize {
        self.sockets.buffer_bytes()
    }

    /// The finished socket still waiting to send its last packet on this connection, if any.
    fn zombie_of(&self, src: SocketAddr, dst: SocketAddr) -> Option<SockId> {
        let (src, dst) = (IpEndpoint::from(src), IpEndpoint::from(dst));
        self.zombies.iter().copied().find(|&z| {
            let s = self.sockets.get(z);
            s.remote_endpoint() == Some(src) && s.local_endpoint() == Some(dst)
        })
    }

    /// Buffer sizes (receive, transmit) for one more socket within `tcp_buffer_budget`: the
    /// configured ones while all buffers stay within half the budget, else [`MIN_TCP_BUFFER`]
    /// each way (or the configured size, if smaller) while they fit the whole budget; `None`
    /// beyond. The half kept for small buffers lets many flows open (an idle flow commits only
    /// a few pages; what counts is what it could hold) after a few took full windows.
    fn tcp_buffer_sizes(&mut self) -> Option<(usize, usize)> {
        let (rx, tx) = (self.cfg.tcp_rx_buffer, self.cfg.tcp_tx_buffer);
        let (small_rx, small_tx) = (rx.min(MIN_TCP_BUFFER), tx.min(MIN_TCP_BUFFER));
        // This NAT's budget and the one it shares with other boards' NATs, if any: (used, limit).
        let budgets = |nat: &Self| {
            let shared = nat.sockets.shared().map(|b| (b.used(), b.limit()));
            [
                Some((nat.tcp_buffer_bytes(), nat.cfg.tcp_buffer_budget)),
                shared,
            ]
        };
        let fit = |nat: &Self, need: usize, part: fn(usize) -> usize| {
            budgets(nat)
                .into_iter()
                .flatten()
                .all(|(used, limit)| used + need <= part(limit))
        };
        // Finished sockets still waiting to send their RST make room for live flows first.
        while !fit(self, small_rx + small_tx, |l| l) && !self.zombies.is_empty() {
            self.free_oldest_zombie();
        }
        if fit(self, rx + tx, |l| l / 2) {
            return Some((rx, tx));
        }
        if !fit(self, small_rx + small_tx, |l| l) {
            let (used, budget) = (self.tcp_buffer_bytes(), self.cfg.tcp_buffer_budget);
            let shared_used = self.sockets.shared().map_or(0, crate::SharedBudget::used);
            drop_warn!(
                self,
                drop_tcp_buffer_budget,
                used,
                budget,
                shared_used,
                "nat: TCP buffer budget used up, new connection refused (a board not reading?)"
            );
            return None;
        }
        self.counters.tcp_buffers_shrunk += 1;
        Some((small_rx, small_tx))
    }

    /// Keep a finished socket until egress has sent its last packet (the RST of an aborted
    /// flow, or the ACK of the board's FIN). At most one per board queue slot wait: beyond that
    /// the oldest is freed unsent (the board stopped reading; smoltcp answers its next segment
    /// for the flow with a RST anyway), so a board that never reads cannot pin sockets.
    pub(crate) fn park_zombie(&mut self, handle: SockId) {
        if self.zombies.len() >= self.cfg.max_queued_board_packets {
            self.free_oldest_zombie();
        }
        self.sockets.set_owner(handle, None);
        // Whatever it still answers goes out with the next egress, not after a delayed ACK.
        self.sockets.get_mut(handle).set_ack_delay(None);
        self.zombies.push(handle);
    }

    /// Free the oldest zombie without waiting for its last packet; returns its buffer bytes.
    fn free_oldest_zombie(&mut self) -> usize {
        let handle = self.zombies.remove(0);
        self.counters.tcp_freed_unsent += 1;
        self.sockets.remove(handle)
    }

    pub(crate) fn tcp_connect_failed(&mut self, id: FlowId, error: ConnectError) {
        let Some(syn) = self.connecting_syn(id) else {
            return;
        };
        // A resolver that refuses or cannot be reached: connect to the next one instead.
        if self.dns_fail_over(id, "TCP connect failed", false) {
            return;
        }
        self.flows.remove(id);
        tracing::debug!(flow = %id, ?error, dst = %syn.dst, "nat: TCP connect failed");
        if error == ConnectError::Refused {
            self.counters.tcp_refused += 1;
            self.send_tcp_rst_for_syn(&syn);
            return;
        }
        self.counters.tcp_connect_failed += 1;
        // IPv6 on a laptop without IPv6 connectivity fails here at once (ENETUNREACH,
        // EADDRNOTAVAIL): the board's connect fails as fast, so Happy Eyeballs moves to IPv4.
        let reason = match error {
            ConnectError::NetUnreachable => Unreachable::Net,
            ConnectError::Other => Unreachable::Prohibited,
            _ => Unreachable::Host,
        };
        // Quote the SYN's IP header and first 8 TCP bytes (ports and sequence number) so the
        // board's stack matches the error to its connecting socket.
        let header = Quoted {
            src: syn.src.ip(),
            dst: syn.dst.ip(),
            protocol: IpProtocol::Tcp,
            payload_len: 20,
            hop_limit: syn.ttl,
        };
        let mut quote = [0u8; 8];
        quote[0..2].copy_from_slice(&syn.src.port().to_be_bytes());
        quote[2..4].copy_from_slice(&syn.dst.port().to_be_bytes());
        quote[4..8].copy_from_slice(&syn.seq.to_be_bytes());
        let from = self.gateway_for(syn.dst.ip());
        self.send_icmp_error_quoting(header, &quote, IcmpError::Unreachable(reason), from);
    }

    pub(crate) fn tcp_os_eof(&mut self, id: FlowId) {
        match self.tcp_phase(id) {
            Some(TcpPhase::Open { handle }) => {
                let handle = *handle;
                self.sockets.get_mut(handle).close();
                if let Some(FlowKind::Tcp(t)) = self.flows.get_mut(id).map(|f| &mut f.kind) {
                    t.os_eof = true;
                }
                self.mark_dirty(id);
            }
            Some(TcpPhase::Draining { .. }) => {}
            _ => self.counters.drop_stale_os_event += 1,
        }
    }

    pub(crate) fn tcp_os_reset(&mut self, id: FlowId) {
        match self.tcp_phase(id) {
            Some(TcpPhase::Open { handle }) => {
                let handle = *handle;
                self.sockets.get_mut(handle).abort();
                self.park_zombie(handle);
                self.counters.tcp_reset_to_board += 1;
                self.flows.remove(id);
            }
            Some(TcpPhase::Connecting { .. }) => self.tcp_connect_failed(id, ConnectError::Refused),
            Some(TcpPhase::Draining { .. }) => {
                self.flows.remove(id);
            }
            None => self.counters.drop_stale_os_event += 1,
        }
    }

    fn tcp_phase(&self, id: FlowId) -> Option<&TcpPhase> {
        match self.flows.get(id).map(|f| &f.kind) {
            Some(FlowKind::Tcp(t)) => Some(&t.phase),
            _ => None,
        }
    }

    /// The socket of an open TCP flow, for tests.
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) fn tcp_socket_of(&self, id: FlowId) -> Option<SockId> {
        match self.tcp_phase(id) {
            Some(TcpPhase::Open { handle }) => Some(*handle),
            _ => None,
        }
    }

    pub(crate) fn mark_dirty(&mut self, id: FlowId) {
        if let Some(FlowKind::Tcp(t)) = self.flows.get_mut(id).map(|f| &mut f.kind)
            && !t.dirty
        {
            t.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Free the sockets of finished flows once their last packet has left: the RST of a reset
    /// flow, or the ACK of the board's FIN for a flow in TIME-WAIT (called after egress; the
    /// TIME-WAIT state itself is not kept, a late retransmitted FIN gets a RST).
    pub(crate) fn reap_zombies(&mut self) {
        let sockets = &mut self.sockets;
        let egress_done = !self.queue.blocked;
        self.zombies.retain(|&h| {
            let s = sockets.get(h);
            let done = match s.state() {
                State::Closed => s.remote_endpoint().is_none(),
                State::TimeWait => egress_done,
                _ => false,
            };
            if done {
                sockets.remove(h);
                false
            } else {
                true
            }
        });
    }

    /// Turn socket state changes of dirty flows into driver events and free finished sockets.
    pub(crate) fn process_dirty(&mut self) {
        while let Some(id) = self.dirty.pop() {
            let Some(flow) = self.flows.get_mut(id) else {
                continue;
            };
            let FlowKind::Tcp(t) = &mut flow.kind else {
                continue;
            };
            t.dirty = false;
            let handle = match &mut t.phase {
                TcpPhase::Connecting { .. } => continue,
                TcpPhase::Draining { tail } => {
                    if !tail.is_empty() {
                        if t.readable_armed {
                            t.readable_armed = false;
                            self.events.push_back(NatEvent::TcpReadable { flow: id });
                        }
                        continue;
                    }
                    if !t.shutdown_sent {
                        self.events.push_back(NatEvent::TcpShutdown { flow: id });
                    }
                    self.events.push_back(NatEvent::TcpClose {
                        flow: id,
                        reset: false,
                    });
                    self.flows.remove(id);
                    continue;
                }
                TcpPhase::Open { handle } => *handle,
            };
            // Looking does not make the socket pending (egress hands its flow here after every
            // turn); only a change below does.
            let sock = self.sockets.get_mut_quiet(handle);
            let state = sock.state();
            if t.inbound && !t.established {
                inbound_progress(t, state, id, &mut self.counters, &mut self.events);
            }
            if matches!(
                state,
                State::CloseWait | State::LastAck | State::Closing | State::TimeWait
            ) {
                t.board_fin = true;
            }
            match state {
                // A board RST in SYN-RECEIVED puts a listening socket back to LISTEN.
                State::Listen => {
                    self.sockets.remove(handle);
                    self.remove_tcp_flow_reset(id);
                    continue;
                }
                State::Closed if !(t.board_fin && t.os_eof) => {
                    // Reset by the board, or aborted by smoltcp's timeout (RST still to send).
                    if sock.remote_endpoint().is_some() {
                        self.park_zombie(handle);
                    } else {
                        self.sockets.remove(handle);
                    }
                    self.remove_tcp_flow_reset(id);
                    continue;
                }
                State::TimeWait | State::Closed => {
                    // Both directions are finished. Keep unread board data, free the socket.
                    let mut tail = VecDeque::with_capacity(sock.recv_queue());
                    while let Ok(n) = sock.recv(|b| {
                        tail.extend(b.iter().copied());
                        (b.len(), b.len())
                    }) && n > 0
                    {}
                    if state == State::TimeWait {
                        // It still owes the board the ACK of its FIN: free it after egress.
                        self.park_zombie(handle);
                    } else {
                        self.sockets.remove(handle);
                    }
                    self.flows.set_tcp_phase(id, TcpPhase::Draining { tail });
                    self.mark_dirty(id);
                    continue;
                }
                _ => {}
            }
            if set_timeout(sock, self.cfg.tcp_timeout) {
                self.sockets.mark_pending(handle);
            }
            let sock = self.sockets.get(handle);
            let recv_queue = sock.recv_queue();
            if recv_queue > 0 && t.readable_armed {
                t.readable_armed = false;
                self.events.push_back(NatEvent::TcpReadable { flow: id });
            }
            if recv_queue == 0 && t.board_fin && !t.shutdown_sent {
                t.shutdown_sent = true;
                self.events.push_back(NatEvent::TcpShutdown { flow: id });
            }
            if t.writable_armed && sock.may_send() && send_space(sock) >= writable_mark(sock) {
                t.writable_armed = false;
                self.events.push_back(NatEvent::TcpWritable { flow: id });
            }
        }
    }

    /// Take up to `buf.len()` bytes the board sent on a TCP flow (to write to the OS socket).
    /// Returns 0 when nothing is buffered; a `TcpReadable` event follows when data arrives.
    /// Taking the last bytes of a flow whose both directions are closed ends it (`TcpShutdown`
    /// and `TcpClose` are queued); later calls return `Err(UnknownFlow)`.
    /// Call `poll_ip_packet` afterwards: the freed space opens the board's window.
    pub fn tcp_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> Result<usize, FlowError> {
        let len = buf.len();
        copy_until_stalled(len, |done| {
            let res = self.tcp_recv_with(flow, |data| {
                let n = data.len().min(len - done);
                buf[done..done + n].copy_from_slice(&data[..n]);
                n
            });
            // Taking the last bytes of a finished flow ends it: report what was read.
            match res {
                Err(_) if done > 0 => Ok(0),
                res => res,
            }
        })
    }

    /// Zero-copy variant of [`tcp_recv`](Self::tcp_recv): `write` sees the next contiguous run
    /// of buffered board bytes (possibly not all of them: the buffer is a ring) and returns how
    /// many it consumed, e.g. what a non-blocking OS `write` accepted. Returns that count.
    pub fn tcp_recv_with(
        &mut self,
        flow: FlowId,
        write: impl FnOnce(&[u8]) -> usize,
    ) -> Result<usize, FlowError> {
        let TcpEntry {
            tcp: t,
            last_active,
            ..
        } = tcp_entry(&mut self.flows, flow)?;
        let n = match &mut t.phase {
            TcpPhase::Connecting { .. } => 0,
            TcpPhase::Draining { tail } => {
                let n = write(tail.as_slices().0).min(tail.len());
                tail.drain(..n);
                if tail.is_empty() {
                    t.readable_armed = true;
                }
                n
            }
            TcpPhase::Open { handle } => {
                let handle = *handle;
                let sock = self.sockets.get_mut(handle);
                let n = sock
                    .recv(|data| {
                        let n = write(data).min(data.len());
                        (n, n)
                    })
                    .unwrap_or(0);
                if sock.recv_queue() == 0 {
                    t.readable_armed = true;
                }
                self.sockets.took(handle, n);
                n
            }
        };
        *last_active = self.now;
        self.mark_dirty(flow);
        self.process_dirty();
        Ok(n)
    }

    /// Queue bytes from the OS socket for the board. Returns how many were taken (maybe fewer
    /// than offered, maybe 0); when fewer, stop reading the OS socket until `TcpWritable`.
    /// Before the board completes the handshake this returns 0 (a `TcpWritable` follows).
    /// Call `poll_ip_packet` afterwards.
    pub fn tcp_send(&mut self, flow: FlowId, data: &[u8]) -> Result<usize, FlowError> {
        copy_until_stalled(data.len(), |done| {
            self.tcp_send_with(flow, |buf| {
                let n = buf.len().min(data.len() - done);
                buf[..n].copy_from_slice(&data[done..done + n]);
                n
            })
        })
    }

    /// Zero-copy variant of [`tcp_send`](Self::tcp_send): `read` gets the next contiguous free
    /// run of the board-bound buffer (e.g. to `read` the OS socket into) and returns how many
    /// bytes it filled. `read` is not called when there is no room.
    pub fn tcp_send_with(
        &mut self,
        flow: FlowId,
        read: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<usize, FlowError> {
        let TcpEntry {
            tcp: t,
            last_active,
            bytes_to_board,
        } = tcp_entry(&mut self.flows, flow)?;
        let n = match &mut t.phase {
            TcpPhase::Connecting { .. } => {
                t.writable_armed = true;
                0
            }
            TcpPhase::Draining { .. } => return Err(FlowError::SendClosed(flow)),
            TcpPhase::Open { handle } => {
                let sock = self.sockets.get_mut(*handle);
                if !sock.may_send() {
                    if matches!(sock.state(), State::SynSent | State::SynReceived) {
                        t.writable_armed = true;
                        return Ok(0);
                    }
                    return Err(FlowError::SendClosed(flow));
                }
                let n = if send_space(sock) == 0 {
                    0
                } else {
                    sock.send(|buf| {
                        let n = read(buf).min(buf.len());
                        (n, n)
                    })
                    .unwrap_or(0)
                };
                set_timeout(sock, self.cfg.tcp_timeout);
                if send_space(sock) < writable_mark(sock) {
                    t.writable_armed = true;
                }
                n
            }
        };
        *bytes_to_board += n as u64;
        *last_active = self.now;
        Ok(n)
    }

    /// Free bytes in a TCP flow's board-bound buffer (0 for unknown or closed flows).
    pub fn tcp_send_space(&self, flow: FlowId) -> usize {
        match self.tcp_phase(flow) {
            Some(TcpPhase::Open { handle }) => {
                let s = self.sockets.get(*handle);
                if s.may_send() { send_space(s) } else { 0 }
            }
            _ => 0,
        }
    }
}

/// A TCP flow's parts the data calls (`tcp_recv_with`, `tcp_send_with`) change.
struct TcpEntry<'a> {
    tcp: &'a mut TcpFlow,
    last_active: &'a mut Instant,
    bytes_to_board: &'a mut u64,
}

/// `flow` for a data call: `UnknownFlow` when there is none (any more), `NotTcp` when it is not
/// a TCP flow.
fn tcp_entry(flows: &mut FlowTable, flow: FlowId) -> Result<TcpEntry<'_>, FlowError> {
    match flows.get_mut(flow) {
        None => Err(FlowError::UnknownFlow(flow)),
        Some(Flow {
            kind: FlowKind::Tcp(tcp),
            last_active,
            bytes_to_board,
            ..
        }) => Ok(TcpEntry {
            tcp,
            last_active,
            bytes_to_board,
        }),
        Some(_) => Err(FlowError::NotTcp(flow)),
    }
}

/// An inbound flow the board has not accepted yet: `TcpEstablished` once it has (before any
/// data event), or count the refusal when the socket closed (RST, or no answer in time).
fn inbound_progress(
    t: &mut TcpFlow,
    state: State,
    id: FlowId,
    counters: &mut crate::Counters,
    events: &mut VecDeque<NatEvent>,
) {
    match state {
        State::SynSent | State::SynReceived => {}
        State::Closed => counters.tcp_inbound_refused += 1,
        _ => {
            t.established = true;
            counters.tcp_inbound_established += 1;
            events.push_back(NatEvent::TcpEstablished { flow: id });
        }
    }
}

/// Calls `step` with the count done so far until `len` bytes are done or a step moves none;
/// returns the count. The copy loop of [`Nat::tcp_recv`] and [`Nat::tcp_send`].
fn copy_until_stalled(
    len: usize,
    mut step: impl FnMut(usize) -> Result<usize, FlowError>,
) -> Result<usize, FlowError> {
    let mut done = 0;
    while done < len {
        let n = step(done)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// smoltcp's timeout also fires on a connection that is merely quiet, so it is armed only while
/// the board owes us something: the handshake, or acknowledgements for queued data. An idle
/// flow (an SSH session, a keep-alive pool) then lives as long as both ends keep it.
/// Returns whether it changed the timeout.
fn set_timeout(s: &mut tcp::Socket<'_>, timeout: Duration) -> bool {
    let owed = matches!(s.state(), State::SynSent | State::SynReceived) || s.send_queue() > 0;
    let change = owed != s.timeout().is_some();
    if change {
        s.set_timeout(owed.then_some(timeout));
    }
    change
}

fn send_space(s: &tcp::Socket<'_>) -> usize {
    s.send_capacity() - s.send_queue()
}

/// `TcpWritable` fires once a quarter of the buffer is free, so the driver reads the OS socket
/// in large chunks instead of ping-ponging on every ACK.
fn writable_mark(s: &tcp::Socket<'_>) -> usize {
    (s.send_capacity() / 4).max(1)
}
