//! `HttpRoutes`: HTTP routing for a host, translated from VirtualService.
//!
//! Minimal for now: the first route whose match fits selects the destination and the timeout;
//! when routes exist for a host and none matches, the request gets 404 with flag `NR`.

use serde::{Deserialize, Serialize};

use crate::validate::{ValidationErrors, check_port};

/// A string matcher, as in VirtualService `StringMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
}

impl StringMatch {
    /// True if `value` is matched.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
        }
    }
}

/// Conditions on a request; all that are set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// Path (without query) matcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// Header matchers, by lowercase header name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, StringMatch>,
}

/// A weighted destination of a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Service hostname.
    pub host: String,
    /// Service port; the request's port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// DestinationRule subset name (not yet applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Relative weight (0..100).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    100
}

/// Retry policy (VirtualService `retries`); not yet applied beyond connect failures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Timeout of each attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Envoy `retry_on` conditions (`connect-failure,refused-stream,503`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
}

/// One route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Route name (the access log's `route_name`); `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any of these matches selects the route; empty matches everything.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    /// Destinations; empty means the host itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
    /// Whole-request timeout in milliseconds (`UT` when it fires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
}

/// HTTP routing for one or more hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoutes {
    /// Name (`default/reviews`).
    pub name: String,
    /// Service hostnames these routes apply to.
    pub hosts: Vec<String>,
    /// Routes, first match wins.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
}

impl HttpRoutes {
    pub(crate) fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        if self.hosts.is_empty() {
            errs.push(format!("{path}.hosts"), "must not be empty");
        }
        for (i, r) in self.http.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                let dp = format!("{path}.http[{i}].route[{j}]");
                if d.host.is_empty() {
                    errs.push(format!("{dp}.host"), "must not be empty");
                }
                if let Some(p) = d.port {
                    check_port(errs, &format!("{dp}.port"), p);
                }
                if d.weight > 100 {
                    errs.push(format!("{dp}.weight"), "must be 0..100");
                }
            }
            if r.timeout_ms == Some(0) {
                errs.push(format!("{path}.http[{i}].timeoutMs"), "must be positive");
            }
        }
    }
}
