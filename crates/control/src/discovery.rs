//! The discovery server: what `ama discovery` runs.
//!
//! - Delta ADS over plaintext gRPC (Istio's 15010), served by [`xds::ads::AdsServer`] from the
//!   [`Pusher`]'s snapshots;
//! - with [`DiscoveryOptions::security`]: the mesh CA, ADS and `IstioCertificateService` over TLS
//!   on 15012, and the injection webhook on 15017 ([`crate::security`]).
//! - The monitoring port (Istio's 15014), HTTP/1:
//!   - `GET /ready`: 200 once the config directory was read and a model built, else 503;
//!   - `GET /debug/syncz`: JSON, each connected proxy with, per resource type, the version it
//!     should have (`latest`), the versions sent, ACKed and NACKed (with the proxy's reason),
//!     from [`xds::ads::AdsServer::status`] (what `ama proxy-status` shows);
//!   - `GET /debug/config_errors`: JSON, the documents of the config directory left out, and
//!     what the model could not use;
//!   - `GET /metrics`: Prometheus text (push times, pushes, connected proxies);
//!   - `GET /version`: JSON, this build's version (istiod's `/version`, for `ama version`);
//!   - `GET /mesh`: the live mesh page, and `GET /mesh.json`, the graph it polls: workloads,
//!     who calls whom with rates, latency and mTLS from the proxies' metrics, each proxy's sync
//!     state ([`crate::mesh_view`], which scrapes the proxies off the push path).
//!
//! - The key sets of RequestAuthentication `jwksUri`s, fetched and refreshed in the background
//!   ([`crate::jwks`]); a change is pushed.
//!
//! The registry is the file registry on [`DiscoveryOptions::config_dir`], or with
//! [`DiscoveryOptions::kubernetes`] the API server ([`crate::registry::kube`]: watches, the root
//! certificate in every namespace, the injection webhook's `caBundle`).
//!
//! [`Discovery::start`] reads the directory (or lists the cluster), builds the first model and
//! fetches the key sets of its `jwksUri`s before it listens, so the first proxy gets a full
//! config. [`Discovery::shutdown`] stops accepting, ends the proxies' streams (they keep their
//! config and reconnect elsewhere) and waits for the tasks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xds::ads::{AdsServer, ProxyStatus};

use crate::jwks::JwksFetcher;
use crate::mesh_view::MeshView;
use crate::push::{PushOptions, Pusher};
use crate::registry::ConfigStore;
use crate::registry::file::{FileRegistry, POLL_INTERVAL, RegistryError};
use crate::registry::kube::{KubeRegistry, KubeSource};
use crate::security::{self, Security, SecurityError, SecurityOptions};

/// Istio's plaintext xDS port.
pub const GRPC_PORT: u16 = 15010;
/// Istio's monitoring port.
pub const MONITORING_PORT: u16 = 15014;
/// How long [`Discovery::shutdown`] waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a monitoring client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run the server.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// The directory of YAML (file registry).
    pub config_dir: PathBuf,
    /// Where Delta ADS listens (`0.0.0.0:15010`).
    pub grpc_addr: SocketAddr,
    /// Where `/ready`, `/debug/syncz` and `/metrics` listen (`0.0.0.0:15014`).
    pub monitoring_addr: SocketAddr,
    /// How often the directory is polled when it cannot be watched (see [`FileRegistry::run`]).
    pub poll_interval: Duration,
    /// Debounce of pushes.
    pub push: PushOptions,
    /// The CA, the secure gRPC port and the webhook; `None`: plaintext ADS only.
    pub security: Option<SecurityOptions>,
    /// Kubernetes mode: the API server is the registry (`config_dir` is not read).
    pub kubernetes: Option<KubeSource>,
}

impl DiscoveryOptions {
    /// Istio's ports on all interfaces, default polling and debounce.
    pub fn new(config_dir: impl Into<PathBuf>) -> DiscoveryOptions {
        DiscoveryOptions {
            config_dir: config_dir.into(),
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], GRPC_PORT)),
            monitoring_addr: SocketAddr::from(([0, 0, 0, 0], MONITORING_PORT)),
            poll_interval: POLL_INTERVAL,
            push: PushOptions::default(),
            security: None,
            kubernetes: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The config directory cannot be used.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A port could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A startup task failed.
    #[error("startup: {0}")]
    Startup(String),
    /// The CA, the secure gRPC port or the webhook could not start.
    #[error(transparent)]
    Security(#[from] SecurityError),
}

/// A running discovery server.
#[derive(Debug)]
pub struct Discovery {
    grpc_addr: SocketAddr,
    monitoring_addr: SocketAddr,
    pusher: Arc<Pusher>,
    registry: Option<Arc<FileRegistry>>,
    kube: Option<Arc<KubeRegistry>>,
    ads: AdsServer,
    security: Option<Security>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// What the monitoring server reads.
struct Monitoring {
    pusher: Arc<Pusher>,
    registry: Option<Arc<FileRegistry>>,
    kube: Option<Arc<KubeRegistry>>,
    ads: AdsServer,
    metrics: Registry,
    mesh: Arc<MeshView>,
}

impl Discovery {
    /// Reads the config directory, builds the first model, and starts serving.
    pub async fn start(options: DiscoveryOptions) -> Result<Discovery, DiscoveryError> {
        let (store, mut changes) = ConfigStore::new();
        let mut metrics = Registry::default();
        let pusher = Arc::new(Pusher::new(Arc::clone(&store), options.push, &mut metrics));
        let (registry, kube) = match &options.kubernetes {
            None => {
                let registry = Arc::new(FileRegistry::new(&options.config_dir, store)?);
                (Some(registry), None)
            }
            Some(source) => {
                let kube = KubeRegistry::start_synced(source.clone(), store).await;
                (None, Some(Arc::new(kube)))
            }
        };
        let changes = {
            let registry = registry.clone();
            let pusher = Arc::clone(&pusher);
            let config_dir = options.config_dir.clone();
            tokio::task::spawn_blocking(move || {
                let read = registry.map(|registry| {
                    let report = registry.scan();
                    tracing::info!(
                        "config {}: {} files read, {} documents left out",
                        config_dir.display(),
                        report.changed.len(),
                        report.errors.len()
                    );
                    report.changed.len()
                });
                // The first push carries the first scan (or lists): its queued changes are spent.
                let mut spent = 0;
                while changes.try_recv().is_ok() {
                    spent += 1;
                }
                pusher.push(None, read.unwrap_or(spent));
                changes
            })
            .await
            .map_err(|e| DiscoveryError::Startup(e.to_string()))?
        };

        // The first proxies get the key sets of the jwksUris (each fetch within its rule's
        // timeout), as istiod fetches them for its first push; later ones come from the task.
        let jwks = JwksFetcher::new(Arc::clone(pusher.jwks()));
        let sources = pusher.model().jwks_sources.clone();
        if !sources.is_empty() && jwks.fetch_due(&sources).await {
            let pusher = Arc::clone(&pusher);
            tokio::task::spawn_blocking(move || pusher.push(None, 0))
                .await
                .map_err(|e| DiscoveryError::Startup(e.to_string()))?;
        }

        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| DiscoveryError::Bind { what, addr, source })
        };
        let grpc = bind("gRPC", options.grpc_addr).await?;
        let monitoring = bind("monitoring", options.monitoring_addr).await?;
        let local = |l: &TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| DiscoveryError::Bind { what, addr, source })
        };
        let grpc_addr = local(&grpc, "gRPC", options.grpc_addr)?;
        let monitoring_addr = local(&monitoring, "monitoring", options.monitoring_addr)?;

        let shutdown = CancellationToken::new();
        let ads = AdsServer::new(Arc::clone(&pusher) as Arc<dyn xds::ads::SnapshotSource>);
        let mut tasks = Vec::new();
        if let Some(registry) = &registry {
            tasks.push(tokio::spawn(
                Arc::clone(registry).run(options.poll_interval, shutdown.clone()),
            ));
        }
        tasks.push(tokio::spawn(
            Arc::clone(&pusher).run(changes, shutdown.clone()),
        ));
        // The key sets of RequestAuthentication jwksUris, fetched and pushed as istiod does.
        tasks.push(tokio::spawn(
            jwks.run(Arc::clone(&pusher), shutdown.clone()),
        ));
        {
            let ads = ads.clone();
            tasks.push(tokio::spawn(memory::trim_after_activity(
                move || ads.activity(),
                shutdown.clone(),
            )));
        }
        {
            let service = ads.service();
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let incoming = tonic::transport::server::TcpIncoming::from(grpc);
                // HTTP/2 pings find dead proxies, so their streams (and what they pin) go.
                let result = tonic::transport::Server::builder()
                    .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
                    .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await;
                if let Err(e) = result {
                    tracing::error!("gRPC server: {e}");
                }
            }));
        }
        let security = match &options.security {
            Some(security) => {
                let mut started = security::start(
                    security,
                    options.kubernetes.as_ref().map(|k| &k.client),
                    &ads,
                    &pusher,
                    &mut metrics,
                    &shutdown,
                )
                .await?;
                tasks.append(&mut started.tasks);
                Some(started)
            }
            None => None,
        };
        if let (Some(kube), Some(security)) = (&kube, &security) {
            publish_to_cluster(kube, security);
        }
        // The mesh page's scrapes of the proxies: a task of their own, off the push path.
        let mesh = Arc::new(MeshView::new(Arc::clone(&pusher), ads.clone()));
        tasks.push(tokio::spawn(Arc::clone(&mesh).run(shutdown.clone())));
        let state = Arc::new(Monitoring {
            pusher: Arc::clone(&pusher),
            registry: registry.clone(),
            kube: kube.clone(),
            ads: ads.clone(),
            metrics,
            mesh,
        });
        tasks.push(tokio::spawn(serve_monitoring(
            monitoring,
            state,
            shutdown.clone(),
        )));
        tracing::info!("discovery: Delta ADS on {grpc_addr}, monitoring on {monitoring_addr}");
        Ok(Discovery {
            grpc_addr,
            monitoring_addr,
            pusher,
            registry,
            kube,
            ads,
            security,
            shutdown,
            tasks,
        })
    }

    /// Where Delta ADS listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the monitoring server listens.
    pub fn monitoring_addr(&self) -> SocketAddr {
        self.monitoring_addr
    }

    /// The pusher (model, push stats).
    pub fn pusher(&self) -> &Arc<Pusher> {
        &self.pusher
    }

    /// The file registry (for `apply`); `None` in Kubernetes mode.
    pub fn registry(&self) -> Option<&Arc<FileRegistry>> {
        self.registry.as_ref()
    }

    /// The Kubernetes registry, in Kubernetes mode.
    pub fn kube_registry(&self) -> Option<&Arc<KubeRegistry>> {
        self.kube.as_ref()
    }

    /// The ADS server (connected proxies).
    pub fn ads(&self) -> &AdsServer {
        &self.ads
    }

    /// The CA, the secure gRPC port and the webhook, when started.
    pub fn security(&self) -> Option<&Security> {
        self.security.as_ref()
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops: no new connections, proxies' streams end, tasks are awaited (those still running
    /// after a grace period are aborted).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.pusher.close();
        if let Some(kube) = &self.kube {
            kube.shutdown().await;
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        tracing::info!("discovery stopped");
    }
}

async fn serve_monitoring(listener: TcpListener, state: Arc<Monitoring>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("monitoring accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(&state, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn handle(state: &Monitoring, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/ready" => {
            if state.pusher.ready() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        "/debug/syncz" => json_reply(&syncz(&state.ads.status())),
        "/version" => json_reply(&version()),
        "/mesh" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::mesh_view::PAGE.into(),
        ),
        "/mesh.json" => json_reply(&state.mesh.json()),
        "/debug/config_errors" => {
            let model = state.pusher.model();
            json_reply(&json!({
                "documents": config_errors(state).iter().map(|e| json!({
                    "file": e.source_name,
                    "doc": e.doc,
                    "line": e.line,
                    "object": e.object,
                    "field": e.field,
                    "message": e.message,
                })).collect::<Vec<_>>(),
                "model": model.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }))
        }
        "/metrics" | "/stats/prometheus" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &state.metrics) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /ready, /debug/syncz, /debug/config_errors, /metrics, /version, /mesh, \
             /mesh.json\n"
                .into(),
        ),
    }
}

/// The objects left out by the registry: documents of the config directory, or objects of the
/// cluster.
fn config_errors(state: &Monitoring) -> Vec<api::objects::ObjectError> {
    let files = state.registry.iter().flat_map(|r| r.errors());
    files
        .chain(state.kube.iter().flat_map(|k| k.errors()))
        .collect()
}

/// Kubernetes mode: the mesh root as `istio-ca-root-cert` in every namespace, and as the
/// injection webhook's `caBundle` when the webhook is served (both in the background, retried).
fn publish_to_cluster(kube: &KubeRegistry, security: &Security) {
    let root = match std::fs::read_to_string(&security.root_cert_file) {
        Ok(pem) => pem,
        Err(e) => {
            tracing::error!(
                "{}: {e}: the root certificate is not published to the cluster",
                security.root_cert_file.display()
            );
            return;
        }
    };
    kube.publish_root_cert(root.clone());
    if security.webhook_addr.is_some() {
        kube.patch_webhook_ca_bundle(crate::registry::kube::injection_webhook_config_name(), root);
    }
}

/// `/debug/syncz`: one entry per connected proxy.
pub fn syncz(status: &[ProxyStatus]) -> Value {
    let seconds = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default()
    };
    Value::Array(
        status
            .iter()
            .map(|p| {
                let types: serde_json::Map<String, Value> = p
                    .types
                    .iter()
                    .map(|(ty, s)| {
                        (
                            ty.name().to_string(),
                            json!({
                                "state": s.sync_state().text(),
                                "latest": s.latest,
                                "sent": s.sent,
                                "acked": s.acked,
                                "nacked": s.nacked.as_ref().map(|n| json!({
                                    "version": n.version,
                                    "nonce": n.nonce,
                                    "error": n.error,
                                    "at": seconds(n.at),
                                })),
                                "pending": s.pending,
                                "resources": s.resources,
                                "pushes": s.pushes,
                                "resourcesSent": s.resources_sent,
                                "removalsSent": s.removals_sent,
                            }),
                        )
                    })
                    .collect();
                json!({
                    "proxy": p.node_id,
                    "connection": p.connection,
                    "peer": p.peer.map(|a| a.to_string()),
                    "connectedAt": seconds(p.connected_at),
                    "types": types,
                })
            })
            .collect(),
    )
}

/// `/version`: the build's version, in the fields of istio's `BuildInfo`.
pub fn version() -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "unknown",
        "status": "Clean",
        "tag": env!("CARGO_PKG_VERSION"),
    })
}

fn json_reply(value: &Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("\"{e}\""));
    text.push('\n');
    reply(StatusCode::OK, "application/json", text)
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}
