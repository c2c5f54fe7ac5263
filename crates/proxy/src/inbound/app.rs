//! The inbound side's only destination: the local app on the original port
//! (`inbound|<port>||`), dialled from `inbound_bind`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::ProxyInputs;
use crate::addr::OrigDstAddr;
use crate::cluster::{Cluster, Endpoint};
use crate::config::Snapshot;
use crate::outbound::router::RoutePolicy;
use crate::route::{Target, UpstreamHttp, unknown};

/// The local app on the original port.
pub fn target(snap: &Snapshot, pi: &ProxyInputs, orig_dst: OrigDstAddr) -> Target {
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
        cluster: Arc::new(Cluster::single(
            Arc::from(format!("inbound|{port}||")),
            Endpoint::single(dst, Some(snap.me_info.clone())),
        )),
        bind: Some(pi.cfg.inbound_bind),
        upstream_http: UpstreamHttp::of(proto),
        opaque: proto.is_opaque(),
        policy: RoutePolicy::inbound(),
        destination: None,
        route_name: Some(crate::route::default_route_name()),
        matched_len: 1,
        peer: Some(snap.me_info.clone()),
        service_host: svc.map(|e| e.hostname.clone()).unwrap_or_else(unknown),
        service_name: svc.map(|e| e.name.clone()).unwrap_or_else(unknown),
        service_namespace: svc.map(|e| e.namespace.clone()).unwrap_or_else(unknown),
    }
}
