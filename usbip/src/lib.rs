//! qbkit-usbip: the USB/IP client codec (filled in by the Qubes/USB-IP issue).
#![forbid(unsafe_code)]
