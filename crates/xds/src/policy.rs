//! `TrafficPolicy`: client-side policy for a host, translated from DestinationRule.
//!
//! The shape is DestinationRule's: a policy for the host with per-port overrides, and named
//! subsets (endpoints selected by labels) with policies of their own. Which settings apply to a
//! request to port P of subset S is [`TrafficPolicy::effective`], Istio's precedence
//! (`MergeTrafficPolicy`): the host's policy, its port-level settings for P replacing it whole,
//! then each field S's policy sets replacing the host's, then S's port-level settings for P
//! replacing those four fields whole (unset ones fall back to the proxy's defaults).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::service::LbPolicy;
use crate::validate::{ValidationErrors, check_port};

/// TCP keepalive probes on upstream connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Probes without answer before the connection is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    /// Idle time before the first probe, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
    /// Time between probes, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
}

/// TCP connection limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpPool {
    /// Most connections to all endpoints of the host (`maxConnections`); beyond it, requests
    /// wait as pending (HTTP/1) and opaque connections fail with `UO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Connect timeout in milliseconds (Istio's default is 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// Keepalive probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Upstream connections are closed this long after they opened, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration_ms: Option<u64>,
    /// Idle opaque connections are closed after this long, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
}

/// HTTP request limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPool {
    /// Most requests waiting for a connection (`http1MaxPendingRequests`); beyond it, 503 `UO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Most requests in flight to the host (`http2MaxRequests`); beyond it, 503 `UO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Most requests per upstream connection before it is retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Most retries in flight to the host at once (Istio leaves Envoy's default, unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Idle upstream connections are closed after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// `h2UpgradePolicy`: `Some(true)` speaks HTTP/2 to the host, `Some(false)` never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade: Option<bool>,
    /// Speak the client's HTTP version upstream (`useClientProtocol`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_client_protocol: bool,
}

/// Connection pool settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// TCP settings.
    #[serde(default)]
    pub tcp: TcpPool,
    /// HTTP settings.
    #[serde(default)]
    pub http: HttpPool,
}

/// Outlier detection: endpoints that fail are ejected from balancing for a while. Unset fields
/// take Envoy's defaults as Istio leaves them (5 consecutive 5xx, 10 s interval, 30 s base
/// ejection, 10 % most ejected).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx (and local failures, unless split) before ejection; 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive 502, 503, 504 (and connect failures) before ejection; 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive locally originated failures (connect, reset, timeout) before ejection, when
    /// `split_external_local_origin_errors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
    /// Count local failures apart from the upstream's 5xx.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split_external_local_origin_errors: bool,
    /// Sweep interval in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// Base ejection time in milliseconds, multiplied by the number of times the endpoint was
    /// ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time_ms: Option<u64>,
    /// Most endpoints ejected at once, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    /// Below this share of healthy endpoints, ejection is ignored (panic mode), in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<u32>,
}

/// What a consistent hash is taken over.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    /// A request header's value.
    Header(String),
    /// A cookie's value; with a TTL, the proxy sets the cookie when the request has none.
    Cookie {
        /// Cookie name.
        name: String,
        /// Cookie path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// Lifetime of a generated cookie, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// The client's IP address.
    SourceIp,
    /// A query parameter's value.
    QueryParameter(String),
}

/// How hashes map to endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashAlgorithm {
    /// Ketama ring (Istio's default) with at least this many entries (1024 when 0).
    Ring {
        /// Minimum ring size.
        #[serde(default)]
        minimum_ring_size: u64,
    },
    /// Maglev table (65537 entries when 0).
    Maglev {
        /// Table size (a prime).
        #[serde(default)]
        table_size: u64,
    },
}

/// Consistent hashing (`loadBalancer.consistentHash`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    /// What is hashed.
    pub key: HashKey,
    /// How.
    pub algorithm: HashAlgorithm,
}

/// Load balancing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// A simple policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<LbPolicy>,
    /// Consistent hashing (wins over `simple`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
}

/// TLS toward the destination (`trafficPolicy.tls.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plaintext.
    Disable,
    /// TLS, the server verified against `ca_certificates` (or the system roots).
    Simple,
    /// TLS with a client certificate.
    Mutual,
    /// Istio's mTLS with the workload certificate.
    #[default]
    IstioMutual,
}

/// TLS settings toward the destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTls {
    /// Mode.
    pub mode: ClientTlsMode,
    /// SNI to send (SIMPLE, MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Names the server's certificate must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// CA bundle file to verify the server with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Client certificate file (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Client key file (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Skip verifying the server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// The Secret a DestinationRule's `credentialName` names, as `<rule's namespace>/<name>`.
    /// When set, the certificates come from `credential` only (the file fields are unset), and
    /// a missing `credential` fails every connection of the cluster: the control plane could
    /// not (or may not) send it, and nothing goes out in plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// The certificates of the Secret `credential_name`, inline, sent only to the proxies the
    /// DestinationRule's `workloadSelector` selects (or, for a rule without selector, to the
    /// gateway proxies of a namespace that has the Secret, from theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<ClientCredential>,
}

/// A DestinationRule's client certificate, key and CA, as PEM, read by the control plane from
/// the Secret `credentialName` names. `Debug` prints no key.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCredential {
    /// Where it came from (`Secret default/client-credential`), for messages.
    pub source: String,
    /// The client certificate chain, PEM, leaf first (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_chain: Option<String>,
    /// The client private key, PEM (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// CA certificates that verify the server, PEM (none: the system roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = |s: &Option<String>| s.as_ref().map(|c| format!("<{} bytes>", c.len()));
        f.debug_struct("ClientCredential")
            .field("source", &self.source)
            .field("cert_chain", &len(&self.cert_chain))
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .field("ca_certificates", &len(&self.ca_certificates))
            .finish()
    }
}

/// The four settings a policy level carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// Load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Connection pool limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// Outlier detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS toward the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
}

/// Settings for one port, replacing the level's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSettings {
    /// The service port.
    pub port: u16,
    /// Its settings.
    #[serde(default)]
    pub settings: Settings,
}

/// One level of policy: settings and their per-port overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Settings for every port.
    #[serde(default)]
    pub settings: Settings,
    /// Per-port replacements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortSettings>,
}

impl Policy {
    fn port(&self, port: u16) -> Option<&Settings> {
        self.port_level_settings
            .iter()
            .find(|p| p.port == port)
            .map(|p| &p.settings)
    }
}

/// A named set of a service's endpoints, selected by labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Name (`v1`), the `cluster` part after `outbound|80|`.
    pub name: String,
    /// Labels an endpoint must have, all of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The subset's own policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
}

/// Client policy for one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Name (`default/httpbin`).
    pub name: String,
    /// The service hostname this policy applies to.
    pub host: String,
    /// The host's policy.
    #[serde(default)]
    pub policy: Policy,
    /// Subsets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
}

impl TrafficPolicy {
    /// Every TLS setting of the policy, at every level, for changing.
    pub fn tls_settings_mut(&mut self) -> impl Iterator<Item = &mut ClientTls> {
        std::iter::once(&mut self.policy)
            .chain(self.subsets.iter_mut().filter_map(|s| s.policy.as_mut()))
            .flat_map(|p| {
                std::iter::once(&mut p.settings)
                    .chain(p.port_level_settings.iter_mut().map(|ps| &mut ps.settings))
            })
            .filter_map(|s| s.tls.as_mut())
    }

    /// Replaces every private key of an inline credential with `[redacted]` (for config dumps).
    pub fn redact_keys(&mut self) {
        for t in self.tls_settings_mut() {
            if let Some(key) = t.credential.as_mut().and_then(|c| c.private_key.as_mut()) {
                *key = "[redacted]".to_string();
            }
        }
    }

    /// The subset named `name`.
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }

    /// The settings for requests to `port` of `subset` (the whole host when `None`), by
    /// Istio's precedence (see the module docs).
    pub fn effective(&self, port: u16, subset: Option<&str>) -> Settings {
        let mut out = self
            .policy
            .port(port)
            .unwrap_or(&self.policy.settings)
            .clone();
        let Some(sp) = subset
            .and_then(|s| self.subset(s))
            .and_then(|s| s.policy.as_ref())
        else {
            return out;
        };
        let s = &sp.settings;
        if s.load_balancer.is_some() {
            out.load_balancer = s.load_balancer.clone();
        }
        if s.connection_pool.is_some() {
            out.connection_pool = s.connection_pool.clone();
        }
        if s.outlier_detection.is_some() {
            out.outlier_detection = s.outlier_detection.clone();
        }
        if s.tls.is_some() {
            out.tls = s.tls.clone();
        }
        if let Some(p) = sp.port(port) {
            out = p.clone();
        }
        out
    }

    pub(crate) fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        if self.host.is_empty() {
            errs.push(format!("{path}.host"), "must not be empty");
        }
        self.policy.validate(&format!("{path}.policy"), errs);
        for (i, s) in self.subsets.iter().enumerate() {
            let sp = format!("{path}.subsets[{i}]");
            if s.name.is_empty() {
                errs.push(format!("{sp}.name"), "must not be empty");
            }
            if self.subsets[..i].iter().any(|o| o.name == s.name) {
                errs.push(format!("{sp}.name"), format!("duplicate subset {}", s.name));
            }
            if let Some(p) = &s.policy {
                p.validate(&format!("{sp}.policy"), errs);
            }
        }
    }
}

impl Policy {
    fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        self.settings.validate(&format!("{path}.settings"), errs);
        for (i, p) in self.port_level_settings.iter().enumerate() {
            let pp = format!("{path}.portLevelSettings[{i}]");
            check_port(errs, &format!("{pp}.port"), p.port);
            p.settings.validate(&format!("{pp}.settings"), errs);
        }
    }
}

impl Settings {
    fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        if let Some(pool) = &self.connection_pool {
            let pp = format!("{path}.connectionPool");
            for (field, v) in [
                ("tcp.maxConnections", pool.tcp.max_connections),
                ("http.maxPendingRequests", pool.http.max_pending_requests),
                ("http.maxRequests", pool.http.max_requests),
                (
                    "http.maxRequestsPerConnection",
                    pool.http.max_requests_per_connection,
                ),
            ] {
                if v == Some(0) {
                    errs.push(format!("{pp}.{field}"), "must be positive");
                }
            }
            if pool.tcp.connect_timeout_ms == Some(0) {
                errs.push(format!("{pp}.tcp.connectTimeoutMs"), "must be positive");
            }
        }
        if let Some(o) = &self.outlier_detection {
            let op = format!("{path}.outlierDetection");
            if o.max_ejection_percent.is_some_and(|p| p > 100) {
                errs.push(format!("{op}.maxEjectionPercent"), "must be 0..100");
            }
            if o.min_health_percent.is_some_and(|p| p > 100) {
                errs.push(format!("{op}.minHealthPercent"), "must be 0..100");
            }
            if o.interval_ms == Some(0) {
                errs.push(format!("{op}.intervalMs"), "must be positive");
            }
        }
        // With `credentialName`, a missing credential is the control plane's fail-closed
        // marker, not an error.
        if let Some(tls) = &self.tls
            && tls.mode == ClientTlsMode::Mutual
            && tls.credential_name.is_none()
            && (tls.client_certificate.is_none() || tls.private_key.is_none())
        {
            errs.push(
                format!("{path}.tls"),
                "MUTUAL needs clientCertificate and privateKey, or credentialName",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(p: LbPolicy) -> Option<LoadBalancer> {
        Some(LoadBalancer {
            simple: Some(p),
            consistent_hash: None,
        })
    }

    fn pool(max: u32) -> Option<ConnectionPool> {
        let mut c = ConnectionPool::default();
        c.http.max_requests = Some(max);
        Some(c)
    }

    #[test]
    fn inline_client_credentials_are_redacted_and_mark_fail_closed() {
        let tls = ClientTls {
            mode: ClientTlsMode::Mutual,
            credential_name: Some("default/client-credential".into()),
            credential: Some(ClientCredential {
                source: "Secret default/client-credential".into(),
                cert_chain: Some("CERT".into()),
                private_key: Some("SECRETKEY".into()),
                ca_certificates: None,
            }),
            ..ClientTls::default()
        };
        assert!(!format!("{tls:?}").contains("SECRETKEY"));
        let mut tp = TrafficPolicy {
            name: "default/r".into(),
            host: "r.example".into(),
            policy: Policy {
                settings: Settings::default(),
                port_level_settings: vec![PortSettings {
                    port: 443,
                    settings: Settings {
                        tls: Some(tls.clone()),
                        ..Settings::default()
                    },
                }],
            },
            subsets: vec![],
        };
        // A credentialName without its credential is valid: the proxy fails it closed.
        let mut errs = ValidationErrors::default();
        let mut marker = tp.clone();
        for t in marker.tls_settings_mut() {
            t.credential = None;
        }
        marker.validate("p", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        // Without credentialName, MUTUAL still needs files.
        for t in marker.tls_settings_mut() {
            t.credential_name = None;
        }
        marker.validate("p", &mut errs);
        assert!(!errs.is_empty());
        tp.redact_keys();
        let json = serde_json::to_string(&tp).expect("json");
        assert!(
            !json.contains("SECRETKEY") && json.contains("[redacted]"),
            "{json}"
        );
    }

    #[test]
    fn precedence_is_istios() {
        let tp = TrafficPolicy {
            name: "default/r".into(),
            host: "r.default.svc.cluster.local".into(),
            policy: Policy {
                settings: Settings {
                    load_balancer: lb(LbPolicy::Random),
                    connection_pool: pool(10),
                    ..Settings::default()
                },
                port_level_settings: vec![PortSettings {
                    port: 9080,
                    settings: Settings {
                        load_balancer: lb(LbPolicy::RoundRobin),
                        ..Settings::default()
                    },
                }],
            },
            subsets: vec![
                Subset {
                    name: "v1".into(),
                    labels: BTreeMap::new(),
                    policy: Some(Policy {
                        settings: Settings {
                            connection_pool: pool(1),
                            ..Settings::default()
                        },
                        port_level_settings: vec![],
                    }),
                },
                Subset {
                    name: "v2".into(),
                    labels: BTreeMap::new(),
                    policy: Some(Policy {
                        settings: Settings::default(),
                        port_level_settings: vec![PortSettings {
                            port: 80,
                            settings: Settings::default(),
                        }],
                    }),
                },
            ],
        };
        // The host's settings; its port-level ones replace them whole.
        assert_eq!(tp.effective(80, None).connection_pool, pool(10));
        let p9080 = tp.effective(9080, None);
        assert_eq!(p9080.load_balancer, lb(LbPolicy::RoundRobin));
        assert_eq!(p9080.connection_pool, None);
        // A subset's field wins, the others are inherited.
        let v1 = tp.effective(80, Some("v1"));
        assert_eq!(v1.connection_pool, pool(1));
        assert_eq!(v1.load_balancer, lb(LbPolicy::Random));
        // A subset's port-level settings replace everything, even with nothing.
        assert_eq!(tp.effective(80, Some("v2")), Settings::default());
        assert_eq!(tp.effective(81, Some("v2")).connection_pool, pool(10));
    }
}
