//! rustls configs for mTLS between sidecars: TLS 1.3 only, aws-lc-rs only, certificates chosen
//! per handshake from the [`IdentityManager`], peers verified by SPIFFE id against the mesh roots.
//!
//! - Inbound ([`server_config`]): a client certificate is required; it must chain to a mesh root
//!   (rustls' `WebPkiClientVerifier`, which checks no names) and carry a SPIFFE id. Read the peer
//!   afterwards with [`peer_identity`]; authorization is the caller's business.
//! - Outbound ([`client_config`]): the server chain is checked against the mesh roots without DNS
//!   name matching (SPIFFE certificates have only a URI SAN), then its SPIFFE id must be one the
//!   caller expects ([`ExpectedPeer`]). The SNI is Istio's `outbound_.<port>_.<subset>_.<fqdn>`
//!   ([`outbound_sni`]).
//!
//! Both resolve the certificate from the manager at each handshake, so a rotation reaches new
//! connections at once and leaves established ones alone. Session resumption is off on both
//! sides: a resumed session would carry the peer certificate of an earlier handshake, possibly
//! pre-rotation, and mesh connections are long-lived and pooled, so the full handshake is cheap
//! overall.
//!
//! ALPN, as Istio's sidecars use it: the client says what it will speak inside the tunnel
//! (`istio-h2`, `istio-http/1.1`, `istio-http/1.0`, or `istio` for TCP); the server accepts those
//! and, for non-Istio clients, `h2` and `http/1.1` ([`SERVER_ALPN`]). `istio-peer-exchange` is
//! neither offered nor accepted: it would promise Envoy's metadata-exchange preamble, which we
//! do not speak, and an Envoy client that offers it also offers `istio`. Map the negotiated value
//! with [`AppProtocol::from_alpn`].

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, aws_lc_rs, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest as _, Sha256};

use crate::{CertChain, Error, IdentityManager, SpiffeId};

/// ALPN value of HTTP/2 inside an Istio mTLS tunnel (Envoy's `istio-h2`).
pub const ALPN_ISTIO_H2: &[u8] = b"istio-h2";
/// ALPN value of HTTP/1.1 inside an Istio mTLS tunnel.
pub const ALPN_ISTIO_HTTP11: &[u8] = b"istio-http/1.1";
/// ALPN value of HTTP/1.0 inside an Istio mTLS tunnel.
pub const ALPN_ISTIO_HTTP10: &[u8] = b"istio-http/1.0";
/// ALPN value of opaque TCP inside an Istio mTLS tunnel.
pub const ALPN_ISTIO: &[u8] = b"istio";
/// Standard HTTP/2 ALPN, accepted from non-Istio clients.
pub const ALPN_H2: &[u8] = b"h2";
/// Standard HTTP/1.1 ALPN, accepted from non-Istio clients.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// What the inbound server accepts, in its order of preference.
pub const SERVER_ALPN: &[&[u8]] = &[
    ALPN_ISTIO_H2,
    ALPN_ISTIO_HTTP11,
    ALPN_ISTIO_HTTP10,
    ALPN_ISTIO,
    ALPN_H2,
    ALPN_HTTP11,
];

/// The application protocol carried inside an mTLS connection, as ALPN tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppProtocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 (and gRPC).
    Http2,
    /// Opaque TCP.
    Tcp,
}

impl AppProtocol {
    /// The ALPN list an Istio sidecar offers for this protocol: `istio-http/1.1`, `istio-h2` or
    /// `istio`. Pass it to [`client_config`].
    pub fn client_alpn(self) -> Vec<Vec<u8>> {
        let value = match self {
            AppProtocol::Http1 => ALPN_ISTIO_HTTP11,
            AppProtocol::Http2 => ALPN_ISTIO_H2,
            AppProtocol::Tcp => ALPN_ISTIO,
        };
        vec![value.to_vec()]
    }

    /// Maps a negotiated ALPN value to the protocol inside; `None` for values we do not serve
    /// (the caller then sniffs, as for no ALPN at all).
    pub fn from_alpn(alpn: &[u8]) -> Option<Self> {
        match alpn {
            ALPN_ISTIO_H2 | ALPN_H2 => Some(AppProtocol::Http2),
            ALPN_ISTIO_HTTP11 | ALPN_ISTIO_HTTP10 | ALPN_HTTP11 => Some(AppProtocol::Http1),
            ALPN_ISTIO => Some(AppProtocol::Tcp),
            _ => None,
        }
    }
}

/// Which server identities an outbound connection accepts, once the chain checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedPeer {
    /// Any SPIFFE id under the mesh roots: what Istio does when the destination's service
    /// accounts are unknown.
    AnyInMesh,
    /// Exactly one of these ids: the endpoint's identity, or the service's accounts.
    OneOf(Vec<SpiffeId>),
}

impl ExpectedPeer {
    /// Accepts only `id`.
    pub fn exactly(id: SpiffeId) -> Self {
        ExpectedPeer::OneOf(vec![id])
    }

    /// Checks a presented id; the error names what was expected and what came.
    pub fn check(&self, presented: &SpiffeId) -> Result<(), Error> {
        match self {
            ExpectedPeer::AnyInMesh => Ok(()),
            ExpectedPeer::OneOf(ids) if ids.contains(presented) => Ok(()),
            ExpectedPeer::OneOf(ids) => Err(Error::UnexpectedPeer {
                expected: ids
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                presented: Box::new(presented.clone()),
            }),
        }
    }
}

/// The aws-lc-rs provider every config here uses, built once per process.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(aws_lc_rs::default_provider()))
        .clone()
}

/// The inbound mTLS server config: TLS 1.3, client certificate required and verified against
/// the mesh roots of the manager's current certificate, SPIFFE id required, [`SERVER_ALPN`], no
/// resumption. Our certificate is read from `manager` at each handshake.
///
/// Build it once per listener (it allocates a few small tables); it stays valid across
/// rotations.
pub fn server_config(manager: &Arc<IdentityManager>) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| Error::Tls {
            what: "server config",
            source,
        })?
        .with_client_cert_verifier(Arc::new(MeshClientVerifier {
            manager: manager.clone(),
        }))
        .with_cert_resolver(Arc::new(CurrentCertificate(manager.clone())));
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// An outbound mTLS client config: TLS 1.3, our certificate read from `manager` at each
/// handshake, the server chain verified against the mesh roots and its SPIFFE id against
/// `expected`, ALPN `alpn` (see [`AppProtocol::client_alpn`]), no resumption. Connect with
/// [`outbound_server_name`] as the server name.
///
/// Build one per destination identity set and reuse it; it stays valid across rotations.
pub fn client_config(
    manager: &Arc<IdentityManager>,
    expected: ExpectedPeer,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, Error> {
    let verifier = SpiffeServerVerifier {
        manager: manager.clone(),
        expected,
        provider: crypto_provider(),
    };
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| Error::Tls {
            what: "client config",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentCertificate(manager.clone())));
    config.alpn_protocols = alpn;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Istio's outbound SNI, `outbound_.<port>_.<subset>_.<fqdn>`; an empty subset gives
/// `outbound_.80_._.httpbin.default.svc.cluster.local`.
pub fn outbound_sni(port: u16, subset: &str, fqdn: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{fqdn}")
}

/// [`outbound_sni`] as the rustls server name to connect with; fails when the result is not a
/// valid DNS name (a subset or host with characters DNS does not allow).
pub fn outbound_server_name(
    port: u16,
    subset: &str,
    fqdn: &str,
) -> Result<ServerName<'static>, Error> {
    let sni = outbound_sni(port, subset, fqdn);
    ServerName::try_from(sni.clone()).map_err(|e| Error::certificate(format!("SNI {sni:?}"), e))
}

/// The verified peer of a finished handshake: its SPIFFE id and leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's SPIFFE id (the leaf's only `spiffe://` URI SAN).
    pub id: SpiffeId,
    /// The peer's leaf certificate, DER; hashed into XFCC.
    pub leaf: CertificateDer<'static>,
}

impl PeerIdentity {
    /// The `x-forwarded-client-cert` value an inbound sidecar whose own id is `own` adds for
    /// this peer; see [`xfcc`].
    pub fn xfcc(&self, own: &SpiffeId) -> String {
        xfcc(own, &self.leaf, &self.id)
    }
}

/// Reads the peer of a finished handshake from either side of a connection (`&ServerConnection`
/// and `&ClientConnection` deref to [`CommonState`]; with tokio-rustls use `stream.get_ref().1`).
///
/// Our configs have verified the chain and the id already; this parses the leaf once more
/// (a few microseconds).
pub fn peer_identity(conn: &CommonState) -> Result<PeerIdentity, Error> {
    let leaf = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(Error::NoPeerCertificate)?;
    Ok(PeerIdentity {
        id: SpiffeId::from_certificate_der(leaf)?,
        leaf: leaf.clone().into_owned(),
    })
}

/// The `x-forwarded-client-cert` value Istio's inbound sidecar sets:
/// `By=<own id>;Hash=<hex SHA-256 of the peer leaf DER>;Subject="";URI=<peer id>`.
///
/// `Subject` is always empty because Istio workload certificates have an empty subject.
pub fn xfcc(own: &SpiffeId, peer_leaf_der: &[u8], peer: &SpiffeId) -> String {
    let hash = hex::encode(Sha256::digest(peer_leaf_der));
    format!("By={own};Hash={hash};Subject=\"\";URI={peer}")
}

/// A root store holding the roots of `chain`.
pub(crate) fn root_store(chain: &CertChain) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for root in chain.roots() {
        roots
            .add(root.clone())
            .map_err(|e| Error::certificate("root certificate", e))?;
    }
    Ok(roots)
}

/// Verifies that `leaf` chains to `roots` through `intermediates` at `now`, with webpki's path
/// building and the serverAuth purpose, and no name check.
pub(crate) fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &RootCertStore,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let parsed = ParsedCertificate::try_from(leaf)?;
    let algs = crypto_provider().signature_verification_algorithms;
    verify_server_cert_signed_by_trust_anchor(&parsed, roots, intermediates, now, algs.all)
}

/// The verifier of client certificates under `roots`; built once per installed certificate.
pub(crate) fn client_verifier(
    roots: Arc<RootCertStore>,
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    WebPkiClientVerifier::builder_with_provider(roots, crypto_provider())
        .build()
        .map_err(|e| Error::certificate("mesh roots", e))
}

/// Turns a refusal into a bad-certificate error for rustls. rustls shows the inner error with
/// `Debug`, so the wrapper's `Debug` is our message: `invalid peer certificate:
/// Other(OtherError(peer is spiffe://…, expected spiffe://…))`.
fn rustls_error(e: Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refusal(e)))))
}

struct Refusal(Error);

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Hands rustls the manager's current certificate, on both sides.
#[derive(Debug)]
struct CurrentCertificate(Arc<IdentityManager>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key().clone())
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(
        &self,
        _root_hints: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies server chains against the current mesh roots and the id against `expected`.
#[derive(Debug)]
struct SpiffeServerVerifier {
    manager: Arc<IdentityManager>,
    expected: ExpectedPeer,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let current = self.manager.current();
        verify_chain(end_entity, intermediates, current.roots(), now)?;
        let id = SpiffeId::from_certificate_der(end_entity).map_err(rustls_error)?;
        self.expected.check(&id).map_err(rustls_error)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Requires a client certificate under the current mesh roots that carries a SPIFFE id.
#[derive(Debug)]
struct MeshClientVerifier {
    manager: Arc<IdentityManager>,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the roots may change at rotation, and an empty list tells the client to send
    /// the certificate it has, which is what a sidecar does anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let current = self.manager.current();
        current
            .client_verifier()
            .verify_client_cert(end_entity, intermediates, now)?;
        SpiffeId::from_certificate_der(end_entity).map_err(rustls_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &crypto_provider().signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &crypto_provider().signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_matches_istio() {
        assert_eq!(
            outbound_sni(80, "", "httpbin-service.default.svc.cluster.local"),
            "outbound_.80_._.httpbin-service.default.svc.cluster.local"
        );
        assert_eq!(
            outbound_sni(9080, "v1", "reviews.default.svc.cluster.local"),
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        );
        let name =
            outbound_server_name(80, "", "httpbin-service.default.svc.cluster.local").unwrap();
        assert_eq!(
            name.to_str(),
            "outbound_.80_._.httpbin-service.default.svc.cluster.local"
        );
        assert!(outbound_server_name(80, "a b", "h.default.svc").is_err());
    }

    #[test]
    fn xfcc_is_exactly_istios() {
        let own = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/httpbin").unwrap();
        let peer = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/sleep").unwrap();
        assert_eq!(
            xfcc(&own, b"abc", &peer),
            "By=spiffe://cluster.local/ns/default/sa/httpbin;\
             Hash=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad;\
             Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/sleep"
        );
    }

    #[test]
    fn alpn_values() {
        assert_eq!(AppProtocol::Http2.client_alpn(), vec![b"istio-h2".to_vec()]);
        assert_eq!(
            AppProtocol::Http1.client_alpn(),
            vec![b"istio-http/1.1".to_vec()]
        );
        assert_eq!(AppProtocol::Tcp.client_alpn(), vec![b"istio".to_vec()]);
        for value in SERVER_ALPN {
            assert!(AppProtocol::from_alpn(value).is_some(), "{value:?}");
        }
        assert_eq!(
            AppProtocol::from_alpn(b"istio-http/1.0"),
            Some(AppProtocol::Http1)
        );
        assert_eq!(AppProtocol::from_alpn(b"istio-peer-exchange"), None);
        assert!(!SERVER_ALPN.contains(&b"istio-peer-exchange".as_slice()));
    }

    #[test]
    fn expected_peer_names_both_sides() {
        let a = SpiffeId::parse("spiffe://td/ns/a/sa/a").unwrap();
        let b = SpiffeId::parse("spiffe://td/ns/b/sa/b").unwrap();
        assert!(ExpectedPeer::AnyInMesh.check(&a).is_ok());
        assert!(ExpectedPeer::exactly(a.clone()).check(&a).is_ok());
        assert_eq!(
            ExpectedPeer::OneOf(vec![a.clone(), a])
                .check(&b)
                .unwrap_err()
                .to_string(),
            "peer is spiffe://td/ns/b/sa/b, expected spiffe://td/ns/a/sa/a, spiffe://td/ns/a/sa/a"
        );
    }
}
