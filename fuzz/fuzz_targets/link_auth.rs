//! Fuzz target: any bytes into the stream-link authentication handshake (`qbkit_link::auth`).
//! The first byte picks the role (bit 0) and the read size (the rest, 1..=128); the remaining
//! bytes are fed in reads of that size. The handshake must never panic, never consume more than
//! it was given, never more in total than the messages its role receives (one read may hold
//! several; bytes after the last belong to the session), take nothing after a failure or once
//! done, and never authenticate a peer that did not prove the key (the fuzzer cannot compute the
//! HMAC).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qbkit_link::auth::{AuthRole, Handshake, LinkKey};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let role = if ctl & 1 == 0 {
        AuthRole::Initiator
    } else {
        AuthRole::Responder
    };
    let step = usize::from(ctl >> 1) + 1;
    // Hello + Proof (responder), Challenge + Result (initiator).
    let most = match role {
        AuthRole::Responder => 38 + 38,
        AuthRole::Initiator => 70 + 7,
    };
    let mut total = 0usize;
    let key = LinkKey::from_bytes([0x42; 32]);
    let mut hs = Handshake::new(role, &key, [7; 32]);
    let _ = hs.poll_transmit();
    let mut failed = false;
    for chunk in stream.chunks(step) {
        let finished = failed || hs.is_done();
        match hs.handle_bytes(chunk) {
            Ok(n) => {
                assert!(n <= chunk.len(), "consumed {n} of {}", chunk.len());
                total += n;
                assert!(
                    total <= most,
                    "consumed {total} bytes, more than the handshake"
                );
                if finished {
                    assert_eq!(n, 0, "input taken after the end");
                }
                if failed || hs.is_done() {
                    assert_eq!(hs.wanted(), 0);
                }
            }
            Err(_) => {
                assert!(!failed, "a failed handshake takes no more input");
                failed = true;
            }
        }
        let _ = hs.poll_transmit();
    }
    assert!(!hs.is_done(), "authenticated without the key");
});
