//! The HTTP proxy shared by the inbound and outbound sides: serve a downstream connection
//! (HTTP/1.1 or HTTP/2), and for each request pick the upstream, rewrite headers, forward with
//! streaming bodies (trailers included), handle websocket upgrades, and record the request.
//!
//! Where the two sides differ (how the upstream is chosen, which headers are trusted, labels),
//! [`Direction`] says which one this is. Local replies follow Envoy's codes, bodies and response
//! flags (`UH`, `UF`, `URX`, `UO`, `UT`, `NR`, `UC`, `UR`), and to a gRPC request they are
//! trailers-only gRPC statuses as Envoy's; a client that goes away is logged `DC`, a request
//! hyper cannot parse is logged `DPE`, and what Envoy's codec refuses under Istio's defaults
//! (HTTP/1.0, no host, transfer codings but `chunked`, a head over 60 KiB) is refused alike.
//! The app is spoken to in the HTTP version its port declares ([`route::UpstreamHttp`]).

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
            // The head (request line, headers, blank line) is measured as Envoy's
            // `max_request_headers_kb` does: 431 from one byte over, however the bytes arrive.
            // A read buffer cap alone would depend on how much one read brought in.
            .max_header_size(cfg.max_request_headers)
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
    /// Ends an HTTP/1 connection (`connection: close`), as Envoy's codec errors do.
    close: bool,
}

impl LocalReply {
    const NO_HEALTHY_UPSTREAM: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        flags: ResponseFlags::NO_HEALTHY_UPSTREAM,
        details: "no_healthy_upstream",
        body: "no healthy upstream",
        close: false,
    };
    const NO_ROUTE: LocalReply = LocalReply {
        status: StatusCode::NOT_FOUND,
        flags: ResponseFlags::NO_ROUTE_FOUND,
        details: "route_not_found",
        body: "",
        close: false,
    };
    const OVERFLOW: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        flags: ResponseFlags::UPSTREAM_OVERFLOW,
        details: "upstream_reset_before_response_started{overflow}",
        body: "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        close: false,
    };
    /// Envoy's RBAC filter's denial ([`crate::authz`]).
    const RBAC_DENIED: LocalReply = LocalReply {
        status: StatusCode::FORBIDDEN,
        flags: ResponseFlags::NONE,
        details: crate::authz::DENIED_DETAILS,
        body: crate::authz::DENIED_BODY,
        close: false,
    };
    const TIMEOUT: LocalReply = LocalReply {
        status: StatusCode::GATEWAY_TIMEOUT,
        flags: ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
        details: "response_timeout",
        body: "upstream request timeout",
        close: false,
    };
    /// HTTP/1.0 (or 0.9): Istio does not set `accept_http_10`.
    const LOW_VERSION: LocalReply = LocalReply {
        status: StatusCode::UPGRADE_REQUIRED,
        flags: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        details: "low_version",
        body: "Upgrade Required",
        close: true,
    };
    /// Neither a `Host` header nor an authority in the URI.
    const MISSING_HOST: LocalReply = LocalReply {
        status: StatusCode::BAD_REQUEST,
        flags: ResponseFlags::NONE,
        details: "missing_host_header",
        body: "",
        close: true,
    };
    /// A transfer coding other than `chunked` alone.
    const TRANSFER_ENCODING: LocalReply = LocalReply {
        status: StatusCode::NOT_IMPLEMENTED,
        flags: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        details: "http1.invalid_transfer_encoding",
        body: "Not Implemented",
        close: true,
    };

    /// The upstream could not be reached (`UF`; `URX` too once the retries are spent), in
    /// Envoy 1.40's words: a connect timeout is `connection timeout`, any other failure
    /// (refused, unreachable, handshake) `remote connection failure`, and after retries the
    /// reason is the latest one's.
    fn connect_failure(retries_exhausted: bool, timeout: bool) -> LocalReply {
        let (details, body) = match (timeout, retries_exhausted) {
            (true, false) => (
                "upstream_reset_before_response_started{connection_timeout}",
                "upstream connect error or disconnect/reset before headers. reset reason: connection timeout",
            ),
            (true, true) => (
                "upstream_reset_before_response_started{connection_timeout}",
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection timeout",
            ),
            (false, false) => (
                "upstream_reset_before_response_started{remote_connection_failure}",
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
            ),
            (false, true) => (
                "upstream_reset_before_response_started{remote_connection_failure}",
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure",
            ),
        };
        LocalReply {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flags: if retries_exhausted {
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE
                    | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
            } else {
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE
            },
            details,
            body,
            close: false,
        }
    }

    fn reset(remote: bool) -> LocalReply {
        if remote {
            LocalReply {
                status: StatusCode::SERVICE_UNAVAILABLE,
                flags: ResponseFlags::UPSTREAM_REMOTE_RESET,
                details: "upstream_reset_before_response_started{remote_reset}",
                body: "upstream connect error or disconnect/reset before headers. reset reason: remote reset",
                close: false,
            }
        } else {
            LocalReply {
                status: StatusCode::SERVICE_UNAVAILABLE,
                flags: ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                details: "upstream_reset_before_response_started{connection_termination}",
                body: "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                close: false,
            }
        }
    }

    /// The one way a local reply leaves the proxy: as Envoy's `sendLocalReply`, plain text to
    /// an HTTP client and a trailers-only gRPC status to a gRPC client.
    fn respond(self, ctx: &ConnCtx, mut log: Log, to: ReplyTo) -> Response<ProxyBody> {
        let mut resp = if to.grpc {
            self.grpc(to.head)
        } else {
            self.plain()
        };
        let rec = log.rec();
        rec.response_code = resp.status().as_u16();
        rec.response_flags.insert(self.flags);
        rec.response_code_details = Some(self.details.into());
        if self.close && to.http1 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(server) = &ctx.pi.cfg.server_header {
            resp.headers_mut().insert(header::SERVER, server.clone());
        }
        respond_logged(resp, log, None)
    }

    /// The status and body text (`text/plain`) as they are.
    fn plain(&self) -> Response<ProxyBody> {
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
        resp
    }

    /// A trailers-only gRPC response: HTTP 200, `content-type: application/grpc`, the status
    /// mapped to `grpc-status` and the body text as `grpc-message` (not to a HEAD request),
    /// percent-encoded as gRPC requires, in one HEADERS frame that ends the stream.
    fn grpc(&self, head: bool) -> Response<ProxyBody> {
        let mut resp = Response::new(empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            GRPC_STATUS.clone(),
            HeaderValue::from(grpc_status_of(self.status)),
        );
        if !self.body.is_empty()
            && !head
            && let Ok(v) = HeaderValue::from_str(
                &percent_encoding::utf8_percent_encode(self.body, GRPC_MESSAGE_ESCAPED).to_string(),
            )
        {
            h.insert(GRPC_MESSAGE.clone(), v);
        }
        resp
    }
}

/// `grpc-status`.
static GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");
/// `grpc-message`.
static GRPC_MESSAGE: header::HeaderName = header::HeaderName::from_static("grpc-message");

/// What `grpc-message` percent-encodes, as Envoy's `PercentEncoding::encode` does after gRPC's
/// PROTOCOL-HTTP2.md: bytes outside `' '..'}'`, and `%` (non-ASCII always is).
const GRPC_MESSAGE_ESCAPED: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b'%').add(b'~');

/// The gRPC status of a local reply with HTTP status `status`: Envoy's
/// `Grpc::Utility::httpToGrpcStatus` (gRPC's http-grpc-status-mapping.md).
fn grpc_status_of(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// What a local reply needs to know about the request it answers.
#[derive(Debug, Clone, Copy)]
struct ReplyTo {
    /// A gRPC request ([`headers::is_grpc`]): answered in gRPC's form.
    grpc: bool,
    /// A HEAD request: no `grpc-message`.
    head: bool,
    /// HTTP/1.x downstream, where a reply may close the connection.
    http1: bool,
}

impl ReplyTo {
    fn of<B>(req: &Request<B>) -> ReplyTo {
        ReplyTo {
            grpc: headers::is_grpc(req.headers()),
            head: req.method() == Method::HEAD,
            http1: req.version() != Version::HTTP_2,
        }
    }
}

/// The local reply to a request Envoy's HTTP/1 codec and connection manager refuse under
/// Istio's defaults before routing it, if it is one: HTTP/1.0 (426, unless `accept_http_10`,
/// which Istio does not set by default), a transfer coding other than `chunked` (501), no host
/// at all (400).
fn refusal<B>(req: &Request<B>, accept_http_10: bool) -> Option<LocalReply> {
    // HTTP/1.0 cannot carry a transfer coding (hyper refuses it), so the version goes first.
    if req.version() < Version::HTTP_11 && !accept_http_10 {
        Some(LocalReply::LOW_VERSION)
    } else if req.version() == Version::HTTP_11
        && headers::unsupported_transfer_encoding(req.headers())
    {
        Some(LocalReply::TRANSFER_ENCODING)
    } else if req.uri().authority().is_none() && !req.headers().contains_key(header::HOST) {
        Some(LocalReply::MISSING_HOST)
    } else {
        None
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
    let reply_to = ReplyTo::of(&req);
    // Judged on the request as it came, before hop-by-hop headers go.
    let refused = refusal(&req, ctx.pi.cfg.accept_http_10);
    if downstream_version != Version::HTTP_2
        && let Some(host) = headers::absolute_form_host(req.uri(), req.headers())
    {
        req.headers_mut().insert(header::HOST, host);
    }

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

    if let Some(reply) = refused {
        return Ok(reply.respond(&ctx, log, reply_to));
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
        Err(route::RouteError::NoRoute) => {
            return Ok(LocalReply::NO_ROUTE.respond(&ctx, log, reply_to));
        }
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
        return Ok(LocalReply::RBAC_DENIED.respond(&ctx, log, reply_to));
    }
    if target.endpoints.is_empty() {
        return Ok(LocalReply::NO_HEALTHY_UPSTREAM.respond(&ctx, log, reply_to));
    }
    let Some(_admitted) = ctx.pi.load.admit(&target.cluster, target.max_requests) else {
        return Ok(LocalReply::OVERFLOW.respond(&ctx, log, reply_to));
    };

    // The upstream request: same method, path, headers and streaming body, in the version
    // `upstream_h2` picks for each endpoint tried.
    let (parts, body) = req.into_parts();
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
            // An endpoint with Istio's TLS settings runs a sidecar; the TLS is used when this
            // proxy has an identity.
            let peer_tls = target.tls_of(ep);
            let http2 = upstream_h2(
                ctx.direction,
                target.upstream_http,
                downstream_version,
                upgrade,
                peer_tls.is_some(),
            );
            if fit_version(&mut upstream_req, http2, ctx.orig_dst).is_err() {
                return Err((LocalReply::NO_ROUTE, None));
            }
            let key = PoolKey {
                endpoint: EndpointAddr(ep),
                bind: target.bind,
                http2,
                tls: ctx.pi.tls.as_ref().and(peer_tls),
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
                                LocalReply::connect_failure(
                                    attempts > 1,
                                    matches!(e.error, PoolError::ConnectTimeout),
                                )
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
            return Ok(reply.respond(&ctx, log, reply_to));
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

/// Whether a request goes upstream in HTTP/2. Inbound, the app gets the version its port
/// declares, as Istio's inbound cluster does: HTTP/1.1 on an `http` port even to an HTTP/2
/// client, HTTP/2 on `http2`/`grpc` ports, the client's version where the protocol is detected.
/// Outbound the same, except that an HTTP/2 client stays on HTTP/2 to an endpoint with a
/// sidecar (`sidecar`) whatever the port says, so the sidecars share one multiplexed connection
/// (the server sidecar then speaks what the app's port declares); an app without a sidecar on
/// an `http` port gets HTTP/1.1, as from Istio. An upgrade (websocket) stays HTTP/1.1.
fn upstream_h2(
    direction: Direction,
    declared: route::UpstreamHttp,
    downstream: Version,
    upgrade: bool,
    sidecar: bool,
) -> bool {
    let h2_client = downstream == Version::HTTP_2;
    !upgrade
        && match declared {
            route::UpstreamHttp::Http2 => true,
            route::UpstreamHttp::Downstream => h2_client,
            route::UpstreamHttp::Http11 => h2_client && direction == Direction::Outbound && sidecar,
        }
}

/// The URI did not make a valid upstream request target.
#[derive(Debug)]
struct BadTarget;

/// Puts `req` in the form of the upstream's version. HTTP/2: an absolute URI
/// `http://{authority}{path}` and no `Host`; HTTP/1.1: an origin-form URI (`/path?query`, or
/// the authority of a CONNECT) and a `Host`. The authority is the request's, else `orig_dst`.
fn fit_version<B>(req: &mut Request<B>, h2: bool, orig_dst: OrigDstAddr) -> Result<(), BadTarget> {
    let uri = req.uri();
    let has_pq = uri.path_and_query().is_some();
    let pq = || uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = || {
        request_authority(uri, req.headers())
            .map(str::to_owned)
            .unwrap_or_else(|| orig_dst.to_string())
    };
    if h2 {
        // From an HTTP/2 client the URI is already `http://{authority}{path}`: kept as it is.
        let same =
            has_pq && uri.scheme() == Some(&http::uri::Scheme::HTTP) && uri.authority().is_some();
        if !same {
            let u = Uri::builder()
                .scheme("http")
                .authority(authority().as_str())
                .path_and_query(pq())
                .build()
                .map_err(|_| BadTarget)?;
            *req.uri_mut() = u;
        }
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut().remove(header::HOST);
    } else {
        let host = (!req.headers().contains_key(header::HOST))
            .then(|| HeaderValue::from_str(&authority()).ok())
            .flatten();
        // An origin-form URI (`/path?query`, what HTTP/1.1 clients send) is already what
        // parsing its path and query would give.
        let origin_form = has_pq && uri.scheme().is_none() && uri.authority().is_none();
        if req.method() != Method::CONNECT && !origin_form {
            let u = pq().parse::<Uri>().map_err(|_| BadTarget)?;
            *req.uri_mut() = u;
        }
        if let Some(v) = host {
            req.headers_mut().insert(header::HOST, v);
        }
        *req.version_mut() = Version::HTTP_11;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_version_follows_the_port_as_istio_does() {
        use Direction::{Inbound, Outbound};
        use route::UpstreamHttp::{Downstream, Http2, Http11};
        let (h1, h2) = (Version::HTTP_11, Version::HTTP_2);
        // (direction, declared, client, upgrade, endpoint has a sidecar) -> HTTP/2
        for (d, declared, client, upgrade, sidecar, want) in [
            (Inbound, Http11, h2, false, false, false),
            (Inbound, Http2, h1, false, false, true),
            (Inbound, Downstream, h2, false, false, true),
            (Inbound, Downstream, h1, false, false, false),
            (Outbound, Http11, h2, false, true, true),
            (Outbound, Http11, h2, false, false, false),
            (Outbound, Http11, h1, false, true, false),
            (Outbound, Http2, h1, false, false, true),
            (Outbound, Http2, h1, true, true, false),
        ] {
            assert_eq!(
                upstream_h2(d, declared, client, upgrade, sidecar),
                want,
                "{d:?} {declared:?} {client:?} upgrade {upgrade} sidecar {sidecar}"
            );
        }
    }

    #[test]
    fn requests_fit_either_version_and_back() {
        let orig: OrigDstAddr = OrigDstAddr("10.0.0.1:80".parse().expect("addr"));
        let mut req = Request::builder()
            .uri("/a?b=c")
            .header(header::HOST, "httpbin")
            .body(())
            .expect("request");
        fit_version(&mut req, true, orig).expect("fits HTTP/2");
        assert_eq!(req.uri(), "http://httpbin/a?b=c");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(req.headers().get(header::HOST).is_none());
        fit_version(&mut req, false, orig).expect("fits HTTP/1.1");
        assert_eq!(req.uri(), "/a?b=c");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()[header::HOST], "httpbin");
        // No authority anywhere: the original destination.
        let mut bare = Request::builder().uri("/").body(()).expect("request");
        fit_version(&mut bare, false, orig).expect("fits HTTP/1.1");
        assert_eq!(bare.headers()[header::HOST], "10.0.0.1:80");
    }

    #[test]
    fn grpc_status_mapping_is_envoys() {
        for (http, grpc) in [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (426, 2),
            (501, 2),
        ] {
            let status = StatusCode::from_u16(http).expect("status");
            assert_eq!(grpc_status_of(status), grpc, "{http}");
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded_as_envoy_does() {
        let reply = LocalReply {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flags: ResponseFlags::NONE,
            details: "x",
            body: "100% down ~ {ok}\n\u{e9}",
            close: false,
        };
        let resp = reply.grpc(false);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(
            resp.headers()["grpc-message"],
            "100%25 down %7E {ok}%0A%C3%A9"
        );
        assert!(reply.grpc(true).headers().get("grpc-message").is_none());
    }
}
