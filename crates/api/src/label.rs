//! Names of the pod labels that Istio's injector reads or writes (Istio's names, unchanged).

/// Opt a pod out of (or into) injection; wins over the annotation of the same name.
pub const SIDECAR_INJECT: &str = "sidecar.istio.io/inject";
/// `istio` on injected pods: peers may talk mutual TLS to them.
pub const TLS_MODE: &str = "security.istio.io/tlsMode";
/// The service a workload belongs to, for telemetry.
pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
/// The version of that service, for telemetry.
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
/// Kubernetes' recommended name label, second choice for the canonical name.
pub const APP_KUBERNETES_NAME: &str = "app.kubernetes.io/name";
/// Kubernetes' recommended version label, second choice for the canonical revision.
pub const APP_KUBERNETES_VERSION: &str = "app.kubernetes.io/version";
/// The traditional `app` label, third choice for the canonical name.
pub const APP: &str = "app";
/// The traditional `version` label, third choice for the canonical revision.
pub const VERSION: &str = "version";
