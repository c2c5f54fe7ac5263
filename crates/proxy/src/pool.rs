//! Upstream connections: dialling, and pools of keep-alive HTTP/1 and multiplexed HTTP/2
//! connections per endpoint.
//!
//! [`connect`] is the one place an upstream connection is made, for HTTP and opaque TCP alike,
//! plaintext or Istio mTLS ([`crate::tls`]): the pool key carries the endpoint's [`PeerTls`], so
//! plaintext and mTLS connections (or mTLS connections expecting different identities) never
//! share a slot. HTTP/1 connections go back to an idle list once their response is fully read
//! (bounded per endpoint, closed after the idle timeout); an HTTP/2 connection is shared by all
//! requests to its endpoint. A request that finds a pooled connection closed under it, before a
//! byte was written, is sent again on a fresh one. No lock is held across I/O.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use identity::AppProtocol;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::addr::EndpointAddr;
use crate::body::ProxyBody;
use crate::conn_exec::{self, ConnExec};
use crate::fx_hash::FxHashMap;
use crate::tls::{HandshakeError, MeshTls, PeerTls, tls_error_in};

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
    /// The mTLS handshake failed, or the server refused our certificate on the first exchange:
    /// `UF`, with `upstream_transport_failure_reason`.
    #[error("{0}")]
    Tls(#[source] HandshakeError),
    /// The request was sent but no response came back (reset, closed): `UC`/`UR`.
    #[error("upstream reset: {0}")]
    Reset(#[source] hyper::Error),
}

impl PoolError {
    /// True if the upstream was never reached (connect-level failure, safe to retry anywhere).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            PoolError::Connect(_)
                | PoolError::ConnectTimeout
                | PoolError::Handshake(_)
                | PoolError::Tls(_)
        )
    }

    /// `upstream_transport_failure_reason`, for failures below HTTP.
    pub fn transport_failure_reason(&self) -> Option<String> {
        match self {
            PoolError::Connect(io) => Some(io.to_string()),
            PoolError::Tls(e) => Some(e.failure_reason()),
            _ => None,
        }
    }

    /// An exchange on a fresh mTLS connection failed: a TLS alert means the server refused the
    /// handshake (in TLS 1.3 the client learns that only on its first read), so it is a
    /// connect failure; anything else is a reset.
    fn on_fresh(error: hyper::Error, tls: bool) -> PoolError {
        match tls_error_in(&error) {
            Some(t) if tls => PoolError::Tls(HandshakeError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                t.clone(),
            ))),
            _ => PoolError::Reset(error),
        }
    }
}

/// An upstream connection: plain TCP, or TCP inside Istio mTLS.
#[derive(Debug)]
pub enum UpstreamIo {
    /// Plaintext.
    Plain(TcpStream),
    /// mTLS (boxed: the TLS state is a few KiB).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, data),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What is known about an upstream connection once it is up.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Its local address (`upstream_local_address`).
    pub local: SocketAddr,
    /// The server's verified SPIFFE id, over mTLS (`destination_principal`).
    pub peer: Option<Arc<str>>,
}

/// How to secure a new upstream connection: Istio mTLS with `peer`, speaking `protocol` inside.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTls<'a> {
    /// Our identity.
    pub mesh: &'a MeshTls,
    /// The endpoint's SNI and expected identity.
    pub peer: &'a PeerTls,
    /// What goes inside (selects the ALPN).
    pub protocol: AppProtocol,
}

/// Dials `endpoint`, from `bind` when given (127.0.0.6 for the inbound path), within `timeout`,
/// then runs the mTLS handshake when `tls` says so (within [`crate::tls::HANDSHAKE_TIMEOUT`]).
pub async fn connect(
    endpoint: EndpointAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
    tls: Option<UpstreamTls<'_>>,
) -> Result<(UpstreamIo, ConnInfo), PoolError> {
    let (stream, local) = connect_tcp(endpoint, bind, timeout).await?;
    match tls {
        None => Ok((UpstreamIo::Plain(stream), ConnInfo { local, peer: None })),
        Some(t) => {
            let (stream, peer) = t
                .mesh
                .connect(stream, t.peer, t.protocol)
                .await
                .map_err(PoolError::Tls)?;
            let info = ConnInfo {
                local,
                peer: Some(peer),
            };
            Ok((UpstreamIo::Tls(Box::new(stream)), info))
        }
    }
}

async fn connect_tcp(
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolKey {
    /// The endpoint.
    pub endpoint: EndpointAddr,
    /// The local source address, if pinned.
    pub bind: Option<IpAddr>,
    /// HTTP/2 (multiplexed) rather than HTTP/1.
    pub http2: bool,
    /// Istio mTLS to this endpoint (`None`: plaintext). Cloning the key clones an `Arc`.
    pub tls: Option<Arc<PeerTls>>,
}

/// Hashes everything but `tls`: hashing its server name and identity took more instructions
/// than the rest of a request's pool work, twice per request. Keys that differ only in TLS
/// settings share a bucket and are told apart by `Eq` (an `Arc` pointer comparison when equal).
impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.endpoint.hash(state);
        self.bind.hash(state);
        self.http2.hash(state);
    }
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
    /// The server's verified SPIFFE id, when the connection is mTLS.
    pub peer: Option<Arc<str>>,
    /// The HTTP/1 connection, to give back when the response has been read (`None`: HTTP/2, or
    /// an upgrade, which keeps the connection).
    pub recycle: Option<Recycle>,
}

/// An HTTP/1 connection lent to one exchange. [`Recycle::done`] at the end of the response
/// puts it back in the pool at once when hyper already reports it idle, which is the usual
/// case; otherwise, or when the handle is dropped (response not read to its end), a task waits
/// until it is idle (or closed) as before. Skipping that task per request saves its spawn and
/// the wake-up of another worker.
pub struct Recycle(Option<(Pool, PoolKey, http1::SendRequest<ProxyBody>, ConnInfo)>);

impl Recycle {
    /// The response was read to its end.
    pub fn done(mut self) {
        if let Some((pool, key, tx, info)) = self.0.take() {
            if tx.is_ready() {
                pool.put_h1(key, tx, info);
            } else {
                pool.recycle_h1(key, tx, info);
            }
        }
    }
}

impl Drop for Recycle {
    fn drop(&mut self) {
        if let Some((pool, key, tx, info)) = self.0.take() {
            pool.recycle_h1(key, tx, info);
        }
    }
}

impl std::fmt::Debug for Recycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recycle")
    }
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
    info: ConnInfo,
    since: Instant,
}

#[derive(Clone)]
struct Shared {
    tx: http2::SendRequest<ProxyBody>,
    info: ConnInfo,
}

struct Inner {
    cfg: PoolConfig,
    tls: Option<Arc<MeshTls>>,
    /// Idle HTTP/1 connections by key, one map per worker thread ([`crate::workers`]): a
    /// connection's task runs on the worker that dialed it, so only that worker takes it again.
    /// Off the workers (tests, embedded use) every thread shares the first map.
    idle: [Mutex<FxHashMap<PoolKey, Vec<Idle>>>; MAX_SLOTS],
    /// Shared HTTP/2 connections by key, one per worker thread (the slot), as Envoy keeps a
    /// connection pool per worker: one connection for every worker's streams would put all of
    /// them behind one connection task and one TLS session.
    h2: Mutex<FxHashMap<PoolKey, Vec<Option<Shared>>>>,
}

/// Most HTTP/2 connections kept per key, and HTTP/1 idle maps (worker threads beyond it share
/// slots).
const MAX_SLOTS: usize = 16;

/// This thread's HTTP/2 slot: a worker's index, else threads are numbered as they first send.
fn h2_slot() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = crate::workers::current()
            .unwrap_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed)) % MAX_SLOTS;
    }
    SLOT.with(|s| *s)
}

/// This thread's HTTP/1 idle map: a worker's own, else the shared first one.
fn h1_slot() -> usize {
    crate::workers::current().unwrap_or(0) % MAX_SLOTS
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
    /// An empty pool without an identity: every connection is plaintext.
    pub fn new(cfg: PoolConfig) -> Pool {
        Pool::with_tls(cfg, None)
    }

    /// An empty pool that dials keys with [`PoolKey::tls`] over mTLS as `tls`.
    pub fn with_tls(cfg: PoolConfig, tls: Option<Arc<MeshTls>>) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                cfg,
                tls,
                idle: Default::default(),
                h2: Mutex::default(),
            }),
        }
    }

    /// Idle HTTP/1 connections currently pooled for `key` (for tests and admin).
    pub fn idle_count(&self, key: &PoolKey) -> usize {
        self.inner
            .idle
            .iter()
            .map(|m| {
                m.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(key)
                    .map_or(0, Vec::len)
            })
            .sum()
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

    /// Dials a new connection for `key`, speaking `protocol` inside mTLS when the key says so.
    async fn dial(
        &self,
        key: &PoolKey,
        protocol: AppProtocol,
    ) -> Result<(UpstreamIo, ConnInfo), PoolError> {
        let tls = match (&key.tls, &self.inner.tls) {
            (None, _) => None,
            (Some(peer), Some(mesh)) => Some(UpstreamTls {
                mesh,
                peer,
                protocol,
            }),
            (Some(_), None) => {
                return Err(PoolError::Tls(HandshakeError::Io(io::Error::other(
                    "mTLS requested but the proxy has no identity",
                ))));
            }
        };
        connect(key.endpoint, key.bind, self.inner.cfg.connect_timeout, tls).await
    }

    fn checkout_h1(&self, key: &PoolKey) -> Option<Idle> {
        let mut map = self.inner.idle[h1_slot()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
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
                    return Ok(Exchange {
                        response,
                        local_addr: idle.info.local,
                        peer: idle.info.peer.clone(),
                        recycle: (!upgrade)
                            .then(|| Recycle(Some((self.clone(), key, idle.tx, idle.info)))),
                    });
                }
                Err(mut e) => match e.take_message() {
                    // Closed under us before anything was written: try the next one.
                    Some(r) => req = r,
                    None => return Err(SendError::sent(PoolError::Reset(e.into_error()))),
                },
            }
        }
        let (stream, info) = match self.dial(&key, AppProtocol::Http1).await {
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
        let tls = key.tls.is_some();
        let response = tx
            .send_request(req)
            .await
            .map_err(|e| SendError::sent(PoolError::on_fresh(e, tls)))?;
        Ok(Exchange {
            response,
            local_addr: info.local,
            peer: info.peer.clone(),
            recycle: (!upgrade).then(|| Recycle(Some((self.clone(), key, tx, info)))),
        })
    }

    /// Puts an HTTP/1 connection back once its current response has been read to the end.
    fn recycle_h1(&self, key: PoolKey, mut tx: http1::SendRequest<ProxyBody>, info: ConnInfo) {
        let pool = self.clone();
        tokio::spawn(async move {
            if tx.ready().await.is_err() {
                return;
            }
            pool.put_h1(key, tx, info);
        });
    }

    /// Adds an idle (ready) HTTP/1 connection to the pool, if there is room for it.
    fn put_h1(&self, key: PoolKey, tx: http1::SendRequest<ProxyBody>, info: ConnInfo) {
        let mut map = self.inner.idle[h1_slot()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_KEYS && !map.contains_key(&key) {
            map.retain(|_, l| {
                l.retain(|c| !c.tx.is_closed());
                !l.is_empty()
            });
        }
        let list = map.entry(key).or_default();
        list.retain(|c| !c.tx.is_closed());
        if list.len() < self.inner.cfg.max_idle_per_key {
            list.push(Idle {
                tx,
                info,
                since: Instant::now(),
            });
        }
    }

    fn checkout_h2(&self, key: &PoolKey, slot: usize) -> Option<Shared> {
        let mut map = self.inner.h2.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.get_mut(key)?.get_mut(slot)?;
        match entry {
            Some(s) if !s.tx.is_closed() => Some(s.clone()),
            Some(_) => {
                *entry = None;
                None
            }
            None => None,
        }
    }

    /// Forgets the connection in `key`'s `slot` if it is closed.
    fn drop_closed_h2(&self, key: &PoolKey, slot: usize) {
        let mut map = self.inner.h2.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(key).and_then(|v| v.get_mut(slot))
            && entry.as_ref().is_some_and(|s| s.tx.is_closed())
        {
            *entry = None;
        }
    }

    async fn send_h2(
        &self,
        key: PoolKey,
        mut req: Request<ProxyBody>,
    ) -> Result<Exchange, SendError> {
        let slot = h2_slot();
        if let Some(mut shared) = self.checkout_h2(&key, slot) {
            if shared.tx.ready().await.is_ok() {
                match shared.tx.try_send_request(req).await {
                    Ok(response) => {
                        return Ok(Exchange {
                            response,
                            local_addr: shared.info.local,
                            peer: shared.info.peer,
                            recycle: None,
                        });
                    }
                    Err(mut e) => match e.take_message() {
                        Some(r) => req = r,
                        None => return Err(SendError::sent(PoolError::Reset(e.into_error()))),
                    },
                }
            }
            self.drop_closed_h2(&key, slot);
        }
        let (stream, info) = match self.dial(&key, AppProtocol::Http2).await {
            Ok(c) => c,
            Err(e) => return Err(SendError::unsent(e, req)),
        };
        // The connection's I/O, each response wait and each request body being sent run in
        // one task (see `conn_exec`).
        let exec = ConnExec::default();
        let handshake = http2::Builder::new(exec.clone())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(exec.hold_flushes(stream)))
            .await;
        let (tx, conn) = match handshake {
            Ok(h) => h,
            Err(e) => return Err(SendError::unsent(PoolError::Handshake(e), req)),
        };
        // A combinator, not an `async` block: the compiler cannot prove such a block `Send`
        // for hyper's client task behind this executor (a higher-ranked lifetime error).
        tokio::spawn(conn_exec::drive(exec, conn).map(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upstream http/2 connection ended");
            }
        }));
        let tls = key.tls.is_some();
        let mut shared = Shared { tx, info };
        {
            let mut map = self.inner.h2.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() >= MAX_KEYS && !map.contains_key(&key) {
                map.retain(|_, slots| slots.iter().flatten().any(|s| !s.tx.is_closed()));
            }
            let slots = map.entry(key).or_default();
            if slots.len() <= slot {
                slots.resize_with(slot + 1, || None);
            }
            slots[slot] = Some(shared.clone());
        }
        if let Err(e) = shared.tx.ready().await {
            let error = match PoolError::on_fresh(e, tls) {
                PoolError::Reset(e) => PoolError::Handshake(e),
                tls_error => tls_error,
            };
            return Err(SendError::unsent(error, req));
        }
        let response = shared
            .tx
            .send_request(req)
            .await
            .map_err(|e| SendError::sent(PoolError::on_fresh(e, tls)))?;
        Ok(Exchange {
            response,
            local_addr: shared.info.local,
            peer: shared.info.peer,
            recycle: None,
        })
    }
}
