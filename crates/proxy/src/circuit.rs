//! Circuit breaking per cluster: DestinationRule's `connectionPool` as Envoy enforces the
//! cluster Istio generates for it.
//!
//! A [`ClusterCircuit`] is one cluster's shared state, for every endpoint and every worker
//! thread together (Envoy's `ResourceManagerImpl`: atomics per cluster, not per worker): the
//! upstream connections open (`maxConnections`), the requests waiting for a connection
//! (`http1MaxPendingRequests`), the per-connection settings new connections take (requests per
//! connection, idle timeout, connect timeout, TCP keepalive, most connection duration), and
//! Envoy's counters for them ([`CircuitStats`]). It lives across config snapshots: keep one per
//! cluster name ([`Circuits`]) and [`ClusterCircuit::update`] its limits when a snapshot
//! changes them, so connections and waiters counted under the old limits stay counted.
//!
//! [`crate::pool`] takes a connection slot ([`ClusterCircuit::try_open`], a [`ConnPermit`] held
//! with the connection's socket until it closes, an upgraded one's tunnel included) and a
//! pending slot ([`ClusterCircuit::try_pend`], a [`Pending`] held while a request waits for a
//! connection); a request that finds no pending slot fails at once, `UO`. Waiters sleep on
//! [`ClusterCircuit::changed`], woken when a connection closes, an idle one comes back or the
//! limits change. Opaque TCP takes its slot with [`ClusterCircuit::acquire`]: Envoy's tcp_proxy
//! uses the same pool logic (a connection that finds the cap reached waits as pending, `UO`
//! beyond the pending cap).
//!
//! `maxRetries` is [`ClusterCircuit::try_retry`], for the retry logic: a retry it refuses is not
//! made (`upstream_rq_retry_overflow`) and the failure goes back as it is.
//!
//! `http2MaxRequests` (requests in flight) is enforced before the pool, by
//! [`crate::balance::LoadTracker::admit`]; a request it admits then counts here only if it has
//! to wait for a connection. One it refuses is counted here too
//! ([`ClusterCircuit::note_requests_overflow`]): Envoy counts that overflow in
//! `upstream_rq_pending_overflow` as well (`attachStreamToClient`).
//!
//! Istio's defaults, unlike Envoy's 1024: every threshold unset in the DestinationRule (or set to
//! 0, which Istio cannot tell from unset) is 2^32-1, unlimited (`getDefaultCircuitBreakerThresholds`
//! in pilot's `cluster_traffic_policy.go`).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::fx_hash::FxHashMap;

/// Istio's value for a threshold the DestinationRule leaves unset: unlimited.
pub const UNLIMITED: u32 = u32::MAX;

/// TCP keepalive probes on upstream connections (`tcp.tcpKeepalive`; unset fields keep the
/// kernel's values, as Envoy's empty `tcp_keepalive` does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalive {
    /// Unanswered probes before the connection is dead (`TCP_KEEPCNT`).
    pub probes: Option<u32>,
    /// Idle time before the first probe (`TCP_KEEPIDLE`), whole seconds as Istio sends it.
    pub time: Option<Duration>,
    /// Time between probes (`TCP_KEEPINTVL`), whole seconds.
    pub interval: Option<Duration>,
}

/// One cluster's connection pool settings, with Istio's defaults for what is unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most upstream connections open to the cluster (`tcp.maxConnections`).
    pub max_connections: u32,
    /// Most requests waiting for a connection (`http.http1MaxPendingRequests`).
    pub max_pending_requests: u32,
    /// Most retries in flight to the cluster at once (`http.maxRetries`).
    pub max_retries: u32,
    /// Requests after which a connection is retired (`http.maxRequestsPerConnection`); 0: no
    /// limit.
    pub max_requests_per_connection: u32,
    /// Connect timeout (`tcp.connectTimeout`); `None`: the proxy's (mesh) default.
    pub connect_timeout: Option<Duration>,
    /// Idle pooled connections are closed after this (`http.idleTimeout`, else
    /// `tcp.idleTimeout`, as Istio falls back); `None`: the pool's default; zero: never.
    pub idle_timeout: Option<Duration>,
    /// Connections are retired this long after they opened (`tcp.maxConnectionDuration`),
    /// gracefully: a pooled HTTP connection finishes its requests first. Istio gives the same
    /// value to an opaque TCP relay (tcp_proxy's `max_downstream_connection_duration`).
    pub max_connection_duration: Option<Duration>,
    /// An opaque TCP relay with no byte either way for this long is closed (`tcp.idleTimeout`
    /// alone: Istio's tcp_proxy `idle_timeout`); `None`: Envoy's default, 1 hour; zero: never.
    pub tcp_idle_timeout: Option<Duration>,
    /// Keepalive probes (`tcp.tcpKeepalive`); `None`: no `SO_KEEPALIVE`.
    pub tcp_keepalive: Option<Keepalive>,
}

impl Default for Limits {
    /// A cluster without `connectionPool`: nothing limited (Istio's thresholds), the proxy's
    /// timeouts.
    fn default() -> Limits {
        Limits {
            max_connections: UNLIMITED,
            max_pending_requests: UNLIMITED,
            max_retries: UNLIMITED,
            max_requests_per_connection: 0,
            connect_timeout: None,
            idle_timeout: None,
            max_connection_duration: None,
            tcp_idle_timeout: None,
            tcp_keepalive: None,
        }
    }
}

/// A threshold as Istio sets it: 0 or unset leaves the default (unlimited).
fn threshold(v: Option<u32>) -> u32 {
    match v {
        Some(n) if n > 0 => n,
        _ => UNLIMITED,
    }
}

impl Limits {
    /// The limits Istio's `applyConnectionPool` gives a cluster for `settings` (the effective
    /// `connectionPool` of the cluster's DestinationRule, port and subset; `None`: none).
    pub fn from_settings(settings: Option<&xds::ConnectionPool>) -> Limits {
        let Some(s) = settings else {
            return Limits::default();
        };
        let ms = Duration::from_millis;
        // Istio sends keepalive time and interval in whole seconds (`uint32(Seconds)`).
        let secs = |v: Option<u64>| v.map(|ms| Duration::from_secs(ms / 1000));
        Limits {
            max_connections: threshold(s.tcp.max_connections),
            max_pending_requests: threshold(s.http.max_pending_requests),
            max_retries: threshold(s.http.max_retries),
            max_requests_per_connection: s.http.max_requests_per_connection.unwrap_or(0),
            connect_timeout: s.tcp.connect_timeout_ms.map(ms),
            idle_timeout: s.http.idle_timeout_ms.or(s.tcp.idle_timeout_ms).map(ms),
            max_connection_duration: s.tcp.max_connection_duration_ms.map(ms),
            tcp_idle_timeout: s.tcp.idle_timeout_ms.map(ms),
            tcp_keepalive: s.tcp.tcp_keepalive.as_ref().map(|k| Keepalive {
                probes: k.probes.filter(|&p| p > 0),
                time: secs(k.time_ms).filter(|d| !d.is_zero()),
                interval: secs(k.interval_ms).filter(|d| !d.is_zero()),
            }),
        }
    }
}

/// Envoy's circuit-breaking and connection counters for one cluster
/// (`cluster.<name>.<field>`), as gauges and counters that only go up.
#[derive(Debug, Default)]
pub struct CircuitStats {
    /// Connections open (gauge).
    pub upstream_cx_active: AtomicU64,
    /// Connections opened (counter; failed connects included, as Envoy counts them).
    pub upstream_cx_total: AtomicU64,
    /// Times a request or TCP connection found `maxConnections` reached.
    pub upstream_cx_overflow: AtomicU64,
    /// Requests waiting for a connection (gauge).
    pub upstream_rq_pending_active: AtomicU64,
    /// Requests that had to wait for a connection.
    pub upstream_rq_pending_total: AtomicU64,
    /// Requests failed because `http1MaxPendingRequests` were already waiting (`UO`).
    pub upstream_rq_pending_overflow: AtomicU64,
    /// Connections retired after `maxRequestsPerConnection` requests.
    pub upstream_cx_max_requests: AtomicU64,
    /// Retries in flight (gauge).
    pub upstream_rq_retry_active: AtomicU64,
    /// Retries not made because `maxRetries` were in flight.
    pub upstream_rq_retry_overflow: AtomicU64,
    /// Connections closed after the idle timeout.
    pub upstream_cx_idle_timeout: AtomicU64,
    /// Connections retired after `maxConnectionDuration`.
    pub upstream_cx_max_duration_reached: AtomicU64,
}

/// The values of [`CircuitStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`CircuitStats::upstream_cx_active`].
    pub upstream_cx_active: u64,
    /// See [`CircuitStats::upstream_cx_total`].
    pub upstream_cx_total: u64,
    /// See [`CircuitStats::upstream_cx_overflow`].
    pub upstream_cx_overflow: u64,
    /// See [`CircuitStats::upstream_rq_pending_active`].
    pub upstream_rq_pending_active: u64,
    /// See [`CircuitStats::upstream_rq_pending_total`].
    pub upstream_rq_pending_total: u64,
    /// See [`CircuitStats::upstream_rq_pending_overflow`].
    pub upstream_rq_pending_overflow: u64,
    /// See [`CircuitStats::upstream_cx_max_requests`].
    pub upstream_cx_max_requests: u64,
    /// See [`CircuitStats::upstream_rq_retry_active`].
    pub upstream_rq_retry_active: u64,
    /// See [`CircuitStats::upstream_rq_retry_overflow`].
    pub upstream_rq_retry_overflow: u64,
    /// See [`CircuitStats::upstream_cx_idle_timeout`].
    pub upstream_cx_idle_timeout: u64,
    /// See [`CircuitStats::upstream_cx_max_duration_reached`].
    pub upstream_cx_max_duration_reached: u64,
}

impl StatsSnapshot {
    /// `(Envoy's stat name without the cluster prefix, value)`, for the admin's `/stats`.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("upstream_cx_active", self.upstream_cx_active),
            ("upstream_cx_total", self.upstream_cx_total),
            ("upstream_cx_overflow", self.upstream_cx_overflow),
            (
                "upstream_rq_pending_active",
                self.upstream_rq_pending_active,
            ),
            ("upstream_rq_pending_total", self.upstream_rq_pending_total),
            (
                "upstream_rq_pending_overflow",
                self.upstream_rq_pending_overflow,
            ),
            ("upstream_cx_max_requests", self.upstream_cx_max_requests),
            ("upstream_rq_retry_active", self.upstream_rq_retry_active),
            (
                "upstream_rq_retry_overflow",
                self.upstream_rq_retry_overflow,
            ),
            ("upstream_cx_idle_timeout", self.upstream_cx_idle_timeout),
            (
                "upstream_cx_max_duration_reached",
                self.upstream_cx_max_duration_reached,
            ),
        ]
        .into_iter()
    }
}

impl CircuitStats {
    /// The counters now (each read on its own: a consistent cut is not needed for stats).
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            upstream_cx_active: r(&self.upstream_cx_active),
            upstream_cx_total: r(&self.upstream_cx_total),
            upstream_cx_overflow: r(&self.upstream_cx_overflow),
            upstream_rq_pending_active: r(&self.upstream_rq_pending_active),
            upstream_rq_pending_total: r(&self.upstream_rq_pending_total),
            upstream_rq_pending_overflow: r(&self.upstream_rq_pending_overflow),
            upstream_cx_max_requests: r(&self.upstream_cx_max_requests),
            upstream_rq_retry_active: r(&self.upstream_rq_retry_active),
            upstream_rq_retry_overflow: r(&self.upstream_rq_retry_overflow),
            upstream_cx_idle_timeout: r(&self.upstream_cx_idle_timeout),
            upstream_cx_max_duration_reached: r(&self.upstream_cx_max_duration_reached),
        }
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The request or connection found `http1MaxPendingRequests` already waiting: Envoy's `UO`
/// (503 `upstream_reset_before_response_started{overflow}` for HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream overflow: too many requests pending for a connection")]
pub struct Overflow;

/// One cluster's circuit-breaking state; see the module docs.
#[derive(Debug)]
pub struct ClusterCircuit {
    limits: ArcSwap<Limits>,
    /// Counters; `upstream_cx_active` and `upstream_rq_pending_active` are also the gates.
    pub stats: CircuitStats,
    changed: Notify,
}

impl ClusterCircuit {
    /// A cluster's state with `limits`, nothing open yet.
    pub fn new(limits: Limits) -> Arc<ClusterCircuit> {
        Arc::new(ClusterCircuit {
            limits: ArcSwap::from_pointee(limits),
            stats: CircuitStats::default(),
            changed: Notify::new(),
        })
    }

    /// True while the limits are Istio's defaults (nothing to enforce): the pool then serves
    /// the cluster without counting.
    pub fn is_unlimited(&self) -> bool {
        **self.limits.load() == Limits::default()
    }

    /// The limits now.
    pub fn limits(&self) -> Arc<Limits> {
        self.limits.load_full()
    }

    /// Takes new limits (a config snapshot changed them). Open connections and waiting requests
    /// stay counted; a lower cap holds back new ones until enough have closed, a higher one
    /// wakes waiters at once. Per-connection settings apply to connections opened from now on.
    pub fn update(&self, limits: Limits) {
        if **self.limits.load() != limits {
            self.limits.store(Arc::new(limits));
            self.changed.notify_waiters();
        }
    }

    /// Takes a connection slot if fewer than `maxConnections` are open; the slot is freed when
    /// the permit drops (the connection closed, or never opened). Counts `upstream_cx_total`.
    pub fn try_open(self: &Arc<Self>) -> Option<ConnPermit> {
        let max = self.limits.load().max_connections;
        if !take(&self.stats.upstream_cx_active, max) {
            return None;
        }
        bump(&self.stats.upstream_cx_total);
        Some(ConnPermit(self.clone()))
    }

    /// Takes a connection slot whatever the cap: Envoy opens a connection to a host that has
    /// none even when the cluster is at `maxConnections` (counted in `upstream_cx_overflow`),
    /// rather than queue requests to it behind other hosts' connections.
    pub(crate) fn open_beyond_cap(self: &Arc<Self>) -> ConnPermit {
        self.stats.upstream_cx_active.fetch_add(1, Ordering::SeqCst);
        bump(&self.stats.upstream_cx_total);
        ConnPermit(self.clone())
    }

    /// Takes a pending slot if fewer than `http1MaxPendingRequests` wait; counts
    /// `upstream_rq_pending_total`, or `upstream_rq_pending_overflow` when full.
    pub fn try_pend(self: &Arc<Self>) -> Result<Pending, Overflow> {
        let max = self.limits.load().max_pending_requests;
        if !take(&self.stats.upstream_rq_pending_active, max) {
            bump(&self.stats.upstream_rq_pending_overflow);
            return Err(Overflow);
        }
        // Pairs with the fence in `wake`: either the waker sees this pending request, or the
        // waiter (which checks after this) sees what the waker freed.
        fence(Ordering::SeqCst);
        bump(&self.stats.upstream_rq_pending_total);
        Ok(Pending(self.clone()))
    }

    /// Admits a retry if fewer than `maxRetries` are in flight (the guard counts it until
    /// dropped: hold it for the retried attempt); `None`, counted in
    /// `upstream_rq_retry_overflow`, means Envoy would not retry and returns the failure as it
    /// is.
    pub fn try_retry(self: &Arc<Self>) -> Option<RetryPermit> {
        let max = self.limits.load().max_retries;
        if !take(&self.stats.upstream_rq_retry_active, max) {
            bump(&self.stats.upstream_rq_retry_overflow);
            return None;
        }
        Some(RetryPermit(self.clone()))
    }

    /// Counts a request refused because `http2MaxRequests` were in flight (the check is
    /// [`crate::balance::LoadTracker::admit`]'s): Envoy counts it in
    /// `upstream_rq_pending_overflow`, as a pending overflow.
    pub fn note_requests_overflow(&self) {
        bump(&self.stats.upstream_rq_pending_overflow);
    }

    /// Resolves at the next wake-up (a connection of the cluster closed or came back idle, a new
    /// HTTP/2 connection is shared) or limits change. Create and `enable` it *before* checking
    /// for a free connection, or a wake-up in between is lost.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Wakes the waiting requests, if any: a connection slot was freed or a connection became
    /// available. Cheap when nothing waits (one load, no lock).
    pub(crate) fn wake(&self) {
        fence(Ordering::SeqCst);
        if self
            .stats
            .upstream_rq_pending_active
            .load(Ordering::Relaxed)
            > 0
        {
            self.changed.notify_waiters();
        }
    }

    /// A connection slot for opaque TCP (Envoy's tcp_proxy through its TCP pool): at once when
    /// one is free, else after waiting as a pending connection until one closes; [`Overflow`]
    /// when `http1MaxPendingRequests` already wait. Dropping the future gives the pending slot
    /// back.
    pub async fn acquire(self: &Arc<Self>) -> Result<ConnPermit, Overflow> {
        if let Some(p) = self.try_open() {
            return Ok(p);
        }
        let _pending = self.try_pend()?;
        bump(&self.stats.upstream_cx_overflow);
        loop {
            let notified = self.changed();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(p) = self.try_open() {
                return Ok(p);
            }
            notified.await;
        }
    }
}

/// Adds one to `gauge` unless it is at `max` already (Envoy's `canCreate` then `inc`, as one
/// step so that racing workers never pass the cap together).
fn take(gauge: &AtomicU64, max: u32) -> bool {
    let max = u64::from(max);
    let mut now = gauge.load(Ordering::Relaxed);
    loop {
        if now >= max {
            return false;
        }
        match gauge.compare_exchange_weak(now, now + 1, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(actual) => now = actual,
        }
    }
}

/// One retry in flight, counted against its cluster's `maxRetries` until dropped.
#[derive(Debug)]
pub struct RetryPermit(Arc<ClusterCircuit>);

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0
            .stats
            .upstream_rq_retry_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open (or opening) upstream connection counted against its cluster; dropping it frees the
/// slot and wakes a waiter.
#[derive(Debug)]
pub struct ConnPermit(Arc<ClusterCircuit>);

impl ConnPermit {
    /// The cluster it counts against.
    pub fn circuit(&self) -> &Arc<ClusterCircuit> {
        &self.0
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0
            .stats
            .upstream_cx_active
            .fetch_sub(1, Ordering::SeqCst);
        self.0.wake();
    }
}

/// One request (or TCP connection) waiting for a connection; dropping it (connection found,
/// or the waiter gave up) frees the pending slot.
#[derive(Debug)]
pub struct Pending(Arc<ClusterCircuit>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0
            .stats
            .upstream_rq_pending_active
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// Cap on clusters remembered; beyond it, clusters with nothing open or waiting are forgotten.
const MAX_CLUSTERS: usize = 16 * 1024;

/// One [`ClusterCircuit`] per cluster name, kept across config snapshots. Look circuits up when
/// a snapshot is built, not per request: the map is behind one lock.
#[derive(Debug, Default)]
pub struct Circuits {
    map: Mutex<FxHashMap<Arc<str>, Arc<ClusterCircuit>>>,
}

impl Circuits {
    /// The circuit of `cluster`, made with `limits` or updated to them.
    pub fn get(&self, cluster: &Arc<str>, limits: Limits) -> Arc<ClusterCircuit> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(cluster) {
            c.update(limits);
            return c.clone();
        }
        if map.len() >= MAX_CLUSTERS {
            map.retain(|_, c| Arc::strong_count(c) > 1);
        }
        let c = ClusterCircuit::new(limits);
        map.insert(cluster.clone(), c.clone());
        c
    }

    /// Forgets the clusters `keep` rejects (gone from the config); their open connections keep
    /// their own reference until they close.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|name, _| keep(name));
    }

    /// Every cluster's counters, sorted by name (for the admin's `/stats`).
    pub fn snapshot(&self) -> Vec<(Arc<str>, StatsSnapshot)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = map
            .iter()
            .map(|(n, c)| (n.clone(), c.stats.snapshot()))
            .collect();
        drop(map);
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn limits(cx: u32, pending: u32) -> Limits {
        Limits {
            max_connections: cx,
            max_pending_requests: pending,
            ..Limits::default()
        }
    }

    #[test]
    fn istio_defaults_and_zero_mean_unlimited() {
        assert_eq!(Limits::from_settings(None), Limits::default());
        assert_eq!(Limits::default().max_connections, u32::MAX);
        let mut s = xds::ConnectionPool::default();
        s.tcp.max_connections = Some(0);
        s.http.max_pending_requests = Some(0);
        let l = Limits::from_settings(Some(&s));
        assert_eq!(l.max_connections, UNLIMITED);
        assert_eq!(l.max_pending_requests, UNLIMITED);
        s.tcp.max_connections = Some(1);
        s.http.max_pending_requests = Some(2);
        s.http.max_requests_per_connection = Some(1);
        s.tcp.idle_timeout_ms = Some(3000);
        s.tcp.tcp_keepalive = Some(xds::TcpKeepalive {
            probes: Some(3),
            time_ms: Some(7500),
            interval_ms: None,
        });
        let l = Limits::from_settings(Some(&s));
        assert_eq!((l.max_connections, l.max_pending_requests), (1, 2));
        assert_eq!(l.max_requests_per_connection, 1);
        // http.idleTimeout unset: tcp.idleTimeout, as Istio falls back.
        assert_eq!(l.idle_timeout, Some(Duration::from_secs(3)));
        s.http.idle_timeout_ms = Some(1000);
        assert_eq!(
            Limits::from_settings(Some(&s)).idle_timeout,
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            l.tcp_keepalive,
            Some(Keepalive {
                probes: Some(3),
                time: Some(Duration::from_secs(7)),
                interval: None,
            })
        );
    }

    #[test]
    fn caps_count_and_free() {
        let c = ClusterCircuit::new(limits(1, 1));
        let cx = c.try_open().expect("first connection");
        assert!(c.try_open().is_none());
        let p = c.try_pend().expect("first pending");
        assert_eq!(c.try_pend().unwrap_err(), Overflow);
        let s = c.stats.snapshot();
        assert_eq!(
            (
                s.upstream_cx_active,
                s.upstream_cx_total,
                s.upstream_rq_pending_active,
                s.upstream_rq_pending_total,
                s.upstream_rq_pending_overflow
            ),
            (1, 1, 1, 1, 1)
        );
        drop((cx, p));
        let s = c.stats.snapshot();
        assert_eq!((s.upstream_cx_active, s.upstream_rq_pending_active), (0, 0));
        let r = c.try_retry().expect("unlimited retries by default");
        c.update(Limits {
            max_retries: 1,
            ..limits(1, 1)
        });
        assert!(c.try_retry().is_none());
        assert_eq!(c.stats.snapshot().upstream_rq_retry_overflow, 1);
        drop(r);
        assert!(c.try_retry().is_some());
        // A higher cap applies at once.
        let _a = c.try_open().expect("free again");
        c.update(limits(2, 1));
        assert!(c.try_open().is_some());
    }

    #[tokio::test]
    async fn tcp_acquire_waits_then_overflows() {
        let c = ClusterCircuit::new(limits(1, 1));
        let first = c.acquire().await.expect("free slot");
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.acquire().await.map(|_| ()) }
        });
        wait_for(|| c.stats.snapshot().upstream_rq_pending_active == 1).await;
        assert_eq!(c.acquire().await.unwrap_err(), Overflow);
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter woken when the slot frees")
            .expect("join")
            .expect("slot");
        let s = c.stats.snapshot();
        assert_eq!(s.upstream_cx_overflow, 1);
        assert_eq!(s.upstream_rq_pending_overflow, 1);
        assert_eq!((s.upstream_cx_active, s.upstream_rq_pending_active), (0, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_frees_its_pending_slot() {
        let c = ClusterCircuit::new(limits(1, 1));
        let _held = c.try_open().expect("slot");
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.acquire().await.map(|_| ()) }
        });
        wait_for(|| c.stats.snapshot().upstream_rq_pending_active == 1).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(c.stats.snapshot().upstream_rq_pending_active, 0);
        assert!(c.try_pend().is_ok(), "the slot is free for the next one");
    }

    #[test]
    fn registry_keeps_one_per_cluster_across_updates() {
        let r = Circuits::default();
        let name: Arc<str> = Arc::from("outbound|80||httpbin.default.svc.cluster.local");
        let a = r.get(&name, limits(1, 1));
        let b = r.get(&name, limits(2, 1));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.limits().max_connections, 2);
        assert_eq!(r.snapshot().len(), 1);
        r.retain(|_| false);
        assert!(r.snapshot().is_empty());
    }

    /// Polls `cond` until it holds (bounded: panics after 5 s).
    pub(crate) async fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not reached within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
