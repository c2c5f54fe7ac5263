//! What the traffic side hands to telemetry at the end of a request or a TCP connection.
//!
//! A [`RequestRecord`] carries the 24 fields of Istio's access log, typed, plus the metric labels.
//! Header-derived fields are `http::HeaderValue`s and the path is a `PathAndQuery`: cloning them from
//! the request is a reference-count bump on the buffer hyper parsed, not a copy. Peer information
//! for metrics ([`MetricLabels`]) is built once per connection or destination and shared through an
//! `Arc`, so a request adds no allocation for its labels.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Version};

use super::flags::ResponseFlags;

/// Which side of a call reports a metric: Istio's `reporter` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client-side proxy (outbound): `reporter="source"`.
    Source,
    /// The server-side proxy (inbound): `reporter="destination"`.
    Destination,
}

impl Reporter {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// Istio's `connection_security_policy` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// mTLS between the sidecars.
    MutualTls,
    /// Plain text.
    None,
    /// Not known (the outbound side reports `unknown`, as Istio does).
    Unknown,
}

impl SecurityPolicy {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::None => "none",
            SecurityPolicy::Unknown => "unknown",
        }
    }
}

/// Istio's `request_protocol` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    /// HTTP/1.x or HTTP/2 that is not gRPC.
    Http,
    /// gRPC (content-type `application/grpc*`).
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl RequestProtocol {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
            RequestProtocol::Tcp => "tcp",
        }
    }
}

/// The labels of Istio's standard metrics that describe the two peers and the service.
///
/// Built once per connection (or per destination service) by the traffic side, wrapped in an
/// `Arc` and shared by every request on it. Per-request labels (`request_protocol`,
/// `response_code`, `grpc_response_status`, `response_flags`) come from the record. Unknown
/// values are `"unknown"`, as Istio prints them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricLabels {
    /// `reporter`.
    pub reporter: Reporter,
    /// `source_workload`, e.g. the Deployment name.
    pub source_workload: Arc<str>,
    /// `source_workload_namespace`.
    pub source_workload_namespace: Arc<str>,
    /// `source_principal`: `spiffe://cluster.local/ns/default/sa/default`, or `unknown`.
    pub source_principal: Arc<str>,
    /// `source_app` (pod label `app`).
    pub source_app: Arc<str>,
    /// `source_version` (pod label `version`).
    pub source_version: Arc<str>,
    /// `source_canonical_service`.
    pub source_canonical_service: Arc<str>,
    /// `source_canonical_revision`.
    pub source_canonical_revision: Arc<str>,
    /// `source_cluster`.
    pub source_cluster: Arc<str>,
    /// `destination_workload`.
    pub destination_workload: Arc<str>,
    /// `destination_workload_namespace`.
    pub destination_workload_namespace: Arc<str>,
    /// `destination_principal`.
    pub destination_principal: Arc<str>,
    /// `destination_app`.
    pub destination_app: Arc<str>,
    /// `destination_version`.
    pub destination_version: Arc<str>,
    /// `destination_service`: the FQDN, `httpbin-service.default.svc.cluster.local`.
    pub destination_service: Arc<str>,
    /// `destination_service_name`: `httpbin-service`.
    pub destination_service_name: Arc<str>,
    /// `destination_service_namespace`.
    pub destination_service_namespace: Arc<str>,
    /// `destination_canonical_service`.
    pub destination_canonical_service: Arc<str>,
    /// `destination_canonical_revision`.
    pub destination_canonical_revision: Arc<str>,
    /// `destination_cluster`.
    pub destination_cluster: Arc<str>,
    /// `connection_security_policy`.
    pub connection_security_policy: SecurityPolicy,
}

impl MetricLabels {
    /// All peer fields `"unknown"`, as Istio reports a peer it knows nothing about.
    pub fn unknown(reporter: Reporter) -> MetricLabels {
        static UNKNOWN: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        let u = UNKNOWN.get_or_init(|| Arc::from("unknown")).clone();
        MetricLabels {
            reporter,
            source_workload: u.clone(),
            source_workload_namespace: u.clone(),
            source_principal: u.clone(),
            source_app: u.clone(),
            source_version: u.clone(),
            source_canonical_service: u.clone(),
            source_canonical_revision: u.clone(),
            source_cluster: u.clone(),
            destination_workload: u.clone(),
            destination_workload_namespace: u.clone(),
            destination_principal: u.clone(),
            destination_app: u.clone(),
            destination_version: u.clone(),
            destination_service: u.clone(),
            destination_service_name: u.clone(),
            destination_service_namespace: u.clone(),
            destination_canonical_service: u.clone(),
            destination_canonical_revision: u.clone(),
            destination_cluster: u,
            connection_security_policy: SecurityPolicy::Unknown,
        }
    }

    /// The peer labels in Istio's order, without the reporter and the per-request labels.
    pub(crate) fn peer_pairs(&self) -> [(&'static str, &str); 19] {
        [
            ("source_workload", &self.source_workload),
            ("source_canonical_service", &self.source_canonical_service),
            ("source_canonical_revision", &self.source_canonical_revision),
            ("source_workload_namespace", &self.source_workload_namespace),
            ("source_principal", &self.source_principal),
            ("source_app", &self.source_app),
            ("source_version", &self.source_version),
            ("source_cluster", &self.source_cluster),
            ("destination_workload", &self.destination_workload),
            (
                "destination_workload_namespace",
                &self.destination_workload_namespace,
            ),
            ("destination_principal", &self.destination_principal),
            ("destination_app", &self.destination_app),
            ("destination_version", &self.destination_version),
            ("destination_service", &self.destination_service),
            (
                "destination_canonical_service",
                &self.destination_canonical_service,
            ),
            (
                "destination_canonical_revision",
                &self.destination_canonical_revision,
            ),
            ("destination_service_name", &self.destination_service_name),
            (
                "destination_service_namespace",
                &self.destination_service_namespace,
            ),
            ("destination_cluster", &self.destination_cluster),
        ]
    }
}

/// One finished HTTP request (or gRPC call) as the access log and the metrics see it.
///
/// Field names follow Istio's JSON access log keys. `None` means "not available" and prints as
/// `-` (TEXT) or `null` (JSON). Build it with [`RequestRecord::new`] and set what you know.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// `start_time`: when the first byte of the request arrived.
    pub start_time: SystemTime,
    /// `route_name`: the matched route (`default` for Istio's catch-all).
    pub route_name: Option<Arc<str>>,
    /// `method`.
    pub method: Option<Method>,
    /// `path`: the original path with query (`x-envoy-original-path` if rewritten, else `:path`).
    pub path: Option<PathAndQuery>,
    /// `protocol`: the downstream HTTP version (`HTTP/1.1`, `HTTP/2`).
    pub protocol: Option<Version>,
    /// `response_code`: the status sent downstream, 0 when none was sent.
    pub response_code: u16,
    /// `response_flags`.
    pub response_flags: ResponseFlags,
    /// `response_code_details`: `via_upstream`, `route_not_found`, `upstream_reset_before_response_started{remote_connection_failure}`...
    pub response_code_details: Option<Cow<'static, str>>,
    /// `connection_termination_details`.
    pub connection_termination_details: Option<Cow<'static, str>>,
    /// `upstream_transport_failure_reason`: e.g. a TLS handshake error.
    pub upstream_transport_failure_reason: Option<String>,
    /// `bytes_received`: request body bytes.
    pub bytes_received: u64,
    /// `bytes_sent`: response body bytes.
    pub bytes_sent: u64,
    /// `duration`: from start to the last byte out.
    pub duration: Duration,
    /// `upstream_service_time`: the value of `x-envoy-upstream-service-time` we sent, if any.
    pub upstream_service_time: Option<Duration>,
    /// `x_forwarded_for` request header.
    pub x_forwarded_for: Option<HeaderValue>,
    /// `user_agent` request header.
    pub user_agent: Option<HeaderValue>,
    /// `request_id`: `x-request-id`.
    pub request_id: Option<HeaderValue>,
    /// `authority`: `:authority` / `Host`.
    pub authority: Option<HeaderValue>,
    /// `upstream_host`: the endpoint the request went to.
    pub upstream_host: Option<SocketAddr>,
    /// `upstream_cluster`: `outbound|80||httpbin-service.default.svc.cluster.local`, `inbound|80||`.
    pub upstream_cluster: Option<Arc<str>>,
    /// `upstream_local_address`.
    pub upstream_local_address: Option<SocketAddr>,
    /// `downstream_local_address`: the original destination (VIP:port outbound, pod IP:port inbound).
    pub downstream_local_address: Option<SocketAddr>,
    /// `downstream_remote_address`.
    pub downstream_remote_address: Option<SocketAddr>,
    /// `requested_server_name`: the SNI (`outbound_.80_._.httpbin-service.default.svc.cluster.local`).
    pub requested_server_name: Option<Arc<str>>,
    /// Peer and service labels for the metrics.
    pub labels: Arc<MetricLabels>,
    /// `request_protocol` metric label.
    pub request_protocol: RequestProtocol,
    /// `grpc_response_status` metric label (the `grpc-status` trailer), for gRPC calls.
    pub grpc_status: Option<u16>,
    /// The request's trace span, when it is sampled and a tracer is configured
    /// ([`crate::telemetry::Telemetry::start_span`]); `None` costs nothing.
    pub span: Option<Box<super::spans::SpanStart>>,
    /// Request headers the Telemetry API's expressions read that the fields above do not keep
    /// ([`super::Telemetry::capture_headers`]); `None` costs nothing.
    pub headers: Option<Box<super::expr::CapturedHeaders>>,
}

impl RequestRecord {
    /// A record for a request that started at `start_time`, everything else empty.
    pub fn new(start_time: SystemTime, labels: Arc<MetricLabels>) -> RequestRecord {
        RequestRecord {
            start_time,
            route_name: None,
            method: None,
            path: None,
            protocol: None,
            response_code: 0,
            response_flags: ResponseFlags::NONE,
            response_code_details: None,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            upstream_service_time: None,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            downstream_local_address: None,
            downstream_remote_address: None,
            requested_server_name: None,
            labels,
            request_protocol: RequestProtocol::Http,
            grpc_status: None,
            span: None,
            headers: None,
        }
    }
}

/// One finished opaque TCP connection, for the access log.
///
/// Istio logs TCP connections with the same keys as requests: HTTP-only fields print as
/// `-`/`null`, `protocol` as `-` and `response_code` as `0`, as Envoy's tcp_proxy does.
#[derive(Debug, Clone)]
pub struct TcpRecord {
    /// The side of the proxy that handled the connection: outbound and gateways `Source`
    /// (the Telemetry API's CLIENT), inbound `Destination` (SERVER).
    pub reporter: Reporter,
    /// `start_time`: when the downstream connection was accepted.
    pub start_time: SystemTime,
    /// `duration`: the connection's lifetime.
    pub duration: Duration,
    /// `bytes_received`: bytes read from downstream.
    pub bytes_received: u64,
    /// `bytes_sent`: bytes written to downstream.
    pub bytes_sent: u64,
    /// `response_flags` (`UF`, `UO`, `NR`, `URX`, `DT`...).
    pub response_flags: ResponseFlags,
    /// `response_code_details`: Envoy's `filter_chain_not_found` for a connection the listener
    /// had no filter chain for (with `NR`); otherwise none, as for Envoy's TCP proxy.
    pub response_code_details: Option<&'static str>,
    /// `connection_termination_details`.
    pub connection_termination_details: Option<Cow<'static, str>>,
    /// `upstream_transport_failure_reason`.
    pub upstream_transport_failure_reason: Option<String>,
    /// `route_name`.
    pub route_name: Option<Arc<str>>,
    /// `upstream_host`.
    pub upstream_host: Option<SocketAddr>,
    /// `upstream_cluster`: `outbound|3306||mysql.default.svc.cluster.local`, `PassthroughCluster`...
    pub upstream_cluster: Option<Arc<str>>,
    /// `upstream_local_address`.
    pub upstream_local_address: Option<SocketAddr>,
    /// `downstream_local_address`.
    pub downstream_local_address: Option<SocketAddr>,
    /// `downstream_remote_address`.
    pub downstream_remote_address: Option<SocketAddr>,
    /// `requested_server_name`: SNI, when the connection was TLS.
    pub requested_server_name: Option<Arc<str>>,
}

impl TcpRecord {
    /// A record for a connection accepted at `start_time` by the `reporter` side, everything
    /// else empty.
    pub fn new(start_time: SystemTime, reporter: Reporter) -> TcpRecord {
        TcpRecord {
            reporter,
            start_time,
            duration: Duration::ZERO,
            bytes_received: 0,
            bytes_sent: 0,
            response_flags: ResponseFlags::NONE,
            response_code_details: None,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            route_name: None,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            downstream_local_address: None,
            downstream_remote_address: None,
            requested_server_name: None,
        }
    }

    /// A record for a connection accepted at `start_time` by the `reporter` side, addressed to
    /// `local` (its original destination) from `remote`, everything else empty.
    pub fn accepted(
        start_time: SystemTime,
        reporter: Reporter,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> TcpRecord {
        let mut rec = TcpRecord::new(start_time, reporter);
        rec.downstream_local_address = Some(local);
        rec.downstream_remote_address = Some(remote);
        rec
    }
}
