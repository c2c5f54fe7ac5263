//! Request and response headers a sidecar adds, continues or removes, as Envoy does in Istio:
//! `x-request-id`, B3 and W3C trace context, `x-forwarded-proto`, `x-envoy-attempt-count`,
//! `x-envoy-upstream-service-time`, `server`, hop-by-hop headers, `x-envoy-*` headers from
//! outside the mesh, and `x-forwarded-client-cert` (XFCC) for mTLS peers.

use std::borrow::Cow;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-b3-traceid`.
pub static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `x-b3-spanid`.
pub static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `x-b3-parentspanid`.
pub static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `x-b3-sampled`.
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `x-client-trace-id`: a client asks for its request to be traced (Envoy's client sampling,
/// 100 % under Istio).
pub static X_CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");
/// `x-envoy-force-trace`: trace this request whatever the sampling (trusted only from inside
/// the mesh, like every `x-envoy-*` header).
pub static X_ENVOY_FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");
/// `traceparent` (W3C trace context).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `x-forwarded-proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-envoy-attempt-count`.
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
/// `x-envoy-upstream-service-time`.
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
/// `x-forwarded-for`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-client-cert`.
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Returns the request's `x-request-id`, setting a new UUIDv4 when it has none (or an empty one).
/// The value is marked [`unique`] either way.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get_mut(&X_REQUEST_ID)
        && !v.is_empty()
    {
        v.set_sensitive(true);
        return v.clone();
    }
    let mut buf = uuid::Uuid::encode_buffer();
    // From the thread's CSPRNG (seeded from the OS): `Uuid::new_v4` asks the OS (a getrandom
    // syscall) for every id.
    let id = uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf);
    let v = unique(HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("-")));
    headers.insert(X_REQUEST_ID.clone(), v.clone());
    v
}

/// Marks a value that is new on every request (request and trace ids) so that HTTP/2 sends it
/// as a never-indexed HPACK literal (`h2` does so for "sensitive" values). Indexed, each such
/// value would take a slot in both ends' HPACK tables only to evict the headers that repeat
/// (content type, authority, user agent, ...), so those would be sent and decoded as literals
/// again; a few hundred bytes of ids per request turn the 4 KiB table over every dozen
/// requests. Nothing else reads the flag on a request header.
pub fn unique(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

/// A span of a distributed trace, as carried by B3 and W3C headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 128-bit trace id.
    pub trace_id: u128,
    /// This hop's span id.
    pub span_id: u64,
    /// The caller's span id, if the trace was continued.
    pub parent_span_id: Option<u64>,
    /// Sampling decision.
    pub sampled: bool,
}

fn parse_hex_u128(s: &str) -> Option<u128> {
    // B3 trace ids may be 64-bit (16 hex) or 128-bit (32 hex).
    if (s.len() == 16 || s.len() == 32) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        u128::from_str_radix(s, 16).ok().filter(|v| *v != 0)
    } else {
        None
    }
}

fn parse_hex_u64(s: &str) -> Option<u64> {
    if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        u64::from_str_radix(s, 16).ok().filter(|v| *v != 0)
    } else {
        None
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The caller's span, from B3 multi-headers, the single `b3` header, or W3C `traceparent`.
fn incoming_span(headers: &HeaderMap) -> Option<(u128, u64, Option<bool>)> {
    if let (Some(t), Some(s)) = (
        header_str(headers, &X_B3_TRACEID).and_then(parse_hex_u128),
        header_str(headers, &X_B3_SPANID).and_then(parse_hex_u64),
    ) {
        let sampled = header_str(headers, &X_B3_SAMPLED).map(|v| v == "1" || v == "true");
        return Some((t, s, sampled));
    }
    if let Some(tp) = header_str(headers, &TRACEPARENT) {
        let parts: Vec<&str> = tp.split('-').collect();
        if parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && let (Some(t), Some(s), Ok(flags)) = (
                parse_hex_u128(parts[1]),
                parse_hex_u64(parts[2]),
                u8::from_str_radix(parts[3], 16),
            )
        {
            return Some((t, s, Some(flags & 1 == 1)));
        }
    }
    None
}

/// Continues the caller's trace with a new child span, or starts a trace, and writes both B3
/// and W3C headers for the next hop.
///
/// The sampling decision is Envoy's under Istio: the caller's (`x-b3-sampled`, `traceparent`'s
/// flags) when it made one; else sampled when the request carries `x-envoy-force-trace` or
/// `x-client-trace-id`; else with probability `sampling_percent` (0 to 100, in steps of 0.01 %).
/// The server span is a child of the caller's, not a shared one (Istio turns Zipkin's
/// `shared_span_context` off).
///
/// A new trace's root span id is the low 64 bits of its trace id, as Envoy's Zipkin tracer does
/// (in the seed, `x-b3-parentspanid` equals the second half of `x-b3-traceid`).
pub fn continue_trace(headers: &mut HeaderMap, sampling_percent: f64) -> TraceContext {
    let decide = |h: &HeaderMap| {
        h.contains_key(&X_ENVOY_FORCE_TRACE)
            || h.contains_key(&X_CLIENT_TRACE_ID)
            || sample(sampling_percent)
    };
    let ctx = match incoming_span(headers) {
        Some((trace_id, parent, sampled)) => TraceContext {
            trace_id,
            span_id: nonzero_u64(),
            parent_span_id: Some(parent),
            sampled: sampled.unwrap_or_else(|| decide(headers)),
        },
        None => {
            let trace_id = ((nonzero_u64() as u128) << 64) | nonzero_u64() as u128;
            TraceContext {
                trace_id,
                span_id: trace_id as u64,
                parent_span_id: None,
                sampled: decide(headers),
            }
        }
    };
    write_trace(headers, &ctx);
    ctx
}

fn nonzero_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

/// True with probability `percent` %, to Envoy's precision (a fraction of 10 000: Istio's
/// percentage becomes an Envoy `FractionalPercent` over `TEN_THOUSAND`).
fn sample(percent: f64) -> bool {
    let per_ten_thousand = (percent * 100.0).round().clamp(0.0, 10_000.0) as u32;
    per_ten_thousand >= 10_000
        || (per_ten_thousand > 0 && rand::random_range(0..10_000u32) < per_ten_thousand)
}

fn hex_value(s: &[u8]) -> HeaderValue {
    // Hex digits and '-' only: always a valid header value. Ids: new on every request.
    unique(HeaderValue::from_bytes(s).unwrap_or_else(|_| HeaderValue::from_static("0")))
}

/// `v` in lower-case hex, zero-padded to `N` digits (its low `4 * N` bits): `{:0Nx}` without
/// the formatting machinery, which is a good part of a request's header work.
fn hex<const N: usize>(v: u128) -> [u8; N] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'0'; N];
    for (i, d) in out.iter_mut().enumerate() {
        *d = DIGITS[((v >> (4 * (N - 1 - i))) & 0xf) as usize];
    }
    out
}

fn write_trace(headers: &mut HeaderMap, ctx: &TraceContext) {
    let trace = hex::<32>(ctx.trace_id);
    let span = hex::<16>(u128::from(ctx.span_id));
    headers.insert(X_B3_TRACEID.clone(), hex_value(&trace));
    headers.insert(X_B3_SPANID.clone(), hex_value(&span));
    match ctx.parent_span_id {
        Some(p) => {
            headers.insert(
                X_B3_PARENTSPANID.clone(),
                hex_value(&hex::<16>(u128::from(p))),
            );
        }
        None => {
            headers.remove(&X_B3_PARENTSPANID);
        }
    }
    headers.insert(
        X_B3_SAMPLED.clone(),
        HeaderValue::from_static(if ctx.sampled { "1" } else { "0" }),
    );
    headers.remove(HeaderName::from_static("b3"));
    // `00-{trace}-{span}-{flags}`
    let mut traceparent = [b'-'; 55];
    traceparent[..2].copy_from_slice(b"00");
    traceparent[3..35].copy_from_slice(&trace);
    traceparent[36..52].copy_from_slice(&span);
    traceparent[53..].copy_from_slice(if ctx.sampled { b"01" } else { b"00" });
    headers.insert(TRACEPARENT.clone(), hex_value(&traceparent));
}

/// Hop-by-hop headers that never cross the proxy, as Envoy removes them (the connection-specific
/// headers HTTP/2 forbids). `trailer`, `proxy-authenticate` and `proxy-authorization` pass, as
/// they do through Envoy: a `trailer` response header announces the trailers that follow.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `http2-settings`, which only an h2c upgrade request carries.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Removes hop-by-hop headers, and those the `Connection` header names. With `keep_upgrade`
/// (a websocket handshake), `Connection: upgrade` and `Upgrade` pass. `te: trailers` passes,
/// since gRPC needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them but gRPC's `te: trailers`, which stays: one pass over
    // the headers instead of nine removals.
    if !keep_upgrade
        && !headers
            .iter()
            .any(|(n, v)| is_hop_by_hop(n) && !(n == header::TE && is_te_trailers(v)))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    if !keep_upgrade && is_h2c_upgrade(headers) {
        // Not followed, as Envoy ignores h2c upgrades: the request goes on as HTTP/1.1 without
        // its upgrade headers, `HTTP2-Settings` included whether `Connection` names it or not.
        headers.remove(&HTTP2_SETTINGS);
    }
    for n in named {
        headers.remove(n);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for n in HOP_BY_HOP {
        if keep_upgrade && (n == header::UPGRADE || n == header::CONNECTION) {
            continue;
        }
        headers.remove(n);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// `te: trailers` exactly, which [`strip_hop_by_hop`] would put back as it is.
fn is_te_trailers(v: &HeaderValue) -> bool {
    v.as_bytes().eq_ignore_ascii_case(b"trailers")
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A header [`strip_hop_by_hop`] removes whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Their lengths first: most names of a request are none of these lengths.
    matches!(name.as_str().len(), 2 | 7 | 10 | 16 | 17)
        && (HOP_BY_HOP.contains(name) || name == KEEP_ALIVE || name == PROXY_CONNECTION)
}

/// True for an HTTP/1.1 upgrade request the proxy follows (`Connection: upgrade` + `Upgrade:
/// ...`), e.g. websocket; an h2c upgrade is not one (see [`strip_hop_by_hop`]).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|u| !u.as_bytes().eq_ignore_ascii_case(b"h2c"))
        && connection_upgrade(headers)
}

/// True for an upgrade to h2c (`Connection: upgrade` + `Upgrade: h2c`), which Envoy does not
/// follow.
fn is_h2c_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"h2c"))
        && connection_upgrade(headers)
}

/// True when a `Connection` header names `upgrade`.
fn connection_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// True for a gRPC request as Envoy tells one (`Grpc::Common::hasGrpcContentType`): content type
/// `application/grpc` exactly or `application/grpc+<codec>`; `application/grpc-web` and
/// `application/grpc;...` are not gRPC.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .strip_prefix(b"application/grpc")
            .is_some_and(|rest| rest.first().is_none_or(|b| *b == b'+'))
    })
}

/// For an absolute-form request target (`GET http://a.example/path HTTP/1.1`), the `Host` it
/// must have when the client sent another: the URI's authority wins, as through Envoy (RFC 9112
/// §3.2.2). `None` for origin-form targets (nearly all), which cost one check.
pub fn absolute_form_host(uri: &http::Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    let a = uri.authority()?;
    if headers
        .get(header::HOST)
        .is_some_and(|h| h.as_bytes() == a.as_str().as_bytes())
    {
        return None;
    }
    HeaderValue::from_str(a.as_str()).ok()
}

/// True when Envoy's HTTP/1 codec refuses the request's `Transfer-Encoding` as not implemented
/// (501): any transfer coding but `chunked` alone, so that a coding the proxy cannot undo
/// (`gzip, chunked`) is never passed on as if it were plain chunked.
pub fn unsupported_transfer_encoding(headers: &HeaderMap) -> bool {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => false,
        (Some(v), None) => !v.as_bytes().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => true,
    }
}

/// Removes the headers that ask Envoy for retries (`x-envoy-retry-on`, ...): only the route's
/// policy counts, and Envoy never forwards them.
pub fn strip_retry_requests(headers: &mut HeaderMap) {
    for name in crate::outbound::retry::RETRY_REQUEST_HEADERS {
        headers.remove(name);
    }
}

/// Removes `x-envoy-*` request headers: they steer Envoy (timeouts, retries, internal marks) and
/// are only trusted from inside the mesh.
pub fn strip_envoy_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-envoy-"))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// At the edge (a gateway, Envoy's `use_remote_address: true` as Istio sets it for gateways):
/// appends the client's address to `x-forwarded-for`, and sets `x-forwarded-proto` to the
/// connection's scheme whatever the client said.
pub fn edge_forwarded(headers: &mut HeaderMap, client: std::net::IpAddr, scheme: &'static str) {
    let appended = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::to_str) {
        Some(Ok(prev)) if !prev.trim().is_empty() => format!("{prev},{client}"),
        _ => client.to_string(),
    };
    if let Ok(v) = HeaderValue::try_from(appended) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
}

/// Sets `x-forwarded-proto` to the downstream scheme when the client did not say.
pub fn set_forwarded_proto(headers: &mut HeaderMap, scheme: &'static str) {
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    }
}

/// The request's scheme as Envoy's connection manager settles `:scheme`: the request's own
/// (HTTP/2's `:scheme`, an absolute URI's), else `x-forwarded-proto` when it says `http` or
/// `https` (in any case, kept as written), else `https` over TLS and `http` otherwise. Behind a
/// client sidecar, which sends `x-forwarded-proto: http` for what its app spoke in plaintext,
/// that is `http` even over mTLS. Borrows nothing from the request (it is edited afterwards);
/// allocates only for a scheme written in an unusual case.
pub fn request_scheme(uri: &http::Uri, headers: &HeaderMap, tls: bool) -> Cow<'static, str> {
    let settled = |s: &str| match s {
        "http" => Cow::Borrowed("http"),
        "https" => Cow::Borrowed("https"),
        other => Cow::Owned(other.to_owned()),
    };
    if let Some(scheme) = uri.scheme_str() {
        return settled(scheme);
    }
    match headers.get(&X_FORWARDED_PROTO).map(HeaderValue::as_bytes) {
        Some(p) if p.eq_ignore_ascii_case(b"http") || p.eq_ignore_ascii_case(b"https") => {
            // ASCII, checked just above.
            settled(std::str::from_utf8(p).unwrap_or("http"))
        }
        _ if tls => Cow::Borrowed("https"),
        _ => Cow::Borrowed("http"),
    }
}

/// `x-forwarded-client-cert` as Envoy's `APPEND_FORWARD`, Istio's inbound setting: over mTLS,
/// `element` (`By=…;Hash=…;Subject="";URI=…`) is appended to what the client sent, comma
/// separated; without mTLS (`None`) the header is removed, since nobody vouches for it. The
/// outbound side passes `None` as well: Envoy's default `SANITIZE` drops what the app sent.
pub fn forward_client_cert(headers: &mut HeaderMap, element: Option<&HeaderValue>) {
    let Some(element) = element else {
        headers.remove(&X_FORWARDED_CLIENT_CERT);
        return;
    };
    // Envoy's `appendToHeader`: an empty value adds nothing, and a comma goes only between
    // parts that are not empty (`x-forwarded-client-cert:` sent empty must not become `,By=…`).
    let mut sent = headers
        .get_all(&X_FORWARDED_CLIENT_CERT)
        .iter()
        .filter(|v| !v.is_empty())
        .peekable();
    if sent.peek().is_none() {
        headers.insert(X_FORWARDED_CLIENT_CERT.clone(), element.clone());
        return;
    }
    let mut joined = Vec::with_capacity(256);
    for v in sent {
        joined.extend_from_slice(v.as_bytes());
        joined.push(b',');
    }
    joined.extend_from_slice(element.as_bytes());
    // Both parts are valid header values and a comma is too, so this cannot fail.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(X_FORWARDED_CLIENT_CERT.clone(), v);
    }
}

/// Sets `x-envoy-attempt-count` (1 for the first try).
pub fn set_attempt_count(headers: &mut HeaderMap, attempt: u32) {
    // The first try is nearly every request: a static value instead of an allocated one.
    let value = match attempt {
        1 => HeaderValue::from_static("1"),
        n => HeaderValue::from(n),
    };
    headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), value);
}

/// Response headers: `x-envoy-upstream-service-time` in whole milliseconds, and `server` when
/// configured (`overwrite`: replace the app's, as the outbound side does; else only when absent).
pub fn decorate_response(
    headers: &mut HeaderMap,
    service_time: Duration,
    server: Option<&HeaderValue>,
    overwrite: bool,
) {
    headers.insert(
        X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
        HeaderValue::from(service_time.as_millis() as u64),
    );
    if let Some(server) = server
        && (overwrite || !headers.contains_key(header::SERVER))
    {
        headers.insert(header::SERVER, server.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_append_forward() {
        let element = HeaderValue::from_static("By=a;Hash=00;Subject=\"\";URI=b");
        let mut h = HeaderMap::new();
        forward_client_cert(&mut h, Some(&element));
        assert_eq!(h[&X_FORWARDED_CLIENT_CERT], element);
        let mut h = HeaderMap::new();
        h.append(
            &X_FORWARDED_CLIENT_CERT,
            HeaderValue::from_static("By=x;URI=y"),
        );
        h.append(&X_FORWARDED_CLIENT_CERT, HeaderValue::from_static("By=z"));
        forward_client_cert(&mut h, Some(&element));
        assert_eq!(
            h.get_all(&X_FORWARDED_CLIENT_CERT)
                .iter()
                .collect::<Vec<_>>(),
            vec![r#"By=x;URI=y,By=z,By=a;Hash=00;Subject="";URI=b"#]
        );
        forward_client_cert(&mut h, None);
        assert!(!h.contains_key(&X_FORWARDED_CLIENT_CERT));
    }

    /// Found by the `http1_head` fuzz target: an empty XFCC from the client reached the app as
    /// `,By=…`; Envoy's `appendToHeader` skips empty values.
    #[test]
    fn xfcc_skips_empty_values_as_envoy_does() {
        let element = HeaderValue::from_static("By=a;URI=b");
        for sent in [&["", ""][..], &[""], &["x", ""], &["", "x"]] {
            let mut h = HeaderMap::new();
            for v in sent {
                h.append(&X_FORWARDED_CLIENT_CERT, HeaderValue::from_static(v));
            }
            forward_client_cert(&mut h, Some(&element));
            let want = if sent.contains(&"x") {
                "x,By=a;URI=b"
            } else {
                "By=a;URI=b"
            };
            assert_eq!(
                h.get_all(&X_FORWARDED_CLIENT_CERT)
                    .iter()
                    .collect::<Vec<_>>(),
                vec![want],
                "{sent:?}"
            );
        }
    }

    #[test]
    fn request_id_is_kept_or_made() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        let parsed = uuid::Uuid::parse_str(id.to_str().expect("ascii")).expect("a UUID");
        assert_eq!(parsed.get_version(), Some(uuid::Version::Random));
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(ensure_request_id(&mut h), id);
        assert_ne!(ensure_request_id(&mut HeaderMap::new()), id);
    }

    #[test]
    fn new_trace_root_span_is_low_half_of_trace_id() {
        let mut h = HeaderMap::new();
        let ctx = continue_trace(&mut h, 0.0);
        let trace = h[&X_B3_TRACEID].to_str().expect("ascii").to_owned();
        assert_eq!(trace.len(), 32);
        assert_eq!(&trace[16..], h[&X_B3_SPANID].to_str().expect("ascii"));
        assert!(!h.contains_key(&X_B3_PARENTSPANID));
        assert_eq!(h[&X_B3_SAMPLED], "0");
        assert_eq!(
            h[&TRACEPARENT].to_str().expect("ascii"),
            format!("00-{trace}-{}-00", &trace[16..])
        );
        assert!(!ctx.sampled);
    }

    #[test]
    fn continues_b3_and_w3c() {
        let mut h = HeaderMap::new();
        h.insert(
            &X_B3_TRACEID,
            HeaderValue::from_static("3a3e0cd03f1ded4e361390f32cd55bdc"),
        );
        h.insert(&X_B3_SPANID, HeaderValue::from_static("361390f32cd55bdc"));
        h.insert(&X_B3_SAMPLED, HeaderValue::from_static("1"));
        let ctx = continue_trace(&mut h, 0.0);
        assert_eq!(h[&X_B3_TRACEID], "3a3e0cd03f1ded4e361390f32cd55bdc");
        assert_eq!(h[&X_B3_PARENTSPANID], "361390f32cd55bdc");
        assert_ne!(h[&X_B3_SPANID], "361390f32cd55bdc");
        assert!(ctx.sampled);

        let mut w = HeaderMap::new();
        w.insert(
            &TRACEPARENT,
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        continue_trace(&mut w, 0.0);
        assert_eq!(w[&X_B3_TRACEID], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(w[&X_B3_PARENTSPANID], "b7ad6b7169203331");
        assert_eq!(w[&X_B3_SAMPLED], "1");
    }

    #[test]
    fn sampling_as_envoy_decides_it() {
        // The caller's decision wins, either way.
        let mut no = HeaderMap::new();
        no.insert(&X_B3_TRACEID, HeaderValue::from_static("361390f32cd55bdc"));
        no.insert(&X_B3_SPANID, HeaderValue::from_static("361390f32cd55bdc"));
        no.insert(&X_B3_SAMPLED, HeaderValue::from_static("0"));
        no.insert(&X_ENVOY_FORCE_TRACE, HeaderValue::from_static("true"));
        assert!(!continue_trace(&mut no, 100.0).sampled);
        let mut w = HeaderMap::new();
        w.insert(
            &TRACEPARENT,
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
        );
        assert!(!continue_trace(&mut w, 100.0).sampled);
        // No decision yet: forced, or asked for by the client, or none of them at 0 %.
        for name in [&X_ENVOY_FORCE_TRACE, &X_CLIENT_TRACE_ID] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("abc"));
            assert!(continue_trace(&mut h, 0.0).sampled, "{name}");
            assert_eq!(h[&X_B3_SAMPLED], "1");
        }
        let mut undecided = HeaderMap::new();
        undecided.insert(&X_B3_TRACEID, HeaderValue::from_static("361390f32cd55bdc"));
        undecided.insert(&X_B3_SPANID, HeaderValue::from_static("361390f32cd55bdc"));
        undecided.insert(&X_CLIENT_TRACE_ID, HeaderValue::from_static("1"));
        assert!(continue_trace(&mut undecided, 0.0).sampled);
        assert!((0..200).all(|_| !continue_trace(&mut HeaderMap::new(), 0.0).sampled));
        assert!((0..200).all(|_| continue_trace(&mut HeaderMap::new(), 100.0).sampled));
    }

    #[test]
    fn sampling_precision_is_a_hundredth_of_a_percent() {
        // Below half of 0.01 %: never; 0.01 % and more: sometimes.
        assert!((0..100_000).all(|_| !sample(0.004)));
        assert!((0..1_000_000).any(|_| sample(0.01)));
        let hits = (0..100_000).filter(|_| sample(50.0)).count();
        assert!((45_000..55_000).contains(&hits), "{hits}");
    }

    #[test]
    fn strips_hop_by_hop_but_keeps_te_trailers_and_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-foo"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert!(
            !h.contains_key("x-foo")
                && !h.contains_key(header::CONNECTION)
                && !h.contains_key("keep-alive")
        );
        assert_eq!(h[header::TE], "trailers");

        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("httpbin"));
        plain.insert("x-foo", HeaderValue::from_static("1"));
        let before = plain.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain, before);
        let mut grpc = HeaderMap::new();
        grpc.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        grpc.insert(header::TE, HeaderValue::from_static("trailers"));
        let before = grpc.clone();
        strip_hop_by_hop(&mut grpc, false);
        assert_eq!(grpc, before);
        let mut te = HeaderMap::new();
        te.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut te, false);
        assert!(te.is_empty());
        te.insert(header::TE, HeaderValue::from_static("trailers, gzip"));
        strip_hop_by_hop(&mut te, false);
        assert_eq!(te[header::TE], "trailers");
        let mut lone = HeaderMap::new();
        lone.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut lone, false);
        assert!(lone.is_empty());

        let mut u = HeaderMap::new();
        u.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        u.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade_request(&u));
        strip_hop_by_hop(&mut u, true);
        assert_eq!(u[header::UPGRADE], "websocket");
        assert_eq!(u[header::CONNECTION], "upgrade");
    }

    #[test]
    fn ids_are_never_indexed() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        continue_trace(&mut h, 100.0);
        assert!(id.is_sensitive() && h[&X_REQUEST_ID].is_sensitive());
        for n in [&X_B3_TRACEID, &X_B3_SPANID, &TRACEPARENT] {
            assert!(h[n].is_sensitive(), "{n}");
        }
        assert!(!h[&X_B3_SAMPLED].is_sensitive());
        let mut given = HeaderMap::new();
        given.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("abc"));
        assert_eq!(ensure_request_id(&mut given), "abc");
        assert!(given[&X_REQUEST_ID].is_sensitive());
    }

    #[test]
    fn grpc_is_told_as_envoy_tells_it() {
        let ct = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_grpc(&h)
        };
        assert!(ct("application/grpc") && ct("application/grpc+proto"));
        assert!(!ct("application/grpc-web") && !ct("application/grpc;x=y"));
        assert!(!ct("application/json") && !is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn h2c_upgrade_is_not_followed_and_its_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("http2-settings", HeaderValue::from_static("AAMAAABk"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        assert!(!is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        // Without `Connection: upgrade` it is no upgrade: `HTTP2-Settings` passes, as through
        // Envoy.
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("http2-settings", HeaderValue::from_static("AAMAAABk"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn trailer_and_proxy_authorization_pass() {
        let mut h = HeaderMap::new();
        h.insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic"),
        );
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn only_chunked_alone_is_a_supported_transfer_encoding() {
        let te = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
            }
            unsupported_transfer_encoding(&h)
        };
        assert!(!te(&[]) && !te(&["chunked"]) && !te(&["Chunked"]));
        assert!(te(&["gzip, chunked"]) && te(&["gzip", "chunked"]) && te(&["chunked, chunked"]));
    }

    #[test]
    fn absolute_form_authority_becomes_the_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("b.example"));
        let absolute: http::Uri = "http://a.example:8080/x".parse().expect("uri");
        assert_eq!(
            absolute_form_host(&absolute, &h).expect("a new host"),
            "a.example:8080"
        );
        assert!(absolute_form_host(&"/x".parse().expect("uri"), &h).is_none());
        h.insert(header::HOST, HeaderValue::from_static("a.example:8080"));
        assert!(absolute_form_host(&absolute, &h).is_none());
    }

    #[test]
    fn strips_envoy_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-envoy-retry-on", HeaderValue::from_static("5xx"));
        h.insert("x-envoy-internal", HeaderValue::from_static("true"));
        h.insert("x-other", HeaderValue::from_static("1"));
        strip_envoy_headers(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn request_scheme_is_envoys_scheme() {
        let origin: http::Uri = "/x".parse().expect("uri");
        let absolute: http::Uri = "https://a.example/x".parse().expect("uri");
        let proto = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(v));
            h
        };
        let none = HeaderMap::new();
        // The request's own scheme first, whatever the connection and x-forwarded-proto say.
        assert_eq!(request_scheme(&absolute, &proto("http"), false), "https");
        // Then x-forwarded-proto, when it names http or https.
        assert_eq!(request_scheme(&origin, &proto("http"), true), "http");
        assert_eq!(request_scheme(&origin, &proto("https"), false), "https");
        assert_eq!(request_scheme(&origin, &proto("HTTPS"), false), "HTTPS");
        // Then the connection.
        assert_eq!(request_scheme(&origin, &proto("ftp"), true), "https");
        assert_eq!(request_scheme(&origin, &proto("ftp"), false), "http");
        assert_eq!(request_scheme(&origin, &none, true), "https");
        assert_eq!(request_scheme(&origin, &none, false), "http");
    }
}
