//! How our resources travel in Delta ADS: type URLs, names, versions, and the `Any` framing.
//!
//! Each resource is a `google.protobuf.Any` whose `type_url` names the type
//! (`type.googleapis.com/ama.xds.v1.Workload`, …) and whose `value` is the canonical JSON of the
//! crate's serde type: the bytes `serde_json::to_vec` gives for it, which are stable because the
//! types use ordered maps and declared field order. A resource's version is a hash of those bytes,
//! so it is the same on every control-plane replica and across restarts, which is what lets a
//! reconnecting proxy's `initial_resource_versions` be compared with a fresh server's state.

use std::fmt;

use envoy_types::pb::envoy::service::discovery::v3::Resource;
use envoy_types::pb::google::protobuf::Any;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::resources::{NodeRef, OutboundTrafficPolicy, ProxyResources};

/// Prefix of every type URL we serve.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/ama.xds.v1.";

/// The name of the single [`ResourceType::Node`] resource.
pub const NODE_RESOURCE_NAME: &str = "self";

/// One kind of resource carried over ADS.
///
/// The order of [`ResourceType::ALL`] is the order a server pushes them in after a change, so a
/// resource arrives after those it refers to (the proxy's own [`NodeRef`] names a workload uid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// [`crate::Workload`], named by its uid.
    Workload,
    /// [`crate::Service`], named `namespace/hostname`.
    Service,
    /// [`crate::TrafficPolicy`], named by its name (`default/httpbin`).
    TrafficPolicy,
    /// [`crate::HttpRoutes`], named by its name (`default/reviews`).
    HttpRoutes,
    /// [`crate::Authorization`], named `namespace/name`.
    Authorization,
    /// [`crate::GatewayListener`] (gateway proxies only), named by its port.
    GatewayListener,
    /// The proxy's own [`NodeRef`], one resource named [`NODE_RESOURCE_NAME`].
    Node,
}

impl ResourceType {
    /// Every type, in push order.
    pub const ALL: [ResourceType; 7] = [
        ResourceType::Workload,
        ResourceType::Service,
        ResourceType::TrafficPolicy,
        ResourceType::HttpRoutes,
        ResourceType::Authorization,
        ResourceType::GatewayListener,
        ResourceType::Node,
    ];

    /// The short name (`Workload`), as in the type URL and `proxy-status`.
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Workload => "Workload",
            ResourceType::Service => "Service",
            ResourceType::TrafficPolicy => "TrafficPolicy",
            ResourceType::HttpRoutes => "HttpRoutes",
            ResourceType::Authorization => "Authorization",
            ResourceType::GatewayListener => "GatewayListener",
            ResourceType::Node => "Node",
        }
    }

    /// The type URL (`type.googleapis.com/ama.xds.v1.Workload`).
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Workload => "type.googleapis.com/ama.xds.v1.Workload",
            ResourceType::Service => "type.googleapis.com/ama.xds.v1.Service",
            ResourceType::TrafficPolicy => "type.googleapis.com/ama.xds.v1.TrafficPolicy",
            ResourceType::HttpRoutes => "type.googleapis.com/ama.xds.v1.HttpRoutes",
            ResourceType::Authorization => "type.googleapis.com/ama.xds.v1.Authorization",
            ResourceType::GatewayListener => "type.googleapis.com/ama.xds.v1.GatewayListener",
            ResourceType::Node => "type.googleapis.com/ama.xds.v1.Node",
        }
    }

    /// The type a URL names, if it is one of ours.
    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a received resource could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The response names a type we do not know.
    #[error("unknown resource type {0:?}")]
    UnknownType(String),
    /// A resource has no body.
    #[error("{ty} {name:?}: no resource body")]
    Empty {
        /// The type.
        ty: ResourceType,
        /// The resource name.
        name: String,
    },
    /// The body's type URL is not the response's.
    #[error("{ty} {name:?}: body has type {found:?}")]
    WrongType {
        /// The response's type.
        ty: ResourceType,
        /// The resource name.
        name: String,
        /// The body's type URL.
        found: String,
    },
    /// The body is not JSON of the type.
    #[error("{ty} {name:?}: {message}")]
    Json {
        /// The type.
        ty: ResourceType,
        /// The resource name.
        name: String,
        /// serde_json's message.
        message: String,
    },
    /// The resource's own key differs from its name.
    #[error("{ty} {name:?}: body is named {key:?}")]
    NameMismatch {
        /// The type.
        ty: ResourceType,
        /// The name in the response.
        name: String,
        /// The name the body implies.
        key: String,
    },
}

/// One resource of any type, decoded.
// Decoded one at a time and moved straight into a bundle: boxing the larger variants would only
// add an allocation per resource.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AnyResource {
    /// A workload.
    Workload(crate::Workload),
    /// A service.
    Service(crate::Service),
    /// A traffic policy.
    TrafficPolicy(crate::TrafficPolicy),
    /// HTTP routes.
    HttpRoutes(crate::HttpRoutes),
    /// An authorization.
    Authorization(crate::Authorization),
    /// A gateway listener.
    GatewayListener(crate::GatewayListener),
    /// The proxy's own identity.
    Node(NodeRef),
}

impl AnyResource {
    /// The resource's type.
    pub fn resource_type(&self) -> ResourceType {
        match self {
            AnyResource::Workload(_) => ResourceType::Workload,
            AnyResource::Service(_) => ResourceType::Service,
            AnyResource::TrafficPolicy(_) => ResourceType::TrafficPolicy,
            AnyResource::HttpRoutes(_) => ResourceType::HttpRoutes,
            AnyResource::Authorization(_) => ResourceType::Authorization,
            AnyResource::GatewayListener(_) => ResourceType::GatewayListener,
            AnyResource::Node(_) => ResourceType::Node,
        }
    }

    /// The resource's name on the wire (see [`ResourceType`] for each type's key).
    pub fn name(&self) -> String {
        match self {
            AnyResource::Workload(w) => w.uid.clone(),
            AnyResource::Service(s) => format!("{}/{}", s.namespace, s.hostname),
            AnyResource::TrafficPolicy(p) => p.name.clone(),
            AnyResource::HttpRoutes(r) => r.name.clone(),
            AnyResource::Authorization(a) => format!("{}/{}", a.namespace, a.name),
            AnyResource::GatewayListener(l) => l.port.to_string(),
            AnyResource::Node(_) => NODE_RESOURCE_NAME.to_string(),
        }
    }

    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            AnyResource::Workload(r) => serde_json::to_vec(r),
            AnyResource::Service(r) => serde_json::to_vec(r),
            AnyResource::TrafficPolicy(r) => serde_json::to_vec(r),
            AnyResource::HttpRoutes(r) => serde_json::to_vec(r),
            AnyResource::Authorization(r) => serde_json::to_vec(r),
            AnyResource::GatewayListener(r) => serde_json::to_vec(r),
            AnyResource::Node(r) => serde_json::to_vec(r),
        }
    }

    /// Encodes the resource: its name, version (hash of the JSON) and `Any` body.
    pub fn encode(&self) -> Result<EncodedResource, serde_json::Error> {
        let ty = self.resource_type();
        let value = self.to_json()?;
        Ok(EncodedResource {
            version: version_of(&value),
            any: Any {
                type_url: ty.type_url().to_string(),
                value,
            },
        })
    }

    /// Decodes a received resource of type `ty` named `name`; the body's own key must be `name`.
    pub fn decode(ty: ResourceType, name: &str, any: &Any) -> Result<AnyResource, DecodeError> {
        if any.type_url != ty.type_url() {
            return Err(DecodeError::WrongType {
                ty,
                name: name.to_string(),
                found: any.type_url.clone(),
            });
        }
        fn json<T: DeserializeOwned>(
            ty: ResourceType,
            name: &str,
            v: &[u8],
        ) -> Result<T, DecodeError> {
            serde_json::from_slice(v).map_err(|e| DecodeError::Json {
                ty,
                name: name.to_string(),
                message: e.to_string(),
            })
        }
        let v = &any.value;
        let res = match ty {
            ResourceType::Workload => AnyResource::Workload(json(ty, name, v)?),
            ResourceType::Service => AnyResource::Service(json(ty, name, v)?),
            ResourceType::TrafficPolicy => AnyResource::TrafficPolicy(json(ty, name, v)?),
            ResourceType::HttpRoutes => AnyResource::HttpRoutes(json(ty, name, v)?),
            ResourceType::Authorization => AnyResource::Authorization(json(ty, name, v)?),
            ResourceType::GatewayListener => AnyResource::GatewayListener(json(ty, name, v)?),
            ResourceType::Node => AnyResource::Node(json(ty, name, v)?),
        };
        let key = res.name();
        if key != name {
            return Err(DecodeError::NameMismatch {
                ty,
                name: name.to_string(),
                key,
            });
        }
        Ok(res)
    }
}

/// A resource ready to send: its version and `Any` body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EncodedResource {
    /// Hash of the JSON body.
    pub version: String,
    /// The body.
    pub any: Any,
}

impl EncodedResource {
    /// The Delta xDS `Resource` named `name`.
    pub fn to_resource(&self, name: &str) -> Resource {
        Resource {
            name: name.to_string(),
            version: self.version.clone(),
            resource: Some(self.any.clone()),
            ..Resource::default()
        }
    }
}

/// The version of a body: the first 8 bytes of its SHA-256, in hex.
pub fn version_of(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// The version of a whole set of resources (`name version` pairs in name order), for
/// `system_version_info` and `proxy-status`: equal sets have equal versions.
pub fn set_version<N: AsRef<str>, V: AsRef<str>>(
    entries: impl IntoIterator<Item = (N, V)>,
) -> String {
    let mut h = Sha256::new();
    for (name, version) in entries {
        h.update(name.as_ref().as_bytes());
        h.update([0]);
        h.update(version.as_ref().as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Every resource of `res` as an [`AnyResource`], in [`ResourceType::ALL`] order.
pub fn split(res: &ProxyResources) -> Vec<AnyResource> {
    let mut out = Vec::with_capacity(
        res.workloads.len()
            + res.services.len()
            + res.traffic_policies.len()
            + res.http_routes.len()
            + res.authorizations.len()
            + res.gateway_listeners.len()
            + 1,
    );
    out.extend(res.workloads.iter().cloned().map(AnyResource::Workload));
    out.extend(res.services.iter().cloned().map(AnyResource::Service));
    out.extend(
        res.traffic_policies
            .iter()
            .cloned()
            .map(AnyResource::TrafficPolicy),
    );
    out.extend(res.http_routes.iter().cloned().map(AnyResource::HttpRoutes));
    out.extend(
        res.authorizations
            .iter()
            .cloned()
            .map(AnyResource::Authorization),
    );
    out.extend(
        res.gateway_listeners
            .iter()
            .cloned()
            .map(AnyResource::GatewayListener),
    );
    // The outbound traffic policy travels in the proxy's own Node resource.
    let policy = res.outbound_policy();
    let node = match &res.node {
        Some(n) => Some(NodeRef {
            outbound_traffic_policy: policy,
            ..n.clone()
        }),
        None if policy != OutboundTrafficPolicy::default() => Some(NodeRef {
            outbound_traffic_policy: policy,
            ..NodeRef::default()
        }),
        None => None,
    };
    out.extend(node.map(AnyResource::Node));
    out
}

/// Rebuilds a [`ProxyResources`] from decoded resources; each type's list is in name order.
pub fn assemble<'a>(resources: impl IntoIterator<Item = &'a AnyResource>) -> ProxyResources {
    let mut out = ProxyResources::default();
    for r in resources {
        match r {
            AnyResource::Workload(w) => out.workloads.push(w.clone()),
            AnyResource::Service(s) => out.services.push(s.clone()),
            AnyResource::TrafficPolicy(p) => out.traffic_policies.push(p.clone()),
            AnyResource::HttpRoutes(h) => out.http_routes.push(h.clone()),
            AnyResource::Authorization(a) => out.authorizations.push(a.clone()),
            AnyResource::GatewayListener(l) => out.gateway_listeners.push(l.clone()),
            AnyResource::Node(n) => {
                out.outbound_traffic_policy = n.outbound_traffic_policy;
                out.node = Some(n.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ads::view::Snapshot;

    fn sample() -> ProxyResources {
        ProxyResources::parse(
            r#"
self: {uid: w1}
workloads:
- {uid: w1, name: a, namespace: default, addresses: [10.0.0.1]}
services:
- {hostname: a.default.svc.cluster.local, name: a, namespace: default, ports: [{port: 80}]}
httpRoutes:
- {name: default/a, hosts: [a.default.svc.cluster.local]}
trafficPolicies:
- {name: default/a, host: a.default.svc.cluster.local}
authorizations:
- {name: allow, namespace: default, policy: {}}
gatewayListeners:
- port: 8080
  servers:
  - {gateway: istio-system/gw, protocol: HTTP, hosts: ["*"], routes: [{name: default/a, hosts: ["*"]}]}
"#,
        )
        .expect("valid")
    }

    #[test]
    fn outbound_traffic_policy_travels_in_the_node() {
        let mut res = sample();
        res.outbound_traffic_policy = OutboundTrafficPolicy::RegistryOnly;
        let back = assemble(&split(&res));
        assert_eq!(back.outbound_policy(), OutboundTrafficPolicy::RegistryOnly);
        assert_eq!(
            back.outbound_traffic_policy,
            OutboundTrafficPolicy::RegistryOnly
        );
        res.node = None;
        let back = assemble(&split(&res));
        assert_eq!(back.outbound_policy(), OutboundTrafficPolicy::RegistryOnly);
        assert_eq!(
            assemble(&split(&sample())).outbound_policy(),
            OutboundTrafficPolicy::AllowAny
        );
    }

    #[test]
    fn tracing_travels_in_the_node() {
        let mut res = sample();
        let tracing = crate::Tracing {
            collector: Some(crate::TracingCollector {
                protocol: crate::CollectorProtocol::OtlpHttp,
                host: "otel.observability.svc.cluster.local".into(),
                port: 4318,
                path: Some("/v1/traces".into()),
            }),
            sampling_basis_points: crate::Tracing::basis_points(12.34),
            custom_tags: vec![crate::TracingTag {
                tag: "t".into(),
                literal: Some("v".into()),
                environment: None,
                header: None,
                default_value: String::new(),
            }],
            max_path_tag_length: Some(64),
            disabled: false,
        };
        res.node.as_mut().expect("a node").tracing = Some(tracing.clone());
        let node = split(&res)
            .into_iter()
            .find(|r| r.resource_type() == ResourceType::Node)
            .expect("the node");
        let any = node.encode().expect("encodes").any;
        let back = AnyResource::decode(ResourceType::Node, &node.name(), &any).expect("decodes");
        let back = assemble([&back]);
        assert_eq!(back.node.and_then(|n| n.tracing), Some(tracing));
        assert_eq!(crate::Tracing::basis_points(12.34), 1234);
    }

    #[test]
    fn names_and_type_urls() {
        let names: Vec<(ResourceType, String)> = split(&sample())
            .iter()
            .map(|r| (r.resource_type(), r.name()))
            .collect();
        assert_eq!(
            names,
            vec![
                (ResourceType::Workload, "w1".to_string()),
                (
                    ResourceType::Service,
                    "default/a.default.svc.cluster.local".to_string()
                ),
                (ResourceType::TrafficPolicy, "default/a".to_string()),
                (ResourceType::HttpRoutes, "default/a".to_string()),
                (ResourceType::Authorization, "default/allow".to_string()),
                (ResourceType::GatewayListener, "8080".to_string()),
                (ResourceType::Node, "self".to_string()),
            ]
        );
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
            assert_eq!(t.type_url(), format!("{TYPE_URL_PREFIX}{t}"));
        }
        assert_eq!(ResourceType::from_type_url("type.googleapis.com/x"), None);
    }

    #[test]
    fn round_trip_and_stable_versions() {
        let res = sample();
        let (a, problems) = Snapshot::encode(&res);
        assert!(problems.is_empty(), "{problems:?}");
        let (b, _) = Snapshot::encode(&res);
        let mut decoded = Vec::new();
        for t in ResourceType::ALL {
            assert_eq!(a.get(t).version(), b.get(t).version());
            assert_eq!(a.get(t).len(), 1);
            for (name, enc) in a.get(t).iter() {
                decoded.push(AnyResource::decode(t, name, &enc.any).expect("decodes"));
            }
        }
        assert_eq!(assemble(&decoded), res);
    }

    #[test]
    fn decode_errors_name_the_resource() {
        let any = Any {
            type_url: ResourceType::Workload.type_url().to_string(),
            value: b"{\"uid\": 3}".to_vec(),
        };
        let err = AnyResource::decode(ResourceType::Workload, "w1", &any).expect_err("bad");
        assert!(
            err.to_string().starts_with("Workload \"w1\": invalid type"),
            "{err}"
        );
        let err = AnyResource::decode(ResourceType::Service, "w1", &any).expect_err("bad");
        assert!(err.to_string().contains("body has type"), "{err}");
        let (snap, _) = Snapshot::encode(&sample());
        let w = snap.get(ResourceType::Workload).get("w1").expect("w1");
        let err = AnyResource::decode(ResourceType::Workload, "w2", &w.any).expect_err("bad");
        assert_eq!(err.to_string(), "Workload \"w2\": body is named \"w1\"");
    }

    #[test]
    fn duplicates_are_reported() {
        let mut res = sample();
        res.http_routes.push(res.http_routes[0].clone());
        let (snap, problems) = Snapshot::encode(&res);
        assert_eq!(snap.get(ResourceType::HttpRoutes).len(), 1);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
