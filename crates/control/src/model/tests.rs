//! Model unit tests: objects in, model out.

use std::net::IpAddr;

use api::objects::{Object, parse_stream};
use pretty_assertions::assert_eq;
use xds::{MtlsMode, Protocol, TlsMode};

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

const NAMESPACE_ENABLED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio-injection: enabled}}
"#;

const HTTPBIN: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin-deployment
  labels: {app: httpbin}
  annotations: {local.ama.dev/addresses: "10.244.0.3,10.244.0.4"}
spec:
  replicas: 2
  selector: {matchLabels: {app: httpbin}}
  template:
    metadata: {labels: {app: httpbin, version: v1}}
    spec:
      serviceAccountName: httpbin
      containers:
      - name: httpbin
        image: kennethreitz/httpbin:latest
        ports: [{containerPort: 80, name: http-web}]
---
apiVersion: v1
kind: Service
metadata: {name: httpbin-service}
spec:
  selector: {app: httpbin}
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 80}]
"#;

fn pod(name: &str, ns: &str, labels: &str, address: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {labels}
  annotations: {{local.ama.dev/address: "{address}"}}
spec:
  containers: [{{name: app, image: app, ports: [{{containerPort: 8080, name: web}}]}}]
"#
    )
}

#[test]
fn deployment_replicas_expand_to_workloads() {
    let m = model(&format!("{NAMESPACE_ENABLED}---{HTTPBIN}"));
    assert_eq!(m.workloads.len(), 2, "{:?}", m.warnings);
    let w = &m.workloads[0];
    let hash = w.labels["pod-template-hash"].clone();
    assert_eq!(hash.len(), 10);
    assert_eq!(w.name, format!("httpbin-deployment-{hash}-0"));
    assert_eq!(m.workloads[1].name, format!("httpbin-deployment-{hash}-1"));
    assert_eq!(w.uid, format!("Kubernetes//Pod/default/{}", w.name));
    assert_eq!(w.addresses, vec![ip("10.244.0.3")]);
    assert_eq!(m.workloads[1].addresses, vec![ip("10.244.0.4")]);
    assert_eq!(w.workload_name.as_deref(), Some("httpbin-deployment"));
    assert_eq!(w.service_account, "httpbin");
    assert_eq!(
        w.identity.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/httpbin")
    );
    assert_eq!(w.canonical_name.as_deref(), Some("httpbin"));
    assert_eq!(w.canonical_revision.as_deref(), Some("v1"));
    assert_eq!(w.ports[0].port, 80);
    assert_eq!(w.ports[0].name.as_deref(), Some("http-web"));
    assert_eq!(w.tls_mode, TlsMode::Istio);

    // Editing the addresses keeps the names (the hash is of the template only).
    let edited = HTTPBIN
        .replace("10.244.0.3,10.244.0.4", "10.244.0.3,10.244.0.4,10.244.0.5")
        .replace("replicas: 2", "replicas: 3");
    let m3 = model(&edited);
    assert_eq!(m3.workloads.len(), 3);
    assert_eq!(m3.workloads[1].name, m.workloads[1].name);
    assert!(m3.warnings.is_empty(), "{:?}", m3.warnings);

    // More addresses than replicas: `replicas` pods, and a warning.
    let m1 = model(&HTTPBIN.replace("replicas: 2", "replicas: 1"));
    assert_eq!(m1.workloads.len(), 1);
    assert!(
        m1.warnings[0]
            .message
            .contains("1 replicas but 2 addresses"),
        "{:?}",
        m1.warnings
    );

    // A template edit renames the pods, as a rollout does.
    let m2 = model(&HTTPBIN.replace("image: kennethreitz/httpbin:latest", "image: httpbin:2"));
    assert_ne!(m2.workloads[0].name, m.workloads[0].name);

    // A StatefulSet's pods are <name>-<i>.
    let sts = HTTPBIN
        .replace("kind: Deployment", "kind: StatefulSet")
        .replace("name: httpbin-deployment", "name: db");
    let ms = model(&sts);
    let names: Vec<_> = ms.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["db-0", "db-1"]);
}

#[test]
fn bad_address_is_a_warning() {
    let m = model(&HTTPBIN.replace("10.244.0.3,10.244.0.4", "10.244.0.3,nope"));
    assert!(m.workloads.is_empty());
    assert!(
        m.warnings
            .iter()
            .any(|w| w.object == "Deployment default/httpbin-deployment"
                && w.message.contains("\"nope\" is not an IP address")),
        "{:?}",
        m.warnings
    );
}

#[test]
fn service_endpoints_by_selector() {
    let yaml = format!(
        "{NAMESPACE_ENABLED}---{HTTPBIN}{}{}{}",
        pod("other", "default", "{app: other}", "10.244.0.9"),
        pod("elsewhere", "prod", "{app: httpbin}", "10.244.1.1"),
        pod("extra", "default", "{app: httpbin, tier: x}", "10.244.0.8"),
    );
    let m = model(&yaml);
    let s = m
        .service("httpbin-service.default.svc.cluster.local")
        .expect("service");
    let mut addresses: Vec<_> = s.endpoints.iter().map(|e| e.address).collect();
    addresses.sort();
    // Same namespace, all selector labels (extra labels are fine); not `other`, not `prod`.
    assert_eq!(
        addresses,
        [ip("10.244.0.3"), ip("10.244.0.4"), ip("10.244.0.8")]
    );
    let e = s
        .endpoints
        .iter()
        .find(|e| e.address == ip("10.244.0.3"))
        .expect("endpoint");
    assert_eq!(e.tls_mode, TlsMode::Istio);
    assert_eq!(e.labels["app"], "httpbin");
    assert!(
        e.workload_uid
            .as_deref()
            .is_some_and(|u| u.starts_with("Kubernetes//Pod/default/httpbin-deployment-"))
    );
    assert_eq!(s.ports[0].protocol, Protocol::Http);
    assert_eq!(s.ports[0].target_port, Some(80));
    assert_eq!(s.namespace, "default");
}

#[test]
fn named_target_port_resolves_per_workload() {
    let yaml = format!(
        r#"{}{}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: web}}]
"#,
        pod("a", "default", "{app: web}", "10.0.0.1"),
        pod("b", "default", "{app: web}", "10.0.0.2").replace("name: web}", "name: other}"),
    );
    let m = model(&yaml);
    let s = m.service("web.default.svc.cluster.local").expect("service");
    assert_eq!(s.ports[0].target_port, None);
    // `b` has no port named `web`: not an endpoint of a service whose ports are all named.
    assert_eq!(s.endpoints.len(), 1);
    assert_eq!(s.endpoints[0].address, ip("10.0.0.1"));
    assert_eq!(s.endpoints[0].ports.get(&80), Some(&8080));
    assert_eq!(s.endpoint_port(&s.endpoints[0], &s.ports[0]), 8080);
}

#[test]
fn vips_are_declared_or_stable() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: prod}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: c}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, ports: [{port: 80}]}
"#;
    let objs = objects(yaml);
    let first = Model::build(&objs, &mut VipAllocator::new());
    // A restart (fresh allocator, other object order) gives the same VIPs.
    let reversed: Vec<Object> = objs.iter().rev().cloned().collect();
    let again = Model::build(&reversed, &mut VipAllocator::new());
    let vips = |m: &Model| {
        m.services
            .iter()
            .map(|s| (s.resource.hostname.clone(), s.resource.vips.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(vips(&first), vips(&again));
    let a = first.service("a.default.svc.cluster.local").expect("a");
    assert!(a.vips[0].to_string().starts_with("10.96."), "{:?}", a.vips);
    let b = first.service("b.prod.svc.cluster.local").expect("b");
    assert_ne!(a.vips, b.vips);
    assert_eq!(
        first
            .service("c.default.svc.cluster.local")
            .expect("c")
            .vips,
        vec![ip("10.96.0.10")]
    );
    assert!(
        first
            .service("headless.default.svc.cluster.local")
            .expect("headless")
            .vips
            .is_empty()
    );

    // A duplicate declared VIP:port is left out of the later service, with a warning.
    let dup = format!(
        "{yaml}---\napiVersion: v1\nkind: Service\nmetadata: {{name: d}}\nspec: {{clusterIP: 10.96.0.10, ports: [{{port: 80}}]}}\n"
    );
    let m = model(&dup);
    assert!(
        m.service("d.default.svc.cluster.local")
            .expect("d")
            .vips
            .is_empty()
    );
    assert!(
        m.warnings
            .iter()
            .any(|w| w.message.contains("10.96.0.10:80 is already used"))
    );
}

#[test]
fn tls_mode_follows_injection_rules() {
    let yaml = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: ns-on, labels: {{istio-injection: enabled}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: ns-off}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: rev, labels: {{istio.io/rev: canary}}}}
{}{}{}{}{}{}{}"#,
        pod("enabled", "ns-on", "{app: a}", "10.0.0.1"),
        pod(
            "opted-out",
            "ns-on",
            "{app: a, sidecar.istio.io/inject: \"false\"}",
            "10.0.0.2"
        ),
        pod("plain", "ns-off", "{app: a}", "10.0.0.3"),
        pod(
            "opted-in",
            "ns-off",
            "{app: a, sidecar.istio.io/inject: \"true\"}",
            "10.0.0.4"
        ),
        pod("system", "kube-system", "{app: a}", "10.0.0.5"),
        pod("other-rev", "rev", "{app: a}", "10.0.0.6"),
        pod(
            "labelled",
            "ns-off",
            "{app: a, security.istio.io/tlsMode: istio}",
            "10.0.0.7"
        ),
    );
    let injected = format!(
        "{yaml}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: injected, namespace: ns-off, annotations: {{local.ama.dev/address: 10.0.0.8}}}}\nspec: {{containers: [{{name: app}}, {{name: istio-proxy}}]}}\n"
    );
    let m = model(&injected);
    let mode = |name: &str| {
        m.workloads
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.tls_mode)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(mode("enabled"), TlsMode::Istio);
    assert_eq!(mode("opted-out"), TlsMode::Disabled);
    assert_eq!(mode("plain"), TlsMode::Disabled);
    assert_eq!(mode("opted-in"), TlsMode::Istio);
    assert_eq!(mode("system"), TlsMode::Disabled);
    assert_eq!(mode("other-rev"), TlsMode::Disabled);
    assert_eq!(mode("labelled"), TlsMode::Istio);
    assert_eq!(mode("injected"), TlsMode::Istio);
}

#[test]
fn peer_authentication_precedence() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns-wide, namespace: foo}
spec: {mtls: {mode: UNSET}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: zz-second, namespace: foo}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {"8080": {mode: UNSET}, "9000": {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: bar}
spec:
  selector: {matchLabels: {app: db}}
"#;
    let m = model(yaml);
    let find = |ns: &str, name: &str| {
        m.authorizations
            .iter()
            .find(|a| {
                a.namespace == ns && a.name == format!("converted_peer_authentication_{name}")
            })
            .and_then(|a| a.peer_authentication.clone())
    };
    let mesh = find("istio-system", "default").expect("mesh");
    assert_eq!(mesh.mode, MtlsMode::Strict);
    // UNSET inherits the mesh's mode.
    assert_eq!(find("foo", "ns-wide").expect("ns").mode, MtlsMode::Strict);
    // A second namespace-wide policy is ignored and reported.
    assert_eq!(find("foo", "zz-second"), None);
    assert!(
        m.warnings
            .iter()
            .any(|w| w.object == "PeerAuthentication foo/zz-second")
    );
    // A workload policy: its own mode; ports inherit it or set theirs.
    let web = find("foo", "web").expect("web");
    assert_eq!(web.mode, MtlsMode::Permissive);
    assert_eq!(web.port_level_mtls.get(&8080), Some(&MtlsMode::Permissive));
    assert_eq!(web.port_level_mtls.get(&9000), Some(&MtlsMode::Disable));
    // No mode and no namespace policy: the mesh's.
    assert_eq!(find("bar", "db").expect("db").mode, MtlsMode::Strict);
    let db = m
        .authorizations
        .iter()
        .find(|a| a.namespace == "bar")
        .expect("db");
    assert_eq!(db.selector["app"], "db");
    assert!(db.policy.is_none());
}

#[test]
fn virtual_service_and_destination_rule() {
    let yaml = format!(
        r#"{HTTPBIN}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin}}
spec:
  hosts: [httpbin-service]
  http:
  - name: headers
    match: [{{uri: {{prefix: /headers}}, headers: {{X-User: {{exact: jason}}}}}}]
    route: [{{destination: {{host: httpbin-service, subset: v1, port: {{number: 80}}}}}}]
    timeout: 1.5s
    retries: {{attempts: 3, perTryTimeout: 500ms, retryOn: "5xx"}}
  - name: regex-only
    match: [{{uri: {{regex: "/a.*"}}}}]
    route: [{{destination: {{host: httpbin-service}}}}]
  - route:
    - {{destination: {{host: httpbin-service}}, weight: 90}}
    - {{destination: {{host: other.prod.svc.cluster.local}}, weight: 10}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin}}
spec:
  host: httpbin-service
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    connectionPool: {{tcp: {{connectTimeout: 2s}}, http: {{http2MaxRequests: 10}}}}
    outlierDetection: {{consecutive5xxErrors: 3, interval: 10s, baseEjectionTime: 30s}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ingress-only}}
spec:
  hosts: [httpbin-service]
  gateways: [my-gateway]
  http: [{{route: [{{destination: {{host: httpbin-service}}}}]}}]
"#
    );
    let m = model(&yaml);
    assert_eq!(
        m.http_routes.len(),
        1,
        "gateway-only routes are not for sidecars"
    );
    let r = &m.http_routes[0].resource;
    assert_eq!(r.name, "default/httpbin");
    assert_eq!(r.hosts, ["httpbin-service.default.svc.cluster.local"]);
    assert_eq!(r.http.len(), 3);
    assert_eq!(
        r.http[1].matches[0].uri,
        Some(xds::StringMatch::Regex("/a.*".into()))
    );
    let first = &r.http[0];
    assert_eq!(
        first.matches[0].uri,
        Some(xds::StringMatch::Prefix("/headers".into()))
    );
    assert_eq!(
        first.matches[0].headers["x-user"],
        xds::StringMatch::Exact("jason".into())
    );
    assert_eq!(
        first.route[0].host,
        "httpbin-service.default.svc.cluster.local"
    );
    assert_eq!(first.route[0].subset.as_deref(), Some("v1"));
    assert_eq!(first.route[0].weight, 100);
    assert_eq!(first.timeout_ms, Some(1500));
    let retries = first.retries.as_ref().expect("retries");
    assert_eq!(
        (retries.attempts, retries.per_try_timeout_ms),
        (3, Some(500))
    );
    assert_eq!(r.http[2].route[1].weight, 10);

    let p = &m.traffic_policies[0].resource;
    assert_eq!(p.host, "httpbin-service.default.svc.cluster.local");
    let s = &p.policy.settings;
    assert_eq!(
        s.load_balancer.as_ref().and_then(|lb| lb.simple),
        Some(xds::LbPolicy::RoundRobin)
    );
    let pool = s.connection_pool.as_ref().expect("pool");
    assert_eq!(pool.tcp.connect_timeout_ms, Some(2000));
    assert_eq!(pool.http.max_requests, Some(10));
    let o = s.outlier_detection.as_ref().expect("outlier");
    assert_eq!(
        (o.consecutive_5xx_errors, o.base_ejection_time_ms),
        (Some(3), Some(30_000))
    );
    assert_eq!(m.warnings, []);
}

#[test]
fn translation_per_proxy() {
    let yaml = format!(
        r#"{NAMESPACE_ENABLED}---{HTTPBIN}{}
---
apiVersion: v1
kind: Service
metadata:
  name: private
  namespace: prod
  annotations: {{networking.istio.io/exportTo: "."}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: only-ubuntu}}
spec:
  host: httpbin-service
  workloadSelector: {{matchLabels: {{app: ubuntu}}}}
  trafficPolicy: {{loadBalancer: {{simple: RANDOM}}}}
"#,
        pod("ubuntu", "default", "{app: ubuntu}", "10.244.0.5"),
    );
    let m = model(&yaml);
    let ubuntu = ProxyKey {
        ip: ip("10.244.0.5"),
        pod_name: "ubuntu".into(),
        namespace: "default".into(),
    };
    let r = proxy_resources(&m, &ubuntu);
    r.validate().expect("valid resources");
    let me = r.node.as_ref().expect("self");
    assert_eq!(me.uid.as_deref(), Some("Kubernetes//Pod/default/ubuntu"));
    assert_eq!(r.workloads.len(), 3);
    let hosts: Vec<_> = r.services.iter().map(|s| s.hostname.as_str()).collect();
    assert_eq!(
        hosts,
        ["httpbin-service.default.svc.cluster.local"],
        "prod/private is not exported"
    );
    assert_eq!(
        r.traffic_policies.len(),
        1,
        "selected by the DestinationRule"
    );

    let httpbin = m
        .workloads
        .iter()
        .find(|w| w.name.starts_with("httpbin"))
        .expect("httpbin");
    let other = ProxyKey {
        ip: httpbin.addresses[0],
        pod_name: httpbin.name.clone(),
        namespace: "default".into(),
    };
    let r = proxy_resources(&m, &other);
    assert!(r.traffic_policies.is_empty(), "not selected");
    let in_prod = ProxyKey {
        ip: ip("10.9.9.9"),
        pod_name: "unknown".into(),
        namespace: "prod".into(),
    };
    let r = proxy_resources(&m, &in_prod);
    r.validate().expect("valid resources");
    assert_eq!(
        r.node.as_ref().and_then(|n| n.uid.clone()),
        None,
        "unknown pod"
    );
    assert_eq!(r.services.len(), 2);
}

#[test]
fn export_to() {
    assert!(ExportTo::parse(["*"], "a").visible_to("b"));
    assert!(ExportTo::parse(Vec::<&str>::new(), "a").visible_to("b"));
    let dot = ExportTo::parse(["."], "a");
    assert!(dot.visible_to("a") && !dot.visible_to("b"));
    assert!(!ExportTo::parse(["~"], "a").visible_to("a"));
    assert!(ExportTo::parse([".", "b"], "a").visible_to("b"));
}

/// A port-level DISABLE on one of two ports: the endpoint keeps mTLS and lists the Service port
/// that takes plaintext (Istio's per-port EDS), keyed by the Service port, not the target port.
#[test]
fn a_port_level_disable_makes_that_service_port_plaintext() {
    let two_ports = HTTPBIN
        .replace(
            "ports: [{containerPort: 80, name: http-web}]",
            "ports: [{containerPort: 8080}, {containerPort: 9090}]",
        )
        .replace(
            "ports: [{name: http, protocol: TCP, port: 80, targetPort: 80}]",
            "ports: [{name: http, port: 8000, targetPort: 8080}, {name: http-alt, port: 9000, targetPort: 9090}]",
        );
    let policy = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
                  metadata: {name: default, namespace: default}\n\
                  spec: {selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}, \
                  portLevelMtls: {\"8080\": {mode: DISABLE}}}\n";
    let m = model(&format!("{NAMESPACE_ENABLED}---{two_ports}---\n{policy}"));
    let svc = m
        .service("httpbin-service.default.svc.cluster.local")
        .expect("service");
    assert_eq!(svc.endpoints.len(), 2);
    for ep in &svc.endpoints {
        assert_eq!(ep.tls_mode, TlsMode::Istio);
        assert_eq!(
            ep.plaintext_ports.iter().copied().collect::<Vec<_>>(),
            [8000]
        );
    }
}

/// Auto mTLS sends plaintext to an endpoint whose PeerAuthentication is DISABLE on every port
/// its Service reaches, as Istio's EDS does; any other mode keeps mTLS.
#[test]
fn endpoints_of_mtls_disabled_workloads_are_plaintext() {
    let tls_modes = |extra: &str| -> Vec<TlsMode> {
        let m = model(&format!("{NAMESPACE_ENABLED}---{HTTPBIN}---\n{extra}"));
        m.service("httpbin-service.default.svc.cluster.local")
            .expect("service")
            .endpoints
            .iter()
            .map(|e| e.tls_mode)
            .collect()
    };
    let pa = |ns: &str, selector: &str, spec: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {{name: pa, namespace: {ns}}}\nspec: {{{selector}{spec}}}\n"
        )
    };
    let httpbin = "selector: {matchLabels: {app: httpbin}}, ";
    let istio = vec![TlsMode::Istio; 2];
    let disabled = vec![TlsMode::Disabled; 2];

    // Workload, namespace and mesh-wide DISABLE.
    assert_eq!(
        tls_modes(&pa("default", httpbin, "mtls: {mode: DISABLE}")),
        disabled
    );
    assert_eq!(
        tls_modes(&pa("default", "", "mtls: {mode: DISABLE}")),
        disabled
    );
    assert_eq!(
        tls_modes(&pa("istio-system", "", "mtls: {mode: DISABLE}")),
        disabled
    );
    // Another workload's or another namespace's policy does not apply.
    assert_eq!(
        tls_modes(&pa(
            "default",
            "selector: {matchLabels: {app: other}}, ",
            "mtls: {mode: DISABLE}"
        )),
        istio
    );
    assert_eq!(tls_modes(&pa("prod", "", "mtls: {mode: DISABLE}")), istio);
    // STRICT and PERMISSIVE keep mTLS; a workload STRICT wins over a namespace DISABLE.
    assert_eq!(tls_modes(&pa("default", "", "mtls: {mode: STRICT}")), istio);
    let ns_disable = pa("default", "", "mtls: {mode: DISABLE}");
    let workload_strict =
        pa("default", httpbin, "mtls: {mode: STRICT}").replace("name: pa", "name: pa-httpbin");
    assert_eq!(
        tls_modes(&format!("{ns_disable}---\n{workload_strict}")),
        istio
    );
    // Port level: DISABLE on the target port (80) of the Service's only port.
    assert_eq!(
        tls_modes(&pa(
            "default",
            httpbin,
            "mtls: {mode: STRICT}, portLevelMtls: {\"80\": {mode: DISABLE}}"
        )),
        disabled
    );
    assert_eq!(
        tls_modes(&pa(
            "default",
            httpbin,
            "mtls: {mode: DISABLE}, portLevelMtls: {\"80\": {mode: PERMISSIVE}}"
        )),
        istio
    );
}
