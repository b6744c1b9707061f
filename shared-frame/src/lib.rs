//! qbkit-net wire format: bundles of records on USB transfers and byte streams, control messages,
//! and the sans-IO link session both ends run.
//!
//! ```text
//!  one USB transfer = one bundle            (a byte stream carries bundles back to back)
//!  ┌────────────── bundle header (8) ──────────────┐
//!  │ 'Q' 'K' │ version=1 │ flags=0 │ length u32 LE │   length = header + records, multiple of 4
//!  ├──────── record header (4) ────────┬───────────┤
//!  │ kind u8 │ channel u8 │ len u16 LE │ payload … │ pad to 4 │   kind 1 = IP packet, 2 = control
//!  ├───────────────────────────────────┴───────────┤
//!  │ … more records …                              │
//!  └───────────────────────────────────────────────┘
//!  [4 zero bytes]  only on USB, when the transfer would otherwise end on wMaxPacketSize
//! ```
//!
//! See `docs/protocol.md` for the byte tables, negotiation, limits and error handling.
//!
//! - [`bundle`]: zero-copy [`Bundle`] view with [`Bundle::new_checked`], [`BundleWriter`] that appends
//!   records into a caller-owned buffer, and the ZLP rule ([`needs_zlp`]).
//! - [`control`]: [`Control`] messages (`parse` / `buffer_len` / `emit`).
//! - [`stream`]: [`StreamDecoder`], incremental and bounded.
//! - [`session`]: [`Session`], the Hello / LinkConfig / Keepalive / Bye state machine.
//! - [`endpoint`]: [`Endpoint`], one end of a link (session + framing + outgoing bundle assembly),
//!   which the board's pump and the host's core both wrap.
//! - [`usb_id`]: the board's USB identity (VID:PID, class, strings, MS OS descriptor values).
//!
//! Decoding is total: any input yields a value or a [`FrameError`], never a panic (fuzzed).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod bundle;
pub mod control;
pub mod endpoint;
mod error;
pub mod log_limit;
pub mod session;
pub mod stream;
#[doc(hidden)]
pub mod testing;
mod time;
pub mod usb_id;

pub use bundle::{
    BUNDLE_HEADER_LEN, Bundle, BundleWriter, CHANNEL_NET, DEFAULT_MAX_BUNDLE, Framing,
    MAX_BUNDLE_LIMIT, MAX_RECORD_PAYLOAD, MIN_MAX_BUNDLE, RECORD_HEADER_LEN, Record, RecordKind,
    USB_PAD_LEN, max_packet, needs_zlp,
};
pub use control::{
    Bye, ByeReason, Capabilities, Cidr, Control, Hello, Keepalive, LinkConfig, PROTOCOL_VERSION,
    Role, StatId, Stats,
};
pub use endpoint::{Endpoint, Transmit};
pub use error::{FrameError, Full};
pub use log_limit::{LOG_INTERVAL, LogLimit};
pub use session::{
    Counters, DEFAULT_MTU, DownReason, LinkState, Negotiated, Session, SessionConfig, SessionEvent,
};
pub use stream::StreamDecoder;
pub use time::Instant;
