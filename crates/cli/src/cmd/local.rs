//! What the commands that act on a local mesh (`ama up`, `get`, `exec`, `logs`, `apply`,
//! `down`) share: the mesh's name and this binary's path.

use std::path::PathBuf;

use anyhow::Context;
use local::state::{DEFAULT_CLUSTER, StateDir};

/// Which local mesh.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshName {
    /// Name of the local mesh (several can run side by side).
    #[arg(id = "mesh", long = "name", env = "AMA_MESH", default_value = DEFAULT_CLUSTER, global = true)]
    pub name: String,
}

impl MeshName {
    /// The mesh's state directory.
    pub fn dir(&self) -> anyhow::Result<StateDir> {
        Ok(StateDir::new(&self.name)?)
    }
}

/// This `ama` binary: what pods run as `istio-init`, `istio-proxy` and the samples.
pub fn ama_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the ama binary (/proc/self/exe)")
}
