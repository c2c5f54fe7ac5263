//! `ama exec POD [-c CONTAINER] -- COMMAND…`: runs a command in a pod of the local mesh, like
//! `kubectl exec`: in the pod's network namespace (its address, its capture rules, its hosts
//! file for Service names), as the container's user, with its environment. Standard input,
//! output and error are this terminal's; the exit code is the command's.

use std::process::ExitCode;

use anyhow::Context;

use super::local::{MeshName, ama_binary};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pod (a unique prefix is enough).
    pub pod: String,
    /// The container (default: the pod's first app container).
    #[arg(short = 'c', long = "container")]
    pub container: Option<String>,
    /// Accepted for kubectl's habits (standard input is always passed).
    #[arg(short = 'i', long = "stdin")]
    pub stdin: bool,
    /// Accepted for kubectl's habits (the terminal is always passed).
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// Accepted for kubectl's habits (pod names are unique in a local mesh).
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub mesh: MeshName,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = args.mesh.dir()?.load()?;
    let mut cmd = local::runtime::exec_command(
        &state,
        &args.pod,
        args.container.as_deref(),
        &args.command,
        &ama_binary()?,
    )?;
    let status = cmd
        .status()
        .with_context(|| format!("running {:?} in pod {}", args.command, args.pod))?;
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
