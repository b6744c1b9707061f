//! The codec's error type. Every parser and the [`Client`](crate::Client) return it; each variant says
//! what the peer sent (or what the caller asked for) that cannot be handled, so a log line, a counter
//! or a fuzz crash tells the cause. The codec never does I/O, so no variant carries an OS error.

/// Everything that can be wrong with USB/IP bytes from a peer, or with a request to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Fewer bytes than the message needs (one-shot parsers; the incremental ones wait instead).
    #[error("truncated USB/IP message: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the message needs (as far as is known from what arrived).
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// An OP_* message carries a protocol version other than v1.1.1 (0x0111).
    #[error(
        "USB/IP version {0:#06x} from the peer; only v1.1.1 (0x0111) is spoken. \
         Is the peer a usbipd, and is this the right port?"
    )]
    BadVersion(u16),
    /// An OP_* reply with a code other than the one expected for the request.
    #[error("expected USB/IP reply code {expected:#06x}, got {got:#06x}")]
    UnexpectedReply {
        /// The reply code that answers the request.
        expected: u16,
        /// The code received.
        got: u16,
    },
    /// The server refused an operation (status field not 0).
    #[error(
        "usbipd refused {op} (status {status}): the bus id is not exported (`usbip bind`), \
         already attached elsewhere, or the device is gone"
    )]
    OpRefused {
        /// The operation: "device list" or "import".
        op: &'static str,
        /// The status field (1 = ST_NA, 2 = ST_DEV_BUSY, 3 = ST_DEV_ERR, 4 = ST_NODEV, 5 = ST_ERROR).
        status: u32,
    },
    /// A device list longer than this client accepts.
    #[error("device list announces {n} devices, limit {max}")]
    TooManyDevices {
        /// The count announced.
        n: u32,
        /// The limit.
        max: u32,
    },
    /// A command code on the URB stream that is not RET_SUBMIT or RET_UNLINK (or, for a server-side
    /// parser, not CMD_SUBMIT or CMD_UNLINK). The stream is desynchronised.
    #[error(
        "unexpected USB/IP command {0:#010x} on the URB stream (desynchronised or not a USB/IP peer)"
    )]
    BadCommand(u32),
    /// A reply for a sequence number that has no URB in flight.
    #[error("reply for seqnum {0}, which has no URB in flight")]
    UnknownSeqnum(u32),
    /// A reply announcing more data than the URB asked for (or a length beyond the limit).
    #[error("reply for seqnum {seqnum} carries {actual} bytes, the URB asked for {requested}")]
    Overflow {
        /// The URB's sequence number.
        seqnum: u32,
        /// The actual_length received.
        actual: u32,
        /// The buffer length submitted.
        requested: u32,
    },
    /// A reply with isochronous packet descriptors; this client never submits isochronous URBs.
    #[error(
        "reply for seqnum {seqnum} announces {packets} isochronous packets; none were submitted"
    )]
    Isochronous {
        /// The URB's sequence number.
        seqnum: u32,
        /// The number_of_packets field.
        packets: u32,
    },
    /// A field that must hold one of a few values holds another.
    #[error("bad {field} value {value:#x} in USB/IP {message}")]
    BadField {
        /// The message type.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// The value received.
        value: u32,
    },
    /// The client already has its maximum number of URBs in flight.
    #[error("{max} URBs already in flight; wait for a completion")]
    InFlightLimit {
        /// The limit ([`ClientConfig::max_in_flight`](crate::ClientConfig::max_in_flight)).
        max: usize,
    },
    /// A transfer larger than the configured limit.
    #[error("transfer of {len} bytes exceeds the limit of {max}")]
    TransferTooLarge {
        /// The length asked for.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A control transfer whose setup packet and data disagree.
    #[error("bad control transfer: {0}")]
    BadSetup(&'static str),
    /// An endpoint number outside 1..=15 (bulk) or a direction bit where none belongs.
    #[error("bad endpoint {0:#04x} (bulk endpoints are 1..=15, direction comes from the call)")]
    BadEndpoint(u8),
    /// `unlink` for a sequence number that has no URB in flight.
    #[error("seqnum {0} has no URB in flight to unlink")]
    NotInFlight(u32),
    /// The peer closed the stream while URBs were in flight or in the middle of a message.
    #[error(
        "USB/IP peer closed the connection with {in_flight} URBs in flight and {partial} bytes of an \
         unfinished message"
    )]
    PeerClosed {
        /// URBs that never completed.
        in_flight: usize,
        /// Bytes of a message that never finished.
        partial: usize,
    },
    /// A malformed USB descriptor from the device.
    #[error("malformed USB descriptor: {0}")]
    BadDescriptor(&'static str),
    /// An earlier error left the URB stream desynchronised; the connection must be closed.
    #[error("USB/IP stream already failed: {0}")]
    Failed(Box<Self>),
}
