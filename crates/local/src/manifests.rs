//! The objects a mesh is made of: the YAML of `ama up DIR` and of every `ama apply -f`, each
//! document kept twice, typed ([`api::objects::Object`], checked field by field) and raw (the
//! JSON a Kubernetes API server would store), because a pod must run with fields the typed
//! model does not carry (`securityContext`, probes) and the objects handed to the control plane
//! are written back as the user wrote them.
//!
//! Documents are identified as `kubectl` identifies them: kind, namespace, name. A later one
//! replaces an earlier one (a file applied later wins), as `kubectl apply` does.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use api::objects::{Finding, Object, parse_stream};
use api::yaml::split_documents;
use serde_json::Value;

use crate::Error;

/// Labels or annotations.
pub type Labels = BTreeMap<String, String>;

/// One object, typed and raw.
#[derive(Debug, Clone)]
pub struct Document {
    /// Where it came from (`DIR/httpbin.yaml`).
    pub source: String,
    /// The JSON of the object, with `metadata.namespace` filled in for namespaced kinds.
    pub raw: Value,
    /// The checked object.
    pub object: Object,
}

impl Document {
    /// `(kind, namespace, name)`: what identifies the object.
    pub fn key(&self) -> (String, String, String) {
        let m = self.object.metadata();
        (
            self.object.kind().to_string(),
            m.namespace.clone(),
            m.name.clone(),
        )
    }

    /// The object as `kubectl apply` prints it: `deployment.apps/httpbin-deployment`.
    pub fn resource_name(&self) -> String {
        let group = self
            .raw
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.rsplit_once('/'))
            .map(|(group, _)| group)
            .unwrap_or("");
        let kind = self.object.kind().to_ascii_lowercase();
        let name = &self.object.metadata().name;
        if group.is_empty() {
            format!("{kind}/{name}")
        } else {
            format!("{kind}.{group}/{name}")
        }
    }
}

/// The objects of a mesh, in the order they were given; one per key.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    /// The documents.
    pub docs: Vec<Document>,
    /// What Ama does not implement of them ([`api::support`]), as [`Manifests::read_dir`]
    /// found it.
    pub warnings: Vec<Finding>,
}

impl Manifests {
    /// Reads every `*.yaml`, `*.yml` and `*.json` file under `dir` (recursively, in name order,
    /// skipping names that start with '.'). Any malformed document (or unknown kind) fails the
    /// whole read, with every problem listed: `ama up` does not start a mesh that lacks a
    /// document its user wrote. What Ama does not implement is kept in `warnings`.
    pub fn read_dir(dir: &Path) -> Result<Manifests, Error> {
        let mut files = Vec::new();
        collect_files(dir, &mut files)?;
        if files.is_empty() {
            return Err(Error::NoManifests {
                dir: dir.to_path_buf(),
            });
        }
        let mut manifests = Manifests::default();
        let mut errors = Vec::new();
        for file in files {
            let text = fs::read_to_string(&file).map_err(Error::io(&file))?;
            let (docs, findings) = parse(&text, &file.display().to_string());
            manifests.merge(docs);
            for f in findings {
                if f.is_error() {
                    errors.push(f);
                } else {
                    manifests.warnings.push(f);
                }
            }
        }
        if errors.is_empty() {
            Ok(manifests)
        } else {
            Err(Error::Objects { errors })
        }
    }

    /// Adds `docs`, each replacing an earlier document with the same key.
    pub fn merge(&mut self, docs: Vec<Document>) {
        for doc in docs {
            let key = doc.key();
            match self.docs.iter_mut().find(|d| d.key() == key) {
                Some(old) => *old = doc,
                None => self.docs.push(doc),
            }
        }
    }

    /// Removes the object `kind` (any case) `namespace/name`, as `ama delete` does; a Namespace
    /// takes every object in it along, as the API server's namespace controller does. Says
    /// whether there was such an object.
    pub fn remove(&mut self, kind: &str, namespace: &str, name: &str) -> bool {
        let before = self.docs.len();
        let is_namespace = kind.eq_ignore_ascii_case("Namespace");
        self.docs.retain(|d| {
            let (k, ns, n) = d.key();
            let this = k.eq_ignore_ascii_case(kind) && ns == namespace && n == name;
            !(this || (is_namespace && ns == name))
        });
        self.docs.len() != before
    }

    /// The labels of every namespace: declared ones with their labels; `default` and every
    /// namespace an object names, without labels, as an API server would have them.
    pub fn namespaces(&self) -> BTreeMap<String, Labels> {
        let mut out = BTreeMap::from([("default".to_string(), Labels::new())]);
        for d in &self.docs {
            match &d.object {
                Object::Namespace(ns) => {
                    out.insert(ns.metadata.name.clone(), ns.metadata.labels.clone());
                }
                o => {
                    let ns = &o.metadata().namespace;
                    if !ns.is_empty() {
                        out.entry(ns.clone()).or_default();
                    }
                }
            }
        }
        out
    }

    /// The mesh-wide settings: the ConfigMap `istio` in `istio-system`, key `mesh`.
    pub fn mesh(&self) -> MeshSettings {
        let mut settings = MeshSettings::default();
        for d in &self.docs {
            let Object::ConfigMap(cm) = &d.object else {
                continue;
            };
            if cm.metadata.namespace != control::model::ROOT_NAMESPACE
                || cm.metadata.name != api::objects::MESH_CONFIG_MAP
            {
                continue;
            }
            if let Some(mesh) = &cm.mesh_config {
                settings.inject.mesh = mesh.clone();
            }
            // The access log settings are not in api::MeshConfig yet: read them from the text.
            if let Some(text) = cm.data.get("mesh")
                && let Ok(value) = serde_saphyr::from_str::<Value>(text)
            {
                let field = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_string);
                settings.access_log_file = field("accessLogFile").unwrap_or_default();
                settings.access_log_encoding =
                    field("accessLogEncoding").unwrap_or_else(|| "TEXT".to_string());
                settings.hold_application = value
                    .pointer("/defaultConfig/holdApplicationUntilProxyStarts")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
            }
        }
        settings
    }
}

/// Mesh-wide settings that decide how pods are injected and what their proxies log.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// MeshConfig and values, as the injector has them.
    pub inject: inject::InjectConfig,
    /// MeshConfig `accessLogFile` (`/dev/stdout`; empty: no access log).
    pub access_log_file: String,
    /// MeshConfig `accessLogEncoding` (`JSON` or `TEXT`).
    pub access_log_encoding: String,
    /// MeshConfig `defaultConfig.holdApplicationUntilProxyStarts`.
    pub hold_application: bool,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            inject: inject::InjectConfig::default(),
            access_log_file: String::new(),
            access_log_encoding: "TEXT".to_string(),
            hold_application: false,
        }
    }
}

/// Parses a YAML stream into its good documents, and every finding with file, document, object
/// and field: the errors (those documents are left out, as `kubectl apply` leaves out the
/// documents it rejects) and what Ama does not implement of the others.
pub fn parse(text: &str, source: &str) -> (Vec<Document>, Vec<Finding>) {
    // Without a namespace to put objects in, nothing can disagree with it.
    parse_in(text, source, None).unwrap_or_default()
}

/// [`parse`], with the namespaced objects that name none put in `namespace` (`kubectl apply
/// -n`); one that names another is an error, as kubectl refuses it.
pub fn parse_in(
    text: &str,
    source: &str,
    namespace: Option<&str>,
) -> Result<(Vec<Document>, Vec<Finding>), Error> {
    let findings = api::objects::parse(text, source).findings;
    let mut docs = Vec::new();
    for doc in split_documents(text) {
        // parse_stream accepted every document: each is a mapping (or a List of them).
        let Ok(value) = serde_saphyr::from_str::<Value>(doc.text) else {
            continue;
        };
        let items = match value.get("kind").and_then(Value::as_str) {
            Some("List") => value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            _ => vec![value],
        };
        for mut raw in items {
            strip_nulls(&mut raw);
            if let Some(namespace) = namespace {
                put_in_namespace(&mut raw, namespace, source)?;
            }
            let (objects, _) = parse_stream(&raw.to_string(), source);
            let Some(object) = objects.into_iter().next() else {
                continue;
            };
            let namespace = object.metadata().namespace.clone();
            if !namespace.is_empty()
                && let Some(Value::Object(m)) = raw.get_mut("metadata")
            {
                m.insert("namespace".into(), Value::String(namespace));
            }
            docs.push(Document {
                source: source.to_string(),
                raw,
                object,
            });
        }
    }
    Ok((docs, findings))
}

/// `text` with the namespaced objects that name none put in `namespace` (`kubectl apply -n`),
/// each changed document written back as JSON (YAML's subset) in its place, so that what is
/// reported of the stream (document numbers, objects' namespaces) is what is applied. A
/// document that is no YAML stays as written, for the parser to report; an object that names
/// another namespace is an error, as kubectl refuses it.
pub fn in_namespace(text: &str, source: &str, namespace: &str) -> Result<String, Error> {
    let mut out = String::with_capacity(text.len());
    for doc in split_documents(text) {
        let mut kept = doc.text.to_string();
        if let Ok(mut value) = serde_saphyr::from_str::<Value>(doc.text) {
            let before = value.clone();
            match value.get_mut("items").and_then(Value::as_array_mut) {
                Some(items) if value_kind(&before) == Some("List") => {
                    for item in items {
                        put_in_namespace(item, namespace, source)?;
                    }
                }
                _ => put_in_namespace(&mut value, namespace, source)?,
            }
            if value != before {
                kept = value.to_string();
            }
        }
        out.push_str("---\n");
        out.push_str(&kept);
        if !kept.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

fn value_kind(value: &Value) -> Option<&str> {
    value.get("kind").and_then(Value::as_str)
}

/// Puts `raw` in `namespace` when it is a namespaced object without one (a Namespace is the one
/// cluster-scoped kind Ama reads).
fn put_in_namespace(raw: &mut Value, namespace: &str, source: &str) -> Result<(), Error> {
    let kind = raw
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let core = raw
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| !v.contains('/'));
    if kind == "Namespace" && core {
        return Ok(());
    }
    let Some(Value::Object(metadata)) = raw.get_mut("metadata") else {
        // No metadata: the object is reported (and left out) by the parser.
        return Ok(());
    };
    match metadata.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            metadata.insert("namespace".into(), Value::String(namespace.to_string()));
            Ok(())
        }
        Some(own) if own == namespace => Ok(()),
        Some(own) => Err(Error::NamespaceMismatch {
            file: source.to_string(),
            object: format!(
                "{kind} {}",
                metadata
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            ),
            own: own.to_string(),
            given: namespace.to_string(),
        }),
    }
}

/// [`parse`] for tests of this crate: the documents, after checking that none was rejected.
#[cfg(test)]
pub(crate) fn parse_ok(text: &str, source: &str) -> Vec<Document> {
    let (docs, findings) = parse(text, source);
    let errors: Vec<&Finding> = findings.iter().filter(|f| f.is_error()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    docs
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

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let meta = fs::metadata(dir).map_err(Error::io(dir))?;
    if meta.is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    istio-injection: enabled
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin-deployment
spec:
  replicas: 2
  selector: {matchLabels: {app: httpbin}}
  template:
    metadata: {labels: {app: httpbin}}
    spec:
      containers:
      - name: httpbin
        image: kennethreitz/httpbin:latest
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    accessLogFile: /dev/stdout
    accessLogEncoding: JSON
";

    #[test]
    fn apply_n_puts_objects_without_a_namespace_there_and_refuses_another() {
        let yaml = "
apiVersion: v1
kind: Namespace
metadata: {name: foo}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec: {ports: [{port: 8000}]}
---
apiVersion: v1
kind: Service
metadata: {name: sleep, namespace: foo}
spec: {ports: [{port: 80}]}
";
        let (docs, _) = parse_in(yaml, "t.yaml", Some("foo")).unwrap();
        let namespaces: Vec<&str> = docs
            .iter()
            .map(|d| d.object.metadata().namespace.as_str())
            .collect();
        assert_eq!(namespaces, ["", "foo", "foo"]);
        assert_eq!(docs[1].raw["metadata"]["namespace"], "foo");
        let err = parse_in(yaml, "t.yaml", Some("bar"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "t.yaml: Service sleep: the namespace from the provided object \"foo\" does not match \
             the namespace \"bar\". You must pass '--namespace=foo' to perform this operation."
        );
    }

    #[test]
    fn in_namespace_names_objects_as_they_are_applied() {
        let yaml = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
spec:
  action: ALLOW
---
apiVersion: v1
kind: Namespace
metadata: {name: foo}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: sleep}}
";
        let text = in_namespace(yaml, "t.yaml", "foo").unwrap();
        let parsed = api::objects::parse(&text, "t.yaml");
        let named: Vec<String> = parsed
            .objects
            .iter()
            .map(|o| {
                format!(
                    "{} {}/{}",
                    o.kind(),
                    o.metadata().namespace,
                    o.metadata().name
                )
            })
            .collect();
        assert_eq!(
            named,
            [
                "AuthorizationPolicy foo/allow-nothing",
                "Namespace /foo",
                "ServiceAccount foo/sleep"
            ]
        );
        assert!(
            in_namespace(yaml, "t.yaml", "bar").is_ok(),
            "nothing names another"
        );
        let other = yaml.replace("{name: sleep}", "{name: sleep, namespace: bar}");
        assert!(in_namespace(&other, "t.yaml", "foo").is_err());
    }

    #[test]
    fn typed_and_raw_with_namespace_filled_in() {
        let (docs, findings) = parse(SEED, "seed.yaml");
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1].raw["metadata"]["namespace"], "default");
        assert_eq!(
            docs[1].resource_name(),
            "deployment.apps/httpbin-deployment"
        );
        assert_eq!(docs[0].resource_name(), "namespace/default");
        let mut m = Manifests::default();
        m.merge(docs);
        assert_eq!(m.namespaces()["default"]["istio-injection"], "enabled");
        let mesh = m.mesh();
        assert_eq!(mesh.access_log_file, "/dev/stdout");
        assert_eq!(mesh.access_log_encoding, "JSON");
    }

    #[test]
    fn later_documents_replace_earlier_ones() {
        let mut m = Manifests::default();
        m.merge(parse(SEED, "a.yaml").0);
        let again = SEED.replace("replicas: 2", "replicas: 3");
        m.merge(parse(&again, "b.yaml").0);
        assert_eq!(m.docs.len(), 3);
        assert_eq!(m.docs[1].raw["spec"]["replicas"], 3);
        assert_eq!(m.docs[1].source, "b.yaml");
    }

    #[test]
    fn every_problem_is_reported() {
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 99999}]}\n---\n: :\n";
        let (docs, errors) = parse(bad, "bad.yaml");
        assert!(docs.is_empty());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].to_string().starts_with("bad.yaml:doc 1"),
            "{}",
            errors[0]
        );
    }
}
