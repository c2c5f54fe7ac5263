//! ServiceEntries → [`xds::Service`]s, one per host, beside the Kubernetes Services.
//!
//! As Istio's `convertServices` does: the hostname is the host as written (lowercased), its
//! name is the host too (Istio's `destination_service_name` for an external host), its
//! namespace the ServiceEntry's. `addresses` are its VIPs (an IP, or a CIDR of one address;
//! a wider CIDR is left out with a warning: it would route by destination subnet, which the
//! proxy does not do). Ports keep their protocol (`HTTP`, `HTTPS`, `TLS`, `TCP`, `GRPC`,
//! `HTTP2`, `MONGO`...) and `targetPort`. Endpoints by `resolution`:
//!
//! - `STATIC`: the listed IPs (their `ports` by port name, labels, service account);
//! - `DNS` / `DNS_ROUND_ROBIN`: the listed names (IPs stay IPs), or the host itself when none
//!   are listed, resolved by the proxy;
//! - `NONE`: none: the proxy forwards to the address the client dialled;
//! - `workloadSelector`: the selected workloads of the ServiceEntry's namespace.
//!
//! `MESH_EXTERNAL` (the default location) endpoints never take Istio mTLS; `MESH_INTERNAL`
//! endpoints take it when their workload (or the label `security.istio.io/tlsMode: istio`)
//! says so. A host already served by a Kubernetes Service, or by a ServiceEntry earlier by
//! namespace and name, is left out with a warning (Istio merges some of these; we do not).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use api::networking::service_entry::{Location, Resolution, ServiceEntry};
use api::objects::{IstioConfig, Object};

use super::{ExportTo, Scoped, Warnings, selector_matches};

/// The label by which an endpoint declares it takes Istio mTLS.
const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// Appends the Services of every ServiceEntry among `objects` to `services` (kept sorted by
/// hostname). `trust_domain` names the identity of endpoints with a service account.
pub(crate) fn build(
    objects: &[&Object],
    workloads: &[xds::Workload],
    trust_domain: &str,
    services: &mut Vec<Scoped<xds::Service>>,
    warnings: &mut Warnings,
) {
    let mut entries: Vec<&IstioConfig<ServiceEntry>> = objects
        .iter()
        .filter_map(|o| match o {
            Object::ServiceEntry(se) => Some(se),
            _ => None,
        })
        .collect();
    entries.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let mut hosts: BTreeMap<String, String> = services
        .iter()
        .map(|s| (s.resource.hostname.clone(), display_service(&s.resource)))
        .collect();
    let mut used: BTreeMap<(IpAddr, u16), String> = BTreeMap::new();
    for s in services.iter() {
        for vip in &s.resource.vips {
            for p in &s.resource.ports {
                used.insert((*vip, p.port), s.resource.hostname.clone());
            }
        }
    }
    for se in entries {
        let object = display(se);
        for host in &se.spec.hosts {
            let host = host.to_ascii_lowercase();
            if let Some(other) = hosts.get(&host) {
                warnings.add(
                    &object,
                    format!("host {host} is already served by {other}: this host is left out"),
                );
                continue;
            }
            let mut svc = service(se, &host, workloads, trust_domain, &object, warnings);
            svc.vips.retain(|vip| {
                let clash = svc
                    .ports
                    .iter()
                    .find_map(|p| used.get(&(*vip, p.port)).map(|o| (p.port, o.clone())));
                match clash {
                    Some((port, other)) => {
                        warnings.add(
                            &object,
                            format!("address {vip}:{port} is already used by {other}: left out"),
                        );
                        false
                    }
                    None => true,
                }
            });
            for vip in &svc.vips {
                for p in &svc.ports {
                    used.insert((*vip, p.port), host.clone());
                }
            }
            hosts.insert(host, object.clone());
            services.push(Scoped {
                namespace: se.metadata.namespace.clone(),
                export_to: ExportTo::parse(
                    se.spec.export_to.iter().map(String::as_str),
                    &se.metadata.namespace,
                ),
                workload_selector: None,
                resource: svc,
            });
        }
    }
    services.sort_by(|a, b| a.resource.hostname.cmp(&b.resource.hostname));
}

/// The Service of one host of `se`.
fn service(
    se: &IstioConfig<ServiceEntry>,
    host: &str,
    workloads: &[xds::Workload],
    trust_domain: &str,
    object: &str,
    warnings: &mut Warnings,
) -> xds::Service {
    let spec = &se.spec;
    let ns = &se.metadata.namespace;
    let mesh_external = spec.location.unwrap_or(Location::MeshExternal) == Location::MeshExternal;
    let resolution = match spec.resolution.unwrap_or(Resolution::None) {
        Resolution::None => xds::Resolution::None,
        Resolution::Static => xds::Resolution::Static,
        Resolution::Dns => xds::Resolution::Dns,
        Resolution::DnsRoundRobin => xds::Resolution::DnsRoundRobin,
    };
    let mut vips = Vec::new();
    for (i, a) in spec.addresses.iter().enumerate() {
        match single_address(a) {
            Some(ip) => vips.push(ip),
            None => warnings.add(
                object,
                format!(
                    "spec.addresses[{i}]: {a}: a CIDR range of more than one address is not \
                     implemented by Ama (routing by destination subnet); left out"
                ),
            ),
        }
    }
    let mut ports = Vec::new();
    let mut by_name: BTreeMap<&str, u16> = BTreeMap::new();
    for p in &spec.ports {
        let (Ok(port), target) = (u16::try_from(p.number), u16::try_from(p.target_port)) else {
            continue;
        };
        let protocol = xds::Protocol::from_name(&p.protocol);
        if p.protocol.eq_ignore_ascii_case("UDP") {
            warnings.add(
                object,
                format!("port {port}: UDP is not implemented by Ama; the port is left out"),
            );
            continue;
        }
        by_name.insert(p.name.as_str(), port);
        ports.push(xds::ServicePort {
            name: Some(p.name.clone()).filter(|n| !n.is_empty()),
            port,
            target_port: target.ok().filter(|t| *t != 0),
            protocol,
            app_protocol: None,
        });
    }
    let endpoint_ports = |named: &BTreeMap<String, u32>| -> BTreeMap<u16, u16> {
        named
            .iter()
            .filter_map(|(name, n)| Some((*by_name.get(name.as_str())?, u16::try_from(*n).ok()?)))
            .collect()
    };
    // Istio mTLS to MESH_INTERNAL endpoints verifies the SANs the ServiceEntry names; the
    // proxy checks one SPIFFE id per endpoint, so a single SPIFFE SAN is used as such.
    let mesh_identity = match spec.subject_alt_names.as_slice() {
        [one] if !mesh_external && one.starts_with("spiffe://") => Some(one.clone()),
        [] => None,
        _ if !mesh_external => {
            warnings.add(
                object,
                "spec.subjectAltNames: Ama's mTLS checks one SPIFFE id per endpoint; only a \
                 single spiffe:// name is used for Istio mTLS (TLS origination uses them all)",
            );
            None
        }
        _ => None,
    };
    let mut endpoints = Vec::new();
    let mut dns_endpoints = Vec::new();
    for e in &spec.endpoints {
        if e.address.starts_with("unix://") {
            warnings.add(
                object,
                format!(
                    "endpoint {}: unix socket endpoints are not implemented by Ama; left out",
                    e.address
                ),
            );
            continue;
        }
        match e.address.parse::<IpAddr>() {
            Ok(address) => {
                let takes_mtls = !mesh_external
                    && e.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some("istio");
                endpoints.push(xds::Endpoint {
                    address,
                    ports: endpoint_ports(&e.ports),
                    workload_uid: None,
                    labels: e.labels.clone(),
                    tls_mode: if takes_mtls {
                        xds::TlsMode::Istio
                    } else {
                        xds::TlsMode::Disabled
                    },
                    identity: (!e.service_account.is_empty())
                        .then(|| {
                            format!("spiffe://{trust_domain}/ns/{ns}/sa/{}", e.service_account)
                        })
                        .or_else(|| mesh_identity.clone()),
                    plaintext_ports: BTreeSet::new(),
                });
            }
            Err(_) if resolution.is_dns() => dns_endpoints.push(xds::DnsEndpoint {
                hostname: e.address.to_ascii_lowercase(),
                ports: endpoint_ports(&e.ports),
                labels: e.labels.clone(),
            }),
            // api validation refuses names under STATIC; NONE has no use for endpoints.
            Err(_) => {}
        }
    }
    if resolution.is_dns() && spec.endpoints.is_empty() && !host.starts_with('*') {
        dns_endpoints.push(xds::DnsEndpoint {
            hostname: host.to_string(),
            ports: BTreeMap::new(),
            labels: BTreeMap::new(),
        });
    }
    if let Some(sel) = &spec.workload_selector {
        for w in workloads
            .iter()
            .filter(|w| w.namespace == *ns && selector_matches(&sel.labels, &w.labels))
        {
            let Some(address) = w.addresses.first() else {
                continue;
            };
            let mut ep_ports = BTreeMap::new();
            for sp in &ports {
                if let Some(wp) = w
                    .ports
                    .iter()
                    .find(|wp| wp.name.is_some() && wp.name == sp.name)
                {
                    ep_ports.insert(sp.port, wp.port);
                }
            }
            endpoints.push(xds::Endpoint {
                address: *address,
                ports: ep_ports,
                workload_uid: Some(w.uid.clone()),
                labels: w.labels.clone(),
                // MESH_EXTERNAL: no Istio mTLS, whatever the workload.
                tls_mode: if mesh_external {
                    xds::TlsMode::Disabled
                } else {
                    w.tls_mode
                },
                identity: w.identity.clone(),
                plaintext_ports: BTreeSet::new(),
            });
        }
    }
    xds::Service {
        hostname: host.to_string(),
        name: host.to_string(),
        namespace: ns.clone(),
        vips,
        ports,
        endpoints,
        lb_policy: xds::LbPolicy::default(),
        mesh_external,
        resolution,
        dns_endpoints,
        subject_alt_names: spec.subject_alt_names.clone(),
    }
}

/// An address, or a CIDR of a single address (`/32`, `/128`).
fn single_address(a: &str) -> Option<IpAddr> {
    match a.split_once('/') {
        None => a.parse().ok(),
        Some((ip, len)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let full = if ip.is_ipv4() { "32" } else { "128" };
            (len == full).then_some(ip)
        }
    }
}

fn display(se: &IstioConfig<ServiceEntry>) -> String {
    format!(
        "ServiceEntry {}/{}",
        se.metadata.namespace, se.metadata.name
    )
}

fn display_service(s: &xds::Service) -> String {
    if s.is_service_entry() {
        format!("a ServiceEntry of {}", s.namespace)
    } else {
        format!("Service {}/{}", s.namespace, s.name)
    }
}
