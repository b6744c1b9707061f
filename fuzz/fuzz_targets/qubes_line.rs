//! Fuzz target: the qubes.USB service's first line, "<devid> <speed>[ extra]\n", as the qubes-usb
//! transport reads it (`read_qubes_line` over a reader that returns the input in chunks) and parses
//! it (`parse_qubes_line`).
//!
//! Properties: nothing panics; an accepted line is the input up to its first newline, which is
//! within the read bound, and the bytes after it that were read are returned unchanged as the
//! start of the URB stream; the parsed devid and speed print back to a line that parses to the same
//! values; input with no newline in the first 256 bytes is refused.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use qbkit_usbip::Speed;
use qbkit_usbip::transport::{parse_qubes_line, read_qubes_line};
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out `data` at most `chunk` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fn sysfs(speed: Speed) -> &'static str {
    match speed {
        Speed::Low => "1.5",
        Speed::Full => "12",
        Speed::High => "480",
        Speed::Wireless => "53.3-480",
        Speed::Super => "5000",
        Speed::SuperPlus => "10000",
        other => panic!("parse_qubes_line accepted {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let mut r = Chunked {
        data: input,
        chunk: usize::from(chunk) + 1,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let res = rt.block_on(read_qubes_line(&mut r, "fuzz"));
    let nl = input.iter().position(|&b| b == b'\n');
    match res {
        Ok((devid, speed, leftover)) => {
            let nl = nl.expect("accepted a line without a newline");
            assert!(nl <= 256, "newline at {nl} accepted");
            assert_eq!(parse_qubes_line(&input[..nl]), Ok((devid, speed)));
            assert!(
                input[nl + 1..].starts_with(&leftover),
                "leftover is not what followed the line"
            );
            let again = format!("{devid} {}", sysfs(speed));
            assert_eq!(parse_qubes_line(again.as_bytes()), Ok((devid, speed)));
        }
        Err(_) => {
            if let Some(nl) = nl
                && nl < 128
            {
                assert!(
                    parse_qubes_line(&input[..nl]).is_err(),
                    "a good line within the bound was refused"
                );
            }
        }
    }
});
