//! Property tests of the codec: every message round-trips through emit → parse, any byte sequence
//! gives a value or an error (never a panic) in every parser and in the client, and the client
//! decodes a reply stream identically however it is split.

use proptest::prelude::*;
use qbkit_usbip::op::{self, DeviceInfo, InterfaceInfo};
use qbkit_usbip::urb::{CmdSubmit, CmdUnlink, HEADER_LEN, Pdu, RetSubmit, RetUnlink};
use qbkit_usbip::{Client, ClientConfig, ClientEvent, Direction, SetupPacket, Speed, desc};

fn dir() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::In), Just(Direction::Out)]
}

fn pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        (any::<[u32; 8]>(), dir(), any::<[u8; 8]>()).prop_map(|(w, direction, setup)| {
            Pdu::CmdSubmit(CmdSubmit {
                seqnum: w[0],
                devid: w[1],
                direction,
                ep: w[2],
                transfer_flags: w[3],
                transfer_buffer_length: w[4],
                start_frame: w[5],
                number_of_packets: w[6],
                interval: w[7],
                setup,
            })
        }),
        (any::<[u32; 8]>(), any::<i32>()).prop_map(|(w, status)| Pdu::RetSubmit(RetSubmit {
            seqnum: w[0],
            devid: w[1],
            direction: w[2],
            ep: w[3],
            status,
            actual_length: w[4],
            start_frame: w[5],
            number_of_packets: w[6],
            error_count: w[7],
        })),
        any::<[u32; 5]>().prop_map(|w| Pdu::CmdUnlink(CmdUnlink {
            seqnum: w[0],
            devid: w[1],
            direction: w[2],
            ep: w[3],
            unlink_seqnum: w[4],
        })),
        (any::<[u32; 4]>(), any::<i32>()).prop_map(|(w, status)| Pdu::RetUnlink(RetUnlink {
            seqnum: w[0],
            devid: w[1],
            direction: w[2],
            ep: w[3],
            status,
        })),
    ]
}

fn c_text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-z0-9/._:-]{{0,{max}}}")).unwrap()
}

fn device() -> impl Strategy<Value = DeviceInfo> {
    (
        c_text(255),
        c_text(31),
        any::<[u32; 3]>(),
        any::<[u16; 3]>(),
        any::<[u8; 5]>(),
        proptest::collection::vec(any::<[u8; 3]>(), 0..8),
    )
        .prop_map(|(path, busid, w, h, b, ifs)| DeviceInfo {
            path,
            busid,
            busnum: w[0],
            devnum: w[1],
            speed: Speed::from_u32(w[2]),
            vendor_id: h[0],
            product_id: h[1],
            bcd_device: h[2],
            class: b[0],
            subclass: b[1],
            protocol: b[2],
            configuration_value: b[3],
            num_configurations: b[4],
            num_interfaces: ifs.len() as u8,
            interfaces: ifs
                .iter()
                .map(|i| InterfaceInfo {
                    class: i[0],
                    subclass: i[1],
                    protocol: i[2],
                })
                .collect(),
        })
}

proptest! {
    #[test]
    fn pdu_round_trip(p in pdu()) {
        let mut out = Vec::new();
        p.emit(&mut out);
        prop_assert_eq!(out.len(), HEADER_LEN);
        prop_assert_eq!(Pdu::parse(&out).unwrap(), p);
    }

    #[test]
    fn setup_round_trip(b in any::<[u8; 8]>()) {
        prop_assert_eq!(SetupPacket::from_bytes(b).to_bytes(), b);
    }

    #[test]
    fn devlist_round_trip(devs in proptest::collection::vec(device(), 0..4)) {
        let mut out = Vec::new();
        op::emit_rep_devlist(&mut out, &devs);
        let (got, used) = op::parse_rep_devlist(&out).unwrap().unwrap();
        prop_assert_eq!(used, out.len());
        prop_assert_eq!(got, devs);
    }

    #[test]
    fn import_round_trip(mut d in device()) {
        d.interfaces.clear();
        let mut out = Vec::new();
        op::emit_rep_import(&mut out, Some(&d));
        let (got, used) = op::parse_rep_import(&out).unwrap().unwrap();
        prop_assert_eq!(used, out.len());
        prop_assert_eq!(got, d);
    }

    #[test]
    fn any_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048), cut in any::<usize>()) {
        let _ = op::parse_rep_devlist(&data);
        let _ = op::parse_rep_import(&data);
        let _ = op::parse_op_request(&data);
        let _ = Pdu::parse(&data);
        let _ = desc::DeviceDescriptor::parse(&data);
        if let Ok(c) = desc::parse_configuration(&data) {
            let _ = desc::find_vendor_bulk(&c);
        }
        let mut c = Client::new(0x0001_0002, ClientConfig::default());
        for _ in 0..4 {
            c.submit_bulk_in(1, 4096).unwrap();
        }
        c.submit_bulk_out(2, &[1; 600]).unwrap();
        c.submit_control(SetupPacket::get_descriptor(2, 0, 64), &[]).unwrap();
        let _ = c.poll_transmit();
        let cut = cut % (data.len() + 1);
        let _ = c.handle_bytes(&data[..cut]).and_then(|()| c.handle_bytes(&data[cut..]));
        while c.poll_event().is_some() {}
        let _ = c.handle_eof();
    }

    /// Any valid reply stream, split anywhere, decodes to the same events as in one piece.
    #[test]
    fn replies_decode_the_same_however_split(
        lens in proptest::collection::vec(0u32..3000, 1..6),
        splits in proptest::collection::vec(1usize..700, 1..40),
    ) {
        let run = |chunks: &[&[u8]]| {
            let mut c = Client::new(7, ClientConfig::default());
            let seqs: Vec<u32> = lens.iter().map(|_| c.submit_bulk_in(1, 4096).unwrap()).collect();
            let _ = c.poll_transmit();
            for ch in chunks {
                c.handle_bytes(ch).unwrap();
            }
            let mut ev = Vec::new();
            while let Some(e) = c.poll_event() {
                ev.push(e);
            }
            (seqs, ev)
        };
        // Replies in reverse order of submission (matched by seqnum).
        let mut stream = Vec::new();
        for (i, &n) in lens.iter().enumerate().rev() {
            Pdu::RetSubmit(RetSubmit {
                seqnum: i as u32 + 1,
                devid: 0, direction: 0, ep: 0, status: 0,
                actual_length: n, start_frame: 0, number_of_packets: 0, error_count: 0,
            }).emit(&mut stream);
            stream.extend((0..n).map(|j| (i as u32 + j) as u8));
        }
        let (_, whole) = run(&[&stream]);
        let mut chunks = Vec::new();
        let mut rest: &[u8] = &stream;
        for s in splits {
            if rest.is_empty() { break; }
            let (a, b) = rest.split_at(s.min(rest.len()));
            chunks.push(a);
            rest = b;
        }
        if !rest.is_empty() { chunks.push(rest); }
        let (seqs, split) = run(&chunks);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(whole.len(), seqs.len());
        for e in whole {
            let ClientEvent::Completed(c) = e else { panic!("unexpected {e:?}") };
            prop_assert_eq!(c.data.len() as u32, lens[c.seqnum as usize - 1]);
        }
    }
}
