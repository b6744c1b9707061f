//! Transports: whatever carries bundles between the board and the driver. A link is "something
//! that delivers received bundles and accepts bundles to send, and can be lost and come back";
//! every transport (stream links in [`stream`], the board on USB in [`usb`] over `crate::usb`, the
//! board over USB/IP or a Qubes qubes.USB service in [`usbip`]) is a task that reports [`LinkEvent`]s
//! on one channel to [`crate::driver`], which never knows which transport it talks to.
//!
//! Data flow: a transport task sends [`LinkEvent::Up`] with a bounded sender for outgoing bundles
//! (its capacity is the number of transfers in flight: while they are all queued the driver stops
//! draining the NAT, so packets aggregate into the next bundle and TCP feels the backpressure),
//! then one [`LinkEvent::Bundle`] per received bundle (one USB transfer, or one bundle cut from a
//! stream), then [`LinkEvent::Down`] when the link is lost; after a reconnect it starts over with
//! `Up`. Bundles are complete `shared_frame` bundles in both directions; [`Framing`] tells the
//! driver how to finish them (USB needs the zero-length-packet pad rule).

pub mod stream;
pub mod usb;
pub mod usbip;

use std::fmt;

use qbkit_link::{LinkError, LinkUrl};
use tokio::sync::mpsc;

/// How bundles are delimited on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// USB bulk: one bundle per transfer, padded so it never ends on `max_packet_size`.
    Usb {
        /// wMaxPacketSize of the bulk OUT endpoint at the current speed.
        max_packet_size: usize,
    },
    /// A byte stream: bundles back to back.
    Stream,
}

/// A link that just came up.
#[derive(Debug)]
pub struct LinkUp {
    /// How to finish bundles for it.
    pub framing: Framing,
    /// Outgoing bundles; capacity = transfers in flight.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// For logs and `status` (peer address, USB bus/port).
    pub description: String,
}

/// What a transport task reports to the driver.
#[derive(Debug)]
pub enum LinkEvent {
    /// A link is attached.
    Up(LinkUp),
    /// One received bundle.
    Bundle(Vec<u8>),
    /// A listening transport is bound here (the real port of a port-0 listener), before any
    /// peer connected: `status` shows it as the transport.
    Listening {
        /// The transport with its bound address, e.g. `tcp-listen://127.0.0.1:36703`.
        url: String,
    },
    /// The link is gone (a new `Up` may follow).
    Down {
        /// Why, for logs and `status`.
        reason: String,
    },
    /// An attempt to establish the link failed before `Up`; the transport retries after a
    /// backoff (and has logged the reason once per change).
    Failed {
        /// Why, for `status`.
        reason: String,
    },
}

/// Depth of the channel from the transport tasks to the driver (received bundles in flight).
pub const EVENT_QUEUE: usize = 8;

/// Which transport `qbkit-host run --transport` selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportSpec {
    /// The board on USB (the default).
    Usb,
    /// A stream link (`tcp://`, `tcp-listen://`, `unix://`, `unix-listen://`, `stdio`, `exec:`).
    Stream(LinkUrl),
    /// The board through the userspace USB/IP client: `usbip://HOST[:PORT]/BUSID` or
    /// `qubes-usb:CMD` (checked; kept as text for `qbkit_usbip::transport::UsbipLink`).
    Usbip(String),
    /// The device-side connect: `usbip-listen://ADDR[:PORT]`, the board dials in and exports
    /// itself (`qbkit-gadget export`); kept as the original text, bound at `addr`. Off loopback
    /// it needs the link key ([`TransportSpec::check_key`]).
    UsbipListen {
        /// The URL as given.
        url: String,
        /// `HOST:PORT` to bind.
        addr: String,
    },
}

/// A `--transport` value that does not parse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// Not one of [`TransportSpec::forms`], or one with a bad address; the message lists them all.
    #[error("invalid transport {url:?}: {reason}; expected one of: {}", TransportSpec::forms().join(", "))]
    Bad {
        /// The text given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A stream link error other than a bad URL.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A USB/IP error other than a bad URL.
    #[error(transparent)]
    Usbip(#[from] qbkit_usbip::transport::TransportError),
}

impl TransportSpec {
    /// Every form `--transport` accepts: the one list `run --help`, every parse error and the
    /// README show.
    pub fn forms() -> Vec<&'static str> {
        [
            "usb",
            "usbip://HOST[:PORT]/BUSID",
            "usbip-listen://ADDR[:PORT]",
            "qubes-usb:COMMAND",
        ]
        .into_iter()
        .chain(LinkUrl::FORMS)
        .collect()
    }

    /// The `--transport` help text, built from [`forms`](Self::forms).
    pub fn help() -> String {
        format!(
            "The link to the board: usb (the board on USB, served again after every replug), \
             the board over USB/IP or a Qubes qubes.USB service, or a stream link. One of: {}",
            Self::forms().join(", ")
        )
    }

    /// Parses `usb`, `usbip://…`, `qubes-usb:…` or a stream link URL (the same syntax as
    /// `qbkit-gadget --link`).
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        if s == "usb" {
            Ok(Self::Usb)
        } else if s.starts_with("usbip-listen://") {
            match qbkit_usbip::transport::parse_listen(s) {
                Ok(addr) => Ok(Self::UsbipListen {
                    url: s.to_owned(),
                    addr,
                }),
                Err(qbkit_usbip::transport::TransportError::BadUrl { url, reason }) => {
                    Err(SpecError::Bad {
                        url,
                        reason: reason.to_owned(),
                    })
                }
                Err(e) => Err(e.into()),
            }
        } else if s.starts_with("usbip://") || s.starts_with("qubes-usb:") {
            match qbkit_usbip::transport::Target::parse(s) {
                Ok(_) => Ok(Self::Usbip(s.to_owned())),
                Err(qbkit_usbip::transport::TransportError::BadUrl { url, reason }) => {
                    Err(SpecError::Bad {
                        url,
                        reason: reason.to_owned(),
                    })
                }
                Err(e) => Err(e.into()),
            }
        } else {
            match LinkUrl::parse(s) {
                Ok(u) => Ok(Self::Stream(u)),
                Err(LinkError::BadUrl { url, reason }) => Err(SpecError::Bad {
                    url,
                    reason: reason.to_owned(),
                }),
                Err(e) => Err(e.into()),
            }
        }
    }
}

impl TransportSpec {
    /// Every network listener off loopback must authenticate its peer: a stream link or
    /// `usbip-listen://` bound to a non-loopback address needs the link key (`--key`).
    pub fn check_key(&self, have_key: bool) -> Result<(), SpecError> {
        match self {
            Self::Stream(url) => Ok(url.check_key(have_key)?),
            Self::UsbipListen { url, addr }
                if !have_key
                    && !addr
                        .parse::<std::net::SocketAddr>()
                        .is_ok_and(|a| a.ip().is_loopback()) =>
            {
                Err(SpecError::Bad {
                    url: url.clone(),
                    reason: "a usbip-listen:// off loopback needs --key FILE (make one with \
                             `qbkit-host keygen FILE`; the board's `qbkit-gadget export` needs \
                             the same file), so only your board can attach"
                        .to_owned(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether `--key` means anything for this transport.
    pub fn takes_key(&self) -> bool {
        matches!(self, Self::Stream(_) | Self::UsbipListen { .. })
    }
}

impl fmt::Display for TransportSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usb => f.write_str("usb"),
            Self::Stream(u) => u.fmt(f),
            Self::Usbip(u) | Self::UsbipListen { url: u, .. } => f.write_str(u),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_spec_parses_usb_and_every_stream_form() {
        assert_eq!(TransportSpec::parse("usb").unwrap(), TransportSpec::Usb);
        let usbip = [
            "usbip://127.0.0.1/1-1",
            "usbip://[::1]:3240/usbip-vudc.0",
            "qubes-usb:qrexec-client-vm sys-usb qubes.USB+2-1",
            "usbip-listen://127.0.0.1:3240",
            "usbip-listen://[::1]",
        ];
        for s in qbkit_link::testing::URLS.into_iter().chain(usbip) {
            let t = TransportSpec::parse(s).unwrap();
            assert_eq!(t.to_string(), s);
        }
        assert!(matches!(
            TransportSpec::parse("usbip://h/1-1").unwrap(),
            TransportSpec::Usbip(_)
        ));
        let bad_usbip = [
            "usbip://host",
            "usbip://h:x/1-1",
            "qubes-usb:",
            "usbip-listen://",
            "usbip-listen://board:1",
        ];
        for bad in qbkit_link::testing::BAD_URLS
            .into_iter()
            .chain(bad_usbip)
            .chain(["foo://x", "USB"])
        {
            let e = TransportSpec::parse(bad).unwrap_err().to_string();
            for form in TransportSpec::forms() {
                assert!(e.contains(form), "{bad}: {e:?} does not name {form}");
            }
        }
    }

    #[test]
    fn usbip_listen_off_loopback_needs_a_key() {
        let lo = TransportSpec::parse("usbip-listen://127.0.0.1").unwrap();
        assert!(lo.check_key(false).is_ok());
        let lan = TransportSpec::parse("usbip-listen://0.0.0.0:3240").unwrap();
        let e = lan.check_key(false).unwrap_err().to_string();
        assert!(e.contains("--key"), "{e}");
        assert!(lan.check_key(true).is_ok());
        assert!(lan.takes_key() && !TransportSpec::Usb.takes_key());
    }

    #[test]
    fn help_and_readme_list_every_form() {
        let help = TransportSpec::help();
        let readme = include_str!("../../../README.md");
        for form in TransportSpec::forms() {
            assert!(help.contains(form), "--help lacks {form}");
            assert!(readme.contains(form), "README.md lacks {form}");
        }
    }
}
