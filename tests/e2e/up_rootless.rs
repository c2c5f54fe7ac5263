//! `ama up` without root, through a user namespace: a throwaway user with a subordinate id
//! range (as `useradd` makes on Debian) runs `ama up examples/seed --xds discovery`, then, as
//! that user, `ama get pods` until the pods are ready, `ama exec ubuntu -- curl` through the
//! sidecars (200 with the discovery CA's XFCC), `ama apply`, and `ama down`, which leaves no
//! process of that user or of its subordinate ids, no state directory and no namespace on the
//! host. Root only (it adds the user); skipped, saying why, where unprivileged user namespaces
//! or `newuidmap` (package uidmap, which .ci/run installs) are missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::{Proc, Scratch, ama, host_root_or_skip, wait_for, workspace};
use serde_json::Value;

const ID: &str = "spiffe://cluster.local/ns/default/sa/default";

/// Applied while the mesh runs: a second Service in front of httpbin.
const CHANGE: &str = "
apiVersion: v1
kind: Service
metadata:
  name: httpbin-alias
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 80, targetPort: 80}]
";

/// A user made for this test, with subordinate ids; on drop its processes are killed and the
/// user, its home, its `/etc/subuid` and `/etc/subgid` lines and its state directories removed.
struct User {
    name: String,
    uid: u32,
    /// The first subordinate uid (uid 1 inside the namespace).
    sub_start: u64,
}

impl User {
    fn create() -> User {
        let name = format!("amarl{}", std::process::id() % 100_000);
        let out = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", &name])
            .output()
            .expect("run useradd");
        assert!(out.status.success(), "useradd: {out:?}");
        // From here on the guard removes it, whatever fails next.
        let mut user = User {
            name,
            uid: 0,
            sub_start: 0,
        };
        let id = Command::new("id")
            .args(["-u", &user.name])
            .output()
            .unwrap();
        user.uid = String::from_utf8_lossy(&id.stdout).trim().parse().unwrap();
        for file in ["/etc/subuid", "/etc/subgid"] {
            let start = match subordinate(file, &user.name) {
                Some(start) => start,
                None => {
                    // useradd gives ranges only where /etc/subuid exists: add one past the rest.
                    let start = fs::read_to_string(file)
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| {
                            let f: Vec<&str> = l.split(':').collect();
                            Some(f.get(1)?.parse::<u64>().ok()? + f.get(2)?.parse::<u64>().ok()?)
                        })
                        .max()
                        .unwrap_or(100_000)
                        .max(100_000);
                    let mut text = fs::read_to_string(file).unwrap_or_default();
                    text.push_str(&format!("{}:{start}:65536\n", user.name));
                    fs::write(file, text).unwrap();
                    start
                }
            };
            if file == "/etc/subuid" {
                user.sub_start = start;
            }
        }
        user
    }

    /// `runuser -u USER -- ama ARGS…` (without the caller's `XDG_RUNTIME_DIR`), in `cwd`.
    fn ama(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", &self.name, "--"])
            .arg(ama())
            .args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .current_dir(cwd);
        cmd
    }

    /// The pids of this user's processes and of its subordinate ids'.
    fn processes(&self) -> Vec<(u32, u64, String)> {
        let out = Command::new("ps")
            .args(["-e", "-o", "pid=,uid=,args="])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let pid: u32 = f.next()?.parse().ok()?;
                let uid: u64 = f.next()?.parse().ok()?;
                let mine = uid == u64::from(self.uid)
                    || (self.sub_start..self.sub_start + 65536).contains(&uid);
                mine.then(|| (pid, uid, f.collect::<Vec<_>>().join(" ")))
            })
            .collect()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        for _ in 0..50 {
            let left = self.processes();
            if left.is_empty() {
                break;
            }
            for (pid, _, _) in left {
                // SAFETY: kill(2) on a process of the user this test made.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("userdel")
            .args(["--remove", &self.name])
            .output();
        for file in ["/etc/subuid", "/etc/subgid"] {
            if let Ok(text) = fs::read_to_string(file) {
                let prefix = format!("{}:", self.name);
                let kept: String = text
                    .lines()
                    .filter(|l| !l.starts_with(&prefix))
                    .map(|l| format!("{l}\n"))
                    .collect();
                if kept != text {
                    let _ = fs::write(file, kept);
                }
            }
        }
        let _ = fs::remove_dir_all(format!("/tmp/ama-{}", self.uid));
        let _ = fs::remove_dir_all(format!("/home/{}", self.name));
    }
}

/// `user`'s first subordinate id in `file`.
fn subordinate(file: &str, user: &str) -> Option<u64> {
    fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user) && f.get(2)?.parse::<u64>().ok()? >= 1337)
            .then(|| f.get(1)?.parse().ok())
            .flatten()
    })
}

/// Why this machine cannot run the test (besides root), if it cannot.
fn unsupported() -> Option<String> {
    let read = |p: &str| {
        fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    if read("/proc/sys/user/max_user_namespaces") == Some(0)
        || read("/proc/sys/kernel/unprivileged_userns_clone") == Some(0)
    {
        return Some("unprivileged user namespaces are disabled on this kernel".into());
    }
    if !Path::new("/usr/bin/newuidmap").exists() || !Path::new("/usr/bin/newgidmap").exists() {
        return Some("newuidmap/newgidmap are missing (apt-get install uidmap)".into());
    }
    None
}

fn ok(out: Output, what: &str, up: &Proc) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}\nama up:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        up.out(),
        up.err()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn seed_without_root_through_a_user_namespace() {
    if !host_root_or_skip(
        "seed_without_root_through_a_user_namespace",
        "it adds a user with subordinate ids and runs ama up as that user",
    ) {
        return;
    }
    if let Some(why) = unsupported() {
        assert!(
            std::env::var_os("CI").is_none(),
            "seed_without_root_through_a_user_namespace: {why}, and CI must run it"
        );
        eprintln!("skipped: seed_without_root_through_a_user_namespace: {why}");
        return;
    }
    let bin = ama();
    let scratch = Scratch::new("rootless");
    let user = User::create();
    // The user reads the seed, the applied file and runs the binary.
    let dir: PathBuf = scratch.path().join("seed");
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(workspace().join("examples/seed")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let change = scratch.path().join("alias.yaml");
    fs::write(&change, CHANGE).unwrap();
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(scratch.path())
        .status()
        .unwrap();
    assert!(
        Command::new("runuser")
            .args(["-u", &user.name, "--", "test", "-x"])
            .arg(bin)
            .status()
            .unwrap()
            .success(),
        "{} is not executable by other users",
        bin.display()
    );

    let mesh = format!("e2er{}", std::process::id() % 100_000);
    let cwd = scratch.path();
    let mut cmd = user.ama(cwd, &["up"]);
    cmd.arg(&dir).args([
        "--name",
        &mesh,
        "--xds",
        "discovery",
        "--profile",
        "minimal",
    ]);
    let mut up = Proc::spawn("ama-up", scratch.path(), cmd);

    // 1. Ready, as the user.
    let pods = wait_for("3 pods ready", Duration::from_secs(90), || {
        up.assert_running();
        let out = user
            .ama(cwd, &["get", "pods", "-o", "json", "--name", &mesh])
            .output()
            .ok()?;
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        let pods = list["items"].as_array()?.clone();
        let ready = pods.len() == 3
            && pods.iter().all(|p| {
                p["status"]["containerStatuses"]
                    .as_array()
                    .is_some_and(|cs| cs.len() == 2 && cs.iter().all(|c| c["ready"] == true))
            });
        ready.then_some(pods)
    });
    let state_dir = PathBuf::from(format!("/tmp/ama-{}/{mesh}", user.uid));
    let state: Value =
        serde_json::from_str(&fs::read_to_string(state_dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["rootless"], true, "{state}");
    // The sidecars run as uid 1337 inside: a subordinate id outside, never the user's own.
    let sidecars: Vec<(u32, u64, String)> = user
        .processes()
        .into_iter()
        .filter(|(_, _, args)| args.contains("proxy sidecar"))
        .collect();
    assert_eq!(sidecars.len(), 3, "{sidecars:?}");
    assert!(
        sidecars
            .iter()
            .all(|(_, uid, _)| *uid == user.sub_start + 1336),
        "{sidecars:?}"
    );
    // Nothing of it in the host's namespaces.
    let host_netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&host_netns.stdout).contains(&format!("ama.{mesh}.")),
        "{host_netns:?}"
    );

    // 2. Through the sidecars, with the discovery CA's certificates.
    let ubuntu = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .find(|n| n.starts_with("ubuntu"))
        .expect("an ubuntu pod")
        .to_string();
    let out = user
        .ama(
            cwd,
            &[
                "exec",
                &ubuntu,
                "--name",
                &mesh,
                "--",
                "curl",
                "-s",
                "-w",
                "\n%{http_code}",
                "http://httpbin-service/headers",
            ],
        )
        .output()
        .unwrap();
    let text = ok(out, "ama exec curl", &up);
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{text}");
    let headers: Value = serde_json::from_str(body).unwrap();
    let xfcc = headers["headers"]["X-Forwarded-Client-Cert"]
        .as_str()
        .unwrap_or_else(|| panic!("no XFCC: {body}"));
    assert!(
        xfcc.starts_with(&format!("By={ID};Hash=")) && xfcc.ends_with(&format!("URI={ID}")),
        "{xfcc}"
    );

    // 3. ama apply reaches the running mesh.
    let out = user
        .ama(cwd, &["apply", "-f"])
        .arg(&change)
        .args(["--name", &mesh])
        .output()
        .unwrap();
    assert!(ok(out, "ama apply", &up).contains("service/httpbin-alias created"));
    wait_for("httpbin-alias answers", Duration::from_secs(30), || {
        let out = user
            .ama(
                cwd,
                &[
                    "exec",
                    &ubuntu,
                    "--name",
                    &mesh,
                    "--",
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://httpbin-alias/get",
                ],
            )
            .output()
            .ok()?;
        (out.stdout == b"200").then_some(())
    });

    // 4. ama down as the user leaves nothing.
    let started = Instant::now();
    let out = user.ama(cwd, &["down", "--name", &mesh]).output().unwrap();
    let said = ok(out, "ama down", &up);
    assert!(said.contains("stopped"), "{said}");
    let status = up
        .signal_and_wait(0, Duration::from_secs(30))
        .expect("ama up exits after ama down");
    assert!(status.success(), "{status:?}\n{}{}", up.out(), up.err());
    assert!(
        up.out().contains("Stopped; nothing is left behind."),
        "{}",
        up.out()
    );
    wait_for("no process left", Duration::from_secs(10), || {
        user.processes().is_empty().then_some(())
    });
    assert!(!state_dir.exists(), "{} is left", state_dir.display());
    eprintln!("ama down took {:?}", started.elapsed());
}
