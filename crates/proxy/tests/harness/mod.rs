//! In-process harness for the sidecar: fake apps, proxies on loopback with a mocked original
//! destination, and a client, each in a line or two. No root, no iptables.
//!
//! ```ignore
//! let app = harness::App::start("httpbin").await;
//! let server = harness::Sidecar::builder(&server_yaml).inbound_to(app.addr).start().await;
//! let client = harness::Sidecar::builder(&client_yaml).start().await;
//! let resp = client.get(VIP, "/headers").await;
//! ```

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::config::{ConfigStore, ProxyConfig};
use proxy::orig_dst::StaticOrigDst;
use proxy::telemetry::{
    AccessLogEncoding, AccessLogOptions, MemorySink, Telemetry, TelemetryOptions,
};
use proxy::{Proxy, ProxyInputs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

pub type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

/// A fake application: HTTP/1 and HTTP/2 (prior knowledge), echoing what it sees.
///
/// - `/headers` (any other path too): JSON `{"app", "path", "query", "method", "version", "remote",
///   "headers"}`
/// - `/status/<code>`: that status
/// - `/hold`: waits until [`App::release`]
/// - `/echo`: streams the request body back
/// - `/upload`: reads the whole request body, then answers its length as text
/// - `content-type: application/grpc`: echoes each data frame as it comes, then trailers
///   `grpc-status: 0`
/// - `Upgrade: websocket`: 101, then echoes bytes on the upgraded connection
pub struct App {
    pub addr: SocketAddr,
    pub name: String,
    gate: watch::Sender<bool>,
    holding: Arc<AtomicUsize>,
    pub hits: Arc<AtomicUsize>,
}

impl App {
    pub async fn start(name: &str) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let (gate, gate_rx) = watch::channel(false);
        let holding = Arc::new(AtomicUsize::new(0));
        let hits = Arc::new(AtomicUsize::new(0));
        let name_s = name.to_string();
        let (h, hi) = (holding.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, remote)) = listener.accept().await else {
                    continue;
                };
                let (name, gate_rx, h, hi) =
                    (name_s.clone(), gate_rx.clone(), h.clone(), hi.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        app_handle(
                            name.clone(),
                            remote,
                            gate_rx.clone(),
                            h.clone(),
                            hi.clone(),
                            req,
                        )
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        App {
            addr,
            name: name.to_string(),
            gate,
            holding,
            hits,
        }
    }

    /// Lets every `/hold` request (current and future) finish.
    pub fn release(&self) {
        let _ = self.gate.send(true);
    }

    /// Waits until `n` `/hold` requests are being held.
    pub async fn wait_holding(&self, n: usize) {
        for _ in 0..1000 {
            if self.holding.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("app {} never held {n} requests", self.name);
    }
}

async fn app_handle(
    name: String,
    remote: SocketAddr,
    mut gate: watch::Receiver<bool>,
    holding: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
    mut req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let mut path = req.uri().path().to_string();
    let is_grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if req.headers().get("upgrade").is_some() {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(Bytes::new()))
            .expect("response");
        return Ok(resp);
    }
    if is_grpc {
        let body = GrpcEcho {
            inner: req.into_body(),
            done: false,
        };
        let resp = Response::builder()
            .header("content-type", "application/grpc")
            .header("x-app", name.as_str())
            .body(body.boxed())
            .expect("response");
        return Ok(resp);
    }
    if path == "/hold" {
        holding.fetch_add(1, Ordering::SeqCst);
        let _ = gate.wait_for(|open| *open).await;
        holding.fetch_sub(1, Ordering::SeqCst);
    }
    if path.strip_prefix("/fail-if/") == Some(name.as_str()) {
        // `/fail-if/<name>`: this app fails, the others answer.
        return Ok(Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("x-app", name.as_str())
            .body(full(""))
            .expect("response"));
    }
    if let Some(rest) = path.strip_prefix("/flaky") {
        // Every other request to `/flaky...` (the first, third, ...) fails; the others are
        // served as `rest` (`/flaky/upload` as `/upload`).
        if hits.load(Ordering::SeqCst) % 2 == 1 {
            return Ok(Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("x-app", name.as_str())
                .body(full(""))
                .expect("response"));
        }
        path = if rest.is_empty() {
            "/".to_string()
        } else {
            rest.to_string()
        };
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        return Ok(Response::builder()
            .status(code)
            .header("x-app", name.as_str())
            .body(full(""))
            .expect("response"));
    }
    if path == "/upload" {
        let received = match req.into_body().collect().await {
            Ok(b) => b.to_bytes().len().to_string(),
            Err(e) => format!("body failed: {e}"),
        };
        return Ok(Response::builder()
            .header("x-app", name.as_str())
            .body(full(received))
            .expect("response"));
    }
    if path == "/echo" {
        let body = req
            .into_body()
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            .boxed();
        return Ok(Response::builder()
            .header("x-app", name.as_str())
            .body(body)
            .expect("response"));
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let json = serde_json::json!({
        "app": name,
        "path": path,
        "query": req.uri().query(),
        "method": req.method().as_str(),
        "version": format!("{:?}", req.version()),
        "remote": remote.to_string(),
        "headers": headers,
    });
    let resp = Response::builder()
        .header("content-type", "application/json")
        .header("server", "fake-app")
        .header("x-app", name.as_str())
        .body(full(json.to_string()))
        .expect("response");
    Ok(resp)
}

/// Echoes data frames as they arrive, then ends with gRPC trailers.
struct GrpcEcho {
    inner: Incoming,
    done: bool,
}

impl Body for GrpcEcho {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => {
                    self.done = true;
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", HeaderValue::from_static("0"));
                    t.insert("grpc-message", HeaderValue::from_static("ok"));
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A request body fed from a channel, for streaming clients.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A server-first TCP service (SMTP-like): sends a banner, then echoes lines.
pub async fn banner_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if s.write_all(b"220 banner ready\r\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A port with nothing listening on it, for the life of the test process: bound and never
/// listened on, so connections to it are refused. A port bound and let go at once could be
/// taken by a listener of a test running beside this one (a sidecar's), which would then
/// receive what was meant to be refused.
pub async fn closed_port() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    std::mem::forget(socket);
    addr
}

/// A running sidecar on loopback ports, with its access log in memory.
pub struct Sidecar {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub orig_dst: Arc<StaticOrigDst>,
    pub log: MemorySink,
    pub telemetry: Telemetry,
    pub store: Arc<ConfigStore>,
    /// The proxy's inputs (its admin view: `proxy::dump::TrafficAdmin`).
    pub inputs: Arc<ProxyInputs>,
    shutdown: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

pub struct SidecarBuilder {
    pub cfg: ProxyConfig,
    resources: String,
    inbound_to: Option<SocketAddr>,
    config_file: Option<PathBuf>,
    identity: Option<Arc<identity::IdentityManager>>,
    workers: usize,
    tracing: Option<proxy::telemetry::TracingOptions>,
}

impl Sidecar {
    /// A sidecar with resources from YAML.
    pub fn builder(resources_yaml: &str) -> SidecarBuilder {
        let cfg = ProxyConfig {
            outbound_addr: "127.0.0.1:0".parse().expect("addr"),
            inbound_addr: "127.0.0.1:0".parse().expect("addr"),
            drain_duration: Duration::from_secs(10),
            reload_interval: Duration::from_millis(20),
            ..ProxyConfig::default()
        };
        SidecarBuilder {
            cfg,
            resources: resources_yaml.to_string(),
            inbound_to: None,
            config_file: None,
            identity: None,
            workers: 0,
            tracing: None,
        }
    }

    /// Stops accepting and drains; returns when `run` has returned.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Access-log lines as JSON, waiting until there are at least `n`.
    pub async fn log_lines(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..500 {
            self.telemetry.flush(Duration::from_secs(1)).await;
            let lines = self.log.lines();
            if lines.len() >= n {
                return lines
                    .iter()
                    .map(|l| serde_json::from_str(l).expect("json log line"))
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} access-log lines, got: {:?}", self.log.lines());
    }

    /// Opens a client connection to the outbound listener headed for `dst`.
    pub async fn connect_outbound(&self, dst: SocketAddr) -> TcpStream {
        connect_via(self.outbound, &self.orig_dst, dst).await
    }

    /// An HTTP/1.1 client connection through the outbound listener to `dst`.
    pub async fn h1(&self, dst: SocketAddr) -> hyper::client::conn::http1::SendRequest<BoxBody> {
        h1_client(self.connect_outbound(dst).await).await
    }

    /// `GET path` with `Host: host` through the outbound listener to `dst`.
    pub async fn get(&self, dst: SocketAddr, host: &str, path: &str) -> (Response<()>, Bytes) {
        let mut tx = self.h1(dst).await;
        send(&mut tx, get_req(host, path)).await
    }

    /// POSTs `body` to the app's `/echo` on `host` over HTTP/2 (prior knowledge) through the
    /// outbound listener to `dst`; returns the body that comes back. Panics unless the answer is
    /// a 200 and the exchange ends within 30 s.
    pub async fn h2_echo(&self, dst: SocketAddr, host: &str, body: Bytes) -> Bytes {
        let mut tx = h2_client(self.connect_outbound(dst).await).await;
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{host}/echo"))
            .body(Full::new(body).map_err(|n| match n {}).boxed())
            .expect("request");
        let exchange = async {
            let resp = tx.send_request(req).await.expect("response");
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.expect("body").to_bytes()
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("the exchange ends within 30 s")
    }
}

impl Sidecar {
    /// POSTs `body` to the app's `/upload` on `host` over HTTP/2 (prior knowledge) through the
    /// outbound listener to `dst`; returns how many bytes the app says it received, or `None`
    /// when the exchange did not end within `limit` (a stalled upload).
    pub async fn h2_upload(
        &self,
        dst: SocketAddr,
        host: &str,
        body: Bytes,
        limit: Duration,
    ) -> Option<usize> {
        let mut tx = h2_client(self.connect_outbound(dst).await).await;
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{host}/upload"))
            .body(Full::new(body).map_err(|n| match n {}).boxed())
            .expect("request");
        let exchange = async {
            let resp = tx.send_request(req).await.expect("response");
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            text.parse::<usize>()
                .unwrap_or_else(|_| panic!("the app answered {text:?}"))
        };
        tokio::time::timeout(limit, exchange).await.ok()
    }
}

impl SidecarBuilder {
    /// Inbound connections are "headed for" `app` (the pod address in production).
    pub fn inbound_to(mut self, app: SocketAddr) -> Self {
        self.inbound_to = Some(app);
        self
    }

    /// Gives the sidecar a workload identity: mTLS to and from mesh peers (see [`Mesh`]).
    pub fn identity(mut self, manager: Arc<identity::IdentityManager>) -> Self {
        self.identity = Some(manager);
        self
    }

    /// Serves connections on `n` worker threads of their own, as a real sidecar does
    /// (`--concurrency`); by default they run on the test's runtime.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// A gateway (`ama proxy router`) instead of a sidecar: no capture listeners; its Gateway
    /// ports are bound on 127.0.0.1.
    pub fn router(mut self) -> Self {
        self.cfg.router = true;
        self.cfg.server_header = Some(proxy::gateway::SERVER_HEADER);
        self.cfg.gateway_bind = "127.0.0.1".parse().expect("addr");
        self
    }

    /// Reports trace spans as `opts` says.
    pub fn tracing(mut self, opts: proxy::telemetry::TracingOptions) -> Self {
        self.tracing = Some(opts);
        self
    }

    /// Watch this file for resources (the YAML given to `builder` is ignored).
    pub fn config_file(mut self, path: PathBuf) -> Self {
        self.config_file = Some(path);
        self
    }

    pub async fn start(self) -> Sidecar {
        let resources = match &self.config_file {
            Some(p) => xds::ProxyResources::load(p).expect("config file"),
            None => xds::ProxyResources::parse(&self.resources).expect("resources"),
        };
        let log = MemorySink::new();
        let telemetry = Telemetry::new(TelemetryOptions {
            access_log: Some(AccessLogOptions::new(AccessLogEncoding::Json, log.sink())),
            tracing: self.tracing,
        })
        .expect("telemetry");
        let cfg = Arc::new(self.cfg);
        let store = Arc::new(ConfigStore::new(resources, cfg.clone()).expect("usable resources"));
        let tls = self
            .identity
            .map(|m| proxy::tls::MeshTls::new(m).expect("mesh TLS config"));
        let pi = ProxyInputs::with_tls(cfg, store.clone(), telemetry.clone(), tls);
        let orig_dst = Arc::new(StaticOrigDst::new(self.inbound_to));
        let mut proxy = if pi.cfg.router {
            Proxy::router(pi)
        } else {
            Proxy::new(pi, orig_dst.clone()).await.expect("proxy binds")
        };
        if self.workers > 0 {
            proxy =
                proxy.on_workers(proxy::workers::Workers::start(self.workers).expect("workers"));
        }
        if let Some(p) = self.config_file {
            proxy = proxy.watch_config(p);
        }
        let (outbound, inbound) = (proxy.outbound_addr(), proxy.inbound_addr());
        let inputs = proxy.inputs().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(proxy.run(async move {
            let _ = rx.await;
        }));
        Sidecar {
            outbound,
            inbound,
            orig_dst,
            log,
            telemetry,
            store,
            inputs,
            shutdown: Some(tx),
            done: Some(done),
        }
    }
}

/// Connects to `listener`, telling `orig_dst` that this connection was headed for `dst`.
pub async fn connect_via(
    listener: SocketAddr,
    orig_dst: &StaticOrigDst,
    dst: SocketAddr,
) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    orig_dst.register(socket.local_addr().expect("local"), dst);
    socket.connect(listener).await.expect("connect to proxy")
}

pub async fn h1_client(stream: TcpStream) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn.with_upgrades());
    tx
}

pub async fn h2_client(stream: TcpStream) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let (tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    tx
}

pub fn get_req(host: &str, path: &str) -> Request<BoxBody> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .header("user-agent", "curl/7.58.0")
        .header("accept", "*/*")
        .body(full(Bytes::new()))
        .expect("request")
}

/// Sends and reads the whole body.
pub async fn send(
    tx: &mut hyper::client::conn::http1::SendRequest<BoxBody>,
    req: Request<BoxBody>,
) -> (Response<()>, Bytes) {
    tx.ready().await.expect("connection ready");
    let resp = tx.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (Response::from_parts(parts, ()), body)
}

/// The JSON the fake app returned.
pub fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Resources for a one-service mesh: `httpbin-service` at `10.109.118.31:80` with the given
/// endpoints (`(ip, port)` dialled for service port 80) and LB policy, plus the client workload
/// `ubuntu` at 127.0.0.1 (so the server side trusts it as a mesh peer).
pub fn httpbin_yaml(endpoints: &[SocketAddr], lb: &str, extra: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| {
            format!(
                "  - {{address: {}, ports: {{80: {}}}, workloadUid: httpbin-uid}}",
                e.ip(),
                e.port()
            )
        })
        .collect();
    format!(
        r#"
self: {{name: ubuntu-deployment-cc86cc647-vsvbh, namespace: default}}
workloads:
- uid: ubuntu-uid
  name: ubuntu-deployment-cc86cc647-vsvbh
  namespace: default
  workloadName: ubuntu-deployment
  addresses: [127.0.0.1]
  labels: {{app: ubuntu}}
- uid: httpbin-uid
  name: httpbin-deployment-9bfd96975-px5lv
  namespace: default
  workloadName: httpbin-deployment
  labels: {{app: httpbin, version: v1}}
services:
- hostname: httpbin-service.default.svc.cluster.local
  name: httpbin-service
  namespace: default
  vips: [10.109.118.31]
  ports: [{{name: http, port: 80}}]
  lbPolicy: {lb}
  endpoints:{}
{extra}
"#,
        if eps.is_empty() {
            " []".to_string()
        } else {
            format!("\n{}", eps.join("\n"))
        }
    )
}

/// The seed's service VIP.
pub fn vip() -> SocketAddr {
    "10.109.118.31:80".parse().expect("vip")
}

/// Resources of the server side (`httpbin`), trusting the client workload at 127.0.0.1.
pub fn server_yaml() -> String {
    r#"
self: {uid: httpbin-uid}
workloads:
- uid: httpbin-uid
  name: httpbin-deployment-9bfd96975-px5lv
  namespace: default
  workloadName: httpbin-deployment
  labels: {app: httpbin, version: v1}
- uid: ubuntu-uid
  name: ubuntu-deployment-cc86cc647-vsvbh
  namespace: default
  workloadName: ubuntu-deployment
  addresses: [127.0.0.1]
  labels: {app: ubuntu}
"#
    .to_string()
}

/// An in-test mesh CA that hands out workload identities.
pub struct Mesh {
    pub ca: Arc<identity::CertificateAuthority>,
}

impl Mesh {
    /// A fresh self-signed root for `cluster.local`.
    pub fn new() -> Mesh {
        Mesh {
            ca: Arc::new(
                identity::CertificateAuthority::generate("cluster.local").expect("mesh CA"),
            ),
        }
    }

    /// A workload identity `spiffe://cluster.local/ns/<ns>/sa/<sa>` signed by this CA.
    pub async fn identity(&self, ns: &str, sa: &str) -> Arc<identity::IdentityManager> {
        let id = identity::SpiffeId::new("cluster.local", ns, sa).expect("spiffe id");
        let provider = Arc::new(identity::LocalCaProvider::new(self.ca.clone(), id.clone()));
        identity::IdentityManager::new(id, provider, identity::RotationOptions::default())
            .await
            .expect("workload certificate")
    }
}

/// The value of the first sample of metric `name` whose labels contain all of `labels`
/// (`key="value"` strings), in Prometheus text; `None` when no sample matches.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
