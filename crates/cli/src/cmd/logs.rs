//! `ama logs POD [-c CONTAINER] [-f] [--tail N]`, or `-l app=ubuntu` for every pod with those
//! labels: what a container wrote (stdout and stderr), like `kubectl logs`. `-f` follows until
//! Ctrl-C or the pod is gone.

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
    /// The pod (a unique prefix is enough); or use -l.
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
    let pods: Vec<&local::state::PodRecord> = match (&args.pod, &args.selector) {
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
    let mut files: Vec<(String, PathBuf, u64)> = Vec::new();
    for pod in pods {
        let c = pod.container(args.container.as_deref())?;
        files.push((pod.name.clone(), c.log.clone(), 0));
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
        files.retain(|(pod, _, _)| state.pods.iter().any(|p| &p.name == pod));
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
