//! The secure gRPC port (Istio's 15012): Delta ADS and the CA service on one TLS listener, as
//! istiod serves them.
//!
//! TLS with the control plane's serving certificate ([`crate::tls`]), HTTP/2 (ALPN `h2`), no
//! client certificate. Callers authenticate with their bearer token:
//!
//! - `IstioCertificateService` checks it itself ([`crate::ca_server`]);
//! - ADS is wrapped in [`RequireToken`] (Istio's `XDS_AUTH`, on by default): a stream without a
//!   valid token ends at once with `Unauthenticated`; an accepted one carries the caller's
//!   [`PeerIdentity`] (namespace and service account) in its request extensions, and the ADS
//!   server refuses a node that claims another one with `PermissionDenied` (Istio's identity
//!   check of the connection, [`xds::ads::identity`]).
//!
//! The plaintext port (15010) is unchanged and unauthenticated, as Istio's.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;

use crate::ca_server::CaServer;
use crate::tls::TlsIncoming;
use crate::tokens::{BearerToken, BoxFuture, TokenAuthenticator};

pub use crate::tokens::Caller;
pub use xds::ads::PeerIdentity;

/// The ALPN the secure gRPC port offers.
pub const ALPN_H2: &[u8] = b"h2";

/// Serves ADS (`ads`, wrapped in [`RequireToken`] when `xds_auth` is given) and `ca` on
/// `listener` with `tls`, until `stop`. Returns the server's task.
pub fn spawn<A>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    ads: A,
    ca: CaServer,
    xds_auth: Option<Arc<dyn TokenAuthenticator>>,
    stop: CancellationToken,
) -> JoinHandle<()>
where
    A: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    A::Future: Send + 'static,
{
    let incoming = TlsIncoming::new(listener, tls, "secure gRPC", stop.clone());
    let mut server = tonic::transport::Server::builder();
    let router = match xds_auth {
        Some(authenticator) => server.add_service(RequireToken::new(ads, authenticator)),
        None => server.add_service(ads),
    }
    .add_service(ca.service());
    tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            tracing::error!("secure gRPC server: {e}");
        }
    })
}

/// A gRPC service that only lets callers with a valid bearer token through; the caller's
/// [`PeerIdentity`] goes into the request's extensions. Others get `Unauthenticated` (or
/// `Unavailable` when the token could not be checked) without reaching the service.
#[derive(Clone)]
pub struct RequireToken<S> {
    inner: S,
    authenticator: Arc<dyn TokenAuthenticator>,
}

impl<S> RequireToken<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, authenticator: Arc<dyn TokenAuthenticator>) -> RequireToken<S> {
        RequireToken {
            inner,
            authenticator,
        }
    }
}

impl<S> std::fmt::Debug for RequireToken<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireToken")
            .field("authenticator", &self.authenticator)
            .finish_non_exhaustive()
    }
}

impl<S: NamedService> NamedService for RequireToken<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for RequireToken<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service is polled for readiness just before the call, below.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let mut inner = self.inner.clone();
        let authenticator = Arc::clone(&self.authenticator);
        Box::pin(async move {
            let peer = request
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr);
            let caller = match request.headers().get(http::header::AUTHORIZATION) {
                None => Err(crate::tokens::AuthError::MissingToken),
                Some(value) => match BearerToken::from_header(value.as_bytes()) {
                    Ok(token) => authenticator.authenticate(&token).await,
                    Err(e) => Err(e),
                },
            };
            match caller {
                Ok(caller) => {
                    tracing::debug!(?peer, %caller, path = request.uri().path(), "authenticated");
                    request.extensions_mut().insert(caller.peer_identity());
                    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                    inner.call(request).await
                }
                Err(error) => {
                    tracing::warn!(?peer, %error, path = request.uri().path(), "gRPC call refused");
                    Ok(tonic::Status::from(error).into_http())
                }
            }
        })
    }
}
