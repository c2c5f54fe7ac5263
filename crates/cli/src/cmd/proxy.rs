//! `ama proxy sidecar`: the istio-proxy container's process (pilot-agent + Envoy in Istio);
//! `ama proxy router`: the same for a gateway pod (Istio's gateway template runs `proxy router`
//! with the sidecar's flags).
//!
//! Accepts the arguments Istio's injection template passes (`--domain`, `--proxyLogLevel`,
//! `--concurrency`, `--drainDuration`, ...), explicitly, plus ours (`--config`, `--inbound-bind`,
//! port overrides). Resources come from `--config FILE`, else from the control plane at
//! `--discoveryAddress` (Delta ADS; to 15012 over TLS with the pod's token, as Istio's agent).
//! Runs the control side on a single-threaded runtime, connections on `--concurrency` worker
//! threads (`proxy::workers`), and hands over to `proxy::sidecar::run`; SIGTERM drains and
//! exits 0.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proxy::admin::LogLevelControl;
use proxy::config::ProxyConfig;
use proxy::identity_source::{IdentityFlags, IdentitySource};
use proxy::sidecar::SidecarOptions;
use proxy::telemetry::{
    AccessLogEncoding, AccessLogOptions, AccessLogSink, Collector, CustomTag, CustomTagValue,
    Telemetry, TelemetryOptions, TracingOptions,
};
use proxy::xds_client::{DiscoveryOptions, XdsTls};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Subcommand)]
enum Mode {
    /// Run as a pod's sidecar (the `istio-proxy` container).
    Sidecar(Box<SidecarArgs>),
    /// Run as a gateway (Istio's ingress or egress gateway pod): no capture; serves the
    /// Gateways that select the pod on their port numbers. Takes the sidecar's flags.
    Router(Box<SidecarArgs>),
    /// Wait until the proxy is ready (Istio's `pilot-agent wait`): the postStart hook of a pod
    /// that holds its apps until the proxy starts.
    Wait(super::proxy_hooks::WaitArgs),
    /// Send one request to the proxy's status server (Istio's `pilot-agent request`), such as
    /// a native sidecar's preStop `request --debug-port=15020 POST drain`.
    Request(super::proxy_hooks::RequestArgs),
}

/// A Go-style duration (`45s`, `100ms`, `1m30s`, `2h`).
#[derive(Clone, Copy, Debug)]
struct GoDuration(Duration);

impl FromStr for GoDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid duration {s:?} (expected e.g. 45s, 100ms, 1m30s)");
        if s == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let n_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let n: f64 = rest[..n_end].parse().map_err(|_| bad())?;
            rest = &rest[n_end..];
            let u_end = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = match &rest[..u_end] {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
            total += Duration::from_secs_f64(n * unit);
            rest = &rest[u_end..];
        }
        Ok(GoDuration(total))
    }
}

#[derive(clap::Args)]
struct SidecarArgs {
    /// Resources (workloads, services, routes, policies) as YAML or JSON; reloaded on change.
    /// Wins over --discoveryAddress.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Source address of connections to the app: 127.0.0.6 (dial the pod IP) or 127.0.0.1.
    #[arg(long, default_value = "127.0.0.6")]
    inbound_bind: IpAddr,
    /// Outbound capture port.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Inbound capture port.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Admin port (on 127.0.0.1); Istio's `--proxyAdminPort` is the same.
    #[arg(long, alias = "proxyAdminPort", default_value_t = 15000)]
    admin_port: u16,
    /// Status port (health, app probes, merged metrics); Istio's `--statusPort` is the same.
    /// [default: `statusPort` of the `PROXY_CONFIG` environment variable (injection writes a
    /// pod's `status.sidecar.istio.io/port` there), else 15020]
    #[arg(long, alias = "statusPort")]
    status_port: Option<u16>,
    /// Readiness port.
    #[arg(long, default_value_t = 15021)]
    readiness_port: u16,
    /// Prometheus port.
    #[arg(long, default_value_t = 15090)]
    prometheus_port: u16,
    /// Access log file (MeshConfig `accessLogFile`, e.g. /dev/stdout); empty: off.
    #[arg(long, env = "AMA_ACCESS_LOG_FILE", default_value = "")]
    access_log_file: String,
    /// Access log encoding (MeshConfig `accessLogEncoding`): JSON or TEXT.
    #[arg(long, env = "AMA_ACCESS_LOG_ENCODING", default_value = "TEXT")]
    access_log_encoding: String,
    /// How long to wait for a client's first bytes before treating it as opaque TCP
    /// (MeshConfig `protocolDetectionTimeout`); 0s, Istio's default: wait for them.
    #[arg(long, default_value = "0s")]
    protocol_detection_timeout: GoDuration,

    // Istio's injected arguments.
    /// Worker threads that serve connections; 0: one per CPU (as Envoy's `--concurrency 0`).
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Time in-flight requests get to finish after SIGTERM.
    #[arg(long = "drainDuration", default_value = "5s")]
    drain_duration: GoDuration,
    /// Upstream connect timeout.
    #[arg(long = "connectTimeout", default_value = "10s")]
    connect_timeout: GoDuration,
    /// Proxy log level: trace, debug, info, warning, error, critical, off.
    #[arg(long = "proxyLogLevel", default_value = "warning")]
    proxy_log_level: String,
    /// Per-component levels (`misc:error,upstream:debug`); accepted, components map to modules later.
    #[arg(long = "proxyComponentLogLevel")]
    proxy_component_log_level: Option<String>,
    /// Agent log level (`default:info`).
    #[arg(long = "log_output_level")]
    log_output_level: Option<String>,
    /// Logs as JSON.
    #[arg(long = "log_as_json")]
    log_as_json: bool,
    /// DNS domain (`default.svc.cluster.local`); accepted.
    #[arg(long)]
    domain: Option<String>,
    /// Accepted for compatibility; unused.
    #[arg(long = "serviceCluster", hide = true)]
    service_cluster: Option<String>,
    /// Accepted for compatibility; unused.
    #[arg(long = "parentShutdownDuration", hide = true)]
    parent_shutdown_duration: Option<String>,
    /// Control plane address (`host:port`): resources arrive over Delta ADS (when no --config).
    /// Default: `discoveryAddress` of the `PROXY_CONFIG` environment variable.
    #[arg(long = "discoveryAddress")]
    discovery_address: Option<String>,
    /// TLS to the discovery address (verified against --ca-root-file, with the token of
    /// --token-file): auto (when the port is 15012, as Istio's agent), on, or off.
    #[arg(long, value_name = "auto|on|off", default_value = "auto")]
    xds_tls: XdsTls,
    /// Accepted for compatibility; unused.
    #[arg(long = "controlPlaneAuthPolicy", hide = true)]
    control_plane_auth_policy: Option<String>,
    /// Accepted for compatibility; unused.
    #[arg(long = "configPath", hide = true)]
    config_path: Option<String>,
    /// Accepted for compatibility; unused.
    #[arg(long = "binaryPath", hide = true)]
    binary_path: Option<String>,
    /// Trust domain of the SPIFFE id asked of the CA (`cluster.local`).
    #[arg(long = "trust-domain")]
    trust_domain: Option<String>,
    /// Workload certificates in Istio's file-mounted layout (`cert-chain.pem`, `key.pem`,
    /// `root-cert.pem`), re-read on change. Default: /etc/certs when it holds them.
    #[arg(long, env = "AMA_CERT_DIR", value_name = "DIR")]
    cert_dir: Option<PathBuf>,
    /// The control plane's CA (`IstioCertificateService`, TLS), `host:port`.
    #[arg(long, env = "CA_ADDR", value_name = "HOST:PORT")]
    ca_addr: Option<String>,
    /// Root certificate that the control plane's serving certificate (CA and ADS on 15012)
    /// chains to.
    #[arg(long, value_name = "FILE", default_value = proxy::identity_source::ISTIO_CA_ROOT_FILE)]
    ca_root_file: PathBuf,
    /// Service-account token sent to the CA and to ADS on 15012 (`Authorization: Bearer`),
    /// re-read at every use.
    #[arg(long, value_name = "FILE", default_value = proxy::identity_source::ISTIO_TOKEN_FILE)]
    token_file: PathBuf,
    /// Accepted for compatibility; unused.
    #[arg(long = "templateFile", hide = true)]
    template_file: Option<String>,
    /// Accepted for compatibility; unused.
    #[arg(long = "outlierLogPath", hide = true)]
    outlier_log_path: Option<String>,
    /// Accepted for compatibility; unused.
    #[arg(long = "stsPort", hide = true)]
    sts_port: Option<String>,
    /// Accepted for compatibility; unused.
    #[arg(long = "dnsRefreshRate", hide = true)]
    dns_refresh_rate: Option<String>,
    /// The Zipkin collector (`host:port`) spans are sent to, as pilot-agent's flag; wins over
    /// `tracing.zipkin.address` of the `PROXY_CONFIG` environment variable.
    #[arg(long = "zipkinAddress")]
    zipkin_address: Option<String>,
    /// Accepted for compatibility; unused.
    #[arg(long = "serviceNode", hide = true)]
    service_node: Option<String>,
    /// Accepted for compatibility; unused.
    #[arg(long = "meshConfig", hide = true)]
    mesh_config: Option<String>,
    /// Any other argument a newer Istio template passes: logged and ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    unknown: Vec<String>,
}

/// Istio/Envoy level names to tracing's.
fn level(l: &str) -> &str {
    match l {
        "warning" => "warn",
        "critical" => "error",
        other => other,
    }
}

/// `/logging` on the admin port changes the filter through this.
struct ReloadLevel(tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>);

impl LogLevelControl for ReloadLevel {
    fn current(&self) -> String {
        self.0.with_current(|f| f.to_string()).unwrap_or_default()
    }
    fn set(&self, spec: &str) -> Result<(), String> {
        let spec: Vec<String> = spec
            .split(',')
            .map(|part| match part.rsplit_once('=') {
                Some((target, l)) => format!("{target}={}", level(l)),
                None => level(part).to_string(),
            })
            .collect();
        let filter = EnvFilter::try_new(spec.join(",")).map_err(|e| e.to_string())?;
        self.0.reload(filter).map_err(|e| e.to_string())
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.mode {
        Mode::Sidecar(a) => sidecar(*a, false),
        Mode::Router(a) => sidecar(*a, true),
        Mode::Wait(a) => super::proxy_hooks::wait(a),
        Mode::Request(a) => super::proxy_hooks::request(a),
    }
}

/// Runs a sidecar, or with `router` a gateway: the same process, flags and identity (from the
/// same environment variables), with the gateway's listeners instead of the capture ones.
fn sidecar(a: SidecarArgs, router: bool) -> anyhow::Result<ExitCode> {
    let filter = EnvFilter::try_new(level(&a.proxy_log_level)).context("--proxyLogLevel")?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if a.log_as_json {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.json())
            .try_init()
            .ok();
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init()
            .ok();
    }
    if !a.unknown.is_empty() {
        tracing::warn!(args = ?a.unknown, "ignoring unknown arguments");
    }

    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // Istio's injection passes the control plane in `PROXY_CONFIG` (ProxyConfig as JSON); the
    // flag, when given, wins.
    let proxy_config = api::ProxyConfig::from_yaml(&env("PROXY_CONFIG").unwrap_or_default())
        .context("PROXY_CONFIG")?;
    let discovery_address = match a.discovery_address {
        Some(d) => Some(d),
        None => proxy_config
            .discovery_address
            .clone()
            .filter(|d| !d.is_empty()),
    };
    let status_port = a.status_port.or(proxy_config.status_port).unwrap_or(15020);
    let mut cfg = ProxyConfig {
        outbound_addr: SocketAddr::from(([0, 0, 0, 0], a.outbound_port)),
        inbound_addr: SocketAddr::from(([0, 0, 0, 0], a.inbound_port)),
        inbound_bind: a.inbound_bind,
        protocol_detection_timeout: a.protocol_detection_timeout.0,
        connect_timeout: a.connect_timeout.0,
        drain_duration: a.drain_duration.0,
        pod_name: env("POD_NAME"),
        pod_namespace: env("POD_NAMESPACE"),
        instance_ip: env("INSTANCE_IP").and_then(|ip| ip.parse().ok()),
        service_account: env("SERVICE_ACCOUNT"),
        cluster_id: env("ISTIO_META_CLUSTER_ID").unwrap_or_else(|| "Kubernetes".to_string()),
        // Istio's `enableHTTP10`: the metadata value "1" and nothing else.
        accept_http_10: env("ISTIO_META_HTTP10").as_deref() == Some("1"),
        router,
        trace_sampling: api::mesh::ProxyTracing::sampling_percent(proxy_config.tracing.as_ref()),
        ..ProxyConfig::default()
    };
    if router {
        cfg.server_header = Some(proxy::gateway::SERVER_HEADER);
    }
    let opts = SidecarOptions {
        admin_addr: SocketAddr::from(([127, 0, 0, 1], a.admin_port)),
        status_addr: SocketAddr::from(([0, 0, 0, 0], status_port)),
        readiness_addr: SocketAddr::from(([0, 0, 0, 0], a.readiness_port)),
        prometheus_addr: SocketAddr::from(([0, 0, 0, 0], a.prometheus_port)),
        config_file: a.config,
        concurrency: match a.concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        },
        discovery: discovery_address.map(|address| DiscoveryOptions {
            address,
            tls: a.xds_tls,
            root_file: a.ca_root_file.clone(),
            token_file: a.token_file.clone(),
        }),
        identity: IdentitySource::resolve(IdentityFlags {
            cert_dir: a.cert_dir,
            ca_addr: a.ca_addr,
            ca_root_file: Some(a.ca_root_file),
            token_file: Some(a.token_file),
            trust_domain: a.trust_domain,
            namespace: env("POD_NAMESPACE"),
            service_account: env("SERVICE_ACCOUNT"),
            cluster_id: cfg.cluster_id.clone(),
        })
        .context("workload identity")?,
    };
    let access_log = if a.access_log_file.is_empty() {
        None
    } else {
        let encoding: AccessLogEncoding = a
            .access_log_encoding
            .parse()
            .context("--access-log-encoding")?;
        Some(AccessLogOptions::new(
            encoding,
            AccessLogSink::from_mesh_config(&a.access_log_file),
        ))
    };
    let tracing = tracing_options(
        a.zipkin_address.as_deref(),
        proxy_config.tracing.as_ref(),
        &cfg,
    )?;
    let telemetry = Telemetry::new(TelemetryOptions {
        access_log,
        tracing: Some(tracing),
    })
    .context("telemetry")?;

    // The control side (xDS, certificates, admin, status, the accept loops) runs here; the
    // connections run on `concurrency` worker threads of their own (proxy::workers).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .thread_name("ama-proxy")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        };
        let level: Arc<dyn LogLevelControl> = Arc::new(ReloadLevel(handle));
        proxy::sidecar::run(cfg, opts, telemetry, Some(level), shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The span exporter's settings from `--zipkinAddress` and ProxyConfig `tracing`, and the
/// proxy's identity for the tags. Without a collector named there, no span is sent until
/// discovery names one (the Telemetry API); requests still carry trace headers.
fn tracing_options(
    flag: Option<&str>,
    spec: Option<&api::mesh::ProxyTracing>,
    cfg: &ProxyConfig,
) -> anyhow::Result<TracingOptions> {
    use api::mesh::TracingCustomTag;
    if let Some(t) = spec {
        for field in t.unsupported.keys() {
            tracing::warn!(
                "PROXY_CONFIG: tracing.{field}: tracer not implemented by Ama; only zipkin is"
            );
        }
    }
    let address = flag.map(str::to_string).or_else(|| {
        spec.and_then(|t| t.zipkin.as_ref())
            .and_then(|z| z.address.clone())
    });
    let namespace = cfg
        .pod_namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut opts = TracingOptions::new(Collector::zipkin(""), namespace.clone());
    opts.collector = address.filter(|a| !a.is_empty()).map(Collector::zipkin);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // pilot-agent's service cluster, for requests whose labels do not name the workload.
    let workload = env("ISTIO_META_WORKLOAD_NAME").unwrap_or_else(|| "istio-proxy".into());
    opts.service_name = format!("{workload}.{namespace}");
    opts.node_id = proxy::xds_client::proxy_id(cfg).to_string();
    opts.mesh_id = env("ISTIO_META_MESH_ID").unwrap_or_else(|| "cluster.local".into());
    opts.local_ip = cfg.instance_ip;
    if let Some(t) = spec {
        if let Some(n) = t.max_path_tag_length.filter(|n| *n > 0) {
            opts.max_path_tag_length = n as usize;
        }
        for (tag, spec) in &t.custom_tags {
            let value = match spec {
                TracingCustomTag::Literal { value } => CustomTagValue::Literal(value.clone()),
                TracingCustomTag::Environment {
                    name,
                    default_value,
                } => CustomTagValue::Environment {
                    name: name.clone(),
                    default: default_value.clone(),
                },
                TracingCustomTag::Header {
                    name,
                    default_value,
                } => CustomTagValue::Header {
                    name: http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .with_context(|| {
                            format!("PROXY_CONFIG: tracing.custom_tags.{tag}.header.name {name:?}")
                        })?,
                    default: default_value.clone(),
                },
            };
            opts.custom_tags.push(CustomTag {
                tag: tag.clone(),
                value,
            });
        }
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ama proxy` as clap sees it.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn router_takes_the_gateway_templates_arguments() {
        use clap::Parser as _;
        // Istio's gateway injection template.
        let cli = Cli::try_parse_from([
            "proxy",
            "router",
            "--domain",
            "istio-system.svc.cluster.local",
            "--proxyLogLevel=warning",
            "--proxyComponentLogLevel=misc:error",
            "--log_output_level=default:info",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let Mode::Router(a) = cli.args.mode else {
            panic!("not the router mode")
        };
        assert_eq!(a.domain.as_deref(), Some("istio-system.svc.cluster.local"));
        assert_eq!(a.proxy_log_level, "warning");
    }

    #[test]
    fn tracing_from_the_flag_and_proxy_config() {
        let cfg = ProxyConfig {
            pod_name: Some("sleep-1".into()),
            pod_namespace: Some("foo".into()),
            instance_ip: Some("10.0.0.5".parse().unwrap()),
            ..ProxyConfig::default()
        };
        assert_eq!(tracing_options(None, None, &cfg).unwrap().collector, None);
        let pc = api::ProxyConfig::from_yaml(
            "tracing: {zipkin: {address: zipkin:9411}, max_path_tag_length: 10, \
             custom_tags: {t: {header: {name: X-Tenant}}}}",
        )
        .unwrap();
        let o = tracing_options(None, pc.tracing.as_ref(), &cfg).unwrap();
        assert_eq!(o.collector, Some(Collector::zipkin("zipkin:9411")));
        assert_eq!(o.max_path_tag_length, 10);
        assert_eq!(o.namespace, "foo");
        assert_eq!(
            o.node_id,
            "sidecar~10.0.0.5~sleep-1.foo~foo.svc.cluster.local"
        );
        assert_eq!(
            o.custom_tags,
            vec![CustomTag {
                tag: "t".into(),
                value: CustomTagValue::Header {
                    name: http::HeaderName::from_static("x-tenant"),
                    default: String::new()
                }
            }]
        );
        // The flag wins.
        let o = tracing_options(Some("other:9411"), pc.tracing.as_ref(), &cfg).unwrap();
        assert_eq!(o.collector, Some(Collector::zipkin("other:9411")));
        let bad =
            api::ProxyConfig::from_yaml("tracing: {custom_tags: {t: {header: {name: 'a b'}}}}")
                .unwrap();
        let err = tracing_options(Some("z:9411"), bad.tracing.as_ref(), &cfg).unwrap_err();
        assert!(
            format!("{err:#}").contains("tracing.custom_tags.t.header.name"),
            "{err:#}"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(
            "45s".parse::<GoDuration>().map(|d| d.0),
            Ok(Duration::from_secs(45))
        );
        assert_eq!(
            "1m30s".parse::<GoDuration>().map(|d| d.0),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(
            "100ms".parse::<GoDuration>().map(|d| d.0),
            Ok(Duration::from_millis(100))
        );
        assert!("45".parse::<GoDuration>().is_err());
        assert!("s".parse::<GoDuration>().is_err());
    }
}
