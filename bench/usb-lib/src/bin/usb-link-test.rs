//! VM test of the qbkit-usb crate against ffs-dev (see `vm-link-test.sh`): find the board through
//! `BoardWatch`, open it with `UsbLink`, check IN data and OUT bundles (64 KiB ones exercise the
//! ZLP rule), then replug it REPLUGS times by powering its host port off and on (VM recipe pitfall
//! 19) and assert that the link reports `Disconnected` (no hang), the watch reports `Left` and
//! `Arrived`, and the reopened link carries data again.
//!
//! Usage (as root in the usbvm, ffs-dev running): usb-link-test [REPLUGS] [EXPECT_HOTPLUG=0|1]

use std::path::PathBuf;
use std::time::Duration;

use qbkit_usb::{BoardEvent, BoardWatch, DeviceFilter, UsbConfig, UsbLink};
use tokio::time::timeout;
use usb_lib_bench::{CHUNK, pattern};

const STEP: Duration = Duration::from_secs(20);

async fn next_event(watch: &mut BoardWatch) -> BoardEvent {
    timeout(STEP, watch.next())
        .await
        .expect("watch event within 20 s")
        .expect("watch")
}

async fn wait_arrival(watch: &mut BoardWatch) -> qbkit_usb::Board {
    loop {
        match next_event(watch).await {
            BoardEvent::Arrived(b) => return b,
            ev @ BoardEvent::Left { .. } => println!("usb-link-test: event {ev:?}"),
        }
    }
}

async fn exercise(link: &mut UsbLink, round: u32) {
    let pat = pattern(CHUNK);
    let mut bytes = 0usize;
    for _ in 0..16 {
        let b = timeout(STEP, link.recv_bundle())
            .await
            .expect("IN within 20 s")
            .expect("recv");
        assert!(!b.is_empty());
        bytes += b.len();
    }
    // ffs-dev checks every OUT transfer against its pattern: a full 64 KiB bundle (needs a ZLP:
    // multiple of 512 and 1024) and short ones.
    for i in 0..8 {
        let len = if i % 2 == 0 { CHUNK } else { 1000 + i };
        timeout(STEP, link.send_bundle(&pat[..len]))
            .await
            .expect("send within 20 s")
            .expect("send");
    }
    timeout(STEP, link.flush())
        .await
        .expect("flush within 20 s")
        .expect("flush");
    println!(
        "usb-link-test: round {round}: {} at {:?}, 16 IN bundles ({bytes} bytes), 8 OUT bundles ok",
        link.info().bus_path,
        link.info().speed
    );
}

fn port_disable_file(bus_path: &str) -> PathBuf {
    std::fs::canonicalize(format!("/sys/bus/usb/devices/{bus_path}/port"))
        .expect("port link of the board")
        .join("disable")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut args = std::env::args().skip(1);
    let replugs: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let expect_hotplug = args.next().is_some_and(|s| s == "1");
    // With hotplug, rescans are too slow to matter; without, rescan every second.
    let rescan = if expect_hotplug {
        Duration::from_hours(1)
    } else {
        Duration::from_secs(1)
    };
    let mut watch = BoardWatch::with_rescan(DeviceFilter::default(), rescan);
    println!("usb-link-test: hotplug available: {}", watch.has_hotplug());

    let board = wait_arrival(&mut watch).await;
    let mut link = UsbLink::open_board(&board, UsbConfig::default())
        .await
        .expect("open");
    let iface = link.interface();
    println!(
        "usb-link-test: opened {:?}, interface {iface:?}",
        link.info()
    );
    exercise(&mut link, 0).await;

    for round in 1..=replugs {
        let disable = port_disable_file(&link.info().bus_path);
        std::fs::write(&disable, "1").expect("port off");
        // The open link must fail cleanly: every queued IN transfer completes with an error.
        let err = loop {
            match timeout(STEP, link.recv_bundle())
                .await
                .expect("no hang after unplug")
            {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        println!("usb-link-test: round {round}: link error after port off: {err}");
        assert!(err.is_disconnect(), "expected Disconnected, got {err:?}");
        assert!(link.send_bundle(&[0u8; 100]).await.is_err() || link.flush().await.is_err());
        drop(link);
        loop {
            if let BoardEvent::Left { info, .. } = next_event(&mut watch).await {
                println!("usb-link-test: round {round}: left {}", info.bus_path);
                break;
            }
        }
        std::fs::write(&disable, "0").expect("port on");
        let board = wait_arrival(&mut watch).await;
        link = UsbLink::open_board(&board, UsbConfig::default())
            .await
            .expect("reopen");
        exercise(&mut link, round).await;
    }
    let s = watch.stats();
    println!(
        "usb-link-test: PASS replugs={replugs} events from hotplug={} from rescan={}",
        s.from_hotplug, s.from_rescan
    );
    if expect_hotplug {
        assert!(
            s.from_hotplug >= u64::from(2 * replugs),
            "replugs not seen through hotplug: {s:?}"
        );
    }
}
