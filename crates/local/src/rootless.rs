//! `ama up` without root, through a user namespace.
//!
//! As a user other than root, `ama up` ([`reexec_up`]) runs itself again inside new user, mount,
//! network and PID namespaces (`clone(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET |
//! CLONE_NEWPID)`), after `newuidmap`/`newgidmap` (Debian package `uidmap`) mapped the user's
//! own uid and gid to 0 and up to 65536 of its subordinate ids (`/etc/subuid`, `/etc/subgid`) to
//! 1, 2, …: the capture rules tell the sidecar's traffic from the app's by its owner, uid 1337
//! (`ama iptables -u 1337`), so uid 1337 must exist there, and an unprivileged process alone can
//! map only its own uid. Without the helpers or a range every process of the pods would be the
//! same mapped root, the sidecar's own connections would be captured again and the mesh would
//! loop; so the mode requires them ([`missing`]) rather than degrading.
//!
//! Inside ([`inside`], [`prepare`]), the process is root of its user namespace and the init of
//! its PID namespace, and runs the mesh as root does, with three changes made first: mounts are
//! private; `/proc` is the PID namespace's; `/run/netns` and `/etc/netns` (where `ip netns`
//! keeps namespaces and hosts files) are private tmpfs mounts. Where one of those directories
//! does not exist (its parent belongs to the real root), the parent itself is replaced by a
//! tmpfs into which each of its entries is bound back, so it looks the same plus the new
//! directory. `iptables-nft` works there with the namespace's `CAP_NET_ADMIN`.
//!
//! The state directory stays outside (`$XDG_RUNTIME_DIR/ama/<mesh>` when others may traverse
//! it, since uid 1337 reads its token there, else `/tmp/ama-<uid>/<mesh>`), and records the
//! init's pid as the host sees it ([`host_pid`]) with `rootless: true`: `ama get` and `ama logs`
//! read files; `ama apply` and `ama down` signal that pid; `ama exec` enters the namespaces with
//! `nsenter -U -m -n -p -t <pid> --preserve-credentials` ([`enter_args`]). When the init exits,
//! the kernel kills everything else in its PID namespace and the namespaces vanish with their
//! last process: nothing is left but the state directory, which `ama up` removes on its way out
//! and `ama down` removes after a killed one.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::Error;
use crate::state::StateDir;

/// The state directory's base, given to the `ama up` inside the namespaces.
const STATE_ENV: &str = "AMA_ROOTLESS_STATE";
/// The subordinate ids a user needs: 1 ..= 1337 inside, besides root.
const IDS_NEEDED: u64 = 1337;
/// The most subordinate ids mapped.
const IDS_MAPPED: u64 = 65536;

/// What a rootless `ama up` needs and this machine lacks, as phrases; empty when all is there.
pub fn missing() -> Vec<String> {
    let user = user_name();
    let mut out = Vec::new();
    if !user_namespaces_allowed() {
        out.push(
            "unprivileged user namespaces (sysctl user.max_user_namespaces, \
             kernel.unprivileged_userns_clone)"
                .to_string(),
        );
    }
    let helpers: Vec<&str> = ["newuidmap", "newgidmap"]
        .into_iter()
        .filter(|h| helper(h).is_none())
        .collect();
    if !helpers.is_empty() {
        out.push(helpers.join(" and "));
    }
    let files: Vec<&str> = ["/etc/subuid", "/etc/subgid"]
        .into_iter()
        .filter(|f| subordinate(f).is_none())
        .collect();
    if !files.is_empty() {
        out.push(format!(
            "{IDS_NEEDED} subordinate ids for {user} in {}",
            files.join(" and ")
        ));
    }
    out
}

/// Whether this process runs as root (of the host, or of the user namespace it is in).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// This user's name (its uid when it has none).
pub fn user_name() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

fn user_namespaces_allowed() -> bool {
    let read = |p: &str| {
        fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    read("/proc/sys/user/max_user_namespaces").is_some_and(|n| n > 0)
        && read("/proc/sys/kernel/unprivileged_userns_clone").is_none_or(|n| n != 0)
}

/// The setuid helper `program`: on `PATH`, else in /usr/bin.
fn helper(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// This user's first range in `file` (`/etc/subuid` or `/etc/subgid`) with enough ids.
fn subordinate(file: &str) -> Option<(u64, u64)> {
    let text = fs::read_to_string(file).ok()?;
    range(
        &text,
        &user_name(),
        &nix::unistd::getuid().as_raw().to_string(),
    )
}

/// The first range of `user` (by name or uid) in `text` (`name:start:count` lines) with at
/// least [`IDS_NEEDED`] ids.
fn range(text: &str, user: &str, uid: &str) -> Option<(u64, u64)> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (Some(who), Some(start), Some(count)) = (f.next(), f.next(), f.next()) else {
            return None;
        };
        let (start, count) = (start.parse().ok()?, count.parse::<u64>().ok()?);
        ((who == user || who == uid) && count >= IDS_NEEDED).then_some((start, count))
    })
}

/// An [`Error::Io`] for `path` from an errno.
fn sys(path: impl Into<PathBuf>) -> impl FnOnce(Errno) -> Error {
    let path = path.into();
    move |e| Error::io(path)(std::io::Error::from(e))
}

/// Runs this `ama up` again inside new user, mount, network and PID namespaces, the user's
/// uid and gid mapped to 0 and its subordinate ids to 1 …, and waits for it: SIGINT, SIGTERM
/// and SIGHUP are passed on. Returns its exit code (128 + signal when killed). Refuses at once,
/// making nothing, when this machine lacks what it takes ([`missing`]) or `dir`'s mesh runs.
///
/// Call it before any thread is started: the child of `clone(2)` only waits and execs.
pub fn reexec_up(dir: &StateDir) -> Result<i32, Error> {
    if !missing().is_empty() {
        return Err(Error::needs_root("ama up"));
    }
    if dir.root().exists() {
        match dir.load() {
            Ok(s) if crate::state::alive(s.pid) => {
                return Err(Error::AlreadyRunning {
                    cluster: dir.cluster().to_string(),
                    pid: s.pid,
                });
            }
            Ok(s) => crate::runtime::cleanup(dir, Some(&s)),
            Err(_) => crate::runtime::cleanup(dir, None),
        }
    }
    let base = dir.root().parent().unwrap_or(Path::new("/")).to_path_buf();
    make_base(&base)?;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (pid, code) = run_in_namespaces("ama up", &argv, Some(&base))?;
    // A killed init leaves its state file: nothing else of it exists any more.
    if dir.load().is_ok_and(|s| s.pid == pid.as_raw() as u32) {
        let _ = dir.remove();
    }
    Ok(code)
}

/// Runs this binary with `argv` inside new user, mount, network and PID namespaces, the user's
/// uid and gid mapped to 0 and its subordinate ids to 1 …, and waits for it: SIGINT, SIGTERM
/// and SIGHUP are passed on. `state_base` is handed to a rootless `ama up` ([`state_base`]).
/// Returns its pid (as this namespace sees it) and exit code (128 + signal when killed).
/// `what` names the command in the error when this machine lacks what it takes ([`missing`]).
///
/// Call it before any thread is started: the child of `clone(2)` only waits and execs.
fn run_in_namespaces(
    what: &'static str,
    argv: &[std::ffi::OsString],
    state_base: Option<&Path>,
) -> Result<(Pid, i32), Error> {
    let (Some(uids), Some(gids)) = (subordinate("/etc/subuid"), subordinate("/etc/subgid")) else {
        return Err(Error::needs_root(what));
    };
    if !missing().is_empty() {
        return Err(Error::needs_root(what));
    }
    // Everything the child needs, made before the clone: it only reads a pipe and execs.
    let exe = std::env::current_exe().map_err(Error::io("/proc/self/exe"))?;
    let cstr = |s: &[u8]| CString::new(s).unwrap_or_default();
    let exe_c = cstr(exe.as_os_str().as_bytes());
    let argv: Vec<CString> = argv.iter().map(|a| cstr(a.as_bytes())).collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != STATE_ENV)
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstr(kv.as_bytes())
        })
        .collect();
    if let Some(base) = state_base {
        env.push(cstr(format!("{STATE_ENV}={}", base.display()).as_bytes()));
    }
    let argv_p: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let env_p: Vec<*const libc::c_char> = env
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let (go_r, go_w) = nix::unistd::pipe().map_err(sys("pipe"))?;
    use std::os::fd::AsRawFd;
    let (r, w) = (go_r.as_raw_fd(), go_w.as_raw_fd());

    let mut forwarded = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        forwarded.add(s);
    }
    forwarded.thread_block().map_err(sys("sigprocmask"))?;
    let mut stack = vec![0u8; 256 * 1024];
    let child = Box::new(move || -> isize {
        // SAFETY: async-signal-safe calls only, on buffers made before the clone.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::close(w);
            let mut byte = 0u8;
            if libc::read(r, (&raw mut byte).cast(), 1) != 1 {
                return 1;
            }
            libc::close(r);
            libc::execve(exe_c.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
        }
        127
    });
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWPID;
    // SAFETY: the child runs `child` above (no allocation, no lock) until it execs.
    let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) };
    let pid = match pid {
        Ok(pid) => pid,
        Err(e) => {
            let _ = forwarded.thread_unblock();
            return Err(sys(
                "clone(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWNET|CLONE_NEWPID)",
            )(e));
        }
    };
    drop(go_r);
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    let mapped = write_map("newuidmap", pid, uid.as_raw(), uids)
        .and_then(|()| write_map("newgidmap", pid, gid.as_raw(), gids));
    if let Err(e) = mapped {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        let _ = forwarded.thread_unblock();
        return Err(e);
    }
    // Go.
    let _ = nix::unistd::write(&go_w, &[1]);
    drop(go_w);
    let code = loop {
        match forwarded.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => break code,
                Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
                Ok(_) => {}
                Err(_) => break 1,
            },
            Ok(s) => {
                let _ = kill(pid, s);
            }
        }
    };
    let _ = forwarded.thread_unblock();
    Ok((pid, code))
}

/// Creates the state directories' base, refusing one another user owns (`/tmp` is shared).
fn make_base(base: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    fs::create_dir_all(base).map_err(Error::io(base))?;
    let meta = fs::symlink_metadata(base).map_err(Error::io(base))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(Error::State {
            path: base.to_path_buf(),
            message: "not a directory of this user's".into(),
        });
    }
    // The sidecar's uid reads its token under it.
    fs::set_permissions(base, fs::Permissions::from_mode(0o755)).map_err(Error::io(base))
}

/// `newuidmap PID 0 <own> 1 1 <start> <count>` (or newgidmap).
fn write_map(program: &str, pid: Pid, own: u32, (start, count): (u64, u64)) -> Result<(), Error> {
    let path = helper(program).unwrap_or_else(|| PathBuf::from(program));
    let count = count.min(IDS_MAPPED);
    let args = [
        pid.to_string(),
        "0".into(),
        own.to_string(),
        "1".into(),
        "1".into(),
        start.to_string(),
        count.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::netns::run(&path.to_string_lossy(), &args)
}

/// Whether this process is the `ama up` [`reexec_up`] started inside the namespaces.
pub fn inside() -> bool {
    static INSIDE: OnceLock<bool> = OnceLock::new();
    *INSIDE.get_or_init(|| std::env::var_os(STATE_ENV).is_some() && in_user_namespace())
}

/// Whether this process is in a user namespace other than the initial one.
fn in_user_namespace() -> bool {
    fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
}

/// The state directories' base outside, when [`inside`].
pub fn state_base() -> Option<PathBuf> {
    inside()
        .then(|| std::env::var_os(STATE_ENV).map(PathBuf::from))
        .flatten()
}

static HOST_PID: OnceLock<u32> = OnceLock::new();

/// This process's pid as the host sees it (outside the PID namespace, once [`prepare`] ran).
pub fn host_pid() -> u32 {
    HOST_PID.get().copied().unwrap_or_else(std::process::id)
}

/// Inside the namespaces, before anything else: private mounts, the PID namespace's `/proc`,
/// private `/run/netns` and `/etc/netns`; remembers the pid the host sees.
pub fn prepare() -> Result<(), Error> {
    prepare_with(&[("/run", "netns"), ("/etc", "netns")])
}

/// [`prepare`], with an empty tmpfs on each `(parent, name)` of `private` (made where missing).
fn prepare_with(private: &[(&str, &str)]) -> Result<(), Error> {
    let status = fs::read_to_string("/proc/self/status").map_err(Error::io("/proc/self/status"))?;
    let pid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(std::process::id);
    let _ = HOST_PID.set(pid);
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).map_err(sys("/"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(sys("/proc"))?;
    let base = state_base().unwrap_or_else(std::env::temp_dir);
    for (parent, name) in private {
        let dir = Path::new(parent).join(name);
        // A parent grafted for an earlier entry is ours: the directory can simply be made.
        if !dir.is_dir() && fs::create_dir(&dir).is_err() {
            graft(Path::new(parent), name, &base.join(format!(".graft-{pid}")))?;
        }
        mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=755"),
        )
        .map_err(sys(&dir))?;
    }
    Ok(())
}

/// Set in the environment of the `ama userns` that [`reexec_userns`] starts inside.
const USERNS_ENV: &str = "AMA_USERNS_INIT";

/// `ama userns -- COMMAND…` without root: runs `ama userns -- COMMAND…` again inside new user,
/// mount, network and PID namespaces (as [`reexec_up`] does for `ama up`), where
/// [`userns_init`] gives COMMAND a root of its own. Returns COMMAND's exit code.
///
/// Call it before any thread is started.
pub fn reexec_userns() -> Result<i32, Error> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // SAFETY: single-threaded here (the caller's contract); the variable is for the child.
    unsafe { std::env::set_var(USERNS_ENV, "1") };
    let result = run_in_namespaces("ama userns", &argv, None);
    // SAFETY: as above.
    unsafe { std::env::remove_var(USERNS_ENV) };
    result.map(|(_, code)| code)
}

/// Whether this process is the `ama userns` that [`reexec_userns`] started inside.
pub fn userns_inside() -> bool {
    std::env::var_os(USERNS_ENV).is_some() && in_user_namespace()
}

/// Inside: the init of the namespaces. Makes root's view of the machine for `command` (what
/// [`prepare`] makes, and an empty `/run/ama` for the meshes `ama up` runs there), runs it,
/// reaps every process orphaned into the namespace while it runs (an init that does not leaves
/// zombies that look alive), passes on SIGINT, SIGTERM and SIGHUP, and returns its exit code
/// (128 + signal when killed). When this init exits, the kernel kills whatever is left.
pub fn userns_init(command: &[std::ffi::OsString]) -> Result<i32, Error> {
    prepare_with(&[("/run", "netns"), ("/etc", "netns"), ("/run", "ama")])?;
    // The new network namespace is the command's host: its loopback, as a host's, is up.
    crate::netns::run("ip", &["link", "set", "lo", "up"])?;
    let (program, args) = command.split_first().ok_or_else(|| Error::State {
        path: PathBuf::from("ama userns"),
        message: "no command given".into(),
    })?;
    // The init of a PID namespace gets only the signals it has a handler for: install one,
    // block them and take them with sigwait.
    extern "C" fn noop(_: libc::c_int) {}
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(noop),
            nix::sys::signal::SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing.
        unsafe { nix::sys::signal::sigaction(s, &action) }.map_err(sys("sigaction"))?;
        signals.add(s);
    }
    signals.add(Signal::SIGCHLD);
    signals.thread_block().map_err(sys("sigprocmask"))?;
    // exec resets the handlers; the mask is inherited, so the child unblocks what it takes.
    let mut command = std::process::Command::new(program);
    command.args(args).env_remove(USERNS_ENV);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: sigprocmask is async-signal-safe; nothing is allocated.
        unsafe {
            command.pre_exec(|| {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                Ok(())
            });
        }
    }
    let child = command.spawn().map_err(Error::io(program))?;
    let child = Pid::from_raw(child.id() as i32);
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => return Ok(code),
                    Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => {
                        return Ok(128 + s as i32);
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            },
            Ok(s) => {
                let _ = kill(child, s);
            }
            Err(_) => {}
        }
    }
}

/// Replaces directory `parent` by a tmpfs holding the same entries (bound back, symlinks
/// copied) but for a new, empty directory `name`. `staging` is a scratch directory of ours.
fn graft(parent: &Path, name: &str, staging: &Path) -> Result<(), Error> {
    let none = None::<&str>;
    fs::create_dir_all(staging).map_err(Error::io(staging))?;
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(parent), staging, none, bind, none).map_err(sys(staging))?;
    mount(
        Some("tmpfs"),
        parent,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755"),
    )
    .map_err(sys(parent))?;
    for entry in fs::read_dir(staging).map_err(Error::io(staging))? {
        let entry = entry.map_err(Error::io(staging))?;
        if entry.file_name() == name {
            continue;
        }
        let (from, to) = (entry.path(), parent.join(entry.file_name()));
        let kind = entry.file_type().map_err(Error::io(&from))?;
        if kind.is_symlink() {
            let target = fs::read_link(&from).map_err(Error::io(&from))?;
            std::os::unix::fs::symlink(target, &to).map_err(Error::io(&to))?;
            continue;
        }
        if kind.is_dir() {
            fs::create_dir(&to).map_err(Error::io(&to))?;
        } else {
            fs::File::create(&to).map_err(Error::io(&to))?;
        }
        mount(Some(&from), &to, none, bind, none).map_err(sys(&to))?;
    }
    umount2(staging, MntFlags::MNT_DETACH).map_err(sys(staging))?;
    let _ = fs::remove_dir(staging);
    let dir = parent.join(name);
    fs::create_dir(&dir).map_err(Error::io(&dir))
}

/// The `nsenter` arguments that put a command into the namespaces of init `pid` (user first,
/// then mount, network, PID), as the root of the user namespace.
pub fn enter_args(pid: u32) -> Vec<String> {
    [
        "-U",
        "-m",
        "-n",
        "-p",
        "-t",
        &pid.to_string(),
        "--preserve-credentials",
        "--",
    ]
    .map(String::from)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subuid_ranges() {
        let text = "alice:100000:65536\n1001:200000:100\n1002:300000:1337\n";
        assert_eq!(range(text, "alice", "1000"), Some((100000, 65536)));
        assert_eq!(range(text, "bob", "1001"), None, "too few ids");
        assert_eq!(range(text, "carol", "1002"), Some((300000, 1337)));
        assert_eq!(range(text, "dave", "1003"), None);
        assert_eq!(range("garbage", "alice", "1000"), None);
    }

    #[test]
    fn enter_args_put_the_user_namespace_first() {
        assert_eq!(
            enter_args(42),
            [
                "-U",
                "-m",
                "-n",
                "-p",
                "-t",
                "42",
                "--preserve-credentials",
                "--"
            ]
        );
    }
}
