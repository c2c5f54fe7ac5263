//! The objects injection adds to a pod: the `istio-init` and `istio-proxy` containers and their
//! volumes, in the shape of Istio's default injection template, running our binary `ama`.
//!
//! Everything here is decided by [`Sidecar`], the effective settings of one pod; this module
//! only lays them out.

use std::collections::BTreeMap;

use api::InterceptionMode;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// Name of the proxy container (Istio's).
pub const PROXY_CONTAINER_NAME: &str = "istio-proxy";
/// Name of the traffic-capture init container (Istio's).
pub const INIT_CONTAINER_NAME: &str = "istio-init";
/// The binary the containers run; the image holds it in its `PATH`.
pub const BINARY: &str = "ama";
/// Port of the proxy's own Prometheus endpoint.
pub const PROXY_PROMETHEUS_PORT: u16 = 15090;
/// Port of the proxy's health endpoint (`/healthz/ready`).
pub const HEALTH_PORT: u16 = 15021;
/// Outbound capture port.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Inbound capture port.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Uid and gid of the proxy; its own traffic is not captured.
pub const PROXY_UID: u32 = 1337;

/// Everything that decides the added objects, after config, values and annotations were merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Sidecar {
    /// Image of both containers.
    pub image: String,
    /// `imagePullPolicy`, when the values set one.
    pub image_pull_policy: Option<String>,
    /// Capture mode.
    pub interception_mode: InterceptionMode,
    /// Status port (0: none).
    pub status_port: u16,
    /// `-i`: outbound ranges captured.
    pub include_ip_ranges: String,
    /// `-x`: outbound ranges not captured.
    pub exclude_ip_ranges: String,
    /// `-b`: inbound ports captured.
    pub include_inbound_ports: String,
    /// User's inbound ports not captured (the status port is added to them).
    pub exclude_inbound_ports: String,
    /// `-q`: outbound ports always captured ("" leaves the flag out).
    pub include_outbound_ports: String,
    /// `-o`: outbound ports not captured ("" leaves the flag out).
    pub exclude_outbound_ports: String,
    /// Resources of both containers: `requests` and `limits`.
    pub resources: Value,
    /// `--domain` suffix: the cluster's DNS domain.
    pub cluster_domain: String,
    /// `--proxyLogLevel`
    pub log_level: String,
    /// `--proxyComponentLogLevel`
    pub component_log_level: String,
    /// `--log_output_level`
    pub agent_log_level: String,
    /// Run privileged (debug).
    pub privileged: bool,
    /// Readiness probe timing: initial delay, period, failure threshold.
    pub readiness: (u32, u32, u32),
    /// Audience of the projected token.
    pub token_audience: String,
    /// Environment of the proxy, in order.
    pub env: Vec<Value>,
    /// `proxyMetadata`, also given to the init container.
    pub proxy_metadata: BTreeMap<String, String>,
    /// Failure threshold of the proxy's startup probe (`None`: no startup probe).
    pub startup_probe: Option<u32>,
    /// Istio's CNI plugin captures: `istio-validation` checks the rules instead of
    /// `istio-init` writing them.
    pub cni: bool,
    /// `istio-proxy` is a native sidecar: an init container with `restartPolicy: Always`.
    pub native: bool,
    /// Hold the apps until the proxy is ready: the proxy first, with a postStart hook.
    pub hold_application: bool,
    /// `-k`: virtual interfaces whose traffic is captured as inbound
    /// (`istio.io/reroute-virtual-interfaces`, `traffic.sidecar.istio.io/kubevirtInterfaces`).
    pub reroute_interfaces: Option<String>,
    /// `-c`: interfaces whose traffic is never captured
    /// (`traffic.sidecar.istio.io/excludeInterfaces`).
    pub exclude_interfaces: Option<String>,
    /// Volumes of `sidecar.istio.io/userVolume`, added to the pod.
    pub user_volumes: Vec<Value>,
    /// Mounts of `sidecar.istio.io/userVolumeMount`, added to the proxy.
    pub user_volume_mounts: Vec<Value>,
    /// Uid of the proxy: 1337, or the `runAsUser` of the pod's own `istio-proxy` container.
    /// Its traffic is not captured (`-u`).
    pub proxy_uid: u32,
    /// Gid of the proxy: 1337, or the pod's own `istio-proxy`'s `runAsGroup`.
    pub proxy_gid: u32,
    /// `global.mountMtlsCerts`: the secret holding the pod's certificates
    /// (`istio.<service account>`), mounted at `/etc/certs/`.
    pub mtls_certs_secret: Option<String>,
}

/// Name of the init container that checks the CNI plugin's capture (Istio's).
pub const VALIDATION_CONTAINER_NAME: &str = "istio-validation";

/// The postStart hook of a proxy that holds the apps until it is ready: Istio's `pilot-agent
/// wait` in our spelling. `ama up` keys on it (and on the proxy being the first container) to
/// start the apps only once the proxy is ready.
pub const WAIT_COMMAND: [&str; 3] = [BINARY, "proxy", "wait"];

impl Sidecar {
    /// The `-d` argument: the proxy's own ports, then [`Self::cni_excluded_inbound_ports`].
    pub fn excluded_inbound_ports(&self) -> String {
        let mut all = vec![PROXY_PROMETHEUS_PORT.to_string(), HEALTH_PORT.to_string()];
        let rest = self.cni_excluded_inbound_ports();
        if !rest.is_empty() {
            all.push(rest);
        }
        all.join(",")
    }

    /// Istio's `excludeInboundPort`: the user's inbound exclusions, then the status port unless
    /// they list it (the CNI plugin's `excludeInboundPorts` annotation).
    pub fn cni_excluded_inbound_ports(&self) -> String {
        let mut ports: Vec<String> = self
            .exclude_inbound_ports
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        let status = self.status_port.to_string();
        if self.status_port != 0 && !ports.contains(&status) {
            ports.push(status);
        }
        ports.join(",")
    }

    /// The `istio-init` container, or `None` when nothing is captured (`NONE`).
    pub fn init_container(&self) -> Option<Value> {
        if self.interception_mode == InterceptionMode::None {
            return None;
        }
        let mut args: Vec<String> = [
            "iptables",
            "-p",
            &OUTBOUND_CAPTURE_PORT.to_string(),
            "-z",
            &INBOUND_CAPTURE_PORT.to_string(),
            "-u",
            &if self.interception_mode == InterceptionMode::Tproxy {
                PROXY_UID
            } else {
                self.proxy_uid
            }
            .to_string(),
            "-m",
            self.interception_mode.as_str(),
            "-i",
            &self.include_ip_ranges,
            "-x",
            &self.exclude_ip_ranges,
            "-b",
            &self.include_inbound_ports,
            "-d",
            &self.excluded_inbound_ports(),
        ]
        .map(str::to_string)
        .to_vec();
        if !self.include_outbound_ports.is_empty() {
            args.extend(["-q".to_string(), self.include_outbound_ports.clone()]);
        }
        if !self.exclude_outbound_ports.is_empty() {
            args.extend(["-o".to_string(), self.exclude_outbound_ports.clone()]);
        }
        if let Some(interfaces) = &self.reroute_interfaces {
            args.extend(["-k".to_string(), interfaces.clone()]);
        }
        if let Some(interfaces) = &self.exclude_interfaces {
            args.extend(["-c".to_string(), interfaces.clone()]);
        }
        args.push(format!("--log_output_level={}", self.agent_log_level));
        let security = if self.cni {
            args.extend([
                "--run-validation".to_string(),
                "--skip-rule-apply".to_string(),
            ]);
            // The check runs as the proxy (Istio's adjustInitContainerUser).
            json!({
                "allowPrivilegeEscalation": self.privileged,
                "privileged": self.privileged,
                "capabilities": {"drop": ["ALL"]},
                "readOnlyRootFilesystem": true,
                "runAsGroup": self.proxy_gid,
                "runAsNonRoot": true,
                "runAsUser": self.proxy_uid,
            })
        } else {
            json!({
                "allowPrivilegeEscalation": self.privileged,
                "privileged": self.privileged,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                "readOnlyRootFilesystem": false,
                "runAsGroup": 0,
                "runAsNonRoot": false,
                "runAsUser": 0,
            })
        };
        let name = if self.cni {
            VALIDATION_CONTAINER_NAME
        } else {
            INIT_CONTAINER_NAME
        };
        let mut c = json!({
            "name": name,
            "image": self.image,
            "command": [BINARY],
            "args": args,
            "resources": self.resources,
            "securityContext": security,
        });
        let env: Vec<Value> = self
            .proxy_metadata
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        let obj = object(&mut c);
        if !env.is_empty() {
            obj.insert("env".into(), Value::Array(env));
        }
        self.add_pull_policy(obj);
        Some(c)
    }

    /// The `istio-proxy` container.
    pub fn proxy_container(&self) -> Value {
        let tproxy = self.interception_mode == InterceptionMode::Tproxy;
        let mut capabilities = json!({"drop": ["ALL"]});
        if tproxy {
            object(&mut capabilities).insert("add".into(), json!(["NET_ADMIN"]));
        }
        let mut c = json!({
            "name": PROXY_CONTAINER_NAME,
            "image": self.image,
            "command": [BINARY],
            "args": [
                "proxy",
                "sidecar",
                "--domain",
                format!("$(POD_NAMESPACE).svc.{}", self.cluster_domain),
                format!("--proxyLogLevel={}", self.log_level),
                format!("--proxyComponentLogLevel={}", self.component_log_level),
                format!("--log_output_level={}", self.agent_log_level),
            ],
            "env": self.env,
            "ports": [{"containerPort": PROXY_PROMETHEUS_PORT, "name": "http-envoy-prom", "protocol": "TCP"}],
            "resources": self.resources,
            "securityContext": {
                "allowPrivilegeEscalation": self.privileged,
                "capabilities": capabilities,
                "privileged": self.privileged,
                "readOnlyRootFilesystem": true,
                "runAsGroup": PROXY_UID,
                "runAsNonRoot": !tproxy,
                "runAsUser": if tproxy { 0 } else { PROXY_UID },
            },
            "volumeMounts": self.volume_mounts(),
        });
        let obj = object(&mut c);
        if self.native {
            obj.insert("restartPolicy".into(), json!("Always"));
        }
        if let Some(lifecycle) = self.lifecycle() {
            obj.insert("lifecycle".into(), lifecycle);
        }
        if self.status_port != 0 {
            if let Some(failures) = self.startup_probe {
                obj.insert(
                    "startupProbe".into(),
                    json!({
                        "httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT},
                        "periodSeconds": 1,
                        "timeoutSeconds": 3,
                        "failureThreshold": failures,
                    }),
                );
            }
            let (delay, period, failures) = self.readiness;
            let mut probe = json!({
                "httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT},
                "periodSeconds": period,
                "timeoutSeconds": 3,
                "failureThreshold": failures,
            });
            if delay > 0 {
                object(&mut probe).insert("initialDelaySeconds".into(), json!(delay));
            }
            obj.insert("readinessProbe".into(), probe);
        }
        self.add_pull_policy(obj);
        c
    }

    /// The proxy's lifecycle hooks: Istio's postStart `pilot-agent wait` when it holds the apps
    /// (not for a native sidecar, which Kubernetes starts first anyway), else for a native
    /// sidecar the preStop drain, both in our spelling.
    pub fn lifecycle(&self) -> Option<Value> {
        if self.hold_application && !self.native {
            return Some(json!({"postStart": {"exec": {"command": WAIT_COMMAND}}}));
        }
        if self.native {
            return Some(json!({"preStop": {"exec": {"command": [
                BINARY,
                "proxy",
                "request",
                format!("--debug-port={}", self.status_port),
                "POST",
                "drain",
            ]}}}));
        }
        None
    }

    /// The proxy's volume mounts, in Istio's order, then the pod's `userVolumeMount`s.
    pub fn volume_mounts(&self) -> Vec<Value> {
        let mut mounts = vec![
            json!({"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"}),
            json!({"mountPath": "/var/run/secrets/credential-uds", "name": "credential-socket"}),
            json!({"mountPath": "/var/run/secrets/workload-spiffe-credentials", "name": "workload-certs"}),
            json!({"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"}),
            json!({"mountPath": "/var/run/secrets/istio/crl", "name": "istio-ca-crl"}),
            json!({"mountPath": "/var/lib/istio/data", "name": "istio-data"}),
            json!({"mountPath": "/etc/istio/proxy", "name": "istio-envoy"}),
            json!({"mountPath": "/var/run/secrets/tokens", "name": "istio-token"}),
        ];
        if self.mtls_certs_secret.is_some() {
            mounts
                .push(json!({"mountPath": "/etc/certs/", "name": "istio-certs", "readOnly": true}));
        }
        mounts.push(json!({"mountPath": "/etc/istio/pod", "name": "istio-podinfo"}));
        mounts.extend(self.user_volume_mounts.iter().cloned());
        mounts
    }

    /// The volumes the proxy mounts, in Istio's order, then the pod's `userVolume`s.
    pub fn volumes(&self) -> Vec<Value> {
        let mut volumes = self.base_volumes();
        volumes.extend(self.user_volumes.iter().cloned());
        volumes
    }

    /// The template's own volumes, in Istio's order.
    fn base_volumes(&self) -> Vec<Value> {
        let mut volumes = vec![
            json!({"emptyDir": {}, "name": "workload-socket"}),
            json!({"emptyDir": {}, "name": "credential-socket"}),
            json!({"emptyDir": {}, "name": "workload-certs"}),
            json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}),
            json!({"name": "istio-data", "emptyDir": {}}),
            json!({"name": "istio-podinfo", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
            ]}}),
            json!({"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": self.token_audience,
                "expirationSeconds": 43200,
                "path": "istio-token",
            }}]}}),
            json!({"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}),
            json!({"name": "istio-ca-crl", "configMap": {"name": "istio-ca-crl", "optional": true}}),
        ];
        if let Some(secret) = &self.mtls_certs_secret {
            volumes.push(
                json!({"name": "istio-certs", "secret": {"optional": true, "secretName": secret}}),
            );
        }
        volumes
    }

    fn add_pull_policy(&self, container: &mut Map<String, Value>) {
        if let Some(policy) = self.image_pull_policy.as_ref().filter(|p| !p.is_empty()) {
            container.insert("imagePullPolicy".into(), json!(policy));
        }
    }
}

/// The `json!` objects built above are objects; this gives their map without a panic path.
fn object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("just made an object"),
    }
}

/// One entry of `ISTIO_META_POD_PORTS`, fields in Istio's order.
#[derive(Serialize)]
struct PodPort<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a Value>,
    #[serde(rename = "hostPort", skip_serializing_if = "Option::is_none")]
    host_port: Option<&'a Value>,
    #[serde(rename = "containerPort", skip_serializing_if = "Option::is_none")]
    container_port: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'a Value>,
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none")]
    host_ip: Option<&'a Value>,
}

/// `ISTIO_META_POD_PORTS`: the app containers' ports as Istio's template lays them out, one JSON
/// object a line.
pub fn pod_ports_json(app_containers: &[&Map<String, Value>]) -> String {
    let mut out = String::from("[");
    let mut first = true;
    for c in app_containers {
        let Some(Value::Array(ports)) = c.get("ports") else {
            continue;
        };
        for p in ports {
            let port = PodPort {
                name: p.get("name"),
                host_port: p.get("hostPort"),
                container_port: p.get("containerPort"),
                protocol: p.get("protocol"),
                host_ip: p.get("hostIP"),
            };
            let json = serde_json::to_string(&port).unwrap_or_default();
            out.push_str("\n    ");
            if !first {
                out.push(',');
            }
            out.push_str(&json);
            first = false;
        }
    }
    out.push_str("\n]");
    out
}

/// Environment variable with a literal value.
pub fn env_value(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

/// Environment variable from a resource limit of the container (downward API), in units.
pub fn env_resource(name: &str, resource: &str) -> Value {
    json!({"name": name, "valueFrom": {"resourceFieldRef": {"resource": resource, "divisor": "1"}}})
}

/// Environment variable from a field of the pod (downward API).
pub fn env_field(name: &str, field_path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}})
}
