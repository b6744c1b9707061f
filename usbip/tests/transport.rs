//! The tokio transport against an in-process fake usbipd on a real loopback TCP socket: device list,
//! import, descriptor setup, bundles both ways with several URBs in flight, and every bad-input path
//! (refused import, truncated and garbage replies, a peer that vanishes mid-URB, a silent peer, a broken
//! qubes.USB line). The fake server (`qbkit_usbip::fake`) parses commands with the crate's server-side parsers and answers
//! like usbip-host: RET_SUBMIT only for completed URBs, RET_UNLINK(-ECONNRESET) for unlinked ones.
#![cfg(feature = "fake")]

use std::time::Duration;

use qbkit_usbip::fake::{Fault, device, fake};
use qbkit_usbip::transport::{LinkOptions, TransportError, UsbipLink, list};
use qbkit_usbip::{Error, Speed};
use tokio::net::TcpListener;

fn url(port: u16, busid: &str) -> String {
    format!("usbip://127.0.0.1:{port}/{busid}")
}

fn bundle(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// Asserts that `e` is a USB/IP protocol error whose diagnosis matches `source`.
macro_rules! assert_protocol_error {
    ($e:expr, $source:pat) => {{
        let e = &$e;
        assert!(
            matches!(
                e,
                TransportError::Protocol {
                    source: $source,
                    ..
                }
            ),
            "{e}"
        );
    }};
}

/// The error of connecting to a fake usbipd that misbehaves with `fault` during setup.
async fn connect_error(fault: Fault) -> TransportError {
    let f = fake(fault, 1, false).await;
    UsbipLink::connect(&url(f.port, "1-1")).await.unwrap_err()
}

/// The link to a fake usbipd that misbehaves with `fault` once URBs flow, and the error of
/// receiving after one bundle was sent.
async fn recv_error(fault: Fault) -> (UsbipLink, TransportError) {
    let f = fake(fault, 1, false).await;
    let mut link = UsbipLink::connect(&url(f.port, "1-1")).await.unwrap();
    link.send_bundle(&bundle(0, 100)).await.unwrap();
    let e = link.recv_bundle().await.unwrap_err();
    (link, e)
}

#[tokio::test]
async fn lists_devices() {
    let f = fake(Fault::None, 1, false).await;
    let devs = list(&format!("127.0.0.1:{}", f.port)).await.unwrap();
    assert_eq!(devs, vec![device(1)]);
    let devs = list(&format!("usbip://127.0.0.1:{}", f.port))
        .await
        .unwrap();
    assert_eq!(devs.len(), 1);
}

#[tokio::test]
async fn bundles_both_ways_with_urbs_in_flight() {
    let f = fake(Fault::None, 1, false).await;
    let mut link = UsbipLink::connect(&url(f.port, "1-1")).await.unwrap();
    let info = link.info().clone();
    assert_eq!((info.vendor_id, info.product_id), (0x1209, 0x0001));
    assert_eq!(
        (info.bulk.ep_in, info.bulk.ep_out, info.bulk.mps_out),
        (0x81, 0x02, 512)
    );
    assert_eq!(info.devid, 1 << 16 | 2);
    // Sizes around the 512-byte packet size, and a full 64 KiB bundle.
    let sizes = [1, 511, 512, 1024, 1500, 4096, 65536, 8, 513, 2048];
    for (i, &n) in sizes.iter().enumerate() {
        link.send_bundle(&bundle(i, n)).await.unwrap();
    }
    for (i, &n) in sizes.iter().enumerate() {
        let got = link.recv_bundle().await.unwrap();
        assert_eq!(got, bundle(i, n).as_slice(), "bundle {i}");
    }
    let st = link.stats();
    assert_eq!((st.bundles_out, st.bundles_in), (10, 10));
    let seen = f.seen.lock().unwrap();
    assert!(seen.max_pending_in >= 4, "{seen:?}");
    assert_eq!(seen.out_urbs, 10);
    assert_eq!(
        seen.out_zero_packet, 10,
        "every bulk OUT carries URB_ZERO_PACKET"
    );
    assert!(seen.set_configuration.is_empty(), "already configured");
    assert_eq!(seen.imports, vec!["1-1".to_string()]);
}

#[tokio::test]
async fn configures_an_unconfigured_device() {
    let f = fake(Fault::None, 0, false).await;
    let link = UsbipLink::connect(&url(f.port, "1-1")).await.unwrap();
    assert_eq!(link.info().configuration, 1);
    assert_eq!(f.seen.lock().unwrap().set_configuration, vec![1]);
}

#[tokio::test]
async fn wrong_device_is_refused() {
    let f = fake(Fault::None, 1, false).await;
    let e = UsbipLink::connect_with(
        &url(f.port, "1-1"),
        LinkOptions::default().vid_pid(Some((0x1234, 0x5678))),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, TransportError::WrongDevice { vid: 0x1209, .. }),
        "{e}"
    );
}

#[tokio::test]
async fn unknown_busid_is_a_clear_error() {
    let f = fake(Fault::None, 1, false).await;
    let e = UsbipLink::connect(&url(f.port, "9-9")).await.unwrap_err();
    assert_protocol_error!(
        e,
        Error::OpRefused {
            op: "import",
            status: 1
        }
    );
    assert!(e.to_string().contains("usbip bind"), "{e}");
}

#[tokio::test]
async fn truncated_import_reply() {
    let e = connect_error(Fault::TruncatedImport).await;
    assert_protocol_error!(e, Error::PeerClosed { partial: 100, .. });
}

#[tokio::test]
async fn garbage_reply_to_an_urb() {
    let e = connect_error(Fault::Garbage).await;
    assert_protocol_error!(e, Error::BadCommand(_));
}

#[tokio::test]
async fn peer_vanishes_mid_urb() {
    let (mut link, e) = recv_error(Fault::VanishMidUrb).await;
    // 4 IN URBs and the OUT URB never completed.
    assert_protocol_error!(
        e,
        Error::PeerClosed {
            in_flight: 5,
            partial: 0
        }
    );
    // The link stays failed; a new connect is the way out.
    assert!(link.recv_bundle().await.is_err());
    assert!(link.send_bundle(b"x").await.is_err());
}

#[tokio::test]
async fn peer_vanishes_mid_reply() {
    let (_, e) = recv_error(Fault::VanishMidReply).await;
    assert_protocol_error!(e, Error::PeerClosed { partial: 30, .. });
}

#[tokio::test]
async fn silent_peer_times_out() {
    let f = fake(Fault::Silent, 1, false).await;
    let e = UsbipLink::connect_with(
        &url(f.port, "1-1"),
        LinkOptions::default().setup_timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
}

#[tokio::test]
async fn refused_connection_is_an_io_error() {
    // Bind and drop to get a port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = UsbipLink::connect(&url(port, "1-1")).await.unwrap_err();
    assert!(matches!(e, TransportError::Io { .. }), "{e}");
}

/// qubes-usb: a bash /dev/tcp relay stands in for `qrexec-client-vm sys-usb qubes.USB+1-1`; the fake
/// server writes the "<devid> <speed>" line and then speaks the URB stream, with no OP phase.
#[tokio::test]
async fn qubes_usb_command() {
    let f = fake(Fault::None, 0, true).await;
    let cmd = format!(
        "qubes-usb:exec bash -c 'exec 3<>/dev/tcp/127.0.0.1/{}; cat <&3 & exec cat >&3'",
        f.port
    );
    let mut link = UsbipLink::connect(&cmd).await.unwrap();
    assert_eq!(link.info().devid, 1 << 16 | 2);
    assert_eq!(link.info().speed, Speed::High);
    assert_eq!(f.seen.lock().unwrap().set_configuration, vec![1]);
    for i in 0..4 {
        link.send_bundle(&bundle(i, 3000)).await.unwrap();
        assert_eq!(
            link.recv_bundle().await.unwrap(),
            bundle(i, 3000).as_slice()
        );
    }
}

#[tokio::test]
async fn qubes_usb_bad_lines() {
    for cmd in [
        "qubes-usb:echo hello",
        "qubes-usb:true",
        "qubes-usb:echo 1 warp",
    ] {
        let e = UsbipLink::connect(cmd).await.unwrap_err();
        assert!(matches!(e, TransportError::QubesLine { .. }), "{cmd}: {e}");
    }
}
