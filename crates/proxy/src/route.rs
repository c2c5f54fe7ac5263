//! Where a connection or request goes: a [`Target`], the cluster and what applies on the way.
//!
//! The outbound side finds it by service, VirtualService route and subset
//! ([`crate::outbound::router`]); the inbound side always targets the local app
//! ([`crate::inbound::app`]); anything no service claims is passed through to where it was
//! going (`PassthroughCluster`).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::addr::OrigDstAddr;
use crate::cluster::{Cluster, Endpoint};
use crate::config::PeerInfo;
use crate::outbound::router::RoutePolicy;

/// A resolved upstream.
#[derive(Debug, Clone)]
pub struct Target {
    /// The cluster: name, endpoints, policy.
    pub cluster: Arc<Cluster>,
    /// Source address to dial from.
    pub bind: Option<IpAddr>,
    /// The HTTP version requests are forwarded in.
    pub upstream_http: UpstreamHttp,
    /// Opaque TCP without detection (port declared TCP/TLS).
    pub opaque: bool,
    /// What the VirtualService route adds (timeout, retries, fault, mirrors, headers,
    /// rewrite); Istio's defaults when no route names them.
    pub policy: Arc<RoutePolicy>,
    /// The chosen destination's index in the route, for its header edits.
    pub destination: Option<usize>,
    /// `route_name` in the access log (`None` prints `-`).
    pub route_name: Option<Arc<str>>,
    /// How much of the path the route's `uri` match covered (what `rewrite.uri` replaces).
    pub matched_len: usize,
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
    pub fn peer_of(&self, addr: std::net::SocketAddr) -> Option<Arc<PeerInfo>> {
        self.cluster.endpoint(addr).and_then(|e| e.peer.clone())
    }

    /// The route timeout (`UT` when it fires).
    pub fn timeout(&self) -> Option<Duration> {
        self.policy.timeout
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

/// `unknown`, shared.
pub(crate) fn unknown() -> Arc<str> {
    static UNKNOWN: OnceLock<Arc<str>> = OnceLock::new();
    UNKNOWN.get_or_init(|| Arc::from("unknown")).clone()
}

/// `route_name` of a target no route named (Envoy's `default`): one shared `Arc` instead of one
/// allocated per request.
pub(crate) fn default_route_name() -> Arc<str> {
    static DEFAULT: OnceLock<Arc<str>> = OnceLock::new();
    DEFAULT.get_or_init(|| Arc::from("default")).clone()
}

/// Outbound to an address no service claims: straight to where the app was going.
pub fn passthrough(orig_dst: OrigDstAddr, host: Option<&str>) -> Target {
    Target {
        cluster: Arc::new(Cluster::single(
            Arc::from("PassthroughCluster"),
            Endpoint::single(orig_dst.get(), None),
        )),
        bind: None,
        upstream_http: UpstreamHttp::Downstream,
        opaque: false,
        route_name: Some(Arc::from("allow_any")),
        matched_len: 1,
        policy: RoutePolicy::passthrough(),
        destination: None,
        peer: None,
        service_host: Arc::from(
            host.map(strip_port)
                .unwrap_or(&orig_dst.get().ip().to_string()),
        ),
        service_name: Arc::from("PassthroughCluster"),
        service_namespace: unknown(),
    }
}

/// Outbound to an address no service claims under `REGISTRY_ONLY`: Istio's
/// `BlackHoleCluster`, which has no endpoint (opaque TCP is closed, `UH`); HTTP never gets
/// here, the `block_all` route answers it 502 ([`crate::outbound::router::RouteError`]). The
/// labels are the stats plugin's for it: `destination_service_name` `BlackHoleCluster`.
pub fn blackhole(orig_dst: OrigDstAddr, host: Option<&str>) -> Target {
    static BLACKHOLE: OnceLock<Arc<Cluster>> = OnceLock::new();
    let cluster = BLACKHOLE
        .get_or_init(|| Arc::new(Cluster::empty(Arc::from(BLACKHOLE_CLUSTER))))
        .clone();
    Target {
        cluster,
        route_name: Some(Arc::from(BLOCK_ALL_ROUTE)),
        service_name: Arc::from(BLACKHOLE_CLUSTER),
        ..passthrough(orig_dst, host)
    }
}

/// Istio's cluster for traffic `REGISTRY_ONLY` blocks.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Istio's route (and virtual host) answering blocked HTTP with 502.
pub const BLOCK_ALL_ROUTE: &str = "block_all";

/// `authority` without a `:port` suffix.
pub(crate) fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}
