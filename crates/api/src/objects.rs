//! Typed, validated objects from a YAML stream: the Istio config and Kubernetes objects the
//! control plane's registries hold.
//!
//! [`parse_stream`] splits a stream into documents ([`crate::yaml::split_documents`]), reads
//! each one's `apiVersion` and `kind`, parses it into its type and checks it. Every problem is
//! an [`ObjectError`] that names the file, the document, the object and the field:
//!
//! ```text
//! reviews.yaml:doc 3: VirtualService default/reviews: spec.http[0].route[1].weight: must be 0..100
//! ```
//!
//! A document with a problem is left out; the others are still returned, so one typo does not
//! hide a whole directory of config. Istio kinds reject fields Istio does not define; Kubernetes
//! kinds keep only the fields the mesh reads (see [`crate::k8s`]). Known kinds the mesh does not
//! read (Secret, Telemetry, EnvoyFilter …) come back as [`Object::Other`]; a kind that is not a
//! kind of its API group (`Deploymnet`, `VirtualServiceX`) is an error that suggests the nearest
//! known one, as `kubectl apply` fails on a kind its server does not serve.
//!
//! [`parse`] also returns a warning [`Finding`] for every kind, field and value of a good object
//! that Ama does not implement ([`crate::support`]), so that every command that reads config
//! reports them the same way:
//!
//! ```text
//! x.yaml:doc 1: VirtualService default/reviews: spec.http[1].delegate: not implemented by Ama; this route is dropped
//! ```
//!
//! Security fails closed: an AuthorizationPolicy or RequestAuthentication with a problem is not
//! left out (a DENY meant to apply would silently not), but comes back as an
//! [`Object::UnreadablePolicy`] that denies every request to the workloads it would have
//! bound, with a [`Severity::FailClosed`] finding per problem. Only when even its name or its
//! binding (`selector`, `targetRef(s)`) cannot be read is it left out, and the error says
//! that nothing could be bound.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ConfigError;
use crate::check::{Problem, Problems, dns_name};
use crate::k8s::{
    EndpointSliceBody, LabelSelector, PodSpec, PodStatus, PodTemplate, ServiceSpec, WorkloadKind,
    WorkloadSpec,
};
use crate::mesh::MeshConfig;
use crate::networking::{self, DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService};
use crate::security::{
    self, AuthorizationPolicy, PeerAuthentication, PolicyBinding, PolicyKind, RequestAuthentication,
};
use crate::yaml::{RawDocument, split_documents, syntax_error};

/// The namespace of an object that does not name one, as `kubectl apply` without `-n`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The name of the ConfigMap that holds the MeshConfig (in the control plane's namespace).
pub const MESH_CONFIG_MAP: &str = "istio";
/// The key of the MeshConfig in that ConfigMap.
pub const MESH_CONFIG_KEY: &str = "mesh";

/// Identity and labels of an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// `metadata.name`. Empty only for a Pod that has a `generateName`.
    pub name: String,
    /// `metadata.namespace`, [`DEFAULT_NAMESPACE`] when unset; empty for a Namespace.
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

/// An Istio config object: its version as written, metadata and typed spec.
#[derive(Debug, Clone, PartialEq)]
pub struct IstioConfig<S> {
    /// `apiVersion` as written (`networking.istio.io/v1alpha3` …); all versions share the spec.
    pub api_version: String,
    /// Name, namespace, labels, annotations.
    pub metadata: Metadata,
    /// The spec.
    pub spec: S,
}

/// A Namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Namespace {
    /// Its name and labels (`istio-injection`, `istio.io/rev` …).
    pub metadata: Metadata,
}

/// A Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Name, namespace, labels, annotations.
    pub metadata: Metadata,
    /// Ports, selector, virtual IP.
    pub spec: ServiceSpec,
}

/// A Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    /// Name, namespace, labels, annotations.
    pub metadata: Metadata,
    /// Containers, service account, host network.
    pub spec: PodSpec,
    /// Address and phase, when the object came from a cluster.
    pub status: PodStatus,
}

/// A Deployment, ReplicaSet, StatefulSet or DaemonSet: a pod template and how many pods run it.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Which kind.
    pub kind: WorkloadKind,
    /// Name, namespace, labels, annotations of the workload itself.
    pub metadata: Metadata,
    /// Pods to run: `spec.replicas` (1 when unset); `None` for a DaemonSet (one per node).
    pub replicas: Option<u32>,
    /// Which pods are its own.
    pub selector: LabelSelector,
    /// The pods it runs.
    pub template: PodTemplate,
    /// The governing service of a StatefulSet.
    pub service_name: Option<String>,
}

/// An EndpointSlice.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSlice {
    /// Name, namespace, labels (`kubernetes.io/service-name` names its service).
    pub metadata: Metadata,
    /// Address type, endpoints, ports.
    pub slice: EndpointSliceBody,
}

impl EndpointSlice {
    /// The service the slice belongs to (label `kubernetes.io/service-name`).
    pub fn service_name(&self) -> Option<&str> {
        self.metadata
            .labels
            .get("kubernetes.io/service-name")
            .map(String::as_str)
    }
}

/// A ConfigMap.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigMap {
    /// Name, namespace, labels, annotations.
    pub metadata: Metadata,
    /// `data`.
    pub data: BTreeMap<String, String>,
    /// The MeshConfig, when this is the ConfigMap `istio` and it has the key `mesh` (it is
    /// checked while parsing).
    pub mesh_config: Option<MeshConfig>,
}

/// A `v1` Secret: the certificates and keys gateways serve (`credentialName`). `data` is
/// base64-decoded, with `stringData` laid over it as the API server does. Its `Debug` prints
/// only the keys' names.
#[derive(Clone, PartialEq)]
pub struct Secret {
    /// Name, namespace, labels, annotations.
    pub metadata: Metadata,
    /// `type` (`kubernetes.io/tls`, `Opaque`, ...); empty when unset.
    pub secret_type: String,
    /// The values, decoded, by key.
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("secret_type", &self.secret_type)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// An object of a kind the mesh does not read; kept so the caller can report it.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherObject {
    /// Its `apiVersion`.
    pub api_version: String,
    /// Its `kind`.
    pub kind: String,
    /// Name, namespace, labels, annotations.
    pub metadata: Metadata,
    /// Its `spec` as written (`Null` when it has none), for the kinds read elsewhere
    /// (Telemetry's tracing: [`crate::telemetry`]).
    pub spec: Value,
}

/// An AuthorizationPolicy or RequestAuthentication that Ama cannot read (an unknown field, a bad
/// value, a failed check) but whose name and binding it can: it stands for a DENY of every
/// request to the workloads the policy would have bound, named as the policy, until it is fixed.
#[derive(Debug, Clone, PartialEq)]
pub struct UnreadablePolicy {
    /// Its `apiVersion`.
    pub api_version: String,
    /// Which of the two kinds.
    pub kind: PolicyKind,
    /// Name, namespace, labels, annotations.
    pub metadata: Metadata,
    /// The workloads it binds (`selector`, `targetRef(s)`, or none: its namespace or the mesh).
    pub binding: PolicyBinding,
}

/// One parsed and checked object.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // parsed once, held by the registries: size is not hot
pub enum Object {
    /// `networking.istio.io` VirtualService.
    VirtualService(IstioConfig<VirtualService>),
    /// `networking.istio.io` DestinationRule.
    DestinationRule(IstioConfig<DestinationRule>),
    /// `networking.istio.io` Gateway.
    Gateway(IstioConfig<Gateway>),
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry(IstioConfig<ServiceEntry>),
    /// `networking.istio.io` Sidecar.
    Sidecar(IstioConfig<Sidecar>),
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication(IstioConfig<PeerAuthentication>),
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy(IstioConfig<AuthorizationPolicy>),
    /// `security.istio.io` RequestAuthentication.
    RequestAuthentication(IstioConfig<RequestAuthentication>),
    /// A `security.istio.io` AuthorizationPolicy or RequestAuthentication Ama cannot read,
    /// which fails closed.
    UnreadablePolicy(UnreadablePolicy),
    /// `v1` Namespace.
    Namespace(Namespace),
    /// `v1` Service.
    Service(Service),
    /// `v1` Pod.
    Pod(Pod),
    /// `apps/v1` Deployment, ReplicaSet, StatefulSet or DaemonSet.
    Workload(Workload),
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// `v1` ConfigMap.
    ConfigMap(ConfigMap),
    /// `v1` Secret.
    Secret(Secret),
    /// Any other kind.
    Other(OtherObject),
}

impl Object {
    /// The object's kind, as written in YAML.
    pub fn kind(&self) -> &str {
        match self {
            Object::VirtualService(_) => "VirtualService",
            Object::DestinationRule(_) => "DestinationRule",
            Object::Gateway(_) => "Gateway",
            Object::ServiceEntry(_) => "ServiceEntry",
            Object::Sidecar(_) => "Sidecar",
            Object::PeerAuthentication(_) => "PeerAuthentication",
            Object::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Object::RequestAuthentication(_) => "RequestAuthentication",
            Object::UnreadablePolicy(u) => u.kind.as_str(),
            Object::Namespace(_) => "Namespace",
            Object::Service(_) => "Service",
            Object::Pod(_) => "Pod",
            Object::Workload(w) => w.kind.as_str(),
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Other(o) => &o.kind,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &Metadata {
        match self {
            Object::VirtualService(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::ServiceEntry(o) => &o.metadata,
            Object::Sidecar(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::RequestAuthentication(o) => &o.metadata,
            Object::UnreadablePolicy(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Workload(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Other(o) => &o.metadata,
        }
    }

    /// `Kind namespace/name` (`Kind name` for a Namespace), as messages name an object.
    pub fn display(&self) -> String {
        object_name(self.kind(), self.metadata())
    }
}

fn object_name(kind: &str, m: &Metadata) -> String {
    let name = if m.name.is_empty() {
        "<unnamed>"
    } else {
        &m.name
    };
    if m.namespace.is_empty() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {}/{name}", m.namespace)
    }
}

/// How bad a [`Finding`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The document is left out (malformed, unknown kind or field, bad value).
    Error,
    /// The object is used, but Ama does not implement part of it (or all of it).
    Warning,
    /// The object is used (leaving it out would fail open), but Ama cannot do part of a
    /// security policy as written, or cannot read it at all ([`UnreadablePolicy`]), and denies
    /// more than it says instead. Printed as an error.
    FailClosed,
}

/// Something found in one document of a stream: an error (the document is not among the parsed
/// objects), a warning (it is, and this part of it is not implemented) or a fail-closed error
/// (it is, and Ama denies more than this part says).
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub struct Finding {
    /// The name of the stream (a file name).
    pub source_name: String,
    /// 1-based index of the document among the non-empty ones.
    pub doc: usize,
    /// 1-based line of the document's first line.
    pub line: usize,
    /// `Kind namespace/name` of the object, when it could be read.
    pub object: Option<String>,
    /// Path of the field (`spec.http[0].route[1].weight`); empty for the whole document.
    pub field: String,
    /// What is wrong, or what Ama does instead.
    pub message: String,
    /// Error, warning, or fail-closed error.
    pub severity: Severity,
}

/// A problem with one document of a stream ([`Finding`] with [`Severity::Error`]).
pub type ObjectError = Finding;

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:doc {}: ", self.source_name, self.doc)?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl Finding {
    /// Whether the document was left out.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The finding as a person reads it on a terminal: `error: …` or `Warning: …` (kubectl's
    /// spelling of both); a fail-closed one is an error too (its object is used all the same).
    pub fn for_terminal(&self) -> String {
        match self.severity {
            Severity::Error | Severity::FailClosed => format!("error: {self}"),
            Severity::Warning => format!("Warning: {self}"),
        }
    }
}

/// The objects of a stream and everything found in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// The good objects, in stream order (the items of a `List` in place of the list).
    pub objects: Vec<Object>,
    /// Errors (documents left out), warnings (what Ama does not implement of the objects) and
    /// fail-closed errors (what Ama enforces more strictly than written), in stream order.
    pub findings: Vec<Finding>,
}

impl Parsed {
    /// The errors among the findings.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.is_error())
    }

    /// The findings of the objects kept (warnings and fail-closed errors).
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| !f.is_error())
    }
}

/// Parses and checks every document of a YAML stream; only the errors. See [`parse`].
pub fn parse_stream(text: &str, source_name: &str) -> (Vec<Object>, Vec<ObjectError>) {
    let parsed = parse(text, source_name);
    let errors = parsed
        .findings
        .into_iter()
        .filter(Finding::is_error)
        .collect();
    (parsed.objects, errors)
}

/// Parses and checks every document of a YAML stream. `source_name` names the stream in
/// findings. Objects come back in stream order (the items of a `List` in place of the list),
/// with a warning for everything Ama does not implement of them.
pub fn parse(text: &str, source_name: &str) -> Parsed {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for doc in split_documents(text) {
        let finding = |severity: Severity, object: Option<String>, p: Problem| Finding {
            source_name: source_name.to_string(),
            doc: doc.index,
            line: doc.line,
            object,
            field: p.field,
            message: p.message,
            severity,
        };
        let error = |object, p| finding(Severity::Error, object, p);
        let value = match parse_document(&doc) {
            Ok(v) => v,
            Err(message) => {
                errors.push(error(
                    None,
                    Problem {
                        field: String::new(),
                        message,
                    },
                ));
                continue;
            }
        };
        let is_list = value.get("kind").and_then(Value::as_str) == Some("List");
        let items = match (is_list, value) {
            (true, mut list) => match list.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("items[{i}]"), v))
                    .collect(),
                _ => {
                    errors.push(error(
                        Some("List".to_string()),
                        Problem {
                            field: "items".into(),
                            message: "missing: a List needs items".into(),
                        },
                    ));
                    continue;
                }
            },
            (false, v) => vec![(String::new(), v)],
        };
        for (prefix, value) in items {
            let (name, problems) = match parse_object(&value) {
                Ok(object) => {
                    let unimplemented = crate::support::not_implemented(&object, &value);
                    let name = object.display();
                    objects.push(object);
                    (Some(name), unimplemented)
                }
                Err((name, problems)) => match unreadable_policy(&value, problems) {
                    (Some(object), problems) => {
                        let mut problems = problems;
                        problems.extend(crate::support::not_implemented(&object, &value));
                        objects.push(object);
                        (name, problems)
                    }
                    (None, problems) => (name, problems),
                },
            };
            errors.extend(problems.into_iter().map(|(severity, mut p)| {
                p.field = join(&prefix, &p.field);
                finding(severity, name.clone(), p)
            }));
        }
    }
    Parsed {
        objects,
        findings: errors,
    }
}

/// Parses one document's YAML, without nulls (as the API server drops them).
fn parse_document(doc: &RawDocument<'_>) -> Result<Value, String> {
    let mut value: Value = serde_saphyr::from_str(doc.text).map_err(|e| syntax_error(&e, doc))?;
    if !value.is_object() {
        return Err("not a Kubernetes object: expected a mapping with apiVersion and kind".into());
    }
    strip_nulls(&mut value);
    Ok(value)
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn join(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{field}"),
    }
}

/// What failed: the object's display name if known, and the problems.
type Failure = (Option<String>, Vec<Problem>);

fn fail(field: &str, message: impl Into<String>) -> Failure {
    let mut p = Problems::default();
    p.add(field, message);
    (None, p.into_vec())
}

/// Parses one object (not a List).
fn parse_object(value: &Value) -> Result<Object, Failure> {
    let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default();
    let api_version = text("apiVersion").to_string();
    let kind = text("kind").to_string();
    if kind.is_empty() {
        return Err(fail("kind", "missing: not a Kubernetes object"));
    }
    if api_version.is_empty() {
        return Err(fail(
            "apiVersion",
            format!("missing: a {kind} needs an apiVersion"),
        ));
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let cluster_scoped = kind == "Namespace" && group.is_empty();
    let mut problems = Problems::default();
    let metadata = metadata(value, cluster_scoped, &kind, &mut problems);
    let name = object_name(&kind, &metadata);

    let object = match (group, kind.as_str()) {
        (
            networking::GROUP,
            "VirtualService" | "DestinationRule" | "Gateway" | "ServiceEntry" | "Sidecar",
        ) => {
            served(
                &mut problems,
                &kind,
                &api_version,
                version,
                &networking::VERSIONS,
            );
            istio_kind(&kind, value, &api_version, metadata, &mut problems)
        }
        (
            security::GROUP,
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication",
        ) => {
            served(
                &mut problems,
                &kind,
                &api_version,
                version,
                &security::VERSIONS,
            );
            istio_kind(&kind, value, &api_version, metadata, &mut problems)
        }
        (_, "Namespace" | "Service" | "Pod" | "ConfigMap" | "Secret") => {
            served(&mut problems, &kind, &api_version, &api_version, &["v1"]);
            core_kind(&kind, value, metadata, &mut problems)
        }
        (_, "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            served(
                &mut problems,
                &kind,
                &api_version,
                &api_version,
                &["apps/v1"],
            );
            workload(&kind, value, metadata, &mut problems)
        }
        (_, "EndpointSlice") => {
            served(
                &mut problems,
                &kind,
                &api_version,
                &api_version,
                &["discovery.k8s.io/v1"],
            );
            let slice: Option<EndpointSliceBody> = typed(value, "", &mut problems);
            slice.map(|slice| {
                slice.validate("", &mut problems);
                Object::EndpointSlice(EndpointSlice { metadata, slice })
            })
        }
        _ => match crate::kinds::check(group, &kind) {
            Ok(()) => {
                // Istio's validation of a Telemetry (known metrics, UPSERT with a value...),
                // as its webhook refuses the object.
                let spec = value.get("spec").cloned().unwrap_or(Value::Null);
                if kind == "Telemetry"
                    && group == "telemetry.istio.io"
                    && let Err(e) = crate::telemetry::TelemetrySpec::from_value(&spec)
                {
                    match e {
                        crate::error::ConfigError::Field { field, message } => {
                            problems.add(&field, message)
                        }
                        other => problems.add("spec", other.to_string()),
                    }
                }
                Some(Object::Other(OtherObject {
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                    metadata,
                    spec,
                }))
            }
            Err(message) => {
                problems.add("kind", message);
                None
            }
        },
    };
    match object {
        Some(object) if problems.is_empty() => Ok(object),
        _ => Err((Some(name), problems.into_vec())),
    }
}

/// What the problems of a document that failed [`parse_object`] mean. A security policy
/// ([`PolicyKind`]) fails closed: when its name, namespace and binding can still be read, it
/// becomes an [`UnreadablePolicy`] and each problem a [`Severity::FailClosed`] saying so;
/// otherwise each problem says that nothing could be bound. Any other document is left out,
/// its problems errors.
fn unreadable_policy(
    value: &Value,
    problems: Vec<Problem>,
) -> (Option<Object>, Vec<(Severity, Problem)>) {
    let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default();
    let api_version = text("apiVersion");
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let Some(kind) = PolicyKind::of(group, text("kind")) else {
        let errors = problems.into_iter().map(|p| (Severity::Error, p));
        return (None, errors.collect());
    };
    let mut meta_problems = Problems::default();
    let metadata = metadata(value, false, kind.as_str(), &mut meta_problems);
    // Labels and annotations bind nothing: only the name and the namespace must be readable.
    let named = !meta_problems.into_vec().iter().any(|p| {
        matches!(
            p.field.as_str(),
            "metadata" | "metadata.name" | "metadata.namespace"
        )
    });
    // The binding alone, every other field of the spec ignored; its own problems are among
    // `problems` unless the typed parse stopped at an earlier one.
    let mut binding_problems = Problems::default();
    let binding = match value.get("spec") {
        // A struct deserialises from a sequence too: only a mapping is a spec.
        Some(spec) if !spec.is_object() => None,
        _ => typed::<PolicyBinding>(value, "spec", &mut binding_problems),
    };
    if let Some(b) = &binding {
        b.validate("spec", &mut binding_problems);
    }
    let binding = binding.filter(|_| named && binding_problems.is_empty());
    let mut problems = problems;
    if binding.is_none() {
        for b in binding_problems.into_vec() {
            if !problems.iter().any(|p| p.field == b.field) {
                problems.push(b);
            }
        }
    }
    let (object, severity, consequence) = match binding {
        Some(binding) => (
            Some(Object::UnreadablePolicy(UnreadablePolicy {
                api_version: api_version.to_string(),
                kind,
                metadata,
                binding,
            })),
            Severity::FailClosed,
            kind.fail_closed(),
        ),
        None => (
            None,
            Severity::Error,
            "Ama cannot read this policy, nor which workloads it selects: nothing could be \
             bound to deny in its place; it is left out",
        ),
    };
    let problems = problems.into_iter().map(|mut p| {
        p.message = format!("{}: {consequence}", p.message);
        (severity, p)
    });
    (object, problems.collect())
}

/// Records an error unless `version` is one of `served` for this kind.
fn served(p: &mut Problems, kind: &str, api_version: &str, version: &str, served: &[&str]) {
    if !served.contains(&version) {
        let expected = if served.len() == 1 {
            served[0].to_string()
        } else {
            let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
            served
                .iter()
                .map(|v| format!("{group}/{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        p.add(
            "apiVersion",
            format!("\"{api_version}\" does not serve {kind} (expected {expected})"),
        );
    }
}

/// Reads and checks `metadata`.
fn metadata(value: &Value, cluster_scoped: bool, kind: &str, p: &mut Problems) -> Metadata {
    let meta = value.get("metadata");
    let text = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if let Some(m) = meta
        && !m.is_object()
    {
        p.add("metadata", "must be a mapping");
    }
    let name = text("name");
    let generated = !text("generateName").is_empty() && kind == "Pod";
    if name.is_empty() && !generated {
        p.add("metadata.name", format!("missing: a {kind} needs a name"));
    } else if !name.is_empty()
        && let Err(m) = dns_name(&name, false)
    {
        p.add("metadata.name", m);
    }
    let namespace = match text("namespace") {
        _ if cluster_scoped => String::new(),
        ns if ns.is_empty() => DEFAULT_NAMESPACE.to_string(),
        ns => {
            if let Err(m) = dns_name(&ns, false).and_then(|()| {
                if ns.contains('.') {
                    Err(format!("\"{ns}\" is not a namespace name (no dots)"))
                } else {
                    Ok(())
                }
            }) {
                p.add("metadata.namespace", m);
            }
            ns
        }
    };
    let mut string_map = |field: &str| {
        let mut out = BTreeMap::new();
        match meta.and_then(|m| m.get(field)) {
            None => {}
            Some(Value::Object(map)) => {
                for (k, v) in map {
                    match v {
                        Value::String(s) => {
                            out.insert(k.clone(), s.clone());
                        }
                        other => p.add(
                            format!("metadata.{field}[\"{k}\"]"),
                            format!("{other} is not a string (quote it)"),
                        ),
                    }
                }
            }
            Some(_) => p.add(format!("metadata.{field}"), "must be a mapping"),
        }
        out
    };
    let labels = string_map("labels");
    let annotations = string_map("annotations");
    for (k, v) in &labels {
        if let Err(m) = crate::check::label_key(k).and_then(|()| crate::check::label_value(v)) {
            p.add(format!("metadata.labels[\"{k}\"]"), m);
        }
    }
    Metadata {
        name,
        namespace,
        labels,
        annotations,
    }
}

/// Deserialises `value` at `field` (the whole value when empty) into `T`, recording a type or
/// unknown-field error with its full path.
fn typed<T: DeserializeOwned + Default>(value: &Value, field: &str, p: &mut Problems) -> Option<T> {
    let part = if field.is_empty() {
        value
    } else {
        match value.get(field) {
            Some(v) => v,
            None => return Some(T::default()),
        }
    };
    match serde_path_to_error::deserialize::<_, T>(part) {
        Ok(t) => Some(t),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            p.add(join(field, &path), serde_message(e.inner()));
            None
        }
    }
}

/// serde_json's message without its location (there is none in a `Value`) and with Istio's
/// spelling of "unknown field".
fn serde_message(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.split_once(", expected one of") {
        Some((unknown, expected)) if unknown.starts_with("unknown field") => {
            format!("{unknown} (known fields:{})", expected.replace('`', ""))
        }
        _ => message,
    }
}

/// Rejects top-level fields an Istio object cannot have.
fn istio_top_level(value: &Value, p: &mut Problems) {
    if let Value::Object(map) = value {
        for key in map.keys() {
            if !matches!(
                key.as_str(),
                "apiVersion" | "kind" | "metadata" | "spec" | "status"
            ) {
                p.add(key.clone(), "unknown field (an Istio object has apiVersion, kind, metadata, spec and status)");
            }
        }
    }
}

fn istio_kind(
    kind: &str,
    value: &Value,
    api_version: &str,
    metadata: Metadata,
    p: &mut Problems,
) -> Option<Object> {
    istio_top_level(value, p);
    fn config<S: DeserializeOwned + Default>(
        value: &Value,
        api_version: &str,
        metadata: Metadata,
        p: &mut Problems,
        validate: impl FnOnce(&S, &str, &mut Problems),
    ) -> Option<IstioConfig<S>> {
        let spec: S = typed(value, "spec", p)?;
        validate(&spec, "spec", p);
        Some(IstioConfig {
            api_version: api_version.to_string(),
            metadata,
            spec,
        })
    }
    Some(match kind {
        "VirtualService" => Object::VirtualService(config(
            value,
            api_version,
            metadata,
            p,
            VirtualService::validate,
        )?),
        "DestinationRule" => Object::DestinationRule(config(
            value,
            api_version,
            metadata,
            p,
            DestinationRule::validate,
        )?),
        "Gateway" => Object::Gateway(config(value, api_version, metadata, p, Gateway::validate)?),
        "ServiceEntry" => Object::ServiceEntry(config(
            value,
            api_version,
            metadata,
            p,
            ServiceEntry::validate,
        )?),
        "Sidecar" => Object::Sidecar(config(value, api_version, metadata, p, Sidecar::validate)?),
        "PeerAuthentication" => Object::PeerAuthentication(config(
            value,
            api_version,
            metadata,
            p,
            PeerAuthentication::validate,
        )?),
        "AuthorizationPolicy" => Object::AuthorizationPolicy(config(
            value,
            api_version,
            metadata,
            p,
            AuthorizationPolicy::validate,
        )?),
        "RequestAuthentication" => Object::RequestAuthentication(config(
            value,
            api_version,
            metadata,
            p,
            RequestAuthentication::validate,
        )?),
        _ => return None,
    })
}

fn core_kind(kind: &str, value: &Value, metadata: Metadata, p: &mut Problems) -> Option<Object> {
    Some(match kind {
        "Namespace" => Object::Namespace(Namespace { metadata }),
        "Service" => {
            let spec: ServiceSpec = typed(value, "spec", p)?;
            spec.validate("spec", p);
            Object::Service(Service { metadata, spec })
        }
        "Pod" => {
            let spec: PodSpec = typed(value, "spec", p)?;
            let status: PodStatus = typed(value, "status", p)?;
            spec.validate("spec", p);
            Object::Pod(Pod {
                metadata,
                spec,
                status,
            })
        }
        "ConfigMap" => {
            let data: BTreeMap<String, String> = typed(value, "data", p)?;
            let mut mesh_config = None;
            if metadata.name == MESH_CONFIG_MAP
                && let Some(text) = data.get(MESH_CONFIG_KEY)
            {
                match MeshConfig::from_yaml(text) {
                    Ok(mesh) => mesh_config = Some(mesh),
                    Err(ConfigError::Field { field, message }) => {
                        p.add(join("data.mesh", &field), message)
                    }
                    Err(e @ ConfigError::Yaml { .. }) => p.add("data.mesh", e.to_string()),
                }
            }
            Object::ConfigMap(ConfigMap {
                metadata,
                data,
                mesh_config,
            })
        }
        "Secret" => secret(value, metadata, p)?,
        _ => return None,
    })
}

/// A Secret: `data` decoded from base64 (a value that is not names its key), `stringData`
/// over it.
fn secret(value: &Value, metadata: Metadata, p: &mut Problems) -> Option<Object> {
    use base64::Engine as _;
    let encoded: BTreeMap<String, String> = typed(value, "data", p)?;
    let plain: BTreeMap<String, String> = typed(value, "stringData", p)?;
    let secret_type: Option<String> = typed(value, "type", p)?;
    let mut data = BTreeMap::new();
    for (k, v) in encoded {
        match base64::engine::general_purpose::STANDARD.decode(v.trim()) {
            Ok(bytes) => {
                data.insert(k, bytes);
            }
            Err(e) => p.add(format!("data.{k}"), format!("not base64: {e}")),
        }
    }
    for (k, v) in plain {
        data.insert(k, v.into_bytes());
    }
    Some(Object::Secret(Secret {
        metadata,
        secret_type: secret_type.unwrap_or_default(),
        data,
    }))
}

fn workload(kind: &str, value: &Value, metadata: Metadata, p: &mut Problems) -> Option<Object> {
    let kind = match kind {
        "Deployment" => WorkloadKind::Deployment,
        "ReplicaSet" => WorkloadKind::ReplicaSet,
        "StatefulSet" => WorkloadKind::StatefulSet,
        "DaemonSet" => WorkloadKind::DaemonSet,
        _ => return None,
    };
    let spec: WorkloadSpec = typed(value, "spec", p)?;
    spec.validate(kind, "spec", p);
    Some(Object::Workload(Workload {
        kind,
        replicas: spec.replica_count(kind),
        metadata,
        selector: spec.selector.unwrap_or_default(),
        template: spec.template?,
        service_name: spec.service_name,
    }))
}

#[cfg(test)]
#[path = "objects_tests.rs"]
mod tests;
