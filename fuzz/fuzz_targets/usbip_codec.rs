//! Fuzz target: arbitrary bytes as a USB/IP peer's messages. Every OP request and reply parser
//! (import and export directions), the URB header
//! parser and the descriptor walker get the bytes whole; a `Client` with bulk IN, bulk OUT and control
//! URBs in flight gets them split at a data-dependent point. Nothing may panic; completions must carry
//! no more than their URB asked for, and after an error the client must stay failed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qbkit_usbip::{Client, ClientConfig, ClientEvent, Error, SetupPacket, desc, op, urb::Pdu};

fuzz_target!(|data: &[u8]| {
    let _ = op::parse_rep_devlist(data);
    let _ = op::parse_rep_import(data);
    // The application side of a device-side connect reads requests; an export or unexport
    // request re-emits to a request of the same kind and length (strings are normalised: lossy
    // UTF-8, cut at the first NUL, so only the shape is compared).
    if let Ok(Some((req, used))) = op::parse_op_request(data) {
        let mut out = Vec::new();
        match &req {
            op::OpRequest::Export(d) => op::emit_req_export(&mut out, d),
            op::OpRequest::Unexport(d) => op::emit_req_unexport(&mut out, d),
            _ => {}
        }
        if !out.is_empty() {
            assert_eq!(out.len(), used);
            let again =
                op::parse_op_request(&out).map(|r| r.map(|(r, n)| (std::mem::discriminant(&r), n)));
            assert_eq!(again, Ok(Some((std::mem::discriminant(&req), used))));
        }
    }
    let _ = op::parse_rep_export(data);
    let _ = op::parse_rep_unexport(data);
    let _ = Pdu::parse(data);
    let _ = desc::DeviceDescriptor::parse(data);
    if let Ok(c) = desc::parse_configuration(data) {
        let _ = desc::find_vendor_bulk(&c);
    }

    let mut c = Client::new(0x0001_0002, ClientConfig::default());
    for len in [65536, 512, 1, 4096] {
        c.submit_bulk_in(1, len).unwrap();
    }
    c.submit_bulk_out(2, &[0x5a; 512]).unwrap();
    c.submit_control(SetupPacket::get_descriptor(2, 0, 255), &[])
        .unwrap();
    c.unlink(2).unwrap();
    let _ = c.poll_transmit();
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let r = c
        .handle_bytes(&data[..cut])
        .and_then(|()| c.handle_bytes(&data[cut..]));
    while let Some(ev) = c.poll_event() {
        if let ClientEvent::Completed(done) = ev {
            assert_eq!(
                done.data.len(),
                if done.endpoint & 0x80 != 0 {
                    done.actual_length as usize
                } else {
                    0
                }
            );
            assert!(done.actual_length <= 65536);
        }
    }
    if r.is_err() {
        assert!(matches!(c.handle_bytes(&[0]), Err(Error::Failed(_))));
    }
    let _ = c.handle_eof();
});
