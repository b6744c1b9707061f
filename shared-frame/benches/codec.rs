//! Codec micro-benchmarks: encoding IP packets into a bundle, decoding a bundle's records, the
//! session's receive path, and the stream decoder, for 1500 B and 16 KiB packets in 64 KiB bundles.
//! Throughput is reported per packet (elements) so ns/packet can be read off directly.
//! Run: `cargo bench -p shared-frame --bench codec -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shared_frame::{
    Bundle, BundleWriter, DEFAULT_MAX_BUNDLE, Instant, Role, Session, SessionConfig, StreamDecoder,
};

const SIZES: [(usize, &str); 2] = [(1500, "1500B"), (16 * 1024, "16KiB")];

/// Packets of `size` bytes that fit one default bundle.
fn per_bundle(size: usize) -> usize {
    let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
    let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
    let pkt = vec![0x45; size];
    let mut n = 0;
    while w.push_ip(0, &pkt).is_ok() {
        n += 1;
    }
    n
}

fn full_bundle(size: usize) -> Vec<u8> {
    let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
    let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
    let pkt = vec![0x45; size];
    while w.push_ip(0, &pkt).is_ok() {}
    let n = w.finish_usb(512);
    buf.truncate(n);
    buf
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (size, name) in SIZES {
        let n = per_bundle(size);
        let pkt = vec![0x45u8; size];
        let mut buf = vec![0u8; DEFAULT_MAX_BUNDLE];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{name} x{n} into 64KiB bundle"), |b| {
            b.iter(|| {
                let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
                for _ in 0..n {
                    w.push_ip(0, black_box(&pkt)).unwrap();
                }
                black_box(w.finish_usb(512))
            });
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (size, name) in SIZES {
        let bundle = full_bundle(size);
        let n = per_bundle(size);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{name} x{n} from 64KiB bundle"), |b| {
            b.iter(|| {
                let b = Bundle::new_checked(black_box(&bundle[..]), DEFAULT_MAX_BUNDLE).unwrap();
                let mut total = 0;
                for r in b.records() {
                    total += black_box(r.unwrap().payload).len();
                }
                total
            });
        });
    }
    g.finish();
}

fn session_rx(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_rx");
    let bundle = full_bundle(1500);
    let n = per_bundle(1500);
    let mut s = Session::new(SessionConfig::new(Role::Host, "bench"), Instant::ZERO);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("handle_bundle 1500B x{n}"), |b| {
        b.iter(|| {
            let mut total = 0;
            s.handle_bundle(Instant::ZERO, black_box(&bundle), |_, p| {
                total += black_box(p).len();
            })
            .unwrap();
            total
        });
    });
    g.finish();
}

fn stream(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream");
    let one = full_bundle(1500);
    let len = Bundle::new_checked(&one[..], DEFAULT_MAX_BUNDLE)
        .unwrap()
        .len();
    let stream: Vec<u8> = (0..16).flat_map(|_| one[..len].to_vec()).collect();
    let n = per_bundle(1500) * 16;
    let mut dec = StreamDecoder::new(DEFAULT_MAX_BUNDLE);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(
        format!("16 bundles of 1500B x{}, 4 KiB reads", n / 16),
        |b| {
            b.iter(|| {
                let mut pkts = 0;
                for chunk in stream.chunks(4096) {
                    let mut chunk = chunk;
                    while !chunk.is_empty() {
                        let taken = dec.feed(chunk);
                        chunk = &chunk[taken..];
                        while let Some(bundle) = dec.next_bundle() {
                            pkts += bundle.unwrap().records().count();
                        }
                    }
                }
                pkts
            });
        },
    );
    g.finish();
}

criterion_group!(benches, encode, decode, session_rx, stream);
criterion_main!(benches);
