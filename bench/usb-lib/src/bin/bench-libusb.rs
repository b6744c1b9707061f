//! rusb + libusb asynchronous transfers (libusb1-sys FFI) bulk benchmark against ffs-dev.
//!
//! rusb opens and claims the device; the transfers themselves are raw `libusb_transfer`s: `depth`
//! of them are submitted, and the completion callback (run inside
//! `libusb_handle_events_timeout_completed` on this thread) counts the bytes, checks the data and
//! resubmits the same transfer and buffer until the phase ends. No allocation per transfer.
//!
//! Raw libusb transfers need FFI: this file allows `unsafe` (the workspace denies it), and every
//! block says why it is sound.
#![allow(unsafe_code)]

use libusb1_sys as ffi;
use libusb1_sys::constants::{
    LIBUSB_TRANSFER_CANCELLED, LIBUSB_TRANSFER_COMPLETED, LIBUSB_TRANSFER_TYPE_BULK,
};
use rusb::UsbContext;
use shared_frame::usb_id;
use std::os::raw::{c_int, c_void};
use std::time::{Duration, Instant};
use usb_lib_bench::{Args, CHUNK, Meter, pattern};

/// Per-phase state shared with the callback through `user_data`.
struct Phase {
    deadline: Instant,
    bytes: u64,
    bad: u64,
    in_flight: usize,
    check: bool,
    error: Option<c_int>,
    pat: Vec<u8>,
}

extern "system" fn on_complete(xfer: *mut ffi::libusb_transfer) {
    // SAFETY: libusb passes back the transfer we submitted; it stays allocated until we free it after
    // every transfer of the phase has completed, and user_data points to the `Phase` that outlives the
    // event loop that runs this callback on the same thread (no other reference to it is live here).
    let phase = unsafe { &mut *(*xfer).user_data.cast::<Phase>() };
    // SAFETY: as above; the transfer is only read here.
    let t = unsafe { &*xfer };
    phase.in_flight -= 1;
    match t.status {
        LIBUSB_TRANSFER_COMPLETED => {
            let n = usize::try_from(t.actual_length).unwrap_or(0);
            phase.bytes += n as u64;
            if phase.check {
                // SAFETY: buffer points to CHUNK bytes owned by `main` for the whole phase, and libusb
                // wrote `actual_length` <= length of them.
                let data = unsafe { std::slice::from_raw_parts(t.buffer, n) };
                if data != &phase.pat[..n] {
                    phase.bad += 1;
                }
            }
        }
        LIBUSB_TRANSFER_CANCELLED => return,
        s => {
            phase.error = Some(s);
            return;
        }
    }
    if Instant::now() < phase.deadline {
        // SAFETY: the transfer is complete (we are in its callback), so it may be resubmitted as is.
        let rc = unsafe { ffi::libusb_submit_transfer(xfer) };
        if rc == 0 {
            phase.in_flight += 1;
        } else {
            phase.error = Some(rc);
        }
    }
}

fn run_phase(
    ctx: &rusb::Context,
    handle: *mut ffi::libusb_device_handle,
    ep: u8,
    bufs: &mut [Vec<u8>],
    xfers: &[*mut ffi::libusb_transfer],
    phase: &mut Phase,
) {
    let phase_ptr: *mut Phase = phase;
    for (x, b) in xfers.iter().zip(bufs.iter_mut()) {
        // SAFETY: x was allocated by libusb_alloc_transfer and is idle; b is CHUNK bytes that live
        // until this function returns, after every transfer completed; phase_ptr outlives the loop.
        let rc = unsafe {
            ffi::libusb_fill_bulk_transfer(
                *x,
                handle,
                ep,
                b.as_mut_ptr(),
                c_int::try_from(CHUNK).expect("CHUNK fits a libusb length"),
                on_complete,
                phase_ptr.cast::<c_void>(),
                5000,
            );
            (**x).transfer_type = LIBUSB_TRANSFER_TYPE_BULK;
            ffi::libusb_submit_transfer(*x)
        };
        assert_eq!(rc, 0, "submit");
        // SAFETY: no callback runs outside handle_events, so this is the only live access.
        unsafe { (*phase_ptr).in_flight += 1 };
    }
    loop {
        // SAFETY: read between event-loop calls, on the only thread that runs callbacks.
        let (left, err) = unsafe { ((*phase_ptr).in_flight, (*phase_ptr).error) };
        if let Some(e) = err {
            panic!("transfer error {e}");
        }
        if left == 0 {
            break;
        }
        if Instant::now() > phase_deadline_plus(phase_ptr) {
            for x in xfers {
                // SAFETY: cancelling an idle or already-cancelled transfer returns an error code, harmless.
                unsafe { ffi::libusb_cancel_transfer(*x) };
            }
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: ctx is a live libusb context; tv is valid for the call; completed may be null.
        unsafe {
            ffi::libusb_handle_events_timeout_completed(
                ctx.as_raw(),
                std::ptr::from_ref(&tv).cast(),
                std::ptr::null_mut(),
            )
        };
    }
}

fn phase_deadline_plus(p: *mut Phase) -> Instant {
    // SAFETY: called between event-loop calls on the callback thread.
    unsafe { (*p).deadline + Duration::from_millis(200) }
}

fn main() {
    let args = Args::parse();
    let ctx = rusb::Context::new().expect("libusb init");
    let t0 = Instant::now();
    let dev = loop {
        if let Some(d) = ctx.devices().expect("list").iter().find(|d| {
            d.device_descriptor()
                .is_ok_and(|dd| (dd.vendor_id(), dd.product_id()) == (usb_id::VID, usb_id::PID))
        }) {
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
        "bench-libusb: libusb {:?} speed {:?}",
        rusb::version(),
        dev.speed()
    );
    let cfg = dev.active_config_descriptor().expect("config");
    let (mut ifn, mut ep_in, mut ep_out) = (0u8, 0u8, 0u8);
    for intf in cfg.interfaces() {
        for alt in intf.descriptors() {
            if alt.class_code() != usb_id::INTERFACE_CLASS.0 {
                continue;
            }
            ifn = alt.interface_number();
            for ep in alt.endpoint_descriptors() {
                match ep.direction() {
                    rusb::Direction::In => ep_in = ep.address(),
                    rusb::Direction::Out => ep_out = ep.address(),
                }
            }
        }
    }
    let h = dev.open().expect("open");
    let _ = h.set_auto_detach_kernel_driver(true);
    h.claim_interface(ifn).expect("claim");
    println!("bench-libusb: args {args:?}");

    let pat = pattern(CHUNK);
    let depth = args.in_depth.max(args.out_depth);
    let mut out_bufs: Vec<Vec<u8>> = (0..args.out_depth).map(|_| pat.clone()).collect();
    let mut in_bufs: Vec<Vec<u8>> = (0..args.in_depth).map(|_| vec![0u8; CHUNK]).collect();
    let xfers: Vec<*mut ffi::libusb_transfer> = (0..depth)
        // SAFETY: plain allocation; freed below after the last phase.
        .map(|_| unsafe { ffi::libusb_alloc_transfer(0) })
        .collect();
    assert!(xfers.iter().all(|x| !x.is_null()), "alloc transfer");

    for rep in 1..=args.reps {
        for (dir, ep, bufs, check) in [
            ("out", ep_out, &mut out_bufs, false),
            ("in", ep_in, &mut in_bufs, true),
        ] {
            let mut phase = Phase {
                deadline: Instant::now() + args.dur(),
                bytes: 0,
                bad: 0,
                in_flight: 0,
                check,
                error: None,
                pat: pat.clone(),
            };
            let m = Meter::start();
            let n = bufs.len();
            run_phase(&ctx, h.as_raw(), ep, bufs, &xfers[..n], &mut phase);
            m.finish("libusb", dir, rep, phase.bytes, phase.bad);
        }
    }
    for x in xfers {
        // SAFETY: every transfer is idle (in_flight reached 0); freed exactly once.
        unsafe { ffi::libusb_free_transfer(x) };
    }
    let _ = h.release_interface(ifn);
}
