//! Istio's "Mutual TLS Migration" task under `ama up`, with Istio's YAML (the samples from
//! `tests/fixtures/traffic/`, the task's policies from `tests/fixtures/security/`) applied as the
//! task applies them, `ama apply -n NAMESPACE -f FILE` for `kubectl apply -n … -f …`:
//!
//! - namespaces foo and bar run httpbin and sleep with sidecars; legacy runs sleep (and, as in
//!   the Authentication Policy task's setup the migration task builds on, httpbin) without one,
//!   so every call from legacy goes through `ama up`'s stand-in for kube-proxy
//!   (`local::kube_proxy`): the legacy pods are applied first, so their Service rules must
//!   follow the Services applied after them;
//! - the task's loop over every (sleep, httpbin) pair, printed as the task prints it:
//!   all 200; with PeerAuthentication STRICT in foo, `sleep.legacy to httpbin.foo: 000` (curl
//!   exit 56, the connection reset) and the rest 200; with STRICT mesh-wide (istio-system),
//!   legacy to bar too; with both policies back to PERMISSIVE (no `ama delete` yet), all 200;
//! - the mTLS-mode labels of `istio_requests_total` on httpbin.foo's sidecar: `mutual_tls` for
//!   sleep.bar, `none` (and source_principal `unknown`) for sleep.legacy;
//! - a PeerAuthentication STRICT for a workload with port 8080 DISABLE (the reference's
//!   `finance` example): plaintext reaches 8080 and is refused on 9090, a sidecar client is
//!   answered on both, and the labels say which connection was mTLS;
//! - kube-proxy's part follows a scale: two httpbin.foo replicas give the legacy pod two DNAT
//!   rules and both answer it; back to one, one rule; a Service without a ready endpoint is
//!   refused at once (curl exit 7);
//! - from legacy, `httpbin.foo.svc.cluster.local`, `httpbin.foo.svc` and `httpbin` resolve too.
//!
//! The mesh is brought down when the test ends, passing or not.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::up::{UpMesh, name, ready};
use e2e::{Scratch, root_or_skip, wait_for, workspace};
use serde_json::Value;

const TEST: &str = "mutual_tls_migration_under_ama_up";

/// The namespaces of the task's loop: every sleep calls every httpbin.
const FROM: [&str; 3] = ["foo", "bar", "legacy"];
const TO: [&str; 3] = ["foo", "bar", "legacy"];

fn fixture(path: &str) -> PathBuf {
    workspace().join("tests/fixtures").join(path)
}

/// The mesh and the pods the loop uses.
struct Task {
    mesh: UpMesh,
    scratch: Scratch,
}

/// One curl's outcome: what `-w` printed and curl's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    line: String,
    code: i32,
}

impl Task {
    /// `ama apply -n namespace -f file`; prints what it said.
    fn apply(&self, namespace: &str, file: &std::path::Path) {
        let out = self.mesh.ok(&[
            "apply",
            "-n",
            namespace,
            "-f",
            file.to_str().expect("utf-8 path"),
        ]);
        eprintln!(
            "$ ama apply -n {namespace} -f {}\n{}",
            file.file_name().unwrap_or_default().to_string_lossy(),
            out.trim_end()
        );
    }

    /// `ama apply -n namespace -f -` of `text`, written to the scratch directory as `name`.
    fn apply_text(&self, namespace: &str, name: &str, text: &str) {
        let path = self.scratch.path().join(name);
        std::fs::write(&path, text).expect("write YAML");
        self.apply(namespace, &path);
    }

    /// The running pods of `namespace` whose names start with `prefix`.
    fn pods(&self, namespace: &str, prefix: &str) -> Vec<Value> {
        self.mesh
            .pods()
            .into_iter()
            .filter(|p| p["metadata"]["namespace"] == namespace && name(p).starts_with(prefix))
            .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
            .collect()
    }

    /// The one pod of Deployment `app` in `namespace`.
    fn pod(&self, namespace: &str, app: &str) -> String {
        let pods = self.pods(namespace, &format!("{app}-"));
        assert_eq!(pods.len(), 1, "one {app} pod in {namespace}: {pods:?}");
        name(&pods[0])
    }

    /// `curl URL -s -o /dev/null -w FORMAT` in `namespace`'s sleep pod (container sleep).
    fn curl(&self, namespace: &str, url: &str, format: &str) -> Call {
        let pod = self.pod(namespace, "sleep");
        let out = self.mesh.ama(&[
            "exec",
            "-n",
            namespace,
            &pod,
            "-c",
            "sleep",
            "--",
            "curl",
            url,
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "-w",
            format,
        ]);
        Call {
            line: String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
            code: out.status.code().unwrap_or(-1),
        }
    }

    /// The task's loop: each (from, to) pair's call, keyed by the pair.
    fn task_loop(&self) -> BTreeMap<(usize, usize), Call> {
        let mut out = BTreeMap::new();
        for (i, from) in FROM.iter().enumerate() {
            for (j, to) in TO.iter().enumerate() {
                let call = self.curl(
                    from,
                    &format!("http://httpbin.{to}:8000/ip"),
                    &format!("sleep.{from} to httpbin.{to}: %{{http_code}}\n"),
                );
                out.insert((i, j), call);
            }
        }
        out
    }

    /// Runs the loop until every pair gives what `expect` says (`true`: 200; `false`: 000 with
    /// curl's exit code 56, a connection reset), for at most 30 s while a change reaches the
    /// proxies; prints the last run as the task prints it, and fails when it differs.
    fn expect_loop(&self, phase: &str, expect: impl Fn(&str, &str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self.task_loop();
            let wrong: Vec<String> = seen
                .iter()
                .filter(|((i, j), call)| {
                    let want_ok = expect(FROM[*i], TO[*j]);
                    let ok = call.code == 0 && call.line.ends_with(": 200");
                    let reset = call.code == 56 && call.line.ends_with(": 000");
                    if want_ok { !ok } else { !reset }
                })
                .map(|(_, call)| format!("{} (exit {})", call.line, call.code))
                .collect();
            if wrong.is_empty() || Instant::now() >= deadline {
                let mut printed = String::new();
                for call in seen.values() {
                    printed.push_str(&call.line);
                    printed.push('\n');
                    if call.code != 0 {
                        printed.push_str(&format!(
                            "command terminated with exit code {}\n",
                            call.code
                        ));
                    }
                }
                eprintln!("=== {phase}\n{printed}");
                assert!(
                    wrong.is_empty(),
                    "{phase}: unexpected outcomes {wrong:?}\n{printed}"
                );
                return printed;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The sum of `istio_requests_total` series on the sidecar of `pod` in `namespace` whose
    /// labels include every one of `labels` (`name="value"`).
    fn requests(&self, namespace: &str, pod: &str, labels: &[&str]) -> f64 {
        let out = self.mesh.ok(&[
            "exec",
            "-n",
            namespace,
            pod,
            "--",
            "curl",
            "-s",
            "http://127.0.0.1:15090/stats/prometheus",
        ]);
        out.lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            // Not `sum()`: an empty float sum is -0, which prints as "-0".
            .fold(0.0, |a, b| a + b)
    }

    /// The DNAT rules of the legacy sleep pod's namespace for Service `comment`
    /// (`foo/httpbin:http`).
    fn dnat_rules(&self, comment: &str) -> Vec<String> {
        let pod = self.pod("legacy", "sleep");
        let state = self.mesh.state();
        let netns = state["pods"]
            .as_array()
            .and_then(|pods| pods.iter().find(|p| p["name"] == pod.as_str()))
            .and_then(|p| p["netns"].as_str())
            .expect("the legacy pod's netns in state.json")
            .to_string();
        let out = Command::new("ip")
            .args(["netns", "exec", &netns, "iptables-save", "-t", "nat"])
            .output()
            .expect("run iptables-save");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("\"{comment}\"")) && l.contains("-j DNAT"))
            .map(str::to_string)
            .collect()
    }

    /// Waits until the mesh has `want` pods, all ready.
    fn wait_pods(&self, want: usize) {
        self.mesh.wait_ready(want);
    }
}

#[test]
fn mutual_tls_migration_under_ama_up() {
    if !root_or_skip(TEST) {
        return;
    }
    let scratch = Scratch::new("mtlsmig");
    let dir = scratch.path().join("mesh");
    std::fs::create_dir_all(&dir).expect("create the mesh directory");
    std::fs::copy(
        fixture("security/namespaces.yaml"),
        dir.join("namespaces.yaml"),
    )
    .expect("copy namespaces.yaml");
    let mesh = UpMesh::start("mm", &dir, scratch.path(), &[]);
    let t = Task { mesh, scratch };
    wait_for("ama up to run", Duration::from_secs(60), || {
        t.mesh
            .ama(&["get", "pods", "-A"])
            .status
            .success()
            .then_some(())
    });

    // The pods without a sidecar first: their Service rules must follow what comes after.
    let httpbin = fixture("traffic/httpbin.yaml");
    let sleep = fixture("traffic/sleep.yaml");
    t.apply("legacy", &sleep);
    t.apply("legacy", &httpbin);
    for ns in ["foo", "bar"] {
        t.apply(ns, &httpbin);
        t.apply(ns, &sleep);
    }
    t.wait_pods(6);
    let sidecars: Vec<(String, bool)> = t
        .mesh
        .pods()
        .iter()
        .map(|p| {
            let containers = p["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (
                format!(
                    "{}/{}",
                    p["metadata"]["namespace"].as_str().unwrap_or(""),
                    name(p)
                ),
                containers.iter().any(|c| c["name"] == "istio-proxy"),
            )
        })
        .collect();
    for (pod, has) in &sidecars {
        assert_eq!(
            *has,
            !pod.starts_with("legacy/"),
            "sidecar of {pod}: {sidecars:?}"
        );
    }

    // 1. Every pair answers, legacy's calls through the VIPs by name.
    let all_ok = t.expect_loop("PERMISSIVE (Istio's default): every pair 200", |_, _| true);
    // The other names cluster DNS gives a Service resolve alike (`httpbin` alone: the one in
    // the caller's namespace).
    for host in [
        "httpbin.foo.svc.cluster.local",
        "httpbin.foo.svc",
        "httpbin",
    ] {
        let call = t.curl("legacy", &format!("http://{host}:8000/ip"), "%{http_code}");
        assert_eq!(
            (call.line.as_str(), call.code),
            ("200", 0),
            "sleep.legacy to {host}"
        );
    }

    // The mTLS mode of each caller, as httpbin.foo's sidecar counts it (PERMISSIVE).
    let httpbin_foo = t.pod("foo", "httpbin");
    for from in ["bar", "legacy"] {
        t.curl(from, "http://httpbin.foo:8000/ip", "%{http_code}");
    }
    let destination = r#"reporter="destination""#;
    let from_bar = r#"source_workload_namespace="bar""#;
    let from_legacy = r#"source_workload_namespace="legacy""#;
    let mtls = r#"connection_security_policy="mutual_tls""#;
    let none = r#"connection_security_policy="none""#;
    let series = |labels: &[&str]| t.requests("foo", &httpbin_foo, labels);
    let labels_seen = format!(
        "sleep.bar: mutual_tls {} none {}; sleep.legacy: mutual_tls {} none {} (unknown principal {})",
        series(&[destination, from_bar, mtls]),
        series(&[destination, from_bar, none]),
        series(&[destination, from_legacy, mtls]),
        series(&[destination, from_legacy, none]),
        series(&[
            destination,
            from_legacy,
            none,
            r#"source_principal="unknown""#
        ]),
    );
    eprintln!("istio_requests_total on httpbin.foo's sidecar: {labels_seen}");
    assert!(
        series(&[destination, from_bar, mtls]) >= 2.0,
        "{labels_seen}"
    );
    assert_eq!(series(&[destination, from_bar, none]), 0.0, "{labels_seen}");
    assert_eq!(
        series(&[destination, from_legacy, mtls]),
        0.0,
        "{labels_seen}"
    );
    let legacy_none = series(&[destination, from_legacy, none]);
    assert!(legacy_none >= 2.0, "{labels_seen}");
    assert_eq!(
        series(&[
            destination,
            from_legacy,
            none,
            r#"source_principal="unknown""#
        ]),
        legacy_none,
        "a plaintext caller proves no identity: {labels_seen}"
    );

    // 2. Lock down to mutual TLS by namespace.
    let strict = fixture("security/peer-authentication-strict.yaml");
    t.apply("foo", &strict);
    let foo_strict = t.expect_loop("STRICT in foo", |from, to| {
        !(from == "legacy" && to == "foo")
    });

    // 3. Lock down mutual TLS for the entire mesh.
    t.apply("istio-system", &strict);
    let mesh_strict = t.expect_loop("STRICT mesh-wide (istio-system)", |from, to| {
        !(from == "legacy" && to != "legacy")
    });

    // 4. The clean-up, as far as Ama can (no `ama delete`): both policies back to PERMISSIVE.
    let permissive = fixture("security/ours-peer-authentication-permissive.yaml");
    t.apply("foo", &permissive);
    t.apply("istio-system", &permissive);
    let restored = t.expect_loop("both policies PERMISSIVE again", |_, _| true);

    // 5. Port-level: STRICT for the finance workload, port 8080 in plaintext.
    t.apply("foo", &fixture("security/ours-httpbin-two-ports.yaml"));
    t.wait_pods(7);
    t.apply(
        "foo",
        &fixture("security/peer-authentication-port-level.yaml"),
    );
    let finance = t.pod("foo", "finance");
    let expect_port = |from: &str, port: u16, ok: bool| {
        let url = format!("http://finance.foo:{port}/ip");
        let format = format!("sleep.{from} to finance.foo:{port}: %{{http_code}}");
        wait_for(
            &format!(
                "{format} to be {}",
                if ok { "200" } else { "000 (exit 56)" }
            ),
            Duration::from_secs(30),
            || {
                let call = t.curl(from, &url, &format);
                let good = if ok {
                    call.code == 0 && call.line.ends_with(": 200")
                } else {
                    call.code == 56 && call.line.ends_with(": 000")
                };
                if !good {
                    std::thread::sleep(Duration::from_millis(500));
                }
                good.then_some(call)
            },
        )
    };
    let port_level: Vec<Call> = vec![
        expect_port("legacy", 8000, true),
        expect_port("legacy", 9000, false),
        expect_port("foo", 8000, true),
        expect_port("foo", 9000, true),
    ];
    let mut port_printed = String::new();
    for call in &port_level {
        port_printed.push_str(&format!("{}\n", call.line));
        if call.code != 0 {
            port_printed.push_str(&format!(
                "command terminated with exit code {}\n",
                call.code
            ));
        }
    }
    eprintln!("=== STRICT for finance, port 8080 DISABLE\n{port_printed}");
    let on_finance = |labels: &[&str]| t.requests("foo", &finance, labels);
    let from_foo = r#"source_workload_namespace="foo""#;
    let finance_seen = format!(
        "sleep.foo: mutual_tls {} none {}; sleep.legacy: mutual_tls {} none {}",
        on_finance(&[destination, from_foo, mtls]),
        on_finance(&[destination, from_foo, none]),
        on_finance(&[destination, from_legacy, mtls]),
        on_finance(&[destination, from_legacy, none]),
    );
    eprintln!("istio_requests_total on finance's sidecar: {finance_seen}");
    // sleep.foo: 9090 over mTLS, 8080 in plaintext; sleep.legacy: 8080 in plaintext only (its
    // call to 9090 was refused before any request).
    assert!(
        on_finance(&[destination, from_foo, mtls]) >= 1.0,
        "{finance_seen}"
    );
    assert!(
        on_finance(&[destination, from_foo, none]) >= 1.0,
        "{finance_seen}"
    );
    assert_eq!(
        on_finance(&[destination, from_legacy, mtls]),
        0.0,
        "{finance_seen}"
    );
    assert!(
        on_finance(&[destination, from_legacy, none]) >= 1.0,
        "{finance_seen}"
    );

    // 6. kube-proxy's part follows a scale of httpbin.foo: two endpoints, then one.
    let scaled = std::fs::read_to_string(&httpbin)
        .expect("read httpbin.yaml")
        .replace("replicas: 1", "replicas: 2");
    t.apply_text("foo", "httpbin-2.yaml", &scaled);
    t.wait_pods(8);
    let rules = wait_for(
        "two DNAT rules for foo/httpbin",
        Duration::from_secs(30),
        || {
            let rules = t.dnat_rules("foo/httpbin:http");
            (rules.len() == 2).then_some(rules)
        },
    );
    eprintln!(
        "legacy's rules for httpbin.foo with 2 replicas:\n{}",
        rules.join("\n")
    );
    assert!(rules[0].contains("--probability 0.5"), "{rules:?}");
    for _ in 0..30 {
        t.curl("legacy", "http://httpbin.foo:8000/ip", "%{http_code}");
    }
    let answered: Vec<f64> = t
        .pods("foo", "httpbin-")
        .iter()
        .map(|p| t.requests("foo", &name(p), &[destination, from_legacy]))
        .collect();
    eprintln!("requests from sleep.legacy counted by each httpbin.foo: {answered:?}");
    assert_eq!(answered.len(), 2);
    assert!(
        answered.iter().all(|n| *n > 0.0),
        "both replicas answer: {answered:?}"
    );
    t.apply("foo", &httpbin);
    let rules = wait_for(
        "one DNAT rule for foo/httpbin",
        Duration::from_secs(60),
        || {
            let rules = t.dnat_rules("foo/httpbin:http");
            (rules.len() == 1 && t.mesh.pods().iter().all(ready)).then_some(rules)
        },
    );
    assert!(!rules[0].contains("statistic"), "{rules:?}");

    // 7. A Service without a ready endpoint is refused at once (curl: exit 7, couldn't
    // connect), as kube-proxy REJECTs it, not left to time out.
    t.apply_text(
        "legacy",
        "nobody.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: nobody}\n\
         spec: {selector: {app: nobody}, ports: [{name: http, port: 8000}]}\n",
    );
    let refused = wait_for(
        "sleep.legacy to nobody to be refused",
        Duration::from_secs(30),
        || {
            let call = t.curl("legacy", "http://nobody:8000/ip", "%{http_code}");
            if call.code != 7 {
                std::thread::sleep(Duration::from_millis(500));
            }
            (call.code == 7).then_some(call)
        },
    );
    eprintln!(
        "sleep.legacy to nobody.legacy (no endpoints): {} (exit {})",
        refused.line, refused.code
    );

    eprintln!(
        "=== the task's outputs\n{all_ok}\n{foo_strict}\n{mesh_strict}\n{restored}\n{port_printed}"
    );
}
