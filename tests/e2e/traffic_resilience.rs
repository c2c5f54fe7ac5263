//! Retries, per-try timeouts, outlier detection and Istio's Circuit Breaking task under `ama up`.
//! The Circuit Breaking task's httpbin (`samples/httpbin/httpbin.yaml`, run by ama's built-in
//! httpbin) and DestinationRule are Istio's, unchanged; the retry VirtualServices and the
//! outlier-detection DestinationRule are ours, in the same style, on backends of
//! `tests/fixtures/apps/versioned.py` (`ours-resilience-apps.yaml`). One mesh; scenarios:
//!
//! 1. retries (attempts 3, retryOn 5xx) on a backend that answers 503 to every other request:
//!    ≥ 99 % of 200 requests succeed; every request id whose first attempt got 503 reached the
//!    backend again with `x-envoy-attempt-count: 2`; and the client sidecar's admin `/stats` counts them: `upstream_rq_retry` equals the retried
//!    attempts the backend saw, `upstream_rq_retry_success` those of them answered 200;
//! 2. route timeout 0.5 s (as in the Request Timeouts task) on a backend answering after 2 s: 504
//!    with `UT`, one attempt;
//! 3. perTryTimeout 0.5 s, attempts 2, on a backend answering after 2 s: the client gets 504
//!    (flag `UT`), and the backend saw 3 attempts of the one request (attempt counts 1, 2, 3);
//! 4. outlier detection (consecutive5xxErrors 1, interval 1 s, baseEjectionTime 10 s): one of two
//!    replicas switched to answer 503 is ejected within 5 s (polled): the client sidecar's admin
//!    `/clusters` shows the endpoint with `health_flags::/failed_outlier_check` and its `/stats`
//!    `outlier_detection.ejections_active` 1, the next 50 requests all reach the healthy one
//!    (200), and after baseEjectionTime the replica gets requests again;
//! 5. circuit breaking (the task's DestinationRule: maxConnections 1, http1MaxPendingRequests 1,
//!    maxRequestsPerConnection 1): the task's burst (3 connections, 30 requests to `/get`) and
//!    one that holds its connections (4 connections, 20 requests to `/delay/1`) give some 503,
//!    every 503 logged with `UO`, and `upstream_rq_pending_overflow` above 0 on the client
//!    sidecar's admin `/stats`.

#[path = "traffic/common.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Traffic, codes, flags, percent, tally};
use e2e::{root_or_skip, venv_tool};
use serde_json::Value;

const TEST: &str = "retries_outliers_and_circuit_breaking_under_ama_up";

/// The `x-envoy-attempt-count` header a backend saw (0 without one).
fn attempt(line: &Value) -> u64 {
    line["headers"]["x-envoy-attempt-count"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn retries_outliers_and_circuit_breaking_under_ama_up() {
    if !root_or_skip(TEST) {
        return;
    }
    let python = venv_tool(TEST, "python");
    let mut t = Traffic::start(
        "rs",
        &python,
        &[
            "namespace.yaml",
            "sleep.yaml",
            "httpbin.yaml",
            "ours-resilience-apps.yaml",
        ],
        6,
    );
    for url in [
        "http://slow:9080/",
        "http://outlier:9080/",
        "http://httpbin:8000/get",
    ] {
        t.wait_answers(url);
    }

    t.scenario(
        "retries: attempts 3 on 5xx turn a backend failing every other request into ≥ 99 % success, x-envoy-attempt-count 2",
        |t| {
            t.apply("ours-retries.yaml", None);
            let answers = t.load("http://flaky:9080/retry", 200, 1, "GET", &[]);
            let statuses = tally(&answers, |a| a.status);
            let ok = statuses.get(&200).copied().unwrap_or(0);
            let backend = t.pod("flaky");
            let seen_by_backend = t.app_requests(&backend, "flaky", "/retry");
            let mut by_id: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
            for l in &seen_by_backend {
                let id = l["headers"]["x-request-id"].as_str().unwrap_or("-").to_string();
                by_id
                    .entry(id)
                    .or_default()
                    .push((attempt(l), l["code"].as_u64().unwrap_or(0)));
            }
            let failed_first: Vec<&String> = by_id
                .iter()
                .filter(|(_, a)| a.first().is_some_and(|(_, code)| *code == 503))
                .map(|(id, _)| id)
                .collect();
            let retried = failed_first
                .iter()
                .filter(|id| by_id[**id].iter().any(|(n, _)| *n == 2))
                .count();
            let attempts = tally_attempts(&seen_by_backend);
            let retry_stat = t
                .admin("/stats?filter=flaky.default.svc.cluster.local.upstream_rq_retry")
                .trim()
                .to_string();
            let seen = format!(
                "client: {:.1} % success (status → count {statuses:?}); backend: {} attempts \
                 (x-envoy-attempt-count → count {attempts:?}), {} first attempts got 503, {retried} \
                 of them were retried with x-envoy-attempt-count 2; stats: {retry_stat:?}",
                percent(ok, 200),
                seen_by_backend.len(),
                failed_first.len(),
            );
            assert!(percent(ok, 200) >= 99.0, "{seen}");
            assert!(!failed_first.is_empty(), "the backend failed no request: {seen}");
            assert_eq!(retried, failed_first.len(), "{seen}");
            seen
        },
    );

    t.scenario(
        "retries: admin /stats counts them as Envoy does (upstream_rq_retry, upstream_rq_retry_success)",
        |t| {
            let seen_by_backend = t.app_requests(&t.pod("flaky"), "flaky", "/retry");
            let retried: Vec<&Value> = seen_by_backend.iter().filter(|l| attempt(l) >= 2).collect();
            let succeeded = retried.iter().filter(|l| l["code"] == 200).count();
            let stats = t.admin("/stats?filter=flaky.default.svc.cluster.local.upstream_rq_retry");
            let stat = |name: &str| -> Option<u64> {
                stats
                    .lines()
                    .find(|l| l.contains(&format!(".{name}: ")))
                    .and_then(|l| l.rsplit(": ").next()?.trim().parse().ok())
            };
            let (retry, success) = (stat("upstream_rq_retry"), stat("upstream_rq_retry_success"));
            let seen = format!(
                "the backend saw {} retried attempts, {succeeded} of them answered 200; \
                 /stats upstream_rq_retry {retry:?}, upstream_rq_retry_success {success:?}",
                retried.len()
            );
            assert_eq!(retry, Some(retried.len() as u64), "{seen}");
            assert_eq!(success, Some(succeeded as u64), "{seen}");
            seen
        },
    );

    t.scenario(
        "request timeout (Request Timeouts task's style, timeout 0.5 s) on a backend taking 2 s → 504 UT, one attempt",
        |t| {
            t.apply("ours-request-timeout.yaml", None);
            let c = t.curl(&["http://slow:9080/delay/2?timeout"]);
            std::thread::sleep(Duration::from_secs(3));
            let seen_by_backend = t.app_requests(&t.pod("slow"), "slow", "/delay/2?timeout");
            let lines = t.client_lines("/delay/2?timeout", 1);
            let seen = format!(
                "client: {} after {:.2} s, access log flags {:?}; backend saw {} attempt(s)",
                c.status,
                c.seconds,
                flags(&lines),
                seen_by_backend.len()
            );
            assert_eq!(c.status, 504, "{seen}");
            assert_eq!(flags(&lines).get("UT"), Some(&1), "{seen}");
            assert_eq!(seen_by_backend.len(), 1, "a timeout is not retried: {seen}");
            seen
        },
    );

    t.scenario(
        "perTryTimeout 0.5 s, attempts 2, backend taking 2 s → 504 UT after 3 attempts",
        |t| {
            t.apply("ours-per-try-timeout.yaml", None);
            let c = t.curl(&["http://slow:9080/delay/2?pertry"]);
            let backend = t.pod("slow");
            let mut seen_by_backend = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            // The backend logs each attempt when its 2 s are over.
            while Instant::now() < deadline {
                seen_by_backend = t.app_requests(&backend, "slow", "/delay/2?pertry");
                if seen_by_backend.len() >= 3 {
                    std::thread::sleep(Duration::from_secs(1));
                    seen_by_backend = t.app_requests(&backend, "slow", "/delay/2?pertry");
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            let ids: std::collections::BTreeSet<&str> = seen_by_backend
                .iter()
                .filter_map(|l| l["headers"]["x-request-id"].as_str())
                .collect();
            let mut attempts: Vec<u64> = seen_by_backend.iter().map(attempt).collect();
            attempts.sort();
            let lines = t.client_lines("/delay/2?pertry", 1);
            let seen = format!(
                "client: {} after {:.2} s, access log flags {:?}; backend saw {} attempts \
                 (x-envoy-attempt-count {attempts:?}) of {} request id(s)",
                c.status,
                c.seconds,
                flags(&lines),
                seen_by_backend.len(),
                ids.len()
            );
            assert_eq!(c.status, 504, "{seen}");
            assert_eq!(attempts, [1, 2, 3], "{seen}");
            assert_eq!(ids.len(), 1, "one request: {seen}");
            assert!(
                lines.iter().any(|l| l["response_flags"]
                    .as_str()
                    .is_some_and(|f| f.contains("UT"))),
                "{seen}"
            );
            seen
        },
    );

    t.scenario(
        "outlier detection: a replica answering 503 is ejected (/clusters failed_outlier_check), traffic moves, and it is back after baseEjectionTime",
        |t| {
            t.apply("ours-outlier-detection.yaml", None);
            let replicas = t.pods_of("outlier-");
            assert_eq!(replicas.len(), 2, "{replicas:?}");
            let (bad, good) = (&replicas[0], &replicas[1]);
            let bad_addr = format!("{}:9080", t.ips[bad]);
            t.in_pod(bad, &["curl", "-s", "http://127.0.0.1:9080/admin/mode/fail"]);

            let first = t.load("http://outlier:9080/od-first", 20, 1, "GET", &[]);
            let first = tally(&first, |a| (a.status, a.pod.clone()));
            let bad_first = t.app_requests(bad, "outlier", "/od-first").len();
            // Ejected within `interval` (1 s): polled for at most 5 s, well inside the 10 s
            // baseEjectionTime.
            let ejected_by = Instant::now() + Duration::from_secs(5);
            let flagged = loop {
                let clusters = t.admin("/clusters");
                let flagged: Vec<String> = clusters
                    .lines()
                    .filter(|l| l.contains(&bad_addr) && l.contains("::health_flags::"))
                    .map(str::to_string)
                    .collect();
                let ejected = flagged
                    .iter()
                    .any(|l| l.ends_with("::health_flags::/failed_outlier_check"));
                if ejected || Instant::now() >= ejected_by {
                    break flagged;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            let ejected_at = Instant::now();
            let ejections = t.admin(
                "/stats?filter=outlier.default.svc.cluster.local.outlier_detection.ejections_active",
            );
            let active: Option<u64> = ejections
                .lines()
                .find(|l| l.contains(".outlier_detection.ejections_active: "))
                .and_then(|l| l.rsplit(": ").next()?.trim().parse().ok());
            let then = t.load("http://outlier:9080/od-then", 50, 1, "GET", &[]);
            let then = tally(&then, |a| (a.status, a.pod.clone()));
            let bad_then = t.app_requests(bad, "outlier", "/od-then").len();
            let seen = format!(
                "first 20: (status, pod) → count {first:?}, {bad_first} reached {bad}; \
                 /clusters for {bad_addr}: {flagged:?}; /stats ejections_active {active:?}; \
                 next 50: {then:?}, {bad_then} reached {bad}"
            );
            assert!(bad_first >= 1, "the failing replica got some of the first requests: {seen}");
            assert!(
                flagged
                    .iter()
                    .any(|l| l.ends_with("::health_flags::/failed_outlier_check")),
                "{seen}"
            );
            assert_eq!(active, Some(1), "outlier_detection.ejections_active: {seen}");
            assert_eq!(bad_then, 0, "nothing reaches the ejected replica: {seen}");
            assert_eq!(
                then.get(&(200, Some(good.clone()))),
                Some(&50),
                "all to the healthy replica: {seen}"
            );

            // Back after baseEjectionTime (10 s): requests reach it again (bounded wait).
            let deadline = Instant::now() + Duration::from_secs(40);
            let mut back = 0;
            while back == 0 && Instant::now() < deadline {
                t.load("http://outlier:9080/od-back", 5, 1, "GET", &[]);
                back = t.app_requests(bad, "outlier", "/od-back").len();
                if back == 0 {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            let back_after = ejected_at.elapsed();
            t.in_pod(bad, &["curl", "-s", "http://127.0.0.1:9080/admin/mode/ok"]);
            let seen = format!(
                "{seen}; after ejection the replica got requests again {back_after:.1?} later ({back} requests)"
            );
            assert!(back > 0, "the replica never came back: {seen}");
            seen
        },
    );

    t.scenario(
        "circuit breaking: the task's DestinationRule → 503 UO under a concurrent burst, upstream_rq_pending_overflow",
        |t| {
            t.apply("circuit-breaking-destination-rule.yaml", None);
            let single = t.curl(&["http://httpbin:8000/get"]);
            assert_eq!(single.status, 200, "one request goes through: {}", single.raw);
            let task = t.load("http://httpbin:8000/get", 30, 3, "GET", &[]);
            let held = t.load("http://httpbin:8000/delay/1", 20, 4, "GET", &[]);
            let task = tally(&task, |a| a.status);
            let held = tally(&held, |a| a.status);
            let mut lines = t.client_lines("/get", 31);
            lines.extend(t.client_lines("/delay/1", 20));
            let overflowed: Vec<&Value> =
                lines.iter().filter(|l| l["response_code"] == "503").collect();
            let uo = overflowed
                .iter()
                .filter(|l| l["response_flags"] == "UO")
                .count();
            let stats = t.admin("/stats?filter=httpbin.default.svc.cluster.local.upstream_rq_pending");
            let overflow: u64 = stats
                .lines()
                .filter(|l| l.contains("upstream_rq_pending_overflow"))
                .filter_map(|l| l.rsplit(':').next()?.trim().parse::<u64>().ok())
                .sum();
            let seen = format!(
                "task's burst (-c 3 -n 30 /get): status → count {task:?} ({:.1} % 503); \
                 held burst (-c 4 -n 20 /delay/1): {held:?}; access log codes {:?} flags {:?}; \
                 stats: {:?}",
                percent(task.get(&503).copied().unwrap_or(0), 30),
                codes(&lines),
                flags(&lines),
                stats.trim()
            );
            let total_503 = task.get(&503).unwrap_or(&0) + held.get(&503).unwrap_or(&0);
            assert!(total_503 > 0, "no 503: {seen}");
            assert!(
                task.get(&200).unwrap_or(&0) + held.get(&200).unwrap_or(&0) > 0,
                "no 200: {seen}"
            );
            assert_eq!(uo, overflowed.len(), "every 503 flagged UO: {seen}");
            assert!(overflow > 0, "upstream_rq_pending_overflow: {seen}");
            seen
        },
    );

    t.finish();
}

/// How many attempts a backend saw of each `x-envoy-attempt-count`.
fn tally_attempts(lines: &[Value]) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for l in lines {
        *out.entry(attempt(l)).or_insert(0) += 1;
    }
    out
}
