//! A container's view of the machine, as a container runtime would give it, short of an image:
//! its own hostname, the mesh's state hidden, and Kubernetes' capabilities.
//!
//! Without it every pod's app ran as root on the host's filesystem: it could read the CA's key
//! under `/run/ama/<mesh>/ca` and forge a certificate for any identity, or read another pod's
//! token and get that pod's certificate from the CA. A [`Sandbox`] is entered by the hidden
//! `ama sandbox` subcommand, which `ip netns exec` runs as root in the pod's network namespace
//! ([`crate::process::command`]), before anything of the container runs:
//!
//! 1. a mount namespace and a UTS namespace of its own; the hostname is the pod's name, as
//!    kubelet sets it;
//! 2. each directory of `hide` (the base of every mesh's state) under an empty tmpfs, with the
//!    few paths of `keep` bound back where they were: the sidecar's own token, the mesh's root
//!    certificate, its pod's directory, as kubelet mounts a pod's projected volumes;
//! 3. then `setpriv` (in [`crate::process::command`]) switches to the container's user and
//!    limits the capability bounding set to [`Sandbox::caps`]: Kubernetes' defaults, with the
//!    container's `securityContext.capabilities`. Without `CAP_SYS_ADMIN` a root app cannot
//!    unmount the tmpfs, and without `CAP_SYS_PTRACE` it cannot look into another process's
//!    mounts through `/proc/<pid>/root`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// The capabilities a container runtime (containerd, CRI-O) gives a container by default, in
/// setpriv's spelling.
pub const DEFAULT_CAPS: [&str; 14] = [
    "chown",
    "dac_override",
    "fsetid",
    "fowner",
    "mknod",
    "net_raw",
    "setgid",
    "setuid",
    "setfcap",
    "setpcap",
    "net_bind_service",
    "sys_chroot",
    "kill",
    "audit_write",
];

/// What one container's process sees and may do beyond its network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// Its hostname: the pod's name.
    pub hostname: String,
    /// Directories hidden under an empty tmpfs.
    pub hide: Vec<PathBuf>,
    /// Paths under `hide` it still sees, where they were.
    pub keep: Vec<PathBuf>,
    /// Its capability bounding set, in setpriv's spelling (`net_admin`).
    pub caps: Vec<String>,
}

impl Sandbox {
    /// The arguments of `ama sandbox` that enter this sandbox and then run what follows them.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "sandbox".to_string(),
            "--hostname".to_string(),
            self.hostname.clone(),
        ];
        for h in &self.hide {
            args.extend(["--hide".to_string(), h.display().to_string()]);
        }
        for k in &self.keep {
            args.extend(["--keep".to_string(), k.display().to_string()]);
        }
        args.push("--".to_string());
        args
    }

    /// setpriv's `--bounding-set` value: everything dropped, then [`Sandbox::caps`] added.
    pub fn bounding_set(&self) -> String {
        std::iter::once("-all".to_string())
            .chain(self.caps.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The capability bounding set of container `c`: Kubernetes' defaults, less what its
/// `securityContext.capabilities.drop` names (`ALL`: every one), plus what `add` names.
pub fn capabilities(c: &Value) -> Vec<String> {
    let names = |field: &str| -> Vec<String> {
        c.pointer(&format!("/securityContext/capabilities/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| s.trim_start_matches("CAP_").to_ascii_lowercase())
            .collect()
    };
    let drop = names("drop");
    let mut caps: Vec<String> = if drop.iter().any(|d| d == "all") {
        Vec::new()
    } else {
        DEFAULT_CAPS
            .iter()
            .filter(|c| !drop.iter().any(|d| d == *c))
            .map(|c| c.to_string())
            .collect()
    };
    for add in names("add") {
        if add != "all" && !caps.contains(&add) {
            caps.push(add);
        }
    }
    caps
}

/// Enters `sandbox` and runs `argv` in it; returns only on failure. Called as root by
/// `ama sandbox`, in the pod's network namespace.
pub fn enter(sandbox: &Sandbox, argv: &[String]) -> Result<std::convert::Infallible, Error> {
    let sys = |what: &str, e: nix::Error| Error::Sandbox {
        what: what.to_string(),
        source: std::io::Error::from(e),
    };
    let (program, args) = argv.split_first().ok_or_else(|| Error::Sandbox {
        what: "run the container".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given"),
    })?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| sys("make a mount and UTS namespace", e))?;
    // Nothing mounted here may reach the host (ip netns exec made `/` a slave already).
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| sys("make / private", e))?;
    nix::unistd::sethostname(&sandbox.hostname).map_err(|e| sys("set the hostname", e))?;
    // Held open across the tmpfs that hides them, then bound back by /proc/self/fd.
    let kept: Vec<(PathBuf, std::os::fd::OwnedFd, bool)> = sandbox
        .keep
        .iter()
        .filter_map(|p| {
            let dir = p.is_dir();
            open(p.as_path(), OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                .ok()
                .map(|fd| (p.clone(), fd, dir))
        })
        .collect();
    for dir in sandbox.hide.iter().filter(|d| d.is_dir()) {
        mount(
            Some("tmpfs"),
            dir.as_path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=64k"),
        )
        .map_err(|e| sys(&format!("hide {}", dir.display()), e))?;
    }
    for (path, fd, dir) in &kept {
        make_mount_point(path, *dir)?;
        let source = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
        mount(
            Some(source.as_str()),
            path.as_path(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| sys(&format!("keep {}", path.display()), e))?;
    }
    drop(kept);
    let err = std::process::Command::new(program).args(args).exec();
    Err(Error::Spawn {
        program: program.clone(),
        source: err,
    })
}

/// Creates `path` (an empty file or directory, and its parents) as a bind-mount target.
fn make_mount_point(path: &Path, dir: bool) -> Result<(), Error> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    if dir {
        std::fs::create_dir_all(path).map_err(Error::io(path))?;
    } else if !path.exists() {
        std::fs::File::create(path).map_err(Error::io(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn capabilities_follow_kubernetes_defaults_and_the_security_context() {
        assert_eq!(capabilities(&json!({})), DEFAULT_CAPS.to_vec());
        // istio-init, as Istio's template writes it.
        let init = json!({"securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}}});
        assert_eq!(capabilities(&init), ["net_admin", "net_raw"]);
        let some = json!({"securityContext": {"capabilities": {"add": ["CAP_SYS_TIME"], "drop": ["KILL", "net_raw"]}}});
        let caps = capabilities(&some);
        assert!(caps.contains(&"sys_time".to_string()));
        assert!(!caps.iter().any(|c| c == "kill" || c == "net_raw"));
        assert!(!caps.iter().any(|c| c == "sys_admin"));
    }

    #[test]
    fn args_and_bounding_set() {
        let s = Sandbox {
            hostname: "httpbin-0".into(),
            hide: vec!["/run/ama".into()],
            keep: vec!["/run/ama/m/root-cert.pem".into()],
            caps: vec!["net_admin".into()],
        };
        assert_eq!(
            s.args(),
            [
                "sandbox",
                "--hostname",
                "httpbin-0",
                "--hide",
                "/run/ama",
                "--keep",
                "/run/ama/m/root-cert.pem",
                "--"
            ]
        );
        assert_eq!(s.bounding_set(), "-all,+net_admin");
    }
}
