//! The crate's error type: each variant says which object failed and why, for a person to read.

use std::path::PathBuf;

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Everything that can go wrong while naming, issuing, loading or checking a workload identity.
///
/// Messages name the object (file, certificate role, id) and the reason; they never contain key
/// material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A SPIFFE id did not parse or validate.
    #[error(transparent)]
    SpiffeId(#[from] SpiffeIdError),

    /// PEM text held no usable object of the expected kind.
    #[error("{what}: {reason}")]
    Pem {
        /// What was being read, e.g. `"CSR"` or `"cacerts/root-cert.pem"`.
        what: String,
        /// Why it failed.
        reason: String,
    },

    /// A DER certificate (or CSR) could not be parsed or is unfit for its role.
    #[error("{what}: {reason}")]
    Certificate {
        /// Which certificate, e.g. `"leaf"` or `"ca-cert.pem"`.
        what: String,
        /// Why it was refused.
        reason: String,
    },

    /// The CSR's self-signature does not verify, so the requester does not hold the key.
    #[error("CSR signature does not verify: the request was not signed by its own key")]
    CsrSignature,

    /// A certificate carries no `spiffe://` URI SAN.
    #[error("certificate has no spiffe:// URI SAN")]
    NoSpiffeId,

    /// A certificate carries more than one `spiffe://` URI SAN (an X.509-SVID has exactly one).
    #[error("certificate has {0} spiffe:// URI SANs; exactly one is allowed")]
    MultipleSpiffeIds(usize),

    /// The CA was asked to sign for an id outside its trust domain.
    #[error("CA for trust domain {ca:?} cannot sign {id}: other trust domain")]
    ForeignTrustDomain {
        /// The CA's trust domain.
        ca: String,
        /// The id that was asked for.
        id: Box<SpiffeId>,
    },

    /// A certificate TTL of zero was asked for.
    #[error("certificate TTL must be greater than zero")]
    ZeroTtl,

    /// A signed certificate names a different workload than the one that asked for it.
    #[error("issued certificate is for {presented}, expected {expected}")]
    WrongIdentity {
        /// The id we asked for.
        expected: Box<SpiffeId>,
        /// The id in the certificate.
        presented: Box<SpiffeId>,
    },

    /// A TLS peer presented a valid mesh certificate for an id it was not expected to have.
    #[error("peer is {presented}, expected {expected}")]
    UnexpectedPeer {
        /// The accepted ids, comma separated.
        expected: String,
        /// The id the peer presented.
        presented: Box<SpiffeId>,
    },

    /// The TLS connection has no verified peer certificate (handshake not done, or no client auth).
    #[error("TLS peer presented no certificate")]
    NoPeerCertificate,

    /// Key or certificate generation failed in rcgen.
    #[error("{what}: {source}")]
    Generate {
        /// What was being generated or signed.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },

    /// rustls refused a key, chain or configuration.
    #[error("{what}: {source}")]
    Tls {
        /// What was being built or checked.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rustls::Error,
    },

    /// Reading or writing a file of a CA directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A certificate provider (the local CA or the control plane) failed to return a chain.
    #[error("certificate provider: {0}")]
    Provider(String),
}

impl Error {
    pub(crate) fn certificate(what: impl Into<String>, reason: impl ToString) -> Self {
        Error::Certificate {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn pem(what: impl Into<String>, reason: impl ToString) -> Self {
        Error::Pem {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
