//! qbkit-host CLI: argument parsing, logging, then [`qbkit_host::driver::run`] on a tokio
//! current-thread runtime; `status` reads the running daemon's control socket.

use std::hash::{BuildHasher as _, Hasher as _};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use qbkit_host::config::{self, NatOptions};
use qbkit_host::driver::{self, DriverConfig};
use qbkit_host::transport::{self, TransportSpec};
use qbkit_host::{platform, status};
use tokio::sync::mpsc;

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
    Run(RunArgs),
    /// Show the running daemon's link, flows, traffic and drop counters.
    Status {
        /// Print the machine-readable JSON document.
        #[arg(long)]
        json: bool,
        /// The daemon's control socket (default: $XDG_RUNTIME_DIR/qbkit-host.sock).
        #[arg(long)]
        control: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The link to the board: `usb` (coming soon), or a stream link: tcp://HOST:PORT,
    /// tcp-listen://ADDR:PORT, unix:///PATH, unix-listen:///PATH, stdio, exec:COMMAND.
    #[arg(long, value_name = "URL")]
    transport: Option<String>,
    /// Let the board reach this machine's loopback and link-local addresses.
    #[arg(long)]
    allow_host_loopback: bool,
    /// Map the gateway address (except DNS) to 127.0.0.1, like slirp's 10.0.2.2
    /// (needs --allow-host-loopback).
    #[arg(long)]
    map_gateway_to_loopback: bool,
    /// Let the board reach private networks (10/8, 172.16/12, 192.168/16, 100.64/10).
    #[arg(long)]
    allow_lan: bool,
    /// Link MTU offered to the board (1280..=65535; default 16384).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1280..=65535))]
    mtu: Option<u32>,
    /// Upstream DNS resolver(s) for the gateway's DNS forwarding, IP or IP:PORT
    /// (default: from /etc/resolv.conf).
    #[arg(long, value_name = "ADDR", value_delimiter = ',', num_args = 1.., value_parser = parse_dns)]
    dns: Option<Vec<SocketAddr>>,
    /// Serve `qbkit-host status` on this unix socket (default: $XDG_RUNTIME_DIR/qbkit-host.sock).
    #[arg(long)]
    control: Option<PathBuf>,
}

fn parse_dns(s: &str) -> Result<SocketAddr, String> {
    config::parse_dns(s).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Status { json, control } => {
            let path = control.unwrap_or_else(platform::default_control_path);
            let doc = status::query(&path).with_context(|| {
                format!(
                    "cannot reach qbkit-host at {} (is `qbkit-host run` running?)",
                    path.display()
                )
            })?;
            if json {
                println!("{doc}");
            } else {
                let s: status::Status =
                    serde_json::from_str(&doc).context("bad status document")?;
                print!("{}", s.render());
            }
            Ok(())
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    platform::tune_allocator();
    platform::raise_fd_limit();
    let Some(t) = args.transport.as_deref() else {
        bail!(
            "no --transport given. The USB transport (the future default) is coming; until then \
             use a stream link, e.g. --transport tcp-listen://127.0.0.1:4747 or \
             --transport unix-listen:///run/qbkit.sock"
        );
    };
    let spec = TransportSpec::parse(t)?;
    let url = match spec {
        TransportSpec::Usb => bail!(
            "the USB transport is not available yet; use a stream link (--transport tcp-listen://127.0.0.1:4747)"
        ),
        TransportSpec::Stream(url) => url,
    };
    let opts = NatOptions {
        allow_host_loopback: args.allow_host_loopback,
        map_gateway_to_loopback: args.map_gateway_to_loopback,
        allow_lan: args.allow_lan,
        mtu: args.mtu.map(|m| m as usize),
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
        seed,
    )?;
    if nat.dns_servers.is_empty() {
        tracing::warn!("no upstream DNS resolvers: the board's DNS queries will fail (use --dns)");
    }
    let mut cfg = DriverConfig::new(nat);
    cfg.transport = url.to_string();
    cfg.control_path = Some(args.control.unwrap_or_else(platform::default_control_path));
    let max_bundle = cfg.max_bundle;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let (tx, rx) = mpsc::channel(transport::EVENT_QUEUE);
        tokio::spawn(transport::stream::run(url, max_bundle, tx));
        driver::run(cfg, rx, shutdown_signal()).await
    })?;
    Ok(())
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
            "--allow-lan",
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
        assert_eq!(r.transport.as_deref(), Some("unix-listen:///tmp/q.sock"));
        assert!(r.allow_host_loopback && r.map_gateway_to_loopback && r.allow_lan);
        assert_eq!(r.mtu, Some(65520));
        assert_eq!(
            r.dns.unwrap(),
            vec![
                "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
                "192.0.2.2:5353".parse().unwrap()
            ]
        );
        assert!(Cli::try_parse_from(["qbkit-host", "run", "--mtu", "100"]).is_err());
        assert!(Cli::try_parse_from(["qbkit-host", "run", "--dns", "nope"]).is_err());
        let cli = Cli::try_parse_from(["qbkit-host", "status", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Status {
                json: true,
                control: None
            }
        ));
    }
}
