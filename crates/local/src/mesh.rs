//! What the control plane and the proxies are told about the mesh.
//!
//! - The registry objects: the user's Namespaces, Services, ConfigMaps and Istio config, and
//!   one Pod per running replica with its address in `local.ama.dev/address` (the annotation
//!   the control plane's file registry reads), written to `<state>/config/objects.json`. Pods
//!   are given one by one (not as their Deployment) so their names are the ones `ama get pods`
//!   shows, which the proxies present in their node ids.
//! - Endpoints: an EndpointSlice per Service and selected pod, `ready` only while every
//!   container of the pod passes its readiness check, as Kubernetes' EndpointSlice controller
//!   writes them: a pod that is starting, failing its probe or terminating gets no traffic. A
//!   Service that selects no pod has no slice (the control plane then finds none either).
//! - VIPs: assigned by the control plane's [`VipAllocator`] and then written into the
//!   Services as `clusterIP`, so `ama discovery` (reading the same files) cannot disagree.
//! - The proxies' resources: over Delta ADS from `ama discovery`, or from a file per pod
//!   computed here with the control plane's own [`control::proxy_resources`]. One switch,
//!   [`XdsMode`], decides; [`sidecar_source_args`] is the only place that differs.
//! - Certificates: from `ama discovery`'s CA (15012), each sidecar authenticated by the token
//!   `ama up` issues it in the control plane's state directory
//!   ([`control::tokens::FileTokens`]). The file mode has no control plane, hence no CA:
//!   its sidecars talk plaintext.
//! - Cluster DNS: each pod's hosts file ([`hosts_file`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use api::objects::{Object, parse_stream};
use control::model::VipAllocator;
use control::{Model, ProxyKey};
use serde_json::{Value, json};

use crate::Error;
use crate::ipam::GATEWAY;
use crate::manifests::Manifests;
use crate::state::{PodRecord, ServiceRecord, write_atomic};

/// The control plane's plaintext xDS port (Istio's).
pub const DISCOVERY_PORT: u16 = control::discovery::GRPC_PORT;
/// The control plane's TLS port (Istio's): ADS and the CA.
pub const SECURE_PORT: u16 = control::security::SECURE_GRPC_PORT;
/// The mesh root `ama discovery` writes into its state directory.
pub const ROOT_CERT_FILE: &str = control::security::ROOT_CERT_FILE;
/// The control plane's monitoring port (Istio's), `/ready`.
pub const MONITORING_PORT: u16 = control::discovery::MONITORING_PORT;
/// The registry file in the config directory.
pub const OBJECTS_FILE: &str = "objects.json";
/// The resources file in a pod's directory (file mode).
pub const RESOURCES_FILE: &str = "resources.json";

/// Where the sidecars get their resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsMode {
    /// A file per pod, written by `ama up` (the proxies reload it on change).
    Files,
    /// `ama discovery` on the bridge (10.244.0.1:15010), Delta ADS.
    Discovery,
}

impl XdsMode {
    /// `files` or `discovery`.
    pub fn as_str(self) -> &'static str {
        match self {
            XdsMode::Files => "files",
            XdsMode::Discovery => "discovery",
        }
    }
}

/// Where a sidecar gets its resources and, from the control plane, its certificate.
#[derive(Debug, Clone, Copy)]
pub enum SidecarSource<'a> {
    /// The resources file in the pod's directory; no control plane, so no CA: the sidecars
    /// talk plaintext (auto mTLS finds no certificate).
    Files {
        /// The pod's directory.
        pod_dir: &'a Path,
    },
    /// `ama discovery` on the bridge: Delta ADS and the CA on 15012 (TLS, verified against the
    /// root it writes into its state directory), authenticated by the pod's token.
    Discovery {
        /// `ama discovery`'s state directory (`root-cert.pem`, `tokens/`).
        state_dir: &'a Path,
        /// The pod's token file ([`control::tokens::FileTokens::issue`]).
        token_file: &'a Path,
    },
}

/// The arguments that tell a sidecar where its resources (and certificate) come from.
pub fn sidecar_source_args(source: SidecarSource<'_>) -> Vec<String> {
    match source {
        SidecarSource::Files { pod_dir } => vec![
            "--config".into(),
            pod_dir.join(RESOURCES_FILE).display().to_string(),
        ],
        SidecarSource::Discovery {
            state_dir,
            token_file,
        } => vec![
            "--discoveryAddress".into(),
            format!("{GATEWAY}:{SECURE_PORT}"),
            "--ca-addr".into(),
            format!("{GATEWAY}:{SECURE_PORT}"),
            "--ca-root-file".into(),
            state_dir.join(ROOT_CERT_FILE).display().to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
        ],
    }
}

/// The arguments of `ama discovery` for a mesh whose state directory is `state_dir` (the file
/// registry reads `<state>/config`; the CA keeps its root and the pods' tokens in `<state>`).
pub fn discovery_args(state_dir: &Path, config_dir: &Path, trust_domain: &str) -> Vec<String> {
    vec![
        "discovery".into(),
        "--registry".into(),
        "files".into(),
        "--config-dir".into(),
        config_dir.display().to_string(),
        "--state-dir".into(),
        state_dir.display().to_string(),
        // Plaintext ADS answers any node id it is told with every Workload and Service: only
        // on the bridge namespace's loopback, as hardened Istio installs keep 15010 closed.
        // The sidecars use 15012 (mTLS, authenticated by their tokens).
        "--grpc-addr".into(),
        format!("127.0.0.1:{DISCOVERY_PORT}"),
        // The bridge, and loopback for readiness.
        "--secure-grpc-addr".into(),
        format!("0.0.0.0:{SECURE_PORT}"),
        "--monitoring-addr".into(),
        format!("0.0.0.0:{MONITORING_PORT}"),
        // Pods are injected by `ama up` itself, with the webhook's rules.
        "--webhook-addr".into(),
        "off".into(),
        // The sidecars dial the CA by the bridge's address: its serving certificate names it.
        "--dns-name".into(),
        GATEWAY.to_string(),
        "--trust-domain".into(),
        trust_domain.to_string(),
    ]
}

/// The mesh as the control plane sees it, and the objects it was built from.
#[derive(Debug, Clone)]
pub struct MeshView {
    /// The registry objects (Services with their `clusterIP`).
    pub objects: Vec<Value>,
    /// The model built from them.
    pub model: Model,
}

/// Builds the registry objects and the model: the user's objects that are not workloads,
/// `pods` (each with whether it is ready) and their EndpointSlices. Services without a
/// `clusterIP` get one from `vips` (kept across calls).
pub fn view(manifests: &Manifests, pods: &[(&Value, bool)], vips: &mut VipAllocator) -> MeshView {
    let mut objects: Vec<Value> = manifests
        .docs
        .iter()
        .filter(|d| !matches!(d.object, Object::Workload(_) | Object::Pod(_)))
        .map(|d| d.raw.clone())
        .collect();
    let slices = endpoint_slices(&objects, pods);
    objects.extend(pods.iter().map(|(p, _)| (*p).clone()));
    objects.extend(slices);
    let model = build_model(&objects, vips);
    // Declare the assigned VIPs, so that every reader of the files gets the same ones.
    for o in &mut objects {
        if o.get("kind").and_then(Value::as_str) != Some("Service") {
            continue;
        }
        let name = o
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ns = o
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let has_ip = o
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        let vip = model
            .services
            .iter()
            .map(|s| &s.resource)
            .find(|s| s.name == name && s.namespace == ns)
            .and_then(|s| s.vips.first().copied());
        if let (false, Some(vip), Some(Value::Object(spec))) = (has_ip, vip, o.get_mut("spec")) {
            spec.insert("clusterIP".into(), json!(vip.to_string()));
        }
    }
    MeshView { objects, model }
}

/// The EndpointSlices of every Service with a selector among `objects`: one per selected pod
/// (its target ports resolved against the pod's container ports), `ready` as the pod is.
fn endpoint_slices(objects: &[Value], pods: &[(&Value, bool)]) -> Vec<Value> {
    let text = |o: &Value, p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut out = Vec::new();
    for service in objects.iter().filter(|o| o["kind"] == "Service") {
        let Some(selector) = service
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .filter(|s| !s.is_empty())
        else {
            continue;
        };
        if service.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
            continue;
        }
        let (name, namespace) = (
            text(service, "/metadata/name"),
            text(service, "/metadata/namespace"),
        );
        let service_ports = service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (pod, ready) in pods {
            let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
            let selected = text(pod, "/metadata/namespace") == namespace
                && labels.is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v)));
            let address = pod
                .pointer("/status/podIP")
                .or_else(|| pod.pointer(&format!("/metadata/annotations/{}", ADDRESS_POINTER)))
                .and_then(Value::as_str);
            let (true, Some(address)) = (selected, address) else {
                continue;
            };
            let ports: Vec<Value> = service_ports
                .iter()
                .filter_map(|sp| {
                    let number = match sp.get("targetPort") {
                        Some(Value::String(named)) => container_port(pod, named)?,
                        Some(n) => n.as_u64()?,
                        None => sp.get("port")?.as_u64()?,
                    };
                    Some(json!({
                        "name": sp.get("name").and_then(Value::as_str).unwrap_or_default(),
                        "port": number,
                        "protocol": sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
                    }))
                })
                .collect();
            if ports.is_empty() && !service_ports.is_empty() {
                // Kubernetes lists no endpoint for a pod that has none of the named ports.
                continue;
            }
            let pod_name = text(pod, "/metadata/name");
            out.push(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-{pod_name}"),
                    "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "endpoints": [{
                    "addresses": [address],
                    "conditions": {"ready": ready, "serving": ready, "terminating": false},
                    "targetRef": {"kind": "Pod", "name": pod_name, "namespace": namespace},
                }],
                "ports": ports,
            }));
        }
    }
    out
}

/// The number of the container port named `name` in `pod`.
fn container_port(pod: &Value, name: &str) -> Option<u64> {
    pod.pointer("/spec/containers")?
        .as_array()?
        .iter()
        .filter_map(|c| c.get("ports")?.as_array())
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
        .get("containerPort")?
        .as_u64()
}

/// The pod annotation `local.ama.dev/address` as a JSON pointer token (`/` escaped).
const ADDRESS_POINTER: &str = "local.ama.dev~1address";

fn build_model(objects: &[Value], vips: &mut VipAllocator) -> Model {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let (parsed, errors) = parse_stream(&list.to_string(), "ama up");
    for e in errors {
        tracing::warn!("{e}");
    }
    Model::build(&parsed, vips)
}

impl MeshView {
    /// Writes the registry objects into the control plane's config directory.
    pub fn write_config(&self, config_dir: &Path) -> Result<(), Error> {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": self.objects});
        let text = serde_json::to_string_pretty(&list).unwrap_or_default();
        write_atomic(&config_dir.join(OBJECTS_FILE), text.as_bytes())
    }

    /// The resources of the proxy of `pod`, as the control plane would send them.
    pub fn resources(&self, pod: &PodRecord) -> xds::ProxyResources {
        control::proxy_resources(
            &self.model,
            &ProxyKey {
                ip: IpAddr::V4(pod.ip),
                pod_name: pod.name.clone(),
                namespace: pod.namespace.clone(),
            },
        )
    }

    /// Writes the resources file of `pod` (file mode).
    pub fn write_resources(&self, pod: &PodRecord, pod_dir: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(&self.resources(pod)).unwrap_or_default();
        write_atomic(&pod_dir.join(RESOURCES_FILE), text.as_bytes())
    }

    /// The Services, for `ama get services` and the hosts files. `previous` keeps their
    /// creation times.
    pub fn services(&self, previous: &[ServiceRecord], now: u64) -> Vec<ServiceRecord> {
        let mut out: Vec<ServiceRecord> = self
            .objects
            .iter()
            .filter(|o| o.get("kind").and_then(Value::as_str) == Some("Service"))
            .map(|o| {
                let text = |p: &str| {
                    o.pointer(p)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let (name, namespace) = (text("/metadata/name"), text("/metadata/namespace"));
                let ports = o
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .map(|ports| {
                        ports
                            .iter()
                            .map(|p| {
                                let port = p.get("port").and_then(Value::as_u64).unwrap_or(0);
                                let proto =
                                    p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                                match p.get("nodePort").and_then(Value::as_u64) {
                                    Some(node) => format!("{port}:{node}/{proto}"),
                                    None => format!("{port}/{proto}"),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let created_at = previous
                    .iter()
                    .find(|s| s.name == name && s.namespace == namespace)
                    .map_or(now, |s| s.created_at);
                ServiceRecord {
                    cluster_ip: text("/spec/clusterIP").parse::<Ipv4Addr>().ok(),
                    service_type: Some(text("/spec/type"))
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| "ClusterIP".into()),
                    name,
                    namespace,
                    ports,
                    created_at,
                    object: o.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }
}

/// Names outside the cluster and the address a pod answers them on: what an outside DNS would
/// say of the names of `local.ama.dev/dns-names` ([`crate::launch::DNS_NAMES_ANNOTATION`]).
pub type ExternalNames = Vec<(Ipv4Addr, Vec<String>)>;

/// The names of the `local.ama.dev/dns-names` annotation of `pods` (each with whether it is
/// ready), each answered by the first ready pod that claims it, else the first live one (so the
/// name resolves from the start, before its pod is ready). A name two groups claim is the first
/// one's.
pub fn external_names(pods: &[(&Value, bool)]) -> ExternalNames {
    let mut chosen: Vec<(String, Ipv4Addr, bool)> = Vec::new();
    for (pod, ready) in pods {
        let Some(list) = pod
            .pointer(&format!("/metadata/annotations/{DNS_NAMES_POINTER}"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let Some(ip) = pod
            .pointer(&format!("/metadata/annotations/{ADDRESS_POINTER}"))
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        // The annotation was checked when the pod was made (launch): bad names never get here.
        for name in crate::launch::dns_names(list).unwrap_or_default() {
            match chosen.iter_mut().find(|(n, _, _)| *n == name) {
                Some(entry) if !entry.2 && *ready => *entry = (name, ip, true),
                Some(_) => {}
                None => chosen.push((name, ip, *ready)),
            }
        }
    }
    let mut by_ip: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    for (name, ip, _) in chosen {
        by_ip.entry(ip).or_default().push(name);
    }
    by_ip.into_iter().collect()
}

/// The annotation `local.ama.dev/dns-names` as a JSON pointer token.
const DNS_NAMES_POINTER: &str = "local.ama.dev~1dns-names";

/// The hosts file of the bridge's namespace (where `ama discovery` runs): the external names
/// only, as the control plane resolves them through the outside DNS.
pub fn bridge_hosts_file(external: &ExternalNames) -> String {
    let mut out = String::from(
        "# Written by ama up: names outside the cluster (local.ama.dev/dns-names).\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    push_external(&mut out, external);
    out
}

fn push_external(out: &mut String, external: &ExternalNames) {
    for (ip, names) in external {
        out.push_str(&format!("{ip}\t{}\n", names.join(" ")));
    }
}

/// The hosts file of a pod: itself, and every Service as cluster DNS answers for it
/// (`<name>.<ns>.svc.cluster.local`, `<name>.<ns>.svc`, `<name>.<ns>`, and `<name>` for the
/// Services of the pod's own namespace, as its DNS search path would), then the names outside
/// the cluster (`external`).
pub fn hosts_file(
    pod_name: &str,
    pod_namespace: &str,
    pod_ip: Ipv4Addr,
    services: &[ServiceRecord],
    external: &ExternalNames,
) -> String {
    let mut out = format!(
        "# Written by ama up: this pod and the mesh's Services (cluster DNS).\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_ip}\t{pod_name}\n"
    );
    let mut by_ip: BTreeMap<(bool, String, String), (Ipv4Addr, Vec<String>)> = BTreeMap::new();
    for s in services {
        let Some(ip) = s.cluster_ip else { continue };
        let (n, ns) = (&s.name, &s.namespace);
        let mut names = vec![
            format!("{n}.{ns}.svc.{}", control::model::DOMAIN_SUFFIX),
            format!("{n}.{ns}.svc"),
            format!("{n}.{ns}"),
        ];
        let own = ns == pod_namespace;
        if own {
            names.insert(0, n.clone());
        }
        by_ip.insert((!own, ns.clone(), n.clone()), (ip, names));
    }
    for (ip, names) in by_ip.into_values() {
        out.push_str(&format!("{ip}\t{}\n", names.join(" ")));
    }
    push_external(&mut out, external);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse_ok;

    const OBJECTS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio-injection: enabled}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin-deployment}
spec:
  selector: {matchLabels: {app: httpbin}}
  template:
    metadata: {labels: {app: httpbin}}
    spec: {containers: [{name: httpbin, image: httpbin}]}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin-service}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 80, targetPort: 80}]
";

    fn pod(name: &str, app: &str, ip: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app},
                "annotations": {"local.ama.dev/address": ip}},
            "spec": {"containers": [{"name": app, "ports": [{"containerPort": 80}]}]}})
    }

    #[test]
    fn vips_are_declared_and_pods_become_endpoints() {
        let mut m = Manifests::default();
        m.merge(parse_ok(OBJECTS, "seed.yaml"));
        let pods = [
            pod("httpbin-a", "httpbin", "10.244.0.2"),
            pod("ubuntu-a", "ubuntu", "10.244.0.3"),
        ];
        let mut vips = VipAllocator::new();
        let view = view(
            &m,
            &pods.iter().map(|p| (p, true)).collect::<Vec<_>>(),
            &mut vips,
        );
        // The Deployment itself is not given to the control plane: its pods are.
        assert!(view.objects.iter().all(|o| o["kind"] != "Deployment"));
        let services = view.services(&[], 5);
        assert_eq!(services.len(), 1);
        let vip = services[0].cluster_ip.expect("a VIP");
        assert!(vip.octets()[..2] == [10, 96], "{vip}");
        assert_eq!(services[0].ports, ["80/TCP"]);
        let svc = view
            .model
            .service("httpbin-service.default.svc.cluster.local")
            .unwrap();
        assert_eq!(svc.endpoints.len(), 1);
        // The same objects give the same VIP to a fresh reader (ama discovery).
        let again = build_model(&view.objects, &mut VipAllocator::new());
        assert_eq!(again.service(&svc.hostname).unwrap().vips, svc.vips);

        let record = PodRecord {
            name: "ubuntu-a".into(),
            namespace: "default".into(),
            ip: Ipv4Addr::new(10, 244, 0, 3),
            netns: String::new(),
            group: String::new(),
            template_hash: String::new(),
            created_at: 0,
            sidecar: true,
            terminating: false,
            deleted_at: None,
            init: vec![],
            containers: vec![],
            object: Value::Null,
            events: Vec::new(),
        };
        let r = view.resources(&record);
        assert_eq!(r.node.unwrap().name.as_deref(), Some("ubuntu-a"));
        assert_eq!(r.services.len(), 1);

        let hosts = hosts_file("ubuntu-a", "default", record.ip, &services, &Vec::new());
        assert!(
            hosts.contains(&format!(
                "{vip}\thttpbin-service httpbin-service.default.svc.cluster.local"
            )),
            "{hosts}"
        );
        assert!(hosts.contains("10.244.0.3\tubuntu-a\n"), "{hosts}");
        let other = hosts_file("x", "other", record.ip, &services, &Vec::new());
        assert!(other.contains(&format!("{vip}\thttpbin-service.default.svc.cluster.local httpbin-service.default.svc httpbin-service.default\n")), "{other}");
    }

    #[test]
    fn sidecar_source_is_one_switch() {
        let pod_dir = Path::new("/run/ama/x/pods/p");
        assert_eq!(
            sidecar_source_args(SidecarSource::Files { pod_dir }),
            ["--config", "/run/ama/x/pods/p/resources.json"]
        );
        assert_eq!(
            sidecar_source_args(SidecarSource::Discovery {
                state_dir: Path::new("/run/ama/x"),
                token_file: Path::new("/run/ama/x/tokens/default/default/p"),
            }),
            [
                "--discoveryAddress",
                "10.244.0.1:15012",
                "--ca-addr",
                "10.244.0.1:15012",
                "--ca-root-file",
                "/run/ama/x/root-cert.pem",
                "--token-file",
                "/run/ama/x/tokens/default/default/p"
            ]
        );
        let args = discovery_args(
            Path::new("/run/ama/x"),
            Path::new("/run/ama/x/config"),
            "cluster.local",
        );
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].as_str()
        };
        assert_eq!(after("--state-dir"), "/run/ama/x");
        assert_eq!(after("--secure-grpc-addr"), "0.0.0.0:15012");
        assert_eq!(after("--dns-name"), "10.244.0.1");
    }

    #[test]
    fn only_ready_pods_are_endpoints() {
        let yaml = "
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: web-http}]
";
        let mut m = Manifests::default();
        m.merge(parse_ok(yaml, "web.yaml"));
        let named = |name: &str, ip: &str, port: u64| {
            let mut p = pod(name, "web", ip);
            p["spec"]["containers"][0]["ports"] =
                json!([{"name": "web-http", "containerPort": port}]);
            p
        };
        let pods = [
            named("web-ready", "10.244.0.2", 8080),
            named("web-starting", "10.244.0.3", 8080),
            pod("web-unnamed", "web", "10.244.0.4"),
        ];
        let view = view(
            &m,
            &[(&pods[0], true), (&pods[1], false), (&pods[2], true)],
            &mut VipAllocator::new(),
        );
        let slices: Vec<&Value> = view
            .objects
            .iter()
            .filter(|o| o["kind"] == "EndpointSlice")
            .collect();
        // The pod without the named port has no slice, as Kubernetes lists it nowhere.
        assert_eq!(slices.len(), 2, "{slices:#?}");
        assert_eq!(
            slices[0]["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
        );
        assert_eq!(slices[1]["endpoints"][0]["conditions"]["ready"], false);
        let svc = view.model.service("web.default.svc.cluster.local").unwrap();
        let addresses: Vec<String> = svc
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(addresses, ["10.244.0.2"]);
        assert_eq!(svc.endpoints[0].ports.get(&80), Some(&8080));
        assert!(
            svc.endpoints[0].workload_uid.is_some(),
            "the pod's workload"
        );
    }

    #[test]
    fn dns_names_resolve_to_the_first_ready_replica() {
        let external = |name: &str, ip: &str, names: &str| {
            json!({
                "metadata": {
                    "name": name,
                    "namespace": "external",
                    "annotations": {
                        "local.ama.dev/address": ip,
                        "local.ama.dev/dns-names": names,
                    },
                },
            })
        };
        let a = external("api-1", "10.244.0.7", "api.external.test, Other.Example");
        let b = external("api-2", "10.244.0.8", "api.external.test,other.example");
        let plain = pod("sleep", "sleep", "10.244.0.9");
        // Neither ready: the first pod answers, so the name resolves from the start.
        let names = external_names(&[(&a, false), (&b, false), (&plain, true)]);
        assert_eq!(
            names,
            vec![(
                Ipv4Addr::new(10, 244, 0, 7),
                vec!["api.external.test".to_string(), "other.example".to_string()]
            )]
        );
        // The second is ready, the first not: the ready one answers.
        let names = external_names(&[(&a, false), (&b, true)]);
        assert_eq!(names[0].0, Ipv4Addr::new(10, 244, 0, 8));
        let hosts = hosts_file(
            "sleep",
            "default",
            Ipv4Addr::new(10, 244, 0, 9),
            &[],
            &names,
        );
        assert!(
            hosts.ends_with("10.244.0.8\tapi.external.test other.example\n"),
            "{hosts}"
        );
        let bridge = bridge_hosts_file(&names);
        assert!(bridge.contains("127.0.0.1\tlocalhost\n"), "{bridge}");
        assert!(
            bridge.ends_with("10.244.0.8\tapi.external.test other.example\n"),
            "{bridge}"
        );
        assert!(external_names(&[(&plain, true)]).is_empty());
    }
}
