//! The benchmark's own Python tests (`bench/profile/test_*.py`: the instructions-per-request
//! tool's parsing, totals, `--compare`, and its span sink as a real process), run by the README's
//! test command like every other test. They need only python3's standard library.

use std::process::Command;

use e2e::workspace;

#[test]
fn bench_profile_python_tests() {
    let out = Command::new("timeout")
        .args(["300", "python3", "-m", "unittest", "discover", "-v"])
        .args(["-s", "bench/profile", "-p", "test_*.py"])
        .current_dir(workspace())
        .output()
        .expect("run python3 -m unittest (python3 is installed by tests/run)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "bench/profile's tests failed:\n{stderr}"
    );
    assert!(
        stderr.contains("\nOK"),
        "no test ran, or unittest said something else:\n{stderr}"
    );
}
