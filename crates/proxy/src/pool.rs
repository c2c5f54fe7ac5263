//! Upstream connections: dialling, and pools of keep-alive HTTP/1 and multiplexed HTTP/2
//! connections per endpoint.
//!
//! [`connect`] is the one place an upstream connection is made, for HTTP and opaque TCP alike;
//! mTLS (issue 4) plugs in here. HTTP/1 connections go back to an idle list once their response
//! is fully read (bounded per endpoint, closed after the idle timeout); an HTTP/2 connection is
//! shared by all requests to its endpoint. A request that finds a pooled connection closed under
//! it, before a byte was written, is sent again on a fresh one. No lock is held across I/O.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpSocket, TcpStream};

use crate::addr::EndpointAddr;
use crate::body::ProxyBody;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The TCP connect failed (refused, unreachable): Envoy's `UF`.
    #[error("connection failure: {0}")]
    Connect(#[source] io::Error),
    /// The TCP connect did not finish in time: `UF`.
    #[error("connection timeout")]
    ConnectTimeout,
    /// The HTTP handshake on a new connection failed: `UF`.
    #[error("protocol handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The request was sent but no response came back (reset, closed): `UC`/`UR`.
    #[error("upstream reset: {0}")]
    Reset(#[source] hyper::Error),
}

impl PoolError {
    /// True if the upstream was never reached (connect-level failure, safe to retry anywhere).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            PoolError::Connect(_) | PoolError::ConnectTimeout | PoolError::Handshake(_)
        )
    }
}

/// Dials `endpoint`, from `bind` when given (127.0.0.6 for the inbound path), with a timeout.
/// Returns the stream and its local address.
pub async fn connect(
    endpoint: EndpointAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), PoolError> {
    let addr = endpoint.get();
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(PoolError::Connect)?;
    if let Some(ip) = bind
        && ip.is_ipv4() == addr.is_ipv4()
    {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(PoolError::Connect)?;
    }
    let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Err(_) => return Err(PoolError::ConnectTimeout),
        Ok(r) => r.map_err(PoolError::Connect)?,
    };
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().map_err(PoolError::Connect)?;
    Ok((stream, local))
}

/// Identifies a set of interchangeable upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The endpoint.
    pub endpoint: EndpointAddr,
    /// The local source address, if pinned.
    pub bind: Option<IpAddr>,
    /// HTTP/2 (multiplexed) rather than HTTP/1.
    pub http2: bool,
}

/// A failed exchange; `request` is handed back when it was never written, so it can be retried.
#[derive(Debug)]
pub struct SendError {
    /// What failed.
    pub error: PoolError,
    /// The request, if nothing of it was sent.
    pub request: Option<Request<ProxyBody>>,
}

impl SendError {
    fn unsent(error: PoolError, req: Request<ProxyBody>) -> SendError {
        SendError {
            error,
            request: Some(req),
        }
    }

    fn sent(error: PoolError) -> SendError {
        SendError {
            error,
            request: None,
        }
    }
}

/// A response from upstream and the connection it came on.
#[derive(Debug)]
pub struct Exchange {
    /// The response (body still streaming).
    pub response: Response<Incoming>,
    /// The local address of the upstream connection (`upstream_local_address`).
    pub local_addr: SocketAddr,
}

/// Pool settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Most idle HTTP/1 connections kept per key.
    pub max_idle_per_key: usize,
}

struct Idle {
    tx: http1::SendRequest<ProxyBody>,
    local: SocketAddr,
    since: Instant,
}

#[derive(Clone)]
struct Shared {
    tx: http2::SendRequest<ProxyBody>,
    local: SocketAddr,
}

struct Inner {
    cfg: PoolConfig,
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    h2: Mutex<HashMap<PoolKey, Shared>>,
}

/// The upstream connection pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

/// Cap on distinct keys kept; beyond it, closed entries are swept before adding.
const MAX_KEYS: usize = 4096;

impl Pool {
    /// An empty pool.
    pub fn new(cfg: PoolConfig) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                cfg,
                idle: Mutex::default(),
                h2: Mutex::default(),
            }),
        }
    }

    /// Idle HTTP/1 connections currently pooled for `key` (for tests and admin).
    pub fn idle_count(&self, key: &PoolKey) -> usize {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map_or(0, Vec::len)
    }

    /// Sends `req` to `key.endpoint`, on a pooled connection when one is available. With
    /// `upgrade`, the connection is handed over to the protocol upgrade instead of going back to
    /// the pool.
    pub async fn send(
        &self,
        key: PoolKey,
        req: Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<Exchange, SendError> {
        if key.http2 {
            self.send_h2(key, req).await
        } else {
            self.send_h1(key, req, upgrade).await
        }
    }

    fn checkout_h1(&self, key: &PoolKey) -> Option<Idle> {
        let mut map = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.get_mut(key)?;
        while let Some(c) = list.pop() {
            if c.tx.is_ready() && c.since.elapsed() < self.inner.cfg.idle_timeout {
                return Some(c);
            }
        }
        None
    }

    async fn send_h1(
        &self,
        key: PoolKey,
        mut req: Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<Exchange, SendError> {
        while let Some(mut idle) = self.checkout_h1(&key) {
            match idle.tx.try_send_request(req).await {
                Ok(response) => {
                    if !upgrade {
                        self.recycle_h1(key, idle.tx, idle.local);
                    }
                    return Ok(Exchange {
                        response,
                        local_addr: idle.local,
                    });
                }
                Err(mut e) => match e.take_message() {
                    // Closed under us before anything was written: try the next one.
                    Some(r) => req = r,
                    None => return Err(SendError::sent(PoolError::Reset(e.into_error()))),
                },
            }
        }
        let (stream, local) =
            match connect(key.endpoint, key.bind, self.inner.cfg.connect_timeout).await {
                Ok(c) => c,
                Err(e) => return Err(SendError::unsent(e, req)),
            };
        let (mut tx, conn) = match http1::Builder::new().handshake(TokioIo::new(stream)).await {
            Ok(h) => h,
            Err(e) => return Err(SendError::unsent(PoolError::Handshake(e), req)),
        };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream http/1 connection ended");
            }
        });
        let response = tx
            .send_request(req)
            .await
            .map_err(|e| SendError::sent(PoolError::Reset(e)))?;
        if !upgrade {
            self.recycle_h1(key, tx, local);
        }
        Ok(Exchange {
            response,
            local_addr: local,
        })
    }

    /// Puts an HTTP/1 connection back once its current response has been read to the end.
    fn recycle_h1(&self, key: PoolKey, mut tx: http1::SendRequest<ProxyBody>, local: SocketAddr) {
        let pool = self.clone();
        tokio::spawn(async move {
            if tx.ready().await.is_err() {
                return;
            }
            let mut map = pool.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() >= MAX_KEYS && !map.contains_key(&key) {
                map.retain(|_, l| {
                    l.retain(|c| !c.tx.is_closed());
                    !l.is_empty()
                });
            }
            let list = map.entry(key).or_default();
            list.retain(|c| !c.tx.is_closed());
            if list.len() < pool.inner.cfg.max_idle_per_key {
                list.push(Idle {
                    tx,
                    local,
                    since: Instant::now(),
                });
            }
        });
    }

    fn checkout_h2(&self, key: &PoolKey) -> Option<Shared> {
        let mut map = self.inner.h2.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some(s) if !s.tx.is_closed() => Some(s.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    async fn send_h2(
        &self,
        key: PoolKey,
        mut req: Request<ProxyBody>,
    ) -> Result<Exchange, SendError> {
        if let Some(mut shared) = self.checkout_h2(&key) {
            if shared.tx.ready().await.is_ok() {
                match shared.tx.try_send_request(req).await {
                    Ok(response) => {
                        return Ok(Exchange {
                            response,
                            local_addr: shared.local,
                        });
                    }
                    Err(mut e) => match e.take_message() {
                        Some(r) => req = r,
                        None => return Err(SendError::sent(PoolError::Reset(e.into_error()))),
                    },
                }
            }
            let mut map = self.inner.h2.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&key).is_some_and(|s| s.tx.is_closed()) {
                map.remove(&key);
            }
        }
        let (stream, local) =
            match connect(key.endpoint, key.bind, self.inner.cfg.connect_timeout).await {
                Ok(c) => c,
                Err(e) => return Err(SendError::unsent(e, req)),
            };
        let handshake = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(stream))
            .await;
        let (tx, conn) = match handshake {
            Ok(h) => h,
            Err(e) => return Err(SendError::unsent(PoolError::Handshake(e), req)),
        };
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream http/2 connection ended");
            }
        });
        let mut shared = Shared { tx, local };
        {
            let mut map = self.inner.h2.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() >= MAX_KEYS {
                map.retain(|_, s| !s.tx.is_closed());
            }
            map.insert(key, shared.clone());
        }
        if let Err(e) = shared.tx.ready().await {
            return Err(SendError::unsent(PoolError::Handshake(e), req));
        }
        let response = shared
            .tx
            .send_request(req)
            .await
            .map_err(|e| SendError::sent(PoolError::Reset(e)))?;
        Ok(Exchange {
            response,
            local_addr: local,
        })
    }
}
