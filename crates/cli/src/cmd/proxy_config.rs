//! `ama proxy-config clusters|listeners|routes|endpoints|secret|bootstrap|all|log
//! POD[.NAMESPACE]` (`ama pc`): a sidecar's (or gateway's) configuration as `istioctl
//! proxy-config` shows it, read from the pod's admin server (127.0.0.1:15000 in the pod) of the
//! running `ama up` mesh.
//!
//! The tables are istioctl's (same columns, sorting and spacing); `-o json|yaml` prints the
//! proxy's own dump of that section. Where Ama's dump differs from Envoy's config dump:
//!
//! - `clusters`, `listeners`, `routes`: Ama's proxy is configured with services, traffic
//!   policies (DestinationRules) and HTTP routes (VirtualServices), not Envoy's clusters,
//!   listeners and route configurations. `-o json` prints those sections of `/config_dump`
//!   (`services` and `trafficPolicies`; `services` and `gatewayListeners`; `httpRoutes`), and
//!   the tables are derived from them as istiod would have built Envoy's resources (the
//!   cluster names are the proxy's own, from `/clusters`).
//! - `endpoints -o json`: Envoy's `/clusters?format=json` shape (`cluster_statuses`), built
//!   from the proxy's `/clusters`.
//! - `secret -o json`: Envoy's `/certs` shape; no private key ever leaves the proxy.
//! - `bootstrap`: Ama has no Envoy bootstrap; it prints the node the proxy identifies as and
//!   its `/server_info`.
//!
//! The sidecar's inbound clusters and listeners (`inbound|80||`, 15006's filter chains) are
//! not shown: Ama's proxy does not list them in its admin output.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::bail;
use serde_json::{Value, json};

use super::local::MeshName;
use super::mesh_http::{Format, admin, admin_get, admin_json, find_pod, structured, tabwrite};

/// Where `-o json` differs from Envoy's config dump, for `--help`.
const DUMP_NOTE: &str = "\
-o json|yaml prints the proxy's own dump of the section. Ama's proxy is configured with
services, traffic policies and HTTP routes rather than Envoy's clusters, listeners and route
configurations: clusters shows `services` and `trafficPolicies`, listeners `services` and
`gatewayListeners`, routes `httpRoutes` (a gateway's: `gatewayListeners`); the tables are
derived from them as istiod builds Envoy's resources. endpoints -o json is Envoy's
/clusters?format=json shape, secret -o json Envoy's /certs shape (certificates only, never a
private key). Inbound clusters and listeners are not listed.";

#[derive(clap::Args, Debug)]
#[command(after_help = DUMP_NOTE)]
pub struct Args {
    #[command(subcommand)]
    pub section: Section,
    #[command(flatten)]
    pub mesh: MeshName,
}

/// What all sections take.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// The pod, `POD[.NAMESPACE]` (a unique prefix of its name is enough).
    pub pod: String,
    /// The pod's namespace.
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    /// Output format: short (a table), json or yaml.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Short)]
    pub output: Format,
}

#[derive(clap::Subcommand, Debug)]
pub enum Section {
    /// The clusters of a sidecar: SERVICE FQDN, PORT, SUBSET, DIRECTION, TYPE, DESTINATION RULE.
    #[command(name = "cluster", visible_aliases = ["clusters", "c"])]
    Clusters {
        #[command(flatten)]
        target: Target,
        /// Only clusters whose name contains this FQDN.
        #[arg(long)]
        fqdn: Option<String>,
        /// Only clusters of this port.
        #[arg(long)]
        port: Option<u16>,
        /// Only clusters whose name contains this subset.
        #[arg(long)]
        subset: Option<String>,
        /// Only clusters of this direction (inbound, outbound).
        #[arg(long)]
        direction: Option<String>,
    },
    /// The listeners of a sidecar: ADDRESSES, PORT, MATCH, DESTINATION.
    #[command(name = "listener", visible_aliases = ["listeners", "l"])]
    Listeners {
        #[command(flatten)]
        target: Target,
        /// Only listeners on this address.
        #[arg(long)]
        address: Option<String>,
        /// Only listeners on this port.
        #[arg(long)]
        port: Option<u16>,
    },
    /// The HTTP routes of a sidecar: NAME, VHOST NAME, DOMAINS, MATCH, VIRTUAL SERVICE.
    #[command(name = "route", visible_aliases = ["routes", "r"])]
    Routes {
        #[command(flatten)]
        target: Target,
        /// Only the route of this name (its port, as istiod names them): istioctl's `--name`,
        /// which names the mesh here.
        #[arg(long = "route-name")]
        name: Option<String>,
    },
    /// The endpoints of a sidecar's clusters: ENDPOINT, STATUS, OUTLIER CHECK, CLUSTER.
    #[command(name = "endpoint", visible_aliases = ["endpoints", "ep"])]
    Endpoints {
        #[command(flatten)]
        target: Target,
        /// Only endpoints of clusters whose name contains this.
        #[arg(long)]
        cluster: Option<String>,
        /// Only endpoints with this address.
        #[arg(long)]
        address: Option<String>,
        /// Only endpoints on this port.
        #[arg(long)]
        port: Option<u16>,
        /// Only endpoints with this status (HEALTHY, UNHEALTHY).
        #[arg(long)]
        status: Option<String>,
    },
    /// The certificates of a sidecar: RESOURCE NAME, TYPE, STATUS, VALID CERT, SERIAL NUMBER,
    /// NOT AFTER, NOT BEFORE (never a private key).
    #[command(name = "secret", visible_aliases = ["secrets", "s"])]
    Secret {
        #[command(flatten)]
        target: Target,
    },
    /// The proxy's node and server information (Ama has no Envoy bootstrap). JSON by default.
    #[command(name = "bootstrap", visible_aliases = ["b"])]
    Bootstrap {
        #[command(flatten)]
        target: Target,
    },
    /// Clusters, listeners, routes, endpoints and secrets at once; `-o json|yaml`: the whole
    /// config dump.
    #[command(name = "all", visible_aliases = ["a"])]
    All {
        #[command(flatten)]
        target: Target,
    },
    /// Shows or sets the proxy's log levels (admin `/logging`).
    #[command(name = "log", visible_aliases = ["o"])]
    Log {
        /// The pod, `POD[.NAMESPACE]`.
        pod: String,
        /// The pod's namespace.
        #[arg(short = 'n', long = "namespace")]
        namespace: Option<String>,
        /// `[<logger>:]<level>,...`, levels trace, debug, info, warning, error, critical, off.
        #[arg(long)]
        level: Option<String>,
        /// Sets every logger back to `warning`, as istioctl's `--reset`.
        #[arg(short = 'r', long)]
        reset: bool,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = args.mesh.dir()?.load()?;
    let pod_of = |t: &Target| find_pod(&state, &t.pod, t.namespace.as_deref());
    let out = match &args.section {
        Section::Clusters {
            target,
            fqdn,
            port,
            subset,
            direction,
        } => {
            let pod = pod_of(target)?;
            let dump = admin_json(pod, "/config_dump")?;
            match structured(
                target.output,
                &section(&dump, &["services", "trafficPolicies"]),
            )? {
                Some(s) => s,
                None => {
                    let statuses = parse_clusters(&admin_get(pod, "/clusters")?);
                    let filter = ClusterFilter {
                        fqdn: fqdn.as_deref(),
                        port: *port,
                        subset: subset.as_deref(),
                        direction: direction.as_deref(),
                    };
                    clusters_table(&statuses, &dump, &filter)
                }
            }
        }
        Section::Listeners {
            target,
            address,
            port,
        } => {
            let pod = pod_of(target)?;
            let dump = admin_json(pod, "/config_dump")?;
            match structured(
                target.output,
                &section(&dump, &["services", "gatewayListeners"]),
            )? {
                Some(s) => s,
                None => listeners_table(&dump, Role::of(pod), address.as_deref(), *port),
            }
        }
        Section::Routes { target, name } => {
            let pod = pod_of(target)?;
            let dump = admin_json(pod, "/config_dump")?;
            let role = Role::of(pod);
            let sections: &[&str] = match role {
                Role::Sidecar => &["httpRoutes"],
                Role::Gateway => &["gatewayListeners"],
            };
            match structured(target.output, &section(&dump, sections))? {
                Some(s) => s,
                None => routes_table(&dump, role, name.as_deref()),
            }
        }
        Section::Endpoints {
            target,
            cluster,
            address,
            port,
            status,
        } => {
            let statuses = parse_clusters(&admin_get(pod_of(target)?, "/clusters")?);
            let filter = EndpointFilter {
                cluster: cluster.as_deref(),
                address: address.as_deref(),
                port: *port,
                status: status.as_deref(),
            };
            match structured(target.output, &endpoints_json(&statuses, &filter))? {
                Some(s) => s,
                None => endpoints_table(&statuses, &filter),
            }
        }
        Section::Secret { target } => {
            let certs = admin_json(pod_of(target)?, "/certs")?;
            match structured(target.output, &certs)? {
                Some(s) => s,
                None => secrets_table(&certs, std::time::SystemTime::now()),
            }
        }
        Section::Bootstrap { target } => {
            let pod = pod_of(target)?;
            let dump = admin_json(pod, "/config_dump")?;
            let info = admin_json(pod, "/server_info")?;
            let value = json!({ "bootstrap": { "node": dump.get("node"), "serverInfo": info } });
            // istioctl prints the bootstrap as JSON unless asked for YAML.
            let format = match target.output {
                Format::Yaml => Format::Yaml,
                _ => Format::Json,
            };
            structured(format, &value)?.unwrap_or_default()
        }
        Section::All { target } => {
            let pod = pod_of(target)?;
            let dump = admin_json(pod, "/config_dump")?;
            match structured(target.output, &dump)? {
                Some(s) => s,
                None => {
                    let statuses = parse_clusters(&admin_get(pod, "/clusters")?);
                    let certs = admin_json(pod, "/certs")?;
                    let role = Role::of(pod);
                    let clusters = ClusterFilter {
                        fqdn: None,
                        port: None,
                        subset: None,
                        direction: None,
                    };
                    let endpoints = EndpointFilter {
                        cluster: None,
                        address: None,
                        port: None,
                        status: None,
                    };
                    // istioctl's `all`: each table, a blank line between them.
                    [
                        clusters_table(&statuses, &dump, &clusters),
                        listeners_table(&dump, role, None, None),
                        routes_table(&dump, role, None),
                        endpoints_table(&statuses, &endpoints),
                        secrets_table(&certs, std::time::SystemTime::now()),
                    ]
                    .join("\n")
                }
            }
        }
        Section::Log {
            pod,
            namespace,
            level,
            reset,
        } => {
            let pod = find_pod(&state, pod, namespace.as_deref())?;
            match logging_query(level.as_deref(), *reset)? {
                Some(query) => admin(pod, "POST", &format!("/logging?{query}"))?,
                None => admin_get(pod, "/logging")?,
            }
        }
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The named top-level sections of the proxy's config dump (`resources.<name>`), and its
/// version, as one JSON object.
fn section(dump: &Value, names: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for name in names {
        out.insert(
            (*name).to_string(),
            dump.pointer(&format!("/resources/{name}"))
                .cloned()
                .unwrap_or(Value::Array(Vec::new())),
        );
    }
    if let Some(v) = dump.get("version") {
        out.insert("version".into(), v.clone());
    }
    Value::Object(out)
}

/// istioctl's `--level` (`[<logger>:]<level>,...`) as the admin's `/logging` query: a bare
/// level sets every logger, `logger:level` items one each. `None`: only show.
fn logging_query(level: Option<&str>, reset: bool) -> anyhow::Result<Option<String>> {
    if reset {
        return Ok(Some("level=warning".into()));
    }
    let Some(level) = level else {
        return Ok(None);
    };
    let mut all = None;
    let mut paths = Vec::new();
    for item in level.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.rsplit_once(':') {
            Some((logger, lv)) => paths.push(format!("{logger}:{lv}")),
            None => all = Some(item),
        }
    }
    let mut query = Vec::new();
    if let Some(l) = all {
        query.push(format!("level={l}"));
    }
    if !paths.is_empty() {
        query.push(format!("paths={}", paths.join(",")));
    }
    if query.is_empty() {
        bail!("--level {level:?}: give [<logger>:]<level>,...");
    }
    Ok(Some(query.join("&")))
}

/// One cluster of the admin's `/clusters` text.
#[derive(Debug, Default, PartialEq)]
struct ClusterStatus {
    name: String,
    /// Endpoint address and its health flags (`healthy`, `/failed_outlier_check`).
    hosts: Vec<(String, String)>,
}

/// Envoy's `/clusters` text (`<cluster>::<host>::<stat>::<value>`, and
/// `<cluster>::<key>::<value>` for the cluster's own lines), in the order given.
fn parse_clusters(text: &str) -> Vec<ClusterStatus> {
    let mut out: Vec<ClusterStatus> = Vec::new();
    for line in text.lines() {
        let Some((cluster, _)) = line.split_once("::") else {
            continue;
        };
        if out.last().is_none_or(|c| c.name != cluster) {
            out.push(ClusterStatus {
                name: cluster.to_string(),
                hosts: Vec::new(),
            });
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        // A host's line: the host sits between the cluster and `::<stat>::<value>`; split from
        // the right so that an IPv6 host's colons are kept.
        let mut tail = line.rsplitn(3, "::");
        let (Some(value), Some(stat), Some(rest)) = (tail.next(), tail.next(), tail.next()) else {
            continue;
        };
        let Some((_, host)) = rest.split_once("::") else {
            continue;
        };
        if stat == "health_flags" {
            current.hosts.push((host.to_string(), value.to_string()));
        }
    }
    out
}

/// A cluster name's parts, istiod's `direction|port|subset|fqdn`; other names are
/// (name, "", "", "").
fn cluster_key(name: &str) -> (&str, &str, &str, &str) {
    let parts: Vec<&str> = name.split('|').collect();
    match parts.as_slice() {
        [direction, port, subset, fqdn] => (*fqdn, *port, *subset, *direction),
        _ => (name, "", "", ""),
    }
}

struct ClusterFilter<'a> {
    fqdn: Option<&'a str>,
    port: Option<u16>,
    subset: Option<&'a str>,
    direction: Option<&'a str>,
}

/// The DestinationRule (`name.namespace`) the dump's traffic policy for `host` comes from.
fn destination_rule(dump: &Value, host: &str) -> String {
    let policies = dump
        .pointer("/resources/trafficPolicies")
        .and_then(Value::as_array);
    policies
        .into_iter()
        .flatten()
        .find(|p| p.get("host").and_then(Value::as_str) == Some(host))
        .and_then(|p| p.get("name").and_then(Value::as_str))
        .map(|n| match n.split_once('/') {
            Some((ns, name)) => format!("{name}.{ns}"),
            None => n.to_string(),
        })
        .unwrap_or_default()
}

/// The service of the dump whose hostname is `host`.
fn service<'a>(dump: &'a Value, host: &str) -> Option<&'a Value> {
    services(dump).find(|s| s.get("hostname").and_then(Value::as_str) == Some(host))
}

fn services(dump: &Value) -> impl Iterator<Item = &Value> {
    dump.pointer("/resources/services")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The Envoy cluster type istiod gives a service of this resolution.
fn cluster_type(service: Option<&Value>) -> &'static str {
    match service
        .and_then(|s| s.get("resolution"))
        .and_then(Value::as_str)
    {
        Some("DNS") => "STRICT_DNS",
        Some("DNS_ROUND_ROBIN") => "LOGICAL_DNS",
        Some("NONE") => "ORIGINAL_DST",
        Some("STATIC") => "STATIC",
        _ => "EDS",
    }
}

/// istioctl's cluster table: sorted by FQDN, subset, port (as a number), direction.
fn clusters_table(statuses: &[ClusterStatus], dump: &Value, filter: &ClusterFilter) -> String {
    let mut keyed: Vec<_> = statuses
        .iter()
        // istioctl's filters: each a substring of the cluster's name (`|<port>|` for a port).
        .filter(|c| {
            let name = c.name.as_str();
            filter.fqdn.is_none_or(|f| name.contains(f))
                && filter.port.is_none_or(|p| name.contains(&format!("|{p}|")))
                && filter.subset.is_none_or(|s| name.contains(s))
                && filter.direction.is_none_or(|d| name.contains(d))
        })
        .map(|c| (cluster_key(&c.name), c))
        .collect();
    keyed.sort_by(|((f1, p1, s1, d1), _), ((f2, p2, s2, d2), _)| {
        let port = |p: &str| p.parse::<u32>().unwrap_or(0);
        (f1, s1, port(p1), d1).cmp(&(f2, s2, port(p2), d2))
    });
    let dash = |s: &str| if s.is_empty() { "-" } else { s }.to_string();
    let rows: Vec<Vec<String>> = keyed
        .iter()
        .map(|((fqdn, port, subset, direction), c)| {
            let (ty, rule) = match c.name.as_str() {
                "BlackHoleCluster" => ("STATIC", String::new()),
                "PassthroughCluster" | "InboundPassthroughCluster" => {
                    ("ORIGINAL_DST", String::new())
                }
                _ => (
                    cluster_type(service(dump, fqdn)),
                    destination_rule(dump, fqdn),
                ),
            };
            vec![
                fqdn.to_string(),
                dash(port),
                dash(subset),
                dash(direction),
                ty.to_string(),
                rule,
            ]
        })
        .collect();
    tabwrite(
        &[
            "SERVICE FQDN",
            "PORT",
            "SUBSET",
            "DIRECTION",
            "TYPE",
            "DESTINATION RULE",
        ],
        &rows,
    )
}

struct EndpointFilter<'a> {
    cluster: Option<&'a str>,
    address: Option<&'a str>,
    port: Option<u16>,
    status: Option<&'a str>,
}

/// An endpoint's (address, port), from `1.2.3.4:80` or `[::1]:80`.
fn split_host(host: &str) -> (&str, Option<u16>) {
    match host.rsplit_once(':') {
        Some((addr, port)) => (
            addr.trim_start_matches('[').trim_end_matches(']'),
            port.parse().ok(),
        ),
        None => (host, None),
    }
}

/// Envoy's `eds_health_status` and whether outlier detection ejected it, from health flags.
fn health(flags: &str) -> (&'static str, bool) {
    let outlier = flags.contains("failed_outlier_check");
    let healthy = flags == "healthy";
    (if healthy { "HEALTHY" } else { "UNHEALTHY" }, outlier)
}

/// The endpoints that pass the filter, as (cluster, host, flags).
fn filtered_endpoints<'a>(
    statuses: &'a [ClusterStatus],
    filter: &'a EndpointFilter,
) -> impl Iterator<Item = (&'a str, &'a str, &'a str)> {
    statuses
        .iter()
        .filter(|c| filter.cluster.is_none_or(|f| c.name.contains(f)))
        .flat_map(|c| {
            c.hosts
                .iter()
                .map(|(h, f)| (c.name.as_str(), h.as_str(), f.as_str()))
        })
        .filter(|(_, host, flags)| {
            let (addr, port) = split_host(host);
            filter.address.is_none_or(|a| a == addr)
                && filter.port.is_none_or(|p| port == Some(p))
                && filter
                    .status
                    .is_none_or(|s| s.eq_ignore_ascii_case(health(flags).0))
        })
}

fn endpoints_table(statuses: &[ClusterStatus], filter: &EndpointFilter) -> String {
    let rows: Vec<Vec<String>> = filtered_endpoints(statuses, filter)
        .map(|(cluster, host, flags)| {
            let (status, ejected) = health(flags);
            vec![
                host.to_string(),
                status.to_string(),
                if ejected { "FAILED" } else { "OK" }.to_string(),
                cluster.to_string(),
            ]
        })
        .collect();
    tabwrite(&["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"], &rows)
}

/// Envoy's `/clusters?format=json` shape, of the endpoints that pass the filter.
fn endpoints_json(statuses: &[ClusterStatus], filter: &EndpointFilter) -> Value {
    let mut by_cluster: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut order = Vec::new();
    for (cluster, host, flags) in filtered_endpoints(statuses, filter) {
        let (addr, port) = split_host(host);
        let (status, ejected) = health(flags);
        let mut health_status = json!({ "eds_health_status": status });
        if ejected {
            health_status["failed_outlier_check"] = json!(true);
        }
        if !by_cluster.contains_key(cluster) {
            order.push(cluster);
        }
        by_cluster.entry(cluster).or_default().push(json!({
            "address": { "socket_address": { "address": addr, "port_value": port } },
            "health_status": health_status,
        }));
    }
    let statuses: Vec<Value> = order
        .into_iter()
        .map(|c| json!({ "name": c, "added_via_api": true, "host_statuses": by_cluster.remove(c) }))
        .collect();
    json!({ "cluster_statuses": statuses })
}

/// What the proxy of a pod is: a sidecar (capturing its app's traffic) or a gateway (Istio's
/// gateway pods: `istio-proxy` alone, serving Gateways' ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Sidecar,
    Gateway,
}

impl Role {
    fn of(pod: &local::state::PodRecord) -> Role {
        if pod.containers.iter().all(|c| c.name == "istio-proxy") {
            Role::Gateway
        } else {
            Role::Sidecar
        }
    }
}

/// The status (15021) and Prometheus (15090) listeners every proxy has.
fn status_listeners() -> Vec<(String, u16, String, String)> {
    vec![
        (
            "0.0.0.0".into(),
            15021,
            "ALL".into(),
            "Inline Route: /healthz/ready*".into(),
        ),
        (
            "0.0.0.0".into(),
            15090,
            "ALL".into(),
            "Inline Route: /stats/prometheus*".into(),
        ),
    ]
}

/// The dump's gateway listeners' servers, with the listener's port and the port the servers
/// declare (`serverPort`, else the listener's).
fn gateway_servers(dump: &Value) -> impl Iterator<Item = (u16, u16, &Value)> {
    dump.pointer("/resources/gatewayListeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|g| {
            let port = g.get("port").and_then(Value::as_u64).unwrap_or(0) as u16;
            let server_port = g
                .get("serverPort")
                .and_then(Value::as_u64)
                .map_or(port, |p| p as u16);
            g.get("servers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(move |s| (port, server_port, s))
        })
}

/// The name istiod gives the route configuration of a gateway server: `http.<port>` for
/// plaintext HTTP, `https.<number>.<portName>.<gateway>.<namespace>` for HTTPS.
fn gateway_route_name(port: u16, server_port: u16, server: &Value) -> Option<String> {
    let text = |k: &str| server.get(k).and_then(Value::as_str).unwrap_or_default();
    match text("protocol") {
        "HTTP" | "HTTP2" | "GRPC" => Some(format!("http.{port}")),
        "HTTPS" => {
            let (ns, name) = text("gateway").split_once('/').unwrap_or(("", ""));
            Some(format!(
                "https.{server_port}.{}.{name}.{ns}",
                text("portName")
            ))
        }
        _ => None,
    }
}

/// Whether a port of the dump's service is served by HTTP (an HTTP connection manager and a
/// route named after the port, as istiod builds it).
fn is_http(protocol: &str) -> bool {
    matches!(protocol, "HTTP" | "HTTP2" | "GRPC" | "GRPC_WEB")
}

/// istioctl's listener table, as istiod builds a sidecar's listeners from the dump's services:
/// HTTP ports on `0.0.0.0` with a route of the port's name, TCP ports on each VIP to their
/// cluster; the virtual outbound (15001) and inbound (15006) listeners and the status (15021)
/// and Prometheus (15090) ones. A gateway's: each Gateway server's port to its route (HTTPS
/// matched by SNI; TLS and TCP servers as istioctl shows filters it does not describe), and the
/// status and Prometheus listeners.
fn listeners_table(dump: &Value, role: Role, address: Option<&str>, port: Option<u16>) -> String {
    let mut rows = status_listeners();
    if role == Role::Gateway {
        for (port, server_port, server) in gateway_servers(dump) {
            let (matching, destination) = match gateway_route_name(port, server_port, server) {
                Some(route) if route.starts_with("https.") => {
                    let hosts: Vec<&str> = server
                        .get("hosts")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    (
                        format!("SNI: {}", hosts.join(",")),
                        format!("Route: {route}"),
                    )
                }
                Some(route) => ("ALL".to_string(), format!("Route: {route}")),
                None => ("ALL".to_string(), "Non-HTTP/Non-TCP".to_string()),
            };
            let row = ("0.0.0.0".to_string(), port, matching, destination);
            if !rows.contains(&row) {
                rows.push(row);
            }
        }
        return listener_rows(rows, address, port);
    }
    rows.push((
        "0.0.0.0".into(),
        15001,
        "ALL".into(),
        "PassthroughCluster".into(),
    ));
    // Inbound: captured connections go to the app at their original destination.
    rows.push((
        "0.0.0.0".into(),
        15006,
        "ALL".into(),
        "InboundPassthroughCluster".into(),
    ));
    let mut http_ports = std::collections::BTreeSet::new();
    for s in services(dump) {
        let host = s
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let vips: Vec<&str> = s
            .get("vips")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for p in s
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let number = p.get("port").and_then(Value::as_u64).unwrap_or(0) as u16;
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            if is_http(protocol) {
                http_ports.insert(number);
            } else {
                for vip in &vips {
                    rows.push((
                        vip.to_string(),
                        number,
                        "ALL".into(),
                        format!("Cluster: outbound|{number}||{host}"),
                    ));
                }
            }
        }
    }
    for number in http_ports {
        rows.push((
            "0.0.0.0".into(),
            number,
            "Trans: raw_buffer; App: http/1.1,h2c".into(),
            format!("Route: {number}"),
        ));
        rows.push((
            "0.0.0.0".into(),
            number,
            "ALL".into(),
            "PassthroughCluster".into(),
        ));
    }
    listener_rows(rows, address, port)
}

/// The listener table of `rows` (address, port, match, destination) that pass the filters.
fn listener_rows(
    mut rows: Vec<(String, u16, String, String)>,
    address: Option<&str>,
    port: Option<u16>,
) -> String {
    rows.retain(|(a, p, _, _)| address.is_none_or(|x| x == a) && port.is_none_or(|x| x == *p));
    // istioctl sorts by port, then address; a listener's rows by destination, descending.
    rows.sort_by(|a, b| (a.1, &a.0, &b.3).cmp(&(b.1, &b.0, &a.3)));
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(a, p, m, d)| vec![a, p.to_string(), m, d])
        .collect();
    tabwrite(&["ADDRESSES", "PORT", "MATCH", "DESTINATION"], &rows)
}

/// A route match as istioctl describes it: `/prefix*`, `/exact`, the regex, or `/*`.
fn describe_match(m: &Value) -> String {
    let uri = m.get("uri");
    if let Some(p) = uri.and_then(|u| u.get("prefix")).and_then(Value::as_str) {
        return format!("{p}*");
    }
    if let Some(e) = uri.and_then(|u| u.get("exact")).and_then(Value::as_str) {
        return e.to_string();
    }
    if let Some(r) = uri.and_then(|u| u.get("regex")).and_then(Value::as_str) {
        return r.to_string();
    }
    "/*".to_string()
}

/// istioctl's `describeRouteDomains`: a virtual host's domains without their `:port` forms,
/// less those a shorter one stands for (`x.svc.cluster.local` and `x.svc` beside `x`), the
/// first two and how many more.
fn describe_domains(domains: &[String]) -> String {
    const SHOWN: usize = 2;
    let without_port: Vec<&str> = domains
        .iter()
        .map(String::as_str)
        .filter(|d| !d.contains(':') || (d.matches(':').count() > 2 && d.ends_with(']')))
        .collect();
    let covered = |d: &str| {
        [".svc.cluster.local", ".svc"].iter().any(|suffix| {
            d.strip_suffix(suffix)
                .is_some_and(|short| without_port.contains(&short))
        })
    };
    let kept: Vec<&str> = without_port
        .iter()
        .copied()
        .filter(|d| !covered(d))
        .collect();
    if kept.len() > SHOWN {
        format!(
            "{} + {} more...",
            kept[..SHOWN].join(", "),
            kept.len() - SHOWN
        )
    } else {
        kept.join(", ")
    }
}

/// The domains of the virtual host istiod builds for service `host` on `port` for a client
/// in `client_ns`: the FQDN, the short names the client's search path completes, the VIPs,
/// each also with `:port`.
fn domains(host: &str, port: &str, vips: &[&str], client_ns: &str) -> Vec<String> {
    let mut names = vec![host.to_string()];
    if let Some(short) = host.strip_suffix(".svc.cluster.local") {
        let (name, ns) = short.split_once('.').unwrap_or((short, ""));
        if ns == client_ns {
            names.push(name.to_string());
        }
        names.push(format!("{short}.svc"));
        names.push(short.to_string());
    }
    names.extend(vips.iter().map(|v| v.to_string()));
    names
        .into_iter()
        .flat_map(|n| [format!("{n}:{port}"), n])
        .collect()
}

/// The rows of a VirtualService's HTTP rules in a route table: one per match (`/*` for none).
fn rule_rows(route: &str, vhost: &str, domains: &str, vs: &Value, rows: &mut Vec<Vec<String>>) {
    let vs_name = match vs.get("name").and_then(Value::as_str) {
        Some(n) => match n.split_once('/') {
            Some((ns, n)) => format!("{n}.{ns}"),
            None => n.to_string(),
        },
        None => String::new(),
    };
    for rule in vs
        .get("http")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let matches = rule.get("match").and_then(Value::as_array);
        let described: Vec<String> = match matches {
            Some(m) if !m.is_empty() => m.iter().map(describe_match).collect(),
            _ => vec!["/*".into()],
        };
        for m in described {
            rows.push(vec![
                route.to_string(),
                vhost.to_string(),
                domains.to_string(),
                m,
                vs_name.clone(),
            ]);
        }
    }
}

/// A gateway's route table: per HTTP or HTTPS server, a virtual host per host of each bound
/// VirtualService (`host:<server port>`), each of its matches.
fn gateway_routes(dump: &Value, name: Option<&str>) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for (port, server_port, server) in gateway_servers(dump) {
        let Some(route) = gateway_route_name(port, server_port, server) else {
            continue;
        };
        if name.is_some_and(|n| n != route) {
            continue;
        }
        for vs in server
            .get("routes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for host in vs
                .get("hosts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let host = host.as_str().unwrap_or_default();
                let vhost = format!("{host}:{server_port}");
                let before = rows.len();
                rule_rows(&route, &vhost, host, vs, &mut rows);
                // Two servers of one port share the route: its virtual hosts appear once.
                let added: Vec<Vec<String>> = rows.drain(before..).collect();
                for row in added {
                    if !rows.contains(&row) {
                        rows.push(row);
                    }
                }
            }
        }
    }
    rows
}

/// istioctl's route table, as istiod builds a sidecar's outbound routes from the dump: one
/// route per HTTP port (named after it), a virtual host per service on it, each of its
/// VirtualService's matches (or the default `/*`). A gateway's: [`gateway_routes`].
fn routes_table(dump: &Value, role: Role, name: Option<&str>) -> String {
    let header = ["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"];
    if role == Role::Gateway {
        return tabwrite(&header, &gateway_routes(dump, name));
    }
    let client_ns = dump
        .pointer("/node/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let http_routes: Vec<&Value> = dump
        .pointer("/resources/httpRoutes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for s in services(dump) {
        let host = s
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for p in s
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            if !is_http(protocol) {
                continue;
            }
            let number = p
                .get("port")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .to_string();
            if name.is_some_and(|n| n != number) {
                continue;
            }
            let vhost = format!("{host}:{number}");
            let vips: Vec<&str> = s
                .get("vips")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let domains = describe_domains(&domains(host, &number, &vips, client_ns));
            let vs = http_routes.iter().find(|r| {
                r.get("hosts")
                    .and_then(Value::as_array)
                    .is_some_and(|h| h.iter().any(|h| h.as_str() == Some(host)))
            });
            let Some(vs) = vs else {
                rows.push(vec![number, vhost, domains, "/*".into(), String::new()]);
                continue;
            };
            rule_rows(&number, &vhost, &domains, vs, &mut rows);
        }
    }
    tabwrite(&header, &rows)
}

/// istioctl's secret table from the admin's `/certs`: the workload certificate (`default`,
/// `Cert Chain`) and the root (`ROOTCA`, `CA`).
fn secrets_table(certs: &Value, now: std::time::SystemTime) -> String {
    let now = time::OffsetDateTime::from(now);
    let parse = |v: Option<&Value>| {
        v.and_then(Value::as_str).and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    let mut rows = Vec::new();
    let all = certs.get("certificates").and_then(Value::as_array);
    for c in all.into_iter().flatten() {
        for (key, ty) in [("cert_chain", "Cert Chain"), ("ca_cert", "CA")] {
            for cert in c.get(key).and_then(Value::as_array).into_iter().flatten() {
                let text = |k: &str| {
                    cert.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let (from, until) = (
                    parse(cert.get("valid_from")),
                    parse(cert.get("expiration_time")),
                );
                let valid = matches!((from, until), (Some(f), Some(u)) if f <= now && now < u);
                rows.push(vec![
                    text("path"),
                    ty.to_string(),
                    "ACTIVE".to_string(),
                    valid.to_string(),
                    text("serial_number"),
                    text("expiration_time"),
                    text("valid_from"),
                ]);
            }
        }
    }
    tabwrite(
        &[
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTERS: &str = "\
outbound|80||httpbin.default.svc.cluster.local::observability_name::outbound|80||httpbin.default.svc.cluster.local
outbound|80||httpbin.default.svc.cluster.local::default_priority::max_connections::4294967295
outbound|80||httpbin.default.svc.cluster.local::added_via_api::true
outbound|80||httpbin.default.svc.cluster.local::10.244.0.2:80::rq_active::0
outbound|80||httpbin.default.svc.cluster.local::10.244.0.2:80::health_flags::healthy
outbound|80||httpbin.default.svc.cluster.local::10.244.0.2:80::weight::1
outbound|80||httpbin.default.svc.cluster.local::10.244.0.3:80::health_flags::/failed_outlier_check
outbound|80|v1|httpbin.default.svc.cluster.local::observability_name::outbound|80|v1|httpbin.default.svc.cluster.local
outbound|80|v1|httpbin.default.svc.cluster.local::10.244.0.2:80::health_flags::healthy
outbound|9000||tcp-echo.default.svc.cluster.local::observability_name::outbound|9000||tcp-echo.default.svc.cluster.local
outbound|9000||tcp-echo.default.svc.cluster.local::[fd00::5]:9000::health_flags::healthy
BlackHoleCluster::observability_name::BlackHoleCluster
PassthroughCluster::observability_name::PassthroughCluster
";

    fn dump() -> Value {
        json!({
            "version": "7",
            "node": {"workload": "sleep-1", "namespace": "default", "identity": "spiffe://cluster.local/ns/default/sa/sleep"},
            "resources": {
                "services": [
                    {"hostname": "httpbin.default.svc.cluster.local", "name": "httpbin", "namespace": "default",
                     "vips": ["10.96.0.10"], "ports": [{"name": "http", "port": 80, "protocol": "HTTP", "targetPort": 80}]},
                    {"hostname": "tcp-echo.default.svc.cluster.local", "name": "tcp-echo", "namespace": "default",
                     "vips": ["10.96.0.11"], "ports": [{"name": "tcp", "port": 9000, "protocol": "TCP", "targetPort": 9000}]},
                ],
                "trafficPolicies": [
                    {"host": "httpbin.default.svc.cluster.local", "name": "default/httpbin",
                     "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
                ],
                "httpRoutes": [
                    {"hosts": ["httpbin.default.svc.cluster.local"], "name": "default/httpbin", "namespace": "default",
                     "http": [
                        {"match": [{"uri": {"prefix": "/status"}}, {"uri": {"exact": "/ip"}}],
                         "route": [{"host": "httpbin.default.svc.cluster.local", "subset": "v1", "weight": 100}]},
                        {"route": [{"host": "httpbin.default.svc.cluster.local", "weight": 100}]},
                     ]},
                ],
            },
        })
    }

    fn no_filter() -> ClusterFilter<'static> {
        ClusterFilter {
            fqdn: None,
            port: None,
            subset: None,
            direction: None,
        }
    }

    #[test]
    fn parses_the_admins_clusters_text() {
        let parsed = parse_clusters(CLUSTERS);
        let names: Vec<&str> = parsed.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "outbound|80||httpbin.default.svc.cluster.local",
                "outbound|80|v1|httpbin.default.svc.cluster.local",
                "outbound|9000||tcp-echo.default.svc.cluster.local",
                "BlackHoleCluster",
                "PassthroughCluster"
            ]
        );
        assert_eq!(
            parsed[0].hosts,
            [
                ("10.244.0.2:80".to_string(), "healthy".to_string()),
                (
                    "10.244.0.3:80".to_string(),
                    "/failed_outlier_check".to_string()
                )
            ]
        );
        assert_eq!(parsed[2].hosts[0].0, "[fd00::5]:9000");
    }

    #[test]
    fn clusters_table_golden() {
        let out = clusters_table(&parse_clusters(CLUSTERS), &dump(), &no_filter());
        let golden = "\
SERVICE FQDN                           PORT     SUBSET     DIRECTION     TYPE             DESTINATION RULE
BlackHoleCluster                       -        -          -             STATIC           
PassthroughCluster                     -        -          -             ORIGINAL_DST     
httpbin.default.svc.cluster.local      80       -          outbound      EDS              httpbin.default
httpbin.default.svc.cluster.local      80       v1         outbound      EDS              httpbin.default
tcp-echo.default.svc.cluster.local     9000     -          outbound      EDS              
";
        assert_eq!(out, golden);
        let only_v1 = clusters_table(
            &parse_clusters(CLUSTERS),
            &dump(),
            &ClusterFilter {
                subset: Some("v1"),
                ..no_filter()
            },
        );
        assert_eq!(only_v1.lines().count(), 2, "{only_v1}");
        let port = clusters_table(
            &parse_clusters(CLUSTERS),
            &dump(),
            &ClusterFilter {
                port: Some(9000),
                fqdn: Some("tcp-echo"),
                direction: Some("outbound"),
                ..no_filter()
            },
        );
        assert_eq!(port.lines().count(), 2, "{port}");
    }

    fn all_endpoints() -> EndpointFilter<'static> {
        EndpointFilter {
            cluster: None,
            address: None,
            port: None,
            status: None,
        }
    }

    #[test]
    fn endpoints_table_golden_and_json() {
        let parsed = parse_clusters(CLUSTERS);
        let out = endpoints_table(&parsed, &all_endpoints());
        let golden = "\
ENDPOINT           STATUS        OUTLIER CHECK     CLUSTER
10.244.0.2:80      HEALTHY       OK                outbound|80||httpbin.default.svc.cluster.local
10.244.0.3:80      UNHEALTHY     FAILED            outbound|80||httpbin.default.svc.cluster.local
10.244.0.2:80      HEALTHY       OK                outbound|80|v1|httpbin.default.svc.cluster.local
[fd00::5]:9000     HEALTHY       OK                outbound|9000||tcp-echo.default.svc.cluster.local
";
        assert_eq!(out, golden);
        let filter = EndpointFilter {
            status: Some("unhealthy"),
            ..all_endpoints()
        };
        let text = serde_json::to_string(&endpoints_json(&parsed, &filter)).unwrap();
        let parsed_json: Value = serde_json::from_str(&text).unwrap();
        let statuses = parsed_json["cluster_statuses"].as_array().unwrap();
        assert_eq!(statuses.len(), 1);
        let host = &statuses[0]["host_statuses"][0];
        assert_eq!(host["address"]["socket_address"]["address"], "10.244.0.3");
        assert_eq!(host["address"]["socket_address"]["port_value"], 80);
        assert_eq!(host["health_status"]["eds_health_status"], "UNHEALTHY");
        assert_eq!(host["health_status"]["failed_outlier_check"], true);
        let v6 = EndpointFilter {
            address: Some("fd00::5"),
            port: Some(9000),
            ..all_endpoints()
        };
        assert_eq!(endpoints_table(&parsed, &v6).lines().count(), 2);
    }

    #[test]
    fn listeners_table_golden() {
        let out = listeners_table(&dump(), Role::Sidecar, None, None);
        let golden = "\
ADDRESSES      PORT      MATCH                                    DESTINATION
0.0.0.0        80        Trans: raw_buffer; App: http/1.1,h2c     Route: 80
0.0.0.0        80        ALL                                      PassthroughCluster
10.96.0.11     9000      ALL                                      Cluster: outbound|9000||tcp-echo.default.svc.cluster.local
0.0.0.0        15001     ALL                                      PassthroughCluster
0.0.0.0        15006     ALL                                      InboundPassthroughCluster
0.0.0.0        15021     ALL                                      Inline Route: /healthz/ready*
0.0.0.0        15090     ALL                                      Inline Route: /stats/prometheus*
";
        assert_eq!(out, golden);
        assert_eq!(
            listeners_table(&dump(), Role::Sidecar, Some("10.96.0.11"), None)
                .lines()
                .count(),
            2
        );
    }

    #[test]
    fn routes_table_golden() {
        let out = routes_table(&dump(), Role::Sidecar, None);
        let golden = "\
NAME     VHOST NAME                               DOMAINS                                  MATCH        VIRTUAL SERVICE
80       httpbin.default.svc.cluster.local:80     httpbin, httpbin.default + 1 more...     /status*     httpbin.default
80       httpbin.default.svc.cluster.local:80     httpbin, httpbin.default + 1 more...     /ip          httpbin.default
80       httpbin.default.svc.cluster.local:80     httpbin, httpbin.default + 1 more...     /*           httpbin.default
";
        assert_eq!(out, golden);
        assert_eq!(
            routes_table(&dump(), Role::Sidecar, Some("9080"))
                .lines()
                .count(),
            1
        );
    }

    fn gateway_dump() -> Value {
        json!({"resources": {"gatewayListeners": [
            {"port": 8080, "serverPort": 80, "servers": [
                {"gateway": "default/gw", "hosts": ["httpbin.example.com"], "portName": "http", "protocol": "HTTP",
                 "routes": [{"hosts": ["httpbin.example.com"], "name": "default/httpbin", "http": [
                     {"match": [{"uri": {"prefix": "/status"}}], "route": [{"host": "httpbin.default.svc.cluster.local"}]}]}]},
            ]},
            {"port": 8443, "serverPort": 443, "servers": [
                {"gateway": "default/gw", "hosts": ["httpbin.example.com"], "portName": "https", "protocol": "HTTPS",
                 "routes": [{"hosts": ["httpbin.example.com"], "name": "default/httpbin", "http": [
                     {"route": [{"host": "httpbin.default.svc.cluster.local"}]}]}]},
            ]},
            {"port": 9000, "servers": [{"gateway": "default/gw", "hosts": ["*"], "portName": "tcp", "protocol": "TCP"}]},
        ]}})
    }

    #[test]
    fn gateway_listeners_and_routes_golden() {
        let out = listeners_table(&gateway_dump(), Role::Gateway, None, None);
        let golden = "\
ADDRESSES     PORT      MATCH                        DESTINATION
0.0.0.0       8080      ALL                          Route: http.8080
0.0.0.0       8443      SNI: httpbin.example.com     Route: https.443.https.gw.default
0.0.0.0       9000      ALL                          Non-HTTP/Non-TCP
0.0.0.0       15021     ALL                          Inline Route: /healthz/ready*
0.0.0.0       15090     ALL                          Inline Route: /stats/prometheus*
";
        assert_eq!(out, golden);
        let out = routes_table(&gateway_dump(), Role::Gateway, None);
        let golden = "\
NAME                           VHOST NAME                  DOMAINS                 MATCH        VIRTUAL SERVICE
http.8080                      httpbin.example.com:80      httpbin.example.com     /status*     httpbin.default
https.443.https.gw.default     httpbin.example.com:443     httpbin.example.com     /*           httpbin.default
";
        assert_eq!(out, golden);
        let only = routes_table(&gateway_dump(), Role::Gateway, Some("http.8080"));
        assert_eq!(only.lines().count(), 2, "{only}");
    }

    #[test]
    fn route_domains_as_istioctl_describes_them() {
        let d = |host, vips: &[&str], ns| describe_domains(&domains(host, "80", vips, ns));
        assert_eq!(
            d(
                "reviews.default.svc.cluster.local",
                &["10.96.0.9"],
                "default"
            ),
            "reviews, reviews.default + 1 more..."
        );
        // From another namespace the short name does not resolve.
        assert_eq!(
            d("reviews.default.svc.cluster.local", &["10.96.0.9"], "shop"),
            "reviews.default, 10.96.0.9"
        );
        assert_eq!(d("api.example.com", &[], "default"), "api.example.com");
        // An IPv6 address is kept without its port.
        assert_eq!(
            describe_domains(&[
                "a".into(),
                "[fd00:10:96::7fc7]".into(),
                "[fd00:10:96::7fc7]:80".into()
            ]),
            "a, [fd00:10:96::7fc7]"
        );
    }

    #[test]
    fn secret_table_golden() {
        let certs = json!({"certificates": [{
            "cert_chain": [{"path": "default", "serial_number": "647e8d7a", "valid_from": "2026-12-06T15:59:47Z",
                             "expiration_time": "2026-12-07T16:00:47Z",
                             "subject_alt_names": [{"uri": "spiffe://cluster.local/ns/default/sa/default"}]}],
            "ca_cert": [{"path": "ROOTCA"}],
        }]});
        let at = |s: &str| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .unwrap()
                .into()
        };
        let out = secrets_table(&certs, at("2026-12-06T16:00:00Z"));
        let golden = "\
RESOURCE NAME     TYPE           STATUS     VALID CERT     SERIAL NUMBER     NOT AFTER                NOT BEFORE
default           Cert Chain     ACTIVE     true           647e8d7a          2026-12-07T16:00:47Z     2026-12-06T15:59:47Z
ROOTCA            CA             ACTIVE     false                                                     
";
        assert_eq!(out, golden);
        let expired = secrets_table(&certs, at("2026-12-08T00:00:00Z"));
        assert!(expired.lines().nth(1).unwrap().contains("ACTIVE     false"));
    }

    #[test]
    fn log_levels_as_the_admins_query() {
        assert_eq!(logging_query(None, false).unwrap(), None);
        assert_eq!(
            logging_query(Some("debug"), false).unwrap().as_deref(),
            Some("level=debug")
        );
        assert_eq!(
            logging_query(Some("info,proxy::inbound:debug"), false)
                .unwrap()
                .as_deref(),
            Some("level=info&paths=proxy::inbound:debug")
        );
        assert_eq!(
            logging_query(None, true).unwrap().as_deref(),
            Some("level=warning")
        );
        assert!(logging_query(Some(","), false).is_err());
    }

    #[test]
    fn json_section_is_the_dumps_own() {
        let v = section(&dump(), &["services", "gatewayListeners"]);
        assert_eq!(v["services"].as_array().unwrap().len(), 2);
        assert_eq!(v["gatewayListeners"], json!([]));
        assert_eq!(v["version"], "7");
    }
}
