//! The tray's log file ("Open log"), capped and rotated so a tray that runs for months never fills
//! the disk: lines are appended to PATH; a write that would take PATH past the cap
//! ([`MAX_LOG_BYTES`], 8 MiB) first renames PATH to PATH.1 (replacing the previous old file) and
//! starts a new PATH. At most two files and twice the cap are on disk; the newest lines are always
//! in PATH. A rename that fails (a read-only directory) truncates PATH instead, so the bound holds.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Largest size of the log file before it is rotated.
pub const MAX_LOG_BYTES: u64 = 8 << 20;

/// A log file that rotates at a size cap; `&RotatingLog` is a [`Write`], so
/// `Arc<RotatingLog>` is a tracing writer.
#[derive(Debug)]
pub struct RotatingLog {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    path: PathBuf,
    file: File,
    len: u64,
    cap: u64,
}

impl RotatingLog {
    /// Appends to `path` (created if missing), rotating at `cap` bytes.
    pub fn open(path: &Path, cap: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            state: Mutex::new(State {
                path: path.to_owned(),
                file,
                len,
                cap,
            }),
        })
    }

    /// The old file's path: PATH.1.
    pub fn old_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }
}

impl State {
    fn rotate(&mut self) -> io::Result<()> {
        if std::fs::rename(&self.path, RotatingLog::old_path(&self.path)).is_ok() {
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        } else {
            self.file.set_len(0)?;
        }
        self.len = 0;
        Ok(())
    }
}

impl Write for &RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| io::Error::other("log file lock poisoned"))?;
        if s.len > 0 && s.len + buf.len() as u64 > s.cap {
            s.rotate()?;
        }
        let n = s.file.write(buf)?;
        s.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_at_the_cap_into_one_old_file() {
        let d = std::env::temp_dir().join(format!("qbkit-host-logfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("qbkit-host.log");
        std::fs::write(&path, [b'x'; 900]).unwrap();
        let log = RotatingLog::open(&path, 1000).unwrap();
        // One write per line, as tracing writes each formatted event.
        for i in 0..100 {
            (&log)
                .write_all(format!("line {i:03} {}\n", "y".repeat(80)).as_bytes())
                .unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["qbkit-host.log", "qbkit-host.log.1"]);
        let new = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(RotatingLog::old_path(&path)).unwrap();
        assert!(
            new.len() <= 1000 && old.len() <= 1000,
            "{} {}",
            new.len(),
            old.len()
        );
        assert!(
            new.trim_end()
                .ends_with(&format!("line 099 {}", "y".repeat(80)))
        );
        assert!(
            old.starts_with("line "),
            "the pre-existing 900 bytes rotated out long ago"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
