//! RequestAuthentication: which JWTs a workload accepts (Istio's
//! `request_authentication.proto`).
//!
//! Ama does not validate JWTs yet: the type is here so that a policy is checked like any other
//! (unknown fields are errors) and so that the control plane can fail closed on the workloads it
//! selects (see [`crate::support`]).

use serde::Deserialize;

use super::authorization_policy::PolicyTargetReference;
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
        if let Some(s) = &self.selector {
            p.selector_labels(&format!("{at}.selector.matchLabels"), &s.match_labels);
        }
        if self.selector.is_some() && (self.target_ref.is_some() || !self.target_refs.is_empty()) {
            p.add(at, "selector and targetRef exclude each other: set one");
        }
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
                }
            }
        }
    }
}
