//! The Telemetry API's access logging and metrics under `ama up`, with the YAML of Istio's tasks
//! (`tests/fixtures/telemetry/`, unchanged): "Envoy Access Logs" and "Configure access logs with
//! Telemetry API" (the `envoy` provider mesh-wide, off for one workload, off on one side, a CEL
//! filter), "Customizing Istio Metrics" (labels added with CEL values) and "Customizing Istio
//! Metrics with Telemetry API" (a label removed, peer labels added, every metric disabled).
//!
//! One mesh (`sleep` → `httpbin`, two sidecars); each scenario applies or deletes Telemetry
//! objects with `ama apply` / `ama delete` and checks what the sidecars then write: the access
//! log lines each sidecar prints (Istio's TEXT format, found by a query string unique to the
//! scenario) and the series each sidecar exports on 15090.

#[path = "traffic/common.rs"]
mod common;

use std::time::Duration;

use common::Traffic;
use e2e::{root_or_skip, venv_tool, wait_for};

/// The TEXT access-log lines `pod`'s sidecar has printed whose request path contains `marker`.
fn log_lines(t: &Traffic, pod: &str, marker: &str) -> Vec<String> {
    t.mesh
        .ok(&["logs", pod, "-c", "istio-proxy"])
        .lines()
        .filter(|l| l.starts_with('[') && l.contains(marker))
        .map(str::to_string)
        .collect()
}

/// Waits (at most 15 s) until `pod`'s sidecar has logged a line containing `marker`.
fn wait_line(t: &Traffic, pod: &str, marker: &str) -> String {
    wait_for(
        &format!("{pod}'s sidecar to log a request with {marker}"),
        Duration::from_secs(15),
        || log_lines(t, pod, marker).into_iter().next(),
    )
}

/// `curl` from sleep to httpbin's `path`, expecting `status`.
fn call(t: &Traffic, path: &str, status: u16) {
    let c = t.curl(&[&format!("http://httpbin:8000{path}")]);
    assert_eq!(c.status, status, "GET {path}: {}", c.raw);
}

/// Gives a sidecar's access-log writer time to write a line that must not come: the lines of
/// one request are written within milliseconds of each other by both sidecars, and this check
/// runs after the line that must come has been seen.
fn settle() {
    std::thread::sleep(Duration::from_secs(2));
}

/// `pod`'s `istio_requests_total` samples with `reporter`, each as its label text.
fn request_series(t: &Traffic, pod: &str, reporter: &str) -> Vec<String> {
    t.in_pod(
        pod,
        &["curl", "-s", "http://127.0.0.1:15090/stats/prometheus"],
    )
    .lines()
    .filter(|l| l.starts_with("istio_requests_total{"))
    .filter(|l| l.contains(&format!("reporter=\"{reporter}\"")))
    .map(str::to_string)
    .collect()
}

/// The sum of `pod`'s `istio_requests_total` with `reporter`.
fn request_count(t: &Traffic, pod: &str, reporter: &str) -> f64 {
    request_series(t, pod, reporter)
        .iter()
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Applies a fixture of `tests/fixtures/telemetry/`.
fn apply(t: &Traffic, file: &str) {
    t.apply(&format!("telemetry/{file}"), None);
}

/// `pod`'s sidecar config version (admin `/config_dump`'s `version`).
fn config_version(t: &Traffic, pod: &str) -> String {
    let dump = t.in_pod(pod, &["curl", "-sf", "http://127.0.0.1:15000/config_dump"]);
    serde_json::from_str::<serde_json::Value>(&dump)
        .map(|d| d["version"].to_string())
        .unwrap_or_default()
}

/// Deletes the Telemetry `ns/name`, waiting for `pod`'s sidecar (one the Telemetry applies to)
/// to get the change.
fn delete(t: &Traffic, ns: &str, name: &str, pod: &str) {
    let before = config_version(t, pod);
    t.mesh.ok(&["delete", "telemetry", name, "-n", ns]);
    wait_for(
        &format!("{pod}'s sidecar to drop Telemetry {ns}/{name}"),
        Duration::from_secs(15),
        || (config_version(t, pod) != before).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(1));
}

#[test]
fn telemetry_api_access_logs_and_metrics_under_ama_up() {
    const TEST: &str = "telemetry_api_access_logs_and_metrics_under_ama_up";
    if !root_or_skip(TEST) {
        return;
    }
    let python = venv_tool(TEST, "python");
    let mut t = Traffic::start(
        "tel",
        &python,
        &["telemetry/mesh.yaml", "sleep.yaml", "httpbin.yaml"],
        2,
    );
    t.wait_answers("http://httpbin:8000/get");
    let httpbin = t.pod("httpbin");
    let sleep = t.client.clone();

    t.scenario("no Telemetry and no accessLogFile: no access log", |t| {
        call(t, "/status/418?s=none", 418);
        settle();
        assert_eq!(log_lines(t, &sleep, "s=none"), Vec::<String>::new());
        assert_eq!(log_lines(t, &httpbin, "s=none"), Vec::<String>::new());
        "neither sidecar logs".into()
    });

    t.scenario(
        "mesh-default: the envoy provider logs on both sidecars",
        |t| {
            apply(t, "mesh-default.yaml");
            call(t, "/status/418?s=mesh", 418);
            let client = wait_line(t, &sleep, "s=mesh");
            let server = wait_line(t, &httpbin, "s=mesh");
            // Istio's TEXT format, as the task shows it.
            for want in [
                "\"GET /status/418?s=mesh HTTP/1.1\" 418 - via_upstream - \"-\" 0 ",
                "\"httpbin:8000\"",
                " outbound|8000||httpbin.default.svc.cluster.local ",
                " default\n",
            ] {
                let want = want.trim_end_matches('\n');
                assert!(
                    client.contains(want),
                    "sleep's line lacks {want:?}: {client}"
                );
            }
            for want in [
                "\"GET /status/418?s=mesh HTTP/1.1\" 418 - via_upstream - \"-\" 0 ",
                // The inbound cluster names the pod's port (the fixture's httpbin listens on 8080).
                " inbound|8080|| ",
                " outbound_.8000_._.httpbin.default.svc.cluster.local ",
            ] {
                assert!(
                    server.contains(want),
                    "httpbin's line lacks {want:?}: {server}"
                );
            }
            assert!(client.starts_with("[20"), "{client}");
            format!("sleep: {client} | httpbin: {server}")
        },
    );

    t.scenario("disable-sleep-logging: sleep stops, httpbin goes on", |t| {
        apply(t, "disable-sleep-logging.yaml");
        call(t, "/status/418?s=nosleep", 418);
        wait_line(t, &httpbin, "s=nosleep");
        settle();
        assert_eq!(log_lines(t, &sleep, "s=nosleep"), Vec::<String>::new());
        "httpbin logged, sleep did not".into()
    });

    t.scenario(
        "disable-httpbin-logging (SERVER): httpbin's inbound stops",
        |t| {
            delete(t, "default", "disable-sleep-logging", &sleep);
            apply(t, "disable-httpbin-logging.yaml");
            call(t, "/status/418?s=noserver", 418);
            wait_line(t, &sleep, "s=noserver");
            settle();
            assert_eq!(log_lines(t, &httpbin, "s=noserver"), Vec::<String>::new());
            "sleep logged, httpbin's server side did not".into()
        },
    );

    t.scenario(
        "default-exception-logging: only what the CEL filter selects",
        |t| {
            delete(t, "default", "disable-httpbin-logging", &httpbin);
            delete(t, "istio-system", "mesh-default", &sleep);
            apply(t, "default-exception-logging.yaml");
            call(t, "/status/200?s=ok", 200);
            call(t, "/status/503?s=err", 503);
            let client = wait_line(t, &sleep, "s=err");
            wait_line(t, &httpbin, "s=err");
            settle();
            assert_eq!(log_lines(t, &sleep, "s=ok"), Vec::<String>::new());
            assert_eq!(log_lines(t, &httpbin, "s=ok"), Vec::<String>::new());
            assert!(client.contains("\" 503 "), "{client}");
            "503 logged, 200 not".into()
        },
    );

    t.scenario(
        "namespace-metrics: request_host and destination_port on istio_requests_total",
        |t| {
            delete(t, "istio-system", "default-exception-logging", &sleep);
            apply(t, "namespace-metrics.yaml");
            call(t, "/get?s=metrics", 200);
            let client = wait_for(
                "sleep's istio_requests_total with request_host",
                Duration::from_secs(15),
                || {
                    request_series(t, &sleep, "source")
                        .into_iter()
                        .find(|l| l.contains("request_host="))
                },
            );
            assert!(client.contains("request_host=\"httpbin:8000\""), "{client}");
            assert!(client.contains("destination_port=\"8000\""), "{client}");
            assert!(client.contains("grpc_response_status=\""), "{client}");
            let server = request_series(t, &httpbin, "destination")
                .into_iter()
                .find(|l| l.contains("request_host="))
                .expect("httpbin's series with request_host");
            // The server side sees the app's port.
            assert!(server.contains("destination_port=\"8080\""), "{server}");
            format!("client: {client}")
        },
    );

    t.scenario(
        "remove-tags and custom-tags: grpc_response_status gone, peer apps added",
        |t| {
            apply(t, "remove-tags.yaml");
            call(t, "/get?s=tags", 200);
            let client = wait_for(
                "sleep's istio_requests_total without grpc_response_status",
                Duration::from_secs(15),
                || {
                    request_series(t, &sleep, "source")
                        .into_iter()
                        .find(|l| !l.contains("grpc_response_status="))
                },
            );
            assert!(
                client.contains("request_host=\"httpbin:8000\""),
                "the namespace's overrides merge with the root's: {client}"
            );
            delete(t, "istio-system", "remove-tags", &sleep);
            apply(t, "custom-tags.yaml");
            call(t, "/get?s=peers", 200);
            let client = wait_for(
                "sleep's istio_requests_total with destination_x",
                Duration::from_secs(15),
                || {
                    request_series(t, &sleep, "source")
                        .into_iter()
                        .find(|l| l.contains("destination_x="))
                },
            );
            assert!(client.contains("destination_x=\"httpbin\""), "{client}");
            let server = wait_for(
                "httpbin's istio_requests_total with source_x",
                Duration::from_secs(15),
                || {
                    request_series(t, &httpbin, "destination")
                        .into_iter()
                        .find(|l| l.contains("source_x="))
                },
            );
            assert!(server.contains("source_x=\"sleep\""), "{server}");
            format!("client: {client} | server: {server}")
        },
    );

    t.scenario("remove-all-metrics: nothing more is counted", |t| {
        delete(t, "istio-system", "custom-tags", &sleep);
        delete(t, "default", "namespace-metrics", &sleep);
        apply(t, "remove-all-metrics.yaml");
        let (client, server) = (
            request_count(t, &sleep, "source"),
            request_count(t, &httpbin, "destination"),
        );
        for _ in 0..3 {
            call(t, "/get?s=off", 200);
        }
        settle();
        assert_eq!(request_count(t, &sleep, "source"), client);
        assert_eq!(request_count(t, &httpbin, "destination"), server);
        delete(t, "istio-system", "remove-all-metrics", &sleep);
        call(t, "/get?s=on", 200);
        wait_for(
            "sleep to count requests again",
            Duration::from_secs(15),
            || (request_count(t, &sleep, "source") > client).then_some(()),
        );
        format!("counts held at {client} (client) and {server} (server), then resumed")
    });

    t.finish();
}
