//! Packet builders and parsers for tests: board packets from smoltcp Reprs, and views of what
//! the core sends back (the ones qbkit-host's tests share are in `crate::testing`).

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, TcpControl};

pub(crate) const BOARD: Ipv4Addr = Ipv4Addr::new(10, 47, 0, 2);
pub(crate) const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 47, 0, 1);
pub(crate) const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

pub(crate) const BOARD6: Ipv6Addr = Ipv6Addr::new(0xfd47, 0, 0, 0, 0, 0, 0, 2);
pub(crate) const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd47, 0, 0, 0, 0, 0, 0, 1);
pub(crate) const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

pub(crate) fn ep(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

pub(crate) fn ep6(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ip, port, 0, 0)
}

pub(crate) use crate::testing::{ip_of, ipv4, seg_of, udp, udp_of};

/// A TCP segment from `src` to `dst`.
pub(crate) fn tcp(
    src: impl Into<core::net::SocketAddr>,
    dst: impl Into<core::net::SocketAddr>,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    crate::testing::tcp_segment(src, dst, control, seq, ack, 1460, payload)
}

pub(crate) fn syn(
    src: impl Into<core::net::SocketAddr>,
    dst: impl Into<core::net::SocketAddr>,
    seq: u32,
) -> Vec<u8> {
    tcp(src, dst, TcpControl::Syn, seq, None, &[])
}

pub(crate) fn echo(src: Ipv4Addr, dst: Ipv4Addr, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let repr = Icmpv4Repr::EchoRequest {
        ident,
        seq_no,
        data,
    };
    ipv4(src, dst, IpProtocol::Icmp, 64, repr.buffer_len(), |b| {
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(b),
            &ChecksumCapabilities::default(),
        );
    })
}

/// (src, type, code, quoted bytes) of an ICMP packet to the board.
#[track_caller]
pub(crate) fn icmp_of(pkt: &[u8]) -> (Ipv4Addr, u8, u8, Vec<u8>) {
    let ip = ip_of(pkt);
    assert_eq!(ip.next_header, IpProtocol::Icmp);
    let p = Ipv4Packet::new_unchecked(pkt);
    let i = Icmpv4Packet::new_checked(p.payload()).expect("ICMP");
    assert!(i.verify_checksum(), "ICMP checksum");
    (
        ip.src_addr,
        u8::from(i.msg_type()),
        i.msg_code(),
        i.data().to_vec(),
    )
}

/// The one event an echo request to `dst` produces: an `IcmpEchoRequest` with `seq` and
/// `data`; returns its flow.
#[track_caller]
pub(crate) fn expect_echo_request(
    h: &mut super::H,
    dst: core::net::IpAddr,
    seq: u16,
    data: &[u8],
) -> crate::FlowId {
    match h.events().as_slice() {
        [
            crate::NatEvent::IcmpEchoRequest {
                flow,
                dst: d,
                seq: s,
                payload,
            },
        ] => {
            assert_eq!((*d, *s, payload.as_slice()), (dst, seq, data));
            *flow
        }
        other => panic!("expected one IcmpEchoRequest, got {other:?}"),
    }
}
