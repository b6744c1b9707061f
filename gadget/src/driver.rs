//! The one I/O loop of the daemon: TUN device, link task, timers, control socket and signals around
//! the sans-IO [`Pump`]. This is the only place that reads the clock.
//!
//! Data flow per iteration: hand bundles to the link while it has free slots (so an idle link
//! sends at once and a busy one lets the pump aggregate), carry out the pump's actions (carrier,
//! LinkConfig → netlink + DNS), then wait for whichever comes first: a link event, a free link
//! slot, a TUN packet (only while the pump can stage one: backpressure), the pump's timer, a
//! control request or a signal. As in quinn's endpoint driver, every input is followed by draining
//! the pump's outputs before waiting again, because one input can unlock several outputs.
//! TUN packets are read straight into the pump's staging ([`Pump::tun_buffer`]), and after each
//! read whatever else the device already holds ([`Pump::drain_tun`]), so packets the board wrote
//! back to back share a bundle even on an idle link; bundles are
//! built in buffers of the link's [`BufPool`] (from its [`LinkUp`]), where the link task puts them
//! back once written, and received bundles go back to that pool once their packets are written
//! (the FunctionFS link reads into its buffers, [`crate::ffs::recycle`]; a stream link copies into
//! them), so neither end allocates per bundle.
//!
//! A host that sends nothing for the session's peer timeout on a stream link (half-open TCP)
//! gets that link closed: the pump says so ([`Pump::poll_close_link`]) and the driver drops the
//! link's sender, so `run_stream` ends the stream (`PeerSilent`) and redials with its backoff.

use std::path::PathBuf;
use std::time::Duration;

use qbkit_link::control::LinkStatus;
use qbkit_link::{BufPool, LinkEvent, LinkUp};
use shared_frame::{Framing, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{GadgetSpec, NetOverrides};
use crate::control::{self, Pending, Request, Status};
use crate::dns::Dns;
use crate::netcfg::NetConfig;
use crate::pump::{Action, Pump, PumpConfig};
use crate::stream::LinkSpec;

/// Errors that stop the daemon at start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Creating the TUN device failed.
    #[error("cannot create TUN device {name}: {source} (needs CAP_NET_ADMIN and /dev/net/tun)")]
    Tun {
        /// The device name.
        name: String,
        /// The error.
        source: tun::Error,
    },
    /// Netlink configuration failed.
    #[error(transparent)]
    Net(#[from] crate::netcfg::NetError),
    /// Gadget registration failed.
    #[error(transparent)]
    Usb(#[from] crate::ffs::usb::UsbError),
    /// The control socket or signal handlers could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// USB identity.
    pub spec: GadgetSpec,
    /// The link.
    pub link: LinkSpec,
    /// Pre-shared key that authenticates stream links.
    pub link_key: Option<qbkit_link::auth::LinkKey>,
    /// TUN device name.
    pub tun: String,
    /// UDC name.
    pub udc: Option<String>,
    /// Static network settings.
    pub net: NetOverrides,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// `qbkit-gadget export`: keep the gadget (on a usbip-vudc UDC, `udc`) exported to this
    /// laptop; teardown unexports it.
    pub export: Option<crate::export::ExportTarget>,
}

/// Runs the daemon until SIGTERM/SIGINT, `teardown`, or the end of a stdio link (`Ok`), or until
/// the FunctionFS link fails (ep0 failed, the UDC went away: that error, after the same cleanup).
#[allow(
    clippy::too_many_lines,
    reason = "the one event loop reads best as one function"
)]
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let start = std::time::Instant::now();
    let now =
        || Instant::from_micros(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    let mut pcfg = PumpConfig::new(opts.spec.serial.clone());
    pcfg.overrides = opts.net.clone();
    if let Some(mtu) = opts.net.mtu {
        pcfg.session.max_mtu = mtu;
        pcfg.mtu = mtu as usize;
    }
    let max_bundle = pcfg.session.max_bundle;
    let initial_mtu = pcfg.mtu;

    let mut tcfg = tun::Configuration::default();
    tcfg.tun_name(&opts.tun)
        .mtu(u16::try_from(initial_mtu).unwrap_or(u16::MAX))
        .up();
    let tun_dev = tun::create_as_async(&tcfg).map_err(|source| RunError::Tun {
        name: opts.tun.clone(),
        source,
    })?;
    let mut net = NetConfig::new(&opts.tun).await?;
    net.set_carrier(false).await?;
    net.set_up().await?;
    let mut dns = Dns::new(opts.net.dns_mode, net.index());
    if opts.net.ipv4.is_some() || opts.net.ipv6.is_some() {
        let lc = opts.net.apply(&shared_frame::LinkConfig::default());
        apply_config(&mut net, &mut dns, &lc, opts.net.default_route).await;
    }

    let (ev_tx, mut ev_rx) = mpsc::channel::<LinkEvent>(64);
    // The link task's result is the daemon's: a FunctionFS link that failed ends `run` with an
    // error (non-zero exit, so systemd restarts the daemon); a stream link only ends when stdio
    // did, which is a normal end.
    let mut link_task: tokio::task::JoinHandle<Result<(), RunError>> = match &opts.link {
        LinkSpec::FunctionFs => {
            let g = crate::ffs::usb::register(&opts.spec, opts.udc.as_deref())?;
            let pool = BufPool::default(); // for the daemon's life, across replugs
            tokio::spawn(async move { Ok(crate::ffs::usb::run(g, max_bundle, ev_tx, pool).await?) })
        }
        LinkSpec::Stream(url) => {
            let run = qbkit_link::run_stream(url.clone(), opts.link_key.clone(), max_bundle, ev_tx);
            tokio::spawn(async move {
                run.await;
                Ok(())
            })
        }
    };
    let mut link_result: Option<Result<(), RunError>> = None;
    let export = opts
        .export
        .clone()
        .zip(opts.udc.clone())
        .map(|(target, udc)| {
            let task = tokio::spawn(crate::export::run(
                target.clone(),
                udc.clone(),
                opts.link_key.clone(),
            ));
            (target, udc, task)
        });

    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Pending>(8);
    control::serve(&opts.control_socket, ctl_tx).map_err(|source| RunError::Io {
        what: format!("control socket {}", opts.control_socket.display()),
        source,
    })?;
    let sig = |k| {
        signal(k).map_err(|source| RunError::Io {
            what: "signal handler".into(),
            source,
        })
    };
    let mut sigterm = sig(SignalKind::terminate())?;
    let mut sigint = sig(SignalKind::interrupt())?;

    let mut pump = Pump::new(pcfg, now());
    let mut link_tx: Option<mpsc::Sender<Vec<u8>>> = None;
    // The buffer pool of the link last attached (see the module docs): the FunctionFS link keeps
    // one for the daemon's life, a stream link brings a new one with each connection.
    let mut pool = BufPool::default();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(link = %opts.link, tun = %opts.tun, "qbkit-gadget running");

    loop {
        if pump.poll_close_link() {
            // The host went silent: dropping the sender ends the stream, which then redials.
            link_tx = None;
        }
        // Hand bundles to every free link slot (idle link: send now).
        while pump.wants_transmit() {
            let Some(Ok(permit)) = link_tx.as_ref().map(mpsc::Sender::try_reserve) else {
                break;
            };
            match poll_bundle(&mut pump, &pool) {
                Some(b) => permit.send(b),
                None => break,
            }
        }
        while let Some(a) = pump.poll_action() {
            match a {
                Action::Carrier(on) => {
                    tracing::info!(carrier = on, "carrier");
                    if let Err(e) = net.set_carrier(on).await {
                        tracing::warn!(error = %e, "setting carrier failed");
                    }
                }
                Action::ApplyLinkConfig(offer) => {
                    let lc = opts.net.apply(&offer);
                    apply_config(&mut net, &mut dns, &lc, opts.net.default_route).await;
                }
            }
        }
        let deadline = pump
            .poll_timeout()
            .map(|t| tokio::time::Instant::from_std(start + Duration::from_micros(t.as_micros())));
        let can_tx = pump.wants_transmit();
        let reserve_tx = link_tx.clone().filter(|_| can_tx);
        let reserve = async {
            match reserve_tx {
                Some(tx) => tx.reserve_owned().await.ok(),
                None => std::future::pending().await,
            }
        };
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            ev = ev_rx.recv() => match ev {
                None => {
                    let res = match (&mut link_task).await {
                        Ok(res) => res,
                        Err(e) => Err(RunError::Io {
                            what: "link task".into(),
                            source: std::io::Error::other(e.to_string()),
                        }),
                    };
                    match &res {
                        Ok(()) => tracing::info!("link ended for good"),
                        Err(e) => tracing::error!(error = %e, "link failed"),
                    }
                    link_result = Some(res);
                    break;
                }
                Some(LinkEvent::Up(LinkUp { framing, tx, pool: link_pool, .. })) => {
                    link_tx = Some(tx);
                    pool = link_pool;
                    pump.handle_link_up(now(), framing);
                }
                Some(LinkEvent::Listening { url }) => tracing::info!(%url, "link listening"),
                // A failed dial: the link task's backoff logged it (once per change) and retries.
                Some(LinkEvent::Failed { .. }) => {}
                Some(LinkEvent::Down { framing_error, .. }) => {
                    if framing_error {
                        pump.record_link_frame_error();
                    }
                    link_tx = None;
                    pump.handle_link_down(now());
                }
                Some(LinkEvent::Bundle(buf)) => {
                    ranges.clear();
                    let base = buf.as_ptr() as usize;
                    pump.handle_link_bundle(now(), &buf, |p| {
                        ranges.push((p.as_ptr() as usize - base, p.len()));
                        true
                    });
                    for &(off, len) in &ranges {
                        if let Err(e) = tun_dev.send(&buf[off..off + len]).await {
                            pump.record_tun_write_error();
                            tracing::debug!(error = %e, "TUN write failed");
                        }
                    }
                    pool.put(buf);
                }
            },
            permit = reserve => {
                if let Some(permit) = permit
                    && let Some(b) = poll_bundle(&mut pump, &pool)
                {
                    permit.send(b);
                }
            }
            // Straight into the pump's staging (no copy on the way in).
            r = tun_dev.recv(pump.tun_buffer()), if pump.can_accept_tun() => {
                // What else is waiting goes into the same bundle (polled once each: the read
                // into EAGAIN clears tokio's readiness, as the awaited read would).
                let r = r.and_then(|n| {
                    pump.handle_tun_read(n);
                    pump.drain_tun(|buf| poll_once(tun_dev.recv(buf)))
                });
                if let Err(e) = r {
                    tracing::warn!(error = %e, "TUN read failed");
                }
            }
            () = timer => pump.handle_timeout(now()),
            Some(control::Pending { request, stream }) = ctl_rx.recv() => {
                qbkit_link::control::reply(stream, &status(&pump, &opts, start.elapsed()));
                if request == Request::Teardown {
                    tracing::info!("teardown requested");
                    break;
                }
            }
        }
    }

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    pump.close();
    if let Some(tx) = &link_tx
        && let Ok(permit) = tx.try_reserve()
        && let Some(b) = pump.poll_transmit()
    {
        permit.send(b);
        // Bounded grace so the Bye reaches the host before the link goes away.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some((target, udc, task)) = export {
        task.abort();
        crate::export::unexport(&target, &udc, opts.link_key.as_ref()).await;
    }
    dns.restore().await;
    if link_result.is_none() {
        link_task.abort();
        let _ = link_task.await;
    }
    let _ = std::fs::remove_file(&opts.control_socket);
    tracing::info!("qbkit-gadget stopped");
    link_result.unwrap_or(Ok(()))
}

/// Polls `fut` once: its output if it is ready now, else `None` (the future is dropped).
fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(fut).poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// The pump's next bundle, built in a buffer from the link's `pool` (where the link task puts
/// it back once written).
fn poll_bundle(pump: &mut Pump, pool: &BufPool) -> Option<Vec<u8>> {
    if !pump.has_spare() {
        pump.recycle(pool.take());
    }
    pump.poll_transmit()
}

async fn apply_config(
    net: &mut NetConfig,
    dns: &mut Dns,
    lc: &shared_frame::LinkConfig,
    default_route: bool,
) {
    tracing::info!(?lc.ipv4, ?lc.gateway_v4, ?lc.ipv6, ?lc.gateway_v6, ?lc.dns, lc.mtu, default_route,
        "applying link configuration");
    if let Err(e) = net.apply(lc, default_route).await {
        tracing::error!(error = %e, "applying addresses/routes failed");
    }
    if let Err(e) = dns.apply(&lc.dns).await {
        tracing::error!(error = %e, "installing DNS servers failed");
    }
}

fn status(pump: &Pump, opts: &RunOptions, uptime: Duration) -> Status {
    let s = pump.session();
    let applied = pump.applied_link_config().map(|lc| opts.net.apply(lc));
    let mut counters = std::collections::BTreeMap::new();
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(pump.counters()) {
        for (k, v) in m {
            counters.insert(k, v.as_u64().unwrap_or(0));
        }
    }
    for (k, v) in s.counters().named() {
        // `tx_bytes` is the pump's (bytes written to the link); the session counts IP bytes.
        let k = if k == "tx_bytes" { "tx_ip_bytes" } else { k };
        counters.insert(k.to_owned(), v);
    }
    // Stream-link handshakes (zero without a key).
    counters.extend(qbkit_link::auth::COUNTERS.named());
    counters.extend(qbkit_link::control::COUNTERS.named());
    let framing = pump.framing();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_s: uptime.as_secs_f64(),
        transport: opts.link.to_string(),
        link: LinkStatus {
            connected: framing.is_some(),
            description: framing.map(|t| match t {
                Framing::Usb { max_packet_size } => {
                    format!("usb (wMaxPacketSize {max_packet_size})")
                }
                Framing::Stream if opts.link_key.is_some() => "stream (authenticated)".to_owned(),
                Framing::Stream => "stream".to_owned(),
            }),
            ..LinkStatus::of_session(s)
        },
        tun: opts.tun.clone(),
        carrier: pump.carrier(),
        refused: pump.link_config_refused().map(ToString::to_string),
        mtu: applied.as_ref().map(|lc| lc.mtu),
        address: applied
            .as_ref()
            .and_then(|lc| lc.ipv4)
            .map(|c| format!("{}/{}", c.addr, c.prefix)),
        gateway: applied
            .as_ref()
            .and_then(|lc| lc.gateway_v4)
            .map(|g| g.to_string()),
        dns: applied
            .map(|lc| lc.dns.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        counters,
    }
}
