//! End to end, in process: `ama discovery`'s server over a directory holding the seed's
//! `httpbin.yaml` and an ubuntu pod, and a proxy's Delta ADS client ([`xds::ads::AdsClient`]).
//!
//! Checks what the ubuntu sidecar receives (httpbin-service with a VIP and two endpoints that
//! take Istio mTLS), that scaling httpbin to three addresses in the file reaches the client, and
//! the monitoring endpoints. Prints the time from the file edit to the client's new config.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use control::{Discovery, DiscoveryOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use xds::ProxyResources;
use xds::ads::{AdsClient, ProxyId};

const HTTPBIN_FQDN: &str = "httpbin-service.default.svc.cluster.local";

/// The seed's httpbin.yaml with local addresses for its two replicas.
fn httpbin_yaml(addresses: &str, replicas: u32) -> String {
    let seed = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/httpbin.yaml"),
    )
    .expect("examples/httpbin.yaml");
    let with_addresses = seed.replacen(
        "  name: httpbin-deployment\n",
        &format!(
            "  name: httpbin-deployment\n  annotations:\n    local.ama.dev/addresses: \"{addresses}\"\n"
        ),
        1,
    );
    assert_ne!(
        with_addresses, seed,
        "the seed's Deployment metadata changed"
    );
    with_addresses.replace("replicas: 2", &format!("replicas: {replicas}"))
}

const UBUNTU_AND_NAMESPACE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    istio-injection: enabled
---
apiVersion: v1
kind: Pod
metadata:
  name: ubuntu
  labels: {app: ubuntu}
  annotations: {local.ama.dev/address: "10.244.0.5"}
spec:
  containers:
  - {name: ubuntu, image: "ubuntu:latest", command: [sleep, infinity]}
"#;

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Waits for a config that satisfies `done`.
async fn next_config(
    configs: &mut mpsc::Receiver<ProxyResources>,
    done: impl Fn(&ProxyResources) -> bool,
) -> ProxyResources {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let r = configs.recv().await.expect("client alive");
            if done(&r) {
                return r;
            }
        }
    })
    .await
    .expect("config in time")
}

fn httpbin(r: &ProxyResources) -> Option<&xds::Service> {
    r.services.iter().find(|s| s.hostname == HTTPBIN_FQDN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_config_reaches_a_proxy_and_follows_edits() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("httpbin.yaml"),
        httpbin_yaml("10.244.0.3,10.244.0.4", 2),
    )
    .expect("write");
    fs::write(dir.path().join("ubuntu.yaml"), UBUNTU_AND_NAMESPACE).expect("write");

    let mut options = DiscoveryOptions::new(dir.path());
    options.grpc_addr = "127.0.0.1:0".parse().expect("addr");
    options.monitoring_addr = "127.0.0.1:0".parse().expect("addr");
    let discovery = Discovery::start(options).await.expect("discovery starts");

    let node = ProxyId::sidecar("10.244.0.5".parse().expect("ip"), "ubuntu", "default")
        .to_node(&BTreeMap::new());
    let node_id = node.id.clone();
    let endpoint =
        xds::ads::client::endpoint(&discovery.grpc_addr().to_string()).expect("endpoint");
    let (tx, mut configs) = mpsc::channel(16);
    let client = tokio::spawn(
        AdsClient::new(endpoint, node).run(move |r: ProxyResources| {
            r.validate().map_err(|e| e.to_string())?;
            tx.try_send(r).map_err(|e| e.to_string())
        }),
    );

    // The initial sync.
    let r = next_config(&mut configs, |r| httpbin(r).is_some()).await;
    let me = r.node.as_ref().expect("self");
    assert_eq!(me.uid.as_deref(), Some("Kubernetes//Pod/default/ubuntu"));
    let s = httpbin(&r).expect("httpbin-service");
    assert_eq!(s.vips.len(), 1);
    assert!(s.vips[0].to_string().starts_with("10.96."), "{:?}", s.vips);
    assert_eq!(s.ports[0].port, 80);
    assert_eq!(s.ports[0].effective_protocol(), xds::Protocol::Http);
    let mut addresses: Vec<String> = s.endpoints.iter().map(|e| e.address.to_string()).collect();
    addresses.sort();
    assert_eq!(addresses, ["10.244.0.3", "10.244.0.4"]);
    for e in &s.endpoints {
        assert_eq!(e.tls_mode, xds::TlsMode::Istio, "{e:?}");
        assert_eq!(
            e.identity.as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/default")
        );
    }
    let vip = s.vips.clone();
    assert_eq!(r.workloads.len(), 3);

    // Scale httpbin to three addresses.
    let edited = Instant::now();
    fs::write(
        dir.path().join("httpbin.yaml"),
        httpbin_yaml("10.244.0.3,10.244.0.4,10.244.0.6", 3),
    )
    .expect("write");
    let r = next_config(&mut configs, |r| {
        httpbin(r).is_some_and(|s| s.endpoints.len() == 3)
    })
    .await;
    let took = edited.elapsed();
    let s = httpbin(&r).expect("httpbin-service");
    assert!(
        s.endpoints
            .iter()
            .any(|e| e.address.to_string() == "10.244.0.6")
    );
    assert_eq!(s.vips, vip, "the VIP stays");
    let push = discovery
        .pusher()
        .pushes()
        .borrow()
        .clone()
        .expect("a push");
    println!(
        "file edit -> client config: {:.0} ms (500 ms polling + 100 ms debounce budget); \
         change -> publish {:.1} ms, build {:.2} ms",
        took.as_secs_f64() * 1e3,
        push.convergence.unwrap_or_default().as_secs_f64() * 1e3,
        push.build.as_secs_f64() * 1e3,
    );
    assert!(took < Duration::from_secs(3), "{took:?}");

    // Monitoring.
    let monitoring = discovery.monitoring_addr();
    assert_eq!(get(monitoring, "/ready").await.0, 200);
    let (status, body) = get(monitoring, "/debug/syncz").await;
    assert_eq!(status, 200);
    let syncz: serde_json::Value = serde_json::from_str(&body).expect("json");
    let proxy = syncz
        .as_array()
        .and_then(|a| a.iter().find(|p| p["proxy"] == node_id.as_str()))
        .unwrap_or_else(|| panic!("{body}"));
    let service = &proxy["types"]["Service"];
    assert!(service["acked"].is_string(), "{body}");
    assert_eq!(service["acked"], service["sent"], "{body}");
    assert!(service["nacked"].is_null(), "{body}");
    // What the proxy should have, for `ama proxy-status`: here, what it has.
    assert_eq!(service["latest"], service["sent"], "{body}");
    let (status, version) = get(monitoring, "/version").await;
    assert_eq!(status, 200);
    let version: serde_json::Value = serde_json::from_str(&version).expect("json");
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    let (status, metrics) = get(monitoring, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("pilot_proxy_convergence_time_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("pilot_xds 1"), "{metrics}");
    assert_eq!(get(monitoring, "/nope").await.0, 404);

    // The mesh page and its data: the proxy SYNCED at once; the workloads once the first scrape
    // round is over (the proxy's 10.244.0.5:15090 does not answer here: its error is shown).
    let (status, page) = get(monitoring, "/mesh").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<svg") && page.contains("mesh.json"),
        "{page}"
    );
    let mesh = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let (status, body) = get(monitoring, "/mesh.json").await;
            assert_eq!(status, 200);
            let mesh: serde_json::Value = serde_json::from_str(&body).expect("json");
            if mesh["scraped"]["ubuntu.default"].is_string() {
                return mesh;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a scrape round within 15 s");
    let proxy = &mesh["proxies"][0];
    assert_eq!(proxy["proxy"], "ubuntu.default", "{mesh:#}");
    assert_eq!(proxy["node"], "ubuntu.default", "{mesh:#}");
    assert_eq!(proxy["sync"], "SYNCED", "{mesh:#}");
    assert_eq!(proxy["scraped"], false, "{mesh:#}");
    assert!(
        proxy["scrapeError"]
            .as_str()
            .is_some_and(|e| e.contains("10.244.0.5:15090")),
        "{mesh:#}"
    );
    let nodes: Vec<&str> = mesh["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert!(
        nodes.contains(&"httpbin-deployment.default") && nodes.contains(&"ubuntu.default"),
        "{mesh:#}"
    );
    assert_eq!(mesh["edges"], serde_json::json!([]));

    client.abort();
    tokio::time::timeout(Duration::from_secs(10), discovery.shutdown())
        .await
        .expect("clean shutdown");
}
