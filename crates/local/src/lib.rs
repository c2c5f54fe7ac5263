//! The local runtime: what `ama up DIR` runs. The mesh on one machine, with no Kubernetes.
//!
//! `ama up` reads the YAML a user would `kubectl apply` and plays the parts of the API server,
//! the scheduler, kubelet, kube-proxy and cluster DNS, just enough for the mesh to run as it does
//! in a cluster:
//!
//! ```text
//!  DIR/*.yaml ─► manifests ─► plan (pod groups: Deployments, StatefulSets, Pods …)
//!                                │ per replica: name, address, injection decision
//!                                ▼
//!                             launch (the injected pod: istio-init args, istio-proxy args/env,
//!                                │     app commands from `local.ama.dev/command`)
//!                                ▼
//!  runtime ─► lan (bridge namespace, 10.244.0.0/16) ─► netns per pod (eth0, hosts file)
//!         ─► `ama iptables …` ─► `ama proxy sidecar …` as 1337 ─► the app's process
//!            (no sidecar: kube_proxy's DNAT rules for the Service VIPs instead)
//!         ─► mesh: registry objects in <state>/config for `ama discovery` (default, Delta
//!                  ADS and the CA on 10.244.0.1:15012 over TLS: each sidecar's token in
//!                  <state>/tokens), or per-pod resource files (`--config`, no control-plane
//!                  process, no CA); one switch: [`mesh::XdsMode`]
//!         ─► state (<state>/state.json): what `ama get/exec/logs/apply/down` read
//! ```
//!
//! - [`gateways`]: the profile's gateways (`istio-ingressgateway`, `istio-egressgateway`), run
//!   as pods of `ama proxy router`.
//! - [`host_port`]: the ingress gateway on the host's loopback (`127.0.0.1:<port>`), forwarded
//!   from `ama up`'s process into the bridge's namespace.
//! - [`manifests`]: the objects of a directory or of `ama apply -f`, typed and raw.
//! - [`plan`]: the pods the objects ask for; [`launch`]: what runs in one pod.
//! - [`naming`] and [`ipam`]: pod names as Kubernetes makes them, pod addresses.
//! - [`netns`]: network namespaces and the LAN, each owned by a guard.
//! - [`process`]: processes in a pod, their logs, signals; [`probe`]: readiness checks run
//!   inside a pod's namespace.
//! - [`mesh`]: what the control plane and the proxies are told (registry objects, VIPs, hosts).
//! - [`kube_proxy`]: Service VIPs DNATed to their endpoints in the pods without a sidecar.
//! - [`state`]: the state directory shared by the `ama` invocations of one mesh.
//! - [`runtime`]: `ama up`'s loop (start, supervise, reconcile on `ama apply`, tear down) and
//!   `ama down`.
//! - [`secrets`]: the Secrets of `ama create secret tls|generic`.
//! - [`table`]: kubectl-style output of `ama get` for every kind (`get all`, Istio's printer
//!   columns), from the state file and `resources.json`.
//! - [`sample`]: the built-in apps (`ama sample httpbin`, `ama sample sleep`).
//!
//! As root it runs in the host's namespaces (`/run/netns`, `/etc/netns`); as another user it
//! runs itself again inside a user namespace that maps uid 1337 too ([`rootless`]), or refuses at
//! once ([`Error::NeedsRoot`]) naming what this machine lacks for that.

#![warn(missing_docs)]

pub mod error;
pub mod gateways;
pub mod host_port;
pub mod ipam;
pub mod kube_proxy;
pub mod launch;
pub mod manifests;
pub mod mesh;
pub mod naming;
pub mod netns;
pub mod plan;
pub mod probe;
pub mod process;
pub mod rootless;
pub mod runtime;
pub mod sample;
pub mod sandbox;
pub mod secrets;
pub mod state;
pub mod table;

pub use error::Error;
