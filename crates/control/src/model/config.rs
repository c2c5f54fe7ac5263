//! Istio config → the `xds` resources: VirtualService → [`xds::HttpRoutes`], DestinationRule
//! → [`xds::TrafficPolicy`], PeerAuthentication and AuthorizationPolicy → [`xds::Authorization`].
//!
//! What Ama implements of each kind is said once, in [`api::support`], which reports the rest
//! to the user (the CLI prints it, discovery logs it). The translation here leaves the rest
//! out, always on the safe side, and warns only of what depends on the whole mesh (a host no
//! service matches, a second namespace-wide policy):
//!
//! - VirtualService: only routes bound to the mesh (`gateways` empty or with `mesh`). A match
//!   with anything but `uri` and `headers` (exact, prefix) is dropped, and a route whose every
//!   match was dropped is dropped, so no route matches more than written. Routes with
//!   `redirect`, `directResponse` or `delegate` are dropped.
//! - DestinationRule: `loadBalancer.simple`, the connection pool and outlier settings the
//!   `xds` types carry, `workloadSelector` and `exportTo`.
//! - PeerAuthentication: modes are resolved here, since the wire has no `UNSET`: a port's
//!   `UNSET` takes the policy's mode, a workload policy's takes its namespace policy's, a
//!   namespace policy's takes the mesh policy's (root namespace, no selector), which defaults to
//!   `PERMISSIVE`. One namespace-wide (or mesh-wide) policy per namespace is used, the first by
//!   name (Istio takes the oldest), the others are reported. The proxy applies the most
//!   specific one: a selector match, then its namespace's, then the mesh's. These entries are
//!   named `converted_peer_authentication_<name>` (ztunnel's name) and carry no rules: the
//!   proxy reads only their `peerAuthentication`.
//! - AuthorizationPolicy and RequestAuthentication: not enforced yet, so they fail closed. Each
//!   one that [`api::support::denies_all`] says binds sidecars becomes an entry with `denyAll`
//!   for the workloads it selects (by selector, its namespace, or the mesh from the root
//!   namespace): their proxies answer every request as Envoy's RBAC filter answers a denied one.

use std::collections::{BTreeMap, BTreeSet};

use api::networking::destination_rule::{self, SimpleLb};
use api::networking::virtual_service::{HttpMatchRequest, HttpRoute};
use api::networking::{DestinationRule, StringMatch, VirtualService};
use api::objects::{IstioConfig, Object};
use api::security::peer_authentication::{MtlsMode, PeerAuthentication};

use super::{ExportTo, ROOT_NAMESPACE, Scoped, Warnings, service_hostname};

/// What the Istio config gives.
#[derive(Debug, Default)]
pub(crate) struct ConfigOut {
    pub http_routes: Vec<Scoped<xds::HttpRoutes>>,
    pub traffic_policies: Vec<Scoped<xds::TrafficPolicy>>,
    pub authorizations: Vec<xds::Authorization>,
}

/// Name prefix of the entries carrying a PeerAuthentication (ztunnel's).
pub const PEER_AUTHENTICATION_PREFIX: &str = "converted_peer_authentication_";

pub(crate) fn build(
    objects: &[&Object],
    services: &[Scoped<xds::Service>],
    warnings: &mut Warnings,
) -> ConfigOut {
    let hosts: Vec<&str> = services
        .iter()
        .map(|s| s.resource.hostname.as_str())
        .collect();
    let mut out = ConfigOut::default();
    let mut peer_authentications = Vec::new();
    for o in objects {
        let object = o.display();
        let mut w = |message: String| warnings.add(object.clone(), message);
        match o {
            Object::VirtualService(vs) => {
                if let Some(r) = virtual_service(vs, &hosts, &mut w) {
                    out.http_routes.push(r);
                }
            }
            Object::DestinationRule(dr) => out
                .traffic_policies
                .extend(destination_rule(dr, &hosts, &mut w)),
            Object::PeerAuthentication(pa) => peer_authentications.push(pa),
            Object::AuthorizationPolicy(_) | Object::RequestAuthentication(_) => {
                if let Some(a) = deny_all(o) {
                    out.authorizations.push(a);
                }
            }
            _ => {}
        }
    }
    out.authorizations
        .extend(peer_authentication(&peer_authentications, warnings));
    out.http_routes
        .sort_by(|a, b| a.resource.name.cmp(&b.resource.name));
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

fn millis(d: Option<api::Duration>) -> Option<u64> {
    d.map(|d| {
        u64::try_from(d.get().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    })
}

fn positive_u32(v: Option<i64>) -> Option<u32> {
    v.filter(|v| *v > 0)
        .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
}

fn virtual_service(
    vs: &IstioConfig<VirtualService>,
    known: &[&str],
    w: &mut impl FnMut(String),
) -> Option<Scoped<xds::HttpRoutes>> {
    let spec = &vs.spec;
    let ns = &vs.metadata.namespace;
    if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh") {
        return None; // for gateways only
    }
    let hosts: BTreeSet<String> = spec
        .hosts
        .iter()
        .flat_map(|h| resolve_host(h, ns, known))
        .collect();
    if hosts.is_empty() {
        w("spec.hosts: no known service matches: ignored".into());
        return None;
    }
    if spec.http.is_empty() {
        return None;
    }
    let mut http = Vec::new();
    for (i, route) in spec.http.iter().enumerate() {
        if let Some(r) = http_route(route, &format!("spec.http[{i}]"), ns, known, w) {
            http.push(r);
        }
    }
    Some(Scoped {
        namespace: ns.clone(),
        export_to: ExportTo::parse(spec.export_to.iter().map(String::as_str), ns),
        workload_selector: None,
        resource: xds::HttpRoutes {
            name: format!("{ns}/{}", vs.metadata.name),
            hosts: hosts.into_iter().collect(),
            namespace: Some(ns.clone()),
            http,
            ..Default::default()
        },
    })
}

fn http_route(
    route: &HttpRoute,
    at: &str,
    ns: &str,
    known: &[&str],
    w: &mut impl FnMut(String),
) -> Option<xds::HttpRoute> {
    // api::support reports each of these; here they only shape the translation.
    if route.redirect.is_some() || route.direct_response.is_some() || route.delegate.is_some() {
        return None;
    }
    let matches: Vec<_> = route
        .r#match
        .iter()
        .filter_map(|m| route_match(m).ok())
        .collect();
    if !route.r#match.is_empty() && matches.is_empty() {
        w(format!("{at}: no match is usable: route dropped"));
        return None;
    }
    let single = route.route.len() == 1;
    let destinations = route
        .route
        .iter()
        .filter_map(|d| {
            let host = resolve_host(&d.destination.host, ns, known)
                .into_iter()
                .next()?;
            Some(xds::RouteDestination {
                host,
                port: d
                    .destination
                    .port
                    .as_ref()
                    .and_then(|p| u16::try_from(p.number).ok()),
                subset: (!d.destination.subset.is_empty()).then(|| d.destination.subset.clone()),
                weight: match d.weight {
                    Some(w) => u32::try_from(w.clamp(0, 100)).unwrap_or(0),
                    None if single => 100,
                    None => 0,
                },
                ..Default::default()
            })
        })
        .collect();
    let retries = route.retries.as_ref().map(|r| xds::RetryPolicy {
        attempts: u32::try_from(r.attempts.max(0)).unwrap_or(u32::MAX),
        per_try_timeout_ms: millis(r.per_try_timeout),
        retry_on: (!r.retry_on.is_empty()).then(|| r.retry_on.clone()),
        backoff_ms: None,
        retry_other_hosts: true,
    });
    Some(xds::HttpRoute {
        name: (!route.name.is_empty()).then(|| route.name.clone()),
        matches,
        route: destinations,
        timeout_ms: millis(route.timeout).filter(|ms| *ms > 0),
        retries,
        ..Default::default()
    })
}

/// A match the proxy can evaluate, or the first field it cannot.
fn route_match(m: &HttpMatchRequest) -> Result<xds::HttpRouteMatch, &'static str> {
    fn string(s: &StringMatch) -> Option<xds::StringMatch> {
        match (&s.exact, &s.prefix) {
            (Some(e), _) => Some(xds::StringMatch::Exact(e.clone())),
            (None, Some(p)) => Some(xds::StringMatch::Prefix(p.clone())),
            _ => None,
        }
    }
    let unsupported = [
        ("scheme", m.scheme.is_some()),
        ("method", m.method.is_some()),
        ("authority", m.authority.is_some()),
        ("port", m.port != 0),
        ("sourceLabels", !m.source_labels.is_empty()),
        ("gateways", !m.gateways.is_empty()),
        ("queryParams", !m.query_params.is_empty()),
        ("ignoreUriCase", m.ignore_uri_case),
        ("withoutHeaders", !m.without_headers.is_empty()),
        ("sourceNamespace", !m.source_namespace.is_empty()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(field);
    }
    let uri = match &m.uri {
        Some(u) => Some(string(u).ok_or("uri.regex")?),
        None => None,
    };
    let mut headers = BTreeMap::new();
    for (name, v) in &m.headers {
        headers.insert(name.to_ascii_lowercase(), string(v).ok_or("headers.regex")?);
    }
    Ok(xds::HttpRouteMatch {
        uri,
        headers,
        ..Default::default()
    })
}

fn destination_rule(
    dr: &IstioConfig<DestinationRule>,
    known: &[&str],
    w: &mut impl FnMut(String),
) -> Vec<Scoped<xds::TrafficPolicy>> {
    let spec = &dr.spec;
    let ns = &dr.metadata.namespace;
    let name = format!("{ns}/{}", dr.metadata.name);
    let base = traffic_policy(spec.traffic_policy.as_ref());
    let hosts = resolve_host(&spec.host, ns, known);
    if hosts.is_empty() {
        w(format!(
            "spec.host: no known service matches \"{}\": ignored",
            spec.host
        ));
    }
    let wildcard = spec.host.contains('*');
    let export_to = ExportTo::parse(spec.export_to.iter().map(String::as_str), ns);
    let workload_selector = spec
        .workload_selector
        .as_ref()
        .map(|s| s.match_labels.clone());
    hosts
        .into_iter()
        .map(|host| Scoped {
            namespace: ns.clone(),
            export_to: export_to.clone(),
            workload_selector: workload_selector.clone(),
            resource: xds::TrafficPolicy {
                // Unique per host: one rule for `*.ns.svc.cluster.local` gives one per service.
                name: if wildcard {
                    format!("{name}@{host}")
                } else {
                    name.clone()
                },
                host,
                policy: xds::Policy {
                    settings: base.clone(),
                    port_level_settings: Vec::new(),
                },
                subsets: Vec::new(),
            },
        })
        .collect()
}

fn traffic_policy(p: Option<&destination_rule::TrafficPolicy>) -> xds::Settings {
    let mut out = xds::Settings::default();
    let Some(p) = p else { return out };
    if let Some(lb) = &p.load_balancer {
        let simple = match lb.simple {
            Some(SimpleLb::RoundRobin) => Some(xds::LbPolicy::RoundRobin),
            Some(SimpleLb::Random) => Some(xds::LbPolicy::Random),
            Some(SimpleLb::LeastRequest | SimpleLb::LeastConn) => Some(xds::LbPolicy::LeastRequest),
            Some(SimpleLb::Passthrough | SimpleLb::Unspecified) | None => None,
        };
        out.load_balancer = simple.map(|simple| xds::LoadBalancer {
            simple: Some(simple),
            consistent_hash: None,
        });
    }
    if let Some(pool) = &p.connection_pool {
        let mut cp = xds::ConnectionPool::default();
        if let Some(tcp) = &pool.tcp {
            cp.tcp.max_connections = positive_u32(tcp.max_connections);
            cp.tcp.connect_timeout_ms = millis(tcp.connect_timeout);
        }
        if let Some(http) = &pool.http {
            cp.http.max_requests = positive_u32(http.http2_max_requests);
            cp.http.max_requests_per_connection = positive_u32(http.max_requests_per_connection);
            cp.http.idle_timeout_ms = millis(http.idle_timeout);
        }
        out.connection_pool = Some(cp);
    }
    if let Some(o) = &p.outlier_detection {
        out.outlier_detection = Some(xds::OutlierDetection {
            consecutive_5xx_errors: o
                .consecutive_5xx_errors
                .map(|v| u32::try_from(v.max(0)).unwrap_or(u32::MAX)),
            interval_ms: millis(o.interval),
            base_ejection_time_ms: millis(o.base_ejection_time),
            max_ejection_percent: o
                .max_ejection_percent
                .map(|v| u32::try_from(v.clamp(0, 100)).unwrap_or(100)),
            ..Default::default()
        });
    }
    out
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
            action: xds::Action::Allow,
            rules: Vec::new(),
            deny_all: false,
        });
    }
    out
}

/// The fail-closed entry of an AuthorizationPolicy or RequestAuthentication that binds
/// sidecars (see the module docs); `None` for one that binds none.
fn deny_all(o: &Object) -> Option<xds::Authorization> {
    let selector = match o {
        _ if !api::support::denies_all(o) => return None,
        Object::AuthorizationPolicy(p) => p.spec.selector.as_ref(),
        Object::RequestAuthentication(r) => r.spec.selector.as_ref(),
        _ => return None,
    };
    let m = o.metadata();
    Some(xds::Authorization {
        // Unique per object: both kinds may use the same name.
        name: format!("{}/{}", o.kind(), m.name),
        namespace: m.namespace.clone(),
        selector: selector.map(|s| s.match_labels.clone()).unwrap_or_default(),
        peer_authentication: None,
        action: xds::Action::Deny,
        rules: Vec::new(),
        deny_all: true,
    })
}
