//! What a selected route does to a request and its response, as Envoy does it with the route
//! configuration Istio generates: header edits, authority and path rewrites, redirects, direct
//! responses and CORS. Compiled once per snapshot ([`RouteActions`], inside the
//! [`RouteTable`](super::routes::RouteTable)); applied per request by plain functions over
//! `http` types. No I/O.
//!
//! The order is Envoy's (`RouteEntryImplBase::finalizeRequestHeaders`): header edits, then the
//! authority rewrite, then the path rewrite.
//!
//! - Header edits (`headers.request` / `headers.response`): Istio turns `set` into
//!   `OVERWRITE_IF_EXISTS_OR_ADD` and `add` into `APPEND_IF_EXISTS_OR_ADD`. One set of edits runs
//!   as Envoy's `HeaderParser`: removals first, then every overwrite, then every append; a value
//!   that comes out empty is not written (Envoy's `keep_empty_value` is false). A route with one
//!   destination carries the destination's edits after the route's in the same set (Istio
//!   appends them to the route's lists); a route with weighted destinations applies the chosen
//!   destination's edits first and the route's after (Envoy's weighted cluster entry runs its own
//!   parser, then the route's), so there the route's `set` wins.
//! - `set`/`add` of `:authority` or `host` is an authority rewrite, as Istio translates it (`set`
//!   wins over `add`); `rewrite.authority` wins over both; a route-level authority wins over a
//!   destination's. Other `:`-names cannot be edited, nor `host` removed (Istio's validation
//!   rejects them; so does compiling here).
//! - Values may carry Envoy's `%COMMAND%` formatters; the ones a sidecar can answer are
//!   supported ([`FormatContext`]): `DOWNSTREAM_REMOTE_ADDRESS`, `..._WITHOUT_PORT`,
//!   `DOWNSTREAM_REMOTE_PORT`, the `DOWNSTREAM_DIRECT_REMOTE_*` forms, `DOWNSTREAM_LOCAL_ADDRESS`,
//!   `..._WITHOUT_PORT`, `DOWNSTREAM_LOCAL_PORT`, `HOSTNAME`, `PROTOCOL` and `REQ(name?alt):N`;
//!   `%%` is a literal `%`. Any other command, or a lone `%`, rejects the config, as Envoy does.
//! - `rewrite.uri` is Envoy's `prefix_rewrite`: it replaces the part of the path the `uri` match
//!   covered (the prefix of a prefix match, the whole path of an exact or regex match, and `/`
//!   for a match without `uri`, which Istio makes prefix `/`), keeping the rest and the query.
//!   So prefix `/productpage` rewritten to `/` turns `/productpage/x` into `//x`, as in Envoy.
//!   `rewrite.uriRegex` replaces every match of the regex in the path (not the query), RE2's `\1`
//!   groups. A rewritten path leaves the original in `x-envoy-original-path` (Istio does not set
//!   the router's `suppress_envoy_headers`).
//! - Redirects build `Location` as Envoy's `RouteEntryImplBase::newPath`; direct responses answer
//!   with the status and a `text/plain` body; CORS follows Envoy's CORS filter with Istio's
//!   policy (see [`cors_preflight`] and [`cors_decorate_response`]).

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use regex::Regex;
use xds::{
    Cors, DirectResponse, HeaderOps, Headers, HttpRoute, Redirect, RedirectPort, StringMatch,
    UnmatchedPreflights,
};

use super::routes::{CompileError, Matcher, Picked, RequestView, Selected};

/// The largest direct response body Istio lets Envoy serve (`DefaultMaxDirectResponseBodySizeBytes`).
const MAX_DIRECT_RESPONSE_BODY: usize = 1024 * 1024;

/// `x-envoy-original-path`: the path (with query) before a rewrite.
pub const X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

/// What header formatters can read besides the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct FormatContext<'a> {
    /// The downstream peer (the local app, for the outbound side).
    pub downstream_remote: Option<SocketAddr>,
    /// The address the downstream connection was accepted on (its original destination).
    pub downstream_local: Option<SocketAddr>,
    /// The node's hostname (`%HOSTNAME%`).
    pub hostname: &'a str,
}

/// Why a request could not be edited as the route says.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The rewritten path is not a valid request target.
    #[error("rewritten path {0:?} is not a valid request target")]
    InvalidPath(String),
}

/// One piece of a header value.
#[derive(Debug)]
enum Segment {
    Literal(String),
    RemoteAddress {
        port: bool,
    },
    RemotePort,
    LocalAddress {
        port: bool,
    },
    LocalPort,
    Hostname,
    Protocol,
    /// `%REQ(a?b)%`: the first of these request headers that is present.
    Req(Vec<ReqName>),
}

/// A request header a `%REQ(...)%` reads.
#[derive(Debug)]
enum ReqName {
    Authority,
    Path,
    Method,
    Scheme,
    Name(HeaderName),
}

/// A configured header value.
#[derive(Debug)]
enum Value {
    /// No formatter: written as is (`None` when empty: Envoy writes no empty value).
    Fixed(Option<HeaderValue>),
    /// With formatters, each with an optional byte limit (`%CMD:N%`).
    Format(Vec<(Segment, Option<usize>)>),
}

impl Value {
    fn compile(routes: &str, field: &str, value: &str) -> Result<Value, CompileError> {
        let err = |reason: String| CompileError::new(routes, field.to_string(), reason);
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(err("header value has control characters".into()));
        }
        if !value.contains('%') {
            return Ok(Value::Fixed(if value.is_empty() {
                None
            } else {
                Some(HeaderValue::from_bytes(value.as_bytes()).map_err(|e| err(e.to_string()))?)
            }));
        }
        let mut segments: Vec<(Segment, Option<usize>)> = Vec::new();
        let mut literal = String::new();
        let mut rest = value;
        while let Some(at) = rest.find('%') {
            literal.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('%') {
                literal.push('%');
                rest = after;
                continue;
            }
            let end = rest.find('%').ok_or_else(|| {
                err(format!(
                    "un-escaped % in {value:?} (write %% for a literal %)"
                ))
            })?;
            let command = &rest[..end];
            rest = &rest[end + 1..];
            if !literal.is_empty() {
                segments.push((Segment::Literal(std::mem::take(&mut literal)), None));
            }
            segments.push(
                parse_command(command).map_err(|reason| err(format!("%{command}%: {reason}")))?,
            );
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push((Segment::Literal(literal), None));
        }
        Ok(Value::Format(segments))
    }

    /// The value for this request; `None` when it comes out empty (not written, as Envoy) or not
    /// a valid header value.
    fn render(
        &self,
        ctx: &FormatContext<'_>,
        req: Option<&http::request::Parts>,
    ) -> Option<HeaderValue> {
        let segments = match self {
            Value::Fixed(v) => return v.clone(),
            Value::Format(s) => s,
        };
        let mut out: Vec<u8> = Vec::new();
        let mut text = String::new();
        for (seg, limit) in segments {
            text.clear();
            let piece: &[u8] = match seg {
                Segment::Literal(s) => s.as_bytes(),
                Segment::RemoteAddress { port } => {
                    write_addr(&mut text, ctx.downstream_remote, *port);
                    text.as_bytes()
                }
                Segment::LocalAddress { port } => {
                    write_addr(&mut text, ctx.downstream_local, *port);
                    text.as_bytes()
                }
                Segment::RemotePort => {
                    if let Some(a) = ctx.downstream_remote {
                        let _ = write!(text, "{}", a.port());
                    }
                    text.as_bytes()
                }
                Segment::LocalPort => {
                    if let Some(a) = ctx.downstream_local {
                        let _ = write!(text, "{}", a.port());
                    }
                    text.as_bytes()
                }
                Segment::Hostname => ctx.hostname.as_bytes(),
                Segment::Protocol => match req.map(|r| r.version) {
                    Some(http::Version::HTTP_09) => b"HTTP/0.9",
                    Some(http::Version::HTTP_10) => b"HTTP/1.0",
                    Some(http::Version::HTTP_11) => b"HTTP/1.1",
                    Some(http::Version::HTTP_2) => b"HTTP/2",
                    Some(http::Version::HTTP_3) => b"HTTP/3",
                    _ => b"",
                },
                Segment::Req(names) => match req {
                    Some(r) => names.iter().find_map(|n| req_header(r, n)).unwrap_or(b""),
                    None => b"",
                },
            };
            let piece = match limit {
                Some(n) if piece.len() > *n => &piece[..*n],
                _ => piece,
            };
            out.extend_from_slice(piece);
        }
        if out.is_empty() {
            return None;
        }
        HeaderValue::from_bytes(&out).ok()
    }
}

fn write_addr(out: &mut String, addr: Option<SocketAddr>, with_port: bool) {
    match addr {
        Some(a) if with_port => {
            let _ = write!(out, "{a}");
        }
        Some(a) => {
            let _ = write!(out, "{}", a.ip());
        }
        None => {}
    }
}

/// The bytes of request header `name` (its first value), pseudo-headers from the request line.
fn req_header<'r>(req: &'r http::request::Parts, name: &ReqName) -> Option<&'r [u8]> {
    match name {
        ReqName::Authority => match req.uri.authority() {
            Some(a) => Some(a.as_str().as_bytes()),
            None => req.headers.get(header::HOST).map(|v| v.as_bytes()),
        },
        ReqName::Path => req.uri.path_and_query().map(|p| p.as_str().as_bytes()),
        ReqName::Method => Some(req.method.as_str().as_bytes()),
        ReqName::Scheme => req.uri.scheme_str().map(str::as_bytes),
        ReqName::Name(n) => req.headers.get(n).map(|v| v.as_bytes()),
    }
    .filter(|v| !v.is_empty())
}

/// Parses `CMD`, `CMD(args)`, `CMD:N` or `CMD(args):N` (what is between the `%`s).
fn parse_command(command: &str) -> Result<(Segment, Option<usize>), String> {
    let (body, limit) = match command.rsplit_once(':') {
        Some((b, n)) if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => {
            (b, Some(n.parse::<usize>().map_err(|e| e.to_string())?))
        }
        _ => (command, None),
    };
    let (name, args) = match body.split_once('(') {
        Some((n, a)) => (
            n,
            Some(a.strip_suffix(')').ok_or("unclosed argument list")?),
        ),
        None => (body, None),
    };
    let no_args = |seg: Segment| match args {
        None => Ok(seg),
        Some(_) => Err(format!("{name} takes no arguments")),
    };
    let seg = match name {
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            no_args(Segment::RemoteAddress { port: true })?
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_args(Segment::RemoteAddress { port: false })?
        }
        "DOWNSTREAM_REMOTE_PORT" | "DOWNSTREAM_DIRECT_REMOTE_PORT" => no_args(Segment::RemotePort)?,
        "DOWNSTREAM_LOCAL_ADDRESS" => no_args(Segment::LocalAddress { port: true })?,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => no_args(Segment::LocalAddress { port: false })?,
        "DOWNSTREAM_LOCAL_PORT" => no_args(Segment::LocalPort)?,
        "HOSTNAME" => no_args(Segment::Hostname)?,
        "PROTOCOL" => no_args(Segment::Protocol)?,
        "REQ" => {
            let args = args.ok_or("REQ needs a header name: %REQ(name)%")?;
            let names = args
                .split('?')
                .map(|n| {
                    Ok(match n.to_ascii_lowercase().as_str() {
                        ":authority" | "host" => ReqName::Authority,
                        ":path" => ReqName::Path,
                        ":method" => ReqName::Method,
                        ":scheme" => ReqName::Scheme,
                        lower => ReqName::Name(
                            HeaderName::from_bytes(lower.as_bytes())
                                .map_err(|_| format!("{n:?} is not a header name"))?,
                        ),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            if names.len() > 2 {
                return Err("REQ takes a header and at most one alternative".into());
            }
            Segment::Req(names)
        }
        _ => return Err("not a formatter the proxy supports".into()),
    };
    Ok((seg, limit))
}

/// One `HeaderParser`'s worth of edits.
#[derive(Debug, Default)]
struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Value)>,
    add: Vec<(HeaderName, Value)>,
}

/// `:authority` or `host`, which Istio turns into an authority rewrite.
fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

impl HeaderEdits {
    /// Compiles `ops`; returns the edits and the authority they set (`set` over `add`), for
    /// request edits.
    fn compile(
        routes: &str,
        field: &str,
        ops: &HeaderOps,
        request: bool,
    ) -> Result<(HeaderEdits, Option<HeaderValue>), CompileError> {
        let name = |f: String, n: &str| -> Result<HeaderName, CompileError> {
            if n.starts_with(':') || n.eq_ignore_ascii_case("host") {
                return Err(CompileError::new(
                    routes,
                    f,
                    "`:`-prefixed and host headers cannot be edited (`:authority`/`host` may be set or added on requests)",
                ));
            }
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| CompileError::new(routes, f, "not a valid header name"))
        };
        let list = |kind: &str, map: &std::collections::BTreeMap<String, String>| {
            let mut out = Vec::with_capacity(map.len());
            let mut authority = None;
            for (n, v) in map {
                let f = format!("{field}.{kind}.{n}");
                if request && is_authority(n) {
                    authority = Some(
                        HeaderValue::from_bytes(v.as_bytes())
                            .map_err(|e| CompileError::new(routes, f.clone(), e))?,
                    );
                    continue;
                }
                out.push((name(f.clone(), n)?, Value::compile(routes, &f, v)?));
            }
            Ok::<_, CompileError>((out, authority))
        };
        let (set, set_authority) = list("set", &ops.set)?;
        let (add, add_authority) = list("add", &ops.add)?;
        let remove = ops
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| name(format!("{field}.remove[{i}]"), n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            HeaderEdits { remove, set, add },
            set_authority.or(add_authority),
        ))
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// Header values computed for one parser: overwrites, then appends.
type Rendered = (
    Vec<(HeaderName, HeaderValue)>,
    Vec<(HeaderName, HeaderValue)>,
);

/// Envoy's `HeaderParser::evaluateHeaders` in three steps, so that a request can be read while
/// its own headers are edited: removals first ...
fn remove_all(parsers: &[&HeaderEdits; 2], headers: &mut HeaderMap) {
    for p in parsers {
        for n in &p.remove {
            headers.remove(n);
        }
    }
}

/// ... then every value computed (`req` is what `%REQ()%` reads) ...
fn render_all(
    parsers: &[&HeaderEdits; 2],
    ctx: &FormatContext<'_>,
    req: Option<&http::request::Parts>,
) -> Rendered {
    let render = |list: fn(&HeaderEdits) -> &Vec<(HeaderName, Value)>| {
        parsers
            .iter()
            .flat_map(|p| list(p).iter())
            .filter_map(|(n, v)| Some((n.clone(), v.render(ctx, req)?)))
            .collect::<Vec<_>>()
    };
    (render(|p| &p.set), render(|p| &p.add))
}

/// ... then the overwrites, then the appends.
fn write_all(headers: &mut HeaderMap, (set, add): Rendered) {
    for (n, v) in set {
        headers.insert(n, v);
    }
    for (n, v) in add {
        headers.append(n, v);
    }
}

/// The header parsers to run, in order, each made of up to two edit lists run as one: a single
/// destination's edits join the route's parser (after the route's); a weighted destination's
/// run as their own parser before the route's.
fn parsers<'a>(
    weighted: bool,
    route: &'a HeaderEdits,
    dest: Option<&'a HeaderEdits>,
) -> [[&'a HeaderEdits; 2]; 2] {
    match (weighted, dest) {
        (true, Some(d)) => [[d, &EMPTY_EDITS], [route, &EMPTY_EDITS]],
        (_, d) => [
            [route, d.unwrap_or(&EMPTY_EDITS)],
            [&EMPTY_EDITS, &EMPTY_EDITS],
        ],
    }
}

static EMPTY_EDITS: HeaderEdits = HeaderEdits {
    remove: Vec::new(),
    set: Vec::new(),
    add: Vec::new(),
};

/// A path rewrite.
#[derive(Debug)]
enum PathRewrite {
    /// `prefix_rewrite`.
    Prefix(String),
    /// `regex_rewrite`, the substitution in the `regex` crate's syntax.
    Regex { regex: Regex, replacement: String },
}

/// Converts an RE2 rewrite string (`\1` groups, `\\` a backslash) to the `regex` crate's
/// replacement syntax (`${1}`, `$$` a dollar), checking the groups exist.
fn re2_substitution(sub: &str, groups: usize) -> Result<String, String> {
    let mut out = String::with_capacity(sub.len() + 8);
    let mut chars = sub.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(d @ '0'..='9') => {
                    let n = d as usize - '0' as usize;
                    if n > groups {
                        return Err(format!(
                            "\\{n} names a group the regex does not have (it has {groups})"
                        ));
                    }
                    let _ = write!(out, "${{{n}}}");
                }
                Some('\\') => out.push('\\'),
                _ => return Err("a backslash must be followed by a digit or a backslash".into()),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A compiled redirect.
#[derive(Debug)]
struct CompiledRedirect {
    status: StatusCode,
    scheme: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    /// `:port` to write after the host (Envoy's `port_redirect`), `None` when Istio sets none.
    port: Option<u16>,
}

impl CompiledRedirect {
    fn compile(routes: &str, field: &str, r: &Redirect) -> Result<CompiledRedirect, CompileError> {
        let status = match r.code {
            0 | 301 => StatusCode::MOVED_PERMANENTLY,
            302 => StatusCode::FOUND,
            303 => StatusCode::SEE_OTHER,
            307 => StatusCode::TEMPORARY_REDIRECT,
            308 => StatusCode::PERMANENT_REDIRECT,
            c => {
                return Err(CompileError::new(
                    routes,
                    format!("{field}.code"),
                    format!("{c} is not a redirect status (301, 302, 303, 307, 308)"),
                ));
            }
        };
        let visible = |name: &str, v: &Option<String>| -> Result<Option<String>, CompileError> {
            match v.as_deref() {
                None | Some("") => Ok(None),
                Some(s) if s.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(s.to_string())),
                Some(_) => Err(CompileError::new(
                    routes,
                    format!("{field}.{name}"),
                    "must be visible ASCII without spaces",
                )),
            }
        };
        Ok(CompiledRedirect {
            status,
            scheme: visible("scheme", &r.scheme)?,
            authority: visible("authority", &r.authority)?,
            path: visible("uri", &r.uri)?,
            port: match r.port {
                Some(RedirectPort::Port(p)) => Some(p),
                // Envoy's default: no port_redirect.
                Some(RedirectPort::FromProtocolDefault) | None => None,
            },
        })
    }
}

/// A compiled CORS policy.
#[derive(Debug)]
struct CorsPolicy {
    origins: Vec<Matcher>,
    allow_methods: String,
    allow_headers: String,
    expose_headers: String,
    max_age: String,
    allow_credentials: bool,
    forward_not_matching_preflights: bool,
}

impl CorsPolicy {
    fn compile(routes: &str, field: &str, c: &Cors) -> Result<CorsPolicy, CompileError> {
        let mut origins = Vec::new();
        for (i, o) in c.allow_origins.iter().enumerate() {
            // Istio's ConvertToEnvoyMatches drops an empty StringMatch.
            if matches!(o, StringMatch::Present) {
                continue;
            }
            let f = format!("{field}.allowOrigins[{i}]");
            // An origin regex is compiled as written (no `*` shorthand for origins in Istio).
            origins.push(match o {
                StringMatch::Regex(r) => Matcher::Regex(
                    super::routes::full_match_regex(r)
                        .map_err(|e| CompileError::new(routes, format!("{f}.regex"), e))?,
                ),
                other => Matcher::compile(routes, &f, other)?,
            });
        }
        let joined = |name: &str, v: &[String]| -> Result<String, CompileError> {
            let s = v.join(",");
            HeaderValue::from_str(&s)
                .map(|_| s)
                .map_err(|e| CompileError::new(routes, format!("{field}.{name}"), e))
        };
        Ok(CorsPolicy {
            origins,
            allow_methods: joined("allowMethods", &c.allow_methods)?,
            allow_headers: joined("allowHeaders", &c.allow_headers)?,
            expose_headers: joined("exposeHeaders", &c.expose_headers)?,
            max_age: c.max_age_s.map(|s| s.to_string()).unwrap_or_default(),
            allow_credentials: c.allow_credentials.unwrap_or(false),
            forward_not_matching_preflights: c.unmatched_preflights == UnmatchedPreflights::Forward,
        })
    }

    /// Envoy's `isOriginAllowed`: a matcher that accepts `*` accepts every origin.
    fn allows(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }
}

/// The edits a destination adds.
#[derive(Debug, Default)]
struct DestinationActions {
    authority: Option<HeaderValue>,
    request: HeaderEdits,
    response: HeaderEdits,
}

/// Everything a route does besides choosing a destination, compiled.
#[derive(Debug, Default)]
pub struct RouteActions {
    path_rewrite: Option<PathRewrite>,
    /// Route-level authority: `rewrite.authority`, else the route's `:authority`/`host` edit.
    authority: Option<HeaderValue>,
    request: HeaderEdits,
    response: HeaderEdits,
    destinations: Vec<DestinationActions>,
    redirect: Option<CompiledRedirect>,
    direct: Option<(StatusCode, Option<Bytes>)>,
    cors: Option<CorsPolicy>,
}

fn compile_headers(
    routes: &str,
    field: &str,
    h: &Headers,
) -> Result<(HeaderEdits, HeaderEdits, Option<HeaderValue>), CompileError> {
    let (request, authority) =
        HeaderEdits::compile(routes, &format!("{field}.request"), &h.request, true)?;
    let (response, _) =
        HeaderEdits::compile(routes, &format!("{field}.response"), &h.response, false)?;
    Ok((request, response, authority))
}

impl RouteActions {
    /// Compiles route `r` (`field` is `http[i]`).
    pub(crate) fn compile(
        routes: &str,
        field: &str,
        r: &HttpRoute,
    ) -> Result<RouteActions, CompileError> {
        let (request, response, header_authority) =
            compile_headers(routes, &format!("{field}.headers"), &r.headers)?;
        let mut path_rewrite = None;
        let mut authority = header_authority;
        if let Some(rw) = &r.rewrite {
            if let Some(rr) = &rw.uri_regex {
                let f = format!("{field}.rewrite.uriRegex");
                let regex = super::routes::search_regex(&rr.regex)
                    .map_err(|e| CompileError::new(routes, format!("{f}.regex"), e))?;
                let groups = regex.captures_len() - 1;
                let replacement = re2_substitution(&rr.substitution, groups)
                    .map_err(|e| CompileError::new(routes, format!("{f}.substitution"), e))?;
                path_rewrite = Some(PathRewrite::Regex { regex, replacement });
            } else if let Some(uri) = rw.uri.as_deref().filter(|u| !u.is_empty()) {
                if uri.parse::<http::uri::PathAndQuery>().is_err()
                    || !uri.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(CompileError::new(
                        routes,
                        format!("{field}.rewrite.uri"),
                        "not a valid path",
                    ));
                }
                path_rewrite = Some(PathRewrite::Prefix(uri.to_string()));
            }
            if let Some(a) = rw.authority.as_deref().filter(|a| !a.is_empty()) {
                authority = Some(HeaderValue::from_bytes(a.as_bytes()).map_err(|e| {
                    CompileError::new(routes, format!("{field}.rewrite.authority"), e)
                })?);
            }
        }
        let destinations = r
            .route
            .iter()
            .enumerate()
            .map(|(j, d)| {
                let (request, response, authority) =
                    compile_headers(routes, &format!("{field}.route[{j}].headers"), &d.headers)?;
                Ok(DestinationActions {
                    authority,
                    request,
                    response,
                })
            })
            .collect::<Result<Vec<_>, CompileError>>()?;
        let redirect = r
            .redirect
            .as_ref()
            .map(|rd| CompiledRedirect::compile(routes, &format!("{field}.redirect"), rd))
            .transpose()?;
        let direct = r
            .direct_response
            .as_ref()
            .map(|d| compile_direct(routes, &format!("{field}.directResponse"), d))
            .transpose()?;
        let cors = r
            .cors
            .as_ref()
            .map(|c| CorsPolicy::compile(routes, &format!("{field}.cors"), c))
            .transpose()?;
        Ok(RouteActions {
            path_rewrite,
            authority,
            request,
            response,
            destinations,
            redirect,
            direct,
            cors,
        })
    }
}

fn compile_direct(
    routes: &str,
    field: &str,
    d: &DirectResponse,
) -> Result<(StatusCode, Option<Bytes>), CompileError> {
    let status = StatusCode::from_u16(d.status)
        .map_err(|e| CompileError::new(routes, format!("{field}.status"), e))?;
    let body = d.body.as_deref().filter(|b| !b.is_empty());
    if body.is_some_and(|b| b.len() > MAX_DIRECT_RESPONSE_BODY) {
        return Err(CompileError::new(
            routes,
            format!("{field}.body"),
            format!("longer than {MAX_DIRECT_RESPONSE_BODY} bytes"),
        ));
    }
    Ok((status, body.map(|b| Bytes::copy_from_slice(b.as_bytes()))))
}

/// Applies the route's request edits for the chosen destination to `parts`: header edits, the
/// authority rewrite, then the path rewrite (recording `x-envoy-original-path`). `dest` is what
/// [`Selected::pick_destination`] chose (`None` for a route without destinations). An error (a
/// regex substitution that makes an invalid request target) leaves the path as it was, after the
/// header edits; the request should then get a local 500 rather than go upstream.
pub fn edit_request(
    sel: &Selected<'_>,
    dest: Option<Picked<'_>>,
    parts: &mut http::request::Parts,
    ctx: &FormatContext<'_>,
) -> Result<(), ActionError> {
    let a = sel.actions();
    let d = dest.and_then(|p| a.destinations.get(p.index));
    for set in parsers(sel.is_weighted(), &a.request, d.map(|d| &d.request)) {
        if set.iter().all(|p| p.is_empty()) {
            continue;
        }
        remove_all(&set, &mut parts.headers);
        let rendered = render_all(&set, ctx, Some(&*parts));
        write_all(&mut parts.headers, rendered);
    }
    if let Some(auth) = a
        .authority
        .as_ref()
        .or(d.and_then(|d| d.authority.as_ref()))
    {
        set_authority(parts, auth);
    }
    if let Some(rw) = &a.path_rewrite {
        rewrite_path(parts, rw, sel.matched_len())?;
    }
    Ok(())
}

/// Applies the route's response edits for the chosen destination to `headers` (also for the
/// proxy's own replies on the route: redirect and direct response, as Envoy's local replies).
/// `req` is the request, for `%REQ()%`.
pub fn edit_response(
    sel: &Selected<'_>,
    dest: Option<Picked<'_>>,
    headers: &mut HeaderMap,
    ctx: &FormatContext<'_>,
    req: Option<&http::request::Parts>,
) {
    let a = sel.actions();
    let d = dest.and_then(|p| a.destinations.get(p.index));
    for set in parsers(sel.is_weighted(), &a.response, d.map(|d| &d.response)) {
        if set.iter().all(|p| p.is_empty()) {
            continue;
        }
        remove_all(&set, headers);
        let rendered = render_all(&set, ctx, req);
        write_all(headers, rendered);
    }
}

/// Replaces the authority: the URI's when it has one (HTTP/2, absolute-form), the `Host` header
/// when present, `Host` otherwise.
fn set_authority(parts: &mut http::request::Parts, auth: &HeaderValue) {
    let mut in_uri = false;
    if parts.uri.authority().is_some()
        && let Ok(a) = http::uri::Authority::try_from(auth.as_bytes())
    {
        let mut up = parts.uri.clone().into_parts();
        up.authority = Some(a);
        if let Ok(u) = Uri::from_parts(up) {
            parts.uri = u;
            in_uri = true;
        }
    }
    if !in_uri || parts.headers.contains_key(header::HOST) {
        parts.headers.insert(header::HOST, auth.clone());
    }
}

/// The path and query after rewrite `rw` of `path_and_query`, where the match covered the first
/// `matched_len` bytes of the path (Envoy's `currentUrlPathAfterRewriteWithMatchedPath`).
fn rewritten(rw: &PathRewrite, path: &str, query: Option<&str>, matched_len: usize) -> String {
    let mut out = match rw {
        PathRewrite::Prefix(prefix) => {
            let rest = path.get(matched_len..).unwrap_or("");
            let mut s = String::with_capacity(prefix.len() + rest.len());
            s.push_str(prefix);
            s.push_str(rest);
            s
        }
        PathRewrite::Regex { regex, replacement } => {
            regex.replace_all(path, replacement.as_str()).into_owned()
        }
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn rewrite_path(
    parts: &mut http::request::Parts,
    rw: &PathRewrite,
    matched_len: usize,
) -> Result<(), ActionError> {
    let original = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let new = rewritten(rw, parts.uri.path(), parts.uri.query(), matched_len);
    let pq = http::uri::PathAndQuery::try_from(new.as_str())
        .map_err(|_| ActionError::InvalidPath(new.clone()))?;
    let mut up = parts.uri.clone().into_parts();
    up.path_and_query = Some(pq);
    parts.uri = Uri::from_parts(up).map_err(|_| ActionError::InvalidPath(new))?;
    if let Ok(v) = HeaderValue::from_str(&original) {
        parts.headers.insert(X_ENVOY_ORIGINAL_PATH, v);
    }
    Ok(())
}

/// The redirect the route answers with, if it is a redirect route: the status and `Location`
/// (Envoy's `newPath`); the body is empty. `listener_tls` is whether the listener terminates TLS
/// (false for a sidecar), which decides the scheme Istio compares a redirect port with.
pub fn redirect(
    sel: &Selected<'_>,
    req: &RequestView<'_>,
    listener_tls: bool,
) -> Option<http::Response<()>> {
    let r = sel.actions().redirect.as_ref()?;
    let scheme = r.scheme.as_deref().unwrap_or(req.scheme);
    // Istio leaves out a port that is the default of the redirect's scheme (the listener's
    // when the redirect names none).
    let istio_scheme = r
        .scheme
        .as_deref()
        .unwrap_or(if listener_tls { "https" } else { "http" });
    let port = r.port.filter(|&p| {
        !((p == 80 && istio_scheme == "http") || (p == 443 && istio_scheme == "https"))
    });
    let host = match &r.authority {
        Some(a) => a.as_str(),
        None => {
            let forwarded_proto = req
                .headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(req.scheme);
            request_host(req.authority, scheme, port.is_some(), forwarded_proto)
        }
    };
    let mut location = String::with_capacity(64);
    let _ = write!(location, "{scheme}://{host}");
    if let Some(p) = port {
        let _ = write!(location, ":{p}");
    }
    let path_start = location.len();
    match &r.path {
        // A redirect path with a query replaces the request's query; without, keeps it.
        Some(p) if p.contains('?') => location.push_str(p),
        Some(p) => {
            location.push_str(p);
            if let Some(q) = req.query {
                let _ = write!(location, "?{q}");
            }
        }
        None => {
            location.push_str(req.path);
            if let Some(q) = req.query {
                let _ = write!(location, "?{q}");
            }
        }
    }
    if !location[path_start..].starts_with('/') {
        location.insert(path_start, '/');
    }
    let mut resp = http::Response::new(());
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            *resp.status_mut() = r.status;
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => {
            // Cannot happen with a validated config and a parsed request; never send a broken
            // Location.
            tracing::warn!(%location, "redirect Location is not a valid header value");
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    Some(resp)
}

/// The request's host for a redirect (Envoy's `processRequestHost`): its port is dropped when
/// the redirect sets one, or when the scheme changes and the port is the old scheme's default.
pub(crate) fn request_host<'r>(
    authority: &'r str,
    new_scheme: &str,
    new_port: bool,
    forwarded_proto: &str,
) -> &'r str {
    let host_end = if authority.starts_with('[') {
        authority.rfind("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    let Some(end) = host_end else {
        return authority;
    };
    let port = &authority[end..];
    let mut remove = new_port;
    if new_scheme != forwarded_proto {
        remove |= forwarded_proto == "https" && port == ":443";
        remove |= forwarded_proto == "http" && port == ":80";
    }
    if remove { &authority[..end] } else { authority }
}

/// The fixed response the route answers with, if it is a direct-response route: the status,
/// and the body with `content-type: text/plain` when there is one.
pub fn direct_response(sel: &Selected<'_>) -> Option<http::Response<Bytes>> {
    let (status, body) = sel.actions().direct.as_ref()?;
    let mut resp = http::Response::new(body.clone().unwrap_or_default());
    *resp.status_mut() = *status;
    if body.is_some() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    Some(resp)
}

/// The non-empty `Origin` of a request.
fn origin(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| !o.is_empty())
}

/// If the request is a CORS preflight the proxy answers (Envoy's CORS filter), the answer: 200
/// with no body. A preflight is `OPTIONS` with a non-empty `Origin` and
/// `Access-Control-Request-Method`. From an allowed origin it gets `access-control-allow-origin`
/// (the origin), `-allow-credentials`, `-allow-methods`, `-allow-headers` (`*` echoes the
/// request's) and `-max-age`; from another origin it is forwarded (`None`) under
/// `unmatchedPreflights: FORWARD` (the default), and answered the same way but without
/// `access-control-allow-origin` under `IGNORE`. `None` for everything else.
pub fn cors_preflight(
    sel: &Selected<'_>,
    parts: &http::request::Parts,
) -> Option<http::Response<()>> {
    let cors = sel.actions().cors.as_ref()?;
    let origin = origin(&parts.headers)?;
    if parts.method != http::Method::OPTIONS {
        return None;
    }
    let request_method = parts
        .headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .filter(|v| !v.is_empty())?;
    let allowed = cors.allows(origin);
    if !allowed && cors.forward_not_matching_preflights {
        return None;
    }
    let mut resp = http::Response::new(());
    let h = resp.headers_mut();
    if allowed && let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    let echo_or = |h: &mut HeaderMap, name: HeaderName, conf: &str, echo: Option<&HeaderValue>| {
        if conf.is_empty() {
            return;
        }
        let v = if conf == "*" {
            echo.cloned()
                .unwrap_or_else(|| HeaderValue::from_static(""))
        } else {
            match HeaderValue::from_str(conf) {
                Ok(v) => v,
                Err(_) => return,
            }
        };
        h.insert(name, v);
    };
    echo_or(
        h,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        &cors.allow_methods,
        Some(request_method),
    );
    echo_or(
        h,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        &cors.allow_headers,
        parts.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS),
    );
    if !cors.max_age.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.max_age)
    {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, v);
    }
    Some(resp)
}

/// Adds the CORS headers to the response of a request from an allowed origin (Envoy's CORS
/// filter on the way back): `access-control-allow-origin` (the origin),
/// `-allow-credentials: true` when allowed, and `-expose-headers`. Nothing for a route without
/// CORS, a request without `Origin`, or an origin not allowed.
pub fn cors_decorate_response(
    sel: &Selected<'_>,
    request_headers: &HeaderMap,
    response_headers: &mut HeaderMap,
) {
    let Some(cors) = sel.actions().cors.as_ref() else {
        return;
    };
    let Some(origin) = origin(request_headers).filter(|o| cors.allows(o)) else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(origin) {
        response_headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    if cors.allow_credentials {
        response_headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.expose_headers)
    {
        response_headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::outbound::routes::RouteTable;

    fn table(yaml: &str) -> RouteTable {
        let routes: xds::HttpRoutes = serde_saphyr::from_str(yaml).unwrap();
        RouteTable::compile(&routes).unwrap()
    }

    fn compile_err(yaml: &str) -> CompileError {
        let routes: xds::HttpRoutes = serde_saphyr::from_str(yaml).unwrap();
        RouteTable::compile(&routes).unwrap_err()
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) && !uri.starts_with("http")
        {
            b = b.header("host", "reviews:9080");
        }
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn ctx() -> FormatContext<'static> {
        FormatContext {
            downstream_remote: Some("10.0.0.5:41234".parse().unwrap()),
            downstream_local: Some("10.96.0.10:9080".parse().unwrap()),
            hostname: "reviews-v1-abc",
        }
    }

    /// Routes `p` through `t` and returns what `f` makes of the selection (and the request).
    fn with_selected<R>(
        t: &RouteTable,
        p: &http::request::Parts,
        f: impl FnOnce(Selected<'_>, &RequestView<'_>) -> R,
    ) -> R {
        let labels = BTreeMap::new();
        let view = RequestView::new(p, "http", 9080, &labels, "default");
        let sel = t.select(&view).expect("a route fits");
        f(sel, &view)
    }

    /// The request after the route's edits (destination picked with `rng`).
    fn edited(
        t: &RouteTable,
        uri: &str,
        headers: &[(&str, &str)],
        rng: u64,
    ) -> http::request::Parts {
        let mut p = parts(uri, headers);
        let view_parts = parts(uri, headers);
        with_selected(t, &view_parts, |sel, _| {
            let dest = sel.pick_destination(rng);
            edit_request(&sel, dest, &mut p, &ctx()).unwrap();
        });
        p
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    fn path(p: &http::request::Parts) -> &str {
        p.uri.path_and_query().unwrap().as_str()
    }

    #[test]
    fn prefix_rewrite_replaces_the_matched_prefix_and_keeps_the_query() {
        // Istio's example: /ratings → /v1/bookRatings.
        let t = table(
            r#"
name: t
hosts: [ratings]
http:
- match: [{uri: {prefix: /ratings}}]
  rewrite: {uri: /v1/bookRatings}
  route: [{host: ratings}]
- match: [{uri: {prefix: /productpage}}]
  rewrite: {uri: /}
  route: [{host: productpage}]
"#,
        );
        let p = edited(&t, "/ratings/2?x=1", &[], 0);
        assert_eq!(path(&p), "/v1/bookRatings/2?x=1");
        assert_eq!(
            values(&p.headers, "x-envoy-original-path"),
            ["/ratings/2?x=1"]
        );
        // Envoy's trailing-slash caveat: "/" replacing "/productpage" leaves the next "/".
        assert_eq!(path(&edited(&t, "/productpage/x", &[], 0)), "//x");
        assert_eq!(path(&edited(&t, "/productpage", &[], 0)), "/");
        assert_eq!(path(&edited(&t, "/productpagefoo", &[], 0)), "/foo");
    }

    #[test]
    fn uri_rewrite_of_exact_regex_and_no_uri_matches() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{uri: {exact: /old}}]
  rewrite: {uri: /new}
  route: [{host: a}]
- match: [{uri: {regex: "/re/[0-9]+"}}]
  rewrite: {uri: /fixed}
  route: [{host: a}]
- match: [{uri: {prefix: /API/}, ignoreUriCase: true}]
  rewrite: {uri: /v1/}
  route: [{host: a}]
- match: [{headers: {x-any: present}}]
  rewrite: {uri: /v2}
  route: [{host: a}]
- route: [{host: a}]
"#,
        );
        assert_eq!(path(&edited(&t, "/old?q=1", &[], 0)), "/new?q=1");
        assert_eq!(path(&edited(&t, "/re/42?q", &[], 0)), "/fixed?q");
        assert_eq!(path(&edited(&t, "/api/users", &[], 0)), "/v1/users");
        // Without a uri match Istio's prefix is "/": only it is replaced.
        assert_eq!(path(&edited(&t, "/foo", &[("x-any", "1")], 0)), "/v2foo");
        // No rewrite: no path change and no x-envoy-original-path.
        let p = edited(&t, "/other?q", &[], 0);
        assert_eq!(path(&p), "/other?q");
        assert!(p.headers.get("x-envoy-original-path").is_none());
    }

    #[test]
    fn regex_rewrite_substitutes_re2_groups_in_the_path_only() {
        // Envoy's documented example.
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{uri: {prefix: /service}}]
  rewrite:
    uriRegex: {regex: "^/service/([^/]+)(/.*)$", substitution: '\2/instance/\1'}
  route: [{host: a}]
- match: [{uri: {prefix: /aaa}}]
  rewrite:
    uriRegex: {regex: "a", substitution: 'b$\\'}
  route: [{host: a}]
"#,
        );
        let p = edited(&t, "/service/foo/v1/api?x=a/b", &[], 0);
        assert_eq!(path(&p), "/v1/api/instance/foo?x=a/b");
        assert_eq!(
            values(&p.headers, "x-envoy-original-path"),
            ["/service/foo/v1/api?x=a/b"]
        );
        // Every match is replaced; `$` is literal, `\\` a backslash.
        assert_eq!(path(&edited(&t, "/aaa", &[], 0)), "/b$\\b$\\b$\\");
        // A substitution that makes an invalid request target fails without touching it.
        let t = table(
            r#"
name: t
hosts: [h]
http:
- rewrite: {uriRegex: {regex: "x", substitution: "a b"}}
  route: [{host: a}]
"#,
        );
        let mut p = parts("/x", &[]);
        let view = parts("/x", &[]);
        with_selected(&t, &view, |sel, _| {
            assert!(matches!(
                edit_request(&sel, None, &mut p, &ctx()),
                Err(ActionError::InvalidPath(_))
            ));
        });
        assert_eq!(path(&p), "/x");
        assert!(p.headers.get("x-envoy-original-path").is_none());

        assert_eq!(re2_substitution(r"\2-\1\\$x", 2).unwrap(), r"${2}-${1}\$$x");
        assert_eq!(re2_substitution(r"\12", 1).unwrap(), "${1}2");
        assert!(re2_substitution(r"\3", 2).is_err());
        assert!(re2_substitution(r"\n", 2).is_err());
        assert!(re2_substitution("\\", 2).is_err());
        let e = compile_err(
            r#"
name: t
hosts: [h]
http:
- rewrite: {uriRegex: {regex: "/(a)", substitution: '\2'}}
  route: [{host: a}]
"#,
        );
        assert_eq!(e.field, "http[0].rewrite.uriRegex.substitution");
    }

    #[test]
    fn authority_rewrite_and_its_precedence() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{uri: {prefix: /rewrite}}]
  rewrite: {authority: new.example.com}
  headers: {request: {set: {":authority": from-headers}}}
  route: [{host: a, headers: {request: {set: {host: from-destination}}}}]
- match: [{uri: {prefix: /headers}}]
  headers: {request: {add: {host: added}, set: {":authority": set}}}
  route: [{host: a}]
- match: [{uri: {prefix: /dest}}]
  route: [{host: a, headers: {request: {set: {":authority": from-destination}}}}]
"#,
        );
        let p = edited(&t, "/rewrite", &[], 0);
        assert_eq!(values(&p.headers, "host"), ["new.example.com"]);
        assert_eq!(
            values(&edited(&t, "/headers", &[], 0).headers, "host"),
            ["set"]
        );
        assert_eq!(
            values(&edited(&t, "/dest", &[], 0).headers, "host"),
            ["from-destination"]
        );
        // HTTP/2 (authority in the URI): the URI's authority changes, no Host is added.
        let p = edited(&t, "http://reviews:9080/rewrite", &[], 0);
        assert_eq!(p.uri.authority().unwrap().as_str(), "new.example.com");
        assert!(p.headers.get("host").is_none());
    }

    const HEADER_ORDER: &str = r#"
name: t
hosts: [h]
http:
- match: [{uri: {prefix: /single}}]
  headers:
    request: {set: {x-who: route}, remove: [x-gone]}
  route:
  - host: a
    headers:
      request: {set: {x-who: destination}, add: {x-gone: back}}
- match: [{uri: {prefix: /weighted}}]
  headers:
    request: {set: {x-who: route}, remove: [x-gone]}
  route:
  - host: a
    weight: 100
    headers:
      request: {set: {x-who: destination}, add: {x-gone: back}}
  - host: b
    weight: 0
"#;

    #[test]
    fn single_destination_edits_join_the_route_parser_after_the_route() {
        let t = table(HEADER_ORDER);
        let p = edited(&t, "/single", &[("x-gone", "old"), ("x-who", "client")], 0);
        // One parser: the destination's overwrite comes last; removals run before adds.
        assert_eq!(values(&p.headers, "x-who"), ["destination"]);
        assert_eq!(values(&p.headers, "x-gone"), ["back"]);
    }

    #[test]
    fn weighted_destination_edits_run_before_the_route_parser() {
        let t = table(HEADER_ORDER);
        let p = edited(
            &t,
            "/weighted",
            &[("x-gone", "old"), ("x-who", "client")],
            0,
        );
        // The destination's parser first, then the route's: its set wins, its remove removes
        // what the destination added.
        assert_eq!(values(&p.headers, "x-who"), ["route"]);
        assert!(p.headers.get("x-gone").is_none());
    }

    #[test]
    fn set_overwrites_add_appends_and_empty_values_are_not_written() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- headers:
    request:
      set: {x-set: one, x-both: set, x-empty: ""}
      add: {x-add: two, x-both: added}
      remove: [x-remove]
    response:
      set: {x-resp: r}
      add: {x-resp-add: ra}
      remove: [server]
  route: [{host: a}]
"#,
        );
        let p = edited(
            &t,
            "/",
            &[
                ("x-set", "a"),
                ("x-set", "b"),
                ("x-add", "zero"),
                ("x-remove", "r"),
                ("x-empty", "kept"),
            ],
            0,
        );
        assert_eq!(values(&p.headers, "x-set"), ["one"]);
        assert_eq!(values(&p.headers, "x-add"), ["zero", "two"]);
        assert_eq!(values(&p.headers, "x-both"), ["set", "added"]);
        assert!(p.headers.get("x-remove").is_none());
        // An empty value is not written, so the request's own stays.
        assert_eq!(values(&p.headers, "x-empty"), ["kept"]);

        let req = parts("/", &[]);
        let mut resp = HeaderMap::new();
        resp.insert("server", HeaderValue::from_static("app"));
        resp.insert("x-resp-add", HeaderValue::from_static("app"));
        with_selected(&t, &req, |sel, _| {
            edit_response(&sel, sel.pick_destination(0), &mut resp, &ctx(), Some(&req));
        });
        assert!(resp.get("server").is_none());
        assert_eq!(values(&resp, "x-resp"), ["r"]);
        assert_eq!(values(&resp, "x-resp-add"), ["app", "ra"]);
    }

    #[test]
    fn weighted_response_edits_follow_the_same_order() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- headers: {response: {set: {x-who: route}}}
  route:
  - {host: a, weight: 50, headers: {response: {set: {x-who: a}}}}
  - {host: b, weight: 50, headers: {response: {set: {x-only: b}}}}
- route: [{host: a}]
"#,
        );
        let req = parts("/", &[]);
        for (rng, only) in [(0u64, None), (50, Some("b"))] {
            let mut resp = HeaderMap::new();
            with_selected(&t, &req, |sel, _| {
                edit_response(&sel, sel.pick_destination(rng), &mut resp, &ctx(), None);
            });
            assert_eq!(values(&resp, "x-who"), ["route"]);
            assert_eq!(resp.get("x-only").map(|v| v.to_str().unwrap()), only);
        }
    }

    #[test]
    fn formatters() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- headers:
    request:
      set:
        x-remote: "%DOWNSTREAM_REMOTE_ADDRESS%"
        x-remote-ip: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
        x-local: "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_PORT%"
        x-host: "node=%HOSTNAME%"
        x-percent: "100%%"
        x-proto: "%PROTOCOL%"
        x-req: "%REQ(x-missing?x-user)%"
        x-authority: "%REQ(:authority)%"
        x-short: "%REQ(x-user):3%"
        x-nothing: "%REQ(x-missing)%"
        x-removed: "%REQ(x-drop)%"
      remove: [x-drop]
  route: [{host: a}]
"#,
        );
        let p = edited(
            &t,
            "/",
            &[("x-user", "jason"), ("x-drop", "d"), ("x-nothing", "kept")],
            0,
        );
        let one = |n: &str| values(&p.headers, n);
        assert_eq!(one("x-remote"), ["10.0.0.5:41234"]);
        assert_eq!(one("x-remote-ip"), ["10.0.0.5"]);
        assert_eq!(one("x-local"), ["10.96.0.10:9080 9080"]);
        assert_eq!(one("x-host"), ["node=reviews-v1-abc"]);
        assert_eq!(one("x-percent"), ["100%"]);
        assert_eq!(one("x-proto"), ["HTTP/1.1"]);
        assert_eq!(one("x-req"), ["jason"]);
        assert_eq!(one("x-authority"), ["reviews:9080"]);
        assert_eq!(one("x-short"), ["jas"]);
        // Empty results are not written; removals run before values are computed.
        assert_eq!(one("x-nothing"), ["kept"]);
        assert!(p.headers.get("x-removed").is_none());
    }

    #[test]
    fn bad_header_edits_reject_the_config() {
        for (ops, field) in [
            (
                "{request: {set: {x: '%START_TIME%'}}}",
                "http[0].headers.request.set.x",
            ),
            (
                "{request: {set: {x: '100%'}}}",
                "http[0].headers.request.set.x",
            ),
            (
                "{request: {add: {x: 'a %HOSTNAME'}}}",
                "http[0].headers.request.add.x",
            ),
            (
                "{request: {set: {':path': /x}}}",
                "http[0].headers.request.set.:path",
            ),
            (
                "{request: {remove: [host]}}",
                "http[0].headers.request.remove[0]",
            ),
            (
                "{request: {set: {'bad name': x}}}",
                "http[0].headers.request.set.bad name",
            ),
            (
                "{response: {set: {host: x}}}",
                "http[0].headers.response.set.host",
            ),
            (
                "{request: {set: {x: \"a\\nb\"}}}",
                "http[0].headers.request.set.x",
            ),
            (
                "{request: {set: {x: '%REQ()%'}}}",
                "http[0].headers.request.set.x",
            ),
        ] {
            let e = compile_err(&format!(
                "name: t\nhosts: [h]\nhttp:\n- headers: {ops}\n  route: [{{host: a}}]\n"
            ));
            assert_eq!(e.field, field, "{ops}: {e}");
        }
        let e = compile_err(
            "name: t\nhosts: [h]\nhttp:\n- route: [{host: a, headers: {request: {set: {x: '%X%'}}}}]\n",
        );
        assert_eq!(e.field, "http[0].route[0].headers.request.set.x");
    }

    fn location(t: &RouteTable, uri: &str, headers: &[(&str, &str)]) -> (u16, Option<String>) {
        let p = parts(uri, headers);
        with_selected(t, &p, |sel, view| {
            let r = redirect(&sel, view, false).expect("a redirect route");
            assert!(direct_response(&sel).is_none());
            (
                r.status().as_u16(),
                r.headers()
                    .get("location")
                    .map(|v| v.to_str().unwrap().to_string()),
            )
        })
    }

    #[test]
    fn redirect_location_as_envoy_builds_it() {
        // Istio's example: /v1/getProductRatings → newratings /v1/bookRatings.
        let t = table(
            r#"
name: t
hosts: [ratings]
http:
- match: [{uri: {exact: /v1/getProductRatings}}]
  redirect: {uri: /v1/bookRatings, authority: newratings.default.svc.cluster.local}
- match: [{uri: {prefix: /query}}]
  redirect: {uri: "/new?a=b", code: 302}
- match: [{uri: {prefix: /port}}]
  redirect: {port: {port: 8080}, code: 307}
- match: [{uri: {prefix: /p80}}]
  redirect: {port: {port: 80}, code: 308}
- match: [{uri: {prefix: /https}}]
  redirect: {scheme: https, code: 303}
- match: [{uri: {prefix: /default}}]
  redirect: {port: fromProtocolDefault}
- match: [{uri: {prefix: /rel}}]
  redirect: {uri: "relative"}
"#,
        );
        assert_eq!(
            location(&t, "/v1/getProductRatings", &[]),
            (
                301,
                Some("http://newratings.default.svc.cluster.local/v1/bookRatings".into())
            )
        );
        assert_eq!(
            location(&t, "/v1/getProductRatings?u=1", &[]),
            (
                301,
                Some("http://newratings.default.svc.cluster.local/v1/bookRatings?u=1".into())
            )
        );
        // A redirect uri with a query replaces the request's.
        assert_eq!(
            location(&t, "/query?x=1", &[]),
            (302, Some("http://reviews:9080/new?a=b".into()))
        );
        // A redirect port replaces the request's.
        assert_eq!(
            location(&t, "/port/x?y", &[]),
            (307, Some("http://reviews:8080/port/x?y".into()))
        );
        // Istio drops port 80 for http; the request's port then stays (Envoy keeps the host).
        assert_eq!(
            location(&t, "/p80", &[]),
            (308, Some("http://reviews:9080/p80".into()))
        );
        // A scheme change drops the old scheme's default port only.
        assert_eq!(
            location(&t, "/https", &[("host", "shop:80")]),
            (303, Some("https://shop/https".into()))
        );
        assert_eq!(
            location(&t, "/https", &[("host", "shop:9080")]),
            (303, Some("https://shop:9080/https".into()))
        );
        assert_eq!(
            location(
                &t,
                "/https",
                &[("host", "shop:443"), ("x-forwarded-proto", "https")]
            ),
            (303, Some("https://shop:443/https".into()))
        );
        assert_eq!(
            location(&t, "/https", &[("host", "[::1]:80")]),
            (303, Some("https://[::1]/https".into()))
        );
        assert_eq!(
            location(&t, "/default", &[]),
            (301, Some("http://reviews:9080/default".into()))
        );
        assert_eq!(
            location(&t, "/rel", &[]),
            (301, Some("http://reviews:9080/relative".into()))
        );

        let e = compile_err("name: t\nhosts: [h]\nhttp:\n- redirect: {uri: /x, code: 304}\n");
        assert_eq!(e.field, "http[0].redirect.code");
    }

    #[test]
    fn redirect_port_443_with_https_is_left_out() {
        let t =
            table("name: t\nhosts: [h]\nhttp:\n- redirect: {scheme: https, port: {port: 443}}\n");
        assert_eq!(
            location(&t, "/x", &[("host", "shop:9080")]),
            (301, Some("https://shop:9080/x".into()))
        );
        let t =
            table("name: t\nhosts: [h]\nhttp:\n- redirect: {scheme: https, port: {port: 8443}}\n");
        assert_eq!(
            location(&t, "/x", &[("host", "shop:9080")]),
            (301, Some("https://shop:8443/x".into()))
        );
    }

    #[test]
    fn direct_response_status_and_text_body() {
        let t = table(
            r#"
name: t
hosts: [h]
http:
- match: [{uri: {prefix: /body}}]
  directResponse: {status: 503, body: "unknown path"}
- match: [{uri: {prefix: /empty}}]
  directResponse: {status: 204, body: ""}
- match: [{uri: {prefix: /none}}]
  directResponse: {status: 200}
- route: [{host: a}]
"#,
        );
        let get = |uri: &str| {
            let p = parts(uri, &[]);
            with_selected(&t, &p, |sel, view| {
                assert!(redirect(&sel, view, false).is_none());
                assert!(sel.pick_destination(0).is_none());
                direct_response(&sel).unwrap()
            })
        };
        let r = get("/body");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers().get("content-type").unwrap(), "text/plain");
        assert_eq!(r.body().as_ref(), b"unknown path");
        for uri in ["/empty", "/none"] {
            let r = get(uri);
            assert!(r.headers().get("content-type").is_none());
            assert!(r.body().is_empty());
        }
        let p = parts("/other", &[]);
        with_selected(&t, &p, |sel, _| assert!(direct_response(&sel).is_none()));
    }

    // Istio's CORS example, with the headers it documents.
    const CORS: &str = r#"
name: t
hosts: [ratings]
http:
- match: [{uri: {prefix: /ignore}}]
  route: [{host: ratings}]
  cors:
    allowOrigins: [{exact: "https://example.com"}]
    allowMethods: [POST, GET]
    allowHeaders: ["*"]
    unmatchedPreflights: IGNORE
- match: [{uri: {prefix: /star}}]
  route: [{host: ratings}]
  cors:
    allowOrigins: [{exact: "*"}]
    allowMethods: ["*"]
    allowCredentials: true
- match: [{uri: {prefix: /nocors}}]
  route: [{host: ratings}]
- route: [{host: ratings}]
  cors:
    allowOrigins: [{exact: "https://example.com"}, {regex: "https://.*\\.example\\.org"}]
    allowMethods: [POST, GET]
    allowCredentials: false
    allowHeaders: [X-Foo-Bar]
    exposeHeaders: [X-Exposed, X-Other]
    maxAgeS: 86400
"#;

    fn preflight(
        uri: &str,
        origin: &str,
        method: &str,
        extra: &[(&str, &str)],
    ) -> Option<http::Response<()>> {
        let t = table(CORS);
        let mut h = vec![
            ("origin", origin),
            ("access-control-request-method", method),
        ];
        h.extend_from_slice(extra);
        h.retain(|(_, v)| !v.is_empty());
        let mut p = parts(uri, &h);
        p.method = http::Method::OPTIONS;
        with_selected(&t, &p, |sel, _| cors_preflight(&sel, &p))
    }

    #[test]
    fn cors_preflight_from_an_allowed_origin_is_answered() {
        let r = preflight("/ratings", "https://example.com", "POST", &[]).unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://example.com");
        assert_eq!(h["access-control-allow-methods"], "POST,GET");
        assert_eq!(h["access-control-allow-headers"], "X-Foo-Bar");
        assert_eq!(h["access-control-max-age"], "86400");
        assert!(h.get("access-control-allow-credentials").is_none());
        assert!(h.get("access-control-expose-headers").is_none());
        let r = preflight("/ratings", "https://shop.example.org", "GET", &[]).unwrap();
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://shop.example.org"
        );
    }

    #[test]
    fn cors_preflight_from_another_origin_is_forwarded_or_ignored() {
        // FORWARD (the default): the upstream sees it.
        assert!(preflight("/ratings", "https://evil.com", "POST", &[]).is_none());
        // The regex must match the whole origin.
        assert!(preflight("/ratings", "https://a.example.org.evil.com", "POST", &[]).is_none());
        // IGNORE: answered by the proxy, without access-control-allow-origin.
        let r = preflight(
            "/ignore",
            "https://evil.com",
            "POST",
            &[("access-control-request-headers", "x-a")],
        )
        .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("access-control-allow-origin").is_none());
        assert_eq!(r.headers()["access-control-allow-methods"], "POST,GET");
        assert_eq!(r.headers()["access-control-allow-headers"], "x-a");
    }

    #[test]
    fn not_a_preflight_is_not_answered() {
        // No Access-Control-Request-Method, no Origin, or not OPTIONS.
        assert!(preflight("/ratings", "https://example.com", "", &[]).is_none());
        assert!(preflight("/ratings", "", "POST", &[]).is_none());
        assert!(preflight("/nocors", "https://example.com", "POST", &[]).is_none());
        let t = table(CORS);
        let p = parts(
            "/ratings",
            &[
                ("origin", "https://example.com"),
                ("access-control-request-method", "POST"),
            ],
        );
        with_selected(&t, &p, |sel, _| assert!(cors_preflight(&sel, &p).is_none()));
    }

    #[test]
    fn cors_star_origin_and_methods() {
        let r = preflight("/star", "https://anyone.net", "PATCH", &[]).unwrap();
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://anyone.net");
        assert_eq!(h["access-control-allow-methods"], "PATCH");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert!(h.get("access-control-max-age").is_none());
    }

    #[test]
    fn cors_simple_request_responses_are_decorated_for_allowed_origins() {
        let t = table(CORS);
        let decorate = |uri: &str, origin: &str| {
            let p = parts(uri, &[("origin", origin)]);
            let mut resp = HeaderMap::new();
            with_selected(&t, &p, |sel, _| {
                cors_decorate_response(&sel, &p.headers, &mut resp)
            });
            resp
        };
        let h = decorate("/ratings", "https://example.com");
        assert_eq!(h["access-control-allow-origin"], "https://example.com");
        assert_eq!(h["access-control-expose-headers"], "X-Exposed,X-Other");
        assert!(h.get("access-control-allow-credentials").is_none());
        assert!(decorate("/ratings", "https://evil.com").is_empty());
        assert!(decorate("/nocors", "https://example.com").is_empty());
        let h = decorate("/star", "https://x.y");
        assert_eq!(h["access-control-allow-origin"], "https://x.y");
        assert_eq!(h["access-control-allow-credentials"], "true");
        let p = parts("/ratings", &[]);
        let mut resp = HeaderMap::new();
        with_selected(&t, &p, |sel, _| {
            cors_decorate_response(&sel, &p.headers, &mut resp)
        });
        assert!(resp.is_empty());
    }
}
