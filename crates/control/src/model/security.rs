//! AuthorizationPolicy and RequestAuthentication → [`xds::Authorization`], as pilot translates
//! them for sidecars (`pilot/pkg/security/authz`, `pilot/pkg/security/authn`).
//!
//! **Binding.** A policy binds the workloads of its `selector.matchLabels` in its namespace; no
//! selector binds its whole namespace, or the whole mesh from the root namespace
//! ([`xds::Authorization::selects`]). `targetRef`/`targetRefs` to a Service (group `""` or
//! `core`) bind the pods of that Service's selector in the policy's namespace: one entry per
//! Service, the first named as the policy, the others `<name>#<index in targetRefs>` (names are
//! unique per namespace on the wire). Istio applies such policies to the Service's waypoint;
//! Ama, which has none, to the Service's sidecars, so the policy is enforced rather than dropped.
//! A Service that does not exist or has no selector binds nothing, with a warning naming it;
//! other target kinds (Gateway, GatewayClass, ServiceEntry) bind no sidecar and
//! [`api::support`] reports them. A policy with targets never falls back to its namespace.
//!
//! **AuthorizationPolicy.** Named as the policy (the proxy names denials after it). Action,
//! provider, and every rule copied: `from.source.*` (`serviceAccounts` as written: the proxy
//! resolves a bare name in the policy's namespace), `to.operation.*` (ports as numbers),
//! `when[]`. A condition Ama cannot evaluate ([`api::security::authorization_policy::
//! condition_key_evaluated`], and anything the wire's [`xds::condition_key_known`] refuses) is
//! not sent as a condition: its path goes into [`xds::Rule::unsupported`], so the proxy errs on
//! the side of denying, and [`api::support`] reports it as an error.
//!
//! **Dry run.** The `istio.io/dry-run` annotation, read as pilot reads it
//! ([`ap::is_dry_run`]: Go's `ParseBool`, ALLOW and DENY only), sets
//! [`xds::AuthorizationPolicy::dry_run`]: the proxy evaluates the policy as Envoy's shadow
//! rules and enforces nothing of it. A value Istio rejects leaves the policy enforced
//! ([`api::support`] reports it).
//!
//! **A policy Ama cannot read** ([`api::objects::UnreadablePolicy`]: an unknown field, a bad
//! value): bound as the policy would have been, named as it would have been, and sent as DENY
//! with one empty rule, which denies every request to the workloads it binds until it is fixed
//! (security fails closed; [`api::objects`] reports it as an error).
//!
//! **RequestAuthentication.** Named `converted_request_authentication_<name>`, every JWT rule
//! field copied, the key set inline: `jwks` as written when it is a JSON Web Key Set, else
//! empty (every token of the issuer fails: fail closed, reported by [`api::support`]); for
//! `jwksUri`, the set discovery fetched ([`crate::jwks`]), handed to the model as
//! [`FetchedJwks`] so the model stays pure; until it is fetched, empty, as istiod sends its fake
//! key set. A rule with neither finds its set as istiod does, through the OpenID Connect
//! discovery document of its issuer (`jwks_source_of`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use api::objects::{IstioConfig, Object};
use api::security::PolicyKind;
use api::security::authorization_policy::{
    self as ap, AuthorizationPolicy, PolicyTargetReference, condition_key_evaluated,
};
use api::security::request_authentication::{self as ra, RequestAuthentication, jwks_problem};

use super::{Labels, Warnings};

/// Name prefix of the entries carrying a RequestAuthentication. They cannot collide with an
/// AuthorizationPolicy's, which carry the policy's own name: an object's name is a DNS name,
/// without `_`.
pub const REQUEST_AUTHENTICATION_PREFIX: &str = "converted_request_authentication_";

/// The key sets fetched from `jwksUri`s, by URI: the set, or why it could not be had. A URI not
/// here has not been fetched yet.
pub type FetchedJwks = BTreeMap<String, Result<String, String>>;

/// A key set the mesh's RequestAuthentications need: a `jwksUri`, or for a rule with neither
/// `jwks` nor `jwksUri`, its issuer's OpenID Connect discovery document (istiod's fallback),
/// with the longest `timeout` of the rules that need it (Istio's 5 s when none sets one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct JwksSource {
    /// The URL: the key set's, or the discovery document's (the key of [`FetchedJwks`]).
    pub uri: String,
    /// How long one fetch may take.
    pub timeout: Duration,
    /// `uri` is `<issuer>/.well-known/openid-configuration`, whose `jwks_uri` names the set.
    pub discover: bool,
}

/// Where a rule's key set is fetched from: its `jwksUri`, or with neither `jwks` nor `jwksUri`
/// the OpenID Connect discovery document of an `http(s)` issuer (`(uri, discover)`); `None`
/// for an inline set, or an issuer that is no URL (api::support reports it).
pub(crate) fn jwks_source_of(rule: &ra::JwtRule) -> Option<(String, bool)> {
    if !rule.jwks_uri.is_empty() {
        return Some((rule.jwks_uri.clone(), false));
    }
    if !rule.jwks.is_empty() || ra::jwks_uri(&rule.issuer).is_err() {
        return None;
    }
    Some((
        format!(
            "{}/.well-known/openid-configuration",
            rule.issuer.trim_end_matches('/')
        ),
        true,
    ))
}

/// What the security policies give.
#[derive(Debug, Default)]
pub(crate) struct SecurityOut {
    pub authorizations: Vec<xds::Authorization>,
    pub jwks_sources: Vec<JwksSource>,
}

pub(crate) fn build(
    objects: &[&Object],
    jwks: &FetchedJwks,
    warnings: &mut Warnings,
) -> SecurityOut {
    let services: BTreeMap<(&str, &str), &Labels> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some((
                (s.metadata.namespace.as_str(), s.metadata.name.as_str()),
                &s.spec.selector,
            )),
            _ => None,
        })
        .collect();
    let mut out = SecurityOut::default();
    let mut sources: BTreeMap<String, (Duration, bool)> = BTreeMap::new();
    for o in objects {
        match o {
            Object::AuthorizationPolicy(p) => {
                let mut policy = authorization_policy(&p.spec);
                policy.dry_run = ap::is_dry_run(&p.metadata.annotations, p.spec.action());
                let targets = ap::targets(p.spec.target_ref.as_ref(), &p.spec.target_refs, "spec");
                let bound = bindings(o, &p.spec.selector, &targets, &services, warnings);
                out.authorizations
                    .extend(entries(p.metadata.name.clone(), o, bound, |a| {
                        a.policy = Some(policy.clone());
                    }));
            }
            Object::UnreadablePolicy(u) => {
                let b = &u.binding;
                let targets = ap::targets(b.target_ref.as_ref(), &b.target_refs, "spec");
                let bound = bindings(o, &b.selector, &targets, &services, warnings);
                let name = match u.kind {
                    PolicyKind::AuthorizationPolicy => u.metadata.name.clone(),
                    PolicyKind::RequestAuthentication => {
                        format!("{REQUEST_AUTHENTICATION_PREFIX}{}", u.metadata.name)
                    }
                    // Taken as STRICT by `model::config`, with the PeerAuthentications it reads.
                    PolicyKind::PeerAuthentication => continue,
                };
                out.authorizations.extend(entries(name, o, bound, |a| {
                    a.policy = Some(deny_everything());
                }));
            }
            Object::RequestAuthentication(r) => {
                for rule in &r.spec.jwt_rules {
                    if let Some((uri, discover)) = jwks_source_of(rule) {
                        let t = sources.entry(uri).or_insert((Duration::ZERO, discover));
                        t.0 = t.0.max(rule.fetch_timeout());
                    }
                }
                let authn = request_authentication(r, jwks, warnings);
                let targets = ap::targets(r.spec.target_ref.as_ref(), &r.spec.target_refs, "spec");
                let bound = bindings(o, &r.spec.selector, &targets, &services, warnings);
                let name = format!("{REQUEST_AUTHENTICATION_PREFIX}{}", r.metadata.name);
                out.authorizations.extend(entries(name, o, bound, |a| {
                    a.request_authentication = Some(authn.clone());
                }));
            }
            _ => {}
        }
    }
    out.jwks_sources = sources
        .into_iter()
        .map(|(uri, (timeout, discover))| JwksSource {
            uri,
            timeout,
            discover,
        })
        .collect();
    out
}

/// The selectors a policy binds (see the module docs), each with the index of the target it
/// comes from (`None`: the policy's own selector, or its namespace); an empty list binds
/// nothing.
fn bindings(
    object: &Object,
    selector: &Option<api::networking::WorkloadSelector>,
    targets: &[(String, &PolicyTargetReference)],
    services: &BTreeMap<(&str, &str), &Labels>,
    warnings: &mut Warnings,
) -> Vec<(Option<usize>, Labels)> {
    if targets.is_empty() {
        let labels = selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .unwrap_or_default();
        return vec![(None, labels)];
    }
    let ns = object.metadata().namespace.as_str();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, (field, t)) in targets.iter().enumerate() {
        if !t.is_service() {
            continue; // api::support reports what other kinds bind.
        }
        match services.get(&(ns, t.name.as_str())) {
            None => warnings.add(
                object.display(),
                format!(
                    "{field}: Service {ns}/{} does not exist: this reference binds nothing",
                    t.name
                ),
            ),
            Some(labels) if labels.is_empty() => warnings.add(
                object.display(),
                format!(
                    "{field}: Service {ns}/{} has no selector: this reference binds nothing",
                    t.name
                ),
            ),
            Some(labels) => {
                if seen.insert(*labels) {
                    out.push((Some(i), (*labels).clone()));
                }
            }
        }
    }
    out
}

/// One entry per binding, named `name` (then `name#i` for the `i`th target after the first).
fn entries(
    name: String,
    object: &Object,
    bound: Vec<(Option<usize>, Labels)>,
    fill: impl Fn(&mut xds::Authorization),
) -> Vec<xds::Authorization> {
    bound
        .into_iter()
        .enumerate()
        .map(|(k, (target, selector))| {
            let name = match (k, target) {
                (0, _) | (_, None) => name.clone(),
                (_, Some(i)) => format!("{name}#{i}"),
            };
            let mut a = xds::Authorization {
                name,
                namespace: object.metadata().namespace.clone(),
                selector,
                ..Default::default()
            };
            fill(&mut a);
            a
        })
        .collect()
}

/// What stands in for a policy Ama cannot read: DENY with one empty rule, which matches every
/// request.
fn deny_everything() -> xds::AuthorizationPolicy {
    xds::AuthorizationPolicy {
        action: xds::Action::Deny,
        provider: String::new(),
        rules: vec![xds::Rule::default()],
        // Enforced even when the policy asked for a dry run: what Ama cannot read fails closed.
        dry_run: false,
    }
}

/// Whether the proxy evaluates a condition on `key`: Istio's validation accepted it (api), Ama
/// evaluates it (api says which), and the wire knows it.
pub(crate) fn condition_evaluated(key: &str) -> bool {
    condition_key_evaluated(key) && xds::condition_key_known(key)
}

/// The policy's action, provider and rules (see the module docs).
pub(crate) fn authorization_policy(spec: &AuthorizationPolicy) -> xds::AuthorizationPolicy {
    let action = match spec.action() {
        ap::Action::Allow => xds::Action::Allow,
        ap::Action::Deny => xds::Action::Deny,
        ap::Action::Audit => xds::Action::Audit,
        ap::Action::Custom => xds::Action::Custom,
    };
    let ports =
        |list: &[String]| -> Vec<u16> { list.iter().filter_map(|p| p.parse().ok()).collect() };
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let from = r
                .from
                .iter()
                .filter_map(|f| f.source.as_ref())
                .map(|s| xds::Source {
                    principals: s.principals.clone(),
                    not_principals: s.not_principals.clone(),
                    request_principals: s.request_principals.clone(),
                    not_request_principals: s.not_request_principals.clone(),
                    namespaces: s.namespaces.clone(),
                    not_namespaces: s.not_namespaces.clone(),
                    service_accounts: s.service_accounts.clone(),
                    not_service_accounts: s.not_service_accounts.clone(),
                    ip_blocks: s.ip_blocks.clone(),
                    not_ip_blocks: s.not_ip_blocks.clone(),
                    remote_ip_blocks: s.remote_ip_blocks.clone(),
                    not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
                })
                .collect();
            let to =
                r.to.iter()
                    .filter_map(|t| t.operation.as_ref())
                    .map(|o| xds::Operation {
                        hosts: o.hosts.clone(),
                        not_hosts: o.not_hosts.clone(),
                        ports: ports(&o.ports),
                        not_ports: ports(&o.not_ports),
                        methods: o.methods.clone(),
                        not_methods: o.not_methods.clone(),
                        paths: o.paths.clone(),
                        not_paths: o.not_paths.clone(),
                    })
                    .collect();
            let (when, unsupported): (Vec<_>, Vec<_>) = r
                .when
                .iter()
                .enumerate()
                .partition(|(_, c)| condition_evaluated(&c.key));
            xds::Rule {
                from,
                to,
                when: when
                    .into_iter()
                    .map(|(_, c)| xds::Condition {
                        key: c.key.clone(),
                        values: c.values.clone(),
                        not_values: c.not_values.clone(),
                    })
                    .collect(),
                unsupported: unsupported
                    .into_iter()
                    .map(|(j, c)| format!("rules[{i}].when[{j}]: key {}", c.key))
                    .collect(),
            }
        })
        .collect();
    xds::AuthorizationPolicy {
        action,
        provider: spec
            .provider
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        rules,
        dry_run: false,
    }
}

/// The JWT rules with their key sets (see the module docs); a `jwksUri` that could not be
/// fetched is a warning naming the rule.
fn request_authentication(
    r: &IstioConfig<RequestAuthentication>,
    fetched: &FetchedJwks,
    warnings: &mut Warnings,
) -> xds::RequestAuthentication {
    let display = format!(
        "RequestAuthentication {}/{}",
        r.metadata.namespace, r.metadata.name
    );
    let jwt_rules = r
        .spec
        .jwt_rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let jwks = if !rule.jwks.is_empty() {
                // api::support reports a bad one; sent empty, it fails every token.
                if jwks_problem(&rule.jwks).is_none() {
                    rule.jwks.clone()
                } else {
                    String::new()
                }
            } else if let Some((uri, discover)) = jwks_source_of(rule) {
                match fetched.get(&uri) {
                    Some(Ok(set)) => set.clone(),
                    Some(Err(why)) => {
                        let field = if discover { "" } else { ".jwksUri" };
                        warnings.add(
                            display.clone(),
                            format!(
                                "spec.jwtRules[{i}]{field}: {uri}: {why}: every token of issuer \
                                 \"{}\" is rejected (401) until the key set is fetched",
                                rule.issuer
                            ),
                        );
                        String::new()
                    }
                    None => String::new(),
                }
            } else {
                String::new()
            };
            jwt_rule(rule, jwks)
        })
        .collect();
    xds::RequestAuthentication { jwt_rules }
}

fn jwt_rule(rule: &ra::JwtRule, jwks: String) -> xds::JwtRule {
    xds::JwtRule {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        jwks,
        jwks_uri: rule.jwks_uri.clone(),
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| xds::JwtHeader {
                name: h.name.clone(),
                prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        output_payload_to_header: rule.output_payload_to_header.clone(),
        forward_original_token: rule.forward_original_token,
        output_claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| xds::ClaimToHeader {
                header: c.header.clone(),
                claim: c.claim.clone(),
            })
            .collect(),
    }
}
