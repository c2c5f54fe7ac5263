//! Gateway listeners over a push: only a gateway proxy (`router~...`) whose pod a Gateway
//! selects receives them, with the certificate of its namespace's Secret inline; a sidecar in
//! the same namespace receives none; a changed Secret is sent again.

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
