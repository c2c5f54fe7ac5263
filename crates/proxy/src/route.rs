//! Where a connection or request goes: the cluster, its endpoints and the policy to reach them.
//!
//! Outbound, the original destination names a service by VIP:port (HTTP also by `Host`); its
//! HTTP routes, if any, pick the route (first match; none matches → `NR`) and the destination
//! service; anything unknown is passed through to where it was going (`PassthroughCluster`).
//! Inbound, everything goes to the local app on the original port (`inbound|<port>||`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderMap;
use xds::{HttpRouteMatch, LbPolicy, RouteDestination, ServicePort};

use crate::ProxyInputs;
use crate::addr::OrigDstAddr;
use crate::config::{PeerInfo, ServiceEntry, Snapshot};
use crate::tls::PeerTls;

/// A resolved upstream.
#[derive(Debug, Clone)]
pub struct Target {
    /// Envoy cluster name (`outbound|80||httpbin.default.svc.cluster.local`).
    pub cluster: Arc<str>,
    /// Endpoint addresses to choose from (empty: `UH`).
    pub endpoints: Arc<[SocketAddr]>,
    /// The workload of each endpoint, when known (parallel to `endpoints`).
    pub peers: Arc<[Option<Arc<PeerInfo>>]>,
    /// Istio mTLS settings of each endpoint, `None` for plaintext (parallel to `endpoints`).
    pub tls: Arc<[Option<Arc<PeerTls>>]>,
    /// How to choose.
    pub lb_policy: LbPolicy,
    /// Source address to dial from.
    pub bind: Option<IpAddr>,
    /// The HTTP version requests are forwarded in.
    pub upstream_http: UpstreamHttp,
    /// Opaque TCP without detection (port declared TCP/TLS).
    pub opaque: bool,
    /// Route timeout (`UT` when it fires).
    pub timeout: Option<Duration>,
    /// Retries on connect failure.
    pub retries: u32,
    /// Circuit breaker: most requests in flight to the cluster.
    pub max_requests: Option<u32>,
    /// Route name for the log.
    pub route_name: Option<Arc<str>>,
    /// The destination workload for labels, when there is one (inbound: ourselves).
    pub peer: Option<Arc<PeerInfo>>,
    /// `destination_service`.
    pub service_host: Arc<str>,
    /// `destination_service_name`.
    pub service_name: Arc<str>,
    /// `destination_service_namespace`.
    pub service_namespace: Arc<str>,
}

impl Target {
    /// The workload behind endpoint `addr`, if known.
    pub fn peer_of(&self, addr: SocketAddr) -> Option<Arc<PeerInfo>> {
        let i = self.endpoints.iter().position(|a| *a == addr)?;
        self.peers.get(i).cloned().flatten()
    }

    /// How to reach endpoint `addr` with mTLS, or `None` for plaintext.
    pub fn tls_of(&self, addr: SocketAddr) -> Option<Arc<PeerTls>> {
        let i = self.endpoints.iter().position(|a| *a == addr)?;
        self.tls.get(i).cloned().flatten()
    }
}

/// The HTTP version requests go upstream in, as Istio's cluster for the port configures it
/// (pilot's `setUpstreamProtocol`): HTTP/2 for ports declared `http2` or `grpc`, HTTP/1.1 for
/// ports declared `http`, and the client's own version where the protocol is detected (an
/// undeclared port, or an unknown destination: Envoy's `use_downstream_protocol_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamHttp {
    /// HTTP/1.1 whatever the client spoke.
    Http11,
    /// HTTP/2 (h2c or inside mTLS) whatever the client spoke.
    Http2,
    /// The version the client spoke.
    Downstream,
}

impl UpstreamHttp {
    /// The version for a port of protocol `p`.
    pub fn of(p: xds::Protocol) -> UpstreamHttp {
        if p.is_http2() {
            UpstreamHttp::Http2
        } else if p == xds::Protocol::Http {
            UpstreamHttp::Http11
        } else {
            UpstreamHttp::Downstream
        }
    }
}

/// Why no upstream could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// Routes exist for the host but none matches (404 `NR`).
    NoRoute,
}

fn unknown() -> Arc<str> {
    Arc::from("unknown")
}

/// Outbound to an address no service claims: straight to where the app was going.
pub fn passthrough(orig_dst: OrigDstAddr, host: Option<&str>) -> Target {
    Target {
        cluster: Arc::from("PassthroughCluster"),
        endpoints: Arc::from([orig_dst.get()]),
        peers: Arc::from([None]),
        tls: Arc::from([None]),
        lb_policy: LbPolicy::RoundRobin,
        bind: None,
        upstream_http: UpstreamHttp::Downstream,
        opaque: false,
        timeout: None,
        retries: 0,
        max_requests: None,
        route_name: Some(Arc::from("allow_any")),
        peer: None,
        service_host: Arc::from(
            host.map(strip_port)
                .unwrap_or(&orig_dst.get().ip().to_string()),
        ),
        service_name: Arc::from("PassthroughCluster"),
        service_namespace: unknown(),
    }
}

fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// `route_name` of a target no route named (Envoy's `default`): one shared `Arc` instead of one
/// allocated per request.
pub(crate) fn default_route_name() -> Arc<str> {
    static DEFAULT: OnceLock<Arc<str>> = OnceLock::new();
    DEFAULT.get_or_init(|| Arc::from("default")).clone()
}

fn cluster_target(pi: &ProxyInputs, entry: &ServiceEntry, sp: &ServicePort) -> Option<Target> {
    let cluster = entry.cluster(sp.port)?;
    let proto = sp.effective_protocol();
    Some(Target {
        cluster: cluster.name.clone(),
        endpoints: cluster.endpoints.clone(),
        peers: cluster.peers.clone(),
        tls: cluster.tls.clone(),
        lb_policy: entry.lb_policy,
        bind: None,
        upstream_http: UpstreamHttp::of(proto),
        opaque: proto.is_opaque(),
        timeout: None,
        retries: pi.cfg.outbound_retries,
        max_requests: entry
            .policy
            .as_ref()
            .and_then(|p| p.policy.settings.connection_pool.as_ref())
            .and_then(|c| c.http.max_requests),
        route_name: Some(default_route_name()),
        peer: None,
        service_host: entry.hostname.clone(),
        service_name: entry.name.clone(),
        service_namespace: entry.namespace.clone(),
    })
}

/// Outbound opaque TCP (or TLS): the service at the original destination, else passthrough.
pub fn outbound_tcp(snap: &Snapshot, pi: &ProxyInputs, orig_dst: OrigDstAddr) -> Target {
    match snap.service_by_vip(orig_dst.get()) {
        Some(entry) => entry
            .service
            .port(orig_dst.get().port())
            .and_then(|sp| cluster_target(pi, entry, sp))
            .unwrap_or_else(|| passthrough(orig_dst, None)),
        None => passthrough(orig_dst, None),
    }
}

fn matches(m: &HttpRouteMatch, path: &str, headers: &HeaderMap) -> bool {
    m.uri.as_ref().is_none_or(|u| u.matches(path))
        && m.headers.iter().all(|(name, sm)| {
            headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| sm.matches(v))
        })
}

fn pick_weighted(dests: &[RouteDestination]) -> Option<&RouteDestination> {
    let total: u32 = dests.iter().map(|d| d.weight).sum();
    if total == 0 {
        return dests.first();
    }
    let mut n = rand::random_range(0..total);
    for d in dests {
        if n < d.weight {
            return Some(d);
        }
        n -= d.weight;
    }
    dests.last()
}

/// Outbound HTTP: by VIP, else by `Host` on the same port; then HTTP routes, if any.
pub fn outbound_http(
    snap: &Snapshot,
    pi: &ProxyInputs,
    orig_dst: OrigDstAddr,
    authority: Option<&str>,
    path: &str,
    headers: &HeaderMap,
) -> Result<Target, RouteError> {
    let port = orig_dst.get().port();
    let entry = snap.service_by_vip(orig_dst.get()).or_else(|| {
        authority
            .and_then(|a| snap.service_by_host(a))
            .filter(|e| e.service.port(port).is_some())
    });
    let Some(mut entry) = entry else {
        return Ok(passthrough(orig_dst, authority));
    };
    let mut port = port;
    let mut timeout = None;
    let mut retries = None;
    let mut route_name = None;
    if let Some(routes) = snap.routes_for(&entry.service.hostname) {
        let route = routes
            .http
            .iter()
            .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| matches(m, path, headers)))
            .ok_or(RouteError::NoRoute)?;
        timeout = route.timeout_ms.map(Duration::from_millis);
        retries = route.retries.as_ref().map(|r| r.attempts);
        route_name = route.name.as_deref().map(Arc::from);
        if let Some(dest) = pick_weighted(&route.route) {
            entry = snap
                .service_by_host(&dest.host)
                .ok_or(RouteError::NoRoute)?;
            port = dest.port.unwrap_or(port);
        }
    }
    let sp = entry.service.port(port).ok_or(RouteError::NoRoute)?;
    let mut t = cluster_target(pi, entry, sp).ok_or(RouteError::NoRoute)?;
    t.timeout = timeout;
    if let Some(r) = retries {
        t.retries = r;
    }
    if route_name.is_some() {
        t.route_name = route_name;
    }
    Ok(t)
}

/// Inbound: the local app on the original port, dialled from `inbound_bind`.
pub fn inbound(snap: &Snapshot, pi: &ProxyInputs, orig_dst: OrigDstAddr) -> Target {
    let port = orig_dst.get().port();
    let loopback = pi.cfg.inbound_bind == IpAddr::V4(Ipv4Addr::LOCALHOST);
    let dst = if loopback {
        SocketAddr::new(pi.cfg.inbound_bind, port)
    } else {
        orig_dst.get()
    };
    let svc = snap.inbound_service(port);
    let proto = snap.inbound_protocol(port);
    Target {
        cluster: Arc::from(format!("inbound|{port}||")),
        endpoints: Arc::from([dst]),
        peers: Arc::from([Some(snap.me_info.clone())]),
        tls: Arc::from([None]),
        lb_policy: LbPolicy::RoundRobin,
        bind: Some(pi.cfg.inbound_bind),
        upstream_http: UpstreamHttp::of(proto),
        opaque: proto.is_opaque(),
        timeout: None,
        retries: 0,
        max_requests: None,
        route_name: Some(default_route_name()),
        peer: Some(snap.me_info.clone()),
        service_host: svc.map(|e| e.hostname.clone()).unwrap_or_else(unknown),
        service_name: svc.map(|e| e.name.clone()).unwrap_or_else(unknown),
        service_namespace: svc.map(|e| e.namespace.clone()).unwrap_or_else(unknown),
    }
}
