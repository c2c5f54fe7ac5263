//! The seed article (`reference/istio-part2-service-to-service.md`) step by step, under
//! `ama up examples/seed`, with the real binary as a user runs it. Each step asserts the output
//! the article shows, or its counterpart:
//!
//! 1. `ama kube-inject -f httpbin.yaml` has the article's structure ([`kube_inject_has_the_articles_structure`]);
//! 2. `ama up`: the httpbin replicas and the ubuntu pod are `2/2 Running`; the ubuntu pod got its
//!    sidecar from the namespace label alone; a pod in an unlabelled namespace gets neither
//!    sidecar, `istio-init` nor capture rules;
//! 3. `curl -sv http://httpbin-service/headers` from the ubuntu pod: 200, `server: envoy`,
//!    `x-envoy-upstream-service-time`, and httpbin sees Host, User-Agent, the B3 headers and the
//!    XFCC of the discovery CA's certificates;
//! 4. `ama logs -l app=… -c istio-proxy -f --tail 0`: the client's and the server's JSON lines
//!    of one request (`?show_env=1` shows httpbin's X-Request-Id), field by field;
//! 5. 100 requests are spread over both replicas (server lines counted per pod);
//! 6. `ama apply` while it runs reaches the proxies and the hosts files;
//! 7. `ama down` leaves no namespace, `/etc/netns` directory, state directory or process, and
//!    the host's own iptables rules as they were.
//!
//! [`seed_under_ama_up_with_resource_files`] runs the no-control-plane mode through the same
//! helpers (plaintext: that mode has no CA). [`up_without_root_refuses_at_once`]: as nobody (no
//! subordinate ids), `ama up` refuses in one sentence and makes nothing (`up_rootless.rs` runs
//! the seed as a user that has them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::up::{UpMesh, name};
use e2e::{Proc, Scratch, ama, root_or_skip, wait_for, workspace};
use serde_json::{Value, json};

const FQDN: &str = "httpbin-service.default.svc.cluster.local";
const ID: &str = "spiffe://cluster.local/ns/default/sa/default";

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

/// Applied while the mesh runs: a second Service in front of httpbin.
const CHANGE: &str = "
apiVersion: v1
kind: Service
metadata:
  name: httpbin-alias
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 80, targetPort: 80}]
";

/// `ama up` in the background ([`UpMesh`]), with the host's iptables rules from before it
/// started, to check that `ama down` leaves them as they were.
struct Mesh {
    mesh: UpMesh,
    /// The host's iptables rules before `ama up`.
    host_rules: String,
}

impl std::ops::Deref for Mesh {
    type Target = UpMesh;
    fn deref(&self) -> &UpMesh {
        &self.mesh
    }
}

impl std::ops::DerefMut for Mesh {
    fn deref_mut(&mut self) -> &mut UpMesh {
        &mut self.mesh
    }
}

impl Mesh {
    /// `ama up DIR --name e2e<tag><pid> FLAGS…`, logging into `logs`.
    fn start(tag: &str, dir: &Path, logs: &Path, flags: &[&str]) -> Mesh {
        let host_rules = host_rules();
        Mesh {
            mesh: UpMesh::start(tag, dir, logs, flags),
            host_rules,
        }
    }

    /// The JSON access-log lines of `pod`'s sidecar so far.
    fn access_log(&self, pod: &str) -> Vec<Value> {
        access_lines(&self.ok(&["logs", pod, "-c", "istio-proxy"]))
    }

    /// `ama down`, then checks that nothing of the mesh is left.
    fn down_leaves_nothing(mut self) {
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("/run/ama/{}/state.json", self.name)).unwrap(),
        )
        .unwrap();
        let mut pids: BTreeSet<i32> = state["pods"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["containers"].as_array().unwrap().iter())
            .filter_map(|c| c["pid"].as_i64())
            .map(|p| p as i32)
            .collect();
        pids.extend(processes_naming(&self.name));
        let namespaces = netns_of(&self.name);
        assert!(!namespaces.is_empty());

        let down = self.ok(&["down"]);
        assert!(down.contains("stopped"), "{down}");
        let mut up = self.up.take().unwrap();
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
        assert_eq!(netns_of(&self.name), Vec::<String>::new());
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
        assert_eq!(processes_naming(&self.name), Vec::<i32>::new());
        assert!(!Path::new(&format!("/run/ama/{}", self.name)).exists());
        assert_eq!(host_rules(), self.host_rules, "the host's iptables rules");
    }
}

/// The host's iptables rules (all tables), without counters.
fn host_rules() -> String {
    let out = Command::new("iptables-save")
        .output()
        .expect("run iptables-save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_prefix(':') {
            // `:CHAIN POLICY [packets:bytes]`
            Some(chain) => chain
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Processes whose command line names the mesh's state directory (discovery, the sidecars).
fn processes_naming(mesh: &str) -> Vec<i32> {
    let needle = format!("/run/ama/{mesh}/");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

/// The access-log records (JSON lines) in a sidecar's output.
fn access_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l.get("upstream_cluster").is_some())
        .collect()
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn containers(pod: &Value, list: &str) -> Vec<String> {
    names(&pod["spec"][list])
}

/// The seed (the article's files) and the unlabelled namespace, in a fresh directory.
fn seed_dir(scratch: &Scratch) -> PathBuf {
    let dir = scratch.path().join("seed");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(workspace().join("examples/seed")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.join("legacy.yaml"), LEGACY).unwrap();
    dir
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

/// A YAML stream as JSON values.
fn yaml_docs(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str::<Value>(d).expect("kube-inject writes YAML"))
        .collect()
}

fn env_of<'a>(container: &'a Value, var: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == var))
        .unwrap_or_else(|| panic!("no env {var} in {container}"))
}

/// Step 1: `ama kube-inject -f httpbin.yaml` (no root needed).
#[test]
fn kube_inject_has_the_articles_structure() {
    let file = workspace().join("examples/seed/httpbin.yaml");
    let out = Command::new(ama())
        .args(["kube-inject", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let docs = yaml_docs(&String::from_utf8_lossy(&out.stdout));
    let input = yaml_docs(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1], input[1], "the Service is unchanged");
    let deployment = &docs[0];
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["metadata"]["name"], "httpbin-deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let template = &deployment["spec"]["template"];

    // Labels and annotations.
    assert_eq!(template["metadata"]["labels"]["app"], "httpbin");
    assert_eq!(
        template["metadata"]["labels"]["security.istio.io/tlsMode"],
        "istio"
    );
    let status: Value = serde_json::from_str(
        template["metadata"]["annotations"]["sidecar.istio.io/status"]
            .as_str()
            .expect("sidecar.istio.io/status"),
    )
    .unwrap();
    assert_eq!(status["initContainers"], json!(["istio-init"]));
    assert_eq!(status["containers"], json!(["istio-proxy"]));
    let spec = &template["spec"];
    assert_eq!(status["volumes"], json!(names(&spec["volumes"])));

    // istio-init: the capture rules, as root with NET_ADMIN and NET_RAW.
    let init = &spec["initContainers"];
    assert_eq!(names(init), ["istio-init"]);
    let argv: Vec<&str> = init[0]["command"]
        .as_array()
        .into_iter()
        .chain(init[0]["args"].as_array())
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        argv,
        [["ama", "iptables"].as_slice(), &e2e::sidecar::CAPTURE_ARGS].concat()
    );
    let security = &init[0]["securityContext"];
    assert_eq!(
        security["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(security["runAsUser"], 0);

    // The app as written, then istio-proxy running `proxy sidecar` as 1337.
    assert_eq!(names(&spec["containers"]), ["httpbin", "istio-proxy"]);
    let app = &spec["containers"][0];
    assert_eq!(app["image"], "kennethreitz/httpbin:latest");
    assert_eq!(app["ports"], json!([{"containerPort": 80}]));
    let proxy = &spec["containers"][1];
    assert_eq!(proxy["command"], json!(["ama"]));
    assert_eq!(
        proxy["args"].as_array().unwrap()[..4],
        [
            json!("proxy"),
            json!("sidecar"),
            json!("--domain"),
            json!("$(POD_NAMESPACE).svc.cluster.local")
        ]
    );
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["runAsGroup"], 1337);
    assert_eq!(
        proxy["ports"],
        json!([{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}])
    );
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
    for (var, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("INSTANCE_IP", "status.podIP"),
        ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ("HOST_IP", "status.hostIP"),
    ] {
        assert_eq!(
            env_of(proxy, var)["valueFrom"]["fieldRef"]["fieldPath"],
            path
        );
    }
    assert_eq!(
        env_of(proxy, "ISTIO_META_INTERCEPTION_MODE")["value"],
        "REDIRECT"
    );
    assert_eq!(
        env_of(proxy, "ISTIO_META_WORKLOAD_NAME")["value"],
        "httpbin-deployment"
    );
    assert_eq!(
        env_of(proxy, "ISTIO_META_MESH_ID")["value"],
        "cluster.local"
    );
    let pod_ports: Value = serde_json::from_str(
        env_of(proxy, "ISTIO_META_POD_PORTS")["value"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pod_ports, json!([{"containerPort": 80}]));
    let mounts: BTreeMap<String, String> = proxy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap().to_string(),
                m["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(mounts["/var/run/secrets/istio"], "istiod-ca-cert");
    assert_eq!(mounts["/etc/istio/proxy"], "istio-envoy");
    assert_eq!(mounts["/etc/istio/pod"], "istio-podinfo");

    // The volumes behind them.
    let volume = |name: &str| -> &Value {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    assert_eq!(
        volume("istio-envoy")["emptyDir"],
        json!({"medium": "Memory"})
    );
    assert_eq!(
        volume("istiod-ca-cert")["configMap"],
        json!({"name": "istio-ca-root-cert"})
    );
    let podinfo: Vec<&str> = volume("istio-podinfo")["downwardAPI"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["fieldRef"]["fieldPath"].as_str())
        .collect();
    assert_eq!(podinfo, ["metadata.labels", "metadata.annotations"]);
}

/// Steps 2 to 7, with `ama discovery` (the default): config over Delta ADS, certificates from
/// its CA.
#[test]
fn article_under_ama_up() {
    if !root_or_skip("article_under_ama_up") {
        return;
    }
    let started = Instant::now();
    let scratch = Scratch::new("up");
    let dir = seed_dir(&scratch);
    let mesh = Mesh::start("d", &dir, scratch.path(), &[]);

    // 2 httpbin, 1 ubuntu, 1 legacy: all ready. `kubectl get pods,services`.
    let pods = mesh.wait_ready(4);
    eprintln!("4 pods ready after {:?}", started.elapsed());
    let by_prefix =
        |p: &str| -> Vec<&Value> { pods.iter().filter(|x| name(x).starts_with(p)).collect() };
    let ubuntu = name(by_prefix("ubuntu-deployment-")[0]);
    let httpbins: Vec<&Value> = by_prefix("httpbin-deployment-");
    assert_eq!(httpbins.len(), 2);
    let ip_of = |p: &Value| p["status"]["podIP"].as_str().unwrap().to_string();
    let httpbin_ips: BTreeMap<String, String> = httpbins
        .iter()
        .map(|p| (format!("{}:80", ip_of(p)), name(p)))
        .collect();
    for p in httpbins.iter().chain(&by_prefix("ubuntu-deployment-")) {
        assert_eq!(containers(p, "initContainers"), ["istio-init"], "{p}");
        // Kubernetes' shape: <deployment>-<pod-template-hash>-<5 characters>.
        let hash = p["metadata"]["labels"]["pod-template-hash"]
            .as_str()
            .unwrap();
        assert!(name(p).contains(&format!("-{hash}-")), "{p}");
    }
    let table = mesh.ok(&["get", "pods"]);
    assert!(table.starts_with("NAME "), "{table}");
    for p in &httpbins {
        assert!(
            table.contains(&format!("{}   2/2     Running   0", name(p))),
            "{table}"
        );
    }
    let services = mesh.ok(&["get", "services"]);
    assert!(
        services.starts_with("NAME              TYPE        CLUSTER-IP"),
        "{services}"
    );
    let vip = services
        .lines()
        .find(|l| l.starts_with("httpbin-service "))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("{services}"))
        .to_string();
    assert!(
        services.contains(&format!("httpbin-service   ClusterIP   {vip}")),
        "{services}"
    );
    assert!(vip.starts_with("10.96."), "{services}");

    // The ubuntu pod: `kubectl get pods -l app=ubuntu` 2/2, containers ubuntu and istio-proxy,
    // from the namespace label alone (ubuntu.yaml is the article's, not injected).
    let ubuntu_table = mesh.ok(&["get", "pods", "-l", "app=ubuntu"]);
    assert!(
        ubuntu_table.contains(&format!("{ubuntu}   2/2     Running   0")),
        "{ubuntu_table}"
    );
    let listed: Value =
        serde_json::from_str(&mesh.ok(&["get", "pods", "-l", "app=ubuntu", "-o", "json"])).unwrap();
    assert_eq!(
        containers(&listed["items"][0], "containers"),
        ["ubuntu", "istio-proxy"]
    );
    // A namespace without the label: no sidecar, no istio-init, no capture rules.
    let legacy = by_prefix("legacy-app-")[0];
    assert_eq!(legacy["metadata"]["namespace"], "legacy");
    assert_eq!(containers(legacy, "containers"), ["legacy-app"], "{legacy}");
    assert!(containers(legacy, "initContainers").is_empty(), "{legacy}");
    // From the node: an app container has no CAP_NET_ADMIN to read them itself, as in a cluster.
    let nat_rules = |ns: &str, pod: &str| {
        let netns = format!("ama.{}.{ns}.{pod}", mesh.name);
        let out = Command::new("ip")
            .args(["netns", "exec", &netns, "iptables-save", "-t", "nat"])
            .output()
            .expect("run ip netns exec");
        assert!(out.status.success(), "iptables-save in {netns}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rules = nat_rules("legacy", &name(legacy));
    assert!(!rules.contains("ISTIO"), "no capture rules:\n{rules}");
    let rules = nat_rules("default", &ubuntu);
    assert!(rules.contains("ISTIO_OUTPUT"), "capture rules:\n{rules}");

    // Step 3: the article's curl, from the ubuntu pod, through both sidecars.
    let out = mesh.ama(&[
        "exec",
        &ubuntu,
        "-c",
        "ubuntu",
        "--",
        "curl",
        "-sv",
        "http://httpbin-service/headers",
    ]);
    let exchange = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("{exchange}{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{exchange}");
    assert!(
        exchange.contains(&format!("Connected to httpbin-service ({vip}) port 80")),
        "{exchange}"
    );
    assert!(exchange.contains("< HTTP/1.1 200 OK"), "{exchange}");
    assert!(exchange.contains("< server: envoy"), "{exchange}");
    assert!(
        exchange.contains("< x-envoy-upstream-service-time: "),
        "{exchange}"
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("httpbin answers JSON");
    let headers = &seen["headers"];
    assert_eq!(headers["Host"], "httpbin-service", "{seen}");
    assert!(
        headers["User-Agent"]
            .as_str()
            .is_some_and(|u| u.starts_with("curl/")),
        "{seen}"
    );
    let hex_of = |h: &str, len: usize| {
        headers[h]
            .as_str()
            .is_some_and(|v| v.len() == len && v.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    assert!(hex_of("X-B3-Traceid", 32), "{seen}");
    assert!(hex_of("X-B3-Spanid", 16), "{seen}");
    assert!(hex_of("X-B3-Parentspanid", 16), "{seen}");
    // Istio samples 1 % of new traces (the reference shows "0"): "1" about one run in a hundred,
    // and the W3C flags must say the same.
    let sampled = headers["X-B3-Sampled"].as_str().unwrap_or("");
    assert!(["0", "1"].contains(&sampled), "{seen}");
    if let Some(traceparent) = headers["Traceparent"].as_str() {
        let flags = if sampled == "1" { "-01" } else { "-00" };
        assert!(traceparent.ends_with(flags), "{seen}");
    }
    // By= the server's id, Hash= the client certificate's SHA-256, URI= the client's id.
    let xfcc = headers["X-Forwarded-Client-Cert"].as_str().unwrap_or("");
    let parts: Vec<&str> = xfcc.split(';').collect();
    assert_eq!(parts.len(), 4, "{xfcc}");
    assert_eq!(parts[0], format!("By={ID}"), "{xfcc}");
    let hash = parts[1].strip_prefix("Hash=").unwrap_or("");
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{xfcc}"
    );
    assert_eq!(parts[2], "Subject=\"\"", "{xfcc}");
    assert_eq!(parts[3], format!("URI={ID}"), "{xfcc}");
    assert!(headers.get("X-Request-Id").is_none(), "hidden: {seen}");

    // Step 4: both sidecars' access logs, followed as the article does.
    let follow = |app: &str| {
        let mut cmd = Command::new(ama());
        cmd.args(["logs", "-l", &format!("app={app}"), "-c", "istio-proxy"])
            .args(["-f", "--tail", "0"])
            .env("AMA_MESH", &mesh.name);
        Proc::spawn(&format!("logs-{app}"), scratch.path(), cmd)
    };
    let (client_log, server_log) = (follow("ubuntu"), follow("httpbin"));
    std::thread::sleep(Duration::from_millis(500));
    let out = mesh.ok(&[
        "exec",
        &ubuntu,
        "--",
        "curl",
        "-sf",
        "http://httpbin-service/headers?show_env=1",
    ]);
    let seen: Value = serde_json::from_str(&out).expect("httpbin answers JSON");
    let request_id = seen["headers"]["X-Request-Id"]
        .as_str()
        .unwrap_or_else(|| panic!("show_env=1 shows X-Request-Id: {seen}"))
        .to_string();
    let line_of = |proc: &Proc, side: &str| {
        wait_for(
            &format!("the {side} sidecar's line"),
            Duration::from_secs(10),
            || {
                access_lines(&proc.out())
                    .into_iter()
                    .find(|l| l["request_id"] == request_id.as_str())
            },
        )
    };
    let client = line_of(&client_log, "client");
    let server = line_of(&server_log, "server");
    eprintln!("client: {client:#}\nserver: {server:#}");
    for line in [&client, &server] {
        assert_eq!(line["authority"], "httpbin-service", "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["path"], "/headers?show_env=1", "{line}");
        assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
        assert_eq!(line["response_code"], "200", "{line}");
        assert_eq!(line["response_flags"], "-", "{line}");
    }
    assert_eq!(client["downstream_local_address"], format!("{vip}:80"));
    assert_eq!(client["upstream_cluster"], format!("outbound|80||{FQDN}"));
    assert_eq!(client["requested_server_name"], "-");
    let upstream = client["upstream_host"].as_str().unwrap_or("");
    let server_pod = httpbin_ips
        .get(upstream)
        .unwrap_or_else(|| panic!("upstream_host {upstream} is a httpbin pod: {httpbin_ips:?}"));
    assert_eq!(server["upstream_cluster"], "inbound|80||");
    assert_eq!(
        server["requested_server_name"],
        format!("outbound_.80_._.{FQDN}")
    );
    assert_eq!(server["downstream_local_address"], upstream);
    // The connection the article traces: the client sidecar's side is the server's peer.
    assert_eq!(
        server["downstream_remote_address"],
        client["upstream_local_address"]
    );
    assert!(
        mesh.access_log(server_pod)
            .iter()
            .any(|l| l["request_id"] == request_id.as_str()),
        "the server line is in {server_pod}'s istio-proxy log"
    );
    drop((client_log, server_log));

    // Step 5: 100 requests over both replicas (each server sidecar logs its share).
    let codes = mesh.ok(&[
        "exec",
        &ubuntu,
        "--",
        "sh",
        "-c",
        "for i in $(seq 100); do curl -s -o /dev/null -w '%{http_code}\\n' \
         http://httpbin-service/get?spread=$i; done",
    ]);
    assert_eq!(
        codes.lines().filter(|c| *c == "200").count(),
        100,
        "{codes}"
    );
    let counts = wait_for("100 server lines", Duration::from_secs(10), || {
        let counts: Vec<(String, usize)> = httpbin_ips
            .values()
            .map(|pod| {
                let n = mesh
                    .access_log(pod)
                    .iter()
                    .filter(|l| {
                        l["path"]
                            .as_str()
                            .is_some_and(|p| p.starts_with("/get?spread="))
                    })
                    .count();
                (pod.clone(), n)
            })
            .collect();
        (counts.iter().map(|(_, n)| n).sum::<usize>() == 100).then_some(counts)
    });
    eprintln!("100 requests: {counts:?}");
    assert!(counts.iter().all(|(_, n)| *n >= 25), "{counts:?}");

    // Each container sees the machine as a container would (issue 13 item 7): the pod's
    // hostname, none of the mesh's state (the CA's key, the pods' tokens), Kubernetes' default
    // capabilities only; the sidecar sees its own token and no other; plaintext ADS (15010)
    // listens on discovery's loopback only.
    let in_app = |argv: &[&str]| {
        let mut args = vec!["exec", ubuntu.as_str(), "-c", "ubuntu", "--"];
        args.extend_from_slice(argv);
        mesh.ama(&args)
    };
    let hostname = in_app(&["hostname"]);
    assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), ubuntu);
    let state = format!("/run/ama/{}", mesh.name);
    let key = in_app(&["cat", &format!("{state}/ca/ca-key.pem")]);
    assert!(
        !key.status.success() && key.stdout.is_empty(),
        "the app read the CA's key"
    );
    let tokens = in_app(&["ls", "-R", &format!("{state}/tokens")]);
    assert!(!tokens.status.success(), "the app sees the tokens");
    let umount = in_app(&["umount", "/run/ama"]);
    assert!(!umount.status.success(), "the app unhid the mesh's state");
    let discovery_root = in_app(&["sh", "-c", "cat /proc/*/root/run/ama/*/ca/ca-key.pem"]);
    assert!(
        discovery_root.stdout.is_empty(),
        "the app read the CA's key through another process's root"
    );
    let seen = mesh.ok(&[
        "exec",
        &ubuntu,
        "-c",
        "istio-proxy",
        "--",
        "find",
        &format!("{state}/tokens"),
        "-type",
        "f",
    ]);
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        [format!("{state}/tokens/default/default/{ubuntu}")],
        "the sidecar sees its own token only"
    );
    let listening = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("ama.{}.lan", mesh.name),
            "ss",
            "-ltn",
        ])
        .output()
        .expect("run ss");
    let listening = String::from_utf8_lossy(&listening.stdout);
    assert!(listening.contains("127.0.0.1:15010 "), "{listening}");
    assert!(!listening.contains("0.0.0.0:15010 "), "{listening}");

    // Step 6: a change while it runs: a new Service reaches the proxies and the hosts files.
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
    assert_eq!(netns_of(&mesh.name).len(), 6, "5 pods and the LAN");

    // Step 7.
    mesh.down_leaves_nothing();
    eprintln!("article_under_ama_up: {:?}", started.elapsed());
}

/// No control-plane process: `ama up` writes each proxy's resources (`--config`); no CA, so
/// the sidecars talk plaintext.
#[test]
fn seed_under_ama_up_with_resource_files() {
    if !root_or_skip("seed_under_ama_up_with_resource_files") {
        return;
    }
    let scratch = Scratch::new("up");
    let dir = seed_dir(&scratch);
    let mesh = Mesh::start("f", &dir, scratch.path(), &["--xds", "files"]);
    let pods = mesh.wait_ready(4);
    let ubuntu = pods
        .iter()
        .map(name)
        .find(|n| n.starts_with("ubuntu-deployment-"))
        .unwrap();
    let out = mesh.ok(&[
        "exec",
        &ubuntu,
        "--",
        "curl",
        "-sf",
        "http://httpbin-service/headers",
    ]);
    let seen: Value = serde_json::from_str(&out).expect("httpbin answers JSON");
    assert_eq!(seen["headers"]["Host"], "httpbin-service", "{seen}");
    assert_eq!(
        seen["headers"].get("X-Forwarded-Client-Cert"),
        None,
        "no CA, no mTLS: {seen}"
    );
    mesh.down_leaves_nothing();
}

/// Without root: `ama up` refuses at once, in one message that says to use sudo and what a
/// rootless mode would need here, and makes nothing (run as nobody through `setpriv`).
#[test]
fn up_without_root_refuses_at_once() {
    if !root_or_skip("up_without_root_refuses_at_once") {
        return;
    }
    let scratch = Scratch::new("up");
    let dir = seed_dir(&scratch);
    let mesh = format!("e2en{}", std::process::id() % 100_000);
    let started = Instant::now();
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(ama())
        .arg("up")
        .arg(&dir)
        .args(["--name", &mesh])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run setpriv");
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(!out.status.success(), "{out:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        err.starts_with("error: ama up needs root") && err.contains("run it with sudo"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one message: {err}");
    assert_eq!(netns_of(&mesh), Vec::<String>::new());
    assert!(!Path::new(&format!("/tmp/ama-65534/{mesh}")).exists());
}
