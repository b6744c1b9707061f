//! Host side of the VM USB probe (runs where a laptop's qbkit-host would).
//!
//! `transfer`: finds the device through libusb (rusb), checks its descriptors (one vendor
//! interface, bulk IN + OUT with the max packet size of the negotiated speed), does a control echo,
//! writes MiB of `pattern` to bulk OUT (checked by ffs-dev, counters read back over control),
//! reads MiB from bulk IN and checks them. Prints `RESULT` lines; exits 1 on any mismatch.
//!
//! `hotplug`: registers libusb (rusb) and nusb hotplug watchers for VID:PID and prints one line
//! per event, `EVENT <backend> <arrived|left> <seconds since start>`, flushed, until killed or
//! `--max-secs`. Both libraries need udev-format netlink events (tests/vm/lib/uevent-relay.py).
use clap::{Parser, Subcommand};
use futures_lite::StreamExt;
use qbkit_vm_usb_probe::{CHUNK, PID, REQ_ECHO, REQ_STATS, REQ_STOP, VID, parse_vid_pid, pattern};
use rusb::{Direction, Recipient, RequestType, TransferType, UsbContext, request_type};
use std::{
    collections::HashSet,
    io::Write,
    process::ExitCode,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

#[derive(Parser)]
/// libusb/nusb host-side checks against ffs-dev.
struct Args {
    /// Device to look for (hex VID:PID).
    #[arg(long, global = true, value_parser = parse_vid_pid)]
    dev: Option<(u16, u16)>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Descriptors, control echo, bulk OUT and IN with data checks.
    Transfer {
        /// MiB to move in each direction.
        #[arg(long, default_value_t = 16)]
        mib: usize,
        /// Send the stop request to ffs-dev at the end.
        #[arg(long)]
        stop: bool,
    },
    /// Print hotplug events seen by libusb (rusb) and nusb.
    Hotplug {
        #[arg(long, default_value_t = 600)]
        max_secs: u64,
    },
}

static OUT: Mutex<()> = Mutex::new(());
fn line(s: &str) {
    let _g = OUT.lock();
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{s}");
    let _ = o.flush();
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (vid, pid) = args.dev.unwrap_or((VID, PID));
    match args.cmd {
        Cmd::Transfer { mib, stop } => match transfer(vid, pid, mib, stop) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                line(&format!("usb-probe: FAIL {e}"));
                ExitCode::FAILURE
            }
        },
        Cmd::Hotplug { max_secs } => hotplug(vid, pid, max_secs),
    }
}

type Handle = rusb::DeviceHandle<rusb::GlobalContext>;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Mbit/s for `bytes` in `secs` (display only; the precision loss of huge counts is irrelevant).
#[allow(clippy::cast_precision_loss)]
fn mbit(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e6
}

fn find_device(vid: u16, pid: u16) -> Result<rusb::Device<rusb::GlobalContext>, String> {
    let t0 = Instant::now();
    loop {
        let found = rusb::devices()
            .map_err(|e| format!("libusb: {e}"))?
            .iter()
            .find(|d| {
                d.device_descriptor()
                    .is_ok_and(|dd| dd.vendor_id() == vid && dd.product_id() == pid)
            });
        if let Some(d) = found {
            return Ok(d);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!("device {vid:04x}:{pid:04x} not found in 30 s"));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Checks the descriptors; returns (interface number, bulk IN address, bulk OUT address).
fn check_descriptors(dev: &rusb::Device<rusb::GlobalContext>) -> Result<(u8, u8, u8), String> {
    let speed = dev.speed();
    let want_mps: u16 = match speed {
        rusb::Speed::Super | rusb::Speed::SuperPlus => 1024,
        rusb::Speed::High => 512,
        s => return Err(format!("unexpected speed {s:?}")),
    };
    let cfg = dev
        .active_config_descriptor()
        .map_err(|e| format!("config descriptor: {e}"))?;
    let (mut ifn, mut ep_in, mut ep_out, mut n_if) = (0u8, 0u8, 0u8, 0);
    for intf in cfg.interfaces() {
        for alt in intf.descriptors() {
            n_if += 1;
            line(&format!(
                "  interface {} class {:#04x}",
                alt.interface_number(),
                alt.class_code()
            ));
            if alt.class_code() != 0xff {
                return Err(format!(
                    "interface class {:#04x}, want 0xff",
                    alt.class_code()
                ));
            }
            for ep in alt.endpoint_descriptors() {
                line(&format!(
                    "    endpoint {:#04x} {:?} {:?} mps {}",
                    ep.address(),
                    ep.direction(),
                    ep.transfer_type(),
                    ep.max_packet_size()
                ));
                if ep.transfer_type() != TransferType::Bulk {
                    continue;
                }
                if ep.max_packet_size() != want_mps {
                    return Err(format!(
                        "endpoint {:#04x} mps {} at {speed:?}, want {want_mps}",
                        ep.address(),
                        ep.max_packet_size()
                    ));
                }
                ifn = alt.interface_number();
                match ep.direction() {
                    Direction::In => ep_in = ep.address(),
                    Direction::Out => ep_out = ep.address(),
                }
            }
        }
    }
    if n_if != 1 || ep_in == 0 || ep_out == 0 {
        return Err(format!(
            "want 1 interface with bulk IN+OUT, got {n_if} interfaces in={ep_in:#x} out={ep_out:#x}"
        ));
    }
    Ok((ifn, ep_in, ep_out))
}

fn rt(dir: Direction) -> u8 {
    request_type(dir, RequestType::Vendor, Recipient::Interface)
}

fn control_echo(h: &Handle, ifn: u8) -> Result<(), String> {
    let msg = b"qbkit vm probe";
    h.write_control(
        rt(Direction::Out),
        REQ_ECHO,
        0,
        u16::from(ifn),
        msg,
        TIMEOUT,
    )
    .map_err(|e| format!("control OUT: {e}"))?;
    let mut back = [0u8; 64];
    let n = h
        .read_control(
            rt(Direction::In),
            REQ_ECHO,
            0,
            u16::from(ifn),
            &mut back,
            TIMEOUT,
        )
        .map_err(|e| format!("control IN: {e}"))?;
    if &back[..n] != msg {
        return Err(format!("control echo mismatch: {:?}", &back[..n]));
    }
    line("usb-probe: control echo ok");
    Ok(())
}

/// ffs-dev's counters: rx_bytes, rx_bad, tx_bytes.
fn stats(h: &Handle, ifn: u8) -> Result<[u64; 3], String> {
    let mut b = [0u8; 24];
    let n = h
        .read_control(
            rt(Direction::In),
            REQ_STATS,
            0,
            u16::from(ifn),
            &mut b,
            TIMEOUT,
        )
        .map_err(|e| format!("stats: {e}"))?;
    if n != 24 {
        return Err(format!("stats reply {n} bytes"));
    }
    Ok([0, 1, 2].map(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default())))
}

fn bulk_out(h: &Handle, ifn: u8, ep: u8, chunks: usize) -> Result<(), String> {
    let before = stats(h, ifn)?;
    let out = pattern(CHUNK);
    let start = Instant::now();
    for _ in 0..chunks {
        let n = h
            .write_bulk(ep, &out, TIMEOUT)
            .map_err(|e| format!("bulk OUT: {e}"))?;
        if n != CHUNK {
            return Err(format!("bulk OUT short write {n}"));
        }
    }
    let dt = start.elapsed().as_secs_f64();
    let sent = (chunks * CHUNK) as u64;
    // the gadget counts what it has received: poll briefly until it has caught up
    let mut after = stats(h, ifn)?;
    let t = Instant::now();
    while after[0] - before[0] < sent && t.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(50));
        after = stats(h, ifn)?;
    }
    let (got, bad) = (after[0] - before[0], after[1] - before[1]);
    line(&format!(
        "RESULT bulk_out bytes={sent} gadget_rx={got} bad={bad} mbit={:.1}",
        mbit(sent, dt)
    ));
    if got != sent || bad != 0 {
        return Err(format!(
            "bulk OUT: gadget received {got} of {sent} bytes, {bad} bad transfers"
        ));
    }
    Ok(())
}

fn bulk_in(h: &Handle, ep: u8, chunks: usize) -> Result<(), String> {
    let expect = pattern(CHUNK);
    let mut buf = vec![0u8; CHUNK];
    let (mut total, mut bad) = (0usize, 0usize);
    let start = Instant::now();
    for _ in 0..chunks {
        let n = h
            .read_bulk(ep, &mut buf, TIMEOUT)
            .map_err(|e| format!("bulk IN: {e}"))?;
        if buf[..n] != expect[..n] {
            bad += 1;
        }
        total += n;
    }
    let dt = start.elapsed().as_secs_f64();
    line(&format!(
        "RESULT bulk_in bytes={total} bad={bad} mbit={:.1}",
        mbit(total as u64, dt)
    ));
    if bad != 0 || total != chunks * CHUNK {
        return Err(format!("bulk IN: {bad} bad transfers, {total} bytes"));
    }
    Ok(())
}

fn transfer(vid: u16, pid: u16, mib: usize, stop: bool) -> Result<(), String> {
    let dev = find_device(vid, pid)?;
    line(&format!(
        "usb-probe: libusb {:?} found bus {} addr {} speed {:?}",
        rusb::version(),
        dev.bus_number(),
        dev.address(),
        dev.speed()
    ));
    let (ifn, ep_in, ep_out) = check_descriptors(&dev)?;
    let h = dev.open().map_err(|e| format!("open: {e}"))?;
    h.claim_interface(ifn).map_err(|e| format!("claim: {e}"))?;
    control_echo(&h, ifn)?;
    let chunks = mib * 1024 * 1024 / CHUNK;
    bulk_out(&h, ifn, ep_out, chunks)?;
    bulk_in(&h, ep_in, chunks)?;
    if stop {
        let _ = h.write_control(
            rt(Direction::Out),
            REQ_STOP,
            0,
            u16::from(ifn),
            &[],
            TIMEOUT,
        );
    }
    let _ = h.release_interface(ifn);
    line("usb-probe: transfer ok");
    Ok(())
}

struct RusbWatch {
    t0: Instant,
}
impl<T: UsbContext> rusb::Hotplug<T> for RusbWatch {
    fn device_arrived(&mut self, _d: rusb::Device<T>) {
        line(&format!(
            "EVENT rusb arrived {:.3}",
            self.t0.elapsed().as_secs_f64()
        ));
    }
    fn device_left(&mut self, _d: rusb::Device<T>) {
        line(&format!(
            "EVENT rusb left {:.3}",
            self.t0.elapsed().as_secs_f64()
        ));
    }
}

fn hotplug(vid: u16, pid: u16, max_secs: u64) -> ExitCode {
    let t0 = Instant::now();
    if !rusb::has_hotplug() {
        line("usb-probe: FAIL libusb has no hotplug support");
        return ExitCode::FAILURE;
    }
    let ctx = match rusb::Context::new() {
        Ok(c) => c,
        Err(e) => {
            line(&format!("usb-probe: FAIL libusb context: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let reg = rusb::HotplugBuilder::new()
        .vendor_id(vid)
        .product_id(pid)
        .enumerate(false)
        .register::<rusb::Context, _>(&ctx, Box::new(RusbWatch { t0 }));
    let _reg = match reg {
        Ok(r) => r,
        Err(e) => {
            line(&format!("usb-probe: FAIL libusb hotplug register: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let mut watch = match nusb::watch_devices() {
        Ok(w) => w,
        Err(e) => {
            line(&format!("usb-probe: FAIL nusb watch: {e}"));
            return ExitCode::FAILURE;
        }
    };
    thread::spawn(move || {
        // nusb reports disconnects by id only: remember the ids of matching devices
        let mut ours: HashSet<nusb::DeviceId> = HashSet::new();
        if let Ok(list) = nusb::MaybeFuture::wait(nusb::list_devices()) {
            ours.extend(
                list.filter(|d| d.vendor_id() == vid && d.product_id() == pid)
                    .map(|d| d.id()),
            );
        }
        while let Some(ev) = futures_lite::future::block_on(watch.next()) {
            match ev {
                nusb::hotplug::HotplugEvent::Connected(d)
                    if d.vendor_id() == vid && d.product_id() == pid =>
                {
                    ours.insert(d.id());
                    line(&format!(
                        "EVENT nusb arrived {:.3}",
                        t0.elapsed().as_secs_f64()
                    ));
                }
                nusb::hotplug::HotplugEvent::Disconnected(id) if ours.remove(&id) => {
                    line(&format!(
                        "EVENT nusb left {:.3}",
                        t0.elapsed().as_secs_f64()
                    ));
                }
                _ => (),
            }
        }
    });
    line("usb-probe: hotplug watchers ready (rusb, nusb)");
    while t0.elapsed() < Duration::from_secs(max_secs) {
        if let Err(e) = ctx.handle_events(Some(Duration::from_millis(500))) {
            line(&format!("usb-probe: libusb handle_events: {e}"));
        }
    }
    ExitCode::SUCCESS
}
