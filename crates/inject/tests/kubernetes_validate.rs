//! Every golden output must be a valid Kubernetes manifest: `kubernetes-validate --strict`
//! (PyPI) against Kubernetes 1.33 rejects unknown fields and wrong types.
//!
//! The tool is looked up in `$AMA_VENV/bin`, `<workspace>/.venv/bin`, then `PATH`. Without it
//! the test passes with "skipped: kubernetes-validate not installed", unless `CI` is set: CI must
//! validate. Install: `python3 -m venv .venv && .venv/bin/pip install kubernetes-validate`.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

const TOOL: &str = "kubernetes-validate";
const KUBERNETES_VERSION: &str = "1.33.0";

fn find_tool() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(venv) = std::env::var_os("AMA_VENV") {
        candidates.push(PathBuf::from(venv).join("bin").join(TOOL));
    }
    candidates.push(common::workspace_dir().join(".venv/bin").join(TOOL));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join(TOOL)));
    }
    candidates.into_iter().find(|c| c.is_file())
}

/// The tool has no schema for `List`: its items are validated as documents of their own.
fn without_lists(stream: &str) -> String {
    let mut docs = Vec::new();
    for doc in inject::split_documents(stream) {
        let value: serde_json::Value = serde_saphyr::from_str(doc.text).expect("output is YAML");
        match value.get("items").and_then(|i| i.as_array()) {
            Some(items) if value.get("kind").and_then(|k| k.as_str()) == Some("List") => {
                docs.extend(
                    items
                        .iter()
                        .map(|item| inject::to_yaml(item).expect("item to YAML")),
                );
            }
            _ => docs.push(doc.text.to_string()),
        }
    }
    docs.join("---\n")
}

#[test]
fn golden_outputs_are_valid_kubernetes() {
    let Some(tool) = find_tool() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{TOOL} is required in CI but was not found"
        );
        println!("skipped: {TOOL} not installed");
        return;
    };
    let dir = std::env::temp_dir().join(format!("ama-kubernetes-validate-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let mut files = Vec::new();
    for case in common::cases() {
        // Validate what the code produces now, so a stale golden file cannot hide a bad output.
        let (output, _) = common::run(&case);
        if output.trim().is_empty() {
            continue;
        }
        let file = dir.join(format!("{}.yaml", case.name));
        fs::write(&file, without_lists(&output)).expect("write output");
        files.push(file);
    }
    assert!(files.len() >= 25, "too few outputs: {}", files.len());
    let result = Command::new(&tool)
        .args([
            "--strict",
            "--quiet",
            "--kubernetes-version",
            KUBERNETES_VERSION,
        ])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let _ = fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "{TOOL} failed:\n{stdout}\n{stderr}"
    );
    // --quiet prints only warnings and failures; the only warning allowed is a missing schema
    // for a custom resource (the VirtualService passed through).
    for line in stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| !l.trim().is_empty())
    {
        assert!(
            line.contains("Couldn't find schema for kind VirtualService"),
            "unexpected: {line}"
        );
    }
}
