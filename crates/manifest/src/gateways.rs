//! The gateways of Istio's installation profiles: `istio-ingressgateway` (profiles `default` and
//! `demo`) and `istio-egressgateway` (`demo` only); `minimal` has neither.
//!
//! Each gateway is a ServiceAccount, a Role and RoleBinding letting it read the Secrets of its
//! namespace (Istio's `<name>-sds`), a Deployment and a Service, with Istio's names, labels
//! (`app: istio-ingressgateway`, `istio: ingressgateway`) and ports. The Deployment's pod is
//! Istio's gateway shape for injection: label `sidecar.istio.io/inject: "true"`, annotation
//! `inject.istio.io/templates: gateway` and a container `istio-proxy` with `image: auto`, which
//! the injector (the webhook in a cluster, `ama up` on one machine) turns into `ama proxy
//! router`. They come after the webhook in apply order, as istioctl installs gateways after
//! istiod: the webhook must exist when their pods are created.

use serde_json::{Value, json};

/// An installation profile, as `istioctl --set profile=…` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// istioctl's default: the control plane and the ingress gateway.
    #[default]
    Default,
    /// The profile Istio's tasks assume: ingress and egress gateways.
    Demo,
    /// The control plane only.
    Minimal,
}

impl Profile {
    /// The profile names, as `--set profile=` takes them.
    pub const NAMES: [&'static str; 3] = ["default", "demo", "minimal"];

    /// Reads a profile name.
    pub fn parse(name: &str) -> Option<Profile> {
        match name {
            "default" => Some(Profile::Default),
            "demo" => Some(Profile::Demo),
            "minimal" => Some(Profile::Minimal),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Demo => "demo",
            Profile::Minimal => "minimal",
        }
    }

    /// The gateways it installs.
    pub fn gateways(self) -> &'static [Gateway] {
        match self {
            Profile::Default => &[INGRESS],
            Profile::Demo => &[INGRESS, EGRESS],
            Profile::Minimal => &[],
        }
    }
}

/// One port of a gateway's Service: name, Service port, container port.
pub type GatewayPort = (&'static str, u16, u16);

/// One gateway of a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gateway {
    /// Name of the Deployment and Service (`istio-ingressgateway`); also its `app` label.
    pub name: &'static str,
    /// Its `istio` label, which Gateway resources select (`ingressgateway`).
    pub istio: &'static str,
    /// The Service's type.
    pub service_type: &'static str,
    /// The Service's ports.
    pub ports: &'static [GatewayPort],
}

/// The port of the gateway's health endpoint (`/healthz/ready`).
pub const STATUS_PORT: u16 = 15021;

/// Istio's ingress gateway: a LoadBalancer on 15021, 80 and 443.
pub const INGRESS: Gateway = Gateway {
    name: "istio-ingressgateway",
    istio: "ingressgateway",
    service_type: "LoadBalancer",
    ports: &[
        ("status-port", STATUS_PORT, STATUS_PORT),
        ("http2", 80, 8080),
        ("https", 443, 8443),
    ],
};

/// Istio's egress gateway (demo profile): a ClusterIP on 80 and 443.
pub const EGRESS: Gateway = Gateway {
    name: "istio-egressgateway",
    istio: "egressgateway",
    service_type: "ClusterIP",
    ports: &[("http2", 80, 8080), ("https", 443, 8443)],
};

impl Gateway {
    /// Its ServiceAccount (`istio-ingressgateway-service-account`).
    pub fn service_account(&self) -> String {
        format!("{}-service-account", self.name)
    }

    /// The labels of its Deployment, pods and Service, and its Service's selector.
    pub fn labels(&self) -> Value {
        json!({"app": self.name, "istio": self.istio})
    }

    /// Its objects in `namespace`, in apply order.
    pub fn objects(&self, namespace: &str) -> Vec<Value> {
        let labels = self.labels();
        let sds = format!("{}-sds", self.name);
        let mut pod_labels = labels.clone();
        pod_labels["sidecar.istio.io/inject"] = json!("true");
        let mut container_ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(name, _, target)| {
                json!({"containerPort": target, "name": name, "protocol": "TCP"})
            })
            .collect();
        container_ports
            .push(json!({"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}));
        let service_ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(name, port, target)| {
                json!({"name": name, "port": port, "targetPort": target, "protocol": "TCP"})
            })
            .collect();
        vec![
            json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": self.service_account(), "namespace": namespace, "labels": labels},
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": sds, "namespace": namespace, "labels": labels},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "watch", "list"]}],
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": sds, "namespace": namespace, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sds},
                "subjects": [{"kind": "ServiceAccount", "name": self.service_account()}],
            }),
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": self.name, "namespace": namespace, "labels": labels},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "strategy": {"rollingUpdate": {"maxSurge": "100%", "maxUnavailable": "25%"}},
                    "template": {
                        "metadata": {
                            "labels": pod_labels,
                            "annotations": {
                                "inject.istio.io/templates": "gateway",
                                "prometheus.io/path": "/stats/prometheus",
                                "prometheus.io/port": "15020",
                                "prometheus.io/scrape": "true",
                            },
                        },
                        "spec": {
                            "serviceAccountName": self.service_account(),
                            "securityContext": {
                                "runAsUser": 1337,
                                "runAsGroup": 1337,
                                "runAsNonRoot": true,
                            },
                            "containers": [{
                                "name": "istio-proxy",
                                // The injector puts the proxy's image here.
                                "image": "auto",
                                "ports": container_ports,
                                "securityContext": {
                                    "allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]},
                                    "privileged": false,
                                    "readOnlyRootFilesystem": true,
                                },
                                "resources": {
                                    "limits": {"cpu": "2000m", "memory": "1024Mi"},
                                    "requests": {"cpu": "100m", "memory": "128Mi"},
                                },
                            }],
                        },
                    },
                },
            }),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": self.name, "namespace": namespace, "labels": labels},
                "spec": {
                    "type": self.service_type,
                    "selector": labels,
                    "ports": service_ports,
                },
            }),
        ]
    }
}

/// The objects of every gateway of `profile` in `namespace`.
pub fn objects(profile: Profile, namespace: &str) -> Vec<Value> {
    profile
        .gateways()
        .iter()
        .flat_map(|g| g.objects(namespace))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_install_istios_gateways() {
        let names = |p: Profile| -> Vec<String> {
            objects(p, "istio-system")
                .iter()
                .map(|o| format!("{} {}", o["kind"].as_str().unwrap(), o["metadata"]["name"]))
                .collect()
        };
        assert_eq!(
            names(Profile::Default),
            [
                "ServiceAccount \"istio-ingressgateway-service-account\"",
                "Role \"istio-ingressgateway-sds\"",
                "RoleBinding \"istio-ingressgateway-sds\"",
                "Deployment \"istio-ingressgateway\"",
                "Service \"istio-ingressgateway\"",
            ]
        );
        assert_eq!(names(Profile::Demo).len(), 10);
        assert!(names(Profile::Minimal).is_empty());
        assert_eq!(Profile::parse("demo"), Some(Profile::Demo));
        assert_eq!(Profile::parse("ambient"), None);
    }

    #[test]
    fn ingress_is_istios_shape() {
        let o = INGRESS.objects("istio-system");
        let service = &o[4];
        assert_eq!(service["spec"]["type"], "LoadBalancer");
        assert_eq!(
            service["spec"]["ports"],
            json!([
                {"name": "status-port", "port": 15021, "targetPort": 15021, "protocol": "TCP"},
                {"name": "http2", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"},
            ])
        );
        assert_eq!(
            service["spec"]["selector"],
            json!({"app": "istio-ingressgateway", "istio": "ingressgateway"})
        );
        let template = &o[3]["spec"]["template"];
        assert_eq!(
            template["metadata"]["annotations"]["inject.istio.io/templates"],
            "gateway"
        );
        assert_eq!(
            template["metadata"]["labels"]["sidecar.istio.io/inject"],
            "true"
        );
        assert_eq!(template["metadata"]["labels"]["istio"], "ingressgateway");
        assert_eq!(template["spec"]["containers"][0]["name"], "istio-proxy");
        assert_eq!(template["spec"]["containers"][0]["image"], "auto");
        let egress = EGRESS.objects("istio-system");
        assert_eq!(egress[4]["spec"]["type"], "ClusterIP");
        assert_eq!(egress[4]["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(
            egress[3]["spec"]["template"]["metadata"]["labels"]["istio"],
            "egressgateway"
        );
    }
}
