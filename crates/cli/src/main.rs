//! `ama`: the one binary of the mesh. Each subcommand is thin wiring over a library crate;
//! this file only parses the command line and hands over to `cmd::*`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Ama: a service mesh that speaks Istio's API.
#[derive(Parser)]
#[command(name = "ama", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: registries, config push over Delta ADS (like `pilot-discovery`).
    Discovery(cmd::discovery::Args),
    /// Inject the istio-proxy sidecar into Kubernetes workloads (like `istioctl kube-inject`).
    KubeInject(cmd::kube_inject::Args),
    /// Install the traffic-capture rules of a pod (like `istio-iptables`).
    Iptables(cmd::iptables::Args),
    /// Print the install manifests: CRDs, control plane, webhook (like `istioctl manifest`).
    Manifest(cmd::manifest::Args),
    /// Run the data plane (`ama proxy sidecar`: the istio-proxy container).
    Proxy(cmd::proxy::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Discovery(args) => cmd::discovery::run(args),
        Command::KubeInject(args) => cmd::kube_inject::run(args),
        Command::Iptables(args) => cmd::iptables::run(args),
        Command::Manifest(args) => cmd::manifest::run(args),
        Command::Proxy(args) => cmd::proxy::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
