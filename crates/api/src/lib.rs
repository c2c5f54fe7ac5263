//! Istio-compatible configuration for Ama: the names, types and parsers that make Ama read the
//! same YAML as Istio.
//!
//! - [`annotation`] and [`label`]: the pod annotations and labels of Istio's user contract.
//! - [`mesh`]: `MeshConfig` and `ProxyConfig` (the fields Ama acts on, the rest kept verbatim).
//! - [`values`]: Istio's Helm values for the injector, with the default profile's defaults.
//!   Where Istio names its own image (`docker.io/istio/proxyv2`), Ama ships `docker.io/ama/proxy`
//!   tagged with its version; everything else keeps Istio's default.
//! - [`inject_config`]: one file with both (an injector ConfigMap or an IstioOperator).
//! - [`overrides`]: a pod's sidecar annotations, parsed and checked.
//! - [`validate`]: the value languages: port and CIDR lists, quantities, booleans, modes.
//! - [`objects`]: typed, validated objects from a YAML stream ([`objects::parse_stream`]): the
//!   Istio config of [`networking`] and [`security`], and the Kubernetes objects of [`k8s`] the
//!   registries read. [`check`] holds the checks they share, [`Duration`] Istio's durations.
//! - [`kinds`]: the kinds a stream may hold, and the nearest one to a typo.
//! - [`support`]: what Ama implements of the config it accepts; a warning finding for the rest.
//! - [`telemetry`]: the tracing part of the Telemetry API and MeshConfig's tracing providers,
//!   resolved for a workload with Istio's precedence.
//! - [`analysis`]: `istioctl analyze`'s cross-reference checks and message codes.
//! - [`yaml`]: splitting a YAML stream into documents and writing objects back, shared with
//!   `kube-inject`.
//!
//! This crate is pure: it parses text it is given and never reads files or the network.
//! Errors name the field and quote the value (`global.proxy.excludeInboundPorts: "abc" is not a
//! port`); callers add the file and document.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod analysis;
pub mod annotation;
pub mod check;
mod duration;
mod error;
pub mod inject_config;
pub mod k8s;
pub mod kinds;
pub mod label;
pub mod mesh;
pub mod networking;
pub mod objects;
pub mod overrides;
pub mod security;
pub mod support;
pub mod telemetry;
pub mod validate;
pub mod values;
pub mod yaml;

pub use duration::Duration;
pub use error::ConfigError;
pub use inject_config::InjectConfigFile;
pub use mesh::{MeshConfig, ProxyConfig};
pub use overrides::{MetadataField, OverrideError, SidecarOverrides};
pub use validate::{CidrList, InterceptionMode, PortList};
pub use values::Values;
