//! Clusters and their endpoints as the data path uses them.
//!
//! A [`Cluster`] is what Envoy calls one: a service port, or a subset of it
//! (`outbound|9080|v2|reviews.default.svc.cluster.local`), with its endpoints, the traffic
//! policy that applies to it ([`xds::TrafficPolicy::effective`]) and its load-balancing policy.
//! Clusters are built once per config snapshot; what must outlive a snapshot (round-robin
//! cursor, requests in flight, outlier and circuit-breaker state, Envoy's stats) is in a
//! [`ClusterState`] that the [`Registry`] hands to the next snapshot's cluster of the same name,
//! and the requests in flight to an endpoint are counted in one counter per address that every
//! cluster and snapshot holding that address shares. A request reads these through `Arc`s it
//! already holds: no lock, no map lookup on the request path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use xds::LbPolicy;

use crate::circuit::{ClusterCircuit, Limits, RetryPermit};
use crate::config::PeerInfo;
use crate::fx_hash::{FxHashMap, FxHashSet};
use crate::hash_lb::{HashLb, HashPolicy};
use crate::outlier::{self, OutlierDetector};
use crate::tls::PeerTls;

/// One endpoint of a cluster.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The workload behind it, when known (destination labels).
    pub peer: Option<Arc<PeerInfo>>,
    /// How to reach it with Istio mTLS; `None` for plaintext.
    pub tls: Option<Arc<PeerTls>>,
    /// Requests in flight to this address, shared by every cluster that has it.
    pub load: Arc<AtomicU64>,
}

impl Endpoint {
    /// An endpoint counted on its own (passthrough, inbound).
    pub fn single(addr: SocketAddr, peer: Option<Arc<PeerInfo>>) -> Endpoint {
        Endpoint {
            addr,
            peer,
            tls: None,
            load: Arc::default(),
        }
    }

    /// Requests in flight to it now.
    pub fn active(&self) -> u64 {
        self.load.load(Ordering::Relaxed)
    }

    /// Counts a request to it until the guard is dropped.
    pub fn start(&self) -> InFlight {
        self.load.fetch_add(1, Ordering::Relaxed);
        InFlight(self.load.clone())
    }
}

/// Counts one request against a counter until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Envoy's per-cluster counters that Istio users read on the admin port
/// (`cluster.<name>.<stat>`).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// `upstream_rq_total`: requests sent (each attempt).
    pub upstream_rq_total: AtomicU64,
    /// `upstream_rq_retry`: retries.
    pub upstream_rq_retry: AtomicU64,
    /// `upstream_rq_retry_success`: retries that got a response not retried again.
    pub upstream_rq_retry_success: AtomicU64,
    /// `upstream_rq_timeout`: requests that hit the route timeout.
    pub upstream_rq_timeout: AtomicU64,
    /// `upstream_rq_per_try_timeout`: attempts that hit the per-try timeout.
    pub upstream_rq_per_try_timeout: AtomicU64,
    /// `upstream_cx_connect_fail`: connections that failed.
    pub upstream_cx_connect_fail: AtomicU64,
}

impl ClusterStats {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Name and value of every counter, in Envoy's names.
    pub fn values(&self) -> [(&'static str, u64); 6] {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("upstream_rq_total", v(&self.upstream_rq_total)),
            ("upstream_rq_retry", v(&self.upstream_rq_retry)),
            (
                "upstream_rq_retry_success",
                v(&self.upstream_rq_retry_success),
            ),
            ("upstream_rq_timeout", v(&self.upstream_rq_timeout)),
            (
                "upstream_rq_per_try_timeout",
                v(&self.upstream_rq_per_try_timeout),
            ),
            (
                "upstream_cx_connect_fail",
                v(&self.upstream_cx_connect_fail),
            ),
        ]
    }
}

/// What a cluster keeps across config snapshots.
#[derive(Debug)]
pub struct ClusterState {
    /// Round-robin cursor.
    pub rr: AtomicUsize,
    /// Requests in flight to the cluster (`http2MaxRequests`).
    pub in_flight: AtomicU64,
    /// Counters.
    pub stats: ClusterStats,
    /// Circuit breakers: connections, pending requests and retries (`connectionPool`).
    pub circuit: Arc<ClusterCircuit>,
    /// The latest snapshot's outlier detector, the one the next snapshot's is rebuilt from so
    /// ejections survive a config swap (taken only when a snapshot is built).
    outlier: Mutex<Option<Arc<OutlierDetector>>>,
}

impl Default for ClusterState {
    fn default() -> ClusterState {
        ClusterState {
            rr: AtomicUsize::new(0),
            in_flight: AtomicU64::new(0),
            stats: ClusterStats::default(),
            circuit: ClusterCircuit::new(Limits::default()),
            outlier: Mutex::new(None),
        }
    }
}

/// Counts one request against a cluster's in-flight count until dropped.
#[derive(Debug)]
pub struct Admitted(Arc<ClusterState>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cluster of one snapshot.
#[derive(Debug)]
pub struct Cluster {
    /// Envoy's cluster name.
    pub name: Arc<str>,
    /// The subset, when the cluster is one.
    pub subset: Option<Arc<str>>,
    /// The endpoints.
    pub endpoints: Arc<[Endpoint]>,
    /// How to choose among them.
    pub lb: LbPolicy,
    /// The DestinationRule settings that apply (Istio's precedence already applied).
    pub settings: xds::Settings,
    /// What outlives the snapshot.
    pub state: Arc<ClusterState>,
    /// Outlier detection, when the DestinationRule asks for it (indexes as `endpoints`).
    pub outlier: Option<Arc<OutlierDetector>>,
    /// Consistent hashing, when the DestinationRule asks for it.
    pub hash: Option<ConsistentHash>,
}

/// A cluster's consistent hashing: what is hashed and the ring or table over its endpoints.
#[derive(Debug)]
pub struct ConsistentHash {
    /// The request's key.
    pub policy: HashPolicy,
    /// Endpoint indexes by hash.
    pub lb: HashLb,
}

impl Cluster {
    /// A cluster that lives for one request or connection (passthrough, inbound).
    pub fn single(name: Arc<str>, endpoint: Endpoint) -> Cluster {
        Cluster::fixed(name, Arc::from([endpoint]))
    }

    /// A cluster with no endpoint (`BlackHoleCluster`): a connection to it finds no host.
    pub fn empty(name: Arc<str>) -> Cluster {
        Cluster::fixed(name, Arc::from([]))
    }

    fn fixed(name: Arc<str>, endpoints: Arc<[Endpoint]>) -> Cluster {
        // One state for all of them: they have no limits, cursor or stats worth keeping, and a
        // request should not allocate a circuit breaker it will never use.
        static SHARED: std::sync::OnceLock<Arc<ClusterState>> = std::sync::OnceLock::new();
        Cluster {
            name,
            subset: None,
            endpoints,
            lb: LbPolicy::RoundRobin,
            settings: xds::Settings::default(),
            state: SHARED.get_or_init(Arc::default).clone(),
            outlier: None,
            hash: None,
        }
    }

    /// Builds a snapshot's cluster: its outlier detector rebuilt from the last snapshot's (or
    /// new, with a sweep every interval), its consistent hash over `endpoints`.
    pub fn new(
        name: Arc<str>,
        subset: Option<Arc<str>>,
        endpoints: Vec<Endpoint>,
        lb: LbPolicy,
        settings: xds::Settings,
        state: Arc<ClusterState>,
    ) -> Cluster {
        let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr).collect();
        let outlier = settings.outlier_detection.as_ref().map(|od| {
            let od = outlier::Settings::from_xds(od);
            let mut slot = state.outlier.lock().unwrap_or_else(|e| e.into_inner());
            let detector = Arc::new(match slot.as_ref() {
                Some(old) => old.rebuild(&addrs, od),
                None => OutlierDetector::new(&addrs, od),
            });
            *slot = Some(detector.clone());
            sweep_every_interval(&detector);
            detector
        });
        let hash = settings
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.consistent_hash.as_ref())
            .and_then(|ch| {
                let built = HashPolicy::compile(&ch.key)
                    .and_then(|policy| Ok((policy, HashLb::build(&ch.algorithm, &addrs)?)));
                match built {
                    Ok((policy, lb)) => Some(ConsistentHash { policy, lb }),
                    Err(e) => {
                        tracing::warn!(cluster = %name, error = %e, "consistent hash not usable; balancing without it");
                        None
                    }
                }
            });
        Cluster {
            name,
            subset,
            endpoints: endpoints.into(),
            lb,
            settings,
            state,
            outlier,
            hash,
        }
    }

    /// `http2MaxRequests`, when set.
    pub fn max_requests(&self) -> Option<u32> {
        self.settings
            .connection_pool
            .as_ref()
            .and_then(|c| c.http.max_requests)
    }

    /// Admits a request unless `http2MaxRequests` are already in flight (circuit breaking).
    pub fn admit(&self) -> Option<Admitted> {
        let before = self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = Admitted(self.state.clone());
        match self.max_requests() {
            Some(max) if before >= u64::from(max) => None,
            _ => Some(guard),
        }
    }

    /// Admits a retry unless `maxRetries` are already in flight (Istio leaves it unlimited
    /// when unset).
    pub fn admit_retry(&self) -> Option<RetryPermit> {
        self.state.circuit.try_retry()
    }

    /// Envoy's `health_flags` of endpoint `addr` on the admin port: `healthy`, or
    /// `/failed_outlier_check` while outlier detection has it ejected.
    pub fn health_flags(&self, addr: SocketAddr) -> &'static str {
        let ejected = self.outlier.as_ref().is_some_and(|o| {
            self.endpoints
                .iter()
                .position(|e| e.addr == addr)
                .is_some_and(|i| o.is_ejected(i))
        });
        if ejected {
            "/failed_outlier_check"
        } else {
            "healthy"
        }
    }

    /// Whether endpoint `i` may take requests (not ejected, or the cluster is in panic).
    pub fn usable(&self, i: usize) -> bool {
        self.outlier.as_ref().is_none_or(|o| o.usable(i))
    }

    /// Reports how a request to endpoint `i` went to outlier detection.
    pub fn report(&self, i: usize, outcome: outlier::Outcome) {
        if let Some(o) = &self.outlier {
            o.report(i, outcome);
        }
    }

    /// The endpoint at `addr`, if it is one of this cluster's.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }
}

/// The state that survives a config swap: per cluster name and per endpoint address. Only
/// snapshot builds take its locks.
#[derive(Debug, Default)]
pub struct Registry {
    clusters: Mutex<FxHashMap<Arc<str>, Arc<ClusterState>>>,
    loads: Mutex<FxHashMap<SocketAddr, Arc<AtomicU64>>>,
}

impl Registry {
    /// The state of cluster `name`, the one the previous snapshot used if there was one.
    pub fn cluster(
        &self,
        name: &Arc<str>,
        pool: Option<&xds::ConnectionPool>,
    ) -> Arc<ClusterState> {
        let mut map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let state = map.entry(name.clone()).or_default().clone();
        state.circuit.update(Limits::from_settings(pool));
        state
    }

    /// The in-flight counter of endpoint `addr`.
    pub fn load(&self, addr: SocketAddr) -> Arc<AtomicU64> {
        let mut map = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(addr).or_default().clone()
    }

    /// Forgets what no snapshot uses any more (called after a swap, with the names and
    /// addresses the new snapshot has). In-flight requests keep their `Arc`s.
    pub fn retain(&self, clusters: &FxHashSet<Arc<str>>, addrs: &FxHashSet<SocketAddr>) {
        let mut map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| clusters.contains(k));
        let mut map = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| addrs.contains(k));
    }
}

/// Sweeps `detector` every interval (un-ejecting endpoints whose time is up) for as long as a
/// snapshot holds it; without a runtime (a test building snapshots by hand) nothing sweeps.
fn sweep_every_interval(detector: &Arc<OutlierDetector>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(detector);
    let interval = detector
        .settings()
        .interval
        .max(std::time::Duration::from_millis(10));
    rt.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(d) = weak.upgrade() else { return };
            d.sweep(std::time::Instant::now());
        }
    });
}
