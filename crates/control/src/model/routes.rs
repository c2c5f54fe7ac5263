//! VirtualService → [`xds::HttpRoutes`], as Istio's pilot translates it for sidecars.
//!
//! - Only config bound to the mesh is used: a VirtualService whose `gateways` do not name `mesh`
//!   gives nothing, and neither does a match whose own `gateways` do not (a route all of whose
//!   matches are for gateways is left out, never widened to match everything). A
//!   VirtualService left with no route gives no [`xds::HttpRoutes`] (the host keeps its default
//!   route, as pilot skips a virtual host without routes); `delegate` routes are left out and a
//!   delegate VirtualService (no hosts) is a warning, as delegation is not implemented.
//! - Hosts and destinations written as short names are services of the VirtualService's
//!   namespace; `HttpRoutes.namespace` is that namespace (subsets are looked up for it). A
//!   wildcard host stands for the known services it covers, except those another
//!   VirtualService names exactly (Envoy's most specific domain wins).
//! - String matches: an empty one and `regex: "*"` on headers, `withoutHeaders` and
//!   `queryParams` mean "present" (pilot's `canBeConvertedToPresentMatch`); header names are
//!   lower case (Envoy compares them so). A query parameter's `prefix` is passed on: pilot
//!   gives Envoy a prefix string matcher, which Envoy applies, although Istio's docs say prefix
//!   is not supported there.
//! - Percentages are parts per million, truncated (pilot's `value * 10000`); the deprecated
//!   integer forms are percent.
//! - `retries` (pilot's `retry.ConvertPolicy`): none gives `None` (the proxy applies Istio's
//!   default); `attempts` 0 (or less) turns retries off; an empty `retryOn` is Istio's default
//!   conditions; `retryIgnorePreviousHosts` unset means other hosts are preferred.
//! - `fault` (pilot's `TranslateFault`): no percentage means no request is delayed or aborted
//!   (Envoy's unset fraction is 0, as Istio's docs say); `grpcStatus` names map to their codes;
//!   an `http2Error` abort is not translated (pilot does not either; `api::support` reports it).
//! - Mirrors (pilot's `MirrorPercent`): no percentage is 100 %, an explicit 0 drops the mirror.
//! - `corsPolicy`: `allowOrigins`, else the deprecated exact `allowOrigin`; `maxAge` in whole
//!   seconds.
//! - Header edits never touch pseudo-headers or `host`: setting (or adding) `host` or
//!   `:authority` rewrites the authority, as pilot does; `rewrite.authority` wins over the
//!   route's header, which wins over a lone destination's; among several destinations, one's own
//!   authority stays its `host` header set.

use std::collections::BTreeMap;

use api::networking::virtual_service::{
    self, CorsPolicy, HttpFaultInjection, HttpMatchRequest, HttpRetry, HttpRoute,
    RedirectPortSelection, UnmatchedPreflights,
};
use api::networking::{Destination, Percent, StringMatch, VirtualService};
use api::objects::IstioConfig;

use super::config::resolve_host;
use super::{ExportTo, Scoped};

/// Istio's retry conditions for a policy that names none (`retry.go`'s `defaultRetryOn`).
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// The routes of every VirtualService bound to sidecars. A host that a wildcard
/// (`*.example.com`) covers is left out of that VirtualService when another one names it
/// exactly: Envoy picks the most specific domain, so the exact one routes it. `warn` gets the
/// display name of an object and a message.
pub(crate) fn virtual_services(
    all: &[&IstioConfig<VirtualService>],
    known: &[&str],
    warn: &mut impl FnMut(String, String),
) -> Vec<Scoped<xds::HttpRoutes>> {
    // The hosts each one names exactly.
    let exact: Vec<Vec<String>> = all
        .iter()
        .map(|vs| {
            if !Binding::Mesh.binds(&vs.spec.gateways, &vs.metadata.namespace) {
                return Vec::new();
            }
            vs.spec
                .hosts
                .iter()
                .filter(|h| !h.contains('*'))
                .flat_map(|h| resolve_host(h, &vs.metadata.namespace, known))
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    for (i, vs) in all.iter().enumerate() {
        let object = format!(
            "VirtualService {}/{}",
            vs.metadata.namespace, vs.metadata.name
        );
        let mut w = |message: String| warn(object.clone(), message);
        let Some(mut r) = virtual_service(vs, known, Binding::Mesh, &mut w) else {
            continue;
        };
        r.resource.hosts.retain(|h| {
            exact[i].contains(h)
                || !exact
                    .iter()
                    .enumerate()
                    .any(|(j, named)| j != i && named.contains(h))
        });
        if !r.resource.hosts.is_empty() {
            out.push(r);
        }
    }
    out
}

/// What a VirtualService is translated for: the sidecars (`mesh`) or one Gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binding<'a> {
    /// The sidecars.
    Mesh,
    /// The Gateway `namespace/name`.
    Gateway {
        /// Its namespace.
        namespace: &'a str,
        /// Its name.
        name: &'a str,
    },
}

impl Binding<'_> {
    /// Whether a VirtualService of namespace `vs_ns` whose `gateways` are these binds here: for
    /// the mesh, none named or `mesh` among them; for a Gateway, its name (`name` is in the
    /// VirtualService's namespace, `ns/name` in `ns`).
    pub(crate) fn binds(&self, gateways: &[String], vs_ns: &str) -> bool {
        match self {
            Binding::Mesh => for_mesh(gateways),
            Binding::Gateway { namespace, name } => gateways.iter().any(|g| {
                let (ns, n) = g.split_once('/').unwrap_or((vs_ns, g.as_str()));
                n == *name && ns == *namespace
            }),
        }
    }

    /// Whether a route match whose own `gateways` are these applies, its VirtualService being
    /// bound here: none named inherits the VirtualService's binding (pilot's).
    fn binds_match(&self, gateways: &[String], vs_ns: &str) -> bool {
        gateways.is_empty() || self.binds(gateways, vs_ns)
    }
}

/// What one VirtualService gives: its routes, when it is bound to `binding` and names a known
/// host. For a Gateway, hosts are kept as written (short names completed in the
/// VirtualService's namespace, wildcards kept), since they are matched against the request's
/// `Host`, not service names.
pub(crate) fn virtual_service(
    vs: &IstioConfig<VirtualService>,
    known: &[&str],
    binding: Binding<'_>,
    w: &mut impl FnMut(String),
) -> Option<Scoped<xds::HttpRoutes>> {
    let spec = &vs.spec;
    let ns = vs.metadata.namespace.as_str();
    if !binding.binds(&spec.gateways, ns) {
        return None; // bound elsewhere
    }
    if spec.hosts.is_empty() {
        // Only the target of a `delegate` has no hosts (validation).
        w(
            "spec.hosts: none: this is a delegate VirtualService, and delegation is not \
           implemented by Ama: ignored"
                .into(),
        );
        return None;
    }
    let mut hosts: Vec<String> = spec
        .hosts
        .iter()
        .flat_map(|h| match binding {
            Binding::Mesh => resolve_host(h, ns, known),
            Binding::Gateway { .. } if h.contains('*') => vec![h.to_ascii_lowercase()],
            Binding::Gateway { .. } => resolve_host(h, ns, &[]),
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    if hosts.is_empty() {
        w("spec.hosts: no known service matches: ignored".into());
        return None;
    }
    let cx = Cx { ns, known, binding };
    let http: Vec<_> = spec
        .http
        .iter()
        .enumerate()
        .filter_map(|(i, r)| cx.http_route(r, &format!("spec.http[{i}]"), w))
        .collect();
    let tcp: Vec<_> = spec
        .tcp
        .iter()
        .filter_map(|r| {
            let matches: Vec<_> = r
                .r#match
                .iter()
                .filter(|m| binding.binds_match(&m.gateways, ns))
                .map(|m| xds::L4Match {
                    port: port(m.port),
                    sni_hosts: Vec::new(),
                    destination_subnets: m.destination_subnets.clone(),
                    source_labels: m.source_labels.clone(),
                    source_namespace: non_empty(&m.source_namespace),
                })
                .collect();
            cx.l4_route(r.r#match.len(), matches, &r.route)
        })
        .collect();
    let tls: Vec<_> = spec
        .tls
        .iter()
        .filter_map(|r| {
            let matches: Vec<_> = r
                .r#match
                .iter()
                .filter(|m| binding.binds_match(&m.gateways, ns))
                .map(|m| xds::L4Match {
                    port: port(m.port),
                    sni_hosts: m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                    destination_subnets: m.destination_subnets.clone(),
                    source_labels: m.source_labels.clone(),
                    source_namespace: non_empty(&m.source_namespace),
                })
                .collect();
            cx.l4_route(r.r#match.len(), matches, &r.route)
        })
        .collect();
    if http.is_empty() && tcp.is_empty() && tls.is_empty() {
        // Nothing bound here (every route is for elsewhere or delegated): as pilot skips a
        // virtual host without routes, the host keeps its default route.
        return None;
    }
    Some(Scoped {
        namespace: ns.to_string(),
        export_to: ExportTo::parse(spec.export_to.iter().map(String::as_str), ns),
        workload_selector: None,
        resource: xds::HttpRoutes {
            name: format!("{ns}/{}", vs.metadata.name),
            hosts,
            namespace: Some(ns.to_string()),
            http,
            tls,
            tcp,
        },
    })
}

/// Whether config bound to `gateways` applies to sidecars: none named, or `mesh` among them.
fn for_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A port number as written (validation has checked 1..65535); 0 is "unset".
fn port(p: u32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// Milliseconds of a duration, at least 1 for a positive one (a timeout of 0.5 ms is not "no
/// timeout").
pub(crate) fn millis(d: Option<api::Duration>) -> Option<u64> {
    d.map(|d| {
        let d = d.get();
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 && !d.is_zero() { 1 } else { ms }
    })
}

/// A percentage (0..100, decimals) in parts per million, truncated as pilot does.
pub(crate) fn per_million(p: Percent) -> u32 {
    // Validation keeps the value in 0..=100, so the product fits.
    (p.value.clamp(0.0, 100.0) * 10_000.0) as u32
}

/// An integer percentage in parts per million.
fn percent_per_million(p: i64) -> u32 {
    u32::try_from(p.clamp(0, 100)).unwrap_or(0) * 10_000
}

/// The translation context of one VirtualService.
struct Cx<'a> {
    ns: &'a str,
    known: &'a [&'a str],
    binding: Binding<'a>,
}

impl Cx<'_> {
    fn host(&self, host: &str) -> String {
        // A destination host is never a wildcard (validation), so it resolves to one name.
        resolve_host(host, self.ns, self.known)
            .into_iter()
            .next()
            .unwrap_or_else(|| host.to_ascii_lowercase())
    }

    fn destination(
        &self,
        d: &Destination,
        weight: u32,
        headers: xds::Headers,
    ) -> xds::RouteDestination {
        xds::RouteDestination {
            host: self.host(&d.host),
            port: d.port.as_ref().and_then(|p| port(p.number)),
            subset: non_empty(&d.subset),
            weight,
            headers,
        }
    }

    fn l4_route(
        &self,
        written: usize,
        matches: Vec<xds::L4Match>,
        route: &[virtual_service::RouteDestination],
    ) -> Option<xds::L4Route> {
        if written > 0 && matches.is_empty() {
            return None; // every match is for gateways
        }
        let single = route.len() == 1;
        Some(xds::L4Route {
            matches,
            route: route
                .iter()
                .map(|d| {
                    self.destination(
                        &d.destination,
                        weight(d.weight, single),
                        xds::Headers::default(),
                    )
                })
                .collect(),
        })
    }

    fn http_route(
        &self,
        route: &HttpRoute,
        at: &str,
        w: &mut impl FnMut(String),
    ) -> Option<xds::HttpRoute> {
        if route.delegate.is_some() {
            return None; // api::support reports it
        }
        let matches: Vec<_> = route
            .r#match
            .iter()
            .filter(|m| self.binding.binds_match(&m.gateways, self.ns))
            .map(route_match)
            .collect();
        if !route.r#match.is_empty() && matches.is_empty() {
            return None; // every match is for gateways (api::support reports it)
        }
        let single = route.route.len() == 1;
        // The authority: `rewrite.authority`, else a `host`/`:authority` header the route sets,
        // else one its lone destination sets (pilot's host rewrite). Several destinations with
        // their own authority keep it as their `host` header.
        let mut authority = route
            .rewrite
            .as_ref()
            .and_then(|r| non_empty(&r.authority))
            .or_else(|| request_authority(route.headers.as_ref()));
        if single && authority.is_none() {
            authority = route
                .route
                .first()
                .and_then(|d| request_authority(d.headers.as_ref()));
        }
        let destinations = route
            .route
            .iter()
            .map(|d| {
                let mut h = headers(d.headers.as_ref());
                if authority.is_none()
                    && let Some(a) = request_authority(d.headers.as_ref())
                {
                    h.request.set.insert("host".into(), a);
                }
                self.destination(&d.destination, weight(d.weight, single), h)
            })
            .collect();
        let mut mirrors = Vec::new();
        if let Some(m) = &route.mirror {
            let pm = match (route.mirror_percentage, route.mirror_percent) {
                (Some(p), _) => per_million(p),
                (None, Some(p)) => percent_per_million(i64::from(p)),
                (None, None) => 1_000_000,
            };
            if pm > 0 {
                mirrors.push(self.mirror(m, pm));
            }
        }
        for m in &route.mirrors {
            let pm = m.percentage.map_or(1_000_000, per_million);
            if pm > 0 {
                mirrors.push(self.mirror(&m.destination, pm));
            }
        }
        Some(xds::HttpRoute {
            name: non_empty(&route.name),
            matches,
            route: destinations,
            redirect: route.redirect.as_ref().map(|r| xds::Redirect {
                uri: non_empty(&r.uri),
                authority: non_empty(&r.authority),
                port: match (port(r.port), r.derive_port) {
                    (Some(p), _) => Some(xds::RedirectPort::Port(p)),
                    (None, Some(RedirectPortSelection::FromProtocolDefault)) => {
                        Some(xds::RedirectPort::FromProtocolDefault)
                    }
                    // FROM_REQUEST_PORT keeps the request's port, as no port does.
                    (None, _) => None,
                },
                scheme: non_empty(&r.scheme),
                code: u16::try_from(r.redirect_code).unwrap_or(0),
            }),
            direct_response: route.direct_response.as_ref().map(|d| xds::DirectResponse {
                status: u16::try_from(d.status).unwrap_or(500),
                body: d.body.as_ref().and_then(|b| body(b, at, w)),
            }),
            rewrite: {
                let r = route.rewrite.as_ref();
                let out = xds::Rewrite {
                    uri: r.and_then(|r| non_empty(&r.uri)),
                    authority,
                    uri_regex: r.and_then(|r| r.uri_regex_rewrite.as_ref()).map(|re| {
                        xds::RegexRewrite {
                            regex: re.r#match.clone(),
                            substitution: re.rewrite.clone(),
                        }
                    }),
                };
                (out != xds::Rewrite::default()).then_some(out)
            },
            timeout_ms: millis(route.timeout).filter(|ms| *ms > 0),
            retries: route.retries.as_ref().map(retry_policy),
            fault: route.fault.as_ref().and_then(fault),
            mirrors,
            cors: route.cors_policy.as_ref().map(cors),
            headers: headers(route.headers.as_ref()),
        })
    }

    fn mirror(&self, d: &Destination, per_million: u32) -> xds::Mirror {
        xds::Mirror {
            host: self.host(&d.host),
            port: d.port.as_ref().and_then(|p| port(p.number)),
            subset: non_empty(&d.subset),
            per_million,
        }
    }
}

/// A destination's weight: as written; unset is 100 for a lone destination and 0 among
/// several (validation has checked that they add up to 100).
fn weight(w: Option<i64>, single: bool) -> u32 {
    match w {
        Some(w) => u32::try_from(w.clamp(0, 100)).unwrap_or(0),
        None if single => 100,
        None => 0,
    }
}

/// A direct response's body; bytes that are not UTF-8 are sent as their lossy text, with a
/// warning (the wire carries text).
fn body(b: &virtual_service::HttpBody, at: &str, w: &mut impl FnMut(String)) -> Option<String> {
    if let Some(s) = &b.string {
        return Some(s.clone());
    }
    // Validation has checked the base64.
    let bytes = virtual_service::HttpBody::decode(b.bytes.as_deref()?).ok()?;
    match String::from_utf8(bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            w(format!(
                "{at}.directResponse.body.bytes: not UTF-8 text, which is all Ama's direct \
                 responses carry: sent with U+FFFD in place of the invalid bytes"
            ));
            Some(String::from_utf8_lossy(e.as_bytes()).into_owned())
        }
    }
}

/// A string match of a path, scheme, method or authority (exactly one kind is set).
fn string_match(s: &StringMatch) -> xds::StringMatch {
    match (&s.exact, &s.prefix, &s.regex) {
        (Some(e), _, _) => xds::StringMatch::Exact(e.clone()),
        (None, Some(p), _) => xds::StringMatch::Prefix(p.clone()),
        (None, None, Some(r)) => xds::StringMatch::Regex(r.clone()),
        (None, None, None) => xds::StringMatch::Present,
    }
}

/// A string match of a header or query parameter: empty, or `regex: "*"`, is presence.
fn value_match(s: &StringMatch) -> xds::StringMatch {
    if s.regex.as_deref() == Some("*") {
        return xds::StringMatch::Present;
    }
    string_match(s)
}

fn header_matches(map: &BTreeMap<String, StringMatch>) -> BTreeMap<String, xds::StringMatch> {
    map.iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), value_match(v)))
        .collect()
}

fn route_match(m: &HttpMatchRequest) -> xds::HttpRouteMatch {
    xds::HttpRouteMatch {
        name: non_empty(&m.name),
        uri: m.uri.as_ref().map(string_match),
        scheme: m.scheme.as_ref().map(string_match),
        method: m.method.as_ref().map(string_match),
        authority: m.authority.as_ref().map(string_match),
        headers: header_matches(&m.headers),
        without_headers: header_matches(&m.without_headers),
        // Query parameter names are case-sensitive.
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| (k.clone(), value_match(v)))
            .collect(),
        port: port(m.port),
        source_labels: m.source_labels.clone(),
        source_namespace: non_empty(&m.source_namespace),
        ignore_uri_case: m.ignore_uri_case,
    }
}

/// Pseudo-headers and `host` are not edited as headers (pilot's `isInternalHeader`): the
/// authority is a rewrite.
fn internal(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

/// The authority a request edit sets with `host` or `:authority` (`set` wins over `add`).
fn request_authority(h: Option<&virtual_service::Headers>) -> Option<String> {
    let req = h?.request.as_ref()?;
    let find = |m: &BTreeMap<String, String>| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host") || k.eq_ignore_ascii_case(":authority"))
            .map(|(_, v)| v.clone())
    };
    find(&req.set).or_else(|| find(&req.add))
}

fn header_ops(h: Option<&virtual_service::HeaderOperations>) -> xds::HeaderOps {
    let Some(h) = h else {
        return xds::HeaderOps::default();
    };
    let lower = |m: &BTreeMap<String, String>| {
        m.iter()
            .filter(|(k, _)| !internal(k))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    xds::HeaderOps {
        set: lower(&h.set),
        add: lower(&h.add),
        remove: h
            .remove
            .iter()
            .filter(|k| !internal(k))
            .map(|k| k.to_ascii_lowercase())
            .collect(),
    }
}

fn headers(h: Option<&virtual_service::Headers>) -> xds::Headers {
    xds::Headers {
        request: header_ops(h.and_then(|h| h.request.as_ref())),
        response: header_ops(h.and_then(|h| h.response.as_ref())),
    }
}

/// Pilot's `retry.ConvertPolicy` (see the module docs).
pub(crate) fn retry_policy(r: &HttpRetry) -> xds::RetryPolicy {
    if r.attempts <= 0 {
        return xds::RetryPolicy {
            attempts: 0,
            per_try_timeout_ms: None,
            retry_on: None,
            backoff_ms: None,
            retry_other_hosts: false,
        };
    }
    let retry_on = r.retry_on.trim();
    xds::RetryPolicy {
        attempts: u32::try_from(r.attempts).unwrap_or(u32::MAX),
        per_try_timeout_ms: millis(r.per_try_timeout),
        retry_on: Some(if retry_on.is_empty() {
            DEFAULT_RETRY_ON.to_string()
        } else {
            retry_on.to_string()
        }),
        backoff_ms: millis(r.backoff),
        retry_other_hosts: r.retry_ignore_previous_hosts.unwrap_or(true),
    }
}

/// Pilot's `TranslateFault` (see the module docs).
fn fault(f: &HttpFaultInjection) -> Option<xds::Fault> {
    let delay = f.delay.as_ref().and_then(|d| {
        Some(xds::FaultDelay {
            fixed_delay_ms: millis(d.fixed_delay)?,
            per_million: match (d.percentage, d.percent) {
                (Some(p), _) => per_million(p),
                (None, Some(p)) => percent_per_million(p),
                (None, None) => 0,
            },
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let status = match (&a.http_status, &a.grpc_status) {
            (Some(s), _) => xds::AbortStatus::Http(u16::try_from(*s).ok()?),
            (None, Some(name)) => xds::AbortStatus::Grpc(virtual_service::grpc_status_code(name)?),
            // http2Error: not translated by pilot either.
            (None, None) => return None,
        };
        Some(xds::FaultAbort {
            status,
            per_million: a.percentage.map_or(0, per_million),
        })
    });
    (delay.is_some() || abort.is_some()).then_some(xds::Fault { delay, abort })
}

/// Pilot's `TranslateCORSPolicy`.
fn cors(c: &CorsPolicy) -> xds::Cors {
    let allow_origins = if c.allow_origins.is_empty() {
        c.allow_origin
            .iter()
            .map(|o| xds::StringMatch::Exact(o.clone()))
            .collect()
    } else {
        c.allow_origins.iter().map(string_match).collect()
    };
    xds::Cors {
        allow_origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age_s: c.max_age.map(|d| d.get().as_secs()),
        allow_credentials: c.allow_credentials,
        unmatched_preflights: match c.unmatched_preflights {
            Some(UnmatchedPreflights::Ignore) => xds::UnmatchedPreflights::Ignore,
            _ => xds::UnmatchedPreflights::Forward,
        },
    }
}
