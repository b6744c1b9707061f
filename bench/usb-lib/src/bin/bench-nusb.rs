//! nusb 0.2 bulk benchmark against ffs-dev: `Endpoint::submit` keeps `in_depth` IN and `out_depth`
//! OUT transfers in flight; each completion is checked and resubmitted with the same buffer
//! (allocated once with `Endpoint::allocate`, zero-copy mmap on Linux).

use nusb::MaybeFuture;
use nusb::transfer::{Bulk, In, Out};
use shared_frame::usb_id;
use std::time::{Duration, Instant};
use usb_lib_bench::{Args, CHUNK, Meter, pattern};

#[allow(clippy::too_many_lines)] // one benchmark run, read top to bottom
fn main() {
    let args = Args::parse();
    let t0 = Instant::now();
    let info = loop {
        if let Some(d) = nusb::list_devices()
            .wait()
            .expect("list")
            .find(|d| (d.vendor_id(), d.product_id()) == (usb_id::VID, usb_id::PID))
        {
            break d;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{:04x}:{:04x} not found",
            usb_id::VID,
            usb_id::PID
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "bench-nusb: found {} speed {:?}",
        info.sysfs_path().display(),
        info.speed()
    );
    let intf_no = info
        .interfaces()
        .find(|i| i.class() == usb_id::INTERFACE_CLASS.0)
        .expect("vendor interface")
        .interface_number();
    let dev = info.open().wait().expect("open");
    let intf = dev
        .detach_and_claim_interface(intf_no)
        .wait()
        .expect("claim");
    let (mut ep_in_addr, mut ep_out_addr) = (0, 0);
    for alt in intf.descriptors() {
        for ep in alt.endpoints() {
            if ep.direction() == nusb::transfer::Direction::In {
                ep_in_addr = ep.address();
            } else {
                ep_out_addr = ep.address();
            }
        }
    }
    let to = Duration::from_secs(5);
    let mut ep_out = intf.endpoint::<Bulk, Out>(ep_out_addr).expect("ep out");
    let mut ep_in = intf.endpoint::<Bulk, In>(ep_in_addr).expect("ep in");
    if std::env::args().nth(1).as_deref() == Some("stop") {
        // ffs-dev stops (and removes its gadget) on vendor control request 255.
        let req = nusb::transfer::ControlOut {
            control_type: nusb::transfer::ControlType::Vendor,
            recipient: nusb::transfer::Recipient::Interface,
            request: 255,
            value: 0,
            index: u16::from(intf_no),
            data: &[],
        };
        let r = intf.control_out(req, to).wait();
        println!("bench-nusb: stop request sent: {r:?}");
        return;
    }
    println!("bench-nusb: mps {} args {args:?}", ep_in.max_packet_size());
    let pat = pattern(CHUNK);

    // Buffers allocated once, reused for every transfer.
    let mut out_bufs: Vec<nusb::transfer::Buffer> = (0..args.out_depth)
        .map(|_| {
            let mut b = ep_out.allocate(CHUNK);
            b.extend_from_slice(&pat);
            b
        })
        .collect();
    let mut in_bufs: Vec<nusb::transfer::Buffer> =
        (0..args.in_depth).map(|_| ep_in.allocate(CHUNK)).collect();

    for rep in 1..=args.reps {
        // OUT phase
        let m = Meter::start();
        let start = Instant::now();
        let mut bytes = 0u64;
        for b in out_bufs.drain(..) {
            ep_out.submit(b);
        }
        while ep_out.pending() > 0 {
            let c = ep_out.wait_next_complete(to).expect("out timeout");
            c.status.expect("out transfer");
            bytes += c.actual_len as u64;
            if start.elapsed() < args.dur() {
                ep_out.submit(c.buffer);
            } else {
                out_bufs.push(c.buffer);
            }
        }
        m.finish("nusb", "out", rep, bytes, 0);

        // IN phase
        let m = Meter::start();
        let start = Instant::now();
        let (mut bytes, mut bad) = (0u64, 0u64);
        for b in in_bufs.drain(..) {
            ep_in.submit(b);
        }
        let mut stopping = false;
        while ep_in.pending() > 0 {
            let c = ep_in.wait_next_complete(to).expect("in timeout");
            let mut buf = c.buffer;
            match c.status {
                Ok(()) => {
                    bytes += buf.len() as u64;
                    if buf[..] != pat[..buf.len()] {
                        bad += 1;
                    }
                }
                Err(nusb::transfer::TransferError::Cancelled) => {}
                Err(e) => panic!("in transfer: {e}"),
            }
            if !stopping && start.elapsed() >= args.dur() {
                stopping = true;
                ep_in.cancel_all();
            }
            if stopping {
                in_bufs.push(buf);
            } else {
                buf.set_requested_len(CHUNK);
                ep_in.submit(buf);
            }
        }
        m.finish("nusb", "in", rep, bytes, bad);
    }
}
