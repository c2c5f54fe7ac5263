//! The value matchers of AuthorizationPolicy, as Istio's builder (`pilot/pkg/security/authz/
//! matcher` and `model/generator.go`) turns each value into an Envoy matcher: strings (exact,
//! `prefix*`, `*suffix`, `*`), paths (the same, or a `{*}`/`{**}` template), IP blocks. Built
//! once per config snapshot; matching borrows and never allocates.

use std::borrow::Cow;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use regex::Regex;

/// Why a value cannot be compiled (the rule then errs on the side of denying).
#[derive(Debug, thiserror::Error)]
pub(crate) enum MatcherError {
    /// Not an IP address or CIDR.
    #[error("{0:?} is not an IP address or CIDR")]
    Ip(String),
    /// Not a port.
    #[error("{0:?} is not a port")]
    Port(String),
    /// Not a header name.
    #[error("{0:?} is not a header name")]
    Header(String),
    /// Not a condition key a proxy evaluates.
    #[error("{0:?} is not a condition key a proxy evaluates")]
    Key(String),
    /// A regex Istio would generate for the value does not compile.
    #[error("{value:?}: {error}")]
    Regex {
        /// The value.
        value: String,
        /// Why.
        error: regex::Error,
    },
}

/// A string matcher as Istio generates one for a value: exact, `prefix*`, `*suffix`, or `*`.
/// What `*` means depends on the attribute: a non-empty value for most (Istio's `.+` regex),
/// presence for headers, hosts and methods (Envoy's `present_match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StrMatch {
    kind: Kind,
    /// Hosts compare ASCII case-insensitively; the pattern is kept lowercase.
    ignore_case: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Starts with the first, ends with the second (without overlap).
    Around(Box<str>, Box<str>),
    /// `.+`.
    NonEmpty,
    /// Present, even empty.
    Present,
}

impl StrMatch {
    /// Istio's `StringMatcher(v)`: `*` is `.+`.
    pub(crate) fn string(v: &str) -> StrMatch {
        StrMatch::with_prefix(v, "")
    }

    /// Istio's `StringMatcherWithPrefix(v, prefix)`: the prefix goes before an exact or
    /// prefix value (principals: `spiffe://`); `*` is `.+` with or without it.
    pub(crate) fn with_prefix(v: &str, prefix: &str) -> StrMatch {
        let kind = if v == "*" {
            Kind::NonEmpty
        } else if let Some(suffix) = v.strip_prefix('*') {
            if prefix.is_empty() {
                Kind::Suffix(suffix.into())
            } else {
                // Istio's `prefix.*suffix` regex.
                Kind::Around(prefix.into(), suffix.into())
            }
        } else if let Some(p) = v.strip_suffix('*') {
            Kind::Prefix(format!("{prefix}{p}").into())
        } else {
            Kind::Exact(format!("{prefix}{v}").into())
        };
        StrMatch {
            kind,
            ignore_case: false,
        }
    }

    /// Exactly `v` (no wildcard).
    pub(crate) fn exact(v: &str) -> StrMatch {
        StrMatch {
            kind: Kind::Exact(v.into()),
            ignore_case: false,
        }
    }

    /// Starts with `v`.
    pub(crate) fn prefix(v: &str) -> StrMatch {
        StrMatch {
            kind: Kind::Prefix(v.into()),
            ignore_case: false,
        }
    }

    /// Ends with `v`.
    pub(crate) fn suffix(v: &str) -> StrMatch {
        StrMatch {
            kind: Kind::Suffix(v.into()),
            ignore_case: false,
        }
    }

    /// Istio's `HeaderMatcher(k, v)` (headers, methods): `*` is presence.
    pub(crate) fn header(v: &str) -> StrMatch {
        let mut m = StrMatch::string(v);
        if m.kind == Kind::NonEmpty {
            m.kind = Kind::Present;
        }
        m
    }

    /// Istio's `HostMatcher(k, v)`: as a header, ASCII case-insensitive. The authority is
    /// compared as it is, port included: `hosts: [example.com]` does not match
    /// `example.com:8080` (Istio's documented advice is to add `example.com:*`).
    pub(crate) fn host(v: &str) -> StrMatch {
        let mut m = StrMatch::header(&v.to_ascii_lowercase());
        m.ignore_case = true;
        m
    }

    /// Whether `value` (absent: `None`) matches.
    pub(crate) fn matches(&self, value: Option<&str>) -> bool {
        let Some(v) = value else {
            return false;
        };
        match &self.kind {
            Kind::Present => true,
            Kind::NonEmpty => !v.is_empty(),
            Kind::Exact(e) => eq(v, &**e, self.ignore_case),
            Kind::Prefix(p) => {
                v.len() >= p.len() && eq(&v.as_bytes()[..p.len()], p.as_bytes(), self.ignore_case)
            }
            Kind::Suffix(s) => {
                v.len() >= s.len()
                    && eq(
                        &v.as_bytes()[v.len() - s.len()..],
                        s.as_bytes(),
                        self.ignore_case,
                    )
            }
            Kind::Around(p, s) => {
                v.len() >= p.len() + s.len() && v.starts_with(&**p) && v.ends_with(&**s)
            }
        }
    }
}

fn eq(a: impl AsRef<[u8]>, b: impl AsRef<[u8]>, ignore_case: bool) -> bool {
    if ignore_case {
        a.as_ref().eq_ignore_ascii_case(b.as_ref())
    } else {
        a.as_ref() == b.as_ref()
    }
}

/// A path matcher: Istio's `PathMatcher` (a string matcher on the path without the query) or,
/// for a value with `{*}` or `{**}`, Envoy's `uri_template` matcher.
#[derive(Debug, Clone)]
pub(crate) enum PathMatch {
    Str(StrMatch),
    /// The template as Envoy's `uri_template` compiles it, anchored.
    Template(Regex),
}

/// Envoy's `uri_template` literal characters (RFC 3986 pchar without `*` and `/`).
const TEMPLATE_LITERAL: &str = r"a-zA-Z0-9\-._~%!$&'()+,;:@=";

impl PathMatch {
    pub(crate) fn new(v: &str) -> Result<PathMatch, MatcherError> {
        if !(v.contains("{*}") || v.contains("{**}")) {
            return Ok(PathMatch::Str(StrMatch::string(v)));
        }
        // Istio rewrites `{*}` to `*` and `{**}` to `**`; Envoy then makes `*` one segment
        // (`[pchar]+`) and `**` the rest (`[pchar/]*`), the other characters literal.
        let mut re = String::from("^");
        let mut rest = v;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("{**}") {
                re.push_str(&format!("[{TEMPLATE_LITERAL}/]*"));
                rest = r;
            } else if let Some(r) = rest.strip_prefix("{*}") {
                re.push_str(&format!("[{TEMPLATE_LITERAL}]+"));
                rest = r;
            } else {
                let end = rest[1..].find('{').map_or(rest.len(), |i| i + 1);
                re.push_str(&regex::escape(&rest[..end]));
                rest = &rest[end..];
            }
        }
        re.push('$');
        Regex::new(&re)
            .map(PathMatch::Template)
            .map_err(|error| MatcherError::Regex {
                value: v.to_string(),
                error,
            })
    }

    /// Whether `path` (without the query) matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(m) => m.matches(Some(path)),
            PathMatch::Template(re) => re.is_match(path),
        }
    }
}

/// An IP block: an address or a CIDR.
pub(crate) fn ip_block(v: &str) -> Result<IpNet, MatcherError> {
    IpNet::from_str(v)
        .or_else(|_| IpAddr::from_str(v).map(IpNet::from))
        .map_err(|_| MatcherError::Ip(v.to_string()))
}

/// A port given as a string (`destination.port`).
pub(crate) fn port(v: &str) -> Result<u16, MatcherError> {
    v.parse().map_err(|_| MatcherError::Port(v.to_string()))
}

/// A regex that must compile (Istio builds these from the value).
pub(crate) fn regex(re: &str, value: &str) -> Result<Regex, MatcherError> {
    Regex::new(re).map_err(|error| MatcherError::Regex {
        value: value.to_string(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_as_istio() {
        let m = |v: &str, s: Option<&str>| StrMatch::string(v).matches(s);
        assert!(m("abc", Some("abc")));
        assert!(!m("abc", Some("abcd")));
        assert!(!m("abc", Some("ABC")));
        assert!(m("ab*", Some("abcd")));
        assert!(m("ab*", Some("ab")));
        assert!(!m("ab*", Some("a")));
        assert!(m("*cd", Some("abcd")));
        assert!(!m("*cd", Some("abc")));
        assert!(m("*", Some("x")));
        assert!(!m("*", Some("")), "`*` is Istio's `.+`");
        assert!(!m("*", None));
        assert!(!m("abc", None));
    }

    #[test]
    fn principals_carry_the_spiffe_prefix() {
        let m = |v: &str, s: &str| StrMatch::with_prefix(v, "spiffe://").matches(Some(s));
        let id = "spiffe://cluster.local/ns/foo/sa/sleep";
        assert!(m("cluster.local/ns/foo/sa/sleep", id));
        assert!(!m(
            "cluster.local/ns/foo/sa/sleep",
            "cluster.local/ns/foo/sa/sleep"
        ));
        assert!(m("cluster.local/ns/foo/*", id));
        assert!(!m("cluster.local/ns/bar/*", id));
        assert!(m("*/sa/sleep", id));
        assert!(
            !m("*/sa/sleep", "other://x/sa/sleep"),
            "`spiffe://.*suffix`"
        );
        assert!(!m("*/sa/other", id));
        assert!(m("*", id));
    }

    #[test]
    fn headers_hosts_and_methods() {
        assert!(StrMatch::header("*").matches(Some("")), "presence");
        assert!(!StrMatch::header("*").matches(None));
        assert!(StrMatch::header("GET").matches(Some("GET")));
        assert!(!StrMatch::header("GET").matches(Some("get")));
        let h = |v: &str, s: &str| StrMatch::host(v).matches(Some(s));
        assert!(h("Example.COM", "example.com"));
        assert!(h("example.com", "EXAMPLE.com"));
        assert!(!h("example.com", "example.com:8080"), "no port stripping");
        assert!(h("example.com:*", "example.com:8080"));
        assert!(h("*.Example.com", "a.EXAMPLE.com"));
        assert!(h("api.*", "API.example.com"));
        assert!(!h("*.example.com", "example.org"));
        assert!(h("*", "anything"));
    }

    #[test]
    fn path_strings_and_templates() {
        let p = |v: &str, s: &str| PathMatch::new(v).expect("compiles").matches(s);
        assert!(p("/ip", "/ip"));
        assert!(!p("/ip", "/ip/"));
        assert!(p("/api/*", "/api/v1/x"));
        assert!(p("*.html", "/a/b.html"));
        assert!(p("*", "/"));
        // Envoy's uri_template: `{*}` one non-empty segment, `{**}` the rest.
        assert!(p("/foo/{*}", "/foo/bar"));
        assert!(!p("/foo/{*}", "/foo/bar/baz"));
        assert!(!p("/foo/{*}", "/foo/"));
        assert!(p("/foo/{*}/baz", "/foo/bar/baz"));
        assert!(!p("/foo/{*}/baz", "/foo/a/b/baz"));
        assert!(p("/foo/{**}", "/foo/a/b/c"));
        assert!(p("/foo/{**}", "/foo/"));
        assert!(!p("/foo/{**}", "/foo"));
        assert!(!p("/foo/{**}", "/bar/a"));
        assert!(p("/a.b/{*}", "/a.b/x"));
        assert!(!p("/a.b/{*}", "/aXb/x"), "literals are literal");
        assert!(!p("/foo/{*}", "/foo/a*b"), "`*` is not a pchar");
    }

    #[test]
    fn ip_blocks() {
        let b = ip_block("10.1.0.0/16").expect("cidr");
        assert!(b.contains(&"10.1.2.3".parse::<IpAddr>().expect("ip")));
        assert!(!b.contains(&"10.2.0.1".parse::<IpAddr>().expect("ip")));
        let one = ip_block("10.1.2.3").expect("ip");
        assert!(one.contains(&"10.1.2.3".parse::<IpAddr>().expect("ip")));
        assert!(!one.contains(&"10.1.2.4".parse::<IpAddr>().expect("ip")));
        assert!(ip_block("nope").is_err());
    }
}

/// The request path as Envoy matches it under Istio's default `pathNormalization` (`BASE`:
/// Envoy's `normalize_path`, RFC 3986): percent-encoded unreserved characters decoded, other
/// escapes' hex digits uppercased, `.` and `..` segments removed (`%2e` counts as `.`); the
/// query is kept as it is. Borrowed when already normal, which is the common case; so
/// `/public/../admin` cannot slip past a DENY on `/admin`.
pub fn normalize_path(path_and_query: &str) -> Cow<'_, str> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    let dotted = path.split('/').any(|s| s == "." || s == "..");
    if !path.contains('%') && !dotted {
        return Cow::Borrowed(path_and_query);
    }
    // Escapes first, so that `%2e%2e` is a `..` segment below.
    let mut decoded = String::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            let c = (h * 16 + l) as u8;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                decoded.push(c as char);
            } else {
                decoded.push('%');
                decoded.push(bytes[i + 1].to_ascii_uppercase() as char);
                decoded.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
            continue;
        }
        // Not an escape: copy the (possibly multi-byte) character as it is.
        let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
        decoded.push(ch);
        i += ch.len_utf8().max(1);
    }
    // RFC 3986 5.2.4 remove_dot_segments, over whole segments.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (k, seg) in segments.iter().enumerate().skip(1) {
        match *seg {
            "." => {
                if k == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if k == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(decoded.len() + query.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    normal.push_str(query);
    Cow::Owned(normal)
}

#[cfg(test)]
mod normalize_tests {
    use super::normalize_path;

    #[test]
    fn paths_normalize_as_envoys_normalize_path() {
        for (raw, want) in [
            ("/ip", "/ip"),
            ("/ip?x=/../y", "/ip?x=/../y"),
            ("/a/./b", "/a/b"),
            ("/a/../admin", "/admin"),
            ("/../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/%61dmin", "/admin"),
            ("/a/%2e%2E/admin", "/admin"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a//b", "/a//b"),
            ("/caf\u{e9}/./x", "/caf\u{e9}/x"),
            ("/%", "/%"),
            ("/%zz", "/%zz"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
        }
    }
}
