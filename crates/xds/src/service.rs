//! `Service`: a hostname with VIPs, ports and the endpoints behind them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::validate::{ValidationErrors, check_dns_name, check_port};
use crate::workload::{Protocol, TlsMode};

/// How a client picks an endpoint (DestinationRule `loadBalancer.simple`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbPolicy {
    /// Each endpoint in turn.
    RoundRobin,
    /// Power of two choices: the less busy of two random endpoints (Istio's default).
    #[default]
    LeastRequest,
    /// Uniformly random.
    Random,
    /// To the address the client asked for, without balancing (`PASSTHROUGH`).
    Passthrough,
}

/// How the proxy finds a service's endpoints (ServiceEntry `resolution`; Kubernetes
/// Services are `CLIENT_SIDE_LB`, Istio's internal value for them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// The registry's endpoints (a Kubernetes Service): Envoy's EDS cluster.
    #[default]
    ClientSideLb,
    /// The listed endpoints, by IP (ServiceEntry `STATIC`).
    Static,
    /// The endpoints' (or the host's) names, resolved by the proxy, every address used
    /// (Envoy's `STRICT_DNS`).
    Dns,
    /// Resolved by the proxy, one address at a time (Envoy's `LOGICAL_DNS`).
    DnsRoundRobin,
    /// No endpoints: to the address the client dialled, as `PassthroughCluster` does but under
    /// the service's name and policies (Envoy's `ORIGINAL_DST`).
    None,
}

impl Resolution {
    /// Whether the proxy resolves host names for this service.
    pub fn is_dns(self) -> bool {
        matches!(self, Resolution::Dns | Resolution::DnsRoundRobin)
    }
}

/// A port of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port name (`http`); its prefix gives the protocol when none is declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The service (VIP) port.
    pub port: u16,
    /// The endpoints' port; the service port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// Declared protocol; `UNKNOWN` (default) means use `appProtocol`, the name, or detection.
    #[serde(default)]
    pub protocol: Protocol,
    /// Kubernetes `appProtocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// The protocol after Istio's rules.
    pub fn effective_protocol(&self) -> Protocol {
        Protocol::resolve(
            self.protocol,
            self.app_protocol.as_deref(),
            self.name.as_deref(),
        )
    }
}

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// The endpoint's address.
    pub address: IpAddr,
    /// Per service port, the port to connect to on this endpoint (service port → port). When a
    /// service port is missing here, its `targetPort` applies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, u16>,
    /// The workload behind this endpoint, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_uid: Option<String>,
    /// The workload's labels (for subsets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Whether the endpoint takes Istio mTLS (auto mTLS uses this).
    #[serde(default)]
    pub tls_mode: TlsMode,
    /// The endpoint's SPIFFE identity, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Service ports on which this endpoint takes plaintext although its `tls_mode` is Istio:
    /// its PeerAuthentication is DISABLE on the workload port they reach (a `portLevelMtls`
    /// exception). Auto mTLS sends plaintext there, as Istio's EDS marks the endpoint of that
    /// port's cluster.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub plaintext_ports: BTreeSet<u16>,
}

/// An endpoint given by host name (ServiceEntry `resolution: DNS` or `DNS_ROUND_ROBIN`): the
/// proxy resolves it off the request path, refreshes it, and keeps the last good answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsEndpoint {
    /// The name to resolve (`httpbin.org`, `localhost`).
    pub hostname: String,
    /// Per service port, the port to connect to (as [`Endpoint::ports`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, u16>,
    /// Its labels (for subsets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A service: hostname, VIPs, ports and endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Fully qualified hostname (`httpbin-service.default.svc.cluster.local`).
    pub hostname: String,
    /// Short name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Cluster IPs.
    #[serde(default)]
    pub vips: Vec<IpAddr>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Load-balancing policy (a TrafficPolicy for the host overrides it).
    #[serde(default)]
    pub lb_policy: LbPolicy,
    // ServiceEntry (issue 16): every field below is additive and defaults to what a
    // Kubernetes Service is.
    /// Outside the mesh (ServiceEntry `MESH_EXTERNAL`): its endpoints never get Istio mTLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mesh_external: bool,
    /// How the endpoints are found.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resolution: Resolution,
    /// Endpoints by host name, resolved by the proxy (`resolution` `DNS`/`DNS_ROUND_ROBIN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_endpoints: Vec<DnsEndpoint>,
    /// Names the endpoints' certificates must carry (ServiceEntry `subjectAltNames`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Service {
    /// The declared port `port`, if any.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// The port to dial on `ep` for service port `sp`.
    pub fn endpoint_port(&self, ep: &Endpoint, sp: &ServicePort) -> u16 {
        ep.ports
            .get(&sp.port)
            .copied()
            .or(sp.target_port)
            .unwrap_or(sp.port)
    }

    /// Whether the service came from a ServiceEntry rather than a Kubernetes Service: its host
    /// is known only as written (no `name.namespace` short forms) and may be a wildcard.
    pub fn is_service_entry(&self) -> bool {
        self.resolution != Resolution::ClientSideLb || self.mesh_external
    }

    /// For a wildcard host (`*.wikipedia.org`), the suffix it matches (`.wikipedia.org`).
    pub fn wildcard_suffix(&self) -> Option<&str> {
        self.hostname.strip_prefix('*')
    }

    pub(crate) fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        // A ServiceEntry's host may be a wildcard (`*.wikipedia.org`); its name is the host.
        let check_host = |errs: &mut ValidationErrors, at: String, h: &str| match h
            .strip_prefix("*.")
            .filter(|_| self.is_service_entry())
        {
            Some(rest) => check_dns_name(errs, &at, rest),
            None => check_dns_name(errs, &at, h),
        };
        check_host(errs, format!("{path}.hostname"), &self.hostname);
        check_host(errs, format!("{path}.name"), &self.name);
        check_dns_name(errs, &format!("{path}.namespace"), &self.namespace);
        for (i, p) in self.ports.iter().enumerate() {
            let pp = format!("{path}.ports[{i}]");
            check_port(errs, &format!("{pp}.port"), p.port);
            if let Some(t) = p.target_port {
                check_port(errs, &format!("{pp}.targetPort"), t);
            }
            if self.ports[..i].iter().any(|q| q.port == p.port) {
                errs.push(format!("{pp}.port"), format!("duplicate port {}", p.port));
            }
        }
        if !self.dns_endpoints.is_empty() && !self.resolution.is_dns() {
            errs.push(
                format!("{path}.dnsEndpoints"),
                "only a service of resolution DNS or DNS_ROUND_ROBIN has endpoints by name",
            );
        }
        if self.resolution.is_dns()
            && self.wildcard_suffix().is_some()
            && self.dns_endpoints.is_empty()
        {
            errs.push(
                format!("{path}.hostname"),
                "a wildcard host cannot be resolved: DNS resolution needs dnsEndpoints",
            );
        }
        let named = self.dns_endpoints.iter().map(|e| &e.ports);
        let lists = [
            (
                "endpoints",
                self.endpoints.iter().map(|e| &e.ports).collect::<Vec<_>>(),
            ),
            ("dnsEndpoints", named.collect()),
        ];
        for (list, all) in lists {
            for (i, ports) in all.into_iter().enumerate() {
                for (sp, tp) in ports {
                    let pp = format!("{path}.{list}[{i}].ports[{sp}]");
                    check_port(errs, &pp, *tp);
                    if self.port(*sp).is_none() {
                        errs.push(pp, "is not a port of the service");
                    }
                }
            }
        }
        for (i, ep) in self.dns_endpoints.iter().enumerate() {
            check_dns_name(
                errs,
                &format!("{path}.dnsEndpoints[{i}].hostname"),
                &ep.hostname,
            );
        }
    }
}
