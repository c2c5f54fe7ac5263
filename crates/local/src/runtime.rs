//! `ama up`'s loop and the commands that act on a running mesh (`ama apply`, `ama down`).
//!
//! [`up`] checks everything it can before touching the system (the YAML, a local command for
//! every container), then creates the LAN and, per pod, its namespace and address, and writes
//! what the control plane and the proxies read. Then it supervises, twice a second:
//!
//! - a pod's init containers run one after the other (`istio-init` is `ama iptables …`), then
//!   its containers start together (the sidecar as uid 1337);
//! - a process that exits is restarted with a doubling back-off (1 s … 30 s, back to 1 s after
//!   10 minutes of running), counted in RESTARTS and shown as `CrashLoopBackOff` meanwhile, as
//!   kubelet does; `ama discovery` too (its CA and the objects it serves are files in the state
//!   directory, so the new process serves the same mesh and the proxies reconnect to it);
//! - probes run inside the pod's namespace with their timing ([`crate::launch::Timing`]): a
//!   readiness check is not made before `initialDelaySeconds`, then every tick until it passes
//!   `successThreshold` times in a row (kubelet would wait for the next `periodSeconds`: a pod
//!   is ready here as soon as it can be), then every `periodSeconds`, and `failureThreshold`
//!   failures in a row make the container unready; only ready pods are endpoints ([`mesh`]'s
//!   EndpointSlices). A liveness probe runs from `initialDelaySeconds` every `periodSeconds`;
//!   `failureThreshold` failures in a row stop the container as kubelet does (SIGTERM, SIGKILL
//!   after `terminationGracePeriodSeconds`), and it is restarted as any exit is. A startup probe
//!   runs first (from its delay, every period): until it passes, readiness and liveness are not
//!   checked, and `failureThreshold` failures stop the container as liveness does. The state
//!   file is rewritten;
//! - a container that exits is restarted as the pod's `restartPolicy` says (Always; OnFailure:
//!   after a non-zero exit; Never), else it stays Terminated (STATUS Completed, NotReady, Error);
//! - `holdApplicationUntilProxyStarts` ([`crate::launch::hold_application`]): the app containers
//!   start once `istio-proxy` is ready;
//! - a pod without a sidecar has the Service rules of [`kube_proxy`] in its namespace before
//!   its processes start, replaced whenever Services or their ready endpoints change.
//!
//! SIGHUP (sent by `ama apply`) re-reads `<state>/applied/` and reconciles: new objects start
//! pods, a changed template replaces its pods (a Deployment's as its `spec.strategy` says:
//! [`crate::plan::rollout_step`], one step per tick), replicas scale, Services and Istio config
//! reach the proxies (through the control plane's files, or the resource files they reload).
//! `ama apply` fails when `ama discovery` is not ready to serve the change.
//!
//! A pod is deleted as Kubernetes deletes one behind a Service: its endpoints leave the proxies
//! first (it is left out of the registry, then [`ENDPOINT_DRAIN`] passes for the push to reach
//! them and in-flight requests to end), then its processes get SIGTERM (the sidecar drains), and
//! SIGKILL after the pod's `terminationGracePeriodSeconds`.
//!
//! SIGINT/SIGTERM (Ctrl-C, `ama down`) stop every process (SIGTERM, then SIGKILL after a
//! grace period) and delete every namespace, hosts file and the state directory.
//!
//! Everything created is owned: namespaces by [`Netns`] guards inside the [`Mesh`], so an
//! error or a panic on the way out still removes them; [`cleanup`] removes what a killed
//! `ama up` left, from its state file and the namespaces' names.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use control::model::VipAllocator;
use control::tokens::FileTokens;
use nix::sys::signal::Signal;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};

use crate::Error;
use crate::host_port::{Forwarder, PortSpec, StartError};
use crate::ipam::{GATEWAY, PodAddresses};
use crate::kube_proxy;
use crate::launch::{ContainerRun, Launch, LaunchInputs, Role, launch};
use crate::manifests::{self, Manifests};
use crate::mesh::{self, MeshView, SidecarSource, XdsMode};
use crate::naming;
use crate::netns::{self, Lan, Netns};
use crate::plan::{PodGroup, PodView, pod_groups, rollout_step};
use crate::probe;
use crate::process;
use crate::state::{
    ContainerRecord, ContainerState, ControlPlaneRecord, IngressRecord, PodRecord, ServiceRecord,
    State, StateDir, alive, now,
};

/// How often the loop runs.
const TICK: Duration = Duration::from_millis(500);
/// How long processes get between SIGTERM and SIGKILL when the whole mesh stops.
const GRACE: Duration = Duration::from_secs(6);
/// The longest restart back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After running this long, a process that exits is restarted after the shortest back-off
/// again (kubelet's reset).
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How long a deleted pod that was an endpoint keeps running before its SIGTERM: the push that
/// removes it reaches every proxy (the registry is polled every 200 ms), and requests already
/// sent to it finish. Istio's default `terminationDrainDuration`.
const ENDPOINT_DRAIN: Duration = Duration::from_secs(5);
/// How long after a pod became a ready endpoint it is shown as ready: the push that adds it has
/// reached the proxies by then (discovery polls its registry every 200 ms; in file mode the
/// proxies poll their file every second), so a client that waits for `2/2` can reach it at once.
fn endpoint_settle(xds: XdsMode) -> Duration {
    match xds {
        XdsMode::Discovery => Duration::from_secs(1),
        XdsMode::Files => Duration::from_secs(2),
    }
}

/// How long `ama down` waits for `ama up` to finish.
const DOWN_TIMEOUT: Duration = Duration::from_secs(40);
/// How long `ama apply` waits, after `ama up` took its change, for a discovery that is not ready.
const DISCOVERY_WAIT: Duration = Duration::from_secs(5);
/// How long `ama apply` waits for `ama up` to take a change.
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// What `ama up` is asked to run.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The directory (or file) of YAML.
    pub dir: PathBuf,
    /// The mesh's name.
    pub cluster: String,
    /// Where the sidecars get their resources.
    pub xds: XdsMode,
    /// This `ama` binary.
    pub ama: PathBuf,
    /// The installation profile: which gateways run in `istio-system` ([`crate::gateways`]).
    pub profile: manifest::Profile,
    /// Host ports of the ingress gateway's Service ports 80 and 443 (`None`: 80 and 443 when
    /// free, else 8080 and 8443; `Some(0)`: any free port).
    pub ingress_ports: (Option<u16>, Option<u16>),
}

/// What happens, for the CLI to show.
#[derive(Debug)]
pub enum Event<'a> {
    /// The objects were read: how many pods and services will run.
    Planned {
        /// Pods.
        pods: usize,
        /// Services.
        services: usize,
    },
    /// A pod's namespace and address exist; its processes start next.
    PodCreated(&'a PodRecord),
    /// Every container of a pod is ready (again).
    PodReady(&'a PodRecord),
    /// A container exited; it is restarted after `backoff`.
    ContainerExited {
        /// The pod.
        pod: &'a PodRecord,
        /// The container.
        container: &'a str,
        /// How it ended (`exit code 1`, `signal 9`).
        exit: String,
        /// Its exit code (128 + signal).
        code: i32,
        /// When it starts again.
        backoff: Duration,
        /// Which restart that will be.
        restart: u32,
    },
    /// A pod is being removed (scale down, new template).
    PodDeleted(&'a str),
    /// Something the user should know.
    Note(&'a str),
    /// A document left out, or what Ama does not implement of one ([`api::support`]).
    Finding(&'a api::objects::Finding),
    /// All pods ready for the first time (or again after a change).
    Ready(&'a State),
    /// `ama apply`'s objects were taken.
    Applied(usize),
    /// Stopping everything.
    Stopping,
    /// Everything is gone.
    Stopped,
}

/// Receives [`Event`]s.
pub trait Observer {
    /// Called for every event, in order.
    fn event(&mut self, event: Event<'_>);
}

/// Runs the mesh of `opts.dir` until SIGINT or SIGTERM, then removes all of it.
pub async fn up(opts: UpOptions, observer: &mut dyn Observer) -> Result<(), Error> {
    // Before anything else: no file, namespace or process is made for nothing.
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::needs_root("ama up"));
    }
    let dir = StateDir::new(&opts.cluster)?;
    if dir.root().exists() {
        match dir.load() {
            Ok(s) if alive(s.pid) && s.pid != crate::rootless::host_pid() => {
                return Err(Error::AlreadyRunning {
                    cluster: opts.cluster.clone(),
                    pid: s.pid,
                });
            }
            Ok(s) => {
                cleanup(&dir, Some(&s));
                observer.event(Event::Note(
                    "removed what a previous `ama up` of this mesh left behind",
                ));
            }
            Err(_) => cleanup(&dir, None),
        }
    }
    let mut base = Manifests::read_dir(&opts.dir)?;
    crate::gateways::add(&mut base, opts.profile);
    for w in &base.warnings {
        observer.event(Event::Finding(w));
    }
    preflight(&base, &opts)?;
    // Signals are taken before anything is created, so a Ctrl-C during start-up cleans up.
    let mut signals = Signals::new()?;
    dir.create()?;
    let mut mesh = Mesh::new(opts, dir, base)?;
    let result = mesh.run(observer, &mut signals).await;
    observer.event(Event::Stopping);
    mesh.shutdown();
    observer.event(Event::Stopped);
    result
}

/// Checks that every pod can run here before anything is created.
fn preflight(manifests: &Manifests, opts: &UpOptions) -> Result<(), Error> {
    let (groups, _) = pod_groups(manifests);
    let namespaces = manifests.namespaces();
    let mesh = manifests.mesh();
    let empty = manifests::Labels::new();
    for group in &groups {
        launch(LaunchInputs {
            group,
            pod_name: &group.owner.name,
            ip: GATEWAY,
            namespace_labels: namespaces.get(&group.owner.namespace).unwrap_or(&empty),
            mesh: &mesh,
            ama: &opts.ama,
            host_ip: GATEWAY,
            node_name: "local",
        })?;
    }
    Ok(())
}

/// The signals `ama up` acts on.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

/// What a signal asks for.
enum Asked {
    Stop,
    Reload,
}

impl Signals {
    fn new() -> Result<Signals, Error> {
        let take = |kind: SignalKind| {
            signal(kind).map_err(|source| Error::Io {
                path: PathBuf::from("<signal handler>"),
                source,
            })
        };
        Ok(Signals {
            interrupt: take(SignalKind::interrupt())?,
            terminate: take(SignalKind::terminate())?,
            hangup: take(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Asked {
        tokio::select! {
            _ = self.interrupt.recv() => Asked::Stop,
            _ = self.terminate.recv() => Asked::Stop,
            _ = self.hangup.recv() => Asked::Reload,
        }
    }
}

/// One check to make inside a pod.
enum Job {
    /// Over the pod's loopback.
    Net(crate::launch::Probe),
    /// An `exec` probe's command.
    Exec(std::process::Command),
}

/// Which probe a check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Readiness,
    Liveness,
    Startup,
}

/// One pod while it lives.
struct PodRuntime {
    record: PodRecord,
    runs: Vec<ContainerRun>,
    init_runs: Vec<ContainerRun>,
    children: HashMap<String, Child>,
    retry_at: HashMap<String, Instant>,
    /// Terminating: when its processes get SIGTERM (its endpoints are gone by then).
    drain_until: Option<Instant>,
    /// Terminating: when what is left gets SIGKILL.
    stop_deadline: Option<Instant>,
    /// `terminationGracePeriodSeconds`.
    grace: Duration,
    /// Shown as ready (by `ama get pods`, and to the rollout).
    was_ready: bool,
    /// Passes every readiness check: a ready endpoint of its Services.
    endpoint: bool,
    /// Since when `endpoint` has its value.
    endpoint_at: Instant,
    /// Per container: passing its readiness check (with the failure threshold applied).
    passing: Vec<bool>,
    /// Per container: readiness checks failed in a row.
    probe_failures: Vec<u32>,
    /// Per container: readiness checks passed in a row (towards `successThreshold`).
    probe_successes: Vec<u32>,
    /// Per container: when its next readiness check is due.
    ready_due: Vec<Option<Instant>>,
    /// Per container: liveness checks failed in a row, and when the next is due.
    live_failures: Vec<u32>,
    live_due: Vec<Option<Instant>>,
    /// Per container: its startup probe passed since it last started (or it has none);
    /// startup checks failed in a row, and when the next is due.
    started_up: Vec<bool>,
    startup_failures: Vec<u32>,
    startup_due: Vec<Option<Instant>>,
    /// What of the pod is not run as written, said once when it is created.
    notes: Vec<String>,
    /// When each running container started.
    started: HashMap<String, Instant>,
    /// Containers stopped by their liveness probe (SIGTERM): when they get SIGKILL.
    kill_at: HashMap<String, Instant>,
    /// `spec.restartPolicy`.
    restart_policy: crate::launch::RestartPolicy,
    /// The app containers wait for the sidecar ([`crate::launch::hold_application`]).
    hold_application: bool,
    /// Without a sidecar: the Service rules last installed in its namespace ([`kube_proxy`]),
    /// and the last failure to install them (said once, retried every tick).
    service_rules: Option<String>,
    service_rules_error: Option<String>,
    /// Declared last: dropped after the processes were dealt with.
    netns: Netns,
}

/// A running mesh. Field order is drop order: the host-port forwarder (its thread holds the
/// bridge's namespace) and the pods (their namespaces) before the LAN.
struct Mesh {
    ingress: Option<Forwarder>,
    opts: UpOptions,
    dir: StateDir,
    base: Manifests,
    manifests: Manifests,
    pods: Vec<PodRuntime>,
    /// The pod groups of the objects, as of the last reconcile.
    groups: Vec<PodGroup>,
    discovery: Option<Discovery>,
    lan: Lan,
    pool: PodAddresses,
    vips: VipAllocator,
    services: Vec<ServiceRecord>,
    view: Option<MeshView>,
    /// The Service rules of the pods without a sidecar, as of the last publish.
    service_rules: netfilter::RestoreScript,
    notes: Vec<String>,
    applied: usize,
    started_at: u64,
    node: String,
    rng: StdRng,
    all_ready: bool,
    /// The sidecars' tokens for `ama discovery`'s CA (discovery mode).
    tokens: Option<FileTokens>,
    /// When each object was first seen (`creationTimestamp`), by `kind/namespace/name`: kept
    /// while the object changes, as the API server keeps it across `kubectl apply`.
    created: HashMap<String, u64>,
    /// What `resources.json` holds, to write it only when it changes.
    resources: Vec<Value>,
}

/// `ama discovery` while `ama up` supervises it.
struct Discovery {
    run: ContainerRun,
    log: PathBuf,
    child: Option<Child>,
    started: Instant,
    retry_at: Option<Instant>,
    record: ControlPlaneRecord,
}

/// The restart back-off after `restarts` restarts of a process that ran for `ran`: 1 s,
/// doubling up to 30 s, back to 1 s after a long run.
fn backoff(restarts: u32, ran: Duration) -> Duration {
    if ran >= BACKOFF_RESET {
        return Duration::from_secs(1);
    }
    Duration::from_secs(1u64 << restarts.min(5)).min(MAX_BACKOFF)
}

/// How a process ended, for a person: `exit code 3`, `signal 9`.
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => status.to_string(),
    }
}

impl Mesh {
    fn new(opts: UpOptions, dir: StateDir, base: Manifests) -> Result<Mesh, Error> {
        let lan = Lan::create(&naming::lan_netns(&opts.cluster))?;
        let node = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        // The control plane reads the tokens from the same directory (file-mode authentication).
        let tokens = match opts.xds {
            XdsMode::Discovery => Some(FileTokens::open(dir.root()).map_err(Error::token)?),
            XdsMode::Files => None,
        };
        Ok(Mesh {
            ingress: None,
            tokens,
            manifests: base.clone(),
            base,
            opts,
            dir,
            pods: Vec::new(),
            groups: Vec::new(),
            discovery: None,
            lan,
            pool: PodAddresses::new([]),
            vips: VipAllocator::new(),
            services: Vec::new(),
            view: None,
            service_rules: netfilter::RestoreScript::default(),
            notes: Vec::new(),
            applied: 0,
            started_at: now(),
            node,
            rng: StdRng::from_os_rng(),
            all_ready: false,
            created: HashMap::new(),
            resources: Vec::new(),
        })
    }

    async fn run(
        &mut self,
        observer: &mut dyn Observer,
        signals: &mut Signals,
    ) -> Result<(), Error> {
        self.start_ingress(observer).await?;
        if self.opts.xds == XdsMode::Discovery {
            self.publish()?;
            self.start_discovery(observer, signals).await?;
        }
        self.reconcile(observer)?;
        loop {
            self.supervise_discovery(observer);
            self.supervise(observer)?;
            self.sync_service_rules();
            let readiness_changed = self.probe(observer).await;
            // A roll that changed something has published already.
            if !self.roll(observer)? && readiness_changed {
                self.publish()?;
            }
            self.save()?;
            tokio::select! {
                asked = signals.next() => match asked {
                    Asked::Stop => return Ok(()),
                    Asked::Reload => {
                        // `ama apply` reads whether the control plane can serve the change in
                        // the state saved with it.
                        self.probe_discovery(observer).await;
                        let n = self.reload(observer);
                        self.reconcile(observer)?;
                        observer.event(Event::Applied(n));
                    }
                },
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Forwards the host's loopback to the ingress gateway ([`crate::host_port`]), when the
    /// mesh has one: the ports asked for (an error when taken), else 80 and 443 when free, else
    /// 8080 and 8443 (a note when those are taken too).
    async fn start_ingress(&mut self, observer: &mut dyn Observer) -> Result<(), Error> {
        if !crate::gateways::has_ingress(&self.manifests) {
            return Ok(());
        }
        if crate::rootless::inside() {
            observer.event(Event::Note(
                "ingress gateway: not reachable from the host's loopback in a mesh run without \
                 root (its network namespace is its own); reach it from a pod",
            ));
            return Ok(());
        }
        let [
            (http, http_first, http_next),
            (https, https_first, https_next),
        ] = crate::gateways::FORWARDED;
        let attempts: Vec<[u16; 2]> = match self.opts.ingress_ports {
            (None, None) => vec![[http_first, https_first], [http_next, https_next]],
            (a, b) => vec![[a.unwrap_or(http_next), b.unwrap_or(https_next)]],
        };
        let explicit = attempts.len() == 1;
        let netns = self.lan.netns().name().to_string();
        let mut last = None;
        for [h, s] in attempts {
            let specs = [
                PortSpec {
                    host: h,
                    service: http,
                },
                PortSpec {
                    host: s,
                    service: https,
                },
            ];
            match Forwarder::start(&netns, &specs).await {
                Ok(f) => {
                    let note = format!(
                        "ingress gateway on the host: http://127.0.0.1:{} and https://127.0.0.1:{} \
                         (Service istio-system/istio-ingressgateway ports {http} and {https})",
                        f.host_port(http).unwrap_or(h),
                        f.host_port(https).unwrap_or(s),
                    );
                    observer.event(Event::Note(&note));
                    self.ingress = Some(f);
                    return Ok(());
                }
                Err(StartError::Bind { port, source }) => last = Some((port, source)),
                Err(e @ StartError::Netns { .. }) => {
                    return Err(Error::Io {
                        path: PathBuf::from("/run/netns").join(&netns),
                        source: std::io::Error::other(e.to_string()),
                    });
                }
            }
        }
        match last {
            Some((port, source)) if explicit => Err(Error::HostPort { port, source }),
            Some((port, source)) => {
                let note = format!(
                    "ingress gateway: not reachable from the host: 127.0.0.1:{port}: {source}; \
                     choose ports with --ingress-port and --secure-ingress-port"
                );
                observer.event(Event::Note(&note));
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Reaps `ama discovery` when it exited and restarts it after its back-off.
    fn supervise_discovery(&mut self, observer: &mut dyn Observer) {
        let Some(d) = self.discovery.as_mut() else {
            return;
        };
        if let Some(child) = d.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            // Reaped by try_wait; whatever it started in its group goes too.
            process::signal_group(child.id(), Signal::SIGKILL);
            d.child = None;
            let wait = backoff(d.record.restarts, d.started.elapsed());
            d.retry_at = Some(Instant::now() + wait);
            d.record.pid = None;
            d.record.ready = false;
            let why = format!(
                "exited ({}); restarting in {}s (restart {})",
                describe_exit(status),
                wait.as_secs(),
                d.record.restarts + 1
            );
            let note = format!("ama discovery {why}; its log: {}", d.log.display());
            d.record.waiting = Some(why);
            observer.event(Event::Note(&note));
        }
        if d.child.is_none() && d.retry_at.is_some_and(|t| Instant::now() >= t) {
            d.retry_at = None;
            d.record.restarts += 1;
            match process::spawn(
                self.lan.netns().name(),
                &d.run,
                &d.log,
                "istiod",
                &self.opts.ama,
            ) {
                Ok(child) => {
                    d.record.pid = Some(child.id());
                    d.record.waiting = None;
                    d.child = Some(child);
                    d.started = Instant::now();
                    let note = format!("ama discovery restarted (restart {})", d.record.restarts);
                    observer.event(Event::Note(&note));
                }
                Err(e) => {
                    let wait = backoff(d.record.restarts, Duration::ZERO);
                    d.retry_at = Some(Instant::now() + wait);
                    let why = format!("cannot start ({e}); retrying in {}s", wait.as_secs());
                    let note = format!("ama discovery {why}");
                    d.record.waiting = Some(why);
                    observer.event(Event::Note(&note));
                }
            }
        }
    }

    /// Checks `ama discovery`'s `/ready`; says so when it becomes ready again.
    async fn probe_discovery(&mut self, observer: &mut dyn Observer) {
        let Some(d) = self.discovery.as_mut() else {
            return;
        };
        let ready = match d.child {
            None => false,
            Some(_) => {
                let netns = self.lan.netns().name().to_string();
                let p = d.run.probe.clone();
                tokio::task::spawn_blocking(move || {
                    probe::in_netns(&netns, move || probe::check(&p))
                })
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false)
            }
        };
        if ready && !d.record.ready && d.record.restarts > 0 {
            observer.event(Event::Note("ama discovery is ready again"));
        }
        d.record.ready = ready;
    }

    /// Starts `ama discovery` on the bridge and waits for `/ready`.
    async fn start_discovery(
        &mut self,
        observer: &mut dyn Observer,
        signals: &mut Signals,
    ) -> Result<(), Error> {
        let run = ContainerRun {
            name: "discovery".into(),
            role: Role::App,
            argv: std::iter::once(self.opts.ama.display().to_string())
                .chain(mesh::discovery_args(
                    self.dir.root(),
                    &self.dir.config_dir(),
                    self.manifests.mesh().inject.trust_domain(),
                ))
                .collect(),
            env: vec![],
            user: None,
            readiness: crate::launch::Timing::default(),
            liveness: None,
            startup: None,
            // The control plane holds the CA's key: it keeps the host's view.
            sandbox: None,
            probe: crate::launch::Probe::Http {
                port: mesh::MONITORING_PORT,
                path: "/ready".into(),
            },
        };
        let log = self.dir.root().join("discovery.log");
        let child = process::spawn(
            self.lan.netns().name(),
            &run,
            &log,
            "istiod",
            &self.opts.ama,
        )?;
        self.discovery = Some(Discovery {
            record: ControlPlaneRecord {
                pid: Some(child.id()),
                log: log.clone(),
                ..ControlPlaneRecord::default()
            },
            run: run.clone(),
            log: log.clone(),
            child: Some(child),
            started: Instant::now(),
            retry_at: None,
        });
        observer.event(Event::Note(
            "starting ama discovery on 10.244.0.1 (ADS and CA on 15012)",
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let netns = self.lan.netns().name().to_string();
            let p = run.probe.clone();
            let ready = tokio::task::spawn_blocking(move || {
                probe::in_netns(&netns, move || probe::check(&p))
            })
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
            // The sidecars verify the CA against the root it writes.
            if ready && self.dir.root().join(mesh::ROOT_CERT_FILE).is_file() {
                if let Some(d) = self.discovery.as_mut() {
                    d.record.ready = true;
                }
                return Ok(());
            }
            if let Some(c) = self.discovery.as_mut().and_then(|d| d.child.as_mut())
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(Error::Command {
                    command: run.argv.join(" "),
                    status: status.to_string(),
                    stderr: tail(&log, 20),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::Command {
                    command: run.argv.join(" "),
                    status: "not ready after 30s".into(),
                    stderr: tail(&log, 20),
                });
            }
            tokio::select! {
                asked = signals.next() => if let Asked::Stop = asked { return Ok(()) },
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Merges what `ama apply` wrote over the objects of DIR. Returns how many files there are.
    fn reload(&mut self, observer: &mut dyn Observer) -> usize {
        let mut files: Vec<PathBuf> = fs::read_dir(self.dir.applied_dir())
            .map(|e| e.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        let mut manifests = self.base.clone();
        for file in &files {
            let text = fs::read_to_string(file).unwrap_or_default();
            if file.to_string_lossy().ends_with(DELETE_SUFFIX) {
                // What `ama delete` wrote: `[[kind, namespace, name], ...]`.
                let keys: Vec<(String, String, String)> =
                    serde_json::from_str(&text).unwrap_or_default();
                for (kind, namespace, name) in &keys {
                    manifests.remove(kind, namespace, name);
                }
                continue;
            }
            let (docs, findings) = manifests::parse(&text, &file.display().to_string());
            manifests.merge(docs);
            for f in &findings {
                observer.event(Event::Finding(f));
            }
        }
        self.manifests = manifests;
        self.applied = files.len();
        files.len()
    }

    /// Makes the running pods match the objects.
    fn reconcile(&mut self, observer: &mut dyn Observer) -> Result<(), Error> {
        let (groups, notes) = pod_groups(&self.manifests);
        self.notes = notes;
        for n in &self.notes {
            observer.event(Event::Note(n));
        }
        let wanted: usize = groups.iter().map(|g| g.replicas as usize).sum();
        let services = self
            .manifests
            .docs
            .iter()
            .filter(|d| d.object.kind() == "Service")
            .count();
        observer.event(Event::Planned {
            pods: wanted,
            services,
        });
        // Pods of groups that are gone: removed. The others follow their group's strategy.
        for pod in &mut self.pods {
            let kept = groups.iter().any(|g| g.key() == pod.record.group);
            if !kept && !pod.record.terminating {
                begin_stop(pod);
                observer.event(Event::PodDeleted(&pod.record.name));
            }
        }
        self.groups = groups;
        if !self.roll(observer)? {
            // Services and config may have changed all the same.
            self.publish()?;
        }
        self.all_ready = false;
        self.save()
    }

    /// One step of every group towards `replicas` ready pods of its current template
    /// ([`rollout_step`]); publishes when a pod was created or deleted, and says whether one was.
    fn roll(&mut self, observer: &mut dyn Observer) -> Result<bool, Error> {
        let groups = std::mem::take(&mut self.groups);
        let result = self.roll_groups(&groups, observer);
        self.groups = groups;
        let created = result?;
        let changed = created.is_some();
        if let Some(created) = created {
            self.publish()?;
            for i in created {
                observer.event(Event::PodCreated(&self.pods[i].record));
            }
            self.all_ready = false;
        }
        Ok(changed)
    }

    /// [`Mesh::roll`]'s work: None when nothing changed, else the indexes of the new pods.
    fn roll_groups(
        &mut self,
        groups: &[PodGroup],
        observer: &mut dyn Observer,
    ) -> Result<Option<Vec<usize>>, Error> {
        let namespaces = self.manifests.namespaces();
        let mesh_settings = self.manifests.mesh();
        let mut created = Vec::new();
        let mut changed = false;
        for group in groups {
            let key = group.key();
            let of_group: Vec<usize> = (0..self.pods.len())
                .filter(|i| self.pods[*i].record.group == key)
                .collect();
            let (terminating, live): (Vec<usize>, Vec<usize>) = of_group
                .into_iter()
                .partition(|i| self.pods[*i].record.terminating);
            let views: Vec<PodView> = live
                .iter()
                .map(|i| PodView {
                    current: self.pods[*i].record.template_hash == group.template_hash,
                    ready: self.pods[*i].record.is_ready(),
                })
                .collect();
            let step = rollout_step(group.strategy, group.replicas, &views, terminating.len());
            for j in step.delete {
                let pod = &mut self.pods[live[j]];
                begin_stop(pod);
                observer.event(Event::PodDeleted(&pod.record.name));
                changed = true;
            }
            let mut ordinal = 0u32;
            for _ in 0..step.create {
                let name = loop {
                    let name = group.pod_name(ordinal, &mut self.rng);
                    ordinal += 1;
                    if !self.pods.iter().any(|p| p.record.name == name) {
                        break name;
                    }
                };
                let empty = manifests::Labels::new();
                let ns_labels = namespaces.get(&group.owner.namespace).unwrap_or(&empty);
                let mut pod = self.create_pod(group, &name, ns_labels, &mesh_settings)?;
                for note in std::mem::take(&mut pod.notes) {
                    observer.event(Event::Note(&note));
                }
                self.pods.push(pod);
                created.push(self.pods.len() - 1);
                changed = true;
            }
        }
        Ok(changed.then_some(created))
    }

    /// Creates a pod's namespace, address and records; its processes start in `supervise`.
    fn create_pod(
        &mut self,
        group: &PodGroup,
        name: &str,
        ns_labels: &manifests::Labels,
        settings: &manifests::MeshSettings,
    ) -> Result<PodRuntime, Error> {
        let ip = self.pool.allocate()?;
        let l: Launch = launch(LaunchInputs {
            group,
            pod_name: name,
            ip,
            namespace_labels: ns_labels,
            mesh: settings,
            ama: &self.opts.ama,
            host_ip: GATEWAY,
            node_name: &self.node,
        })?;
        let namespace = group.owner.namespace.clone();
        let netns = Netns::create(&naming::pod_netns(&self.opts.cluster, &namespace, name))?;
        self.lan.attach(&netns, ip)?;
        set_sysctls(&netns, name, &l.pod);
        let pod_dir = self.dir.pod_dir(name);
        fs::create_dir_all(&pod_dir).map_err(Error::io(&pod_dir))?;
        let sidecar = l.injected();
        let mut runs = l.containers.clone();
        let mut init_runs = l.init.clone();
        // Every mesh's state is hidden from every container (the CA's key, the tokens, the
        // other pods); the sidecar sees back what kubelet would mount into istio-proxy.
        let hide = self.dir.root().parent().map(Path::to_path_buf);
        for run in runs.iter_mut().chain(init_runs.iter_mut()) {
            if let Some(s) = run.sandbox.as_mut() {
                s.hide.extend(hide.clone());
            }
        }
        for run in runs.iter_mut().filter(|r| r.role == Role::Sidecar) {
            let (source_args, mut keep) = match &self.tokens {
                Some(tokens) => {
                    // As kubelet mounts a projected token: readable by the sidecar's user only.
                    let token = tokens
                        .issue(&namespace, &service_account(&l.pod), name)
                        .map_err(Error::token)?;
                    if let Some((uid, gid)) = run.user {
                        token.give_to(uid, gid).map_err(Error::token)?;
                    }
                    let args = mesh::sidecar_source_args(SidecarSource::Discovery {
                        state_dir: self.dir.root(),
                        token_file: token.path(),
                    });
                    let root_cert = self.dir.root().join(mesh::ROOT_CERT_FILE);
                    (args, vec![token.path().to_path_buf(), root_cert])
                }
                None => (
                    mesh::sidecar_source_args(SidecarSource::Files { pod_dir: &pod_dir }),
                    Vec::new(),
                ),
            };
            keep.push(pod_dir.clone());
            if let Some(s) = run.sandbox.as_mut() {
                s.keep = keep;
            }
            run.argv.extend(source_args);
            // The CA is the bridge's `ama discovery` (`--ca-addr`), not istiod's Service name.
            run.env.retain(|(k, _)| k != "CA_ADDR");
            if !settings.access_log_file.is_empty() {
                run.env.push((
                    "AMA_ACCESS_LOG_FILE".into(),
                    settings.access_log_file.clone(),
                ));
                run.env.push((
                    "AMA_ACCESS_LOG_ENCODING".into(),
                    settings.access_log_encoding.clone(),
                ));
            }
        }
        let record_of = |run: &ContainerRun, reason: &str| ContainerRecord {
            name: run.name.clone(),
            role: run.role,
            pid: None,
            log: pod_dir.join(format!("{}.log", run.name)),
            ready: false,
            restarts: 0,
            last_exit_at: None,
            state: ContainerState::Waiting {
                reason: reason.into(),
            },
            user: run.user,
            env: run.env.clone(),
            probe: run.probe.clone(),
            readiness: run.readiness,
            liveness: run.liveness.clone(),
            startup: run.startup.clone(),
            last_state: None,
            sandbox: run.sandbox.clone(),
        };
        let init_reason = if l.init.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let record = PodRecord {
            name: name.to_string(),
            namespace,
            ip,
            netns: netns.name().to_string(),
            group: group.key(),
            template_hash: group.template_hash.clone(),
            created_at: now(),
            sidecar,
            terminating: false,
            deleted_at: None,
            init: init_runs
                .iter()
                .map(|r| record_of(r, "PodInitializing"))
                .collect(),
            containers: runs.iter().map(|r| record_of(r, init_reason)).collect(),
            object: l.pod.clone(),
            events: Vec::new(),
        };
        let mut record = record;
        record.event(
            false,
            "Scheduled",
            format!(
                "Successfully assigned {}/{name} to {}",
                record.namespace, self.node
            ),
        );
        Ok(PodRuntime {
            record,
            runs,
            init_runs,
            children: HashMap::new(),
            retry_at: HashMap::new(),
            drain_until: None,
            stop_deadline: None,
            grace: group.termination_grace,
            was_ready: false,
            endpoint: false,
            endpoint_at: Instant::now(),
            passing: Vec::new(),
            probe_failures: Vec::new(),
            probe_successes: Vec::new(),
            ready_due: Vec::new(),
            live_failures: Vec::new(),
            live_due: Vec::new(),
            started_up: Vec::new(),
            startup_failures: Vec::new(),
            startup_due: Vec::new(),
            notes: l.notes.clone(),
            started: HashMap::new(),
            kill_at: HashMap::new(),
            restart_policy: l.restart_policy,
            hold_application: l.hold_application,
            service_rules: None,
            service_rules_error: None,
            netns,
        })
    }

    /// Writes what the control plane, the proxies and the pods' resolvers read, and installs
    /// the Service rules of the pods without a sidecar.
    fn publish(&mut self) -> Result<(), Error> {
        let objects: Vec<(&Value, bool)> = self
            .pods
            .iter()
            .filter(|p| !p.record.terminating)
            .map(|p| (&p.record.object, p.endpoint))
            .collect();
        let mut view = mesh::view(&self.manifests, &objects, &mut self.vips);
        if let Some(forwarder) = &self.ingress {
            let ports: Vec<u16> = crate::gateways::FORWARDED.iter().map(|f| f.0).collect();
            let bound: Vec<(u16, u16)> = ports
                .iter()
                .filter_map(|p| Some((*p, forwarder.host_port(*p)?)))
                .collect();
            crate::gateways::mark_ingress(&mut view.objects, &bound);
            forwarder.set_upstreams(crate::gateways::ingress_upstreams(&view.objects, &ports));
        }
        view.write_config(&self.dir.config_dir())?;
        self.services = view.services(&self.services, now());
        let external = mesh::external_names(&objects);
        self.lan
            .netns()
            .set_hosts(&mesh::bridge_hosts_file(&external))?;
        for pod in &self.pods {
            if self.opts.xds == XdsMode::Files && pod.record.sidecar {
                view.write_resources(&pod.record, &self.dir.pod_dir(&pod.record.name))?;
            }
            pod.netns.set_hosts(&mesh::hosts_file(
                &pod.record.name,
                &pod.record.namespace,
                pod.record.ip,
                &self.services,
                &external,
            ))?;
        }
        self.service_rules = kube_proxy::rules(&view.objects);
        self.save_resources(&view)?;
        self.view = Some(view);
        self.sync_service_rules();
        Ok(())
    }

    /// Writes `resources.json` for `ama get`: the user's objects and the EndpointSlices of the
    /// Services, each with its `creationTimestamp`.
    fn save_resources(&mut self, view: &MeshView) -> Result<(), Error> {
        let slices = view
            .objects
            .iter()
            .filter(|o| o.get("kind").and_then(Value::as_str) == Some("EndpointSlice"));
        let now = now();
        let mut seen = std::collections::HashSet::new();
        let mut objects = Vec::new();
        for raw in self.manifests.docs.iter().map(|d| &d.raw).chain(slices) {
            let mut o = raw.clone();
            let key = resource_key(&o);
            let at = *self.created.entry(key.clone()).or_insert(now);
            seen.insert(key);
            if let Some(Value::Object(meta)) = o.get_mut("metadata") {
                meta.insert("creationTimestamp".into(), json!(crate::table::rfc3339(at)));
            }
            objects.push(o);
        }
        self.created.retain(|k, _| seen.contains(k));
        if objects != self.resources {
            self.dir.save_resources(&objects)?;
            self.resources = objects;
        }
        Ok(())
    }

    /// Installs the current Service rules in every pod without a sidecar that does not have
    /// them yet ([`kube_proxy`]). A failure is said once per pod and message, and retried on
    /// the next tick: the pod cannot reach Services meanwhile, as with a failing kube-proxy.
    fn sync_service_rules(&mut self) {
        let text = self.service_rules.to_string();
        for pod in self.pods.iter_mut().filter(|p| !p.record.sidecar) {
            if pod.service_rules.as_deref() == Some(text.as_str()) {
                continue;
            }
            match kube_proxy::sync(pod.netns.name(), &pod.record.name, &self.service_rules) {
                Ok(()) => {
                    pod.service_rules = Some(text.clone());
                    pod.service_rules_error = None;
                }
                Err(e) => {
                    let message = e.to_string();
                    if pod.service_rules_error.as_deref() != Some(message.as_str()) {
                        tracing::warn!("{message}");
                        pod.service_rules_error = Some(message);
                    }
                }
            }
        }
    }

    /// Reaps exited processes, starts and restarts processes, finishes pod removals.
    fn supervise(&mut self, observer: &mut dyn Observer) -> Result<(), Error> {
        let now_i = Instant::now();
        let mut removed = Vec::new();
        for (i, pod) in self.pods.iter_mut().enumerate() {
            // Exits.
            let names: Vec<String> = pod.children.keys().cloned().collect();
            for name in names {
                let exited = pod
                    .children
                    .get_mut(&name)
                    .and_then(|c| c.try_wait().ok().flatten());
                let Some(status) = exited else { continue };
                pod.children.remove(&name);
                pod.started.remove(&name);
                pod.kill_at.remove(&name);
                // Its probes start over with its next start.
                if let Some(j) = pod.record.containers.iter().position(|c| c.name == name) {
                    let no_startup = pod.record.containers[j].startup.is_none();
                    for due in [&mut pod.ready_due, &mut pod.live_due, &mut pod.startup_due] {
                        if let Some(d) = due.get_mut(j) {
                            *d = None;
                        }
                    }
                    if let Some(s) = pod.started_up.get_mut(j) {
                        *s = no_startup;
                    }
                }
                let code = exit_code(status);
                let record = record_mut(&mut pod.record, &name);
                let ran = match record.state {
                    ContainerState::Running { started_at } => {
                        Duration::from_secs(now().saturating_sub(started_at))
                    }
                    _ => Duration::ZERO,
                };
                record.pid = None;
                record.ready = false;
                record.last_exit_at = Some(now());
                let is_init = record.role == Role::Init;
                record.state = ContainerState::Terminated {
                    exit_code: code,
                    reason: if code == 0 { "Completed" } else { "Error" }.into(),
                };
                record.last_state = Some(record.state.clone());
                if pod.record.terminating {
                    continue;
                }
                if !pod.restart_policy.restarts(code) {
                    if !(is_init && code == 0) {
                        let note = format!(
                            "pod {}: container {name} exited ({}); restartPolicy {:?}: not \
                             restarted",
                            pod.record.name,
                            describe_exit(status),
                            pod.restart_policy
                        );
                        observer.event(Event::Note(&note));
                    }
                    continue;
                }
                if !(is_init && code == 0) {
                    let record = record_mut(&mut pod.record, &name);
                    let wait = backoff(record.restarts, ran);
                    let restart = record.restarts + 1;
                    pod.retry_at.insert(name.clone(), now_i + wait);
                    pod.record.event(
                        true,
                        "BackOff",
                        format!("Back-off restarting failed container {name}"),
                    );
                    observer.event(Event::ContainerExited {
                        pod: &pod.record,
                        container: &name,
                        exit: describe_exit(status),
                        code,
                        backoff: wait,
                        restart,
                    });
                }
            }
            if pod.record.terminating {
                // Its endpoints are gone from the proxies by now: SIGTERM (the sidecar drains).
                if pod.drain_until.is_some_and(|t| now_i >= t) {
                    pod.drain_until = None;
                    for c in pod.children.values() {
                        process::signal_group(c.id(), Signal::SIGTERM);
                    }
                }
                let done = pod.children.is_empty() || pod.stop_deadline.is_some_and(|d| now_i >= d);
                if done {
                    for c in pod.children.values() {
                        process::signal_group(c.id(), Signal::SIGKILL);
                    }
                    for c in pod.children.values_mut() {
                        let _ = c.wait();
                    }
                    removed.push(i);
                }
                continue;
            }
            // What its liveness probe stopped and is still there after the grace period.
            for (name, at) in &pod.kill_at {
                if now_i >= *at
                    && let Some(child) = pod.children.get(name)
                {
                    process::signal_group(child.id(), Signal::SIGKILL);
                }
            }
            // Init containers, one at a time.
            let next_init =
                pod.record.init.iter().position(|c| {
                    !matches!(c.state, ContainerState::Terminated { exit_code: 0, .. })
                });
            let to_start: Vec<ContainerRun> = match next_init {
                Some(n) => vec![pod.init_runs[n].clone()],
                None => pod.runs.clone(),
            };
            // holdApplicationUntilProxyStarts: the apps start once the sidecar is ready.
            let held = pod.hold_application
                && pod
                    .record
                    .containers
                    .iter()
                    .any(|c| c.role == Role::Sidecar && !c.ready);
            for run in to_start {
                if pod.children.contains_key(&run.name) {
                    continue;
                }
                let record = record_mut(&mut pod.record, &run.name);
                let never_started = matches!(record.state, ContainerState::Waiting { .. })
                    && record.last_exit_at.is_none();
                if held && run.role == Role::App && never_started {
                    continue;
                }
                // Ran to its end and its pod's restartPolicy keeps it there.
                if let ContainerState::Terminated { exit_code, .. } = record.state
                    && !pod.retry_at.contains_key(&run.name)
                    && !pod.restart_policy.restarts(exit_code)
                {
                    continue;
                }
                if pod.retry_at.get(&run.name).is_some_and(|t| now_i < *t) {
                    let record = record_mut(&mut pod.record, &run.name);
                    if record.role != Role::Init || record.restarts > 0 {
                        record.state = ContainerState::Waiting {
                            reason: "CrashLoopBackOff".into(),
                        };
                    }
                    continue;
                }
                let restarted = pod.retry_at.remove(&run.name).is_some();
                let log = record_mut(&mut pod.record, &run.name).log.clone();
                let child = process::spawn(
                    &pod.record.netns,
                    &run,
                    &log,
                    &pod.record.name,
                    &self.opts.ama,
                );
                let record = record_mut(&mut pod.record, &run.name);
                if restarted {
                    record.restarts += 1;
                }
                match child {
                    Ok(child) => {
                        record.pid = Some(child.id());
                        record.state = ContainerState::Running { started_at: now() };
                        pod.children.insert(run.name.clone(), child);
                        pod.started.insert(run.name.clone(), now_i);
                        pod.record.event(
                            false,
                            "Started",
                            format!("Started container {}", run.name),
                        );
                    }
                    Err(e) => {
                        record.state = ContainerState::Waiting {
                            reason: "RunContainerError".into(),
                        };
                        pod.retry_at.insert(run.name.clone(), now_i + MAX_BACKOFF);
                        let note = format!("pod {}: container {}: {e}", pod.record.name, run.name);
                        observer.event(Event::Note(&note));
                    }
                }
            }
            // After the last init container, the containers wait for their start.
            if next_init.is_none() {
                for c in &mut pod.record.containers {
                    if matches!(&c.state, ContainerState::Waiting { reason } if reason == "PodInitializing")
                    {
                        c.state = ContainerState::Waiting {
                            reason: "ContainerCreating".into(),
                        };
                    }
                }
            }
        }
        if !removed.is_empty() {
            for i in removed.into_iter().rev() {
                let pod = self.pods.remove(i);
                self.pool.release(pod.record.ip);
                if let Some(tokens) = &self.tokens
                    && let Err(e) = tokens.revoke(
                        &pod.record.namespace,
                        &service_account(&pod.record.object),
                        &pod.record.name,
                    )
                {
                    tracing::warn!(pod = pod.record.name, "{e}");
                }
                let _ = fs::remove_dir_all(self.dir.pod_dir(&pod.record.name));
                // Dropping the pod deletes its namespace.
            }
            self.publish()?;
        }
        Ok(())
    }

    /// Runs the probes that are due of every running container, one thread per pod, and the
    /// control plane's readiness check; kills the containers whose liveness probe failed
    /// `failureThreshold` times in a row. True when a pod's readiness changed (its endpoints
    /// change with it).
    async fn probe(&mut self, observer: &mut dyn Observer) -> bool {
        let mut changed = false;
        let mut tasks = Vec::new();
        let now_i = Instant::now();
        for (i, pod) in self.pods.iter_mut().enumerate() {
            if pod.record.terminating {
                continue;
            }
            let n = pod.record.containers.len();
            pod.ready_due.resize(n, None);
            pod.live_due.resize(n, None);
            pod.startup_due.resize(n, None);
            pod.started_up.resize(n, false);
            let mut checks: Vec<(usize, Check, Job)> = Vec::new();
            // An exec probe's command, as `ama exec` would run it in the container.
            let ama = &self.opts.ama;
            let job = |c: &ContainerRecord, p: &crate::launch::Probe, pod: &PodRecord| match p {
                crate::launch::Probe::Exec { command } => Job::Exec(process::command(
                    &pod.netns,
                    command,
                    c.user,
                    c.sandbox.as_ref(),
                    &c.env,
                    &pod.name,
                    ama,
                )),
                other => Job::Net(other.clone()),
            };
            for (j, c) in pod.record.containers.iter().enumerate() {
                let Some(started) = pod.started.get(&c.name).copied() else {
                    pod.ready_due[j] = None;
                    pod.live_due[j] = None;
                    pod.startup_due[j] = None;
                    pod.started_up[j] = c.startup.is_none();
                    continue;
                };
                let delay = |t: &crate::launch::Timing| {
                    started + Duration::from_secs(t.initial_delay_seconds)
                };
                // Until its startup probe passed, nothing else is checked (kubelet's order).
                if let Some(s) = c.startup.as_ref().filter(|_| !pod.started_up[j]) {
                    let due = *pod.startup_due[j].get_or_insert_with(|| delay(&s.timing));
                    if now_i >= due && !pod.kill_at.contains_key(&c.name) {
                        checks.push((j, Check::Startup, job(c, &s.check, &pod.record)));
                        pod.startup_due[j] =
                            Some(now_i + Duration::from_secs(s.timing.period_seconds));
                    }
                    continue;
                }
                let ready_due = *pod.ready_due[j].get_or_insert_with(|| delay(&c.readiness));
                if now_i >= ready_due {
                    checks.push((j, Check::Readiness, job(c, &c.probe, &pod.record)));
                }
                // Not probed for liveness again while it is being stopped.
                if let Some(l) = c
                    .liveness
                    .as_ref()
                    .filter(|_| !pod.kill_at.contains_key(&c.name))
                {
                    let live_due = *pod.live_due[j].get_or_insert_with(|| delay(&l.timing));
                    if now_i >= live_due {
                        checks.push((j, Check::Liveness, job(c, &l.check, &pod.record)));
                        pod.live_due[j] =
                            Some(now_i + Duration::from_secs(l.timing.period_seconds));
                    }
                }
            }
            let netns = pod.record.netns.clone();
            tasks.push((
                i,
                tokio::task::spawn_blocking(move || {
                    probe::in_netns(&netns, move || {
                        checks
                            .into_iter()
                            .map(|(j, kind, job)| {
                                let ok = match job {
                                    Job::Net(p) => probe::check(&p),
                                    Job::Exec(cmd) => probe::exec(cmd),
                                };
                                (j, kind, ok)
                            })
                            .collect::<Vec<_>>()
                    })
                }),
            ));
        }
        let settle = endpoint_settle(self.opts.xds);
        for (i, task) in tasks {
            let results = task.await.ok().and_then(Result::ok).unwrap_or_default();
            let pod = &mut self.pods[i];
            let n = pod.record.containers.len();
            pod.probe_failures.resize(n, 0);
            pod.probe_successes.resize(n, 0);
            pod.live_failures.resize(n, 0);
            pod.startup_failures.resize(n, 0);
            pod.passing.resize(n, false);
            let mut passed = pod.passing.clone();
            for (j, kind, ok) in results {
                if kind != Check::Readiness {
                    let c = &pod.record.containers[j];
                    let (spec, failures) = match kind {
                        Check::Startup => (&c.startup, &mut pod.startup_failures[j]),
                        _ => (&c.liveness, &mut pod.live_failures[j]),
                    };
                    let Some(l) = spec else { continue };
                    let threshold = l.timing.failure_threshold;
                    if ok {
                        *failures = 0;
                        if kind == Check::Startup {
                            pod.started_up[j] = true;
                        }
                        continue;
                    }
                    let (name, what) = (c.name.clone(), l.check.describe());
                    *failures += 1;
                    let failed = *failures >= threshold;
                    if failed {
                        *failures = 0;
                    }
                    let word = if kind == Check::Startup {
                        "Startup"
                    } else {
                        "Liveness"
                    };
                    let message = format!("{word} probe failed: {what}");
                    pod.record.event(true, "Unhealthy", message);
                    if failed {
                        if let Some(child) = pod.children.get(&name) {
                            // As kubelet: SIGTERM, SIGKILL after the grace period (`supervise`);
                            // reaped and restarted as restartPolicy says.
                            process::signal_group(child.id(), Signal::SIGTERM);
                            pod.kill_at.insert(name.clone(), now_i + pod.grace);
                        }
                        let lower = word.to_ascii_lowercase();
                        pod.record.event(
                            false,
                            "Killing",
                            format!("Container {name} failed {lower} probe, will be restarted"),
                        );
                        let note = format!(
                            "pod {}: container {name} failed its {lower} probe {threshold} \
                             times: stopped, to be restarted",
                            pod.record.name
                        );
                        observer.event(Event::Note(&note));
                    }
                    continue;
                }
                // Readiness: `successThreshold` passes in a row make it pass, `failureThreshold`
                // failures in a row make it fail; one slow answer on a busy machine does not
                // take a pod out of its Services.
                let timing = pod.record.containers[j].readiness;
                if ok {
                    pod.probe_failures[j] = 0;
                    pod.probe_successes[j] += 1;
                    if pod.probe_successes[j] >= timing.success_threshold {
                        passed[j] = true;
                    }
                } else {
                    pod.probe_successes[j] = 0;
                    pod.probe_failures[j] += 1;
                    if pod.probe_failures[j] >= timing.failure_threshold {
                        passed[j] = false;
                    }
                    if passed[j] || pod.probe_failures[j] == timing.failure_threshold {
                        let what = pod.record.containers[j].probe.describe();
                        let message = format!("Readiness probe failed: {what}");
                        pod.record.event(true, "Unhealthy", message);
                    }
                }
                // Until it passes, checked every tick (ready as soon as it can be); then every
                // periodSeconds.
                pod.ready_due[j] = Some(if passed[j] {
                    now_i + Duration::from_secs(timing.period_seconds)
                } else {
                    now_i
                });
            }
            // A container that is not running (exited, restarting) fails at once.
            for (j, c) in pod.record.containers.iter().enumerate() {
                if !matches!(c.state, ContainerState::Running { .. }) {
                    passed[j] = false;
                    pod.probe_failures[j] = 0;
                    pod.probe_successes[j] = 0;
                }
            }
            pod.passing.clone_from(&passed);
            // Ready pods are endpoints at once; the pod is shown (and counted by a rollout) as
            // ready once the push of its endpoint had time to reach the proxies.
            let endpoint = passed.iter().all(|ok| *ok);
            if endpoint != pod.endpoint {
                changed = true;
                pod.endpoint = endpoint;
                pod.endpoint_at = Instant::now();
            }
            let settled = endpoint && pod.endpoint_at.elapsed() >= settle;
            for (c, ok) in pod.record.containers.iter_mut().zip(passed) {
                c.ready = ok && (settled || !endpoint);
            }
            let ready = pod.record.is_ready();
            if ready && !pod.was_ready {
                observer.event(Event::PodReady(&pod.record));
            }
            pod.was_ready = ready;
        }
        self.probe_discovery(observer).await;
        let all = !self.pods.is_empty()
            && self
                .pods
                .iter()
                .all(|p| p.record.terminating || p.record.is_ready());
        if all && !self.all_ready {
            self.all_ready = true;
            let state = self.state();
            observer.event(Event::Ready(&state));
        }
        changed
    }

    /// The state as `ama get` reads it.
    fn state(&self) -> State {
        let objects = self
            .manifests
            .docs
            .iter()
            .map(|d| (object_key(d), content_hash(&d.raw)))
            .collect();
        State {
            cluster: self.opts.cluster.clone(),
            pid: crate::rootless::host_pid(),
            rootless: crate::rootless::inside(),
            started_at: self.started_at,
            xds: self.opts.xds.as_str().into(),
            lan_netns: self.lan.netns().name().into(),
            pods: self.pods.iter().map(|p| p.record.clone()).collect(),
            services: self.services.clone(),
            objects,
            notes: self.notes.clone(),
            stopping: false,
            applied: self.applied,
            discovery: self.discovery.as_ref().map(|d| d.record.clone()),
            ingress: self.ingress.as_ref().map(|f| IngressRecord {
                address: crate::gateways::HOST_ADDRESS,
                http: f.host_port(crate::gateways::FORWARDED[0].0),
                https: f.host_port(crate::gateways::FORWARDED[1].0),
            }),
        }
    }

    fn save(&self) -> Result<(), Error> {
        self.dir.save(&self.state())
    }

    /// Stops every process and removes every namespace and the state directory.
    fn shutdown(mut self) {
        // The host ports first: nothing new comes in while the pods stop.
        self.ingress = None;
        let mut state = self.state();
        state.stopping = true;
        let _ = self.dir.save(&state);
        let mut children: Vec<Child> = self
            .pods
            .iter_mut()
            .flat_map(|p| p.children.drain().map(|(_, c)| c))
            .collect();
        process::stop_all(&mut children, GRACE);
        if let Some(mut d) = self.discovery.take().and_then(|d| d.child) {
            process::stop_all(std::slice::from_mut(&mut d), GRACE);
        }
        let dir = self.dir.clone();
        let cluster = self.opts.cluster.clone();
        drop(self);
        sweep(&cluster);
        if let Err(e) = dir.remove() {
            tracing::warn!("{e}");
        }
    }
}

/// The pod's `securityContext.sysctls`, as kubelet sets them: the `net.*` ones belong to the
/// pod's network namespace and are written there (Istio's gateway Deployment lowers
/// `net.ipv4.ip_unprivileged_port_start` so that its proxy binds 80 and 443). Pods here share
/// the machine's other namespaces, so any other sysctl is left unset, with a warning, as is one
/// the kernel refuses.
fn set_sysctls(netns: &Netns, pod_name: &str, pod: &Value) {
    let Some(list) = pod
        .pointer("/spec/securityContext/sysctls")
        .and_then(Value::as_array)
    else {
        return;
    };
    for (i, s) in list.iter().enumerate() {
        let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
        let value = match s.get("value") {
            Some(Value::String(v)) => v.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        let field = format!("spec.securityContext.sysctls[{i}]");
        if !name.starts_with("net.") || name.contains('/') || name.contains("..") {
            tracing::warn!(
                pod = pod_name,
                "{field}: {name:?} is not a sysctl of the pod's network namespace; not set (pods \
                 here share the machine's other namespaces)"
            );
            continue;
        }
        if let Err(e) = netns.exec("sysctl", &["-q", "-w", &format!("{name}={value}")]) {
            tracing::warn!(pod = pod_name, "{field}: {name}={value} not set: {e}");
        }
    }
}

/// The pod's service account (`default` when unset).
fn service_account(pod: &Value) -> String {
    pod.pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string()
}

/// Starts deleting a pod: it leaves the registry at the next publish; its processes get SIGTERM
/// after [`ENDPOINT_DRAIN`] (at once when it was no ready endpoint), SIGKILL after its grace
/// period (at least 2 s after the SIGTERM, as kubelet gives a slow preStop).
fn begin_stop(pod: &mut PodRuntime) {
    pod.record.terminating = true;
    pod.record.deleted_at = Some(now());
    let drain = if pod.endpoint {
        ENDPOINT_DRAIN.min(pod.grace)
    } else {
        Duration::ZERO
    };
    let start = Instant::now();
    pod.drain_until = Some(start + drain);
    pod.stop_deadline = Some(start + pod.grace.max(drain + Duration::from_secs(2)));
}

fn record_mut<'a>(pod: &'a mut PodRecord, name: &str) -> &'a mut ContainerRecord {
    let idx = pod.containers.iter().position(|c| c.name == name);
    match idx {
        Some(i) => &mut pod.containers[i],
        None => {
            let i = pod.init.iter().position(|c| c.name == name).unwrap_or(0);
            &mut pod.init[i]
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// The last `n` lines of a log.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `namespace/kind.group/name`: how the state names an applied object.
fn object_key(d: &manifests::Document) -> String {
    format!("{}/{}", d.object.metadata().namespace, d.resource_name())
}

/// `kind/namespace/name` of a raw object.
fn resource_key(o: &Value) -> String {
    let text = |p: &str| o.pointer(p).and_then(Value::as_str).unwrap_or_default();
    format!(
        "{}/{}/{}",
        text("/kind"),
        text("/metadata/namespace"),
        text("/metadata/name")
    )
}

fn content_hash(raw: &Value) -> String {
    let digest = Sha256::digest(raw.to_string().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Removes every namespace of mesh `cluster` (what a killed `ama up` may have left).
fn sweep(cluster: &str) -> usize {
    let prefix = naming::netns_prefix(cluster);
    let leftovers: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    for n in &leftovers {
        netns::remove(n);
    }
    leftovers.len()
}

/// Removes what a mesh left behind: its processes (everything in its namespaces), the
/// namespaces, their `/etc/netns` directories and the state directory.
pub fn cleanup(dir: &StateDir, state: Option<&State>) {
    if !nix::unistd::geteuid().is_root() || state.is_some_and(|s| s.rootless) {
        // A rootless mesh: its namespaces die with the init of its PID namespace.
        if let Some(pid) = state.filter(|s| s.rootless && alive(s.pid)).map(|s| s.pid)
            && let Ok(pid) = i32::try_from(pid)
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Err(e) = dir.remove() {
            tracing::warn!("{e}");
        }
        return;
    }
    if let Some(state) = state {
        for pod in &state.pods {
            netns::remove(&pod.netns);
        }
        if !state.lan_netns.is_empty() {
            netns::remove(&state.lan_netns);
        }
    }
    sweep(dir.cluster());
    if let Err(e) = dir.remove() {
        tracing::warn!("{e}");
    }
}

/// What `ama down` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Down {
    /// `ama up` stopped the mesh (it had this many pods).
    Stopped {
        /// Pods.
        pods: usize,
    },
    /// `ama up` was gone; its leftovers were removed.
    CleanedUp {
        /// Pods.
        pods: usize,
    },
}

/// Stops mesh `dir`: asks its `ama up` (SIGTERM) and waits for it; removes the leftovers of
/// one that is gone.
pub fn down(dir: &StateDir) -> Result<Down, Error> {
    let root = nix::unistd::geteuid().is_root();
    let state = match dir.load() {
        Ok(s) if !root && !s.rootless => return Err(Error::needs_root("ama down")),
        Ok(s) => s,
        Err(Error::NotRunning { cluster, path }) => {
            if root && sweep(dir.cluster()) > 0 {
                return Ok(Down::CleanedUp { pods: 0 });
            }
            return Err(Error::NotRunning { cluster, path });
        }
        Err(e) => {
            cleanup(dir, None);
            tracing::warn!("{e}");
            return Ok(Down::CleanedUp { pods: 0 });
        }
    };
    let pods = state.pods.len();
    if alive(state.pid) {
        if let Ok(pid) = i32::try_from(state.pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + DOWN_TIMEOUT;
        while Instant::now() < deadline && alive(state.pid) && dir.root().exists() {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !dir.root().exists() {
            return Ok(Down::Stopped { pods });
        }
    }
    cleanup(dir, Some(&state));
    Ok(Down::CleanedUp { pods })
}

/// What `ama apply` did to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `deployment.apps/httpbin-deployment`.
    pub resource: String,
    /// `created`, `configured` or `unchanged`.
    pub verb: &'static str,
}

/// The ending of the files `ama delete` writes into `applied/` (the others are objects).
const DELETE_SUFFIX: &str = ".delete.json";

/// One object of the running mesh, as `ama delete` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// `ServiceEntry` (any case: it is compared without).
    pub kind: String,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What `ama delete` did with each object it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteReport {
    /// `serviceentry.networking.istio.io "cnn"`: found and deleted.
    pub deleted: Vec<String>,
    /// The objects the mesh does not have, as [`DeleteReport::deleted`] names them.
    pub missing: Vec<String>,
}

/// `ama delete`: removes `targets` from the running mesh (a Namespace with everything in it) and
/// waits until `ama up` took it; their pods stop, their config leaves the proxies. Objects the
/// mesh does not have are reported in [`DeleteReport::missing`], the others deleted all the same.
pub fn delete(dir: &StateDir, targets: &[ObjectRef]) -> Result<DeleteReport, Error> {
    let state = dir.load()?;
    let mut report = DeleteReport::default();
    let mut keys = Vec::new();
    for t in targets {
        // The state's keys: `namespace/kind[.group]/name`.
        let found = state.objects.keys().find_map(|key| {
            let (ns, rest) = key.split_once('/')?;
            let (resource, name) = rest.rsplit_once('/')?;
            let kind = resource.split('.').next()?;
            (ns == t.namespace && name == t.name && kind.eq_ignore_ascii_case(&t.kind))
                .then(|| format!("{resource} \"{name}\""))
        });
        match found {
            Some(shown) => {
                report.deleted.push(shown);
                keys.push((t.kind.clone(), t.namespace.clone(), t.name.clone()));
            }
            None => report
                .missing
                .push(format!("{} \"{}\"", t.kind.to_ascii_lowercase(), t.name)),
        }
    }
    if !keys.is_empty() {
        let text = serde_json::to_string(&keys).map_err(|e| Error::State {
            path: dir.applied_dir(),
            message: e.to_string(),
        })?;
        hand_over(dir, &state, DELETE_SUFFIX, text.as_bytes())?;
    }
    Ok(report)
}

/// `ama apply`: checks `text`, hands it to the running `ama up` and waits until it took it.
/// With `namespace` (`-n`), the namespaced objects that name none go there.
pub fn apply(
    dir: &StateDir,
    text: &str,
    source: &str,
    namespace: Option<&str>,
) -> Result<Vec<Applied>, Error> {
    // The good documents are applied, as `kubectl apply` does; the caller reports the findings
    // (api::objects::parse of the same text).
    let (docs, _) = manifests::parse_in(text, source, namespace)?;
    if docs.is_empty() {
        return Ok(Vec::new());
    }
    let state = dir.load()?;
    let out: Vec<Applied> = docs
        .iter()
        .map(|d| Applied {
            resource: d.resource_name(),
            verb: match state.objects.get(&object_key(d)) {
                None => "created",
                Some(h) if *h == content_hash(&d.raw) => "unchanged",
                Some(_) => "configured",
            },
        })
        .collect();
    let items: Vec<&Value> = docs.iter().map(|d| &d.raw).collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    hand_over(dir, &state, ".json", list.to_string().as_bytes())?;
    Ok(out)
}

/// Writes the next file of `applied/` (`NNNNN` + `suffix`), tells `ama up` (SIGHUP) and waits
/// until it has taken it and the control plane can serve it.
fn hand_over(dir: &StateDir, state: &State, suffix: &str, content: &[u8]) -> Result<(), Error> {
    if !alive(state.pid) {
        return Err(Error::NotRunning {
            cluster: dir.cluster().to_string(),
            path: dir.state_file(),
        });
    }
    let applied_dir = dir.applied_dir();
    let count = fs::read_dir(&applied_dir)
        .map_err(Error::io(&applied_dir))?
        .count();
    let file = applied_dir.join(format!("{:05}{suffix}", count + 1));
    crate::state::write_atomic(&file, content)?;
    if let Ok(pid) = i32::try_from(state.pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP);
    }
    let deadline = Instant::now() + APPLY_TIMEOUT;
    let mut taken_at = None;
    while Instant::now() < deadline {
        if let Ok(taken) = dir.load()
            && taken.applied > count
        {
            // `ama up` checks the control plane when it takes the change, then every tick: a
            // discovery that is just restarting gets a few seconds to answer.
            let since = *taken_at.get_or_insert_with(Instant::now);
            match taken.discovery.filter(|d| !d.ready) {
                None => return Ok(()),
                Some(d) if since.elapsed() >= DISCOVERY_WAIT => {
                    return Err(Error::ControlPlaneDown {
                        cluster: dir.cluster().to_string(),
                        why: d.waiting.unwrap_or_else(|| match d.pid {
                            Some(pid) => {
                                format!("pid {pid} runs but its /ready does not answer")
                            }
                            None => "not running".into(),
                        }),
                        log: d.log,
                    });
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::State {
        path: dir.state_file(),
        message: format!(
            "ama up (pid {}) did not take the change within {}s; see its output",
            state.pid,
            APPLY_TIMEOUT.as_secs()
        ),
    })
}

/// The command `ama exec POD [-c CONTAINER] -- ARGV…` runs: in the pod's namespace (and its
/// hosts file), as the container's user, with its environment.
pub fn exec_command(
    state: &State,
    pod: &str,
    container: Option<&str>,
    argv: &[String],
    ama: &Path,
) -> Result<std::process::Command, Error> {
    let pod = state.pod(pod)?;
    let c = pod.container(container)?;
    let mut cmd = process::command(
        &pod.netns,
        argv,
        c.user,
        c.sandbox.as_ref(),
        &c.env,
        &pod.name,
        ama,
    );
    if state.rootless && !nix::unistd::geteuid().is_root() {
        // From outside: into the mesh's user, mount (its /run/netns), network and PID
        // namespaces first.
        let mut enter = std::process::Command::new("nsenter");
        enter
            .args(crate::rootless::enter_args(state.pid))
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .env_clear()
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
        cmd = enter;
    }
    Ok(cmd)
}
