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
