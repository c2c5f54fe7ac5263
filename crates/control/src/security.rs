//! The control plane's security servers, started together by [`crate::Discovery::start`] when
//! [`crate::DiscoveryOptions::security`] is set (`ama discovery` always sets it):
//!
//! - the mesh CA ([`crate::ca_server::load_ca`]): Istio's plug-in `cacerts` directory, or a
//!   self-signed root persisted in `<state>/ca/` (in Kubernetes mode kept in the Secret
//!   `istio-ca-secret`, [`crate::ca_secret`], so replicas and restarts share it); its root PEM
//!   written to `<state>/root-cert.pem` for sidecars, `ama up` and the webhook's `caBundle`;
//! - the authenticator of callers' tokens ([`Authentication`]): file-mode tokens in
//!   `<state>/tokens/` ([`crate::tokens::FileTokens`]), or Kubernetes TokenReview
//!   ([`crate::token_review`]);
//! - the serving certificate for `istiod.istio-system.svc` and the extra names
//!   ([`crate::tls`]);
//! - the secure gRPC port, 15012: ADS and the CA service over TLS ([`crate::secure_grpc`]);
//! - the injection webhook, 15017 ([`crate::webhook_server`]).
//!
//! ```text
//! <state>/root-cert.pem                 the mesh root(s), PEM (what sidecars trust)
//! <state>/ca/{ca-cert,ca-key,root-cert,cert-chain}.pem   the self-signed CA (no --cacerts)
//! <state>/tokens/<ns>/<sa>/<pod>        file-mode workload tokens (see crate::tokens)
//! ```

use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use inject::InjectConfig;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xds::ads::AdsServer;

use crate::ca_secret::{self, CaSecretError};
use crate::ca_server::{CaLoadError, CaServer, CaServerOptions, RootSource, load_ca};
use crate::push::Pusher;
use crate::tls::{ServingCertificate, ServingNames, TlsError, server_config};
use crate::token_review::{ISTIO_CA_AUDIENCE, KubeReviewer, KubeTokens};
use crate::tokens::{FileTokens, TokenAuthenticator, TokenError};
use crate::webhook_server::{self, Webhook};
use crate::{secure_grpc, tls};

/// Istio's secure gRPC port (ADS and the CA over TLS).
pub const SECURE_GRPC_PORT: u16 = 15012;
/// The file, in the state directory, holding the mesh root PEM.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// How callers of the CA (and ADS on 15012) prove who they are.
#[derive(Clone, Default)]
pub enum Authentication {
    /// Per-workload tokens the control plane issues into `<state>/tokens/` (file mode,
    /// `ama up`).
    #[default]
    Files,
    /// The pod's projected service-account token, checked by TokenReview with the Kubernetes
    /// registry's client ([`crate::DiscoveryOptions::kubernetes`]).
    Kubernetes,
    /// Any other authenticator (tests, embedding).
    Custom(Arc<dyn TokenAuthenticator>),
}

impl std::fmt::Debug for Authentication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authentication::Files => f.write_str("Files"),
            Authentication::Kubernetes => f.write_str("Kubernetes"),
            Authentication::Custom(a) => f.debug_tuple("Custom").field(a).finish(),
        }
    }
}

/// How to run the CA, the secure gRPC port and the webhook.
#[derive(Debug, Clone)]
pub struct SecurityOptions {
    /// Where ADS and the CA listen over TLS (`0.0.0.0:15012`).
    pub secure_grpc_addr: SocketAddr,
    /// Where the injection webhook listens (`0.0.0.0:15017`); `None`: no webhook.
    pub webhook_addr: Option<SocketAddr>,
    /// The control plane's own files (root, self-signed CA, tokens).
    pub state_dir: PathBuf,
    /// `--cacerts DIR` (Istio's plug-in layout); `None`: self-signed root in `<state>/ca`.
    pub cacerts: Option<PathBuf>,
    /// The SPIFFE trust domain of issued certificates; `None`: the mesh's (MeshConfig
    /// `trustDomain` as the registry has it, `cluster.local` by default).
    pub trust_domain: Option<String>,
    /// The control plane's namespace: where the Kubernetes mode keeps `istio-ca-secret`.
    pub ca_namespace: String,
    /// Lifetimes of workload certificates.
    pub ca: CaServerOptions,
    /// Names for the serving certificate besides `istiod.istio-system.svc` (DNS names or IP
    /// addresses).
    pub dns_names: Vec<String>,
    /// How callers authenticate.
    pub authentication: Authentication,
    /// Whether ADS on the secure port requires a token (Istio's `XDS_AUTH`, default on).
    pub xds_auth: bool,
    /// The injection settings of the webhook.
    pub inject: InjectConfig,
}

impl SecurityOptions {
    /// Istio's ports on all interfaces, file-mode tokens, a self-signed root in `state_dir`,
    /// trust domain `cluster.local`, 24 h certificates, Istio's default injection settings.
    pub fn new(state_dir: impl Into<PathBuf>) -> SecurityOptions {
        SecurityOptions {
            secure_grpc_addr: SocketAddr::from(([0, 0, 0, 0], SECURE_GRPC_PORT)),
            webhook_addr: Some(SocketAddr::from((
                [0, 0, 0, 0],
                webhook_server::WEBHOOK_PORT,
            ))),
            state_dir: state_dir.into(),
            cacerts: None,
            trust_domain: None,
            ca_namespace: crate::model::ROOT_NAMESPACE.to_string(),
            ca: CaServerOptions::default(),
            dns_names: Vec::new(),
            authentication: Authentication::Files,
            xds_auth: true,
            inject: InjectConfig::default(),
        }
    }
}

/// Why the security servers could not start.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The CA root could not be loaded or generated.
    #[error(transparent)]
    Ca(#[from] CaLoadError),
    /// The token directory could not be used.
    #[error("workload tokens: {0}")]
    Tokens(#[from] TokenError),
    /// The root's Secret could not be read or created.
    #[error(transparent)]
    CaSecret(#[from] CaSecretError),
    /// Kubernetes authentication without a Kubernetes client.
    #[error(
        "Kubernetes token authentication needs the Kubernetes registry (--registry kubernetes)"
    )]
    NoKubernetes,
    /// The serving certificate could not be made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A state file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A port could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The running security servers.
#[derive(Debug)]
pub struct Security {
    /// Where ADS and the CA listen over TLS.
    pub secure_grpc_addr: SocketAddr,
    /// Where the webhook listens.
    pub webhook_addr: Option<SocketAddr>,
    /// `<state>/root-cert.pem`.
    pub root_cert_file: PathBuf,
    /// The mesh CA.
    pub ca: Arc<identity::CertificateAuthority>,
    /// File-mode tokens (when [`Authentication::Files`]): `ama up` issues each sidecar's here.
    pub file_tokens: Option<Arc<FileTokens>>,
    /// The serving certificate of 15012 and 15017.
    pub serving: Arc<ServingCertificate>,
    /// The servers' tasks (awaited by [`crate::Discovery::shutdown`]).
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

/// Loads the CA (from `istio-ca-secret` first when `kube` is given and no plug-in root is),
/// writes the root, binds 15012 (and 15017) and starts serving.
pub async fn start(
    options: &SecurityOptions,
    kube: Option<&kube::Client>,
    ads: &AdsServer,
    pusher: &Arc<Pusher>,
    metrics: &mut Registry,
    stop: &CancellationToken,
) -> Result<Security, SecurityError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SecurityError::Io { path, source }
    };
    fs::create_dir_all(&options.state_dir).map_err(io(&options.state_dir))?;
    let trust_domain = match &options.trust_domain {
        Some(td) => td.clone(),
        None => match pusher.model().trust_domain.as_str() {
            "" => api::mesh::DEFAULT_TRUST_DOMAIN.to_string(),
            td => td.to_string(),
        },
    };

    let source = RootSource::new(options.cacerts.clone(), &options.state_dir);
    if let (RootSource::SelfSigned(dir), Some(client)) = (&source, kube) {
        ca_secret::sync_root(client, &options.ca_namespace, dir, &trust_domain).await?;
    }
    let ca = {
        let (source, trust_domain, max_ttl) =
            (source.clone(), trust_domain.clone(), options.ca.max_ttl);
        // Key generation and the CA's self-check are CPU work; file reads block.
        tokio::task::spawn_blocking(move || load_ca(&source, &trust_domain, max_ttl))
            .await
            .map_err(|e| SecurityError::Io {
                path: source_dir(&options.cacerts, &options.state_dir),
                source: std::io::Error::other(e.to_string()),
            })??
    };
    let ca = Arc::new(ca);
    let root_cert_file = options.state_dir.join(ROOT_CERT_FILE);
    write_atomically(&root_cert_file, &ca.roots_pem()).map_err(io(&root_cert_file))?;

    let (authenticator, file_tokens): (Arc<dyn TokenAuthenticator>, _) =
        match &options.authentication {
            Authentication::Files => {
                let tokens = Arc::new(FileTokens::open(&options.state_dir)?);
                (
                    Arc::clone(&tokens) as Arc<dyn TokenAuthenticator>,
                    Some(tokens),
                )
            }
            Authentication::Kubernetes => {
                let client = kube.ok_or(SecurityError::NoKubernetes)?;
                let reviewer = Arc::new(KubeReviewer::new(client.clone()));
                let kube = KubeTokens::new(reviewer, vec![ISTIO_CA_AUDIENCE.to_string()]);
                (Arc::new(kube) as Arc<dyn TokenAuthenticator>, None)
            }
            Authentication::Custom(a) => (Arc::clone(a), None),
        };

    let mut names = ServingNames::istiod(&options.dns_names);
    for addr in std::iter::once(options.secure_grpc_addr).chain(options.webhook_addr) {
        match addr.ip() {
            ip if ip.is_unspecified() => names.add(&IpAddr::V4(Ipv4Addr::LOCALHOST).to_string()),
            ip => names.add(&ip.to_string()),
        }
    }
    let serving = ServingCertificate::new(Arc::clone(&ca), names, tls::SERVING_CERT_TTL)?;

    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| SecurityError::Bind { what, addr, source })
    };
    let local = |l: &TcpListener, what, addr| {
        l.local_addr()
            .map_err(|source| SecurityError::Bind { what, addr, source })
    };
    let grpc = bind("secure gRPC", options.secure_grpc_addr).await?;
    let secure_grpc_addr = local(&grpc, "secure gRPC", options.secure_grpc_addr)?;
    let webhook = match options.webhook_addr {
        Some(addr) => {
            let listener = bind("webhook", addr).await?;
            let bound = local(&listener, "webhook", addr)?;
            Some((listener, bound))
        }
        None => None,
    };

    let mut tasks = Vec::new();
    let ca_server = CaServer::new(
        Arc::clone(&ca),
        Arc::clone(&authenticator),
        options.ca,
        metrics,
    );
    tasks.push(secure_grpc::spawn(
        grpc,
        server_config(&serving, &[secure_grpc::ALPN_H2])?,
        ads.service(),
        ca_server,
        options.xds_auth.then(|| Arc::clone(&authenticator)),
        stop.clone(),
    ));
    let webhook_addr = match webhook {
        Some((listener, bound)) => {
            let hook = Webhook::new(options.inject.clone(), Arc::clone(pusher) as _);
            tasks.push(webhook_server::spawn(
                listener,
                server_config(&serving, &webhook_server::ALPN)?,
                Arc::new(hook),
                stop.clone(),
            ));
            Some(bound)
        }
        None => None,
    };

    tracing::info!(
        "mesh CA: {source}, trust domain {}, root published at {} (sidecars: --ca-root-file, \
         Istio pods: /var/run/secrets/istio/root-cert.pem)",
        ca.trust_domain(),
        root_cert_file.display()
    );
    match &file_tokens {
        Some(tokens) => tracing::info!(
            "workload tokens: file mode, one per pod in {}/<namespace>/<service-account>/<pod> \
             (issued by `ama up`; a sidecar sends its file with --token-file)",
            tokens.dir().display()
        ),
        None => tracing::info!(
            "workload tokens: projected service-account tokens (audience {ISTIO_CA_AUDIENCE}), \
             checked by TokenReview"
        ),
    }
    tracing::info!(
        "secure gRPC over TLS on {secure_grpc_addr}: ADS ({}) and IstioCertificateService{}",
        if options.xds_auth {
            "bearer token required"
        } else {
            "no token required"
        },
        webhook_addr
            .map(|a| format!(
                ", injection webhook (HTTPS /inject) on {a}; its caBundle is {}",
                root_cert_file.display()
            ))
            .unwrap_or_default()
    );
    Ok(Security {
        secure_grpc_addr,
        webhook_addr,
        root_cert_file,
        ca,
        file_tokens,
        serving,
        tasks,
    })
}

fn source_dir(cacerts: &Option<PathBuf>, state_dir: &Path) -> PathBuf {
    RootSource::new(cacerts.clone(), state_dir)
        .dir()
        .to_path_buf()
}

/// Writes a public file (mode 0644) through a temporary name, so readers never see half of it.
fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// Workload certificates last at most this long unless configured (`--workload-cert-ttl`).
pub const DEFAULT_WORKLOAD_CERT_TTL: Duration = crate::ca_server::DEFAULT_MAX_WORKLOAD_TTL;
