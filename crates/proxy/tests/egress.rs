//! Egress: `outboundTrafficPolicy` (ALLOW_ANY passes unknown destinations through,
//! REGISTRY_ONLY answers HTTP 502 from `block_all` and closes TCP on `BlackHoleCluster`), and
//! ServiceEntry hosts (by Host header without a VIP, wildcards, `resolution: NONE` and `DNS`)
//! with the VirtualService features that apply per host.

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::{App, Sidecar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The proxy's own workload, and `extra` (services, routes, policy) after it.
fn resources(extra: &str) -> String {
    format!(
        r#"
self: {{name: sleep-5d8c7f9b4-x2x7k, namespace: default}}
{extra}
"#
    )
}

/// An external address the app "dials": never dialled itself when a STATIC/DNS ServiceEntry
/// claims the host (TEST-NET-3).
fn external(port: u16) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 7], port))
}

#[tokio::test]
async fn allow_any_passes_unknown_destinations_through() {
    let app = App::start("outside").await;
    let sidecar = Sidecar::builder(&resources("")).start().await;
    let (resp, _) = sidecar.get(app.addr, "outside.example", "/get").await;
    assert_eq!(resp.status(), 200);
    let line = &sidecar.log_lines(1).await[0];
    assert_eq!(line["upstream_cluster"], "PassthroughCluster");
    assert_eq!(line["route_name"], "allow_any");
}

#[tokio::test]
async fn registry_only_answers_http_502_from_block_all() {
    let app = App::start("outside").await;
    let sidecar = Sidecar::builder(&resources("outboundTrafficPolicy: REGISTRY_ONLY"))
        .start()
        .await;
    let (resp, body) = sidecar.get(app.addr, "outside.example", "/get").await;
    assert_eq!(resp.status(), 502);
    assert!(body.is_empty(), "{body:?}");
    assert_eq!(app.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let line = &sidecar.log_lines(1).await[0];
    assert_eq!(line["route_name"], "block_all", "{line}");
    assert_eq!(line["response_code_details"], "direct_response", "{line}");
    assert_eq!(line["response_flags"], "-", "{line}");
    assert!(
        line["upstream_cluster"].is_null() || line["upstream_cluster"] == "-",
        "{line}"
    );
}

#[tokio::test]
async fn registry_only_closes_tcp_on_blackhole_cluster() {
    let server = harness::banner_server().await;
    let sidecar = Sidecar::builder(&resources("outboundTrafficPolicy: REGISTRY_ONLY"))
        .start()
        .await;
    let mut conn = sidecar.connect_outbound(server).await;
    conn.write_all(b"EHLO client\r\n").await.expect("write");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("the proxy closes the connection within 10 s");
    // Closed (EOF) or reset: nothing of the server's banner comes through.
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let line = &sidecar.log_lines(1).await[0];
    assert_eq!(line["upstream_cluster"], "BlackHoleCluster", "{line}");
    assert_eq!(line["response_flags"], "UH", "{line}");
}

/// A MESH_EXTERNAL ServiceEntry host without VIP, STATIC on the app, with `extra` after it.
fn service_entry(app: SocketAddr, extra: &str) -> String {
    resources(&format!(
        r#"
outboundTrafficPolicy: REGISTRY_ONLY
services:
- hostname: api.external.test
  name: api.external.test
  namespace: default
  meshExternal: true
  resolution: STATIC
  ports: [{{name: http, port: 80, protocol: HTTP}}]
  endpoints: [{{address: {}, ports: {{80: {}}}}}]
{extra}
"#,
        app.ip(),
        app.port()
    ))
}

#[tokio::test]
async fn service_entry_host_is_routed_by_host_header_under_registry_only() {
    let app = App::start("api").await;
    let sidecar = Sidecar::builder(&service_entry(app.addr, "")).start().await;
    // The app resolved the host to some address and dialled its port 80.
    for host in ["api.external.test", "api.external.test:80"] {
        let (resp, body) = sidecar.get(external(80), host, "/get").await;
        assert_eq!(resp.status(), 200, "{host}");
        assert_eq!(harness::json(&body)["app"], "api");
    }
    // Another host on the same address is still blocked.
    let (resp, _) = sidecar
        .get(external(80), "other.external.test", "/get")
        .await;
    assert_eq!(resp.status(), 502);
    let lines = sidecar.log_lines(3).await;
    assert_eq!(
        lines[0]["upstream_cluster"],
        "outbound|80||api.external.test"
    );
    assert_eq!(lines[0]["upstream_host"], app.addr.to_string());
    assert_eq!(lines[2]["route_name"], "block_all");
}

#[tokio::test]
async fn virtual_service_on_a_service_entry_host_applies_timeout_and_fault() {
    let app = App::start("api").await;
    let routes = r#"
httpRoutes:
- name: default/api
  hosts: [api.external.test]
  http:
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {status: {http: 418}, perMillion: 1000000}}
    route: [{host: api.external.test}]
  - match: [{uri: {prefix: /hold}}]
    timeoutMs: 200
    route: [{host: api.external.test}]
  - route: [{host: api.external.test}]
"#;
    let sidecar = Sidecar::builder(&service_entry(app.addr, routes))
        .start()
        .await;
    let (resp, _) = sidecar
        .get(external(80), "api.external.test", "/abort")
        .await;
    assert_eq!(resp.status(), 418);
    let (resp, _) = sidecar
        .get(external(80), "api.external.test", "/hold")
        .await;
    assert_eq!(resp.status(), 504);
    app.release();
    let lines = sidecar.log_lines(2).await;
    assert_eq!(lines[0]["response_flags"], "FI", "{}", lines[0]);
    assert_eq!(lines[1]["response_flags"], "UT", "{}", lines[1]);
    assert_eq!(
        lines[1]["upstream_cluster"],
        "outbound|80||api.external.test"
    );
}

#[tokio::test]
async fn wildcard_host_with_resolution_none_goes_to_the_dialled_address() {
    let app = App::start("wiki").await;
    let port = app.addr.port();
    let yaml = resources(&format!(
        r#"
outboundTrafficPolicy: REGISTRY_ONLY
services:
- hostname: "*.wikipedia.test"
  name: "*.wikipedia.test"
  namespace: default
  meshExternal: true
  resolution: NONE
  ports: [{{name: http, port: {port}, protocol: HTTP}}]
"#
    ));
    let sidecar = Sidecar::builder(&yaml).start().await;
    let (resp, body) = sidecar.get(app.addr, "en.wikipedia.test", "/get").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(harness::json(&body)["app"], "wiki");
    // The bare suffix is not covered by the wildcard.
    let (resp, _) = sidecar.get(app.addr, "wikipedia.test", "/get").await;
    assert_eq!(resp.status(), 502);
    let lines = sidecar.log_lines(2).await;
    assert_eq!(
        lines[0]["upstream_cluster"],
        format!("outbound|{port}||*.wikipedia.test")
    );
}

#[tokio::test]
async fn dns_endpoint_is_resolved_off_the_request_path() {
    let app = App::start("dns").await;
    let yaml = resources(&format!(
        r#"
outboundTrafficPolicy: REGISTRY_ONLY
services:
- hostname: api.external.test
  name: api.external.test
  namespace: default
  meshExternal: true
  resolution: DNS
  ports: [{{name: http, port: 80, protocol: HTTP}}]
  dnsEndpoints: [{{hostname: localhost, ports: {{80: {}}}}}]
"#,
        app.addr.port()
    ));
    let sidecar = Sidecar::builder(&yaml).start().await;
    // The first answer arrives in the background: until then the cluster has no endpoint.
    let mut last = 0;
    for _ in 0..100 {
        let (resp, _) = sidecar.get(external(80), "api.external.test", "/get").await;
        last = resp.status().as_u16();
        if last == 200 {
            break;
        }
        assert_eq!(last, 503, "before the answer: no healthy upstream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 200, "localhost never resolved");
    let snap = sidecar.store.load();
    let entry = snap
        .service_by_host("api.external.test")
        .expect("the host is known");
    assert!(
        entry.clusters[0]
            .endpoints
            .iter()
            .all(|e| e.addr.ip().is_loopback() && e.addr.port() == app.addr.port()),
        "{:?}",
        entry.clusters[0].endpoints
    );
}

/// A TLS server with a self-signed certificate for `names`: answers every HTTP/1 request with
/// the SNI the client sent. Returns its address and its certificate (PEM), which is its CA.
async fn tls_server(names: &[&str]) -> (SocketAddr, String) {
    tls_server_with(names, None).await
}

/// [`tls_server`], requiring a client certificate signed by `client_ca` when given (its answer
/// then says `client=yes`).
async fn tls_server_with(
    names: &[&str],
    client_ca: Option<rustls_pki_types::CertificateDer<'static>>,
) -> (SocketAddr, String) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let builder = rustls::ServerConfig::builder_with_provider(identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).expect("client CA");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                identity::tls::crypto_provider(),
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let conn = tls.get_ref().1;
                let client = if conn.peer_certificates().is_some() {
                    " client=yes"
                } else {
                    ""
                };
                let sni = format!("{}{client}", conn.server_name().unwrap_or("-"));
                let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let sni = sni.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(format!("tls sni={sni}"))),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, cert.pem())
}

/// Istio's "Egress TLS Origination": the app sends plain HTTP to port 80, the ServiceEntry
/// maps it to the server's TLS port, and the DestinationRule's port 80 says SIMPLE.
fn origination_yaml(server: SocketAddr, tls: &str) -> String {
    resources(&format!(
        r#"
outboundTrafficPolicy: REGISTRY_ONLY
services:
- hostname: api.external.test
  name: api.external.test
  namespace: default
  meshExternal: true
  resolution: STATIC
  ports: [{{name: http-port, port: 80, protocol: HTTP, targetPort: {}}}]
  endpoints: [{{address: {}}}]
trafficPolicies:
- name: default/api
  host: api.external.test
  policy:
    portLevelSettings:
    - port: 80
      settings: {{tls: {tls}}}
"#,
        server.port(),
        server.ip()
    ))
}

#[tokio::test]
async fn tls_origination_simple_verifies_the_server_and_sends_sni() {
    let (server, ca) = tls_server(&["api.external.test"]).await;
    let (_, other_ca) = tls_server(&["api.external.test"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("write ca");
    let wrong_file = dir.path().join("wrong.pem");
    std::fs::write(&wrong_file, other_ca).expect("write ca");
    let ca_path = ca_file.display();
    let wrong_path = wrong_file.display();

    let sidecar = Sidecar::builder(&origination_yaml(
        server,
        &format!("{{mode: SIMPLE, caCertificates: {ca_path}}}"),
    ))
    .start()
    .await;
    let (resp, body) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body, "tls sni=api.external.test");
    drop(sidecar);

    // `sni` replaces the host; `subjectAltNames` is what the certificate must carry.
    let sidecar = Sidecar::builder(&origination_yaml(
        server,
        &format!(
            "{{mode: SIMPLE, sni: other.example, subjectAltNames: [api.external.test], \
             caCertificates: {ca_path}}}"
        ),
    ))
    .start()
    .await;
    let (resp, body) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body, "tls sni=other.example");
    drop(sidecar);

    // A server the CA did not sign: 503 UF, nothing sent in plaintext.
    let sidecar = Sidecar::builder(&origination_yaml(
        server,
        &format!("{{mode: SIMPLE, caCertificates: {wrong_path}}}"),
    ))
    .start()
    .await;
    let (resp, _) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 503);
    let line = &sidecar.log_lines(1).await[0];
    // Connect failures are retried (Istio's default retry policy), then UF.
    assert_eq!(line["response_flags"], "UF,URX", "{line}");
    let reason = line["upstream_transport_failure_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.starts_with("TLS_error:") && reason.contains("certificate"),
        "{line}"
    );
    drop(sidecar);

    // A name the certificate does not carry fails too; insecureSkipVerify accepts anything.
    let sidecar = Sidecar::builder(&origination_yaml(
        server,
        &format!("{{mode: SIMPLE, subjectAltNames: [nope.example], caCertificates: {ca_path}}}"),
    ))
    .start()
    .await;
    let (resp, _) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 503);
    drop(sidecar);
    let sidecar = Sidecar::builder(&origination_yaml(
        server,
        &format!("{{mode: SIMPLE, insecureSkipVerify: true, caCertificates: {wrong_path}}}"),
    ))
    .start()
    .await;
    let (resp, _) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn tls_origination_with_an_unreadable_ca_fails_closed() {
    let (server, _) = tls_server(&["api.external.test"]).await;
    let sidecar = Sidecar::builder(&origination_yaml(
        server,
        "{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}",
    ))
    .start()
    .await;
    let (resp, _) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 503);
    let line = &sidecar.log_lines(1).await[0];
    assert_eq!(line["response_flags"], "UF,URX", "{line}");
    assert!(
        line["upstream_transport_failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("caCertificates")),
        "{line}"
    );
}

#[tokio::test]
async fn tls_origination_mutual_presents_the_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("client CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let client_key = KeyPair::generate().expect("key");
    let client_cert = CertificateParams::new(vec!["client.test".to_string()])
        .expect("params")
        .signed_by(&client_key, &issuer)
        .expect("client cert");
    let (server, server_ca) =
        tls_server_with(&["api.external.test"], Some(ca_cert.der().clone())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let ca = write("ca.pem", server_ca);
    let cert = write("cert.pem", client_cert.pem());
    let key = write("key.pem", client_key.serialize_pem());

    let sidecar = Sidecar::builder(&origination_yaml(
        server,
        &format!(
            "{{mode: MUTUAL, caCertificates: {ca}, clientCertificate: {cert}, privateKey: {key}}}"
        ),
    ))
    .start()
    .await;
    let (resp, body) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body, "tls sni=api.external.test client=yes");
    drop(sidecar);

    // SIMPLE to the same server: it refuses the handshake without a client certificate.
    let sidecar = Sidecar::builder(&origination_yaml(
        server,
        &format!("{{mode: SIMPLE, caCertificates: {ca}}}"),
    ))
    .start()
    .await;
    let (resp, _) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 503);
}

#[tokio::test]
async fn tls_origination_applies_to_opaque_tcp() {
    let (server, ca) = tls_server(&["db.external.test"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("write ca");
    let yaml = resources(&format!(
        r#"
services:
- hostname: db.external.test
  name: db.external.test
  namespace: default
  meshExternal: true
  resolution: STATIC
  vips: [240.0.0.9]
  ports: [{{name: tcp, port: 5432, protocol: TCP, targetPort: {}}}]
  endpoints: [{{address: {}}}]
trafficPolicies:
- name: default/db
  host: db.external.test
  policy: {{settings: {{tls: {{mode: SIMPLE, caCertificates: {}}}}}}}
"#,
        server.port(),
        server.ip(),
        ca_file.display()
    ));
    let sidecar = Sidecar::builder(&yaml).start().await;
    let mut conn = sidecar
        .connect_outbound("240.0.0.9:5432".parse().expect("addr"))
        .await;
    conn.write_all(b"GET / HTTP/1.1\r\nhost: db\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the answer comes within 10 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("tls sni=db.external.test"), "{answer}");
}

#[tokio::test]
async fn tls_to_a_service_entry_host_without_vip_is_routed_by_sni() {
    let (server, ca) = tls_server(&["secure.external.test", "other.external.test"]).await;
    let port = server.port();
    let yaml = resources(&format!(
        r#"
outboundTrafficPolicy: REGISTRY_ONLY
services:
- hostname: secure.external.test
  name: secure.external.test
  namespace: default
  meshExternal: true
  resolution: NONE
  ports: [{{name: https, port: {port}, protocol: TLS}}]
"#
    ));
    let sidecar = Sidecar::builder(&yaml).start().await;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let client = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let connector = tokio_rustls::TlsConnector::from(client);
    // The app dialled the server's address (resolved by its own DNS), with SNI the host.
    let conn = sidecar.connect_outbound(server).await;
    let name = rustls_pki_types::ServerName::try_from("secure.external.test").expect("name");
    let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, conn))
        .await
        .expect("handshake in time")
        .expect("handshake through the sidecar");
    tls.write_all(b"GET / HTTP/1.1\r\nhost: secure.external.test\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&answer).ends_with("tls sni=secure.external.test"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(tls);
    // Another name on the same address is blocked.
    let conn = sidecar.connect_outbound(server).await;
    let name = rustls_pki_types::ServerName::try_from("other.external.test").expect("name");
    let refused = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, conn))
        .await
        .expect("refused in time");
    assert!(refused.is_err());
    let lines = sidecar.log_lines(2).await;
    let clusters: Vec<_> = lines
        .iter()
        .map(|l| l["upstream_cluster"].clone())
        .collect();
    assert!(
        clusters.contains(&serde_json::json!(format!(
            "outbound|{port}||secure.external.test"
        ))),
        "{clusters:?}"
    );
    assert!(
        clusters.contains(&serde_json::json!("BlackHoleCluster")),
        "{clusters:?}"
    );
    let names: Vec<_> = lines
        .iter()
        .map(|l| l["requested_server_name"].clone())
        .collect();
    assert!(
        names.contains(&serde_json::json!("other.external.test")),
        "{names:?}"
    );
}

#[tokio::test]
async fn registry_only_lets_known_destinations_without_vip_through() {
    let app = App::start("headless").await;
    let db = harness::banner_server().await;
    let yaml = resources(&format!(
        r#"
outboundTrafficPolicy: REGISTRY_ONLY
services:
# A headless Service: its pods are dialled by address.
- hostname: web.default.svc.cluster.local
  name: web
  namespace: default
  ports: [{{name: http, port: 80, targetPort: {}}}]
  endpoints: [{{address: {}}}]
# A ServiceEntry's TCP port without address: every connection to that port.
- hostname: db.external.test
  name: db.external.test
  namespace: default
  meshExternal: true
  resolution: STATIC
  ports: [{{name: tcp, port: {}, protocol: TCP}}]
  endpoints: [{{address: {}}}]
"#,
        app.addr.port(),
        app.addr.ip(),
        db.port(),
        db.ip()
    ));
    let sidecar = Sidecar::builder(&yaml).start().await;
    let (resp, body) = sidecar.get(app.addr, "web", "/get").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(harness::json(&body)["app"], "headless");
    // The TCP port is claimed whatever address the app dialled.
    let mut conn = sidecar.connect_outbound(external(db.port())).await;
    let mut banner = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut banner))
        .await
        .expect("banner within 10 s")
        .expect("banner");
    assert_eq!(&banner, b"220 banner ready\r\n");
    drop(conn);
    let lines = sidecar.log_lines(2).await;
    let clusters: Vec<_> = lines
        .iter()
        .map(|l| l["upstream_cluster"].clone())
        .collect();
    assert!(
        clusters.contains(&serde_json::json!(format!(
            "outbound|80||web.default.svc.cluster.local"
        ))),
        "{clusters:?}"
    );
    assert!(
        clusters.contains(&serde_json::json!(format!(
            "outbound|{}||db.external.test",
            db.port()
        ))),
        "{clusters:?}"
    );
}

#[tokio::test]
async fn tls_origination_checks_the_service_entry_subject_alt_names() {
    let (server, ca) = tls_server(&["api.external.test"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("write ca");
    let tls = format!("{{mode: SIMPLE, caCertificates: {}}}", ca_file.display());
    let with_sans = |sans: &str| {
        origination_yaml(server, &tls).replace(
            "  resolution: STATIC\n",
            &format!("  resolution: STATIC\n  subjectAltNames: [{sans}]\n"),
        )
    };
    let sidecar = Sidecar::builder(&with_sans("nope.example")).start().await;
    let (resp, _) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 503, "the ServiceEntry's names are checked");
    drop(sidecar);
    let sidecar = Sidecar::builder(&with_sans("nope.example, api.external.test"))
        .start()
        .await;
    let (resp, _) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 200);
}

/// A client CA, a client certificate it signed (PEM, with its key), and the CA's DER for a
/// server that requires it.
fn client_pki() -> (String, String, rustls_pki_types::CertificateDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("client CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let client_key = KeyPair::generate().expect("key");
    let client_cert = CertificateParams::new(vec!["sleep.default".to_string()])
        .expect("params")
        .signed_by(&client_key, &issuer)
        .expect("client cert");
    (
        client_cert.pem(),
        client_key.serialize_pem(),
        ca_cert.der().clone(),
    )
}

/// YAML (flow) text of `s`.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

/// DestinationRule TLS with `credentialName` and its credential inline, as discovery sends it.
fn inline_credential(cert: &str, key: &str, ca: &str) -> String {
    format!(
        "{{mode: MUTUAL, credentialName: default/client-credential, credential: \
         {{source: Secret default/client-credential, certChain: {}, privateKey: {}, \
         caCertificates: {}}}}}",
        quoted(cert),
        quoted(key),
        quoted(ca)
    )
}

#[tokio::test]
async fn tls_origination_mutual_with_an_inline_credential_from_a_secret() {
    let (cert, key, client_ca) = client_pki();
    let (server, server_ca) = tls_server_with(&["api.external.test"], Some(client_ca)).await;
    // First a client certificate the server's CA did not sign: refused, 503 UF.
    let (other_cert, other_key, _) = client_pki();
    let sidecar = Sidecar::builder(&origination_yaml(
        server,
        &inline_credential(&other_cert, &other_key, &server_ca),
    ))
    .start()
    .await;
    let (resp, _) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 503);

    // The Secret changes: the next connection presents the new certificate, no restart.
    let rotated = xds::ProxyResources::parse(&origination_yaml(
        server,
        &inline_credential(&cert, &key, &server_ca),
    ))
    .expect("resources");
    sidecar.inputs.store.apply(rotated).expect("apply");
    let (resp, body) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body, "tls sni=api.external.test client=yes");

    // The config dump shows no key.
    use proxy::admin::AdminSource;
    let dump = proxy::dump::TrafficAdmin(sidecar.inputs.clone())
        .config_dump()
        .to_string();
    assert!(!dump.contains("PRIVATE KEY"), "{dump}");
}

#[tokio::test]
async fn tls_origination_with_credential_name_but_no_credential_fails_closed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A server that counts the bytes it receives: nothing may arrive, plaintext or TLS.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = listener.local_addr().expect("addr");
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    let sidecar = Sidecar::builder(&origination_yaml(
        server,
        "{mode: MUTUAL, credentialName: default/client-credential}",
    ))
    .start()
    .await;
    let (resp, _) = sidecar.get(external(80), "api.external.test", "/get").await;
    assert_eq!(resp.status(), 503);
    let line = &sidecar.log_lines(1).await[0];
    assert_eq!(line["response_flags"], "UF,URX", "{line}");
    assert!(
        line["upstream_transport_failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("credentialName default/client-credential")),
        "{line}"
    );
    assert_eq!(received.load(Ordering::SeqCst), 0, "the server saw bytes");
}
