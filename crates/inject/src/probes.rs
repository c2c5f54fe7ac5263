//! Rewriting the app's probes so the kubelet reaches them through the proxy.
//!
//! With mutual TLS on, the kubelet (outside the mesh) cannot reach the app's ports, so Istio
//! points each HTTP, TCP and gRPC probe at the proxy's status port, path
//! `/app-health/<container>/{readyz,livez,startupz}`, and hands the original probes to the proxy
//! in `ISTIO_KUBE_APP_PROBERS` (JSON, keyed by that path; the format is Istio's, so named ports
//! are resolved to numbers). `exec` probes run inside the container and are left alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::FieldError;
use crate::sidecar::{INIT_CONTAINER_NAME, PROXY_CONTAINER_NAME, VALIDATION_CONTAINER_NAME};

/// Name of the proxy's environment variable holding the original probes.
pub const KUBE_APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// The probes the proxy runs for the kubelet, keyed by their status-port path.
pub type AppProbers = BTreeMap<String, Prober>;

/// One original probe, in Istio's JSON shape (field order as Istio writes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prober {
    /// An HTTP GET probe.
    #[serde(rename = "httpGet", skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGet>,
    /// A TCP connect probe.
    #[serde(rename = "tcpSocket", skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocket>,
    /// A gRPC health probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Grpc>,
    /// The probe's timeout.
    #[serde(rename = "timeoutSeconds", skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

/// `httpGet` of a probe, with its port resolved to a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpGet {
    /// Request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Container port.
    pub port: u16,
    /// Host to connect to instead of the pod address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `HTTP` or `HTTPS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Extra request headers.
    #[serde(rename = "httpHeaders", skip_serializing_if = "Option::is_none")]
    pub http_headers: Option<Value>,
}

/// `tcpSocket` of a probe, with its port resolved to a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpSocket {
    /// Container port.
    pub port: u16,
    /// Host to connect to instead of the pod address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `grpc` of a probe. Istio writes `"service":null` when unset; so do we.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grpc {
    /// Container port.
    pub port: u16,
    /// gRPC health service name.
    pub service: Option<String>,
}

const PROBES: [(&str, &str); 3] = [
    ("readinessProbe", "readyz"),
    ("livenessProbe", "livez"),
    ("startupProbe", "startupz"),
];

/// Rewrites the probes of every app container of `spec` (a PodSpec) to HTTP GETs on
/// `status_port` and returns the originals. Init containers are included: a native sidecar
/// (`restartPolicy: Always`) may have probes.
pub fn rewrite_app_probes(
    spec: &mut Map<String, Value>,
    status_port: u16,
) -> Result<AppProbers, Vec<FieldError>> {
    let mut probers = AppProbers::new();
    let mut errors = Vec::new();
    for list in ["initContainers", "containers"] {
        let Some(Value::Array(containers)) = spec.get_mut(list) else {
            continue;
        };
        for (i, container) in containers.iter_mut().enumerate() {
            let Some(container) = container.as_object_mut() else {
                continue;
            };
            let name = container
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if name == PROXY_CONTAINER_NAME
                || name == INIT_CONTAINER_NAME
                || name == VALIDATION_CONTAINER_NAME
            {
                continue;
            }
            let ports = named_ports(container);
            // HTTP and TCP lifecycle hooks go through the proxy too
            // (`/app-lifecycle/<container>/poststartz|prestopz`); `exec` and `sleep` stay.
            if let Some(Value::Object(lifecycle)) = container.get_mut("lifecycle") {
                for (hook, suffix) in HOOKS {
                    let Some(Value::Object(handler)) = lifecycle.get_mut(hook) else {
                        continue;
                    };
                    let path = format!("/app-lifecycle/{name}/{suffix}");
                    let at = format!("{list}[{i}].lifecycle.{hook}");
                    if points_at(handler, &path, status_port) {
                        continue;
                    }
                    match original_prober(handler, &ports, &name) {
                        Ok(Some(prober)) if prober.grpc.is_none() => {
                            point_at_status_port(handler, &path, status_port);
                            probers.insert(path, prober);
                        }
                        Ok(_) => {}
                        Err(e) => errors.push(e.under(&at)),
                    }
                }
            }
            for (field, suffix) in PROBES {
                let Some(Value::Object(probe)) = container.get_mut(field) else {
                    continue;
                };
                let path = format!("/app-health/{name}/{suffix}");
                let at = format!("{list}[{i}].{field}");
                // Already pointing at the proxy (an injected pod injected again): its original
                // is in the old proxy's ISTIO_KUBE_APP_PROBERS.
                if points_at(probe, &path, status_port) {
                    continue;
                }
                match original_prober(probe, &ports, &name) {
                    Ok(Some(prober)) => {
                        point_at_status_port(probe, &path, status_port);
                        probers.insert(path, prober);
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(e.under(&at)),
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(probers)
    } else {
        Err(errors)
    }
}

fn named_ports(container: &Map<String, Value>) -> BTreeMap<String, u16> {
    let Some(Value::Array(ports)) = container.get("ports") else {
        return BTreeMap::new();
    };
    ports
        .iter()
        .filter_map(|p| {
            let name = p.get("name")?.as_str()?;
            let port = u16::try_from(p.get("containerPort")?.as_u64()?).ok()?;
            Some((name.to_string(), port))
        })
        .collect()
}

/// Reads the original handler of a probe; `None` for `exec` (or no handler).
fn original_prober(
    probe: &Map<String, Value>,
    ports: &BTreeMap<String, u16>,
    container: &str,
) -> Result<Option<Prober>, FieldError> {
    let timeout_seconds = probe
        .get("timeoutSeconds")
        .and_then(Value::as_i64)
        .filter(|t| *t != 0);
    let text =
        |h: &Map<String, Value>, k: &str| h.get(k).and_then(Value::as_str).map(str::to_string);
    let mut prober = Prober {
        http_get: None,
        tcp_socket: None,
        grpc: None,
        timeout_seconds,
    };
    if let Some(Value::Object(h)) = probe.get("httpGet") {
        prober.http_get = Some(HttpGet {
            path: text(h, "path"),
            port: resolve_port(h.get("port"), ports, container)
                .map_err(|m| FieldError::new("httpGet.port", m))?,
            host: text(h, "host"),
            scheme: text(h, "scheme"),
            http_headers: h.get("httpHeaders").cloned(),
        });
    } else if let Some(Value::Object(t)) = probe.get("tcpSocket") {
        prober.tcp_socket = Some(TcpSocket {
            port: resolve_port(t.get("port"), ports, container)
                .map_err(|m| FieldError::new("tcpSocket.port", m))?,
            host: text(t, "host"),
        });
    } else if let Some(Value::Object(g)) = probe.get("grpc") {
        let port = match g.get("port") {
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0),
            _ => None,
        };
        prober.grpc = Some(Grpc {
            port: port
                .ok_or_else(|| FieldError::new("grpc.port", "must be a port number (1-65535)"))?,
            service: text(g, "service"),
        });
    } else {
        return Ok(None);
    }
    Ok(Some(prober))
}

/// A probe port: a number, a number in a string, or the name of one of the container's ports.
fn resolve_port(
    port: Option<&Value>,
    ports: &BTreeMap<String, u16>,
    container: &str,
) -> Result<u16, String> {
    match port {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{n} is not a port")),
        Some(Value::String(s)) => match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => ports
                .get(s)
                .copied()
                .ok_or_else(|| format!("\"{s}\" names no port of container \"{container}\"")),
        },
        Some(other) => Err(format!("{other} is not a port")),
        None => Err("missing".to_string()),
    }
}

/// Replaces the probe's handler by a GET of `path` on the status port; timings are kept. An
/// HTTP GET keeps its other fields as Istio keeps them (host, headers), its scheme turned from
/// HTTPS to HTTP: the kubelet speaks HTTP to the proxy, which speaks HTTPS to the app.
fn point_at_status_port(probe: &mut Map<String, Value>, path: &str, status_port: u16) {
    let mut get = match probe.remove("httpGet") {
        Some(Value::Object(get)) => get,
        _ => Map::new(),
    };
    for handler in ["tcpSocket", "grpc"] {
        probe.remove(handler);
    }
    get.insert("path".into(), json!(path));
    get.insert("port".into(), json!(status_port));
    if get.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
        get.insert("scheme".into(), json!("HTTP"));
    }
    probe.insert("httpGet".to_string(), Value::Object(get));
}

/// Whether a probe or hook is already a GET of `path` on the status port.
fn points_at(probe: &Map<String, Value>, path: &str, status_port: u16) -> bool {
    probe.get("httpGet").is_some_and(|get| {
        get.get("path").and_then(Value::as_str) == Some(path)
            && get.get("port").and_then(Value::as_u64) == Some(u64::from(status_port))
    })
}

/// The lifecycle hooks Istio hands to the proxy, with their status-port path suffix.
const HOOKS: [(&str, &str); 2] = [("postStart", "poststartz"), ("preStop", "prestopz")];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_http_tcp_grpc_and_keeps_exec() {
        let mut spec = json!({"containers": [{
            "name": "app",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTPS"}, "periodSeconds": 5},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 2},
            "startupProbe": {"grpc": {"port": 9090}},
        }, {
            "name": "sidecar-like",
            "livenessProbe": {"exec": {"command": ["true"]}},
        }]});
        let spec = spec.as_object_mut().unwrap();
        let probers = rewrite_app_probes(spec, 15020).unwrap();
        assert_eq!(
            serde_json::to_string(&probers).unwrap(),
            r#"{"/app-health/app/livez":{"tcpSocket":{"port":8080},"timeoutSeconds":2},"/app-health/app/readyz":{"httpGet":{"path":"/ready","port":8080,"scheme":"HTTPS"}},"/app-health/app/startupz":{"grpc":{"port":9090,"service":null}}}"#
        );
        assert_eq!(
            spec["containers"][0]["readinessProbe"],
            json!({"httpGet": {"path": "/app-health/app/readyz", "port": 15020, "scheme": "HTTP"}, "periodSeconds": 5})
        );
        assert_eq!(
            spec["containers"][1]["livenessProbe"],
            json!({"exec": {"command": ["true"]}})
        );
    }

    #[test]
    fn unknown_named_port_is_an_error() {
        let mut spec =
            json!({"containers": [{"name": "app", "livenessProbe": {"httpGet": {"port": "web"}}}]});
        let errors = rewrite_app_probes(spec.as_object_mut().unwrap(), 15020).unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "containers[0].livenessProbe.httpGet.port: \"web\" names no port of container \"app\""
        );
    }
}
