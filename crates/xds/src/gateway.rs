//! `GatewayListener`: what a gateway proxy (`ama proxy router`) serves on one port, translated
//! from the Istio Gateways that select its pod and the VirtualServices bound to them.
//!
//! A gateway listens on each server's port number (in Istio, the container port the gateway
//! Service's `targetPort` names). The servers of one port share its protocol family: plain
//! HTTP (`HTTP`, `HTTP2`, `GRPC`), TLS terminated then HTTP (`HTTPS` with a TLS mode other than
//! `PASSTHROUGH`), or TLS passed through by SNI (`TLS`, or `HTTPS` with `PASSTHROUGH`) or `TCP`.
//! The certificate, key and CA of a terminating server are carried inline, as PEM, read from
//! the Secret its `credentialName` names (or the files it names): the control plane sends them
//! only to the gateway pods whose Gateways use them, and [`ServerCredential`]'s `Debug`
//! prints no key.
//!
//! The routes of a server are the VirtualServices bound to its Gateway, each with the hosts it
//! shares with the server (`HttpRoutes.hosts`, wildcards kept: `*.example.com`, `*`). The
//! proxy picks, by the request's `Host` (or the connection's SNI for `tls` routes), the most
//! specific host among the routes of the servers of the port.

use serde::{Deserialize, Serialize};

use crate::routes::HttpRoutes;
use crate::validate::{ValidationErrors, check_port};

/// What a gateway serves on one port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayListener {
    /// The port the gateway binds on every address (`0.0.0.0:<port>`).
    pub port: u16,
    /// The servers' `port.number` when the gateway listens on another port for it: the target
    /// port of the Service in front of the pod (Istio's ingress gateway: 80 → 8080). Routes'
    /// `match.port` compare with this number, as pilot's do; none: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_port: Option<u16>,
    /// The servers of every Gateway selecting the pod that use this port.
    pub servers: Vec<GatewayServer>,
}

/// A Gateway server's port protocol (Istio's `Port.protocol` for Gateways).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GatewayProtocol {
    /// HTTP/1.1 (and HTTP/2 prior knowledge).
    Http,
    /// HTTP over TLS.
    Https,
    /// HTTP/2.
    Http2,
    /// gRPC.
    Grpc,
    /// TLS routed by SNI.
    Tls,
    /// Opaque TCP.
    Tcp,
}

impl GatewayProtocol {
    /// Whether requests on the port are HTTP once any TLS is terminated.
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Https | Self::Http2 | Self::Grpc)
    }
}

/// One server of one Gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayServer {
    /// The Gateway (`namespace/name`).
    pub gateway: String,
    /// The server's index in the Gateway's `spec.servers`, for messages.
    #[serde(default)]
    pub index: usize,
    /// The port's name, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// The port's protocol.
    pub protocol: GatewayProtocol,
    /// The hosts served, as written without their `namespace/` part (`*`, `*.example.com`,
    /// `httpbin.example.com`).
    pub hosts: Vec<String>,
    /// TLS; none: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
    /// The VirtualServices bound to this server, each with the hosts it shares with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<HttpRoutes>,
}

/// How a server takes TLS (Istio's `ServerTLSSettings.TLSmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward the TLS connection as it is, routed by SNI.
    Passthrough,
    /// Terminate with the server's certificate.
    Simple,
    /// Terminate; require a client certificate the CA verifies.
    Mutual,
    /// Terminate; verify a client certificate when one is sent.
    OptionalMutual,
    /// Terminate with the gateway's workload certificate; require a mesh client certificate.
    IstioMutual,
}

/// A server's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTls {
    /// The mode.
    pub mode: ServerTlsMode,
    /// Answer plain HTTP with `301` to `https` (on an HTTP server).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// Lowest TLS version served (none: TLS 1.2, Istio's default for gateways).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TlsVersion>,
    /// Highest TLS version served (none: TLS 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<TlsVersion>,
    /// Certificate, key and client CA (SIMPLE, MUTUAL, OPTIONAL_MUTUAL). None for a terminating
    /// mode: the credential could not be had, and the server is not served (TLS handshakes
    /// fail, as Envoy's filter chain without a certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<ServerCredential>,
}

/// A TLS version a gateway server can be limited to (the proxy serves TLS 1.2 and 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

/// A server's certificate chain, key and client CA, as PEM.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerCredential {
    /// Where it came from (`Secret istio-system/httpbin-credential`, or a file), for messages.
    pub source: String,
    /// The certificate chain, PEM, leaf first.
    pub cert_chain: String,
    /// The private key, PEM.
    pub private_key: String,
    /// CA certificates that verify client certificates (MUTUAL, OPTIONAL_MUTUAL), PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

impl std::fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCredential")
            .field("source", &self.source)
            .field(
                "cert_chain",
                &format_args!("<{} bytes>", self.cert_chain.len()),
            )
            .field("private_key", &format_args!("<redacted>"))
            .field(
                "ca_certificates",
                &self
                    .ca_certificates
                    .as_ref()
                    .map(|c| format!("<{} bytes>", c.len())),
            )
            .finish()
    }
}

impl GatewayListener {
    /// Replaces every private key with `[redacted]` (for config dumps).
    pub fn redact_keys(&mut self) {
        for s in &mut self.servers {
            if let Some(c) = s.tls.as_mut().and_then(|t| t.credential.as_mut()) {
                c.private_key = "[redacted]".to_string();
            }
        }
    }

    /// Checks the listener at `path`: a port, servers of one protocol family, TLS where the
    /// protocol needs it, routes valid.
    pub(crate) fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        check_port(errs, &format!("{path}.port"), self.port);
        if self.servers.is_empty() {
            errs.push(format!("{path}.servers"), "must not be empty");
        }
        let family = |s: &GatewayServer| s.family();
        if let Some(first) = self.servers.first().map(family) {
            for (i, s) in self.servers.iter().enumerate() {
                if family(s) != first {
                    errs.push(
                        format!("{path}.servers[{i}].protocol"),
                        format!(
                            "{:?} cannot share port {} with {:?}",
                            s.protocol, self.port, self.servers[0].protocol
                        ),
                    );
                }
            }
        }
        for (i, s) in self.servers.iter().enumerate() {
            s.validate(&format!("{path}.servers[{i}]"), errs);
        }
    }
}

/// How a port's connections are taken: every server of a port must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerFamily {
    /// Plain HTTP.
    Http,
    /// TLS terminated, then HTTP.
    TerminatedHttps,
    /// TLS passed through by SNI.
    Passthrough,
    /// Opaque TCP.
    Tcp,
}

impl GatewayServer {
    /// How this server takes connections.
    pub fn family(&self) -> ListenerFamily {
        let passthrough = self
            .tls
            .as_ref()
            .is_some_and(|t| t.mode == ServerTlsMode::Passthrough);
        match self.protocol {
            GatewayProtocol::Tcp => ListenerFamily::Tcp,
            GatewayProtocol::Tls => ListenerFamily::Passthrough,
            _ if passthrough => ListenerFamily::Passthrough,
            GatewayProtocol::Https => ListenerFamily::TerminatedHttps,
            // On an HTTP port, `tls` is only `httpsRedirect`.
            _ => ListenerFamily::Http,
        }
    }

    fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        if self.hosts.is_empty() {
            errs.push(format!("{path}.hosts"), "must not be empty");
        }
        match (&self.protocol, &self.tls) {
            (GatewayProtocol::Https | GatewayProtocol::Tls, None) => errs.push(
                format!("{path}.tls"),
                format!("required for protocol {:?}", self.protocol),
            ),
            (_, Some(t)) => {
                if matches!(
                    t.mode,
                    ServerTlsMode::Passthrough | ServerTlsMode::IstioMutual
                ) && t.credential.is_some()
                {
                    errs.push(
                        format!("{path}.tls.credential"),
                        format!("{:?} takes no credential", t.mode),
                    );
                }
                if let (Some(min), Some(max)) = (t.min_protocol_version, t.max_protocol_version)
                    && min > max
                {
                    errs.push(
                        format!("{path}.tls.maxProtocolVersion"),
                        "must not be lower than minProtocolVersion",
                    );
                }
                if let Some(c) = &t.credential {
                    if !c.cert_chain.contains("-----BEGIN") {
                        errs.push(
                            format!("{path}.tls.credential.certChain"),
                            "must be PEM certificates",
                        );
                    }
                    if !c.private_key.contains("-----BEGIN") {
                        errs.push(
                            format!("{path}.tls.credential.privateKey"),
                            "must be a PEM private key",
                        );
                    }
                }
            }
            _ => {}
        }
        for (i, r) in self.routes.iter().enumerate() {
            r.validate(&format!("{path}.routes[{i}]"), errs);
        }
    }
}

/// Whether `host` (lower case, no port) is covered by the gateway or VirtualService host
/// `pattern`: equal, `*`, or `*.suffix` with at least one label before the suffix.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => host.len() > suffix.len() && ends_with_ignore_case(host, suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// How specific a host pattern is, for ordering (Envoy's virtual-host selection): an exact
/// name before any wildcard, a longer wildcard suffix before a shorter, `*` last.
pub fn host_specificity(pattern: &str) -> (bool, usize) {
    match pattern.strip_prefix('*') {
        Some(suffix) => (false, suffix.len()),
        None => (true, pattern.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(protocol: GatewayProtocol, tls: Option<ServerTls>) -> GatewayServer {
        GatewayServer {
            gateway: "istio-system/gw".into(),
            index: 0,
            port_name: None,
            protocol,
            hosts: vec!["*".into()],
            tls,
            routes: Vec::new(),
        }
    }

    #[test]
    fn hosts_match_as_envoy_domains() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.example.com", "httpbin.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("HttpBin.example.com", "httpbin.example.com"));
        assert!(!host_matches("httpbin.example.com", "other.example.com"));
        assert!(host_specificity("a.example.com") > host_specificity("*.example.com"));
        assert!(host_specificity("*.example.com") > host_specificity("*.com"));
        assert!(host_specificity("*.com") > host_specificity("*"));
    }

    #[test]
    fn credential_debug_redacts_the_key() {
        let c = ServerCredential {
            source: "Secret istio-system/cred".into(),
            cert_chain: "-----BEGIN CERTIFICATE-----".into(),
            private_key: "-----BEGIN PRIVATE KEY-----SECRETBYTES".into(),
            ca_certificates: None,
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("SECRETBYTES"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn a_port_is_one_listener() {
        let err = crate::ProxyResources::parse(
            r#"
gatewayListeners:
- {port: 8080, servers: [{gateway: istio-system/a, protocol: HTTP, hosts: ["*"]}]}
- {port: 8080, servers: [{gateway: istio-system/b, protocol: HTTP, hosts: ["*"]}]}
"#,
        )
        .expect_err("duplicate port")
        .to_string();
        assert_eq!(err, "-: gatewayListeners[1].port: duplicate port 8080");
    }

    #[test]
    fn validation_names_the_field() {
        let l = GatewayListener {
            port: 8443,
            server_port: None,
            servers: vec![
                server(GatewayProtocol::Https, None),
                server(GatewayProtocol::Http, None),
            ],
        };
        let mut errs = ValidationErrors::default();
        l.validate("gatewayListeners[0]", &mut errs);
        let text = errs.to_string();
        assert!(
            text.contains("gatewayListeners[0].servers[0].tls: required for protocol Https"),
            "{text}"
        );
        assert!(
            text.contains("gatewayListeners[0].servers[1].protocol: Http cannot share port 8443"),
            "{text}"
        );
    }
}
