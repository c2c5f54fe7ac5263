//! `ama sandbox`: what `ama up` runs, as root in a pod's network namespace, before each of its
//! containers: it enters the container's view of the machine ([`local::sandbox`]) and then
//! runs the rest of its command line (setpriv, then the container's command).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Arguments of `ama sandbox`.
#[derive(Parser)]
pub struct Args {
    /// The container's hostname (the pod's name).
    #[arg(long)]
    hostname: String,
    /// A directory to hide under an empty tmpfs.
    #[arg(long)]
    hide: Vec<PathBuf>,
    /// A path under a hidden directory that stays visible.
    #[arg(long)]
    keep: Vec<PathBuf>,
    /// The command to run in the sandbox.
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

/// Enters the sandbox and runs the command; returns only on failure.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let sandbox = local::sandbox::Sandbox {
        hostname: a.hostname,
        hide: a.hide,
        keep: a.keep,
        caps: Vec::new(),
    };
    match local::sandbox::enter(&sandbox, &a.argv)? {}
}
