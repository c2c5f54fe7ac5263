//! Istio's Fault Injection and Request Timeouts tasks under `ama up`, with bookinfo's own
//! `virtual-service-ratings-test-delay.yaml` and `-test-abort.yaml` (`tests/fixtures/traffic/`),
//! plus VirtualServices of ours in the same style for a 50 % abort and for gRPC. One mesh:
//! bookinfo (`versioned.py` answering as each version), a gRPC echo server (grpcio) and the
//! `sleep` client. Scenarios, each asserting what the client measured and what the client's
//! sidecar logged:
//!
//! 1. ratings-test-delay: `end-user: jason` answers 200 after at least 7 s (the client's timing;
//!    no upper bound but curl's 60 s), with `DI` in the client sidecar's access log; a request
//!    without the header has no `DI`;
//! 2. ratings-test-abort: 100 of 100 requests of jason's get 500, each logged with `FI`; 20
//!    requests of others get 200;
//! 3. 50 % abort with 503 (ours): 503 for 50 % ± 5 of 1,000 requests, the rest 200; every 503
//!    logged with `FI`;
//! 4. the client sidecar's `istio_requests_total` (reporter source) counts those aborts with
//!    `response_flags="FI"`: 100 with code 500, and as many with 503 as the access log has;
//! 5. gRPC abort (ours, `grpcStatus: UNAVAILABLE`): a grpcio client sees `StatusCode.UNAVAILABLE`
//!    (and `OK` before the VirtualService is applied);
//! 6. gRPC delay (ours, 5 s): a grpcio client with a 1 s deadline sees `DEADLINE_EXCEEDED`;
//! 7. the Request Timeouts task, its YAML unchanged (virtual-service-all-v1, reviews → v2, a 2 s
//!    delay on ratings, then `timeout: 0.5s` on reviews), with the client calling reviews
//!    directly (reviews v2 calls ratings, as bookinfo's does): 200 from v2 after at least 2 s,
//!    then 504 with `UT`.

#[path = "traffic/common.rs"]
mod common;

use common::{Traffic, apps, codes, flags, percent, tally};
use e2e::{root_or_skip, venv_tool};
use serde_json::Value;

const TEST: &str = "istio_fault_injection_under_ama_up";

/// The grpcio client in the client pod: `grpc_echo.py call` with a deadline; its JSON line.
fn grpc_call(t: &Traffic, deadline: &str) -> Value {
    let script = apps().join("grpc_echo.py");
    let out = t.in_client(&[
        "env",
        "GRPC_DNS_RESOLVER=native",
        t.python.to_str().expect("utf-8 path"),
        script.to_str().expect("utf-8 path"),
        "call",
        "--target",
        "grpc-echo:50051",
        "--deadline",
        deadline,
    ]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("grpc client output ({e}): {out}"))
}

#[test]
fn istio_fault_injection_under_ama_up() {
    if !root_or_skip(TEST) {
        return;
    }
    let python = venv_tool(TEST, "python");
    let mut t = Traffic::start(
        "ft",
        &python,
        &[
            "namespace.yaml",
            "bookinfo.yaml",
            "sleep.yaml",
            "ours-grpc-echo.yaml",
        ],
        8,
    );
    t.wait_answers("http://ratings:9080/");
    t.apply("destination-rule-all.yaml", None);

    t.scenario(
        "fault injection: virtual-service-ratings-test-delay → jason delayed ≥ 7 s with DI",
        |t| {
            t.apply("virtual-service-ratings-test-delay.yaml", None);
            let jason = t.curl(&["-H", "end-user: jason", "http://ratings:9080/delay-jason"]);
            let other = t.curl(&["http://ratings:9080/delay-other"]);
            let jason_line = t.client_lines("/delay-jason", 1);
            let other_line = t.client_lines("/delay-other", 1);
            let seen = format!(
                "jason: {} after {:.2} s, flags {:?}; others: {} after {:.2} s, flags {:?}",
                jason.status,
                jason.seconds,
                flags(&jason_line),
                other.status,
                other.seconds,
                flags(&other_line)
            );
            assert_eq!(jason.status, 200, "{seen}");
            assert!(jason.seconds >= 7.0, "the 7 s delay: {seen}");
            assert_eq!(jason_line.len(), 1, "{seen}");
            assert!(
                jason_line[0]["response_flags"]
                    .as_str()
                    .is_some_and(|f| f.split(',').any(|f| f == "DI")),
                "DI in the client's access log: {seen}"
            );
            assert_eq!(other.status, 200, "{seen}");
            assert!(
                other_line
                    .iter()
                    .all(|l| !l["response_flags"].as_str().unwrap_or("").contains("DI")),
                "no DI for others: {seen}"
            );
            seen
        },
    );

    t.scenario(
        "fault injection: virtual-service-ratings-test-abort → 500 for 100 of 100 of jason's, FI",
        |t| {
            t.apply("virtual-service-ratings-test-abort.yaml", None);
            let jason = t.load(
                "http://ratings:9080/abort-jason",
                100,
                1,
                "GET",
                &["end-user: jason"],
            );
            let others = t.load("http://ratings:9080/abort-other", 20, 1, "GET", &[]);
            let jason = tally(&jason, |a| a.status);
            let others = tally(&others, |a| a.status);
            let lines = t.client_lines("/abort-jason", 100);
            let seen = format!(
                "jason: status → count {jason:?}, access log flags {:?} codes {:?}; others: {others:?}",
                flags(&lines),
                codes(&lines)
            );
            assert_eq!(jason.get(&500), Some(&100), "{seen}");
            assert_eq!(flags(&lines).get("FI"), Some(&100), "{seen}");
            assert_eq!(others.get(&200), Some(&20), "{seen}");
            seen
        },
    );

    t.scenario(
        "fault injection: 50 % abort with 503 (ours) → 50 ± 5 % of 1,000, FI",
        |t| {
            t.apply("ours-ratings-abort-50.yaml", None);
            let answers = t.load("http://ratings:9080/abort-half", 1000, 4, "GET", &[]);
            let statuses = tally(&answers, |a| a.status);
            let aborted = statuses.get(&503).copied().unwrap_or(0);
            let ok = statuses.get(&200).copied().unwrap_or(0);
            let lines = t.client_lines("/abort-half", 1000);
            let fi = lines
                .iter()
                .filter(|l| l["response_flags"] == "FI" && l["response_code"] == "503")
                .count();
            let seen = format!(
                "503 for {:.1} % (status → count {statuses:?}); access log flags {:?}",
                percent(aborted, 1000),
                flags(&lines)
            );
            assert!((45.0..=55.0).contains(&percent(aborted, 1000)), "{seen}");
            assert_eq!(aborted + ok, 1000, "only 503 and 200: {seen}");
            assert_eq!(fi, aborted, "every 503 logged with FI: {seen}");
            seen
        },
    );

    t.scenario(
        "istio_requests_total counts the injected aborts with response_flags FI (client sidecar, reporter source)",
        |t| {
            let text = t.in_client(&["curl", "-s", "http://127.0.0.1:15020/stats/prometheus"]);
            let fi_500 = requests_total(&text, &[("response_code", "500"), ("response_flags", "FI")]);
            let fi_503 = requests_total(&text, &[("response_code", "503"), ("response_flags", "FI")]);
            let aborted = t
                .client_lines("/abort-half", 1000)
                .iter()
                .filter(|l| l["response_flags"] == "FI")
                .count();
            let seen = format!(
                "istio_requests_total{{reporter=source,response_flags=FI}}: code 500 {fi_500}, \
                 code 503 {fi_503}; the access log has 100 jason aborts (500) and {aborted} of 1,000 (503)"
            );
            assert_eq!(fi_500, 100.0, "{seen}");
            assert_eq!(fi_503, aborted as f64, "{seen}");
            seen
        },
    );

    t.scenario(
        "gRPC abort: grpcStatus UNAVAILABLE (ours) → grpcio sees StatusCode.UNAVAILABLE",
        |t| {
            let before = grpc_call(t, "10");
            assert_eq!(
                before["code"], "OK",
                "without a VirtualService the call works: {before}"
            );
            t.apply("ours-grpc-abort.yaml", None);
            let after = grpc_call(t, "10");
            let seen = format!("before: {before}; with the abort: {after}");
            assert_eq!(after["code"], "UNAVAILABLE", "{seen}");
            seen
        },
    );

    t.scenario(
        "gRPC delay: fixedDelay 5 s (ours), client deadline 1 s → DEADLINE_EXCEEDED",
        |t| {
            t.apply("ours-grpc-delay.yaml", None);
            let call = grpc_call(t, "1");
            let seen = format!("{call}");
            assert_eq!(call["code"], "DEADLINE_EXCEEDED", "{seen}");
            seen
        },
    );

    t.scenario(
        "Request Timeouts task: reviews v2 → ratings delayed 2 s answers after ≥ 2 s; with timeout 0.5 s on reviews → 504 UT",
        |t| {
            t.apply("virtual-service-all-v1.yaml", None);
            t.apply("request-timeouts-reviews-v2.yaml", None);
            t.apply("request-timeouts-ratings-delay.yaml", None);
            let slow = t.curl(&["http://reviews:9080/chain-delayed"]);
            t.apply("request-timeouts-reviews-timeout.yaml", None);
            let cut = t.curl(&["http://reviews:9080/chain-timeout"]);
            let lines = t.client_lines("/chain-timeout", 1);
            let seen = format!(
                "with the delay: {} after {:.2} s from {} (ratings call: {}); with the timeout: {} \
                 after {:.2} s, access log flags {:?}",
                slow.status,
                slow.seconds,
                slow.body["version"],
                slow.body["called"],
                cut.status,
                cut.seconds,
                flags(&lines)
            );
            assert_eq!(slow.status, 200, "{seen}");
            assert_eq!(slow.body["version"], "v2", "{seen}");
            assert_eq!(slow.body["called"]["status"], 200, "ratings answered: {seen}");
            assert!(slow.seconds >= 2.0, "the 2 s delay on ratings: {seen}");
            assert_eq!(cut.status, 504, "{seen}");
            assert_eq!(flags(&lines).get("UT"), Some(&1), "{seen}");
            seen
        },
    );

    t.finish();
}

/// The sum of `istio_requests_total` samples reported by the source with all of `labels`, from
/// a Prometheus text page.
fn requests_total(text: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| l.contains("reporter=\"source\""))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
