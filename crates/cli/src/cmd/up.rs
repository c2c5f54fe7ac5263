//! `ama up DIR`: the mesh of DIR's YAML on this machine, in the foreground (like
//! `docker compose up`): a line per pod as it starts and becomes ready, a progress line on a
//! terminal, then how to reach it. Ctrl-C (or `ama down` from another shell) stops all of it.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use local::mesh::XdsMode;
use local::runtime::{Event, Observer, UpOptions};
use local::state::State;

use super::local::{MeshName, ama_binary};

/// Where the sidecars get their resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Xds {
    /// `ama discovery` with the file registry: Delta ADS and its CA on 10.244.0.1:15012 over
    /// TLS, authenticated by each sidecar's token (as in a cluster).
    Discovery,
    /// No control plane process: a file per pod written by `ama up` from the control plane's
    /// own model (`--config`, reloaded on change). No CA either: sidecars talk plaintext.
    Files,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Each container runs the command of the pod-template annotation local.ama.dev/command (the first
container; local.ama.dev/command.<container> for others), else its own command when that program
exists here (`sleep infinity`). The annotation local.ama.dev/dns-names: \"api.external.test,...\"
makes those names resolve to the pod (its first ready replica) in every pod and in discovery's
namespace, as an outside DNS would: a pod standing for a server outside the cluster. Namespaces
labelled istio-injection=enabled get the sidecar, as with Istio's webhook; the profile's gateways
run in istio-system as ama proxy router. Runs as root, or as another user inside a user
namespace where newuidmap and newgidmap (package uidmap) and subordinate ids (/etc/subuid,
/etc/subgid) exist.")]
pub struct Args {
    /// Directory (or file) of the YAML you would `kubectl apply`: Namespaces, Deployments,
    /// Services, Istio config, the ConfigMap istio (MeshConfig).
    pub dir: PathBuf,
    #[command(flatten)]
    pub mesh: MeshName,
    /// Where the sidecars get their resources.
    #[arg(long, value_enum, default_value = "discovery")]
    pub xds: Xds,
    /// Installation profile, as istioctl's: demo runs the ingress and egress gateways in
    /// istio-system (what Istio's tasks assume), default only the ingress gateway, minimal none.
    #[arg(long, default_value = "demo", value_parser = ["demo", "default", "minimal"])]
    pub profile: String,
    /// Host port (on 127.0.0.1) of the ingress gateway's port 80 (INGRESS_PORT); 0: any free
    /// port. Default: 80 when free, else 8080.
    #[arg(long, value_name = "PORT")]
    pub ingress_port: Option<u16>,
    /// Host port (on 127.0.0.1) of the ingress gateway's port 443 (SECURE_INGRESS_PORT); 0: any
    /// free port. Default: 443 when free, else 8443.
    #[arg(long, value_name = "PORT")]
    pub secure_ingress_port: Option<u16>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init()
        .ok();
    if local::rootless::inside() {
        // Root of the user namespace `reexec_up` made: its own mounts first.
        local::rootless::prepare()?;
    } else if !local::rootless::is_root() {
        // Before any thread: the same command again, inside a user namespace.
        let code = local::rootless::reexec_up(&args.mesh.dir()?)?;
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
    }
    let opts = UpOptions {
        dir: args.dir.clone(),
        cluster: args.mesh.name.clone(),
        xds: match args.xds {
            Xds::Files => XdsMode::Files,
            Xds::Discovery => XdsMode::Discovery,
        },
        ama: ama_binary()?,
        profile: manifest::Profile::parse(&args.profile).unwrap_or_default(),
        ingress_ports: (args.ingress_port, args.secure_ingress_port),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut printer = Printer::new(&args);
    runtime.block_on(local::runtime::up(opts, &mut printer))?;
    Ok(ExitCode::SUCCESS)
}

/// Prints events for a person.
struct Printer {
    mesh: String,
    dir: String,
    xds: &'static str,
    tty: bool,
    planned: Option<usize>,
    created: BTreeSet<String>,
    ready: BTreeSet<String>,
    progress_shown: bool,
    /// Findings already printed: `ama apply`'s files are read again at each apply.
    findings: BTreeSet<String>,
}

impl Printer {
    fn new(args: &Args) -> Printer {
        Printer {
            mesh: args.mesh.name.clone(),
            dir: args.dir.display().to_string(),
            xds: match args.xds {
                Xds::Files => "resource files written by ama up (no CA: plaintext)",
                Xds::Discovery => "ama discovery (Delta ADS; certificates from its CA)",
            },
            tty: std::io::stdout().is_terminal(),
            planned: None,
            created: BTreeSet::new(),
            ready: BTreeSet::new(),
            progress_shown: false,
            findings: BTreeSet::new(),
        }
    }

    fn line(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.progress_shown {
            let _ = write!(out, "\r\x1b[2K");
            self.progress_shown = false;
        }
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// The progress line (terminals only), rewritten in place.
    fn progress(&mut self) {
        if !self.tty {
            return;
        }
        let total = self.planned.unwrap_or(self.created.len());
        let ready = self.ready.len();
        if ready >= total {
            return;
        }
        let waiting: Vec<&String> = self.created.difference(&self.ready).take(2).collect();
        let mut out = std::io::stdout().lock();
        let _ = write!(
            out,
            "\r\x1b[2K  {ready}/{total} pods ready; waiting for {}…",
            waiting
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = out.flush();
        self.progress_shown = true;
    }

    fn hints(&self, state: &State) -> String {
        let flag = if self.mesh == local::state::DEFAULT_CLUSTER {
            String::new()
        } else {
            format!(" --name {}", self.mesh)
        };
        let mut out = format!(
            "Mesh \"{}\" is up. Try:\n  ama get pods -o wide{flag}\n",
            self.mesh
        );
        // A client: a pod with a sidecar that no Service selects; a server: a Service.
        let selected = |pod: &local::state::PodRecord| {
            state.services.iter().any(|s| {
                let sel = s
                    .object
                    .pointer("/spec/selector")
                    .and_then(|v| v.as_object());
                let labels = pod
                    .object
                    .pointer("/metadata/labels")
                    .and_then(|v| v.as_object());
                match (sel, labels) {
                    (Some(sel), Some(labels)) if !sel.is_empty() => {
                        sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                    }
                    _ => false,
                }
            })
        };
        // The gateways of the profile are neither the user's client nor its server.
        let own = |namespace: &str| namespace != local::gateways::NAMESPACE;
        let client = state
            .pods
            .iter()
            .find(|p| own(&p.namespace) && p.sidecar && !selected(p));
        let service = state.services.iter().find(|s| own(&s.namespace));
        if let (Some(client), Some(svc)) = (client, service) {
            let port = svc
                .object
                .pointer("/spec/ports/0/port")
                .and_then(|p| p.as_u64())
                .filter(|p| *p != 80)
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            let host = if svc.namespace == client.namespace {
                svc.name.clone()
            } else {
                format!("{}.{}", svc.name, svc.namespace)
            };
            out.push_str(&format!(
                "  ama exec {}{flag} -- curl -sv http://{host}{port}/headers\n",
                client.name
            ));
        }
        if let Some(server) = state
            .pods
            .iter()
            .find(|p| own(&p.namespace) && p.sidecar && selected(p))
        {
            out.push_str(&format!(
                "  ama logs {} -c istio-proxy -f{flag}\n",
                server.name
            ));
        }
        if let Some(ingress) = &state.ingress {
            let port = |p: Option<u16>| p.map_or_else(|| "-".to_string(), |p| p.to_string());
            out.push_str(&format!(
                "  ingress gateway: export INGRESS_HOST={} INGRESS_PORT={} SECURE_INGRESS_PORT={}\n",
                ingress.address,
                port(ingress.http),
                port(ingress.https)
            ));
        }
        out.push_str(&format!("  ama down{flag}   (or Ctrl-C here)"));
        out
    }
}

impl Observer for Printer {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Planned { pods, services } => {
                if self.planned.is_none() {
                    let text = format!(
                        "Starting mesh \"{}\" from {}: {pods} pod(s), {services} service(s); proxies get their resources from {}",
                        self.mesh, self.dir, self.xds
                    );
                    self.line(&text);
                }
                self.planned = Some(pods);
            }
            Event::PodCreated(p) => {
                self.created.insert(p.name.clone());
                let sidecar = if !p.sidecar {
                    "no sidecar"
                } else if local::gateways::runs_router(&p.object) {
                    "gateway (ama proxy router)"
                } else {
                    "with sidecar"
                };
                let text = format!(
                    "pod/{} created   {}   {}   {sidecar}",
                    p.name, p.namespace, p.ip
                );
                self.line(&text);
                self.progress();
            }
            Event::PodReady(p) => {
                self.ready.insert(p.name.clone());
                let (r, t) = p.ready();
                let text = format!("pod/{} ready   {r}/{t}   Running", p.name);
                self.line(&text);
                self.progress();
            }
            Event::ContainerExited {
                pod,
                container,
                exit,
                backoff,
                restart,
                ..
            } => {
                self.ready.remove(&pod.name);
                let text = format!(
                    "pod/{}: container {container} exited ({exit}); restarting in {}s (restart {restart}; ama logs {} -c {container})",
                    pod.name,
                    backoff.as_secs(),
                    pod.name
                );
                self.line(&text);
            }
            Event::PodDeleted(name) => {
                self.created.remove(name);
                self.ready.remove(name);
                self.line(&format!("pod/{name} deleted"));
            }
            Event::Note(n) => self.line(&format!("note: {n}")),
            Event::Finding(f) => {
                let text = f.for_terminal();
                if self.findings.insert(text.clone()) {
                    if self.progress_shown {
                        // Off the terminal's progress line first, as `line` does.
                        print!("\r\x1b[2K");
                        let _ = std::io::stdout().flush();
                        self.progress_shown = false;
                    }
                    eprintln!("{text}");
                }
            }
            Event::Ready(state) => {
                let text = self.hints(state);
                self.line(&text);
            }
            Event::Applied(n) => self.line(&format!("applied: {n} file(s) from ama apply")),
            Event::Stopping => self.line("Stopping: processes, namespaces, hosts files…"),
            Event::Stopped => self.line("Stopped; nothing is left behind."),
        }
    }
}
