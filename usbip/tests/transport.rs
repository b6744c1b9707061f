//! The tokio transport against an in-process fake usbipd on a real loopback TCP socket: device list,
//! import, descriptor setup, bundles both ways with several URBs in flight, and every bad-input path
//! (refused import, truncated and garbage replies, a peer that vanishes mid-URB, a silent peer, a broken
//! qubes.USB line). The fake server parses commands with the crate's server-side parsers and answers
//! like usbip-host: RET_SUBMIT only for completed URBs, RET_UNLINK(-ECONNRESET) for unlinked ones.
#![cfg(feature = "tokio")]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qbkit_usbip::op::{self, DeviceInfo, OpRequest};
use qbkit_usbip::transport::{LinkOptions, TransportError, UsbipLink, list};
use qbkit_usbip::urb::{ECONNRESET, HEADER_LEN, Pdu, RetSubmit, RetUnlink, flags};
use qbkit_usbip::{Error, SetupPacket, Speed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FFS_CONFIG: [u8; 32] = [
    9, 2, 32, 0, 1, 1, 0, 0x80, 50, // config 1, one interface
    9, 4, 0, 0, 2, 0xff, 0, 0, 1, // vendor interface 0
    7, 5, 0x81, 2, 0x00, 0x02, 0, // bulk IN 0x81, 512
    7, 5, 0x02, 2, 0x00, 0x02, 0, // bulk OUT 0x02, 512
];
const DEVICE_DESC: [u8; 18] = [
    18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Answer the first URB with non-USB/IP bytes.
    Garbage,
    /// Send 100 bytes of the import reply, then close.
    TruncatedImport,
    /// After the first bulk OUT URB, close without answering anything.
    VanishMidUrb,
    /// After the first bulk OUT URB, send 30 bytes of a RET_SUBMIT, then close.
    VanishMidReply,
    /// Accept the import request and never answer.
    Silent,
}

#[derive(Debug, Default)]
struct Seen {
    max_pending_in: usize,
    out_urbs: usize,
    out_zero_packet: usize,
    set_configuration: Vec<u16>,
    imports: Vec<String>,
}

fn device(config_value: u8) -> DeviceInfo {
    DeviceInfo {
        path: "/sys/devices/platform/dummy_hcd.0/usb1/1-1".into(),
        busid: "1-1".into(),
        busnum: 1,
        devnum: 2,
        speed: Speed::High,
        vendor_id: 0x1209,
        product_id: 0x0001,
        bcd_device: 0x0100,
        class: 0,
        subclass: 0,
        protocol: 0,
        configuration_value: config_value,
        num_configurations: 1,
        num_interfaces: 1,
        interfaces: vec![op::InterfaceInfo {
            class: 0xff,
            subclass: 0,
            protocol: 0,
        }],
    }
}

struct Fake {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

/// Starts a fake usbipd serving connections one after another. `qubes`: skip the OP phase and send
/// the "<devid> <speed>" line first, as the qubes.USB service does.
async fn fake(fault: Fault, config_value: u8, qubes: bool) -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let _ = serve(sock, fault, config_value, qubes, seen).await;
            });
        }
    });
    Fake { port, seen }
}

async fn read_exact_or_eof(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut b = vec![0; n];
    s.read_exact(&mut b).await.ok()?;
    Some(b)
}

fn ret_submit(seqnum: u32, status: i32, data_len: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Pdu::RetSubmit(RetSubmit {
        seqnum,
        devid: 0,
        direction: 0,
        ep: 0,
        status,
        actual_length: data_len,
        start_frame: 0,
        number_of_packets: 0,
        error_count: 0,
    })
    .emit(&mut out);
    out.extend_from_slice(data);
    out
}

#[allow(clippy::too_many_lines, reason = "one server loop, read top to bottom")]
async fn serve(
    mut s: TcpStream,
    fault: Fault,
    config_value: u8,
    qubes: bool,
    seen: Arc<Mutex<Seen>>,
) -> Option<()> {
    let dev = device(config_value);
    if qubes {
        s.write_all(format!("{} 480\n", dev.devid()).as_bytes())
            .await
            .ok()?;
    } else {
        let mut buf = Vec::new();
        let req = loop {
            if let Some((r, _)) = op::parse_op_request(&buf).ok()? {
                break r;
            }
            let mut c = [0u8; 64];
            let n = s.read(&mut c).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&c[..n]);
        };
        let mut out = Vec::new();
        match req {
            OpRequest::Devlist => {
                op::emit_rep_devlist(&mut out, std::slice::from_ref(&dev));
                s.write_all(&out).await.ok()?;
                return Some(());
            }
            OpRequest::Import(busid) => {
                seen.lock().unwrap().imports.push(busid.clone());
                if fault == Fault::Silent {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return None;
                }
                let mut d = dev.clone();
                d.interfaces.clear();
                op::emit_rep_import(&mut out, (busid == dev.busid).then_some(&d));
                if fault == Fault::TruncatedImport {
                    out.truncate(100);
                }
                s.write_all(&out).await.ok()?;
                if busid != dev.busid || fault == Fault::TruncatedImport {
                    return None;
                }
            }
        }
    }
    // URB phase.
    let mut config = config_value;
    let mut pending_in: VecDeque<(u32, u32)> = VecDeque::new(); // (seqnum, length)
    let mut echo: VecDeque<Vec<u8>> = VecDeque::new();
    loop {
        let hdr = read_exact_or_eof(&mut s, HEADER_LEN).await?;
        let pdu = Pdu::parse(&hdr).ok()?;
        if fault == Fault::Garbage {
            s.write_all(b"<html>not usbip</html> padding padding padding padding")
                .await
                .ok()?;
            return None;
        }
        let mut out = Vec::new();
        match pdu {
            Pdu::CmdSubmit(c) => {
                assert_eq!(c.devid, dev.devid(), "devid must be busnum << 16 | devnum");
                let data = read_exact_or_eof(&mut s, c.payload_len() as usize).await?;
                if c.ep == 0 {
                    let setup = SetupPacket::from_bytes(c.setup);
                    let reply: Vec<u8> = match (setup.request, setup.value >> 8) {
                        (SetupPacket::GET_DESCRIPTOR, 1) => DEVICE_DESC.to_vec(),
                        (SetupPacket::GET_DESCRIPTOR, 2) => FFS_CONFIG.to_vec(),
                        (SetupPacket::GET_CONFIGURATION, _) => vec![config],
                        (SetupPacket::SET_CONFIGURATION, _) => {
                            seen.lock().unwrap().set_configuration.push(setup.value);
                            config = setup.value as u8;
                            vec![]
                        }
                        _ => {
                            out = ret_submit(c.seqnum, -32, 0, &[]);
                            s.write_all(&out).await.ok()?;
                            continue;
                        }
                    };
                    let n = reply.len().min(usize::from(setup.length));
                    out = ret_submit(c.seqnum, 0, n as u32, &reply[..n]);
                } else if c.direction == qbkit_usbip::Direction::In {
                    assert_eq!(c.ep, 1);
                    assert_ne!(c.transfer_flags & flags::DIR_IN, 0);
                    pending_in.push_back((c.seqnum, c.transfer_buffer_length));
                    let mut g = seen.lock().unwrap();
                    g.max_pending_in = g.max_pending_in.max(pending_in.len());
                } else {
                    assert_eq!(c.ep, 2);
                    {
                        let mut g = seen.lock().unwrap();
                        g.out_urbs += 1;
                        if c.transfer_flags & flags::ZERO_PACKET != 0 {
                            g.out_zero_packet += 1;
                        }
                    }
                    match fault {
                        Fault::VanishMidUrb => return None,
                        Fault::VanishMidReply => {
                            let r = ret_submit(c.seqnum, 0, data.len() as u32, &[]);
                            s.write_all(&r[..30]).await.ok()?;
                            return None;
                        }
                        _ => {}
                    }
                    echo.push_back(data.clone());
                    out = ret_submit(c.seqnum, 0, data.len() as u32, &[]);
                }
            }
            Pdu::CmdUnlink(u) => {
                let before = pending_in.len();
                pending_in.retain(|&(seq, _)| seq != u.unlink_seqnum);
                let status = if pending_in.len() < before {
                    ECONNRESET
                } else {
                    0
                };
                Pdu::RetUnlink(RetUnlink {
                    seqnum: u.seqnum,
                    devid: 0,
                    direction: 0,
                    ep: 0,
                    status,
                })
                .emit(&mut out);
            }
            _ => return None,
        }
        // Complete IN URBs with echoed data, oldest first.
        while !pending_in.is_empty() && !echo.is_empty() {
            let (seq, len) = pending_in.pop_front().unwrap();
            let data = echo.pop_front().unwrap();
            let n = data.len().min(len as usize);
            out.extend(ret_submit(seq, 0, n as u32, &data[..n]));
        }
        s.write_all(&out).await.ok()?;
    }
}

fn url(port: u16, busid: &str) -> String {
    format!("usbip://127.0.0.1:{port}/{busid}")
}

fn bundle(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
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
    assert!(
        matches!(
            e,
            TransportError::Protocol {
                source: Error::OpRefused {
                    op: "import",
                    status: 1
                },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("usbip bind"), "{e}");
}

#[tokio::test]
async fn truncated_import_reply() {
    let f = fake(Fault::TruncatedImport, 1, false).await;
    let e = UsbipLink::connect(&url(f.port, "1-1")).await.unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::Protocol {
                source: Error::PeerClosed { partial: 100, .. },
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn garbage_reply_to_an_urb() {
    let f = fake(Fault::Garbage, 1, false).await;
    let e = UsbipLink::connect(&url(f.port, "1-1")).await.unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::Protocol {
                source: Error::BadCommand(_),
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn peer_vanishes_mid_urb() {
    let f = fake(Fault::VanishMidUrb, 1, false).await;
    let mut link = UsbipLink::connect(&url(f.port, "1-1")).await.unwrap();
    link.send_bundle(&bundle(0, 100)).await.unwrap();
    let e = link.recv_bundle().await.unwrap_err();
    // 4 IN URBs and the OUT URB never completed.
    assert!(
        matches!(
            e,
            TransportError::Protocol {
                source: Error::PeerClosed {
                    in_flight: 5,
                    partial: 0
                },
                ..
            }
        ),
        "{e}"
    );
    // The link stays failed; a new connect is the way out.
    assert!(link.recv_bundle().await.is_err());
    assert!(link.send_bundle(b"x").await.is_err());
}

#[tokio::test]
async fn peer_vanishes_mid_reply() {
    let f = fake(Fault::VanishMidReply, 1, false).await;
    let mut link = UsbipLink::connect(&url(f.port, "1-1")).await.unwrap();
    link.send_bundle(&bundle(0, 100)).await.unwrap();
    let e = link.recv_bundle().await.unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::Protocol {
                source: Error::PeerClosed { partial: 30, .. },
                ..
            }
        ),
        "{e}"
    );
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
