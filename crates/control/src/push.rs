//! Debounced push: registry changes → a new model → each connected proxy's resources.
//!
//! Changes arrive on the [`crate::registry::ConfigStore`]'s bounded queue. [`Pusher::run`]
//! waits until the changes stop for [`PushOptions::quiet`] (100 ms), or until
//! [`PushOptions::max_delay`] (1 s) has passed since the first pending one, then rebuilds the
//! [`Model`] from every object and publishes each proxy's [`Snapshot`].
//!
//! Compute once, share everywhere: per push, the workloads are one view for every proxy; the
//! services, routes, policies and authorizations are one view per [`ViewKey`] (namespace, plus
//! the selector DestinationRules that select the proxy), computed for the first proxy with that
//! key; only the node resource is the proxy's own. Every resource is encoded once, and not again
//! while it does not change ([`Encoder`]); a view whose resources did not change stays the same
//! `Arc`, so a proxy's `watch` is written only when something it sees changed (pointer
//! comparisons), and the ADS server sends only the resources that changed. Memory is the model,
//! one encoding per resource and a few pointers per proxy, not a copy of the mesh per proxy.
//!
//! [`Pusher`] is the [`SnapshotSource`] of [`xds::ads::AdsServer`]: a connecting proxy gets a
//! `watch` of its snapshot, from the current views. Proxies whose streams are all gone are
//! forgotten at the next push.
//!
//! Push times are recorded: `pilot_proxy_convergence_time` (seconds from the first change of a
//! push to its publication, Istio's name) and `pilot_xds_push_time` (building and publishing),
//! and a log line `push N proxies in X ms`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use xds::NodeRef;
use xds::ads::codec::AnyResource;
use xds::ads::{Encoder, Node, ProxyId, ResourceType, Snapshot, SnapshotSource, TypeView};

use crate::jwks::JwksCache;
use crate::model::{Model, VipAllocator, Warning};
use crate::registry::{Change, ConfigStore};
use crate::translate::{ProxyKey, ViewKey, WorkloadIndex, node_ref, shared_resources, view_key};

/// When pushes happen.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    /// Push once no change came for this long.
    pub quiet: Duration,
    /// Push at the latest this long after the first pending change.
    pub max_delay: Duration,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// What one push did.
#[derive(Debug, Clone)]
pub struct PushStats {
    /// 1 for the first push, then counting.
    pub seq: u64,
    /// Registry changes it coalesced.
    pub changes: usize,
    /// Proxies with a watch.
    pub proxies: usize,
    /// Proxies whose resources changed.
    pub changed: usize,
    /// Time to build the model and publish.
    pub build: Duration,
    /// From the first change to the end of publication (`None` for a push without a change).
    pub convergence: Option<Duration>,
}

struct ProxyEntry {
    key: ProxyKey,
    /// A gateway proxy (`router~...`): it also receives its Gateways' listeners.
    router: bool,
    /// Its gateway listeners' view (its own, like the node's; empty for a sidecar).
    gateway_view: Arc<TypeView>,
    /// The problems of its gateway listeners already logged (each once while it lasts).
    gateway_problems: BTreeSet<String>,
    /// A router's own TrafficPolicy view, when it takes DestinationRule credentials of its
    /// namespace that the proxies sharing its view must not receive.
    own_policies: Option<Arc<TypeView>>,
    /// Its node resource and that resource's view, reused while the node does not change.
    node: NodeRef,
    node_view: Arc<TypeView>,
    tx: watch::Sender<Snapshot>,
}

/// What the last push published: reused by the next push and by proxies connecting meanwhile.
#[derive(Default)]
struct Published {
    model: Arc<Model>,
    index: WorkloadIndex,
    encoder: Encoder,
    workloads: Arc<TypeView>,
    /// Services, routes and authorizations depend on the namespace and its Sidecar alone.
    namespaces: HashMap<ScopeKey, NamespaceViews>,
    /// Policies also on the selector DestinationRules that select the proxy.
    policies: HashMap<ViewKey, Arc<TypeView>>,
}

/// What services, routes and authorizations depend on: the namespace, and the Sidecar
/// resource that applies (`namespace/name`).
type ScopeKey = (String, Option<String>);

/// The views every proxy of one namespace (and Sidecar) shares.
#[derive(Clone)]
struct NamespaceViews {
    services: Arc<TypeView>,
    http_routes: Arc<TypeView>,
    authorizations: Arc<TypeView>,
}

/// The views of the last push, for reuse and deltas.
#[derive(Default)]
struct PreviousViews {
    namespaces: HashMap<ScopeKey, NamespaceViews>,
    policies: HashMap<ViewKey, Arc<TypeView>>,
}

impl Published {
    /// The views of `key`, computed on first use in this push.
    fn views(
        &mut self,
        key: &ViewKey,
        previous: &PreviousViews,
    ) -> (NamespaceViews, Arc<TypeView>) {
        let scope: ScopeKey = (key.namespace.clone(), key.sidecar.clone());
        let ns = self.namespaces.get(&scope);
        if let (Some(ns), Some(p)) = (ns, self.policies.get(key)) {
            return (ns.clone(), Arc::clone(p));
        }
        let model = Arc::clone(&self.model);
        let res = shared_resources(&model, key);
        let ns_name = key.namespace.as_str();
        let mut view = |resources: Vec<AnyResource>, old: Option<&Arc<TypeView>>| {
            encode_view(&mut self.encoder, ns_name, resources, old)
        };
        let policies = view(
            res.traffic_policies
                .into_iter()
                .map(AnyResource::TrafficPolicy)
                .collect(),
            previous.policies.get(key),
        );
        let ns = match self.namespaces.get(&scope) {
            Some(ns) => ns.clone(),
            None => {
                let old = previous.namespaces.get(&scope);
                let mut view = |resources: Vec<AnyResource>, old: Option<&Arc<TypeView>>| {
                    encode_view(&mut self.encoder, ns_name, resources, old)
                };
                let ns = NamespaceViews {
                    services: view(
                        res.services.into_iter().map(AnyResource::Service).collect(),
                        old.map(|o| &o.services),
                    ),
                    http_routes: view(
                        res.http_routes
                            .into_iter()
                            .map(AnyResource::HttpRoutes)
                            .collect(),
                        old.map(|o| &o.http_routes),
                    ),
                    authorizations: view(
                        res.authorizations
                            .into_iter()
                            .map(AnyResource::Authorization)
                            .collect(),
                        old.map(|o| &o.authorizations),
                    ),
                };
                self.namespaces.insert(scope, ns.clone());
                ns
            }
        };
        self.policies.insert(key.clone(), Arc::clone(&policies));
        (ns, policies)
    }

    /// The snapshot of the proxy `key` (its node resource and view in `node`, updated; for a
    /// router, its gateway view and the gateway problems logged so far too).
    fn snapshot(
        &mut self,
        key: &ProxyKey,
        node: &mut (NodeRef, Arc<TypeView>),
        gateway: (
            bool,
            &mut Arc<TypeView>,
            &mut BTreeSet<String>,
            &mut Option<Arc<TypeView>>,
        ),
        previous: &PreviousViews,
    ) -> Snapshot {
        let model = Arc::clone(&self.model);
        let me = self.index.find(&model, key);
        let vk = view_key(&model, key, me);
        let (ns, mut policies) = self.views(&vk, previous);
        let current = node_ref(&model, key, me);
        if current != node.0 {
            node.1 = node_view(&current, Some(&node.1));
            node.0 = current;
        }
        // A sidecar's stays the empty view it was given, so that pushes do not wake it.
        let (router, view, reported, own_policies) = gateway;
        if router {
            // A gateway proxy takes the Secrets of its namespace that DestinationRules without
            // selector name: its own view then, never the shared one.
            let creds = &model.gateways.client_credentials;
            let mut tps = if creds.keys().any(|(ns, _)| *ns == key.namespace) {
                shared_resources(&model, &vk).traffic_policies
            } else {
                Vec::new()
            };
            let mut filled = false;
            for tp in &mut tps {
                filled |= crate::model::policy::fill_gateway_credentials(tp, &key.namespace, creds);
            }
            *own_policies = filled.then(|| {
                own_view(
                    tps.into_iter().map(AnyResource::TrafficPolicy),
                    own_policies.as_ref(),
                )
            });
            if let Some(own) = own_policies {
                policies = Arc::clone(own);
            }
            let mut problems = BTreeSet::new();
            let listeners = crate::translate::gateway_listeners(&model, key, me, &mut problems);
            // Each distinct problem once, not on every push; again if it goes and comes back.
            for p in problems.difference(reported) {
                tracing::warn!(pod = %key.pod_name, namespace = %key.namespace, "{p}");
            }
            *reported = problems;
            *view = own_view(
                listeners.into_iter().map(AnyResource::GatewayListener),
                Some(view),
            );
        }
        let gateway_view = Arc::clone(view);
        Snapshot::new(|ty| match ty {
            ResourceType::Workload => Arc::clone(&self.workloads),
            ResourceType::Service => Arc::clone(&ns.services),
            ResourceType::TrafficPolicy => Arc::clone(&policies),
            ResourceType::HttpRoutes => Arc::clone(&ns.http_routes),
            ResourceType::Authorization => Arc::clone(&ns.authorizations),
            ResourceType::GatewayListener => Arc::clone(&gateway_view),
            ResourceType::Node => Arc::clone(&node.1),
        })
    }
}

/// The view of `resources` for the proxies of namespace `ns` that had `old`; what cannot travel
/// is logged.
fn encode_view(
    encoder: &mut Encoder,
    ns: &str,
    resources: Vec<AnyResource>,
    old: Option<&Arc<TypeView>>,
) -> Arc<TypeView> {
    let (view, problems) = encoder.view(resources, old);
    for p in problems {
        tracing::warn!(namespace = %ns, problem = %p, "resource not sent");
    }
    view
}

/// The view of a proxy's own node resource (its own: never shared, so not kept in the encoder).
fn node_view(node: &NodeRef, previous: Option<&Arc<TypeView>>) -> Arc<TypeView> {
    let mut entries = std::collections::BTreeMap::new();
    match AnyResource::Node(node.clone()).encode() {
        Ok(encoded) => {
            entries.insert(
                Arc::from(xds::ads::codec::NODE_RESOURCE_NAME),
                Arc::new(encoded),
            );
        }
        Err(e) => tracing::warn!(?node, error = %e, "node resource not sent"),
    }
    TypeView::build(entries, previous)
}

/// A view of one gateway proxy's own (its listeners, its policies with credentials): they
/// carry the credentials of its namespace's Secrets, which no other proxy may receive.
fn own_view(
    resources: impl Iterator<Item = AnyResource>,
    previous: Option<&Arc<TypeView>>,
) -> Arc<TypeView> {
    let mut entries = std::collections::BTreeMap::new();
    for r in resources {
        match r.encode() {
            Ok(encoded) => {
                entries.insert(Arc::from(r.name()), Arc::new(encoded));
            }
            // The error never carries the resource's text (and so no key).
            Err(e) => tracing::warn!(resource = %r.name(), error = %e, "gateway resource not sent"),
        }
    }
    // Encoded afresh on every push: the previous view stays (and the proxy sleeps) when every
    // resource has the version it had.
    if let Some(prev) = previous {
        let unchanged = prev.len() == entries.len()
            && prev
                .iter()
                .zip(&entries)
                .all(|((n1, e1), (n2, e2))| n1 == n2 && e1.version == e2.version);
        if unchanged {
            return Arc::clone(prev);
        }
    }
    TypeView::build(entries, previous)
}

#[derive(Clone)]
struct Metrics {
    convergence: Histogram,
    push_time: Histogram,
    pushes: Counter,
    proxies: Gauge,
}

impl Metrics {
    fn new(registry: &mut Registry) -> Metrics {
        // Istio's buckets for both histograms.
        let buckets = [0.01, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];
        let m = Metrics {
            convergence: Histogram::new(buckets),
            push_time: Histogram::new(buckets),
            pushes: Counter::default(),
            proxies: Gauge::default(),
        };
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from a config change to the new resources being published to proxies",
            m.convergence.clone(),
        );
        registry.register(
            "pilot_xds_push_time",
            "Seconds to build the model and the resources of every proxy",
            m.push_time.clone(),
        );
        registry.register("pilot_xds_pushes", "Pushes", m.pushes.clone());
        registry.register(
            "pilot_xds",
            "Proxies with a discovery stream",
            m.proxies.clone(),
        );
        m
    }
}

/// Rebuilds the model on changes and publishes each proxy's resources.
pub struct Pusher {
    store: Arc<ConfigStore>,
    options: PushOptions,
    vips: Mutex<VipAllocator>,
    /// The key sets fetched from `jwksUri`s, read at each push ([`crate::jwks`]).
    jwks: Arc<JwksCache>,
    model: ArcSwap<Model>,
    /// Locked for a whole push, and before `proxies` when both are.
    published: Mutex<Published>,
    proxies: Mutex<HashMap<String, ProxyEntry>>,
    seq: AtomicU64,
    last: watch::Sender<Option<PushStats>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("options", &self.options)
            .field("pushes", &self.seq.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Pusher {
    /// A pusher over `store`, registering its metrics in `registry`. The model is empty until
    /// the first [`Pusher::push`].
    pub fn new(store: Arc<ConfigStore>, options: PushOptions, registry: &mut Registry) -> Pusher {
        Pusher {
            store,
            options,
            vips: Mutex::new(VipAllocator::new()),
            jwks: Arc::new(JwksCache::new()),
            model: ArcSwap::from_pointee(Model::default()),
            published: Mutex::new(Published::default()),
            proxies: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            last: watch::Sender::new(None),
            metrics: Metrics::new(registry),
        }
    }

    /// The key sets fetched from `jwksUri`s, which each push reads; a
    /// [`crate::jwks::JwksFetcher`] fills it.
    pub fn jwks(&self) -> &Arc<JwksCache> {
        &self.jwks
    }

    /// The current model.
    pub fn model(&self) -> Arc<Model> {
        self.model.load_full()
    }

    /// Follows the pushes (the last one's stats; `None` before the first).
    pub fn pushes(&self) -> watch::Receiver<Option<PushStats>> {
        self.last.subscribe()
    }

    /// Whether a model has been built.
    pub fn ready(&self) -> bool {
        self.seq.load(Ordering::Acquire) > 0
    }

    /// Debounces `changes` and pushes until `shutdown` (or until every sender is gone).
    pub async fn run(
        self: Arc<Self>,
        mut changes: mpsc::Receiver<Change>,
        shutdown: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = changes.recv() => match c {
                    Some(c) => c,
                    None => return,
                },
            };
            let mut earliest = first.at;
            let mut count = 1;
            let mut last = Instant::now();
            loop {
                let deadline = (last + self.options.quiet).min(first.at + self.options.max_delay);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline.into()) => break,
                    c = changes.recv() => match c {
                        Some(c) => {
                            count += 1;
                            earliest = earliest.min(c.at);
                            last = Instant::now();
                        }
                        None => break,
                    },
                }
            }
            let this = Arc::clone(&self);
            if let Err(e) =
                tokio::task::spawn_blocking(move || this.push(Some(earliest), count)).await
            {
                tracing::error!("push failed: {e}");
            }
        }
    }

    /// Builds the model from the store now and publishes every proxy's resources. `since` is
    /// the time of the first change this push carries. CPU work: call it from a blocking
    /// context for a large mesh.
    pub fn push(&self, since: Option<Instant>, changes: usize) -> PushStats {
        let started = Instant::now();
        // Held for the whole push: a proxy that connects meanwhile waits, then gets this push's
        // views, so it can neither miss the push nor get an older model after it.
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let snapshot = self.store.snapshot();
        let (objects, duplicates) = snapshot.objects();
        let mut model = {
            let mut vips = self.vips.lock().unwrap_or_else(PoisonError::into_inner);
            Model::build_with_jwks(objects, &mut vips, &self.jwks.fetched())
        };
        model.warnings.extend(duplicates);
        model.warnings.sort();
        model.warnings.dedup();
        let previous = self.model.load();
        let old: BTreeSet<&Warning> = previous.warnings.iter().collect();
        for w in model.warnings.iter().filter(|w| !old.contains(w)) {
            tracing::warn!("{w}");
        }
        // Most no-op changes (a comment, a bad document) give the same model: compare once
        // rather than once per proxy.
        let unchanged = same_resources(&model, &previous);
        let model = Arc::new(model);
        self.model.store(Arc::clone(&model));

        let mut changed = 0;
        if !unchanged {
            let published = &mut *published;
            published.model = Arc::clone(&model);
            published.encoder.begin_push();
            let previous_views = PreviousViews {
                namespaces: std::mem::take(&mut published.namespaces),
                policies: std::mem::take(&mut published.policies),
            };
            let (workloads, problems) = published.encoder.view(
                model.workloads.iter().cloned().map(AnyResource::Workload),
                Some(&published.workloads),
            );
            for p in problems {
                tracing::warn!(problem = %p, "resource not sent");
            }
            published.workloads = workloads;
            published.index = WorkloadIndex::new(&model);
            let mut proxies = self.proxies.lock().unwrap_or_else(PoisonError::into_inner);
            for e in proxies.values_mut() {
                let mut node = (e.node.clone(), Arc::clone(&e.node_view));
                let gateway = (
                    e.router,
                    &mut e.gateway_view,
                    &mut e.gateway_problems,
                    &mut e.own_policies,
                );
                let snap = published.snapshot(&e.key, &mut node, gateway, &previous_views);
                (e.node, e.node_view) = node;
                let modified = e.tx.send_if_modified(|current| {
                    if current.same(&snap) {
                        false
                    } else {
                        *current = snap;
                        true
                    }
                });
                changed += usize::from(modified);
            }
        }
        drop(published);
        let proxies = self.forget_gone();

        let build = started.elapsed();
        let convergence = since.map(|t| t.elapsed());
        self.metrics.push_time.observe(build.as_secs_f64());
        if let Some(c) = convergence {
            self.metrics.convergence.observe(c.as_secs_f64());
        }
        self.metrics.pushes.inc();
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let stats = PushStats {
            seq,
            changes,
            proxies,
            changed,
            build,
            convergence,
        };
        let since = convergence
            .map(|c| format!("; {:.1} ms since the first change", c.as_secs_f64() * 1e3))
            .unwrap_or_default();
        tracing::info!(
            "push {} proxies in {:.1} ms ({changed} changed, {changes} changes{since})",
            proxies,
            build.as_secs_f64() * 1e3,
        );
        self.last.send_replace(Some(stats.clone()));
        stats
    }

    /// Ends every proxy's watch (their ADS streams close); used at shutdown.
    pub fn close(&self) {
        self.proxies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.metrics.proxies.set(0);
    }

    /// Drops the proxies nobody watches any more; returns how many remain.
    fn forget_gone(&self) -> usize {
        let mut proxies = self.proxies.lock().unwrap_or_else(PoisonError::into_inner);
        proxies.retain(|_, e| e.tx.receiver_count() > 0);
        let n = proxies.len();
        self.metrics
            .proxies
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        n
    }

    /// The snapshot of a proxy, following the pushes. Another stream of the same node shares
    /// the channel.
    pub fn watch_proxy(&self, node_id: &str) -> Result<watch::Receiver<Snapshot>, tonic::Status> {
        let id: ProxyId = node_id.parse().map_err(|e: xds::ads::node::ProxyIdError| {
            tonic::Status::invalid_argument(e.to_string())
        })?;
        let key = ProxyKey::from(&id);
        // Lock order as in a push: published, then proxies.
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut proxies = self.proxies.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = proxies.get(node_id) {
            return Ok(e.tx.subscribe());
        }
        let mut node = (NodeRef::default(), Arc::new(TypeView::default()));
        let router = crate::translate::is_router(&id);
        let mut gateway_view = Arc::new(TypeView::default());
        let mut gateway_problems = BTreeSet::new();
        let mut own_policies = None;
        let gateway = (
            router,
            &mut gateway_view,
            &mut gateway_problems,
            &mut own_policies,
        );
        let snap = published.snapshot(&key, &mut node, gateway, &PreviousViews::default());
        let (tx, rx) = watch::channel(snap);
        proxies.insert(
            node_id.to_string(),
            ProxyEntry {
                key,
                router,
                gateway_view,
                gateway_problems,
                own_policies,
                node: node.0,
                node_view: node.1,
                tx,
            },
        );
        self.metrics
            .proxies
            .set(i64::try_from(proxies.len()).unwrap_or(i64::MAX));
        tracing::debug!(node = node_id, "proxy subscribed");
        Ok(rx)
    }
}

/// Whether two models give every proxy the same resources (warnings aside).
fn same_resources(a: &Model, b: &Model) -> bool {
    a.workloads == b.workloads
        && a.services == b.services
        && a.http_routes == b.http_routes
        && a.traffic_policies == b.traffic_policies
        && a.authorizations == b.authorizations
        && a.gateways == b.gateways
        // What the proxies' own Node resources are made of (`translate::node_ref`) and what
        // picks their views (`translate::view_key`).
        && a.outbound_traffic_policy == b.outbound_traffic_policy
        && a.sidecars == b.sidecars
        && a.telemetry == b.telemetry
}

impl SnapshotSource for Pusher {
    fn watch_snapshots(
        &self,
        node: &Node,
    ) -> Result<Option<watch::Receiver<Snapshot>>, tonic::Status> {
        self.watch_proxy(&node.id).map(Some)
    }
}
