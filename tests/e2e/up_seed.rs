//! `ama up examples/seed`, end to end, with the real binary as a user runs it: the article's
//! pods come up with their sidecars, `ama exec` runs the article's curl through both sidecars
//! (mTLS: httpbin sees the client's SPIFFE id in XFCC), a pod in a namespace without
//! `istio-injection=enabled` gets neither sidecar nor capture rules, `ama logs` shows the
//! proxies' JSON access log, `ama apply` adds a Service and scales a Deployment while the mesh
//! runs, and `ama down` leaves no namespace, hosts file or process.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use e2e::{Proc, Scratch, ama, root_or_skip, wait_for, workspace};
use serde_json::Value;

/// A namespace without the injection label, with one pod.
const LEGACY: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: legacy
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: legacy-app
  namespace: legacy
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata:
      labels: {app: legacy}
      annotations: {local.ama.dev/command: ama sample httpbin --port 8080}
    spec:
      containers:
      - name: legacy-app
        image: kennethreitz/httpbin
        ports: [{containerPort: 8080}]
";

/// Applied while the mesh runs: a second Service in front of httpbin, and a third replica.
const CHANGE: &str = "
apiVersion: v1
kind: Service
metadata:
  name: httpbin-alias
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 80, targetPort: 80}]
";

/// `ama up` in the background; `ama down` (then a kill) on drop, so a failing test cleans up.
struct Mesh {
    name: String,
    up: Option<Proc>,
}

impl Mesh {
    fn ama(&self, args: &[&str]) -> Output {
        Command::new(ama())
            .args(args)
            .env("AMA_MESH", &self.name)
            .output()
            .expect("run ama")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ama(args);
        assert!(
            out.status.success(),
            "ama {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.up.as_ref().map(Proc::out).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pods(&self) -> Vec<Value> {
        let out = self.ama(&["get", "pods", "-A", "-o", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let list: Value = serde_json::from_slice(&out.stdout).expect("get pods -o json is JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    fn wait_ready(&self, want: usize) -> Vec<Value> {
        wait_for(
            &format!("{want} pods ready"),
            Duration::from_secs(90),
            || {
                let pods = self.pods();
                let ready = pods.len() == want
                    && pods.iter().all(|p| {
                        p["status"]["containerStatuses"]
                            .as_array()
                            .is_some_and(|cs| cs.iter().all(|c| c["ready"] == true))
                    });
                ready.then_some(pods)
            },
        )
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.ama(&["down"]);
        self.up.take();
    }
}

fn name(pod: &Value) -> String {
    pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn containers(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn copy_seed(to: &Path) {
    for entry in std::fs::read_dir(workspace().join("examples/seed")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(to.join("legacy.yaml"), LEGACY).unwrap();
}

fn netns_of(mesh: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("ama.{mesh}.")))
        .map(str::to_string)
        .collect()
}

/// The default: `ama discovery` serves the proxies over Delta ADS.
#[test]
fn seed_under_ama_up() {
    if root_or_skip("seed_under_ama_up") {
        seed("d", &[]);
    }
}

/// No control-plane process: `ama up` writes each proxy's resources (`--config`); no CA, so
/// the sidecars talk plaintext.
#[test]
fn seed_under_ama_up_with_resource_files() {
    if root_or_skip("seed_under_ama_up_with_resource_files") {
        seed("f", &["--xds", "files"]);
    }
}

fn seed(tag: &str, flags: &[&str]) {
    let scratch = Scratch::new("up");
    let dir = scratch.path().join("seed");
    std::fs::create_dir_all(&dir).unwrap();
    copy_seed(&dir);
    let mesh_name = format!("e2e{tag}{}", std::process::id() % 100_000);
    let mut cmd = Command::new(ama());
    cmd.args(["up"])
        .arg(&dir)
        .args(["--name", &mesh_name])
        .args(flags);
    let mut mesh = Mesh {
        name: mesh_name.clone(),
        up: Some(Proc::spawn("ama-up", scratch.path(), cmd)),
    };

    // 2 httpbin, 1 ubuntu, 1 legacy: all ready.
    let pods = mesh.wait_ready(4);
    let by_prefix =
        |p: &str| -> Vec<&Value> { pods.iter().filter(|x| name(x).starts_with(p)).collect() };
    let ubuntu = name(by_prefix("ubuntu-deployment-")[0]);
    let httpbins: Vec<String> = by_prefix("httpbin-deployment-")
        .iter()
        .map(|p| name(p))
        .collect();
    assert_eq!(httpbins.len(), 2);
    for p in by_prefix("httpbin-deployment-")
        .iter()
        .chain(&by_prefix("ubuntu-deployment-"))
    {
        assert_eq!(containers(p, "initContainers"), ["istio-init"], "{p}");
        assert!(
            containers(p, "containers").contains(&"istio-proxy".to_string()),
            "{p}"
        );
        // Kubernetes' shape: <deployment>-<pod-template-hash>-<5 characters>.
        let hash = p["metadata"]["labels"]["pod-template-hash"]
            .as_str()
            .unwrap();
        assert!(name(p).contains(&format!("-{hash}-")), "{p}");
    }
    let legacy = by_prefix("legacy-app-")[0];
    assert_eq!(legacy["metadata"]["namespace"], "legacy");
    assert_eq!(
        containers(legacy, "containers"),
        ["legacy-app"],
        "no sidecar: {legacy}"
    );
    assert!(
        containers(legacy, "initContainers").is_empty(),
        "no istio-init: {legacy}"
    );
    let rules = mesh.ok(&["exec", &name(legacy), "--", "iptables-save", "-t", "nat"]);
    assert!(
        !rules.contains("ISTIO"),
        "no capture rules without a sidecar:\n{rules}"
    );

    // kubectl's tables.
    let table = mesh.ok(&["get", "pods"]);
    assert!(table.starts_with("NAME "), "{table}");
    assert!(table.contains("2/2     Running   0"), "{table}");
    let services = mesh.ok(&["get", "services"]);
    assert!(
        services.starts_with("NAME              TYPE        CLUSTER-IP"),
        "{services}"
    );
    assert!(
        services.contains("httpbin-service   ClusterIP   10.96."),
        "{services}"
    );

    // The article's request, from the ubuntu pod, through both sidecars.
    let out = mesh.ama(&[
        "exec",
        &ubuntu,
        "--",
        "curl",
        "-sv",
        "http://httpbin-service/headers",
    ]);
    let exchange = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{exchange}");
    assert!(exchange.contains("< HTTP/1.1 200 OK"), "{exchange}");
    assert!(exchange.contains("< server: envoy"), "{exchange}");
    let seen: Value = serde_json::from_slice(&out.stdout).expect("httpbin answers JSON");
    eprintln!("{exchange}{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(seen["headers"]["Host"], "httpbin-service", "{seen}");
    // Certificates come from ama discovery's CA; the file mode has none (plaintext).
    let xfcc = seen["headers"]["X-Forwarded-Client-Cert"].as_str();
    if flags.is_empty() {
        assert!(
            xfcc.is_some_and(|x| x.contains("URI=spiffe://cluster.local/ns/default/sa/default")),
            "{seen}"
        );
    } else {
        assert_eq!(xfcc, None, "no CA, no mTLS: {seen}");
    }
    assert!(
        seen["headers"].get("X-Request-Id").is_none(),
        "hidden without show_env: {seen}"
    );

    // The server side logged it, as JSON, in istio-proxy's log.
    let logged = wait_for(
        "the server sidecar's access-log line",
        Duration::from_secs(10),
        || {
            httpbins.iter().find_map(|p| {
                let log = mesh.ok(&["logs", p, "-c", "istio-proxy"]);
                log.lines()
                    .filter(|l| l.starts_with('{'))
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|l| {
                        l["path"] == "/headers"
                            && l["upstream_cluster"]
                                .as_str()
                                .is_some_and(|c| c.starts_with("inbound|80|"))
                    })
            })
        },
    );
    assert_eq!(logged["response_code"], "200", "{logged}");

    // A change while it runs: a new Service reaches the proxies and the hosts files.
    let change = scratch.path().join("change.yaml");
    std::fs::write(&change, CHANGE).unwrap();
    let applied = mesh.ok(&["apply", "-f", change.to_str().unwrap()]);
    assert_eq!(applied.trim(), "service/httpbin-alias created");
    let applied = mesh.ok(&["apply", "-f", change.to_str().unwrap()]);
    assert_eq!(applied.trim(), "service/httpbin-alias unchanged");
    wait_for("httpbin-alias to answer", Duration::from_secs(20), || {
        let out = mesh.ama(&[
            "exec",
            &ubuntu,
            "--",
            "curl",
            "-sf",
            "http://httpbin-alias/headers",
        ]);
        out.status.success().then_some(())
    });
    // Scale httpbin to 3.
    let scaled = std::fs::read_to_string(dir.join("httpbin.yaml"))
        .unwrap()
        .replace("replicas: 2", "replicas: 3");
    let scaled_file = scratch.path().join("scaled.yaml");
    std::fs::write(&scaled_file, scaled).unwrap();
    let applied = mesh.ok(&["apply", "-f", scaled_file.to_str().unwrap()]);
    assert!(
        applied.contains("deployment.apps/httpbin-deployment configured"),
        "{applied}"
    );
    assert!(
        applied.contains("service/httpbin-service unchanged"),
        "{applied}"
    );
    mesh.wait_ready(5);

    // Everything ama up started, to check it is gone after ama down.
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/ama/{mesh_name}/state.json")).unwrap(),
    )
    .unwrap();
    let pids: BTreeSet<i32> = state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["containers"].as_array().unwrap().iter())
        .filter_map(|c| c["pid"].as_i64())
        .map(|p| p as i32)
        .collect();
    assert!(pids.len() >= 9, "{pids:?}");
    let namespaces = netns_of(&mesh_name);
    assert_eq!(namespaces.len(), 6, "5 pods and the LAN: {namespaces:?}");

    let down = mesh.ok(&["down"]);
    assert!(down.contains("stopped"), "{down}");
    let mut up = mesh.up.take().unwrap();
    let status = up.signal_and_wait(0, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "ama up exits 0 after ama down:\n{}",
        up.out()
    );
    assert!(
        up.out().contains("Stopped; nothing is left behind."),
        "{}",
        up.out()
    );
    assert_eq!(netns_of(&mesh_name), Vec::<String>::new());
    for ns in &namespaces {
        assert!(
            !Path::new("/etc/netns").join(ns).exists(),
            "/etc/netns/{ns} is left"
        );
    }
    // SAFETY: kill(2) with signal 0 only checks whether the pid exists.
    let alive: Vec<&i32> = pids
        .iter()
        .filter(|p| unsafe { libc::kill(**p, 0) } == 0)
        .collect();
    assert!(alive.is_empty(), "processes left: {alive:?}");
    assert!(!Path::new(&format!("/run/ama/{mesh_name}")).exists());
}
