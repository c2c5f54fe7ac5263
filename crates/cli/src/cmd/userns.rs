//! `ama userns [--check] -- COMMAND…`: runs a command as root of user, mount, network and PID
//! namespaces of its own, without root on the host: the mapping rootless `ama up` uses (the
//! user's uid as 0, its subordinate ids as 1 …, so uid 1337 exists), `ip netns` and `/run/ama`
//! private to it, and a network with only loopback. The e2e tests run themselves through it
//! when not run as root, so that a user without root still runs every test the machine can.
//! `--check` says whether this machine can (exit 0) or what it lacks (exit 1).

use std::ffi::OsString;
use std::process::ExitCode;

/// Arguments of `ama userns`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only say whether this machine can run commands this way.
    #[arg(long)]
    check: bool,
    /// The command to run, after `--`.
    #[arg(last = true, required_unless_present = "check")]
    command: Vec<OsString>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.check {
        let missing = local::rootless::missing();
        if missing.is_empty() {
            println!("ok: this machine runs commands as root of a user namespace");
            return Ok(ExitCode::SUCCESS);
        }
        println!("missing: {}", missing.join("; "));
        return Ok(ExitCode::FAILURE);
    }
    let code = if local::rootless::userns_inside() {
        local::rootless::userns_init(&args.command)?
    } else if local::rootless::is_root() {
        anyhow::bail!("ama userns is for users without root: run the command itself");
    } else {
        local::rootless::reexec_userns()?
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
