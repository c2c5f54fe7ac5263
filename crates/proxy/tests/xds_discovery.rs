//! The sidecar with its resources from a control plane: an in-test `AdsServer` fed by a `watch`
//! channel, the proxy's discovery client applying pushes to a running sidecar, and requests
//! through it. A bad push is NACKed while traffic flows on the previous config; killing the
//! server keeps traffic flowing; restarting it resyncs.

mod harness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harness::{App, Sidecar, httpbin_yaml, json, vip};
use tokio::sync::{oneshot, watch};
use xds::ProxyResources;
use xds::ads::{AdsServer, Backoff, Node, ResourceType, SnapshotSource, Status};

const WAIT: Duration = Duration::from_secs(10);

/// The control plane: one `watch` for every proxy.
struct Source(watch::Receiver<Arc<ProxyResources>>);

impl SnapshotSource for Source {
    fn watch(&self, _node: &Node) -> Result<watch::Receiver<Arc<ProxyResources>>, Status> {
        Ok(self.0.clone())
    }
}

/// An ADS server on its own runtime; dropping it kills the runtime and closes every socket, as
/// a control-plane crash would.
struct ControlPlane {
    server: AdsServer,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    fn start(
        addr: SocketAddr,
        resources: watch::Receiver<Arc<ProxyResources>>,
    ) -> (ControlPlane, SocketAddr) {
        let server = AdsServer::new(Arc::new(Source(resources)));
        let serving = server.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut tries = 0;
                let listener = loop {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(e) if tries < 100 => {
                            tries += 1;
                            tracing::debug!(%e, "port still busy");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("bind {addr}: {e}"),
                    }
                };
                bound_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("report");
                tokio::spawn(serving.serve(listener));
                let _ = stopped.await;
            });
            rt.shutdown_background();
        });
        let addr = bound_rx.recv_timeout(WAIT).expect("bound");
        (
            ControlPlane {
                server,
                stop: Some(stop),
                thread: Some(thread),
            },
            addr,
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The mesh with `httpbin-service` served by `app` (dialled directly: no server sidecar), with
/// its lists in resource-name order, as the discovery client rebuilds them.
fn mesh_to(app: &App) -> ProxyResources {
    let mut res =
        ProxyResources::parse(&httpbin_yaml(&[app.addr], "ROUND_ROBIN", "")).expect("valid");
    res.workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    res
}

/// Same, but with a port the validation refuses.
fn invalid(app: &App) -> ProxyResources {
    let mut res = mesh_to(app);
    res.services[0].ports[0].port = 0;
    res
}

/// Which app answers `GET /headers` through the sidecar.
async fn answered_by(sidecar: &Sidecar) -> String {
    let (resp, body) = sidecar.get(vip(), "httpbin-service", "/headers").await;
    if resp.status() != 200 {
        return format!("status {}", resp.status());
    }
    json(&body)["app"].as_str().unwrap_or("?").to_string()
}

async fn wait_answer(sidecar: &Sidecar, app: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = answered_by(sidecar).await;
        if got == app {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {app} to answer, got {got}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_sidecar_follows_the_control_plane_and_survives_its_loss() {
    let (v1, v2) = (App::start("v1").await, App::start("v2").await);
    // The first push is invalid: NACKed, and the proxy is not ready.
    let (push, resources) = watch::channel(Arc::new(invalid(&v1)));
    let (cp, addr) = ControlPlane::start("127.0.0.1:0".parse().expect("addr"), resources);

    let sidecar = Sidecar::builder("").start().await;
    let cfg = proxy::config::ProxyConfig {
        pod_name: Some("ubuntu-deployment-cc86cc647-vsvbh".into()),
        pod_namespace: Some("default".into()),
        instance_ip: Some("127.0.0.1".parse().expect("ip")),
        ..proxy::config::ProxyConfig::default()
    };
    let client = proxy::xds_client::client(&addr.to_string(), &cfg, &Default::default())
        .expect("client")
        .with_backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        });
    let node_id = proxy::xds_client::proxy_id(&cfg).to_string();
    let ready = Arc::new(AtomicBool::new(false));
    let r = ready.clone();
    let (_drain, drain) = proxy::drain::channel();
    tokio::spawn(proxy::xds_client::run(
        client,
        sidecar.store.clone(),
        move || r.store(true, Ordering::SeqCst),
        drain,
    ));

    let nack = wait_for(&cp, &node_id, |t| t.nacked.is_some()).await;
    assert_eq!(
        nack.nacked.map(|n| n.error),
        Some(
            "services[0].ports[0].port: must be 1..65535; \
             services[0].endpoints[0].ports[80]: is not a port of the service"
                .to_string()
        )
    );
    assert!(!ready.load(Ordering::SeqCst), "ready before a good config");
    assert_eq!(sidecar.store.load().resources.services.len(), 0);

    // A good config: ready, and traffic goes where it says.
    push.send_replace(Arc::new(mesh_to(&v1)));
    wait_answer(&sidecar, "v1").await;
    assert!(ready.load(Ordering::SeqCst));
    // The whole config, not just the type that changed since the rejected first push.
    assert_eq!(*sidecar.store.load().resources, mesh_to(&v1));
    push.send_replace(Arc::new(mesh_to(&v2)));
    wait_answer(&sidecar, "v2").await;
    let acked = wait_for(&cp, &node_id, |t| t.acked.is_some() && !t.pending).await;

    // A bad push is NACKed with the validation message; traffic stays on the previous config.
    push.send_replace(Arc::new(invalid(&v1)));
    let st = wait_for(&cp, &node_id, |t| {
        t.nacked
            .as_ref()
            .is_some_and(|n| n.nonce != nack_nonce(&acked))
    })
    .await;
    assert_eq!(st.acked, acked.acked, "the ACKed version stays");
    for _ in 0..5 {
        assert_eq!(answered_by(&sidecar).await, "v2");
    }

    // The control plane dies: the last good config keeps serving.
    drop(cp);
    for _ in 0..10 {
        assert_eq!(answered_by(&sidecar).await, "v2");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    // It comes back (same address) with a new config: the sidecar resyncs.
    let (push2, resources2) = watch::channel(Arc::new(mesh_to(&v1)));
    let (cp, _) = ControlPlane::start(addr, resources2);
    wait_answer(&sidecar, "v1").await;
    wait_for(&cp, &node_id, |t| t.acked.is_some() && !t.pending).await;
    drop(push);
    drop(push2);
}

fn nack_nonce(t: &xds::ads::TypeStatus) -> String {
    t.nacked
        .as_ref()
        .map(|n| n.nonce.clone())
        .unwrap_or_default()
}

/// The server's view of the proxy's Service type once `pred` holds.
async fn wait_for(
    cp: &ControlPlane,
    node_id: &str,
    pred: impl Fn(&xds::ads::TypeStatus) -> bool,
) -> xds::ads::TypeStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = cp
            .server
            .status()
            .into_iter()
            .find(|p| p.node_id == node_id)
            .and_then(|p| p.types.get(&ResourceType::Service).cloned());
        if let Some(t) = &found
            && pred(t)
        {
            return t.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status of {node_id} never matched: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
