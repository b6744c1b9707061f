//! The qbkit-gadget program as a new user meets it, run as a built binary: bash completion of
//! options, one man page per subcommand, `--help` of every subcommand, the one list of link forms
//! in errors, a readable `plan`, and a quiet exit on a closed stdout (`plan | head -1`).
#![cfg(target_os = "linux")]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_qbkit-gadget");
const SUBCOMMANDS: [&str; 6] = ["run", "status", "teardown", "plan", "completions", "man"];

#[test]
fn bash_completes_run_link() {
    let Some(got) =
        qbkit_cli::testing::bash_complete(BIN, "qbkit-gadget", &["qbkit-gadget", "run", "--li"])
    else {
        eprintln!("skipped: no bash");
        return;
    };
    assert_eq!(got, "--link");
}

#[test]
fn man_pages_and_help_for_every_subcommand() {
    let dir = std::env::temp_dir().join(format!("qbkit-gadget-man-{}", std::process::id()));
    let out = Command::new(BIN)
        .arg("man")
        .arg("--dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let top = std::fs::read_to_string(dir.join("qbkit-gadget.1")).unwrap();
    for sub in SUBCOMMANDS {
        assert!(dir.join(format!("qbkit-gadget-{sub}.1")).exists(), "{sub}");
        assert!(top.contains(&format!("qbkit\\-gadget\\-{sub}(1)")), "{sub}");
        let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help");
    }
    let run = std::fs::read_to_string(dir.join("qbkit-gadget-run.1")).unwrap();
    assert!(
        run.contains("\\-\\-link") && run.contains("default: qbkit0"),
        "{run}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_link_names_every_form() {
    let out = Command::new(BIN)
        .args(["run", "--config", "/dev/null", "--link", "foo://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    for form in qbkit_gadget::stream::LinkSpec::forms() {
        assert!(err.contains(form), "{err:?} lacks {form}");
    }
}

#[test]
fn plan_is_readable_and_quiet_on_a_closed_stdout() {
    let out = Command::new(BIN)
        .args(["plan", "--config", "/dev/null"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("mkdir    usb_gadget/qbkit"), "{text}");
    assert!(!text.contains("Mkdir("), "no Debug structs: {text}");
    let out = qbkit_cli::testing::closed_stdout(BIN, &["plan", "--config", "/dev/null"]);
    assert_ne!(out.status.code(), Some(101), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}
