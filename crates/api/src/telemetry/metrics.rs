//! The metrics part of the Telemetry API (`spec.metrics`): which Istio metrics a side of a
//! workload reports and with which labels, resolved as pilot's `mergeMetrics`
//! (`pilot/pkg/model/telemetry.go`): [`effective_metrics`].
//!
//! Ama's metrics go to Prometheus, so the providers that matter are MeshConfig's `prometheus`
//! ones (Istio's MeshConfig always has one named `prometheus`). Istio's install puts
//! `prometheus` in `defaultProviders.metrics`; Ama takes that default when MeshConfig names no
//! metrics provider, so a mesh without any Telemetry reports every standard metric.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use super::{ProviderRef, TelemetryObject, WorkloadMode, applicable};
use crate::error::ConfigError;

/// The MeshConfig providers that are Prometheus (`extensionProviders[].prometheus`), with
/// Istio's built-in `prometheus` unless a provider of another kind takes that name. The second
/// list names the metric providers Ama does not implement (`stackdriver`).
pub fn prometheus_providers(mesh: &Value) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut other = vec!["stackdriver".to_string()];
    let mut named = BTreeSet::new();
    for p in mesh
        .get("extensionProviders")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = p.get("name").and_then(Value::as_str) else {
            continue;
        };
        named.insert(name);
        if p.get("prometheus").is_some() {
            out.push(name.to_string());
        }
        if p.get("stackdriver").is_some() && name != "stackdriver" {
            other.push(name.to_string());
        }
    }
    if !named.contains("prometheus") {
        out.push("prometheus".to_string());
    }
    (out, other)
}

/// One `spec.metrics[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsSpec {
    /// `providers[].name` (none: the parent level's).
    pub providers: Vec<ProviderRef>,
    /// `overrides`, later ones over earlier ones.
    pub overrides: Vec<MetricsOverride>,
    /// `reportingInterval`: not used by Ama (`api::support` reports it).
    pub reporting_interval: Option<Value>,
}

/// One `overrides[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverride {
    /// `match` (none: every metric on both sides).
    #[serde(rename = "match")]
    pub match_: Option<MetricSelector>,
    /// `disabled`.
    pub disabled: Option<bool>,
    /// `tagOverrides`, by label name.
    pub tag_overrides: BTreeMap<String, TagOverrideSpec>,
}

/// `match` of an override.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    /// `metric`: `ALL_METRICS`, `REQUEST_COUNT`, ... (checked by [`MetricsSpec::check`]).
    pub metric: Option<String>,
    /// `customMetric`: not implemented by Ama (`api::support` reports it; the override is
    /// left out).
    pub custom_metric: Option<String>,
    /// `mode`.
    pub mode: WorkloadMode,
}

/// `tagOverrides.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TagOverrideSpec {
    /// `operation`: `UPSERT` (unset) or `REMOVE`.
    pub operation: Option<String>,
    /// `value`: a CEL expression, for `UPSERT`.
    pub value: Option<String>,
}

/// The metrics `match.metric` may name, besides `ALL_METRICS`, as the Telemetry API spells them.
pub const ISTIO_METRICS: [&str; 10] = [
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_OPENED_CONNECTIONS",
    "TCP_RECEIVED_BYTES",
    "TCP_SENT_BYTES",
];

impl MetricsSpec {
    /// The checks Istio's validation makes: known metric names, `UPSERT` with a value and
    /// `REMOVE` without one (errors name `overrides[i]...`).
    pub fn check(&self) -> Result<(), ConfigError> {
        for (i, o) in self.overrides.iter().enumerate() {
            let at = format!("overrides[{i}]");
            if let Some(m) = o.match_.as_ref().and_then(|m| m.metric.as_deref())
                && m != "ALL_METRICS"
                && !ISTIO_METRICS.contains(&m)
            {
                return Err(ConfigError::field(
                    format!("{at}.match.metric"),
                    format!("{m:?} is not an Istio metric (ALL_METRICS, REQUEST_COUNT, ...)"),
                ));
            }
            for (tag, t) in &o.tag_overrides {
                let at = format!("{at}.tagOverrides.{tag}");
                match (t.operation.as_deref(), t.value.as_deref()) {
                    (None | Some("UPSERT"), None | Some("")) => {
                        return Err(ConfigError::field(
                            format!("{at}.value"),
                            "must be set when operation is UPSERT",
                        ));
                    }
                    (Some("REMOVE"), Some(v)) if !v.is_empty() => {
                        return Err(ConfigError::field(
                            format!("{at}.value"),
                            "must not be set when operation is REMOVE",
                        ));
                    }
                    (None | Some("UPSERT" | "REMOVE"), _) => {}
                    (Some(op), _) => {
                        return Err(ConfigError::field(
                            format!("{at}.operation"),
                            format!("{op:?} is not UPSERT or REMOVE"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// One metric's resolved override.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricChange {
    /// Not reported.
    pub disabled: bool,
    /// Labels: `Some(CEL expression)` upserts, `None` removes.
    pub tags: BTreeMap<String, Option<String>>,
}

/// The metrics of one side of a workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectiveMetrics {
    /// No metric at all on this side.
    pub disabled: bool,
    /// Per metric (`REQUEST_COUNT`, ...).
    pub overrides: BTreeMap<String, MetricChange>,
}

/// The metrics of the `side` (CLIENT or SERVER) of a workload in `namespace` with `labels`, as
/// pilot's `mergeMetrics` computes them for a Prometheus provider. `None` when every standard
/// metric is reported unchanged (no Telemetry `metrics` changes anything).
///
/// `prometheus` are MeshConfig's Prometheus providers ([`prometheus_providers`]); `defaults` is
/// `defaultProviders.metrics` (empty: Istio's install default, `prometheus`). When the providers
/// in scope include no Prometheus one, the side reports nothing.
pub fn effective_metrics(
    root_namespace: &str,
    telemetries: &[TelemetryObject],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    prometheus: &[String],
    defaults: &[String],
    side: WorkloadMode,
) -> Option<EffectiveMetrics> {
    let entries: Vec<&MetricsSpec> = applicable(root_namespace, telemetries, namespace, labels)
        .into_iter()
        .flat_map(|t| &t.spec.metrics)
        .collect();
    let defaults: Vec<String> = if defaults.is_empty() {
        vec!["prometheus".to_string()]
    } else {
        defaults.to_vec()
    };
    let names = |refs: &[ProviderRef]| refs.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    // The providers in scope: the last entry's that names any, else the defaults.
    let in_scope = entries
        .iter()
        .map(|m| names(&m.providers))
        .rfind(|n| !n.is_empty())
        .unwrap_or_else(|| defaults.clone());
    let Some(provider) = in_scope.iter().find(|n| prometheus.contains(n)).cloned() else {
        return Some(EffectiveMetrics {
            disabled: true,
            overrides: BTreeMap::new(),
        });
    };
    let mut disabled_all = false;
    let mut overrides: BTreeMap<String, MetricChange> = BTreeMap::new();
    let mut parent = defaults;
    for m in entries {
        let mut these = names(&m.providers);
        if these.is_empty() {
            these = parent.clone();
        }
        parent = these.clone();
        if !these.contains(&provider) {
            continue;
        }
        for o in &m.overrides {
            let selector = o.match_.clone().unwrap_or_default();
            if !selector.mode.covers(side) || selector.custom_metric.is_some() {
                continue;
            }
            let metric = selector.metric.as_deref().unwrap_or("ALL_METRICS");
            if metric == "ALL_METRICS" && o.disabled == Some(true) {
                disabled_all = true;
                continue;
            }
            disabled_all = false;
            let metrics: Vec<&str> = if metric == "ALL_METRICS" {
                ISTIO_METRICS.to_vec()
            } else {
                vec![metric]
            };
            for name in metrics {
                let change = overrides.entry(name.to_string()).or_default();
                if let Some(d) = o.disabled {
                    change.disabled = d;
                }
                for (tag, t) in &o.tag_overrides {
                    let value = match t.operation.as_deref() {
                        Some("REMOVE") => None,
                        _ => t.value.clone(),
                    };
                    change.tags.insert(tag.clone(), value);
                }
            }
        }
    }
    overrides.retain(|_, c| c.disabled || !c.tags.is_empty());
    if disabled_all {
        return Some(EffectiveMetrics {
            disabled: true,
            overrides: BTreeMap::new(),
        });
    }
    (!overrides.is_empty()).then_some(EffectiveMetrics {
        disabled: false,
        overrides,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry(ns: &str, name: &str, spec: Value) -> TelemetryObject {
        crate::telemetry::tests::telemetry(ns, name, "", spec)
    }

    fn of(ts: &[TelemetryObject], ns: &str, side: WorkloadMode) -> Option<EffectiveMetrics> {
        let (prometheus, _) = prometheus_providers(&serde_json::json!({}));
        effective_metrics(
            "istio-system",
            ts,
            ns,
            &BTreeMap::new(),
            &prometheus,
            &[],
            side,
        )
    }

    #[test]
    fn istios_customize_metrics_task() {
        let ts = vec![telemetry(
            "istio-system",
            "namespace-metrics",
            serde_json::json!({"metrics": [{"providers": [{"name": "prometheus"}], "overrides": [
                {"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {
                    "destination_port": {"value": "string(destination.port)"},
                    "request_host": {"value": "request.host"}}},
                {"match": {"metric": "REQUEST_COUNT", "mode": "CLIENT"},
                 "tagOverrides": {"grpc_response_status": {"operation": "REMOVE"}}}
            ]}]}),
        )];
        let server = of(&ts, "default", WorkloadMode::Server).expect("changes");
        assert!(!server.disabled);
        let count = &server.overrides["REQUEST_COUNT"];
        assert_eq!(
            count.tags,
            BTreeMap::from([
                (
                    "destination_port".to_string(),
                    Some("string(destination.port)".to_string())
                ),
                ("request_host".to_string(), Some("request.host".to_string())),
            ])
        );
        let client = of(&ts, "default", WorkloadMode::Client).expect("changes");
        assert_eq!(
            client.overrides["REQUEST_COUNT"].tags["grpc_response_status"],
            None
        );
        assert_eq!(of(&[], "default", WorkloadMode::Client), None);
    }

    #[test]
    fn disabling_and_reenabling() {
        // Root disables everything; one namespace turns its client side back on.
        let ts = vec![
            telemetry(
                "istio-system",
                "off",
                serde_json::json!({"metrics": [{"providers": [{"name": "prometheus"}],
                    "overrides": [{"match": {"metric": "ALL_METRICS", "mode": "CLIENT_AND_SERVER"}, "disabled": true}]}]}),
            ),
            telemetry(
                "on",
                "client-on",
                serde_json::json!({"metrics": [{"overrides": [
                    {"match": {"metric": "REQUEST_DURATION", "mode": "CLIENT"}, "disabled": true}]}]}),
            ),
        ];
        assert!(
            of(&ts, "default", WorkloadMode::Client)
                .expect("off")
                .disabled
        );
        let client = of(&ts, "on", WorkloadMode::Client).expect("changes");
        assert!(!client.disabled);
        assert!(client.overrides["REQUEST_DURATION"].disabled);
        assert!(of(&ts, "on", WorkloadMode::Server).expect("off").disabled);
        // A provider that is not Prometheus: nothing reported.
        let ts = vec![telemetry(
            "istio-system",
            "sd",
            serde_json::json!({"metrics": [{"providers": [{"name": "stackdriver"}]}]}),
        )];
        assert!(
            of(&ts, "default", WorkloadMode::Server)
                .expect("off")
                .disabled
        );
    }

    #[test]
    fn checks_of_istios_validation() {
        let bad = |spec: Value| {
            crate::telemetry::TelemetrySpec::from_value(&spec)
                .expect_err("invalid")
                .to_string()
        };
        let e = bad(serde_json::json!({"metrics": [{"overrides": [
            {"tagOverrides": {"x": {"operation": "UPSERT"}}}]}]}));
        assert!(
            e.contains("spec.metrics[0].overrides[0].tagOverrides.x.value"),
            "{e}"
        );
        let e = bad(serde_json::json!({"metrics": [{"overrides": [
            {"tagOverrides": {"x": {"operation": "REMOVE", "value": "a"}}}]}]}));
        assert!(e.contains("must not be set"), "{e}");
    }
}
