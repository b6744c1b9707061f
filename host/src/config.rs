//! From command-line options to the NAT core's configuration: policy flags, MTU, the DNS
//! upstreams (from `--dns` when given, otherwise from the OS via [`crate::platform::dns_servers`])
//! and, under `--deny-lan`, the laptop's own addresses ([`crate::platform::host_addrs`]).
//! Pure (the OS is asked through closures), so the mapping is unit-tested.
//!
//! Also the host's config file ([`HostFile`], at [`default_path`] or `run --config FILE`): names
//! for USB boards by serial, each with its own forwards (a lab's `ssh -p 2201` to one board,
//! `2202` to the next). The format, with every key:
//!
//! ```toml
//! [boards.lab-a]          # the name `status`, `list` and `--board` use
//! serial = "MB-1"         # the board's USB serial (as `qbkit-host list` shows it)
//! forwards = ["2201:22"]  # `--forward` specs for this board only
//! ```
//!
//! A mistake (an unknown key, a serial named twice, a bad forward) is an error naming the file
//! and line: `run` does not start with half a lab's configuration.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use qbkit_nat::NatConfig;
use serde::Deserialize;
use toml::Spanned;

use crate::forward::ForwardSpec;

/// The options of `qbkit-host run` that shape the NAT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatOptions {
    /// Let the board reach host loopback and link-local addresses.
    pub allow_host_loopback: bool,
    /// Map the gateway address (other than DNS) to 127.0.0.1 (needs `allow_host_loopback`).
    pub map_gateway_to_loopback: bool,
    /// Deny the board private networks and the laptop's own addresses.
    pub deny_lan: bool,
    /// Link MTU (`None`: the protocol default).
    pub mtu: Option<usize>,
    /// All TCP socket buffers together, bytes (`None`: the core's default).
    pub tcp_buffer_budget: Option<usize>,
    /// Upstream resolvers given on the command line (`None`: read them from the OS).
    pub dns: Option<Vec<SocketAddr>>,
}

/// Errors in the options.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `--dns` value is neither an IP address nor IP:PORT.
    #[error("--dns {0:?}: expected an IP address or IP:PORT, e.g. 192.0.2.53 or [2001:db8::53]:53")]
    BadDns(String),
    /// `--map-gateway-to-loopback` without `--allow-host-loopback`.
    #[error("--map-gateway-to-loopback needs --allow-host-loopback")]
    MapNeedsLoopback,
}

/// Parses one `--dns` value: an address (port 53) or a socket address.
pub fn parse_dns(s: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| ConfigError::BadDns(s.to_owned()))
}

/// Builds the core's configuration. `os_dns` is consulted only when no `--dns` was given,
/// `host_addrs` only with `deny_lan`.
pub fn nat_config(
    opts: &NatOptions,
    os_dns: impl FnOnce() -> Vec<SocketAddr>,
    host_addrs: impl FnOnce() -> Vec<IpAddr>,
    random_seed: u64,
) -> Result<NatConfig, ConfigError> {
    if opts.map_gateway_to_loopback && !opts.allow_host_loopback {
        return Err(ConfigError::MapNeedsLoopback);
    }
    let mut c = NatConfig::default();
    c.page_release = crate::platform::page_release();
    c.allow_host_loopback = opts.allow_host_loopback;
    c.map_gateway_to_loopback = opts.map_gateway_to_loopback;
    c.deny_lan = opts.deny_lan;
    if opts.deny_lan {
        c.host_addrs = host_addrs();
    }
    c.mtu = opts.mtu.unwrap_or(shared_frame::DEFAULT_MTU as usize);
    if let Some(b) = opts.tcp_buffer_budget {
        c.tcp_buffer_budget = b;
    }
    c.dns_servers = match &opts.dns {
        Some(d) => d.clone(),
        None => os_dns(),
    };
    c.random_seed = random_seed;
    Ok(c)
}

/// Where `qbkit-host run` reads its config file unless `--config` says otherwise:
/// `$XDG_CONFIG_HOME/qbkit/host.toml` (`~/.config/qbkit/host.toml`) on Linux,
/// `~/Library/Application Support/qbkit/host.toml` on macOS, `%APPDATA%\\qbkit\\host.toml` on
/// Windows. A missing default file is no configuration.
pub fn default_path() -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    let dir = if cfg!(target_os = "macos") {
        home()
            .unwrap_or_default()
            .join("Library/Application Support")
    } else if cfg!(windows) {
        std::env::var_os("APPDATA")
            .map(PathBuf::from)
            .unwrap_or_default()
    } else {
        crate::platform::xdg_dir("XDG_CONFIG_HOME", ".config").unwrap_or_default()
    };
    dir.join("qbkit").join("host.toml")
}

/// An error in the host's config file: the file, the line when it is known, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("config file {}{}: {problem}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// The line (1-based), for a board that cannot work (TOML errors carry their own).
    pub line: Option<usize>,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with the host's config file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// It cannot be read.
    #[error("cannot read it: {0}")]
    Unreadable(std::io::Error),
    /// Not TOML, or a key this version does not know (the message has the line and column).
    #[error("{0}")]
    Syntax(Box<toml::de::Error>),
    /// Something the schema allows but that cannot work (a serial named twice, a bad forward).
    #[error("{0}")]
    Invalid(String),
}

/// One `[boards.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BoardTable {
    serial: Spanned<String>,
    #[serde(default)]
    forwards: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTables {
    #[serde(default)]
    boards: BTreeMap<Spanned<String>, BoardTable>,
}

/// A board named in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedBoard {
    /// What `status`, `list` and `--board` call it.
    pub name: String,
    /// Its USB serial.
    pub serial: String,
    /// Forwards to this board (listening from start-up, whether or not it is plugged in).
    pub forwards: Vec<ForwardSpec>,
}

/// The host's config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFile {
    /// The named boards, by name.
    pub boards: Vec<NamedBoard>,
}

impl HostFile {
    /// Reads `path`. A file given with `--config` (`required`) must be readable. The default
    /// file is optional: missing, it is an empty configuration; unreadable (a home the user may
    /// not enter, e.g. `HOME=/root` for an unprivileged user: EACCES before the file is even
    /// found), it is an empty configuration and a warning, so `run` still serves the board.
    /// A default file that was read but is wrong stays an error.
    pub fn load(path: &Path, required: bool) -> Result<Self, FileError> {
        let text = match std::fs::read_to_string(path) {
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(e) if !required => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cannot read the default config file; running without it (--config FILE names another)"
                );
                return Ok(Self::default());
            }
            read => read.map_err(|e| FileError {
                path: path.into(),
                line: None,
                problem: Problem::Unreadable(e),
            })?,
        };
        Self::parse(&text, path)
    }

    /// Parses config text (`path` is for messages only).
    pub fn parse(text: &str, path: &Path) -> Result<Self, FileError> {
        let tables = toml::from_str::<FileTables>(text).map_err(|e| FileError {
            path: path.into(),
            line: None,
            problem: Problem::Syntax(Box::new(e)),
        })?;
        let bad = |span: std::ops::Range<usize>, what: String| FileError {
            path: path.into(),
            line: Some(
                text.get(..span.start)
                    .map_or(0, |t| t.matches('\n').count())
                    + 1,
            ),
            problem: Problem::Invalid(what),
        };
        let mut boards: Vec<NamedBoard> = Vec::new();
        let mut spans = Vec::new();
        for (name, t) in tables.boards {
            let bad_name = name.get_ref().is_empty()
                || name.get_ref().len() > 64
                || name
                    .get_ref()
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace());
            if bad_name {
                return Err(bad(
                    name.span(),
                    format!(
                        "board name {:?} must be 1 to 64 characters without spaces",
                        name.get_ref()
                    ),
                ));
            }
            if t.serial.get_ref().is_empty() {
                return Err(bad(
                    t.serial.span(),
                    format!("[boards.{}] has an empty serial", name.get_ref()),
                ));
            }
            if let Some(other) = boards.iter().find(|b| b.serial == *t.serial.get_ref()) {
                return Err(bad(
                    t.serial.span(),
                    format!(
                        "serial {:?} of [boards.{}] is already board {:?}'s",
                        t.serial.get_ref(),
                        name.get_ref(),
                        other.name
                    ),
                ));
            }
            let forwards = t
                .forwards
                .iter()
                .map(|f| {
                    ForwardSpec::parse(f.get_ref()).map_err(|e| {
                        bad(
                            f.span(),
                            format!("[boards.{}] forwards: {e}", name.get_ref()),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            spans.push(name.span());
            boards.push(NamedBoard {
                name: name.into_inner(),
                serial: t.serial.into_inner(),
                forwards,
            });
        }
        // A name that is another board's serial would make `--board` ambiguous.
        for (span, b) in spans.iter().zip(&boards) {
            if let Some(other) = boards
                .iter()
                .find(|o| o.serial == b.name && o.name != b.name)
            {
                return Err(bad(
                    span.clone(),
                    format!(
                        "board name {:?} is board {:?}'s serial: --board would not know which",
                        b.name, other.name
                    ),
                ));
            }
        }
        Ok(Self { boards })
    }

    /// The board with USB serial `serial`.
    pub fn by_serial(&self, serial: &str) -> Option<&NamedBoard> {
        self.boards.iter().find(|b| b.serial == serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_default_file_is_no_config_but_a_given_one_is_an_error() {
        // A path under a regular file cannot be read (ENOTDIR), even as root, who may read
        // anything else; EACCES (HOME=/root for an unprivileged user) takes the same arm.
        let dir = std::env::temp_dir().join(format!("qbkit-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let path = file.join("qbkit").join("host.toml");
        let default = HostFile::load(&path, false).expect("the default file is optional");
        assert!(default.boards.is_empty());
        let err = HostFile::load(&path, true).expect_err("a --config file must be readable");
        assert!(matches!(err.problem, Problem::Unreadable(_)), "{err}");
        // A default file that exists but is wrong still stops `run`.
        let bad = dir.join("host.toml");
        std::fs::write(&bad, "[boards.a]\nserial = 1\n").unwrap();
        assert!(HostFile::load(&bad, false).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dns_values() {
        assert_eq!(
            parse_dns("192.0.2.53").unwrap(),
            "192.0.2.53:53".parse().unwrap()
        );
        assert_eq!(
            parse_dns("192.0.2.53:5353").unwrap(),
            "192.0.2.53:5353".parse().unwrap()
        );
        assert_eq!(
            parse_dns("2001:db8::1").unwrap(),
            "[2001:db8::1]:53".parse().unwrap()
        );
        assert_eq!(
            parse_dns("[2001:db8::1]:54").unwrap(),
            "[2001:db8::1]:54".parse().unwrap()
        );
        assert!(matches!(
            parse_dns("resolver.example"),
            Err(ConfigError::BadDns(_))
        ));
    }

    #[test]
    fn flags_map_to_the_core_and_dns_falls_back_to_the_os() {
        let os = || vec!["127.0.0.1:53".parse().unwrap()];
        let no_addrs = || -> Vec<IpAddr> { panic!("host addresses are read only for --deny-lan") };
        let c = nat_config(&NatOptions::default(), os, no_addrs, 7).unwrap();
        assert!(!c.allow_host_loopback && !c.deny_lan && !c.map_gateway_to_loopback);
        assert!(c.host_addrs.is_empty());
        assert_eq!(c.mtu, shared_frame::DEFAULT_MTU as usize);
        assert_eq!(c.dns_servers, os());
        assert_eq!(c.random_seed, 7);

        let opts = NatOptions {
            allow_host_loopback: true,
            map_gateway_to_loopback: true,
            deny_lan: true,
            mtu: Some(1500),
            tcp_buffer_budget: Some(64 << 20),
            dns: Some(vec!["192.0.2.53:53".parse().unwrap()]),
        };
        let laptop = || vec!["192.0.2.7".parse::<IpAddr>().unwrap()];
        let c = nat_config(
            &opts,
            || panic!("the OS must not be asked when --dns is given"),
            laptop,
            0,
        )
        .unwrap();
        assert!(c.allow_host_loopback && c.deny_lan && c.map_gateway_to_loopback);
        assert_eq!(c.host_addrs, laptop());
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.tcp_buffer_budget, 64 << 20);
        assert_eq!(c.dns_servers, vec!["192.0.2.53:53".parse().unwrap()]);

        let bad = NatOptions {
            map_gateway_to_loopback: true,
            ..NatOptions::default()
        };
        assert_eq!(
            nat_config(&bad, Vec::new, Vec::new, 0),
            Err(ConfigError::MapNeedsLoopback)
        );
    }

    fn parse(text: &str) -> Result<HostFile, FileError> {
        HostFile::parse(text, Path::new("host.toml"))
    }

    #[test]
    fn config_file_names_boards_with_their_forwards() {
        let f = parse(
            "# a lab\n[boards.lab-b]\nserial = \"MB-2\"\nforwards = [\"2202:22\", \"udp/5302:53\"]\n\n[boards.lab-a]\nserial = \"MB-1\"\n",
        )
        .unwrap();
        assert_eq!(
            f.boards,
            vec![
                NamedBoard {
                    name: "lab-a".into(),
                    serial: "MB-1".into(),
                    forwards: vec![],
                },
                NamedBoard {
                    name: "lab-b".into(),
                    serial: "MB-2".into(),
                    forwards: vec![
                        ForwardSpec::parse("2202:22").unwrap(),
                        ForwardSpec::parse("udp/5302:53").unwrap()
                    ],
                },
            ]
        );
        assert_eq!(f.by_serial("MB-2").map(|b| b.name.as_str()), Some("lab-b"));
        assert!(f.by_serial("MB-3").is_none());
        assert_eq!(parse("").unwrap(), HostFile::default());
    }

    #[test]
    fn config_file_mistakes_name_the_line() {
        let msg = |text: &str| parse(text).unwrap_err().to_string();
        let e = msg("[boards.a]\nserial = \"S\"\nforward = [\"2201:22\"]\n");
        assert!(
            e.contains("host.toml") && e.contains("line 3") && e.contains("forward"),
            "{e}"
        );
        let e = msg("[board.a]\nserial = \"S\"\n");
        assert!(e.contains("line 1") && e.contains("board"), "{e}");
        let e = msg("[boards.a]\nforwards = []\n");
        assert!(e.contains("serial"), "{e}");
        let e = msg("[boards.a]\nserial = \"S1\"\n[boards.b]\nserial = \"S1\"\n");
        assert!(
            e.contains("line 4") && e.contains("\"S1\"") && e.contains("\"a\""),
            "{e}"
        );
        let e =
            msg("[boards.a]\nserial = \"S1\"\nforwards = [\n  \"2201:22\",\n  \"22:nope\",\n]\n");
        assert!(e.contains("line 5") && e.contains("nope"), "{e}");
        let e = msg("[boards.a]\nserial = \"\"\n");
        assert!(e.contains("line 2") && e.contains("empty serial"), "{e}");
        let e = msg("[boards.\"a b\"]\nserial = \"S\"\n");
        assert!(e.contains("line 1") && e.contains("spaces"), "{e}");
        let e = msg("[boards.S2]\nserial = \"S1\"\n[boards.b]\nserial = \"S2\"\n");
        assert!(e.contains("line 1") && e.contains("would not know"), "{e}");
        let missing = Path::new("/nonexistent/qbkit/host.toml");
        assert_eq!(HostFile::load(missing, false).unwrap(), HostFile::default());
        assert!(matches!(
            HostFile::load(missing, true),
            Err(FileError {
                problem: Problem::Unreadable(_),
                ..
            })
        ));
    }
}
