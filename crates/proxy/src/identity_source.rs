//! Where the sidecar's workload certificate comes from, as Istio's agent gets it:
//!
//! - **File-mounted certificates** ([`load_cert_dir`], [`watch_cert_dir`]): a directory in
//!   Istio's `/etc/certs` layout (`cert-chain.pem`, `key.pem`, `root-cert.pem`), written by
//!   someone else (cert-manager, a CSI driver, a test) and re-read when it changes. The identity
//!   is whatever SPIFFE id the leaf carries.
//! - **The control plane's CA** ([`CaProvider`]): `istio.v1.auth.IstioCertificateService/
//!   CreateCertificate` over gRPC to `CA_ADDR`, TLS verified against the mesh root file,
//!   authenticated by the pod's service-account token (`Authorization: Bearer`). The key and CSR
//!   are made in-process by the [`IdentityManager`] (ECDSA P-256), which renews at half life
//!   with jitter.
//!
//! With neither, the sidecar has no identity: plaintext only, auto mTLS off.
//! [`IdentitySource::resolve`] picks one as Istio's agent does and [`start`] brings it up.
//!
//! I/O: file reads, the CA's TCP+TLS connection. Keys and tokens never appear in logs or
//! errors.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use identity::manager::BoxFuture;
use identity::{
    CertChain, CertificateProvider, IdentityManager, PrivateKey, RotationOptions, SpiffeId,
    WorkloadCertificate,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tonic::transport::Channel;
use xds::ca::{IstioCertificateRequest, IstioCertificateServiceClient};

use crate::control_plane::{SecureConnector, TokenError, bearer};

/// Istio's workload certificate chain file: the leaf, then intermediates.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// Istio's workload key file (PKCS#8, SEC1 or PKCS#1 PEM).
pub const KEY_FILE: &str = "key.pem";
/// Istio's mesh root file.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Where Istio mounts file-based workload certificates.
pub const ISTIO_CERT_DIR: &str = "/etc/certs";
/// The projected service-account token Istio's agent sends to the CA.
pub const ISTIO_TOKEN_FILE: &str = "/var/run/secrets/tokens/istio-token";
/// The mesh root Istio mounts for verifying the control plane.
pub const ISTIO_CA_ROOT_FILE: &str = "/var/run/secrets/istio/root-cert.pem";

/// Why a workload identity could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum IdentitySourceError {
    /// A file could not be read.
    #[error("{}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (shown in the message, so not a `source`).
        error: io::Error,
    },
    /// A file holds no usable PEM of the kind expected. Never quotes key material.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate, key or chain was refused.
    #[error(transparent)]
    Identity(#[from] identity::Error),
    /// The CA address or its TLS settings are unusable.
    #[error("CA {addr}: {reason}")]
    Ca {
        /// `CA_ADDR`.
        addr: String,
        /// What is wrong.
        reason: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, IdentitySourceError> {
    std::fs::read(path).map_err(|error| IdentitySourceError::Read {
        path: path.to_path_buf(),
        error,
    })
}

fn certificates(
    path: &Path,
    text: &[u8],
) -> Result<Vec<CertificateDer<'static>>, IdentitySourceError> {
    let certs = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentitySourceError::Pem {
            path: path.to_path_buf(),
            reason: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(IdentitySourceError::Pem {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Reads Istio's file-mounted certificates from `dir` and checks them: the leaf's SPIFFE id is
/// the identity, the key must match it, and the chain must verify against `root-cert.pem`.
/// Roots repeated at the end of `cert-chain.pem` are dropped.
pub fn load_cert_dir(dir: &Path) -> Result<WorkloadCertificate, IdentitySourceError> {
    let chain_path = dir.join(CERT_CHAIN_FILE);
    let key_path = dir.join(KEY_FILE);
    let root_path = dir.join(ROOT_CERT_FILE);
    let roots = certificates(&root_path, &read(&root_path)?)?;
    let mut chain = certificates(&chain_path, &read(&chain_path)?)?.into_iter();
    let leaf = chain.next().ok_or_else(|| IdentitySourceError::Pem {
        path: chain_path.clone(),
        reason: "no leaf certificate".into(),
    })?;
    let intermediates: Vec<_> = chain.filter(|c| !roots.contains(c)).collect();
    let key = read_key(&key_path)?;
    let id = SpiffeId::from_certificate_der(&leaf)?;
    let chain = CertChain::new(leaf, intermediates, roots)?;
    Ok(WorkloadCertificate::new(&id, key, chain)?)
}

/// Reads a private key in any of the PEM forms Istio writes, as PKCS#8.
fn read_key(path: &Path) -> Result<PrivateKey, IdentitySourceError> {
    let text = read(path)?;
    let bad = |reason: &str| IdentitySourceError::Pem {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let text = std::str::from_utf8(&text).map_err(|_| bad("not PEM text"))?;
    // rcgen reads PKCS#8, SEC1 and PKCS#1 and writes PKCS#8; its errors never quote the key.
    let pair = rcgen::KeyPair::from_pem(text).map_err(|_| bad("no usable private key"))?;
    let pkcs8 = pair.serialize_pem();
    Ok(PrivateKey::from_pem(
        &path.display().to_string(),
        pkcs8.as_bytes(),
    )?)
}

/// A provider for file-mounted certificates: they are renewed by rewriting the files, never
/// by asking, so a fetch is an error.
#[derive(Debug)]
struct FilesRenewThemselves;

impl CertificateProvider for FilesRenewThemselves {
    fn fetch<'a>(
        &'a self,
        _csr_pem: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<CertChain, identity::Error>> {
        Box::pin(async {
            Err(identity::Error::Provider(
                "file-mounted certificates are renewed by rewriting the files".into(),
            ))
        })
    }
}

/// An identity manager holding the certificates of `dir` ([`load_cert_dir`]); keep it current
/// with [`watch_cert_dir`].
pub fn from_cert_dir(dir: &Path) -> Result<Arc<IdentityManager>, IdentitySourceError> {
    let first = load_cert_dir(dir)?;
    tracing::info!(dir = %dir.display(), id = %first.id(), serial = %first.serial_hex(), "file-mounted workload certificate loaded");
    Ok(IdentityManager::from_certificate(
        first,
        Arc::new(FilesRenewThemselves),
        RotationOptions::default(),
    ))
}

/// Re-reads `dir` every `interval` and installs its certificates when the files change (and
/// have stayed the same for one more interval, so a half-written set is not taken). A set that
/// does not load is logged and the current certificate stays. Ends when the manager is dropped.
pub fn watch_cert_dir(
    manager: &Arc<IdentityManager>,
    dir: PathBuf,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    let weak: Weak<IdentityManager> = Arc::downgrade(manager);
    tokio::spawn(async move {
        let snapshot = |dir: &Path| -> Option<Vec<Vec<u8>>> {
            [CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE]
                .iter()
                .map(|f| std::fs::read(dir.join(f)).ok())
                .collect()
        };
        let mut applied = snapshot(&dir);
        let mut pending: Option<Vec<Vec<u8>>> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(manager) = weak.upgrade() else {
                return;
            };
            let Some(now) = snapshot(&dir) else { continue };
            if applied.as_ref() == Some(&now) {
                pending = None;
                continue;
            }
            if pending.as_ref() != Some(&now) {
                pending = Some(now);
                continue;
            }
            pending = None;
            applied = Some(now);
            match load_cert_dir(&dir).map(|c| manager.install(c)) {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::error!(dir = %dir.display(), %error, "file-mounted certificate refused; keeping the current one");
                }
                Err(error) => {
                    tracing::error!(dir = %dir.display(), %error, "file-mounted certificate unreadable; keeping the current one");
                }
            }
        }
    })
}

/// Where the sidecar's certificate comes from.
#[derive(Debug, Clone, Default)]
pub enum IdentitySource {
    /// No certificates: plaintext only, auto mTLS off.
    #[default]
    None,
    /// Istio's file-mounted layout in this directory, re-read on change.
    Files(PathBuf),
    /// The control plane's CA, asked for `id`.
    Ca {
        /// How to reach it.
        options: CaOptions,
        /// The identity to ask for (the CA decides, from the token).
        id: SpiffeId,
    },
}

/// What [`IdentitySource::resolve`] chooses from (the sidecar's flags and environment).
#[derive(Debug, Clone, Default)]
pub struct IdentityFlags {
    /// `--cert-dir`: file-mounted certificates here.
    pub cert_dir: Option<PathBuf>,
    /// `CA_ADDR`: the control plane's CA.
    pub ca_addr: Option<String>,
    /// `--ca-root-file` (default [`ISTIO_CA_ROOT_FILE`]).
    pub ca_root_file: Option<PathBuf>,
    /// `--token-file` (default [`ISTIO_TOKEN_FILE`]).
    pub token_file: Option<PathBuf>,
    /// `--trust-domain` (default `cluster.local`).
    pub trust_domain: Option<String>,
    /// `POD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `SERVICE_ACCOUNT` (default `default`).
    pub service_account: Option<String>,
    /// `ISTIO_META_CLUSTER_ID`.
    pub cluster_id: String,
}

impl IdentitySource {
    /// Picks the source: `--cert-dir`, else `CA_ADDR`, else Istio's `/etc/certs` when it holds
    /// a certificate chain, else none.
    pub fn resolve(flags: IdentityFlags) -> Result<IdentitySource, IdentitySourceError> {
        if let Some(dir) = flags.cert_dir {
            return Ok(IdentitySource::Files(dir));
        }
        if let Some(addr) = flags.ca_addr {
            let trust_domain = flags.trust_domain.as_deref().unwrap_or("cluster.local");
            let namespace = flags.namespace.as_deref().unwrap_or("default");
            let sa = flags.service_account.as_deref().unwrap_or("default");
            let id = SpiffeId::new(trust_domain, namespace, sa).map_err(identity::Error::from)?;
            let options = CaOptions {
                addr,
                root_file: flags
                    .ca_root_file
                    .unwrap_or_else(|| PathBuf::from(ISTIO_CA_ROOT_FILE)),
                token_file: flags
                    .token_file
                    .unwrap_or_else(|| PathBuf::from(ISTIO_TOKEN_FILE)),
                cluster_id: flags.cluster_id,
                startup_timeout: Duration::from_secs(60),
            };
            return Ok(IdentitySource::Ca { options, id });
        }
        let istio = Path::new(ISTIO_CERT_DIR);
        if istio.join(CERT_CHAIN_FILE).is_file() {
            return Ok(IdentitySource::Files(istio.to_path_buf()));
        }
        Ok(IdentitySource::None)
    }
}

/// How often a certificate directory is checked for new files.
pub const CERT_DIR_POLL: Duration = Duration::from_secs(5);

/// Brings `source` up: the first certificate (waiting for the CA for up to its startup
/// timeout), then its renewal (the rotation task, or the directory watch). Returns the
/// data-path TLS, or `None` for plaintext, saying so in the log.
pub async fn start(
    source: &IdentitySource,
) -> Result<Option<Arc<crate::tls::MeshTls>>, IdentitySourceError> {
    let manager = match source {
        IdentitySource::None => {
            tracing::info!(
                "no workload identity (no --cert-dir, CA_ADDR or /etc/certs): plaintext only, auto mTLS off"
            );
            return Ok(None);
        }
        IdentitySource::Files(dir) => {
            let manager = from_cert_dir(dir)?;
            watch_cert_dir(&manager, dir.clone(), CERT_DIR_POLL);
            manager
        }
        IdentitySource::Ca { options, id } => {
            let manager = CaProvider::new(options)?
                .manager(id.clone(), options.startup_timeout)
                .await?;
            manager.spawn_rotation();
            manager
        }
    };
    tracing::info!(id = %manager.id(), "workload identity ready: mTLS with mesh peers");
    Ok(Some(crate::tls::MeshTls::new(manager)?))
}

/// How to reach the control plane's certificate service.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// `CA_ADDR`: `host:port` (Istio: `istiod.istio-system.svc:15012`). The host is also the
    /// name the CA's certificate must carry.
    pub addr: String,
    /// The mesh root that signs the CA's serving certificate.
    pub root_file: PathBuf,
    /// The bearer token, re-read at every request (projected tokens rotate); missing: none sent.
    pub token_file: PathBuf,
    /// `ClusterID` header (`ISTIO_META_CLUSTER_ID`).
    pub cluster_id: String,
    /// How long to try for the first certificate before giving up.
    pub startup_timeout: Duration,
}

/// A [`CertificateProvider`] over gRPC to the control plane's `IstioCertificateService`.
///
/// The channel is made once and connects lazily (and reconnects) on use; each fetch is one
/// unary call. Cheap to share.
#[derive(Debug, Clone)]
pub struct CaProvider {
    client: IstioCertificateServiceClient<Channel>,
    token_file: PathBuf,
    cluster_id: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl CaProvider {
    /// Prepares the channel to `opts.addr` over the control plane's secure connection
    /// ([`crate::control_plane`]: TLS 1.3 with the roots of `opts.root_file`, the address's host
    /// as the server name, ALPN `h2`). The root file is checked now; nothing is dialled yet.
    pub fn new(opts: &CaOptions) -> Result<CaProvider, IdentitySourceError> {
        let ca_err = |reason: String| IdentitySourceError::Ca {
            addr: opts.addr.clone(),
            reason,
        };
        // Fail fast on a missing or empty root; the connector re-reads it at every connection.
        certificates(&opts.root_file, &read(&opts.root_file)?)?;
        crate::control_plane::read_roots(&opts.root_file).map_err(ca_err)?;
        let connector = SecureConnector::new(&opts.addr, &opts.root_file).map_err(ca_err)?;
        let endpoint = connector
            .endpoint()
            .map_err(ca_err)?
            .timeout(Duration::from_secs(30));
        let channel = endpoint.connect_with_connector_lazy(connector);
        let cluster_id = opts.cluster_id.parse().map_err(|_| {
            ca_err(format!(
                "cluster id {:?} is not a header value",
                opts.cluster_id
            ))
        })?;
        Ok(CaProvider {
            client: IstioCertificateServiceClient::new(channel),
            token_file: opts.token_file.clone(),
            cluster_id,
        })
    }

    /// An identity manager for `id` whose first certificate comes from this CA, retried with
    /// backoff for up to `startup_timeout` (the CA may start after us). The caller spawns the
    /// rotation.
    pub async fn manager(
        self,
        id: SpiffeId,
        startup_timeout: Duration,
    ) -> Result<Arc<IdentityManager>, IdentitySourceError> {
        let provider: Arc<dyn CertificateProvider> = Arc::new(self);
        let deadline = tokio::time::Instant::now() + startup_timeout;
        let mut delay = Duration::from_millis(200);
        loop {
            match IdentityManager::new(id.clone(), provider.clone(), RotationOptions::default())
                .await
            {
                Ok(m) => return Ok(m),
                Err(error) if tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(%error, retry_in = ?delay, "no workload certificate yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

impl CertificateProvider for CaProvider {
    fn fetch<'a>(
        &'a self,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<CertChain, identity::Error>> {
        Box::pin(async move {
            let mut request = tonic::Request::new(IstioCertificateRequest {
                csr: csr_pem.to_string(),
                validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
                metadata: None,
            });
            match bearer(&self.token_file).await {
                Ok(value) => {
                    request.metadata_mut().insert("authorization", value);
                }
                Err(e @ TokenError::Read { .. }) => {
                    tracing::warn!(error = %e, "no token for the CA; asking without one");
                }
                Err(e) => return Err(provider_error(&e.to_string())),
            }
            request
                .metadata_mut()
                .insert(xds::ca::CLUSTER_ID_HEADER, self.cluster_id.clone());
            let response = self
                .client
                .clone()
                .create_certificate(request)
                .await
                .map_err(|status| {
                    provider_error(&format!(
                        "CreateCertificate: {:?}: {}",
                        status.code(),
                        status.message()
                    ))
                })?;
            CertChain::from_pem_list(&response.into_inner().cert_chain)
        })
    }
}

fn provider_error(reason: &str) -> identity::Error {
    identity::Error::Provider(reason.to_string())
}
