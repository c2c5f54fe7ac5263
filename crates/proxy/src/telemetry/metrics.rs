//! Istio's standard metrics, kept in a prometheus-client registry.
//!
//! Names, label names and label order are Istio's (as its stats filter emits them through
//! Envoy), so dashboards and alerts written for Istio work unchanged:
//! `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes` (histograms with Envoy's default buckets), `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`, `istio_tcp_connections_opened_total` and
//! `istio_tcp_connections_closed_total`. The output is the Prometheus text format 0.0.4, where
//! the `# TYPE` line of a counter carries the `_total` name, as Envoy prints it.
//!
//! Hot path: a request's metric handles (one counter, three histograms) are looked up once per
//! distinct label set and cached by the identity of its `Arc<MetricLabels>` plus the few
//! per-request labels, so a request costs a small hash, a read lock and four atomic updates.
//! That identity only means something if equal label sets share one `Arc`: the traffic side
//! gets its labels through [`Metrics::intern`], which hands out one `Arc` per distinct content.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::flags::ResponseFlags;
use super::record::{MetricLabels, RequestProtocol, RequestRecord};

/// Content type of [`Metrics::encode_prometheus`]: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Envoy's default histogram buckets, which Istio's request duration and size histograms use.
pub const ENVOY_DEFAULT_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Cached label sets beyond this are forgotten (the series stay; only the shortcut goes).
const CACHE_LIMIT: usize = 16 * 1024;

#[derive(Clone, Copy)]
struct EnvoyBuckets;

impl MetricConstructor<Histogram> for EnvoyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(ENVOY_DEFAULT_BUCKETS)
    }
}

type Histograms = Family<RequestLabels, Histogram, EnvoyBuckets>;

/// The metrics registry of one proxy.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Histograms,
    request_bytes: Histograms,
    response_bytes: Histograms,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    pub(crate) access_log_dropped: Counter,
    pub(crate) spans_dropped: Counter,
    pub(crate) spans_sent: Counter,
    uptime: Gauge,
    started: Instant,
    request_cache: RwLock<HashMap<RequestKey, RequestHandles>>,
    interned: RwLock<HashSet<Arc<MetricLabels>>>,
}

impl Metrics {
    /// A registry with every Istio metric registered and no series yet.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Histograms::new_with_constructor(EnvoyBuckets);
        let request_bytes = Histograms::new_with_constructor(EnvoyBuckets);
        let response_bytes = Histograms::new_with_constructor(EnvoyBuckets);
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let access_log_dropped = Counter::default();
        let spans_dropped = Counter::default();
        let spans_sent = Counter::default();
        let live = Gauge::<i64>::default();
        let uptime = Gauge::<i64>::default();
        live.set(1);

        // prometheus-client appends `_total` to counters itself.
        registry.register("istio_requests", "Total requests", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes in bytes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes in bytes",
            response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent during a TCP connection",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received during a TCP connection",
            tcp_received.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "ama_access_log_dropped",
            "Access-log lines dropped because the writer queue was full",
            access_log_dropped.clone(),
        );
        // Envoy's Zipkin tracer counts `tracing.zipkin.spans_sent`; drops are ours (its buffer
        // grows without bound).
        registry.register(
            "ama_tracing_spans_dropped",
            "Trace spans dropped because the exporter queue was full",
            spans_dropped.clone(),
        );
        registry.register(
            "envoy_tracing_zipkin_spans_sent",
            "Trace spans sent to the collector",
            spans_sent.clone(),
        );
        registry.register("envoy_server_live", "1 while the proxy is running", live);
        registry.register(
            "envoy_server_uptime",
            "Seconds since the proxy started",
            uptime.clone(),
        );

        Metrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_sent,
            tcp_received,
            tcp_opened,
            tcp_closed,
            access_log_dropped,
            spans_dropped,
            spans_sent,
            uptime,
            started: Instant::now(),
            request_cache: RwLock::new(HashMap::new()),
            interned: RwLock::new(HashSet::new()),
        }
    }

    /// The shared `Arc` of a label set: equal contents get the same `Arc`, so a request's
    /// handles are found by identity in the cache instead of created anew.
    pub fn intern(&self, labels: MetricLabels) -> Arc<MetricLabels> {
        if let Some(l) = read(&self.interned).get(&labels) {
            return l.clone();
        }
        let mut set = self.interned.write().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = set.get(&labels) {
            return l.clone();
        }
        if set.len() >= CACHE_LIMIT {
            set.clear();
        }
        let l = Arc::new(labels);
        set.insert(l.clone());
        l
    }

    /// Counts one finished request.
    pub fn record_request(&self, record: &RequestRecord) {
        let key = RequestKey {
            peer: PeerKey(record.labels.clone()),
            protocol: record.request_protocol,
            code: record.response_code,
            grpc: record.grpc_status,
            flags: record.response_flags,
        };
        let handles = self.request_handles(key);
        handles.requests.inc();
        // Envoy records whole milliseconds.
        handles.duration.observe(record.duration.as_millis() as f64);
        handles.request_bytes.observe(record.bytes_received as f64);
        handles.response_bytes.observe(record.bytes_sent as f64);
    }

    fn request_handles(&self, key: RequestKey) -> RequestHandles {
        if let Some(h) = read(&self.request_cache).get(&key) {
            return h.clone();
        }
        let labels = key.labels();
        let handles = RequestHandles {
            requests: self.requests.get_or_create_owned(&labels),
            duration: self.duration.get_or_create_owned(&labels),
            request_bytes: self.request_bytes.get_or_create_owned(&labels),
            response_bytes: self.response_bytes.get_or_create_owned(&labels),
        };
        let mut cache = self
            .request_cache
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, handles.clone());
        handles
    }

    /// Counts a TCP connection opened and returns its byte counters.
    pub fn tcp_open(&self, labels: &Arc<MetricLabels>) -> TcpCounters {
        let l = TcpLabels {
            peer: labels.clone(),
            flags: ResponseFlags::NONE,
        };
        self.tcp_opened.get_or_create(&l).inc();
        TcpCounters {
            sent: self.tcp_sent.get_or_create_owned(&l),
            received: self.tcp_received.get_or_create_owned(&l),
        }
    }

    /// Counts a TCP connection closed with its final response flags.
    pub fn tcp_closed(&self, labels: &Arc<MetricLabels>, flags: ResponseFlags) {
        let l = TcpLabels {
            peer: labels.clone(),
            flags,
        };
        self.tcp_closed.get_or_create(&l).inc();
    }

    /// Everything in Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn encode_prometheus(&self) -> String {
        self.uptime.set(self.started.elapsed().as_secs() as i64);
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; an encoder error would only cut the output short.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Envoy admin `/stats` style: each sample as `name{labels}: value`, comments dropped.
    pub fn encode_envoy_stats(&self) -> String {
        let text = self.encode_prometheus();
        let mut out = String::with_capacity(text.len());
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            // The value is after the last space (label values may contain spaces).
            if let Some((name, value)) = line.rsplit_once(' ') {
                let _ = writeln!(out, "{name}: {value}");
            }
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

/// A TCP connection's byte counters (shared atomics).
#[derive(Clone, Debug)]
pub struct TcpCounters {
    /// `istio_tcp_sent_bytes_total`.
    pub sent: Counter,
    /// `istio_tcp_received_bytes_total`.
    pub received: Counter,
}

#[derive(Clone)]
struct RequestHandles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// `Arc<MetricLabels>` compared by identity: the cache key. The cache holds the `Arc`, so the
/// address cannot be reused for other labels while the entry lives.
#[derive(Clone)]
struct PeerKey(Arc<MetricLabels>);

impl PartialEq for PeerKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for PeerKey {}
impl Hash for PeerKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct RequestKey {
    peer: PeerKey,
    protocol: RequestProtocol,
    code: u16,
    grpc: Option<u16>,
    flags: ResponseFlags,
}

impl RequestKey {
    fn labels(&self) -> RequestLabels {
        RequestLabels {
            peer: self.peer.0.clone(),
            protocol: self.protocol,
            code: self.code,
            grpc: self.grpc,
            flags: self.flags,
        }
    }
}

/// The label set of the request metrics, compared by content (two equal peers are one series).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RequestLabels {
    peer: Arc<MetricLabels>,
    protocol: RequestProtocol,
    code: u16,
    grpc: Option<u16>,
    flags: ResponseFlags,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_peer(&self.peer, encoder)?;
        ("request_protocol", self.protocol.as_str()).encode(encoder.encode_label())?;
        ("response_code", Num(Some(self.code))).encode(encoder.encode_label())?;
        ("grpc_response_status", Num(self.grpc)).encode(encoder.encode_label())?;
        ("response_flags", Flags(self.flags)).encode(encoder.encode_label())?;
        (
            "connection_security_policy",
            self.peer.connection_security_policy.as_str(),
        )
            .encode(encoder.encode_label())
    }
}

/// The label set of the TCP metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TcpLabels {
    peer: Arc<MetricLabels>,
    flags: ResponseFlags,
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_peer(&self.peer, encoder)?;
        ("request_protocol", RequestProtocol::Tcp.as_str()).encode(encoder.encode_label())?;
        ("response_flags", Flags(self.flags)).encode(encoder.encode_label())?;
        (
            "connection_security_policy",
            self.peer.connection_security_policy.as_str(),
        )
            .encode(encoder.encode_label())
    }
}

use prometheus_client::encoding::EncodeLabel as _;

fn encode_peer(peer: &MetricLabels, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
    ("reporter", peer.reporter.as_str()).encode(encoder.encode_label())?;
    for (k, v) in peer.peer_pairs() {
        (k, v).encode(encoder.encode_label())?;
    }
    Ok(())
}

/// A number label value, empty when absent (`grpc_response_status=""`).
struct Num(Option<u16>);

impl EncodeLabelValue for Num {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self.0 {
            Some(n) => write!(encoder, "{n}"),
            None => Ok(()),
        }
    }
}

struct Flags(ResponseFlags);

impl EncodeLabelValue for Flags {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.0.write_to(encoder)
    }
}
