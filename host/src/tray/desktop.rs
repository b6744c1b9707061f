//! Desktop chores the tray menu does itself: put text on the clipboard, open the log in the
//! user's viewer, and switch start-at-login on or off. Each is one OS tool or one file, so
//! they stay here rather than in the engine:
//!
//! | chore | Linux | macOS | Windows |
//! |---|---|---|---|
//! | clipboard | `wl-copy`, `xclip`, `xsel` (first found) | `pbcopy` | `clip` |
//! | open log | `xdg-open` | `open` | `explorer` |
//! | autostart | `$XDG_CONFIG_HOME/autostart/qbkit-host.desktop` (Hidden=true masks the package's `/etc/xdg/autostart` entry) | `~/Library/LaunchAgents/net.qbkit.host.plist` | `HKCU\…\Run` value `qbkit-host` via `reg` |
//!
//! Tools run detached and their failures are logged, never fatal: a missing `xclip` must not
//! take the tray down.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where `qbkit-host tray` writes its log: `$XDG_STATE_HOME/qbkit/qbkit-host.log` on Linux,
/// `~/Library/Logs/qbkit-host.log` on macOS, `%LOCALAPPDATA%\qbkit\qbkit-host.log` on Windows.
pub fn default_log_path() -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    if cfg!(target_os = "macos") {
        return home()
            .unwrap_or_default()
            .join("Library/Logs/qbkit-host.log");
    }
    if cfg!(windows) {
        return std::env::var_os("LOCALAPPDATA")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join("qbkit")
            .join("qbkit-host.log");
    }
    crate::platform::xdg_dir("XDG_STATE_HOME", ".local/state")
        .unwrap_or_else(std::env::temp_dir)
        .join("qbkit")
        .join("qbkit-host.log")
}

/// Puts `text` on the clipboard with the platform's tool (logged on failure).
pub fn copy_to_clipboard(text: &str) {
    let candidates: &[(&str, &[&str])] = if cfg!(target_os = "macos") {
        &[("pbcopy", &[])]
    } else if cfg!(windows) {
        &[("clip", &[])]
    } else if std::env::var_os("WAYLAND_DISPLAY").is_some() {
        &[
            ("wl-copy", &[]),
            ("xclip", &["-selection", "clipboard"]),
            ("xsel", &["--clipboard", "--input"]),
        ]
    } else {
        &[
            ("xclip", &["-selection", "clipboard"]),
            ("xsel", &["--clipboard", "--input"]),
            ("wl-copy", &[]),
        ]
    };
    for (tool, args) in candidates {
        let child = Command::new(tool)
            .args(*args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else { continue };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(text.as_bytes());
        }
        // xclip/xsel/wl-copy stay alive to serve the selection; reap them off this thread.
        std::thread::spawn(move || child.wait());
        tracing::info!(tool, "board address copied to the clipboard");
        return;
    }
    tracing::warn!("no clipboard tool found (install wl-clipboard, xclip or xsel)");
}

/// Opens `path` in the user's default viewer (logged on failure).
pub fn open_path(path: &Path) {
    let tool = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        "xdg-open"
    };
    match Command::new(tool)
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => tracing::warn!(tool, error = %e, path = %path.display(), "cannot open the log"),
    }
}

/// The file that makes the desktop start `qbkit-host tray` at login (Linux, macOS).
pub fn autostart_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    if cfg!(target_os = "macos") {
        return Some(home.join("Library/LaunchAgents/net.qbkit.host.plist"));
    }
    if cfg!(windows) {
        return None;
    }
    let config = crate::platform::xdg_dir("XDG_CONFIG_HOME", ".config")?;
    Some(config.join("autostart").join("qbkit-host.desktop"))
}

const RUN_KEY: &str = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run";

/// The system-wide autostart entry the Debian package installs (Linux).
const SYSTEM_AUTOSTART: &str = "/etc/xdg/autostart/qbkit-host.desktop";

/// Whether a desktop entry says `Hidden=true` (the XDG way to switch an autostart entry off).
fn entry_hidden(text: &str) -> bool {
    text.lines().any(|l| l.trim() == "Hidden=true")
}

/// Whether start at login is on.
pub fn autostart_enabled() -> bool {
    if cfg!(windows) {
        return Command::new("reg")
            .args(["query", RUN_KEY, "/v", "qbkit-host"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    }
    match autostart_file().map(std::fs::read_to_string) {
        Some(Ok(text)) => !entry_hidden(&text),
        // No user entry: the package's system-wide entry (if any) applies.
        _ => !cfg!(target_os = "macos") && Path::new(SYSTEM_AUTOSTART).exists(),
    }
}

/// Quotes one argument for a desktop entry's `Exec=` line.
fn desktop_quote(arg: &str) -> String {
    if arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=".contains(c))
    {
        return arg.to_owned();
    }
    let mut q = String::from("\"");
    for c in arg.chars() {
        if matches!(c, '"' | '`' | '$' | '\\') {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The autostart file's content for this OS (`command` = program and arguments).
pub fn autostart_content(command: &[String]) -> String {
    if cfg!(target_os = "macos") {
        let mut args = String::new();
        for a in command {
            let _ = writeln!(args, "    <string>{}</string>", xml_escape(a));
        }
        return format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <plist version=\"1.0\">\n<dict>\n  <key>Label</key>\n  <string>net.qbkit.host</string>\n\
             \x20 <key>ProgramArguments</key>\n  <array>\n{args}  </array>\n\
             \x20 <key>RunAtLoad</key>\n  <true/>\n  <key>ProcessType</key>\n  <string>Interactive</string>\n\
             </dict>\n</plist>\n"
        );
    }
    let exec: Vec<String> = command.iter().map(|a| desktop_quote(a)).collect();
    format!(
        "[Desktop Entry]\nType=Application\nName=qbkit-net\n\
         Comment=Internet for a qbkit board over USB (tray icon)\n\
         Exec={}\nIcon=qbkit-host\nTerminal=false\nX-GNOME-Autostart-enabled=true\n",
        exec.join(" ")
    )
}

/// Switches start at login on (writing the autostart entry for `command`) or off.
pub fn set_autostart(on: bool, command: &[String]) -> io::Result<()> {
    if cfg!(windows) {
        let mut c = Command::new("reg");
        if on {
            let line: Vec<String> = command.iter().map(|a| format!("\"{a}\"")).collect();
            c.args(["add", RUN_KEY, "/v", "qbkit-host", "/t", "REG_SZ", "/d"])
                .arg(line.join(" "))
                .arg("/f");
        } else {
            c.args(["delete", RUN_KEY, "/v", "qbkit-host", "/f"]);
        }
        let st = c.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        return if st.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("reg exited with {st}")))
        };
    }
    let path = autostart_file().ok_or_else(|| io::Error::other("HOME is not set"))?;
    if on {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, autostart_content(command))
    } else if !cfg!(target_os = "macos") && Path::new(SYSTEM_AUTOSTART).exists() {
        // A user entry with the same name and Hidden=true masks the system-wide one.
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            &path,
            "[Desktop Entry]\nType=Application\nName=qbkit-net\nHidden=true\n",
        )
    } else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desktop_exec_quoting() {
        assert_eq!(desktop_quote("/usr/bin/qbkit-host"), "/usr/bin/qbkit-host");
        assert_eq!(desktop_quote("/opt/my dir/q$x"), "\"/opt/my dir/q\\$x\"");
    }

    #[test]
    fn hidden_entries_are_off() {
        assert!(entry_hidden("[Desktop Entry]\nHidden=true\n"));
        assert!(!entry_hidden("[Desktop Entry]\nExec=qbkit-host tray\n"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn autostart_entry_names_the_command() {
        let c = autostart_content(&["/usr/bin/qbkit-host".into(), "tray".into()]);
        assert!(c.starts_with("[Desktop Entry]\n"));
        assert!(c.contains("\nExec=/usr/bin/qbkit-host tray\n"), "{c}");
    }
}
