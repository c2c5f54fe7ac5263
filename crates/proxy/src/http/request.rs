//! One request: the checks Envoy's codec makes, Istio's headers, routing by direction, the
//! upstream exchange with its attempts, and the response.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::addr::{EndpointAddr, OrigDstAddr};
use crate::balance;
use crate::body::{BoxError, ProxyBody, empty, full};
use crate::cluster::ClusterStats;
use crate::config::Snapshot;
use crate::headers;
use crate::outbound::actions::{self, FormatContext};
use crate::outbound::fault::{self, AbortReply};
use crate::outbound::replay::{self, Replay};
use crate::outbound::retry::{Outcome, ResetReason};
use crate::outbound::router::{self, RouteError, Routed};
use crate::outbound::routes::RequestView;
use crate::outlier::Outcome as OutlierOutcome;
use crate::pool::{PoolError, PoolKey};
use crate::route::{self, Target};
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
    if let Some(gw) = ctx.gateway {
        // The edge: what clients say of Envoy's handling and of their address is not trusted.
        headers::strip_envoy_headers(h);
        headers::edge_forwarded(
            h,
            ctx.client.get().ip(),
            if gw.tls { "https" } else { "http" },
        );
    }
    headers::forward_client_cert(h, ctx.peer.as_ref().map(|p| &p.xfcc));
    let request_id = headers::ensure_request_id(h);
    // Discovery's tracing (the Telemetry API) wins over the ProxyConfig's.
    let node = snap.resources.node.as_ref();
    let xds_tracing = node.and_then(|n| n.tracing.as_ref());
    // The headers the Telemetry API's expressions read, before they are edited further: asked
    // for only when the Node carries its access logs or metrics, so that without them a
    // request pays nothing here.
    let captured = node
        .filter(|n| n.access_logging.is_some() || n.metrics.is_some())
        .and_then(|_| ctx.pi.telemetry.capture_headers(h));
    let sampling = xds_tracing.map_or(ctx.pi.cfg.trace_sampling, xds::Tracing::sampling_percent);
    // MeshConfig `enableTracing: false`: no tracer, so trace headers pass through untouched.
    let tracing_off = xds_tracing.is_some_and(|t| t.disabled);
    let trace = (!tracing_off).then(|| headers::continue_trace(h, sampling));
    let tls_here = ctx.peer.is_some() || ctx.gateway.is_some_and(|g| g.tls);
    headers::set_forwarded_proto(h, if tls_here { "https" } else { "http" });
    let span = trace.and_then(|trace| {
        ctx.pi
            .telemetry
            .start_span(&trace, h, xds_tracing, &|host, port| {
                let e = snap.service_by_host(host)?;
                Some(e.cluster(port, None)?.endpoints.first()?.addr)
            })
    });

    let mut log = Log {
        direction: ctx.direction,
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
        rec.span = span;
        rec.headers = captured;
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

    // The request's head from here on; the body stays aside until the request goes upstream.
    let (mut parts, body) = req.into_parts();
    let fmt = FormatContext {
        downstream_remote: Some(ctx.client.get()),
        downstream_local: Some(ctx.orig_dst.get()),
        hostname: ctx.pi.cfg.pod_name.as_deref().unwrap_or(""),
    };
    let (target, selected, picked) = match ctx.direction {
        Direction::Inbound => {
            if let Some(span) = log.rec().span.as_mut() {
                span.service_port = snap.inbound_service_port(ctx.orig_dst.get().port());
            }
            (
                crate::inbound::app::target(&snap, &ctx.pi, ctx.orig_dst),
                None,
                None,
            )
        }
        Direction::Outbound => {
            headers::strip_retry_requests(&mut parts.headers);
            let (labels, namespace) = match snap.me.as_deref() {
                Some(w) => (&w.labels, w.namespace.as_str()),
                None => (no_labels(), ""),
            };
            let scheme = if ctx.gateway.is_some_and(|g| g.tls) {
                "https"
            } else {
                "http"
            };
            let view =
                RequestView::new(&parts, scheme, ctx.orig_dst.get().port(), labels, namespace);
            let routed = match ctx.gateway {
                None => router::outbound_http(&snap, &ctx.pi, ctx.orig_dst, &view),
                Some(gw) => {
                    if let Some(resp) = crate::gateway::https_redirect(&snap, gw, &view) {
                        return Ok(LocalReply::answer(&ctx, log, resp, "https_redirect"));
                    }
                    router::gateway_http(&snap, gw, ctx.orig_dst, &view)
                }
            };
            match routed {
                Ok(Routed::Forward {
                    target,
                    selected,
                    picked,
                }) => (target, selected, picked),
                Ok(Routed::Answer {
                    selected,
                    route_name,
                }) => {
                    log.rec().route_name = route_name;
                    let mut resp = match actions::redirect(&selected, &view, false) {
                        Some(r) => r.map(|()| empty()),
                        None => match actions::direct_response(&selected) {
                            Some(r) => r.map(full),
                            None => return Ok(LocalReply::NO_ROUTE.respond(&ctx, log, reply_to)),
                        },
                    };
                    actions::edit_response(&selected, None, resp.headers_mut(), &fmt, Some(&parts));
                    return Ok(LocalReply::answer(&ctx, log, resp, "direct_response"));
                }
                Err(RouteError::NoRoute) => {
                    if ctx.gateway.is_some() {
                        // No virtual host: Envoy logs no route name.
                        log.rec().route_name = None;
                    }
                    return Ok(LocalReply::NO_ROUTE.respond(&ctx, log, reply_to));
                }
                Err(RouteError::NoCluster) => {
                    return Ok(LocalReply::NO_CLUSTER.respond(&ctx, log, reply_to));
                }
                Err(RouteError::Blocked) => {
                    let authority = (!view.authority.is_empty()).then_some(view.authority);
                    let target = crate::route::blackhole(ctx.orig_dst, authority);
                    let rec = log.rec();
                    rec.labels = request_labels(&ctx, &snap, &target, None, None);
                    rec.route_name = target.route_name.clone();
                    return Ok(LocalReply::BLOCKED.respond(&ctx, log, reply_to));
                }
            }
        }
    };
    {
        let rec = log.rec();
        rec.labels = request_labels(&ctx, &snap, &target, None, None);
        rec.upstream_cluster = Some(target.cluster.name.clone());
        rec.route_name = target.route_name.clone();
    }
    // RequestAuthentication, then AuthorizationPolicy, where Istio puts its jwt_authn and RBAC
    // filters: after the connection manager has taken the request in, before CORS, fault and
    // router.
    let mut jwt = None;
    if ctx.direction == Direction::Inbound
        && let Some(rules) = ctx.pi.request_authn.rules(&snap, &ctx.pi.cfg)
    {
        // The realm of a denial names the request with Envoy's `:scheme`.
        let scheme = headers::request_scheme(&parts.uri, &parts.headers, ctx.peer.is_some());
        let outcome = rules.authenticate(&mut parts, &scheme, SystemTime::now());
        ctx.pi
            .request_authn
            .stats()
            .count(ctx.orig_dst.get().port(), &outcome);
        match outcome {
            jwt_authn::Outcome::NoToken | jwt_authn::Outcome::Preflight => {}
            jwt_authn::Outcome::Verified(verified) => {
                // Envoy logs the path as jwt_authn left it: a token taken off the query
                // string stays out of the access log too.
                log.rec().path = parts.uri.path_and_query().cloned();
                jwt = Some(verified);
            }
            jwt_authn::Outcome::Denied(denial) => {
                let mut resp = LocalReply::jwt_denied(&denial).respond(&ctx, log, reply_to);
                if let Ok(v) = HeaderValue::try_from(denial.www_authenticate) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                return Ok(resp);
            }
        }
    }
    if ctx.direction == Direction::Inbound
        && let Some(policies) = ctx.pi.authz.policies(&snap, &ctx.pi.cfg)
    {
        let auth = jwt
            .as_ref()
            .map(|v| crate::authz::RequestAuth { claims: &v.claims });
        if let Some(details) = crate::authz::check_request(&ctx, &policies, &parts, auth) {
            return Ok(LocalReply::rbac_denied(details).respond(&ctx, log, reply_to));
        }
    }
    // Istio's filter order: CORS, fault, router.
    if let Some(sel) = &selected
        && let Some(preflight) = actions::cors_preflight(sel, &parts)
    {
        return Ok(LocalReply::answer(
            &ctx,
            log,
            preflight.map(|()| empty()),
            "cors_response",
        ));
    }
    if let Some(fault) = &target.policy.fault {
        let decision = fault.decide(&mut rand::rng());
        if let Some(delay) = decision.delay {
            tokio::time::sleep(delay).await;
            log.rec()
                .response_flags
                .insert(ResponseFlags::DELAY_INJECTED);
        }
        if let Some(abort) = decision.abort {
            let reply = LocalReply::fault_abort(AbortReply::of(&abort));
            return Ok(reply.respond(&ctx, log, reply_to));
        }
    }
    if target.cluster.endpoints.is_empty() {
        return Ok(LocalReply::NO_HEALTHY_UPSTREAM.respond(&ctx, log, reply_to));
    }
    let Some(_admitted) = target.cluster.admit() else {
        // Envoy counts an `http2MaxRequests` overflow with the pending ones.
        target.cluster.state.circuit.note_requests_overflow();
        return Ok(LocalReply::OVERFLOW.respond(&ctx, log, reply_to));
    };
    // The request as the route edits it: headers, authority, path.
    // CORS decorates the response from the request's headers: kept only for a route with CORS.
    let request_headers = selected
        .as_ref()
        .filter(|s| s.route().cors.is_some())
        .map(|_| parts.headers.clone());
    if let Some(sel) = &selected
        && let Err(e) = actions::edit_request(sel, picked, &mut parts, &fmt)
    {
        tracing::debug!(error = %e, "route rewrite failed");
        return Ok(LocalReply::REWRITE_FAILED.respond(&ctx, log, reply_to));
    }
    // Consistent hashing: the request's key, or a cookie made up for it.
    let mut set_cookie = None;
    let hash = target.cluster.hash.as_ref().and_then(|h| {
        let parts_view = crate::hash_lb::RequestParts {
            headers: &parts.headers,
            query: parts.uri.query(),
            source_ip: Some(ctx.client.get().ip()),
        };
        h.policy.hash(&parts_view).or_else(|| {
            let made = h
                .policy
                .generated_cookie(ctx.client.get(), ctx.orig_dst.get())?;
            let hash = made.hash;
            set_cookie = Some(made.set_cookie);
            Some(hash)
        })
    });

    // The upstream request: same method, path, headers and streaming body, in the version
    // `upstream_h2` picks for each endpoint tried. A request without a body can be sent again
    // as it is, for a retry after a response or a mirror; one with a body is kept (up to
    // Envoy's buffer limit) for retries.
    let bodiless = http_body::Body::is_end_stream(&body);
    let retries_after_send = target.policy.retry.retries_after_send(reply_to.grpc);
    let mirrored = bodiless
        && selected
            .as_ref()
            .is_some_and(|s| !s.route().mirrors.is_empty());
    // The head is copied only when something may send it again.
    let again = (!upgrade && (retries_after_send || mirrored)).then(|| parts.clone());
    if let (Some(sel), Some(copy), true) = (&selected, again.as_ref(), mirrored) {
        mirror(&ctx, &snap, sel.route(), copy, downstream_version);
    }
    let body = CountedBody {
        inner: body,
        count: log.received.clone(),
    }
    .boxed();
    let (body, replay) = if !bodiless && !upgrade && retries_after_send {
        let replay = Replay::new(body, replay::DEFAULT_LIMIT);
        match replay.body() {
            Some(first) => (first.boxed(), Some(replay)),
            None => (empty(), None),
        }
    } else {
        (body, None)
    };
    let upstream_req = Request::from_parts(parts, body);

    let started = Instant::now();
    let exchange = attempts(
        &ctx,
        &target,
        upstream_req,
        Again {
            head: again,
            replay,
        },
        hash,
        downstream_version,
        upgrade,
    );
    let result = match target.timeout() {
        Some(t) => match tokio::time::timeout(t, exchange).await {
            Ok(r) => r,
            Err(_) => {
                ClusterStats::inc(&target.cluster.state.stats.upstream_rq_timeout);
                Err(Failed {
                    reply: LocalReply::TIMEOUT,
                    endpoint: None,
                    error: None,
                })
            }
        },
        None => exchange.await,
    };
    let Answered {
        exchange,
        endpoint: ep,
        flags: retry_flags,
    } = match result {
        Ok(x) => x,
        Err(failed) => {
            if let Some(ep) = failed.endpoint {
                let rec = log.rec();
                rec.upstream_host = Some(ep);
                rec.upstream_transport_failure_reason = failed
                    .error
                    .as_ref()
                    .and_then(PoolError::transport_failure_reason);
            }
            return Ok(failed.reply.respond(&ctx, log, reply_to));
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
        rec.response_flags.insert(retry_flags);
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
    if let Some(sel) = &selected {
        actions::edit_response(sel, picked, resp.headers_mut(), &fmt, None);
        if let Some(req_headers) = &request_headers {
            actions::cors_decorate_response(sel, req_headers, resp.headers_mut());
        }
    }
    if let Some(cookie) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
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

/// Labels of a proxy that does not know its workload.
fn no_labels() -> &'static std::collections::BTreeMap<String, String> {
    static NONE: std::sync::OnceLock<std::collections::BTreeMap<String, String>> =
        std::sync::OnceLock::new();
    NONE.get_or_init(Default::default)
}

/// Sends a copy of a bodiless request to each of the route's mirrors that its percentage
/// draws, with `-shadow` appended to the authority as Envoy does; the answers are dropped.
fn mirror(
    ctx: &Arc<ConnCtx>,
    snap: &Snapshot,
    route: &xds::HttpRoute,
    parts: &http::request::Parts,
    downstream_version: Version,
) {
    for m in route
        .mirrors
        .iter()
        .filter(|m| fault::sampled(m.per_million, &mut rand::rng()))
    {
        let Some(target) = router::mirror_target(snap, m, ctx.orig_dst) else {
            continue;
        };
        let mut copy = Request::from_parts(parts.clone(), empty());
        let authority = request_authority(copy.uri(), copy.headers())
            .map(shadow_authority)
            .and_then(|a| HeaderValue::from_str(&a).ok());
        if let Some(a) = authority {
            copy.headers_mut().insert(header::HOST, a);
            if copy.uri().authority().is_some() {
                let mut u = copy.uri().clone().into_parts();
                u.authority = copy
                    .headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                if let Ok(uri) = Uri::from_parts(u) {
                    *copy.uri_mut() = uri;
                }
            }
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let timeout = ctx.pi.cfg.connect_timeout;
            let again = Again {
                head: None,
                replay: None,
            };
            let sent = attempts(&ctx, &target, copy, again, None, downstream_version, false);
            if let Ok(Ok(answered)) = tokio::time::timeout(timeout, sent).await {
                // Read and drop the answer, so a pooled connection can be used again.
                let (_, body) = answered.exchange.response.into_parts();
                let _ = body.collect().await;
                if let Some(r) = answered.exchange.recycle {
                    r.done();
                }
            }
        });
    }
}

/// `host-shadow` for `host` (and `host-shadow:port` for `host:port`), Envoy's shadow host.
fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{h}-shadow:{p}")
        }
        _ => format!("{authority}-shadow"),
    }
}

/// Why an exchange that reached the upstream ended without a response, for the retry rules.
fn reset_reason(e: &PoolError) -> ResetReason {
    match e {
        PoolError::Overflow(_) => ResetReason::Overflow,
        PoolError::Reset(h) => {
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(h);
            while let Some(err) = cur {
                if let Some(h2) = err.downcast_ref::<h2::Error>() {
                    return if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                        ResetReason::RefusedStream
                    } else if h2.is_reset() || h2.is_go_away() {
                        ResetReason::Remote
                    } else {
                        ResetReason::Protocol
                    };
                }
                cur = err.source();
            }
            ResetReason::ConnectionTermination
        }
        _ => ResetReason::ConnectionTermination,
    }
}

/// The upstream answered.
struct Answered {
    exchange: crate::pool::Exchange,
    endpoint: SocketAddr,
    /// `URX` when retries would have retried the response had any been left, `UO` when the
    /// cluster's `maxRetries` refused one.
    flags: ResponseFlags,
}

/// No upstream answer: the local reply, and the endpoint and error of the last attempt.
struct Failed {
    reply: LocalReply,
    endpoint: Option<SocketAddr>,
    error: Option<PoolError>,
}

/// Whether an attempt that ended as it did is tried again.
enum Verdict {
    /// Yes.
    Retry,
    /// The policy does not retry it.
    No,
    /// It would, but every retry is spent (`URX`).
    Exhausted,
    /// It would, but the cluster's `maxRetries` are in flight (`UO`).
    Overflow,
}

impl Verdict {
    fn flags(&self) -> ResponseFlags {
        match self {
            Verdict::Exhausted => ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
            Verdict::Overflow => ResponseFlags::UPSTREAM_OVERFLOW,
            Verdict::Retry | Verdict::No => ResponseFlags::NONE,
        }
    }
}

/// What outlier detection makes of an attempt (`None`: its per-try timeout fired).
fn outlier_outcome(
    sent: &Option<Result<crate::pool::Exchange, crate::pool::SendError>>,
) -> OutlierOutcome {
    match sent {
        None => OutlierOutcome::Timeout,
        Some(Ok(x)) => {
            let grpc = x
                .response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match grpc {
                Some(g) => OutlierOutcome::Http(crate::outlier::grpc_to_http_status(g)),
                None => OutlierOutcome::Http(x.response.status().as_u16()),
            }
        }
        // A circuit breaker's refusal says nothing of the endpoint.
        Some(Err(e)) if matches!(e.error, PoolError::Overflow(_)) => OutlierOutcome::ConnectSuccess,
        Some(Err(_)) => OutlierOutcome::ConnectFailed,
    }
}

/// What a request is sent again with: its head, and its body when it has one.
struct Again {
    /// The head, when the request can be sent again.
    head: Option<http::request::Parts>,
    /// The body kept for retries.
    replay: Option<Replay>,
}

/// Sends `req` to an endpoint of `target`, again to another one as the route's retry policy
/// says (connect failures: the request comes back unsent; after a response or a reset: only
/// when `again` holds a bodiless copy to send).
async fn attempts(
    ctx: &ConnCtx,
    target: &Target,
    mut req: Request<ProxyBody>,
    again: Again,
    hash: Option<u64>,
    downstream_version: Version,
    upgrade: bool,
) -> Result<Answered, Failed> {
    let retry = &target.policy.retry;
    let cluster = &target.cluster;
    let mut failed: Vec<SocketAddr> = Vec::new();
    let mut attempt: u32 = 1;
    // The retry in flight, counted against the cluster's `maxRetries` until the next one.
    let mut budget = None;
    loop {
        let Some((ep_index, ep)) = balance::pick(cluster, &failed, hash) else {
            return Err(Failed {
                reply: LocalReply::NO_HEALTHY_UPSTREAM,
                endpoint: None,
                error: None,
            });
        };
        let ep_addr = ep.addr;
        if ctx.direction == Direction::Outbound {
            headers::set_attempt_count(req.headers_mut(), attempt);
        }
        // An endpoint with Istio's TLS settings runs a sidecar; the TLS is used when this
        // proxy has an identity.
        let http2 = upstream_h2(
            ctx.direction,
            target.upstream_http,
            downstream_version,
            upgrade,
            ep.tls.as_ref().is_some_and(|t| t.is_mesh()),
        );
        if fit_version(&mut req, http2, ctx.orig_dst).is_err() {
            return Err(Failed {
                reply: LocalReply::NO_ROUTE,
                endpoint: None,
                error: None,
            });
        }
        let key = PoolKey {
            endpoint: EndpointAddr(ep_addr),
            bind: target.bind,
            http2,
            tls: crate::tls::upstream_peer(ctx.pi.tls.as_ref(), &ep.tls),
        };
        let _in_flight = ep.start();
        ClusterStats::inc(&cluster.state.stats.upstream_rq_total);
        let retries_left = attempt <= retry.attempts;
        // Whether to go again, taking a retry from the cluster's budget if so.
        let mut verdict = |want: bool| {
            if !want || !retry.enabled() {
                Verdict::No
            } else if !retries_left {
                Verdict::Exhausted
            } else if let Some(b) = cluster.admit_retry() {
                budget = Some(b);
                Verdict::Retry
            } else {
                Verdict::Overflow
            }
        };
        // What the next attempt sends: the request back unsent, else a copy of its head with
        // the body again.
        let next = |unsent: Option<Request<ProxyBody>>| {
            unsent.or_else(|| {
                let head = again.head.as_ref()?.clone();
                match &again.replay {
                    None => Some(Request::from_parts(head, empty())),
                    Some(r) => Some(Request::from_parts(head, r.body()?.boxed())),
                }
            })
        };
        // Without limits the pool is shared with every cluster of the endpoint, as before
        // circuit breaking; with limits, the cluster's connections are its own.
        let circuit = &cluster.state.circuit;
        let send = async {
            if circuit.is_unlimited() {
                ctx.pi.pool.send(key, req, upgrade).await
            } else {
                ctx.pi.pool.send_limited(circuit, key, req, upgrade).await
            }
        };
        let sent = match retry.per_try_timeout_within(target.timeout()) {
            None => Some(send.await),
            Some(t) => tokio::time::timeout(t, send).await.ok(),
        };
        cluster.report(ep_index, outlier_outcome(&sent));
        req = match sent {
            None => {
                // The attempt took its whole per-try timeout; the request went with it.
                ClusterStats::inc(&cluster.state.stats.upstream_rq_per_try_timeout);
                let v = verdict(retry.should_retry(&Outcome::PerTryTimeout {
                    request_started: true,
                }));
                match matches!(v, Verdict::Retry).then(|| next(None)).flatten() {
                    Some(r) => r,
                    None => {
                        let mut reply = LocalReply::PER_TRY_TIMEOUT;
                        reply.flags.insert(v.flags());
                        return Err(Failed {
                            reply,
                            endpoint: Some(ep_addr),
                            error: None,
                        });
                    }
                }
            }
            Some(Ok(x)) => {
                let outcome = Outcome::Response {
                    status: x.response.status(),
                    headers: x.response.headers(),
                };
                let v = verdict(retry.should_retry(&outcome));
                match matches!(v, Verdict::Retry).then(|| next(None)).flatten() {
                    Some(r) => r,
                    None => {
                        if attempt > 1 {
                            ClusterStats::inc(&cluster.state.stats.upstream_rq_retry_success);
                        }
                        return Ok(Answered {
                            exchange: x,
                            endpoint: ep_addr,
                            flags: v.flags(),
                        });
                    }
                }
            }
            Some(Err(e)) if matches!(e.error, PoolError::Overflow(_)) => {
                // `http1MaxPendingRequests` waited already: a circuit breaker, never retried.
                return Err(Failed {
                    reply: LocalReply::OVERFLOW,
                    endpoint: Some(ep_addr),
                    error: None,
                });
            }
            Some(Err(e)) => {
                let connect = e.error.is_connect_failure();
                if connect {
                    ClusterStats::inc(&cluster.state.stats.upstream_cx_connect_fail);
                }
                let outcome = if connect {
                    Outcome::ConnectFailure
                } else {
                    Outcome::Reset {
                        reason: reset_reason(&e.error),
                        request_started: true,
                    }
                };
                let v = verdict(retry.should_retry(&outcome));
                match matches!(v, Verdict::Retry)
                    .then(|| next(e.request))
                    .flatten()
                {
                    Some(r) => r,
                    None => {
                        let mut reply = if connect {
                            LocalReply::connect_failure(
                                matches!(v, Verdict::Exhausted),
                                matches!(e.error, PoolError::ConnectTimeout),
                            )
                        } else {
                            let remote = matches!(&e.error, PoolError::Reset(h) if is_reset(h));
                            LocalReply::reset(remote)
                        };
                        reply.flags.insert(v.flags());
                        return Err(Failed {
                            reply,
                            endpoint: Some(ep_addr),
                            error: Some(e.error),
                        });
                    }
                }
            }
        };
        // Another attempt: other endpoints first, after Envoy's back-off.
        tracing::debug!(endpoint = %ep_addr, attempt, "retrying");
        if retry.retry_other_hosts {
            failed.push(ep_addr);
        }
        ClusterStats::inc(&cluster.state.stats.upstream_rq_retry);
        let backoff = retry.backoff(attempt, &mut rand::rng());
        tokio::time::sleep(backoff).await;
        attempt += 1;
    }
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
