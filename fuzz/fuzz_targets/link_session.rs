//! Fuzz target: a board and a host `Session` driven by an arbitrary script of transfers (raw bytes or
//! forged control messages), clock jumps, resets, closes and link changes. Every transfer a session
//! produces must be a valid bundle, every deadline must be reachable, and nothing may panic.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shared_frame::{
    Bundle, BundleWriter, ByeReason, Capabilities, Control, Hello, Instant, Keepalive, LinkConfig,
    Role, Session, SessionConfig,
};

#[derive(Arbitrary, Debug)]
enum Op {
    /// Deliver what each side has queued to the other side.
    Exchange,
    /// Raw bytes to the board (`true`) or the host.
    Raw(bool, Vec<u8>),
    /// A forged Hello.
    Hello(bool, u8, u8, u8, u32, u32, u32),
    /// A forged keepalive or ack.
    Keepalive(bool, bool, u32, u64),
    /// Advance the clock by this many milliseconds, then run due timers.
    Advance(u16),
    Reset(bool),
    Close(bool),
    QueueStats(bool),
    SetLinkConfig(u32),
}

fn one_control(msg: &Control) -> Vec<u8> {
    let mut buf = vec![0; 8192];
    let mut w = BundleWriter::new(&mut buf, 8192);
    let _ = w.push_control(msg);
    let n = w.finish();
    buf.truncate(n);
    buf
}

/// Builds the next transfer into `buf` (8 KiB: control records are small, and the writer uses
/// `min(buf.len(), tx_max_bundle)`), as a driver does, and checks it is a valid bundle.
fn transmit<'a>(s: &mut Session, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    if !s.has_pending_control() {
        return None;
    }
    let max = s.tx_max_bundle();
    let mut w = BundleWriter::new(buf, max);
    s.poll_control(&mut w);
    let n = w.finish_usb(512);
    assert!(Bundle::new_checked(&buf[..n], max).is_ok());
    Some(&buf[..n])
}

fuzz_target!(|ops: Vec<Op>| {
    let mut now = Instant::from_millis(1);
    let mut host_cfg = SessionConfig::new(Role::Host, "host");
    host_cfg.link_config = Some(LinkConfig {
        mtu: 1500,
        ..LinkConfig::default()
    });
    let mut board = Session::new(SessionConfig::new(Role::Board, "board"), now);
    let mut host = Session::new(host_cfg, now);
    let mut buf = vec![0u8; 8192];
    for op in ops.into_iter().take(256) {
        match op {
            Op::Exchange => {
                for _ in 0..4 {
                    if let Some(t) = transmit(&mut board, &mut buf) {
                        let _ = host.handle_bundle(now, t, |_, _| {});
                    }
                    if let Some(t) = transmit(&mut host, &mut buf) {
                        let _ = board.handle_bundle(now, t, |_, _| {});
                    }
                }
            }
            Op::Raw(to_board, bytes) => {
                let s = if to_board { &mut board } else { &mut host };
                let _ = s.handle_bundle(now, &bytes, |_, _| {});
            }
            Op::Hello(to_board, version, role, flags, caps, max_bundle, max_mtu) => {
                let msg = Control::Hello(Hello {
                    version,
                    role: match role % 3 {
                        0 => Role::Board,
                        1 => Role::Host,
                        _ => Role::Unknown(role),
                    },
                    flags,
                    capabilities: Capabilities(caps),
                    max_bundle,
                    max_mtu,
                    identity: "x".into(),
                });
                let s = if to_board { &mut board } else { &mut host };
                let _ = s.handle_bundle(now, &one_control(&msg), |_, _| {});
            }
            Op::Keepalive(to_board, ack, seq, timestamp_us) => {
                let k = Keepalive { seq, timestamp_us };
                let msg = if ack {
                    Control::KeepaliveAck(k)
                } else {
                    Control::Keepalive(k)
                };
                let s = if to_board { &mut board } else { &mut host };
                let _ = s.handle_bundle(now, &one_control(&msg), |_, _| {});
            }
            Op::Advance(ms) => {
                now = now + core::time::Duration::from_millis(u64::from(ms));
                for s in [&mut board, &mut host] {
                    // Timers never lie in the past for long: after handle_timeout, the next one is
                    // due no earlier than now, or immediately work is pending.
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        s.handle_timeout(now);
                    }
                }
            }
            Op::Reset(b) => (if b { &mut board } else { &mut host }).reset(now),
            Op::Close(b) => {
                (if b { &mut board } else { &mut host }).close(ByeReason::Shutdown, "bye")
            }
            Op::QueueStats(b) => (if b { &mut board } else { &mut host }).queue_stats(),
            Op::SetLinkConfig(mtu) => host.set_link_config(LinkConfig {
                mtu,
                ..LinkConfig::default()
            }),
        }
        while board.poll_event().is_some() {}
        while host.poll_event().is_some() {}
        assert!(board.tx_max_bundle() >= shared_frame::MIN_MAX_BUNDLE);
        assert!(host.tx_max_bundle() >= shared_frame::MIN_MAX_BUNDLE);
    }
});
