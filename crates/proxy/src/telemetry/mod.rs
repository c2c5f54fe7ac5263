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

pub mod access_log;
pub mod flags;
pub mod metrics;
pub mod record;
pub mod spans;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use access_log::{AccessLogEncoding, FormatError, JsonValues};
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
}

impl Telemetry {
    /// Creates the metrics registry and, if configured, starts the access-log writer thread.
    pub fn new(options: TelemetryOptions) -> Result<Telemetry, TelemetryError> {
        let metrics = Metrics::new();
        let log = match options.access_log {
            Some(opts) => Some(AccessLogger::start(
                opts,
                metrics.access_log_dropped.clone(),
            )?),
            None => None,
        };
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
            }),
        })
    }

    /// Metrics only, no access log.
    pub fn without_access_log() -> Telemetry {
        Telemetry {
            inner: Arc::new(Inner {
                metrics: Metrics::new(),
                log: None,
                tracer: None,
            }),
        }
    }

    /// Records a finished HTTP request: metrics now, access-log line in the background.
    ///
    /// Never blocks; allocates nothing for a label set seen before.
    pub fn request(&self, mut record: RequestRecord) {
        self.inner.metrics.record_request(&record);
        if let Some(span) = record.span.take() {
            let sink = span.sink.0.clone();
            sink.push(*span, record.clone());
        }
        if let Some(log) = &self.inner.log {
            log.push(Entry::Http(record));
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
    pub fn tcp_open(&self, labels: &Arc<MetricLabels>) -> TcpConnection {
        let counters = self.inner.metrics.tcp_open(labels);
        TcpConnection {
            telemetry: self.clone(),
            labels: labels.clone(),
            counters,
            closed: false,
        }
    }

    /// Logs a connection-level event that has no metrics, such as a listener's `NR` (no filter
    /// chain) or a connection refused before it was counted.
    pub fn tcp_log(&self, record: TcpRecord) {
        if let Some(log) = &self.inner.log {
            log.push(Entry::Tcp(record));
        }
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
        let spans = self
            .inner
            .tracer
            .as_ref()
            .map(spans::Tracers::request_flush)
            .unwrap_or_default();
        let both = async {
            let log_ok = match log {
                Some(rx) => rx.await.is_ok(),
                None => true,
            };
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
        self.telemetry
            .inner
            .metrics
            .tcp_closed(&self.labels, record.response_flags);
        self.telemetry.tcp_log(record);
    }
}

impl Drop for TcpConnection {
    fn drop(&mut self) {
        if !self.closed {
            self.telemetry
                .inner
                .metrics
                .tcp_closed(&self.labels, ResponseFlags::NONE);
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
