//! The data plane: `ama proxy sidecar`, and `ama proxy router` ([`gateway`]).
//!
//! A sidecar carries HTTP/1.1, HTTP/2, gRPC and opaque TCP between pods exactly where Envoy sits
//! in Istio: the outbound listener (15001, [`outbound`]) takes what the app sends, the inbound
//! listener (15006, [`inbound`]) what other pods send to it. Each accepted connection goes through
//! [`listener`]: original destination ([`orig_dst`]), protocol detection ([`detect`]), then the
//! HTTP proxy ([`http`], with [`route`], [`balance`], [`pool`], [`headers`]) or an opaque copy
//! ([`tcp`]). Between sidecars the connection is Istio mTLS ([`tls`]: auto mTLS outbound,
//! termination by ALPN inbound under [`authn`]'s PeerAuthentication), with the workload
//! certificate from [`identity_source`]; inbound requests and connections then answer to the
//! AuthorizationPolicies that select the workload ([`authz`]). Resources come from [`config`] and swap atomically;
//! [`drain`] stops it gracefully.
//!
//! Module ownership while the crate is being built: `telemetry/` (access log, metrics),
//! `admin.rs` (127.0.0.1:15000) and `status.rs` (15020, 15021, 15090) form the observability side;
//! everything else is the traffic side.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use proxy::{Proxy, ProxyInputs, config::{ConfigStore, ProxyConfig}, orig_dst::SoOriginalDst};
//! let cfg = Arc::new(ProxyConfig::default());
//! let store = Arc::new(ConfigStore::new(Default::default(), cfg.clone())?);
//! let pi = ProxyInputs::new(cfg, store, proxy::telemetry::Telemetry::without_access_log());
//! let proxy = Proxy::new(pi, Arc::new(SoOriginalDst)).await?;
//! proxy.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod addr;
pub mod admin;
pub mod authn;
pub mod authz;
pub mod balance;
pub mod body;
pub mod circuit;
pub mod cluster;
pub mod config;
pub mod conn_exec;
pub mod control_plane;
pub mod detect;
pub mod dns;
pub mod drain;
pub mod dump;
pub mod fx_hash;
pub mod gateway;
pub mod hash_lb;
pub mod headers;
pub mod http;
pub mod identity_source;
pub mod inbound;
pub mod listener;
pub mod orig_dst;
pub mod originate;
pub mod outbound;
pub mod outlier;
pub mod per_snapshot;
pub mod pool;
pub mod port_stats;
pub mod request_authn;
pub mod route;
pub mod sidecar;
pub mod status;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod workers;
pub mod xds_client;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::authn::PeerAuthn;
use crate::config::{ConfigStore, ProxyConfig};
use crate::drain::{DrainTrigger, DrainWatcher};
use crate::listener::Listener;
use crate::orig_dst::OrigDstResolver;
use crate::pool::{Pool, PoolConfig};
use crate::telemetry::Telemetry;
use crate::tls::MeshTls;

/// Everything a listener, a connection and a request need, in one bundle.
#[derive(Debug)]
pub struct ProxyInputs {
    /// Process-wide settings.
    pub cfg: Arc<ProxyConfig>,
    /// Current resources.
    pub store: Arc<ConfigStore>,
    /// Access log and metrics.
    pub telemetry: Telemetry,
    /// Upstream connections.
    pub pool: Pool,
    /// Our workload identity for mTLS; `None`: plaintext only (auto mTLS off).
    pub tls: Option<Arc<MeshTls>>,
    /// PeerAuthentication, resolved per snapshot.
    pub peer_authn: PeerAuthn,
    /// AuthorizationPolicy, compiled per snapshot.
    pub authz: authz::Authz,
    /// RequestAuthentication's JWT rules, compiled per snapshot.
    pub request_authn: request_authn::RequestAuthn,
}

impl ProxyInputs {
    /// Bundles the inputs, with a fresh pool, and no identity (plaintext).
    pub fn new(
        cfg: Arc<ProxyConfig>,
        store: Arc<ConfigStore>,
        telemetry: Telemetry,
    ) -> Arc<ProxyInputs> {
        Self::with_tls(cfg, store, telemetry, None)
    }

    /// Bundles the inputs with the workload identity `tls` (mTLS to and from mesh peers).
    pub fn with_tls(
        cfg: Arc<ProxyConfig>,
        store: Arc<ConfigStore>,
        telemetry: Telemetry,
        tls: Option<Arc<MeshTls>>,
    ) -> Arc<ProxyInputs> {
        let pool = Pool::with_tls(
            PoolConfig {
                connect_timeout: cfg.connect_timeout,
                idle_timeout: cfg.pool_idle_timeout,
                max_idle_per_key: cfg.pool_max_idle_per_endpoint,
            },
            tls.clone(),
        );
        // Each snapshot's Telemetry API config (access logs, metric overrides) goes to this
        // telemetry as it is installed.
        store.attach_telemetry(telemetry.clone());
        Arc::new(ProxyInputs {
            cfg,
            store,
            telemetry,
            pool,
            tls,
            peer_authn: PeerAuthn::default(),
            authz: authz::Authz::default(),
            request_authn: request_authn::RequestAuthn::default(),
        })
    }
}

/// A sidecar with its capture listeners bound, or a gateway ([`Proxy::router`]), ready to
/// [`run`](Proxy::run).
#[derive(Debug)]
pub struct Proxy {
    pi: Arc<ProxyInputs>,
    /// The capture listeners; none for a gateway, which listens on its Gateway ports.
    outbound: Option<Listener>,
    inbound: Option<Listener>,
    config_file: Option<PathBuf>,
    drain: (DrainTrigger, DrainWatcher),
    /// Kept until the drain ends: the listeners drop theirs when they stop accepting, and the
    /// workers stop (ending their connections) when the last one goes.
    workers: Option<Arc<workers::Workers>>,
}

impl Proxy {
    /// Binds the outbound and inbound listeners; `orig_dst` finds where captured connections
    /// were going (`SoOriginalDst` in a pod, a mock in tests).
    pub async fn new(
        pi: Arc<ProxyInputs>,
        orig_dst: Arc<dyn OrigDstResolver>,
    ) -> std::io::Result<Proxy> {
        let outbound = outbound::bind(pi.clone(), orig_dst.clone()).await?;
        let inbound = inbound::bind(pi.clone(), orig_dst).await?;
        Ok(Proxy {
            pi,
            outbound: Some(outbound),
            inbound: Some(inbound),
            config_file: None,
            drain: drain::channel(),
            workers: None,
        })
    }

    /// A gateway (`ama proxy router`): no capture listeners; once [`run`](Proxy::run), it
    /// listens on the ports of its resources' Gateway listeners ([`gateway`]).
    pub fn router(pi: Arc<ProxyInputs>) -> Proxy {
        Proxy {
            pi,
            outbound: None,
            inbound: None,
            config_file: None,
            drain: drain::channel(),
            workers: None,
        }
    }

    /// Serves accepted connections on `workers` (one single-threaded runtime per thread, as
    /// Envoy's workers) instead of on the runtime that calls [`run`](Proxy::run).
    pub fn on_workers(mut self, workers: Arc<workers::Workers>) -> Proxy {
        self.outbound = self.outbound.map(|l| l.on_workers(workers.clone()));
        self.inbound = self.inbound.map(|l| l.on_workers(workers.clone()));
        self.workers = Some(workers);
        self
    }

    /// Reloads resources from `path` when it changes (every `reload_interval`).
    pub fn watch_config(mut self, path: PathBuf) -> Proxy {
        self.config_file = Some(path);
        self
    }

    /// The bound outbound address (a gateway's: the configured one, unbound).
    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound
            .as_ref()
            .map_or(self.pi.cfg.outbound_addr, |l| l.local_addr().get())
    }

    /// The bound inbound address (a gateway's: the configured one, unbound).
    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound
            .as_ref()
            .map_or(self.pi.cfg.inbound_addr, |l| l.local_addr().get())
    }

    /// The inputs bundle (for the admin and status servers).
    pub fn inputs(&self) -> &Arc<ProxyInputs> {
        &self.pi
    }

    /// A watcher that learns when this proxy starts draining (for servers that run beside it).
    pub fn drain_watcher(&self) -> DrainWatcher {
        self.drain.1.clone()
    }

    /// Serves until `shutdown` resolves, then drains: stops accepting, lets in-flight requests
    /// finish for up to `drain_duration`, flushes the access log and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Proxy {
            pi,
            outbound,
            inbound,
            config_file,
            drain: (trigger, watcher),
            workers,
        } = self;
        for l in [outbound, inbound].into_iter().flatten() {
            tokio::spawn(l.run(watcher.clone()));
        }
        tokio::spawn(dns::run(pi.store.clone(), watcher.clone()));
        if pi.cfg.router {
            tokio::spawn(gateway::listener::run(
                pi.clone(),
                workers.clone(),
                watcher.clone(),
            ));
        }
        if let Some(path) = config_file {
            tokio::spawn(config::watch_file(
                path,
                pi.store.clone(),
                pi.cfg.reload_interval,
                watcher.clone(),
            ));
        }
        drop(watcher);
        shutdown.await;
        tracing::info!(drain_duration = ?pi.cfg.drain_duration, "draining");
        if tokio::time::timeout(pi.cfg.drain_duration, trigger.drain())
            .await
            .is_err()
        {
            tracing::warn!("drain time over with connections still open; closing them");
        }
        pi.telemetry.flush(Duration::from_secs(1)).await;
        drop(workers);
    }
}
