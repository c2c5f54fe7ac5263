//! Access log: Istio's JSON and TEXT formats, written by one background thread.
//!
//! A format is compiled once from Envoy's command operators (`%START_TIME%`, `%REQ(:METHOD)%`,
//! `%RESPONSE_FLAGS%`...). Istio's defaults are just two such formats: [`DEFAULT_TEXT_FORMAT`]
//! (Istio's `EnvoyTextLogFormat`) and the 24-key JSON object of Istio's `EnvoyJSONLogFormatIstio`;
//! MeshConfig's `accessLogFormat` goes through the same compiler.
//!
//! # JSON: key order and value types
//!
//! Istio configures Envoy with `log_format.json_format` (a `SubstitutionFormatString`), which in
//! Envoy 1.2x renders values *typed*: `%BYTES_RECEIVED%`, `%BYTES_SENT%`, `%DURATION%` and
//! `%RESPONSE_CODE%` are JSON numbers, an unavailable value is `null` (not `"-"`), header values
//! are strings (so `upstream_service_time`, taken from the `x-envoy-upstream-service-time`
//! response header, is the string `"2"`), and `%RESPONSE_FLAGS%` is `"-"` when empty because
//! Envoy's formatter itself returns `-` for "no flags". `protocol` is `"-"` on TCP, and
//! `response_code` is `0` there. That is what [`JsonValues::Typed`] prints.
//! Istio 1.5 (the seed's blog post, our reference scenario) used the untyped `json_format`, where
//! every value is a string and an empty one is `"-"`. [`JsonValues::Strings`] reproduces it and is
//! the default: the seed's log lines are the contract users compare against, field by field, and
//! a string-typed line is what their log pipelines built on that output parse.
//!
//! Keys are printed in lexicographic order. Envoy builds the object from a protobuf `Struct`,
//! whose map Envoy has serialised with sorted keys (the seed's `jq .` output shows exactly that
//! order) and which Envoy ≥ 1.30 sorts on request (`json_format_options.sort_properties`);
//! sorting is the only order that is both Istio-compatible and stable across releases.
//!
//! `start_time` is RFC 3339 UTC with milliseconds (`2020-03-07T12:00:58.425Z`), as Envoy's
//! default `%START_TIME%`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;

use super::flags::ResponseFlags;
use super::record::{RequestRecord, TcpRecord};
use super::{AccessLogOptions, AccessLogSink, TelemetryError};

/// Istio's default TEXT format and JSON keys, shared with discovery (which sends them for a
/// Telemetry API provider that sets no format).
pub use xds::telemetry::{
    ISTIO_JSON_LOG_FORMAT as DEFAULT_JSON_FIELDS, ISTIO_TEXT_LOG_FORMAT as DEFAULT_TEXT_FORMAT,
};

/// MeshConfig `accessLogEncoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogEncoding {
    /// One JSON object per line.
    Json,
    /// Envoy's text format (Istio's default encoding).
    #[default]
    Text,
}

impl std::str::FromStr for AccessLogEncoding {
    type Err = FormatError;
    /// `JSON` or `TEXT`, as MeshConfig spells them (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "JSON" => Ok(AccessLogEncoding::Json),
            "TEXT" | "" => Ok(AccessLogEncoding::Text),
            _ => Err(FormatError(format!(
                "accessLogEncoding {s:?}: expected JSON or TEXT"
            ))),
        }
    }
}

/// How JSON values are typed. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsonValues {
    /// Istio with Envoy 1.2x: numbers for counts and durations, `null` when unavailable.
    Typed,
    /// Istio ≤ 1.8 (the seed): every value a string, `"-"` when unavailable.
    #[default]
    Strings,
}

/// An access-log format that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

/// One record on its way to the writer thread.
///
/// By value, not boxed: the bounded channel's slots are preallocated, so queueing a record is a
/// copy into a slot instead of an allocation per request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Entry {
    Http(RequestRecord),
    Tcp(TcpRecord),
}

/// A compiled access-log format.
#[derive(Debug, Clone)]
pub struct Format {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Text(Vec<Piece>),
    Json {
        /// Each key as it is printed (`"key":`, escaped once here), and its value.
        fields: Vec<(String, JsonField)>,
        values: JsonValues,
    },
}

#[derive(Debug, Clone)]
enum JsonField {
    Template(Vec<Piece>),
    /// A non-string value in a custom JSON format, printed as given.
    Literal(String),
}

#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Op(Op, Option<usize>),
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    StartTime(Option<String>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    RequestedServerName,
    RouteName,
    GrpcStatus,
    /// `%REQ(A?B)%`: the first present header; only the headers the record carries.
    Req(Vec<String>),
    /// `%RESP(X)%`: only `x-envoy-upstream-service-time` is known.
    Resp(Vec<String>),
    /// An operator we do not record: prints as unavailable.
    Unavailable,
}

impl Op {
    /// Envoy renders these as numbers in typed JSON.
    fn is_numeric(&self) -> bool {
        matches!(
            self,
            Op::ResponseCode | Op::BytesReceived | Op::BytesSent | Op::Duration
        )
    }
}

impl Format {
    /// Istio's default format for `encoding`.
    pub fn istio_default(encoding: AccessLogEncoding, values: JsonValues) -> Format {
        match encoding {
            AccessLogEncoding::Text => {
                Format::text(DEFAULT_TEXT_FORMAT).expect("default TEXT format compiles")
            }
            AccessLogEncoding::Json => {
                let mut fields: Vec<(String, JsonField)> = DEFAULT_JSON_FIELDS
                    .iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            JsonField::Template(compile(v).expect("default JSON format compiles")),
                        )
                    })
                    .collect();
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                let fields = fields.into_iter().map(|(k, f)| (json_key(&k), f)).collect();
                Format {
                    kind: Kind::Json { fields, values },
                }
            }
        }
    }

    /// MeshConfig semantics: `format` (if non-empty) for `encoding`, else Istio's default.
    pub fn from_mesh_config(
        encoding: AccessLogEncoding,
        format: Option<&str>,
        values: JsonValues,
    ) -> Result<Format, FormatError> {
        match format.map(str::trim) {
            None | Some("") => Ok(Format::istio_default(encoding, values)),
            Some(f) => match encoding {
                AccessLogEncoding::Text => {
                    // Envoy adds no newline; Istio's custom formats usually end with one. Ensure it.
                    let mut f = format.unwrap_or_default().to_owned();
                    if !f.ends_with('\n') {
                        f.push('\n');
                    }
                    Format::text(&f)
                }
                AccessLogEncoding::Json => Format::json(f, values),
            },
        }
    }

    /// A TEXT format from an Envoy format string.
    pub fn text(format: &str) -> Result<Format, FormatError> {
        Ok(Format {
            kind: Kind::Text(compile(format)?),
        })
    }

    /// A JSON format from a JSON object of key → Envoy format string.
    pub fn json(object: &str, values: JsonValues) -> Result<Format, FormatError> {
        let parsed: serde_json::Value = serde_json::from_str(object)
            .map_err(|e| FormatError(format!("JSON access-log format: {e}")))?;
        let serde_json::Value::Object(map) = parsed else {
            return Err(FormatError(
                "JSON access-log format must be an object of key to format".into(),
            ));
        };
        // serde_json's map is sorted by key: the same order as the default.
        let fields = map.into_iter().map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, Ok(s)),
            other => (k, Err(other.to_string())),
        });
        Format::json_object(fields, values)
    }

    /// A JSON format from keys and their Envoy format strings (the Telemetry API provider's
    /// `logFormat.labels`); no keys: Istio's default. Keys are printed sorted, as always.
    pub fn json_labels(
        labels: &[(String, String)],
        values: JsonValues,
    ) -> Result<Format, FormatError> {
        let mut sorted: Vec<_> = labels
            .iter()
            .map(|(k, v)| (k.clone(), Ok(v.clone())))
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        sorted.dedup_by(|a, b| a.0 == b.0);
        Format::json_object(sorted.into_iter(), values)
    }

    /// The one JSON compiler: each key with its format string (`Ok`) or a literal JSON value
    /// printed as given (`Err`), in the order given.
    fn json_object(
        fields: impl ExactSizeIterator<Item = (String, Result<String, String>)>,
        values: JsonValues,
    ) -> Result<Format, FormatError> {
        if fields.len() == 0 {
            return Ok(Format::istio_default(AccessLogEncoding::Json, values));
        }
        let mut compiled = Vec::with_capacity(fields.len());
        for (k, v) in fields {
            let field = match v {
                Ok(s) => JsonField::Template(
                    compile(&s).map_err(|e| FormatError(format!("key {k:?}: {}", e.0)))?,
                ),
                Err(literal) => JsonField::Literal(literal),
            };
            compiled.push((json_key(&k), field));
        }
        Ok(Format {
            kind: Kind::Json {
                fields: compiled,
                values,
            },
        })
    }

    /// Appends one line (with its trailing newline) for `entry` to `out`.
    pub(crate) fn write(&self, entry: &Entry, out: &mut String) {
        match &self.kind {
            Kind::Text(pieces) => {
                for p in pieces {
                    match p {
                        Piece::Lit(s) => out.push_str(s),
                        Piece::Op(op, max) => write_text(out, eval(op, entry), *max),
                    }
                }
            }
            Kind::Json { fields, values } => {
                out.push('{');
                for (i, (key, field)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(key);
                    match field {
                        JsonField::Literal(l) => out.push_str(l),
                        JsonField::Template(pieces) => {
                            write_json_value(out, pieces, entry, *values)
                        }
                    }
                }
                out.push_str("}\n");
            }
        }
    }

    /// Adds the request headers this format prints (`%REQ(X-DEBUG)%`) to `refs`, so that a
    /// Telemetry API log captures them; MeshConfig's log prints only those a record keeps.
    pub(crate) fn note_request_headers(&self, refs: &mut super::expr::HeaderRefs) {
        let templates: Vec<&[Piece]> = match &self.kind {
            Kind::Text(pieces) => vec![pieces],
            Kind::Json { fields, .. } => fields
                .iter()
                .filter_map(|(_, f)| match f {
                    JsonField::Template(pieces) => Some(pieces.as_slice()),
                    JsonField::Literal(_) => None,
                })
                .collect(),
        };
        for piece in templates.into_iter().flatten() {
            if let Piece::Op(Op::Req(names), _) = piece {
                for n in names.iter().filter(|n| *n != "x-envoy-original-path") {
                    refs.note(n);
                }
            }
        }
    }

    /// One line for a request, as a `String` (for tests and debugging).
    pub fn format_request(&self, record: &RequestRecord) -> String {
        let mut s = String::new();
        self.write(&Entry::Http(record.clone()), &mut s);
        s
    }

    /// One line for a TCP connection, as a `String`.
    pub fn format_tcp(&self, record: &TcpRecord) -> String {
        let mut s = String::new();
        self.write(&Entry::Tcp(record.clone()), &mut s);
        s
    }
}

/// Compiles an Envoy format string into literal and operator pieces.
fn compile(format: &str) -> Result<Vec<Piece>, FormatError> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = format;
    while let Some(start) = rest.find('%') {
        lit.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        // `%%` is not special in Envoy, but an operator must start with an upper-case letter.
        let Some(op_len) = operator_len(after) else {
            lit.push('%');
            rest = after;
            continue;
        };
        let (op, max) = parse_operator(&after[..op_len])?;
        if !lit.is_empty() {
            pieces.push(Piece::Lit(std::mem::take(&mut lit)));
        }
        pieces.push(Piece::Op(op, max));
        rest = &after[op_len + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

/// Length of the operator text after an opening `%`, up to (not including) its closing `%`.
fn operator_len(s: &str) -> Option<usize> {
    if !s.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b'%' if depth == 0 => return Some(i),
            b'\n' => return None,
            _ => {}
        }
    }
    None
}

fn parse_operator(text: &str) -> Result<(Op, Option<usize>), FormatError> {
    // NAME, NAME(ARG), NAME(ARG):LEN
    let (head, max) = match text.rfind(')') {
        Some(close) => {
            let tail = &text[close + 1..];
            let max = match tail.strip_prefix(':') {
                Some(n) => Some(
                    n.parse::<usize>()
                        .map_err(|_| FormatError(format!("%{text}%: bad length")))?,
                ),
                None if tail.is_empty() => None,
                None => return Err(FormatError(format!("%{text}%: unexpected {tail:?}"))),
            };
            (&text[..=close], max)
        }
        None => (text, None),
    };
    let (name, arg) = match head.find('(') {
        Some(open) if head.ends_with(')') => (&head[..open], Some(&head[open + 1..head.len() - 1])),
        Some(_) => return Err(FormatError(format!("%{text}%: unbalanced parenthesis"))),
        None => (head, None),
    };
    let headers = |arg: Option<&str>| -> Result<Vec<String>, FormatError> {
        let arg = arg
            .filter(|a| !a.is_empty())
            .ok_or_else(|| FormatError(format!("%{text}%: needs a header name")))?;
        Ok(arg
            .split('?')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect())
    };
    let op = match name {
        "START_TIME" => Op::StartTime(arg.filter(|a| !a.is_empty()).map(str::to_owned)),
        "PROTOCOL" => Op::Protocol,
        "RESPONSE_CODE" => Op::ResponseCode,
        "RESPONSE_FLAGS" => Op::ResponseFlags,
        "RESPONSE_CODE_DETAILS" => Op::ResponseCodeDetails,
        "CONNECTION_TERMINATION_DETAILS" => Op::ConnectionTerminationDetails,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
        "BYTES_RECEIVED" => Op::BytesReceived,
        "BYTES_SENT" => Op::BytesSent,
        "DURATION" => Op::Duration,
        "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => Op::UpstreamHost,
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Op::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Op::UpstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalAddressWithoutPort,
        "DOWNSTREAM_LOCAL_PORT" => Op::DownstreamLocalPort,
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            Op::DownstreamRemoteAddress
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => Op::DownstreamRemoteAddressWithoutPort,
        "REQUESTED_SERVER_NAME" => Op::RequestedServerName,
        "ROUTE_NAME" => Op::RouteName,
        "GRPC_STATUS" | "GRPC_STATUS_NUMBER" => Op::GrpcStatus,
        "REQ" | "REQUEST_HEADER" => Op::Req(headers(arg)?),
        "RESP" | "RESPONSE_HEADER" => Op::Resp(headers(arg)?),
        // Known Envoy operators we do not track: accepted, printed as unavailable.
        "TRAILER"
        | "RESPONSE_TRAILER"
        | "DYNAMIC_METADATA"
        | "FILTER_STATE"
        | "UPSTREAM_FILTER_STATE"
        | "CLUSTER_METADATA"
        | "UPSTREAM_METADATA"
        | "HOSTNAME"
        | "ENVIRONMENT"
        | "REQUEST_DURATION"
        | "RESPONSE_DURATION"
        | "RESPONSE_TX_DURATION"
        | "REQUEST_TX_DURATION"
        | "UPSTREAM_PROTOCOL"
        | "VIRTUAL_CLUSTER_NAME"
        | "DOWNSTREAM_PEER_URI_SAN"
        | "DOWNSTREAM_LOCAL_URI_SAN"
        | "DOWNSTREAM_TLS_VERSION"
        | "DOWNSTREAM_TLS_CIPHER"
        | "CONNECTION_ID"
        | "UPSTREAM_REQUEST_ATTEMPT_COUNT"
        | "REQ_WITHOUT_QUERY"
        | "TRACE_ID" => Op::Unavailable,
        other => return Err(FormatError(format!("unknown command operator %{other}%"))),
    };
    Ok((op, max))
}

/// An operator's value for one record.
enum Val<'a> {
    None,
    Str(Cow<'a, str>),
    Num(u64),
    Flags(ResponseFlags),
    Time(SystemTime, Option<&'a str>),
    Addr(SocketAddr),
}

fn header(v: &Option<HeaderValue>) -> Val<'_> {
    match v {
        Some(v) => header_value(v),
        None => Val::None,
    }
}

fn header_value(v: &HeaderValue) -> Val<'_> {
    // Visible ASCII, almost always: borrowed without the lossy decoder's pass.
    Val::Str(match v.to_str() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(v.as_bytes()),
    })
}

fn opt_str<S: AsRef<str>>(v: &Option<S>) -> Val<'_> {
    match v {
        Some(s) => Val::Str(Cow::Borrowed(s.as_ref())),
        None => Val::None,
    }
}

fn opt_addr(v: &Option<SocketAddr>) -> Val<'static> {
    v.map(Val::Addr).unwrap_or(Val::None)
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

fn eval<'a>(op: &'a Op, entry: &'a Entry) -> Val<'a> {
    match entry {
        Entry::Http(r) => eval_http(op, r),
        Entry::Tcp(t) => eval_tcp(op, t),
    }
}

fn eval_http<'a>(op: &'a Op, r: &'a RequestRecord) -> Val<'a> {
    match op {
        Op::StartTime(f) => Val::Time(r.start_time, f.as_deref()),
        Op::Protocol => match r.protocol {
            Some(v) => Val::Str(Cow::Borrowed(protocol_name(v))),
            None => Val::Str(Cow::Borrowed("-")),
        },
        Op::ResponseCode => Val::Num(u64::from(r.response_code)),
        Op::ResponseFlags => Val::Flags(r.response_flags),
        Op::ResponseCodeDetails => opt_str(&r.response_code_details),
        Op::ConnectionTerminationDetails => opt_str(&r.connection_termination_details),
        Op::UpstreamTransportFailureReason => opt_str(&r.upstream_transport_failure_reason),
        Op::BytesReceived => Val::Num(r.bytes_received),
        Op::BytesSent => Val::Num(r.bytes_sent),
        Op::Duration => Val::Num(millis(r.duration)),
        Op::UpstreamHost => opt_addr(&r.upstream_host),
        Op::UpstreamCluster => opt_str(&r.upstream_cluster),
        Op::UpstreamLocalAddress => opt_addr(&r.upstream_local_address),
        Op::DownstreamLocalAddress => opt_addr(&r.downstream_local_address),
        Op::DownstreamLocalAddressWithoutPort => ip_only(r.downstream_local_address),
        Op::DownstreamLocalPort => r
            .downstream_local_address
            .map(|a| Val::Num(u64::from(a.port())))
            .unwrap_or(Val::None),
        Op::DownstreamRemoteAddress => opt_addr(&r.downstream_remote_address),
        Op::DownstreamRemoteAddressWithoutPort => ip_only(r.downstream_remote_address),
        Op::RequestedServerName => opt_str(&r.requested_server_name),
        Op::RouteName => opt_str(&r.route_name),
        Op::GrpcStatus => r
            .grpc_status
            .map(|s| Val::Num(u64::from(s)))
            .unwrap_or(Val::None),
        Op::Req(names) => names
            .iter()
            .map(|n| request_header(r, n))
            .find(|v| !matches!(v, Val::None))
            .unwrap_or(Val::None),
        Op::Resp(names) => {
            if names.iter().any(|n| n == "x-envoy-upstream-service-time") {
                r.upstream_service_time
                    .map(|d| Val::Num(millis(d)))
                    .unwrap_or(Val::None)
            } else {
                Val::None
            }
        }
        Op::Unavailable => Val::None,
    }
}

fn request_header<'a>(r: &'a RequestRecord, name: &str) -> Val<'a> {
    match name {
        ":method" => r
            .method
            .as_ref()
            .map(|m| Val::Str(Cow::Borrowed(m.as_str())))
            .unwrap_or(Val::None),
        ":path" | "x-envoy-original-path" => r
            .path
            .as_ref()
            .map(|p| Val::Str(Cow::Borrowed(p.as_str())))
            .unwrap_or(Val::None),
        ":authority" | "host" => header(&r.authority),
        "user-agent" => header(&r.user_agent),
        "x-request-id" => header(&r.request_id),
        "x-forwarded-for" => header(&r.x_forwarded_for),
        // Captured for the Telemetry API's logs that name it ([`Format::note_request_headers`]).
        _ => r
            .headers
            .as_ref()
            .and_then(|c| c.0.iter().find(|(n, _)| n.as_str() == name))
            .map_or(Val::None, |(_, v)| header_value(v)),
    }
}

fn eval_tcp<'a>(op: &'a Op, t: &'a TcpRecord) -> Val<'a> {
    match op {
        Op::StartTime(f) => Val::Time(t.start_time, f.as_deref()),
        Op::Protocol => Val::Str(Cow::Borrowed("-")),
        Op::ResponseCode => Val::Num(0),
        Op::ResponseFlags => Val::Flags(t.response_flags),
        Op::ConnectionTerminationDetails => opt_str(&t.connection_termination_details),
        Op::UpstreamTransportFailureReason => opt_str(&t.upstream_transport_failure_reason),
        Op::BytesReceived => Val::Num(t.bytes_received),
        Op::BytesSent => Val::Num(t.bytes_sent),
        Op::Duration => Val::Num(millis(t.duration)),
        Op::UpstreamHost => opt_addr(&t.upstream_host),
        Op::UpstreamCluster => opt_str(&t.upstream_cluster),
        Op::UpstreamLocalAddress => opt_addr(&t.upstream_local_address),
        Op::DownstreamLocalAddress => opt_addr(&t.downstream_local_address),
        Op::DownstreamLocalAddressWithoutPort => ip_only(t.downstream_local_address),
        Op::DownstreamLocalPort => t
            .downstream_local_address
            .map(|a| Val::Num(u64::from(a.port())))
            .unwrap_or(Val::None),
        Op::DownstreamRemoteAddress => opt_addr(&t.downstream_remote_address),
        Op::DownstreamRemoteAddressWithoutPort => ip_only(t.downstream_remote_address),
        Op::RequestedServerName => opt_str(&t.requested_server_name),
        Op::RouteName => opt_str(&t.route_name),
        Op::ResponseCodeDetails => t
            .response_code_details
            .map_or(Val::None, |d| Val::Str(Cow::Borrowed(d))),
        Op::GrpcStatus | Op::Req(_) | Op::Resp(_) | Op::Unavailable => Val::None,
    }
}

fn ip_only(a: Option<SocketAddr>) -> Val<'static> {
    a.map(|a| Val::Str(Cow::Owned(a.ip().to_string())))
        .unwrap_or(Val::None)
}

/// Envoy's names: `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`, `HTTP/3`.
pub fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

/// Writes `v` as TEXT: `-` when unavailable or empty, truncated to `max` characters.
fn write_text(out: &mut String, v: Val<'_>, max: Option<usize>) {
    let start = out.len();
    match v {
        Val::None => out.push('-'),
        Val::Str(s) if s.is_empty() => out.push('-'),
        Val::Str(s) => out.push_str(&s),
        Val::Num(n) => push_u64(out, n),
        Val::Flags(f) => {
            let _ = f.write_to(out);
        }
        Val::Time(t, f) => write_time(out, t, f),
        Val::Addr(a) => push_addr(out, a),
    }
    if let Some(max) = max {
        truncate_chars(out, start, max);
    }
}

/// `{n}` without the formatting machinery (a line has several numbers).
fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits, pushed as bytes-sized chars after one reservation (`extend` over chars and
    // `str::from_utf8` of the slice both cost more than the digits).
    out.reserve(buf.len() - i);
    for &d in &buf[i..] {
        out.push(char::from(d));
    }
}

/// `{addr}`: IPv4 by hand (a line has up to four addresses), IPv6 through `Display`.
fn push_addr(out: &mut String, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            push_ipv4(out, *v4.ip());
            out.push(':');
            push_u64(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

fn push_ipv4(out: &mut String, ip: std::net::Ipv4Addr) {
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_u64(out, u64::from(o));
    }
}

fn truncate_chars(out: &mut String, start: usize, max: usize) {
    if let Some((idx, _)) = out[start..].char_indices().nth(max) {
        out.truncate(start + idx);
    }
}

fn write_json_value(out: &mut String, pieces: &[Piece], entry: &Entry, values: JsonValues) {
    // A lone operator keeps its type; anything else is a string, as Envoy does.
    if let [Piece::Op(op, max)] = pieces {
        let v = eval(op, entry);
        match (values, v) {
            (JsonValues::Typed, Val::None) => out.push_str("null"),
            (JsonValues::Typed, Val::Num(n)) if op.is_numeric() => push_u64(out, n),
            // Numbers, addresses, flags and the default time have nothing to escape.
            (
                _,
                v @ (Val::None | Val::Num(_) | Val::Addr(_) | Val::Flags(_) | Val::Time(_, None)),
            ) => {
                out.push('"');
                write_text(out, v, *max);
                out.push('"');
            }
            (_, v) => json_string_with(out, |out| write_text(out, v, *max)),
        }
        return;
    }
    json_string_with(out, |out| {
        for p in pieces {
            match p {
                Piece::Lit(l) => out.push_str(l),
                Piece::Op(op, max) => write_text(out, eval(op, entry), *max),
            }
        }
    });
}

/// Appends what `write` appends as a JSON string literal: written in place, and escaped only
/// when it has to be (a header value with a quote, say), so a line costs no allocation per field.
fn json_string_with(out: &mut String, write: impl FnOnce(&mut String)) {
    out.push('"');
    let start = out.len();
    write(out);
    if out.as_bytes()[start..].iter().any(|&b| needs_escape(b)) {
        let raw = out.split_off(start);
        escape_into(out, &raw);
    }
    out.push('"');
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// `"key":`, as a JSON object prints `key`.
fn json_key(key: &str) -> String {
    let mut s = String::with_capacity(key.len() + 3);
    json_string(&mut s, key);
    s.push(':');
    s
}

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    escape_into(out, s);
    out.push('"');
}

/// Appends `s` with JSON string escapes, copying the runs that need none whole.
fn escape_into(out: &mut String, s: &str) {
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.push_str(&s[run..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{:04x}", c);
            }
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
}

/// `%START_TIME%`: RFC 3339 UTC with milliseconds; `%START_TIME(fmt)%`: a strftime subset
/// (`%Y %m %d %H %M %S %s %z %f %3f %6f %9f %%`).
fn write_time(out: &mut String, t: SystemTime, format: Option<&str>) {
    thread_local! {
        /// The last second printed: lines come in time order, so most reuse it.
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let Some(format) = format else {
        SECOND.with_borrow_mut(|(secs, text)| {
            if *secs != since.as_secs() {
                let dt = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(since.as_secs());
                text.clear();
                let _ = write!(
                    text,
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                    dt.year(),
                    u8::from(dt.month()),
                    dt.day(),
                    dt.hour(),
                    dt.minute(),
                    dt.second(),
                );
                *secs = since.as_secs();
            }
            out.push_str(text);
        });
        let ms = since.subsec_millis();
        out.push('.');
        out.push(char::from(b'0' + (ms / 100) as u8));
        out.push(char::from(b'0' + (ms / 10 % 10) as u8));
        out.push(char::from(b'0' + (ms % 10) as u8));
        out.push('Z');
        return;
    };
    let dt = time::OffsetDateTime::UNIX_EPOCH + since;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut digits = None;
        if let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
            digits = Some(d as usize);
            chars.next();
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{:04}", dt.year()),
            Some('m') => write!(out, "{:02}", u8::from(dt.month())),
            Some('d') => write!(out, "{:02}", dt.day()),
            Some('H') => write!(out, "{:02}", dt.hour()),
            Some('M') => write!(out, "{:02}", dt.minute()),
            Some('S') => write!(out, "{:02}", dt.second()),
            Some('s') => write!(out, "{}", since.as_secs()),
            Some('z') => write!(out, "+0000"),
            Some('f') => {
                let n = digits.unwrap_or(9).clamp(1, 9);
                let nanos = format!("{:09}", since.subsec_nanos());
                write!(out, "{}", &nanos[..n])
            }
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
}

#[allow(clippy::large_enum_variant)] // see `Entry`
enum Msg {
    /// A record for the MeshConfig log (`None`) or for the Telemetry API's logs of its side.
    Entry(Entry, Option<Arc<LogSet>>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Where lines go, opened once and shared by every log that names it. Only the writer thread
/// writes to it, so its lock is never contended.
pub(crate) struct SharedSink {
    /// The path (`/dev/stdout`, a file) or `writer` for a test's writer.
    pub(crate) name: String,
    out: Mutex<Box<dyn Write + Send>>,
    /// A write failed and was reported; reported again only after one succeeds.
    failed: AtomicBool,
}

impl SharedSink {
    /// Opens `sink`: stdout, a file for append, or the writer given.
    pub(crate) fn open(sink: AccessLogSink) -> Result<Arc<SharedSink>, TelemetryError> {
        let (name, out): (String, Box<dyn Write + Send>) = match sink {
            AccessLogSink::Stdout => ("/dev/stdout".to_owned(), Box::new(std::io::stdout())),
            AccessLogSink::File(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|source| TelemetryError::File {
                        path: path.clone(),
                        source,
                    })?;
                (path.display().to_string(), Box::new(file))
            }
            AccessLogSink::Writer(w) => ("writer".to_owned(), w),
        };
        Ok(Arc::new(SharedSink {
            name,
            out: Mutex::new(out),
            failed: AtomicBool::new(false),
        }))
    }

    fn write(&self, buf: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        match out.write_all(buf).and_then(|()| out.flush()) {
            Err(e) if !self.failed.swap(true, Ordering::Relaxed) => {
                tracing::warn!(sink = %self.name, "access log: write failed, lines are being lost: {e}");
            }
            Ok(()) => self.failed.store(false, Ordering::Relaxed),
            Err(_) => {}
        }
    }
}

impl std::fmt::Debug for SharedSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedSink").field(&self.name).finish()
    }
}

/// One Telemetry API access log, compiled: its line format, its CEL filter (evaluated on the
/// writer thread, never on the request path) and its sink.
#[derive(Debug)]
pub(crate) struct CompiledLog {
    pub(crate) format: Format,
    pub(crate) filter: Option<super::expr::Expr>,
    pub(crate) sink: Arc<SharedSink>,
    /// The request headers the filter reads and the format prints.
    pub(crate) headers: super::expr::HeaderRefs,
}

impl CompiledLog {
    /// Appends the line for `entry` to `out` when the filter lets it through.
    fn write(&self, entry: &Entry, out: &mut String) {
        let passes = self
            .filter
            .as_ref()
            .is_none_or(|f| f.matches(entry.subject()));
        if passes {
            self.format.write(entry, out);
        }
    }
}

/// The Telemetry API's logs of one side; empty: no log on that side.
#[derive(Debug, Default)]
pub(crate) struct LogSet(pub(crate) Vec<Arc<CompiledLog>>);

impl Entry {
    /// What a CEL expression reads.
    fn subject(&self) -> super::expr::Subject<'_> {
        match self {
            Entry::Http(r) => super::expr::Subject::Http(r),
            Entry::Tcp(t) => super::expr::Subject::Tcp(t),
        }
    }
}

/// The data path's end of the access log: a bounded queue to the writer thread.
///
/// The queue is an unbounded channel with the bound kept beside it in `queued`: a bounded
/// (array) channel would hold `capacity` records' worth of slots for good (a record is several
/// hundred bytes), while this one holds memory for what is queued now. Clones share the queue.
#[derive(Clone)]
pub(crate) struct AccessLogger {
    tx: Sender<Msg>,
    /// Records sent and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    dropped: Counter,
}

impl AccessLogger {
    /// Compiles MeshConfig's format, opens its sink and starts the writer thread; returns the
    /// sink too, for Telemetry API logs that name the same path.
    pub(crate) fn start(
        opts: AccessLogOptions,
        dropped: Counter,
    ) -> Result<(AccessLogger, Arc<SharedSink>), TelemetryError> {
        let format =
            Format::from_mesh_config(opts.encoding, opts.format.as_deref(), opts.json_values)?;
        let sink = SharedSink::open(opts.sink)?;
        let logger =
            AccessLogger::spawn(Some((format, sink.clone())), opts.queue_capacity, dropped)?;
        Ok((logger, sink))
    }

    /// Starts a writer thread; `default` is the format and sink of records sent without a
    /// [`LogSet`] (none: such records are not written).
    pub(crate) fn spawn(
        default: Option<(Format, Arc<SharedSink>)>,
        queue_capacity: usize,
        dropped: Counter,
    ) -> Result<AccessLogger, TelemetryError> {
        let (tx, rx) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer_loop(rx, &taken, default))
            .map_err(TelemetryError::Thread)?;
        Ok(AccessLogger {
            tx,
            queued,
            capacity: queue_capacity.max(1),
            dropped,
        })
    }

    /// Queues a record for the MeshConfig log (`logs: None`) or for `logs`; drops and counts
    /// it if the queue is full. Never blocks.
    pub(crate) fn push(&self, entry: Entry, logs: Option<Arc<LogSet>>) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        if self.tx.send(Msg::Entry(entry, logs)).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
        }
    }

    /// Asks the writer to confirm once everything queued so far is written and flushed.
    pub(crate) fn request_flush(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (done, rx) = tokio::sync::oneshot::channel();
        // Not counted against the bound: a flush always gets in line. If the writer is gone,
        // `done` is dropped and the caller sees it.
        let _ = self.tx.send(Msg::Flush(done));
        rx
    }
}

impl std::fmt::Debug for AccessLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogger")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Bytes of formatted lines gathered before one write.
const BATCH_BYTES: usize = 64 * 1024;

/// After a write that emptied the queue, how long the writer lets lines gather before it looks
/// again. A record sent to a parked writer costs the sending worker a wake-up (a syscall and a
/// context switch on a small machine); under load this makes it one per interval instead of one
/// per request. Envoy flushes its access log once a second.
const BATCH_WAIT: Duration = Duration::from_millis(10);

/// Lines gathered per sink until the batch is written.
#[derive(Default)]
struct Batch {
    bufs: Vec<(Arc<SharedSink>, String)>,
    bytes: usize,
}

impl Batch {
    /// Formats into `sink`'s buffer with `write`.
    fn add(&mut self, sink: &Arc<SharedSink>, write: impl FnOnce(&mut String)) {
        let i = match self.bufs.iter().position(|(s, _)| Arc::ptr_eq(s, sink)) {
            Some(i) => i,
            None => {
                self.bufs.push((sink.clone(), String::with_capacity(4096)));
                self.bufs.len() - 1
            }
        };
        let buf = &mut self.bufs[i].1;
        let before = buf.len();
        write(buf);
        self.bytes += buf.len() - before;
    }

    fn write_out(&mut self) {
        for (sink, buf) in &mut self.bufs {
            if !buf.is_empty() {
                sink.write(buf.as_bytes());
                buf.clear();
            }
        }
        // Sinks no config holds any more are closed.
        self.bufs.retain(|(s, _)| Arc::strong_count(s) > 1);
        self.bytes = 0;
    }
}

fn writer_loop(
    rx: Receiver<Msg>,
    queued: &AtomicUsize,
    default: Option<(Format, Arc<SharedSink>)>,
) {
    let mut batch = Batch::default();
    let mut waiters = Vec::new();
    // Ends when every sender (every Telemetry clone) is gone and the queue is empty.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Entry(e, None) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    if let Some((format, sink)) = &default {
                        batch.add(sink, |out| format.write(&e, out));
                    }
                }
                Msg::Entry(e, Some(logs)) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    for log in &logs.0 {
                        batch.add(&log.sink, |out| log.write(&e, out));
                    }
                }
                Msg::Flush(done) => waiters.push(done),
            }
            if batch.bytes < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let full = batch.bytes >= BATCH_BYTES;
        batch.write_out();
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
        if !full {
            std::thread::sleep(BATCH_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::telemetry::record::{MetricLabels, Reporter};

    /// The seed's outbound request (ubuntu → httpbin-service), as our record.
    fn seed_record() -> RequestRecord {
        let start = UNIX_EPOCH + Duration::from_millis(1_583_582_458_425); // 2020-03-07T12:00:58.425Z
        let mut r = RequestRecord::new(start, Arc::new(MetricLabels::unknown(Reporter::Source)));
        r.route_name = Some("default".into());
        r.method = Some(http::Method::GET);
        r.path = Some(http::uri::PathAndQuery::from_static("/headers"));
        r.protocol = Some(http::Version::HTTP_11);
        r.response_code = 200;
        r.response_code_details = Some("via_upstream".into());
        r.bytes_received = 0;
        r.bytes_sent = 521;
        r.duration = Duration::from_millis(2);
        r.upstream_service_time = Some(Duration::from_millis(2));
        r.user_agent = Some(HeaderValue::from_static("curl/7.58.0"));
        r.request_id = Some(HeaderValue::from_static(
            "a93e2afa-cc27-4bb7-897c-5282c754d382",
        ));
        r.authority = Some(HeaderValue::from_static("httpbin-service"));
        r.upstream_host = Some("172.17.0.8:80".parse().unwrap());
        r.upstream_cluster = Some("outbound|80||httpbin-service.default.svc.cluster.local".into());
        r.upstream_local_address = Some("172.17.0.9:43422".parse().unwrap());
        r.downstream_local_address = Some("10.109.118.31:80".parse().unwrap());
        r.downstream_remote_address = Some("172.17.0.9:52178".parse().unwrap());
        r
    }

    fn keys(line: &str) -> Vec<String> {
        // serde_json's map is sorted; read the order from the text instead.
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut found: Vec<(usize, String)> = v
            .as_object()
            .unwrap()
            .keys()
            .map(|k| (line.find(&format!("\"{k}\":")).unwrap(), k.clone()))
            .collect();
        found.sort();
        found.into_iter().map(|(_, k)| k).collect()
    }

    #[test]
    fn json_typed_has_istio_24_keys_sorted_with_types() {
        let f = Format::istio_default(AccessLogEncoding::Json, JsonValues::Typed);
        let line = f.format_request(&seed_record());
        assert!(line.ends_with("}\n") && !line[..line.len() - 1].contains('\n'));
        let k = keys(&line);
        assert_eq!(k.len(), 24);
        let mut sorted = k.clone();
        sorted.sort();
        assert_eq!(k, sorted, "keys in lexicographic order");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let expect = serde_json::json!({
            "authority": "httpbin-service",
            "bytes_received": 0,
            "bytes_sent": 521,
            "connection_termination_details": null,
            "downstream_local_address": "10.109.118.31:80",
            "downstream_remote_address": "172.17.0.9:52178",
            "duration": 2,
            "method": "GET",
            "path": "/headers",
            "protocol": "HTTP/1.1",
            "request_id": "a93e2afa-cc27-4bb7-897c-5282c754d382",
            "requested_server_name": null,
            "response_code": 200,
            "response_code_details": "via_upstream",
            "response_flags": "-",
            "route_name": "default",
            "start_time": "2020-03-07T12:00:58.425Z",
            "upstream_cluster": "outbound|80||httpbin-service.default.svc.cluster.local",
            "upstream_host": "172.17.0.8:80",
            "upstream_local_address": "172.17.0.9:43422",
            "upstream_service_time": "2",
            "upstream_transport_failure_reason": null,
            "user_agent": "curl/7.58.0",
            "x_forwarded_for": null
        });
        assert_eq!(v, expect);
    }

    #[test]
    fn json_strings_matches_the_seed() {
        let f = Format::istio_default(AccessLogEncoding::Json, JsonValues::Strings);
        let v: serde_json::Value = serde_json::from_str(&f.format_request(&seed_record())).unwrap();
        let obj = v.as_object().unwrap();
        assert!(obj.values().all(|v| v.is_string()));
        assert_eq!(v["bytes_sent"], "521");
        assert_eq!(v["response_code"], "200");
        assert_eq!(v["x_forwarded_for"], "-");
        assert_eq!(v["requested_server_name"], "-");
        assert_eq!(v["upstream_transport_failure_reason"], "-");
        assert_eq!(v["start_time"], "2020-03-07T12:00:58.425Z");
    }

    #[test]
    fn json_inbound_with_sni_and_flags() {
        let mut r = seed_record();
        r.requested_server_name =
            Some("outbound_.80_._.httpbin-service.default.svc.cluster.local".into());
        r.upstream_cluster = Some("inbound|80||".into());
        r.response_code = 503;
        r.response_flags = ResponseFlags::UPSTREAM_CONNECTION_FAILURE
            | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
        r.upstream_transport_failure_reason = Some("delayed connect error: 111".into());
        r.x_forwarded_for = Some(HeaderValue::from_static("10.0.0.1"));
        r.user_agent = Some(HeaderValue::from_static("evil \"agent\"\t\\"));
        let f = Format::istio_default(AccessLogEncoding::Json, JsonValues::Typed);
        let v: serde_json::Value = serde_json::from_str(&f.format_request(&r)).unwrap();
        assert_eq!(
            v["requested_server_name"],
            "outbound_.80_._.httpbin-service.default.svc.cluster.local"
        );
        assert_eq!(v["upstream_cluster"], "inbound|80||");
        assert_eq!(v["response_code"], 503);
        assert_eq!(v["response_flags"], "UF,URX");
        assert_eq!(
            v["upstream_transport_failure_reason"],
            "delayed connect error: 111"
        );
        assert_eq!(v["x_forwarded_for"], "10.0.0.1");
        assert_eq!(v["user_agent"], "evil \"agent\"\t\\");
    }

    #[test]
    fn json_tcp_connection() {
        let mut t = TcpRecord::new(
            UNIX_EPOCH + Duration::from_millis(1_583_582_458_425),
            Reporter::Source,
        );
        t.bytes_received = 12;
        t.bytes_sent = 34;
        t.duration = Duration::from_millis(1500);
        t.upstream_cluster = Some("PassthroughCluster".into());
        t.upstream_host = Some("1.2.3.4:443".parse().unwrap());
        let f = Format::istio_default(AccessLogEncoding::Json, JsonValues::Typed);
        let v: serde_json::Value = serde_json::from_str(&f.format_tcp(&t)).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 24);
        assert_eq!(v["method"], serde_json::Value::Null);
        assert_eq!(v["path"], serde_json::Value::Null);
        assert_eq!(v["protocol"], "-");
        assert_eq!(v["response_code"], 0);
        assert_eq!(v["bytes_received"], 12);
        assert_eq!(v["duration"], 1500);
        assert_eq!(v["upstream_cluster"], "PassthroughCluster");
    }

    #[test]
    fn text_default_matches_istio() {
        let f = Format::istio_default(AccessLogEncoding::Text, JsonValues::Typed);
        let line = f.format_request(&seed_record());
        assert_eq!(
            line,
            "[2020-03-07T12:00:58.425Z] \"GET /headers HTTP/1.1\" 200 - via_upstream - \"-\" 0 521 2 2 \"-\" \
\"curl/7.58.0\" \"a93e2afa-cc27-4bb7-897c-5282c754d382\" \"httpbin-service\" \"172.17.0.8:80\" \
outbound|80||httpbin-service.default.svc.cluster.local 172.17.0.9:43422 10.109.118.31:80 172.17.0.9:52178 - default\n"
        );
        let mut t = TcpRecord::new(UNIX_EPOCH, Reporter::Source);
        t.upstream_cluster = Some("PassthroughCluster".into());
        t.response_flags = ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
        assert_eq!(
            f.format_tcp(&t),
            "[1970-01-01T00:00:00.000Z] \"- - -\" 0 UF - - \"-\" 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\" PassthroughCluster - - - - -\n"
        );
    }

    #[test]
    fn custom_text_format() {
        let f = Format::from_mesh_config(
            AccessLogEncoding::Text,
            Some("%START_TIME(%s.%3f)% %REQ(:METHOD)% %REQ(USER-AGENT):4% %RESPONSE_CODE% 100% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %REQ(X-UNKNOWN)%"),
            JsonValues::Typed,
        )
        .unwrap();
        assert_eq!(
            f.format_request(&seed_record()),
            "1583582458.425 GET curl 200 100% 172.17.0.9 -\n"
        );
        assert!(
            Format::text("%BOGUS%")
                .unwrap_err()
                .0
                .contains("unknown command operator")
        );
        assert!(Format::text("%REQ()%").is_err());
    }

    #[test]
    fn custom_json_format() {
        let f = Format::from_mesh_config(
            AccessLogEncoding::Json,
            Some(r#"{"code":"%RESPONSE_CODE%","ua":"%REQ(USER-AGENT)%","mix":"%RESPONSE_CODE%/%DURATION%","n":1,"none":"%REQ(X-NOPE)%"}"#),
            JsonValues::Typed,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&f.format_request(&seed_record())).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code":200,"ua":"curl/7.58.0","mix":"200/2","n":1,"none":null})
        );
        assert!(
            Format::from_mesh_config(AccessLogEncoding::Json, Some("[]"), JsonValues::Typed)
                .is_err()
        );
        assert!(
            Format::from_mesh_config(AccessLogEncoding::Json, Some("{"), JsonValues::Typed)
                .is_err()
        );
    }

    #[test]
    fn json_strings_are_escaped_only_where_needed() {
        let raw = "plain é \"quoted\" back\\slash\nline\ttab\u{1}";
        let want = "\"plain é \\\"quoted\\\" back\\\\slash\\nline\\ttab\\u0001\"";
        let mut a = String::from("x");
        json_string(&mut a, raw);
        assert_eq!(a, format!("x{want}"));
        let mut b = String::from("x");
        json_string_with(&mut b, |out| out.push_str(raw));
        assert_eq!(b, a);
        let mut c = String::new();
        json_string_with(&mut c, |out| out.push_str("no escapes"));
        assert_eq!(c, "\"no escapes\"");
    }

    #[test]
    fn numbers_addresses_and_times_print_as_display_does() {
        for n in [0, 7, 10, 99, 1000, 65535, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
        for a in [
            "0.0.0.0:0",
            "10.244.0.5:80",
            "255.255.255.255:65535",
            "[::1]:15001",
        ] {
            let a: SocketAddr = a.parse().expect("address");
            let mut out = String::new();
            push_addr(&mut out, a);
            assert_eq!(out, a.to_string());
        }
        for (secs, nanos, want) in [
            (1_583_582_458, 425_000_000, "2020-03-07T12:00:58.425Z"),
            (1_583_582_458, 7_999_999, "2020-03-07T12:00:58.007Z"),
            (1_583_582_459, 0, "2020-03-07T12:00:59.000Z"),
            (0, 999_000_000, "1970-01-01T00:00:00.999Z"),
        ] {
            let mut out = String::new();
            write_time(&mut out, UNIX_EPOCH + Duration::new(secs, nanos), None);
            assert_eq!(out, want);
        }
    }

    #[test]
    fn encoding_names() {
        assert_eq!(
            "JSON".parse::<AccessLogEncoding>().unwrap(),
            AccessLogEncoding::Json
        );
        assert_eq!(
            "text".parse::<AccessLogEncoding>().unwrap(),
            AccessLogEncoding::Text
        );
        assert!("XML".parse::<AccessLogEncoding>().is_err());
    }
}
