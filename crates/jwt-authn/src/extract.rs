//! Where a rule finds its tokens (Envoy's `Extractor`): headers with an optional value prefix,
//! query parameters and cookies, by default `Authorization: Bearer <token>` and
//! `?access_token=<token>`; and taking a verified token out of the request again.

use std::borrow::Cow;
use std::collections::BTreeMap;

use http::header::{COOKIE, HeaderName};
use http::request::Parts;
use http::uri::PathAndQuery;
use percent_encoding::percent_decode_str;
use xds::JwtRule;

/// The token locations of one rule.
#[derive(Debug)]
pub(crate) struct Locations {
    /// In Envoy's order: its map is keyed by the lower-case name followed by the prefix.
    headers: Vec<HeaderLocation>,
    /// Sorted, without duplicates (Envoy's map).
    params: Vec<String>,
    /// Sorted, without duplicates (Envoy's map).
    cookies: Vec<String>,
}

#[derive(Debug)]
struct HeaderLocation {
    name: HeaderName,
    prefix: String,
}

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// `Locations::headers[i]`.
    Header(usize),
    /// `Locations::params[i]`.
    Param(usize),
    /// Envoy leaves a token in a cookie where it was.
    Cookie,
}

/// A token found in the request.
#[derive(Debug)]
pub(crate) struct Found<'r> {
    pub(crate) token: Cow<'r, str>,
    pub(crate) place: Place,
}

impl Locations {
    /// The locations of `rule`; a header name that is not one is left out and reported in
    /// `problems`.
    pub(crate) fn new(rule: &JwtRule, problems: &mut Vec<String>) -> Locations {
        let mut headers = BTreeMap::new();
        let mut params = BTreeMap::new();
        let mut cookies = BTreeMap::new();
        for (i, header) in rule.from_headers.iter().enumerate() {
            match HeaderName::from_bytes(header.name.as_bytes()) {
                Ok(name) => {
                    let key = format!("{}{}", name.as_str(), header.prefix);
                    headers.entry(key).or_insert(HeaderLocation {
                        name,
                        prefix: header.prefix.clone(),
                    });
                }
                Err(_) => problems.push(format!(
                    "fromHeaders[{i}].name {:?} is not a header name: tokens there are not seen",
                    header.name
                )),
            }
        }
        for param in &rule.from_params {
            params.insert(param.clone(), ());
        }
        for cookie in &rule.from_cookies {
            cookies.insert(cookie.clone(), ());
        }
        if rule.from_headers.is_empty()
            && rule.from_params.is_empty()
            && rule.from_cookies.is_empty()
        {
            headers.insert(
                "authorizationBearer ".to_owned(),
                HeaderLocation {
                    name: http::header::AUTHORIZATION,
                    prefix: "Bearer ".to_owned(),
                },
            );
            params.insert("access_token".to_owned(), ());
        }
        Locations {
            headers: headers.into_values().collect(),
            params: params.into_keys().collect(),
            cookies: cookies.into_keys().collect(),
        }
    }

    /// The tokens in `parts`, in Envoy's order: headers (each value of each header), then
    /// query parameters (the first of each name), then cookies.
    pub(crate) fn extract<'r>(&self, parts: &'r Parts) -> Vec<Found<'r>> {
        let mut found = Vec::new();
        for (i, location) in self.headers.iter().enumerate() {
            for value in parts.headers.get_all(&location.name) {
                let value = match value.to_str() {
                    Ok(value) => Cow::Borrowed(value),
                    Err(_) => String::from_utf8_lossy(value.as_bytes()),
                };
                let token = if location.prefix.is_empty() {
                    value
                } else {
                    // Envoy looks for the prefix anywhere in the value.
                    let Some(at) = value.find(&location.prefix) else {
                        continue;
                    };
                    after_prefix(value, at + location.prefix.len())
                };
                found.push(Found {
                    token,
                    place: Place::Header(i),
                });
            }
        }
        if !self.params.is_empty()
            && let Some(query) = parts.uri.query()
        {
            for (i, param) in self.params.iter().enumerate() {
                if let Some(token) = query_pairs(query)
                    .find(|(name, _)| decode(name) == param.as_str())
                    .map(|(_, value)| decode(value))
                {
                    found.push(Found {
                        token,
                        place: Place::Param(i),
                    });
                }
            }
        }
        for cookie in &self.cookies {
            if let Some(token) = find_cookie(parts, cookie) {
                found.push(Found {
                    token: Cow::Borrowed(token),
                    place: Place::Cookie,
                });
            }
        }
        found
    }

    /// Takes the token at `place` out of the request, as Envoy does: the whole header, or
    /// every pair of the query parameter; a cookie stays.
    pub(crate) fn remove(&self, place: Place, parts: &mut Parts) {
        match place {
            Place::Header(i) => {
                parts.headers.remove(&self.headers[i].name);
            }
            Place::Param(i) => remove_param(parts, &self.params[i]),
            Place::Cookie => {}
        }
    }
}

/// The base64url alphabet and the dot: what a JWT is made of.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Envoy's `extractJWT`: skips what cannot start a token after the prefix and keeps the rest of
/// the value (trailing junk then fails verification: Envoy's fix of envoyproxy/envoy#27877); the whole value
/// when nothing after the prefix can.
fn after_prefix(value: Cow<'_, str>, from: usize) -> Cow<'_, str> {
    let Some(start) = value[from..].find(is_token_char).map(|at| from + at) else {
        return value;
    };
    match value {
        Cow::Borrowed(value) => Cow::Borrowed(&value[start..]),
        Cow::Owned(value) => Cow::Owned(value[start..].to_owned()),
    }
}

/// The raw `name=value` pairs of a query (`name` alone has an empty value).
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Percent-decoding, as Envoy decodes query parameters (`+` stays `+`).
fn decode(raw: &str) -> Cow<'_, str> {
    percent_decode_str(raw).decode_utf8_lossy()
}

/// The first cookie named `name` in the request's `Cookie` headers (surrounding quotes taken
/// off, as Envoy's `parseCookies` does).
fn find_cookie<'r>(parts: &'r Parts, name: &str) -> Option<&'r str> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|cookie| cookie.trim_start_matches(' ').split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| {
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
}

/// Drops every pair named `param` from the request's query, leaving the other pairs as they
/// were written (and the `?` when none remains).
fn remove_param(parts: &mut Parts, param: &str) {
    let Some(query) = parts.uri.query() else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
            decode(name) != param
        })
        .collect();
    let mut path_and_query = parts.uri.path().to_owned();
    if !kept.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&kept.join("&"));
    }
    let mut uri = parts.uri.clone().into_parts();
    // Both come from a valid URI minus some of its query: they cannot fail to parse.
    let Ok(path_and_query) = PathAndQuery::try_from(path_and_query) else {
        return;
    };
    uri.path_and_query = Some(path_and_query);
    if let Ok(uri) = http::Uri::from_parts(uri) {
        parts.uri = uri;
    }
}
