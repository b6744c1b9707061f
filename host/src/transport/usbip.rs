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

use std::time::Duration;

use qbkit_usbip::transport::{LinkOptions, TransportError, UsbipLink};
use tokio::sync::mpsc;

use super::{Framing, LinkEvent, LinkUp};

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs a USB/IP transport until the driver closes `events`. `url` is a `usbip://` or
/// `qubes-usb:` URL already checked by [`super::TransportSpec::parse`].
pub async fn run(url: String, opts: LinkOptions, events: mpsc::Sender<LinkEvent>) {
    let mut backoff = MIN_BACKOFF;
    let mut last_error: Option<String> = None;
    loop {
        let link = match UsbipLink::connect_with(&url, opts.clone()).await {
            Ok(l) => l,
            Err(e) => {
                // The full error once (it names the cause), repeats at debug.
                let msg = e.to_string();
                if last_error.as_ref() == Some(&msg) {
                    tracing::debug!(error = %msg, "USB/IP board still unreachable");
                } else {
                    tracing::warn!(error = %msg, retry_in = ?backoff, "USB/IP connect failed");
                    last_error = Some(msg);
                }
                if events.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        last_error = None;
        match serve(link, &url, opts.out_urbs, &events).await {
            None => return,
            Some(e) => {
                let reason = e.to_string();
                tracing::warn!(%reason, "USB/IP link down; reconnecting");
                if events.send(LinkEvent::Down { reason }).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Moves bundles both ways until the link fails (`Some(error)`) or the driver is gone (`None`).
async fn serve(
    mut link: UsbipLink,
    url: &str,
    out_urbs: usize,
    events: &mpsc::Sender<LinkEvent>,
) -> Option<TransportError> {
    let info = link.info().clone();
    let description = format!(
        "{url} devid {:#x} {}-speed {:04x}:{:04x}",
        info.devid,
        info.speed.name(),
        info.vendor_id,
        info.product_id
    );
    let (btx, mut brx) = mpsc::channel::<Vec<u8>>(out_urbs.max(1));
    let up = LinkUp {
        framing: Framing::Usb {
            max_packet_size: usize::from(info.bulk.mps_out.max(1)),
        },
        tx: btx,
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
                    if events.send(LinkEvent::Bundle(b.to_vec())).await.is_err() {
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
                }
                None => return None,
            },
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
            assert!(rx.try_recv().is_err(), "{fault:?}: no link was reported up");
            task.abort();
        }
    }

    async fn peer_fault_is_down_then_reconnect(fault: Fault) {
        let (f, mut rx, task) = start(fault).await;
        for _ in 0..2 {
            let up = expect_up(&mut rx).await;
            up.tx.send(vec![7; 64]).await.unwrap();
            match rx.recv().await {
                Some(LinkEvent::Down { reason }) => {
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
}
