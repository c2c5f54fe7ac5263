//! Telemetry API tracing → each proxy's [`xds::Tracing`], as pilot configures Envoy's tracing
//! (`pilot/pkg/model/telemetry.go`, `networking/core/tracing.go`): the Telemetry objects of the
//! root namespace, of the proxy's namespace and the one selecting its workload, resolved with
//! [`api::telemetry::effective_tracing`] against MeshConfig's `extensionProviders` and
//! `defaultProviders.tracing`. With no Telemetry the proxy gets none and keeps its ProxyConfig
//! tracing (`defaultConfig.tracing`), as Istio falls back to MeshConfig.
//!
//! The Telemetry API's access logging and metrics resolve the same way, per side of the proxy
//! ([`TelemetryModel::access_logging_for`], [`TelemetryModel::metrics_for`]), with
//! [`api::telemetry::logging`] and [`api::telemetry::metrics`].

use api::mesh::MeshConfig;
use api::objects::Object;
use api::telemetry::logging::{EffectiveLog, LogFormat, LogProvider};
use api::telemetry::metrics::EffectiveMetrics;
use api::telemetry::{
    EffectiveTracing, ProviderKind, TelemetryObject, TelemetrySpec, TracingProvider, WorkloadMode,
};

use super::{Labels, ROOT_NAMESPACE, Warnings};

/// What tracing is resolved from: the Telemetry objects and MeshConfig's providers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryModel {
    /// Telemetry objects whose spec could be read.
    pub objects: Vec<TelemetryObject>,
    /// MeshConfig `extensionProviders` that are tracers.
    pub providers: Vec<TracingProvider>,
    /// MeshConfig `defaultProviders.tracing`.
    pub default_providers: Vec<String>,
    /// MeshConfig `defaultConfig.tracing` (sampling and tags when a Telemetry sets none).
    pub proxy_tracing: Option<api::mesh::ProxyTracing>,
    /// MeshConfig `enableTracing`.
    pub enable_tracing: bool,
    /// MeshConfig's file access-log providers (with Istio's built-in `envoy`).
    pub log_providers: Vec<LogProvider>,
    /// MeshConfig `defaultProviders.accessLogging`.
    pub default_log_providers: Vec<String>,
    /// MeshConfig's Prometheus providers (with Istio's built-in `prometheus`).
    pub prometheus_providers: Vec<String>,
    /// MeshConfig `defaultProviders.metrics`.
    pub default_metrics_providers: Vec<String>,
}

/// Reads the Telemetry objects; one that cannot be read is left out with a warning.
pub(crate) fn build(objects: &[&Object], mesh: &MeshConfig, w: &mut Warnings) -> TelemetryModel {
    let mut out = TelemetryModel {
        providers: mesh.tracing_providers.clone(),
        default_providers: mesh.default_tracing_providers.clone(),
        proxy_tracing: mesh.default_config.tracing.clone(),
        enable_tracing: mesh.enable_tracing,
        log_providers: mesh.log_providers.clone(),
        default_log_providers: mesh.default_log_providers.clone(),
        prometheus_providers: mesh.prometheus_providers.clone(),
        default_metrics_providers: mesh.default_metrics_providers.clone(),
        ..TelemetryModel::default()
    };
    for o in objects {
        let Object::Other(other) = o else { continue };
        if other.kind != "Telemetry" || !other.api_version.starts_with("telemetry.istio.io/") {
            continue;
        }
        let m = &other.metadata;
        match TelemetrySpec::from_value(&other.spec) {
            Ok(spec) => out.objects.push(TelemetryObject {
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                // The objects carry no creation time here: ties between two Telemetry of one
                // level go to the first name, where Istio takes the oldest.
                created: String::new(),
                spec,
            }),
            Err(e) => w.add(
                format!("Telemetry {}/{}", m.namespace, m.name),
                format!("{e}; left out"),
            ),
        }
    }
    out.objects
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

impl TelemetryModel {
    /// The tracing of a proxy in `namespace` whose workload has `labels`; `None` when no
    /// Telemetry applies (or one names a provider MeshConfig lacks: discovery logs it).
    pub fn tracing_for(&self, namespace: &str, labels: &Labels) -> Option<xds::Tracing> {
        // MeshConfig `enableTracing: false` turns tracing off where no Telemetry `tracing`
        // applies, as pilot configures no tracer then.
        let off = (!self.enable_tracing).then(|| xds::Tracing {
            disabled: true,
            ..xds::Tracing::default()
        });
        if self.objects.is_empty() && self.default_providers.is_empty() {
            return off;
        }
        let resolved = api::telemetry::effective_tracing(
            ROOT_NAMESPACE,
            &self.objects,
            namespace,
            labels,
            &self.providers,
            &self.default_providers,
            self.proxy_tracing.as_ref(),
        );
        match resolved {
            Ok(Some(t)) => Some(to_xds(&t)),
            Ok(None) => off,
            Err(e) => {
                tracing::warn!("tracing of proxies in {namespace}: {e}");
                off
            }
        }
    }
}

impl TelemetryModel {
    /// The access logs of a proxy in `namespace` whose workload has `labels`, per side; `None`
    /// when neither side is set by the Telemetry API (the proxy keeps MeshConfig's
    /// `accessLogFile`). Provider names MeshConfig lacks are logged and left out, as Istio
    /// leaves them out.
    pub fn access_logging_for(
        &self,
        namespace: &str,
        labels: &Labels,
    ) -> Option<xds::AccessLogging> {
        if self.objects.is_empty() && self.default_log_providers.is_empty() {
            return None;
        }
        let side = |mode| {
            let (logs, unknown) = api::telemetry::logging::effective_access_logging(
                ROOT_NAMESPACE,
                &self.objects,
                namespace,
                labels,
                &self.log_providers,
                &self.default_log_providers,
                mode,
            );
            for name in unknown {
                tracing::warn!(
                    "access logging of proxies in {namespace}: provider {name:?} is not an \
                     envoyFileAccessLog provider of MeshConfig extensionProviders; left out"
                );
            }
            logs.map(|l| l.iter().map(log_to_xds).collect())
        };
        let out = xds::AccessLogging {
            client: side(WorkloadMode::Client),
            server: side(WorkloadMode::Server),
        };
        (out != xds::AccessLogging::default()).then_some(out)
    }

    /// The metric overrides of a proxy in `namespace` whose workload has `labels`, per side;
    /// `None` when every standard metric is reported unchanged.
    pub fn metrics_for(&self, namespace: &str, labels: &Labels) -> Option<xds::MetricsConfig> {
        if self.objects.is_empty() && self.default_metrics_providers.is_empty() {
            return None;
        }
        let side = |mode| {
            api::telemetry::metrics::effective_metrics(
                ROOT_NAMESPACE,
                &self.objects,
                namespace,
                labels,
                &self.prometheus_providers,
                &self.default_metrics_providers,
                mode,
            )
            .map(|m| metrics_to_xds(&m))
        };
        let out = xds::MetricsConfig {
            client: side(WorkloadMode::Client),
            server: side(WorkloadMode::Server),
        };
        (out != xds::MetricsConfig::default()).then_some(out)
    }
}

fn log_to_xds(l: &EffectiveLog) -> xds::AccessLog {
    let format = match &l.provider.format {
        LogFormat::Text(text) => xds::AccessLogFormat::Text(
            text.clone()
                .unwrap_or_else(|| xds::telemetry::ISTIO_TEXT_LOG_FORMAT.to_string()),
        ),
        LogFormat::Labels(keys) if keys.is_empty() => xds::AccessLogFormat::Json(
            xds::telemetry::ISTIO_JSON_LOG_FORMAT
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        LogFormat::Labels(keys) => xds::AccessLogFormat::Json(keys.clone()),
    };
    xds::AccessLog {
        provider: l.provider.name.clone(),
        path: l.provider.path.clone(),
        format,
        filter: l.filter.clone(),
    }
}

fn metrics_to_xds(m: &EffectiveMetrics) -> xds::ModeMetrics {
    xds::ModeMetrics {
        disabled: m.disabled,
        overrides: m
            .overrides
            .iter()
            .filter_map(|(name, change)| {
                Some(xds::MetricOverride {
                    metric: istio_metric(name)?,
                    disabled: change.disabled,
                    tags: change
                        .tags
                        .iter()
                        .map(|(tag, value)| xds::TagOverride {
                            name: tag.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                })
            })
            .collect(),
    }
}

/// The xds name of one of [`api::telemetry::metrics::ISTIO_METRICS`].
fn istio_metric(name: &str) -> Option<xds::IstioMetric> {
    use xds::IstioMetric as M;
    Some(match name {
        "REQUEST_COUNT" => M::RequestCount,
        "REQUEST_DURATION" => M::RequestDuration,
        "REQUEST_SIZE" => M::RequestSize,
        "RESPONSE_SIZE" => M::ResponseSize,
        "TCP_OPENED_CONNECTIONS" => M::TcpOpenedConnections,
        "TCP_CLOSED_CONNECTIONS" => M::TcpClosedConnections,
        "TCP_SENT_BYTES" => M::TcpSentBytes,
        "TCP_RECEIVED_BYTES" => M::TcpReceivedBytes,
        "GRPC_REQUEST_MESSAGES" => M::GrpcRequestMessages,
        "GRPC_RESPONSE_MESSAGES" => M::GrpcResponseMessages,
        _ => return None,
    })
}

fn to_xds(t: &EffectiveTracing) -> xds::Tracing {
    xds::Tracing {
        collector: t.provider.as_ref().map(|p| {
            let (protocol, path) = match &p.kind {
                ProviderKind::Zipkin => {
                    (xds::CollectorProtocol::Zipkin, Some("/api/v2/spans".into()))
                }
                ProviderKind::OtlpGrpc => (xds::CollectorProtocol::OtlpGrpc, None),
                ProviderKind::OtlpHttp { path } => {
                    (xds::CollectorProtocol::OtlpHttp, Some(path.clone()))
                }
            };
            xds::TracingCollector {
                protocol,
                host: p.service.clone(),
                port: p.port,
                path,
            }
        }),
        sampling_basis_points: xds::Tracing::basis_points(t.sampling),
        custom_tags: t
            .custom_tags
            .iter()
            .map(|(tag, v)| {
                use api::mesh::TracingCustomTag as T;
                let mut out = xds::TracingTag {
                    tag: tag.clone(),
                    literal: None,
                    environment: None,
                    header: None,
                    default_value: String::new(),
                };
                match v {
                    T::Literal { value } => out.literal = Some(value.clone()),
                    T::Environment {
                        name,
                        default_value,
                    } => {
                        out.environment = Some(name.clone());
                        out.default_value = default_value.clone();
                    }
                    T::Header {
                        name,
                        default_value,
                    } => {
                        out.header = Some(name.clone());
                        out.default_value = default_value.clone();
                    }
                }
                out
            })
            .collect(),
        max_path_tag_length: t
            .provider
            .as_ref()
            .map(|p| p.max_tag_length)
            .filter(|n| *n > 0),
        disabled: false,
    }
}
