//! Proxies that see the same thing share one view: the same `Arc`s per namespace (and per
//! selecting DestinationRule), a change to one namespace's DestinationRule wakes only that
//! namespace's proxies, and the delta between two views names exactly what changed.

use std::sync::Arc;

use api::objects::parse_stream;
use control::registry::ConfigStore;
use control::{PushOptions, Pusher};
use prometheus_client::registry::Registry;
use xds::ads::ResourceType;

fn app(ns: &str, name: &str, subnet: u8) -> String {
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{istio-injection: enabled}}}}\n\
         ---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations: {{local.ama.dev/addresses: \"10.244.{subnet}.1,10.244.{subnet}.2\"}}\n\
         spec:\n  replicas: 2\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: app, ports: [{{containerPort: 8080}}]}}]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{selector: {{app: {name}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
    )
}

fn rule(ns: &str, name: &str, host: &str, lb: &str, selector: Option<&str>) -> String {
    let selector = selector
        .map(|app| format!("  workloadSelector: {{matchLabels: {{app: {app}}}}}\n"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  host: {host}\n  exportTo: [\".\"]\n{selector}  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}\n"
    )
}

fn set(store: &ConfigStore, text: &str) {
    let (objects, errors) = parse_stream(text, "mesh.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    store.replace("mesh.yaml", objects);
}

fn node(ip: &str, pod: &str, ns: &str) -> String {
    format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local")
}

#[test]
fn proxies_share_views_and_a_change_wakes_only_those_it_concerns() {
    let (store, _changes) = ConfigStore::new();
    let pusher = Pusher::new(
        Arc::clone(&store),
        PushOptions::default(),
        &mut Registry::default(),
    );
    let mesh = |lb: &str| {
        format!(
            "{}{}{}{}",
            app("a", "web", 1),
            app("b", "db", 2),
            rule("a", "web", "web.a.svc.cluster.local", lb, None),
            rule(
                "b",
                "db-for-db",
                "db.b.svc.cluster.local",
                "RANDOM",
                Some("db")
            ),
        )
    };
    set(&store, &mesh("ROUND_ROBIN"));
    pusher.push(None, 1);

    let mut a1 = pusher
        .watch_proxy(&node("10.244.1.1", "web-1", "a"))
        .expect("a1");
    let mut a2 = pusher
        .watch_proxy(&node("10.244.1.2", "web-2", "a"))
        .expect("a2");
    let mut b1 = pusher
        .watch_proxy(&node("10.244.2.1", "db-1", "b"))
        .expect("b1");
    // Not a workload of the model: no DestinationRule selects it.
    let mut b2 = pusher
        .watch_proxy(&node("10.244.9.9", "other", "b"))
        .expect("b2");
    let (sa1, sa2, sb1, sb2) = (
        a1.borrow_and_update().clone(),
        a2.borrow_and_update().clone(),
        b1.borrow_and_update().clone(),
        b2.borrow_and_update().clone(),
    );
    for ty in [
        ResourceType::Service,
        ResourceType::TrafficPolicy,
        ResourceType::HttpRoutes,
        ResourceType::Authorization,
    ] {
        assert!(Arc::ptr_eq(sa1.get(ty), sa2.get(ty)), "{ty}");
    }
    for s in [&sa2, &sb1, &sb2] {
        assert!(Arc::ptr_eq(
            sa1.get(ResourceType::Workload),
            s.get(ResourceType::Workload)
        ));
    }
    assert!(!Arc::ptr_eq(
        sa1.get(ResourceType::Node),
        sa2.get(ResourceType::Node)
    ));
    // The selector rule applies to b1 only: b's proxies differ in their policies alone.
    let policies = |s: &xds::ads::Snapshot| -> Vec<String> {
        s.get(ResourceType::TrafficPolicy)
            .iter()
            .map(|(n, _)| n.to_string())
            .collect()
    };
    assert_eq!(policies(&sb1), ["b/db-for-db"]);
    assert!(policies(&sb2).is_empty());
    assert_eq!(policies(&sa1), ["a/web"]);
    assert!(Arc::ptr_eq(
        sb1.get(ResourceType::Service),
        sb2.get(ResourceType::Service)
    ));

    // A change to a's rule: a's proxies get a new policy view, with the delta recorded; b's
    // proxies are not woken.
    set(&store, &mesh("LEAST_REQUEST"));
    let stats = pusher.push(None, 1);
    assert_eq!(stats.changed, 2, "{stats:?}");
    assert!(a1.has_changed().expect("open") && a2.has_changed().expect("open"));
    assert!(!b1.has_changed().expect("open") && !b2.has_changed().expect("open"));
    let na1 = a1.borrow_and_update().clone();
    let old = sa1.get(ResourceType::TrafficPolicy);
    let new = na1.get(ResourceType::TrafficPolicy);
    assert!(!Arc::ptr_eq(old, new));
    let delta = new.delta_from(old).expect("delta recorded");
    assert_eq!(delta.changed.len(), 1);
    assert_eq!(&*delta.changed[0], "a/web");
    assert!(delta.removed.is_empty());
    for ty in [ResourceType::Service, ResourceType::Workload] {
        assert!(Arc::ptr_eq(sa1.get(ty), na1.get(ty)), "{ty} unchanged");
    }
    assert!(Arc::ptr_eq(
        na1.get(ResourceType::TrafficPolicy),
        a2.borrow().get(ResourceType::TrafficPolicy)
    ));

    // Removing the rule: the delta names the removal.
    set(
        &store,
        &format!("{}{}", app("a", "web", 1), app("b", "db", 2)),
    );
    pusher.push(None, 1);
    let gone = a1.borrow_and_update().clone();
    let delta = gone
        .get(ResourceType::TrafficPolicy)
        .delta_from(new)
        .expect("delta recorded");
    assert!(delta.changed.is_empty());
    assert_eq!(
        delta.removed.iter().map(|n| &**n).collect::<Vec<_>>(),
        ["a/web"]
    );
    assert!(b1.has_changed().expect("open"), "b1 lost its selector rule");
    assert!(!b2.has_changed().expect("open"), "b2 sees nothing new");
}

#[test]
fn a_sidecar_that_selects_a_workload_gives_it_its_own_view_and_outbound_policy() {
    let (store, _changes) = ConfigStore::new();
    let pusher = Pusher::new(
        Arc::clone(&store),
        PushOptions::default(),
        &mut Registry::default(),
    );
    let sidecar = "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\n\
                   metadata: {name: narrow, namespace: a}\n\
                   spec:\n  workloadSelector: {labels: {app: web}}\n  \
                   outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n  egress: [{hosts: [\"./*\"]}]\n";
    set(
        &store,
        &format!(
            "{}{}{}{sidecar}",
            app("a", "web", 1),
            app("a", "cli", 3),
            app("b", "db", 2)
        ),
    );
    pusher.push(None, 1);
    let mut web = pusher
        .watch_proxy(&node("10.244.1.1", "web-1", "a"))
        .expect("web");
    let mut cli = pusher
        .watch_proxy(&node("10.244.3.1", "cli-1", "a"))
        .expect("cli");
    let (sw, sc) = (
        web.borrow_and_update().clone(),
        cli.borrow_and_update().clone(),
    );
    let names = |s: &xds::ads::Snapshot| -> Vec<String> {
        s.get(ResourceType::Service)
            .iter()
            .map(|(n, _)| n.to_string())
            .collect()
    };
    assert_eq!(
        names(&sw),
        ["a/cli.a.svc.cluster.local", "a/web.a.svc.cluster.local"]
    );
    assert_eq!(names(&sc).len(), 3, "{:?}", names(&sc));
    let resources = |s: &xds::ads::Snapshot| {
        let decoded: Vec<xds::ads::codec::AnyResource> = ResourceType::ALL
            .into_iter()
            .flat_map(|ty| {
                s.get(ty)
                    .iter()
                    .map(move |(n, r)| {
                        xds::ads::codec::AnyResource::decode(ty, n, &r.any).expect("decodes")
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        xds::ads::codec::assemble(&decoded)
    };
    assert_eq!(
        resources(&sw).outbound_policy(),
        xds::OutboundTrafficPolicy::RegistryOnly
    );
    assert_eq!(
        resources(&sc).outbound_policy(),
        xds::OutboundTrafficPolicy::AllowAny
    );
}

/// A Telemetry (or a Sidecar, or MeshConfig's outbound policy) changes no shared view, only
/// the proxies' own Node resources: applying one later still pushes.
#[test]
fn a_telemetry_applied_later_reaches_the_proxies_node() {
    let (store, _changes) = ConfigStore::new();
    let pusher = Pusher::new(
        Arc::clone(&store),
        PushOptions::default(),
        &mut Registry::default(),
    );
    let base = app("a", "web", 1);
    set(&store, &base);
    pusher.push(None, 1);
    let mut web = pusher
        .watch_proxy(&node("10.244.1.1", "web-1", "a"))
        .expect("web");
    let before = web.borrow_and_update().clone();
    let node_of = |s: &xds::ads::Snapshot| -> xds::NodeRef {
        let (_, bytes) = s
            .get(ResourceType::Node)
            .iter()
            .next()
            .expect("a Node resource");
        serde_json::from_slice(&bytes.any.value).expect("a Node")
    };
    assert_eq!(node_of(&before).access_logging, None);

    set(
        &store,
        &format!(
            "{base}---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\n\
             metadata: {{name: mesh-default, namespace: istio-system}}\n\
             spec: {{accessLogging: [{{providers: [{{name: envoy}}]}}]}}\n"
        ),
    );
    let stats = pusher.push(None, 1);
    assert_eq!(stats.changed, 1, "the one proxy connected: {stats:?}");
    assert!(web.has_changed().expect("open"));
    let after = web.borrow_and_update().clone();
    let logs = node_of(&after)
        .access_logging
        .expect("access logging pushed");
    assert_eq!(logs.client.expect("client side")[0].provider, "envoy");
    assert!(
        node_of(&after).tracing.is_none(),
        "no tracing in the Telemetry"
    );
}
