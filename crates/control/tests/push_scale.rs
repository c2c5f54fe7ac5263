//! Push cost with many proxies watching: builds a mesh of 50 services × 4 replicas, subscribes
//! 500 proxies, changes one service and measures the push. Prints the numbers (debug build: a
//! release build is several times faster); asserts only that every proxy saw the change and
//! that an unrelated push wakes nobody.

use std::sync::Arc;
use std::time::Instant;

use api::objects::parse_stream;
use control::registry::ConfigStore;
use control::{PushOptions, Pusher};
use prometheus_client::registry::Registry;

const SERVICES: usize = 50;
const REPLICAS: usize = 4;
const PROXIES: usize = 500;

fn mesh(extra_port: u16) -> String {
    let mut text = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio-injection: enabled}}\n",
    );
    for s in 0..SERVICES {
        let addresses: Vec<String> = (0..REPLICAS)
            .map(|r| format!("10.244.{s}.{}", r + 1))
            .collect();
        let port = if s == 0 { extra_port } else { 80 };
        text.push_str(&format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app{s}\n  annotations: {{local.ama.dev/addresses: \"{}\"}}\nspec:\n  replicas: {REPLICAS}\n  selector: {{matchLabels: {{app: app{s}}}}}\n  template:\n    metadata: {{labels: {{app: app{s}}}}}\n    spec: {{containers: [{{name: app, ports: [{{containerPort: 8080}}]}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}}}\nspec: {{selector: {{app: app{s}}}, ports: [{{name: http, port: {port}, targetPort: 8080}}]}}\n",
            addresses.join(",")
        ));
    }
    text
}

#[test]
fn push_to_many_proxies() {
    let (store, _changes) = ConfigStore::new();
    let pusher = Pusher::new(
        Arc::clone(&store),
        PushOptions::default(),
        &mut Registry::default(),
    );
    let (objects, errors) = parse_stream(&mesh(80), "mesh.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    store.replace("mesh.yaml", objects);
    let first = pusher.push(None, 1);
    assert_eq!(pusher.model().workloads.len(), SERVICES * REPLICAS);

    let receivers: Vec<_> = (0..PROXIES)
        .map(|i| {
            let (s, r) = (i % SERVICES, i % REPLICAS);
            let id = format!(
                "sidecar~10.244.{s}.{}~app{s}-x-{i}.default~default.svc.cluster.local",
                r + 1
            );
            let mut rx = pusher.watch_proxy(&id).expect("watch");
            rx.mark_unchanged();
            rx
        })
        .collect();

    let (objects, _) = parse_stream(&mesh(81), "mesh.yaml");
    let changed_at = Instant::now();
    store.replace("mesh.yaml", objects);
    let stats = pusher.push(Some(changed_at), 1);
    assert_eq!(stats.proxies, PROXIES);
    assert_eq!(stats.changed, PROXIES);
    assert!(receivers.iter().all(|rx| rx.has_changed().unwrap_or(false)));

    // A push without a change publishes nothing.
    let idle = pusher.push(None, 0);
    assert_eq!(idle.changed, 0);
    println!(
        "{} workloads, {SERVICES} services: model alone {:.1} ms; push to {PROXIES} proxies {:.1} ms \
         ({:.3} ms per proxy); no-op push {:.1} ms",
        SERVICES * REPLICAS,
        first.build.as_secs_f64() * 1e3,
        stats.build.as_secs_f64() * 1e3,
        stats.build.as_secs_f64() * 1e3 / PROXIES as f64,
        idle.build.as_secs_f64() * 1e3,
    );
}
