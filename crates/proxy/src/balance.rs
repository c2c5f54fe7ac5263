//! Endpoint selection: round robin, least request (power of two choices) and random, over a
//! [`Cluster`]'s endpoints.
//!
//! Endpoints that already failed this request are skipped (Istio's retry policy prefers other
//! hosts) unless nothing else is left. Least request reads each endpoint's in-flight counter,
//! which every cluster and snapshot holding the address shares ([`crate::cluster`]); the
//! round-robin cursor is the cluster's and survives config swaps.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use xds::LbPolicy;

use crate::cluster::{Cluster, Endpoint};

/// Picks an endpoint of `cluster` by its policy, with its index; `exclude` are endpoints that
/// already failed this request, skipped unless nothing else is left. Endpoints outlier
/// detection ejected are never picked (unless the cluster is in panic); `None` when nothing is
/// left. With consistent hashing, `hash` (the request's) picks the endpoint, unless that one
/// is ejected or excluded: then the cluster's simple policy picks among the others.
pub fn pick<'c>(
    cluster: &'c Cluster,
    exclude: &[SocketAddr],
    hash: Option<u64>,
) -> Option<(usize, &'c Endpoint)> {
    let all = &cluster.endpoints[..];
    let ok = |i: usize| cluster.usable(i) && !exclude.contains(&all[i].addr);
    if let (Some(h), Some(ch)) = (hash, &cluster.hash)
        && let Some(i) = ch.lb.pick(h)
        && i < all.len()
        && ok(i)
    {
        return Some((i, &all[i]));
    }
    let ejections = cluster.outlier.as_ref().is_some_and(|o| o.any_ejected());
    if !exclude.is_empty() || ejections {
        let fresh: Vec<usize> = (0..all.len()).filter(|&i| ok(i)).collect();
        if !fresh.is_empty() {
            return choose(cluster, fresh.len(), |i| fresh[i]).map(|i| (i, &all[i]));
        }
        // Only excluded endpoints are left: one of them again, rather than none (but never an
        // ejected one).
        let usable: Vec<usize> = (0..all.len()).filter(|&i| cluster.usable(i)).collect();
        return choose(cluster, usable.len(), |i| usable[i]).map(|i| (i, &all[i]));
    }
    // A first try excludes nothing: pick from the endpoints as they are, without a copy.
    choose(cluster, all.len(), |i| i).map(|i| (i, &all[i]))
}

/// Chooses one of `n` candidates, the `i`th being endpoint `at(i)`; returns the endpoint index.
fn choose(cluster: &Cluster, n: usize, at: impl Fn(usize) -> usize) -> Option<usize> {
    let eps = &cluster.endpoints;
    match n {
        0 => None,
        1 => Some(at(0)),
        n => Some(match cluster.lb {
            LbPolicy::RoundRobin => at(cluster.state.rr.fetch_add(1, Ordering::Relaxed) % n),
            LbPolicy::Random | LbPolicy::Passthrough => at(rand::random_range(0..n)),
            LbPolicy::LeastRequest => {
                let a = rand::random_range(0..n);
                let mut b = rand::random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (at(a), at(b));
                if eps[b].active() < eps[a].active() {
                    b
                } else {
                    a
                }
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::InFlight;

    fn cluster(lb: LbPolicy) -> Cluster {
        let endpoints: Vec<Endpoint> = (1..=3)
            .map(|i| Endpoint::single(SocketAddr::from(([10, 0, 0, i], 80)), None))
            .collect();
        Cluster::new(
            Arc::from("c"),
            None,
            endpoints,
            lb,
            xds::Settings::default(),
            Arc::default(),
        )
    }

    fn addrs(c: &Cluster) -> Vec<SocketAddr> {
        c.endpoints.iter().map(|e| e.addr).collect()
    }

    #[test]
    fn round_robin_cycles() {
        let c = cluster(LbPolicy::RoundRobin);
        let eps = addrs(&c);
        let picked: Vec<_> = (0..6)
            .map(|_| pick(&c, &[], None).expect("one").1.addr)
            .collect();
        assert_eq!(picked[..3], eps[..]);
        assert_eq!(picked[3..], eps[..]);
    }

    #[test]
    fn least_request_avoids_busy_endpoint() {
        let c = cluster(LbPolicy::LeastRequest);
        let _busy: Vec<InFlight> = (0..5).map(|_| c.endpoints[0].start()).collect();
        for _ in 0..100 {
            assert_ne!(
                pick(&c, &[], None).map(|(_, e)| e.addr),
                Some(c.endpoints[0].addr)
            );
        }
    }

    #[test]
    fn exclusion_and_admission() {
        let mut c = cluster(LbPolicy::Random);
        let eps = addrs(&c);
        for _ in 0..20 {
            assert_eq!(pick(&c, &eps[..2], None).map(|(_, e)| e.addr), Some(eps[2]));
        }
        // Everything failed: any endpoint again rather than none.
        assert!(pick(&c, &eps, None).is_some());
        let mut pool = xds::ConnectionPool::default();
        pool.http.max_requests = Some(1);
        c.settings.connection_pool = Some(pool);
        let g = c.admit().expect("first admitted");
        assert!(c.admit().is_none());
        drop(g);
        assert!(c.admit().is_some());
    }
}
