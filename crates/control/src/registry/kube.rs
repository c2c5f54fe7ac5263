//! The Kubernetes registry: kube-rs watchers on the API server feeding the [`ConfigStore`].
//!
//! One task per watched kind ([`KINDS`]): Namespaces, Services, Pods, EndpointSlices
//! (`discovery.k8s.io/v1`), the ConfigMap `istio` of the system namespace (MeshConfig),
//! Secrets of the types `credentialName` reads (`kubernetes.io/tls`, `Opaque`; their data is
//! never logged, and `kubectl`'s last-applied copy of it is dropped), and
//! Istio's CRDs (`networking.istio.io` VirtualService, DestinationRule, Gateway, ServiceEntry,
//! Sidecar; `security.istio.io` PeerAuthentication, AuthorizationPolicy, RequestAuthentication;
//! `telemetry.istio.io` Telemetry, for its tracing).
//! Each task runs a [`::kube::runtime::watcher`] stream with the runtime's default backoff and
//! keeps the objects of its kind as the store source `kubernetes/<Kind>`, so the pusher rebuilds the model
//! from them exactly as it does from files.
//!
//! - Every object is parsed by [`convert`] with the file registry's parser: a malformed one is
//!   reported once with its field path (and in [`KubeRegistry::errors`]) and left out; the
//!   others still apply. An AuthorizationPolicy or RequestAuthentication is never left out for
//!   what Ama cannot read of it: it is kept as an [`api::objects::UnreadablePolicy`], which
//!   denies every request to what it binds, and logged at ERROR. Pods that have finished are
//!   left out.
//! - A re-list (`Init` … `InitApply` … `InitDone`, after a `410 Gone` or a lost watch) is
//!   collected aside and replaces the kind's objects whole at `InitDone`, so objects deleted
//!   while the watch was down vanish, and the mesh never sees half a list.
//! - Events are coalesced: a kind is written to the store at most every [`FLUSH_DELAY`], so a
//!   rollout of many pods is one store change, not one per pod.
//! - Istio CRDs are watched at the newest version the API server serves: `v1`, else `v1beta1`,
//!   else `v1alpha3` (each on `404`). A CRD that is not installed counts as empty and is looked
//!   for again every [`KubeOptions::crd_retry`].
//! - Watch errors (`403` from missing RBAC, a restarted API server …) are logged with the kind
//!   and the API path, retried with kube-rs' default backoff (0.8 s doubling to 30 s), and never
//!   stop the control plane.
//! - With [`KubeOptions::root_cert`], the root certificate is published as ConfigMap
//!   `istio-ca-root-cert` in each namespace when it is first seen ([`publish`]).
//!
//! Memory: the registry keeps only the parsed [`Object`]s (no reflector cache of raw objects).

pub mod convert;
pub mod publish;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ::kube::Client;
use ::kube::api::{Api, DynamicObject};
use ::kube::core::GroupVersionKind;
use ::kube::discovery::ApiResource;
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use api::objects::{Object, ObjectError};
use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ConfigStore;
use crate::model::ROOT_NAMESPACE;
use convert::{Converted, convert};

pub use publish::{
    injection_webhook_config_name, patch_webhook_ca_bundle, publish_root, publish_root_to,
};

/// Prefix of this registry's store sources (`kubernetes/Pod` …).
pub const SOURCE_PREFIX: &str = "kubernetes";
/// Longest time between an event and the store write that carries it.
pub const FLUSH_DELAY: Duration = Duration::from_millis(50);
/// How long [`connect`] waits for the API server to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`KubeRegistry::start_synced`] waits for the first lists before serving what it has.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait between two attempts to write to the API server (root ConfigMaps, caBundle).
const WRITE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why the API server could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No kubeconfig or in-cluster config, or the API server did not answer.
    #[error(
        "no Kubernetes API server: set KUBECONFIG or run in a pod; for local mode use --registry files ({reason})"
    )]
    NoCluster {
        /// What was tried and how it failed.
        reason: String,
    },
    /// A request failed.
    #[error("{what}: {}", describe(error))]
    Api {
        /// What was being done (`applying ConfigMap default/istio-ca-root-cert`).
        what: String,
        /// The client's error.
        error: ::kube::Error,
    },
}

/// A client from `KUBECONFIG` (or `~/.kube/config`) or the pod's service account, checked by
/// asking the API server its version (within [`CONNECT_TIMEOUT`]).
pub async fn connect() -> Result<Client, KubeError> {
    let client = Client::try_default()
        .await
        .map_err(|e| KubeError::NoCluster {
            reason: describe(&e),
        })?;
    match tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(version)) => {
            tracing::info!(
                "Kubernetes API server {}.{} ({})",
                version.major,
                version.minor,
                version.git_version
            );
            Ok(client)
        }
        Ok(Err(e)) => Err(KubeError::NoCluster {
            reason: describe(&e),
        }),
        Err(_) => Err(KubeError::NoCluster {
            reason: format!("no answer in {} s", CONNECT_TIMEOUT.as_secs()),
        }),
    }
}

/// Where a kind is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (or a cluster-scoped kind).
    All,
    /// Only the MeshConfig ConfigMap `istio` of the system namespace.
    MeshConfig,
}

/// A watched kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// API group (empty for the core group).
    pub group: &'static str,
    /// Versions to try, newest first.
    pub versions: &'static [&'static str],
    /// Kind.
    pub kind: &'static str,
    /// Resource name in URLs.
    pub plural: &'static str,
    /// Where it is watched.
    pub scope: Scope,
}

const NETWORKING: &str = api::networking::GROUP;
const SECURITY: &str = api::security::GROUP;
const TELEMETRY: &str = "telemetry.istio.io";

/// Namespaces (the root certificate follows them).
pub const NAMESPACE: Kind = core("Namespace", "namespaces", Scope::All);

/// Secrets (`credentialName`).
pub const SECRET: Kind = core("Secret", "secrets", Scope::All);

/// The field selector of the Secret watch: not Helm releases nor service-account tokens (as
/// istiod's credential controller asks), which no `credentialName` reads and which can be
/// large and many.
pub const SECRET_FIELDS: &str =
    "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token";

/// Everything the registry watches.
pub const KINDS: &[Kind] = &[
    NAMESPACE,
    core("Service", "services", Scope::All),
    core("Pod", "pods", Scope::All),
    Kind {
        group: "discovery.k8s.io",
        versions: &["v1"],
        kind: "EndpointSlice",
        plural: "endpointslices",
        scope: Scope::All,
    },
    core("ConfigMap", "configmaps", Scope::MeshConfig),
    // `credentialName` (Gateways, DestinationRules): only `kubernetes.io/tls` and `Opaque` are
    // kept ([`convert`]); the API server leaves out the bulkiest others ([`SECRET_FIELDS`]).
    SECRET,
    istio(
        NETWORKING,
        &api::networking::VERSIONS,
        "VirtualService",
        "virtualservices",
    ),
    istio(
        NETWORKING,
        &api::networking::VERSIONS,
        "DestinationRule",
        "destinationrules",
    ),
    istio(
        NETWORKING,
        &api::networking::VERSIONS,
        "Gateway",
        "gateways",
    ),
    istio(
        NETWORKING,
        &api::networking::VERSIONS,
        "ServiceEntry",
        "serviceentries",
    ),
    istio(
        NETWORKING,
        &api::networking::VERSIONS,
        "Sidecar",
        "sidecars",
    ),
    istio(
        SECURITY,
        &api::security::VERSIONS,
        "PeerAuthentication",
        "peerauthentications",
    ),
    istio(
        SECURITY,
        &api::security::VERSIONS,
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    istio(
        SECURITY,
        &api::security::VERSIONS,
        "RequestAuthentication",
        "requestauthentications",
    ),
    istio(TELEMETRY, &["v1", "v1alpha1"], "Telemetry", "telemetries"),
];

const fn core(kind: &'static str, plural: &'static str, scope: Scope) -> Kind {
    Kind {
        group: "",
        versions: &["v1"],
        kind,
        plural,
        scope,
    }
}

const fn istio(
    group: &'static str,
    versions: &'static [&'static str],
    kind: &'static str,
    plural: &'static str,
) -> Kind {
    Kind {
        group,
        versions,
        kind,
        plural,
        scope: Scope::All,
    }
}

impl Kind {
    /// The API resource of this kind at `version`.
    pub fn resource(&self, version: &str) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, version, self.kind),
            self.plural,
        )
    }

    /// The store source of this kind (`kubernetes/Pod`).
    pub fn source(&self) -> String {
        format!("{SOURCE_PREFIX}/{}", self.kind)
    }
}

/// How the registry runs.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The control plane's namespace, where the MeshConfig ConfigMap `istio` is read.
    pub system_namespace: String,
    /// The root certificate (PEM) to publish as `istio-ca-root-cert` in every namespace.
    pub root_cert: Option<String>,
    /// How often a CRD that is not served is looked for again.
    pub crd_retry: Duration,
    /// The kinds to watch (default: [`KINDS`]).
    pub kinds: Vec<Kind>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            system_namespace: ROOT_NAMESPACE.to_string(),
            root_cert: None,
            crd_retry: Duration::from_secs(60),
            kinds: KINDS.to_vec(),
        }
    }
}

/// Kubernetes mode of the discovery server: the API server and what to watch.
#[derive(Clone)]
pub struct KubeSource {
    /// The client (from [`connect`]).
    pub client: Client,
    /// What to watch.
    pub options: KubeOptions,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What the watch tasks share.
struct Shared {
    client: Client,
    store: Arc<ConfigStore>,
    options: KubeOptions,
    /// Invalid objects, by source.
    errors: Mutex<BTreeMap<String, Vec<ObjectError>>>,
    /// The version each kind is watched at (absent: not served, or not listed yet).
    versions: Mutex<BTreeMap<&'static str, String>>,
    /// Kinds that have been listed once (or found not served).
    synced: watch::Sender<BTreeSet<&'static str>>,
    /// Set once the root certificate is known ([`KubeRegistry::publish_root_cert`]).
    root: OnceLock<Arc<RootPublisher>>,
    shutdown: CancellationToken,
}

/// A running Kubernetes registry. Dropping it stops its tasks.
pub struct KubeRegistry {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for KubeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRegistry")
            .field("kinds", &self.shared.options.kinds.len())
            .field("versions", &self.versions())
            .finish_non_exhaustive()
    }
}

impl KubeRegistry {
    /// Starts one watch task per kind (and the root publisher) on the current tokio runtime.
    /// Returns at once; [`KubeRegistry::wait_synced`] waits for the first lists.
    pub fn start(client: Client, store: Arc<ConfigStore>, options: KubeOptions) -> KubeRegistry {
        let shutdown = CancellationToken::new();
        let root_cert = options.root_cert.clone();
        let shared = Arc::new(Shared {
            client,
            store,
            options,
            errors: Mutex::new(BTreeMap::new()),
            versions: Mutex::new(BTreeMap::new()),
            synced: watch::Sender::new(BTreeSet::new()),
            root: OnceLock::new(),
            shutdown,
        });
        let tasks: Vec<JoinHandle<()>> = shared
            .options
            .kinds
            .iter()
            .map(|kind| tokio::spawn(watch_kind(*kind, Arc::clone(&shared))))
            .collect();
        let registry = KubeRegistry {
            shared,
            tasks: Mutex::new(tasks),
        };
        if let Some(pem) = root_cert {
            registry.publish_root_cert(pem);
        }
        registry
    }

    /// [`KubeRegistry::start`], then waits for the first lists (at most [`SYNC_TIMEOUT`]: past
    /// that the control plane serves what it has, and the rest follows as it arrives).
    pub async fn start_synced(source: KubeSource, store: Arc<ConfigStore>) -> KubeRegistry {
        let registry = KubeRegistry::start(source.client, store, source.options);
        if tokio::time::timeout(SYNC_TIMEOUT, registry.wait_synced())
            .await
            .is_err()
        {
            let synced = registry.shared.synced.borrow().clone();
            let missing: Vec<&str> = registry
                .shared
                .options
                .kinds
                .iter()
                .map(|k| k.kind)
                .filter(|k| !synced.contains(k))
                .collect();
            tracing::warn!(
                "Kubernetes: not listed after {} s: {}; serving without them until they are",
                SYNC_TIMEOUT.as_secs(),
                missing.join(", ")
            );
        }
        registry
    }

    /// Publishes `root_pem` as ConfigMap `istio-ca-root-cert` in every namespace, now and as
    /// namespaces appear (once per namespace; the first call wins).
    pub fn publish_root_cert(&self, root_pem: String) {
        let publisher = Arc::new(RootPublisher::new(self.shared.client.clone(), root_pem));
        if self.shared.root.set(Arc::clone(&publisher)).is_err() {
            return;
        }
        // Namespaces already listed; those still in a kind's batch are requested at its flush.
        if let Some(namespaces) = self.shared.store.get(&NAMESPACE.source()) {
            for ns in namespaces.iter() {
                publisher.request(&ns.metadata().name);
            }
        }
        let task = tokio::spawn(publisher.run(self.shared.shutdown.clone()));
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }

    /// Sets the injection webhook's `caBundle` to `ca_pem` in the background, retrying with
    /// backoff until it succeeds (the MutatingWebhookConfiguration may be installed after the
    /// control plane starts).
    pub fn patch_webhook_ca_bundle(&self, name: String, ca_pem: String) {
        let client = self.shared.client.clone();
        let shutdown = self.shared.shutdown.clone();
        let task = tokio::spawn(async move {
            let mut failures: u32 = 0;
            loop {
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = patch_webhook_ca_bundle(&client, &name, &ca_pem) => r,
                };
                let Err(e) = result else { return };
                failures = failures.saturating_add(1);
                let delay = backoff(failures);
                tracing::warn!("{e}; retrying in {} s", delay.as_secs_f32());
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }

    /// Whether every kind has been listed once (a CRD that is not installed counts).
    pub fn synced(&self) -> bool {
        self.shared.synced.borrow().len() >= self.shared.options.kinds.len()
    }

    /// Waits until [`KubeRegistry::synced`].
    pub fn wait_synced(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.synced.subscribe();
        let wanted = self.shared.options.kinds.len();
        async move {
            // Err only when the registry is gone: nothing more to wait for.
            let _ = rx.wait_for(|kinds| kinds.len() >= wanted).await;
        }
    }

    /// The objects left out because they are malformed, with their field paths.
    pub fn errors(&self) -> Vec<ObjectError> {
        self.shared
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// The version each kind is watched at (`VirtualService` → `v1`); a kind whose resource is
    /// not served is absent.
    pub fn versions(&self) -> BTreeMap<&'static str, String> {
        self.shared
            .versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The client the registry watches with.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Stops the watches and waits for the tasks to end.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!("kubernetes registry task panicked: {e}");
            }
        }
    }
}

impl Drop for KubeRegistry {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// An object's namespace (empty when cluster-scoped) and name.
type Key = (String, String);
/// Objects of one kind.
type Objects = BTreeMap<Key, Object>;
/// Problems of the malformed objects of one kind.
type Errors = BTreeMap<Key, Vec<ObjectError>>;

/// The objects of one kind, and a re-list in progress.
struct KindState {
    kind: Kind,
    source: String,
    objects: Objects,
    errors: Errors,
    /// Objects and errors of a re-list, until `InitDone`.
    relist: Option<(Objects, Errors)>,
    /// Namespaces being deleted (Namespace kind only): no root certificate for them.
    terminating: HashSet<String>,
    dirty: bool,
}

/// What an event did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Nothing to write yet.
    Pending,
    /// A list completed: write now.
    Listed,
}

impl KindState {
    fn new(kind: Kind) -> KindState {
        KindState {
            kind,
            source: kind.source(),
            objects: BTreeMap::new(),
            errors: BTreeMap::new(),
            relist: None,
            terminating: HashSet::new(),
            dirty: false,
        }
    }

    fn handle(
        &mut self,
        event: Event<DynamicObject>,
        resource: &ApiResource,
        shared: &Shared,
    ) -> Step {
        match event {
            Event::Init => {
                self.relist = Some(Default::default());
                Step::Pending
            }
            Event::InitApply(object) => {
                self.apply(object, resource, true);
                Step::Pending
            }
            Event::InitDone => {
                if let Some((objects, errors)) = self.relist.take() {
                    self.objects = objects;
                    self.errors = errors;
                }
                self.dirty = true;
                Step::Listed
            }
            Event::Apply(object) => {
                self.apply(object, resource, false);
                Step::Pending
            }
            Event::Delete(object) => {
                let key = key(&object);
                if self.kind == NAMESPACE {
                    self.terminating.remove(&key.1);
                    if let Some(root) = shared.root.get() {
                        root.forget(&key.1);
                    }
                }
                self.dirty |= self.objects.remove(&key).is_some();
                self.dirty |= self.errors.remove(&key).is_some();
                Step::Pending
            }
        }
    }

    fn apply(&mut self, object: DynamicObject, resource: &ApiResource, init: bool) {
        let key = key(&object);
        if self.kind == NAMESPACE {
            let phase = object
                .data
                .pointer("/status/phase")
                .and_then(|v| v.as_str());
            if phase == Some("Terminating") {
                self.terminating.insert(key.1.clone());
            } else {
                self.terminating.remove(&key.1);
            }
        }
        let converted = convert(resource, object, &self.source);
        let previous_errors = self.errors.get(&key).cloned();
        let (objects, errors) = match (&mut self.relist, init) {
            (Some((objects, errors)), true) => (objects, errors),
            _ => (&mut self.objects, &mut self.errors),
        };
        match converted {
            Converted::Object(o) => {
                objects.insert(key.clone(), o);
                errors.remove(&key);
            }
            Converted::Skipped => {
                objects.remove(&key);
                errors.remove(&key);
            }
            Converted::Invalid(problems) => {
                // Reported once per content, not again at every re-list.
                if previous_errors.as_ref() != Some(&problems) {
                    for p in &problems {
                        tracing::warn!("{p}: left out");
                    }
                }
                objects.remove(&key);
                errors.insert(key, problems);
            }
        }
        if !init {
            self.dirty = true;
        }
    }

    /// Forgets every object (the kind is not served any more).
    fn clear(&mut self) {
        self.dirty |= !self.objects.is_empty() || !self.errors.is_empty();
        self.objects.clear();
        self.errors.clear();
        self.relist = None;
    }

    fn flush(&mut self, shared: &Shared) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        if self.kind == NAMESPACE
            && let Some(root) = shared.root.get()
        {
            for (_, name) in self.objects.keys() {
                if !self.terminating.contains(name) {
                    root.request(name);
                }
            }
        }
        shared
            .store
            .replace(&self.source, self.objects.values().cloned().collect());
        let errors: Vec<ObjectError> = self.errors.values().flatten().cloned().collect();
        let mut all = shared.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.is_empty() {
            all.remove(&self.source);
        } else {
            all.insert(self.source.clone(), errors);
        }
    }
}

fn key(object: &DynamicObject) -> Key {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// How one watch stream ended.
enum End {
    /// The resource is not served at this version (`404` on the list).
    NotServed,
    /// The registry is stopping.
    Shutdown,
}

/// Watches one kind until shutdown, falling back through its versions.
async fn watch_kind(kind: Kind, shared: Arc<Shared>) {
    let mut state = KindState::new(kind);
    let mut synced = false;
    let mut version = 0;
    let mut reported_absent = false;
    loop {
        let Some(v) = kind.versions.get(version) else {
            // No version is served: the CRD is not installed (yet).
            state.clear();
            state.flush(&shared);
            shared
                .versions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(kind.kind);
            if !reported_absent {
                tracing::info!(
                    "{}: not served by the API server (is its CRD installed?); looking again every {} s",
                    kind.kind,
                    shared.options.crd_retry.as_secs()
                );
                reported_absent = true;
            }
            mark_synced(&shared, kind, &mut synced);
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tokio::time::sleep(shared.options.crd_retry) => {}
            }
            version = 0;
            continue;
        };
        let resource = kind.resource(v);
        match watch_version(&mut state, &resource, &shared, &mut synced).await {
            End::Shutdown => return,
            End::NotServed => {
                tracing::debug!("{}: {} not served", kind.kind, resource.api_version);
                version += 1;
            }
        }
    }
}

/// Runs the watch of `resource` until it is found not served, or shutdown.
async fn watch_version(
    state: &mut KindState,
    resource: &ApiResource,
    shared: &Shared,
    synced: &mut bool,
) -> End {
    let kind = state.kind;
    let api: Api<DynamicObject> = match kind.scope {
        Scope::All => Api::all_with(shared.client.clone(), resource),
        Scope::MeshConfig => Api::namespaced_with(
            shared.client.clone(),
            &shared.options.system_namespace,
            resource,
        ),
    };
    let mut config = watcher::Config::default();
    if kind.scope == Scope::MeshConfig {
        config = config.fields(&format!("metadata.name={}", api::objects::MESH_CONFIG_MAP));
    }
    if kind == SECRET {
        config = config.fields(SECRET_FIELDS);
    }
    let stream = watcher::watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut flush_at: Option<Instant> = None;
    loop {
        let flush = async {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            _ = shared.shutdown.cancelled() => {
                state.flush(shared);
                return End::Shutdown;
            }
            _ = flush => {
                state.flush(shared);
                flush_at = None;
                continue;
            }
            next = stream.next() => next,
        };
        match next {
            Some(Ok(event)) => {
                if state.handle(event, resource, shared) == Step::Listed {
                    state.flush(shared);
                    flush_at = None;
                    let previous = shared
                        .versions
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(kind.kind, resource.version.clone());
                    if previous.as_deref() != Some(resource.version.as_str()) {
                        tracing::info!(
                            "{}: watching {} ({} objects)",
                            kind.kind,
                            resource.api_version,
                            state.objects.len()
                        );
                    }
                    mark_synced(shared, kind, synced);
                } else if state.dirty && flush_at.is_none() {
                    flush_at = Some(Instant::now() + FLUSH_DELAY);
                }
            }
            Some(Err(e)) if not_served(&e) => return End::NotServed,
            Some(Err(e)) => tracing::warn!(
                "watching {} {}: {}; retrying with backoff",
                resource.api_version,
                kind.plural,
                describe_watch(&e)
            ),
            // The watcher's stream does not end; if it ever did, start a new one.
            None => return End::NotServed,
        }
    }
}

fn mark_synced(shared: &Shared, kind: Kind, synced: &mut bool) {
    if !*synced {
        *synced = true;
        shared.synced.send_modify(|kinds| {
            kinds.insert(kind.kind);
        });
    }
}

/// Whether the error is the list of a resource the API server does not serve.
fn not_served(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(::kube::Error::Api(s)) if s.code == 404)
}

/// A client error for a person: the API server's status (`403 Forbidden: pods is forbidden: …`)
/// or the transport error with its causes.
pub fn describe(e: &::kube::Error) -> String {
    match e {
        ::kube::Error::Api(s) => {
            let hint = if s.code == 403 {
                " (RBAC: see the ClusterRole of `ama manifest generate`)"
            } else {
                ""
            };
            format!("{} {}: {}{hint}", s.code, s.reason, s.message)
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text.push_str(": ");
                    text.push_str(&s_text);
                }
                source = s.source();
            }
            text
        }
    }
}

fn describe_watch(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(e) => format!("list failed: {}", describe(e)),
        watcher::Error::WatchStartFailed(e) => format!("watch failed to start: {}", describe(e)),
        watcher::Error::WatchFailed(e) => format!("watch failed: {}", describe(e)),
        watcher::Error::WatchError(s) => {
            format!("watch error: {} {}: {}", s.code, s.reason, s.message)
        }
        other => other.to_string(),
    }
}

/// 1 s, 2 s, 4 s … up to [`WRITE_BACKOFF_MAX`] after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(2u32.saturating_pow(failures.min(6)))
        .min(WRITE_BACKOFF_MAX)
}

/// Publishes the root certificate to namespaces as they are seen, one at a time, retrying
/// failures with backoff. Its queue is a set of namespace names: bounded by the namespaces of
/// the cluster, and a namespace is queued once however many events name it.
struct RootPublisher {
    client: Client,
    pem: String,
    pending: Mutex<BTreeSet<String>>,
    done: Mutex<HashSet<String>>,
    wake: Notify,
}

impl RootPublisher {
    fn new(client: Client, pem: String) -> RootPublisher {
        RootPublisher {
            client,
            pem,
            pending: Mutex::new(BTreeSet::new()),
            done: Mutex::new(HashSet::new()),
            wake: Notify::new(),
        }
    }

    /// Asks for `namespace` to get the root certificate, unless it has it.
    fn request(&self, namespace: &str) {
        if !publish::publishes_to(namespace)
            || self
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(namespace)
        {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(namespace.to_string());
        self.wake.notify_one();
    }

    /// A deleted namespace: publish again if it comes back.
    fn forget(&self, namespace: &str) {
        self.done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(namespace);
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(namespace);
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            loop {
                let next = self
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_first();
                let Some(namespace) = next else { break };
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = publish_root_to(&self.client, &namespace, &self.pem) => r,
                };
                match result {
                    Ok(_) => {
                        failures = 0;
                        self.done
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(namespace);
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let delay = backoff(failures);
                        tracing::warn!("{e}; retrying in {} ms", delay.as_millis());
                        self.pending
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(namespace);
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }
}
