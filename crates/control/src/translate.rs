//! Model → the [`xds::ProxyResources`] of one proxy.
//!
//! A proxy is known by its Istio node id (`sidecar~<ip>~<pod>.<namespace>~<domain>`, parsed by
//! [`xds::ads::ProxyId`]), reduced to a [`ProxyKey`]. It receives:
//!
//! - `self`: its pod, namespace and address, and the uid of its workload when the model has it
//!   (found by namespace and pod name, else by address);
//! - every workload (addresses, identities and tlsMode of peers are needed for auto mTLS);
//! - the Services, HttpRoutes and TrafficPolicies exported to its namespace. When several
//!   VirtualServices (or DestinationRules) claim a host, the proxy's namespace wins, then the
//!   host's own namespace, then the others by name, as Istio does; a DestinationRule with a
//!   `workloadSelector` applies only to the proxies it selects;
//! - the Authorizations of its namespace and of the root namespace (no other can apply to it).
//!
//! A `Sidecar` resource narrowing what a proxy sees is a later refinement.

use std::collections::BTreeMap;
use std::net::IpAddr;

use xds::ads::ProxyId;
use xds::{NodeRef, ProxyResources};

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

/// The resources of the proxy `proxy`.
pub fn proxy_resources(model: &Model, proxy: &ProxyKey) -> ProxyResources {
    let me = model
        .workloads
        .iter()
        .find(|w| w.namespace == proxy.namespace && w.name == proxy.pod_name)
        .or_else(|| {
            model
                .workloads
                .iter()
                .find(|w| w.addresses.contains(&proxy.ip))
        });
    let ns = proxy.namespace.as_str();
    let visible = |export: &crate::model::ExportTo| export.visible_to(ns);

    let services: Vec<xds::Service> = model
        .services
        .iter()
        .filter(|s| visible(&s.export_to))
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
        for h in &r.resource.hosts {
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
    let mut best: BTreeMap<&str, ((u8, &str), &xds::TrafficPolicy)> = BTreeMap::new();
    for p in model
        .traffic_policies
        .iter()
        .filter(|p| visible(&p.export_to))
    {
        if let Some(selector) = &p.workload_selector
            && !me.is_some_and(|w| selector_matches(selector, &w.labels))
        {
            continue;
        }
        let key = (
            rank(&p.namespace, &p.resource.host),
            p.resource.name.as_str(),
        );
        match best.get(p.resource.host.as_str()) {
            Some((k, _)) if *k <= key => {}
            _ => {
                best.insert(&p.resource.host, (key, &p.resource));
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

    ProxyResources {
        node: Some(NodeRef {
            uid: me.map(|w| w.uid.clone()),
            name: Some(proxy.pod_name.clone()),
            namespace: Some(proxy.namespace.clone()),
            addresses: vec![proxy.ip],
        }),
        workloads: model.workloads.clone(),
        services,
        http_routes,
        traffic_policies,
        authorizations,
    }
}
