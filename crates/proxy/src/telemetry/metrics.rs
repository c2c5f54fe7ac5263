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
//!
//! The Telemetry API's overrides ([`MetricRules`], per side) disable a side or a metric, or
//! change a metric's labels: such a series is keyed by its final label pairs
//! ([`Series::Custom`]), so two requests whose labels end up equal (a label removed) count in
//! one series; labels that end up as a standard set (values changed in place) are that
//! standard series, so the output never holds one label set twice. Those are computed per request, with the CEL values evaluated then; the
//! standard series keep the cached path above.

use std::borrow::Cow;
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

use super::expr::{Expr, Subject};
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

type Histograms = Family<Series<RequestLabels>, Histogram, EnvoyBuckets>;

/// The metrics registry of one proxy.
pub struct Metrics {
    registry: Registry,
    requests: Family<Series<RequestLabels>, Counter>,
    duration: Histograms,
    request_bytes: Histograms,
    response_bytes: Histograms,
    tcp_sent: Family<Series<TcpLabels>, Counter>,
    tcp_received: Family<Series<TcpLabels>, Counter>,
    tcp_opened: Family<Series<TcpLabels>, Counter>,
    tcp_closed: Family<Series<TcpLabels>, Counter>,
    pub(crate) access_log_dropped: Counter,
    pub(crate) spans_dropped: Counter,
    pub(crate) spans_sent: super::spans::SentCounters,
    uptime: Gauge,
    started: Instant,
    request_cache: RwLock<HashMap<RequestKey, RequestHandles>>,
    interned: RwLock<HashSet<Arc<MetricLabels>>>,
}

impl Metrics {
    /// A registry with every Istio metric registered and no series yet.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<Series<RequestLabels>, Counter>::default();
        let duration = Histograms::new_with_constructor(EnvoyBuckets);
        let request_bytes = Histograms::new_with_constructor(EnvoyBuckets);
        let response_bytes = Histograms::new_with_constructor(EnvoyBuckets);
        let tcp_sent = Family::<Series<TcpLabels>, Counter>::default();
        let tcp_received = Family::<Series<TcpLabels>, Counter>::default();
        let tcp_opened = Family::<Series<TcpLabels>, Counter>::default();
        let tcp_closed = Family::<Series<TcpLabels>, Counter>::default();
        let access_log_dropped = Counter::default();
        let spans_dropped = Counter::default();
        let spans_sent = super::spans::SentCounters::default();
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
        // Envoy's tracers count `tracing.zipkin.spans_sent` and
        // `tracing.opentelemetry.spans_sent`; drops are ours (the Zipkin tracer's buffer
        // grows without bound).
        registry.register(
            "ama_tracing_spans_dropped",
            "Trace spans dropped because the exporter queue was full",
            spans_dropped.clone(),
        );
        registry.register(
            "envoy_tracing_zipkin_spans_sent",
            "Trace spans sent to a Zipkin collector",
            spans_sent.zipkin.clone(),
        );
        registry.register(
            "envoy_tracing_opentelemetry_spans_sent",
            "Trace spans sent to an OpenTelemetry collector",
            spans_sent.opentelemetry.clone(),
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
        let handles = self.request_handles(RequestKey::of(record));
        handles.requests.inc();
        // Envoy records whole milliseconds.
        handles.duration.observe(record.duration.as_millis() as f64);
        handles.request_bytes.observe(record.bytes_received as f64);
        handles.response_bytes.observe(record.bytes_sent as f64);
    }

    /// Counts one finished request under the Telemetry API's `rules` for its side (`None`:
    /// the standard metrics, as [`Metrics::record_request`]).
    pub(crate) fn record_request_with(&self, record: &RequestRecord, rules: Option<&MetricRules>) {
        let Some(rules) = rules else {
            return self.record_request(record);
        };
        if rules.disabled {
            return;
        }
        // Not the cached handles: they would make a (zero) series of every metric, the ones
        // overridden or disabled too.
        let labels = RequestKey::of(record).labels();
        let subject = Subject::Http(record);
        let mut custom = Custom::default();
        let mut series = |metric: usize| -> Option<Series<RequestLabels>> {
            let rule = &rules.metrics[metric];
            (!rule.disabled).then(|| custom.series(&labels, &rule.tags, subject))
        };
        if let Some(s) = series(REQUEST_COUNT) {
            self.requests.get_or_create(&s).inc();
        }
        // Envoy records whole milliseconds.
        for (metric, family, value) in [
            (
                REQUEST_DURATION,
                &self.duration,
                record.duration.as_millis() as f64,
            ),
            (
                REQUEST_SIZE,
                &self.request_bytes,
                record.bytes_received as f64,
            ),
            (
                RESPONSE_SIZE,
                &self.response_bytes,
                record.bytes_sent as f64,
            ),
        ] {
            if let Some(s) = series(metric) {
                family.get_or_create(&s).observe(value);
            }
        }
    }

    fn request_handles(&self, key: RequestKey) -> RequestHandles {
        if let Some(h) = read(&self.request_cache).get(&key) {
            return h.clone();
        }
        let labels = Series::Standard(key.labels());
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
        let l = Series::Standard(TcpLabels {
            peer: labels.clone(),
            flags: ResponseFlags::NONE,
        });
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
        self.tcp_closed.get_or_create(&Series::Standard(l)).inc();
    }

    /// [`Metrics::tcp_open`] under the Telemetry API's `rules` for the connection's side, the
    /// CEL values evaluated on `subject` (the connection as accepted). A disabled byte counter
    /// is one no series holds: adding to it shows nowhere.
    pub(crate) fn tcp_open_with(
        &self,
        labels: &Arc<MetricLabels>,
        rules: Option<&MetricRules>,
        subject: Subject<'_>,
    ) -> TcpCounters {
        let Some(rules) = rules else {
            return self.tcp_open(labels);
        };
        let l = TcpLabels {
            peer: labels.clone(),
            flags: ResponseFlags::NONE,
        };
        let mut custom = Custom::default();
        let mut counter = |metric: usize, family: &Family<Series<TcpLabels>, Counter>| {
            let rule = &rules.metrics[metric];
            if rules.disabled || rule.disabled {
                return Counter::default();
            }
            family.get_or_create_owned(&custom.series(&l, &rule.tags, subject))
        };
        counter(TCP_OPENED, &self.tcp_opened).inc();
        TcpCounters {
            sent: counter(TCP_SENT, &self.tcp_sent),
            received: counter(TCP_RECEIVED, &self.tcp_received),
        }
    }

    /// [`Metrics::tcp_closed`] under the Telemetry API's `rules`, evaluated on `subject`.
    pub(crate) fn tcp_closed_with(
        &self,
        labels: &Arc<MetricLabels>,
        flags: ResponseFlags,
        rules: Option<&MetricRules>,
        subject: Subject<'_>,
    ) {
        let Some(rules) = rules else {
            return self.tcp_closed(labels, flags);
        };
        let rule = &rules.metrics[TCP_CLOSED];
        if rules.disabled || rule.disabled {
            return;
        }
        let l = TcpLabels {
            peer: labels.clone(),
            flags,
        };
        let s = Custom::default().series(&l, &rule.tags, subject);
        self.tcp_closed.get_or_create(&s).inc();
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
    fn of(record: &RequestRecord) -> RequestKey {
        RequestKey {
            peer: PeerKey(record.labels.clone()),
            protocol: record.request_protocol,
            code: record.response_code,
            grpc: record.grpc_status,
            flags: record.response_flags,
        }
    }

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

impl StandardLabels for RequestLabels {
    fn standard_equal_to(&self, pairs: &[(Cow<'static, str>, String)]) -> Option<RequestLabels> {
        if !same_names(self, pairs) {
            return None;
        }
        let (peer, value) = peer_from_pairs(pairs)?;
        let candidate = RequestLabels {
            peer: Arc::new(peer),
            protocol: match value("request_protocol")? {
                "http" => RequestProtocol::Http,
                "grpc" => RequestProtocol::Grpc,
                "tcp" => RequestProtocol::Tcp,
                _ => return None,
            },
            code: value("response_code")?.parse().ok()?,
            grpc: match value("grpc_response_status")? {
                "" => None,
                n => Some(n.parse().ok()?),
            },
            flags: value("response_flags")?.parse().ok()?,
        };
        // Only a value that prints back as it was given ("200", not "0200").
        (candidate.pairs() == pairs).then_some(candidate)
    }

    fn visit(&self, f: &mut dyn FnMut(&'static str, &dyn Display) -> fmt::Result) -> fmt::Result {
        visit_peer(&self.peer, f)?;
        f("request_protocol", &self.protocol.as_str())?;
        f("response_code", &Num(Some(self.code)))?;
        f("grpc_response_status", &Num(self.grpc))?;
        f("response_flags", &Flags(self.flags))?;
        f(
            "connection_security_policy",
            &self.peer.connection_security_policy.as_str(),
        )
    }
}

/// The label set of the TCP metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TcpLabels {
    peer: Arc<MetricLabels>,
    flags: ResponseFlags,
}

impl StandardLabels for TcpLabels {
    fn standard_equal_to(&self, pairs: &[(Cow<'static, str>, String)]) -> Option<TcpLabels> {
        if !same_names(self, pairs) {
            return None;
        }
        let (peer, value) = peer_from_pairs(pairs)?;
        let candidate = TcpLabels {
            peer: Arc::new(peer),
            flags: value("response_flags")?.parse().ok()?,
        };
        (value("request_protocol")? == RequestProtocol::Tcp.as_str() && candidate.pairs() == pairs)
            .then_some(candidate)
    }

    fn visit(&self, f: &mut dyn FnMut(&'static str, &dyn Display) -> fmt::Result) -> fmt::Result {
        visit_peer(&self.peer, f)?;
        f("request_protocol", &RequestProtocol::Tcp.as_str())?;
        f("response_flags", &Flags(self.flags))?;
        f(
            "connection_security_policy",
            &self.peer.connection_security_policy.as_str(),
        )
    }
}

use prometheus_client::encoding::EncodeLabel as _;
use std::fmt::{self, Display};

/// A standard label set: its labels in Istio's order, for encoding and for overrides.
trait StandardLabels {
    /// Calls `f` with each label's name and value, in order.
    fn visit(&self, f: &mut dyn FnMut(&'static str, &dyn Display) -> fmt::Result) -> fmt::Result;

    /// The labels as owned pairs, for a Telemetry API override to edit.
    fn pairs(&self) -> Vec<(Cow<'static, str>, String)> {
        let mut out = Vec::with_capacity(26);
        let _ = self.visit(&mut |k, v| {
            out.push((Cow::Borrowed(k), v.to_string()));
            Ok(())
        });
        out
    }

    /// A label set of this kind whose labels print exactly as `pairs`, if there is one (the
    /// same names in the same order, each value one this kind can hold): an override that
    /// only changed standard values in place, which must count in the standard series it
    /// equals, or the output would hold that series twice.
    fn standard_equal_to(&self, pairs: &[(Cow<'static, str>, String)]) -> Option<Self>
    where
        Self: Sized;
}

/// The peer labels of `pairs` (already checked to be named as the standard ones), and the
/// value of each other label by name.
fn peer_from_pairs<'p>(
    pairs: &'p [(Cow<'static, str>, String)],
) -> Option<(MetricLabels, impl Fn(&str) -> Option<&'p str>)> {
    let value = move |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let reporter = match value("reporter")? {
        "source" => super::record::Reporter::Source,
        "destination" => super::record::Reporter::Destination,
        _ => return None,
    };
    let mut l = MetricLabels::unknown(reporter);
    let fields: [&mut Arc<str>; 19] = [
        &mut l.source_workload,
        &mut l.source_canonical_service,
        &mut l.source_canonical_revision,
        &mut l.source_workload_namespace,
        &mut l.source_principal,
        &mut l.source_app,
        &mut l.source_version,
        &mut l.source_cluster,
        &mut l.destination_workload,
        &mut l.destination_workload_namespace,
        &mut l.destination_principal,
        &mut l.destination_app,
        &mut l.destination_version,
        &mut l.destination_service,
        &mut l.destination_canonical_service,
        &mut l.destination_canonical_revision,
        &mut l.destination_service_name,
        &mut l.destination_service_namespace,
        &mut l.destination_cluster,
    ];
    // `peer_pairs` order, which is `visit_peer`'s after the reporter.
    for (field, (_, v)) in fields.into_iter().zip(pairs.iter().skip(1)) {
        *field = Arc::from(v.as_str());
    }
    l.connection_security_policy = match value("connection_security_policy")? {
        "mutual_tls" => super::record::SecurityPolicy::MutualTls,
        "none" => super::record::SecurityPolicy::None,
        "unknown" => super::record::SecurityPolicy::Unknown,
        _ => return None,
    };
    Some((l, value))
}

/// `pairs` has `labels`' names in their order.
fn same_names(labels: &impl StandardLabels, pairs: &[(Cow<'static, str>, String)]) -> bool {
    let (mut i, mut same) = (0, true);
    let _ = labels.visit(&mut |k, _| {
        same &= pairs.get(i).is_some_and(|p| p.0 == k);
        i += 1;
        Ok(())
    });
    same && i == pairs.len()
}

fn visit_peer(
    peer: &MetricLabels,
    f: &mut dyn FnMut(&'static str, &dyn Display) -> fmt::Result,
) -> fmt::Result {
    f("reporter", &peer.reporter.as_str())?;
    for (k, v) in peer.peer_pairs() {
        f(k, &v)?;
    }
    Ok(())
}

/// A label value written as it displays.
struct Shown<'a>(&'a dyn Display);

impl EncodeLabelValue for Shown<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

/// A number label value, empty when absent (`grpc_response_status=""`).
struct Num(Option<u16>);

impl Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => Ok(()),
        }
    }
}

struct Flags(ResponseFlags);

impl Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write_to(f)
    }
}

/// Label names and values in order, shared.
type Pairs = Arc<[(Cow<'static, str>, String)]>;

/// A series' labels: the standard set, or the pairs the Telemetry API's tag overrides made of
/// it (compared by content, so equal pairs are one series).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Series<L> {
    Standard(L),
    Custom(Pairs),
}

impl<L: StandardLabels> EncodeLabelSet for Series<L> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Series::Standard(l) => {
                l.visit(&mut |k, v| (k, Shown(v)).encode(encoder.encode_label()))
            }
            Series::Custom(pairs) => {
                for (k, v) in pairs.iter() {
                    (k.as_ref(), v.as_str()).encode(encoder.encode_label())?;
                }
                Ok(())
            }
        }
    }
}

/// Index of each Istio metric in [`MetricRules::metrics`].
pub(crate) const REQUEST_COUNT: usize = 0;
pub(crate) const REQUEST_DURATION: usize = 1;
pub(crate) const REQUEST_SIZE: usize = 2;
pub(crate) const RESPONSE_SIZE: usize = 3;
pub(crate) const TCP_OPENED: usize = 4;
pub(crate) const TCP_CLOSED: usize = 5;
pub(crate) const TCP_SENT: usize = 6;
pub(crate) const TCP_RECEIVED: usize = 7;

/// The index of a metric the proxy reports; `None` for gRPC message counts (not reported).
pub(crate) fn metric_index(m: xds::IstioMetric) -> Option<usize> {
    use xds::IstioMetric as M;
    match m {
        M::RequestCount => Some(REQUEST_COUNT),
        M::RequestDuration => Some(REQUEST_DURATION),
        M::RequestSize => Some(REQUEST_SIZE),
        M::ResponseSize => Some(RESPONSE_SIZE),
        M::TcpOpenedConnections => Some(TCP_OPENED),
        M::TcpClosedConnections => Some(TCP_CLOSED),
        M::TcpSentBytes => Some(TCP_SENT),
        M::TcpReceivedBytes => Some(TCP_RECEIVED),
        M::GrpcRequestMessages | M::GrpcResponseMessages => None,
    }
}

/// The Telemetry API's metrics of one side, compiled (`xds::ModeMetrics`).
#[derive(Debug, Default)]
pub(crate) struct MetricRules {
    /// No metric on this side.
    pub(crate) disabled: bool,
    /// Per metric, by the indexes above.
    pub(crate) metrics: [MetricRule; 8],
}

impl MetricRules {
    /// Changes nothing: every metric reported with its standard labels.
    pub(crate) fn is_standard(&self) -> bool {
        !self.disabled
            && self
                .metrics
                .iter()
                .all(|m| !m.disabled && m.tags.is_empty())
    }
}

/// One metric's override; the default reports it with its standard labels.
#[derive(Debug, Default, Clone)]
pub(crate) struct MetricRule {
    pub(crate) disabled: bool,
    /// Label changes in the config's order (sorted by name).
    pub(crate) tags: Vec<TagRule>,
}

/// One label change.
#[derive(Debug, Clone)]
pub(crate) enum TagRule {
    /// The label is not reported.
    Remove(String),
    /// The label's value is the expression's (a standard label in its place, a new one after
    /// the standard ones). Equal expressions share one `Arc`.
    Upsert(String, Arc<Expr>),
}

impl PartialEq for TagRule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TagRule::Remove(a), TagRule::Remove(b)) => a == b,
            (TagRule::Upsert(a, x), TagRule::Upsert(b, y)) => a == b && Arc::ptr_eq(x, y),
            _ => false,
        }
    }
}

/// The custom series of one request or connection, computed once for all the metrics that
/// share the same tag rules (Istio's task sets them on every metric alike).
#[derive(Default)]
struct Custom<'r> {
    last: Option<(&'r [TagRule], Pairs)>,
}

impl<'r> Custom<'r> {
    fn series<L: StandardLabels + Clone>(
        &mut self,
        labels: &L,
        tags: &'r [TagRule],
        subject: Subject<'_>,
    ) -> Series<L> {
        if tags.is_empty() {
            return Series::Standard(labels.clone());
        }
        if let Some((t, pairs)) = &self.last
            && *t == tags
        {
            return Series::Custom(pairs.clone());
        }
        let mut pairs = labels.pairs();
        for t in tags {
            match t {
                TagRule::Remove(name) => pairs.retain(|(k, _)| k != name),
                TagRule::Upsert(name, expr) => {
                    let value = expr.label_value(subject);
                    match pairs.iter_mut().find(|(k, _)| k == name) {
                        Some(p) => p.1 = value,
                        None => pairs.push((Cow::Owned(name.clone()), value)),
                    }
                }
            }
        }
        if let Some(standard) = labels.standard_equal_to(&pairs) {
            return Series::Standard(standard);
        }
        let pairs: Pairs = pairs.into();
        self.last = Some((tags, pairs.clone()));
        Series::Custom(pairs)
    }
}
