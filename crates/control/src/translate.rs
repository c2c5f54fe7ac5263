//! Model → the [`xds::ProxyResources`] of one proxy.
//!
//! A proxy is known by its Istio node id (`sidecar~<ip>~<pod>.<namespace>~<domain>`, parsed by
//! [`xds::ads::ProxyId`]), reduced to a [`ProxyKey`]. It receives:
//!
//! - `self`: its pod, namespace and address, and the uid of its workload when the model has it
//!   (found by namespace and pod name, else by address);
//! - every workload (addresses, identities and tlsMode of peers are needed for auto mTLS);
//! - the Services, HttpRoutes and TrafficPolicies exported to its namespace. When several
//!   VirtualServices claim a host, the proxy's namespace wins, then the host's own namespace,
//!   then the others by name. A host's DestinationRule is, as pilot looks it up, the one of the
//!   proxy's namespace, else the one of the host's namespace, else the one of the root
//!   namespace (a rule in any other namespace never applies); at each step a rule naming the
//!   host wins over one whose wildcard covers it, then the first by name. A DestinationRule with
//!   a `workloadSelector` applies only to the proxies of its own namespace it selects (so the
//!   Secret its `credentialName` names, sent inline, reaches only them);
//! - the Authorizations of its namespace and of the root namespace (no other can apply to it).
//!
//! Apart from `self`, what a proxy receives depends only on its namespace and on which
//! selector DestinationRules select it (its [`ViewKey`]): the control plane computes the
//! [`SharedResources`] once per key and shares them between the proxies that have it.
//!
//! A `Sidecar` resource narrows what a proxy sees ([`crate::model::sidecar`]): the one that
//! applies to it is part of its [`ViewKey`]; only the services its egress hosts match, the
//! VirtualService hosts they match, and the DestinationRules of the services it sees are sent.
//! Its `outboundTrafficPolicy` overrides the MeshConfig's, in the proxy's `self`.
//!
//! A gateway proxy (`router~...`) receives the same, and the [`xds::GatewayListener`]s of the
//! Gateways that select its pod ([`router_resources`], [`gateway_listeners`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use xds::ads::ProxyId;
use xds::{NodeRef, ProxyResources};

use crate::model::sidecar::{self, SidecarScope};
use crate::model::{Model, ROOT_NAMESPACE, Scoped, selector_matches};

/// Which proxy: the parts of its node id that locate it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyKey {
    /// The pod's address.
    pub ip: IpAddr,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's namespace.
    pub namespace: String,
}

impl From<&ProxyId> for ProxyKey {
    fn from(id: &ProxyId) -> ProxyKey {
        ProxyKey {
            ip: id.ip,
            pod_name: id.pod_name.clone(),
            namespace: id.namespace.clone(),
        }
    }
}

/// Everything that decides what a proxy sees besides `self`: its namespace and the names of the
/// DestinationRules with a `workloadSelector` that select it. Proxies with equal keys receive
/// the same [`SharedResources`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViewKey {
    /// The proxy's namespace.
    pub namespace: String,
    /// Selector DestinationRules visible to the namespace that select the proxy's workload.
    pub selected: Vec<String>,
    /// The Sidecar resource that applies to the proxy (`namespace/name`), if any.
    pub sidecar: Option<String>,
}

/// What the proxies of one [`ViewKey`] receive, apart from `self` and the workloads (which
/// every proxy receives whole).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedResources {
    /// Services exported to the namespace.
    pub services: Vec<xds::Service>,
    /// HttpRoutes, each host with the best-ranked VirtualService that claims it.
    pub http_routes: Vec<xds::HttpRoutes>,
    /// TrafficPolicies, one per host.
    pub traffic_policies: Vec<xds::TrafficPolicy>,
    /// Authorizations of the namespace and of the root namespace.
    pub authorizations: Vec<xds::Authorization>,
}

/// Finds a proxy's workload in a model without scanning every workload: by namespace and pod
/// name, else by address (the first in the model's order wins, as a scan would find it).
#[derive(Debug, Default)]
pub struct WorkloadIndex {
    by_pod: HashMap<(String, String), usize>,
    by_ip: HashMap<IpAddr, usize>,
}

impl WorkloadIndex {
    /// Indexes the workloads of `model`.
    pub fn new(model: &Model) -> WorkloadIndex {
        let mut by_pod = HashMap::with_capacity(model.workloads.len());
        let mut by_ip = HashMap::with_capacity(model.workloads.len());
        for (i, w) in model.workloads.iter().enumerate() {
            by_pod
                .entry((w.namespace.clone(), w.name.clone()))
                .or_insert(i);
            for ip in &w.addresses {
                by_ip.entry(*ip).or_insert(i);
            }
        }
        WorkloadIndex { by_pod, by_ip }
    }

    /// The workload of `proxy` in `model` (the model indexed), if it has it.
    pub fn find<'m>(&self, model: &'m Model, proxy: &ProxyKey) -> Option<&'m xds::Workload> {
        self.by_pod
            .get(&(proxy.namespace.clone(), proxy.pod_name.clone()))
            .or_else(|| self.by_ip.get(&proxy.ip))
            .and_then(|i| model.workloads.get(*i))
    }
}

/// The workload of `proxy` by scanning (for one proxy; use [`WorkloadIndex`] for many).
fn find_workload<'a>(model: &'a Model, proxy: &ProxyKey) -> Option<&'a xds::Workload> {
    model
        .workloads
        .iter()
        .find(|w| w.namespace == proxy.namespace && w.name == proxy.pod_name)
        .or_else(|| {
            model
                .workloads
                .iter()
                .find(|w| w.addresses.contains(&proxy.ip))
        })
}

/// The [`ViewKey`] of `proxy`, whose workload is `me`.
pub fn view_key(model: &Model, proxy: &ProxyKey, me: Option<&xds::Workload>) -> ViewKey {
    let ns = proxy.namespace.as_str();
    let selected = match me {
        None => Vec::new(),
        Some(w) => model
            .traffic_policies
            .iter()
            .filter(|p| {
                // A workloadSelector selects in its own namespace only (Istio's), which also
                // keeps the Secrets such a rule carries in their namespace.
                p.namespace == ns
                    && p.export_to.visible_to(ns)
                    && p.workload_selector
                        .as_ref()
                        .is_some_and(|s| selector_matches(s, &w.labels))
            })
            .map(|p| p.resource.name.clone())
            .collect(),
    };
    ViewKey {
        namespace: proxy.namespace.clone(),
        selected,
        sidecar: sidecar_of(model, ns, me).map(|s| s.key()),
    }
}

/// The proxy's own resource: its pod, namespace and address, its workload's uid, and the
/// outbound traffic policy in force for it.
pub fn node_ref(model: &Model, proxy: &ProxyKey, me: Option<&xds::Workload>) -> NodeRef {
    let no_labels = crate::model::Labels::new();
    let labels = me.map_or(&no_labels, |w| &w.labels);
    NodeRef {
        uid: me.map(|w| w.uid.clone()),
        name: Some(proxy.pod_name.clone()),
        namespace: Some(proxy.namespace.clone()),
        addresses: vec![proxy.ip],
        outbound_traffic_policy: outbound_traffic_policy(model, &proxy.namespace, me),
        tracing: model.telemetry.tracing_for(&proxy.namespace, labels),
        access_logging: model.telemetry.access_logging_for(&proxy.namespace, labels),
        metrics: model.telemetry.metrics_for(&proxy.namespace, labels),
    }
}

/// The Sidecar resource of a proxy in `namespace` whose workload is `me`.
fn sidecar_of<'m>(
    model: &'m Model,
    namespace: &str,
    me: Option<&xds::Workload>,
) -> Option<&'m SidecarScope> {
    sidecar::for_proxy(&model.sidecars, namespace, me.map(|w| &w.labels))
}

/// The outbound traffic policy of a proxy in `namespace` whose workload is `me`: its
/// Sidecar's, else the MeshConfig's.
pub fn outbound_traffic_policy(
    model: &Model,
    namespace: &str,
    me: Option<&xds::Workload>,
) -> xds::OutboundTrafficPolicy {
    sidecar_of(model, namespace, me)
        .and_then(|s| s.outbound_traffic_policy)
        .unwrap_or(model.outbound_traffic_policy)
}

/// The resources of the proxy `proxy`.
pub fn proxy_resources(model: &Model, proxy: &ProxyKey) -> ProxyResources {
    let me = find_workload(model, proxy);
    let shared = shared_resources(model, &view_key(model, proxy, me));
    let node = node_ref(model, proxy, me);
    ProxyResources {
        outbound_traffic_policy: node.outbound_traffic_policy,
        node: Some(node),
        workloads: model.workloads.clone(),
        services: shared.services,
        http_routes: shared.http_routes,
        traffic_policies: shared.traffic_policies,
        authorizations: shared.authorizations,
        gateway_listeners: Vec::new(),
    }
}

/// Whether the node id names a gateway proxy (`router~...`), which receives
/// [`gateway_listeners`] besides what a sidecar receives.
pub fn is_router(id: &ProxyId) -> bool {
    id.kind == "router"
}

/// The resources of the gateway proxy `proxy`: a sidecar's (the services, policies and
/// workloads exported to its namespace, which it routes to), with the credentials of its
/// namespace's Secrets that DestinationRules without selector name, and the listeners of the
/// Gateways that select its pod.
pub fn router_resources(model: &Model, proxy: &ProxyKey) -> ProxyResources {
    let me = find_workload(model, proxy);
    let mut resources = proxy_resources(model, proxy);
    for tp in &mut resources.traffic_policies {
        crate::model::policy::fill_gateway_credentials(
            tp,
            &proxy.namespace,
            &model.gateways.client_credentials,
        );
    }
    ProxyResources {
        // A one-off translation: its problems are for the push to log.
        gateway_listeners: gateway_listeners(model, proxy, me, &mut Default::default()),
        ..resources
    }
}

/// The listeners of the gateway proxy `proxy`, whose workload is `me`: the servers of every
/// Gateway whose selector its pod's labels match, in any namespace, with the credentials of
/// the Secrets of its own namespace. A proxy whose workload is unknown has none. A server left
/// out (it cannot share its port) is a line in `problems`, for the caller to log once.
pub fn gateway_listeners(
    model: &Model,
    proxy: &ProxyKey,
    me: Option<&xds::Workload>,
    problems: &mut std::collections::BTreeSet<String>,
) -> Vec<xds::GatewayListener> {
    let Some(me) = me else {
        return Vec::new();
    };
    let listeners = crate::model::gateway::listeners_for(
        &model.gateways,
        &proxy.namespace,
        &me.labels,
        &mut |server, port| {
            problems.insert(format!(
                "Gateway {} server {} port {port}: cannot share its port with the servers \
                 already there (TLS and plain HTTP, or passthrough and terminated); not served",
                server.gateway, server.index
            ));
        },
    );
    // As pilot's MergeGateways: a server port that is a port of a Service in front of the pod is
    // listened on at that port's target port (the ingress gateway's 80 → 8080, 443 → 8443), so
    // Istio's Gateways on 80 and 443 work with a proxy that cannot bind below 1024.
    let mut by_port: BTreeMap<u16, xds::GatewayListener> = BTreeMap::new();
    for l in listeners {
        let port = target_port(model, &proxy.namespace, &me.uid, l.port);
        let merged = by_port.entry(port).or_insert_with(|| xds::GatewayListener {
            port,
            server_port: (port != l.port).then_some(l.port),
            servers: Vec::new(),
        });
        merged.servers.extend(l.servers);
    }
    by_port.into_values().collect()
}

/// The port workload `uid` of `namespace` listens on for `port` of a Service of its namespace
/// that has it as an endpoint; `port` itself when no such Service has that port.
fn target_port(model: &Model, namespace: &str, uid: &str, port: u16) -> u16 {
    model
        .services
        .iter()
        .map(|s| &s.resource)
        .filter(|s| s.namespace == namespace)
        .find_map(|s| {
            let sp = s.port(port)?;
            let ep = s
                .endpoints
                .iter()
                .find(|ep| ep.workload_uid.as_deref() == Some(uid))?;
            Some(s.endpoint_port(ep, sp))
        })
        .unwrap_or(port)
}

/// What the proxies of `key` see, apart from `self` and the workloads.
pub fn shared_resources(model: &Model, key: &ViewKey) -> SharedResources {
    let ns = key.namespace.as_str();
    let visible = |export: &crate::model::ExportTo| export.visible_to(ns);
    let scope = key
        .sidecar
        .as_deref()
        .and_then(|k| model.sidecars.iter().find(|s| s.key() == k));
    let sees = |host_ns: &str, host: &str| scope.is_none_or(|s| s.sees(ns, host_ns, host));

    let services: Vec<xds::Service> = model
        .services
        .iter()
        .filter(|s| visible(&s.export_to) && sees(&s.namespace, &s.resource.hostname))
        .map(|s| s.resource.clone())
        .collect();
    let service_ns: BTreeMap<&str, &str> = services
        .iter()
        .map(|s| (s.hostname.as_str(), s.namespace.as_str()))
        .collect();
    let rank = |scoped_ns: &str, host: &str| -> u8 {
        if scoped_ns == ns {
            0
        } else if service_ns.get(host) == Some(&scoped_ns) {
            1
        } else {
            2
        }
    };

    // HttpRoutes: each host goes to the best-ranked VirtualService that claims it.
    let routes: Vec<&Scoped<xds::HttpRoutes>> = model
        .http_routes
        .iter()
        .filter(|r| visible(&r.export_to))
        .collect();
    let mut owner: BTreeMap<&str, (u8, &str)> = BTreeMap::new();
    for r in &routes {
        // A Sidecar's egress hosts select VirtualServices by their namespace and hosts.
        for h in r.resource.hosts.iter().filter(|h| sees(&r.namespace, h)) {
            let candidate = (rank(&r.namespace, h), r.resource.name.as_str());
            owner
                .entry(h.as_str())
                .and_modify(|best| *best = (*best).min(candidate))
                .or_insert(candidate);
        }
    }
    let http_routes = routes
        .into_iter()
        .filter_map(|r| {
            let hosts: Vec<String> = r
                .resource
                .hosts
                .iter()
                .filter(|h| owner.get(h.as_str()).map(|o| o.1) == Some(r.resource.name.as_str()))
                .cloned()
                .collect();
            (!hosts.is_empty()).then(|| xds::HttpRoutes {
                hosts,
                ..r.resource.clone()
            })
        })
        .collect();

    // TrafficPolicies: one per host, the best-ranked that applies to this proxy.
    let mut best: BTreeMap<&str, ((u8, bool, &str), &xds::TrafficPolicy)> = BTreeMap::new();
    for p in model.traffic_policies.iter().filter(|p| {
        visible(&p.export_to)
            && (scope.is_none() || service_ns.contains_key(p.resource.host.as_str()))
    }) {
        if p.workload_selector.is_some() && !key.selected.contains(&p.resource.name) {
            continue;
        }
        let rank = match rank(&p.namespace, &p.resource.host) {
            2 if p.namespace != ROOT_NAMESPACE => continue,
            r => r,
        };
        let candidate = (
            rank,
            crate::model::policy::from_wildcard(&p.resource),
            p.resource.name.as_str(),
        );
        match best.get(p.resource.host.as_str()) {
            Some((k, _)) if *k <= candidate => {}
            _ => {
                best.insert(&p.resource.host, (candidate, &p.resource));
            }
        }
    }
    let traffic_policies = best.into_values().map(|(_, p)| p.clone()).collect();

    let authorizations = model
        .authorizations
        .iter()
        .filter(|a| a.namespace == ns || a.namespace == ROOT_NAMESPACE)
        .cloned()
        .collect();

    SharedResources {
        services,
        http_routes,
        traffic_policies,
        authorizations,
    }
}
