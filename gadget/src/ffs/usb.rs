//! I/O: registers the qbkit gadget through the `usb-gadget` crate (ConfigFS + FunctionFS) and runs
//! the FunctionFS link: ep0 events, queued AIO bulk OUT reads and bulk IN writes.
//!
//! Data flow: [`register`] picks the UDC, removes a stale gadget of *our* name only, and binds.
//! [`run`] then turns FunctionFS events into [`LinkEvent`]s — Enable (host set the configuration)
//! → `Up` with the bulk IN max packet size of the current speed; Disable, Unbind, Suspend → `Down`;
//! Resume → `Up` again — while two tasks move transfers: OUT reads (`OUT_QUEUE_LEN` buffers queued)
//! become `Bundle` events; bundles from the pump go to bulk IN (`IN_QUEUE_LEN` writes in flight;
//! the channel of capacity 1 in front of it is what makes the pump aggregate while they are busy).
//! Buffers are reused, not freed ([`recycle`]): the link's [`qbkit_link::BufPool`] (handed to the
//! driver in [`LinkUp::pool`]) gets each bundle back once its write completed, and OUT reads are
//! made in its buffers, which the driver puts back after writing their packets to the TUN device.
//!
//! Requires `CONFIG_USB_CONFIGFS_F_FS` and a UDC; `modprobe libcomposite` is done by `usb-gadget`.

use std::path::Path;

use tokio::sync::{mpsc, watch};
use usb_gadget::function::custom::{
    Custom, EndpointDirection, EndpointReceiver, EndpointSender, Event,
};
use usb_gadget::function::serial::{Serial, SerialClass};
use usb_gadget::{
    Class, Config, Gadget, Id, OsDescriptor, RegGadget, Speed, Strings, Udc, UsbVersion,
};

use qbkit_link::{LinkEvent, LinkUp};
use shared_frame::Framing;
use shared_frame::usb_id::INTERFACE_NAME;

use crate::config::GadgetSpec;
use crate::configfs::plan::device_class;
use crate::ffs::descriptors::{IN_QUEUE_LEN, OUT_QUEUE_LEN, interface};
use crate::ffs::recycle;

/// PID file of the shell fallback's ep0 holder (`configfs/qbkit-gadget.sh`).
pub const FALLBACK_PIDFILE: &str = "/run/qbkit-gadget-fallback.pid";

/// Errors of gadget registration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsbError {
    /// No UDC: the board has no USB device controller driver loaded.
    #[error(
        "no USB device controller in /sys/class/udc; load the UDC driver (e.g. dwc2, musb, dummy_hcd)"
    )]
    NoUdc,
    /// Several UDCs and none chosen.
    #[error("several USB device controllers ({0}); choose one with --udc NAME")]
    ManyUdcs(String),
    /// The chosen UDC does not exist.
    #[error("USB device controller {0:?} not found (available: {1})")]
    UdcNotFound(String, String),
    /// The gadget was unbound from its UDC while running (the UDC driver unbound or removed, or
    /// its ConfigFS `UDC` attribute cleared): no host can reach this daemon any more.
    #[error(
        "the gadget lost its USB device controller {udc} (unbound or removed) while running; \
         exiting so the service manager starts it again"
    )]
    UdcGone {
        /// The UDC's name.
        udc: String,
    },
    /// A ConfigFS/FunctionFS operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation, with the ConfigFS path where known.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UsbError {
    let what = what.into();
    move |source| UsbError::Io { what, source }
}

/// A registered gadget and its endpoints. Dropping it removes the gadget.
#[derive(Debug)]
pub struct UsbGadget {
    /// The registration (removes the gadget on drop).
    pub reg: RegGadget,
    /// ep0 events.
    pub custom: Custom,
    /// Bulk OUT.
    pub rx: EndpointReceiver,
    /// Bulk IN.
    pub tx: EndpointSender,
    /// The UDC bound to.
    pub udc: Udc,
    _serial: Option<Serial>,
}

/// Chooses the UDC: `wanted` by name, else the only one.
pub fn pick_udc(wanted: Option<&str>) -> Result<Udc, UsbError> {
    let all = usb_gadget::udcs().map_err(io("list /sys/class/udc"))?;
    let names = || {
        all.iter()
            .map(|u| u.name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        Some(w) => all
            .iter()
            .find(|u| u.name() == w)
            .cloned()
            .ok_or_else(|| UsbError::UdcNotFound(w.to_owned(), names())),
        None => match all.len() {
            0 => Err(UsbError::NoUdc),
            1 => Ok(all[0].clone()),
            _ => Err(UsbError::ManyUdcs(names())),
        },
    }
}

/// Removes a gadget named `name` left by a previous run or by the shell fallback. Gadgets with other
/// names are never touched. Returns whether one was removed.
pub fn remove_stale(name: &str) -> Result<bool, UsbError> {
    if let Ok(pid) = std::fs::read_to_string(FALLBACK_PIDFILE) {
        if let Ok(pid) = pid.trim().parse::<i32>()
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = std::fs::remove_file(FALLBACK_PIDFILE);
    }
    let gadgets = match usb_gadget::registered() {
        Ok(g) => g,
        // No ConfigFS gadget support at all: nothing of ours can exist.
        Err(_) if !Path::new("/sys/kernel/config/usb_gadget").exists() => return Ok(false),
        Err(e) => return Err(io("list registered gadgets")(e)),
    };
    let mut removed = false;
    for mut g in gadgets {
        if g.name() == name {
            tracing::info!(path = %g.path().display(), "removing our stale gadget");
            g.remove().map_err(io(format!("remove {name}")))?;
            removed = true;
        } else {
            g.detach(); // not ours: leave it registered
        }
    }
    Ok(removed)
}

/// Registers the gadget of `spec` and binds it to the UDC.
pub fn register(spec: &GadgetSpec, udc: Option<&str>) -> Result<UsbGadget, UsbError> {
    let udc = pick_udc(udc)?;
    remove_stale(&spec.name)?;
    let (rx, out_dir) = EndpointDirection::host_to_device();
    let (tx, in_dir) = EndpointDirection::device_to_host();
    let (custom, handle) = Custom::builder()
        .with_interface(interface(
            out_dir.with_queue_len(OUT_QUEUE_LEN),
            in_dir.with_queue_len(IN_QUEUE_LEN),
        ))
        .build();
    let (class, sub, proto) = device_class(spec);
    let mut gadget = Gadget::new(
        Class::new(class, sub, proto),
        Id::new(spec.vendor_id, spec.product_id),
        Strings::new(&spec.manufacturer, &spec.product, &spec.serial),
    );
    gadget.name = Some(spec.name.clone());
    gadget.device_release = spec.device_release;
    gadget.usb_version = UsbVersion::V21;
    let mut config = Config::new(INTERFACE_NAME);
    config.max_power = spec.max_power_ma;
    config.add_function(handle);
    let serial = if spec.with_serial {
        let (s, h) = Serial::new(SerialClass::Acm);
        config.add_function(h);
        Some(s)
    } else {
        None
    };
    let reg = gadget
        .with_config(config)
        .with_os_descriptor(OsDescriptor::microsoft())
        .bind(&udc)
        .map_err(io(format!(
            "register gadget usb_gadget/{} on {}",
            spec.name,
            udc.name().to_string_lossy()
        )))?;
    tracing::info!(udc = %udc.name().to_string_lossy(), serial = %spec.serial, "gadget bound");
    Ok(UsbGadget {
        reg,
        custom,
        rx,
        tx,
        udc,
        _serial: serial,
    })
}

/// Waits until ep0 has an event (`Ok(true)`). With `unbound` set (an Unbind came while the UDC
/// was still listed), gives up every [`UNBOUND_RECHECK`] to look again: `Ok(false)` while the UDC
/// is there, `UdcGone` once it has left.
async fn wait_ep0(
    custom: &mut Custom,
    unbound: Option<(&RegGadget, &Udc)>,
) -> Result<bool, UsbError> {
    let waited = match unbound {
        Some((reg, udc)) => {
            match tokio::time::timeout(UNBOUND_RECHECK, custom.wait_event()).await {
                Ok(waited) => waited,
                Err(_) => return udc_gone(reg, udc).map_or(Ok(false), Err),
            }
        }
        None => custom.wait_event().await,
    };
    waited.map(|()| true).map_err(|source| UsbError::Io {
        what: "FunctionFS ep0 (waiting for events)".into(),
        source,
    })
}

/// How often an unbound gadget looks whether its UDC is still there.
const UNBOUND_RECHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// `UdcGone` when the gadget's UDC has left /sys/class/udc or ConfigFS no longer binds it.
fn udc_gone(reg: &RegGadget, udc: &Udc) -> Option<UsbError> {
    let present = Path::new("/sys/class/udc").join(udc.name()).exists();
    (!present || !matches!(reg.udc(), Ok(Some(_)))).then(|| UsbError::UdcGone {
        udc: udc.name().to_string_lossy().into_owned(),
    })
}

fn max_packet_size(udc: &Udc) -> usize {
    match udc.current_speed() {
        Ok(Speed::SuperSpeed | Speed::SuperSpeedPlus) => 1024,
        Ok(Speed::FullSpeed | Speed::LowSpeed) => 64,
        _ => 512,
    }
}

/// Runs the FunctionFS link until `events` closes (`Ok`), ep0 fails or the gadget loses its UDC
/// (an error: the daemon exits non-zero, and systemd's `Restart=on-failure` starts it again).
/// An ep0 event that cannot be read is skipped after a backoff (1 ms doubling to 1 s, logged once
/// per change). Counts transfer errors in the log only; the pump counts what reaches it.
/// Transfers use buffers of `pool`, which goes to the driver in every [`LinkUp`].
pub async fn run(
    g: UsbGadget,
    max_bundle: usize,
    events: mpsc::Sender<LinkEvent>,
    pool: qbkit_link::BufPool,
) -> Result<(), UsbError> {
    let UsbGadget {
        reg,
        mut custom,
        rx,
        tx,
        udc,
        _serial,
    } = g;
    let (enabled_tx, enabled_rx) = watch::channel(false);
    let (bundle_tx, bundle_rx) = mpsc::channel::<Vec<u8>>(1);
    let out_task = tokio::spawn(out_loop(
        rx,
        max_bundle,
        enabled_rx,
        events.clone(),
        pool.clone(),
    ));
    let in_task = tokio::spawn(in_loop(tx, bundle_rx, pool.clone()));
    let mut enabled = false;
    let mut suspended = false;
    let mut event_backoff = qbkit_link::Backoff::new(
        "FunctionFS ep0 events",
        std::time::Duration::from_millis(1),
        std::time::Duration::from_secs(1),
    );
    // After an Unbind whose UDC is still listed (it may be on its way out: the unbind event
    // comes before the UDC leaves sysfs), look again every UNBOUND_RECHECK until the gadget is
    // bound again or the UDC is gone.
    let mut unbound = false;
    let result = loop {
        match wait_ep0(&mut custom, unbound.then_some((&reg, &udc))).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => break Err(e),
        }
        let ev = match custom.event() {
            Ok(ev) => {
                event_backoff.reset();
                ev
            }
            Err(e) => {
                tokio::time::sleep(event_backoff.failed(&format!("bad FunctionFS event: {e}")))
                    .await;
                continue;
            }
        };
        tracing::debug!(?ev, "FunctionFS event");
        let was_up = enabled && !suspended;
        match ev {
            Event::Bind => unbound = false,
            Event::Enable => {
                enabled = true;
                suspended = false;
                unbound = false;
            }
            Event::Disable => enabled = false,
            // Unbind: the gadget left its UDC (no cable event does this). Gone for good when the
            // UDC itself is gone or ConfigFS no longer names it.
            Event::Unbind => {
                enabled = false;
                if let Some(gone) = udc_gone(&reg, &udc) {
                    break Err(gone);
                }
                unbound = true;
            }
            Event::Suspend => suspended = true,
            Event::Resume => suspended = false,
            // No vendor control requests are defined: stall them.
            Event::SetupHostToDevice(req) => {
                let _ = req.halt();
            }
            Event::SetupDeviceToHost(req) => {
                let _ = req.halt();
            }
            _ => {}
        }
        let is_up = enabled && !suspended;
        if is_up == was_up {
            continue;
        }
        let _ = enabled_tx.send(is_up);
        let ev = if is_up {
            let mps = max_packet_size(&udc);
            tracing::info!(max_packet_size = mps, "USB host configured the interface");
            LinkEvent::Up(LinkUp {
                framing: Framing::Usb {
                    max_packet_size: mps,
                },
                tx: bundle_tx.clone(),
                pool: pool.clone(),
                description: format!("usb (wMaxPacketSize {mps})"),
            })
        } else {
            tracing::info!("USB link lost (disable/unbind/suspend)");
            LinkEvent::down("USB link lost (disable/unbind/suspend)")
        };
        if events.send(ev).await.is_err() {
            break Ok(());
        }
    };
    out_task.abort();
    in_task.abort();
    drop(reg);
    result
}

/// Backoff between bulk OUT re-queues after read errors while the interface is enabled.
const OUT_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(5);
const OUT_RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(200);

/// Keeps bulk OUT reads queued whenever the interface is enabled.
///
/// A read error while disabled ends the connection's reads until the next enable. A read error
/// while enabled is either the previous connection's shutdown seen late (after a quick replug the
/// Disable and Enable events can both be processed before the failed reads are) or a transient
/// fault: the queue is cancelled and refilled, with a growing delay, for as long as the interface
/// stays enabled. Giving up after a fixed count left OUT dead for a whole connection while IN
/// worked (seen in the VM endurance test: the host's Hellos never arrived, the board timed out).
async fn out_loop(
    mut rx: EndpointReceiver,
    max_bundle: usize,
    mut enabled: watch::Receiver<bool>,
    events: mpsc::Sender<LinkEvent>,
    pool: qbkit_link::BufPool,
) {
    loop {
        if enabled.wait_for(|e| *e).await.is_err() {
            return;
        }
        let _ = rx.cancel();
        let mut errors_enabled = 0u32;
        let mut delay = OUT_RETRY_FIRST;
        loop {
            match rx.recv_async(recycle::read_buffer(&pool, max_bundle)).await {
                Ok(Some(buf)) => {
                    errors_enabled = 0;
                    delay = OUT_RETRY_FIRST;
                    if events.send(LinkEvent::Bundle(buf.into())).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) if *enabled.borrow() => {
                    errors_enabled += 1;
                    if errors_enabled.is_power_of_two() && errors_enabled >= 8 {
                        tracing::warn!(error = %e, errors_enabled, "bulk OUT reads keep failing while the interface is enabled; retrying");
                    } else {
                        tracing::debug!(error = %e, errors_enabled, "bulk OUT read failed; queueing again");
                    }
                    let _ = rx.cancel();
                    // Sleep, but stop at once if the interface is disabled meanwhile.
                    if errors_enabled > 1 {
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            r = enabled.wait_for(|e| !*e) => if r.is_err() { return },
                        }
                        delay = (delay * 2).min(OUT_RETRY_MAX);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bulk OUT read failed while disabled");
                    break;
                }
            }
        }
    }
}

async fn in_loop(
    mut tx: EndpointSender,
    mut bundles: mpsc::Receiver<Vec<u8>>,
    pool: qbkit_link::BufPool,
) {
    let mut errors: u64 = 0;
    while let Some(b) = bundles.recv().await {
        if let Err(e) = tx
            .send_async(recycle::bytes_returning(b, pool.clone()))
            .await
        {
            errors += 1;
            if errors.is_power_of_two() {
                tracing::warn!(error = %e, errors, "bulk IN write failed; bundle dropped");
            }
            let _ = tx.cancel();
        }
    }
}
