//! `Authorization`: the security policies of the workloads they select: PeerAuthentication
//! (the mTLS modes), AuthorizationPolicy (who may do what) and RequestAuthentication (which
//! JWTs are accepted), all enforced on the inbound path of the proxies they select.
//!
//! The control plane resolves what the proxy cannot (inherited mTLS modes, a `targetRef`'s
//! Service, a `jwksUri`'s key set) and marks what Ama cannot evaluate ([`Rule::unsupported`]) so
//! that the proxy errs on the side of denying.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::ValidationErrors;

/// PeerAuthentication mTLS mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent: port → workload → namespace → mesh; PERMISSIVE when nothing
    /// sets a mode (Istio's `UNSET`).
    #[default]
    Unset,
    /// Accept mTLS and plaintext (Istio's default).
    Permissive,
    /// mTLS only.
    Strict,
    /// Plaintext only.
    Disable,
}

/// PeerAuthentication: which mTLS mode the selected workloads accept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// Workload-wide mode; `UNSET` inherits the namespace's (then the mesh's).
    #[serde(default)]
    pub mode: MtlsMode,
    /// Per-port overrides, by the workload's (container) port; `UNSET` inherits `mode`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<u16, MtlsMode>,
}

/// The PeerAuthentication modes in force for one workload: the workload-wide mode and the
/// (workload) ports that override it, after Istio's inheritance: a port, then the workload
/// policy (a selector matching the workload's labels in its namespace), then the namespace
/// policy (no selector), then the mesh policy (no selector, in the root namespace); PERMISSIVE
/// when none sets a mode. Never `UNSET`. The proxy resolves its own inbound mode with it, and
/// discovery the mode of each endpoint it sends (auto mTLS sends plaintext to DISABLE).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EffectiveMtls {
    /// Workload-wide mode.
    pub mode: MtlsMode,
    /// The workload policy's port-level overrides, by workload (container) port.
    pub ports: Vec<(u16, MtlsMode)>,
}

impl Default for EffectiveMtls {
    fn default() -> Self {
        EffectiveMtls {
            mode: MtlsMode::Permissive,
            ports: Vec::new(),
        }
    }
}

impl EffectiveMtls {
    /// Resolves the PeerAuthentications among `authorizations` for a workload in `namespace`
    /// with `labels`; mesh-wide ones live in `root_namespace`. Pure.
    pub fn resolve(
        authorizations: &[Authorization],
        root_namespace: &str,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> EffectiveMtls {
        let first = |pick: &dyn Fn(&Authorization) -> bool| -> Option<&PeerAuthentication> {
            authorizations
                .iter()
                .filter(|a| pick(a))
                .find_map(|a| a.peer_authentication.as_ref())
        };
        let in_ns = |a: &Authorization| Some(a.namespace.as_str()) == namespace;
        let mesh = first(&|a| a.namespace == root_namespace && a.selector.is_empty());
        let ns = first(&|a| in_ns(a) && a.selector.is_empty());
        let workload = first(&|a| {
            in_ns(a)
                && !a.selector.is_empty()
                && a.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        });
        let mode = [workload, ns, mesh]
            .into_iter()
            .flatten()
            .map(|p| p.mode)
            .find(|m| *m != MtlsMode::Unset)
            .unwrap_or(MtlsMode::Permissive);
        let ports = workload
            .map(|p| {
                p.port_level_mtls
                    .iter()
                    .filter(|(_, m)| **m != MtlsMode::Unset)
                    .map(|(port, m)| (*port, *m))
                    .collect()
            })
            .unwrap_or_default();
        EffectiveMtls { mode, ports }
    }

    /// The mode on (workload) port `port`.
    pub fn mode(&self, port: u16) -> MtlsMode {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(self.mode, |(_, m)| *m)
    }
}

/// What an AuthorizationPolicy does with the requests its rules match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Allow matching requests; once any ALLOW policy selects a workload, a request that none
    /// matches is denied.
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Log matching requests; decides nothing.
    Audit,
    /// Ask an external authorizer. Ama implements no such provider: a CUSTOM policy denies the
    /// requests it matches (fail closed), evaluated before DENY policies as Istio does.
    Custom,
}

/// An AuthorizationPolicy (Istio's `authorization_policy.proto`), as the proxy evaluates it.
///
/// Evaluation, per request and in this order (Istio's): a CUSTOM policy that matches denies; a
/// DENY policy that matches denies; if any ALLOW policy selects the workload, the request must
/// match one of them; AUDIT policies only log. A policy matches when any of its rules does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// What a match does.
    #[serde(default)]
    pub action: Action,
    /// The CUSTOM action's provider, by its MeshConfig name (named in the denial's log line).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// Rules; none matches nothing (so an ALLOW policy without rules allows nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// A dry run (Istio's `istio.io/dry-run` annotation): the policy decides nothing; the proxy
    /// evaluates it as Envoy's RBAC shadow rules (a DENY one as a shadow DENY engine, an ALLOW
    /// one as a shadow ALLOW engine), counts the result under the shadow stat prefixes
    /// `istio_dry_run_deny_` / `istio_dry_run_allow_` and logs what it would have denied. Only
    /// ALLOW and DENY policies are dry runs (Istio rejects the annotation on the others); the
    /// proxy enforces a CUSTOM or AUDIT policy that says otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// One rule: any of `from`, and any of `to`, and every one of `when` (an empty list is no
/// condition).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Source>,
    /// Operations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Operation>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
    /// Parts of the rule as written that Ama cannot evaluate, by their path in the policy
    /// (`rules[0].when[1]: key experimental.envoy.filters.foo`). The rule then errs on the
    /// side of denying: in an ALLOW or AUDIT policy it matches no request; in a DENY or CUSTOM
    /// policy those parts match every request (the other parts still apply). The control plane
    /// reports each one as an error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsupported: Vec<String>,
}

/// A source: every set field must match. Values match as Istio's do: exact, `prefix*`,
/// `*suffix`, or `*` (present).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities from mTLS, without `spiffe://` (`cluster.local/ns/default/sa/sleep`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Peer identities that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Request identities, `iss/sub` of a verified JWT.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// Request identities that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Peer namespaces (from the peer's mTLS identity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Service accounts of the peer's mTLS identity: `namespace/name`, or `name` in the
    /// policy's namespace; exact, any trust domain (Istio's `serviceAccounts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Service accounts that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    /// Addresses (IP or CIDR) of the connection's peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Peer addresses that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// Addresses of the original client (`X-Forwarded-For`, else the peer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    /// Original client addresses that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// An operation: every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Hosts (the request's authority, case-insensitive; `prefix*`, `*suffix`, `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Hosts that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination (workload) ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Ports that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
    /// Methods (exact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Methods that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Paths, without the query: exact, `prefix*`, `*suffix`, `*`, or a template with `{*}`
    /// (one segment) and `{**}` (the rest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// A condition on one attribute (Istio's "Authorization Policy Conditions"): the attribute
/// must match one of `values` (when set) and none of `not_values`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// One of [`CONDITION_KEYS`], or `request.headers[NAME]`, or `request.auth.claims[NAME]`
    /// (nested claims as `request.auth.claims[a][b]`).
    pub key: String,
    /// Values that match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// The condition keys a proxy evaluates, besides `request.headers[NAME]` and
/// `request.auth.claims[NAME]`.
pub const CONDITION_KEYS: [&str; 11] = [
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// A RequestAuthentication (Istio's `request_authentication.proto`): the JWTs a workload
/// accepts. A request with no token passes (an AuthorizationPolicy can require one with
/// `requestPrincipals`); a request with a token that none of the rules verifies is answered
/// `401`, as Envoy's `jwt_authn` filter answers under Istio.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    /// Accepted issuers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// One accepted issuer and how its tokens are found and verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// `iss` of the tokens.
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The JSON Web Key Set, inline as written or fetched by the control plane from
    /// `jwks_uri` (as istiod does). Empty when it could not be had: every token of this
    /// issuer then fails verification.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks: String,
    /// Where `jwks` was fetched from, when it was (for the proxy's messages only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks_uri: String,
    /// Headers that carry the token, with their prefix. With none of `from_headers`,
    /// `from_params` and `from_cookies` set: `Authorization: Bearer <token>` and the query
    /// parameter `access_token`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters that carry the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Cookies that carry the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// A header to set to the verified payload (base64url, as Envoy writes it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_payload_to_header: String,
    /// Keep the token in the request forwarded to the app (it is removed otherwise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_original_token: bool,
    /// Claims copied into request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

/// A header that carries a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// The header's name.
    pub name: String,
    /// What precedes the token in the value (`Bearer `).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// A claim copied into a request header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// The header.
    pub header: String,
    /// The claim (a top-level claim; nested with `.`).
    pub claim: String,
}

/// The security policies of the workloads a selector picks in a namespace (the root
/// namespace's apply mesh-wide): exactly one of a PeerAuthentication, an AuthorizationPolicy
/// or a RequestAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    /// Name: the AuthorizationPolicy's own (it names denials:
    /// `ns[NAMESPACE]-policy[NAME]-rule[I]`); the other kinds carry a prefix.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Workload label selector; empty selects every workload of the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// A PeerAuthentication: the mTLS modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_authentication: Option<PeerAuthentication>,
    /// An AuthorizationPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<AuthorizationPolicy>,
    /// A RequestAuthentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_authentication: Option<RequestAuthentication>,
}

impl Authorization {
    /// Whether this applies to a workload in `namespace` with `labels`: a selector in its own
    /// namespace, its namespace as a whole, or the whole mesh from `root_namespace`. Selectors
    /// in the root namespace select in the root namespace only, as in Istio.
    pub fn selects(
        &self,
        root_namespace: &str,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        if self.selector.is_empty() {
            self.namespace == root_namespace || Some(self.namespace.as_str()) == namespace
        } else {
            Some(self.namespace.as_str()) == namespace
                && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        }
    }

    pub(crate) fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        if self.name.is_empty() {
            errs.push(format!("{path}.name"), "must not be empty");
        }
        if self.namespace.is_empty() {
            errs.push(format!("{path}.namespace"), "must not be empty");
        }
        let kinds = usize::from(self.peer_authentication.is_some())
            + usize::from(self.policy.is_some())
            + usize::from(self.request_authentication.is_some());
        if kinds != 1 {
            errs.push(
                path,
                "must carry exactly one of peerAuthentication, policy and requestAuthentication",
            );
        }
        if let Some(p) = &self.policy {
            for (i, r) in p.rules.iter().enumerate() {
                r.validate(&format!("{path}.policy.rules[{i}]"), errs);
            }
        }
        if let Some(ra) = &self.request_authentication {
            for (i, j) in ra.jwt_rules.iter().enumerate() {
                let at = format!("{path}.requestAuthentication.jwtRules[{i}]");
                if j.issuer.is_empty() {
                    errs.push(format!("{at}.issuer"), "must not be empty");
                }
                if !j.jwks.is_empty() && serde_json::from_str::<serde_json::Value>(&j.jwks).is_err()
                {
                    errs.push(format!("{at}.jwks"), "must be a JSON Web Key Set (JSON)");
                }
                for (k, h) in j.from_headers.iter().enumerate() {
                    if h.name.is_empty() {
                        errs.push(format!("{at}.fromHeaders[{k}].name"), "must not be empty");
                    }
                }
            }
        }
    }
}

impl Rule {
    fn validate(&self, at: &str, errs: &mut ValidationErrors) {
        for (j, s) in self.from.iter().enumerate() {
            for (name, list) in [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ] {
                for (k, ip) in list.iter().enumerate() {
                    if !is_ip_or_cidr(ip) {
                        errs.push(
                            format!("{at}.from[{j}].{name}[{k}]"),
                            "must be an IP or a CIDR",
                        );
                    }
                }
            }
        }
        for (j, o) in self.to.iter().enumerate() {
            for (name, list) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                if list.contains(&0) {
                    errs.push(format!("{at}.to[{j}].{name}"), "must be 1..65535");
                }
            }
        }
        for (j, c) in self.when.iter().enumerate() {
            if !condition_key_known(&c.key) {
                errs.push(
                    format!("{at}.when[{j}].key"),
                    format!("{:?} is not a condition key a proxy evaluates", c.key),
                );
            }
            if matches!(c.key.as_str(), "source.ip" | "remote.ip" | "destination.ip") {
                for (k, v) in c.values.iter().chain(&c.not_values).enumerate() {
                    if !is_ip_or_cidr(v) {
                        errs.push(
                            format!("{at}.when[{j}].values[{k}]"),
                            "must be an IP or a CIDR",
                        );
                    }
                }
            }
        }
    }
}

/// Whether `key` is one a proxy evaluates: one of [`CONDITION_KEYS`], or
/// `request.headers[NAME]`, or `request.auth.claims[NAME]...`.
pub fn condition_key_known(key: &str) -> bool {
    if CONDITION_KEYS.contains(&key) {
        return true;
    }
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix).is_some_and(|rest| {
            rest.len() > 2 && rest.starts_with('[') && rest.ends_with(']') && !rest.contains("[]")
        })
    };
    bracketed("request.headers") || bracketed("request.auth.claims")
}

/// An IPv4 or IPv6 address, or a CIDR block.
fn is_ip_or_cidr(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::{Action, AuthorizationPolicy, condition_key_known, is_ip_or_cidr};

    #[test]
    fn dry_run_on_the_wire_only_when_set() {
        let p: AuthorizationPolicy =
            serde_json::from_str(r#"{"action": "DENY", "dryRun": true}"#).expect("parses");
        assert!(p.dry_run);
        assert_eq!(p.action, Action::Deny);
        let enforced = AuthorizationPolicy::default();
        let text = serde_json::to_string(&enforced).expect("serializes");
        assert!(!text.contains("dryRun"), "{text}");
        let back: AuthorizationPolicy = serde_json::from_str(&text).expect("parses");
        assert!(!back.dry_run);
    }

    #[test]
    fn addresses_and_blocks() {
        for ok in ["10.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "0.0.0.0/0"] {
            assert!(is_ip_or_cidr(ok), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0",
            "x/8",
            "10.0.0.0/",
            "fd00::/129",
        ] {
            assert!(!is_ip_or_cidr(bad), "{bad}");
        }
    }

    #[test]
    fn condition_keys() {
        for ok in [
            "source.ip",
            "request.headers[x-user]",
            "request.auth.claims[groups]",
            "request.auth.claims[a][b]",
        ] {
            assert!(condition_key_known(ok), "{ok}");
        }
        for bad in [
            "request.headers",
            "request.headers[]",
            "request.auth.claims",
            "experimental.envoy.filters.network.mysql_proxy[db.table]",
            "source.ips",
        ] {
            assert!(!condition_key_known(bad), "{bad}");
        }
    }
}
