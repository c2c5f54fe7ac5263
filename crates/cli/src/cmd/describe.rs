//! `ama describe pod NAME`: a pod of the local mesh in `kubectl describe pod`'s layout: Name,
//! Namespace, Service Account, Node, Start Time, Labels, Annotations, Status, IP, Controlled By,
//! Init Containers and Containers (Image, Port, State with its start or exit, Last State, Ready,
//! Restart Count, Liveness, Readiness, Environment), Conditions and the Events `ama up` keeps
//! (scheduled, started, failed probes, kills, back-offs). A unique prefix of the name is enough;
//! an ambiguous one names the candidates.

use std::fmt::Write;
use std::process::ExitCode;

use anyhow::bail;
use local::state::{ContainerRecord, ContainerState, PodRecord};
use local::table::age;
use serde_json::Value;

use super::local::MeshName;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `pod` (`pods`, `po`), or `pod/NAME`.
    #[arg(value_name = "TYPE[/NAME]")]
    pub kind: String,
    /// The pods (a unique prefix is enough); none: every pod of the namespace.
    pub names: Vec<String>,
    /// The namespace.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub mesh: MeshName,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (kind, mut names) = match args.kind.split_once('/') {
        Some((kind, name)) => (kind, vec![name.to_string()]),
        None => (args.kind.as_str(), Vec::new()),
    };
    names.extend(args.names.iter().cloned());
    if api::kinds::resolve(kind) != Some("Pod") {
        bail!("ama describe knows pods: `ama describe pod NAME`");
    }
    let state = args.mesh.dir()?.load()?;
    let pods: Vec<&PodRecord> = if names.is_empty() {
        state
            .pods
            .iter()
            .filter(|p| p.namespace == args.namespace)
            .collect()
    } else {
        names
            .iter()
            .map(|n| state.pod(n))
            .collect::<Result<_, _>>()?
    };
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let now = local::state::now();
    let texts: Vec<String> = pods.iter().map(|p| describe(p, node.trim(), now)).collect();
    if texts.is_empty() {
        eprint!("{}", local::table::no_resources(Some(&args.namespace)));
    }
    print!("{}", texts.join("\n\n"));
    Ok(ExitCode::SUCCESS)
}

/// kubectl's `Mon, 02 Jan 2006 15:04:05 +0000` of seconds since the epoch.
fn date(secs: u64) -> String {
    let text = local::table::rfc3339(secs);
    // `2020-03-07T06:44:22Z`: weekday from days since the epoch (1970-01-01 was a Thursday).
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let weekday = DAYS[usize::try_from((secs / 86_400) % 7).unwrap_or(0)];
    let month = text
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{weekday}, {} {month} {} {} +0000",
        text.get(8..10).unwrap_or_default(),
        text.get(0..4).unwrap_or_default(),
        text.get(11..19).unwrap_or_default()
    )
}

/// Lines `Key:  value` with the values in one column, as kubectl's tabwriter aligns a section;
/// a line without a key (`None`) is printed as it is, indented by two more.
struct Section {
    indent: usize,
    lines: Vec<(Option<String>, Vec<String>)>,
}

impl Section {
    fn new(indent: usize) -> Section {
        Section {
            indent,
            lines: Vec::new(),
        }
    }

    /// `key` with one value, or several (continuation lines under the first).
    fn add(&mut self, key: &str, values: Vec<String>) {
        self.lines.push((Some(key.to_string()), values));
    }

    /// A line of its own under the last key (a word of Command or Args).
    fn raw(&mut self, line: String) {
        self.lines.push((None, vec![line]));
    }

    fn one(&mut self, key: &str, value: impl Into<String>) {
        self.add(key, vec![value.into()]);
    }

    fn render(&self, out: &mut String) {
        let width = self
            .lines
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .filter_map(|(k, _)| Some(k.as_ref()?.len() + 1))
            .max()
            .unwrap_or(0)
            + 2;
        let pad = " ".repeat(self.indent);
        for (key, values) in &self.lines {
            let Some(key) = key else {
                for v in values {
                    let _ = writeln!(out, "{pad}  {v}");
                }
                continue;
            };
            let label = format!("{key}:");
            match values.split_first() {
                None => {
                    let _ = writeln!(out, "{pad}{label}");
                }
                Some((first, rest)) => {
                    let line = format!("{pad}{label:<width$}{first}");
                    let _ = writeln!(out, "{}", line.trim_end());
                    for v in rest {
                        let _ = writeln!(out, "{pad}{:width$}{v}", "");
                    }
                }
            }
        }
    }
}

/// A map as kubectl lists labels (`key=value`, sorted) or annotations (`key: value`).
fn pairs(o: &Value, pointer: &str, sep: &str) -> Vec<String> {
    let list: Vec<String> = o
        .pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}{sep}{}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        vec!["<none>".into()]
    } else {
        list
    }
}

/// The container spec of `name` in the pod object.
fn spec_of<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    ["/spec/initContainers", "/spec/containers"]
        .iter()
        .filter_map(|p| pod.pointer(p)?.as_array())
        .flatten()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

fn state_lines(section: &mut Section, key: &str, state: &ContainerState) {
    match state {
        ContainerState::Waiting { reason } => {
            section.one(key, "Waiting");
            section.one("  Reason", reason.clone());
        }
        ContainerState::Running { started_at } => {
            section.one(key, "Running");
            section.one("  Started", date(*started_at));
        }
        ContainerState::Terminated { exit_code, reason } => {
            section.one(key, "Terminated");
            section.one("  Reason", reason.clone());
            section.one("  Exit Code", exit_code.to_string());
        }
    }
}

fn container(out: &mut String, pod: &PodRecord, c: &ContainerRecord) {
    let _ = writeln!(out, "  {}:", c.name);
    let spec = spec_of(&pod.object, &c.name);
    let text = |f: &str| {
        spec.and_then(|s| s.get(f))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut s = Section::new(4);
    s.one("Image", text("image"));
    let ports: Vec<String> = spec
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(format!(
                "{}/{}",
                p.get("containerPort")?.as_u64()?,
                p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
            ))
        })
        .collect();
    if !ports.is_empty() {
        s.one(
            if ports.len() == 1 { "Port" } else { "Ports" },
            ports.join(", "),
        );
    }
    let words = |f: &str| -> Vec<String> {
        spec.and_then(|s| s.get(f))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| Some(a.as_str()?.to_string()))
            .collect()
    };
    for (key, field) in [("Command", "command"), ("Args", "args")] {
        let list = words(field);
        if !list.is_empty() {
            s.add(key, Vec::new());
            for w in list {
                s.raw(w);
            }
        }
    }
    state_lines(&mut s, "State", &c.state);
    if let Some(last) = c.last_state.as_ref().filter(|_| c.restarts > 0) {
        state_lines(&mut s, "Last State", last);
    }
    s.one("Ready", if c.ready { "True" } else { "False" });
    s.one("Restart Count", c.restarts.to_string());
    if let Some(l) = &c.liveness {
        s.one("Liveness", l.describe());
    }
    if c.probe != local::launch::Probe::None {
        s.one("Readiness", c.probe_text());
    }
    if let Some(startup) = &c.startup {
        s.one("Startup", startup.describe());
    }
    if c.env.is_empty() {
        s.one("Environment", "<none>");
        s.render(out);
        return;
    }
    s.add("Environment", Vec::new());
    s.render(out);
    let mut env = Section::new(6);
    for (k, v) in &c.env {
        env.one(k, v.clone());
    }
    env.render(out);
}

/// The pod in `kubectl describe pod`'s layout; `node` is this machine's name.
pub fn describe(p: &PodRecord, node: &str, now: u64) -> String {
    let mut out = String::new();
    let o = &p.object;
    let mut s = Section::new(0);
    s.one("Name", p.name.clone());
    s.one("Namespace", p.namespace.clone());
    s.one("Priority", "0");
    s.one(
        "Service Account",
        o.pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default"),
    );
    s.one("Node", format!("{node}/{}", local::ipam::GATEWAY));
    s.one("Start Time", date(p.created_at));
    s.add("Labels", pairs(o, "/metadata/labels", "="));
    s.add("Annotations", pairs(o, "/metadata/annotations", ": "));
    s.one(
        "Status",
        if p.terminating {
            "Terminating".to_string()
        } else {
            match p.status().as_str() {
                "Completed" => "Succeeded".into(),
                s if s.starts_with("Init:") || s == "Pending" => "Pending".into(),
                _ => "Running".into(),
            }
        },
    );
    if let Some(at) = p.deleted_at {
        s.one("Termination Grace Period", "30s");
        s.one("Deleted At", date(at));
    }
    s.one("IP", p.ip.to_string());
    s.add("IPs", Vec::new());
    s.render(&mut out);
    let _ = writeln!(out, "  IP:  {}", p.ip);
    let mut s = Section::new(0);
    if let Some((kind, rest)) = p.group.split_once('/') {
        let name = rest.rsplit('/').next().unwrap_or(rest);
        let controller = match kind {
            "Deployment" => format!("ReplicaSet/{name}-{}", p.template_hash),
            "Pod" => String::new(),
            _ => format!("{kind}/{name}"),
        };
        if !controller.is_empty() {
            s.one("Controlled By", controller);
        }
    }
    s.render(&mut out);
    if !p.init.is_empty() {
        let _ = writeln!(out, "Init Containers:");
        for c in &p.init {
            container(&mut out, p, c);
        }
    }
    let _ = writeln!(out, "Containers:");
    for c in &p.containers {
        container(&mut out, p, c);
    }
    let initialized = p
        .init
        .iter()
        .all(|c| matches!(c.state, ContainerState::Terminated { exit_code: 0, .. }));
    let ready = p.is_ready();
    let flag = |b: bool| if b { "True" } else { "False" };
    let _ = writeln!(out, "Conditions:");
    let rows = [
        ("Initialized", flag(initialized)),
        ("Ready", flag(ready)),
        ("ContainersReady", flag(ready)),
        ("PodScheduled", "True"),
    ];
    // kubectl writes each cell with a space after it.
    let mut table = vec![vec!["Type".to_string(), "Status".to_string()]];
    table.extend(
        rows.iter()
            .map(|(t, v)| vec![format!("{t} "), format!("{v} ")]),
    );
    aligned(&mut out, &table);
    if p.events.is_empty() {
        let _ = writeln!(out, "Events:  <none>");
        return out;
    }
    let _ = writeln!(out, "Events:");
    let header = |cells: [&str; 5]| cells.iter().map(|s| s.to_string()).collect();
    let mut rows: Vec<Vec<String>> = vec![
        header(["Type", "Reason", "Age", "From", "Message"]),
        header(["----", "------", "----", "----", "-------"]),
    ];
    // kubectl sorts them by when they last happened.
    let mut events: Vec<&local::state::PodEvent> = p.events.iter().collect();
    events.sort_by_key(|e| e.last_at);
    for e in events {
        let last = age(now.saturating_sub(e.last_at));
        let when = if e.count > 1 {
            format!(
                "{last} (x{} over {})",
                e.count,
                age(now.saturating_sub(e.first_at))
            )
        } else {
            last
        };
        let from = if e.reason == "Scheduled" {
            "default-scheduler"
        } else {
            "kubelet"
        };
        rows.push(vec![
            e.kind.clone(),
            e.reason.clone(),
            when,
            from.to_string(),
            e.message.clone(),
        ]);
    }
    aligned(&mut out, &rows);
    out
}

/// Rows indented by two, columns padded by two spaces: kubectl describe's tabwriter.
fn aligned(out: &mut String, rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::from("  ");
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use local::launch::{Probe, ProbeSpec, Role, Timing};
    use local::state::PodEvent;
    use serde_json::json;

    const NOW: u64 = 1_583_563_462;

    fn record(name: &str, role: Role, state: ContainerState, ready: bool) -> ContainerRecord {
        ContainerRecord {
            name: name.into(),
            role,
            pid: Some(7),
            log: "/dev/null".into(),
            ready,
            restarts: 0,
            last_exit_at: None,
            state,
            user: None,
            env: Vec::new(),
            probe: Probe::None,
            readiness: Timing::default(),
            liveness: None,
            startup: None,
            last_state: None,
            sandbox: None,
        }
    }

    #[test]
    fn a_pod_in_kubectls_layout() {
        let mut app = record(
            "httpbin",
            Role::App,
            ContainerState::Running {
                started_at: NOW - 20,
            },
            true,
        );
        app.restarts = 1;
        app.last_state = Some(ContainerState::Terminated {
            exit_code: 137,
            reason: "Error".into(),
        });
        app.probe = Probe::Http {
            port: 80,
            path: "/status/200".into(),
        };
        app.readiness = Timing {
            initial_delay_seconds: 10,
            period_seconds: 5,
            failure_threshold: 3,
            success_threshold: 1,
        };
        app.liveness = Some(ProbeSpec {
            check: Probe::Tcp { port: 80 },
            timing: Timing::default(),
        });
        app.env = vec![("POD_NAME".into(), "httpbin-x".into())];
        let pod = PodRecord {
            name: "httpbin-5c5d5b5b5-x7x7x".into(),
            namespace: "default".into(),
            ip: "10.244.0.2".parse().unwrap(),
            netns: "n".into(),
            group: "Deployment/default/httpbin".into(),
            template_hash: "5c5d5b5b5".into(),
            created_at: NOW - 60,
            sidecar: false,
            terminating: false,
            deleted_at: None,
            init: Vec::new(),
            containers: vec![app],
            object: json!({"metadata": {"labels": {"app": "httpbin", "pod-template-hash": "5c5d5b5b5"}},
                "spec": {"containers": [{"name": "httpbin", "image": "kong/httpbin",
                    "ports": [{"containerPort": 80}]}]}}),
            events: vec![
                PodEvent {
                    kind: "Normal".into(),
                    reason: "Scheduled".into(),
                    message: "Successfully assigned default/httpbin-5c5d5b5b5-x7x7x to node1"
                        .into(),
                    first_at: NOW - 60,
                    last_at: NOW - 60,
                    count: 1,
                },
                PodEvent {
                    kind: "Normal".into(),
                    reason: "Started".into(),
                    message: "Started container httpbin".into(),
                    first_at: NOW - 59,
                    last_at: NOW - 20,
                    count: 2,
                },
            ],
        };
        let text = describe(&pod, "node1", NOW);
        let want = "\
Name:             httpbin-5c5d5b5b5-x7x7x
Namespace:        default
Priority:         0
Service Account:  default
Node:             node1/10.244.0.1
Start Time:       Sat, 07 Mar 2020 06:43:22 +0000
Labels:           app=httpbin
                  pod-template-hash=5c5d5b5b5
Annotations:      <none>
Status:           Running
IP:               10.244.0.2
IPs:
  IP:  10.244.0.2
Controlled By:  ReplicaSet/httpbin-5c5d5b5b5
Containers:
  httpbin:
    Image:          kong/httpbin
    Port:           80/TCP
    State:          Running
      Started:      Sat, 07 Mar 2020 06:44:02 +0000
    Last State:     Terminated
      Reason:       Error
      Exit Code:    137
    Ready:          True
    Restart Count:  1
    Liveness:       tcp-socket :80 delay=0s timeout=1s period=10s #success=1 #failure=3
    Readiness:      http-get http://:80/status/200 delay=10s timeout=1s period=5s #success=1 #failure=3
    Environment:
      POD_NAME:  httpbin-x
Conditions:
  Type              Status
  Initialized       True
  Ready             True
  ContainersReady   True
  PodScheduled      True
Events:
  Type    Reason     Age                From               Message
  ----    ------     ----               ----               -------
  Normal  Scheduled  60s                default-scheduler  Successfully assigned default/httpbin-5c5d5b5b5-x7x7x to node1
  Normal  Started    20s (x2 over 59s)  kubelet            Started container httpbin
";
        assert_eq!(text, want, "\n{text}");
        assert_eq!(date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    }
}
