//! The processes of a pod's containers: started inside the pod's namespace by
//! `ip netns exec` (which also gives them the pod's `/etc/hosts`), as their container's user
//! through `setpriv`, each the leader of a process group of its own (so a terminal's Ctrl-C
//! reaches only `ama up`, which stops them in order), writing stdout and stderr to one log.

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::Error;
use crate::launch::{ContainerRun, search_path};
use crate::sandbox::Sandbox;

/// The command that runs `argv` in namespace `netns` as `user` (root when None), in
/// `sandbox` when given ([`crate::sandbox`]: `ama sandbox`, then `setpriv` with its capability
/// bounding set), with `env` on top of a small base environment (`PATH` with `ama`'s directory
/// first, `HOME`, `HOSTNAME`).
pub fn command(
    netns: &str,
    argv: &[String],
    user: Option<(u32, u32)>,
    sandbox: Option<&Sandbox>,
    env: &[(String, String)],
    hostname: &str,
    ama: &Path,
) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]);
    if let Some(s) = sandbox {
        cmd.arg(ama).args(s.args());
    }
    if user.is_some() || sandbox.is_some() {
        cmd.arg("setpriv");
        if let Some((uid, gid)) = user {
            cmd.args([
                "--reuid",
                &uid.to_string(),
                "--regid",
                &gid.to_string(),
                "--clear-groups",
            ]);
        }
        if let Some(s) = sandbox {
            cmd.args(["--bounding-set", &s.bounding_set()]);
        }
        cmd.arg("--");
    }
    cmd.args(argv);
    let path = std::env::join_paths(search_path(ama)).unwrap_or_default();
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", if user.is_some() { "/" } else { "/root" })
        .env("HOSTNAME", hostname);
    // The terminal, and the machine's trust store as `ama up` was given it: the pods share the
    // machine's files, so its CA certificates stand for the ones a container image carries (the
    // proxies' TLS origination and discovery's jwksUri fetches verify servers with them).
    for name in ["TERM", "SSL_CERT_FILE", "SSL_CERT_DIR"] {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts a container's process in the background, appending its output to `log`.
pub fn spawn(
    netns: &str,
    run: &ContainerRun,
    log: &Path,
    hostname: &str,
    ama: &Path,
) -> Result<Child, Error> {
    let out = open_log(log)?;
    let err = out.try_clone().map_err(Error::io(log))?;
    let mut cmd = command(
        netns,
        &run.argv,
        run.user,
        run.sandbox.as_ref(),
        &run.env,
        hostname,
        ama,
    );
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    cmd.spawn().map_err(|source| Error::Spawn {
        program: "ip".into(),
        source,
    })
}

/// Opens (creating) a log for appending, readable by all.
pub fn open_log(path: &Path) -> Result<File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
        .map_err(Error::io(path))
}

/// Sends `signal` to the process group led by `pid`.
pub fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Whether the process group led by `pid` still has members.
pub fn group_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0: existence check only.
    nix::sys::signal::killpg(Pid::from_raw(pid), None).is_ok()
}

/// Stops children: SIGTERM to every group, up to `grace` for them to exit (reaping them),
/// then SIGKILL to what is left.
pub fn stop_all(children: &mut [Child], grace: Duration) {
    for c in children.iter() {
        signal_group(c.id(), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        let running = children
            .iter_mut()
            .filter_map(|c| c.try_wait().ok())
            .filter(Option::is_none)
            .count();
        if running == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in children.iter_mut() {
        signal_group(c.id(), Signal::SIGKILL);
        let _ = c.wait();
    }
}
