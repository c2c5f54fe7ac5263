//! The whole sidecar process: resources, capture listeners, the admin and status servers, and
//! the shutdown sequence. `ama proxy sidecar` parses flags into [`SidecarOptions`] and calls
//! [`run`]; everything else is here so it can be tested without the binary.
//!
//! Shutdown: SIGTERM (or the caller's future), `POST /quitquitquit` on 15000, or `POST /drain`
//! on 15020 sets readiness to false, stops accepting, lets in-flight work finish within the
//! drain time, then stops the admin and status servers and returns.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminInputs, LogLevelControl};
use crate::config::{ConfigStore, ProxyConfig};
use crate::dump::TrafficAdmin;
use crate::identity_source::{IdentitySource, IdentitySourceError};
use crate::orig_dst::SoOriginalDst;
use crate::status::{AppMetrics, KubeAppProbers, Readiness, StatusInputs};
use crate::telemetry::Telemetry;
use crate::workers::Workers;
use crate::{Proxy, ProxyInputs};

/// Addresses and inputs of a sidecar process beyond [`ProxyConfig`].
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    /// Admin API (Istio: 127.0.0.1:15000).
    pub admin_addr: SocketAddr,
    /// Status: health, app probes, merged metrics (15020).
    pub status_addr: SocketAddr,
    /// Readiness (15021).
    pub readiness_addr: SocketAddr,
    /// Envoy-style prometheus (15090).
    pub prometheus_addr: SocketAddr,
    /// Where the workload certificate comes from; none: plaintext only.
    pub identity: IdentitySource,
    /// Resources file, reloaded on change; none means an empty mesh (everything passes through)
    /// or, with `discovery_address`, resources from the control plane.
    pub config_file: Option<PathBuf>,
    /// The control plane (Istio's `--discoveryAddress`, with TLS and a token to 15012), used
    /// when there is no `config_file`; the sidecar is ready once its first config is in force.
    pub discovery: Option<crate::xds_client::DiscoveryOptions>,
    /// Data-plane worker threads (Istio's `concurrency`), each with its own single-threaded
    /// runtime; 0 serves connections on the runtime that calls [`run`].
    pub concurrency: usize,
}

impl Default for SidecarOptions {
    fn default() -> Self {
        SidecarOptions {
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 15000)),
            status_addr: SocketAddr::from(([0, 0, 0, 0], 15020)),
            readiness_addr: SocketAddr::from(([0, 0, 0, 0], 15021)),
            prometheus_addr: SocketAddr::from(([0, 0, 0, 0], 15090)),
            identity: IdentitySource::None,
            config_file: None,
            discovery: None,
            concurrency: 0,
        }
    }
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The resources file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] xds::LoadError),
    /// The resources are valid but cannot be used (a route that does not compile).
    #[error("the resources cannot be used: {0}")]
    Resources(#[source] xds::ValidationErrors),
    /// A listener could not be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The discovery address is not usable.
    #[error(transparent)]
    Discovery(#[from] xds::ads::ClientError),
    /// No workload certificate could be had from the configured source.
    #[error(transparent)]
    Identity(#[from] IdentitySourceError),
    /// The worker threads could not be started.
    #[error("starting the worker threads: {0}")]
    Workers(#[source] std::io::Error),
    /// `ISTIO_KUBE_APP_PROBERS` or `ISTIO_PROMETHEUS_ANNOTATIONS` is invalid.
    #[error("{0}")]
    Status(String),
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, SidecarError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SidecarError::Bind { what, addr, source })
}

/// Runs a sidecar until `shutdown` resolves (or a quit/drain request), then drains and returns.
pub async fn run(
    cfg: ProxyConfig,
    opts: SidecarOptions,
    telemetry: Telemetry,
    log_level: Option<Arc<dyn LogLevelControl>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SidecarError> {
    let resources = match &opts.config_file {
        Some(p) => xds::ProxyResources::load(p)?,
        None => xds::ProxyResources::default(),
    };
    // `--config FILE` wins over the control plane, as it does today.
    let discovery = match (&opts.config_file, &opts.discovery) {
        (None, Some(discovery)) => Some(crate::xds_client::client_for(
            discovery,
            &cfg,
            &crate::xds_client::metadata_from_env(std::env::vars()),
        )?),
        _ => None,
    };
    let cfg = Arc::new(cfg);
    let store =
        Arc::new(ConfigStore::new(resources, cfg.clone()).map_err(SidecarError::Resources)?);
    let tls = crate::identity_source::start(&opts.identity).await?;
    let pi = ProxyInputs::with_tls(cfg.clone(), store, telemetry.clone(), tls);
    let mut proxy = if cfg.router {
        // A gateway captures nothing: it listens on its Gateways' ports.
        Proxy::router(pi.clone())
    } else {
        Proxy::new(pi.clone(), Arc::new(SoOriginalDst))
            .await
            .map_err(|source| SidecarError::Bind {
                what: "the capture listeners",
                addr: cfg.outbound_addr,
                source,
            })?
    };
    if let Some(p) = &opts.config_file {
        proxy = proxy.watch_config(p.clone());
    }
    if opts.concurrency > 0 {
        let workers = Workers::start(opts.concurrency).map_err(SidecarError::Workers)?;
        proxy = proxy.on_workers(workers);
    }

    let quit = CancellationToken::new();
    let drain_requested = Arc::new(tokio::sync::Notify::new());
    let readiness = Readiness::new();
    let admin = bind("admin", opts.admin_addr).await?;
    let status = bind("status", opts.status_addr).await?;
    let ready_l = bind("readiness", opts.readiness_addr).await?;
    let prom = bind("prometheus", opts.prometheus_addr).await?;

    let mut status_inputs = StatusInputs::new(telemetry.clone(), readiness.clone(), quit.clone());
    status_inputs.app_probers =
        KubeAppProbers::from_env().map_err(|e| SidecarError::Status(e.to_string()))?;
    status_inputs.app_metrics = AppMetrics::from_env(opts.status_addr.port())
        .map_err(|e| SidecarError::Status(e.to_string()))?;
    if let Some(ip) = cfg.instance_ip {
        status_inputs.app_probe_host = ip;
    }
    let dr = drain_requested.clone();
    status_inputs.drain = Arc::new(move || dr.notify_one());
    let status_inputs = Arc::new(status_inputs);
    let admin_inputs = Arc::new(AdminInputs {
        source: Arc::new(TrafficAdmin(pi.clone())),
        telemetry: telemetry.clone(),
        readiness: readiness.clone(),
        log_level,
        shutdown: quit.clone(),
        started: Instant::now(),
    });
    let servers = [
        tokio::spawn(crate::admin::serve(admin, admin_inputs)),
        tokio::spawn(crate::status::serve_status(status, status_inputs.clone())),
        tokio::spawn(crate::status::serve_readiness(
            ready_l,
            status_inputs.clone(),
        )),
        tokio::spawn(crate::status::serve_prometheus(prom, status_inputs)),
    ];
    if cfg.router {
        tracing::info!(admin = %opts.admin_addr, "gateway started");
    } else {
        tracing::info!(
            outbound = %proxy.outbound_addr(),
            inbound = %proxy.inbound_addr(),
            admin = %opts.admin_addr,
            "sidecar started"
        );
    }
    match discovery {
        Some(client) => {
            let ready = readiness.clone();
            tokio::spawn(crate::xds_client::run(
                client,
                pi.store.clone(),
                move || {
                    tracing::info!("first config from the control plane in force; ready");
                    ready.set_ready(true);
                },
                proxy.drain_watcher(),
            ));
        }
        None => readiness.set_ready(true),
    }

    // Gives back the memory of a flood of connections once they have closed, and the free
    // pages of the worker threads' arenas once the proxy is idle again.
    tokio::spawn(memory::trim_after_fall(
        proxy.drain_watcher().counter(),
        quit.clone(),
    ));
    let stop_quit = quit.clone();
    let ready = readiness.clone();
    proxy
        .run(async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop_quit.cancelled() => {}
                _ = drain_requested.notified() => {}
            }
            ready.set_ready(false);
        })
        .await;
    quit.cancel();
    for s in servers {
        let _ = s.await;
    }
    tracing::info!("sidecar stopped");
    Ok(())
}
