//! Egress model tests: ServiceEntry → Services, their visibility, the mesh's
//! `outboundTrafficPolicy`, and VirtualServices / DestinationRules naming ServiceEntry hosts.

use std::net::IpAddr;

use api::objects::{Object, parse_stream};
use pretty_assertions::assert_eq;
use xds::{OutboundTrafficPolicy, Protocol, Resolution, TlsMode};

use super::*;
use crate::translate::{ProxyKey, proxy_resources};

fn objects(yaml: &str) -> Vec<Object> {
    let (objects, errors) = parse_stream(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    objects
}

fn model(yaml: &str) -> Model {
    Model::build(&objects(yaml), &mut VipAllocator::new())
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn proxy(ns: &str) -> ProxyKey {
    ProxyKey {
        ip: ip("10.244.9.9"),
        pod_name: "sleep".into(),
        namespace: ns.into(),
    }
}

const EXTERNAL: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext, namespace: default}
spec:
  hosts: [httpbin.org, www.httpbin.org]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {number: 80, name: http-port, protocol: HTTP}
  - {number: 443, name: https, protocol: HTTPS, targetPort: 8443}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: wikipedia, namespace: default}
spec:
  hosts: ["*.wikipedia.org"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db.internal.example]
  addresses: [240.0.0.10, 240.0.1.0/24, 240.0.0.11/32]
  location: MESH_INTERNAL
  resolution: STATIC
  subjectAltNames: ["spiffe://cluster.local/ns/data/sa/db-fallback"]
  ports: [{number: 27017, name: mongo, protocol: MONGO}]
  endpoints:
  - {address: 10.0.0.7, ports: {mongo: 27018}, labels: {security.istio.io/tlsMode: istio}, serviceAccount: db}
  - {address: 10.0.0.8}
"#;

#[test]
fn service_entries_become_services_per_host() {
    let m = model(EXTERNAL);
    let hosts: Vec<_> = m
        .services
        .iter()
        .map(|s| s.resource.hostname.as_str())
        .collect();
    assert_eq!(
        hosts,
        [
            "*.wikipedia.org",
            "db.internal.example",
            "httpbin.org",
            "www.httpbin.org"
        ]
    );
    let httpbin = m.service("httpbin.org").expect("httpbin.org");
    assert_eq!(httpbin.name, "httpbin.org");
    assert_eq!(httpbin.namespace, "default");
    assert!(httpbin.mesh_external);
    assert_eq!(httpbin.resolution, Resolution::Dns);
    assert!(httpbin.vips.is_empty());
    assert_eq!(httpbin.ports[0].effective_protocol(), Protocol::Http);
    assert_eq!(httpbin.ports[1].effective_protocol(), Protocol::Tls);
    assert_eq!(httpbin.ports[1].target_port, Some(8443));
    // DNS without endpoints: the host itself is resolved.
    assert_eq!(httpbin.dns_endpoints.len(), 1);
    assert_eq!(httpbin.dns_endpoints[0].hostname, "httpbin.org");

    let wiki = m.service("*.wikipedia.org").expect("wildcard");
    assert_eq!(wiki.resolution, Resolution::None);
    assert!(wiki.mesh_external, "MESH_EXTERNAL is the default location");
    assert!(wiki.endpoints.is_empty() && wiki.dns_endpoints.is_empty());

    let db = m.service("db.internal.example").expect("db");
    assert!(!db.mesh_external);
    assert_eq!(db.vips, vec![ip("240.0.0.10"), ip("240.0.0.11")]);
    assert_eq!(db.ports[0].effective_protocol(), Protocol::Tcp);
    assert_eq!(db.endpoints[0].ports[&27017], 27018);
    assert_eq!(db.endpoints[0].tls_mode, TlsMode::Istio);
    assert_eq!(
        db.endpoints[0].identity.as_deref(),
        Some("spiffe://cluster.local/ns/data/sa/db")
    );
    assert_eq!(db.endpoints[1].tls_mode, TlsMode::Disabled);
    // Without a service account, the ServiceEntry's one SPIFFE name is the identity.
    assert_eq!(
        db.endpoints[1].identity.as_deref(),
        Some("spiffe://cluster.local/ns/data/sa/db-fallback")
    );
    assert!(
        m.warnings
            .iter()
            .any(|w| w.object == "ServiceEntry data/db" && w.message.contains("240.0.1.0/24")),
        "{:?}",
        m.warnings
    );
    // What a proxy receives validates (wildcard hosts and all).
    proxy_resources(&m, &proxy("default"))
        .validate()
        .expect("valid resources");
}

#[test]
fn service_entry_export_to_limits_the_namespaces_that_see_it() {
    let m = model(EXTERNAL);
    let hosts = |ns: &str| -> Vec<String> {
        proxy_resources(&m, &proxy(ns))
            .services
            .into_iter()
            .map(|s| s.hostname)
            .collect()
    };
    assert!(hosts("default").contains(&"*.wikipedia.org".to_string()));
    assert!(!hosts("other").contains(&"*.wikipedia.org".to_string()));
    assert!(hosts("other").contains(&"httpbin.org".to_string()));
}

#[test]
fn mesh_external_workload_selector_endpoints_take_no_mtls() {
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata:
  name: vm-1
  namespace: default
  labels: {app: legacy}
  annotations: {local.ama.dev/address: "10.244.0.20"}
spec:
  containers: [{name: app, image: app, ports: [{containerPort: 9090, name: http}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: legacy}}
"#;
    let m = model(yaml);
    let legacy = m.service("legacy.example").expect("service");
    assert_eq!(legacy.endpoints.len(), 1, "{:?}", m.warnings);
    assert_eq!(legacy.endpoints[0].address, ip("10.244.0.20"));
    assert_eq!(legacy.endpoints[0].ports[&80], 9090);
    assert_eq!(legacy.endpoints[0].tls_mode, TlsMode::Istio);
    let external = model(&yaml.replace("MESH_INTERNAL", "MESH_EXTERNAL"));
    let legacy = external.service("legacy.example").expect("service");
    assert_eq!(legacy.endpoints[0].tls_mode, TlsMode::Disabled);
}

#[test]
fn virtual_services_and_destination_rules_name_service_entry_hosts() {
    let yaml = format!(
        r#"{EXTERNAL}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [httpbin.org]
  http:
  - timeout: 3s
    route: [{{destination: {{host: httpbin.org}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin, namespace: default}}
spec:
  host: httpbin.org
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: SIMPLE, sni: httpbin.org}}
"#
    );
    let m = model(&yaml);
    let r = proxy_resources(&m, &proxy("default"));
    r.validate().expect("valid");
    let routes = r
        .http_routes
        .iter()
        .find(|h| h.hosts == ["httpbin.org"])
        .expect("routes for the host");
    assert_eq!(routes.http[0].timeout_ms, Some(3000));
    let policy = r
        .traffic_policies
        .iter()
        .find(|p| p.host == "httpbin.org")
        .expect("policy for the host");
    let tls = policy.effective(443, None).tls.expect("tls");
    assert_eq!(tls.mode, xds::ClientTlsMode::Simple);
    assert_eq!(tls.sni.as_deref(), Some("httpbin.org"));
}

#[test]
fn a_host_of_a_kubernetes_service_stays_the_services() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.default.svc.cluster.local, web.example]
  addresses: [10.96.0.50]
  resolution: NONE
  ports: [{number: 80, name: http, protocol: HTTP}]
"#;
    let m = model(yaml);
    assert!(
        !m.service("web.default.svc.cluster.local")
            .expect("svc")
            .is_service_entry()
    );
    let se = m.service("web.example").expect("se host");
    assert!(se.vips.is_empty(), "the VIP:port is the Service's");
    assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
    proxy_resources(&m, &proxy("default"))
        .validate()
        .expect("valid");
}

#[test]
fn mesh_config_outbound_traffic_policy_reaches_every_proxy() {
    assert_eq!(
        model(EXTERNAL).outbound_traffic_policy,
        OutboundTrafficPolicy::AllowAny
    );
    let yaml = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
"#;
    let m = model(yaml);
    assert_eq!(
        m.outbound_traffic_policy,
        OutboundTrafficPolicy::RegistryOnly
    );
    let r = proxy_resources(&m, &proxy("default"));
    assert_eq!(r.outbound_policy(), OutboundTrafficPolicy::RegistryOnly);
    assert_eq!(
        r.node.expect("self").outbound_traffic_policy,
        OutboundTrafficPolicy::RegistryOnly
    );
}

const TWO_NAMESPACES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: backend}
spec:
  clusterIP: 10.96.0.51
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: istiod, namespace: istio-system}
spec:
  clusterIP: 10.96.0.52
  ports: [{name: grpc, port: 15012}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: backend}
spec:
  hosts: [api.backend.svc.cluster.local]
  http: [{timeout: 1s, route: [{destination: {host: api.backend.svc.cluster.local}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: backend}
spec:
  host: api.backend.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
---
apiVersion: v1
kind: Pod
metadata:
  name: sleep
  namespace: default
  labels: {app: sleep}
  annotations: {local.ama.dev/address: "10.244.9.9"}
spec:
  containers: [{name: app, image: app}]
"#;

fn service_hosts(r: &xds::ProxyResources) -> Vec<&str> {
    r.services.iter().map(|s| s.hostname.as_str()).collect()
}

#[test]
fn sidecar_egress_hosts_narrow_what_a_proxy_sees() {
    let all = model(TWO_NAMESPACES);
    let r = proxy_resources(&all, &proxy("default"));
    assert_eq!(service_hosts(&r).len(), 3);
    assert_eq!(r.http_routes.len(), 1);
    assert_eq!(r.traffic_policies.len(), 1);

    // The namespace's Sidecar: its own namespace and istio-system only.
    let yaml = format!(
        r#"{TWO_NAMESPACES}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  egress: [{{hosts: ["./*", "istio-system/*"]}}]
"#
    );
    let m = model(&yaml);
    let r = proxy_resources(&m, &proxy("default"));
    r.validate().expect("valid");
    assert_eq!(
        service_hosts(&r),
        [
            "istiod.istio-system.svc.cluster.local",
            "web.default.svc.cluster.local"
        ]
    );
    assert!(r.http_routes.is_empty(), "{:?}", r.http_routes);
    assert!(r.traffic_policies.is_empty(), "{:?}", r.traffic_policies);
    // Another namespace has no Sidecar: it sees everything.
    assert_eq!(
        service_hosts(&proxy_resources(&m, &proxy("backend"))).len(),
        3
    );

    // A Sidecar selecting the workload wins over the namespace's; `backend/api...` names one host.
    let yaml = format!(
        r#"{yaml}
---
apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata: {{name: sleep, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: sleep}}}}
  egress: [{{hosts: ["backend/api.backend.svc.cluster.local"]}}]
"#
    );
    let m = model(&yaml);
    let r = proxy_resources(&m, &proxy("default"));
    assert_eq!(service_hosts(&r), ["api.backend.svc.cluster.local"]);
    assert_eq!(r.http_routes.len(), 1);
    assert_eq!(r.traffic_policies.len(), 1);
    // A proxy the selector does not pick keeps the namespace's Sidecar.
    let other = ProxyKey {
        ip: ip("10.244.9.10"),
        pod_name: "other".into(),
        namespace: "default".into(),
    };
    assert_eq!(service_hosts(&proxy_resources(&m, &other)).len(), 2);
    // The view keys tell the two apart.
    let me = m.workloads.iter().find(|w| w.name == "sleep");
    let key = crate::translate::view_key(&m, &proxy("default"), me);
    assert_eq!(key.sidecar.as_deref(), Some("default/sleep"));
}

#[test]
fn root_namespace_sidecar_is_the_default_and_overrides_the_outbound_policy() {
    let yaml = format!(
        r#"{TWO_NAMESPACES}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: istio-system}}
spec:
  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
  egress: [{{hosts: ["./*", "~/*"]}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: open, namespace: backend}}
spec:
  outboundTrafficPolicy: {{mode: ALLOW_ANY}}
  egress: [{{hosts: ["*/*"]}}]
"#
    );
    let m = model(&yaml);
    // `.` is the proxy's own namespace under the root namespace's Sidecar.
    let r = proxy_resources(&m, &proxy("default"));
    assert_eq!(service_hosts(&r), ["web.default.svc.cluster.local"]);
    assert_eq!(r.outbound_policy(), OutboundTrafficPolicy::RegistryOnly);
    let r = proxy_resources(&m, &proxy("backend"));
    assert_eq!(service_hosts(&r).len(), 3);
    assert_eq!(r.outbound_policy(), OutboundTrafficPolicy::AllowAny);
}

/// Istio's "Egress TLS Origination" task, as written there.
#[test]
fn egress_tls_origination_task_translates() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: edition-cnn-com}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}
  - {number: 443, name: https-port, protocol: HTTPS}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: edition-cnn-com}
spec:
  host: edition.cnn.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE}
"#;
    let m = model(yaml);
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    let r = proxy_resources(&m, &proxy("default"));
    r.validate().expect("valid");
    let svc = &r.services[0];
    assert_eq!(svc.hostname, "edition.cnn.com");
    assert_eq!(svc.ports[0].target_port, Some(443));
    assert_eq!(svc.dns_endpoints[0].hostname, "edition.cnn.com");
    let tls = r.traffic_policies[0]
        .effective(80, None)
        .tls
        .expect("port 80 originates TLS");
    assert_eq!(tls.mode, xds::ClientTlsMode::Simple);
    assert!(r.traffic_policies[0].effective(443, None).tls.is_none());
}
