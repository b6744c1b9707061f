//! Control messages: parsed values (`Repr`s in smoltcp terms) with `parse` / `buffer_len` / `emit`.
//!
//! A control record's payload is one kind byte followed by the kind's body (little-endian fields).
//! Bodies may grow at the end in later versions: parsers read the fields they know and ignore trailing
//! bytes, so an older peer understands a newer peer's message. Unknown kinds parse to
//! [`Control::Unknown`] and are skipped by the session, never fatal.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::FrameError;

/// The magic at the start of a Hello body, `QBKN`.
pub const HELLO_MAGIC: [u8; 4] = *b"QBKN";
/// Lowest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u8 = 1;
/// Highest protocol version this build speaks (announced in Hello).
pub const PROTOCOL_VERSION: u8 = 1;
/// Longest identity string in a Hello and message in a Bye.
pub const MAX_TEXT_LEN: usize = 255;
/// Most DNS servers in a LinkConfig.
pub const MAX_DNS: usize = 8;
/// Most counters in one Stats message.
pub const MAX_STATS: usize = 64;

/// Control kinds on the wire.
pub mod kind {
    /// [`super::Hello`].
    pub const HELLO: u8 = 1;
    /// [`super::LinkConfig`].
    pub const LINK_CONFIG: u8 = 2;
    /// [`super::Keepalive`].
    pub const KEEPALIVE: u8 = 3;
    /// [`super::Keepalive`] echoed.
    pub const KEEPALIVE_ACK: u8 = 4;
    /// [`super::Stats`].
    pub const STATS: u8 = 5;
    /// [`super::Bye`].
    pub const BYE: u8 = 6;
}

/// Which end of the link a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The board (qbkit-gadget): owns the TUN device, receives the LinkConfig.
    Board,
    /// The laptop (qbkit-host): runs the NAT, sends the LinkConfig.
    Host,
    /// A role this build does not know.
    Unknown(u8),
}

impl Role {
    const fn to_u8(self) -> u8 {
        match self {
            Self::Board => 1,
            Self::Host => 2,
            Self::Unknown(v) => v,
        }
    }
    const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Board,
            2 => Self::Host,
            v => Self::Unknown(v),
        }
    }
}

/// Capability bits announced in Hello; the session uses the intersection of both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// The peer understands IPv6 packets and the IPv6 part of LinkConfig.
    pub const IPV6: Self = Self(1 << 0);
    /// The peer sends and understands Stats messages.
    pub const STATS: Self = Self(1 << 1);
    /// Every capability this build implements.
    pub const ALL: Self = Self(Self::IPV6.0 | Self::STATS.0);

    /// Bits set in both.
    #[must_use]
    pub const fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// True if every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Hello flag: this Hello answers the peer's Hello (do not answer it again).
pub const HELLO_FLAG_REPLY: u8 = 1;

/// First message each side sends on a new link, and the answer to the peer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Highest protocol version the sender speaks.
    pub version: u8,
    /// Sender's role.
    pub role: Role,
    /// Flags, see [`HELLO_FLAG_REPLY`].
    pub flags: u8,
    /// Capabilities the sender implements.
    pub capabilities: Capabilities,
    /// Largest bundle the sender can receive.
    pub max_bundle: u32,
    /// Largest IP packet the sender can receive.
    pub max_mtu: u32,
    /// A human-readable identity: board serial, or host name and program version.
    pub identity: String,
}

/// An IPv4 or IPv6 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr<A> {
    /// The address.
    pub addr: A,
    /// The prefix length.
    pub prefix: u8,
}

/// The board's network configuration, sent by the host after the Hellos.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkConfig {
    /// The board's IPv4 address and prefix.
    pub ipv4: Option<Cidr<Ipv4Addr>>,
    /// The IPv4 default gateway (the host's NAT).
    pub gateway_v4: Option<Ipv4Addr>,
    /// The board's IPv6 address and prefix.
    pub ipv6: Option<Cidr<Ipv6Addr>>,
    /// The IPv6 default gateway.
    pub gateway_v6: Option<Ipv6Addr>,
    /// DNS servers, at most [`MAX_DNS`].
    pub dns: Vec<IpAddr>,
    /// The link MTU.
    pub mtu: u32,
}

/// Liveness probe and its echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Sequence number, echoed in the ack.
    pub seq: u32,
    /// Sender's clock in µs; the ack echoes it so the sender measures the round trip.
    pub timestamp_us: u64,
}

/// A counter identifier in [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatId(pub u32);

impl StatId {
    /// Bundles received.
    pub const RX_BUNDLES: Self = Self(1);
    /// IP packets received.
    pub const RX_PACKETS: Self = Self(2);
    /// IP bytes received.
    pub const RX_BYTES: Self = Self(3);
    /// Bundles sent.
    pub const TX_BUNDLES: Self = Self(4);
    /// IP packets sent.
    pub const TX_PACKETS: Self = Self(5);
    /// IP bytes sent.
    pub const TX_BYTES: Self = Self(6);
    /// Received bundles or records dropped as malformed.
    pub const RX_ERRORS: Self = Self(7);
    /// Packets dropped by the sender (queue full, link down).
    pub const TX_DROPS: Self = Self(8);
}

/// A set of counters, for the peer's status display.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// (id, value) pairs, at most [`MAX_STATS`].
    pub counters: Vec<(StatId, u64)>,
}

/// Why a peer is closing the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByeReason {
    /// Orderly shutdown (process exit, user request).
    Shutdown,
    /// The peer's protocol version is not supported.
    VersionMismatch,
    /// The sender detected a protocol error.
    ProtocolError,
    /// A reason this build does not know.
    Unknown(u8),
}

impl ByeReason {
    const fn to_u8(self) -> u8 {
        match self {
            Self::Shutdown => 1,
            Self::VersionMismatch => 2,
            Self::ProtocolError => 3,
            Self::Unknown(v) => v,
        }
    }
    const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Shutdown,
            2 => Self::VersionMismatch,
            3 => Self::ProtocolError,
            v => Self::Unknown(v),
        }
    }
}

/// The peer is closing the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bye {
    /// Why.
    pub reason: ByeReason,
    /// Human-readable detail.
    pub message: String,
}

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`LinkConfig`].
    LinkConfig(LinkConfig),
    /// A liveness probe.
    Keepalive(Keepalive),
    /// The echo of a probe.
    KeepaliveAck(Keepalive),
    /// See [`Stats`].
    Stats(Stats),
    /// See [`Bye`].
    Bye(Bye),
    /// A kind this build does not know (skipped).
    Unknown {
        /// The kind byte.
        kind: u8,
    },
}

/// Bounds-checked little-endian reader over a control body.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    kind: u8,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(FrameError::BadControl {
                kind: self.kind,
                reason: "body truncated",
            });
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn text(&mut self) -> Result<String, FrameError> {
        let n = self.u8()? as usize;
        let b = self.bytes(n)?;
        core::str::from_utf8(b)
            .map(String::from)
            .map_err(|_| FrameError::BadControl {
                kind: self.kind,
                reason: "text is not UTF-8",
            })
    }
    fn ip(&mut self) -> Result<IpAddr, FrameError> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            _ => Err(FrameError::BadControl {
                kind: self.kind,
                reason: "bad address family",
            }),
        }
    }
}

/// Little-endian writer; `emit` sizes the buffer with `buffer_len` first, so writes never overrun.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn text(&mut self, s: &str) {
        let b = truncate_text(s).as_bytes();
        self.u8(b.len() as u8);
        self.bytes(b);
    }
    fn ip(&mut self, a: &IpAddr) {
        match a {
            IpAddr::V4(a) => {
                self.u8(4);
                self.bytes(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.bytes(&a.octets());
            }
        }
    }
}

/// The longest prefix of `s` that fits [`MAX_TEXT_LEN`] bytes without splitting a character.
fn truncate_text(s: &str) -> &str {
    if s.len() <= MAX_TEXT_LEN {
        return s;
    }
    let mut end = MAX_TEXT_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn ip_len(a: &IpAddr) -> usize {
    match a {
        IpAddr::V4(_) => 5,
        IpAddr::V6(_) => 17,
    }
}

const LC_HAS_V4: u8 = 1;
const LC_HAS_GW4: u8 = 2;
const LC_HAS_V6: u8 = 4;
const LC_HAS_GW6: u8 = 8;
/// Fixed part of a LinkConfig body.
const LC_FIXED_LEN: usize = 48;
/// Fixed part of a Hello body (before the identity text).
const HELLO_FIXED_LEN: usize = 20;

fn parse_hello(r: &mut Reader<'_>) -> Result<Hello, FrameError> {
    if r.array::<4>()? != HELLO_MAGIC {
        return Err(FrameError::BadControl {
            kind: kind::HELLO,
            reason: "bad Hello magic",
        });
    }
    let version = r.u8()?;
    let role = Role::from_u8(r.u8()?);
    let flags = r.u8()?;
    let _reserved = r.u8()?;
    let capabilities = Capabilities(r.u32()?);
    let max_bundle = r.u32()?;
    let max_mtu = r.u32()?;
    let identity = r.text()?;
    Ok(Hello {
        version,
        role,
        flags,
        capabilities,
        max_bundle,
        max_mtu,
        identity,
    })
}

fn parse_link_config(r: &mut Reader<'_>) -> Result<LinkConfig, FrameError> {
    let flags = r.u8()?;
    let prefix4 = r.u8()?;
    let prefix6 = r.u8()?;
    let ndns = r.u8()? as usize;
    let mtu = r.u32()?;
    let a4 = Ipv4Addr::from(r.array::<4>()?);
    let g4 = Ipv4Addr::from(r.array::<4>()?);
    let a6 = Ipv6Addr::from(r.array::<16>()?);
    let g6 = Ipv6Addr::from(r.array::<16>()?);
    if ndns > MAX_DNS {
        return Err(FrameError::BadControl {
            kind: kind::LINK_CONFIG,
            reason: "too many DNS servers",
        });
    }
    if prefix4 > 32 || prefix6 > 128 {
        return Err(FrameError::BadControl {
            kind: kind::LINK_CONFIG,
            reason: "prefix out of range",
        });
    }
    let mut dns = Vec::with_capacity(ndns);
    for _ in 0..ndns {
        dns.push(r.ip()?);
    }
    Ok(LinkConfig {
        ipv4: (flags & LC_HAS_V4 != 0).then_some(Cidr {
            addr: a4,
            prefix: prefix4,
        }),
        gateway_v4: (flags & LC_HAS_GW4 != 0).then_some(g4),
        ipv6: (flags & LC_HAS_V6 != 0).then_some(Cidr {
            addr: a6,
            prefix: prefix6,
        }),
        gateway_v6: (flags & LC_HAS_GW6 != 0).then_some(g6),
        dns,
        mtu,
    })
}

impl Control {
    /// The wire kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Self::Hello(_) => kind::HELLO,
            Self::LinkConfig(_) => kind::LINK_CONFIG,
            Self::Keepalive(_) => kind::KEEPALIVE,
            Self::KeepaliveAck(_) => kind::KEEPALIVE_ACK,
            Self::Stats(_) => kind::STATS,
            Self::Bye(_) => kind::BYE,
            Self::Unknown { kind } => *kind,
        }
    }

    /// Parses a control record's payload. Trailing bytes after the known fields are ignored.
    pub fn parse(payload: &[u8]) -> Result<Self, FrameError> {
        let Some((&k, body)) = payload.split_first() else {
            return Err(FrameError::BadControl {
                kind: 0,
                reason: "empty control record",
            });
        };
        let mut r = Reader {
            buf: body,
            pos: 0,
            kind: k,
        };
        Ok(match k {
            kind::HELLO => Self::Hello(parse_hello(&mut r)?),
            kind::LINK_CONFIG => Self::LinkConfig(parse_link_config(&mut r)?),
            kind::KEEPALIVE | kind::KEEPALIVE_ACK => {
                let seq = r.u32()?;
                let _reserved = r.u32()?;
                let ka = Keepalive {
                    seq,
                    timestamp_us: r.u64()?,
                };
                if k == kind::KEEPALIVE {
                    Self::Keepalive(ka)
                } else {
                    Self::KeepaliveAck(ka)
                }
            }
            kind::STATS => {
                let n = r.u16()? as usize;
                let _reserved = r.u16()?;
                if n > MAX_STATS {
                    return Err(FrameError::BadControl {
                        kind: k,
                        reason: "too many counters",
                    });
                }
                let mut counters = Vec::with_capacity(n);
                for _ in 0..n {
                    counters.push((StatId(r.u32()?), r.u64()?));
                }
                Self::Stats(Stats { counters })
            }
            kind::BYE => {
                let reason = ByeReason::from_u8(r.u8()?);
                Self::Bye(Bye {
                    reason,
                    message: r.text()?,
                })
            }
            kind => Self::Unknown { kind },
        })
    }

    /// Checks that the message can be encoded (lists within their limits, prefixes in range).
    pub fn check(&self) -> Result<(), FrameError> {
        match self {
            Self::LinkConfig(lc) if lc.dns.len() > MAX_DNS => Err(FrameError::TooLarge {
                len: lc.dns.len(),
                max: MAX_DNS,
            }),
            Self::Stats(s) if s.counters.len() > MAX_STATS => Err(FrameError::TooLarge {
                len: s.counters.len(),
                max: MAX_STATS,
            }),
            Self::LinkConfig(lc)
                if lc.ipv4.is_some_and(|c| c.prefix > 32)
                    || lc.ipv6.is_some_and(|c| c.prefix > 128) =>
            {
                Err(FrameError::BadControl {
                    kind: kind::LINK_CONFIG,
                    reason: "prefix out of range",
                })
            }
            _ => Ok(()),
        }
    }

    /// Size of the encoded payload (kind byte included). Lists beyond their limits are cut at the
    /// limit (see [`check`](Self::check)) and texts at [`MAX_TEXT_LEN`] bytes.
    pub fn buffer_len(&self) -> usize {
        1 + match self {
            Self::Hello(h) => HELLO_FIXED_LEN + 1 + truncate_text(&h.identity).len(),
            Self::LinkConfig(lc) => {
                LC_FIXED_LEN + lc.dns.iter().take(MAX_DNS).map(ip_len).sum::<usize>()
            }
            Self::Keepalive(_) | Self::KeepaliveAck(_) => 16,
            Self::Stats(s) => 4 + 12 * s.counters.len().min(MAX_STATS),
            Self::Bye(b) => 2 + truncate_text(&b.message).len(),
            Self::Unknown { .. } => 0,
        }
    }

    /// Encodes into `buf`, which must be at least [`buffer_len`](Self::buffer_len) bytes.
    ///
    /// # Panics
    /// If `buf` is shorter than `buffer_len()`.
    pub fn emit(&self, buf: &mut [u8]) {
        let mut w = Writer { buf, pos: 0 };
        w.u8(self.kind());
        match self {
            Self::Hello(h) => {
                w.bytes(&HELLO_MAGIC);
                w.u8(h.version);
                w.u8(h.role.to_u8());
                w.u8(h.flags);
                w.u8(0);
                w.u32(h.capabilities.0);
                w.u32(h.max_bundle);
                w.u32(h.max_mtu);
                w.text(&h.identity);
            }
            Self::LinkConfig(lc) => {
                let dns = &lc.dns[..lc.dns.len().min(MAX_DNS)];
                let flags = [
                    (lc.ipv4.is_some(), LC_HAS_V4),
                    (lc.gateway_v4.is_some(), LC_HAS_GW4),
                    (lc.ipv6.is_some(), LC_HAS_V6),
                    (lc.gateway_v6.is_some(), LC_HAS_GW6),
                ]
                .iter()
                .filter(|(present, _)| *present)
                .fold(0, |acc, (_, bit)| acc | bit);
                w.u8(flags);
                w.u8(lc.ipv4.map_or(0, |c| c.prefix));
                w.u8(lc.ipv6.map_or(0, |c| c.prefix));
                w.u8(dns.len() as u8);
                w.u32(lc.mtu);
                w.bytes(&lc.ipv4.map_or(Ipv4Addr::UNSPECIFIED, |c| c.addr).octets());
                w.bytes(&lc.gateway_v4.unwrap_or(Ipv4Addr::UNSPECIFIED).octets());
                w.bytes(&lc.ipv6.map_or(Ipv6Addr::UNSPECIFIED, |c| c.addr).octets());
                w.bytes(&lc.gateway_v6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets());
                for a in dns {
                    w.ip(a);
                }
            }
            Self::Keepalive(k) | Self::KeepaliveAck(k) => {
                w.u32(k.seq);
                w.u32(0);
                w.u64(k.timestamp_us);
            }
            Self::Stats(s) => {
                let c = &s.counters[..s.counters.len().min(MAX_STATS)];
                w.u16(c.len() as u16);
                w.u16(0);
                for (id, v) in c {
                    w.u32(id.0);
                    w.u64(*v);
                }
            }
            Self::Bye(b) => {
                w.u8(b.reason.to_u8());
                w.text(&b.message);
            }
            Self::Unknown { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// Board Hello: version 1, caps IPV6|STATS, max bundle 65536, max MTU 16384, identity "sn1".
    static HELLO_BYTES: [u8; 25] = [
        0x01, b'Q', b'B', b'K', b'N', 0x01, 0x01, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x00, 0x40, 0x00, 0x00, 0x03, b's', b'n', b'1',
    ];

    fn hello() -> Control {
        Control::Hello(crate::testing::board_hello("sn1"))
    }

    /// The default board configuration with one IPv4 and one IPv6 DNS server.
    static LINK_CONFIG_BYTES: [u8; 71] = [
        0x02, 0x0f, 24, 64, 0x02, 0x00, 0x40, 0x00, 0x00, // kind, flags, prefixes, ndns, mtu
        10, 47, 0, 2, 10, 47, 0, 1, // ipv4, gateway_v4
        0xfd, 0x47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // ipv6
        0xfd, 0x47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // gateway_v6
        4, 10, 47, 0, 1, // dns[0]
        6, 0xfd, 0x47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // dns[1]
    ];

    fn link_config() -> Control {
        Control::LinkConfig(crate::testing::link_config_dual_stack())
    }

    static KEEPALIVE_BYTES: [u8; 17] = [
        0x03, 0x07, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
    ];
    const KA: Keepalive = Keepalive {
        seq: 7,
        timestamp_us: 0x0102_0304_0506_0708,
    };

    static STATS_BYTES: [u8; 29] = [
        0x05, 0x02, 0x00, 0x00, 0x00, // kind, count, reserved
        0x01, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, // RX_BUNDLES = 10
        0x07, 0, 0, 0, 0x00, 0x01, 0, 0, 0, 0, 0, 0, // RX_ERRORS = 256
    ];

    static BYE_BYTES: [u8; 6] = [0x06, 0x01, 0x03, b'b', b'y', b'e'];

    fn fixtures() -> Vec<(&'static [u8], Control)> {
        let mut ack = KEEPALIVE_BYTES;
        ack[0] = kind::KEEPALIVE_ACK;
        let ack: &'static [u8] = alloc::boxed::Box::leak(alloc::boxed::Box::new(ack));
        vec![
            (&HELLO_BYTES[..], hello()),
            (&LINK_CONFIG_BYTES[..], link_config()),
            (&KEEPALIVE_BYTES[..], Control::Keepalive(KA)),
            (ack, Control::KeepaliveAck(KA)),
            (
                &STATS_BYTES[..],
                Control::Stats(Stats {
                    counters: vec![(StatId::RX_BUNDLES, 10), (StatId::RX_ERRORS, 256)],
                }),
            ),
            (
                &BYE_BYTES[..],
                Control::Bye(Bye {
                    reason: ByeReason::Shutdown,
                    message: "bye".into(),
                }),
            ),
        ]
    }

    #[test]
    fn deconstruct_every_kind() {
        for (bytes, want) in fixtures() {
            assert_eq!(Control::parse(bytes).unwrap(), want, "{bytes:02x?}");
            assert_eq!(Control::parse(bytes).unwrap().kind(), bytes[0]);
        }
    }

    #[test]
    fn construct_every_kind() {
        for (bytes, msg) in fixtures() {
            assert_eq!(msg.check(), Ok(()));
            assert_eq!(msg.buffer_len(), bytes.len(), "{msg:?}");
            let mut buf = vec![0xAA; msg.buffer_len()];
            msg.emit(&mut buf);
            assert_eq!(buf, bytes, "{msg:?}");
        }
    }

    #[test]
    fn round_trip_every_kind() {
        for (_, msg) in fixtures() {
            let mut buf = vec![0; msg.buffer_len()];
            msg.emit(&mut buf);
            assert_eq!(Control::parse(&buf).unwrap(), msg);
        }
    }

    #[test]
    fn every_strict_prefix_is_an_error() {
        for (bytes, _) in fixtures() {
            for n in 0..bytes.len() {
                assert!(
                    matches!(
                        Control::parse(&bytes[..n]),
                        Err(FrameError::BadControl { .. })
                    ),
                    "prefix {n} of {bytes:02x?}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        for (bytes, want) in fixtures() {
            let mut longer = bytes.to_vec();
            longer.extend_from_slice(&[0xff; 9]);
            assert_eq!(Control::parse(&longer).unwrap(), want);
        }
    }

    #[test]
    fn unknown_kind_is_a_value_not_an_error() {
        assert_eq!(
            Control::parse(&[0x7f, 1, 2, 3]),
            Ok(Control::Unknown { kind: 0x7f })
        );
        let msg = Control::Unknown { kind: 0x7f };
        assert_eq!(msg.buffer_len(), 1);
        let mut buf = [0; 1];
        msg.emit(&mut buf);
        assert_eq!(buf, [0x7f]);
    }

    #[test]
    fn unknown_role_and_reason_survive() {
        let mut b = HELLO_BYTES;
        b[6] = 9;
        let Ok(Control::Hello(h)) = Control::parse(&b) else {
            panic!("hello did not parse")
        };
        assert_eq!(h.role, Role::Unknown(9));
        assert_eq!(
            Control::parse(&[kind::BYE, 42, 0]),
            Ok(Control::Bye(Bye {
                reason: ByeReason::Unknown(42),
                message: String::new()
            }))
        );
    }

    #[test]
    fn malformed_bodies() {
        let bad = |bytes: &[u8], why: &'static str| {
            assert_eq!(
                Control::parse(bytes),
                Err(FrameError::BadControl {
                    kind: bytes[0],
                    reason: why
                }),
                "{bytes:02x?}"
            );
        };
        let mut b = HELLO_BYTES;
        b[1] = b'X';
        bad(&b, "bad Hello magic");
        let mut b = HELLO_BYTES;
        b[22] = 0xff; // invalid UTF-8 in identity
        bad(&b, "text is not UTF-8");
        let mut b = LINK_CONFIG_BYTES;
        b[49] = 5; // dns[0] family
        bad(&b, "bad address family");
        let mut b = LINK_CONFIG_BYTES;
        b[4] = MAX_DNS as u8 + 1;
        bad(&b, "too many DNS servers");
        let mut b = LINK_CONFIG_BYTES;
        b[2] = 33;
        bad(&b, "prefix out of range");
        let mut b = LINK_CONFIG_BYTES;
        b[3] = 129;
        bad(&b, "prefix out of range");
        let mut b = STATS_BYTES;
        b[1] = MAX_STATS as u8 + 1;
        bad(&b, "too many counters");
        assert_eq!(
            Control::parse(&[]),
            Err(FrameError::BadControl {
                kind: 0,
                reason: "empty control record"
            })
        );
    }

    #[test]
    fn link_config_absent_fields() {
        let lc = Control::LinkConfig(LinkConfig {
            mtu: 1500,
            ..LinkConfig::default()
        });
        let mut buf = vec![0; lc.buffer_len()];
        lc.emit(&mut buf);
        assert_eq!(buf.len(), 1 + LC_FIXED_LEN);
        assert_eq!(&buf[1..5], &[0, 0, 0, 0]);
        assert_eq!(Control::parse(&buf).unwrap(), lc);
    }

    #[test]
    fn check_and_emit_limits() {
        let many_dns = Control::LinkConfig(LinkConfig {
            dns: vec![IpAddr::V4(Ipv4Addr::LOCALHOST); MAX_DNS + 1],
            ..LinkConfig::default()
        });
        assert_eq!(
            many_dns.check(),
            Err(FrameError::TooLarge {
                len: MAX_DNS + 1,
                max: MAX_DNS
            })
        );
        // Emit cuts the list at the limit, so the output still parses.
        let mut buf = vec![0; many_dns.buffer_len()];
        many_dns.emit(&mut buf);
        let Ok(Control::LinkConfig(lc)) = Control::parse(&buf) else {
            panic!("cut LinkConfig did not parse")
        };
        assert_eq!(lc.dns.len(), MAX_DNS);

        let many_stats = Control::Stats(Stats {
            counters: vec![(StatId::TX_DROPS, 1); MAX_STATS + 1],
        });
        assert!(many_stats.check().is_err());
        let mut buf = vec![0; many_stats.buffer_len()];
        many_stats.emit(&mut buf);
        assert!(
            matches!(Control::parse(&buf), Ok(Control::Stats(s)) if s.counters.len() == MAX_STATS)
        );

        let bad_prefix = Control::LinkConfig(LinkConfig {
            ipv4: Some(Cidr {
                addr: Ipv4Addr::LOCALHOST,
                prefix: 33,
            }),
            ..LinkConfig::default()
        });
        assert!(bad_prefix.check().is_err());

        // Texts are cut at MAX_TEXT_LEN bytes on a character boundary.
        let long = Control::Bye(Bye {
            reason: ByeReason::Shutdown,
            message: "é".repeat(200),
        });
        let mut buf = vec![0; long.buffer_len()];
        long.emit(&mut buf);
        let Ok(Control::Bye(b)) = Control::parse(&buf) else {
            panic!("long Bye did not parse")
        };
        assert_eq!(b.message.len(), MAX_TEXT_LEN - 1);
        assert_eq!(b.message, "é".repeat(127));
    }
}
