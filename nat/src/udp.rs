//! UDP: one flow per (board endpoint, destination) pair, relayed through a connected OS socket.
//!
//! Board datagram → (new flow: policy, limits, `UdpOpen`) → `UdpSend` event with an owned copy of
//! the payload, bounded by `max_queued_datagram_bytes`. OS datagram (`OsEvent::UdpReceived`) →
//! IPv4 or IPv6 UDP packet from the address the board dialled (gateway:53 for DNS) to the board.
//! `OsEvent::UdpError` → ICMP unreachable to the board, quoting a rebuilt IP+UDP header.
//! DNS: datagrams to gateway:53 go to the preferred upstream resolver and fail over to the next
//! (see `dns.rs`); DNS flows always age with the short timeout.

use core::net::SocketAddr;

use smoltcp::wire::{IpProtocol, UdpPacket, UdpRepr};

use crate::counters::drop_pkt;
use crate::dns::Failover;
use crate::flow::{FlowKey, FlowKind, UdpFlow};
use crate::icmp::{IcmpError, Quoted, Unreachable};
use crate::ip::IpPacket;
use crate::policy;
use crate::{DatagramError, FlowId, Nat, NatEvent};

impl Nat {
    pub(crate) fn udp_ingress(&mut self, ip: &IpPacket<'_>) {
        let Ok(dgram) = UdpPacket::new_checked(ip.payload()) else {
            return drop_pkt!(self, drop_malformed, "nat: bad UDP header");
        };
        let (src_ip, dst_ip) = (ip.src, ip.dst);
        if self.cfg.verify_rx_checksums && !dgram.verify_checksum(&src_ip.into(), &dst_ip.into()) {
            return drop_pkt!(self, drop_bad_checksum, "nat: bad UDP checksum");
        }
        if dgram.src_port() == 0 || dgram.dst_port() == 0 {
            return drop_pkt!(self, drop_malformed, "nat: UDP port 0");
        }
        let src = SocketAddr::new(src_ip, dgram.src_port());
        let dst = SocketAddr::new(dst_ip, dgram.dst_port());
        let key = FlowKey::Udp { src, dst };
        let id = if let Some(id) = self.flows.id_of(&key) {
            id
        } else {
            let target = match policy::resolve(&self.cfg, dst, self.dns_preferred) {
                Ok(t) => t,
                Err(deny) => {
                    self.count_denial(deny, dst);
                    let to_gateway = dst_ip == self.gateway_for(dst_ip);
                    if let Some(reason) = deny.icmp_reason(to_gateway) {
                        self.send_icmp_error_from(ip, IcmpError::Unreachable(reason), dst_ip);
                    }
                    return;
                }
            };
            if !self.make_room() {
                return;
            }
            let kind = FlowKind::Udp(UdpFlow {
                replied: false,
                dns: target.dns.then(|| Box::new(Failover::new(target.os_dst))),
                inbound: false,
            });
            let id = self.flows.insert(key, target.os_dst, self.now, kind);
            self.counters.udp_flows += 1;
            self.events.push_back(NatEvent::UdpOpen {
                flow: id,
                src,
                dst: target.os_dst,
            });
            id
        };
        let payload = dgram.payload();
        let now = self.now;
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        flow.last_active = now;
        flow.bytes_from_board += payload.len() as u64;
        let dns = matches!(&flow.kind, FlowKind::Udp(u) if u.dns.is_some());
        if dns {
            self.counters.dns_forwarded += 1;
        }
        let sent = self.push_datagram_event(
            NatEvent::UdpSend {
                flow: id,
                payload: payload.to_vec(),
            },
            payload.len(),
        );
        if dns && sent {
            self.dns_sent(id, payload);
        }
    }

    pub(crate) fn udp_received(&mut self, id: FlowId, payload: &[u8]) {
        let now = self.now;
        let Some(flow) = self.flows.get_mut(id) else {
            self.counters.drop_stale_os_event += 1;
            return;
        };
        let (FlowKind::Udp(u), FlowKey::Udp { src, dst }) = (&mut flow.kind, flow.key) else {
            self.counters.drop_stale_os_event += 1;
            return;
        };
        u.replied = true;
        flow.last_active = now;
        flow.bytes_to_board += payload.len() as u64;
        let repr = UdpRepr {
            src_port: dst.port(),
            dst_port: src.port(),
        };
        let len = 8 + payload.len();
        let (s, d) = (dst.ip(), src.ip());
        self.emit_to_board(s, d, IpProtocol::Udp, len, false, |buf, csum| {
            repr.emit(
                &mut UdpPacket::new_unchecked(buf),
                &s.into(),
                &d.into(),
                payload.len(),
                |p| p.copy_from_slice(payload),
                csum,
            );
        });
        self.dns_answered(id, Some(payload));
    }

    pub(crate) fn udp_error(&mut self, id: FlowId, error: DatagramError) {
        // A resolver that answers with an ICMP error is dead for us: try the next one.
        if error != DatagramError::Failed && self.dns_fail_over(id, "ICMP error", false) {
            return;
        }
        let Some(flow) = self.flows.get(id) else {
            self.counters.drop_stale_os_event += 1;
            return;
        };
        let (FlowKind::Udp(_), FlowKey::Udp { src, dst }) = (&flow.kind, flow.key) else {
            self.counters.drop_stale_os_event += 1;
            return;
        };
        let reason = match error {
            DatagramError::PortUnreachable => Unreachable::Port,
            DatagramError::HostUnreachable => Unreachable::Host,
            DatagramError::NetUnreachable => Unreachable::Net,
            DatagramError::Failed => {
                // The driver dropped the socket already: forget the flow without an event.
                self.flows.remove(id);
                return;
            }
        };
        let header = Quoted {
            src: src.ip(),
            dst: dst.ip(),
            protocol: IpProtocol::Udp,
            payload_len: 8,
            hop_limit: 64,
        };
        let mut quote = [0u8; 8];
        quote[0..2].copy_from_slice(&src.port().to_be_bytes());
        quote[2..4].copy_from_slice(&dst.port().to_be_bytes());
        quote[4..6].copy_from_slice(&8u16.to_be_bytes());
        let from = if reason == Unreachable::Port {
            dst.ip()
        } else {
            self.gateway_for(dst.ip())
        };
        self.send_icmp_error_quoting(header, &quote, IcmpError::Unreachable(reason), from);
    }
}
