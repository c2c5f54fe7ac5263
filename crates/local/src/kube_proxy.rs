//! kube-proxy's part under `ama up`: how a pod without a sidecar reaches Service VIPs.
//!
//! A pod with a sidecar never needs this (its capture rules hand every outbound connection to
//! the proxy, which resolves the VIP from its own config). A pod without one (its namespace is
//! not labelled `istio-injection=enabled`, or `sidecar.istio.io/inject: "false"`) connects to
//! the VIP itself; in a cluster kube-proxy DNATs that connection on the node. Here each such
//! pod's own network namespace gets the same rules ([`netfilter::services`]): `nat OUTPUT`
//! sends VIP:port to one ready endpoint's pod IP and target port, chosen at random as
//! kube-proxy's iptables mode does, and `filter OUTPUT` refuses a Service port that has no
//! ready endpoint. Doing it in the client's namespace keeps conntrack where both directions
//! pass (a DNAT on the bridge would see the replies bridged past it).
//!
//! The rules come from the same registry objects the control plane reads (Services with their
//! cluster IP, the EndpointSlices `ama up` writes), so a pod without a sidecar and a proxy see
//! the same endpoints. `ama up` syncs them on every publish where they changed: a new
//! Service, a pod that became ready or left, a scale. They go with the pod's namespace.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use netfilter::RestoreScript;
use netfilter::services::{Protocol, ServicePort};
use serde_json::Value;

use crate::Error;
use crate::probe;

/// The Service ports with a cluster IP among the registry `objects` (Services, and
/// EndpointSlices labelled `kubernetes.io/service-name`), each with its ready endpoints, in a
/// stable order. A headless or ExternalName Service has no VIP and no rules; a port of another
/// protocol than TCP, UDP or SCTP is left out.
pub fn service_ports(objects: &[Value]) -> Vec<ServicePort> {
    let text = |o: &Value, p: &str| o.pointer(p).and_then(Value::as_str).map(str::to_string);
    // (namespace, service) → the slices' (port name, protocol, number) and ready addresses.
    let mut slices: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for o in objects.iter().filter(|o| o["kind"] == "EndpointSlice") {
        if let (Some(ns), Some(service)) = (
            text(o, "/metadata/namespace"),
            text(o, "/metadata/labels/kubernetes.io~1service-name"),
        ) {
            slices.entry((ns, service)).or_default().push(o);
        }
    }
    let mut out = Vec::new();
    for s in objects.iter().filter(|o| o["kind"] == "Service") {
        if text(s, "/spec/type").as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(vip) = text(s, "/spec/clusterIP").and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let name = text(s, "/metadata/name").unwrap_or_default();
        let namespace = text(s, "/metadata/namespace").unwrap_or_else(|| "default".into());
        let of_service = slices
            .get(&(namespace.clone(), name.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for sp in s
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(port) = sp
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            let Some(protocol) =
                Protocol::from_kubernetes(sp.get("protocol").and_then(Value::as_str))
            else {
                continue;
            };
            let port_name = sp.get("name").and_then(Value::as_str).unwrap_or_default();
            let mut endpoints: Vec<SocketAddrV4> = of_service
                .iter()
                .flat_map(|slice| ready_endpoints(slice, port_name, protocol))
                .collect();
            endpoints.sort();
            endpoints.dedup();
            out.push(ServicePort {
                name: format!("{namespace}/{name}:{port_name}"),
                vip,
                port,
                protocol,
                endpoints,
            });
        }
    }
    out.sort_by_key(|p| (p.vip, p.port, p.protocol));
    out
}

/// The ready addresses of one EndpointSlice with the number of its port named `port_name`
/// (kube-proxy matches a Service port to a slice port by name and protocol).
fn ready_endpoints(slice: &Value, port_name: &str, protocol: Protocol) -> Vec<SocketAddrV4> {
    let Some(number) = slice
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| {
            p.get("name").and_then(Value::as_str).unwrap_or_default() == port_name
                && Protocol::from_kubernetes(p.get("protocol").and_then(Value::as_str))
                    == Some(protocol)
        })
        .and_then(|p| p.get("port")?.as_u64())
        .and_then(|p| u16::try_from(p).ok())
    else {
        return Vec::new();
    };
    slice
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        // Kubernetes: an endpoint without conditions.ready counts as ready.
        .filter(|e| e.pointer("/conditions/ready").and_then(Value::as_bool) != Some(false))
        .flat_map(|e| {
            e.get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|a| a.as_str()?.parse::<Ipv4Addr>().ok())
        .map(|ip| SocketAddrV4::new(ip, number))
        .collect()
}

/// The rules of `objects` for a pod without a sidecar, as one iptables-restore transaction.
pub fn rules(objects: &[Value]) -> RestoreScript {
    netfilter::services::script(&service_ports(objects))
}

/// Loads `rules` into the network namespace `netns` (from a thread that enters it).
pub fn sync(netns: &str, pod: &str, rules: &RestoreScript) -> Result<(), Error> {
    let rules = rules.clone();
    probe::in_netns(netns, move || netfilter::services::sync(&rules))
        .map_err(|source| Error::Io {
            path: std::path::Path::new("/run/netns").join(netns),
            source,
        })?
        .map_err(|source| Error::ServiceRules {
            pod: pod.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(service: &str, ns: &str, port: (&str, u16), ready: &[(&str, bool)]) -> Value {
        json!({"kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-x"), "namespace": ns,
                "labels": {"kubernetes.io/service-name": service}},
            "endpoints": ready.iter().map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r}})).collect::<Vec<_>>(),
            "ports": [{"name": port.0, "port": port.1, "protocol": "TCP"}]})
    }

    #[test]
    fn ready_endpoints_of_each_port_by_name_in_the_services_namespace() {
        let objects = vec![
            json!({"kind": "Service", "metadata": {"name": "httpbin", "namespace": "foo"},
                "spec": {"clusterIP": "10.96.0.3", "selector": {"app": "httpbin"},
                    "ports": [{"name": "http", "port": 8000, "targetPort": 8080},
                              {"name": "metrics", "port": 9000}]}}),
            // The same name in another namespace is another Service.
            json!({"kind": "Service", "metadata": {"name": "httpbin", "namespace": "bar"},
                "spec": {"clusterIP": "10.96.0.2", "ports": [{"name": "http", "port": 8000}]}}),
            json!({"kind": "Service", "metadata": {"name": "headless", "namespace": "foo"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
            slice(
                "httpbin",
                "foo",
                ("http", 8080),
                &[("10.244.0.6", true), ("10.244.0.7", false)],
            ),
            slice("httpbin", "foo", ("http", 8080), &[("10.244.0.5", true)]),
            slice("httpbin", "bar", ("http", 8080), &[("10.244.0.9", true)]),
        ];
        let ports = service_ports(&objects);
        let summary: Vec<(String, String, Vec<String>)> = ports
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    format!("{}:{}", p.vip, p.port),
                    p.endpoints.iter().map(ToString::to_string).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "bar/httpbin:http".to_string(),
                    "10.96.0.2:8000".to_string(),
                    vec!["10.244.0.9:8080".to_string()]
                ),
                (
                    "foo/httpbin:http".into(),
                    "10.96.0.3:8000".into(),
                    vec!["10.244.0.5:8080".into(), "10.244.0.6:8080".into()]
                ),
                // No slice port named "metrics": no endpoint, so refused.
                (
                    "foo/httpbin:metrics".into(),
                    "10.96.0.3:9000".into(),
                    vec![]
                ),
            ]
        );
        let text = rules(&objects).to_string();
        assert!(
            text.contains("--dport 9000 -m comment --comment \"foo/httpbin:metrics has no endpoints\" -j REJECT"),
            "{text}"
        );
    }

    #[test]
    fn what_ama_up_writes_becomes_rules() {
        use crate::manifests::{Manifests, parse_ok};
        let yaml = "
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 8000, targetPort: 8080}]
";
        let mut m = Manifests::default();
        m.merge(parse_ok(yaml, "t.yaml"));
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "httpbin-a", "namespace": "foo", "labels": {"app": "httpbin"},
                "annotations": {"local.ama.dev/address": "10.244.0.5"}},
            "spec": {"containers": [{"name": "httpbin", "ports": [{"containerPort": 8080}]}]}});
        let view = crate::mesh::view(
            &m,
            &[(&pod, true)],
            &mut control::model::VipAllocator::new(),
        );
        let ports = service_ports(&view.objects);
        assert_eq!(ports.len(), 1, "{ports:?}");
        assert_eq!(ports[0].vip.octets()[..2], [10, 96]);
        assert_eq!(
            ports[0].endpoints,
            [SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 5), 8080)]
        );
        // Not ready: refused.
        let view = crate::mesh::view(
            &m,
            &[(&pod, false)],
            &mut control::model::VipAllocator::new(),
        );
        assert!(service_ports(&view.objects)[0].endpoints.is_empty());
    }
}
