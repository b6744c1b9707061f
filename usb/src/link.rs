//! An open board: the claimed vendor interface and its two bulk endpoints, with transfers kept
//! queued in both directions.
//!
//! Data flow: [`UsbLink::open`] → `open_and_claim` (open, set the configuration when the OS left
//! the device unconfigured, claim) → [`UsbRx`] (IN: `in_depth` transfers always queued, completions
//! lent out one at a time by [`UsbRx::recv_bundle`]) and [`UsbTx`] (OUT: [`UsbTx::send_bundle`]
//! copies the bundle into a free pooled buffer and submits it, waiting only when `out_depth`
//! transfers are already in flight). Both halves can be used from one task through [`UsbLink`] or
//! from two tasks after [`UsbLink::split`].

use std::task::{Context, Poll, Waker};

use nusb::Endpoint;
use nusb::transfer::{Buffer, Bulk, Completion, In, Out, TransferError};
use shared_frame::{DEFAULT_MAX_BUNDLE, needs_zlp};

use super::discover::{self, Board, BoardInfo, DeviceFilter, VendorInterface};
use super::{DEFAULT_IN_DEPTH, DEFAULT_OUT_DEPTH, UsbError};

/// Transfer sizes and queue depths of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsbConfig {
    /// Largest bundle in either direction (the negotiated max bundle; 64 KiB until negotiated).
    pub transfer_size: usize,
    /// IN transfers kept queued (at least 1).
    pub in_depth: usize,
    /// OUT transfers allowed in flight (at least 1).
    pub out_depth: usize,
}

impl Default for UsbConfig {
    fn default() -> Self {
        Self {
            transfer_size: DEFAULT_MAX_BUNDLE,
            in_depth: DEFAULT_IN_DEPTH,
            out_depth: DEFAULT_OUT_DEPTH,
        }
    }
}

/// An open, claimed board.
#[derive(Debug)]
pub struct UsbLink {
    info: BoardInfo,
    iface: VendorInterface,
    _interface: nusb::Interface,
    rx: UsbRx,
    tx: UsbTx,
}

/// Opens a board and claims its vendor interface; shared by [`UsbLink::open_board`] and
/// [`Board::probe`]. `configure`: select a configuration when the device has none active
/// (macOS may leave a vendor device so); without it an unconfigured device is
/// [`UsbError::Unconfigured`], for callers that give the OS time to configure it first.
pub(crate) async fn open_and_claim(
    board: &Board,
    configure: bool,
) -> Result<(nusb::Interface, VendorInterface), UsbError> {
    let path = board.info().bus_path.as_str();
    #[cfg(windows)]
    if board.device.driver().is_none() {
        return Err(UsbError::DriverMissing {
            path: path.to_owned(),
            advice: super::error::WINDOWS_DRIVER_ADVICE,
            source: None,
        });
    }
    let device = board
        .device
        .open()
        .await
        .map_err(|e| UsbError::from_open(path, "open", e))?;
    let active = device
        .active_configuration()
        .ok()
        .and_then(|c| VendorInterface::find(&c));
    let vi = if let Some(vi) = active {
        vi
    } else if !configure {
        return Err(UsbError::Unconfigured {
            path: path.to_owned(),
        });
    } else {
        // Unconfigured (macOS may leave a vendor device so) or in a configuration without our
        // interface: select the first configuration that has it.
        let (value, vi) = device
            .configurations()
            .find_map(|c| VendorInterface::find(&c).map(|vi| (c.configuration_value(), vi)))
            .ok_or_else(|| UsbError::NoInterface {
                path: path.to_owned(),
            })?;
        tracing::info!(path, value, "setting USB configuration");
        device
            .set_configuration(value)
            .await
            .map_err(|e| UsbError::from_open(path, "set configuration", e))?;
        vi
    };
    let interface = device
        .detach_and_claim_interface(vi.number)
        .await
        .map_err(|e| UsbError::from_open(path, "claim interface", e))?;
    if vi.alt_setting != 0 {
        interface
            .set_alt_setting(vi.alt_setting)
            .await
            .map_err(|e| UsbError::from_open(path, "set alternate setting", e))?;
    }
    Ok((interface, vi))
}

impl UsbLink {
    /// Finds the one board matching `filter` (error if none, or several without a serial) and
    /// opens it.
    pub async fn open(filter: &DeviceFilter, cfg: UsbConfig) -> Result<Self, UsbError> {
        let boards = discover::list_boards(filter, false).await?;
        let board = discover::choose(filter, boards)?;
        Self::open_board(&board, cfg).await
    }

    /// Opens a board found by [`discover::list_boards`] or a [`super::BoardWatch`] event,
    /// selecting a configuration if it has none.
    pub async fn open_board(board: &Board, cfg: UsbConfig) -> Result<Self, UsbError> {
        Self::open_board_with(board, cfg, true).await
    }

    /// [`UsbLink::open_board`]; with `configure` false an unconfigured board is
    /// [`UsbError::Unconfigured`] instead of being configured from here.
    pub async fn open_board_with(
        board: &Board,
        cfg: UsbConfig,
        configure: bool,
    ) -> Result<Self, UsbError> {
        let (interface, iface) = open_and_claim(board, configure).await?;
        let path = board.info().bus_path.clone();
        let ep_in = interface
            .endpoint::<Bulk, In>(iface.ep_in)
            .map_err(|e| UsbError::from_open(&path, "open IN endpoint", e))?;
        let ep_out = interface
            .endpoint::<Bulk, Out>(iface.ep_out)
            .map_err(|e| UsbError::from_open(&path, "open OUT endpoint", e))?;
        let rx = UsbRx::new(ep_in, path.clone(), cfg.in_depth, cfg.transfer_size);
        let tx = UsbTx::new(ep_out, path, cfg.out_depth, cfg.transfer_size);
        tracing::info!(path = %board.info().bus_path, speed = ?board.info().speed, mps = iface.in_max_packet, "board opened");
        Ok(Self {
            info: board.info().clone(),
            iface,
            _interface: interface,
            rx,
            tx,
        })
    }

    /// The board's summary.
    pub fn info(&self) -> &BoardInfo {
        &self.info
    }

    /// The interface and endpoints in use.
    pub fn interface(&self) -> VendorInterface {
        self.iface
    }

    /// Receives the next bundle; see [`UsbRx::recv_bundle`].
    pub async fn recv_bundle(&mut self) -> Result<&[u8], UsbError> {
        self.rx.recv_bundle().await
    }

    /// Queues one bundle for sending; see [`UsbTx::send_bundle`].
    pub async fn send_bundle(&mut self, bundle: &[u8]) -> Result<(), UsbError> {
        self.tx.send_bundle(bundle).await
    }

    /// Waits until every queued bundle has been sent; see [`UsbTx::flush`].
    pub async fn flush(&mut self) -> Result<(), UsbError> {
        self.tx.flush().await
    }

    /// Separates the directions so a reader task and a writer task can own one each. The
    /// interface stays claimed until both halves are dropped.
    pub fn split(self) -> (UsbRx, UsbTx) {
        (self.rx, self.tx)
    }
}

/// The receiving half: IN transfers, always `depth` of them queued.
#[derive(Debug)]
pub struct UsbRx {
    ep: Endpoint<Bulk, In>,
    path: String,
    depth: usize,
    /// Idle buffers (one in steady state: the spare that replaces a completed transfer at once).
    spare: Vec<Buffer>,
    /// The buffer whose data the last `recv_bundle` returned; back to `spare` on the next call.
    lent: Option<Buffer>,
    dead: Option<TransferError>,
    zlps: u64,
}

impl UsbRx {
    fn new(ep: Endpoint<Bulk, In>, path: String, depth: usize, transfer_size: usize) -> Self {
        let depth = depth.max(1);
        let mps = ep.max_packet_size().max(1);
        // IN requests must be whole packets; a padded bundle always fits (the writer keeps room).
        let len = transfer_size.div_ceil(mps) * mps;
        let spare = (0..=depth).map(|_| ep.allocate(len)).collect();
        let mut rx = Self {
            ep,
            path,
            depth,
            spare,
            lent: None,
            dead: None,
            zlps: 0,
        };
        rx.refill();
        rx
    }

    fn refill(&mut self) {
        while self.ep.pending() < self.depth {
            let Some(buf) = self.spare.pop() else { break };
            self.ep.submit(buf);
        }
    }

    /// Waits for the next bundle from the board and returns its bytes (one whole IN transfer,
    /// including any pad). The slice is valid until the next call; the buffer then goes back to
    /// the queue.
    ///
    /// Cancel-safe: dropping the future loses nothing (use it in `tokio::select!`).
    ///
    /// # Errors
    /// [`UsbError::Disconnected`] when the board went away, [`UsbError::Transfer`] on a stall or
    /// protocol fault. After an error every later call returns it again at once.
    pub async fn recv_bundle(&mut self) -> Result<&[u8], UsbError> {
        if let Some(b) = self.lent.take() {
            self.spare.push(b);
        }
        loop {
            if let Some(e) = self.dead {
                return Err(UsbError::from_transfer(
                    &self.path,
                    self.ep.endpoint_address(),
                    e,
                ));
            }
            self.refill();
            let c = self.ep.next_complete().await;
            match c.status {
                Ok(()) if c.buffer.is_empty() => {
                    // A zero-length packet the gadget sent after a full-size transfer: no bundle.
                    self.zlps += 1;
                    self.spare.push(c.buffer);
                }
                Ok(()) => {
                    self.refill();
                    return Ok(self.lent.insert(c.buffer));
                }
                Err(e) => {
                    tracing::debug!(path = %self.path, error = %e, "IN transfer failed");
                    self.spare.push(c.buffer);
                    self.dead = Some(e);
                    self.ep.cancel_all();
                }
            }
        }
    }

    /// IN transfers currently queued in the OS.
    pub fn in_flight(&self) -> usize {
        self.ep.pending()
    }

    /// Zero-length IN transfers seen (and skipped) so far.
    pub fn zlps_skipped(&self) -> u64 {
        self.zlps
    }

    /// wMaxPacketSize of the IN endpoint.
    pub fn max_packet_size(&self) -> usize {
        self.ep.max_packet_size()
    }
}

/// The sending half: OUT transfers from a pool of `depth` buffers.
#[derive(Debug)]
pub struct UsbTx {
    ep: Endpoint<Bulk, Out>,
    path: String,
    free: Vec<Buffer>,
    transfer_size: usize,
    dead: Option<TransferError>,
    zlps: u64,
}

impl UsbTx {
    fn new(ep: Endpoint<Bulk, Out>, path: String, depth: usize, transfer_size: usize) -> Self {
        let free = (0..depth.max(1))
            .map(|_| ep.allocate(transfer_size))
            .collect();
        Self {
            ep,
            path,
            free,
            transfer_size,
            dead: None,
            zlps: 0,
        }
    }

    /// Queues one bundle: copies it into a free transfer buffer and submits it, followed by a
    /// zero-length packet when its length is a multiple of wMaxPacketSize (module docs: ZLP rule).
    /// Returns once the transfer is queued; it waits only while all `out_depth` buffers are in
    /// flight (that is the backpressure).
    ///
    /// Cancel-safe: if the future is dropped before it returns, the bundle was not queued.
    ///
    /// # Errors
    /// [`UsbError::TooLarge`] for a bundle over the transfer size; [`UsbError::Disconnected`] /
    /// [`UsbError::Transfer`] when an earlier transfer failed (sticky, like the receiver).
    pub async fn send_bundle(&mut self, bundle: &[u8]) -> Result<(), UsbError> {
        if bundle.len() > self.transfer_size {
            return Err(UsbError::TooLarge {
                len: bundle.len(),
                max: self.transfer_size,
            });
        }
        self.reap_ready()?;
        let mut buf = loop {
            if let Some(b) = self.free.pop() {
                break b;
            }
            let c = self.ep.next_complete().await;
            self.take(c)?;
        };
        buf.clear();
        buf.extend_from_slice(bundle);
        self.ep.submit(buf);
        if needs_zlp(bundle.len(), self.ep.max_packet_size()) {
            self.zlps += 1;
            self.ep.submit(Buffer::new(0));
        }
        Ok(())
    }

    /// Waits until every submitted transfer completed.
    pub async fn flush(&mut self) -> Result<(), UsbError> {
        while self.ep.pending() > 0 {
            let c = self.ep.next_complete().await;
            self.take(c)?;
        }
        self.check()
    }

    /// OUT transfers in flight (data transfers and ZLPs).
    pub fn in_flight(&self) -> usize {
        self.ep.pending()
    }

    /// ZLPs sent after bundles that ended on a packet boundary.
    pub fn zlps_sent(&self) -> u64 {
        self.zlps
    }

    /// wMaxPacketSize of the OUT endpoint.
    pub fn max_packet_size(&self) -> usize {
        self.ep.max_packet_size()
    }

    fn check(&self) -> Result<(), UsbError> {
        match self.dead {
            Some(e) => Err(UsbError::from_transfer(
                &self.path,
                self.ep.endpoint_address(),
                e,
            )),
            None => Ok(()),
        }
    }

    /// Takes the completions that are already there, without waiting.
    fn reap_ready(&mut self) -> Result<(), UsbError> {
        let mut cx = Context::from_waker(Waker::noop());
        while self.ep.pending() > 0 {
            match self.ep.poll_next_complete(&mut cx) {
                Poll::Ready(c) => self.take(c)?,
                Poll::Pending => break,
            }
        }
        self.check()
    }

    fn take(&mut self, c: Completion) -> Result<(), UsbError> {
        // ZLP buffers have no capacity and are not pooled.
        if c.buffer.capacity() > 0 {
            self.free.push(c.buffer);
        }
        if let Err(e) = c.status
            && self.dead.is_none()
        {
            tracing::debug!(path = %self.path, error = %e, "OUT transfer failed");
            self.dead = Some(e);
            self.ep.cancel_all();
        }
        self.check()
    }
}
