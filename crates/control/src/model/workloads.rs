//! Workloads: one [`xds::Workload`] per running pod.
//!
//! In a cluster pods come with `status.podIP`. From files (the local mode) they come from
//! annotations instead:
//!
//! - a Pod with `local.ama.dev/address: "10.244.0.7"` (a comma-separated list for dual stack);
//! - a Deployment, ReplicaSet, StatefulSet or DaemonSet with
//!   `local.ama.dev/addresses: "10.244.0.3,10.244.0.4"` (on the object or its pod template): one
//!   pod per address, up to `replicas` (a DaemonSet takes them all). Pods are named like
//!   Kubernetes names them: `<deployment>-<template hash>-<i>`, `<statefulset>-<i>`.
//!
//! Each workload gets its labels, service account and SPIFFE identity, the canonical service
//! name and revision (Istio's label precedence), the owning workload's name, its container ports,
//! and `tlsMode: istio` when it has (or would get) a sidecar: the label
//! `security.istio.io/tlsMode` if set, else already injected, else the injection webhook's own
//! selection ([`inject::injection_required`]) with the namespace's labels.

use std::collections::BTreeMap;
use std::net::IpAddr;

use api::k8s::{PodSpec, WorkloadKind};
use api::label;
use api::objects::{Object, Pod, Workload as ApiWorkload};
use inject::{InjectConfig, SkipReason};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use xds::{TlsMode, WorkloadPort};

use super::{CLUSTER_ID, Labels, Warnings};

/// Pod annotation: the pod's address(es) in local mode.
pub const ADDRESS_ANNOTATION: &str = "local.ama.dev/address";
/// Workload annotation: one address per replica in local mode.
pub const ADDRESSES_ANNOTATION: &str = "local.ama.dev/addresses";
/// Prefix of the local-mode annotations, left out of the pod-template hash so that editing the
/// addresses does not rename the pods.
const LOCAL_PREFIX: &str = "local.ama.dev/";
/// Kubernetes' label of the pods of a ReplicaSet.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The alphabet Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// One pod to turn into a workload.
struct PodInput<'a> {
    name: String,
    namespace: &'a str,
    labels: Labels,
    annotations: &'a Labels,
    spec: &'a PodSpec,
    addresses: Vec<IpAddr>,
    workload_name: String,
}

/// Builds the workloads of every Pod and pod-running workload, sorted by uid.
pub(crate) fn build(
    objects: &[&Object],
    namespaces: &BTreeMap<String, Labels>,
    config: &InjectConfig,
    warnings: &mut Warnings,
) -> Vec<xds::Workload> {
    let mut out: BTreeMap<String, xds::Workload> = BTreeMap::new();
    for o in objects {
        let pods = match o {
            Object::Pod(pod) => pod_input(pod, warnings).into_iter().collect(),
            Object::Workload(w) => replica_inputs(w, warnings),
            _ => continue,
        };
        for pod in pods {
            let ns_labels = namespaces.get(pod.namespace);
            let w = workload(&pod, ns_labels, config);
            if let Some(prev) = out.insert(w.uid.clone(), w) {
                warnings.add(
                    o.display(),
                    format!(
                        "pod {} is also defined elsewhere; using this one",
                        prev.name
                    ),
                );
            }
        }
    }
    out.into_values().collect()
}

/// A Pod's address: `status.podIP`, else the local annotation. `None` (not running yet) when it
/// has neither.
fn pod_input<'a>(pod: &'a Pod, warnings: &mut Warnings) -> Option<PodInput<'a>> {
    let m = &pod.metadata;
    let display = || format!("Pod {}/{}", m.namespace, m.name);
    if m.name.is_empty() {
        warnings.add(
            display(),
            "a Pod with only generateName cannot be a workload",
        );
        return None;
    }
    let text = pod
        .status
        .pod_ip
        .as_deref()
        .or_else(|| m.annotations.get(ADDRESS_ANNOTATION).map(String::as_str))?;
    let addresses = parse_addresses(text)
        .map_err(|e| warnings.add(display(), format!("address {e}: the pod is left out")))
        .ok()?;
    let workload_name = owner_name(&m.name, &m.labels);
    Some(PodInput {
        name: m.name.clone(),
        namespace: &m.namespace,
        labels: m.labels.clone(),
        annotations: &m.annotations,
        spec: &pod.spec,
        addresses,
        workload_name,
    })
}

/// The pods of a Deployment (…) with `local.ama.dev/addresses`: one per address, up to
/// `replicas`.
fn replica_inputs<'a>(w: &'a ApiWorkload, warnings: &mut Warnings) -> Vec<PodInput<'a>> {
    let m = &w.metadata;
    let display = || format!("{} {}/{}", w.kind.as_str(), m.namespace, m.name);
    let template_annotations = &w.template.metadata.annotations;
    let Some(text) = m
        .annotations
        .get(ADDRESSES_ANNOTATION)
        .or_else(|| template_annotations.get(ADDRESSES_ANNOTATION))
    else {
        return Vec::new();
    };
    let addresses = match parse_addresses(text) {
        Ok(a) => a,
        Err(e) => {
            warnings.add(
                display(),
                format!("{ADDRESSES_ANNOTATION} {e}: its pods are left out"),
            );
            return Vec::new();
        }
    };
    let count = match w.replicas {
        Some(r) => {
            let r = usize::try_from(r).unwrap_or(usize::MAX);
            if r != addresses.len() {
                warnings.add(
                    display(),
                    format!(
                        "{} replicas but {} addresses in {ADDRESSES_ANNOTATION}: running {}",
                        r,
                        addresses.len(),
                        r.min(addresses.len())
                    ),
                );
            }
            r.min(addresses.len())
        }
        None => addresses.len(),
    };
    let hash = template_hash(w);
    addresses
        .into_iter()
        .take(count)
        .enumerate()
        .map(|(i, address)| {
            let name = match w.kind {
                WorkloadKind::StatefulSet => format!("{}-{i}", m.name),
                _ => format!("{}-{hash}-{i}", m.name),
            };
            let mut labels = w.template.metadata.labels.clone();
            if w.kind == WorkloadKind::Deployment {
                labels.insert(POD_TEMPLATE_HASH.to_string(), hash.clone());
            }
            PodInput {
                name,
                namespace: &m.namespace,
                labels,
                annotations: template_annotations,
                spec: &w.template.spec,
                addresses: vec![address],
                workload_name: m.name.clone(),
            }
        })
        .collect()
}

/// Addresses from a comma-separated list; at least one.
fn parse_addresses(text: &str) -> Result<Vec<IpAddr>, String> {
    let addresses = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("\"{s}\" is not an IP address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addresses.is_empty() {
        return Err(format!("\"{text}\" has no address"));
    }
    Ok(addresses)
}

/// A 10-character hash of the pod template (without the local-mode annotations), spelled as
/// Kubernetes spells `pod-template-hash`: a template edit gives new pod names, as a rollout does.
fn template_hash(w: &ApiWorkload) -> String {
    let annotations: Labels = w
        .template
        .metadata
        .annotations
        .iter()
        .filter(|(k, _)| !k.starts_with(LOCAL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let text = format!(
        "{}/{}\n{:?}\n{:?}\n{:?}",
        w.metadata.namespace,
        w.metadata.name,
        w.template.metadata.labels,
        annotations,
        w.template.spec
    );
    Sha256::digest(text.as_bytes())
        .iter()
        .take(10)
        .map(|b| char::from(SAFE_ALPHABET[usize::from(*b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// The owning workload of a pod named `<deployment>-<pod-template-hash>-<suffix>`, else the
/// pod's own name (as Istio derives `source_workload`).
fn owner_name(pod_name: &str, labels: &Labels) -> String {
    if let Some(hash) = labels.get(POD_TEMPLATE_HASH)
        && let Some(pos) = pod_name.rfind(&format!("-{hash}-"))
        && pos > 0
    {
        return pod_name[..pos].to_string();
    }
    pod_name.to_string()
}

fn workload(
    pod: &PodInput<'_>,
    ns_labels: Option<&Labels>,
    config: &InjectConfig,
) -> xds::Workload {
    let service_account = pod
        .spec
        .service_account_name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let identity = format!(
        "spiffe://{}/ns/{}/sa/{service_account}",
        config.trust_domain(),
        pod.namespace
    );
    let first = |keys: &[&str]| keys.iter().find_map(|k| pod.labels.get(*k)).cloned();
    let canonical_name = first(&[
        label::CANONICAL_NAME,
        label::APP_KUBERNETES_NAME,
        label::APP,
    ])
    .unwrap_or_else(|| pod.workload_name.clone());
    let canonical_revision = first(&[
        label::CANONICAL_REVISION,
        label::APP_KUBERNETES_VERSION,
        label::VERSION,
    ])
    .unwrap_or_else(|| "latest".to_string());
    let ports = pod
        .spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            Some(WorkloadPort {
                name: p.name.clone(),
                port: u16::try_from(p.container_port).ok()?,
                ..WorkloadPort::default()
            })
        })
        .collect();
    xds::Workload {
        uid: format!("{CLUSTER_ID}//Pod/{}/{}", pod.namespace, pod.name),
        name: pod.name.clone(),
        namespace: pod.namespace.to_string(),
        addresses: pod.addresses.clone(),
        service_account,
        identity: Some(identity),
        labels: pod.labels.clone(),
        ports,
        tls_mode: tls_mode(pod, ns_labels, config),
        canonical_name: Some(canonical_name),
        canonical_revision: Some(canonical_revision),
        workload_name: Some(pod.workload_name.clone()),
        cluster_id: Some(CLUSTER_ID.to_string()),
    }
}

/// `istio` when the pod has a sidecar or would get one: the `security.istio.io/tlsMode` label
/// when set, else none for a gateway pod ([`is_gateway`]), else an `istio-proxy` container or
/// `sidecar.istio.io/status` (injected by `kube-inject`), else the injection webhook's decision
/// for this namespace.
fn tls_mode(pod: &PodInput<'_>, ns_labels: Option<&Labels>, config: &InjectConfig) -> TlsMode {
    match pod.labels.get(label::TLS_MODE).map(String::as_str) {
        Some("istio") => return TlsMode::Istio,
        Some(_) => return TlsMode::Disabled,
        None => {}
    }
    if is_gateway(pod) {
        return TlsMode::Disabled;
    }
    let has_sidecar = pod
        .annotations
        .contains_key(api::annotation::SIDECAR_STATUS)
        || pod
            .spec
            .containers
            .iter()
            .chain(&pod.spec.init_containers)
            .any(|c| c.name == inject::sidecar::PROXY_CONTAINER_NAME);
    if has_sidecar {
        return TlsMode::Istio;
    }
    let empty = Labels::new();
    // Without a Namespace object the namespace has no labels: its selection is the pods' own.
    let ns_labels = ns_labels.unwrap_or(&empty);
    match inject::injection_required(pod.namespace, Some(ns_labels), &pod_json(pod), config) {
        Ok(()) | Err(SkipReason::AlreadyInjected) => TlsMode::Istio,
        Err(_) => TlsMode::Disabled,
    }
}

/// A gateway pod (its `istio-proxy` runs `proxy router`, or it asks for Istio's `gateway`
/// injection template): Istio's gateway template gives it no `security.istio.io/tlsMode`
/// label, so sidecars reach its plaintext listeners in plaintext rather than with auto mTLS.
fn is_gateway(pod: &PodInput<'_>) -> bool {
    pod.annotations
        .get("inject.istio.io/templates")
        .is_some_and(|t| t.split(',').any(|t| t.trim() == "gateway"))
        || pod.spec.containers.iter().any(|c| {
            c.name == inject::sidecar::PROXY_CONTAINER_NAME && c.args.iter().any(|a| a == "router")
        })
}

/// The fields of a pod the injection decision reads.
fn pod_json(pod: &PodInput<'_>) -> Value {
    let names = |list: &[api::k8s::Container]| {
        list.iter()
            .map(|c| json!({ "name": c.name }))
            .collect::<Vec<_>>()
    };
    json!({
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": pod.labels,
            "annotations": pod.annotations,
        },
        "spec": {
            "hostNetwork": pod.spec.host_network,
            "containers": names(&pod.spec.containers),
            "initContainers": names(&pod.spec.init_containers),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_of_replica_set_pod() {
        let labels = Labels::from([(POD_TEMPLATE_HASH.into(), "9bfd96975".into())]);
        assert_eq!(
            owner_name("httpbin-deployment-9bfd96975-px5lv", &labels),
            "httpbin-deployment"
        );
        assert_eq!(owner_name("standalone", &Labels::new()), "standalone");
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_addresses("10.0.0.1, fd00::1").map(|a| a.len()), Ok(2));
        assert!(parse_addresses("10.0.0.300").is_err());
        assert!(parse_addresses(" , ").is_err());
    }
}
