//! RequestAuthentication on the inbound path: what Envoy's `jwt_authn` filter does with the
//! configuration istiod gives it, for the JWT rules ([`xds::JwtRule`]) of every
//! RequestAuthentication that selects the workload.
//!
//! [`JwtAuthn::new`] parses every key set once per config snapshot; [`JwtAuthn::authenticate`]
//! then finds the tokens of a request, verifies them and edits the request as Envoy does.
//!
//! # Envoy's behaviour, followed
//! Istio turns rule `i` into provider `origins-i` and requires, for one rule, `{origins-0 or
//! allow_missing}`, for several, `{origins-0 or origins-1 or … or all of {origins-i or
//! allow_missing}}`. So:
//! - A request with no token in any rule's locations passes ([`Outcome::NoToken`]).
//! - Each rule looks only in its own locations (`fromHeaders`, `fromParams`, `fromCookies`; with
//!   none of them, `Authorization: Bearer <token>` and `?access_token=`), and every token it
//!   finds there must verify for the rule: a token whose `iss` is not the rule's fails with
//!   "Jwt issuer is not configured", even when another rule has that issuer (the token sits in
//!   a location of the wrong rule).
//! - The rules are tried in order and the first that verifies all of its tokens wins: its
//!   tokens are verified, the request is edited for them, and tokens in other rules' locations
//!   are neither verified nor removed (Envoy's `requires_any` stops at the first success).
//! - When no rule verifies, the message is the one Envoy's `requires_any` picks: the last error
//!   that is not "Jwt issuer is not configured" (nor a missing token), else "Jwt issuer is not
//!   configured". The answer is 401 (403 for "Audiences in Jwt are not allowed", as Envoy),
//!   with `www-authenticate: Bearer realm="<scheme>://<host><path>", error="invalid_token"`
//!   (the scheme the caller settled, Envoy's `:scheme`; the path as sent, cut at 256 bytes)
//!   and response code details `jwt_authn_access_denied{<message, spaces as underscores>}`.
//! - Within a rule, tokens are verified last found first (headers in the order of their
//!   lower-case name and prefix, each value of a header on its own, then query parameters and
//!   cookies by name), and the first failure answers.
//! - A token: exactly three non-empty dot-separated sections, base64url JSON objects, `alg` one
//!   of Envoy's, claims of the right types; then `iss` (empty issuer in the rule: any), then
//!   `nbf` and `exp` with 60 s of clock skew (a token without `exp` does not expire), then
//!   `aud` (any of the rule's audiences, `http(s)://` and a trailing `/` ignored on both sides;
//!   no audiences: any), then the signature: keys whose `kid` (when both have one) and `alg`
//!   (when the key has one) match, the first that verifies wins; none matching is "Jwks doesn't
//!   have key to match kid or alg from Jwt", none verifying "Jwt verification fails".
//! - A key set is parsed as Envoy does: keys it cannot use are skipped, a set with no usable
//!   key (or not JSON, or without `keys`) makes every token of the rule fail with "Jwks doesn't
//!   have any valid public key" (logged once at WARN when built). An empty `jwks` (istiod could
//!   not fetch `jwksUri`) fails every token with "Jwt verification fails", as the public-only
//!   key set istiod sends then makes Envoy answer.
//! - On success, for each verified token in turn: `outputPayloadToHeader` is appended with the
//!   payload exactly as it stands in the token (base64url, unpadded: Istio does not set
//!   `pad_forward_payload_header`); each `outputClaimToHeaders` claim (`a.b` for nested claims)
//!   is appended: strings as they are (empty ones not), booleans `true`/`false`, whole numbers
//!   as integers and other numbers as C's `%f` (`1.500000`), objects and arrays as standard
//!   padded base64 of their JSON; unless `forwardOriginalToken`, the token is removed: its whole
//!   header, or every pair of its query parameter (a cookie stays, as in Envoy).
//! - [`Verified`] describes the last verified token of the winning rule (Envoy's metadata is
//!   overwritten token after token); its claims have `scope` and `permission` split on spaces
//!   into lists, as Istio asks Envoy to (`space_delimited_claims`).
//! - CORS preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) pass
//!   unauthenticated (Istio sets `bypass_cors_preflight`): [`Outcome::Preflight`].
//!
//! # Where Ama differs
//! - The output headers of every rule (`outputPayloadToHeader`, `outputClaimToHeaders`) are
//!   removed from every request first, CORS preflights included; Envoy removes only those of
//!   the rules it tried, so a client could send one of another rule's headers to the app.
//! - Edits happen only when the request passes: Envoy also applies them for the tokens a rule
//!   verified before one of its tokens failed, when a later rule then wins.
//! - Removing a query parameter keeps the other pairs as they were written (Envoy writes them
//!   back decoded).
//! - `jsonwebtoken` (aws-lc-rs) verifies: no ES512 (P-521 keys are accepted but verify
//!   nothing), RSA keys of 2048 to 8192 bits, EC keys only with the `alg` of their curve
//!   (`ES256` with P-256, `ES384` with P-384), HMAC keys only for `HS*`; X.509 key sets (a map
//!   of certificates) are not read. A claim header whose value is not a valid header value is
//!   left out; JSON of object claims follows `serde_json` (keys sorted) where Envoy's follows
//!   protobuf.

#![forbid(unsafe_code)]

mod extract;
mod jwks;
mod jwt;
mod status;

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use serde_json::{Map, Value};

use crate::extract::{Locations, Place};
use crate::jwks::Jwks;
use crate::jwt::Jwt;
use crate::status::Status;

/// Envoy's `jwt_authn` for the JWT rules of a workload.
///
/// Built once per config snapshot from the JwtRules of every RequestAuthentication selecting
/// the workload (JWKS parsed here, never per request).
pub struct JwtAuthn {
    rules: Vec<Rule>,
    /// Every rule's output headers: a client never gets to set them.
    output_headers: Vec<HeaderName>,
}

/// The outcome of [`JwtAuthn::authenticate`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No token in any rule's location: the request passes unauthenticated.
    NoToken,
    /// A CORS preflight: passes unauthenticated, its tokens not looked at (Istio sets
    /// `bypass_cors_preflight`; Envoy counts it `cors_preflight_bypassed`).
    Preflight,
    /// A rule verified every token in its locations; the request was edited for them.
    Verified(Verified),
    /// A token failed: answer with [`Denial`] and do not forward the request.
    Denied(Denial),
}

/// The verified token (the last one, when a rule verified several).
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// `iss`.
    pub issuer: String,
    /// `sub` (empty when the token has none).
    pub subject: String,
    /// `iss/sub`, Istio's request principal.
    pub principal: String,
    /// `aud`.
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// The payload, `scope` and `permission` split on spaces into lists (as Istio asks Envoy
    /// to normalize the payload it hands to authorization).
    pub claims: Value,
}

/// Envoy's local reply for a request whose token failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// 401, or 403 for "Audiences in Jwt are not allowed" (as Envoy).
    pub status: http::StatusCode,
    /// Envoy's message, e.g. "Jwt is expired"; the body of the reply.
    pub body: &'static str,
    /// Envoy's response code details: `jwt_authn_access_denied{Jwt_is_expired}`.
    pub details: String,
    /// The `www-authenticate` header: `Bearer realm="http://host/path", error="invalid_token"`.
    pub www_authenticate: String,
}

/// One JwtRule (Envoy's provider), ready to verify.
struct Rule {
    issuer: String,
    /// Without `http(s)://` and a trailing `/`, as Envoy compares them.
    audiences: Vec<String>,
    keys: Keys,
    locations: Locations,
    payload_header: Option<HeaderName>,
    forward: bool,
    claim_headers: Vec<ClaimHeader>,
}

enum Keys {
    Set(Jwks),
    /// A key set without a usable key: "Jwks doesn't have any valid public key".
    Invalid,
    /// No key set (istiod could not have it): "Jwt verification fails".
    Unavailable,
}

struct ClaimHeader {
    header: HeaderName,
    /// `a.b` split on dots.
    path: Vec<String>,
}

/// A verified token, owned so that the request can be edited afterwards.
struct Accepted {
    place: Place,
    payload_b64: String,
    iss: String,
    sub: String,
    audiences: Vec<String>,
    payload: Map<String, Value>,
}

impl std::fmt::Debug for JwtAuthn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthn")
            .field(
                "issuers",
                &self
                    .rules
                    .iter()
                    .map(|r| r.issuer.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl JwtAuthn {
    /// Parses `rules` (in the order istiod would list them). A rule whose key set is unusable
    /// fails every token of its issuer (logged once, at WARN, with the reason); a header name
    /// that is not one is left out (also logged). Never panics.
    pub fn new(rules: &[xds::JwtRule]) -> JwtAuthn {
        let mut output_headers = Vec::new();
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| Rule::new(i, rule, &mut output_headers))
            .collect();
        JwtAuthn {
            rules,
            output_headers,
        }
    }

    /// Whether no rule applies (then [`JwtAuthn::authenticate`] always answers
    /// [`Outcome::NoToken`] and edits nothing).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Finds tokens in the request as the rules say, verifies them (signature, iss, aud,
    /// exp/nbf with Envoy's 60 s clock skew), edits the request as Envoy does on success
    /// (removes the token unless forwardOriginalToken, sets outputPayloadToHeader,
    /// outputClaimToHeaders) and returns the outcome.
    ///
    /// `scheme` is the request's scheme as the connection manager settled it (Envoy's
    /// `:scheme`); a denial's realm names the request with it.
    pub fn authenticate(&self, parts: &mut Parts, scheme: &str, now: SystemTime) -> Outcome {
        if self.rules.is_empty() {
            return Outcome::NoToken;
        }
        for header in &self.output_headers {
            parts.headers.remove(header);
        }
        if is_cors_preflight(parts) {
            return Outcome::Preflight;
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());

        // Envoy's `requires_any` over the rules, then over `all of {rule or allow_missing}`.
        let mut first_present = None;
        let mut status = Status::JwtMissed;
        for rule in &self.rules {
            match rule.verify_request(parts, now) {
                Ok(accepted) => return Outcome::Verified(rule.accept(accepted, parts)),
                Err(failed) => {
                    if failed != Status::JwtMissed && first_present.is_none() {
                        first_present = Some(failed);
                    }
                    status = prefer(status, failed);
                }
            }
        }
        match first_present {
            // Every rule missed: `all of {rule or allow_missing}` holds.
            None => Outcome::NoToken,
            Some(all) => Outcome::Denied(Denial::new(prefer(status, all), parts, scheme)),
        }
    }
}

/// Envoy's `requires_any` choice of the error to report, fed child after child: a real error
/// replaces whatever came before; "issuer not configured" replaces only "missing".
fn prefer(so_far: Status, next: Status) -> Status {
    let real = !matches!(next, Status::JwtMissed | Status::JwtUnknownIssuer);
    if real || so_far == Status::JwtMissed {
        next
    } else {
        so_far
    }
}

/// Envoy's `isCorsPreflightRequest`.
fn is_cors_preflight(parts: &Parts) -> bool {
    let present = |name: HeaderName| parts.headers.get(name).is_some_and(|v| !v.is_empty());
    parts.method == http::Method::OPTIONS
        && present(http::header::ORIGIN)
        && present(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl Rule {
    fn new(index: usize, rule: &xds::JwtRule, output_headers: &mut Vec<HeaderName>) -> Rule {
        let mut problems = Vec::new();
        let keys = if rule.jwks.is_empty() {
            problems.push(match rule.jwks_uri.as_str() {
                "" => "no key set: every token fails verification".to_owned(),
                uri => format!("no key set from {uri}: every token fails verification"),
            });
            Keys::Unavailable
        } else {
            match Jwks::parse(&rule.jwks) {
                Ok(jwks) => {
                    problems.extend(
                        jwks.skipped
                            .iter()
                            .map(|why| format!("jwks: {why} (skipped)")),
                    );
                    Keys::Set(jwks)
                }
                Err(error) => {
                    problems.push(format!("jwks: {error}: every token fails verification"));
                    Keys::Invalid
                }
            }
        };
        let locations = Locations::new(rule, &mut problems);
        let mut header = |field: String, name: &str| match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => {
                output_headers.push(name.clone());
                Some(name)
            }
            Err(_) => {
                problems.push(format!("{field} {name:?} is not a header name: left out"));
                None
            }
        };
        let payload_header = match rule.output_payload_to_header.as_str() {
            "" => None,
            name => header("outputPayloadToHeader".to_owned(), name),
        };
        let claim_headers = rule
            .output_claim_to_headers
            .iter()
            .enumerate()
            .filter_map(|(i, claim)| {
                let header = header(format!("outputClaimToHeaders[{i}].header"), &claim.header)?;
                Some(ClaimHeader {
                    header,
                    path: claim.claim.split('.').map(str::to_owned).collect(),
                })
            })
            .collect();
        for problem in &problems {
            tracing::warn!(rule = index, issuer = %rule.issuer, "RequestAuthentication jwtRules[{index}]: {problem}");
        }
        Rule {
            issuer: rule.issuer.clone(),
            audiences: rule
                .audiences
                .iter()
                .map(|a| bare_audience(a).to_owned())
                .collect(),
            keys,
            locations,
            payload_header,
            forward: rule.forward_original_token,
            claim_headers,
        }
    }

    /// Verifies every token in this rule's locations (Envoy's authenticator for one provider),
    /// in the order Envoy does: the tokens verified before the last one, and the last one;
    /// `JwtMissed` when there is none.
    fn verify_request(&self, parts: &Parts, now: u64) -> Result<(Vec<Accepted>, Accepted), Status> {
        let found = self.locations.extract(parts);
        // Envoy takes the tokens from the back of its list.
        let mut accepted = found
            .iter()
            .rev()
            .map(|found| {
                let jwt = self.verify(&found.token, now)?;
                Ok(Accepted {
                    place: found.place,
                    payload_b64: jwt.payload_b64.to_owned(),
                    iss: jwt.iss,
                    sub: jwt.sub,
                    audiences: jwt.audiences,
                    payload: jwt.payload,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let last = accepted.pop().ok_or(Status::JwtMissed)?;
        Ok((accepted, last))
    }

    /// One token, checked in Envoy's order.
    fn verify<'t>(&self, token: &'t str, now: u64) -> Result<Jwt<'t>, Status> {
        let jwt = Jwt::parse(token)?;
        if !self.issuer.is_empty() && jwt.iss != self.issuer {
            return Err(Status::JwtUnknownIssuer);
        }
        jwt.check_time(now)?;
        if !self.audiences.is_empty()
            && !jwt
                .audiences
                .iter()
                .any(|aud| self.audiences.iter().any(|a| a == bare_audience(aud)))
        {
            return Err(Status::JwtAudienceNotAllowed);
        }
        match &self.keys {
            Keys::Set(jwks) => jwks.verify(&jwt, jwt.signed_data(token).as_bytes())?,
            Keys::Invalid => return Err(Status::JwksNoValidKeys),
            Keys::Unavailable => return Err(Status::JwtVerificationFail),
        }
        Ok(jwt)
    }

    /// Edits the request for the verified tokens (Envoy's `handleGoodJwt`, token after token)
    /// and describes the last one.
    fn accept(&self, (earlier, last): (Vec<Accepted>, Accepted), parts: &mut Parts) -> Verified {
        for token in earlier.iter().chain([&last]) {
            if let Some(header) = &self.payload_header
                && let Ok(value) = HeaderValue::from_str(&token.payload_b64)
            {
                parts.headers.append(header.clone(), value);
            }
            for claim in &self.claim_headers {
                if let Some(value) = claim_header_value(&token.payload, &claim.path) {
                    parts.headers.append(claim.header.clone(), value);
                }
            }
            if !self.forward {
                self.locations.remove(token.place, parts);
            }
        }
        Verified::from(last)
    }
}

impl From<Accepted> for Verified {
    fn from(token: Accepted) -> Verified {
        let mut claims = token.payload;
        for name in ["scope", "permission"] {
            if let Some(Value::String(spaced)) = claims.get(name) {
                let list: Vec<Value> = spaced
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect();
                if !list.is_empty() {
                    claims.insert(name.to_owned(), Value::Array(list));
                }
            }
        }
        let presenter = claims.get("azp").and_then(Value::as_str).map(str::to_owned);
        Verified {
            principal: format!("{}/{}", token.iss, token.sub),
            issuer: token.iss,
            subject: token.sub,
            audiences: token.audiences,
            presenter,
            claims: Value::Object(claims),
        }
    }
}

/// An audience as Envoy compares it: without `http://` or `https://` and a trailing `/`.
fn bare_audience(aud: &str) -> &str {
    let aud = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    aud.strip_suffix('/').unwrap_or(aud)
}

/// The value Envoy writes for a claim (`addJWTClaimToHeader`); `None` when it writes nothing.
fn claim_header_value(payload: &Map<String, Value>, path: &[String]) -> Option<HeaderValue> {
    let (last, parents) = path.split_last()?;
    let mut object = payload;
    for name in parents {
        object = object.get(name)?.as_object()?;
    }
    let text = match object.get(last)? {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Number(n) => Cow::Owned(number_text(n.as_f64()?)),
        nested @ (Value::Object(_) | Value::Array(_)) => {
            Cow::Owned(STANDARD.encode(serde_json::to_string(nested).ok()?))
        }
        Value::Null => return None,
    };
    if text.is_empty() {
        return None;
    }
    HeaderValue::from_str(&text).ok()
}

/// Envoy's `convertClaimDoubleToString`: whole non-negative numbers as integers, others as
/// `std::to_string(double)` (`%f`).
fn number_text(n: f64) -> String {
    if n < 0.0 || n >= u64::MAX as f64 || n.fract() != 0.0 {
        format!("{n:.6}")
    } else {
        // Whole, non-negative and in range: the cast is exact.
        (n as u64).to_string()
    }
}

impl Denial {
    fn new(status: Status, parts: &Parts, scheme: &str) -> Denial {
        let body = status.message();
        Denial {
            status: if status == Status::JwtAudienceNotAllowed {
                http::StatusCode::FORBIDDEN
            } else {
                http::StatusCode::UNAUTHORIZED
            },
            body,
            details: format!(
                "jwt_authn_access_denied{{{}}}",
                body.replace([' ', '\t', '\n', '\r', '\x0b', '\x0c'], "_")
            ),
            www_authenticate: format!(
                "Bearer realm=\"{}\", error=\"invalid_token\"",
                original_uri(parts, scheme)
            ),
        }
    }
}

/// Envoy's `buildOriginalUri` (path cut at 256 bytes); empty without a path.
fn original_uri(parts: &Parts, scheme: &str) -> String {
    const MAX_PATH: usize = 256;
    let Some(path) = parts.uri.path_and_query().map(|p| p.as_str()) else {
        return String::new();
    };
    // A URI is ASCII: any byte is a character boundary.
    let path = path.get(..MAX_PATH).unwrap_or(path);
    let host = match parts.uri.authority() {
        Some(authority) => authority.as_str(),
        None => parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default(),
    };
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests;
