//! Trace spans: what Envoy reports to a Zipkin or OpenTelemetry collector for a request under
//! Istio, built off the hot path and sent in batches.
//!
//! The traffic side asks [`Tracer::start`] for a [`SpanStart`] after it has continued or started
//! the request's trace ([`crate::headers::continue_trace`]). Only a sampled request gets one (a
//! single small allocation); an unsampled request costs one branch. The span start rides in the
//! request's [`RequestRecord`] and, once the request is finished, goes with a clone of the record
//! through a bounded queue to the exporter thread, which sends batches in the collector's
//! format: Zipkin v2 JSON POSTed to `/api/v2/spans` (Envoy's Zipkin tracer as Istio configures
//! it: `HTTP_JSON`, 128-bit trace ids, no shared span context), or OTLP protobuf over gRPC
//! (`TraceService/Export`) or HTTP (`/v1/traces`), as Envoy's OpenTelemetry tracer. When the
//! queue is full the span is dropped and counted in `ama_tracing_spans_dropped_total`.
//!
//! Names and tags are Envoy's (`HttpTracerUtility::finalizeDownstreamSpan`) plus Istio's service
//! tags (`istio.canonical_service`, `istio.canonical_revision`, `istio.mesh_id`,
//! `istio.namespace`) and the ProxyConfig `tracing.custom_tags`.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prometheus_client::metrics::counter::Counter;
use prost::Message as _;

use super::record::{MetricLabels, Reporter, RequestRecord};
use crate::headers::TraceContext;

/// `x-envoy-downstream-service-cluster`, Envoy's `downstream_cluster` tag.
static DOWNSTREAM_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-downstream-service-cluster");
/// `x-forwarded-proto`, the scheme of `http.url`.
static FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Envoy's default `max_path_tag_length`: the path part of `http.url` is cut to this many bytes.
pub const DEFAULT_MAX_PATH_TAG_LENGTH: usize = 256;

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Collector {
    /// A Zipkin collector: Zipkin v2 JSON POSTed to `http://{address}{path}`.
    Zipkin {
        /// `host:port` (ProxyConfig `tracing.zipkin.address`, `--zipkinAddress`).
        address: String,
        /// `/api/v2/spans`, as Istio configures Envoy.
        path: String,
    },
    /// An OpenTelemetry collector (MeshConfig `extensionProviders[].opentelemetry`): OTLP
    /// protobuf over gRPC, or over HTTP POSTed to `http_path`.
    Otlp {
        /// `host:port`.
        address: String,
        /// `None`: gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`);
        /// `Some(path)`: HTTP (Istio's default path `/v1/traces`).
        http_path: Option<String>,
    },
}

impl Collector {
    /// A Zipkin collector at `address` (`host:port`), with Istio's endpoint path.
    pub fn zipkin(address: impl Into<String>) -> Collector {
        Collector::Zipkin {
            address: address.into(),
            path: "/api/v2/spans".to_string(),
        }
    }

    /// The collector's `host:port`.
    pub fn address(&self) -> &str {
        match self {
            Collector::Zipkin { address, .. } | Collector::Otlp { address, .. } => address,
        }
    }
}

/// How a custom tag gets its value (ProxyConfig `tracing.custom_tags`, Telemetry `customTags`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomTagValue {
    /// A fixed value.
    Literal(String),
    /// An environment variable of the proxy, read once at start, or `default` when unset.
    Environment {
        /// The variable.
        name: String,
        /// Its value when unset.
        default: String,
    },
    /// A request header, or `default` when the request has none (no tag when `default` is
    /// empty, as Envoy).
    Header {
        /// The header.
        name: HeaderName,
        /// Its value when absent.
        default: String,
    },
}

/// One custom tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomTag {
    /// The tag's name.
    pub tag: String,
    /// Where its value comes from.
    pub value: CustomTagValue,
}

/// Settings of the tracer, from ProxyConfig `tracing` and the proxy's identity.
#[derive(Debug, Clone)]
pub struct TracingOptions {
    /// The collector; none: spans are reported only once discovery names one
    /// ([`xds::Tracing`] on the proxy's node).
    pub collector: Option<Collector>,
    /// Zipkin `localEndpoint.serviceName` when the request's labels do not know the local
    /// workload: Istio's service cluster, `<canonical-service>.<namespace>`.
    pub service_name: String,
    /// `node_id` tag: the proxy's xDS node id (`sidecar~10.0.0.5~pod.ns~ns.svc.cluster.local`).
    pub node_id: String,
    /// `zone` tag (the node's locality zone; empty when not known).
    pub zone: String,
    /// `istio.mesh_id` tag (`ISTIO_META_MESH_ID`; Istio's default is the trust domain).
    pub mesh_id: String,
    /// `istio.namespace` tag and the namespace half of the service name.
    pub namespace: String,
    /// `localEndpoint.ipv4` / `ipv6`: the pod's address.
    pub local_ip: Option<IpAddr>,
    /// ProxyConfig `tracing.custom_tags`.
    pub custom_tags: Vec<CustomTag>,
    /// ProxyConfig `tracing.max_path_tag_length` (Envoy's default 256).
    pub max_path_tag_length: usize,
    /// Spans that may wait for the exporter; more are dropped and counted.
    pub queue_capacity: usize,
    /// A batch is sent when this many spans wait (Envoy's `tracing.zipkin.min_flush_spans`, 5) …
    pub min_flush_spans: usize,
    /// … or when this long has passed (Envoy's `tracing.zipkin.flush_interval_ms`, 5 s).
    pub flush_interval: Duration,
    /// How long one POST to the collector may take.
    pub request_timeout: Duration,
}

impl TracingOptions {
    /// Envoy's defaults around `collector`, for a proxy in `namespace`.
    pub fn new(collector: Collector, namespace: impl Into<String>) -> TracingOptions {
        let namespace = namespace.into();
        TracingOptions {
            collector: Some(collector),
            service_name: format!("unknown.{namespace}"),
            node_id: String::new(),
            zone: String::new(),
            mesh_id: "cluster.local".to_string(),
            namespace,
            local_ip: None,
            custom_tags: Vec::new(),
            max_path_tag_length: DEFAULT_MAX_PATH_TAG_LENGTH,
            queue_capacity: 4096,
            min_flush_spans: 5,
            flush_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the tracer could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// The collector address is not `host:port`.
    #[error("tracing collector address {address:?}: expected host:port")]
    Address {
        /// The address as given.
        address: String,
    },
    /// The exporter thread could not be started.
    #[error("starting the span exporter thread: {0}")]
    Thread(std::io::Error),
    /// No collector was named.
    #[error("no tracing collector")]
    NoCollector,
}

/// What a sampled request carries from its start to its end for its span: the trace context and
/// the request headers the span's tags need, which are gone by the time the record is finished.
#[derive(Debug, Clone)]
pub struct SpanStart {
    /// This hop's span (its id, parent and trace).
    pub ctx: TraceContext,
    /// `x-forwarded-proto` (`http.url`'s scheme).
    pub scheme: Option<HeaderValue>,
    /// `x-envoy-downstream-service-cluster` (`downstream_cluster`).
    pub downstream_cluster: Option<HeaderValue>,
    /// The values of the header custom tags, in [`TracingOptions::custom_tags`] order (`None`
    /// for tags of other kinds and absent headers).
    pub header_tags: Vec<Option<HeaderValue>>,
    /// Inbound: the service port whose target port the request came to (the span's name has
    /// the service port; the inbound cluster name the target port).
    pub service_port: Option<u16>,
    /// The tracer the span goes to when the request ends.
    pub(crate) sink: Sink,
}

/// The tracer a span was started by (the one in force then: discovery may change it).
#[derive(Clone)]
pub(crate) struct Sink(pub(crate) Arc<Tracer>);

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// The data path's end of the tracer: decides whether a request gets a span and queues finished
/// ones. Shared by every worker (it holds no lock).
pub(crate) struct Tracer {
    tx: Sender<Msg>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    dropped: Counter,
    /// The header names of the header custom tags, by tag index.
    header_tags: Vec<Option<HeaderName>>,
}

enum Msg {
    Span(Box<(SpanStart, RequestRecord)>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Tracer {
    /// Starts the exporter thread.
    pub(crate) fn start(
        opts: TracingOptions,
        dropped: Counter,
        sent: &SentCounters,
    ) -> Result<Tracer, TracerError> {
        let collector = opts.collector.clone().ok_or(TracerError::NoCollector)?;
        let sent = match collector {
            Collector::Zipkin { .. } => sent.zipkin.clone(),
            Collector::Otlp { .. } => sent.opentelemetry.clone(),
        };
        let address = collector.address();
        if address
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(TracerError::Address {
                address: address.to_string(),
            });
        }
        let header_tags = opts
            .custom_tags
            .iter()
            .map(|t| match &t.value {
                CustomTagValue::Header { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        let (tx, rx) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        let exporter = Exporter::new(opts, collector);
        let capacity = exporter.opts.queue_capacity.max(1);
        std::thread::Builder::new()
            .name("span-export".into())
            .spawn(move || exporter.run(rx, &taken, sent))
            .map_err(TracerError::Thread)?;
        Ok(Tracer {
            tx,
            queued,
            capacity,
            dropped,
            header_tags,
        })
    }

    /// The span start of a request whose trace is `ctx`, or `None` when it is not sampled.
    pub(crate) fn start_span(
        self: &Arc<Self>,
        ctx: &TraceContext,
        headers: &HeaderMap,
    ) -> Option<Box<SpanStart>> {
        if !ctx.sampled {
            return None;
        }
        Some(Box::new(SpanStart {
            sink: Sink(self.clone()),
            ctx: *ctx,
            scheme: headers.get(&FORWARDED_PROTO).cloned(),
            downstream_cluster: headers.get(&DOWNSTREAM_CLUSTER).cloned(),
            header_tags: self
                .header_tags
                .iter()
                .map(|n| n.as_ref().and_then(|n| headers.get(n).cloned()))
                .collect(),
            service_port: None,
        }))
    }

    /// Queues a finished request's span; drops and counts it if the queue is full. Never blocks.
    pub(crate) fn push(&self, span: SpanStart, record: RequestRecord) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        if self.tx.send(Msg::Span(Box::new((span, record)))).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
        }
    }

    /// Asks the exporter to send everything queued so far and confirm.
    pub(crate) fn request_flush(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (done, rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(Msg::Flush(done));
        rx
    }
}

/// The tracers of a proxy: the one its ProxyConfig names (if any), and the one discovery's
/// [`xds::Tracing`] names, made when a sampled request first sees that config (so a change of
/// provider, tags or path length starts a new exporter and the old one sends what it has and
/// ends).
pub(crate) struct Tracers {
    base: TracingOptions,
    fixed: Option<Arc<Tracer>>,
    dynamic: arc_swap::ArcSwapOption<(xds::Tracing, Option<Arc<Tracer>>)>,
    dropped: Counter,
    sent: SentCounters,
}

/// The spans sent, per tracer as Envoy counts them: `tracing.zipkin.spans_sent` and
/// `tracing.opentelemetry.spans_sent`.
#[derive(Clone, Debug, Default)]
pub(crate) struct SentCounters {
    pub(crate) zipkin: Counter,
    pub(crate) opentelemetry: Counter,
}

impl Tracers {
    /// The ProxyConfig's tracer, started when `base` names a collector.
    pub(crate) fn start(
        base: TracingOptions,
        dropped: Counter,
        sent: SentCounters,
    ) -> Result<Tracers, TracerError> {
        let fixed = match base.collector {
            Some(_) => Some(Arc::new(Tracer::start(
                base.clone(),
                dropped.clone(),
                &sent,
            )?)),
            None => None,
        };
        Ok(Tracers {
            base,
            fixed,
            dynamic: arc_swap::ArcSwapOption::empty(),
            dropped,
            sent,
        })
    }

    /// The span start of a sampled request: with discovery's tracing `xds` when the proxy has
    /// it, else the ProxyConfig's. `None` when not sampled or no collector is named.
    /// `resolve` finds an endpoint of a mesh service (`host`, `port`): discovery's collector is
    /// a service of the mesh, reached at one of its endpoints as Envoy reaches the provider's
    /// cluster (its host is resolved by DNS when the mesh does not know it).
    pub(crate) fn start_span(
        &self,
        ctx: &TraceContext,
        headers: &HeaderMap,
        xds: Option<&xds::Tracing>,
        resolve: &dyn Fn(&str, u16) -> Option<std::net::SocketAddr>,
    ) -> Option<Box<SpanStart>> {
        if !ctx.sampled {
            return None;
        }
        let tracer = match xds {
            None => self.fixed.clone()?,
            Some(x) => self.for_xds(x, resolve)?,
        };
        tracer.start_span(ctx, headers)
    }

    fn for_xds(
        &self,
        x: &xds::Tracing,
        resolve: &dyn Fn(&str, u16) -> Option<std::net::SocketAddr>,
    ) -> Option<Arc<Tracer>> {
        if let Some(cur) = self.dynamic.load().as_ref()
            && cur.0 == *x
        {
            return cur.1.clone();
        }
        let tracer = self.options_for(x, resolve).and_then(|o| {
            Tracer::start(o, self.dropped.clone(), &self.sent)
                .map_err(|e| tracing::warn!("tracing from discovery: {e}"))
                .ok()
                .map(Arc::new)
        });
        self.dynamic
            .store(Some(Arc::new((x.clone(), tracer.clone()))));
        tracer
    }

    /// The ProxyConfig's options with discovery's collector, tags and path length.
    fn options_for(
        &self,
        x: &xds::Tracing,
        resolve: &dyn Fn(&str, u16) -> Option<std::net::SocketAddr>,
    ) -> Option<TracingOptions> {
        let c = x.collector.as_ref()?;
        let address = resolve(&c.host, c.port)
            .map_or_else(|| format!("{}:{}", c.host, c.port), |a| a.to_string());
        let collector = match c.protocol {
            xds::CollectorProtocol::Zipkin => Collector::Zipkin {
                address,
                path: c.path.clone().unwrap_or_else(|| "/api/v2/spans".into()),
            },
            xds::CollectorProtocol::OtlpGrpc => Collector::Otlp {
                address,
                http_path: None,
            },
            xds::CollectorProtocol::OtlpHttp => Collector::Otlp {
                address,
                http_path: Some(c.path.clone().unwrap_or_else(|| "/v1/traces".into())),
            },
        };
        let mut o = self.base.clone();
        o.collector = Some(collector);
        o.max_path_tag_length = x
            .max_path_tag_length
            .filter(|n| *n > 0)
            .map_or(DEFAULT_MAX_PATH_TAG_LENGTH, |n| n as usize);
        o.custom_tags = x
            .custom_tags
            .iter()
            .filter_map(|t| {
                let value = if let Some(v) = &t.literal {
                    CustomTagValue::Literal(v.clone())
                } else if let Some(name) = &t.environment {
                    CustomTagValue::Environment {
                        name: name.clone(),
                        default: t.default_value.clone(),
                    }
                } else {
                    CustomTagValue::Header {
                        name: HeaderName::from_bytes(
                            t.header.as_ref()?.to_ascii_lowercase().as_bytes(),
                        )
                        .ok()?,
                        default: t.default_value.clone(),
                    }
                };
                Some(CustomTag {
                    tag: t.tag.clone(),
                    value,
                })
            })
            .collect();
        Some(o)
    }

    /// Asks the tracers in force to send what they have; one receiver each.
    pub(crate) fn request_flush(&self) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let mut out: Vec<_> = self.fixed.iter().map(|t| t.request_flush()).collect();
        if let Some(cur) = self.dynamic.load().as_ref()
            && let Some(t) = &cur.1
        {
            out.push(t.request_flush());
        }
        out
    }
}

/// The exporter thread's state: the options, the environment tags resolved once, and the
/// clients, on a runtime of the thread's own (the proxy's runtimes never wait on a collector).
struct Exporter {
    opts: TracingOptions,
    /// Where the spans go.
    collector: Collector,
    /// Custom tag values that do not depend on the request (literal, environment), by index.
    fixed_tags: Vec<Option<String>>,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// How the exporter reaches its collector.
enum Transport {
    /// Zipkin JSON or OTLP protobuf, POSTed.
    Http(HttpClient),
    /// OTLP's `TraceService/Export`.
    Grpc(TraceServiceClient<tonic::transport::Channel>),
}

/// One finished span, whatever the wire format: what Envoy's tracers know of a request.
#[derive(Debug, Clone, PartialEq)]
struct SpanData {
    trace_id: u128,
    id: u64,
    parent_id: Option<u64>,
    /// `CLIENT` or `SERVER`.
    kind: &'static str,
    name: String,
    /// Microseconds since the Unix epoch.
    start_us: u64,
    duration_us: u64,
    /// Zipkin's `localEndpoint.serviceName`, OpenTelemetry's `service.name`.
    service_name: String,
    /// Tag name and value, in the order they were set (names are mostly static).
    tags: Vec<(Cow<'static, str>, String)>,
}

impl Exporter {
    fn new(opts: TracingOptions, collector: Collector) -> Exporter {
        let fixed_tags = opts
            .custom_tags
            .iter()
            .map(|t| match &t.value {
                CustomTagValue::Literal(v) => Some(v.clone()),
                CustomTagValue::Environment { name, default } => Some(
                    std::env::var(name)
                        .ok()
                        .filter(|v| !v.is_empty())
                        .unwrap_or_else(|| default.clone()),
                ),
                CustomTagValue::Header { .. } => None,
            })
            .collect();
        Exporter {
            opts,
            collector,
            fixed_tags,
        }
    }

    fn run(self, rx: Receiver<Msg>, queued: &AtomicUsize, sent: Counter) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("span exporter: no runtime, spans are being lost: {e}");
                return;
            }
        };
        let transport = match &self.collector {
            Collector::Otlp {
                address,
                http_path: None,
            } => {
                // Connects on first use and again after a failure; the channel needs the
                // runtime for its background task.
                let _in_runtime = runtime.enter();
                match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
                    Ok(e) => Transport::Grpc(TraceServiceClient::new(
                        e.timeout(self.opts.request_timeout).connect_lazy(),
                    )),
                    Err(e) => {
                        tracing::warn!("span exporter: collector {address}: {e}; spans are lost");
                        return;
                    }
                }
            }
            _ => Transport::Http(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http(),
            ),
        };
        let mut batch: Vec<SpanData> = Vec::new();
        let mut waiters = Vec::new();
        let mut deadline = Instant::now() + self.opts.flush_interval;
        let mut failed = false;
        loop {
            let msg = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            let disconnected = matches!(msg, Err(RecvTimeoutError::Disconnected));
            match msg {
                Ok(Msg::Span(s)) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    let (start, rec) = *s;
                    batch.push(self.span_data(&start, &rec));
                }
                Ok(Msg::Flush(done)) => waiters.push(done),
                Err(_) => {}
            }
            let due = Instant::now() >= deadline;
            if batch.len() >= self.opts.min_flush_spans.max(1)
                || ((due || !waiters.is_empty() || disconnected) && !batch.is_empty())
            {
                let spans = std::mem::take(&mut batch);
                let n = spans.len() as u64;
                match runtime.block_on(self.export(&transport, spans)) {
                    Ok(()) => {
                        sent.inc_by(n);
                        failed = false;
                    }
                    Err(e) => {
                        if !failed {
                            tracing::warn!("span exporter: {e}; spans are being lost");
                        }
                        failed = true;
                    }
                }
            }
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
            if due {
                deadline = Instant::now() + self.opts.flush_interval;
            }
            if disconnected {
                return;
            }
        }
    }

    /// Sends one batch in the collector's format.
    async fn export(&self, transport: &Transport, spans: Vec<SpanData>) -> Result<(), String> {
        match (&self.collector, transport) {
            (Collector::Zipkin { address, path }, Transport::Http(client)) => {
                let body = zipkin_batch(&spans, self.opts.local_ip);
                self.post(client, address, path, "application/json", body.into())
                    .await
            }
            (
                Collector::Otlp {
                    address,
                    http_path: Some(path),
                },
                Transport::Http(client),
            ) => {
                let body = otlp_request(spans).encode_to_vec();
                self.post(client, address, path, "application/x-protobuf", body.into())
                    .await
            }
            (Collector::Otlp { address, .. }, Transport::Grpc(client)) => {
                let mut client = client.clone();
                client
                    .export(otlp_request(spans))
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("collector {address}: {}: {}", s.code(), s.message()))
            }
            _ => Err("collector and transport disagree".to_string()),
        }
    }

    async fn post(
        &self,
        client: &HttpClient,
        address: &str,
        path: &str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<(), String> {
        let req = http::Request::post(format!("http://{address}{path}"))
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| format!("collector {address}{path}: {e}"))?;
        let resp = tokio::time::timeout(self.opts.request_timeout, client.request(req))
            .await
            .map_err(|_| {
                format!(
                    "collector {address}: no answer in {:?}",
                    self.opts.request_timeout
                )
            })?
            .map_err(|e| format!("collector {address}: {e}"))?;
        let status = resp.status();
        // Read the answer to the end so that the connection goes back to the pool.
        let _ = tokio::time::timeout(self.opts.request_timeout, resp.into_body().collect()).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector {address}{path} answered {status}"))
        }
    }

    /// The request's span, named and tagged as Envoy's tracers do under Istio.
    fn span_data(&self, start: &SpanStart, rec: &RequestRecord) -> SpanData {
        let ctx = &start.ctx;
        let l = &rec.labels;
        let (kind, canonical_service, canonical_revision) = local_workload(l);
        let mut tags: Vec<(Cow<'static, str>, String)> =
            Vec::with_capacity(24 + self.opts.custom_tags.len());
        let mut tag = |k: Cow<'static, str>, v: String| tags.push((k, v));
        let header = |v: &Option<HeaderValue>| {
            v.as_ref()
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "-".to_string(), str::to_string)
        };
        tag(Cow::Borrowed("component"), "proxy".into());
        tag(Cow::Borrowed("node_id"), self.opts.node_id.clone());
        tag(Cow::Borrowed("zone"), self.opts.zone.clone());
        tag(Cow::Borrowed("guid:x-request-id"), header(&rec.request_id));
        tag(Cow::Borrowed("http.url"), self.url(start, rec));
        tag(
            Cow::Borrowed("http.method"),
            rec.method.as_ref().map_or("-", |m| m.as_str()).to_string(),
        );
        tag(
            Cow::Borrowed("downstream_cluster"),
            header(&start.downstream_cluster),
        );
        tag(Cow::Borrowed("user_agent"), header(&rec.user_agent));
        tag(
            Cow::Borrowed("http.protocol"),
            rec.protocol
                .map_or("-", super::access_log::protocol_name)
                .to_string(),
        );
        if let Some(peer) = rec.downstream_remote_address {
            tag(Cow::Borrowed("peer.address"), peer.ip().to_string());
        }
        tag(
            Cow::Borrowed("request_size"),
            rec.bytes_received.to_string(),
        );
        tag(Cow::Borrowed("response_size"), rec.bytes_sent.to_string());
        tag(
            Cow::Borrowed("response_flags"),
            rec.response_flags.to_string(),
        );
        tag(
            Cow::Borrowed("http.status_code"),
            rec.response_code.to_string(),
        );
        if let Some(c) = &rec.upstream_cluster {
            tag(Cow::Borrowed("upstream_cluster"), c.to_string());
            tag(Cow::Borrowed("upstream_cluster.name"), c.to_string());
        }
        if rec.response_code == 0 || rec.response_code >= 500 {
            tag(Cow::Borrowed("error"), "true".into());
        }
        tag(
            Cow::Borrowed("istio.canonical_service"),
            canonical_service.to_string(),
        );
        tag(
            Cow::Borrowed("istio.canonical_revision"),
            canonical_revision.to_string(),
        );
        tag(Cow::Borrowed("istio.mesh_id"), self.opts.mesh_id.clone());
        tag(
            Cow::Borrowed("istio.namespace"),
            self.opts.namespace.clone(),
        );
        for (i, t) in self.opts.custom_tags.iter().enumerate() {
            let value = match (&t.value, self.fixed_tags.get(i)) {
                (_, Some(Some(v))) => Some(v.clone()),
                (CustomTagValue::Header { default, .. }, _) => start
                    .header_tags
                    .get(i)
                    .and_then(|v| v.as_ref())
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| (!default.is_empty()).then(|| default.clone())),
                _ => None,
            };
            if let Some(v) = value {
                tag(Cow::Owned(t.tag.clone()), v);
            }
        }
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        SpanData {
            trace_id: ctx.trace_id,
            id: ctx.span_id,
            parent_id: ctx.parent_span_id,
            kind,
            name: span_name(start, rec),
            start_us: micros(
                rec.start_time
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
            // Zipkin rejects a zero duration; a request always takes at least a microsecond.
            duration_us: micros(rec.duration).max(1),
            service_name: if &**canonical_service == "unknown" {
                self.opts.service_name.clone()
            } else {
                format!("{canonical_service}.{}", self.opts.namespace)
            },
            tags,
        }
    }

    /// Envoy's `http.url`: `{x-forwarded-proto}://{host}{path}`, the path cut to
    /// `max_path_tag_length` bytes.
    fn url(&self, start: &SpanStart, rec: &RequestRecord) -> String {
        let scheme = start
            .scheme
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("http");
        let host = rec
            .authority
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let path = rec.path.as_ref().map_or("", |p| p.as_str());
        let mut cut = path.len().min(self.opts.max_path_tag_length);
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{scheme}://{host}{}", &path[..cut])
    }
}

/// Appends a span in Zipkin's v2 JSON, as Envoy's Zipkin tracer writes it (`SpanBuffer`,
/// `HTTP_JSON`), straight into `out`: strings go through serde_json's escaping and nothing else
/// is built, since a batch is written for every five sampled requests. Tags come sorted by
/// name, and a custom tag named as a standard one replaces it (the last set wins).
fn write_zipkin_json(out: &mut Vec<u8>, s: &SpanData, local_ip: Option<IpAddr>) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let string = |out: &mut Vec<u8>, v: &str| {
        let _ = serde_json::to_writer(&mut *out, v);
    };
    let _ = write!(out, "{{\"traceId\":\"{:032x}\",", s.trace_id);
    if let Some(p) = s.parent_id {
        let _ = write!(out, "\"parentId\":\"{p:016x}\",");
    }
    let _ = write!(
        out,
        "\"id\":\"{:016x}\",\"kind\":\"{}\",\"name\":",
        s.id, s.kind
    );
    string(out, &s.name);
    let _ = write!(
        out,
        ",\"timestamp\":{},\"duration\":{},\"localEndpoint\":{{\"serviceName\":",
        s.start_us, s.duration_us
    );
    string(out, &s.service_name);
    match local_ip {
        Some(IpAddr::V4(ip)) => {
            let _ = write!(out, ",\"ipv4\":\"{ip}\"");
        }
        Some(IpAddr::V6(ip)) => {
            let _ = write!(out, ",\"ipv6\":\"{ip}\"");
        }
        None => {}
    }
    out.extend_from_slice(b"},\"tags\":{");
    let mut order: Vec<usize> = (0..s.tags.len()).collect();
    order.sort_by(|a, b| s.tags[*a].0.cmp(&s.tags[*b].0));
    let mut first = true;
    for (n, &i) in order.iter().enumerate() {
        let (k, v) = &s.tags[i];
        // The stable sort keeps equal names in the order they were set: write the last.
        if order.get(n + 1).is_some_and(|&j| s.tags[j].0 == *k) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        string(out, k);
        out.push(b':');
        string(out, v);
    }
    out.extend_from_slice(b"}}");
}

/// A batch of spans as the JSON array Zipkin's `/api/v2/spans` takes.
fn zipkin_batch(spans: &[SpanData], local_ip: Option<IpAddr>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024 * spans.len() + 2);
    out.push(b'[');
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_zipkin_json(&mut out, s, local_ip);
    }
    out.push(b']');
    out
}

/// A batch as OTLP's `ExportTraceServiceRequest`: one resource (`service.name`) per local
/// service, the tags as string attributes, as Envoy's OpenTelemetry tracer sends them.
fn otlp_request(spans: Vec<SpanData>) -> ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
    // The batch is consumed: names and values move into the request instead of being copied.
    let kv = |k: String, v: String| KeyValue {
        key: k,
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v)),
        }),
    };
    let mut by_service: Vec<(String, ResourceSpans)> = Vec::new();
    for s in spans {
        let error = s.tags.iter().any(|(k, _)| k == "error");
        let otlp = Span {
            trace_id: s.trace_id.to_be_bytes().to_vec(),
            span_id: s.id.to_be_bytes().to_vec(),
            parent_span_id: s
                .parent_id
                .map_or_else(Vec::new, |p| p.to_be_bytes().to_vec()),
            name: s.name,
            kind: if s.kind == "SERVER" {
                span::SpanKind::Server
            } else {
                span::SpanKind::Client
            } as i32,
            start_time_unix_nano: s.start_us.saturating_mul(1000),
            end_time_unix_nano: s
                .start_us
                .saturating_add(s.duration_us)
                .saturating_mul(1000),
            attributes: s
                .tags
                .into_iter()
                .map(|(k, v)| kv(k.into_owned(), v))
                .collect(),
            status: error.then(|| Status {
                code: opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32,
                ..Status::default()
            }),
            ..Span::default()
        };
        match by_service
            .iter_mut()
            .find(|(name, _)| *name == s.service_name)
        {
            Some((_, r)) => r.scope_spans[0].spans.push(otlp),
            None => by_service.push((
                s.service_name.clone(),
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name".into(), s.service_name)],
                        ..Resource::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans: vec![otlp],
                        ..ScopeSpans::default()
                    }],
                    ..ResourceSpans::default()
                },
            )),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: by_service.into_iter().map(|(_, r)| r).collect(),
    }
}

/// The span's kind and the local workload's canonical service and revision: the source of an
/// outbound request, the destination of an inbound one.
fn local_workload(l: &MetricLabels) -> (&'static str, &Arc<str>, &Arc<str>) {
    match l.reporter {
        Reporter::Source => (
            "CLIENT",
            &l.source_canonical_service,
            &l.source_canonical_revision,
        ),
        Reporter::Destination => (
            "SERVER",
            &l.destination_canonical_service,
            &l.destination_canonical_revision,
        ),
    }
}

/// The span's name: Istio's route decorator, `<service host>:<service port>/*`, for a request
/// to a service; `<authority>/*` otherwise.
fn span_name(start: &SpanStart, rec: &RequestRecord) -> String {
    let host = &rec.labels.destination_service;
    // Outbound, the service port is in the cluster name:
    // `outbound|80||httpbin.default.svc.cluster.local`.
    let port = match start.service_port {
        Some(p) => Some(p.to_string()),
        None if rec.labels.reporter == Reporter::Source => rec
            .upstream_cluster
            .as_deref()
            .and_then(|c| c.split('|').nth(1))
            .filter(|p| !p.is_empty())
            .map(str::to_string),
        None => None,
    };
    match port {
        Some(port) if &**host != "unknown" => format!("{host}:{port}/*"),
        _ => rec
            .authority
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| "-".to_string(), |a| format!("{a}/*")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use serde_json::Value;

    use super::*;

    /// One span as the collector parses it.
    fn zipkin_json(s: &SpanData, local_ip: Option<IpAddr>) -> Value {
        let batch = zipkin_batch(std::slice::from_ref(s), local_ip);
        let mut spans: Vec<Value> = serde_json::from_slice(&batch).expect("valid JSON");
        assert_eq!(spans.len(), 1);
        spans.remove(0)
    }

    #[test]
    fn zipkin_batches_are_json_with_escaped_strings_and_one_value_per_tag() {
        let mut s = SpanData {
            trace_id: 0x463ac35c9f6413ad48485a3953bb6124,
            id: 0xa2fb4a1d1a96d312,
            parent_id: None,
            kind: "CLIENT",
            name: "a \"quoted\" name\n".into(),
            start_us: 1,
            duration_us: 2,
            service_name: "sleep.default".into(),
            tags: vec![
                (Cow::Borrowed("zone"), "standard".into()),
                (Cow::Borrowed("b"), "\u{1}ctl".into()),
                (Cow::Owned("zone".into()), "custom".into()),
            ],
        };
        let one = zipkin_json(&s, Some("10.0.0.1".parse().expect("ip")));
        assert_eq!(one["name"], "a \"quoted\" name\n");
        assert_eq!(one["tags"]["zone"], "custom", "the last set wins");
        assert_eq!(one["tags"]["b"], "\u{1}ctl");
        assert_eq!(one["localEndpoint"]["ipv4"], "10.0.0.1");
        assert!(one.get("parentId").is_none());
        s.parent_id = Some(7);
        let batch = zipkin_batch(&[s.clone(), s], None);
        let text = String::from_utf8(batch).expect("utf-8");
        let parsed: Vec<Value> = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1]["parentId"], "0000000000000007");
        assert_eq!(
            text.matches("\"zone\"").count(),
            2,
            "one zone per span: {text}"
        );
    }

    fn record(reporter: Reporter) -> RequestRecord {
        let mut l = MetricLabels::unknown(reporter);
        l.source_canonical_service = "sleep".into();
        l.source_canonical_revision = "v1".into();
        l.destination_canonical_service = "httpbin".into();
        l.destination_canonical_revision = "latest".into();
        l.destination_service = "httpbin.default.svc.cluster.local".into();
        let mut r = RequestRecord::new(SystemTime::now(), Arc::new(l));
        r.method = Some(http::Method::GET);
        r.path = Some(http::uri::PathAndQuery::from_static("/status/418?x=1"));
        r.protocol = Some(http::Version::HTTP_11);
        r.authority = Some(HeaderValue::from_static("httpbin:8000"));
        r.response_code = 503;
        r.upstream_cluster = Some("outbound|8000||httpbin.default.svc.cluster.local".into());
        r.request_id = Some(HeaderValue::from_static("req-1"));
        r.duration = Duration::from_millis(3);
        r
    }

    fn exporter(tags: Vec<CustomTag>) -> Exporter {
        let mut o = TracingOptions::new(Collector::zipkin("127.0.0.1:9411"), "default");
        o.node_id = "sidecar~10.0.0.5~sleep-1.default~default.svc.cluster.local".into();
        o.local_ip = Some(IpAddr::from([10, 0, 0, 5]));
        o.custom_tags = tags;
        o.max_path_tag_length = 8;
        let c = o.collector.clone().expect("a collector");
        Exporter::new(o, c)
    }

    fn start(headers: &HeaderMap, tags: &[Option<HeaderName>]) -> SpanStart {
        let o = TracingOptions::new(Collector::zipkin("127.0.0.1:9"), "default");
        let tracer =
            Tracer::start(o, Counter::default(), &SentCounters::default()).expect("tracer");
        SpanStart {
            sink: Sink(Arc::new(tracer)),
            ctx: TraceContext {
                trace_id: 0xabc,
                span_id: 0x12,
                parent_span_id: Some(0x34),
                sampled: true,
            },
            scheme: headers.get(&FORWARDED_PROTO).cloned(),
            downstream_cluster: None,
            header_tags: tags
                .iter()
                .map(|n| n.as_ref().and_then(|n| headers.get(n).cloned()))
                .collect(),
            service_port: None,
        }
    }

    #[test]
    fn a_client_span_is_named_and_tagged_as_envoy_under_istio() {
        let e = exporter(vec![]);
        let span = zipkin_json(
            &e.span_data(&start(&HeaderMap::new(), &[]), &record(Reporter::Source)),
            e.opts.local_ip,
        );
        assert_eq!(span["traceId"], "00000000000000000000000000000abc");
        assert_eq!(span["id"], "0000000000000012");
        assert_eq!(span["parentId"], "0000000000000034");
        assert_eq!(span["kind"], "CLIENT");
        assert_eq!(span["name"], "httpbin.default.svc.cluster.local:8000/*");
        assert_eq!(span["localEndpoint"]["serviceName"], "sleep.default");
        assert_eq!(span["localEndpoint"]["ipv4"], "10.0.0.5");
        assert!(span.get("shared").is_none());
        let t = &span["tags"];
        assert_eq!(t["http.url"], "http://httpbin:8000/status/");
        assert_eq!(t["http.method"], "GET");
        assert_eq!(t["http.protocol"], "HTTP/1.1");
        assert_eq!(t["http.status_code"], "503");
        assert_eq!(t["error"], "true");
        assert_eq!(t["response_flags"], "-");
        assert_eq!(t["istio.canonical_service"], "sleep");
        assert_eq!(t["istio.canonical_revision"], "v1");
        assert_eq!(t["istio.mesh_id"], "cluster.local");
        assert_eq!(t["istio.namespace"], "default");
        assert_eq!(t["guid:x-request-id"], "req-1");
        assert_eq!(
            t["upstream_cluster"],
            "outbound|8000||httpbin.default.svc.cluster.local"
        );
        assert_eq!(t["component"], "proxy");
        assert_eq!(t["user_agent"], "-");
    }

    #[test]
    fn a_server_span_names_the_local_workload() {
        let e = exporter(vec![]);
        let mut rec = record(Reporter::Destination);
        rec.response_code = 200;
        let span = zipkin_json(
            &e.span_data(&start(&HeaderMap::new(), &[]), &rec),
            e.opts.local_ip,
        );
        assert_eq!(span["kind"], "SERVER");
        assert_eq!(span["localEndpoint"]["serviceName"], "httpbin.default");
        assert_eq!(span["tags"]["istio.canonical_service"], "httpbin");
        assert!(span["tags"].get("error").is_none());
    }

    #[test]
    fn custom_tags_literal_environment_and_header() {
        let name = HeaderName::from_static("x-tenant");
        let tags = vec![
            CustomTag {
                tag: "lit".into(),
                value: CustomTagValue::Literal("v".into()),
            },
            CustomTag {
                tag: "env".into(),
                value: CustomTagValue::Environment {
                    name: "AMA_SPANS_TEST_UNSET_VARIABLE".into(),
                    default: "dflt".into(),
                },
            },
            CustomTag {
                tag: "hdr".into(),
                value: CustomTagValue::Header {
                    name: name.clone(),
                    default: String::new(),
                },
            },
            CustomTag {
                tag: "hdr-default".into(),
                value: CustomTagValue::Header {
                    name: HeaderName::from_static("x-absent"),
                    default: "none".into(),
                },
            },
        ];
        let e = exporter(tags);
        let mut h = HeaderMap::new();
        h.insert(&name, HeaderValue::from_static("acme"));
        let names = [
            None,
            None,
            Some(name),
            Some(HeaderName::from_static("x-absent")),
        ];
        let span = zipkin_json(
            &e.span_data(&start(&h, &names), &record(Reporter::Source)),
            e.opts.local_ip,
        );
        let t = &span["tags"];
        assert_eq!(t["lit"], "v");
        assert_eq!(t["env"], "dflt");
        assert_eq!(t["hdr"], "acme");
        assert_eq!(t["hdr-default"], "none");
    }

    #[test]
    fn a_bad_collector_address_is_refused() {
        let o = TracingOptions::new(Collector::zipkin("zipkin"), "default");
        let err = Tracer::start(o, Counter::default(), &SentCounters::default())
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("tracing collector address \"zipkin\": expected host:port")
        );
    }
}
