//! The Kubernetes objects the mesh's registries read: Namespace, Service, Pod, the workloads
//! that stamp out pods (Deployment, ReplicaSet, StatefulSet, DaemonSet), EndpointSlice and
//! ConfigMap.
//!
//! Only the fields a registry uses are typed; the others are accepted and ignored, since
//! these kinds are Kubernetes' (the API server validates them in a cluster, and a manifest
//! written for `kubectl apply` has many fields the mesh has no use for). What is typed is
//! checked the way the API server would: ports, protocols, selectors, address types.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

use crate::check::{Problems, dns_name, label_key, label_value};

/// A Service's spec: how a set of pods is reached.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (default), `NodePort`, `LoadBalancer` or `ExternalName`.
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    /// The virtual IP (`None` for a headless service); assigned when unset.
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// All virtual IPs (dual stack).
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    /// Labels of the pods behind it; no selector means endpoints are managed by hand.
    pub selector: BTreeMap<String, String>,
    /// Its ports.
    pub ports: Vec<ServicePort>,
    /// The DNS name an `ExternalName` service aliases.
    pub external_name: Option<String>,
}

/// A port of a Service.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServicePort {
    /// Its name (required when there are several; Istio reads `http-…`, `grpc-…` prefixes).
    pub name: String,
    /// `TCP` (default), `UDP` or `SCTP`.
    pub protocol: Option<String>,
    /// Application protocol (`http`, `http2`, `grpc`, `kubernetes.io/h2c` …), which Istio
    /// prefers to the name prefix.
    pub app_protocol: Option<String>,
    /// The port of the service. Required.
    pub port: u32,
    /// The port of the pods: a number or the name of a container port (default: `port`).
    pub target_port: Option<IntOrString>,
    /// The node port (NodePort and LoadBalancer).
    pub node_port: Option<u32>,
}

/// A port given by number or by name, as Kubernetes' `IntOrString`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntOrString {
    /// A port number.
    Int(u32),
    /// A named container port.
    String(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(IntOrString::Int)
                .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a port"))),
            serde_json::Value::String(s) => Ok(IntOrString::String(s)),
            other => Err(serde::de::Error::custom(format!(
                "{other} is not a port number or name"
            ))),
        }
    }
}

/// A pod's spec: the fields the mesh reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    /// The app containers. At least one.
    pub containers: Vec<Container>,
    /// Containers run to completion before the app containers.
    pub init_containers: Vec<Container>,
    /// The service account: the pod's identity in the mesh (`default` when unset).
    pub service_account_name: Option<String>,
    /// Whether the pod uses the node's network (it is then never injected).
    pub host_network: bool,
    /// Host name of the pod.
    pub hostname: Option<String>,
    /// Subdomain (with a headless service, gives the pod a DNS name).
    pub subdomain: Option<String>,
}

/// A container: the fields the mesh reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Container {
    /// Its name. Required.
    pub name: String,
    /// Its image.
    pub image: Option<String>,
    /// Entrypoint override.
    pub command: Vec<String>,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment; only literal values are kept (`valueFrom` entries have `value: None`).
    pub env: Vec<EnvVar>,
    /// Ports it listens on.
    pub ports: Vec<ContainerPort>,
}

/// An environment variable.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EnvVar {
    /// Its name.
    pub name: String,
    /// Its literal value.
    pub value: Option<String>,
}

/// A port of a container.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerPort {
    /// Its name (what a Service's `targetPort` may refer to).
    pub name: Option<String>,
    /// The port number. Required.
    pub container_port: u32,
    /// `TCP` (default), `UDP` or `SCTP`.
    pub protocol: Option<String>,
}

/// A pod's status: where it runs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: Option<String>,
    /// Its primary IP.
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    /// Its node's IP.
    #[serde(rename = "hostIP")]
    pub host_ip: Option<String>,
}

/// A label selector: labels that must be equal, and expressions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be present with these values.
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements.
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values (`In`, `NotIn`).
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether labels satisfy the selector (an empty selector matches everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }

    fn validate(&self, at: &str, p: &mut Problems) {
        for (k, v) in &self.match_labels {
            let at = format!("{at}.matchLabels[\"{k}\"]");
            if let Err(m) = label_key(k).and_then(|()| label_value(v)) {
                p.add(at, m);
            }
        }
        for (i, e) in self.match_expressions.iter().enumerate() {
            let at = format!("{at}.matchExpressions[{i}]");
            if let Err(m) = label_key(&e.key) {
                p.add(format!("{at}.key"), m);
            }
            match e.operator.as_str() {
                "In" | "NotIn" if e.values.is_empty() => p.add(
                    format!("{at}.values"),
                    format!("missing: {} needs values", e.operator),
                ),
                "Exists" | "DoesNotExist" if !e.values.is_empty() => p.add(
                    format!("{at}.values"),
                    format!("{} takes no values", e.operator),
                ),
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => p.add(
                    format!("{at}.operator"),
                    format!("\"{other}\" is not an operator (In, NotIn, Exists, DoesNotExist)"),
                ),
            }
        }
    }
}

/// The kinds that run pods from a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` ReplicaSet.
    ReplicaSet,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet (one pod per node; no replica count).
    DaemonSet,
}

impl WorkloadKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

/// The spec of a workload: its replicas, selector and pod template.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Number of pods (1 when unset; DaemonSets have none).
    pub replicas: Option<i64>,
    /// Which pods are its own. Required by `apps/v1`.
    pub selector: Option<LabelSelector>,
    /// The pods it runs. Required.
    pub template: Option<PodTemplate>,
    /// The headless service of a StatefulSet.
    pub service_name: Option<String>,
}

/// A pod template: metadata and spec of the pods a workload runs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodTemplate {
    /// Labels and annotations of the pods.
    pub metadata: TemplateMetadata,
    /// The pods' spec.
    pub spec: PodSpec,
}

/// The metadata of a pod template.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TemplateMetadata {
    /// Labels of the pods.
    pub labels: BTreeMap<String, String>,
    /// Annotations of the pods.
    pub annotations: BTreeMap<String, String>,
}

/// An EndpointSlice (`discovery.k8s.io/v1`): some endpoints of a service.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EndpointSliceBody {
    /// `IPv4`, `IPv6` or `FQDN`. Required.
    pub address_type: String,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
    /// The ports, shared by all endpoints.
    pub ports: Vec<EndpointPort>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Endpoint {
    /// Its addresses (one is usual). At least one.
    pub addresses: Vec<String>,
    /// Readiness.
    pub conditions: EndpointConditions,
    /// Host name.
    pub hostname: Option<String>,
    /// Node.
    pub node_name: Option<String>,
    /// Zone.
    pub zone: Option<String>,
    /// The object it stands for (usually a Pod).
    pub target_ref: Option<ObjectReference>,
}

/// Readiness of an endpoint; unset means ready.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct EndpointConditions {
    /// Ready for traffic.
    pub ready: Option<bool>,
    /// Serving (may be terminating).
    pub serving: Option<bool>,
    /// Terminating.
    pub terminating: Option<bool>,
}

/// A reference to another object.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ObjectReference {
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its uid.
    pub uid: String,
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EndpointPort {
    /// Name of the service port it serves.
    pub name: Option<String>,
    /// The port number.
    pub port: Option<u32>,
    /// `TCP` (default), `UDP` or `SCTP`.
    pub protocol: Option<String>,
    /// Application protocol.
    pub app_protocol: Option<String>,
}

fn protocol(p: &mut Problems, at: String, protocol: &Option<String>) {
    if let Some(proto) = protocol
        && !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP")
    {
        p.add(
            at,
            format!("\"{proto}\" is not a protocol (TCP, UDP or SCTP)"),
        );
    }
}

impl ServiceSpec {
    /// Checks the spec (at path `at`, normally `spec`), as the API server does.
    pub fn validate(&self, at: &str, p: &mut Problems) {
        let service_type = self.service_type.as_deref().unwrap_or("ClusterIP");
        if !matches!(
            service_type,
            "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
        ) {
            p.add(
                format!("{at}.type"),
                format!(
                    "\"{service_type}\" is not a service type (ClusterIP, NodePort, \
                     LoadBalancer or ExternalName)"
                ),
            );
        }
        if service_type == "ExternalName" {
            match &self.external_name {
                None => p.add(
                    format!("{at}.externalName"),
                    "missing: an ExternalName service needs an externalName",
                ),
                Some(name) => {
                    if let Err(m) = dns_name(name, false) {
                        p.add(format!("{at}.externalName"), m);
                    }
                }
            }
        } else if self.ports.is_empty() {
            p.add(
                format!("{at}.ports"),
                "missing: a service needs at least one port",
            );
        }
        if let Some(ip) = &self.cluster_ip
            && ip != "None"
            && !ip.is_empty()
            && ip.parse::<IpAddr>().is_err()
        {
            p.add(
                format!("{at}.clusterIP"),
                format!("\"{ip}\" is not an IP address (or None, for a headless service)"),
            );
        }
        for (k, v) in &self.selector {
            if let Err(m) = label_key(k).and_then(|()| label_value(v)) {
                p.add(format!("{at}.selector[\"{k}\"]"), m);
            }
        }
        let mut names = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            let at = format!("{at}.ports[{i}]");
            p.port(format!("{at}.port"), port.port);
            protocol(p, format!("{at}.protocol"), &port.protocol);
            if self.ports.len() > 1 && port.name.is_empty() {
                p.add(
                    format!("{at}.name"),
                    "missing: every port needs a name when there are several",
                );
            }
            if !port.name.is_empty() && !names.insert(port.name.as_str()) {
                p.add(
                    format!("{at}.name"),
                    format!("\"{}\" names two ports", port.name),
                );
            }
            match &port.target_port {
                Some(IntOrString::Int(n)) => p.port(format!("{at}.targetPort"), *n),
                Some(IntOrString::String(name)) => {
                    if let Err(m) = port_name(name) {
                        p.add(format!("{at}.targetPort"), m);
                    }
                }
                None => {}
            }
            if let Some(n) = port.node_port {
                p.port(format!("{at}.nodePort"), n);
            }
        }
    }
}

/// An IANA service name, as a container port's name: 1 to 15 lower-case letters, digits and
/// `-`, with a letter, no `--`, not starting or ending with `-`.
fn port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not a port name (1 to 15 lower-case letters, digits and '-', with a \
             letter)"
        ))
    }
}

impl PodSpec {
    /// Checks the spec (at path `at`: `spec` of a Pod, `spec.template.spec` of a workload).
    pub fn validate(&self, at: &str, p: &mut Problems) {
        if self.containers.is_empty() {
            p.add(
                format!("{at}.containers"),
                "missing: a pod needs at least one container",
            );
        }
        let mut names = BTreeSet::new();
        for (list, containers) in [
            ("initContainers", &self.init_containers),
            ("containers", &self.containers),
        ] {
            for (i, c) in containers.iter().enumerate() {
                let at = format!("{at}.{list}[{i}]");
                if c.name.is_empty() {
                    p.add(format!("{at}.name"), "missing: a container needs a name");
                } else if !names.insert(c.name.as_str()) {
                    p.add(
                        format!("{at}.name"),
                        format!("\"{}\" names two containers", c.name),
                    );
                }
                for (j, port) in c.ports.iter().enumerate() {
                    let at = format!("{at}.ports[{j}]");
                    p.port(format!("{at}.containerPort"), port.container_port);
                    protocol(p, format!("{at}.protocol"), &port.protocol);
                    if let Some(name) = &port.name
                        && let Err(m) = port_name(name)
                    {
                        p.add(format!("{at}.name"), m);
                    }
                }
            }
        }
    }
}

impl WorkloadSpec {
    /// Checks the spec (at path `at`, normally `spec`) of a workload of `kind`.
    pub fn validate(&self, kind: WorkloadKind, at: &str, p: &mut Problems) {
        if let Some(r) = self.replicas {
            if kind == WorkloadKind::DaemonSet {
                p.add(
                    format!("{at}.replicas"),
                    "a DaemonSet has no replicas (one pod per node)",
                );
            } else {
                p.non_negative(format!("{at}.replicas"), r);
            }
        }
        let Some(template) = &self.template else {
            p.add(
                format!("{at}.template"),
                format!("missing: a {} needs a pod template", kind.as_str()),
            );
            return;
        };
        template.spec.validate(&format!("{at}.template.spec"), p);
        match &self.selector {
            None => p.add(
                format!("{at}.selector"),
                format!("missing: a {} needs a selector", kind.as_str()),
            ),
            Some(selector) => {
                selector.validate(&format!("{at}.selector"), p);
                if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
                    p.add(format!("{at}.selector"), "must not be empty");
                } else if !selector.matches(&template.metadata.labels) {
                    p.add(
                        format!("{at}.template.metadata.labels"),
                        "do not match spec.selector: the workload would not own its pods",
                    );
                }
            }
        }
    }

    /// Number of pods: `replicas`, 1 when unset; `None` for a DaemonSet (one per node).
    pub fn replica_count(&self, kind: WorkloadKind) -> Option<u32> {
        match kind {
            WorkloadKind::DaemonSet => None,
            _ => Some(
                self.replicas
                    .map_or(1, |r| u32::try_from(r.max(0)).unwrap_or(u32::MAX)),
            ),
        }
    }
}

impl EndpointSliceBody {
    /// Checks the slice (at path `at`, normally the object root).
    pub fn validate(&self, at: &str, p: &mut Problems) {
        let join = |field: &str| {
            if at.is_empty() {
                field.to_string()
            } else {
                format!("{at}.{field}")
            }
        };
        let kind = self.address_type.as_str();
        if !matches!(kind, "IPv4" | "IPv6" | "FQDN") {
            p.add(
                join("addressType"),
                format!("\"{kind}\" is not an address type (IPv4, IPv6 or FQDN)"),
            );
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let at = join(&format!("endpoints[{i}]"));
            if e.addresses.is_empty() {
                p.add(
                    format!("{at}.addresses"),
                    "missing: an endpoint needs an address",
                );
            }
            for (j, a) in e.addresses.iter().enumerate() {
                let ok = match kind {
                    "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                    "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                    "FQDN" => dns_name(a, false).is_ok(),
                    _ => true,
                };
                if !ok {
                    p.add(
                        format!("{at}.addresses[{j}]"),
                        format!("\"{a}\" is not an {kind} address"),
                    );
                }
            }
        }
        for (i, port) in self.ports.iter().enumerate() {
            let at = join(&format!("ports[{i}]"));
            if let Some(n) = port.port {
                p.port(format!("{at}.port"), n);
            }
            protocol(p, format!("{at}.protocol"), &port.protocol);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_matching() {
        let labels = BTreeMap::from([("app".to_string(), "reviews".to_string())]);
        let sel = |json: serde_json::Value| serde_json::from_value::<LabelSelector>(json).unwrap();
        assert!(sel(serde_json::json!({"matchLabels": {"app": "reviews"}})).matches(&labels));
        assert!(!sel(serde_json::json!({"matchLabels": {"app": "x"}})).matches(&labels));
        assert!(
            sel(serde_json::json!({"matchExpressions": [
                {"key": "app", "operator": "In", "values": ["reviews", "ratings"]},
                {"key": "version", "operator": "DoesNotExist"}
            ]}))
            .matches(&labels)
        );
    }

    #[test]
    fn port_names() {
        assert!(port_name("http").is_ok());
        assert!(port_name("http-web2").is_ok());
        assert!(port_name("HTTP").is_err());
        assert!(port_name("80").is_err());
        assert!(port_name("a--b").is_err());
        assert!(port_name("a-very-long-port-name").is_err());
    }
}
