//! Telemetry API tracing per proxy, with the YAML of Istio's distributed-tracing tasks: a
//! MeshConfig with `extensionProviders`, a mesh-wide Telemetry in the root namespace and one
//! selecting a workload.

use std::net::IpAddr;

use api::objects::{Object, parse_stream};
use pretty_assertions::assert_eq;

use super::*;
use crate::translate::{ProxyKey, proxy_resources};

fn model(yaml: &str) -> Model {
    let (objects, errors) = parse_stream(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    let objects: Vec<Object> = objects;
    Model::build(&objects, &mut VipAllocator::new())
}

fn pod(name: &str, app: &str, address: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{app: {app}}}
  annotations: {{local.ama.dev/address: "{address}"}}
spec:
  containers: [{{name: app, image: app}}]
"#
    )
}

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: otel-tracing
      opentelemetry:
        port: 4317
        service: opentelemetry-collector.observability.svc.cluster.local
    - name: zipkin
      zipkin:
        service: zipkin.istio-system.svc.cluster.local
        port: 9411
        maxTagLength: 100
"#;

const MESH_DEFAULT: &str = r#"
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: otel-demo
  namespace: istio-system
spec:
  tracing:
  - providers:
    - name: otel-tracing
    randomSamplingPercentage: 100
    customTags:
      "my-attribute":
        literal:
          value: "default-value"
"#;

fn tracing_of(m: &Model, pod: &str, address: &str) -> Option<xds::Tracing> {
    let key = ProxyKey {
        ip: address.parse::<IpAddr>().expect("ip"),
        pod_name: pod.into(),
        namespace: "default".into(),
    };
    proxy_resources(m, &key).node.and_then(|n| n.tracing)
}

#[test]
fn no_telemetry_no_tracing_on_the_node() {
    let m = model(&format!("{MESH}{}", pod("sleep", "sleep", "10.244.0.5")));
    assert_eq!(tracing_of(&m, "sleep", "10.244.0.5"), None);
    assert_eq!(m.warnings, []);
}

#[test]
fn the_tasks_telemetry_reaches_each_proxy() {
    let m = model(&format!(
        "{MESH}{MESH_DEFAULT}{}{}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: httpbin-zipkin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  tracing:
  - providers: [{{name: zipkin}}]
    randomSamplingPercentage: 12.5
",
        pod("sleep", "sleep", "10.244.0.5"),
        pod("httpbin", "httpbin", "10.244.0.6"),
    ));
    assert_eq!(m.warnings, []);
    assert_eq!(
        tracing_of(&m, "sleep", "10.244.0.5"),
        Some(xds::Tracing {
            collector: Some(xds::TracingCollector {
                protocol: xds::CollectorProtocol::OtlpGrpc,
                host: "opentelemetry-collector.observability.svc.cluster.local".into(),
                port: 4317,
                path: None,
            }),
            sampling_basis_points: 10_000,
            custom_tags: vec![xds::TracingTag {
                tag: "my-attribute".into(),
                literal: Some("default-value".into()),
                environment: None,
                header: None,
                default_value: String::new(),
            }],
            max_path_tag_length: None,
            disabled: false,
        })
    );
    let httpbin = tracing_of(&m, "httpbin", "10.244.0.6").expect("tracing");
    assert_eq!(
        httpbin.collector,
        Some(xds::TracingCollector {
            protocol: xds::CollectorProtocol::Zipkin,
            host: "zipkin.istio-system.svc.cluster.local".into(),
            port: 9411,
            path: Some("/api/v2/spans".into()),
        })
    );
    assert_eq!(httpbin.sampling_basis_points, 1250);
    assert_eq!(httpbin.max_path_tag_length, Some(100));
    assert_eq!(httpbin.custom_tags.len(), 1, "the root's tags stay");
}

#[test]
fn a_telemetry_that_cannot_be_read_is_left_out_with_a_warning() {
    // The parser refuses what Istio's validation refuses, naming object and field...
    let bad = "
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bad, namespace: default}
spec:
  tracing:
  - randomSamplingPercentage: 200
";
    let (_, errors) = parse_stream(bad, "test.yaml");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0].to_string();
    assert!(
        e.contains("Telemetry default/bad") && e.contains("randomSamplingPercentage"),
        "{e}"
    );
    // ...and one that reaches the model anyway (it is built from objects of any source) is
    // left out with a warning.
    let (mut objects, errors) = parse_stream(
        &format!("{MESH}{}", pod("sleep", "sleep", "10.244.0.5")),
        "test.yaml",
    );
    assert!(errors.is_empty(), "{errors:?}");
    objects.push(Object::Other(api::objects::OtherObject {
        api_version: "telemetry.istio.io/v1".into(),
        kind: "Telemetry".into(),
        metadata: api::objects::Metadata {
            name: "bad".into(),
            namespace: "default".into(),
            ..api::objects::Metadata::default()
        },
        spec: serde_json::json!({"tracing": [{"randomSamplingPercentage": 200}]}),
    }));
    let m = Model::build(&objects, &mut VipAllocator::new());
    assert_eq!(tracing_of(&m, "sleep", "10.244.0.5"), None);
    assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
    assert!(
        m.warnings[0]
            .to_string()
            .starts_with("Telemetry default/bad: ")
            && m.warnings[0]
                .to_string()
                .contains("randomSamplingPercentage"),
        "{}",
        m.warnings[0]
    );
}

fn node_of(m: &Model, pod: &str, address: &str) -> xds::NodeRef {
    let key = ProxyKey {
        ip: address.parse::<IpAddr>().expect("ip"),
        pod_name: pod.into(),
        namespace: "default".into(),
    };
    proxy_resources(m, &key).node.expect("node")
}

/// Istio's access-log task (`mesh-default` in the root namespace), a workload's filter, and
/// the customize-metrics task, as each proxy receives them.
#[test]
fn access_logging_and_metrics_of_the_tasks() {
    let m = model(&format!(
        "{MESH}{}{}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  accessLogging:
  - providers:
    - name: envoy
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: httpbin-errors, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  accessLogging:
  - providers: [{{name: envoy}}]
    filter: {{expression: response.code >= 400}}
  - match: {{mode: CLIENT}}
    disabled: true
  metrics:
  - providers: [{{name: prometheus}}]
    overrides:
    - match: {{metric: REQUEST_COUNT}}
      tagOverrides:
        request_host: {{value: request.host}}
        grpc_response_status: {{operation: REMOVE}}
    - match: {{metric: ALL_METRICS, mode: CLIENT}}
      disabled: true
",
        pod("sleep", "sleep", "10.244.0.5"),
        pod("httpbin", "httpbin", "10.244.0.6"),
    ));
    assert_eq!(m.warnings, []);
    let envoy = |filter: Option<&str>| xds::AccessLog {
        provider: "envoy".into(),
        path: "/dev/stdout".into(),
        format: xds::AccessLogFormat::Text(xds::telemetry::ISTIO_TEXT_LOG_FORMAT.into()),
        filter: filter.map(str::to_string),
    };
    let sleep = node_of(&m, "sleep", "10.244.0.5");
    assert_eq!(
        sleep.access_logging,
        Some(xds::AccessLogging {
            client: Some(vec![envoy(None)]),
            server: Some(vec![envoy(None)]),
        })
    );
    assert_eq!(sleep.metrics, None);
    let httpbin = node_of(&m, "httpbin", "10.244.0.6");
    assert_eq!(
        httpbin.access_logging,
        Some(xds::AccessLogging {
            client: Some(vec![]),
            server: Some(vec![envoy(Some("response.code >= 400"))]),
        })
    );
    assert_eq!(
        httpbin.metrics,
        Some(xds::MetricsConfig {
            client: Some(xds::ModeMetrics {
                disabled: true,
                overrides: vec![],
            }),
            server: Some(xds::ModeMetrics {
                disabled: false,
                overrides: vec![xds::MetricOverride {
                    metric: xds::IstioMetric::RequestCount,
                    disabled: false,
                    tags: vec![
                        xds::TagOverride {
                            name: "grpc_response_status".into(),
                            value: None,
                        },
                        xds::TagOverride {
                            name: "request_host".into(),
                            value: Some("request.host".into()),
                        },
                    ],
                }],
            }),
        })
    );
}

/// MeshConfig `enableTracing: false`: no tracing where no Telemetry `tracing` applies; a
/// Telemetry that names a provider still traces its workloads, as pilot.
#[test]
fn enable_tracing_false_turns_tracing_off_unless_a_telemetry_traces() {
    let mesh = MESH.replace(
        "    extensionProviders:",
        "    enableTracing: false\n    extensionProviders:",
    );
    let m = model(&format!(
        "{mesh}{}{}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: httpbin-zipkin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  tracing:
  - providers: [{{name: zipkin}}]
",
        pod("sleep", "sleep", "10.244.0.5"),
        pod("httpbin", "httpbin", "10.244.0.6"),
    ));
    assert_eq!(m.warnings, []);
    let sleep = tracing_of(&m, "sleep", "10.244.0.5").expect("tracing off is sent");
    assert!(sleep.disabled && sleep.collector.is_none(), "{sleep:?}");
    let httpbin = tracing_of(&m, "httpbin", "10.244.0.6").expect("the Telemetry's");
    assert!(!httpbin.disabled);
    assert_eq!(httpbin.collector.map(|c| c.port), Some(9411));

    // enableTracing unset: nothing on the node, the ProxyConfig's tracing stays.
    let m = model(&format!("{MESH}{}", pod("sleep", "sleep", "10.244.0.5")));
    assert_eq!(tracing_of(&m, "sleep", "10.244.0.5"), None);
}
