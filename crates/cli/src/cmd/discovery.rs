//! `ama discovery`: the control plane (Istio's `pilot-discovery discovery`).
//!
//! Wiring only: parses the flags, sets up logging on stderr, runs [`control::Discovery`] on a
//! tokio runtime until SIGTERM or SIGINT, then stops it cleanly (exit 0).
//!
//! Besides plaintext ADS (15010) it runs istiod's security servers: the mesh CA and ADS over TLS
//! (15012) and the injection webhook (15017). The CA root is `--cacerts` (Istio's plug-in
//! layout; `/etc/cacerts` when it holds one, as istiod mounts the `cacerts` Secret) or a
//! self-signed root persisted in `<state-dir>/ca`; its PEM is written to
//! `<state-dir>/root-cert.pem`. The webhook injects with the MeshConfig and values files Istio
//! mounts (`/etc/istio/config/mesh`, `/var/lib/istio/inject/values`) when they exist.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use api::{MeshConfig, Values};
use control::{Authentication, Discovery, DiscoveryOptions, SecurityOptions};
use tracing_subscriber::EnvFilter;

/// Where the config comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryKind {
    /// A directory of the YAML a user would `kubectl apply`, watched (`--config-dir`).
    Files,
    /// The Kubernetes API server: in-cluster config in a pod, else `KUBECONFIG` (or
    /// `~/.kube/config`). Publishes `istio-ca-root-cert` in every namespace.
    Kubernetes,
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
    /// ADS and the CA over TLS, `host:port` or `:port`; `off`: no CA, no TLS port, no webhook.
    #[arg(long = "secure-grpc-addr", alias = "secureGRPCAddr", default_value = "0.0.0.0:15012", value_parser = parse_optional_addr)]
    secure_grpc_addr: MaybeAddr,
    /// The injection webhook (HTTPS `/inject`), `host:port` or `:port`; `off`: none.
    #[arg(long = "webhook-addr", default_value = "0.0.0.0:15017", value_parser = parse_optional_addr)]
    webhook_addr: MaybeAddr,
    /// The CA's signing certificate and key in Istio's plug-in layout (`ca-cert.pem`,
    /// `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`). Default: `/etc/cacerts` when it holds a
    /// key, else a self-signed root kept in `<state-dir>/ca`.
    #[arg(long, value_name = "DIR")]
    cacerts: Option<PathBuf>,
    /// The control plane's files: `root-cert.pem`, `ca/` (self-signed root), `tokens/` (file-mode
    /// workload tokens). Default: the parent of `--config-dir`; /var/run/secrets/istiod with
    /// `--registry kubernetes`; else /var/lib/ama.
    #[arg(long = "state-dir", value_name = "DIR", env = "AMA_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// SPIFFE trust domain of workload certificates. Default: the MeshConfig's `trustDomain`
    /// (`--meshConfig`, else the registry's `istio` ConfigMap; `cluster.local`).
    #[arg(long = "trust-domain")]
    trust_domain: Option<String>,
    /// The control plane's namespace (`$POD_NAMESPACE`): in Kubernetes mode, where the
    /// self-signed root is kept (Secret `istio-ca-secret`).
    #[arg(
        long = "ca-namespace",
        env = "POD_NAMESPACE",
        default_value = "istio-system"
    )]
    ca_namespace: String,
    /// The longest workload certificate issued; longer requests are shortened (`24h`, `90m`).
    #[arg(long = "workload-cert-ttl", default_value = "24h", value_parser = parse_duration)]
    workload_cert_ttl: std::time::Duration,
    /// Extra names (DNS or IP) of the serving certificate on 15012 and 15017, besides
    /// `istiod.istio-system.svc` and `$ISTIOD_SERVICE`. Repeatable.
    #[arg(long = "dns-name", value_name = "NAME")]
    dns_names: Vec<String>,
    /// The control plane's Service name, also put in the serving certificate (Istio's env).
    #[arg(long = "istiod-service", env = "ISTIOD_SERVICE", hide = true)]
    istiod_service: Option<String>,
    /// Require a bearer token for ADS on the secure port, as Istio's `XDS_AUTH`.
    #[arg(long = "xds-auth", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    xds_auth: bool,
    /// The MeshConfig the webhook injects with (read when it exists).
    #[arg(
        long = "meshConfig",
        default_value = "/etc/istio/config/mesh",
        value_name = "FILE"
    )]
    mesh_config: PathBuf,
    /// The injector values the webhook injects with (read when it exists).
    #[arg(
        long = "injectValues",
        default_value = "/var/lib/istio/inject/values",
        value_name = "FILE"
    )]
    inject_values: PathBuf,
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

/// An address, or `None` for a server that is not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MaybeAddr(Option<SocketAddr>);

/// An address, or `off` (or nothing) for a server that is not started.
fn parse_optional_addr(text: &str) -> Result<MaybeAddr, String> {
    match text.trim() {
        "" | "off" => Ok(MaybeAddr(None)),
        text => parse_addr(text).map(|a| MaybeAddr(Some(a))),
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = text.parse::<api::Duration>()?.get();
    if d.is_zero() {
        return Err("must be longer than zero".to_string());
    }
    Ok(d)
}

/// The security servers' options from the flags, or `None` with `--secure-grpc-addr off`.
fn security_options(args: &Args) -> anyhow::Result<Option<SecurityOptions>> {
    let MaybeAddr(Some(secure_grpc_addr)) = args.secure_grpc_addr else {
        return Ok(None);
    };
    let state_dir = match (&args.state_dir, &args.config_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(config)) => match config.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        },
        // In the istiod pod only this is writable (the manifest mounts it, memory-backed).
        (None, None) if args.registry == RegistryKind::Kubernetes => {
            PathBuf::from("/var/run/secrets/istiod")
        }
        (None, None) => PathBuf::from("/var/lib/ama"),
    };
    let mut inject = inject::InjectConfig::default();
    let mut mesh_trust_domain = None;
    if let Some(text) = read_if_exists(&args.mesh_config)? {
        inject.mesh = MeshConfig::from_yaml(&text)
            .with_context(|| format!("{}", args.mesh_config.display()))?;
        mesh_trust_domain = Some(inject.mesh.trust_domain.clone());
    }
    if let Some(text) = read_if_exists(&args.inject_values)? {
        inject.values = Values::from_yaml(&text)
            .with_context(|| format!("{}", args.inject_values.display()))?;
    }
    let cacerts = args
        .cacerts
        .clone()
        .or_else(control::ca_server::istio_cacerts);
    let mut options = SecurityOptions::new(state_dir);
    options.secure_grpc_addr = secure_grpc_addr;
    options.webhook_addr = args.webhook_addr.0;
    options.cacerts = cacerts;
    // Else the mesh's: the mounted MeshConfig's, or the registry's `istio` ConfigMap.
    options.trust_domain = args.trust_domain.clone().or(mesh_trust_domain);
    options.ca_namespace = args.ca_namespace.clone();
    options.ca.max_ttl = args.workload_cert_ttl;
    options.ca.default_ttl = options.ca.default_ttl.min(args.workload_cert_ttl);
    options.dns_names = args
        .istiod_service
        .iter()
        .chain(&args.dns_names)
        .cloned()
        .collect();
    options.authentication = match args.registry {
        RegistryKind::Files => Authentication::Files,
        RegistryKind::Kubernetes => Authentication::Kubernetes,
    };
    options.xds_auth = args.xds_auth;
    options.inject = inject;
    Ok(Some(options))
}

fn read_if_exists(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Before anything allocates per connection; the sidecar, in the same binary, never calls it.
    memory::tune_allocator();
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

    let security = security_options(&args)?;
    let config_dir = match args.registry {
        RegistryKind::Files => args
            .config_dir
            .context("--config-dir is required with --registry files")?,
        RegistryKind::Kubernetes => PathBuf::new(), // not read
    };
    let mut options = DiscoveryOptions::new(config_dir);
    options.grpc_addr = args.grpc_addr;
    options.monitoring_addr = args.monitoring_addr;
    options.security = security;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("ama-discovery")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        if args.registry == RegistryKind::Kubernetes {
            let client = control::registry::kube::connect().await?;
            options.kubernetes = Some(control::registry::kube::KubeSource {
                client,
                options: Default::default(),
            });
        }
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
        assert_eq!(parse_optional_addr("off"), Ok(MaybeAddr(None)));
        assert_eq!(
            parse_optional_addr(":15012"),
            Ok(MaybeAddr(Some(SocketAddr::from(([0, 0, 0, 0], 15012)))))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("24h"),
            Ok(std::time::Duration::from_secs(86_400))
        );
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1h").is_err());
    }
}
