//! Telemetry API tracing → each proxy's [`xds::Tracing`], as pilot configures Envoy's tracing
//! (`pilot/pkg/model/telemetry.go`, `networking/core/tracing.go`): the Telemetry objects of the
//! root namespace, of the proxy's namespace and the one selecting its workload, resolved with
//! [`api::telemetry::effective_tracing`] against MeshConfig's `extensionProviders` and
//! `defaultProviders.tracing`. With no Telemetry the proxy gets none and keeps its ProxyConfig
//! tracing (`defaultConfig.tracing`), as Istio falls back to MeshConfig.
//!
//! Access logging and metrics of the Telemetry API are not applied here (api::support reports
//! them).

use api::mesh::MeshConfig;
use api::objects::Object;
use api::telemetry::{
    EffectiveTracing, ProviderKind, TelemetryObject, TelemetrySpec, TracingProvider,
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
}

/// Reads the Telemetry objects; one that cannot be read is left out with a warning.
pub(crate) fn build(objects: &[&Object], mesh: &MeshConfig, w: &mut Warnings) -> TelemetryModel {
    let mut out = TelemetryModel {
        providers: mesh.tracing_providers.clone(),
        default_providers: mesh.default_tracing_providers.clone(),
        proxy_tracing: mesh.default_config.tracing.clone(),
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
        if self.objects.is_empty() {
            return None;
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
            Ok(t) => t.map(|t| to_xds(&t)),
            Err(e) => {
                tracing::warn!("tracing of proxies in {namespace}: {e}");
                None
            }
        }
    }
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
    }
}
