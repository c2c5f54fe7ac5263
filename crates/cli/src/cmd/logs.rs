//! `ama logs POD [-c CONTAINER] [-f] [--tail N]`, or `-l app=ubuntu` for every pod with those
//! labels: what a container wrote (stdout and stderr), like `kubectl logs`. `-f` follows until
//! Ctrl-C or the pod is gone.
//!
//! `ama logs discovery` (also `istiod`, `deploy/istiod`, as an Istio user types
//! `kubectl logs -n istio-system deploy/istiod`) prints the control plane's log: where `ama
//! discovery` reports each config finding (a field Ama does not implement, a policy it denies
//! because it cannot enforce it) at WARN or ERROR, naming file, object and field.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;

use super::local::MeshName;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pod (a unique prefix is enough); or use -l. `discovery` (or `istiod`,
    /// `deploy/istiod`): the control plane's log.
    pub pod: Option<String>,
    /// The container (default: the pod's first app container).
    #[arg(short = 'c', long = "container")]
    pub container: Option<String>,
    /// Follow: keep printing what is written.
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,
    /// Only the last N lines (-1: all).
    #[arg(long = "tail", default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// Every pod with these labels (`app=ubuntu`).
    #[arg(short = 'l', long = "selector")]
    pub selector: Option<String>,
    /// Accepted for kubectl's habits (pod names are unique in a local mesh).
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub mesh: MeshName,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = args.mesh.dir()?;
    let state = dir.load()?;
    // (pod, log file, bytes printed); no pod: the control plane's log.
    let mut files: Vec<(Option<String>, PathBuf, u64)> = Vec::new();
    if let Some(name) = args.pod.as_deref().filter(|n| control_plane(n, &state)) {
        if args.container.is_some() {
            bail!("the control plane has one log; leave out -c");
        }
        let path = dir.root().join("discovery.log");
        if state.discovery.is_none() && !path.exists() {
            bail!(
                "mesh {:?} runs no control plane (`ama up --xds files`): {name} has no log",
                state.cluster
            );
        }
        files.push((None, path, 0));
    }
    let pods: Vec<&local::state::PodRecord> = match (&args.pod, &args.selector) {
        _ if !files.is_empty() => Vec::new(),
        (Some(pod), _) => vec![state.pod(pod)?],
        (None, Some(sel)) => {
            let want: Vec<(&str, &str)> =
                sel.split(',').filter_map(|p| p.split_once('=')).collect();
            state
                .pods
                .iter()
                .filter(|p| {
                    want.iter().all(|(k, v)| {
                        p.object
                            .pointer("/metadata/labels")
                            .and_then(|l| l.get(*k))
                            .and_then(Value::as_str)
                            == Some(*v)
                    })
                })
                .collect()
        }
        (None, None) => bail!("give a pod name, or -l key=value"),
    };
    for pod in pods {
        let c = pod.container(args.container.as_deref())?;
        files.push((Some(pod.name.clone()), c.log.clone(), 0));
    }
    let mut out = std::io::stdout().lock();
    for (_, path, offset) in &mut files {
        let text = std::fs::read_to_string(&*path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let skip = if args.tail < 0 {
            0
        } else {
            lines.len().saturating_sub(args.tail as usize)
        };
        for l in &lines[skip..] {
            writeln!(out, "{l}")?;
        }
        *offset = text.len() as u64;
    }
    out.flush()?;
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(state) = dir.load() else {
            return Ok(ExitCode::SUCCESS);
        };
        files.retain(|(pod, _, _)| {
            pod.as_ref()
                .is_none_or(|pod| state.pods.iter().any(|p| &p.name == pod))
        });
        if files.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        for (_, path, offset) in &mut files {
            let Ok(mut f) = File::open(&*path) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < *offset {
                *offset = 0;
            }
            if len == *offset {
                continue;
            }
            f.seek(SeekFrom::Start(*offset))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            // Whole lines only, so lines of two pods never interleave.
            let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            out.write_all(&buf[..=end])?;
            out.flush()?;
            *offset += end as u64 + 1;
        }
    }
}

/// Whether `name` means the control plane: `discovery`, `istiod` or `deploy[ment]/istiod`,
/// unless a pod of the mesh is called that (a pod's own name wins, as kubectl's would).
fn control_plane(name: &str, state: &local::state::State) -> bool {
    let name = name
        .strip_prefix("deployment/")
        .or_else(|| name.strip_prefix("deploy/"))
        .unwrap_or(name);
    matches!(name, "discovery" | "istiod") && !state.pods.iter().any(|p| p.name == name)
}
