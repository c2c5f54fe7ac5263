//! The live mesh page on discovery's monitoring port: `GET /mesh` (one static HTML page, SVG
//! drawn by plain JS, no external assets) and `GET /mesh.json`, which the page polls.
//!
//! What the page shows comes from two places:
//!
//! - the proxies' own metrics: a task ([`MeshView::run`]) scrapes every workload the model knows
//!   whose proxy is connected to this server (`http://<pod IP>:15090/stats/prometheus`, Envoy's
//!   stats port) every
//!   [`SCRAPE_INTERVAL`], at most [`MAX_SCRAPES_AT_ONCE`] at a time, each bounded by
//!   [`SCRAPE_TIMEOUT`] and [`MAX_BODY`]. It runs beside the push loop and shares nothing with it
//!   but the model's `Arc`, so a slow or dead proxy never delays a push. Each round sums Istio's
//!   standard metrics per edge (source workload → destination workload and service); rates and
//!   latency quantiles are taken over the rounds of the last [`WINDOW`], as the dashboards'
//!   `rate(...[1m])` and `histogram_quantile` do;
//! - the ADS server's status (what `/debug/syncz` serves): each proxy's sync state, with the
//!   rule `istioctl proxy-status` uses (SYNCED, NOT SENT, STALE, NACK).
//!
//! An edge is reported by the server side (`reporter="destination"`) when that side's proxy
//! reports it: only it knows whether the connection was mTLS (`connection_security_policy`
//! is `unknown` on the client side, as in Istio). Calls whose server has no sidecar are known
//! from the client side (`reporter="source"`) only, and shown so.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use xds::ads::{AdsServer, ProxyStatus, SyncState, TypeStatus};

use crate::model::Model;
use crate::push::Pusher;

/// The page, built into the binary.
pub const PAGE: &str = include_str!("mesh_page.html");
/// How often the proxies are scraped.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(5);
/// The span rates and quantiles are taken over (the dashboards' `[1m]`).
pub const WINDOW: Duration = Duration::from_secs(60);
/// How long one scrape may take, connect to last byte.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Scrapes in flight at once.
const MAX_SCRAPES_AT_ONCE: usize = 16;
/// The largest metrics body read from one proxy.
const MAX_BODY: usize = 8 << 20;
/// Envoy's (and the sidecar's) Prometheus stats port.
pub const STATS_PORT: u16 = 15090;
/// The path of the stats on [`STATS_PORT`].
const STATS_PATH: &str = "/stats/prometheus";

/// Why one proxy could not be scraped (shown on the page next to it).
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// No answer in time.
    #[error("GET http://{addr}{STATS_PATH}: no answer within {}s", SCRAPE_TIMEOUT.as_secs())]
    Timeout {
        /// The proxy's stats address.
        addr: SocketAddr,
    },
    /// Connecting or the HTTP exchange failed.
    #[error("GET http://{addr}{STATS_PATH}: {message}")]
    Http {
        /// The proxy's stats address.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
    /// Not a 200.
    #[error("GET http://{addr}{STATS_PATH}: status {status}")]
    Status {
        /// The proxy's stats address.
        addr: SocketAddr,
        /// The status code.
        status: u16,
    },
}

/// A workload, as a node of the graph: `name.namespace` of its Deployment (the
/// `source_workload`/`destination_workload` labels), `unknown` for callers outside the mesh.
type NodeKey = (String, String);

/// One edge of the graph: who calls whom through which service, over HTTP(S)/gRPC or TCP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct EdgeKey {
    source: NodeKey,
    destination: NodeKey,
    /// `destination_service` (the FQDN).
    service: String,
    /// `tcp` for the `istio_tcp_*` metrics, else `http`.
    protocol: &'static str,
    /// Which side's proxy reported it (`destination` preferred).
    reporter: String,
}

/// The cumulative counters of one edge, summed over the proxies of one round.
#[derive(Debug, Clone, Default)]
struct Counters {
    requests: f64,
    /// Requests answered 5xx (or with no response, code 0): the dashboards' non-success.
    errors: f64,
    /// Requests or TCP connections reported `connection_security_policy="mutual_tls"`.
    mtls: f64,
    /// Requests or TCP connections in all (the denominator of `mtls`).
    secured_of: f64,
    /// `istio_request_duration_milliseconds` buckets: `le` (as f64 bits, which order as the
    /// floats do for non-negative values and +Inf) → cumulative count.
    buckets: BTreeMap<u64, f64>,
    /// `istio_tcp_sent_bytes_total + istio_tcp_received_bytes_total`.
    tcp_bytes: f64,
}

/// One scrape round: the summed counters and how each proxy answered.
#[derive(Debug, Clone)]
struct Round {
    at: Instant,
    edges: BTreeMap<EdgeKey, Counters>,
    /// `pod.namespace` → `None` when scraped, else why not.
    scraped: BTreeMap<String, Option<String>>,
}

/// The scraped rounds of the last [`WINDOW`] and the JSON the page reads.
pub struct MeshView {
    pusher: Arc<Pusher>,
    ads: AdsServer,
    /// The graph built from the last round (edges and scrape state; sync state is added per
    /// request, it is cheap and always current).
    graph: ArcSwap<Value>,
}

impl MeshView {
    /// A view of the mesh `pusher` models and `ads` serves; nothing is scraped before
    /// [`MeshView::run`].
    pub fn new(pusher: Arc<Pusher>, ads: AdsServer) -> MeshView {
        MeshView {
            pusher,
            ads,
            graph: ArcSwap::from_pointee(json!({"nodes": [], "edges": [], "scraped": {}})),
        }
    }

    /// Scrapes every [`SCRAPE_INTERVAL`] until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(SCRAPE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds = VecDeque::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let model = self.pusher.model();
            let connected: BTreeSet<String> = self
                .ads
                .status()
                .iter()
                .map(|p| proxy_pod(&p.node_id).to_string())
                .collect();
            let round = tokio::select! {
                _ = stop.cancelled() => return,
                round = scrape_round(&model, &connected) => round,
            };
            rounds.push_back(round);
            // The oldest round kept is the last one at least WINDOW old: rates span the window.
            while rounds.len() > 2 && rounds[1].at.elapsed() >= WINDOW {
                rounds.pop_front();
            }
            if let (Some(first), Some(last)) = (rounds.front(), rounds.back()) {
                self.graph.store(Arc::new(graph(&model, first, last)));
            }
        }
    }

    /// `/mesh.json`: the graph of the last round with each proxy's sync state now.
    pub fn json(&self) -> Value {
        let mut value = Value::clone(&self.graph.load());
        let model = self.pusher.model();
        let proxies = proxies(&model, &self.ads.status(), &value["scraped"]);
        value["proxies"] = proxies;
        value["updated"] = json!(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default()
        );
        value["windowSeconds"] = json!(WINDOW.as_secs());
        value["intervalSeconds"] = json!(SCRAPE_INTERVAL.as_secs());
        value
    }
}

/// The workload's node: its Deployment name (as the metrics' `*_workload` labels carry it).
fn node_of(w: &xds::Workload) -> NodeKey {
    (
        w.workload_name.clone().unwrap_or_else(|| w.name.clone()),
        w.namespace.clone(),
    )
}

/// `pod.namespace` of a node id (`sidecar~10.0.0.5~pod.ns~ns.svc.cluster.local`).
fn proxy_pod(node_id: &str) -> &str {
    node_id.split('~').nth(2).unwrap_or(node_id)
}

/// Scrapes once every workload of the model whose proxy is connected (`connected`: their
/// `pod.namespace`): a workload without one has no stats port to ask.
async fn scrape_round(model: &Model, connected: &BTreeSet<String>) -> Round {
    let targets: Vec<(String, IpAddr)> = model
        .workloads
        .iter()
        .filter_map(|w| {
            let pod = format!("{}.{}", w.name, w.namespace);
            let ip = w.addresses.first()?;
            connected.contains(&pod).then_some((pod, *ip))
        })
        .collect();
    let results: Vec<(String, Result<String, ScrapeError>)> = futures_util::stream::iter(targets)
        .map(|(pod, ip)| async move {
            let addr = SocketAddr::new(ip, STATS_PORT);
            (pod, scrape(addr).await)
        })
        .buffer_unordered(MAX_SCRAPES_AT_ONCE)
        .collect()
        .await;
    let mut round = Round {
        at: Instant::now(),
        edges: BTreeMap::new(),
        scraped: BTreeMap::new(),
    };
    for (pod, result) in results {
        match result {
            Ok(text) => {
                add_metrics(&mut round.edges, &text);
                round.scraped.insert(pod, None);
            }
            Err(e) => {
                tracing::debug!("mesh page: {pod}: {e}");
                round.scraped.insert(pod, Some(e.to_string()));
            }
        }
    }
    round
}

/// `GET /stats/prometheus` on one proxy.
async fn scrape(addr: SocketAddr) -> Result<String, ScrapeError> {
    let http = |e: &dyn std::fmt::Display| ScrapeError::Http {
        addr,
        message: e.to_string(),
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| http(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| http(&e))?;
        let conn = tokio::spawn(conn);
        let req = http::Request::builder()
            .uri(STATS_PATH)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::new())
            .map_err(|e| http(&e))?;
        let res = sender.send_request(req).await.map_err(|e| http(&e))?;
        let status = res.status().as_u16();
        if status != 200 {
            conn.abort();
            return Err(ScrapeError::Status { addr, status });
        }
        let body = Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| http(&*e))?
            .to_bytes();
        conn.abort();
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, exchange)
        .await
        .map_err(|_| ScrapeError::Timeout { addr })?
}

/// Adds one proxy's Istio metrics (Prometheus text) to the round's edges.
fn add_metrics(edges: &mut BTreeMap<EdgeKey, Counters>, text: &str) {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = match prometheus_parse::Scrape::parse(lines) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("mesh page: metrics not parsed: {e}");
            return;
        }
    };
    for sample in &scrape.samples {
        let (protocol, what) = match sample.metric.as_str() {
            "istio_requests_total" => ("http", Metric::Requests),
            "istio_request_duration_milliseconds" => ("http", Metric::Duration),
            "istio_tcp_sent_bytes_total" | "istio_tcp_received_bytes_total" => {
                ("tcp", Metric::TcpBytes)
            }
            "istio_tcp_connections_opened_total" => ("tcp", Metric::TcpOpened),
            _ => continue,
        };
        let labels = &sample.labels;
        let label = |k: &str| labels.get(k).unwrap_or("unknown").to_string();
        let key = EdgeKey {
            source: (label("source_workload"), label("source_workload_namespace")),
            destination: (
                label("destination_workload"),
                label("destination_workload_namespace"),
            ),
            service: label("destination_service"),
            protocol,
            reporter: label("reporter"),
        };
        let counters = edges.entry(key).or_default();
        let mtls = labels.get("connection_security_policy") == Some("mutual_tls");
        match (what, &sample.value) {
            (Metric::Duration, prometheus_parse::Value::Histogram(buckets)) => {
                for b in buckets {
                    *counters.buckets.entry(b.less_than.to_bits()).or_default() += b.count;
                }
            }
            (Metric::Duration, _) => {}
            (_, value) => {
                let v = scalar(value);
                match what {
                    Metric::Requests => {
                        counters.requests += v;
                        let code = labels.get("response_code").unwrap_or("");
                        if code.starts_with('5') || code == "0" {
                            counters.errors += v;
                        }
                        counters.secured_of += v;
                        if mtls {
                            counters.mtls += v;
                        }
                    }
                    Metric::TcpOpened => {
                        counters.requests += v;
                        counters.secured_of += v;
                        if mtls {
                            counters.mtls += v;
                        }
                    }
                    Metric::TcpBytes => counters.tcp_bytes += v,
                    Metric::Duration => {}
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Metric {
    Requests,
    Duration,
    TcpBytes,
    TcpOpened,
}

fn scalar(value: &prometheus_parse::Value) -> f64 {
    match value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        _ => 0.0,
    }
}

/// The increase of a counter between two rounds, as Prometheus's `increase` counts a reset:
/// a smaller value means the proxy restarted, and all of it is new.
fn increase(first: f64, last: f64) -> f64 {
    if last >= first { last - first } else { last }
}

/// Prometheus's `histogram_quantile`: the bucket the `q`th observation falls in, interpolated
/// linearly within it (its lower bound is the previous bucket's `le`, 0 for the first); an
/// observation in the +Inf bucket is the largest finite bound. `None` without observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last().map(|b| b.1)?;
    if total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = count - lower.1;
            if within <= 0.0 {
                return Some(le);
            }
            return Some(lower.0 + (le - lower.0) * (rank - lower.1) / within);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// The graph over the window `first..=last`: every workload of the model as a node, every edge
/// seen in `last` with its rates.
fn graph(model: &Model, first: &Round, last: &Round) -> Value {
    let seconds = last.at.duration_since(first.at).as_secs_f64();
    let mut nodes: BTreeMap<NodeKey, Value> = BTreeMap::new();
    for w in &model.workloads {
        let key = node_of(w);
        let node = nodes.entry(key.clone()).or_insert_with(|| {
            json!({
                "id": format!("{}.{}", key.0, key.1),
                "workload": key.0,
                "namespace": key.1,
                "app": w.canonical_name.clone()
                    .or_else(|| w.labels.get("app").cloned())
                    .unwrap_or_else(|| key.0.clone()),
                "sidecar": w.tls_mode == xds::TlsMode::Istio,
                "pods": [],
            })
        });
        if let Some(pods) = node["pods"].as_array_mut() {
            pods.push(json!(format!("{}.{}", w.name, w.namespace)));
        }
    }
    // The server side's report of an edge wins; the client side's only fills in calls no
    // server-side proxy reported.
    let destination_reported: BTreeSet<(&NodeKey, &NodeKey, &str, &str)> = last
        .edges
        .keys()
        .filter(|k| k.reporter == "destination")
        .map(|k| (&k.source, &k.destination, k.service.as_str(), k.protocol))
        .collect();
    let mut edges = Vec::new();
    for (key, now) in &last.edges {
        let shadowed = key.reporter != "destination"
            && destination_reported.contains(&(
                &key.source,
                &key.destination,
                key.service.as_str(),
                key.protocol,
            ));
        if shadowed || (key.reporter != "destination" && key.reporter != "source") {
            continue;
        }
        // With one round only, everything counted so far (rates need two).
        let before = if first.at == last.at {
            None
        } else {
            first.edges.get(key)
        };
        let delta = |f: fn(&Counters) -> f64| increase(before.map_or(0.0, f), f(now));
        let requests = delta(|c| c.requests);
        let errors = delta(|c| c.errors);
        let rate = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
        // Quantiles over the window's observations; the whole life of the counters until a
        // second round exists.
        let window_buckets: Vec<(f64, f64)> = now
            .buckets
            .iter()
            .map(|(le, count)| {
                let old = before
                    .and_then(|b| b.buckets.get(le).copied())
                    .unwrap_or(0.0);
                (f64::from_bits(*le), increase(old, *count))
            })
            .collect();
        let mtls = if key.reporter != "destination" {
            "unknown"
        } else if now.secured_of > 0.0 && now.mtls >= now.secured_of {
            "mutual_tls"
        } else if now.mtls > 0.0 {
            "mixed"
        } else {
            "none"
        };
        for node in [&key.source, &key.destination] {
            nodes.entry(node.clone()).or_insert_with(|| {
                json!({
                    "id": format!("{}.{}", node.0, node.1),
                    "workload": node.0,
                    "namespace": node.1,
                    "app": node.0,
                    "sidecar": false,
                    "pods": [],
                })
            });
        }
        edges.push(json!({
            "source": format!("{}.{}", key.source.0, key.source.1),
            "destination": format!("{}.{}", key.destination.0, key.destination.1),
            "service": key.service,
            "protocol": key.protocol,
            "reporter": key.reporter,
            "requestRate": rate(requests),
            "errorRate": if requests > 0.0 { errors / requests } else { 0.0 },
            "requests": now.requests,
            "p50Ms": histogram_quantile(0.5, &window_buckets),
            "p99Ms": histogram_quantile(0.99, &window_buckets),
            "bytesRate": rate(delta(|c| c.tcp_bytes)),
            "mtls": mtls,
        }));
    }
    let scraped: serde_json::Map<String, Value> = last
        .scraped
        .iter()
        .map(|(pod, error)| (pod.clone(), json!(error)))
        .collect();
    json!({
        "nodes": nodes.into_values().collect::<Vec<_>>(),
        "edges": edges,
        "scraped": scraped,
        "seconds": seconds,
    })
}

/// One row per connected proxy: its pod, workload node, sync state (the worst of its types)
/// and whether its metrics were scraped.
fn proxies(model: &Model, status: &[ProxyStatus], scraped: &Value) -> Value {
    let mut rows: Vec<Value> = status
        .iter()
        .map(|p| {
            let pod = proxy_pod(&p.node_id);
            let node = model
                .workloads
                .iter()
                .find(|w| pod.split_once('.') == Some((w.name.as_str(), w.namespace.as_str())))
                .map(node_of)
                .map(|(w, ns)| format!("{w}.{ns}"));
            let sync = p
                .types
                .values()
                .map(TypeStatus::sync_state)
                .max()
                .unwrap_or(SyncState::NotSent);
            let types: serde_json::Map<String, Value> = p
                .types
                .iter()
                .map(|(t, s)| (t.name().to_string(), json!(s.sync_state().text())))
                .collect();
            json!({
                "proxy": pod,
                "node": node,
                "sync": sync.text(),
                "types": types,
                "scrapeError": scraped.get(pod).cloned().unwrap_or(Value::Null),
                "scraped": scraped.get(pod).is_some_and(Value::is_null),
            })
        })
        .collect();
    rows.sort_by(|a, b| a["proxy"].as_str().cmp(&b["proxy"].as_str()));
    Value::Array(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_within_the_bucket_as_prometheus_does() {
        // 10 observations: 4 ≤ 1ms, 9 ≤ 5ms, all ≤ 10ms.
        let b = [(1.0, 4.0), (5.0, 9.0), (10.0, 10.0), (f64::INFINITY, 10.0)];
        // rank 5 falls in (1, 5]: 1 + 4 * (5 - 4) / 5 = 1.8
        assert!((histogram_quantile(0.5, &b).unwrap() - 1.8).abs() < 1e-9);
        // rank 9.9 in (5, 10]: 5 + 5 * 0.9 = 9.5
        assert!((histogram_quantile(0.99, &b).unwrap() - 9.5).abs() < 1e-9);
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        // Everything above the last finite bound: that bound.
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 3.0)]),
            Some(1.0)
        );
    }

    const TEXT: &str = r#"# TYPE istio_requests counter
istio_requests_total{reporter="destination",source_workload="sleep",source_workload_namespace="default",destination_workload="httpbin",destination_workload_namespace="default",destination_service="httpbin.default.svc.cluster.local",response_code="200",connection_security_policy="mutual_tls"} 8
istio_requests_total{reporter="destination",source_workload="sleep",source_workload_namespace="default",destination_workload="httpbin",destination_workload_namespace="default",destination_service="httpbin.default.svc.cluster.local",response_code="503",connection_security_policy="mutual_tls"} 2
istio_requests_total{reporter="source",source_workload="sleep",source_workload_namespace="default",destination_workload="httpbin",destination_workload_namespace="default",destination_service="httpbin.default.svc.cluster.local",response_code="200",connection_security_policy="unknown"} 10
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_bucket{reporter="destination",source_workload="sleep",source_workload_namespace="default",destination_workload="httpbin",destination_workload_namespace="default",destination_service="httpbin.default.svc.cluster.local",response_code="200",connection_security_policy="mutual_tls",le="1.0"} 4
istio_request_duration_milliseconds_bucket{reporter="destination",source_workload="sleep",source_workload_namespace="default",destination_workload="httpbin",destination_workload_namespace="default",destination_service="httpbin.default.svc.cluster.local",response_code="200",connection_security_policy="mutual_tls",le="5.0"} 9
istio_request_duration_milliseconds_bucket{reporter="destination",source_workload="sleep",source_workload_namespace="default",destination_workload="httpbin",destination_workload_namespace="default",destination_service="httpbin.default.svc.cluster.local",response_code="200",connection_security_policy="mutual_tls",le="+Inf"} 10
istio_request_duration_milliseconds_sum{reporter="destination",source_workload="sleep",source_workload_namespace="default",destination_workload="httpbin",destination_workload_namespace="default",destination_service="httpbin.default.svc.cluster.local",response_code="200",connection_security_policy="mutual_tls"} 25
"#;

    fn round(at: Instant, scale: f64) -> Round {
        let text = TEXT.replace(" 8\n", &format!(" {}\n", 8.0 * scale));
        let mut edges = BTreeMap::new();
        add_metrics(&mut edges, &text);
        Round {
            at,
            edges,
            scraped: BTreeMap::from([("sleep-0.default".to_string(), None)]),
        }
    }

    #[test]
    fn an_edge_is_the_servers_report_with_rate_errors_latency_and_mtls() {
        let t0 = Instant::now();
        let first = round(t0, 1.0);
        // 10 s later: 8 more successes.
        let last = round(t0 + Duration::from_secs(10), 2.0);
        let g = graph(&Model::default(), &first, &last);
        let edges = g["edges"].as_array().unwrap();
        // The client's report of the same call is shadowed by the server's.
        assert_eq!(edges.len(), 1, "{g:#}");
        let e = &edges[0];
        assert_eq!(e["source"], "sleep.default");
        assert_eq!(e["destination"], "httpbin.default");
        assert_eq!(e["reporter"], "destination");
        assert_eq!(e["mtls"], "mutual_tls");
        assert!((e["requestRate"].as_f64().unwrap() - 0.8).abs() < 1e-9);
        // No new errors within the window.
        assert_eq!(e["errorRate"], 0.0);
        // The histogram did not move: no observations in the window.
        assert_eq!(e["p50Ms"], Value::Null);
        // Both ends are nodes even when the model does not know them.
        assert_eq!(g["nodes"].as_array().unwrap().len(), 2);

        // A single round: its whole life.
        let g = graph(&Model::default(), &first, &first);
        let e = &g["edges"][0];
        assert!((e["p50Ms"].as_f64().unwrap() - 1.8).abs() < 1e-9);
        assert!((e["errorRate"].as_f64().unwrap() - 0.2).abs() < 1e-9);
    }

    #[test]
    fn tcp_edges_count_connections_and_bytes_in_both_directions() {
        let tcp = |opened: u32, sent: u32, received: u32| {
            let labels = r#"reporter="destination",source_workload="sleep",source_workload_namespace="default",destination_workload="db",destination_workload_namespace="default",destination_service="db.default.svc.cluster.local",connection_security_policy="mutual_tls""#;
            format!(
                "# TYPE istio_tcp_connections_opened counter\n\
                 istio_tcp_connections_opened_total{{{labels}}} {opened}\n\
                 # TYPE istio_tcp_sent_bytes counter\n\
                 istio_tcp_sent_bytes_total{{{labels}}} {sent}\n\
                 # TYPE istio_tcp_received_bytes counter\n\
                 istio_tcp_received_bytes_total{{{labels}}} {received}\n"
            )
        };
        let t0 = Instant::now();
        let round = |at, text: &str| {
            let mut edges = BTreeMap::new();
            add_metrics(&mut edges, text);
            Round {
                at,
                edges,
                scraped: BTreeMap::new(),
            }
        };
        let first = round(t0, &tcp(1, 100, 50));
        let last = round(t0 + Duration::from_secs(5), &tcp(3, 600, 150));
        let g = graph(&Model::default(), &first, &last);
        let e = &g["edges"][0];
        assert_eq!(e["protocol"], "tcp", "{g:#}");
        assert_eq!(e["destination"], "db.default");
        assert_eq!(e["mtls"], "mutual_tls");
        // (500 + 100) bytes and 2 connections in 5 s.
        assert!(
            (e["bytesRate"].as_f64().unwrap() - 120.0).abs() < 1e-9,
            "{e}"
        );
        assert!(
            (e["requestRate"].as_f64().unwrap() - 0.4).abs() < 1e-9,
            "{e}"
        );
        assert_eq!(e["p50Ms"], Value::Null);
    }

    #[test]
    fn sync_follows_istioctl() {
        let mut t = TypeStatus::default();
        assert_eq!(t.sync_state(), SyncState::NotSent);
        t.sent = Some("1".into());
        assert_eq!(t.sync_state(), SyncState::Stale { never_acked: true });
        t.acked = Some("1".into());
        t.latest = Some("1".into());
        assert_eq!(t.sync_state(), SyncState::Synced);
        t.latest = Some("2".into());
        assert_eq!(t.sync_state(), SyncState::Stale { never_acked: false });
        t.sent = Some("2".into());
        t.nacked = Some(Box::new(xds::ads::Nack {
            version: "2".into(),
            nonce: "n".into(),
            error: "bad".into(),
            at: std::time::SystemTime::now(),
        }));
        assert_eq!(t.sync_state(), SyncState::Nack);
        assert_eq!(SyncState::parse("NACK"), Some(SyncState::Nack));
    }
}
