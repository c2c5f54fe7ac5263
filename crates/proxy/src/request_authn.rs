//! RequestAuthentication on the inbound side: the JWT rules of every RequestAuthentication that
//! selects this workload (by selector, its namespace, or the whole mesh from the root
//! namespace; Istio applies them all, merged), verified as Envoy's `jwt_authn` filter does
//! under Istio ([`jwt_authn`]): a request without a token passes, a token that no rule verifies
//! is answered `401` (`403` for a disallowed audience) before authorization sees the request,
//! and a verified token's payload feeds AuthorizationPolicy's `requestPrincipals` and
//! `request.auth.*` ([`crate::authz::RequestAuth`]).
//!
//! The rules are compiled (key sets parsed) once per config snapshot and cached: a request to
//! a workload no RequestAuthentication selects pays one atomic load and a branch. Outcomes are
//! counted as Envoy's filter counts them, for `/stats` ([`JwtAuthnStats`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jwt_authn::JwtAuthn;

use crate::authn::DEFAULT_ROOT_NAMESPACE;
use crate::config::{ProxyConfig, Snapshot};
use crate::per_snapshot::{PerSnapshot, workload_scope};
use crate::port_stats::{PerPort, inbound_http_prefix};

/// The JWT rules of this workload, compiled per snapshot version, and Envoy's jwt_authn
/// counters.
#[derive(Debug)]
pub struct RequestAuthn {
    root_namespace: Arc<str>,
    compiled: PerSnapshot<JwtAuthn>,
    stats: JwtAuthnStats,
}

impl Default for RequestAuthn {
    fn default() -> Self {
        RequestAuthn::new(DEFAULT_ROOT_NAMESPACE)
    }
}

impl RequestAuthn {
    /// Mesh-wide policies live in `root_namespace`.
    pub fn new(root_namespace: &str) -> RequestAuthn {
        RequestAuthn {
            root_namespace: Arc::from(root_namespace),
            compiled: PerSnapshot::default(),
            stats: JwtAuthnStats::default(),
        }
    }

    /// The JWT rules that apply to this workload under `snap`, compiled on the first call for a
    /// snapshot version; `None` (one atomic load) when no RequestAuthentication selects it.
    pub fn rules(&self, snap: &Snapshot, cfg: &ProxyConfig) -> Option<Arc<JwtAuthn>> {
        self.compiled.get(snap.version, || {
            let no_labels = BTreeMap::new();
            let (namespace, labels) = workload_scope(snap, cfg, &no_labels);
            let rules: Vec<xds::JwtRule> = snap
                .resources
                .authorizations
                .iter()
                .filter(|a| a.selects(&self.root_namespace, namespace, labels))
                .filter_map(|a| a.request_authentication.as_ref())
                .flat_map(|ra| ra.jwt_rules.iter().cloned())
                .collect();
            // A RequestAuthentication without rules accepts no token and requires none: nothing
            // to check.
            (!rules.is_empty()).then(|| JwtAuthn::new(&rules))
        })
    }

    /// Envoy's jwt_authn counters.
    pub fn stats(&self) -> &JwtAuthnStats {
        &self.stats
    }
}

/// Envoy's `jwt_authn` filter counters, per inbound HTTP port under Istio's connection manager
/// prefix (`http.inbound_0.0.0.0_<port>;.jwt_authn.`), for the ports where a
/// RequestAuthentication has checked a request (Istio installs the filter only then): `allowed`
/// (no token, a verified one, or a CORS preflight), `cors_preflight_bypassed`, `denied`; the key
/// set fetches `jwks_fetch_success` and `jwks_fetch_failed` stay 0, as key sets come inline
/// (istiod fetches `jwksUri`).
#[derive(Debug, Default)]
pub struct JwtAuthnStats {
    http: PerPort<JwtAuthnCounters>,
}

#[derive(Debug, Default)]
struct JwtAuthnCounters {
    allowed: AtomicU64,
    cors_preflight_bypassed: AtomicU64,
    denied: AtomicU64,
}

impl JwtAuthnStats {
    /// Counts one request's outcome on inbound `port`.
    pub fn count(&self, port: u16, outcome: &jwt_authn::Outcome) {
        self.http.with(port, |c| {
            let counter = match outcome {
                jwt_authn::Outcome::NoToken | jwt_authn::Outcome::Verified(_) => &c.allowed,
                jwt_authn::Outcome::Preflight => {
                    // Envoy's filter completes a bypassed preflight as allowed too.
                    c.cors_preflight_bypassed.fetch_add(1, Ordering::Relaxed);
                    &c.allowed
                }
                jwt_authn::Outcome::Denied(_) => &c.denied,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// The counters as Envoy's admin `/stats` prints them, one `name: value` per line.
    pub fn envoy_lines(&self) -> String {
        let mut out = String::new();
        self.http.for_each(|port, c| {
            let prefix = inbound_http_prefix(port);
            for (name, value) in [
                ("allowed", c.allowed.load(Ordering::Relaxed)),
                (
                    "cors_preflight_bypassed",
                    c.cors_preflight_bypassed.load(Ordering::Relaxed),
                ),
                ("denied", c.denied.load(Ordering::Relaxed)),
                ("jwks_fetch_failed", 0),
                ("jwks_fetch_success", 0),
            ] {
                let _ = writeln!(out, "{prefix}jwt_authn.{name}: {value}");
            }
        });
        out
    }
}
