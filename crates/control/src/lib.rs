//! Ama's control plane: what `ama discovery` runs (Istio's istiod, pilot-discovery part).
//!
//! Config flows one way through the modules, each named for its step:
//!
//! ```text
//! registry::file ─┐                       (later: registry::kube, kube-rs watchers)
//!                 ├─► registry::ConfigStore ─► push (debounce 100 ms quiet / 1 s max)
//! ama apply -f  ──┘                                │
//!                                                  ▼
//!                       model::Model::build  (objects → namespaces, workloads, services,
//!                                             routes, policies, authorizations)
//!                                                  │
//!                                                  ▼
//!                       translate::shared_resources (per namespace + selector DRs: what
//!                                                  │  it may see), node_ref (per proxy: `self`)
//!                                                  ▼
//!                       encoded views, shared (xds::ads::view) ─► per-proxy `watch` channels
//!                                                  ─► xds Delta ADS server ─► proxies
//! ```
//!
//! - [`registry`]: the objects of every source, by source ([`registry::ConfigStore`]); the file
//!   registry ([`registry::file`]) watches a directory of the YAML a user would `kubectl apply`.
//! - [`model`]: the mesh as the proxies need it, built from all objects at once.
//! - [`translate`]: the resources one proxy receives.
//! - [`push`]: debounced recomputation and publication, with push-time metrics; it is the
//!   [`xds::ads::SnapshotSource`] the ADS server reads.
//! - [`discovery`]: the server itself: Delta ADS on gRPC, `/ready`, `/debug/syncz` and `/metrics`
//!   on the monitoring port.
//! - [`jwks`]: the key sets of RequestAuthentication `jwksUri`s, fetched, refreshed and handed
//!   to the model at each push (which they trigger when they change).
//!
//! The allocator's settings for thousands of connections and the heap trim after bursts are the
//! `memory` crate's, shared with the sidecar.
//!
//! Security (Istio's istiod CA and injector), started by [`discovery`] through [`security`]:
//!
//! ```text
//!  bearer token ─► tokens::TokenAuthenticator ─► Caller (ns, sa) ─► ca_server ─► signed chain
//!                  (tokens::FileTokens | token_review::KubeTokens)      (identity's CA)
//!  15012 TLS (tls): secure_grpc = ADS (token required) + IstioCertificateService
//!  15017 TLS (tls): webhook_server /inject ─► inject::webhook::review
//! ```
//!
//! - [`tokens`]: bearer tokens, the authenticator trait, file-mode per-workload tokens;
//! - [`token_review`]: Kubernetes TokenReview;
//! - [`ca_server`]: the mesh root and `IstioCertificateService/CreateCertificate`;
//!   [`ca_secret`]: the self-signed root kept in `istio-ca-secret` (Kubernetes mode);
//! - [`tls`]: the istiod serving certificate and the TLS accept loop;
//! - [`secure_grpc`]: the 15012 server; [`webhook_server`]: the 15017 server.
//!
//! Threads: everything runs on the caller's tokio runtime. Model builds run on the blocking pool
//! (they are CPU work, proportional to the mesh); no lock is held across an `.await`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ca_secret;
pub mod ca_server;
pub mod discovery;
pub mod jwks;
pub mod mesh_view;
pub mod model;
pub mod push;
pub mod registry;
pub mod secure_grpc;
pub mod security;
pub mod tls;
pub mod token_review;
pub mod tokens;
pub mod translate;
pub mod webhook_server;

pub use discovery::{Discovery, DiscoveryError, DiscoveryOptions};
pub use model::{Model, Warning};
pub use push::{PushOptions, PushStats, Pusher};
pub use registry::ConfigStore;
pub use registry::file::FileRegistry;
pub use security::{Authentication, Security, SecurityOptions};
pub use translate::{ProxyKey, SharedResources, ViewKey, proxy_resources};
