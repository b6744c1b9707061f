//! Fake board for `tests/tray/run`: the board side of a stream link with shared-frame only (no
//! TUN, no root). It dials the host's stream link (`unix:///PATH`, `tcp://ADDR:PORT`), runs a
//! board-role `Session` (Hello, takes the LinkConfig, answers keepalives) and keeps the link open
//! until stdin closes or reads `quit`; then it drops the connection, so the host sees the link go
//! down.
//!
//! Output, one line each on stdout: `CONNECTED`, `UP <board address>` when the session is up,
//! `DOWN` when the host closed the link (then it exits).
//! Usage: fake_board URL [--old-version]
//!   --old-version  send a Hello with protocol version 0 instead (the host must report an error)

use std::time::Duration;

use qbkit_link::{BundleReader, Connector, LinkUrl, write_bundle};
use shared_frame::{
    BundleWriter, Capabilities, Control, DEFAULT_MAX_BUNDLE, Hello, Instant, Role, Session,
    SessionConfig, SessionEvent,
};
use tokio::io::AsyncBufReadExt as _;

fn bundle(f: impl FnOnce(&mut BundleWriter<'_>)) -> Vec<u8> {
    let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
    let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
    f(&mut w);
    let n = w.finish();
    buf.truncate(n);
    buf
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: fake_board URL [--old-version]");
    let old_version = args.iter().any(|a| a == "--old-version");
    let url = LinkUrl::parse(url).expect("bad URL");
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
    println!("CONNECTED");
    let mut s = Session::new(SessionConfig::new(Role::Board, "fake-board FB0001"), now());
    let mut reader = BundleReader::new(r, DEFAULT_MAX_BUNDLE);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    if old_version {
        let hello = bundle(|w| {
            w.push_control(&Control::Hello(Hello {
                version: 0,
                role: Role::Board,
                flags: 0,
                capabilities: Capabilities::ALL,
                max_bundle: 65536,
                max_mtu: 16384,
                identity: "ancient board".into(),
            }))
            .unwrap();
        });
        write_bundle(&mut w, &hello).await.unwrap();
    }
    loop {
        if !old_version {
            let out = bundle(|w| {
                s.poll_control(w);
            });
            if out.len() > 8 {
                write_bundle(&mut w, &out).await.unwrap();
            }
        }
        while let Some(ev) = s.poll_event() {
            if let SessionEvent::LinkConfig(lc) = ev {
                let addr = lc.ipv4.map(|c| c.addr.to_string()).unwrap_or_default();
                println!("UP {addr}");
            }
        }
        let timeout = s.poll_timeout().map_or(Duration::from_secs(1), |t| {
            Duration::from_micros(t.as_micros().saturating_sub(now().as_micros()))
        });
        tokio::select! {
            () = tokio::time::sleep(timeout) => s.handle_timeout(now()),
            line = stdin.next_line() => match line {
                Ok(Some(l)) if l.trim() != "quit" => {}
                _ => break,
            },
            b = reader.next() => {
                let Ok(Some(b)) = b else {
                    println!("DOWN");
                    break;
                };
                let _ = s.handle_bundle(now(), b, |_, _| {});
            }
        }
    }
    // Not a return: tokio's runtime would wait for the blocking stdin read to finish.
    std::process::exit(0);
}
