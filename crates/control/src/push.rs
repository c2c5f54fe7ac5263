//! Debounced push: registry changes → a new model → each connected proxy's resources.
//!
//! Changes arrive on the [`crate::registry::ConfigStore`]'s bounded queue. [`Pusher::run`]
//! waits until the changes stop for [`PushOptions::quiet`] (100 ms), or until
//! [`PushOptions::max_delay`] (1 s) has passed since the first pending one, then rebuilds the
//! [`Model`] from every object and recomputes the resources of each proxy. A proxy's `watch`
//! channel is written only when its resources differ, so a change that does not concern a
//! proxy does not wake its stream; the ADS server then sends only the resources that changed.
//!
//! [`Pusher`] is the [`SnapshotSource`] of [`xds::ads::AdsServer`]: a connecting proxy gets a
//! `watch` of its resources, computed from the current model. Proxies whose streams are all gone
//! are forgotten at the next push.
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
use xds::ProxyResources;
use xds::ads::{Node, ProxyId, SnapshotSource};

use crate::model::{Model, VipAllocator, Warning};
use crate::registry::{Change, ConfigStore};
use crate::translate::{ProxyKey, proxy_resources};

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
    tx: watch::Sender<Arc<ProxyResources>>,
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
    model: ArcSwap<Model>,
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
            model: ArcSwap::from_pointee(Model::default()),
            proxies: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            last: watch::Sender::new(None),
            metrics: Metrics::new(registry),
        }
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
        let snapshot = self.store.snapshot();
        let (objects, duplicates) = snapshot.objects();
        let mut model = {
            let mut vips = self.vips.lock().unwrap_or_else(PoisonError::into_inner);
            Model::build(objects, &mut vips)
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

        // Publish outside the lock: translation is per proxy and may take a while.
        let entries: Vec<(ProxyKey, watch::Sender<Arc<ProxyResources>>)> = if unchanged {
            Vec::new()
        } else {
            let proxies = self.proxies.lock().unwrap_or_else(PoisonError::into_inner);
            proxies
                .values()
                .map(|e| (e.key.clone(), e.tx.clone()))
                .collect()
        };
        let mut changed = 0;
        for (key, tx) in &entries {
            let resources = proxy_resources(&model, key);
            let modified = tx.send_if_modified(|current| {
                if **current == resources {
                    false
                } else {
                    *current = Arc::new(resources);
                    true
                }
            });
            changed += usize::from(modified);
        }
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

    /// The resources of a proxy, following the pushes. Another stream of the same node shares
    /// the channel.
    pub fn watch_proxy(
        &self,
        node_id: &str,
    ) -> Result<watch::Receiver<Arc<ProxyResources>>, tonic::Status> {
        let id: ProxyId = node_id.parse().map_err(|e: xds::ads::node::ProxyIdError| {
            tonic::Status::invalid_argument(e.to_string())
        })?;
        let key = ProxyKey::from(&id);
        // The model is read under the lock: a push stores its model before it collects the
        // proxies, so a proxy added meanwhile either sees the new model or is collected.
        let mut proxies = self.proxies.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = proxies.get(node_id) {
            return Ok(e.tx.subscribe());
        }
        let resources = proxy_resources(&self.model.load(), &key);
        let (tx, rx) = watch::channel(Arc::new(resources));
        proxies.insert(node_id.to_string(), ProxyEntry { key, tx });
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
}

impl SnapshotSource for Pusher {
    fn watch(&self, node: &Node) -> Result<watch::Receiver<Arc<ProxyResources>>, tonic::Status> {
        self.watch_proxy(&node.id)
    }
}
