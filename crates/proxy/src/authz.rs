//! AuthorizationPolicy and RequestAuthentication on the inbound side, failed closed.
//!
//! Ama does not evaluate either policy yet. A policy it cannot enforce must not let through
//! what it was written to stop, so the control plane sends, for every such policy that binds
//! sidecars, an [`xds::Authorization`] with `denyAll` for the workloads it selects (by
//! selector, its namespace, or the whole mesh from the root namespace). A workload that one of
//! them selects answers every inbound request as Envoy's RBAC filter answers a denied one:
//!
//! - HTTP: `403`, body `RBAC: access denied`, `response_code_details`
//!   `rbac_access_denied_matched_policy[none]`, no response flag (Envoy's RBAC filter sets
//!   none); the request never reaches the app.
//! - TCP: the connection is closed before anything reaches the app, logged with
//!   `connection_termination_details` `rbac_access_denied_matched_policy[none]` (Envoy's
//!   network RBAC filter).
//!
//! The decision is resolved once per config snapshot and cached ([`Authz`]), so a request pays
//! one atomic load.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwapOption;

use crate::authn::DEFAULT_ROOT_NAMESPACE;
use crate::config::{ProxyConfig, Snapshot};
use crate::http::ConnCtx;
use crate::telemetry::TcpRecord;

/// The body of Envoy's RBAC denial.
pub const DENIED_BODY: &str = "RBAC: access denied";
/// Envoy's `response_code_details` (and TCP `connection_termination_details`) of a denial that
/// no named policy matched: a fail-closed denial names none.
pub const DENIED_DETAILS: &str = "rbac_access_denied_matched_policy[none]";

/// Whether this workload denies every inbound request, per snapshot version.
#[derive(Debug)]
pub struct Authz {
    root_namespace: Arc<str>,
    cache: ArcSwapOption<(u64, bool)>,
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
            cache: ArcSwapOption::empty(),
        }
    }

    /// Whether a policy Ama cannot enforce selects this workload under `snap`: then every
    /// inbound request is denied.
    pub fn denies_all(&self, snap: &Snapshot, cfg: &ProxyConfig) -> bool {
        if let Some(c) = &*self.cache.load()
            && c.0 == snap.version
        {
            return c.1;
        }
        let no_labels = BTreeMap::new();
        let (namespace, labels) = match &snap.me {
            Some(w) => (Some(w.namespace.as_str()), &w.labels),
            None => (cfg.pod_namespace.as_deref(), &no_labels),
        };
        let denied = snap
            .resources
            .authorizations
            .iter()
            .any(|a| a.policy.is_some() && a.selects(&self.root_namespace, namespace, labels));
        self.cache.store(Some(Arc::new((snap.version, denied))));
        denied
    }
}

/// Inbound opaque TCP: whether the connection is refused (the caller then drops it, which
/// closes it). Logged as Envoy's network RBAC filter logs the connections it closes.
pub(crate) fn refuses_connection(ctx: &ConnCtx, start: SystemTime, t0: Instant) -> bool {
    let snap = ctx.pi.store.load();
    if !ctx.pi.authz.denies_all(&snap, &ctx.pi.cfg) {
        return false;
    }
    let port = ctx.orig_dst.get().port();
    let mut rec = TcpRecord::accepted(start, ctx.orig_dst.get(), ctx.client.get());
    rec.upstream_cluster = Some(Arc::from(format!("inbound|{port}||")));
    rec.connection_termination_details = Some(DENIED_DETAILS.into());
    rec.requested_server_name = ctx.sni.clone();
    rec.duration = t0.elapsed();
    ctx.pi.telemetry.tcp_log(rec);
    tracing::debug!(client = %ctx.client, port, "connection denied: a policy Ama cannot enforce selects this workload");
    true
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
            }),
            ..Default::default()
        }
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
