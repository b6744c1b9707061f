//! Writes the committed fuzz seed corpus: a few valid bundles (Hello, LinkConfig, two IP packets,
//! a padded USB transfer, keepalives) into `<dir>/frame_bundle`, and the same bundles back to back
//! into `<dir>/frame_stream` (prefixed with the read-size byte that target expects).
//! Run: `cargo run -p shared-frame --example fuzz_seeds -- fuzz/corpus`.

use std::path::PathBuf;

use shared_frame::{BundleWriter, Control, DEFAULT_MAX_BUNDLE, Keepalive, testing};

fn bundle(fill: impl FnOnce(&mut BundleWriter<'_>), usb: bool) -> Vec<u8> {
    let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
    let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
    fill(&mut w);
    let n = if usb { w.finish_usb(512) } else { w.finish() };
    buf.truncate(n);
    buf
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let hello = Control::Hello(testing::board_hello("board-1"));
    let lc = Control::LinkConfig(testing::link_config_v4(16384));
    let ka = Control::Keepalive(Keepalive {
        seq: 1,
        timestamp_us: 1_000_000,
    });
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("hello", bundle(|w| w.push_control(&hello).unwrap(), false)),
        (
            "link_config",
            bundle(|w| w.push_control(&lc).unwrap(), false),
        ),
        (
            "two_ip",
            bundle(
                |w| {
                    w.push_ip(0, &[0x45; 28]).unwrap();
                    w.push_ip(0, &[0x45; 29]).unwrap();
                },
                false,
            ),
        ),
        (
            "padded_512",
            bundle(|w| w.push_ip(0, &[0x45; 500]).unwrap(), true),
        ),
        (
            "keepalive_and_ip",
            bundle(
                |w| {
                    w.push_control(&ka).unwrap();
                    w.push_ip(0, &[0x60; 40]).unwrap();
                },
                false,
            ),
        ),
    ];
    let bundle_dir = dir.join("frame_bundle");
    let stream_dir = dir.join("frame_stream");
    let session_dir = dir.join("link_session");
    for d in [&bundle_dir, &stream_dir, &session_dir] {
        std::fs::create_dir_all(d)?;
    }
    let mut stream = vec![6u8];
    for (name, bytes) in &seeds {
        std::fs::write(bundle_dir.join(name), bytes)?;
        if *name != "padded_512" {
            stream.extend_from_slice(bytes);
        }
    }
    std::fs::write(stream_dir.join("all_back_to_back"), &stream)?;
    std::fs::write(
        stream_dir.join("hello_bytewise"),
        [[0u8].as_slice(), &seeds[0].1].concat(),
    )?;
    // link_session reads an arbitrary op list; raw bundles still make useful starting points.
    for (name, bytes) in &seeds[..2] {
        std::fs::write(session_dir.join(name), bytes)?;
    }
    Ok(())
}
