//! Gadget side of the VM USB probe: a vendor-class FunctionFS interface (usb-gadget crate:
//! ConfigFS + FunctionFS, descriptors written to ep0 by this process) bound to the first UDC.
//! Bulk OUT is a sink that checks every transfer against `pattern`; bulk IN is a source of
//! `pattern` chunks; vendor control requests echo data, report counters, or stop the gadget.
//! It survives host-side disconnects (port power off/on): endpoint errors are logged and retried.
use bytes::{Bytes, BytesMut};
use clap::Parser;
use qbkit_vm_usb_probe::{CHUNK, PID, REQ_STATS, REQ_STOP, VID, pattern};
use std::{
    io::ErrorKind,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};
use usb_gadget::{
    Class, Config, Gadget, Id, Strings, default_udc,
    function::custom::{
        Custom, Endpoint, EndpointDirection, EndpointReceiver, EndpointSender, Event, Interface,
    },
};

#[derive(Parser)]
/// FunctionFS vendor test gadget (sink + source + control echo).
struct Args {
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 300)]
    max_secs: u64,
}

fn main() {
    let args = Args::parse();
    usb_gadget::remove_all().expect("cannot remove existing gadgets");

    let (mut rx, rx_dir) = EndpointDirection::host_to_device();
    let (mut tx, tx_dir) = EndpointDirection::device_to_host();
    let (mut custom, handle) = Custom::builder()
        .with_interface(
            Interface::new(Class::vendor_specific(0xff, 0), "qbkit vm probe")
                .with_endpoint(Endpoint::bulk(rx_dir))
                .with_endpoint(Endpoint::bulk(tx_dir)),
        )
        .build();

    let udc = default_udc().expect("no UDC");
    let t0 = Instant::now();
    let reg = Gadget::new(
        Class::INTERFACE_SPECIFIC,
        Id::new(VID, PID),
        Strings::new("qbkit", "vm probe", "0001"),
    )
    .with_config(Config::new("config").with_function(handle))
    .bind(&udc)
    .expect("cannot bind to UDC");
    println!(
        "ffs-dev: ready udc={} after {:?}",
        udc.name().display(),
        t0.elapsed()
    );

    let c = Counters::default();
    thread::scope(|s| {
        s.spawn(|| sink(&mut rx, &c));
        s.spawn(|| source(&mut tx, &c));
        s.spawn(|| control(&mut custom, &c, args.max_secs, t0));
    });
    println!(
        "ffs-dev: done rx_bytes={} rx_bad={} tx_bytes={}",
        c.rx_bytes.load(Ordering::Relaxed),
        c.rx_bad.load(Ordering::Relaxed),
        c.tx_bytes.load(Ordering::Relaxed)
    );
    reg.remove().expect("cannot remove gadget");
}

#[derive(Default)]
struct Counters {
    stop: AtomicBool,
    rx_bytes: AtomicU64,
    rx_bad: AtomicU64,
    tx_bytes: AtomicU64,
}

/// Bulk OUT: count bytes, count transfers that differ from `pattern`.
fn sink(rx: &mut EndpointReceiver, c: &Counters) {
    let expect = pattern(CHUNK);
    while !c.stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(BytesMut::with_capacity(CHUNK), Duration::from_millis(500)) {
            Ok(Some(d)) => {
                c.rx_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                if d[..] != expect[..d.len()] {
                    c.rx_bad.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(None) => (),
            Err(e) if e.kind() == ErrorKind::TimedOut => (),
            Err(e) => {
                println!("ffs-dev: recv error {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Bulk IN: keep `pattern` chunks queued.
fn source(tx: &mut EndpointSender, c: &Counters) {
    let data = Bytes::from(pattern(CHUNK));
    while !c.stop.load(Ordering::Relaxed) {
        match tx.send_timeout(data.clone(), Duration::from_millis(500)) {
            Ok(()) => {
                c.tx_bytes.fetch_add(CHUNK as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => (),
            Err(e) => {
                println!("ffs-dev: send error {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// ep0: vendor requests (echo, stats, stop) and FunctionFS events; enforces the run time limit.
fn control(custom: &mut Custom, c: &Counters, max_secs: u64, t0: Instant) {
    let mut ctrl: Vec<u8> = Vec::new();
    let start = Instant::now();
    while !c.stop.load(Ordering::Relaxed) {
        if start.elapsed().as_secs() > max_secs {
            println!("ffs-dev: max runtime reached");
            c.stop.store(true, Ordering::Relaxed);
        }
        match custom.event_timeout(Duration::from_millis(500)) {
            Ok(Some(Event::SetupHostToDevice(req))) => {
                let r = req.ctrl_req().request;
                ctrl = req.recv_all().unwrap_or_default();
                if r == REQ_STOP {
                    println!("ffs-dev: stop requested");
                    c.stop.store(true, Ordering::Relaxed);
                }
            }
            Ok(Some(Event::SetupDeviceToHost(req))) => {
                let reply = if req.ctrl_req().request == REQ_STATS {
                    [&c.rx_bytes, &c.rx_bad, &c.tx_bytes]
                        .iter()
                        .flat_map(|v| v.load(Ordering::Relaxed).to_le_bytes())
                        .collect()
                } else {
                    ctrl.clone()
                };
                if let Err(e) = req.send(&reply) {
                    println!("ffs-dev: control reply failed: {e}");
                }
            }
            Ok(Some(ev)) => println!("ffs-dev: event {ev:?} at {:?}", t0.elapsed()),
            Ok(None) => (),
            Err(e) => {
                println!("ffs-dev: event error {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
