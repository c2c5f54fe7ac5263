//! The HTTP proxy shared by the inbound and outbound sides: serve a downstream connection
//! (HTTP/1.1 or HTTP/2), and for each request pick the upstream, rewrite headers, forward with
//! streaming bodies (trailers included), handle websocket upgrades, and record the request.
//!
//! Where the two sides differ (how the upstream is chosen, which headers are trusted, labels),
//! [`Direction`] says which one this is. Local replies follow Envoy's codes, bodies and response
//! flags (`UH`, `UF`, `URX`, `UO`, `UT`, `NR`, `UC`, `UR`); a client that goes away is logged `DC`,
//! a request hyper cannot parse is logged `DPE`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ProxyInputs;
use crate::addr::{ClientAddr, EndpointAddr, OrigDstAddr};
use crate::body::{BoxError, ProxyBody, empty, full};
use crate::config::{PeerInfo, Snapshot};
use crate::conn_exec::{self, ConnExec};
use crate::drain::DrainWatcher;
use crate::headers;
use crate::pool::{PoolError, PoolKey, Recycle};
use crate::route::{self, Target};
use crate::tcp::{ByteCounts, copy_bidirectional};
use crate::telemetry::{
    MetricLabels, RequestProtocol, RequestRecord, ResponseFlags, SecurityPolicy, Telemetry,
};
use crate::tls::MeshPeer;

/// Which side of the pod a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the local app, toward another service (15001).
    Outbound,
    /// From another pod, toward the local app (15006).
    Inbound,
}

/// What every request on one downstream connection shares.
#[derive(Debug)]
pub struct ConnCtx {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The downstream peer.
    pub client: ClientAddr,
    /// Where the client meant to go.
    pub orig_dst: OrigDstAddr,
    /// TLS SNI, when mTLS was terminated here; `None` prints `-`.
    pub sni: Option<Arc<str>>,
    /// The mTLS client, when mTLS was terminated here: principal and XFCC element.
    pub peer: Option<MeshPeer>,
    /// Everything the proxy has.
    pub pi: Arc<ProxyInputs>,
    /// The label sets this connection's last request resolved.
    pub labels: LabelMemo,
}

/// The label sets the last request of a connection resolved, before and after it had an
/// endpoint, so the next request that goes the same way reuses them instead of building 19
/// labels and interning them again.
#[derive(Default)]
pub struct LabelMemo {
    routed: Mutex<Option<Memo>>,
    upstream: Mutex<Option<Memo>>,
}

impl std::fmt::Debug for LabelMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LabelMemo")
    }
}

/// What [`labels_for`] read to make `labels`. The `Arc`s are held, so comparing by identity
/// cannot mistake a new value at a reused address for the old one.
struct Memo {
    version: u64,
    peer: Option<Arc<PeerInfo>>,
    service_host: Arc<str>,
    service_name: Arc<str>,
    service_namespace: Arc<str>,
    dest: Option<Arc<PeerInfo>>,
    server: Option<Arc<str>>,
    labels: Arc<MetricLabels>,
}

impl Memo {
    fn matches(
        &self,
        snap: &Snapshot,
        target: &Target,
        dest: &Option<Arc<PeerInfo>>,
        server: Option<&Arc<str>>,
    ) -> bool {
        fn same<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        self.version == snap.version
            && same(&self.peer, &target.peer)
            && Arc::ptr_eq(&self.service_host, &target.service_host)
            && Arc::ptr_eq(&self.service_name, &target.service_name)
            && Arc::ptr_eq(&self.service_namespace, &target.service_namespace)
            && same(&self.dest, dest)
            && self.server.as_deref() == server.map(|s| &**s)
    }
}

/// The shared labels of a request of `ctx` to `target` ([`labels_for`] with the endpoint's
/// workload `dest`, and the principal the upstream's certificate proved, `server`), from the
/// connection's memo when the last request went the same way.
fn request_labels(
    ctx: &ConnCtx,
    snap: &Snapshot,
    target: &Target,
    dest: Option<Arc<PeerInfo>>,
    server: Option<&Arc<str>>,
) -> Arc<MetricLabels> {
    let slot = if dest.is_some() || server.is_some() {
        &ctx.labels.upstream
    } else {
        &ctx.labels.routed
    };
    let mut memo = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = memo.as_ref()
        && m.matches(snap, target, &dest, server)
    {
        return m.labels.clone();
    }
    let mut labels = labels_for(ctx, snap, Some(target), dest.clone());
    if let Some(server) = server {
        labels.destination_principal = server.clone();
    }
    let labels = ctx.pi.telemetry.labels(labels);
    *memo = Some(Memo {
        version: snap.version,
        peer: target.peer.clone(),
        service_host: target.service_host.clone(),
        service_name: target.service_name.clone(),
        service_namespace: target.service_namespace.clone(),
        dest,
        server: server.cloned(),
        labels: labels.clone(),
    });
    labels
}

/// The labels of a request that has not been routed yet: every peer `unknown`.
fn unrouted_labels() -> Arc<MetricLabels> {
    static UNROUTED: OnceLock<Arc<MetricLabels>> = OnceLock::new();
    UNROUTED
        .get_or_init(|| Arc::new(MetricLabels::unknown(crate::telemetry::Reporter::Source)))
        .clone()
}

/// The request's authority: the URI's (HTTP/2, absolute form), else the `Host` header.
fn request_authority<'a>(uri: &'a Uri, headers: &'a http::HeaderMap) -> Option<&'a str> {
    match uri.authority() {
        Some(a) => Some(a.as_str()),
        None => headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    }
}

/// Serves one downstream HTTP connection until it closes or a drain ends it gracefully.
pub async fn serve<I>(ctx: Arc<ConnCtx>, io: I, http2: bool, drain: DrainWatcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| handle(svc_ctx.clone(), req));
    let cfg = &ctx.pi.cfg;
    let result = if http2 {
        // Each stream's service future runs in this connection's task (see `conn_exec`).
        let exec = ConnExec::default();
        let conn = http2::Builder::new(exec.clone())
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(cfg.max_request_headers).unwrap_or(u32::MAX))
            .serve_connection(TokioIo::new(exec.hold_flushes(io)), svc);
        let mut conn = conn_exec::drive(exec, conn);
        tokio::select! {
            r = &mut conn => r,
            _ = drain.signaled() => {
                if let Some(c) = conn.conn_mut() {
                    c.graceful_shutdown();
                }
                conn.await
            }
        }
    } else {
        // hyper's own header read timer would be armed for every request head (a new timer in
        // the worker's wheel per request, which wakes the worker's driver through its eventfd
        // whenever the wheel is otherwise empty); the idle watch below needs one per connection.
        let moved = Arc::new(AtomicU64::new(0));
        let io = IdleWatched {
            io,
            moved: moved.clone(),
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(cfg.max_request_headers.max(8192))
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            () = idle(&moved, cfg.idle_timeout) => {
                tracing::debug!(client = %ctx.client, timeout = ?cfg.idle_timeout, "closing an idle downstream connection");
                Ok(())
            }
            _ = drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        if e.is_parse() || e.is_parse_too_large() {
            // hyper has answered 400 (or 431) and closed; no request reached `handle`.
            let snap = ctx.pi.store.load();
            let mut rec = RequestRecord::new(
                SystemTime::now(),
                ctx.pi.telemetry.labels(labels_for(&ctx, &snap, None, None)),
            );
            rec.response_code = if e.is_parse_too_large() { 431 } else { 400 };
            rec.response_flags = ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR;
            rec.response_code_details = Some(if e.is_parse_too_large() {
                "http1.headers_too_large".into()
            } else {
                "http1.codec_error".into()
            });
            rec.downstream_local_address = Some(ctx.orig_dst.get());
            rec.downstream_remote_address = Some(ctx.client.get());
            rec.requested_server_name = ctx.sni.clone();
            ctx.pi.telemetry.request(rec);
        } else {
            tracing::debug!(error = %e, client = %ctx.client, "downstream connection ended with an error");
        }
    }
}

/// Downstream I/O that counts the reads and writes that moved bytes, for [`idle`].
struct IdleWatched<I> {
    io: I,
    moved: Arc<AtomicU64>,
}

impl<I> IdleWatched<I> {
    fn moved(&self) {
        // One writer (this connection's task), read by the same task: no read-modify-write.
        self.moved
            .store(self.moved.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleWatched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleWatched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Resolves once `moved` has not changed for `timeout`, looking every quarter of it, so a quiet
/// connection is closed between 1 and 1.25 × `timeout` after its last byte. A kept-alive
/// connection waiting for its next request, a client that never finishes its request head and
/// a request on which nothing moves either way all count as idle (Envoy: `idle_timeout`,
/// `request_headers_timeout` and `stream_idle_timeout`).
async fn idle(moved: &AtomicU64, timeout: Duration) {
    let step = (timeout / 4).max(Duration::from_millis(1));
    let mut seen = moved.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(step).await;
        let now = moved.load(Ordering::Relaxed);
        if now == seen {
            quiet += step;
            if quiet >= timeout {
                return;
            }
        } else {
            seen = now;
            quiet = Duration::ZERO;
        }
    }
}

/// Metric labels for a connection or request of `ctx` going to `target`, whose chosen endpoint
/// runs `dest` (if known).
pub fn labels_for(
    ctx: &ConnCtx,
    snap: &Snapshot,
    target: Option<&Target>,
    dest: Option<Arc<PeerInfo>>,
) -> MetricLabels {
    let me = &snap.me_info;
    let mut l = MetricLabels::unknown(match ctx.direction {
        Direction::Outbound => crate::telemetry::Reporter::Source,
        Direction::Inbound => crate::telemetry::Reporter::Destination,
    });
    let (src, dst): (Arc<PeerInfo>, Option<Arc<PeerInfo>>) = match ctx.direction {
        Direction::Outbound => (
            me.clone(),
            dest.or_else(|| target.and_then(|t| t.peer.clone())),
        ),
        Direction::Inbound => (
            snap.peer_by_ip(ctx.client.get().ip())
                .cloned()
                .unwrap_or_else(|| Arc::new(PeerInfo::unknown())),
            Some(me.clone()),
        ),
    };
    l.source_workload = src.workload.clone();
    l.source_workload_namespace = src.namespace.clone();
    l.source_principal = src.principal.clone();
    l.source_app = src.app.clone();
    l.source_version = src.version.clone();
    l.source_canonical_service = src.canonical_service.clone();
    l.source_canonical_revision = src.canonical_revision.clone();
    l.source_cluster = src.cluster.clone();
    if let Some(dst) = dst {
        l.destination_workload = dst.workload.clone();
        l.destination_workload_namespace = dst.namespace.clone();
        l.destination_principal = dst.principal.clone();
        l.destination_app = dst.app.clone();
        l.destination_version = dst.version.clone();
        l.destination_canonical_service = dst.canonical_service.clone();
        l.destination_canonical_revision = dst.canonical_revision.clone();
        l.destination_cluster = dst.cluster.clone();
    }
    if let Some(t) = target {
        l.destination_service = t.service_host.clone();
        l.destination_service_name = t.service_name.clone();
        l.destination_service_namespace = t.service_namespace.clone();
    }
    l.connection_security_policy = match ctx.direction {
        Direction::Outbound => SecurityPolicy::Unknown,
        Direction::Inbound => SecurityPolicy::None,
    };
    if let Some(peer) = &ctx.peer {
        // Proven by the handshake: these win over what the addresses suggest.
        l.source_principal = peer.principal.clone();
        if let Some(tls) = &ctx.pi.tls {
            l.destination_principal = tls.own_principal().clone();
        }
        l.connection_security_policy = SecurityPolicy::MutualTls;
    }
    l
}

/// The request's access-log record while it is being served. Dropped unfinished (the client went
/// away, so hyper dropped the request), it is logged with `DC`.
struct Log {
    rec: Option<RequestRecord>,
    t0: Instant,
    telemetry: Telemetry,
    received: Arc<AtomicU64>,
}

impl Log {
    fn rec(&mut self) -> &mut RequestRecord {
        // `rec` is only taken by `finish`/`drop`, which consume the log.
        self.rec
            .get_or_insert_with(|| RequestRecord::new(SystemTime::now(), unrouted_labels()))
    }

    fn finish(&mut self, sent: u64, flags: ResponseFlags, grpc_status: Option<u16>) {
        if let Some(mut rec) = self.rec.take() {
            rec.response_flags.insert(flags);
            rec.bytes_sent = sent;
            rec.bytes_received = self.received.load(Ordering::Relaxed);
            rec.duration = self.t0.elapsed();
            if grpc_status.is_some() {
                rec.grpc_status = grpc_status;
            }
            self.telemetry.request(rec);
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if self
            .rec
            .as_ref()
            .is_some_and(|r| r.response_code_details.is_none())
        {
            self.rec().response_code_details = Some("downstream_remote_disconnect".into());
        }
        self.finish(0, ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION, None);
    }
}

/// A response body that counts what it sends and finishes the request's log at its end.
struct LoggedBody {
    inner: ProxyBody,
    log: Option<Log>,
    sent: u64,
    grpc_status: Option<u16>,
    /// The upstream HTTP/1 connection, back to the pool once the response has been read.
    recycle: Option<Recycle>,
}

impl LoggedBody {
    fn finish(&mut self, flags: ResponseFlags) {
        if let Some(mut log) = self.log.take() {
            log.finish(self.sent, flags, self.grpc_status);
        }
        if let Some(r) = self.recycle.take()
            && flags == ResponseFlags::NONE
        {
            r.done();
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.sent += d.len() as u64;
                } else if let Some(t) = frame.trailers_ref() {
                    self.grpc_status = grpc_status(t).or(self.grpc_status);
                }
                if self.inner.is_end_stream() {
                    self.finish(ResponseFlags::NONE);
                }
            }
            Poll::Ready(None) => self.finish(ResponseFlags::NONE),
            Poll::Ready(Some(Err(e))) => {
                // The upstream went away mid-response.
                let flags = if is_reset(e.as_ref()) {
                    ResponseFlags::UPSTREAM_REMOTE_RESET
                } else {
                    ResponseFlags::UPSTREAM_CONNECTION_TERMINATION
                };
                if let Some(log) = self.log.as_mut() {
                    log.rec().connection_termination_details =
                        Some("upstream_reset_after_response_started".into());
                }
                self.finish(flags);
            }
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.finish(ResponseFlags::NONE);
        } else if let Some(log) = self.log.as_mut() {
            // Dropped before its end: hyper gave up on the downstream.
            log.rec()
                .response_code_details
                .get_or_insert("downstream_remote_disconnect".into());
            self.finish(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
        }
    }
}

fn is_reset(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_reset() || h2.is_go_away();
        }
        cur = err.source();
    }
    false
}

fn grpc_status(h: &http::HeaderMap) -> Option<u16> {
    h.get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A request body that counts what it carries.
struct CountedBody {
    inner: Incoming,
    count: Arc<AtomicU64>,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.count.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A reply made by the proxy itself.
struct LocalReply {
    status: StatusCode,
    flags: ResponseFlags,
    details: &'static str,
    body: &'static str,
}

impl LocalReply {
    const NO_HEALTHY_UPSTREAM: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        flags: ResponseFlags::NO_HEALTHY_UPSTREAM,
        details: "no_healthy_upstream",
        body: "no healthy upstream",
    };
    const NO_ROUTE: LocalReply = LocalReply {
        status: StatusCode::NOT_FOUND,
        flags: ResponseFlags::NO_ROUTE_FOUND,
        details: "route_not_found",
        body: "",
    };
    const OVERFLOW: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        flags: ResponseFlags::UPSTREAM_OVERFLOW,
        details: "upstream_reset_before_response_started{overflow}",
        body: "upstream connect error or disconnect/reset before headers. reset reason: overflow",
    };
    /// Envoy's RBAC filter's denial ([`crate::authz`]).
    const RBAC_DENIED: LocalReply = LocalReply {
        status: StatusCode::FORBIDDEN,
        flags: ResponseFlags::NONE,
        details: crate::authz::DENIED_DETAILS,
        body: crate::authz::DENIED_BODY,
    };
    const TIMEOUT: LocalReply = LocalReply {
        status: StatusCode::GATEWAY_TIMEOUT,
        flags: ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
        details: "response_timeout",
        body: "upstream request timeout",
    };

    fn connect_failure(retries_exhausted: bool) -> LocalReply {
        LocalReply {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flags: if retries_exhausted {
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE
                    | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
            } else {
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE
            },
            details: "upstream_reset_before_response_started{connection_failure}",
            body: "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
        }
    }

    fn reset(remote: bool) -> LocalReply {
        if remote {
            LocalReply {
                status: StatusCode::SERVICE_UNAVAILABLE,
                flags: ResponseFlags::UPSTREAM_REMOTE_RESET,
                details: "upstream_reset_before_response_started{remote_reset}",
                body: "upstream connect error or disconnect/reset before headers. reset reason: remote reset",
            }
        } else {
            LocalReply {
                status: StatusCode::SERVICE_UNAVAILABLE,
                flags: ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                details: "upstream_reset_before_response_started{connection_termination}",
                body: "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            }
        }
    }

    fn respond(self, ctx: &ConnCtx, mut log: Log) -> Response<ProxyBody> {
        let rec = log.rec();
        rec.response_code = self.status.as_u16();
        rec.response_flags.insert(self.flags);
        rec.response_code_details = Some(self.details.into());
        let mut resp = Response::new(if self.body.is_empty() {
            empty()
        } else {
            full(self.body)
        });
        *resp.status_mut() = self.status;
        if !self.body.is_empty() {
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        if let Some(server) = &ctx.pi.cfg.server_header {
            resp.headers_mut().insert(header::SERVER, server.clone());
        }
        respond_logged(resp, log, None)
    }
}

fn respond_logged(
    resp: Response<ProxyBody>,
    log: Log,
    recycle: Option<Recycle>,
) -> Response<ProxyBody> {
    let (parts, inner) = resp.into_parts();
    let grpc = grpc_status(&parts.headers);
    let body = LoggedBody {
        inner,
        log: Some(log),
        sent: 0,
        grpc_status: grpc,
        recycle,
    };
    Response::from_parts(parts, body.boxed())
}

/// Serves one request.
async fn handle(
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let snap = ctx.pi.store.load();
    let downstream_version = req.version();
    let upgrade =
        downstream_version != Version::HTTP_2 && headers::is_upgrade_request(req.headers());
    let on_downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    // Headers the sidecar adds or removes, before they are logged.
    let h = req.headers_mut();
    headers::strip_hop_by_hop(h, upgrade);
    if ctx.direction == Direction::Inbound {
        // A verified mTLS peer is in the mesh; otherwise the address has to say so.
        let trusted = ctx.peer.is_some()
            || snap
                .peer_by_ip(ctx.client.get().ip())
                .is_some_and(|p| p.in_mesh);
        if !trusted {
            headers::strip_envoy_headers(h);
        }
    }
    headers::forward_client_cert(h, ctx.peer.as_ref().map(|p| &p.xfcc));
    let request_id = headers::ensure_request_id(h);
    headers::continue_trace(h, ctx.pi.cfg.trace_sampling);
    headers::set_forwarded_proto(h, if ctx.peer.is_some() { "https" } else { "http" });

    let mut log = Log {
        rec: None,
        t0: Instant::now(),
        telemetry: ctx.pi.telemetry.clone(),
        received: Arc::new(AtomicU64::new(0)),
    };
    {
        let rec = log.rec();
        rec.method = Some(req.method().clone());
        rec.path = req.uri().path_and_query().cloned();
        rec.protocol = Some(downstream_version);
        rec.request_id = Some(request_id);
        rec.user_agent = req.headers().get(header::USER_AGENT).cloned();
        rec.x_forwarded_for = req.headers().get(&headers::X_FORWARDED_FOR).cloned();
        rec.authority = match req.uri().authority() {
            Some(a) if downstream_version == Version::HTTP_2 => {
                HeaderValue::from_str(a.as_str()).ok()
            }
            _ => req.headers().get(header::HOST).cloned(),
        };
        rec.downstream_local_address = Some(ctx.orig_dst.get());
        rec.downstream_remote_address = Some(ctx.client.get());
        rec.requested_server_name = ctx.sni.clone();
        rec.route_name = Some(crate::route::default_route_name());
        let is_grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        rec.request_protocol = if is_grpc {
            RequestProtocol::Grpc
        } else {
            RequestProtocol::Http
        };
    }

    let route = match ctx.direction {
        Direction::Outbound => route::outbound_http(
            &snap,
            &ctx.pi,
            ctx.orig_dst,
            request_authority(req.uri(), req.headers()),
            req.uri().path(),
            req.headers(),
        ),
        Direction::Inbound => Ok(route::inbound(&snap, &ctx.pi, ctx.orig_dst)),
    };
    let target = match route {
        Ok(t) => t,
        Err(route::RouteError::NoRoute) => return Ok(LocalReply::NO_ROUTE.respond(&ctx, log)),
    };
    {
        let rec = log.rec();
        rec.labels = request_labels(&ctx, &snap, &target, None, None);
        rec.upstream_cluster = Some(target.cluster.clone());
        if let Some(r) = &target.route_name {
            rec.route_name = Some(r.clone());
        }
    }
    if ctx.direction == Direction::Inbound && ctx.pi.authz.denies_all(&snap, &ctx.pi.cfg) {
        return Ok(LocalReply::RBAC_DENIED.respond(&ctx, log));
    }
    if target.endpoints.is_empty() {
        return Ok(LocalReply::NO_HEALTHY_UPSTREAM.respond(&ctx, log));
    }
    let Some(_admitted) = ctx.pi.load.admit(&target.cluster, target.max_requests) else {
        return Ok(LocalReply::OVERFLOW.respond(&ctx, log));
    };

    // The upstream request: same method, path, headers and streaming body.
    let upstream_h2 = !upgrade && (downstream_version == Version::HTTP_2 || target.http2);
    let (mut parts, body) = req.into_parts();
    let authority = || {
        request_authority(&parts.uri, &parts.headers)
            .map(str::to_owned)
            .unwrap_or_else(|| ctx.orig_dst.to_string())
    };
    let pq = || parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let has_pq = parts.uri.path_and_query().is_some();
    if upstream_h2 {
        parts.version = Version::HTTP_2;
        // From an HTTP/2 client the URI is already `http://{authority}{path}`: kept as it is.
        let same = has_pq
            && parts.uri.scheme() == Some(&http::uri::Scheme::HTTP)
            && parts.uri.authority().is_some();
        if !same {
            match Uri::builder()
                .scheme("http")
                .authority(authority().as_str())
                .path_and_query(pq())
                .build()
            {
                Ok(u) => parts.uri = u,
                Err(_) => return Ok(LocalReply::NO_ROUTE.respond(&ctx, log)),
            }
        }
        parts.headers.remove(header::HOST);
    } else {
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&authority())
        {
            parts.headers.insert(header::HOST, v);
        }
        // An origin-form URI (`/path?query`, what HTTP/1.1 clients send) is already what
        // parsing its path and query would give.
        let origin_form = has_pq && parts.uri.scheme().is_none() && parts.uri.authority().is_none();
        if parts.method != Method::CONNECT && !origin_form {
            match pq().parse::<Uri>() {
                Ok(u) => parts.uri = u,
                Err(_) => return Ok(LocalReply::NO_ROUTE.respond(&ctx, log)),
            }
        }
    }
    let body = CountedBody {
        inner: body,
        count: log.received.clone(),
    }
    .boxed();
    let mut upstream_req = Request::from_parts(parts, body);

    // Send, retrying connect failures on other endpoints (outbound only, as Istio's default
    // retry policy does), all within the route timeout.
    let started = Instant::now();
    let attempts = 1 + target.retries;
    let exchange = async {
        let mut failed: Vec<std::net::SocketAddr> = Vec::new();
        let mut attempt = 1;
        loop {
            let Some(ep) = ctx.pi.load.pick(
                target.lb_policy,
                &target.cluster,
                &target.endpoints,
                &failed,
            ) else {
                return Err((LocalReply::NO_HEALTHY_UPSTREAM, None));
            };
            if ctx.direction == Direction::Outbound {
                headers::set_attempt_count(upstream_req.headers_mut(), attempt);
            }
            let key = PoolKey {
                endpoint: EndpointAddr(ep),
                bind: target.bind,
                http2: upstream_h2,
                tls: ctx.pi.tls.as_ref().and_then(|_| target.tls_of(ep)),
            };
            let _in_flight = ctx.pi.load.start(ep);
            match ctx.pi.pool.send(key, upstream_req, upgrade).await {
                Ok(x) => return Ok((x, ep)),
                Err(e) => {
                    let connect = e.error.is_connect_failure();
                    match e.request {
                        Some(r) if connect && attempt < attempts => {
                            tracing::debug!(endpoint = %ep, error = %e.error, attempt, "retrying upstream connect failure");
                            upstream_req = r;
                            failed.push(ep);
                            attempt += 1;
                        }
                        _ => {
                            let reply = if connect {
                                LocalReply::connect_failure(attempts > 1)
                            } else {
                                let remote = matches!(&e.error, PoolError::Reset(h) if is_reset(h));
                                LocalReply::reset(remote)
                            };
                            return Err((reply, Some((ep, e.error))));
                        }
                    }
                }
            }
        }
    };
    let result = match target.timeout {
        Some(t) => match tokio::time::timeout(t, exchange).await {
            Ok(r) => r,
            Err(_) => Err((LocalReply::TIMEOUT, None)),
        },
        None => exchange.await,
    };
    let (exchange, ep) = match result {
        Ok(x) => x,
        Err((reply, failure)) => {
            if let Some((ep, err)) = failure {
                let rec = log.rec();
                rec.upstream_host = Some(ep);
                rec.upstream_transport_failure_reason = err.transport_failure_reason();
            }
            return Ok(reply.respond(&ctx, log));
        }
    };

    let service_time = started.elapsed();
    let mut resp = exchange.response;
    let recycle = exchange.recycle;
    {
        let rec = log.rec();
        rec.response_code = resp.status().as_u16();
        rec.response_code_details = Some("via_upstream".into());
        rec.upstream_host = Some(ep);
        rec.upstream_local_address = Some(exchange.local_addr);
        rec.upstream_service_time = Some(service_time);
        if ctx.direction == Direction::Outbound {
            rec.labels = request_labels(
                &ctx,
                &snap,
                &target,
                target.peer_of(ep),
                exchange.peer.as_ref(),
            );
        }
    }
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(resp.headers_mut(), upgrade && switching);
    headers::decorate_response(
        resp.headers_mut(),
        service_time,
        ctx.pi.cfg.server_header.as_ref(),
        ctx.direction == Direction::Outbound,
    );
    if downstream_version == Version::HTTP_2 {
        *resp.version_mut() = Version::HTTP_2;
    } else {
        *resp.version_mut() = Version::HTTP_11;
    }

    if let (true, Some(on_down)) = (switching, on_downstream_upgrade) {
        let on_up = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(on_down, on_up, log));
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, empty()));
    }
    let (parts, body) = resp.into_parts();
    Ok(respond_logged(
        Response::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed()),
        log,
        recycle,
    ))
}

/// Joins an upgraded downstream and upstream (websocket) and copies bytes until both close.
async fn tunnel(
    on_down: hyper::upgrade::OnUpgrade,
    on_up: hyper::upgrade::OnUpgrade,
    mut log: Log,
) {
    let (down, up) = match tokio::try_join!(on_down, on_up) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let counts = Arc::new(ByteCounts::default());
    let res = copy_bidirectional(TokioIo::new(down), TokioIo::new(up), counts.clone()).await;
    let (received, sent) = counts.get();
    log.received.fetch_add(received, Ordering::Relaxed);
    let flags = match res {
        Ok(()) => ResponseFlags::NONE,
        Err(_) => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
    };
    log.finish(sent, flags, None);
}
