//! `kube-inject` over a YAML stream: split it into documents, inject the workloads, pass the
//! rest through, and report per document.
//!
//! The stream is split on `---` lines before any parsing, so a document that is not YAML is
//! reported on its own and the others are still injected. Documents that are not injected
//! (other kinds, opted-out pods) are written back byte for byte; injected ones are serialised
//! with sorted keys, as Istio's Go tooling does.

use api::yaml::{RawDocument, split_documents, syntax_error, to_yaml};
use serde_json::Value;

use crate::config::InjectConfig;
use crate::error::{FieldError, InjectError, Location, Warning};
use crate::pod::{Outcome, inject_pod_template, not_run_by_ama_up};
use crate::workload::{WorkloadMeta, path_string, template_path};

/// The result of injecting a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOutput {
    /// The documents that were good, injected or passed through, joined by `---` lines.
    pub output: String,
    /// One entry per bad document; those documents are not in `output`.
    pub errors: Vec<InjectError>,
    /// Notes on documents that are in `output`.
    pub warnings: Vec<Warning>,
}

/// Injects every workload of a YAML stream. `source` names the stream in messages.
pub fn inject_stream(input: &str, source: &str, config: &InjectConfig) -> StreamOutput {
    let mut out = StreamOutput::default();
    let mut written = Vec::new();
    for doc in split_documents(input) {
        let mut location = Location {
            source: source.to_string(),
            doc: doc.index,
            line: doc.line,
            object: None,
        };
        match inject_document(&doc, config, &mut location, &mut out.warnings) {
            Ok(text) => written.push(text),
            Err(errors) => out
                .errors
                .extend(errors.into_iter().map(|error| InjectError {
                    location: location.clone(),
                    error,
                })),
        }
    }
    out.output = written.join("---\n");
    out
}

/// One document: its output text, or what is wrong with it.
fn inject_document(
    doc: &RawDocument<'_>,
    config: &InjectConfig,
    location: &mut Location,
    warnings: &mut Vec<Warning>,
) -> Result<String, Vec<FieldError>> {
    let mut object: Value =
        serde_saphyr::from_str(doc.text).map_err(|e| vec![yaml_error(&e, doc)])?;
    let Value::Object(map) = &object else {
        return Err(vec![FieldError::new(
            "",
            "not a Kubernetes object: expected a mapping with apiVersion and kind",
        )]);
    };
    let Some(kind) = map.get("kind").and_then(Value::as_str).map(str::to_string) else {
        return Err(vec![FieldError::new(
            "kind",
            "missing: not a Kubernetes object",
        )]);
    };
    let meta = WorkloadMeta::of_object(&object);
    location.object = Some(meta.display());

    let mut notes = Vec::new();
    let injected = if kind == "List" {
        let Some(Value::Array(items)) = object.get_mut("items") else {
            return Err(vec![FieldError::new(
                "items",
                "missing: a List needs items",
            )]);
        };
        let mut any = false;
        let mut errors = Vec::new();
        for (i, item) in items.iter_mut().enumerate() {
            match inject_object(item, Some(i), config, &mut notes) {
                Ok(done) => any |= done,
                Err(e) => errors.extend(e.into_iter().map(|e| e.under(&format!("items[{i}]")))),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        any
    } else {
        inject_object(&mut object, None, config, &mut notes)?
    };
    warnings.extend(notes.into_iter().map(|message| Warning {
        location: location.clone(),
        message,
    }));

    if !injected {
        let mut text = doc.text.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        return Ok(text);
    }
    to_yaml(&object).map_err(|e| {
        vec![FieldError::new(
            "",
            format!("cannot write the injected object: {e}"),
        )]
    })
}

/// Injects one object (not a List; `item` is its index when it is in one) if its kind has a
/// pod template. Returns whether it changed.
fn inject_object(
    object: &mut Value,
    item: Option<usize>,
    config: &InjectConfig,
    notes: &mut Vec<String>,
) -> Result<bool, Vec<FieldError>> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(path) = template_path(&kind) else {
        return Ok(false);
    };
    let meta = WorkloadMeta::of_object(object);
    let prefix = path_string(path);
    let mut template = &mut *object;
    for (depth, key) in path.iter().enumerate() {
        template = match template.get_mut(*key) {
            Some(next) if next.is_object() => next,
            _ => {
                let missing = path_string(&path[..=depth]);
                return Err(vec![FieldError::new(
                    missing,
                    format!("missing: a {kind} needs a pod template at {prefix}"),
                )]);
            }
        };
    }
    let outcome = inject_pod_template(template, &meta, config).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| e.under(&prefix))
            .collect::<Vec<_>>()
    })?;
    match outcome {
        Outcome::Injected => {
            for note in not_run_by_ama_up(template) {
                notes.push(match item {
                    Some(i) => format!("items[{i}] ({}): {prefix}.{note}", meta.display()),
                    None if prefix.is_empty() => note,
                    None => format!("{prefix}.{note}"),
                });
            }
            Ok(true)
        }
        Outcome::Skipped(reason) => {
            if let Some(warning) = reason.warning() {
                notes.push(match item {
                    Some(i) => format!("items[{i}] ({}): {warning}", meta.display()),
                    None => warning.to_string(),
                });
            }
            Ok(false)
        }
    }
}

/// A YAML error of a document, as a field error of the whole document.
fn yaml_error(e: &serde_saphyr::Error, doc: &RawDocument<'_>) -> FieldError {
    FieldError::new("", syntax_error(e, doc))
}
