//! Board packets from smoltcp Reprs, for this crate's tests and its examples (which cannot see the
//! `cfg(test)` helpers). Not part of the API.

use core::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
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
