//! Per-pod overrides: the sidecar labels and annotations of a pod, parsed and checked.
//!
//! Every annotation in [`crate::annotation`] that injection honours is read here, so that a bad
//! value is reported once, with its key, before anything is built. Unset annotations are `None`:
//! the mesh config and values decide.

use std::collections::BTreeMap;

use crate::annotation as ann;
use crate::label;
use crate::mesh::ProxyConfig;
use crate::validate::{CidrList, InterceptionMode, PortList, parse_bool, parse_quantity};

/// Where a bad value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataField {
    /// `metadata.labels`
    Labels,
    /// `metadata.annotations`
    Annotations,
}

impl MetadataField {
    /// The field name under `metadata`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetadataField::Labels => "labels",
            MetadataField::Annotations => "annotations",
        }
    }
}

/// A label or annotation whose value is not in its language.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}[\"{key}\"]: {message}", field.as_str())]
pub struct OverrideError {
    /// Labels or annotations.
    pub field: MetadataField,
    /// The key of the label or annotation.
    pub key: String,
    /// What is wrong, quoting the value.
    pub message: String,
}

/// The sidecar settings a pod sets for itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidecarOverrides {
    /// `sidecar.istio.io/inject`, label first, then annotation.
    pub inject: Option<bool>,
    /// Already injected: `sidecar.istio.io/status` is present.
    pub already_injected: bool,
    /// `sidecar.istio.io/proxyImage`
    pub proxy_image: Option<String>,
    /// `sidecar.istio.io/proxyCPU`
    pub proxy_cpu: Option<String>,
    /// `sidecar.istio.io/proxyMemory`
    pub proxy_memory: Option<String>,
    /// `sidecar.istio.io/proxyCPULimit`
    pub proxy_cpu_limit: Option<String>,
    /// `sidecar.istio.io/proxyMemoryLimit`
    pub proxy_memory_limit: Option<String>,
    /// `sidecar.istio.io/interceptionMode`
    pub interception_mode: Option<InterceptionMode>,
    /// `sidecar.istio.io/rewriteAppHTTPProbers`
    pub rewrite_app_http_probers: Option<bool>,
    /// `sidecar.istio.io/logLevel`
    pub log_level: Option<String>,
    /// `sidecar.istio.io/componentLogLevel`
    pub component_log_level: Option<String>,
    /// `sidecar.istio.io/agentLogLevel`
    pub agent_log_level: Option<String>,
    /// `status.sidecar.istio.io/port`
    pub status_port: Option<u16>,
    /// `traffic.sidecar.istio.io/includeInboundPorts`
    pub include_inbound_ports: Option<PortList>,
    /// `traffic.sidecar.istio.io/excludeInboundPorts`
    pub exclude_inbound_ports: Option<PortList>,
    /// `traffic.sidecar.istio.io/includeOutboundPorts`
    pub include_outbound_ports: Option<PortList>,
    /// `traffic.sidecar.istio.io/excludeOutboundPorts`
    pub exclude_outbound_ports: Option<PortList>,
    /// `traffic.sidecar.istio.io/includeOutboundIPRanges`
    pub include_outbound_ip_ranges: Option<CidrList>,
    /// `traffic.sidecar.istio.io/excludeOutboundIPRanges`
    pub exclude_outbound_ip_ranges: Option<CidrList>,
    /// `proxy.istio.io/config`
    pub proxy_config: Option<ProxyConfig>,
    /// `prometheus.istio.io/merge-metrics`
    pub merge_metrics: Option<bool>,
    /// `sidecar.istio.io/nativeSidecar`
    pub native_sidecar: Option<bool>,
    /// `sidecar.istio.io/userVolume`: volumes by name, in the order of their names.
    pub user_volumes: Vec<serde_json::Value>,
    /// `sidecar.istio.io/userVolumeMount`: the proxy's mounts by name, in name order.
    pub user_volume_mounts: Vec<serde_json::Value>,
    /// `readiness.status.sidecar.istio.io/{initialDelaySeconds,periodSeconds,failureThreshold}`
    pub readiness: (Option<u32>, Option<u32>, Option<u32>),
    /// `istio.io/reroute-virtual-interfaces`, else `traffic.sidecar.istio.io/kubevirtInterfaces`.
    pub reroute_interfaces: Option<String>,
    /// `traffic.sidecar.istio.io/excludeInterfaces`
    pub exclude_interfaces: Option<String>,
}

impl SidecarOverrides {
    /// Reads the overrides from a pod's labels and annotations. Reports every bad value, not
    /// only the first.
    pub fn parse(
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Self, Vec<OverrideError>> {
        let mut errors = Vec::new();
        let mut get =
            |key: &str, field: MetadataField, parse: &dyn Fn(&str) -> Result<(), String>| {
                let map = match field {
                    MetadataField::Labels => labels,
                    MetadataField::Annotations => annotations,
                };
                let value = map.get(key)?;
                match parse(value) {
                    Ok(()) => Some(value.clone()),
                    Err(message) => {
                        errors.push(OverrideError {
                            field,
                            key: key.to_string(),
                            message,
                        });
                        None
                    }
                }
            };
        let any = |_: &str| Ok(());
        let non_empty = |v: &str| {
            if v.trim().is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(())
            }
        };
        let boolean = |v: &str| parse_bool(v).map(drop);
        let quantity = |v: &str| parse_quantity(v).map(drop);
        let ports = |v: &str| PortList::parse(v, false).map(drop);
        let ports_or_all = |v: &str| PortList::parse(v, true).map(drop);
        let cidrs = |v: &str| CidrList::parse(v).map(drop);
        let mode = |v: &str| v.parse::<InterceptionMode>().map(drop);
        // Istio takes any port number, 0 meaning "no status port" (no probes, nothing
        // excluded from capture for it).
        let status_port = |v: &str| parse_status_port(v).map(drop);
        let seconds = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map(drop)
                .map_err(|_| format!("\"{v}\" is not a whole number of seconds or tries"))
        };
        let named = |v: &str| named_objects(v).map(drop);
        let proxy_config = |v: &str| {
            ProxyConfig::from_yaml(v)
                .map(drop)
                .map_err(|e| e.to_string())
        };

        use MetadataField::{Annotations as A, Labels as L};
        let inject_label = get(label::SIDECAR_INJECT, L, &boolean);
        let inject_annotation = get(ann::SIDECAR_INJECT, A, &boolean);
        let out_strings = (
            get(ann::SIDECAR_PROXY_IMAGE, A, &non_empty),
            get(ann::SIDECAR_PROXY_CPU, A, &quantity),
            get(ann::SIDECAR_PROXY_MEMORY, A, &quantity),
            get(ann::SIDECAR_PROXY_CPU_LIMIT, A, &quantity),
            get(ann::SIDECAR_PROXY_MEMORY_LIMIT, A, &quantity),
        );
        let interception_mode = get(ann::SIDECAR_INTERCEPTION_MODE, A, &mode);
        let rewrite = get(ann::SIDECAR_REWRITE_APP_HTTP_PROBERS, A, &boolean);
        let log_level = get(ann::SIDECAR_LOG_LEVEL, A, &non_empty);
        let component_log_level = get(ann::SIDECAR_COMPONENT_LOG_LEVEL, A, &non_empty);
        let agent_log_level = get(ann::SIDECAR_AGENT_LOG_LEVEL, A, &non_empty);
        let status = get(ann::SIDECAR_STATUS_PORT, A, &status_port);
        let include_inbound = get(ann::INCLUDE_INBOUND_PORTS, A, &ports_or_all);
        let exclude_inbound = get(ann::EXCLUDE_INBOUND_PORTS, A, &ports);
        let include_outbound = get(ann::INCLUDE_OUTBOUND_PORTS, A, &ports);
        let exclude_outbound = get(ann::EXCLUDE_OUTBOUND_PORTS, A, &ports);
        let include_ranges = get(ann::INCLUDE_OUTBOUND_IP_RANGES, A, &cidrs);
        let exclude_ranges = get(ann::EXCLUDE_OUTBOUND_IP_RANGES, A, &cidrs);
        let config = get(ann::PROXY_CONFIG, A, &proxy_config);
        let merge = get(ann::PROMETHEUS_MERGE_METRICS, A, &boolean);
        let already_injected = get(ann::SIDECAR_STATUS, A, &any).is_some();
        let native = get(ann::SIDECAR_NATIVE, A, &boolean);
        let user_volumes = get(ann::SIDECAR_USER_VOLUME, A, &named);
        let user_mounts = get(ann::SIDECAR_USER_VOLUME_MOUNT, A, &named);
        let readiness = (
            get(ann::READINESS_INITIAL_DELAY, A, &seconds),
            get(ann::READINESS_PERIOD, A, &seconds),
            get(ann::READINESS_FAILURE_THRESHOLD, A, &seconds),
        );
        let reroute = get(ann::REROUTE_VIRTUAL_INTERFACES, A, &non_empty)
            .or_else(|| get(ann::KUBEVIRT_INTERFACES, A, &non_empty));
        let exclude_interfaces = get(ann::EXCLUDE_INTERFACES, A, &non_empty);
        if !errors.is_empty() {
            return Err(errors);
        }

        // Every value below passed its check above, so parsing again cannot fail; `ok()` keeps
        // that promise without a panic path.
        let flag = |v: Option<String>| v.and_then(|v| parse_bool(&v).ok());
        Ok(SidecarOverrides {
            inject: flag(inject_label).or(flag(inject_annotation)),
            already_injected,
            proxy_image: out_strings.0,
            proxy_cpu: out_strings.1,
            proxy_memory: out_strings.2,
            proxy_cpu_limit: out_strings.3,
            proxy_memory_limit: out_strings.4,
            interception_mode: interception_mode.and_then(|v| v.parse().ok()),
            rewrite_app_http_probers: flag(rewrite),
            log_level,
            component_log_level,
            agent_log_level,
            status_port: status.and_then(|v| parse_status_port(&v).ok()),
            include_inbound_ports: include_inbound.and_then(|v| PortList::parse(&v, true).ok()),
            exclude_inbound_ports: exclude_inbound.and_then(|v| PortList::parse(&v, false).ok()),
            include_outbound_ports: include_outbound.and_then(|v| PortList::parse(&v, false).ok()),
            exclude_outbound_ports: exclude_outbound.and_then(|v| PortList::parse(&v, false).ok()),
            include_outbound_ip_ranges: include_ranges.and_then(|v| CidrList::parse(&v).ok()),
            exclude_outbound_ip_ranges: exclude_ranges.and_then(|v| CidrList::parse(&v).ok()),
            proxy_config: config.and_then(|v| ProxyConfig::from_yaml(&v).ok()),
            merge_metrics: flag(merge),
            native_sidecar: flag(native),
            user_volumes: user_volumes
                .and_then(|v| named_objects(&v).ok())
                .unwrap_or_default(),
            user_volume_mounts: user_mounts
                .and_then(|v| named_objects(&v).ok())
                .unwrap_or_default(),
            readiness: (
                readiness.0.and_then(|v| v.trim().parse().ok()),
                readiness.1.and_then(|v| v.trim().parse().ok()),
                readiness.2.and_then(|v| v.trim().parse().ok()),
            ),
            reroute_interfaces: reroute,
            exclude_interfaces,
        })
    }

    /// Whether any of the four resource annotations is set: then they alone decide the proxy's
    /// resources, as in Istio.
    pub fn sets_resources(&self) -> bool {
        self.proxy_cpu.is_some()
            || self.proxy_memory.is_some()
            || self.proxy_cpu_limit.is_some()
            || self.proxy_memory_limit.is_some()
    }
}

/// A status port: any port number, 0 for none (as Istio takes it).
fn parse_status_port(v: &str) -> Result<u16, String> {
    v.trim()
        .parse::<u16>()
        .map_err(|_| format!("\"{v}\" is not a port number (0 turns the status port off)"))
}

/// `{"name": {…}, …}` (the user volume annotations) as a list of objects with their `name`,
/// ordered by name as Istio's template ranges over the map.
fn named_objects(v: &str) -> Result<Vec<serde_json::Value>, String> {
    // Istio's template ranges over what `fromJSON` gives: an empty JSON array adds nothing.
    if serde_json::from_str::<Vec<serde_json::Value>>(v).is_ok_and(|a| a.is_empty()) {
        return Ok(Vec::new());
    }
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(v)
        .map_err(|e| format!("is not a JSON object of name to object: {e}"))?;
    map.into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::Object(mut fields) => {
                fields.insert("name".into(), serde_json::Value::String(name));
                Ok(serde_json::Value::Object(fields))
            }
            other => Err(format!("\"{name}\": {other} is not an object")),
        })
        .collect()
}

/// Prefixes of the pod annotations Istio's injector and proxy read.
const ISTIO_PREFIXES: [&str; 7] = [
    "sidecar.istio.io/",
    "traffic.sidecar.istio.io/",
    "status.sidecar.istio.io/",
    "readiness.status.sidecar.istio.io/",
    "proxy.istio.io/",
    "inject.istio.io/",
    "prometheus.istio.io/",
];

/// The annotations of [`SidecarOverrides::parse`] and the two the injector writes or matches.
const IMPLEMENTED: [&str; 34] = [
    ann::SIDECAR_INJECT,
    ann::INJECT_TEMPLATES,
    ann::SIDECAR_STATUS,
    ann::SIDECAR_PROXY_IMAGE,
    ann::SIDECAR_PROXY_CPU,
    ann::SIDECAR_PROXY_MEMORY,
    ann::SIDECAR_PROXY_CPU_LIMIT,
    ann::SIDECAR_PROXY_MEMORY_LIMIT,
    ann::SIDECAR_INTERCEPTION_MODE,
    ann::SIDECAR_REWRITE_APP_HTTP_PROBERS,
    ann::SIDECAR_LOG_LEVEL,
    ann::SIDECAR_COMPONENT_LOG_LEVEL,
    ann::SIDECAR_AGENT_LOG_LEVEL,
    ann::SIDECAR_STATUS_PORT,
    ann::INCLUDE_INBOUND_PORTS,
    ann::EXCLUDE_INBOUND_PORTS,
    ann::INCLUDE_OUTBOUND_PORTS,
    ann::EXCLUDE_OUTBOUND_PORTS,
    ann::INCLUDE_OUTBOUND_IP_RANGES,
    ann::EXCLUDE_OUTBOUND_IP_RANGES,
    ann::PROXY_CONFIG,
    ann::PROMETHEUS_MERGE_METRICS,
    ann::ISTIO_REV,
    ann::KUBECTL_DEFAULT_CONTAINER,
    ann::KUBECTL_DEFAULT_LOGS_CONTAINER,
    ann::SIDECAR_NATIVE,
    ann::SIDECAR_USER_VOLUME,
    ann::SIDECAR_USER_VOLUME_MOUNT,
    ann::READINESS_INITIAL_DELAY,
    ann::READINESS_PERIOD,
    ann::READINESS_FAILURE_THRESHOLD,
    ann::KUBEVIRT_INTERFACES,
    ann::REROUTE_VIRTUAL_INTERFACES,
    ann::EXCLUDE_INTERFACES,
];

/// The keys of `annotations` in Istio's sidecar namespaces (`sidecar.istio.io/…`,
/// `traffic.sidecar.istio.io/…`, `proxy.istio.io/…` …) that Ama does not act on, such as
/// `sidecar.istio.io/userVolume` or `readiness.status.sidecar.istio.io/periodSeconds`.
pub fn not_implemented(annotations: &BTreeMap<String, String>) -> Vec<&str> {
    annotations
        .keys()
        .map(String::as_str)
        .filter(|k| ISTIO_PREFIXES.iter().any(|p| k.starts_with(p)) && !IMPLEMENTED.contains(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_wins_over_annotation() {
        let o = SidecarOverrides::parse(
            &map(&[(label::SIDECAR_INJECT, "true")]),
            &map(&[(ann::SIDECAR_INJECT, "false")]),
        )
        .unwrap();
        assert_eq!(o.inject, Some(true));
    }

    #[test]
    fn reports_every_bad_value() {
        let errors = SidecarOverrides::parse(
            &BTreeMap::new(),
            &map(&[
                (ann::EXCLUDE_INBOUND_PORTS, "80,abc"),
                (ann::SIDECAR_PROXY_CPU, "lots"),
                (ann::SIDECAR_STATUS_PORT, "65536"),
            ]),
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "annotations[\"sidecar.istio.io/proxyCPU\"]: \"lots\" is not a Kubernetes quantity (such as 100m, 2, 128Mi)",
                "annotations[\"status.sidecar.istio.io/port\"]: \"65536\" is not a port number (0 turns the status port off)",
                "annotations[\"traffic.sidecar.istio.io/excludeInboundPorts\"]: \"abc\" is not a port",
            ]
        );
    }
}
