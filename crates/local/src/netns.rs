//! Network namespaces and the LAN that joins them, made with iproute2's `ip` as an operator
//! would, so `ip netns list` and `ip netns exec` show and reach exactly what `ama up` made.
//!
//! Topology: a bridge `br0` (10.244.0.1/16) in a namespace of its own (`ama-<mesh>-lan`), so
//! the host has no route to pods or VIPs and nothing of the host is touched; one namespace per
//! pod with `eth0` (its address /16) joined to the bridge by a veth pair and a default route
//! through it. A pod's `/etc/netns/<netns>/hosts` is bind-mounted over `/etc/hosts` by
//! `ip netns exec`: that is the mesh's DNS.
//!
//! Every namespace is owned by a [`Netns`] guard: dropping it kills what still runs inside and
//! deletes the namespace and its `/etc/netns` directory. [`remove`] does the same by name, for
//! `ama down` after an `ama up` that could not clean up.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use crate::Error;
use crate::ipam::{GATEWAY, POD_PREFIX};

/// Runs `program args…`; an error carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            program: program.to_string(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        command: format!("{program} {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// The names of every network namespace (`ip netns list`).
pub fn list() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The pids of the processes in namespace `name` (`ip netns pids`).
pub fn pids(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills everything in namespace `name`, deletes it and its `/etc/netns` directory. Missing
/// parts are fine: this is also the clean-up after a crash.
pub fn remove(name: &str) {
    for pid in pids(name) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if Path::new("/run/netns").join(name).exists()
        && let Err(e) = run("ip", &["netns", "del", name])
    {
        tracing::warn!(netns = name, "{e}");
    }
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(name));
}

/// A network namespace, deleted (with everything in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with `lo` up. A leftover of that name is removed first.
    pub fn create(name: &str) -> Result<Netns, Error> {
        if list().iter().any(|n| n == name) {
            remove(name);
        }
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <netns> args…`.
    pub fn ip(&self, args: &[&str]) -> Result<(), Error> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `program args…` inside the namespace and waits for it.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<(), Error> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Writes the hosts file processes in this namespace see as `/etc/hosts`.
    ///
    /// Once it exists it is rewritten in place, not replaced: `ip netns exec` bind-mounted the
    /// file itself (its inode) over the running processes' `/etc/hosts`, so only an in-place
    /// write reaches them (a name added later, such as an external server's that became
    /// ready). Unchanged content is not written at all.
    pub fn set_hosts(&self, text: &str) -> Result<(), Error> {
        let dir = Path::new("/etc/netns").join(&self.name);
        fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let path = dir.join("hosts");
        match fs::read_to_string(&path) {
            Ok(old) if old == text => Ok(()),
            Ok(_) => fs::write(&path, text.as_bytes()).map_err(Error::io(&path)),
            Err(_) => crate::state::write_atomic(&path, text.as_bytes()),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// The bridge and its namespace.
#[derive(Debug)]
pub struct Lan {
    netns: Netns,
}

/// The bridge's name inside its namespace.
const BRIDGE: &str = "br0";

impl Lan {
    /// Creates the namespace `name` holding `br0` with the gateway address, forwarding on.
    pub fn create(name: &str) -> Result<Lan, Error> {
        let netns = Netns::create(name)?;
        netns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        netns.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY}/{POD_PREFIX}"),
            "dev",
            BRIDGE,
        ])?;
        netns.ip(&["link", "set", BRIDGE, "up"])?;
        netns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(Lan { netns })
    }

    /// The bridge's namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Joins `pod` to the bridge with address `ip`: `eth0` in the pod, its peer on the bridge,
    /// a default route through the gateway.
    pub fn attach(&self, pod: &Netns, ip: Ipv4Addr) -> Result<(), Error> {
        let [_, _, a, b] = ip.octets();
        let peer = format!("v{a}-{b}");
        pod.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            self.netns.name(),
        ])?;
        pod.ip(&["addr", "add", &format!("{ip}/{POD_PREFIX}"), "dev", "eth0"])?;
        pod.ip(&["link", "set", "eth0", "up"])?;
        pod.ip(&["route", "add", "default", "via", &GATEWAY.to_string()])?;
        self.netns
            .ip(&["link", "set", &peer, "master", BRIDGE, "up"])?;
        Ok(())
    }
}
