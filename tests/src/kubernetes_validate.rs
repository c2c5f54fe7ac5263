//! `kubernetes-validate --strict` (PyPI, from `tests/requirements.txt`): checks manifests
//! against the schemas of Kubernetes 1.33, rejecting unknown fields and wrong types. Shared by
//! the tests of everything that writes Kubernetes objects (`kube-inject`, `manifest generate`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The tool's name.
pub const TOOL: &str = "kubernetes-validate";
/// The Kubernetes version whose schemas are used.
pub const KUBERNETES_VERSION: &str = "1.33.0";

/// The tool, from the tests' venv ([`crate::venv`], made if missing).
pub fn find() -> PathBuf {
    crate::venv_tool("kubernetes-validate", TOOL)
}

/// Validates `files` strictly. Panics with the tool's output when a document is invalid.
/// Returns the lines the tool printed with `--quiet` (warnings, such as a custom resource
/// without a schema) for the caller to judge.
pub fn validate(files: &[impl AsRef<Path>]) -> Vec<String> {
    let tool = find();
    let result = Command::new(&tool)
        .args([
            "--strict",
            "--quiet",
            "--kubernetes-version",
            KUBERNETES_VERSION,
        ])
        .args(files.iter().map(AsRef::as_ref))
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "{TOOL} failed:\n{stdout}\n{stderr}"
    );
    stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}
