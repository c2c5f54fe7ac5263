//! The sidecar-injection webhook over HTTPS (Istio's 15017, `443` on the `istiod` Service): the
//! API server POSTs an `admission.k8s.io/v1` AdmissionReview for each new pod to `/inject`, and
//! gets back the AdmissionReview response [`inject::webhook::review`] builds (a JSONPatch adding
//! `istio-init`, `istio-proxy` and their volumes, or no patch with the reason it was skipped).
//!
//! What this module adds around [`inject::webhook::review`]:
//!
//! - routing: `POST /inject`, and `/inject/...` with Istio's path parameters (`/inject/cluster/
//!   <c>/net/<n>`) accepted and ignored; other paths 404, other methods 405;
//! - the request: `Content-Type: application/json` (else 415), a body of at most
//!   [`MAX_BODY`] (else 413, read no further; the server lives on);
//! - the namespace labels Istio's selection needs, from the control plane's model
//!   ([`NamespaceLabels`]);
//! - TLS with the serving certificate for `istiod.istio-system.svc` from the mesh CA
//!   ([`crate::tls`]); HTTP/1.1 and HTTP/2.
//!
//! A review that cannot be read is answered by [`inject::webhook::review`] itself with an
//! AdmissionReview `allowed: false` and the reason; the review runs on the blocking pool, and even
//! a panic in it becomes a 500, never a crash.
//!
//! `caBundle`: the API server must trust the mesh root for this server. The root PEM is written
//! to `<state>/root-cert.pem` ([`crate::security`]); in Kubernetes mode the Kubernetes registry
//! patches it into the MutatingWebhookConfiguration (`INJECTION_WEBHOOK_CONFIG_NAME`) from
//! [`crate::security::Security::ca`]'s roots.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use inject::InjectConfig;
use inject::webhook::Labels;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::push::Pusher;
use crate::tls::TlsIncoming;

/// Istio's webhook port.
pub const WEBHOOK_PORT: u16 = 15017;
/// The largest AdmissionReview read (Istio's limit is 6 MiB; a pod object is at most ~1.5 MiB
/// in etcd).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The ALPN the webhook offers.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The labels of a namespace, or `None` when it is not known.
pub trait NamespaceLabels: Send + Sync {
    /// The labels of `namespace`.
    fn labels(&self, namespace: &str) -> Option<Labels>;
}

impl NamespaceLabels for Pusher {
    fn labels(&self, namespace: &str) -> Option<Labels> {
        self.model().namespaces.get(namespace).cloned()
    }
}

impl<F: Fn(&str) -> Option<Labels> + Send + Sync> NamespaceLabels for F {
    fn labels(&self, namespace: &str) -> Option<Labels> {
        self(namespace)
    }
}

/// What the webhook answers with.
pub struct Webhook {
    config: InjectConfig,
    namespaces: Arc<dyn NamespaceLabels>,
    max_body: usize,
}

impl Webhook {
    /// A webhook injecting with `config`, reading namespace labels from `namespaces`.
    pub fn new(config: InjectConfig, namespaces: Arc<dyn NamespaceLabels>) -> Webhook {
        Webhook {
            config,
            namespaces,
            max_body: MAX_BODY,
        }
    }

    /// Sets the body limit (default [`MAX_BODY`]).
    pub fn with_max_body(mut self, max_body: usize) -> Webhook {
        self.max_body = max_body;
        self
    }

    /// Answers one HTTP request.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if path != "/inject" && !path.starts_with("/inject/") {
            return text(StatusCode::NOT_FOUND, "not found: POST /inject\n");
        }
        if request.method() != Method::POST {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
            response.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("POST"),
            );
            return response;
        }
        let content_type = request
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case("application/json") {
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json\n",
            );
        }
        let too_large = || {
            text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the AdmissionReview is larger than {} bytes\n",
                    self.max_body
                ),
            )
        };
        let declared = request
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return too_large();
        }
        let body = match Limited::new(request.into_body(), self.max_body)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
            Err(e) => {
                tracing::debug!(error = %e, "webhook: reading the request body");
                return text(StatusCode::BAD_REQUEST, "cannot read the request body\n");
            }
        };
        let this = Arc::clone(&self);
        let answer = tokio::task::spawn_blocking(move || {
            inject::webhook::review(&body, &this.config, |ns| this.namespaces.labels(ns))
        })
        .await;
        match answer {
            Ok(review) => {
                let mut response = Response::new(Full::new(Bytes::from(review)));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(e) => {
                tracing::error!(error = %e, "webhook: the review failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, "the review failed\n")
            }
        }
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("revision", &self.config.revision())
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// Serves `webhook` on `listener` with `tls` until `stop`. Returns the accept task.
pub fn spawn(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    webhook: Arc<Webhook>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let mut incoming = TlsIncoming::new(listener, tls, "webhook", stop.clone());
    tokio::spawn(async move {
        while let Some(Ok(connection)) = incoming.next().await {
            let webhook = Arc::clone(&webhook);
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let webhook = Arc::clone(&webhook);
                    async move { Ok::<_, Infallible>(webhook.handle(req).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                let conn = builder.serve_connection(TokioIo::new(connection), service);
                tokio::pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "webhook connection");
                        }
                    }
                    _ = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
    })
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}
