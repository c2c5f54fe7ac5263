//! The mesh certificate authority: a root (self-signed, or plugged in from Istio's `cacerts/`
//! layout) and the signing of workload CSRs.
//!
//! Signing follows Istio's rule: the certificate names the *caller* (the id the control plane
//! authenticated), never what the CSR asks for. Only the CSR's public key is used, after its
//! self-signature has been checked; its subject, SANs and requested extensions are ignored. Leaves
//! look like Istio's: empty subject, the SPIFFE id as the only (critical) SAN, digitalSignature +
//! keyEncipherment, serverAuth + clientAuth, CA:FALSE.
//!
//! I/O: [`CertificateAuthority::load`] and [`CertificateAuthority::persist`] read and write one
//! directory; everything else is pure computation.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SanType,
    SerialNumber,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer as _;

use crate::{Error, SpiffeId, pem, tls};

/// Istio's plug-in file holding the signing (CA) certificate.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// Istio's plug-in file holding the signing key (mode 0600 when we write it).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Istio's plug-in file holding the root certificate(s) workloads trust.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Istio's plug-in file holding the chain from the signing certificate up to the root.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// Lifetime of a generated self-signed root: 10 years, as Istio's.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default workload certificate lifetime: 24 h, as Istio's `SECRET_TTL`.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default cap on a workload certificate lifetime: 90 days, as Istio's `MAX_WORKLOAD_CERT_TTL`.
pub const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// How far `notBefore` is backdated, so peers with slightly slow clocks accept a new cert.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A workload certificate with what it chains to: leaf, intermediates (when the CA is
/// plugged in below another root), and the trusted root(s).
///
/// This is the payload of Istio's `CreateCertificate` response ([`CertChain::to_pem_list`],
/// [`CertChain::from_pem_list`]). Holds DER; cloning copies the bytes (a few KiB).
#[derive(Clone, PartialEq, Eq)]
pub struct CertChain {
    leaf: CertificateDer<'static>,
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
}

impl CertChain {
    /// Assembles a chain. `roots` must not be empty; nothing is verified here (see
    /// [`crate::WorkloadCertificate::new`]).
    pub fn new(
        leaf: CertificateDer<'static>,
        intermediates: Vec<CertificateDer<'static>>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, Error> {
        if roots.is_empty() {
            return Err(Error::certificate(
                "certificate chain",
                "no root certificate",
            ));
        }
        Ok(CertChain {
            leaf,
            intermediates,
            roots,
        })
    }

    /// Reads Istio's `CreateCertificateResponse.cert_chain`: the leaf first, then each
    /// intermediate, and the root(s) last (the last entry may hold several concatenated roots).
    pub fn from_pem_list(list: &[impl AsRef<str>]) -> Result<Self, Error> {
        let [first, middle @ .., last] = list else {
            return Err(Error::pem(
                "certificate chain",
                "needs at least a leaf and a root",
            ));
        };
        let leaf = pem::certificate("leaf certificate", first.as_ref().as_bytes())?;
        let mut intermediates = Vec::new();
        for (i, text) in middle.iter().enumerate() {
            intermediates.extend(pem::certificates(
                &format!("intermediate {i}"),
                text.as_ref().as_bytes(),
            )?);
        }
        let roots = pem::certificates("root certificate", last.as_ref().as_bytes())?;
        CertChain::new(leaf, intermediates, roots)
    }

    /// The PEM list for `CreateCertificateResponse.cert_chain`: leaf, each intermediate, then the
    /// roots concatenated in one entry.
    pub fn to_pem_list(&self) -> Vec<String> {
        let mut list = Vec::with_capacity(self.intermediates.len() + 2);
        list.push(pem::encode("CERTIFICATE", &self.leaf));
        list.extend(
            self.intermediates
                .iter()
                .map(|c| pem::encode("CERTIFICATE", c)),
        );
        list.push(self.roots_pem());
        list
    }

    /// The workload certificate (DER).
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.leaf
    }

    /// The intermediates between leaf and root, leaf side first; empty under a self-signed root.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// The trusted root certificates (at least one).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// What a TLS peer presents: the leaf followed by the intermediates. Copies the DER.
    pub fn tls_chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(&self.leaf)
            .chain(&self.intermediates)
            .cloned()
            .collect()
    }

    /// The leaf and intermediates as PEM (Istio's `cert-chain.pem` of a workload).
    pub fn chain_pem(&self) -> String {
        pem::encode_certificates(std::iter::once(&self.leaf).chain(&self.intermediates))
    }

    /// The roots as PEM (Istio's `root-cert.pem`).
    pub fn roots_pem(&self) -> String {
        pem::encode_certificates(&self.roots)
    }
}

impl fmt::Debug for CertChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertChain")
            .field("leaf_bytes", &self.leaf.len())
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.roots.len())
            .finish()
    }
}

/// The mesh CA: signs workload CSRs with a key whose certificate chains to the mesh root.
///
/// Self-signed ([`CertificateAuthority::generate`]) the signing certificate *is* the root, like
/// istiod's `istio-ca-secret`; plugged in ([`CertificateAuthority::load`] on an Istio `cacerts/`
/// directory) it is an intermediate and leaves carry it in their chain. `Debug` never shows the
/// key. Signing takes `&self` and is safe from many tasks at once.
pub struct CertificateAuthority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    signing_cert: CertificateDer<'static>,
    signing_not_after: OffsetDateTime,
    /// From the signing certificate up, roots excluded; empty when self-signed.
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    max_ttl: Duration,
}

impl CertificateAuthority {
    /// Generates a self-signed root for `trust_domain`: ECDSA P-256, valid 10 years, subject
    /// `O=<trust domain>` as Istio's, CA:TRUE, keyCertSign + cRLSign + digitalSignature.
    ///
    /// Costs one key generation and one signature. Nothing is written: see [`Self::persist`].
    pub fn generate(trust_domain: &str) -> Result<Self, Error> {
        crate::spiffe::validate_trust_domain(trust_domain)?;
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Generate {
                what: "CA key",
                source,
            })?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + ROOT_TTL;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(|source| Error::Generate {
            what: "self-signed root",
            source,
        })?;
        let root = cert.der().clone();
        Ok(CertificateAuthority {
            trust_domain: trust_domain.to_string(),
            signing_not_after: params.not_after,
            issuer: Issuer::new(params, key),
            signing_cert: root.clone(),
            intermediates: Vec::new(),
            roots: vec![root],
            max_ttl: MAX_WORKLOAD_TTL,
        })
    }

    /// Loads a CA from a directory in Istio's plug-in layout: `ca-cert.pem` (signing
    /// certificate), `ca-key.pem` (its key: PKCS#8, SEC1 or PKCS#1; EC or RSA), `root-cert.pem`
    /// (the root or roots) and, optionally, `cert-chain.pem` (signing certificate up to the root;
    /// the copies of the signing certificate and roots in it are skipped). A directory written by
    /// [`Self::persist`] loads back to the same CA.
    ///
    /// Checks that the key matches `ca-cert.pem`, that it is a CA certificate, and that a leaf
    /// it signs verifies against the roots (one probe signature and verification).
    pub fn load(dir: &Path, trust_domain: &str) -> Result<Self, Error> {
        crate::spiffe::validate_trust_domain(trust_domain)?;
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read(&path).map_err(|e| Error::io(path, e))
        };
        let shown = |name: &str| dir.join(name).display().to_string();

        let signing_cert = pem::certificate(&shown(CA_CERT_FILE), &read(CA_CERT_FILE)?)?;
        let key_text = String::from_utf8(read(CA_KEY_FILE)?)
            .map_err(|_| Error::pem(shown(CA_KEY_FILE), "not UTF-8 PEM text"))?;
        let key = KeyPair::from_pem(&key_text).map_err(|e| {
            Error::pem(
                shown(CA_KEY_FILE),
                format!("cannot read the private key: {e}"),
            )
        })?;
        drop(key_text);
        let roots = pem::certificates(&shown(ROOT_CERT_FILE), &read(ROOT_CERT_FILE)?)?;
        let chain_path = dir.join(CERT_CHAIN_FILE);
        let chain = match fs::read(&chain_path) {
            Ok(text) if text.iter().all(u8::is_ascii_whitespace) => Vec::new(),
            Ok(text) => pem::certificates(&shown(CERT_CHAIN_FILE), &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(chain_path, e)),
        };

        let (_, parsed) = x509_parser::parse_x509_certificate(&signing_cert)
            .map_err(|e| Error::certificate(shown(CA_CERT_FILE), e))?;
        let is_ca = matches!(parsed.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(Error::certificate(
                shown(CA_CERT_FILE),
                "not a CA certificate (no basicConstraints CA:TRUE)",
            ));
        }
        if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(Error::certificate(
                shown(CA_CERT_FILE),
                format!("does not match the key in {CA_KEY_FILE}"),
            ));
        }
        let signing_not_after = parsed.validity().not_after.to_datetime();

        let intermediates = if roots.contains(&signing_cert) {
            Vec::new()
        } else {
            std::iter::once(signing_cert.clone())
                .chain(
                    chain
                        .into_iter()
                        .filter(|c| *c != signing_cert && !roots.contains(c)),
                )
                .collect()
        };
        let issuer =
            Issuer::from_ca_cert_der(&signing_cert, key).map_err(|source| Error::Generate {
                what: "reading ca-cert.pem as an issuer",
                source,
            })?;
        let ca = CertificateAuthority {
            trust_domain: trust_domain.to_string(),
            issuer,
            signing_cert,
            signing_not_after,
            intermediates,
            roots,
            max_ttl: MAX_WORKLOAD_TTL,
        };
        ca.self_check().map_err(|e| {
            Error::certificate(
                shown(CA_CERT_FILE),
                format!("a leaf it signs does not verify against {ROOT_CERT_FILE}: {e}"),
            )
        })?;
        Ok(ca)
    }

    /// Loads the CA from `dir` when it holds `ca-key.pem`; otherwise generates a self-signed root
    /// and persists it there, so the mesh keeps its root across restarts.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Self, Error> {
        if dir.join(CA_KEY_FILE).exists() {
            return Self::load(dir, trust_domain);
        }
        let ca = Self::generate(trust_domain)?;
        ca.persist(dir)?;
        tracing::info!(dir = %dir.display(), trust_domain, "generated a self-signed mesh root");
        Ok(ca)
    }

    /// Writes the CA in Istio's plug-in layout: `ca-cert.pem`, `ca-key.pem` (mode 0600),
    /// `root-cert.pem`, and `cert-chain.pem` (intermediates then roots; just the root when
    /// self-signed). Each file is written to a temporary name and renamed into place.
    pub fn persist(&self, dir: &Path) -> Result<(), Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let chain = pem::encode_certificates(self.intermediates.iter().chain(&self.roots));
        write_atomically(
            dir,
            CA_CERT_FILE,
            &pem::encode("CERTIFICATE", &self.signing_cert),
            0o644,
        )?;
        write_atomically(dir, CA_KEY_FILE, &self.issuer.key().serialize_pem(), 0o600)?;
        write_atomically(
            dir,
            ROOT_CERT_FILE,
            &pem::encode_certificates(&self.roots),
            0o644,
        )?;
        write_atomically(dir, CERT_CHAIN_FILE, &chain, 0o644)?;
        Ok(())
    }

    /// Caps the lifetime of issued certificates (default [`MAX_WORKLOAD_TTL`]).
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// Signs a workload certificate for `id` with the public key of `csr_pem`.
    ///
    /// The CSR must parse and its self-signature must verify (proof the caller holds the key);
    /// everything else in it (subject, SANs, extensions) is ignored. The leaf has an empty
    /// subject, exactly `id` as its (critical) URI SAN, digitalSignature + keyEncipherment,
    /// serverAuth + clientAuth, CA:FALSE, a random 128-bit serial, `notBefore` one minute back,
    /// and a lifetime of `ttl` capped at the CA's maximum and at the signing certificate's
    /// expiry. `id` must be in the CA's trust domain.
    ///
    /// Costs one ECDSA verification and one signature (about 100 µs with a P-256 CA key).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<CertChain, Error> {
        if id.trust_domain() != self.trust_domain {
            return Err(Error::ForeignTrustDomain {
                ca: self.trust_domain.clone(),
                id: Box::new(id.clone()),
            });
        }
        if ttl.is_zero() {
            return Err(Error::ZeroTtl);
        }
        let der = pem::csr(csr_pem.as_bytes())?;
        let (_, csr) = X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| Error::certificate("CSR", e))?;
        csr.verify_signature().map_err(|_| Error::CsrSignature)?;
        let public_key =
            rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
                .map_err(|e| Error::certificate("CSR", format!("unsupported public key: {e}")))?;
        self.issue(&public_key, id, ttl)
    }

    /// Issues a serving certificate for the control plane itself (istiod's
    /// `istiod.istio-system.svc`, on 15012 and 15017): a fresh P-256 key and a leaf whose SANs
    /// are `dns_names` and `ip_addresses` (no SPIFFE id), otherwise shaped like a workload leaf.
    /// Clients verify it against [`Self::roots`] by host name, as gRPC and the API server do.
    ///
    /// Costs one key generation and one signature.
    pub fn issue_server_certificate(
        &self,
        dns_names: &[String],
        ip_addresses: &[std::net::IpAddr],
        ttl: Duration,
    ) -> Result<(CertChain, crate::PrivateKey), Error> {
        if dns_names.is_empty() && ip_addresses.is_empty() {
            return Err(Error::certificate(
                "serving certificate",
                "needs at least one DNS name or IP address",
            ));
        }
        if ttl.is_zero() {
            return Err(Error::ZeroTtl);
        }
        let mut sans = Vec::with_capacity(dns_names.len() + ip_addresses.len());
        for name in dns_names {
            let dns = rcgen::string::Ia5String::try_from(name.as_str()).map_err(|source| {
                Error::Generate {
                    what: "serving certificate DNS name",
                    source,
                }
            })?;
            sans.push(SanType::DnsName(dns));
        }
        sans.extend(ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        let key = crate::PrivateKey::generate_p256()?;
        let chain = self.issue_with_sans(&key.key_pair()?, sans, ttl)?;
        Ok((chain, key))
    }

    fn issue(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<CertChain, Error> {
        let uri = rcgen::string::Ia5String::try_from(id.to_string()).map_err(|source| {
            Error::Generate {
                what: "leaf subjectAltName",
                source,
            }
        })?;
        self.issue_with_sans(public_key, vec![SanType::URI(uri)], ttl)
    }

    fn issue_with_sans(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        sans: Vec<SanType>,
        ttl: Duration,
    ) -> Result<CertChain, Error> {
        let now = OffsetDateTime::now_utc();
        if self.signing_not_after <= now {
            return Err(Error::certificate(
                CA_CERT_FILE,
                "the CA's signing certificate has expired",
            ));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = now - CLOCK_SKEW;
        // Saturate instead of overflowing: a TTL from the network or a huge cap ends at the CA.
        params.not_after = time::Duration::try_from(ttl.min(self.max_ttl))
            .ok()
            .and_then(|lifetime| now.checked_add(lifetime))
            .map_or(self.signing_not_after, |end| {
                end.min(self.signing_not_after)
            });
        let leaf = params
            .signed_by(public_key, &self.issuer)
            .map_err(|source| Error::Generate {
                what: "signing the workload certificate",
                source,
            })?;
        CertChain::new(
            leaf.der().clone(),
            self.intermediates.clone(),
            self.roots.clone(),
        )
    }

    /// Signs a throwaway leaf and verifies it against the roots, so a broken `cacerts/` fails at
    /// load rather than at the first handshake.
    fn self_check(&self) -> Result<(), Error> {
        let probe_id = SpiffeId::new(self.trust_domain.clone(), "istio-system", "ca-self-check")?;
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Generate {
                what: "probe key",
                source,
            })?;
        let chain = self.issue(&key, &probe_id, Duration::from_secs(600))?;
        let roots = tls::root_store(&chain)?;
        tls::verify_chain(chain.leaf(), chain.intermediates(), &roots, UnixTime::now())
            .map_err(|e| Error::certificate("probe leaf", e))
    }

    /// The trust domain ids are signed in, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificates workloads must trust.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as PEM: what istiod publishes as `root-cert.pem` in the `istio-ca-root-cert`
    /// ConfigMap.
    pub fn roots_pem(&self) -> String {
        pem::encode_certificates(&self.roots)
    }

    /// The certificate that signs leaves (the root itself when self-signed).
    pub fn signing_certificate(&self) -> &CertificateDer<'static> {
        &self.signing_cert
    }

    /// Whether the signing certificate is a root (no intermediates in issued chains).
    pub fn is_self_signed(&self) -> bool {
        self.intermediates.is_empty()
    }

    /// The cap on issued certificate lifetimes.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("self_signed", &self.is_self_signed())
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.roots.len())
            .field("signing_not_after", &self.signing_not_after)
            .field("max_ttl", &self.max_ttl)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// A positive 128-bit serial with its top bits set so it always encodes in 16 bytes.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn write_atomically(dir: &Path, name: &str, contents: &str, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}
