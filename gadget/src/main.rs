//! qbkit-gadget CLI: argument parsing, logging, config merging, then `qbkit_gadget::driver::run`.
//! `status` and `teardown` talk to the running daemon over its control socket.

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("qbkit-gadget runs on Linux only");
    std::process::exit(1);
}

#[cfg(target_os = "linux")]
fn main() -> anyhow::Result<()> {
    linux::main()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::path::PathBuf;

    use anyhow::Context as _;
    use clap::{Parser, Subcommand};
    use qbkit_gadget::config::{self, ConfigFile, DnsMode};
    use qbkit_gadget::configfs::plan;
    use qbkit_gadget::control::{self, Request};
    use qbkit_gadget::driver::{self, RunOptions};
    use qbkit_gadget::stream::LinkSpec;

    #[derive(Parser, Debug)]
    #[command(
        name = "qbkit-gadget",
        version,
        about = "qbkit board daemon: USB gadget + TUN default route"
    )]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Args, Debug, Clone)]
    struct Common {
        /// Config file (TOML); a missing default file is fine.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Control socket of the running daemon.
        #[arg(long, default_value = config::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    }

    #[derive(Subcommand, Debug)]
    enum Cmd {
        /// Create the gadget and TUN device and pump packets until stopped.
        Run {
            #[command(flatten)]
            common: Common,
            /// functionfs (default), tcp://HOST:PORT, tcp-listen://ADDR:PORT, unix:///PATH,
            /// unix-listen:///PATH or stdio.
            #[arg(long)]
            link: Option<String>,
            /// TUN device name.
            #[arg(long)]
            tun: Option<String>,
            /// USB device controller (default: the only one).
            #[arg(long)]
            udc: Option<String>,
            /// USB vendor id (hex).
            #[arg(long, value_parser = parse_hex_u16)]
            vid: Option<u16>,
            /// USB product id (hex).
            #[arg(long, value_parser = parse_hex_u16)]
            pid: Option<u16>,
            /// USB serial number (default: derived from /etc/machine-id).
            #[arg(long)]
            serial: Option<String>,
            /// Add a CDC-ACM serial function to the gadget.
            #[arg(long)]
            with_serial: bool,
            /// Do not install default routes (only the link).
            #[arg(long)]
            no_default_route: bool,
            /// DNS handling: auto, resolved, resolv-conf, off.
            #[arg(long, value_parser = parse_dns_mode)]
            dns: Option<DnsMode>,
        },
        /// Show the running daemon's state and counters.
        Status {
            #[command(flatten)]
            common: Common,
            /// Machine-readable JSON.
            #[arg(long)]
            json: bool,
        },
        /// Stop the daemon and remove the gadget it created (never other gadgets).
        Teardown {
            #[command(flatten)]
            common: Common,
        },
        /// Print the ConfigFS plan (or the equivalent shell fallback with --shell).
        Plan {
            #[command(flatten)]
            common: Common,
            /// Print the shell fallback script instead.
            #[arg(long)]
            shell: bool,
        },
        /// Print the man page (roff) to stdout.
        Man,
    }

    fn parse_hex_u16(s: &str) -> Result<u16, String> {
        let t = s.trim_start_matches("0x").trim_start_matches("0X");
        u16::from_str_radix(t, 16).map_err(|e| format!("{s:?}: {e} (hex, e.g. 1209)"))
    }

    fn parse_dns_mode(s: &str) -> Result<DnsMode, String> {
        Ok(match s {
            "auto" => DnsMode::Auto,
            "resolved" => DnsMode::Resolved,
            "resolv-conf" => DnsMode::ResolvConf,
            "off" => DnsMode::Off,
            _ => return Err("expected auto, resolved, resolv-conf or off".into()),
        })
    }

    fn init_logging() {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        // Under systemd the journal adds timestamps; plain lines read best there.
        let journald = std::env::var_os("JOURNAL_STREAM").is_some();
        let b = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false);
        if journald {
            b.without_time().init();
        } else {
            b.init();
        }
    }

    fn load(common: &Common) -> anyhow::Result<ConfigFile> {
        let required = common.config != std::path::Path::new(config::DEFAULT_CONFIG_PATH);
        Ok(ConfigFile::load(&common.config, required)?)
    }

    #[allow(clippy::too_many_lines, reason = "one match arm per subcommand")]
    pub(crate) fn main() -> anyhow::Result<()> {
        let cli = Cli::parse();
        init_logging();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        match cli.cmd {
            Cmd::Run {
                common,
                link,
                tun,
                udc,
                vid,
                pid,
                serial,
                with_serial,
                no_default_route,
                dns,
            } => {
                let mut file = load(&common)?;
                let u = &mut file.usb;
                u.vendor_id = vid.or(u.vendor_id);
                u.product_id = pid.or(u.product_id);
                u.serial = serial.or_else(|| u.serial.take());
                if with_serial {
                    u.with_serial = Some(true);
                }
                let udc = udc.or_else(|| file.usb.udc.clone());
                let spec = file.gadget_spec(config::read_machine_id().as_deref());
                let mut net = file.net_overrides()?;
                if no_default_route {
                    net.default_route = false;
                }
                if let Some(d) = dns {
                    net.dns_mode = d;
                }
                let link_text = link
                    .or_else(|| file.link.url.clone())
                    .unwrap_or_else(|| "functionfs".to_owned());
                let link = LinkSpec::parse(&link_text)?;
                let opts = RunOptions {
                    spec,
                    link,
                    tun: tun
                        .or_else(|| file.link.tun.clone())
                        .unwrap_or_else(|| config::DEFAULT_TUN.to_owned()),
                    udc,
                    net,
                    control_socket: common.control_socket,
                };
                rt.block_on(driver::run(opts))?;
            }
            Cmd::Status { common, json } => {
                let reply = rt
                    .block_on(control::request(&common.control_socket, Request::Status))
                    .with_context(|| {
                        format!(
                            "qbkit-gadget is not running (no control socket at {})",
                            common.control_socket.display()
                        )
                    })?;
                if json {
                    print!("{reply}");
                } else {
                    let s: control::Status = serde_json::from_str(&reply)?;
                    println!(
                        "link       {} ({})",
                        s.link,
                        s.transport.as_deref().unwrap_or("detached")
                    );
                    println!(
                        "state      {} carrier {}",
                        s.state,
                        if s.carrier { "on" } else { "off" }
                    );
                    if let Some(r) = &s.refused {
                        println!("refused    link configuration from the host: {r}");
                    }
                    if let Some(v) = s.protocol_version {
                        println!(
                            "peer       {} protocol v{v} mtu {} max bundle {}",
                            s.peer.unwrap_or_default(),
                            s.mtu.unwrap_or(0),
                            s.max_bundle.unwrap_or(0)
                        );
                    }
                    println!(
                        "{}      {} via {} dns {}",
                        s.tun,
                        s.address.unwrap_or_else(|| "-".into()),
                        s.gateway.unwrap_or_else(|| "-".into()),
                        s.dns.join(",")
                    );
                    for (k, v) in s.counters.iter().filter(|(_, v)| **v > 0) {
                        println!("  {k:24} {v}");
                    }
                }
            }
            Cmd::Teardown { common } => {
                if rt
                    .block_on(control::request(&common.control_socket, Request::Teardown))
                    .is_ok()
                {
                    println!("qbkit-gadget stopped; gadget removed");
                } else {
                    let file = load(&common)?;
                    let spec = file.gadget_spec(None);
                    let removed = qbkit_gadget::ffs::usb::remove_stale(&spec.name)?;
                    println!(
                        "daemon not running; {}",
                        if removed {
                            "removed gadget qbkit"
                        } else {
                            "no qbkit gadget found"
                        }
                    );
                }
            }
            Cmd::Plan { common, shell } => {
                let file = load(&common)?;
                let spec = file.gadget_spec(config::read_machine_id().as_deref());
                if shell {
                    print!("{}", plan::render_shell(&spec));
                } else {
                    for op in plan::plan(&spec) {
                        println!("{op:?}");
                    }
                }
            }
            Cmd::Man => {
                use clap::CommandFactory as _;
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                clap_mangen::Man::new(Cli::command())
                    .render(&mut out)
                    .context("writing the man page")?;
                out.flush().context("writing the man page")?;
            }
        }
        Ok(())
    }
}
