//! The HTTP/1 head path: request heads that hyper parses from arbitrary client bytes, through
//! the sidecar's own header handling and routing.
//!
//! Each input is one client's byte stream (one or more pipelined requests), served twice:
//! 1. by `proxy::http::serve` itself, the outbound sidecar's HTTP/1 server, with a snapshot
//!    whose routes all end in local replies (404 `NR`, 503 `UH`): hyper's parser, `handle`'s
//!    header handling, route matching, access-log records and metrics, with no network;
//! 2. by hyper with a service that runs the same `proxy::headers` and `proxy::route` functions
//!    and checks what they promise: no hop-by-hop or (untrusted) `x-envoy-*` header survives,
//!    XFCC is the client's values with our element appended (or gone without mTLS), the
//!    request id is kept or made, the trace is continued (the next hop continues it again with
//!    this span as parent), `x-forwarded-proto` is set, and routing by authority, path and
//!    headers answers without panicking.

#![no_main]

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use proxy::ProxyInputs;
use proxy::addr::{ClientAddr, OrigDstAddr};
use proxy::config::{ConfigStore, ProxyConfig};
use proxy::headers;
use proxy::http::{ConnCtx, Direction};
use proxy::route;
use proxy::telemetry::Telemetry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Every route ends in a local reply: the services have no endpoints, and requests that match
/// no route are `NR`.
const RESOURCES: &str = r#"
services:
- hostname: reviews.default.svc.cluster.local
  name: reviews
  namespace: default
  vips: [10.0.0.10]
  ports: [{name: http, port: 80, targetPort: 9080}]
- hostname: ratings.default.svc.cluster.local
  name: ratings
  namespace: default
  vips: [10.0.0.11]
  ports: [{name: http, port: 80, targetPort: 9080}, {name: grpc, port: 8080}]
httpRoutes:
- name: default/reviews
  hosts: [reviews.default.svc.cluster.local]
  http:
  - name: v2
    match: [{uri: {prefix: /v2}, headers: {end-user: {exact: jason}}}]
    route: [{host: ratings.default.svc.cluster.local, weight: 50}, {host: reviews.default.svc.cluster.local, weight: 50}]
  - name: exact
    match: [{uri: {exact: /reviews/1}}]
    timeoutMs: 100
  - name: canary
    match: [{headers: {x-canary: {prefix: "yes"}}}]
    route: [{host: ratings.default.svc.cluster.local, port: 8080}]
"#;

const REVIEWS_VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10)), 80);
/// An address no service claims: outbound HTTP to it is routed by `Host`, else passthrough.
const ELSEWHERE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)), 80);

struct World {
    rt: tokio::runtime::Runtime,
    pi: Arc<ProxyInputs>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let resources = xds::ProxyResources::parse(RESOURCES).expect("the target's resources");
        let cfg = Arc::new(ProxyConfig::default());
        let store = Arc::new(ConfigStore::new(resources, cfg.clone()).expect("usable resources"));
        let pi = ProxyInputs::new(cfg, store, Telemetry::without_access_log());
        World { rt, pi }
    })
}

/// A client connection: reads give the input, then end of stream; writes are swallowed.
struct Client {
    data: Vec<u8>,
    pos: usize,
}

impl AsyncRead for Client {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = out.remaining().min(self.data.len() - self.pos);
        let pos = self.pos;
        out.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What Envoy's connection manager removes from a request (`trailer`, `proxy-authenticate`
/// and `proxy-authorization` pass through Envoy, and through Ama since issue 13).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

const XFCC_ELEMENT: &str = "By=spiffe://cluster.local/ns/default/sa/reviews;\
Hash=0f0e;Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/productpage";

fn hex_header(h: &HeaderMap, name: &HeaderName) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The sidecar's request header handling on one parsed head, with its promises checked.
fn check_headers(req: &mut Request<Incoming>, pi: &ProxyInputs) {
    let upgrade = headers::is_upgrade_request(req.headers());
    let h = req.headers_mut();

    headers::strip_hop_by_hop(h, upgrade);
    for name in h.keys() {
        let n = name.as_str();
        let allowed = match n {
            "te" => h
                .get_all(name)
                .iter()
                .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers")),
            "connection" => upgrade && h.get_all(name).iter().all(|v| v == "upgrade"),
            "upgrade" => upgrade,
            _ => !HOP_BY_HOP.contains(&n),
        };
        assert!(allowed, "hop-by-hop header {n} survived: {h:?}");
    }
    let mut again = h.clone();
    headers::strip_hop_by_hop(&mut again, upgrade);
    assert_eq!(&again, h, "strip_hop_by_hop is not idempotent");

    let mut untrusted = h.clone();
    headers::strip_envoy_headers(&mut untrusted);
    assert!(
        untrusted
            .keys()
            .all(|n| !n.as_str().starts_with("x-envoy-")),
        "x-envoy-* header survived: {untrusted:?}"
    );

    // XFCC: without mTLS nobody vouches for it; with mTLS ours is appended to what was sent.
    let mut plaintext = h.clone();
    headers::forward_client_cert(&mut plaintext, None);
    assert!(!plaintext.contains_key(&headers::X_FORWARDED_CLIENT_CERT));
    let sent: Vec<Vec<u8>> = h
        .get_all(&headers::X_FORWARDED_CLIENT_CERT)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    let element = HeaderValue::from_static(XFCC_ELEMENT);
    headers::forward_client_cert(h, Some(&element));
    let now: Vec<&HeaderValue> = h
        .get_all(&headers::X_FORWARDED_CLIENT_CERT)
        .iter()
        .collect();
    assert_eq!(now.len(), 1, "XFCC is not one header: {now:?}");
    // Envoy's APPEND_FORWARD (`appendToHeader`): empty values add nothing, and the comma goes
    // only between non-empty parts.
    let mut want = sent
        .iter()
        .filter(|v| !v.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(&b","[..]);
    if !want.is_empty() {
        want.push(b',');
    }
    want.extend_from_slice(XFCC_ELEMENT.as_bytes());
    assert_eq!(
        now[0].as_bytes(),
        &want[..],
        "XFCC is not the sent values plus ours"
    );

    // x-request-id: kept when the client sent a non-empty one, else made.
    let before = h.get(&headers::X_REQUEST_ID).cloned();
    let id = headers::ensure_request_id(h);
    assert!(!id.is_empty());
    assert_eq!(h.get(&headers::X_REQUEST_ID), Some(&id));
    if let Some(b) = before.filter(|b| !b.is_empty()) {
        assert_eq!(b, id, "the client's request id was replaced");
    }

    // Trace context: written in both formats, and continued by the next hop.
    let ctx = headers::continue_trace(h, 50.0);
    assert_ne!(ctx.trace_id, 0);
    assert_ne!(ctx.span_id, 0);
    assert_eq!(
        hex_header(h, &headers::X_B3_TRACEID),
        format!("{:032x}", ctx.trace_id)
    );
    assert_eq!(
        hex_header(h, &headers::X_B3_SPANID),
        format!("{:016x}", ctx.span_id)
    );
    assert_eq!(
        hex_header(h, &headers::TRACEPARENT),
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            ctx.trace_id,
            ctx.span_id,
            u8::from(ctx.sampled)
        )
    );
    assert_eq!(
        h.get(&headers::X_B3_PARENTSPANID).is_some(),
        ctx.parent_span_id.is_some()
    );
    let mut next_hop = h.clone();
    let next = headers::continue_trace(&mut next_hop, 0.0);
    assert_eq!(
        next.trace_id, ctx.trace_id,
        "the next hop started a new trace"
    );
    assert_eq!(next.parent_span_id, Some(ctx.span_id));
    assert_eq!(next.sampled, ctx.sampled);

    let proto_before = h.get(&headers::X_FORWARDED_PROTO).cloned();
    headers::set_forwarded_proto(h, "http");
    match proto_before {
        Some(v) => assert_eq!(h.get(&headers::X_FORWARDED_PROTO), Some(&v)),
        None => assert_eq!(h.get(&headers::X_FORWARDED_PROTO).unwrap(), "http"),
    }
    headers::set_attempt_count(h, 2);

    // Routing, as `handle` does: the URI's authority (absolute form), else `Host`.
    let authority = match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok()),
    };
    let snap = pi.store.load();
    let labels = std::collections::BTreeMap::new();
    for dst in [REVIEWS_VIP, ELSEWHERE] {
        let view = proxy::outbound::routes::RequestView {
            method: req.method().as_str(),
            scheme: "http",
            authority: authority.unwrap_or(""),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            port: dst.port(),
            source_labels: &labels,
            source_namespace: "default",
        };
        let _ = proxy::outbound::router::outbound_http(&snap, pi, OrigDstAddr(dst), &view);
    }
    if let Some(a) = authority {
        let _ = snap.service_by_host(a);
        let t = route::passthrough(OrigDstAddr(ELSEWHERE), Some(a));
        assert!(
            a.starts_with(&*t.service_host),
            "passthrough host {:?} of {a:?}",
            t.service_host
        );
    }
    let _ = proxy::inbound::app::target(&snap, pi, OrigDstAddr(REVIEWS_VIP));
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.rt.block_on(async {
        // 1. The sidecar's own HTTP/1 server.
        let ctx = Arc::new(ConnCtx {
            direction: Direction::Outbound,
            client: ClientAddr(SocketAddr::from(([127, 0, 0, 1], 40000))),
            orig_dst: OrigDstAddr(REVIEWS_VIP),
            sni: None,
            peer: None,
            pi: w.pi.clone(),
            labels: Default::default(),
            gateway: None,
        });
        let (_trigger, drain) = proxy::drain::channel();
        let client = Client {
            data: data.to_vec(),
            pos: 0,
        };
        proxy::http::serve(ctx, client, false, drain).await;

        // 2. The header functions, checked, on the heads hyper parses.
        let pi = w.pi.clone();
        let svc = service_fn(move |mut req: Request<Incoming>| {
            let pi = pi.clone();
            async move {
                check_headers(&mut req, &pi);
                Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
            }
        });
        let client = Client {
            data: data.to_vec(),
            pos: 0,
        };
        let _ = http1::Builder::new()
            .max_buf_size(w.pi.cfg.max_request_headers.max(8192))
            .serve_connection(TokioIo::new(client), svc)
            .with_upgrades()
            .await;
    });
});
