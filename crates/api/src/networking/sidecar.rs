//! Sidecar: what a proxy listens for and which services it can reach (Istio's
//! `sidecar.proto`).

use serde::Deserialize;

use super::{Destination, NetworkingWorkloadSelector, Port};
use crate::check::{Problems, namespaced_host};

/// The spec of a Sidecar.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    /// Workloads it applies to (the whole namespace when unset).
    pub workload_selector: Option<NetworkingWorkloadSelector>,
    /// Inbound listeners.
    pub ingress: Vec<IstioIngressListener>,
    /// Outbound listeners: which services are visible.
    pub egress: Vec<IstioEgressListener>,
    /// Connection pool of inbound connections, passed through.
    pub inbound_connection_pool: Option<serde_json::Value>,
    /// What happens to traffic for unknown destinations.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// An inbound listener.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    /// The port. Required.
    pub port: Option<Port>,
    /// Address to bind.
    pub bind: String,
    /// How traffic reaches the listener.
    pub capture_mode: Option<CaptureMode>,
    /// Where to forward: `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT` or `unix://…`.
    pub default_endpoint: String,
    /// TLS of the listener, passed through.
    pub tls: Option<serde_json::Value>,
    /// Connection pool, passed through.
    pub connection_pool: Option<serde_json::Value>,
}

/// An outbound listener.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    /// The port (all ports when unset).
    pub port: Option<Port>,
    /// Address to bind.
    pub bind: String,
    /// How traffic reaches the listener.
    pub capture_mode: Option<CaptureMode>,
    /// Visible services, `namespace/host`. At least one.
    pub hosts: Vec<String>,
}

/// How traffic reaches a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// The pod's capture mode.
    Default,
    /// Captured by iptables.
    Iptables,
    /// Not captured: the app connects explicitly.
    None,
}

/// What happens to traffic for destinations the registry does not know.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// Allow it or block it.
    pub mode: Option<OutboundMode>,
    /// Send it through this proxy instead.
    pub egress_proxy: Option<Destination>,
}

/// The outbound traffic modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Only registry services are reachable.
    RegistryOnly,
    /// Unknown destinations pass through.
    AllowAny,
}

impl Sidecar {
    /// Checks the spec (at path `at`, normally `spec`), as Istio's validation does.
    pub fn validate(&self, at: &str, p: &mut Problems) {
        if let Some(ws) = &self.workload_selector {
            p.selector_labels(&format!("{at}.workloadSelector.labels"), &ws.labels);
        }
        if self.egress.is_empty()
            && self.ingress.is_empty()
            && self.outbound_traffic_policy.is_none()
        {
            p.add(at, "needs egress, ingress or outboundTrafficPolicy");
        }
        for (i, l) in self.ingress.iter().enumerate() {
            let at = format!("{at}.ingress[{i}]");
            match &l.port {
                None => p.add(
                    format!("{at}.port"),
                    "missing: an ingress listener needs a port",
                ),
                Some(port) => port.validate(&format!("{at}.port"), p, true),
            }
            if !l.default_endpoint.is_empty()
                && let Err(m) = default_endpoint(&l.default_endpoint)
            {
                p.add(format!("{at}.defaultEndpoint"), m);
            }
        }
        let mut catch_all = 0;
        for (i, l) in self.egress.iter().enumerate() {
            let at = format!("{at}.egress[{i}]");
            match &l.port {
                None => catch_all += 1,
                Some(port) => port.validate(&format!("{at}.port"), p, false),
            }
            if l.hosts.is_empty() {
                p.add(
                    format!("{at}.hosts"),
                    "missing: an egress listener needs hosts",
                );
            }
            for (j, h) in l.hosts.iter().enumerate() {
                if let Err(m) = namespaced_host(h) {
                    p.add(format!("{at}.hosts[{j}]"), m);
                }
            }
        }
        if catch_all > 1 {
            p.add(
                format!("{at}.egress"),
                "only one egress listener may omit its port",
            );
        }
        if let Some(policy) = &self.outbound_traffic_policy
            && let Some(proxy) = &policy.egress_proxy
        {
            proxy.validate(&format!("{at}.outboundTrafficPolicy.egressProxy"), p);
        }
    }
}

/// `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`, `[::]:PORT` or `unix://path`.
fn default_endpoint(s: &str) -> Result<(), String> {
    if s.starts_with("unix://") && s.len() > "unix://".len() {
        return Ok(());
    }
    let bad = || {
        format!(
            "\"{s}\" is not a default endpoint (127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, \
             [::]:PORT or unix://path)"
        )
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if !matches!(host, "127.0.0.1" | "0.0.0.0" | "[::1]" | "[::]") {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad()),
    }
}
