//! ICMP and ICMPv6: echo requests from the board, echo replies from the OS, and the errors we
//! generate.
//!
//! Echo to the gateway (either address) is answered by the core itself. Echo to anything else
//! (after policy) becomes an `IcmpEchoRequest` event on a flow keyed by (board, destination,
//! identifier); the driver sends it through an unprivileged ping socket of the destination's
//! family, and `OsEvent::IcmpEchoReply` comes back with the board's identifier restored. Without
//! ping sockets (`icmp_echo_via_os` off or `OsEvent::IcmpUnavailable`) only the gateway answers;
//! replies are never faked for other hosts. Errors (unreachable, time exceeded, IPv6 packet too
//! big) come from the gateway address of the packet's version (port unreachable from the
//! destination) and quote the offending IP header plus 8 bytes (RFC 792) for IPv4, as much of
//! the packet as fits in 1280 bytes for IPv6 (RFC 4443). Other ICMPv6 messages (neighbour and
//! router discovery, MLD) have no use on this point-to-point link and are dropped.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv4TimeExceeded, Icmpv6DstUnreachable,
    Icmpv6Packet, Icmpv6Repr, Icmpv6TimeExceeded, IpProtocol, IpRepr,
};

use crate::counters::drop_pkt;
use crate::flow::{FlowKey, FlowKind};
use crate::ip::IpPacket;
use crate::policy;
use crate::{FlowId, Nat, NatEvent};

/// Why a destination is unreachable, in terms both ICMP versions can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreachable {
    /// No route (ENETUNREACH on the board).
    Net,
    /// The host does not answer (EHOSTUNREACH).
    Host,
    /// Nothing listens on the port (ECONNREFUSED).
    Port,
    /// Policy forbids it (EHOSTUNREACH on IPv4, EACCES on IPv6).
    Prohibited,
}

impl Unreachable {
    fn v4(self) -> Icmpv4DstUnreachable {
        match self {
            Self::Net => Icmpv4DstUnreachable::NetUnreachable,
            Self::Host => Icmpv4DstUnreachable::HostUnreachable,
            Self::Port => Icmpv4DstUnreachable::PortUnreachable,
            Self::Prohibited => Icmpv4DstUnreachable::CommProhibited,
        }
    }

    fn v6(self) -> Icmpv6DstUnreachable {
        match self {
            Self::Net => Icmpv6DstUnreachable::NoRoute,
            Self::Host => Icmpv6DstUnreachable::AddrUnreachable,
            Self::Port => Icmpv6DstUnreachable::PortUnreachable,
            Self::Prohibited => Icmpv6DstUnreachable::AdminProhibit,
        }
    }
}

/// An ICMP error the core sends to the board.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IcmpError {
    Unreachable(Unreachable),
    TimeExceeded,
    /// IPv6 only: the packet exceeds this MTU.
    PacketTooBig(u32),
}

/// The IP header of a board packet, as an ICMP error quotes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quoted {
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    pub(crate) protocol: IpProtocol,
    pub(crate) payload_len: usize,
    pub(crate) hop_limit: u8,
}

impl Quoted {
    /// The header of `ip` as it arrived (IPv6: its first next header, so the quoted bytes that
    /// follow start with any extension headers, as `send_icmp_error_from` quotes them).
    pub(crate) fn of(ip: &IpPacket<'_>) -> Self {
        let (protocol, after) = ip.after_ip_header();
        Self {
            src: ip.src,
            dst: ip.dst,
            protocol,
            payload_len: after.len(),
            hop_limit: ip.hop_limit,
        }
    }
}

impl Nat {
    pub(crate) fn icmp_ingress(&mut self, ip: &IpPacket<'_>) {
        let (src, dst) = (ip.src, ip.dst);
        let echo = match (src, dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => self.parse_echo_v4(ip.payload()),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.parse_echo_v6(s, d, ip.payload()),
            _ => None,
        };
        let Some((ident, seq_no, data)) = echo else {
            return;
        };
        if dst == IpAddr::V4(self.cfg.gateway_ipv4) || dst == IpAddr::V6(self.cfg.gateway_ipv6) {
            self.counters.gateway_pings_answered += 1;
            self.send_echo_reply(dst, src, ident, seq_no, data);
            return;
        }
        if let Err(deny) = policy::check_ip(&self.cfg, dst) {
            self.count_denial(deny, SocketAddr::new(dst, 0));
            if let Some(reason) = deny.icmp_reason(false) {
                self.send_icmp_error(ip, IcmpError::Unreachable(reason));
            }
            return;
        }
        if !self.ping_available {
            return drop_pkt!(self, drop_ping_unavailable, %dst, "nat: ping sockets unavailable, echo dropped");
        }
        let key = FlowKey::Icmp { src, dst, ident };
        let id = if let Some(id) = self.flows.id_of(&key) {
            id
        } else {
            if !self.make_room() {
                return;
            }
            let id = self
                .flows
                .insert(key, SocketAddr::new(dst, 0), self.now, FlowKind::Icmp);
            self.counters.icmp_flows += 1;
            id
        };
        let now = self.now;
        if let Some(f) = self.flows.get_mut(id) {
            f.last_active = now;
            f.bytes_from_board += data.len() as u64;
        }
        self.push_datagram_event(
            NatEvent::IcmpEchoRequest {
                flow: id,
                dst,
                seq: seq_no,
                payload: data.to_vec(),
            },
            data.len(),
        );
    }

    /// (identifier, sequence, data) of an ICMP echo request; anything else is counted.
    fn parse_echo_v4<'a>(&mut self, payload: &'a [u8]) -> Option<(u16, u16, &'a [u8])> {
        let Ok(pkt) = Icmpv4Packet::new_checked(payload) else {
            drop_pkt!(self, drop_malformed, "nat: bad ICMP header");
            return None;
        };
        if self.cfg.verify_rx_checksums && !pkt.verify_checksum() {
            drop_pkt!(self, drop_bad_checksum, "nat: bad ICMP checksum");
            return None;
        }
        if let Ok(Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }) = Icmpv4Repr::parse(&pkt, &self.csum)
        {
            // The repr borrows `pkt`, which borrows `payload`: take the data from `payload`.
            let off = payload.len() - data.len();
            return Some((ident, seq_no, &payload[off..]));
        }
        drop_pkt!(self, drop_icmp_type, msg_type = %pkt.msg_type(), "nat: ICMP other than echo request");
        None
    }

    /// The ICMPv6 counterpart of `parse_echo_v4`.
    fn parse_echo_v6<'a>(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        payload: &'a [u8],
    ) -> Option<(u16, u16, &'a [u8])> {
        let Ok(pkt) = Icmpv6Packet::new_checked(payload) else {
            drop_pkt!(self, drop_malformed, "nat: bad ICMPv6 header");
            return None;
        };
        if self.cfg.verify_rx_checksums && !pkt.verify_checksum(&src, &dst) {
            drop_pkt!(self, drop_bad_checksum, "nat: bad ICMPv6 checksum");
            return None;
        }
        if let Ok(Icmpv6Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }) = Icmpv6Repr::parse(&src, &dst, &pkt, &self.csum)
        {
            let off = payload.len() - data.len();
            return Some((ident, seq_no, &payload[off..]));
        }
        drop_pkt!(self, drop_icmp_type, msg_type = %pkt.msg_type(), "nat: ICMPv6 other than echo request");
        None
    }

    pub(crate) fn icmp_reply(&mut self, id: FlowId, seq: u16, payload: &[u8]) {
        let now = self.now;
        let Some(flow) = self.flows.get_mut(id) else {
            self.counters.drop_stale_os_event += 1;
            return;
        };
        let FlowKey::Icmp { src, dst, ident } = flow.key else {
            self.counters.drop_stale_os_event += 1;
            return;
        };
        flow.last_active = now;
        flow.bytes_to_board += payload.len() as u64;
        self.send_echo_reply(dst, src, ident, seq, payload);
    }

    pub(crate) fn icmp_unavailable(&mut self, id: FlowId) {
        if self.ping_available {
            tracing::warn!(
                "nat: ping sockets unavailable; only the gateway answers pings from now on"
            );
        }
        self.ping_available = false;
        if matches!(self.flows.get(id).map(|f| &f.kind), Some(FlowKind::Icmp)) {
            self.flows.remove(id);
        }
    }

    fn send_echo_reply(&mut self, from: IpAddr, to: IpAddr, ident: u16, seq_no: u16, data: &[u8]) {
        match (from, to) {
            (IpAddr::V4(from), IpAddr::V4(to)) => {
                let repr = Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                self.emit_icmpv4(from, to, &repr);
            }
            (IpAddr::V6(from), IpAddr::V6(to)) => {
                let repr = Icmpv6Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                self.emit_icmpv6(from, to, &repr);
            }
            _ => {}
        }
    }

    /// The gateway address of `ip`'s version.
    pub(crate) fn gateway_for(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => self.cfg.gateway_ipv4.into(),
            IpAddr::V6(_) => self.cfg.gateway_ipv6.into(),
        }
    }

    /// Send an ICMP error about a board packet from the gateway, quoting its header and
    /// payload (8 bytes of it for IPv4).
    pub(crate) fn send_icmp_error(&mut self, ip: &IpPacket<'_>, err: IcmpError) {
        let from = self.gateway_for(ip.dst);
        self.send_icmp_error_from(ip, err, from);
    }

    /// `send_icmp_error` from a chosen address (port unreachable comes from the destination).
    /// IPv6 quotes the packet as it came, extension headers included.
    pub(crate) fn send_icmp_error_from(&mut self, ip: &IpPacket<'_>, err: IcmpError, from: IpAddr) {
        let (_, payload) = ip.after_ip_header();
        let quote = if ip.is_v6() {
            payload
        } else {
            &payload[..payload.len().min(8)]
        };
        self.send_icmp_error_quoting(Quoted::of(ip), quote, err, from);
    }

    /// Send an ICMP error quoting a (possibly rebuilt) header and the bytes after it (IPv6:
    /// cut to fit 1280 bytes).
    pub(crate) fn send_icmp_error_quoting(
        &mut self,
        header: Quoted,
        quote: &[u8],
        err: IcmpError,
        from: IpAddr,
    ) {
        if from.is_ipv4() != header.src.is_ipv4() || from.is_ipv4() != header.dst.is_ipv4() {
            return;
        }
        let header = IpRepr::new(
            header.src.into(),
            header.dst.into(),
            header.protocol,
            header.payload_len,
            header.hop_limit,
        );
        let sent = match (from, header) {
            (IpAddr::V4(from), IpRepr::Ipv4(header)) => {
                let repr = match err {
                    IcmpError::Unreachable(reason) => Icmpv4Repr::DstUnreachable {
                        reason: reason.v4(),
                        header,
                        data: quote,
                    },
                    IcmpError::TimeExceeded => Icmpv4Repr::TimeExceeded {
                        reason: Icmpv4TimeExceeded::TtlExpired,
                        header,
                        data: quote,
                    },
                    // IPv4 has "fragmentation needed", but the core never sees DF packets it
                    // cannot forward: TCP is terminated and UDP goes through OS sockets.
                    IcmpError::PacketTooBig(_) => return,
                };
                self.emit_icmpv4(from, header.src_addr, &repr)
            }
            (IpAddr::V6(from), IpRepr::Ipv6(header)) => {
                let repr = match err {
                    IcmpError::Unreachable(reason) => Icmpv6Repr::DstUnreachable {
                        reason: reason.v6(),
                        header,
                        data: quote,
                    },
                    IcmpError::TimeExceeded => Icmpv6Repr::TimeExceeded {
                        reason: Icmpv6TimeExceeded::HopLimitExceeded,
                        header,
                        data: quote,
                    },
                    IcmpError::PacketTooBig(mtu) => Icmpv6Repr::PktTooBig {
                        mtu,
                        header,
                        data: quote,
                    },
                };
                self.emit_icmpv6(from, header.src_addr, &repr)
            }
            _ => return,
        };
        if sent {
            self.counters.icmp_errors_sent += 1;
        }
    }

    /// Queues one ICMP message for the board; returns whether it was queued.
    fn emit_icmpv4(&mut self, from: Ipv4Addr, to: Ipv4Addr, repr: &Icmpv4Repr<'_>) -> bool {
        self.emit_to_board(
            from.into(),
            to.into(),
            IpProtocol::Icmp,
            repr.buffer_len(),
            false,
            |buf, csum| {
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), csum);
            },
        )
    }

    /// Queues one ICMPv6 message for the board; returns whether it was queued.
    fn emit_icmpv6(&mut self, from: Ipv6Addr, to: Ipv6Addr, repr: &Icmpv6Repr<'_>) -> bool {
        self.emit_to_board(
            from.into(),
            to.into(),
            IpProtocol::Icmpv6,
            repr.buffer_len(),
            false,
            |buf, csum| {
                repr.emit(&from, &to, &mut Icmpv6Packet::new_unchecked(buf), csum);
            },
        )
    }
}
