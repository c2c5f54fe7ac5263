//! Distributed tracing under `ama up`, configured both ways Istio's tasks do it:
//!
//! 1. MeshConfig `defaultConfig.tracing` (`sampling: 100`, `zipkin.address`, a literal custom
//!    tag), the collector a pod outside the mesh named by `ama up`'s DNS;
//! 2. the Telemetry API: MeshConfig `extensionProviders` (zipkin at
//!    `zipkin.istio-system.svc.cluster.local:9411`, a Service as Istio's addon) and the task's
//!    mesh-wide Telemetry in `istio-system` choosing it with `randomSamplingPercentage: 100`.
//!
//! Each: `curl` from `sleep` to `httpbin` through two sidecars, and a Zipkin collector
//! (`tests/fixtures/apps/zipkin_collector.py`) that receives the sidecars' v2 JSON spans. One
//! request's two spans are found by its `x-request-id` and checked: one trace, the client span
//! (sleep's sidecar, CLIENT) the parent of the server span (httpbin's sidecar, SERVER), which is
//! what the app saw as its parent; Istio's names and tags.

#[path = "traffic/common.rs"]
mod common;

use std::time::Duration;

use common::Traffic;
use e2e::{root_or_skip, venv_tool, wait_for};
use serde_json::Value;

/// The spans the collector (pod `collector` in `ns`) has printed whose `guid:x-request-id`
/// tag is `id`.
fn spans_of(t: &Traffic, ns: &str, collector: &str, id: &str) -> Vec<Value> {
    let out = t.mesh.ok(&["logs", "-n", ns, collector, "-c", "zipkin"]);
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|l| l["span"].clone())
        .filter(|s| s["tags"]["guid:x-request-id"] == id)
        .collect()
}

fn tag<'a>(span: &'a Value, k: &str) -> &'a str {
    span["tags"][k]
        .as_str()
        .unwrap_or_else(|| panic!("tag {k} missing in {span}"))
}

#[test]
fn tracing_spans_reach_zipkin_under_ama_up() {
    const TEST: &str = "tracing_spans_reach_zipkin_under_ama_up";
    if !root_or_skip(TEST) {
        return;
    }
    let python = venv_tool(TEST, "python");
    let t = Traffic::start(
        "trc",
        &python,
        &[
            "tracing/mesh.yaml",
            "tracing/zipkin.yaml",
            "sleep.yaml",
            "httpbin.yaml",
        ],
        3,
    );
    one_request_two_spans(&t, "observability");
    t.finish();
}

#[test]
fn telemetry_api_tracing_under_ama_up() {
    const TEST: &str = "telemetry_api_tracing_under_ama_up";
    if !root_or_skip(TEST) {
        return;
    }
    let python = venv_tool(TEST, "python");
    let t = Traffic::start(
        "trt",
        &python,
        &[
            "tracing/telemetry-mesh.yaml",
            "tracing/zipkin-service.yaml",
            "tracing/telemetry.yaml",
            "sleep.yaml",
            "httpbin.yaml",
        ],
        3,
    );
    one_request_two_spans(&t, "istio-system");
    t.finish();
}

/// `curl` sleep → httpbin, then the request's client and server spans at the collector in
/// `ns`.
fn one_request_two_spans(t: &Traffic, ns: &str) {
    t.wait_answers("http://httpbin:8000/get");
    let collector = t.pod("zipkin");

    let id = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736";
    let curl = t.curl(&[
        "-H",
        &format!("x-request-id: {id}"),
        "http://httpbin:8000/headers",
    ]);
    assert_eq!(curl.status, 200, "{}", curl.raw);
    let seen = &curl.body["headers"];
    let header = |k: &str| {
        seen[k]
            .as_str()
            .or_else(|| seen[k][0].as_str())
            .unwrap_or_else(|| panic!("{k} missing in {seen}"))
            .to_string()
    };
    assert_eq!(header("X-B3-Sampled"), "1", "sampling: 100 samples: {seen}");

    // Both sidecars flush within their interval (5 s, as Envoy's Zipkin tracer).
    let spans = wait_for(
        "the request's client and server spans at the collector",
        Duration::from_secs(30),
        || {
            let s = spans_of(t, ns, &collector, id);
            (s.len() >= 2).then_some(s)
        },
    );
    assert_eq!(spans.len(), 2, "{spans:?}");
    let kind = |k: &str| {
        spans
            .iter()
            .find(|s| s["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} span: {spans:?}"))
            .clone()
    };
    let (c, s) = (kind("CLIENT"), kind("SERVER"));
    assert_eq!(c["traceId"], s["traceId"]);
    assert_eq!(c["traceId"].as_str(), Some(header("X-B3-Traceid").as_str()));
    assert!(c.get("parentId").is_none(), "curl started the trace: {c}");
    assert_eq!(s["parentId"], c["id"]);
    assert_eq!(s["id"].as_str(), Some(header("X-B3-Spanid").as_str()));
    for span in [&c, &s] {
        assert_eq!(
            span["name"], "httpbin.default.svc.cluster.local:8000/*",
            "{span}"
        );
        assert_eq!(tag(span, "http.method"), "GET");
        assert_eq!(tag(span, "http.status_code"), "200");
        assert_eq!(tag(span, "http.url"), "http://httpbin:8000/headers");
        assert_eq!(tag(span, "istio.namespace"), "default");
        assert_eq!(tag(span, "istio.mesh_id"), "cluster.local");
        assert_eq!(tag(span, "component"), "proxy");
        assert_eq!(tag(span, "test.literal"), "ama");
        assert!(tag(span, "node_id").starts_with("sidecar~"), "{span}");
    }
    assert_eq!(c["localEndpoint"]["serviceName"], "sleep.default");
    assert_eq!(s["localEndpoint"]["serviceName"], "httpbin.default");
    assert_eq!(tag(&c, "istio.canonical_service"), "sleep");
    assert_eq!(tag(&s, "istio.canonical_service"), "httpbin");
    assert_eq!(
        tag(&c, "upstream_cluster"),
        "outbound|8000||httpbin.default.svc.cluster.local"
    );
    assert!(
        tag(&s, "upstream_cluster").starts_with("inbound|8080|"),
        "{s}"
    );
}
