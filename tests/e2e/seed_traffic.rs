//! The seed's traffic, end to end, in network namespaces: an `ubuntu` pod runs
//! `curl -sv http://httpbin-service/headers` to a Service with two replicas of the real httpbin
//! (PyPI `httpbin` under gunicorn). Every pod has `ama iptables` and an `ama proxy sidecar` running
//! as uid 1337, exactly where Istio puts istio-init and Envoy. Resources come from a file, as they
//! will from `ama discovery` later.
//!
//! Checks: the response and the headers httpbin sees; both sidecars' JSON access-log lines (all 24
//! fields, addresses, clusters, the shared request id); requests spread over both replicas;
//! `/stats/prometheus` parsed by Python's `prometheus_client` counts them with Istio's labels.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::sidecar::{HTTPBIN_FQDN, HTTPBIN_VIP, start_httpbin, start_sidecar};
use e2e::{Lan, Pod, Proc, Scratch, root_or_skip, venv_tool, wait_for};
use serde_json::Value;

const VIP: Ipv4Addr = HTTPBIN_VIP;
const FQDN: &str = HTTPBIN_FQDN;

/// Istio's 24 access-log fields.
const FIELDS: [&str; 24] = [
    "authority",
    "bytes_received",
    "bytes_sent",
    "connection_termination_details",
    "downstream_local_address",
    "downstream_remote_address",
    "duration",
    "method",
    "path",
    "protocol",
    "request_id",
    "requested_server_name",
    "response_code",
    "response_code_details",
    "response_flags",
    "route_name",
    "start_time",
    "upstream_cluster",
    "upstream_host",
    "upstream_local_address",
    "upstream_service_time",
    "upstream_transport_failure_reason",
    "user_agent",
    "x_forwarded_for",
];

/// The resources every sidecar reads: three workloads and the Service in front of httpbin.
fn resources(client: &Pod, httpbins: &[&Pod]) -> String {
    let workload = |name: &str, app: &str, ip: Ipv4Addr| {
        serde_json::json!({
            "uid": format!("Kubernetes//Pod/default/{name}"),
            "name": name,
            "namespace": "default",
            "addresses": [ip.to_string()],
            "serviceAccount": "default",
            "labels": {"app": app, "security.istio.io/tlsMode": "istio"},
            "workloadName": format!("{app}-deployment"),
            "ports": if app == "httpbin" { serde_json::json!([{"port": 80}]) } else { serde_json::json!([]) },
        })
    };
    let mut workloads = vec![workload("ubuntu-0", "ubuntu", client.ip)];
    let mut endpoints = Vec::new();
    for (i, pod) in httpbins.iter().enumerate() {
        let name = format!("httpbin-{i}");
        workloads.push(workload(&name, "httpbin", pod.ip));
        endpoints.push(serde_json::json!({
            "address": pod.ip.to_string(),
            "workloadUid": format!("Kubernetes//Pod/default/{name}"),
            "labels": {"app": "httpbin"},
            "tlsMode": "istio",
        }));
    }
    serde_json::json!({
        "workloads": workloads,
        "services": [{
            "hostname": FQDN,
            "name": "httpbin-service",
            "namespace": "default",
            "vips": [VIP.to_string()],
            "ports": [{"name": "http", "port": 80, "targetPort": 80}],
            "endpoints": endpoints,
        }],
    })
    .to_string()
}

/// The JSON access-log lines a sidecar has written so far.
fn access_log(proxy: &Proc) -> Vec<Value> {
    proxy
        .out()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn field<'a>(line: &'a Value, name: &str) -> &'a str {
    line[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a string in {line}"))
}

/// Parses a sidecar's `/stats/prometheus` with Python's prometheus_client, as Prometheus would,
/// and returns the samples of `istio_requests_total` as label maps with their values.
fn requests_total(pod: &Pod, python: &Path) -> Vec<(BTreeMap<String, String>, f64)> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        if s.name == "istio_requests_total":
            out.append([s.labels, s.value])
print(json.dumps(out))
"#;
    let text = pod
        .ns
        .sh("curl -sf http://127.0.0.1:15020/stats/prometheus");
    let mut parse = Command::new(python);
    parse.args(["-c", script]);
    let parsed = run_with_stdin(parse, &text.stdout);
    serde_json::from_slice(&parsed).expect("parser output is JSON")
}

fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /stats/prometheus: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn count(samples: &[(BTreeMap<String, String>, f64)], want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(labels, _)| {
            want.iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn curl_to_httpbin_through_two_sidecars() {
    const TEST: &str = "curl_to_httpbin_through_two_sidecars";
    if !root_or_skip(TEST) {
        return;
    }
    let (gunicorn, python) = (venv_tool(TEST, "gunicorn"), venv_tool(TEST, "python"));
    let scratch = Scratch::new("seed");
    let dir = scratch.path();
    let mut lan = Lan::new();
    let ubuntu = lan.pod("ubuntu");
    let httpbin0 = lan.pod("httpbin0");
    let httpbin1 = lan.pod("httpbin1");
    ubuntu
        .ns
        .set_hosts(&format!("{VIP} httpbin-service {FQDN}\n"));

    let config = dir.join("resources.json");
    std::fs::write(&config, resources(&ubuntu, &[&httpbin0, &httpbin1])).unwrap();
    let source = [std::ffi::OsStr::new("--config"), config.as_os_str()];

    let _apps = [
        start_httpbin(&httpbin0, "httpbin-0", &gunicorn, dir),
        start_httpbin(&httpbin1, "httpbin-1", &gunicorn, dir),
    ];
    let servers = [
        start_sidecar(&httpbin0, "httpbin-0", "default", &source, dir),
        start_sidecar(&httpbin1, "httpbin-1", "default", &source, dir),
    ];
    let mut client = start_sidecar(&ubuntu, "ubuntu-0", "default", &source, dir);

    // The article's request, verbatim.
    // The article's request, verbatim: curl prints the exchange on stderr, the body on stdout.
    let out = ubuntu.ns.sh("curl -sv http://httpbin-service/headers");
    let exchange = String::from_utf8_lossy(&out.stderr).to_string();
    client.assert_running();
    assert!(exchange.contains("< HTTP/1.1 200 OK"), "{exchange}");
    assert!(exchange.contains("< server: envoy"), "{exchange}");
    assert!(
        exchange.contains("< x-envoy-upstream-service-time: "),
        "{exchange}"
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("httpbin answers JSON");
    eprintln!("{exchange}{}", String::from_utf8_lossy(&out.stdout));
    let headers = &seen["headers"];
    assert_eq!(headers["Host"], "httpbin-service", "{seen}");
    assert!(field(headers, "User-Agent").starts_with("curl/"), "{seen}");
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(hex(field(headers, "X-B3-Traceid"), 32), "{seen}");
    assert!(hex(field(headers, "X-B3-Spanid"), 16), "{seen}");
    assert!(hex(field(headers, "X-B3-Parentspanid"), 16), "{seen}");
    assert!(
        ["0", "1"].contains(&field(headers, "X-B3-Sampled")),
        "{seen}"
    );

    // httpbin hides these unless asked (show_env): the request id and the forwarded proto.
    let out = ubuntu
        .ns
        .sh("curl -s 'http://httpbin-service/headers?show_env=1'");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let request_id = field(&seen["headers"], "X-Request-Id").to_string();
    assert_eq!(request_id.len(), 36, "a UUID: {seen}");
    assert_eq!(seen["headers"]["X-Forwarded-Proto"], "http", "{seen}");

    // Both sidecars logged that request, with the same id, as the article shows.
    let client_line = wait_for(
        "the client sidecar's log line",
        Duration::from_secs(10),
        || {
            access_log(&client)
                .into_iter()
                .find(|l| l["request_id"] == request_id.as_str())
        },
    );
    for f in FIELDS {
        assert!(client_line.get(f).is_some(), "{f} missing in {client_line}");
    }
    eprintln!("client sidecar: {client_line:#}");
    assert_eq!(client_line.as_object().unwrap().len(), 24, "{client_line}");
    assert_eq!(
        field(&client_line, "downstream_local_address"),
        format!("{VIP}:80")
    );
    assert!(
        field(&client_line, "downstream_remote_address").starts_with(&format!("{}:", ubuntu.ip)),
        "{client_line}"
    );
    assert_eq!(
        field(&client_line, "upstream_cluster"),
        format!("outbound|80||{FQDN}")
    );
    let upstream_host = field(&client_line, "upstream_host").to_string();
    let server_ips = [httpbin0.ip, httpbin1.ip];
    let server = server_ips
        .iter()
        .position(|ip| upstream_host == format!("{ip}:80"))
        .unwrap_or_else(|| panic!("upstream_host {upstream_host} is not a httpbin pod :80"));
    assert_eq!(field(&client_line, "authority"), "httpbin-service");
    assert_eq!(field(&client_line, "method"), "GET");
    assert_eq!(field(&client_line, "protocol"), "HTTP/1.1");
    assert_eq!(field(&client_line, "response_flags"), "-");
    assert_eq!(field(&client_line, "route_name"), "default");
    assert!(
        field(&client_line, "start_time").ends_with('Z'),
        "{client_line}"
    );

    let server_line = wait_for(
        "the server sidecar's log line",
        Duration::from_secs(10),
        || {
            access_log(&servers[server])
                .into_iter()
                .find(|l| l["request_id"] == request_id.as_str())
        },
    );
    for f in FIELDS {
        assert!(server_line.get(f).is_some(), "{f} missing in {server_line}");
    }
    eprintln!("server sidecar: {server_line:#}");
    assert_eq!(server_line.as_object().unwrap().len(), 24, "{server_line}");
    assert_eq!(
        field(&server_line, "downstream_local_address"),
        upstream_host
    );
    assert_eq!(
        field(&server_line, "downstream_remote_address"),
        field(&client_line, "upstream_local_address"),
        "the server sees the client sidecar's upstream connection"
    );
    assert!(
        field(&server_line, "upstream_cluster").starts_with("inbound|80|"),
        "{server_line}"
    );
    assert_eq!(field(&server_line, "upstream_host"), upstream_host);
    assert!(
        field(&server_line, "upstream_local_address").starts_with("127.0.0.6:"),
        "{server_line}"
    );
    assert_eq!(field(&server_line, "response_code"), "200");

    // 100 more requests spread over both replicas.
    ubuntu
        .ns
        .sh("for i in $(seq 100); do curl -sf -o /dev/null http://httpbin-service/get; done");
    // The access log is written off the request path (lines are batched for a few ms), so the
    // last lines may still be on their way when curl returns.
    let served_per_replica = || -> Vec<usize> {
        servers
            .iter()
            .map(|s| access_log(s).iter().filter(|l| l["path"] == "/get").count())
            .collect()
    };
    let served = wait_for(
        "100 /get lines in the server sidecars' logs",
        Duration::from_secs(10),
        || {
            let served = served_per_replica();
            (served.iter().sum::<usize>() >= 100).then_some(served)
        },
    );
    assert_eq!(served.iter().sum::<usize>(), 100, "{served:?}");
    assert!(served.iter().all(|&n| n >= 20), "uneven spread: {served:?}");
    eprintln!("100 requests served per replica: {served:?}");

    // Metrics, parsed as Prometheus would: 102 requests from the client's side, and the same
    // 102 on the two servers' side.
    let source = requests_total(&ubuntu, &python);
    let want = [
        ("reporter", "source"),
        ("destination_service", FQDN),
        ("destination_service_name", "httpbin-service"),
        ("destination_service_namespace", "default"),
        ("destination_app", "httpbin"),
        ("source_app", "ubuntu"),
        ("source_workload", "ubuntu-deployment"),
        ("request_protocol", "http"),
        ("response_code", "200"),
    ];
    assert_eq!(count(&source, &want), 102.0, "{source:?}");
    let dest: f64 = [&httpbin0, &httpbin1]
        .iter()
        .map(|pod| {
            let samples = requests_total(pod, &python);
            count(
                &samples,
                &[
                    ("reporter", "destination"),
                    ("destination_workload", "httpbin-deployment"),
                    ("response_code", "200"),
                ],
            )
        })
        .sum();
    assert_eq!(dest, 102.0);
}

/// Issue 13, item 2: an HTTP/2 client (curl with prior knowledge, then h2load) reaches the real
/// httpbin, which gunicorn serves in HTTP/1.1 only, on the Service's `http` port through two
/// Ama sidecars: the sidecars speak HTTP/2 between them and the server sidecar speaks HTTP/1.1
/// to the app, as Istio's inbound cluster for an `http` port does. Before, every request was 503.
#[test]
fn http2_client_to_http1_httpbin_through_two_sidecars() {
    const TEST: &str = "http2_client_to_http1_httpbin_through_two_sidecars";
    if !root_or_skip(TEST) {
        return;
    }
    let gunicorn = venv_tool(TEST, "gunicorn");
    let scratch = Scratch::new("h2-to-h1");
    let dir = scratch.path();
    let mut lan = Lan::new();
    let ubuntu = lan.pod("ubuntu");
    let httpbin = lan.pod("httpbin0");
    ubuntu
        .ns
        .set_hosts(&format!("{VIP} httpbin-service {FQDN}\n"));
    let config = dir.join("resources.json");
    std::fs::write(&config, resources(&ubuntu, &[&httpbin])).unwrap();
    let source = [std::ffi::OsStr::new("--config"), config.as_os_str()];
    let _app = start_httpbin(&httpbin, "httpbin-0", &gunicorn, dir);
    let server = start_sidecar(&httpbin, "httpbin-0", "default", &source, dir);
    let mut client = start_sidecar(&ubuntu, "ubuntu-0", "default", &source, dir);

    let out = ubuntu.ns.sh(
        "for i in $(seq 20); do curl -s -m 10 --http2-prior-knowledge -o /dev/null \
         -w '%{http_code} %{http_version}\\n' http://httpbin-service/get; done",
    );
    let answers = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        answers.lines().filter(|l| *l == "200 2").count(),
        20,
        "curl --http2-prior-knowledge: {answers}"
    );

    let out = ubuntu
        .ns
        .sh("timeout 120 h2load -n 3000 -c 10 -m 10 http://httpbin-service/get 2>&1 || true");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{report}");
    assert!(
        report.contains("status codes: 3000 2xx, 0 3xx, 0 4xx, 0 5xx"),
        "h2load: {report}"
    );
    client.assert_running();

    // The server sidecar took HTTP/2 from the client sidecar and spoke HTTP/1.1 to gunicorn
    // (which answers nothing else).
    let lines = wait_for(
        "3020 lines in the server sidecar's log",
        Duration::from_secs(20),
        || {
            let lines = access_log(&server);
            (lines.len() >= 3020).then_some(lines)
        },
    );
    assert!(
        lines
            .iter()
            .all(|l| l["protocol"] == "HTTP/2" && l["response_code"] == "200"),
        "{:?}",
        lines.iter().find(|l| l["response_code"] != "200")
    );
}
