//! The sidecar end to end in one process: a fake app, the server's inbound sidecar, the client's
//! outbound sidecar, and a client, on loopback with a mocked original destination. One test per
//! behaviour of issue 3's traffic side.

mod harness;

use std::time::Duration;

use bytes::Bytes;
use harness::{App, Sidecar, get_req, httpbin_yaml, json, send, server_yaml, vip};
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The seed: curl from ubuntu to httpbin-service through two sidecars.
struct Seed {
    app: App,
    server: Sidecar,
    client: Sidecar,
}

async fn seed() -> Seed {
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&server_yaml())
        .inbound_to(app.addr)
        .start()
        .await;
    let client = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""))
        .start()
        .await;
    Seed {
        app,
        server,
        client,
    }
}

fn s<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} missing or not a string in {v}"))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn seed_request_headers_response_headers_and_both_access_logs() {
    let Seed {
        app,
        server,
        client,
    } = seed().await;
    let (resp, body) = client.get(vip(), "httpbin-service", "/headers").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["server"], "envoy");
    let ust = resp.headers()["x-envoy-upstream-service-time"]
        .to_str()
        .expect("ascii");
    assert!(ust.parse::<u64>().is_ok(), "{ust}");

    let seen = json(&body);
    let h = &seen["headers"];
    assert_eq!(s(&seen, "app"), "httpbin");
    assert_eq!(s(h, "host"), "httpbin-service");
    assert_eq!(s(h, "user-agent"), "curl/7.58.0");
    let request_id = s(h, "x-request-id");
    assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
    let trace = s(h, "x-b3-traceid");
    assert!(is_hex(trace, 32), "{trace}");
    // The client sidecar started the trace with root span = low half of the trace id; the server
    // sidecar made a child span of it.
    assert_eq!(s(h, "x-b3-parentspanid"), &trace[16..]);
    assert!(is_hex(s(h, "x-b3-spanid"), 16));
    assert_ne!(s(h, "x-b3-spanid"), &trace[16..]);
    assert!(matches!(s(h, "x-b3-sampled"), "0" | "1"));
    let tp = s(h, "traceparent");
    assert!(
        tp.starts_with(&format!("00-{trace}-{}-", s(h, "x-b3-spanid"))),
        "{tp}"
    );
    assert_eq!(s(h, "x-forwarded-proto"), "http");
    assert_eq!(s(h, "x-envoy-attempt-count"), "1");
    // The app is reached from 127.0.0.6, which the capture rules let through.
    assert!(
        s(&seen, "remote").starts_with("127.0.0.6:"),
        "{}",
        seen["remote"]
    );

    let out = &client.log_lines(1).await[0];
    assert_eq!(
        s(out, "upstream_cluster"),
        "outbound|80||httpbin-service.default.svc.cluster.local"
    );
    assert_eq!(s(out, "downstream_local_address"), "10.109.118.31:80");
    assert_eq!(s(out, "upstream_host"), server.inbound.to_string());
    assert_eq!(s(out, "authority"), "httpbin-service");
    assert_eq!(s(out, "method"), "GET");
    assert_eq!(s(out, "path"), "/headers");
    assert_eq!(s(out, "protocol"), "HTTP/1.1");
    assert_eq!(s(out, "request_id"), request_id);
    assert_eq!(s(out, "route_name"), "default");
    assert_eq!(out["response_code"], "200");
    assert_eq!(out["response_flags"], "-");
    assert_eq!(out["bytes_sent"], body.len().to_string());

    let inb = &server.log_lines(1).await[0];
    assert_eq!(
        s(inb, "upstream_cluster"),
        format!("inbound|{}||", app.addr.port())
    );
    assert_eq!(s(inb, "upstream_host"), app.addr.to_string());
    assert!(s(inb, "upstream_local_address").starts_with("127.0.0.6:"));
    assert_eq!(s(inb, "downstream_local_address"), app.addr.to_string());
    assert_eq!(s(inb, "request_id"), request_id);
    assert_eq!(inb["response_code"], "200");
    assert_eq!(s(inb, "requested_server_name"), "-");
}

#[tokio::test]
async fn inbound_bind_loopback_dials_127_0_0_1() {
    let app = App::start("httpbin").await;
    let mut b = Sidecar::builder(&server_yaml()).inbound_to(app.addr);
    b.cfg.inbound_bind = "127.0.0.1".parse().expect("ip");
    let server = b.start().await;
    let client = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""))
        .start()
        .await;
    let (resp, body) = client.get(vip(), "httpbin-service", "/headers").await;
    assert_eq!(resp.status(), 200);
    assert!(s(&json(&body), "remote").starts_with("127.0.0.1:"));
    let inb = &server.log_lines(1).await[0];
    assert_eq!(
        s(inb, "upstream_host"),
        format!("127.0.0.1:{}", app.addr.port())
    );
}

#[tokio::test]
async fn request_id_and_incoming_trace_are_continued() {
    let Seed {
        client,
        server: _server,
        app: _app,
    } = seed().await;
    let mut tx = client.h1(vip()).await;
    let mut req = get_req("httpbin-service", "/headers");
    req.headers_mut()
        .insert("x-request-id", "my-request-1".parse().expect("value"));
    req.headers_mut().insert(
        "x-b3-traceid",
        "3a3e0cd03f1ded4e361390f32cd55bdc".parse().expect("value"),
    );
    req.headers_mut()
        .insert("x-b3-spanid", "0000000000000abc".parse().expect("value"));
    req.headers_mut()
        .insert("x-b3-sampled", "1".parse().expect("value"));
    let (_, body) = send(&mut tx, req).await;
    let h = &json(&body)["headers"];
    assert_eq!(s(h, "x-request-id"), "my-request-1");
    assert_eq!(s(h, "x-b3-traceid"), "3a3e0cd03f1ded4e361390f32cd55bdc");
    assert_eq!(s(h, "x-b3-sampled"), "1");
    // Two hops each made a span: the app's parent is the client sidecar's span, not the caller's.
    assert_ne!(s(h, "x-b3-parentspanid"), "0000000000000abc");
    assert!(s(h, "traceparent").ends_with("-01"));
}

#[tokio::test]
async fn envoy_headers_from_outside_the_mesh_are_stripped() {
    let app = App::start("httpbin").await;
    // No workload at 127.0.0.1 here: the caller is outside the mesh.
    let server = Sidecar::builder("self: {name: httpbin, namespace: default}")
        .inbound_to(app.addr)
        .start()
        .await;
    let stream = tokio::net::TcpStream::connect(server.inbound)
        .await
        .expect("connect");
    let mut tx = harness::h1_client(stream).await;
    let mut req = get_req("httpbin", "/headers");
    req.headers_mut()
        .insert("x-envoy-retry-on", "5xx".parse().expect("value"));
    req.headers_mut()
        .insert("x-envoy-internal", "true".parse().expect("value"));
    req.headers_mut()
        .insert("x-custom", "kept".parse().expect("value"));
    let (_, body) = send(&mut tx, req).await;
    let h = &json(&body)["headers"];
    assert!(
        h.get("x-envoy-retry-on").is_none() && h.get("x-envoy-internal").is_none(),
        "{h}"
    );
    assert_eq!(s(h, "x-custom"), "kept");
}

#[tokio::test]
async fn http2_prior_knowledge_through_both_sidecars() {
    let Seed {
        client,
        server,
        app: _app,
    } = seed().await;
    let mut tx = harness::h2_client(client.connect_outbound(vip()).await).await;
    let req = Request::builder()
        .uri("http://httpbin-service/headers")
        .body(
            http_body_util::Full::new(Bytes::new())
                .map_err(|n| match n {})
                .boxed(),
        )
        .expect("request");
    let resp = tx.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["server"], "envoy");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let seen = json(&body);
    assert_eq!(s(&seen, "version"), "HTTP/2.0");
    assert_eq!(s(&seen["headers"], "x-forwarded-proto"), "http");
    assert_eq!(s(&client.log_lines(1).await[0], "protocol"), "HTTP/2");
    assert_eq!(
        s(&client.log_lines(1).await[0], "authority"),
        "httpbin-service"
    );
    assert_eq!(s(&server.log_lines(1).await[0], "protocol"), "HTTP/2");
}

/// A body far larger than the HTTP/2 windows and than what a connection holds for one write
/// (`conn_exec::HeldFlush`) goes through both sidecars and back byte for byte.
#[tokio::test]
async fn http2_large_body_streams_through_both_sidecars_and_back() {
    let Seed {
        client,
        server: _server,
        app: _app,
    } = seed().await;
    let sent: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let got = client
        .h2_echo(vip(), "httpbin-service", Bytes::from(sent.clone()))
        .await;
    assert_eq!(got.len(), sent.len());
    assert!(got[..] == sent[..], "the echoed body differs");
}

#[tokio::test]
async fn grpc_streaming_and_trailers_pass_intact() {
    let Seed {
        client,
        server: _server,
        app: _app,
    } = seed().await;
    let mut tx = harness::h2_client(client.connect_outbound(vip()).await).await;
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let req = Request::builder()
        .method("POST")
        .uri("http://httpbin-service/echo.Echo/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(harness::ChannelBody(body_rx).boxed())
        .expect("request");
    let resp = tx.send_request(req).await;
    // The response head only comes once the first message is through; send it concurrently.
    body_tx
        .send(Bytes::from_static(b"\0\0\0\0\x03one"))
        .await
        .expect("send 1");
    let resp = resp.expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Streaming: each message comes back before the next is sent.
    let first = body
        .frame()
        .await
        .expect("frame")
        .expect("ok")
        .into_data()
        .expect("data");
    assert_eq!(&first[..], b"\0\0\0\0\x03one");
    body_tx
        .send(Bytes::from_static(b"\0\0\0\0\x03two"))
        .await
        .expect("send 2");
    let second = body
        .frame()
        .await
        .expect("frame")
        .expect("ok")
        .into_data()
        .expect("data");
    assert_eq!(&second[..], b"\0\0\0\0\x03two");
    drop(body_tx);
    let trailers = loop {
        let f = body.frame().await.expect("trailers frame").expect("ok");
        if let Ok(t) = f.into_trailers() {
            break t;
        }
    };
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    let line = &client.log_lines(1).await[0];
    assert_eq!(line["response_code"], "200");
    assert_eq!(line["bytes_received"], "16");
    assert_eq!(line["bytes_sent"], "16");
    let metrics = client.telemetry.encode_prometheus();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains(r#"request_protocol="grpc""#)
                && l.contains(r#"grpc_response_status="0""#)),
        "{metrics}"
    );
}

#[tokio::test]
async fn websocket_upgrade_through_both_sidecars() {
    let Seed {
        client,
        server: _server,
        app: _app,
    } = seed().await;
    let mut tx = client.h1(vip()).await;
    let mut req = get_req("httpbin-service", "/ws");
    req.headers_mut()
        .insert("connection", "Upgrade".parse().expect("value"));
    req.headers_mut()
        .insert("upgrade", "websocket".parse().expect("value"));
    req.headers_mut().insert(
        "sec-websocket-key",
        "dGhlIHNhbXBsZSBub25jZQ==".parse().expect("value"),
    );
    req.headers_mut()
        .insert("sec-websocket-version", "13".parse().expect("value"));
    tx.ready().await.expect("ready");
    let mut resp = tx.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    let up = hyper::upgrade::on(&mut resp).await.expect("upgraded");
    let mut io = hyper_util::rt::TokioIo::new(up);
    for msg in [&b"ping"[..], b"second frame"] {
        io.write_all(msg).await.expect("write");
        let mut buf = vec![0u8; msg.len()];
        io.read_exact(&mut buf).await.expect("echo");
        assert_eq!(buf, msg);
    }
    drop(io);
    let line = &client.log_lines(1).await[0];
    assert_eq!(line["response_code"], "101");
    assert_eq!(line["bytes_sent"], "16");
}

/// With MeshConfig `protocolDetectionTimeout` set (Istio's default, 0s, waits for the
/// client), a server-first protocol on an undeclared port is opaque once it runs out.
#[tokio::test]
async fn server_first_tcp_protocol_falls_back_to_opaque_after_a_detection_timeout() {
    let banner = harness::banner_server().await;
    let yaml = format!(
        r#"
services:
- hostname: mail.default.svc.cluster.local
  name: mail
  namespace: default
  vips: [10.0.0.25]
  ports: [{{name: smtp, port: 25}}]
  endpoints: [{{address: {}, ports: {{25: {}}}}}]
"#,
        banner.ip(),
        banner.port()
    );
    let mut b = Sidecar::builder(&yaml);
    b.cfg.protocol_detection_timeout = Duration::from_millis(100);
    let client = b.start().await;
    let mut conn = client
        .connect_outbound("10.0.0.25:25".parse().expect("addr"))
        .await;
    let mut buf = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(30), conn.read_exact(&mut buf))
        .await
        .expect("the banner within 30 s")
        .expect("banner through the proxy");
    assert_eq!(&buf, b"220 banner ready\r\n");
    conn.write_all(b"HELO x\r\n").await.expect("write");
    let mut echo = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(30), conn.read_exact(&mut echo))
        .await
        .expect("the echo within 30 s")
        .expect("echo");
    assert_eq!(&echo, b"HELO x\r\n");
    drop(conn);
    let line = &client.log_lines(1).await[0];
    assert_eq!(
        s(line, "upstream_cluster"),
        "outbound|25||mail.default.svc.cluster.local"
    );
    assert_eq!(line["bytes_received"], "8");
    assert_eq!(line["bytes_sent"], "26");
}

#[tokio::test]
async fn declared_tcp_port_is_opaque_at_once() {
    let banner = harness::banner_server().await;
    let yaml = format!(
        r#"
services:
- hostname: mysql.default.svc.cluster.local
  name: mysql
  namespace: default
  vips: [10.0.0.33]
  ports: [{{name: mysql, port: 3306}}]
  endpoints: [{{address: {}, ports: {{3306: {}}}}}]
"#,
        banner.ip(),
        banner.port()
    );
    let mut b = Sidecar::builder(&yaml);
    // Detection would wait an hour: the banner can only arrive if the port skips it.
    b.cfg.protocol_detection_timeout = Duration::from_secs(3600);
    let client = b.start().await;
    let mut conn = client
        .connect_outbound("10.0.0.33:3306".parse().expect("addr"))
        .await;
    let mut buf = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(30), conn.read_exact(&mut buf))
        .await
        .expect("banner without waiting for detection")
        .expect("read");
    assert_eq!(&buf, b"220 banner ready\r\n");
}

#[tokio::test]
async fn opaque_tcp_through_both_sidecars_with_half_close() {
    let banner = harness::banner_server().await;
    // Plaintext between the sidecars: the server's side learns that the connection is opaque
    // only from a detection timeout (its port is declared nowhere in its resources), as a
    // server-first protocol on an undeclared port needs MeshConfig protocolDetectionTimeout.
    let mut b = Sidecar::builder(&server_yaml()).inbound_to(banner);
    b.cfg.protocol_detection_timeout = Duration::from_millis(100);
    let server = b.start().await;
    let yaml = format!(
        r#"
services:
- hostname: mail.default.svc.cluster.local
  name: mail
  namespace: default
  vips: [10.0.0.25]
  ports: [{{name: tcp-smtp, port: 25}}]
  endpoints: [{{address: 127.0.0.1, ports: {{25: {}}}}}]
"#,
        server.inbound.port()
    );
    let client = Sidecar::builder(&yaml).start().await;
    let mut conn = client
        .connect_outbound("10.0.0.25:25".parse().expect("addr"))
        .await;
    let mut buf = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(30), conn.read_exact(&mut buf))
        .await
        .expect("the banner within 30 s")
        .expect("banner");
    conn.write_all(b"QUIT\r\n").await.expect("write");
    conn.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut rest))
        .await
        .expect("EOF within 30 s")
        .expect("read to EOF after half-close");
    assert_eq!(rest, b"QUIT\r\n");
    let line = &server.log_lines(1).await[0];
    assert_eq!(
        s(line, "upstream_cluster"),
        format!("inbound|{}||", banner.port())
    );
}

#[tokio::test]
async fn unknown_destination_is_passed_through() {
    let app = App::start("external").await;
    let client = Sidecar::builder("{}").start().await;
    let (resp, body) = client.get(app.addr, "example.com", "/headers").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(s(&json(&body), "app"), "external");
    let line = &client.log_lines(1).await[0];
    assert_eq!(s(line, "upstream_cluster"), "PassthroughCluster");
    assert_eq!(s(line, "upstream_host"), app.addr.to_string());
}

async fn apps(n: usize) -> Vec<App> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(App::start(&format!("app{i}")).await);
    }
    v
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let apps = apps(3).await;
    let eps: Vec<_> = apps.iter().map(|a| a.addr).collect();
    let client = Sidecar::builder(&httpbin_yaml(&eps, "ROUND_ROBIN", ""))
        .start()
        .await;
    for _ in 0..6 {
        let (resp, _) = client.get(vip(), "httpbin-service", "/headers").await;
        assert_eq!(resp.status(), 200);
    }
    for a in &apps {
        assert_eq!(
            a.hits.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "{}",
            a.name
        );
    }
}

#[tokio::test]
async fn random_reaches_every_endpoint() {
    let apps = apps(3).await;
    let eps: Vec<_> = apps.iter().map(|a| a.addr).collect();
    let client = Sidecar::builder(&httpbin_yaml(&eps, "RANDOM", ""))
        .start()
        .await;
    let mut tx = client.h1(vip()).await;
    for _ in 0..60 {
        let (resp, _) = send(&mut tx, get_req("httpbin-service", "/headers")).await;
        assert_eq!(resp.status(), 200);
    }
    for a in &apps {
        assert!(
            a.hits.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "{} never picked",
            a.name
        );
    }
}

#[tokio::test]
async fn least_request_avoids_the_busy_endpoint() {
    let apps = apps(2).await;
    let eps: Vec<_> = apps.iter().map(|a| a.addr).collect();
    let client = std::sync::Arc::new(
        Sidecar::builder(&httpbin_yaml(&eps, "LEAST_REQUEST", ""))
            .start()
            .await,
    );
    let c = client.clone();
    let held = tokio::spawn(async move { c.get(vip(), "httpbin-service", "/hold").await });
    // Wait until one app holds the request.
    let busy = loop {
        if let Some(i) = apps
            .iter()
            .position(|a| a.hits.load(std::sync::atomic::Ordering::SeqCst) == 1)
        {
            apps[i].wait_holding(1).await;
            break i;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let idle = 1 - busy;
    for _ in 0..20 {
        let (_, body) = client.get(vip(), "httpbin-service", "/headers").await;
        assert_eq!(s(&json(&body), "app"), apps[idle].name);
    }
    apps[busy].release();
    assert_eq!(held.await.expect("join").0.status(), 200);
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_kept_alive() {
    let app = App::start("httpbin").await;
    let client = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", ""))
        .start()
        .await;
    let mut remotes = Vec::new();
    for _ in 0..3 {
        // A new downstream connection each time; the upstream one is reused.
        let (_, body) = client.get(vip(), "httpbin-service", "/headers").await;
        remotes.push(s(&json(&body), "remote").to_string());
        // Let the pool take the connection back (it does once the body is read).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remotes[0], remotes[1]);
    assert_eq!(remotes[1], remotes[2]);
}

#[tokio::test]
async fn refused_upstream_is_503_uf_with_retries_outbound() {
    let dead = harness::closed_port().await;
    let client = Sidecar::builder(&httpbin_yaml(&[dead], "ROUND_ROBIN", ""))
        .start()
        .await;
    let (resp, body) = client.get(vip(), "httpbin-service", "/headers").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure"
    );
    let line = &client.log_lines(1).await[0];
    assert_eq!(line["response_flags"], "UF,URX");
    assert_eq!(s(line, "upstream_host"), dead.to_string());
}

#[tokio::test]
async fn refused_app_is_503_uf_inbound() {
    let dead = harness::closed_port().await;
    let server = Sidecar::builder(&server_yaml())
        .inbound_to(dead)
        .start()
        .await;
    let stream = tokio::net::TcpStream::connect(server.inbound)
        .await
        .expect("connect");
    let mut tx = harness::h1_client(stream).await;
    let (resp, _) = send(&mut tx, get_req("httpbin", "/")).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(server.log_lines(1).await[0]["response_flags"], "UF");
}

#[tokio::test]
async fn retry_moves_to_a_live_endpoint() {
    let dead = harness::closed_port().await;
    let app = App::start("alive").await;
    let client = Sidecar::builder(&httpbin_yaml(&[dead, app.addr], "ROUND_ROBIN", ""))
        .start()
        .await;
    for _ in 0..4 {
        let (resp, body) = client.get(vip(), "httpbin-service", "/headers").await;
        assert_eq!(resp.status(), 200);
        let h = &json(&body)["headers"];
        assert!(matches!(s(h, "x-envoy-attempt-count"), "1" | "2"));
    }
}

#[tokio::test]
async fn no_endpoint_is_503_uh() {
    let client = Sidecar::builder(&httpbin_yaml(&[], "ROUND_ROBIN", ""))
        .start()
        .await;
    let (resp, body) = client.get(vip(), "httpbin-service", "/headers").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(&body[..], b"no healthy upstream");
    assert_eq!(client.log_lines(1).await[0]["response_flags"], "UH");
}

#[tokio::test]
async fn routes_give_nr_and_ut() {
    let app = App::start("httpbin").await;
    let extra = r#"
httpRoutes:
- name: default/httpbin
  hosts: [httpbin-service.default.svc.cluster.local]
  http:
  - name: slow
    match: [{uri: {prefix: /hold}}]
    timeoutMs: 100
  - name: ok
    match: [{uri: {prefix: /headers}}]
"#;
    let client = std::sync::Arc::new(
        Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", extra))
            .start()
            .await,
    );
    let (resp, _) = client
        .get(vip(), "httpbin-service", "/nothing-matches")
        .await;
    assert_eq!(resp.status(), 404);
    let (resp, body) = client.get(vip(), "httpbin-service", "/hold").await;
    assert_eq!(resp.status(), 504);
    assert_eq!(&body[..], b"upstream request timeout");
    let (resp, _) = client.get(vip(), "httpbin-service", "/headers").await;
    assert_eq!(resp.status(), 200);

    app.release();
    let lines = client.log_lines(3).await;
    assert_eq!(lines[0]["response_flags"], "NR");
    assert_eq!(lines[0]["response_code"], "404");
    assert_eq!(lines[1]["response_flags"], "UT");
    assert_eq!(s(&lines[1], "route_name"), "slow");
    assert_eq!(lines[2]["response_flags"], "-");
}

#[tokio::test]
async fn circuit_breaker_overflow_is_503_uo() {
    let app = App::start("httpbin").await;
    let extra = r#"
trafficPolicies:
- name: default/httpbin
  host: httpbin-service.default.svc.cluster.local
  policy: {settings: {connectionPool: {http: {maxRequests: 1}}}}
"#;
    let client = std::sync::Arc::new(
        Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", extra))
            .start()
            .await,
    );
    let c = client.clone();
    let held = tokio::spawn(async move { c.get(vip(), "httpbin-service", "/hold").await });
    app.wait_holding(1).await;
    let (resp, _) = client.get(vip(), "httpbin-service", "/headers").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(client.log_lines(1).await[0]["response_flags"], "UO");
    app.release();
    assert_eq!(held.await.expect("join").0.status(), 200);
}

async fn raw_exchange(
    addr: std::net::SocketAddr,
    orig: &proxy::orig_dst::StaticOrigDst,
    bytes: &[u8],
) -> String {
    let mut conn = harness::connect_via(addr, orig, vip()).await;
    conn.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_request_is_400_dpe() {
    let Seed {
        client,
        server: _server,
        app: _app,
    } = seed().await;
    let out = raw_exchange(
        client.outbound,
        &client.orig_dst,
        b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let line = &client.log_lines(1).await[0];
    assert_eq!(line["response_code"], "400");
    assert_eq!(line["response_flags"], "DPE");
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let Seed {
        client,
        app,
        server: _server,
    } = seed().await;
    let big = "a".repeat(70 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {big}\r\n\r\n");
    let out = raw_exchange(client.outbound, &client.orig_dst, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(client.log_lines(1).await[0]["response_code"], "431");
    assert_eq!(app.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn client_gone_is_logged_dc() {
    let Seed {
        client,
        app,
        server: _server,
    } = seed().await;
    let mut conn = client.connect_outbound(vip()).await;
    conn.write_all(b"GET /hold HTTP/1.1\r\nHost: httpbin-service\r\n\r\n")
        .await
        .expect("write");
    app.wait_holding(1).await;
    drop(conn);
    let line = &client.log_lines(1).await[0];
    assert_eq!(line["response_flags"], "DC");
    assert_eq!(line["response_code"], "0");
    app.release();
}

#[tokio::test]
async fn slow_client_is_cut_by_the_idle_timeout() {
    let app = App::start("httpbin").await;
    let mut b = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", ""));
    b.cfg.idle_timeout = Duration::from_millis(200);
    let client = b.start().await;
    let mut conn = client.connect_outbound(vip()).await;
    // An incomplete request head, never finished.
    conn.write_all(b"GET /headers HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut out))
        .await
        .expect("the proxy closes a client that never finishes its headers")
        .ok();
    assert_eq!(app.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn kept_alive_connection_lives_until_the_idle_timeout() {
    // A kept-alive connection idle for less than the idle timeout is kept...
    let app = App::start("httpbin").await;
    let mut b = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", ""));
    b.cfg.idle_timeout = Duration::from_millis(1500);
    let client = b.start().await;
    let mut tx = client.h1(vip()).await;
    for _ in 0..2 {
        let (resp, _) = send(&mut tx, get_req("httpbin-service", "/headers")).await;
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // ... and one idle for longer is closed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), tx.ready())
        .await
        .expect("the connection is ready or closed");
    assert!(closed.is_err(), "the idle connection was closed");
    assert_eq!(app.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The default is Envoy's downstream idle timeout, not seconds: a client's pool (and our own
    // client sidecar's, `pool_idle_timeout`) keeps idle connections far longer than that.
    let defaults = proxy::config::ProxyConfig::default();
    assert_eq!(defaults.idle_timeout, Duration::from_secs(3600));
    assert!(defaults.idle_timeout > defaults.pool_idle_timeout);
}

#[tokio::test]
async fn config_reload_swaps_endpoints_without_dropping_connections() {
    let (a, b) = (App::start("before").await, App::start("after").await);
    let path = std::env::temp_dir().join(format!("ama-proxy-reload-{}.yaml", std::process::id()));
    std::fs::write(&path, httpbin_yaml(&[a.addr], "ROUND_ROBIN", "")).expect("write config");
    let client = Sidecar::builder("").config_file(path.clone()).start().await;
    let mut tx = client.h1(vip()).await;
    let (_, body) = send(&mut tx, get_req("httpbin-service", "/headers")).await;
    assert_eq!(s(&json(&body), "app"), "before");
    let v1 = client.store.load().version;

    // A bad file is rejected; the previous config stays in force.
    std::fs::write(
        &path,
        "services: [{hostname: x, name: x, namespace: x, ports: [{port: 0}]}]",
    )
    .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.store.load().version, v1);
    let (_, body) = send(&mut tx, get_req("httpbin-service", "/headers")).await;
    assert_eq!(s(&json(&body), "app"), "before");

    std::fs::write(&path, httpbin_yaml(&[b.addr], "ROUND_ROBIN", "")).expect("write config");
    let mut switched = false;
    for _ in 0..500 {
        // Same downstream connection throughout: the reload must not drop it.
        let (resp, body) = send(&mut tx, get_req("httpbin-service", "/headers")).await;
        assert_eq!(resp.status(), 200);
        if s(&json(&body), "app") == "after" {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = std::fs::remove_file(&path);
    assert!(switched, "the new endpoint was never used");
    assert!(client.store.load().version > v1);
}

#[tokio::test]
async fn sigterm_drain_finishes_in_flight_and_stops_accepting() {
    let app = App::start("httpbin").await;
    let mut client = Sidecar::builder(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", ""))
        .start()
        .await;
    let mut tx = client.h1(vip()).await;
    tx.ready().await.expect("ready");
    let in_flight = tx.send_request(get_req("httpbin-service", "/hold"));
    let in_flight = tokio::spawn(in_flight);
    app.wait_holding(1).await;
    client.shutdown();
    // New connections are refused once the listener has stopped.
    let mut refused = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(client.outbound)
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "still accepting while draining");
    app.release();
    let resp = in_flight
        .await
        .expect("join")
        .expect("in-flight request finished");
    assert_eq!(resp.status(), 200);
    drop(tx);
    client
        .done
        .take()
        .expect("handle")
        .await
        .expect("run returned");
}

#[tokio::test]
async fn istio_metrics_carry_both_peers() {
    let Seed {
        client,
        server,
        app: _app,
    } = seed().await;
    let (resp, _) = client.get(vip(), "httpbin-service", "/headers").await;
    assert_eq!(resp.status(), 200);
    client.log_lines(1).await;
    server.log_lines(1).await;
    let src = client.telemetry.encode_prometheus();
    let line = src
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .unwrap_or_else(|| panic!("no istio_requests_total in:\n{src}"));
    for want in [
        r#"reporter="source""#,
        r#"source_workload="ubuntu-deployment""#,
        r#"destination_workload="httpbin-deployment""#,
        r#"destination_app="httpbin""#,
        r#"destination_version="v1""#,
        r#"destination_service="httpbin-service.default.svc.cluster.local""#,
        r#"destination_service_name="httpbin-service""#,
        r#"response_code="200""#,
        r#"request_protocol="http""#,
    ] {
        assert!(line.contains(want), "{want} not in {line}");
    }
    let dst = server.telemetry.encode_prometheus();
    let line = dst
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .unwrap_or_else(|| panic!("no istio_requests_total in:\n{dst}"));
    for want in [
        r#"reporter="destination""#,
        r#"source_app="ubuntu""#,
        r#"destination_workload="httpbin-deployment""#,
        r#"connection_security_policy="none""#,
    ] {
        assert!(line.contains(want), "{want} not in {line}");
    }
}
