//! tray-demo: shows the qbkit tray icon (host/src/tray, compiled in via #[path]) and changes its
//! state from commands on stdin, one per line: `noboard`, `connecting`, `online`, `error`,
//! `quit`. Menu actions are printed to stdout as `action <Debug>`. Used by tests/tray/run.

#[path = "../../../../host/src/tray/mod.rs"]
#[allow(dead_code, unreachable_pub)]
mod tray;

use std::io::BufRead as _;

use tokio::sync::{mpsc, watch};
use tray::{BoardEntry, LinkState, Snapshot};

fn snapshot(state: LinkState) -> Snapshot {
    let board = BoardEntry {
        serial: "DEMO00000001".into(),
        location: "tcp 127.0.0.1:4747".into(),
    };
    let attached = state != LinkState::NoBoard;
    Snapshot {
        state,
        board_serial: attached.then(|| board.serial.clone()),
        board_address: (state == LinkState::Online).then(|| "10.47.0.2".into()),
        link_speed: attached.then(|| "tcp 127.0.0.1:4747".into()),
        rate_up_bps: if state == LinkState::Online {
            1_250_000
        } else {
            0
        },
        rate_down_bps: if state == LinkState::Online {
            48_000
        } else {
            0
        },
        flows: if state == LinkState::Online { 3 } else { 0 },
        boards: if attached { vec![board] } else { Vec::new() },
        connect_wanted: true,
        error: (state == LinkState::Error).then(|| "protocol version mismatch".into()),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (snap_tx, snap_rx) = watch::channel(snapshot(LinkState::NoBoard));
    let (act_tx, mut act_rx) = mpsc::unbounded_channel();
    // The "engine": stdin commands become snapshots; actions are printed.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let state = match line.trim() {
                "noboard" => LinkState::NoBoard,
                "connecting" => LinkState::Connecting,
                "online" => LinkState::Online,
                "error" => LinkState::Error,
                "quit" => break,
                other => {
                    eprintln!("unknown command {other:?}");
                    continue;
                }
            };
            snap_tx.send_replace(snapshot(state));
            println!("state {}", state.label());
            while let Ok(a) = act_rx.try_recv() {
                println!("action {a:?}");
            }
        }
        // Dropping snap_tx ends tray::run.
    });
    let config = tray::TrayConfig {
        log_path: None,
        autostart_command: vec!["tray-demo".into()],
    };
    if let Err(e) = tray::run(config, snap_rx, act_tx) {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
