//! `HttpRoutes`: routing for a host, translated from VirtualService.
//!
//! The shape follows Istio's VirtualService closely, with what the control plane resolves
//! already resolved: hosts are service hostnames, durations are milliseconds, percentages are
//! parts per million (Envoy's `FractionalPercent`), and a route that names no retry policy
//! carries none (the proxy applies Istio's default, [`RetryPolicy::istio_default`]). Routes are
//! tried in order, the first whose match fits wins; when routes exist for a host and none
//! matches, the request gets 404 with flag `NR`. `tcp` and `tls` routes select a destination for
//! opaque connections by port and SNI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::{ValidationErrors, check_port};

/// A string matcher, as in VirtualService `StringMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// The whole value matches this RE2 regular expression.
    Regex(String),
    /// The header (or query parameter) is present, whatever its value (an empty `StringMatch`
    /// in Istio's YAML).
    Present,
}

impl StringMatch {
    /// True if `value` is matched, for the matchers that need no compiled state (the proxy
    /// compiles `Regex` once per snapshot; here it never matches).
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(_) => false,
            StringMatch::Present => true,
        }
    }
}

/// Conditions on a request; all that are set must hold (VirtualService `HTTPMatchRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// The match's name, joined to the route's in the access log's `route_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Path (without query) matcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// URI scheme (`http`, `https`) matcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// HTTP method matcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Authority (`Host`) matcher, port included as the client sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Header matchers, by lowercase header name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Headers that must not match (absent, or present with a value the matcher refuses).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Query parameter matchers (exact or regex; `Present` for a bare parameter name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// The service port the request was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Labels the calling workload must have (evaluated by the proxy against its own labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// The calling workload's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Compare `uri` without regard to ASCII case.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
}

/// Header edits (VirtualService `Headers.HeaderOperations`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOps {
    /// Replace the header's values with this one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append a value to the header.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove the header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Header edits of the request and of the response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Applied to the request before it goes upstream.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request: HeaderOps,
    /// Applied to the response before it goes downstream.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response: HeaderOps,
}

impl Headers {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// A weighted destination of a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Service hostname.
    pub host: String,
    /// Service port; the request's port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// DestinationRule subset name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Relative weight.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Header edits when this destination is chosen.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

fn default_weight() -> u32 {
    100
}

/// Retry policy (VirtualService `retries`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 turns retries off).
    pub attempts: u32,
    /// Timeout of each attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Envoy `retry_on` conditions and gRPC status names, comma separated; a number is a
    /// retriable status code (`connect-failure,refused-stream,503`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// Base interval of the exponential back-off between attempts, in milliseconds (Envoy's
    /// default: 25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// Try other endpoints than those that failed (Istio's default: yes).
    #[serde(default = "yes")]
    pub retry_other_hosts: bool,
}

fn yes() -> bool {
    true
}

impl RetryPolicy {
    /// Istio's policy for a route that names none: 2 retries on connect failures, refused
    /// streams, gRPC `unavailable` and `cancelled`, each on another endpoint. Istio lists
    /// `retriable-status-codes` without codes: 503 is not retried by default since Istio 1.24
    /// (`EXCLUDE_503_FROM_DEFAULT_RETRY`, then the 1.23 compatibility profile, removed).
    pub fn istio_default() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout_ms: None,
            retry_on: Some(
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
                    .into(),
            ),
            backoff_ms: None,
            retry_other_hosts: true,
        }
    }
}

/// A delay before the request goes upstream (VirtualService `fault.delay`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// How long, in milliseconds.
    pub fixed_delay_ms: u64,
    /// Share of requests delayed, in parts per million.
    pub per_million: u32,
}

/// What an aborted request gets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AbortStatus {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status code (0..16), answered in gRPC's trailers-only form.
    Grpc(u16),
}

/// A local reply instead of the upstream's (VirtualService `fault.abort`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// The status.
    pub status: AbortStatus,
    /// Share of requests aborted, in parts per million.
    pub per_million: u32,
}

/// Fault injection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A copy of the request sent elsewhere, its response discarded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// Service hostname.
    pub host: String,
    /// Service port; the request's port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// DestinationRule subset name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Share of requests mirrored, in parts per million.
    pub per_million: u32,
}

/// A rewrite of the request before it goes upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the part of the path the `uri` match matched (the whole path for an exact or
    /// regex match, the prefix for a prefix match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replaces the authority (`Host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Replaces every match of `regex` in the path by `substitution` (`\1` groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex: Option<RegexRewrite>,
}

/// `uriRegexRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 regular expression.
    pub regex: String,
    /// Replacement, with `\1`-style groups.
    pub substitution: String,
}

/// Where a redirect's port comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RedirectPort {
    /// This port.
    Port(u16),
    /// 80 for http, 443 for https (`derivePort: FROM_PROTOCOL_DEFAULT`).
    FromProtocolDefault,
}

/// A redirect answered by the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    /// Replaces the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replaces the authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Replaces the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<RedirectPort>,
    /// Replaces the scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Status (301 when 0).
    #[serde(default)]
    pub code: u16,
}

/// A fixed response answered by the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponse {
    /// Status.
    pub status: u16,
    /// Body bytes (base64 in YAML would be the API's `bytes`; the control plane decodes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// What a preflight request that matches no allowed origin gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Forwarded upstream (Envoy's default).
    #[default]
    Forward,
    /// Dropped: answered by the proxy without CORS headers.
    Ignore,
}

/// CORS (VirtualService `corsPolicy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    /// `access-control-allow-methods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// `access-control-allow-headers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// `access-control-expose-headers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// `access-control-max-age`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_s: Option<u64>,
    /// `access-control-allow-credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// Preflights from origins not allowed.
    #[serde(default)]
    pub unmatched_preflights: UnmatchedPreflights,
}

/// One route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Route name (the access log's `route_name`); `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any of these matches selects the route; empty matches everything.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    /// Destinations; empty means the host itself (unless `redirect` or `directResponse`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Answer with a fixed response instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Rewrite before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Whole-request timeout in milliseconds (`UT` when it fires); none when absent, as Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries; Istio's default policy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Fault injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Mirrors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// CORS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Header edits for every destination.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

/// Conditions on an opaque connection (VirtualService `L4MatchAttributes` and
/// `TLSMatchAttributes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4Match {
    /// The service port the connection was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// SNI names (TLS routes; `*.example.com` wildcards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    /// Destination IP prefixes (`10.0.0.0/8`, or one address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// Labels the calling workload must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// The calling workload's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// A route for opaque TCP or TLS connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4Route {
    /// Any of these selects the route; empty matches every connection.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<L4Match>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// Routing for one or more hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoutes {
    /// Name (`default/reviews`).
    pub name: String,
    /// Service hostnames these routes apply to.
    pub hosts: Vec<String>,
    /// The namespace of the VirtualService (subsets of its destinations are looked up for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// HTTP routes, first match wins.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// TLS routes (by SNI), first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<L4Route>,
    /// TCP routes, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<L4Route>,
}

fn check_per_million(errs: &mut ValidationErrors, path: String, v: u32) {
    if v > 1_000_000 {
        errs.push(path, "must be 0..1000000 (parts per million)");
    }
}

fn check_destination(errs: &mut ValidationErrors, dp: &str, host: &str, port: Option<u16>) {
    if host.is_empty() {
        errs.push(format!("{dp}.host"), "must not be empty");
    }
    if let Some(p) = port {
        check_port(errs, &format!("{dp}.port"), p);
    }
}

impl HttpRoutes {
    pub(crate) fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        if self.hosts.is_empty() {
            errs.push(format!("{path}.hosts"), "must not be empty");
        }
        for (i, r) in self.http.iter().enumerate() {
            let rp = format!("{path}.http[{i}]");
            for (j, d) in r.route.iter().enumerate() {
                check_destination(errs, &format!("{rp}.route[{j}]"), &d.host, d.port);
            }
            for (j, m) in r.mirrors.iter().enumerate() {
                let mp = format!("{rp}.mirrors[{j}]");
                check_destination(errs, &mp, &m.host, m.port);
                check_per_million(errs, format!("{mp}.perMillion"), m.per_million);
            }
            if r.timeout_ms == Some(0) {
                errs.push(format!("{rp}.timeoutMs"), "must be positive");
            }
            if let Some(f) = &r.fault {
                if let Some(d) = &f.delay {
                    check_per_million(errs, format!("{rp}.fault.delay.perMillion"), d.per_million);
                }
                if let Some(a) = &f.abort {
                    check_per_million(errs, format!("{rp}.fault.abort.perMillion"), a.per_million);
                    match a.status {
                        AbortStatus::Http(s) if !(200..=599).contains(&s) => {
                            errs.push(format!("{rp}.fault.abort.status.http"), "must be 200..599")
                        }
                        AbortStatus::Grpc(s) if s > 16 => {
                            errs.push(format!("{rp}.fault.abort.status.grpc"), "must be 0..16")
                        }
                        _ => {}
                    }
                }
            }
            if let Some(d) = &r.direct_response
                && !(200..=599).contains(&d.status)
            {
                errs.push(format!("{rp}.directResponse.status"), "must be 200..599");
            }
            if r.redirect.is_some() && r.direct_response.is_some() {
                errs.push(
                    format!("{rp}.redirect"),
                    "a route has redirect or directResponse, not both",
                );
            }
        }
        for (kind, routes) in [("tls", &self.tls), ("tcp", &self.tcp)] {
            for (i, r) in routes.iter().enumerate() {
                for (j, d) in r.route.iter().enumerate() {
                    check_destination(
                        errs,
                        &format!("{path}.{kind}[{i}].route[{j}]"),
                        &d.host,
                        d.port,
                    );
                }
            }
        }
    }
}
