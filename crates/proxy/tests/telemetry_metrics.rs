//! Istio's metrics as a Prometheus scrape sees them: names, label order, buckets, and the
//! output parsed by the Python `prometheus_client` parser (the issue's acceptance check).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proxy::telemetry::{
    MetricLabels, Reporter, RequestProtocol, RequestRecord, ResponseFlags, SecurityPolicy,
    TcpRecord, Telemetry,
};

fn labels(reporter: Reporter) -> Arc<MetricLabels> {
    let mut l = MetricLabels::unknown(reporter);
    l.source_workload = "ubuntu-deployment".into();
    l.source_workload_namespace = "default".into();
    l.source_principal = "spiffe://cluster.local/ns/default/sa/default".into();
    l.source_app = "ubuntu".into();
    l.source_canonical_service = "ubuntu".into();
    l.source_canonical_revision = "latest".into();
    l.source_cluster = "Kubernetes".into();
    l.destination_workload = "httpbin-deployment".into();
    l.destination_workload_namespace = "default".into();
    l.destination_principal = "spiffe://cluster.local/ns/default/sa/default".into();
    l.destination_app = "httpbin".into();
    l.destination_service = "httpbin-service.default.svc.cluster.local".into();
    l.destination_service_name = "httpbin-service".into();
    l.destination_service_namespace = "default".into();
    l.destination_canonical_service = "httpbin".into();
    l.destination_canonical_revision = "latest".into();
    l.destination_cluster = "Kubernetes".into();
    l.connection_security_policy = if reporter == Reporter::Destination {
        SecurityPolicy::MutualTls
    } else {
        SecurityPolicy::Unknown
    };
    Arc::new(l)
}

fn request(l: &Arc<MetricLabels>, code: u16, ms: u64) -> RequestRecord {
    let mut r = RequestRecord::new(SystemTime::now(), l.clone());
    r.response_code = code;
    r.duration = Duration::from_millis(ms);
    r.bytes_received = 10;
    r.bytes_sent = 521;
    r
}

fn sample_line<'a>(text: &'a str, prefix: &str, must_contain: &[&str]) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(prefix) && must_contain.iter().all(|m| l.contains(m)))
}

#[test]
fn request_metrics_have_istio_names_labels_and_buckets() {
    let t = Telemetry::without_access_log();
    let src = labels(Reporter::Source);
    for _ in 0..3 {
        t.request(request(&src, 200, 3));
    }
    // Equal content in a different Arc is the same series.
    let src2 = Arc::new((*src).clone());
    t.request(request(&src2, 200, 3));
    let mut failed = request(&src, 503, 0);
    failed.response_flags =
        ResponseFlags::UPSTREAM_CONNECTION_FAILURE | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
    t.request(failed);
    let mut grpc = request(&labels(Reporter::Destination), 200, 1);
    grpc.request_protocol = RequestProtocol::Grpc;
    grpc.grpc_status = Some(14);
    t.request(grpc);

    let text = t.encode_prometheus();
    assert!(
        text.contains("# TYPE istio_requests_total counter\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram\n"));
    assert!(text.contains("# TYPE istio_request_bytes histogram\n"));
    assert!(text.contains("# TYPE istio_response_bytes histogram\n"));
    assert!(!text.contains("# EOF"), "Prometheus 0.0.4, not OpenMetrics");

    let ok = sample_line(
        &text,
        "istio_requests_total{",
        &["response_code=\"200\"", "reporter=\"source\""],
    )
    .expect("200 series");
    assert_eq!(
        ok,
        "istio_requests_total{reporter=\"source\",source_workload=\"ubuntu-deployment\",source_canonical_service=\"ubuntu\",\
source_canonical_revision=\"latest\",source_workload_namespace=\"default\",\
source_principal=\"spiffe://cluster.local/ns/default/sa/default\",source_app=\"ubuntu\",source_version=\"unknown\",\
source_cluster=\"Kubernetes\",destination_workload=\"httpbin-deployment\",destination_workload_namespace=\"default\",\
destination_principal=\"spiffe://cluster.local/ns/default/sa/default\",destination_app=\"httpbin\",\
destination_version=\"unknown\",destination_service=\"httpbin-service.default.svc.cluster.local\",\
destination_canonical_service=\"httpbin\",destination_canonical_revision=\"latest\",\
destination_service_name=\"httpbin-service\",destination_service_namespace=\"default\",\
destination_cluster=\"Kubernetes\",request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",\
response_flags=\"-\",connection_security_policy=\"unknown\"} 4"
    );
    let failed = sample_line(&text, "istio_requests_total{", &["response_code=\"503\""]).unwrap();
    assert!(
        failed.contains("response_flags=\"UF,URX\"") && failed.ends_with("} 1"),
        "{failed}"
    );
    let grpc = sample_line(
        &text,
        "istio_requests_total{",
        &["reporter=\"destination\""],
    )
    .unwrap();
    assert!(
        grpc.contains("request_protocol=\"grpc\"") && grpc.contains("grpc_response_status=\"14\""),
        "{grpc}"
    );
    assert!(
        grpc.contains("connection_security_policy=\"mutual_tls\""),
        "{grpc}"
    );

    // Envoy's default buckets, cumulative; 3 ms falls in le=5.
    let bucket = |le: &str| {
        sample_line(
            &text,
            "istio_request_duration_milliseconds_bucket{",
            &[
                "response_code=\"200\"",
                "reporter=\"source\"",
                &format!("le=\"{le}\""),
            ],
        )
        .unwrap_or_else(|| panic!("bucket {le}"))
        .rsplit_once(' ')
        .unwrap()
        .1
        .to_owned()
    };
    assert_eq!(bucket("1"), "0");
    assert_eq!(bucket("5"), "4");
    assert_eq!(bucket("3.6e+06"), "4");
    assert_eq!(bucket("+Inf"), "4");
    let les: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("istio_request_duration_milliseconds_bucket{")
                && l.contains("response_code=\"200\"")
                && l.contains("reporter=\"source\"")
        })
        .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap())
        .collect();
    assert_eq!(
        les,
        [
            "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000",
            "10000", "30000", "60000", "300000", "600000", "1.8e+06", "3.6e+06", "+Inf"
        ]
    );
    let sum = sample_line(
        &text,
        "istio_response_bytes_sum{",
        &["response_code=\"200\"", "reporter=\"source\""],
    )
    .unwrap();
    assert!(sum.ends_with(" 2084.0"), "{sum}");
}

#[test]
fn tcp_metrics() {
    let t = Telemetry::without_access_log();
    let l = labels(Reporter::Source);
    let accepted = TcpRecord::new(SystemTime::now(), Reporter::Source);
    let conn = t.tcp_open(&l, &accepted);
    conn.sent(100);
    conn.received(50);
    conn.sent(1);
    let mut rec = TcpRecord::new(SystemTime::now(), Reporter::Source);
    rec.response_flags = ResponseFlags::NONE;
    conn.close(rec);
    drop(t.tcp_open(&l, &accepted)); // dropped without close: still counted closed

    let text = t.encode_prometheus();
    for name in [
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} counter\n")),
            "{name}\n{text}"
        );
    }
    let line = |name: &str| {
        sample_line(&text, &format!("{name}{{"), &[])
            .unwrap()
            .rsplit_once(' ')
            .unwrap()
            .1
            .to_owned()
    };
    assert_eq!(line("istio_tcp_sent_bytes_total"), "101");
    assert_eq!(line("istio_tcp_received_bytes_total"), "50");
    assert_eq!(line("istio_tcp_connections_opened_total"), "2");
    assert_eq!(line("istio_tcp_connections_closed_total"), "2");
    let opened = sample_line(&text, "istio_tcp_connections_opened_total{", &[]).unwrap();
    assert!(
        opened.contains(
            "request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"unknown\"}"
        ),
        "{opened}"
    );
    assert!(!opened.contains("response_code"), "{opened}");
}

#[test]
fn envoy_stats_text() {
    let t = Telemetry::without_access_log();
    t.request(request(&labels(Reporter::Source), 200, 1));
    let stats = t.encode_envoy_stats();
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("istio_requests_total{") && l.ends_with("}: 1")),
        "{stats}"
    );
    assert!(
        stats.lines().any(|l| l == "envoy_server_live: 1"),
        "{stats}"
    );
    assert!(!stats.contains('#'));
}

/// The issue's check: the Python `prometheus_client` parser reads our output and counts the
/// requests with the right labels. Python is the tests' venv's (`e2e::venv`, made on first use).
#[test]
fn python_prometheus_client_parses_output() {
    let python = e2e::venv_tool("python_prometheus_client_parses_output", "python");

    let t = Telemetry::without_access_log();
    let src = labels(Reporter::Source);
    for _ in 0..7 {
        t.request(request(&src, 200, 12));
    }
    t.request(request(&src, 404, 1));
    let conn = t.tcp_open(&src, &TcpRecord::new(SystemTime::now(), Reporter::Source));
    conn.sent(5);
    drop(conn);
    let text = t.encode_prometheus();

    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.setdefault(fam.name + "|" + fam.type, []).append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "parser failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The parser strips `_total` from counter family names, as it does for Envoy's output.
    let requests = parsed["istio_requests|counter"]
        .as_array()
        .expect("istio_requests counter family");
    let count = |code: &str| -> f64 {
        requests
            .iter()
            .filter(|s| {
                s[0] == "istio_requests_total"
                    && s[1]["response_code"] == code
                    && s[1]["reporter"] == "source"
                    && s[1]["destination_service"] == "httpbin-service.default.svc.cluster.local"
                    && s[1]["source_principal"] == "spiffe://cluster.local/ns/default/sa/default"
            })
            .map(|s| s[2].as_f64().unwrap())
            .sum()
    };
    assert_eq!(count("200"), 7.0);
    assert_eq!(count("404"), 1.0);
    let labels = requests[0][1].as_object().unwrap();
    assert_eq!(labels.len(), 25, "Istio's 25 labels: {labels:?}");

    let hist = parsed["istio_request_duration_milliseconds|histogram"]
        .as_array()
        .expect("histogram family");
    let inf = hist
        .iter()
        .find(|s| {
            s[0] == "istio_request_duration_milliseconds_bucket"
                && s[1]["le"] == "+Inf"
                && s[1]["response_code"] == "200"
        })
        .unwrap();
    assert_eq!(inf[2], 7.0);
    for fam in [
        "istio_request_bytes|histogram",
        "istio_response_bytes|histogram",
        "istio_tcp_sent_bytes|counter",
        "istio_tcp_received_bytes|counter",
        "istio_tcp_connections_opened|counter",
        "istio_tcp_connections_closed|counter",
    ] {
        assert!(parsed.get(fam).is_some(), "missing {fam}: {parsed}");
    }
}

#[test]
fn equal_label_sets_share_one_arc_and_one_series() {
    let t = Telemetry::without_access_log();
    // Built separately, as two requests build them.
    let a = t.labels((*labels(Reporter::Source)).clone());
    let b = t.labels((*labels(Reporter::Source)).clone());
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(
        &a,
        &t.labels((*labels(Reporter::Destination)).clone())
    ));
    for l in [a, b] {
        let mut r = RequestRecord::new(SystemTime::now(), l);
        r.response_code = 200;
        t.request(r);
    }
    let text = t.encode_prometheus();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert_eq!(series.len(), 1, "{text}");
    assert!(series[0].ends_with(" 2"), "{text}");
}
