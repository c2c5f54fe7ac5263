//! The mesh model: every registry object folded into what proxies consume, once per push.
//!
//! [`Model::build`] takes all objects of all registries (deduplicated by
//! [`crate::registry::ConfigStore`]) and produces:
//!
//! - namespaces and their labels (a namespace named by an object but never declared has none);
//! - [`xds::Workload`]s, one per pod with an address ([`workloads`]): Pods with `status.podIP` or
//!   the annotation `local.ama.dev/address`, and one per replica of a Deployment, ReplicaSet,
//!   StatefulSet or DaemonSet annotated `local.ama.dev/addresses`;
//! - [`xds::Service`]s with VIPs and endpoints ([`services`], [`vip`]), and one per host of
//!   each ServiceEntry ([`service_entry`]);
//! - the MeshConfig's `outboundTrafficPolicy` ([`Model::outbound_traffic_policy`]) and the
//!   Sidecar resources that narrow what proxies see ([`sidecar`]);
//! - [`xds::HttpRoutes`], [`xds::TrafficPolicy`] and [`xds::Authorization`] from the Istio
//!   config ([`config`], [`security`]), each with its visibility (`exportTo`);
//! - the Gateways, their servers with the VirtualServices bound to them, and the credentials
//!   of the Secrets they name ([`gateway`]);
//! - the `jwksUri`s discovery fetches ([`security::JwksSource`]); the sets fetched come back in
//!   through [`Model::build_with_jwks`], so building stays pure.
//!
//! Building never fails: what cannot be used is left out with a [`Warning`] naming the object,
//! so one bad object does not stop the mesh. The model is pure data; the only state carried
//! from one build to the next is the [`vip::VipAllocator`], so a Service keeps its VIP.

pub mod config;
pub mod gateway;
pub mod policy;
pub mod routes;
mod secrets;
pub mod security;
pub mod service_entry;
pub mod services;
pub mod sidecar;
pub mod telemetry;
pub mod vip;
pub mod workloads;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use api::objects::{ConfigMap, Object};

pub use vip::VipAllocator;

/// The DNS suffix of services (`<name>.<namespace>.svc.cluster.local`).
pub const DOMAIN_SUFFIX: &str = "cluster.local";
/// Istio's root namespace: its PeerAuthentications and AuthorizationPolicies apply mesh-wide,
/// and it holds the ConfigMap `istio` with the MeshConfig.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// The cluster id of every workload (Istio's default, `Kubernetes`).
pub const CLUSTER_ID: &str = "Kubernetes";
/// Service annotation restricting the namespaces that see it (`.`, `*`, or names).
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// Labels (or a selector's `matchLabels`).
pub type Labels = BTreeMap<String, String>;

/// Something in the config that was left out or only partly used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Warning {
    /// `Kind namespace/name` of the object.
    pub object: String,
    /// What was left out, and why.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// Collects warnings during a build.
#[derive(Debug, Default)]
pub(crate) struct Warnings(BTreeSet<Warning>);

impl Warnings {
    pub(crate) fn add(&mut self, object: impl Into<String>, message: impl Into<String>) {
        self.0.insert(Warning {
            object: object.into(),
            message: message.into(),
        });
    }
}

/// Which namespaces see a Service, VirtualService or DestinationRule (Istio's `exportTo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTo {
    /// Every namespace (`*`, or unset).
    All,
    /// Only these (`.` is resolved to the object's own namespace; `~` gives none).
    Namespaces(BTreeSet<String>),
}

impl ExportTo {
    /// Reads an `exportTo` list of an object in `namespace`. Unknown entries are namespace names.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>, namespace: &str) -> ExportTo {
        let mut set = BTreeSet::new();
        let mut any = false;
        for v in values {
            any = true;
            match v.trim() {
                "*" => return ExportTo::All,
                "." => {
                    set.insert(namespace.to_string());
                }
                "~" | "" => {}
                ns => {
                    set.insert(ns.to_string());
                }
            }
        }
        if any {
            ExportTo::Namespaces(set)
        } else {
            ExportTo::All
        }
    }

    /// Whether a proxy in `namespace` sees the object.
    pub fn visible_to(&self, namespace: &str) -> bool {
        match self {
            ExportTo::All => true,
            ExportTo::Namespaces(set) => set.contains(namespace),
        }
    }
}

/// A resource with the scope it applies in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scoped<T> {
    /// Namespace of the object it came from.
    pub namespace: String,
    /// Which namespaces see it.
    pub export_to: ExportTo,
    /// For a DestinationRule with `workloadSelector`: the labels of the proxies it applies to.
    pub workload_selector: Option<Labels>,
    /// The resource.
    pub resource: T,
}

/// The mesh, as proxies need it. Lists are sorted (by uid, hostname or name) so that two
/// builds from the same objects are equal and pushes carry only real changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    /// Namespaces and their labels.
    pub namespaces: BTreeMap<String, Labels>,
    /// The SPIFFE trust domain (MeshConfig `trustDomain`).
    pub trust_domain: String,
    /// Workloads, by uid.
    pub workloads: Vec<xds::Workload>,
    /// Services, by hostname.
    pub services: Vec<Scoped<xds::Service>>,
    /// HTTP routes (VirtualServices bound to the mesh), by name.
    pub http_routes: Vec<Scoped<xds::HttpRoutes>>,
    /// Traffic policies (DestinationRules), by name.
    pub traffic_policies: Vec<Scoped<xds::TrafficPolicy>>,
    /// PeerAuthentications, AuthorizationPolicies and RequestAuthentications, by namespace and
    /// name.
    pub authorizations: Vec<xds::Authorization>,
    /// The `jwksUri`s of the RequestAuthentications, for discovery to fetch
    /// ([`crate::jwks`]).
    pub jwks_sources: Vec<security::JwksSource>,
    /// MeshConfig `outboundTrafficPolicy.mode` (a Sidecar may override it for its proxies).
    pub outbound_traffic_policy: xds::OutboundTrafficPolicy,
    /// Sidecar resources, by namespace and name.
    pub sidecars: Vec<sidecar::SidecarScope>,
    /// Gateways and the credentials of their Secrets ([`gateway`]).
    pub gateways: gateway::GatewaysOut,
    /// Telemetry API tracing and MeshConfig's tracing providers ([`telemetry`]).
    pub telemetry: telemetry::TelemetryModel,
    /// What was left out.
    pub warnings: Vec<Warning>,
}

/// The workload with this uid among `workloads`, which [`workloads::build`] sorts by uid.
fn workload_by_uid<'a>(workloads: &'a [xds::Workload], uid: &str) -> Option<&'a xds::Workload> {
    workloads
        .binary_search_by(|w| w.uid.as_str().cmp(uid))
        .ok()
        .map(|i| &workloads[i])
}

impl Model {
    /// Builds the model from every object. `vips` assigns (and remembers) the VIPs of Services
    /// that have no `clusterIP`. No `jwksUri` has been fetched: see [`Model::build_with_jwks`].
    pub fn build<'a>(
        objects: impl IntoIterator<Item = &'a Object>,
        vips: &mut VipAllocator,
    ) -> Model {
        Model::build_with_jwks(objects, vips, &security::FetchedJwks::new())
    }

    /// [`Model::build`], with the key sets fetched so far from the `jwksUri`s of
    /// RequestAuthentications (a URI not in `jwks` goes out with an empty set).
    pub fn build_with_jwks<'a>(
        objects: impl IntoIterator<Item = &'a Object>,
        vips: &mut VipAllocator,
        jwks: &security::FetchedJwks,
    ) -> Model {
        let mut warnings = Warnings::default();
        let objects: Vec<&Object> = objects.into_iter().collect();
        let mut namespaces: BTreeMap<String, Labels> = BTreeMap::new();
        let mut mesh = None;
        for o in &objects {
            match o {
                Object::Namespace(ns) => {
                    namespaces.insert(ns.metadata.name.clone(), ns.metadata.labels.clone());
                }
                Object::ConfigMap(ConfigMap {
                    metadata,
                    mesh_config: Some(m),
                    ..
                }) if metadata.namespace == ROOT_NAMESPACE => mesh = Some(m.clone()),
                // api::support reports the kinds the mesh does not read.
                Object::Other(_) => {}
                _ => {
                    let ns = &o.metadata().namespace;
                    if !ns.is_empty() && !namespaces.contains_key(ns) {
                        namespaces.insert(ns.clone(), Labels::new());
                    }
                }
            }
        }
        let inject_config = inject::InjectConfig {
            mesh: mesh.unwrap_or_default(),
            ..Default::default()
        };
        let trust_domain = inject_config.trust_domain().to_string();
        let telemetry = telemetry::build(&objects, &inject_config.mesh, &mut warnings);
        let outbound_traffic_policy = outbound_mode(inject_config.mesh.outbound_traffic_policy);
        let workloads = workloads::build(&objects, &namespaces, &inject_config, &mut warnings);
        let mut services = services::build(&objects, &workloads, vips, &mut warnings);
        service_entry::build(
            &objects,
            &workloads,
            &trust_domain,
            &mut services,
            &mut warnings,
        );
        let config = config::build(&objects, &services, jwks, &mut warnings);
        let known: Vec<&str> = services
            .iter()
            .map(|s| s.resource.hostname.as_str())
            .collect();
        let mut gateways = gateway::build(&objects, &known, &workloads, &mut warnings);
        gateways.client_credentials =
            policy::gateway_credentials(&config.traffic_policies, &secrets::Secrets::new(&objects));
        services::plaintext_where_mtls_is_disabled(
            &mut services,
            &workloads,
            &config.authorizations,
        );
        Model {
            namespaces,
            trust_domain,
            workloads,
            services,
            http_routes: config.http_routes,
            traffic_policies: config.traffic_policies,
            authorizations: config.authorizations,
            jwks_sources: config.jwks_sources,
            outbound_traffic_policy,
            sidecars: sidecar::build(&objects),
            gateways,
            telemetry,
            warnings: warnings.0.into_iter().collect(),
        }
    }

    /// The workload with this uid.
    pub fn workload(&self, uid: &str) -> Option<&xds::Workload> {
        workload_by_uid(&self.workloads, uid)
    }

    /// The service with this hostname.
    pub fn service(&self, hostname: &str) -> Option<&xds::Service> {
        self.services
            .iter()
            .map(|s| &s.resource)
            .find(|s| s.hostname == hostname)
    }
}

/// Istio's `outboundTrafficPolicy.mode` as the proxies take it (ALLOW_ANY when unset).
pub fn outbound_mode(
    mode: Option<api::networking::sidecar::OutboundMode>,
) -> xds::OutboundTrafficPolicy {
    use api::networking::sidecar::OutboundMode;
    match mode {
        Some(OutboundMode::RegistryOnly) => xds::OutboundTrafficPolicy::RegistryOnly,
        Some(OutboundMode::AllowAny) | None => xds::OutboundTrafficPolicy::AllowAny,
    }
}

/// `<name>.<namespace>.svc.cluster.local`.
pub fn service_hostname(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{DOMAIN_SUFFIX}")
}

/// Whether `labels` carry every label of `selector` (an empty selector selects all).
pub fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod credential_tests;
#[cfg(test)]
mod egress_tests;
#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod rule_tests;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod task_tests;
#[cfg(test)]
mod telemetry_tests;
#[cfg(test)]
mod tests;
