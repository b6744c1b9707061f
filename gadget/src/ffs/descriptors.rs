//! PURE: the qbkit-net FunctionFS interface as data — one vendor-class interface with one bulk OUT
//! and one bulk IN endpoint, full/high/super speed descriptors (SuperSpeed: 1024-byte packets and a
//! companion descriptor allowing bursts), and the MS OS 1.0 extended compat id `WINUSB` plus the
//! `DeviceInterfaceGUID` extended property, so Windows 8+ binds WinUSB without an INF.
//!
//! Data flow: [`interface`] builds the `usb-gadget` [`Interface`] from two endpoint directions (the
//! daemon passes real ones, tests throwaway ones); [`blobs`] renders the exact bytes written to
//! FunctionFS `ep0` (descriptors, then strings). The shell fallback in `configfs/` writes the same
//! bytes (golden-tested in this file).
//!
//! Requires `CONFIG_USB_CONFIGFS_F_FS` on the board.

use usb_gadget::Class;
use usb_gadget::function::custom::{
    Custom, Endpoint, EndpointDirection, Interface, OsExtCompat, OsExtProp,
};

use shared_frame::usb_id::{DEVICE_INTERFACE_GUID, INTERFACE_CLASS, INTERFACE_NAME};

/// Bulk IN transfers queued at once (AIO). Bounded: each holds one bundle (≤ max bundle size).
pub const IN_QUEUE_LEN: u32 = 4;
/// Bulk OUT transfers queued at once (AIO). Bounded: each holds one receive buffer.
pub const OUT_QUEUE_LEN: u32 = 4;
/// SuperSpeed bMaxBurst: 15 means bursts of 16 packets (the maximum for bulk endpoints).
pub const SS_MAX_BURST: u8 = 15;

/// The interface definition with the given endpoint directions: OUT is endpoint 1 (0x01), IN is
/// endpoint 2 (0x82) in FunctionFS numbering; the UDC may assign other physical addresses.
pub fn interface(out_dir: EndpointDirection, in_dir: EndpointDirection) -> Interface {
    let (class, sub, proto) = INTERFACE_CLASS;
    let mut out_ep = Endpoint::bulk(out_dir);
    out_ep.max_burst_ss = SS_MAX_BURST;
    let mut in_ep = Endpoint::bulk(in_dir);
    in_ep.max_burst_ss = SS_MAX_BURST;
    Interface::new(Class::new(class, sub, proto), INTERFACE_NAME)
        .with_endpoint(out_ep)
        .with_endpoint(in_ep)
        .with_os_ext_compat(OsExtCompat::winusb())
        .with_os_ext_prop(OsExtProp::new("DeviceInterfaceGUID", DEVICE_INTERFACE_GUID))
}

/// The `ep0` blobs (descriptors, strings) exactly as the daemon writes them.
///
/// `usb-gadget` chooses the OS descriptor bcdVersion by the running kernel (0x0100 from Linux 6.4,
/// 0x0001 before, matching each kernel's check), so the blob depends on the kernel version.
pub fn blobs() -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let (out_dir_rx, out_dir) = EndpointDirection::host_to_device();
    let (in_dir_tx, in_dir) = EndpointDirection::device_to_host();
    drop((out_dir_rx, in_dir_tx));
    Custom::builder()
        .with_interface(interface(out_dir, in_dir))
        .ffs_descriptors_and_strings()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16le(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn u32le(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Splits `count` standard descriptors starting at `at`; returns them and the next offset.
    fn descs(b: &[u8], mut at: usize, count: u32) -> (Vec<&[u8]>, usize) {
        let mut v = Vec::new();
        for _ in 0..count {
            let len = b[at] as usize;
            v.push(&b[at..at + len]);
            at += len;
        }
        (v, at)
    }

    fn check_speed(d: &[&[u8]], mps: u16, ss: bool) {
        // Interface: bLength 9, INTERFACE, number 0, alt 0, 2 endpoints, ff/51/01, iInterface 1.
        assert_eq!(d[0], &[9, 4, 0, 0, 2, 0xff, 0x51, 0x01, 1]);
        let out = d[1];
        assert_eq!(out.len(), 7);
        assert_eq!(out[1], 5, "ENDPOINT");
        assert_eq!(out[2], 0x01, "bulk OUT is FunctionFS ep1");
        assert_eq!(out[3], 0x02, "bulk");
        assert_eq!(u16le(out, 4), mps);
        let in_idx = if ss { 3 } else { 2 };
        let inp = d[in_idx];
        assert_eq!(inp[1], 5);
        assert_eq!(inp[2], 0x82, "bulk IN is FunctionFS ep2");
        assert_eq!(inp[3], 0x02);
        assert_eq!(u16le(inp, 4), mps);
        assert_eq!(inp[6], 0, "bInterval of bulk IN");
        if ss {
            for comp in [d[2], d[4]] {
                // SS endpoint companion: bLength 6, type 0x30, bMaxBurst 15, no streams, 0.
                assert_eq!(comp, &[6, 0x30, SS_MAX_BURST, 0, 0, 0]);
            }
        }
    }

    #[test]
    fn descriptors_field_by_field() {
        let (b, _) = blobs().unwrap();
        assert_eq!(u32le(&b, 0), 3, "FUNCTIONFS_DESCRIPTORS_MAGIC_V2");
        assert_eq!(u32le(&b, 4) as usize, b.len());
        assert_eq!(
            u32le(&b, 8),
            1 | 2 | 4 | 8,
            "HAS_FS | HAS_HS | HAS_SS | HAS_MS_OS"
        );
        let (fs_n, hs_n, ss_n, os_n) = (u32le(&b, 12), u32le(&b, 16), u32le(&b, 20), u32le(&b, 24));
        assert_eq!((fs_n, hs_n, ss_n, os_n), (3, 3, 5, 2));
        let (fs, at) = descs(&b, 28, fs_n);
        let (hs, at) = descs(&b, at, hs_n);
        let (ss, mut at) = descs(&b, at, ss_n);
        check_speed(&fs, 0, false); // full speed: the UDC fills in its bulk size (64)
        check_speed(&hs, 512, false);
        check_speed(&ss, 1024, true);

        // MS OS 1.0 extended compat id: interface 0, wIndex 4, one function "WINUSB".
        assert_eq!(b[at], 0, "OS descriptor for interface 0");
        let len = u32le(&b, at + 1) as usize;
        let compat = &b[at..at + len];
        assert!(matches!(u16le(compat, 5), 0x0100 | 0x0001), "bcdVersion");
        assert_eq!(u16le(compat, 7), 4, "wIndex = extended compat id");
        assert_eq!(compat[9], 1, "bCount");
        assert_eq!(compat[11], 0, "bFirstInterfaceNumber");
        assert_eq!(&compat[13..21], b"WINUSB\0\0");
        assert_eq!(&compat[21..29], &[0; 8], "sub-compatible id");
        at += len;

        // Extended property: wIndex 5, one REG_SZ "DeviceInterfaceGUID" = our GUID. FunctionFS
        // takes UTF-8 with a NUL; the kernel sends UTF-16LE to the host.
        assert_eq!(b[at], 0);
        let len = u32le(&b, at + 1) as usize;
        let prop = &b[at..at + len];
        assert_eq!(u16le(prop, 7), 5, "wIndex = extended properties");
        assert_eq!(u16le(prop, 9), 1, "wCount");
        let p = &prop[11..];
        assert_eq!(u32le(p, 0) as usize, p.len(), "dwSize");
        assert_eq!(u32le(p, 4), 1, "REG_SZ");
        let name_len = u16le(p, 8) as usize;
        assert_eq!(&p[10..10 + name_len], b"DeviceInterfaceGUID\0");
        let data_len = u32le(p, 10 + name_len) as usize;
        let data = &p[14 + name_len..14 + name_len + data_len];
        assert_eq!(data, format!("{DEVICE_INTERFACE_GUID}\0").as_bytes());
        assert_eq!(data, b"{6199f4ea-793a-4b5b-8c3d-560c3e8c6dd5}\0");
        assert_eq!(at + len, b.len());
    }

    #[test]
    fn strings_field_by_field() {
        let (_, s) = blobs().unwrap();
        assert_eq!(u32le(&s, 0), 2, "FUNCTIONFS_STRINGS_MAGIC");
        assert_eq!(u32le(&s, 4) as usize, s.len());
        assert_eq!(u32le(&s, 8), 1, "str_count");
        assert_eq!(u32le(&s, 12), 1, "lang_count");
        assert_eq!(u16le(&s, 16), 0x0409, "en-US");
        assert_eq!(&s[18..], b"qbkit-net\0");
    }
}
