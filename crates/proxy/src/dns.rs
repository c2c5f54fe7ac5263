//! DNS endpoints: the names of ServiceEntries of `resolution: DNS` / `DNS_ROUND_ROBIN`,
//! resolved off the request path.
//!
//! [`run`] resolves every name the snapshot in force lists ([`crate::config::Snapshot::dns_names`])
//! with the system resolver (`getaddrinfo` in the pod's network namespace: its `/etc/hosts`
//! and `resolv.conf`), at once for a name it has not seen and every [`REFRESH`] after (Istio's
//! default `dnsRefreshRate`, 60 s; TTLs are not read). A failed lookup keeps the last good
//! answer, as Envoy's DNS clusters do. When an answer changes, the snapshot is rebuilt from
//! the same resources ([`crate::config::ConfigStore::refresh`]) so the clusters carry the new
//! addresses; a request never waits on DNS. Until a name has an answer, its endpoints are
//! missing (503 `UH`).
//!
//! `DNS` uses every address of every name (Envoy's `STRICT_DNS`); `DNS_ROUND_ROBIN` only the
//! first address of each answer (Envoy's `LOGICAL_DNS`, which connects to one address at a
//! time).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::ConfigStore;
use crate::drain::DrainWatcher;

/// How often a name is resolved again (Istio's default `dnsRefreshRate`).
pub const REFRESH: Duration = Duration::from_secs(60);
/// How often the snapshot is checked for names not resolved yet.
const POLL: Duration = Duration::from_millis(200);
/// How long one lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The last good answer of each name. Read when a snapshot is built, written by [`run`].
#[derive(Debug, Default)]
pub struct DnsTable {
    answers: RwLock<HashMap<String, Arc<[IpAddr]>>>,
}

impl DnsTable {
    /// The last good answer for `name`, if any.
    pub fn get(&self, name: &str) -> Option<Arc<[IpAddr]>> {
        self.answers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Records `addrs` for `name`; true when the answer changed.
    pub fn set(&self, name: &str, addrs: Arc<[IpAddr]>) -> bool {
        let mut answers = self
            .answers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if answers.get(name).is_some_and(|a| *a == addrs) {
            return false;
        }
        answers.insert(name.to_string(), addrs);
        true
    }

    /// `s` with one endpoint per address of its DNS endpoints (after its IP endpoints); a name
    /// without an answer gives none.
    pub fn with_endpoints(&self, s: &xds::Service) -> xds::Service {
        let mut out = s.clone();
        for ep in &s.dns_endpoints {
            let Some(addrs) = self.get(&ep.hostname) else {
                continue;
            };
            let take = if s.resolution == xds::Resolution::DnsRoundRobin {
                1
            } else {
                addrs.len()
            };
            for address in addrs.iter().take(take) {
                out.endpoints.push(xds::Endpoint {
                    address: *address,
                    ports: ep.ports.clone(),
                    workload_uid: None,
                    labels: ep.labels.clone(),
                    tls_mode: xds::TlsMode::Disabled,
                    identity: None,
                    plaintext_ports: Default::default(),
                });
            }
        }
        out
    }
}

/// The addresses of `name`: its IPv4 addresses (Istio's clusters resolve `V4_ONLY` outside
/// dual-stack meshes), its IPv6 ones only when it has no IPv4 one; `None` when the lookup
/// fails, times out or finds nothing.
async fn lookup(name: &str) -> Option<Arc<[IpAddr]>> {
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, 0))).await;
    let mut addrs: Vec<IpAddr> = match found {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        Ok(Err(e)) => {
            tracing::debug!(name, error = %e, "DNS lookup failed; keeping the last answer");
            return None;
        }
        Err(_) => {
            tracing::debug!(name, "DNS lookup timed out; keeping the last answer");
            return None;
        }
    };
    if addrs.iter().any(IpAddr::is_ipv4) {
        addrs.retain(IpAddr::is_ipv4);
    }
    addrs.sort();
    addrs.dedup();
    (!addrs.is_empty()).then(|| Arc::from(addrs))
}

/// Resolves the DNS endpoints of the snapshot in force until the drain starts.
pub async fn run(store: Arc<ConfigStore>, drain: DrainWatcher) {
    // When each name was last looked up.
    let mut looked_up: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let due: Vec<String> = {
            let snap = store.load();
            let now = Instant::now();
            let mut names: Vec<String> = snap
                .dns_names()
                .filter(|n| {
                    looked_up
                        .get(*n)
                        .is_none_or(|t| now.duration_since(*t) >= REFRESH)
                })
                .map(str::to_string)
                .collect();
            names.sort();
            names.dedup();
            names
        };
        let mut changed = false;
        for name in due {
            looked_up.insert(name.clone(), Instant::now());
            if let Some(addrs) = lookup(&name).await {
                changed |= store.dns().set(&name, addrs);
            }
        }
        if changed && let Err(e) = store.refresh() {
            tracing::error!(error = %e, "snapshot rebuild after a DNS change failed");
        }
        tokio::select! {
            _ = drain.signaled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(resolution: xds::Resolution) -> xds::Service {
        xds::Service {
            hostname: "api.example.com".into(),
            name: "api.example.com".into(),
            namespace: "default".into(),
            resolution,
            ports: vec![xds::ServicePort {
                port: 80,
                ..Default::default()
            }],
            dns_endpoints: vec![
                xds::DnsEndpoint {
                    hostname: "a.example.com".into(),
                    ..Default::default()
                },
                xds::DnsEndpoint {
                    hostname: "unresolved.example.com".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn answers_become_endpoints_one_per_name_for_round_robin() {
        let table = DnsTable::default();
        let ips: Arc<[IpAddr]> = Arc::from(vec![
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        ]);
        assert!(table.set("a.example.com", ips.clone()));
        assert!(!table.set("a.example.com", ips), "same answer: no change");
        let strict = table.with_endpoints(&service(xds::Resolution::Dns));
        let addrs: Vec<String> = strict
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(addrs, ["10.0.0.1", "10.0.0.2"]);
        assert!(
            strict
                .endpoints
                .iter()
                .all(|e| e.tls_mode == xds::TlsMode::Disabled)
        );
        let logical = table.with_endpoints(&service(xds::Resolution::DnsRoundRobin));
        assert_eq!(logical.endpoints.len(), 1);
    }

    #[tokio::test]
    async fn localhost_resolves_from_the_hosts_file() {
        // Only names /etc/hosts answers: no query may leave the machine in tests.
        let found = lookup("localhost").await.expect("localhost resolves");
        assert!(found.iter().all(IpAddr::is_loopback), "{found:?}");
    }
}
