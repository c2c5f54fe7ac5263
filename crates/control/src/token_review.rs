//! Kubernetes-mode authentication: the pod's projected service-account token, checked by the API
//! server's TokenReview, as istiod does.
//!
//! [`KubeTokens`] is the [`TokenAuthenticator`]: it asks a [`TokenReviewer`] about the token with
//! the audiences the CA accepts (Istio's `istio-ca`), and maps the authenticated user
//! `system:serviceaccount:<ns>:<sa>` to a [`Caller`] (with the pod name from the token's
//! `authentication.kubernetes.io/pod-name` extra when the API server reports it). Anything else
//! (unauthenticated, another kind of user, no audience in common) is rejected.
//!
//! [`TokenReviewer`] is the seam: [`ApiServerReviewer`] POSTs a TokenReview to the API server
//! over HTTPS (`/apis/authentication.k8s.io/v1/tokenreviews`, authenticated by the control
//! plane's own service-account token and verifying the API server against the cluster CA);
//! tests give a canned one. When the Kubernetes registry arrives with kube-rs, a reviewer over
//! its client replaces [`ApiServerReviewer`] without touching the rest.
//!
//! I/O: one HTTPS request per review (a fresh connection; a cache and a pooled client come with
//! kube-rs). Neither the reviewed token nor the control plane's own is ever logged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use crate::tokens::{AuthError, BearerToken, BoxFuture, Caller, TokenAuthenticator};

/// The audience Istio's agents request for the token they send to the CA.
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";
/// The TokenReview endpoint.
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// Where a pod finds its own service-account token and the cluster CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long one review may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest TokenReview response read.
const MAX_RESPONSE: usize = 1024 * 1024;
/// The user-name prefix of service accounts.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// The TokenReview `user.extra` key holding the pod a bound token was issued for.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// What a TokenReview said about a token (`status` of `authentication.k8s.io/v1` TokenReview).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenReviewStatus {
    /// Whether the token is valid.
    pub authenticated: bool,
    /// `user.username`, e.g. `system:serviceaccount:default:httpbin`.
    pub username: String,
    /// `user.extra["authentication.kubernetes.io/pod-name"]`, for bound tokens.
    pub pod_name: Option<String>,
    /// The audiences the token is valid for, among those asked.
    pub audiences: Vec<String>,
    /// `error`, when the API server gave one.
    pub error: Option<String>,
}

impl TokenReviewStatus {
    /// Reads the `status` of a TokenReview response.
    pub fn from_review(review: &Value) -> TokenReviewStatus {
        let status = &review["status"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        TokenReviewStatus {
            authenticated: status["authenticated"].as_bool().unwrap_or(false),
            username: status["user"]["username"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            pod_name: strings(&status["user"]["extra"][POD_NAME_EXTRA])
                .into_iter()
                .next(),
            audiences: strings(&status["audiences"]),
            error: status["error"].as_str().map(str::to_string),
        }
    }
}

/// Asks someone (the API server) whether a token is valid for `audiences`.
pub trait TokenReviewer: Send + Sync + fmt::Debug {
    /// Reviews `token`. `Err` only when no answer could be had ([`AuthError::Unavailable`]); an
    /// invalid token is an `Ok` status with `authenticated: false`.
    fn review<'a>(
        &'a self,
        token: &'a BearerToken,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<TokenReviewStatus, AuthError>>;
}

/// Kubernetes-mode [`TokenAuthenticator`]: TokenReview, then `system:serviceaccount:<ns>:<sa>`.
#[derive(Debug)]
pub struct KubeTokens {
    reviewer: Arc<dyn TokenReviewer>,
    audiences: Vec<String>,
}

impl KubeTokens {
    /// Authenticates with `reviewer`, accepting tokens for `audiences` (Istio:
    /// [`ISTIO_CA_AUDIENCE`]).
    pub fn new(reviewer: Arc<dyn TokenReviewer>, audiences: Vec<String>) -> KubeTokens {
        KubeTokens {
            reviewer,
            audiences,
        }
    }

    /// Maps a review to the caller, or says why not.
    pub fn caller(&self, status: &TokenReviewStatus) -> Result<Caller, AuthError> {
        if !status.authenticated {
            let reason = status.error.as_deref().unwrap_or("not authenticated");
            return Err(AuthError::Rejected(format!("TokenReview: {reason}")));
        }
        if !self.audiences.is_empty()
            && !status.audiences.is_empty()
            && !status.audiences.iter().any(|a| self.audiences.contains(a))
        {
            return Err(AuthError::Rejected(format!(
                "TokenReview: the token is for {:?}, not {:?}",
                status.audiences, self.audiences
            )));
        }
        let parts = status
            .username
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'));
        let Some((namespace, service_account)) = parts else {
            return Err(AuthError::Rejected(format!(
                "TokenReview: {:?} is not a service account",
                status.username
            )));
        };
        Ok(Caller {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            pod: status.pod_name.clone(),
        })
    }
}

impl TokenAuthenticator for KubeTokens {
    fn authenticate<'a>(
        &'a self,
        token: &'a BearerToken,
    ) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            let status = self.reviewer.review(token, &self.audiences).await?;
            self.caller(&status)
        })
    }
}

/// Why an [`ApiServerReviewer`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReviewerError {
    /// The API server address is not an `https://host[:port]` URL.
    #[error("API server {url:?}: {reason}")]
    Url {
        /// The address.
        url: String,
        /// Why.
        reason: String,
    },
    /// The cluster CA could not be read.
    #[error("cluster CA {}: {reason}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Reviews tokens with a plain HTTPS POST to the API server.
pub struct ApiServerReviewer {
    authority: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    credential: PathBuf,
}

impl ApiServerReviewer {
    /// A reviewer for the API server at `url` (`https://host[:port]`), verified against the
    /// PEM roots `ca_pem`, authenticating with the token in `credential_file` (re-read at every
    /// review: projected tokens rotate).
    pub fn new(
        url: &str,
        ca_pem: &[u8],
        ca_name: &Path,
        credential_file: PathBuf,
    ) -> Result<ApiServerReviewer, ReviewerError> {
        let url_err = |reason: &str| ReviewerError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url.parse().map_err(|_| url_err("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(url_err("must be https://"));
        }
        let host = uri.host().ok_or_else(|| url_err("no host"))?;
        let port = uri.port_u16().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(bare.to_string())
            .map_err(|_| url_err("the host is not a valid server name"))?;
        let authority = if bare.contains(':') {
            format!("[{bare}]:{port}")
        } else {
            format!("{bare}:{port}")
        };
        let ca_err = |reason: String| ReviewerError::Ca {
            path: ca_name.to_path_buf(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| ca_err(e.to_string()))?;
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca_err("no certificate".to_string()));
        }
        let mut config = ClientConfig::builder_with_provider(identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_err(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ApiServerReviewer {
            authority,
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            credential: credential_file,
        })
    }

    /// The reviewer a pod uses: `KUBERNETES_SERVICE_HOST`/`_PORT`, the cluster CA and its own
    /// token from [`SERVICE_ACCOUNT_DIR`].
    pub fn in_cluster() -> Result<ApiServerReviewer, ReviewerError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| ReviewerError::Url {
            url: String::new(),
            reason: "KUBERNETES_SERVICE_HOST is not set (not in a pod?)".to_string(),
        })?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        let ca_path = dir.join("ca.crt");
        let ca = std::fs::read(&ca_path).map_err(|e| ReviewerError::Ca {
            path: ca_path.clone(),
            reason: e.to_string(),
        })?;
        Self::new(
            &format!("https://{host}:{port}"),
            &ca,
            &ca_path,
            dir.join("token"),
        )
    }

    async fn post(&self, body: Vec<u8>) -> Result<(http::StatusCode, Bytes), String> {
        let credential = tokio::fs::read_to_string(&self.credential)
            .await
            .map_err(|e| format!("own token {}: {e}", self.credential.display()))?;
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", self.authority))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP with {}: {e}", self.authority))?;
        let connection = tokio::spawn(connection);
        let request = http::Request::post(TOKEN_REVIEW_PATH)
            .header(http::header::HOST, self.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", credential.trim()),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| "the control plane's own token is not a header value".to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("TokenReview request: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("TokenReview response: {e}"))?
            .to_bytes();
        connection.abort();
        Ok((status, body))
    }
}

impl fmt::Debug for ApiServerReviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiServerReviewer")
            .field("authority", &self.authority)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer for ApiServerReviewer {
    fn review<'a>(
        &'a self,
        token: &'a BearerToken,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<TokenReviewStatus, AuthError>> {
        Box::pin(async move {
            let request = json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token.expose(), "audiences": audiences},
            });
            let body = serde_json::to_vec(&request)
                .map_err(|e| AuthError::Unavailable(format!("TokenReview request: {e}")))?;
            let (status, body) = tokio::time::timeout(REVIEW_TIMEOUT, self.post(body))
                .await
                .map_err(|_| AuthError::Unavailable("TokenReview timed out".to_string()))?
                .map_err(AuthError::Unavailable)?;
            let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if !status.is_success() {
                let message = review["message"].as_str().unwrap_or("no message");
                return Err(AuthError::Unavailable(format!(
                    "TokenReview: API server answered {status}: {message}"
                )));
            }
            if review["kind"] != "TokenReview" {
                return Err(AuthError::Unavailable(
                    "TokenReview: the API server's answer is not a TokenReview".to_string(),
                ));
            }
            Ok(TokenReviewStatus::from_review(&review))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube() -> KubeTokens {
        #[derive(Debug)]
        struct Never;
        impl TokenReviewer for Never {
            fn review<'a>(
                &'a self,
                _: &'a BearerToken,
                _: &'a [String],
            ) -> BoxFuture<'a, Result<TokenReviewStatus, AuthError>> {
                Box::pin(async { Err(AuthError::Unavailable("never".into())) })
            }
        }
        KubeTokens::new(Arc::new(Never), vec![ISTIO_CA_AUDIENCE.to_string()])
    }

    fn status(username: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: true,
            username: username.to_string(),
            audiences: vec![ISTIO_CA_AUDIENCE.to_string()],
            ..Default::default()
        }
    }

    #[test]
    fn service_accounts_only() {
        let k = kube();
        let caller = k
            .caller(&status("system:serviceaccount:default:httpbin"))
            .unwrap();
        assert_eq!(
            (caller.namespace.as_str(), caller.service_account.as_str()),
            ("default", "httpbin")
        );
        for bad in [
            "alice",
            "system:serviceaccount:default",
            "system:serviceaccount::sa",
            "system:serviceaccount:ns:",
            "system:serviceaccount:ns:sa:extra",
            "system:node:kind-worker",
        ] {
            assert!(
                matches!(k.caller(&status(bad)), Err(AuthError::Rejected(_))),
                "{bad}"
            );
        }
        let mut unauthenticated = status("system:serviceaccount:default:httpbin");
        unauthenticated.authenticated = false;
        unauthenticated.error = Some("token has expired".into());
        let err = k.caller(&unauthenticated).unwrap_err();
        assert!(err.to_string().contains("token has expired"));
        let mut other_audience = status("system:serviceaccount:default:httpbin");
        other_audience.audiences = vec!["vault".into()];
        assert!(k.caller(&other_audience).is_err());
    }
}
