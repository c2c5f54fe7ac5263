//! Endpoint selection: round robin, least request (power of two choices) and random.
//!
//! Least request needs to know how many requests each endpoint has in flight, across requests and
//! across config reloads; [`LoadTracker`] keeps one counter per endpoint address and hands out
//! [`InFlight`] guards that count a request for as long as it lives. The same tracker bounds the
//! requests in flight per cluster for circuit breaking (`UO`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use xds::LbPolicy;

use crate::fx_hash::FxHashMap;

/// Requests in flight per endpoint and per cluster, and round-robin cursors per cluster.
#[derive(Debug, Default)]
pub struct LoadTracker {
    endpoints: Mutex<FxHashMap<SocketAddr, Arc<AtomicU64>>>,
    clusters: Mutex<FxHashMap<Arc<str>, Arc<ClusterCounters>>>,
}

/// Per-cluster state.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    rr: AtomicUsize,
    in_flight: AtomicU64,
}

/// Counts one request against a counter until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one request against a cluster until dropped.
#[derive(Debug)]
pub struct ClusterInFlight(Arc<ClusterCounters>);

impl Drop for ClusterInFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The cap on tracked endpoints; beyond it idle counters are pruned.
const MAX_TRACKED: usize = 16 * 1024;

impl LoadTracker {
    fn endpoint(&self, addr: SocketAddr) -> Arc<AtomicU64> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&addr) {
            map.retain(|_, c| c.load(Ordering::Relaxed) > 0);
        }
        map.entry(addr).or_default().clone()
    }

    /// Requests in flight to `addr` now.
    pub fn active(&self, addr: SocketAddr) -> u64 {
        self.load_of(addr)
    }

    fn load_of(&self, addr: SocketAddr) -> u64 {
        let map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&addr)
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The counters of `cluster`.
    pub fn cluster(&self, cluster: &Arc<str>) -> Arc<ClusterCounters> {
        let mut map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(cluster) {
            map.retain(|_, c| c.in_flight.load(Ordering::Relaxed) > 0);
        }
        map.entry(cluster.clone()).or_default().clone()
    }

    /// Admits a request to `cluster` unless `max` are already in flight (circuit breaking).
    pub fn admit(&self, cluster: &Arc<str>, max: Option<u32>) -> Option<ClusterInFlight> {
        let c = self.cluster(cluster);
        let before = c.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = ClusterInFlight(c);
        match max {
            Some(max) if before >= u64::from(max) => None,
            _ => Some(guard),
        }
    }

    /// Counts a request to `addr` until the guard is dropped.
    pub fn start(&self, addr: SocketAddr) -> InFlight {
        let c = self.endpoint(addr);
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }

    /// Picks one of `candidates` (at least one) by `policy`; `exclude` are endpoints that already
    /// failed this request (skipped unless nothing else is left).
    pub fn pick(
        &self,
        policy: LbPolicy,
        cluster: &Arc<str>,
        candidates: &[SocketAddr],
        exclude: &[SocketAddr],
    ) -> Option<SocketAddr> {
        // A first try excludes nothing: pick from the candidates as they are, without a copy.
        let fresh: Vec<SocketAddr>;
        let pool: &[SocketAddr] = if exclude.is_empty() {
            candidates
        } else {
            fresh = candidates
                .iter()
                .copied()
                .filter(|a| !exclude.contains(a))
                .collect();
            if fresh.is_empty() { candidates } else { &fresh }
        };
        match pool.len() {
            0 => None,
            1 => Some(pool[0]),
            n => Some(match policy {
                LbPolicy::RoundRobin => {
                    let i = self.cluster(cluster).rr.fetch_add(1, Ordering::Relaxed);
                    pool[i % n]
                }
                LbPolicy::Random | LbPolicy::Passthrough => pool[rand::random_range(0..n)],
                LbPolicy::LeastRequest => {
                    let a = rand::random_range(0..n);
                    let mut b = rand::random_range(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (la, lb) = (self.load_of(pool[a]), self.load_of(pool[b]));
                    if lb < la { pool[b] } else { pool[a] }
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<SocketAddr> {
        (1..=3)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect()
    }

    #[test]
    fn round_robin_cycles() {
        let t = LoadTracker::default();
        let c: Arc<str> = Arc::from("c");
        let eps = addrs();
        let picked: Vec<_> = (0..6)
            .map(|_| t.pick(LbPolicy::RoundRobin, &c, &eps, &[]).expect("one"))
            .collect();
        assert_eq!(picked[..3], eps[..]);
        assert_eq!(picked[3..], eps[..]);
    }

    #[test]
    fn least_request_avoids_busy_endpoint() {
        let t = LoadTracker::default();
        let c: Arc<str> = Arc::from("c");
        let eps = addrs();
        let _busy: Vec<InFlight> = (0..5).map(|_| t.start(eps[0])).collect();
        for _ in 0..100 {
            assert_ne!(t.pick(LbPolicy::LeastRequest, &c, &eps, &[]), Some(eps[0]));
        }
    }

    #[test]
    fn exclusion_and_admission() {
        let t = LoadTracker::default();
        let c: Arc<str> = Arc::from("c");
        let eps = addrs();
        for _ in 0..20 {
            assert_eq!(t.pick(LbPolicy::Random, &c, &eps, &eps[..2]), Some(eps[2]));
        }
        let g = t.admit(&c, Some(1)).expect("first admitted");
        assert!(t.admit(&c, Some(1)).is_none());
        drop(g);
        assert!(t.admit(&c, Some(1)).is_some());
    }
}
