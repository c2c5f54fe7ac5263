//! Accepting captured connections: original destination, protocol detection, then the HTTP proxy
//! or an opaque TCP copy. Shared by [`crate::outbound`] and [`crate::inbound`], which say which
//! side they are and how to find the target; the inbound side first decides on mTLS
//! ([`crate::inbound::handle`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::ProxyInputs;
use crate::addr::{ClientAddr, EndpointAddr, ListenAddr, OrigDstAddr};
use crate::detect::{self, Detected, Rewind};
use crate::drain::DrainWatcher;
use crate::http::{self, ConnCtx, Direction, labels_for};
use crate::orig_dst::OrigDstResolver;
use crate::pool::{self, PoolError, UpstreamTls};
use crate::route::Target;
use crate::tcp::ByteCounts;
use crate::telemetry::{ResponseFlags, TcpRecord};
use crate::tls::{HandshakeError, tls_error_in};
use crate::workers::Workers;

/// A bound capture listener.
pub struct Listener {
    direction: Direction,
    listener: TcpListener,
    local: ListenAddr,
    orig_dst: Arc<dyn OrigDstResolver>,
    pi: Arc<ProxyInputs>,
    /// Where accepted connections run; none: on the runtime that runs the listener.
    workers: Option<Arc<Workers>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("direction", &self.direction)
            .field("local", &self.local)
            .finish()
    }
}

impl Listener {
    /// Binds `addr` for `direction`.
    pub async fn bind(
        direction: Direction,
        addr: SocketAddr,
        orig_dst: Arc<dyn OrigDstResolver>,
        pi: Arc<ProxyInputs>,
    ) -> std::io::Result<Listener> {
        let listener = TcpListener::bind(addr).await?;
        let local = ListenAddr(listener.local_addr()?);
        Ok(Listener {
            direction,
            listener,
            local,
            orig_dst,
            pi,
            workers: None,
        })
    }

    /// Hands accepted connections to `workers` instead of running them where `run` runs.
    pub fn on_workers(mut self, workers: Arc<Workers>) -> Listener {
        self.workers = Some(workers);
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> ListenAddr {
        self.local
    }

    /// Accepts until a drain starts; each connection runs on its own task and holds a drain
    /// watcher until it ends.
    pub async fn run(self, drain: DrainWatcher) {
        loop {
            let accepted = tokio::select! {
                _ = drain.signaled() => return,
                a = self.listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, listener = %self.local, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let client = ClientAddr(peer);
            let orig_dst = match self.orig_dst.orig_dst(&stream, client) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, client = %client, "no original destination; closing");
                    continue;
                }
            };
            if orig_dst.get().port() == self.local.get().port() {
                // Addressed to the capture port itself: a connection to 15001 that was not
                // redirected, or one from another pod to `<pod IP>:15006` (captured, so its
                // original destination is 15006 again). Forwarding it would reach this listener
                // once more, for ever. Envoy's virtualOutbound and virtualInbound listeners send
                // it to BlackHoleCluster.
                tracing::debug!(client = %client, dst = %orig_dst, "connection to the capture port itself; closing");
                self.pi
                    .telemetry
                    .tcp_log(black_hole(self.direction, client, orig_dst));
                continue;
            }
            let ctx = Arc::new(ConnCtx {
                direction: self.direction,
                client,
                orig_dst,
                sni: None,
                peer: None,
                pi: self.pi.clone(),
                labels: Default::default(),
                gateway: None,
            });
            let drain = drain.clone();
            let Some(workers) = &self.workers else {
                tokio::spawn(handle_connection(ctx, stream, drain));
                continue;
            };
            // Off this runtime's reactor and onto the worker's.
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, client = %client, "cannot hand the connection to a worker; closing");
                    continue;
                }
            };
            workers.spawn(async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => handle_connection(ctx, stream, drain).await,
                    Err(e) => {
                        tracing::warn!(error = %e, client = %client, "worker cannot register the connection; closing")
                    }
                }
            });
        }
    }
}

/// The access-log record of a connection sent to BlackHoleCluster, as Envoy's TCP proxy logs
/// it: a cluster without endpoints, `UH`.
fn black_hole(direction: Direction, client: ClientAddr, orig_dst: OrigDstAddr) -> TcpRecord {
    let mut rec = TcpRecord::accepted(
        SystemTime::now(),
        direction.reporter(),
        orig_dst.get(),
        client.get(),
    );
    rec.upstream_cluster = Some(BLACK_HOLE_CLUSTER.into());
    rec.response_flags = ResponseFlags::NO_HEALTHY_UPSTREAM;
    rec
}

/// Istio's cluster for traffic that must go nowhere.
const BLACK_HOLE_CLUSTER: &str = "BlackHoleCluster";

/// Detects the protocol of one accepted connection and proxies it.
async fn handle_connection(ctx: Arc<ConnCtx>, mut stream: TcpStream, drain: DrainWatcher) {
    if ctx.direction == Direction::Inbound {
        return crate::inbound::handle(ctx, stream, drain).await;
    }
    let start = SystemTime::now();
    let t0 = Instant::now();
    let snap = ctx.pi.store.load();
    let declared_opaque = snap
        .service_by_destination(ctx.orig_dst.get())
        .and_then(|e| e.service.port(ctx.orig_dst.get().port()))
        .is_some_and(|p| p.effective_protocol().is_opaque());
    let tls_routed = crate::outbound::router::routes_by_sni(&snap, ctx.orig_dst);
    drop(snap);
    let (detected, mut prefix) = if declared_opaque && !tls_routed {
        (Detected::Opaque, bytes::Bytes::new())
    } else {
        match detect::detect(&mut stream, ctx.pi.cfg.detection_wait()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, client = %ctx.client, "connection failed during detection");
                return;
            }
        }
    };
    // A VirtualService's `tls` routes go by the ClientHello's SNI: read it, keep every byte.
    let mut sni = None;
    if tls_routed && detected == Detected::Tls {
        match crate::tls::read_client_hello(&mut stream, prefix, crate::tls::HANDSHAKE_TIMEOUT)
            .await
        {
            Ok((hello, read)) => {
                sni = hello.and_then(|h| h.sni);
                prefix = read;
            }
            Err(e) => {
                tracing::debug!(error = %e, client = %ctx.client, "connection failed in its ClientHello");
                return;
            }
        }
    }
    let detected = if declared_opaque {
        Detected::Opaque
    } else {
        detected
    };
    let io = Rewind::new(prefix, stream);
    proxy_detected(ctx, io, detected, sni, start, t0, drain).await;
}

/// Hands a connection whose protocol is known to the HTTP proxy or the opaque copy. `io` is
/// the client's stream from its first byte (plaintext, or the inside of terminated mTLS);
/// `start` and `t0` are when it was accepted.
///
/// Boxed: the HTTP server's state is many times the size of what detection needs, and an
/// unboxed await would make every connection's task that large from its accept, including the
/// connections that wait, idle, for their first bytes.
pub(crate) fn proxy_detected<I>(
    ctx: Arc<ConnCtx>,
    io: I,
    detected: Detected,
    sni: Option<Arc<str>>,
    start: SystemTime,
    t0: Instant,
    drain: DrainWatcher,
) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        match detected {
            Detected::Http1 => http::serve(ctx, io, false, drain).await,
            Detected::Http2 => http::serve(ctx, io, true, drain).await,
            Detected::Tls | Detected::Opaque => {
                let snap = ctx.pi.store.load();
                let target = match ctx.direction {
                    Direction::Outbound => crate::outbound::router::outbound_tcp(
                        &snap,
                        &ctx.pi,
                        ctx.orig_dst,
                        sni.as_deref(),
                    ),
                    Direction::Inbound => crate::inbound::app::target(&snap, &ctx.pi, ctx.orig_dst),
                };
                forward_tcp(&ctx, io, &target, sni, start, t0, &drain).await;
            }
        }
    })
}

/// Proxies an opaque connection to one endpoint of `target`, then logs it; `sni` is the
/// server name of its ClientHello when it was read (outbound), logged as Envoy's
/// tls_inspector records it.
pub(crate) async fn forward_tcp<D>(
    ctx: &ConnCtx,
    downstream: D,
    target: &Target,
    sni: Option<Arc<str>>,
    start: SystemTime,
    t0: Instant,
    drain: &DrainWatcher,
) where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let snap = ctx.pi.store.load();
    let mut rec = TcpRecord::accepted(
        start,
        ctx.direction.reporter(),
        ctx.orig_dst.get(),
        ctx.client.get(),
    );
    rec.upstream_cluster = Some(target.cluster.name.clone());
    rec.requested_server_name = sni.or_else(|| ctx.sni.clone());
    let hash = target.cluster.hash.as_ref().and_then(|h| {
        h.policy.hash(&crate::hash_lb::RequestParts {
            headers: &::http::HeaderMap::new(),
            query: None,
            source_ip: Some(ctx.client.get().ip()),
        })
    });
    let Some((ep_index, ep)) = crate::balance::pick(&target.cluster, &[], hash) else {
        rec.response_flags = ResponseFlags::NO_HEALTHY_UPSTREAM;
        rec.duration = t0.elapsed();
        ctx.pi.telemetry.tcp_log(rec);
        return;
    };
    rec.upstream_host = Some(ep.addr);
    let mut labels = labels_for(ctx, &snap, Some(target), ep.peer.clone());
    let _in_flight = ep.start();
    let peer_tls = crate::tls::upstream_peer(ctx.pi.tls.as_ref(), &ep.tls);
    let tls = peer_tls.as_deref().map(|peer| UpstreamTls {
        mesh: ctx.pi.tls.as_deref(),
        peer,
        protocol: identity::AppProtocol::Tcp,
    });
    let timeout = ctx.pi.cfg.connect_timeout;
    let circuit = &target.cluster.state.circuit;
    let connected =
        pool::connect_limited(circuit, EndpointAddr(ep.addr), target.bind, timeout, tls).await;
    let (upstream, info, _permit) = match connected {
        Ok(c) => c,
        Err(pool::PoolError::Overflow(_)) => {
            // `maxConnections` open and `http1MaxPendingRequests` waiting: Envoy's
            // tcp_proxy closes the connection with `UO`.
            rec.response_flags = ResponseFlags::UPSTREAM_OVERFLOW;
            rec.duration = t0.elapsed();
            ctx.pi.telemetry.tcp_log(rec);
            return;
        }
        Err(e) => {
            rec.response_flags = ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
            rec.upstream_transport_failure_reason = Some(
                e.transport_failure_reason()
                    .unwrap_or_else(|| e.to_string()),
            );
            rec.duration = t0.elapsed();
            ctx.pi.telemetry.tcp_log(rec);
            return;
        }
    };
    target
        .cluster
        .report(ep_index, crate::outlier::Outcome::ConnectSuccess);
    rec.upstream_local_address = Some(info.local);
    if let Some(server) = &info.peer {
        labels.destination_principal = server.clone();
    }
    let labels = ctx.pi.telemetry.labels(labels);
    let conn = ctx.pi.telemetry.tcp_open(&labels, &rec);
    let counts = Arc::new(ByteCounts::default());
    let limits = crate::tcp::RelayLimits::of(&circuit.limits());
    let copy = crate::tcp::copy_limited(downstream, upstream, counts.clone(), limits);
    let result = tokio::select! {
        r = copy => r.map(|cut| {
            if cut == Some(crate::tcp::Cut::MaxDuration) {
                rec.response_flags.insert(ResponseFlags::DURATION_TIMEOUT);
            }
        }),
        // Opaque streams have no graceful end: give them the drain time, then cut.
        _ = async {
            drain.signaled().await;
            tokio::time::sleep(ctx.pi.cfg.drain_duration).await;
        } => Ok(()),
    };
    let (sent, received) = counts.get();
    if let Err(e) = result {
        match tls_error_in(&e) {
            // In TLS 1.3 a server that refuses our certificate says so on our first read.
            Some(t) if info.peer.is_some() && received == 0 => {
                rec.response_flags = ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
                let refused = HandshakeError::Io(std::io::Error::other(t.clone()));
                rec.upstream_transport_failure_reason =
                    PoolError::Tls(refused).transport_failure_reason();
            }
            _ => rec.connection_termination_details = Some(e.to_string().into()),
        }
    }
    // Istio's TCP byte counters take the downstream's side, as the access log does: sent is
    // what went back to the client (the response), received what came from it (the request).
    conn.sent(received);
    conn.received(sent);
    rec.bytes_received = sent;
    rec.bytes_sent = received;
    rec.duration = t0.elapsed();
    conn.close(rec);
}
