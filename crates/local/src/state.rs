//! The state directory of a mesh: how separate `ama` invocations find the mesh `ama up` runs.
//!
//! `/run/ama/<mesh>` as root, else `$XDG_RUNTIME_DIR/ama/<mesh>` when every user may traverse
//! it, else `/tmp/ama-<uid>/<mesh>`. Only `ama up` writes `state.json`, atomically (write and rename), so a reader
//! never sees half a file; `ama apply` writes into `applied/` and tells `ama up` with SIGHUP.
//!
//! ```text
//! <state>/state.json            the pod table, services, the pid of `ama up`
//! <state>/resources.json        every object with its creation time, for `ama get` (private:
//!                               Secrets are among them)
//! <state>/config/               the objects `ama discovery` reads (file registry)
//! <state>/applied/NNNN.yaml     what `ama apply -f` gave, in order
//! <state>/pods/<pod>/           per pod: <container>.log, resources.json (file mode)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;
use crate::launch::{Probe, ProbeSpec, Role, Timing};
use crate::naming::valid_cluster_name;

/// The name of a mesh when none is given.
pub const DEFAULT_CLUSTER: &str = "ama";
/// The state file, in the state directory.
const STATE_FILE: &str = "state.json";
/// The objects of the mesh as `ama get` lists them, in the state directory.
const RESOURCES_FILE: &str = "resources.json";

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The directory of one mesh.
#[derive(Debug, Clone)]
pub struct StateDir {
    cluster: String,
    root: PathBuf,
}

impl StateDir {
    /// The directory of mesh `cluster` for this user.
    pub fn new(cluster: &str) -> Result<StateDir, Error> {
        if let Some(base) = crate::rootless::state_base() {
            return StateDir::at(&base, cluster);
        }
        let base = if nix::unistd::geteuid().is_root() {
            PathBuf::from("/run/ama")
        } else if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|d| !d.is_empty())
            .filter(|d| searchable_by_all(Path::new(d)))
        {
            PathBuf::from(dir).join("ama")
        } else {
            PathBuf::from(format!("/tmp/ama-{}", nix::unistd::geteuid()))
        };
        StateDir::at(&base, cluster)
    }

    /// The directory of mesh `cluster` under `base`.
    pub fn at(base: &Path, cluster: &str) -> Result<StateDir, Error> {
        if !valid_cluster_name(cluster) {
            return Err(Error::BadName(cluster.to_string()));
        }
        Ok(StateDir {
            cluster: cluster.to_string(),
            root: base.join(cluster),
        })
    }

    /// The mesh's name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    /// The file registry's directory.
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }

    /// Where `ama apply` writes.
    pub fn applied_dir(&self) -> PathBuf {
        self.root.join("applied")
    }

    /// The directory of one pod.
    pub fn pod_dir(&self, pod: &str) -> PathBuf {
        self.root.join("pods").join(pod)
    }

    /// Creates the directory tree (readable by the proxies' uid 1337).
    pub fn create(&self) -> Result<(), Error> {
        // The registry objects and what `ama apply` wrote hold Secrets (`ama create secret`, a
        // gateway's certificates): readable by `ama up` and discovery only.
        for (dir, mode) in [
            (self.root.clone(), 0o755),
            (self.config_dir(), 0o700),
            (self.applied_dir(), 0o700),
            (self.root.join("pods"), 0o755),
        ] {
            fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
            set_mode(&dir, mode)?;
        }
        Ok(())
    }

    /// Whether a state file exists.
    pub fn exists(&self) -> bool {
        self.state_file().exists()
    }

    /// Reads the state file; [`Error::NotRunning`] when there is none.
    pub fn load(&self) -> Result<State, Error> {
        let path = self.state_file();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotRunning {
                    cluster: self.cluster.clone(),
                    path,
                });
            }
            Err(source) => return Err(Error::Io { path, source }),
        };
        serde_json::from_str(&text).map_err(|e| Error::State {
            path,
            message: e.to_string(),
        })
    }

    /// Writes the state file atomically.
    pub fn save(&self, state: &State) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(state).map_err(|e| Error::State {
            path: self.state_file(),
            message: e.to_string(),
        })?;
        write_atomic(&self.state_file(), text.as_bytes())
    }

    /// `resources.json`: every object of the mesh (the user's, with `creationTimestamp`, and
    /// the EndpointSlices of the Services), written by `ama up` whenever they change.
    pub fn resources_file(&self) -> PathBuf {
        self.root.join(RESOURCES_FILE)
    }

    /// Writes `resources.json` atomically, readable by its owner only (Secrets are in it).
    pub fn save_resources(&self, objects: &[Value]) -> Result<(), Error> {
        let path = self.resources_file();
        let text = serde_json::to_vec(objects).map_err(|e| Error::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let tmp = path.with_file_name(format!(".{RESOURCES_FILE}.tmp"));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(Error::io(&tmp))?;
            file.write_all(&text).map_err(Error::io(&tmp))?;
        }
        set_mode(&tmp, 0o600)?;
        fs::rename(&tmp, &path).map_err(Error::io(&path))
    }

    /// Reads `resources.json`; empty when `ama up` has not written it yet.
    pub fn load_resources(&self) -> Result<Vec<Value>, Error> {
        let path = self.resources_file();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::State {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Removes the whole directory.
    pub fn remove(&self) -> Result<(), Error> {
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                path: self.root.clone(),
                source,
            }),
        }
    }
}

/// Writes `path` through a temporary file and a rename, readable by all (the proxies read
/// their resources as uid 1337).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
    set_mode(&tmp, 0o644)?;
    fs::rename(&tmp, path).map_err(Error::io(path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(Error::io(path))
}

/// Whether every user may traverse `dir`: a rootless mesh's sidecars (uid 1337 inside, a
/// subordinate id outside) read their tokens under it, and `$XDG_RUNTIME_DIR` is often 0700.
fn searchable_by_all(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors()
        .all(|d| fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// Whether process `pid` exists and has not exited. A zombie (exited, not yet reaped: an
/// `ama up` killed with SIGKILL whose parent does not reap, as in a container whose init is
/// not a reaper) counts as dead, or the next `ama up` would refuse to start for ever.
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence and permission without sending anything.
    let exists = match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    };
    exists && !zombie(pid)
}

/// Whether `/proc/<pid>/stat` says the process is a zombie (`Z`) or dead (`X`).
fn zombie(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain any byte.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

/// Everything about a running mesh.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The mesh's name.
    pub cluster: String,
    /// The pid of `ama up` (as the host sees it: the init of its PID namespace when rootless).
    pub pid: u32,
    /// Started without root, inside a user namespace ([`crate::rootless`]): other commands
    /// enter it with `nsenter -t <pid>`.
    #[serde(default)]
    pub rootless: bool,
    /// When it started (seconds since the epoch).
    pub started_at: u64,
    /// Where the proxies get their resources (`files` or `discovery`).
    pub xds: String,
    /// The namespace of the bridge.
    pub lan_netns: String,
    /// Pods, in start order.
    pub pods: Vec<PodRecord>,
    /// Services, by namespace and name.
    pub services: Vec<ServiceRecord>,
    /// The objects applied: `kind.group/name` in namespace → a hash of their content (for
    /// `ama apply`'s created / configured / unchanged).
    pub objects: BTreeMap<String, String>,
    /// Things the user should know (objects not run, pods that could not start).
    pub notes: Vec<String>,
    /// Set when the mesh is being stopped.
    pub stopping: bool,
    /// How many `ama apply` files `ama up` has taken.
    #[serde(default)]
    pub applied: usize,
    /// The control plane `ama up` runs (`--xds discovery`).
    #[serde(default)]
    pub discovery: Option<ControlPlaneRecord>,
    /// The ingress gateway on the host's loopback ([`crate::host_port`]), when forwarded.
    #[serde(default)]
    pub ingress: Option<IngressRecord>,
}

/// Where the host reaches the ingress gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRecord {
    /// The host's address (127.0.0.1).
    pub address: std::net::Ipv4Addr,
    /// The host port of the Service's port 80 (`INGRESS_PORT`).
    pub http: Option<u16>,
    /// The host port of the Service's port 443 (`SECURE_INGRESS_PORT`).
    pub https: Option<u16>,
}

/// `ama discovery` as `ama up` supervises it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneRecord {
    /// Its pid while it runs.
    pub pid: Option<u32>,
    /// Whether its `/ready` answered at the last check.
    pub ready: bool,
    /// How often it was restarted.
    pub restarts: u32,
    /// Why it is not running, while it waits for its restart (`exited (signal 9); restarting
    /// in 2s`).
    pub waiting: Option<String>,
    /// Its log.
    pub log: PathBuf,
}

impl State {
    /// The pod named `name`, in any namespace (names are unique across the mesh here), or the
    /// one pod whose name starts with `name`; [`Error::AmbiguousPod`] (naming every candidate)
    /// when several do.
    pub fn pod(&self, name: &str) -> Result<&PodRecord, Error> {
        if let Some(p) = self.pods.iter().find(|p| p.name == name) {
            return Ok(p);
        }
        let prefixed: Vec<&PodRecord> = self
            .pods
            .iter()
            .filter(|p| p.name.starts_with(name))
            .collect();
        match prefixed.as_slice() {
            [p] => Ok(p),
            [] => Err(Error::NoPod {
                name: name.to_string(),
            }),
            many => Err(Error::AmbiguousPod {
                name: name.to_string(),
                candidates: many.iter().map(|p| p.name.clone()).collect(),
            }),
        }
    }
}

/// One pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its network namespace (`ip netns exec <netns>`).
    pub netns: String,
    /// The group it belongs to (`Deployment/default/httpbin-deployment`).
    pub group: String,
    /// Its `pod-template-hash`.
    pub template_hash: String,
    /// When it was created.
    pub created_at: u64,
    /// Whether it has a sidecar.
    pub sidecar: bool,
    /// Being deleted.
    pub terminating: bool,
    /// When its deletion started (seconds since the epoch).
    #[serde(default)]
    pub deleted_at: Option<u64>,
    /// Init containers, in order.
    pub init: Vec<ContainerRecord>,
    /// Containers.
    pub containers: Vec<ContainerRecord>,
    /// The pod object (what the control plane is told).
    pub object: Value,
    /// What happened to it, oldest first, as `kubectl describe pod` lists Events (a repeat
    /// counts on its first).
    #[serde(default)]
    pub events: Vec<PodEvent>,
}

/// One event of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodEvent {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `Started`, `Unhealthy`, `Killing`, `BackOff` …
    pub reason: String,
    /// What happened.
    pub message: String,
    /// When it first happened (seconds since the epoch).
    pub first_at: u64,
    /// When it last happened.
    pub last_at: u64,
    /// How often.
    pub count: u32,
}

/// The most events a pod keeps (the oldest go first).
const MAX_EVENTS: usize = 30;

impl PodRecord {
    /// Records an event; the same reason and message again counts on the earlier one.
    pub fn event(&mut self, warning: bool, reason: &str, message: String) {
        let at = now();
        if let Some(e) = self
            .events
            .iter_mut()
            .find(|e| e.reason == reason && e.message == message)
        {
            e.count += 1;
            e.last_at = at;
            return;
        }
        if self.events.len() >= MAX_EVENTS {
            self.events.remove(0);
        }
        self.events.push(PodEvent {
            kind: if warning { "Warning" } else { "Normal" }.into(),
            reason: reason.into(),
            message,
            first_at: at,
            last_at: at,
            count: 1,
        });
    }
}

impl PodRecord {
    /// `ready/total` containers.
    pub fn ready(&self) -> (usize, usize) {
        let ready = self.containers.iter().filter(|c| c.ready).count();
        (ready, self.containers.len())
    }

    /// kubectl's STATUS column.
    pub fn status(&self) -> String {
        if self.terminating {
            return "Terminating".into();
        }
        let done = self
            .init
            .iter()
            .filter(|c| matches!(c.state, ContainerState::Terminated { exit_code: 0, .. }))
            .count();
        if done < self.init.len() {
            if let Some(reason) = self.init.iter().find_map(ContainerState::reason_of) {
                return format!("Init:{reason}");
            }
            return format!("Init:{done}/{}", self.init.len());
        }
        if let Some(reason) = self.containers.iter().find_map(ContainerState::reason_of) {
            return reason;
        }
        let running = self
            .containers
            .iter()
            .filter(|c| matches!(c.state, ContainerState::Running { .. }))
            .count();
        let completed = self
            .containers
            .iter()
            .filter(|c| matches!(c.state, ContainerState::Terminated { .. }))
            .count();
        // kubectl's: containers that ran to their end (restartPolicy OnFailure or Never) next
        // to running ones make the pod NotReady; all of them, Completed.
        match (running, completed) {
            (_, c) if c == self.containers.len() && c > 0 => "Completed".into(),
            (r, c) if r > 0 && c > 0 && r + c == self.containers.len() => "NotReady".into(),
            (r, _) if r == self.containers.len() => "Running".into(),
            _ => "Pending".into(),
        }
    }

    /// Restarts of all containers.
    pub fn restarts(&self) -> u32 {
        self.containers.iter().map(|c| c.restarts).sum()
    }

    /// When a container that was restarted last exited, as kubectl's RESTARTS column dates it.
    pub fn last_restart_at(&self) -> Option<u64> {
        self.containers
            .iter()
            .filter(|c| c.restarts > 0)
            .filter_map(|c| c.last_exit_at)
            .max()
    }

    /// Whether every container is ready.
    pub fn is_ready(&self) -> bool {
        let (ready, total) = self.ready();
        ready == total && !self.terminating
    }

    /// The container named `name`, else the first app container when `name` is None.
    pub fn container(&self, name: Option<&str>) -> Result<&ContainerRecord, Error> {
        let found = match name {
            Some(n) => self
                .containers
                .iter()
                .chain(&self.init)
                .find(|c| c.name == n),
            None => self
                .containers
                .iter()
                .find(|c| c.role == Role::App)
                .or(self.containers.first()),
        };
        found.ok_or_else(|| Error::NoContainer {
            pod: self.name.clone(),
            container: name.unwrap_or_default().to_string(),
            choices: self
                .containers
                .iter()
                .chain(&self.init)
                .map(|c| c.name.clone())
                .collect(),
        })
    }
}

/// One container's process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub role: Role,
    /// The pid of its process (the leader of its process group) while it runs.
    pub pid: Option<u32>,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// Readiness.
    pub ready: bool,
    /// How often it was restarted.
    pub restarts: u32,
    /// When it last exited (seconds since the epoch): kubectl's `RESTARTS 1 (5s ago)`.
    #[serde(default)]
    pub last_exit_at: Option<u64>,
    /// Where it is in its life.
    pub state: ContainerState,
    /// Its uid and gid when not root (`ama exec -c` runs as them).
    pub user: Option<(u32, u32)>,
    /// Its environment (`ama exec` gives it to the command).
    pub env: Vec<(String, String)>,
    /// Its readiness check.
    pub probe: Probe,
    /// When its readiness check runs.
    #[serde(default)]
    pub readiness: Timing,
    /// Its liveness probe.
    #[serde(default)]
    pub liveness: Option<ProbeSpec>,
    /// Its startup probe.
    #[serde(default)]
    pub startup: Option<ProbeSpec>,
    /// How it ended last time, when it was restarted or ran to its end (`kubectl describe`'s
    /// Last State).
    #[serde(default)]
    pub last_state: Option<ContainerState>,
    /// Its view of the machine (`ama exec` enters it too).
    #[serde(default)]
    pub sandbox: Option<crate::sandbox::Sandbox>,
}

impl ContainerRecord {
    /// Its readiness probe as `kubectl describe` shows it.
    pub fn probe_text(&self) -> String {
        ProbeSpec {
            check: self.probe.clone(),
            timing: self.readiness,
        }
        .describe()
    }
}

/// A container's state, as in a Pod's `containerStatuses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerState {
    /// Not running yet, or waiting to be restarted.
    Waiting {
        /// `PodInitializing`, `ContainerCreating`, `CrashLoopBackOff`, `Error` …
        reason: String,
    },
    /// Running since.
    Running {
        /// Seconds since the epoch.
        started_at: u64,
    },
    /// Exited.
    Terminated {
        /// Its exit code (128 + signal when killed).
        exit_code: i32,
        /// `Completed` or `Error`.
        reason: String,
    },
}

impl ContainerState {
    /// A reason worth showing in STATUS (not the ordinary start-up ones).
    fn reason_of(c: &ContainerRecord) -> Option<String> {
        match &c.state {
            ContainerState::Waiting { reason }
                if reason != "PodInitializing" && reason != "ContainerCreating" =>
            {
                Some(reason.clone())
            }
            ContainerState::Terminated { exit_code, reason }
                if *exit_code != 0 && c.role != Role::Init =>
            {
                Some(reason.clone())
            }
            ContainerState::Terminated { exit_code, .. } if *exit_code != 0 => {
                Some("Error".to_string())
            }
            _ => None,
        }
    }
}

/// One Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalName`.
    pub service_type: String,
    /// Its VIP (`None` for a headless Service).
    pub cluster_ip: Option<Ipv4Addr>,
    /// `80/TCP`, …
    pub ports: Vec<String>,
    /// When it was created.
    pub created_at: u64,
    /// The Service object (with its `clusterIP`).
    pub object: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    /// An `ama up` killed with SIGKILL and not yet reaped is a zombie: the next `ama up` must
    /// see it as gone, not refuse to start because "pid N is running".
    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        // `true` exits at once; until it is reaped it stays a zombie. Bounded wait.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !zombie(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} never exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!alive(pid), "a zombie counts as dead");
        child.wait().expect("reap");
        assert!(!alive(pid), "a reaped pid is dead");
        assert!(alive(std::process::id()), "this process is alive");
    }

    fn container(name: &str, role: Role, state: ContainerState, ready: bool) -> ContainerRecord {
        ContainerRecord {
            name: name.into(),
            role,
            pid: Some(42),
            log: PathBuf::from(format!("/tmp/{name}.log")),
            ready,
            restarts: 0,
            last_exit_at: None,
            state,
            user: (role == Role::Sidecar).then_some((1337, 1337)),
            env: vec![("POD_NAME".into(), "p".into())],
            probe: Probe::Tcp { port: 80 },
            readiness: Timing::default(),
            liveness: None,
            startup: None,
            last_state: None,
            sandbox: None,
        }
    }

    fn pod() -> PodRecord {
        PodRecord {
            name: "httpbin-deployment-9bfd96975-px5lv".into(),
            namespace: "default".into(),
            ip: Ipv4Addr::new(10, 244, 0, 2),
            netns: "ama-ama-default-httpbin".into(),
            group: "Deployment/default/httpbin-deployment".into(),
            template_hash: "9bfd96975".into(),
            created_at: 1,
            sidecar: true,
            terminating: false,
            deleted_at: None,
            init: vec![container(
                "istio-init",
                Role::Init,
                ContainerState::Terminated {
                    exit_code: 0,
                    reason: "Completed".into(),
                },
                false,
            )],
            containers: vec![
                container(
                    "httpbin",
                    Role::App,
                    ContainerState::Running { started_at: 2 },
                    true,
                ),
                container(
                    "istio-proxy",
                    Role::Sidecar,
                    ContainerState::Running { started_at: 2 },
                    true,
                ),
            ],
            object: serde_json::json!({"kind": "Pod"}),
            events: Vec::new(),
        }
    }

    #[test]
    fn round_trip_through_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::at(dir.path(), "t1").unwrap();
        sd.create().unwrap();
        assert!(matches!(sd.load(), Err(Error::NotRunning { .. })));
        // Secrets live under these two: nobody else may read them.
        use std::os::unix::fs::PermissionsExt;
        for private in [sd.config_dir(), sd.applied_dir()] {
            let mode = fs::metadata(&private).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", private.display());
        }
        let state = State {
            cluster: "t1".into(),
            pid: 7,
            started_at: 3,
            xds: "files".into(),
            lan_netns: "ama-t1-lan".into(),
            pods: vec![pod()],
            services: vec![ServiceRecord {
                name: "httpbin-service".into(),
                namespace: "default".into(),
                service_type: "ClusterIP".into(),
                cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 10)),
                ports: vec!["80/TCP".into()],
                created_at: 3,
                object: serde_json::json!({}),
            }],
            objects: BTreeMap::from([("deployment.apps/x".into(), "h".into())]),
            ..State::default()
        };
        sd.save(&state).unwrap();
        assert_eq!(sd.load().unwrap(), state);
        std::fs::write(sd.state_file(), "{").unwrap();
        assert!(matches!(sd.load(), Err(Error::State { .. })));
        sd.remove().unwrap();
        assert!(!sd.root().exists());
    }

    #[test]
    fn status_and_ready_columns() {
        let mut p = pod();
        assert_eq!(p.ready(), (2, 2));
        assert_eq!(p.status(), "Running");
        p.init[0].state = ContainerState::Running { started_at: 1 };
        assert_eq!(p.status(), "Init:0/1");
        p.init[0].state = ContainerState::Terminated {
            exit_code: 0,
            reason: "Completed".into(),
        };
        p.containers[0].state = ContainerState::Waiting {
            reason: "CrashLoopBackOff".into(),
        };
        p.containers[0].ready = false;
        assert_eq!(p.status(), "CrashLoopBackOff");
        // restartPolicy Never/OnFailure: what ran to its end stays so.
        let mut done = pod();
        done.containers[0].state = ContainerState::Terminated {
            exit_code: 0,
            reason: "Completed".into(),
        };
        assert_eq!(done.status(), "NotReady");
        done.containers[1].state = done.containers[0].state.clone();
        assert_eq!(done.status(), "Completed");
        assert_eq!(p.ready(), (1, 2));
        assert_eq!(p.container(None).unwrap().name, "httpbin");
        assert_eq!(
            p.container(Some("istio-proxy")).unwrap().user,
            Some((1337, 1337))
        );
        let err = p.container(Some("nope")).unwrap_err().to_string();
        assert!(err.contains("httpbin, istio-proxy, istio-init"), "{err}");
    }

    #[test]
    fn pods_by_name_or_unambiguous_prefix() {
        let state = State {
            pods: vec![pod()],
            ..State::default()
        };
        assert!(state.pod("httpbin-deployment-9bfd96975-px5lv").is_ok());
        assert!(state.pod("httpbin").is_ok());
        assert!(matches!(state.pod("ubuntu"), Err(Error::NoPod { .. })));
        let mut other = pod();
        other.name = "httpbin-deployment-9bfd96975-zz7xq".into();
        let state = State {
            pods: vec![pod(), other],
            ..State::default()
        };
        let err = state.pod("httpbin-").unwrap_err().to_string();
        assert_eq!(
            err,
            "pod name \"httpbin-\" is ambiguous: the names of pods httpbin-deployment-9bfd96975-px5lv, \
             httpbin-deployment-9bfd96975-zz7xq start with it; give more of the name"
        );
        assert!(state.pod("httpbin-deployment-9bfd96975-zz").is_ok());
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(matches!(
            StateDir::at(Path::new("/tmp"), "../x"),
            Err(Error::BadName(_))
        ));
    }
}
