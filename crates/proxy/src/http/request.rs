//! One request: the checks Envoy's codec makes, Istio's headers, routing by direction, the
//! upstream exchange with its attempts, and the response.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::addr::{EndpointAddr, OrigDstAddr};
use crate::body::{BoxError, ProxyBody, empty};
use crate::headers;
use crate::pool::{PoolError, PoolKey};
use crate::route::{self};
use crate::tcp::{ByteCounts, copy_bidirectional};
use crate::telemetry::{RequestProtocol, ResponseFlags};

use super::labels::request_labels;
use super::log::{CountedBody, Log, is_reset, respond_logged};
use super::reply::{LocalReply, ReplyTo, refusal};
use super::{ConnCtx, Direction, request_authority};

/// Serves one request.
pub(super) async fn handle(
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
}
