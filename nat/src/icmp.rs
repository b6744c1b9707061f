//! ICMP: echo requests from the board, echo replies from the OS, and ICMP errors we generate.
//!
//! Echo to the gateway is answered by the core itself. Echo to anything else (after policy)
//! becomes an `IcmpEchoRequest` event on a flow keyed by (board, destination, identifier); the
//! driver sends it through an unprivileged ping socket, and `OsEvent::IcmpEchoReply` comes back
//! with the board's identifier restored. Without ping sockets (`icmp_echo_via_os` off or
//! `OsEvent::IcmpUnavailable`) only the gateway answers; replies are never faked for other hosts.
//! Errors (unreachable, time exceeded) quote the offending IP header plus 8 bytes (RFC 792).

use core::net::Ipv4Addr;

use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv4TimeExceeded, IpProtocol, Ipv4Packet,
    Ipv4Repr,
};

use crate::flow::{FlowKey, FlowKind};
use crate::nat::drop_pkt;
use crate::policy;
use crate::{FlowId, Nat, NatEvent};

/// An ICMP error the core sends to the board.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IcmpError {
    Unreachable(Icmpv4DstUnreachable),
    TimeExceeded,
}

impl Nat {
    pub(crate) fn icmp_ingress(&mut self, ip: &Ipv4Packet<&[u8]>) {
        let Ok(pkt) = Icmpv4Packet::new_checked(ip.payload()) else {
            return drop_pkt!(self, drop_malformed, "nat: bad ICMP header");
        };
        if self.cfg.verify_rx_checksums && !pkt.verify_checksum() {
            return drop_pkt!(self, drop_bad_checksum, "nat: bad ICMP checksum");
        }
        let Ok(Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }) = Icmpv4Repr::parse(&pkt, &self.csum)
        else {
            return drop_pkt!(self, drop_icmp_type, msg_type = %pkt.msg_type(), "nat: ICMP other than echo request");
        };
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if dst == self.cfg.gateway_ipv4 {
            self.counters.gateway_pings_answered += 1;
            self.send_echo_reply(dst, src, ident, seq_no, data);
            return;
        }
        if let Err(deny) = policy::check_ip(&self.cfg, dst) {
            self.count_denial(deny, core::net::SocketAddrV4::new(dst, 0));
            if let Some(reason) = deny.icmp_reason(false) {
                self.send_icmp_error(ip, IcmpError::Unreachable(reason), self.cfg.gateway_ipv4);
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
            let id = self.flows.insert(
                key,
                core::net::SocketAddr::new(dst.into(), 0),
                self.now,
                FlowKind::Icmp,
            );
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
                dst: dst.into(),
                seq: seq_no,
                payload: data.to_vec(),
            },
            data.len(),
        );
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

    fn send_echo_reply(
        &mut self,
        from: Ipv4Addr,
        to: Ipv4Addr,
        ident: u16,
        seq_no: u16,
        data: &[u8],
    ) {
        let repr = Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        };
        self.emit_icmp_to_board(from, to, &repr);
    }

    /// Send an ICMP error about a board packet, quoting its header and first 8 payload bytes.
    pub(crate) fn send_icmp_error(
        &mut self,
        ip: &Ipv4Packet<&[u8]>,
        err: IcmpError,
        from: Ipv4Addr,
    ) {
        let header = Ipv4Repr {
            src_addr: ip.src_addr(),
            dst_addr: ip.dst_addr(),
            next_header: ip.next_header(),
            payload_len: ip.payload().len(),
            hop_limit: ip.hop_limit(),
        };
        let payload = ip.payload();
        let quote = &payload[..payload.len().min(8)];
        self.send_icmp_error_quoting(header, quote, err, from);
    }

    /// Send an ICMP error quoting a (possibly rebuilt) header and up to 8 bytes after it.
    pub(crate) fn send_icmp_error_quoting(
        &mut self,
        header: Ipv4Repr,
        quote: &[u8],
        err: IcmpError,
        from: Ipv4Addr,
    ) {
        let repr = match err {
            IcmpError::Unreachable(reason) => Icmpv4Repr::DstUnreachable {
                reason,
                header,
                data: quote,
            },
            IcmpError::TimeExceeded => Icmpv4Repr::TimeExceeded {
                reason: Icmpv4TimeExceeded::TtlExpired,
                header,
                data: quote,
            },
        };
        let to = header.src_addr;
        if self.emit_icmp_to_board(from, to, &repr) {
            self.counters.icmp_errors_sent += 1;
        }
    }

    /// Queues one ICMP message for the board; returns whether it was queued.
    fn emit_icmp_to_board(&mut self, from: Ipv4Addr, to: Ipv4Addr, repr: &Icmpv4Repr<'_>) -> bool {
        self.emit_to_board(
            from,
            to,
            IpProtocol::Icmp,
            repr.buffer_len(),
            false,
            |buf, csum| {
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), csum);
            },
        )
    }
}
