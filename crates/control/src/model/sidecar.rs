//! Sidecar resources: which services, routes and policies a proxy receives, and its
//! `outboundTrafficPolicy`.
//!
//! As Istio picks the Sidecar of a proxy: one of its namespace whose `workloadSelector`
//! selects it (the first by name when several do), else the one of its namespace without a
//! selector, else the one of the root namespace without a selector. The `hosts` of every
//! `egress` listener (`namespace/host`: `*/*`, `./*`, `istio-system/*`, `~/*`,
//! `ns/*.example.com`, `ns/api.example.com`) say which services the proxy sees: one whose
//! namespace and hostname an entry matches (`.` is the proxy's namespace, also under the root
//! namespace's Sidecar; `~` matches none). Its `outboundTrafficPolicy.mode` overrides the
//! MeshConfig's.
//!
//! Not implemented (reported by `api::support`): `ingress`, and the `port`, `bind` and
//! `captureMode` of an egress listener (its hosts are taken for every port),
//! `outboundTrafficPolicy.egressProxy`, `inboundConnectionPool`.

use api::networking::sidecar::Sidecar;
use api::objects::{IstioConfig, Object};

use super::{Labels, ROOT_NAMESPACE, selector_matches};

/// One Sidecar, as translation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarScope {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The proxies it applies to in its namespace (`None`: all of them).
    pub workload_selector: Option<Labels>,
    /// Egress hosts: `(namespace, host)` patterns, as written.
    pub egress_hosts: Vec<(String, String)>,
    /// Whether it lists egress hosts at all (without egress listeners every service is seen).
    pub has_egress: bool,
    /// Its `outboundTrafficPolicy.mode`, if set.
    pub outbound_traffic_policy: Option<xds::OutboundTrafficPolicy>,
}

impl SidecarScope {
    /// `namespace/name`, the key that tells proxies' views apart.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether a proxy in `proxy_ns` with this Sidecar sees a host of namespace `host_ns`.
    pub fn sees(&self, proxy_ns: &str, host_ns: &str, host: &str) -> bool {
        !self.has_egress
            || self.egress_hosts.iter().any(|(ns, pattern)| {
                namespace_matches(ns, proxy_ns, host_ns) && host_matches(pattern, host)
            })
    }
}

fn namespace_matches(pattern: &str, proxy_ns: &str, host_ns: &str) -> bool {
    match pattern {
        "*" => true,
        "~" => false,
        "." => host_ns == proxy_ns,
        ns => host_ns == ns,
    }
}

/// `*`, `*.suffix` (one or more labels before `.suffix`; a wildcard host `*.a.b` is covered by
/// `*.b` patterns and by itself), or the host exactly (case-insensitive).
fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            let host_tail = host.strip_prefix('*').unwrap_or(host);
            host_tail.len() >= suffix.len()
                && host_tail[host_tail.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && (host.len() > suffix.len())
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Every Sidecar among `objects`, sorted by namespace and name.
pub(crate) fn build(objects: &[&Object]) -> Vec<SidecarScope> {
    let mut out: Vec<SidecarScope> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Sidecar(sc) => Some(scope(sc)),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

fn scope(sc: &IstioConfig<Sidecar>) -> SidecarScope {
    let egress_hosts = sc
        .spec
        .egress
        .iter()
        .flat_map(|l| &l.hosts)
        .filter_map(|h| h.split_once('/'))
        .map(|(ns, host)| (ns.to_string(), host.to_ascii_lowercase()))
        .collect();
    SidecarScope {
        namespace: sc.metadata.namespace.clone(),
        name: sc.metadata.name.clone(),
        workload_selector: sc.spec.workload_selector.as_ref().map(|s| s.labels.clone()),
        egress_hosts,
        has_egress: !sc.spec.egress.is_empty(),
        outbound_traffic_policy: sc
            .spec
            .outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode)
            .map(|m| super::outbound_mode(Some(m))),
    }
}

/// The Sidecar of a proxy in `namespace` with `labels` (`None` when its workload is unknown:
/// only Sidecars without a selector can apply), by Istio's precedence.
pub fn for_proxy<'a>(
    sidecars: &'a [SidecarScope],
    namespace: &str,
    labels: Option<&Labels>,
) -> Option<&'a SidecarScope> {
    let selected = sidecars.iter().find(|s| {
        s.namespace == namespace
            && s.workload_selector
                .as_ref()
                .is_some_and(|sel| labels.is_some_and(|l| selector_matches(sel, l)))
    });
    selected
        .or_else(|| {
            sidecars
                .iter()
                .find(|s| s.namespace == namespace && s.workload_selector.is_none())
        })
        .or_else(|| {
            sidecars
                .iter()
                .find(|s| s.namespace == ROOT_NAMESPACE && s.workload_selector.is_none())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_as_istio_egress_hosts() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "*.example.com"));
        assert!(host_matches("*.com", "*.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("API.example.com", "api.example.com"));
        assert!(!host_matches("api.example.com", "*.example.com"));
        assert!(namespace_matches(".", "foo", "foo"));
        assert!(!namespace_matches(".", "foo", "bar"));
        assert!(!namespace_matches("~", "foo", "foo"));
        assert!(namespace_matches("*", "foo", "bar"));
        assert!(namespace_matches("istio-system", "foo", "istio-system"));
    }
}
