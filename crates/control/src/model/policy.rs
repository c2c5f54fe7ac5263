//! DestinationRule → [`xds::TrafficPolicy`], as Istio's pilot translates it.
//!
//! - Levels: the rule's `trafficPolicy` (and its `portLevelSettings`) is the host's
//!   [`xds::Policy`]; each subset keeps its labels and its own policy (and port-level settings);
//!   [`xds::TrafficPolicy::effective`] applies Istio's precedence between them.
//! - Several rules for one host in one namespace, with the same `exportTo` and the same (or no)
//!   `workloadSelector`, are merged as pilot's `mergeDestinationRule` does: the oldest (Ama has
//!   no creation times: the first by name, Istio's own tie-break) is the base, later rules add
//!   the subsets it lacks, and the first top-level `trafficPolicy` wins. What is dropped is a
//!   warning naming both objects.
//! - Load balancing: `LEAST_CONN` is `LEAST_REQUEST`; `consistentHash` takes `ringHash`, then
//!   `maglev`, else a ring of the deprecated `minimumRingSize` (pilot's
//!   `ApplyRingHashLoadBalancer`).
//! - Connection pool (pilot's `applyConnectionPool`): limits of 0 are Envoy's defaults; the HTTP
//!   idle timeout falls back to `tcp.idleTimeout`; `h2UpgradePolicy: DEFAULT` is the mesh's.
//! - Outlier detection (pilot's `applyOutlierDetection`): `consecutive5xxErrors` and
//!   `consecutiveGatewayErrors` as written (0 disables), local-origin failures only with
//!   `splitExternalLocalOriginErrors`, `maxEjectionPercent` 0 is Envoy's default, and
//!   `minHealthPercent` is always set (0 when unset: pilot turns Envoy's panic threshold off).
//!   The deprecated `consecutiveErrors` is ignored, as pilot ignores it since Istio 1.8.
//! - TLS: as written; `mode` unset is `DISABLE` (the proto's zero value). `credentialName`
//!   (SIMPLE, MUTUAL) wins over the certificate files, as pilot's: the Secret of that name in
//!   the rule's namespace ([`super::secrets`]) is sent inline (`xds::ClientTls::credential`),
//!   only in a rule with a `workloadSelector` (Istio reads it for sidecars only then; such a
//!   rule reaches only the proxies of its namespace it selects). Without a selector, or without
//!   a usable Secret, the level keeps `credentialName` and no credential: the proxy fails its
//!   connections (503 `UF`), never sends plaintext, and a warning says why. A gateway proxy
//!   (Istio's egress gateway) takes the Secret of its own namespace for a rule without
//!   selector, as pilot's ([`gateway_credentials`], [`fill_gateway_credentials`]; its own
//!   view in the push).

use std::collections::BTreeMap;

use api::networking::DestinationRule;
use api::networking::destination_rule::{
    self, ClientTlsMode, ConnectionPoolSettings, H2UpgradePolicy, LoadBalancerSettings,
    OutlierDetection, SimpleLb,
};
use api::objects::IstioConfig;

use super::config::resolve_host;
use super::routes::millis;
use super::secrets::Secrets;
use super::service_hostname;
use super::{ExportTo, Scoped};

/// The DestinationRules of `rules` merged as pilot merges them, then translated, one
/// [`xds::TrafficPolicy`] per host they name, with the credentials of the `secrets` they name.
/// `warn` gets the display name of an object and a message.
pub(crate) fn destination_rules(
    rules: &[&IstioConfig<DestinationRule>],
    known: &[&str],
    secrets: &Secrets<'_>,
    warn: &mut impl FnMut(String, String),
) -> Vec<Scoped<xds::TrafficPolicy>> {
    let mut sorted: Vec<_> = rules.to_vec();
    sorted.sort_by(|a, b| {
        (&a.metadata.name, &a.metadata.namespace).cmp(&(&b.metadata.name, &b.metadata.namespace))
    });
    let mut merged: Vec<Merged> = Vec::new();
    for dr in sorted {
        let key = MergeKey::of(dr);
        match merged.iter_mut().find(|m| m.key == key) {
            Some(m) => m.merge(dr, warn),
            None => merged.push(Merged {
                key,
                first: dr,
                spec: dr.spec.clone(),
            }),
        }
    }
    merged
        .iter()
        .flat_map(|m| {
            let mut w = |message: String| warn(display(m.first), message);
            translate(m.first, &m.spec, known, secrets, &mut w)
        })
        .collect()
}

fn display(dr: &IstioConfig<DestinationRule>) -> String {
    format!(
        "DestinationRule {}/{}",
        dr.metadata.namespace, dr.metadata.name
    )
}

/// What pilot merges on: namespace, host (short names resolved), `exportTo` and selector.
#[derive(PartialEq)]
struct MergeKey {
    namespace: String,
    host: String,
    export_to: ExportTo,
    selector: Option<BTreeMap<String, String>>,
}

impl MergeKey {
    fn of(dr: &IstioConfig<DestinationRule>) -> MergeKey {
        let ns = &dr.metadata.namespace;
        let host = dr.spec.host.to_ascii_lowercase();
        MergeKey {
            namespace: ns.clone(),
            host: if host.contains('.') || host.contains('*') {
                host
            } else {
                service_hostname(&host, ns)
            },
            export_to: ExportTo::parse(dr.spec.export_to.iter().map(String::as_str), ns),
            selector: dr
                .spec
                .workload_selector
                .as_ref()
                .map(|s| s.match_labels.clone()),
        }
    }
}

/// Rules merged into the oldest.
struct Merged<'a> {
    key: MergeKey,
    first: &'a IstioConfig<DestinationRule>,
    spec: DestinationRule,
}

impl Merged<'_> {
    fn merge(&mut self, dr: &IstioConfig<DestinationRule>, warn: &mut impl FnMut(String, String)) {
        let base = display(self.first);
        let host = &self.key.host;
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            if self.spec.subsets.iter().any(|o| o.name == s.name) {
                warn(
                    display(dr),
                    format!(
                        "spec.subsets[{i}]: subset \"{}\" of {host} is already defined by {base}, \
                         which Istio merges this rule into (the oldest first): ignored",
                        s.name
                    ),
                );
            } else {
                self.spec.subsets.push(s.clone());
            }
        }
        match (&self.spec.traffic_policy, &dr.spec.traffic_policy) {
            (None, Some(tp)) => self.spec.traffic_policy = Some(tp.clone()),
            (Some(_), Some(_)) => warn(
                display(dr),
                format!(
                    "spec.trafficPolicy: {base} for the same host {host} has one, and Istio keeps \
                     the first when it merges rules: ignored"
                ),
            ),
            _ => {}
        }
    }
}

fn translate(
    dr: &IstioConfig<DestinationRule>,
    spec: &DestinationRule,
    known: &[&str],
    secrets: &Secrets<'_>,
    w: &mut impl FnMut(String),
) -> Vec<Scoped<xds::TrafficPolicy>> {
    let ns = &dr.metadata.namespace;
    let name = format!("{ns}/{}", dr.metadata.name);
    let hosts = resolve_host(&spec.host, ns, known);
    if hosts.is_empty() {
        w(format!(
            "spec.host: no known service matches \"{}\": ignored",
            spec.host
        ));
    }
    let policy = spec
        .traffic_policy
        .as_ref()
        .map(|tp| traffic_policy(tp, "spec.trafficPolicy", w))
        .unwrap_or_default();
    let subsets: Vec<xds::Subset> = spec
        .subsets
        .iter()
        .enumerate()
        .map(|(i, s)| xds::Subset {
            name: s.name.clone(),
            labels: s.labels.clone(),
            policy: s
                .traffic_policy
                .as_ref()
                .map(|tp| traffic_policy(tp, &format!("spec.subsets[{i}].trafficPolicy"), w)),
        })
        .collect();
    let wildcard = spec.host.contains('*');
    let export_to = ExportTo::parse(spec.export_to.iter().map(String::as_str), ns);
    let workload_selector = spec
        .workload_selector
        .as_ref()
        .map(|s| s.match_labels.clone());
    let mut template = xds::TrafficPolicy {
        name: String::new(),
        host: String::new(),
        policy,
        subsets,
    };
    if !hosts.is_empty() {
        resolve_credentials(&mut template, ns, workload_selector.is_some(), secrets, w);
    }
    hosts
        .into_iter()
        .map(|host| Scoped {
            namespace: ns.clone(),
            export_to: export_to.clone(),
            workload_selector: workload_selector.clone(),
            resource: xds::TrafficPolicy {
                // Unique per host: one rule for `*.ns.svc.cluster.local` gives one per service.
                name: if wildcard {
                    format!("{name}{WILDCARD_HOST}{host}")
                } else {
                    name.clone()
                },
                host,
                ..template.clone()
            },
        })
        .collect()
}

/// The credentials of the Secrets that the rules without `workloadSelector` among `policies`
/// name, in every namespace that has one, for gateway proxies ([`fill_gateway_credentials`]).
pub(crate) fn gateway_credentials(
    policies: &[Scoped<xds::TrafficPolicy>],
    secrets: &Secrets<'_>,
) -> BTreeMap<(String, String), xds::ClientCredential> {
    let mut names = std::collections::BTreeSet::new();
    for p in policies.iter().filter(|p| p.workload_selector.is_none()) {
        let mut tp = p.resource.clone();
        for t in tp.tls_settings_mut() {
            if let Some(name) = t.credential_name.as_deref().and_then(secret_name) {
                names.insert(name.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    for name in &names {
        for ns in secrets.namespaces_with(name) {
            // A Secret without what a mode needs is caught where it is used.
            if let Ok(pems) = secrets.read(ns, name, true) {
                out.insert(
                    (ns.to_string(), name.clone()),
                    xds::ClientCredential {
                        source: format!("Secret {ns}/{name}"),
                        cert_chain: pems.cert_chain,
                        private_key: pems.private_key,
                        ca_certificates: pems.ca_certificates,
                    },
                );
            }
        }
    }
    out
}

/// The Secret's name in a `credential_name` (`namespace/name`).
fn secret_name(credential_name: &str) -> Option<&str> {
    credential_name.split_once('/').map(|(_, n)| n)
}

/// Fills in the credentials that a gateway proxy in `ns` takes for `tp` (a rule without
/// `workloadSelector` naming a Secret of `ns`: pilot reads it there for gateways), from
/// `credentials` ([`gateway_credentials`]). What stays without one fails closed. Whether any
/// was filled in.
pub fn fill_gateway_credentials(
    tp: &mut xds::TrafficPolicy,
    ns: &str,
    credentials: &BTreeMap<(String, String), xds::ClientCredential>,
) -> bool {
    let mut filled = false;
    for t in tp.tls_settings_mut() {
        if t.credential.is_some() {
            continue;
        }
        let Some(name) = t.credential_name.as_deref().and_then(secret_name) else {
            continue;
        };
        let Some(c) = credentials.get(&(ns.to_string(), name.to_string())) else {
            continue;
        };
        let mutual = t.mode == xds::ClientTlsMode::Mutual;
        if mutual && (c.cert_chain.is_none() || c.private_key.is_none()) {
            continue;
        }
        t.credential = Some(xds::ClientCredential {
            source: c.source.clone(),
            cert_chain: c.cert_chain.clone().filter(|_| mutual),
            private_key: c.private_key.clone().filter(|_| mutual),
            ca_certificates: c.ca_certificates.clone(),
        });
        filled = true;
    }
    filled
}

/// Fills in, at every level of `tp` whose TLS names a `credentialName`, the credential of that
/// Secret in `ns`, when the rule `selects` workloads (see the module). Where it cannot, the
/// level keeps `credentialName` without a credential, which the proxy fails closed.
fn resolve_credentials(
    tp: &mut xds::TrafficPolicy,
    ns: &str,
    selects: bool,
    secrets: &Secrets<'_>,
    w: &mut impl FnMut(String),
) {
    for t in tp.tls_settings_mut() {
        let Some(name) = t.credential_name.clone() else {
            continue;
        };
        t.credential_name = Some(format!("{ns}/{name}"));
        let fails = "connections with these TLS settings fail (503 UF), never in plaintext";
        if !selects {
            w(format!(
                "tls.credentialName: {name}: Istio reads a DestinationRule's Secret for \
                 sidecars only when the rule has a workloadSelector: on sidecars, {fails} \
                 (gateway proxies read it in their own namespace)"
            ));
            continue;
        }
        let mutual = t.mode == xds::ClientTlsMode::Mutual;
        let read = secrets.read(ns, &name, true).and_then(|pems| {
            if mutual && (pems.cert_chain.is_none() || pems.private_key.is_none()) {
                return Err("MUTUAL needs tls.crt and tls.key (or cert and key)".to_string());
            }
            Ok(xds::ClientCredential {
                source: format!("Secret {ns}/{name}"),
                cert_chain: pems.cert_chain.filter(|_| mutual),
                private_key: pems.private_key.filter(|_| mutual),
                ca_certificates: pems.ca_certificates,
            })
        });
        match read {
            Ok(c) => t.credential = Some(c),
            Err(why) => w(format!(
                "tls.credentialName: {name}: {why} in namespace {ns}; {fails}"
            )),
        }
    }
}

/// Separates a rule's name from the host in the names of the policies a wildcard rule gives
/// (`default/all@reviews.default.svc.cluster.local`): one per host it covers.
const WILDCARD_HOST: char = '@';

/// Whether `p` comes from a rule whose host is a wildcard.
pub fn from_wildcard(p: &xds::TrafficPolicy) -> bool {
    p.name.contains(WILDCARD_HOST)
}

/// A `trafficPolicy` (host or subset level) and its port-level settings.
fn traffic_policy(
    tp: &destination_rule::TrafficPolicy,
    at: &str,
    w: &mut impl FnMut(String),
) -> xds::Policy {
    xds::Policy {
        settings: settings(
            tp.load_balancer.as_ref(),
            tp.connection_pool.as_ref(),
            tp.outlier_detection.as_ref(),
            tp.tls.as_ref(),
            at,
            w,
        ),
        port_level_settings: tp
            .port_level_settings
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let port = u16::try_from(p.port.as_ref()?.number).ok()?;
                Some(xds::PortSettings {
                    port,
                    settings: settings(
                        p.load_balancer.as_ref(),
                        p.connection_pool.as_ref(),
                        p.outlier_detection.as_ref(),
                        p.tls.as_ref(),
                        &format!("{at}.portLevelSettings[{i}]"),
                        w,
                    ),
                })
            })
            .collect(),
    }
}

/// The four settings of one level.
pub(crate) fn settings(
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&destination_rule::ClientTlsSettings>,
    at: &str,
    w: &mut impl FnMut(String),
) -> xds::Settings {
    xds::Settings {
        load_balancer: lb.and_then(load_balancer),
        connection_pool: pool.map(connection_pool),
        outlier_detection: outlier.map(outlier_detection),
        tls: tls.and_then(|t| client_tls(t, at, w)),
    }
}

fn positive_u32(v: Option<i64>) -> Option<u32> {
    v.filter(|v| *v > 0)
        .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
}

fn non_negative_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

fn load_balancer(lb: &LoadBalancerSettings) -> Option<xds::LoadBalancer> {
    let simple = match lb.simple {
        Some(SimpleLb::RoundRobin) => Some(xds::LbPolicy::RoundRobin),
        Some(SimpleLb::Random) => Some(xds::LbPolicy::Random),
        Some(SimpleLb::LeastRequest | SimpleLb::LeastConn) => Some(xds::LbPolicy::LeastRequest),
        Some(SimpleLb::Passthrough) => Some(xds::LbPolicy::Passthrough),
        Some(SimpleLb::Unspecified) | None => None,
    };
    let consistent_hash = lb.consistent_hash.as_ref().and_then(|ch| {
        let key = if let Some(h) = &ch.http_header_name {
            xds::HashKey::Header(h.to_ascii_lowercase())
        } else if let Some(c) = &ch.http_cookie {
            xds::HashKey::Cookie {
                name: c.name.clone(),
                path: (!c.path.is_empty()).then(|| c.path.clone()),
                // A TTL of 0 is meaningful (a session cookie): no rounding up.
                ttl_ms: c
                    .ttl
                    .map(|d| u64::try_from(d.get().as_millis()).unwrap_or(u64::MAX)),
            }
        } else if ch.use_source_ip.is_some() {
            // Pilot hashes on the source IP whenever the field is set, whatever its value.
            xds::HashKey::SourceIp
        } else if let Some(q) = &ch.http_query_parameter_name {
            xds::HashKey::QueryParameter(q.clone())
        } else {
            return None; // validation requires one key
        };
        let algorithm = match (&ch.ring_hash, &ch.maglev) {
            (Some(r), _) => xds::HashAlgorithm::Ring {
                minimum_ring_size: r.minimum_ring_size,
            },
            (None, Some(m)) => xds::HashAlgorithm::Maglev {
                table_size: m.table_size,
            },
            (None, None) => xds::HashAlgorithm::Ring {
                minimum_ring_size: ch.minimum_ring_size.unwrap_or(0),
            },
        };
        Some(xds::ConsistentHash { key, algorithm })
    });
    (simple.is_some() || consistent_hash.is_some()).then_some(xds::LoadBalancer {
        simple,
        consistent_hash,
    })
}

fn connection_pool(pool: &ConnectionPoolSettings) -> xds::ConnectionPool {
    let mut cp = xds::ConnectionPool::default();
    if let Some(tcp) = &pool.tcp {
        cp.tcp.max_connections = positive_u32(tcp.max_connections);
        cp.tcp.connect_timeout_ms = millis(tcp.connect_timeout).filter(|ms| *ms > 0);
        cp.tcp.tcp_keepalive = tcp.tcp_keepalive.as_ref().map(|k| xds::TcpKeepalive {
            probes: (k.probes > 0).then_some(k.probes),
            time_ms: millis(k.time).filter(|ms| *ms > 0),
            interval_ms: millis(k.interval).filter(|ms| *ms > 0),
        });
        cp.tcp.max_connection_duration_ms = millis(tcp.max_connection_duration);
        cp.tcp.idle_timeout_ms = millis(tcp.idle_timeout);
    }
    if let Some(http) = &pool.http {
        cp.http.max_pending_requests = positive_u32(http.http1_max_pending_requests);
        cp.http.max_requests = positive_u32(http.http2_max_requests);
        cp.http.max_requests_per_connection = positive_u32(http.max_requests_per_connection);
        cp.http.max_retries = positive_u32(http.max_retries);
        cp.http.idle_timeout_ms = millis(http.idle_timeout);
        cp.http.h2_upgrade = match http.h2_upgrade_policy {
            Some(H2UpgradePolicy::Upgrade) => Some(true),
            Some(H2UpgradePolicy::DoNotUpgrade) => Some(false),
            Some(H2UpgradePolicy::Default) | None => None,
        };
        cp.http.use_client_protocol = http.use_client_protocol.unwrap_or(false);
    }
    if cp.http.idle_timeout_ms.is_none() {
        // Pilot: the HTTP idle timeout falls back to the TCP one.
        cp.http.idle_timeout_ms = cp.tcp.idle_timeout_ms;
    }
    cp
}

fn outlier_detection(o: &OutlierDetection) -> xds::OutlierDetection {
    let split = o.split_external_local_origin_errors;
    xds::OutlierDetection {
        consecutive_5xx_errors: o.consecutive_5xx_errors.map(non_negative_u32),
        consecutive_gateway_errors: o.consecutive_gateway_errors.map(non_negative_u32),
        consecutive_local_origin_failures: if split {
            positive_u32(o.consecutive_local_origin_failures)
        } else {
            None
        },
        split_external_local_origin_errors: split,
        interval_ms: millis(o.interval).filter(|ms| *ms > 0),
        base_ejection_time_ms: millis(o.base_ejection_time),
        max_ejection_percent: positive_u32(o.max_ejection_percent).map(|p| p.min(100)),
        min_health_percent: Some(
            o.min_health_percent
                .map_or(0, |p| u32::try_from(p.clamp(0, 100)).unwrap_or(0)),
        ),
    }
}

fn client_tls(
    t: &destination_rule::ClientTlsSettings,
    at: &str,
    w: &mut impl FnMut(String),
) -> Option<xds::ClientTls> {
    let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
    let mode = match t.mode {
        Some(ClientTlsMode::Simple) => xds::ClientTlsMode::Simple,
        Some(ClientTlsMode::Mutual) => xds::ClientTlsMode::Mutual,
        Some(ClientTlsMode::IstioMutual) => xds::ClientTlsMode::IstioMutual,
        Some(ClientTlsMode::Disable) | None => xds::ClientTlsMode::Disable,
    };
    // `credentialName` replaces the files (pilot's): its credential is filled in later
    // ([`resolve_credentials`]).
    let credential_name = matches!(
        mode,
        xds::ClientTlsMode::Simple | xds::ClientTlsMode::Mutual
    )
    .then(|| non_empty(&t.credential_name))
    .flatten();
    let files = credential_name.is_none();
    if files
        && mode == xds::ClientTlsMode::Mutual
        && (t.client_certificate.is_empty() || t.private_key.is_empty())
    {
        // Istio's validation rejects this rule.
        w(format!(
            "{at}.tls: MUTUAL needs clientCertificate and privateKey, or credentialName: this \
             level has no TLS settings (the proxy's default applies)"
        ));
        return None;
    }
    Some(xds::ClientTls {
        mode,
        sni: non_empty(&t.sni),
        subject_alt_names: t.subject_alt_names.clone(),
        ca_certificates: non_empty(&t.ca_certificates).filter(|_| files),
        client_certificate: non_empty(&t.client_certificate).filter(|_| files),
        private_key: non_empty(&t.private_key).filter(|_| files),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
        credential_name,
        credential: None,
    })
}
