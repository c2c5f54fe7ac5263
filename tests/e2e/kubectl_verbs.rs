//! kubectl's everyday verbs under `ama up`, with the real binary on the seed (`examples/seed`:
//! httpbin ×2 and ubuntu in an injected `default`):
//!
//! - `ama get` of several kinds (`pods,deployments,services`: a block each, `kind/name`), `all`,
//!   deployments, replicasets, endpoints, namespaces, configmaps (`-A`), Istio kinds with their
//!   printer columns, `-l`, `-o name`, `-o json` parsed; an unknown kind and a missing name fail.
//! - `ama apply -f DIR` (the directory's files only) then `-R` (its subdirectory too).
//! - An ambiguous pod prefix (`ama exec httpbin`) names the candidates and fails; `ama exec`
//!   runs in the pod's hostname, mount namespace and hosts file.
//! - `ama scale deployment/httpbin-deployment --replicas=3`: the new pod becomes an endpoint and
//!   requests from ubuntu reach it (its sidecar's access log); `--replicas=1`: the endpoints
//!   follow and every request still gets a 200.
//! - A failing liveness probe kills and restarts its container (RESTARTS counts it, `describe
//!   pod` shows the Killing event), so does a failing startup probe; a `grpc` probe is said to
//!   be left out on `ama up`'s output; an `exec` readiness probe passes once its command does; a
//!   readiness `initialDelaySeconds` of an hour keeps its pod Running but unready and out of its
//!   Service's endpoints while a twin without the delay is ready; `restartPolicy: Never` leaves
//!   an exited container Error with no restart, `OnFailure` leaves a zero exit Completed.
//! - `holdApplicationUntilProxyStarts` (the pod's `proxy.istio.io/config`): an app that exits
//!   unless its sidecar answers `/healthz/ready` when it starts runs at its first start.
//! - `ama describe pod` in kubectl's layout.
//!
//! The mesh is brought down when the test ends, passing or not.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::up::{UpMesh, name, ready};
use e2e::{Scratch, root_or_skip, wait_for, workspace};
use serde_json::Value;

/// Applied with `-f DIR`: a VirtualService and a DestinationRule for httpbin.
const ROUTES: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: [httpbin-service]
  http:
  - route:
    - destination: {host: httpbin-service}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin-service
";

/// In DIR's subdirectory: applied by `-R` only.
const ENTRY: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: example
spec:
  hosts: [example.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
";

/// Pods that show the probes and the restart policies.
const PROBES: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: flaky
spec:
  replicas: 1
  selector: {matchLabels: {app: flaky}}
  template:
    metadata:
      labels: {app: flaky}
      annotations:
        local.ama.dev/command: "ama sample httpbin --port 8080"
    spec:
      containers:
      - name: flaky
        image: kong/httpbin
        ports: [{containerPort: 8080}]
        livenessProbe:
          httpGet: {path: /status/500, port: 8080}
          initialDelaySeconds: 1
          periodSeconds: 1
          failureThreshold: 2
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: starting
spec:
  replicas: 1
  selector: {matchLabels: {app: starting}}
  template:
    metadata:
      labels: {app: starting}
      annotations:
        local.ama.dev/command: "ama sample httpbin --port 8080"
    spec:
      containers:
      - name: starting
        image: kong/httpbin
        ports: [{containerPort: 8080}]
        startupProbe:
          httpGet: {path: /status/503, port: 8080}
          periodSeconds: 1
          failureThreshold: 2
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: touched
spec:
  replicas: 1
  selector: {matchLabels: {app: touched}}
  template:
    metadata:
      labels: {app: touched}
      annotations:
        local.ama.dev/command: "ama sample httpbin --port 8080"
    spec:
      containers:
      - name: touched
        image: kong/httpbin
        readinessProbe:
          exec: {command: [cat, "@HEALTHY@"]}
          periodSeconds: 1
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: slow
spec:
  replicas: 1
  selector: {matchLabels: {app: slow}}
  template:
    metadata:
      labels: {app: slow}
      annotations:
        local.ama.dev/command: "ama sample httpbin --port 8080"
    spec:
      containers:
      - name: slow
        image: kong/httpbin
        ports: [{containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /status/200, port: 8080}
          initialDelaySeconds: 3600
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: quick
spec:
  replicas: 1
  selector: {matchLabels: {app: quick}}
  template:
    metadata:
      labels: {app: quick}
      annotations:
        local.ama.dev/command: "ama sample httpbin --port 8080"
    spec:
      containers:
      - name: quick
        image: kong/httpbin
        ports: [{containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /status/200, port: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: slow
spec:
  selector: {app: slow}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: once
  annotations:
    sidecar.istio.io/inject: "false"
    local.ama.dev/command: "sh -c 'exit 3'"
spec:
  restartPolicy: Never
  containers:
  - name: once
    image: busybox
---
apiVersion: v1
kind: Pod
metadata:
  name: done
  annotations:
    sidecar.istio.io/inject: "false"
    local.ama.dev/command: "true"
spec:
  restartPolicy: OnFailure
  containers:
  - name: done
    image: busybox
    readinessProbe:
      grpc: {port: 9090}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: held
spec:
  replicas: 1
  selector: {matchLabels: {app: held}}
  template:
    metadata:
      labels: {app: held}
      annotations:
        proxy.istio.io/config: "holdApplicationUntilProxyStarts: true"
        local.ama.dev/command: "sh -c 'curl -sf -o /dev/null http://127.0.0.1:15021/healthz/ready && exec sleep infinity'"
    spec:
      containers:
      - name: held
        image: busybox
"#;

/// The seed's YAML in a fresh directory.
fn seed_dir(scratch: &Scratch) -> PathBuf {
    let dir = scratch.path().join("seed");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(workspace().join("examples/seed")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The items of `ama get ... -o json`.
fn items(mesh: &UpMesh, args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let list: Value = serde_json::from_str(&mesh.ok(&all)).expect("-o json is JSON");
    assert_eq!(list["kind"], "List");
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The pod of `mesh` whose name starts with `prefix`.
fn pod_named(mesh: &UpMesh, prefix: &str) -> Option<Value> {
    mesh.pods()
        .into_iter()
        .find(|p| name(p).starts_with(prefix))
}

fn container_status<'a>(pod: &'a Value, container: &str) -> Option<&'a Value> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == container)
}

/// `curl` from the ubuntu pod: the HTTP status.
fn curl(mesh: &UpMesh, ubuntu: &str, url: &str) -> String {
    let out = mesh.ama(&[
        "exec",
        ubuntu,
        "--",
        "curl",
        "-s",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kubectl_verbs() {
    if !root_or_skip("kubectl_verbs") {
        return;
    }
    let scratch = Scratch::new("kverbs");
    let dir = seed_dir(&scratch);
    let mesh = UpMesh::start("kv", &dir, scratch.path(), &[]);
    let pods = mesh.wait_ready(3);
    let ubuntu = pods
        .iter()
        .map(name)
        .find(|n| n.starts_with("ubuntu-deployment-"))
        .unwrap();

    // get: several kinds, each a block with kind/name.
    let out = mesh.ok(&["get", "pods,deployments,services"]);
    eprintln!("{out}");
    let blocks: Vec<&str> = out.split("\n\n").collect();
    assert_eq!(blocks.len(), 3, "{out}");
    assert!(blocks[0].starts_with("NAME ") && blocks[0].contains("pod/httpbin-deployment-"));
    assert!(
        blocks[1]
            .lines()
            .any(|l| l.starts_with("deployment.apps/httpbin-deployment   2/2     2            2 ")),
        "{out}"
    );
    assert!(
        blocks[2].contains("service/httpbin-service   ClusterIP"),
        "{out}"
    );
    let all = mesh.ok(&["get", "all"]);
    assert_eq!(all.split("\n\n").count(), 4, "{all}");
    assert!(all.contains("replicaset.apps/httpbin-deployment-"), "{all}");
    let rs = mesh.ok(&["get", "rs", "-l", "app=httpbin"]);
    assert!(
        rs.starts_with("NAME ") && rs.contains("DESIRED   CURRENT   READY   AGE"),
        "{rs}"
    );
    assert_eq!(rs.lines().count(), 2, "{rs}");
    let deployments = items(&mesh, &["get", "deploy"]);
    assert_eq!(deployments.len(), 2);
    let httpbin = deployments
        .iter()
        .find(|d| d["metadata"]["name"] == "httpbin-deployment")
        .unwrap();
    assert_eq!(httpbin["status"]["readyReplicas"], 2);
    let ns = mesh.ok(&["get", "namespaces"]);
    assert!(
        ns.lines()
            .any(|l| l.split_whitespace().take(2).eq(["default", "Active"])),
        "{ns}"
    );
    let cms = mesh.ok(&["get", "cm", "-A"]);
    assert!(cms.contains("istio-system   istio   "), "{cms}");
    let names = mesh.ok(&["get", "deploy", "-o", "name"]);
    assert_eq!(
        names,
        "deployment.apps/httpbin-deployment\ndeployment.apps/ubuntu-deployment\n"
    );
    let bad = mesh.ama(&["get", "deploymnets"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("doesn't have a resource type"));
    let missing = mesh.ama(&["get", "deploy", "nope"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("Error from server (NotFound): deployments.apps \"nope\" not found")
    );

    // apply -f DIR, then -R.
    let config = scratch.path().join("config");
    write(&config.join("routes.yaml"), ROUTES);
    write(&config.join("notes.txt"), "not YAML");
    write(&config.join("more/entry.yaml"), ENTRY);
    let out = mesh.ok(&["apply", "-f", config.to_str().unwrap()]);
    assert_eq!(
        out,
        "virtualservice.networking.istio.io/httpbin created\n\
         destinationrule.networking.istio.io/httpbin created\n"
    );
    let vs = mesh.ok(&["get", "vs"]);
    let words = |line: Option<&str>| -> Vec<String> {
        line.unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(
        words(vs.lines().next()),
        ["NAME", "GATEWAYS", "HOSTS", "AGE"],
        "{vs}"
    );
    // No gateways: an empty cell.
    assert_eq!(
        words(vs.lines().nth(1))[..2],
        ["httpbin", "[\"httpbin-service\"]"],
        "{vs}"
    );
    let none = mesh.ama(&["get", "se"]);
    assert!(none.status.success() && none.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&none.stderr),
        "No resources found in default namespace.\n",
        "on standard error, as kubectl says it"
    );
    let out = mesh.ok(&["apply", "-R", "-f", config.to_str().unwrap()]);
    assert!(
        out.contains("serviceentry.networking.istio.io/example created"),
        "{out}"
    );
    assert!(
        out.contains("virtualservice.networking.istio.io/httpbin unchanged"),
        "{out}"
    );
    let se = mesh.ok(&["get", "serviceentries"]);
    assert!(
        se.contains("[\"example.test\"]   MESH_EXTERNAL   DNS"),
        "{se}"
    );
    let dr = mesh.ok(&["get", "dr"]);
    assert_eq!(words(dr.lines().next()), ["NAME", "HOST", "AGE"], "{dr}");
    assert_eq!(
        words(dr.lines().nth(1))[..2],
        ["httpbin", "httpbin-service"],
        "{dr}"
    );

    // An ambiguous pod prefix.
    let out = mesh.ama(&["exec", "httpbin-deployment", "--", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is ambiguous"), "{err}");
    for p in pods.iter().map(name).filter(|n| n.starts_with("httpbin-")) {
        assert!(err.contains(&p), "{err}");
    }

    // exec: in the pod's hostname, its own mount namespace and hosts file.
    assert_eq!(mesh.ok(&["exec", &ubuntu, "--", "hostname"]).trim(), ubuntu);
    let hosts = mesh.ok(&["exec", &ubuntu, "--", "cat", "/etc/hosts"]);
    assert!(
        hosts.contains(" httpbin-service.default.svc.cluster.local"),
        "{hosts}"
    );
    let mnt = mesh.ok(&["exec", &ubuntu, "--", "readlink", "/proc/self/ns/mnt"]);
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(
        mnt.trim(),
        ours.to_string_lossy(),
        "a mount namespace of its own"
    );

    // scale up: the new pod is an endpoint and requests reach it.
    let before: Vec<String> = pods.iter().map(name).collect();
    assert_eq!(
        mesh.ok(&["scale", "deployment/httpbin-deployment", "--replicas=3"]),
        "deployment.apps/httpbin-deployment scaled\n"
    );
    let pods = mesh.wait_ready(4);
    let new = pods
        .iter()
        .map(name)
        .find(|n| !before.contains(n))
        .expect("a new pod");
    let ep = mesh.ok(&["get", "endpoints", "httpbin-service"]);
    assert_eq!(ep.matches(":80").count(), 3, "{ep}");
    wait_for(
        "a request served by the new pod",
        Duration::from_secs(60),
        || {
            assert_eq!(
                curl(&mesh, &ubuntu, "http://httpbin-service/anything/scaled"),
                "200"
            );
            let log = mesh.ok(&["logs", &new, "-c", "istio-proxy"]);
            log.contains("/anything/scaled").then_some(())
        },
    );

    // scale down: the endpoints follow, and every request gets its 200.
    mesh.ok(&["scale", "deployment", "httpbin-deployment", "--replicas=1"]);
    mesh.wait_ready(2);
    wait_for("one endpoint", Duration::from_secs(30), || {
        let ep = mesh.ok(&["get", "ep", "httpbin-service"]);
        (ep.matches(":80").count() == 1).then_some(())
    });
    for _ in 0..10 {
        assert_eq!(curl(&mesh, &ubuntu, "http://httpbin-service/get"), "200");
    }

    // Probes and restart policies.
    let probes = scratch.path().join("probes.yaml");
    let healthy = scratch.path().join("healthy");
    write(
        &probes,
        &PROBES.replace("@HEALTHY@", healthy.to_str().unwrap()),
    );
    mesh.ok(&["apply", "-f", probes.to_str().unwrap()]);
    let quick = wait_for("quick ready", Duration::from_secs(60), || {
        pod_named(&mesh, "quick-").filter(ready)
    });
    eprintln!("{} ready", name(&quick));
    let flaky = wait_for("flaky restarted twice", Duration::from_secs(90), || {
        let pod = pod_named(&mesh, "flaky-")?;
        let restarts = container_status(&pod, "flaky")?["restartCount"].as_u64()?;
        (restarts >= 2).then_some(pod)
    });
    let pods_table = mesh.ok(&["get", "pods", "-l", "app=flaky"]);
    assert!(
        pods_table.contains(" (") && pods_table.contains(" ago)"),
        "{pods_table}"
    );
    let described = mesh.ok(&["describe", "pod", &name(&flaky)]);
    eprintln!("{described}");
    let first_line = format!("Name:             {}", name(&flaky));
    for want in [
        first_line.as_str(),
        "Namespace:        default",
        "Controlled By:  ReplicaSet/flaky-",
        "Containers:\n  flaky:\n",
        "    Liveness:       http-get http://:15020/app-health/flaky/livez delay=1s timeout=1s period=1s #success=1 #failure=2",
        "Conditions:\n  Type              Status\n",
        "Container flaky failed liveness probe, will be restarted",
        "Liveness probe failed: http-get http://:15020/app-health/flaky/livez",
    ] {
        assert!(described.contains(want), "{want:?} in:\n{described}");
    }
    // A failing startup probe restarts its container too; a gRPC probe of a pod without a
    // sidecar (one with a sidecar has its app probes rewritten to the proxy's status port) is
    // said to be left out.
    let starting = wait_for("starting restarted", Duration::from_secs(60), || {
        let pod = pod_named(&mesh, "starting-")?;
        let restarts = container_status(&pod, "starting")?["restartCount"].as_u64()?;
        (restarts >= 1).then_some(pod)
    });
    let text = mesh.ok(&["describe", "pod", &name(&starting)]);
    assert!(text.contains("    Startup:        http-get http://:15020/app-health/starting/startupz delay=0s timeout=1s period=1s #success=1 #failure=2"), "{text}");
    assert!(
        text.contains("Container starting failed startup probe, will be restarted"),
        "{text}"
    );
    assert!(
        mesh.up_out()
            .contains("pod done: container done: readinessProbe.grpc is not run by ama up"),
        "{}",
        mesh.up_out()
    );

    // An exec probe runs in the container: not ready until the file is there.
    let touched = pod_named(&mesh, "touched-").expect("touched pod");
    assert_eq!(
        container_status(&touched, "touched").unwrap()["ready"],
        false
    );
    write(&healthy, "yes");
    wait_for("touched ready", Duration::from_secs(30), || {
        pod_named(&mesh, "touched-").filter(ready)
    });

    // The readiness delay: Running, not ready, not an endpoint, while `quick` was ready.
    let slow = pod_named(&mesh, "slow-").expect("slow pod");
    assert_eq!(slow["status"]["phase"], "Running");
    let app = container_status(&slow, "slow").unwrap();
    assert_eq!(app["ready"], false, "{slow}");
    assert!(app["state"]["running"].is_object(), "{slow}");
    let ep = mesh.ok(&["get", "ep", "slow"]);
    assert!(
        ep.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("slow   <none>   ")),
        "{ep}"
    );
    let slow_text = mesh.ok(&["describe", "pod", &name(&slow)]);
    assert!(slow_text.contains("delay=3600s"), "{slow_text}");
    // restartPolicy: Never keeps the failed container down, OnFailure the completed one.
    let once = wait_for("once exited", Duration::from_secs(30), || {
        let p = pod_named(&mesh, "once")?;
        let c = container_status(&p, "once")?;
        c["state"]["terminated"].is_object().then(|| p.clone())
    });
    let c = container_status(&once, "once").unwrap();
    assert_eq!(c["state"]["terminated"]["exitCode"], 3);
    assert_eq!(
        c["restartCount"], 0,
        "flaky restarted twice meanwhile; once never"
    );
    let table = mesh.ok(&["get", "pod", "once", "done"]);
    assert!(table.contains("once   0/1     Error"), "{table}");
    let done = pod_named(&mesh, "done").unwrap();
    assert_eq!(container_status(&done, "done").unwrap()["restartCount"], 0);
    assert!(table.contains("done   0/1     Completed"), "{table}");

    // holdApplicationUntilProxyStarts: the app found its proxy ready at its first start.
    let held = wait_for("held ready", Duration::from_secs(60), || {
        pod_named(&mesh, "held-").filter(ready)
    });
    assert_eq!(
        container_status(&held, "held").unwrap()["restartCount"],
        0,
        "{held}"
    );
}
