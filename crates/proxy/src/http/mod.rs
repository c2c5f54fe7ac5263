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

mod labels;
mod log;
mod reply;
mod request;

pub use labels::LabelMemo;
pub use labels::labels_for;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::Uri;
use http::header::{self};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ProxyInputs;
use crate::addr::{ClientAddr, OrigDstAddr};
use crate::conn_exec::{self, ConnExec};
use crate::drain::DrainWatcher;
use crate::telemetry::{RequestRecord, ResponseFlags};
use crate::tls::MeshPeer;

use request::handle;

/// Which side of the pod a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the local app, toward another service (15001).
    Outbound,
    /// From another pod, toward the local app (15006).
    Inbound,
}

impl Direction {
    /// The side that reports what this direction serves: Istio's `reporter` label, and the
    /// Telemetry API's CLIENT (outbound) or SERVER (inbound) mode.
    pub const fn reporter(self) -> crate::telemetry::Reporter {
        match self {
            Direction::Outbound => crate::telemetry::Reporter::Source,
            Direction::Inbound => crate::telemetry::Reporter::Destination,
        }
    }
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
    /// At a gateway: the Gateway port and whether TLS was terminated (requests are then
    /// routed by the Gateway's VirtualServices, not by service); `None` in a sidecar.
    pub gateway: Option<crate::gateway::GatewayConn>,
}

/// The request's authority: the URI's (HTTP/2, absolute form), else the `Host` header.
pub(crate) fn request_authority<'a>(uri: &'a Uri, headers: &'a http::HeaderMap) -> Option<&'a str> {
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
