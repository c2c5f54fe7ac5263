//! The control plane's objects: its namespace, identity and permissions, its two ConfigMaps,
//! and the Deployment and Service `istiod` running `ama discovery`.
//!
//! What `ama discovery` can rely on in the pod:
//!
//! - ports 15010 (`grpc-xds`, plain xDS), 15012 (`tls-xds`: xDS and the CA over TLS),
//!   15017 (`https-webhooks`: `/inject`), 15014 (`http-monitoring`: `/metrics`, and `/ready`,
//!   the readiness probe);
//! - the MeshConfig at `/etc/istio/config/mesh` and the injector values at
//!   `/var/lib/istio/inject/values` (the ConfigMaps, mounted as istiod mounts them);
//! - `POD_NAME`, `POD_NAMESPACE`, `SERVICE_ACCOUNT`, `REVISION`, `CLUSTER_ID`,
//!   `INJECTION_WEBHOOK_CONFIG_NAME` (the MutatingWebhookConfiguration whose `caBundle` it
//!   patches at start-up) and `ISTIOD_SERVICE` (`istiod.<ns>.svc`, the name in its serving
//!   certificate);
//! - a writable `/var/run/secrets/istiod` (the root file system is read-only).

use serde_json::{Value, json};

use crate::Settings;
use crate::webhook::WEBHOOK_CONFIGURATION_NAME;

/// The binary in the image: the same `ama` the sidecar runs.
const AMA_BINARY: &str = "ama";

/// Name of the Deployment, Service and ServiceAccount.
pub const ISTIOD: &str = "istiod";
/// Name of the ConfigMap holding the MeshConfig.
pub const MESH_CONFIG_MAP: &str = api::objects::MESH_CONFIG_MAP;
/// Name of the ConfigMap holding the injector's values.
pub const INJECTOR_CONFIG_MAP: &str = "istio-sidecar-injector";

/// The ports of the control plane: (container port name, number).
pub const PORTS: [(&str, u16); 4] = [
    ("grpc-xds", 15010),
    ("tls-xds", 15012),
    ("https-webhooks", 15017),
    ("http-monitoring", 15014),
];

/// The objects, in apply order.
pub fn objects(s: &Settings) -> Vec<Value> {
    let ns = s.namespace();
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": ISTIOD, "namespace": ns, "labels": labels()},
        }),
        cluster_role(ns),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": cluster_role_name(ns), "labels": labels()},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_role_name(ns),
            },
            "subjects": [{"kind": "ServiceAccount", "name": ISTIOD, "namespace": ns}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": ISTIOD, "namespace": ns, "labels": labels()},
            // The CA keeps its root key in a Secret of its own namespace (`istio-ca-secret`).
            "rules": [{
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["create", "get", "watch", "list", "update", "delete"],
            }],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": ISTIOD, "namespace": ns, "labels": labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ISTIOD},
            "subjects": [{"kind": "ServiceAccount", "name": ISTIOD, "namespace": ns}],
        }),
        mesh_config_map(s),
        injector_config_map(s),
        deployment(s),
        service(ns),
    ]
}

fn labels() -> Value {
    json!({"app": ISTIOD, "istio.io/rev": "default"})
}

fn cluster_role_name(ns: &str) -> String {
    format!("istiod-clusterrole-{ns}")
}

/// What the registries, the CA and the webhook controller need cluster-wide.
fn cluster_role(ns: &str) -> Value {
    let watch = json!(["get", "list", "watch"]);
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": cluster_role_name(ns), "labels": labels()},
        "rules": [
            // The webhook controller patches caBundle.
            {"apiGroups": ["admissionregistration.k8s.io"],
             "resources": ["mutatingwebhookconfigurations"],
             "verbs": ["get", "list", "watch", "update", "patch"]},
            // The config registry.
            {"apiGroups": ["networking.istio.io", "security.istio.io", "telemetry.istio.io"],
             "resources": ["*"], "verbs": watch},
            {"apiGroups": ["apiextensions.k8s.io"],
             "resources": ["customresourcedefinitions"], "verbs": watch},
            // The service registry.
            {"apiGroups": [""],
             "resources": ["namespaces", "services", "pods", "nodes"], "verbs": watch},
            {"apiGroups": ["discovery.k8s.io"],
             "resources": ["endpointslices"], "verbs": watch},
            // The CA publishes its root as the ConfigMap istio-ca-root-cert in every namespace,
            // and the mesh config is read from a ConfigMap.
            {"apiGroups": [""],
             "resources": ["configmaps"],
             "verbs": ["create", "get", "list", "watch", "update"]},
            // The CA authenticates proxies by their service-account tokens.
            {"apiGroups": ["authentication.k8s.io"],
             "resources": ["tokenreviews"], "verbs": ["create"]},
            // Gateways' certificates (`credentialName`): the Secrets of their namespaces, and
            // whether the gateway's service account may read them, as istiod checks.
            {"apiGroups": [""], "resources": ["secrets"], "verbs": watch},
            {"apiGroups": ["authorization.k8s.io"],
             "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        ],
    })
}

/// The MeshConfig Ama installs: Istio's defaults that matter, plus `--set meshConfig.*`.
pub fn mesh_config(s: &Settings) -> Value {
    let mut mesh = json!({
        "accessLogFile": s.access_log_file,
        "defaultConfig": {"discoveryAddress": s.values.istiod_address()},
        "enableAutoMtls": true,
        "rootNamespace": s.namespace(),
        "trustDomain": s.trust_domain,
    });
    if let Some(encoding) = &s.access_log_encoding {
        mesh["accessLogEncoding"] = json!(encoding);
    }
    mesh
}

fn mesh_config_map(s: &Settings) -> Value {
    let mesh = api::yaml::to_yaml(&mesh_config(s)).unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": MESH_CONFIG_MAP, "namespace": s.namespace(), "labels": labels()},
        "data": {"mesh": mesh, "meshNetworks": "networks: {}\n"},
    })
}

/// The injector ConfigMap: the values as JSON, as Istio writes them (its Go template, key
/// `config`, has no counterpart: Ama's template is built in).
fn injector_config_map(s: &Settings) -> Value {
    let values = serde_json::to_string_pretty(&s.values).unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": INJECTOR_CONFIG_MAP, "namespace": s.namespace(), "labels": labels()},
        "data": {"values": values},
    })
}

fn deployment(s: &Settings) -> Value {
    let ns = s.namespace();
    let pod_labels = json!({
        "app": ISTIOD,
        "istio": "pilot",
        "istio.io/rev": "default",
        "sidecar.istio.io/inject": "false",
    });
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}});
    let value = |name: &str, v: String| json!({"name": name, "value": v});
    let ports: Vec<Value> = PORTS
        .iter()
        .map(|(name, port)| json!({"name": name, "containerPort": port, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": ISTIOD,
            "namespace": ns,
            "labels": {"app": ISTIOD, "istio": "pilot", "istio.io/rev": "default"},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"istio": "pilot"}},
            "strategy": {"rollingUpdate": {"maxSurge": "100%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/port": "15014",
                        "prometheus.io/scrape": "true",
                        "sidecar.istio.io/inject": "false",
                    },
                },
                "spec": {
                    "serviceAccountName": ISTIOD,
                    "containers": [{
                        "name": "discovery",
                        "image": s.values.proxy_image(),
                        "command": [AMA_BINARY],
                        "args": ["discovery"],
                        "ports": ports,
                        "readinessProbe": {
                            "httpGet": {"path": "/ready", "port": 15014},
                            "initialDelaySeconds": 1,
                            "periodSeconds": 3,
                            "timeoutSeconds": 5,
                        },
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "128Mi"},
                            "limits": {"cpu": "2", "memory": "1Gi"},
                        },
                        "env": [
                            value("REVISION", "default".to_string()),
                            field("POD_NAME", "metadata.name"),
                            field("POD_NAMESPACE", "metadata.namespace"),
                            field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
                            value("CLUSTER_ID", s.values.global.multi_cluster.cluster_name.clone()),
                            value(
                                "INJECTION_WEBHOOK_CONFIG_NAME",
                                WEBHOOK_CONFIGURATION_NAME.to_string(),
                            ),
                            value("ISTIOD_SERVICE", format!("{ISTIOD}.{ns}.svc")),
                        ],
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "runAsUser": 1337,
                            "runAsGroup": 1337,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "config-volume", "mountPath": "/etc/istio/config"},
                            {"name": "inject", "mountPath": "/var/lib/istio/inject", "readOnly": true},
                            {"name": "local-certs", "mountPath": "/var/run/secrets/istiod"},
                        ],
                    }],
                    "volumes": [
                        {"name": "config-volume", "configMap": {"name": MESH_CONFIG_MAP}},
                        {"name": "inject", "configMap": {"name": INJECTOR_CONFIG_MAP}},
                        {"name": "local-certs", "emptyDir": {"medium": "Memory"}},
                    ],
                },
            },
        },
    })
}

fn service(ns: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": ISTIOD,
            "namespace": ns,
            "labels": {"app": ISTIOD, "istio": "pilot", "istio.io/rev": "default"},
        },
        "spec": {
            "selector": {"app": ISTIOD, "istio": "pilot"},
            "ports": [
                {"name": "grpc-xds", "port": 15010, "protocol": "TCP", "targetPort": 15010},
                {"name": "https-dns", "port": 15012, "protocol": "TCP", "targetPort": 15012},
                {"name": "https-webhook", "port": 443, "protocol": "TCP", "targetPort": 15017},
                {"name": "http-monitoring", "port": 15014, "protocol": "TCP", "targetPort": 15014},
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_config_is_istios_default_shape() {
        let mut s = Settings::default();
        assert_eq!(
            api::yaml::to_yaml(&mesh_config(&s)).unwrap_or_default(),
            "accessLogFile: \"\"\ndefaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\nenableAutoMtls: true\nrootNamespace: istio-system\ntrustDomain: cluster.local\n"
        );
        s.set("meshConfig.accessLogEncoding=JSON").unwrap();
        s.set("values.global.istioNamespace=mesh").unwrap();
        let mesh = mesh_config(&s);
        assert_eq!(mesh["accessLogEncoding"], "JSON");
        assert_eq!(
            mesh["defaultConfig"]["discoveryAddress"],
            "istiod.mesh.svc:15012"
        );
        // The MeshConfig parser of the rest of Ama reads it back.
        let text = api::yaml::to_yaml(&mesh).unwrap_or_default();
        let parsed = api::MeshConfig::from_yaml(&text).unwrap();
        assert_eq!(
            parsed.default_config.discovery_address.as_deref(),
            Some("istiod.mesh.svc:15012")
        );
    }

    #[test]
    fn injector_values_read_back_equal() {
        let mut s = Settings::default();
        s.set("hub=r.example/x").unwrap();
        let cm = injector_config_map(&s);
        let text = cm["data"]["values"].as_str().unwrap_or_default();
        assert_eq!(api::Values::from_yaml(text).unwrap(), s.values);
    }
}
