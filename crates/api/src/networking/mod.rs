//! `networking.istio.io`: VirtualService, DestinationRule, Gateway, ServiceEntry and Sidecar.
//!
//! The types follow Istio's protos (`networking/v1alpha3/*.proto`, served unchanged as `v1`,
//! `v1beta1` and `v1alpha3`): field names are the protos' JSON names, enums are spelled as in
//! the protos, and a field Istio does not define is an error naming its path. Each spec has a
//! `validate` that applies the checks of Istio's validation webhook that can be made on one
//! object alone (ports, weights, percentages, durations, hosts, required fields, one-ofs).

pub mod destination_rule;
pub mod gateway;
pub mod service_entry;
pub mod sidecar;
pub mod virtual_service;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::check::Problems;

pub use destination_rule::DestinationRule;
pub use gateway::Gateway;
pub use service_entry::ServiceEntry;
pub use sidecar::Sidecar;
pub use virtual_service::VirtualService;

/// The API group of these kinds.
pub const GROUP: &str = "networking.istio.io";
/// The versions Istio serves for this group, newest first; all share one schema.
pub const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// Where traffic goes: a service host, optionally one of its subsets and ports.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// The service: a registry name (`reviews`, `reviews.default.svc.cluster.local`) or a
    /// ServiceEntry host. Required.
    pub host: String,
    /// A subset defined by a DestinationRule of the host.
    pub subset: String,
    /// The port, when the service has several.
    pub port: Option<PortSelector>,
}

impl Destination {
    pub(crate) fn validate(&self, at: &str, p: &mut Problems) {
        if self.host.is_empty() {
            p.add(format!("{at}.host"), "missing: a destination needs a host");
        } else if self.host.contains('*') {
            p.add(
                format!("{at}.host"),
                format!("\"{}\": a destination host cannot be a wildcard", self.host),
            );
        } else {
            p.host(format!("{at}.host"), &self.host);
        }
        if let Some(port) = &self.port {
            p.port(format!("{at}.port.number"), port.number);
        }
    }
}

/// A port of a destination, by number.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// The port number.
    pub number: u32,
}

/// A string match: exactly one of `exact`, `prefix` or `regex` (RE2 syntax).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    /// The whole value.
    pub exact: Option<String>,
    /// The start of the value.
    pub prefix: Option<String>,
    /// An RE2 regular expression the whole value must match.
    pub regex: Option<String>,
}

impl StringMatch {
    pub(crate) fn validate(&self, at: &str, p: &mut Problems) {
        let set = [&self.exact, &self.prefix, &self.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set != 1 {
            p.add(at, "must set exactly one of exact, prefix or regex");
        }
        match self.regex.as_deref() {
            Some("") => p.add(format!("{at}.regex"), "must not be empty"),
            Some(re) => p.regex(format!("{at}.regex"), re),
            None => {}
        }
    }

    /// As [`StringMatch::validate`], for a match on anything but the path: Envoy's string
    /// matchers refuse an empty prefix there (Istio's validation too).
    pub(crate) fn validate_value(&self, at: &str, p: &mut Problems) {
        self.validate(at, p);
        if self.prefix.as_deref() == Some("") {
            p.add(format!("{at}.prefix"), "must not be empty");
        }
    }
}

/// The workloads a config applies to, by their labels (all of them must match).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must carry.
    pub match_labels: BTreeMap<String, String>,
}

/// The workloads a ServiceEntry or Sidecar applies to (Istio's
/// `networking.v1alpha3.WorkloadSelector`, whose field is `labels`, where the other kinds'
/// `istio.type.v1beta1.WorkloadSelector` has `matchLabels`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkingWorkloadSelector {
    /// Labels a workload must carry.
    pub labels: BTreeMap<String, String>,
}

/// A percentage with decimals (`value: 0.5`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Percent {
    /// 0 to 100.
    pub value: f64,
}

/// A port a proxy listens on or a service exposes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// The port number. Required.
    pub number: u32,
    /// `HTTP`, `HTTPS`, `GRPC`, `GRPC-WEB`, `HTTP2`, `MONGO`, `TCP`, `TLS`, `UDP`.
    pub protocol: String,
    /// A name for the port.
    pub name: String,
    /// The port of the endpoints, when it differs.
    pub target_port: u32,
}

/// The protocols Istio knows for a port (case-insensitive, as in Istio).
pub const PROTOCOLS: [&str; 11] = [
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS", "UDP", "REDIS", "MYSQL",
];

impl Port {
    pub(crate) fn validate(&self, at: &str, p: &mut Problems, protocol_required: bool) {
        p.port(format!("{at}.number"), self.number);
        if self.target_port != 0 {
            p.port(format!("{at}.targetPort"), self.target_port);
        }
        if self.protocol.is_empty() {
            if protocol_required {
                p.add(format!("{at}.protocol"), "missing: a port needs a protocol");
            }
        } else if !PROTOCOLS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(&self.protocol))
        {
            p.add(
                format!("{at}.protocol"),
                format!(
                    "\"{}\" is not a protocol ({})",
                    self.protocol,
                    PROTOCOLS.join(", ")
                ),
            );
        }
    }
}

/// Checks that a duration is at least 1ms, as Istio requires of timeouts and intervals.
pub(crate) fn min_duration(p: &mut Problems, at: String, d: &Option<crate::Duration>) {
    if let Some(d) = d
        && d.get() < std::time::Duration::from_millis(1)
    {
        p.add(at, format!("{d} is too short: must be at least 1ms"));
    }
}
