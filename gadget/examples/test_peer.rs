//! Test peer for `tests/netns/gadget-e2e`: plays the laptop side of a stream link with
//! shared-frame only (no NAT). It connects to the daemon's `unix-listen://` socket, runs a host
//! `Session` offering a LinkConfig, answers ICMP echo requests to the gateway address, and injects
//! one malformed bundle and one wrong-version Hello after the link is up.
//!
//! Output, one line each on stdout: `UP`, `INJECTED`, `PING <seq>` per echo request answered.
//! Usage: gadget-test-peer SOCKET_PATH SECONDS
//!        gadget-test-peer --dump-handshake FILE   (Hello + LinkConfig bundle, for the VM's pyusb peer)

use std::time::Duration;

use qbkit_link::{BundleReader, Connector, LinkUrl, write_bundle};
use shared_frame::{
    BundleWriter, CHANNEL_NET, Capabilities, Control, DEFAULT_MAX_BUNDLE, Hello, Instant,
    LinkConfig, Role, Session, SessionConfig, SessionEvent,
};

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo reply for an IPv4 ICMP echo request to 10.47.0.1, else None.
fn echo_reply(p: &[u8]) -> Option<(Vec<u8>, u16)> {
    if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 1 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if p[16..20] != [10, 47, 0, 1] || p.get(ihl) != Some(&8) {
        return None;
    }
    let mut r = p.to_vec();
    r[12..16].copy_from_slice(&p[16..20]);
    r[16..20].copy_from_slice(&p[12..16]);
    r[10..12].fill(0);
    let c = checksum(&r[..ihl]);
    r[10..12].copy_from_slice(&c.to_be_bytes());
    r[ihl] = 0;
    r[ihl + 2..ihl + 4].fill(0);
    let c = checksum(&r[ihl..]);
    r[ihl + 2..ihl + 4].copy_from_slice(&c.to_be_bytes());
    let seq = u16::from_be_bytes([p[ihl + 6], p[ihl + 7]]);
    Some((r, seq))
}

fn bundle(f: impl FnOnce(&mut BundleWriter<'_>)) -> Vec<u8> {
    let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
    let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
    f(&mut w);
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn offer() -> LinkConfig {
    shared_frame::testing::link_config_v4(9000)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--dump-handshake") {
        let b = bundle(|w| {
            w.push_control(&Control::Hello(Hello {
                version: shared_frame::PROTOCOL_VERSION,
                role: Role::Host,
                flags: 0,
                capabilities: Capabilities::ALL,
                max_bundle: 65536,
                max_mtu: 16384,
                identity: "vm-pyusb-peer".into(),
            }))
            .unwrap();
            w.push_control(&Control::LinkConfig(offer())).unwrap();
        });
        std::fs::write(&args[2], b).expect("write handshake");
        return;
    }
    let path = args.get(1).expect("usage: gadget-test-peer SOCKET SECONDS");
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let url = LinkUrl::parse(&format!("unix://{path}")).unwrap();
    let start = std::time::Instant::now();
    let now = || Instant::from_micros(start.elapsed().as_micros() as u64);
    let mut conn = Connector::new(url);
    let (r, mut w) = loop {
        match conn.connect().await {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect: {e}"),
        }
    };
    let mut cfg = SessionConfig::new(Role::Host, "gadget-test-peer");
    cfg.link_config = Some(offer());
    let mut s = Session::new(cfg, now());
    let mut reader = BundleReader::new(r, DEFAULT_MAX_BUNDLE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut injected = false;
    loop {
        let mut replies = Vec::new();
        let out = bundle(|w| {
            s.poll_control(w);
        });
        if out.len() > 8 {
            write_bundle(&mut w, &out).await.unwrap();
        }
        while let Some(ev) = s.poll_event() {
            if let SessionEvent::Up(_) = ev {
                println!("UP");
                if !injected {
                    injected = true;
                    // A bundle whose record runs past its end: counted, rest of the link unaffected.
                    let mut bad = bundle(|w| w.push_ip(CHANNEL_NET, &[0x45; 40]).unwrap());
                    bad[10] = 0xff; // record length low byte → overruns the bundle
                    write_bundle(&mut w, &bad).await.unwrap();
                    let old = bundle(|w| {
                        w.push_control(&Control::Hello(Hello {
                            version: 0,
                            role: Role::Host,
                            flags: 0,
                            capabilities: Capabilities::ALL,
                            max_bundle: 65536,
                            max_mtu: 16384,
                            identity: "ancient host".into(),
                        }))
                        .unwrap();
                    });
                    write_bundle(&mut w, &old).await.unwrap();
                    println!("INJECTED");
                }
            }
        }
        let timeout = s.poll_timeout().map_or(Duration::from_secs(1), |t| {
            Duration::from_micros(t.as_micros().saturating_sub(now().as_micros()))
        });
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            () = tokio::time::sleep(timeout) => s.handle_timeout(now()),
            b = reader.next() => match b {
                Ok(Some(b)) => {
                    let _ = s.handle_bundle(now(), b, |_, p| {
                        if let Some(r) = echo_reply(p) {
                            replies.push(r);
                        }
                    });
                }
                Ok(None) | Err(_) => break,
            },
        }
        for (r, seq) in replies {
            println!("PING {seq}");
            let b = bundle(|w| w.push_ip(CHANNEL_NET, &r).unwrap());
            write_bundle(&mut w, &b).await.unwrap();
        }
    }
}
