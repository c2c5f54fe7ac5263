//! Outlier detection for one cluster: endpoints that keep failing are ejected from balancing for
//! a while, as Envoy's `Outlier::DetectorImpl` does with the `OutlierDetection` Istio generates
//! from a DestinationRule (`applyOutlierDetection` in Istio's `cluster_traffic_policy.go`).
//!
//! What Istio configures, and so what is here: consecutive 5xx (default 5, enforced), consecutive
//! gateway errors (502/503/504; default 5 but *not enforced* unless the DestinationRule sets it:
//! detected, counted, never ejected), consecutive locally originated failures when
//! `splitExternalLocalOriginErrors`, success-rate ejection off. Ejection is inline, as soon as a
//! counter reaches its threshold, if the ejected endpoints then stay within
//! `maxEjectionPercent` of all of them (current Envoy: `100 × (ejected + 1) / endpoints ≤ max`,
//! so with the default 10 % fewer than 10 endpoints never lose one, and a lone endpoint is
//! ejected only under 100 %). An ejected endpoint comes back at the first [`sweep`] (every
//! `interval`) after `min(base × multiplier, max_ejection_time)`; the multiplier grows by one per
//! ejection and shrinks by one per sweep that finds the endpoint in service. Below
//! `minHealthPercent` healthy endpoints the balancer ignores ejections ([`panic`]; Istio sets
//! the threshold to `minHealthPercent`, 0 by default, so never).
//!
//! Shared by all workers: per-endpoint counters are atomics, [`report`] and [`is_ejected`] take
//! no lock. Ejections and sweeps (rare: a threshold reached, a timer) are serialized by a mutex,
//! as Envoy serializes them on its main thread.
//!
//! [`sweep`]: OutlierDetector::sweep
//! [`panic`]: OutlierDetector::panic
//! [`report`]: OutlierDetector::report
//! [`is_ejected`]: OutlierDetector::is_ejected

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::fx_hash::FxHashMap;

/// What one request to an endpoint came to (Envoy's `Outlier::Result` and the response codes
/// its router reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers with this status. For a gRPC request whose response headers carry
    /// `grpc-status` (trailers-only), the status mapped by [`grpc_to_http_status`], as Envoy's
    /// router reports it; a `grpc-status` in trailers is not reported.
    Http(u16),
    /// A stream was had on a connection to the endpoint (Envoy's `LocalOriginConnectSuccess`,
    /// reported on every pool-ready): with split errors, it ends a run of local failures.
    ConnectSuccess,
    /// No connection, or the stream was reset before a response (Envoy's router reports every
    /// upstream reset but an overflow as `LocalOriginConnectFailed`): a 503 unless split.
    ConnectFailed,
    /// The request (or one try of it) timed out (`LocalOriginTimeout`): a 504 unless split.
    Timeout,
}

/// Envoy's `Grpc::Utility::grpcToHttpStatus`, for [`Outcome::Http`] of a gRPC response.
pub fn grpc_to_http_status(grpc_status: u64) -> u16 {
    match grpc_status {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500, // 2 unknown, 13 internal, 15 data loss, and anything else
    }
}

/// Settings, with Envoy's defaults as Istio leaves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Consecutive 5xx before ejection (0: never).
    pub consecutive_5xx: u32,
    /// Whether a consecutive-5xx detection ejects.
    pub enforce_5xx: bool,
    /// Consecutive gateway errors before detection (0: never).
    pub consecutive_gateway: u32,
    /// Whether a consecutive-gateway detection ejects (only when the DestinationRule sets
    /// `consecutiveGatewayErrors`).
    pub enforce_gateway: bool,
    /// Count local failures apart (`splitExternalLocalOriginErrors`).
    pub split_local_origin: bool,
    /// Consecutive local failures before ejection, when split.
    pub consecutive_local_origin: u32,
    /// Sweep interval.
    pub interval: Duration,
    /// Base ejection time.
    pub base_ejection: Duration,
    /// Longest ejection time.
    pub max_ejection: Duration,
    /// Most endpoints ejected at once, in percent.
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints, in percent, ejections are ignored.
    pub min_health_percent: u32,
}

impl Settings {
    /// The settings Envoy runs with under Istio's translation of `od`.
    pub fn from_xds(od: &xds::OutlierDetection) -> Settings {
        let base_ejection = Duration::from_millis(od.base_ejection_time_ms.unwrap_or(30_000));
        Settings {
            consecutive_5xx: od.consecutive_5xx_errors.unwrap_or(5),
            enforce_5xx: od.consecutive_5xx_errors.is_none_or(|v| v > 0),
            consecutive_gateway: od.consecutive_gateway_errors.unwrap_or(5),
            enforce_gateway: od.consecutive_gateway_errors.is_some_and(|v| v > 0),
            split_local_origin: od.split_external_local_origin_errors,
            consecutive_local_origin: od
                .consecutive_local_origin_failures
                .filter(|v| *v > 0)
                .unwrap_or(5),
            interval: Duration::from_millis(od.interval_ms.unwrap_or(10_000)),
            // Envoy refuses a cluster whose max ejection time (300 s unless set; Istio sets
            // none) is below the base; we stretch the max instead.
            max_ejection: base_ejection.max(Duration::from_secs(300)),
            base_ejection,
            // Istio passes only a positive percentage; Envoy's default is 10.
            max_ejection_percent: od
                .max_ejection_percent
                .filter(|p| *p > 0)
                .unwrap_or(10)
                .min(100),
            min_health_percent: od.min_health_percent.unwrap_or(0).min(100),
        }
    }
}

/// Counters and gauge, named as Envoy's `cluster.<name>.outlier_detection.*` stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Endpoints ejected now (gauge).
    pub ejections_active: u64,
    /// Ejections enforced, of any kind.
    pub ejections_enforced_total: u64,
    /// Ejections refused by `maxEjectionPercent`.
    pub ejections_overflow: u64,
    /// Deprecated: consecutive-5xx detections within the percentage, enforced or not.
    pub ejections_total: u64,
    /// Deprecated: consecutive-5xx detections.
    pub ejections_consecutive_5xx: u64,
    /// Consecutive-5xx detections.
    pub ejections_detected_consecutive_5xx: u64,
    /// Consecutive-5xx ejections.
    pub ejections_enforced_consecutive_5xx: u64,
    /// Consecutive-gateway-failure detections.
    pub ejections_detected_consecutive_gateway_failure: u64,
    /// Consecutive-gateway-failure ejections.
    pub ejections_enforced_consecutive_gateway_failure: u64,
    /// Consecutive-local-origin-failure detections.
    pub ejections_detected_consecutive_local_origin_failure: u64,
    /// Consecutive-local-origin-failure ejections.
    pub ejections_enforced_consecutive_local_origin_failure: u64,
}

impl Stats {
    /// Name and value of each, in Envoy's names.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("ejections_active", self.ejections_active),
            ("ejections_enforced_total", self.ejections_enforced_total),
            ("ejections_overflow", self.ejections_overflow),
            ("ejections_total", self.ejections_total),
            ("ejections_consecutive_5xx", self.ejections_consecutive_5xx),
            (
                "ejections_detected_consecutive_5xx",
                self.ejections_detected_consecutive_5xx,
            ),
            (
                "ejections_enforced_consecutive_5xx",
                self.ejections_enforced_consecutive_5xx,
            ),
            (
                "ejections_detected_consecutive_gateway_failure",
                self.ejections_detected_consecutive_gateway_failure,
            ),
            (
                "ejections_enforced_consecutive_gateway_failure",
                self.ejections_enforced_consecutive_gateway_failure,
            ),
            (
                "ejections_detected_consecutive_local_origin_failure",
                self.ejections_detected_consecutive_local_origin_failure,
            ),
            (
                "ejections_enforced_consecutive_local_origin_failure",
                self.ejections_enforced_consecutive_local_origin_failure,
            ),
        ]
        .into_iter()
    }
}

#[derive(Debug, Default)]
struct Counters {
    ejections_enforced_total: AtomicU64,
    ejections_overflow: AtomicU64,
    ejections_total: AtomicU64,
    ejections_consecutive_5xx: AtomicU64,
    detected: [AtomicU64; 3],
    enforced: [AtomicU64; 3],
}

/// The three consecutive-failure detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    FiveXx = 0,
    Gateway = 1,
    LocalOrigin = 2,
}

/// One endpoint's state, shared by the workers.
#[derive(Debug, Default)]
struct Endpoint {
    ejected: AtomicBool,
    consecutive: [AtomicU32; 3],
    /// Envoy's `ejectTimeBackoff`: the ejection time multiplier.
    backoff: AtomicU32,
    /// When last ejected, in ms after the detector's epoch.
    ejected_at_ms: AtomicU64,
    /// Times ejected.
    ejections: AtomicU32,
}

impl Endpoint {
    fn copy_from(&self, o: &Endpoint) {
        self.ejected.store(o.ejected.load(Relaxed), Relaxed);
        for (a, b) in self.consecutive.iter().zip(&o.consecutive) {
            a.store(b.load(Relaxed), Relaxed);
        }
        self.backoff.store(o.backoff.load(Relaxed), Relaxed);
        self.ejected_at_ms
            .store(o.ejected_at_ms.load(Relaxed), Relaxed);
        self.ejections.store(o.ejections.load(Relaxed), Relaxed);
    }
}

/// Outlier detection for one cluster's endpoints, by index.
#[derive(Debug)]
pub struct OutlierDetector {
    settings: Settings,
    addrs: Box<[SocketAddr]>,
    index: FxHashMap<SocketAddr, usize>,
    endpoints: Box<[Endpoint]>,
    active: AtomicUsize,
    counters: std::sync::Arc<Counters>,
    /// Ejections and sweeps, one at a time.
    ejecting: Mutex<()>,
    epoch: Instant,
}

impl OutlierDetector {
    /// A detector for `endpoints` (the cluster's, in the order the balancer indexes them), none
    /// ejected.
    pub fn new(endpoints: &[SocketAddr], settings: Settings) -> OutlierDetector {
        OutlierDetector {
            settings,
            addrs: endpoints.into(),
            index: endpoints.iter().enumerate().map(|(i, a)| (*a, i)).collect(),
            endpoints: endpoints.iter().map(|_| Endpoint::default()).collect(),
            active: AtomicUsize::new(0),
            counters: Default::default(),
            ejecting: Mutex::new(()),
            epoch: Instant::now(),
        }
    }

    /// The detector after a configuration change: endpoints kept (by address) keep their state
    /// when the settings are unchanged, as Envoy keeps its host monitors across endpoint
    /// updates; changed settings start afresh, as a new Envoy cluster does. Counters carry on.
    pub fn rebuild(&self, endpoints: &[SocketAddr], settings: Settings) -> OutlierDetector {
        let mut new = OutlierDetector::new(endpoints, settings);
        new.counters = self.counters.clone();
        new.epoch = self.epoch;
        if new.settings == self.settings {
            let _g = self.lock();
            let mut active = 0;
            for (i, a) in endpoints.iter().enumerate() {
                if let Some(&j) = self.index.get(a) {
                    new.endpoints[i].copy_from(&self.endpoints[j]);
                    active += usize::from(new.endpoints[i].ejected.load(Relaxed));
                }
            }
            new.active.store(active, Relaxed);
        }
        new
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The index of the endpoint at `addr`.
    pub fn index_of(&self, addr: &SocketAddr) -> Option<usize> {
        self.index.get(addr).copied()
    }

    /// True if endpoint `ep` is ejected now (an index out of range is not).
    pub fn is_ejected(&self, ep: usize) -> bool {
        self.endpoints
            .get(ep)
            .is_some_and(|e| e.ejected.load(Relaxed))
    }

    /// True while some endpoint is ejected (a balancer that finds none need not look at each).
    pub fn any_ejected(&self) -> bool {
        self.active.load(Relaxed) > 0
    }

    /// True when fewer than `minHealthPercent` of the endpoints are in service: the balancer
    /// then picks among all of them, ejected or not (Envoy's panic mode).
    pub fn panic(&self) -> bool {
        let n = self.endpoints.len();
        if n == 0 {
            return false;
        }
        let healthy = n - self.active.load(Relaxed).min(n);
        // Envoy: 100 × healthy / hosts < threshold, in floating point; exact in integers.
        (healthy as u64) * 100 < u64::from(self.settings.min_health_percent) * n as u64
    }

    /// True if the balancer may pick endpoint `ep`: not ejected, or in panic.
    pub fn usable(&self, ep: usize) -> bool {
        !self.is_ejected(ep) || self.panic()
    }

    /// Records what a request to endpoint `ep` came to; ejects it when a consecutive threshold
    /// is reached. Lock-free unless it ejects (and reads the clock only then).
    pub fn report(&self, ep: usize, outcome: Outcome) {
        self.report_with(ep, outcome, &Instant::now)
    }

    /// [`OutlierDetector::report`] with the clock given (tests give their own).
    fn report_with(&self, ep: usize, outcome: Outcome, now: &dyn Fn() -> Instant) {
        let Some(e) = self.endpoints.get(ep) else {
            return;
        };
        let s = &self.settings;
        match outcome {
            Outcome::Http(code) => self.http_code(ep, e, code, now),
            Outcome::ConnectSuccess => {
                if s.split_local_origin {
                    e.consecutive[Kind::LocalOrigin as usize].store(0, Relaxed);
                }
            }
            Outcome::ConnectFailed | Outcome::Timeout => {
                if s.split_local_origin {
                    self.failure(ep, e, Kind::LocalOrigin, s.consecutive_local_origin, now);
                } else {
                    let code = if outcome == Outcome::Timeout {
                        504
                    } else {
                        503
                    };
                    self.http_code(ep, e, code, now);
                }
            }
        }
    }

    /// Envoy's `putHttpResponseCode`.
    fn http_code(&self, ep: usize, e: &Endpoint, code: u16, now: &dyn Fn() -> Instant) {
        let s = &self.settings;
        if !(500..=599).contains(&code) {
            e.consecutive[Kind::FiveXx as usize].store(0, Relaxed);
            e.consecutive[Kind::Gateway as usize].store(0, Relaxed);
            return;
        }
        // Both counters may reach their thresholds at once: the first detection ejects, the
        // second finds the endpoint ejected (Envoy posts both to its main thread in this order).
        if matches!(code, 502..=504) {
            self.failure(ep, e, Kind::Gateway, s.consecutive_gateway, now);
        } else {
            e.consecutive[Kind::Gateway as usize].store(0, Relaxed);
        }
        self.failure(ep, e, Kind::FiveXx, s.consecutive_5xx, now);
    }

    /// One more consecutive failure of `kind`; the one that reaches `threshold` exactly is a
    /// detection (a counter past it, on an endpoint already ejected, waits for a reset).
    fn failure(
        &self,
        ep: usize,
        e: &Endpoint,
        kind: Kind,
        threshold: u32,
        now: &dyn Fn() -> Instant,
    ) {
        let n = e.consecutive[kind as usize]
            .fetch_add(1, Relaxed)
            .wrapping_add(1);
        if threshold > 0 && n == threshold {
            self.detected(ep, kind, now());
        }
    }

    /// Envoy's `onConsecutiveErrorWorker` and `ejectHost`.
    fn detected(&self, ep: usize, kind: Kind, now: Instant) {
        let _g = self.lock();
        let e = &self.endpoints[ep];
        if e.ejected.load(Relaxed) {
            return;
        }
        let c = &self.counters;
        c.detected[kind as usize].fetch_add(1, Relaxed);
        let active = self.active.load(Relaxed);
        let n = self.endpoints.len();
        if ((active + 1) as u64) * 100 <= u64::from(self.settings.max_ejection_percent) * n as u64 {
            if kind == Kind::FiveXx {
                c.ejections_total.fetch_add(1, Relaxed);
            }
            let enforce = match kind {
                Kind::FiveXx => self.settings.enforce_5xx,
                Kind::Gateway => self.settings.enforce_gateway,
                Kind::LocalOrigin => true,
            };
            if enforce {
                self.active.store(active + 1, Relaxed);
                c.ejections_enforced_total.fetch_add(1, Relaxed);
                c.enforced[kind as usize].fetch_add(1, Relaxed);
                e.ejections.fetch_add(1, Relaxed);
                e.ejected_at_ms.store(self.ms_since_epoch(now), Relaxed);
                let (base, max) = (self.settings.base_ejection, self.settings.max_ejection);
                let b = e.backoff.load(Relaxed);
                if base * b < max + base {
                    e.backoff.store(b + 1, Relaxed);
                }
                e.ejected.store(true, Relaxed);
            }
        } else {
            c.ejections_overflow.fetch_add(1, Relaxed);
        }
        if kind == Kind::FiveXx {
            c.ejections_consecutive_5xx.fetch_add(1, Relaxed);
        }
        e.consecutive[kind as usize].store(0, Relaxed);
    }

    /// The periodic sweep (every [`Settings::interval`]): endpoints whose ejection time has
    /// passed come back (their 5xx and gateway counters reset), and every endpoint found in
    /// service has its multiplier lowered by one.
    pub fn sweep(&self, now: Instant) {
        let _g = self.lock();
        let now_ms = self.ms_since_epoch(now);
        let (base, max) = (self.settings.base_ejection, self.settings.max_ejection);
        for e in self.endpoints.iter() {
            let backoff = e.backoff.load(Relaxed);
            if !e.ejected.load(Relaxed) {
                e.backoff.store(backoff.saturating_sub(1), Relaxed);
                continue;
            }
            let eject_for = (base * backoff).min(max).as_millis() as u64;
            if eject_for <= now_ms.saturating_sub(e.ejected_at_ms.load(Relaxed)) {
                e.ejected.store(false, Relaxed);
                self.active.fetch_sub(1, Relaxed);
                e.consecutive[Kind::FiveXx as usize].store(0, Relaxed);
                e.consecutive[Kind::Gateway as usize].store(0, Relaxed);
            }
        }
    }

    /// The counters and gauge now.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Relaxed);
        Stats {
            ejections_active: self.active.load(Relaxed) as u64,
            ejections_enforced_total: get(&c.ejections_enforced_total),
            ejections_overflow: get(&c.ejections_overflow),
            ejections_total: get(&c.ejections_total),
            ejections_consecutive_5xx: get(&c.ejections_consecutive_5xx),
            ejections_detected_consecutive_5xx: get(&c.detected[0]),
            ejections_enforced_consecutive_5xx: get(&c.enforced[0]),
            ejections_detected_consecutive_gateway_failure: get(&c.detected[1]),
            ejections_enforced_consecutive_gateway_failure: get(&c.enforced[1]),
            ejections_detected_consecutive_local_origin_failure: get(&c.detected[2]),
            ejections_enforced_consecutive_local_origin_failure: get(&c.enforced[2]),
        }
    }

    /// The endpoints' addresses, by index.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.addrs
    }

    fn ms_since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // Nothing is guarded but the order of events: a poisoned lock is still an order.
        self.ejecting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)))
            .collect()
    }

    fn od() -> xds::OutlierDetection {
        xds::OutlierDetection::default()
    }

    fn all(pct: u32) -> Settings {
        Settings::from_xds(&xds::OutlierDetection {
            max_ejection_percent: Some(pct),
            ..od()
        })
    }

    fn fail(d: &OutlierDetector, ep: usize, code: u16, times: usize) {
        for _ in 0..times {
            d.report(ep, Outcome::Http(code));
        }
    }

    /// As [`fail`], the clock reading `at`.
    fn fail_at(d: &OutlierDetector, at: Instant, ep: usize, code: u16, times: usize) {
        for _ in 0..times {
            d.report_with(ep, Outcome::Http(code), &|| at);
        }
    }

    #[test]
    fn istios_defaults() {
        let s = Settings::from_xds(&od());
        assert_eq!(s.consecutive_5xx, 5);
        assert!(s.enforce_5xx);
        assert_eq!(s.consecutive_gateway, 5);
        assert!(!s.enforce_gateway);
        assert_eq!(s.interval, Duration::from_secs(10));
        assert_eq!(s.base_ejection, Duration::from_secs(30));
        assert_eq!(s.max_ejection, Duration::from_secs(300));
        assert_eq!(s.max_ejection_percent, 10);
        assert_eq!(s.min_health_percent, 0);
        let s = Settings::from_xds(&xds::OutlierDetection {
            consecutive_5xx_errors: Some(0),
            consecutive_gateway_errors: Some(3),
            ..od()
        });
        assert!(!s.enforce_5xx);
        assert!(s.enforce_gateway);
        assert_eq!(s.consecutive_gateway, 3);
    }

    #[test]
    fn five_consecutive_5xx_eject_and_a_success_resets_the_run() {
        let d = OutlierDetector::new(&addrs(2), all(100));
        fail(&d, 0, 500, 4);
        d.report(0, Outcome::Http(200));
        fail(&d, 0, 500, 4);
        assert!(!d.is_ejected(0));
        d.report(0, Outcome::Http(500));
        assert!(d.is_ejected(0));
        assert!(!d.is_ejected(1));
        let st = d.stats();
        assert_eq!(st.ejections_active, 1);
        assert_eq!(st.ejections_enforced_total, 1);
        assert_eq!(st.ejections_enforced_consecutive_5xx, 1);
        assert_eq!(st.ejections_detected_consecutive_5xx, 1);
        // 4xx are successes for this purpose.
        fail(&d, 1, 500, 4);
        d.report(1, Outcome::Http(404));
        fail(&d, 1, 500, 4);
        assert!(!d.is_ejected(1));
    }

    #[test]
    fn local_failures_count_as_503_and_504_unless_split() {
        let d = OutlierDetector::new(&addrs(1), all(100));
        for _ in 0..3 {
            d.report(0, Outcome::ConnectFailed);
        }
        d.report(0, Outcome::ConnectSuccess);
        d.report(0, Outcome::Timeout);
        assert!(!d.is_ejected(0));
        d.report(0, Outcome::Timeout);
        assert!(d.is_ejected(0));

        let split = Settings {
            split_local_origin: true,
            consecutive_local_origin: 2,
            ..all(100)
        };
        let d = OutlierDetector::new(&addrs(1), split);
        // Local failures no longer feed the 5xx counter...
        fail(&d, 0, 500, 4);
        d.report(0, Outcome::ConnectFailed);
        assert!(!d.is_ejected(0));
        // ...and a connected stream ends a run of them.
        d.report(0, Outcome::ConnectSuccess);
        d.report(0, Outcome::Timeout);
        assert!(!d.is_ejected(0));
        d.report(0, Outcome::ConnectFailed);
        assert!(d.is_ejected(0));
        assert_eq!(
            d.stats()
                .ejections_enforced_consecutive_local_origin_failure,
            1
        );
    }

    #[test]
    fn gateway_errors_are_detected_but_not_enforced_by_default() {
        let s = Settings {
            consecutive_5xx: 0,
            enforce_5xx: false,
            ..all(100)
        };
        let d = OutlierDetector::new(&addrs(1), s);
        fail(&d, 0, 503, 5);
        assert!(!d.is_ejected(0));
        let st = d.stats();
        assert_eq!(st.ejections_detected_consecutive_gateway_failure, 1);
        assert_eq!(st.ejections_enforced_total, 0);
        // Enforced when set; a 500 breaks a run of gateway errors.
        let s = Settings::from_xds(&xds::OutlierDetection {
            consecutive_5xx_errors: Some(0),
            consecutive_gateway_errors: Some(2),
            max_ejection_percent: Some(100),
            ..od()
        });
        let d = OutlierDetector::new(&addrs(1), s);
        d.report(0, Outcome::Http(502));
        d.report(0, Outcome::Http(500));
        d.report(0, Outcome::Http(504));
        assert!(!d.is_ejected(0));
        d.report(0, Outcome::ConnectFailed);
        assert!(d.is_ejected(0));
        assert_eq!(d.stats().ejections_enforced_consecutive_gateway_failure, 1);
        assert_eq!(d.stats().ejections_enforced_consecutive_5xx, 0);
    }

    #[test]
    fn max_ejection_percent_counts_the_ejection_to_come() {
        // 50 % of 3: one, not two (Envoy's MaxEjectionPercentage test).
        let d = OutlierDetector::new(&addrs(3), all(50));
        for ep in 0..3 {
            fail(&d, ep, 500, 5);
        }
        assert_eq!(
            (0..3).map(|i| d.is_ejected(i)).collect::<Vec<_>>(),
            vec![true, false, false]
        );
        assert_eq!(d.stats().ejections_overflow, 2);
        // A lone endpoint only under 100 %.
        let d = OutlierDetector::new(&addrs(1), all(90));
        fail(&d, 0, 500, 5);
        assert!(!d.is_ejected(0));
        let d = OutlierDetector::new(&addrs(1), all(100));
        fail(&d, 0, 500, 5);
        assert!(d.is_ejected(0));
        // Istio's default of 10 %: nine endpoints lose none, ten lose one.
        let d = OutlierDetector::new(&addrs(9), Settings::from_xds(&od()));
        fail(&d, 0, 500, 5);
        assert!(!d.is_ejected(0));
        let d = OutlierDetector::new(&addrs(10), Settings::from_xds(&od()));
        fail(&d, 0, 500, 5);
        fail(&d, 1, 500, 5);
        assert!(d.is_ejected(0));
        assert!(!d.is_ejected(1));
    }

    #[test]
    fn ejection_time_grows_and_decays_as_envoys() {
        // Envoy's EjectTimeBackoff test, base 10 s, sweeping every 10 s.
        let s = Settings {
            base_ejection: Duration::from_secs(10),
            ..all(100)
        };
        let d = OutlierDetector::new(&addrs(1), s);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let sweep = |secs: u64| d.sweep(at(secs));
        fail_at(&d, at(0), 0, 500, 5);
        sweep(10);
        assert!(!d.is_ejected(0), "first ejection lasts 10 s");
        fail_at(&d, at(10), 0, 500, 5);
        sweep(20);
        assert!(d.is_ejected(0), "second lasts 20 s");
        sweep(30);
        assert!(!d.is_ejected(0));
        fail_at(&d, at(30), 0, 500, 5);
        sweep(40);
        sweep(50);
        assert!(d.is_ejected(0), "third lasts 30 s");
        sweep(60);
        assert!(!d.is_ejected(0));
        assert_eq!(d.stats().ejections_active, 0);
        // Two sweeps in service lower the multiplier from 3 to 1; the next ejection is 2 × 10 s.
        sweep(70);
        sweep(80);
        fail_at(&d, at(80), 0, 500, 5);
        sweep(90);
        assert!(d.is_ejected(0));
        sweep(100);
        assert!(!d.is_ejected(0));
        // Long in service: back to the base.
        for i in 1..=50 {
            sweep(100 + i * 10);
        }
        fail_at(&d, at(610), 0, 500, 5);
        sweep(620);
        assert!(!d.is_ejected(0), "10 s again");
    }

    #[test]
    fn ejection_time_is_capped_by_max_ejection_time() {
        let s = Settings {
            base_ejection: Duration::from_secs(100),
            max_ejection: Duration::from_secs(300),
            ..all(100)
        };
        let d = OutlierDetector::new(&addrs(1), s);
        let t0 = Instant::now();
        // 100, 200, 300, then 300 s (not 400, 500).
        for (i, secs) in [100, 200, 300, 300, 300, 300].into_iter().enumerate() {
            let at = t0 + Duration::from_secs(1000 * i as u64);
            fail_at(&d, at, 0, 500, 5);
            assert!(d.is_ejected(0));
            d.sweep(at + Duration::from_secs(secs - 1));
            assert!(d.is_ejected(0), "ejection {i} lasts {secs} s");
            d.sweep(at + Duration::from_secs(secs));
            assert!(!d.is_ejected(0), "ejection {i} lasts {secs} s");
        }
        // The multiplier stops at (max + base) / base.
        assert_eq!(d.endpoints[0].backoff.load(Relaxed), 4);
    }

    #[test]
    fn an_unejected_endpoint_starts_its_run_afresh() {
        let d = OutlierDetector::new(&addrs(1), all(100));
        let t0 = Instant::now();
        fail_at(&d, t0, 0, 500, 5);
        // Failures while ejected (traffic in panic, or in flight) pile up past the threshold.
        fail(&d, 0, 500, 3);
        d.sweep(t0 + Duration::from_secs(30));
        assert!(!d.is_ejected(0));
        fail(&d, 0, 500, 4);
        assert!(!d.is_ejected(0));
        fail(&d, 0, 500, 1);
        assert!(d.is_ejected(0));
    }

    #[test]
    fn panic_below_min_health_percent() {
        let s = Settings {
            min_health_percent: 50,
            ..all(100)
        };
        let d = OutlierDetector::new(&addrs(4), s);
        fail(&d, 0, 500, 5);
        fail(&d, 1, 500, 5);
        // 2 of 4 healthy: 50 %, not below.
        assert!(!d.panic());
        assert!(!d.usable(0));
        assert!(d.usable(2));
        fail(&d, 2, 500, 5);
        assert!(d.panic());
        assert!(d.usable(0));
        // Istio's default threshold (0) never panics, even with all ejected.
        let d = OutlierDetector::new(&addrs(1), all(100));
        fail(&d, 0, 500, 5);
        assert!(!d.panic());
        assert!(!d.usable(0));
    }

    #[test]
    fn state_survives_a_rebuild_with_the_same_settings() {
        let a = addrs(3);
        let d = OutlierDetector::new(&a, all(100));
        let t0 = Instant::now();
        fail_at(&d, t0, 1, 500, 5);
        fail(&d, 2, 500, 3);
        // Endpoint 0 goes, one comes; the others keep their state, whatever their new index.
        let b = vec![a[2], SocketAddr::from(([10, 0, 0, 9], 8080)), a[1]];
        let r = d.rebuild(&b, all(100));
        assert_eq!(r.index_of(&a[1]), Some(2));
        assert!(r.is_ejected(2));
        assert!(!r.is_ejected(0));
        assert_eq!(r.stats().ejections_active, 1);
        assert_eq!(r.stats().ejections_enforced_total, 1);
        fail_at(&r, t0 + Duration::from_secs(20), 0, 500, 2);
        assert!(r.is_ejected(0), "the run of 3 went on");
        r.sweep(t0 + Duration::from_secs(29));
        assert!(r.is_ejected(2));
        r.sweep(t0 + Duration::from_secs(30));
        assert!(!r.is_ejected(2), "the ejection time carried over");
        assert!(r.is_ejected(0));
        // Other settings: a fresh start (counters carry on).
        let r2 = r.rebuild(&b, all(50));
        assert!(!r2.is_ejected(0));
        assert_eq!(r2.stats().ejections_active, 0);
        assert_eq!(r2.stats().ejections_enforced_total, 2);
    }

    #[test]
    fn grpc_statuses_map_as_envoys() {
        assert_eq!(grpc_to_http_status(0), 200);
        assert_eq!(grpc_to_http_status(14), 503);
        assert_eq!(grpc_to_http_status(4), 504);
        assert_eq!(grpc_to_http_status(13), 500);
        assert_eq!(grpc_to_http_status(8), 429);
        assert_eq!(grpc_to_http_status(99), 500);
    }
}
