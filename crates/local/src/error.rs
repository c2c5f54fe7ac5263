//! Errors of the local runtime. Each says what failed and what to do next, for a person at a
//! terminal: the CLI prints them as they are.

use std::io;
use std::path::PathBuf;

use api::objects::ObjectError;

/// What went wrong in `ama up` or one of the commands that talk to a running mesh.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A host port for the ingress gateway cannot be bound.
    #[error(
        "ingress gateway: cannot listen on 127.0.0.1:{port} (choose another with \
         --ingress-port/--secure-ingress-port, or run without gateways: --profile minimal)"
    )]
    HostPort {
        /// The port.
        port: u16,
        /// Why.
        source: io::Error,
    },
    /// The directory given to `ama up` holds no YAML.
    #[error(
        "{dir}: no YAML files (*.yaml, *.yml, *.json): give the directory of the objects you \
         would `kubectl apply`, such as examples/seed"
    )]
    NoManifests {
        /// The directory.
        dir: PathBuf,
    },
    /// Documents of the input are malformed; nothing was started or applied.
    #[error("{} document(s) cannot be used; fix them and run again:\n  {}", errors.len(), errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Objects {
        /// Every problem, with file, document and field.
        errors: Vec<ObjectError>,
    },
    /// A pod cannot run locally as written.
    #[error("{object}: {message}")]
    Pod {
        /// `Kind namespace/name` of the object the pod comes from.
        object: String,
        /// What is missing, and how to add it.
        message: String,
    },
    /// A system command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `ama sandbox` could not give a container its view of the machine.
    #[error(
        "cannot {what} for the container ({source}); `ama up` runs pods as root, or in a user namespace of its own"
    )]
    Sandbox {
        /// The step that failed.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// The Service rules of a pod without a sidecar could not be installed.
    #[error(
        "pod {pod}: cannot install the rules that take its Service VIPs to their endpoints: {source}"
    )]
    ServiceRules {
        /// The pod.
        pod: String,
        /// Why.
        source: netfilter::Error,
    },
    /// A system command could not be started.
    #[error(
        "cannot run `{program}` ({source}); is it installed? (`ama up` needs iproute2 `ip` and util-linux `setpriv`)"
    )]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// `ama up` was started for a mesh that runs already.
    #[error(
        "mesh \"{cluster}\" is already running (ama up, pid {pid}): stop it with `ama down{flag}` \
         or start another with `ama up --name OTHER DIR`",
        flag = name_flag(cluster)
    )]
    AlreadyRunning {
        /// The mesh's name.
        cluster: String,
        /// The pid of its `ama up`.
        pid: u32,
    },
    /// `ama apply -n` of an object that names another namespace.
    #[error(
        "{file}: {object}: the namespace from the provided object \"{own}\" does not match the \
         namespace \"{given}\". You must pass '--namespace={own}' to perform this operation."
    )]
    NamespaceMismatch {
        /// The file.
        file: String,
        /// `Kind name`.
        object: String,
        /// The object's namespace.
        own: String,
        /// The one given with `-n`.
        given: String,
    },
    /// No mesh of that name is running.
    #[error("no mesh \"{cluster}\" is running (no {}); start one with `ama up DIR`", path.display())]
    NotRunning {
        /// The mesh's name.
        cluster: String,
        /// The state file looked for.
        path: PathBuf,
    },
    /// No such pod.
    #[error("pod \"{name}\" not found; `ama get pods` lists them")]
    NoPod {
        /// The name asked for.
        name: String,
    },
    /// A name that starts more than one pod's name.
    #[error("pod name \"{name}\" is ambiguous: the names of pods {} start with it; give more of the name", candidates.join(", "))]
    AmbiguousPod {
        /// The name asked for.
        name: String,
        /// The pods whose names start with it.
        candidates: Vec<String>,
    },
    /// No such container in the pod.
    #[error("container \"{container}\" is not in pod {pod}; choose one of: {}", choices.join(", "))]
    NoContainer {
        /// The pod.
        pod: String,
        /// The container asked for.
        container: String,
        /// The pod's containers.
        choices: Vec<String>,
    },
    /// The state file of a mesh is unreadable.
    #[error("{}: {message}; if no `ama up` runs, remove the directory and start again", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// No address is left in a pool.
    #[error("no free address left in {pool}: stop some pods (lower replicas) and try again")]
    AddressesExhausted {
        /// The pool (`10.244.0.0/16`).
        pool: &'static str,
    },
    /// Neither root nor what a rootless mesh takes.
    #[error(
        "{verb} needs root, or a user namespace that maps uid 1337 (the sidecar's), and this \
         machine lacks {}: run it with sudo, or `apt-get install uidmap` and give {user} \
         subordinate ids (usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user})",
        missing.join(" and ")
    )]
    NeedsRoot {
        /// `ama up`, `ama down`.
        verb: &'static str,
        /// What a rootless mesh needs and this machine lacks ([`crate::rootless::missing`]).
        missing: Vec<String>,
        /// This user.
        user: String,
    },
    /// `ama apply` wrote a change that no proxy can get: the control plane does not answer.
    #[error(
        "mesh \"{cluster}\": the change is saved, but ama discovery is not ready ({why}), so no \
         proxy has it yet. `ama up` restarts discovery when it exits, and the change reaches the \
         proxies once discovery answers again: watch `ama up`'s output and {}; if it does not \
         come back, restart the mesh (`ama down{flag}`, then `ama up{flag} DIR`)",
        log.display(),
        flag = name_flag(cluster)
    )]
    ControlPlaneDown {
        /// The mesh's name.
        cluster: String,
        /// What `ama up` saw (`exited (signal 9); restarting in 2s (restart 3)`, `/ready does
        /// not answer`).
        why: String,
        /// The control plane's log.
        log: PathBuf,
    },
    /// A sidecar's token for the control plane's CA could not be issued.
    #[error("workload token: {0}")]
    Token(#[from] control::tokens::TokenError),
    /// A mesh name that cannot name namespaces and directories.
    #[error("mesh name \"{0}\": use 1 to 20 lowercase letters, digits and '-'")]
    BadName(String),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// An [`Error::Token`].
    pub fn token(source: control::tokens::TokenError) -> Error {
        Error::Token(source)
    }

    /// An [`Error::NeedsRoot`] for `verb`, with what this machine lacks for a rootless mesh.
    pub fn needs_root(verb: &'static str) -> Error {
        let mut missing = crate::rootless::missing();
        if missing.is_empty() {
            missing.push("a usable subordinate id range".into());
        }
        Error::NeedsRoot {
            verb,
            missing,
            user: crate::rootless::user_name(),
        }
    }
}

/// ` --name NAME` unless the mesh has the default name.
fn name_flag(cluster: &str) -> String {
    if cluster == crate::state::DEFAULT_CLUSTER {
        String::new()
    } else {
        format!(" --name {cluster}")
    }
}
