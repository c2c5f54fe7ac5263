//! `ama up` run as a user runs it, for the tests of the local mesh: started in the background
//! under a name of the test's own, driven with the real `ama get/exec/apply`, and brought down
//! (`ama down`, then the end of `ama up`) when the guard drops, so a failing test cleans up too.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::{Proc, ama, wait_for};

/// A running `ama up`.
pub struct UpMesh {
    /// The mesh's name (`--name`, and `AMA_MESH` for every command).
    pub name: String,
    /// The `ama up` process, until the mesh is brought down.
    pub up: Option<Proc>,
}

impl UpMesh {
    /// `ama up DIR --name e2e<tag><pid> FLAGS…` in the background, logging into `logs`.
    /// Without `--profile` in `flags` the mesh runs no gateway (`--profile minimal`), so a test
    /// counts only its own pods; a gateway test passes `--profile demo`.
    pub fn start(tag: &str, dir: &Path, logs: &Path, flags: &[&str]) -> UpMesh {
        let name = format!("e2e{tag}{}", std::process::id() % 100_000);
        let mut cmd = Command::new(ama());
        cmd.arg("up").arg(dir).args(["--name", &name]).args(flags);
        if !flags.iter().any(|f| f.starts_with("--profile")) {
            cmd.args(["--profile", "minimal"]);
        }
        UpMesh {
            up: Some(Proc::spawn("ama-up", logs, cmd)),
            name,
        }
    }

    /// What `ama up` has printed on stdout so far.
    pub fn up_out(&self) -> String {
        self.up.as_ref().map(Proc::out).unwrap_or_default()
    }

    /// What `ama up` has printed on stderr so far.
    pub fn up_err(&self) -> String {
        self.up.as_ref().map(Proc::err).unwrap_or_default()
    }

    /// `ama ARGS…` for this mesh.
    pub fn ama(&self, args: &[&str]) -> Output {
        Command::new(ama())
            .args(args)
            .env("AMA_MESH", &self.name)
            .output()
            .expect("run ama")
    }

    /// `ama ARGS…`'s stdout; panics with its stderr and `ama up`'s output when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ama(args);
        assert!(
            out.status.success(),
            "ama {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.up_out()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every pod of the mesh (`ama get pods -A -o json`); none while it is not up yet.
    pub fn pods(&self) -> Vec<Value> {
        let out = self.ama(&["get", "pods", "-A", "-o", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let list: Value = serde_json::from_slice(&out.stdout).expect("get pods -o json is JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the mesh has exactly `want` pods, all ready; returns them.
    pub fn wait_ready(&self, want: usize) -> Vec<Value> {
        wait_for(
            &format!("{want} pods ready"),
            Duration::from_secs(120),
            || {
                let pods = self.pods();
                (pods.len() == want && pods.iter().all(ready)).then_some(pods)
            },
        )
    }

    /// The host ports of the ingress gateway's Service ports 80 and 443 (`INGRESS_PORT`,
    /// `SECURE_INGRESS_PORT`), once `ama up` has bound them (`--profile demo` or `default`).
    pub fn ingress_ports(&self) -> (u16, u16) {
        wait_for(
            "the ingress gateway's host ports",
            Duration::from_secs(60),
            || {
                let text =
                    std::fs::read_to_string(format!("/run/ama/{}/state.json", self.name)).ok()?;
                let state: Value = serde_json::from_str(&text).ok()?;
                let port = |k: &str| u16::try_from(state["ingress"][k].as_u64()?).ok();
                Some((port("http")?, port("https")?))
            },
        )
    }

    /// The mesh's `state.json`.
    pub fn state(&self) -> Value {
        let text = std::fs::read_to_string(format!("/run/ama/{}/state.json", self.name))
            .expect("state.json");
        serde_json::from_str(&text).expect("state.json is JSON")
    }
}

impl Drop for UpMesh {
    fn drop(&mut self) {
        if self.up.is_some() {
            let _ = self.ama(&["down"]);
            self.up.take();
        }
    }
}

/// A pod that is not being deleted and whose containers are all ready.
pub fn ready(pod: &Value) -> bool {
    pod["metadata"].get("deletionTimestamp").is_none()
        && pod["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| cs.iter().all(|c| c["ready"] == true))
}

/// A pod's name.
pub fn name(pod: &Value) -> String {
    pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
