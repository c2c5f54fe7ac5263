//! Istio config → the `xds` resources: VirtualService → [`xds::HttpRoutes`], DestinationRule
//! → [`xds::TrafficPolicy`], PeerAuthentication, AuthorizationPolicy and RequestAuthentication
//! → [`xds::Authorization`].
//!
//! What Ama implements of each kind is said once, in [`api::support`], which reports the rest
//! to the user (the CLI prints it, discovery logs it). The translation here leaves the rest
//! out, always on the safe side, and warns only of what depends on the whole mesh (a host no
//! service matches, a second namespace-wide policy):
//!
//! - VirtualService: [`super::routes`]. When several VirtualServices route one host, a proxy
//!   uses one of them for it (Istio does not merge them for sidecars): see
//!   [`crate::translate`] for which; each one that loses for proxies of the host's namespace is
//!   a warning naming the one that wins.
//! - DestinationRule: [`super::policy`], which merges rules for one host as pilot does.
//! - PeerAuthentication: modes are resolved here, since the wire has no `UNSET`: a port's
//!   `UNSET` takes the policy's mode, a workload policy's takes its namespace policy's, a
//!   namespace policy's takes the mesh policy's (root namespace, no selector), which defaults to
//!   `PERMISSIVE`. One namespace-wide (or mesh-wide) policy per namespace is used, the first by
//!   name (Istio takes the oldest), the others are reported. The proxy applies the most
//!   specific one: a selector match, then its namespace's, then the mesh's. These entries are
//!   named `converted_peer_authentication_<name>` (ztunnel's name) and carry no rules: the
//!   proxy reads only their `peerAuthentication`.
//! - AuthorizationPolicy and RequestAuthentication: [`super::security`], one entry per policy
//!   (per Service of its `targetRefs`) with its rules or JWT rules, what Ama cannot evaluate
//!   marked so that the proxy errs on the side of denying; the key sets of `jwksUri`s come from
//!   discovery's fetches ([`super::security::FetchedJwks`]).

use std::collections::BTreeMap;

use api::objects::{IstioConfig, Object};
use api::security::peer_authentication::{MtlsMode, PeerAuthentication};

use super::security::{self, FetchedJwks, JwksSource};
use super::{ROOT_NAMESPACE, Scoped, Warnings, policy, routes, service_hostname};

/// What the Istio config gives.
#[derive(Debug, Default)]
pub(crate) struct ConfigOut {
    pub http_routes: Vec<Scoped<xds::HttpRoutes>>,
    pub traffic_policies: Vec<Scoped<xds::TrafficPolicy>>,
    pub authorizations: Vec<xds::Authorization>,
    pub jwks_sources: Vec<JwksSource>,
}

/// Name prefix of the entries carrying a PeerAuthentication (ztunnel's).
pub const PEER_AUTHENTICATION_PREFIX: &str = "converted_peer_authentication_";

pub(crate) fn build(
    objects: &[&Object],
    services: &[Scoped<xds::Service>],
    jwks: &FetchedJwks,
    warnings: &mut Warnings,
) -> ConfigOut {
    let hosts: Vec<&str> = services
        .iter()
        .map(|s| s.resource.hostname.as_str())
        .collect();
    let mut out = ConfigOut::default();
    let unreadable = unreadable_peer_authentications(objects);
    let mut peer_authentications: Vec<&IstioConfig<PeerAuthentication>> =
        unreadable.iter().collect();
    let mut destination_rules = Vec::new();
    let mut virtual_services = Vec::new();
    for o in objects {
        match o {
            Object::VirtualService(vs) => virtual_services.push(vs),
            Object::DestinationRule(dr) => destination_rules.push(dr),
            Object::PeerAuthentication(pa) => peer_authentications.push(pa),
            _ => {}
        }
    }
    out.http_routes =
        routes::virtual_services(&virtual_services, &hosts, &mut |o, m| warnings.add(o, m));
    out.traffic_policies = policy::destination_rules(
        &destination_rules,
        &hosts,
        &super::secrets::Secrets::new(objects),
        &mut |o, m| warnings.add(o, m),
    );
    let security = security::build(objects, jwks, warnings);
    out.authorizations = security.authorizations;
    out.jwks_sources = security.jwks_sources;
    out.authorizations
        .extend(peer_authentication(&peer_authentications, warnings));
    out.http_routes
        .sort_by(|a, b| a.resource.name.cmp(&b.resource.name));
    shadowed_virtual_services(&out.http_routes, services, warnings);
    out.traffic_policies
        .sort_by(|a, b| a.resource.name.cmp(&b.resource.name));
    out.authorizations
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// Hosts as written → service hostnames: a short name is in the object's namespace, `*` and
/// `*.suffix` stand for the known services they match, others are taken as they are.
pub fn resolve_host(host: &str, namespace: &str, known: &[&str]) -> Vec<String> {
    let host = host.to_ascii_lowercase();
    if host == "*" {
        return known.iter().map(|h| h.to_string()).collect();
    }
    if let Some(suffix) = host.strip_prefix('*') {
        return known
            .iter()
            .filter(|h| h.ends_with(suffix))
            .map(|h| h.to_string())
            .collect();
    }
    if host.contains('.') {
        vec![host]
    } else {
        vec![service_hostname(&host, namespace)]
    }
}

/// Warns of each VirtualService that routes a host another one routes for the proxies of the
/// host's namespace (the view [`crate::translate`] gives them: a VirtualService of that
/// namespace first, then the first by name).
fn shadowed_virtual_services(
    routes: &[Scoped<xds::HttpRoutes>],
    services: &[Scoped<xds::Service>],
    warnings: &mut Warnings,
) {
    let service_ns: BTreeMap<&str, &str> = services
        .iter()
        .map(|s| (s.resource.hostname.as_str(), s.resource.namespace.as_str()))
        .collect();
    let mut by_host: BTreeMap<&str, Vec<&Scoped<xds::HttpRoutes>>> = BTreeMap::new();
    for r in routes {
        for h in &r.resource.hosts {
            by_host.entry(h.as_str()).or_default().push(r);
        }
    }
    let display = |r: &Scoped<xds::HttpRoutes>| format!("VirtualService {}", r.resource.name);
    for (host, mut claims) in by_host {
        if claims.len() < 2 {
            continue;
        }
        let host_ns = service_ns.get(host).copied().unwrap_or("");
        claims.sort_by_key(|r| (r.namespace != host_ns, r.resource.name.as_str()));
        let winner = claims[0];
        for r in &claims[1..] {
            let scope = if r.namespace == winner.namespace {
                "it is not used for this host".to_string()
            } else {
                format!(
                    "only proxies in namespace {} use this one for it",
                    r.namespace
                )
            };
            warnings.add(
                display(r),
                format!(
                    "spec.hosts: {host} is also routed by {}, which wins (Istio uses one \
                     VirtualService per host for sidecars, the oldest, and does not merge them): \
                     {scope}",
                    display(winner)
                ),
            );
        }
    }
}

fn mode(m: Option<&api::security::peer_authentication::MutualTls>) -> Option<xds::MtlsMode> {
    match m.and_then(|m| m.mode) {
        Some(MtlsMode::Strict) => Some(xds::MtlsMode::Strict),
        Some(MtlsMode::Permissive) => Some(xds::MtlsMode::Permissive),
        Some(MtlsMode::Disable) => Some(xds::MtlsMode::Disable),
        Some(MtlsMode::Unset) | None => None,
    }
}

fn has_selector(pa: &IstioConfig<PeerAuthentication>) -> bool {
    pa.spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
}

/// The PeerAuthentications Ama cannot read ([`api::objects::UnreadablePolicy`]), each as a
/// STRICT policy with its selector: mutual TLS only is the side that fails closed (plaintext
/// the policy may have been written to refuse stays refused).
fn unreadable_peer_authentications(objects: &[&Object]) -> Vec<IstioConfig<PeerAuthentication>> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::UnreadablePolicy(u)
                if u.kind == api::security::PolicyKind::PeerAuthentication =>
            {
                Some(IstioConfig {
                    api_version: u.api_version.clone(),
                    metadata: u.metadata.clone(),
                    spec: PeerAuthentication {
                        selector: u.binding.selector.clone(),
                        mtls: Some(api::security::peer_authentication::MutualTls {
                            mode: Some(MtlsMode::Strict),
                        }),
                        ..Default::default()
                    },
                })
            }
            _ => None,
        })
        .collect()
}

/// PeerAuthentications with their modes resolved (see the module docs).
fn peer_authentication(
    all: &[&IstioConfig<PeerAuthentication>],
    warnings: &mut Warnings,
) -> Vec<xds::Authorization> {
    let mut sorted: Vec<_> = all.to_vec();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let display = |pa: &IstioConfig<PeerAuthentication>| {
        format!(
            "PeerAuthentication {}/{}",
            pa.metadata.namespace, pa.metadata.name
        )
    };
    // One namespace-wide policy per namespace (the root's is the mesh's).
    let mut wide: BTreeMap<&str, &IstioConfig<PeerAuthentication>> = BTreeMap::new();
    for pa in sorted.iter().filter(|pa| !has_selector(pa)) {
        match wide.get(pa.metadata.namespace.as_str()) {
            Some(first) => warnings.add(
                display(pa),
                format!(
                    "{} is the namespace's policy (first by name): this one is ignored",
                    display(first)
                ),
            ),
            None => {
                wide.insert(&pa.metadata.namespace, pa);
            }
        }
    }
    let mesh_mode = wide
        .get(ROOT_NAMESPACE)
        .and_then(|pa| mode(pa.spec.mtls.as_ref()))
        .unwrap_or(xds::MtlsMode::Permissive);
    let namespace_mode = |ns: &str| {
        wide.get(ns)
            .and_then(|pa| mode(pa.spec.mtls.as_ref()))
            .unwrap_or(mesh_mode)
    };
    let mut out = Vec::new();
    for pa in sorted {
        let ns = pa.metadata.namespace.as_str();
        let selected = has_selector(pa);
        if !selected && !wide.get(ns).is_some_and(|w| std::ptr::eq(*w, pa)) {
            continue;
        }
        let parent = if !selected && ns == ROOT_NAMESPACE {
            xds::MtlsMode::Permissive
        } else if !selected {
            mesh_mode
        } else {
            namespace_mode(ns)
        };
        let own = mode(pa.spec.mtls.as_ref()).unwrap_or(parent);
        let port_level_mtls = pa
            .spec
            .port_level_mtls
            .iter()
            .filter_map(|(port, m)| {
                Some((u16::try_from(*port).ok()?, mode(Some(m)).unwrap_or(own)))
            })
            .collect();
        out.push(xds::Authorization {
            name: format!("{PEER_AUTHENTICATION_PREFIX}{}", pa.metadata.name),
            namespace: ns.to_string(),
            selector: pa
                .spec
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default(),
            peer_authentication: Some(xds::PeerAuthentication {
                mode: own,
                port_level_mtls,
            }),
            policy: None,
            request_authentication: None,
        });
    }
    out
}
