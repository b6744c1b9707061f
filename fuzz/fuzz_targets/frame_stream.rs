//! Fuzz target: any bytes as a byte stream. The first byte picks the read size (1..=256), the rest is
//! fed to a `StreamDecoder` in reads of that size. Bundles that come out must be well-formed views of
//! exactly the bytes fed; after a fatal error the decoder must keep returning it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_frame::{FrameError, MIN_MAX_BUNDLE, StreamDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step) + 1;
    let mut d = StreamDecoder::new(MIN_MAX_BUNDLE);
    let mut out = 0usize;
    let mut fatal: Option<FrameError> = None;
    'outer: for chunk in stream.chunks(step) {
        let mut chunk = chunk;
        while !chunk.is_empty() {
            let n = d.feed(chunk);
            chunk = &chunk[n..];
            while let Some(b) = d.next_bundle() {
                match b {
                    Ok(b) => {
                        out += b.len();
                        for r in b.records().flatten() {
                            let _ = shared_frame::Control::parse(r.payload);
                        }
                    }
                    Err(e) => {
                        fatal = Some(e);
                        break 'outer;
                    }
                }
            }
            // A healthy decoder always has room, so feed() makes progress.
            assert!(n > 0 || chunk.is_empty());
        }
    }
    assert!(out <= stream.len());
    if let Some(e) = fatal {
        assert_eq!(d.fatal(), Some(e));
        assert_eq!(d.next_bundle().map(Result::err), Some(Some(e)));
    } else {
        assert_eq!(out + d.buffered(), stream.len());
    }
});
