//! The Delta ADS server: one task per proxy stream turns per-proxy snapshots into deltas.
//!
//! The control plane implements [`SnapshotSource`]: for a connecting proxy's `Node` it returns a
//! `watch` channel of that proxy's [`ProxyResources`]. [`AdsServer`] does the protocol:
//!
//! - subscriptions per type, wildcard (`*`, or an empty first subscribe list) and explicit names;
//! - the first response per type is sent even when empty, so a proxy knows it is in sync; a
//!   reconnecting proxy's `initial_resource_versions` are taken as what it already has, so it is
//!   sent only what differs (and `removed_resources` for what is gone);
//! - later responses carry only changed or added resources and the names of removed ones;
//! - every response has a nonce; at most one response per type awaits its ACK (Envoy's flow
//!   control). Changes that arrive meanwhile are coalesced: after the ACK the proxy gets the
//!   difference to the latest snapshot, never the intermediate ones;
//! - a NACK is logged with the proxy id and its `error_detail`, kept for [`AdsServer::status`],
//!   and what was rejected counts as not delivered: the next change (of any type) resends it
//!   with the new one, so a proxy that rejected its first sync gets every type again;
//! - [`AdsServer::status`] lists connected proxies with, per type, the versions last sent, ACKed
//!   and NACKed (`proxy-status`).
//!
//! Each stream has its own task and a bounded response queue that never holds more than one
//! response per type, so a slow proxy delays only itself. No lock is held across an `.await`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::codec::{EncodedSnapshot, ResourceType, set_version};
use crate::ProxyResources;

/// Where the server gets each proxy's resources; implemented by the control plane.
pub trait SnapshotSource: Send + Sync {
    /// The resources for the proxy `node` identifies, now and after every change. An error (for
    /// example `permission_denied` for an unknown proxy) ends the stream with that status.
    fn watch(&self, node: &Node) -> Result<watch::Receiver<Arc<ProxyResources>>, Status>;
}

/// Limits of the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How long a new stream may take to send its first request (with the node).
    pub first_request_timeout: Duration,
    /// Largest request accepted from a proxy, in bytes.
    pub max_request_size: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            first_request_timeout: Duration::from_secs(30),
            max_request_size: 4 * 1024 * 1024,
        }
    }
}

/// A rejected response, as the proxy reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The version (`system_version_info`) of the rejected response.
    pub version: String,
    /// Its nonce.
    pub nonce: String,
    /// The proxy's reason (`error_detail.message`).
    pub error: String,
    /// When the NACK arrived.
    pub at: SystemTime,
}

/// One resource type of one proxy stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// Version of the set the proxy should have: the latest snapshot, as subscribed. The proxy is
    /// in sync when `acked` equals it.
    pub latest: Option<String>,
    /// Version of the proxy's set of this type after the last response sent.
    pub sent: Option<String>,
    /// Version last ACKed.
    pub acked: Option<String>,
    /// The last NACK on this stream, if any (it stays after a later ACK; compare versions).
    pub nacked: Option<Nack>,
    /// A response awaits its ACK.
    pub pending: bool,
    /// Resources of this type the proxy holds as of the last ACK.
    pub resources: usize,
    /// Responses sent on this stream.
    pub pushes: u64,
    /// Resources (changed or added) sent on this stream, over all responses.
    pub resources_sent: u64,
    /// Removals sent on this stream, over all responses.
    pub removals_sent: u64,
}

/// One connected proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStatus {
    /// The stream's number on this server (a reconnect gets a new one).
    pub connection: u64,
    /// The node id (`sidecar~10.0.0.5~pod.ns~ns.svc.cluster.local`).
    pub node_id: String,
    /// The proxy's address, when the transport knows it.
    pub peer: Option<SocketAddr>,
    /// When the stream started.
    pub connected_at: SystemTime,
    /// Per subscribed type.
    pub types: BTreeMap<ResourceType, TypeStatus>,
}

struct Shared {
    source: Arc<dyn SnapshotSource>,
    options: ServerOptions,
    next_connection: AtomicU64,
    proxies: Mutex<BTreeMap<u64, ProxyStatus>>,
}

impl Shared {
    fn update(&self, connection: u64, f: impl FnOnce(&mut ProxyStatus)) {
        let mut proxies = self.proxies.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = proxies.get_mut(&connection) {
            f(p);
        }
    }
}

/// The Delta ADS service. Cheap to clone; clones share the status registry.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl AdsServer {
    /// A server that asks `source` for each proxy's resources.
    pub fn new(source: Arc<dyn SnapshotSource>) -> AdsServer {
        AdsServer::with_options(source, ServerOptions::default())
    }

    /// A server with explicit limits.
    pub fn with_options(source: Arc<dyn SnapshotSource>, options: ServerOptions) -> AdsServer {
        AdsServer {
            shared: Arc::new(Shared {
                source,
                options,
                next_connection: AtomicU64::new(1),
                proxies: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(self.shared.options.max_request_size)
            .max_encoding_message_size(usize::MAX)
    }

    /// Serves ADS alone on `listener` (plain HTTP/2) until the future is dropped or fails. A
    /// control plane that serves more (the CA, TLS on 15012) adds [`AdsServer::service`] to its
    /// own `tonic::transport::Server` instead. Dropping the future stops accepting; open streams
    /// end when their connections do.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    }

    /// Connected proxies, in connection order.
    pub fn status(&self) -> Vec<ProxyStatus> {
        let proxies = self
            .shared
            .proxies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        proxies.values().cloned().collect()
    }
}

type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

/// Responses queued per stream. At most one response per type is un-ACKed, so this never fills.
const RESPONSE_QUEUE: usize = 2 * ResourceType::ALL.len();

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "state-of-the-world ADS is not served; use DeltaAggregatedResources",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        // The response starts at once: a client may wait for its headers before sending the
        // first request. Errors in that request end the stream with their status.
        let shared = self.shared.clone();
        tokio::spawn(async move {
            match accept(&shared, peer, inbound, tx.clone()).await {
                Ok((stream, first, inbound, snapshots)) => {
                    stream.run(first, inbound, snapshots).await
                }
                Err(status) => {
                    tracing::debug!(?peer, %status, "ADS stream refused");
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Accepted = (
    ProxyStream,
    DeltaDiscoveryRequest,
    Streaming<DeltaDiscoveryRequest>,
    watch::Receiver<Arc<ProxyResources>>,
);

/// Reads the first request, asks the source for the node's snapshots and registers the stream.
async fn accept(
    shared: &Arc<Shared>,
    peer: Option<SocketAddr>,
    mut inbound: Streaming<DeltaDiscoveryRequest>,
    out: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) -> Result<Accepted, Status> {
    let first = tokio::time::timeout(shared.options.first_request_timeout, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no request on the new stream"))??
        .ok_or_else(|| Status::cancelled("stream closed before its first request"))?;
    let node = first
        .node
        .clone()
        .ok_or_else(|| Status::invalid_argument("the first request must carry the node"))?;
    if node.id.is_empty() {
        return Err(Status::invalid_argument("the node has no id"));
    }
    let snapshots = shared.source.watch(&node)?;
    let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    shared
        .proxies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(
            connection,
            ProxyStatus {
                connection,
                node_id: node.id.clone(),
                peer,
                connected_at: SystemTime::now(),
                types: BTreeMap::new(),
            },
        );
    tracing::info!(proxy = %node.id, connection, ?peer, "ADS stream opened");
    let stream = ProxyStream {
        connection,
        node_id: node.id,
        shared: shared.clone(),
        out,
        snapshot: EncodedSnapshot::default(),
        types: BTreeMap::new(),
        nonces: 0,
    };
    Ok((stream, first, inbound, snapshots))
}

/// A response sent and not yet ACKed or NACKed.
#[derive(Debug)]
struct InFlight {
    nonce: String,
    version: String,
    /// What the proxy had before, for the names this response changed (to roll back on NACK).
    previous: Vec<(String, Option<String>)>,
}

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy has (or will have once the in-flight response is ACKed): name → version.
    has: BTreeMap<String, String>,
    in_flight: Option<InFlight>,
    /// The first response for this type is still due (sent even when empty).
    initial: bool,
    /// The last response was NACKed: the next change of any type resends what the proxy lacks,
    /// even if that is nothing, so a proxy that rejected its first sync gets every type again.
    rejected: bool,
    /// The snapshot or the subscription changed since the last diff.
    dirty: bool,
}

impl TypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// Why a stream task stops.
enum Stop {
    /// The proxy closed its side or went away.
    Gone,
    /// The snapshot source dropped this proxy.
    SourceClosed,
}

struct ProxyStream {
    connection: u64,
    node_id: String,
    shared: Arc<Shared>,
    out: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    snapshot: EncodedSnapshot,
    types: BTreeMap<ResourceType, TypeState>,
    nonces: u64,
}

impl ProxyStream {
    async fn run(
        mut self,
        first: DeltaDiscoveryRequest,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
        mut snapshots: watch::Receiver<Arc<ProxyResources>>,
    ) {
        let initial = snapshots.borrow_and_update().clone();
        self.set_snapshot(&initial);
        self.on_request(first);
        let stop = loop {
            if let Err(stop) = self.flush().await {
                break stop;
            }
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => self.on_request(req),
                    Ok(None) => break Stop::Gone,
                    Err(status) => {
                        tracing::debug!(proxy = %self.node_id, %status, "ADS stream error");
                        break Stop::Gone;
                    }
                },
                changed = snapshots.changed() => match changed {
                    Ok(()) => {
                        let snap = snapshots.borrow_and_update().clone();
                        self.set_snapshot(&snap);
                    }
                    Err(_) => break Stop::SourceClosed,
                },
                _ = self.out.closed() => break Stop::Gone,
            }
        };
        if let Stop::SourceClosed = stop {
            let _ = self
                .out
                .send(Err(Status::unavailable(
                    "the control plane dropped this proxy",
                )))
                .await;
        }
        self.shared
            .proxies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.connection);
        tracing::info!(proxy = %self.node_id, connection = self.connection, "ADS stream closed");
    }

    fn set_snapshot(&mut self, res: &ProxyResources) {
        let (snap, problems) = EncodedSnapshot::encode(res);
        for p in problems {
            tracing::warn!(proxy = %self.node_id, problem = %p, "resource not sent");
        }
        let mut changed = Vec::new();
        for (ty, st) in &mut self.types {
            if st.rejected || snap.get(*ty) != self.snapshot.get(*ty) {
                st.dirty = true;
                changed.push(*ty);
            }
        }
        self.snapshot = snap;
        for ty in changed {
            self.refresh_latest(ty);
        }
    }

    /// Records the version of what the proxy should have of `ty`.
    fn refresh_latest(&self, ty: ResourceType) {
        let Some(st) = self.types.get(&ty) else {
            return;
        };
        let empty = BTreeMap::new();
        let want = self.snapshot.get(ty).unwrap_or(&empty);
        let latest = set_version(
            want.iter()
                .filter(|(n, _)| st.wants(n))
                .map(|(n, e)| (n, &e.version)),
        );
        self.shared.update(self.connection, |p| {
            p.types.entry(ty).or_default().latest = Some(latest);
        });
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest) {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            tracing::warn!(proxy = %self.node_id, type_url = %req.type_url, "request for an unknown type ignored");
            return;
        };
        let first = !self.types.contains_key(&ty);
        let st = self.types.entry(ty).or_default();
        if first {
            // A reconnecting proxy says what it kept; only the difference is sent.
            st.has = req.initial_resource_versions.into_iter().collect();
            st.wildcard = req.resource_names_subscribe.is_empty();
            st.initial = true;
            st.dirty = true;
            self.shared.update(self.connection, |p| {
                p.types.insert(ty, TypeStatus::default());
            });
        } else if !req.response_nonce.is_empty() {
            let matches = st
                .in_flight
                .as_ref()
                .is_some_and(|f| f.nonce == req.response_nonce);
            if let (true, Some(flight)) = (matches, st.in_flight.take()) {
                match req.error_detail {
                    None => {
                        let resources = st.has.len();
                        self.shared.update(self.connection, |p| {
                            let t = p.types.entry(ty).or_default();
                            t.acked = Some(flight.version);
                            t.pending = false;
                            t.resources = resources;
                        });
                    }
                    Some(err) => {
                        tracing::warn!(
                            proxy = %self.node_id,
                            r#type = %ty,
                            version = %flight.version,
                            nonce = %flight.nonce,
                            error = %err.message,
                            "proxy rejected a push (NACK)"
                        );
                        // The proxy kept what it had: the rejected resources count as not
                        // delivered, so the next change sends them again with the new ones.
                        st.rejected = true;
                        for (name, prev) in flight.previous {
                            match prev {
                                Some(v) => st.has.insert(name, v),
                                None => st.has.remove(&name),
                            };
                        }
                        let nack = Nack {
                            version: flight.version,
                            nonce: flight.nonce,
                            error: err.message,
                            at: SystemTime::now(),
                        };
                        self.shared.update(self.connection, |p| {
                            let t = p.types.entry(ty).or_default();
                            t.nacked = Some(nack);
                            t.pending = false;
                        });
                    }
                }
            } else {
                tracing::debug!(proxy = %self.node_id, r#type = %ty, nonce = %req.response_nonce, "stale nonce ignored");
            }
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else {
                st.names.insert(name);
            }
            st.dirty = true;
        }
        for name in req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(&name);
            }
            // The proxy forgets what it unsubscribed from.
            let TypeState {
                has,
                names,
                wildcard,
                ..
            } = &mut *st;
            has.retain(|n, _| *wildcard || names.contains(n));
            st.dirty = true;
        }
        if st.dirty {
            self.refresh_latest(ty);
        }
    }

    /// Sends, per type with nothing in flight, the difference between what the proxy has and
    /// the snapshot.
    async fn flush(&mut self) -> Result<(), Stop> {
        for ty in ResourceType::ALL {
            let Some(st) = self.types.get_mut(&ty) else {
                continue;
            };
            if st.in_flight.is_some() || !st.dirty {
                continue;
            }
            st.dirty = false;
            let empty = BTreeMap::new();
            let want = self.snapshot.get(ty).unwrap_or(&empty);
            let mut previous = Vec::new();
            let mut resources = Vec::new();
            for (name, enc) in want {
                if !st.wants(name) {
                    continue;
                }
                let had = st.has.get(name);
                if had != Some(&enc.version) {
                    previous.push((name.clone(), had.cloned()));
                    resources.push(enc.to_resource(name));
                }
            }
            let removed: Vec<String> = st
                .has
                .keys()
                .filter(|n| !(st.wants(n) && want.contains_key(*n)))
                .cloned()
                .collect();
            if resources.is_empty() && removed.is_empty() && !st.initial && !st.rejected {
                continue;
            }
            st.initial = false;
            st.rejected = false;
            for name in &removed {
                let prev = st.has.remove(name);
                previous.push((name.clone(), prev));
            }
            for r in &resources {
                st.has.insert(r.name.clone(), r.version.clone());
            }
            let version = set_version(&st.has);
            self.nonces += 1;
            let nonce = format!("{}-{}", self.connection, self.nonces);
            tracing::debug!(
                proxy = %self.node_id,
                r#type = %ty,
                %version,
                changed = resources.len(),
                removed = removed.len(),
                "push"
            );
            st.in_flight = Some(InFlight {
                nonce: nonce.clone(),
                version: version.clone(),
                previous,
            });
            let response = DeltaDiscoveryResponse {
                system_version_info: version.clone(),
                resources,
                type_url: ty.type_url().to_string(),
                removed_resources: removed,
                nonce,
                ..DeltaDiscoveryResponse::default()
            };
            let (sent, removals) = (response.resources.len(), response.removed_resources.len());
            self.shared.update(self.connection, |p| {
                let t = p.types.entry(ty).or_default();
                t.sent = Some(version);
                t.pending = true;
                t.pushes += 1;
                t.resources_sent += sent as u64;
                t.removals_sent += removals as u64;
            });
            self.out.send(Ok(response)).await.map_err(|_| Stop::Gone)?;
        }
        Ok(())
    }
}
