//! A fake usbipd for tests (feature `fake`): serves one board on a loopback TCP port the way
//! usbip-host does (RET_SUBMIT only for completed URBs, RET_UNLINK(-ECONNRESET) for unlinked ones),
//! echoing every bulk OUT transfer back as the next bulk IN completion, with a [`Fault`] injected
//! on request. Used by this crate's transport tests and by `qbkit-host`'s USB/IP transport tests.
//!
//! Data flow per connection: OP_REQ_DEVLIST / OP_REQ_IMPORT (or, for `qubes`, the
//! "<devid> <speed>" line) → URB loop: control requests answered from [`DEVICE_DESC`] and
//! [`FFS_CONFIG`], bulk IN URBs parked until an OUT payload can complete them; [`Seen`] records
//! what the client did for the test's assertions.
#![allow(
    clippy::missing_panics_doc,
    clippy::too_many_lines,
    missing_docs,
    reason = "test support: asserts on what the client sends"
)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::SetupPacket;
use crate::op::{self, DeviceInfo, OpRequest};
use crate::testing::{dummy_hcd_device, ret_submit};
use crate::urb::{ECONNRESET, HEADER_LEN, Pdu, RetUnlink, flags};

pub const FFS_CONFIG: [u8; 32] = [
    9, 2, 32, 0, 1, 1, 0, 0x80, 50, // config 1, one interface
    9, 4, 0, 0, 2, 0xff, 0, 0, 1, // vendor interface 0
    7, 5, 0x81, 2, 0x00, 0x02, 0, // bulk IN 0x81, 512
    7, 5, 0x02, 2, 0x00, 0x02, 0, // bulk OUT 0x02, 512
];
pub const DEVICE_DESC: [u8; 18] = [
    18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
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
    /// Answer the import and the setup (descriptors, SET_CONFIGURATION), then never answer a bulk
    /// URB while keeping the connection open: a usbipd or board that stopped responding.
    SilentAfterImport,
}

#[derive(Debug, Default)]
pub struct Seen {
    pub max_pending_in: usize,
    pub out_urbs: usize,
    pub out_zero_packet: usize,
    pub set_configuration: Vec<u16>,
    pub imports: Vec<String>,
}

pub fn device(config_value: u8) -> DeviceInfo {
    let vendor = op::InterfaceInfo {
        class: 0xff,
        subclass: 0,
        protocol: 0,
    };
    dummy_hcd_device(1, config_value, vec![vendor])
}

pub struct Fake {
    pub port: u16,
    pub seen: Arc<Mutex<Seen>>,
}

/// Starts a fake usbipd serving connections one after another. `qubes`: skip the OP phase and send
/// the "<devid> <speed>" line first, as the qubes.USB service does.
pub async fn fake(fault: Fault, config_value: u8, qubes: bool) -> Fake {
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
            // A usbipd is not the application side of a device-side connect.
            OpRequest::Export(_) | OpRequest::Unexport(_) => return None,
        }
    }
    serve_urbs(s, fault, config_value, &dev, &seen).await
}

/// A fake board on the device side of a device-side connect: dials the application side at
/// `port` on loopback, offers [`device`] with OP_REQ_EXPORT and, once accepted, answers URBs like
/// the fake usbipd (with `fault`). Returns when the connection ends; `Err` when the export was
/// refused or failed.
pub async fn exporter(
    port: u16,
    fault: Fault,
    config_value: u8,
    seen: Arc<Mutex<Seen>>,
) -> Result<(), crate::transport::TransportError> {
    let s = crate::export::connect("127.0.0.1", port, "fake exporter").await?;
    exporter_on(s, fault, config_value, seen).await
}

/// [`exporter`] on a connection the caller opened (and, say, authenticated).
pub async fn exporter_on(
    mut s: TcpStream,
    fault: Fault,
    config_value: u8,
    seen: Arc<Mutex<Seen>>,
) -> Result<(), crate::transport::TransportError> {
    let dev = device(config_value);
    crate::export::request(&mut s, "fake exporter", &dev, false).await?;
    let _ = serve_urbs(s, fault, config_value, &dev, &seen).await;
    Ok(())
}

/// The URB phase of the fake (after import or export).
async fn serve_urbs(
    mut s: TcpStream,
    fault: Fault,
    config_value: u8,
    dev: &DeviceInfo,
    seen: &Arc<Mutex<Seen>>,
) -> Option<()> {
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
                } else if c.direction == crate::Direction::In {
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
                        Fault::SilentAfterImport => continue,
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
