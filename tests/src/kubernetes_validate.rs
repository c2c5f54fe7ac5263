//! `kubernetes-validate --strict` (PyPI, from `tests/requirements.txt`): checks manifests
//! against the schemas of Kubernetes 1.33, rejecting unknown fields and wrong types. Shared by
//! the tests of everything that writes Kubernetes objects (`kube-inject`, `manifest generate`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The tool's name.
pub const TOOL: &str = "kubernetes-validate";
/// The Kubernetes version whose schemas are used.
pub const KUBERNETES_VERSION: &str = "1.33.0";

/// The tool, looked up in `$AMA_VENV/bin`, `<workspace>/.venv/bin`, then `PATH`.
pub fn find() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(venv) = std::env::var_os("AMA_VENV") {
        candidates.push(PathBuf::from(venv).join("bin").join(TOOL));
    }
    candidates.push(crate::workspace().join(".venv/bin").join(TOOL));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join(TOOL)));
    }
    candidates.into_iter().find(|c| c.is_file())
}

/// Validates `files` strictly. Panics with the tool's output when a document is invalid.
/// Returns the lines the tool printed with `--quiet` (warnings, such as a custom resource
/// without a schema) for the caller to judge, or `None`, after saying so, when the tool is not
/// installed; under CI (env `CI` set) a missing tool is a failure.
pub fn validate(test: &str, files: &[impl AsRef<Path>]) -> Option<Vec<String>> {
    let Some(tool) = find() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: {TOOL} is required in CI but was not found"
        );
        eprintln!(
            "skipped: {test} needs {TOOL} (pip install -r tests/requirements.txt into .venv)"
        );
        return None;
    };
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
        "{test}: {TOOL} failed:\n{stdout}\n{stderr}"
    );
    Some(
        stdout
            .lines()
            .chain(stderr.lines())
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
    )
}
