//! The qbkit-host program as a new user meets it, run as a built binary: bash completion of
//! options (the generated script sourced in a real bash), one man page per subcommand, `--help`
//! of every subcommand, one list of transports in errors, listeners saying where they listen
//! (the real port for port 0), one-line errors, and a quiet exit on a closed stdout.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qbkit-host");
const SUBCOMMANDS: [&str; 7] = [
    "run",
    "tray",
    "status",
    "list",
    "relay",
    "completions",
    "man",
];

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qbkit-host-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn bash_completes_subcommand_options() {
    let complete = |words: &[&str]| qbkit_cli::testing::bash_complete(BIN, "qbkit-host", words);
    let Some(got) = complete(&["qbkit-host", "run", "--tr"]) else {
        eprintln!("skipped: no bash");
        return;
    };
    assert_eq!(got, "--transport");
    let got = complete(&["qbkit-host", "run", "--"]).unwrap();
    assert!(got.split(' ').any(|w| w == "--transport"), "{got}");
    let got = complete(&["qbkit-host", "li"]).unwrap();
    assert_eq!(got, "list");
    for sh in ["zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", sh])
            .output()
            .unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{sh}");
    }
}

#[test]
fn man_pages_exist_for_every_subcommand_the_top_page_names() {
    let d = tmp("man");
    let out = Command::new(BIN)
        .arg("man")
        .arg("--dir")
        .arg(&d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let top = std::fs::read_to_string(d.join("qbkit-host.1")).unwrap();
    for sub in SUBCOMMANDS {
        let page = d.join(format!("qbkit-host-{sub}.1"));
        assert!(page.exists(), "{} missing", page.display());
        assert!(
            top.contains(&format!("qbkit\\-host\\-{sub}(1)")),
            "top page lacks {sub}"
        );
    }
    let run = std::fs::read_to_string(d.join("qbkit-host-run.1")).unwrap();
    assert!(
        run.contains("\\-\\-transport") && run.contains("usbip://"),
        "{run}"
    );
    let out = Command::new(BIN).args(["man", "run"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, run.as_bytes());
    let out = Command::new(BIN).args(["man", "nope"]).output().unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn help_of_every_subcommand_exits_zero() {
    for sub in SUBCOMMANDS {
        let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help: {out:?}");
    }
}

#[test]
fn bad_transports_name_every_form_in_one_line() {
    let d = tmp("transport");
    for bad in ["foo://x", "USB", "usbip://host", "tcp://nohost"] {
        let out = Command::new(BIN)
            .args(["run", "--dns", "127.0.0.1", "--transport", bad, "--control"])
            .arg(d.join("c.sock"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = String::from_utf8(out.stderr).unwrap();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{bad}: one line, got {err:?}");
        for form in qbkit_host::transport::TransportSpec::forms() {
            assert!(err.contains(form), "{bad}: {err:?} lacks {form}");
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tcp_listener_logs_its_real_port() {
    let d = tmp("listen");
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--dns",
            "127.0.0.1",
            "--transport",
            "tcp-listen://127.0.0.1:0",
        ])
        .arg("--control")
        .arg(d.join("c.sock"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("listening on 127.0.0.1:") => break Some(l),
            Ok(l) => seen.push(l),
            Err(_) => break None,
        }
    };
    let line = found.unwrap_or_else(|| panic!("no listening line in {seen:?}"));
    assert!(line.contains("INFO"), "{line}");
    let port = line.rsplit(':').next().unwrap().trim();
    assert_ne!(port.parse::<u16>().unwrap(), 0, "{line}");
    // `status` names the same bound address before any board connected (the control socket is
    // served from the first turn of the loop; the Listening event may trail the log line).
    let want = format!("tcp-listen://127.0.0.1:{port}");
    let mut transport = String::new();
    while Instant::now() < deadline && transport != want {
        let out = Command::new(BIN)
            .args(["status", "--json", "--control"])
            .arg(d.join("c.sock"))
            .output()
            .unwrap();
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        transport = doc["transport"].as_str().unwrap_or("").to_owned();
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(transport, want);
}

#[test]
fn closed_stdout_is_a_quiet_exit() {
    for args in [&["man"][..], &["completions", "bash"]] {
        let out = qbkit_cli::testing::closed_stdout(BIN, args);
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked: {out:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
    }
}
