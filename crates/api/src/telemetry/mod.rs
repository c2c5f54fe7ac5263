//! The tracing part of Istio's Telemetry API (`telemetry.istio.io/v1` Telemetry `spec.tracing`)
//! and the MeshConfig tracing providers it names (`extensionProviders[].zipkin`,
//! `extensionProviders[].opentelemetry`, `defaultProviders.tracing`), and what they resolve to
//! for one workload: [`effective_tracing`], with Istio's precedence (the root namespace's
//! Telemetry without selector, then the workload namespace's without selector, then the one
//! whose selector matches the workload, each overriding the fields it sets).
//!
//! Pure: the caller (the control plane) hands in the objects and the workload. Access logging
//! is resolved in [`logging`], metrics in [`metrics`], with the same levels ([`applicable`]).

pub mod logging;
pub mod metrics;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::error::ConfigError;
use crate::mesh::{ProxyTracing, TracingCustomTag};
use crate::networking::WorkloadSelector;

/// A MeshConfig `extensionProviders[]` entry that can receive spans.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingProvider {
    /// `name`, which Telemetry's `providers[].name` refers to.
    pub name: String,
    /// The collector's protocol.
    pub kind: ProviderKind,
    /// `service`: the collector's host (`zipkin.istio-system.svc.cluster.local`, or a short
    /// name as Istio also accepts).
    pub service: String,
    /// `port`.
    pub port: u16,
    /// `maxTagLength`: bytes of the path kept in `http.url` (0: Envoy's 256).
    pub max_tag_length: u32,
}

/// How a [`TracingProvider`] takes spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    /// `zipkin`: v2 JSON over HTTP to `/api/v2/spans`.
    Zipkin,
    /// `opentelemetry` with no `http`: OTLP over gRPC.
    OtlpGrpc,
    /// `opentelemetry.http`: OTLP over HTTP, POSTed to `path` (Istio's default `/v1/traces`).
    OtlpHttp {
        /// `http.path`.
        path: String,
    },
}

/// MeshConfig `extensionProviders[]` that are tracers, by name; entries of other kinds
/// (`envoyFileAccessLog`, `prometheus`, ...) are skipped, and tracers Ama does not implement
/// (`datadog`, `lightstep`, `skywalking`, `stackdriver`, `opencensus`) are reported in the second
/// list (`extensionProviders[i].<kind>`).
pub fn tracing_providers(mesh: &Value) -> Result<(Vec<TracingProvider>, Vec<String>), ConfigError> {
    let mut out = Vec::new();
    let mut unsupported = Vec::new();
    let Some(list) = mesh.get("extensionProviders") else {
        return Ok((out, unsupported));
    };
    let list = list
        .as_array()
        .ok_or_else(|| ConfigError::field("extensionProviders", format!("{list} is not a list")))?;
    for (i, p) in list.iter().enumerate() {
        let at = format!("extensionProviders[{i}]");
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ConfigError::field(format!("{at}.name"), "missing"))?;
        for kind in [
            "datadog",
            "lightstep",
            "skywalking",
            "stackdriver",
            "opencensus",
        ] {
            if p.get(kind).is_some() {
                unsupported.push(format!(
                    "{at}.{kind} ({name}): tracer not implemented by Ama"
                ));
            }
        }
        let (kind, body) = if let Some(z) = p.get("zipkin") {
            (ProviderKind::Zipkin, z)
        } else if let Some(o) = p.get("opentelemetry") {
            let kind = match o.get("http") {
                None | Some(Value::Null) => ProviderKind::OtlpGrpc,
                Some(h) => ProviderKind::OtlpHttp {
                    path: h
                        .get("path")
                        .and_then(Value::as_str)
                        .filter(|p| !p.is_empty())
                        .unwrap_or("/v1/traces")
                        .to_string(),
                },
            };
            (kind, o)
        } else {
            continue;
        };
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Common {
            service: String,
            port: u16,
            #[serde(default)]
            max_tag_length: u32,
        }
        let c: Common = serde_json::from_value(body.clone())
            .map_err(|e| ConfigError::field(&at, format!("{body} is not valid: {e}")))?;
        if c.service.is_empty() || c.port == 0 {
            return Err(ConfigError::field(
                &at,
                "a tracing provider needs a service and a port",
            ));
        }
        out.push(TracingProvider {
            name: name.to_string(),
            kind,
            service: c.service,
            port: c.port,
            max_tag_length: c.max_tag_length,
        });
    }
    Ok((out, unsupported))
}

/// A Telemetry's `spec`, the parts that bear on tracing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// `selector`: the workloads (none: the whole namespace).
    pub selector: Option<WorkloadSelector>,
    /// `tracing`: Istio reads its first entry.
    pub tracing: Vec<TracingSpec>,
    /// `accessLogging`: see [`logging`].
    pub access_logging: Vec<logging::AccessLoggingSpec>,
    /// `metrics`: see [`metrics`].
    pub metrics: Vec<metrics::MetricsSpec>,
    /// `targetRefs` / `targetRef`: not implemented by Ama (reported, not applied).
    pub target_refs: Option<Value>,
    /// See `target_refs`.
    pub target_ref: Option<Value>,
}

/// One `spec.tracing[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSpec {
    /// `match.mode`: CLIENT_AND_SERVER (unset), CLIENT or SERVER.
    #[serde(rename = "match")]
    pub match_: Option<Value>,
    /// `providers[].name`.
    pub providers: Vec<ProviderRef>,
    /// `randomSamplingPercentage`, 0 to 100.
    pub random_sampling_percentage: Option<f64>,
    /// `disableSpanReporting`.
    pub disable_span_reporting: Option<bool>,
    /// `customTags`, by tag name (`literal`, `environment`, `header`, as ProxyConfig's).
    pub custom_tags: BTreeMap<String, TracingCustomTag>,
    /// `useRequestIdForTraceSampling`.
    pub use_request_id_for_trace_sampling: Option<bool>,
    /// `enableIstioTags`.
    pub enable_istio_tags: Option<bool>,
}

/// `providers[]` of a tracing entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderRef {
    /// The provider's name in MeshConfig `extensionProviders`.
    pub name: String,
}

impl TelemetrySpec {
    /// Parses a Telemetry's `spec`, checking what is read (`spec.tracing[0].<field>` errors).
    pub fn from_value(spec: &Value) -> Result<TelemetrySpec, ConfigError> {
        let s: TelemetrySpec = serde_path_to_error::deserialize(spec.clone()).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            ConfigError::field(at, format!("is not valid: {}", e.into_inner()))
        })?;
        for (i, m) in s.metrics.iter().enumerate() {
            m.check()
                .map_err(|e| e.nested(&format!("spec.metrics[{i}]")))?;
        }
        if let Some(p) = s.tracing.first().and_then(|t| t.random_sampling_percentage)
            && !(0.0..=100.0).contains(&p)
        {
            return Err(ConfigError::field(
                "spec.tracing[0].randomSamplingPercentage",
                format!("{p} is not between 0 and 100"),
            ));
        }
        Ok(s)
    }
}

/// A Telemetry object as [`effective_tracing`] weighs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryObject {
    /// Its namespace.
    pub namespace: String,
    /// Its name (ties between objects of one level go to the oldest, then the first name).
    pub name: String,
    /// `metadata.creationTimestamp` as RFC 3339 text (empty when unknown).
    pub created: String,
    /// Its spec.
    pub spec: TelemetrySpec,
}

/// What a workload's proxies do with spans, after the Telemetry API and MeshConfig.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveTracing {
    /// The provider spans go to; `None`: no span is reported.
    pub provider: Option<TracingProvider>,
    /// Percent of new traces sampled (0 to 100).
    pub sampling: f64,
    /// Custom tags, by name.
    pub custom_tags: BTreeMap<String, TracingCustomTag>,
}

/// The Telemetry objects that apply to a workload in `namespace` with `labels`, in Istio's order
/// (`applicableTelemetries`), later ones overriding earlier ones: the root namespace's without
/// selector, the workload namespace's without selector (the oldest of each), then every one of
/// its namespace whose selector matches, oldest first.
pub fn applicable<'a>(
    root_namespace: &str,
    telemetries: &'a [TelemetryObject],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a TelemetryObject> {
    let by_age = |a: &&TelemetryObject, b: &&TelemetryObject| {
        (&a.created, &a.name).cmp(&(&b.created, &b.name))
    };
    let oldest = |pick: &dyn Fn(&TelemetryObject) -> bool| {
        telemetries.iter().filter(|t| pick(t)).min_by(by_age)
    };
    let root = oldest(&|t| t.namespace == root_namespace && t.spec.selector.is_none());
    let ns = (namespace != root_namespace)
        .then(|| oldest(&|t| t.namespace == namespace && t.spec.selector.is_none()))
        .flatten();
    let mut workloads: Vec<&TelemetryObject> = telemetries
        .iter()
        .filter(|t| {
            t.namespace == namespace
                && t.spec.selector.as_ref().is_some_and(|s| {
                    !s.match_labels.is_empty()
                        && s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
                })
        })
        .collect();
    workloads.sort_by(by_age);
    [root, ns].into_iter().flatten().chain(workloads).collect()
}

/// Which side of a proxy a Telemetry entry applies to (`match.mode`): the outbound listeners
/// and gateways are the CLIENT side, the inbound listener the SERVER side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    /// Both (unset).
    #[default]
    ClientAndServer,
    /// Requests the proxy makes.
    Client,
    /// Requests the proxy serves.
    Server,
}

impl WorkloadMode {
    /// Whether an entry with this mode applies to `side` (CLIENT or SERVER).
    pub fn covers(self, side: WorkloadMode) -> bool {
        self == WorkloadMode::ClientAndServer || self == side
    }
}

/// The tracing of a workload in `namespace` with `labels`, as istiod computes it: the Telemetry
/// objects of `root_namespace` without selector, then of the workload's namespace without
/// selector, then those of its namespace whose selector matches, each level overriding the
/// fields it sets (custom tags merge by name); at each level the oldest object wins. With no
/// Telemetry `tracing` and no `defaultProviders.tracing`, `None`: the caller keeps the
/// ProxyConfig (`defaultConfig.tracing`) form.
///
/// The provider is the most specific level's `providers[0]`, else MeshConfig
/// `defaultProviders.tracing[0]`; `disableSpanReporting: true` at the most specific level that
/// sets it reports none. Sampling is the most specific `randomSamplingPercentage`, else the
/// ProxyConfig's (`proxy_tracing`). A provider name MeshConfig does not define is an error
/// naming the Telemetry.
pub fn effective_tracing(
    root_namespace: &str,
    telemetries: &[TelemetryObject],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    providers: &[TracingProvider],
    default_providers: &[String],
    proxy_tracing: Option<&ProxyTracing>,
) -> Result<Option<EffectiveTracing>, ConfigError> {
    // Only the levels that say something of tracing count: a Telemetry of access logs alone
    // leaves the proxy's tracing to its ProxyConfig, as pilot's `Tracing` returns nil then.
    let levels: Vec<&TelemetryObject> = applicable(root_namespace, telemetries, namespace, labels)
        .into_iter()
        .filter(|t| !t.spec.tracing.is_empty())
        .collect();
    if levels.is_empty() && default_providers.is_empty() {
        return Ok(None);
    }
    let mut provider_name = default_providers.first().cloned();
    let mut provider_from: Option<&TelemetryObject> = None;
    let mut disabled = false;
    let mut sampling = None;
    let mut custom_tags = proxy_tracing
        .map(|t| t.custom_tags.clone())
        .unwrap_or_default();
    for t in &levels {
        let Some(tr) = t.spec.tracing.first() else {
            continue;
        };
        if let Some(p) = tr.providers.first() {
            provider_name = Some(p.name.clone());
            provider_from = Some(t);
        }
        if let Some(d) = tr.disable_span_reporting {
            disabled = d;
        }
        if let Some(s) = tr.random_sampling_percentage {
            sampling = Some(s);
        }
        custom_tags.extend(tr.custom_tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let provider = match provider_name {
        Some(name) => match providers.iter().find(|p| p.name == name) {
            Some(p) => Some(p.clone()),
            None => {
                let at = match provider_from {
                    Some(t) => format!(
                        "Telemetry {}/{}: spec.tracing[0].providers[0].name",
                        t.namespace, t.name
                    ),
                    None => "MeshConfig defaultProviders.tracing[0]".to_string(),
                };
                return Err(ConfigError::field(
                    at,
                    format!("{name:?} is not a tracing provider of MeshConfig extensionProviders"),
                ));
            }
        },
        None => None,
    };
    Ok(Some(EffectiveTracing {
        provider: provider.filter(|_| !disabled),
        sampling: sampling.unwrap_or_else(|| ProxyTracing::sampling_percent(proxy_tracing)),
        custom_tags,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Istio's distributed-tracing task: an OpenTelemetry and a Zipkin provider in MeshConfig.
    fn mesh() -> Value {
        serde_json::json!({
            "extensionProviders": [
                {"name": "otel", "opentelemetry": {"service": "opentelemetry-collector.observability.svc.cluster.local", "port": 4317}},
                {"name": "otel-http", "opentelemetry": {"service": "otel.observability", "port": 4318, "http": {"path": "/v1/traces", "timeout": "5s"}}},
                {"name": "zipkin", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411, "maxTagLength": 56}},
                {"name": "dd", "datadog": {"service": "dd", "port": 8126}},
                {"name": "envoy", "envoyFileAccessLog": {"path": "/dev/stdout"}}
            ]
        })
    }

    /// A Telemetry object of `spec` (which must be valid), for the tests of this module's
    /// resolvers.
    pub(crate) fn telemetry(ns: &str, name: &str, created: &str, spec: Value) -> TelemetryObject {
        TelemetryObject {
            namespace: ns.into(),
            name: name.into(),
            created: created.into(),
            spec: TelemetrySpec::from_value(&spec).expect("valid spec"),
        }
    }

    #[test]
    fn providers_of_the_task() {
        let (p, unsupported) = tracing_providers(&mesh()).expect("valid");
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].kind, ProviderKind::OtlpGrpc);
        assert_eq!(p[0].port, 4317);
        assert_eq!(
            p[1].kind,
            ProviderKind::OtlpHttp {
                path: "/v1/traces".into()
            }
        );
        assert_eq!(p[2].kind, ProviderKind::Zipkin);
        assert_eq!(p[2].max_tag_length, 56);
        assert_eq!(
            unsupported,
            vec!["extensionProviders[3].datadog (dd): tracer not implemented by Ama"]
        );
        let bad = tracing_providers(&serde_json::json!({
            "extensionProviders": [{"name": "z", "zipkin": {"port": 9411}}]
        }))
        .expect_err("no service")
        .to_string();
        assert!(bad.contains("extensionProviders[0]"), "{bad}");
    }

    #[test]
    fn precedence_root_then_namespace_then_workload() {
        let (providers, _) = tracing_providers(&mesh()).expect("valid");
        let ts = vec![
            // The task's mesh-wide default.
            telemetry(
                "istio-system",
                "mesh-default",
                "2026-01-01T00:00:00Z",
                serde_json::json!({"tracing": [{"providers": [{"name": "otel"}], "randomSamplingPercentage": 100,
                    "customTags": {"a": {"literal": {"value": "root"}}, "b": {"literal": {"value": "root"}}}}]}),
            ),
            // A newer root one is not used.
            telemetry(
                "istio-system",
                "later",
                "2026-02-01T00:00:00Z",
                serde_json::json!({"tracing": [{"providers": [{"name": "zipkin"}]}]}),
            ),
            telemetry(
                "default",
                "ns",
                "2026-01-01T00:00:00Z",
                serde_json::json!({"tracing": [{"randomSamplingPercentage": 10, "customTags": {"b": {"literal": {"value": "ns"}}}}]}),
            ),
            telemetry(
                "default",
                "httpbin",
                "2026-01-01T00:00:00Z",
                serde_json::json!({"selector": {"matchLabels": {"app": "httpbin"}},
                    "tracing": [{"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 50.5}]}),
            ),
            telemetry(
                "default",
                "off",
                "2026-01-01T00:00:00Z",
                serde_json::json!({"selector": {"matchLabels": {"app": "quiet"}},
                    "tracing": [{"disableSpanReporting": true}]}),
            ),
        ];
        let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
        let of = |ns: &str, app: &str| {
            effective_tracing("istio-system", &ts, ns, &labels(app), &providers, &[], None)
                .expect("resolves")
                .expect("Telemetry applies")
        };
        let sleep = of("default", "sleep");
        assert_eq!(
            sleep.provider.as_ref().map(|p| p.name.as_str()),
            Some("otel")
        );
        assert_eq!(sleep.sampling, 10.0);
        assert_eq!(
            sleep.custom_tags["b"],
            TracingCustomTag::Literal { value: "ns".into() }
        );
        assert_eq!(
            sleep.custom_tags["a"],
            TracingCustomTag::Literal {
                value: "root".into()
            }
        );
        let httpbin = of("default", "httpbin");
        assert_eq!(httpbin.provider.map(|p| p.name), Some("zipkin".into()));
        assert_eq!(httpbin.sampling, 50.5);
        assert_eq!(of("default", "quiet").provider, None);
        let other = of("other", "x");
        assert_eq!(other.provider.map(|p| p.name), Some("otel".into()));
        assert_eq!(other.sampling, 100.0);

        // A Telemetry of access logs only says nothing of tracing.
        let logs_only = vec![telemetry(
            "istio-system",
            "logs",
            "",
            serde_json::json!({"accessLogging": [{"providers": [{"name": "envoy"}]}]}),
        )];
        assert_eq!(
            effective_tracing(
                "istio-system",
                &logs_only,
                "default",
                &labels("x"),
                &providers,
                &[],
                None
            )
            .expect("resolves"),
            None
        );

        // No Telemetry at all: the ProxyConfig form stays in force.
        assert_eq!(
            effective_tracing(
                "istio-system",
                &[],
                "default",
                &labels("x"),
                &providers,
                &[],
                None
            )
            .expect("resolves"),
            None
        );
    }

    #[test]
    fn default_providers_and_unknown_names() {
        let (providers, _) = tracing_providers(&mesh()).expect("valid");
        let ts = vec![telemetry(
            "istio-system",
            "sample",
            "",
            serde_json::json!({"tracing": [{"randomSamplingPercentage": 0}]}),
        )];
        let e = effective_tracing(
            "istio-system",
            &ts,
            "default",
            &BTreeMap::new(),
            &providers,
            &["zipkin".to_string()],
            None,
        )
        .expect("resolves")
        .expect("applies");
        assert_eq!(e.provider.map(|p| p.name), Some("zipkin".into()));
        assert_eq!(e.sampling, 0.0);

        let ts = vec![telemetry(
            "default",
            "typo",
            "",
            serde_json::json!({"tracing": [{"providers": [{"name": "zipkn"}]}]}),
        )];
        let err = effective_tracing(
            "istio-system",
            &ts,
            "default",
            &BTreeMap::new(),
            &providers,
            &[],
            None,
        )
        .expect_err("unknown provider")
        .to_string();
        assert!(
            err.contains("Telemetry default/typo") && err.contains("zipkn"),
            "{err}"
        );
    }

    #[test]
    fn spec_checks_and_findings() {
        let err = TelemetrySpec::from_value(
            &serde_json::json!({"tracing": [{"randomSamplingPercentage": 101}]}),
        )
        .expect_err("out of range")
        .to_string();
        assert!(err.contains("randomSamplingPercentage"), "{err}");
        TelemetrySpec::from_value(&serde_json::json!({
            "accessLogging": [{"providers": [{"name": "envoy"}]}],
            "metrics": [{"overrides": [{"match": {"customMetric": "my_total"}}], "reportingInterval": "5s"}],
            "tracing": [{"providers": [{"name": "otel"}]}]
        }))
        .expect("valid");
        let err = TelemetrySpec::from_value(&serde_json::json!({
            "accessLogging": [{"providers": [{"name": "envoy"}], "filter": {"expresion": "x"}}]
        }))
        .expect_err("typo")
        .to_string();
        assert!(err.contains("spec.accessLogging[0].filter"), "{err}");
        let err = TelemetrySpec::from_value(&serde_json::json!({
            "metrics": [{"overrides": [{"match": {"metric": "REQUEST_COUNTS"}}]}]
        }))
        .expect_err("unknown metric")
        .to_string();
        assert!(
            err.contains("spec.metrics[0].overrides[0].match.metric"),
            "{err}"
        );
    }
}
