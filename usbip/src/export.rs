//! Device-side connect ("exporting devices", feature `tokio`): the board dials the application side
//! and offers itself, instead of waiting in a usbipd for an import. For a board behind a firewall or
//! NAT that can open a connection out but cannot be reached.
//!
//! # Theory of operation
//!
//! ```text
//!  device side (qbkit-gadget export)             application side (qbkit-host usbip-listen://)
//!  TCP connect ────────────────────────────────► accept (one task per connection, bounded in time)
//!  OP_REQ_EXPORT + device (312) ───────────────► read_request → Export(device)
//!                                  ◄──────────── OP_REP_EXPORT (returncode 0, or 1 when busy)
//!  hand the socket to the kernel (vudc's          UsbipLink::from_export: the same URB client as
//!  usbip_sockfd); the kernel answers URBs         usbip://, GET_DESCRIPTOR … bulk IN/OUT
//!  ...
//!  new TCP connection: OP_REQ_UNEXPORT ────────► read_request → Unexport(device): the link with
//!                                  ◄──────────── that bus id ends; OP_REP_UNEXPORT
//! ```
//!
//! The device side reads exactly the 12 bytes of the reply and nothing more: the application side
//! starts submitting URBs right after it, and those bytes belong to whoever owns the socket next
//! (the kernel, for a vudc). Every exchange here is bounded by a deadline, so a silent peer cannot
//! hold a connection slot.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::op::{self, DeviceInfo, OpRequest};
use crate::transport::{TransportError, bounded, io_err, proto_err, read_op_reply, tcp_connect};

/// Reads the one OP request a device-side peer sends (application side). Returns it and any
/// bytes that followed it in the same read. Bounded by `limit`.
pub async fn read_request(
    s: &mut TcpStream,
    name: &str,
    limit: Duration,
) -> Result<(OpRequest, Vec<u8>), TransportError> {
    bounded(
        limit,
        "reading the export request",
        name,
        read_op_reply(s, name, op::parse_op_request),
    )
    .await
}

/// Answers an OP_REQ_EXPORT (`accepted`) or OP_REQ_UNEXPORT (`unexport`), application side.
pub async fn reply(
    s: &mut TcpStream,
    name: &str,
    unexport: bool,
    accepted: bool,
) -> Result<(), TransportError> {
    let mut out = Vec::with_capacity(op::REP_EXPORT_LEN);
    if unexport {
        op::emit_rep_unexport(&mut out, accepted);
    } else {
        op::emit_rep_export(&mut out, accepted);
    }
    s.write_all(&out).await.map_err(io_err("write to", name))
}

/// Device side: withdraws an earlier export of `device` (on a new connection). Bounded by `limit`.
pub async fn unexport(
    host: &str,
    port: u16,
    device: &DeviceInfo,
    limit: Duration,
) -> Result<(), TransportError> {
    let name = format!("usbip://{host}:{port}");
    bounded(limit, "unexport", &name, async {
        let mut s = tcp_connect(host, port, &name).await?;
        request(&mut s, &name, device, true).await
    })
    .await
}

/// Device side, in steps: a TCP connection to `host:port` for [`request`] (between the two a
/// caller may authenticate the stream). `name` is how errors name the peer.
pub async fn connect(host: &str, port: u16, name: &str) -> Result<TcpStream, TransportError> {
    tcp_connect(host, port, name).await
}

/// Sends OP_REQ_EXPORT (or OP_REQ_UNEXPORT when `unexport`) for `device` on `s` and reads exactly
/// its reply; `Ok` when the application side accepted.
pub async fn request(
    s: &mut TcpStream,
    name: &str,
    device: &DeviceInfo,
    unexport: bool,
) -> Result<(), TransportError> {
    let mut req = Vec::with_capacity(op::REQ_EXPORT_LEN);
    let parse: fn(&[u8]) -> Result<Option<usize>, crate::Error> = if unexport {
        op::emit_req_unexport(&mut req, device);
        op::parse_rep_unexport
    } else {
        op::emit_req_export(&mut req, device);
        op::parse_rep_export
    };
    s.write_all(&req).await.map_err(io_err("write to", name))?;
    let mut rep = [0u8; op::REP_EXPORT_LEN];
    s.read_exact(&mut rep)
        .await
        .map_err(io_err("read the reply from", name))?;
    match parse(&rep) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(proto_err(
            name,
            crate::Error::Truncated {
                need: op::REP_EXPORT_LEN,
                have: rep.len(),
            },
        )),
        Err(e) => Err(proto_err(name, e)),
    }
}
