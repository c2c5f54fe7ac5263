//! RequestAuthentication: which JWTs a workload accepts (Istio's
//! `request_authentication.proto`).
//!
//! The control plane sends each rule to the proxies it selects with the key set inline: `jwks`
//! as written once [`jwks_problem`] finds it a JSON Web Key Set, or the set discovery fetched
//! from `jwksUri`, as istiod does.

use serde::Deserialize;

use super::authorization_policy::{PolicyTargetReference, validate_targets};
use crate::check::Problems;
use crate::networking::WorkloadSelector;

/// The spec of a RequestAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    /// Workloads it applies to (the namespace, or the mesh in the root namespace, when unset).
    pub selector: Option<WorkloadSelector>,
    /// A resource it applies to instead of a selector (a Gateway API reference).
    pub target_ref: Option<PolicyTargetReference>,
    /// Several such resources.
    pub target_refs: Vec<PolicyTargetReference>,
    /// The accepted issuers and how to verify their tokens.
    pub jwt_rules: Vec<JwtRule>,
}

/// One accepted JWT issuer.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// `iss` of the tokens. Required.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Where the JSON Web Key Set is fetched.
    pub jwks_uri: String,
    /// The JSON Web Key Set itself.
    pub jwks: String,
    /// Headers that carry the token.
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters that carry the token.
    pub from_params: Vec<String>,
    /// Cookies that carry the token.
    pub from_cookies: Vec<String>,
    /// Header to copy the verified payload into.
    pub output_payload_to_header: String,
    /// Keep the token in the forwarded request.
    pub forward_original_token: bool,
    /// Claims copied into headers.
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Timeout of the JWKS fetch.
    pub timeout: Option<crate::Duration>,
}

/// A header that carries a token, with its prefix (`Bearer `).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name. Required.
    pub name: String,
    /// Prefix before the token.
    pub prefix: String,
}

/// A claim copied into a request header.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// The header. Required.
    pub header: String,
    /// The claim. Required.
    pub claim: String,
}

impl RequestAuthentication {
    /// Checks the spec (at path `at`, normally `spec`), as Istio's validation does.
    pub fn validate(&self, at: &str, p: &mut Problems) {
        validate_targets(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
            at,
            p,
        );
        for (i, rule) in self.jwt_rules.iter().enumerate() {
            let at = format!("{at}.jwtRules[{i}]");
            if rule.issuer.is_empty() {
                p.add(
                    format!("{at}.issuer"),
                    "missing: a JWT rule needs an issuer",
                );
            }
            if !rule.jwks_uri.is_empty() && !rule.jwks.is_empty() {
                p.add(&at, "jwksUri and jwks exclude each other: set one");
            }
            if !rule.jwks_uri.is_empty()
                && let Err(m) = jwks_uri(&rule.jwks_uri)
            {
                p.add(format!("{at}.jwksUri"), m);
            }
            for (name, list) in [
                ("audiences", &rule.audiences),
                ("fromParams", &rule.from_params),
                ("fromCookies", &rule.from_cookies),
            ] {
                for (j, v) in list.iter().enumerate() {
                    if v.is_empty() {
                        p.add(format!("{at}.{name}[{j}]"), "must not be empty");
                    }
                }
            }
            if let Some(t) = rule.timeout
                && t.get() < std::time::Duration::from_millis(1)
            {
                p.add(format!("{at}.timeout"), "must be at least 1ms");
            }
            for (j, h) in rule.from_headers.iter().enumerate() {
                if h.name.is_empty() {
                    p.add(
                        format!("{at}.fromHeaders[{j}].name"),
                        "missing: a header needs a name",
                    );
                }
            }
            for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
                if c.header.is_empty() || c.claim.is_empty() {
                    p.add(
                        format!("{at}.outputClaimToHeaders[{j}]"),
                        "needs both header and claim",
                    );
                } else if !c
                    .header
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                {
                    p.add(
                        format!("{at}.outputClaimToHeaders[{j}].header"),
                        format!(
                            "\"{}\" is not a header name: letters, digits and '-' only",
                            c.header
                        ),
                    );
                }
            }
        }
    }
}

/// Istio's default timeout of a `jwksUri` fetch.
pub const DEFAULT_JWKS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl JwtRule {
    /// How long a fetch of `jwksUri` may take (`timeout`, Istio's 5 s by default).
    pub fn fetch_timeout(&self) -> std::time::Duration {
        self.timeout
            .map_or(DEFAULT_JWKS_TIMEOUT, crate::Duration::get)
    }
}

/// Checks a `jwksUri` as Istio's `ParseJwksURI` does: an `http` or `https` URL with a host.
pub fn jwks_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    match host {
        Some(h) if !h.is_empty() && !h.contains(char::is_whitespace) => Ok(()),
        _ => Err(format!("\"{uri}\" is not an http or https URL")),
    }
}

/// Why `text` is not a JSON Web Key Set (RFC 7517: an object whose `keys` is a list of
/// objects, each with a `kty`), or `None` when it is one. The inline `jwks` and every fetched
/// set are checked with it; the proxy verifies the keys themselves.
pub fn jwks_problem(text: &str) -> Option<String> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Some(format!("not JSON: {e}")),
    };
    let Some(keys) = value.get("keys").and_then(serde_json::Value::as_array) else {
        return Some("no \"keys\" list".to_string());
    };
    keys.iter().enumerate().find_map(|(i, k)| {
        let kty = k.get("kty").and_then(serde_json::Value::as_str);
        kty.is_none()
            .then(|| format!("keys[{i}] is not a JSON Web Key (no \"kty\")"))
    })
}
