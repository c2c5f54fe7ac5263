//! `ama kube-inject` end to end: the real binary on the seed's manifests, standard input,
//! several `-f`, `-o`, config files, and a stream with a bad document.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example(name: &str) -> PathBuf {
    workspace().join("examples").join(name)
}

fn golden(name: &str) -> String {
    let path = workspace()
        .join("crates/inject/tests/golden")
        .join(format!("{name}.yaml.injected"));
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ama(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ama"))
        .arg("kube-inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ama");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("wait for ama")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn injects_the_seed_httpbin() {
    let out = ama(&["-f", path(&example("httpbin.yaml"))], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), golden("httpbin"));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn reads_standard_input() {
    let input = fs::read_to_string(example("ubuntu.yaml")).expect("example");
    let out = ama(&["-f", "-"], Some(&input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), golden("ubuntu"));
}

#[test]
fn several_files_in_order() {
    let out = ama(
        &[
            "-f",
            path(&example("httpbin.yaml")),
            "--filename",
            path(&example("ubuntu.yaml")),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{}---\n{}", golden("httpbin"), golden("ubuntu"))
    );
}

#[test]
fn writes_to_output_file() {
    let dir = std::env::temp_dir().join(format!("ama-kube-inject-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("out.yaml");
    let out = ama(
        &["-f", path(&example("httpbin.yaml")), "-o", path(&file)],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        fs::read_to_string(&file).expect("output file"),
        golden("httpbin")
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn bad_document_fails_but_good_ones_are_printed() {
    let good = fs::read_to_string(example("ubuntu.yaml")).expect("example");
    let bad = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: httpbin\nspec:\n  template:\n    metadata:\n      annotations:\n        traffic.sidecar.istio.io/excludeInboundPorts: \"80,abc\"\n    spec:\n      containers:\n      - name: app\n        image: app:1\n";
    let input =
        format!("{good}---\n{bad}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s\n");
    let out = ama(&["-f", "-"], Some(&input));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: <stdin>:doc 2: Deployment default/httpbin: spec.template.metadata.annotations[\"traffic.sidecar.istio.io/excludeInboundPorts\"]: \"abc\" is not a port\n"
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout,
        format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s\n",
            golden("ubuntu")
        )
    );
}

#[test]
fn config_files_change_the_sidecar() {
    let dir = std::env::temp_dir().join(format!("ama-kube-inject-config-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let values = dir.join("values.yaml");
    fs::write(
        &values,
        "global:\n  hub: registry.example.com\n  tag: \"9\"\n",
    )
    .expect("values");
    let mesh = dir.join("mesh.yaml");
    fs::write(&mesh, "trustDomain: corp.example\n").expect("mesh");
    let iop = dir.join("iop.yaml");
    fs::write(&iop, "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  values:\n    global:\n      meshID: from-iop\n").expect("iop");

    let httpbin = example("httpbin.yaml");
    let out = ama(
        &[
            "-f",
            path(&httpbin),
            "--valuesFile",
            path(&values),
            "--meshConfigFile",
            path(&mesh),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("image: registry.example.com/proxy:9"),
        "{stdout}"
    );
    assert!(stdout.contains("value: corp.example"), "{stdout}");

    let out = ama(
        &[
            "-f",
            path(&httpbin),
            "--injectConfigFile",
            path(&iop),
            "--revision",
            "canary",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("value: from-iop"), "{stdout}");
    assert!(
        stdout.contains("value: istiod-canary.istio-system.svc:15012"),
        "{stdout}"
    );
    assert!(stdout.contains("istio.io/rev: canary"), "{stdout}");

    fs::write(
        &values,
        "global:\n  proxy:\n    excludeInboundPorts: \"80,abc\"\n",
    )
    .expect("values");
    let out = ama(&["-f", path(&httpbin), "--valuesFile", path(&values)], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .ends_with("values.yaml: global.proxy.excludeInboundPorts: \"abc\" is not a port\n"),
        "{}",
        text(&out.stderr)
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn missing_file_is_an_error() {
    let out = ama(&["-f", "/nonexistent/app.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read /nonexistent/app.yaml"),
        "{}",
        text(&out.stderr)
    );
}

/// What `ama iptables` would refuse is refused at injection, naming the file, document, object
/// and annotation, and the other documents are still written; what `ama up` cannot run (a
/// native sidecar) is written with a warning naming the field.
#[test]
fn refuses_what_ama_iptables_refuses_and_warns_what_ama_up_cannot_run() {
    let input = "\
apiVersion: v1
kind: Pod
metadata:
  name: tproxy
  annotations:
    sidecar.istio.io/interceptionMode: TPROXY
spec:
  containers:
  - {name: app, image: app:1}
---
apiVersion: v1
kind: Pod
metadata:
  name: native
  annotations:
    sidecar.istio.io/nativeSidecar: \"true\"
spec:
  containers:
  - {name: app, image: app:1}
";
    let out = ama(&["-f", "-"], Some(input));
    assert!(!out.status.success(), "TPROXY must fail the run");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "error: <stdin>:doc 1: Pod default/tproxy: \
             metadata.annotations[\"sidecar.istio.io/interceptionMode\"]: istio-init's \
             `ama iptables` would refuse it: -m/--istio-inbound-interception-mode: interception \
             mode TPROXY is not supported"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "warning: <stdin>:doc 2: Pod default/native: spec.initContainers[\"istio-proxy\"]: a \
             native sidecar"
        ) && stderr.contains("`ama up` runs init containers to completion"),
        "{stderr}"
    );
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("name: tproxy"), "{stdout}");
    assert!(stdout.contains("name: native"), "{stdout}");
    assert!(stdout.contains("restartPolicy: Always"), "{stdout}");
}
