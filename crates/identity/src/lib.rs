//! Workload identity for the mesh: who a sidecar is, how it proves it, and how it checks its peers.
//!
//! Every workload is named by a SPIFFE id, `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`
//! ([`SpiffeId`]), carried as the only URI SAN of a short-lived X.509 certificate signed by the
//! mesh CA. This crate holds the pieces both sides of the mesh share:
//!
//! - [`spiffe`]: the id type, its parser, and reading the id out of a DER certificate;
//! - [`ca`]: the mesh [`CertificateAuthority`] (self-signed root or Istio's plug-in `cacerts/`
//!   layout) and CSR signing that always stamps the *caller's* id, never the one asked for;
//! - [`csr`]: a P-256 key and a CSR made in-process by the workload;
//! - [`manager`]: the [`IdentityManager`] that keeps the current [`WorkloadCertificate`] and rotates
//!   it at half life, fetching from any [`CertificateProvider`] (the local CA now, the control
//!   plane's `IstioCertificateService` later);
//! - [`tls`]: rustls 0.23 client and server configs (TLS 1.3, aws-lc-rs) that present the current
//!   certificate per handshake and verify peers by SPIFFE id, Istio's ALPN values and SNI, and the
//!   XFCC header text.
//!
//! The only I/O here is reading and writing a CA directory ([`CertificateAuthority::load`],
//! [`CertificateAuthority::persist`]) and the timers of the rotation task. Private keys never
//! appear in `Debug` output or logs.
//!
//! One crypto provider only: aws-lc-rs, named explicitly in every config this crate builds, so
//! the process-wide default provider is never consulted.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ca;
pub mod csr;
mod error;
pub mod manager;
mod pem;
pub mod spiffe;
pub mod tls;

pub use ca::{CertChain, CertificateAuthority};
pub use csr::{CsrAndKey, PrivateKey};
pub use error::Error;
pub use manager::{
    CertificateProvider, IdentityManager, LocalCaProvider, RotationOptions, WorkloadCertificate,
};
pub use spiffe::{SpiffeId, SpiffeIdError, SpiffeIdErrorKind};
pub use tls::{AppProtocol, ExpectedPeer, PeerIdentity};
