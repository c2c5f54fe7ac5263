//! Who a proxy is on the wire: Istio's proxy id and the xDS `Node` carrying it.
//!
//! A sidecar identifies itself as Istio's agents do, with the id
//! `sidecar~<pod ip>~<pod>.<namespace>~<namespace>.svc.cluster.local` and string metadata
//! (`NAME`, `NAMESPACE`, `INSTANCE_IPS`, `CLUSTER_ID`, …), so the control plane finds the pod the
//! same way for our sidecars and for Istio's.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};

/// Node metadata key of the pod name.
pub const META_NAME: &str = "NAME";
/// Node metadata key of the namespace.
pub const META_NAMESPACE: &str = "NAMESPACE";
/// Node metadata key of the pod addresses (comma-separated).
pub const META_INSTANCE_IPS: &str = "INSTANCE_IPS";
/// Node metadata key of the cluster id.
pub const META_CLUSTER_ID: &str = "CLUSTER_ID";
/// Node metadata key of the pod's service account (optional; Istio's agents may send it).
pub const META_SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";

/// Istio's proxy id: `sidecar~10.0.0.5~httpbin-7d9c.default~default.svc.cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyId {
    /// `sidecar` or `router`.
    pub kind: String,
    /// The pod's address.
    pub ip: IpAddr,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The DNS domain (`default.svc.cluster.local`).
    pub domain: String,
}

/// Why a proxy id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proxy id {id:?}: {reason} (expected sidecar~<ip>~<pod>.<namespace>~<domain>)")]
pub struct ProxyIdError {
    id: String,
    reason: &'static str,
}

impl ProxyId {
    /// A sidecar's id in the default `cluster.local` domain.
    pub fn sidecar(ip: IpAddr, pod_name: &str, namespace: &str) -> ProxyId {
        ProxyId {
            kind: "sidecar".to_string(),
            ip,
            pod_name: pod_name.to_string(),
            namespace: namespace.to_string(),
            domain: format!("{namespace}.svc.cluster.local"),
        }
    }

    /// An xDS `Node` with this id, the standard metadata and `extra` metadata (string values;
    /// `extra` wins on a clash).
    pub fn to_node(&self, extra: &BTreeMap<String, String>) -> Node {
        let mut fields = std::collections::HashMap::new();
        let mut put = |k: &str, v: &str| {
            fields.insert(
                k.to_string(),
                Value {
                    kind: Some(Kind::StringValue(v.to_string())),
                },
            );
        };
        put(META_NAME, &self.pod_name);
        put(META_NAMESPACE, &self.namespace);
        put(META_INSTANCE_IPS, &self.ip.to_string());
        for (k, v) in extra {
            put(k, v);
        }
        Node {
            id: self.to_string(),
            metadata: Some(Struct { fields }),
            user_agent_name: "ama".to_string(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").to_string(),
            )),
            ..Node::default()
        }
    }
}

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}~{}~{}.{}~{}",
            self.kind, self.ip, self.pod_name, self.namespace, self.domain
        )
    }
}

impl FromStr for ProxyId {
    type Err = ProxyIdError;

    fn from_str(id: &str) -> Result<ProxyId, ProxyIdError> {
        let err = |reason| ProxyIdError {
            id: id.to_string(),
            reason,
        };
        let parts: Vec<&str> = id.split('~').collect();
        let [kind, ip, name, domain] = parts.as_slice() else {
            return Err(err("not four parts separated by ~"));
        };
        if !matches!(*kind, "sidecar" | "router") {
            return Err(err("kind is neither sidecar nor router"));
        }
        let ip: IpAddr = ip.parse().map_err(|_| err("bad IP address"))?;
        let (pod_name, namespace) = name
            .rsplit_once('.')
            .filter(|(p, n)| !p.is_empty() && !n.is_empty())
            .ok_or_else(|| err("no <pod>.<namespace>"))?;
        Ok(ProxyId {
            kind: kind.to_string(),
            ip,
            pod_name: pod_name.to_string(),
            namespace: namespace.to_string(),
            domain: domain.to_string(),
        })
    }
}

/// The string-valued metadata of a node (other kinds are skipped).
pub fn node_metadata(node: &Node) -> BTreeMap<String, String> {
    node.metadata
        .iter()
        .flat_map(|s| s.fields.iter())
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_id_round_trip() {
        let id = ProxyId::sidecar(
            "172.17.0.8".parse().expect("ip"),
            "httpbin-deployment-9bfd96975-px5lv",
            "default",
        );
        let s = id.to_string();
        assert_eq!(
            s,
            "sidecar~172.17.0.8~httpbin-deployment-9bfd96975-px5lv.default~default.svc.cluster.local"
        );
        assert_eq!(s.parse::<ProxyId>(), Ok(id.clone()));
        let extra = BTreeMap::from([(META_CLUSTER_ID.to_string(), "Kubernetes".to_string())]);
        let node = id.to_node(&extra);
        let meta = node_metadata(&node);
        assert_eq!(meta["NAMESPACE"], "default");
        assert_eq!(meta["INSTANCE_IPS"], "172.17.0.8");
        assert_eq!(meta["CLUSTER_ID"], "Kubernetes");
        assert_eq!(node.id, s);
    }

    #[test]
    fn bad_ids() {
        for bad in [
            "sidecar~1.2.3.4~pod",
            "gateway~1.2.3.4~a.b~b.svc",
            "sidecar~x~a.b~b.svc",
            "sidecar~1.2.3.4~nonamespace~d",
        ] {
            let e = bad.parse::<ProxyId>().expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
