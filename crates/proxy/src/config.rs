//! The proxy's settings and its resources.
//!
//! [`ProxyConfig`] holds what is fixed for the life of the process (ports, timeouts, header
//! limits). The resources (workloads, services, routes, policies) live in a [`ConfigStore`]: an
//! `ArcSwap` of an indexed [`Snapshot`]. A request loads the snapshot once and finishes on it, so
//! a swap never disturbs what is in flight. [`watch_file`] reloads `--config FILE` when it
//! changes; a file that does not parse or validate is logged and the previous snapshot stays.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use xds::{ProxyResources, Service, ServicePort, TrafficPolicy, Workload};

use crate::cluster::{Cluster, Endpoint, Registry};
use crate::drain::DrainWatcher;
use crate::fx_hash::{FxHashMap, FxHashSet};
use crate::outbound::router::CompiledRoutes;

/// Process-wide settings of a sidecar (Istio's injected args and our own flags).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Outbound capture listener (Istio: 15001).
    pub outbound_addr: SocketAddr,
    /// Inbound capture listener (Istio: 15006).
    pub inbound_addr: SocketAddr,
    /// Source address for connections to the local app: 127.0.0.6 (Istio's default; the capture
    /// rules let it through) or 127.0.0.1 (then the app is dialled on 127.0.0.1).
    pub inbound_bind: IpAddr,
    /// MeshConfig `protocolDetectionTimeout`: how long to wait for a client's first bytes
    /// before treating it as opaque TCP. Zero (Istio's default): wait for them, up to
    /// `idle_timeout` ([`crate::detect::Wait`]).
    pub protocol_detection_timeout: Duration,
    /// How long a downstream HTTP/1 connection may go without a byte read or written before it
    /// is closed: a kept-alive connection waiting for its next request, a client that never
    /// finishes its request head (this bounds the memory slow clients hold), a request on which
    /// nothing moves. The default is Envoy's downstream `idle_timeout`, 1 h, which Istio keeps.
    /// It must be longer than clients keep idle connections in their pools, or it closes them
    /// under them: the client sidecar keeps its idle connections to the server sidecar for
    /// `pool_idle_timeout`.
    pub idle_timeout: Duration,
    /// Largest HTTP/1 request head (request line, headers and the blank line), in bytes: Envoy's
    /// default `max_request_headers_kb` of 60 KiB, which Istio keeps; beyond it, 431.
    pub max_request_headers: usize,
    /// Serve HTTP/1.0 requests (forwarded as HTTP/1.1) instead of answering 426: Envoy's
    /// `accept_http_10`, which Istio sets only for a proxy whose `ISTIO_META_HTTP10` is `1`
    /// (or under `PILOT_HTTP10`).
    pub accept_http_10: bool,
    /// Upstream connect timeout (Istio's default: 10 s).
    pub connect_timeout: Duration,
    /// Idle upstream connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle upstream HTTP/1 connections kept per endpoint.
    pub pool_max_idle_per_endpoint: usize,
    /// How long in-flight work may take to finish after a drain starts.
    pub drain_duration: Duration,
    /// `server` response header (Envoy: `envoy`); `None` leaves the app's.
    pub server_header: Option<HeaderValue>,
    /// Trace sampling for new traces, in percent (Istio's default: 1).
    pub trace_sampling: f64,
    /// Retries on connect failure for outbound requests (Istio's default policy: 2).
    pub outbound_retries: u32,
    /// How often `--config` is checked for changes.
    pub reload_interval: Duration,
    /// The proxy's pod name (`POD_NAME`), when not in the resources' `self`.
    pub pod_name: Option<String>,
    /// The proxy's namespace (`POD_NAMESPACE`).
    pub pod_namespace: Option<String>,
    /// The proxy's pod IP (`INSTANCE_IP`).
    pub instance_ip: Option<IpAddr>,
    /// The pod's service account (`SERVICE_ACCOUNT`, set by injection from
    /// `spec.serviceAccountName`), reported to the control plane as node metadata.
    pub service_account: Option<String>,
    /// Cluster id for metric labels (`ISTIO_META_CLUSTER_ID`, default `Kubernetes`).
    pub cluster_id: String,
    /// A gateway proxy (`ama proxy router`): node id `router~...`, no capture listeners; it
    /// serves the Gateway listeners of its resources on `gateway_bind`.
    pub router: bool,
    /// The address a gateway binds its Gateway ports on (`0.0.0.0`; tests use 127.0.0.1).
    pub gateway_bind: IpAddr,
}

impl ProxyConfig {
    /// How protocol detection waits for a client's first bytes.
    pub fn detection_wait(&self) -> crate::detect::Wait {
        crate::detect::Wait::new(self.protocol_detection_timeout, self.idle_timeout)
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            outbound_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15001)),
            inbound_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15006)),
            inbound_bind: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
            protocol_detection_timeout: Duration::ZERO,
            idle_timeout: Duration::from_secs(3600),
            max_request_headers: 60 * 1024,
            accept_http_10: false,
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_endpoint: 64,
            drain_duration: Duration::from_secs(5),
            server_header: Some(HeaderValue::from_static("envoy")),
            trace_sampling: 1.0,
            outbound_retries: 2,
            reload_interval: Duration::from_secs(1),
            pod_name: None,
            pod_namespace: None,
            instance_ip: None,
            service_account: None,
            cluster_id: "Kubernetes".to_string(),
            router: false,
            gateway_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }
}

/// A workload as metric labels see it, built once per snapshot.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Owning workload name.
    pub workload: Arc<str>,
    /// Namespace.
    pub namespace: Arc<str>,
    /// SPIFFE identity.
    pub principal: Arc<str>,
    /// `app` label.
    pub app: Arc<str>,
    /// `version` label.
    pub version: Arc<str>,
    /// Canonical service.
    pub canonical_service: Arc<str>,
    /// Canonical revision.
    pub canonical_revision: Arc<str>,
    /// Cluster id.
    pub cluster: Arc<str>,
    /// Whether its sidecar is part of the mesh (tlsMode istio).
    pub in_mesh: bool,
}

impl PeerInfo {
    /// Every field `unknown`.
    pub fn unknown() -> PeerInfo {
        let u: Arc<str> = Arc::from("unknown");
        PeerInfo {
            workload: u.clone(),
            namespace: u.clone(),
            principal: u.clone(),
            app: u.clone(),
            version: u.clone(),
            canonical_service: u.clone(),
            canonical_revision: u.clone(),
            cluster: u,
            in_mesh: false,
        }
    }

    fn from_workload(w: &Workload, cluster: &str) -> PeerInfo {
        let label = |k: &str| Arc::from(w.labels.get(k).map(String::as_str).unwrap_or("unknown"));
        PeerInfo {
            workload: Arc::from(w.workload_name()),
            namespace: Arc::from(w.namespace.as_str()),
            principal: Arc::from(w.spiffe_identity()),
            app: label("app"),
            version: label("version"),
            canonical_service: Arc::from(w.canonical_name()),
            canonical_revision: Arc::from(w.canonical_revision()),
            cluster: Arc::from(w.cluster_id.as_deref().unwrap_or(cluster)),
            in_mesh: w.tls_mode == xds::TlsMode::Istio,
        }
    }
}

/// A service with what the data path needs precomputed.
#[derive(Debug)]
pub struct ServiceEntry {
    /// The service as configured.
    pub service: Service,
    /// The host's TrafficPolicy, if any.
    pub policy: Option<Arc<TrafficPolicy>>,
    /// Hostname, shared.
    pub hostname: Arc<str>,
    /// Short name, shared.
    pub name: Arc<str>,
    /// Namespace, shared.
    pub namespace: Arc<str>,
    /// One cluster per service port, and one per port and subset of the host's TrafficPolicy.
    pub clusters: Vec<Arc<Cluster>>,
    /// Service port of each cluster (parallel to `clusters`).
    cluster_ports: Vec<u16>,
    /// TLS origination of each cluster (parallel to `clusters`), for the endpoints made per
    /// request (`resolution: NONE`, `PASSTHROUGH`).
    originations: Vec<Option<Arc<crate::originate::Origination>>>,
}

impl ServiceEntry {
    /// The cluster of service port `port` (of `subset`, when given), if the service has that
    /// port (and the host's policy that subset).
    pub fn cluster(&self, port: u16, subset: Option<&str>) -> Option<&Arc<Cluster>> {
        self.clusters
            .iter()
            .zip(&self.cluster_ports)
            .find(|(c, p)| **p == port && c.subset.as_deref() == subset)
            .map(|(c, _)| c)
    }

    /// The TLS origination of `cluster` (one of ours), if its policy asks for it.
    pub fn origination(&self, cluster: &Cluster) -> Option<&Arc<crate::originate::Origination>> {
        self.clusters
            .iter()
            .position(|c| std::ptr::eq(&**c, cluster))
            .and_then(|i| self.originations[i].as_ref())
    }

    fn build(
        s: &Service,
        policy: Option<Arc<TrafficPolicy>>,
        peers: &[Option<Arc<PeerInfo>>],
        registry: &Registry,
    ) -> ServiceEntry {
        let mut clusters = Vec::new();
        let mut cluster_ports = Vec::new();
        let mut originations = Vec::new();
        let subsets: Vec<Option<&xds::Subset>> = std::iter::once(None)
            .chain(policy.iter().flat_map(|p| p.subsets.iter().map(Some)))
            .collect();
        for sp in &s.ports {
            for subset in &subsets {
                let settings = policy
                    .as_ref()
                    .map(|p| p.effective(sp.port, subset.map(|s| s.name.as_str())))
                    .unwrap_or_default();
                let sub = subset.map(|s| s.name.as_str()).unwrap_or("");
                // MESH_EXTERNAL endpoints never get Istio mTLS.
                let tls_off = s.mesh_external
                    || settings
                        .tls
                        .as_ref()
                        .is_some_and(|t| t.mode == xds::ClientTlsMode::Disable);
                // DestinationRule SIMPLE / MUTUAL: TLS origination ([`crate::originate`]), one
                // config per cluster, in place of Istio mTLS.
                let origination = settings
                    .tls
                    .as_ref()
                    .filter(|t| {
                        matches!(
                            t.mode,
                            xds::ClientTlsMode::Simple | xds::ClientTlsMode::Mutual
                        )
                    })
                    .map(|t| {
                        crate::originate::Origination::new(t, s, sp.effective_protocol().is_http2())
                    });
                let endpoints: Vec<Endpoint> = s
                    .endpoints
                    .iter()
                    .zip(peers)
                    .filter(|(ep, _)| {
                        subset.is_none_or(|ss| {
                            ss.labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v))
                        })
                    })
                    .map(|(ep, peer)| {
                        let addr = SocketAddr::new(ep.address, s.endpoint_port(ep, sp));
                        let tls = match &origination {
                            Some(o) => {
                                Some(crate::tls::PeerTls::originating(o.clone(), ep.address))
                            }
                            None if tls_off => None,
                            None => crate::tls::PeerTls::for_endpoint(
                                sp.port,
                                sub,
                                &s.hostname,
                                ep,
                                peer.as_deref(),
                            ),
                        };
                        Endpoint {
                            addr,
                            peer: peer.clone(),
                            tls,
                            load: registry.load(addr),
                        }
                    })
                    .collect();
                let name: Arc<str> =
                    Arc::from(format!("outbound|{}|{sub}|{}", sp.port, s.hostname));
                let lb = if s.resolution == xds::Resolution::None {
                    // No endpoints: Envoy's ORIGINAL_DST cluster, whatever the balancer.
                    xds::LbPolicy::Passthrough
                } else {
                    settings
                        .load_balancer
                        .as_ref()
                        .and_then(|lb| lb.simple)
                        .unwrap_or(s.lb_policy)
                };
                let state = registry.cluster(&name, settings.connection_pool.as_ref());
                clusters.push(Arc::new(Cluster::new(
                    name,
                    subset.map(|s| Arc::from(s.name.as_str())),
                    endpoints,
                    lb,
                    settings,
                    state,
                )));
                cluster_ports.push(sp.port);
                originations.push(origination);
            }
        }
        ServiceEntry {
            clusters,
            cluster_ports,
            originations,
            policy,
            hostname: Arc::from(s.hostname.as_str()),
            name: Arc::from(s.name.as_str()),
            namespace: Arc::from(s.namespace.as_str()),
            service: s.clone(),
        }
    }
}

/// An indexed, immutable view of one version of the resources.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every accepted load.
    pub version: u64,
    /// The resources as loaded (for config dumps).
    pub resources: Arc<ProxyResources>,
    /// The proxy's own workload, if found.
    pub me: Option<Arc<Workload>>,
    /// The proxy's own labels.
    pub me_info: Arc<PeerInfo>,
    /// Every service, in the order of the resources.
    pub services: Vec<Arc<ServiceEntry>>,
    by_vip: FxHashMap<(IpAddr, u16), Arc<ServiceEntry>>,
    by_host: HashMap<String, Arc<ServiceEntry>>,
    /// ServiceEntry hosts `*.suffix` as written, the longest (most specific) first.
    wildcard_hosts: Vec<(String, Arc<ServiceEntry>)>,
    /// Ports of ServiceEntry hosts that have no VIP: a connection there is routed by its SNI.
    sni_ports: FxHashSet<u16>,
    /// Opaque TCP ports of ServiceEntry hosts without VIP: Istio's `0.0.0.0:<port>` listener
    /// takes every connection to that port (the first host by the resources' order wins).
    by_port: FxHashMap<u16, Arc<ServiceEntry>>,
    /// Endpoints of headless Services (no VIP), by the address a client dials: Istio gives
    /// each its own listener, so they are known destinations under `REGISTRY_ONLY` too.
    by_endpoint: FxHashMap<SocketAddr, Arc<ServiceEntry>>,
    /// What outbound traffic no service claims gets (MeshConfig / Sidecar
    /// `outboundTrafficPolicy`).
    pub outbound_policy: xds::OutboundTrafficPolicy,
    workloads_by_ip: FxHashMap<IpAddr, Arc<PeerInfo>>,
    workloads_by_uid: HashMap<String, Arc<PeerInfo>>,
    routes_by_host: HashMap<String, Arc<CompiledRoutes>>,
    inbound_by_port: HashMap<u16, Arc<ServiceEntry>>,
    /// A gateway's ports, compiled (empty for a sidecar).
    pub gateway: Arc<crate::gateway::GatewayConfig>,
}

impl Snapshot {
    /// What of this snapshot cannot be served, one line each: clusters whose TLS origination
    /// fails every connection, gateway TLS servers without a usable credential. The store
    /// logs each once, when it first appears ([`ConfigStore::apply`]), not on every snapshot.
    pub fn problems(&self) -> std::collections::BTreeSet<String> {
        let originations = self.services.iter().flat_map(|s| {
            s.clusters.iter().zip(&s.originations).filter_map(|(c, o)| {
                let why = o.as_ref()?.error()?;
                Some(format!(
                    "cluster {}: TLS origination unusable, its connections fail: {why}",
                    c.name
                ))
            })
        });
        originations.chain(self.gateway.problems()).collect()
    }

    /// Indexes `resources`; `cfg` supplies the proxy's identity when the resources do not.
    pub fn build(
        resources: ProxyResources,
        cfg: &ProxyConfig,
        version: u64,
        registry: &Registry,
        dns: &crate::dns::DnsTable,
    ) -> Result<Snapshot, xds::ValidationErrors> {
        let node = resources.node.clone().unwrap_or_default();
        let name = node.name.clone().or_else(|| cfg.pod_name.clone());
        let namespace = node.namespace.clone().or_else(|| cfg.pod_namespace.clone());
        let mut addrs = node.addresses.clone();
        addrs.extend(cfg.instance_ip);
        let me = resources
            .workloads
            .iter()
            .find(|w| node.uid.as_deref() == Some(w.uid.as_str()))
            .or_else(|| {
                resources.workloads.iter().find(|w| {
                    Some(w.name.as_str()) == name.as_deref()
                        && Some(w.namespace.as_str()) == namespace.as_deref()
                })
            })
            .or_else(|| {
                resources
                    .workloads
                    .iter()
                    .find(|w| w.addresses.iter().any(|a| addrs.contains(a)))
            })
            .cloned()
            .map(Arc::new);
        let me_info = match &me {
            Some(w) => PeerInfo::from_workload(w, &cfg.cluster_id),
            None => {
                let mut p = PeerInfo::unknown();
                if let Some(n) = &name {
                    // Istio derives the workload name from the pod name (deployment-rs-pod).
                    let parts: Vec<&str> = n.rsplitn(3, '-').collect();
                    let wl = if parts.len() == 3 {
                        parts[2]
                    } else {
                        n.as_str()
                    };
                    p.workload = Arc::from(wl);
                    p.canonical_service = Arc::from(wl);
                    p.canonical_revision = Arc::from("latest");
                }
                if let Some(ns) = &namespace {
                    p.namespace = Arc::from(ns.as_str());
                    p.principal = Arc::from(format!("spiffe://cluster.local/ns/{ns}/sa/default"));
                }
                p.cluster = Arc::from(cfg.cluster_id.as_str());
                p
            }
        };
        let mut self_addrs: Vec<IpAddr> = addrs;
        if let Some(w) = &me {
            self_addrs.extend(w.addresses.iter().copied());
        }

        let mut workloads_by_ip = FxHashMap::default();
        let mut workloads_by_uid = HashMap::new();
        for w in &resources.workloads {
            let info = Arc::new(PeerInfo::from_workload(w, &cfg.cluster_id));
            for a in &w.addresses {
                workloads_by_ip.insert(*a, info.clone());
            }
            workloads_by_uid.insert(w.uid.clone(), info);
        }
        let policies: HashMap<&str, Arc<TrafficPolicy>> = resources
            .traffic_policies
            .iter()
            .map(|p| (p.host.as_str(), Arc::new(p.clone())))
            .collect();
        let mut services = Vec::new();
        let mut by_vip = FxHashMap::default();
        let mut by_host = HashMap::new();
        let mut wildcard_hosts = Vec::new();
        let mut sni_ports = FxHashSet::default();
        let mut by_port = FxHashMap::default();
        let mut by_endpoint = FxHashMap::default();
        let mut inbound_by_port = HashMap::new();
        for s in &resources.services {
            let resolved;
            let s = if s.dns_endpoints.is_empty() {
                s
            } else {
                resolved = dns.with_endpoints(s);
                &resolved
            };
            let policy = policies.get(s.hostname.as_str()).cloned();
            let peers: Vec<Option<Arc<PeerInfo>>> = s
                .endpoints
                .iter()
                .map(|ep| {
                    ep.workload_uid
                        .as_deref()
                        .and_then(|u| workloads_by_uid.get(u))
                        .or_else(|| workloads_by_ip.get(&ep.address))
                        .cloned()
                })
                .collect();
            let entry = Arc::new(ServiceEntry::build(s, policy, &peers, registry));
            services.push(entry.clone());
            for vip in &s.vips {
                for p in &s.ports {
                    by_vip.insert((*vip, p.port), entry.clone());
                }
            }
            if s.is_service_entry() {
                // A ServiceEntry host is known only as written (Istio adds no short forms).
                match s.wildcard_suffix() {
                    Some(_) => wildcard_hosts.push((s.hostname.clone(), entry.clone())),
                    None => {
                        by_host.insert(s.hostname.clone(), entry.clone());
                    }
                }
                if s.vips.is_empty() {
                    for p in &s.ports {
                        match p.effective_protocol() {
                            xds::Protocol::Tcp => {
                                by_port.entry(p.port).or_insert_with(|| entry.clone());
                            }
                            _ => {
                                sni_ports.insert(p.port);
                            }
                        }
                    }
                }
            } else {
                if s.vips.is_empty() {
                    for ep in &s.endpoints {
                        for p in &s.ports {
                            by_endpoint
                                .entry(SocketAddr::new(ep.address, s.endpoint_port(ep, p)))
                                .or_insert_with(|| entry.clone());
                        }
                    }
                }
                by_host.insert(s.hostname.clone(), entry.clone());
                by_host.insert(format!("{}.{}", s.name, s.namespace), entry.clone());
                by_host.insert(format!("{}.{}.svc", s.name, s.namespace), entry.clone());
                if namespace.as_deref() == Some(s.namespace.as_str()) {
                    by_host.insert(s.name.clone(), entry.clone());
                }
            }
            for ep in &s.endpoints {
                let mine = self_addrs.contains(&ep.address)
                    || (me.is_some()
                        && ep.workload_uid.as_deref() == me.as_ref().map(|w| w.uid.as_str()));
                if mine {
                    for p in &s.ports {
                        inbound_by_port
                            .entry(s.endpoint_port(ep, p))
                            .or_insert_with(|| entry.clone());
                    }
                }
            }
        }
        let mut routes_by_host = HashMap::new();
        let mut errors = Vec::new();
        for (i, r) in resources.http_routes.iter().enumerate() {
            let r = match CompiledRoutes::compile(r) {
                Ok(r) => Arc::new(r),
                Err(message) => {
                    errors.push(xds::ValidationError {
                        path: format!("httpRoutes[{i}]"),
                        message,
                    });
                    continue;
                }
            };
            for h in &r.source.hosts {
                routes_by_host.insert(h.clone(), r.clone());
            }
        }
        let gateway = match crate::gateway::GatewayConfig::compile(&resources.gateway_listeners) {
            Ok(g) => Arc::new(g),
            Err(e) => {
                errors.extend(e.0);
                Arc::default()
            }
        };
        if !errors.is_empty() {
            return Err(xds::ValidationErrors(errors));
        }
        wildcard_hosts.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(Snapshot {
            version,
            outbound_policy: resources.outbound_policy(),
            wildcard_hosts,
            sni_ports,
            by_port,
            by_endpoint,
            resources: Arc::new(resources),
            me,
            me_info: Arc::new(me_info),
            services,
            by_vip,
            by_host,
            workloads_by_ip,
            workloads_by_uid,
            routes_by_host,
            inbound_by_port,
            gateway,
        })
    }

    /// The service whose VIP and port are `addr`.
    pub fn service_by_vip(&self, addr: SocketAddr) -> Option<&Arc<ServiceEntry>> {
        self.by_vip.get(&(addr.ip(), addr.port()))
    }

    /// The service a connection to `addr` reaches without looking at its bytes: by VIP, else
    /// a headless Service's endpoint, else a ServiceEntry's opaque TCP port without VIP.
    pub fn service_by_destination(&self, addr: SocketAddr) -> Option<&Arc<ServiceEntry>> {
        self.service_by_vip(addr)
            .or_else(|| self.by_endpoint.get(&addr))
            .or_else(|| self.by_port.get(&addr.port()))
    }

    /// The headless Service whose endpoint `addr` is, if any.
    pub fn headless_by_endpoint(&self, addr: SocketAddr) -> Option<&Arc<ServiceEntry>> {
        self.by_endpoint.get(&addr)
    }

    /// The service named by an HTTP authority (`httpbin-service`, `httpbin-service.default`,
    /// the FQDN, a ServiceEntry host or one its wildcard covers, the most specific first; a
    /// `:port` suffix is ignored).
    pub fn service_by_host(&self, authority: &str) -> Option<&Arc<ServiceEntry>> {
        let host = crate::route::strip_port(authority);
        self.by_host.get(host).or_else(|| {
            self.wildcard_hosts
                .iter()
                .find(|(pattern, _)| xds::gateway::host_matches(pattern, host))
                .map(|(_, e)| e)
        })
    }

    /// Whether a connection to `port` that no VIP claims may name a ServiceEntry host by SNI.
    pub fn routes_by_sni_on(&self, port: u16) -> bool {
        self.sni_ports.contains(&port)
    }

    /// Every name the proxy resolves for DNS endpoints (a name may come more than once).
    pub fn dns_names(&self) -> impl Iterator<Item = &str> {
        self.resources
            .services
            .iter()
            .flat_map(|s| s.dns_endpoints.iter().map(|e| e.hostname.as_str()))
    }

    /// The labels of the workload at `ip`, if known.
    pub fn peer_by_ip(&self, ip: IpAddr) -> Option<&Arc<PeerInfo>> {
        self.workloads_by_ip.get(&ip)
    }

    /// The labels of the workload with `uid`, if known.
    pub fn peer_by_uid(&self, uid: &str) -> Option<&Arc<PeerInfo>> {
        self.workloads_by_uid.get(uid)
    }

    /// HTTP routes for a service hostname.
    pub fn routes_for(&self, hostname: &str) -> Option<&Arc<CompiledRoutes>> {
        self.routes_by_host.get(hostname)
    }

    /// The service this proxy's workload serves on target `port`, for inbound labels.
    pub fn inbound_service(&self, port: u16) -> Option<&Arc<ServiceEntry>> {
        self.inbound_by_port.get(&port)
    }

    /// The port of [`Snapshot::inbound_service`] whose target is inbound `port` (Istio names
    /// inbound spans `<service>:<service port>/*`). Scans the service's endpoints for this
    /// workload's: called only for sampled requests.
    pub fn inbound_service_port(&self, port: u16) -> Option<u16> {
        let s = &self.inbound_service(port)?.service;
        let me = self.me.as_ref().map(|w| w.uid.as_str());
        s.ports
            .iter()
            .find(|p| {
                s.endpoints.iter().any(|ep| {
                    me.is_some()
                        && ep.workload_uid.as_deref() == me
                        && s.endpoint_port(ep, p) == port
                })
            })
            .or_else(|| {
                s.ports
                    .iter()
                    .find(|p| p.target_port.unwrap_or(p.port) == port)
            })
            .map(|p| p.port)
    }

    /// The declared protocol of inbound `port` (from the own workload, else its service).
    pub fn inbound_protocol(&self, port: u16) -> xds::Protocol {
        if let Some(w) = &self.me {
            let p = w.port_protocol(port);
            if p != xds::Protocol::Unknown {
                return p;
            }
        }
        self.inbound_service(port)
            .and_then(|e| {
                e.service
                    .ports
                    .iter()
                    .find(|p| p.target_port.unwrap_or(p.port) == port)
                    .map(ServicePort::effective_protocol)
            })
            .unwrap_or(xds::Protocol::Unknown)
    }
}

/// The current snapshot, swapped atomically on reload.
#[derive(Debug)]
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    /// The version in force, for those that act on a change (a gateway's listeners).
    changed: tokio::sync::watch::Sender<u64>,
    next_version: AtomicU64,
    cfg: Arc<ProxyConfig>,
    registry: Registry,
    dns: crate::dns::DnsTable,
    /// Held while a snapshot is built and swapped in, so a DNS refresh, which rebuilds from
    /// the resources in force, never swaps them back over newer ones; it holds the telemetry
    /// each new snapshot's Telemetry API config is applied to ([`ConfigStore::attach_telemetry`]).
    swapping: std::sync::Mutex<Option<crate::telemetry::Telemetry>>,
}

/// Applies the Telemetry API's access logs and metrics of `snap`'s Node to `telemetry`
/// (nothing happens when they did not change).
fn configure_telemetry(telemetry: &crate::telemetry::Telemetry, snap: &Snapshot) {
    let node = snap.resources.node.as_ref();
    telemetry.configure(
        node.and_then(|n| n.access_logging.as_ref()),
        node.and_then(|n| n.metrics.as_ref()),
    );
}

/// Logs the problems of `snap` that the snapshot before it (whose problems are `before`) did
/// not have: each distinct problem once, again only if it went away and came back.
fn report_problems(before: &std::collections::BTreeSet<String>, snap: &Snapshot) {
    for p in snap.problems().difference(before) {
        tracing::warn!(version = snap.version, "{p}");
    }
}

impl ConfigStore {
    /// A store holding `resources` as version 1; an error if they cannot be used (a route's
    /// regular expression that does not compile, ...).
    pub fn new(
        resources: ProxyResources,
        cfg: Arc<ProxyConfig>,
    ) -> Result<ConfigStore, xds::ValidationErrors> {
        let registry = Registry::default();
        let dns = crate::dns::DnsTable::default();
        let snap = Snapshot::build(resources, &cfg, 1, &registry, &dns)?;
        report_problems(&Default::default(), &snap);
        Ok(ConfigStore {
            current: ArcSwap::from_pointee(snap),
            changed: tokio::sync::watch::Sender::new(1),
            next_version: AtomicU64::new(2),
            cfg,
            registry,
            dns,
            swapping: std::sync::Mutex::new(None),
        })
    }

    /// The snapshot in force; hold it for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Learns of every new snapshot (its version).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Checks `resources` and, when valid, swaps them in as a new version; otherwise the
    /// snapshot in force stays. The one way in for resources from `--config` and from the
    /// control plane, so both are held to the same rules (a push that fails them is NACKed with
    /// the message).
    pub fn apply(&self, resources: ProxyResources) -> Result<u64, xds::ValidationErrors> {
        resources.validate()?;
        let swapping = self.swapping.lock().unwrap_or_else(|e| e.into_inner());
        self.swap_in(resources, swapping.as_ref())
    }

    /// From now on, every snapshot installed applies its Node's Telemetry API config to
    /// `telemetry` (the proxy's own), starting with the one in force.
    pub fn attach_telemetry(&self, telemetry: crate::telemetry::Telemetry) {
        let mut swapping = self.swapping.lock().unwrap_or_else(|e| e.into_inner());
        configure_telemetry(&telemetry, &self.load());
        *swapping = Some(telemetry);
    }

    /// Builds and swaps in a snapshot of `resources` (checked); the caller holds `swapping`,
    /// whose telemetry is `telemetry`.
    fn swap_in(
        &self,
        resources: ProxyResources,
        telemetry: Option<&crate::telemetry::Telemetry>,
    ) -> Result<u64, xds::ValidationErrors> {
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let snap = Arc::new(Snapshot::build(
            resources,
            &self.cfg,
            version,
            &self.registry,
            &self.dns,
        )?);
        // Before the swap: the first request on the new snapshot is logged and counted as it says.
        if let Some(t) = telemetry {
            configure_telemetry(t, &snap);
        }
        let previous = self.current.swap(snap.clone());
        report_problems(&previous.problems(), &snap);
        self.changed.send_replace(version);
        let mut names = FxHashSet::default();
        let mut addrs = FxHashSet::default();
        for c in snap.services.iter().flat_map(|s| &s.clusters) {
            names.insert(c.name.clone());
            addrs.extend(c.endpoints.iter().map(|e| e.addr));
        }
        self.registry.retain(&names, &addrs);
        Ok(version)
    }

    /// The answers of the names of DNS endpoints ([`crate::dns`]).
    pub fn dns(&self) -> &crate::dns::DnsTable {
        &self.dns
    }

    /// Rebuilds the snapshot in force from its own resources, after DNS answers changed.
    pub fn refresh(&self) -> Result<u64, xds::ValidationErrors> {
        let swapping = self.swapping.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.load();
        self.swap_in((*current.resources).clone(), swapping.as_ref())
    }
}

/// Polls `path` every `interval` and swaps in its resources when the file's content changes
/// (and has stayed the same for one more interval). A bad file is logged and ignored; the previous snapshot stays in force. Stops when a
/// drain starts.
pub async fn watch_file(
    path: PathBuf,
    store: Arc<ConfigStore>,
    interval: Duration,
    drain: DrainWatcher,
) {
    let mut applied = tokio::fs::read(&path).await.ok();
    // A change is applied once two reads in a row agree, so a file caught half-written is not
    // taken for a (truncated but valid) config.
    let mut pending: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            _ = tick.tick() => {}
        }
        let Ok(content) = tokio::fs::read(&path).await else {
            continue;
        };
        if applied.as_deref() == Some(content.as_slice()) {
            pending = None;
            continue;
        }
        if pending.as_deref() != Some(content.as_slice()) {
            pending = Some(content);
            continue;
        }
        pending = None;
        applied = Some(content.clone());
        let text = String::from_utf8_lossy(&content);
        let applied = ProxyResources::parse(&text)
            .map_err(|e| e.to_string())
            .and_then(|res| store.apply(res).map_err(|e| e.to_string()));
        match applied {
            Ok(v) => {
                tracing::info!(file = %path.display(), version = v, "config reloaded");
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "config rejected; keeping the previous version");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log sink for one test's subscriber.
    #[derive(Clone, Default)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// An external host on port 80 with `tls` for its DestinationRule, its endpoint at
    /// `203.0.113.<ep>` (which changes nothing of the TLS).
    fn resources(tls: &str, ep: u8) -> ProxyResources {
        ProxyResources::parse(&format!(
            r#"
self: {{name: sleep, namespace: default}}
services:
- hostname: api.external.test
  name: api.external.test
  namespace: default
  meshExternal: true
  resolution: STATIC
  ports: [{{name: http, port: 80, protocol: HTTP, targetPort: 443}}]
  endpoints: [{{address: 203.0.113.{ep}}}]
trafficPolicies:
- name: default/api
  host: api.external.test
  policy: {{settings: {{tls: {tls}}}}}
"#
        ))
        .expect("resources")
    }

    #[test]
    fn a_cluster_that_fails_closed_is_logged_once_while_it_lasts() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let lines = || {
            let text = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("utf-8");
            text.lines()
                .filter(|l| l.contains("TLS origination unusable"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let broken = "{mode: MUTUAL, credentialName: default/client-credential}";
        tracing::subscriber::with_default(subscriber, || {
            let store = ConfigStore::new(resources(broken, 1), Arc::default()).expect("store");
            assert_eq!(lines().len(), 1, "{:?}", lines());
            assert!(
                lines()[0].contains("outbound|80||api.external.test")
                    && lines()[0].contains("credentialName default/client-credential"),
                "{:?}",
                lines()
            );
            // New snapshots with the same problem: not logged again.
            for ep in [2, 3] {
                store.apply(resources(broken, ep)).expect("apply");
            }
            assert_eq!(lines().len(), 1, "{:?}", lines());
            // Fixed, then broken again: logged again.
            store.apply(resources("{mode: SIMPLE}", 3)).expect("apply");
            store.apply(resources(broken, 3)).expect("apply");
            assert_eq!(lines().len(), 2, "{:?}", lines());
        });
    }
}
