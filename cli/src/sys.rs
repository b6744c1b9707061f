//! The one OS call of the CLI helpers: SIGPIPE back to its default action for the commands that
//! only print, so `PROG man | head -1` ends quietly (status 141 from the shell) instead of
//! panicking in `println!` (Rust ignores SIGPIPE at start-up, turning it into EPIPE errors).
#![allow(unsafe_code, reason = "FFI: signal(2)")]

/// Lets a closed stdout end the process quietly, as it does every Unix filter. Call it at the start
/// of commands that only print (never for the daemons: their sockets need EPIPE, not a signal).
#[cfg(unix)]
pub fn quiet_on_closed_stdout() {
    // SAFETY: signal(2) with SIG_DFL for a valid signal number touches no memory of ours; it only
    // changes the disposition of SIGPIPE for this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// No SIGPIPE outside Unix; a closed stdout is an ordinary write error there.
#[cfg(not(unix))]
pub fn quiet_on_closed_stdout() {}
