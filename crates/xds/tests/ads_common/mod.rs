//! Helpers for the ADS tests: a control plane that is a `watch` per proxy, a server that can be
//! killed like a process (its runtime dropped, every socket closed at once), a hand-driven Delta
//! stream for protocol-level checks, and sample meshes.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Streaming;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use xds::ProxyResources;
use xds::ads::{AdsServer, Node, ProxyId, ResourceType, SnapshotSource};

/// How long a test waits for anything.
pub const WAIT: Duration = Duration::from_secs(10);

/// A control plane in a map: each node id gets its own `watch` of resources, made on first sight
/// by `initial` (so 100 proxies can each get their own).
pub struct Source {
    senders: Mutex<HashMap<String, watch::Sender<Arc<ProxyResources>>>>,
    initial: Box<dyn Fn(&str) -> ProxyResources + Send + Sync>,
}

impl Source {
    /// Every proxy starts with `res`.
    pub fn fixed(res: ProxyResources) -> Arc<Source> {
        Source::per_node(move |_| res.clone())
    }

    /// Each proxy starts with `f(node id)`.
    pub fn per_node(f: impl Fn(&str) -> ProxyResources + Send + Sync + 'static) -> Arc<Source> {
        Arc::new(Source {
            senders: Mutex::new(HashMap::new()),
            initial: Box::new(f),
        })
    }

    /// Pushes `res` to the proxy `node_id` (to every proxy when `None`).
    pub fn set(&self, node_id: Option<&str>, res: ProxyResources) {
        let senders = self.senders.lock().expect("lock");
        let res = Arc::new(res);
        for (id, tx) in senders.iter() {
            if node_id.is_none_or(|n| n == id) {
                tx.send_replace(res.clone());
            }
        }
    }
}

impl SnapshotSource for Source {
    fn watch(&self, node: &Node) -> Result<watch::Receiver<Arc<ProxyResources>>, tonic::Status> {
        let mut senders = self.senders.lock().expect("lock");
        let tx = senders
            .entry(node.id.clone())
            .or_insert_with(|| watch::Sender::new(Arc::new((self.initial)(&node.id))));
        Ok(tx.subscribe())
    }
}

/// An ADS server on its own runtime and thread; [`ServerProcess::kill`] drops the runtime, which
/// closes the listener and every stream at once, like a process exit.
pub struct ServerProcess {
    pub addr: SocketAddr,
    pub server: AdsServer,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerProcess {
    /// Serves on 127.0.0.1:0.
    pub fn start(source: Arc<dyn SnapshotSource>) -> ServerProcess {
        ServerProcess::start_on("127.0.0.1:0".parse().expect("addr"), source)
    }

    /// Serves on `addr` (to restart on the same port).
    pub fn start_on(addr: SocketAddr, source: Arc<dyn SnapshotSource>) -> ServerProcess {
        let server = AdsServer::new(source);
        let svc = server.service();
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
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
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("bind {addr}: {e}"),
                    }
                };
                bound_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("report address");
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(svc)
                        .serve_with_incoming(incoming),
                );
                let _ = stopped.await;
            });
            rt.shutdown_background();
        });
        let addr = bound_rx.recv_timeout(WAIT).expect("server bound");
        ServerProcess {
            addr,
            server,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the server abruptly.
    pub fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The server's view of the proxy `node_id`, once `pred` holds for it.
    pub async fn wait_status(
        &self,
        node_id: &str,
        pred: impl Fn(&xds::ads::ProxyStatus) -> bool,
    ) -> xds::ads::ProxyStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = self
                .server
                .status()
                .into_iter()
                .find(|p| p.node_id == node_id);
            if let Some(p) = &found
                && pred(p)
            {
                return p.clone();
            }
            if tokio::time::Instant::now() > deadline {
                panic!("status of {node_id} never matched; last: {found:#?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A sidecar's node for pod `pod` in `default`.
pub fn node(pod: &str, ip: u8) -> Node {
    ProxyId::sidecar(std::net::IpAddr::from([10, 0, 0, ip]), pod, "default")
        .to_node(&BTreeMap::new())
}

/// A Delta stream driven by hand, for protocol-level checks.
pub struct RawStream {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl RawStream {
    /// Opens a stream as `node`, subscribing (wildcard) to `types` with the given initial
    /// versions.
    pub async fn open(
        addr: SocketAddr,
        node: Node,
        types: &[ResourceType],
        initial: &BTreeMap<ResourceType, HashMap<String, String>>,
    ) -> RawStream {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        for (i, ty) in types.iter().enumerate() {
            tx.send(DeltaDiscoveryRequest {
                node: (i == 0).then(|| node.clone()),
                type_url: ty.type_url().to_string(),
                initial_resource_versions: initial.get(ty).cloned().unwrap_or_default(),
                ..Default::default()
            })
            .await
            .expect("queue");
        }
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        RawStream { tx, rx }
    }

    /// Sends a request.
    pub async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.expect("send");
    }

    /// The next response.
    pub async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("stream open")
    }

    /// Asserts nothing arrives for a while.
    pub async fn quiet(&mut self) {
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await {
            panic!("expected no response, got {m:?}");
        }
    }

    /// ACKs `resp`.
    pub async fn ack(&self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    /// NACKs `resp` with `message`.
    pub async fn nack(&self, resp: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: Some(rpc::Status {
                code: 3,
                message: message.to_string(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }
}

/// Names and versions of a response's resources.
pub fn versions(resp: &DeltaDiscoveryResponse) -> HashMap<String, String> {
    resp.resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

/// Sorted names of a response's resources.
pub fn names(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = resp.resources.iter().map(|r| r.name.clone()).collect();
    n.sort();
    n
}

/// A valid mesh: workloads `w1..=wn` (pod `pod-i` at 10.1.0.i), one service over them, a route,
/// a policy and an authorization; lists in resource-name order, as a client rebuilds them.
pub fn mesh(n: u8) -> ProxyResources {
    let mut text = String::from("workloads:\n");
    for i in 1..=n {
        text.push_str(&format!(
            "- {{uid: w{i}, name: pod-{i}, namespace: default, addresses: [10.1.0.{i}], labels: {{app: a}}}}\n"
        ));
    }
    text.push_str(
        r#"services:
- hostname: a.default.svc.cluster.local
  name: a
  namespace: default
  vips: [10.96.0.1]
  ports: [{name: http, port: 80}]
httpRoutes:
- {name: default/a, hosts: [a.default.svc.cluster.local]}
trafficPolicies:
- {name: default/a, host: a.default.svc.cluster.local}
authorizations:
- {name: pa-default, namespace: default, peerAuthentication: {mode: PERMISSIVE}}
"#,
    );
    let mut res = ProxyResources::parse(&text).expect("valid mesh");
    res.workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    res
}
