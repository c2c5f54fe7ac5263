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

/// A port of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A service: hostname, VIPs, ports and endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

    pub(crate) fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        check_dns_name(errs, &format!("{path}.hostname"), &self.hostname);
        check_dns_name(errs, &format!("{path}.name"), &self.name);
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
        for (i, ep) in self.endpoints.iter().enumerate() {
            for (sp, tp) in &ep.ports {
                let pp = format!("{path}.endpoints[{i}].ports[{sp}]");
                check_port(errs, &pp, *tp);
                if self.port(*sp).is_none() {
                    errs.push(pp, "is not a port of the service");
                }
            }
        }
    }
}
