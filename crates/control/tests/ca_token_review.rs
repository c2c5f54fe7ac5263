//! Kubernetes mode without a cluster: the control plane's kube-rs client, configured by a
//! kubeconfig, talks to an in-test HTTPS "API server" that answers with recorded responses
//! (`tests/ca_fixtures/*.json`).
//!
//! - TokenReview ([`KubeReviewer`]): the request is what the API server expects (`POST
//!   /apis/authentication.k8s.io/v1/tokenreviews`, the control plane's own credentials, the
//!   reviewed token and the `istio-ca` audience); authenticated →
//!   `system:serviceaccount:default:httpbin` and the pod name from `extra`; expired → rejected
//!   with the API server's reason; 403 or an unverifiable API server → `Unavailable`;
//! - end to end: a sidecar's projected token gets a certificate for its service account on 15012;
//! - the self-signed root is created once in Secret `istio-ca-secret` and read by every other
//!   replica ([`control::ca_secret::sync_root`]).

mod ca_support;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ca_support::{TlsDialer, published_root, start};
use control::Authentication;
use control::token_review::{
    ISTIO_CA_AUDIENCE, KubeReviewer, KubeTokens, TOKEN_REVIEW_PATH, TokenReviewer,
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

const SECRETS: &str = "/api/v1/namespaces/istio-system/secrets";

/// The fake API server's answer to one request. TokenReviews by the reviewed token: `good` →
/// authenticated, `expired` → not, anything else → 403. Secrets: one `istio-ca-secret`, 404
/// until created, 409 when created twice.
fn answer(method: &str, path: &str, body: &Value, secret: &Mutex<Option<Value>>) -> (u16, Bytes) {
    let mut secret = secret.lock().expect("lock");
    let json = |v: &Value| Bytes::from(serde_json::to_vec(v).expect("JSON"));
    let status = |code: u16, reason: &str| {
        json(
            &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("{reason} (fake API server)"), "reason": reason, "code": code}),
        )
    };
    match (method, path) {
        ("POST", TOKEN_REVIEW_PATH) => match body["spec"]["token"].as_str() {
            Some("good") => (201, fixture("tokenreview-authenticated.json")),
            Some("expired") => (201, fixture("tokenreview-expired.json")),
            _ => (403, fixture("tokenreview-forbidden.json")),
        },
        ("GET", p) if p == format!("{SECRETS}/istio-ca-secret") => match &*secret {
            Some(s) => (200, json(s)),
            None => (404, status(404, "NotFound")),
        },
        ("POST", SECRETS) if secret.is_some() => (409, status(409, "AlreadyExists")),
        ("POST", SECRETS) => {
            *secret = Some(body.clone());
            (201, json(body))
        }
        _ => (404, status(404, "NotFound")),
    }
}

/// The fake API server on loopback. Returns its address, its CA (PEM) and what it saw.
async fn api_server() -> (SocketAddr, String, mpsc::UnboundedReceiver<Seen>) {
    let ca = CertificateAuthority::generate("cluster.local").expect("CA");
    let (chain, key) = ca
        .issue_server_certificate(
            &[],
            &["127.0.0.1".parse().expect("ip")],
            Duration::from_secs(3600),
        )
        .expect("serving cert");
    let config = rustls::ServerConfig::builder_with_provider(identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain.tls_chain(), key.to_der())
        .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, seen) = mpsc::unbounded_channel();
    let secret = Arc::new(Mutex::new(None));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let (tx, secret) = (tx.clone(), Arc::clone(&secret));
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (tx, secret) = (tx.clone(), Arc::clone(&secret));
                        async move {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string()
                            };
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let authorization = header("authorization");
                            let content_type = header("content-type");
                            let body = req.into_body().collect().await.expect("body").to_bytes();
                            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let (status, answer) = answer(&method, &path, &body, &secret);
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
                            response.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (addr, ca.roots_pem(), seen)
}

/// The control plane's client, from a kubeconfig naming the fake API server, its CA and a token.
async fn client(addr: SocketAddr, ca_pem: &str, dir: &Path) -> kube::Client {
    let ca_file = dir.join("ca.crt");
    fs::write(&ca_file, ca_pem).expect("CA file");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
         clusters:\n- name: test\n  cluster:\n    server: https://{addr}\n    certificate-authority: {}\n\
         users:\n- name: test\n  user:\n    token: control-plane-sa-token\n\
         contexts:\n- name: test\n  context: {{cluster: test, user: test}}\n",
        ca_file.display()
    );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    kube::Client::try_from(config).expect("client")
}

#[tokio::test]
async fn token_review_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, ca_pem, mut seen) = api_server().await;
    let reviewer = Arc::new(KubeReviewer::new(client(addr, &ca_pem, dir.path()).await));
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
    let other_dir = tempfile::tempdir().expect("tempdir");
    let untrusted = KubeReviewer::new(client(addr, &stranger.roots_pem(), other_dir.path()).await);
    let err = untrusted
        .review(&BearerToken::new("good"), &[])
        .await
        .expect_err("untrusted API server");
    assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn the_ca_signs_for_the_reviewed_service_account() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, ca_pem, _seen) = api_server().await;
    let kube = KubeTokens::new(
        Arc::new(KubeReviewer::new(client(addr, &ca_pem, dir.path()).await)),
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

#[tokio::test]
async fn the_self_signed_root_is_kept_in_istio_ca_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, ca_pem, mut seen) = api_server().await;
    let client = client(addr, &ca_pem, dir.path()).await;
    let (first, second) = (dir.path().join("replica-1"), dir.path().join("replica-2"));

    // The first replica finds no Secret, generates the root and stores it.
    control::ca_secret::sync_root(&client, "istio-system", &first, "cluster.local")
        .await
        .expect("created");
    let created = loop {
        let request = seen.recv().await.expect("requests");
        if request.method == "POST" {
            break request;
        }
    };
    assert_eq!(created.body["metadata"]["name"], "istio-ca-secret");
    assert_eq!(created.body["type"], "istio.io/ca-root");
    assert!(created.body["data"]["ca-key.pem"].is_string());

    // The second reads it: both sign under one root.
    control::ca_secret::sync_root(&client, "istio-system", &second, "cluster.local")
        .await
        .expect("read");
    let max = control::ca_server::DEFAULT_MAX_WORKLOAD_TTL;
    let load = |dir: &Path| {
        control::ca_server::load_ca(
            &control::ca_server::RootSource::SelfSigned(dir.to_path_buf()),
            "cluster.local",
            max,
        )
        .expect("loads")
    };
    let (a, b) = (load(&first), load(&second));
    assert_eq!(a.roots(), b.roots());
    assert!(b.is_self_signed());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(second.join("ca-key.pem"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
