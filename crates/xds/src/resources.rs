//! `ProxyResources`: the bundle of resources one proxy consumes, and how it is read and checked.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::authorization::Authorization;
use crate::gateway::GatewayListener;
use crate::policy::TrafficPolicy;
use crate::routes::HttpRoutes;
use crate::service::Service;
use crate::validate::{ValidationErrors, check_dns_name};
use crate::workload::Workload;

/// Which workload the proxy is. Any field may be empty; the proxy fills the gaps from its
/// environment (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`) like Istio's agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRef {
    /// The workload's uid in `workloads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// Over ADS, the proxy's [`ProxyResources::outbound_traffic_policy`] (it depends on the
    /// proxy, as its Sidecar does, and the Node resource is the proxy's own). In a file, set
    /// the bundle's field instead; when both are set, `REGISTRY_ONLY` wins.
    #[serde(default, skip_serializing_if = "OutboundTrafficPolicy::is_allow_any")]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// The proxy's tracing from the Telemetry API (none: its ProxyConfig's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::Tracing>,
    /// The proxy's access logs from the Telemetry API (none: MeshConfig's `accessLogFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_logging: Option<crate::AccessLogging>,
    /// The proxy's metric overrides from the Telemetry API (none: every standard metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<crate::MetricsConfig>,
}

/// Everything a proxy needs: its own identity, and the workloads, services, routes, policies and
/// authorizations of the mesh that concern it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyResources {
    /// The proxy's own workload (`self:`, also accepted as `node:`).
    #[serde(
        default,
        rename = "self",
        alias = "node",
        skip_serializing_if = "Option::is_none"
    )]
    pub node: Option<NodeRef>,
    /// Workloads.
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// Services.
    #[serde(default)]
    pub services: Vec<Service>,
    /// HTTP routes.
    #[serde(default)]
    pub http_routes: Vec<HttpRoutes>,
    /// Traffic policies.
    #[serde(default)]
    pub traffic_policies: Vec<TrafficPolicy>,
    /// Authorizations.
    #[serde(default)]
    pub authorizations: Vec<Authorization>,
    /// What the proxy does with outbound traffic no service claims (MeshConfig or Sidecar
    /// `outboundTrafficPolicy.mode`).
    #[serde(default, skip_serializing_if = "OutboundTrafficPolicy::is_allow_any")]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Gateway proxies only: what to serve on each port (Gateways selecting the pod, with
    /// their bound VirtualServices and server credentials).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_listeners: Vec<GatewayListener>,
}

/// Outbound traffic to a destination no service claims (Istio's `outboundTrafficPolicy.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    /// Passed through to where it was going (`PassthroughCluster`), Istio's default.
    #[default]
    AllowAny,
    /// Blocked (`BlackHoleCluster`): HTTP gets 502 from the `block_all` route, TCP is closed.
    RegistryOnly,
}

impl OutboundTrafficPolicy {
    fn is_allow_any(&self) -> bool {
        *self == OutboundTrafficPolicy::AllowAny
    }
}

/// Why a resource file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid YAML/JSON of these types.
    #[error("{path}: {message}")]
    Parse {
        /// The file (or `-` for text without one).
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The resources parse but break a rule.
    #[error("{path}: {errors}")]
    Invalid {
        /// The file (or `-`).
        path: PathBuf,
        /// Every problem, each with its field path.
        errors: ValidationErrors,
    },
}

impl ProxyResources {
    /// The outbound traffic policy in force: `REGISTRY_ONLY` when the bundle or its `self`
    /// says so (the control plane sends it in `self`).
    pub fn outbound_policy(&self) -> OutboundTrafficPolicy {
        match &self.node {
            Some(n) if n.outbound_traffic_policy == OutboundTrafficPolicy::RegistryOnly => {
                OutboundTrafficPolicy::RegistryOnly
            }
            _ => self.outbound_traffic_policy,
        }
    }

    /// Reads and checks a resource file (YAML, or JSON when it starts with `{`).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_named(&text, path)
    }

    /// Parses and checks resource text.
    pub fn parse(text: &str) -> Result<Self, LoadError> {
        Self::parse_named(text, Path::new("-"))
    }

    fn parse_named(text: &str, path: &Path) -> Result<Self, LoadError> {
        let parsed: Result<Self, String> = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else if text.trim().is_empty() {
            Ok(Self::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| e.to_string())
        };
        let res = parsed.map_err(|message| LoadError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        res.validate().map_err(|errors| LoadError::Invalid {
            path: path.to_path_buf(),
            errors,
        })?;
        Ok(res)
    }

    /// Checks every resource and the rules between them (unique uids, hostnames and VIP ports).
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let mut uids = BTreeSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let path = format!("workloads[{i}]");
            w.validate(&path, &mut errs);
            if !uids.insert(w.uid.as_str()) {
                errs.push(format!("{path}.uid"), format!("duplicate uid {:?}", w.uid));
            }
        }
        let mut hosts = BTreeSet::new();
        let mut vip_ports: BTreeMap<(IpAddr, u16), &str> = BTreeMap::new();
        for (i, s) in self.services.iter().enumerate() {
            let path = format!("services[{i}]");
            s.validate(&path, &mut errs);
            if !hosts.insert(s.hostname.as_str()) {
                errs.push(
                    format!("{path}.hostname"),
                    format!("duplicate hostname {:?}", s.hostname),
                );
            }
            for (j, vip) in s.vips.iter().enumerate() {
                for p in &s.ports {
                    if let Some(other) = vip_ports.insert((*vip, p.port), &s.hostname) {
                        errs.push(
                            format!("services[{i}].vips[{j}]"),
                            format!("{vip}:{} is already used by {other}", p.port),
                        );
                    }
                }
            }
        }
        for (i, r) in self.http_routes.iter().enumerate() {
            r.validate(&format!("httpRoutes[{i}]"), &mut errs);
        }
        for (i, p) in self.traffic_policies.iter().enumerate() {
            p.validate(&format!("trafficPolicies[{i}]"), &mut errs);
        }
        for (i, a) in self.authorizations.iter().enumerate() {
            a.validate(&format!("authorizations[{i}]"), &mut errs);
        }
        let mut gateway_ports = BTreeSet::new();
        for (i, l) in self.gateway_listeners.iter().enumerate() {
            let path = format!("gatewayListeners[{i}]");
            l.validate(&path, &mut errs);
            if !gateway_ports.insert(l.port) {
                errs.push(format!("{path}.port"), format!("duplicate port {}", l.port));
            }
        }
        if let Some(node) = &self.node {
            if let Some(ns) = &node.namespace {
                check_dns_name(&mut errs, "self.namespace", ns);
            }
            if let Some(uid) = &node.uid
                && !uids.contains(uid.as_str())
            {
                errs.push("self.uid", format!("no workload has uid {uid:?}"));
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Protocol;

    const SEED: &str = r#"
self:
  name: ubuntu-deployment-cc86cc647-vsvbh
  namespace: default
workloads:
- uid: Kubernetes//Pod/default/httpbin-deployment-9bfd96975-px5lv
  name: httpbin-deployment-9bfd96975-px5lv
  namespace: default
  addresses: [172.17.0.8]
  labels: {app: httpbin, version: v1}
  ports: [{name: http, port: 80}]
services:
- hostname: httpbin-service.default.svc.cluster.local
  name: httpbin-service
  namespace: default
  vips: [10.109.118.31]
  ports: [{name: http, port: 80, targetPort: 80}]
  endpoints:
  - address: 172.17.0.8
    workloadUid: Kubernetes//Pod/default/httpbin-deployment-9bfd96975-px5lv
  lbPolicy: ROUND_ROBIN
"#;

    #[test]
    fn parses_seed_yaml() {
        let r = ProxyResources::parse(SEED).expect("valid");
        assert_eq!(r.services[0].vips[0].to_string(), "10.109.118.31");
        assert_eq!(r.services[0].ports[0].effective_protocol(), Protocol::Http);
        assert_eq!(r.workloads[0].canonical_name(), "httpbin");
        assert_eq!(r.workloads[0].canonical_revision(), "v1");
        assert_eq!(
            r.node.as_ref().and_then(|n| n.namespace.as_deref()),
            Some("default")
        );
    }

    #[test]
    fn json_round_trip() {
        let r = ProxyResources::parse(SEED).expect("valid");
        let json = serde_json::to_string(&r).expect("serialize");
        assert!(json.contains("\"lbPolicy\":\"ROUND_ROBIN\""), "{json}");
        assert_eq!(ProxyResources::parse(&json).expect("json"), r);
    }

    #[test]
    fn reports_path_of_bad_port() {
        let text = r#"
services:
- {hostname: a.default.svc.cluster.local, name: a, namespace: default, ports: [{port: 80}]}
- {hostname: b.default.svc.cluster.local, name: b, namespace: default, ports: [{port: 80}]}
- {hostname: c.default.svc.cluster.local, name: c, namespace: default, ports: [{port: 0}]}
"#;
        let err = ProxyResources::parse(text)
            .expect_err("invalid")
            .to_string();
        assert_eq!(err, "-: services[2].ports[0].port: must be 1..65535");
    }

    #[test]
    fn reports_duplicate_vip_port_and_unknown_field() {
        let text = r#"
services:
- {hostname: a.default.svc.cluster.local, name: a, namespace: default, vips: [10.0.0.1], ports: [{port: 80}]}
- {hostname: b.default.svc.cluster.local, name: b, namespace: default, vips: [10.0.0.1], ports: [{port: 80}]}
"#;
        let err = ProxyResources::parse(text)
            .expect_err("invalid")
            .to_string();
        assert!(
            err.contains("services[1].vips[0]: 10.0.0.1:80 is already used by a.default"),
            "{err}"
        );
        let err = ProxyResources::parse("services: [{hostnme: x}]")
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("hostnme"), "{err}");
    }

    #[test]
    fn service_entries_take_wildcards_and_names() {
        let text = r#"
outboundTrafficPolicy: REGISTRY_ONLY
services:
- {hostname: "*.wikipedia.org", name: "*.wikipedia.org", namespace: default, meshExternal: true,
   resolution: NONE, ports: [{name: https, port: 443, protocol: TLS}]}
- {hostname: httpbin.org, name: httpbin.org, namespace: default, meshExternal: true,
   resolution: DNS, ports: [{name: http, port: 80}],
   dnsEndpoints: [{hostname: httpbin.org}, {hostname: localhost, ports: {80: 8080}}]}
"#;
        let r = ProxyResources::parse(text).expect("valid");
        assert_eq!(
            r.outbound_traffic_policy,
            OutboundTrafficPolicy::RegistryOnly
        );
        assert_eq!(r.services[0].wildcard_suffix(), Some(".wikipedia.org"));
        assert_eq!(r.services[1].dns_endpoints[1].ports[&80], 8080);
        let json = serde_json::to_string(&r).expect("serialize");
        assert_eq!(ProxyResources::parse(&json).expect("json"), r);
        // Defaults stay off the wire, so older resources read the same.
        let plain = ProxyResources::parse(SEED).expect("valid");
        let json = serde_json::to_string(&plain).expect("serialize");
        assert!(
            !json.contains("resolution") && !json.contains("outbound"),
            "{json}"
        );
    }

    #[test]
    fn kubernetes_services_take_no_wildcards_nor_names() {
        let text = r#"
services:
- {hostname: "*.default.svc.cluster.local", name: a, namespace: default, ports: [{port: 80}]}
- {hostname: b.org, name: b.org, namespace: default, resolution: STATIC, ports: [{port: 80}],
   dnsEndpoints: [{hostname: "B_", ports: {81: 80}}]}
"#;
        let err = ProxyResources::parse(text)
            .expect_err("invalid")
            .to_string();
        assert!(
            err.contains("services[0].hostname: must be a DNS name"),
            "{err}"
        );
        assert!(
            err.contains("services[1].dnsEndpoints: only a service of resolution DNS"),
            "{err}"
        );
        assert!(
            err.contains("services[1].dnsEndpoints[0].ports[81]: is not a port"),
            "{err}"
        );
        assert!(
            err.contains("services[1].dnsEndpoints[0].hostname: must be a DNS name"),
            "{err}"
        );
    }
}
