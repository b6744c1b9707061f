//! The USB/IP transports (`--transport usbip://HOST[:PORT]/BUSID`, `--transport qubes-usb:CMD`):
//! the board reached through a usbipd or a Qubes qubes.USB service, spoken to by the userspace
//! USB/IP client in `qbkit-usbip` (no vhci-hcd, no root), reporting [`LinkEvent`]s like every
//! other transport.
//!
//! Data flow: [`run`] loops: [`UsbipLink::connect_with`] (TCP + OP_REQ_IMPORT, or spawn CMD and
//! read its "<devid> <speed>" line; then descriptors, configuration, IN URBs queued) →
//! [`LinkEvent::Up`] with a sender of depth `out_urbs` and USB framing (the board's bulk OUT
//! wMaxPacketSize, so the driver pads like on local USB) → one task alternates between bulk IN
//! completions ([`LinkEvent::Bundle`]) and bundles from the driver (one bulk OUT URB each) → on a
//! protocol error, EOF or a failed URB [`LinkEvent::Down`] → reconnect with capped exponential
//! backoff. A usbipd makes the device importable again once our connection is gone, and a
//! qubes-usb command is simply run again, so reconnecting is the whole recovery.
//!
//! `--transport usbip-listen://ADDR[:PORT]` is the other direction, the device-side connect: the
//! board (`qbkit-gadget export`) dials us and offers itself with OP_REQ_EXPORT. [`run_listen`]
//! accepts connections; each one gets [`REQUEST_TIMEOUT`] to send its request (a silent or
//! garbage peer is dropped and cannot hold the listener). An export while no board is served is
//! accepted and the same socket is then driven by the same client as `usbip://` (one serving task:
//! `Up`, bundles, `Down`); an export of the board already served replaces its link (the board
//! reconnected after losing the old connection); another board is refused (one board per host
//! until several boards are served). OP_REQ_UNEXPORT, on a new connection, ends the served link
//! with that bus id.

use std::net::SocketAddr;
use std::time::Duration;

use qbkit_link::Backoff;
use qbkit_link::auth::{AuthRole, LinkKey, authenticate_stream};
use qbkit_usbip::op::OpRequest;
use qbkit_usbip::transport::{LinkOptions, TransportError, UsbipLink};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{BufPool, Framing, LinkEvent, LinkUp};

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs a USB/IP transport until the driver closes `events`. `url` is a `usbip://` or
/// `qubes-usb:` URL already checked by [`super::TransportSpec::parse`].
pub async fn run(url: String, opts: LinkOptions, events: mpsc::Sender<LinkEvent>) {
    let mut backoff = Backoff::new(url.clone(), MIN_BACKOFF, MAX_BACKOFF);
    loop {
        let link = match UsbipLink::connect_with(&url, opts.clone()).await {
            Ok(l) => l,
            Err(e) => {
                let reason = e.to_string();
                let wait = backoff.failed(&reason);
                if events.try_send(LinkEvent::Failed { reason }).is_err() && events.is_closed() {
                    return;
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff.up();
        match serve(link, &url, opts.out_urbs, &events, std::future::pending()).await {
            None => return,
            Some(e) => {
                let reason = e.to_string();
                // An import that fails at once is paced like a refused connect.
                let wait = backoff.down(&reason);
                if events.send(LinkEvent::down(reason)).await.is_err() {
                    return;
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Moves bundles both ways until the link fails, `stop` completes or the driver closes the link
/// (`Some(error)`), or the driver is gone (`None`).
async fn serve(
    mut link: UsbipLink,
    url: &str,
    out_urbs: usize,
    events: &mpsc::Sender<LinkEvent>,
    stop: impl Future<Output = ()>,
) -> Option<TransportError> {
    tokio::pin!(stop);
    let info = link.info().clone();
    let description = format!(
        "{url} devid {:#x} {}-speed {:04x}:{:04x}",
        info.devid,
        info.speed.name(),
        info.vendor_id,
        info.product_id
    );
    let (btx, mut brx) = mpsc::channel::<Vec<u8>>(out_urbs.max(1));
    let pool = BufPool::default();
    let up = LinkUp {
        framing: Framing::Usb {
            max_packet_size: usize::from(info.bulk.mps_out.max(1)),
        },
        tx: btx,
        pool: pool.clone(),
        description: description.clone(),
    };
    tracing::info!(link = %description, bulk = ?info.bulk, "serving board over USB/IP");
    if events.send(LinkEvent::Up(up)).await.is_err() {
        return None;
    }
    loop {
        // `recv_bundle` is cancel-safe; a bundle from the driver is sent to completion before
        // the next turn (send_bundle keeps reading replies while it waits for a free URB slot).
        tokio::select! {
            r = link.recv_bundle() => match r {
                Ok(b) => {
                    if events.send(LinkEvent::Bundle(pool.copy(b))).await.is_err() {
                        return None;
                    }
                }
                Err(e) => return Some(e),
            },
            b = brx.recv() => match b {
                Some(b) => {
                    if let Err(e) = link.send_bundle(&b).await {
                        return Some(e);
                    }
                    pool.put(b);
                }
                // The driver dropped the link (its session timed out) but is still there.
                None if !events.is_closed() => {
                    return Some(TransportError::Silent(url.to_owned()));
                }
                None => return None,
            },
            () = &mut stop => return Some(TransportError::Unexported(url.to_owned())),
        }
    }
}

/// How long a device-side peer has, after connecting, to send its OP request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A device-side peer that connected and sent its request.
struct Incoming {
    stream: TcpStream,
    peer: SocketAddr,
    request: OpRequest,
    leftover: Vec<u8>,
}

/// The board being served: its bus id, the serving task and the way to stop it.
struct Serving {
    busid: String,
    peer: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Serving {
    /// Stops the serving task (it reports `Down` itself) and waits for it.
    async fn end(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

/// Runs `usbip-listen://ADDR[:PORT]` (see the module docs) until the driver closes `events`.
/// `addr` is `HOST:PORT`, checked by [`super::TransportSpec::parse`].
/// With `key`, every peer first proves it holds the link key (qbkit-link's handshake, as on
/// stream links; bounded by its own 5 s) before its request is read.
pub async fn run_listen(
    addr: String,
    key: Option<LinkKey>,
    opts: LinkOptions,
    events: mpsc::Sender<LinkEvent>,
) {
    let listener = match TcpListener::bind(addr.as_str()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "usbip-listen cannot listen");
            return;
        }
    };
    let bound = listener
        .local_addr()
        .map_or_else(|_| addr.clone(), |a| a.to_string());
    let url = format!("usbip-listen://{bound}");
    tracing::info!(%url, "waiting for a board to export itself (qbkit-gadget export)");
    if events
        .send(LinkEvent::Listening { url: url.clone() })
        .await
        .is_err()
    {
        return;
    }
    let (in_tx, mut in_rx) = mpsc::channel::<Incoming>(4);
    let mut serving: Option<Serving> = None;
    let mut bad_peers = 0u64;
    loop {
        let finished = async {
            match serving.as_mut() {
                Some(s) => (&mut s.task).await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            acc = listener.accept() => match acc {
                Ok((stream, peer)) => {
                    let tx = in_tx.clone();
                    tokio::spawn(read_incoming(stream, peer, key.clone(), tx));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on accept.
                    tracing::warn!(error = %e, "usbip-listen accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            Some(inc) = in_rx.recv() => {
                serving = handle_incoming(inc, serving, &url, &opts, &events, &mut bad_peers).await;
            }
            _ = finished => serving = None,
        }
        if events.is_closed() {
            if let Some(s) = serving.take() {
                s.end().await;
            }
            return;
        }
    }
}

/// Authenticates one peer (with a key), reads its OP request within [`REQUEST_TIMEOUT`] and hands
/// it to the listener loop. A peer that fails either is dropped here (the handshake's counters
/// and the listener's log count it), so it never reaches the loop.
async fn read_incoming(
    mut stream: TcpStream,
    peer: SocketAddr,
    key: Option<LinkKey>,
    tx: mpsc::Sender<Incoming>,
) {
    let name = format!("device-side peer {peer}");
    if let Some(key) = &key
        && let Err(e) = authenticate_stream(&mut stream, AuthRole::Responder, key).await
    {
        tracing::debug!(%peer, error = %e, "usbip-listen: link authentication failed");
        return;
    }
    match qbkit_usbip::export::read_request(&mut stream, &name, REQUEST_TIMEOUT).await {
        Ok((request, leftover)) => {
            let _ = tx
                .send(Incoming {
                    stream,
                    peer,
                    request,
                    leftover,
                })
                .await;
        }
        Err(e) => tracing::debug!(error = %e, "usbip-listen: dropped a peer"),
    }
}

/// Acts on one request; returns what is served afterwards.
async fn handle_incoming(
    inc: Incoming,
    serving: Option<Serving>,
    url: &str,
    opts: &LinkOptions,
    events: &mpsc::Sender<LinkEvent>,
    bad_peers: &mut u64,
) -> Option<Serving> {
    let Incoming {
        mut stream,
        peer,
        request,
        leftover,
    } = inc;
    let name = format!("{url} board {peer}");
    let refuse = |what: &str, bad_peers: &mut u64| {
        // Every refusal counts; the log gets at most one line a second, so a flood stays a few.
        static LIMIT: std::sync::Mutex<shared_frame::LogLimit> =
            std::sync::Mutex::new(shared_frame::LogLimit::new());
        *bad_peers += 1;
        if let Some(suppressed) = qbkit_link::log_allowed(&LIMIT) {
            tracing::warn!(%peer, refused = *bad_peers, suppressed, "usbip-listen: {what}");
        }
    };
    match request {
        OpRequest::Export(device) => {
            let serving = match serving {
                Some(s) if s.busid == device.busid => {
                    tracing::info!(busid = %s.busid, old = %s.peer, new = %peer,
                        "the board exported itself again; replacing its old link");
                    s.end().await;
                    None
                }
                other => other,
            };
            if let Some(s) = serving {
                refuse(
                    "a second board tried to export itself; one board is served at a time",
                    bad_peers,
                );
                let _ = qbkit_usbip::export::reply(&mut stream, &name, false, false).await;
                return Some(s);
            }
            if let Err(e) = qbkit_usbip::export::reply(&mut stream, &name, false, true).await {
                tracing::warn!(error = %e, "usbip-listen: export reply failed");
                return None;
            }
            tracing::info!(%peer, busid = %device.busid, "a board exported itself");
            let busid = device.busid.clone();
            let (stop_tx, stop_rx) = oneshot::channel();
            let (opts, events) = (opts.clone(), events.clone());
            let task = tokio::spawn(async move {
                let link = match UsbipLink::from_export(
                    stream,
                    device,
                    &leftover,
                    &name,
                    opts.clone(),
                )
                .await
                {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "usbip-listen: setup of the exported board failed");
                        return;
                    }
                };
                let stop = async {
                    let _ = stop_rx.await;
                };
                if let Some(e) = serve(link, &name, opts.out_urbs, &events, stop).await {
                    let reason = e.to_string();
                    tracing::warn!(%reason, "USB/IP link down; waiting for the board to connect again");
                    let _ = events.send(LinkEvent::down(reason)).await;
                }
            });
            Some(Serving {
                busid,
                peer,
                stop: Some(stop_tx),
                task,
            })
        }
        OpRequest::Unexport(device) => match serving {
            Some(s) if s.busid == device.busid => {
                let _ = qbkit_usbip::export::reply(&mut stream, &name, true, true).await;
                tracing::info!(%peer, busid = %device.busid, "the board unexported itself");
                s.end().await;
                None
            }
            other => {
                refuse("unexport of a board that is not served", bad_peers);
                let _ = qbkit_usbip::export::reply(&mut stream, &name, true, false).await;
                other
            }
        },
        OpRequest::Devlist | OpRequest::Import(_) => {
            refuse(
                "a usbip client (list/attach) connected; this is the application side of a device-side connect",
                bad_peers,
            );
            serving
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against `qbkit_usbip::fake` (a usbipd on loopback that echoes bulk OUT back as bulk IN).
    use super::*;
    use qbkit_usbip::fake::{Fault, fake};

    async fn expect_up(rx: &mut mpsc::Receiver<LinkEvent>) -> LinkUp {
        match rx.recv().await {
            Some(LinkEvent::Up(up)) => up,
            other => panic!("expected Up, got {other:?}"),
        }
    }

    /// The transport task against a fake usbipd with `fault`.
    async fn start(
        fault: Fault,
    ) -> (
        qbkit_usbip::fake::Fake,
        mpsc::Receiver<LinkEvent>,
        tokio::task::JoinHandle<()>,
    ) {
        let f = fake(fault, 1, false).await;
        let (tx, rx) = mpsc::channel(8);
        let url = format!("usbip://127.0.0.1:{}/1-1", f.port);
        let task = tokio::spawn(run(url, LinkOptions::default(), tx));
        (f, rx, task)
    }

    #[tokio::test]
    async fn moves_bundles_with_usb_framing() {
        let (_f, mut rx, task) = start(Fault::None).await;
        let up = expect_up(&mut rx).await;
        assert_eq!(
            up.framing,
            Framing::Usb {
                max_packet_size: 512
            }
        );
        assert!(up.description.contains("1209:0001"), "{}", up.description);
        for n in [8, 512, 4096] {
            let b: Vec<u8> = (0..n).map(|i: usize| i as u8).collect();
            up.tx.send(b.clone()).await.unwrap();
            match rx.recv().await {
                Some(LinkEvent::Bundle(got)) => assert_eq!(got, b),
                other => panic!("expected the echoed bundle, got {other:?}"),
            }
        }
        task.abort();
    }

    #[tokio::test]
    async fn peer_vanishing_mid_urb_or_mid_reply_is_down_then_reconnect() {
        for fault in [Fault::VanishMidUrb, Fault::VanishMidReply] {
            peer_fault_is_down_then_reconnect(fault).await;
        }
    }

    /// A board that stops answering after the import: the driver's session times out and drops
    /// the link's sender; the transport must report `Down` and dial again.
    #[tokio::test]
    async fn silent_board_closed_by_the_driver_is_down_then_redial() {
        let (f, mut rx, task) = start(Fault::SilentAfterImport).await;
        let up = expect_up(&mut rx).await;
        up.tx.send(vec![7; 64]).await.unwrap();
        drop(up);
        match rx.recv().await {
            Some(LinkEvent::Down { reason, .. }) => {
                assert!(reason.contains("127.0.0.1"), "names the peer: {reason}");
            }
            other => panic!("expected Down, got {other:?}"),
        }
        let _again = expect_up(&mut rx).await;
        assert_eq!(f.seen.lock().unwrap().imports.len(), 2, "dialled again");
        task.abort();
    }

    #[tokio::test]
    async fn garbage_or_truncated_setup_replies_are_retried_without_an_up() {
        for fault in [Fault::Garbage, Fault::TruncatedImport] {
            let (f, mut rx, task) = start(fault).await;
            let mut imports = 0;
            for _ in 0..100 {
                imports = f.seen.lock().unwrap().imports.len();
                if imports >= 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(imports >= 2, "{fault:?}: reconnected ({imports} imports)");
            // Each failed attempt is reported for `status`; no link was reported up.
            while let Ok(ev) = rx.try_recv() {
                assert!(matches!(ev, LinkEvent::Failed { .. }), "{fault:?}: {ev:?}");
            }
            task.abort();
        }
    }

    async fn peer_fault_is_down_then_reconnect(fault: Fault) {
        let (f, mut rx, task) = start(fault).await;
        for _ in 0..2 {
            let up = expect_up(&mut rx).await;
            up.tx.send(vec![7; 64]).await.unwrap();
            match rx.recv().await {
                Some(LinkEvent::Down { reason, .. }) => {
                    assert!(reason.contains("127.0.0.1"), "names the peer: {reason}");
                }
                other => panic!("expected Down, got {other:?}"),
            }
        }
        assert_eq!(f.seen.lock().unwrap().imports.len(), 2, "reconnected");
        task.abort();
    }

    #[tokio::test]
    async fn unreachable_server_retries_until_the_driver_is_gone() {
        // Bind and drop: nothing listens on the port.
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(run(
            format!("usbip://127.0.0.1:{port}/1-1"),
            LinkOptions::default(),
            tx,
        ));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends once the driver is gone")
            .unwrap();
    }

    /// `run_listen` on an ephemeral loopback port; returns its port once it reports Listening.
    async fn listen() -> (u16, mpsc::Receiver<LinkEvent>, tokio::task::JoinHandle<()>) {
        listen_with(None).await
    }

    async fn listen_with(
        key: Option<LinkKey>,
    ) -> (u16, mpsc::Receiver<LinkEvent>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(run_listen(
            "127.0.0.1:0".into(),
            key,
            LinkOptions::default(),
            tx,
        ));
        let url = match rx.recv().await {
            Some(LinkEvent::Listening { url }) => url,
            other => panic!("expected Listening, got {other:?}"),
        };
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        (port, rx, task)
    }

    async fn echo_one(up: &LinkUp, rx: &mut mpsc::Receiver<LinkEvent>, n: usize) {
        let b: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
        up.tx.send(b.clone()).await.unwrap();
        match rx.recv().await {
            Some(LinkEvent::Bundle(got)) => assert_eq!(got, b),
            other => panic!("expected the echoed bundle, got {other:?}"),
        }
    }

    fn exporter(port: u16) -> tokio::task::JoinHandle<Result<(), TransportError>> {
        let seen = std::sync::Arc::default();
        tokio::spawn(qbkit_usbip::fake::exporter(port, Fault::None, 1, seen))
    }

    async fn expect_down(rx: &mut mpsc::Receiver<LinkEvent>) -> String {
        match rx.recv().await {
            Some(LinkEvent::Down { reason, .. }) => reason,
            other => panic!("expected Down, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn listen_serves_an_exported_board_and_unexport_ends_it() {
        let (port, mut rx, task) = listen().await;
        let board = exporter(port);
        let up = expect_up(&mut rx).await;
        assert!(
            up.description.contains("usbip-listen://127.0.0.1"),
            "{}",
            up.description
        );
        assert_eq!(
            up.framing,
            Framing::Usb {
                max_packet_size: 512
            }
        );
        for n in [8, 512, 4096] {
            echo_one(&up, &mut rx, n).await;
        }
        // The board withdraws itself on a new connection: its link ends, the board's socket too.
        let dev = qbkit_usbip::fake::device(1);
        qbkit_usbip::export::unexport("127.0.0.1", port, &dev, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(expect_down(&mut rx).await.contains("unexported"));
        board.await.unwrap().unwrap();
        // Unexporting a board that is not served is refused.
        let e = qbkit_usbip::export::unexport("127.0.0.1", port, &dev, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("unexport"), "{e}");
        // The next connect is served.
        let _board = exporter(port);
        let up = expect_up(&mut rx).await;
        echo_one(&up, &mut rx, 100).await;
        task.abort();
    }

    #[tokio::test]
    async fn listen_replaces_the_link_of_a_board_that_exports_itself_again() {
        let (port, mut rx, task) = listen().await;
        let _first = exporter(port);
        let up = expect_up(&mut rx).await;
        echo_one(&up, &mut rx, 64).await;
        // Same bus id again (the board lost its connection and dialled in anew).
        let _second = exporter(port);
        assert!(expect_down(&mut rx).await.contains("unexported"));
        let up = expect_up(&mut rx).await;
        echo_one(&up, &mut rx, 64).await;
        task.abort();
    }

    #[tokio::test]
    async fn listen_drops_garbage_and_truncated_requests_and_is_not_held_by_a_silent_peer() {
        use tokio::io::AsyncWriteExt as _;
        let (port, mut rx, task) = listen().await;
        // A silent peer: connected, sends nothing, stays connected.
        let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        // A peer sending garbage, and a usbip client asking for the device list.
        let mut junk = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let e =
            qbkit_usbip::transport::list_with(&format!("127.0.0.1:{port}"), Duration::from_secs(5))
                .await
                .unwrap_err();
        assert!(!e.to_string().is_empty());
        // A truncated export request, then the peer closes.
        let mut req = Vec::new();
        qbkit_usbip::op::emit_req_export(&mut req, &qbkit_usbip::fake::device(1));
        let mut cut = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        cut.write_all(&req[..100]).await.unwrap();
        drop(cut);
        // A board still gets in at once, while the silent peer is still connected.
        let _board = exporter(port);
        let up = expect_up(&mut rx).await;
        echo_one(&up, &mut rx, 64).await;
        task.abort();
    }

    #[tokio::test]
    async fn listen_with_a_key_serves_only_a_board_that_proves_it() {
        let key = LinkKey::from_bytes([7; 32]);
        let (port, mut rx, task) = listen_with(Some(key.clone())).await;
        // No handshake: the plain export request is not a handshake, the peer is dropped.
        let e = exporter(port).await.unwrap().unwrap_err();
        assert!(!e.to_string().is_empty());
        // The wrong key fails the handshake.
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let wrong = LinkKey::from_bytes([8; 32]);
        assert!(
            authenticate_stream(&mut s, AuthRole::Initiator, &wrong)
                .await
                .is_err()
        );
        assert!(rx.try_recv().is_err(), "nothing was served");
        // The right key, then the export: served.
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        authenticate_stream(&mut s, AuthRole::Initiator, &key)
            .await
            .unwrap();
        let seen = std::sync::Arc::default();
        let _board = tokio::spawn(qbkit_usbip::fake::exporter_on(s, Fault::None, 1, seen));
        let up = expect_up(&mut rx).await;
        echo_one(&up, &mut rx, 256).await;
        task.abort();
    }
}
