//! X.509 version 1 certificates at a MUTUAL gateway server (`proxy::gateway::x509_v1`), made as
//! Istio's Secure Gateways task makes them (`openssl x509 -req`, no extensions): the server's
//! own is served, a client's signed by the server's CA is taken, and one signed by another CA,
//! or none, is refused. Real TLS handshakes over an in-memory pipe.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xds::{ServerCredential, ServerTls, ServerTlsMode};

/// Runs the task's openssl commands for a CA and a version 1 certificate it signs.
fn openssl(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) {
    for ca in ["ca1", "ca2"] {
        openssl(
            dir,
            &format!(
                "openssl req -x509 -sha256 -nodes -days 2 -newkey rsa:2048 -subj '/O=example Inc./CN={ca}.example.com' -keyout {ca}.key -out {ca}.crt"
            ),
        );
    }
    for (name, ca) in [("server", "ca1"), ("client", "ca1"), ("stranger", "ca2")] {
        openssl(
            dir,
            &format!(
                "openssl req -out {name}.csr -newkey rsa:2048 -nodes -keyout {name}.key -subj '/CN={name}.example.com/O=test'
openssl x509 -req -sha256 -days 2 -CA {ca}.crt -CAkey {ca}.key -set_serial 3 -in {name}.csr -out {name}.crt"
            ),
        );
    }
    let text = std::fs::read(dir.join("client.crt")).expect("client.crt");
    let der = CertificateDer::from_pem_slice(&text).expect("PEM");
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).expect("X.509");
    assert_eq!(
        parsed.version(),
        x509_parser::x509::X509Version::V1,
        "openssl x509 -req writes version 1 certificates"
    );
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).expect("read PEM")
}

/// The client does not check the server (what is tested is the server's check of the client).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client presenting `client` (a certificate and key file stem in `dir`), or nothing.
fn client_config(dir: &Path, client: Option<&str>) -> Arc<ClientConfig> {
    let provider = identity::tls::crypto_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider.clone())));
    let config = match client {
        Some(stem) => {
            let chain = vec![
                CertificateDer::from_pem_slice(read(dir, &format!("{stem}.crt")).as_bytes())
                    .expect("client certificate"),
            ];
            let key = PrivateKeyDer::from_pem_slice(read(dir, &format!("{stem}.key")).as_bytes())
                .expect("client key");
            // A resolver, not `with_client_auth_cert`: rustls would refuse to load a version 1
            // certificate, as it does on the server side.
            let resolver = proxy::gateway::x509_v1::single_cert(&provider, chain, key)
                .expect("client credential");
            builder.with_client_cert_resolver(resolver)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// One handshake and one byte each way; Err with the server's view when it fails.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<(), String> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server_side = tokio::spawn(async move {
        let mut tls = tokio_rustls::TlsAcceptor::from(server)
            .accept(s)
            .await
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        tls.write_all(&b).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())
    });
    let name = ServerName::try_from("httpbin.example.com").expect("name");
    let client_side = async {
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, c)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| e.to_string())
    };
    let within = std::time::Duration::from_secs(10);
    let client_result = tokio::time::timeout(within, client_side)
        .await
        .expect("the client finishes");
    let server_result = tokio::time::timeout(within, server_side)
        .await
        .expect("the server finishes")
        .expect("the server task");
    server_result?;
    client_result.map(|_| ())
}

#[tokio::test]
async fn mutual_server_takes_version_1_certificates_of_its_ca_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certs(dir.path());
    let credential = ServerCredential {
        source: "Secret istio-system/httpbin-credential".into(),
        cert_chain: read(dir.path(), "server.crt"),
        private_key: read(dir.path(), "server.key"),
        ca_certificates: Some(read(dir.path(), "ca1.crt")),
    };
    let tls = ServerTls {
        mode: ServerTlsMode::Mutual,
        https_redirect: false,
        min_protocol_version: None,
        max_protocol_version: None,
        credential: Some(credential.clone()),
    };
    let server = proxy::gateway::tls::server_config(&credential, Some(&tls))
        .expect("a version 1 server certificate is served");

    handshake(server.clone(), client_config(dir.path(), Some("client")))
        .await
        .expect("a version 1 client certificate of the server's CA is taken");
    let err = handshake(server.clone(), client_config(dir.path(), Some("stranger")))
        .await
        .expect_err("a version 1 client certificate of another CA is refused");
    assert!(
        err.contains("UnknownIssuer") || err.contains("issuer"),
        "{err}"
    );
    handshake(server, client_config(dir.path(), None))
        .await
        .expect_err("MUTUAL refuses a client without a certificate");
}
