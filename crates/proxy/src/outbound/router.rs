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

use http::{HeaderMap, Method};
use xds::{HttpRoute, HttpRoutes, ServicePort};

use crate::ProxyInputs;
use crate::addr::OrigDstAddr;
use crate::config::{ServiceEntry, Snapshot};
use crate::route::{Target, UpstreamHttp, default_route_name, passthrough};

/// What a route does besides choosing the destination.
#[derive(Debug)]
pub struct RoutePolicy {
    /// `route_name` in the access log.
    pub name: Arc<str>,
    /// Whole-request timeout (`UT`).
    pub timeout: Option<Duration>,
    /// Retries (Istio's default when the route names none).
    pub retry: Retry,
    /// The route as configured (fault, mirrors, headers, rewrite, CORS, destinations).
    pub route: Option<HttpRoute>,
}

impl RoutePolicy {
    fn compile(route: &HttpRoute) -> RoutePolicy {
        RoutePolicy {
            name: route
                .name
                .as_deref()
                .map(Arc::from)
                .unwrap_or_else(default_route_name),
            timeout: route.timeout_ms.map(Duration::from_millis),
            retry: Retry::compile(
                route
                    .retries
                    .as_ref()
                    .unwrap_or(&xds::RetryPolicy::istio_default()),
            ),
            route: Some(route.clone()),
        }
    }

    /// The route of a service no VirtualService routes: Istio's default route.
    pub fn service_default() -> Arc<RoutePolicy> {
        static DEFAULT: OnceLock<Arc<RoutePolicy>> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                Arc::new(RoutePolicy {
                    name: default_route_name(),
                    timeout: None,
                    retry: Retry::compile(&xds::RetryPolicy::istio_default()),
                    route: None,
                })
            })
            .clone()
    }

    /// `PassthroughCluster`'s route (`allow_any`): Istio's default retries too.
    pub fn passthrough() -> Arc<RoutePolicy> {
        static PASSTHROUGH: OnceLock<Arc<RoutePolicy>> = OnceLock::new();
        PASSTHROUGH
            .get_or_init(|| {
                Arc::new(RoutePolicy {
                    name: Arc::from("allow_any"),
                    timeout: None,
                    retry: Retry::compile(&xds::RetryPolicy::istio_default()),
                    route: None,
                })
            })
            .clone()
    }

    /// The inbound route: no retries (Istio's inbound routes have none).
    pub fn inbound() -> Arc<RoutePolicy> {
        static INBOUND: OnceLock<Arc<RoutePolicy>> = OnceLock::new();
        INBOUND
            .get_or_init(|| {
                Arc::new(RoutePolicy {
                    name: default_route_name(),
                    timeout: None,
                    retry: Retry::none(),
                    route: None,
                })
            })
            .clone()
    }
}

/// One VirtualService's routes, compiled for the data path.
#[derive(Debug)]
pub struct CompiledRoutes {
    /// As configured.
    pub source: Arc<HttpRoutes>,
    /// One policy per HTTP route (parallel to `source.http`).
    pub policies: Vec<Arc<RoutePolicy>>,
}

impl CompiledRoutes {
    /// Compiles `routes`.
    pub fn compile(routes: &HttpRoutes) -> CompiledRoutes {
        CompiledRoutes {
            policies: routes
                .http
                .iter()
                .map(|r| Arc::new(RoutePolicy::compile(r)))
                .collect(),
            source: Arc::new(routes.clone()),
        }
    }
}

/// What the request looks like to the router.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// Authority as sent.
    pub authority: Option<&'a str>,
    /// Path without the query.
    pub path: &'a str,
    /// Raw query, if any.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a HeaderMap,
}

/// Why no upstream could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// Routes exist for the host but none matches (404 `NR`).
    NoRoute,
    /// The route names a host, port or subset no cluster has (503 `NC`).
    NoCluster,
}

/// What the router decided for an HTTP request.
#[derive(Debug)]
pub enum Routed {
    /// Forward to the target.
    Forward(Target),
    /// Answer here: the route's redirect or direct response ([`RoutePolicy::route`]).
    Answer(Arc<RoutePolicy>),
}

fn matches(m: &xds::HttpRouteMatch, req: &RequestView<'_>, port: u16, snap: &Snapshot) -> bool {
    fn header_value<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
        h.get(name).and_then(|v| v.to_str().ok())
    }
    m.uri.as_ref().is_none_or(|u| u.matches(req.path))
        && m.method
            .as_ref()
            .is_none_or(|u| u.matches(req.method.as_str()))
        && m.authority
            .as_ref()
            .is_none_or(|u| req.authority.is_some_and(|a| u.matches(a)))
        && m.port.is_none_or(|p| p == port)
        && m.headers
            .iter()
            .all(|(name, sm)| header_value(req.headers, name).is_some_and(|v| sm.matches(v)))
        && m.without_headers
            .iter()
            .all(|(name, sm)| !header_value(req.headers, name).is_some_and(|v| sm.matches(v)))
        && source_matches(snap, &m.source_labels, m.source_namespace.as_deref())
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
) -> Option<Target> {
    let cluster = entry.cluster(sp.port, subset)?.clone();
    let proto = sp.effective_protocol();
    Some(Target {
        cluster,
        bind: None,
        upstream_http: UpstreamHttp::of(proto),
        opaque: proto.is_opaque(),
        policy,
        destination,
        peer: None,
        service_host: entry.hostname.clone(),
        service_name: entry.name.clone(),
        service_namespace: entry.namespace.clone(),
    })
}

/// Outbound opaque TCP (or TLS): the service at the original destination, routed by the
/// first of its VirtualService's `tcp` routes whose match fits (port, destination subnet,
/// caller's labels and namespace), else straight to the service; unknown destinations pass
/// through.
pub fn outbound_tcp(snap: &Snapshot, _pi: &ProxyInputs, orig_dst: OrigDstAddr) -> Target {
    let Some(entry) = snap.service_by_vip(orig_dst.get()) else {
        return passthrough(orig_dst, None);
    };
    let port = orig_dst.get().port();
    let routed = snap.routes_for(&entry.service.hostname).and_then(|routes| {
        let route = routes.source.tcp.iter().find(|r| {
            r.matches.is_empty() || r.matches.iter().any(|m| l4_matches(m, snap, orig_dst))
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
        )
    });
    routed
        .or_else(|| {
            entry.service.port(port).and_then(|sp| {
                cluster_target(entry, sp, None, RoutePolicy::service_default(), None)
            })
        })
        .unwrap_or_else(|| passthrough(orig_dst, None))
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
pub fn outbound_http(
    snap: &Snapshot,
    _pi: &ProxyInputs,
    orig_dst: OrigDstAddr,
    req: &RequestView<'_>,
) -> Result<Routed, RouteError> {
    let port = orig_dst.get().port();
    let entry = snap.service_by_vip(orig_dst.get()).or_else(|| {
        req.authority
            .and_then(|a| snap.service_by_host(a))
            .filter(|e| e.service.port(port).is_some())
    });
    let Some(entry) = entry else {
        return Ok(Routed::Forward(passthrough(orig_dst, req.authority)));
    };
    let Some(routes) = snap.routes_for(&entry.service.hostname) else {
        let sp = entry.service.port(port).ok_or(RouteError::NoRoute)?;
        return cluster_target(entry, sp, None, RoutePolicy::service_default(), None)
            .map(Routed::Forward)
            .ok_or(RouteError::NoCluster);
    };
    let (i, route) = routes
        .source
        .http
        .iter()
        .enumerate()
        .find(|(_, r)| {
            r.matches.is_empty() || r.matches.iter().any(|m| matches(m, req, port, snap))
        })
        .ok_or(RouteError::NoRoute)?;
    let policy = routes.policies[i].clone();
    if route.redirect.is_some() || route.direct_response.is_some() {
        return Ok(Routed::Answer(policy));
    }
    let Some(d) = pick_weighted(&route.route) else {
        // No destination: the host itself.
        let sp = entry.service.port(port).ok_or(RouteError::NoRoute)?;
        return cluster_target(entry, sp, None, policy, None)
            .map(Routed::Forward)
            .ok_or(RouteError::NoCluster);
    };
    let dest = &route.route[d];
    let entry = snap
        .service_by_host(&dest.host)
        .ok_or(RouteError::NoCluster)?;
    let port = destination_port(entry, dest.port, port);
    let sp = entry.service.port(port).ok_or(RouteError::NoCluster)?;
    cluster_target(entry, sp, dest.subset.as_deref(), policy, Some(d))
        .map(Routed::Forward)
        .ok_or(RouteError::NoCluster)
}

/// How an attempt ended, as the retry policy judges it.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// The connection could not be made.
    ConnectFailure,
    /// The request was sent, and the stream or connection was reset before a response.
    Reset,
    /// No response within the per-try timeout.
    PerTryTimeout,
    /// A response came.
    Response {
        /// Its status.
        status: http::StatusCode,
        /// Its headers (`grpc-status` of a trailers-only gRPC response).
        headers: &'a HeaderMap,
    },
}

/// Retries of a route: attempts, and Envoy's `retry_on` conditions as Istio writes them.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Retry on other endpoints than those that failed.
    pub other_hosts: bool,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    conditions: Vec<String>,
    codes: Vec<u16>,
    backoff_base: Duration,
}

impl Retry {
    /// From the wire policy.
    pub fn compile(p: &xds::RetryPolicy) -> Retry {
        let mut conditions = Vec::new();
        let mut codes = Vec::new();
        for token in p.retry_on.as_deref().unwrap_or("").split(',') {
            let token = token.trim();
            if let Ok(code) = token.parse::<u16>() {
                codes.push(code);
            } else if !token.is_empty() {
                conditions.push(token.to_string());
            }
        }
        Retry {
            attempts: p.attempts,
            other_hosts: p.retry_other_hosts,
            per_try_timeout: p.per_try_timeout_ms.map(Duration::from_millis),
            conditions,
            codes,
            backoff_base: Duration::from_millis(p.backoff_ms.unwrap_or(25)),
        }
    }

    /// No retries.
    pub fn none() -> Retry {
        Retry {
            attempts: 0,
            other_hosts: true,
            per_try_timeout: None,
            conditions: Vec::new(),
            codes: Vec::new(),
            backoff_base: Duration::from_millis(25),
        }
    }

    fn on(&self, c: &str) -> bool {
        self.conditions.iter().any(|x| x == c)
    }

    /// Whether the policy retries `outcome`.
    pub fn should_retry(&self, outcome: &Outcome<'_>) -> bool {
        if self.attempts == 0 {
            return false;
        }
        match outcome {
            // Envoy counts a connect failure, a reset and a per-try timeout as a reset, which
            // `5xx` and `gateway-error` cover as well (they would become a 503 or 504).
            Outcome::ConnectFailure => {
                self.on("connect-failure")
                    || self.on("reset")
                    || self.on("5xx")
                    || self.on("gateway-error")
            }
            Outcome::Reset | Outcome::PerTryTimeout => {
                self.on("reset") || self.on("5xx") || self.on("gateway-error")
            }
            Outcome::Response { status, headers } => {
                let code = status.as_u16();
                if self.on("5xx") && status.is_server_error() {
                    return true;
                }
                if self.on("gateway-error") && matches!(code, 502..=504) {
                    return true;
                }
                if self.on("retriable-4xx") && code == 409 {
                    return true;
                }
                if self.on("retriable-status-codes") && self.codes.contains(&code) {
                    return true;
                }
                let grpc = headers
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u16>().ok());
                match grpc {
                    Some(1) => self.on("cancelled"),
                    Some(4) => self.on("deadline-exceeded"),
                    Some(8) => self.on("resource-exhausted"),
                    Some(13) => self.on("internal"),
                    Some(14) => self.on("unavailable"),
                    _ => false,
                }
            }
        }
    }

    /// Envoy's back-off before retry `n` (1-based): fully jittered, base × 2^(n-1), at most
    /// 10 × base.
    pub fn backoff(&self, n: u32) -> Duration {
        let cap = self.backoff_base * 10;
        let ceiling = self
            .backoff_base
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(cap);
        let ms = u64::try_from(ceiling.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_millis(rand::random_range(0..ms))
    }
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
