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
        serde_json::json!({
            "version": snap.version,
            "node": {
                "workload": &*snap.me_info.workload,
                "namespace": &*snap.me_info.namespace,
                "identity": &*snap.me_info.principal,
            },
            "resources": &*snap.resources,
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
                "ca_cert": [{ "path": "ROOTCA" }],
            }]
        })
    }

    /// Envoy's `/clusters` text layout: `<cluster>::<host>::<stat>::<value>` lines.
    fn clusters(&self) -> String {
        let snap = self.0.store.load();
        let mut out = String::new();
        for s in &snap.resources.services {
            for p in &s.ports {
                let cluster = format!("outbound|{}||{}", p.port, s.hostname);
                let _ = writeln!(out, "{cluster}::observability_name::{cluster}");
                for ep in &s.endpoints {
                    let addr = std::net::SocketAddr::new(ep.address, s.endpoint_port(ep, p));
                    let _ = writeln!(out, "{cluster}::{addr}::health_flags::healthy");
                    let _ = writeln!(
                        out,
                        "{cluster}::{addr}::rq_active::{}",
                        self.0.load.active(addr)
                    );
                }
            }
        }
        out.push_str("PassthroughCluster::observability_name::PassthroughCluster\n");
        out
    }
}
