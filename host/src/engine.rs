//! The engine that `qbkit-host run` and `qbkit-host tray` both run: transport tasks (USB or a
//! stream link) feeding drivers through [`LinkEvent`] channels.
//!
//! ```text
//!  Engine::run ──▶ boards::run: a driver per board, one control socket             (run)
//!  tray::app::run ──▶ boards::run with a Ui: board views out, connect/disconnect in (tray)
//!  Engine::spawn_transport (usb::run | run_stream | usbip) ──LinkEvent──▶ a board's driver
//! ```
//!
//! `main.rs` builds an [`Engine`] from the command line once; `run` calls [`Engine::run`], which
//! serves every board the transport brings ([`crate::boards`]); the tray (`tray::app`) runs the
//! same supervisor with a [`crate::boards::Ui`], so its menu stops and starts one board's link
//! task without ever stopping that board's driver (flows survive a reconnect).

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::driver::{self, DriverConfig};
use crate::transport::{self, LinkEvent, TransportSpec};
use crate::usb::{DeviceFilter, UsbConfig};

/// Everything needed to run the host side: the driver's configuration and the transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Engine {
    /// The driver loop's configuration (NAT, control socket, status output).
    pub driver: DriverConfig,
    /// Which transport carries the bundles.
    pub transport: TransportSpec,
    /// Which USB devices count as boards (`--transport usb`).
    pub usb_filter: DeviceFilter,
    /// USB transfer sizes and queue depths.
    pub usb: UsbConfig,
    /// Pre-shared key that authenticates stream links (`--key`).
    pub link_key: Option<qbkit_link::auth::LinkKey>,
    /// Boards the host's config file names (USB serials, each with its forwards).
    pub named_boards: crate::config::HostFile,
}

impl Engine {
    /// An engine; USB transfers are sized for the largest bundle the driver accepts.
    pub fn new(driver: DriverConfig, transport: TransportSpec, usb_filter: DeviceFilter) -> Self {
        // IN transfers are sized for the largest bundle we accept; OUT bundles follow the
        // negotiated (never larger) size the driver takes from the session.
        let usb = UsbConfig {
            transfer_size: driver.max_bundle,
            ..UsbConfig::default()
        };
        Self {
            driver,
            transport,
            usb_filter,
            usb,
            link_key: None,
            named_boards: crate::config::HostFile::default(),
        }
    }

    /// Starts the transport task, reporting to `events`; `filter` selects the USB board (ignored
    /// by stream links). Aborting the returned task drops the link (the driver is not told: send
    /// it a [`LinkEvent::Down`]).
    pub fn spawn_transport(
        &self,
        filter: DeviceFilter,
        events: mpsc::Sender<LinkEvent>,
    ) -> JoinHandle<()> {
        match &self.transport {
            TransportSpec::Usb => tokio::spawn(transport::usb::run(filter, self.usb, events)),
            TransportSpec::Stream(url) => tokio::spawn(qbkit_link::run_stream(
                url.clone(),
                self.link_key.clone(),
                self.driver.max_bundle,
                events,
            )),
            TransportSpec::Usbip(url) => tokio::spawn(transport::usbip::run(
                url.clone(),
                self.usbip_options(&filter),
                events,
            )),
            TransportSpec::UsbipListen { addr, .. } => tokio::spawn(transport::usbip::run_listen(
                addr.clone(),
                self.link_key.clone(),
                self.usbip_options(&filter),
                events,
            )),
        }
    }

    /// USB/IP link options: the board's VID:PID from the filter, IN URBs sized like USB
    /// transfers, the same number of transfers in flight as on local USB.
    fn usbip_options(&self, filter: &DeviceFilter) -> qbkit_usbip::transport::LinkOptions {
        qbkit_usbip::transport::LinkOptions::default()
            .vid_pid(Some((filter.vid, filter.pid)))
            .max_bundle(self.usb.transfer_size)
            .urbs(self.usb.in_depth, self.usb.out_depth)
    }

    /// Serves every board the transport brings ([`crate::boards`]) until `shutdown` completes or
    /// the transport ends.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), driver::Error> {
        crate::boards::run(self, shutdown, None).await
    }
}
