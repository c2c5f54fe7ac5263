//! AuthorizationPolicy on the inbound side: the policies that select this workload (by
//! selector, its namespace, or the whole mesh from the root namespace; [`xds::Authorization`]),
//! evaluated on every inbound request and every opaque inbound connection with Istio's
//! semantics ([`policy`]): CUSTOM, then AUDIT, DENY and ALLOW, as the filters Istio's builder
//! puts in that order. A denial is Envoy's RBAC filter's:
//!
//! - HTTP: `403`, body `RBAC: access denied` (to a gRPC client a trailers-only
//!   `grpc-status: 7`, as Envoy's `sendLocalReply` makes it), `response_code_details`
//!   `rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[I]]` for a DENY or CUSTOM
//!   match and `rbac_access_denied_matched_policy[none]` when no ALLOW rule matched, no
//!   response flag; the request never reaches the app and is counted in
//!   `istio_requests_total` as any local reply.
//! - TCP: the connection is closed before anything reaches the app, logged with the same
//!   `connection_termination_details` (Envoy's network RBAC filter).
//!
//! Ama has no external authorizer: a CUSTOM policy denies what it matches. AUDIT logs a
//! matching request at INFO and counts it. A dry-run policy (`istio.io/dry-run`) decides
//! nothing: it is evaluated as Envoy's RBAC shadow rules, counted under Istio's shadow stat
//! prefixes, and what it would have denied is logged at INFO. Envoy's RBAC counters are kept for the admin
//! `/stats` ([`RbacStats`]). Paths are matched as Envoy's connection manager normalizes them
//! ([`normalize_path`]). A verified JWT is an input ([`RequestAuth`]), fed by
//! [`crate::request_authn`] on the inbound path; without one, `requestPrincipals` and
//! `request.auth.*` match nothing (their `not` forms match every request).
//!
//! The policies are compiled once per config snapshot and cached ([`Authz`]): a request to a
//! workload no policy selects pays one atomic load and a branch; otherwise the matching
//! itself, which borrows from the request and compiles nothing.

mod matcher;
pub mod policy;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use crate::authn::DEFAULT_ROOT_NAMESPACE;
use crate::config::{ProxyConfig, Snapshot};
use crate::http::ConnCtx;
use crate::per_snapshot::{PerSnapshot, workload_scope};
use crate::port_stats::{PerPort, inbound_http_prefix};
use crate::telemetry::TcpRecord;

pub use matcher::normalize_path;
pub use policy::{
    Attributes, HttpAttributes, Outcome, Policies, RequestAuth, Shadow, Verdict, remote_ip,
};

/// The body of Envoy's RBAC denial.
pub const DENIED_BODY: &str = "RBAC: access denied";
/// Envoy's `response_code_details` (and TCP `connection_termination_details`) of a denial that
/// no named policy caused: ALLOW policies select the workload and none matched.
pub const DENIED_DETAILS: &str = "rbac_access_denied_matched_policy[none]";

/// The AuthorizationPolicies of this workload, compiled per snapshot version, and Envoy's RBAC
/// counters.
#[derive(Debug)]
pub struct Authz {
    root_namespace: Arc<str>,
    compiled: PerSnapshot<Policies>,
    stats: RbacStats,
}

impl Default for Authz {
    fn default() -> Self {
        Authz::new(DEFAULT_ROOT_NAMESPACE)
    }
}

impl Authz {
    /// Mesh-wide policies live in `root_namespace`.
    pub fn new(root_namespace: &str) -> Authz {
        Authz {
            root_namespace: Arc::from(root_namespace),
            compiled: PerSnapshot::default(),
            stats: RbacStats::default(),
        }
    }

    /// The AuthorizationPolicies that select this workload under `snap`, compiled on the first
    /// call for a snapshot version; `None` (one atomic load) when none does.
    pub fn policies(&self, snap: &Snapshot, cfg: &ProxyConfig) -> Option<Arc<Policies>> {
        self.compiled.get(snap.version, || {
            let no_labels = BTreeMap::new();
            let (namespace, labels) = workload_scope(snap, cfg, &no_labels);
            let compiled = Policies::compile(snap.resources.authorizations.iter().filter(|a| {
                a.policy.is_some() && a.selects(&self.root_namespace, namespace, labels)
            }));
            (!compiled.is_empty()).then_some(compiled)
        })
    }

    /// Envoy's RBAC counters.
    pub fn stats(&self) -> &RbacStats {
        &self.stats
    }
}

/// Envoy's `rbac_access_denied_matched_policy[...]` for a denial by `rule` (`None`: no ALLOW
/// rule matched). Made only when a request is denied.
fn denial_details(rule: Option<&policy::Rule>) -> Cow<'static, str> {
    match rule {
        Some(r) => Cow::Owned(r.details().to_string()),
        None => Cow::Borrowed(DENIED_DETAILS),
    }
}

/// Inbound HTTP: decides the request whose head is `parts` on connection `ctx` under
/// `policies`, with the verified JWT `auth` if any. Returns the denial's
/// `response_code_details` when it is denied. Counts Envoy's RBAC counters.
pub(crate) fn check_request(
    ctx: &ConnCtx,
    policies: &Policies,
    parts: &http::request::Parts,
    auth: Option<RequestAuth<'_>>,
) -> Option<Cow<'static, str>> {
    let client = ctx.client.get().ip();
    // Envoy's RBAC filter sees the path its connection manager normalized.
    let path = matcher::normalize_path(
        parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str()),
    );
    let attrs = Attributes {
        principal: ctx.peer.as_ref().map(|p| &*p.principal),
        source_ip: client,
        remote_ip: remote_ip(&parts.headers, client),
        destination: ctx.orig_dst.get(),
        sni: ctx.sni.as_deref(),
        http: Some(HttpAttributes {
            method: parts.method.as_str(),
            authority: crate::http::request_authority(&parts.uri, &parts.headers).unwrap_or(""),
            path: &path,
            headers: &parts.headers,
            auth,
        }),
    };
    let (verdict, outcome) = policies.evaluate(&attrs);
    ctx.pi
        .authz
        .stats
        .count_http(ctx.orig_dst.get().port(), outcome);
    match verdict {
        Verdict::Allow => None,
        Verdict::Deny(rule) => {
            tracing::debug!(client = %ctx.client, policy = rule.map_or("none", |r| r.name()), "request denied by AuthorizationPolicy");
            Some(denial_details(rule))
        }
    }
}

/// Inbound opaque TCP: whether the connection is refused (the caller then drops it, which
/// closes it). Logged as Envoy's network RBAC filter logs the connections it closes.
pub(crate) fn refuses_connection(ctx: &ConnCtx, start: SystemTime, t0: Instant) -> bool {
    let snap = ctx.pi.store.load();
    let Some(policies) = ctx.pi.authz.policies(&snap, &ctx.pi.cfg) else {
        return false;
    };
    drop(snap);
    let client = ctx.client.get().ip();
    let attrs = Attributes {
        principal: ctx.peer.as_ref().map(|p| &*p.principal),
        source_ip: client,
        // No proxy protocol: the original client is the peer.
        remote_ip: client,
        destination: ctx.orig_dst.get(),
        sni: ctx.sni.as_deref(),
        http: None,
    };
    let (verdict, outcome) = policies.evaluate(&attrs);
    ctx.pi.authz.stats.tcp.add(outcome);
    let Verdict::Deny(rule) = verdict else {
        return false;
    };
    let port = ctx.orig_dst.get().port();
    let mut rec = TcpRecord::accepted(
        start,
        ctx.direction.reporter(),
        ctx.orig_dst.get(),
        ctx.client.get(),
    );
    rec.upstream_cluster = Some(Arc::from(format!("inbound|{port}||")));
    rec.connection_termination_details = Some(denial_details(rule));
    rec.requested_server_name = ctx.sni.clone();
    rec.duration = t0.elapsed();
    ctx.pi.telemetry.tcp_log(rec);
    tracing::debug!(client = %ctx.client, port, policy = rule.map_or("none", |r| r.name()), "connection denied by AuthorizationPolicy");
    true
}

/// Envoy's RBAC filter counters: per inbound HTTP port under Istio's connection manager prefix
/// (`http.inbound_0.0.0.0_<port>;.rbac.`: Istio ends its stat prefixes with `;` for its tag
/// extraction, and Envoy's `/stats` prints them so), and for TCP under Istio's network filter prefix
/// (`tcp.rbac.`). Each RBAC filter that runs counts `allowed` or `denied` (Istio installs one
/// per action present: CUSTOM, AUDIT, DENY, ALLOW; the AUDIT one, Envoy's LOG action, always
/// allows). The dry-run policies are those filters' shadow rules, counted as Envoy counts them
/// under Istio's `shadow_rules_stat_prefix`: `rbac.istio_dry_run_deny_shadow_{allowed,denied}`
/// (the DENY filter) and `rbac.istio_dry_run_allow_shadow_{allowed,denied}` (the ALLOW filter),
/// listed once a dry-run policy has been evaluated under the prefix; the unprefixed
/// `shadow_allowed` and `shadow_denied` of the filters without shadow rules stay 0. Envoy has
/// no counter of AUDIT matches: Ama's own is `ama_audit_logged`, under the same prefix.
#[derive(Debug, Default)]
pub struct RbacStats {
    tcp: RbacCounters,
    http: PerPort<RbacCounters>,
}

/// One prefix's counters.
#[derive(Debug, Default)]
pub struct RbacCounters {
    allowed: AtomicU64,
    denied: AtomicU64,
    audit_logged: AtomicU64,
    dry_run_deny: ShadowCounters,
    dry_run_allow: ShadowCounters,
}

/// One shadow engine's counters.
#[derive(Debug, Default)]
struct ShadowCounters {
    allowed: AtomicU64,
    denied: AtomicU64,
}

impl ShadowCounters {
    fn add(&self, s: Option<Shadow>) {
        match s {
            Some(Shadow::Allowed) => self.allowed.fetch_add(1, Ordering::Relaxed),
            Some(Shadow::Denied) => self.denied.fetch_add(1, Ordering::Relaxed),
            None => return,
        };
    }

    /// Whether the engine has run (Envoy lists a filter's counters once it is configured; Ama,
    /// which configures nothing ahead, once they count).
    fn ran(&self) -> bool {
        self.allowed.load(Ordering::Relaxed) + self.denied.load(Ordering::Relaxed) > 0
    }
}

/// Istio's `shadow_rules_stat_prefix` of the DENY filter's shadow rules.
const DRY_RUN_DENY_PREFIX: &str = "istio_dry_run_deny_";
/// Istio's `shadow_rules_stat_prefix` of the ALLOW filter's shadow rules.
const DRY_RUN_ALLOW_PREFIX: &str = "istio_dry_run_allow_";

impl RbacCounters {
    fn add(&self, o: Outcome) {
        if o.allowed > 0 {
            self.allowed
                .fetch_add(u64::from(o.allowed), Ordering::Relaxed);
        }
        if o.denied > 0 {
            self.denied
                .fetch_add(u64::from(o.denied), Ordering::Relaxed);
        }
        if o.logged == Some(true) {
            self.audit_logged.fetch_add(1, Ordering::Relaxed);
        }
        self.dry_run_deny.add(o.dry_run_deny);
        self.dry_run_allow.add(o.dry_run_allow);
    }

    fn lines(&self, prefix: &str, out: &mut String) {
        use std::fmt::Write;
        let zero = AtomicU64::new(0);
        let line = |out: &mut String, shadow: &str, name: &str, c: &AtomicU64| {
            let _ = writeln!(
                out,
                "{prefix}rbac.{shadow}{name}: {}",
                c.load(Ordering::Relaxed)
            );
        };
        // In Envoy's `/stats` order: by name.
        line(out, "", "allowed", &self.allowed);
        line(out, "", "ama_audit_logged", &self.audit_logged);
        line(out, "", "denied", &self.denied);
        for (shadow, c) in [
            (DRY_RUN_ALLOW_PREFIX, &self.dry_run_allow),
            (DRY_RUN_DENY_PREFIX, &self.dry_run_deny),
        ] {
            if c.ran() {
                line(out, shadow, "shadow_allowed", &c.allowed);
                line(out, shadow, "shadow_denied", &c.denied);
            }
        }
        line(out, "", "shadow_allowed", &zero);
        line(out, "", "shadow_denied", &zero);
    }

    fn is_zero(&self) -> bool {
        [&self.allowed, &self.denied, &self.audit_logged]
            .iter()
            .all(|c| c.load(Ordering::Relaxed) == 0)
            && !self.dry_run_deny.ran()
            && !self.dry_run_allow.ran()
    }
}

impl RbacStats {
    fn count_http(&self, port: u16, o: Outcome) {
        self.http.with(port, |c| c.add(o));
    }

    /// The counters as Envoy's admin `/stats` prints them, one `name: value` per line: the
    /// inbound HTTP ports that have evaluated a request, and TCP once it has.
    pub fn envoy_lines(&self) -> String {
        let mut out = String::new();
        self.http
            .for_each(|port, c| c.lines(&inbound_http_prefix(port), &mut out));
        if !self.tcp.is_zero() {
            self.tcp.lines("tcp.", &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use xds::Authorization;

    fn deny_all(ns: &str, selector: &[(&str, &str)]) -> Authorization {
        Authorization {
            name: "AuthorizationPolicy/p".into(),
            namespace: ns.into(),
            selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            policy: Some(xds::AuthorizationPolicy {
                action: xds::Action::Deny,
                provider: String::new(),
                rules: vec![xds::Rule::default()],
                dry_run: false,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn compiled_once_per_snapshot_for_the_selected_workload() {
        use std::sync::Arc;

        use crate::config::{ConfigStore, ProxyConfig};

        let resources = |policies: &str| {
            xds::ProxyResources::parse(&format!(
                "self: {{uid: httpbin-uid}}\nworkloads:\n- {{uid: httpbin-uid, name: httpbin-1, namespace: default, workloadName: httpbin, labels: {{app: httpbin}}}}\nauthorizations:\n{policies}"
            ))
            .expect("resources")
        };
        let cfg = Arc::new(ProxyConfig::default());
        let deny = "- {name: d, namespace: default, selector: {app: httpbin}, policy: {action: DENY, rules: [{}]}}\n";
        let store = ConfigStore::new(resources(deny), cfg.clone()).expect("store");
        let authz = super::Authz::default();
        let snap = store.load();
        let first = authz.policies(&snap, &cfg).expect("selected");
        let again = authz.policies(&snap, &cfg).expect("selected");
        assert!(Arc::ptr_eq(&first, &again), "compiled once per snapshot");
        let others = "- {name: d, namespace: default, selector: {app: sleep}, policy: {action: DENY, rules: [{}]}}\n- {name: pa, namespace: default, peerAuthentication: {mode: STRICT}}\n";
        store.apply(resources(others)).expect("apply");
        let newer = store.load();
        assert!(
            authz.policies(&newer, &cfg).is_none(),
            "another workload's policy"
        );
        // A request still on the older snapshot gets its policies, and leaves the cache be.
        assert!(authz.policies(&snap, &cfg).is_some());
        assert!(authz.policies(&newer, &cfg).is_none());
        let mesh = "- {name: m, namespace: istio-system, policy: {action: ALLOW}}\n";
        store.apply(resources(mesh)).expect("apply");
        assert!(authz.policies(&store.load(), &cfg).is_some(), "mesh-wide");
    }

    #[test]
    fn shadow_counters_under_istios_dry_run_prefixes() {
        use super::{Outcome, RbacStats, Shadow};

        let stats = RbacStats::default();
        stats.count_http(
            8000,
            Outcome {
                allowed: 1,
                ..Default::default()
            },
        );
        let lines = stats.envoy_lines();
        assert!(
            !lines.contains("istio_dry_run"),
            "no dry-run policy evaluated, no shadow prefix: {lines}"
        );
        assert!(lines.contains("http.inbound_0.0.0.0_8000;.rbac.shadow_denied: 0\n"));
        for o in [
            Outcome {
                dry_run_deny: Some(Shadow::Denied),
                ..Default::default()
            },
            Outcome {
                allowed: 1,
                dry_run_deny: Some(Shadow::Denied),
                dry_run_allow: Some(Shadow::Allowed),
                ..Default::default()
            },
            Outcome {
                dry_run_allow: Some(Shadow::Denied),
                ..Default::default()
            },
        ] {
            stats.count_http(8000, o);
        }
        let p = "http.inbound_0.0.0.0_8000;.rbac.";
        assert_eq!(
            stats.envoy_lines(),
            [
                "allowed: 2",
                "ama_audit_logged: 0",
                "denied: 0",
                "istio_dry_run_allow_shadow_allowed: 1",
                "istio_dry_run_allow_shadow_denied: 1",
                "istio_dry_run_deny_shadow_allowed: 0",
                "istio_dry_run_deny_shadow_denied: 2",
                "shadow_allowed: 0",
                "shadow_denied: 0",
            ]
            .iter()
            .map(|l| format!("{p}{l}\n"))
            .collect::<String>()
        );
        // TCP: under the network filter's prefix, listed once a dry run counted.
        let tcp = RbacStats::default();
        tcp.tcp.add(Outcome {
            dry_run_deny: Some(Shadow::Allowed),
            ..Default::default()
        });
        assert!(
            tcp.envoy_lines()
                .contains("tcp.rbac.istio_dry_run_deny_shadow_allowed: 1\n"),
            "{}",
            tcp.envoy_lines()
        );
    }

    #[test]
    fn selector_namespace_and_mesh() {
        let labels = [("app".to_string(), "httpbin".to_string())].into();
        let selects = |a: Authorization| a.selects("istio-system", Some("default"), &labels);
        assert!(selects(deny_all("default", &[("app", "httpbin")])));
        assert!(selects(deny_all("default", &[])), "namespace-wide");
        assert!(selects(deny_all("istio-system", &[])), "mesh-wide");
        assert!(!selects(deny_all("default", &[("app", "sleep")])));
        assert!(!selects(deny_all("other", &[])));
        assert!(
            !selects(deny_all("istio-system", &[("app", "httpbin")])),
            "a root selector selects in the root namespace only"
        );
    }
}
