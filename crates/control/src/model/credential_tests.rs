//! DestinationRule `credentialName` for sidecars: the Secret of the rule's namespace goes
//! inline, only to the proxies its `workloadSelector` selects; without a selector or a usable
//! Secret the TLS settings keep the name without a credential (the proxy fails closed).

use api::objects::{Object, parse_stream};

use super::*;
use crate::translate::{ProxyKey, proxy_resources};

const HOST: &str = "my-nginx.mesh-external.svc.cluster.local";

fn model(yaml: &str) -> Model {
    let (objects, errors) = parse_stream(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    let objects: Vec<Object> = objects;
    Model::build(&objects, &mut VipAllocator::new())
}

/// The pods (sleep and another app in `default`, a sleep in `other`) and the external nginx.
const MESH: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: sleep
  namespace: default
  labels: {app: sleep}
  annotations: {local.ama.dev/address: "10.244.9.9"}
spec:
  containers: [{name: app, image: app}]
---
apiVersion: v1
kind: Pod
metadata:
  name: httpbin
  namespace: default
  labels: {app: httpbin}
  annotations: {local.ama.dev/address: "10.244.9.10"}
spec:
  containers: [{name: app, image: app}]
---
apiVersion: v1
kind: Pod
metadata:
  name: sleep
  namespace: other
  labels: {app: sleep}
  annotations: {local.ama.dev/address: "10.244.9.11"}
spec:
  containers: [{name: app, image: app}]
---
apiVersion: v1
kind: Service
metadata: {name: my-nginx, namespace: mesh-external}
spec:
  selector: {run: my-nginx}
  ports: [{name: https, port: 443}]
"#;

/// Istio's "Egress TLS Origination" task, mutual TLS at the sidecar.
fn rule(selector: bool, namespace: &str) -> String {
    let selector = if selector {
        "workloadSelector: {matchLabels: {app: sleep}}"
    } else {
        ""
    };
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-mtls-for-nginx, namespace: {namespace}}}
spec:
  {selector}
  host: {HOST}
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: MUTUAL, credentialName: client-credential, sni: {HOST}}}
"#
    )
}

fn secret(key: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: client-credential, namespace: default}}
type: Opaque
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n"
  tls.key: "-----BEGIN PRIVATE KEY-----\n{key}\n-----END PRIVATE KEY-----\n"
  ca.crt: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
"#
    )
}

fn proxy(ns: &str, pod: &str, ip: &str) -> ProxyKey {
    ProxyKey {
        ip: ip.parse().expect("ip"),
        pod_name: pod.into(),
        namespace: ns.into(),
    }
}

/// The TLS settings of port 443 of the nginx host that `proxy` receives, if any.
fn tls_of(m: &Model, proxy: &ProxyKey) -> Option<xds::ClientTls> {
    proxy_resources(m, proxy)
        .traffic_policies
        .iter()
        .find(|p| p.host == HOST)
        .and_then(|p| p.effective(443, None).tls)
}

#[test]
fn the_secret_reaches_only_the_selected_proxies() {
    let m = model(&format!(
        "{MESH}---{}---{}",
        rule(true, "default"),
        secret("SECRETKEY")
    ));
    let sleep = proxy("default", "sleep", "10.244.9.9");
    let tls = tls_of(&m, &sleep).expect("the selected proxy has the rule's TLS");
    assert_eq!(tls.mode, xds::ClientTlsMode::Mutual);
    assert_eq!(tls.sni.as_deref(), Some(HOST));
    assert_eq!(
        tls.credential_name.as_deref(),
        Some("default/client-credential")
    );
    let c = tls.credential.as_ref().expect("credential inline");
    assert_eq!(c.source, "Secret default/client-credential");
    assert!(
        c.cert_chain
            .as_deref()
            .is_some_and(|p| p.contains("CLIENT"))
    );
    assert!(
        c.private_key
            .as_deref()
            .is_some_and(|p| p.contains("SECRETKEY"))
    );
    assert!(
        c.ca_certificates
            .as_deref()
            .is_some_and(|p| p.contains("CA"))
    );
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    // Never printed: neither the model nor the proxy's resources show the key.
    assert!(!format!("{m:?}").contains("SECRETKEY"));
    assert!(!format!("{:?}", proxy_resources(&m, &sleep)).contains("SECRETKEY"));

    // A pod of the namespace the selector does not select, and a selected label in another
    // namespace (a selector never crosses namespaces), receive no credential.
    for other in [
        proxy("default", "httpbin", "10.244.9.10"),
        proxy("other", "sleep", "10.244.9.11"),
    ] {
        let res = proxy_resources(&m, &other);
        assert!(
            res.traffic_policies.iter().all(|p| p.host != HOST),
            "{other:?}: {:?}",
            res.traffic_policies
        );
    }

    // A changed Secret changes what the selected proxy receives (and so is pushed).
    let rotated = model(&format!(
        "{MESH}---{}---{}",
        rule(true, "default"),
        secret("ROTATED")
    ));
    let c = tls_of(&rotated, &sleep)
        .and_then(|t| t.credential)
        .expect("credential");
    assert!(
        c.private_key
            .as_deref()
            .is_some_and(|p| p.contains("ROTATED"))
    );
}

#[test]
fn a_missing_secret_fails_closed() {
    let m = model(&format!("{MESH}---{}", rule(true, "default")));
    let tls = tls_of(&m, &proxy("default", "sleep", "10.244.9.9")).expect("TLS kept");
    assert_eq!(tls.mode, xds::ClientTlsMode::Mutual);
    assert_eq!(
        tls.credential_name.as_deref(),
        Some("default/client-credential")
    );
    assert_eq!(tls.credential, None, "the fail-closed marker");
    assert_eq!(
        m.warnings,
        vec![Warning {
            object: "DestinationRule default/originate-mtls-for-nginx".into(),
            message: "tls.credentialName: client-credential: no such Secret in namespace \
                      default; connections with these TLS settings fail (503 UF), never in \
                      plaintext"
                .into(),
        }]
    );

    // A Secret without a key for MUTUAL fails closed too.
    let m = model(&format!(
        r#"{MESH}---{}---
apiVersion: v1
kind: Secret
metadata: {{name: client-credential, namespace: default}}
stringData: {{ca.crt: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"}}
"#,
        rule(true, "default")
    ));
    let tls = tls_of(&m, &proxy("default", "sleep", "10.244.9.9")).expect("TLS kept");
    assert_eq!(tls.credential, None);
    assert!(
        m.warnings[0]
            .message
            .contains("MUTUAL needs tls.crt and tls.key"),
        "{:?}",
        m.warnings
    );
}

#[test]
fn without_a_workload_selector_the_secret_is_never_sent() {
    let m = model(&format!(
        "{MESH}---{}---{}",
        rule(false, "default"),
        secret("SECRETKEY")
    ));
    for p in [
        proxy("default", "sleep", "10.244.9.9"),
        proxy("default", "httpbin", "10.244.9.10"),
    ] {
        let tls = tls_of(&m, &p).expect("TLS kept");
        assert_eq!(tls.mode, xds::ClientTlsMode::Mutual);
        assert!(tls.credential_name.is_some());
        assert_eq!(tls.credential, None, "fails closed");
    }
    assert!(!format!("{m:?}").contains("SECRETKEY"));
    assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
    assert!(
        m.warnings[0].message.contains("workloadSelector")
            && m.warnings[0].message.contains("503 UF"),
        "{:?}",
        m.warnings
    );
}

#[test]
fn simple_with_credential_name_takes_only_the_ca() {
    let m = model(&format!(
        "{MESH}---{}---{}",
        rule(true, "default").replace("MUTUAL", "SIMPLE"),
        secret("SECRETKEY")
    ));
    let tls = tls_of(&m, &proxy("default", "sleep", "10.244.9.9")).expect("TLS");
    assert_eq!(tls.mode, xds::ClientTlsMode::Simple);
    let c = tls.credential.expect("credential");
    assert_eq!((c.cert_chain, c.private_key), (None, None));
    assert!(c.ca_certificates.is_some_and(|p| p.contains("CA")));
}

/// Istio's "Egress Gateways with TLS Origination" (mutual TLS at the egress gateway): the rule
/// in istio-system without selector, the Secret beside the egress gateway.
const EGRESS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: istio-egressgateway-1
  namespace: istio-system
  labels: {istio: egressgateway}
  annotations: {local.ama.dev/address: "10.244.0.10"}
spec:
  containers: [{name: istio-proxy, image: proxy}]
---
apiVersion: v1
kind: Pod
metadata:
  name: tool
  namespace: istio-system
  labels: {app: tool}
  annotations: {local.ama.dev/address: "10.244.0.11"}
spec:
  containers: [{name: app, image: app}]
---
apiVersion: v1
kind: Secret
metadata: {name: client-credential, namespace: istio-system}
type: kubernetes.io/tls
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n"
  tls.key: "-----BEGIN PRIVATE KEY-----\nGATEWAYKEY\n-----END PRIVATE KEY-----\n"
"#;

#[test]
fn a_gateway_proxy_reads_the_secret_of_its_namespace_for_a_rule_without_selector() {
    let m = model(&format!(
        "{MESH}---{EGRESS}---{}",
        rule(false, "istio-system")
    ));
    let egress = proxy("istio-system", "istio-egressgateway-1", "10.244.0.10");
    let res = crate::translate::router_resources(&m, &egress);
    let tls = res
        .traffic_policies
        .iter()
        .find(|p| p.host == HOST)
        .and_then(|p| p.effective(443, None).tls)
        .expect("TLS");
    let c = tls.credential.expect("the gateway's credential");
    assert_eq!(c.source, "Secret istio-system/client-credential");
    assert!(c.private_key.is_some_and(|k| k.contains("GATEWAYKEY")));
    // A sidecar of the same namespace, and the model's and resources' Debug, never have it.
    let tool = tls_of(&m, &proxy("istio-system", "tool", "10.244.0.11")).expect("TLS kept");
    assert_eq!(tool.credential, None, "sidecars fail closed");
    assert!(!format!("{m:?}").contains("GATEWAYKEY"));
    assert!(!format!("{res:?}").contains("GATEWAYKEY"));
    // A gateway proxy of a namespace without that Secret fails closed too.
    let m = model(&format!(
        "{MESH}---{}---{}",
        EGRESS.replace("namespace: istio-system}", "namespace: elsewhere}"),
        rule(false, "istio-system")
    ));
    let res = crate::translate::router_resources(&m, &egress);
    let tls = res
        .traffic_policies
        .iter()
        .find(|p| p.host == HOST)
        .and_then(|p| p.effective(443, None).tls)
        .expect("TLS");
    assert_eq!(tls.credential, None);
}
