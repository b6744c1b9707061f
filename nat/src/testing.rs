//! Board packets from smoltcp Reprs and views of what the core sends back, for this crate's tests,
//! its examples and qbkit-host's core tests (which cannot see the `cfg(test)` helpers). Not part of
//! the API.

use core::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
    UdpRepr,
};

/// An IPv4 packet from `src` to `dst` whose `payload_len` bytes `fill` writes.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    ttl: u8,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len,
        hop_limit: ttl,
    };
    let mut buf = vec![0; repr.buffer_len() + payload_len];
    let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut p, &ChecksumCapabilities::default());
    fill(p.payload_mut());
    buf
}

/// A TCP segment from `src` to `dst` (TTL 64, window 65535); a SYN also offers window scale 7
/// and `syn_mss`.
pub fn tcp_segment(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    syn_mss: u16,
    payload: &[u8],
) -> Vec<u8> {
    let syn = control == TcpControl::Syn;
    let repr = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control,
        seq_number: TcpSeqNumber(seq.cast_signed()),
        ack_number: ack.map(|a| TcpSeqNumber(a.cast_signed())),
        window_len: 65535,
        window_scale: syn.then_some(7),
        max_seg_size: syn.then_some(syn_mss),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    ipv4(
        *src.ip(),
        *dst.ip(),
        IpProtocol::Tcp,
        64,
        repr.buffer_len(),
        |b| {
            repr.emit(
                &mut TcpPacket::new_unchecked(b),
                &(*src.ip()).into(),
                &(*dst.ip()).into(),
                &ChecksumCapabilities::default(),
            );
        },
    )
}

/// A UDP datagram from `src` to `dst`.
pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
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

/// A parsed TCP segment sent to the board.
#[derive(Debug, Clone)]
pub struct Seg {
    /// Source.
    pub src: SocketAddrV4,
    /// Destination.
    pub dst: SocketAddrV4,
    /// SYN flag.
    pub syn: bool,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
    /// Acknowledgment number, when ACK is set.
    pub ack: Option<u32>,
    /// Sequence number.
    pub seq: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Checks the IPv4 header (and its checksum) of a packet to the board, returns the repr.
#[track_caller]
pub fn ip_of(pkt: &[u8]) -> Ipv4Repr {
    let p = Ipv4Packet::new_checked(pkt).expect("valid IPv4");
    assert!(p.verify_checksum(), "IPv4 checksum");
    Ipv4Repr::parse(&p, &ChecksumCapabilities::default()).expect("valid IPv4 repr")
}

/// The TCP segment in a packet to the board (checksums checked).
#[track_caller]
pub fn seg_of(pkt: &[u8]) -> Seg {
    let ip = ip_of(pkt);
    assert_eq!(ip.next_header, IpProtocol::Tcp, "expected TCP, got {ip:?}");
    let p = Ipv4Packet::new_unchecked(pkt);
    let t = TcpPacket::new_checked(p.payload()).expect("TCP");
    assert!(
        t.verify_checksum(&ip.src_addr.into(), &ip.dst_addr.into()),
        "TCP checksum"
    );
    Seg {
        src: SocketAddrV4::new(ip.src_addr, t.src_port()),
        dst: SocketAddrV4::new(ip.dst_addr, t.dst_port()),
        syn: t.syn(),
        fin: t.fin(),
        rst: t.rst(),
        ack: t.ack().then(|| t.ack_number().0.cast_unsigned()),
        seq: t.seq_number().0.cast_unsigned(),
        payload: t.payload().to_vec(),
    }
}

/// (src, dst, payload) of a UDP packet to the board (checksums checked).
#[track_caller]
pub fn udp_of(pkt: &[u8]) -> (SocketAddrV4, SocketAddrV4, Vec<u8>) {
    let ip = ip_of(pkt);
    assert_eq!(ip.next_header, IpProtocol::Udp);
    let p = Ipv4Packet::new_unchecked(pkt);
    let u = UdpPacket::new_checked(p.payload()).expect("UDP");
    assert!(
        u.verify_checksum(&ip.src_addr.into(), &ip.dst_addr.into()),
        "UDP checksum"
    );
    (
        SocketAddrV4::new(ip.src_addr, u.src_port()),
        SocketAddrV4::new(ip.dst_addr, u.dst_port()),
        u.payload().to_vec(),
    )
}
