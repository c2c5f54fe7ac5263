//! kubectl's output: the `get pods` and `get services` tables (columns padded by three spaces,
//! ages as kubectl prints them) and the objects for `-o json|yaml`.

use serde_json::{Value, json};

use crate::state::{ContainerState, PodRecord, ServiceRecord, State};

/// kubectl's age: `88s`, `5m3s`, `60m`, `4h24m`, `2d3h`, `45d`, `2y100d`.
pub fn age(seconds: u64) -> String {
    let s = seconds;
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        return match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return match h % 24 {
            0 => format!("{}d", h / 24),
            r => format!("{}d{r}h", h / 24),
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    let y = h / (24 * 365);
    if h < 24 * 365 * 8 {
        return format!("{y}y{}d", (h / 24) % 365);
    }
    format!("{y}y")
}

/// Rows as kubectl's tabwriter prints them: left-aligned, three spaces between columns.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 3;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `ama get pods` (`wide`: with IP and NODE columns, as `-o wide`). All namespaces when
/// `namespace` is None (with a NAMESPACE column).
pub fn pods(state: &State, namespace: Option<&str>, wide: bool, now: u64, node: &str) -> String {
    let mut header = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
    if namespace.is_none() {
        header.insert(0, "NAMESPACE");
    }
    if wide {
        header.extend(["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]);
    }
    let rows: Vec<Vec<String>> = state
        .pods
        .iter()
        .filter(|p| namespace.is_none_or(|ns| p.namespace == ns))
        .map(|p| {
            let (ready, total) = p.ready();
            let mut row = vec![
                p.name.clone(),
                format!("{ready}/{total}"),
                p.status(),
                restarts(p, now),
                age(now.saturating_sub(p.created_at)),
            ];
            if namespace.is_none() {
                row.insert(0, p.namespace.clone());
            }
            if wide {
                row.extend([
                    p.ip.to_string(),
                    node.to_string(),
                    "<none>".into(),
                    "<none>".into(),
                ]);
            }
            row
        })
        .collect();
    if rows.is_empty() {
        return no_resources(namespace);
    }
    render(&header, &rows)
}

/// The EXTERNAL-IP column as kubectl fills it: a LoadBalancer's address, `<pending>` while it
/// has none, `<none>` for the other types.
fn external_ip(s: &crate::state::ServiceRecord) -> String {
    let address = s
        .object
        .pointer("/status/loadBalancer/ingress/0/ip")
        .and_then(Value::as_str);
    match (s.service_type.as_str(), address) {
        (_, Some(ip)) => ip.to_string(),
        ("LoadBalancer", None) => "<pending>".into(),
        _ => "<none>".into(),
    }
}

/// `ama get services`.
pub fn services(state: &State, namespace: Option<&str>, wide: bool, now: u64) -> String {
    let mut header = vec![
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ];
    if namespace.is_none() {
        header.insert(0, "NAMESPACE");
    }
    if wide {
        header.push("SELECTOR");
    }
    let rows: Vec<Vec<String>> = state
        .services
        .iter()
        .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
        .map(|s| {
            let mut row = vec![
                s.name.clone(),
                s.service_type.clone(),
                s.cluster_ip.map_or("None".into(), |ip| ip.to_string()),
                external_ip(s),
                if s.ports.is_empty() {
                    "<none>".into()
                } else {
                    s.ports.join(",")
                },
                age(now.saturating_sub(s.created_at)),
            ];
            if namespace.is_none() {
                row.insert(0, s.namespace.clone());
            }
            if wide {
                let selector = s
                    .object
                    .pointer("/spec/selector")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "<none>".into());
                row.push(selector);
            }
            row
        })
        .collect();
    if rows.is_empty() {
        return no_resources(namespace);
    }
    render(&header, &rows)
}

/// kubectl's RESTARTS: `0`, or `2 (15s ago)` with the time of the last exit.
fn restarts(p: &PodRecord, now: u64) -> String {
    match (p.restarts(), p.last_restart_at()) {
        (0, _) => "0".into(),
        (n, Some(at)) => format!("{n} ({} ago)", age(now.saturating_sub(at))),
        (n, None) => n.to_string(),
    }
}

fn no_resources(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("No resources found in {ns} namespace.\n"),
        None => "No resources found\n".to_string(),
    }
}

/// A pod object with its status, as `kubectl get pod -o json` shows it.
pub fn pod_object(p: &PodRecord, node_ip: &str) -> Value {
    let mut o = p.object.clone();
    let status = |c: &crate::state::ContainerRecord| {
        let state = match &c.state {
            ContainerState::Waiting { reason } => json!({"waiting": {"reason": reason}}),
            ContainerState::Running { started_at } => {
                json!({"running": {"startedAt": rfc3339(*started_at)}})
            }
            ContainerState::Terminated { exit_code, reason } => {
                json!({"terminated": {"exitCode": exit_code, "reason": reason}})
            }
        };
        json!({"name": c.name, "ready": c.ready, "restartCount": c.restarts,
            "started": matches!(c.state, ContainerState::Running { .. }), "state": state})
    };
    let phase = match p.status().as_str() {
        "Running" => "Running",
        s if s.starts_with("Init:") || s == "Pending" => "Pending",
        _ => "Running",
    };
    let ready = p.is_ready();
    let condition =
        |t: &str, ok: bool| json!({"type": t, "status": if ok { "True" } else { "False" }});
    if let Value::Object(map) = &mut o {
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.insert("creationTimestamp".into(), json!(rfc3339(p.created_at)));
            if let Some(at) = p.deleted_at {
                meta.insert("deletionTimestamp".into(), json!(rfc3339(at)));
            }
        }
        map.insert(
            "status".into(),
            json!({
                "phase": phase,
                "podIP": p.ip.to_string(),
                "podIPs": [{"ip": p.ip.to_string()}],
                "hostIP": node_ip,
                "conditions": [condition("Initialized", p.init.iter().all(|c| matches!(c.state, ContainerState::Terminated { exit_code: 0, .. }))),
                    condition("Ready", ready), condition("ContainersReady", ready)],
                "initContainerStatuses": p.init.iter().map(status).collect::<Vec<_>>(),
                "containerStatuses": p.containers.iter().map(status).collect::<Vec<_>>(),
            }),
        );
    }
    o
}

/// A Service object with its creation time.
pub fn service_object(s: &ServiceRecord) -> Value {
    let mut o = s.object.clone();
    if let Some(Value::Object(meta)) = o.get_mut("metadata") {
        meta.insert("creationTimestamp".into(), json!(rfc3339(s.created_at)));
    }
    o
}

/// kubectl's list wrapper.
pub fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
}

/// Seconds since the epoch as RFC 3339 (`2020-03-07T06:44:22Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_as_kubectl_prints_them() {
        assert_eq!(age(88), "88s");
        assert_eq!(age(5 * 60 + 3), "5m3s");
        assert_eq!(age(60 * 60), "60m");
        assert_eq!(age(4 * 3600 + 24 * 60), "4h24m");
        assert_eq!(age(10 * 3600), "10h");
        assert_eq!(age(51 * 3600), "2d3h");
        assert_eq!(age(45 * 86_400), "45d");
    }

    #[test]
    fn columns_padded_by_three_spaces() {
        let out = render(
            &["NAME", "READY", "STATUS"],
            &[vec![
                "httpbin-deployment-9bfd96975-px5lv".into(),
                "2/2".into(),
                "Running".into(),
            ]],
        );
        assert_eq!(
            out,
            "NAME                                 READY   STATUS\n\
             httpbin-deployment-9bfd96975-px5lv   2/2     Running\n"
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(1_583_563_462), "2020-03-07T06:44:22Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
