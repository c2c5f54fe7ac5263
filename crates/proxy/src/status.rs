//! Status servers: 15020 (merged metrics, health, app probes), 15021 (readiness), 15090
//! (Envoy-style prometheus).
//!
//! What pilot-agent and Envoy serve on these ports in an Istio pod, served by the proxy itself:
//!
//! - 15020 [`serve_status`]: `/stats/prometheus` (and `/metrics`): the proxy's metrics merged
//!   with the application's, scraped from the `prometheus.io/port|path` the injector stores in
//!   `ISTIO_PROMETHEUS_ANNOTATIONS`; `/healthz/ready`; `/app-health/<container>/livez|readyz|startupz`
//!   (and `/app-lifecycle/...`): the kubelet's probes, rewritten by the injector, forwarded to the
//!   app per `ISTIO_KUBE_APP_PROBERS`; `POST /quitquitquit` (exit) and `POST /drain`.
//! - 15021 [`serve_readiness`]: `/healthz/ready` only.
//! - 15090 [`serve_prometheus`]: `/stats/prometheus`, the proxy's own metrics only.
//!
//! Every server is plain hyper HTTP/1.1 with a header read timeout and bounded header size; none
//! reads a request body. All stop when [`StatusInputs::shutdown`] is cancelled, letting requests
//! in flight finish. [`serve_http`] is the accept loop the admin server shares.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{Telemetry, metrics};

/// Env var with the app probes the injector rewrote (Istio's `KubeAppProberEnvName`).
pub const KUBE_APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";
/// Env var with the app's `prometheus.io/*` annotations as JSON (`{"scrape":"true","path":"/metrics","port":"8080"}`).
pub const PROMETHEUS_ANNOTATIONS_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";

/// How long a client may take to send request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (hyper's read buffer).
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Probe response bodies are cut at this size, as Istio does.
const MAX_PROBE_BODY: usize = 10 * 1024;
/// Application metrics larger than this are not merged.
const MAX_APP_METRICS: usize = 32 * 1024 * 1024;
/// Scrape timeout when Prometheus sends no `X-Prometheus-Scrape-Timeout-Seconds`.
const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The body type of every response here.
pub type Body = Full<Bytes>;

/// Whether the proxy is ready to serve (config received, listeners up). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Not ready yet.
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Marks the proxy ready (or not, e.g. while draining).
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// True once marked ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Errors in the status server's configuration (the env vars the injector sets).
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// `ISTIO_KUBE_APP_PROBERS` or `ISTIO_PROMETHEUS_ANNOTATIONS` is not valid JSON of its shape.
    #[error("{var}: {message}")]
    Config {
        /// The env var.
        var: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn config_err(var: &'static str, message: impl Into<String>) -> StatusError {
    StatusError::Config {
        var,
        message: message.into(),
    }
}

/// One app probe, as Kubernetes declares it (the subset the injector passes on).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Prober {
    /// An HTTP GET probe.
    #[serde(default)]
    pub http_get: Option<HttpGetAction>,
    /// A TCP connect probe.
    #[serde(default)]
    pub tcp_socket: Option<TcpSocketAction>,
    /// A gRPC health probe.
    #[serde(default)]
    pub grpc: Option<GrpcAction>,
    /// Probe timeout in seconds; 0 or absent means Kubernetes' default, 1.
    #[serde(default)]
    pub timeout_seconds: u32,
}

/// Kubernetes `HTTPGetAction`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetAction {
    /// Request path.
    #[serde(default)]
    pub path: String,
    /// Port; must be a number (the injector resolves named ports).
    pub port: serde_json::Value,
    /// `HTTP` (default) or `HTTPS`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Host to send to (Kubernetes `host`); we always connect to the app address.
    #[serde(default)]
    pub host: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub http_headers: Vec<HttpHeader>,
}

/// A header of an `httpGet` probe.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HttpHeader {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// Kubernetes `TCPSocketAction`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TcpSocketAction {
    /// Port; must be a number.
    pub port: serde_json::Value,
}

/// Kubernetes `GRPCAction`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct GrpcAction {
    /// Port.
    pub port: u16,
    /// Service name for `grpc.health.v1.Health/Check`; empty for the server as a whole.
    #[serde(default)]
    pub service: Option<String>,
}

/// A validated probe: what to do and with which timeout.
#[derive(Debug, Clone, PartialEq)]
pub enum AppProbe {
    /// GET `path` on `port`.
    Http {
        /// Port.
        port: u16,
        /// Path, starting with `/`.
        path: String,
        /// True for `scheme: HTTPS` (not supported yet: answers 500).
        https: bool,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Timeout.
        timeout: Duration,
    },
    /// Connect to `port`.
    Tcp {
        /// Port.
        port: u16,
        /// Timeout.
        timeout: Duration,
    },
    /// `grpc.health.v1.Health/Check` on `port`.
    Grpc {
        /// Port.
        port: u16,
        /// Service name.
        service: String,
        /// Timeout.
        timeout: Duration,
    },
}

/// The app probes by status-server path (`/app-health/httpbin/livez` → probe).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KubeAppProbers(pub HashMap<String, AppProbe>);

impl KubeAppProbers {
    /// Parses Istio's `ISTIO_KUBE_APP_PROBERS` JSON, validating paths and probes as pilot-agent does.
    pub fn parse(json: &str) -> Result<KubeAppProbers, StatusError> {
        const VAR: &str = KUBE_APP_PROBERS_ENV;
        if json.trim().is_empty() {
            return Ok(KubeAppProbers::default());
        }
        let raw: HashMap<String, Prober> = serde_json::from_str(json)
            .map_err(|e| config_err(VAR, format!("invalid JSON: {e}")))?;
        let mut out = HashMap::with_capacity(raw.len());
        for (path, p) in raw {
            if !is_app_probe_path(&path) {
                return Err(config_err(
                    VAR,
                    format!(
                        "{path}: must be /app-health/<container>/livez|readyz|startupz or /app-lifecycle/<container>/prestopz|poststartz"
                    ),
                ));
            }
            let timeout = Duration::from_secs(u64::from(p.timeout_seconds.max(1)));
            let probe = match (p.http_get, p.tcp_socket, p.grpc) {
                (Some(h), None, None) => {
                    let port = int_port(&h.port).ok_or_else(|| {
                        config_err(VAR, format!("{path}: httpGet.port must be an integer"))
                    })?;
                    let path = if h.path.starts_with('/') {
                        h.path
                    } else {
                        format!("/{}", h.path)
                    };
                    let https = h
                        .scheme
                        .as_deref()
                        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
                    let headers = h
                        .http_headers
                        .into_iter()
                        .map(|h| (h.name, h.value))
                        .collect();
                    AppProbe::Http {
                        port,
                        path,
                        https,
                        headers,
                        timeout,
                    }
                }
                (None, Some(t), None) => {
                    let port = int_port(&t.port).ok_or_else(|| {
                        config_err(VAR, format!("{path}: tcpSocket.port must be an integer"))
                    })?;
                    AppProbe::Tcp { port, timeout }
                }
                (None, None, Some(g)) => AppProbe::Grpc {
                    port: g.port,
                    service: g.service.unwrap_or_default(),
                    timeout,
                },
                _ => {
                    return Err(config_err(
                        VAR,
                        format!("{path}: exactly one of httpGet, tcpSocket or grpc"),
                    ));
                }
            };
            out.insert(path, probe);
        }
        Ok(KubeAppProbers(out))
    }

    /// Reads and parses `ISTIO_KUBE_APP_PROBERS`; empty when unset.
    pub fn from_env() -> Result<KubeAppProbers, StatusError> {
        KubeAppProbers::parse(&std::env::var(KUBE_APP_PROBERS_ENV).unwrap_or_default())
    }
}

fn int_port(v: &serde_json::Value) -> Option<u16> {
    v.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// `^/(app-health|app-lifecycle)/[^/]+/(livez|readyz|startupz|prestopz|poststartz)$`.
fn is_app_probe_path(path: &str) -> bool {
    let mut parts = path.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(""), Some("app-health" | "app-lifecycle"), Some(c), Some("livez" | "readyz" | "startupz" | "prestopz" | "poststartz"), None)
            if !c.is_empty()
    )
}

/// Where the app's own metrics are, from `ISTIO_PROMETHEUS_ANNOTATIONS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMetrics {
    /// Port (`prometheus.io/port`, default 80).
    pub port: u16,
    /// Path (`prometheus.io/path`, default `/metrics`).
    pub path: String,
}

impl AppMetrics {
    /// Parses the annotations JSON; `None` when scraping is off (`"scrape":"false"`).
    /// `status_port` is rejected as the app port, as in Istio, to avoid a scrape loop.
    pub fn parse(json: &str, status_port: u16) -> Result<Option<AppMetrics>, StatusError> {
        const VAR: &str = PROMETHEUS_ANNOTATIONS_ENV;
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            scrape: String,
            #[serde(default)]
            path: String,
            #[serde(default)]
            port: String,
        }
        let raw: Raw = serde_json::from_str(json)
            .map_err(|e| config_err(VAR, format!("invalid JSON: {e}")))?;
        if raw.scrape == "false" {
            return Ok(None);
        }
        let port = if raw.port.is_empty() {
            80
        } else {
            raw.port
                .parse()
                .map_err(|_| config_err(VAR, format!("port {:?} is not a port number", raw.port)))?
        };
        if port == status_port {
            return Err(config_err(
                VAR,
                format!("application port {port} is the status port; that would scrape itself"),
            ));
        }
        let path = if raw.path.is_empty() {
            "/metrics".to_owned()
        } else {
            raw.path
        };
        Ok(Some(AppMetrics { port, path }))
    }

    /// Reads `ISTIO_PROMETHEUS_ANNOTATIONS`; `None` when unset or scraping is off.
    pub fn from_env(status_port: u16) -> Result<Option<AppMetrics>, StatusError> {
        match std::env::var(PROMETHEUS_ANNOTATIONS_ENV) {
            Ok(v) if !v.trim().is_empty() => AppMetrics::parse(&v, status_port),
            _ => Ok(None),
        }
    }
}

/// Everything the status servers need.
pub struct StatusInputs {
    /// The proxy's metrics.
    pub telemetry: Telemetry,
    /// Readiness, shared with the traffic side and the admin server.
    pub readiness: Readiness,
    /// App probes to forward (`ISTIO_KUBE_APP_PROBERS`).
    pub app_probers: KubeAppProbers,
    /// App metrics to merge (`ISTIO_PROMETHEUS_ANNOTATIONS`).
    pub app_metrics: Option<AppMetrics>,
    /// Where probes go: the pod IP (Kubernetes' behaviour, Istio's default) or 127.0.0.1.
    pub app_probe_host: IpAddr,
    /// Where app metrics are scraped: 127.0.0.1, as Istio does.
    pub app_metrics_host: IpAddr,
    /// Source address of probe connections: 127.0.0.6 like Istio, so inbound capture lets them
    /// through; `None` lets the kernel choose. Falls back to no bind if binding fails.
    pub probe_source: Option<IpAddr>,
    /// Cancelled by `POST /quitquitquit`; every server here stops when it is cancelled.
    pub shutdown: CancellationToken,
    /// Called by `POST /drain`.
    pub drain: Arc<dyn Fn() + Send + Sync>,
}

impl StatusInputs {
    /// Inputs with no probes, no app metrics, probes to 127.0.0.1 from 127.0.0.6, and a no-op drain.
    pub fn new(
        telemetry: Telemetry,
        readiness: Readiness,
        shutdown: CancellationToken,
    ) -> StatusInputs {
        StatusInputs {
            telemetry,
            readiness,
            app_probers: KubeAppProbers::default(),
            app_metrics: None,
            app_probe_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            app_metrics_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            probe_source: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6))),
            shutdown,
            drain: Arc::new(|| {}),
        }
    }
}

impl std::fmt::Debug for StatusInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusInputs")
            .field("app_probers", &self.app_probers)
            .field("app_metrics", &self.app_metrics)
            .field("app_probe_host", &self.app_probe_host)
            .finish_non_exhaustive()
    }
}

/// Serves 15020 until `inputs.shutdown` is cancelled.
pub async fn serve_status(listener: TcpListener, inputs: Arc<StatusInputs>) {
    let status_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let shutdown = inputs.shutdown.clone();
    serve_http(listener, shutdown, move |req, peer| {
        let inputs = inputs.clone();
        async move { status_route(&inputs, req, peer, status_port).await }
    })
    .await;
}

/// Serves 15021: `/healthz/ready` only.
pub async fn serve_readiness(listener: TcpListener, inputs: Arc<StatusInputs>) {
    let shutdown = inputs.shutdown.clone();
    serve_http(listener, shutdown, move |req, _| {
        let ready = inputs.readiness.is_ready();
        async move {
            match req.uri().path() {
                "/healthz/ready" => ready_response(ready),
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            }
        }
    })
    .await;
}

/// Serves 15090: `/stats/prometheus`, the proxy's own metrics only (as Envoy's 15090).
pub async fn serve_prometheus(listener: TcpListener, inputs: Arc<StatusInputs>) {
    let shutdown = inputs.shutdown.clone();
    serve_http(listener, shutdown, move |req, _| {
        let telemetry = inputs.telemetry.clone();
        async move {
            match req.uri().path() {
                "/stats/prometheus" | "/metrics" => prometheus_response(&telemetry),
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            }
        }
    })
    .await;
}

async fn status_route(
    inputs: &StatusInputs,
    req: Request<Incoming>,
    peer: SocketAddr,
    status_port: u16,
) -> Response<Body> {
    let path = req.uri().path();
    match path {
        "/healthz/ready" => ready_response(inputs.readiness.is_ready()),
        "/stats/prometheus" | "/metrics" => merged_metrics(inputs, req.headers()).await,
        "/quitquitquit" | "/drain" => {
            if !peer.ip().is_loopback() {
                return text(
                    StatusCode::FORBIDDEN,
                    "Only requests from localhost are allowed\n",
                );
            }
            if req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
            }
            if path == "/quitquitquit" {
                tracing::info!("/quitquitquit called, shutting down");
                inputs.shutdown.cancel();
            } else {
                tracing::info!("/drain called, starting drain");
                (inputs.drain)();
            }
            text(StatusCode::OK, "OK")
        }
        p if p.starts_with("/app-health/") || p.starts_with("/app-lifecycle/") => {
            match inputs.app_probers.0.get(p) {
                Some(probe) => run_probe(inputs, probe, req.headers(), status_port).await,
                None => text(
                    StatusCode::BAD_REQUEST,
                    &format!("app prober config does not exists for {p}"),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn ready_response(ready: bool) -> Response<Body> {
    if ready {
        text(StatusCode::OK, "")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The proxy's metrics in Prometheus text format.
pub fn prometheus_response(telemetry: &Telemetry) -> Response<Body> {
    response(
        StatusCode::OK,
        metrics::CONTENT_TYPE,
        Bytes::from(telemetry.encode_prometheus()),
    )
}

/// Ours first, the app's last (an OpenMetrics `# EOF` must end the exposition), in the app's
/// format when it answered in OpenMetrics, as pilot-agent merges. A failed app scrape is
/// logged and leaves just ours: Prometheus still gets the proxy's metrics.
async fn merged_metrics(inputs: &StatusInputs, headers: &HeaderMap) -> Response<Body> {
    let ours = inputs.telemetry.encode_prometheus();
    let Some(app) = &inputs.app_metrics else {
        return response(StatusCode::OK, metrics::CONTENT_TYPE, Bytes::from(ours));
    };
    let timeout = headers
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_SCRAPE_TIMEOUT);
    let mut forward = HeaderMap::new();
    for name in [
        "accept",
        "user-agent",
        "x-prometheus-scrape-timeout-seconds",
    ] {
        if let Some(v) = headers.get(name) {
            forward.insert(name, v.clone());
        }
    }
    let target = SocketAddr::new(inputs.app_metrics_host, app.port);
    let mut content_type = metrics::CONTENT_TYPE;
    let mut body = BytesMut::from(ours.as_bytes());
    match http_get(target, None, &app.path, forward, timeout, MAX_APP_METRICS).await {
        Ok(r) if r.status == StatusCode::OK => {
            let ct = r
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            content_type = negotiate_metrics_format(ct);
            if !body.ends_with(b"\n") && !body.is_empty() {
                body.put_u8(b'\n');
            }
            body.put(r.body);
        }
        Ok(r) => tracing::warn!(
            "scraping application metrics {target}{}: status {}",
            app.path,
            r.status
        ),
        Err(e) => tracing::warn!("scraping application metrics {target}{}: {e}", app.path),
    }
    response(StatusCode::OK, content_type, body.freeze())
}

fn negotiate_metrics_format(content_type: &str) -> &'static str {
    let mut parts = content_type.split(';').map(str::trim);
    if parts
        .next()
        .is_some_and(|m| m.eq_ignore_ascii_case("application/openmetrics-text"))
    {
        let version = parts.find_map(|p| p.strip_prefix("version=")).unwrap_or("");
        return match version {
            "1.0.0" => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            _ => "application/openmetrics-text; version=0.0.1; charset=utf-8",
        };
    }
    metrics::CONTENT_TYPE
}

async fn run_probe(
    inputs: &StatusInputs,
    probe: &AppProbe,
    headers: &HeaderMap,
    status_port: u16,
) -> Response<Body> {
    let host = inputs.app_probe_host;
    match probe {
        AppProbe::Http {
            port,
            path,
            https,
            headers: extra,
            timeout,
        } => {
            if *https {
                tracing::warn!("HTTPS app probe to port {port} is not supported");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "HTTPS probes are not supported\n",
                );
            }
            let mut forward = HeaderMap::new();
            for (name, value) in headers {
                if !is_hop_by_hop(name.as_str()) {
                    forward.append(name.clone(), value.clone());
                }
            }
            // The kubelet addressed us; the app expects its own port in Host.
            if let Some(h) = headers.get(HOST).and_then(|h| h.to_str().ok()) {
                let rewritten = match h.rsplit_once(':') {
                    Some((name, p)) if p.parse::<u16>().ok() == Some(status_port) => {
                        format!("{name}:{port}")
                    }
                    _ => h.to_owned(),
                };
                if let Ok(v) = HeaderValue::from_str(&rewritten) {
                    forward.insert(HOST, v);
                }
            }
            for (name, value) in extra {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    forward.insert(n, v);
                }
            }
            let target = SocketAddr::new(host, *port);
            match http_get(
                target,
                inputs.probe_source,
                path,
                forward,
                *timeout,
                MAX_PROBE_BODY,
            )
            .await
            {
                // Kubernetes counts redirects as success, and a redirect without Location is illegal.
                Ok(r) if r.status.is_redirection() => text(StatusCode::OK, ""),
                Ok(r) => response(r.status, "text/plain; charset=utf-8", r.body),
                Err(e) => {
                    tracing::warn!(target: "probes", "probe to {target}{path} failed: {e}");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "")
                }
            }
        }
        AppProbe::Tcp { port, timeout } => {
            let target = SocketAddr::new(host, *port);
            match tokio::time::timeout(*timeout, connect(target, inputs.probe_source)).await {
                Ok(Ok(_)) => text(StatusCode::OK, ""),
                _ => text(StatusCode::INTERNAL_SERVER_ERROR, ""),
            }
        }
        AppProbe::Grpc {
            port,
            service,
            timeout,
        } => {
            let target = SocketAddr::new(host, *port);
            let ua = headers.get(http::header::USER_AGENT).cloned();
            match tokio::time::timeout(
                *timeout,
                grpc_health_check(target, inputs.probe_source, service, ua),
            )
            .await
            {
                Ok(Ok(true)) => text(StatusCode::OK, ""),
                Ok(Ok(false)) => text(StatusCode::INTERNAL_SERVER_ERROR, ""),
                Ok(Err(e)) => {
                    tracing::warn!(target: "probes", "gRPC probe to {target} failed: {e}");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "")
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, ""),
            }
        }
    }
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "content-length"
    )
}

/// Connects to `target`, from `source` when given (falling back to any source if that bind fails).
async fn connect(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    if let Some(src) = source.filter(|s| s.is_ipv4() == target.is_ipv4()) {
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if socket.bind(SocketAddr::new(src, 0)).is_ok() {
            return socket.connect(target).await;
        }
    }
    TcpStream::connect(target).await
}

/// A small HTTP/1.1 client response.
struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// GET `path` from `target` over a fresh connection (no keep-alive, like the kubelet), within
/// `timeout`, reading at most `max_body` bytes of body.
async fn http_get(
    target: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
    mut headers: HeaderMap,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, String> {
    let work = async {
        let stream = connect(target, source)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        if !headers.contains_key(HOST)
            && let Ok(v) = HeaderValue::from_str(&target.to_string())
        {
            headers.insert(HOST, v);
        }
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        let mut req = Request::get(path)
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        *req.headers_mut() = headers;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let (parts, body) = resp.into_parts();
        // The probe answer is cut at the limit; a metrics answer over it is refused.
        let body = match Limited::new(body, max_body).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if max_body == MAX_PROBE_BODY => {
                tracing::debug!("probe body cut: {e}");
                Bytes::new()
            }
            Err(e) => return Err(format!("body: {e}")),
        };
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))?
}

/// `grpc.health.v1.Health/Check` over plain-text HTTP/2; true when `SERVING`.
async fn grpc_health_check(
    target: SocketAddr,
    source: Option<IpAddr>,
    service: &str,
    user_agent: Option<HeaderValue>,
) -> Result<bool, String> {
    let stream = connect(target, source)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // HealthCheckRequest { string service = 1; } behind gRPC's 5-byte frame header.
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(xds::grpc::HEADER_LEN + msg.len());
    frame.put_slice(&xds::grpc::header(msg.len()));
    frame.put(msg);
    let uri = format!("http://{target}/grpc.health.v1.Health/Check");
    let mut req = Request::post(uri)
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame.freeze()))
        .map_err(|e| format!("request: {e}"))?;
    if let Some(ua) = user_agent {
        req.headers_mut().insert(http::header::USER_AGENT, ua);
    }
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = resp.into_parts();
    let collected = Limited::new(body, 64 * 1024)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    let trailers = collected.trailers().cloned();
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if grpc_status != "0" {
        return Err(format!("grpc-status {grpc_status:?}"));
    }
    let mut data = collected.to_bytes();
    if data.len() < 5 {
        return Err("empty health response".into());
    }
    data.advance(5);
    // HealthCheckResponse { ServingStatus status = 1; } SERVING = 1.
    let mut status = 0u64;
    while data.has_remaining() {
        let tag = get_varint(&mut data).ok_or("bad protobuf")?;
        match tag & 7 {
            0 => {
                let v = get_varint(&mut data).ok_or("bad protobuf")?;
                if tag >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let len = get_varint(&mut data).ok_or("bad protobuf")? as usize;
                if len > data.remaining() {
                    return Err("bad protobuf".into());
                }
                data.advance(len);
            }
            _ => return Err("bad protobuf".into()),
        }
    }
    Ok(status == 1)
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn get_varint(buf: &mut Bytes) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// A response with a body and content type.
pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    response(
        status,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

/// Accepts HTTP/1.1 connections on `listener` and answers each request with `handler(request,
/// peer)` until `shutdown` is cancelled; then stops accepting, lets requests in flight finish
/// (up to a few seconds) and returns. Headers must arrive within [`HEADER_READ_TIMEOUT`] and fit
/// in [`MAX_REQUEST_HEAD`].
pub async fn serve_http<H, F>(listener: TcpListener, shutdown: CancellationToken, handler: H)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a little instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let fut = handler(req, peer);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_paths() {
        assert!(is_app_probe_path("/app-health/httpbin/livez"));
        assert!(is_app_probe_path("/app-lifecycle/c/prestopz"));
        assert!(!is_app_probe_path("/app-health//livez"));
        assert!(!is_app_probe_path("/app-health/a/b/livez"));
        assert!(!is_app_probe_path("/app-health/a/healthz"));
        assert!(!is_app_probe_path("/other/a/livez"));
    }

    #[test]
    fn parses_istio_probers() {
        let json = r#"{"/app-health/httpbin/livez":{"httpGet":{"path":"/status/200","port":80,"scheme":"HTTP"},"timeoutSeconds":1},
            "/app-health/httpbin/readyz":{"tcpSocket":{"port":8080},"timeoutSeconds":3},
            "/app-health/grpc/startupz":{"grpc":{"port":9090,"service":"x"}}}"#;
        let p = KubeAppProbers::parse(json).unwrap();
        assert_eq!(
            p.0["/app-health/httpbin/livez"],
            AppProbe::Http {
                port: 80,
                path: "/status/200".into(),
                https: false,
                headers: vec![],
                timeout: Duration::from_secs(1)
            }
        );
        assert_eq!(
            p.0["/app-health/httpbin/readyz"],
            AppProbe::Tcp {
                port: 8080,
                timeout: Duration::from_secs(3)
            }
        );
        assert_eq!(
            p.0["/app-health/grpc/startupz"],
            AppProbe::Grpc {
                port: 9090,
                service: "x".into(),
                timeout: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn rejects_bad_probers() {
        let e = KubeAppProbers::parse(r#"{"/bad":{"tcpSocket":{"port":1}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ISTIO_KUBE_APP_PROBERS: /bad:"), "{e}");
        let e = KubeAppProbers::parse(r#"{"/app-health/a/livez":{"httpGet":{"port":"http"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be an integer"), "{e}");
        let e = KubeAppProbers::parse(r#"{"/app-health/a/livez":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly one"), "{e}");
        assert!(KubeAppProbers::parse("").unwrap().0.is_empty());
        assert!(KubeAppProbers::parse("{").is_err());
    }

    #[test]
    fn parses_prometheus_annotations() {
        assert_eq!(
            AppMetrics::parse(r#"{"scrape":"true","path":"/m","port":"8080"}"#, 15020).unwrap(),
            Some(AppMetrics {
                port: 8080,
                path: "/m".into()
            })
        );
        assert_eq!(
            AppMetrics::parse(r#"{"scrape":"true"}"#, 15020).unwrap(),
            Some(AppMetrics {
                port: 80,
                path: "/metrics".into()
            })
        );
        assert_eq!(
            AppMetrics::parse(r#"{"scrape":"false"}"#, 15020).unwrap(),
            None
        );
        assert!(AppMetrics::parse(r#"{"port":"15020"}"#, 15020).is_err());
        assert!(AppMetrics::parse(r#"{"port":"x"}"#, 15020).is_err());
    }

    #[test]
    fn metrics_format_negotiation() {
        assert_eq!(
            negotiate_metrics_format("text/plain; version=0.0.4"),
            metrics::CONTENT_TYPE
        );
        assert_eq!(
            negotiate_metrics_format("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert_eq!(
            negotiate_metrics_format("application/openmetrics-text"),
            "application/openmetrics-text; version=0.0.1; charset=utf-8"
        );
    }

    #[test]
    fn varints() {
        let mut b = BytesMut::new();
        put_varint(&mut b, 300);
        let mut bytes = b.freeze();
        assert_eq!(get_varint(&mut bytes), Some(300));
    }
}
