//! `Workload`: one pod or VM of the mesh, and the port protocols it declares.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::validate::{ValidationErrors, check_dns_name, check_port};

/// Whether a workload's sidecar takes Istio mTLS (`security.istio.io/tlsMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// The workload has a sidecar that terminates Istio mTLS.
    #[default]
    Istio,
    /// Plaintext only (no sidecar, or opted out).
    Disabled,
}

/// The application protocol of a port, from Istio's rules: an explicit `protocol`, else
/// `appProtocol`, else the port name prefix before `-` (`http-web` → HTTP). Anything else is
/// `UNKNOWN`, which means "detect by peeking".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// HTTP/1.1 (or HTTP/2 by prior knowledge if the client speaks it).
    Http,
    /// HTTP/2.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// Opaque TCP: no detection, bytes are copied as they are.
    Tcp,
    /// TLS from the application (passed through, routed like TCP).
    Tls,
    /// Not declared: detect by peeking at the first bytes.
    #[default]
    Unknown,
}

impl Protocol {
    /// Istio's mapping from a port name (`grpc-api`) or `appProtocol` value to a protocol: the
    /// part before the first `-`, any case, except that a `grpc-web` prefix is gRPC-Web, which
    /// Istio carries as HTTP (HTTP/1.1 upstream), not as gRPC. Runs on every request's route
    /// lookup, so it does not allocate.
    pub fn from_name(name: &str) -> Protocol {
        let starts = |p: &str| {
            name.get(..p.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(p))
        };
        if starts("grpc-web") {
            return Protocol::Http;
        }
        let prefix = name.split('-').next().unwrap_or("");
        const NAMES: [(&str, Protocol); 11] = [
            ("http", Protocol::Http),
            ("http_proxy", Protocol::Http),
            ("http2", Protocol::Http2),
            ("kubernetes.io/h2c", Protocol::Http2),
            ("grpc", Protocol::Grpc),
            // Istio treats these as opaque TCP; MySQL is server-first, so it must not be peeked.
            ("tcp", Protocol::Tcp),
            ("mysql", Protocol::Tcp),
            ("mongo", Protocol::Tcp),
            ("redis", Protocol::Tcp),
            ("tls", Protocol::Tls),
            ("https", Protocol::Tls),
        ];
        NAMES
            .iter()
            .find(|(n, _)| prefix.eq_ignore_ascii_case(n))
            .map_or(Protocol::Unknown, |&(_, p)| p)
    }

    /// Resolves a declared port's protocol: explicit value, then appProtocol, then name.
    pub fn resolve(explicit: Protocol, app_protocol: Option<&str>, name: Option<&str>) -> Protocol {
        if explicit != Protocol::Unknown {
            return explicit;
        }
        if let Some(p) = app_protocol.map(Protocol::from_name_exact)
            && p != Protocol::Unknown
        {
            return p;
        }
        name.map(Protocol::from_name).unwrap_or(Protocol::Unknown)
    }

    /// `appProtocol` values are whole names, not prefixes.
    fn from_name_exact(name: &str) -> Protocol {
        if name.contains('-') && !name.eq_ignore_ascii_case("grpc-web") {
            Protocol::Unknown
        } else {
            Protocol::from_name(name)
        }
    }

    /// True for protocols carried by the HTTP proxy (HTTP/1, HTTP/2, gRPC).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// True for protocols whose upstream connection should be HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    /// True when the first bytes must not be waited for (opaque at once).
    pub fn is_opaque(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Tls)
    }
}

/// A port a workload listens on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadPort {
    /// Port name (`http-web`); its prefix gives the protocol when none is declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The container port.
    pub port: u16,
    /// Declared protocol; `UNKNOWN` (default) means use `appProtocol`, the name, or detection.
    #[serde(default)]
    pub protocol: Protocol,
    /// Kubernetes `appProtocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl WorkloadPort {
    /// The protocol after Istio's rules.
    pub fn effective_protocol(&self) -> Protocol {
        Protocol::resolve(
            self.protocol,
            self.app_protocol.as_deref(),
            self.name.as_deref(),
        )
    }
}

/// One pod (or VM) of the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Stable unique id (`Kubernetes//Pod/default/httpbin-xyz` in Istio's style).
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod addresses (one per family).
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Kubernetes service account.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// SPIFFE identity (`spiffe://cluster.local/ns/default/sa/default`); derived when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Ports the application listens on.
    #[serde(default)]
    pub ports: Vec<WorkloadPort>,
    /// Whether the workload takes Istio mTLS.
    #[serde(default)]
    pub tls_mode: TlsMode,
    /// `service.istio.io/canonical-name` (defaults to the `app` label, then the workload name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_name: Option<String>,
    /// `service.istio.io/canonical-revision` (defaults to the `version` label, then `latest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_revision: Option<String>,
    /// Owning workload (Deployment) name, as in the `source_workload` metric label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_name: Option<String>,
    /// Cluster id (`Kubernetes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

fn default_service_account() -> String {
    "default".to_string()
}

impl Workload {
    /// The SPIFFE identity, declared or derived from namespace and service account with the
    /// default trust domain.
    pub fn spiffe_identity(&self) -> String {
        match &self.identity {
            Some(id) => id.clone(),
            None => {
                let sa = if self.service_account.is_empty() {
                    "default"
                } else {
                    &self.service_account
                };
                format!("spiffe://cluster.local/ns/{}/sa/{sa}", self.namespace)
            }
        }
    }

    /// Canonical service name: declared, else the `app` label, else the workload name.
    pub fn canonical_name(&self) -> &str {
        self.canonical_name
            .as_deref()
            .or_else(|| {
                self.labels
                    .get("service.istio.io/canonical-name")
                    .map(String::as_str)
            })
            .or_else(|| {
                self.labels
                    .get("app.kubernetes.io/name")
                    .map(String::as_str)
            })
            .or_else(|| self.labels.get("app").map(String::as_str))
            .unwrap_or_else(|| self.workload_name())
    }

    /// Canonical revision: declared, else the `version` label, else `latest`.
    pub fn canonical_revision(&self) -> &str {
        self.canonical_revision
            .as_deref()
            .or_else(|| {
                self.labels
                    .get("service.istio.io/canonical-revision")
                    .map(String::as_str)
            })
            .or_else(|| {
                self.labels
                    .get("app.kubernetes.io/version")
                    .map(String::as_str)
            })
            .or_else(|| self.labels.get("version").map(String::as_str))
            .unwrap_or("latest")
    }

    /// The owning workload's name, else the pod name.
    pub fn workload_name(&self) -> &str {
        self.workload_name.as_deref().unwrap_or(&self.name)
    }

    /// The declared protocol of `port`, `UNKNOWN` when the port is not declared.
    pub fn port_protocol(&self, port: u16) -> Protocol {
        self.ports
            .iter()
            .find(|p| p.port == port)
            .map(WorkloadPort::effective_protocol)
            .unwrap_or(Protocol::Unknown)
    }

    pub(crate) fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        if self.uid.is_empty() {
            errs.push(format!("{path}.uid"), "must not be empty");
        }
        check_dns_name(errs, &format!("{path}.name"), &self.name);
        check_dns_name(errs, &format!("{path}.namespace"), &self.namespace);
        if let Some(id) = &self.identity
            && !id.starts_with("spiffe://")
        {
            errs.push(format!("{path}.identity"), "must be a spiffe:// URI");
        }
        for (i, p) in self.ports.iter().enumerate() {
            check_port(errs, &format!("{path}.ports[{i}].port"), p.port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_from_port_name_follows_istio() {
        assert_eq!(Protocol::from_name("http"), Protocol::Http);
        assert_eq!(Protocol::from_name("http-web"), Protocol::Http);
        assert_eq!(Protocol::from_name("http2-x"), Protocol::Http2);
        assert_eq!(Protocol::from_name("grpc"), Protocol::Grpc);
        assert_eq!(Protocol::from_name("mysql"), Protocol::Tcp);
        assert_eq!(Protocol::from_name("https"), Protocol::Tls);
        assert_eq!(Protocol::from_name("web"), Protocol::Unknown);
        assert_eq!(Protocol::from_name("GRPC-api"), Protocol::Grpc);
        assert_eq!(Protocol::from_name("Http"), Protocol::Http);
        assert_eq!(Protocol::from_name("kubernetes.io/h2c"), Protocol::Http2);
        // gRPC-Web is HTTP to Istio: its prefix is checked before the cut at the first `-`.
        assert_eq!(Protocol::from_name("grpc-web"), Protocol::Http);
        assert_eq!(Protocol::from_name("grpc-web-ui"), Protocol::Http);
        assert_eq!(Protocol::from_name("grpc-webhook"), Protocol::Http);
        assert_eq!(
            Protocol::resolve(Protocol::Unknown, Some("grpc-web"), Some("grpc")),
            Protocol::Http
        );
        assert_eq!(
            Protocol::resolve(Protocol::Unknown, Some("GRPC-Web"), Some("grpc")),
            Protocol::Http
        );
        assert_eq!(
            Protocol::resolve(Protocol::Unknown, Some("grpc-foo"), Some("grpc")),
            Protocol::Grpc
        );
        assert_eq!(
            Protocol::resolve(Protocol::Unknown, Some("grpc"), Some("tcp-x")),
            Protocol::Grpc
        );
        assert_eq!(
            Protocol::resolve(Protocol::Tcp, Some("grpc"), Some("http")),
            Protocol::Tcp
        );
    }

    #[test]
    fn identity_is_derived() {
        let w = Workload {
            namespace: "default".into(),
            ..Default::default()
        };
        assert_eq!(
            w.spiffe_identity(),
            "spiffe://cluster.local/ns/default/sa/default"
        );
    }
}
