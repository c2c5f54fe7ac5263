//! The mesh CA as a service: Istio's `istio.v1.auth.IstioCertificateService/CreateCertificate`,
//! served on the secure gRPC port (15012) next to ADS, as istiod does.
//!
//! One call, four steps:
//!
//! 1. **authenticate**: the bearer token in the `authorization` metadata (Istio's agent sends the
//!    pod's projected service-account token; `ama up` sidecars their file-mode token) goes to the
//!    [`TokenAuthenticator`], which names the caller's namespace and service account;
//! 2. **name**: the certificate's only SAN is the caller's own
//!    `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`; what the CSR asks for is never read;
//! 3. **lifetime**: `validity_duration` seconds, [`CaServerOptions::default_ttl`] when 0, capped
//!    at [`CaServerOptions::max_ttl`] (24 h unless `--workload-cert-ttl` says otherwise);
//! 4. **sign** with [`identity::CertificateAuthority::sign_csr`], and answer with the chain,
//!    leaf first and the root(s) last, as istiod does.
//!
//! Failures are gRPC statuses: `Unauthenticated` (no, malformed or rejected token),
//! `Unavailable` (the token could not be checked now), `InvalidArgument` with the reason (bad
//! CSR, negative lifetime), `Internal` otherwise. Tokens and keys are never logged; each issued
//! certificate is logged with its id, serial and lifetime.
//!
//! The root itself ([`load_ca`]) is either Istio's plug-in `cacerts` directory or a self-signed
//! root persisted under the state directory, loaded at start.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use identity::CertificateAuthority;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tonic::{Request, Response, Status};
use xds::ca::{
    IstioCertificateRequest, IstioCertificateResponse, IstioCertificateService,
    IstioCertificateServiceServer,
};

use crate::tokens::{BearerToken, TokenAuthenticator};

/// Default cap on workload certificate lifetimes (`--workload-cert-ttl`).
pub const DEFAULT_MAX_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// The largest CSR read (a P-256 CSR is about 500 bytes; RSA-4096 about 2 KiB).
pub const MAX_CSR_LEN: usize = 64 * 1024;
/// The directory, under the state directory, of a generated self-signed root (Istio's plug-in
/// layout: `ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`).
pub const SELF_SIGNED_DIR: &str = "ca";

/// Where istiod finds a plug-in root (the `cacerts` Secret, mounted).
pub const ISTIO_CACERTS_DIR: &str = "/etc/cacerts";

/// [`ISTIO_CACERTS_DIR`] when it holds a CA key, as istiod decides between a plug-in and a
/// self-signed root.
pub fn istio_cacerts() -> Option<PathBuf> {
    let dir = Path::new(ISTIO_CACERTS_DIR);
    dir.join(identity::ca::CA_KEY_FILE)
        .exists()
        .then(|| dir.to_path_buf())
}

/// Where the mesh root comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// Istio's plug-in layout (`--cacerts DIR`, the `cacerts` Secret mounted): `ca-cert.pem`,
    /// `ca-key.pem`, `root-cert.pem`, optionally `cert-chain.pem`. Never written.
    PlugIn(PathBuf),
    /// A self-signed root in this directory, generated and persisted on first start.
    SelfSigned(PathBuf),
}

impl RootSource {
    /// `--cacerts` when given, else `<state_dir>/ca`.
    pub fn new(cacerts: Option<PathBuf>, state_dir: &Path) -> RootSource {
        match cacerts {
            Some(dir) => RootSource::PlugIn(dir),
            None => RootSource::SelfSigned(state_dir.join(SELF_SIGNED_DIR)),
        }
    }

    /// The directory read.
    pub fn dir(&self) -> &Path {
        match self {
            RootSource::PlugIn(dir) | RootSource::SelfSigned(dir) => dir,
        }
    }
}

impl fmt::Display for RootSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootSource::PlugIn(dir) => write!(f, "plug-in CA from {}", dir.display()),
            RootSource::SelfSigned(dir) => write!(f, "self-signed root in {}", dir.display()),
        }
    }
}

/// Why the CA could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("mesh CA ({source_dir}): {error}")]
pub struct CaLoadError {
    source_dir: String,
    error: identity::Error,
}

/// Loads the mesh CA from `source` for `trust_domain` (generating and persisting the
/// self-signed root on first start), capping issued lifetimes at `max_ttl`.
pub fn load_ca(
    source: &RootSource,
    trust_domain: &str,
    max_ttl: Duration,
) -> Result<CertificateAuthority, CaLoadError> {
    let loaded = match source {
        RootSource::PlugIn(dir) => CertificateAuthority::load(dir, trust_domain),
        RootSource::SelfSigned(dir) => CertificateAuthority::load_or_generate(dir, trust_domain),
    };
    loaded
        .map(|ca| ca.with_max_ttl(max_ttl))
        .map_err(|error| CaLoadError {
            source_dir: source.to_string(),
            error,
        })
}

/// Lifetimes of issued certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaServerOptions {
    /// When the request asks for none (`validity_duration: 0`).
    pub default_ttl: Duration,
    /// The most a request gets; longer requests are shortened to this.
    pub max_ttl: Duration,
}

impl Default for CaServerOptions {
    fn default() -> Self {
        CaServerOptions {
            default_ttl: identity::ca::DEFAULT_WORKLOAD_TTL,
            max_ttl: DEFAULT_MAX_WORKLOAD_TTL,
        }
    }
}

impl CaServerOptions {
    /// The lifetime to issue for a request's `validity_duration` (seconds).
    pub fn ttl(&self, validity_duration: i64) -> Result<Duration, Status> {
        let ttl = match u64::try_from(validity_duration) {
            Err(_) => {
                return Err(Status::invalid_argument(
                    "validity_duration must not be negative",
                ));
            }
            Ok(0) => self.default_ttl,
            Ok(seconds) => Duration::from_secs(seconds),
        };
        Ok(ttl.min(self.max_ttl))
    }
}

/// Istio's CA metrics (`citadel_server_*`), on the monitoring port.
#[derive(Debug, Clone, Default)]
struct CaMetrics {
    csr: Counter,
    issued: Counter,
    authentication_failures: Counter,
    csr_errors: Counter,
}

impl CaMetrics {
    fn register(registry: &mut Registry) -> CaMetrics {
        let m = CaMetrics::default();
        registry.register("citadel_server_csr_count", "CSRs received", m.csr.clone());
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "Certificates issued",
            m.issued.clone(),
        );
        registry.register(
            "citadel_server_authentication_failure_count",
            "CSRs refused because the caller was not authenticated",
            m.authentication_failures.clone(),
        );
        registry.register(
            "citadel_server_csr_parsing_err_count",
            "CSRs refused because they could not be read or their signature did not verify",
            m.csr_errors.clone(),
        );
        m
    }
}

/// The `IstioCertificateService` implementation. Cheap to clone (shares the CA and
/// authenticator).
#[derive(Clone)]
pub struct CaServer {
    ca: Arc<CertificateAuthority>,
    authenticator: Arc<dyn TokenAuthenticator>,
    options: CaServerOptions,
    metrics: CaMetrics,
}

impl CaServer {
    /// A server signing with `ca` for callers `authenticator` recognises; its metrics go into
    /// `registry`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        authenticator: Arc<dyn TokenAuthenticator>,
        options: CaServerOptions,
        registry: &mut Registry,
    ) -> CaServer {
        CaServer {
            ca,
            authenticator,
            options,
            metrics: CaMetrics::register(registry),
        }
    }

    /// The tonic service, for a `Server` or `Router`.
    pub fn service(self) -> IstioCertificateServiceServer<CaServer> {
        IstioCertificateServiceServer::new(self)
    }

    /// The CA it signs with.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    async fn create(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, Status> {
        self.metrics.csr.inc();
        let peer = request.remote_addr();
        let caller = async {
            let token = BearerToken::from_metadata(request.metadata())?;
            self.authenticator.authenticate(&token).await
        }
        .await
        .map_err(|error| {
            self.metrics.authentication_failures.inc();
            tracing::warn!(?peer, %error, "CreateCertificate refused");
            Status::from(error)
        })?;
        let request = request.into_inner();
        let id = caller
            .spiffe_id(self.ca.trust_domain())
            .map_err(|e| Status::invalid_argument(format!("caller {caller}: {e}")))?;
        let ttl = self.options.ttl(request.validity_duration)?;
        if request.csr.trim().is_empty() {
            self.metrics.csr_errors.inc();
            return Err(Status::invalid_argument("csr is empty"));
        }
        if request.csr.len() > MAX_CSR_LEN {
            self.metrics.csr_errors.inc();
            return Err(Status::invalid_argument(format!(
                "csr is larger than {MAX_CSR_LEN} bytes"
            )));
        }
        let chain = self.ca.sign_csr(&request.csr, &id, ttl).map_err(|error| {
            let bad_request = matches!(
                error,
                identity::Error::Pem { .. }
                    | identity::Error::Certificate { .. }
                    | identity::Error::CsrSignature
            );
            if bad_request {
                self.metrics.csr_errors.inc();
                tracing::warn!(%id, ?peer, %error, "CreateCertificate: bad CSR");
                Status::invalid_argument(format!("csr: {error}"))
            } else {
                tracing::error!(%id, ?peer, %error, "CreateCertificate: signing failed");
                Status::internal(format!("signing: {error}"))
            }
        })?;
        self.metrics.issued.inc();
        tracing::info!(
            %id,
            pod = caller.pod.as_deref().unwrap_or("-"),
            ?peer,
            ttl_s = ttl.as_secs(),
            "certificate issued"
        );
        Ok(IstioCertificateResponse {
            cert_chain: chain.to_pem_list(),
            root_cert: None,
        })
    }
}

impl fmt::Debug for CaServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaServer")
            .field("ca", &self.ca)
            .field("authenticator", &self.authenticator)
            .field("options", &self.options)
            .finish()
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaServer {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.create(request).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        let o = CaServerOptions::default();
        assert_eq!(o.ttl(0).unwrap(), Duration::from_secs(86_400));
        assert_eq!(o.ttl(3600).unwrap(), Duration::from_secs(3600));
        assert_eq!(o.ttl(i64::MAX).unwrap(), Duration::from_secs(86_400));
        assert_eq!(o.ttl(-1).unwrap_err().code(), tonic::Code::InvalidArgument);
        let short = CaServerOptions {
            max_ttl: Duration::from_secs(600),
            ..o
        };
        assert_eq!(short.ttl(0).unwrap(), Duration::from_secs(600));
    }

    #[test]
    fn roots_load_and_persist() {
        let state = tempfile::tempdir().unwrap();
        let source = RootSource::new(None, state.path());
        assert_eq!(source.dir(), state.path().join("ca"));
        let first = load_ca(&source, "cluster.local", DEFAULT_MAX_WORKLOAD_TTL).unwrap();
        let again = load_ca(&source, "cluster.local", DEFAULT_MAX_WORKLOAD_TTL).unwrap();
        assert_eq!(first.roots(), again.roots());
        assert_eq!(again.max_ttl(), DEFAULT_MAX_WORKLOAD_TTL);
        // The same directory as an Istio plug-in root.
        let plugged = load_ca(
            &RootSource::new(Some(source.dir().to_path_buf()), Path::new("/nonexistent")),
            "cluster.local",
            DEFAULT_MAX_WORKLOAD_TTL,
        )
        .unwrap();
        assert_eq!(plugged.roots(), first.roots());
        let missing = load_ca(
            &RootSource::PlugIn(state.path().join("nope")),
            "cluster.local",
            DEFAULT_MAX_WORKLOAD_TTL,
        )
        .unwrap_err();
        assert!(missing.to_string().contains("plug-in CA from"), "{missing}");
    }
}
