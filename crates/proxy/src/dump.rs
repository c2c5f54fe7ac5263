//! What the admin server (15000) shows of the traffic side: the config dump and the clusters.

use std::fmt::Write;
use std::sync::Arc;

use crate::ProxyInputs;
use crate::admin::AdminSource;

/// [`AdminSource`] over the proxy's inputs; reads the current snapshot on each call.
#[derive(Debug, Clone)]
pub struct TrafficAdmin(pub Arc<ProxyInputs>);

impl AdminSource for TrafficAdmin {
    fn config_dump(&self) -> serde_json::Value {
        let snap = self.0.store.load();
        // Private keys (gateways', DestinationRules' credentialName) never leave the process,
        // as Envoy's dump shows `[redacted]`. A dump is rare: the copy costs nothing that matters.
        let mut resources = (*snap.resources).clone();
        for l in &mut resources.gateway_listeners {
            l.redact_keys();
        }
        for p in &mut resources.traffic_policies {
            p.redact_keys();
        }
        serde_json::json!({
            "version": snap.version,
            "node": {
                "workload": &*snap.me_info.workload,
                "namespace": &*snap.me_info.namespace,
                "identity": &*snap.me_info.principal,
            },
            "resources": &resources,
        })
    }

    /// Envoy's `/certs` layout, for the one workload certificate and its root: serial, SPIFFE id,
    /// validity, so `rotation happened` can be read from outside (`istioctl proxy-config secret`).
    fn certs(&self) -> serde_json::Value {
        let Some(tls) = &self.0.tls else {
            return serde_json::json!({ "certificates": [] });
        };
        let cert = tls.manager().current();
        let time = |t: std::time::SystemTime| {
            let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let dt = time::OffsetDateTime::UNIX_EPOCH + since;
            dt.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let days_left = cert
            .not_after()
            .duration_since(std::time::SystemTime::now())
            .map(|d| d.as_secs() / 86_400)
            .unwrap_or(0);
        // The roots' serial and validity, for `proxy-config secret`'s ROOTCA row; a root that
        // does not parse (it was verified when installed) shows its path only.
        let roots: Vec<serde_json::Value> = cert
            .chain()
            .roots()
            .iter()
            .map(|der| {
                let Ok((_, root)) = x509_parser::parse_x509_certificate(der) else {
                    return serde_json::json!({ "path": "ROOTCA" });
                };
                let validity = root.validity();
                let rfc3339 = |t: &x509_parser::time::ASN1Time| {
                    t.to_datetime()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                };
                serde_json::json!({
                    "path": "ROOTCA",
                    "serial_number": root.raw_serial_as_string().replace(':', ""),
                    "valid_from": rfc3339(&validity.not_before),
                    "expiration_time": rfc3339(&validity.not_after),
                })
            })
            .collect();
        serde_json::json!({
            "certificates": [{
                "cert_chain": [{
                    "path": "default",
                    "serial_number": cert.serial_hex(),
                    "subject_alt_names": [{ "uri": cert.id().to_string() }],
                    "days_until_expiration": days_left.to_string(),
                    "valid_from": time(cert.not_before()),
                    "expiration_time": time(cert.not_after()),
                }],
                "ca_cert": roots,
            }]
        })
    }

    fn cluster_stats(&self) -> String {
        let snap = self.0.store.load();
        let mut out = String::new();
        for c in snap.services.iter().flat_map(|s| &s.clusters) {
            for (stat, v) in c.state.stats.values() {
                let _ = writeln!(out, "cluster.{}.{stat}: {v}", c.name);
            }
            for (stat, v) in c.state.circuit.stats.snapshot().iter() {
                let _ = writeln!(out, "cluster.{}.{stat}: {v}", c.name);
            }
            if let Some(o) = &c.outlier {
                for (stat, v) in o.stats().iter() {
                    let _ = writeln!(out, "cluster.{}.outlier_detection.{stat}: {v}", c.name);
                }
            }
        }
        // The jwt_authn and RBAC filters' counters beside the clusters' (the traffic side's
        // Envoy stats).
        out.push_str(&self.0.request_authn.stats().envoy_lines());
        out.push_str(&self.0.authz.stats().envoy_lines());
        out
    }

    /// Envoy's `/clusters` text layout: `<cluster>::<host>::<stat>::<value>` lines, one
    /// cluster per service port and per subset, with the circuit-breaker thresholds in force
    /// and each endpoint's requests in flight and health.
    fn clusters(&self) -> String {
        const UNLIMITED: u32 = u32::MAX;
        let snap = self.0.store.load();
        let mut out = String::new();
        for c in snap.services.iter().flat_map(|s| &s.clusters) {
            let name = &c.name;
            let _ = writeln!(out, "{name}::observability_name::{name}");
            let pool = c.settings.connection_pool.clone().unwrap_or_default();
            for (stat, v) in [
                ("max_connections", pool.tcp.max_connections),
                ("max_pending_requests", pool.http.max_pending_requests),
                ("max_requests", pool.http.max_requests),
                ("max_retries", pool.http.max_retries),
            ] {
                let _ = writeln!(
                    out,
                    "{name}::default_priority::{stat}::{}",
                    v.unwrap_or(UNLIMITED)
                );
            }
            let _ = writeln!(out, "{name}::added_via_api::true");
            for ep in c.endpoints.iter() {
                let addr = ep.addr;
                let _ = writeln!(out, "{name}::{addr}::rq_active::{}", ep.active());
                let _ = writeln!(
                    out,
                    "{name}::{addr}::health_flags::{}",
                    c.health_flags(addr)
                );
                let _ = writeln!(out, "{name}::{addr}::weight::1");
            }
        }
        out.push_str("BlackHoleCluster::observability_name::BlackHoleCluster\n");
        out.push_str("PassthroughCluster::observability_name::PassthroughCluster\n");
        out
    }
}
