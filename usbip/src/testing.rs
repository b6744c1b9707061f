//! Fixtures shared by this crate's unit tests and the fake usbipd (`fake`): hex dumps to bytes, a
//! RET_SUBMIT on the wire, and the device a dummy_hcd board exports. Not part of the API.
#![allow(clippy::missing_panics_doc, reason = "test support")]

use crate::Speed;
use crate::op::{DeviceInfo, InterfaceInfo};
use crate::urb::{Pdu, RetSubmit};

/// The bytes of a hex dump (white space and other non-hex characters are skipped).
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(char::is_ascii_hexdigit).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A RET_SUBMIT for `seqnum` with `status` and `actual_length`, followed by `data`.
pub fn ret_submit(seqnum: u32, status: i32, actual_length: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Pdu::RetSubmit(RetSubmit {
        seqnum,
        devid: 0,
        direction: 0,
        ep: 0,
        status,
        actual_length,
        start_frame: 0,
        number_of_packets: 0,
        error_count: 0,
    })
    .emit(&mut out);
    out.extend_from_slice(data);
    out
}

/// A qbkit board (1209:0001, high speed) as device 2 on port 1 of dummy_hcd bus `busnum`.
pub fn dummy_hcd_device(
    busnum: u32,
    configuration_value: u8,
    interfaces: Vec<InterfaceInfo>,
) -> DeviceInfo {
    DeviceInfo {
        path: format!("/sys/devices/platform/dummy_hcd.0/usb{busnum}/{busnum}-1"),
        busid: format!("{busnum}-1"),
        busnum,
        devnum: 2,
        speed: Speed::High,
        vendor_id: 0x1209,
        product_id: 0x0001,
        bcd_device: 0x0100,
        class: 0,
        subclass: 0,
        protocol: 0,
        configuration_value,
        num_configurations: 1,
        num_interfaces: u8::try_from(interfaces.len()).unwrap(),
        interfaces,
    }
}
