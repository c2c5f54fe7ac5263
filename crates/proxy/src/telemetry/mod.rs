//! Access log, Istio metrics and trace spans, recorded off the hot path.
//!
//! The traffic side holds a [`Telemetry`] handle (cheap to clone) and calls
//! [`Telemetry::request`] once per finished request and [`Telemetry::tcp_open`] /
//! [`TcpConnection::close`] per opaque TCP connection. Neither blocks nor takes a lock across I/O:
//! metric updates are atomic adds on handles cached per label set, and access-log records go
//! through a bounded queue to one writer thread that formats them and writes in batches. When the
//! queue is full the record is dropped and counted in `ama_access_log_dropped_total`. Sampled
//! requests' spans go the same way to the span exporter ([`spans`]).
//!
//! The admin (15000) and status (15020, 15021, 15090) servers read the metrics through
//! [`Telemetry::encode_prometheus`] and [`Telemetry::encode_envoy_stats`].
//!
//! The Telemetry API's access logs and metric overrides ([`api`]) are applied with
//! [`Telemetry::configure`] when a config snapshot is installed; until a config sets them, a
//! request pays one relaxed atomic load for them.

pub mod access_log;
mod api;
pub mod expr;
pub mod flags;
pub mod metrics;
pub mod record;
pub mod spans;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

pub use access_log::{AccessLogEncoding, FormatError, JsonValues};
pub use api::ConfigError;
pub use expr::{CapturedHeaders, ExprError};
pub use flags::ResponseFlags;
pub use metrics::Metrics;
pub use record::{
    MetricLabels, Reporter, RequestProtocol, RequestRecord, SecurityPolicy, TcpRecord,
};
pub use spans::{Collector, CustomTag, CustomTagValue, SpanStart, TracingOptions};

use access_log::{AccessLogger, Entry};
use prometheus_client::metrics::counter::Counter;

/// Where access-log lines go.
pub enum AccessLogSink {
    /// The process's stdout (MeshConfig `accessLogFile: /dev/stdout`).
    Stdout,
    /// A file, opened for append (MeshConfig `accessLogFile: <path>`).
    File(PathBuf),
    /// Any writer; tests use [`MemorySink`].
    Writer(Box<dyn Write + Send>),
}

impl AccessLogSink {
    /// The sink for MeshConfig's `accessLogFile`: `/dev/stdout` is stdout, anything else a file.
    pub fn from_mesh_config(access_log_file: &str) -> AccessLogSink {
        match access_log_file {
            "/dev/stdout" | "-" => AccessLogSink::Stdout,
            path => AccessLogSink::File(PathBuf::from(path)),
        }
    }
}

impl std::fmt::Debug for AccessLogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessLogSink::Stdout => f.write_str("Stdout"),
            AccessLogSink::File(p) => write!(f, "File({})", p.display()),
            AccessLogSink::Writer(_) => f.write_str("Writer(..)"),
        }
    }
}

/// Access-log settings, from MeshConfig (`accessLogFile`, `accessLogEncoding`, `accessLogFormat`).
#[derive(Debug)]
pub struct AccessLogOptions {
    /// `accessLogEncoding`: JSON or TEXT.
    pub encoding: AccessLogEncoding,
    /// `accessLogFormat`: an Envoy format string (TEXT) or a JSON object of key → format (JSON).
    /// `None` or empty: Istio's default format for the encoding.
    pub format: Option<String>,
    /// How JSON values are typed; see [`JsonValues`].
    pub json_values: JsonValues,
    /// Where lines go.
    pub sink: AccessLogSink,
    /// Capacity of the queue between the data path and the writer thread.
    pub queue_capacity: usize,
}

impl AccessLogOptions {
    /// Istio's defaults for `encoding`, written to `sink`, queue of 4096.
    pub fn new(encoding: AccessLogEncoding, sink: AccessLogSink) -> AccessLogOptions {
        AccessLogOptions {
            encoding,
            format: None,
            json_values: JsonValues::default(),
            sink,
            queue_capacity: 4096,
        }
    }
}

/// Options for [`Telemetry::new`].
#[derive(Debug, Default)]
pub struct TelemetryOptions {
    /// The access log; `None` turns it off (MeshConfig `accessLogFile: ""`).
    pub access_log: Option<AccessLogOptions>,
    /// The span exporter; `None`: no spans are reported (trace headers are still written).
    pub tracing: Option<TracingOptions>,
}

/// Why [`Telemetry::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `accessLogFormat` did not parse.
    #[error("accessLogFormat: {0}")]
    Format(#[from] FormatError),
    /// The access-log file could not be opened.
    #[error("accessLogFile {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The writer thread could not be started.
    #[error("starting the access-log writer thread: {0}")]
    Thread(std::io::Error),
    /// The span exporter could not start.
    #[error("tracing: {0}")]
    Tracer(#[from] spans::TracerError),
}

/// The proxy's telemetry: a cheap-to-clone handle to the metrics registry and the access logger.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: Metrics,
    log: Option<AccessLogger>,
    tracer: Option<spans::Tracers>,
    /// A Telemetry API config is in force: the one load a request pays while none is.
    api_active: AtomicBool,
    /// The Telemetry API's config in force.
    api: ArcSwapOption<api::Applied>,
    /// Compiles new configs; held only while one is installed.
    configurator: Mutex<api::Configurator>,
}

impl Telemetry {
    /// Creates the metrics registry and, if configured, starts the access-log writer thread.
    pub fn new(options: TelemetryOptions) -> Result<Telemetry, TelemetryError> {
        let metrics = Metrics::new();
        let (json_values, queue_capacity) = options
            .access_log
            .as_ref()
            .map_or((JsonValues::default(), 4096), |o| {
                (o.json_values, o.queue_capacity)
            });
        let mesh_log = match options.access_log {
            Some(opts) => Some(AccessLogger::start(
                opts,
                metrics.access_log_dropped.clone(),
            )?),
            None => None,
        };
        let log = mesh_log.as_ref().map(|(l, _)| l.clone());
        let configurator = api::Configurator::new(
            mesh_log,
            json_values,
            queue_capacity,
            metrics.access_log_dropped.clone(),
        );
        let tracer = match options.tracing {
            Some(opts) => Some(spans::Tracers::start(
                opts,
                metrics.spans_dropped.clone(),
                metrics.spans_sent.clone(),
            )?),
            None => None,
        };
        Ok(Telemetry {
            inner: Arc::new(Inner {
                metrics,
                log,
                tracer,
                api_active: AtomicBool::new(false),
                api: ArcSwapOption::empty(),
                configurator: Mutex::new(configurator),
            }),
        })
    }

    /// Metrics only, no access log (until the Telemetry API names one).
    pub fn without_access_log() -> Telemetry {
        Telemetry::new(TelemetryOptions::default()).expect("no access log, no tracer: no error")
    }

    /// Applies the Telemetry API's access logs and metric overrides of the proxy's Node
    /// (`xds::NodeRef::access_logging`, `metrics`); called when a config snapshot is installed.
    /// Does nothing when they did not change; neither set: MeshConfig's log and the standard
    /// metrics again. Formats and expressions are compiled here, once; what does not compile
    /// is logged at WARN (naming provider and field) and keeps its previous config.
    pub fn configure(
        &self,
        access_logging: Option<&xds::AccessLogging>,
        metrics: Option<&xds::MetricsConfig>,
    ) {
        let mut configurator = self
            .inner
            .configurator
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(applied) = configurator.configure(access_logging, metrics) {
            let active = applied.is_some();
            self.inner.api.store(applied);
            self.inner.api_active.store(active, Ordering::Release);
        }
    }

    /// The Telemetry API config in force, if any: one relaxed load when there is none.
    fn api(&self) -> Option<Arc<api::Applied>> {
        if !self.inner.api_active.load(Ordering::Relaxed) {
            return None;
        }
        self.inner.api.load_full()
    }

    /// The request headers the Telemetry API's expressions read, for
    /// [`RequestRecord::headers`]: `None` (one load) when no config is in force or none reads
    /// a header the record does not keep.
    pub fn capture_headers(&self, headers: &http::HeaderMap) -> Option<Box<CapturedHeaders>> {
        self.api()?.headers.capture(headers)
    }

    /// Records a finished HTTP request: metrics now, access-log line in the background.
    ///
    /// Never blocks; allocates nothing for a label set seen before (unless a Telemetry API
    /// config changes its labels).
    pub fn request(&self, mut record: RequestRecord) {
        let api = self.api();
        let reporter = record.labels.reporter;
        let rules = api
            .as_deref()
            .and_then(|a| a.side(reporter).metrics.as_ref());
        self.inner.metrics.record_request_with(&record, rules);
        if let Some(span) = record.span.take() {
            let sink = span.sink.0.clone();
            sink.push(*span, record.clone());
        }
        self.log(api.as_deref(), reporter, Entry::Http(record));
    }

    /// Queues `entry` for its side's Telemetry API logs, or for MeshConfig's when the config
    /// says nothing of that side.
    fn log(&self, api: Option<&api::Applied>, reporter: Reporter, entry: Entry) {
        match api.and_then(|a| Some((a, a.side(reporter).logs.as_ref()?))) {
            Some((a, logs)) => {
                if let (false, Some(writer)) = (logs.0.is_empty(), &a.logger) {
                    writer.push(entry, Some(logs.clone()));
                }
            }
            None => {
                if let Some(log) = &self.inner.log {
                    log.push(entry, None);
                }
            }
        }
    }

    /// The span start of a request whose trace is `ctx` and whose headers (as forwarded) are
    /// `headers`, for [`RequestRecord::span`], reported as discovery's `xds` tracing says when
    /// the proxy has one, else as its ProxyConfig says: `None`, at the cost of a branch, when
    /// the request is not sampled or no collector is named.
    /// `resolve` finds an endpoint of a mesh service, for discovery's collector.
    pub fn start_span(
        &self,
        ctx: &crate::headers::TraceContext,
        headers: &http::HeaderMap,
        xds: Option<&xds::Tracing>,
        resolve: &dyn Fn(&str, u16) -> Option<std::net::SocketAddr>,
    ) -> Option<Box<SpanStart>> {
        self.inner
            .tracer
            .as_ref()?
            .start_span(ctx, headers, xds, resolve)
    }

    /// Spans dropped because the exporter's queue was full, since start.
    pub fn spans_dropped(&self) -> u64 {
        self.inner.metrics.spans_dropped.get()
    }

    /// The shared `Arc` of a label set (see [`Metrics::intern`]): give records labels through
    /// this, or every request adds a series-cache entry of its own.
    pub fn labels(&self, labels: MetricLabels) -> Arc<MetricLabels> {
        self.inner.metrics.intern(labels)
    }

    /// Counts a new opaque TCP connection and returns the handle that counts its bytes and close.
    /// `accepted` is the connection as known when it opens (addresses, cluster, upstream host):
    /// what the Telemetry API's tag expressions read.
    pub fn tcp_open(&self, labels: &Arc<MetricLabels>, accepted: &TcpRecord) -> TcpConnection {
        let api = self.api();
        let rules = api
            .as_deref()
            .and_then(|a| a.side(labels.reporter).metrics.as_ref());
        let counters =
            self.inner
                .metrics
                .tcp_open_with(labels, rules, expr::Subject::Tcp(accepted));
        TcpConnection {
            telemetry: self.clone(),
            labels: labels.clone(),
            counters,
            api,
            closed: false,
        }
    }

    /// Logs a connection-level event that has no metrics, such as a listener's `NR` (no filter
    /// chain) or a connection refused before it was counted.
    pub fn tcp_log(&self, record: TcpRecord) {
        let api = self.api();
        self.log(api.as_deref(), record.reporter, Entry::Tcp(record));
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The metrics in Prometheus text format 0.0.4 (content type [`metrics::CONTENT_TYPE`]).
    pub fn encode_prometheus(&self) -> String {
        self.inner.metrics.encode_prometheus()
    }

    /// The metrics as Envoy's admin `/stats` prints them: one `name: value` per line.
    pub fn encode_envoy_stats(&self) -> String {
        self.inner.metrics.encode_envoy_stats()
    }

    /// Access-log lines dropped because the queue was full, since start.
    pub fn access_log_dropped(&self) -> u64 {
        self.inner.metrics.access_log_dropped.get()
    }

    /// Waits until every line queued before this call is written and flushed, or `timeout`.
    /// Returns false on timeout. Call it when draining, before exit.
    /// Spans queued before the call are sent to the collector (or given up on) too.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let log = self.inner.log.as_ref().map(AccessLogger::request_flush);
        // The Telemetry API's writer, when it is not MeshConfig's: lines queued under a config
        // since replaced are waited for too.
        let api_log = self
            .inner
            .configurator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .own_writer()
            .map(AccessLogger::request_flush);
        let spans = self
            .inner
            .tracer
            .as_ref()
            .map(spans::Tracers::request_flush)
            .unwrap_or_default();
        let both = async {
            let mut log_ok = true;
            for rx in log.into_iter().chain(api_log) {
                log_ok &= rx.await.is_ok();
            }
            let mut spans_ok = true;
            for rx in spans {
                spans_ok &= rx.await.is_ok();
            }
            log_ok && spans_ok
        };
        matches!(tokio::time::timeout(timeout, both).await, Ok(true))
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("access_log", &self.inner.log.is_some())
            .field("tracing", &self.inner.tracer.is_some())
            .field(
                "telemetry_api",
                &self.inner.api_active.load(Ordering::Relaxed),
            )
            .finish()
    }
}

/// An open TCP connection's metric handles: byte counters are plain atomic adds.
///
/// Closing (or dropping) counts `istio_tcp_connections_closed_total`; [`TcpConnection::close`]
/// also writes the access-log line. Opened and byte counters carry `response_flags="-"` (resolved
/// once at open); the closed counter carries the connection's final flags (`UF`, `UO`...).
pub struct TcpConnection {
    telemetry: Telemetry,
    labels: Arc<MetricLabels>,
    counters: metrics::TcpCounters,
    /// The Telemetry API config the connection opened under; it closes under it too.
    api: Option<Arc<api::Applied>>,
    closed: bool,
}

impl TcpConnection {
    /// Adds to `istio_tcp_sent_bytes_total`: bytes sent to the downstream, the response
    /// direction (Istio: "bytes sent during response").
    pub fn sent(&self, bytes: u64) {
        self.counters.sent.inc_by(bytes);
    }

    /// Adds to `istio_tcp_received_bytes_total`: bytes received from the downstream, the request
    /// direction (Istio: "bytes received during request").
    pub fn received(&self, bytes: u64) {
        self.counters.received.inc_by(bytes);
    }

    /// Counts the close with the connection's final response flags and logs `record`.
    pub fn close(mut self, record: TcpRecord) {
        self.closed = true;
        self.telemetry.inner.metrics.tcp_closed_with(
            &self.labels,
            record.response_flags,
            self.rules(),
            expr::Subject::Tcp(&record),
        );
        let reporter = self.labels.reporter;
        self.telemetry
            .log(self.api.as_deref(), reporter, Entry::Tcp(record));
    }

    fn rules(&self) -> Option<&metrics::MetricRules> {
        self.api
            .as_deref()
            .and_then(|a| a.side(self.labels.reporter).metrics.as_ref())
    }
}

impl Drop for TcpConnection {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let metrics = &self.telemetry.inner.metrics;
        match self.rules() {
            None => metrics.tcp_closed(&self.labels, ResponseFlags::NONE),
            Some(rules) => {
                // Closed without a record: the expressions see a connection that knows nothing.
                let record = TcpRecord::new(SystemTime::now(), self.labels.reporter);
                metrics.tcp_closed_with(
                    &self.labels,
                    ResponseFlags::NONE,
                    Some(rules),
                    expr::Subject::Tcp(&record),
                );
            }
        }
    }
}

impl std::fmt::Debug for TcpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpConnection")
            .field("labels", &self.labels)
            .finish()
    }
}

/// An in-memory access-log sink for tests: clone it, hand one to [`AccessLogSink::Writer`], read
/// the other.
#[derive(Clone, Default)]
pub struct MemorySink(Arc<Mutex<Vec<u8>>>);

impl MemorySink {
    /// A new empty sink.
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// Everything written so far, as text.
    pub fn contents(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        self.contents().lines().map(str::to_owned).collect()
    }

    /// A boxed sink writing into this buffer.
    pub fn sink(&self) -> AccessLogSink {
        AccessLogSink::Writer(Box::new(self.clone()))
    }
}

impl Write for MemorySink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Telemetry>();
    is::<Counter>();
}
