//! Istio's other injection template, `gateway`, and the merge of a pod's own `istio-proxy`
//! container with the template's.
//!
//! A pod chooses its templates with the annotation `inject.istio.io/templates` (`sidecar`, the
//! default; `gateway`; or a list such as `sidecar,gateway`, applied in order as Istio does).
//! The `gateway` template is what Istio's gateway Deployments use: no `istio-init` (a gateway
//! captures nothing), an `istio-proxy` container running the gateway proxy (`ama proxy router`),
//! Istio's gateway environment, readiness on 15021 `/healthz/ready`, and the template's volumes.
//!
//! A pod may declare its own `istio-proxy` container (Istio's gateway Deployment does, with
//! `image: auto`): the template's container is the base and the pod's fields are laid over it as
//! Kubernetes' strategic merge patch does (lists of env, ports and volume mounts merged by their
//! keys, other lists and scalars replaced), except `image: auto`, which keeps the template's.

use serde_json::{Map, Value, json};

use crate::error::FieldError;
use crate::sidecar::{BINARY, HEALTH_PORT, PROXY_CONTAINER_NAME, PROXY_PROMETHEUS_PORT, Sidecar};

/// The image value Istio's gateway Deployments use to ask injection for the proxy's image.
pub const AUTO_IMAGE: &str = "auto";

/// The templates a pod asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Templates {
    /// `sidecar`: capture (`istio-init`) and the sidecar proxy.
    pub sidecar: bool,
    /// `gateway`: the gateway proxy, no capture.
    pub gateway: bool,
}

impl Default for Templates {
    fn default() -> Self {
        Templates {
            sidecar: true,
            gateway: false,
        }
    }
}

impl Templates {
    /// Reads `inject.istio.io/templates`: absent or empty is `sidecar`; Istio's `grpc-agent`
    /// and `grpc-simple` (proxyless gRPC) and unknown names are refused, naming the value.
    pub fn parse(value: Option<&str>) -> Result<Templates, FieldError> {
        let field = format!(
            "metadata.annotations[\"{}\"]",
            api::annotation::INJECT_TEMPLATES
        );
        let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
            return Ok(Templates::default());
        };
        let mut t = Templates {
            sidecar: false,
            gateway: false,
        };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "sidecar" => t.sidecar = true,
                "gateway" => t.gateway = true,
                "grpc-agent" | "grpc-simple" => {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "template \"{name}\" (proxyless gRPC) is not supported by ama: use \
                             \"sidecar\" or \"gateway\""
                        ),
                    ));
                }
                other => {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "unknown injection template \"{other}\" (in {value:?}): the \
                             templates are \"sidecar\" and \"gateway\""
                        ),
                    ));
                }
            }
        }
        if !t.sidecar && !t.gateway {
            return Ok(Templates::default());
        }
        Ok(t)
    }
}

impl Sidecar {
    /// The `istio-proxy` container of the `gateway` template: `ama proxy router`.
    pub fn gateway_container(&self) -> Value {
        let (delay, period, failures) = self.readiness;
        let mut c = json!({
            "name": PROXY_CONTAINER_NAME,
            "image": self.image,
            "command": [BINARY],
            "ports": [{"containerPort": PROXY_PROMETHEUS_PORT, "protocol": "TCP", "name": "http-envoy-prom"}],
            "args": [
                "proxy",
                "router",
                "--domain",
                format!("$(POD_NAMESPACE).svc.{}", self.cluster_domain),
                format!("--proxyLogLevel={}", self.log_level),
                format!("--proxyComponentLogLevel={}", self.component_log_level),
                format!("--log_output_level={}", self.agent_log_level),
            ],
            "env": self.env,
            "readinessProbe": {
                "httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT},
                "periodSeconds": period,
                "timeoutSeconds": 3,
                "failureThreshold": failures,
            },
            "securityContext": {"runAsUser": self.proxy_uid, "runAsGroup": self.proxy_gid},
            "volumeMounts": [
                {"name": "workload-socket", "mountPath": "/var/run/secrets/workload-spiffe-uds"},
                {"name": "credential-socket", "mountPath": "/var/run/secrets/credential-uds"},
                {"name": "workload-certs", "mountPath": "/var/run/secrets/workload-spiffe-credentials"},
                {"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"},
                {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
                {"mountPath": "/etc/istio/proxy", "name": "istio-envoy"},
                {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
                {"name": "istio-podinfo", "mountPath": "/etc/istio/pod"},
            ],
        });
        // Kubernetes leaves a zero delay out; so does Istio's output.
        if delay > 0
            && let Some(probe) = c.get_mut("readinessProbe").and_then(Value::as_object_mut)
        {
            probe.insert("initialDelaySeconds".into(), json!(delay));
        }
        if let (Some(policy), Value::Object(map)) = (
            self.image_pull_policy.as_ref().filter(|p| !p.is_empty()),
            &mut c,
        ) {
            map.insert("imagePullPolicy".into(), json!(policy));
        }
        c
    }

    /// The volumes of the `gateway` template: the sidecar template's but the CRL's, in the
    /// same order.
    pub fn gateway_volumes(&self) -> Vec<Value> {
        let mut volumes = self.volumes();
        volumes.retain(|v| v.get("name").and_then(Value::as_str) != Some("istio-ca-crl"));
        volumes
    }
}

/// The pod's own `istio-proxy` container, if it declares one (not a full sidecar: see
/// [`crate::pod`]).
pub(crate) fn own_proxy_container(spec: &Map<String, Value>) -> Option<&Map<String, Value>> {
    spec.get("containers")?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .find(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER_NAME))
}

/// Lays the pod's own `istio-proxy` container over the template's (`base`), as Istio does with
/// a strategic merge patch: the pod's fields win, `image: auto` keeps the template's image.
pub fn merge_container(base: &mut Value, own: &Map<String, Value>) {
    let Value::Object(base) = base else {
        return;
    };
    for (key, value) in own {
        if key == "image" && value.as_str() == Some(AUTO_IMAGE) {
            continue;
        }
        merge_field(base, key, value);
    }
}

/// The merge key of a container's list field, as Kubernetes' `patchMergeKey` tags say.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "env" => Some("name"),
        "ports" => Some("containerPort"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        _ => None,
    }
}

fn merge_field(base: &mut Map<String, Value>, key: &str, value: &Value) {
    match (base.get_mut(key), value) {
        (Some(Value::Object(b)), Value::Object(v)) => {
            for (k, inner) in v {
                merge_field(b, k, inner);
            }
        }
        (Some(Value::Array(b)), Value::Array(v)) if merge_key(key).is_some() => {
            let merge_by = merge_key(key).unwrap_or_default();
            for item in v {
                let id = item.get(merge_by);
                match b
                    .iter_mut()
                    .find(|existing| id.is_some() && existing.get(merge_by) == id)
                {
                    // The pod's entry replaces the template's of the same key (an env var with
                    // `valueFrom` must not keep the template's `value`).
                    Some(existing) => *existing = item.clone(),
                    None => b.push(item.clone()),
                }
            }
        }
        _ => {
            base.insert(key.to_string(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_read_and_refused_clearly() {
        assert_eq!(Templates::parse(None), Ok(Templates::default()));
        assert_eq!(
            Templates::parse(Some("gateway")),
            Ok(Templates {
                sidecar: false,
                gateway: true
            })
        );
        assert_eq!(
            Templates::parse(Some("sidecar, gateway")),
            Ok(Templates {
                sidecar: true,
                gateway: true
            })
        );
        let err = Templates::parse(Some("grpc-agent")).unwrap_err();
        assert_eq!(
            err.field,
            "metadata.annotations[\"inject.istio.io/templates\"]"
        );
        assert!(err.message.contains("\"grpc-agent\""), "{}", err.message);
        assert!(err.message.contains("proxyless gRPC"), "{}", err.message);
        let err = Templates::parse(Some("sidecar,grpc-simple")).unwrap_err();
        assert!(err.message.contains("grpc-simple"), "{}", err.message);
        let err = Templates::parse(Some("spire")).unwrap_err();
        assert!(err.message.contains("unknown injection template \"spire\""));
    }

    #[test]
    fn the_pods_fields_win_and_image_auto_does_not() {
        let mut base = json!({
            "name": "istio-proxy",
            "image": "docker.io/ama/proxy:0.1.0",
            "args": ["proxy", "router"],
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 15},
        });
        let own = json!({
            "name": "istio-proxy",
            "image": "auto",
            "env": [{"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, {"name": "C", "value": "3"}],
            "ports": [{"containerPort": 8080, "protocol": "TCP"}, {"containerPort": 15090, "name": "prom"}],
            "readinessProbe": {"periodSeconds": 2},
            "securityContext": {"runAsUser": 1337},
        });
        merge_container(&mut base, own.as_object().unwrap());
        assert_eq!(base["image"], "docker.io/ama/proxy:0.1.0");
        assert_eq!(
            base["env"],
            json!([
                {"name": "A", "value": "1"},
                {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "C", "value": "3"},
            ])
        );
        assert_eq!(
            base["ports"],
            json!([{"containerPort": 15090, "name": "prom"}, {"containerPort": 8080, "protocol": "TCP"}])
        );
        assert_eq!(
            base["readinessProbe"],
            json!({"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 2})
        );
        assert_eq!(base["securityContext"]["runAsUser"], 1337);
        assert_eq!(base["args"], json!(["proxy", "router"]));

        // An image of its own wins.
        let own = json!({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0"});
        merge_container(&mut base, own.as_object().unwrap());
        assert_eq!(base["image"], "docker.io/istio/proxyv2:1.24.0");
    }
}
