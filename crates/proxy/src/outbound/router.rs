//! The outbound router: service → VirtualService route → destination → subset cluster.
//!
//! The original destination names a service by VIP:port (HTTP also by `Host` on the same
//! port). When routes exist for the service's host, the first whose match fits decides
//! (none: 404 `NR`): a redirect or a direct response is answered here; otherwise a destination
//! is drawn by weight, and its host, port and subset give the cluster (a subset no
//! DestinationRule defines: 503 `NC`, as Envoy answers for a missing cluster). What the route
//! adds on the way — timeout, retries, fault, mirrors, header edits, rewrite, CORS — is its
//! [`RoutePolicy`], compiled once per snapshot. A service without routes gets Istio's default
//! route: no timeout, Istio's default retry policy.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use xds::{HttpRoute, HttpRoutes, ServicePort};

use crate::ProxyInputs;
use crate::addr::OrigDstAddr;
use crate::cluster::{Cluster, Endpoint};
use crate::config::{ServiceEntry, Snapshot};
use crate::outbound::fault::FaultInjection;
use crate::outbound::retry::{Retry, RetryError};
use crate::outbound::routes::{Picked, RequestView, RouteTable, Selected};
use crate::route::{Target, UpstreamHttp, blackhole, passthrough};

/// What a route does besides choosing the destination, compiled once per snapshot.
#[derive(Debug)]
pub struct RoutePolicy {
    /// `route_name` in the access log when no match names one.
    pub name: Option<Arc<str>>,
    /// `route_name` per match (Istio's `<route>.<match>`), parallel to the route's matches.
    pub match_names: Vec<Option<Arc<str>>>,
    /// Whole-request timeout (`UT`).
    pub timeout: Option<Duration>,
    /// Retries (Istio's default when the route names none).
    pub retry: Retry,
    /// Faults.
    pub fault: Option<FaultInjection>,
    /// The route as configured (mirrors, headers, rewrite, redirect, direct response, CORS,
    /// destinations).
    pub route: Option<HttpRoute>,
}

impl RoutePolicy {
    fn compile(route: &HttpRoute) -> Result<RoutePolicy, RetryError> {
        let name = route.name.as_deref().map(Arc::from);
        Ok(RoutePolicy {
            match_names: route
                .matches
                .iter()
                .map(|m| match (&route.name, &m.name) {
                    (Some(r), Some(m)) => Some(Arc::from(format!("{r}.{m}"))),
                    (None, Some(m)) => Some(Arc::from(m.as_str())),
                    _ => name.clone(),
                })
                .collect(),
            name,
            timeout: route.timeout_ms.map(Duration::from_millis),
            retry: match &route.retries {
                Some(r) => Retry::compile(r)?,
                None => istio_default_retry(),
            },
            fault: route
                .fault
                .as_ref()
                .map(FaultInjection::compile)
                .filter(|f| !f.is_empty()),
            route: Some(route.clone()),
        })
    }

    /// The `route_name` of a request the `m`th match (if any) selected.
    pub fn name_for(&self, m: Option<usize>) -> Option<Arc<str>> {
        match m {
            Some(i) => self.match_names.get(i).cloned().flatten(),
            None => self.name.clone(),
        }
    }

    fn fixed(name: &str, retry: Retry) -> RoutePolicy {
        RoutePolicy {
            name: Some(Arc::from(name)),
            match_names: Vec::new(),
            timeout: None,
            retry,
            fault: None,
            route: None,
        }
    }

    /// The route of a service no VirtualService routes: Istio's default route.
    pub fn service_default() -> Arc<RoutePolicy> {
        static DEFAULT: OnceLock<Arc<RoutePolicy>> = OnceLock::new();
        DEFAULT
            .get_or_init(|| Arc::new(RoutePolicy::fixed("default", istio_default_retry())))
            .clone()
    }

    /// `PassthroughCluster`'s route (`allow_any`): Istio's default retries too.
    pub fn passthrough() -> Arc<RoutePolicy> {
        static PASSTHROUGH: OnceLock<Arc<RoutePolicy>> = OnceLock::new();
        PASSTHROUGH
            .get_or_init(|| Arc::new(RoutePolicy::fixed("allow_any", istio_default_retry())))
            .clone()
    }

    /// The inbound route, and a mirror's: no retries (Istio's inbound routes have none).
    pub fn inbound() -> Arc<RoutePolicy> {
        static INBOUND: OnceLock<Arc<RoutePolicy>> = OnceLock::new();
        INBOUND
            .get_or_init(|| {
                let none = xds::RetryPolicy {
                    attempts: 0,
                    ..xds::RetryPolicy::istio_default()
                };
                Arc::new(RoutePolicy::fixed(
                    "default",
                    Retry::compile(&none).unwrap_or_else(|_| istio_default_retry()),
                ))
            })
            .clone()
    }
}

/// Istio's default retry policy, compiled.
fn istio_default_retry() -> Retry {
    static DEFAULT: OnceLock<Retry> = OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            Retry::compile(&xds::RetryPolicy::istio_default())
                .expect("Istio's default retry policy compiles")
        })
        .clone()
}

/// One VirtualService's routes, compiled for the data path.
#[derive(Debug)]
pub struct CompiledRoutes {
    /// As configured.
    pub source: Arc<HttpRoutes>,
    /// The HTTP routes' matchers.
    pub table: RouteTable,
    /// One policy per HTTP route (parallel to `source.http`).
    pub policies: Vec<Arc<RoutePolicy>>,
}

impl CompiledRoutes {
    /// Compiles `routes`; an error names the field (`http[2].match[0].uri.regex: ...`).
    pub fn compile(routes: &HttpRoutes) -> Result<CompiledRoutes, String> {
        let table = RouteTable::compile(routes).map_err(|e| e.to_string())?;
        let policies = routes
            .http
            .iter()
            .enumerate()
            .map(|(i, r)| {
                RoutePolicy::compile(r)
                    .map(Arc::new)
                    .map_err(|e| format!("http[{i}].retries.retryOn: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CompiledRoutes {
            source: Arc::new(routes.clone()),
            table,
            policies,
        })
    }
}

/// Why no upstream could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// Routes exist for the host but none matches (404 `NR`).
    NoRoute,
    /// The route names a host, port or subset no cluster has (503 `NC`).
    NoCluster,
    /// No service claims the destination and `outboundTrafficPolicy` is `REGISTRY_ONLY`:
    /// Istio's `block_all` route answers 502 (a direct response: no upstream cluster).
    Blocked,
}

/// What the router decided for an HTTP request; the route borrows from the snapshot.
#[derive(Debug)]
pub enum Routed<'s> {
    /// Forward to the target.
    Forward {
        /// Where.
        target: Target,
        /// The route that matched, if routes exist for the host.
        selected: Option<Selected<'s>>,
        /// The destination it picked.
        picked: Option<Picked<'s>>,
    },
    /// Answer here: the route's redirect or direct response ([`RoutePolicy::route`]).
    Answer {
        /// The route.
        selected: Selected<'s>,
        /// Its `route_name`.
        route_name: Option<Arc<str>>,
    },
}

fn pick_weighted(dests: &[xds::RouteDestination]) -> Option<usize> {
    let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return (!dests.is_empty()).then_some(0);
    }
    let mut n = rand::random_range(0..total);
    for (i, d) in dests.iter().enumerate() {
        if n < u64::from(d.weight) {
            return Some(i);
        }
        n -= u64::from(d.weight);
    }
    Some(dests.len() - 1)
}

fn cluster_target(
    entry: &ServiceEntry,
    sp: &ServicePort,
    subset: Option<&str>,
    policy: Arc<RoutePolicy>,
    destination: Option<usize>,
    orig_dst: OrigDstAddr,
) -> Option<Target> {
    let mut cluster = entry.cluster(sp.port, subset)?.clone();
    if cluster.lb == xds::LbPolicy::Passthrough {
        // `PASSTHROUGH`: Envoy's original-destination cluster, no balancing: the address the
        // client dialled.
        // A DestinationRule's TLS origination applies to it as to any endpoint.
        let tls = entry
            .origination(&cluster)
            .map(|o| crate::tls::PeerTls::originating(o.clone(), orig_dst.get().ip()));
        cluster = Arc::new(Cluster::single(
            cluster.name.clone(),
            Endpoint {
                tls,
                ..Endpoint::single(orig_dst.get(), None)
            },
        ));
    }
    if entry.service.vips.is_empty()
        && !entry.service.is_service_entry()
        && let Some(ep) = cluster.endpoints.iter().find(|e| e.addr == orig_dst.get())
    {
        // A headless Service: Envoy's ORIGINAL_DST cluster, to the pod the client dialled,
        // with that endpoint's mTLS.
        cluster = Arc::new(Cluster::single(cluster.name.clone(), ep.clone()));
    }
    let proto = sp.effective_protocol();
    Some(Target {
        upstream_http: upstream_http(&cluster, proto),
        cluster,
        bind: None,
        opaque: proto.is_opaque(),
        route_name: policy.name.clone(),
        matched_len: 1,
        policy,
        destination,
        peer: None,
        service_host: entry.hostname.clone(),
        service_name: entry.name.clone(),
        service_namespace: entry.namespace.clone(),
    })
}

/// The HTTP version toward `cluster`: the port's, unless the DestinationRule's
/// `h2UpgradePolicy` or `useClientProtocol` says otherwise (as pilot applies them to an `http`
/// port's cluster).
fn upstream_http(cluster: &Cluster, proto: xds::Protocol) -> UpstreamHttp {
    let http = cluster.settings.connection_pool.as_ref().map(|c| &c.http);
    match (UpstreamHttp::of(proto), http) {
        (_, Some(h)) if h.use_client_protocol => UpstreamHttp::Downstream,
        (UpstreamHttp::Http11, Some(h)) if h.h2_upgrade == Some(true) => UpstreamHttp::Http2,
        (u, _) => u,
    }
}

/// Where traffic no service claims goes: `PassthroughCluster` (`ALLOW_ANY`), or
/// `BlackHoleCluster` (`REGISTRY_ONLY`).
fn unknown_destination(snap: &Snapshot, orig_dst: OrigDstAddr, host: Option<&str>) -> Target {
    match snap.outbound_policy {
        xds::OutboundTrafficPolicy::AllowAny => passthrough(orig_dst, host),
        xds::OutboundTrafficPolicy::RegistryOnly => blackhole(orig_dst, host),
    }
}

/// Outbound opaque TCP (or TLS): the service at the original destination (else, for TLS, the
/// ServiceEntry host its SNI names on that port), routed by the first of its VirtualService's
/// `tcp` routes whose match fits (port, destination subnet, caller's labels and namespace),
/// else straight to the service; unknown destinations pass through (`ALLOW_ANY`) or are
/// closed (`REGISTRY_ONLY`).
pub fn outbound_tcp(
    snap: &Snapshot,
    _pi: &ProxyInputs,
    orig_dst: OrigDstAddr,
    sni: Option<&str>,
) -> Target {
    let port = orig_dst.get().port();
    let entry = snap.service_by_destination(orig_dst.get()).or_else(|| {
        sni.and_then(|h| snap.service_by_host(h))
            .filter(|e| e.service.vips.is_empty() && e.service.port(port).is_some())
    });
    let Some(entry) = entry else {
        return unknown_destination(snap, orig_dst, None);
    };
    let routed = snap.routes_for(&entry.service.hostname).and_then(|routes| {
        let src = &routes.source;
        // TLS routes first (by SNI, for a ClientHello), then TCP routes.
        let tls = sni.and_then(|sni| {
            src.tls.iter().find(|r| {
                r.matches
                    .iter()
                    .any(|m| sni_matches(&m.sni_hosts, sni) && l4_matches(m, snap, orig_dst))
            })
        });
        let route = tls.or_else(|| {
            src.tcp.iter().find(|r| {
                r.matches.is_empty() || r.matches.iter().any(|m| l4_matches(m, snap, orig_dst))
            })
        })?;
        let d = pick_weighted(&route.route)?;
        let dest = &route.route[d];
        let entry = snap.service_by_host(&dest.host)?;
        let port = destination_port(entry, dest.port, port);
        let sp = entry.service.port(port)?;
        cluster_target(
            entry,
            sp,
            dest.subset.as_deref(),
            RoutePolicy::service_default(),
            None,
            orig_dst,
        )
    });
    routed
        .or_else(|| {
            service_port(entry, orig_dst).and_then(|sp| {
                cluster_target(
                    entry,
                    sp,
                    None,
                    RoutePolicy::service_default(),
                    None,
                    orig_dst,
                )
            })
        })
        .unwrap_or_else(|| unknown_destination(snap, orig_dst, None))
}

/// Where a route's mirror `m` sends its copies: its host's cluster on the port it names (else
/// the service's only port, else the request's), with no retries; `None` when no such
/// cluster exists.
pub fn mirror_target(snap: &Snapshot, m: &xds::Mirror, orig_dst: OrigDstAddr) -> Option<Target> {
    let entry = snap.service_by_host(&m.host)?;
    let port = destination_port(entry, m.port, orig_dst.get().port());
    let sp = entry.service.port(port)?;
    cluster_target(
        entry,
        sp,
        m.subset.as_deref(),
        RoutePolicy::inbound(),
        None,
        orig_dst,
    )
}

/// Whether the service at `orig_dst` has a VirtualService with `tls` routes, or no service
/// has that VIP and a ServiceEntry host without one has that port (its connections' SNI is
/// then read to route them).
pub fn routes_by_sni(snap: &Snapshot, orig_dst: OrigDstAddr) -> bool {
    match snap.service_by_vip(orig_dst.get()) {
        Some(e) => snap
            .routes_for(&e.service.hostname)
            .is_some_and(|r| !r.source.tls.is_empty()),
        None => snap.routes_by_sni_on(orig_dst.get().port()),
    }
}

/// Whether `sni` is one of `hosts` (`*.example.com` matches one or more labels before
/// `.example.com`, `*` anything), as Envoy's server-name matching of Istio's `sniHosts`.
fn sni_matches(hosts: &[String], sni: &str) -> bool {
    hosts.iter().any(|h| xds::gateway::host_matches(h, sni))
}

/// The service port a connection to `orig_dst` uses: the port itself, else (a headless
/// Service's endpoint, dialled on its target port) the service port that reaches it there.
fn service_port(entry: &ServiceEntry, orig_dst: OrigDstAddr) -> Option<&ServicePort> {
    let dst = orig_dst.get();
    entry.service.port(dst.port()).or_else(|| {
        let s = &entry.service;
        s.endpoints
            .iter()
            .filter(|ep| ep.address == dst.ip())
            .find_map(|ep| {
                s.ports
                    .iter()
                    .find(|sp| s.endpoint_port(ep, sp) == dst.port())
            })
    })
}

/// The port of `entry` a destination goes to: the one it names, else the only one the service
/// has, else the port the client used.
fn destination_port(entry: &ServiceEntry, named: Option<u16>, requested: u16) -> u16 {
    match named {
        Some(p) => p,
        None if entry.service.ports.len() == 1 => entry.service.ports[0].port,
        None => requested,
    }
}

/// Whether the caller (this proxy's workload) has `labels` and lives in `namespace`.
fn source_matches(
    snap: &Snapshot,
    labels: &std::collections::BTreeMap<String, String>,
    namespace: Option<&str>,
) -> bool {
    let me = snap.me.as_deref();
    labels
        .iter()
        .all(|(k, v)| me.and_then(|w| w.labels.get(k)) == Some(v))
        && namespace.is_none_or(|ns| me.is_some_and(|w| w.namespace == ns))
}

fn l4_matches(m: &xds::L4Match, snap: &Snapshot, orig_dst: OrigDstAddr) -> bool {
    let dst = orig_dst.get();
    m.port.is_none_or(|p| p == dst.port())
        && (m.destination_subnets.is_empty()
            || m.destination_subnets
                .iter()
                .any(|net| in_subnet(dst.ip(), net)))
        && source_matches(snap, &m.source_labels, m.source_namespace.as_deref())
}

/// Whether `ip` is in `net` (`10.0.0.0/8`, or one address).
fn in_subnet(ip: std::net::IpAddr, net: &str) -> bool {
    use std::net::IpAddr;
    let (addr, len) = match net.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()),
        None => (net, None),
    };
    let Ok(base) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let len = len.unwrap_or(32).min(32);
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let len = len.unwrap_or(128).min(128);
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Outbound HTTP: by VIP, else by `Host` on the same port; then the host's routes, if any.
/// `req` is the request as the router sees it; its `port` is filled in here.
pub fn outbound_http<'s>(
    snap: &'s Snapshot,
    _pi: &ProxyInputs,
    orig_dst: OrigDstAddr,
    req: &RequestView<'_>,
) -> Result<Routed<'s>, RouteError> {
    let port = orig_dst.get().port();
    let authority = (!req.authority.is_empty()).then_some(req.authority);
    let entry = snap
        .service_by_vip(orig_dst.get())
        .or_else(|| snap.headless_by_endpoint(orig_dst.get()))
        .or_else(|| {
            authority
                .and_then(|a| snap.service_by_host(a))
                .filter(|e| e.service.port(port).is_some())
        });
    let forward = |target| Routed::Forward {
        target,
        selected: None,
        picked: None,
    };
    let Some(entry) = entry else {
        return match snap.outbound_policy {
            xds::OutboundTrafficPolicy::AllowAny => Ok(forward(passthrough(orig_dst, authority))),
            xds::OutboundTrafficPolicy::RegistryOnly => Err(RouteError::Blocked),
        };
    };
    let Some(routes) = snap.routes_for(&entry.service.hostname) else {
        let sp = service_port(entry, orig_dst).ok_or(RouteError::NoRoute)?;
        return cluster_target(
            entry,
            sp,
            None,
            RoutePolicy::service_default(),
            None,
            orig_dst,
        )
        .map(forward)
        .ok_or(RouteError::NoCluster);
    };
    routed_by(snap, Some(entry.as_ref()), routes, orig_dst, req)
}

/// The route of `routes` that `req` (on port `orig_dst`'s) takes, and where it goes: a
/// redirect or direct response to answer, else its destination's cluster. A route without
/// destination goes to `entry` itself (the service whose routes these are; at a gateway there
/// is none).
fn routed_by<'s>(
    snap: &'s Snapshot,
    entry: Option<&ServiceEntry>,
    routes: &'s CompiledRoutes,
    orig_dst: OrigDstAddr,
    req: &RequestView<'_>,
) -> Result<Routed<'s>, RouteError> {
    let port = orig_dst.get().port();
    let view = RequestView { port, ..*req };
    let selected = routes.table.select(&view).ok_or(RouteError::NoRoute)?;
    let policy = routes.policies[selected.index()].clone();
    let route = selected.route();
    if route.redirect.is_some() || route.direct_response.is_some() {
        return Ok(Routed::Answer {
            route_name: policy.name_for(selected.match_index()),
            selected,
        });
    }
    let route_name = policy.name_for(selected.match_index());
    let matched_len = selected.matched_len();
    let picked = selected.pick_destination(rand::random());
    let target = match picked {
        None => {
            // No destination: the host itself.
            let entry = entry.ok_or(RouteError::NoCluster)?;
            let sp = service_port(entry, orig_dst).ok_or(RouteError::NoRoute)?;
            cluster_target(entry, sp, None, policy, None, orig_dst)
        }
        Some(picked) => {
            let dest = picked.destination;
            let entry = snap
                .service_by_host(&dest.host)
                .ok_or(RouteError::NoCluster)?;
            let port = destination_port(entry, dest.port, port);
            let sp = entry.service.port(port).ok_or(RouteError::NoCluster)?;
            cluster_target(
                entry,
                sp,
                dest.subset.as_deref(),
                policy,
                Some(picked.index),
                orig_dst,
            )
        }
    };
    let mut target = target.ok_or(RouteError::NoCluster)?;
    target.route_name = route_name;
    target.matched_len = matched_len;
    Ok(Routed::Forward {
        target,
        selected: Some(selected),
        picked,
    })
}

/// A gateway's HTTP request on its connection `gw` (to `orig_dst`, the gateway's own address):
/// the VirtualService bound to the port's servers (to the server that terminated its TLS)
/// whose host covers the request's authority most specifically, then its routes as
/// [`outbound_http`] takes them. No host: 404 `NR`.
pub fn gateway_http<'s>(
    snap: &'s Snapshot,
    gw: crate::gateway::GatewayConn,
    orig_dst: OrigDstAddr,
    req: &RequestView<'_>,
) -> Result<Routed<'s>, RouteError> {
    let port = snap.gateway.port(gw.port).ok_or(RouteError::NoRoute)?;
    let routes = port
        .routes_for(req.authority, gw.server)
        .map(|(r, _)| r)
        .ok_or(RouteError::NoRoute)?;
    // Routes match the Gateway server's port (80), not the one listened on (8080).
    let server_dst = OrigDstAddr(std::net::SocketAddr::new(
        orig_dst.get().ip(),
        port.server_port,
    ));
    routed_by(snap, None, routes, server_dst, req)
}

/// A gateway's opaque connection on its port `orig_dst`: for TLS passed through, the first
/// `tls` route of the server that `sni` names whose `sniHosts` cover it; for TCP, the first
/// `tcp` route of the port's servers whose match fits. `None`: nowhere to go (Envoy closes
/// the connection: no filter chain).
pub fn gateway_l4(snap: &Snapshot, orig_dst: OrigDstAddr, sni: Option<&str>) -> Option<Target> {
    let port = snap.gateway.port(orig_dst.get().port())?;
    // Routes match the Gateway server's port (443), not the one listened on (8443).
    let orig_dst = OrigDstAddr(std::net::SocketAddr::new(
        orig_dst.get().ip(),
        port.server_port,
    ));
    let route = match sni {
        Some(sni) => port
            .server_for_sni(Some(sni))?
            .1
            .tls_routes
            .iter()
            .find(|r| {
                r.matches
                    .iter()
                    .any(|m| sni_matches(&m.sni_hosts, sni) && l4_matches(m, snap, orig_dst))
            })?,
        None => port.servers.iter().flat_map(|s| &s.tcp_routes).find(|r| {
            r.matches.is_empty() || r.matches.iter().any(|m| l4_matches(m, snap, orig_dst))
        })?,
    };
    let d = pick_weighted(&route.route)?;
    let dest = &route.route[d];
    let entry = snap.service_by_host(&dest.host)?;
    let sp = entry
        .service
        .port(destination_port(entry, dest.port, orig_dst.get().port()))?;
    cluster_target(
        entry,
        sp,
        dest.subset.as_deref(),
        RoutePolicy::service_default(),
        None,
        orig_dst,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_match_by_prefix() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        assert!(in_subnet(ip("10.1.2.3"), "10.0.0.0/8"));
        assert!(!in_subnet(ip("11.1.2.3"), "10.0.0.0/8"));
        assert!(in_subnet(ip("10.1.2.3"), "10.1.2.3"));
        assert!(in_subnet(ip("10.1.2.3"), "0.0.0.0/0"));
        assert!(!in_subnet(ip("10.1.2.3"), "fd00::/8"));
        assert!(in_subnet(ip("fd00::1"), "fd00::/8"));
        assert!(!in_subnet(ip("10.1.2.3"), "bogus"));
    }

    #[test]
    fn sni_hosts_match_exactly_or_by_wildcard() {
        let hosts = |h: &[&str]| h.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(sni_matches(&hosts(&["a.example.com"]), "A.example.com"));
        assert!(sni_matches(&hosts(&["*.example.com"]), "a.b.example.com"));
        assert!(!sni_matches(&hosts(&["*.example.com"]), "example.com"));
        assert!(sni_matches(&hosts(&["*"]), "anything"));
        assert!(!sni_matches(&hosts(&["b.example.com"]), "a.example.com"));
    }

    #[test]
    fn weights_are_honoured() {
        let d = |w| xds::RouteDestination {
            host: "h".into(),
            weight: w,
            ..Default::default()
        };
        let dests = [d(80), d(20), d(0)];
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[pick_weighted(&dests).expect("one")] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!((7_600..=8_400).contains(&counts[0]), "{counts:?}");
        assert_eq!(pick_weighted(&[d(0)]), Some(0));
        assert_eq!(pick_weighted(&[]), None);
    }
}
