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
    Discovery(Box<cmd::discovery::Args>),
    /// Inject the istio-proxy sidecar into Kubernetes workloads (like `istioctl kube-inject`).
    KubeInject(cmd::kube_inject::Args),
    /// Install the traffic-capture rules of a pod (like `istio-iptables`).
    Iptables(cmd::iptables::Args),
    /// Print the install manifests: CRDs, control plane, webhook (like `istioctl manifest`).
    Manifest(cmd::manifest::Args),
    /// Run the data plane (`ama proxy sidecar`: the istio-proxy container).
    Proxy(cmd::proxy::Args),
    /// Run the mesh of a directory of YAML on this machine, no Kubernetes (foreground).
    Up(cmd::up::Args),
    /// Stop the local mesh `ama up` runs, and remove everything it made.
    Down(cmd::down::Args),
    /// List the local mesh's objects, as `kubectl get` does (pods, deployments, vs, all, ...).
    Get(cmd::get::Args),
    /// Run a command in a pod of the local mesh (like `kubectl exec`).
    Exec(cmd::exec::Args),
    /// Print a container's log in the local mesh (like `kubectl logs`).
    Logs(cmd::logs::Args),
    /// Add or change objects of the running local mesh (like `kubectl apply`).
    Apply(cmd::apply::Args),
    /// Remove objects from the running local mesh (like `kubectl delete`).
    Delete(cmd::delete::Args),
    /// Show a pod of the local mesh in detail (like `kubectl describe pod`).
    Describe(cmd::describe::Args),
    /// Set the replicas of a Deployment of the running local mesh (like `kubectl scale`).
    Scale(cmd::scale::Args),
    /// Create a Secret in the running local mesh (like `kubectl create secret tls|generic`).
    Create(cmd::create::Args),
    /// Built-in apps for local meshes: `httpbin`, `sleep`.
    Sample(cmd::sample::Args),
    /// A sidecar's clusters, listeners, routes, endpoints, secrets, bootstrap or log levels (like
    /// `istioctl proxy-config`).
    #[command(visible_alias = "pc")]
    ProxyConfig(cmd::proxy_config::Args),
    /// Each proxy's sync state with the control plane (like `istioctl proxy-status`).
    #[command(visible_alias = "ps")]
    ProxyStatus(cmd::proxy_status::Args),
    /// Find problems in config files or the running mesh (like `istioctl analyze`).
    Analyze(cmd::analyze::Args),
    /// Open the live mesh page of the local mesh (like `istioctl dashboard`).
    Dashboard(cmd::dashboard::Args),
    /// The versions of the client, the control plane and the data plane (like `istioctl version`).
    Version(cmd::version::Args),
    /// Enter a container's view of the machine, then run a command (used by `ama up`).
    #[command(hide = true)]
    Sandbox(cmd::sandbox::Args),
    /// Run a command as root of namespaces of its own, without root (the tests use it).
    #[command(hide = true)]
    Userns(cmd::userns::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Discovery(args) => cmd::discovery::run(*args),
        Command::KubeInject(args) => cmd::kube_inject::run(args),
        Command::Iptables(args) => cmd::iptables::run(args),
        Command::Manifest(args) => cmd::manifest::run(args),
        Command::Proxy(args) => cmd::proxy::run(args),
        Command::Up(args) => cmd::up::run(args),
        Command::Down(args) => cmd::down::run(args),
        Command::Get(args) => cmd::get::run(args),
        Command::Exec(args) => cmd::exec::run(args),
        Command::Logs(args) => cmd::logs::run(args),
        Command::Apply(args) => cmd::apply::run(args),
        Command::Delete(args) => cmd::delete::run(args),
        Command::Create(args) => cmd::create::run(args),
        Command::Scale(args) => cmd::scale::run(args),
        Command::Describe(args) => cmd::describe::run(args),
        Command::Sample(args) => cmd::sample::run(args),
        Command::Sandbox(args) => cmd::sandbox::run(args),
        Command::Userns(args) => cmd::userns::run(args),
        Command::ProxyConfig(args) => cmd::proxy_config::run(args),
        Command::ProxyStatus(args) => cmd::proxy_status::run(args),
        Command::Analyze(args) => cmd::analyze::run(args),
        Command::Dashboard(args) => cmd::dashboard::run(args),
        Command::Version(args) => cmd::version::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
