//! VirtualService: how requests for a host are routed (Istio's `virtual_service.proto`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Destination, Percent, StringMatch, min_duration};
use crate::Duration;
use crate::check::{Problems, gateway_ref, ip_or_cidr};

/// The spec of a VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    /// The hosts the routes apply to (`reviews`, `*.example.com`).
    pub hosts: Vec<String>,
    /// Gateways and sidecars the routes apply to: `[namespace/]name`, or `mesh` for every
    /// sidecar (the default when empty).
    pub gateways: Vec<String>,
    /// HTTP routes, the first match wins.
    pub http: Vec<HttpRoute>,
    /// Routes for TLS and HTTPS passthrough, by SNI.
    pub tls: Vec<TlsRoute>,
    /// Routes for opaque TCP.
    pub tcp: Vec<TcpRoute>,
    /// Namespaces that see this config (`.` this one, `*` all).
    pub export_to: Vec<String>,
}

/// One HTTP route: when it applies, and where the request goes (or what answers it).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// A name for the route, in logs and stats.
    pub name: String,
    /// Conditions: any of them (each is an AND of its fields). Empty matches everything.
    pub r#match: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect instead of forwarding.
    pub redirect: Option<HttpRedirect>,
    /// Answer directly instead of forwarding.
    pub direct_response: Option<HttpDirectResponse>,
    /// Hand the routing over to another VirtualService.
    pub delegate: Option<Delegate>,
    /// Rewrite the path or authority before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Timeout of the whole request (retries included).
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retries: Option<HttpRetry>,
    /// Faults to inject.
    pub fault: Option<HttpFaultInjection>,
    /// Copy traffic to another destination (deprecated single form).
    pub mirror: Option<Destination>,
    /// Copy traffic to other destinations.
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Share of traffic copied to `mirror`.
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`.
    pub mirror_percent: Option<u32>,
    /// Cross-origin resource sharing.
    pub cors_policy: Option<CorsPolicy>,
    /// Header changes of the request and response.
    pub headers: Option<Headers>,
}

/// Conditions on a request; all set fields must match.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// A name for the match, appended to the route's.
    pub name: String,
    /// The path.
    pub uri: Option<StringMatch>,
    /// `http` or `https`.
    pub scheme: Option<StringMatch>,
    /// The method.
    pub method: Option<StringMatch>,
    /// The authority (`Host`).
    pub authority: Option<StringMatch>,
    /// Headers, by lower-case name.
    pub headers: BTreeMap<String, StringMatch>,
    /// The port the request came in on.
    pub port: u32,
    /// Labels of the calling workload.
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match is for (overrides the VirtualService's).
    pub gateways: Vec<String>,
    /// Query parameters.
    pub query_params: BTreeMap<String, StringMatch>,
    /// Match the path case-insensitively.
    pub ignore_uri_case: bool,
    /// Headers that must not match.
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Namespace of the calling workload.
    pub source_namespace: String,
    /// Prefix of the stats of this match.
    pub stat_prefix: String,
}

/// A weighted destination of an HTTP route.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to send the request. Required.
    pub destination: Destination,
    /// Share of traffic, 0..100; with several destinations the weights add up to 100.
    pub weight: Option<i64>,
    /// Header changes for this destination.
    pub headers: Option<Headers>,
}

/// Header changes of a request and of its response.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Changes to the request.
    pub request: Option<HeaderOperations>,
    /// Changes to the response.
    pub response: Option<HeaderOperations>,
}

/// Set, add and remove headers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Replace these headers.
    pub set: BTreeMap<String, String>,
    /// Append these headers.
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    pub remove: Vec<String>,
}

/// A redirect answer.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replace the path.
    pub uri: String,
    /// Replace the authority.
    pub authority: String,
    /// Replace the port.
    pub port: u32,
    /// Take the port from the scheme or from the request.
    pub derive_port: Option<RedirectPortSelection>,
    /// Replace the scheme.
    pub scheme: String,
    /// The status code, 301 by default.
    pub redirect_code: u32,
}

/// How a redirect picks its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    FromProtocolDefault,
    /// The port of the request.
    FromRequestPort,
}

/// A direct answer.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// The status code. Required.
    pub status: u32,
    /// The body.
    pub body: Option<HttpBody>,
}

/// A body given as text or as base64 bytes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    /// Text.
    pub string: Option<String>,
    /// Base64 bytes.
    pub bytes: Option<String>,
}

impl HttpBody {
    /// The bytes of a `bytes` body: base64 as protobuf's JSON mapping reads it (standard or
    /// URL-safe alphabet, with or without padding).
    pub fn decode(bytes: &str) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine as _;
        use base64::alphabet::{STANDARD, URL_SAFE};
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        let config =
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
        GeneralPurpose::new(&STANDARD, config)
            .decode(bytes)
            .or_else(|e| {
                GeneralPurpose::new(&URL_SAFE, config)
                    .decode(bytes)
                    .map_err(|_| e)
            })
    }
}

/// Another VirtualService that holds the routes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    /// Its name. Required.
    pub name: String,
    /// Its namespace (this one when empty).
    pub namespace: String,
}

/// Path and authority rewriting.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replace the matched prefix (or the whole path).
    pub uri: String,
    /// Replace the authority.
    pub authority: String,
    /// Rewrite the path with a regular expression.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// A regular-expression rewrite.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 expression.
    pub r#match: String,
    /// Replacement, with `\1` for groups.
    pub rewrite: String,
}

/// Retry policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries (not counting the first try).
    pub attempts: i64,
    /// Timeout of each try.
    pub per_try_timeout: Option<Duration>,
    /// Conditions, comma separated (`5xx,gateway-error,connect-failure,retriable-4xx` or status
    /// codes).
    pub retry_on: String,
    /// Retry in other localities.
    pub retry_remote_localities: Option<bool>,
    /// Do not retry on hosts already tried.
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval of the exponential backoff between retries.
    pub backoff: Option<Duration>,
}

/// The retry conditions Istio knows besides status codes.
const RETRY_ON: [&str; 15] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
];
const RETRY_ON_GRPC: [&str; 1] = ["unavailable"];

/// Faults injected into requests.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay requests.
    pub delay: Option<Delay>,
    /// Abort requests.
    pub abort: Option<Abort>,
}

/// A delay fault.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// How long. Required.
    pub fixed_delay: Option<Duration>,
    /// Share of requests delayed.
    pub percentage: Option<Percent>,
    /// Deprecated integer form of `percentage`.
    pub percent: Option<i64>,
}

/// An abort fault.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    /// Answer with this HTTP status.
    pub http_status: Option<i64>,
    /// Answer with this gRPC status (`UNAVAILABLE` …).
    pub grpc_status: Option<String>,
    /// Reset the stream with this HTTP/2 error.
    pub http2_error: Option<String>,
    /// Share of requests aborted.
    pub percentage: Option<Percent>,
}

/// The gRPC status names an abort may use, with their codes (Istio's `SupportedGRPCStatus`).
pub const GRPC_STATUS: [(&str, u16); 17] = [
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

/// The code of a gRPC status name (`UNAVAILABLE` → 14), as Istio spells them (upper case).
pub fn grpc_status_code(name: &str) -> Option<u16> {
    GRPC_STATUS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, code)| *code)
}

/// A mirror destination.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Where to copy traffic. Required.
    pub destination: Destination,
    /// Share of traffic copied.
    pub percentage: Option<Percent>,
}

/// Cross-origin resource sharing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Allowed origins.
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated exact origins.
    pub allow_origin: Vec<String>,
    /// Allowed methods.
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read.
    pub expose_headers: Vec<String>,
    /// How long a preflight answer may be cached.
    pub max_age: Option<Duration>,
    /// Whether credentials are allowed.
    pub allow_credentials: Option<bool>,
    /// What to do with preflights that do not match.
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// What happens to a preflight request that does not match the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Forward (the default).
    Unspecified,
    /// Forward to the upstream.
    Forward,
    /// Ignore.
    Ignore,
}

/// A route for TLS traffic, by SNI.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// Conditions (any of them). Required.
    pub r#match: Vec<TlsMatchAttributes>,
    /// Weighted destinations.
    pub route: Vec<RouteDestination>,
}

/// Conditions on a TLS connection.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// SNI values. Required.
    pub sni_hosts: Vec<String>,
    /// Destination ranges.
    pub destination_subnets: Vec<String>,
    /// The port.
    pub port: u32,
    /// Labels of the calling workload.
    pub source_labels: BTreeMap<String, String>,
    /// Gateways.
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    pub source_namespace: String,
}

/// A route for opaque TCP.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Conditions (any of them).
    pub r#match: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    pub route: Vec<RouteDestination>,
}

/// Conditions on a TCP connection.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// Destination ranges.
    pub destination_subnets: Vec<String>,
    /// The port.
    pub port: u32,
    /// Deprecated source range.
    pub source_subnet: String,
    /// Labels of the calling workload.
    pub source_labels: BTreeMap<String, String>,
    /// Gateways.
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    pub source_namespace: String,
}

/// A weighted destination of a TLS or TCP route.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send the connection. Required.
    pub destination: Destination,
    /// Share of connections, 0..100.
    pub weight: Option<i64>,
}

impl VirtualService {
    /// Checks the spec (at path `at`, normally `spec`), as Istio's validation does.
    pub fn validate(&self, at: &str, p: &mut Problems) {
        let delegate = self.hosts.is_empty();
        if delegate && !self.gateways.is_empty() {
            p.add(
                format!("{at}.hosts"),
                "missing: a VirtualService needs at least one host (only a delegate, without \
                 gateways, has none)",
            );
        }
        for (i, host) in self.hosts.iter().enumerate() {
            p.host(format!("{at}.hosts[{i}]"), host);
        }
        for (i, g) in self.gateways.iter().enumerate() {
            if g != "mesh"
                && let Err(m) = gateway_ref(g)
            {
                p.add(format!("{at}.gateways[{i}]"), m);
            }
        }
        if self.http.is_empty() && self.tls.is_empty() && self.tcp.is_empty() {
            p.add(at, "needs at least one of http, tls or tcp routes");
        }
        for (i, route) in self.http.iter().enumerate() {
            route.validate(&format!("{at}.http[{i}]"), p, delegate);
        }
        for (i, route) in self.tls.iter().enumerate() {
            let at = format!("{at}.tls[{i}]");
            if route.r#match.is_empty() {
                p.add(format!("{at}.match"), "missing: a TLS route needs a match");
            }
            for (j, m) in route.r#match.iter().enumerate() {
                let at = format!("{at}.match[{j}]");
                if m.sni_hosts.is_empty() {
                    p.add(
                        format!("{at}.sniHosts"),
                        "missing: a TLS match needs SNI hosts",
                    );
                }
                for (k, h) in m.sni_hosts.iter().enumerate() {
                    p.host(format!("{at}.sniHosts[{k}]"), h);
                }
                l4_match(p, &at, &m.destination_subnets, m.port, &m.source_labels);
            }
            route_destinations(p, &at, &route.route);
        }
        for (i, route) in self.tcp.iter().enumerate() {
            let at = format!("{at}.tcp[{i}]");
            for (j, m) in route.r#match.iter().enumerate() {
                let at = format!("{at}.match[{j}]");
                l4_match(p, &at, &m.destination_subnets, m.port, &m.source_labels);
                if !m.source_subnet.is_empty()
                    && let Err(e) = ip_or_cidr(&m.source_subnet)
                {
                    p.add(format!("{at}.sourceSubnet"), e);
                }
            }
            route_destinations(p, &at, &route.route);
        }
    }
}

fn l4_match(
    p: &mut Problems,
    at: &str,
    subnets: &[String],
    port: u32,
    labels: &BTreeMap<String, String>,
) {
    for (k, s) in subnets.iter().enumerate() {
        if let Err(e) = ip_or_cidr(s) {
            p.add(format!("{at}.destinationSubnets[{k}]"), e);
        }
    }
    if port != 0 {
        p.port(format!("{at}.port"), port);
    }
    p.selector_labels(&format!("{at}.sourceLabels"), labels);
}

fn route_destinations(p: &mut Problems, at: &str, route: &[RouteDestination]) {
    if route.is_empty() {
        p.add(
            format!("{at}.route"),
            "missing: a route needs a destination",
        );
    }
    for (j, d) in route.iter().enumerate() {
        d.destination
            .validate(&format!("{at}.route[{j}].destination"), p);
    }
    weights(
        p,
        &format!("{at}.route"),
        route.iter().map(|d| d.weight).collect(),
    );
}

/// Each weight is 0..100; with several destinations they add up to 100 (an unset weight
/// counts as 0, as in Istio).
fn weights(p: &mut Problems, at: &str, weights: Vec<Option<i64>>) {
    let mut in_range = true;
    for (j, w) in weights.iter().enumerate() {
        if let Some(w) = *w
            && !(0..=100).contains(&w)
        {
            p.add(format!("{at}[{j}].weight"), "must be 0..100");
            in_range = false;
        }
    }
    if weights.len() > 1 && in_range {
        let sum: i64 = weights.iter().map(|w| w.unwrap_or(0)).sum();
        if sum != 100 {
            p.add(
                at,
                format!("the weights of the destinations add up to {sum}: they must add up to 100"),
            );
        }
    }
}

impl HttpRoute {
    fn validate(&self, at: &str, p: &mut Problems, in_delegate: bool) {
        let answers = [
            !self.route.is_empty(),
            self.redirect.is_some(),
            self.direct_response.is_some(),
            self.delegate.is_some(),
        ];
        match answers.iter().filter(|a| **a).count() {
            0 => p.add(
                at,
                "needs one of route, redirect, directResponse or delegate",
            ),
            1 => {}
            _ => p.add(
                at,
                "route, redirect, directResponse and delegate exclude each other: set one",
            ),
        }
        if in_delegate && self.delegate.is_some() {
            p.add(
                format!("{at}.delegate"),
                "a delegate VirtualService cannot delegate again",
            );
        }
        if let Some(d) = &self.delegate
            && d.name.is_empty()
        {
            p.add(
                format!("{at}.delegate.name"),
                "missing: a delegate needs a name",
            );
        }
        for (j, m) in self.r#match.iter().enumerate() {
            m.validate(&format!("{at}.match[{j}]"), p);
        }
        for (j, d) in self.route.iter().enumerate() {
            d.destination
                .validate(&format!("{at}.route[{j}].destination"), p);
        }
        weights(
            p,
            &format!("{at}.route"),
            self.route.iter().map(|d| d.weight).collect(),
        );
        if let Some(r) = &self.redirect {
            if r.redirect_code != 0 && !(300..=399).contains(&r.redirect_code) {
                p.add(
                    format!("{at}.redirect.redirectCode"),
                    format!(
                        "{} is not a redirect status: must be 300..399",
                        r.redirect_code
                    ),
                );
            }
            if r.port != 0 {
                p.port(format!("{at}.redirect.port"), r.port);
            }
            if r.port != 0 && r.derive_port.is_some() {
                p.add(
                    format!("{at}.redirect"),
                    "port and derivePort exclude each other: set one",
                );
            }
            if r.uri.is_empty()
                && r.authority.is_empty()
                && r.scheme.is_empty()
                && r.port == 0
                && r.derive_port.is_none()
            {
                p.add(
                    format!("{at}.redirect"),
                    "must change at least one of uri, authority, scheme or port",
                );
            }
        }
        if let Some(d) = &self.direct_response {
            if !(200..=599).contains(&d.status) {
                p.add(
                    format!("{at}.directResponse.status"),
                    format!("{} is not an HTTP status: must be 200..599", d.status),
                );
            }
            if let Some(b) = &d.body {
                if b.string.is_some() == b.bytes.is_some() {
                    p.add(
                        format!("{at}.directResponse.body"),
                        "must set exactly one of string or bytes",
                    );
                }
                if let Some(bytes) = &b.bytes
                    && let Err(e) = HttpBody::decode(bytes)
                {
                    p.add(
                        format!("{at}.directResponse.body.bytes"),
                        format!("not base64: {e}"),
                    );
                }
            }
        }
        // The authority is rewritten in one place at most (Istio's validateAuthorityRewrite).
        let request = self.headers.as_ref().and_then(|h| h.request.as_ref());
        let authorities = self
            .rewrite
            .iter()
            .filter(|rw| !rw.authority.is_empty())
            .map(|_| "rewrite.authority".to_string())
            .chain(request.into_iter().flat_map(|r| {
                [("set", &r.set), ("add", &r.add)]
                    .into_iter()
                    .flat_map(|(op, m)| {
                        m.keys()
                            .filter(|k| {
                                k.eq_ignore_ascii_case("host")
                                    || k.eq_ignore_ascii_case(":authority")
                            })
                            .map(move |k| format!("headers.request.{op}[\"{k}\"]"))
                    })
            }))
            .collect::<Vec<_>>();
        if authorities.len() > 1 {
            p.add(
                at,
                format!(
                    "the authority is rewritten in several places ({}): set one",
                    authorities.join(", ")
                ),
            );
        }
        if let Some(rw) = &self.rewrite {
            if rw.uri_regex_rewrite.is_some() && !rw.uri.is_empty() {
                p.add(
                    format!("{at}.rewrite"),
                    "uri and uriRegexRewrite exclude each other: set one",
                );
            }
            if let Some(re) = &rw.uri_regex_rewrite {
                if re.r#match.is_empty() {
                    p.add(
                        format!("{at}.rewrite.uriRegexRewrite.match"),
                        "missing: a regex rewrite needs a match",
                    );
                } else {
                    p.regex(format!("{at}.rewrite.uriRegexRewrite.match"), &re.r#match);
                }
            }
        }
        min_duration(p, format!("{at}.timeout"), &self.timeout);
        if let Some(r) = &self.retries {
            let at = format!("{at}.retries");
            p.non_negative(format!("{at}.attempts"), r.attempts);
            min_duration(p, format!("{at}.perTryTimeout"), &r.per_try_timeout);
            min_duration(p, format!("{at}.backoff"), &r.backoff);
            for policy in r
                .retry_on
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                let known = RETRY_ON.contains(&policy)
                    || RETRY_ON_GRPC.contains(&policy)
                    || policy
                        .parse::<u16>()
                        .is_ok_and(|c| (100..=599).contains(&c));
                if !known {
                    p.add(
                        format!("{at}.retryOn"),
                        format!(
                            "\"{policy}\" is not a retry condition (such as 5xx, \
                                 connect-failure, gateway-error or a status code)"
                        ),
                    );
                }
            }
        }
        if let Some(f) = &self.fault {
            let at = format!("{at}.fault");
            if f.delay.is_none() && f.abort.is_none() {
                p.add(&at, "needs a delay or an abort");
            }
            if let Some(d) = &f.delay {
                if d.fixed_delay.is_none() {
                    p.add(
                        format!("{at}.delay.fixedDelay"),
                        "missing: a delay needs a fixedDelay",
                    );
                }
                min_duration(p, format!("{at}.delay.fixedDelay"), &d.fixed_delay);
                if let Some(pc) = d.percentage {
                    p.percent(format!("{at}.delay.percentage.value"), pc.value);
                }
                if let Some(pc) = d.percent
                    && !(0..=100).contains(&pc)
                {
                    p.add(
                        format!("{at}.delay.percent"),
                        format!("{pc} must be 0..100 (a percentage)"),
                    );
                }
            }
            if let Some(a) = &f.abort {
                let kinds = [
                    a.http_status.is_some(),
                    a.grpc_status.is_some(),
                    a.http2_error.is_some(),
                ];
                if kinds.iter().filter(|k| **k).count() != 1 {
                    p.add(
                        format!("{at}.abort"),
                        "must set exactly one of httpStatus, grpcStatus or http2Error",
                    );
                }
                if let Some(name) = &a.grpc_status
                    && grpc_status_code(name).is_none()
                {
                    p.add(
                        format!("{at}.abort.grpcStatus"),
                        format!(
                            "\"{name}\" is not a gRPC status ({})",
                            GRPC_STATUS.map(|(n, _)| n).join(", ")
                        ),
                    );
                }
                if let Some(s) = a.http_status
                    && !(200..=599).contains(&s)
                {
                    p.add(
                        format!("{at}.abort.httpStatus"),
                        format!("{s} is not an HTTP status: must be 200..599"),
                    );
                }
                if let Some(pc) = a.percentage {
                    p.percent(format!("{at}.abort.percentage.value"), pc.value);
                }
            }
        }
        if let Some(m) = &self.mirror {
            m.validate(&format!("{at}.mirror"), p);
        }
        if self.mirror.is_some() && !self.mirrors.is_empty() {
            p.add(at, "mirror and mirrors exclude each other: set one");
        }
        for (j, m) in self.mirrors.iter().enumerate() {
            m.destination
                .validate(&format!("{at}.mirrors[{j}].destination"), p);
            if let Some(pc) = m.percentage {
                p.percent(format!("{at}.mirrors[{j}].percentage.value"), pc.value);
            }
        }
        if let Some(pc) = self.mirror_percentage {
            p.percent(format!("{at}.mirrorPercentage.value"), pc.value);
        }
        if let Some(pc) = self.mirror_percent
            && pc > 100
        {
            p.add(
                format!("{at}.mirrorPercent"),
                format!("{pc} must be 0..100 (a percentage)"),
            );
        }
        if let Some(c) = &self.cors_policy {
            for (j, o) in c.allow_origins.iter().enumerate() {
                o.validate_value(&format!("{at}.corsPolicy.allowOrigins[{j}]"), p);
            }
        }
    }
}

impl HttpMatchRequest {
    fn validate(&self, at: &str, p: &mut Problems) {
        if let Some(m) = &self.uri {
            m.validate(&format!("{at}.uri"), p);
        }
        for (name, m) in [
            ("scheme", &self.scheme),
            ("method", &self.method),
            ("authority", &self.authority),
        ] {
            if let Some(m) = m {
                m.validate_value(&format!("{at}.{name}"), p);
            }
        }
        for (field, map) in [
            ("headers", &self.headers),
            ("queryParams", &self.query_params),
            ("withoutHeaders", &self.without_headers),
        ] {
            for (key, m) in map {
                let at = format!("{at}.{field}[\"{key}\"]");
                if key.is_empty() {
                    p.add(at, "the name must not be empty");
                    continue;
                }
                // An empty match means "present" for headers and query parameters, and so
                // does `regex: "*"` in withoutHeaders (Istio's validation allows it there only).
                let star = field == "withoutHeaders" && m.regex.as_deref() == Some("*");
                if m != &StringMatch::default() && !star {
                    m.validate_value(&at, p);
                }
            }
        }
        if self.port != 0 {
            p.port(format!("{at}.port"), self.port);
        }
        p.selector_labels(&format!("{at}.sourceLabels"), &self.source_labels);
        for (k, g) in self.gateways.iter().enumerate() {
            if g != "mesh"
                && let Err(m) = gateway_ref(g)
            {
                p.add(format!("{at}.gateways[{k}]"), m);
            }
        }
    }
}
