//! Validation errors that carry the path of the offending field.

use std::fmt;

/// One problem found in a resource, with the path of the field that has it
/// (`services[2].ports[0].port`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValidationError {
    /// Dotted path from the bundle root, with `[i]` for list items.
    pub path: String,
    /// What is wrong, phrased as what is expected (`must be 1..65535`).
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a bundle; a bundle with any is rejected whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    /// Records a problem at `path`.
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Checks a port number read from config (0 is never valid).
pub(crate) fn check_port(errs: &mut ValidationErrors, path: &str, port: u16) {
    if port == 0 {
        errs.push(path, "must be 1..65535");
    }
}

/// Checks a DNS-1123 style name (lowercase alphanumerics, `-` and `.`), as Kubernetes names are.
pub(crate) fn check_dns_name(errs: &mut ValidationErrors, path: &str, name: &str) {
    if name.is_empty() {
        errs.push(path, "must not be empty");
    } else if name.len() > 253
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        errs.push(
            path,
            "must be a DNS name: lowercase letters, digits, '-' and '.', at most 253",
        );
    }
}
