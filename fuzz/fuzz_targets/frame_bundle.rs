//! Fuzz target: any bytes as one USB transfer. `Bundle::new_checked` → every record → `Control::parse`,
//! then the same bytes through `Session::handle_bundle`. Must never panic; whatever parses as a
//! control message must re-encode to bytes that parse to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_frame::{
    Bundle, Control, Instant, MAX_BUNDLE_LIMIT, RecordKind, Role, Session, SessionConfig,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = Bundle::new_checked(data, MAX_BUNDLE_LIMIT) {
        assert!(b.len() <= data.len());
        for r in b.records().flatten() {
            assert!(r.payload.len() < data.len());
            if r.kind == RecordKind::Control
                && let Ok(msg) = Control::parse(r.payload)
            {
                let mut buf = vec![0; msg.buffer_len()];
                msg.emit(&mut buf);
                if !matches!(msg, Control::Unknown { .. }) {
                    assert_eq!(Control::parse(&buf).as_ref(), Ok(&msg));
                }
            }
        }
    }
    for role in [Role::Board, Role::Host] {
        let mut s = Session::new(SessionConfig::new(role, "fuzz"), Instant::ZERO);
        let mut n = 0usize;
        let _ = s.handle_bundle(Instant::from_millis(1), data, |_, p| n += p.len());
        assert!(n <= data.len());
        while s.poll_event().is_some() {}
    }
});
