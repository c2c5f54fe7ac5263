//! Sidecar injection: what `istioctl kube-inject` and Istio's injection webhook do, for Ama.
//!
//! - [`inject_stream`] takes a YAML stream (what `kubectl apply -f` reads) and returns it with
//!   the sidecar added to every workload: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
//!   ReplicationController, Job, CronJob and the items of a List. Other documents pass through
//!   byte for byte. A bad document is reported with its index, kind/name and field, and left
//!   out; the others are still injected.
//! - [`inject_pod_template`] injects one pod template (`{metadata, spec}`), for the admission
//!   webhook.
//! - [`webhook::review`] answers an `admission.k8s.io/v1` AdmissionReview with a JSON Patch, and
//!   [`injection_required`] is its selection logic (namespace labels, opt-outs), shared with
//!   `ama up`.
//!
//! The added objects follow Istio's default injection template: an `istio-init` init container
//! (`ama iptables …` with `istio-iptables`' flags) and an `istio-proxy` container
//! (`ama proxy sidecar …`) with Istio's environment, probes, ports, security context and
//! volumes, the `sidecar.istio.io/status` annotation and the canonical-service labels. App probes
//! are rewritten to go through the proxy's status port ([`probes`]).
//!
//! The annotation `inject.istio.io/templates: gateway` chooses Istio's gateway template instead
//! ([`gateway`]): no capture, `ama proxy router …`; a pod's own `istio-proxy` container (the
//! gateway Deployments' `image: auto`) is merged with the template's.
//!
//! Pure: no I/O. Settings come in an [`InjectConfig`] (MeshConfig + Istio values, see the `api`
//! crate).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
pub mod gateway;
mod pod;
pub mod probes;
pub mod sidecar;
mod stream;
pub mod webhook;
mod workload;

pub use api::yaml::{RawDocument, split_documents, to_yaml};
pub use config::InjectConfig;
pub use error::{FieldError, InjectError, Location, Warning};
pub use pod::{
    Outcome, PROMETHEUS_ANNOTATIONS_ENV, SkipReason, inject_pod_template, not_run_by_ama_up,
};
pub use stream::{StreamOutput, inject_stream};
pub use webhook::{injection_required, review};
pub use workload::{WorkloadMeta, template_path};
