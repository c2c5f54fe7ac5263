//! Gateway (networking.istio.io v1, v1beta1, v1alpha3) → the [`xds::GatewayListener`]s of the
//! gateway pods it selects, as pilot's gateway translation builds an ingress or egress
//! gateway's listeners.
//!
//! - A Gateway selects gateway pods by `selector` in any namespace (Istio's default
//!   `PILOT_SCOPE_GATEWAY_TO_NAMESPACE=false`); an empty selector selects every gateway pod, as
//!   pilot's (sidecars never receive Gateways).
//! - Each server listens on its port's `number` (the container port of the gateway pod: the
//!   gateway Service's `targetPort`). The servers of every Gateway selecting a pod are grouped
//!   by port; servers of one port must agree on how connections are taken, or the later ones
//!   (by Gateway name) are left out with a warning, as pilot drops conflicting servers.
//! - Server `hosts` are `host` or `namespace/host` (`./host`: the Gateway's namespace, `*/host`
//!   or no prefix: any): only VirtualServices of that namespace bind through that host.
//! - A VirtualService binds to a Gateway it names in `gateways` (`name` in its own namespace,
//!   `ns/name`), each match by its own `gateways` when it names some. Its hosts meet each
//!   server's hosts as pilot intersects them: the more specific of the two where one covers
//!   the other (`*.example.com` and `httpbin.example.com` give `httpbin.example.com`).
//! - TLS: SIMPLE, MUTUAL and OPTIONAL_MUTUAL take the certificate and key from the Secret
//!   `credentialName` in the gateway pod's namespace (`tls.crt`/`tls.key`/`ca.crt`, or
//!   `cert`/`key`/`cacert`); the client CA of MUTUAL from the same Secret's `ca.crt`/`cacert`,
//!   else from the Secret `<credentialName>-cacert`. A Secret that is missing leaves the
//!   server without a credential (the proxy does not serve it: TLS handshakes fail, as Envoy's
//!   filter chain without a certificate), with a warning naming the Gateway and the
//!   credentialName; a server naming certificate files instead is not served either (the
//!   control plane cannot read the gateway pod's files). ISTIO_MUTUAL uses the gateway's
//!   workload certificate; PASSTHROUGH forwards by SNI; AUTO_PASSTHROUGH is not implemented.

use std::collections::BTreeMap;

use api::networking::VirtualService;
use api::networking::gateway::{Gateway, Server, ServerTlsMode, TlsProtocol};
use api::objects::{IstioConfig, Object};

use super::routes::{Binding, virtual_service};
use super::secrets::Secrets;
use super::{Labels, Warnings, selector_matches};

/// One Gateway, translated; credentials are resolved per gateway pod namespace
/// ([`listeners_for`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// The Gateway's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Labels of the gateway pods it selects.
    pub selector: Labels,
    /// Its servers.
    pub servers: Vec<ServerConfig>,
}

/// One server of a Gateway, translated.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The port it listens on.
    pub port: u16,
    /// The server with its bound routes, its credential not yet resolved.
    pub server: xds::GatewayServer,
    /// The Secret its TLS names (`credentialName`).
    pub secret: Option<String>,
}

/// A server's credential, read from a Secret.
pub type Credentials = BTreeMap<(String, String), xds::ServerCredential>;

/// What gateways need from the objects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewaysOut {
    /// Every Gateway, by namespace and name.
    pub gateways: Vec<GatewayConfig>,
    /// The credentials of the Secrets that Gateways name, by namespace and Secret name
    /// (`<name>-cacert` Secrets folded into the one they complete).
    pub credentials: Credentials,
    /// The Secrets that DestinationRules without `workloadSelector` name by `credentialName`,
    /// by namespace and Secret name, in every namespace that has one: gateway proxies read
    /// them in their own namespace, as pilot's (sidecars never receive them).
    pub client_credentials: BTreeMap<(String, String), xds::ClientCredential>,
}

/// Translates every Gateway and the VirtualServices bound to it. `workloads` tells in which
/// namespaces each Gateway's pods run, to check that its Secrets are there.
pub(crate) fn build(
    objects: &[&Object],
    known: &[&str],
    workloads: &[xds::Workload],
    warnings: &mut Warnings,
) -> GatewaysOut {
    let mut gateways: Vec<&IstioConfig<Gateway>> = Vec::new();
    let mut vss: Vec<&IstioConfig<VirtualService>> = Vec::new();
    let secrets = Secrets::new(objects);
    for o in objects {
        match o {
            Object::Gateway(g) => gateways.push(g),
            Object::VirtualService(vs) => vss.push(vs),
            _ => {}
        }
    }
    gateways.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let mut out = GatewaysOut::default();
    for g in gateways {
        let object = format!("Gateway {}/{}", g.metadata.namespace, g.metadata.name);
        let config = gateway(g, &vss, known, &mut |m| warnings.add(object.clone(), m));
        // The namespaces its pods run in: where its Secrets must be. An empty selector selects
        // every gateway pod: its Secrets are read wherever they are.
        let pod_namespaces: std::collections::BTreeSet<&str> = workloads
            .iter()
            .filter(|w| selector_matches(&config.selector, &w.labels))
            .map(|w| w.namespace.as_str())
            .collect();
        for ServerConfig { server, secret, .. } in &config.servers {
            let Some(name) = secret else { continue };
            let mutual = server
                .tls
                .as_ref()
                .is_some_and(|t| t.mode == xds::ServerTlsMode::Mutual);
            let namespaces: Vec<&str> = if config.selector.is_empty() {
                let found = secrets.namespaces_with(name);
                if found.is_empty() {
                    warnings.add(
                        object.clone(),
                        format!(
                            "spec.servers[{}].tls.credentialName: {name}: no such Secret in any \
                             namespace; this server is not served",
                            server.index
                        ),
                    );
                }
                found
            } else {
                pod_namespaces.iter().copied().collect()
            };
            for ns in &namespaces {
                match credential(&secrets, ns, name, mutual) {
                    Ok(c) => {
                        out.credentials.insert((ns.to_string(), name.clone()), c);
                    }
                    Err(why) => warnings.add(
                        object.clone(),
                        format!(
                            "spec.servers[{}].tls.credentialName: {name}: {why} in namespace {ns}; \
                             this server is not served by the gateway pods there",
                            server.index
                        ),
                    ),
                }
            }
        }
        out.gateways.push(config);
    }
    out
}

/// One Gateway's servers with their routes.
fn gateway(
    g: &IstioConfig<Gateway>,
    vss: &[&IstioConfig<VirtualService>],
    known: &[&str],
    warn: &mut impl FnMut(String),
) -> GatewayConfig {
    let namespace = g.metadata.namespace.as_str();
    let name = g.metadata.name.as_str();
    let binding = Binding::Gateway { namespace, name };
    // The VirtualServices bound to it, translated once.
    let bound: Vec<xds::HttpRoutes> = vss
        .iter()
        .filter(|vs| binding.binds(&vs.spec.gateways, &vs.metadata.namespace))
        .filter_map(|vs| {
            let object = format!(
                "VirtualService {}/{}",
                vs.metadata.namespace, vs.metadata.name
            );
            let mut w = |m: String| warn(format!("{object}: {m}"));
            virtual_service(vs, known, binding, &mut w).map(|s| s.resource)
        })
        .collect();
    let mut servers = Vec::new();
    for (i, s) in g.spec.servers.iter().enumerate() {
        match server(s, i, namespace, name, &bound) {
            Ok(sc) => servers.push(sc),
            Err(why) => warn(format!(
                "spec.servers[{i}]: {why}; this server is not served"
            )),
        }
    }
    GatewayConfig {
        namespace: namespace.to_string(),
        name: name.to_string(),
        selector: g.spec.selector.clone(),
        servers,
    }
}

/// A server's hosts: (namespace the VirtualServices must be in, or any; host).
fn server_hosts<'a>(hosts: &'a [String], gateway_ns: &'a str) -> Vec<(Option<&'a str>, String)> {
    hosts
        .iter()
        .map(|h| match h.split_once('/') {
            Some(("*", host)) => (None, host.to_ascii_lowercase()),
            Some((".", host)) => (Some(gateway_ns), host.to_ascii_lowercase()),
            Some((ns, host)) => (Some(ns), host.to_ascii_lowercase()),
            None => (None, h.to_ascii_lowercase()),
        })
        .collect()
}

/// Where a VirtualService host and a server host meet: the more specific, if one covers the
/// other.
pub fn intersect(a: &str, b: &str) -> Option<String> {
    if xds::gateway::host_matches(a, b) {
        Some(b.to_string())
    } else if xds::gateway::host_matches(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

fn server(
    s: &Server,
    index: usize,
    gateway_ns: &str,
    gateway_name: &str,
    bound: &[xds::HttpRoutes],
) -> Result<ServerConfig, String> {
    let port = s.port.as_ref().ok_or("no port")?;
    let number = u16::try_from(port.number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port.number {} is not a port", port.number))?;
    let protocol = match port.protocol.to_ascii_uppercase().as_str() {
        "HTTP" => xds::GatewayProtocol::Http,
        "HTTPS" => xds::GatewayProtocol::Https,
        "HTTP2" => xds::GatewayProtocol::Http2,
        "GRPC" => xds::GatewayProtocol::Grpc,
        "TLS" => xds::GatewayProtocol::Tls,
        "TCP" => xds::GatewayProtocol::Tcp,
        other => return Err(format!("port.protocol {other}: not implemented by Ama")),
    };
    let mut secret = None;
    let tls = match &s.tls {
        None => None,
        Some(t) => {
            let mode = match t.mode {
                // An HTTP server's `tls` is its httpsRedirect; elsewhere no mode is PASSTHROUGH.
                None if protocol == xds::GatewayProtocol::Http => xds::ServerTlsMode::Simple,
                None | Some(ServerTlsMode::Passthrough) => xds::ServerTlsMode::Passthrough,
                Some(ServerTlsMode::Simple) => xds::ServerTlsMode::Simple,
                Some(ServerTlsMode::Mutual) => xds::ServerTlsMode::Mutual,
                Some(ServerTlsMode::OptionalMutual) => xds::ServerTlsMode::OptionalMutual,
                Some(ServerTlsMode::IstioMutual) => xds::ServerTlsMode::IstioMutual,
                Some(ServerTlsMode::AutoPassthrough) => {
                    return Err("tls.mode AUTO_PASSTHROUGH: not implemented by Ama".into());
                }
            };
            // Restrictions on which clients are accepted that Ama cannot apply: serving the
            // server without them would accept clients it must refuse.
            let unenforced = [
                ("subjectAltNames", !t.subject_alt_names.is_empty()),
                (
                    "verifyCertificateSpki",
                    !t.verify_certificate_spki.is_empty(),
                ),
                (
                    "verifyCertificateHash",
                    !t.verify_certificate_hash.is_empty(),
                ),
                ("caCrl", !t.ca_crl.is_empty()),
            ];
            if let Some((field, _)) = unenforced.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "tls.{field}: not implemented by Ama (served without it, the server would \
                     accept clients it must refuse)"
                ));
            }
            let terminates = matches!(
                mode,
                xds::ServerTlsMode::Simple
                    | xds::ServerTlsMode::Mutual
                    | xds::ServerTlsMode::OptionalMutual
            ) && protocol != xds::GatewayProtocol::Http;
            if terminates {
                if !t.credential_name.is_empty() {
                    secret = Some(t.credential_name.clone());
                } else if !t.server_certificate.is_empty() {
                    return Err(
                        "tls.serverCertificate: certificate files are not implemented by Ama \
                         (use credentialName)"
                            .into(),
                    );
                } else {
                    return Err("tls.credentialName: required for this mode".into());
                }
            }
            let (min_protocol_version, max_protocol_version) =
                tls_versions(t.min_protocol_version, t.max_protocol_version)?;
            Some(xds::ServerTls {
                mode,
                https_redirect: t.https_redirect,
                min_protocol_version,
                max_protocol_version,
                credential: None,
            })
        }
    };
    let hosts = server_hosts(&s.hosts, gateway_ns);
    let routes = bound
        .iter()
        .filter_map(|r| {
            let vs_ns = r.namespace.as_deref().unwrap_or("");
            let mut met: Vec<String> = r
                .hosts
                .iter()
                .flat_map(|vh| {
                    hosts
                        .iter()
                        .filter(|(ns, _)| ns.is_none_or(|ns| ns == vs_ns))
                        .filter_map(|(_, sh)| intersect(vh, sh))
                })
                .collect();
            met.sort();
            met.dedup();
            (!met.is_empty()).then(|| xds::HttpRoutes {
                hosts: met,
                ..r.clone()
            })
        })
        .collect();
    Ok(ServerConfig {
        port: number,
        server: xds::GatewayServer {
            gateway: format!("{gateway_ns}/{gateway_name}"),
            index,
            port_name: (!port.name.is_empty()).then(|| port.name.clone()),
            protocol,
            hosts: hosts.into_iter().map(|(_, h)| h).collect(),
            tls,
            routes,
        },
        secret,
    })
}

/// `minProtocolVersion` and `maxProtocolVersion` as the proxy serves them (TLS 1.2 and 1.3):
/// a minimum below 1.2 is 1.2 (api::support reports it), a maximum below 1.2 leaves nothing
/// to serve.
fn tls_versions(
    min: Option<TlsProtocol>,
    max: Option<TlsProtocol>,
) -> Result<(Option<xds::TlsVersion>, Option<xds::TlsVersion>), String> {
    let version = |p: TlsProtocol| match p {
        TlsProtocol::V1_3 => Some(xds::TlsVersion::V1_3),
        TlsProtocol::V1_2 => Some(xds::TlsVersion::V1_2),
        TlsProtocol::Auto | TlsProtocol::V1_0 | TlsProtocol::V1_1 => None,
    };
    if matches!(max, Some(TlsProtocol::V1_0 | TlsProtocol::V1_1)) {
        return Err("tls.maxProtocolVersion: below TLS 1.2, which Ama does not serve".to_string());
    }
    let (min, max) = (min.and_then(version), max.and_then(version));
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        return Err("tls.maxProtocolVersion: lower than minProtocolVersion".to_string());
    }
    Ok((min, max))
}

/// The credential of the Secret `name` in `ns` (its CA from `<name>-cacert` when `mutual` and
/// it has none).
fn credential(
    secrets: &Secrets<'_>,
    ns: &str,
    name: &str,
    mutual: bool,
) -> Result<xds::ServerCredential, String> {
    let pems = secrets.read(ns, name, mutual)?;
    let cert_chain = pems.cert_chain.ok_or("the Secret has no tls.crt or cert")?;
    let private_key = pems.private_key.ok_or("the Secret has no tls.key or key")?;
    if pems.ca_certificates.is_none() && mutual {
        return Err(format!(
            "MUTUAL needs a client CA: the Secret has no ca.crt or cacert, and no Secret \
             {name}-cacert has one"
        ));
    }
    Ok(xds::ServerCredential {
        source: format!("Secret {ns}/{name}"),
        cert_chain,
        private_key,
        ca_certificates: pems.ca_certificates,
    })
}

/// The listeners of a gateway pod in namespace `ns` with `labels`: the servers of every
/// Gateway that selects it, by port, their credentials from `ns`. Servers that cannot share a
/// port with the first one there are left out (logged by the caller through `dropped`).
pub fn listeners_for(
    gateways: &GatewaysOut,
    ns: &str,
    labels: &Labels,
    dropped: &mut impl FnMut(&xds::GatewayServer, u16),
) -> Vec<xds::GatewayListener> {
    let mut by_port: BTreeMap<u16, Vec<xds::GatewayServer>> = BTreeMap::new();
    for g in &gateways.gateways {
        // Only gateway proxies get here: an empty selector selects every one (pilot's).
        if !selector_matches(&g.selector, labels) {
            continue;
        }
        for sc in &g.servers {
            let mut server = sc.server.clone();
            if let (Some(tls), Some(name)) = (&mut server.tls, &sc.secret) {
                tls.credential = gateways
                    .credentials
                    .get(&(ns.to_string(), name.clone()))
                    .cloned();
            }
            let port = sc.port;
            let servers = by_port.entry(port).or_default();
            if servers
                .first()
                .is_some_and(|f| f.family() != server.family())
            {
                dropped(&server, port);
                continue;
            }
            servers.push(server);
        }
    }
    by_port
        .into_iter()
        .map(|(port, servers)| xds::GatewayListener {
            port,
            server_port: None,
            servers,
        })
        .collect()
}
