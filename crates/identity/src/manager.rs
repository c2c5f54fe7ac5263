//! The workload's current certificate and its rotation.
//!
//! [`IdentityManager`] holds the current [`WorkloadCertificate`] behind an `ArcSwap`: the TLS
//! configs of [`crate::tls`] load it at every handshake (one atomic load), so a rotation reaches
//! new connections at once while established ones keep the keys they negotiated. Certificates
//! come from a [`CertificateProvider`]: the in-process CA now ([`LocalCaProvider`]), the
//! control plane's `IstioCertificateService` over gRPC later.
//!
//! Rotation ([`IdentityManager::spawn_rotation`]) renews at half of the lifetime left when the
//! certificate arrived, ±10% jitter so a fleet started together does not renew together, as
//! Istio's secret cache does. A failed renewal is retried with exponential backoff while the old
//! certificate stays in force. Each renewal makes a fresh key in-process.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::UnixTime;
use tokio::sync::{Mutex, watch};

use crate::{CertChain, CertificateAuthority, CsrAndKey, Error, PrivateKey, SpiffeId, tls};

/// A boxed, sendable future: what [`CertificateProvider::fetch`] returns, so providers can be
/// used as `Arc<dyn CertificateProvider>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that turns a CSR into a signed chain for this workload: the local CA, or the
/// control plane's `IstioCertificateService/CreateCertificate` (which authenticates the caller
/// and decides the identity itself).
pub trait CertificateProvider: Send + Sync + 'static {
    /// Asks for a certificate for the key of `csr_pem`, valid for `ttl` (the CA may shorten it).
    fn fetch<'a>(
        &'a self,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<CertChain, Error>>;
}

/// A [`CertificateProvider`] backed by an in-process [`CertificateAuthority`], signing for one
/// fixed id (the caller it stands for is trusted by construction). Signing is synchronous
/// (about 100 µs) and does not yield.
#[derive(Debug, Clone)]
pub struct LocalCaProvider {
    ca: Arc<CertificateAuthority>,
    id: SpiffeId,
}

impl LocalCaProvider {
    /// A provider that signs for `id` with `ca`.
    pub fn new(ca: Arc<CertificateAuthority>, id: SpiffeId) -> Self {
        LocalCaProvider { ca, id }
    }
}

impl CertificateProvider for LocalCaProvider {
    fn fetch<'a>(
        &'a self,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<CertChain, Error>> {
        Box::pin(async move { self.ca.sign_csr(csr_pem, &self.id, ttl) })
    }
}

/// A workload certificate ready for TLS: the chain, its private key, and what the verifiers
/// need, all checked when built.
///
/// Immutable; shared as `Arc`. `Debug` shows the id, serial and validity, never the key.
pub struct WorkloadCertificate {
    id: SpiffeId,
    key: PrivateKey,
    chain: CertChain,
    serial: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
    received_at: SystemTime,
    certified_key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl WorkloadCertificate {
    /// Checks and assembles a certificate for `id`: the leaf must carry exactly `id`, match
    /// `key`, and chain to the chain's roots now. Prepares the rustls signing key and the
    /// client-certificate verifier once, so handshakes do not.
    ///
    /// Costs a few parses, one chain verification and one key load (well under a millisecond).
    pub fn new(id: &SpiffeId, key: PrivateKey, chain: CertChain) -> Result<Self, Error> {
        let presented = SpiffeId::from_certificate_der(chain.leaf())?;
        if presented != *id {
            return Err(Error::WrongIdentity {
                expected: Box::new(id.clone()),
                presented: Box::new(presented),
            });
        }
        let (_, leaf) = x509_parser::parse_x509_certificate(chain.leaf())
            .map_err(|e| Error::certificate("workload certificate", e))?;
        let validity = leaf.validity();
        let not_before = unix_to_system(validity.not_before.timestamp());
        let not_after = unix_to_system(validity.not_after.timestamp());
        let serial = leaf.raw_serial().to_vec();

        let provider = tls::crypto_provider();
        let certified_key = CertifiedKey::from_der(chain.tls_chain(), key.to_der(), &provider)
            .map_err(|source| Error::Tls {
                what: "workload key and certificate",
                source,
            })?;
        let roots = Arc::new(tls::root_store(&chain)?);
        tls::verify_chain(chain.leaf(), chain.intermediates(), &roots, UnixTime::now())
            .map_err(|e| Error::certificate("workload certificate", e))?;
        let client_verifier = tls::client_verifier(roots.clone())?;
        Ok(WorkloadCertificate {
            id: id.clone(),
            key,
            chain,
            serial,
            not_before,
            not_after,
            received_at: SystemTime::now(),
            certified_key: Arc::new(certified_key),
            roots,
            client_verifier,
        })
    }

    /// The workload's SPIFFE id.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// Leaf, intermediates and roots.
    pub fn chain(&self) -> &CertChain {
        &self.chain
    }

    /// The private key of the leaf. Never log it.
    pub fn private_key(&self) -> &PrivateKey {
        &self.key
    }

    /// The leaf's serial number, big-endian bytes as encoded.
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// The leaf's serial number as lowercase hex (what `openssl x509 -serial` shows, lowercased).
    pub fn serial_hex(&self) -> String {
        hex::encode(&self.serial)
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When this process received the certificate; the rotation schedule counts from here.
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// The rustls signing key and chain, handed out at each handshake.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// The mesh roots this certificate chains to; peers are verified against them.
    pub fn roots(&self) -> &RootCertStore {
        &self.roots
    }

    pub(crate) fn client_verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_verifier
    }

    /// When to renew: `received_at` plus half of the lifetime left then, scaled by
    /// `1 + jitter * draw` (`draw` in -1..=1, clamped). Pure.
    pub fn renewal_time(&self, jitter: f64, draw: f64) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.received_at)
            .unwrap_or_default();
        let factor = 0.5 * (1.0 + jitter.clamp(0.0, 1.0) * draw.clamp(-1.0, 1.0));
        // NaN from a misconfigured jitter must not panic in `mul_f64`: plain half life then.
        let factor = if factor.is_finite() { factor } else { 0.5 };
        self.received_at + lifetime.mul_f64(factor)
    }
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("id", &self.id)
            .field("serial", &self.serial_hex())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain", &self.chain)
            .field("key", &self.key)
            .finish()
    }
}

/// How the manager asks for and renews certificates.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationOptions {
    /// Requested certificate lifetime (default 24 h, Istio's `SECRET_TTL`).
    pub ttl: Duration,
    /// Relative jitter on the half-life renewal time (default 0.1, i.e. ±10%).
    pub jitter: f64,
    /// First retry delay after a failed renewal (default 1 s); doubles on each failure.
    pub retry_initial: Duration,
    /// Longest retry delay (default 2 min).
    pub retry_max: Duration,
}

impl Default for RotationOptions {
    fn default() -> Self {
        RotationOptions {
            ttl: crate::ca::DEFAULT_WORKLOAD_TTL,
            jitter: 0.1,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(120),
        }
    }
}

/// Owns the workload identity: the current certificate, how to get the next one, and when.
///
/// Share it as `Arc<IdentityManager>` between the TLS configs and the rotation task.
pub struct IdentityManager {
    id: SpiffeId,
    provider: Arc<dyn CertificateProvider>,
    options: RotationOptions,
    current: ArcSwap<WorkloadCertificate>,
    updates: watch::Sender<Arc<WorkloadCertificate>>,
    renewing: Mutex<()>,
}

impl IdentityManager {
    /// Makes a key and CSR for `id`, fetches the first certificate from `provider`, and returns
    /// the manager holding it. Fails if that first fetch fails: retrying is the caller's choice
    /// at start-up. No rotation runs until [`Self::spawn_rotation`].
    pub async fn new(
        id: SpiffeId,
        provider: Arc<dyn CertificateProvider>,
        options: RotationOptions,
    ) -> Result<Arc<Self>, Error> {
        let first = fetch(&id, provider.as_ref(), options.ttl).await?;
        tracing::info!(id = %id, serial = %first.serial_hex(), "workload certificate issued");
        let first = Arc::new(first);
        let (updates, _) = watch::channel(first.clone());
        Ok(Arc::new(IdentityManager {
            id,
            provider,
            options,
            current: ArcSwap::new(first),
            updates,
            renewing: Mutex::new(()),
        }))
    }

    /// A manager holding `first`, a certificate obtained elsewhere (Istio's file-mounted
    /// `/etc/certs`), under `first`'s id. Renewal goes through `provider` only if
    /// [`Self::spawn_rotation`] runs; a source that renews by itself hands its certificates over
    /// with [`Self::install`].
    pub fn from_certificate(
        first: WorkloadCertificate,
        provider: Arc<dyn CertificateProvider>,
        options: RotationOptions,
    ) -> Arc<Self> {
        let first = Arc::new(first);
        let (updates, _) = watch::channel(first.clone());
        Arc::new(IdentityManager {
            id: first.id().clone(),
            provider,
            options,
            current: ArcSwap::new(first),
            updates,
            renewing: Mutex::new(()),
        })
    }

    /// Puts `next` in force, as a rotation would: new handshakes use it, established connections
    /// keep theirs. It must carry this manager's id.
    pub fn install(&self, next: WorkloadCertificate) -> Result<Arc<WorkloadCertificate>, Error> {
        if next.id() != &self.id {
            return Err(Error::WrongIdentity {
                expected: Box::new(self.id.clone()),
                presented: Box::new(next.id().clone()),
            });
        }
        let next = Arc::new(next);
        self.current.store(next.clone());
        self.updates.send_replace(next.clone());
        tracing::info!(id = %self.id, serial = %next.serial_hex(), "workload certificate installed");
        Ok(next)
    }

    /// The workload's id.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The certificate in force. One atomic load and a reference-count increment.
    pub fn current(&self) -> Arc<WorkloadCertificate> {
        self.current.load_full()
    }

    /// A receiver that sees every new certificate (e.g. to write it to disk or show it in the
    /// admin API).
    pub fn subscribe(&self) -> watch::Receiver<Arc<WorkloadCertificate>> {
        self.updates.subscribe()
    }

    /// Renews now: new key, new CSR, fetch, check, swap in. On error the current certificate
    /// stays in force. Concurrent calls are serialised. The rotation task reschedules after it.
    pub async fn rotate_now(&self) -> Result<Arc<WorkloadCertificate>, Error> {
        let _guard = self.renewing.lock().await;
        let next = Arc::new(fetch(&self.id, self.provider.as_ref(), self.options.ttl).await?);
        self.current.store(next.clone());
        self.updates.send_replace(next.clone());
        tracing::info!(
            id = %self.id,
            serial = %next.serial_hex(),
            not_after = ?next.not_after(),
            "workload certificate rotated"
        );
        Ok(next)
    }

    /// Starts the rotation task on the current tokio runtime: renew at half life with jitter,
    /// retry with backoff on failure, reschedule after any [`Self::rotate_now`]. The task holds
    /// only a weak reference and ends when the last `Arc<IdentityManager>` is dropped; abort the
    /// handle to stop it sooner.
    pub fn spawn_rotation(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let updates = self.updates.subscribe();
        tokio::spawn(rotation_loop(weak, updates))
    }

    fn delay_until_renewal(&self) -> Duration {
        let draw = rand::random::<f64>() * 2.0 - 1.0;
        let at = self.current().renewal_time(self.options.jitter, draw);
        at.duration_since(SystemTime::now()).unwrap_or_default()
    }
}

impl fmt::Debug for IdentityManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityManager")
            .field("id", &self.id)
            .field("current", &self.current())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

async fn fetch(
    id: &SpiffeId,
    provider: &dyn CertificateProvider,
    ttl: Duration,
) -> Result<WorkloadCertificate, Error> {
    let CsrAndKey { key, csr_pem } = CsrAndKey::generate(id)?;
    let chain = provider.fetch(&csr_pem, ttl).await?;
    WorkloadCertificate::new(id, key, chain)
}

async fn rotation_loop(
    manager: Weak<IdentityManager>,
    mut updates: watch::Receiver<Arc<WorkloadCertificate>>,
) {
    let mut retry: Option<Duration> = None;
    loop {
        let delay = {
            let Some(m) = manager.upgrade() else { return };
            retry.unwrap_or_else(|| m.delay_until_renewal())
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            changed = updates.changed() => {
                if changed.is_err() {
                    return; // the manager is gone
                }
                retry = None; // rotated from outside: schedule from the new certificate
                continue;
            }
        }
        let Some(m) = manager.upgrade() else { return };
        match m.rotate_now().await {
            Ok(_) => {
                updates.borrow_and_update();
                retry = None;
            }
            Err(error) => {
                let next = retry.map_or(m.options.retry_initial, |d| {
                    (d * 2).min(m.options.retry_max)
                });
                tracing::warn!(
                    id = %m.id,
                    %error,
                    retry_in = ?next,
                    not_after = ?m.current().not_after(),
                    "workload certificate renewal failed; the current certificate stays in force"
                );
                retry = Some(next);
            }
        }
    }
}

fn unix_to_system(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}
