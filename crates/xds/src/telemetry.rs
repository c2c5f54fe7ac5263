//! `Tracing`: what a proxy does with trace spans, as the control plane resolves it for that
//! proxy from the Telemetry API and MeshConfig (`extensionProviders`, `defaultProviders`). It
//! rides on the proxy's own Node resource ([`crate::NodeRef::tracing`]), as the outbound traffic
//! policy does: it depends on the proxy's workload. Unset, the proxy keeps the tracing of its
//! ProxyConfig (`PROXY_CONFIG` `tracing`, `--zipkinAddress`).

use serde::{Deserialize, Serialize};

/// A proxy's tracing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// Where spans go; none: no span is reported (`disableSpanReporting`, or no provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<TracingCollector>,
    /// Share of new traces sampled, in hundredths of a percent (Envoy's precision): 10000 is
    /// 100 %, 1 is 0.01 %.
    pub sampling_basis_points: u32,
    /// Custom tags of every span.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_tags: Vec<TracingTag>,
    /// Bytes of the path kept in `http.url` (none: Envoy's 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_path_tag_length: Option<u32>,
    /// No tracing at all (MeshConfig `enableTracing: false` and no Telemetry `tracing`): the
    /// proxy neither starts nor continues traces, so trace headers pass through untouched and
    /// no span is made, as Envoy without a tracer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

impl Tracing {
    /// The sampling share in percent.
    pub fn sampling_percent(&self) -> f64 {
        f64::from(self.sampling_basis_points.min(10_000)) / 100.0
    }

    /// Basis points of a percentage (0 to 100, rounded to 0.01 %).
    pub fn basis_points(percent: f64) -> u32 {
        (percent * 100.0).round().clamp(0.0, 10_000.0) as u32
    }
}

/// A collector: its protocol and address (a host the proxy resolves, and a port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingCollector {
    /// The wire format.
    pub protocol: CollectorProtocol,
    /// Host (`zipkin.istio-system.svc.cluster.local`).
    pub host: String,
    /// Port.
    pub port: u16,
    /// HTTP path: `/api/v2/spans` (Zipkin), `/v1/traces` (OTLP over HTTP); none for gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A collector's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CollectorProtocol {
    /// Zipkin v2 JSON over HTTP.
    Zipkin,
    /// OTLP protobuf over gRPC.
    OtlpGrpc,
    /// OTLP protobuf over HTTP.
    OtlpHttp,
}

/// One custom tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingTag {
    /// The tag's name.
    pub tag: String,
    /// A fixed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,
    /// An environment variable of the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// A request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The value when the variable or header is absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_value: String,
}

/// Istio's TEXT access-log format (`EnvoyTextLogFormat` in `pilot/pkg/model/telemetry_logging.go`):
/// the format of a file provider that sets none, and of MeshConfig `accessLogEncoding: TEXT`.
pub const ISTIO_TEXT_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% \
%PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \
\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \
\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% \
%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% \
%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's JSON access-log keys and their operators (`EnvoyJSONLogFormatIstio`), 24 entries.
pub const ISTIO_JSON_LOG_FORMAT: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

/// A proxy's access logs from the Telemetry API (`accessLogging`), per side of the proxy, as
/// pilot resolves them per listener class: the outbound listeners and gateways are the CLIENT
/// side, the inbound listener the SERVER side. A side that is `None` keeps MeshConfig's
/// `accessLogFile` / `accessLogEncoding` / `accessLogFormat` (Istio's fallback when no Telemetry
/// names a provider for that mode); `Some` of an empty list writes no log on that side
/// (`disabled: true`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    /// Requests and connections the proxy makes (outbound, gateways).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Vec<AccessLog>>,
    /// Requests and connections the proxy serves (inbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Vec<AccessLog>>,
}

/// One access log: a MeshConfig `envoyFileAccessLog` provider and the Telemetry's filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLog {
    /// The provider's name (`envoy`), for the proxy's config dump.
    pub provider: String,
    /// Where lines go: `/dev/stdout` or a file path.
    pub path: String,
    /// The line format.
    pub format: AccessLogFormat,
    /// `filter.expression`: a CEL expression over Envoy's attributes (`response.code >= 400`);
    /// a line is written only when it evaluates to true (an error or a non-bool: not written,
    /// as Envoy's CEL filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// An access log's line format (`logFormat` of `envoyFileAccessLog`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum AccessLogFormat {
    /// `logFormat.text`: an Envoy format string ending in a newline; Istio's
    /// `EnvoyTextLogFormat` when the provider sets no format.
    Text(String),
    /// `logFormat.labels`: JSON object keys and their Envoy format strings, in the provider's
    /// order; Istio's 24 default keys when the provider sets no labels.
    Json(Vec<(String, String)>),
}

/// A proxy's Istio metrics from the Telemetry API (`metrics`), per side as [`AccessLogging`]:
/// CLIENT (`reporter="source"`) and SERVER (`reporter="destination"`). A side that is `None`
/// reports every standard metric with its standard labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsConfig {
    /// `reporter="source"` metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ModeMetrics>,
    /// `reporter="destination"` metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ModeMetrics>,
}

/// The metrics of one side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModeMetrics {
    /// No metric at all on this side (`ALL_METRICS` disabled, or no `prometheus` provider in
    /// scope).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Per-metric overrides, sorted by metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricOverride>,
}

/// One metric's override.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricOverride {
    /// The metric.
    pub metric: IstioMetric,
    /// Not reported.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Label changes, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<TagOverride>,
}

/// Istio's standard metrics, as the Telemetry API's `match.metric` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
    /// `istio_request_messages_total` (gRPC streaming).
    GrpcRequestMessages,
    /// `istio_response_messages_total` (gRPC streaming).
    GrpcResponseMessages,
}

/// One label change (`tagOverrides.<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    /// The label.
    pub name: String,
    /// `UPSERT`: a CEL expression whose value (as a string) becomes the label's value; a
    /// standard label keeps its place, a new one comes after them. `None`: `REMOVE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}
