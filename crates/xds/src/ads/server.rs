//! The Delta ADS server: one task per proxy stream turns snapshots into deltas.
//!
//! The control plane implements [`SnapshotSource`]: for a connecting proxy's `Node` it returns a
//! `watch` channel of that proxy's [`Snapshot`] (encoded views, shared between proxies that see
//! the same thing), or, for a simple source, of its [`ProxyResources`], which the stream then
//! encodes itself. [`AdsServer`] does the protocol:
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
//! - a stream the transport authenticated (a [`PeerIdentity`] in its request's extensions) is
//!   refused with `PermissionDenied` when its node claims another namespace or service account
//!   ([`super::identity`]); unauthenticated streams are not checked;
//! - [`AdsServer::status`] lists connected proxies with, per type, the versions last sent, ACKed
//!   and NACKed (`proxy-status`).
//!
//! Each stream has its own task and a bounded response queue that never holds more than one
//! response per type, so a slow proxy delays only itself. No lock is held across an `.await`.
//!
//! **Cost per stream.** A stream keeps, per type, the `Arc` of the view it last sent (what the
//! proxy holds is that view as subscribed), not a copy of names and versions; the difference to
//! a new view is the one recorded when the view was built ([`TypeView::build`], computed once for
//! all the proxies that move together) or a walk comparing entries by pointer. Its state per
//! type is a slot in the task, and its status for [`AdsServer::status`] a small record whose
//! versions are the views' own `Arc`s, turned into a [`ProxyStatus`] only when asked. A queued
//! response holds the shared encodings and is written a few KB at a time as HTTP/2 asks
//! (`ads::response`). A first sync is the big response: at most
//! [`ServerOptions::max_concurrent_syncs`] streams do theirs at once (Istio's push throttle),
//! each until its proxy ACKed every type or [`ServerOptions::sync_timeout`] passed, so
//! thousands of proxies reconnecting together do not hold thousands of full responses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::codec::{EncodedResource, ResourceType, set_version};
use super::identity::{PeerIdentity, check_node};
use super::response::{Outgoing, Resources};
use super::transport::AdsService;
use super::view::{Snapshot, TypeView};
use crate::ProxyResources;

/// Where the server gets each proxy's resources; implemented by the control plane.
///
/// Implement one of the two methods: [`SnapshotSource::watch_snapshots`] for encoded views
/// shared between proxies (the control plane), or [`SnapshotSource::watch`] for plain
/// per-proxy resources (tests, small tools), which each stream encodes itself.
pub trait SnapshotSource: Send + Sync {
    /// The resources for the proxy `node` identifies, now and after every change. An error (for
    /// example `permission_denied` for an unknown proxy) ends the stream with that status.
    fn watch(&self, node: &Node) -> Result<watch::Receiver<Arc<ProxyResources>>, Status> {
        let _ = node;
        Err(Status::unimplemented(
            "this snapshot source serves no resources",
        ))
    }

    /// The encoded snapshots for the proxy `node` identifies, or `None` to use
    /// [`SnapshotSource::watch`]. Errors as there.
    fn watch_snapshots(&self, node: &Node) -> Result<Option<watch::Receiver<Snapshot>>, Status> {
        let _ = node;
        Ok(None)
    }
}

/// A stream's feed of snapshots.
enum Feed {
    Shared(watch::Receiver<Snapshot>),
    Resources(watch::Receiver<Arc<ProxyResources>>),
}

impl Feed {
    async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        match self {
            Feed::Shared(rx) => rx.changed().await,
            Feed::Resources(rx) => rx.changed().await,
        }
    }

    /// The latest snapshot, marked seen.
    fn current(&mut self, node_id: &str) -> Snapshot {
        match self {
            Feed::Shared(rx) => rx.borrow_and_update().clone(),
            Feed::Resources(rx) => {
                let res = rx.borrow_and_update().clone();
                let (snap, problems) = Snapshot::encode(&res);
                for p in problems {
                    tracing::warn!(proxy = %node_id, problem = %p, "resource not sent");
                }
                snap
            }
        }
    }
}

/// Limits of the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How long a new stream may take to send its first request (with the node).
    pub first_request_timeout: Duration,
    /// Largest request accepted from a proxy, in bytes.
    pub max_request_size: usize,
    /// Streams doing their first sync at once; the others wait for their turn (Istio's
    /// `PILOT_PUSH_THROTTLE` is 100).
    pub max_concurrent_syncs: usize,
    /// How long a first sync may keep its turn while the proxy does not ACK.
    pub sync_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            first_request_timeout: Duration::from_secs(30),
            max_request_size: 4 * 1024 * 1024,
            max_concurrent_syncs: 100,
            sync_timeout: Duration::from_secs(10),
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
    pub nacked: Option<Box<Nack>>,
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

/// A resource type's sync state as `istioctl proxy-status` names it; ordered best to worst, so
/// a column standing for several types shows the worst of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncState {
    /// The latest config was sent and ACKed.
    Synced,
    /// Nothing of this type was sent.
    NotSent,
    /// Sent and not yet ACKed, or a newer config not sent yet; `never_acked` when nothing
    /// was ever ACKed.
    Stale {
        /// Nothing of this type was ever ACKed.
        never_acked: bool,
    },
    /// The proxy rejected what was last sent.
    Nack,
}

impl SyncState {
    /// istioctl's word for it.
    pub fn text(self) -> &'static str {
        match self {
            SyncState::Synced => "SYNCED",
            SyncState::NotSent => "NOT SENT",
            SyncState::Stale { never_acked: false } => "STALE",
            SyncState::Stale { never_acked: true } => "STALE (Never Acknowledged)",
            SyncState::Nack => "NACK",
        }
    }

    /// The state [`SyncState::text`] names.
    pub fn parse(text: &str) -> Option<SyncState> {
        [
            SyncState::Synced,
            SyncState::NotSent,
            SyncState::Stale { never_acked: false },
            SyncState::Stale { never_acked: true },
            SyncState::Nack,
        ]
        .into_iter()
        .find(|s| s.text() == text)
    }
}

impl TypeStatus {
    /// Its sync state, by istioctl's rule: NACK when the proxy rejected what was last sent,
    /// STALE while that awaits its ACK or a newer config is not sent yet, NOT SENT when nothing
    /// was sent.
    pub fn sync_state(&self) -> SyncState {
        let Some(sent) = &self.sent else {
            return SyncState::NotSent;
        };
        if self.acked.as_ref() != Some(sent) {
            if self.nacked.as_ref().is_some_and(|n| &n.version == sent) {
                return SyncState::Nack;
            }
            return SyncState::Stale {
                never_acked: self.acked.is_none(),
            };
        }
        if self.latest.as_ref().is_some_and(|l| l != sent) {
            return SyncState::Stale { never_acked: false };
        }
        SyncState::Synced
    }
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
    syncs: Arc<Semaphore>,
    next_connection: AtomicU64,
    /// Responses queued over all streams.
    responses: AtomicU64,
    /// Each connected stream's status, by connection; the stream updates its own under its own
    /// lock, and [`AdsServer::status`] turns them into [`ProxyStatus`] when asked.
    proxies: Mutex<BTreeMap<u64, Arc<Mutex<Registered>>>>,
}

/// What the server keeps about one connected stream for [`AdsServer::status`]: the compact form
/// of a [`ProxyStatus`] (versions shared with the views, a slot per type instead of a map).
struct Registered {
    node_id: Arc<str>,
    peer: Option<SocketAddr>,
    connected_at: SystemTime,
    types: ByType<Tracked>,
}

impl Registered {
    fn status(&self, connection: u64) -> ProxyStatus {
        ProxyStatus {
            connection,
            node_id: self.node_id.to_string(),
            peer: self.peer,
            connected_at: self.connected_at,
            types: self.types.iter().map(|(ty, t)| (ty, t.status())).collect(),
        }
    }
}

/// [`TypeStatus`] as kept: the versions are the `Arc`s of the views (or of the version computed
/// for a subscription), shared with every stream that holds the same view.
#[derive(Debug, Default)]
struct Tracked {
    latest: Option<Arc<str>>,
    sent: Option<Arc<str>>,
    acked: Option<Arc<str>>,
    nacked: Option<Box<Nack>>,
    pending: bool,
    resources: usize,
    pushes: u64,
    resources_sent: u64,
    removals_sent: u64,
}

impl Tracked {
    fn status(&self) -> TypeStatus {
        let text = |v: &Option<Arc<str>>| v.as_deref().map(str::to_string);
        TypeStatus {
            latest: text(&self.latest),
            sent: text(&self.sent),
            acked: text(&self.acked),
            nacked: self.nacked.clone(),
            pending: self.pending,
            resources: self.resources,
            pushes: self.pushes,
            resources_sent: self.resources_sent,
            removals_sent: self.removals_sent,
        }
    }
}

/// Updates a stream's status for `ty`.
fn track(registered: &Mutex<Registered>, ty: ResourceType, f: impl FnOnce(&mut Tracked)) {
    let mut registered = registered.lock().unwrap_or_else(PoisonError::into_inner);
    f(registered.types.get_or_default(ty));
}

/// One value per resource type, in [`ResourceType::ALL`] order: a slot per type inside the
/// owner, where a `BTreeMap` allocated a node with room for eleven per connected proxy.
#[derive(Debug)]
struct ByType<T>([Option<T>; ResourceType::ALL.len()]);

impl<T> Default for ByType<T> {
    fn default() -> Self {
        ByType(std::array::from_fn(|_| None))
    }
}

impl<T> ByType<T> {
    fn get_mut(&mut self, ty: ResourceType) -> Option<&mut T> {
        self.0[ty as usize].as_mut()
    }

    fn contains(&self, ty: ResourceType) -> bool {
        self.0[ty as usize].is_some()
    }

    fn get(&self, ty: ResourceType) -> Option<&T> {
        self.0[ty as usize].as_ref()
    }

    fn get_or_default(&mut self, ty: ResourceType) -> &mut T
    where
        T: Default,
    {
        self.0[ty as usize].get_or_insert_with(T::default)
    }

    fn iter(&self) -> impl Iterator<Item = (ResourceType, &T)> {
        ResourceType::ALL
            .into_iter()
            .zip(&self.0)
            .filter_map(|(ty, v)| v.as_ref().map(|v| (ty, v)))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (ResourceType, &mut T)> {
        ResourceType::ALL
            .into_iter()
            .zip(&mut self.0)
            .filter_map(|(ty, v)| v.as_mut().map(|v| (ty, v)))
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
                syncs: Arc::new(Semaphore::new(options.max_concurrent_syncs.max(1))),
                options,
                next_connection: AtomicU64::new(1),
                responses: AtomicU64::new(0),
                proxies: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn service(&self) -> AdsService {
        AdsService::new(self.clone())
    }

    pub(crate) fn max_request_size(&self) -> usize {
        self.shared.options.max_request_size
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

    /// Streams opened and responses queued so far, summed: it moves whenever the server does
    /// work that allocates (a first sync, a push), so a caller can tell a busy spell from a quiet
    /// one without walking [`AdsServer::status`].
    pub fn activity(&self) -> u64 {
        self.shared.next_connection.load(Ordering::Relaxed)
            + self.shared.responses.load(Ordering::Relaxed)
    }

    /// Connected proxies, in connection order.
    pub fn status(&self) -> Vec<ProxyStatus> {
        let proxies: Vec<(u64, Arc<Mutex<Registered>>)> = self
            .shared
            .proxies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(c, r)| (*c, Arc::clone(r)))
            .collect();
        proxies
            .iter()
            .map(|(c, r)| r.lock().unwrap_or_else(PoisonError::into_inner).status(*c))
            .collect()
    }
}

type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

/// What a stream task queues for its proxy. Boxed: the queue allocates a block of slots per
/// stream up front, which for bare responses is several KB per connected proxy.
pub(crate) type Queued = Box<Result<Outgoing, Status>>;

/// The responses of one Delta ADS stream.
pub struct Responses(pub(crate) mpsc::Receiver<Queued>);

impl tonic::codegen::tokio_stream::Stream for Responses {
    type Item = Result<DeltaDiscoveryResponse, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|b| (*b).map(Outgoing::into_response)))
    }
}

/// Responses queued per stream. At most one response per type is un-ACKed, so this never fills.
const RESPONSE_QUEUE: usize = 2 * ResourceType::ALL.len();

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Responses;

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
        let identity = request.extensions().get::<PeerIdentity>().cloned();
        let inbound = Box::new(request.into_inner());
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        // The response starts at once: a client may wait for its headers before sending the
        // first request. Errors in that request end the stream with their status.
        let shared = self.shared.clone();
        tokio::spawn(async move {
            match accept(&shared, peer, identity, inbound, tx.clone()).await {
                Ok((stream, first, inbound, snapshots)) => {
                    stream.run(first, inbound, snapshots).await
                }
                Err(status) => {
                    tracing::debug!(?peer, %status, "ADS stream refused");
                    let _ = tx.send(Box::new(Err(status))).await;
                }
            }
        });
        Ok(Response::new(Responses(rx)))
    }
}

/// A stream's requests. Boxed, as is the first request (600 bytes): a stream task is spawned per
/// connected proxy and its future holds each of them in several places.
type Inbound = Box<Streaming<DeltaDiscoveryRequest>>;

type Accepted = (ProxyStream, Box<DeltaDiscoveryRequest>, Inbound, Feed);

/// Reads the first request, checks the node against the stream's `identity` (when the transport
/// authenticated one), asks the source for the node's snapshots and registers the stream.
async fn accept(
    shared: &Arc<Shared>,
    peer: Option<SocketAddr>,
    identity: Option<PeerIdentity>,
    mut inbound: Inbound,
    out: mpsc::Sender<Queued>,
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
    if let Some(identity) = &identity
        && let Err(error) = check_node(identity, &node)
    {
        tracing::warn!(proxy = %node.id, ?peer, %error, "ADS stream refused: unauthorized node");
        return Err(Status::permission_denied(format!(
            "authorization failed: {error}"
        )));
    }
    let snapshots = match shared.source.watch_snapshots(&node)? {
        Some(rx) => Feed::Shared(rx),
        None => Feed::Resources(shared.source.watch(&node)?),
    };
    let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let node_id: Arc<str> = Arc::from(node.id);
    let registered = Arc::new(Mutex::new(Registered {
        node_id: Arc::clone(&node_id),
        peer,
        connected_at: SystemTime::now(),
        types: ByType::default(),
    }));
    shared
        .proxies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(connection, Arc::clone(&registered));
    tracing::info!(proxy = %node_id, connection, ?peer, "ADS stream opened");
    let stream = ProxyStream {
        connection,
        node_id,
        shared: shared.clone(),
        registered,
        out,
        snapshot: Snapshot::default(),
        types: ByType::default(),
        nonces: 0,
        sync: None,
        shared_views: matches!(snapshots, Feed::Shared(_)),
    };
    Ok((stream, Box::new(first), inbound, snapshots))
}

/// The fewest resources a view sent whole must have to be sent as its shared encoding
/// ([`TypeState::wants_whole`]); a smaller one (a proxy's node, a namespace's few policies) is
/// listed, so that no per-proxy view keeps a second copy of its bytes.
const WHOLE_MIN: usize = 16;

/// A resource of a view: its shared name and encoding.
type Entry<'a> = (Arc<str>, &'a Arc<EncodedResource>);

/// What the proxy holds of one type.
#[derive(Debug, Clone)]
enum Held {
    /// The entries of this view that the subscription wants (what the server last sent).
    View(Arc<TypeView>),
    /// Name → version: what a reconnecting proxy said it kept (or nothing yet).
    Versions(BTreeMap<String, String>),
}

impl Default for Held {
    fn default() -> Held {
        Held::Versions(BTreeMap::new())
    }
}

/// A response sent and not yet ACKed or NACKed.
#[derive(Debug)]
struct InFlight {
    nonce: String,
    version: Arc<str>,
    /// What the proxy held before, restored on NACK.
    previous: Held,
}

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy has (or will have once the in-flight response is ACKed).
    held: Held,
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

    /// The subscribed part of `view`, in name order.
    fn wanted<'s, 'v: 's>(
        &'s self,
        view: &'v TypeView,
    ) -> Box<dyn Iterator<Item = (&'v Arc<str>, &'v Arc<EncodedResource>)> + 's> {
        if self.wildcard {
            Box::new(view.iter())
        } else {
            Box::new(self.names.iter().filter_map(move |n| view.get_entry(n)))
        }
    }

    /// The version of the subscribed part of `view`: the view's own when the proxy wants it
    /// all.
    fn version_of(&self, view: &TypeView) -> Arc<str> {
        if self.wildcard {
            Arc::clone(view.shared_version())
        } else {
            Arc::from(set_version(
                self.wanted(view).map(|(n, e)| (&**n, &*e.version)),
            ))
        }
    }

    /// How many resources the proxy holds.
    fn held_count(&self) -> usize {
        match &self.held {
            Held::View(v) => self.wanted(v).count(),
            Held::Versions(m) => m.len(),
        }
    }

    /// The proxy is about to want more names: from now on, what it holds is spelled out, since
    /// a view would claim it has them.
    fn spell_out(&mut self) {
        if let Held::View(v) = &self.held {
            let map = self
                .wanted(v)
                .map(|(n, e)| (n.to_string(), e.version.clone()))
                .collect();
            self.held = Held::Versions(map);
        }
    }

    /// Whether the proxy should get all of `want` as the view's shared encoding
    /// ([`Resources::Whole`]): it wants every resource and holds none (a first sync, or a
    /// reconnect that kept nothing), and the view is large enough for its shared bytes to pay
    /// (a proxy's own small views are sent as a list). It is then what [`TypeState::diff`]
    /// would list, in the same order, with nothing to remove.
    fn wants_whole(&self, want: &TypeView) -> bool {
        self.wildcard
            && matches!(&self.held, Held::Versions(had) if had.is_empty())
            && want.len() >= WHOLE_MIN
    }

    /// The resources to send (changed or added, in name order) and the names to remove, to
    /// bring the proxy from what it holds to `want`.
    fn diff<'a>(&self, want: &'a TypeView) -> (Vec<Entry<'a>>, Vec<String>) {
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        match &self.held {
            Held::View(old) if std::ptr::eq(&**old, want) => {}
            Held::View(old) if self.wildcard => {
                let computed;
                let delta = match want.delta_from(old) {
                    Some(d) => &**d,
                    None => {
                        computed = old.diff(want);
                        &computed
                    }
                };
                for n in &delta.changed {
                    if let Some(e) = want.get(n) {
                        changed.push((Arc::clone(n), e));
                    }
                }
                removed.extend(delta.removed.iter().map(|n| n.to_string()));
            }
            Held::View(old) => {
                for n in &self.names {
                    match (old.get(n), want.get(n)) {
                        (Some(a), Some(b)) if Arc::ptr_eq(a, b) || a.version == b.version => {}
                        (_, Some(_)) => {
                            if let Some((name, e)) = want.get_entry(n) {
                                changed.push((Arc::clone(name), e));
                            }
                        }
                        (Some(_), None) => removed.push(n.clone()),
                        (None, None) => {}
                    }
                }
            }
            Held::Versions(had) => {
                for (n, e) in self.wanted(want) {
                    if had.get(&**n) != Some(&e.version) {
                        changed.push((Arc::clone(n), e));
                    }
                }
                removed.extend(
                    had.keys()
                        .filter(|n| !(self.wants(n) && want.get(n).is_some()))
                        .cloned(),
                );
            }
        }
        (changed, removed)
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
    node_id: Arc<str>,
    shared: Arc<Shared>,
    /// This stream's entry in [`Shared::proxies`].
    registered: Arc<Mutex<Registered>>,
    out: mpsc::Sender<Queued>,
    snapshot: Snapshot,
    types: ByType<TypeState>,
    nonces: u64,
    /// The turn of a first sync (see [`ServerOptions::max_concurrent_syncs`]), until every type
    /// is ACKed once or the deadline passes.
    sync: Option<(OwnedSemaphorePermit, tokio::time::Instant)>,
    /// The views come from [`SnapshotSource::watch_snapshots`], shared with other proxies; a
    /// stream that encodes its own ([`SnapshotSource::watch`]) lists its first sync, since the
    /// shared bytes of [`Resources::Whole`] would be a second copy of its views for it alone.
    shared_views: bool,
}

impl ProxyStream {
    async fn run(
        mut self,
        first: Box<DeltaDiscoveryRequest>,
        mut inbound: Inbound,
        mut snapshots: Feed,
    ) {
        let stop = self.serve(first, &mut inbound, &mut snapshots).await;
        if let Stop::SourceClosed = stop {
            let _ = self
                .out
                .send(Box::new(Err(Status::unavailable(
                    "the control plane dropped this proxy",
                ))))
                .await;
        }
        self.shared
            .proxies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.connection);
        tracing::info!(proxy = %self.node_id, connection = self.connection, "ADS stream closed");
    }

    async fn serve(
        &mut self,
        first: Box<DeltaDiscoveryRequest>,
        inbound: &mut Streaming<DeltaDiscoveryRequest>,
        snapshots: &mut Feed,
    ) -> Stop {
        // Wait for a turn to sync; the proxy's requests wait in the transport meanwhile.
        let permit = tokio::select! {
            p = Arc::clone(&self.shared.syncs).acquire_owned() => p.ok(),
            _ = self.out.closed() => return Stop::Gone,
        };
        let deadline = tokio::time::Instant::now() + self.shared.options.sync_timeout;
        self.sync = permit.map(|p| (p, deadline));
        let initial = snapshots.current(&self.node_id);
        self.set_snapshot(initial);
        self.on_request(*first);
        loop {
            if let Err(stop) = self.flush().await {
                return stop;
            }
            self.release_sync_when_done();
            let sync_deadline = self.sync.as_ref().map(|(_, d)| *d);
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => self.on_request(req),
                    Ok(None) => return Stop::Gone,
                    Err(status) => {
                        tracing::debug!(proxy = %self.node_id, %status, "ADS stream error");
                        return Stop::Gone;
                    }
                },
                changed = snapshots.changed() => match changed {
                    Ok(()) => {
                        let snap = snapshots.current(&self.node_id);
                        self.set_snapshot(snap);
                    }
                    Err(_) => return Stop::SourceClosed,
                },
                _ = async {
                    match sync_deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::debug!(proxy = %self.node_id, "first sync not ACKed in time; its turn goes to another proxy");
                    self.sync = None;
                }
                _ = self.out.closed() => return Stop::Gone,
            }
        }
    }

    /// Gives the sync turn back once every requested type has been answered and ACKed.
    fn release_sync_when_done(&mut self) {
        if self.sync.is_some()
            && self
                .types
                .iter()
                .all(|(_, st)| !st.initial && st.in_flight.is_none())
        {
            self.sync = None;
        }
    }

    fn set_snapshot(&mut self, snap: Snapshot) {
        let mut changed = Vec::new();
        for (ty, st) in self.types.iter_mut() {
            if st.rejected || !Arc::ptr_eq(snap.get(ty), self.snapshot.get(ty)) {
                st.dirty = true;
                changed.push(ty);
            }
        }
        self.snapshot = snap;
        for ty in changed {
            self.refresh_latest(ty);
        }
    }

    /// Records the version of what the proxy should have of `ty`.
    fn refresh_latest(&self, ty: ResourceType) {
        let Some(st) = self.types.get(ty) else {
            return;
        };
        let latest = st.version_of(self.snapshot.get(ty));
        track(&self.registered, ty, |t| t.latest = Some(latest));
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest) {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            tracing::warn!(proxy = %self.node_id, type_url = %req.type_url, "request for an unknown type ignored");
            return;
        };
        let first = !self.types.contains(ty);
        if first {
            track(&self.registered, ty, |t| *t = Tracked::default());
        }
        let st = self.types.get_or_default(ty);
        if first {
            // A reconnecting proxy says what it kept; only the difference is sent.
            st.held = Held::Versions(req.initial_resource_versions.into_iter().collect());
            st.wildcard = req.resource_names_subscribe.is_empty();
            st.initial = true;
            st.dirty = true;
        } else if !req.response_nonce.is_empty() {
            let matches = st
                .in_flight
                .as_ref()
                .is_some_and(|f| f.nonce == req.response_nonce);
            if let (true, Some(flight)) = (matches, st.in_flight.take()) {
                match req.error_detail {
                    None => {
                        let resources = st.held_count();
                        track(&self.registered, ty, |t| {
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
                        st.held = flight.previous;
                        let nack = Box::new(Nack {
                            version: flight.version.to_string(),
                            nonce: flight.nonce,
                            error: err.message,
                            at: SystemTime::now(),
                        });
                        track(&self.registered, ty, |t| {
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
                if !st.wildcard {
                    st.spell_out();
                    st.wildcard = true;
                }
            } else if !st.names.contains(&name) {
                if !st.wildcard {
                    st.spell_out();
                }
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
            // The proxy forgets what it unsubscribed from (a view is read as subscribed).
            let TypeState {
                held,
                names,
                wildcard,
                ..
            } = &mut *st;
            if let Held::Versions(has) = held {
                has.retain(|n, _| *wildcard || names.contains(n));
            }
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
            let Some(st) = self.types.get_mut(ty) else {
                continue;
            };
            if st.in_flight.is_some() || !st.dirty {
                continue;
            }
            st.dirty = false;
            let want = self.snapshot.get(ty);
            let (resources, removed) = if self.shared_views && st.wants_whole(want) {
                (Resources::Whole(Arc::clone(want)), Vec::new())
            } else {
                let (changed, removed) = st.diff(want);
                if changed.is_empty() && removed.is_empty() && !st.initial && !st.rejected {
                    // Nothing to send: the proxy holds what the new view says.
                    st.held = Held::View(Arc::clone(want));
                    continue;
                }
                let changed = changed
                    .into_iter()
                    .map(|(n, e)| (n, Arc::clone(e)))
                    .collect();
                (Resources::Listed(changed), removed)
            };
            st.initial = false;
            st.rejected = false;
            let previous = std::mem::replace(&mut st.held, Held::View(Arc::clone(want)));
            let version = st.version_of(want);
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
                version: Arc::clone(&version),
                previous,
            });
            let response = Outgoing {
                version: Arc::clone(&version),
                resources,
                type_url: ty.type_url(),
                removed,
                nonce,
            };
            let (sent, removals) = (response.resources.len(), response.removed.len());
            track(&self.registered, ty, |t| {
                t.sent = Some(version);
                t.pending = true;
                t.pushes += 1;
                t.resources_sent += sent as u64;
                t.removals_sent += removals as u64;
            });
            self.shared.responses.fetch_add(1, Ordering::Relaxed);
            self.out
                .send(Box::new(Ok(response)))
                .await
                .map_err(|_| Stop::Gone)?;
        }
        Ok(())
    }
}
