//! RequestAuthentication on the inbound side: the JWT rules of every RequestAuthentication that
//! selects this workload (by selector, its namespace, or the whole mesh from the root
//! namespace; Istio applies them all, merged), verified as Envoy's `jwt_authn` filter does
//! under Istio ([`jwt_authn`]): a request without a token passes, a token that no rule verifies
//! is answered `401` (`403` for a disallowed audience) before authorization sees the request,
//! and a verified token's payload feeds AuthorizationPolicy's `requestPrincipals` and
//! `request.auth.*` ([`crate::authz::RequestAuth`]).
//!
//! The rules are compiled (key sets parsed) once per config snapshot and cached: a request to
//! a workload no RequestAuthentication selects pays one atomic load and a branch.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use jwt_authn::JwtAuthn;

use crate::authn::DEFAULT_ROOT_NAMESPACE;
use crate::config::{ProxyConfig, Snapshot};

/// The JWT rules of this workload, compiled per snapshot version.
#[derive(Debug)]
pub struct RequestAuthn {
    root_namespace: Arc<str>,
    cache: ArcSwapOption<Compiled>,
}

/// The rules of one snapshot version; `None` when no RequestAuthentication selects the
/// workload.
#[derive(Debug)]
struct Compiled {
    version: u64,
    authn: Option<Arc<JwtAuthn>>,
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
            cache: ArcSwapOption::empty(),
        }
    }

    /// The JWT rules that apply to this workload under `snap`, compiled on the first call for a
    /// snapshot version; `None` (one atomic load) when no RequestAuthentication selects it.
    pub fn rules(&self, snap: &Snapshot, cfg: &ProxyConfig) -> Option<Arc<JwtAuthn>> {
        let cached = self.cache.load();
        if let Some(c) = &*cached
            && c.version == snap.version
        {
            return c.authn.clone();
        }
        // A request still on an older snapshot compiles for itself and leaves the cache to the
        // newer one.
        let newer_cached = cached.as_ref().is_some_and(|c| c.version > snap.version);
        drop(cached);
        let no_labels = BTreeMap::new();
        let (namespace, labels) = match &snap.me {
            Some(w) => (Some(w.namespace.as_str()), &w.labels),
            None => (cfg.pod_namespace.as_deref(), &no_labels),
        };
        let rules: Vec<xds::JwtRule> = snap
            .resources
            .authorizations
            .iter()
            .filter(|a| a.selects(&self.root_namespace, namespace, labels))
            .filter_map(|a| a.request_authentication.as_ref())
            .flat_map(|ra| ra.jwt_rules.iter().cloned())
            .collect();
        // A RequestAuthentication without rules accepts no token and requires none: nothing to
        // check.
        let authn = (!rules.is_empty()).then(|| Arc::new(JwtAuthn::new(&rules)));
        if !newer_cached {
            self.cache.store(Some(Arc::new(Compiled {
                version: snap.version,
                authn: authn.clone(),
            })));
        }
        authn
    }
}
