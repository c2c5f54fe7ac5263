//! The workload's own key and certificate signing request, made in-process (ECDSA P-256), as
//! Istio's pilot-agent and ztunnel do: the private key never leaves the process.
//!
//! Pure apart from the system random source. [`PrivateKey`] never shows its bytes in `Debug`.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{Error, SpiffeId, pem};

/// A workload private key (PKCS#8 DER).
///
/// `Debug` prints `PrivateKey([redacted])`; there is deliberately no `Display`. Cloning copies
/// the key bytes.
pub struct PrivateKey(PrivatePkcs8KeyDer<'static>);

impl Clone for PrivateKey {
    fn clone(&self) -> Self {
        PrivateKey(self.0.clone_key())
    }
}

impl PrivateKey {
    /// Generates a fresh ECDSA P-256 key. Costs one key generation (tens of microseconds).
    pub fn generate_p256() -> Result<Self, Error> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Generate {
                what: "P-256 key",
                source,
            })?;
        Ok(PrivateKey(PrivatePkcs8KeyDer::from(key.serialize_der())))
    }

    /// Reads a PKCS#8 key from PEM (`-----BEGIN PRIVATE KEY-----`). The error never quotes the
    /// input.
    pub fn from_pem(what: &str, text: &[u8]) -> Result<Self, Error> {
        match pem::private_key(what, text)? {
            PrivateKeyDer::Pkcs8(der) => Ok(PrivateKey(der)),
            _ => Err(Error::pem(what, "expected a PKCS#8 PRIVATE KEY block")),
        }
    }

    /// The key as rustls wants it. Copies the key bytes.
    pub fn to_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.0.clone_key())
    }

    /// The key as PEM text (`PRIVATE KEY`), for writing to a file readable only by its owner.
    /// Never log the result.
    pub fn to_pem(&self) -> String {
        pem::encode("PRIVATE KEY", self.0.secret_pkcs8_der())
    }

    pub(crate) fn key_pair(&self) -> Result<KeyPair, Error> {
        KeyPair::try_from(self.0.secret_pkcs8_der()).map_err(|source| Error::Generate {
            what: "loading private key",
            source,
        })
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey([redacted])")
    }
}

/// A fresh private key and the PEM CSR that asks for a certificate for it.
#[derive(Debug, Clone)]
pub struct CsrAndKey {
    /// The private key; stays in this process.
    pub key: PrivateKey,
    /// The PKCS#10 request, `-----BEGIN CERTIFICATE REQUEST-----`.
    pub csr_pem: String,
}

impl CsrAndKey {
    /// Makes a P-256 key and a CSR for `id`: empty subject, the id as the only (URI) SAN, signed
    /// by the new key. The CA ignores what the CSR asks for and stamps the caller's
    /// authenticated id anyway; the SAN is there for CAs (and people) that read it.
    ///
    /// Costs one key generation and one ECDSA signature.
    pub fn generate(id: &SpiffeId) -> Result<Self, Error> {
        let key = PrivateKey::generate_p256()?;
        let key_pair = key.key_pair()?;
        let uri = rcgen::string::Ia5String::try_from(id.to_string()).map_err(|source| {
            Error::Generate {
                what: "CSR subjectAltName",
                source,
            }
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params
            .serialize_request(&key_pair)
            .map_err(|source| Error::Generate {
                what: "CSR",
                source,
            })?;
        let csr_pem = csr.pem().map_err(|source| Error::Generate {
            what: "CSR PEM",
            source,
        })?;
        Ok(CsrAndKey { key, csr_pem })
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    use super::*;

    #[test]
    fn csr_carries_the_id_and_a_valid_signature() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/sleep").unwrap();
        let made = CsrAndKey::generate(&id).unwrap();
        assert!(
            made.csr_pem
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----\n")
        );
        let der = pem::csr(made.csr_pem.as_bytes()).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(der.as_ref()).unwrap();
        csr.verify_signature().unwrap();
        assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
        let uris: Vec<String> = csr
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|ext| match ext {
                ParsedExtension::SubjectAlternativeName(san) => Some(san),
                _ => None,
            })
            .flat_map(|san| san.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(uris, vec![id.to_string()]);
    }

    #[test]
    fn key_is_redacted_and_round_trips_through_pem() {
        let key = PrivateKey::generate_p256().unwrap();
        assert_eq!(format!("{key:?}"), "PrivateKey([redacted])");
        let made = CsrAndKey::generate(&SpiffeId::new("td", "a", "b").unwrap()).unwrap();
        assert!(format!("{made:?}").contains("PrivateKey([redacted])"));
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = PrivateKey::from_pem("key", pem.as_bytes()).unwrap();
        assert_eq!(back.0.secret_pkcs8_der(), key.0.secret_pkcs8_der());
        let err = PrivateKey::from_pem("key.pem", b"not a key").unwrap_err();
        assert_eq!(err.to_string(), "key.pem: no PRIVATE KEY block");
    }
}
