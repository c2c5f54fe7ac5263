//! The sidecar-injection webhook, without the HTTP server: an `admission.k8s.io/v1`
//! AdmissionReview in, an AdmissionReview response out.
//!
//! The control plane serves [`review`] on `/inject` (port 15017, `443` on its Service) for the
//! MutatingWebhookConfiguration `istio-sidecar-injector`. What it answers is Istio's:
//!
//! - a pod that should get a sidecar: `allowed: true`, `patchType: JSONPatch` and `patch`, the
//!   base64 of an RFC 6902 JSON Patch from the pod as sent to the pod as [`inject_pod_template`]
//!   makes it;
//! - a pod that should not ([`injection_required`] says why): `allowed: true`, no patch;
//! - a request that cannot be read, or a pod whose annotations are wrong: `allowed: false` with
//!   `status.message`, as istiod does (the API server then refuses the pod with that message,
//!   since the webhook's `failurePolicy` is `Fail`).
//!
//! The `uid` of the request is echoed whenever it can be read. Nothing here panics on input.
//! Only `admission.k8s.io/v1` is served: the webhook configuration asks for no other.
//!
//! [`injection_required`] is the selection on its own, for `ama up`, which has no API server to
//! apply the webhook's selectors: it applies them itself from the namespace's labels.

use std::collections::BTreeMap;

use api::{annotation as ann, label};
use base64::Engine;
use serde_json::{Map, Value, json};

use crate::config::InjectConfig;
use crate::pod::{IGNORED_NAMESPACES, Outcome, SkipReason, inject_pod_template};
use crate::workload::WorkloadMeta;

/// The only AdmissionReview version served.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";
/// Namespace label that turns injection on (`enabled`) or off (any other value).
pub const NAMESPACE_INJECTION_LABEL: &str = "istio-injection";
/// Namespace and pod label naming the control-plane revision that injects.
pub const REVISION_LABEL: &str = "istio.io/rev";
/// Pod label Kubernetes puts on the pods of a ReplicaSet; it ends the ReplicaSet's name.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Labels of a namespace or pod.
pub type Labels = BTreeMap<String, String>;

/// Answers one AdmissionReview. `namespace_labels` gives the labels of a namespace, or `None`
/// when the namespace is not known (yet): the API server then already applied the webhook's
/// namespace selectors, and only the pod's own opt-outs are checked.
///
/// Always returns a JSON AdmissionReview `admission.k8s.io/v1` with a `response`.
pub fn review(
    request_body: &[u8],
    config: &InjectConfig,
    namespace_labels: impl Fn(&str) -> Option<Labels>,
) -> Vec<u8> {
    let (uid, response) = match answer(request_body, config, &namespace_labels) {
        Ok((uid, response)) => (uid, response),
        Err((uid, message)) => (
            uid,
            Response {
                allowed: false,
                patch: None,
                message: Some(message),
                warnings: Vec::new(),
            },
        ),
    };
    let mut body = Map::new();
    body.insert("uid".into(), json!(uid));
    body.insert("allowed".into(), json!(response.allowed));
    if let Some(patch) = response.patch {
        body.insert("patchType".into(), json!("JSONPatch"));
        body.insert(
            "patch".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(patch)),
        );
    }
    if let Some(message) = response.message {
        body.insert("status".into(), json!({ "message": message }));
    }
    if !response.warnings.is_empty() {
        // `kubectl apply` prints each as `Warning: …`.
        body.insert("warnings".into(), json!(response.warnings));
    }
    let review = json!({
        "apiVersion": ADMISSION_API_VERSION,
        "kind": "AdmissionReview",
        "response": Value::Object(body),
    });
    // Serialising a Value of strings and booleans cannot fail.
    serde_json::to_vec(&review).unwrap_or_default()
}

/// What to answer, before it is wrapped in an AdmissionReview.
struct Response {
    allowed: bool,
    /// The JSON Patch, as JSON bytes.
    patch: Option<Vec<u8>>,
    message: Option<String>,
    /// What Ama does not implement of the pod ([`api::support`]).
    warnings: Vec<String>,
}

/// The uid (empty when unreadable) and the response, or the uid and why the request is refused.
fn answer(
    body: &[u8],
    config: &InjectConfig,
    namespace_labels: &dyn Fn(&str) -> Option<Labels>,
) -> Result<(String, Response), (String, String)> {
    let review: Value = serde_json::from_slice(body).map_err(|e| {
        (
            String::new(),
            format!("could not decode the AdmissionReview: {e}"),
        )
    })?;
    let uid = review
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let refuse = |message: String| (uid.clone(), message);

    let api_version = review.get("apiVersion").and_then(Value::as_str);
    let kind = review.get("kind").and_then(Value::as_str);
    if kind != Some("AdmissionReview") {
        return Err(refuse(format!(
            "not an AdmissionReview (kind {})",
            kind.map_or_else(|| "missing".to_string(), |k| format!("\"{k}\""))
        )));
    }
    if api_version != Some(ADMISSION_API_VERSION) {
        return Err(refuse(format!(
            "AdmissionReview {} is not served: only {ADMISSION_API_VERSION} is",
            api_version.map_or_else(|| "without apiVersion".to_string(), |v| format!("\"{v}\""))
        )));
    }
    let Some(request) = review.get("request").filter(|r| r.is_object()) else {
        return Err(refuse("the AdmissionReview has no request".to_string()));
    };
    if uid.is_empty() {
        return Err(refuse("the AdmissionReview request has no uid".to_string()));
    }
    let resource_kind = request.pointer("/kind/kind").and_then(Value::as_str);
    let Some(pod) = request.get("object").filter(|o| o.is_object()) else {
        return Err(refuse(
            "the AdmissionReview request has no object".to_string(),
        ));
    };
    let object_kind = pod.get("kind").and_then(Value::as_str);
    if resource_kind.is_some_and(|k| k != "Pod") || object_kind.is_some_and(|k| k != "Pod") {
        return Err(refuse(format!(
            "the object is a {}, not a Pod: only pods are injected",
            object_kind.or(resource_kind).unwrap_or("resource")
        )));
    }

    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
        .unwrap_or(api::objects::DEFAULT_NAMESPACE)
        .to_string();
    let skipped = Response {
        allowed: true,
        patch: None,
        message: None,
        warnings: Vec::new(),
    };
    let ns_labels = namespace_labels(&namespace);
    if injection_required(&namespace, ns_labels.as_ref(), pod, config).is_err() {
        return Ok((uid, skipped));
    }

    let workload = workload_of_pod(pod, &namespace);
    let mut injected = pod.clone();
    match inject_pod_template(&mut injected, &workload, config) {
        Ok(Outcome::Injected) => {}
        Ok(Outcome::Skipped(_)) => return Ok((uid, skipped)),
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(refuse(format!(
                "cannot inject the sidecar into {}: {}",
                workload.display(),
                list.join("; ")
            )));
        }
    }
    let patch = json_patch::diff(pod, &injected);
    let patch = serde_json::to_vec(&patch)
        .map_err(|e| refuse(format!("cannot write the JSON patch: {e}")))?;
    let annotations = string_map(pod.pointer("/metadata/annotations"));
    let warnings = api::overrides::not_implemented(&annotations)
        .into_iter()
        .map(|key| {
            format!(
                "{}: metadata.annotations[\"{key}\"]: not implemented by Ama; ignored",
                workload.display()
            )
        })
        .collect();
    Ok((
        uid,
        Response {
            allowed: true,
            patch: Some(patch),
            message: None,
            warnings,
        },
    ))
}

/// Whether a pod in `namespace` (with `namespace_labels`, when known) gets a sidecar from this
/// control plane, following Istio: its MutatingWebhookConfiguration's selectors, then the
/// injector's policy (`enabled`).
///
/// In order: namespaces Istio ignores and the control plane's own (unless the pod is labelled
/// `sidecar.istio.io/inject: "true"`, as Istio's gateways are); `hostNetwork`; the pod's
/// `sidecar.istio.io/inject` (the label wins over the annotation; `true`, `yes`, `on`, `y` opt
/// in, an empty or absent value defers, anything else opts out); then selection: a namespace
/// labelled `istio-injection=enabled`, or `istio.io/rev=<this revision>` (without
/// `istio-injection`), or else a pod labelled `sidecar.istio.io/inject: "true"` or
/// `istio.io/rev: <this revision>`; finally a pod that already has a sidecar (its status
/// annotation, or both `istio-init` and `istio-proxy`) is skipped.
pub fn injection_required(
    namespace: &str,
    namespace_labels: Option<&Labels>,
    pod: &Value,
    config: &InjectConfig,
) -> Result<(), SkipReason> {
    let labels = string_map(pod.pointer("/metadata/labels"));
    let annotations = string_map(pod.pointer("/metadata/annotations"));
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Err(SkipReason::IgnoredNamespace);
    }
    // The control plane's namespace is injected only where a pod asks for it with the label
    // (Istio's gateway Deployments in istio-system do), as Istio's object-selector webhook does.
    if namespace == config.values.global.istio_namespace
        && labels.get(label::SIDECAR_INJECT).map(String::as_str) != Some("true")
    {
        return Err(SkipReason::ControlPlaneNamespace);
    }
    if pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) {
        return Err(SkipReason::HostNetwork);
    }
    let choice = labels
        .get(label::SIDECAR_INJECT)
        .or_else(|| annotations.get(ann::SIDECAR_INJECT))
        .map(|v| v.to_ascii_lowercase());
    match choice.as_deref() {
        None | Some("") | Some("y" | "yes" | "true" | "on") => {}
        Some(_) => return Err(SkipReason::Disabled),
    }
    if let Some(ns_labels) = namespace_labels {
        selected(ns_labels, &labels, config.revision())?;
    }
    // As Istio: only the status annotation says a pod is injected; an istio-init or istio-proxy
    // of the pod's own is laid over the template's.
    if annotations.contains_key(ann::SIDECAR_STATUS) {
        return Err(SkipReason::AlreadyInjected);
    }
    Ok(())
}

/// The selectors of Istio's four injection webhooks (`namespace.`, `rev.namespace.`, `object.`
/// and `rev.object.sidecar-injector.istio.io`), for the revision `revision`.
fn selected(ns_labels: &Labels, pod_labels: &Labels, revision: &str) -> Result<(), SkipReason> {
    let pod_opt_out = pod_labels.get(label::SIDECAR_INJECT).map(String::as_str) == Some("false");
    match (
        ns_labels.get(NAMESPACE_INJECTION_LABEL),
        ns_labels.get(REVISION_LABEL),
    ) {
        (Some(enabled), _) if enabled == "enabled" && !pod_opt_out => Ok(()),
        (Some(_), _) => Err(SkipReason::NotSelected),
        (None, Some(rev)) if rev == revision && !pod_opt_out => Ok(()),
        (None, Some(rev)) if rev != revision => Err(SkipReason::OtherRevision),
        (None, Some(_)) => Err(SkipReason::NotSelected),
        (None, None) => match pod_labels.get(REVISION_LABEL) {
            Some(rev) if rev == revision && !pod_opt_out => Ok(()),
            Some(rev) if rev != revision => Err(SkipReason::OtherRevision),
            Some(_) => Err(SkipReason::NotSelected),
            None if pod_labels.get(label::SIDECAR_INJECT).map(String::as_str) == Some("true") => {
                Ok(())
            }
            None => Err(SkipReason::NotSelected),
        },
    }
}

/// The workload that owns a pod, as Istio guesses it from an admission request: the
/// controller's kind and name, a ReplicaSet's Deployment (its name less `-<pod-template-hash>`),
/// a Job's CronJob (its name less `-<8+ digits>`), else the pod itself.
pub fn workload_of_pod(pod: &Value, namespace: &str) -> WorkloadMeta {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    let mut meta = WorkloadMeta {
        api_version: "v1".to_string(),
        kind: "Pod".to_string(),
        name: String::new(),
        namespace: namespace.to_string(),
    };
    let generated = !text(pod.pointer("/metadata/generateName")).is_empty();
    let controller = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("controller") == Some(&Value::Bool(true)))
        });
    if let (true, Some(owner)) = (generated, controller) {
        meta.api_version = text(owner.get("apiVersion"));
        meta.kind = text(owner.get("kind"));
        meta.name = text(owner.get("name"));
        let hash = text(pod.pointer(&format!("/metadata/labels/{}", POD_TEMPLATE_HASH_LABEL)));
        if meta.kind == "ReplicaSet"
            && !hash.is_empty()
            && let Some(deployment) = meta.name.strip_suffix(&format!("-{hash}"))
        {
            meta.name = deployment.to_string();
            meta.kind = "Deployment".to_string();
            meta.api_version = "apps/v1".to_string();
        } else if meta.kind == "Job"
            && let Some((cronjob, stamp)) = meta.name.rsplit_once('-')
            && stamp.len() >= 8
            && stamp.chars().all(|c| c.is_ascii_digit())
        {
            meta.name = cronjob.to_string();
            meta.kind = "CronJob".to_string();
            meta.api_version = "batch/v1".to_string();
        }
    }
    if meta.name.is_empty() {
        meta.name = text(pod.pointer("/metadata/name"));
    }
    meta
}

/// The string entries of a labels or annotations mapping (the API server allows no others).
fn string_map(value: Option<&Value>) -> Labels {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(labels: Value, annotations: Value) -> Value {
        json!({
            "metadata": {"labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app"}]}
        })
    }

    #[test]
    fn selection_follows_istios_webhooks() {
        let config = InjectConfig::default();
        let enabled = labels(&[("istio-injection", "enabled")]);
        let disabled = labels(&[("istio-injection", "disabled")]);
        let rev_default = labels(&[("istio.io/rev", "default")]);
        let rev_canary = labels(&[("istio.io/rev", "canary")]);
        let none = Labels::new();
        let plain = pod(json!({}), json!({}));
        let check = |ns: &Labels, pod: &Value| injection_required("shop", Some(ns), pod, &config);

        assert_eq!(check(&enabled, &plain), Ok(()));
        assert_eq!(check(&rev_default, &plain), Ok(()));
        assert_eq!(check(&disabled, &plain), Err(SkipReason::NotSelected));
        assert_eq!(check(&rev_canary, &plain), Err(SkipReason::OtherRevision));
        assert_eq!(check(&none, &plain), Err(SkipReason::NotSelected));

        let opt_in = pod(json!({"sidecar.istio.io/inject": "true"}), json!({}));
        assert_eq!(check(&none, &opt_in), Ok(()));
        // The object selector reads labels only: the annotation alone does not select.
        let annotated = pod(json!({}), json!({"sidecar.istio.io/inject": "true"}));
        assert_eq!(check(&none, &annotated), Err(SkipReason::NotSelected));
        let pod_rev = pod(json!({"istio.io/rev": "default"}), json!({}));
        assert_eq!(check(&none, &pod_rev), Ok(()));

        // The label wins over the annotation; any value but the true ones opts out.
        let out = pod(
            json!({"sidecar.istio.io/inject": "false"}),
            json!({"sidecar.istio.io/inject": "true"}),
        );
        assert_eq!(check(&enabled, &out), Err(SkipReason::Disabled));
        let out = pod(json!({}), json!({"sidecar.istio.io/inject": "no"}));
        assert_eq!(check(&enabled, &out), Err(SkipReason::Disabled));
        let yes = pod(json!({}), json!({"sidecar.istio.io/inject": "YES"}));
        assert_eq!(check(&enabled, &yes), Ok(()));

        for ns in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "local-path-storage",
        ] {
            assert_eq!(
                injection_required(ns, Some(&enabled), &plain, &config),
                Err(SkipReason::IgnoredNamespace)
            );
        }
        assert_eq!(
            injection_required("istio-system", Some(&enabled), &plain, &config),
            Err(SkipReason::ControlPlaneNamespace)
        );
        // Istio's gateway Deployments in istio-system ask for injection with the label, and
        // their own istio-proxy container (image auto) is not a sidecar yet.
        let gateway = json!({
            "metadata": {
                "labels": {"sidecar.istio.io/inject": "true", "istio": "ingressgateway"},
                "annotations": {"inject.istio.io/templates": "gateway"},
            },
            "spec": {"containers": [{"name": "istio-proxy", "image": "auto"}]},
        });
        assert_eq!(
            injection_required("istio-system", Some(&Labels::new()), &gateway, &config),
            Ok(())
        );
        let host = json!({"spec": {"hostNetwork": true, "containers": []}});
        assert_eq!(check(&enabled, &host), Err(SkipReason::HostNetwork));
        let injected = pod(json!({}), json!({"sidecar.istio.io/status": "{}"}));
        assert_eq!(check(&enabled, &injected), Err(SkipReason::AlreadyInjected));
        // Unknown namespace: the API server's selectors already chose the pod.
        assert_eq!(injection_required("shop", None, &plain, &config), Ok(()));
    }

    #[test]
    fn unimplemented_annotations_are_admission_warnings() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhook/create-pod.json");
        let mut review: Value =
            serde_json::from_slice(&std::fs::read(path).expect("payload")).expect("JSON");
        review["request"]["object"]["metadata"]["annotations"] = json!({"sidecar.istio.io/bootstrapOverride": "custom", "sidecar.istio.io/proxyCPU": "50m"});
        let body = serde_json::to_vec(&review).expect("JSON");
        let out: Value = serde_json::from_slice(&review_of(&body)).expect("an AdmissionReview");
        assert_eq!(out["response"]["allowed"], true);
        let warnings = out["response"]["warnings"].as_array().expect("warnings");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let w = warnings[0].as_str().expect("text");
        assert!(
            w.ends_with(
                ": metadata.annotations[\"sidecar.istio.io/bootstrapOverride\"]: not implemented \
                 by Ama; ignored"
            ),
            "{w}"
        );
    }

    fn review_of(body: &[u8]) -> Vec<u8> {
        let enabled = labels(&[("istio-injection", "enabled")]);
        review(body, &InjectConfig::default(), |_| Some(enabled.clone()))
    }

    #[test]
    fn workload_is_guessed_as_istio_does() {
        let pod = json!({"metadata": {
            "generateName": "reviews-v1-5f8c7-",
            "labels": {"pod-template-hash": "5f8c7"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "reviews-v1-5f8c7", "controller": true}]
        }});
        let w = workload_of_pod(&pod, "shop");
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), w.api_version.as_str()),
            ("Deployment", "reviews-v1", "apps/v1")
        );
        let pod = json!({"metadata": {
            "generateName": "backup-28391040-",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                 "name": "backup-28391040", "controller": true}]
        }});
        let w = workload_of_pod(&pod, "ops");
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("CronJob", "backup"));
        let pod = json!({"metadata": {"name": "sleep"}});
        let w = workload_of_pod(&pod, "default");
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("Pod", "sleep"));
    }
}
