//! One checked board packet of either IP version, as the protocol handlers see it.
//!
//! `handle_ip_packet` turns the board's bytes into an [`IpPacket`] here (header checked, padding
//! cut, IPv4 header checksum verified, fragments refused, IPv6 extension headers walked), and
//! `tcp.rs`, `udp.rs` and `icmp.rs` work on its addresses, protocol and payload without caring
//! which version carried them. TCP segments go on to smoltcp as a whole packet
//! ([`IpPacket::without_extensions`]).
//!
//! IPv6 extension headers: hop-by-hop options (first only), destination options and routing
//! headers with no segments left are skipped to the upper-layer header, at most
//! [`MAX_EXT_HEADERS`] of them and [`MAX_EXT_BYTES`] in all. Options are checked as TLVs: padding
//! and options whose type says "skip if unknown" pass, any other option refuses the packet (its
//! type asks for a discard). A fragment header refuses it as a fragment (never reassembled); a
//! routing header with segments left (source routing through us), AH, ESP, "no next header", too
//! many or too long headers refuse it as an extension header; bad lengths are malformed.

use core::net::IpAddr;
use std::borrow::Cow;

use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet};

/// A board packet whose header was checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpPacket<'a> {
    /// The packet without link padding: header and payload.
    pub(crate) bytes: &'a [u8],
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    /// The transport protocol (IPv6: the upper-layer header after any extension headers).
    pub(crate) protocol: IpProtocol,
    /// IPv4 TTL or IPv6 hop limit.
    pub(crate) hop_limit: u8,
    /// IP header and IPv6 extension headers: where the transport header starts.
    header_len: usize,
    /// The fixed IP header alone (IPv4 with options; IPv6: 40).
    ip_header_len: usize,
    /// The IP header's own protocol field (IPv6: the first next header, maybe an extension).
    first_protocol: IpProtocol,
}

/// Most IPv6 extension headers walked before a packet is refused.
pub(crate) const MAX_EXT_HEADERS: usize = 8;
/// Most bytes of IPv6 extension headers walked before a packet is refused.
pub(crate) const MAX_EXT_BYTES: usize = 1024;

/// Why a board packet is not an [`IpPacket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Truncated, bad lengths, bad IPv4 header checksum, not IP.
    Malformed,
    /// An IPv4 fragment or an IPv6 fragment header.
    Fragment,
    /// An IPv6 extension header the core does not pass (see the module docs).
    ExtensionHeader(IpProtocol),
}

impl<'a> IpPacket<'a> {
    /// Checks the header of a packet from the board.
    pub(crate) fn parse(packet: &'a [u8]) -> Result<Self, Refused> {
        match packet.first().map(|b| b >> 4) {
            Some(4) => Self::parse_v4(packet),
            Some(6) => Self::parse_v6(packet),
            _ => Err(Refused::Malformed),
        }
    }

    fn parse_v4(packet: &'a [u8]) -> Result<Self, Refused> {
        let ip = Ipv4Packet::new_checked(packet).map_err(|_| Refused::Malformed)?;
        if !ip.verify_checksum() {
            return Err(Refused::Malformed);
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            return Err(Refused::Fragment);
        }
        // Trailing bytes beyond total_len (padding) are ignored.
        Ok(Self {
            bytes: &packet[..usize::from(ip.total_len())],
            src: ip.src_addr().into(),
            dst: ip.dst_addr().into(),
            protocol: ip.next_header(),
            hop_limit: ip.hop_limit(),
            header_len: usize::from(ip.header_len()),
            ip_header_len: usize::from(ip.header_len()),
            first_protocol: ip.next_header(),
        })
    }

    fn parse_v6(packet: &'a [u8]) -> Result<Self, Refused> {
        let ip = Ipv6Packet::new_checked(packet).map_err(|_| Refused::Malformed)?;
        let len = ip.header_len() + usize::from(ip.payload_len());
        let bytes = &packet[..len];
        let (protocol, header_len) = walk_extensions(bytes, ip.header_len(), ip.next_header())?;
        Ok(Self {
            bytes,
            src: ip.src_addr().into(),
            dst: ip.dst_addr().into(),
            protocol,
            hop_limit: ip.hop_limit(),
            header_len,
            ip_header_len: ip.header_len(),
            first_protocol: ip.next_header(),
        })
    }

    /// The transport header and data.
    pub(crate) fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }

    pub(crate) fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// Everything after the fixed IP header (IPv6: extension headers included), with the IP
    /// header's own protocol field: what an ICMP error quotes after the header.
    pub(crate) fn after_ip_header(&self) -> (IpProtocol, &'a [u8]) {
        (self.first_protocol, &self.bytes[self.ip_header_len..])
    }

    /// The packet as smoltcp takes it: the bytes themselves, or, when IPv6 extension headers
    /// were skipped, a copy with the fixed header pointing at the upper layer (the transport
    /// checksum stays valid: its pseudo-header has the addresses and the upper-layer length).
    pub(crate) fn without_extensions(&self) -> Cow<'a, [u8]> {
        if self.header_len == self.ip_header_len {
            return Cow::Borrowed(self.bytes);
        }
        let upper = self.payload();
        let mut v = Vec::with_capacity(self.ip_header_len + upper.len());
        v.extend_from_slice(&self.bytes[..self.ip_header_len]);
        v.extend_from_slice(upper);
        let mut ip = Ipv6Packet::new_unchecked(&mut v[..]);
        ip.set_next_header(self.protocol);
        // At most the original payload length, which fitted in u16.
        ip.set_payload_len(u16::try_from(upper.len()).unwrap_or(u16::MAX));
        Cow::Owned(v)
    }
}

/// Walks the IPv6 extension headers of `bytes` from `off` (the first one's type is `next`) to
/// the upper-layer header: returns its protocol and offset (module docs: what passes).
fn walk_extensions(
    bytes: &[u8],
    mut off: usize,
    mut next: IpProtocol,
) -> Result<(IpProtocol, usize), Refused> {
    let start = off;
    for n in 0..=MAX_EXT_HEADERS {
        match next {
            IpProtocol::Ipv6Frag => return Err(Refused::Fragment),
            IpProtocol::HopByHop | IpProtocol::Ipv6Opts | IpProtocol::Ipv6Route => {
                if n == MAX_EXT_HEADERS || (next == IpProtocol::HopByHop && n > 0) {
                    return Err(Refused::ExtensionHeader(next));
                }
                // next header, length in 8-octet units after the first 8, then the body
                let head = bytes.get(off..off + 2).ok_or(Refused::Malformed)?;
                let len = (usize::from(head[1]) + 1) * 8;
                let h = bytes.get(off..off + len).ok_or(Refused::Malformed)?;
                let passes = match next {
                    // routing type, segments left: with none left it is only information
                    IpProtocol::Ipv6Route => h[3] == 0,
                    _ => options_pass(&h[2..])?,
                };
                if !passes {
                    return Err(Refused::ExtensionHeader(next));
                }
                off += len;
                if off - start > MAX_EXT_BYTES {
                    return Err(Refused::ExtensionHeader(next));
                }
                next = IpProtocol::from(h[0]);
            }
            p @ (IpProtocol::Ipv6NoNxt | IpProtocol::IpSecAh | IpProtocol::IpSecEsp) => {
                return Err(Refused::ExtensionHeader(p));
            }
            upper => return Ok((upper, off)),
        }
    }
    Err(Refused::ExtensionHeader(next))
}

/// Whether the options (TLVs) of a hop-by-hop or destination options header let the packet
/// through: Pad1, PadN and options whose type's top two bits are 00 ("skip if unknown") do;
/// an option asking for a discard does not. A TLV running past the header is malformed.
fn options_pass(mut opts: &[u8]) -> Result<bool, Refused> {
    while let Some(&ty) = opts.first() {
        if ty == 0 {
            opts = &opts[1..];
            continue;
        }
        let len = usize::from(*opts.get(1).ok_or(Refused::Malformed)?);
        if ty >> 6 != 0 {
            return Ok(false);
        }
        opts = opts.get(2 + len..).ok_or(Refused::Malformed)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ipv4, ipv6};

    #[test]
    fn both_versions_parse_and_lose_their_padding() {
        let mut v4 = ipv4(
            "10.47.0.2".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
            IpProtocol::Udp,
            64,
            8,
            |_| {},
        );
        v4.extend_from_slice(&[0; 5]);
        let p = IpPacket::parse(&v4).unwrap();
        assert_eq!((p.bytes.len(), p.payload().len()), (28, 8));
        assert!(!p.is_v6());
        let mut v6 = ipv6(
            "fd47::2".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            IpProtocol::Tcp,
            3,
            20,
            |_| {},
        );
        v6.extend_from_slice(&[0; 5]);
        let p = IpPacket::parse(&v6).unwrap();
        assert_eq!((p.bytes.len(), p.payload().len()), (60, 20));
        assert_eq!((p.protocol, p.hop_limit), (IpProtocol::Tcp, 3));
        assert!(p.is_v6());
    }

    #[test]
    fn fragments_and_truncation_are_refused() {
        let (a, b) = ("fd47::2".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let frag = ipv6(a, b, IpProtocol::Ipv6Frag, 64, 8, |_| {});
        assert_eq!(IpPacket::parse(&frag).unwrap_err(), Refused::Fragment);
        let short = ipv6(a, b, IpProtocol::Udp, 64, 8, |_| {});
        assert_eq!(
            IpPacket::parse(&short[..44]).unwrap_err(),
            Refused::Malformed
        );
        assert_eq!(IpPacket::parse(&[]).unwrap_err(), Refused::Malformed);
        assert_eq!(
            IpPacket::parse(&[0x50; 40]).unwrap_err(),
            Refused::Malformed
        );
    }

    /// A UDP datagram from the board with `exts` before it.
    fn udp_with(exts: &[(IpProtocol, &[u8])]) -> Vec<u8> {
        let (a, b): (core::net::Ipv6Addr, core::net::Ipv6Addr) =
            ("fd47::2".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let pkt = crate::testing::udp(
            core::net::SocketAddrV6::new(a, 5000, 0, 0),
            core::net::SocketAddrV6::new(b, 7, 0, 0),
            b"payload",
        );
        crate::testing::with_ipv6_extensions(&pkt, exts)
    }

    const PAD6: &[u8] = &[1, 4, 0, 0, 0, 0]; // PadN
    const ROUTER_ALERT: &[u8] = &[5, 2, 0, 0, 1, 0]; // type 5: "skip if unknown" bits 00

    #[test]
    fn skippable_extension_headers_are_walked_to_the_upper_layer() {
        let route_done = [0u8, 0, 0, 0, 0, 0]; // type 0, segments left 0
        let long_opts = [&[1u8, 20][..], &[0; 20]].concat(); // one PadN over 22 bytes
        let pkt = udp_with(&[
            (IpProtocol::HopByHop, ROUTER_ALERT),
            (IpProtocol::Ipv6Opts, PAD6),
            (IpProtocol::Ipv6Route, &route_done),
            (IpProtocol::Ipv6Opts, &long_opts),
        ]);
        let p = IpPacket::parse(&pkt).unwrap();
        assert_eq!(p.protocol, IpProtocol::Udp);
        assert_eq!(p.payload().len(), 8 + 7);
        assert_eq!(&p.payload()[8..], b"payload");
        let (first, after) = p.after_ip_header();
        assert_eq!(
            (first, after.len()),
            (IpProtocol::HopByHop, 8 + 8 + 8 + 24 + 15)
        );
        // smoltcp gets the packet without them, still a valid UDP datagram
        let plain = p.without_extensions();
        assert_eq!(&plain[..], &udp_with(&[])[..]);
        // no extension headers: the bytes themselves
        let bare = udp_with(&[]);
        assert!(matches!(
            IpPacket::parse(&bare).unwrap().without_extensions(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn extension_headers_that_do_not_pass() {
        let refused = |exts: &[(IpProtocol, &[u8])]| IpPacket::parse(&udp_with(exts)).unwrap_err();
        let ext = Refused::ExtensionHeader;
        // source routing through us, and options whose type asks for a discard
        let route_left = [0u8, 1, 0, 0, 0, 0];
        assert_eq!(
            refused(&[(IpProtocol::Ipv6Route, &route_left)]),
            ext(IpProtocol::Ipv6Route)
        );
        for ty in [0x42u8, 0x82, 0xc2] {
            let opt = [ty, 4, 0, 0, 0, 0];
            assert_eq!(
                refused(&[(IpProtocol::Ipv6Opts, &opt)]),
                ext(IpProtocol::Ipv6Opts),
                "{ty:#x}"
            );
        }
        // hop-by-hop only first; a fragment header after skippable ones is still a fragment
        assert_eq!(
            refused(&[(IpProtocol::Ipv6Opts, PAD6), (IpProtocol::HopByHop, PAD6)]),
            ext(IpProtocol::HopByHop)
        );
        assert_eq!(
            refused(&[
                (IpProtocol::HopByHop, PAD6),
                (IpProtocol::Ipv6Frag, &[0; 6])
            ]),
            Refused::Fragment
        );
        for p in [
            IpProtocol::IpSecAh,
            IpProtocol::IpSecEsp,
            IpProtocol::Ipv6NoNxt,
        ] {
            assert_eq!(
                refused(&[(IpProtocol::Ipv6Opts, PAD6), (p, &[0; 6])]),
                ext(p)
            );
        }
        // bounded: 8 headers pass, 9 do not; nor more than 1024 bytes of them
        let eight = [(IpProtocol::Ipv6Opts, PAD6); 8];
        assert!(IpPacket::parse(&udp_with(&eight)).is_ok());
        assert_eq!(
            refused(&[(IpProtocol::Ipv6Opts, PAD6); 9]),
            ext(IpProtocol::Ipv6Opts)
        );
        let big = [&[1u8, 252][..], &[0; 252]].concat(); // a 256-byte header of padding
        let five = [(IpProtocol::Ipv6Opts, &big[..]); 5];
        assert_eq!(refused(&five[..]), ext(IpProtocol::Ipv6Opts));
        assert!(IpPacket::parse(&udp_with(&five[..4])).is_ok());
        // a TLV running past its header, a header running past the packet: malformed
        assert_eq!(
            refused(&[(IpProtocol::Ipv6Opts, &[1, 9, 0, 0, 0, 0])]),
            Refused::Malformed
        );
        let mut cut = udp_with(&[(IpProtocol::Ipv6Opts, PAD6)]);
        cut[41] = 3; // says 32 bytes; the packet has 8 + 15 after the fixed header
        assert_eq!(IpPacket::parse(&cut).unwrap_err(), Refused::Malformed);
    }
}
