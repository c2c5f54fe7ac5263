//! What injection reports: errors that stop a document, warnings that do not.

use std::fmt;

/// Where in the input a problem was found: the source, the document, the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file name as the user gave it (`-` or `<stdin>` for standard input).
    pub source: String,
    /// 1-based index of the document in the stream (empty documents are not counted).
    pub doc: usize,
    /// 1-based line of the document's first line in the source.
    pub line: usize,
    /// `Kind namespace/name` of the object, when it could be read.
    pub object: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:doc {}", self.source, self.doc)?;
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        Ok(())
    }
}

/// A problem with one field of an object: its path from the document root and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, such as `spec.template.metadata.annotations["…"]`; empty for the whole
    /// document.
    pub field: String,
    /// What is wrong, quoting the value.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error for a field nested under `prefix` (`spec.template` …).
    pub(crate) fn under(mut self, prefix: &str) -> Self {
        self.field = join_path(prefix, &self.field);
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Joins two field paths: `spec.template` + `metadata.labels` or `items[0]` + `spec`.
pub(crate) fn join_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{field}"),
    }
}

/// A document that could not be injected. It is left out of the output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {error}")]
pub struct InjectError {
    /// Which document.
    pub location: Location,
    /// What is wrong with it.
    pub error: FieldError,
}

/// Something the user should know about a document that was still written out, such as a pod
/// left alone because it uses the host network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct Warning {
    /// Which document.
    pub location: Location,
    /// What happened.
    pub message: String,
}
