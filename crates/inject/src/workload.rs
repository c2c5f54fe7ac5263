//! Which kinds carry a pod template, where it is, and whose it is.

use serde_json::Value;

/// The kinds `kube-inject` injects, with the path of their pod template.
///
/// Anything else (Service, ConfigMap, custom resources …) passes through untouched.
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job"
        // OpenShift's, injected as Istio injects it.
        | "DeploymentConfig" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Renders a template path for messages: `spec.jobTemplate.spec.template`.
pub fn path_string(path: &[&str]) -> String {
    path.join(".")
}

/// The object that owns a pod template: what Istio calls the deployment metadata. It names the
/// workload in telemetry (`ISTIO_META_WORKLOAD_NAME`, `ISTIO_META_OWNER`) and is the last
/// fallback of the canonical service name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadMeta {
    /// `apiVersion` of the owner (`apps/v1`).
    pub api_version: String,
    /// `kind` of the owner (`Deployment`).
    pub kind: String,
    /// `metadata.name` of the owner.
    pub name: String,
    /// `metadata.namespace` of the owner, `default` when unset.
    pub namespace: String,
}

impl WorkloadMeta {
    /// Reads the owner's identity from a Kubernetes object. A Pod with a controller
    /// (`ownerReferences[].controller: true`) belongs to that controller, as Istio reads it: a
    /// ReplicaSet named `<deployment>-<pod-template-hash>` is its Deployment's, a Job named
    /// `<cronjob>-<8 to 10 digits>` is its CronJob's.
    pub fn of_object(object: &Value) -> Self {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
        let namespace = text(object.pointer("/metadata/namespace"));
        let mut meta = WorkloadMeta {
            api_version: text(object.get("apiVersion")),
            kind: text(object.get("kind")),
            name: text(object.pointer("/metadata/name")),
            namespace: if namespace.is_empty() {
                "default".to_string()
            } else {
                namespace
            },
        };
        if meta.kind != "Pod" {
            return meta;
        }
        let controller = object
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| {
                refs.iter()
                    .find(|r| r.get("controller") == Some(&Value::Bool(true)))
            });
        let Some(controller) = controller else {
            return meta;
        };
        meta.api_version = text(controller.get("apiVersion"));
        meta.kind = text(controller.get("kind"));
        meta.name = text(controller.get("name"));
        let hash = text(object.pointer("/metadata/labels/pod-template-hash"));
        if meta.kind == "ReplicaSet"
            && !hash.is_empty()
            && let Some(deployment) = meta.name.strip_suffix(&format!("-{hash}"))
        {
            meta.name = deployment.to_string();
            meta.kind = "Deployment".to_string();
        } else if meta.kind == "Job"
            && let Some((cronjob, stamp)) = meta.name.rsplit_once('-')
            && (8..=10).contains(&stamp.len())
            && stamp.bytes().all(|b| b.is_ascii_digit())
        {
            meta.name = cronjob.to_string();
            meta.kind = "CronJob".to_string();
            meta.api_version = "batch/v1".to_string();
        }
        meta
    }

    /// `Kind namespace/name`, as messages name an object.
    pub fn display(&self) -> String {
        let kind = if self.kind.is_empty() {
            "object"
        } else {
            &self.kind
        };
        if self.name.is_empty() {
            format!("{kind} {}/<unnamed>", self.namespace)
        } else {
            format!("{kind} {}/{}", self.namespace, self.name)
        }
    }

    /// `kubernetes://apis/<apiVersion>/namespaces/<ns>/<kind>s/<name>`, Istio's owner reference,
    /// when the object has an apiVersion and a name.
    pub fn owner_uri(&self) -> Option<String> {
        if self.api_version.is_empty() || self.name.is_empty() || self.kind.is_empty() {
            return None;
        }
        Some(format!(
            "kubernetes://apis/{}/namespaces/{}/{}s/{}",
            self.api_version,
            self.namespace,
            self.kind.to_lowercase(),
            self.name
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_uri_is_istios() {
        let w = WorkloadMeta::of_object(&serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "httpbin"}
        }));
        assert_eq!(w.display(), "Deployment default/httpbin");
        assert_eq!(
            w.owner_uri().as_deref(),
            Some("kubernetes://apis/apps/v1/namespaces/default/deployments/httpbin")
        );
        assert_eq!(
            template_path("CronJob").map(path_string).as_deref(),
            Some("spec.jobTemplate.spec.template")
        );
        assert_eq!(template_path("Service"), None);
    }
}
