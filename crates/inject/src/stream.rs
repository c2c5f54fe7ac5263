//! `kube-inject` over a YAML stream: split it into documents, inject the workloads, pass the
//! rest through, and report per document.
//!
//! The stream is split on `---` lines before any parsing, so a document that is not YAML is
//! reported on its own and the others are still injected. Documents that are not injected
//! (other kinds, opted-out pods) are written back byte for byte; injected ones are serialised
//! with sorted keys, as Istio's Go tooling does.

use serde_json::Value;

use crate::config::InjectConfig;
use crate::error::{FieldError, InjectError, Location, Warning};
use crate::pod::{Outcome, inject_pod_template};
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

/// One document of a stream, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDocument<'a> {
    /// 1-based index among the non-empty documents.
    pub index: usize,
    /// 1-based line of its first line in the stream.
    pub line: usize,
    /// Its text, without the separator.
    pub text: &'a str,
}

/// Splits a YAML stream on its document separators (`---` at the start of a line, alone or
/// followed by a space or a comment) and end markers (`...`). Documents holding only blank lines
/// and comments are dropped.
pub fn split_documents(input: &str) -> Vec<RawDocument<'_>> {
    let mut docs = Vec::new();
    let mut start = 0; // byte offset of the current document
    let mut start_line = 1;
    let mut offset = 0;
    let mut push = |start: usize, end: usize, line: usize| {
        let text = &input[start..end];
        let has_content = text.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && !t.starts_with('%')
        });
        if has_content {
            docs.push(RawDocument {
                index: 0,
                line,
                text,
            });
        }
    };
    for (n, line) in input.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_separator = bare == "---"
            || bare == "..."
            || bare.strip_prefix("---").is_some_and(|rest| {
                rest.starts_with([' ', '\t']) && rest.trim_start().starts_with('#')
            })
            || bare.trim_end() == "---";
        if is_separator {
            push(start, offset, start_line);
            start = offset + line.len();
            start_line = n + 2;
        }
        offset += line.len();
    }
    push(start, input.len(), start_line);
    for (i, d) in docs.iter_mut().enumerate() {
        d.index = i + 1;
    }
    // Report the first line with content, not the blank lines before it.
    for d in &mut docs {
        let skipped = d.text.lines().take_while(|l| l.trim().is_empty()).count();
        d.line += skipped;
    }
    docs
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
        Outcome::Injected => Ok(true),
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

/// A YAML error with its line counted from the start of the stream.
fn yaml_error(e: &serde_saphyr::Error, doc: &RawDocument<'_>) -> FieldError {
    let message = e.without_snippet().to_string();
    let message = match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {}, column {}", loc.line(), loc.column());
            let bare = message.strip_suffix(&suffix).unwrap_or(&message);
            // `doc.line` is the first non-blank line; the parser counts from the document start.
            let blank = doc.text.lines().take_while(|l| l.trim().is_empty()).count() as u64;
            let line = (doc.line as u64 + loc.line()).saturating_sub(1 + blank);
            format!("line {line} column {}: {bare}", loc.column())
        }
        None => message,
    };
    FieldError::new("", format!("not YAML: {message}"))
}

/// Serialises an object as YAML the way Kubernetes tools print it: keys sorted, block style,
/// multi-line strings as literal blocks, no line folding.
pub fn to_yaml(value: &Value) -> Result<String, serde_saphyr::SerializeError> {
    let options = serde_saphyr::ser_options! {
        folded_wrap_chars: usize::MAX,
        min_fold_chars: usize::MAX,
    };
    serde_saphyr::to_string_with_options(value, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_separator_lines_only() {
        let docs = split_documents(
            "---\na: 1\n---\n\n# only a comment\n--- # note\nb: |\n  ---x\n...\n---\nc: 3",
        );
        let texts: Vec<(usize, usize, &str)> =
            docs.iter().map(|d| (d.index, d.line, d.text)).collect();
        assert_eq!(
            texts,
            [(1, 2, "a: 1\n"), (2, 7, "b: |\n  ---x\n"), (3, 11, "c: 3")]
        );
    }
}
