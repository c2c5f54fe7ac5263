//! Traffic management on the outbound side, in process: subsets, weights, faults, retries,
//! header edits, direct responses and mirrors, with two fake app versions behind one service.

mod harness;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use harness::{App, Sidecar, get_req, json, send, vip};
use http_body_util::BodyExt;

/// The seed's client and an `httpbin-service` whose endpoints are `v1` and `v2` (labels
/// `version`), a DestinationRule with both subsets, and `extra` (routes).
fn two_versions(v1: SocketAddr, v2: SocketAddr, extra: &str) -> String {
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
services:
- hostname: httpbin-service.default.svc.cluster.local
  name: httpbin-service
  namespace: default
  vips: [10.109.118.31]
  ports: [{{name: http, port: 80}}]
  lbPolicy: ROUND_ROBIN
  endpoints:
  - {{address: {}, ports: {{80: {}}}, labels: {{app: httpbin, version: v1}}}}
  - {{address: {}, ports: {{80: {}}}, labels: {{app: httpbin, version: v2}}}}
trafficPolicies:
- name: default/httpbin
  host: httpbin-service.default.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
{extra}
"#,
        v1.ip(),
        v1.port(),
        v2.ip(),
        v2.port(),
    )
}

const HOST: &str = "httpbin-service.default.svc.cluster.local";

async fn start(extra: &str) -> (App, App, Sidecar) {
    let v1 = App::start("v1").await;
    let v2 = App::start("v2").await;
    let sidecar = Sidecar::builder(&two_versions(v1.addr, v2.addr, extra))
        .start()
        .await;
    (v1, v2, sidecar)
}

/// GETs `path` with `headers`, returning the status, the answering app (`x-app`) and the body.
async fn get(sidecar: &Sidecar, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut tx = sidecar.h1(vip()).await;
    let mut req = get_req("httpbin-service", path);
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            v.parse().expect("header value"),
        );
    }
    let (resp, body) = tokio::time::timeout(Duration::from_secs(20), send(&mut tx, req))
        .await
        .expect("answered within 20 s");
    let app = resp
        .headers()
        .get("x-app")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    (
        resp.status().as_u16(),
        app,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn header_match_routes_to_a_subset_and_nothing_else_does() {
    let routes = format!(
        r#"
httpRoutes:
- name: default/reviews
  hosts: [{HOST}]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{host: {HOST}, subset: v2}}]
  - route: [{{host: {HOST}, subset: v1}}]
"#
    );
    let (_v1, _v2, sidecar) = start(&routes).await;
    for _ in 0..20 {
        let (status, app, _) = get(&sidecar, "/get", &[("end-user", "jason")]).await;
        assert_eq!((status, app.as_str()), (200, "v2"));
        let (status, app, _) = get(&sidecar, "/get", &[("end-user", "json")]).await;
        assert_eq!((status, app.as_str()), (200, "v1"));
        let (status, app, _) = get(&sidecar, "/get", &[]).await;
        assert_eq!((status, app.as_str()), (200, "v1"));
    }
    let lines = sidecar.log_lines(60).await;
    assert!(
        lines
            .iter()
            .any(|l| l["upstream_cluster"] == format!("outbound|80|v2|{HOST}")),
        "the subset's cluster is logged"
    );
}

#[tokio::test]
async fn weights_split_between_subsets() {
    let routes = format!(
        r#"
httpRoutes:
- name: default/reviews
  hosts: [{HOST}]
  http:
  - route: [{{host: {HOST}, subset: v1, weight: 80}}, {{host: {HOST}, subset: v2, weight: 20}}]
"#
    );
    let (v1, v2, sidecar) = start(&routes).await;
    for _ in 0..1000 {
        assert_eq!(get(&sidecar, "/get", &[]).await.0, 200);
    }
    let (n1, n2) = (
        v1.hits.load(Ordering::SeqCst),
        v2.hits.load(Ordering::SeqCst),
    );
    assert_eq!(n1 + n2, 1000);
    assert!((750..=850).contains(&n1), "80/20 split gave {n1}/{n2}");
}

#[tokio::test]
async fn a_subset_no_rule_defines_is_503_nc() {
    let routes = format!(
        r#"
httpRoutes:
- name: default/reviews
  hosts: [{HOST}]
  http:
  - route: [{{host: {HOST}, subset: v3}}]
"#
    );
    let (_v1, _v2, sidecar) = start(&routes).await;
    assert_eq!(get(&sidecar, "/get", &[]).await.0, 503);
    let line = &sidecar.log_lines(1).await[0];
    assert_eq!(line["response_flags"], "NC");
    assert_eq!(line["response_code_details"], "cluster_not_found");
}

#[tokio::test]
async fn faults_abort_and_delay_as_envoys_fault_filter() {
    let routes = format!(
        r#"
httpRoutes:
- name: default/ratings
  hosts: [{HOST}]
  http:
  - match: [{{uri: {{prefix: /abort}}}}]
    fault: {{abort: {{status: {{http: 500}}, perMillion: 1000000}}}}
    route: [{{host: {HOST}, subset: v1}}]
  - match: [{{uri: {{prefix: /half}}}}]
    fault: {{abort: {{status: {{http: 503}}, perMillion: 500000}}}}
    route: [{{host: {HOST}, subset: v1}}]
    retries: {{attempts: 0}}
  - fault: {{delay: {{fixedDelayMs: 300, perMillion: 1000000}}}}
    route: [{{host: {HOST}, subset: v1}}]
"#
    );
    let (v1, _v2, sidecar) = start(&routes).await;
    let (status, _, body) = get(&sidecar, "/abort", &[]).await;
    assert_eq!((status, body.as_str()), (500, "fault filter abort"));
    assert_eq!(
        v1.hits.load(Ordering::SeqCst),
        0,
        "an abort never reaches the app"
    );
    let line = &sidecar.log_lines(1).await[0];
    assert_eq!(line["response_flags"], "FI");
    assert_eq!(line["response_code_details"], "fault_filter_abort");

    let t0 = Instant::now();
    let (status, app, _) = get(&sidecar, "/get", &[]).await;
    assert_eq!((status, app.as_str()), (200, "v1"));
    assert!(t0.elapsed() >= Duration::from_millis(300), "delayed");
    assert_eq!(sidecar.log_lines(2).await[1]["response_flags"], "DI");

    let mut aborted = 0;
    for _ in 0..400 {
        if get(&sidecar, "/half", &[]).await.0 == 503 {
            aborted += 1;
        }
    }
    assert!(
        (160..=240).contains(&aborted),
        "50% abort gave {aborted}/400"
    );
}

#[tokio::test]
async fn retries_turn_every_other_failure_into_success() {
    let routes = format!(
        r#"
httpRoutes:
- name: default/flaky
  hosts: [{HOST}]
  http:
  - route: [{{host: {HOST}, subset: v1}}]
    retries: {{attempts: 3, retryOn: 5xx}}
"#
    );
    let (v1, _v2, sidecar) = start(&routes).await;
    for _ in 0..50 {
        let (status, app, _) = get(&sidecar, "/flaky", &[]).await;
        assert_eq!((status, app.as_str()), (200, "v1"));
    }
    // Each success took one failure first.
    assert_eq!(v1.hits.load(Ordering::SeqCst), 100);
    let (_, _, body) = get(&sidecar, "/headers", &[]).await;
    assert_eq!(json(&body.into())["headers"]["x-envoy-attempt-count"], "1");
}

#[tokio::test]
async fn istios_default_policy_leaves_an_apps_503_alone() {
    // No VirtualService: Istio's default route retries connect failures, refused streams and
    // gRPC unavailable/cancelled, but since Istio 1.24 not a 503 the app sent (istio#52111).
    let (v1, v2, sidecar) = start("").await;
    let (status, _, _) = get(&sidecar, "/status/503", &[]).await;
    assert_eq!(status, 503);
    assert_eq!(
        v1.hits.load(Ordering::SeqCst) + v2.hits.load(Ordering::SeqCst),
        1
    );
    assert_eq!(sidecar.log_lines(1).await[0]["response_flags"], "-");
}

#[tokio::test]
async fn a_503_named_in_retry_on_is_retried_then_urx() {
    let routes = format!(
        r#"
httpRoutes:
- name: default/httpbin
  hosts: [{HOST}]
  http:
  - route: [{{host: {HOST}, subset: v1}}]
    retries: {{attempts: 2, retryOn: "503"}}
"#
    );
    let (v1, _v2, sidecar) = start(&routes).await;
    let (status, _, _) = get(&sidecar, "/status/503", &[]).await;
    assert_eq!(status, 503);
    assert_eq!(
        v1.hits.load(Ordering::SeqCst),
        3,
        "the first try and two retries"
    );
    assert_eq!(sidecar.log_lines(1).await[0]["response_flags"], "URX");
    // A 500 is not in retryOn.
    let (status, _, _) = get(&sidecar, "/status/500", &[]).await;
    assert_eq!(status, 500);
    assert_eq!(v1.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn headers_direct_responses_and_mirrors() {
    let routes = format!(
        r#"
httpRoutes:
- name: default/httpbin
  hosts: [{HOST}]
  http:
  - match: [{{uri: {{exact: /direct}}}}]
    directResponse: {{status: 418, body: short and stout}}
  - route:
    - host: {HOST}
      subset: v1
      headers: {{request: {{set: {{x-dest: v1}}}}}}
    headers:
      request: {{set: {{x-added: yes}}, remove: [x-secret]}}
      response: {{add: {{x-resp: one}}, remove: [server]}}
    mirrors: [{{host: {HOST}, subset: v2, perMillion: 1000000}}]
"#
    );
    let (v1, v2, sidecar) = start(&routes).await;
    let (status, _, body) = get(&sidecar, "/direct", &[]).await;
    assert_eq!((status, body.as_str()), (418, "short and stout"));
    assert_eq!(v1.hits.load(Ordering::SeqCst), 0);

    let mut tx = sidecar.h1(vip()).await;
    let mut req = get_req("httpbin-service", "/headers");
    req.headers_mut()
        .insert("x-secret", "hush".parse().expect("value"));
    let (resp, body) = send(&mut tx, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-resp"], "one");
    assert!(resp.headers().get("server").is_none(), "server removed");
    let seen = json(&body);
    assert_eq!(seen["app"], "v1");
    assert_eq!(seen["headers"]["x-added"], "yes");
    assert_eq!(seen["headers"]["x-dest"], "v1");
    assert!(seen["headers"].get("x-secret").is_none());
    // The mirror got a copy; its answer went nowhere.
    for _ in 0..200 {
        if v2.hits.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(v2.hits.load(Ordering::SeqCst), 1, "mirrored once");
}

#[tokio::test]
async fn per_try_timeout_is_retried_then_504_ut() {
    let routes = format!(
        r#"
httpRoutes:
- name: default/slow
  hosts: [{HOST}]
  http:
  - route: [{{host: {HOST}, subset: v1}}]
    retries: {{attempts: 2, perTryTimeoutMs: 200, retryOn: gateway-error}}
"#
    );
    let (v1, _v2, sidecar) = start(&routes).await;
    let (status, _, body) = get(&sidecar, "/hold", &[]).await;
    assert_eq!((status, body.as_str()), (504, "upstream request timeout"));
    assert_eq!(
        v1.hits.load(Ordering::SeqCst),
        3,
        "the first try and two retries"
    );
    let line = &sidecar.log_lines(1).await[0];
    assert_eq!(line["response_flags"], "UT,URX");
    assert_eq!(line["response_code_details"], "upstream_per_try_timeout");
    v1.release();
}

#[tokio::test]
async fn outlier_detection_ejects_the_failing_endpoint() {
    let extra = r#"
- name: default/httpbin-outlier
  host: httpbin-service.default.svc.cluster.local
  policy:
    settings:
      outlierDetection: {consecutive5xxErrors: 1, intervalMs: 100, baseEjectionTimeMs: 60000, maxEjectionPercent: 100}
"#;
    let v1 = App::start("v1").await;
    let v2 = App::start("v2").await;
    // The two-version resources with the DestinationRule's policy replaced by this one.
    let yaml = two_versions(v1.addr, v2.addr, "").replace(
        "trafficPolicies:\n- name: default/httpbin\n  host: httpbin-service.default.svc.cluster.local\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n",
        &format!("trafficPolicies:{extra}"),
    );
    let sidecar = Sidecar::builder(&yaml).start().await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(get(&sidecar, "/fail-if/v2", &[]).await.0);
    }
    // v2 failed once (the default policy does not retry a 503) and was ejected at once.
    assert_eq!(v2.hits.load(Ordering::SeqCst), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|s| **s == 503).count(), 1);
    let snap = sidecar.store.load();
    let cluster = snap.services[0]
        .cluster(80, None)
        .expect("the service's cluster");
    assert_eq!(cluster.health_flags(v2.addr), "/failed_outlier_check");
    assert_eq!(cluster.health_flags(v1.addr), "healthy");
    // What the admin port shows, in Envoy's words.
    let admin = proxy::dump::TrafficAdmin(proxy::ProxyInputs::new(
        std::sync::Arc::new(proxy::config::ProxyConfig::default()),
        sidecar.store.clone(),
        sidecar.telemetry.clone(),
    ));
    use proxy::admin::AdminSource;
    let clusters = admin.clusters();
    let line = format!(
        "outbound|80||{HOST}::{}::health_flags::/failed_outlier_check",
        v2.addr
    );
    assert!(clusters.contains(&line), "{clusters}");
    let stats = admin.cluster_stats();
    let active = format!("cluster.outbound|80||{HOST}.outlier_detection.ejections_active: 1");
    assert!(stats.contains(&active), "{stats}");
}

#[tokio::test]
async fn consistent_hash_on_a_header_sticks() {
    let yaml = format!(
        r#"
httpRoutes:
- name: default/httpbin
  hosts: [{HOST}]
  http:
  - route: [{{host: {HOST}}}]
"#
    );
    let v1 = App::start("v1").await;
    let v2 = App::start("v2").await;
    let resources = two_versions(v1.addr, v2.addr, &yaml).replace(
        "  subsets:\n",
        "  policy: {settings: {loadBalancer: {consistentHash: {key: {header: x-user}, algorithm: {ring: {minimumRingSize: 1024}}}}}}\n  subsets:\n",
    );
    let sidecar = Sidecar::builder(&resources).start().await;
    for user in ["alice", "bob", "carol", "dave"] {
        let first = get(&sidecar, "/get", &[("x-user", user)]).await.1;
        for _ in 0..10 {
            assert_eq!(
                get(&sidecar, "/get", &[("x-user", user)]).await.1,
                first,
                "{user}"
            );
        }
    }
}

#[tokio::test]
async fn regex_method_rewrite_and_cors() {
    let routes = format!(
        r#"
httpRoutes:
- name: default/httpbin
  hosts: [{HOST}]
  http:
  - match: [{{uri: {{regex: "/v[0-9]+/items"}}, method: {{exact: POST}}}}]
    route: [{{host: {HOST}, subset: v2}}]
  - match: [{{uri: {{prefix: /old}}}}]
    rewrite: {{uri: /new, authority: rewritten.example}}
    route: [{{host: {HOST}, subset: v1}}]
  - match: [{{uri: {{prefix: /api}}}}]
    cors: {{allowOrigins: [{{exact: "https://ok.example"}}], allowMethods: [GET], maxAgeS: 60}}
    route: [{{host: {HOST}, subset: v1}}]
"#
    );
    let (_v1, _v2, sidecar) = start(&routes).await;
    // Regex and method together.
    let mut tx = sidecar.h1(vip()).await;
    let mut post = get_req("httpbin-service", "/v12/items");
    *post.method_mut() = http::Method::POST;
    let (resp, _) = send(&mut tx, post).await;
    assert_eq!(resp.headers()["x-app"], "v2");
    assert_eq!(
        get(&sidecar, "/v12/items", &[]).await.0,
        404,
        "GET matches no route"
    );
    assert_eq!(get(&sidecar, "/vX/items", &[]).await.0, 404);
    // Rewrite: the prefix replaced, the query kept, the authority rewritten.
    let (status, app, body) = get(&sidecar, "/old/thing?q=1", &[]).await;
    assert_eq!((status, app.as_str()), (200, "v1"));
    let seen = json(&body.into());
    assert_eq!(seen["path"], "/new/thing");
    assert_eq!(seen["headers"]["host"], "rewritten.example");
    assert_eq!(seen["headers"]["x-envoy-original-path"], "/old/thing?q=1");
    // CORS: a preflight from an allowed origin is answered here.
    let mut tx = sidecar.h1(vip()).await;
    let mut pre = get_req("httpbin-service", "/api/x");
    *pre.method_mut() = http::Method::OPTIONS;
    pre.headers_mut()
        .insert("origin", "https://ok.example".parse().expect("v"));
    pre.headers_mut()
        .insert("access-control-request-method", "GET".parse().expect("v"));
    let (resp, _) = send(&mut tx, pre).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://ok.example"
    );
    assert!(
        resp.headers().get("x-app").is_none(),
        "answered by the proxy"
    );
    let (status, _, _) = get(&sidecar, "/api/x", &[("origin", "https://ok.example")]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_post_body_is_sent_again_on_retry() {
    let routes = format!(
        r#"
httpRoutes:
- name: default/flaky
  hosts: [{HOST}]
  http:
  - route: [{{host: {HOST}, subset: v1}}]
    retries: {{attempts: 2, retryOn: 5xx}}
"#
    );
    let (v1, _v2, sidecar) = start(&routes).await;
    let mut tx = sidecar.h1(vip()).await;
    let req = http::Request::builder()
        .method("POST")
        .uri("/flaky/upload")
        .header("host", "httpbin-service")
        .body(
            http_body_util::Full::new(bytes::Bytes::from_static(b"payload"))
                .map_err(|n| match n {})
                .boxed(),
        )
        .expect("request");
    // `/flaky/upload` fails the first time; the retry carries the same 7 bytes to `/upload`.
    let (resp, body) = send(&mut tx, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"7");
    assert_eq!(v1.hits.load(Ordering::SeqCst), 2);
}

/// The first bytes of a TLS connection to `sni` (a ClientHello), as a real client sends them.
fn client_hello(sni: &str) -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).expect("name");
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("conn");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write");
    }
    out
}

#[tokio::test]
async fn tls_routes_go_by_sni_and_tcp_routes_by_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = harness::banner_server().await;
    let b = harness::banner_server().await;
    let resources = format!(
        r#"
self: {{name: ubuntu-deployment-cc86cc647-vsvbh, namespace: default}}
services:
- hostname: {HOST}
  name: httpbin-service
  namespace: default
  vips: [10.109.118.31]
  ports: [{{name: tls, port: 443}}, {{name: tcp, port: 9000}}]
  endpoints:
  - {{address: {}, ports: {{443: {}, 9000: {}}}, labels: {{version: v1}}}}
  - {{address: {}, ports: {{443: {}, 9000: {}}}, labels: {{version: v2}}}}
trafficPolicies:
- name: default/httpbin
  host: {HOST}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
httpRoutes:
- name: default/httpbin
  hosts: [{HOST}]
  tls:
  - match: [{{sniHosts: [a.example.com], port: 443}}]
    route: [{{host: {HOST}, subset: v1}}]
  - match: [{{sniHosts: ["*.example.com"], port: 443}}]
    route: [{{host: {HOST}, subset: v2}}]
  tcp:
  - match: [{{port: 9000}}]
    route: [{{host: {HOST}, subset: v2}}]
"#,
        a.ip(),
        a.port(),
        a.port(),
        b.ip(),
        b.port(),
        b.port(),
    );
    let sidecar = Sidecar::builder(&resources).start().await;
    let vip443: SocketAddr = "10.109.118.31:443".parse().expect("addr");
    let vip9000: SocketAddr = "10.109.118.31:9000".parse().expect("addr");
    for (i, (dst, first, want)) in [
        (vip443, client_hello("a.example.com"), a),
        (vip443, client_hello("z.example.com"), b),
        (vip9000, b"plain bytes".to_vec(), b),
        (vip443, client_hello("a.example.com"), a),
    ]
    .into_iter()
    .enumerate()
    {
        let mut conn = sidecar.connect_outbound(dst).await;
        conn.write_all(&first).await.expect("write");
        let mut banner = [0u8; 18];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut banner))
            .await
            .expect("a banner within 10 s")
            .expect("read");
        assert_eq!(&banner, b"220 banner ready\r\n");
        drop(conn);
        let line = &sidecar.log_lines(i + 1).await[i];
        assert_eq!(line["upstream_host"], want.to_string(), "{line}");
    }
}
