//! Delta ADS between `ama discovery` and the sidecars.
//!
//! The transport is Envoy's `envoy.service.discovery.v3.AggregatedDiscoveryService`
//! `DeltaAggregatedResources` (precompiled by envoy-types on tonic): nonces, ACK/NACK, per-resource
//! versions, `initial_resource_versions` on reconnect, `removed_resources`. The resources are ours,
//! at the level of the mesh, one type URL each ([`codec::ResourceType`]):
//!
//! | type URL (`type.googleapis.com/…`) | resource | name |
//! | --- | --- | --- |
//! | `ama.xds.v1.Workload` | [`crate::Workload`] | its uid |
//! | `ama.xds.v1.Service` | [`crate::Service`] | `namespace/hostname` |
//! | `ama.xds.v1.TrafficPolicy` | [`crate::TrafficPolicy`] | its name |
//! | `ama.xds.v1.HttpRoutes` | [`crate::HttpRoutes`] | its name |
//! | `ama.xds.v1.Authorization` | [`crate::Authorization`] | `namespace/name` |
//! | `ama.xds.v1.Node` | the proxy's own [`crate::NodeRef`] | `self` |
//!
//! **Encoding.** Each resource is a `google.protobuf.Any` whose `value` is the canonical JSON of
//! the crate's serde type, not a protobuf message. There is one definition of each type, the serde
//! struct that the file config, the validation, the control plane and the proxy already share;
//! protobuf frames only the transport. The price is a larger encoding than protobuf's, paid once
//! per changed resource, since deltas carry only what changed. A resource's version is a hash of
//! its JSON, so every replica and every restart of the control plane gives the same version to
//! the same content.
//!
//! - [`server::AdsServer`]: the server side; the control plane supplies a
//!   [`server::SnapshotSource`] (a `watch` of each proxy's [`view::Snapshot`], encoded views
//!   shared between proxies, or of its plain [`crate::ProxyResources`]) and the server computes
//!   deltas, tracks ACKs and NACKs and reports [`server::AdsServer::status`].
//! - [`view`]: encoded resources shared between proxies, encoded once per change.
//! - [`client::AdsClient`]: the proxy side; it hands each whole config to an `apply` callback and
//!   ACKs or NACKs by its answer, reconnecting with backoff.
//! - [`identity`]: on an authenticated stream, the node must be the workload its credentials
//!   name ([`PeerIdentity`] in the request's extensions), as Istio's connection identity check.
//! - [`node`]: Istio's proxy id (`sidecar~ip~pod.ns~ns.svc.cluster.local`) and node metadata.

pub mod client;
pub mod codec;
pub mod identity;
pub mod node;
mod response;
pub mod server;
pub mod transport;
pub mod view;

pub use client::{AdsClient, Backoff, ClientError, ClientStatus, Connect};
pub use codec::ResourceType;
pub use identity::PeerIdentity;
pub use node::ProxyId;
pub use server::{
    AdsServer, Nack, ProxyStatus, ServerOptions, SnapshotSource, SyncState, TypeStatus,
};
pub use view::{Encoder, Snapshot, TypeView, ViewDelta};

/// The xDS `Node` type (envoy-types), as a [`SnapshotSource`] receives it.
pub use envoy_types::pb::envoy::config::core::v3::Node;
/// The gRPC status a [`SnapshotSource`] refuses a proxy with.
pub use tonic::Status;
