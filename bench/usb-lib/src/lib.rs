//! Shared helpers for the two bulk benchmarks (`bench-nusb`, `bench-libusb`): the data pattern that
//! `ffs-dev` sends and checks (see `vm-bench.sh` for where ffs-dev comes from), the CLI arguments, and a wall+CPU meter.
//!
//! Data flow: each bench program finds 1209:0001, claims the vendor interface, then per repetition
//! runs one OUT phase (host→gadget) and one IN phase (gadget→host) of `secs` seconds each, with
//! `in_depth` / `out_depth` transfers of `chunk` bytes kept in flight, and prints one `RESULT` line
//! per phase through [`Meter::finish`].

use std::time::{Duration, Instant};

/// ffs-dev's chunk size; ffs-dev checks every OUT transfer against `pattern(len)`.
pub const CHUNK: usize = 64 * 1024;

/// The byte pattern ffs-dev sends on IN and expects on OUT.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Command line: `secs reps in_depth out_depth`.
#[derive(Debug, Clone, Copy)]
pub struct Args {
    /// Seconds per phase.
    pub secs: f64,
    /// Repetitions (each = one OUT phase + one IN phase).
    pub reps: u32,
    /// IN transfers kept in flight.
    pub in_depth: usize,
    /// OUT transfers kept in flight.
    pub out_depth: usize,
}

impl Args {
    /// Parses `secs reps in_depth out_depth` with defaults 5 3 4 2.
    pub fn parse() -> Self {
        let a: Vec<String> = std::env::args().skip(1).collect();
        let arg = |i: usize| a.get(i).map(String::as_str);
        Self {
            secs: arg(0).and_then(|s| s.parse().ok()).unwrap_or(5.0),
            reps: arg(1).and_then(|s| s.parse().ok()).unwrap_or(3),
            in_depth: arg(2).and_then(|s| s.parse().ok()).unwrap_or(4),
            out_depth: arg(3).and_then(|s| s.parse().ok()).unwrap_or(2),
        }
    }

    /// Phase length.
    pub fn dur(&self) -> Duration {
        Duration::from_secs_f64(self.secs)
    }
}

// Seconds and byte counts of a benchmark run are far below 2^52: f64 holds them exactly.
#[allow(clippy::cast_precision_loss)]
fn cpu_secs() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    #[allow(unsafe_code)] // the bench's only FFI besides bench-libusb (which allows it file-wide)
    // SAFETY: getrusage writes a full `rusage` into the pointer we pass; RUSAGE_SELF is always valid.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Measures wall time and process CPU time (user+sys) of one phase.
pub struct Meter {
    t0: Instant,
    cpu0: f64,
}

impl Meter {
    /// Starts measuring.
    pub fn start() -> Self {
        Self {
            t0: Instant::now(),
            cpu0: cpu_secs(),
        }
    }

    /// Prints `RESULT lib dir rep Mbit/s cpu%` and returns Mbit/s.
    #[allow(clippy::cast_precision_loss)] // byte counts of a run stay far below 2^52
    pub fn finish(self, lib: &str, dir: &str, rep: u32, bytes: u64, bad: u64) -> f64 {
        let dt = self.t0.elapsed().as_secs_f64();
        let cpu = cpu_secs() - self.cpu0;
        let mbit = bytes as f64 * 8.0 / dt / 1e6;
        println!(
            "RESULT lib={lib} dir={dir} rep={rep} mbit={mbit:.1} cpu_pct={:.1} bytes={bytes} secs={dt:.2} bad_chunks={bad}",
            cpu / dt * 100.0
        );
        mbit
    }
}
