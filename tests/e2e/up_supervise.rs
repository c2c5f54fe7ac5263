//! `ama up` as a supervisor, with the real binary under `ama up examples/seed`:
//!
//! - [`discovery_is_restarted_and_apply_fails_without_it`]: `kill -9` of `ama discovery` is
//!   reported on up's output, the process is reaped (no zombie) and restarted with the same CA,
//!   and a later `ama apply` reaches the proxies through the new process; while discovery cannot
//!   answer (stopped with SIGSTOP), `ama apply` exits non-zero and says so. A killed app
//!   container is restarted and counted in RESTARTS as kubectl shows it (`1 (5s ago)`).
//! - [`rollout_under_load_loses_nothing`]: a new httpbin template applied while eight curl loops
//!   in the ubuntu pod send requests: the Deployment rolls (maxSurge/maxUnavailable 25 %,
//!   readiness gated, old endpoints drained before their processes stop) and every request
//!   gets a 200, two 6-second requests in flight on the old pods too.
//! - [`recreate_removes_every_old_pod_first`]: `strategy: Recreate` never runs old and new pods
//!   together.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::up::{UpMesh, name, ready};
use e2e::{Proc, Scratch, ama, root_or_skip, wait_for, workspace};
use serde_json::Value;

/// Applied after discovery was restarted: a second Service in front of httpbin.
const ALIAS: &str = "
apiVersion: v1
kind: Service
metadata:
  name: httpbin-alias
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 80, targetPort: 80}]
";

/// Applied while discovery is stopped.
const ALIAS2: &str = "
apiVersion: v1
kind: Service
metadata:
  name: httpbin-alias2
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 80, targetPort: 80}]
";

/// `ama up` in the background ([`UpMesh`]); whatever a test did to discovery (SIGSTOP), it
/// lets it go on before the mesh is brought down.
struct Mesh(UpMesh);

impl std::ops::Deref for Mesh {
    type Target = UpMesh;
    fn deref(&self) -> &UpMesh {
        &self.0
    }
}

impl Mesh {
    fn start(tag: &str, dir: &Path, logs: &Path) -> Mesh {
        Mesh(UpMesh::start(tag, dir, logs, &[]))
    }

    /// `curl -s -o /dev/null -w %{http_code} URL` from `pod`.
    fn status_from(&self, pod: &str, url: &str) -> String {
        let out = self.ama(&[
            "exec",
            pod,
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

    /// Writes `text` to a file and `ama apply`s it.
    fn apply(&self, scratch: &Scratch, file: &str, text: &str) -> Output {
        let path = scratch.path().join(file);
        std::fs::write(&path, text).unwrap();
        self.ama(&["apply", "-f", path.to_str().unwrap()])
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(pid) = discovery_pid(&self.name) {
            signal(pid, libc::SIGCONT);
        }
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid of the mesh this test started.
    unsafe { libc::kill(pid, sig) };
}

/// The argv of process `pid`.
fn argv(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The state letter of process `pid` (`R`, `S`, `Z` …), None when there is no such process.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The pid of the mesh's `ama discovery` (not a zombie).
fn discovery_pid(mesh: &str) -> Option<i32> {
    let needle = format!("/run/ama/{mesh}/");
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let a = argv(*pid);
            a.get(1).is_some_and(|s| s == "discovery")
                && a.iter().any(|s| s.contains(&needle))
                && proc_state(*pid).is_some_and(|s| s != 'Z')
        })
}

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

#[test]
fn discovery_is_restarted_and_apply_fails_without_it() {
    if !root_or_skip("discovery_is_restarted_and_apply_fails_without_it") {
        return;
    }
    let scratch = Scratch::new("sup");
    let dir = seed_dir(&scratch);
    let mesh = Mesh::start("s", &dir, scratch.path());
    let pods = mesh.wait_ready(3);
    let ubuntu = pods
        .iter()
        .map(name)
        .find(|n| n.starts_with("ubuntu-deployment-"))
        .unwrap();
    assert_eq!(
        mesh.status_from(&ubuntu, "http://httpbin-service/get"),
        "200"
    );
    let root_cert = |m: &Mesh| std::fs::read(format!("/run/ama/{}/root-cert.pem", m.name)).ok();
    let root_before = root_cert(&mesh).expect("root-cert.pem");

    // kill -9: reported, reaped, restarted.
    let first = discovery_pid(&mesh.name).expect("ama discovery runs");
    signal(first, libc::SIGKILL);
    let line = wait_for("up's report of the exit", Duration::from_secs(10), || {
        mesh.up_out()
            .lines()
            .find(|l| l.contains("discovery exited (signal 9"))
            .map(str::to_string)
    });
    eprintln!("{line}");
    assert!(line.contains("restarting in 1s (restart 1)"), "{line}");
    let second = wait_for("a new ama discovery", Duration::from_secs(20), || {
        discovery_pid(&mesh.name).filter(|p| *p != first)
    });
    assert_ne!(
        proc_state(first),
        Some('Z'),
        "the killed discovery is reaped"
    );
    wait_for("restarted discovery ready", Duration::from_secs(30), || {
        let state = mesh.state();
        (state["discovery"]["ready"] == true).then_some(())
    });
    assert_eq!(mesh.state()["discovery"]["restarts"], 1);
    assert_eq!(
        root_cert(&mesh).as_deref(),
        Some(root_before.as_slice()),
        "the same CA"
    );

    // A change after the restart reaches the proxies, which reconnected.
    let out = mesh.apply(&scratch, "alias.yaml", ALIAS);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        mesh.up_out()
    );
    wait_for("httpbin-alias to answer", Duration::from_secs(30), || {
        (mesh.status_from(&ubuntu, "http://httpbin-alias/get") == "200").then_some(())
    });
    assert_eq!(
        mesh.status_from(&ubuntu, "http://httpbin-service/get"),
        "200"
    );

    // Discovery cannot answer: apply says so and exits non-zero.
    signal(second, libc::SIGSTOP);
    let out = mesh.apply(&scratch, "alias2.yaml", ALIAS2);
    signal(second, libc::SIGCONT);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("apply while discovery is stopped: {err}");
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("ama discovery is not ready"), "{err}");
    assert!(err.contains("discovery.log"), "{err}");

    // A killed app container: restarted, counted as kubectl shows it.
    let state = mesh.state();
    let httpbin = state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["name"]
                .as_str()
                .unwrap()
                .starts_with("httpbin-deployment-")
        })
        .unwrap();
    let pod = httpbin["name"].as_str().unwrap().to_string();
    let pid = httpbin["containers"][0]["pid"].as_i64().unwrap() as i32;
    signal(-pid, libc::SIGKILL);
    let row = wait_for("RESTARTS 1", Duration::from_secs(30), || {
        mesh.ok(&["get", "pods"])
            .lines()
            .find(|l| l.starts_with(&pod) && l.contains("2/2") && l.contains(" 1 ("))
            .map(str::to_string)
    });
    eprintln!("{row}");
    assert!(row.contains(" ago)"), "{row}");
    assert!(
        mesh.up_out().contains(&format!(
            "pod/{pod}: container httpbin exited (signal 9); restarting in 1s (restart 1"
        )),
        "{}",
        mesh.up_out()
    );

    // A killed sidecar: restarted, it gets a certificate again and serves the pod.
    let sidecar = mesh.state()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pod.as_str())
        .map(|p| p["containers"][1].clone())
        .unwrap();
    assert_eq!(sidecar["name"], "istio-proxy");
    signal(-(sidecar["pid"].as_i64().unwrap() as i32), libc::SIGKILL);
    wait_for("RESTARTS 2", Duration::from_secs(30), || {
        mesh.ok(&["get", "pods"])
            .lines()
            .find(|l| l.starts_with(&pod) && l.contains("2/2") && l.contains(" 2 ("))
            .map(str::to_string)
    });
    let ip = httpbin["ip"].as_str().unwrap();
    wait_for(
        "the pod behind its restarted sidecar",
        Duration::from_secs(20),
        || (mesh.status_from(&ubuntu, &format!("http://{ip}/get")) == "200").then_some(()),
    );
    let down = mesh.ok(&["down"]);
    assert!(down.contains("stopped"), "{down}");
}

/// One curl loop in the ubuntu pod: a line `CODE` per request until `stop` exists.
fn load_loop(mesh: &Mesh, pod: &str, stop: &str, scratch: &Scratch, i: usize) -> Proc {
    let script = format!(
        "while [ ! -e {stop} ]; do curl -s -o /dev/null -m 10 -w '%{{http_code}}\\n' \
         http://httpbin-service/get; done"
    );
    let mut cmd = Command::new(ama());
    cmd.args(["exec", pod, "--", "sh", "-c", &script])
        .env("AMA_MESH", &mesh.name);
    Proc::spawn(&format!("load{i}"), scratch.path(), cmd)
}

#[test]
fn rollout_under_load_loses_nothing() {
    if !root_or_skip("rollout_under_load_loses_nothing") {
        return;
    }
    let scratch = Scratch::new("roll");
    let dir = seed_dir(&scratch);
    let mesh = Mesh::start("r", &dir, scratch.path());
    let pods = mesh.wait_ready(3);
    let ubuntu = pods
        .iter()
        .map(name)
        .find(|n| n.starts_with("ubuntu-deployment-"))
        .unwrap();
    let old: Vec<String> = pods
        .iter()
        .map(name)
        .filter(|n| n.starts_with("httpbin-deployment-"))
        .collect();
    // Whatever the client sidecar learnt at start-up is in place.
    wait_for("httpbin answers", Duration::from_secs(20), || {
        (mesh.status_from(&ubuntu, "http://httpbin-service/get") == "200").then_some(())
    });

    let stop = scratch.path().join("stop");
    let stop = stop.to_str().unwrap();
    let load_started = Instant::now();
    let mut loops: Vec<Proc> = (0..8)
        .map(|i| load_loop(&mesh, &ubuntu, stop, &scratch, i))
        .collect();
    let counted = |loops: &[Proc]| -> (usize, Vec<String>) {
        let mut total = 0;
        let mut bad = Vec::new();
        for l in loops {
            for code in l.out().lines() {
                total += 1;
                if code != "200" {
                    bad.push(code.to_string());
                }
            }
        }
        (total, bad)
    };
    wait_for("load running", Duration::from_secs(20), || {
        (counted(&loops).0 > 50).then_some(())
    });

    // Requests in flight on the old pods when they are deleted: they finish (the pods drain).
    let slow: Vec<Proc> = (0..2)
        .map(|i| {
            let mut cmd = Command::new(ama());
            cmd.args([
                "exec",
                &ubuntu,
                "--",
                "curl",
                "-s",
                "-m",
                "30",
                "-o",
                "/dev/null",
            ])
            .args(["-w", "%{http_code}", "http://httpbin-service/delay/6"])
            .env("AMA_MESH", &mesh.name);
            Proc::spawn(&format!("slow{i}"), scratch.path(), cmd)
        })
        .collect();
    // A new template: the pods are replaced under load.
    let changed = std::fs::read_to_string(dir.join("httpbin.yaml"))
        .unwrap()
        .replace(
            "app: httpbin\n      annotations:",
            "app: httpbin\n        version: v2\n      annotations:",
        );
    assert!(changed.contains("version: v2"), "{changed}");
    let out = mesh.apply(&scratch, "v2.yaml", &changed);
    assert!(out.status.success(), "{out:?}");
    let new = wait_for("the rollout", Duration::from_secs(120), || {
        let pods = mesh.pods();
        let httpbin: Vec<&Value> = pods
            .iter()
            .filter(|p| name(p).starts_with("httpbin-deployment-"))
            .collect();
        let done = httpbin.len() == 2
            && httpbin
                .iter()
                .all(|p| ready(p) && p["metadata"]["labels"]["version"] == "v2");
        done.then(|| httpbin.iter().map(|p| name(p)).collect::<Vec<_>>())
    });
    assert!(new.iter().all(|n| !old.contains(n)), "{new:?} {old:?}");
    // The old pods are drained and stopped while the load still runs; then a little more load
    // on the new ones.
    wait_for("the old pods gone", Duration::from_secs(60), || {
        let pods = mesh.pods();
        (!pods.iter().any(|p| old.contains(&name(p)))).then_some(())
    });
    let before = counted(&loops).0;
    wait_for("more requests", Duration::from_secs(20), || {
        (counted(&loops).0 > before + 50).then_some(())
    });
    std::fs::write(stop, "").unwrap();
    for l in &mut loops {
        // Signal 0: no signal, only the wait (each loop ends after its current request).
        let ended = l.signal_and_wait(0, Duration::from_secs(20));
        assert!(ended.is_some(), "load loop {} ends", l.name);
    }
    let (total, bad) = counted(&loops);
    let took = load_started.elapsed();
    eprintln!(
        "rollout under load: {total} requests in {took:?}, {} not 200: {bad:?}",
        bad.len()
    );
    for mut s in slow {
        let ended = s.signal_and_wait(0, Duration::from_secs(30));
        assert!(ended.is_some(), "{} ends", s.name);
        assert_eq!(s.out(), "200", "a request in flight on a deleted pod");
    }
    eprintln!("{}", mesh.up_out());
    assert!(total > 100, "{total}");
    assert_eq!(
        bad,
        Vec::<String>::new(),
        "requests lost during the rollout"
    );
}

/// `strategy: Recreate`: every old pod is gone (processes stopped, namespace removed) before a
/// new one is created; `ama get pods` never lists both.
#[test]
fn recreate_removes_every_old_pod_first() {
    if !root_or_skip("recreate_removes_every_old_pod_first") {
        return;
    }
    let scratch = Scratch::new("recreate");
    let dir = seed_dir(&scratch);
    let mesh = Mesh::start("c", &dir, scratch.path());
    let pods = mesh.wait_ready(3);
    let old: Vec<String> = pods
        .iter()
        .map(name)
        .filter(|n| n.starts_with("httpbin-deployment-"))
        .collect();
    let changed = std::fs::read_to_string(dir.join("httpbin.yaml"))
        .unwrap()
        .replace(
            "  replicas: 2\n",
            "  replicas: 2\n  strategy: {type: Recreate}\n",
        )
        .replace(
            "app: httpbin\n      annotations:",
            "app: httpbin\n        version: v2\n      annotations:",
        );
    assert!(changed.contains("Recreate") && changed.contains("version: v2"));
    let out = mesh.apply(&scratch, "recreate.yaml", &changed);
    assert!(out.status.success(), "{out:?}");
    let mut seen_old_gone = false;
    wait_for("the new pods", Duration::from_secs(90), || {
        let pods = mesh.pods();
        let httpbin: Vec<&Value> = pods
            .iter()
            .filter(|p| name(p).starts_with("httpbin-deployment-"))
            .collect();
        let olds = httpbin.iter().filter(|p| old.contains(&name(p))).count();
        let news = httpbin.len() - olds;
        assert!(
            olds == 0 || news == 0,
            "old and new pods together under Recreate: {:?}",
            httpbin.iter().map(|p| name(p)).collect::<Vec<_>>()
        );
        seen_old_gone |= olds == 0;
        (news == 2 && httpbin.iter().all(|p| ready(p))).then_some(())
    });
    assert!(seen_old_gone);
    let out = mesh.up_out();
    let last_deleted = old
        .iter()
        .filter_map(|o| out.find(&format!("pod/{o} deleted")))
        .max()
        .expect("the old pods are reported deleted");
    let first_new = out
        .lines()
        .filter(|l| l.starts_with("pod/httpbin-deployment-") && l.contains(" created "))
        .find(|l| !old.iter().any(|o| l.starts_with(&format!("pod/{o} "))))
        .and_then(|l| out.find(l))
        .expect("a new pod is reported created");
    assert!(last_deleted < first_new, "{out}");
}
