//! API-server objects → [`api::objects::Object`], with the same parser and the same error
//! messages as the file registry.
//!
//! Every kind is watched as a [`DynamicObject`] (a JSON map), so one object the mesh cannot
//! read never breaks the deserialisation of a whole list or watch stream: it is parsed here,
//! alone, and a problem becomes an [`ObjectError`] naming its field
//! (`VirtualService default/reviews: spec.http[0].route[1].weight: must be 0..100`).
//!
//! Items of a list carry no `apiVersion`/`kind` for built-in types, so both come from the
//! [`ApiResource`] that was watched. `metadata.managedFields` is dropped before parsing: it is
//! the largest part of most objects and the mesh never reads it.

use ::kube::api::DynamicObject;
use ::kube::discovery::ApiResource;
use api::objects::{Object, ObjectError};
use serde_json::Value;

/// Pod phases after which a pod runs no more: its address may already belong to another pod.
const TERMINAL_PHASES: [&str; 2] = ["Succeeded", "Failed"];

/// The Secret types a `credentialName` reads (empty is `Opaque`); the others (service-account
/// tokens, registry credentials, ...) are never parsed nor kept.
const CREDENTIAL_SECRET_TYPES: [&str; 3] = ["kubernetes.io/tls", "Opaque", ""];

/// `kubectl apply` keeps the whole object in this annotation: for a Secret, its keys.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What became of one object.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived: moved into the kind's map at once
pub enum Converted {
    /// The mesh reads it.
    Object(Object),
    /// It exists but the mesh must not see it (a pod that has finished, a Secret of a type no
    /// `credentialName` reads).
    Skipped,
    /// It is malformed; the problems name its fields.
    Invalid(Vec<ObjectError>),
}

/// Converts one watched object of resource `resource`. `source_name` names the registry source
/// in errors (`kubernetes/VirtualService`).
pub fn convert(resource: &ApiResource, object: DynamicObject, source_name: &str) -> Converted {
    let mut value = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => return Converted::Invalid(vec![whole(source_name, e.to_string())]),
    };
    let Some(map) = value.as_object_mut() else {
        return Converted::Invalid(vec![whole(source_name, "not a JSON object".into())]);
    };
    map.insert(
        "apiVersion".into(),
        Value::String(resource.api_version.clone()),
    );
    map.insert("kind".into(), Value::String(resource.kind.clone()));
    let secret = resource.kind == "Secret" && resource.group.is_empty();
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        meta.remove("managedFields");
        if secret && let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
            annotations.remove(LAST_APPLIED);
        }
    }
    if secret {
        let secret_type = map.get("type").and_then(Value::as_str).unwrap_or("");
        if !CREDENTIAL_SECRET_TYPES.contains(&secret_type) {
            return Converted::Skipped;
        }
    }
    if resource.kind == "Pod"
        && resource.group.is_empty()
        && value
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .is_some_and(|phase| TERMINAL_PHASES.contains(&phase))
    {
        return Converted::Skipped;
    }
    convert_value(&value, source_name)
}

/// Parses one object given as JSON (with `apiVersion` and `kind`) through
/// [`api::objects::parse_stream`]: JSON is YAML, so the checks and messages are the file
/// registry's, without a second parser to keep in step.
pub fn convert_value(value: &Value, source_name: &str) -> Converted {
    let text = match serde_json::to_string(value) {
        Ok(t) => t,
        Err(e) => return Converted::Invalid(vec![whole(source_name, e.to_string())]),
    };
    let parsed = api::objects::parse(&text, source_name);
    let (errors, warnings): (Vec<_>, Vec<_>) =
        parsed.findings.into_iter().partition(|f| f.is_error());
    if !errors.is_empty() {
        return Converted::Invalid(errors);
    }
    // What Ama does not implement of the object: logged as the file registry logs it (the
    // watch sends an object again only when it changes).
    for w in &warnings {
        crate::registry::file::log_finding(w);
    }
    let mut objects = parsed.objects;
    match (objects.pop(), objects.is_empty()) {
        (Some(object), true) => Converted::Object(object),
        // A `List` object inside a watch stream: not something the API server sends.
        _ => Converted::Invalid(vec![whole(source_name, "expected one object".to_string())]),
    }
}

fn whole(source_name: &str, message: String) -> ObjectError {
    ObjectError {
        source_name: source_name.to_string(),
        doc: 1,
        line: 1,
        object: None,
        field: String::new(),
        message,
        severity: api::objects::Severity::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::kube::core::GroupVersionKind;
    use serde_json::json;

    fn resource(group: &str, version: &str, kind: &str) -> ApiResource {
        ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
    }

    fn dynamic(value: Value) -> DynamicObject {
        serde_json::from_value(value).expect("dynamic object")
    }

    #[test]
    fn secrets_of_credential_types_are_kept_without_last_applied() {
        let secret = |secret_type: Option<&str>| {
            let mut v = json!({
                "metadata": {
                    "name": "client-credential",
                    "namespace": "default",
                    "annotations": {
                        LAST_APPLIED: "{\"data\":{\"tls.key\":\"U0VDUkVUS0VZ\"}}",
                        "team": "a",
                    },
                },
                // base64 of "SECRETKEY"
                "data": {"tls.key": "U0VDUkVUS0VZ", "tls.crt": "Q0VSVA=="},
            });
            if let Some(t) = secret_type {
                v["type"] = json!(t);
            }
            convert(
                &resource("", "v1", "Secret"),
                dynamic(v),
                "kubernetes/Secret",
            )
        };
        for t in [Some("kubernetes.io/tls"), Some("Opaque"), None] {
            let Converted::Object(Object::Secret(s)) = secret(t) else {
                panic!("{t:?}: not kept");
            };
            assert_eq!(s.data["tls.key"], b"SECRETKEY");
            assert_eq!(
                s.metadata.annotations.keys().collect::<Vec<_>>(),
                ["team"],
                "the last-applied copy of the keys is dropped"
            );
            assert!(!format!("{s:?}").contains("SECRETKEY"));
        }
        for t in [
            "kubernetes.io/service-account-token",
            "kubernetes.io/dockerconfigjson",
            "helm.sh/release.v1",
        ] {
            assert_eq!(secret(Some(t)), Converted::Skipped, "{t}");
        }
    }

    #[test]
    fn list_item_without_type_meta_gets_the_resource_kind() {
        let pod = dynamic(json!({
            "metadata": {"name": "p", "namespace": "ns", "managedFields": [{"manager": "kubelet"}]},
            "spec": {"containers": [{"name": "app", "image": "x"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.7"},
        }));
        let Converted::Object(Object::Pod(pod)) = convert(&resource("", "v1", "Pod"), pod, "k")
        else {
            panic!("not a pod");
        };
        assert_eq!(pod.status.pod_ip.as_deref(), Some("10.244.0.7"));
        assert_eq!(pod.metadata.namespace, "ns");
    }

    #[test]
    fn finished_pods_are_skipped() {
        let pod = dynamic(json!({
            "metadata": {"name": "job-x", "namespace": "ns"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Succeeded", "podIP": "10.244.0.8"},
        }));
        assert_eq!(
            convert(&resource("", "v1", "Pod"), pod, "k"),
            Converted::Skipped
        );
    }

    #[test]
    fn field_path_of_a_bad_crd() {
        let vs = dynamic(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}, "weight": 300}]}]},
        }));
        let r = resource("networking.istio.io", "v1", "VirtualService");
        let Converted::Invalid(errors) = convert(&r, vs, "kubernetes/VirtualService") else {
            panic!("accepted");
        };
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].object.as_deref(),
            Some("VirtualService default/bad")
        );
        assert_eq!(errors[0].field, "spec.http[0].route[0].weight");
        assert_eq!(errors[0].source_name, "kubernetes/VirtualService");
    }

    #[test]
    fn strings_that_look_like_yaml_scalars_stay_strings() {
        // JSON is read as YAML: quoted scalars must not turn into booleans or numbers.
        let ns = dynamic(json!({
            "metadata": {"name": "on", "labels": {"istio-injection": "enabled", "x": "yes", "n": "010"}},
        }));
        let Converted::Object(Object::Namespace(ns)) =
            convert(&resource("", "v1", "Namespace"), ns, "k")
        else {
            panic!("not a namespace");
        };
        assert_eq!(ns.metadata.name, "on");
        assert_eq!(ns.metadata.labels["x"], "yes");
        assert_eq!(ns.metadata.labels["n"], "010");
    }

    #[test]
    fn a_security_policy_ama_cannot_read_is_kept_to_deny() {
        // Istio >= 1.24 validates fields Ama may not know yet; the API server keeps them.
        let ap = dynamic(json!({
            "metadata": {"name": "deny-get", "namespace": "foo"},
            "spec": {
                "selector": {"matchLabels": {"app": "httpbin"}},
                "action": "DENY",
                "rules": [{"from": [{"source": {"bogus": ["a"]}}]}],
            },
        }));
        let r = resource("security.istio.io", "v1", "AuthorizationPolicy");
        let Converted::Object(Object::UnreadablePolicy(u)) =
            convert(&r, ap, "kubernetes/AuthorizationPolicy")
        else {
            panic!("not kept as a policy Ama cannot read");
        };
        assert_eq!(u.metadata.name, "deny-get");
        assert_eq!(
            u.binding.selector.map(|s| s.match_labels),
            Some([("app".to_string(), "httpbin".to_string())].into())
        );
    }
}
