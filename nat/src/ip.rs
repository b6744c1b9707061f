//! One checked board packet of either IP version, as the protocol handlers see it.
//!
//! `handle_ip_packet` turns the board's bytes into an [`IpPacket`] here (header checked, padding
//! cut, IPv4 header checksum verified, fragments and IPv6 extension headers refused), and
//! `tcp.rs`, `udp.rs` and `icmp.rs` work on its addresses, protocol and payload without caring
//! which version carried them. TCP segments go on to smoltcp as the whole packet (`bytes`).

use core::net::IpAddr;

use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet};

/// A board packet whose header was checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpPacket<'a> {
    /// The packet without link padding: header and payload.
    pub(crate) bytes: &'a [u8],
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    /// The transport protocol (IPv6: the first next header; extension headers are refused).
    pub(crate) protocol: IpProtocol,
    /// IPv4 TTL or IPv6 hop limit.
    pub(crate) hop_limit: u8,
    header_len: usize,
}

/// Why a board packet is not an [`IpPacket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Truncated, bad lengths, bad IPv4 header checksum, not IP.
    Malformed,
    /// An IPv4 fragment or an IPv6 fragment header.
    Fragment,
    /// An IPv6 extension header other than a fragment header (not forwarded).
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
        })
    }

    fn parse_v6(packet: &'a [u8]) -> Result<Self, Refused> {
        let ip = Ipv6Packet::new_checked(packet).map_err(|_| Refused::Malformed)?;
        let len = ip.header_len() + usize::from(ip.payload_len());
        match ip.next_header() {
            IpProtocol::Ipv6Frag => return Err(Refused::Fragment),
            p @ (IpProtocol::HopByHop
            | IpProtocol::Ipv6Route
            | IpProtocol::Ipv6Opts
            | IpProtocol::Ipv6NoNxt
            | IpProtocol::IpSecAh
            | IpProtocol::IpSecEsp) => return Err(Refused::ExtensionHeader(p)),
            _ => {}
        }
        Ok(Self {
            bytes: &packet[..len],
            src: ip.src_addr().into(),
            dst: ip.dst_addr().into(),
            protocol: ip.next_header(),
            hop_limit: ip.hop_limit(),
            header_len: ip.header_len(),
        })
    }

    /// The transport header and data.
    pub(crate) fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }

    pub(crate) fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }
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
    fn fragments_extension_headers_and_truncation_are_refused() {
        let (a, b) = ("fd47::2".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let frag = ipv6(a, b, IpProtocol::Ipv6Frag, 64, 8, |_| {});
        assert_eq!(IpPacket::parse(&frag).unwrap_err(), Refused::Fragment);
        let hbh = ipv6(a, b, IpProtocol::HopByHop, 64, 8, |_| {});
        assert_eq!(
            IpPacket::parse(&hbh).unwrap_err(),
            Refused::ExtensionHeader(IpProtocol::HopByHop)
        );
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
}
