//! Istio's Request Routing, Traffic Shifting and Mirroring tasks under `ama up`, with Istio's own
//! YAML (`tests/fixtures/traffic/`), plus VirtualServices of ours for the match and edit
//! features those tasks do not show (uri regex, method, rewrite, header set/add/remove). One
//! mesh: bookinfo (`versioned.py` answering as each version), the Mirroring task's httpbin v1/v2
//! (the real httpbin under gunicorn) and the `sleep` client. Scenarios, each asserting what the
//! client or the apps measured:
//!
//! 1. destination-rule-all + virtual-service-all-v1: 100 of 100 requests to reviews reach v1;
//! 2. virtual-service-reviews-test-v2: `end-user: jason` → v2 for 100 of 100, without it → v1
//!    for 100 of 100;
//! 3. virtual-service-reviews-80-20: v1 80 % ± 5 and v2 20 % ± 5 over 2,000 requests, no v3;
//! 4. the Traffic Shifting task's own steps: virtual-service-reviews-50-v3 gives v1 and v3 50 % ± 5
//!    each over 2,000 requests, then virtual-service-reviews-v3 sends 100 of 100 to v3;
//! 5. uri regex: `/regex/<digits>` → details, `/regex/abc` → productpage (20 each);
//! 6. method: POST → details, GET → productpage (20 each);
//! 7. rewrite: `/old/x` arrives as `/new/x` with authority `rewritten.example`;
//! 8. headers: the request arrives with the set and added headers and without the removed one;
//!    the response carries the set header and not the removed one;
//! 9. Mirroring: with the default route, v1's httpbin logs `GET /headers` and v2's nothing; with
//!    the mirror, v2's httpbin logs it too and v2's sidecar saw authority `httpbin-shadow:8000`
//!    (Envoy's `-shadow` suffix on the host, before the port).

#[path = "traffic/common.rs"]
mod common;

use common::{Traffic, percent, tally};
use e2e::{root_or_skip, venv_tool};
use std::time::Duration;

const TEST: &str = "istio_routing_tasks_under_ama_up";

#[test]
fn istio_routing_tasks_under_ama_up() {
    if !root_or_skip(TEST) {
        return;
    }
    let python = venv_tool(TEST, "python");
    venv_tool(TEST, "gunicorn");
    let mut t = Traffic::start(
        "rt",
        &python,
        &[
            "namespace.yaml",
            "bookinfo.yaml",
            "sleep.yaml",
            "mirroring-httpbin.yaml",
        ],
        9,
    );
    for url in [
        "http://reviews:9080/",
        "http://productpage:9080/",
        "http://details:9080/",
        "http://httpbin:8000/get",
    ] {
        t.wait_answers(url);
    }

    t.scenario(
        "request routing: destination-rule-all + virtual-service-all-v1 → reviews v1 for 100 of 100",
        |t| {
            t.apply("destination-rule-all.yaml", None);
            t.apply("virtual-service-all-v1.yaml", None);
            let answers = t.load("http://reviews:9080/all-v1", 100, 1, "GET", &[]);
            let versions = tally(&answers, |a| (a.status, a.version.clone()));
            assert_eq!(
                versions.get(&(200, Some("v1".into()))),
                Some(&100),
                "reviews with virtual-service-all-v1: (status, version) → count {versions:?}"
            );
            format!("{versions:?}")
        },
    );

    t.scenario(
        "request routing: virtual-service-reviews-test-v2 → jason to v2 (100/100), others to v1 (100/100)",
        |t| {
            t.apply("virtual-service-reviews-test-v2.yaml", None);
            let jason = t.load(
                "http://reviews:9080/test-v2-jason",
                100,
                1,
                "GET",
                &["end-user: jason"],
            );
            let others = t.load("http://reviews:9080/test-v2-other", 100, 1, "GET", &[]);
            let jason = tally(&jason, |a| (a.status, a.version.clone()));
            let others = tally(&others, |a| (a.status, a.version.clone()));
            let seen = format!(
                "(status, version) → count: with end-user: jason {jason:?}; without {others:?}"
            );
            assert_eq!(jason.get(&(200, Some("v2".into()))), Some(&100), "{seen}");
            assert_eq!(others.get(&(200, Some("v1".into()))), Some(&100), "{seen}");
            seen
        },
    );

    t.scenario(
        "traffic shifting: virtual-service-reviews-80-20 → 80/20 ± 5 % over 2,000 requests",
        |t| {
            t.apply("virtual-service-reviews-80-20.yaml", None);
            let answers = t.load("http://reviews:9080/80-20", 2000, 4, "GET", &[]);
            let versions = tally(&answers, |a| (a.status, a.version.clone()));
            let n = |v: &str| {
                versions
                    .get(&(200, Some(v.to_string())))
                    .copied()
                    .unwrap_or(0)
            };
            let (v1, v2) = (percent(n("v1"), 2000), percent(n("v2"), 2000));
            let seen = format!("v1 {v1:.1} %, v2 {v2:.1} % ({versions:?})");
            assert!((75.0..=85.0).contains(&v1), "v1 share: {seen}");
            assert!((15.0..=25.0).contains(&v2), "v2 share: {seen}");
            assert_eq!(
                n("v1") + n("v2"),
                2000,
                "every request 200 from v1 or v2: {seen}"
            );
            seen
        },
    );

    t.scenario(
        "traffic shifting (the task's steps): virtual-service-reviews-50-v3 → 50/50 ± 5 % over 2,000, then virtual-service-reviews-v3 → v3 for 100 of 100",
        |t| {
            t.apply("virtual-service-reviews-50-v3.yaml", None);
            let answers = t.load("http://reviews:9080/50-v3", 2000, 4, "GET", &[]);
            let half = tally(&answers, |a| (a.status, a.version.clone()));
            let n = |v: &str| half.get(&(200, Some(v.to_string()))).copied().unwrap_or(0);
            let (v1, v3) = (percent(n("v1"), 2000), percent(n("v3"), 2000));
            t.apply("virtual-service-reviews-v3.yaml", None);
            let all = t.load("http://reviews:9080/all-v3", 100, 1, "GET", &[]);
            let all = tally(&all, |a| (a.status, a.version.clone()));
            let seen = format!(
                "50-v3: v1 {v1:.1} %, v3 {v3:.1} % ({half:?}); reviews-v3: (status, version) → count {all:?}"
            );
            assert!((45.0..=55.0).contains(&v1), "v1 share: {seen}");
            assert!((45.0..=55.0).contains(&v3), "v3 share: {seen}");
            assert_eq!(n("v1") + n("v3"), 2000, "every request 200 from v1 or v3: {seen}");
            assert_eq!(all.get(&(200, Some("v3".into()))), Some(&100), "{seen}");
            seen
        },
    );

    t.scenario(
        "uri regex match: /regex/[0-9]+ → details, others → productpage",
        |t| {
            t.apply("ours-uri-regex.yaml", None);
            let digits = t.load("http://productpage:9080/regex/123", 20, 1, "GET", &[]);
            let letters = t.load("http://productpage:9080/regex/abc", 20, 1, "GET", &[]);
            let digits = tally(&digits, |a| (a.status, service_of(a.pod.as_deref())));
            let letters = tally(&letters, |a| (a.status, service_of(a.pod.as_deref())));
            let seen =
                format!("(status, service) → count: /regex/123 {digits:?}; /regex/abc {letters:?}");
            assert_eq!(digits.get(&(200, "details".into())), Some(&20), "{seen}");
            assert_eq!(
                letters.get(&(200, "productpage".into())),
                Some(&20),
                "{seen}"
            );
            seen
        },
    );

    t.scenario("method match: POST → details, GET → productpage", |t| {
        t.apply("ours-method.yaml", None);
        let post = t.load("http://productpage:9080/method", 20, 1, "POST", &[]);
        let get = t.load("http://productpage:9080/method", 20, 1, "GET", &[]);
        let post = tally(&post, |a| (a.status, service_of(a.pod.as_deref())));
        let get = tally(&get, |a| (a.status, service_of(a.pod.as_deref())));
        let seen = format!("(status, service) → count: POST {post:?}; GET {get:?}");
        assert_eq!(post.get(&(200, "details".into())), Some(&20), "{seen}");
        assert_eq!(get.get(&(200, "productpage".into())), Some(&20), "{seen}");
        seen
    });

    t.scenario(
        "rewrite: /old/x arrives as /new/x with authority rewritten.example",
        |t| {
            t.apply("ours-rewrite.yaml", None);
            let c = t.curl(&["http://productpage:9080/old/x?q=1"]);
            let other = t.curl(&["http://productpage:9080/kept/x"]);
            let seen = format!(
                "/old/x?q=1: status {}, path {}, authority {}; /kept/x: status {}, path {}",
                c.status, c.body["path"], c.body["authority"], other.status, other.body["path"]
            );
            assert_eq!(c.status, 200, "{seen}: {}", c.raw);
            assert_eq!(c.body["path"], "/new/x?q=1", "{seen}");
            assert_eq!(c.body["authority"], "rewritten.example", "{seen}");
            assert_eq!(
                other.body["path"], "/kept/x",
                "a path the match does not take: {seen}"
            );
            seen
        },
    );

    t.scenario(
        "headers: request set/add/remove seen by the app, response set/remove seen by the client",
        |t| {
            t.apply("ours-headers.yaml", None);
            let c = t.curl(&[
                "-H",
                "x-remove-me: please",
                "-H",
                "x-set-by-mesh: from-client",
                "http://productpage:9080/headers",
            ]);
            let got = &c.body["headers"];
            let seen = format!(
                "status {}; app saw x-set-by-mesh={} x-added-by-mesh={} x-remove-me={}; client saw x-response-set={:?} x-app-pod={:?}",
                c.status,
                got["x-set-by-mesh"],
                got["x-added-by-mesh"],
                got["x-remove-me"],
                c.headers.get("x-response-set"),
                c.headers.get("x-app-pod"),
            );
            assert_eq!(c.status, 200, "{seen}: {}", c.raw);
            assert_eq!(got["x-set-by-mesh"], "request-set", "set replaces: {seen}");
            assert_eq!(got["x-added-by-mesh"], "request-add", "{seen}");
            assert!(got.get("x-remove-me").is_none(), "removed: {seen}");
            assert_eq!(
                c.headers.get("x-response-set").map(String::as_str),
                Some("response-set"),
                "{seen}"
            );
            assert!(!c.headers.contains_key("x-app-pod"), "removed: {seen}");
            seen
        },
    );

    t.scenario(
        "mirroring: the Mirroring task's default route then mirror to v2 (-shadow authority)",
        |t| {
            let v1 = t.pod("httpbin-v1");
            let v2 = t.pod("httpbin-v2");
            let gets = |pod: &str| {
                t.mesh
                    .ok(&["logs", pod, "-c", "httpbin"])
                    .lines()
                    .filter(|l| l.contains("\"GET /headers HTTP/1.1\""))
                    .count()
            };
            t.apply("mirroring-default-route.yaml", None);
            let (v1_before, v2_before) = (gets(&v1), gets(&v2));
            let c = t.curl(&["http://httpbin:8000/headers"]);
            assert_eq!(
                c.status, 200,
                "curl http://httpbin:8000/headers with the default route: {} {}",
                c.status, c.raw
            );
            std::thread::sleep(Duration::from_secs(1));
            let (v1_after, v2_after) = (gets(&v1), gets(&v2));
            let default_seen = format!(
                "default route: v1 logged {} and v2 {} GET /headers",
                v1_after - v1_before,
                v2_after - v2_before
            );
            assert_eq!(
                (v1_after - v1_before, v2_after - v2_before),
                (1, 0),
                "{default_seen}"
            );

            t.apply("mirroring-mirror.yaml", None);
            let c = t.curl(&["http://httpbin:8000/headers"]);
            assert_eq!(
                c.status, 200,
                "curl http://httpbin:8000/headers with the mirror: {} {}",
                c.status, c.raw
            );
            // The mirror is fire and forget: its log line may come after the client's answer.
            let (mut v1_now, mut v2_now) = (gets(&v1), gets(&v2));
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while (v1_now == v1_after || v2_now == v2_after)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(200));
                (v1_now, v2_now) = (gets(&v1), gets(&v2));
            }
            let shadow: Vec<String> = t
                .access_log(&v2)
                .iter()
                .filter(|l| l["path"] == "/headers")
                .filter_map(|l| l["authority"].as_str().map(str::to_string))
                .collect();
            let seen = format!(
                "{default_seen}; with the mirror: v1 logged {} and v2 {} GET /headers, v2's sidecar saw authorities {shadow:?}",
                v1_now - v1_after,
                v2_now - v2_after
            );
            assert_eq!(v1_now - v1_after, 1, "{seen}");
            assert_eq!(v2_now - v2_after, 1, "the mirrored request: {seen}");
            assert!(
                shadow.iter().any(|a| a == "httpbin-shadow:8000"),
                "{seen}"
            );
            seen
        },
    );

    t.finish();
}

/// The bookinfo service a pod belongs to (`details-v1-…` → `details`).
fn service_of(pod: Option<&str>) -> String {
    pod.and_then(|p| p.split('-').next())
        .unwrap_or("none")
        .to_string()
}
