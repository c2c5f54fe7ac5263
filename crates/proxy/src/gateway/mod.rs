//! The gateway proxy (`ama proxy router`): Istio's ingress and egress gateways.
//!
//! A gateway captures nothing: it listens on the port of each Gateway server that selects its
//! pod ([`xds::GatewayListener`]), opened and closed as the config changes ([`listener`]).
//! Per port, as pilot builds a gateway's listener:
//!
//! - plain HTTP: requests are routed by `Host` among the VirtualServices bound to the port's
//!   servers, the most specific host first (no match: 404 `NR`, as Envoy); a server with
//!   `httpsRedirect` answers 301 to `https`;
//! - HTTPS (SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL): TLS is terminated with the
//!   certificate of the server the ClientHello's SNI names ([`tls`]), then HTTP as above;
//! - TLS PASSTHROUGH: the SNI is read from the ClientHello and the connection goes, bytes
//!   untouched, where the VirtualService's `tls[].match.sniHosts` sends it; TCP by its `tcp`
//!   routes.
//!
//! From the route on, requests take the sidecar's outbound pipeline ([`crate::outbound`]:
//! destination cluster, balancing, auto mTLS, retries, timeouts, faults) and are logged and
//! counted as the sidecar's outbound ones (`reporter="source"`, the gateway as source).
//!
//! What a port serves is compiled once per config snapshot ([`GatewayConfig`]): the route
//! tables, the host order and each server's rustls config, so a changed certificate is served
//! to the next connection without a restart.

pub mod listener;
pub mod tls;
pub mod x509_v1;

use std::sync::Arc;

use xds::gateway::{ListenerFamily, host_matches, host_specificity};
use xds::{GatewayListener, L4Route};

use crate::fx_hash::FxHashMap;
use crate::outbound::router::CompiledRoutes;

/// The `server` header of a gateway's responses (Istio names its gateways' Envoy so; sidecars
/// answer `envoy`).
pub const SERVER_HEADER: http::HeaderValue = http::HeaderValue::from_static("istio-envoy");

/// What a downstream connection of a gateway carries into its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayConn {
    /// The Gateway port the connection came in on.
    pub port: u16,
    /// TLS was terminated here (the request's scheme is `https`).
    pub tls: bool,
    /// The server whose certificate terminated it (its position in the port's servers): its
    /// requests are routed among its own hosts only, as Envoy's per-server filter chain and
    /// route config do. `None` on plaintext, where the port's servers share one route config.
    pub server: Option<usize>,
}

/// The gateway's ports, compiled from one snapshot's [`GatewayListener`]s.
#[derive(Debug, Default)]
pub struct GatewayConfig {
    ports: FxHashMap<u16, Arc<PortConfig>>,
}

/// One port: how connections are taken, the HTTP virtual hosts, the TLS servers.
#[derive(Debug)]
pub struct PortConfig {
    /// The port.
    pub port: u16,
    /// The Gateway servers' port number, which routes match (`port` unless the gateway listens
    /// on a Service's target port for it).
    pub server_port: u16,
    /// How connections are taken.
    pub family: ListenerFamily,
    /// HTTP routing, most specific host first.
    vhosts: Vec<VirtualHost>,
    /// The servers (for SNI: certificates, passthrough routes).
    pub servers: Vec<tls::Server>,
}

/// One host of one bound VirtualService on a port.
#[derive(Debug)]
struct VirtualHost {
    /// `httpbin.example.com`, `*.example.com`, `*`.
    pattern: String,
    /// The server it is bound through (position in the port's servers).
    server: usize,
    /// The VirtualService's routes.
    routes: Arc<CompiledRoutes>,
    /// The server says `httpsRedirect`.
    https_redirect: bool,
}

impl GatewayConfig {
    /// Compiles `listeners`; a route that does not compile is an error naming its field
    /// (`gatewayListeners[0].servers[1].routes[0]: http[2]...`). A credential that cannot be
    /// used leaves its server unserved ([`GatewayConfig::problems`]).
    pub fn compile(listeners: &[GatewayListener]) -> Result<GatewayConfig, xds::ValidationErrors> {
        let mut errors = Vec::new();
        let mut ports = FxHashMap::default();
        for (li, l) in listeners.iter().enumerate() {
            let family = l
                .servers
                .first()
                .map_or(ListenerFamily::Http, |s| s.family());
            let mut vhosts = Vec::new();
            let mut servers = Vec::new();
            for (si, s) in l.servers.iter().enumerate() {
                let redirect = s.tls.as_ref().is_some_and(|t| t.https_redirect)
                    && family == ListenerFamily::Http;
                let mut tls_routes: Vec<L4Route> = Vec::new();
                let mut tcp_routes: Vec<L4Route> = Vec::new();
                for (ri, r) in s.routes.iter().enumerate() {
                    tls_routes.extend(r.tls.iter().cloned());
                    tcp_routes.extend(r.tcp.iter().cloned());
                    if r.http.is_empty() {
                        continue;
                    }
                    let compiled = match CompiledRoutes::compile(r) {
                        Ok(c) => Arc::new(c),
                        Err(message) => {
                            errors.push(xds::ValidationError {
                                path: format!("gatewayListeners[{li}].servers[{si}].routes[{ri}]"),
                                message,
                            });
                            continue;
                        }
                    };
                    for h in &r.hosts {
                        vhosts.push(VirtualHost {
                            pattern: h.to_ascii_lowercase(),
                            server: si,
                            routes: compiled.clone(),
                            https_redirect: redirect,
                        });
                    }
                }
                servers.push(tls::Server::compile(s, tls_routes, tcp_routes));
            }
            // Most specific first; among equals, the first bound keeps the host.
            vhosts.sort_by_key(|v| std::cmp::Reverse(host_specificity(&v.pattern)));
            ports.insert(
                l.port,
                Arc::new(PortConfig {
                    port: l.port,
                    server_port: l.server_port.unwrap_or(l.port),
                    family,
                    vhosts,
                    servers,
                }),
            );
        }
        if errors.is_empty() {
            Ok(GatewayConfig { ports })
        } else {
            Err(xds::ValidationErrors(errors))
        }
    }

    /// What of the config cannot be served (a TLS server without a usable credential), one
    /// line each, for the store to log once.
    pub fn problems(&self) -> impl Iterator<Item = String> + '_ {
        self.ports.values().flat_map(|p| {
            p.servers.iter().filter_map(move |s| {
                s.problem.as_ref().map(|why| {
                    format!(
                        "gateway {} server {} port {}: {why}",
                        s.gateway, s.index, p.port
                    )
                })
            })
        })
    }

    /// The port's config, if a Gateway serves it.
    pub fn port(&self, port: u16) -> Option<&Arc<PortConfig>> {
        self.ports.get(&port)
    }

    /// Every port served.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.keys().copied()
    }
}

impl PortConfig {
    /// The virtual host of `authority` (its port ignored) among those of `server` (all the
    /// port's when `None`): the most specific host that covers it.
    fn vhost(&self, authority: &str, server: Option<usize>) -> Option<&VirtualHost> {
        let host = crate::route::strip_port(authority);
        self.vhosts
            .iter()
            .filter(|v| server.is_none_or(|s| s == v.server))
            .find(|v| host_matches(&v.pattern, host))
    }

    /// The routes of `authority` among those of `server` (all the port's when `None`), and
    /// whether its server redirects plain HTTP to HTTPS.
    pub fn routes_for(
        &self,
        authority: &str,
        server: Option<usize>,
    ) -> Option<(&Arc<CompiledRoutes>, bool)> {
        self.vhost(authority, server)
            .map(|v| (&v.routes, v.https_redirect))
    }

    /// The server that takes a connection whose ClientHello names `sni`: the one whose host
    /// covers it most specifically; without SNI, one that serves `*`.
    pub fn server_for_sni(&self, sni: Option<&str>) -> Option<(usize, &tls::Server)> {
        self.servers
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.hosts.iter().map(move |h| (i, h)))
            .filter(|(_, h)| match sni {
                Some(sni) => host_matches(h, sni),
                None => *h == "*",
            })
            // The most specific host; among equals, the first server.
            .min_by_key(|(i, h)| (std::cmp::Reverse(host_specificity(h)), *i))
            .map(|(i, _)| (i, &self.servers[i]))
    }
}

/// A plain-HTTP request to a server with `httpsRedirect`: Envoy's `require_tls` answer, 301 to
/// the same host (its port kept unless `:80`) and path over `https`, no body.
pub fn https_redirect(
    snap: &crate::config::Snapshot,
    gw: GatewayConn,
    req: &crate::outbound::routes::RequestView<'_>,
) -> Option<http::Response<crate::body::ProxyBody>> {
    if gw.tls {
        return None;
    }
    let (_, redirect) = snap
        .gateway
        .port(gw.port)?
        .routes_for(req.authority, gw.server)?;
    if !redirect {
        return None;
    }
    let host = crate::outbound::actions::request_host(req.authority, "https", false, "http");
    let mut location = format!("https://{host}{}", req.path);
    if let Some(q) = req.query {
        location.push('?');
        location.push_str(q);
    }
    let location = http::HeaderValue::try_from(location).ok()?;
    let mut resp = http::Response::new(crate::body::empty());
    *resp.status_mut() = http::StatusCode::MOVED_PERMANENTLY;
    resp.headers_mut().insert(http::header::LOCATION, location);
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listeners(yaml: &str) -> Vec<GatewayListener> {
        xds::ProxyResources::parse(yaml)
            .expect("valid")
            .gateway_listeners
    }

    #[test]
    fn hosts_most_specific_first_and_redirects() {
        let g = GatewayConfig::compile(&listeners(
            r#"
gatewayListeners:
- port: 8080
  servers:
  - gateway: istio-system/gw
    protocol: HTTP
    hosts: ["*"]
    tls: {mode: SIMPLE, httpsRedirect: true}
    routes:
    - {name: default/any, hosts: ["*"], http: [{route: [{host: a.default.svc.cluster.local}]}]}
    - {name: default/wild, hosts: ["*.example.com"], http: [{route: [{host: b.default.svc.cluster.local}]}]}
    - {name: default/exact, hosts: ["httpbin.example.com"], http: [{route: [{host: c.default.svc.cluster.local}]}]}
"#,
        ))
        .expect("compiles");
        let p = g.port(8080).expect("port");
        let name = |a: &str| p.routes_for(a, None).map(|(r, _)| r.source.name.clone());
        assert_eq!(
            name("httpbin.example.com:8080").as_deref(),
            Some("default/exact")
        );
        assert_eq!(name("x.example.com").as_deref(), Some("default/wild"));
        assert_eq!(name("other.org").as_deref(), Some("default/any"));
        assert!(
            p.routes_for("other.org", None)
                .is_some_and(|(_, redirect)| redirect)
        );
    }

    #[test]
    fn a_tls_server_without_credential_is_a_problem_of_the_config() {
        let g = GatewayConfig::compile(&listeners(
            r#"
gatewayListeners:
- port: 8443
  servers:
  - {gateway: istio-system/gw, protocol: HTTPS, hosts: ["*"], tls: {mode: SIMPLE}}
  - {gateway: istio-system/gw, index: 1, protocol: HTTPS, hosts: [a.org], tls: {mode: ISTIO_MUTUAL}}
"#,
        ))
        .expect("compiles");
        assert_eq!(
            g.problems().collect::<Vec<_>>(),
            [
                "gateway istio-system/gw server 0 port 8443: no credential for this TLS server; its \
              TLS handshakes fail"
            ]
        );
    }

    #[test]
    fn the_most_specific_server_takes_the_sni() {
        let g = GatewayConfig::compile(&listeners(
            r#"
gatewayListeners:
- port: 8443
  servers:
  - {gateway: istio-system/gw, protocol: HTTPS, hosts: ["*"], tls: {mode: ISTIO_MUTUAL}}
  - {gateway: istio-system/gw, index: 1, protocol: HTTPS, hosts: ["*.example.com"], tls: {mode: ISTIO_MUTUAL}}
  - {gateway: istio-system/gw, index: 2, protocol: HTTPS, hosts: [a.org, httpbin.example.com], tls: {mode: ISTIO_MUTUAL}}
"#,
        ))
        .expect("compiles");
        let p = g.port(8443).expect("port");
        let pick = |sni: Option<&str>| p.server_for_sni(sni).map(|(i, _)| i);
        assert_eq!(pick(Some("httpbin.example.com")), Some(2));
        assert_eq!(pick(Some("HTTPBIN.example.com")), Some(2));
        assert_eq!(pick(Some("x.example.com")), Some(1));
        assert_eq!(pick(Some("b.org")), Some(0));
        assert_eq!(pick(None), Some(0), "no SNI: the server of `*`");
        let only_named = GatewayConfig::compile(&listeners(
            r#"
gatewayListeners:
- port: 8443
  servers:
  - {gateway: istio-system/gw, protocol: HTTPS, hosts: [a.org], tls: {mode: ISTIO_MUTUAL}}
"#,
        ))
        .expect("compiles");
        let p = only_named.port(8443).expect("port");
        assert!(p.server_for_sni(None).is_none());
        assert!(p.server_for_sni(Some("b.org")).is_none());
    }

    #[test]
    fn no_host_no_route() {
        let g = GatewayConfig::compile(&listeners(
            r#"
gatewayListeners:
- port: 8080
  servers:
  - gateway: istio-system/gw
    protocol: HTTP
    hosts: ["httpbin.example.com"]
    routes:
    - {name: default/exact, hosts: ["httpbin.example.com"], http: [{route: [{host: c.default.svc.cluster.local}]}]}
"#,
        ))
        .expect("compiles");
        let p = g.port(8080).expect("port");
        assert!(p.routes_for("unknown.example.com", None).is_none());
        assert!(g.port(8443).is_none());
    }
}
