//! Board packets from smoltcp Reprs and views of what the core sends back, for this crate's tests,
//! its examples and qbkit-host's core tests (which cannot see the `cfg(test)` helpers). Not part of
//! the API.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpProtocol, IpRepr, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber, UdpPacket, UdpRepr,
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

/// An IPv6 packet from `src` to `dst` whose `payload_len` bytes `fill` writes.
pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: IpProtocol,
    hop_limit: u8,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let repr = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len,
        hop_limit,
    };
    let mut buf = vec![0; repr.buffer_len() + payload_len];
    let mut p = Ipv6Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut p);
    fill(p.payload_mut());
    buf
}

/// The IPv6 packet `pkt` with extension headers inserted after its fixed header: each is
/// (type, body after the next-header and length bytes; 6, 14, 22... bytes long). The transport
/// checksum stays valid (the pseudo-header has no extension headers).
pub fn with_ipv6_extensions(pkt: &[u8], exts: &[(IpProtocol, &[u8])]) -> Vec<u8> {
    let mut out = pkt[..40].to_vec();
    let mut next = Ipv6Packet::new_unchecked(pkt).next_header();
    for (ty, body) in exts.iter().rev() {
        assert!(
            (body.len() + 2) % 8 == 0,
            "extension body of {} bytes",
            body.len()
        );
        let mut h = vec![
            u8::from(next),
            u8::try_from((body.len() + 2) / 8 - 1).expect("length"),
        ];
        h.extend_from_slice(body);
        out.splice(40..40, h);
        next = *ty;
    }
    out.extend_from_slice(&pkt[40..]);
    let len = u16::try_from(out.len() - 40).expect("payload length");
    let mut ip = Ipv6Packet::new_unchecked(&mut out[..]);
    ip.set_next_header(next);
    ip.set_payload_len(len);
    out
}

/// An IPv4 or IPv6 packet (by the addresses' version, which must agree).
pub fn ip(
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    ttl: u8,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(s, d, proto, ttl, payload_len, fill),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s, d, proto, ttl, payload_len, fill),
        _ => panic!("mixed IP versions: {src} -> {dst}"),
    }
}

/// The transport payload of an IPv4 or IPv6 packet to the board, with its header (IPv4
/// checksum checked).
#[track_caller]
pub fn ip_payload(pkt: &[u8]) -> (IpRepr, &[u8]) {
    if pkt.first().is_some_and(|b| b >> 4 == 6) {
        let p = Ipv6Packet::new_checked(pkt).expect("valid IPv6");
        let r = Ipv6Repr::parse(&p).expect("valid IPv6 repr");
        let payload = &pkt[40..40 + usize::from(p.payload_len())];
        (IpRepr::Ipv6(r), payload)
    } else {
        let r = ip_of(pkt);
        let p = Ipv4Packet::new_unchecked(pkt);
        let start = usize::from(p.header_len());
        (IpRepr::Ipv4(r), &pkt[start..usize::from(p.total_len())])
    }
}

/// A TCP segment from `src` to `dst` (TTL 64, window 65535); a SYN also offers window scale 7
/// and `syn_mss`.
pub fn tcp_segment(
    src: impl Into<SocketAddr>,
    dst: impl Into<SocketAddr>,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    syn_mss: u16,
    payload: &[u8],
) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
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
    ip(
        src.ip(),
        dst.ip(),
        IpProtocol::Tcp,
        64,
        repr.buffer_len(),
        |b| {
            repr.emit(
                &mut TcpPacket::new_unchecked(b),
                &src.ip().into(),
                &dst.ip().into(),
                &ChecksumCapabilities::default(),
            );
        },
    )
}

/// A UDP datagram from `src` to `dst`.
pub fn udp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
    let repr = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    ip(
        src.ip(),
        dst.ip(),
        IpProtocol::Udp,
        64,
        8 + payload.len(),
        |b| {
            repr.emit(
                &mut UdpPacket::new_unchecked(b),
                &src.ip().into(),
                &dst.ip().into(),
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
