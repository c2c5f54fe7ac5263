//! A gateway server's TLS: the rustls config of a terminating server (its certificate and key,
//! and for MUTUAL and OPTIONAL_MUTUAL the client CA), built once per config snapshot from the
//! PEM the control plane sent. A server whose credential is missing or unusable has no config:
//! its connections are closed during the handshake, as Envoy's filter chain without a
//! certificate fails them.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use xds::{GatewayServer, L4Route, ServerCredential, ServerTlsMode};

/// One Gateway server of a port, compiled.
#[derive(Debug)]
pub struct Server {
    /// `namespace/name` of its Gateway, and its index there (for logs).
    pub gateway: String,
    /// Its index in the Gateway's servers.
    pub index: usize,
    /// Its hosts (`*`, `*.example.com`, `httpbin.example.com`).
    pub hosts: Vec<String>,
    /// The TLS mode; none: plaintext.
    pub mode: Option<ServerTlsMode>,
    /// SIMPLE, MUTUAL, OPTIONAL_MUTUAL: the config to terminate with; `None` when the
    /// credential is missing or unusable.
    pub config: Option<Arc<ServerConfig>>,
    /// Why a terminating server has no config (its TLS handshakes fail); logged once by the
    /// store while snapshots keep it ([`crate::config::Snapshot::problems`]).
    pub problem: Option<String>,
    /// The `tls` routes of its VirtualServices (PASSTHROUGH, by SNI).
    pub tls_routes: Vec<L4Route>,
    /// The `tcp` routes of its VirtualServices.
    pub tcp_routes: Vec<L4Route>,
}

/// Why a server's credential cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The certificate chain has no certificate.
    #[error("{source_name}: certChain: no PEM certificate")]
    NoCertificate {
        /// Where the credential came from.
        source_name: String,
    },
    /// The private key is not a PEM key.
    #[error("{source_name}: privateKey: no PEM private key")]
    NoKey {
        /// Where the credential came from.
        source_name: String,
    },
    /// The CA has no certificate.
    #[error("{source_name}: caCertificates: no PEM certificate")]
    NoCa {
        /// Where the credential came from.
        source_name: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("{source_name}: {error}")]
    Rustls {
        /// Where the credential came from.
        source_name: String,
        /// rustls' error.
        error: String,
    },
}

impl Server {
    /// Compiles `s` with the routes of its VirtualServices.
    pub(crate) fn compile(
        s: &GatewayServer,
        tls_routes: Vec<L4Route>,
        tcp_routes: Vec<L4Route>,
    ) -> Server {
        let mode = s.tls.as_ref().map(|t| t.mode);
        let terminates = matches!(
            mode,
            Some(ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
        ) && s.protocol != xds::GatewayProtocol::Http;
        let (config, problem) = match (
            terminates,
            s.tls.as_ref().and_then(|t| t.credential.as_ref()),
        ) {
            (false, _) => (None, None),
            (true, None) => (
                None,
                Some("no credential for this TLS server; its TLS handshakes fail".to_string()),
            ),
            (true, Some(c)) => match server_config(c, s.tls.as_ref()) {
                Ok(cfg) => (Some(cfg), None),
                Err(e) => (
                    None,
                    Some(format!(
                        "the credential of this TLS server cannot be used ({e}); its TLS \
                         handshakes fail"
                    )),
                ),
            },
        };
        Server {
            gateway: s.gateway.clone(),
            index: s.index,
            hosts: s.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            mode,
            config,
            problem,
            tls_routes,
            tcp_routes,
        }
    }
}

/// The ALPN a terminating gateway offers (Istio's gateways: HTTP/2 and HTTP/1.1).
const GATEWAY_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The TLS versions a server's `minProtocolVersion` and `maxProtocolVersion` leave (TLS 1.2
/// and 1.3 when unset).
fn protocol_versions(
    tls: Option<&xds::ServerTls>,
) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let min = tls.and_then(|t| t.min_protocol_version);
    let max = tls.and_then(|t| t.max_protocol_version);
    [
        (xds::TlsVersion::V1_2, &rustls::version::TLS12),
        (xds::TlsVersion::V1_3, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| min.is_none_or(|m| *v >= m) && max.is_none_or(|m| *v <= m))
    .map(|(_, p)| p)
    .collect()
}

/// The rustls config of a terminating server: its chain and key; MUTUAL requires a client
/// certificate that the CA verifies, OPTIONAL_MUTUAL verifies one when sent.
pub fn server_config(
    c: &ServerCredential,
    tls: Option<&xds::ServerTls>,
) -> Result<Arc<ServerConfig>, CredentialError> {
    let mode = tls.map(|t| t.mode);
    let source_name = c.source.clone();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(c.cert_chain.as_bytes())
            .filter_map(Result::ok)
            .collect();
    if chain.is_empty() {
        return Err(CredentialError::NoCertificate { source_name });
    }
    let key = PrivateKeyDer::from_pem_slice(c.private_key.as_bytes()).map_err(|_| {
        CredentialError::NoKey {
            source_name: source_name.clone(),
        }
    })?;
    let provider = identity::tls::crypto_provider();
    let rustls_err = |e: &dyn std::fmt::Display| CredentialError::Rustls {
        source_name: source_name.clone(),
        error: e.to_string(),
    };
    let versions = protocol_versions(tls);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| rustls_err(&e))?;
    let verifying = matches!(
        mode,
        Some(ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
    );
    // Served without rustls' key check, and clients' version 1 certificates verified too, as
    // Envoy does ([`super::x509_v1`]): Istio's Secure Gateways task makes such certificates.
    let resolver =
        super::x509_v1::single_cert(&provider, chain, key).map_err(|e| rustls_err(&e))?;
    let mut config = if verifying {
        let ca = c.ca_certificates.as_deref().unwrap_or_default();
        let ca_certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca.as_bytes())
            .filter_map(Result::ok)
            .collect();
        let mut roots = rustls::RootCertStore::empty();
        for cert in &ca_certs {
            roots.add(cert.clone()).map_err(|e| rustls_err(&e))?;
        }
        if roots.is_empty() {
            return Err(CredentialError::NoCa { source_name });
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let verifier = if mode == Some(ServerTlsMode::OptionalMutual) {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        let verifier = verifier.build().map_err(|e| rustls_err(&e))?;
        let verifier = super::x509_v1::ClientVerifier::new(verifier, ca_certs, &provider);
        builder
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(resolver)
    } else {
        builder.with_no_client_auth().with_cert_resolver(resolver)
    };
    config.alpn_protocols = GATEWAY_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Terminates TLS on a connection to an HTTPS port: the ClientHello's SNI picks the server
/// ([`super::PortConfig::server_for_sni`]), whose config completes the handshake; the
/// requests inside are then served as on a plain HTTP port. A connection no server takes, or
/// whose server has no usable credential, is closed (logged `NR filter_chain_not_found` when
/// no server takes it).
pub(crate) async fn terminate(
    pi: Arc<crate::ProxyInputs>,
    port: Arc<super::PortConfig>,
    stream: tokio::net::TcpStream,
    client: crate::addr::ClientAddr,
    local: crate::addr::OrigDstAddr,
    wait: crate::detect::Wait,
    drain: crate::drain::DrainWatcher,
) {
    let start = std::time::SystemTime::now();
    let t0 = std::time::Instant::now();
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let handshake = async {
        let start_hs = acceptor.await?;
        let sni: Option<Arc<str>> = start_hs.client_hello().server_name().map(Arc::from);
        let picked = port.server_for_sni(sni.as_deref());
        let server = picked.map(|(i, _)| i);
        let config = match (picked.map(|(_, s)| (s.mode, &s.config)), &pi.tls) {
            (Some((_, Some(c))), _) => Some(c.clone()),
            (Some((Some(ServerTlsMode::IstioMutual), None)), Some(mesh)) => {
                istio_mutual_config(mesh)
            }
            _ => None,
        };
        let Some(config) = config else {
            return Ok::<_, std::io::Error>((None, sni, server));
        };
        let tls = start_hs.into_stream(config).await?;
        Ok((Some(tls), sni, server))
    };
    let (tls, sni, server) = match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, handshake)
        .await
    {
        Ok(Ok((Some(tls), sni, server))) => (tls, sni, server),
        Ok(Ok((None, sni, server))) => {
            if server.is_none() {
                super::listener::no_route(&pi, client, local, sni, start, t0);
            }
            tracing::debug!(%client, "no server with a usable certificate for this SNI; closing");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%client, error = %e, "gateway TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%client, "gateway TLS handshake timed out");
            return;
        }
    };
    let mut tls = tls;
    let alpn_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let (detected, prefix) = if alpn_h2 {
        (crate::detect::Detected::Http2, bytes::Bytes::new())
    } else {
        match crate::detect::detect(&mut tls, wait).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, %client, "connection failed during detection");
                return;
            }
        }
    };
    let ctx = super::listener::conn_ctx(pi, client, local, sni, server);
    let io = crate::detect::Rewind::new(prefix, tls);
    crate::http::serve(ctx, io, detected == crate::detect::Detected::Http2, drain).await;
}

/// ISTIO_MUTUAL: the gateway's workload certificate, mesh client certificates required.
fn istio_mutual_config(mesh: &Arc<crate::tls::MeshTls>) -> Option<Arc<ServerConfig>> {
    mesh.gateway_server_config()
        .inspect_err(|e| tracing::warn!(error = %e, "no server config for ISTIO_MUTUAL"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(hosts: &[&str]) -> ServerCredential {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        ServerCredential {
            source: "Secret istio-system/test".into(),
            cert_chain: cert.pem(),
            private_key: key.serialize_pem(),
            ca_certificates: Some(cert.pem()),
        }
    }

    #[test]
    fn simple_and_mutual_configs_build() {
        let c = credential(&["httpbin.example.com"]);
        let tls = |mode| xds::ServerTls {
            mode,
            https_redirect: false,
            min_protocol_version: None,
            max_protocol_version: None,
            credential: None,
        };
        let simple = server_config(&c, Some(&tls(ServerTlsMode::Simple))).expect("simple");
        assert_eq!(
            simple.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        server_config(&c, Some(&tls(ServerTlsMode::Mutual))).expect("mutual");
        let no_ca = ServerCredential {
            ca_certificates: None,
            ..c.clone()
        };
        let err = server_config(&no_ca, Some(&tls(ServerTlsMode::Mutual))).expect_err("no CA");
        assert_eq!(
            err.to_string(),
            "Secret istio-system/test: caCertificates: no PEM certificate"
        );
        let bad_key = ServerCredential {
            private_key: "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n".into(),
            ..c
        };
        assert!(server_config(&bad_key, Some(&tls(ServerTlsMode::Simple))).is_err());
    }

    #[test]
    fn protocol_versions_are_bounded() {
        let t = |min, max| xds::ServerTls {
            mode: ServerTlsMode::Simple,
            https_redirect: false,
            min_protocol_version: min,
            max_protocol_version: max,
            credential: None,
        };
        let names = |t: &xds::ServerTls| {
            protocol_versions(Some(t))
                .iter()
                .map(|v| format!("{:?}", v.version))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&t(None, None)), ["TLSv1_2", "TLSv1_3"]);
        assert_eq!(names(&t(Some(xds::TlsVersion::V1_3), None)), ["TLSv1_3"]);
        assert_eq!(names(&t(None, Some(xds::TlsVersion::V1_2))), ["TLSv1_2"]);
    }
}
