//! What the CA, secure-gRPC and webhook tests share: a discovery server with its security
//! servers on loopback, and TLS clients that trust a given root.

#![allow(dead_code)]

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use control::{Discovery, DiscoveryOptions, SecurityOptions};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The name clients dial, as in a cluster (`CA_ADDR=istiod.istio-system.svc:15012`).
pub const ISTIOD: &str = "istiod.istio-system.svc";

/// Namespaces of the test mesh: `shop` injects, `plain` does not.
pub const NAMESPACES: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio-injection: enabled}
---
apiVersion: v1
kind: Namespace
metadata:
  name: plain
"#;

/// A discovery server over `NAMESPACES` with every server on loopback, its state in `state`.
pub async fn start(state: &Path, configure: impl FnOnce(&mut SecurityOptions)) -> Discovery {
    let config = state.join("config");
    fs::create_dir_all(&config).expect("config dir");
    fs::write(config.join("namespaces.yaml"), NAMESPACES).expect("write config");
    let mut options = DiscoveryOptions::new(&config);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    options.grpc_addr = loopback;
    options.monitoring_addr = loopback;
    let mut security = SecurityOptions::new(state);
    security.secure_grpc_addr = loopback;
    security.webhook_addr = Some(loopback);
    configure(&mut security);
    options.security = Some(security);
    Discovery::start(options).await.expect("discovery starts")
}

/// A TLS client config trusting the roots in `root_pem`, offering `alpn`.
pub fn client_config(root_pem: &[u8], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem) {
        roots.add(cert.expect("PEM")).expect("root");
    }
    let mut config = ClientConfig::builder_with_provider(identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Dials `addr` and handshakes with `server_name`.
#[derive(Clone)]
pub struct TlsDialer {
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
    pub tls: tokio_rustls::TlsConnector,
}

impl TlsDialer {
    pub fn new(addr: SocketAddr, root_pem: &[u8], alpn: &[&[u8]]) -> TlsDialer {
        TlsDialer {
            addr,
            server_name: ServerName::try_from(ISTIOD).expect("name"),
            tls: tokio_rustls::TlsConnector::from(client_config(root_pem, alpn)),
        }
    }

    pub async fn dial(&self) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        self.tls.connect(self.server_name.clone(), tcp).await
    }

    /// A gRPC channel over this dialer (HTTP/2, connected now).
    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        Endpoint::from_static("https://istiod.istio-system.svc:15012")
            .connect_with_connector(self.clone())
            .await
    }
}

impl tonic::codegen::Service<Uri> for TlsDialer {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.dial().await.map(TokioIo::new) })
    }
}

/// A file-mode token for pod `pod` of `namespace` running as `service_account`.
pub fn issue_token(
    discovery: &Discovery,
    namespace: &str,
    service_account: &str,
    pod: &str,
) -> control::tokens::WorkloadToken {
    discovery
        .security()
        .expect("security servers")
        .file_tokens
        .as_ref()
        .expect("file mode")
        .issue(namespace, service_account, pod)
        .expect("issue")
}

/// A gRPC channel (TLS, ALPN h2) to the secure port, trusting the root the server published.
pub async fn secure_channel(discovery: &Discovery) -> Channel {
    let security = discovery.security().expect("security servers");
    TlsDialer::new(
        security.secure_grpc_addr,
        &published_root(discovery),
        &[b"h2"],
    )
    .channel()
    .await
    .expect("TLS to the secure port with the published root")
}

/// The root PEM the server published in its state directory.
pub fn published_root(discovery: &Discovery) -> Vec<u8> {
    let security = discovery.security().expect("security servers");
    fs::read(&security.root_cert_file).expect("root-cert.pem")
}
