//! Real TLS 1.3 handshakes between the client and server configs, over an in-memory pipe.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{HTTPBIN_FQDN, configs, handshake, manager, mesh_ca, sa};
use identity::manager::BoxFuture;
use identity::tls::{peer_identity, xfcc};
use identity::{
    CertChain, CertificateAuthority, CertificateProvider, Error, ExpectedPeer, IdentityManager,
    RotationOptions, SpiffeId,
};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Sends `msg` from `from` and reads it at `to`.
async fn send<A, B>(from: &mut A, to: &mut B, msg: &[u8])
where
    A: tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + Unpin,
{
    from.write_all(msg).await.unwrap();
    from.flush().await.unwrap();
    let mut buf = vec![0; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), to.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, msg);
}

#[tokio::test]
async fn mtls_handshake_shows_both_peers() {
    let ca = mesh_ca();
    let httpbin = manager(&ca, sa("httpbin")).await;
    let sleep = manager(&ca, sa("sleep")).await;
    let (server, client) = configs(&httpbin, &sleep, ExpectedPeer::exactly(sa("httpbin")));
    let (s, c) = handshake(server, client).await;
    let (mut s, mut c) = (s.expect("server handshake"), c.expect("client handshake"));

    let server_side = s.get_ref().1;
    let client_side = c.get_ref().1;
    assert_eq!(
        server_side.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(server_side.alpn_protocol(), Some(&b"istio-h2"[..]));
    assert_eq!(client_side.alpn_protocol(), Some(&b"istio-h2"[..]));
    assert_eq!(
        server_side.server_name(),
        Some(format!("outbound_.80_._.{HTTPBIN_FQDN}").as_str())
    );

    let client_peer = peer_identity(server_side).unwrap();
    let server_peer = peer_identity(client_side).unwrap();
    assert_eq!(client_peer.id, sa("sleep"));
    assert_eq!(server_peer.id, sa("httpbin"));
    assert_eq!(&client_peer.leaf, sleep.current().chain().leaf());
    assert_eq!(&server_peer.leaf, httpbin.current().chain().leaf());

    let hash = hex::encode(Sha256::digest(sleep.current().chain().leaf()));
    let expected = format!(
        "By=spiffe://cluster.local/ns/default/sa/httpbin;Hash={hash};Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(client_peer.xfcc(httpbin.id()), expected);
    assert_eq!(
        xfcc(httpbin.id(), &client_peer.leaf, &client_peer.id),
        expected
    );

    send(&mut c, &mut s, b"GET /headers HTTP/1.1\r\n\r\n").await;
    send(&mut s, &mut c, b"HTTP/1.1 200 OK\r\n\r\n").await;
}

#[tokio::test]
async fn handshake_over_loopback_tcp() {
    let ca = mesh_ca();
    let httpbin = manager(&ca, sa("httpbin")).await;
    let sleep = manager(&ca, sa("sleep")).await;
    let (server, client) = configs(&httpbin, &sleep, ExpectedPeer::exactly(sa("httpbin")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inbound = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .unwrap();
        let peer = peer_identity(tls.get_ref().1).unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(peer.id.to_string().as_bytes()).await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = identity::tls::outbound_server_name(80, "", HTTPBIN_FQDN).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"who?").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "spiffe://cluster.local/ns/default/sa/sleep");
    inbound.await.unwrap();
}

#[tokio::test]
async fn any_in_mesh_accepts_every_mesh_server_and_alpn_follows_the_client() {
    let ca = mesh_ca();
    let httpbin = manager(&ca, sa("httpbin")).await;
    let sleep = manager(&ca, sa("sleep")).await;
    let server = identity::tls::server_config(&httpbin).unwrap();
    for (proto, alpn) in [
        (identity::AppProtocol::Tcp, &b"istio"[..]),
        (identity::AppProtocol::Http1, &b"istio-http/1.1"[..]),
    ] {
        let client =
            identity::tls::client_config(&sleep, ExpectedPeer::AnyInMesh, proto.client_alpn())
                .unwrap();
        let (s, c) = handshake(server.clone(), client).await;
        let s = s.unwrap();
        c.unwrap();
        let negotiated = s.get_ref().1.alpn_protocol().unwrap();
        assert_eq!(negotiated, alpn);
        assert_eq!(identity::AppProtocol::from_alpn(negotiated), Some(proto));
    }
}

#[tokio::test]
async fn client_refuses_a_server_with_another_id() {
    let ca = mesh_ca();
    let httpbin = manager(&ca, sa("httpbin")).await;
    let sleep = manager(&ca, sa("sleep")).await;
    let expected = ExpectedPeer::OneOf(vec![sa("reviews"), sa("reviews-v2")]);
    let (server, client) = configs(&httpbin, &sleep, expected);
    let (s, c) = handshake(server, client).await;
    let err = c.expect_err("client must refuse httpbin").to_string();
    assert!(
        err.contains(
            "invalid peer certificate: Other(OtherError(peer is spiffe://cluster.local/ns/default/sa/httpbin, expected \
             spiffe://cluster.local/ns/default/sa/reviews, spiffe://cluster.local/ns/default/sa/reviews-v2"
        ),
        "{err}"
    );
    assert!(s.is_err(), "the server sees the client's alert");
}

#[tokio::test]
async fn client_refuses_a_server_from_another_root() {
    let httpbin = manager(&mesh_ca(), sa("httpbin")).await;
    let sleep = manager(&mesh_ca(), sa("sleep")).await;
    let (server, client) = configs(&httpbin, &sleep, ExpectedPeer::AnyInMesh);
    let (s, c) = handshake(server, client).await;
    // Both roots are named O=cluster.local, so webpki finds an issuer by name whose signature fails.
    let err = c.expect_err("other root").to_string();
    assert!(
        err.contains("invalid peer certificate: BadSignature") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(s.is_err());
}

/// Signs with its own CA but hands out the roots of another mesh too, so the client trusts the
/// server while presenting a certificate the server does not trust.
struct ForeignClient {
    ca: CertificateAuthority,
    id: SpiffeId,
    extra_root: rustls_pki_types::CertificateDer<'static>,
}

impl CertificateProvider for ForeignClient {
    fn fetch<'a>(
        &'a self,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<CertChain, Error>> {
        Box::pin(async move {
            let chain = self.ca.sign_csr(csr_pem, &self.id, ttl)?;
            let mut roots = chain.roots().to_vec();
            roots.push(self.extra_root.clone());
            CertChain::new(chain.leaf().clone(), vec![], roots)
        })
    }
}

#[tokio::test]
async fn server_refuses_a_client_from_another_root() {
    let mesh = mesh_ca();
    let httpbin = manager(&mesh, sa("httpbin")).await;
    let foreign = ForeignClient {
        ca: CertificateAuthority::generate("cluster.local").unwrap(),
        id: sa("sleep"),
        extra_root: mesh.roots()[0].clone(),
    };
    let sleep = IdentityManager::new(sa("sleep"), Arc::new(foreign), RotationOptions::default())
        .await
        .unwrap();
    let (server, client) = configs(&httpbin, &sleep, ExpectedPeer::exactly(sa("httpbin")));
    let (s, c) = handshake(server, client).await;
    let err = s.expect_err("server must refuse the client").to_string();
    assert!(
        err.contains("invalid peer certificate: BadSignature") || err.contains("UnknownIssuer"),
        "{err}"
    );
    // In TLS 1.3 the client may finish first; it learns of the refusal on its first read.
    if let Ok(mut c) = c {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Err(_) | Ok(0)), "{read:?}");
    }
}

#[tokio::test]
async fn server_refuses_a_client_without_a_certificate() {
    let ca = mesh_ca();
    let httpbin = manager(&ca, sa("httpbin")).await;
    let server = identity::tls::server_config(&httpbin).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.roots()[0].clone()).unwrap();
    // A plain TLS client that trusts the root but has no certificate (and would fail the DNS
    // name check anyway, so skip it: the point is the server's refusal).
    let client = rustls::ClientConfig::builder_with_provider(identity::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    let (s, _c) = handshake(server, Arc::new(client)).await;
    let err = s.expect_err("no client certificate").to_string();
    assert!(
        err.contains("NoCertificatesPresented") || err.contains("certificate"),
        "{err}"
    );
}

#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        identity::tls::crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
