//! Where a sidecar's certificate comes from: Istio's file-mounted `/etc/certs` layout (loaded,
//! re-read on change, used for mTLS) and the control plane's `IstioCertificateService` over
//! TLS with a bearer token.

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use harness::{App, Mesh, Sidecar, httpbin_yaml, json, server_yaml, vip};
use identity::{CertificateAuthority, CsrAndKey, SpiffeId};
use proxy::identity_source::{
    CERT_CHAIN_FILE, CaOptions, CaProvider, KEY_FILE, ROOT_CERT_FILE, from_cert_dir, load_cert_dir,
    watch_cert_dir,
};
use tonic::{Request, Response, Status};
use xds::ca::{
    IstioCertificateRequest, IstioCertificateResponse, IstioCertificateService,
    IstioCertificateServiceServer,
};

/// Writes a fresh certificate for `id` from `ca` into `dir`, Istio's layout.
fn write_certs(dir: &Path, ca: &CertificateAuthority, id: &SpiffeId) {
    let CsrAndKey { key, csr_pem } = CsrAndKey::generate(id).expect("csr");
    let chain = ca
        .sign_csr(&csr_pem, id, Duration::from_secs(3600))
        .expect("signed");
    // Written aside and renamed, as kubelet and cert-manager do.
    for (name, text) in [
        (KEY_FILE, key.to_pem()),
        (ROOT_CERT_FILE, chain.roots_pem()),
        (CERT_CHAIN_FILE, chain.chain_pem()),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
}

#[tokio::test]
async fn file_mounted_certificates_are_loaded_watched_and_used_for_mtls() {
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let id = SpiffeId::new("cluster.local", "default", "default").expect("id");
    write_certs(dir.path(), &mesh.ca, &id);

    let loaded = load_cert_dir(dir.path()).expect("loads");
    assert_eq!(loaded.id(), &id);
    let manager = from_cert_dir(dir.path()).expect("manager");
    let first = manager.current().serial_hex();
    let _watch = watch_cert_dir(
        &manager,
        dir.path().to_path_buf(),
        Duration::from_millis(20),
    );

    // The file-backed identity serves mTLS to a client from the same mesh.
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&server_yaml())
        .inbound_to(app.addr)
        .identity(manager.clone())
        .start()
        .await;
    let client = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""))
        .identity(mesh.identity("default", "default").await)
        .start()
        .await;
    let (resp, body) = client.get(vip(), "httpbin-service", "/headers").await;
    assert_eq!(resp.status(), 200);
    let xfcc = json(&body)["headers"]["x-forwarded-client-cert"]
        .as_str()
        .expect("xfcc")
        .to_string();
    assert!(
        xfcc.starts_with("By=spiffe://cluster.local/ns/default/sa/default;Hash="),
        "{xfcc}"
    );

    // Rewritten files are picked up.
    write_certs(dir.path(), &mesh.ca, &id);
    let mut rotated = false;
    for _ in 0..200 {
        if manager.current().serial_hex() != first {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rotated, "the rewritten certificate was not installed");

    // A set for another identity is refused; the current certificate stays.
    let current = manager.current().serial_hex();
    let other = SpiffeId::new("cluster.local", "default", "other").expect("id");
    write_certs(dir.path(), &mesh.ca, &other);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(manager.current().serial_hex(), current);
    assert_eq!(manager.current().id(), &id);
}

#[test]
fn bad_cert_dirs_say_which_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load_cert_dir(dir.path()).expect_err("empty dir");
    assert!(err.to_string().contains("root-cert.pem"), "{err}");

    let ca = CertificateAuthority::generate("cluster.local").expect("ca");
    let id = SpiffeId::new("cluster.local", "default", "default").expect("id");
    write_certs(dir.path(), &ca, &id);
    // A key that does not match the certificate.
    let other = CsrAndKey::generate(&id).expect("key");
    std::fs::write(dir.path().join(KEY_FILE), other.key.to_pem()).expect("write");
    let err = load_cert_dir(dir.path()).expect_err("mismatched key");
    let shown = err.to_string();
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    std::fs::write(dir.path().join(KEY_FILE), "garbage").expect("write");
    let err = load_cert_dir(dir.path()).expect_err("garbage key");
    assert!(err.to_string().contains("key.pem"), "{err}");
}

/// The control plane's CA for the test: signs for the id its token stands for.
struct TestCa {
    ca: Arc<CertificateAuthority>,
}

#[tonic::async_trait]
impl IstioCertificateService for TestCa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("no bearer token"))?;
        let sa = token
            .strip_prefix("token-for-")
            .ok_or_else(|| Status::permission_denied("bad token"))?;
        if request.metadata().get("clusterid").map(|v| v.as_bytes()) != Some(b"Kubernetes") {
            return Err(Status::invalid_argument("no ClusterID"));
        }
        let id = SpiffeId::new("cluster.local", "default", sa)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let req = request.into_inner();
        let ttl = Duration::from_secs(u64::try_from(req.validity_duration).unwrap_or(0));
        let chain = self
            .ca
            .sign_csr(&req.csr, &id, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain.to_pem_list(),
            root_cert: None,
        }))
    }
}

/// Serves `ca` over TLS on loopback with a serving certificate for 127.0.0.1; returns the
/// address and the serving root (PEM).
async fn serve_ca(ca: Arc<CertificateAuthority>) -> (SocketAddr, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("serving params");
    let cert = params.self_signed(&key).expect("serving cert");
    let root_pem = cert.pem();
    let mut config = rustls::ServerConfig::builder_with_provider(identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming =
        futures_util::stream::unfold((listener, acceptor), |(listener, acceptor)| async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                if let Ok(tls) = acceptor.accept(tcp).await {
                    return Some((Ok::<_, std::io::Error>(TlsIo(tls)), (listener, acceptor)));
                }
            }
        });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(TestCa { ca }))
            .serve_with_incoming(incoming),
    );
    (addr, root_pem)
}

/// A server-side TLS stream tonic can serve.
struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

fn ca_options(addr: SocketAddr, dir: &Path, root_pem: &str, token: &str) -> CaOptions {
    std::fs::write(dir.join("ca-root.pem"), root_pem).expect("root");
    std::fs::write(dir.join("token"), token).expect("token");
    CaOptions {
        addr: addr.to_string(),
        root_file: dir.join("ca-root.pem"),
        token_file: dir.join("token"),
        cluster_id: "Kubernetes".to_string(),
        startup_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn certificates_from_the_control_plane_ca() {
    let mesh = Mesh::new();
    let (addr, root_pem) = serve_ca(mesh.ca.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ca_options(addr, dir.path(), &root_pem, "token-for-default\n");
    let id = SpiffeId::new("cluster.local", "default", "default").expect("id");
    let manager = CaProvider::new(&opts)
        .expect("provider")
        .manager(id.clone(), opts.startup_timeout)
        .await
        .expect("first certificate");
    assert_eq!(manager.current().id(), &id);
    let validity = manager
        .current()
        .not_after()
        .duration_since(manager.current().not_before())
        .expect("valid");
    // 24 h asked for, one minute of clock skew backdated.
    assert_eq!(validity, Duration::from_secs(24 * 3600 + 60));
    let first = manager.current().serial_hex();
    manager.rotate_now().await.expect("renewal through the CA");
    assert_ne!(manager.current().serial_hex(), first);

    // Used for mTLS with a sidecar of the same mesh.
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&server_yaml())
        .inbound_to(app.addr)
        .identity(mesh.identity("default", "default").await)
        .start()
        .await;
    let client = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""))
        .identity(manager)
        .start()
        .await;
    let (resp, _) = client.get(vip(), "httpbin-service", "/headers").await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn ca_refusals_and_untrusted_ca_fail_with_reasons() {
    let mesh = Mesh::new();
    let (addr, root_pem) = serve_ca(mesh.ca.clone()).await;
    let id = SpiffeId::new("cluster.local", "default", "default").expect("id");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = ca_options(addr, dir.path(), &root_pem, "not-a-valid-token");
    opts.startup_timeout = Duration::from_millis(300);
    let err = CaProvider::new(&opts)
        .expect("provider")
        .manager(id.clone(), opts.startup_timeout)
        .await
        .expect_err("bad token refused");
    assert!(err.to_string().contains("PermissionDenied"), "{err}");
    assert!(!err.to_string().contains("not-a-valid-token"), "{err}");

    // A CA whose serving certificate is not under the configured root.
    let other = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .self_signed(&rcgen::KeyPair::generate().expect("key"))
        .expect("cert")
        .pem();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = ca_options(addr, dir.path(), &other, "token-for-default");
    opts.startup_timeout = Duration::from_millis(300);
    let err = CaProvider::new(&opts)
        .expect("provider")
        .manager(id, opts.startup_timeout)
        .await
        .expect_err("untrusted CA");
    assert!(err.to_string().contains("CreateCertificate"), "{err}");
}
