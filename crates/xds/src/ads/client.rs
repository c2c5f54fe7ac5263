//! The Delta ADS client a proxy runs against `ama discovery`.
//!
//! [`AdsClient::run`] connects, sends the node, subscribes to every [`ResourceType`] (wildcard),
//! and keeps the received resources per type. After the first response of every type (the initial
//! sync), and after each later batch of responses, it rebuilds a whole [`ProxyResources`] and
//! hands it to the caller's `apply`: `Ok` is ACKed; `Err(text)` is NACKed with that text and the
//! resources of the rejected responses stay as they were. Responses that are already waiting when
//! one arrives are applied together, so a change that touches several types (a service and its
//! routes) reaches the proxy in one piece when the server sends it in one go.
//!
//! When the stream fails the client keeps what it has (the proxy goes on serving the last good
//! config) and reconnects with exponential backoff and jitter, sending `initial_resource_versions`
//! so the server sends only what changed meanwhile.
//!
//! How to reach the server is the caller's: [`Connect`] is implemented for a plain
//! `tonic::transport::Endpoint` (HTTP/2 without TLS, Istio's 15010); the sidecar's connection to
//! 15012 implements it with TLS and a bearer token ([`Connect::metadata`], asked again at every
//! connection so a rotated token is picked up).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc;
use futures_util::FutureExt;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};

use super::codec::{AnyResource, DecodeError, ResourceType, assemble};
use crate::ProxyResources;

/// A future that yields a connected channel.
pub type ChannelFuture =
    Pin<Box<dyn Future<Output = Result<Channel, tonic::transport::Error>> + Send>>;

/// A future that yields the metadata of a new stream.
pub type MetadataFuture = Pin<Box<dyn Future<Output = Result<MetadataMap, ClientError>> + Send>>;

/// Opens a channel to the discovery server, once per connection attempt.
pub trait Connect: Send + Sync + 'static {
    /// Connects.
    fn connect(&self) -> ChannelFuture;

    /// The metadata sent with each new stream (e.g. `authorization: Bearer <token>`), asked for
    /// once per connection attempt, before connecting. An error ends the attempt (logged, then
    /// retried with backoff). Default: none.
    fn metadata(&self) -> MetadataFuture {
        Box::pin(async { Ok(MetadataMap::new()) })
    }

    /// What to check when the server refuses the stream's credentials (`Unauthenticated`,
    /// `PermissionDenied`), for the log line. Default: none.
    fn credentials_hint(&self) -> Option<String> {
        None
    }
}

impl Connect for Endpoint {
    fn connect(&self) -> ChannelFuture {
        let endpoint = self.clone();
        Box::pin(async move { endpoint.connect().await })
    }
}

/// Why a connection to the discovery server ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not a valid URI.
    #[error("discovery address {address:?}: {message}")]
    Address {
        /// The address given.
        address: String,
        /// What is wrong with it.
        message: String,
    },
    /// Could not connect (TCP, TLS); the message carries the whole chain of causes.
    #[error("connecting: {}", chain(.0))]
    Connect(#[from] tonic::transport::Error),
    /// The credentials for the stream could not be had (e.g. the token file is unreadable).
    #[error("credentials: {0}")]
    Credentials(String),
    /// The server answered with an error status.
    #[error("stream: {:?}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
    /// The server ended the stream.
    #[error("the server closed the stream")]
    Closed,
}

/// `error: its cause: its cause...` (tonic's transport errors say little at the top).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// A plain HTTP/2 endpoint for Istio's `--discoveryAddress host:port` (or a full `http://` URI),
/// with a connect timeout and HTTP/2 keep-alives so a vanished server is noticed.
pub fn endpoint(address: &str) -> Result<Endpoint, ClientError> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| ClientError::Address {
        address: address.to_string(),
        message: e.to_string(),
    })?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// Reconnection delays: exponential from `initial` to `max`, each one jittered down by up to
/// half so that proxies cut off together do not come back together.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
        }
    }
}

impl Backoff {
    fn next(&self, current: Duration) -> Duration {
        (current * 2).min(self.max)
    }

    fn jittered(current: Duration) -> Duration {
        let factor = rand::rng().random_range(0.5..=1.0);
        current.mul_f64(factor)
    }
}

/// What the client is doing, for the proxy's admin pages and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStatus {
    /// A stream is open.
    pub connected: bool,
    /// Accepted configs handed to `apply`.
    pub applied: u64,
    /// Rejected pushes (NACKs sent).
    pub rejected: u64,
    /// The reason of the last NACK.
    pub last_rejection: Option<String>,
    /// Why the last stream ended (or the last connection attempt failed).
    pub last_disconnect: Option<String>,
    /// Streams ended and connection attempts failed, in all.
    pub disconnects: u64,
}

/// Largest response accepted: a first sync carries the whole mesh a proxy sees.
const MAX_RESPONSE_SIZE: usize = 64 * 1024 * 1024;
/// Requests (ACKs) queued towards the server.
const REQUEST_QUEUE: usize = 4 * ResourceType::ALL.len();
/// Most responses applied together.
const MAX_BATCH: usize = 64;

/// A resource as held by the client.
#[derive(Debug, Clone)]
struct Held {
    version: String,
    resource: AnyResource,
}

/// One received response, decoded but not yet in force.
struct Update {
    ty: ResourceType,
    nonce: String,
    changed: Vec<(String, Held)>,
    removed: Vec<String>,
}

/// A Delta ADS client for one proxy.
pub struct AdsClient {
    connect: Box<dyn Connect>,
    node: Node,
    backoff: Backoff,
    resources: BTreeMap<ResourceType, BTreeMap<String, Held>>,
    applied_once: bool,
    status: watch::Sender<ClientStatus>,
}

impl std::fmt::Debug for AdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsClient")
            .field("node", &self.node.id)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl AdsClient {
    /// A client that reaches the server through `connect` and presents itself as `node`.
    pub fn new(connect: impl Connect, node: Node) -> AdsClient {
        AdsClient {
            connect: Box::new(connect),
            node,
            backoff: Backoff::default(),
            resources: BTreeMap::new(),
            applied_once: false,
            status: watch::Sender::new(ClientStatus::default()),
        }
    }

    /// Replaces the reconnection backoff (default 100 ms to 15 s).
    pub fn with_backoff(mut self, backoff: Backoff) -> AdsClient {
        self.backoff = backoff;
        self
    }

    /// Follows the client's state.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Runs until the future is dropped: connects, applies every config the server pushes
    /// through `apply`, and reconnects whenever the stream ends. Between connections the last
    /// applied config stays in force (nothing is applied).
    pub async fn run<F>(mut self, mut apply: F)
    where
        F: FnMut(ProxyResources) -> Result<(), String> + Send,
    {
        let mut delay = self.backoff.initial;
        loop {
            let mut progressed = false;
            let err = self.session(&mut apply, &mut progressed).await;
            let refused = matches!(&err, ClientError::Rpc(s)
                if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied));
            match self.connect.credentials_hint().filter(|_| refused) {
                Some(hint) => {
                    tracing::warn!(node = %self.node.id, error = %err, check = %hint, "the control plane refused this proxy's credentials; keeping the last config, retrying")
                }
                None => {
                    tracing::warn!(node = %self.node.id, error = %err, "discovery stream ended; keeping the last config, retrying")
                }
            }
            self.status.send_modify(|s| {
                s.connected = false;
                s.last_disconnect = Some(err.to_string());
                s.disconnects += 1;
            });
            if progressed {
                delay = self.backoff.initial;
            }
            tokio::time::sleep(Backoff::jittered(delay)).await;
            delay = self.backoff.next(delay);
        }
    }

    /// One stream, until it fails. `progressed` is set once a response arrived.
    async fn session<F>(&mut self, apply: &mut F, progressed: &mut bool) -> ClientError
    where
        F: FnMut(ProxyResources) -> Result<(), String> + Send,
    {
        let metadata = match self.connect.metadata().await {
            Ok(m) => m,
            Err(e) => return e,
        };
        let channel = match self.connect.connect().await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let mut grpc = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_SIZE);
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        for (i, ty) in ResourceType::ALL.into_iter().enumerate() {
            let initial_resource_versions = self
                .resources
                .get(&ty)
                .map(|m| {
                    m.iter()
                        .map(|(n, h)| (n.clone(), h.version.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let req = DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.node.clone()),
                type_url: ty.type_url().to_string(),
                resource_names_subscribe: vec!["*".to_string()],
                initial_resource_versions,
                ..DeltaDiscoveryRequest::default()
            };
            // The queue holds every initial request: nothing is sent before the call below.
            if tx.try_send(req).is_err() {
                return ClientError::Closed;
            }
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        *request.metadata_mut() = metadata;
        let mut inbound = match grpc.delta_aggregated_resources(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => return status.into(),
        };
        self.status.send_modify(|s| s.connected = true);
        tracing::info!(node = %self.node.id, "discovery stream open");

        // Until every type has answered once, updates wait so the first config is whole.
        let mut unanswered: BTreeSet<ResourceType> = ResourceType::ALL.into_iter().collect();
        let mut waiting: Vec<Update> = Vec::new();
        loop {
            let first = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return ClientError::Closed,
                Err(status) => return status.into(),
            };
            *progressed = true;
            let mut batch = vec![first];
            // `message()` is cancel-safe: a response not ready now is read by the next call.
            while batch.len() < MAX_BATCH {
                match inbound.message().now_or_never() {
                    Some(Ok(Some(m))) => batch.push(m),
                    _ => break,
                }
            }
            let mut replies = Vec::new();
            for response in batch {
                match decode(&response) {
                    Ok(update) => {
                        unanswered.remove(&update.ty);
                        waiting.push(update);
                    }
                    Err(e) => {
                        if let Some(ty) = ResourceType::from_type_url(&response.type_url) {
                            unanswered.remove(&ty);
                        }
                        replies.push(self.reject(
                            &response.type_url,
                            response.nonce,
                            e.to_string(),
                        ));
                    }
                }
            }
            if unanswered.is_empty() && !waiting.is_empty() {
                let updates = std::mem::take(&mut waiting);
                let (acks, accepted) = self.apply_updates(updates, apply);
                replies.extend(acks);
                if !accepted && !self.applied_once {
                    // The first config was rejected whole: the server resends every type with
                    // its next change, and the first config is again applied whole.
                    unanswered = ResourceType::ALL.into_iter().collect();
                }
            }
            for r in replies {
                if tx.send(r).await.is_err() {
                    return ClientError::Closed;
                }
            }
        }
    }

    /// Applies `updates` together: ACKs them all if `apply` accepts the result, else NACKs them
    /// all and keeps the previous resources. Also says whether they were accepted.
    fn apply_updates<F>(
        &mut self,
        updates: Vec<Update>,
        apply: &mut F,
    ) -> (Vec<DeltaDiscoveryRequest>, bool)
    where
        F: FnMut(ProxyResources) -> Result<(), String> + Send,
    {
        let changes = updates.iter().any(|u| {
            let held = self.resources.get(&u.ty);
            u.removed
                .iter()
                .any(|n| held.is_some_and(|m| m.contains_key(n)))
                || u.changed.iter().any(|(n, h)| {
                    held.and_then(|m| m.get(n))
                        .is_none_or(|old| old.resource != h.resource)
                })
        });
        let result = if changes || !self.applied_once {
            apply(self.overlay(&updates))
        } else {
            Ok(())
        };
        match result {
            Ok(()) => {
                if changes || !self.applied_once {
                    self.applied_once = true;
                    self.status.send_modify(|s| s.applied += 1);
                }
                let acks = updates
                    .into_iter()
                    .map(|u| {
                        let held = self.resources.entry(u.ty).or_default();
                        for n in &u.removed {
                            held.remove(n);
                        }
                        held.extend(u.changed);
                        ack(u.ty.type_url(), u.nonce, None)
                    })
                    .collect();
                (acks, true)
            }
            Err(e) => {
                tracing::warn!(node = %self.node.id, error = %e, "config rejected (NACK); keeping the previous one");
                let nacks = updates
                    .into_iter()
                    .map(|u| self.reject(u.ty.type_url(), u.nonce, e.clone()))
                    .collect();
                (nacks, false)
            }
        }
    }

    fn reject(&mut self, type_url: &str, nonce: String, error: String) -> DeltaDiscoveryRequest {
        self.status.send_modify(|s| {
            s.rejected += 1;
            s.last_rejection = Some(error.clone());
        });
        ack(type_url, nonce, Some(error))
    }

    /// The resources held with `updates` laid over them, as one bundle.
    fn overlay(&self, updates: &[Update]) -> ProxyResources {
        let mut all: Vec<&AnyResource> = Vec::new();
        for ty in ResourceType::ALL {
            let mut merged: BTreeMap<&String, &AnyResource> = self
                .resources
                .get(&ty)
                .into_iter()
                .flatten()
                .map(|(n, h)| (n, &h.resource))
                .collect();
            for u in updates.iter().filter(|u| u.ty == ty) {
                for n in &u.removed {
                    merged.remove(n);
                }
                for (n, h) in &u.changed {
                    merged.insert(n, &h.resource);
                }
            }
            all.extend(merged.into_values());
        }
        assemble(all)
    }
}

/// An ACK, or a NACK when `error` is set.
fn ack(type_url: &str, nonce: String, error: Option<String>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        response_nonce: nonce,
        error_detail: error.map(|message| rpc::Status {
            code: tonic::Code::InvalidArgument as i32,
            message,
            details: Vec::new(),
        }),
        ..DeltaDiscoveryRequest::default()
    }
}

fn decode(response: &DeltaDiscoveryResponse) -> Result<Update, DecodeError> {
    let ty = ResourceType::from_type_url(&response.type_url)
        .ok_or_else(|| DecodeError::UnknownType(response.type_url.clone()))?;
    let mut changed = Vec::with_capacity(response.resources.len());
    for r in &response.resources {
        let any = r.resource.as_ref().ok_or_else(|| DecodeError::Empty {
            ty,
            name: r.name.clone(),
        })?;
        let resource = AnyResource::decode(ty, &r.name, any)?;
        changed.push((
            r.name.clone(),
            Held {
                version: r.version.clone(),
                resource,
            },
        ));
    }
    Ok(Update {
        ty,
        nonce: response.nonce.clone(),
        changed,
        removed: response.removed_resources.clone(),
    })
}
