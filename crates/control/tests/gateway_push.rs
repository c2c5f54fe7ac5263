//! Gateway listeners over a push: only a gateway proxy (`router~...`) whose pod a Gateway
//! selects receives them, with the certificate of its namespace's Secret inline; a sidecar in
//! the same namespace receives none; a changed Secret is sent again; a server that cannot
//! share its port is logged once, not on every push. A DestinationRule's `credentialName`
//! reaches only the sidecars its `workloadSelector` selects, and again when the Secret changes.

use std::sync::Arc;

use api::objects::parse_stream;
use control::registry::ConfigStore;
use control::{PushOptions, Pusher};
use prometheus_client::registry::Registry;
use xds::ads::ResourceType;
use xds::ads::codec::AnyResource;

fn set(store: &ConfigStore, text: &str) {
    let (objects, errors) = parse_stream(text, "mesh.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    store.replace("mesh.yaml", objects);
}

fn mesh(cert: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-1
  namespace: istio-system
  labels: {{istio: ingressgateway}}
  annotations: {{local.ama.dev/address: "10.244.0.9"}}
spec:
  containers: [{{name: istio-proxy, image: proxy}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: cred, namespace: istio-system}}
type: kubernetes.io/tls
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----\n{cert}\n-----END CERTIFICATE-----\n"
  tls.key: "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n"
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, credentialName: cred}}
"#
    )
}

fn listeners(s: &xds::ads::Snapshot) -> Vec<xds::GatewayListener> {
    s.get(ResourceType::GatewayListener)
        .iter()
        .map(|(name, enc)| {
            match AnyResource::decode(ResourceType::GatewayListener, name, &enc.any) {
                Ok(AnyResource::GatewayListener(l)) => l,
                other => panic!("not a gateway listener: {other:?}"),
            }
        })
        .collect()
}

fn cert_of(l: &[xds::GatewayListener]) -> String {
    l[0].servers[0]
        .tls
        .as_ref()
        .and_then(|t| t.credential.as_ref())
        .map(|c| c.cert_chain.clone())
        .unwrap_or_default()
}

#[test]
fn only_the_selected_router_gets_listeners_and_a_changed_secret_is_sent_again() {
    let (store, _changes) = ConfigStore::new();
    let pusher = Pusher::new(
        Arc::clone(&store),
        PushOptions::default(),
        &mut Registry::default(),
    );
    set(&store, &mesh("FIRST"));
    pusher.push(None, 1);
    let node = |kind: &str| {
        format!(
            "{kind}~10.244.0.9~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local"
        )
    };
    let mut router = pusher.watch_proxy(&node("router")).expect("router");
    let sidecar = pusher
        .watch_proxy("sidecar~10.244.0.7~sleep-1.istio-system~istio-system.svc.cluster.local")
        .expect("sidecar");
    let l = listeners(&router.borrow_and_update());
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].port, 8443);
    assert!(cert_of(&l).contains("FIRST"));
    assert!(listeners(&sidecar.borrow()).is_empty());
    // The same pod asking as a sidecar gets no Secret either.
    let as_sidecar = pusher.watch_proxy(&node("sidecar")).expect("as sidecar");
    assert!(listeners(&as_sidecar.borrow()).is_empty());

    set(&store, &mesh("SECOND"));
    pusher.push(None, 1);
    assert!(router.has_changed().expect("open"));
    let l = listeners(&router.borrow_and_update());
    assert!(cert_of(&l).contains("SECOND"), "{l:?}");
    assert!(listeners(&sidecar.borrow()).is_empty());
}

/// A log sink for one test's subscriber.
#[derive(Clone, Default)]
struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("sink").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_server_that_cannot_share_its_port_is_logged_once() {
    // `cert` changes what the router receives, so every push reaches it.
    let conflict = |cert: &str| {
        format!(
            r#"{}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: plain, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: http, protocol: HTTP}}
    hosts: ["*"]
"#,
            mesh(cert)
        )
    };
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let lines = || {
        let text = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("utf-8");
        text.lines()
            .filter(|l| l.contains("cannot share its port"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    tracing::subscriber::with_default(subscriber, || {
        let (store, _changes) = ConfigStore::new();
        let pusher = Pusher::new(
            Arc::clone(&store),
            PushOptions::default(),
            &mut Registry::default(),
        );
        set(&store, &conflict("FIRST"));
        pusher.push(None, 1);
        let mut router = pusher
            .watch_proxy(
                "router~10.244.0.9~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local",
            )
            .expect("router");
        assert_eq!(lines().len(), 1, "{:?}", lines());
        assert!(
            lines()[0].contains("Gateway default/plain server 0 port 8443"),
            "{:?}",
            lines()
        );
        // Other changes, same problem: not logged again.
        for i in 0..3 {
            set(&store, &conflict(&format!("CERT{i}")));
            pusher.push(None, 1);
            assert!(
                router.has_changed().expect("open"),
                "push {i} reached the router"
            );
            router.borrow_and_update();
        }
        assert_eq!(lines().len(), 1, "{:?}", lines());
        // Gone, then back: logged again.
        set(&store, &mesh("FIRST"));
        pusher.push(None, 1);
        set(&store, &conflict("FIRST"));
        pusher.push(None, 1);
        assert_eq!(lines().len(), 2, "{:?}", lines());
        drop(router);
    });
}

fn traffic_policies(s: &xds::ads::Snapshot) -> Vec<xds::TrafficPolicy> {
    s.get(ResourceType::TrafficPolicy)
        .iter()
        .map(
            |(name, enc)| match AnyResource::decode(ResourceType::TrafficPolicy, name, &enc.any) {
                Ok(AnyResource::TrafficPolicy(p)) => p,
                other => panic!("not a traffic policy: {other:?}"),
            },
        )
        .collect()
}

/// Istio's "Egress TLS Origination" task, mutual TLS at the sidecar of `sleep`.
fn origination(key: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: sleep-1
  namespace: default
  labels: {{app: sleep}}
  annotations: {{local.ama.dev/address: "10.244.0.7"}}
spec:
  containers: [{{name: app, image: app}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: httpbin-1
  namespace: default
  labels: {{app: httpbin}}
  annotations: {{local.ama.dev/address: "10.244.0.8"}}
spec:
  containers: [{{name: app, image: app}}]
---
apiVersion: v1
kind: Service
metadata: {{name: my-nginx, namespace: mesh-external}}
spec:
  selector: {{run: my-nginx}}
  ports: [{{name: https, port: 443}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: client-credential, namespace: default}}
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n"
  tls.key: "-----BEGIN PRIVATE KEY-----\n{key}\n-----END PRIVATE KEY-----\n"
  ca.crt: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-mtls-for-nginx, namespace: default}}
spec:
  workloadSelector: {{matchLabels: {{app: sleep}}}}
  host: my-nginx.mesh-external.svc.cluster.local
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: MUTUAL, credentialName: client-credential}}
"#
    )
}

fn key_of(policies: &[xds::TrafficPolicy]) -> Option<String> {
    policies
        .iter()
        .find(|p| p.host == "my-nginx.mesh-external.svc.cluster.local")
        .and_then(|p| p.effective(443, None).tls)
        .and_then(|t| t.credential)
        .and_then(|c| c.private_key)
}

#[test]
fn a_destination_rule_secret_reaches_only_the_selected_sidecar_and_follows_changes() {
    let (store, _changes) = ConfigStore::new();
    let pusher = Pusher::new(
        Arc::clone(&store),
        PushOptions::default(),
        &mut Registry::default(),
    );
    set(&store, &origination("FIRSTKEY"));
    pusher.push(None, 1);
    let mut sleep = pusher
        .watch_proxy("sidecar~10.244.0.7~sleep-1.default~default.svc.cluster.local")
        .expect("sleep");
    let httpbin = pusher
        .watch_proxy("sidecar~10.244.0.8~httpbin-1.default~default.svc.cluster.local")
        .expect("httpbin");
    let key = key_of(&traffic_policies(&sleep.borrow_and_update()));
    assert!(key.is_some_and(|k| k.contains("FIRSTKEY")));
    let others = traffic_policies(&httpbin.borrow());
    assert_eq!(key_of(&others), None, "{others:?}");

    set(&store, &origination("SECONDKEY"));
    pusher.push(None, 1);
    assert!(sleep.has_changed().expect("open"));
    let key = key_of(&traffic_policies(&sleep.borrow_and_update()));
    assert!(key.is_some_and(|k| k.contains("SECONDKEY")));
    assert_eq!(key_of(&traffic_policies(&httpbin.borrow())), None);
}

#[test]
fn an_egress_gateway_takes_the_secret_of_its_namespace_and_its_neighbours_do_not() {
    let (store, _changes) = ConfigStore::new();
    let pusher = Pusher::new(
        Arc::clone(&store),
        PushOptions::default(),
        &mut Registry::default(),
    );
    // The rule and the Secret in istio-system, no selector: Istio's egress gateway task.
    let yaml = |key: &str| {
        origination(key)
            .replace("namespace: default}}", "namespace: istio-system}}")
            .replace("namespace: default}", "namespace: istio-system}")
            .replace("  workloadSelector: {matchLabels: {app: sleep}}\n", "")
            + r#"---
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
  name: tool-1
  namespace: istio-system
  labels: {app: tool}
  annotations: {local.ama.dev/address: "10.244.0.11"}
spec:
  containers: [{name: app, image: app}]
"#
    };
    set(&store, &yaml("FIRSTKEY"));
    pusher.push(None, 1);
    let mut egress = pusher
        .watch_proxy(
            "router~10.244.0.10~istio-egressgateway-1.istio-system~istio-system.svc.cluster.local",
        )
        .expect("egress");
    let tool = pusher
        .watch_proxy("sidecar~10.244.0.11~tool-1.istio-system~istio-system.svc.cluster.local")
        .expect("tool");
    let key = key_of(&traffic_policies(&egress.borrow_and_update()));
    assert!(
        key.is_some_and(|k| k.contains("FIRSTKEY")),
        "the egress gateway's"
    );
    let theirs = traffic_policies(&tool.borrow());
    assert!(
        theirs
            .iter()
            .any(|p| p.host == "my-nginx.mesh-external.svc.cluster.local"),
        "{theirs:?}"
    );
    assert_eq!(key_of(&theirs), None, "a sidecar beside it has no key");

    set(&store, &yaml("SECONDKEY"));
    pusher.push(None, 1);
    assert!(egress.has_changed().expect("open"));
    let key = key_of(&traffic_policies(&egress.borrow_and_update()));
    assert!(key.is_some_and(|k| k.contains("SECONDKEY")));
    assert_eq!(key_of(&traffic_policies(&tool.borrow())), None);
}
