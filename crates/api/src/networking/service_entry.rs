//! ServiceEntry: a service the registry does not have, such as an external API (Istio's
//! `service_entry.proto`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Deserialize;

use super::{NetworkingWorkloadSelector, Port};
use crate::check::{Problems, dns_name, ip_or_cidr};

/// The spec of a ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// Host names of the service. At least one.
    pub hosts: Vec<String>,
    /// Virtual addresses (IPs or CIDR ranges).
    pub addresses: Vec<String>,
    /// Its ports.
    pub ports: Vec<Port>,
    /// Inside or outside the mesh.
    pub location: Option<Location>,
    /// How endpoints are found. Required in Istio's sense: NONE when unset.
    pub resolution: Option<Resolution>,
    /// Its endpoints (STATIC and DNS).
    pub endpoints: Vec<WorkloadEntry>,
    /// Workloads that are its endpoints (MESH_INTERNAL).
    pub workload_selector: Option<NetworkingWorkloadSelector>,
    /// Namespaces that see it.
    pub export_to: Vec<String>,
    /// Names the endpoints' certificates must have.
    pub subject_alt_names: Vec<String>,
}

/// Where the service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh: no mTLS, no mesh identity.
    MeshExternal,
    /// Part of the mesh.
    MeshInternal,
}

/// How the proxy finds the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the original destination address.
    None,
    /// The endpoints listed.
    Static,
    /// Resolve the endpoints (or the hosts) with DNS, using every address.
    Dns,
    /// Resolve with DNS, using the first address.
    DnsRoundRobin,
}

/// An endpoint of a ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// An IP, a host name (DNS) or `unix://` socket.
    pub address: String,
    /// Port numbers by service port name, when they differ from the service's.
    pub ports: BTreeMap<String, u32>,
    /// Its labels, for subsets.
    pub labels: BTreeMap<String, String>,
    /// Its network.
    pub network: String,
    /// Its locality (`region/zone/subzone`).
    pub locality: String,
    /// Its weight in balancing.
    pub weight: u32,
    /// Its service account (its identity in the mesh).
    pub service_account: String,
}

impl ServiceEntry {
    /// Checks the spec (at path `at`, normally `spec`), as Istio's validation does.
    pub fn validate(&self, at: &str, p: &mut Problems) {
        if self.hosts.is_empty() {
            p.add(
                format!("{at}.hosts"),
                "missing: a ServiceEntry needs at least one host",
            );
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if h == "*" {
                p.add(
                    format!("{at}.hosts[{i}]"),
                    "\"*\" is not allowed in a ServiceEntry",
                );
            } else {
                p.host(format!("{at}.hosts[{i}]"), h);
            }
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if let Err(m) = ip_or_cidr(a) {
                p.add(format!("{at}.addresses[{i}]"), m);
            }
        }
        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            let at = format!("{at}.ports[{i}]");
            port.validate(&at, p, true);
            if port.name.is_empty() {
                p.add(format!("{at}.name"), "missing: a port needs a name");
            } else if !names.insert(port.name.as_str()) {
                p.add(
                    format!("{at}.name"),
                    format!("\"{}\" names two ports", port.name),
                );
            }
            if !numbers.insert(port.number) {
                p.add(
                    format!("{at}.number"),
                    format!("port {} is listed twice", port.number),
                );
            }
        }
        let resolution = self.resolution.unwrap_or(Resolution::None);
        if resolution == Resolution::Static
            && self.endpoints.is_empty()
            && self.workload_selector.is_none()
        {
            p.add(
                format!("{at}.endpoints"),
                "missing: STATIC resolution needs endpoints or a workloadSelector",
            );
        }
        if self.workload_selector.is_some() && !self.endpoints.is_empty() {
            p.add(
                at,
                "endpoints and workloadSelector exclude each other: set one",
            );
        }
        if let Some(ws) = &self.workload_selector {
            p.selector_labels(&format!("{at}.workloadSelector.labels"), &ws.labels);
        }
        if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
            && self.endpoints.is_empty()
        {
            for (i, h) in self.hosts.iter().enumerate() {
                if h.starts_with("*.") {
                    p.add(
                        format!("{at}.hosts[{i}]"),
                        format!("\"{h}\": DNS resolution without endpoints needs hosts without wildcards"),
                    );
                }
            }
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let at = format!("{at}.endpoints[{i}]");
            if e.address.is_empty() {
                p.add(
                    format!("{at}.address"),
                    "missing: an endpoint needs an address",
                );
            } else if e.address.starts_with("unix://") {
                if !e.ports.is_empty() {
                    p.add(format!("{at}.ports"), "a unix socket endpoint has no ports");
                }
            } else if resolution == Resolution::Static {
                if e.address.parse::<IpAddr>().is_err() {
                    p.add(
                        format!("{at}.address"),
                        format!(
                            "\"{}\" is not an IP address: STATIC endpoints are IPs",
                            e.address
                        ),
                    );
                }
            } else if e.address.parse::<IpAddr>().is_err()
                && let Err(m) = dns_name(&e.address, true)
            {
                p.add(format!("{at}.address"), m);
            }
            for (name, number) in &e.ports {
                let at = format!("{at}.ports[\"{name}\"]");
                p.port(at.clone(), *number);
                if !names.contains(name.as_str()) {
                    p.add(
                        at,
                        format!("\"{name}\" is not the name of a port of this ServiceEntry"),
                    );
                }
            }
            p.selector_labels(&format!("{at}.labels"), &e.labels);
        }
    }
}
