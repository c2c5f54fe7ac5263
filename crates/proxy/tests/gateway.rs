//! The gateway proxy (`ama proxy router`) in one process: HTTP routed by Host to httpbin behind
//! its sidecar (mesh mTLS from the gateway), HTTPS with certificates chosen by SNI, MUTUAL,
//! a certificate changed without a restart, httpsRedirect, TLS passed through by SNI, and the
//! access log and metrics a gateway writes. Certificates come from an in-test CA (rcgen).

mod harness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use harness::{App, Mesh, Sidecar, get_req, h1_client, json, metric, send, server_yaml};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

const LIMIT: Duration = Duration::from_secs(20);

/// A CA made for the test, and the PEM of its certificate.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

/// A certificate and key signed by a [`TestCa`].
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("ca");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, names: &[&str], client: bool) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A free loopback port for a Gateway server (bound and let go: the gateway binds it next).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A YAML string (JSON's quoting is YAML's).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("json")
}

/// The `tls:` of a server with `leaf` (and `ca` as client CA).
fn tls(mode: &str, leaf: &Leaf, ca: Option<&TestCa>) -> String {
    let ca = ca.map_or(String::new(), |ca| {
        format!(", caCertificates: {}", q(&ca.pem))
    });
    format!(
        "{{mode: {mode}, credential: {{source: Secret istio-system/test, certChain: {}, privateKey: {}{ca}}}}}",
        q(&leaf.cert_pem),
        q(&leaf.key_pem)
    )
}

/// The VirtualService `default/httpbin` for `hosts`, to httpbin-service:80.
fn httpbin_routes(hosts: &str) -> String {
    format!(
        "[{{name: default/httpbin, namespace: default, hosts: {hosts}, http: [{{route: [{{host: httpbin-service.default.svc.cluster.local, port: 80}}]}}]}}]"
    )
}

/// The gateway's resources: itself (istio-ingressgateway in istio-system), httpbin at
/// `httpbin` (its sidecar's inbound), a plain TLS backend at `backend`, and `listeners`.
fn gateway_yaml(httpbin: SocketAddr, backend: Option<SocketAddr>, listeners: &str) -> String {
    let backend = backend.map_or(String::new(), |b| {
        format!(
            r#"
- hostname: backend.default.svc.cluster.local
  name: backend
  namespace: default
  vips: [10.109.118.40]
  ports: [{{name: tls, port: 443, protocol: TLS}}]
  endpoints:
  - {{address: {}, ports: {{443: {}}}, tlsMode: disabled}}"#,
            b.ip(),
            b.port()
        )
    });
    format!(
        r#"
self: {{name: istio-ingressgateway-6c8d5b7c9-x2x9q, namespace: istio-system}}
workloads:
- uid: gw-uid
  name: istio-ingressgateway-6c8d5b7c9-x2x9q
  namespace: istio-system
  workloadName: istio-ingressgateway
  serviceAccount: istio-ingressgateway-service-account
  labels: {{app: istio-ingressgateway, istio: ingressgateway}}
- uid: httpbin-uid
  name: httpbin-deployment-9bfd96975-px5lv
  namespace: default
  workloadName: httpbin-deployment
  labels: {{app: httpbin, version: v1}}
services:
- hostname: httpbin-service.default.svc.cluster.local
  name: httpbin-service
  namespace: default
  vips: [10.109.118.31]
  ports: [{{name: http, port: 80}}]
  endpoints:
  - {{address: {}, ports: {{80: {}}}, workloadUid: httpbin-uid}}{backend}
gatewayListeners:
{listeners}
"#,
        httpbin.ip(),
        httpbin.port()
    )
}

/// httpbin behind its sidecar, with a mesh identity.
struct Backend {
    _app: App,
    server: Sidecar,
    mesh: Mesh,
}

async fn httpbin() -> Backend {
    let mesh = Mesh::new();
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&server_yaml())
        .inbound_to(app.addr)
        .identity(mesh.identity("default", "default").await)
        .start()
        .await;
    Backend {
        _app: app,
        server,
        mesh,
    }
}

async fn router(b: &Backend, yaml: &str) -> Sidecar {
    Sidecar::builder(yaml)
        .router()
        .identity(
            b.mesh
                .identity("istio-system", "istio-ingressgateway-service-account")
                .await,
        )
        .start()
        .await
}

/// Connects to the gateway's port, retrying while its listener opens (up to 10 s).
async fn connect(port: u16) -> TcpStream {
    for _ in 0..1000 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the gateway never listened on {port}");
}

/// `GET path` with `Host: host` on the gateway's plain HTTP port.
async fn get(port: u16, host: &str, path: &str) -> (http::Response<()>, bytes::Bytes) {
    let mut tx = h1_client(connect(port).await).await;
    tokio::time::timeout(LIMIT, send(&mut tx, get_req(host, path)))
        .await
        .expect("answer in time")
}

fn client_config(ca: &TestCa, client_cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).expect("root");
    let b = rustls::ClientConfig::builder_with_provider(identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut c = match client_cert {
        None => b.with_no_client_auth(),
        Some(l) => {
            use rustls::pki_types::pem::PemObject;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes())
                .expect("key");
            b.with_client_auth_cert(vec![l.der.clone()], key)
                .expect("client cert")
        }
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// A TLS connection to the gateway's `port` with SNI `sni`.
async fn tls_connect(
    port: u16,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect(port).await;
    let name = ServerName::try_from(sni.to_string()).expect("name");
    tokio::time::timeout(LIMIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("handshake in time")
}

/// `GET path` with `Host: host` inside `tls`.
async fn get_tls(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    host: &str,
    path: &str,
) -> std::io::Result<u16> {
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, harness::BoxBody>(
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let resp = tokio::time::timeout(LIMIT, tx.send_request(get_req(host, path)))
        .await
        .expect("answer in time")
        .map_err(std::io::Error::other)?;
    Ok(resp.status().as_u16())
}

#[tokio::test]
async fn http_routed_by_host_to_a_sidecar_with_access_log_and_metrics() {
    let b = httpbin().await;
    let port = free_port();
    let yaml = gateway_yaml(
        b.server.inbound,
        None,
        &format!(
            "- port: {port}\n  servers:\n  - {{gateway: istio-system/httpbin-gateway, protocol: HTTP, hosts: ['*'], routes: {}}}",
            httpbin_routes("[httpbin.example.com]")
        ),
    );
    let gw = router(&b, &yaml).await;

    let (resp, body) = get(port, "httpbin.example.com", "/headers").await;
    assert_eq!(resp.status(), 200, "{body:?}");
    assert_eq!(resp.headers()["server"], "istio-envoy");
    let seen = json(&body);
    assert_eq!(seen["headers"]["host"], "httpbin.example.com", "{seen}");
    // The edge appends the client to x-forwarded-for (Envoy's use_remote_address).
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http", "{seen}");
    // The app's sidecar saw the gateway's mesh identity.
    let xfcc = seen["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains(
            "URI=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
        ),
        "{seen}"
    );

    let (resp, _) = get(port, "unknown.example.com", "/headers").await;
    assert_eq!(resp.status(), 404);

    let lines = gw.log_lines(2).await;
    let ok = lines
        .iter()
        .find(|l| l["response_code"] == "200")
        .expect("200 logged");
    assert_eq!(
        ok["upstream_cluster"],
        "outbound|80||httpbin-service.default.svc.cluster.local"
    );
    assert_eq!(ok["authority"], "httpbin.example.com");
    assert_eq!(ok["downstream_local_address"], format!("127.0.0.1:{port}"));
    assert_eq!(ok.as_object().map(|o| o.len()), Some(24), "{ok}");
    let nr = lines
        .iter()
        .find(|l| l["response_code"] == "404")
        .expect("404 logged");
    assert_eq!(nr["response_flags"], "NR");
    assert_eq!(nr["route_name"], "-");

    let text = gw.telemetry.encode_prometheus();
    let labels = [
        "reporter=\"source\"",
        "source_workload=\"istio-ingressgateway\"",
        "source_workload_namespace=\"istio-system\"",
        "destination_service=\"httpbin-service.default.svc.cluster.local\"",
        "response_code=\"200\"",
    ];
    assert_eq!(
        metric(&text, "istio_requests_total", &labels),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn https_simple_picks_the_certificate_by_sni_and_a_new_one_is_served_without_restart() {
    let b = httpbin().await;
    let ca = TestCa::new("example ca");
    let a = ca.leaf(&["httpbin.example.com"], false);
    let other = ca.leaf(&["*.other.org"], false);
    let port = free_port();
    let listeners = |a: &Leaf| {
        format!(
            "- port: {port}\n  servers:\n  - {{gateway: istio-system/gw, protocol: HTTPS, hosts: [httpbin.example.com], tls: {}, routes: {}}}\n  - {{gateway: istio-system/gw, index: 1, protocol: HTTPS, hosts: ['*.other.org'], tls: {}, routes: {}}}",
            tls("SIMPLE", a, None),
            httpbin_routes("[httpbin.example.com]"),
            tls("SIMPLE", &other, None),
            httpbin_routes("['*.other.org']"),
        )
    };
    let gw = router(&b, &gateway_yaml(b.server.inbound, None, &listeners(&a))).await;
    let config = client_config(&ca, None);

    let s = tls_connect(port, "httpbin.example.com", config.clone())
        .await
        .expect("handshake");
    assert_eq!(
        s.get_ref().1.peer_certificates().map(|c| c[0].clone()),
        Some(a.der.clone())
    );
    assert_eq!(
        get_tls(s, "httpbin.example.com", "/status/200")
            .await
            .expect("request"),
        200
    );
    let s = tls_connect(port, "www.other.org", config.clone())
        .await
        .expect("handshake");
    assert_eq!(
        s.get_ref().1.peer_certificates().map(|c| c[0].clone()),
        Some(other.der.clone())
    );
    // A request is routed among the hosts of the server its SNI chose (Envoy's filter chain
    // per server): another server's host is 404.
    let s = tls_connect(port, "httpbin.example.com", config.clone())
        .await
        .expect("handshake");
    assert_eq!(
        get_tls(s, "www.other.org", "/status/200")
            .await
            .expect("request"),
        404
    );
    // An SNI no server serves gets no certificate.
    assert!(
        tls_connect(port, "nobody.example.net", config.clone())
            .await
            .is_err()
    );

    // The config dump shows no private key (Envoy's `[redacted]`).
    let dump =
        proxy::admin::AdminSource::config_dump(&proxy::dump::TrafficAdmin(gw.inputs.clone()))
            .to_string();
    assert!(dump.contains("[redacted]") && dump.contains("BEGIN CERTIFICATE"));
    assert!(!dump.contains("PRIVATE KEY"), "a key in the config dump");

    // The Secret changes: the next connection gets the new certificate, same process.
    let renewed = ca.leaf(&["httpbin.example.com"], false);
    gw.store
        .apply(
            xds::ProxyResources::parse(&gateway_yaml(b.server.inbound, None, &listeners(&renewed)))
                .expect("resources"),
        )
        .expect("applied");
    let s = tls_connect(port, "httpbin.example.com", config)
        .await
        .expect("handshake");
    assert_eq!(
        s.get_ref().1.peer_certificates().map(|c| c[0].clone()),
        Some(renewed.der.clone())
    );
}

#[tokio::test]
async fn a_server_without_its_secret_fails_its_handshakes_only() {
    let b = httpbin().await;
    let ca = TestCa::new("example ca");
    let cert = ca.leaf(&["httpbin.example.com"], false);
    let port = free_port();
    let yaml = gateway_yaml(
        b.server.inbound,
        None,
        &format!(
            "- port: {port}\n  servers:\n  - {{gateway: istio-system/gw, protocol: HTTPS, hosts: [httpbin.example.com], tls: {}, routes: {}}}\n  - {{gateway: istio-system/gw, index: 1, protocol: HTTPS, hosts: [missing.example.com], tls: {{mode: SIMPLE}}, routes: {}}}",
            tls("SIMPLE", &cert, None),
            httpbin_routes("[httpbin.example.com]"),
            httpbin_routes("[missing.example.com]"),
        ),
    );
    let _gw = router(&b, &yaml).await;
    let config = client_config(&ca, None);
    assert!(
        tls_connect(port, "missing.example.com", config.clone())
            .await
            .is_err(),
        "a server without a certificate completed a handshake"
    );
    let s = tls_connect(port, "httpbin.example.com", config)
        .await
        .expect("the other server still serves");
    assert_eq!(
        get_tls(s, "httpbin.example.com", "/status/200")
            .await
            .expect("request"),
        200
    );
}

#[tokio::test]
async fn mutual_requires_a_client_certificate_the_ca_signed() {
    let b = httpbin().await;
    let ca = TestCa::new("example ca");
    let clients = TestCa::new("client ca");
    let server_cert = ca.leaf(&["httpbin.example.com"], false);
    let port = free_port();
    let yaml = gateway_yaml(
        b.server.inbound,
        None,
        &format!(
            "- port: {port}\n  servers:\n  - {{gateway: istio-system/gw, protocol: HTTPS, hosts: [httpbin.example.com], tls: {}, routes: {}}}",
            tls("MUTUAL", &server_cert, Some(&clients)),
            httpbin_routes("[httpbin.example.com]")
        ),
    );
    let _gw = router(&b, &yaml).await;

    // Without a certificate: in TLS 1.3 the refusal comes on the first read.
    let refused = match tls_connect(port, "httpbin.example.com", client_config(&ca, None)).await {
        Err(_) => true,
        Ok(s) => get_tls(s, "httpbin.example.com", "/status/200")
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // One the client CA did not sign: refused too.
    let stranger = TestCa::new("stranger").leaf(&["client"], true);
    let refused = match tls_connect(
        port,
        "httpbin.example.com",
        client_config(&ca, Some(&stranger)),
    )
    .await
    {
        Err(_) => true,
        Ok(s) => get_tls(s, "httpbin.example.com", "/status/200")
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a client with a certificate of another CA was served"
    );

    let client = clients.leaf(&["client"], true);
    let s = tls_connect(
        port,
        "httpbin.example.com",
        client_config(&ca, Some(&client)),
    )
    .await
    .expect("handshake");
    assert_eq!(
        get_tls(s, "httpbin.example.com", "/status/200")
            .await
            .expect("request"),
        200
    );
}

#[tokio::test]
async fn listeners_open_and_close_as_the_config_changes() {
    let b = httpbin().await;
    let listener = |port: u16| {
        format!(
            "- port: {port}\n  servers:\n  - {{gateway: istio-system/gw, protocol: HTTP, hosts: ['*'], routes: {}}}",
            httpbin_routes("[httpbin.example.com]")
        )
    };
    let (first, second) = (free_port(), free_port());
    let gw = router(&b, &gateway_yaml(b.server.inbound, None, &listener(first))).await;
    let (resp, _) = get(first, "httpbin.example.com", "/status/200").await;
    assert_eq!(resp.status(), 200);

    gw.store
        .apply(
            xds::ProxyResources::parse(&gateway_yaml(b.server.inbound, None, &listener(second)))
                .expect("resources"),
        )
        .expect("applied");
    let (resp, _) = get(second, "httpbin.example.com", "/status/200").await;
    assert_eq!(resp.status(), 200);
    // The first port is closed (within 10 s).
    let mut closed = false;
    for _ in 0..1000 {
        if TcpStream::connect(("127.0.0.1", first)).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        closed,
        "port {first} still accepts after its listener left the config"
    );
}

#[tokio::test]
async fn https_redirect_answers_301() {
    let b = httpbin().await;
    let port = free_port();
    let yaml = gateway_yaml(
        b.server.inbound,
        None,
        &format!(
            "- port: {port}\n  servers:\n  - {{gateway: istio-system/gw, protocol: HTTP, hosts: [httpbin.example.com], tls: {{mode: SIMPLE, httpsRedirect: true}}, routes: {}}}",
            httpbin_routes("[httpbin.example.com]")
        ),
    );
    let _gw = router(&b, &yaml).await;
    let (resp, _) = get(port, "httpbin.example.com", "/status/200?x=1").await;
    assert_eq!(resp.status(), 301);
    assert_eq!(
        resp.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("https://httpbin.example.com/status/200?x=1")
    );
}

#[tokio::test]
async fn optional_mutual_and_istio_mutual() {
    let b = httpbin().await;
    let ca = TestCa::new("example ca");
    let clients = TestCa::new("client ca");
    let server_cert = ca.leaf(&["httpbin.example.com"], false);
    let (optional, mesh_port) = (free_port(), free_port());
    let yaml = gateway_yaml(
        b.server.inbound,
        None,
        &format!(
            "- port: {optional}\n  servers:\n  - {{gateway: istio-system/gw, protocol: HTTPS, hosts: [httpbin.example.com], tls: {}, routes: {}}}\n- port: {mesh_port}\n  servers:\n  - {{gateway: istio-system/gw, index: 1, protocol: HTTPS, hosts: ['*'], tls: {{mode: ISTIO_MUTUAL}}, routes: {}}}",
            tls("OPTIONAL_MUTUAL", &server_cert, Some(&clients)),
            httpbin_routes("[httpbin.example.com]"),
            httpbin_routes("[httpbin.example.com]"),
        ),
    );
    let _gw = router(&b, &yaml).await;

    // OPTIONAL_MUTUAL: no certificate is fine, one of another CA is not.
    let s = tls_connect(optional, "httpbin.example.com", client_config(&ca, None))
        .await
        .expect("handshake");
    assert_eq!(
        get_tls(s, "httpbin.example.com", "/status/200")
            .await
            .expect("request"),
        200
    );
    let stranger = TestCa::new("stranger").leaf(&["client"], true);
    let refused = match tls_connect(
        optional,
        "httpbin.example.com",
        client_config(&ca, Some(&stranger)),
    )
    .await
    {
        Err(_) => true,
        Ok(s) => get_tls(s, "httpbin.example.com", "/status/200")
            .await
            .is_err(),
    };
    assert!(refused, "a certificate of another CA was accepted");

    // ISTIO_MUTUAL: a mesh client certificate is required.
    let client_id = b.mesh.identity("default", "sleep").await;
    let mesh_client = identity::tls::client_config(
        &client_id,
        identity::ExpectedPeer::AnyInMesh,
        vec![b"http/1.1".to_vec()],
    )
    .expect("mesh client config");
    let s = tls_connect(mesh_port, "httpbin.example.com", mesh_client)
        .await
        .expect("mesh handshake");
    assert_eq!(
        get_tls(s, "httpbin.example.com", "/status/200")
            .await
            .expect("request"),
        200
    );
    let refused =
        match tls_connect(mesh_port, "httpbin.example.com", client_config(&ca, None)).await {
            Err(_) => true,
            Ok(s) => get_tls(s, "httpbin.example.com", "/status/200")
                .await
                .is_err(),
        };
    assert!(refused, "a client without a mesh certificate was served");
}

#[tokio::test]
async fn min_protocol_version_refuses_older_clients() {
    let b = httpbin().await;
    let ca = TestCa::new("example ca");
    let cert = ca.leaf(&["httpbin.example.com"], false);
    let port = free_port();
    let server_tls = tls("SIMPLE", &cert, None).replacen(
        "{mode: SIMPLE,",
        "{mode: SIMPLE, minProtocolVersion: TLSV1_3,",
        1,
    );
    let yaml = gateway_yaml(
        b.server.inbound,
        None,
        &format!(
            "- port: {port}\n  servers:\n  - {{gateway: istio-system/gw, protocol: HTTPS, hosts: [httpbin.example.com], tls: {server_tls}, routes: {}}}",
            httpbin_routes("[httpbin.example.com]")
        ),
    );
    let _gw = router(&b, &yaml).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).expect("root");
    let tls12 = rustls::ClientConfig::builder_with_provider(identity::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(
        tls_connect(port, "httpbin.example.com", Arc::new(tls12))
            .await
            .is_err(),
        "a TLS 1.2 client was served"
    );
    let s = tls_connect(port, "httpbin.example.com", client_config(&ca, None))
        .await
        .expect("TLS 1.3 handshake");
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn tcp_goes_by_the_tcp_routes_server_first() {
    let b = httpbin().await;
    let banner = harness::banner_server().await;
    let port = free_port();
    let routes = "[{name: default/banner, namespace: default, hosts: ['*'], tcp: [{route: [{host: backend.default.svc.cluster.local, port: 443}]}]}]";
    let yaml = gateway_yaml(
        b.server.inbound,
        Some(banner),
        &format!(
            "- port: {port}\n  servers:\n  - {{gateway: istio-system/gw, protocol: TCP, hosts: ['*'], routes: {routes}}}"
        ),
    );
    let gw = router(&b, &yaml).await;
    let mut s = connect(port).await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(LIMIT, s.read(&mut buf))
        .await
        .expect("banner in time")
        .expect("read");
    assert_eq!(&buf[..n], b"220 banner ready\r\n");
    s.write_all(b"hi\n").await.expect("write");
    let n = tokio::time::timeout(LIMIT, s.read(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&buf[..n], b"hi\n");
    drop(s);
    let lines = gw.log_lines(1).await;
    assert_eq!(
        lines[0]["upstream_cluster"],
        "outbound|443||backend.default.svc.cluster.local"
    );
}

/// A TLS server outside the mesh that answers `hello from <name>` and closes.
async fn tls_backend(ca: &TestCa, name: &str) -> (SocketAddr, Leaf) {
    use rustls::pki_types::pem::PemObject;
    let leaf = ca.leaf(&[name], false);
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let name = name.to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (acceptor, name) = (acceptor.clone(), name.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let _ = tls.write_all(format!("hello from {name}").as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, leaf)
}

#[tokio::test]
async fn passthrough_routes_by_sni_with_the_bytes_untouched() {
    let b = httpbin().await;
    let ca = TestCa::new("backend ca");
    let (backend, backend_cert) = tls_backend(&ca, "backend.example.com").await;
    let port = free_port();
    let routes = "[{name: default/backend, namespace: default, hosts: [backend.example.com], tls: [{match: [{sniHosts: [backend.example.com]}], route: [{host: backend.default.svc.cluster.local, port: 443}]}]}]";
    let yaml = gateway_yaml(
        b.server.inbound,
        Some(backend),
        &format!(
            "- port: {port}\n  servers:\n  - {{gateway: istio-system/gw, protocol: TLS, hosts: [backend.example.com], tls: {{mode: PASSTHROUGH}}, routes: {routes}}}"
        ),
    );
    let gw = router(&b, &yaml).await;
    let s = tls_connect(port, "backend.example.com", client_config(&ca, None)).await;
    let mut s = match s {
        Ok(s) => s,
        Err(e) => panic!(
            "handshake with the backend itself: {e}: {:?}",
            gw.log_lines(1).await
        ),
    };
    assert_eq!(
        s.get_ref().1.peer_certificates().map(|c| c[0].clone()),
        Some(backend_cert.der.clone())
    );
    let mut got = String::new();
    let _ = tokio::time::timeout(LIMIT, s.read_to_string(&mut got))
        .await
        .expect("read in time");
    assert_eq!(got, "hello from backend.example.com");
    drop(s); // the connection is logged once both sides have closed

    // An SNI no route takes is closed.
    assert!(
        tls_connect(port, "other.example.com", client_config(&ca, None))
            .await
            .is_err()
    );
    let lines = gw.log_lines(2).await;
    assert!(
        lines.iter().any(|l| l["upstream_cluster"]
            == "outbound|443||backend.default.svc.cluster.local"
            && l["requested_server_name"] == "backend.example.com"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["response_flags"] == "NR"
                && l["requested_server_name"] == "other.example.com"),
        "{lines:?}"
    );
}

/// The objects of a mesh with `web` (the app at 127.0.0.1:`app_port`, no sidecar), an
/// ingress gateway pod, and a Gateway on `gw_port` with its VirtualService.
fn discovery_mesh(app_port: u16, gw_port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: web}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: web
  labels: {{app: web}}
  annotations: {{local.ama.dev/address: "127.0.0.1"}}
spec: {{containers: [{{name: app, image: app, ports: [{{containerPort: {app_port}}}]}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: web}}
spec: {{selector: {{app: web}}, ports: [{{name: http, port: 8000, targetPort: {app_port}}}]}}
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-1
  namespace: istio-system
  labels: {{app: istio-ingressgateway, istio: ingressgateway}}
  annotations: {{local.ama.dev/address: "127.0.0.2"}}
spec: {{containers: [{{name: istio-proxy, image: proxy}}]}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web-gateway, namespace: web}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: web}}
spec:
  hosts: [web.example.com]
  gateways: [web-gateway]
  http:
  - match: [{{uri: {{prefix: /status}}}}]
    route: [{{destination: {{host: web, port: {{number: 8000}}}}}}]
"#
    )
}

#[tokio::test]
async fn the_gateway_takes_its_config_from_discovery() {
    let app = App::start("web").await;
    let gw_port = free_port();
    let state = tempfile::tempdir().expect("tempdir");
    let config = state.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join("mesh.yaml"),
        discovery_mesh(app.addr.port(), gw_port),
    )
    .expect("write");
    let mut options = control::DiscoveryOptions::new(&config);
    options.grpc_addr = "127.0.0.1:0".parse().expect("addr");
    options.monitoring_addr = "127.0.0.1:0".parse().expect("addr");
    let d = control::Discovery::start(options)
        .await
        .expect("discovery starts");

    // The router starts empty (no listener) and asks discovery as `router~127.0.0.2~...`.
    let mut b = Sidecar::builder("").router();
    b.cfg.pod_name = Some("istio-ingressgateway-1".into());
    b.cfg.pod_namespace = Some("istio-system".into());
    b.cfg.instance_ip = Some("127.0.0.2".parse().expect("ip"));
    let gw = b.start().await;
    assert_eq!(
        proxy::xds_client::proxy_id(&gw.inputs.cfg).to_string(),
        "router~127.0.0.2~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local"
    );
    let client = proxy::xds_client::client_for(
        &proxy::xds_client::DiscoveryOptions::new(d.grpc_addr().to_string()),
        &gw.inputs.cfg,
        &Default::default(),
    )
    .expect("client");
    let (_drain, watcher) = proxy::drain::channel();
    tokio::spawn(proxy::xds_client::run(
        client,
        gw.store.clone(),
        || {},
        watcher,
    ));

    let (resp, body) = get(gw_port, "web.example.com", "/status/200").await;
    assert_eq!(resp.status(), 200, "{body:?}");
    let (resp, _) = get(gw_port, "web.example.com", "/other").await;
    assert_eq!(resp.status(), 404, "no route matches /other");
    let lines = gw.log_lines(1).await;
    assert_eq!(
        lines[0]["upstream_cluster"],
        "outbound|8000||web.web.svc.cluster.local"
    );
    d.shutdown().await;
}
