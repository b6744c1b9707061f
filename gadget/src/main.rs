//! qbkit-gadget CLI: argument parsing, logging, config merging, then `qbkit_gadget::driver::run`.
//! `status` and `teardown` talk to the running daemon over its control socket; `plan` prints the
//! ConfigFS steps; `completions` and `man` print shell completions and man pages generated from
//! these definitions (`qbkit_cli`, shared with qbkit-host). Errors end as one line on stderr
//! (`status --json`: JSON on stdout).

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("qbkit-gadget runs on Linux only");
    std::process::exit(1);
}

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
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

    /// What `run` and `export` share.
    #[derive(clap::Args, Debug)]
    struct RunArgs {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_name = "URL", help = LinkSpec::help())]
        link: Option<String>,
        #[arg(long, value_name = "NAME", help = format!("TUN device name [default: {}]", config::DEFAULT_TUN))]
        tun: Option<String>,
        /// USB device controller (default: the only one).
        #[arg(long)]
        udc: Option<String>,
        #[arg(long, value_name = "HEX", value_parser = parse_hex_u16,
              help = format!("USB vendor id, hex [default: {:04x}]", shared_frame::usb_id::VID))]
        vid: Option<u16>,
        #[arg(long, value_name = "HEX", value_parser = parse_hex_u16,
              help = format!("USB product id, hex [default: {:04x}]", shared_frame::usb_id::PID))]
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
        /// DNS handling: auto, resolved, resolv-conf, off [default: auto].
        #[arg(long, value_name = "MODE", value_parser = parse_dns_mode)]
        dns: Option<DnsMode>,
        /// Pre-shared key file for stream links (`qbkit-gadget keygen FILE`, or the laptop's
        /// `qbkit-host keygen`; both ends need the same file; config: `[link] key`). Both
        /// ends prove they hold it before any traffic flows, so nobody else on the network
        /// can act as the host and set this board's routes and DNS. Required for tcp:// and
        /// tcp-listen:// on a non-loopback address (without it they refuse to start).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    }

    #[derive(Subcommand, Debug)]
    enum Cmd {
        /// Create the gadget and TUN device and pump packets until stopped.
        Run(RunArgs),
        /// Device-side USB/IP connect: run the gadget on a usbip-vudc UDC and export it to a
        /// laptop's `qbkit-host run --transport usbip-listen://ADDR[:PORT]`, redialling when the
        /// connection drops; `--stop` unexports and stops the running export.
        Export {
            /// The laptop: usbip://HOST[:PORT] (port 3240 by default).
            #[arg(value_name = "URL", required_unless_present = "stop")]
            url: Option<String>,
            /// Unexport and stop the running `qbkit-gadget export`.
            #[arg(long, conflicts_with = "url")]
            stop: bool,
            #[command(flatten)]
            run: RunArgs,
        },
        /// Write a new pre-shared key for stream links to FILE (mode 0600; never replaces a file).
        Keygen {
            /// Where to write the key.
            #[arg(value_name = "FILE")]
            file: PathBuf,
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
        /// Print shell completions to stdout.
        Completions {
            /// The shell.
            #[arg(value_enum)]
            shell: qbkit_cli::Shell,
        },
        /// Print a man page (roff) to stdout: the top page or one subcommand's; `--dir` writes them all.
        Man(qbkit_cli::ManArgs),
    }

    /// The daemon's options from `run`'s (or `export`'s) arguments and the config file.
    fn run_options(
        args: RunArgs,
        export: Option<qbkit_gadget::export::ExportTarget>,
    ) -> anyhow::Result<RunOptions> {
        let RunArgs {
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
            key,
        } = args;
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
        // An export is always the USB gadget (on the vudc), whatever the config file's link says.
        let link_text = link
            .or_else(|| file.link.url.clone().filter(|_| export.is_none()))
            .unwrap_or_else(|| "functionfs".to_owned());
        let link = LinkSpec::parse(&link_text)?;
        let link_key = key
            .or_else(|| file.link.key.clone())
            .as_deref()
            .map(qbkit_link::auth::LinkKey::read_file)
            .transpose()?;
        if let LinkSpec::Stream(url) = &link {
            url.check_key(link_key.is_some())?;
        }
        let opts = RunOptions {
            export,
            link_key,
            spec,
            link,
            tun: tun
                .or_else(|| file.link.tun.clone())
                .unwrap_or_else(|| config::DEFAULT_TUN.to_owned()),
            udc,
            net,
            control_socket: common.control_socket,
        };
        Ok(opts)
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

    pub(crate) fn main() -> std::process::ExitCode {
        let cli = Cli::parse();
        let json = matches!(cli.cmd, Cmd::Status { json: true, .. });
        if !matches!(cli.cmd, Cmd::Run { .. } | Cmd::Teardown { .. }) {
            qbkit_cli::quiet_on_closed_stdout();
        }
        qbkit_cli::finish("qbkit-gadget", json, dispatch(cli))
    }

    #[allow(clippy::too_many_lines, reason = "one match arm per subcommand")]
    fn dispatch(cli: Cli) -> anyhow::Result<()> {
        init_logging();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        match cli.cmd {
            Cmd::Run(args) => rt.block_on(driver::run(run_options(args, None)?))?,
            Cmd::Export {
                url: None,
                run: RunArgs { common, .. },
                ..
            } => {
                // --stop: teardown of the export daemon unexports the board first.
                rt.block_on(control::request(&common.control_socket, Request::Teardown))
                    .with_context(|| {
                        format!(
                            "no qbkit-gadget export is running (no control socket at {})",
                            common.control_socket.display()
                        )
                    })?;
            }
            Cmd::Export {
                url: Some(url),
                mut run,
                ..
            } => {
                if run.link.is_some() {
                    anyhow::bail!(
                        "export runs the USB gadget on a usbip-vudc UDC; --link does not apply"
                    );
                }
                let target = qbkit_gadget::export::ExportTarget::parse(&url)?;
                if run.udc.is_none() {
                    run.udc = Some(qbkit_gadget::export::default_vudc().context(
                        "no usbip-vudc UDC (modprobe usbip-vudc, or name one with --udc)",
                    )?);
                }
                rt.block_on(driver::run(run_options(run, Some(target))?))?;
            }
            Cmd::Keygen { file } => {
                eprintln!("{}", qbkit_link::auth::keygen(&file).context("keygen")?);
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
                    let l = &s.link;
                    println!(
                        "link       {} ({})",
                        s.transport,
                        qbkit_cli::printable(l.description.as_deref().unwrap_or("detached"))
                    );
                    println!(
                        "session    {} carrier {}",
                        l.session,
                        if s.carrier { "on" } else { "off" }
                    );
                    if let Some(r) = &s.refused {
                        println!("refused    link configuration from the host: {r}");
                    }
                    if let Some(v) = l.protocol_version {
                        println!(
                            "peer       {} protocol v{v} mtu {} max bundle {}",
                            qbkit_cli::printable(l.peer.as_deref().unwrap_or_default()),
                            s.mtu.unwrap_or(0),
                            l.max_bundle.unwrap_or(0)
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
                    // A daemon that died with resolv.conf rewritten left its original saved.
                    rt.block_on(qbkit_gadget::dns::Dns::new(DnsMode::ResolvConf, 0).restore());
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
                    println!(
                        "# ConfigFS steps of gadget {} (paths under /sys/kernel/config)",
                        spec.name
                    );
                    for op in plan::plan(&spec) {
                        println!("{op}");
                    }
                }
            }
            Cmd::Completions { shell } => {
                use clap::CommandFactory as _;
                qbkit_cli::completions(Cli::command(), shell, &mut std::io::stdout().lock())
                    .context("writing the completions")?;
            }
            Cmd::Man(args) => {
                use clap::CommandFactory as _;
                qbkit_cli::man(Cli::command(), &args).context("man")?;
            }
        }
        Ok(())
    }
}
