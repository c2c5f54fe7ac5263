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
//! ([`gateway`]): no capture, `ama proxy router …`; a pod's own `istio-proxy` and `istio-init`
//! containers (the gateway Deployments' `image: auto`, "customize the proxy") are laid over the
//! template's and recorded in `proxy.istio.io/overrides`.
//!
//! As in Istio: native sidecars (`istio-proxy` as an init container with `restartPolicy:
//! Always`; values `pilot.env.ENABLE_NATIVE_SIDECARS` or the pod's
//! `sidecar.istio.io/nativeSidecar`), holding the apps until the proxy is ready (the proxy first,
//! postStart `ama proxy wait`), CNI mode (`istio-validation`), user volumes, virtual interfaces,
//! re-injection of an injected pod by `kube-inject`. The capture flags written into
//! `istio-init` pass the check `ama iptables` runs ([`netfilter::CaptureFlags::check`]), so
//! TPROXY and `excludeOutboundIPRanges: "*"` are refused here, naming the annotation.
//! [`not_run_by_ama_up`] says what of an injected pod `ama up` cannot run.
//!
//! `cargo run -p inject --example istio_goldens -- <dir>` compares the output with Istio's own
//! injection goldens (`pkg/kube/inject/testdata/inject`).
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
