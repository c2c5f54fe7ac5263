//! What the traffic-management tests (`traffic_routing.rs`, `traffic_faults.rs`,
//! `traffic_resilience.rs`) share: one `ama up` mesh per file, made of Istio's task YAML from
//! `tests/fixtures/traffic/` (unchanged but for the `local.ama.dev/command` annotation, whose
//! `@PYTHON@` and `@APPS@` are replaced here by the venv's python and `tests/fixtures/apps`),
//! scenarios applied one after another with `ama apply`, each waited for until the client's
//! sidecar has the new config, and a runner that records every scenario's outcome so that one
//! failing scenario does not hide the others: the test fails at the end with all of them listed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::up::{UpMesh, name};
use e2e::{Scratch, wait_for, workspace};
use serde_json::Value;

/// The fixtures' directory.
pub fn fixtures() -> PathBuf {
    workspace().join("tests/fixtures/traffic")
}

/// The test apps' directory.
pub fn apps() -> PathBuf {
    workspace().join("tests/fixtures/apps")
}

/// A fixture's text with the placeholders of the `local.ama.dev/command` annotations replaced.
/// `file` is in `tests/fixtures/traffic/`, or, when it names a directory (`authz/x.yaml`), in
/// `tests/fixtures/`.
pub fn fixture_text(file: &str, python: &Path) -> String {
    let path = if file.contains('/') {
        workspace().join("tests/fixtures").join(file)
    } else {
        fixtures().join(file)
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()));
    text.replace("@PYTHON@", &python.display().to_string())
        .replace("@APPS@", &apps().display().to_string())
}

/// A mesh of fixtures with a client pod, and the scenarios' outcomes so far.
pub struct Traffic {
    /// The mesh (brought down on drop, failing test or not).
    pub mesh: UpMesh,
    /// Where logs and the substituted fixtures go.
    pub scratch: Scratch,
    /// The venv's python (also what the apps run with).
    pub python: PathBuf,
    /// The client pod (Istio's `sleep` sample).
    pub client: String,
    /// Every pod's name.
    pub pods: Vec<String>,
    /// Every pod's address, by name.
    pub ips: BTreeMap<String, String>,
    /// Scenario name → observed outcome (Ok) or the failure (Err).
    outcomes: Vec<(String, Result<String, String>)>,
    started: Instant,
}

impl Traffic {
    /// `ama up` of `files` (from the fixtures), waiting for `pods` pods to be ready; the client
    /// is the pod whose name starts with `sleep-`.
    pub fn start(tag: &str, python: &Path, files: &[&str], pods: usize) -> Traffic {
        Traffic::start_in(Scratch::new(tag), tag, python, files, pods, &[])
    }

    /// [`Traffic::start`] in `scratch`, with further placeholders of the fixtures replaced
    /// (`(from, to)` pairs).
    pub fn start_in(
        scratch: Scratch,
        tag: &str,
        python: &Path,
        files: &[&str],
        pods: usize,
        replace: &[(&str, &str)],
    ) -> Traffic {
        let started = Instant::now();
        let dir = scratch.path().join("mesh");
        std::fs::create_dir_all(&dir).expect("create the mesh directory");
        for file in files {
            let mut text = fixture_text(file, python);
            for (from, to) in replace {
                text = text.replace(from, to);
            }
            std::fs::write(dir.join(file.replace('/', "-")), text).expect("write fixture");
        }
        let mesh = UpMesh::start(tag, &dir, scratch.path(), &[]);
        let ready = mesh.wait_ready(pods);
        let pods: Vec<String> = ready.iter().map(name).collect();
        let ips = ready
            .iter()
            .map(|p| {
                let ip = p["status"]["podIP"].as_str().unwrap_or_default();
                (name(p), ip.to_string())
            })
            .collect();
        let client = pods
            .iter()
            .find(|p| p.starts_with("sleep-"))
            .expect("a sleep pod")
            .clone();
        eprintln!("{pods:?} ready after {:?}", started.elapsed());
        Traffic {
            mesh,
            scratch,
            python: python.to_path_buf(),
            client,
            pods,
            ips,
            outcomes: Vec::new(),
            started,
        }
    }

    /// The pods whose names start with `prefix` (a Deployment's name and `-`).
    pub fn pods_of(&self, prefix: &str) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| p.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The one pod of Deployment `deployment`.
    pub fn pod(&self, deployment: &str) -> String {
        let pods = self.pods_of(&format!("{deployment}-"));
        assert_eq!(pods.len(), 1, "one pod of {deployment}: {pods:?}");
        pods[0].clone()
    }

    /// Runs `f` as the scenario `name`, recording what it returns or why it failed (a panic
    /// inside is caught); later scenarios run either way.
    pub fn scenario(&mut self, name: &str, f: impl FnOnce(&Traffic) -> String) {
        let t0 = Instant::now();
        eprintln!("--- scenario: {name}");
        let outcome = catch_unwind(AssertUnwindSafe(|| f(self))).map_err(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".to_string())
        });
        match &outcome {
            Ok(seen) => eprintln!("--- PASS {name} ({:?}): {seen}", t0.elapsed()),
            Err(why) => eprintln!("--- FAIL {name} ({:?}): {why}", t0.elapsed()),
        }
        self.outcomes.push((name.to_string(), outcome));
    }

    /// Prints every scenario's outcome; fails the test when one failed.
    pub fn finish(self) {
        let mut report = String::new();
        for (name, outcome) in &self.outcomes {
            match outcome {
                Ok(seen) => report.push_str(&format!("PASS  {name}: {seen}\n")),
                Err(why) => report.push_str(&format!("FAIL  {name}: {why}\n")),
            }
        }
        let failed = self.outcomes.iter().filter(|(_, o)| o.is_err()).count();
        assert!(
            failed == 0,
            "{failed} of {} scenarios failed ({:?} in all):\n{report}",
            self.outcomes.len(),
            self.started.elapsed()
        );
        eprintln!(
            "=== every scenario passed ({:?} in all):\n{report}",
            self.started.elapsed()
        );
    }

    /// The client sidecar's config version (admin `/config_dump`'s `version`).
    pub fn config_version(&self) -> Option<Value> {
        let out = self.mesh.ama(&[
            "exec",
            &self.client,
            "--",
            "curl",
            "-sf",
            "http://127.0.0.1:15000/config_dump",
        ]);
        let dump: Value = serde_json::from_slice(&out.stdout).ok()?;
        dump.get("version").cloned()
    }

    /// `ama apply -f` of fixtures (by file name) or of YAML text (written to the scratch
    /// directory under `name`), then waits until the client's sidecar has a new config version
    /// that stays the same for a second (the whole change has arrived).
    pub fn apply(&self, name: &str, yaml: Option<&str>) {
        let path = self.scratch.path().join(name.replace('/', "-"));
        let text = match yaml {
            Some(text) => text.to_string(),
            None => fixture_text(name, &self.python),
        };
        std::fs::write(&path, text).expect("write the YAML to apply");
        let before = self.config_version();
        let applied = self
            .mesh
            .ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
        eprintln!("ama apply -f {name}: {}", applied.trim());
        // Discovery pushes only when the translated config differs: a change the control plane
        // translates to what the proxy already has (a feature it ignores) bumps no version. So
        // a version that stays put for 10 s is reported, not fatal: the scenario's own
        // assertions then say what the proxy did.
        let deadline = Instant::now() + Duration::from_secs(10);
        let settle_by = Instant::now() + Duration::from_secs(30);
        let mut last: Option<(Value, Instant)> = None;
        loop {
            assert!(
                Instant::now() < settle_by,
                "the client's sidecar config kept changing for 30 s after applying {name}"
            );
            let now = self.config_version();
            if let Some(now) = now.filter(|v| Some(v) != before.as_ref()) {
                match &last {
                    Some((v, since)) if *v == now => {
                        if since.elapsed() >= Duration::from_secs(1) {
                            return;
                        }
                    }
                    _ => last = Some((now, Instant::now())),
                }
            } else if Instant::now() >= deadline {
                eprintln!(
                    "note: the client's sidecar config version stayed {before:?} for 10 s after \
                     applying {name} (nothing new to push?)"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `argv` in the client pod's app container; its stdout, and panics when it fails.
    pub fn in_client(&self, argv: &[&str]) -> String {
        self.in_pod(&self.client, argv)
    }

    /// Runs `argv` in `pod`'s first container; its stdout, and panics when it fails.
    pub fn in_pod(&self, pod: &str, argv: &[&str]) -> String {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(argv);
        self.mesh.ok(&args)
    }

    /// `load.py` in the client pod: `n` requests to `url` over `c` connections with `headers`;
    /// one [`Answer`] per request.
    pub fn load(
        &self,
        url: &str,
        n: usize,
        c: usize,
        method: &str,
        headers: &[&str],
    ) -> Vec<Answer> {
        let script = apps().join("load.py");
        let (n, c) = (n.to_string(), c.to_string());
        let mut argv: Vec<&str> = vec![
            self.python.to_str().expect("utf-8 path"),
            script.to_str().expect("utf-8 path"),
            url,
            "-n",
            &n,
            "-c",
            &c,
            "-X",
            method,
        ];
        for h in headers {
            argv.extend(["-H", h]);
        }
        let out = self.in_client(&argv);
        let parsed: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("load.py printed no JSON ({e}): {out}"));
        parsed["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| Answer {
                status: r[0].as_u64().unwrap_or(0) as u16,
                version: r[1].as_str().map(str::to_string),
                pod: r[2].as_str().map(str::to_string),
                seconds: r[3].as_f64().unwrap_or(0.0),
            })
            .collect()
    }

    /// One `curl` from the client: the status, the body parsed as JSON (Null when it is not),
    /// the response headers (lowercase names) and the seconds it took as curl measured them.
    pub fn curl(&self, args: &[&str]) -> Curl {
        let mut argv = vec![
            "curl",
            "-s",
            "--max-time",
            "60",
            "-D",
            "/dev/stderr",
            "-w",
            "\n%{http_code} %{time_total}",
        ];
        argv.extend_from_slice(args);
        let mut full = vec!["exec", self.client.as_str(), "--"];
        full.extend_from_slice(&argv);
        let out = self.mesh.ama(&full);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        let mut last = last.split_whitespace();
        let status: u16 = last.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let seconds: f64 = last.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let headers = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Curl {
            status,
            body: serde_json::from_str(body).unwrap_or(Value::Null),
            raw: body.to_string(),
            headers,
            seconds,
        }
    }

    /// The JSON lines a container has printed (`ama logs POD -c CONTAINER`).
    pub fn json_log(&self, pod: &str, container: &str) -> Vec<Value> {
        self.mesh
            .ok(&["logs", pod, "-c", container])
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A sidecar's access-log records.
    pub fn access_log(&self, pod: &str) -> Vec<Value> {
        self.json_log(pod, "istio-proxy")
            .into_iter()
            .filter(|l| l.get("upstream_cluster").is_some())
            .collect()
    }

    /// The client sidecar's access-log records whose path starts with `prefix`, waiting (at
    /// most 10 s) until there are at least `want`; fewer when they never come.
    pub fn client_lines(&self, prefix: &str, want: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen: Vec<Value> = self
                .access_log(&self.client)
                .into_iter()
                .filter(|l| l["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
                .collect();
            if seen.len() >= want || Instant::now() >= deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The requests an app (tests/fixtures/apps/versioned.py) has logged, whose path starts
    /// with `prefix`.
    pub fn app_requests(&self, pod: &str, container: &str, prefix: &str) -> Vec<Value> {
        self.json_log(pod, container)
            .into_iter()
            .filter(|l| l["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
            .collect()
    }

    /// The client sidecar's admin page `path` (port 15000).
    pub fn admin(&self, path: &str) -> String {
        self.in_client(&["curl", "-s", &format!("http://127.0.0.1:15000{path}")])
    }

    /// Waits until `url` answers 200 from the client (an app that has just started).
    pub fn wait_answers(&self, url: &str) {
        wait_for(
            &format!("{url} to answer 200"),
            Duration::from_secs(30),
            || {
                let out = self.mesh.ama(&[
                    "exec",
                    &self.client,
                    "--",
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    url,
                ]);
                (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
            },
        );
    }
}

/// One request's outcome, from `load.py`.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status (0: no answer).
    pub status: u16,
    /// The answering app's version (`x-app-version`), when an app answered.
    pub version: Option<String>,
    /// The answering pod (`x-app-pod`), when an app answered.
    pub pod: Option<String>,
    /// How long it took, as the client measured it.
    pub seconds: f64,
}

/// One `curl`'s outcome.
#[derive(Debug, Clone)]
pub struct Curl {
    pub status: u16,
    pub body: Value,
    pub raw: String,
    pub headers: BTreeMap<String, String>,
    pub seconds: f64,
}

/// How many answers there are of each key.
pub fn tally<K: Ord>(answers: &[Answer], key: impl Fn(&Answer) -> K) -> BTreeMap<K, usize> {
    let mut out = BTreeMap::new();
    for a in answers {
        *out.entry(key(a)).or_insert(0) += 1;
    }
    out
}

/// Access-log records' `response_flags`, tallied.
pub fn flags(lines: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in lines {
        let f = l["response_flags"].as_str().unwrap_or("?").to_string();
        *out.entry(f).or_insert(0) += 1;
    }
    out
}

/// Access-log records' `response_code`, tallied.
pub fn codes(lines: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in lines {
        let c = l["response_code"].as_str().unwrap_or("?").to_string();
        *out.entry(c).or_insert(0) += 1;
    }
    out
}

/// The percentage `part` is of `whole`.
pub fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}
