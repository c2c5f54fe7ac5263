//! Observability of a mesh under `ama up`, seen as a user sees it (issue 18):
//!
//! - [`istio_dashboards_answered_by_prometheus`]: a real Prometheus (Debian's `prometheus`),
//!   started in the mesh's bridge namespace with a config of its own that scrapes every pod as
//!   Istio's `prometheus` addon's `kubernetes-pods` job does (the same relabelling of the
//!   `prometheus.io/*` annotations: 15020, `/stats/prometheus`; the pods come from a file instead
//!   of the API server, with the `__meta_kubernetes_*` labels the Kubernetes discovery would
//!   give), then the PromQL of Istio's Grafana dashboards (Mesh, Service, Workload) from
//!   `tests/fixtures/dashboards/queries.yaml`, with Grafana's variables substituted, sent to its
//!   `/api/v1/query`: each must return series with the right labels and plausible values;
//! - [`mesh_page_in_headless_chromium`]: `ama dashboard` forwards a host port to discovery's
//!   mesh page; headless Chromium (Debian's `chromium`) loads it and the test asserts on the DOM
//!   it rendered (the edge ubuntu → httpbin with its rate and mTLS, the TCP edge in bytes, the
//!   proxies SYNCED), and writes a screenshot.
//!
//! The mesh is the seed (ubuntu-deployment, httpbin-deployment ×2 behind httpbin-service) plus
//! tcp-server (httpbin behind a Service whose port is TCP). The client sends a steady load for
//! as long as the test runs (the dashboards use `irate`, which needs traffic in the last two
//! scrapes): one request in five is `/status/500` (not retried by Istio's default policy, which
//! retries 503s), and each round also fetches `/headers` over the TCP Service.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::up::{UpMesh, name};
use e2e::{Proc, Scratch, ama, root_or_skip, wait_for, workspace};
use serde_json::{Value, json};

/// A server called over TCP: httpbin on port 9000 behind a Service whose port is TCP (its
/// name's `tcp` prefix, as Istio reads it). A port of its own: a target port shared with
/// httpbin-service would be HTTP on the server side.
const TCP_SERVER: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: tcp-server, namespace: default, labels: {app: tcp-server}}
spec:
  replicas: 1
  selector: {matchLabels: {app: tcp-server}}
  template:
    metadata:
      labels: {app: tcp-server}
      annotations: {local.ama.dev/command: ama sample httpbin --port 9000}
    spec:
      containers:
      - {name: httpbin, image: kennethreitz/httpbin, ports: [{containerPort: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: tcp-server, namespace: default}
spec:
  selector: {app: tcp-server}
  ports: [{name: tcp, port: 8000, targetPort: 9000}]
";

/// The client's load: bounded (about ten minutes at most) so that nothing outlives a test
/// whose guard could not kill it.
const LOAD: &str = "i=0; while [ $i -lt 6000 ]; do i=$((i+1)); code=200; \
    [ $((i % 5)) -eq 0 ] && code=500; \
    curl -s -o /dev/null --max-time 5 http://httpbin-service/status/$code; \
    curl -s -o /dev/null --max-time 5 http://tcp-server:8000/headers; \
    sleep 0.1; done";

/// Prometheus's port inside the bridge's namespace (nothing else of the mesh listens there).
const PROMETHEUS_PORT: u16 = 9090;
/// How often Prometheus scrapes.
const SCRAPE_INTERVAL: &str = "5s";
/// How long one query may wait for the series it expects (several scrapes).
const QUERY_WAIT: Duration = Duration::from_secs(30);

/// The seed's files and [`TCP_SERVER`] in a fresh directory of `scratch`.
fn mesh_dir(scratch: &Scratch) -> PathBuf {
    let dir = scratch.path().join("mesh");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(workspace().join("examples/seed")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.join("tcp-server.yaml"), TCP_SERVER).unwrap();
    dir
}

/// The mesh with its four pods ready, and the client's load running.
fn start(scratch: &Scratch, tag: &str) -> (UpMesh, Vec<Value>, Proc) {
    let mesh = UpMesh::start(tag, &mesh_dir(scratch), scratch.path(), &[]);
    let pods = mesh.wait_ready(4);
    let client = pods
        .iter()
        .map(name)
        .find(|n| n.starts_with("ubuntu"))
        .expect("the client pod");
    let mut cmd = Command::new(ama());
    cmd.args(["exec", &client, "--", "sh", "-c", LOAD])
        .env("AMA_MESH", &mesh.name);
    let load = Proc::spawn("load", scratch.path(), cmd);
    (mesh, pods, load)
}

/// A label name as Prometheus's Kubernetes discovery makes it of a label or annotation key.
fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The `file_sd` targets: each pod with the `__meta_kubernetes_pod_*` labels Kubernetes
/// discovery (`role: pod`) gives it, so the job's relabelling is the addon's.
fn targets(pods: &[Value]) -> Value {
    let targets: Vec<Value> = pods
        .iter()
        .map(|p| {
            let ip = p["status"]["podIP"].as_str().expect("podIP");
            let mut labels = BTreeMap::new();
            labels.insert(
                "__meta_kubernetes_namespace".to_string(),
                p["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            );
            labels.insert("__meta_kubernetes_pod_name".to_string(), name(p));
            labels.insert("__meta_kubernetes_pod_ip".to_string(), ip.to_string());
            labels.insert(
                "__meta_kubernetes_pod_phase".to_string(),
                p["status"]["phase"]
                    .as_str()
                    .unwrap_or("Running")
                    .to_string(),
            );
            for (prefix, field) in [
                ("__meta_kubernetes_pod_annotation_", "annotations"),
                ("__meta_kubernetes_pod_label_", "labels"),
            ] {
                for (k, v) in p["metadata"][field].as_object().into_iter().flatten() {
                    labels.insert(
                        format!("{prefix}{}", sanitize(k)),
                        v.as_str().unwrap_or("").to_string(),
                    );
                }
            }
            json!({"targets": [ip], "labels": labels})
        })
        .collect();
    Value::Array(targets)
}

/// Istio's `kubernetes-pods` job (samples/addons/prometheus.yaml), its pods from `targets`.
fn prometheus_config(targets: &Path) -> String {
    format!(
        r#"global:
  scrape_interval: {SCRAPE_INTERVAL}
  evaluation_interval: {SCRAPE_INTERVAL}
scrape_configs:
- job_name: kubernetes-pods
  honor_labels: true
  file_sd_configs:
  - files: ["{}"]
    refresh_interval: 5s
  relabel_configs:
  - action: keep
    regex: "true"
    source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
  - action: drop
    regex: "true"
    source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape_slow]
  - action: replace
    regex: "(https?)"
    source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scheme]
    target_label: __scheme__
  - action: replace
    regex: "(.+)"
    source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
    target_label: __metrics_path__
  - action: replace
    regex: '(\d+);((([0-9]+?)(\.|$)){{4}})'
    replacement: "$2:$1"
    source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_port, __meta_kubernetes_pod_ip]
    target_label: __address__
  - action: labelmap
    regex: "__meta_kubernetes_pod_annotation_prometheus_io_param_(.+)"
    replacement: "__param_$1"
  - action: labelmap
    regex: "__meta_kubernetes_pod_label_(.+)"
  - action: replace
    source_labels: [__meta_kubernetes_namespace]
    target_label: namespace
  - action: replace
    source_labels: [__meta_kubernetes_pod_name]
    target_label: pod
  - action: drop
    regex: "Pending|Succeeded|Failed|Completed"
    source_labels: [__meta_kubernetes_pod_phase]
"#,
        targets.display()
    )
}

/// A Prometheus running in the mesh's bridge namespace; killed on drop.
struct Prometheus {
    proc: Proc,
    netns: String,
}

impl Prometheus {
    fn start(netns: &str, dir: &Path, pods: &[Value]) -> Prometheus {
        let targets = dir.join("targets.json");
        std::fs::write(&targets, targets_json(pods)).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, prometheus_config(&targets)).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"));
        Prometheus {
            proc: Proc::spawn("prometheus", dir, cmd),
            netns: netns.to_string(),
        }
    }

    /// `GET /api/v1/<path>` with `args` (URL-encoded by curl), as JSON; `None` when it does not
    /// answer (yet) or is not JSON.
    fn api(&self, path: &str, args: &[(&str, &str)]) -> Option<Value> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.netns,
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-G",
        ])
        .arg(format!("http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/{path}"));
        for (k, v) in args {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = cmd.output().expect("run curl");
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The result of an instant query: its series (`metric`, `value`).
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let answer = self
            .api("query", &[("query", expr)])
            .ok_or("no answer from Prometheus")?;
        if answer["status"] != "success" {
            return Err(format!("Prometheus: {answer}"));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

fn targets_json(pods: &[Value]) -> String {
    serde_json::to_string_pretty(&targets(pods)).unwrap()
}

/// `expr` with Grafana's `$name` and `${name}` replaced from `vars`; panics on a variable the
/// fixture does not give (the query would not be what the dashboard sends).
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').expect("a closing brace");
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let value = vars
            .get(name)
            .unwrap_or_else(|| panic!("the fixture gives no value for ${name} in {expr}"));
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Why `series` does not meet `expect`, or `None` when it does.
fn unmet(series: &[Value], expect: &Value) -> Option<String> {
    if series.is_empty() {
        return Some("no series".into());
    }
    for s in series {
        let value: f64 = s["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        if let Some(min) = expect["min"].as_f64()
            && (value.is_nan() || value < min)
        {
            return Some(format!("{value} < min {min} in {s}"));
        }
        if let Some(max) = expect["max"].as_f64()
            && (value.is_nan() || value > max)
        {
            return Some(format!("{value} > max {max} in {s}"));
        }
        for (k, v) in expect["labels"].as_object().into_iter().flatten() {
            if s["metric"][k] != *v {
                return Some(format!("label {k} is not {v} in {s}"));
            }
        }
    }
    for (k, values) in expect["label_values"].as_object().into_iter().flatten() {
        for v in values.as_array().into_iter().flatten() {
            if !series.iter().any(|s| s["metric"][k] == *v) {
                return Some(format!("no series with {k}={v}"));
            }
        }
    }
    None
}

#[test]
fn istio_dashboards_answered_by_prometheus() {
    if !root_or_skip("istio_dashboards_answered_by_prometheus") {
        return;
    }
    assert!(
        Command::new("prometheus").arg("--version").output().is_ok(),
        "prometheus is not installed (Debian package prometheus; tests/run installs it)"
    );
    let scratch = Scratch::new("dash-prom");
    let (mesh, pods, mut load) = start(&scratch, "dprom");
    let state = mesh.state();
    let netns = state["lanNetns"].as_str().expect("state.json lanNetns");
    let mut prometheus = Prometheus::start(netns, scratch.path(), &pods);

    // Every pod is a target, scraped on the status port as Istio's annotations say.
    let active = wait_for("Prometheus's targets up", Duration::from_secs(90), || {
        prometheus.proc.assert_running();
        let t = prometheus.api("targets", &[])?;
        let active = t["data"]["activeTargets"].as_array()?.clone();
        (active.len() == pods.len() && active.iter().all(|t| t["health"] == "up")).then_some(active)
    });
    for t in &active {
        let url = t["scrapeUrl"].as_str().unwrap();
        assert!(url.ends_with(":15020/stats/prometheus"), "{t}");
        assert!(t["labels"]["pod"].is_string() && t["labels"]["namespace"] == "default");
    }

    let fixture: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(workspace().join("tests/fixtures/dashboards/queries.yaml"))
            .unwrap(),
    )
    .expect("queries.yaml is YAML");
    let vars: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_value(fixture["variables"].clone()).expect("variables");

    // The traffic has reached Prometheus: the Mesh dashboard's volume is there.
    wait_for("requests in Prometheus", Duration::from_secs(120), || {
        load.assert_running();
        let r = prometheus
            .query(r#"sum(rate(istio_requests_total{reporter="source"}[1m]))"#)
            .ok()?;
        (!r.is_empty()).then_some(())
    });

    // Istio's TCP byte counters take the downstream's side: sent is the response (httpbin's
    // /headers JSON), received the request (a GET of a few headers), so sent is the larger.
    let tcp_rate = |metric: &str| -> Option<f64> {
        let expr = format!(
            r#"sum(rate({metric}{{reporter="destination",destination_service="tcp-server.default.svc.cluster.local"}}[1m]))"#
        );
        prometheus.query(&expr).ok()?.first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    };
    let (sent, received) = wait_for("TCP bytes in Prometheus", QUERY_WAIT, || {
        let sent = tcp_rate("istio_tcp_sent_bytes_total")?;
        let received = tcp_rate("istio_tcp_received_bytes_total")?;
        (sent > 0.0 && received > 0.0).then_some((sent, received))
    });
    assert!(
        sent > received,
        "istio_tcp_sent_bytes_total (the response) {sent}/s is not above istio_tcp_received_bytes_total (the request) {received}/s"
    );

    let mut failures = Vec::new();
    let queries = fixture["queries"].as_array().expect("queries");
    for q in queries {
        let set = q["variables"].as_str().unwrap();
        let expr = substitute(q["expr"].as_str().unwrap(), &vars[set]);
        let what = format!(
            "{} / {:?} (target {}): {expr}",
            q["dashboard"].as_str().unwrap(),
            q["panel"].as_str().unwrap(),
            q["target"]
        );
        let deadline = Instant::now() + QUERY_WAIT;
        let result = loop {
            let reason = match prometheus.query(&expr) {
                Ok(series) => match unmet(&series, &q["expect"]) {
                    None => break Ok(series),
                    Some(why) => why,
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                break Err(reason);
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        match result {
            Ok(series) => println!("ok: {what}\n    {}", json!(series)),
            Err(why) => failures.push(format!("{what}\n    {why}")),
        }
    }
    load.assert_running();
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries did not return what they should:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );
}

/// The value of attribute `name` in the start tag that begins `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let end = tag.find('>').unwrap_or(tag.len());
    let head = &tag[..end];
    let key = format!(" {name}=\"");
    let at = head.find(&key)? + key.len();
    let len = head[at..].find('"')?;
    Some(&head[at..at + len])
}

/// Every start tag of `html` whose `class` attribute is `class`.
fn tags<'a>(html: &'a str, element: &str, class: &str) -> Vec<&'a str> {
    html.split(&format!("<{element} "))
        .skip(1)
        .filter(|t| attr(&format!(" {t}"), "class") == Some(class))
        .collect()
}

/// Headless Chromium, bounded; as root it needs `--no-sandbox`.
fn chromium(args: &[&str], url: &str) -> std::process::Output {
    let out = Command::new("timeout")
        .args([
            "120",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .args(["--disable-dev-shm-usage", "--virtual-time-budget=8000"])
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn mesh_page_in_headless_chromium() {
    if !root_or_skip("mesh_page_in_headless_chromium") {
        return;
    }
    assert!(
        Command::new("chromium").arg("--version").output().is_ok(),
        "chromium is not installed (Debian package chromium; tests/run installs it)"
    );
    let scratch = Scratch::new("dash-page");
    let (mesh, _pods, mut load) = start(&scratch, "dpage");

    // `ama dashboard` prints the page's URL on the host's loopback.
    let mut cmd = Command::new(ama());
    cmd.args(["dashboard", "--port", "0", "--browser=false"])
        .env("AMA_MESH", &mesh.name);
    let mut dashboard = Proc::spawn("dashboard", scratch.path(), cmd);
    let url = wait_for("ama dashboard's URL", Duration::from_secs(30), || {
        dashboard.assert_running();
        let out = dashboard.out();
        let line = out.lines().next()?.trim().to_string();
        line.starts_with("http://127.0.0.1:").then_some(line)
    });
    assert!(url.ends_with("/mesh"), "{url}");
    let data_url = format!("{url}.json");

    // The data has arrived: the client → server edge with a rate, latency and mTLS (two scrape
    // rounds with traffic between them).
    let edge = wait_for("the edge in /mesh.json", Duration::from_secs(90), || {
        load.assert_running();
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", &data_url])
            .output()
            .ok()?;
        let data: Value = serde_json::from_slice(&out.stdout).ok()?;
        data["edges"]
            .as_array()?
            .iter()
            .find(|e| {
                e["source"] == "ubuntu-deployment.default"
                    && e["destination"] == "httpbin-deployment.default"
                    && e["protocol"] == "http"
                    && e["requestRate"].as_f64().is_some_and(|r| r > 0.0)
                    && e["p99Ms"].is_number()
            })
            .cloned()
    });
    println!("edge: {edge}");
    assert_eq!(edge["mtls"], "mutual_tls", "{edge}");
    assert_eq!(edge["reporter"], "destination", "{edge}");
    assert_eq!(edge["service"], "httpbin-service.default.svc.cluster.local");
    let errors = edge["errorRate"].as_f64().unwrap();
    assert!(errors > 0.0 && errors < 0.5, "one in five is a 500: {edge}");

    // The TCP calls: an edge of their own, in bytes, over mTLS.
    let tcp = wait_for(
        "the TCP edge in /mesh.json",
        Duration::from_secs(60),
        || {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "5", &data_url])
                .output()
                .ok()?;
            let data: Value = serde_json::from_slice(&out.stdout).ok()?;
            data["edges"]
                .as_array()?
                .iter()
                .find(|e| {
                    e["destination"] == "tcp-server.default"
                        && e["bytesRate"].as_f64().is_some_and(|b| b > 0.0)
                })
                .cloned()
        },
    );
    assert_eq!(tcp["protocol"], "tcp", "{tcp}");
    assert_eq!(tcp["source"], "ubuntu-deployment.default", "{tcp}");
    assert_eq!(
        tcp["service"], "tcp-server.default.svc.cluster.local",
        "{tcp}"
    );
    assert_eq!(tcp["mtls"], "mutual_tls", "{tcp}");

    // What the page shows, after its script ran.
    let dom = String::from_utf8(chromium(&["--dump-dom"], &url).stdout).unwrap();
    std::fs::write(scratch.path().join("mesh-page.html"), &dom).unwrap();
    let status = dom.split("id=\"status\"").nth(1).expect("the status line");
    assert!(status.contains("data-state=\"ok\""), "{status:.300}");
    let rows = tags(&dom, "tr", "edge-row");
    let row = rows
        .iter()
        .find(|r| {
            attr(&format!(" {r}"), "data-source") == Some("ubuntu-deployment.default")
                && attr(&format!(" {r}"), "data-destination") == Some("httpbin-deployment.default")
        })
        .unwrap_or_else(|| panic!("no edge row ubuntu → httpbin in the page:\n{dom}"));
    let row = format!(" {row}");
    let rps: f64 = attr(&row, "data-rps").unwrap().parse().unwrap();
    assert!(rps > 0.0, "{row:.400}");
    assert_eq!(attr(&row, "data-mtls"), Some("mutual_tls"));
    assert!(row.contains("<td>mTLS</td>"), "{row:.600}");
    // The graph: the same edge drawn, and a node per workload.
    let drawn = tags(&dom, "g", "edge");
    assert!(
        drawn.iter().any(|g| {
            let g = format!(" {g}");
            attr(&g, "data-source") == Some("ubuntu-deployment.default")
                && attr(&g, "data-mtls") == Some("mutual_tls")
        }),
        "no edge drawn in the SVG"
    );
    assert!(
        rows.iter().any(|r| {
            let r = format!(" {r}");
            attr(&r, "data-destination") == Some("tcp-server.default")
                && r.contains("<td>tcp</td>")
                && r.contains(" B/s</td>")
        }),
        "no TCP edge row in the page"
    );
    for node in [
        "ubuntu-deployment.default",
        "httpbin-deployment.default",
        "tcp-server.default",
    ] {
        assert!(
            dom.contains(&format!("data-node=\"{node}\"")),
            "node {node}"
        );
    }
    // Each proxy's sync state.
    let proxies = tags(&dom, "tr", "proxy-row");
    assert_eq!(proxies.len(), 4, "{proxies:?}");
    for p in &proxies {
        assert_eq!(
            attr(&format!(" {p}"), "data-sync"),
            Some("SYNCED"),
            "{p:.300}"
        );
    }

    // A screenshot, kept in the scratch dir (removed when the test passes) and at
    // /tmp/ama-mesh-page.png.
    let shot = scratch.path().join("mesh-page.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    chromium(&[&shot_arg, "--window-size=1280,900"], &url);
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    // The copy is a convenience: another user's copy there (a shared /tmp) is left alone.
    match std::fs::write("/tmp/ama-mesh-page.png", &png) {
        Ok(()) => println!(
            "screenshot: {} (kept as /tmp/ama-mesh-page.png)",
            shot.display()
        ),
        Err(e) => println!(
            "screenshot: {} (not copied to /tmp/ama-mesh-page.png: {e})",
            shot.display()
        ),
    }
    load.assert_running();
    dashboard.assert_running();
}
