//! The one error type of the wire format. Every decoder in this crate returns it; it says what was
//! wrong and where, so a counter, a log line or a fuzz crash tells the cause.

use core::fmt;

/// Everything that can be wrong with bytes received from a peer.
///
/// Decoding is total: any byte sequence yields a value or one of these, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the structure needs.
    Truncated {
        /// Bytes the structure needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The bundle does not start with the `QK` magic: not a qbkit peer, or a desynchronised stream.
    BadMagic([u8; 2]),
    /// The bundle header carries a framing version this build does not speak.
    BadVersion(u8),
    /// The bundle header's length is below the header size, not a multiple of 4, or above the limit.
    BadLength {
        /// The length field.
        len: u32,
        /// The largest bundle accepted.
        max: usize,
    },
    /// A USB transfer's size is neither the bundle's length nor the length plus the 4-byte pad.
    LengthMismatch {
        /// Length given by the bundle header.
        header: usize,
        /// Size of the transfer.
        actual: usize,
    },
    /// A record's length runs past the end of its bundle. Records after it are lost.
    RecordOverflow {
        /// Offset of the record header within the bundle.
        offset: usize,
        /// The record's payload length.
        len: usize,
    },
    /// Record kind 0 is reserved and never valid.
    BadRecordKind(u8),
    /// An IP record with an empty payload.
    EmptyPacket,
    /// A control message's body is malformed.
    BadControl {
        /// The control kind.
        kind: u8,
        /// What is wrong.
        reason: &'static str,
    },
    /// A value is too large to encode (string, DNS list, record payload).
    TooLarge {
        /// The length asked for.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer's Hello announces a protocol version outside the range this build speaks.
    UnsupportedPeerVersion {
        /// The peer's highest version.
        peer: u8,
        /// The lowest version this build speaks.
        min: u8,
        /// The highest version this build speaks.
        max: u8,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { need, have } => {
                write!(f, "truncated: need {need} bytes, have {have}")
            }
            Self::BadMagic(m) => write!(
                f,
                "bad bundle magic {:02x}{:02x} (expected 514b \"QK\")",
                m[0], m[1]
            ),
            Self::BadVersion(v) => {
                write!(f, "unsupported framing version {v} (this build speaks 1)")
            }
            Self::BadLength { len, max } => {
                write!(
                    f,
                    "bad bundle length {len} (must be 8..={max} and a multiple of 4)"
                )
            }
            Self::LengthMismatch { header, actual } => {
                write!(
                    f,
                    "transfer of {actual} bytes carries a bundle of {header} bytes"
                )
            }
            Self::RecordOverflow { offset, len } => {
                write!(
                    f,
                    "record at offset {offset} with {len} payload bytes overruns its bundle"
                )
            }
            Self::BadRecordKind(k) => write!(f, "invalid record kind {k}"),
            Self::EmptyPacket => f.write_str("empty IP packet record"),
            Self::BadControl { kind, reason } => {
                write!(f, "malformed control message {kind}: {reason}")
            }
            Self::TooLarge { len, max } => {
                write!(f, "value of {len} bytes exceeds the limit of {max}")
            }
            Self::UnsupportedPeerVersion { peer, min, max } => write!(
                f,
                "peer speaks protocol version {peer}, this build speaks {min}..={max}; \
                 update qbkit-gadget and qbkit-host to the same release"
            ),
        }
    }
}

impl core::error::Error for FrameError {}

/// The bundle has no room for another record of the requested size. Finish it and start a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bundle full")
    }
}

impl core::error::Error for Full {}
