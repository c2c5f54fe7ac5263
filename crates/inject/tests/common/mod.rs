//! Shared by the golden and validation tests: the list of golden cases and how to run one.
#![allow(dead_code)] // each test binary uses part of it

use std::fs;
use std::path::{Path, PathBuf};

use api::{MeshConfig, Values};
use inject::{InjectConfig, inject_stream};

/// One golden case: an input stream, optional config files, and its expected files.
pub struct Case {
    /// Name of the case (the input's file name without `.yaml`).
    pub name: String,
    /// The input manifest.
    pub input: PathBuf,
    /// `golden/<name>.yaml.injected`: the expected output.
    pub expected_output: PathBuf,
    /// `golden/<name>.yaml.messages`: expected warnings and errors (absent when none).
    pub expected_messages: PathBuf,
}

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `golden/*.yaml` (except config files) and the seed's examples.
pub fn cases() -> Vec<Case> {
    let dir = golden_dir();
    let mut inputs: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("golden dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(".yaml")
                && !name.ends_with(".values.yaml")
                && !name.ends_with(".mesh.yaml")
        })
        .collect();
    for example in ["httpbin", "ubuntu"] {
        inputs.push(
            workspace_dir()
                .join("examples")
                .join(format!("{example}.yaml")),
        );
    }
    inputs.sort();
    inputs
        .into_iter()
        .map(|input| {
            let name = input
                .file_stem()
                .and_then(|n| n.to_str())
                .expect("utf-8 name")
                .to_string();
            Case {
                expected_output: dir.join(format!("{name}.yaml.injected")),
                expected_messages: dir.join(format!("{name}.yaml.messages")),
                name,
                input,
            }
        })
        .collect()
}

/// The config of a case: `golden/<name>.values.yaml` and `golden/<name>.mesh.yaml` if present.
pub fn config_for(name: &str) -> InjectConfig {
    let mut config = InjectConfig::default();
    let values = golden_dir().join(format!("{name}.values.yaml"));
    if values.exists() {
        config.values =
            Values::from_yaml(&fs::read_to_string(&values).expect("values")).expect("valid values");
    }
    let mesh = golden_dir().join(format!("{name}.mesh.yaml"));
    if mesh.exists() {
        config.mesh =
            MeshConfig::from_yaml(&fs::read_to_string(&mesh).expect("mesh")).expect("valid mesh");
    }
    config
}

/// Runs a case: the output stream and the messages (warnings, then errors), one per line.
pub fn run(case: &Case) -> (String, String) {
    let input = fs::read_to_string(&case.input).expect("input");
    let source = format!("{}.yaml", case.name);
    let result = inject_stream(&input, &source, &config_for(&case.name));
    let mut messages = String::new();
    for w in &result.warnings {
        messages.push_str(&format!("warning: {w}\n"));
    }
    for e in &result.errors {
        messages.push_str(&format!("error: {e}\n"));
    }
    (result.output, messages)
}
