//! Gateway: the ports, hosts and TLS of a load balancer at the edge of the mesh (Istio's
//! `gateway.proto`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::Port;
use crate::check::{Problems, namespaced_host, wildcard_host};

/// The spec of a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// What to listen on. At least one.
    pub servers: Vec<Server>,
    /// Labels of the gateway pods that apply this config.
    pub selector: BTreeMap<String, String>,
}

/// One listening port with its hosts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// The port. Required.
    pub port: Option<Port>,
    /// Address or Unix socket to bind.
    pub bind: String,
    /// Hosts served: `host` or `namespace/host` (the namespace of the VirtualServices allowed to
    /// bind). At least one.
    pub hosts: Vec<String>,
    /// TLS of the port.
    pub tls: Option<ServerTlsSettings>,
    /// Deprecated default endpoint.
    pub default_endpoint: String,
    /// A name for the server.
    pub name: String,
}

/// TLS of a gateway port.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Answer plain HTTP with a redirect to HTTPS.
    pub https_redirect: bool,
    /// The mode (PASSTHROUGH when unset).
    pub mode: Option<ServerTlsMode>,
    /// Certificate file.
    pub server_certificate: String,
    /// Key file.
    pub private_key: String,
    /// CA certificates for client certificates (MUTUAL).
    pub ca_certificates: String,
    /// Certificate revocation list file.
    pub ca_crl: String,
    /// Secret holding the certificate and key.
    pub credential_name: String,
    /// Several secrets (RSA and ECDSA).
    pub credential_names: Vec<String>,
    /// Several certificates given inline, passed through.
    pub tls_certificates: Vec<serde_json::Value>,
    /// Names allowed in client certificates.
    pub subject_alt_names: Vec<String>,
    /// SPKI hashes allowed for client certificates.
    pub verify_certificate_spki: Vec<String>,
    /// Certificate hashes allowed for client certificates.
    pub verify_certificate_hash: Vec<String>,
    /// Lowest TLS version.
    pub min_protocol_version: Option<TlsProtocol>,
    /// Highest TLS version.
    pub max_protocol_version: Option<TlsProtocol>,
    /// Cipher suites.
    pub cipher_suites: Vec<String>,
}

/// TLS modes of a gateway port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward TLS as is, routed by SNI.
    Passthrough,
    /// Terminate TLS.
    Simple,
    /// Terminate TLS and require client certificates.
    Mutual,
    /// Forward by SNI to mesh endpoints, without a VirtualService.
    AutoPassthrough,
    /// Terminate with the mesh's certificates.
    IstioMutual,
    /// Terminate; verify a client certificate when one is sent.
    OptionalMutual,
}

/// TLS protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum TlsProtocol {
    /// The proxy's default.
    #[serde(rename = "TLS_AUTO")]
    Auto,
    /// TLS 1.0.
    #[serde(rename = "TLSV1_0")]
    V1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSV1_1")]
    V1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

impl Gateway {
    /// Checks the spec (at path `at`, normally `spec`), as Istio's validation does.
    pub fn validate(&self, at: &str, p: &mut Problems) {
        if self.servers.is_empty() {
            p.add(
                format!("{at}.servers"),
                "missing: a Gateway needs at least one server",
            );
        }
        p.selector_labels(&format!("{at}.selector"), &self.selector);
        let mut names = BTreeSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let at = format!("{at}.servers[{i}]");
            let protocol = match &s.port {
                None => {
                    p.add(format!("{at}.port"), "missing: a server needs a port");
                    String::new()
                }
                Some(port) => {
                    port.validate(&format!("{at}.port"), p, true);
                    if !port.name.is_empty() && !names.insert(port.name.as_str()) {
                        p.add(
                            format!("{at}.port.name"),
                            format!("\"{}\" names two ports of this Gateway", port.name),
                        );
                    }
                    port.protocol.to_ascii_uppercase()
                }
            };
            if s.hosts.is_empty() {
                p.add(
                    format!("{at}.hosts"),
                    "missing: a server needs at least one host",
                );
            }
            for (j, h) in s.hosts.iter().enumerate() {
                let result = if h.contains('/') {
                    namespaced_host(h)
                } else {
                    wildcard_host(h)
                };
                if let Err(m) = result {
                    p.add(format!("{at}.hosts[{j}]"), m);
                }
            }
            let needs_tls = matches!(protocol.as_str(), "HTTPS" | "TLS");
            match &s.tls {
                None if needs_tls => p.add(
                    format!("{at}.tls"),
                    format!("missing: a {protocol} server needs TLS settings"),
                ),
                None => {}
                Some(tls) => tls.validate(&format!("{at}.tls"), p, needs_tls),
            }
        }
    }
}

impl ServerTlsSettings {
    fn validate(&self, at: &str, p: &mut Problems, terminating_port: bool) {
        let mode = self.mode.unwrap_or(ServerTlsMode::Passthrough);
        let has_credential = !self.credential_name.is_empty() || !self.credential_names.is_empty();
        if terminating_port
            && matches!(
                mode,
                ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
            )
            && !has_credential
            && self.tls_certificates.is_empty()
        {
            if self.server_certificate.is_empty() {
                p.add(
                    format!("{at}.serverCertificate"),
                    "missing: SIMPLE and MUTUAL need a certificate (or a credentialName)",
                );
            }
            if self.private_key.is_empty() {
                p.add(
                    format!("{at}.privateKey"),
                    "missing: SIMPLE and MUTUAL need a private key (or a credentialName)",
                );
            }
            if matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
                && self.ca_certificates.is_empty()
            {
                p.add(
                    format!("{at}.caCertificates"),
                    "missing: MUTUAL needs CA certificates to verify clients (or a credentialName)",
                );
            }
        }
        if !self.credential_name.is_empty() && !self.credential_names.is_empty() {
            p.add(
                at,
                "credentialName and credentialNames exclude each other: set one",
            );
        }
        if let (Some(min), Some(max)) = (self.min_protocol_version, self.max_protocol_version)
            && min != TlsProtocol::Auto
            && max != TlsProtocol::Auto
            && min > max
        {
            p.add(
                format!("{at}.minProtocolVersion"),
                "must not be above maxProtocolVersion",
            );
        }
    }
}
