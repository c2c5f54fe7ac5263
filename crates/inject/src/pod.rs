//! Injection of one pod template: the function the stream and the admission webhook share.
//!
//! A pod template is `{metadata, spec}`: a Pod object or the `template` of a workload. Its
//! labels and annotations are read and checked first ([`api::SidecarOverrides`]); a pod that
//! opts out, uses the host network or is already injected is left alone; otherwise the sidecar
//! settings are merged (values < mesh config < annotations) and the containers, volumes,
//! labels and annotations are added.

use std::collections::BTreeMap;

use api::InterceptionMode;
use api::mesh::InboundMode;
use api::{ProxyConfig, SidecarOverrides, annotation as ann, label};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::config::InjectConfig;
use crate::error::FieldError;
use crate::gateway::{Templates, merge_container, own_proxy_container};
use crate::probes::{AppProbers, KUBE_APP_PROBERS_ENV, rewrite_app_probes};
use crate::sidecar::{
    PROXY_CONTAINER_NAME, PROXY_UID, Sidecar, VALIDATION_CONTAINER_NAME, env_field, env_resource,
    env_value, pod_ports_json,
};
use crate::workload::WorkloadMeta;

/// Namespaces Istio never injects into (its `IgnoredNamespaces`).
pub const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// Name of the proxy's environment variable holding the app's own Prometheus annotations.
pub const PROMETHEUS_ANNOTATIONS_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";

/// What happened to a pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added.
    Injected,
    /// Left unchanged, and why.
    Skipped(SkipReason),
}

/// Why a pod template was left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `sidecar.istio.io/inject: "false"` (label or annotation).
    Disabled,
    /// `hostNetwork: true`: capturing traffic would capture the node's.
    HostNetwork,
    /// It is injected already (`sidecar.istio.io/status`), as [`crate::injection_required`]
    /// tells the webhook and `ama up`. Containers of the pod's own named `istio-init` or
    /// `istio-proxy` are its settings for them, laid over the template's; `kube-inject` injects
    /// an injected pod again, as Istio's does.
    AlreadyInjected,
    /// Its namespace is one Istio never injects ([`IGNORED_NAMESPACES`]).
    IgnoredNamespace,
    /// Its namespace is the control plane's (`istio-system`): the webhook and `ama up` leave
    /// the control plane alone.
    ControlPlaneNamespace,
    /// Neither its namespace (`istio-injection=enabled`, `istio.io/rev`) nor the pod (label
    /// `sidecar.istio.io/inject: "true"`) asks for injection.
    NotSelected,
    /// The namespace or the pod names another control-plane revision (`istio.io/rev`).
    OtherRevision,
}

impl SkipReason {
    /// A sentence for the user, or `None` when the skip was asked for and needs no warning.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            SkipReason::Disabled => None,
            SkipReason::HostNetwork => {
                Some("not injected: the pod uses the host network (hostNetwork: true)")
            }
            SkipReason::AlreadyInjected => Some("not injected: the pod already has a sidecar"),
            SkipReason::IgnoredNamespace => Some(
                "not injected: pods in kube-system, kube-public, kube-node-lease and \
                 local-path-storage are never injected",
            ),
            SkipReason::ControlPlaneNamespace => {
                Some("not injected: the pod is in the control plane's namespace")
            }
            SkipReason::NotSelected => Some(
                "not injected: neither the namespace (istio-injection=enabled, istio.io/rev) nor \
                 the pod (label sidecar.istio.io/inject=true) asks for it",
            ),
            SkipReason::OtherRevision => {
                Some("not injected: the pod belongs to another control-plane revision")
            }
        }
    }
}

/// The `sidecar.istio.io/status` annotation: what injection added, so it can be recognised and
/// removed. Field order is Istio's.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    init_containers: Option<Vec<&'a str>>,
    containers: Option<Vec<&'a str>>,
    volumes: Vec<&'a str>,
    image_pull_secrets: Option<Vec<&'a str>>,
    revision: &'a str,
}

/// Injects the sidecar into `template` (`{metadata, spec}` of a pod) owned by `workload`.
///
/// Errors name fields relative to the template (`metadata.annotations["…"]`); every error found
/// is returned, and the template is unchanged when there is one.
pub fn inject_pod_template(
    template: &mut Value,
    workload: &WorkloadMeta,
    config: &InjectConfig,
) -> Result<Outcome, Vec<FieldError>> {
    let Value::Object(template_map) = template else {
        return Err(vec![FieldError::new(
            "",
            "must be a mapping with metadata and spec",
        )]);
    };
    let (labels, mut annotations) = read_metadata(template_map)?;
    let overrides = SidecarOverrides::parse(&labels, &annotations).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| {
                FieldError::new(
                    format!("metadata.{}[\"{}\"]", e.field.as_str(), e.key),
                    e.message,
                )
            })
            .collect::<Vec<_>>()
    })?;
    let Some(Value::Object(spec)) = template_map.get("spec") else {
        return Err(vec![FieldError::new(
            "spec",
            "missing: a pod template needs a spec",
        )]);
    };
    // An injected pod is injected again, as Istio's kube-inject does: the old sidecar is taken
    // out first, keeping the probes it took over. (The webhook and `ama up` leave such pods
    // alone: `injection_required` says AlreadyInjected.)
    let stripped;
    let (spec, previous_probers) = if overrides.already_injected {
        let mut copy = spec.clone();
        let previous = strip_injected(&mut copy, &mut annotations);
        stripped = copy;
        (&stripped, previous)
    } else {
        (spec, AppProbers::new())
    };
    let containers = app_containers(spec)?;

    if overrides.inject == Some(false) {
        return Ok(Outcome::Skipped(SkipReason::Disabled));
    }
    if spec.get("hostNetwork") == Some(&Value::Bool(true)) {
        return Ok(Outcome::Skipped(SkipReason::HostNetwork));
    }
    // Only the status annotation marks an injected pod, as in Istio: containers of the pod's own
    // named istio-init or istio-proxy are its settings for them, laid over the template's.
    let templates = Templates::parse(annotations.get(ann::INJECT_TEMPLATES).map(String::as_str))
        .map_err(|e| vec![e])?;
    let own_proxy = own_proxy_container(spec).cloned();
    let namespace = template_map
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or(&workload.namespace);
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Ok(Outcome::Skipped(SkipReason::IgnoredNamespace));
    }

    // Work on a copy so that an error leaves the template as it was.
    let mut spec = spec.clone();
    let app_names: Vec<String> = containers.iter().map(|(name, _)| name.clone()).collect();
    let app_refs: Vec<&Map<String, Value>> = containers.iter().map(|(_, c)| c).collect();
    let proxy_config = match &overrides.proxy_config {
        Some(pod) => config.mesh.default_config.merged_with(pod),
        None => config.mesh.default_config.clone(),
    };
    let mut sidecar = settings(config, &overrides, &proxy_config);
    // A native sidecar is an init container: a gateway's proxy stays a container.
    sidecar.native =
        templates.sidecar && overrides.native_sidecar.unwrap_or(config.native_sidecars());
    sidecar.hold_application &= templates.sidecar;
    if config.values.global.mount_mtls_certs {
        let account = spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .unwrap_or("default");
        sidecar.mtls_certs_secret = Some(format!("istio.{account}"));
    }
    // The pod's own istio-proxy may run as another user: capture must spare that one.
    if let Some(own) = &own_proxy {
        let id = |field: &str| {
            own.get("securityContext")
                .and_then(|s| s.get(field))
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .filter(|id| *id != 0)
        };
        if let Some(uid) = id("runAsUser") {
            sidecar.proxy_uid = uid;
        }
        if let Some(gid) = id("runAsGroup") {
            sidecar.proxy_gid = gid;
        }
    }
    if templates.sidecar && sidecar.interception_mode != InterceptionMode::None {
        check_capture(&sidecar, &overrides).map_err(|e| vec![e])?;
    }
    // The gateway template lists the ports of every container, its own istio-proxy's too.
    let mut port_refs = app_refs.clone();
    if templates.gateway
        && let Some(own) = &own_proxy
    {
        port_refs.push(own);
    }
    sidecar.env = proxy_env(
        config,
        &overrides,
        proxy_config,
        workload,
        &sidecar,
        (&app_names, &port_refs),
        (&labels, &annotations),
    );
    if templates.gateway && !templates.sidecar {
        // The gateway template sets the memory limit before naming the app containers.
        let at = |name: &str| sidecar.env.iter().position(|e| e["name"] == name);
        if let (Some(apps), Some(memory)) = (at("ISTIO_META_APP_CONTAINERS"), at("GOMEMLIMIT")) {
            sidecar.env.swap(apps, memory);
        }
    }

    let rewrite = overrides.rewrite_app_http_probers.unwrap_or(
        config
            .values
            .sidecar_injector_webhook
            .rewrite_app_http_probe,
    );
    if rewrite && sidecar.status_port != 0 {
        let probers = rewrite_app_probes(&mut spec, sidecar.status_port).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| e.under("spec"))
                .collect::<Vec<_>>()
        })?;
        // The probes an earlier injection took over stay the proxy's.
        let mut all = previous_probers;
        all.extend(probers);
        if !all.is_empty() {
            let json = serde_json::to_string(&all).unwrap_or_default();
            sidecar.env.push(env_value(KUBE_APP_PROBERS_ENV, json));
        }
    }

    let merge = overrides
        .merge_metrics
        .unwrap_or(config.mesh.enable_prometheus_merge);
    // Istio points Prometheus at the mesh's status port (defaultConfig.statusPort, 15020),
    // whatever the pod's own status port.
    let prometheus_port = config
        .mesh
        .default_config
        .status_port
        .unwrap_or(DEFAULT_STATUS_PORT);
    if merge && let Some(env) = merge_prometheus(&mut annotations, prometheus_port) {
        sidecar.env.push(env);
    }

    // Containers: istio-init runs first (the sidecar template only), istio-proxy comes last so
    // kubectl defaults to the app; the pod's own istio-proxy is laid over the template's.
    let init = if templates.sidecar {
        sidecar.init_container()
    } else {
        None
    };
    let mut own_init: Option<Map<String, Value>> = None;
    let init_name = init
        .as_ref()
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    // The pod's own istio-init (or istio-validation) is laid over the template's, as its
    // istio-proxy is.
    let init = init.map(|mut init| {
        let name = init.get("name").cloned();
        let list = array(&mut spec, "initContainers");
        if let Some(at) = list.iter().position(|c| c.get("name") == name.as_ref()) {
            let own = list.remove(at);
            if let Some(own) = own.as_object() {
                merge_container(&mut init, own);
                own_init = Some(own.clone());
            }
        }
        init
    });
    if let Some(init) = &init {
        // Istio's order: with a native sidecar, capture then the proxy then the pod's own (so
        // they are in the mesh); else istio-validation first (it blocks the pod until capture
        // is there) but istio-init last (the pod's own init containers are not blackholed).
        let list = array(&mut spec, "initContainers");
        if sidecar.native || sidecar.cni {
            list.insert(0, init.clone());
        } else {
            list.push(init.clone());
        }
    }
    // Templates apply in order, the later laid over the earlier (`sidecar,gateway`: the
    // sidecar's container with the gateway's args, env and probe).
    let mut proxy = match (templates.sidecar, templates.gateway) {
        (true, true) => {
            let mut proxy = sidecar.proxy_container();
            if let Value::Object(gateway) = sidecar.gateway_container() {
                merge_container(&mut proxy, &gateway);
            }
            proxy
        }
        (false, true) => sidecar.gateway_container(),
        _ => sidecar.proxy_container(),
    };
    if let Some(own) = &own_proxy {
        merge_container(&mut proxy, own);
    }
    let containers = array(&mut spec, "containers");
    containers.retain(|c| c.get("name").and_then(Value::as_str) != Some(PROXY_CONTAINER_NAME));
    if sidecar.native {
        // Right after the capture, before the app's own init containers, as Istio places it.
        let list = array(&mut spec, "initContainers");
        let at = usize::from(init.is_some());
        list.insert(at.min(list.len()), proxy);
    } else if sidecar.hold_application {
        // First, so that the runtime starts it (and waits for its postStart hook) before the
        // apps.
        array(&mut spec, "containers").insert(0, proxy);
    } else {
        array(&mut spec, "containers").push(proxy);
    }
    let volumes = if templates.gateway {
        sidecar.gateway_volumes()
    } else {
        sidecar.volumes()
    };
    let volume_names: Vec<String> = volumes
        .iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    // The template's volumes come first, as Istio's merge puts them; a volume the pod
    // declares itself under the same name is the pod's (its fields win).
    let own_volumes = std::mem::take(array(&mut spec, "volumes"));
    let mut list: Vec<Value> = volumes
        .into_iter()
        .map(|v| {
            own_volumes
                .iter()
                .find(|own| own.get("name") == v.get("name"))
                .cloned()
                .unwrap_or(v)
        })
        .collect();
    let rest: Vec<Value> = own_volumes
        .into_iter()
        .filter(|own| !list.iter().any(|v| v.get("name") == own.get("name")))
        .collect();
    list.extend(rest);
    spec.insert("volumes".into(), Value::Array(list));
    // The values' secrets come first, then the pod's own; the status records the values' (as
    // Istio's does, so that injecting again gives the same status).
    let mut added_secrets: Vec<&str> = Vec::new();
    if !config.values.global.image_pull_secrets.is_empty() {
        let own_secrets = std::mem::take(array(&mut spec, "imagePullSecrets"));
        let mut list = Vec::new();
        for secret in &config.values.global.image_pull_secrets {
            added_secrets.push(secret);
            list.push(json!({ "name": secret }));
        }
        list.extend(own_secrets.into_iter().filter(|own| {
            !config
                .values
                .global
                .image_pull_secrets
                .iter()
                .any(|s| own.get("name").and_then(Value::as_str) == Some(s))
        }));
        spec.insert("imagePullSecrets".into(), Value::Array(list));
    }

    let mut labels = labels;
    add_labels(&mut labels, workload, templates.sidecar);
    if !config.values.global.network.is_empty() {
        labels
            .entry(NETWORK_LABEL.to_string())
            .or_insert_with(|| config.values.global.network.clone());
    }
    if templates.gateway {
        // The gateway template lets the proxy bind ports below 1024 (80, 443) without
        // NET_BIND_SERVICE, unless the pod sets that sysctl itself.
        allow_unprivileged_ports(&mut spec);
    }
    let mut status_init: Vec<&str> = init_name.as_deref().into_iter().collect();
    if sidecar.native {
        status_init.push(PROXY_CONTAINER_NAME);
    }
    let status = Status {
        init_containers: (!status_init.is_empty()).then_some(status_init),
        containers: (!sidecar.native).then(|| vec![PROXY_CONTAINER_NAME]),
        volumes: volume_names.iter().map(String::as_str).collect(),
        image_pull_secrets: (!added_secrets.is_empty()).then_some(added_secrets),
        revision: config.revision(),
    };
    // The gateway template names a default container only when there is exactly one.
    let default_container = if templates.sidecar || app_names.len() == 1 {
        app_names.first()
    } else {
        None
    };
    if let Some(first_app) = default_container {
        for key in [
            ann::KUBECTL_DEFAULT_CONTAINER,
            ann::KUBECTL_DEFAULT_LOGS_CONTAINER,
        ] {
            annotations
                .entry(key.to_string())
                .or_insert_with(|| first_app.clone());
        }
    }
    if templates.sidecar && sidecar.cni {
        cni_annotations(&mut annotations, config, &sidecar);
    }
    if own_proxy.is_some() || own_init.is_some() {
        // Istio records the pod's own istio-init and istio-proxy, so that re-injection can lay
        // them over again.
        let mut record = Map::new();
        let mut add = |list: &str, own: &Map<String, Value>| {
            if let Value::Array(items) = record.entry(list).or_insert_with(|| json!([])) {
                items.push(overrides_record(own));
            }
        };
        if let Some(own) = &own_init {
            add("initContainers", own);
        }
        if let Some(own) = &own_proxy {
            add(
                if sidecar.native {
                    "initContainers"
                } else {
                    "containers"
                },
                own,
            );
        }
        annotations.insert(
            PROXY_OVERRIDES_ANNOTATION.to_string(),
            Value::Object(record).to_string(),
        );
    }
    annotations.insert(ann::ISTIO_REV.to_string(), config.revision().to_string());
    annotations.insert(
        ann::SIDECAR_STATUS.to_string(),
        serde_json::to_string(&status).unwrap_or_default(),
    );

    let metadata = template_map.entry("metadata").or_insert_with(|| json!({}));
    if let Value::Object(metadata) = metadata {
        metadata.insert("labels".into(), string_map(labels));
        metadata.insert("annotations".into(), string_map(annotations));
    }
    template_map.insert("spec".into(), Value::Object(spec));
    Ok(Outcome::Injected)
}

/// The label that names a pod's workload in telemetry.
const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";

/// The label naming a pod's network (`global.network`).
const NETWORK_LABEL: &str = "topology.istio.io/network";

/// What of an injected pod template (`{metadata, spec}`) `ama up` cannot run as Kubernetes
/// would, one sentence each naming the field: such pods are still written (a cluster runs
/// them), and `ama kube-inject` reports these on standard error.
pub fn not_run_by_ama_up(template: &Value) -> Vec<String> {
    let has_init = |name: &str| {
        template
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .is_some_and(|l| {
                l.iter()
                    .any(|c| c.get("name").and_then(Value::as_str) == Some(name))
            })
    };
    let mut notes = Vec::new();
    if has_init(PROXY_CONTAINER_NAME) {
        notes.push(format!(
            "spec.initContainers[\"{PROXY_CONTAINER_NAME}\"]: a native sidecar (annotation \
             {} or values pilot.env.ENABLE_NATIVE_SIDECARS): `ama up` runs init containers to \
             completion, so it cannot start this pod; Kubernetes 1.29+ can",
            ann::SIDECAR_NATIVE
        ));
    }
    if has_init(VALIDATION_CONTAINER_NAME) {
        notes.push(format!(
            "spec.initContainers[\"{VALIDATION_CONTAINER_NAME}\"]: CNI mode (values \
             pilot.cni.enabled): capture is left to Istio's CNI plugin, which `ama up` does not \
             run, so `ama iptables --run-validation` fails there"
        ));
    }
    notes
}

/// `OTEL_RESOURCE_ATTRIBUTES` as Istio computes it for OpenTelemetry's Kubernetes service
/// attributes: `service.namespace`, `service.version` and `service.instance.id`, each from its
/// `resource.opentelemetry.io/…` annotation first.
fn otel_resource_attributes(
    labels: &StringMap,
    annotations: &StringMap,
    workload: &WorkloadMeta,
    containers: &[&Map<String, Value>],
) -> String {
    let annotation = |key: &str| {
        annotations
            .get(&format!("resource.opentelemetry.io/{key}"))
            .filter(|v| !v.is_empty())
    };
    let mut attributes = Vec::new();
    match annotation("service.namespace") {
        Some(ns) => attributes.push(format!("service.namespace={ns}")),
        None if !workload.namespace.is_empty() => {
            attributes.push(format!("service.namespace={}", workload.namespace));
        }
        None => {}
    }
    let version = annotation("service.version")
        .cloned()
        .or_else(|| {
            labels
                .get(label::APP_KUBERNETES_VERSION)
                .filter(|v| !v.is_empty())
                .cloned()
        })
        .or_else(|| match containers {
            [only] => image_version(only.get("image").and_then(Value::as_str).unwrap_or("")),
            _ => None,
        });
    if let Some(version) = version {
        attributes.push(format!("service.version={version}"));
    }
    let container = containers
        .first()
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str);
    match (annotation("service.instance.id"), container) {
        (Some(id), _) => attributes.push(format!("service.instance.id={id}")),
        (None, Some(name)) => attributes.push(format!(
            "service.instance.id={}.$(POD_NAME).{name}",
            workload.namespace
        )),
        (None, None) => {}
    }
    attributes.join(",")
}

/// An image's tag and digest as a version (`1.21`, `sha256:…`, `1.21@sha256:…`).
fn image_version(image: &str) -> Option<String> {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let tag = match (name.rfind(':'), name.rfind('/')) {
        (Some(colon), slash) if slash.is_none_or(|s| colon > s) => Some(&name[colon + 1..]),
        _ => None,
    };
    match (tag, digest) {
        (Some(t), Some(d)) => Some(format!("{t}@{d}")),
        (None, Some(d)) => Some(d.to_string()),
        (Some(t), None) => Some(t.to_string()),
        (None, None) => None,
    }
}

/// MeshConfig's default `defaultConfig.statusPort`.
const DEFAULT_STATUS_PORT: u16 = 15020;

/// Takes an earlier injection out of `spec` as Istio's kube-inject does before injecting again:
/// the containers the status annotation lists (the pod's own istio-init/istio-proxy of
/// `proxy.istio.io/overrides` put back in their place), the status annotation, and the
/// Prometheus annotations if they point at the mesh's status port. Returns the probes the old
/// proxy ran (`ISTIO_KUBE_APP_PROBERS`).
fn strip_injected(
    spec: &mut Map<String, Value>,
    annotations: &mut BTreeMap<String, String>,
) -> AppProbers {
    #[derive(serde::Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Injected {
        init_containers: Option<Vec<String>>,
        containers: Option<Vec<String>>,
    }
    let status: Injected = annotations
        .remove(ann::SIDECAR_STATUS)
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let mut previous = AppProbers::new();
    let mut app_scrape: Option<BTreeMap<String, String>> = None;
    for (list, names) in [
        ("containers", status.containers.unwrap_or_default()),
        ("initContainers", status.init_containers.unwrap_or_default()),
    ] {
        let Some(Value::Array(items)) = spec.get_mut(list) else {
            continue;
        };
        items.retain(|c| {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if !names.iter().any(|n| n == name) {
                return true;
            }
            if name == PROXY_CONTAINER_NAME {
                let env = |var: &str| {
                    c.get("env")
                        .and_then(Value::as_array)
                        .and_then(|env| env.iter().find(|e| e["name"] == var))
                        .and_then(|e| e.get("value"))
                        .and_then(Value::as_str)
                };
                if let Some(probers) = env(KUBE_APP_PROBERS_ENV)
                    .and_then(|v| serde_json::from_str::<AppProbers>(v).ok())
                {
                    previous = probers;
                }
                app_scrape =
                    env(PROMETHEUS_ANNOTATIONS_ENV).and_then(|v| serde_json::from_str(v).ok());
            }
            false
        });
    }
    // The pod's own containers an earlier injection laid over its template come back.
    if let Some(Ok(Value::Object(own))) = annotations
        .remove(PROXY_OVERRIDES_ANNOTATION)
        .map(|o| serde_json::from_str::<Value>(&o))
    {
        for (list, items) in own {
            if let (Value::Array(items), true) = (
                items,
                matches!(list.as_str(), "containers" | "initContainers"),
            ) {
                for mut c in items {
                    // The record's `resources: {}` is Go's empty value, not the pod's.
                    if let Some(own) = c.as_object_mut()
                        && own.get("resources") == Some(&json!({}))
                    {
                        own.remove("resources");
                    }
                    // A pod declares its own istio-proxy among its containers (a native one is
                    // recorded under initContainers).
                    let list =
                        if c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER_NAME) {
                            "containers"
                        } else {
                            list.as_str()
                        };
                    array(spec, list).push(c);
                }
            }
        }
    }
    if annotations.get(ann::PROMETHEUS_PORT).map(String::as_str)
        == Some(DEFAULT_STATUS_PORT.to_string().as_str())
    {
        for key in [
            ann::PROMETHEUS_SCRAPE,
            ann::PROMETHEUS_PORT,
            ann::PROMETHEUS_PATH,
        ] {
            annotations.remove(key);
        }
        // The app's own scrape settings, which the old proxy held, are the pod's again.
        for (field, key) in [
            ("scrape", ann::PROMETHEUS_SCRAPE),
            ("port", ann::PROMETHEUS_PORT),
            ("path", ann::PROMETHEUS_PATH),
        ] {
            if let Some(value) = app_scrape
                .as_ref()
                .and_then(|s| s.get(field))
                .filter(|v| !v.is_empty())
            {
                annotations.insert(key.to_string(), value.clone());
            }
        }
    }
    previous
}

/// Where Istio records the pod's own `istio-proxy` container.
const PROXY_OVERRIDES_ANNOTATION: &str = "proxy.istio.io/overrides";

/// The pod's own istio-proxy as Istio records it: `image: auto` left out, `resources` always
/// present.
fn overrides_record(own: &Map<String, Value>) -> Value {
    let mut record = own.clone();
    if record.get("image").and_then(Value::as_str) == Some(crate::gateway::AUTO_IMAGE) {
        record.remove("image");
    }
    record.entry("resources").or_insert_with(|| json!({}));
    Value::Object(record)
}

/// Adds Istio's gateway sysctl `net.ipv4.ip_unprivileged_port_start=0` to the pod's security
/// context unless the pod sets it.
fn allow_unprivileged_ports(spec: &mut Map<String, Value>) {
    const SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";
    let context = spec.entry("securityContext").or_insert_with(|| json!({}));
    let Some(context) = context.as_object_mut() else {
        return;
    };
    let sysctls = context.entry("sysctls").or_insert_with(|| json!([]));
    if let Some(list) = sysctls.as_array_mut()
        && !list
            .iter()
            .any(|s| s.get("name").and_then(Value::as_str) == Some(SYSCTL))
    {
        list.push(json!({"name": SYSCTL, "value": "0"}));
    }
}

/// Labels or annotations.
type StringMap = BTreeMap<String, String>;

/// A container's name and its object.
type NamedContainer = (String, Map<String, Value>);

/// Labels and annotations as string maps; a non-string value is an error, as Kubernetes has it.
fn read_metadata(template: &Map<String, Value>) -> Result<(StringMap, StringMap), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut read = |field: &str| {
        let mut out = BTreeMap::new();
        match template.get("metadata").and_then(|m| m.get(field)) {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (k, v) in map {
                    match v {
                        Value::String(s) => {
                            out.insert(k.clone(), s.clone());
                        }
                        other => errors.push(FieldError::new(
                            format!("metadata.{field}[\"{k}\"]"),
                            format!("{other} is not a string (quote it)"),
                        )),
                    }
                }
            }
            Some(_) => errors.push(FieldError::new(
                format!("metadata.{field}"),
                "must be a mapping",
            )),
        }
        out
    };
    let labels = read("labels");
    let annotations = read("annotations");
    if errors.is_empty() {
        Ok((labels, annotations))
    } else {
        Err(errors)
    }
}

/// The app containers (all but a proxy) with their names; each must be a named mapping.
fn app_containers(spec: &Map<String, Value>) -> Result<Vec<NamedContainer>, Vec<FieldError>> {
    let Some(Value::Array(list)) = spec.get("containers") else {
        return Err(vec![FieldError::new(
            "spec.containers",
            "missing: a pod needs at least one container",
        )]);
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, c) in list.iter().enumerate() {
        match c
            .as_object()
            .and_then(|m| Some((m.get("name")?.as_str()?.to_string(), m)))
        {
            Some((name, _)) if name == PROXY_CONTAINER_NAME => {}
            Some((name, map)) => out.push((name, map.clone())),
            None => errors.push(FieldError::new(
                format!("spec.containers[{i}]"),
                "must be a mapping with a name",
            )),
        }
    }
    if list.is_empty() {
        errors.push(FieldError::new(
            "spec.containers",
            "a pod needs at least one container",
        ));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The array at `key`, created when absent (or not an array).
fn array<'a>(spec: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let entry = spec.entry(key).or_insert_with(|| json!([]));
    if !entry.is_array() {
        *entry = json!([]);
    }
    match entry {
        Value::Array(list) => list,
        _ => unreachable!("just made an array"),
    }
}

fn string_map(map: BTreeMap<String, String>) -> Value {
    Value::Object(
        map.into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    )
}

/// Merges values, mesh config and annotations into the settings of this pod's sidecar.
fn settings(config: &InjectConfig, o: &SidecarOverrides, proxy_config: &ProxyConfig) -> Sidecar {
    let values = &config.values;
    let proxy = &values.global.proxy;
    let resources = if o.sets_resources() {
        let pick = |cpu: &Option<String>, memory: &Option<String>| {
            let mut m = Map::new();
            if let Some(cpu) = cpu {
                m.insert("cpu".into(), json!(cpu));
            }
            if let Some(memory) = memory {
                m.insert("memory".into(), json!(memory));
            }
            m
        };
        resources(
            pick(&o.proxy_cpu, &o.proxy_memory),
            pick(&o.proxy_cpu_limit, &o.proxy_memory_limit),
        )
    } else {
        let to_map =
            |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        resources(
            to_map(&proxy.resources.requests),
            to_map(&proxy.resources.limits),
        )
    };
    let or = |annotation: &Option<String>, default: &str| {
        annotation.clone().unwrap_or_else(|| default.to_string())
    };
    Sidecar {
        image: or(&o.proxy_image, &values.proxy_image()),
        image_pull_policy: values.global.image_pull_policy.clone(),
        interception_mode: o
            .interception_mode
            .or(proxy_config.interception_mode)
            .unwrap_or_default(),
        status_port: o
            .status_port
            .or(proxy_config.status_port)
            .unwrap_or(proxy.status_port),
        include_ip_ranges: o
            .include_outbound_ip_ranges
            .as_ref()
            .map_or_else(|| proxy.include_ip_ranges.clone(), ToString::to_string),
        exclude_ip_ranges: o
            .exclude_outbound_ip_ranges
            .as_ref()
            .map_or_else(|| proxy.exclude_ip_ranges.clone(), ToString::to_string),
        include_inbound_ports: o
            .include_inbound_ports
            .as_ref()
            .map_or_else(|| proxy.include_inbound_ports.clone(), ToString::to_string),
        exclude_inbound_ports: o
            .exclude_inbound_ports
            .as_ref()
            .map_or_else(|| proxy.exclude_inbound_ports.clone(), ToString::to_string),
        include_outbound_ports: o
            .include_outbound_ports
            .as_ref()
            .map_or_else(|| proxy.include_outbound_ports.clone(), ToString::to_string),
        exclude_outbound_ports: o
            .exclude_outbound_ports
            .as_ref()
            .map_or_else(|| proxy.exclude_outbound_ports.clone(), ToString::to_string),
        resources,
        cluster_domain: proxy.cluster_domain.clone(),
        log_level: or(&o.log_level, &proxy.log_level),
        component_log_level: or(&o.component_log_level, &proxy.component_log_level),
        agent_log_level: or(&o.agent_log_level, &values.global.logging.level),
        privileged: proxy.privileged,
        readiness: (
            o.readiness
                .0
                .unwrap_or(proxy.readiness_initial_delay_seconds),
            o.readiness.1.unwrap_or(proxy.readiness_period_seconds),
            o.readiness.2.unwrap_or(proxy.readiness_failure_threshold),
        ),
        token_audience: values.global.sds.token.aud.clone(),
        env: Vec::new(),
        proxy_metadata: proxy_config.proxy_metadata.clone(),
        startup_probe: proxy
            .startup_probe
            .enabled
            .then_some(proxy.startup_probe.failure_threshold),
        cni: values.pilot.cni.enabled,
        native: false,
        // The mesh's or pod's ProxyConfig, or the values: either turns it on (Istio ORs them).
        hold_application: proxy_config
            .hold_application_until_proxy_starts
            .unwrap_or(false)
            || proxy.hold_application_until_proxy_starts,
        reroute_interfaces: o.reroute_interfaces.clone(),
        exclude_interfaces: o.exclude_interfaces.clone(),
        user_volumes: o.user_volumes.clone(),
        user_volume_mounts: o.user_volume_mounts.clone(),
        proxy_uid: PROXY_UID,
        proxy_gid: PROXY_UID,
        mtls_certs_secret: None,
    }
}

fn resources(requests: Map<String, Value>, limits: Map<String, Value>) -> Value {
    let mut r = Map::new();
    if !limits.is_empty() {
        r.insert("limits".into(), Value::Object(limits));
    }
    if !requests.is_empty() {
        r.insert("requests".into(), Value::Object(requests));
    }
    Value::Object(r)
}

/// The proxy's environment, in the order of Istio's template.
fn proxy_env(
    config: &InjectConfig,
    o: &SidecarOverrides,
    mut proxy_config: ProxyConfig,
    workload: &WorkloadMeta,
    sidecar: &Sidecar,
    (app_names, app_containers): (&[String], &[&Map<String, Value>]),
    (labels, annotations): (&StringMap, &StringMap),
) -> Vec<Value> {
    // PROXY_CONFIG carries what the user set (mesh defaultConfig, then the annotation), plus
    // what injection decided that the proxy cannot know otherwise.
    if let Some(port) = o.status_port {
        // A number always fits `statusPort`.
        let _ = proxy_config.set("statusPort", json!(port));
    }
    if proxy_config.discovery_address.is_none() && config.revision() != "default" {
        let _ = proxy_config.set("discoveryAddress", json!(config.values.istiod_address()));
    }

    let mut env = Vec::new();
    if config.mesh.inbound_traffic_policy == Some(InboundMode::Localhost) {
        // The proxy sends inbound requests to the app on 127.0.0.1, probes included.
        env.push(env_value(
            "REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION",
            "true",
        ));
    }
    env.extend([
        env_value(
            "PILOT_CERT_PROVIDER",
            config.values.global.pilot_cert_provider.clone(),
        ),
        env_value("CA_ADDR", config.values.ca_address()),
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("INSTANCE_IP", "status.podIP"),
        env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env_field("HOST_IP", "status.hostIP"),
        env_resource("ISTIO_CPU_LIMIT", "limits.cpu"),
        env_value("PROXY_CONFIG", format!("{}\n", proxy_config.to_json())),
        env_value("ISTIO_META_POD_PORTS", pod_ports_json(app_containers)),
    ]);
    env.extend([
        // No app containers: the variable without a value, as Kubernetes writes an empty one.
        if app_names.is_empty() {
            json!({"name": "ISTIO_META_APP_CONTAINERS"})
        } else {
            env_value("ISTIO_META_APP_CONTAINERS", app_names.join(","))
        },
        env_resource("GOMEMLIMIT", "limits.memory"),
        env_value("ISTIO_META_CLUSTER_ID", config.cluster_id()),
        env_field("ISTIO_META_NODE_NAME", "spec.nodeName"),
        env_value(
            "ISTIO_META_INTERCEPTION_MODE",
            sidecar.interception_mode.as_str(),
        ),
    ]);
    // The pod's `service.istio.io/workload-name` label names its workload, else its owner.
    let workload_name = labels
        .get(WORKLOAD_NAME_LABEL)
        .filter(|n| !n.is_empty())
        .unwrap_or(&workload.name);
    if !workload_name.is_empty() {
        env.push(env_value("ISTIO_META_WORKLOAD_NAME", workload_name.clone()));
    }
    if let Some(owner) = workload.owner_uri() {
        env.push(env_value("ISTIO_META_OWNER", owner));
    }
    env.push(env_value("ISTIO_META_MESH_ID", config.mesh_id()));
    env.push(env_value("TRUST_DOMAIN", config.trust_domain()));
    if config.mesh.otel_semantic_conventions {
        let attributes = otel_resource_attributes(labels, annotations, workload, app_containers);
        if !attributes.is_empty() {
            env.push(env_value("OTEL_RESOURCE_ATTRIBUTES", attributes));
        }
    }
    for (k, v) in &sidecar.proxy_metadata {
        env.push(env_value(k, v.clone()));
    }
    if !config.values.global.network.is_empty() {
        // Istio sets the network after the template, as it labels the pod with it.
        env.push(env_value(
            "ISTIO_META_NETWORK",
            config.values.global.network.clone(),
        ));
    }
    env
}

/// Security (the sidecar template only) and telemetry labels, keeping any the user set.
fn add_labels(labels: &mut BTreeMap<String, String>, workload: &WorkloadMeta, tls_mode: bool) {
    if tls_mode {
        labels
            .entry(label::TLS_MODE.to_string())
            .or_insert_with(|| "istio".to_string());
    }
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()).cloned())
    };
    let name = first(&[
        label::CANONICAL_NAME,
        label::APP_KUBERNETES_NAME,
        label::APP,
    ])
    .or_else(|| (!workload.name.is_empty()).then(|| workload.name.clone()));
    let revision = first(&[
        label::CANONICAL_REVISION,
        label::APP_KUBERNETES_VERSION,
        label::VERSION,
    ])
    .unwrap_or_else(|| "latest".to_string());
    if let Some(name) = name {
        labels.insert(label::CANONICAL_NAME.to_string(), label_value(&name));
    }
    labels.insert(label::CANONICAL_REVISION.to_string(), revision);
}

/// Points Prometheus at the proxy's merged metrics on the status port, as Istio does, unless
/// the pod turned scraping off. The app's own scrape settings go to the proxy (which scrapes
/// the app and merges) in `ISTIO_PROMETHEUS_ANNOTATIONS`.
fn merge_prometheus(annotations: &mut BTreeMap<String, String>, status_port: u16) -> Option<Value> {
    // Istio matches the key as a Prometheus label name (`prometheus.io.scrape` counts too) and
    // the value as Go's ParseBool.
    let sanitized = |k: &str| -> String {
        k.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    if annotations.iter().any(|(k, v)| {
        sanitized(k) == "prometheus_io_scrape"
            && matches!(v.as_str(), "0" | "f" | "F" | "false" | "FALSE" | "False")
    }) {
        return None;
    }
    let port = status_port.to_string();
    if annotations.get(ann::PROMETHEUS_PORT) == Some(&port) {
        return None;
    }
    #[derive(Serialize)]
    struct Scrape<'a> {
        scrape: &'a str,
        port: &'a str,
        path: &'a str,
    }
    let get = |k: &str| annotations.get(k).map(String::as_str).unwrap_or_default();
    let had_any = [
        ann::PROMETHEUS_SCRAPE,
        ann::PROMETHEUS_PORT,
        ann::PROMETHEUS_PATH,
    ]
    .iter()
    .any(|k| annotations.contains_key(*k));
    let env = had_any.then(|| {
        let scrape = Scrape {
            scrape: get(ann::PROMETHEUS_SCRAPE),
            port: get(ann::PROMETHEUS_PORT),
            path: get(ann::PROMETHEUS_PATH),
        };
        env_value(
            PROMETHEUS_ANNOTATIONS_ENV,
            serde_json::to_string(&scrape).unwrap_or_default(),
        )
    });
    annotations.insert(ann::PROMETHEUS_SCRAPE.to_string(), "true".to_string());
    annotations.insert(ann::PROMETHEUS_PORT.to_string(), port);
    annotations.insert(
        ann::PROMETHEUS_PATH.to_string(),
        "/stats/prometheus".to_string(),
    );
    env
}

/// A label value cut as Istio's template cuts the canonical name (`trunc 63 | trimAll "-_."`):
/// Kubernetes takes at most 63 characters, starting and ending with an alphanumeric.
fn label_value(name: &str) -> String {
    let cut: String = name.chars().take(63).collect();
    cut.trim_matches(['-', '_', '.']).to_string()
}

/// The annotations Istio's CNI plugin reads to capture the pod's traffic (the template writes
/// them when CNI is on), and the Multus network it needs.
fn cni_annotations(
    annotations: &mut BTreeMap<String, String>,
    config: &InjectConfig,
    sidecar: &Sidecar,
) {
    if config.values.pilot.cni.provider == "multus" {
        let key = "k8s.v1.cni.cncf.io/networks";
        let network = "default/istio-cni";
        let value = match annotations.get(key).map(|v| v.trim()) {
            None | Some("") => network.to_string(),
            // Already there (a pod injected again): as it is.
            Some(list) if list.contains("istio-cni") => list.to_string(),
            // A JSON list of network objects, or a comma-separated list of names.
            // Istio appends to the text, keeping the user's spelling.
            Some(list) if list.starts_with('[') && list.ends_with(']') => {
                let items = list[..list.len() - 1].trim_end();
                let sep = if items == "[" { "" } else { ", " };
                format!("{items}{sep}{{\"name\": \"istio-cni\", \"namespace\": \"default\"}}]")
            }
            Some(list) => format!("{list}, {network}"),
        };
        annotations.insert(key.to_string(), value);
    }
    let mut put = |key: &str, value: String| {
        annotations.insert(key.to_string(), value);
    };
    put(
        ann::SIDECAR_INTERCEPTION_MODE,
        sidecar.interception_mode.as_str().to_string(),
    );
    if !sidecar.include_ip_ranges.is_empty() {
        put(
            ann::INCLUDE_OUTBOUND_IP_RANGES,
            sidecar.include_ip_ranges.clone(),
        );
    }
    if !sidecar.exclude_ip_ranges.is_empty() {
        put(
            ann::EXCLUDE_OUTBOUND_IP_RANGES,
            sidecar.exclude_ip_ranges.clone(),
        );
    }
    put(
        ann::INCLUDE_INBOUND_PORTS,
        sidecar.include_inbound_ports.clone(),
    );
    put(
        ann::EXCLUDE_INBOUND_PORTS,
        sidecar.cni_excluded_inbound_ports(),
    );
    if !sidecar.include_outbound_ports.is_empty() {
        put(
            ann::INCLUDE_OUTBOUND_PORTS,
            sidecar.include_outbound_ports.clone(),
        );
    }
    if !sidecar.exclude_outbound_ports.is_empty() {
        put(
            ann::EXCLUDE_OUTBOUND_PORTS,
            sidecar.exclude_outbound_ports.clone(),
        );
    }
    if let Some(i) = &sidecar.reroute_interfaces {
        put(ann::REROUTE_VIRTUAL_INTERFACES, i.clone());
    }
    if let Some(i) = &sidecar.exclude_interfaces {
        put(ann::EXCLUDE_INTERFACES, i.clone());
    }
}

/// Runs the check `ama iptables` runs ([`netfilter::CaptureFlags::check`]) on the flags
/// istio-init will get, so that a pod is refused here, naming the annotation or setting, rather
/// than failing to start.
fn check_capture(sidecar: &Sidecar, o: &SidecarOverrides) -> Result<(), FieldError> {
    use netfilter::Flag;
    let excluded_inbound = sidecar.excluded_inbound_ports();
    let flags = netfilter::CaptureFlags {
        interception_mode: sidecar.interception_mode.as_str(),
        outbound_ranges: &sidecar.include_ip_ranges,
        outbound_ranges_exclude: &sidecar.exclude_ip_ranges,
        inbound_ports: &sidecar.include_inbound_ports,
        inbound_ports_exclude: &excluded_inbound,
        outbound_ports: &sidecar.include_outbound_ports,
        outbound_ports_exclude: &sidecar.exclude_outbound_ports,
        kube_virt_interfaces: sidecar.reroute_interfaces.as_deref().unwrap_or_default(),
        exclude_interfaces: sidecar.exclude_interfaces.as_deref().unwrap_or_default(),
    };
    let Err(e) = flags.check() else {
        return Ok(());
    };
    // Where the value came from: the pod's annotation if it set one, else the mesh settings.
    let (annotation, setting): (Option<&str>, &str) = match e.flag {
        Flag::InterceptionMode => (
            o.interception_mode
                .map(|_| ann::SIDECAR_INTERCEPTION_MODE)
                .or_else(|| {
                    o.proxy_config
                        .as_ref()
                        .and_then(|c| c.interception_mode)
                        .map(|_| ann::PROXY_CONFIG)
                }),
            "MeshConfig defaultConfig.interceptionMode",
        ),
        Flag::OutboundRanges => (
            o.include_outbound_ip_ranges
                .as_ref()
                .map(|_| ann::INCLUDE_OUTBOUND_IP_RANGES),
            "values global.proxy.includeIPRanges",
        ),
        Flag::OutboundRangesExclude => (
            o.exclude_outbound_ip_ranges
                .as_ref()
                .map(|_| ann::EXCLUDE_OUTBOUND_IP_RANGES),
            "values global.proxy.excludeIPRanges",
        ),
        Flag::InboundPorts => (
            o.include_inbound_ports
                .as_ref()
                .map(|_| ann::INCLUDE_INBOUND_PORTS),
            "values global.proxy.includeInboundPorts",
        ),
        Flag::InboundPortsExclude => (
            o.exclude_inbound_ports
                .as_ref()
                .map(|_| ann::EXCLUDE_INBOUND_PORTS),
            "values global.proxy.excludeInboundPorts",
        ),
        Flag::OutboundPorts => (
            o.include_outbound_ports
                .as_ref()
                .map(|_| ann::INCLUDE_OUTBOUND_PORTS),
            "values global.proxy.includeOutboundPorts",
        ),
        Flag::OutboundPortsExclude => (
            o.exclude_outbound_ports
                .as_ref()
                .map(|_| ann::EXCLUDE_OUTBOUND_PORTS),
            "values global.proxy.excludeOutboundPorts",
        ),
        Flag::KubeVirtInterfaces => (
            Some(if o.reroute_interfaces.is_some() {
                ann::REROUTE_VIRTUAL_INTERFACES
            } else {
                ann::KUBEVIRT_INTERFACES
            }),
            "",
        ),
        Flag::ExcludeInterfaces => (Some(ann::EXCLUDE_INTERFACES), ""),
    };
    let message = format!("istio-init's `ama iptables` would refuse it: {e}");
    Err(match annotation {
        Some(key) => FieldError::new(format!("metadata.annotations[\"{key}\"]"), message),
        None => FieldError::new(
            "",
            format!("{setting} (no pod annotation overrides it): {message}"),
        ),
    })
}
