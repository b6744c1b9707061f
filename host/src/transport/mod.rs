//! Transports: the link tasks of qbkit-host. Each one reports `qbkit_link::LinkEvent`s on one
//! channel to [`crate::driver`], which never knows which transport it talks to (the contract, and
//! the stream link task both programs run, are in `qbkit_link::task`): the board on USB in [`usb`]
//! over `qbkit-usb`, the board over USB/IP or a Qubes qubes.USB service in [`usbip`], and stream
//! links (`qbkit_link::run_stream`).

pub mod usb;
pub mod usbip;

use std::fmt;

pub use qbkit_link::{BufPool, LinkEvent, LinkUp};
use qbkit_link::{LinkError, LinkUrl};
pub use shared_frame::Framing;

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
