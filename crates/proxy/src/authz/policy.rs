//! The AuthorizationPolicies that select one workload, compiled for one config snapshot, and
//! their evaluation against one request or connection ([`Attributes`]).
//!
//! Compilation follows Istio's builder (`pilot/pkg/security/authz/model`): each rule becomes
//! one Envoy RBAC policy named `ns[NS]-policy[NAME]-rule[I]`; a rule matches when any `from`
//! does (or there is none), any `to` does (or there is none) and every `when` does; within
//! them every set field must match, a field matching one of its values and none of its `not`
//! values. What Ama cannot evaluate (the contract's [`xds::Rule::unsupported`], or a value
//! that does not compile) errs on the side of denying: in ALLOW and AUDIT the rule matches
//! nothing; in DENY and CUSTOM those parts match everything, the rest still apply.
//!
//! A dry-run policy ([`xds::AuthorizationPolicy::dry_run`], Istio's `istio.io/dry-run`) decides
//! nothing: as Istio puts it in Envoy's RBAC shadow rules, it is evaluated in the filter of its
//! action before that filter's enforced rules (a DENY one as a shadow DENY engine, an ALLOW one
//! as a shadow ALLOW engine, with the same matching), its result is counted ([`Outcome`]) and
//! what it would have denied is logged at INFO. Only ALLOW and DENY policies are dry runs (Istio
//! rejects the annotation on the others): a CUSTOM or AUDIT one marked so is enforced.
//!
//! On an opaque TCP connection the HTTP-only fields (hosts, methods, paths, request
//! principals, `request.headers[]`, `request.auth.*`) cannot be known: in ALLOW a rule with
//! any matches nothing; in the other actions they are dropped, so the rule matches more
//! (Istio's "Authorization for TCP traffic").

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;
use ipnet::IpNet;
use regex::Regex;
use xds::Action;

use super::matcher::{self, MatcherError, PathMatch, StrMatch};

/// What a policy looks at: the connection, and the request when there is one. Borrowed from
/// the connection's context and the request's head; nothing is copied.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The mTLS peer's verified identity, `spiffe://cluster.local/ns/foo/sa/sleep`; `None`
    /// without mTLS (then `principals` and `namespaces` match nothing and their `not` forms
    /// match).
    pub principal: Option<&'a str>,
    /// The connection's peer address (`ipBlocks`, `source.ip`).
    pub source_ip: IpAddr,
    /// The original client (`remoteIpBlocks`, `remote.ip`): see [`remote_ip`].
    pub remote_ip: IpAddr,
    /// Where the connection was going: the workload's address and port (`ports`,
    /// `destination.ip`, `destination.port`).
    pub destination: SocketAddr,
    /// The TLS SNI, when mTLS was terminated here (`connection.sni`).
    pub sni: Option<&'a str>,
    /// The request; `None` on an opaque TCP connection.
    pub http: Option<HttpAttributes<'a>>,
}

/// The request's part of [`Attributes`].
#[derive(Debug, Clone, Copy)]
pub struct HttpAttributes<'a> {
    /// The method.
    pub method: &'a str,
    /// The authority (`:authority`, or `Host`), as sent.
    pub authority: &'a str,
    /// The path, query included (`:path`), normalized as Envoy's connection manager does
    /// under Istio's defaults ([`normalize_path`](super::normalize_path)); path rules see it
    /// without the query.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The verified JWT, if the request carried one that a RequestAuthentication accepted.
    pub auth: Option<RequestAuth<'a>>,
}

/// A verified JWT as AuthorizationPolicy sees it: its payload. As in Istio (which reads
/// Envoy's `jwt_authn` metadata), the request principal is `iss` + `/` + `sub`, the audiences
/// are `aud` (a string or a list), the presenter `azp`, and `request.auth.claims[a][b]`
/// looks `a`, then `b`, up in the payload.
#[derive(Debug, Clone, Copy)]
pub struct RequestAuth<'a> {
    /// The token's payload (a JSON object).
    pub claims: &'a serde_json::Value,
}

/// The original client as Envoy finds it under Istio's inbound defaults
/// (`use_remote_address: false`, no trusted hops): the last `X-Forwarded-For` entry when it is
/// an address, else the connection's peer.
pub fn remote_ip(headers: &HeaderMap, peer: IpAddr) -> IpAddr {
    headers
        .get_all(&crate::headers::X_FORWARDED_FOR)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

/// The compiled policies of one workload under one snapshot, by action, each action's rules in
/// the order Envoy's RBAC engine tries them (its policy map is ordered by name), so the
/// denial names the same rule Envoy's would.
#[derive(Debug, Default)]
pub struct Policies {
    pub(super) custom: Vec<Rule>,
    pub(super) audit: Vec<Rule>,
    pub(super) deny: Vec<Rule>,
    pub(super) allow: Vec<Rule>,
    /// Whether any ALLOW policy selects the workload (even one without rules): then a request
    /// no ALLOW rule matches is denied.
    pub(super) has_allow: bool,
    pub(super) has_audit: bool,
    pub(super) has_custom: bool,
    pub(super) has_deny: bool,
    /// The dry-run DENY and ALLOW policies' rules (Envoy's shadow rules of the DENY and ALLOW
    /// filters), and whether any such policy selects the workload.
    pub(super) dry_run_deny: Vec<Rule>,
    pub(super) dry_run_allow: Vec<Rule>,
    pub(super) has_dry_run_deny: bool,
    pub(super) has_dry_run_allow: bool,
}

/// The outcome of [`Policies::evaluate`].
#[derive(Debug, Clone, Copy)]
pub enum Verdict<'p> {
    /// Passes.
    Allow,
    /// Denied by the rule named (a CUSTOM or DENY match), or by no ALLOW rule matching
    /// (`None`).
    Deny(Option<&'p Rule>),
}

/// Which filters ran and what each decided, for Envoy's RBAC counters: one per action present,
/// in Istio's filter order (CUSTOM, AUDIT, DENY, ALLOW); a denial stops the chain. A filter's
/// shadow engine (its dry-run policies) runs before its enforced one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// RBAC filters that let the request through (their enforced engines).
    pub allowed: u8,
    /// RBAC filters that denied it (0 or 1).
    pub denied: u8,
    /// The AUDIT filter ran and a rule matched (`Some(true)`) or none did.
    pub logged: Option<bool>,
    /// What the DENY filter's shadow engine (the dry-run DENY policies) decided, if it ran.
    pub dry_run_deny: Option<Shadow>,
    /// What the ALLOW filter's shadow engine (the dry-run ALLOW policies) decided, if it ran.
    pub dry_run_allow: Option<Shadow>,
}

/// What a shadow engine decided: Envoy's `shadow_allowed` or `shadow_denied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shadow {
    /// Would have let the request through.
    Allowed,
    /// Would have denied it.
    Denied,
}

/// One rule of one policy.
#[derive(Debug)]
pub struct Rule {
    /// `ns[NS]-policy[NAME]-rule[I]`, Istio's name of the Envoy RBAC policy.
    name: Arc<str>,
    /// Envoy's `rbac_access_denied_matched_policy[<name>]`.
    details: Arc<str>,
    from: Vec<Vec<Check>>,
    to: Vec<Vec<Check>>,
    when: Vec<Check>,
    /// Matches nothing: an ALLOW or AUDIT rule with parts Ama cannot evaluate.
    never: bool,
    /// Has a check on an HTTP-only field (an ALLOW rule then matches no TCP connection).
    http_only: bool,
}

impl Rule {
    /// `ns[NS]-policy[NAME]-rule[I]`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[I]]`.
    pub fn details(&self) -> &Arc<str> {
        &self.details
    }

    fn matches(&self, a: &Attributes<'_>, action: Action) -> bool {
        if self.never {
            return false;
        }
        let tcp = a.http.is_none();
        if tcp && self.http_only && action == Action::Allow {
            return false;
        }
        let all = |checks: &[Check]| checks.iter().all(|c| (tcp && c.http_only) || c.matches(a));
        (self.from.is_empty() || self.from.iter().any(|s| all(s)))
            && (self.to.is_empty() || self.to.iter().any(|o| all(o)))
            && all(&self.when)
    }
}

/// One field (or condition): one of `any` must match (when there are any) and none of `none`.
#[derive(Debug)]
struct Check {
    any: Vec<Test>,
    none: Vec<Test>,
    http_only: bool,
}

impl Check {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        (self.any.is_empty() || self.any.iter().any(|t| t.matches(a)))
            && !self.none.iter().any(|t| t.matches(a))
    }
}

/// One value of one field, compiled.
#[derive(Debug)]
enum Test {
    /// Against the full peer identity (`spiffe://` + the value).
    Principal(StrMatch),
    /// `/ns/<ns>/` somewhere in the peer identity (Istio's `.*/ns/<ns>/.*`).
    NamespaceIn(Box<str>),
    /// The same with `*` in the namespace: Istio's regex.
    NamespaceRegex(Regex),
    /// `serviceAccounts` and `source.serviceAccount`: Istio's regex over the peer identity.
    ServiceAccount(Regex),
    SourceIp(IpNet),
    RemoteIp(IpNet),
    DestinationIp(IpNet),
    DestinationPort(u16),
    Sni(StrMatch),
    /// `iss` and `sub` of the JWT, split at the value's last `/` as Istio does.
    RequestPrincipal {
        iss: StrMatch,
        sub: StrMatch,
    },
    /// A claim at a path (a string, or a list any element of which matches).
    Claim(Box<[Box<str>]>, StrMatch),
    Header(HeaderKey, StrMatch),
    Host(StrMatch),
    Method(StrMatch),
    Path(PathMatch),
}

/// Which request header a `request.headers[NAME]` condition reads.
#[derive(Debug)]
enum HeaderKey {
    Authority,
    Method,
    Path,
    Name(http::HeaderName),
}

impl Test {
    fn http_only(&self) -> bool {
        matches!(
            self,
            Test::RequestPrincipal { .. }
                | Test::Claim(..)
                | Test::Header(..)
                | Test::Host(_)
                | Test::Method(_)
                | Test::Path(_)
        )
    }

    fn matches(&self, a: &Attributes<'_>) -> bool {
        match self {
            Test::Principal(m) => m.matches(a.principal),
            Test::NamespaceIn(needle) => a.principal.is_some_and(|p| p.contains(&**needle)),
            Test::NamespaceRegex(re) | Test::ServiceAccount(re) => {
                a.principal.is_some_and(|p| re.is_match(p))
            }
            Test::SourceIp(net) => net.contains(&a.source_ip),
            Test::RemoteIp(net) => net.contains(&a.remote_ip),
            Test::DestinationIp(net) => net.contains(&a.destination.ip()),
            Test::DestinationPort(p) => a.destination.port() == *p,
            Test::Sni(m) => m.matches(Some(a.sni.unwrap_or(""))),
            Test::RequestPrincipal { iss, sub } => claims(a).is_some_and(|c| {
                iss.matches(c.get("iss").and_then(|v| v.as_str()))
                    && sub.matches(c.get("sub").and_then(|v| v.as_str()))
            }),
            Test::Claim(path, m) => claims(a)
                .and_then(|c| path.iter().try_fold(c, |v, k| v.get(&**k)))
                .is_some_and(|v| match v {
                    serde_json::Value::String(s) => m.matches(Some(s)),
                    serde_json::Value::Array(items) => items
                        .iter()
                        .any(|i| i.as_str().is_some_and(|s| m.matches(Some(s)))),
                    _ => false,
                }),
            Test::Header(key, m) => a.http.is_some_and(|h| match key {
                HeaderKey::Authority => m.matches(Some(h.authority)),
                HeaderKey::Method => m.matches(Some(h.method)),
                HeaderKey::Path => m.matches(Some(h.path)),
                HeaderKey::Name(name) => m.matches(header_value(h.headers, name).as_deref()),
            }),
            Test::Host(m) => a.http.is_some_and(|h| m.matches(Some(h.authority))),
            Test::Method(m) => a.http.is_some_and(|h| m.matches(Some(h.method))),
            Test::Path(m) => a.http.is_some_and(|h| m.matches(path_only(h.path))),
        }
    }
}

fn claims<'a>(a: &Attributes<'a>) -> Option<&'a serde_json::Value> {
    a.http.and_then(|h| h.auth).map(|auth| auth.claims)
}

/// The path without query and fragment, as Envoy's path matchers see it.
fn path_only(path: &str) -> &str {
    path.find(['?', '#']).map_or(path, |i| &path[..i])
}

/// A header's value as Envoy's header matcher reads it: several lines joined with `,` (only
/// then is a string made).
fn header_value<'h>(headers: &'h HeaderMap, name: &http::HeaderName) -> Option<Cow<'h, str>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let text = |v: &'h http::HeaderValue| String::from_utf8_lossy(v.as_bytes());
    match values.next() {
        None => Some(text(first)),
        Some(second) => {
            let mut joined = format!("{},{}", text(first), text(second));
            for v in values {
                joined.push(',');
                joined.push_str(&text(v));
            }
            Some(Cow::Owned(joined))
        }
    }
}

impl Policies {
    /// Compiles the AuthorizationPolicies in `selected` (those that select the workload).
    pub fn compile<'a>(selected: impl IntoIterator<Item = &'a xds::Authorization>) -> Policies {
        let mut out = Policies::default();
        for a in selected {
            let Some(policy) = &a.policy else { continue };
            let (list, present) = match (policy.action, policy.dry_run) {
                (Action::Deny, true) => (&mut out.dry_run_deny, &mut out.has_dry_run_deny),
                (Action::Allow, true) => (&mut out.dry_run_allow, &mut out.has_dry_run_allow),
                // A dry run of these is no Istio config: enforced, which errs on the side of
                // denying (CUSTOM) or decides nothing (AUDIT).
                (Action::Custom, _) => (&mut out.custom, &mut out.has_custom),
                (Action::Audit, _) => (&mut out.audit, &mut out.has_audit),
                (Action::Deny, false) => (&mut out.deny, &mut out.has_deny),
                (Action::Allow, false) => (&mut out.allow, &mut out.has_allow),
            };
            *present = true;
            for (i, rule) in policy.rules.iter().enumerate() {
                list.push(compile_rule(a, policy.action, i, rule));
            }
        }
        for list in [
            &mut out.custom,
            &mut out.audit,
            &mut out.deny,
            &mut out.allow,
            &mut out.dry_run_deny,
            &mut out.dry_run_allow,
        ] {
            list.sort_by(|x, y| x.name.cmp(&y.name));
        }
        out
    }

    /// Whether no policy, enforced or dry run, selects the workload.
    pub fn is_empty(&self) -> bool {
        !(self.has_custom
            || self.has_audit
            || self.has_deny
            || self.has_allow
            || self.has_dry_run_deny
            || self.has_dry_run_allow)
    }

    /// Decides one request or connection, in Istio's order: CUSTOM (Ama has no external
    /// authorizer: a match denies), AUDIT (logs the first matching rule, decides nothing), DENY,
    /// then ALLOW (when any ALLOW policy selects the workload, one of its rules must match).
    /// Dry-run DENY and ALLOW policies are evaluated just before the enforced ones of their
    /// action, as Envoy's shadow engines in the same filters (so not when an earlier filter
    /// denied), and decide nothing.
    pub fn evaluate(&self, a: &Attributes<'_>) -> (Verdict<'_>, Outcome) {
        let mut outcome = Outcome::default();
        fn first<'p>(rules: &'p [Rule], a: &Attributes<'_>, action: Action) -> Option<&'p Rule> {
            rules.iter().find(|r| r.matches(a, action))
        }
        if self.has_custom {
            if let Some(rule) = first(&self.custom, a, Action::Custom) {
                outcome.denied = 1;
                return (Verdict::Deny(Some(rule)), outcome);
            }
            outcome.allowed += 1;
        }
        if self.has_audit {
            let hit = first(&self.audit, a, Action::Audit);
            if let Some(rule) = hit {
                tracing::info!(
                    policy = %rule.name,
                    source = ?a.principal,
                    client = %a.source_ip,
                    method = a.http.map(|h| h.method),
                    path = a.http.map(|h| h.path),
                    "AuthorizationPolicy AUDIT: request matched"
                );
            }
            outcome.logged = Some(hit.is_some());
            outcome.allowed += 1;
        }
        if self.has_dry_run_deny {
            let hit = first(&self.dry_run_deny, a, Action::Deny);
            if let Some(rule) = hit {
                log_dry_run_denial(Action::Deny, Some(rule), a);
            }
            outcome.dry_run_deny = Some(if hit.is_some() {
                Shadow::Denied
            } else {
                Shadow::Allowed
            });
        }
        if self.has_deny {
            if let Some(rule) = first(&self.deny, a, Action::Deny) {
                outcome.denied = 1;
                return (Verdict::Deny(Some(rule)), outcome);
            }
            outcome.allowed += 1;
        }
        if self.has_dry_run_allow {
            let hit = first(&self.dry_run_allow, a, Action::Allow);
            if hit.is_none() {
                log_dry_run_denial(Action::Allow, None, a);
            }
            outcome.dry_run_allow = Some(if hit.is_some() {
                Shadow::Allowed
            } else {
                Shadow::Denied
            });
        }
        if self.has_allow {
            if first(&self.allow, a, Action::Allow).is_none() {
                outcome.denied = 1;
                return (Verdict::Deny(None), outcome);
            }
            outcome.allowed += 1;
        }
        (Verdict::Allow, outcome)
    }
}

/// The INFO line of a request a dry-run policy would have denied: the DENY `rule` that matched,
/// or (`None`) no dry-run ALLOW rule matching.
fn log_dry_run_denial(action: Action, rule: Option<&Rule>, a: &Attributes<'_>) {
    tracing::info!(
        policy = %rule.map_or("none", |r| r.name()),
        action = %if action == Action::Deny { "DENY" } else { "ALLOW" },
        source = ?a.principal,
        client = %a.source_ip,
        method = a.http.map(|h| h.method),
        path = a.http.map(|h| h.path),
        "AuthorizationPolicy dry run: request would have been denied"
    );
}

/// Compiles rule `i` of `a`'s policy. A part that does not compile is handled as an
/// unsupported one (logged).
fn compile_rule(a: &xds::Authorization, action: Action, i: usize, rule: &xds::Rule) -> Rule {
    let name: Arc<str> = Arc::from(format!("ns[{}]-policy[{}]-rule[{i}]", a.namespace, a.name));
    let details = Arc::from(format!("rbac_access_denied_matched_policy[{name}]"));
    let lenient = matches!(action, Action::Deny | Action::Custom);
    let mut unsupported: Vec<String> = rule.unsupported.clone();
    let mut checks = |parts: Vec<(String, Result<Option<Check>, MatcherError>)>| -> Vec<Check> {
        let mut out = Vec::new();
        for (at, c) in parts {
            match c {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {}
                Err(e) => unsupported.push(format!("{at}: {e}")),
            }
        }
        out
    };
    let from: Vec<Vec<Check>> = rule
        .from
        .iter()
        .enumerate()
        .map(|(j, s)| checks(source(&format!("rules[{i}].from[{j}]"), s, &a.namespace)))
        .collect();
    let to: Vec<Vec<Check>> = rule
        .to
        .iter()
        .enumerate()
        .map(|(j, o)| checks(operation(&format!("rules[{i}].to[{j}]"), o)))
        .collect();
    let when = checks(
        rule.when
            .iter()
            .enumerate()
            .map(|(j, c)| {
                (
                    format!("rules[{i}].when[{j}]"),
                    condition(c, &a.namespace).map(Some),
                )
            })
            .collect(),
    );
    if !unsupported.is_empty() {
        tracing::warn!(
            policy = %name,
            parts = ?unsupported,
            effect = if lenient { "those parts match every request" } else { "the rule matches nothing" },
            "AuthorizationPolicy has parts Ama cannot evaluate"
        );
    }
    let http_only = from
        .iter()
        .chain(&to)
        .flatten()
        .chain(&when)
        .any(|c| c.http_only);
    Rule {
        name,
        details,
        from,
        to,
        when,
        never: !lenient && !unsupported.is_empty(),
        http_only,
    }
}

type Part = (String, Result<Option<Check>, MatcherError>);

/// A field: its values and `not` values compiled with `test`; `None` when neither is set.
fn field(
    at: String,
    values: &[String],
    not: &[String],
    test: impl Fn(&str) -> Result<Test, MatcherError>,
) -> Part {
    if values.is_empty() && not.is_empty() {
        return (at, Ok(None));
    }
    let compiled = (|| {
        let any = values
            .iter()
            .map(|v| test(v))
            .collect::<Result<Vec<_>, _>>()?;
        let none = not.iter().map(|v| test(v)).collect::<Result<Vec<_>, _>>()?;
        let http_only = any.iter().chain(&none).any(Test::http_only);
        Ok(Some(Check {
            any,
            none,
            http_only,
        }))
    })();
    (at, compiled)
}

/// A source's fields; `policy_namespace` is where a bare service account name lives.
fn source(at: &str, s: &xds::Source, policy_namespace: &str) -> Vec<Part> {
    vec![
        field(
            format!("{at}.principals"),
            &s.principals,
            &s.not_principals,
            principal,
        ),
        field(
            format!("{at}.requestPrincipals"),
            &s.request_principals,
            &s.not_request_principals,
            request_principal,
        ),
        field(
            format!("{at}.namespaces"),
            &s.namespaces,
            &s.not_namespaces,
            namespace,
        ),
        field(
            format!("{at}.serviceAccounts"),
            &s.service_accounts,
            &s.not_service_accounts,
            |v| service_account(v, policy_namespace),
        ),
        field(
            format!("{at}.ipBlocks"),
            &s.ip_blocks,
            &s.not_ip_blocks,
            |v| matcher::ip_block(v).map(Test::SourceIp),
        ),
        field(
            format!("{at}.remoteIpBlocks"),
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            |v| matcher::ip_block(v).map(Test::RemoteIp),
        ),
    ]
}

fn operation(at: &str, o: &xds::Operation) -> Vec<Part> {
    let ports = |ps: &[u16]| ps.iter().map(u16::to_string).collect::<Vec<_>>();
    vec![
        field(format!("{at}.hosts"), &o.hosts, &o.not_hosts, |v| {
            Ok(Test::Host(StrMatch::host(v)))
        }),
        field(
            format!("{at}.ports"),
            &ports(&o.ports),
            &ports(&o.not_ports),
            |v| matcher::port(v).map(Test::DestinationPort),
        ),
        field(format!("{at}.methods"), &o.methods, &o.not_methods, |v| {
            Ok(Test::Method(StrMatch::header(v)))
        }),
        field(format!("{at}.paths"), &o.paths, &o.not_paths, |v| {
            PathMatch::new(v).map(Test::Path)
        }),
    ]
}

/// A `when` condition; its key decides how the values compile.
fn condition(c: &xds::Condition, policy_namespace: &str) -> Result<Check, MatcherError> {
    let key = c.key.as_str();
    let test = |v: &str| -> Result<Test, MatcherError> {
        Ok(match key {
            "source.ip" => Test::SourceIp(matcher::ip_block(v)?),
            "remote.ip" => Test::RemoteIp(matcher::ip_block(v)?),
            "source.namespace" => namespace(v)?,
            "source.principal" => principal(v)?,
            "source.serviceAccount" => service_account(v, policy_namespace)?,
            "request.auth.principal" => request_principal(v)?,
            "request.auth.audiences" => Test::Claim(claim_path(&["aud"]), StrMatch::string(v)),
            "request.auth.presenter" => Test::Claim(claim_path(&["azp"]), StrMatch::string(v)),
            "destination.ip" => Test::DestinationIp(matcher::ip_block(v)?),
            "destination.port" => Test::DestinationPort(matcher::port(v)?),
            "connection.sni" => Test::Sni(StrMatch::string(v)),
            _ => {
                if let Some(name) = bracketed(key, "request.headers") {
                    Test::Header(header_key(name)?, StrMatch::header(v))
                } else if let Some(path) = key
                    .strip_prefix("request.auth.claims")
                    .and_then(nested_claims)
                {
                    Test::Claim(path, StrMatch::string(v))
                } else {
                    return Err(MatcherError::Key(key.to_string()));
                }
            }
        })
    };
    let (_, part) = field(String::new(), &c.values, &c.not_values, test);
    // A condition with neither values nor notValues constrains nothing.
    part.map(|c| {
        c.unwrap_or(Check {
            any: Vec::new(),
            none: Vec::new(),
            http_only: false,
        })
    })
}

fn principal(v: &str) -> Result<Test, MatcherError> {
    Ok(Test::Principal(StrMatch::with_prefix(v, "spiffe://")))
}

/// Istio's `.*/ns/<ns>/.*` over the peer identity, `*` in `<ns>` matching anything.
fn namespace(v: &str) -> Result<Test, MatcherError> {
    if !v.contains('*') {
        return Ok(Test::NamespaceIn(format!("/ns/{v}/").into()));
    }
    let glob = v
        .split('*')
        .map(regex::escape)
        .collect::<Vec<_>>()
        .join(".*");
    matcher::regex(&format!("^.*/ns/{glob}/.*$"), v).map(Test::NamespaceRegex)
}

/// Istio's `serviceAccounts` and `source.serviceAccount`: `<sa>` (in the policy's namespace) or
/// `<ns>/<sa>`, matched against the peer identity in any trust domain, `/sa/<sa>` a whole
/// segment (`srcServiceAccountGenerator`).
fn service_account(v: &str, policy_namespace: &str) -> Result<Test, MatcherError> {
    let (ns, sa) = v.split_once('/').unwrap_or((policy_namespace, v));
    let re = format!(
        "^spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?$",
        regex::escape(ns),
        regex::escape(sa)
    );
    matcher::regex(&re, v).map(Test::ServiceAccount)
}

/// Istio's request principal matcher: the value split at its last `/` into issuer and subject,
/// `*` at either end widening one of them (`.+` for a bare `*`).
fn request_principal(v: &str) -> Result<Test, MatcherError> {
    let any = || StrMatch::string("*");
    let exact = StrMatch::exact;
    let (iss, sub, found) = match v.rfind('/') {
        Some(i) => (&v[..i], &v[i + 1..], true),
        None => (v, "", false),
    };
    let (iss, sub) = if v == "*" {
        (any(), any())
    } else if let Some(rest) = v.strip_prefix('*') {
        match (found, iss.strip_prefix('*')) {
            (true, Some("")) => (any(), exact(sub)),
            (true, Some(iss_suffix)) => (StrMatch::suffix(iss_suffix), exact(sub)),
            _ => (any(), StrMatch::suffix(rest)),
        }
    } else if let Some(rest) = v.strip_suffix('*') {
        match (found, sub.strip_suffix('*')) {
            (true, Some("")) => (exact(iss), any()),
            (true, Some(sub_prefix)) => (exact(iss), StrMatch::prefix(sub_prefix)),
            _ => (StrMatch::prefix(rest), any()),
        }
    } else {
        (exact(iss), exact(sub))
    };
    Ok(Test::RequestPrincipal { iss, sub })
}

fn claim_path(keys: &[&str]) -> Box<[Box<str>]> {
    keys.iter().map(|k| Box::from(*k)).collect()
}

/// `NAME` of `<prefix>[NAME]`.
fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    key.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')
        .filter(|n| !n.is_empty())
}

/// Istio's `extractNameInNestedBrackets`: `[a][b]` is the path `a`, `b`; anything else in one
/// pair of brackets is one name.
fn nested_claims(s: &str) -> Option<Box<[Box<str>]>> {
    let mut path = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let nested = rest
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .filter(|(name, _)| !name.contains('['));
        match nested {
            Some((name, r)) => {
                path.push(Box::from(name));
                rest = r;
            }
            None => {
                let whole = s.strip_prefix('[')?.strip_suffix(']')?;
                return Some(claim_path(&[whole]));
            }
        }
    }
    (!path.is_empty()).then(|| path.into_boxed_slice())
}

/// The header a `request.headers[NAME]` reads: Envoy's pseudo-headers for the authority
/// (`Host` too), method and path; others by their lowercase name.
fn header_key(name: &str) -> Result<HeaderKey, MatcherError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        ":authority" | "host" => HeaderKey::Authority,
        ":method" => HeaderKey::Method,
        ":path" => HeaderKey::Path,
        lower => HeaderKey::Name(
            http::HeaderName::from_bytes(lower.as_bytes())
                .map_err(|_| MatcherError::Header(name.to_string()))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SLEEP_FOO: &str = "spiffe://cluster.local/ns/foo/sa/sleep";

    fn authz(name: &str, action: &str, rules: serde_json::Value) -> xds::Authorization {
        serde_json::from_value(json!({
            "name": name,
            "namespace": "default",
            "policy": {"action": action, "rules": rules},
        }))
        .expect("authorization")
    }

    /// A dry-run policy (`istio.io/dry-run: "true"`).
    fn dry(name: &str, action: &str, rules: serde_json::Value) -> xds::Authorization {
        let mut a = authz(name, action, rules);
        if let Some(p) = a.policy.as_mut() {
            p.dry_run = true;
        }
        a
    }

    fn compile(policies: &[xds::Authorization]) -> Policies {
        Policies::compile(policies)
    }

    /// A request as a test describes it; `attrs` borrows from it.
    struct Req {
        principal: Option<&'static str>,
        peer: IpAddr,
        method: &'static str,
        authority: &'static str,
        path: &'static str,
        headers: HeaderMap,
        claims: Option<serde_json::Value>,
        tcp: bool,
    }

    fn req() -> Req {
        Req {
            principal: Some(SLEEP_FOO),
            peer: "10.0.0.1".parse().expect("ip"),
            method: "GET",
            authority: "httpbin.default:8000",
            path: "/ip?x=1",
            headers: HeaderMap::new(),
            claims: None,
            tcp: false,
        }
    }

    impl Req {
        fn attrs(&self) -> Attributes<'_> {
            Attributes {
                principal: self.principal,
                source_ip: self.peer,
                remote_ip: remote_ip(&self.headers, self.peer),
                destination: "10.0.0.9:8080".parse().expect("addr"),
                sni: Some("outbound_.8000_._.httpbin.default.svc.cluster.local"),
                http: (!self.tcp).then(|| HttpAttributes {
                    method: self.method,
                    authority: self.authority,
                    path: self.path,
                    headers: &self.headers,
                    auth: self.claims.as_ref().map(|claims| RequestAuth { claims }),
                }),
            }
        }

        fn header(mut self, name: &'static str, value: &'static str) -> Req {
            self.headers
                .append(name, http::HeaderValue::from_static(value));
            self
        }
    }

    /// Whether `r` is allowed under `p`; a denial's rule name (or `none`) otherwise.
    fn decide(p: &Policies, r: &Req) -> Result<(), String> {
        match p.evaluate(&r.attrs()).0 {
            Verdict::Allow => Ok(()),
            Verdict::Deny(rule) => Err(rule.map_or("none", |r| r.name()).to_string()),
        }
    }

    /// Whether one ALLOW rule matches `r`.
    fn allows(rule: serde_json::Value, r: &Req) -> bool {
        decide(&compile(&[authz("p", "ALLOW", json!([rule]))]), r).is_ok()
    }

    #[test]
    fn istio_order_and_defaults() {
        let r = req();
        assert_eq!(decide(&compile(&[]), &r), Ok(()), "nothing selects: allow");
        // allow-nothing: an ALLOW policy without rules.
        let nothing = compile(&[authz("allow-nothing", "ALLOW", json!([]))]);
        assert_eq!(decide(&nothing, &r), Err("none".into()));
        let allow_all = authz("allow-all", "ALLOW", json!([{}]));
        let deny_ip = authz("deny-ip", "DENY", json!([{"to": [{"paths": ["/ip"]}]}]));
        let custom = authz("ext", "CUSTOM", json!([{"to": [{"methods": ["GET"]}]}]));
        assert_eq!(
            decide(&compile(std::slice::from_ref(&allow_all)), &r),
            Ok(())
        );
        assert_eq!(
            decide(&compile(&[allow_all.clone(), deny_ip.clone()]), &r),
            Err("ns[default]-policy[deny-ip]-rule[0]".into()),
            "DENY before ALLOW"
        );
        assert_eq!(
            decide(&compile(&[deny_ip, custom, allow_all]), &r),
            Err("ns[default]-policy[ext]-rule[0]".into()),
            "CUSTOM before DENY; Ama has no provider, so a match denies"
        );
        let audit = compile(&[authz("audit", "AUDIT", json!([{}]))]);
        let (v, o) = audit.evaluate(&r.attrs());
        assert!(matches!(v, Verdict::Allow), "AUDIT decides nothing");
        assert_eq!(o.logged, Some(true));
        // An ALLOW policy matching nothing still makes the others' absence a denial.
        let other = authz("other", "ALLOW", json!([{"to": [{"paths": ["/other"]}]}]));
        assert_eq!(decide(&compile(&[other]), &r), Err("none".into()));
    }

    #[test]
    fn counters_follow_envoys_filters() {
        let r = req();
        let p = compile(&[
            authz("a", "AUDIT", json!([{"to": [{"paths": ["/nope"]}]}])),
            authz("d", "DENY", json!([{"to": [{"paths": ["/nope"]}]}])),
            authz("x", "ALLOW", json!([{}])),
        ]);
        let (_, o) = p.evaluate(&r.attrs());
        assert_eq!(
            o,
            Outcome {
                allowed: 3,
                denied: 0,
                logged: Some(false),
                ..Default::default()
            }
        );
        let p = compile(&[
            authz("d", "DENY", json!([{}])),
            authz("x", "ALLOW", json!([{}])),
        ]);
        let (_, o) = p.evaluate(&r.attrs());
        assert_eq!(
            o,
            Outcome {
                allowed: 0,
                denied: 1,
                logged: None,
                ..Default::default()
            },
            "the chain stops at the denial"
        );
    }

    #[test]
    fn a_dry_run_deny_that_matches_allows_and_counts_shadow_denied() {
        let r = req();
        let p = compile(&[dry(
            "deny-ip",
            "DENY",
            json!([{"to": [{"paths": ["/ip"]}]}]),
        )]);
        assert!(!p.is_empty(), "a dry-run policy alone is evaluated");
        let (v, o) = p.evaluate(&r.attrs());
        assert!(matches!(v, Verdict::Allow), "a dry run decides nothing");
        assert_eq!(
            o,
            Outcome {
                dry_run_deny: Some(Shadow::Denied),
                ..Default::default()
            },
            "no enforced engine: no allowed/denied, only the shadow"
        );
        let other = Req {
            path: "/headers",
            ..req()
        };
        assert_eq!(
            p.evaluate(&other.attrs()).1.dry_run_deny,
            Some(Shadow::Allowed)
        );
    }

    #[test]
    fn a_dry_run_allow_that_does_not_match_allows_and_counts_shadow_denied() {
        let r = req();
        let p = compile(&[dry(
            "allow-other",
            "ALLOW",
            json!([{"to": [{"paths": ["/other"]}]}]),
        )]);
        let (v, o) = p.evaluate(&r.attrs());
        assert!(matches!(v, Verdict::Allow));
        assert_eq!(
            o,
            Outcome {
                dry_run_allow: Some(Shadow::Denied),
                ..Default::default()
            }
        );
        // A dry-run allow-nothing (no rules) would deny everything: shadow denied, allowed.
        let nothing = compile(&[dry("allow-nothing", "ALLOW", json!([]))]);
        let (v, o) = nothing.evaluate(&r.attrs());
        assert!(matches!(v, Verdict::Allow));
        assert_eq!(o.dry_run_allow, Some(Shadow::Denied));
        let matching = compile(&[dry(
            "allow-ip",
            "ALLOW",
            json!([{"to": [{"paths": ["/ip"]}]}]),
        )]);
        assert_eq!(
            matching.evaluate(&r.attrs()).1.dry_run_allow,
            Some(Shadow::Allowed)
        );
        // A dry-run ALLOW does not make the workload deny what no enforced ALLOW matches.
        let beside_deny = compile(&[
            dry(
                "allow-other",
                "ALLOW",
                json!([{"to": [{"paths": ["/other"]}]}]),
            ),
            authz(
                "deny-post",
                "DENY",
                json!([{"to": [{"methods": ["POST"]}]}]),
            ),
        ]);
        assert_eq!(decide(&beside_deny, &r), Ok(()));
    }

    #[test]
    fn dry_runs_beside_enforced_policies() {
        let r = req();
        // The shadow engine runs before its filter's enforced one: counted even when the
        // enforced DENY then denies.
        let p = compile(&[
            dry("dry-deny", "DENY", json!([{"to": [{"paths": ["/nope"]}]}])),
            authz("deny-ip", "DENY", json!([{"to": [{"paths": ["/ip"]}]}])),
            dry("dry-allow", "ALLOW", json!([{}])),
        ]);
        let (v, o) = p.evaluate(&r.attrs());
        assert!(
            matches!(v, Verdict::Deny(Some(rule)) if rule.name() == "ns[default]-policy[deny-ip]-rule[0]"),
            "the enforced DENY still denies, named as before: {v:?}"
        );
        assert_eq!(
            o,
            Outcome {
                denied: 1,
                dry_run_deny: Some(Shadow::Allowed),
                // The DENY filter denied: the ALLOW filter, shadow and all, never ran.
                dry_run_allow: None,
                ..Default::default()
            }
        );
        // An enforced ALLOW and a dry-run DENY that would deny: allowed by the ALLOW filter.
        let p = compile(&[
            dry("dry-deny", "DENY", json!([{}])),
            authz("allow-all", "ALLOW", json!([{}])),
        ]);
        let (v, o) = p.evaluate(&r.attrs());
        assert!(matches!(v, Verdict::Allow));
        assert_eq!(
            o,
            Outcome {
                allowed: 1,
                dry_run_deny: Some(Shadow::Denied),
                ..Default::default()
            }
        );
        // An enforced ALLOW that does not match still denies beside a dry-run ALLOW that would
        // allow.
        let p = compile(&[
            authz(
                "allow-other",
                "ALLOW",
                json!([{"to": [{"paths": ["/other"]}]}]),
            ),
            dry("dry-allow", "ALLOW", json!([{}])),
        ]);
        let (v, o) = p.evaluate(&r.attrs());
        assert!(matches!(v, Verdict::Deny(None)));
        assert_eq!(o.dry_run_allow, Some(Shadow::Allowed));
        // A CUSTOM denial stops the chain before the DENY filter's shadow engine.
        let p = compile(&[
            authz("ext", "CUSTOM", json!([{}])),
            dry("dry-deny", "DENY", json!([{}])),
        ]);
        let (_, o) = p.evaluate(&r.attrs());
        assert_eq!(o.dry_run_deny, None);
    }

    /// Collects what a `tracing` subscriber writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_would_be_denial_is_logged_at_info_naming_policy_and_rule() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let r = req();
        let p = compile(&[
            dry(
                "dry-deny-ip",
                "DENY",
                json!([{"to": [{"paths": ["/nope"]}]}, {"to": [{"paths": ["/ip"]}]}]),
            ),
            dry(
                "dry-allow-other",
                "ALLOW",
                json!([{"to": [{"paths": ["/other"]}]}]),
            ),
        ]);
        tracing::subscriber::with_default(subscriber, || p.evaluate(&r.attrs()));
        let text = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for (line, policy, action) in [
            (lines[0], "ns[default]-policy[dry-deny-ip]-rule[1]", "DENY"),
            (lines[1], "none", "ALLOW"),
        ] {
            assert!(line.contains(" INFO "), "{line}");
            assert!(
                line.contains("AuthorizationPolicy dry run: request would have been denied"),
                "{line}"
            );
            assert!(line.contains(&format!("policy={policy} ")), "{line}");
            assert!(line.contains(&format!("action={action} ")), "{line}");
        }
        // What a dry run would allow is not logged.
        let allowed = Req {
            path: "/other",
            ..req()
        };
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .finish();
        let only_allow = compile(&[dry(
            "dry-allow-other",
            "ALLOW",
            json!([{"to": [{"paths": ["/other"]}]}]),
        )]);
        tracing::subscriber::with_default(subscriber, || only_allow.evaluate(&allowed.attrs()));
        assert!(sink.0.lock().expect("sink").is_empty());
    }

    #[test]
    fn a_dry_run_custom_or_audit_is_enforced() {
        let r = req();
        // Istio rejects the annotation on them; should one come, CUSTOM fails closed.
        let p = compile(&[dry("ext", "CUSTOM", json!([{}]))]);
        assert_eq!(
            decide(&p, &r),
            Err("ns[default]-policy[ext]-rule[0]".into())
        );
        let p = compile(&[dry("audit", "AUDIT", json!([{}]))]);
        let (v, o) = p.evaluate(&r.attrs());
        assert!(matches!(v, Verdict::Allow));
        assert_eq!(o.logged, Some(true));
    }

    #[test]
    fn the_first_matching_rule_by_envoys_name_order_is_named() {
        let r = req();
        let p = compile(&[
            authz("zz", "DENY", json!([{}])),
            authz("aa", "DENY", json!([{"to": [{"paths": ["/nope"]}]}, {}])),
        ]);
        assert_eq!(decide(&p, &r), Err("ns[default]-policy[aa]-rule[1]".into()));
        let details = match p.evaluate(&r.attrs()).0 {
            Verdict::Deny(Some(rule)) => rule.details().to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            details,
            "rbac_access_denied_matched_policy[ns[default]-policy[aa]-rule[1]]"
        );
    }

    #[test]
    fn principals_and_namespaces_need_mtls() {
        let mut plain = req();
        plain.principal = None;
        let r = req();
        let src = |s: serde_json::Value| json!({"from": [s]});
        assert!(allows(
            src(json!({"principals": ["cluster.local/ns/foo/sa/sleep"]})),
            &r
        ));
        assert!(!allows(
            src(json!({"principals": ["cluster.local/ns/bar/sa/sleep"]})),
            &r
        ));
        assert!(allows(src(json!({"principals": ["*"]})), &r));
        assert!(
            !allows(src(json!({"principals": ["*"]})), &plain),
            "no mTLS: no principal"
        );
        assert!(allows(src(json!({"principals": ["*/sa/sleep"]})), &r));
        assert!(allows(
            src(json!({"principals": ["cluster.local/ns/foo/*"]})),
            &r
        ));
        assert!(allows(
            src(json!({"notPrincipals": ["cluster.local/ns/bar/sa/sleep"]})),
            &r
        ));
        assert!(!allows(
            src(json!({"notPrincipals": ["cluster.local/ns/foo/sa/sleep"]})),
            &r
        ));
        assert!(allows(src(json!({"notPrincipals": ["*"]})), &plain));
        assert!(allows(src(json!({"namespaces": ["foo"]})), &r));
        assert!(!allows(src(json!({"namespaces": ["bar"]})), &r));
        assert!(!allows(src(json!({"namespaces": ["fo"]})), &r));
        assert!(allows(src(json!({"namespaces": ["f*"]})), &r));
        assert!(allows(src(json!({"namespaces": ["*"]})), &r));
        assert!(!allows(src(json!({"namespaces": ["*"]})), &plain));
        assert!(!allows(src(json!({"namespaces": ["foo"]})), &plain));
        assert!(allows(src(json!({"notNamespaces": ["foo"]})), &plain));
        assert!(!allows(src(json!({"notNamespaces": ["foo"]})), &r));
        // Every field of one source must match; any source may.
        assert!(!allows(
            src(json!({"namespaces": ["foo"], "principals": ["cluster.local/ns/foo/sa/other"]})),
            &r
        ));
        assert!(allows(
            json!({"from": [{"namespaces": ["bar"]}, {"namespaces": ["foo"]}]}),
            &r
        ));
    }

    #[test]
    fn ip_blocks_and_the_original_client() {
        let r = req();
        let src = |s: serde_json::Value| json!({"from": [s]});
        assert!(allows(src(json!({"ipBlocks": ["10.0.0.0/24"]})), &r));
        assert!(allows(src(json!({"ipBlocks": ["10.0.0.1"]})), &r));
        assert!(!allows(src(json!({"ipBlocks": ["10.1.0.0/16"]})), &r));
        assert!(!allows(src(json!({"notIpBlocks": ["10.0.0.0/8"]})), &r));
        assert!(
            allows(src(json!({"remoteIpBlocks": ["10.0.0.1"]})), &r),
            "no XFF: the peer"
        );
        let forwarded = req()
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", "192.168.0.1, 203.0.113.7");
        assert!(allows(
            src(json!({"remoteIpBlocks": ["203.0.113.0/24"]})),
            &forwarded
        ));
        assert!(!allows(
            src(json!({"remoteIpBlocks": ["192.168.0.1"]})),
            &forwarded
        ));
        assert!(
            allows(src(json!({"ipBlocks": ["10.0.0.1"]})), &forwarded),
            "ipBlocks: the peer"
        );
        assert!(!allows(
            src(json!({"notRemoteIpBlocks": ["203.0.113.7"]})),
            &forwarded
        ));
        let junk = req().header("x-forwarded-for", "not-an-ip");
        assert!(allows(src(json!({"remoteIpBlocks": ["10.0.0.1"]})), &junk));
    }

    #[test]
    fn request_principals_need_a_verified_jwt() {
        let r = req();
        let mut jwt = req();
        jwt.claims = Some(json!({
            "iss": "https://issuer.example.com",
            "sub": "alice",
            "aud": ["a1", "a2"],
            "azp": "web",
            "groups": ["admins", "dev"],
            "nested": {"team": "blue"},
            "n": 3,
        }));
        let src = |s: serde_json::Value| json!({"from": [s]});
        let rp = |v: &str| src(json!({"requestPrincipals": [v]}));
        assert!(!allows(rp("*"), &r), "no JWT: no request principal");
        assert!(allows(src(json!({"notRequestPrincipals": ["*"]})), &r));
        assert!(allows(rp("*"), &jwt));
        assert!(allows(rp("https://issuer.example.com/alice"), &jwt));
        assert!(!allows(rp("https://issuer.example.com/bob"), &jwt));
        assert!(allows(rp("https://issuer.example.com/*"), &jwt));
        assert!(allows(rp("https://issuer.example.com/al*"), &jwt));
        assert!(allows(rp("*/alice"), &jwt));
        assert!(allows(rp("*example.com/alice"), &jwt));
        assert!(!allows(rp("*example.org/alice"), &jwt));
        assert!(!allows(
            src(json!({"notRequestPrincipals": ["*/alice"]})),
            &jwt
        ));
        let when = |k: &str, v: &str| json!({"when": [{"key": k, "values": [v]}]});
        assert!(allows(
            when("request.auth.principal", "https://issuer.example.com/alice"),
            &jwt
        ));
        assert!(!allows(when("request.auth.principal", "*"), &r));
        assert!(allows(when("request.auth.audiences", "a2"), &jwt));
        assert!(!allows(when("request.auth.audiences", "a3"), &jwt));
        assert!(allows(when("request.auth.presenter", "web"), &jwt));
        assert!(allows(when("request.auth.claims[groups]", "admins"), &jwt));
        assert!(allows(when("request.auth.claims[groups]", "ad*"), &jwt));
        assert!(!allows(when("request.auth.claims[groups]", "ops"), &jwt));
        assert!(allows(
            when("request.auth.claims[nested][team]", "blue"),
            &jwt
        ));
        assert!(!allows(
            when("request.auth.claims[nested][team]", "red"),
            &jwt
        ));
        assert!(!allows(when("request.auth.claims[missing]", "*"), &jwt));
        assert!(
            !allows(when("request.auth.claims[n]", "3"), &jwt),
            "strings only"
        );
        assert!(!allows(when("request.auth.claims[groups]", "admins"), &r));
        assert!(allows(
            json!({"when": [{"key": "request.auth.claims[groups]", "notValues": ["ops"]}]}),
            &jwt
        ));
    }

    #[test]
    fn operations() {
        let r = req();
        let to = |o: serde_json::Value| json!({"to": [o]});
        assert!(allows(to(json!({"hosts": ["httpbin.default:8000"]})), &r));
        assert!(allows(to(json!({"hosts": ["HTTPBIN.default:*"]})), &r));
        assert!(
            !allows(to(json!({"hosts": ["httpbin.default"]})), &r),
            "the port is part of the host"
        );
        assert!(allows(to(json!({"notHosts": ["other*"]})), &r));
        assert!(allows(to(json!({"ports": [8080]})), &r));
        assert!(!allows(to(json!({"ports": [9090]})), &r));
        assert!(!allows(to(json!({"notPorts": [8080]})), &r));
        assert!(allows(to(json!({"methods": ["GET", "HEAD"]})), &r));
        assert!(
            !allows(to(json!({"methods": ["get"]})), &r),
            "methods are exact"
        );
        assert!(!allows(to(json!({"notMethods": ["GET"]})), &r));
        assert!(
            allows(to(json!({"paths": ["/ip"]})), &r),
            "the query is not part of the path"
        );
        assert!(allows(to(json!({"paths": ["/i*"]})), &r));
        assert!(allows(to(json!({"paths": ["*p"]})), &r));
        assert!(allows(to(json!({"paths": ["*"]})), &r));
        assert!(!allows(to(json!({"paths": ["/ip?x=1"]})), &r));
        assert!(allows(to(json!({"paths": ["/{*}"]})), &r));
        assert!(allows(to(json!({"paths": ["/{**}"]})), &r));
        assert!(!allows(to(json!({"notPaths": ["/ip"]})), &r));
        assert!(allows(to(json!({"notPaths": ["/headers"]})), &r));
        assert!(!allows(
            to(json!({"methods": ["GET"], "paths": ["/headers"]})),
            &r
        ));
        assert!(allows(
            json!({"to": [{"paths": ["/headers"]}, {"methods": ["GET"]}]}),
            &r
        ));
    }

    #[test]
    fn service_accounts_match_the_peer_identity() {
        let r = req(); // spiffe://cluster.local/ns/foo/sa/sleep, policy in "default"
        let mut plain = req();
        plain.principal = None;
        let src = |s: serde_json::Value| json!({"from": [s]});
        let sa = |v: &[&str]| src(json!({"serviceAccounts": v}));
        let not_sa = |v: &[&str]| src(json!({"notServiceAccounts": v}));
        assert!(allows(sa(&["foo/sleep"]), &r));
        assert!(allows(sa(&["bar/x", "foo/sleep"]), &r), "any of them");
        assert!(!allows(sa(&["foo/sleeper"]), &r), "a whole name");
        assert!(!allows(sa(&["foo/slee"]), &r), "a whole name");
        assert!(!allows(sa(&["bar/sleep"]), &r), "another namespace");
        assert!(
            !allows(sa(&["sleep"]), &r),
            "a bare name is in the policy's namespace (default)"
        );
        let mut in_default = req();
        in_default.principal = Some("spiffe://cluster.local/ns/default/sa/sleep");
        assert!(allows(sa(&["sleep"]), &in_default));
        let mut other_domain = req();
        other_domain.principal = Some("spiffe://example.org/ns/foo/sa/sleep");
        assert!(
            allows(sa(&["foo/sleep"]), &other_domain),
            "any trust domain"
        );
        assert!(
            !allows(sa(&["foo/sleep"]), &plain),
            "no mTLS: no service account"
        );
        assert!(!allows(not_sa(&["foo/sleep"]), &r));
        assert!(allows(not_sa(&["foo/other"]), &r));
        assert!(
            allows(not_sa(&["foo/sleep"]), &plain),
            "no identity is not that one"
        );
        // In DENY, as written: only that service account is denied.
        let deny = compile(&[authz(
            "deny-sleep",
            "DENY",
            json!([{"from": [{"serviceAccounts": ["foo/sleep"]}]}]),
        )]);
        assert!(decide(&deny, &r).is_err());
        assert!(decide(&deny, &in_default).is_ok());
    }

    #[test]
    fn every_condition_key() {
        let r = req();
        let mut plain = req();
        plain.principal = None;
        let when = |k: &str, v: &str| json!({"when": [{"key": k, "values": [v]}]});
        let unless = |k: &str, v: &str| json!({"when": [{"key": k, "notValues": [v]}]});
        for (key, yes, no) in [
            ("source.ip", "10.0.0.0/8", "10.9.9.9"),
            ("remote.ip", "10.0.0.1", "10.0.0.2"),
            ("source.namespace", "foo", "bar"),
            (
                "source.principal",
                "cluster.local/ns/foo/sa/sleep",
                "cluster.local/ns/foo/sa/x",
            ),
            ("source.serviceAccount", "foo/sleep", "foo/sleeper"),
            ("destination.ip", "10.0.0.9", "10.0.0.8"),
            ("destination.port", "8080", "80"),
            ("connection.sni", "outbound_.8000_*", "inbound*"),
            ("request.headers[:method]", "GET", "POST"),
            (
                "request.headers[:authority]",
                "httpbin.default:8000",
                "httpbin",
            ),
            ("request.headers[:path]", "/ip?x=1", "/ip"),
        ] {
            assert!(allows(when(key, yes), &r), "{key} {yes}");
            assert!(!allows(when(key, no), &r), "{key} {no}");
            assert!(!allows(unless(key, yes), &r), "{key} not {yes}");
            assert!(allows(unless(key, no), &r), "{key} not {no}");
        }
        assert!(
            !allows(when("source.serviceAccount", "sleep"), &r),
            "in the policy's namespace"
        );
        assert!(!allows(when("source.namespace", "foo"), &plain));
        assert!(allows(unless("source.principal", "*"), &plain));
        let h = req().header("x-user", "alice").header("x-user", "bob");
        assert!(
            allows(when("request.headers[X-User]", "alice,bob"), &h),
            "lines joined"
        );
        assert!(allows(when("request.headers[x-user]", "ali*"), &h));
        assert!(allows(when("request.headers[x-user]", "*"), &h));
        assert!(!allows(when("request.headers[x-user]", "*"), &r), "absent");
        assert!(
            allows(unless("request.headers[x-user]", "alice"), &r),
            "absent: no value matches"
        );
        let empty = req().header("x-empty", "");
        assert!(
            allows(when("request.headers[x-empty]", "*"), &empty),
            "`*` is presence"
        );
        // values are OR'd; notValues must all miss; conditions are AND'd.
        assert!(allows(
            json!({"when": [{"key": "source.namespace", "values": ["bar", "foo"], "notValues": ["baz"]}]}),
            &r
        ));
        assert!(!allows(
            json!({"when": [
                {"key": "source.namespace", "values": ["foo"]},
                {"key": "request.headers[x-user]", "values": ["alice"]},
            ]}),
            &r
        ));
    }

    #[test]
    fn unsupported_parts_err_on_the_side_of_denying() {
        let r = req();
        let rule = json!({
            "to": [{"paths": ["/ip"]}],
            "unsupported": ["rules[0].when[0]: key experimental.envoy.filters.x[y]"],
        });
        assert!(!allows(rule.clone(), &r), "ALLOW: the rule matches nothing");
        let deny =
            |rule: serde_json::Value| decide(&compile(&[authz("d", "DENY", json!([rule]))]), &r);
        assert!(
            deny(rule).is_err(),
            "DENY: the unsupported part matches, /ip does"
        );
        let other_path = json!({
            "to": [{"paths": ["/headers"]}],
            "unsupported": ["rules[0].when[0]: ..."],
        });
        assert!(deny(other_path).is_ok(), "DENY: the rest still applies");
        // A value that does not compile is handled the same way.
        let bad = json!({"when": [{"key": "request.headers[bad header]", "values": ["x"]}]});
        assert!(!allows(bad.clone(), &r));
        assert!(deny(bad).is_err());
        let unknown =
            json!({"when": [{"key": "experimental.envoy.filters.x[y]", "values": ["x"]}]});
        assert!(!allows(unknown.clone(), &r));
        assert!(deny(unknown).is_err());
        let audit = compile(&[authz("a", "AUDIT", json!([{"unsupported": ["x"]}]))]);
        assert_eq!(audit.evaluate(&r.attrs()).1.logged, Some(false));
    }

    #[test]
    fn tcp_drops_http_fields_except_in_allow() {
        let mut tcp = req();
        tcp.tcp = true;
        let http_rule = json!({"from": [{"namespaces": ["foo"]}], "to": [{"methods": ["GET"]}]});
        assert!(
            !allows(http_rule.clone(), &tcp),
            "ALLOW: a rule with HTTP fields matches no connection"
        );
        assert!(allows(http_rule.clone(), &req()));
        assert!(allows(
            json!({"from": [{"namespaces": ["foo"]}], "to": [{"ports": [8080]}]}),
            &tcp
        ));
        let deny =
            |rule: serde_json::Value| decide(&compile(&[authz("d", "DENY", json!([rule]))]), &tcp);
        assert!(
            deny(json!({"to": [{"methods": ["POST"]}]})).is_err(),
            "DENY: dropped, so it matches more"
        );
        assert!(
            deny(json!({"to": [{"paths": ["/admin"]}], "from": [{"namespaces": ["bar"]}]})).is_ok(),
            "the rest applies"
        );
        assert!(deny(json!({"when": [{"key": "request.headers[x]", "values": ["y"]}]})).is_err());
        assert!(deny(json!({"from": [{"requestPrincipals": ["*"]}]})).is_err());
        // allow-nothing closes TCP too.
        assert!(decide(&compile(&[authz("n", "ALLOW", json!([]))]), &tcp).is_err());
    }
}
