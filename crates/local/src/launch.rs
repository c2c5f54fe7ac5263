//! What runs in one pod, decided from its group's template as the API server and kubelet would:
//!
//! 1. Injection, by the webhook's own rules ([`inject::injection_required`] with the namespace's
//!    labels): an injected pod gets the `istio-init` and `istio-proxy` containers of
//!    [`inject::inject_pod_template`], exactly what `ama kube-inject` writes. A pod that is
//!    already injected (the output of `kube-inject`) runs its own. Others run without either,
//!    so without capture rules, like a pod without injection in a cluster.
//! 2. Each container becomes a process: `istio-init` and `istio-proxy` run this `ama` binary
//!    with the injected arguments; an app container runs the annotation
//!    `local.ama.dev/command.<container>` or, for the first container, `local.ama.dev/command`
//!    (on the pod template or its owner; run by `sh -c`), else its `command` and `args` when the
//!    program exists on this machine (`sleep infinity`).
//! 3. Environment: literal values and the downward API (`metadata.name`, `status.podIP`, …);
//!    `$(VAR)` in commands and arguments is expanded as kubelet does. The user is the
//!    container's (or the pod's) `securityContext.runAsUser`/`runAsGroup`: 1337 for the proxy.
//! 4. Probes: the container's `readinessProbe`, `livenessProbe` and `startupProbe` (`httpGet` or
//!    `tcpSocket`; an injected pod's app probes go through the proxy's status port, as in a
//!    cluster), each with its [`Timing`] (`initialDelaySeconds`, `periodSeconds`,
//!    `failureThreshold`, `successThreshold`); without a readiness probe, running is ready. A
//!    `exec` probe runs its command in the container; a `grpc` probe is not run, and
//!    [`Launch::notes`] says so. The pod's
//!    `restartPolicy` ([`RestartPolicy`]) says whether a container that exits is started again.
//! 5. `holdApplicationUntilProxyStarts` ([`hold_application`]): the app containers start only
//!    once `istio-proxy` is ready, as Istio's injected `postStart` hook makes kubelet do.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use inject::SkipReason;
use inject::sidecar::{BINARY, INIT_CONTAINER_NAME, PROXY_CONTAINER_NAME};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Error;
use crate::manifests::{Labels, MeshSettings};
use crate::plan::{PodGroup, string_map};
use crate::sandbox::{Sandbox, capabilities};

/// Annotation: the command of the pod's first app container on this machine.
pub const COMMAND_ANNOTATION: &str = "local.ama.dev/command";
/// Annotation of a pod template: names outside the cluster that resolve to its pod's address in
/// every pod and in the bridge's namespace (where discovery runs), as an outside DNS would:
/// `"api.external.test,other.example"`. A pod stands for an external server this way.
pub const DNS_NAMES_ANNOTATION: &str = "local.ama.dev/dns-names";

/// The names of a `local.ama.dev/dns-names` value (comma-separated, blanks ignored, lower
/// case); an error names the first that is no DNS name, or a cluster-local one.
pub fn dns_names(value: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let name = name.to_ascii_lowercase();
        api::check::dns_name(&name, true).map_err(|m| format!("{name:?}: {m}"))?;
        if name.ends_with(".svc.cluster.local") || name.ends_with(".cluster.local") {
            return Err(format!(
                "{name:?} is a cluster-local name: give names outside the cluster"
            ));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err("names no host: give \"name[,name…]\"".into());
    }
    Ok(names)
}

/// Annotation read by the control plane's file registry: the pod's address.
pub const ADDRESS_ANNOTATION: &str = "local.ama.dev/address";

/// Everything a new pod is made from.
#[derive(Debug, Clone, Copy)]
pub struct LaunchInputs<'a> {
    /// Its group (owner and template).
    pub group: &'a PodGroup,
    /// Its name.
    pub pod_name: &'a str,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The labels of its namespace.
    pub namespace_labels: &'a Labels,
    /// Mesh-wide settings (injection, access log).
    pub mesh: &'a MeshSettings,
    /// The `ama` binary that runs `istio-init`, `istio-proxy` and the samples.
    pub ama: &'a Path,
    /// The node's address (`status.hostIP`): the bridge.
    pub host_ip: Ipv4Addr,
    /// The node's name (`spec.nodeName`).
    pub node_name: &'a str,
}

/// What a container is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An init container: runs to completion before the others start.
    Init,
    /// The `istio-proxy` sidecar.
    Sidecar,
    /// An app container.
    App,
}

/// How readiness of a container is checked, inside the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Probe {
    /// `GET http://127.0.0.1:<port><path>` answers 2xx or 3xx.
    Http {
        /// Port.
        port: u16,
        /// Path and query.
        path: String,
    },
    /// `127.0.0.1:<port>` accepts connections.
    Tcp {
        /// Port.
        port: u16,
    },
    /// The command exits 0, run in the container (its namespace, user, sandbox and
    /// environment), as kubelet runs an `exec` probe.
    Exec {
        /// The command and its arguments.
        command: Vec<String>,
    },
    /// Ready while running.
    None,
}

/// When a probe runs and how many results in a row change its verdict: a Kubernetes Probe's
/// timing fields, with Kubernetes' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timing {
    /// Seconds after the container started before the first check.
    pub initial_delay_seconds: u64,
    /// Seconds between checks.
    pub period_seconds: u64,
    /// Failed checks in a row that make it fail.
    pub failure_threshold: u32,
    /// Passed checks in a row that make it pass again.
    pub success_threshold: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            initial_delay_seconds: 0,
            period_seconds: 10,
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

impl Timing {
    /// The timing of a probe object (`readinessProbe`, `livenessProbe`); a field that is
    /// absent, zero where Kubernetes requires at least one, or not a number keeps its default.
    pub fn of(probe: &Value) -> Timing {
        let d = Timing::default();
        let field = |name: &str| probe.get(name).and_then(Value::as_u64);
        let at_least_one =
            |name: &str, default: u64| field(name).filter(|n| *n >= 1).unwrap_or(default);
        Timing {
            initial_delay_seconds: field("initialDelaySeconds").unwrap_or(d.initial_delay_seconds),
            period_seconds: at_least_one("periodSeconds", d.period_seconds),
            failure_threshold: u32::try_from(at_least_one(
                "failureThreshold",
                u64::from(d.failure_threshold),
            ))
            .unwrap_or(d.failure_threshold),
            success_threshold: u32::try_from(at_least_one(
                "successThreshold",
                u64::from(d.success_threshold),
            ))
            .unwrap_or(d.success_threshold),
        }
    }

    /// As `kubectl describe` shows it: `delay=10s timeout=1s period=5s #success=1 #failure=3`.
    pub fn describe(&self) -> String {
        format!(
            "delay={}s timeout=1s period={}s #success={} #failure={}",
            self.initial_delay_seconds,
            self.period_seconds,
            self.success_threshold,
            self.failure_threshold
        )
    }
}

/// A probe: what is checked, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// The check.
    pub check: Probe,
    /// Its timing.
    pub timing: Timing,
}

impl ProbeSpec {
    /// The probe of field `field` (`livenessProbe`) of container `c`, when it has one Ama can
    /// run (`httpGet`, `tcpSocket`).
    pub fn of(c: &Value, field: &str) -> Option<ProbeSpec> {
        let p = c.get(field)?;
        let check = check_of(c, p);
        (check != Probe::None).then(|| ProbeSpec {
            check,
            timing: Timing::of(p),
        })
    }

    /// As `kubectl describe` shows it: `http-get http://:80/status/200 delay=0s ...`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.check.describe(), self.timing.describe())
    }
}

/// A pod's `restartPolicy`: whether kubelet starts a container again after it exited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Always (the default).
    #[default]
    Always,
    /// Only after a non-zero exit.
    OnFailure,
    /// Never.
    Never,
}

impl RestartPolicy {
    /// The policy of a pod spec; an unknown value is an error naming the field.
    pub fn of(spec: &Value) -> Result<RestartPolicy, String> {
        match spec.get("restartPolicy").and_then(Value::as_str) {
            None | Some("Always") => Ok(RestartPolicy::Always),
            Some("OnFailure") => Ok(RestartPolicy::OnFailure),
            Some("Never") => Ok(RestartPolicy::Never),
            Some(other) => Err(format!(
                "spec.restartPolicy: {other:?} is not one of Always, OnFailure, Never"
            )),
        }
    }

    /// Whether a container that exited with `code` is started again.
    pub fn restarts(self, code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Never => false,
        }
    }
}

impl Probe {
    /// What is checked, as `kubectl describe` shows it: `http-get http://:80/status/200`,
    /// `tcp-socket :80`.
    pub fn describe(&self) -> String {
        match self {
            Probe::Http { port, path } => format!("http-get http://:{port}{path}"),
            Probe::Tcp { port } => format!("tcp-socket :{port}"),
            Probe::Exec { command } => format!("exec [{}]", command.join(" ")),
            Probe::None => String::new(),
        }
    }
}

/// One container's process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRun {
    /// The container's name.
    pub name: String,
    /// What it is for.
    pub role: Role,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment (on top of `PATH`, `HOME` and `HOSTNAME`).
    pub env: Vec<(String, String)>,
    /// Uid and gid, when not root.
    pub user: Option<(u32, u32)>,
    /// Readiness check.
    pub probe: Probe,
    /// When the readiness check runs.
    #[serde(default)]
    pub readiness: Timing,
    /// The liveness probe: failing, the container is killed and restarted.
    #[serde(default)]
    pub liveness: Option<ProbeSpec>,
    /// The startup probe: until it passes, readiness and liveness are not checked; failing, the
    /// container is killed and restarted.
    #[serde(default)]
    pub startup: Option<ProbeSpec>,
    /// Its view of the machine (hostname, hidden state, capabilities); `None`: the host's, for
    /// the control plane only.
    pub sandbox: Option<Sandbox>,
}

/// What runs in one pod.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The pod as the API server would hold it (injected, with its address annotation): what
    /// the control plane is told, and what `ama get pods -o yaml` prints.
    pub pod: Value,
    /// Why it has no sidecar, when it has none.
    pub skipped: Option<SkipReason>,
    /// Init containers, in order (`istio-init` among them when injected).
    pub init: Vec<ContainerRun>,
    /// The other containers (`istio-proxy` among them when injected).
    pub containers: Vec<ContainerRun>,
    /// `spec.restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// The app containers wait for the sidecar to be ready ([`hold_application`]).
    pub hold_application: bool,
    /// What of the pod is not run as written (a probe kind Ama does not run), for the user.
    pub notes: Vec<String>,
}

impl Launch {
    /// Whether the pod has a sidecar.
    pub fn injected(&self) -> bool {
        self.containers.iter().any(|c| c.role == Role::Sidecar)
    }
}

/// Decides what runs in a new pod.
pub fn launch(inputs: LaunchInputs<'_>) -> Result<Launch, Error> {
    let group = inputs.group;
    let object = || group.display();
    let namespace = group.owner.namespace.as_str();
    let mut labels = group.pod_labels(inputs.pod_name);
    let template_annotations = string_map(group.template.pointer("/metadata/annotations"));
    let spec = group.template.get("spec").cloned().unwrap_or(json!({}));
    let mut template = json!({
        "metadata": {
            "name": inputs.pod_name,
            "namespace": namespace,
            "labels": labels,
            "annotations": template_annotations,
        },
        "spec": spec,
    });
    let config = &inputs.mesh.inject;
    let decision =
        inject::injection_required(namespace, Some(inputs.namespace_labels), &template, config);
    let skipped = match decision {
        Ok(()) => {
            inject::inject_pod_template(&mut template, &group.owner, config).map_err(|errors| {
                Error::Pod {
                    object: object(),
                    message: format!(
                        "cannot inject the sidecar: {}",
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                }
            })?;
            None
        }
        Err(SkipReason::AlreadyInjected) => None,
        Err(reason) => Some(reason),
    };
    // Injection may have added labels (security.istio.io/tlsMode, canonical names).
    labels = string_map(template.pointer("/metadata/labels"));
    let mut annotations = string_map(template.pointer("/metadata/annotations"));
    if let Some(names) = annotations.get(DNS_NAMES_ANNOTATION) {
        dns_names(names).map_err(|message| Error::Pod {
            object: object(),
            message: format!(
                "spec.template.metadata.annotations[\"{DNS_NAMES_ANNOTATION}\"]: {message}"
            ),
        })?;
    }
    annotations.insert(ADDRESS_ANNOTATION.into(), inputs.ip.to_string());
    let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
    if let Value::Object(s) = &mut spec {
        s.insert("nodeName".into(), json!(inputs.node_name));
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": inputs.pod_name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    });

    let facts = PodFacts {
        pod: &pod,
        ip: inputs.ip,
        host_ip: inputs.host_ip,
    };
    let mut owner_annotations = group.owner_annotations.clone();
    owner_annotations.extend(template_annotations_of(&pod));
    let list = |field: &str| -> Vec<Value> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut first_app = true;
    let mut runs = |containers: Vec<Value>, init: bool| -> Result<Vec<ContainerRun>, Error> {
        containers
            .iter()
            .map(|c| {
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                let role = match (init, name) {
                    (true, INIT_CONTAINER_NAME) => Role::Init,
                    (false, PROXY_CONTAINER_NAME) => Role::Sidecar,
                    (true, _) => Role::Init,
                    (false, _) => Role::App,
                };
                let is_first_app = role == Role::App && first_app;
                if role == Role::App {
                    first_app = false;
                }
                container_run(
                    c,
                    role,
                    is_first_app,
                    &owner_annotations,
                    &facts,
                    inputs.ama,
                )
                .map_err(|message| Error::Pod {
                    object: object(),
                    message: format!("container \"{name}\": {message}"),
                })
            })
            .collect()
    };
    let init = runs(list("initContainers"), true)?;
    let containers = runs(list("containers"), false)?;
    let notes = list("containers")
        .iter()
        .flat_map(|c| unsupported_probes(c, inputs.pod_name))
        .collect();
    let restart_policy = RestartPolicy::of(&pod["spec"]).map_err(|message| Error::Pod {
        object: object(),
        message: format!("spec.template.{message}"),
    })?;
    let hold_application = containers.iter().any(|c| c.role == Role::Sidecar)
        && hold_application(&pod, inputs.mesh.hold_application);
    Ok(Launch {
        pod,
        skipped,
        init,
        containers,
        restart_policy,
        hold_application,
        notes,
    })
}

/// A sentence for each probe of container `c` that Ama cannot run (`grpc`): the
/// container is then ready while it runs, and never restarted by it.
fn unsupported_probes(c: &Value, pod: &str) -> Vec<String> {
    let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
    ["readinessProbe", "livenessProbe", "startupProbe"]
        .iter()
        .filter_map(|field| {
            let p = c.get(*field)?;
            if check_of(c, p) != Probe::None {
                return None;
            }
            let kind = ["grpc", "exec", "httpGet", "tcpSocket"]
                .into_iter()
                .find(|k| p.get(*k).is_some())
                .unwrap_or("its handler");
            Some(format!(
                "pod {pod}: container {name}: {field}.{kind} is not run by ama up (httpGet, \
                 tcpSocket with a port the container has, and exec probes are): {}",
                if *field == "readinessProbe" {
                    "the container is ready while it runs"
                } else {
                    "the probe is left out"
                }
            ))
        })
        .collect()
}

/// Whether the app containers of `pod` wait for its sidecar, as Istio's
/// `holdApplicationUntilProxyStarts` makes them: `istio-proxy` carries the `postStart` hook
/// `pilot-agent wait` that the injector adds for it (kubelet starts the next container only once
/// the hook returned, when the proxy is ready); else the pod's annotation
/// `proxy.istio.io/config` says `holdApplicationUntilProxyStarts` (true or false), else MeshConfig's
/// `defaultConfig` does (`mesh_default`).
pub fn hold_application(pod: &Value, mesh_default: bool) -> bool {
    const FIELD: &str = "holdApplicationUntilProxyStarts";
    let hook = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER_NAME))
        .filter_map(|c| c.pointer("/lifecycle/postStart/exec/command")?.as_array())
        .any(|argv| {
            let words: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
            words.contains(&"wait")
        });
    if hook {
        return true;
    }
    let annotation = pod
        .pointer("/metadata/annotations/proxy.istio.io~1config")
        .and_then(Value::as_str)
        .and_then(|text| serde_saphyr::from_str::<Value>(text).ok())
        .and_then(|config| config.get(FIELD).and_then(Value::as_bool));
    annotation.unwrap_or(mesh_default)
}

fn template_annotations_of(pod: &Value) -> Labels {
    string_map(pod.pointer("/metadata/annotations"))
}

/// What the downward API reads.
struct PodFacts<'a> {
    pod: &'a Value,
    ip: Ipv4Addr,
    host_ip: Ipv4Addr,
}

impl PodFacts<'_> {
    /// The value of a `fieldRef.fieldPath`, when it is one kubelet knows.
    fn field(&self, path: &str) -> Option<String> {
        let text = |p: &str| {
            self.pod
                .pointer(p)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let indexed = |prefix: &str, map: &str| -> Option<Option<String>> {
            let key = path
                .strip_prefix(prefix)?
                .strip_prefix("['")?
                .strip_suffix("']")?;
            Some(
                self.pod
                    .pointer(&format!("/metadata/{map}"))
                    .and_then(|m| m.get(key))
                    .and_then(Value::as_str)
                    .map(str::to_string),
            )
        };
        if let Some(v) = indexed("metadata.labels", "labels") {
            return v;
        }
        if let Some(v) = indexed("metadata.annotations", "annotations") {
            return v;
        }
        match path {
            "metadata.name" => text("/metadata/name"),
            "metadata.namespace" => text("/metadata/namespace"),
            "metadata.uid" => Some(format!(
                "{}-{}",
                text("/metadata/namespace").unwrap_or_default(),
                text("/metadata/name").unwrap_or_default()
            )),
            "status.podIP" | "status.podIPs" => Some(self.ip.to_string()),
            "status.hostIP" | "status.hostIPs" => Some(self.host_ip.to_string()),
            "spec.serviceAccountName" => Some(
                text("/spec/serviceAccountName")
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "default".into()),
            ),
            "spec.nodeName" => text("/spec/nodeName"),
            _ => None,
        }
    }
}

/// The process of one container; errors are sentences about that container.
fn container_run(
    c: &Value,
    role: Role,
    first_app: bool,
    annotations: &Labels,
    facts: &PodFacts<'_>,
    ama: &Path,
) -> Result<ContainerRun, String> {
    let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
    let strings = |field: &str| -> Vec<String> {
        c.get(field)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let env = environment(c, facts);
    let command = strings("command");
    let args = strings("args");
    let expand_all =
        |list: Vec<String>| -> Vec<String> { list.into_iter().map(|s| expand(&s, &env)).collect() };
    let local = annotations
        .get(&format!("{COMMAND_ANNOTATION}.{name}"))
        .or_else(|| {
            first_app
                .then(|| annotations.get(COMMAND_ANNOTATION))
                .flatten()
        });
    let argv = match (role, local) {
        (Role::App | Role::Init, Some(line)) => vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!("exec {line}"),
        ],
        _ if command.first().map(String::as_str) == Some(BINARY) => {
            let mut argv = vec![ama.display().to_string()];
            argv.extend(expand_all(command[1..].to_vec()));
            argv.extend(expand_all(args));
            argv
        }
        _ if !command.is_empty() => {
            let mut argv = expand_all(command);
            if find_program(&argv[0], ama).is_none() {
                return Err(format!(
                    "its command \"{}\" is not on this machine: add the annotation \
                     {COMMAND_ANNOTATION}{}: \"<command>\" to the pod template",
                    argv[0],
                    if first_app {
                        String::new()
                    } else {
                        format!(".{name}")
                    }
                ));
            }
            argv.extend(expand_all(args));
            argv
        }
        _ => {
            let image = c.get("image").and_then(Value::as_str).unwrap_or("<none>");
            return Err(format!(
                "image {image} cannot run without a container runtime: add the annotation \
                 {COMMAND_ANNOTATION}{}: \"<command>\" to the pod template (for example \
                 \"ama sample httpbin --port 80\")",
                if first_app {
                    String::new()
                } else {
                    format!(".{name}")
                }
            ));
        }
    };
    Ok(ContainerRun {
        name: name.to_string(),
        role,
        argv,
        env,
        user: run_as(c, facts.pod),
        probe: c
            .get("readinessProbe")
            .map_or(Probe::None, |p| check_of(c, p)),
        readiness: c.get("readinessProbe").map(Timing::of).unwrap_or_default(),
        liveness: ProbeSpec::of(c, "livenessProbe"),
        startup: ProbeSpec::of(c, "startupProbe"),
        sandbox: Some(Sandbox {
            hostname: facts.field("metadata.name").unwrap_or_default(),
            caps: capabilities(c),
            ..Sandbox::default()
        }),
    })
}

/// A container's environment: literal values and the downward API, `$(VAR)` expanded against
/// the variables before it.
fn environment(c: &Value, facts: &PodFacts<'_>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = e.get("name").and_then(Value::as_str) else {
            continue;
        };
        let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
            Some(expand(v, &env))
        } else if let Some(path) = e
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str)
        {
            facts.field(path)
        } else {
            None
        };
        if let Some(value) = value {
            env.retain(|(k, _)| k != name);
            env.push((name.to_string(), value));
        }
    }
    env
}

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` is a `$`, anything else
/// is left as written.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `securityContext.runAsUser`/`runAsGroup` of the container, else of the pod; None for root.
fn run_as(c: &Value, pod: &Value) -> Option<(u32, u32)> {
    let id = |field: &str| -> Option<u32> {
        c.pointer(&format!("/securityContext/{field}"))
            .or_else(|| pod.pointer(&format!("/spec/securityContext/{field}")))
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    let uid = id("runAsUser")?;
    if uid == 0 {
        return None;
    }
    Some((uid, id("runAsGroup").unwrap_or(uid)))
}

/// The check of probe `p` of container `c` (a named port is one of `c`'s).
fn check_of(c: &Value, p: &Value) -> Probe {
    let port = |field: &Value| -> Option<u16> {
        match field {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(name) => c
                .get("ports")
                .and_then(Value::as_array)?
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
                .get("containerPort")?
                .as_u64()
                .and_then(|n| u16::try_from(n).ok()),
            _ => None,
        }
    };
    if let Some(get) = p.get("httpGet")
        && let Some(port) = get.get("port").and_then(port)
    {
        let path = get.get("path").and_then(Value::as_str).unwrap_or("/");
        return Probe::Http {
            port,
            path: path.to_string(),
        };
    }
    if let Some(port) = p.pointer("/tcpSocket/port").and_then(port) {
        return Probe::Tcp { port };
    }
    let command: Vec<String> = p
        .pointer("/exec/command")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if !command.is_empty() {
        return Probe::Exec { command };
    }
    Probe::None
}

/// `program` as a path: itself when it has a '/', else found on `PATH` (after `ama`'s own
/// directory, where the apps find `ama`).
pub fn find_program(program: &str, ama: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.exists().then_some(p);
    }
    search_path(ama)
        .into_iter()
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The `PATH` of app processes: `ama`'s directory first, then this process's `PATH`.
pub fn search_path(ama: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ama.parent().map(Path::to_path_buf).into_iter().collect();
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    dirs.extend(std::env::split_paths(&path));
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::{Manifests, parse_ok};
    use crate::plan::pod_groups;

    const SEED: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin-deployment, labels: {app: httpbin}}
spec:
  replicas: 2
  selector: {matchLabels: {app: httpbin}}
  template:
    metadata:
      labels: {app: httpbin}
      annotations: {local.ama.dev/command: ama sample httpbin --port 80}
    spec:
      containers:
      - name: httpbin
        image: kennethreitz/httpbin:latest
        ports: [{containerPort: 80}]
        env: [{name: ME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}, {name: GREETING, value: hi-$(ME)}]
        readinessProbe: {httpGet: {path: /status/200, port: 80}}
";

    fn launch_in(ns_labels: &Labels, yaml: &str) -> Result<Launch, Error> {
        let mut m = Manifests::default();
        m.merge(parse_ok(yaml, "t.yaml"));
        let (groups, _) = pod_groups(&m);
        launch(LaunchInputs {
            group: &groups[0],
            pod_name: "httpbin-deployment-abc-xyz12",
            ip: Ipv4Addr::new(10, 244, 0, 2),
            namespace_labels: ns_labels,
            mesh: &MeshSettings::default(),
            ama: Path::new("/opt/ama/bin/ama"),
            host_ip: Ipv4Addr::new(10, 244, 0, 1),
            node_name: "local",
        })
    }

    #[test]
    fn dns_names_are_checked() {
        assert_eq!(
            dns_names(" api.external.test,Other.Example,api.external.test "),
            Ok(vec![
                "api.external.test".to_string(),
                "other.example".to_string()
            ])
        );
        assert!(dns_names(" , ").unwrap_err().contains("names no host"));
        assert!(
            dns_names("httpbin.default.svc.cluster.local")
                .unwrap_err()
                .contains("cluster-local")
        );
        let bad = SEED.replace(
            "annotations: {local.ama.dev/command: ama sample httpbin --port 80}",
            "annotations: {local.ama.dev/command: ama sample httpbin --port 80, local.ama.dev/dns-names: \"api.ext_ernal!\"}",
        );
        let err = launch_in(&Labels::new(), &bad).unwrap_err().to_string();
        assert!(
            err.contains("spec.template.metadata.annotations[\"local.ama.dev/dns-names\"]: \"api.ext_ernal!\""),
            "{err}"
        );
        let good = SEED.replace(
            "annotations: {local.ama.dev/command: ama sample httpbin --port 80}",
            "annotations: {local.ama.dev/command: ama sample httpbin --port 80, local.ama.dev/dns-names: api.external.test}",
        );
        let l = launch_in(&Labels::new(), &good).unwrap();
        assert_eq!(
            l.pod
                .pointer("/metadata/annotations/local.ama.dev~1dns-names"),
            Some(&json!("api.external.test"))
        );
    }

    #[test]
    fn injected_pod_runs_istio_init_the_proxy_as_1337_and_the_app() {
        let labels = Labels::from([("istio-injection".into(), "enabled".into())]);
        let l = launch_in(&labels, SEED).unwrap();
        assert!(l.injected());
        assert_eq!(l.skipped, None);
        let init = &l.init[0];
        assert_eq!(init.name, "istio-init");
        assert_eq!(init.argv[..2], ["/opt/ama/bin/ama", "iptables"]);
        assert_eq!(init.user, None);
        let proxy = l
            .containers
            .iter()
            .find(|c| c.role == Role::Sidecar)
            .unwrap();
        assert_eq!(proxy.argv[1..3], ["proxy", "sidecar"]);
        assert!(
            proxy
                .argv
                .contains(&"default.svc.cluster.local".to_string()),
            "{:?}",
            proxy.argv
        );
        assert_eq!(proxy.user, Some((1337, 1337)));
        let env = |k: &str| {
            proxy
                .env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(env("POD_NAME"), Some("httpbin-deployment-abc-xyz12"));
        assert_eq!(env("INSTANCE_IP"), Some("10.244.0.2"));
        assert_eq!(env("SERVICE_ACCOUNT"), Some("default"));
        assert_eq!(
            proxy.probe,
            Probe::Http {
                port: 15021,
                path: "/healthz/ready".into()
            }
        );
        let app = l.containers.iter().find(|c| c.role == Role::App).unwrap();
        assert_eq!(
            app.argv,
            ["/bin/sh", "-c", "exec ama sample httpbin --port 80"]
        );
        assert!(
            app.env
                .contains(&("GREETING".into(), "hi-httpbin-deployment-abc-xyz12".into()))
        );
        // The app's probe goes through the proxy's status port, as Istio rewrites it.
        assert!(
            matches!(&app.probe, Probe::Http { port: 15020, path } if path.starts_with("/app-health/httpbin/")),
            "{:?}",
            app.probe
        );
        assert_eq!(
            l.pod["metadata"]["annotations"][ADDRESS_ANNOTATION],
            "10.244.0.2"
        );
        assert_eq!(
            l.pod["metadata"]["labels"]["security.istio.io/tlsMode"],
            "istio"
        );
    }

    #[test]
    fn namespace_without_the_label_gets_no_sidecar_and_no_init() {
        let l = launch_in(&Labels::new(), SEED).unwrap();
        assert!(!l.injected());
        assert_eq!(l.skipped, Some(SkipReason::NotSelected));
        assert!(l.init.is_empty());
        assert_eq!(l.containers.len(), 1);
        assert_eq!(
            l.containers[0].probe,
            Probe::Http {
                port: 80,
                path: "/status/200".into()
            }
        );
    }

    #[test]
    fn an_image_without_local_command_says_what_to_add() {
        let yaml = SEED.replace(
            "annotations: {local.ama.dev/command: ama sample httpbin --port 80}",
            "annotations: {}",
        );
        let err = launch_in(&Labels::new(), &yaml).unwrap_err().to_string();
        assert!(
            err.contains("Deployment default/httpbin-deployment"),
            "{err}"
        );
        assert!(err.contains("local.ama.dev/command"), "{err}");
        let yaml = yaml.replace(
            "image: kennethreitz/httpbin:latest",
            "image: ubuntu\n        command: [sleep, infinity]",
        );
        let l = launch_in(&Labels::new(), &yaml).unwrap();
        assert!(
            l.containers[0].argv[0].ends_with("sleep"),
            "{:?}",
            l.containers[0].argv
        );
        assert_eq!(l.containers[0].argv[1], "infinity");
    }

    #[test]
    fn expansion() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A).svc", &env), "x.svc");
        assert_eq!(expand("$$(A) $(B) $", &env), "$(A) $(B) $");
    }

    #[test]
    fn probe_timing_restart_policy_and_hold() {
        let c = json!({"name": "app", "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                "initialDelaySeconds": 7, "periodSeconds": 2, "failureThreshold": 0},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "successThreshold": 1},
            "startupProbe": {"grpc": {"port": 9090}}});
        assert_eq!(
            Timing::of(&c["readinessProbe"]),
            Timing {
                initial_delay_seconds: 7,
                period_seconds: 2,
                failure_threshold: 3,
                success_threshold: 1,
            }
        );
        let live = ProbeSpec::of(&c, "livenessProbe").unwrap();
        assert_eq!(live.check, Probe::Tcp { port: 8080 });
        assert_eq!(live.timing, Timing::default());
        assert_eq!(
            live.describe(),
            "tcp-socket :8080 delay=0s timeout=1s period=10s #success=1 #failure=3"
        );
        // A gRPC probe cannot run here: none, and a note says so.
        assert_eq!(ProbeSpec::of(&c, "startupProbe"), None);
        assert_eq!(
            unsupported_probes(&c, "p"),
            [
                "pod p: container app: startupProbe.grpc is not run by ama up (httpGet, tcpSocket \
              with a port the container has, and exec probes are): the probe is left out"
            ]
        );
        let exec = json!({"exec": {"command": ["cat", "/tmp/healthy"]}});
        assert_eq!(check_of(&c, &exec).describe(), "exec [cat /tmp/healthy]");
        assert_eq!(
            check_of(&c, &c["readinessProbe"]),
            Probe::Http {
                port: 8080,
                path: "/ready".into()
            }
        );

        assert_eq!(RestartPolicy::of(&json!({})), Ok(RestartPolicy::Always));
        let never = RestartPolicy::of(&json!({"restartPolicy": "Never"})).unwrap();
        assert!(!never.restarts(1) && !never.restarts(0));
        let on_failure = RestartPolicy::of(&json!({"restartPolicy": "OnFailure"})).unwrap();
        assert!(on_failure.restarts(1) && !on_failure.restarts(0));
        assert!(RestartPolicy::Always.restarts(0));
        let err = RestartPolicy::of(&json!({"restartPolicy": "Sometimes"})).unwrap_err();
        assert!(err.contains("spec.restartPolicy"), "{err}");

        let pod = |annotation: Option<&str>, hook: bool| {
            let mut proxy = json!({"name": "istio-proxy"});
            if hook {
                proxy["lifecycle"] = json!({"postStart": {"exec": {"command":
                    ["pilot-agent", "wait"]}}});
            }
            let mut p = json!({"metadata": {"annotations": {}},
                "spec": {"containers": [proxy, {"name": "app"}]}});
            if let Some(a) = annotation {
                p["metadata"]["annotations"]["proxy.istio.io/config"] = json!(a);
            }
            p
        };
        assert!(hold_application(&pod(None, true), false));
        assert!(!hold_application(&pod(None, false), false));
        assert!(hold_application(&pod(None, false), true));
        assert!(hold_application(
            &pod(Some("holdApplicationUntilProxyStarts: true"), false),
            false
        ));
        assert!(!hold_application(
            &pod(Some("{\"holdApplicationUntilProxyStarts\": false}"), false),
            true
        ));
    }
}
