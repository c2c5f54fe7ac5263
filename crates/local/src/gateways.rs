//! The gateways `ama up` runs, as an installation profile installs them in a cluster.
//!
//! The objects are `ama manifest generate`'s ([`manifest::gateways`]): for the demo profile
//! (what Istio's tasks assume) `istio-ingressgateway` and `istio-egressgateway` in
//! `istio-system`. Their Deployments are Istio's gateway shape (`inject.istio.io/templates:
//! gateway`, an `istio-proxy` container with `image: auto`), so they go through the same
//! injection as in a cluster: no `istio-init`, and `ama proxy router` as `istio-proxy`.
//! An object of DIR with the same kind, namespace and name wins over the profile's.

use std::net::{Ipv4Addr, SocketAddrV4};

use manifest::Profile;
use serde_json::{Value, json};

use crate::host_port::Upstreams;
use crate::manifests::{self, Manifests};

/// The namespace the gateways run in.
pub const NAMESPACE: &str = "istio-system";

/// The name of the ingress gateway's Service, which the host port forwards to.
pub const INGRESS_SERVICE: &str = manifest::gateways::INGRESS.name;

/// The ingress gateway's Service ports forwarded from the host's loopback: (Service port,
/// host port tried first, host port tried next). Binding 80 and 443 makes Istio's own recipe
/// (`-o jsonpath='{.spec.ports[?(@.name=="http2")].port}'`) give the right port.
pub const FORWARDED: [(u16, u16, u16); 2] = [(80, 80, 8080), (443, 443, 8443)];

/// The address the forwarded ports are on, written as the Service's load balancer address.
pub const HOST_ADDRESS: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn is_ingress_service(o: &Value) -> bool {
    o["kind"] == "Service"
        && o.pointer("/metadata/name").and_then(Value::as_str) == Some(INGRESS_SERVICE)
        && o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(NAMESPACE)
}

/// Whether the objects have the ingress gateway's Service (the profile's, or DIR's own).
pub fn has_ingress(manifests: &Manifests) -> bool {
    manifests.docs.iter().any(|d| is_ingress_service(&d.raw))
}

/// Where each forwarded Service port goes now: the first ready endpoint of the ingress
/// gateway's Service among the registry `objects` (its EndpointSlices), at the target port
/// its Service port resolves to. Empty while no gateway pod is ready.
pub fn ingress_upstreams(objects: &[Value], service_ports: &[u16]) -> Upstreams {
    let mut out = Upstreams::new();
    let Some(service) = objects.iter().find(|o| is_ingress_service(o)) else {
        return out;
    };
    let ports = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let slices = objects.iter().filter(|o| {
        o["kind"] == "EndpointSlice"
            && o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(NAMESPACE)
            && o.pointer("/metadata/labels/kubernetes.io~1service-name")
                .and_then(Value::as_str)
                == Some(INGRESS_SERVICE)
    });
    for slice in slices {
        let Some(address) = slice
            .pointer("/endpoints/0")
            .filter(|e| e.pointer("/conditions/ready") == Some(&Value::Bool(true)))
            .and_then(|e| e.pointer("/addresses/0"))
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        for &service_port in service_ports {
            if out.contains_key(&service_port) {
                continue;
            }
            let Some(name) = ports
                .iter()
                .find(|p| p.get("port").and_then(Value::as_u64) == Some(u64::from(service_port)))
                .map(|p| p.get("name").and_then(Value::as_str).unwrap_or_default())
            else {
                continue;
            };
            let target = slice
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str).unwrap_or_default() == name)
                .and_then(|p| p.get("port").and_then(Value::as_u64))
                .and_then(|p| u16::try_from(p).ok());
            if let Some(target) = target {
                out.insert(service_port, SocketAddrV4::new(address, target));
            }
        }
    }
    out
}

/// Writes what the host sees into the ingress gateway's Service among `objects`: its load
/// balancer address (`status.loadBalancer.ingress[0].ip`, which Istio's tasks read) and, for
/// each forwarded port, the host port as its `nodePort` (kubectl shows `80:8080/TCP`).
pub fn mark_ingress(objects: &mut [Value], bound: &[(u16, u16)]) {
    let Some(service) = objects.iter_mut().find(|o| is_ingress_service(o)) else {
        return;
    };
    if let Some(Value::Array(ports)) = service.pointer_mut("/spec/ports") {
        for p in ports.iter_mut() {
            let port = p.get("port").and_then(Value::as_u64);
            if let Some((_, host)) = bound.iter().find(|(s, _)| Some(u64::from(*s)) == port)
                && let Value::Object(p) = p
            {
                p.insert("nodePort".into(), json!(host));
            }
        }
    }
    if let Value::Object(map) = service {
        map.insert(
            "status".into(),
            json!({"loadBalancer": {"ingress": [{"ip": HOST_ADDRESS.to_string()}]}}),
        );
    }
}

/// Whether a pod's `istio-proxy` is the gateway proxy (`ama proxy router`, the gateway
/// template) rather than a sidecar.
pub fn runs_router(pod: &Value) -> bool {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c["name"] == inject::sidecar::PROXY_CONTAINER_NAME
                && c.pointer("/args/0") == Some(&json!("proxy"))
                && c.pointer("/args/1") == Some(&json!("router"))
        })
}

/// Adds the gateways of `profile` to `manifests`, after DIR's objects, leaving out any object
/// DIR declares itself.
pub fn add(manifests: &mut Manifests, profile: Profile) {
    let objects = manifest::gateways::objects(profile, NAMESPACE);
    if objects.is_empty() {
        return;
    }
    // `ama up` enforces no RBAC (its gateways get their Secrets from discovery): the profile's
    // Role and RoleBinding would only be reported back to the user, by `ama analyze` and
    // discovery's log, as kinds Ama does not implement, about objects the user never wrote.
    let objects: Vec<_> = objects
        .into_iter()
        .filter(|o| !matches!(o["kind"].as_str(), Some("Role" | "RoleBinding")))
        .collect();
    let text = manifest::render(&objects);
    let (docs, _) = manifests::parse(&text, &format!("profile {}", profile.as_str()));
    let new: Vec<_> = docs
        .into_iter()
        .filter(|d| !manifests.docs.iter().any(|m| m.key() == d.key()))
        .collect();
    manifests.docs.extend(new);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::{LaunchInputs, Role, launch};
    use crate::manifests::{Labels, parse_ok};
    use crate::plan::pod_groups;
    use std::net::Ipv4Addr;
    use std::path::Path;

    #[test]
    fn demo_runs_both_gateways_as_routers_without_capture() {
        let mut m = Manifests::default();
        m.merge(parse_ok(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio-injection: enabled}}\n",
            "ns.yaml",
        ));
        add(&mut m, Profile::Demo);
        assert!(
            !m.docs
                .iter()
                .any(|d| matches!(d.object.kind(), "Role" | "RoleBinding")),
            "no RBAC objects: ama up enforces none and would report them as not implemented"
        );
        let (groups, notes) = pod_groups(&m);
        assert!(notes.is_empty(), "{notes:?}");
        let keys: Vec<String> = groups.iter().map(|g| g.key()).collect();
        assert_eq!(
            keys,
            [
                "Deployment/istio-system/istio-ingressgateway",
                "Deployment/istio-system/istio-egressgateway",
            ]
        );
        let services: Vec<String> = m
            .docs
            .iter()
            .filter(|d| d.object.kind() == "Service")
            .map(|d| format!("{}/{}", d.key().1, d.key().2))
            .collect();
        assert_eq!(
            services,
            [
                "istio-system/istio-ingressgateway",
                "istio-system/istio-egressgateway"
            ]
        );
        let settings = m.mesh();
        let empty = Labels::new();
        for group in &groups {
            let l = launch(LaunchInputs {
                group,
                pod_name: "gw-1",
                ip: Ipv4Addr::new(10, 244, 0, 9),
                namespace_labels: &empty,
                mesh: &settings,
                ama: Path::new("/usr/bin/ama"),
                host_ip: Ipv4Addr::new(10, 244, 0, 1),
                node_name: "local",
            })
            .expect("launch");
            assert!(l.init.is_empty(), "no istio-init: {:?}", l.init);
            assert!(l.injected());
            assert_eq!(l.containers.len(), 1);
            let proxy = &l.containers[0];
            assert_eq!(proxy.role, Role::Sidecar);
            assert_eq!(
                proxy.argv,
                [
                    "/usr/bin/ama",
                    "proxy",
                    "router",
                    "--domain",
                    "istio-system.svc.cluster.local",
                    "--proxyLogLevel=warning",
                    "--proxyComponentLogLevel=misc:error",
                    "--log_output_level=default:info",
                ]
            );
            assert_eq!(proxy.user, Some((1337, 1337)));
            assert_eq!(
                proxy.probe,
                crate::launch::Probe::Http {
                    port: 15021,
                    path: "/healthz/ready".into()
                }
            );
            let env = |k: &str| {
                proxy
                    .env
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(env("POD_NAMESPACE").as_deref(), Some("istio-system"));
            assert_eq!(env("POD_NAME").as_deref(), Some("gw-1"));
            assert_eq!(env("PILOT_CERT_PROVIDER").as_deref(), Some("istiod"));
            assert!(
                l.pod.pointer("/metadata/labels/istio").is_some(),
                "{}",
                l.pod
            );
            assert!(runs_router(&l.pod));
        }
    }

    #[test]
    fn upstreams_are_a_ready_gateway_pods_target_ports() {
        let mut m = Manifests::default();
        add(&mut m, Profile::Demo);
        assert!(has_ingress(&m));
        let pod = |name: &str, ip: &str| {
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": "istio-system",
                    "labels": {"app": "istio-ingressgateway", "istio": "ingressgateway"},
                    "annotations": {"local.ama.dev/address": ip},
                },
                "spec": {"containers": [{"name": "istio-proxy", "image": "x"}]},
            })
        };
        let (a, b) = (pod("gw-a", "10.244.0.5"), pod("gw-b", "10.244.0.6"));
        let mut vips = control::model::VipAllocator::new();
        // Not ready: nowhere to go.
        let view = crate::mesh::view(&m, &[(&a, false)], &mut vips);
        assert!(ingress_upstreams(&view.objects, &[80, 443]).is_empty());
        // The ready one, at 8080 and 8443.
        let mut view = crate::mesh::view(&m, &[(&a, false), (&b, true)], &mut vips);
        let up = ingress_upstreams(&view.objects, &[80, 443]);
        assert_eq!(
            up,
            Upstreams::from([
                (80, "10.244.0.6:8080".parse().unwrap()),
                (443, "10.244.0.6:8443".parse().unwrap()),
            ])
        );
        mark_ingress(&mut view.objects, &[(80, 8080), (443, 8443)]);
        let services = view.services(&[], 0);
        let ingress = services.iter().find(|s| s.name == INGRESS_SERVICE).unwrap();
        assert_eq!(
            ingress
                .object
                .pointer("/status/loadBalancer/ingress/0/ip")
                .and_then(Value::as_str),
            Some("127.0.0.1")
        );
        assert_eq!(ingress.ports, ["15021/TCP", "80:8080/TCP", "443:8443/TCP"]);
        assert_eq!(ingress.service_type, "LoadBalancer");
    }

    #[test]
    fn minimal_runs_none_and_dir_objects_win() {
        let mut m = Manifests::default();
        add(&mut m, Profile::Minimal);
        assert!(m.docs.is_empty());
        let own = "apiVersion: v1\nkind: Service\nmetadata: {name: istio-ingressgateway, namespace: istio-system}\nspec:\n  selector: {istio: mine}\n  ports: [{port: 80}]\n";
        m.merge(parse_ok(own, "own.yaml"));
        add(&mut m, Profile::Default);
        let services: Vec<_> = m
            .docs
            .iter()
            .filter(|d| d.object.kind() == "Service")
            .collect();
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].source, "own.yaml");
        assert!(m.docs.iter().any(|d| d.object.kind() == "Deployment"));
    }
}
