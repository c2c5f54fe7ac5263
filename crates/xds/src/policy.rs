//! `TrafficPolicy`: client-side policy for a host, translated from DestinationRule.
//!
//! Applied today: `loadBalancer`, `connectionPool.tcp.connectTimeoutMs` and
//! `connectionPool.http.maxRequests` (beyond it requests fail fast with 503 `UO`).
//! Outlier detection is carried but not yet enforced.

use serde::{Deserialize, Serialize};

use crate::service::LbPolicy;
use crate::validate::ValidationErrors;

/// TCP connection limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpPool {
    /// Most connections to all endpoints of the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Connect timeout in milliseconds (Istio's default is 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
}

/// HTTP request limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPool {
    /// Most requests in flight to the host (`http2MaxRequests`); beyond it, 503 `UO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Most requests per upstream connection before it is retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Idle upstream connections are closed after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
}

/// Connection pool settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// TCP settings.
    #[serde(default)]
    pub tcp: TcpPool,
    /// HTTP settings.
    #[serde(default)]
    pub http: HttpPool,
}

/// Outlier detection (ejection of failing endpoints); carried, enforced in a later issue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx (gateway errors) before ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Sweep interval in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// Base ejection time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time_ms: Option<u64>,
    /// Most endpoints ejected at once, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Client policy for one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Name (`default/httpbin`).
    pub name: String,
    /// The service hostname this policy applies to.
    pub host: String,
    /// Overrides the service's load-balancing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LbPolicy>,
    /// Connection pool limits.
    #[serde(default)]
    pub connection_pool: ConnectionPool,
    /// Outlier detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

impl TrafficPolicy {
    pub(crate) fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        if self.host.is_empty() {
            errs.push(format!("{path}.host"), "must not be empty");
        }
        if self.connection_pool.http.max_requests == Some(0) {
            errs.push(
                format!("{path}.connectionPool.http.maxRequests"),
                "must be positive",
            );
        }
        if self.connection_pool.tcp.connect_timeout_ms == Some(0) {
            errs.push(
                format!("{path}.connectionPool.tcp.connectTimeoutMs"),
                "must be positive",
            );
        }
        if let Some(o) = &self.outlier_detection
            && o.max_ejection_percent.is_some_and(|p| p > 100)
        {
            errs.push(
                format!("{path}.outlierDetection.maxEjectionPercent"),
                "must be 0..100",
            );
        }
    }
}
