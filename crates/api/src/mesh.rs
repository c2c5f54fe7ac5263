//! The subset of Istio's `MeshConfig` and `ProxyConfig` that injection needs.
//!
//! `MeshConfig` is what Istio keeps in the ConfigMap `istio` (key `mesh`) of `istio-system`;
//! `ProxyConfig` is its `defaultConfig`, which a pod overrides with the annotation
//! `proxy.istio.io/config`. Both are large protos in Istio. We type only the fields we act on
//! and keep every field the user wrote, so the proxy receives the whole of it in `PROXY_CONFIG`.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ConfigError;
use crate::validate::InterceptionMode;

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A `ProxyConfig` as written by the user: only the fields that were set.
///
/// Fields are merged the way Istio merges protos: a later config replaces scalars and lists and
/// merges maps key by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyConfig {
    raw: Map<String, Value>,
    /// `discoveryAddress`: where the proxy finds the control plane.
    pub discovery_address: Option<String>,
    /// `statusPort`: the proxy's status server (15020 when unset).
    pub status_port: Option<u16>,
    /// `interceptionMode` (REDIRECT when unset).
    pub interception_mode: Option<InterceptionMode>,
    /// `concurrency`: worker threads of the proxy.
    pub concurrency: Option<u32>,
    /// `proxyMetadata`: extra environment of the proxy and init containers.
    pub proxy_metadata: BTreeMap<String, String>,
    /// `holdApplicationUntilProxyStarts`: start the apps once the proxy is ready.
    pub hold_application_until_proxy_starts: Option<bool>,
    /// `tracing`: trace sampling, the Zipkin collector and custom span tags.
    pub tracing: Option<ProxyTracing>,
}

/// ProxyConfig `tracing` (Istio's `meshconfig.Tracing`). Field names are accepted in both of
/// protobuf JSON's spellings (`customTags` and `custom_tags`), as Istio reads them.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTracing {
    /// `sampling`: percent of new traces sampled, 0.0 to 100.0 (0 or unset: Istio's default 1 %;
    /// above 100: 1 %, as Istio clamps it).
    pub sampling: Option<f64>,
    /// `zipkin`: the Zipkin collector.
    pub zipkin: Option<ZipkinCollector>,
    /// `custom_tags`: tags added to every span, by tag name.
    #[serde(default, alias = "custom_tags")]
    pub custom_tags: BTreeMap<String, TracingCustomTag>,
    /// `max_path_tag_length`: bytes of the path kept in the `http.url` tag (Envoy: 256).
    #[serde(alias = "max_path_tag_length")]
    pub max_path_tag_length: Option<u32>,
    /// Any other field (`lightstep`, `datadog`, `stackdriver`, `openCensusAgent`,
    /// `tlsSettings`): tracers Ama does not implement; the proxy reports them.
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, Value>,
}

impl ProxyTracing {
    /// Istio's sampling percentage for this config (`proxyConfigSamplingValue`): 1 % when unset
    /// or 0, and when above 100.
    pub fn sampling_percent(tracing: Option<&ProxyTracing>) -> f64 {
        match tracing.and_then(|t| t.sampling) {
            Some(s) if s > 100.0 => 1.0,
            Some(s) if s > 0.0 => s,
            _ => 1.0,
        }
    }
}

/// ProxyConfig `tracing.zipkin`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZipkinCollector {
    /// `address`: the collector's `host:port` (Istio's default `zipkin.istio-system:9411`).
    pub address: Option<String>,
}

/// One of ProxyConfig `tracing.custom_tags` (Istio's `Tracing.CustomTag`): exactly one of
/// `literal`, `environment`, `header`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum TracingCustomTag {
    /// `literal: {value}`.
    Literal {
        /// The tag's value.
        value: String,
    },
    /// `environment: {name, defaultValue}`: an environment variable of the proxy.
    Environment {
        /// The variable.
        name: String,
        /// The value when the variable is unset.
        #[serde(default, alias = "default_value", rename = "defaultValue")]
        default_value: String,
    },
    /// `header: {name, defaultValue}`: a request header.
    Header {
        /// The header.
        name: String,
        /// The value when the request has no such header.
        #[serde(default, alias = "default_value", rename = "defaultValue")]
        default_value: String,
    },
}

impl ProxyConfig {
    /// Parses a ProxyConfig from YAML or JSON (the form of the `proxy.istio.io/config`
    /// annotation). Empty text is the empty config.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let value: Value =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::yaml("ProxyConfig", e))?;
        Self::from_value(value)
    }

    /// Builds a ProxyConfig from a parsed value, checking the types of the fields we use.
    pub fn from_value(value: Value) -> Result<Self, ConfigError> {
        let raw = match value {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => {
                return Err(ConfigError::field(
                    "",
                    format!("expected a mapping, found {other}"),
                ));
            }
        };
        Ok(ProxyConfig {
            discovery_address: typed_field(&raw, "discoveryAddress")?,
            status_port: typed_field(&raw, "statusPort")?,
            interception_mode: typed_field(&raw, "interceptionMode")?,
            concurrency: typed_field(&raw, "concurrency")?,
            proxy_metadata: typed_field(&raw, "proxyMetadata")?.unwrap_or_default(),
            hold_application_until_proxy_starts: typed_field(
                &raw,
                "holdApplicationUntilProxyStarts",
            )?,
            tracing: typed_field(&raw, "tracing")?,
            raw,
        })
    }

    /// This config with `over` merged on top of it.
    pub fn merged_with(&self, over: &ProxyConfig) -> ProxyConfig {
        let mut raw = self.raw.clone();
        merge_maps(&mut raw, &over.raw);
        // Both inputs were checked, and merging keeps each field's type.
        Self::from_value(Value::Object(raw)).unwrap_or_else(|_| over.clone())
    }

    /// Sets one field (as if the user had written it).
    pub fn set(&mut self, field: &str, value: Value) -> Result<(), ConfigError> {
        let mut raw = self.raw.clone();
        raw.insert(field.to_string(), value);
        *self = Self::from_value(Value::Object(raw))?;
        Ok(())
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The config as compact JSON with sorted keys, as the proxy reads it from `PROXY_CONFIG`.
    pub fn to_json(&self) -> String {
        Value::Object(self.raw.clone()).to_string()
    }
}

fn typed_field<T: DeserializeOwned>(
    raw: &Map<String, Value>,
    name: &str,
) -> Result<Option<T>, ConfigError> {
    match raw.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| ConfigError::field(name, format!("{v} is not valid: {e}"))),
    }
}

fn merge_maps(base: &mut Map<String, Value>, over: &Map<String, Value>) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(o)) => merge_maps(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The mesh-wide settings injection reads.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    /// `trustDomain` (default `cluster.local`): the SPIFFE trust domain.
    pub trust_domain: String,
    /// `defaultConfig`: the ProxyConfig of every proxy, before per-pod overrides.
    pub default_config: ProxyConfig,
    /// `enablePrometheusMerge` (default true): point Prometheus at the proxy's merged metrics.
    pub enable_prometheus_merge: bool,
    /// `outboundTrafficPolicy.mode` (ALLOW_ANY when unset): what sidecars do with traffic to
    /// destinations the registry does not know.
    pub outbound_traffic_policy: Option<crate::networking::sidecar::OutboundMode>,
    /// `inboundTrafficPolicy.mode`: `PASSTHROUGH` (unset, Istio's default) or `LOCALHOST`
    /// (inbound requests go to the app on 127.0.0.1 as before Istio 1.10).
    pub inbound_traffic_policy: Option<InboundMode>,
    /// Some `extensionProviders[].opentelemetry` has `serviceAttributeEnrichment:
    /// OTEL_SEMANTIC_CONVENTIONS`: injection gives the proxy `OTEL_RESOURCE_ATTRIBUTES`.
    pub otel_semantic_conventions: bool,
    /// `extensionProviders` that receive spans (zipkin, opentelemetry).
    pub tracing_providers: Vec<crate::telemetry::TracingProvider>,
    /// `defaultProviders.tracing`: the providers of a Telemetry that names none.
    pub default_tracing_providers: Vec<String>,
    /// `enableTracing` (default true): false turns tracing off where no Telemetry `tracing`
    /// applies.
    pub enable_tracing: bool,
    /// `extensionProviders` that write access logs to a file (`envoyFileAccessLog`), with
    /// Istio's built-in `envoy`.
    pub log_providers: Vec<crate::telemetry::logging::LogProvider>,
    /// `defaultProviders.accessLogging`.
    pub default_log_providers: Vec<String>,
    /// `extensionProviders` that are Prometheus, with Istio's built-in `prometheus`.
    pub prometheus_providers: Vec<String>,
    /// `defaultProviders.metrics` (empty: Istio's install default, `prometheus`).
    pub default_metrics_providers: Vec<String>,
}

/// `MeshConfig.inboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InboundMode {
    /// Inbound requests go to the app on the pod's address (Istio's default since 1.10).
    Passthrough,
    /// Inbound requests go to the app on 127.0.0.1.
    Localhost,
}

#[derive(serde::Deserialize)]
struct InboundTrafficPolicy {
    mode: Option<InboundMode>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            default_config: ProxyConfig::default(),
            enable_prometheus_merge: true,
            outbound_traffic_policy: None,
            inbound_traffic_policy: None,
            otel_semantic_conventions: false,
            tracing_providers: Vec::new(),
            default_tracing_providers: Vec::new(),
            enable_tracing: true,
            log_providers: crate::telemetry::logging::log_providers(&Value::Null)
                .map(|(p, _)| p)
                .unwrap_or_default(),
            default_log_providers: Vec::new(),
            prometheus_providers: crate::telemetry::metrics::prometheus_providers(&Value::Null).0,
            default_metrics_providers: Vec::new(),
        }
    }
}

impl MeshConfig {
    /// Parses a MeshConfig from YAML: either the MeshConfig itself (the `mesh` key of the
    /// ConfigMap `istio`) or that whole ConfigMap. Fields we do not use are accepted and ignored.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let value: Value =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::yaml("MeshConfig", e))?;
        if value.get("kind").and_then(Value::as_str) == Some("ConfigMap") {
            let mesh = value
                .pointer("/data/mesh")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ConfigError::field("data.mesh", "missing: the ConfigMap has no MeshConfig")
                })?;
            return Self::from_yaml(mesh).map_err(|e| e.nested("data.mesh"));
        }
        Self::from_value(value)
    }

    /// Builds a MeshConfig from a parsed value.
    pub fn from_value(value: Value) -> Result<Self, ConfigError> {
        let map = match value {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => {
                return Err(ConfigError::field(
                    "",
                    format!("expected a mapping, found {other}"),
                ));
            }
        };
        let defaults = MeshConfig::default();
        let (tracing_providers, _) =
            crate::telemetry::tracing_providers(&Value::Object(map.clone()))?;
        let mesh_value = Value::Object(map.clone());
        let (log_providers, _) = crate::telemetry::logging::log_providers(&mesh_value)?;
        let (prometheus_providers, _) =
            crate::telemetry::metrics::prometheus_providers(&mesh_value);
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct DefaultProviders {
            #[serde(default)]
            tracing: Vec<String>,
            #[serde(default)]
            access_logging: Vec<String>,
            #[serde(default)]
            metrics: Vec<String>,
        }
        let default_providers =
            typed_field::<DefaultProviders>(&map, "defaultProviders")?.unwrap_or_default();
        let default_config = match map.get("defaultConfig") {
            Some(v) => ProxyConfig::from_value(v.clone()).map_err(|e| e.nested("defaultConfig"))?,
            None => ProxyConfig::default(),
        };
        Ok(MeshConfig {
            trust_domain: typed_field::<String>(&map, "trustDomain")?
                .filter(|t| !t.is_empty())
                .unwrap_or(defaults.trust_domain),
            default_config,
            enable_prometheus_merge: typed_field(&map, "enablePrometheusMerge")?
                .unwrap_or(defaults.enable_prometheus_merge),
            outbound_traffic_policy: typed_field::<
                crate::networking::sidecar::OutboundTrafficPolicy,
            >(&map, "outboundTrafficPolicy")?
            .and_then(|p| p.mode),
            inbound_traffic_policy: typed_field::<InboundTrafficPolicy>(
                &map,
                "inboundTrafficPolicy",
            )?
            .and_then(|p| p.mode),
            otel_semantic_conventions: map
                .get("extensionProviders")
                .and_then(Value::as_array)
                .is_some_and(|providers| {
                    providers.iter().any(|p| {
                        p.pointer("/opentelemetry/serviceAttributeEnrichment")
                            .and_then(Value::as_str)
                            == Some("OTEL_SEMANTIC_CONVENTIONS")
                    })
                }),
            tracing_providers,
            default_tracing_providers: default_providers.tracing,
            enable_tracing: typed_field(&map, "enableTracing")?.unwrap_or(defaults.enable_tracing),
            log_providers,
            default_log_providers: default_providers.access_logging,
            prometheus_providers,
            default_metrics_providers: default_providers.metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_config_tracing_as_istio_users_write_it() {
        // The form of Istio's distributed-tracing docs (snake_case), merged over a MeshConfig
        // defaultConfig in protobuf JSON's camelCase.
        let mesh = ProxyConfig::from_yaml(
            "tracing: {sampling: 10, zipkin: {address: zipkin.istio-system:9411}, maxPathTagLength: 99}",
        )
        .expect("parses");
        let pod = ProxyConfig::from_yaml(
            r#"
tracing:
  sampling: 100
  custom_tags:
    lit: {literal: {value: v}}
    env: {environment: {name: POD_NAME, defaultValue: none}}
    hdr: {header: {name: x-tenant, default_value: "-"}}
  lightstep: {address: ls:8080}
"#,
        )
        .expect("parses");
        let t = mesh.merged_with(&pod).tracing.expect("tracing");
        assert_eq!(t.sampling, Some(100.0));
        assert_eq!(
            t.zipkin.and_then(|z| z.address).as_deref(),
            Some("zipkin.istio-system:9411")
        );
        assert_eq!(t.max_path_tag_length, Some(99));
        assert_eq!(
            t.custom_tags["lit"],
            TracingCustomTag::Literal { value: "v".into() }
        );
        assert_eq!(
            t.custom_tags["env"],
            TracingCustomTag::Environment {
                name: "POD_NAME".into(),
                default_value: "none".into()
            }
        );
        assert_eq!(
            t.custom_tags["hdr"],
            TracingCustomTag::Header {
                name: "x-tenant".into(),
                default_value: "-".into()
            }
        );
        assert!(t.unsupported.contains_key("lightstep"));

        let bad = ProxyConfig::from_yaml("tracing: {custom_tags: {x: {literal: {valu: v}}}}")
            .expect_err("a misspelt field is refused")
            .to_string();
        assert!(bad.contains("tracing") && bad.contains("valu"), "{bad}");
    }

    #[test]
    fn sampling_percent_as_istio_reads_it() {
        let of = |s: Option<f64>| {
            ProxyTracing::sampling_percent(Some(&ProxyTracing {
                sampling: s,
                ..ProxyTracing::default()
            }))
        };
        assert_eq!(ProxyTracing::sampling_percent(None), 1.0);
        assert_eq!(of(None), 1.0);
        assert_eq!(of(Some(0.0)), 1.0);
        assert_eq!(of(Some(0.01)), 0.01);
        assert_eq!(of(Some(100.0)), 100.0);
        assert_eq!(of(Some(150.0)), 1.0);
    }

    #[test]
    fn proxy_config_merge_and_types() {
        let mesh = ProxyConfig::from_yaml("concurrency: 2\nproxyMetadata: {A: a}").unwrap();
        let pod = ProxyConfig::from_yaml(r#"{"proxyMetadata":{"B":"b"},"concurrency":4}"#).unwrap();
        let merged = mesh.merged_with(&pod);
        assert_eq!(merged.concurrency, Some(4));
        assert_eq!(merged.proxy_metadata.len(), 2);
        assert_eq!(
            merged.to_json(),
            r#"{"concurrency":4,"proxyMetadata":{"A":"a","B":"b"}}"#
        );
        let err = ProxyConfig::from_yaml("statusPort: abc").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("statusPort: \"abc\" is not valid"),
            "{err}"
        );
        assert!(ProxyConfig::from_yaml("interceptionMode: FOO").is_err());
        assert!(ProxyConfig::from_yaml("[1]").is_err());
    }

    #[test]
    fn mesh_config_from_configmap() {
        let cm = "kind: ConfigMap\ndata:\n  mesh: |\n    trustDomain: example.org\n    defaultConfig:\n      discoveryAddress: cp:15012\n";
        let mesh = MeshConfig::from_yaml(cm).unwrap();
        assert_eq!(mesh.trust_domain, "example.org");
        assert_eq!(
            mesh.default_config.discovery_address.as_deref(),
            Some("cp:15012")
        );
        assert!(mesh.enable_prometheus_merge);
        let err = MeshConfig::from_yaml("defaultConfig:\n  concurrency: x\n").unwrap_err();
        assert!(
            err.to_string().starts_with("defaultConfig.concurrency:"),
            "{err}"
        );
    }
}
