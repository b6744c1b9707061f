//! `qbkit-host relay`: the USB side only, no NAT. Serves the board on USB through the ordinary USB
//! transport task ([`crate::transport::usb::run`]: hotplug, reopen after every replug) and moves
//! its bundles unchanged to a byte stream (stdout/stdin) in the stream framing, so a NAT elsewhere
//! (`qbkit-host run --transport exec:'… qbkit-host relay'`, e.g. through qrexec from a Qubes AppVM
//! to sys-usb) drives the board.
//!
//! Data flow:
//!
//! ```text
//!  board ─USB─▶ usb::run ─LinkEvent::Bundle─▶ strip USB pad ─▶ write_bundle ─▶ stdout
//!  board ◀USB── usb::run ◀── current LinkUp.tx ◀── BundleReader ◀────────────── stdin
//! ```
//!
//! The stream stays up across replugs: while no board is attached, bundles from the stream are
//! dropped and counted (the NAT side's session times out and keeps sending Hello; the board's
//! Hello after a replug brings the session back). The relay ends at a clean end of the input
//! stream (the peer went away), and fails on a framing error or a failed write, since a
//! desynchronised stream cannot be recovered.

use qbkit_link::{BundleReader, LinkError, LinkRead, LinkWrite, write_bundle};
use shared_frame::Bundle;
use tokio::sync::{mpsc, watch};

use crate::transport::{self, LinkEvent};
use crate::usb::{DeviceFilter, UsbConfig};

/// Counters of one relay run, logged at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Bundles from the board written to the stream.
    pub to_stream: u64,
    /// Bundles from the stream handed to the board.
    pub to_board: u64,
    /// Bundles from the stream dropped because no board was attached.
    pub dropped_no_board: u64,
    /// Bundles from the board that failed to parse (not forwarded: they would desync the stream).
    pub dropped_bad_bundle: u64,
    /// Times the board link came up.
    pub board_ups: u64,
}

/// Runs the relay between the board (found by `filter`) and a stream. Returns at a clean end
/// of `read`.
pub async fn run(
    filter: DeviceFilter,
    usb: UsbConfig,
    max_bundle: usize,
    read: LinkRead,
    write: LinkWrite,
) -> Result<RelayStats, LinkError> {
    let (ev_tx, ev_rx) = mpsc::channel(transport::EVENT_QUEUE);
    let usb_task = tokio::spawn(transport::usb::run(filter, usb, ev_tx));
    let res = relay(ev_rx, max_bundle, read, write).await;
    usb_task.abort();
    res
}

/// The relay over any transport's events (the USB task in [`run`], a fake one in tests).
pub async fn relay(
    events: mpsc::Receiver<LinkEvent>,
    max_bundle: usize,
    read: LinkRead,
    write: LinkWrite,
) -> Result<RelayStats, LinkError> {
    let (board_tx, board_rx) = watch::channel(None);
    let mut up_stats = RelayStats::default();
    let mut down_stats = RelayStats::default();
    let res = tokio::select! {
        r = board_to_stream(events, write, max_bundle, board_tx, &mut up_stats) => r,
        r = stream_to_board(read, max_bundle, board_rx, &mut down_stats) => r,
    };
    let stats = RelayStats {
        to_stream: up_stats.to_stream,
        dropped_bad_bundle: up_stats.dropped_bad_bundle,
        board_ups: up_stats.board_ups,
        to_board: down_stats.to_board,
        dropped_no_board: down_stats.dropped_no_board,
    };
    tracing::info!(?stats, "relay ended");
    res.map(|()| stats)
}

type BoardTx = Option<mpsc::Sender<Vec<u8>>>;

/// USB events → stream; publishes the current board sender for the other direction.
async fn board_to_stream(
    mut events: mpsc::Receiver<LinkEvent>,
    mut write: LinkWrite,
    max_bundle: usize,
    board: watch::Sender<BoardTx>,
    stats: &mut RelayStats,
) -> Result<(), LinkError> {
    while let Some(ev) = events.recv().await {
        match ev {
            LinkEvent::Up(up) => {
                stats.board_ups += 1;
                tracing::info!(link = %up.description, "relaying board");
                board.send_replace(Some(up.tx));
            }
            LinkEvent::Down { reason, .. } => {
                tracing::info!(%reason, "board link down; waiting for it to come back");
                board.send_replace(None);
            }
            // The relay serves USB only: a listening link has nothing to tell it, and USB
            // discovery logs its own failures.
            LinkEvent::Listening { .. } | LinkEvent::Failed { .. } => {}
            LinkEvent::Bundle(b) => match Bundle::new_checked(&b[..], max_bundle) {
                // The header's length excludes the USB pad, which has no place on a stream.
                Ok(parsed) => {
                    let len = parsed.len();
                    write_bundle(&mut write, &b[..len]).await?;
                    stats.to_stream += 1;
                }
                Err(e) => {
                    stats.dropped_bad_bundle += 1;
                    tracing::debug!(error = %e, len = b.len(), "bad bundle from the board dropped");
                }
            },
        }
    }
    // The transport task only ends when it cannot continue at all.
    Err(LinkError::Exhausted("board transport"))
}

/// Stream → the board currently attached (dropped while none is).
async fn stream_to_board(
    read: LinkRead,
    max_bundle: usize,
    board: watch::Receiver<BoardTx>,
    stats: &mut RelayStats,
) -> Result<(), LinkError> {
    let mut reader = BundleReader::new(read, max_bundle);
    while let Some(b) = reader.next().await? {
        let tx = board.borrow().clone();
        let sent = match tx {
            Some(tx) => tx.send(b.to_vec()).await.is_ok(),
            None => false,
        };
        if sent {
            stats.to_board += 1;
        } else {
            stats.dropped_no_board += 1;
            if stats.dropped_no_board.is_power_of_two() {
                tracing::debug!(
                    dropped = stats.dropped_no_board,
                    "no board attached; bundles from the stream dropped"
                );
            }
        }
    }
    tracing::info!("input stream ended");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Framing, LinkUp};
    use shared_frame::{BundleWriter, CHANNEL_NET, RecordKind};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A bundle with one IP record of `n` bytes of `fill`, finished for a stream or for USB.
    const USB512: Framing = Framing::Usb {
        max_packet_size: 512,
    };

    fn bundle(n: usize, fill: u8, framing: Framing) -> Vec<u8> {
        let mut buf = vec![0; 4096];
        let mut w = BundleWriter::new(&mut buf[..], 4096);
        w.push(RecordKind::Ip, CHANNEL_NET, &vec![fill; n]).unwrap();
        let len = w.finish_for(framing);
        buf.truncate(len);
        buf
    }

    fn up(tx: mpsc::Sender<Vec<u8>>) -> LinkEvent {
        LinkEvent::Up(LinkUp {
            framing: USB512,
            tx,
            pool: qbkit_link::BufPool::default(),
            description: "fake board".into(),
        })
    }

    type Relay = tokio::task::JoinHandle<Result<RelayStats, LinkError>>;

    /// A relay fed by a fake transport: its event sender, the NAT side of the stream, the task.
    fn start() -> (mpsc::Sender<LinkEvent>, tokio::io::DuplexStream, Relay) {
        let (ev_tx, ev_rx) = mpsc::channel(8);
        // `near` is the relay's stdin/stdout, `far` the NAT side of the stream.
        let (near, far) = tokio::io::duplex(1 << 16);
        let (r, w) = tokio::io::split(near);
        let task = tokio::spawn(relay(ev_rx, 65536, Box::pin(r), Box::pin(w)));
        (ev_tx, far, task)
    }

    #[tokio::test]
    async fn relays_both_ways_strips_the_usb_pad_and_survives_a_replug() {
        let (ev_tx, mut far, relay) = start();

        // Board → stream: a bundle of exactly 512 bytes carries the USB pad; the stream gets
        // the bundle without it.
        let (board_tx, mut board_rx) = mpsc::channel(2);
        ev_tx.send(up(board_tx)).await.unwrap();
        let padded = bundle(512 - 8 - 4, 0xAB, USB512);
        assert_eq!(padded.len(), 512 + shared_frame::USB_PAD_LEN);
        ev_tx.send(LinkEvent::Bundle(padded.clone())).await.unwrap();
        let mut got = vec![0; 512];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, padded[..512]);
        // A bundle that does not parse is dropped, not forwarded.
        ev_tx.send(LinkEvent::Bundle(vec![0; 20])).await.unwrap();

        // Stream → board.
        let b = bundle(100, 1, Framing::Stream);
        far.write_all(&b).await.unwrap();
        assert_eq!(board_rx.recv().await.unwrap(), b);

        // Board unplugged: bundles from the stream are dropped; after the replug they flow again.
        ev_tx.send(LinkEvent::down("unplugged")).await.unwrap();
        drop(board_rx);
        let (board_tx, mut board_rx) = mpsc::channel(2);
        // The Down must be seen before the dropped bundle is written: send the next Up only after.
        far.write_all(&bundle(10, 2, Framing::Stream))
            .await
            .unwrap();
        tokio::task::yield_now().await;
        ev_tx.send(up(board_tx)).await.unwrap();
        let b3 = bundle(30, 3, Framing::Stream);
        // Wait until the new board link is published: the board sees b3 (earlier bundles were
        // dropped while no board was attached, or went to the old, closed sender).
        let mut delivered = false;
        for _ in 0..100 {
            far.write_all(&b3).await.unwrap();
            if let Ok(Some(got)) =
                tokio::time::timeout(std::time::Duration::from_millis(50), board_rx.recv()).await
            {
                assert_eq!(got, b3);
                delivered = true;
                break;
            }
        }
        assert!(delivered, "bundles reach the board after the replug");
        let b4 = bundle(700, 4, USB512);
        ev_tx.send(LinkEvent::Bundle(b4.clone())).await.unwrap();
        let mut got = vec![0; b4.len()];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b4, "a bundle without pad passes unchanged");

        // The NAT side closes the stream: the relay ends cleanly with its counters.
        drop(far);
        let stats = relay.await.unwrap().unwrap();
        assert_eq!(stats.board_ups, 2);
        assert_eq!(stats.to_stream, 2);
        assert_eq!(stats.dropped_bad_bundle, 1);
        assert!(stats.to_board >= 2, "{stats:?}");
        assert!(stats.dropped_no_board >= 1, "{stats:?}");
    }

    #[tokio::test]
    async fn garbage_on_the_stream_is_an_error() {
        let (_ev_tx, mut far, relay) = start();
        far.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let e = relay.await.unwrap().unwrap_err();
        assert!(matches!(e, LinkError::Frame(_)), "{e}");
    }
}
