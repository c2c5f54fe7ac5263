//! The Telemetry API's access logs and metric overrides as the proxy applies them from its Node
//! resource (`xds::AccessLogging`, `xds::MetricsConfig`): installed with a config snapshot on
//! real sidecars (files written per side, CEL filters, headers the filters read, metrics with
//! labels removed, upserted and disabled, HTTP and TCP), a bad format or expression keeping the
//! previous config, and a later config without them giving back the proxy's own telemetry.

mod harness;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use harness::{App, Sidecar, httpbin_yaml, metric, server_yaml, vip};
use http::Request;
use http_body_util::{BodyExt, Full};
use proxy::telemetry::{
    AccessLogEncoding, AccessLogOptions, MemorySink, MetricLabels, Reporter, RequestRecord,
    TcpRecord, Telemetry, TelemetryOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xds::{
    AccessLog, AccessLogFormat, AccessLogging, IstioMetric, MetricOverride, MetricsConfig,
    ModeMetrics, NodeRef, TagOverride,
};

fn text_log(provider: &str, path: &Path, format: &str, filter: Option<&str>) -> AccessLog {
    AccessLog {
        provider: provider.to_owned(),
        path: path.display().to_string(),
        format: AccessLogFormat::Text(format.to_owned()),
        filter: filter.map(str::to_owned),
    }
}

fn tag(name: &str, value: Option<&str>) -> TagOverride {
    TagOverride {
        name: name.to_owned(),
        value: value.map(str::to_owned),
    }
}

/// Installs the sidecar's resources in force again with its Node edited by `edit`, as a push
/// from discovery would.
fn install(sidecar: &Sidecar, edit: impl FnOnce(&mut NodeRef)) {
    let mut resources = (*sidecar.store.load().resources).clone();
    edit(resources.node.get_or_insert_with(NodeRef::default));
    sidecar.store.apply(resources).expect("resources apply");
}

/// The lines of `path` once everything queued is written; none when it does not exist.
async fn lines(telemetry: &Telemetry, path: &Path) -> Vec<String> {
    assert!(telemetry.flush(Duration::from_secs(10)).await, "flushed");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Open descriptors of this process on `path`.
fn open_descriptors(path: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

async fn get_with(sidecar: &Sidecar, path: &str, headers: &[(&str, &str)]) -> http::Response<()> {
    let mut req = Request::builder()
        .uri(path)
        .header("host", "httpbin-service")
        .header("user-agent", "curl/7.58.0");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())
        .expect("request");
    let mut tx = sidecar.h1(vip()).await;
    let exchange = harness::send(&mut tx, req);
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("answered within 30 s")
        .0
}

/// A client sidecar to an httpbin behind a server sidecar.
async fn mesh_of_two() -> (App, Sidecar, Sidecar) {
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&server_yaml())
        .inbound_to(app.addr)
        .start()
        .await;
    let client = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""))
        .start()
        .await;
    (app, server, client)
}

#[tokio::test]
async fn access_logs_per_side_in_files_with_filters_then_back_to_mesh_config() {
    let (_app, server, client) = mesh_of_two().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let errors = dir.path().join("errors.log");
    let debug = dir.path().join("debug.log");
    let unused = dir.path().join("unused.log");
    let unused_server = dir.path().join("unused-server.log");

    install(&client, |node| {
        node.access_logging = Some(AccessLogging {
            client: Some(vec![
                text_log(
                    "errors",
                    &errors,
                    "ERR %RESPONSE_CODE% %REQ(:PATH)%",
                    Some(
                        "response.code >= 400 || xds.cluster_name == 'BlackHoleCluster' || xds.cluster_name == 'PassthroughCluster'",
                    ),
                ),
                AccessLog {
                    provider: "debug".into(),
                    path: debug.display().to_string(),
                    format: AccessLogFormat::Json(vec![
                        ("code".into(), "%RESPONSE_CODE%".into()),
                        ("path".into(), "%REQ(:PATH)%".into()),
                        ("debug".into(), "%REQ(X-DEBUG)%".into()),
                        ("tenant".into(), "%REQ(X-TENANT)%".into()),
                    ]),
                    filter: Some("request.headers['x-debug'] == 'true'".into()),
                },
                // The same file as `errors`, every request: one sink shared by both.
                text_log("all", &errors, "ALL %REQ(:PATH)%\n", None),
            ]),
            // The client sidecar serves nothing inbound: this log stays empty.
            server: Some(vec![text_log(
                "server",
                &unused_server,
                "%REQ(:PATH)%",
                None,
            )]),
        });
    });
    install(&server, |node| {
        node.access_logging = Some(AccessLogging {
            // The server sidecar sends nothing outbound; its inbound side keeps MeshConfig's log.
            client: Some(vec![text_log("client", &unused, "%REQ(:PATH)%", None)]),
            server: None,
        });
    });

    assert_eq!(get_with(&client, "/status/200", &[]).await.status(), 200);
    assert_eq!(get_with(&client, "/status/404", &[]).await.status(), 404);
    assert_eq!(
        get_with(
            &client,
            "/headers",
            &[("x-debug", "true"), ("x-tenant", "acme")]
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        get_with(&client, "/status/503", &[("x-debug", "false")])
            .await
            .status(),
        503
    );

    let mut got = lines(&client.telemetry, &errors).await;
    got.sort();
    assert_eq!(
        got,
        [
            "ALL /headers",
            "ALL /status/200",
            "ALL /status/404",
            "ALL /status/503",
            "ERR 404 /status/404",
            "ERR 503 /status/503",
        ],
        "the filter keeps errors; the unfiltered log has every request"
    );
    assert_eq!(
        open_descriptors(&errors.canonicalize().expect("exists")),
        1,
        "two logs naming one path share one open file"
    );
    let debug_lines = lines(&client.telemetry, &debug).await;
    assert_eq!(debug_lines.len(), 1, "{debug_lines:?}");
    let v: serde_json::Value = serde_json::from_str(&debug_lines[0]).expect("json");
    assert_eq!(v["path"], "/headers");
    assert_eq!(v["code"], "200");
    assert_eq!(v["debug"], "true", "a header the format prints is captured");
    assert_eq!(v["tenant"], "acme");
    assert!(
        client.log.lines().is_empty(),
        "the client side is the Telemetry API's now: {:?}",
        client.log.lines()
    );
    assert!(lines(&client.telemetry, &unused_server).await.is_empty());
    assert!(lines(&server.telemetry, &unused).await.is_empty());
    let inbound = server.log_lines(4).await;
    assert_eq!(inbound.len(), 4, "the server side keeps MeshConfig's log");
    assert!(
        inbound.iter().all(|l| l["upstream_cluster"]
            .as_str()
            .is_some_and(|c| c.starts_with("inbound|"))),
        "{inbound:?}"
    );

    // A config without them: MeshConfig's log again, and the files get nothing more.
    install(&client, |node| node.access_logging = None);
    assert_eq!(get_with(&client, "/status/500", &[]).await.status(), 500);
    let outbound = client.log_lines(1).await;
    assert_eq!(outbound.len(), 1);
    assert_eq!(outbound[0]["path"], "/status/500");
    assert_eq!(lines(&client.telemetry, &errors).await.len(), 6);
}

#[tokio::test]
async fn an_empty_list_writes_no_log_on_that_side() {
    let (_app, server, client) = mesh_of_two().await;
    install(&server, |node| {
        node.access_logging = Some(AccessLogging {
            client: None,
            server: Some(vec![]),
        });
    });
    assert_eq!(get_with(&client, "/status/200", &[]).await.status(), 200);
    assert_eq!(client.log_lines(1).await.len(), 1, "the client side logs");
    // Refused before it is routed, an inbound request is still the server side's.
    let mut conn = tokio::net::TcpStream::connect(server.inbound)
        .await
        .expect("connect");
    let exchange = async {
        conn.write_all(b"GET /get HTTP/1.0\r\nHost: httpbin\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer).await;
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("answered within 30 s");
    assert!(
        answer.starts_with(b"HTTP/1.0 426"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(server.telemetry.flush(Duration::from_secs(10)).await);
    assert!(server.log.lines().is_empty(), "{:?}", server.log.lines());
    let text = server.telemetry.encode_prometheus();
    let refused = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains(r#"response_code="426""#))
        .expect("the refused request is counted");
    assert!(refused.contains(r#"reporter="destination""#), "{refused}");
}

fn override_of(metric: IstioMetric, disabled: bool, tags: Vec<TagOverride>) -> MetricOverride {
    MetricOverride {
        metric,
        disabled,
        tags,
    }
}

/// Istio's "Customizing Istio Metrics" task on the client side: `request_host` and
/// `destination_port` added to `istio_requests_total`, `request_protocol` removed; the request
/// duration disabled; the whole server side disabled. Then a config without them.
#[tokio::test]
async fn metric_overrides_upsert_remove_and_disable_then_standard_again() {
    let (_app, server, client) = mesh_of_two().await;
    install(&client, |node| {
        node.metrics = Some(MetricsConfig {
            client: Some(ModeMetrics {
                disabled: false,
                overrides: vec![
                    override_of(
                        IstioMetric::RequestCount,
                        false,
                        vec![
                            tag("destination_port", Some("string(destination.port)")),
                            tag("request_host", Some("request.host")),
                            tag("request_protocol", None),
                        ],
                    ),
                    override_of(IstioMetric::RequestDuration, true, vec![]),
                ],
            }),
            server: None,
        });
    });
    install(&server, |node| {
        node.metrics = Some(MetricsConfig {
            client: None,
            server: Some(ModeMetrics {
                disabled: true,
                overrides: vec![],
            }),
        });
    });
    for path in ["/status/200", "/status/200", "/status/404"] {
        get_with(&client, path, &[]).await;
    }
    let text = client.telemetry.encode_prometheus();
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert_eq!(
        requests.len(),
        2,
        "one series per response code: {requests:#?}"
    );
    for l in &requests {
        assert!(
            l.contains(r#",destination_port="80",request_host="httpbin-service"}"#),
            "new labels after the standard ones: {l}"
        );
        assert!(!l.contains("request_protocol="), "{l}");
        assert!(l.contains(r#"reporter="source""#), "{l}");
    }
    assert_eq!(
        metric(&text, "istio_requests_total", &[r#"response_code="200""#]),
        Some(2.0)
    );
    assert!(
        !text.contains("istio_request_duration_milliseconds_bucket{"),
        "duration disabled"
    );
    assert_eq!(
        metric(
            &text,
            "istio_request_bytes_count",
            &[r#"request_protocol="http""#, r#"response_code="404""#]
        ),
        Some(1.0),
        "other metrics keep their standard labels"
    );
    let server_text = server.telemetry.encode_prometheus();
    assert!(
        !server_text.contains(r#"reporter="destination""#),
        "the server side is disabled: {server_text}"
    );

    install(&client, |node| node.metrics = None);
    get_with(&client, "/status/201", &[]).await;
    let text = client.telemetry.encode_prometheus();
    let standard = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains(r#"response_code="201""#))
        .expect("the 201 series");
    assert!(
        standard.contains(r#"request_protocol="http""#) && !standard.contains("request_host"),
        "standard labels again: {standard}"
    );
    assert!(text.contains("istio_request_duration_milliseconds_bucket{"));
}

/// An opaque TCP service on the client sidecar, straight to a banner server.
fn tcp_yaml(banner: std::net::SocketAddr) -> String {
    format!(
        r#"
self: {{name: sleep, namespace: default}}
services:
- hostname: mail.default.svc.cluster.local
  name: mail
  namespace: default
  vips: [10.0.0.25]
  ports: [{{name: tcp-smtp, port: 25}}]
  endpoints: [{{address: 127.0.0.1, ports: {{25: {}}}}}]
"#,
        banner.port()
    )
}

#[tokio::test]
async fn tcp_metrics_and_logs_follow_the_overrides() {
    let banner = harness::banner_server().await;
    let client = Sidecar::builder(&tcp_yaml(banner)).start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tcp.log");
    install(&client, |node| {
        node.metrics = Some(MetricsConfig {
            client: Some(ModeMetrics {
                disabled: false,
                overrides: vec![
                    override_of(
                        IstioMetric::TcpOpenedConnections,
                        false,
                        vec![
                            tag("destination_port", Some("string(destination.port)")),
                            tag("destination_service", Some("'smtp-' + xds.cluster_name")),
                        ],
                    ),
                    override_of(IstioMetric::TcpSentBytes, true, vec![]),
                ],
            }),
            server: None,
        });
        node.access_logging = Some(AccessLogging {
            client: Some(vec![text_log(
                "tcp",
                &file,
                "%UPSTREAM_CLUSTER% %BYTES_SENT%",
                Some("xds.cluster_name.startsWith('outbound|25|')"),
            )]),
            server: None,
        });
    });
    let mut conn = client
        .connect_outbound("10.0.0.25:25".parse().expect("addr"))
        .await;
    let exchange = async {
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).await.expect("banner");
        assert!(buf[..n].starts_with(b"220"));
        conn.write_all(b"HELO x\r\n").await.expect("write");
        let n = conn.read(&mut buf).await.expect("echo");
        assert_eq!(&buf[..n], b"HELO x\r\n");
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("exchange within 30 s");
    drop(conn);
    let logged = {
        let mut found = Vec::new();
        for _ in 0..500 {
            found = lines(&client.telemetry, &file).await;
            if !found.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        found
    };
    assert_eq!(
        logged,
        ["outbound|25||mail.default.svc.cluster.local 26"],
        "the connection's line, after its close"
    );
    let text = client.telemetry.encode_prometheus();
    let opened = text
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .expect("opened counter");
    assert!(
        opened
            .contains(r#"destination_service="smtp-outbound|25||mail.default.svc.cluster.local""#)
            && opened.ends_with(r#",destination_port="25"} 1"#),
        "a standard label upserted in its place, a new one after: {opened}"
    );
    assert!(!text.contains("istio_tcp_sent_bytes_total{"), "disabled");
    assert_eq!(
        metric(
            &text,
            "istio_tcp_received_bytes_total",
            &[r#"destination_service="mail.default.svc.cluster.local""#]
        ),
        Some(8.0),
        "standard labels where nothing is overridden"
    );
    assert!(text.contains("istio_tcp_connections_closed_total{"));
}

/// A `tracing` layer that keeps what is logged, for the WARN a bad config gives.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
    }
}

fn record(code: u16) -> RequestRecord {
    let mut r = RequestRecord::new(
        SystemTime::now(),
        Arc::new(MetricLabels::unknown(Reporter::Source)),
    );
    r.method = Some(http::Method::GET);
    r.path = Some(format!("/status/{code}").parse().expect("path"));
    r.response_code = code;
    r.upstream_cluster = Some("outbound|80||httpbin-service.default.svc.cluster.local".into());
    r
}

fn client_logs(logs: Vec<AccessLog>) -> AccessLogging {
    AccessLogging {
        client: Some(logs),
        server: None,
    }
}

#[tokio::test]
async fn a_bad_format_or_filter_is_reported_and_keeps_the_previous_config() {
    let mesh_log = MemorySink::new();
    let t = Telemetry::new(TelemetryOptions {
        access_log: Some(AccessLogOptions::new(
            AccessLogEncoding::Text,
            mesh_log.sink(),
        )),
        ..TelemetryOptions::default()
    })
    .expect("telemetry");
    let dir = tempfile::tempdir().expect("tempdir");
    let (errors, bogus): (PathBuf, PathBuf) =
        (dir.path().join("errors.log"), dir.path().join("bogus.log"));
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let c = captured.clone();
            move || c.clone()
        })
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    t.configure(
        Some(&client_logs(vec![text_log(
            "errors",
            &errors,
            "%RESPONSE_CODE%",
            Some("response.code >= 500"),
        )])),
        None,
    );
    t.request(record(200));
    t.request(record(502));
    assert_eq!(lines(&t, &errors).await, ["502"]);

    t.configure(
        Some(&client_logs(vec![
            text_log(
                "errors",
                &errors,
                "%RESPONSE_CODE%",
                Some("response.code >="),
            ),
            text_log("bogus", &bogus, "%BOGUS%", None),
            text_log("filterless", &bogus, "%RESPONSE_CODE%", Some("1 +")),
        ])),
        None,
    );
    let warned = captured.text();
    assert!(
        warned.contains("WARN")
            && warned.contains("access log provider errors: filter.expression")
            && warned.contains("keeping its previous config"),
        "{warned}"
    );
    assert!(
        warned.contains("access log provider bogus: logFormat.text")
            && warned.contains("unknown command operator %BOGUS%")
            && warned.contains("writing nothing for it"),
        "{warned}"
    );
    t.request(record(200));
    t.request(record(503));
    assert_eq!(
        lines(&t, &errors).await,
        ["502", "503"],
        "the previous filter stays"
    );
    assert!(
        lines(&t, &bogus).await.is_empty(),
        "no line for a log that never worked"
    );
    assert!(mesh_log.lines().is_empty(), "{:?}", mesh_log.lines());

    // A metric tag that does not compile: reported, the label left standard.
    t.configure(
        None,
        Some(&MetricsConfig {
            client: Some(ModeMetrics {
                disabled: false,
                overrides: vec![override_of(
                    IstioMetric::RequestCount,
                    false,
                    vec![
                        tag("request_host", Some("request.host +")),
                        tag("bad-name", None),
                    ],
                )],
            }),
            server: None,
        }),
    );
    let warned = captured.text();
    assert!(
        warned.contains("metric REQUEST_COUNT: tagOverrides.request_host")
            && warned.contains(
                "metric REQUEST_COUNT: tagOverrides.bad-name: not a Prometheus label name"
            ),
        "{warned}"
    );
    t.request(record(200));
    assert!(lines(&t, &errors).await.len() == 2);
    assert_eq!(
        mesh_log.lines().len(),
        1,
        "MeshConfig's log is back on the client side"
    );
    let text = t.encode_prometheus();
    assert!(!text.contains("request_host"), "{text}");
}

/// Labels removed so that two series become one, the output read by Prometheus's own Python
/// parser (text format 0.0.4).
#[test]
fn collapsed_and_custom_series_stay_valid_prometheus_text() {
    let python = e2e::venv_tool(
        "collapsed_and_custom_series_stay_valid_prometheus_text",
        "python",
    );
    let t = Telemetry::without_access_log();
    t.configure(
        None,
        Some(&MetricsConfig {
            client: Some(ModeMetrics {
                disabled: false,
                overrides: vec![
                    override_of(
                        IstioMetric::RequestCount,
                        false,
                        vec![
                            tag("quoted", Some(r#"'say "hi" \\ bye'"#)),
                            tag("response_code", None),
                            tag("route", Some("request.path")),
                        ],
                    ),
                    override_of(
                        IstioMetric::ResponseSize,
                        false,
                        vec![tag(
                            "response_code",
                            Some("response.code >= 400 ? 'error' : 'ok'"),
                        )],
                    ),
                ],
            }),
            server: None,
        }),
    );
    for code in [200, 200, 404, 500] {
        let mut r = record(code);
        r.path = Some("/same".parse().expect("path"));
        t.request(r);
    }
    let accepted = TcpRecord::new(SystemTime::now(), Reporter::Source);
    let labels = Arc::new(MetricLabels::unknown(Reporter::Source));
    t.tcp_open(&labels, &accepted).close(accepted.clone());
    let text = t.encode_prometheus();
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert!(
        requests[0].ends_with(r#",quoted="say \"hi\" \\ bye",route="/same"} 4"#),
        "{}",
        requests[0]
    );
    assert_eq!(
        metric(
            &text,
            "istio_response_bytes_count",
            &[r#"response_code="error""#]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "istio_response_bytes_count",
            &[r#"response_code="ok""#]
        ),
        Some(2.0)
    );

    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
seen = set()
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        assert key not in seen, key
        seen.add(key)
print(len(seen))
"#;
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python ends");
    assert!(
        out.status.success(),
        "the parser refused it: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An override that only changes standard values can make a series equal to a standard one
/// counted before: it counts there, and the output holds that series once.
#[test]
fn an_upsert_equal_to_a_standard_series_counts_in_it() {
    let t = Telemetry::without_access_log();
    let to = |service: &str| {
        let mut l = MetricLabels::unknown(Reporter::Source);
        l.destination_service = Arc::from(service);
        let mut r = record(200);
        r.labels = t.labels(l);
        r
    };
    t.request(to("b.default.svc.cluster.local"));
    t.configure(
        None,
        Some(&MetricsConfig {
            client: Some(ModeMetrics {
                disabled: false,
                overrides: vec![override_of(
                    IstioMetric::RequestCount,
                    false,
                    vec![tag(
                        "destination_service",
                        Some("'b.default.svc.cluster.local'"),
                    )],
                )],
            }),
            server: None,
        }),
    );
    t.request(to("a.default.svc.cluster.local"));
    let text = t.encode_prometheus();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert_eq!(series.len(), 1, "{series:#?}");
    assert!(
        series[0].contains(r#"destination_service="b.default.svc.cluster.local""#)
            && series[0].ends_with(" 2"),
        "{}",
        series[0]
    );
}
