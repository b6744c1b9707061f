//! The control socket when the process is out of file descriptors: a client waits in the listen
//! backlog while every `accept()` fails with EMFILE. The accept loop must back off instead of
//! retrying at once (a busy loop that burns a core for as long as the descriptors are short).
//! Its own test binary: the descriptor limit it lowers is the whole process's.
#![cfg(target_os = "linux")]

use std::time::Duration;

use qbkit_gadget::control;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use rustix::time::{ClockId, clock_gettime};

fn cpu() -> Duration {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(
        t.tv_sec.unsigned_abs(),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[tokio::test]
async fn accept_errors_back_off() {
    let dir = std::env::temp_dir().join(format!("qbkit-gadget-accept-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("c.sock");
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    control::serve(&sock, tx).unwrap();
    let client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    // Use up every descriptor the (lowered) limit allows: accept() now fails with EMFILE, and the
    // client stays queued, so it fails again at once.
    let old = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(128),
            maximum: old.maximum,
        },
    )
    .unwrap();
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
    }
    let cpu0 = cpu();
    // The window: one second of wall time with the accept loop failing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu().saturating_sub(cpu0);
    drop(hog);
    setrlimit(Resource::Nofile, old).unwrap();
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
    let errors = qbkit_link::control::COUNTERS
        .accept_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    // 10 ms doubling: about 7 tries in the second, each counted (status: control_accept_errors).
    assert!((1..=12).contains(&errors), "{errors} accept errors counted");
    assert!(
        used < Duration::from_millis(50),
        "the accept loop used {used:?} of CPU in 1 s of EMFILE"
    );
}
