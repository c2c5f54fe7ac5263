//! `ama discovery`: the control plane (Istio's `pilot-discovery discovery`).
//!
//! Wiring only: parses the flags, sets up logging on stderr, runs [`control::Discovery`] on a
//! tokio runtime until SIGTERM or SIGINT, then stops it cleanly (exit 0).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use control::{Discovery, DiscoveryOptions};
use tracing_subscriber::EnvFilter;

/// Where the config comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryKind {
    /// A directory of the YAML a user would `kubectl apply`, watched (`--config-dir`).
    Files,
}

#[derive(clap::Args)]
pub struct Args {
    /// Where services, workloads and Istio config come from.
    #[arg(long, value_enum, default_value = "files")]
    registry: RegistryKind,
    /// The directory of YAML (`*.yaml`, `*.yml`, `*.json`, recursively) for `--registry files`.
    #[arg(
        long = "config-dir",
        value_name = "DIR",
        required_if_eq("registry", "files")
    )]
    config_dir: Option<PathBuf>,
    /// Delta ADS (plaintext gRPC) address, `host:port` or `:port`.
    #[arg(long = "grpc-addr", alias = "grpcAddr", default_value = "0.0.0.0:15010", value_parser = parse_addr)]
    grpc_addr: SocketAddr,
    /// Monitoring address (`/ready`, `/debug/syncz`, `/metrics`), `host:port` or `:port`.
    #[arg(long = "monitoring-addr", alias = "monitoringAddr", default_value = ":15014", value_parser = parse_addr)]
    monitoring_addr: SocketAddr,
    /// Log level, or a tracing filter (`info,control=debug`).
    #[arg(long = "log-level", default_value = "info", env = "AMA_LOG")]
    log_level: String,
    /// Logs as JSON lines.
    #[arg(long = "log-as-json")]
    log_as_json: bool,
}

/// `host:port`, or `:port` for every interface (as Istio's flags are written).
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("\"{text}\": \"{port}\" is not a port"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    text.parse()
        .map_err(|_| format!("\"{text}\" is not an address (host:port or :port)"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let filter = EnvFilter::try_new(&args.log_level).context("--log-level")?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let init = if args.log_as_json {
        fmt.json().try_init()
    } else {
        fmt.try_init()
    };
    init.map_err(|e| anyhow::anyhow!("logging: {e}"))?;

    let RegistryKind::Files = args.registry;
    let config_dir = args
        .config_dir
        .context("--config-dir is required with --registry files")?;
    let mut options = DiscoveryOptions::new(config_dir);
    options.grpc_addr = args.grpc_addr;
    options.monitoring_addr = args.monitoring_addr;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("ama-discovery")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let discovery = Discovery::start(options).await?;
        let stop = discovery.shutdown_token();
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received: stopping"),
            _ = stop.cancelled() => {}
        }
        discovery.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr(":15014"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 15014)))
        );
        assert_eq!(
            parse_addr("127.0.0.1:0"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert!(parse_addr(":x").is_err());
        assert!(parse_addr("localhost").is_err());
    }
}
