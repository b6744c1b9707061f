//! Errors of the USB transport, with the fix the user needs (install the udev rule, install the
//! WinUSB INF, stop the other program) and the OS code kept from nusb.
//!
//! Data flow: nusb returns `nusb::Error` (open, claim, configure) or `TransferError` (completions);
//! [`classify`] decides what the failure means from its kind alone (pure, unit-tested), and the
//! constructors here attach the board's bus path.

use std::fmt;

use nusb::ErrorKind;
use nusb::transfer::TransferError;

/// Fix for "permission denied" on Linux (udev rule shipped in `udev/`).
pub const LINUX_PERMISSION_ADVICE: &str = "install the udev rule from the qbkit-net source tree, then unplug and replug the board: \
sudo install -m 0644 udev/70-qbkit.rules /etc/udev/rules.d/ && sudo udevadm control --reload-rules && sudo udevadm trigger --subsystem-match=usb --attr-match=idVendor=1209";

/// Fix for "no WinUSB driver" on Windows.
pub const WINDOWS_DRIVER_ADVICE: &str = "Windows has not bound WinUSB to the board. Windows 8 and later do this by themselves \
from the board's Microsoft OS descriptors (replug the board, or check it runs qbkit-gadget); on Windows 7 install \
windows-inf\\qbkit.inf (right-click → Install, or `pnputil -i -a windows-inf\\qbkit.inf` as administrator)";

/// Errors of the USB transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsbError {
    /// No attached device matches the filter.
    #[error("no qbkit board found (USB {vid:04x}:{pid:04x}{}); is it plugged in and running qbkit-gadget?", SerialSuffix(serial.as_deref()))]
    NotFound {
        /// Vendor ID searched for.
        vid: u16,
        /// Product ID searched for.
        pid: u16,
        /// Serial number searched for, if any.
        serial: Option<String>,
    },
    /// More than one board matches and no serial number was given.
    #[error("{} qbkit boards found (serials: {}); choose one with --serial", serials.len(), SerialList(serials))]
    Ambiguous {
        /// Serial numbers of the matching boards (`?` where a board has none).
        serials: Vec<String>,
    },
    /// The OS refused access to the device node.
    #[error("permission denied opening the board at {path}: {advice}")]
    PermissionDenied {
        /// Bus path of the board.
        path: String,
        /// What to do about it on this OS.
        advice: &'static str,
        /// The OS error.
        #[source]
        source: nusb::Error,
    },
    /// Another program (or a kernel driver) holds the interface.
    #[error(
        "the board's interface at {path} is in use by another program (another qbkit-host?); stop it and retry"
    )]
    Busy {
        /// Bus path of the board.
        path: String,
        /// The OS error.
        #[source]
        source: nusb::Error,
    },
    /// Windows: the device is not bound to WinUSB.
    #[error("cannot open the board at {path}: {advice}")]
    DriverMissing {
        /// Bus path of the board.
        path: String,
        /// What to do about it.
        advice: &'static str,
        /// The OS error, when there was one.
        #[source]
        source: Option<nusb::Error>,
    },
    /// The device has the right IDs but no vendor interface with a bulk IN/OUT pair.
    #[error(
        "the device at {path} has no vendor-class interface with bulk IN and OUT endpoints; is it running qbkit-gadget?"
    )]
    NoInterface {
        /// Bus path of the device.
        path: String,
    },
    /// The OS would not list the USB devices (no /sys/bus/usb in a container, say): no board yet.
    #[error(
        "cannot list the USB devices: {source} (in a container or VM, is USB passed through? /sys/bus/usb must exist)"
    )]
    ListDevices {
        /// The OS error.
        #[source]
        source: nusb::Error,
    },
    /// Another USB operation failed.
    #[error("USB {op} failed for the board at {path}")]
    Usb {
        /// Bus path of the board.
        path: String,
        /// The operation (`open`, `claim interface`, `set configuration`, `list devices`, …).
        op: &'static str,
        /// The OS error (kind and OS code).
        #[source]
        source: nusb::Error,
    },
    /// The board is attached but has no active configuration yet. On Linux the kernel selects
    /// one moments after the arrival event; setting it from here as well would race the kernel,
    /// whose own set-configuration then resets the interface under our claimed endpoints.
    #[error("the board at {path} is not configured yet")]
    Unconfigured {
        /// Bus path of the board.
        path: String,
    },
    /// The board went away (unplugged, reset, or its gadget stopped). Wait for it to come back.
    #[error("the board at {path} disconnected")]
    Disconnected {
        /// Bus path of the board.
        path: String,
    },
    /// A bulk transfer failed for a reason other than disconnection (stall, protocol fault).
    #[error("USB transfer on endpoint {endpoint:#04x} of the board at {path} failed")]
    Transfer {
        /// Bus path of the board.
        path: String,
        /// Endpoint address.
        endpoint: u8,
        /// What nusb reported.
        #[source]
        source: TransferError,
    },
    /// A bundle larger than the negotiated transfer size was given to `send_bundle`.
    #[error("bundle of {len} bytes exceeds the USB transfer size {max}")]
    TooLarge {
        /// Bundle length.
        len: usize,
        /// Transfer size of the link.
        max: usize,
    },
}

/// What an OS error kind means for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    PermissionDenied,
    Busy,
    Disconnected,
    DriverMissing,
    Other,
}

/// Classifies an open/claim error by its kind. On Windows, "unsupported" from open or claim means
/// the device is bound to a driver other than WinUSB (nusb can only talk through WinUSB there).
pub(crate) fn classify(kind: ErrorKind, windows: bool) -> Class {
    match kind {
        ErrorKind::PermissionDenied => Class::PermissionDenied,
        ErrorKind::Busy => Class::Busy,
        ErrorKind::Disconnected | ErrorKind::NotFound => Class::Disconnected,
        ErrorKind::Unsupported if windows => Class::DriverMissing,
        _ => Class::Other,
    }
}

/// The fix for "permission denied" on this OS.
pub const fn permission_advice() -> &'static str {
    if cfg!(target_os = "linux") {
        LINUX_PERMISSION_ADVICE
    } else if cfg!(windows) {
        "run from an account that may use USB devices, or check that no policy blocks them"
    } else {
        "check that this user may open USB devices"
    }
}

impl UsbError {
    /// Maps an open/configure/claim error, attaching the board's path and the right advice.
    pub(crate) fn from_open(path: &str, op: &'static str, source: nusb::Error) -> Self {
        let path = path.to_owned();
        match classify(source.kind(), cfg!(windows)) {
            Class::PermissionDenied => Self::PermissionDenied {
                path,
                advice: permission_advice(),
                source,
            },
            Class::Busy => Self::Busy { path, source },
            Class::Disconnected => Self::Disconnected { path },
            Class::DriverMissing => Self::DriverMissing {
                path,
                advice: WINDOWS_DRIVER_ADVICE,
                source: Some(source),
            },
            Class::Other => Self::Usb { path, op, source },
        }
    }

    /// Maps a failed transfer completion.
    pub(crate) fn from_transfer(path: &str, endpoint: u8, source: TransferError) -> Self {
        match source {
            // Cancelled only happens when a transfer is cancelled, which this transport does only
            // while shutting down or after the device went away.
            TransferError::Disconnected | TransferError::Cancelled => Self::Disconnected {
                path: path.to_owned(),
            },
            source => Self::Transfer {
                path: path.to_owned(),
                endpoint,
                source,
            },
        }
    }

    /// True when the board is gone (wait for it to come back) rather than misbehaving.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Self::Disconnected { .. })
    }
}

struct SerialSuffix<'a>(Option<&'a str>);

impl fmt::Display for SerialSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, " with serial {s}"),
            None => Ok(()),
        }
    }
}

struct SerialList<'a>(&'a [String]);

impl fmt::Display for SerialList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_maps_kinds() {
        assert_eq!(
            classify(ErrorKind::PermissionDenied, false),
            Class::PermissionDenied
        );
        assert_eq!(classify(ErrorKind::Busy, false), Class::Busy);
        assert_eq!(
            classify(ErrorKind::Disconnected, false),
            Class::Disconnected
        );
        assert_eq!(classify(ErrorKind::NotFound, true), Class::Disconnected);
        assert_eq!(classify(ErrorKind::Unsupported, true), Class::DriverMissing);
        assert_eq!(classify(ErrorKind::Unsupported, false), Class::Other);
        assert_eq!(classify(ErrorKind::Other, true), Class::Other);
    }

    #[test]
    fn transfer_errors_map_to_disconnect_or_transfer() {
        assert!(UsbError::from_transfer("1-1", 0x81, TransferError::Disconnected).is_disconnect());
        assert!(UsbError::from_transfer("1-1", 0x81, TransferError::Cancelled).is_disconnect());
        let e = UsbError::from_transfer("1-1", 0x02, TransferError::Stall);
        assert!(!e.is_disconnect());
        assert_eq!(
            e.to_string(),
            "USB transfer on endpoint 0x02 of the board at 1-1 failed"
        );
    }

    #[test]
    fn messages_name_the_fix() {
        let e = UsbError::NotFound {
            vid: 0x1209,
            pid: 1,
            serial: Some("abc".into()),
        };
        assert_eq!(
            e.to_string(),
            "no qbkit board found (USB 1209:0001 with serial abc); is it plugged in and running qbkit-gadget?"
        );
        let e = UsbError::Ambiguous {
            serials: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            e.to_string(),
            "2 qbkit boards found (serials: a, b); choose one with --serial"
        );
        assert!(LINUX_PERMISSION_ADVICE.contains("udev/70-qbkit.rules /etc/udev/rules.d/"));
        assert!(WINDOWS_DRIVER_ADVICE.contains("windows-inf\\qbkit.inf"));
        let e = UsbError::DriverMissing {
            path: "x".into(),
            advice: WINDOWS_DRIVER_ADVICE,
            source: None,
        };
        assert!(e.to_string().contains("pnputil"));
    }
}
