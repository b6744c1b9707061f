//! What `qbkit-host` and `qbkit-gadget` share as command-line programs, so both speak one way:
//! shell completions ([`completions`]), the man page set ([`man_pages`], [`man`]: one page per
//! subcommand, `PROG-SUB(1)`, as the top page's list names them), one-line error reports
//! ([`report`], [`finish`]: each cause printed once, JSON on stdout for `--json` commands), and a
//! quiet exit when stdout is closed early ([`quiet_on_closed_stdout`], `… | head -1`), and text
//! the other side chose made safe for a terminal ([`printable`]).
//!
//! Data flow: each program's `main` builds its `clap::Command` and hands it here; nothing here
//! knows either program's options.

mod sys;

use std::borrow::Cow;
use std::error::Error;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Command;
pub use clap_complete::Shell;

pub use sys::quiet_on_closed_stdout;

/// Writes the completion script of `cmd` for `shell`.
///
/// clap_complete's bash generator spells the state of a subcommand two different ways when the
/// program name has a hyphen (`qbkit__host__subcmd__run` in the loop that finds the subcommand,
/// `qbkit__subcmd__host__subcmd__run` in the case labels that offer its options; clap-rs/clap
/// #6421, open), so `qbkit-host run --<TAB>` offered nothing. The script is generated for a
/// hyphen-free stand-in name (the name typed is matched as `$1`, whatever it is) and registered
/// for the real name.
pub fn completions(mut cmd: Command, shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let name = cmd.get_name().to_owned();
    let mut buf = Vec::new();
    if shell == Shell::Bash && name.contains('-') {
        let stand_in = name.replace('-', "_");
        clap_complete::generate(shell, &mut cmd, &stand_in, &mut buf);
        let text = String::from_utf8(buf).map_err(io::Error::other)?;
        let suffix = format!(" {stand_in}");
        let mut fixed = String::with_capacity(text.len());
        for line in text.lines() {
            match line.strip_suffix(&suffix) {
                Some(head) if line.trim_start().starts_with("complete -F ") => {
                    let _ = writeln!(fixed, "{head} {name}");
                }
                _ => {
                    fixed.push_str(line);
                    fixed.push('\n');
                }
            }
        }
        out.write_all(fixed.as_bytes())?;
    } else {
        clap_complete::generate(shell, &mut cmd, name, &mut buf);
        out.write_all(&buf)?;
    }
    out.flush()
}

/// One rendered man page.
#[derive(Debug, Clone)]
pub struct ManPage {
    /// The page name without section: `qbkit-host` or `qbkit-host-run`.
    pub name: String,
    /// roff source.
    pub roff: Vec<u8>,
}

/// The top page of `cmd` and one page per (nested) subcommand, top page first. Each subcommand's
/// page documents its own options; the top page lists them as `PROG-SUB(1)`.
pub fn man_pages(cmd: Command) -> io::Result<Vec<ManPage>> {
    fn collect(cmd: &Command, out: &mut Vec<ManPage>) -> io::Result<()> {
        let man = clap_mangen::Man::new(cmd.clone());
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        let file = man.get_filename();
        let name = file.strip_suffix(".1").unwrap_or(&file).to_owned();
        out.push(ManPage { name, roff });
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            collect(sub, out)?;
        }
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    collect(&cmd, &mut out)?;
    Ok(out)
}

/// Arguments of both programs' `man` subcommand.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ManArgs {
    /// The page of this subcommand (e.g. `run` for PROG-run(1)); default: the top page.
    #[arg(value_name = "SUBCOMMAND", conflicts_with = "dir")]
    pub page: Option<String>,
    /// Write every page (PROG.1 and PROG-SUBCOMMAND.1) into DIR and list the files.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `PROG man [SUBCOMMAND] [--dir DIR]`.
pub fn man(cmd: Command, args: &ManArgs) -> io::Result<()> {
    let top = cmd.get_name().to_owned();
    let pages = man_pages(cmd)?;
    let mut stdout = io::stdout().lock();
    if let Some(dir) = &args.dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        for p in &pages {
            let path = dir.join(format!("{}.1", p.name));
            std::fs::write(&path, &p.roff)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            writeln!(stdout, "{}", path.display())?;
        }
        return stdout.flush();
    }
    let want = match &args.page {
        None => top.clone(),
        Some(p) if p.starts_with(&format!("{top}-")) => p.clone(),
        Some(p) => format!("{top}-{}", p.replace(' ', "-")),
    };
    let Some(page) = pages.iter().find(|p| p.name == want) else {
        let subs: Vec<&str> = pages
            .iter()
            .filter_map(|p| p.name.strip_prefix(&format!("{top}-")))
            .collect();
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no man page {want}(1); the subcommands are: {}",
                subs.join(", ")
            ),
        ));
    };
    stdout.write_all(&page.roff)?;
    stdout.flush()
}

/// One line for an error and its causes: each cause is appended once, and a cause whose text the
/// line already holds (an error that prints its source in its own message) is not repeated.
pub fn report(err: &(dyn Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// The end of a program's `main`: success, or the error as one line on stderr
/// (`PROG: error: …`), or with `json` as `{"error": "…"}` on stdout; exit status 1 on error.
pub fn finish<E>(program: &str, json: bool, result: Result<(), E>) -> ExitCode
where
    E: AsRef<dyn Error + Send + Sync + 'static>,
{
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    let line = report(e.as_ref());
    if json {
        let doc = serde_json::json!({ "error": line });
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{doc}");
        let _ = out.flush();
    } else {
        eprintln!("{program}: error: {line}");
    }
    ExitCode::FAILURE
}

/// `s` made safe to print: a string the other side chose (a board's identity, a USB serial, a
/// usbipd's bus id or path) cannot clear, retitle or recolour the terminal, fake a line or reorder
/// one. Control characters (C0, DEL, C1), the Unicode bidirectional controls and U+FFFD (where a
/// decoder replaced bytes that were not UTF-8) are written as Rust escapes (`\n`, `\u{1b}`,
/// `\u{fffd}`); a backslash is doubled, so an escape in the output always means one was needed.
/// Borrowed when nothing needs escaping.
pub fn printable(s: &str) -> Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || c == '\\'
            || c == '\u{fffd}'
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// What the programs' CLI tests share: run a built binary with its stdout closed at once (as
/// `| head -1` does after the first line).
#[doc(hidden)]
pub mod testing {
    use std::process::{Command, Output, Stdio};

    /// What bash completes for `words` (the last one being completed) with the script that
    /// `bin completions bash` prints for `prog`, or None where there is no bash.
    pub fn bash_complete(bin: &str, prog: &str, words: &[&str]) -> Option<String> {
        let out = Command::new(bin)
            .args(["completions", "bash"])
            .output()
            .expect("the binary runs");
        assert!(out.status.success(), "{out:?}");
        let script = std::env::temp_dir().join(format!(
            "qbkit-cli-{prog}-{}-{}.bash",
            std::process::id(),
            words.len()
        ));
        std::fs::write(&script, &out.stdout).expect("temp dir writable");
        let line = words.join(" ");
        let prog_script = format!(
            "source \"$0\" || exit 9
             complete -p {prog} >/dev/null || exit 8
             f=$(complete -p {prog} | sed -n 's/.*-F \\([^ ]*\\) .*/\\1/p')
             COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))
             \"$f\" {prog} \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"
             echo \"${{COMPREPLY[*]}}\""
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(prog_script)
            .arg(&script)
            .output();
        let _ = std::fs::remove_file(&script);
        let out = out.ok()?;
        assert!(out.status.success(), "bash: {out:?}");
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs `bin args` with stdout closed before it writes; returns its exit and stderr.
    pub fn closed_stdout(bin: &str, args: &[&str]) -> Output {
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        drop(child.stdout.take());
        child.wait_with_output().expect("the binary exits")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<Self>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn printable_escapes_what_a_terminal_would_obey() {
        assert!(matches!(
            printable("sn-42 board"),
            Cow::Borrowed("sn-42 board")
        ));
        assert_eq!(printable("grüße"), "grüße");
        assert_eq!(
            printable("a\u{1b}[2J\u{7}\r\n\t\u{7f}\u{9b}b"),
            r"a\u{1b}[2J\u{7}\r\n\t\u{7f}\u{9b}b"
        );
        assert_eq!(printable("x\u{202e}y\u{2066}z"), r"x\u{202e}y\u{2066}z");
        assert_eq!(printable("bad\u{fffd}"), r"bad\u{fffd}");
        assert_eq!(printable(r"a\u{1b}"), r"a\\u{1b}");
    }

    #[test]
    fn report_prints_each_cause_once() {
        let inner = E("connection refused", None);
        let mid = E(
            "connect to 127.0.0.1:1: connection refused",
            Some(Box::new(inner)),
        );
        let top = E("control socket /x", Some(Box::new(mid)));
        assert_eq!(
            report(&top),
            "control socket /x: connect to 127.0.0.1:1: connection refused"
        );
        let same = E("another qbkit-host is serving this control socket", None);
        let top = E(
            "control socket /x: another qbkit-host is serving this control socket",
            Some(Box::new(same)),
        );
        assert_eq!(
            report(&top),
            "control socket /x: another qbkit-host is serving this control socket"
        );
    }

    fn demo() -> Command {
        Command::new("my-prog")
            .about("demo")
            .subcommand(
                Command::new("run")
                    .about("run it")
                    .arg(clap::Arg::new("transport").long("transport")),
            )
            .subcommand(Command::new("list").about("list them"))
    }

    #[test]
    fn one_man_page_per_subcommand_with_its_options() {
        let pages = man_pages(demo()).unwrap();
        let names: Vec<&str> = pages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["my-prog", "my-prog-run", "my-prog-list"]);
        let top = String::from_utf8_lossy(&pages[0].roff);
        assert!(top.contains("my\\-prog\\-run(1)"), "{top}");
        let run = String::from_utf8_lossy(&pages[1].roff);
        assert!(run.contains("\\-\\-transport"), "{run}");
        assert!(
            run.contains("my\\-prog run"),
            "synopsis names the subcommand: {run}"
        );
    }

    #[test]
    fn bash_completion_states_match_for_a_hyphenated_name() {
        let mut out = Vec::new();
        completions(demo(), Shell::Bash, &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("cmd=\"my_prog__subcmd__run\""), "{s}");
        assert!(s.contains("        my_prog__subcmd__run)"), "{s}");
        assert!(s.contains("-o default my-prog\n"), "{s}");
        assert!(!s.contains("my__subcmd__prog"), "{s}");
    }
}
