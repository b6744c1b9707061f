//! Shared bits of the VM test tools: the test device id, the data pattern both sides check, and
//! the vendor control requests ffs-dev answers (usb-probe sends them).
//!
//! Data flow: usb-probe writes `pattern` chunks to bulk OUT, ffs-dev checks each transfer against
//! `pattern` and counts; ffs-dev sends `pattern` chunks on bulk IN, usb-probe checks them; the
//! counters come back through `REQ_STATS`.

/// Test-only pid.codes id of the probe gadget (the product uses 1209:0001).
pub const VID: u16 = 0x1209;
/// See [`VID`].
pub const PID: u16 = 0x0002;
/// Bulk transfer size used by both sides.
pub const CHUNK: usize = 64 * 1024;

/// Vendor control OUT stores data, IN returns it.
pub const REQ_ECHO: u8 = 1;
/// Vendor control IN: 24 bytes, little endian u64 rx_bytes, rx_bad_transfers, tx_bytes.
pub const REQ_STATS: u8 = 2;
/// Vendor control OUT: the gadget stops.
pub const REQ_STOP: u8 = 255;

/// The byte pattern of every bulk transfer, restarting at each transfer.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Parses `VVVV:PPPP` (hex).
pub fn parse_vid_pid(s: &str) -> Result<(u16, u16), String> {
    let (v, p) = s
        .split_once(':')
        .ok_or_else(|| format!("expected VID:PID, got {s}"))?;
    let v = u16::from_str_radix(v, 16).map_err(|e| format!("bad VID {v}: {e}"))?;
    let p = u16::from_str_radix(p, 16).map_err(|e| format!("bad PID {p}: {e}"))?;
    Ok((v, p))
}
