//! `ama proxy-status [POD[.NAMESPACE]] [-o json|yaml]` (`ama ps`): each connected proxy's
//! sync state as `istioctl proxy-status` shows it, from discovery's `/debug/syncz`.
//!
//! Ama's Delta ADS has its own resource types; each of Envoy's columns is the worst state of
//! the types it stands for ([`COLUMNS`]):
//!
//! - CDS: `Service`, `TrafficPolicy` (Envoy's clusters come from services and DestinationRules);
//! - LDS: `Node`, `Authorization`, `GatewayListener` (listeners: the proxy's own identity and
//!   ports, its authorization filters, a gateway's servers);
//! - EDS: `Service`, `Workload` (endpoints: services' endpoints and the workloads behind them);
//! - RDS: `HttpRoutes` (VirtualServices);
//! - ECDS: none (Ama has no extension configs): always `NOT SENT`, as istioctl shows a sidecar
//!   without Wasm or extension filters.
//!
//! A type is `SYNCED` when the proxy ACKed what was sent and that is the latest config,
//! `NOT SENT` when nothing was sent, `STALE` when a response awaits its ACK or a newer config is
//! not sent yet (`STALE (Never Acknowledged)` when nothing was ever ACKed), and `NACK` when the
//! proxy rejected the last response (its reason is in `-o json`). With a POD only that proxy is
//! shown (istioctl would also diff its config against istiod's; Ama does not).

use std::process::ExitCode;

use anyhow::bail;
use serde_json::{Value, json};
use xds::ads::SyncState;

use super::local::MeshName;
use super::mesh_http::{Format, admin_json, discovery_json, find_pod, structured, tabwrite};

/// How the columns map onto Ama's resource types, for `--help`.
const MAPPING: &str = "\
Each column is the worst state of the Ama Delta ADS resource types it stands for:
  CDS   Service, TrafficPolicy (clusters: services and DestinationRules)
  LDS   Node, Authorization, GatewayListener (the proxy's ports, authorization, a gateway's servers)
  EDS   Service, Workload (endpoints)
  RDS   HttpRoutes (VirtualServices)
  ECDS  none: Ama has no extension configs (always NOT SENT)
States: SYNCED (the latest config sent and ACKed), NOT SENT, STALE (sent and not yet ACKed, or a
newer config not sent yet; \"Never Acknowledged\" when nothing was ACKed), NACK (the proxy rejected
the last response; its reason is in -o json).";

#[derive(clap::Args, Debug)]
#[command(after_help = MAPPING)]
pub struct Args {
    /// Only this proxy's pod, `POD[.NAMESPACE]`.
    pub pod: Option<String>,
    /// The pod's namespace.
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    /// Output format: short (a table), json or yaml.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Short)]
    pub output: Format,
    #[command(flatten)]
    pub mesh: MeshName,
}

/// Envoy's xDS columns and the Ama resource types each stands for.
const COLUMNS: [(&str, &[&str]); 5] = [
    ("CDS", &["Service", "TrafficPolicy"]),
    ("LDS", &["Node", "Authorization", "GatewayListener"]),
    ("EDS", &["Service", "Workload"]),
    ("RDS", &["HttpRoutes"]),
    ("ECDS", &[]),
];

/// What the ISTIOD column names: the one control plane of the mesh.
const CONTROL_PLANE: &str = "ama-discovery";

/// The state of one type of `/debug/syncz`, as discovery computed it (`None`: the proxy has
/// not subscribed to it).
fn type_sync(t: Option<&Value>) -> SyncState {
    t.and_then(|t| t.get("state"))
        .and_then(Value::as_str)
        .and_then(SyncState::parse)
        .unwrap_or(SyncState::NotSent)
}

/// One column's state for a proxy: the worst of its types (`NOT SENT` for none).
fn column_sync(types: &Value, names: &[&str]) -> SyncState {
    names
        .iter()
        .map(|n| type_sync(types.get(*n)))
        .max()
        .unwrap_or(SyncState::NotSent)
}

/// `pod.namespace` from a node id (`sidecar~10.0.0.5~pod.ns~ns.svc.cluster.local`).
fn proxy_name(node_id: &str) -> &str {
    node_id.split('~').nth(2).unwrap_or(node_id)
}

/// One row per proxy of `/debug/syncz`, sorted by name: the JSON `-o json` prints (each column's
/// state, and the raw per-type status it comes from). `version` gives a proxy's version.
fn rows(syncz: &Value, version: &dyn Fn(&str) -> String) -> Vec<Value> {
    let mut rows: Vec<Value> = syncz
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let node = p.get("proxy").and_then(Value::as_str).unwrap_or_default();
            let name = proxy_name(node);
            let types = p.get("types").cloned().unwrap_or(Value::Null);
            let mut row = json!({
                "name": name,
                "proxy": node,
                "cluster": "Kubernetes",
                "istiod": CONTROL_PLANE,
                "version": version(name),
            });
            for (column, names) in COLUMNS {
                row[column.to_ascii_lowercase()] = json!(column_sync(&types, names).text());
            }
            row["types"] = types;
            row
        })
        .collect();
    rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    rows
}

fn table(rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let mut cells = vec![text("name"), text("cluster")];
            cells.extend(COLUMNS.iter().map(|(c, _)| text(&c.to_ascii_lowercase())));
            cells.push(text("istiod"));
            cells.push(text("version"));
            cells
        })
        .collect();
    tabwrite(
        &[
            "NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION",
        ],
        &cells,
    )
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = args.mesh.dir()?.load()?;
    let syncz = discovery_json(&state, "/debug/syncz")?;
    let only = match &args.pod {
        Some(p) => {
            let pod = find_pod(&state, p, args.namespace.as_deref())?;
            Some(format!("{}.{}", pod.name, pod.namespace))
        }
        None => None,
    };
    // The proxy's own version, from its admin server (discovery's status does not carry it).
    let version = |name: &str| -> String {
        let Some((pod, ns)) = name.split_once('.') else {
            return String::new();
        };
        state
            .pods
            .iter()
            .find(|p| p.name == pod && p.namespace == ns)
            .and_then(|p| admin_json(p, "/server_info").ok())
            .and_then(|i| i.get("version").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default()
    };
    let mut rows = rows(&syncz, &version);
    if let Some(only) = &only {
        rows.retain(|r| r["name"].as_str() == Some(only.as_str()));
        if rows.is_empty() {
            bail!("proxy {only} is not connected to ama discovery");
        }
    }
    let out = match structured(args.output, &Value::Array(rows.clone()))? {
        Some(s) => s,
        None => table(&rows),
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(v: &str) -> Value {
        json!({"state": "SYNCED", "latest": v, "sent": v, "acked": v, "nacked": null, "pending": false})
    }

    fn syncz() -> Value {
        json!([
            {
                "proxy": "sidecar~10.244.0.4~sleep-1.default~default.svc.cluster.local",
                "types": {
                    "Service": synced("a"), "TrafficPolicy": synced("b"), "Node": synced("c"),
                    "Authorization": synced("d"), "GatewayListener": synced(""),
                    "Workload": synced("e"), "HttpRoutes": synced("f"),
                }
            },
            {
                "proxy": "sidecar~10.244.0.2~httpbin-1.default~default.svc.cluster.local",
                "types": {
                    "Service": synced("a"),
                    // Sent, not yet ACKed: STALE.
                    "TrafficPolicy": {"state": "STALE", "latest": "b2", "sent": "b2", "acked": "b",
                                      "pending": true},
                    // Rejected.
                    "HttpRoutes": {"state": "NACK", "latest": "f2", "sent": "f2", "acked": "f",
                                   "nacked": {"version": "f2", "nonce": "7", "error": "bad route"}},
                    // Never ACKed.
                    "Node": {"state": "STALE (Never Acknowledged)", "latest": "c", "sent": "c",
                             "acked": null},
                    // Not sent.
                    "Workload": {"state": "NOT SENT", "latest": "e", "sent": null, "acked": null},
                }
            }
        ])
    }

    #[test]
    fn states_of_a_type() {
        // Discovery computes the state (`xds::ads::TypeStatus::sync_state`); it is read here.
        assert_eq!(type_sync(None), SyncState::NotSent);
        assert_eq!(type_sync(Some(&synced("x"))), SyncState::Synced);
        assert_eq!(
            type_sync(Some(&json!({"state": "STALE (Never Acknowledged)"}))),
            SyncState::Stale { never_acked: true }
        );
        assert_eq!(type_sync(Some(&json!({"state": "??"}))), SyncState::NotSent);
    }

    #[test]
    fn table_golden_and_json() {
        let rows = rows(&syncz(), &|_| "0.1.0".to_string());
        let golden = "\
NAME                  CLUSTER        CDS        LDS                            EDS          RDS        ECDS         ISTIOD            VERSION
httpbin-1.default     Kubernetes     STALE      STALE (Never Acknowledged)     NOT SENT     NACK       NOT SENT     ama-discovery     0.1.0
sleep-1.default       Kubernetes     SYNCED     SYNCED                         SYNCED       SYNCED     NOT SENT     ama-discovery     0.1.0
";
        assert_eq!(table(&rows), golden);
        let text = serde_json::to_string(&rows).unwrap();
        let parsed: Vec<Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed[0]["name"], "httpbin-1.default");
        assert_eq!(parsed[0]["rds"], "NACK");
        assert_eq!(
            parsed[0]["types"]["HttpRoutes"]["nacked"]["error"],
            "bad route"
        );
        assert_eq!(parsed[1]["cds"], "SYNCED");
    }
}
