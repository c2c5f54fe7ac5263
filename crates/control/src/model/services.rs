//! Services: hostname, VIPs, ports with their Istio protocol, and endpoints.
//!
//! - Hostname `<name>.<namespace>.svc.cluster.local`; VIPs from `clusterIPs`/`clusterIP`, none
//!   for a headless Service (`clusterIP: None`), else assigned by [`super::vip::VipAllocator`].
//!   A VIP:port already taken by another Service is dropped from the later one, with a warning.
//! - Ports: TCP ones only (the mesh does not proxy UDP or SCTP); the protocol is resolved with
//!   Istio's rules (`appProtocol`, then the name prefix: `http-…`, `grpc-…`).
//! - Endpoints: from the Service's EndpointSlices when there are any (a cluster, or a Service
//!   without selector), else the workloads of its namespace whose labels match its selector. A
//!   named `targetPort` is resolved per workload against its container ports; a workload that
//!   has none of the Service's named ports is not an endpoint.
//! - `networking.istio.io/exportTo` gives its visibility.
//!
//! Not carried: ExternalName Services (left out with a warning), session affinity, traffic
//! policies of the Service object, topology hints.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use api::k8s::IntOrString;
use api::objects::{EndpointSlice, Object, Service as ApiService};
use xds::{Endpoint, Protocol, ServicePort};

use super::vip::{ServiceKey, VipAllocator};
use super::{EXPORT_TO_ANNOTATION, ExportTo, Scoped, Warnings, service_hostname};

/// Builds every Service, sorted by hostname.
pub(crate) fn build(
    objects: &[&Object],
    workloads: &[xds::Workload],
    vips: &mut VipAllocator,
    warnings: &mut Warnings,
) -> Vec<Scoped<xds::Service>> {
    let mut services: Vec<&ApiService> = Vec::new();
    let mut slices: HashMap<ServiceKey, Vec<&EndpointSlice>> = HashMap::new();
    for o in objects {
        match o {
            // api::support reports ExternalName services.
            Object::Service(s) if s.spec.service_type.as_deref() != Some("ExternalName") => {
                services.push(s)
            }
            Object::EndpointSlice(slice) => match slice.service_name() {
                Some(name) => slices
                    .entry((slice.metadata.namespace.clone(), name.to_string()))
                    .or_default()
                    .push(slice),
                None => warnings.add(
                    o.display(),
                    "no kubernetes.io/service-name label: not tied to a Service",
                ),
            },
            _ => {}
        }
    }
    services.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });

    // Declared VIPs first: they win over assigned ones.
    let mut declared_vips: HashMap<ServiceKey, Vec<IpAddr>> = HashMap::new();
    let mut wanted = BTreeSet::new();
    for s in &services {
        let key = key(s);
        let (ips, bad) = declared(s);
        for ip in bad {
            warnings.add(
                display(s),
                format!("clusterIPs: \"{ip}\" is not an IP address"),
            );
        }
        match ips {
            Some(ips) => {
                declared_vips.insert(key, ips);
            }
            None => {
                wanted.insert(key);
            }
        }
    }
    let declared_set: HashSet<IpAddr> = declared_vips.values().flatten().copied().collect();
    let assigned = vips.assign(&wanted, &declared_set);

    let by_ip: HashMap<IpAddr, &xds::Workload> = workloads
        .iter()
        .flat_map(|w| w.addresses.iter().map(move |a| (*a, w)))
        .collect();
    let by_label = ByLabel::new(workloads);
    let mut used: BTreeMap<(IpAddr, u16), String> = BTreeMap::new();
    let mut out = Vec::with_capacity(services.len());
    for s in services {
        let key = key(s);
        let hostname = service_hostname(&s.metadata.name, &s.metadata.namespace);
        let ports = ports(s);
        let candidates = match declared_vips.get(&key) {
            Some(ips) => ips.clone(),
            None => assigned
                .get(&key)
                .map(|ip| vec![IpAddr::V4(*ip)])
                .unwrap_or_default(),
        };
        let mut vips = Vec::new();
        for vip in candidates {
            let clash = ports.iter().find_map(|(p, _)| {
                used.get(&(vip, p.port))
                    .map(|other| (p.port, other.clone()))
            });
            match clash {
                Some((port, other)) => warnings.add(
                    display(s),
                    format!("VIP {vip}:{port} is already used by {other}: VIP left out"),
                ),
                None => {
                    for (p, _) in &ports {
                        used.insert((vip, p.port), hostname.clone());
                    }
                    vips.push(vip);
                }
            }
        }
        let endpoints = match slices.get(&key) {
            Some(slices) => slice_endpoints(s, &ports, slices, &by_ip),
            None => selector_endpoints(s, &ports, &by_label),
        };
        let export_to = match s.metadata.annotations.get(EXPORT_TO_ANNOTATION) {
            Some(v) => ExportTo::parse(v.split(','), &s.metadata.namespace),
            None => ExportTo::All,
        };
        out.push(Scoped {
            namespace: s.metadata.namespace.clone(),
            export_to,
            workload_selector: None,
            resource: xds::Service {
                hostname,
                name: s.metadata.name.clone(),
                namespace: s.metadata.namespace.clone(),
                vips,
                ports: ports.into_iter().map(|(p, _)| p).collect(),
                endpoints,
                lb_policy: xds::LbPolicy::default(),
                ..Default::default()
            },
        });
    }
    out.sort_by(|a, b| a.resource.hostname.cmp(&b.resource.hostname));
    out
}

fn key(s: &ApiService) -> ServiceKey {
    (s.metadata.namespace.clone(), s.metadata.name.clone())
}

fn display(s: &ApiService) -> String {
    format!("Service {}/{}", s.metadata.namespace, s.metadata.name)
}

/// The declared VIPs (`Some(empty)` for headless), or `None` when one must be assigned; and
/// the entries that are not addresses.
fn declared(s: &ApiService) -> (Option<Vec<IpAddr>>, Vec<String>) {
    let texts: Vec<&str> = if s.spec.cluster_ips.is_empty() {
        s.spec.cluster_ip.iter().map(String::as_str).collect()
    } else {
        s.spec.cluster_ips.iter().map(String::as_str).collect()
    };
    if texts.contains(&"None") {
        return (Some(Vec::new()), Vec::new());
    }
    let texts: Vec<&str> = texts.into_iter().filter(|t| !t.is_empty()).collect();
    if texts.is_empty() {
        return (None, Vec::new());
    }
    let mut ips = Vec::new();
    let mut bad = Vec::new();
    for t in texts {
        match t.parse() {
            Ok(ip) => ips.push(ip),
            Err(_) => bad.push(t.to_string()),
        }
    }
    if ips.is_empty() {
        (None, bad)
    } else {
        (Some(ips), bad)
    }
}

/// The TCP ports of a Service, each with its named target port (resolved per endpoint).
fn ports(s: &ApiService) -> Vec<(ServicePort, Option<String>)> {
    s.spec
        .ports
        .iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let (target_port, named) = match &p.target_port {
                Some(IntOrString::Int(n)) => (u16::try_from(*n).ok(), None),
                Some(IntOrString::String(name)) => (None, Some(name.clone())),
                None => (None, None),
            };
            let name = (!p.name.is_empty()).then(|| p.name.clone());
            let protocol = Protocol::resolve(
                Protocol::Unknown,
                p.app_protocol.as_deref(),
                name.as_deref(),
            );
            Some((
                ServicePort {
                    name,
                    port,
                    target_port,
                    protocol,
                    app_protocol: p.app_protocol.clone(),
                },
                named,
            ))
        })
        .collect()
}

/// Workloads by namespace and one label, in model order: a selector's candidates are the
/// workloads with its first label, not every workload (thousands of Services each scanning
/// thousands of workloads made the model build quadratic).
struct ByLabel<'a> {
    index: HashMap<(String, String, String), Vec<&'a xds::Workload>>,
}

impl<'a> ByLabel<'a> {
    fn new(workloads: &'a [xds::Workload]) -> ByLabel<'a> {
        let mut index: HashMap<_, Vec<_>> = HashMap::new();
        for w in workloads {
            for (k, v) in &w.labels {
                index
                    .entry((w.namespace.clone(), k.clone(), v.clone()))
                    .or_default()
                    .push(w);
            }
        }
        ByLabel { index }
    }

    /// The workloads of `namespace` that `selector` (not empty) picks, in model order.
    fn select(&self, namespace: &str, selector: &super::Labels) -> Vec<&'a xds::Workload> {
        let Some((k, v)) = selector.iter().next() else {
            return Vec::new();
        };
        let key = (namespace.to_string(), k.clone(), v.clone());
        self.index
            .get(&key)
            .into_iter()
            .flatten()
            .copied()
            .filter(|w| super::selector_matches(selector, &w.labels))
            .collect()
    }
}

/// The workloads of the Service's namespace that its selector picks. No selector: none (its
/// endpoints are managed by hand, as EndpointSlices).
fn selector_endpoints(
    s: &ApiService,
    ports: &[(ServicePort, Option<String>)],
    workloads: &ByLabel<'_>,
) -> Vec<Endpoint> {
    if s.spec.selector.is_empty() {
        return Vec::new();
    }
    let all_named = !ports.is_empty() && ports.iter().all(|(_, named)| named.is_some());
    workloads
        .select(&s.metadata.namespace, &s.spec.selector)
        .into_iter()
        .filter_map(|w| {
            let address = *w.addresses.first()?;
            let mut endpoint_ports = BTreeMap::new();
            for (sp, named) in ports {
                if let Some(name) = named
                    && let Some(wp) = w.ports.iter().find(|wp| wp.name.as_ref() == Some(name))
                {
                    endpoint_ports.insert(sp.port, wp.port);
                }
            }
            if all_named && endpoint_ports.is_empty() {
                return None;
            }
            Some(workload_endpoint(address, endpoint_ports, w))
        })
        .collect()
}

/// Auto mTLS as Istio's EDS does it (`mtlsChecker`): an endpoint whose workload's
/// PeerAuthentication is DISABLE on every port the Service reaches it on is sent as plaintext
/// (`tlsMode: disabled`); one DISABLE on some of those ports (`portLevelMtls`) keeps mTLS and
/// lists the Service ports that take plaintext (`plaintextPorts`), as Istio's per-port
/// clusters differ. A client cannot decide this itself: it receives only its own namespace's
/// and the root namespace's policies.
pub(crate) fn plaintext_where_mtls_is_disabled(
    services: &mut [Scoped<xds::Service>],
    workloads: &[xds::Workload],
    authorizations: &[xds::Authorization],
) {
    for s in services {
        let svc = &mut s.resource;
        for i in 0..svc.endpoints.len() {
            let ep = &svc.endpoints[i];
            if ep.tls_mode != xds::TlsMode::Istio || svc.ports.is_empty() {
                continue;
            }
            let Some(w) = ep
                .workload_uid
                .as_deref()
                .and_then(|u| super::workload_by_uid(workloads, u))
            else {
                continue;
            };
            let mtls = xds::EffectiveMtls::resolve(
                authorizations,
                super::ROOT_NAMESPACE,
                Some(&w.namespace),
                &w.labels,
            );
            let plaintext: std::collections::BTreeSet<u16> = svc
                .ports
                .iter()
                .filter(|sp| mtls.mode(svc.endpoint_port(ep, sp)) == xds::MtlsMode::Disable)
                .map(|sp| sp.port)
                .collect();
            if plaintext.len() == svc.ports.len() {
                svc.endpoints[i].tls_mode = xds::TlsMode::Disabled;
            } else {
                svc.endpoints[i].plaintext_ports = plaintext;
            }
        }
    }
}

fn workload_endpoint(address: IpAddr, ports: BTreeMap<u16, u16>, w: &xds::Workload) -> Endpoint {
    Endpoint {
        address,
        ports,
        workload_uid: Some(w.uid.clone()),
        labels: w.labels.clone(),
        tls_mode: w.tls_mode,
        identity: w.identity.clone(),
        plaintext_ports: Default::default(),
    }
}

/// Endpoints from EndpointSlices: ready addresses, with ports matched to the Service's by name.
fn slice_endpoints(
    s: &ApiService,
    ports: &[(ServicePort, Option<String>)],
    slices: &[&EndpointSlice],
    by_ip: &HashMap<IpAddr, &xds::Workload>,
) -> Vec<Endpoint> {
    let mut out: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    for slice in slices {
        if slice.slice.address_type == "FQDN" {
            continue; // reported by api::support
        }
        let mut endpoint_ports = BTreeMap::new();
        for ep_port in &slice.slice.ports {
            let name = ep_port.name.as_deref().unwrap_or_default();
            if let Some((sp, _)) = ports
                .iter()
                .find(|(sp, _)| sp.name.as_deref().unwrap_or_default() == name)
                && let Some(n) = ep_port.port.and_then(|n| u16::try_from(n).ok())
            {
                endpoint_ports.insert(sp.port, n);
            }
        }
        for ep in &slice.slice.endpoints {
            if ep.conditions.ready == Some(false) {
                continue;
            }
            for address in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                let endpoint = match by_ip.get(&address) {
                    Some(w) => workload_endpoint(address, endpoint_ports.clone(), w),
                    None => Endpoint {
                        address,
                        ports: endpoint_ports.clone(),
                        workload_uid: None,
                        labels: BTreeMap::new(),
                        tls_mode: xds::TlsMode::Disabled,
                        identity: None,
                        plaintext_ports: Default::default(),
                    },
                };
                out.insert(address, endpoint);
            }
        }
    }
    if out.is_empty() && !s.spec.selector.is_empty() {
        tracing::debug!(service = %self::display(s), "EndpointSlices list no ready endpoint");
    }
    out.into_values().collect()
}
