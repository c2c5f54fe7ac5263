//! Names of the pod annotations that Istio's injector reads or writes.
//!
//! They are part of Istio's user contract: a manifest written for `istioctl kube-inject` must mean
//! the same thing to `ama kube-inject`, so the names are Istio's, letter for letter.

/// Opt a pod out of (or into) injection: `"false"` skips it. The label of the same name wins.
pub const SIDECAR_INJECT: &str = "sidecar.istio.io/inject";
/// The injection templates a pod asks for (`sidecar`, `gateway`, or a list such as
/// `sidecar,gateway`); absent means `sidecar`.
pub const INJECT_TEMPLATES: &str = "inject.istio.io/templates";
/// Written by the injector: JSON of what it added. Its presence means "already injected".
pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// Image of the `istio-proxy` and `istio-init` containers (a full reference, `repo/name:tag`).
pub const SIDECAR_PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
/// CPU request of the proxy container (a Kubernetes quantity).
pub const SIDECAR_PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
/// Memory request of the proxy container (a Kubernetes quantity).
pub const SIDECAR_PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
/// CPU limit of the proxy container (a Kubernetes quantity).
pub const SIDECAR_PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
/// Memory limit of the proxy container (a Kubernetes quantity).
pub const SIDECAR_PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
/// How traffic is captured: `REDIRECT`, `TPROXY` or `NONE`.
pub const SIDECAR_INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
/// Whether the app's HTTP, TCP and gRPC probes are rewritten to go through the proxy.
pub const SIDECAR_REWRITE_APP_HTTP_PROBERS: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
/// Log level of the data plane (`--proxyLogLevel`).
pub const SIDECAR_LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
/// Per-component log levels of the data plane (`--proxyComponentLogLevel`).
pub const SIDECAR_COMPONENT_LOG_LEVEL: &str = "sidecar.istio.io/componentLogLevel";
/// Log levels of the agent part (`--log_output_level`).
pub const SIDECAR_AGENT_LOG_LEVEL: &str = "sidecar.istio.io/agentLogLevel";
/// Port of the proxy's status server (health, merged metrics, app probes); 15020 by default.
pub const SIDECAR_STATUS_PORT: &str = "status.sidecar.istio.io/port";
/// Inbound ports to capture (`*` for all), comma separated.
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// Inbound ports never to capture, comma separated.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// Outbound ports to capture even when their IP range is excluded, comma separated.
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
/// Outbound ports never to capture, comma separated.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// Outbound CIDR ranges to capture (`*` for all), comma separated.
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// Outbound CIDR ranges never to capture, comma separated.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// Per-workload `ProxyConfig` (YAML or JSON), merged over the mesh's `defaultConfig`.
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
/// Control-plane revision the pod was injected by.
pub const ISTIO_REV: &str = "istio.io/rev";
/// Whether the proxy merges the app's Prometheus metrics into its own (`true` by default).
pub const PROMETHEUS_MERGE_METRICS: &str = "prometheus.istio.io/merge-metrics";
/// Prometheus scrape switch, rewritten to point at the proxy's merged metrics.
pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
/// Prometheus scrape port, rewritten to the status port.
pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
/// Prometheus scrape path, rewritten to `/stats/prometheus`.
pub const PROMETHEUS_PATH: &str = "prometheus.io/path";
/// Container `kubectl exec` and `kubectl logs` pick when none is named.
pub const KUBECTL_DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
/// Container `kubectl logs` picks when none is named.
pub const KUBECTL_DEFAULT_LOGS_CONTAINER: &str = "kubectl.kubernetes.io/default-logs-container";
/// Run `istio-proxy` as a native sidecar (`"true"`) or a regular container (`"false"`).
pub const SIDECAR_NATIVE: &str = "sidecar.istio.io/nativeSidecar";
/// Extra volumes of the pod, JSON: `{"name": {<volume source>}}`.
pub const SIDECAR_USER_VOLUME: &str = "sidecar.istio.io/userVolume";
/// Extra mounts of the proxy, JSON: `{"name": {"mountPath": …}}`.
pub const SIDECAR_USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";
/// Readiness probe of the proxy: initial delay (seconds).
pub const READINESS_INITIAL_DELAY: &str = "readiness.status.sidecar.istio.io/initialDelaySeconds";
/// Readiness probe of the proxy: period (seconds).
pub const READINESS_PERIOD: &str = "readiness.status.sidecar.istio.io/periodSeconds";
/// Readiness probe of the proxy: failures before unready.
pub const READINESS_FAILURE_THRESHOLD: &str = "readiness.status.sidecar.istio.io/failureThreshold";
/// Virtual interfaces (KubeVirt) whose traffic is captured as inbound (older name).
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
/// Virtual interfaces whose traffic is captured as inbound.
pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
/// Interfaces whose traffic is never captured.
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
