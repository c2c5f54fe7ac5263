//! The inbound side (15006): connections from other pods to the local app.
//!
//! Everything is forwarded to the app on the original destination port, from 127.0.0.6 to the
//! pod address (the capture rules let that source through), or from 127.0.0.1 to 127.0.0.1 when
//! configured so. `x-envoy-*` request headers from peers outside the mesh are removed.
//!
//! mTLS is decided here, per connection, by the port's PeerAuthentication mode
//! ([`crate::authn`]) and the ClientHello ([`crate::tls::read_client_hello`]):
//!
//! | arrives as | STRICT | PERMISSIVE | DISABLE |
//! | --- | --- | --- | --- |
//! | TLS with an `istio*` ALPN | terminated | terminated | to the app as is |
//! | other TLS | terminated (a mesh client certificate is required) | to the app as is | to the app as is |
//! | plaintext | closed, logged `NR` `filter_chain_not_found` | to the app | to the app |
//!
//! A terminated connection carries its SNI (`requested_server_name`) and the client's verified
//! identity (`source_principal`, XFCC) on its [`ConnCtx`]; what is inside is chosen by the port's
//! declared protocol, else the ALPN, else sniffed. Without an identity (no certificates) nothing
//! is terminated and STRICT ports refuse everything.

pub mod app;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use identity::AppProtocol;
use tokio::net::TcpStream;

use crate::ProxyInputs;
use crate::authn::InboundMode;
use crate::detect::{self, Detected, Rewind};
use crate::drain::DrainWatcher;
use crate::http::{ConnCtx, Direction};
use crate::listener::{Listener, proxy_detected};
use crate::orig_dst::OrigDstResolver;
use crate::telemetry::{ResponseFlags, TcpRecord};
use crate::tls;

/// Binds the inbound capture listener on `pi.cfg.inbound_addr`.
pub async fn bind(
    pi: Arc<ProxyInputs>,
    orig_dst: Arc<dyn OrigDstResolver>,
) -> std::io::Result<Listener> {
    Listener::bind(Direction::Inbound, pi.cfg.inbound_addr, orig_dst, pi).await
}

/// Serves one accepted inbound connection: applies PeerAuthentication, terminates mTLS when
/// the table above says so, then proxies what is inside.
pub(crate) async fn handle(ctx: Arc<ConnCtx>, mut stream: TcpStream, drain: DrainWatcher) {
    let start = SystemTime::now();
    let t0 = Instant::now();
    let snap = ctx.pi.store.load();
    let port = ctx.orig_dst.get().port();
    let mode = ctx.pi.peer_authn.mode(&snap, &ctx.pi.cfg, port);
    let mesh = ctx.pi.tls.clone().filter(|_| mode != InboundMode::Disable);
    if mode == InboundMode::Strict && mesh.is_none() {
        tracing::debug!(client = %ctx.client, port, "STRICT mTLS but no workload identity; closing");
        return;
    }
    let declared_opaque = snap.inbound_protocol(port).is_opaque();
    drop(snap);
    let wait = ctx.pi.cfg.detection_wait();
    let (detected, prefix) = if declared_opaque && mesh.is_none() {
        (Detected::Opaque, Bytes::new())
    } else {
        match detect::detect(&mut stream, wait).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, client = %ctx.client, "connection failed during detection");
                return;
            }
        }
    };
    let mesh = match (detected, mesh) {
        (Detected::Tls, Some(mesh)) => mesh,
        (_, _) if mode == InboundMode::Strict => {
            // Envoy has no plaintext filter chain under STRICT: it closes the connection and
            // Istio's listener access log records it as `NR filter_chain_not_found`.
            tracing::debug!(client = %ctx.client, port, "plaintext refused by STRICT mTLS");
            ctx.pi
                .telemetry
                .tcp_log(filter_chain_not_found(&ctx, start, t0));
            return;
        }
        (detected, _) => {
            let io = Rewind::new(prefix, stream);
            return proxy(ctx, io, detected, start, t0, drain).await;
        }
    };

    let (hello, replay) = match tls::read_client_hello(&mut stream, prefix, tls::HANDSHAKE_TIMEOUT)
        .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(error = %e, client = %ctx.client, "connection failed during the ClientHello");
            return;
        }
    };
    let istio = hello.as_ref().is_some_and(|h| h.istio);
    let sni = hello.and_then(|h| h.sni);
    let io = Rewind::new(replay, stream);
    if !istio && mode != InboundMode::Strict {
        // Not a mesh client: the app's own TLS, passed through untouched.
        let ctx = with_tls(&ctx, sni, None);
        return proxy(ctx, io, Detected::Tls, start, t0, drain).await;
    }
    let (mut tls_stream, peer, alpn) = match mesh.accept(io).await {
        Ok(accepted) => accepted,
        Err(error) => {
            tracing::debug!(%error, client = %ctx.client, port, "inbound mTLS handshake failed");
            return;
        }
    };
    let ctx = with_tls(&ctx, sni, Some(peer));
    let (inner, prefix) = match (declared_opaque, alpn) {
        (true, _) | (false, Some(AppProtocol::Tcp)) => (Detected::Opaque, Bytes::new()),
        (false, Some(AppProtocol::Http1)) => (Detected::Http1, Bytes::new()),
        (false, Some(AppProtocol::Http2)) => (Detected::Http2, Bytes::new()),
        (false, None) => match detect::detect(&mut tls_stream, wait).await {
            // TLS inside mTLS is the app's own: copied as bytes.
            Ok((Detected::Tls, p)) => (Detected::Opaque, p),
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, client = %ctx.client, "mTLS connection failed during detection");
                return;
            }
        },
    };
    proxy(
        ctx,
        Rewind::new(prefix, tls_stream),
        inner,
        start,
        t0,
        drain,
    )
    .await;
}

/// Hands the connection on, unless it is opaque and an AuthorizationPolicy denies it: then it
/// is closed ([`crate::authz`]; HTTP is decided per request).
async fn proxy<I>(
    ctx: Arc<ConnCtx>,
    io: I,
    detected: Detected,
    start: SystemTime,
    t0: Instant,
    drain: DrainWatcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let opaque = matches!(detected, Detected::Tls | Detected::Opaque);
    if opaque && crate::authz::refuses_connection(&ctx, start, t0) {
        return;
    }
    proxy_detected(ctx, io, detected, None, start, t0, drain).await;
}

/// The access-log record of a connection no filter chain takes, as Envoy's listener logs it:
/// `NR`, `filter_chain_not_found`, the addresses, nothing upstream.
fn filter_chain_not_found(ctx: &ConnCtx, start: SystemTime, t0: Instant) -> TcpRecord {
    let mut rec = TcpRecord::accepted(
        start,
        ctx.direction.reporter(),
        ctx.orig_dst.get(),
        ctx.client.get(),
    );
    rec.response_flags = ResponseFlags::NO_ROUTE_FOUND;
    rec.response_code_details = Some("filter_chain_not_found");
    rec.duration = t0.elapsed();
    rec
}

/// The connection context once TLS has been seen: its SNI and, when terminated, the client.
fn with_tls(ctx: &ConnCtx, sni: Option<Arc<str>>, peer: Option<tls::MeshPeer>) -> Arc<ConnCtx> {
    Arc::new(ConnCtx {
        direction: ctx.direction,
        client: ctx.client,
        orig_dst: ctx.orig_dst,
        sni,
        peer,
        pi: ctx.pi.clone(),
        labels: Default::default(),
        gateway: None,
    })
}
