//! The sidecar's connection to the control plane's secure port (Istio's 15012), shared by the CA
//! client ([`crate::identity_source::CaProvider`]) and the discovery client
//! ([`crate::xds_client`]), as Istio's agent uses one for both:
//!
//! - TLS 1.3, ALPN `h2`, no client certificate; the server's certificate is verified against
//!   the mesh root file (`--ca-root-file`, Istio's `/var/run/secrets/istio/root-cert.pem`), for
//!   the host part of the address (a DNS name, or an IP address: the serving certificate carries
//!   IP SANs). The root file is read at every connection, so a rotated or late-mounted root is
//!   picked up without a restart.
//! - Authentication by the pod's token (`--token-file`, Istio's projected
//!   `/var/run/secrets/tokens/istio-token`) as `authorization: Bearer <token>`, read at every
//!   use: projected tokens rotate.
//!
//! Errors say what failed and what to check; they never quote the token.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use identity::manager::BoxFuture;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Endpoint, Uri};

/// Istio's secure gRPC port: ADS and the CA over TLS, token-authenticated.
pub const SECURE_PORT: u16 = 15012;

/// The ALPN offered: gRPC is HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// `host` of `host:port` or `[v6]:port`.
pub fn host_of(addr: &str) -> Option<&str> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// `port` of `host:port` or `[v6]:port`.
pub fn port_of(addr: &str) -> Option<u16> {
    host_of(addr)?;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// The roots of `root_file`, with the file named in every error.
pub fn read_roots(root_file: &Path) -> Result<RootCertStore, String> {
    let text = std::fs::read(root_file).map_err(|e| format!("{}: {e}", root_file.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&text) {
        let cert = cert.map_err(|e| format!("{}: bad PEM: {e}", root_file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", root_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CERTIFICATE block", root_file.display()));
    }
    Ok(roots)
}

/// The TLS client config for the control plane: TLS 1.3 only, the roots of `root_file`, ALPN
/// `h2`, no client certificate.
pub fn client_config(root_file: &Path) -> Result<ClientConfig, String> {
    let roots = read_roots(root_file)?;
    let mut config = ClientConfig::builder_with_provider(identity::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Why the token could not be had; never quotes it.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error(
        "cannot read the token file {}: {error} (check --token-file; in Kubernetes, the projected \
         istio-token volume of the pod)",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The file is empty or holds characters a header cannot carry.
    #[error("the token file {} {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// `Bearer <token>` from `token_file`, read now (projected tokens rotate: read it at every use).
pub async fn bearer(token_file: &Path) -> Result<MetadataValue<Ascii>, TokenError> {
    let token = tokio::fs::read_to_string(token_file)
        .await
        .map_err(|error| TokenError::Read {
            path: token_file.to_path_buf(),
            error,
        })?;
    let invalid = |reason| TokenError::Invalid {
        path: token_file.to_path_buf(),
        reason,
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(invalid("is empty"));
    }
    format!("Bearer {token}")
        .parse()
        .map_err(|_| invalid("holds characters a header cannot carry"))
}

/// Dials the control plane's secure port and runs the TLS handshake, for tonic
/// (`Endpoint::connect_with_connector`). Cheap to clone.
#[derive(Clone, Debug)]
pub struct SecureConnector {
    addr: Arc<str>,
    server_name: ServerName<'static>,
    root_file: Arc<Path>,
}

impl SecureConnector {
    /// A connector to `addr` (`host:port`), verifying the server against `root_file` for the
    /// host. Nothing is read or dialled yet.
    pub fn new(addr: &str, root_file: &Path) -> Result<SecureConnector, String> {
        let host = host_of(addr).ok_or_else(|| format!("{addr:?}: expected host:port"))?;
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{addr:?}: server name {host:?}: {e}"))?;
        Ok(SecureConnector {
            addr: Arc::from(addr),
            server_name,
            root_file: Arc::from(root_file),
        })
    }

    /// The address dialled.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The root file the server is verified against.
    pub fn root_file(&self) -> &Path {
        &self.root_file
    }

    /// An `https://` endpoint for this address with a connect timeout and HTTP/2 keep-alives;
    /// connect it with [`Endpoint::connect_with_connector`] and this connector.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        Ok(Endpoint::from_shared(format!("https://{}", self.addr))
            .map_err(|e| format!("{:?}: {e}", self.addr))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true))
    }

    /// TCP, then TLS with the root file as it is now. Errors say what to check.
    pub async fn dial(&self) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let root_file = self.root_file.display();
        let config = client_config(&self.root_file).map_err(|e| {
            io::Error::other(format!(
                "mesh root unusable: {e} (check --ca-root-file; in Kubernetes, the istio-ca-root-cert \
                 ConfigMap mounted at /var/run/secrets/istio)"
            ))
        })?;
        let tcp = TcpStream::connect(&*self.addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("TCP to {}: {e} (is the control plane up?)", self.addr),
            )
        })?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "TLS with {} as {:?}: {e} (check that {root_file} is the mesh root that \
                         signed the control plane's certificate, and that the certificate names \
                         {:?})",
                        self.addr,
                        self.server_name.to_str(),
                        self.server_name.to_str()
                    ),
                )
            })
    }
}

impl tonic::codegen::Service<Uri> for SecureConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<'static, Result<Self::Response, io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.dial().await.map(TokioIo::new) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_addresses() {
        assert_eq!(
            host_of("istiod.istio-system.svc:15012"),
            Some("istiod.istio-system.svc")
        );
        assert_eq!(host_of("[::1]:15012"), Some("::1"));
        assert_eq!(host_of("127.0.0.1:15012"), Some("127.0.0.1"));
        assert_eq!(host_of("istiod"), None);
        assert_eq!(host_of(":15012"), None);
        assert_eq!(port_of("istiod.istio-system.svc:15012"), Some(15012));
        assert_eq!(port_of("[::1]:15010"), Some(15010));
        assert_eq!(port_of("istiod"), None);
    }

    #[tokio::test]
    async fn bearer_from_file_never_quotes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc123\n").expect("write");
        assert_eq!(bearer(&path).await.expect("token"), "Bearer abc123");
        std::fs::write(&path, "  \n").expect("write");
        assert!(
            bearer(&path)
                .await
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        std::fs::write(&path, "secret\u{7f}x").expect("write");
        let err = bearer(&path).await.unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
        let err = bearer(&dir.path().join("missing")).await.unwrap_err();
        assert!(err.to_string().contains("--token-file"), "{err}");
    }
}
