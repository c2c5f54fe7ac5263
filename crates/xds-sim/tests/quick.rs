//! `ama-xds-sim --quick` against the debug `ama` binary (built here if missing): every
//! simulated proxy gets every change. No timing assertions.

use std::path::PathBuf;
use std::process::Command;

/// The `ama` binary next to this test's binaries (`<target>/debug/ama`), built if missing.
fn ama() -> PathBuf {
    let sim = PathBuf::from(env!("CARGO_BIN_EXE_ama-xds-sim"));
    let ama = sim.with_file_name("ama");
    if !ama.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .args(["build", "-p", "cli", "--bin", "ama"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .status()
            .expect("cargo build");
        assert!(status.success(), "building ama");
    }
    assert!(ama.exists(), "{} missing", ama.display());
    ama
}

#[test]
fn quick_run_reaches_every_proxy() {
    let out = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_ama-xds-sim"))
        .arg("--quick")
        .arg("--ama")
        .arg(ama())
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run ama-xds-sim");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}\n{stderr}", output.status);
    let text = std::fs::read_to_string(out.path().join("n50-m20.json")).expect("json");
    let result: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(result["changes_complete"], true, "{result}");
    assert_eq!(result["changes"], 3);
    assert_eq!(result["per_proxy_ms"]["count"], 3 * 50, "{result}");
    assert_eq!(
        result["all_proxies_ms"]["samples"].as_array().map(Vec::len),
        Some(3)
    );
    assert!(out.path().join("n50-m20.md").exists());
}
