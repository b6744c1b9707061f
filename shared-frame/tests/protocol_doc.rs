//! Keeps docs/protocol.md honest: every ```hex block there is decoded and compared with the value the
//! doc describes, the value is encoded again and must give the same bytes, and the limits table must
//! match the crate's constants. Edit the doc and the code together, or this fails.

use std::collections::BTreeMap;

use shared_frame::{
    Bundle, BundleWriter, Control, Keepalive, RecordKind, control, session, testing,
};

const DOC: &str = include_str!("../../docs/protocol.md");

/// `title -> bytes` for every ```hex title="..." block. `#` starts a comment; `XX*N` repeats a byte.
fn hex_blocks() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("```hex title=\"") else {
            continue;
        };
        let title = rest.trim_end_matches('"').to_string();
        let mut bytes = Vec::new();
        for l in lines.by_ref().take_while(|l| !l.starts_with("```")) {
            let data = l.split('#').next().unwrap();
            for tok in data.split_whitespace() {
                let (b, n) = tok.split_once('*').unwrap_or((tok, "1"));
                let b =
                    u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("{title}: bad byte {tok}"));
                bytes.extend(std::iter::repeat_n(b, n.parse().unwrap()));
            }
        }
        assert!(out.insert(title, bytes).is_none(), "duplicate title");
    }
    out
}

/// What a documented example holds.
#[derive(Debug, PartialEq)]
enum Item {
    Ip(Vec<u8>),
    Ctl(Control),
}

fn encode(items: &[Item], usb_mps: Option<usize>) -> Vec<u8> {
    let mut buf = vec![0; 64 * 1024];
    let mut w = BundleWriter::new(&mut buf, 64 * 1024);
    for it in items {
        match it {
            Item::Ip(p) => w.push_ip(0, p).unwrap(),
            Item::Ctl(c) => w.push_control(c).unwrap(),
        }
    }
    let n = match usb_mps {
        Some(mps) => w.finish_usb(mps),
        None => w.finish(),
    };
    buf.truncate(n);
    buf
}

fn decode(bytes: &[u8]) -> Vec<Item> {
    let b = Bundle::new_checked(bytes, 64 * 1024).unwrap();
    b.records()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r.channel, 0);
            match r.kind {
                RecordKind::Ip => Item::Ip(r.payload.to_vec()),
                RecordKind::Control => Item::Ctl(Control::parse(r.payload).unwrap()),
                k @ RecordKind::Unknown(_) => panic!("unexpected {k:?}"),
            }
        })
        .collect()
}

fn examples() -> Vec<(&'static str, Vec<Item>, Option<usize>)> {
    let hello = Control::Hello(testing::board_hello("board-1"));
    let lc = Control::LinkConfig(testing::link_config_dual_stack());
    let ka = Control::Keepalive(Keepalive {
        seq: 1,
        timestamp_us: 1_000_000,
    });
    let ip_header = |len: u16, id: u8, proto: u8, csum: [u8; 2]| {
        let l = len.to_be_bytes();
        vec![
            0x45, 0, l[0], l[1], 0, id, 0x40, 0, 64, proto, csum[0], csum[1], 10, 47, 0, 2, 10, 47,
            0, 1,
        ]
    };
    let icmp = [
        ip_header(28, 1, 1, [0x26, 0x80]),
        vec![8, 0, 0xe5, 0xca, 0x12, 0x34, 0, 1],
    ]
    .concat();
    let udp = [
        ip_header(29, 2, 17, [0x26, 0x6e]),
        vec![0x13, 0x88, 0, 53, 0, 9, 0, 0, b'q'],
    ]
    .concat();
    let big = [
        ip_header(500, 3, 17, [0x24, 0x96]),
        vec![0x13, 0x88, 0, 9, 0x01, 0xe0, 0, 0],
        vec![0; 472],
    ]
    .concat();
    vec![
        ("hello-bundle", vec![Item::Ctl(hello)], None),
        ("link-config-bundle", vec![Item::Ctl(lc)], None),
        ("keepalive-bundle", vec![Item::Ctl(ka)], None),
        ("two-ip-packets", vec![Item::Ip(icmp), Item::Ip(udp)], None),
        ("usb-512-padded", vec![Item::Ip(big)], Some(512)),
    ]
}

#[test]
fn hex_examples_match_the_code() {
    let blocks = hex_blocks();
    let ex = examples();
    assert_eq!(
        blocks.keys().collect::<Vec<_>>(),
        {
            let mut t: Vec<_> = ex.iter().map(|e| e.0).collect();
            t.sort_unstable();
            t
        },
        "the doc's examples and this test's list differ"
    );
    for (title, items, usb) in ex {
        let doc = &blocks[title];
        assert_eq!(
            decode(doc),
            items,
            "{title}: doc bytes decode to other values"
        );
        assert_eq!(
            &encode(&items, usb),
            doc,
            "{title}: encoding gives other bytes"
        );
    }
    // The padded example really is a padded transfer of a 512-byte bundle.
    let padded = &blocks["usb-512-padded"];
    assert_eq!(padded.len(), 516);
    assert_eq!(Bundle::new_checked(&padded[..], 65536).unwrap().len(), 512);
    assert!(shared_frame::needs_zlp(512, 512));
    // The Hello example survives USB unchanged (44 is not a multiple of 512).
    let hello = &blocks["hello-bundle"];
    assert_eq!(
        &encode(&decode(hello), Some(512)),
        hello,
        "hello-bundle should need no pad"
    );
}

#[test]
fn limits_table_matches_the_constants() {
    let constants: [(&str, usize); 10] = [
        ("MAX_RECORD_PAYLOAD", shared_frame::MAX_RECORD_PAYLOAD),
        ("DEFAULT_MAX_BUNDLE", shared_frame::DEFAULT_MAX_BUNDLE),
        ("MIN_MAX_BUNDLE", shared_frame::MIN_MAX_BUNDLE),
        ("MAX_BUNDLE_LIMIT", shared_frame::MAX_BUNDLE_LIMIT),
        ("USB_PAD_LEN", shared_frame::USB_PAD_LEN),
        ("MAX_TEXT_LEN", control::MAX_TEXT_LEN),
        ("MAX_DNS", control::MAX_DNS),
        ("MAX_STATS", control::MAX_STATS),
        ("MAX_EVENTS", session::MAX_EVENTS),
        ("DEFAULT_MTU", shared_frame::DEFAULT_MTU as usize),
    ];
    for (name, value) in constants {
        let row = DOC
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("{name} missing from the limits table"));
        let cell = row.split('|').nth(2).unwrap().trim();
        assert_eq!(cell.parse::<usize>().ok(), Some(value), "{name}: {row}");
    }
}
