//! A toolkit for end-to-end tests that run the real `ama` binary and real peers (httpbin, curl,
//! Envoy) inside network namespaces the test creates.
//!
//! Everything a test makes here is owned by a guard: [`Netns`] deletes its namespace (killing
//! whatever still runs inside it), [`Proc`] kills its process group, [`Scratch`] removes its
//! directory. Guards run on panic too, so a failing test leaves no namespace, rule or process.
//!
//! Topology made by [`Lan`]: a bridge in a namespace of its own (so the host has no route to pod
//! or Service addresses) and one namespace per pod, joined to the bridge by a veth pair, with a
//! default route through the bridge. Pod addresses are `10.244.0.0/24`; Service VIPs live in
//! `10.96.0.0/16` and exist only as routes inside the pods.

pub mod kubernetes_validate;
pub mod sidecar;
pub mod up;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, short enough for interface names.
fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id() % 100_000)
}

/// The workspace root (the parent of `tests/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `ama` binary, built once per test process so it is never stale.
pub fn ama() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "cli", "--bin", "ama"])
            .current_dir(workspace())
            .status()
            .expect("run cargo build for the ama binary");
        assert!(status.success(), "cargo build -p cli failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        let bin = target.join("debug").join("ama");
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

/// True when the test runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `test` runs here as root: true when this process is root (of the host, or of the
/// user namespace `ama userns` made). Otherwise it runs `test` there: this test binary again,
/// with `test --exact`, through `ama userns` (the user's uid as root, its subordinate ids
/// mapped, namespaces of its own: see `crates/cli/src/cmd/userns.rs`), passes on its output,
/// fails when it fails or when it did not run exactly one test, and returns false: the caller
/// returns, its test having run. Only a machine that cannot do that (no unprivileged user
/// namespaces, no `newuidmap`, no subordinate ids) skips it, saying why; under CI (env `CI`
/// set) that is a failure too.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    let check = Command::new(ama())
        .args(["userns", "--check"])
        .output()
        .expect("run ama userns --check");
    if !check.status.success() {
        let why = String::from_utf8_lossy(&check.stdout).trim().to_string();
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: needs root or a user namespace ({why}), and CI must run it"
        );
        eprintln!("skipped: {test} needs root, or a user namespace with subordinate ids: {why}");
        return false;
    }
    // Inside there is no network: the Python peers are installed first, out here.
    venv();
    let exe = std::env::current_exe().expect("this test binary");
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let id = format!(
        "u{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    eprintln!("{test}: not root; running it as root of a user namespace (ama userns)");
    let out = Command::new(ama())
        .arg("userns")
        .arg("--")
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(SCRATCH_ID, id)
        .stdin(Stdio::null())
        .output()
        .expect("run ama userns");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "{test} failed in the user namespace");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{test}: the user namespace ran no test of that exact name"
    );
    false
}

/// The environment variable that gives a test run in a user namespace its scratch names.
const SCRATCH_ID: &str = "AMA_E2E_SCRATCH_ID";

/// Whether `test` runs as the host's root; otherwise says why it cannot run without it and
/// returns false. For the few tests that change the host itself (add a user), which no user
/// namespace allows; under CI a missing root is a failure.
pub fn host_root_or_skip(test: &str, why: &str) -> bool {
    if is_root() && !in_user_namespace() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs the host's root ({why}), and CI must run it"
    );
    eprintln!("skipped: {test} needs the host's root: {why}");
    false
}

/// Whether this process is in a user namespace other than the host's.
fn in_user_namespace() -> bool {
    fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
}

/// A tool from the Python venv of `tests/requirements.txt` ([`venv`], made if missing).
/// Panics, naming `test`, when the venv has no such tool: a test never skips for want of a
/// peer it can install.
pub fn venv_tool(test: &str, tool: &str) -> PathBuf {
    let path = venv().join("bin").join(tool);
    assert!(
        path.exists(),
        "{test}: {} is missing although {} was installed; is it in tests/requirements.txt?",
        path.display(),
        REQUIREMENTS
    );
    path
}

/// The Python requirements of the tests' peers, relative to the workspace.
const REQUIREMENTS: &str = "tests/requirements.txt";

/// The Python venv of the tests' peers (httpbin, gunicorn, Envoy, grpcio, …): `$AMA_VENV`, else
/// `<workspace>/.venv`. The first test of a run that needs it makes it, as `.ci/run` would:
/// `python3 -m venv`, then `pip install -r tests/requirements.txt`, again whenever the
/// requirements file changed since (a stamp file in the venv holds the text last installed).
/// Test processes running at the same time take turns on a lock file beside the venv, so one
/// installs and the others wait for it. Panics, saying what to install, when Python cannot make
/// a venv here (Debian: `apt-get install python3-venv`) or pip fails.
pub fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = std::env::var_os("AMA_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join(".venv"));
        let wanted = fs::read_to_string(workspace().join(REQUIREMENTS))
            .unwrap_or_else(|e| panic!("reading {REQUIREMENTS}: {e}"));
        let stamp = venv.join(".ama-requirements");
        if fs::read_to_string(&stamp).is_ok_and(|t| t == wanted) {
            return venv;
        }
        let parent = venv.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        let lock_path = venv.with_extension("lock");
        let lock = fs::File::create(&lock_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", lock_path.display()));
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor this function owns; released when `lock` drops.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
            assert_eq!(rc, 0, "flock {}", lock_path.display());
        }
        // Another process may have installed it while this one waited.
        if fs::read_to_string(&stamp).is_ok_and(|t| t == wanted) {
            return venv;
        }
        let python = venv.join("bin").join("python");
        if !python.exists() {
            eprintln!("making the tests' Python venv: python3 -m venv {}", venv.display());
            let out = Command::new("python3").arg("-m").arg("venv").arg(&venv).output();
            let ok = out.as_ref().is_ok_and(|o| o.status.success());
            assert!(
                ok,
                "python3 -m venv {} failed ({}): the tests need Python 3 with venv                  (Debian: apt-get install python3-venv), or AMA_VENV naming a venv of {REQUIREMENTS}",
                venv.display(),
                match &out {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                }
            );
        }
        eprintln!(
            "installing the tests' Python peers: {} -m pip install -r {REQUIREMENTS}",
            python.display()
        );
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "-r"])
            .arg(workspace().join(REQUIREMENTS))
            .status()
            .unwrap_or_else(|e| panic!("running {} -m pip: {e}", python.display()));
        assert!(
            status.success(),
            "pip install -r {REQUIREMENTS} into {} failed (it needs PyPI); see above",
            venv.display()
        );
        fs::write(&stamp, &wanted).unwrap_or_else(|e| panic!("writing {}: {e}", stamp.display()));
        venv
    })
}

/// Runs a command to completion and panics with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `check` until it returns Some or `timeout` passes; panics with `what` on timeout.
/// A readiness wait, not a timing assertion: the timeout is generous.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scratch directory for logs and files, removed on drop when the test passes.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        // Tests run in user namespaces (`root_or_skip`) all have pid 3 or so there, and share
        // /tmp: the directory is named after the id the test process outside gave them.
        let prefix = match std::env::var(SCRATCH_ID) {
            Ok(id) => format!("ama-{tag}-{id}-"),
            Err(_) => format!("ama-{tag}-"),
        };
        let dir = std::env::temp_dir().join(unique(&prefix));
        fs::create_dir_all(&dir).expect("create scratch dir");
        // Let uid 1337 (the sidecar) write its files here too.
        run(Command::new("chmod").arg("0777").arg(&dir));
        Scratch(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    /// Removes the directory, unless the test is failing: then its logs stay for a person to read.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("logs kept in {} (the test failed)", self.0.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A network namespace, deleted with everything still running in it on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let ns = Netns {
            name: unique(prefix),
        };
        run(Command::new("ip").args(["netns", "add", &ns.name]));
        ns.sh("ip link set lo up");
        ns
    }

    /// A command that runs `program` inside this namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a shell script inside the namespace; panics when it fails.
    pub fn sh(&self, script: &str) -> Output {
        run(self.cmd("bash").args(["-ec", script]))
    }

    /// Runs a shell script inside the namespace and returns its output, failed or not.
    pub fn try_sh(&self, script: &str) -> Output {
        self.cmd("bash")
            .args(["-c", script])
            .output()
            .expect("spawn ip netns exec")
    }

    /// Gives processes started with [`Netns::cmd`] their own `/etc/hosts` (`ip netns exec`
    /// bind-mounts `/etc/netns/<name>/hosts` over `/etc/hosts`), so names such as
    /// `httpbin-service` resolve as cluster DNS would. Removed with the namespace.
    pub fn set_hosts(&self, hosts: &str) {
        let dir = Path::new("/etc/netns").join(&self.name);
        fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
        fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{hosts}"))
            .expect("write /etc/netns/<ns>/hosts");
    }

    /// True when something accepts TCP connections on `addr:port` as seen from this namespace.
    pub fn connects(&self, addr: &str, port: u16) -> bool {
        self.try_sh(&format!("exec 3<>/dev/tcp/{addr}/{port}"))
            .status
            .success()
    }

    /// Waits until `addr:port` accepts connections from inside this namespace.
    pub fn wait_port(&self, addr: &str, port: u16) {
        wait_for(
            &format!("{addr}:{port} in {}", self.name),
            Duration::from_secs(30),
            || self.connects(addr, port).then_some(()),
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2) on a pid we read from the namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// A process whose stdout and stderr go to files; its process group is killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    /// Spawns `cmd` in a process group of its own, logging into `dir/<name>.{out,err}`.
    pub fn spawn(name: &str, dir: &Path, mut cmd: Command) -> Proc {
        use std::os::unix::process::CommandExt;
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("create stdout log"))
            .stderr(fs::File::create(&stderr).expect("create stderr log"))
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process has written to stdout so far.
    pub fn out(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What the process has written to stderr so far.
    pub fn err(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// True when the process has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Panics with the process's logs if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited with {status}\nstdout:\n{}\nstderr:\n{}",
                self.name,
                self.out(),
                self.err()
            );
        }
    }

    /// Sends `signal` to the process and waits up to `timeout` for it to exit.
    pub fn signal_and_wait(
        &mut self,
        signal: i32,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created for this child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A pod: its namespace and its address on the LAN.
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

/// A LAN of pods joined by a bridge that lives in a namespace of its own.
pub struct Lan {
    /// Holds the bridge `br0` (10.244.0.1/24).
    pub bridge: Netns,
    next_host: u8,
}

/// The gateway address of the LAN, on the bridge.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The range Service VIPs are taken from; pods route it to the bridge.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

impl Lan {
    pub fn new() -> Lan {
        let bridge = Netns::new("ama-br");
        bridge.sh(&format!(
            "ip link add br0 type bridge && ip addr add {GATEWAY}/24 dev br0 && ip link set br0 up"
        ));
        Lan {
            bridge,
            next_host: 2,
        }
    }

    /// Adds a pod namespace with the next free address.
    pub fn pod(&mut self, name: &str) -> Pod {
        let ns = Netns::new(&format!("ama-{name}-"));
        let ip = Ipv4Addr::new(10, 244, 0, self.next_host);
        let peer = format!("v{}-{}", std::process::id() % 100_000, self.next_host);
        self.next_host += 1;
        ns.sh(&format!(
            "ip link add eth0 type veth peer name {peer} netns {br}
             ip addr add {ip}/24 dev eth0
             ip link set eth0 up
             ip route add default via {GATEWAY}",
            br = self.bridge.name
        ));
        self.bridge.sh(&format!(
            "ip link set {peer} master br0 && ip link set {peer} up"
        ));
        Pod { ns, ip }
    }
}

impl Default for Lan {
    fn default() -> Self {
        Lan::new()
    }
}
