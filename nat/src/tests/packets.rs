//! Packet builders and parsers for tests: board packets from smoltcp Reprs, and views of what
//! the core sends back.

use core::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, UdpPacket,
    UdpRepr,
};

pub(crate) const BOARD: Ipv4Addr = Ipv4Addr::new(10, 47, 0, 2);
pub(crate) const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 47, 0, 1);
pub(crate) const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

pub(crate) fn ep(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

pub(crate) use crate::testing::ipv4;

/// A TCP segment from `src` to `dst`.
pub(crate) fn tcp(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    crate::testing::tcp_segment(src, dst, control, seq, ack, 1460, payload)
}

pub(crate) fn syn(src: SocketAddrV4, dst: SocketAddrV4, seq: u32) -> Vec<u8> {
    tcp(src, dst, TcpControl::Syn, seq, None, &[])
}

pub(crate) fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let repr = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    ipv4(
        *src.ip(),
        *dst.ip(),
        IpProtocol::Udp,
        64,
        8 + payload.len(),
        |b| {
            repr.emit(
                &mut UdpPacket::new_unchecked(b),
                &(*src.ip()).into(),
                &(*dst.ip()).into(),
                payload.len(),
                |p| p.copy_from_slice(payload),
                &ChecksumCapabilities::default(),
            );
        },
    )
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

/// A parsed TCP segment sent to the board.
#[derive(Debug, Clone)]
pub(crate) struct Seg {
    pub(crate) src: SocketAddrV4,
    pub(crate) dst: SocketAddrV4,
    pub(crate) syn: bool,
    pub(crate) ack: Option<u32>,
    pub(crate) rst: bool,
    pub(crate) seq: u32,
}

/// Check the IPv4 header (and its checksum) of a packet to the board, return the repr.
#[track_caller]
pub(crate) fn ip_of(pkt: &[u8]) -> Ipv4Repr {
    let p = Ipv4Packet::new_checked(pkt).expect("valid IPv4");
    assert!(p.verify_checksum(), "IPv4 checksum");
    Ipv4Repr::parse(&p, &ChecksumCapabilities::default()).expect("valid IPv4 repr")
}

#[track_caller]
pub(crate) fn seg_of(pkt: &[u8]) -> Seg {
    let ip = ip_of(pkt);
    assert_eq!(ip.next_header, IpProtocol::Tcp, "expected TCP, got {ip:?}");
    let p = Ipv4Packet::new_unchecked(pkt);
    let t = TcpPacket::new_checked(p.payload()).expect("TCP");
    assert!(
        t.verify_checksum(&ip.src_addr.into(), &ip.dst_addr.into()),
        "TCP checksum"
    );
    Seg {
        src: ep(ip.src_addr, t.src_port()),
        dst: ep(ip.dst_addr, t.dst_port()),
        syn: t.syn(),
        ack: t.ack().then(|| t.ack_number().0.cast_unsigned()),
        rst: t.rst(),
        seq: t.seq_number().0.cast_unsigned(),
    }
}

/// (src, dst, payload) of a UDP packet to the board.
#[track_caller]
pub(crate) fn udp_of(pkt: &[u8]) -> (SocketAddrV4, SocketAddrV4, Vec<u8>) {
    let ip = ip_of(pkt);
    assert_eq!(ip.next_header, IpProtocol::Udp);
    let p = Ipv4Packet::new_unchecked(pkt);
    let u = UdpPacket::new_checked(p.payload()).expect("UDP");
    assert!(
        u.verify_checksum(&ip.src_addr.into(), &ip.dst_addr.into()),
        "UDP checksum"
    );
    (
        ep(ip.src_addr, u.src_port()),
        ep(ip.dst_addr, u.dst_port()),
        u.payload().to_vec(),
    )
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
