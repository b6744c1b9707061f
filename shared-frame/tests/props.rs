//! Property tests: encode → decode round trips for records, bundles, control messages and streams
//! (split at arbitrary points), and "any bytes never panic" for every decoder and the session.
//! Strategies generate canonical values only (e.g. `Role::Unknown` never holds a known role byte),
//! since only those have a single encoding.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use shared_frame::{
    BUNDLE_HEADER_LEN, Bundle, BundleWriter, Bye, ByeReason, Capabilities, Cidr, Control,
    DEFAULT_MAX_BUNDLE, Hello, Instant, Keepalive, LinkConfig, Role, Session, SessionConfig,
    StatId, Stats, StreamDecoder,
};
use shared_frame::{RecordKind, control};

type Rec = (RecordKind, u8, Vec<u8>);

fn record_kind() -> impl Strategy<Value = RecordKind> {
    prop_oneof![
        Just(RecordKind::Ip),
        Just(RecordKind::Control),
        (3u8..=255).prop_map(RecordKind::Unknown),
    ]
}

fn records(max_len: usize, max_n: usize) -> impl Strategy<Value = Vec<Rec>> {
    prop::collection::vec(
        (
            record_kind(),
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..max_len),
        ),
        0..max_n,
    )
}

fn encode(recs: &[Rec]) -> Vec<u8> {
    let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
    let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
    for (k, ch, p) in recs {
        w.push(*k, *ch, p).unwrap();
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn decode(data: &[u8]) -> Vec<Rec> {
    Bundle::new_checked(data, DEFAULT_MAX_BUNDLE)
        .unwrap()
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r.kind, r.channel, r.payload.to_vec())
        })
        .collect()
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9 .é-]{0,40}"
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<[u8; 16]>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Board),
        Just(Role::Host),
        (3u8..=255).prop_map(Role::Unknown)
    ]
}

fn bye_reason() -> impl Strategy<Value = ByeReason> {
    prop_oneof![
        Just(ByeReason::Shutdown),
        Just(ByeReason::VersionMismatch),
        Just(ByeReason::ProtocolError),
        prop_oneof![Just(0u8), 4u8..=255].prop_map(ByeReason::Unknown),
    ]
}

fn keepalive() -> impl Strategy<Value = Keepalive> {
    (any::<u32>(), any::<u64>()).prop_map(|(seq, timestamp_us)| Keepalive { seq, timestamp_us })
}

fn control_msg() -> impl Strategy<Value = Control> {
    let hello = (
        any::<u8>(),
        role(),
        any::<u8>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        text(),
    )
        .prop_map(
            |(version, role, flags, caps, max_bundle, max_mtu, identity)| {
                Control::Hello(Hello {
                    version,
                    role,
                    flags,
                    capabilities: Capabilities(caps),
                    max_bundle,
                    max_mtu,
                    identity,
                })
            },
        );
    let link_config = (
        prop::option::of((any::<[u8; 4]>(), 0u8..=32)),
        prop::option::of(any::<[u8; 4]>()),
        prop::option::of((any::<[u8; 16]>(), 0u8..=128)),
        prop::option::of(any::<[u8; 16]>()),
        prop::collection::vec(ip(), 0..=control::MAX_DNS),
        any::<u32>(),
    )
        .prop_map(|(v4, g4, v6, g6, dns, mtu)| {
            Control::LinkConfig(LinkConfig {
                ipv4: v4.map(|(a, prefix)| Cidr {
                    addr: a.into(),
                    prefix,
                }),
                gateway_v4: g4.map(Into::into),
                ipv6: v6.map(|(a, prefix)| Cidr {
                    addr: a.into(),
                    prefix,
                }),
                gateway_v6: g6.map(Into::into),
                dns,
                mtu,
            })
        });
    let stats = prop::collection::vec((any::<u32>(), any::<u64>()), 0..=control::MAX_STATS)
        .prop_map(|c| {
            Control::Stats(Stats {
                counters: c.into_iter().map(|(id, v)| (StatId(id), v)).collect(),
            })
        });
    let bye =
        (bye_reason(), text()).prop_map(|(reason, message)| Control::Bye(Bye { reason, message }));
    prop_oneof![
        hello,
        link_config,
        keepalive().prop_map(Control::Keepalive),
        keepalive().prop_map(Control::KeepaliveAck),
        stats,
        bye,
        (7u8..=255).prop_map(|kind| Control::Unknown { kind }),
    ]
}

/// Arbitrary bytes behind a valid bundle header, so the record walk is exercised too.
fn with_header(mut body: Vec<u8>) -> Vec<u8> {
    body.truncate(body.len() & !3);
    let len = (BUNDLE_HEADER_LEN + body.len()) as u32;
    let mut v = b"QK\x01\x00".to_vec();
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&body);
    v
}

fn feed_in_pieces(d: &mut StreamDecoder, stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let want = cuts
            .get(i % cuts.len().max(1))
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        i += 1;
        let mut piece = &rest[..want];
        rest = &rest[want..];
        while !piece.is_empty() {
            let n = d.feed(piece);
            piece = &piece[n..];
            while let Some(b) = d.next_bundle() {
                match b {
                    Ok(b) => out.push(b.into_inner().to_vec()),
                    Err(_) => return out,
                }
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn records_round_trip(recs in records(2000, 20)) {
        let bytes = encode(&recs);
        prop_assert_eq!(bytes.len() % 4, 0);
        prop_assert_eq!(decode(&bytes), recs);
    }

    #[test]
    fn usb_transfers_round_trip(recs in records(1100, 8), mps in prop_oneof![Just(512usize), Just(1024)]) {
        let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
        for (k, ch, p) in &recs {
            w.push(*k, *ch, p).unwrap();
        }
        let n = w.finish_usb(mps);
        prop_assert!(!shared_frame::needs_zlp(n, mps));
        prop_assert_eq!(decode(&buf[..n]), recs);
    }

    #[test]
    fn controls_round_trip(msg in control_msg()) {
        prop_assert_eq!(msg.check(), Ok(()));
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        prop_assert_eq!(Control::parse(&buf), Ok(msg.clone()));
        // Inside a bundle too.
        let mut b = vec![0; DEFAULT_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut b, DEFAULT_MAX_BUNDLE);
        w.push_control(&msg).unwrap();
        let n = w.finish();
        let bundle = Bundle::new_checked(&b[..n], DEFAULT_MAX_BUNDLE).unwrap();
        let r = bundle.records().next().unwrap().unwrap();
        prop_assert_eq!(Control::parse(r.payload), Ok(msg));
    }

    #[test]
    fn stream_split_anywhere_gives_the_same_bundles(
        bundles in prop::collection::vec(records(300, 5), 0..12),
        cuts in prop::collection::vec(1usize..700, 1..20),
    ) {
        let encoded: Vec<Vec<u8>> = bundles.iter().map(|r| encode(r)).collect();
        let stream = encoded.concat();
        let mut d = StreamDecoder::new(shared_frame::MIN_MAX_BUNDLE);
        let got = feed_in_pieces(&mut d, &stream, &cuts);
        prop_assert_eq!(&got, &encoded);
        prop_assert_eq!(d.buffered(), 0);
        prop_assert_eq!(d.fatal(), None);
        let decoded: Vec<Vec<Rec>> = got.iter().map(|b| decode(b)).collect();
        prop_assert_eq!(decoded, bundles);
    }

    #[test]
    fn any_bytes_never_panic_bundle(data in prop::collection::vec(any::<u8>(), 0..3000), max in 0usize..200_000) {
        for d in [data.clone(), with_header(data)] {
            if let Ok(b) = Bundle::new_checked(&d[..], max) {
                prop_assert!(b.len() <= d.len());
                for r in b.records().flatten() {
                    let _ = Control::parse(r.payload);
                }
            }
        }
    }

    #[test]
    fn any_bytes_never_panic_control(data in prop::collection::vec(any::<u8>(), 0..600), k in 0u8..9) {
        let _ = Control::parse(&data);
        let mut d = data;
        d.insert(0, k);
        if let Ok(msg) = Control::parse(&d) {
            // Whatever parses re-encodes to something that parses to the same value.
            let mut buf = vec![0; msg.buffer_len()];
            msg.emit(&mut buf);
            if !matches!(msg, Control::Unknown { kind } if kind <= 6) {
                prop_assert_eq!(Control::parse(&buf), Ok(msg));
            }
        }
    }

    #[test]
    fn any_bytes_never_panic_stream(
        prefix in records(100, 3),
        data in prop::collection::vec(any::<u8>(), 0..5000),
        cuts in prop::collection::vec(1usize..300, 1..10),
    ) {
        // Valid bundles first, then garbage (possibly with a plausible header): the good ones come
        // out, then at most a sticky fatal error.
        let good = encode(&prefix);
        let mut d = StreamDecoder::new(0);
        let stream = [good.clone(), with_header(data.clone()), data].concat();
        let got = feed_in_pieces(&mut d, &stream, &cuts);
        prop_assert_eq!(&got[0], &good);
        if let Some(e) = d.fatal() {
            prop_assert_eq!(d.next_bundle().map(Result::err), Some(Some(e)));
        }
    }

    #[test]
    fn any_bytes_never_panic_session(
        transfers in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 0..20),
        controls in prop::collection::vec(control_msg(), 0..10),
        host in any::<bool>(),
    ) {
        let role = if host { Role::Host } else { Role::Board };
        let mut s = Session::new(SessionConfig::new(role, "p"), Instant::ZERO);
        let mut t = 0;
        let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
        let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
        for c in &controls {
            w.push_control(c).unwrap();
        }
        let n = w.finish();
        let valid = buf[..n].to_vec();
        for data in transfers.iter().map(|d| with_header(d.clone())).chain(transfers.clone()).chain([valid]) {
            t += 700_000;
            let now = Instant::from_micros(t);
            let _ = s.handle_bundle(now, &data, |_, _| {});
            s.handle_timeout(now);
            while s.poll_event().is_some() {}
            let mut out = vec![0; s.tx_max_bundle()];
            let mut w = BundleWriter::new(&mut out, s.tx_max_bundle());
            s.poll_control(&mut w);
            let n = w.finish_usb(512);
            prop_assert!(Bundle::new_checked(&out[..n], DEFAULT_MAX_BUNDLE).is_ok());
        }
    }
}
