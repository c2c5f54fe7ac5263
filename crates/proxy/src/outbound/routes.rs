//! The route table of one `HttpRoutes` (a VirtualService's `http` section), compiled once per
//! config snapshot and consulted per request: which route a request takes, which of its matches
//! fitted, and which weighted destination it goes to.
//!
//! Matching follows what Envoy does with the route configuration Istio generates
//! (`pilot/pkg/networking/core/route/route.go`, Envoy's `source/common/router/config_impl.cc`):
//!
//! - Routes are tried in order; a route fits when any of its matches fits, and a route without
//!   matches fits every request. Istio emits one Envoy route per match, in order, so "first route,
//!   first fitting match" is exactly Envoy's first matching route.
//! - `uri`: exact, prefix or regex on the path without its query. `ignoreUriCase` makes exact and
//!   prefix compare ASCII case-insensitively; it has no effect on a regex (Envoy's
//!   `case_sensitive` does not apply to `safe_regex`). No `uri` (or an empty one) is Istio's
//!   prefix `/`.
//! - A regex must match the whole value (Envoy's RE2 `FullMatch`); every regex is anchored here.
//! - `method`, `scheme`, `authority` and `headers` are Envoy header matchers (`:method`,
//!   `:scheme`, `:authority`). Several values of one header are joined with `,` before matching.
//!   The pseudo-headers Istio allows in `headers` read the request's own fields (`:path` is the
//!   path with its query, as Envoy's `:path`); `host` is `:authority`, as Envoy's header map has
//!   it. An empty matcher, and a regex of just `*`, mean "present" (Istio's
//!   `canBeConvertedToPresentMatch`).
//! - `withoutHeaders` are inverted matchers that treat a missing header as empty, except a
//!   "present" one, which simply requires the header to be absent. So `withoutHeaders: {x:
//!   {exact: foo}}` fits a request without `x`, and `{x: {exact: ""}}` does not.
//! - `queryParams` compare the raw (not percent-decoded) value of the first occurrence of the
//!   parameter, as Envoy's `QueryParameterMatcher`; a bare `?name` has the empty value.
//! - `port`, `sourceLabels` and `sourceNamespace` are decided by Istio when it builds a proxy's
//!   routes; here they are checked per request against the view, with the same result.
//!
//! Weighted destinations follow Istio and Envoy's `weighted_clusters`: a route with one
//! destination sends everything to it whatever its weight; with several, a destination of weight 0
//! is left out and the others share the traffic in proportion to their weights (a random value
//! modulo the total picks the interval). Several destinations all of weight 0 are rejected, as
//! Envoy rejects a weighted cluster whose weights sum to 0.
//!
//! Nothing here allocates per request, except joining the values of a header sent several times
//! and building `:path` for a matcher on it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use http::HeaderName;
use regex::Regex;
use xds::{HttpRoute, HttpRouteMatch, HttpRoutes, RouteDestination, StringMatch};

use super::actions::RouteActions;

/// Upper bound on the compiled size of one regular expression. Envoy (as Istio configures its
/// RE2) rejects programs that are too large; this keeps a hostile VirtualService from making the
/// proxy compile a huge automaton.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Why a route table could not be compiled: the snapshot carrying it is rejected (NACKed) and the
/// previous one stays in force.
#[derive(Debug, thiserror::Error)]
#[error("HttpRoutes {routes}: {field}: {reason}")]
pub struct CompileError {
    /// The `HttpRoutes` name (`default/reviews`).
    pub routes: String,
    /// The field, as a path in the `HttpRoutes` (`http[2].match[0].uri.regex`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl CompileError {
    pub(crate) fn new(routes: &str, field: String, reason: impl ToString) -> CompileError {
        CompileError {
            routes: routes.to_string(),
            field,
            reason: reason.to_string(),
        }
    }
}

/// Compiles an RE2-style regular expression so that it must match the whole value.
pub(crate) fn full_match_regex(re: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// Compiles an RE2-style regular expression as written (for searches and substitutions).
pub(crate) fn search_regex(re: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(re)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// A compiled `StringMatch`.
#[derive(Debug)]
pub(crate) enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    Present,
}

impl Matcher {
    /// Compiles `m`; `field` names it in errors (`http[0].match[1].headers.end-user`).
    pub(crate) fn compile(
        routes: &str,
        field: &str,
        m: &StringMatch,
    ) -> Result<Matcher, CompileError> {
        Ok(match m {
            StringMatch::Exact(s) => Matcher::Exact(s.clone()),
            StringMatch::Prefix(s) => Matcher::Prefix(s.clone()),
            // `*` is not RE2; Istio turns it into a presence check.
            StringMatch::Regex(r) if r == "*" => Matcher::Present,
            StringMatch::Regex(r) => Matcher::Regex(
                full_match_regex(r)
                    .map_err(|e| CompileError::new(routes, format!("{field}.regex"), e))?,
            ),
            StringMatch::Present => Matcher::Present,
        })
    }

    /// True if `value` is matched (a present value always is, for `Present`).
    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => value == s,
            Matcher::Prefix(p) => value.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(value),
            Matcher::Present => true,
        }
    }

    fn is_present(&self) -> bool {
        matches!(self, Matcher::Present)
    }
}

/// The path matcher of a match (Envoy's `path_specifier`).
#[derive(Debug)]
enum PathMatcher {
    Exact { path: String, ignore_case: bool },
    Prefix { prefix: String, ignore_case: bool },
    Regex(Regex),
}

impl PathMatcher {
    fn compile(
        routes: &str,
        field: &str,
        uri: Option<&StringMatch>,
        ignore_case: bool,
    ) -> Result<PathMatcher, CompileError> {
        Ok(match uri {
            Some(StringMatch::Exact(p)) => PathMatcher::Exact {
                path: p.clone(),
                ignore_case,
            },
            Some(StringMatch::Prefix(p)) => PathMatcher::Prefix {
                prefix: p.clone(),
                ignore_case,
            },
            Some(StringMatch::Regex(r)) => PathMatcher::Regex(
                full_match_regex(r)
                    .map_err(|e| CompileError::new(routes, format!("{field}.uri.regex"), e))?,
            ),
            // Istio's route match without a uri (or with an empty one) is prefix "/".
            Some(StringMatch::Present) | None => PathMatcher::Prefix {
                prefix: "/".into(),
                ignore_case,
            },
        })
    }

    /// The length of the part of `path` the match covers (what a prefix rewrite replaces), or
    /// `None` when `path` does not fit.
    fn matched_len(&self, path: &str) -> Option<usize> {
        match self {
            PathMatcher::Exact {
                path: p,
                ignore_case,
            } => {
                let fits = if *ignore_case {
                    path.eq_ignore_ascii_case(p)
                } else {
                    path == p
                };
                fits.then_some(path.len())
            }
            PathMatcher::Prefix {
                prefix,
                ignore_case,
            } => {
                let head = path.as_bytes().get(..prefix.len())?;
                let fits = if *ignore_case {
                    head.eq_ignore_ascii_case(prefix.as_bytes())
                } else {
                    head == prefix.as_bytes()
                };
                fits.then_some(prefix.len())
            }
            PathMatcher::Regex(r) => r.is_match(path).then_some(path.len()),
        }
    }
}

/// What a header matcher reads.
#[derive(Debug)]
enum HeaderKey {
    Authority,
    Method,
    Scheme,
    /// `:path`: the path and its query, as Envoy's `:path` header.
    Path,
    /// A pseudo-header a request never has (`:status`, unknown `:`-names).
    Never,
    Name(HeaderName),
}

impl HeaderKey {
    fn compile(routes: &str, field: &str, name: &str) -> Result<HeaderKey, CompileError> {
        let lower = name.to_ascii_lowercase();
        Ok(match lower.as_str() {
            // Envoy keeps Host as `:authority`, and finds it under either name.
            ":authority" | "host" => HeaderKey::Authority,
            ":method" => HeaderKey::Method,
            ":scheme" => HeaderKey::Scheme,
            ":path" => HeaderKey::Path,
            n if n.starts_with(':') => HeaderKey::Never,
            n => HeaderKey::Name(HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                CompileError::new(routes, field.to_string(), "not a valid header name")
            })?),
        })
    }

    /// The request's value for this key: `None` when absent; several values joined with `,`.
    fn value<'r>(&self, req: &RequestView<'r>) -> Option<Cow<'r, str>> {
        match self {
            HeaderKey::Authority => (!req.authority.is_empty()).then_some(req.authority.into()),
            HeaderKey::Method => Some(req.method.into()),
            HeaderKey::Scheme => Some(req.scheme.into()),
            HeaderKey::Path => Some(match req.query {
                Some(q) => format!("{}?{q}", req.path).into(),
                None => req.path.into(),
            }),
            HeaderKey::Never => None,
            HeaderKey::Name(n) => joined_header(req.headers, n),
        }
    }
}

/// The values of header `name`, joined with `,` when there are several (Envoy's
/// `getAllOfHeaderAsString`); borrowed when there is one.
fn joined_header<'r>(headers: &'r http::HeaderMap, name: &HeaderName) -> Option<Cow<'r, str>> {
    let mut values = headers.get_all(name).iter();
    let first = String::from_utf8_lossy(values.next()?.as_bytes());
    let mut rest = values.peekable();
    if rest.peek().is_none() {
        return Some(first);
    }
    let mut all = first.into_owned();
    for v in rest {
        all.push(',');
        all.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(Cow::Owned(all))
}

/// The raw value of the first occurrence of query parameter `name` in `query` (Envoy's
/// `parseQueryString`: split on `&`, then on the first `=`; no percent-decoding).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) => (k == name).then_some(v),
        None => (kv == name).then_some(""),
    })
}

/// One compiled `HttpRouteMatch`.
#[derive(Debug)]
struct CompiledMatch {
    path: PathMatcher,
    /// `method`, `scheme`, `authority` and `headers`: all must hold.
    headers: Vec<(HeaderKey, Matcher)>,
    /// `withoutHeaders`: none may hold.
    without_headers: Vec<(HeaderKey, Matcher)>,
    query_params: Vec<(String, Matcher)>,
    port: Option<u16>,
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
    /// Route name joined with the match's (`reviews.jason`), as Istio names the Envoy route.
    name: Option<String>,
}

impl CompiledMatch {
    fn compile(
        routes: &str,
        field: &str,
        route_name: Option<&str>,
        m: &HttpRouteMatch,
    ) -> Result<CompiledMatch, CompileError> {
        let mut headers = Vec::new();
        for (key, label, sm) in [
            (HeaderKey::Method, "method", &m.method),
            (HeaderKey::Scheme, "scheme", &m.scheme),
            (HeaderKey::Authority, "authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                headers.push((
                    key,
                    Matcher::compile(routes, &format!("{field}.{label}"), sm)?,
                ));
            }
        }
        let header_list = |kind: &str, map: &BTreeMap<String, StringMatch>| {
            map.iter()
                .map(|(name, sm)| {
                    let f = format!("{field}.{kind}.{name}");
                    Ok((
                        HeaderKey::compile(routes, &f, name)?,
                        Matcher::compile(routes, &f, sm)?,
                    ))
                })
                .collect::<Result<Vec<_>, CompileError>>()
        };
        headers.extend(header_list("headers", &m.headers)?);
        let without_headers = header_list("withoutHeaders", &m.without_headers)?;
        let query_params = m
            .query_params
            .iter()
            .map(|(name, sm)| {
                let f = format!("{field}.queryParams.{name}");
                Ok((name.clone(), Matcher::compile(routes, &f, sm)?))
            })
            .collect::<Result<Vec<_>, CompileError>>()?;
        let name = match (route_name, m.name.as_deref()) {
            (r, Some(n)) => Some(format!("{}.{n}", r.unwrap_or(""))),
            (Some(r), None) => Some(r.to_string()),
            (None, None) => None,
        };
        Ok(CompiledMatch {
            path: PathMatcher::compile(routes, field, m.uri.as_ref(), m.ignore_uri_case)?,
            headers,
            without_headers,
            query_params,
            port: m.port,
            source_labels: m.source_labels.clone(),
            source_namespace: m.source_namespace.clone(),
            name,
        })
    }

    /// The length of the path the match covers, if the request fits.
    fn fits(&self, req: &RequestView<'_>) -> Option<usize> {
        if self.port.is_some_and(|p| p != req.port)
            || self
                .source_namespace
                .as_deref()
                .is_some_and(|ns| ns != req.source_namespace)
            || !self
                .source_labels
                .iter()
                .all(|(k, v)| req.source_labels.get(k) == Some(v))
        {
            return None;
        }
        let matched = self.path.matched_len(req.path)?;
        let headers_fit = self
            .headers
            .iter()
            .all(|(key, m)| key.value(req).is_some_and(|v| m.matches(&v)));
        // Inverted, a missing header counting as empty; a presence check just wants it absent.
        let without_fit = self
            .without_headers
            .iter()
            .all(|(key, m)| match key.value(req) {
                Some(_) if m.is_present() => false,
                None if m.is_present() => true,
                Some(v) => !m.matches(&v),
                None => !m.matches(""),
            });
        let query_fits = self.query_params.iter().all(|(name, m)| {
            req.query
                .and_then(|q| query_param(q, name))
                .is_some_and(|v| m.matches(v))
        });
        (headers_fit && without_fit && query_fits).then_some(matched)
    }
}

/// How a route picks its destination.
#[derive(Debug)]
enum Weights {
    /// Redirect, direct response, or "the host itself".
    None,
    /// One destination: always it.
    Single,
    /// Several: `(index in route.route, weight)`, weights > 0, and their sum.
    Weighted {
        entries: Vec<(usize, u32)>,
        total: u64,
    },
}

impl Weights {
    fn compile(
        routes: &str,
        field: &str,
        dests: &[RouteDestination],
    ) -> Result<Weights, CompileError> {
        match dests.len() {
            0 => Ok(Weights::None),
            1 => Ok(Weights::Single),
            _ => {
                let entries: Vec<(usize, u32)> = dests
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.weight > 0)
                    .map(|(i, d)| (i, d.weight))
                    .collect();
                let total = entries.iter().map(|&(_, w)| u64::from(w)).sum();
                if total == 0 {
                    return Err(CompileError::new(
                        routes,
                        format!("{field}.route"),
                        "the weights of several destinations must not all be 0",
                    ));
                }
                Ok(Weights::Weighted { entries, total })
            }
        }
    }
}

/// One compiled route.
#[derive(Debug)]
pub(crate) struct CompiledRoute {
    route: HttpRoute,
    matches: Vec<CompiledMatch>,
    weights: Weights,
    actions: RouteActions,
}

/// The compiled `http` routes of one `HttpRoutes`.
#[derive(Debug)]
pub struct RouteTable {
    name: String,
    routes: Vec<CompiledRoute>,
}

impl RouteTable {
    /// Compiles `routes` (every regex, header name and weight checked); an error names the field.
    pub fn compile(routes: &HttpRoutes) -> Result<RouteTable, CompileError> {
        let rn = routes.name.as_str();
        let compiled = routes
            .http
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = format!("http[{i}]");
                let matches = r
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(j, m)| {
                        CompiledMatch::compile(
                            rn,
                            &format!("{field}.match[{j}]"),
                            r.name.as_deref(),
                            m,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(CompiledRoute {
                    route: r.clone(),
                    matches,
                    weights: Weights::compile(rn, &field, &r.route)?,
                    actions: RouteActions::compile(rn, &field, r)?,
                })
            })
            .collect::<Result<Vec<_>, CompileError>>()?;
        Ok(RouteTable {
            name: routes.name.clone(),
            routes: compiled,
        })
    }

    /// The `HttpRoutes` name this table was compiled from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when there are no HTTP routes (every request then goes to the host itself).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The first route that fits `req`, or `None` (Envoy's 404 with flag `NR` when routes exist).
    pub fn select(&self, req: &RequestView<'_>) -> Option<Selected<'_>> {
        self.routes.iter().enumerate().find_map(|(index, r)| {
            if r.matches.is_empty() {
                // Istio's prefix "/" for a route without matches.
                return req.path.starts_with('/').then_some(Selected {
                    route: r,
                    index,
                    match_index: None,
                    matched_len: 1,
                });
            }
            r.matches.iter().enumerate().find_map(|(j, m)| {
                m.fits(req).map(|matched_len| Selected {
                    route: r,
                    index,
                    match_index: Some(j),
                    matched_len,
                })
            })
        })
    }
}

/// What the router sees of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// `http` or `https`, as the request's `:scheme`.
    pub scheme: &'a str,
    /// The authority as sent (`reviews:9080`); empty when the request has none.
    pub authority: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query string (after `?`), if any.
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: &'a http::HeaderMap,
    /// The service port the request was sent to.
    pub port: u16,
    /// The calling workload's labels.
    pub source_labels: &'a BTreeMap<String, String>,
    /// The calling workload's namespace.
    pub source_namespace: &'a str,
}

impl<'a> RequestView<'a> {
    /// The view of `parts`: the authority is the URI's (HTTP/2, absolute-form HTTP/1), else the
    /// `Host` header.
    pub fn new(
        parts: &'a http::request::Parts,
        scheme: &'a str,
        port: u16,
        source_labels: &'a BTreeMap<String, String>,
        source_namespace: &'a str,
    ) -> RequestView<'a> {
        let authority = match parts.uri.authority() {
            Some(a) => a.as_str(),
            None => parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(""),
        };
        RequestView {
            method: parts.method.as_str(),
            scheme,
            authority,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            port,
            source_labels,
            source_namespace,
        }
    }
}

/// The route a request takes.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'t> {
    route: &'t CompiledRoute,
    index: usize,
    match_index: Option<usize>,
    matched_len: usize,
}

/// A destination picked for a request.
#[derive(Debug, Clone, Copy)]
pub struct Picked<'t> {
    /// Its index in the route's `route` list.
    pub index: usize,
    /// The destination.
    pub destination: &'t RouteDestination,
}

impl<'t> Selected<'t> {
    /// The route.
    pub fn route(&self) -> &'t HttpRoute {
        &self.route.route
    }

    /// What the route does to the request and response ([`super::actions`]).
    pub fn actions(&self) -> &'t RouteActions {
        &self.route.actions
    }

    /// Its index in `http`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Which of its matches fitted; `None` for a route without matches.
    pub fn match_index(&self) -> Option<usize> {
        self.match_index
    }

    /// The route name for the access log: the route's, joined with the match's by `.`
    /// (`reviews.jason`) as Istio names Envoy routes; `None` when neither has one.
    pub fn route_name(&self) -> Option<&'t str> {
        match self.match_index {
            Some(j) => self.route.matches[j].name.as_deref(),
            None => self.route.route.name.as_deref(),
        }
    }

    /// How many bytes at the start of the path the `uri` match covers: what `rewrite.uri`
    /// replaces (the prefix for a prefix match, the whole path for exact and regex matches, `/`
    /// for a match without `uri`).
    pub fn matched_len(&self) -> usize {
        self.matched_len
    }

    /// True when the route splits traffic between several destinations (Envoy's weighted
    /// clusters, whose header edits apply in another order than a single destination's).
    pub fn is_weighted(&self) -> bool {
        matches!(self.route.weights, Weights::Weighted { .. })
    }

    /// The destination for a request, from a uniformly random `rng_value`: `None` for a route
    /// without destinations (redirect, direct response, or the host itself).
    pub fn pick_destination(&self, rng_value: u64) -> Option<Picked<'t>> {
        let dests = &self.route.route.route;
        let index = match &self.route.weights {
            Weights::None => return None,
            Weights::Single => 0,
            Weights::Weighted { entries, total } => {
                let mut n = rng_value % total;
                let mut chosen = entries.last().map_or(0, |&(i, _)| i);
                for &(i, w) in entries {
                    if n < u64::from(w) {
                        chosen = i;
                        break;
                    }
                    n -= u64::from(w);
                }
                chosen
            }
        };
        dests
            .get(index)
            .map(|destination| Picked { index, destination })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> RouteTable {
        let routes: HttpRoutes = serde_saphyr::from_str(yaml).unwrap();
        RouteTable::compile(&routes).unwrap()
    }

    fn compile_err(yaml: &str) -> CompileError {
        let routes: HttpRoutes = serde_saphyr::from_str(yaml).unwrap();
        RouteTable::compile(&routes).unwrap_err()
    }

    /// A request to route in tests.
    struct Req {
        method: http::Method,
        scheme: &'static str,
        authority: String,
        uri: String,
        headers: http::HeaderMap,
        port: u16,
        labels: BTreeMap<String, String>,
        namespace: String,
    }

    fn req(uri: &str) -> Req {
        Req {
            method: http::Method::GET,
            scheme: "http",
            authority: "reviews:9080".into(),
            uri: uri.into(),
            headers: http::HeaderMap::new(),
            port: 9080,
            labels: BTreeMap::new(),
            namespace: "default".into(),
        }
    }

    impl Req {
        fn header(mut self, name: &'static str, value: &str) -> Req {
            self.headers.append(name, value.parse().unwrap());
            self
        }
        fn method(mut self, m: &str) -> Req {
            self.method = m.parse().unwrap();
            self
        }
        fn label(mut self, k: &str, v: &str) -> Req {
            self.labels.insert(k.into(), v.into());
            self
        }
        /// Which route (index, match index) the request takes.
        fn route(&self, t: &RouteTable) -> Option<(usize, Option<usize>)> {
            let uri: http::Uri = self.uri.parse().unwrap();
            let view = RequestView {
                method: self.method.as_str(),
                scheme: self.scheme,
                authority: &self.authority,
                path: uri.path(),
                query: uri.query(),
                headers: &self.headers,
                port: self.port,
                source_labels: &self.labels,
                source_namespace: &self.namespace,
            };
            t.select(&view).map(|s| (s.index(), s.match_index()))
        }
        fn selected<R>(&self, t: &RouteTable, f: impl FnOnce(Option<Selected<'_>>) -> R) -> R {
            let uri: http::Uri = self.uri.parse().unwrap();
            let view = RequestView {
                method: self.method.as_str(),
                scheme: self.scheme,
                authority: &self.authority,
                path: uri.path(),
                query: uri.query(),
                headers: &self.headers,
                port: self.port,
                source_labels: &self.labels,
                source_namespace: &self.namespace,
            };
            f(t.select(&view))
        }
    }

    // Istio's request-routing task: `end-user: jason` goes to v2, everything else to v1.
    const BOOKINFO_REVIEWS: &str = r#"
name: default/reviews
hosts: [reviews.default.svc.cluster.local]
http:
- match:
  - headers:
      end-user:
        exact: jason
  route:
  - host: reviews.default.svc.cluster.local
    subset: v2
- route:
  - host: reviews.default.svc.cluster.local
    subset: v1
"#;

    #[test]
    fn bookinfo_end_user_jason_goes_to_v2() {
        let t = table(BOOKINFO_REVIEWS);
        assert_eq!(
            req("/reviews/0").header("end-user", "jason").route(&t),
            Some((0, Some(0)))
        );
        assert_eq!(
            req("/reviews/0").header("end-user", "jasonx").route(&t),
            Some((1, None))
        );
        assert_eq!(
            req("/reviews/0").header("end-user", "Jason").route(&t),
            Some((1, None))
        );
        assert_eq!(req("/reviews/0").route(&t), Some((1, None)));
    }

    #[test]
    fn header_names_are_case_insensitive_and_values_are_not() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match:
  - headers:
      End-User: {exact: jason}
  route: [{host: a}]
"#,
        );
        assert_eq!(
            req("/").header("end-user", "jason").route(&t),
            Some((0, Some(0)))
        );
        assert_eq!(req("/").header("end-user", "JASON").route(&t), None);
    }

    // Istio's bookinfo gateway: exact /productpage, prefixes /static and /api/v1/products.
    #[test]
    fn uri_exact_and_prefix() {
        let t = table(
            r#"
name: default/bookinfo
hosts: [productpage]
http:
- match:
  - uri: {exact: /productpage}
  - uri: {prefix: /static}
  - uri: {exact: /login}
  - uri: {prefix: /api/v1/products}
  route: [{host: productpage, port: 9080}]
"#,
        );
        assert_eq!(req("/productpage").route(&t), Some((0, Some(0))));
        assert_eq!(req("/productpage?u=normal").route(&t), Some((0, Some(0))));
        assert_eq!(req("/productpage/").route(&t), None);
        assert_eq!(req("/Productpage").route(&t), None);
        assert_eq!(req("/static/jquery.js").route(&t), Some((0, Some(1))));
        // A prefix is a string prefix, not a path segment prefix (Envoy's `prefix`).
        assert_eq!(req("/staticfoo").route(&t), Some((0, Some(1))));
        assert_eq!(
            req("/api/v1/products/0/reviews").route(&t),
            Some((0, Some(3)))
        );
        assert_eq!(req("/").route(&t), None);
    }

    #[test]
    fn prefix_match_ignores_the_query() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{uri: {prefix: "/a?b"}}]
  route: [{host: a}]
- match: [{uri: {exact: /x}}]
  route: [{host: a}]
"#,
        );
        assert_eq!(req("/a?b=1").route(&t), None);
        assert_eq!(req("/x?y").route(&t), Some((1, Some(0))));
    }

    #[test]
    fn ignore_uri_case_applies_to_exact_and_prefix_not_regex() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{uri: {exact: /Login}, ignoreUriCase: true}]
  route: [{host: exact}]
- match: [{uri: {prefix: /API/}, ignoreUriCase: true}]
  route: [{host: prefix}]
- match: [{uri: {regex: "/re[a-z]+"}, ignoreUriCase: true}]
  route: [{host: regex}]
"#,
        );
        assert_eq!(req("/login").route(&t), Some((0, Some(0))));
        assert_eq!(req("/LOGIN").route(&t), Some((0, Some(0))));
        assert_eq!(req("/api/v1").route(&t), Some((1, Some(0))));
        assert_eq!(req("/Api/v1").route(&t), Some((1, Some(0))));
        assert_eq!(req("/regex").route(&t), Some((2, Some(0))));
        assert_eq!(req("/REGEX").route(&t), None);
    }

    #[test]
    fn regex_must_match_the_whole_path() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{uri: {regex: "/ratings/[0-9]+"}}]
  route: [{host: a}]
- match: [{uri: {regex: "a|/b"}}]
  route: [{host: b}]
"#,
        );
        assert_eq!(req("/ratings/1").route(&t), Some((0, Some(0))));
        assert_eq!(req("/ratings/1?x=2").route(&t), Some((0, Some(0))));
        assert_eq!(req("/ratings/1/x").route(&t), None);
        assert_eq!(req("/x/ratings/1").route(&t), None);
        // The anchor wraps the whole alternation: "/b" fits, "/ba" does not.
        assert_eq!(req("/b").route(&t), Some((1, Some(0))));
        assert_eq!(req("/ba").route(&t), None);
    }

    #[test]
    fn header_regex_and_prefix() {
        // Istio's example: `user-agent` regex for Firefox, `cookie` regex for a user.
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match:
  - headers:
      user-agent: {regex: ".*Firefox.*"}
  route: [{host: firefox}]
- match:
  - headers:
      cookie: {regex: "^(.*?;)?(user=jason)(;.*)?$"}
  route: [{host: jason}]
- match:
  - headers:
      x-version: {prefix: v2}
  route: [{host: v2}]
"#,
        );
        assert_eq!(
            req("/")
                .header("user-agent", "Mozilla/5.0 Firefox/120")
                .route(&t),
            Some((0, Some(0)))
        );
        assert_eq!(req("/").header("user-agent", "curl/8").route(&t), None);
        assert_eq!(req("/").header("cookie", "a=b; user=jason").route(&t), None);
        assert_eq!(
            req("/").header("cookie", "a=b;user=jason").route(&t),
            Some((1, Some(0)))
        );
        assert_eq!(
            req("/").header("cookie", "user=jason").route(&t),
            Some((1, Some(0)))
        );
        assert_eq!(
            req("/").header("x-version", "v2.1").route(&t),
            Some((2, Some(0)))
        );
        assert_eq!(req("/").header("x-version", "v1").route(&t), None);
    }

    #[test]
    fn several_values_of_a_header_are_joined_with_commas() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{headers: {x-a: {exact: "1,2"}}}]
  route: [{host: joined}]
- match: [{headers: {x-a: {exact: "1"}}}]
  route: [{host: first}]
"#,
        );
        assert_eq!(
            req("/").header("x-a", "1").header("x-a", "2").route(&t),
            Some((0, Some(0)))
        );
        assert_eq!(req("/").header("x-a", "1").route(&t), Some((1, Some(0))));
        // One header line with a comma is the same value.
        assert_eq!(req("/").header("x-a", "1,2").route(&t), Some((0, Some(0))));
    }

    #[test]
    fn empty_match_and_star_regex_mean_present() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{headers: {x-present: present}}]
  route: [{host: a}]
- match: [{headers: {x-star: {regex: "*"}}}]
  route: [{host: b}]
"#,
        );
        assert_eq!(
            req("/").header("x-present", "").route(&t),
            Some((0, Some(0)))
        );
        assert_eq!(
            req("/").header("x-present", "anything").route(&t),
            Some((0, Some(0)))
        );
        assert_eq!(req("/").header("x-star", "").route(&t), Some((1, Some(0))));
        assert_eq!(req("/").route(&t), None);
    }

    #[test]
    fn exact_empty_header_needs_an_empty_value() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{headers: {x-e: {exact: ""}}}]
  route: [{host: a}]
"#,
        );
        assert_eq!(req("/").header("x-e", "").route(&t), Some((0, Some(0))));
        assert_eq!(req("/").header("x-e", "v").route(&t), None);
        assert_eq!(req("/").route(&t), None);
    }

    #[test]
    fn without_headers_invert_and_treat_missing_as_empty() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{withoutHeaders: {end-user: {exact: jason}}}]
  route: [{host: not-jason}]
- route: [{host: jason}]
"#,
        );
        assert_eq!(req("/").route(&t), Some((0, Some(0))));
        assert_eq!(
            req("/").header("end-user", "mike").route(&t),
            Some((0, Some(0)))
        );
        assert_eq!(
            req("/").header("end-user", "jason").route(&t),
            Some((1, None))
        );

        let present = table(
            r#"
name: t
hosts: [h]
http:
- match: [{withoutHeaders: {x-debug: present}}]
  route: [{host: absent}]
- route: [{host: present}]
"#,
        );
        assert_eq!(req("/").route(&present), Some((0, Some(0))));
        assert_eq!(
            req("/").header("x-debug", "").route(&present),
            Some((1, None))
        );
        assert_eq!(
            req("/").header("x-debug", "1").route(&present),
            Some((1, None))
        );

        // A missing header counts as "", which `exact: ""` matches: inverted, no fit.
        let empty = table(
            r#"
name: t
hosts: [h]
http:
- match: [{withoutHeaders: {x-e: {exact: ""}}}]
  route: [{host: a}]
"#,
        );
        assert_eq!(req("/").route(&empty), None);
        assert_eq!(req("/").header("x-e", "").route(&empty), None);
        assert_eq!(
            req("/").header("x-e", "v").route(&empty),
            Some((0, Some(0)))
        );

        let regex = table(
            r#"
name: t
hosts: [h]
http:
- match: [{withoutHeaders: {x-r: {regex: "v[0-9]"}}}]
  route: [{host: a}]
"#,
        );
        assert_eq!(req("/").route(&regex), Some((0, Some(0))));
        assert_eq!(req("/").header("x-r", "v1").route(&regex), None);
        assert_eq!(
            req("/").header("x-r", "v10").route(&regex),
            Some((0, Some(0)))
        );
    }

    #[test]
    fn method_scheme_authority() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{method: {exact: POST}}]
  route: [{host: post}]
- match: [{method: {regex: "PUT|PATCH"}}]
  route: [{host: put}]
- match: [{authority: {exact: "reviews:9080"}, scheme: {exact: https}}]
  route: [{host: https}]
- match: [{authority: {prefix: "reviews"}}]
  route: [{host: authority}]
"#,
        );
        assert_eq!(req("/").method("POST").route(&t), Some((0, Some(0))));
        assert_eq!(req("/").method("PATCH").route(&t), Some((1, Some(0))));
        assert_eq!(req("/").method("PUTX").route(&t), Some((3, Some(0))));
        let mut https = req("/");
        https.scheme = "https";
        assert_eq!(https.route(&t), Some((2, Some(0))));
        assert_eq!(req("/").route(&t), Some((3, Some(0))));
        let mut other = req("/");
        other.authority = "ratings:9080".into();
        assert_eq!(other.route(&t), None);
    }

    #[test]
    fn pseudo_headers_in_headers_read_the_request() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{headers: {":path": {exact: "/a?b=1"}}}]
  route: [{host: path}]
- match: [{headers: {":method": {exact: DELETE}}}]
  route: [{host: method}]
- match: [{headers: {"host": {exact: "other:80"}}}]
  route: [{host: host}]
- match: [{headers: {":authority": {exact: "x:1"}}}]
  route: [{host: authority}]
- match: [{headers: {":status": present}}]
  route: [{host: never}]
"#,
        );
        assert_eq!(req("/a?b=1").route(&t), Some((0, Some(0))));
        assert_eq!(req("/a").route(&t), None);
        assert_eq!(req("/").method("DELETE").route(&t), Some((1, Some(0))));
        let mut host = req("/");
        host.authority = "other:80".into();
        assert_eq!(host.route(&t), Some((2, Some(0))));
        host.authority = "x:1".into();
        assert_eq!(host.route(&t), Some((3, Some(0))));
    }

    #[test]
    fn query_params_raw_first_value_and_present() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{queryParams: {v: {exact: "a b"}}}]
  route: [{host: decoded}]
- match: [{queryParams: {v: {exact: "a%20b"}}}]
  route: [{host: raw}]
- match: [{queryParams: {n: {regex: "[0-9]+"}}}]
  route: [{host: regex}]
- match: [{queryParams: {debug: present}}]
  route: [{host: present}]
"#,
        );
        // Envoy compares the raw value.
        assert_eq!(req("/?v=a%20b").route(&t), Some((1, Some(0))));
        assert_eq!(req("/?x=1&n=42").route(&t), Some((2, Some(0))));
        assert_eq!(req("/?n=42x").route(&t), None);
        // The first occurrence counts.
        assert_eq!(req("/?n=x&n=42").route(&t), None);
        assert_eq!(req("/?n=42&n=x").route(&t), Some((2, Some(0))));
        assert_eq!(req("/?debug").route(&t), Some((3, Some(0))));
        assert_eq!(req("/?debug=").route(&t), Some((3, Some(0))));
        assert_eq!(req("/?debugx=1").route(&t), None);
        assert_eq!(req("/").route(&t), None);

        let empty = table(
            r#"
name: t
hosts: [h]
http:
- match: [{queryParams: {flag: {exact: ""}}}]
  route: [{host: a}]
"#,
        );
        assert_eq!(req("/?flag").route(&empty), Some((0, Some(0))));
        assert_eq!(req("/?flag=1").route(&empty), None);
        assert_eq!(req("/?other").route(&empty), None);
    }

    #[test]
    fn port_source_labels_and_namespace() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{port: 8080}]
  route: [{host: port}]
- match: [{sourceLabels: {app: reviews, version: v2}}]
  route: [{host: labels}]
- match: [{sourceNamespace: test}]
  route: [{host: ns}]
"#,
        );
        let mut p = req("/");
        p.port = 8080;
        assert_eq!(p.route(&t), Some((0, Some(0))));
        assert_eq!(
            req("/")
                .label("app", "reviews")
                .label("version", "v2")
                .label("x", "y")
                .route(&t),
            Some((1, Some(0)))
        );
        assert_eq!(req("/").label("app", "reviews").route(&t), None);
        assert_eq!(
            req("/")
                .label("app", "reviews")
                .label("version", "v3")
                .route(&t),
            None
        );
        let mut ns = req("/");
        ns.namespace = "test".into();
        assert_eq!(ns.route(&t), Some((2, Some(0))));
    }

    #[test]
    fn all_conditions_of_a_match_must_hold_and_any_match_selects() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match:
  - uri: {prefix: /a}
    method: {exact: GET}
    headers: {x: {exact: "1"}}
  - uri: {prefix: /b}
  route: [{host: a}]
"#,
        );
        assert_eq!(req("/a").header("x", "1").route(&t), Some((0, Some(0))));
        assert_eq!(req("/a").header("x", "1").method("POST").route(&t), None);
        assert_eq!(req("/a").route(&t), None);
        assert_eq!(req("/b").route(&t), Some((0, Some(1))));
    }

    #[test]
    fn first_fitting_route_wins_and_no_route_is_none() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{uri: {prefix: /}}]
  route: [{host: first}]
- match: [{uri: {exact: /x}}]
  route: [{host: second}]
"#,
        );
        assert_eq!(req("/x").route(&t), Some((0, Some(0))));
        let none = table(
            r#"
name: t
hosts: [h]
http:
- match: [{uri: {exact: /x}}]
  route: [{host: a}]
"#,
        );
        assert_eq!(req("/y").route(&none), None);
        let empty = table("name: t\nhosts: [h]\n");
        assert!(empty.is_empty());
        assert_eq!(req("/").route(&empty), None);
    }

    #[test]
    fn route_names_join_route_and_match_names() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- name: reviews-v2
  match: [{name: jason, headers: {end-user: {exact: jason}}}, {uri: {prefix: /v2}}]
  route: [{host: a}]
- match: [{name: only-match, uri: {prefix: /m}}]
  route: [{host: a}]
- name: catch-all
  route: [{host: a}]
"#,
        );
        let name = |r: Req| r.selected(&t, |s| s.and_then(|s| s.route_name()).map(String::from));
        assert_eq!(
            name(req("/").header("end-user", "jason")).as_deref(),
            Some("reviews-v2.jason")
        );
        assert_eq!(name(req("/v2")).as_deref(), Some("reviews-v2"));
        assert_eq!(name(req("/m")).as_deref(), Some(".only-match"));
        assert_eq!(name(req("/z")).as_deref(), Some("catch-all"));
    }

    #[test]
    fn matched_len_is_what_a_rewrite_replaces() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{uri: {prefix: /productpage}}]
  route: [{host: a}]
- match: [{uri: {exact: /exact}}]
  route: [{host: a}]
- match: [{uri: {regex: "/re.*"}}]
  route: [{host: a}]
- match: [{headers: {x: present}}]
  route: [{host: a}]
- route: [{host: a}]
"#,
        );
        let len = |r: Req| r.selected(&t, |s| s.map(|s| s.matched_len()));
        assert_eq!(len(req("/productpage/x?q")), Some("/productpage".len()));
        assert_eq!(len(req("/exact?q")), Some("/exact".len()));
        assert_eq!(len(req("/regex/long?q")), Some("/regex/long".len()));
        assert_eq!(len(req("/h").header("x", "1")), Some(1));
        assert_eq!(len(req("/anything")), Some(1));
    }

    #[test]
    fn weighted_destinations_split_by_interval() {
        // Istio's traffic-shifting task: 50/50 between v1 and v3, and 80/20.
        let t = table(
            r#"
name: default/reviews
hosts: [reviews]
http:
- route:
  - {host: reviews, subset: v1, weight: 80}
  - {host: reviews, subset: v3, weight: 20}
"#,
        );
        let pick = |v: u64| {
            req("/").selected(&t, |s| {
                let s = s.unwrap();
                assert!(s.is_weighted());
                s.pick_destination(v)
                    .map(|p| (p.index, p.destination.subset.clone()))
            })
        };
        assert_eq!(pick(0), Some((0, Some("v1".into()))));
        assert_eq!(pick(79), Some((0, Some("v1".into()))));
        assert_eq!(pick(80), Some((1, Some("v3".into()))));
        assert_eq!(pick(99), Some((1, Some("v3".into()))));
        assert_eq!(pick(100), Some((0, Some("v1".into()))));
        // u64::MAX % 100 == 15
        assert_eq!(pick(u64::MAX), Some((0, Some("v1".into()))));
    }

    #[test]
    fn zero_weights_are_skipped_unless_alone() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{uri: {prefix: /multi}}]
  route:
  - {host: zero, weight: 0}
  - {host: all, weight: 100}
- match: [{uri: {prefix: /single}}]
  route:
  - {host: only, weight: 0}
- redirect: {uri: /x}
"#,
        );
        let host = |r: Req, v: u64| {
            r.selected(&t, |s| {
                s.unwrap()
                    .pick_destination(v)
                    .map(|p| (p.index, p.destination.host.clone()))
            })
        };
        for v in [0, 1, 50, 99, 12345] {
            assert_eq!(host(req("/multi"), v), Some((1, "all".into())));
            assert_eq!(host(req("/single"), v), Some((0, "only".into())));
        }
        assert_eq!(host(req("/other"), 0), None);
        assert!(!req("/single").selected(&t, |s| s.unwrap().is_weighted()));
    }

    #[test]
    fn weights_share_in_proportion() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- route:
  - {host: a, weight: 1}
  - {host: b, weight: 2}
  - {host: c, weight: 1}
"#,
        );
        let mut counts = [0usize; 3];
        req("/").selected(&t, |s| {
            let s = s.unwrap();
            for v in 0..400u64 {
                counts[s.pick_destination(v).unwrap().index] += 1;
            }
        });
        assert_eq!(counts, [100, 200, 100]);
    }

    #[test]
    fn invalid_config_names_the_field() {
        let e = compile_err(
            r#"
name: default/reviews
hosts: [h]
http:
- route: [{host: a}]
- route: [{host: a}]
- match: [{uri: {prefix: /}}, {uri: {regex: "(unclosed"}}]
  route: [{host: a}]
"#,
        );
        assert_eq!(e.field, "http[2].match[1].uri.regex");
        assert!(
            e.to_string()
                .starts_with("HttpRoutes default/reviews: http[2].match[1].uri.regex: "),
            "{e}"
        );

        let e = compile_err(
            r#"
name: t
hosts: [h]
http:
- match: [{headers: {x-a: {regex: "x("}}}]
  route: [{host: a}]
"#,
        );
        assert_eq!(e.field, "http[0].match[0].headers.x-a.regex");

        let e = compile_err(
            r#"
name: t
hosts: [h]
http:
- match: [{headers: {"bad name": {exact: a}}}]
  route: [{host: a}]
"#,
        );
        assert_eq!(e.field, "http[0].match[0].headers.bad name");

        let e = compile_err(
            r#"
name: t
hosts: [h]
http:
- route:
  - {host: a, weight: 0}
  - {host: b, weight: 0}
"#,
        );
        assert_eq!(e.field, "http[0].route");

        let e = compile_err(
            r#"
name: t
hosts: [h]
http:
- match: [{queryParams: {q: {regex: "["}}}]
  route: [{host: a}]
"#,
        );
        assert_eq!(e.field, "http[0].match[0].queryParams.q.regex");
    }

    #[test]
    fn asterisk_form_path_fits_no_route() {
        // `OPTIONS *`: Envoy's prefix "/" (a route without uri, or without matches) does not fit.
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{method: {exact: OPTIONS}}]
  route: [{host: a}]
- route: [{host: b}]
"#,
        );
        let headers = http::HeaderMap::new();
        let labels = BTreeMap::new();
        let view = RequestView {
            method: "OPTIONS",
            scheme: "http",
            authority: "h",
            path: "*",
            query: None,
            headers: &headers,
            port: 80,
            source_labels: &labels,
            source_namespace: "default",
        };
        assert!(t.select(&view).is_none());
    }

    #[test]
    fn header_regex_is_a_full_match_and_query_edge_cases() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{headers: {x-v: {regex: "v[0-9]"}}}]
  route: [{host: a}]
- match: [{queryParams: {a: {exact: "1"}}}]
  route: [{host: b}]
- match: [{headers: {x-w: present}, withoutHeaders: {x-w: {exact: bad}}}]
  route: [{host: c}]
"#,
        );
        assert_eq!(req("/").header("x-v", "v1").route(&t), Some((0, Some(0))));
        assert_eq!(req("/").header("x-v", "v10").route(&t), None);
        assert_eq!(req("/").header("x-v", "xv1").route(&t), None);
        assert_eq!(req("/?&a=1").route(&t), Some((1, Some(0))));
        assert_eq!(req("/?a=1&").route(&t), Some((1, Some(0))));
        assert_eq!(req("/?a=1=2").route(&t), None);
        assert_eq!(req("/").header("x-w", "good").route(&t), Some((2, Some(0))));
        assert_eq!(req("/").header("x-w", "bad").route(&t), None);
    }

    #[test]
    fn request_view_from_parts() {
        let (parts, ()) = http::Request::builder()
            .uri("/a/b?c=d")
            .header("host", "reviews:9080")
            .body(())
            .unwrap()
            .into_parts();
        let labels = BTreeMap::new();
        let v = RequestView::new(&parts, "http", 9080, &labels, "default");
        assert_eq!(
            (v.authority, v.path, v.query, v.method),
            ("reviews:9080", "/a/b", Some("c=d"), "GET")
        );
        let (parts, ()) = http::Request::builder()
            .uri("http://ratings:9080/x")
            .header("host", "ignored")
            .body(())
            .unwrap()
            .into_parts();
        let v = RequestView::new(&parts, "http", 9080, &labels, "default");
        assert_eq!((v.authority, v.path, v.query), ("ratings:9080", "/x", None));
    }
}
