//! Kubernetes-mode authentication without a cluster: [`ApiServerReviewer`] POSTs TokenReviews to
//! an in-test HTTPS "API server" that answers with recorded responses
//! (`tests/ca_fixtures/tokenreview-*.json`), and the CA on 15012 signs for the service account
//! the review names.
//!
//! - the request is what the API server expects: `POST /apis/authentication.k8s.io/v1/
//!   tokenreviews`, the control plane's own token as bearer, the reviewed token and the
//!   `istio-ca` audience in the spec;
//! - authenticated → `system:serviceaccount:default:httpbin` → the pod name from `extra`;
//!   expired → rejected with the API server's reason; 403 or unreachable → `Unavailable`;
//! - end to end: a sidecar's projected token gets a certificate for its service account.

mod ca_support;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ca_support::{TlsDialer, published_root, start};
use control::Authentication;
use control::token_review::{
    ApiServerReviewer, ISTIO_CA_AUDIENCE, KubeTokens, TOKEN_REVIEW_PATH, TokenReviewer,
};
use control::tokens::{AuthError, BearerToken, TokenAuthenticator};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use identity::{CertChain, CertificateAuthority, CsrAndKey, SpiffeId};
use serde_json::Value;
use tokio::sync::mpsc;
use xds::ca::{IstioCertificateRequest, IstioCertificateServiceClient};

/// What the fake API server saw.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    authorization: String,
    content_type: String,
    body: Value,
}

fn fixture(name: &str) -> Bytes {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ca_fixtures")
        .join(name);
    Bytes::from(fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// An HTTPS API server on loopback answering TokenReviews by the reviewed token: `good` →
/// authenticated, `expired` → not, anything else → 403 Forbidden. Returns its address, its CA
/// (PEM) and what it saw.
async fn api_server() -> (SocketAddr, String, mpsc::UnboundedReceiver<Seen>) {
    let ca = CertificateAuthority::generate("cluster.local").expect("CA");
    let (chain, key) = ca
        .issue_server_certificate(
            &[],
            &["127.0.0.1".parse().expect("ip")],
            Duration::from_secs(3600),
        )
        .expect("serving cert");
    let mut config = rustls::ServerConfig::builder_with_provider(identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain.tls_chain(), key.to_der())
        .expect("cert");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string()
                            };
                            let (method, path) =
                                (req.method().to_string(), req.uri().path().to_string());
                            let (authorization, content_type) =
                                (header("authorization"), header("content-type"));
                            let body = req.into_body().collect().await.expect("body").to_bytes();
                            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let (status, answer) = match body["spec"]["token"].as_str() {
                                Some("good") => (201, fixture("tokenreview-authenticated.json")),
                                Some("expired") => (201, fixture("tokenreview-expired.json")),
                                _ => (403, fixture("tokenreview-forbidden.json")),
                            };
                            let _ = tx.send(Seen {
                                method,
                                path,
                                authorization,
                                content_type,
                                body,
                            });
                            let mut response = http::Response::new(Full::new(answer));
                            *response.status_mut() =
                                http::StatusCode::from_u16(status).expect("status");
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, ca.roots_pem(), seen)
}

fn reviewer(addr: SocketAddr, ca_pem: &str, dir: &Path) -> ApiServerReviewer {
    let own_token = dir.join("token");
    fs::write(&own_token, "control-plane-sa-token\n").expect("own token");
    ApiServerReviewer::new(
        &format!("https://{addr}"),
        ca_pem.as_bytes(),
        Path::new("ca.crt"),
        own_token,
    )
    .expect("reviewer")
}

#[tokio::test]
async fn token_review_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, ca_pem, mut seen) = api_server().await;
    let reviewer = Arc::new(reviewer(addr, &ca_pem, dir.path()));
    let kube = KubeTokens::new(reviewer.clone(), vec![ISTIO_CA_AUDIENCE.to_string()]);

    let caller = kube
        .authenticate(&BearerToken::new("good"))
        .await
        .expect("authenticated");
    assert_eq!(caller.namespace, "default");
    assert_eq!(caller.service_account, "httpbin");
    assert_eq!(
        caller.pod.as_deref(),
        Some("httpbin-deployment-7d9c6b8f5-x2x7k")
    );
    let request = seen.recv().await.expect("a request");
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, TOKEN_REVIEW_PATH);
    assert_eq!(request.authorization, "Bearer control-plane-sa-token");
    assert_eq!(request.content_type, "application/json");
    assert_eq!(request.body["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(request.body["kind"], "TokenReview");
    assert_eq!(
        request.body["spec"]["audiences"],
        serde_json::json!(["istio-ca"])
    );

    let err = kube
        .authenticate(&BearerToken::new("expired"))
        .await
        .expect_err("expired");
    assert!(matches!(err, AuthError::Rejected(_)), "{err:?}");
    assert!(err.to_string().contains("has expired"), "{err}");

    let err = reviewer
        .review(&BearerToken::new("other"), &[ISTIO_CA_AUDIENCE.to_string()])
        .await
        .expect_err("403");
    assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("403"), "{err}");
    assert!(err.to_string().contains("forbidden"), "{err}");
    assert!(!format!("{reviewer:?}").contains("control-plane-sa-token"));

    // An API server we cannot verify is not asked.
    let stranger = CertificateAuthority::generate("cluster.local").expect("CA");
    let untrusted = ApiServerReviewer::new(
        &format!("https://{addr}"),
        stranger.roots_pem().as_bytes(),
        Path::new("ca.crt"),
        dir.path().join("token"),
    )
    .expect("reviewer");
    let err = untrusted
        .review(&BearerToken::new("good"), &[])
        .await
        .expect_err("untrusted API server");
    assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");

    assert!(
        ApiServerReviewer::new(
            "http://x",
            ca_pem.as_bytes(),
            Path::new("ca"),
            dir.path().join("t")
        )
        .is_err()
    );
}

#[tokio::test]
async fn the_ca_signs_for_the_reviewed_service_account() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, ca_pem, _seen) = api_server().await;
    let kube = KubeTokens::new(
        Arc::new(reviewer(addr, &ca_pem, dir.path())),
        vec![ISTIO_CA_AUDIENCE.to_string()],
    );
    let state = tempfile::tempdir().expect("tempdir");
    let discovery = start(state.path(), |s| {
        s.authentication = Authentication::Custom(Arc::new(kube));
    })
    .await;
    let security = discovery.security().expect("security");
    assert!(security.file_tokens.is_none());
    let channel = TlsDialer::new(
        security.secure_grpc_addr,
        &published_root(&discovery),
        &[b"h2"],
    )
    .channel()
    .await
    .expect("TLS");
    let mut client = IstioCertificateServiceClient::new(channel);
    let asked = SpiffeId::new("cluster.local", "istio-system", "istiod").expect("id");
    let csr = CsrAndKey::generate(&asked).expect("csr");
    let call = |token: &'static str| {
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.csr_pem.clone(),
            validity_duration: 3600,
            metadata: None,
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        request
    };
    let response = client
        .create_certificate(call("good"))
        .await
        .expect("signed")
        .into_inner();
    let chain = CertChain::from_pem_list(&response.cert_chain).expect("chain");
    assert_eq!(
        SpiffeId::from_certificate_der(chain.leaf())
            .expect("id")
            .to_string(),
        "spiffe://cluster.local/ns/default/sa/httpbin"
    );
    let err = client
        .create_certificate(call("expired"))
        .await
        .expect_err("expired");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = client
        .create_certificate(call("other"))
        .await
        .expect_err("403");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    discovery.shutdown().await;
}
