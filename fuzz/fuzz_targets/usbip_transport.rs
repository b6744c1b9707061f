//! Fuzz target: the USB/IP transport (`qbkit_usbip::transport::UsbipLink`): its qubes-usb line,
//! setup (descriptors, VID:PID, configuration) and its `drive`/`feed` loop, over in-memory pipes
//! with a scripted server whose replies are the fuzz input, under tokio's paused clock (a stuck
//! exchange ends at the setup timeout at once).
//!
//! Input: `[n][n op bytes][server script]`; an even op byte receives a bundle, an odd one sends a
//! bundle of `(op >> 1) * 67` bytes (past `max_bundle` it must be refused). The script is a list of
//! `[len u16 LE][bytes]` units: the server writes the first one at once and one more per command it
//! reads (or per second of silence on the paused clock).
//!
//! Properties: nothing panics and every run ends; a set-up link reports the expected VID:PID and
//! an IN/OUT endpoint pair; every received bundle is non-empty and at most `max_bundle`, and the
//! link's counters match what the caller got and sent; an oversized send is refused without
//! touching the link; every command the client writes is a well-formed USB/IP header with the devid
//! of the qubes line, and it submits no more URBs than setup, its IN URBs, their resubmits and the
//! bundles sent need.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use qbkit_usbip::transport::{LinkOptions, LinkStats, TransportError, UsbipLink};
use qbkit_usbip::{Pdu, urb::HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_BUNDLE: usize = 4096;
const IN_URBS: usize = 2;
const OUT_URBS: usize = 1;

/// What the server saw of the client's commands.
#[derive(Default, Debug)]
struct Seen {
    devids: Vec<u32>,
    submits: u64,
}

/// Splits the script into `[len u16 LE][bytes]` units (the last one may be short).
fn units(mut script: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while script.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([script[0], script[1]])).min(script.len() - 2);
        out.push(&script[2..2 + len]);
        script = &script[2 + len..];
    }
    out
}

/// The server side: writes the first unit at once and one more unit after each command it reads
/// (or after a second of silence on the paused clock, the way a board completes an IN URB when
/// it has data), then closes its side and reads what is left.
async fn server(
    mut to_client: tokio::io::DuplexStream,
    mut from_client: tokio::io::DuplexStream,
    script: &[u8],
) -> Seen {
    let mut seen = Seen::default();
    let mut hdr = [0u8; HEADER_LEN];
    let mut closed = false;
    for unit in units(script) {
        if to_client.write_all(unit).await.is_err() {
            break;
        }
        if closed {
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(1), from_client.read_exact(&mut hdr)).await {
            Err(_) => continue,
            Ok(Err(_)) => closed = true,
            Ok(Ok(_)) => closed = !read_command(&mut from_client, &hdr, &mut seen).await,
        }
    }
    let _ = to_client.shutdown().await;
    while !closed && from_client.read_exact(&mut hdr).await.is_ok() {
        closed = !read_command(&mut from_client, &hdr, &mut seen).await;
    }
    seen
}

/// Checks one command header from the client and skips its payload; false at the end of input.
async fn read_command(
    from_client: &mut tokio::io::DuplexStream,
    hdr: &[u8; HEADER_LEN],
    seen: &mut Seen,
) -> bool {
    match Pdu::parse(hdr).expect("the client wrote a malformed USB/IP header") {
        Pdu::CmdSubmit(c) => {
            seen.devids.push(c.devid);
            seen.submits += 1;
            let mut payload = vec![0u8; c.payload_len() as usize];
            from_client.read_exact(&mut payload).await.is_ok()
        }
        Pdu::CmdUnlink(u) => {
            seen.devids.push(u.devid);
            true
        }
        other => panic!("the client wrote a reply: {other:?}"),
    }
}

async fn client(
    out: tokio::io::DuplexStream,
    inp: tokio::io::DuplexStream,
    ops: &[u8],
) -> Option<(u32, LinkStats)> {
    let opts = LinkOptions::default()
        .max_bundle(MAX_BUNDLE)
        .urbs(IN_URBS, OUT_URBS)
        .setup_timeout(Duration::from_secs(5));
    let mut link = UsbipLink::over_qubes_pipes(out, inp, "fuzz", opts)
        .await
        .ok()?;
    let info = link.info().clone();
    assert_eq!(
        (info.vendor_id, info.product_id),
        qbkit_usbip::transport::DEFAULT_VID_PID,
        "VID:PID check passed a different device"
    );
    assert_ne!(info.bulk.ep_in & 0x80, 0, "IN endpoint without the IN bit");
    assert_eq!(info.bulk.ep_out & 0x80, 0, "OUT endpoint with the IN bit");
    let (mut got, mut got_bytes, mut sent, mut sent_bytes) = (0u64, 0u64, 0u64, 0u64);
    for &op in ops {
        if op & 1 == 0 {
            match link.recv_bundle().await {
                Ok(b) => {
                    assert!(
                        !b.is_empty() && b.len() <= MAX_BUNDLE,
                        "bundle of {}",
                        b.len()
                    );
                    got += 1;
                    got_bytes += b.len() as u64;
                }
                Err(_) => break,
            }
        } else {
            let len = usize::from(op >> 1) * 67;
            let before = link.stats();
            match link.send_bundle(&vec![0x51; len]).await {
                Ok(()) => {
                    assert!(len <= MAX_BUNDLE);
                    sent += 1;
                    sent_bytes += len as u64;
                }
                Err(TransportError::BundleTooLarge { len: l, max }) => {
                    assert_eq!((l, max), (len, MAX_BUNDLE));
                    assert!(len > MAX_BUNDLE, "a {len}-byte bundle refused");
                    assert_eq!(link.stats().bundles_out, before.bundles_out);
                }
                Err(_) => break,
            }
        }
        let s = link.stats();
        assert_eq!(
            (s.bundles_in, s.bytes_in),
            (got, got_bytes),
            "receive counters"
        );
        assert_eq!(
            (s.bundles_out, s.bytes_out),
            (sent, sent_bytes),
            "send counters"
        );
    }
    Some((info.devid, link.stats()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (ops, script) = rest.split_at(usize::from(n % 32).min(rest.len()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client_out, server_out) = tokio::io::duplex(1 << 20);
        let (server_in, client_in) = tokio::io::duplex(1 << 20);
        let (link, seen) = tokio::join!(
            client(client_out, client_in, ops),
            server(server_out, server_in, script)
        );
        if let Some((devid, stats)) = link {
            assert!(
                seen.devids.iter().all(|&d| d == devid),
                "commands with another devid than {devid}: {:?}",
                seen.devids
            );
            // Five control requests at most, the IN URBs, one resubmit per IN completion, one
            // URB per bundle sent: no URB is submitted twice.
            let bound = 5 + IN_URBS as u64 + stats.bundles_in + stats.empty_in + stats.bundles_out;
            assert!(
                seen.submits <= bound,
                "{} URBs submitted, at most {bound} expected",
                seen.submits
            );
        }
    });
});
