//! DestinationRule: how traffic to a service is balanced, pooled, ejected and secured, and its
//! subsets (Istio's `destination_rule.proto`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{PortSelector, WorkloadSelector, min_duration};
use crate::Duration;
use crate::check::{Problems, label_value};

/// The spec of a DestinationRule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    /// The service the rule is for. Required.
    pub host: String,
    /// Policies for all of its traffic.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named groups of its endpoints, by labels.
    pub subsets: Vec<Subset>,
    /// Namespaces that see this rule.
    pub export_to: Vec<String>,
    /// Workloads the rule applies to (all when unset).
    pub workload_selector: Option<WorkloadSelector>,
}

/// Balancing, pooling, outlier detection and TLS, for a whole service or one port of it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// How an endpoint is picked.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection and request limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the endpoints.
    pub tls: Option<ClientTlsSettings>,
    /// Overrides for single ports.
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnel settings (HTTP CONNECT), passed through.
    pub tunnel: Option<serde_json::Value>,
    /// PROXY protocol to the endpoints, passed through.
    pub proxy_protocol: Option<serde_json::Value>,
}

/// Policy for one port.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port. Required.
    pub port: Option<PortSelector>,
    /// How an endpoint is picked.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection and request limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the endpoints.
    pub tls: Option<ClientTlsSettings>,
}

/// A named group of endpoints.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Its name, used by routes (`subset: v1`). Required.
    pub name: String,
    /// Labels its endpoints carry.
    pub labels: BTreeMap<String, String>,
    /// Policies that replace the rule's for this subset.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// How an endpoint is picked: a simple algorithm or consistent hashing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// A simple algorithm.
    pub simple: Option<SimpleLb>,
    /// Consistent hashing.
    pub consistent_hash: Option<ConsistentHash>,
    /// Locality-aware balancing, passed through.
    pub locality_lb_setting: Option<serde_json::Value>,
    /// Slow start of new endpoints.
    pub warmup_duration_secs: Option<Duration>,
    /// Slow start settings, passed through.
    pub warmup: Option<serde_json::Value>,
}

/// The simple balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// The proxy's default (least request).
    Unspecified,
    /// Deprecated name of least request.
    LeastConn,
    /// Random.
    Random,
    /// Forward to the original destination.
    Passthrough,
    /// Round robin.
    RoundRobin,
    /// Power of two choices by outstanding requests.
    LeastRequest,
}

/// Consistent hashing on a request property.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    /// Hash on a header.
    pub http_header_name: Option<String>,
    /// Hash on a cookie (created when missing and `ttl` is set).
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the source IP.
    pub use_source_ip: Option<bool>,
    /// Hash on a query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ketama ring hash (the default algorithm).
    pub ring_hash: Option<RingHash>,
    /// Maglev.
    pub maglev: Option<MagLev>,
    /// Deprecated minimum ring size.
    pub minimum_ring_size: Option<u64>,
}

/// Ring hash settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Minimum number of ring entries (1024 when 0).
    pub minimum_ring_size: u64,
}

/// Maglev settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MagLev {
    /// Table size, a prime (65537 when 0).
    pub table_size: u64,
}

/// A cookie for consistent hashing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Its name. Required.
    pub name: String,
    /// Its path.
    pub path: String,
    /// Its lifetime.
    pub ttl: Option<Duration>,
    /// Attributes, passed through.
    pub attributes: Vec<serde_json::Value>,
}

/// Connection and request limits.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    pub http: Option<HttpSettings>,
}

/// TCP limits.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Connections to a destination.
    pub max_connections: Option<i64>,
    /// Connect timeout.
    pub connect_timeout: Option<Duration>,
    /// Keepalive probes.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Longest life of a connection.
    pub max_connection_duration: Option<Duration>,
    /// Idle timeout of a connection.
    pub idle_timeout: Option<Duration>,
}

/// TCP keepalive probes on upstream connections.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Probes without an answer before the connection is dropped (the OS default when 0).
    pub probes: u32,
    /// Idle time before the first probe.
    pub time: Option<Duration>,
    /// Time between probes.
    pub interval: Option<Duration>,
}

/// HTTP limits.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Requests waiting for a connection.
    pub http1_max_pending_requests: Option<i64>,
    /// Active requests to a destination.
    pub http2_max_requests: Option<i64>,
    /// Requests per connection (1 disables keep-alive).
    pub max_requests_per_connection: Option<i64>,
    /// Outstanding retries to a destination.
    pub max_retries: Option<i64>,
    /// Idle timeout of an upstream connection.
    pub idle_timeout: Option<Duration>,
    /// Whether HTTP/1.1 connections are upgraded to HTTP/2.
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the protocol of the downstream connection.
    pub use_client_protocol: Option<bool>,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: Option<i64>,
}

/// Upgrade of HTTP/1.1 to HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// The mesh's default.
    Default,
    /// Never.
    DoNotUpgrade,
    /// Always.
    Upgrade,
}

/// Ejection of endpoints that fail.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated: gateway errors before ejection.
    pub consecutive_errors: Option<i64>,
    /// Count local-origin failures apart.
    pub split_external_local_origin_errors: bool,
    /// Local-origin failures before ejection.
    pub consecutive_local_origin_failures: Option<i64>,
    /// 502, 503 and 504 answers before ejection.
    pub consecutive_gateway_errors: Option<i64>,
    /// 5xx answers before ejection.
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<i64>,
    /// Time between analysis sweeps.
    pub interval: Option<Duration>,
    /// Minimum ejection time.
    pub base_ejection_time: Option<Duration>,
    /// Most endpoints that may be ejected, in percent.
    pub max_ejection_percent: Option<i64>,
    /// Detection stops below this share of healthy endpoints, in percent.
    pub min_health_percent: Option<i64>,
}

/// TLS from the proxy to the endpoints.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// The mode. Required.
    pub mode: Option<ClientTlsMode>,
    /// Client certificate file (MUTUAL).
    pub client_certificate: String,
    /// Client key file (MUTUAL).
    pub private_key: String,
    /// CA certificates file.
    pub ca_certificates: String,
    /// Secret holding the certificates.
    pub credential_name: String,
    /// Names the server certificate must have.
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    pub sni: String,
    /// Skip verifying the server.
    pub insecure_skip_verify: Option<bool>,
    /// Certificate revocation list file.
    pub ca_crl: String,
}

/// TLS modes towards endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plain text.
    Disable,
    /// TLS, verifying the server.
    Simple,
    /// Mutual TLS with given certificates.
    Mutual,
    /// Mutual TLS with the mesh's certificates.
    IstioMutual,
}

impl DestinationRule {
    /// Checks the spec (at path `at`, normally `spec`), as Istio's validation does.
    pub fn validate(&self, at: &str, p: &mut Problems) {
        if self.host.is_empty() {
            p.add(
                format!("{at}.host"),
                "missing: a DestinationRule needs a host",
            );
        } else {
            p.host(format!("{at}.host"), &self.host);
        }
        if let Some(tp) = &self.traffic_policy {
            tp.validate(&format!("{at}.trafficPolicy"), p);
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            let at = format!("{at}.subsets[{i}]");
            if s.name.is_empty() {
                p.add(format!("{at}.name"), "missing: a subset needs a name");
            } else if let Err(m) = label_value(&s.name) {
                p.add(format!("{at}.name"), m);
            } else if !names.insert(s.name.as_str()) {
                p.add(
                    format!("{at}.name"),
                    format!("\"{}\" is defined twice", s.name),
                );
            }
            p.selector_labels(&format!("{at}.labels"), &s.labels);
            if let Some(tp) = &s.traffic_policy {
                tp.validate(&format!("{at}.trafficPolicy"), p);
            }
        }
        if let Some(ws) = &self.workload_selector {
            p.selector_labels(
                &format!("{at}.workloadSelector.matchLabels"),
                &ws.match_labels,
            );
        }
    }
}

impl TrafficPolicy {
    fn validate(&self, at: &str, p: &mut Problems) {
        if self == &TrafficPolicy::default() {
            p.add(at, "must set at least one field");
        }
        validate_policy(
            p,
            at,
            &self.load_balancer,
            &self.connection_pool,
            &self.outlier_detection,
            &self.tls,
        );
        let mut ports = BTreeSet::new();
        for (i, pl) in self.port_level_settings.iter().enumerate() {
            let at = format!("{at}.portLevelSettings[{i}]");
            match &pl.port {
                None => p.add(
                    format!("{at}.port"),
                    "missing: a port-level setting needs a port",
                ),
                Some(port) => {
                    p.port(format!("{at}.port.number"), port.number);
                    if !ports.insert(port.number) {
                        p.add(
                            format!("{at}.port.number"),
                            format!("port {} has settings twice", port.number),
                        );
                    }
                }
            }
            validate_policy(
                p,
                &at,
                &pl.load_balancer,
                &pl.connection_pool,
                &pl.outlier_detection,
                &pl.tls,
            );
        }
    }
}

fn validate_policy(
    p: &mut Problems,
    at: &str,
    lb: &Option<LoadBalancerSettings>,
    pool: &Option<ConnectionPoolSettings>,
    outlier: &Option<OutlierDetection>,
    tls: &Option<ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        let at = format!("{at}.loadBalancer");
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            p.add(&at, "simple and consistentHash exclude each other: set one");
        }
        if let Some(ch) = &lb.consistent_hash {
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip.is_some(),
                ch.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                p.add(
                    format!("{at}.consistentHash"),
                    "must set exactly one of httpHeaderName, httpCookie, useSourceIp or \
                     httpQueryParameterName",
                );
            }
            if ch.ring_hash.is_some() && ch.maglev.is_some() {
                p.add(
                    format!("{at}.consistentHash"),
                    "ringHash and maglev exclude each other: set one",
                );
            }
            if ch.minimum_ring_size.is_some_and(|n| n != 0)
                && (ch.ring_hash.is_some() || ch.maglev.is_some())
            {
                p.add(
                    format!("{at}.consistentHash.minimumRingSize"),
                    "the deprecated minimumRingSize excludes ringHash and maglev: set one",
                );
            }
            if let Some(m) = &ch.maglev {
                let at = format!("{at}.consistentHash.maglev.tableSize");
                if m.table_size == 0 {
                    p.add(at, "missing: maglev needs a tableSize");
                } else if m.table_size >= 5_000_011 {
                    p.add(at, format!("{} must be less than 5000011", m.table_size));
                } else if !is_prime(m.table_size) {
                    p.add(at, format!("{} must be a prime number", m.table_size));
                }
            }
            if let Some(c) = &ch.http_cookie
                && c.name.is_empty()
            {
                p.add(
                    format!("{at}.consistentHash.httpCookie.name"),
                    "missing: a hash cookie needs a name",
                );
            }
        }
    }
    if let Some(pool) = pool {
        let at = format!("{at}.connectionPool");
        if let Some(tcp) = &pool.tcp {
            let at = format!("{at}.tcp");
            if let Some(n) = tcp.max_connections {
                p.non_negative(format!("{at}.maxConnections"), n);
            }
            min_duration(p, format!("{at}.connectTimeout"), &tcp.connect_timeout);
            min_duration(
                p,
                format!("{at}.maxConnectionDuration"),
                &tcp.max_connection_duration,
            );
        }
        if let Some(http) = &pool.http {
            let at = format!("{at}.http");
            for (name, v) in [
                ("http1MaxPendingRequests", http.http1_max_pending_requests),
                ("http2MaxRequests", http.http2_max_requests),
                ("maxRequestsPerConnection", http.max_requests_per_connection),
                ("maxRetries", http.max_retries),
                ("maxConcurrentStreams", http.max_concurrent_streams),
            ] {
                if let Some(v) = v {
                    p.non_negative(format!("{at}.{name}"), v);
                }
            }
            min_duration(p, format!("{at}.idleTimeout"), &http.idle_timeout);
        }
    }
    if let Some(o) = outlier {
        let at = format!("{at}.outlierDetection");
        for (name, v) in [
            ("consecutiveErrors", o.consecutive_errors),
            (
                "consecutiveLocalOriginFailures",
                o.consecutive_local_origin_failures,
            ),
            ("consecutiveGatewayErrors", o.consecutive_gateway_errors),
            ("consecutive5xxErrors", o.consecutive_5xx_errors),
        ] {
            if let Some(v) = v {
                p.non_negative(format!("{at}.{name}"), v);
            }
        }
        min_duration(p, format!("{at}.interval"), &o.interval);
        min_duration(p, format!("{at}.baseEjectionTime"), &o.base_ejection_time);
        for (name, v) in [
            ("maxEjectionPercent", o.max_ejection_percent),
            ("minHealthPercent", o.min_health_percent),
        ] {
            if let Some(v) = v
                && !(0..=100).contains(&v)
            {
                p.add(
                    format!("{at}.{name}"),
                    format!("{v} must be 0..100 (a percentage)"),
                );
            }
        }
    }
    if let Some(tls) = tls {
        let at = format!("{at}.tls");
        if tls.mode == Some(ClientTlsMode::Mutual) && tls.credential_name.is_empty() {
            if tls.client_certificate.is_empty() {
                p.add(
                    format!("{at}.clientCertificate"),
                    "missing: MUTUAL needs a client certificate (or a credentialName)",
                );
            }
            if tls.private_key.is_empty() {
                p.add(
                    format!("{at}.privateKey"),
                    "missing: MUTUAL needs a private key (or a credentialName)",
                );
            }
        }
        if tls.mode == Some(ClientTlsMode::IstioMutual)
            && (!tls.client_certificate.is_empty()
                || !tls.private_key.is_empty()
                || !tls.ca_certificates.is_empty()
                || !tls.credential_name.is_empty())
        {
            p.add(
                &at,
                "ISTIO_MUTUAL uses the mesh's certificates: clientCertificate, privateKey, \
                 caCertificates and credentialName must be empty",
            );
        }
    }
}

/// Whether `n` is prime (Envoy's check of a Maglev table size; sizes are below 5000011).
fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}
