//! TLS origination: DestinationRule `tls.mode: SIMPLE` or `MUTUAL` toward a destination.
//!
//! The app speaks plaintext (HTTP to port 80, as Istio's "Egress TLS Origination" task); the
//! sidecar opens TLS to the endpoint (the port's `targetPort`, 443 in that task) and sends the
//! requests inside. One [`Origination`] is built per cluster when a snapshot is built (files are
//! read then, never on a request); a config that cannot be built (a missing CA file, a bad
//! key) is kept as its error, so every connection of the cluster fails with it (503 `UF`) and
//! nothing goes out in plaintext.
//!
//! As Envoy under Istio:
//! - the server chain is verified against `caCertificates` (a PEM file), else the system
//!   roots (`rustls-native-certs`); `insecureSkipVerify` turns verification off;
//! - its name: one of `subjectAltNames` when given (the DestinationRule's, else the
//!   ServiceEntry's), else the SNI (Istio's auto SAN validation);
//! - the SNI is `sni`, else the service's host (Istio's auto SNI takes the request's `Host`,
//!   the same name for a request that names the host); a wildcard host without `sni` sends
//!   none and is verified by the endpoint's address;
//! - `MUTUAL` presents `clientCertificate` with `privateKey`;
//! - ALPN `h2` for HTTP/2 clusters, none for HTTP/1.1 and TCP.
//!
//! With `credentialName` (a Secret), the control plane sends the Secret's PEM inline
//! (`xds::ClientTls::credential`: the client certificate and key for `MUTUAL`, the CA that
//! verifies the server, else the system roots) and the files are not used. A
//! `credentialName` without a credential (a sidecar's rule without `workloadSelector`, a
//! missing Secret) fails the cluster's connections: nothing goes out in plaintext.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsConnector, client};

use crate::tls::{HANDSHAKE_TIMEOUT, HandshakeError};

/// How to originate TLS toward the endpoints of one cluster. Compared by identity: two
/// clusters' originations never share pooled connections.
pub struct Origination {
    id: u64,
    /// The server name to send and verify (`None`: by the endpoint's address, no SNI).
    sni: Option<ServerName<'static>>,
    config: Result<Arc<ClientConfig>, Arc<str>>,
}

impl std::fmt::Debug for Origination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origination")
            .field("sni", &self.sni)
            .field("error", &self.config.as_ref().err())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Origination {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Origination {}

impl std::hash::Hash for Origination {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

/// Why an origination config could not be built.
#[derive(Debug, thiserror::Error)]
enum ConfigError {
    #[error("{field}: {path}: {source}")]
    File {
        field: &'static str,
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{field}: {path}: no {what} in the file")]
    Empty {
        field: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("{0}: not a valid server name")]
    Name(String),
    #[error("{what}: {source}")]
    Tls {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("MUTUAL needs clientCertificate and privateKey")]
    NoClientCertificate,
    #[error(
        "credentialName {0}: no credential from the control plane (a sidecar's DestinationRule \
         needs a workloadSelector; the Secret must be in the rule's namespace, or a gateway's)"
    )]
    NoCredential(String),
    #[error("credentialName {name}: {field}: no PEM {what} in the Secret")]
    BadCredential {
        name: String,
        field: &'static str,
        what: &'static str,
    },
}

/// Where the certificates come from: files, or the inline PEM of a `credentialName` Secret.
enum Source<'a> {
    Files(&'a xds::ClientTls),
    Inline(&'a str, &'a xds::ClientCredential),
}

impl Source<'_> {
    fn of(tls: &xds::ClientTls) -> Result<Source<'_>, ConfigError> {
        match (&tls.credential_name, &tls.credential) {
            (None, _) => Ok(Source::Files(tls)),
            (Some(name), Some(c)) => Ok(Source::Inline(name, c)),
            (Some(name), None) => Err(ConfigError::NoCredential(name.clone())),
        }
    }

    /// The CA that verifies the server, if any.
    fn ca(&self) -> Result<Option<Vec<CertificateDer<'static>>>, ConfigError> {
        match self {
            Source::Files(t) => t
                .ca_certificates
                .as_deref()
                .map(|path| read_certs("caCertificates", path))
                .transpose(),
            Source::Inline(name, c) => c
                .ca_certificates
                .as_deref()
                .map(|pem| pem_certs(name, "ca.crt", pem))
                .transpose(),
        }
    }

    /// The client certificate chain and key (MUTUAL).
    fn client(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError> {
        match self {
            Source::Files(t) => {
                let (Some(cert), Some(key)) = (&t.client_certificate, &t.private_key) else {
                    return Err(ConfigError::NoClientCertificate);
                };
                let chain = read_certs("clientCertificate", cert)?;
                let key = PrivateKeyDer::from_pem_file(Path::new(key)).map_err(|source| {
                    ConfigError::File {
                        field: "privateKey",
                        path: key.clone(),
                        source,
                    }
                })?;
                Ok((chain, key))
            }
            Source::Inline(name, c) => {
                let bad = |field, what| ConfigError::BadCredential {
                    name: name.to_string(),
                    field,
                    what,
                };
                let chain = pem_certs(name, "tls.crt", c.cert_chain.as_deref().unwrap_or(""))?;
                // The key's text never goes into an error.
                let key = PrivateKeyDer::from_pem_slice(
                    c.private_key.as_deref().unwrap_or("").as_bytes(),
                )
                .map_err(|_| bad("tls.key", "private key"))?;
                Ok((chain, key))
            }
        }
    }
}

/// The certificates of the PEM `pem`, the field `field` of the Secret `name`.
fn pem_certs(
    name: &str,
    field: &'static str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_default();
    if certs.is_empty() {
        return Err(ConfigError::BadCredential {
            name: name.to_string(),
            field,
            what: "certificate",
        });
    }
    Ok(certs)
}

impl Origination {
    /// The origination of `tls` (mode SIMPLE or MUTUAL) toward `service`; `http2` asks for
    /// ALPN `h2`. Without `subjectAltNames` of its own, the ServiceEntry's apply (as pilot
    /// fills them in for ServiceEntry clusters). Never fails: an unusable config is kept as
    /// its error (see the module).
    pub fn new(tls: &xds::ClientTls, service: &xds::Service, http2: bool) -> Arc<Origination> {
        let host = service.hostname.as_str();
        let with_sans;
        let tls = if tls.subject_alt_names.is_empty() && !service.subject_alt_names.is_empty() {
            with_sans = xds::ClientTls {
                subject_alt_names: service.subject_alt_names.clone(),
                ..tls.clone()
            };
            &with_sans
        } else {
            tls
        };
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let sni_text = tls
            .sni
            .clone()
            .or_else(|| (!host.starts_with('*')).then(|| host.to_string()));
        let sni = sni_text
            .as_deref()
            .and_then(|s| ServerName::try_from(s.to_string()).ok());
        // Logged once by the store while snapshots keep it (`Snapshot::problems`).
        let config = client_config(tls, http2).map_err(|e| Arc::from(e.to_string()));
        Arc::new(Origination {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            sni,
            config,
        })
    }

    /// Why every connection of the cluster fails, when its config could not be built.
    pub fn error(&self) -> Option<&str> {
        self.config.as_ref().err().map(|e| &**e)
    }

    /// Runs the client handshake over `io` to the endpoint at `ip`.
    pub async fn connect<S>(
        &self,
        io: S,
        ip: IpAddr,
    ) -> Result<client::TlsStream<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self
            .config
            .as_ref()
            .map_err(|e| HandshakeError::Io(io::Error::other(e.to_string())))?;
        let name = self.sni.clone().unwrap_or(ServerName::IpAddress(ip.into()));
        let connect = TlsConnector::from(config.clone()).connect(name, io);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
            Err(_) => Err(HandshakeError::Timeout),
            Ok(r) => r.map_err(HandshakeError::Io),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    identity::tls::crypto_provider()
}

/// The system's roots, loaded once per process (an unreadable store gives none: every
/// server then fails verification, rather than passing it).
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "system CA certificates: not all could be read");
            }
            let mut roots = RootCertStore::empty();
            let (_, ignored) = roots.add_parsable_certificates(found.certs);
            if ignored > 0 {
                tracing::debug!(ignored, "system CA certificates that did not parse");
            }
            Arc::new(roots)
        })
        .clone()
}

fn read_certs(
    field: &'static str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let file = |source| ConfigError::File {
        field,
        path: path.to_string(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(file)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file)?;
    if certs.is_empty() {
        return Err(ConfigError::Empty {
            field,
            path: path.to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn client_config(tls: &xds::ClientTls, http2: bool) -> Result<Arc<ClientConfig>, ConfigError> {
    let source = Source::of(tls)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| ConfigError::Tls {
            what: "protocol versions",
            source,
        })?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(NoVerification(provider()))
    } else {
        let roots = match source.ca()? {
            Some(certs) => {
                let mut roots = RootCertStore::empty();
                for c in certs {
                    roots.add(c).map_err(|source| ConfigError::Tls {
                        what: "caCertificates",
                        source,
                    })?;
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| ConfigError::Tls {
                what: "server verifier",
                source: rustls::Error::General(e.to_string()),
            })?;
        let sans = tls
            .subject_alt_names
            .iter()
            .map(|s| ServerName::try_from(s.clone()).map_err(|_| ConfigError::Name(s.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Arc::new(SanVerifier { inner, sans })
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match tls.mode {
        xds::ClientTlsMode::Mutual => {
            let (chain, key) = source.client()?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| ConfigError::Tls {
                    what: "clientCertificate/privateKey",
                    source,
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    if http2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    // Each connection is its own handshake, as Envoy's upstream TLS without session reuse.
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The chain verified by webpki; the name against `sans` when given (any one of them), else
/// against the server name the handshake used.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    sans: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut result = Err(rustls::Error::General(
            "no subjectAltNames to check".to_string(),
        ));
        let names: Vec<&ServerName<'_>> = if self.sans.is_empty() {
            vec![server_name]
        } else {
            self.sans.iter().collect()
        };
        for name in names {
            result =
                self.inner
                    .verify_server_cert(end_entity, intermediates, name, ocsp_response, now);
            if result.is_ok() {
                break;
            }
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecureSkipVerify`: any certificate is accepted; the handshake's signatures are still
/// checked (they prove the server holds the key of the certificate it sent).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
