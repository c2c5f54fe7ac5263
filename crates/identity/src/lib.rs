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
//!
//! # Example
//!
//! Two sidecars under one mesh root, an mTLS handshake between them, and the XFCC header the
//! inbound side adds:
//!
//! ```
//! use std::sync::Arc;
//! use identity::tls::{client_config, outbound_server_name, peer_identity, server_config};
//! use identity::{AppProtocol, CertificateAuthority, ExpectedPeer, IdentityManager};
//! use identity::{LocalCaProvider, RotationOptions, SpiffeId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = Arc::new(CertificateAuthority::generate("cluster.local")?);
//! let sidecar = |sa: &str| {
//!     let id = SpiffeId::new("cluster.local", "default", sa).unwrap();
//!     let provider = Arc::new(LocalCaProvider::new(ca.clone(), id.clone()));
//!     IdentityManager::new(id, provider, RotationOptions::default())
//! };
//! let (httpbin, sleep) = (sidecar("httpbin").await?, sidecar("sleep").await?);
//! let _rotation = httpbin.spawn_rotation(); // renews at half life from now on
//!
//! let server = server_config(&httpbin)?;
//! let client = client_config(&sleep, ExpectedPeer::exactly(httpbin.id().clone()),
//!     AppProtocol::Http2.client_alpn())?;
//! let sni = outbound_server_name(8000, "", "httpbin.default.svc.cluster.local")?;
//!
//! let (a, b) = tokio::io::duplex(16 * 1024);
//! let (inbound, outbound) = tokio::join!(
//!     tokio_rustls::TlsAcceptor::from(server).accept(a),
//!     tokio_rustls::TlsConnector::from(client).connect(sni, b),
//! );
//! let (inbound, _outbound) = (inbound?, outbound?);
//! let peer = peer_identity(inbound.get_ref().1)?;
//! assert_eq!(peer.id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
//! assert!(peer.xfcc(httpbin.id()).starts_with(
//!     "By=spiffe://cluster.local/ns/default/sa/httpbin;Hash="));
//! # Ok(())
//! # }
//! ```

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
