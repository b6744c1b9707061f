//! qbkit-host CLI: argument parsing, logging, then [`Engine::run`] (every board) on a tokio
//! current-thread runtime fed by the USB transport (default) or a stream transport; `list`
//! enumerates boards, `status` reads the running daemon's control socket, `completions` and `man`
//! print shell completions and the man page generated from these definitions. `tray` runs the
//! same [`Engine`] on a second thread with the tray icon on the main thread (macOS needs it
//! there), logging to the file the menu's "Open log" shows.

use std::hash::{BuildHasher as _, Hasher as _};
use std::net::SocketAddr;
use std::path::PathBuf;

use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use qbkit_cli::printable;
use qbkit_host::config::{self, NatOptions};
use qbkit_host::driver::DriverConfig;
use qbkit_host::engine::Engine;
use qbkit_host::forward::ForwardSpec;
use qbkit_host::transport::TransportSpec;
use qbkit_host::usb::{self, BoardState, DeviceFilter};
use qbkit_host::{platform, status, tray};
use shared_frame::usb_id;
use tokio::sync::{mpsc, watch};

/// Large blocks (the NAT's TCP rings) in header-free mappings of their own (`page_alloc`).
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: qbkit_host::page_alloc::PageAlloc = qbkit_host::page_alloc::PageAlloc;

/// The largest `--mtu`: what one bundle of the size the host offers carries.
const MAX_MTU: i64 = shared_frame::max_packet(shared_frame::DEFAULT_MAX_BUNDLE) as u32 as i64;

#[derive(Parser, Debug)]
#[command(
    name = "qbkit-host",
    version,
    about = "Give a qbkit board internet through a userspace NAT (no root needed)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to the board and run the NAT until interrupted.
    ///
    /// By default the board reaches what this laptop reaches, the internet and the LAN (private
    /// networks, e.g. a company's git server), like slirp4netns, pasta and Windows Internet
    /// Connection Sharing; it never reaches this laptop's own loopback or link-local services
    /// (127.0.0.0/8, 169.254.0.0/16, cloud metadata) unless --allow-host-loopback. --deny-lan
    /// locks the board down to the internet: no private networks and none of this laptop's
    /// addresses. A denied connect fails at once (ICMP administratively prohibited).
    Run(RunArgs),
    /// Like `run`, with a tray icon: link state, rates, boards, connect/disconnect, start at login.
    Tray(RunArgs),
    /// Show the running daemon's boards (links, flows, traffic and drop counters: the totals and
    /// one line per board when it serves several).
    Status {
        /// Print the machine-readable JSON document.
        #[arg(long)]
        json: bool,
        /// Only this board (its name as `status` lists it: the USB serial, or board-N).
        #[arg(long, value_name = "NAME")]
        board: Option<String>,
        /// The daemon's control socket (default: $XDG_RUNTIME_DIR/qbkit-host.sock; without
        /// XDG_RUNTIME_DIR, /run/qbkit-host/control.sock for root, else /tmp/qbkit-host-UID/control.sock;
        /// on Windows the named pipe \\.\pipe\qbkit-host-USERNAME).
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// List the qbkit boards attached over USB (serial, speed, bus path, state), or the devices
    /// a usbipd exports (`--usbip HOST`).
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// List the devices exported by the usbipd on HOST[:PORT] instead (bus ids for
        /// `--transport usbip://HOST/BUSID`).
        #[arg(long, value_name = "HOST", conflicts_with = "exported")]
        usbip: Option<String>,
        /// List the board that exported itself to the running `qbkit-host run --transport
        /// usbip-listen://…` instead (asked through its control socket).
        #[arg(long)]
        exported: bool,
        /// The running daemon's control socket (default as for `status`): asked which boards it
        /// serves (the SERVED column), or for --exported.
        #[arg(long)]
        control: Option<PathBuf>,
        #[command(flatten)]
        usb: UsbArgs,
    },
    /// Serve the board on USB and relay its bundles over stdin/stdout in the stream framing, with
    /// no NAT (the USB side of `--transport exec:'… qbkit-host relay'`, e.g. the Qubes qbkit.Net
    /// service in sys-usb). Keeps running across replugs; ends when stdin closes.
    Relay {
        #[command(flatten)]
        usb: UsbArgs,
    },
    /// Manage the running daemon's port forwards into the board.
    Forward {
        #[command(subcommand)]
        action: ForwardAction,
        /// The daemon's control socket (default: as for `status`).
        #[arg(long, global = true)]
        control: Option<PathBuf>,
        /// The board (its name as `status` lists it); needed when the daemon serves several.
        #[arg(long, global = true, value_name = "NAME")]
        board: Option<String>,
    },
    /// Connect standard input/output to a TCP port of the board through the running daemon,
    /// opening no port on this machine: `ssh -o ProxyCommand='qbkit-host connect %p' root@qbkit`.
    Connect {
        /// The board's port (at its IPv4 address), or BOARD_ADDR:PORT: 10.47.0.2:22, [fd47::2]:22.
        #[arg(value_name = "PORT")]
        target: String,
        /// The daemon's control socket (default: as for `status`).
        #[arg(long)]
        control: Option<PathBuf>,
        /// The board (its name as `status` lists it); needed when the daemon serves several.
        #[arg(long, value_name = "NAME")]
        board: Option<String>,
    },
    /// Write a new pre-shared key for stream links to FILE (mode 0600; an existing file is never
    /// replaced). Give the same file to `run --key` here and to `qbkit-gadget run --key` (or its
    /// config's `[link] key`) on the board.
    Keygen {
        /// Where to write the key.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print shell completions to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff) to stdout: the top page or one subcommand's; `--dir` writes them all.
    Man(qbkit_cli::ManArgs),
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum ForwardAction {
    /// Forward a laptop port to the board: [tcp/|udp/][BIND_ADDR:]LAPTOP_PORT[-END]:BOARD_PORT[-END].
    Add {
        /// The forward, e.g. 2222:22, udp/5353:53, 0.0.0.0:8080:80.
        #[arg(value_name = "SPEC", value_parser = parse_forward)]
        spec: ForwardSpec,
    },
    /// Stop forwarding (open connections keep running).
    Remove {
        /// The forward as it was added (or as `forward list` shows it).
        #[arg(value_name = "SPEC", value_parser = parse_forward)]
        spec: ForwardSpec,
    },
    /// List the forwards with their connection and byte counters.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_forward(s: &str) -> Result<ForwardSpec, String> {
    ForwardSpec::parse(s).map_err(|e| e.to_string())
}

/// Which USB devices count as boards.
#[derive(clap::Args, Debug)]
struct UsbArgs {
    /// Only the board with this USB serial number (when several are attached).
    #[arg(long, value_name = "S")]
    serial: Option<String>,
    /// Only the board plugged in at this bus path (as `list` shows it, e.g. 3-1), when one
    /// board is attached twice (the original and its USB/IP import) or serials are not unique.
    #[arg(long, value_name = "PATH")]
    bus_path: Option<String>,
    #[arg(long = "vid", value_name = "HEX", value_parser = parse_hex16,
          help = format!("USB vendor ID, hex [default: {:04x}]", usb_id::VID))]
    vid_arg: Option<u16>,
    #[arg(long = "pid", value_name = "HEX", value_parser = parse_hex16,
          help = format!("USB product ID, hex [default: {:04x}]", usb_id::PID))]
    pid_arg: Option<u16>,
}

impl UsbArgs {
    /// The VID:PID to look for (`shared_frame::usb_id` unless given).
    fn vid_pid(&self) -> (u16, u16) {
        (
            self.vid_arg.unwrap_or(usb_id::VID),
            self.pid_arg.unwrap_or(usb_id::PID),
        )
    }

    fn filter(&self) -> DeviceFilter {
        let (vid, pid) = self.vid_pid();
        DeviceFilter::new(vid, pid, self.serial.clone()).with_bus_path(self.bus_path.clone())
    }
}

fn parse_hex16(s: &str) -> Result<u16, String> {
    let h = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u16::from_str_radix(h, 16).map_err(|_| format!("{s:?} is not a 16-bit hex number (e.g. 1209)"))
}

#[derive(clap::Args, Debug)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent policy switches (one a deprecated no-op), as clap flags"
)]
struct RunArgs {
    #[arg(long, value_name = "URL", default_value = "usb", help = TransportSpec::help())]
    transport: String,
    #[command(flatten)]
    usb: UsbArgs,
    /// Let the board reach this machine's loopback and link-local addresses (127.0.0.0/8,
    /// 169.254.0.0/16, including cloud metadata at 169.254.169.254). Default: denied.
    #[arg(long)]
    allow_host_loopback: bool,
    /// Map the gateway address (except DNS) to 127.0.0.1, like slirp's 10.0.2.2
    /// (needs --allow-host-loopback).
    #[arg(long)]
    map_gateway_to_loopback: bool,
    /// Deny the board private networks (10/8, 172.16/12, 192.168/16, 100.64/10) and every
    /// address of this machine's interfaces. Default: the LAN is reachable, like the laptop.
    #[arg(long)]
    deny_lan: bool,
    /// Deprecated no-op (the LAN is reachable by default); accepted so old scripts keep working.
    #[arg(long, hide = true)]
    allow_lan: bool,
    /// Link MTU offered to the board (1280..=65520; default 65520, what one 64 KiB bundle
    /// carries). The link runs at the smaller of this and the board's own (its `[network] mtu`);
    /// a board that takes smaller bundles gets a smaller MTU.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1280..=MAX_MTU))]
    mtu: Option<u32>,
    /// Memory for all TCP connections' buffers together, in MiB (default 4096): of each board,
    /// and of all boards together. Past half of it new connections get smaller windows; past all
    /// of it they are refused, so boards that open connections and never read cannot exhaust
    /// this machine's memory.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=65536))]
    tcp_buffer_budget: Option<u32>,
    /// Upstream DNS resolver(s) for the gateway's DNS forwarding, IP or IP:PORT; pins them
    /// (default: the OS resolvers, followed while running: /etc/resolv.conf on Linux, `scutil
    /// --dns` on macOS, the adapters' resolvers on Windows; a change of network or VPN takes
    /// effect for the board's next query). Every resolver is used: one that does not answer
    /// within a second is skipped for the next.
    #[arg(long, value_name = "ADDR", value_delimiter = ',', num_args = 1.., value_parser = parse_dns)]
    dns: Option<Vec<SocketAddr>>,
    /// Serve `status`, `forward` and `connect` on this unix socket (default:
    /// $XDG_RUNTIME_DIR/qbkit-host.sock; without XDG_RUNTIME_DIR, /run/qbkit-host/control.sock for
    /// root, else /tmp/qbkit-host-UID/control.sock). On Windows a named pipe (default
    /// \\.\pipe\qbkit-host-USERNAME; a path names the pipe \\.\pipe\PATH).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Forward a laptop port to the board (repeatable):
    /// [tcp/|udp/][BIND_ADDR:]LAPTOP_PORT[-END]:BOARD_PORT[-END], e.g. 2222:22 (ssh -p 2222
    /// localhost reaches the board's sshd), udp/5353:53, 0.0.0.0:8080:80. Binds to 127.0.0.1
    /// unless an address is given.
    #[arg(short = 'L', long = "forward", value_name = "SPEC", value_parser = parse_forward)]
    forwards: Vec<ForwardSpec>,
    /// Pre-shared key file for stream links (make one with `qbkit-host keygen FILE`; the board
    /// needs the same file). Both ends prove they hold it before any traffic flows, so nobody
    /// else on the network can act as a board and use this laptop as a proxy. Required for
    /// tcp:// and tcp-listen:// on a non-loopback address (without it they refuse to start);
    /// optional on loopback, unix sockets and exec:/stdio. The traffic itself is not encrypted.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The host's config file, naming USB boards by serial with forwards for each:
    /// `[boards.NAME]` tables with `serial = "…"` and `forwards = ["2201:22", …]` (default:
    /// $XDG_CONFIG_HOME/qbkit/host.toml, ~/.config/qbkit/host.toml; on macOS ~/Library/Application
    /// Support/qbkit/host.toml; on Windows %APPDATA%\qbkit\host.toml; a missing default file is
    /// no configuration).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn parse_dns(s: &str) -> Result<SocketAddr, String> {
    config::parse_dns(s).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `--json` commands report errors as JSON on stdout; commands that only print end quietly
    // when their stdout is closed (`| head -1`).
    let json = matches!(
        cli.command,
        Command::Status { json: true, .. }
            | Command::List { json: true, .. }
            | Command::Forward {
                action: ForwardAction::List { json: true },
                ..
            }
    );
    if matches!(
        cli.command,
        Command::Status { .. }
            | Command::List { .. }
            | Command::Forward { .. }
            | Command::Completions { .. }
            | Command::Man(_)
    ) {
        qbkit_cli::quiet_on_closed_stdout();
    }
    qbkit_cli::finish("qbkit-host", json, dispatch(cli))
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Tray(args) => run_tray(args),
        Command::Status {
            json,
            board,
            control,
        } => {
            let path = control_path(control);
            let doc = status::request(&path, &status::Request::Status { board })
                .with_context(|| unreachable_daemon(&path))?;
            if let Ok(status::Reply {
                error: Some(e),
                ok: false,
                ..
            }) = serde_json::from_str(&doc)
            {
                anyhow::bail!(e);
            }
            if json {
                print!("{doc}");
            } else {
                let s: status::Status =
                    serde_json::from_str(&doc).context("bad status document")?;
                print!("{}", s.render());
            }
            Ok(())
        }
        Command::List {
            json,
            usbip: Some(host),
            usb,
            ..
        } => list_usbip(json, &host, &usb),
        Command::List {
            json,
            exported: true,
            control,
            ..
        } => list_exported(json, control),
        Command::List {
            json, usb, control, ..
        } => list(json, &usb, control),
        Command::Relay { usb } => relay(&usb),
        Command::Forward {
            action,
            control,
            board,
        } => forward(action, control, board),
        Command::Connect {
            target,
            control,
            board,
        } => connect(&target, control, board.as_deref()),
        Command::Keygen { file } => {
            eprintln!("{}", qbkit_link::auth::keygen(&file).context("keygen")?);
            Ok(())
        }
        Command::Completions { shell } => {
            qbkit_cli::completions(Cli::command(), shell, &mut std::io::stdout().lock())
                .context("writing the completions")
        }
        Command::Man(args) => qbkit_cli::man(Cli::command(), &args).context("man"),
    }
}

/// The control socket of a client command, and the error for a daemon that is not there.
fn control_path(control: Option<PathBuf>) -> PathBuf {
    control.unwrap_or_else(platform::default_control_path)
}

fn unreachable_daemon(path: &std::path::Path) -> String {
    format!(
        "cannot reach qbkit-host at {} (is `qbkit-host run` running?)",
        path.display()
    )
}

/// `forward add|remove|list`.
fn forward(
    action: ForwardAction,
    control: Option<PathBuf>,
    board: Option<String>,
) -> anyhow::Result<()> {
    let path = control_path(control);
    let (request, json) = match action {
        ForwardAction::Add { spec } => (
            status::Request::ForwardAdd {
                spec: spec.to_string(),
                board,
            },
            false,
        ),
        ForwardAction::Remove { spec } => (
            status::Request::ForwardRemove {
                spec: spec.to_string(),
                board,
            },
            false,
        ),
        ForwardAction::List { json } => (status::Request::ForwardList { board }, json),
    };
    let doc = status::request(&path, &request).with_context(|| unreachable_daemon(&path))?;
    let reply: status::Reply = serde_json::from_str(&doc)
        .with_context(|| format!("unexpected answer from qbkit-host at {}", path.display()))?;
    if let Some(e) = reply.error {
        anyhow::bail!(e);
    }
    let forwards = reply.data.forwards.unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&forwards)?);
    } else if matches!(request, status::Request::ForwardList { .. }) {
        if forwards.is_empty() {
            println!("no forwards");
        } else {
            print!("{}", status::render_forwards(&forwards));
        }
    }
    Ok(())
}

/// `connect PORT`: stdin/stdout ⇄ the board's port through the daemon.
fn connect(target: &str, control: Option<PathBuf>, board: Option<&str>) -> anyhow::Result<()> {
    let path = control_path(control);
    match status::connect(
        &path,
        target,
        board,
        tokio::io::stdin(),
        tokio::io::stdout(),
    ) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            anyhow::bail!(unreachable_daemon(&path))
        }
        Err(e) => anyhow::bail!("connect {target}: {e}"),
    }
}

/// The boards the running daemon at `control` serves over USB now, by serial, with the names
/// it gives them (its config file's, else the serial; none when no daemon answers).
fn served_boards(control: Option<PathBuf>) -> std::collections::HashMap<String, String> {
    let Ok(doc) = status::query(&control_path(control)) else {
        return std::collections::HashMap::new();
    };
    let Ok(s) = serde_json::from_str::<status::Status>(&doc) else {
        return std::collections::HashMap::new();
    };
    s.boards
        .into_iter()
        .filter(|b| b.link.connected)
        .map(|b| (b.serial.unwrap_or_else(|| b.name.clone()), b.name))
        .collect()
}

fn list(json: bool, args: &UsbArgs, control: Option<PathBuf>) -> anyhow::Result<()> {
    init_logging(false);
    let boards = runtime()?.block_on(usb::list_boards(&args.filter(), true))?;
    let infos: Vec<&usb::BoardInfo> = boards.iter().map(usb::Board::info).collect();
    let served = served_boards(control);
    let served_as = |i: &usb::BoardInfo| i.serial.as_ref().and_then(|s| served.get(s));
    if json {
        let rows: Vec<serde_json::Value> = infos
            .iter()
            .map(|i| {
                let mut v = serde_json::to_value(i)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("served".into(), served_as(i).is_some().into());
                    if let Some(name) = served_as(i) {
                        o.insert("name".into(), name.clone().into());
                    }
                }
                Ok(v)
            })
            .collect::<serde_json::Result<_>>()?;
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if infos.is_empty() {
        eprintln!(
            "no qbkit board found (USB {:04x}:{:04x}); is it plugged in and running qbkit-gadget?",
            args.vid_pid().0,
            args.vid_pid().1
        );
    } else {
        println!(
            "{:<20} {:<10} {:<12} {:<14} {:<12} VID:PID",
            "SERIAL", "SPEED", "BUS-PATH", "STATE", "SERVED AS"
        );
        for i in &infos {
            let state = serde_json::to_value(i.state)?;
            println!(
                "{:<20} {:<10} {:<12} {:<14} {:<12} {:04x}:{:04x}",
                printable(i.serial.as_deref().unwrap_or("-")),
                i.speed.unwrap_or("?"),
                i.bus_path,
                state.as_str().unwrap_or("?"),
                printable(served_as(i).map_or("-", String::as_str)),
                i.vid,
                i.pid
            );
        }
    }
    if infos.iter().any(|i| i.state == BoardState::NoPermission) {
        eprintln!(
            "qbkit-host: permission denied opening the board: {}",
            usb::permission_advice()
        );
    }
    Ok(())
}

/// `qbkit-host list --exported`: the board the running daemon's `usbip-listen://` serves.
fn list_exported(json: bool, control: Option<PathBuf>) -> anyhow::Result<()> {
    let path = control_path(control);
    let doc = status::query(&path).with_context(|| unreachable_daemon(&path))?;
    let s: status::Status = serde_json::from_str(&doc).context("bad status document")?;
    let board = s.exported_board();
    if json {
        println!("{}", serde_json::to_string_pretty(&board)?);
    } else if let Some(b) = board {
        println!("{:<20} {:<10} LINK", "SERIAL", "SESSION");
        println!(
            "{:<20} {:<10} {}",
            printable(b.serial.as_deref().unwrap_or("-")),
            b.session,
            printable(&b.link)
        );
    } else if s.transport.starts_with("usbip-listen://") {
        eprintln!(
            "no board has exported itself to {} yet (qbkit-gadget export usbip://…)",
            s.transport
        );
    } else {
        anyhow::bail!(
            "qbkit-host at {} serves {}, not usbip-listen://: no exported boards",
            path.display(),
            s.transport
        );
    }
    Ok(())
}

/// `qbkit-host list --usbip HOST`: the devices a usbipd exports; qbkit boards are marked.
fn list_usbip(json: bool, host: &str, args: &UsbArgs) -> anyhow::Result<()> {
    init_logging(false);
    let devs = runtime()?
        .block_on(qbkit_usbip::transport::list(host))
        .with_context(|| format!("cannot list the USB/IP devices of {host}"))?;
    let is_board = |d: &qbkit_usbip::DeviceInfo| (d.vendor_id, d.product_id) == args.vid_pid();
    if json {
        let v: Vec<_> = devs
            .iter()
            .map(|d| {
                serde_json::json!({
                    "busid": d.busid,
                    "vid": d.vendor_id,
                    "pid": d.product_id,
                    "speed": d.speed.name(),
                    "path": d.path,
                    "qbkit": is_board(d),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if devs.is_empty() {
        eprintln!("{host} exports no USB devices (bind one with `usbip bind -b BUSID`)");
    } else {
        println!(
            "{:<16} {:<10} {:<10} {:<6} PATH",
            "BUSID", "VID:PID", "SPEED", "QBKIT"
        );
        for d in &devs {
            println!(
                "{:<16} {:04x}:{:04x}  {:<10} {:<6} {}",
                printable(&d.busid),
                d.vendor_id,
                d.product_id,
                d.speed.name(),
                if is_board(d) { "yes" } else { "-" },
                printable(&d.path)
            );
        }
    }
    Ok(())
}

/// `qbkit-host relay`: the board on USB ⇄ stdin/stdout. Logs go to stderr only: stdout is the link.
fn relay(args: &UsbArgs) -> anyhow::Result<()> {
    init_logging(false);
    let max_bundle = shared_frame::DEFAULT_MAX_BUNDLE;
    let usb_cfg = usb::UsbConfig {
        transfer_size: max_bundle,
        ..usb::UsbConfig::default()
    };
    let filter = args.filter();
    runtime()?.block_on(async move {
        let (read, write) = qbkit_link::Connector::new(qbkit_link::LinkUrl::Stdio)
            .connect()
            .await?;
        tokio::select! {
            r = qbkit_host::relay::run(filter, usb_cfg, max_bundle, read, write) => {
                r.map(drop).map_err(anyhow::Error::from)
            }
            () = shutdown_signal() => Ok(()),
        }
    })
}

/// Logs to stderr at `RUST_LOG` (default info). With `clear_line`, each log line first erases
/// the live status line on the terminal.
fn init_logging(clear_line: bool) {
    let filter = log_filter();
    // Colours only on a terminal: journald, files and the test suites read plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal());
    if clear_line {
        b.with_writer(|| {
            let mut e = std::io::stderr();
            let _ = e.write_all(b"\r\x1b[K");
            e
        })
        .init();
    } else {
        b.with_writer(std::io::stderr).init();
    }
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Logs to stderr and appended to `path` (the tray's "Open log"), without colours; the file is
/// rotated at 8 MiB into one old file (`qbkit_host::logfile`).
fn init_logging_tee(path: Option<&std::path::Path>) {
    use qbkit_host::logfile::{MAX_LOG_BYTES, RotatingLog};
    use tracing_subscriber::fmt::writer::MakeWriterExt as _;
    let file = path.and_then(|p| {
        std::fs::create_dir_all(p.parent()?)
            .and_then(|()| RotatingLog::open(p, MAX_LOG_BYTES))
            .map_err(|e| eprintln!("qbkit-host: cannot open the log {}: {e}", p.display()))
            .ok()
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_ansi(false);
    match file {
        Some(f) => b
            .with_writer(std::io::stderr.and(std::sync::Arc::new(f)))
            .init(),
        None => b.with_writer(std::io::stderr).init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // A live status line only on a terminal; otherwise (journald, files, pipes) plain logs.
    let live = std::io::stdout().is_terminal();
    init_logging(live && std::io::stderr().is_terminal());
    let engine = engine(args, live)?;
    runtime()?.block_on(engine.run(shutdown_signal()))?;
    Ok(())
}

/// `qbkit-host tray`: the engine on its own thread, the tray icon on this one. The engine never
/// waits for the icon; if the icon cannot be shown at all, the engine runs until a signal.
fn run_tray(args: RunArgs) -> anyhow::Result<()> {
    let tray_cfg = tray::TrayConfig::default();
    init_logging_tee(tray_cfg.log_path.as_deref());
    let engine = engine(args, false)?;
    let rt = runtime()?;
    let (snap_tx, snap_rx) = watch::channel(tray::Snapshot::default());
    let (act_tx, act_rx) = mpsc::unbounded_channel();
    let worker = std::thread::Builder::new()
        .name("qbkit-engine".into())
        .spawn(move || rt.block_on(tray::app::run(engine, snap_tx, act_rx, shutdown_signal())))
        .context("engine thread")?;
    if let Err(e) = tray::run(tray_cfg, snap_rx, act_tx) {
        tracing::warn!(error = %e, "no tray icon; the board's network keeps working until Ctrl-C");
    }
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the engine thread panicked"))??;
    Ok(())
}

/// The engine of `run` and `tray` from the command line: NAT policy and DNS, driver, transport.
fn engine(args: RunArgs, live: bool) -> anyhow::Result<Engine> {
    platform::tune_allocator();
    platform::raise_fd_limit();
    if args.allow_lan {
        tracing::warn!(
            deny_lan = args.deny_lan,
            "--allow-lan is deprecated and does nothing: the LAN is reachable by default (--deny-lan closes it)"
        );
    }
    let spec = TransportSpec::parse(&args.transport)?;
    let named_boards = config::HostFile::load(
        args.config.as_deref().unwrap_or(&config::default_path()),
        args.config.is_some(),
    )?;
    if !named_boards.boards.is_empty() && !matches!(spec, TransportSpec::Usb) {
        tracing::warn!(transport = %spec, "the config file's [boards] name USB boards by serial; ignored on this transport");
    }
    let link_key = args
        .key
        .as_deref()
        .map(qbkit_link::auth::LinkKey::read_file)
        .transpose()?;
    spec.check_key(link_key.is_some())?;
    if link_key.is_some() && !spec.takes_key() {
        tracing::warn!(transport = %spec, "--key applies to stream links and usbip-listen:// only; ignored");
    }
    let follow_os_dns = args.dns.is_none();
    let opts = NatOptions {
        allow_host_loopback: args.allow_host_loopback,
        map_gateway_to_loopback: args.map_gateway_to_loopback,
        deny_lan: args.deny_lan,
        mtu: args.mtu.map(|m| m as usize),
        tcp_buffer_budget: args.tcp_buffer_budget.map(|m| (m as usize) << 20),
        dns: args.dns,
    };
    let seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let nat = config::nat_config(
        &opts,
        || match platform::dns_servers() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the OS resolvers; DNS to the gateway will be refused (use --dns)");
                Vec::new()
            }
        },
        || match platform::host_addrs() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this machine's addresses; --deny-lan denies private networks only");
                Vec::new()
            }
        },
        seed,
    )?;
    if nat.dns_servers.is_empty() {
        tracing::warn!("no upstream DNS resolvers: the board's DNS queries will fail (use --dns)");
    }
    let mut cfg = DriverConfig::new(nat);
    cfg.transport = spec.to_string();
    cfg.control_path = Some(args.control.unwrap_or_else(platform::default_control_path));
    cfg.live_status = live;
    cfg.forwards = args.forwards;
    cfg.follow_os_dns = follow_os_dns;
    let mut engine = Engine::new(cfg, spec, args.usb.filter());
    engine.link_key = link_key;
    engine.named_boards = named_boards;
    Ok(engine)
}

/// Completes on Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_run_flags() {
        let cli = Cli::try_parse_from([
            "qbkit-host",
            "run",
            "--transport",
            "unix-listen:///tmp/q.sock",
            "--allow-host-loopback",
            "--map-gateway-to-loopback",
            "--deny-lan",
            "--mtu",
            "65520",
            "--dns",
            "192.0.2.1",
            "192.0.2.2:5353",
            "--control",
            "/tmp/c.sock",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.transport, "unix-listen:///tmp/q.sock");
        assert!(r.allow_host_loopback && r.map_gateway_to_loopback && r.deny_lan);
        assert!(!r.allow_lan);
        // --allow-lan is still accepted (a hidden no-op) so old scripts keep working.
        let cli = Cli::try_parse_from(["qbkit-host", "run", "--allow-lan"]).unwrap();
        let Command::Run(old) = cli.command else {
            panic!("not run")
        };
        assert!(old.allow_lan && !old.deny_lan);
        let help = Cli::command()
            .find_subcommand_mut("run")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        assert!(
            help.contains("--deny-lan") && !help.contains("--allow-lan"),
            "{help}"
        );
        assert_eq!(r.mtu, Some(65520));
        assert_eq!(
            r.dns.unwrap(),
            vec![
                "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
                "192.0.2.2:5353".parse().unwrap()
            ]
        );
        assert!(Cli::try_parse_from(["qbkit-host", "run", "--mtu", "100"]).is_err());
        assert!(Cli::try_parse_from(["qbkit-host", "run", "--mtu", "65520"]).is_ok());
        assert!(Cli::try_parse_from(["qbkit-host", "run", "--mtu", "65521"]).is_err());
        assert!(Cli::try_parse_from(["qbkit-host", "run", "--dns", "nope"]).is_err());
        let cli = Cli::try_parse_from(["qbkit-host", "run", "--serial", "abc", "--pid", "0x0002"])
            .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.transport, "usb", "usb is the default transport");
        assert_eq!(
            r.usb.filter(),
            DeviceFilter::new(0x1209, 2, Some("abc".into()))
        );
        assert!(Cli::try_parse_from(["qbkit-host", "run", "--vid", "xyz"]).is_err());
        let cli = Cli::try_parse_from(["qbkit-host", "list", "--json", "--serial", "s1"]).unwrap();
        assert!(matches!(cli.command, Command::List { json: true, .. }));
        let cli = Cli::try_parse_from(["qbkit-host", "list", "--usbip", "10.0.0.5:3240", "--json"])
            .unwrap();
        assert!(
            matches!(cli.command, Command::List { json: true, usbip: Some(ref h), .. } if h == "10.0.0.5:3240")
        );
        let cli = Cli::try_parse_from(["qbkit-host", "relay", "--serial", "s1"]).unwrap();
        assert!(
            matches!(cli.command, Command::Relay { ref usb } if usb.serial.as_deref() == Some("s1"))
        );
        assert!(Cli::try_parse_from(["qbkit-host", "relay", "--transport", "usb"]).is_err());
        assert!(Cli::try_parse_from(["qbkit-host", "completions", "bash"]).is_ok());
        assert!(Cli::try_parse_from(["qbkit-host", "man"]).is_ok());
        assert!(Cli::try_parse_from(["qbkit-host", "man", "run"]).is_ok());
        assert!(Cli::try_parse_from(["qbkit-host", "man", "--dir", "/tmp/m"]).is_ok());
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["qbkit-host", "status", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Status {
                json: true,
                board: None,
                control: None
            }
        ));
    }
}
