//! Acceptance test for bad input: truncated headers, oversized lengths, wrong magic and version,
//! zero-length and maximum-length (65535-byte) records, and streams split at every byte. Each case
//! yields a typed error or the correct value, never a panic, and the decoders behave as documented in
//! docs/protocol.md: on USB a bad transfer is dropped alone and the next one is fine; on a stream a
//! framing error is fatal and sticky.

use shared_frame::{
    Bundle, BundleWriter, DEFAULT_MAX_BUNDLE, FrameError, Instant, MAX_RECORD_PAYLOAD, RecordKind,
    Role, Session, SessionConfig, StreamDecoder,
};

/// Big enough for one maximum-length record.
const BIG: usize = 128 * 1024;

fn bundle(records: &[(RecordKind, &[u8])], max: usize) -> Vec<u8> {
    let mut buf = vec![0; max];
    let mut w = BundleWriter::new(&mut buf, max);
    for (k, p) in records {
        w.push(*k, 0, p).unwrap();
    }
    let n = w.finish_usb(512);
    buf.truncate(n);
    buf
}

fn session(max_bundle: usize) -> Session {
    let mut cfg = SessionConfig::new(Role::Host, "t");
    cfg.max_bundle = max_bundle;
    Session::new(cfg, Instant::ZERO)
}

/// Feeds one transfer; returns the error and the packets delivered.
fn usb(s: &mut Session, data: &[u8]) -> (Result<(), FrameError>, Vec<Vec<u8>>) {
    let mut got = Vec::new();
    let r = s.handle_bundle(Instant::ZERO, data, |_, p| got.push(p.to_vec()));
    (r, got)
}

fn bad_transfers(good: &[u8]) -> Vec<(Vec<u8>, FrameError)> {
    let mut v = Vec::new();
    for n in 0..8 {
        v.push((
            good[..n].to_vec(),
            FrameError::Truncated { need: 8, have: n },
        ));
    }
    let mut m = good.to_vec();
    m[..2].copy_from_slice(b"XK");
    v.push((m, FrameError::BadMagic(*b"XK")));
    let mut m = good.to_vec();
    m[2] = 0;
    v.push((m, FrameError::BadVersion(0)));
    for len in [0u32, 7, 9, DEFAULT_MAX_BUNDLE as u32 + 4, u32::MAX] {
        let mut m = good.to_vec();
        m[4..8].copy_from_slice(&len.to_le_bytes());
        v.push((
            m,
            FrameError::BadLength {
                len,
                max: DEFAULT_MAX_BUNDLE,
            },
        ));
    }
    v.push((
        good[..good.len() - 4].to_vec(),
        FrameError::LengthMismatch {
            header: good.len(),
            actual: good.len() - 4,
        },
    ));
    v
}

#[test]
fn usb_bad_transfer_is_dropped_alone() {
    let good = bundle(&[(RecordKind::Ip, b"packet one")], DEFAULT_MAX_BUNDLE);
    let mut s = session(DEFAULT_MAX_BUNDLE);
    let cases = bad_transfers(&good);
    for (i, (bad, want)) in cases.iter().enumerate() {
        assert_eq!(usb(&mut s, bad), (Err(*want), vec![]), "case {i}");
        // The next transfer is fine.
        assert_eq!(usb(&mut s, &good), (Ok(()), vec![b"packet one".to_vec()]));
    }
    let c = s.counters();
    assert_eq!(c.rx_bad_bundles, cases.len() as u64);
    assert_eq!(c.rx_packets, cases.len() as u64);
}

#[test]
fn usb_record_overrun_keeps_the_records_before_it() {
    let mut b = bundle(
        &[(RecordKind::Ip, b"first"), (RecordKind::Ip, b"second")],
        DEFAULT_MAX_BUNDLE,
    );
    // The second record header sits at 8 + align(4 + 5) = 20; make it claim 60000 bytes.
    b[22..24].copy_from_slice(&60000u16.to_le_bytes());
    let mut s = session(DEFAULT_MAX_BUNDLE);
    assert_eq!(
        usb(&mut s, &b),
        (
            Err(FrameError::RecordOverflow {
                offset: 20,
                len: 60000
            }),
            vec![b"first".to_vec()]
        )
    );
    assert_eq!(s.counters().rx_bad_records, 1);
    // Kind 0 drops that record only.
    b[22..24].copy_from_slice(&6u16.to_le_bytes());
    b[8] = 0;
    assert_eq!(
        usb(&mut s, &b),
        (Err(FrameError::BadRecordKind(0)), vec![b"second".to_vec()])
    );
}

#[test]
#[allow(
    clippy::many_single_char_names,
    reason = "s, b, d, n: session, bundle, decoder, count"
)]
fn zero_and_maximum_length_records() {
    let max = vec![0xA5; MAX_RECORD_PAYLOAD];
    let b = bundle(
        &[
            (RecordKind::Ip, &[]),
            (RecordKind::Ip, &max),
            (RecordKind::Unknown(77), &[]),
            (RecordKind::Ip, b"x"),
        ],
        BIG,
    );
    // USB, with a receiver whose limit allows it.
    let mut s = session(BIG);
    assert_eq!(usb(&mut s, &b), (Ok(()), vec![max.clone(), b"x".to_vec()]));
    assert_eq!(s.counters().rx_empty_packets, 1);
    assert_eq!(s.counters().rx_unknown_records, 1);
    // A receiver with the default limit refuses the bundle as too long, typed.
    let mut small = session(DEFAULT_MAX_BUNDLE);
    assert_eq!(
        usb(&mut small, &b).0,
        Err(FrameError::BadLength {
            len: b.len() as u32,
            max: DEFAULT_MAX_BUNDLE
        })
    );
    // A maximum-length control record is a malformed (unknown-body) control, not a crash.
    let mut ctl = vec![0u8; MAX_RECORD_PAYLOAD];
    ctl[0] = 1; // Hello kind with a zero body: bad magic
    let b = bundle(&[(RecordKind::Control, &ctl)], BIG);
    assert_eq!(usb(&mut s, &b).0, Ok(()));
    assert_eq!(s.counters().rx_bad_controls, 1);
    // The stream decoder, byte by byte.
    let b = bundle(&[(RecordKind::Ip, &max), (RecordKind::Ip, &[])], BIG);
    let mut d = StreamDecoder::new(BIG);
    let mut n = 0;
    for byte in &b {
        assert_eq!(d.feed(std::slice::from_ref(byte)), 1);
        while let Some(r) = d.next_bundle() {
            let r = r.unwrap();
            let recs: Vec<_> = r.records().map(Result::unwrap).collect();
            assert_eq!(recs[0].payload.len(), MAX_RECORD_PAYLOAD);
            assert!(recs[1].payload.is_empty());
            n += 1;
        }
    }
    assert_eq!(n, 1);
}

#[test]
fn stream_split_at_every_byte() {
    let bundles = [
        bundle(&[(RecordKind::Ip, b"abc"), (RecordKind::Ip, &[])], 4096),
        bundle(&[], 4096),
        bundle(
            &[(RecordKind::Control, &[0x7f]), (RecordKind::Ip, &[9; 700])],
            4096,
        ),
    ];
    // Streams carry no pad: strip the USB pad if finish_usb added one.
    let stream: Vec<u8> = bundles
        .iter()
        .flat_map(|b| {
            let n = Bundle::new_checked(&b[..], DEFAULT_MAX_BUNDLE)
                .unwrap()
                .len();
            b[..n].to_vec()
        })
        .collect();
    for cut in 0..=stream.len() {
        for cut2 in [cut, (cut + 1).min(stream.len()), stream.len()] {
            let mut d = StreamDecoder::new(4096);
            let mut lens = Vec::new();
            for part in [&stream[..cut], &stream[cut..cut2], &stream[cut2..]] {
                assert_eq!(d.feed(part), part.len());
                while let Some(b) = d.next_bundle() {
                    lens.push(b.unwrap().len());
                }
            }
            assert_eq!(lens, [20, 8, 720], "cuts {cut} {cut2}");
        }
    }
}

#[test]
fn stream_errors_are_fatal_and_sticky_at_any_split() {
    let good = bundle(&[(RecordKind::Ip, b"ok")], 4096);
    for (bad, want) in bad_transfers(&good) {
        if matches!(
            want,
            FrameError::Truncated { .. } | FrameError::LengthMismatch { .. }
        ) {
            continue; // on a stream these are just "more bytes needed"
        }
        let stream = [good.clone(), bad, good.clone()].concat();
        for cut in 0..=stream.len() {
            let mut d = StreamDecoder::new(DEFAULT_MAX_BUNDLE);
            let mut ok = 0;
            let mut err = None;
            for part in [&stream[..cut], &stream[cut..]] {
                d.feed(part);
                while let Some(b) = d.next_bundle() {
                    match b {
                        Ok(_) => ok += 1,
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
            }
            assert_eq!((ok, err), (1, Some(want)), "cut {cut}");
            assert_eq!(d.fatal(), Some(want));
            assert_eq!(d.next_bundle().unwrap().err(), Some(want));
        }
    }
}

#[test]
fn stream_truncated_at_the_end_waits_for_more() {
    let good = bundle(&[(RecordKind::Ip, b"ok")], 4096);
    for n in 0..good.len() {
        let mut d = StreamDecoder::new(4096);
        d.feed(&good[..n]);
        assert!(d.next_bundle().is_none(), "{n}");
        assert_eq!(d.buffered(), n);
        assert_eq!(d.fatal(), None);
    }
}
