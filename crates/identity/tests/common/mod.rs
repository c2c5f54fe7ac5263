//! Helpers shared by the integration tests: ids, CAs, managers and an in-memory TLS pair.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use identity::tls::{client_config, outbound_server_name, server_config};
use identity::{
    CertificateAuthority, ExpectedPeer, IdentityManager, LocalCaProvider, RotationOptions, SpiffeId,
};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::DuplexStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

pub const HTTPBIN_FQDN: &str = "httpbin-service.default.svc.cluster.local";

pub fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).expect("test id")
}

pub fn sa(name: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", name).expect("test id")
}

pub fn mesh_ca() -> Arc<CertificateAuthority> {
    Arc::new(CertificateAuthority::generate("cluster.local").expect("root"))
}

pub async fn manager(ca: &Arc<CertificateAuthority>, id: SpiffeId) -> Arc<IdentityManager> {
    let provider = Arc::new(LocalCaProvider::new(ca.clone(), id.clone()));
    IdentityManager::new(id, provider, RotationOptions::default())
        .await
        .expect("first certificate")
}

pub type Handshake = (
    std::io::Result<server::TlsStream<DuplexStream>>,
    std::io::Result<client::TlsStream<DuplexStream>>,
);

/// Runs both sides of a handshake over an in-memory pipe, with Istio's SNI for httpbin:80.
pub async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Handshake {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = outbound_server_name(80, "", HTTPBIN_FQDN).expect("sni");
    let both = async {
        tokio::join!(
            TlsAcceptor::from(server).accept(server_io),
            TlsConnector::from(client).connect(name, client_io)
        )
    };
    tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("handshake hung")
}

/// Server config of `server` and a client config of `client` expecting `expected`, over HTTP/2.
pub fn configs(
    server: &Arc<IdentityManager>,
    client: &Arc<IdentityManager>,
    expected: ExpectedPeer,
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let alpn = identity::AppProtocol::Http2.client_alpn();
    (
        server_config(server).expect("server config"),
        client_config(client, expected, alpn).expect("client config"),
    )
}
