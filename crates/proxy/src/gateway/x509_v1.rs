//! X.509 version 1 certificates at the gateway, which webpki refuses and Envoy (BoringSSL) takes.
//!
//! Istio's Secure Gateways task makes its server and client certificates with `openssl x509
//! -req` and no extensions: OpenSSL writes those as version 1. Envoy serves such a certificate
//! and verifies such a client; rustls, through webpki, refuses both (`UnsupportedCertVersion`).
//! So the gateway:
//!
//! - serves a credential without rustls' check that the key matches the certificate (which
//!   parses the certificate with webpki): a key that does not match fails the client's
//!   handshake, as with Envoy before its own check;
//! - verifies a client certificate with webpki first, and only when webpki cannot read a
//!   version 1 certificate, checks it with x509-parser: valid now, issued and signed by one of
//!   the server's CA certificates directly (a version 1 certificate cannot be a CA, so there is
//!   no chain to build). Its CertificateVerify signature is checked with its public key as a raw
//!   key (TLS 1.3; TLS 1.2 clients with version 1 certificates are refused).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate, X509Version};

/// A resolver that always serves `chain` with `key`, without rustls' key-match check.
pub fn single_cert(
    provider: &CryptoProvider,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<SingleCertAndKey>, Error> {
    let signing = provider.key_provider.load_private_key(key)?;
    Ok(Arc::new(SingleCertAndKey::from(CertifiedKey::new(
        chain, signing,
    ))))
}

/// webpki's client verifier, and the version 1 certificates it cannot read checked against
/// `roots` (the server's CA certificates, DER).
#[derive(Debug)]
pub struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    roots: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientVerifier {
    /// Wraps `inner`, built from the same `roots`.
    pub fn new(
        inner: Arc<dyn ClientCertVerifier>,
        roots: Vec<CertificateDer<'static>>,
        provider: &CryptoProvider,
    ) -> ClientVerifier {
        ClientVerifier {
            inner,
            roots,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// The certificate, when it is one webpki refuses for its version.
    fn version_1<'a>(cert: &'a CertificateDer<'_>) -> Option<X509Certificate<'a>> {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
        (parsed.version() == X509Version::V1).then_some(parsed)
    }

    /// Whether version 1 `leaf` is valid at `now` and signed by one of the roots.
    fn verify_v1(&self, leaf: &X509Certificate<'_>, now: UnixTime) -> Result<(), Error> {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let validity = leaf.validity();
        if now < validity.not_before.timestamp() {
            return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
        }
        if now > validity.not_after.timestamp() {
            return Err(Error::InvalidCertificate(CertificateError::Expired));
        }
        let signed = self.roots.iter().any(|der| {
            let Ok((_, root)) = X509Certificate::from_der(der.as_ref()) else {
                return false;
            };
            root.subject().as_raw() == leaf.issuer().as_raw()
                && leaf.verify_signature(Some(root.public_key())).is_ok()
        });
        if signed {
            Ok(())
        } else {
            Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
        }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(Error::InvalidCertificate(CertificateError::Other(_)))
            | Err(Error::InvalidCertificate(CertificateError::BadEncoding)) => {
                let Some(leaf) = Self::version_1(end_entity) else {
                    return self
                        .inner
                        .verify_client_cert(end_entity, intermediates, now);
                };
                self.verify_v1(&leaf, now)?;
                Ok(ClientCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        match Self::version_1(cert) {
            Some(leaf) => {
                let spki = SubjectPublicKeyInfoDer::from(leaf.public_key().raw);
                rustls::crypto::verify_tls13_signature_with_raw_key(
                    message,
                    &spki,
                    dss,
                    &self.algorithms,
                )
            }
            None => self.inner.verify_tls13_signature(message, cert, dss),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
