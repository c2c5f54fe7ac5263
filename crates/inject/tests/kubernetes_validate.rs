//! Every golden output must be a valid Kubernetes manifest: `kubernetes-validate --strict`
//! (PyPI) against Kubernetes 1.33 rejects unknown fields and wrong types.
//!
//! The tool is found and run by `e2e::kubernetes_validate` (shared with the CLI's manifest
//! tests), from the tests' Python venv, which the first test that needs it makes
//! (`e2e::venv`).

mod common;

use std::fs;

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
    let printed = e2e::kubernetes_validate::validate(&files);
    let _ = fs::remove_dir_all(&dir);
    // --quiet prints only warnings and failures; the only warnings allowed are a missing schema
    // for a custom resource (the VirtualService passed through) and for OpenShift's
    // DeploymentConfig.
    for line in printed {
        assert!(
            line.contains("Couldn't find schema for kind VirtualService")
                || line.contains("Couldn't find schema for kind DeploymentConfig"),
            "unexpected: {line}"
        );
    }
}
