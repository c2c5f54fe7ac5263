//! Gateway model tests: Gateways and VirtualServices in, a gateway pod's listeners out.

use api::objects::{Object, parse_stream};

use super::*;
use crate::translate::{ProxyKey, router_resources};

fn model(yaml: &str) -> Model {
    let (objects, errors) = parse_stream(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    let objects: Vec<Object> = objects;
    Model::build(&objects, &mut VipAllocator::new())
}

const GATEWAY_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-1
  namespace: istio-system
  labels: {istio: ingressgateway, app: istio-ingressgateway}
  annotations: {local.ama.dev/address: "10.244.0.9"}
spec:
  containers: [{name: istio-proxy, image: proxy, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: default}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 8000, targetPort: 8080}]
"#;

const TLS_SECRET: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: httpbin-credential, namespace: istio-system}
type: kubernetes.io/tls
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
  tls.key: "-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n"
"#;

fn gateway_of(m: &Model) -> Vec<xds::GatewayListener> {
    let key = ProxyKey {
        ip: "10.244.0.9".parse().expect("ip"),
        pod_name: "istio-ingressgateway-1".into(),
        namespace: "istio-system".into(),
    };
    router_resources(m, &key).gateway_listeners
}

#[test]
fn virtual_service_binds_by_gateway_name_and_host_intersection() {
    let m = model(&format!(
        r#"{GATEWAY_POD}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: httpbin-gateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: ["httpbin.example.com", "other.org"]
  gateways: [httpbin-gateway]
  http:
  - match: [{{uri: {{prefix: /status}}}}]
    route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: mesh-only, namespace: default}}
spec:
  hosts: ["httpbin.example.com"]
  http:
  - route: [{{destination: {{host: httpbin}}}}]
"#
    ));
    let ls = gateway_of(&m);
    assert_eq!(ls.len(), 1, "{:?}", m.warnings);
    assert_eq!(ls[0].port, 8080);
    let s = &ls[0].servers[0];
    assert_eq!(s.gateway, "default/httpbin-gateway");
    assert_eq!(s.hosts, vec!["*.example.com"]);
    assert_eq!(
        s.routes.len(),
        1,
        "the mesh-only VirtualService does not bind"
    );
    assert_eq!(s.routes[0].name, "default/httpbin");
    assert_eq!(s.routes[0].hosts, vec!["httpbin.example.com"]);
    assert_eq!(
        s.routes[0].http[0].route[0].host,
        "httpbin.default.svc.cluster.local"
    );
    // The gateway-bound VirtualService is not given to sidecars.
    assert!(
        m.http_routes
            .iter()
            .all(|r| r.resource.name != "default/httpbin")
    );
}

#[test]
fn namespace_prefixes_and_match_gateways() {
    let m = model(&format!(
        r#"{GATEWAY_POD}
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["default/*", "./admin.example.com"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: vs, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [istio-system/gw, mesh]
  http:
  - match: [{{uri: {{prefix: /a}}, gateways: [mesh]}}]
    route: [{{destination: {{host: httpbin}}}}]
  - match: [{{uri: {{prefix: /b}}, gateways: [istio-system/gw]}}]
    route: [{{destination: {{host: httpbin}}}}]
  - route: [{{destination: {{host: httpbin}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: elsewhere, namespace: other}}
spec:
  hosts: ["admin.example.com", "x.example.com"]
  gateways: [istio-system/gw]
  http:
  - route: [{{destination: {{host: httpbin.default.svc.cluster.local}}}}]
"#
    ));
    let ls = gateway_of(&m);
    let s = &ls[0].servers[0];
    assert_eq!(s.hosts, vec!["*", "admin.example.com"]);
    // Only `default` VirtualServices bind through `default/*`; `other` binds through neither.
    assert_eq!(s.routes.len(), 1, "{:?}", s.routes);
    let r = &s.routes[0];
    assert_eq!(r.name, "default/vs");
    assert_eq!(r.hosts, vec!["*"]);
    // The route whose match is for the mesh only is not the gateway's.
    assert_eq!(r.http.len(), 2);
    assert_eq!(
        r.http[0].matches[0].uri,
        Some(xds::StringMatch::Prefix("/b".into()))
    );
}

#[test]
fn simple_tls_takes_the_secret_of_the_gateway_pods_namespace() {
    let gw = r#"
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["httpbin.example.com"]
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
"#;
    let m = model(&format!("{GATEWAY_POD}---{TLS_SECRET}{gw}"));
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    let ls = gateway_of(&m);
    let tls = ls[0].servers[0].tls.as_ref().expect("tls");
    assert_eq!(tls.mode, xds::ServerTlsMode::Simple);
    let c = tls.credential.as_ref().expect("credential");
    assert!(c.private_key.contains("SECRETKEY"));
    assert_eq!(c.source, "Secret istio-system/httpbin-credential");
    // Never in the model's Debug (which discovery may log).
    assert!(!format!("{m:?}").contains("SECRETKEY"));

    // No Secret: the server goes without a credential, and a warning names it.
    let m = model(&format!("{GATEWAY_POD}{gw}"));
    let ls = gateway_of(&m);
    assert!(
        ls[0].servers[0]
            .tls
            .as_ref()
            .expect("tls")
            .credential
            .is_none()
    );
    let w = m.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    assert!(
        w.iter().any(|w| w.starts_with("Gateway default/gw: ")
            && w.contains(
                "credentialName: httpbin-credential: no such Secret in namespace istio-system"
            )),
        "{w:?}"
    );
}

#[test]
fn mutual_takes_the_ca_from_the_cacert_secret() {
    let m = model(&format!(
        r#"{GATEWAY_POD}---{TLS_SECRET}
---
apiVersion: v1
kind: Secret
metadata: {{name: httpbin-credential-cacert, namespace: istio-system}}
data: {{cacert: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: MUTUAL, credentialName: httpbin-credential}}
"#
    ));
    let ls = gateway_of(&m);
    let c = ls[0].servers[0]
        .tls
        .as_ref()
        .and_then(|t| t.credential.as_ref());
    assert_eq!(
        c.and_then(|c| c.ca_certificates.as_deref()),
        Some("-----BEGIN CERTIFICATE-----\n")
    );
}

#[test]
fn a_sidecar_and_an_unselected_pod_get_no_listeners() {
    let m = model(&format!(
        r#"{GATEWAY_POD}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
"#
    ));
    assert!(gateway_of(&m).is_empty());
    let key = ProxyKey {
        ip: "10.244.0.9".parse().expect("ip"),
        pod_name: "istio-ingressgateway-1".into(),
        namespace: "istio-system".into(),
    };
    assert!(
        crate::translate::proxy_resources(&m, &key)
            .gateway_listeners
            .is_empty()
    );
}

#[test]
fn hosts_intersect_as_pilot() {
    use super::gateway::intersect;
    assert_eq!(
        intersect("*.example.com", "httpbin.example.com").as_deref(),
        Some("httpbin.example.com")
    );
    assert_eq!(
        intersect("httpbin.example.com", "*").as_deref(),
        Some("httpbin.example.com")
    );
    assert_eq!(intersect("a.example.com", "b.example.com"), None);
    assert_eq!(
        intersect("*.a.example.com", "*.example.com").as_deref(),
        Some("*.a.example.com")
    );
}

#[test]
fn client_restrictions_ama_cannot_apply_fail_closed() {
    let m = model(&format!(
        r#"{GATEWAY_POD}---{TLS_SECRET}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: MUTUAL, credentialName: httpbin-credential, subjectAltNames: [client.example.com]}}
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
"#
    ));
    let ls = gateway_of(&m);
    assert_eq!(ls.iter().map(|l| l.port).collect::<Vec<_>>(), [8080]);
    assert!(
        m.warnings.iter().any(|w| w.to_string()
            == "Gateway default/gw: spec.servers[0]: tls.subjectAltNames: not implemented by Ama \
                (served without it, the server would accept clients it must refuse); this server \
                is not served"),
        "{:?}",
        m.warnings
    );
}

#[test]
fn a_gateway_pod_takes_plaintext_from_sidecars() {
    let m = model(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-1
  namespace: istio-system
  labels: {istio: ingressgateway}
  annotations: {local.ama.dev/address: "10.244.0.9"}
spec:
  containers:
  - name: istio-proxy
    image: auto
    args: [proxy, router, --domain, istio-system.svc.cluster.local]
---
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata:
  name: sleep-1
  namespace: default
  annotations: {local.ama.dev/address: "10.244.0.10"}
spec:
  containers: [{name: sleep, image: sleep}]
"#,
    );
    let mode = |name: &str| {
        m.workloads
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.tls_mode)
    };
    assert_eq!(mode("istio-ingressgateway-1"), Some(xds::TlsMode::Disabled));
    assert_eq!(mode("sleep-1"), Some(xds::TlsMode::Istio));
}

#[test]
fn a_gateway_without_selector_applies_to_every_gateway_pod() {
    let m = model(&format!(
        r#"{GATEWAY_POD}---{TLS_SECRET}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, credentialName: httpbin-credential}}
  - port: {{number: 9443, name: https2, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, credentialName: nowhere}}
"#
    ));
    let ls = gateway_of(&m);
    assert_eq!(ls.iter().map(|l| l.port).collect::<Vec<_>>(), [8443, 9443]);
    assert!(
        ls[0].servers[0]
            .tls
            .as_ref()
            .is_some_and(|t| t.credential.is_some())
    );
    assert!(
        ls[1].servers[0]
            .tls
            .as_ref()
            .is_some_and(|t| t.credential.is_none())
    );
    assert!(
        m.warnings.iter().any(|w| w.to_string().contains(
            "spec.servers[1].tls.credentialName: nowhere: no such Secret in any namespace"
        )),
        "{:?}",
        m.warnings
    );
}
