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

use qbkit_link::{BundleReader, Connector, LinkUrl, LinkWrite, write_bundle};
use shared_frame::{
    BundleWriter, Capabilities, Control, DEFAULT_MAX_BUNDLE, Hello, Instant, Role, Session,
    SessionConfig, SessionEvent,
};
use tokio::io::AsyncBufReadExt as _;

/// Writes one bundle filled by `fill`; nothing when it stays empty.
async fn send(w: &mut LinkWrite, fill: impl FnOnce(&mut BundleWriter<'_>)) {
    let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
    let mut bundle = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
    fill(&mut bundle);
    if !bundle.is_empty() {
        let n = bundle.finish();
        write_bundle(w, &buf[..n]).await.expect("write to the host");
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: fake_board URL [--old-version]");
    let old_version = args.iter().any(|a| a == "--old-version");
    let mut conn = Connector::new(LinkUrl::parse(url).expect("bad URL"));
    let start = std::time::Instant::now();
    let now = || Instant::from_micros(start.elapsed().as_micros() as u64);
    // The host may not listen yet: dial until it does, for at most 10 s.
    let dial = async {
        loop {
            if let Ok(s) = conn.connect().await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (r, mut w) = tokio::time::timeout(Duration::from_secs(10), dial)
        .await
        .expect("the host did not accept within 10 s");
    println!("CONNECTED");
    let mut s = Session::new(SessionConfig::new(Role::Board, "fake-board FB0001"), now());
    let mut reader = BundleReader::new(r, DEFAULT_MAX_BUNDLE);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    if old_version {
        let hello = Hello {
            version: 0,
            role: Role::Board,
            flags: 0,
            capabilities: Capabilities::ALL,
            max_bundle: 65536,
            max_mtu: 16384,
            identity: "ancient board".into(),
        };
        send(&mut w, |b| b.push_control(&Control::Hello(hello)).unwrap()).await;
    }
    loop {
        if !old_version {
            send(&mut w, |b| {
                s.poll_control(b);
            })
            .await;
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
