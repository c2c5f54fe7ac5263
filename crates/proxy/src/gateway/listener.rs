//! A gateway's listeners: one per Gateway port of the snapshot in force, bound on
//! `gateway_bind:<port>` (`0.0.0.0` in a pod), opened and closed as the config changes, and
//! what each connection goes through: plaintext HTTP, terminated TLS then HTTP, or TLS
//! passed through by SNI (or TCP) to one endpoint.
//!
//! What a connection gets is decided with the snapshot in force when it is accepted, so a new
//! certificate is served from the next connection on, without a restart.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use xds::gateway::ListenerFamily;

use crate::ProxyInputs;
use crate::addr::{ClientAddr, OrigDstAddr};
use crate::detect::{self, Detected, Rewind};
use crate::drain::DrainWatcher;
use crate::gateway::GatewayConn;
use crate::http::{self, ConnCtx, Direction};
use crate::telemetry::{Reporter, ResponseFlags, TcpRecord};
use crate::workers::Workers;

/// How long a port that could not be bound waits before the next try (when no config change
/// comes sooner).
const REBIND_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps one listener per Gateway port of the snapshot in force until a drain starts.
pub async fn run(pi: Arc<ProxyInputs>, workers: Option<Arc<Workers>>, drain: DrainWatcher) {
    let mut changes = pi.store.subscribe();
    let mut open: HashMap<u16, CancellationToken> = HashMap::new();
    // The last bind error logged per port: a port that keeps failing the same way is logged
    // once, not on every retry.
    let mut bind_errors: HashMap<u16, String> = HashMap::new();
    loop {
        let snap = pi.store.load();
        let wanted: Vec<u16> = snap.gateway.ports().collect();
        drop(snap);
        open.retain(|port, stop| {
            let keep = wanted.contains(port);
            if !keep {
                tracing::info!(
                    port,
                    "gateway port no longer configured; closing its listener"
                );
                stop.cancel();
            }
            keep
        });
        bind_errors.retain(|port, _| wanted.contains(port));
        let mut failed = false;
        for port in wanted {
            if open.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(pi.cfg.gateway_bind, port);
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    bind_errors.remove(&port);
                    tracing::info!(%addr, "gateway listener open");
                    let stop = CancellationToken::new();
                    tokio::spawn(accept(
                        l,
                        pi.clone(),
                        workers.clone(),
                        drain.clone(),
                        stop.clone(),
                    ));
                    open.insert(port, stop);
                }
                Err(e) => {
                    let error = e.to_string();
                    if bind_errors.get(&port) != Some(&error) {
                        tracing::warn!(%addr, %error, "cannot bind the gateway port; retrying every {} s", REBIND_INTERVAL.as_secs());
                        bind_errors.insert(port, error);
                    } else {
                        tracing::debug!(%addr, %error, "cannot bind the gateway port; retrying");
                    }
                    failed = true;
                }
            }
        }
        tokio::select! {
            _ = drain.signaled() => break,
            r = changes.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(REBIND_INTERVAL), if failed => {}
        }
    }
    for stop in open.values() {
        stop.cancel();
    }
}

/// Accepts on one Gateway port until it is closed or a drain starts.
async fn accept(
    listener: TcpListener,
    pi: Arc<ProxyInputs>,
    workers: Option<Arc<Workers>>,
    drain: DrainWatcher,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = drain.signaled() => return,
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "gateway accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "no local address; closing");
                continue;
            }
        };
        let (pi, drain) = (pi.clone(), drain.clone());
        let client = ClientAddr(peer);
        let Some(workers) = &workers else {
            tokio::spawn(handle(pi, stream, client, OrigDstAddr(local), drain));
            continue;
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand the connection to a worker; closing");
                continue;
            }
        };
        workers.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => handle(pi, stream, client, OrigDstAddr(local), drain).await,
                Err(e) => tracing::warn!(error = %e, "worker cannot register the connection"),
            }
        });
    }
}

/// The context of a connection on a Gateway port; `server`: the server whose TLS was
/// terminated here.
pub(crate) fn conn_ctx(
    pi: Arc<ProxyInputs>,
    client: ClientAddr,
    local: OrigDstAddr,
    sni: Option<Arc<str>>,
    server: Option<usize>,
) -> Arc<ConnCtx> {
    Arc::new(ConnCtx {
        // A gateway's requests take the outbound pipeline and are reported as the source.
        direction: Direction::Outbound,
        client,
        orig_dst: local,
        sni,
        peer: None,
        pi,
        labels: Default::default(),
        gateway: Some(GatewayConn {
            port: local.get().port(),
            tls: server.is_some(),
            server,
        }),
    })
}

/// One connection on a Gateway port, by the port's family in the snapshot in force.
async fn handle(
    pi: Arc<ProxyInputs>,
    mut stream: TcpStream,
    client: ClientAddr,
    local: OrigDstAddr,
    drain: DrainWatcher,
) {
    let start = SystemTime::now();
    let t0 = Instant::now();
    let snap = pi.store.load();
    let Some(port) = snap.gateway.port(local.get().port()).cloned() else {
        return; // the port was closed meanwhile
    };
    drop(snap);
    let wait = pi.cfg.detection_wait();
    match port.family {
        ListenerFamily::Http => {
            let (detected, prefix) = match detect::detect(&mut stream, wait).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(error = %e, %client, "connection failed during detection");
                    return;
                }
            };
            let ctx = conn_ctx(pi, client, local, None, None);
            let io = Rewind::new(prefix, stream);
            http::serve(ctx, io, detected == Detected::Http2, drain).await;
        }
        ListenerFamily::TerminatedHttps => {
            super::tls::terminate(pi, port, stream, client, local, wait, drain).await;
        }
        ListenerFamily::Passthrough | ListenerFamily::Tcp => {
            let mut sni = None;
            let mut prefix = bytes::Bytes::new();
            if port.family == ListenerFamily::Passthrough {
                match crate::tls::read_client_hello(
                    &mut stream,
                    prefix,
                    crate::tls::HANDSHAKE_TIMEOUT,
                )
                .await
                {
                    Ok((hello, read)) => {
                        sni = hello.and_then(|h| h.sni);
                        prefix = read;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, %client, "connection failed in its ClientHello");
                        return;
                    }
                }
                if sni.is_none() {
                    no_route(&pi, client, local, None, start, t0);
                    return;
                }
            }
            let snap = pi.store.load();
            let target = crate::outbound::router::gateway_l4(&snap, local, sni.as_deref());
            drop(snap);
            let Some(target) = target else {
                no_route(&pi, client, local, sni, start, t0);
                return;
            };
            let ctx = conn_ctx(pi, client, local, sni, None);
            let io = Rewind::new(prefix, stream);
            crate::listener::forward_tcp(&ctx, io, &target, None, start, t0, &drain).await;
        }
    }
}

/// A connection no server or route of the port takes: closed, logged as Envoy logs a
/// connection no filter chain matches (`NR`, `filter_chain_not_found`).
pub(crate) fn no_route(
    pi: &ProxyInputs,
    client: ClientAddr,
    local: OrigDstAddr,
    sni: Option<Arc<str>>,
    start: SystemTime,
    t0: Instant,
) {
    // A gateway's connections are the CLIENT side (`reporter="source"`), as its requests.
    let mut rec = TcpRecord::accepted(start, Reporter::Source, local.get(), client.get());
    rec.requested_server_name = sni;
    rec.response_flags = ResponseFlags::NO_ROUTE_FOUND;
    rec.response_code_details = Some("filter_chain_not_found");
    rec.duration = t0.elapsed();
    pi.telemetry.tcp_log(rec);
}
