//! The access-logging part of the Telemetry API (`spec.accessLogging`) and the MeshConfig
//! providers it names (`extensionProviders[].envoyFileAccessLog`, `defaultProviders.accessLogging`),
//! resolved for one side of one workload as pilot does it (`mergeLogs` in
//! `pilot/pkg/model/telemetry.go`): [`effective_access_logging`].
//!
//! Istio's MeshConfig always has the provider `envoy` (a file log to `/dev/stdout` in Istio's
//! TEXT format) unless the user's MeshConfig defines a provider of that name; so does Ama.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use super::{ProviderRef, TelemetryObject, WorkloadMode, applicable};
use crate::error::ConfigError;

/// A MeshConfig `extensionProviders[].envoyFileAccessLog`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogProvider {
    /// `name`, which Telemetry's `providers[].name` refers to.
    pub name: String,
    /// `path`: `/dev/stdout` when empty.
    pub path: String,
    /// `logFormat`.
    pub format: LogFormat,
}

/// `logFormat` of an `envoyFileAccessLog` provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    /// `logFormat.text`: an Envoy format string, with the newline Istio adds when missing;
    /// Istio's `EnvoyTextLogFormat` when the provider has no `logFormat` or an empty text.
    Text(Option<String>),
    /// `logFormat.labels`: JSON keys and their format strings, in the provider's order;
    /// Istio's 24 default keys when empty.
    Labels(Vec<(String, String)>),
}

/// Istio's built-in `envoy` provider.
fn builtin_envoy() -> LogProvider {
    LogProvider {
        name: "envoy".into(),
        path: "/dev/stdout".into(),
        format: LogFormat::Text(None),
    }
}

/// The `envoyFileAccessLog` providers of MeshConfig, with Istio's built-in `envoy` unless a
/// provider of that name replaces it. Providers of other access-log kinds (`envoyOtelAls`,
/// `envoyHttpAls`, `envoyTcpAls`) are in the second list, by name: Ama does not implement them.
pub fn log_providers(mesh: &Value) -> Result<(Vec<LogProvider>, Vec<String>), ConfigError> {
    let mut out = Vec::new();
    let mut other = Vec::new();
    let list = match mesh.get("extensionProviders") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(list)) => list,
        Some(v) => {
            return Err(ConfigError::field(
                "extensionProviders",
                format!("{v} is not a list"),
            ));
        }
    };
    let mut named = BTreeSet::new();
    for (i, p) in list.iter().enumerate() {
        let at = format!("extensionProviders[{i}]");
        let Some(name) = p.get("name").and_then(Value::as_str) else {
            continue;
        };
        named.insert(name.to_string());
        for kind in ["envoyOtelAls", "envoyHttpAls", "envoyTcpAls"] {
            if p.get(kind).is_some() {
                other.push(name.to_string());
            }
        }
        let Some(file) = p.get("envoyFileAccessLog") else {
            continue;
        };
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct File {
            #[serde(default)]
            path: String,
            #[serde(default)]
            log_format: Option<Format>,
        }
        #[derive(Deserialize, Default)]
        struct Format {
            #[serde(default)]
            text: Option<String>,
            #[serde(default)]
            labels: Option<serde_json::Map<String, Value>>,
        }
        let f: File = serde_json::from_value(file.clone())
            .map_err(|e| ConfigError::field(format!("{at}.envoyFileAccessLog"), format!("{e}")))?;
        let format = match f.log_format {
            Some(Format {
                labels: Some(labels),
                ..
            }) => {
                let mut keys = Vec::with_capacity(labels.len());
                for (k, v) in labels {
                    let Value::String(v) = v else {
                        return Err(ConfigError::field(
                            format!("{at}.envoyFileAccessLog.logFormat.labels.{k}"),
                            format!("{v} is not a format string"),
                        ));
                    };
                    keys.push((k, v));
                }
                LogFormat::Labels(keys)
            }
            Some(Format { text, .. }) => {
                LogFormat::Text(text.filter(|t| !t.is_empty()).map(|mut t| {
                    if !t.ends_with('\n') {
                        t.push('\n');
                    }
                    t
                }))
            }
            None => LogFormat::Text(None),
        };
        out.push(LogProvider {
            name: name.to_string(),
            path: if f.path.is_empty() {
                "/dev/stdout".into()
            } else {
                f.path
            },
            format,
        });
    }
    if !named.contains("envoy") {
        out.push(builtin_envoy());
    }
    Ok((out, other))
}

/// One `spec.accessLogging[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLoggingSpec {
    /// `match.mode`.
    #[serde(rename = "match")]
    pub match_: Option<LogSelector>,
    /// `providers[].name` (none: the parent level's, else MeshConfig's defaults).
    pub providers: Vec<ProviderRef>,
    /// `disabled`.
    pub disabled: Option<bool>,
    /// `filter.expression`.
    pub filter: Option<LogFilter>,
}

/// `match` of an access-logging entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSelector {
    /// `mode`.
    pub mode: WorkloadMode,
}

/// `filter` of an access-logging entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogFilter {
    /// A CEL expression over Envoy's attributes.
    pub expression: String,
}

impl AccessLoggingSpec {
    fn covers(&self, side: WorkloadMode) -> bool {
        self.match_.as_ref().is_none_or(|m| m.mode.covers(side))
    }
}

/// One access log in force for a side of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveLog {
    /// The provider.
    pub provider: LogProvider,
    /// `filter.expression`, if any.
    pub filter: Option<String>,
}

/// The access logs of the `side` (CLIENT or SERVER) of a workload in `namespace` with `labels`,
/// as pilot's `mergeLogs`: `None` when no Telemetry `accessLogging` applies and MeshConfig has
/// no `defaultProviders.accessLogging` (the proxy keeps MeshConfig's `accessLogFile`); else the
/// logs, sorted by provider name, without the disabled ones (an empty list: no log).
///
/// Provider names MeshConfig lacks, or that are not `envoyFileAccessLog` providers, are left
/// out and listed in the second value (Istio leaves out the first kind too).
pub fn effective_access_logging(
    root_namespace: &str,
    telemetries: &[TelemetryObject],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    providers: &[LogProvider],
    default_providers: &[String],
    side: WorkloadMode,
) -> (Option<Vec<EffectiveLog>>, Vec<String>) {
    let levels: Vec<&TelemetryObject> = applicable(root_namespace, telemetries, namespace, labels)
        .into_iter()
        .filter(|t| !t.spec.access_logging.is_empty())
        .collect();
    if levels.is_empty() && default_providers.is_empty() {
        return (None, Vec::new());
    }
    let names = |refs: &[ProviderRef]| -> Vec<String> {
        refs.iter().map(|p| p.name.clone()).collect::<Vec<_>>()
    };
    // provider → Some(filter) when on, None when disabled.
    let mut merged: BTreeMap<String, Option<Option<String>>> = BTreeMap::new();
    if levels.is_empty() {
        for p in default_providers {
            merged.insert(p.clone(), Some(None));
        }
    } else {
        // The providers in scope: those of the most specific level naming any for this side.
        let mut in_scope: Vec<String> = default_providers.to_vec();
        let mut filters: BTreeMap<String, Option<String>> = BTreeMap::new();
        for t in &levels {
            let mut level_names = BTreeSet::new();
            for entry in t.spec.access_logging.iter().filter(|e| e.covers(side)) {
                for p in names(&entry.providers) {
                    filters.insert(
                        p.clone(),
                        entry.filter.as_ref().map(|f| f.expression.clone()),
                    );
                    level_names.insert(p);
                }
            }
            if !level_names.is_empty() {
                in_scope = level_names.into_iter().collect();
            }
        }
        let mut parent: Vec<String> = default_providers.to_vec();
        for t in &levels {
            for entry in &t.spec.access_logging {
                let mut these = names(&entry.providers);
                if these.is_empty() {
                    these = parent.clone();
                }
                parent = these.clone();
                for p in these {
                    if !in_scope.contains(&p) || !entry.covers(side) {
                        continue;
                    }
                    if entry.disabled == Some(true) {
                        merged.insert(p, None);
                    } else {
                        merged.insert(p.clone(), Some(filters.get(&p).cloned().flatten()));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for (name, on) in merged {
        let Some(provider) = providers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(&name))
        else {
            unknown.push(name);
            continue;
        };
        if let Some(filter) = on {
            out.push(EffectiveLog {
                provider: provider.clone(),
                filter,
            });
        }
    }
    (Some(out), unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry(ns: &str, name: &str, spec: Value) -> TelemetryObject {
        crate::telemetry::tests::telemetry(ns, name, "", spec)
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), app.to_string())])
    }

    #[test]
    fn providers_with_istios_builtin_envoy() {
        let (p, other) = log_providers(&serde_json::json!({})).expect("valid");
        assert_eq!(p, vec![builtin_envoy()]);
        assert!(other.is_empty());
        let (p, other) = log_providers(&serde_json::json!({"extensionProviders": [
            {"name": "json", "envoyFileAccessLog": {"path": "/tmp/a.log",
                "logFormat": {"labels": {"code": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%"}}}},
            {"name": "text", "envoyFileAccessLog": {"logFormat": {"text": "%RESPONSE_CODE%"}}},
            {"name": "otel", "envoyOtelAls": {"service": "otel", "port": 4317}},
            {"name": "envoy", "envoyFileAccessLog": {"path": "/dev/stderr"}}
        ]}))
        .expect("valid");
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[0].format,
            LogFormat::Labels(vec![
                ("code".into(), "%RESPONSE_CODE%".into()),
                ("path".into(), "%REQ(:PATH)%".into())
            ])
        );
        assert_eq!(p[1].path, "/dev/stdout");
        assert_eq!(
            p[1].format,
            LogFormat::Text(Some("%RESPONSE_CODE%\n".into()))
        );
        assert_eq!(p[2].path, "/dev/stderr");
        assert_eq!(other, vec!["otel"]);
    }

    #[test]
    fn istios_task_and_precedence() {
        let (providers, _) = log_providers(&serde_json::json!({})).expect("valid");
        // Istio's access-log task: mesh-wide on.
        let ts = vec![
            telemetry(
                "istio-system",
                "mesh-default",
                serde_json::json!({"accessLogging": [{"providers": [{"name": "envoy"}]}]}),
            ),
            telemetry(
                "default",
                "errors-only",
                serde_json::json!({"selector": {"matchLabels": {"app": "httpbin"}},
                    "accessLogging": [{"providers": [{"name": "envoy"}],
                        "filter": {"expression": "response.code >= 400"}}]}),
            ),
            telemetry(
                "quiet",
                "off",
                serde_json::json!({"accessLogging": [{"disabled": true}]}),
            ),
            telemetry(
                "clients",
                "client-only",
                serde_json::json!({"accessLogging": [{"match": {"mode": "SERVER"}, "disabled": true}]}),
            ),
        ];
        let of = |ns: &str, app: &str, side| {
            effective_access_logging("istio-system", &ts, ns, &labels(app), &providers, &[], side)
        };
        let (sleep, unknown) = of("default", "sleep", WorkloadMode::Client);
        assert!(unknown.is_empty());
        let sleep = sleep.expect("Telemetry applies");
        assert_eq!(sleep.len(), 1);
        assert_eq!(sleep[0].provider.name, "envoy");
        assert_eq!(sleep[0].filter, None);
        let httpbin = of("default", "httpbin", WorkloadMode::Server)
            .0
            .expect("applies");
        assert_eq!(httpbin[0].filter.as_deref(), Some("response.code >= 400"));
        assert_eq!(of("quiet", "x", WorkloadMode::Client).0, Some(vec![]));
        assert_eq!(of("clients", "x", WorkloadMode::Server).0, Some(vec![]));
        assert_eq!(
            of("clients", "x", WorkloadMode::Client)
                .0
                .expect("on")
                .len(),
            1
        );

        // No Telemetry and no default providers: MeshConfig's accessLogFile stays in force.
        let none = effective_access_logging(
            "istio-system",
            &[],
            "default",
            &labels("x"),
            &providers,
            &[],
            WorkloadMode::Client,
        );
        assert_eq!(none, (None, vec![]));
        // defaultProviders.accessLogging alone turns logs on.
        let dflt = effective_access_logging(
            "istio-system",
            &[],
            "default",
            &labels("x"),
            &providers,
            &["envoy".to_string()],
            WorkloadMode::Server,
        );
        assert_eq!(dflt.0.expect("on").len(), 1);
        // A provider MeshConfig lacks is reported.
        let ts = vec![telemetry(
            "default",
            "typo",
            serde_json::json!({"accessLogging": [{"providers": [{"name": "envoi"}]}]}),
        )];
        let (logs, unknown) = effective_access_logging(
            "istio-system",
            &ts,
            "default",
            &labels("x"),
            &providers,
            &[],
            WorkloadMode::Client,
        );
        assert_eq!(logs, Some(vec![]));
        assert_eq!(unknown, vec!["envoi"]);
    }
}
