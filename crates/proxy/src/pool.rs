//! Upstream connections: dialling, and pools of keep-alive HTTP/1 and multiplexed HTTP/2
//! connections per endpoint, within each cluster's circuit-breaking limits.
//!
//! [`connect`] is the one place an upstream connection is made, for HTTP and opaque TCP alike,
//! plaintext or Istio mTLS ([`crate::tls`]): the pool key carries the endpoint's [`PeerTls`], so
//! plaintext and mTLS connections (or mTLS connections expecting different identities) never
//! share a slot. HTTP/1 connections go back to an idle list once their response is fully read
//! (bounded per endpoint, closed after the idle timeout); an HTTP/2 connection is shared by all
//! requests to its endpoint. A request that finds a pooled connection closed under it, before a
//! byte was written, is sent again on a fresh one. No lock is held across I/O.
//!
//! [`Pool::send_limited`] counts connections and waiting requests against the cluster's
//! [`ClusterCircuit`] as Envoy's connection pools do: a request that finds no ready connection
//! is *pending* until one is up for it (its own new one, or an idle one coming back); beyond
//! `http1MaxPendingRequests` it fails at once with [`PoolError::Overflow`] (`UO`); when
//! `maxConnections` are open it waits for one of its endpoint to close or come back idle. An
//! endpoint with no connection at all gets one beyond the cap, as in Envoy's pools
//! (`tryCreateNewConnection`), but per endpoint rather than per endpoint and worker: the cap is
//! shared by all worker threads, and one worker does not open a second connection while another
//! holds the endpoint's only one. Connections of the same endpoint but different clusters
//! (subsets) are never shared. Each connection is retired after `maxRequestsPerConnection`
//! requests and `maxConnectionDuration` (gracefully: no new request, closed once the current
//! ones end) and closed once idle for the cluster's idle timeout, by a small timer task per
//! connection (`expire`).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
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
use tokio::sync::oneshot;

use crate::addr::EndpointAddr;
use crate::body::ProxyBody;
use crate::circuit::{self, ClusterCircuit, ConnPermit, Keepalive, Pending, bump};
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
    /// No connection was free and `http1MaxPendingRequests` requests already waited for one:
    /// Envoy's `UO`, 503 `upstream_reset_before_response_started{overflow}`. The upstream was
    /// not reached, but this is not a connect failure: Envoy never retries an overflow.
    #[error("{0}")]
    Overflow(#[from] circuit::Overflow),
}

impl PoolError {
    /// True if the upstream was never reached (connect-level failure, safe to retry anywhere).
    /// False for [`PoolError::Overflow`]: the cluster is full, retrying would only add load.
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

/// A pooled connection's I/O with its cluster's connection slot: the slot is freed when the
/// socket is dropped, wherever it went: with the connection's task, or with the tunnel of an
/// upgraded (WebSocket) connection, which outlives that task.
struct Slotted<T> {
    io: T,
    _slot: Option<NewConn>,
}

/// What a new connection of a cluster holds while open: its slot, and its place in its key's
/// count of connections.
struct NewConn {
    // Dropped in this order: the key's count falls before the slot's release wakes waiters, so
    // a woken waiter sees its key without this connection.
    _live: Live,
    _permit: ConnPermit,
}

impl NewConn {
    /// Counts the connection in `live`.
    fn new(permit: ConnPermit, live: Arc<AtomicUsize>) -> NewConn {
        live.fetch_add(1, Ordering::SeqCst);
        NewConn {
            _live: Live(live),
            _permit: permit,
        }
    }
}

/// One connection counted in its key's count until dropped.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Slotted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Slotted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
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

/// How to secure a new upstream connection: Istio mTLS with `peer`, speaking `protocol` inside,
/// or TLS origination when `peer` says so.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTls<'a> {
    /// Our identity (`None`: the proxy has none; only TLS origination can be done).
    pub mesh: Option<&'a MeshTls>,
    /// The endpoint's SNI and expected identity.
    pub peer: &'a PeerTls,
    /// What goes inside (selects the ALPN).
    pub protocol: AppProtocol,
}

/// How to dial: the connect timeout and TCP keepalive of the endpoint's cluster.
#[derive(Debug, Clone, Copy)]
pub struct Dial {
    /// Connect timeout (the TCP connect; the mTLS handshake has its own).
    pub timeout: Duration,
    /// Keepalive probes; `None`: no `SO_KEEPALIVE`.
    pub keepalive: Option<Keepalive>,
}

impl Dial {
    /// A cluster's settings, `default_timeout` where it sets no connect timeout.
    pub fn of(circuit: Option<&ClusterCircuit>, default_timeout: Duration) -> Dial {
        match circuit {
            None => Dial {
                timeout: default_timeout,
                keepalive: None,
            },
            Some(c) => {
                let l = c.limits();
                Dial {
                    timeout: l.connect_timeout.unwrap_or(default_timeout),
                    keepalive: l.tcp_keepalive,
                }
            }
        }
    }
}

/// Dials `endpoint`, from `bind` when given (127.0.0.6 for the inbound path), within `timeout`,
/// then runs the mTLS handshake when `tls` says so (within [`crate::tls::HANDSHAKE_TIMEOUT`]).
pub async fn connect(
    endpoint: EndpointAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
    tls: Option<UpstreamTls<'_>>,
) -> Result<(UpstreamIo, ConnInfo), PoolError> {
    let dial = Dial {
        timeout,
        keepalive: None,
    };
    connect_with(endpoint, bind, dial, tls).await
}

/// [`connect`] for opaque TCP within `circuit`'s limits, as Envoy's tcp_proxy: takes a
/// connection slot (waiting as a pending connection while `maxConnections` are open,
/// [`PoolError::Overflow`] beyond `http1MaxPendingRequests`), then dials with the cluster's
/// connect timeout (else `default_timeout`) and keepalive. Keep the permit as long as the
/// connection: dropping it frees the slot.
pub async fn connect_limited(
    circuit: &Arc<ClusterCircuit>,
    endpoint: EndpointAddr,
    bind: Option<IpAddr>,
    default_timeout: Duration,
    tls: Option<UpstreamTls<'_>>,
) -> Result<(UpstreamIo, ConnInfo, ConnPermit), PoolError> {
    let permit = circuit.acquire().await?;
    let dial = Dial::of(Some(circuit), default_timeout);
    let (io, info) = connect_with(endpoint, bind, dial, tls).await?;
    Ok((io, info, permit))
}

/// [`connect`] with a cluster's [`Dial`] settings.
pub async fn connect_with(
    endpoint: EndpointAddr,
    bind: Option<IpAddr>,
    dial: Dial,
    tls: Option<UpstreamTls<'_>>,
) -> Result<(UpstreamIo, ConnInfo), PoolError> {
    let (stream, local) = connect_tcp(endpoint, bind, dial).await?;
    match tls {
        None => Ok((UpstreamIo::Plain(stream), ConnInfo { local, peer: None })),
        Some(UpstreamTls {
            peer: PeerTls {
                origination: Some(o),
                ..
            },
            ..
        }) => {
            let stream = o
                .connect(stream, endpoint.get().ip())
                .await
                .map_err(PoolError::Tls)?;
            Ok((
                UpstreamIo::Tls(Box::new(stream)),
                ConnInfo { local, peer: None },
            ))
        }
        Some(t) => {
            let mesh = t.mesh.ok_or_else(|| {
                PoolError::Tls(HandshakeError::Io(io::Error::other(
                    "mTLS requested but the proxy has no identity",
                )))
            })?;
            let (stream, peer) = mesh
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

/// Turns keepalive on with `k`'s settings (the kernel's for those unset).
fn set_keepalive(socket: &TcpSocket, k: Keepalive) -> io::Result<()> {
    let mut params = socket2::TcpKeepalive::new();
    if let Some(t) = k.time {
        params = params.with_time(t);
    }
    if let Some(i) = k.interval {
        params = params.with_interval(i);
    }
    if let Some(p) = k.probes {
        params = params.with_retries(p);
    }
    socket2::SockRef::from(socket).set_tcp_keepalive(&params)
}

async fn connect_tcp(
    endpoint: EndpointAddr,
    bind: Option<IpAddr>,
    dial: Dial,
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
    if let Some(k) = dial.keepalive {
        set_keepalive(&socket, k).map_err(PoolError::Connect)?;
    }
    let stream = match tokio::time::timeout(dial.timeout, socket.connect(addr)).await {
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

/// A [`PoolKey`] within one cluster: connections are counted against their cluster's circuit,
/// so two clusters with the same endpoint (subsets) never share one. Circuits compare by
/// identity.
#[derive(Debug, Clone)]
struct Key {
    base: PoolKey,
    circuit: Option<Arc<ClusterCircuit>>,
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.base == other.base
            && match (&self.circuit, &other.circuit) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.base.hash(state);
        self.circuit.as_ref().map(Arc::as_ptr).hash(state);
    }
}

impl Key {
    fn circuit(&self) -> Option<&ClusterCircuit> {
        self.circuit.as_deref()
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
/// the wake-up of another worker. A retired connection is closed instead.
pub struct Recycle(Option<(Pool, Key, H1)>);

impl Recycle {
    /// The response was read to its end.
    pub fn done(mut self) {
        if let Some((pool, key, conn)) = self.0.take() {
            if conn.tx.is_ready() {
                pool.put_h1(key, conn);
            } else {
                pool.recycle_h1(key, conn);
            }
        }
    }
}

impl Drop for Recycle {
    fn drop(&mut self) {
        if let Some((pool, key, conn)) = self.0.take() {
            pool.recycle_h1(key, conn);
        }
    }
}

impl std::fmt::Debug for Recycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recycle")
    }
}

/// Pool settings (a cluster's [`circuit::Limits`] override the timeouts).
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Most idle HTTP/1 connections kept per key.
    pub max_idle_per_key: usize,
}

/// What a connection's users, its pool entry and its timer task ([`expire`]) share.
#[derive(Debug)]
struct Life {
    /// Tells this connection's entry apart in the pool's lists.
    id: u64,
    born: Instant,
    /// Requests after which it is retired (0: no limit); fixed when it opens, as Envoy's.
    max_requests: u32,
    /// Closed after this long without a request (`None`: never).
    idle_timeout: Option<Duration>,
    /// Retired at this instant (`maxConnectionDuration`).
    deadline: Option<Instant>,
    /// No new request may use it; it closes once its current ones end.
    retired: AtomicBool,
    /// Requests started on it.
    requests: AtomicU32,
    /// When the last request started, in ms after `born` (HTTP/2's idleness).
    last_used_ms: AtomicU64,
    /// Its HTTP/2 slot, or the HTTP/1 idle map it was last put in.
    slot: AtomicUsize,
}

impl Life {
    fn new(key: &Key, cfg: &PoolConfig, slot: usize) -> Arc<Life> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let born = Instant::now();
        let limits = key.circuit().map(ClusterCircuit::limits);
        let idle = limits
            .as_ref()
            .and_then(|l| l.idle_timeout)
            .unwrap_or(cfg.idle_timeout);
        Arc::new(Life {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            born,
            max_requests: limits.as_ref().map_or(0, |l| l.max_requests_per_connection),
            // Zero disables the idle timeout (Envoy's `idle_timeout: 0s`).
            idle_timeout: (!idle.is_zero()).then_some(idle),
            deadline: limits
                .as_ref()
                .and_then(|l| l.max_connection_duration)
                .map(|d| born + d),
            retired: AtomicBool::new(false),
            requests: AtomicU32::new(0),
            last_used_ms: AtomicU64::new(0),
            slot: AtomicUsize::new(slot),
        })
    }

    /// Counts a request starting on the connection; true if that was its last (it is retired,
    /// counted in `upstream_cx_max_requests`, as Envoy does when it attaches that request).
    fn start_request(&self, circuit: Option<&ClusterCircuit>) -> bool {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if self.max_requests > 0 && n >= self.max_requests && !self.retire() {
            if let Some(c) = circuit {
                bump(&c.stats.upstream_cx_max_requests);
            }
            return true;
        }
        false
    }

    /// Notes that an HTTP/2 request started now (HTTP/1 idleness is its time in the pool).
    fn touch(&self) {
        let since_born = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_used_ms.store(since_born, Ordering::Relaxed);
    }

    /// Marks it retired; true if it already was.
    fn retire(&self) -> bool {
        self.retired.swap(true, Ordering::Relaxed)
    }

    /// Whether a new request may use it: not retired, and not past its most duration (then it
    /// is retired now, if its timer has not done so yet).
    fn usable(&self, circuit: Option<&ClusterCircuit>) -> bool {
        if self.retired.load(Ordering::Relaxed) {
            return false;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            if !self.retire()
                && let Some(c) = circuit
            {
                bump(&c.stats.upstream_cx_max_duration_reached);
            }
            return false;
        }
        true
    }

    /// When HTTP/2 last started a request.
    fn last_used(&self) -> Instant {
        self.born + Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed))
    }
}

/// An HTTP/1 connection's request half.
struct H1 {
    tx: http1::SendRequest<ProxyBody>,
    info: ConnInfo,
    life: Arc<Life>,
}

struct Idle {
    conn: H1,
    since: Instant,
}

#[derive(Clone)]
struct Shared {
    tx: http2::SendRequest<ProxyBody>,
    info: ConnInfo,
    life: Arc<Life>,
}

struct Inner {
    cfg: PoolConfig,
    tls: Option<Arc<MeshTls>>,
    /// Idle HTTP/1 connections by key, one map per worker thread ([`crate::workers`]): a
    /// connection's task runs on the worker that dialed it, so only that worker takes it again
    /// (except a request waiting for a connection slot, which takes one from any map).
    /// Off the workers (tests, embedded use) every thread shares the first map.
    idle: [Mutex<FxHashMap<Key, Vec<Idle>>>; MAX_SLOTS],
    /// Shared HTTP/2 connections by key, one per worker thread (the slot), as Envoy keeps a
    /// connection pool per worker: one connection for every worker's streams would put all of
    /// them behind one connection task and one TLS session.
    h2: Mutex<FxHashMap<Key, Vec<Option<Shared>>>>,
    /// Connections open or opening per key of a cluster with a circuit, to tell whether a
    /// request waiting at the cluster's cap has any of its own (touched only when a connection
    /// opens).
    live: Mutex<FxHashMap<Key, Arc<AtomicUsize>>>,
}

/// Most HTTP/2 connections kept per key, and HTTP/1 idle maps (worker threads beyond it share
/// slots).
const MAX_SLOTS: usize = 16;

/// This thread's HTTP/2 slot: a worker's index, else threads are numbered as they first send.
fn h2_slot() -> usize {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// A sent request's outcome, or the request (and its key) back when no pooled connection took
/// it.
type Attempt = Result<Result<Exchange, SendError>, (Key, Request<ProxyBody>)>;

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
                live: Mutex::default(),
            }),
        }
    }

    /// Idle HTTP/1 connections currently pooled for `key`, in any cluster (for tests and
    /// admin).
    pub fn idle_count(&self, key: &PoolKey) -> usize {
        self.inner
            .idle
            .iter()
            .map(|m| {
                lock(m)
                    .iter()
                    .filter(|(k, _)| k.base == *key)
                    .map(|(_, l)| l.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// Sends `req` to `key.endpoint`, on a pooled connection when one is available, without
    /// circuit breaking (no cluster). With `upgrade`, the connection is handed over to the
    /// protocol upgrade instead of going back to the pool.
    pub async fn send(
        &self,
        key: PoolKey,
        req: Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<Exchange, SendError> {
        let key = Key {
            base: key,
            circuit: None,
        };
        self.send_key(key, req, upgrade).await
    }

    /// [`send`](Self::send) within `circuit`'s limits, the cluster the endpoint was picked
    /// from: a request that finds no ready connection waits as pending (at most
    /// `http1MaxPendingRequests`, else [`PoolError::Overflow`] at once, with the request handed
    /// back) until a connection is up for it, opening one only while fewer than
    /// `maxConnections` are open. The wait has no bound of its own: the caller's route timeout
    /// (dropping this future) ends it and frees the pending slot.
    pub async fn send_limited(
        &self,
        circuit: &Arc<ClusterCircuit>,
        key: PoolKey,
        req: Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<Exchange, SendError> {
        let key = Key {
            base: key,
            circuit: Some(circuit.clone()),
        };
        self.send_key(key, req, upgrade).await
    }

    async fn send_key(
        &self,
        key: Key,
        req: Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<Exchange, SendError> {
        if key.base.http2 {
            self.send_h2(key, req).await
        } else {
            self.send_h1(key, req, upgrade).await
        }
    }

    /// Dials a new connection for `key`, speaking `protocol` inside mTLS when the key says so.
    async fn dial(
        &self,
        key: &Key,
        protocol: AppProtocol,
    ) -> Result<(UpstreamIo, ConnInfo), PoolError> {
        let tls = key.base.tls.as_deref().map(|peer| UpstreamTls {
            mesh: self.inner.tls.as_deref(),
            peer,
            protocol,
        });
        let dial = Dial::of(key.circuit(), self.inner.cfg.connect_timeout);
        connect_with(key.base.endpoint, key.base.bind, dial, tls).await
    }

    /// For a request that found no ready connection: a slot for a new one, counted as pending
    /// (Envoy's pending request) until that connection is up. While `maxConnections` are open
    /// it waits, trying `try_pooled` (a connection of its key from any worker) at each wake-up,
    /// unless its key has no connection at all (all of them belong to other endpoints): then it
    /// opens one beyond the cap, as Envoy does (`tryCreateNewConnection`), rather than wait
    /// for another endpoint's connection to close. `Err` is the outcome of a pooled connection
    /// it used, or the overflow.
    async fn new_slot<F, Fut>(
        &self,
        mut key: Key,
        mut req: Request<ProxyBody>,
        mut try_pooled: F,
    ) -> Result<(Key, Request<ProxyBody>, Option<(NewConn, Pending)>), Result<Exchange, SendError>>
    where
        F: FnMut(Key, Request<ProxyBody>) -> Fut,
        Fut: Future<Output = Attempt>,
    {
        let Some(circuit) = key.circuit.clone() else {
            return Ok((key, req, None));
        };
        let pending = match circuit.try_pend() {
            Ok(p) => p,
            Err(e) => return Err(Err(SendError::unsent(e.into(), req))),
        };
        let live = self.live(&key);
        let mut counted = false;
        loop {
            let notified = circuit.changed();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(permit) = circuit.try_open() {
                return Ok((key, req, Some((NewConn::new(permit, live), pending))));
            }
            if !std::mem::replace(&mut counted, true) {
                bump(&circuit.stats.upstream_cx_overflow);
            }
            if live.load(Ordering::SeqCst) == 0 {
                let permit = circuit.open_beyond_cap();
                return Ok((key, req, Some((NewConn::new(permit, live), pending))));
            }
            (key, req) = match try_pooled(key, req).await {
                Ok(done) => return Err(done),
                Err(back) => back,
            };
            notified.await;
        }
    }

    /// The count of `key`'s connections (open or opening), created if missing.
    fn live(&self, key: &Key) -> Arc<AtomicUsize> {
        let mut map = lock(&self.inner.live);
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            map.retain(|_, n| Arc::strong_count(n) > 1);
        }
        map.entry(key.clone()).or_default().clone()
    }

    /// Takes an idle HTTP/1 connection of `key` from idle map `slot`, counting the request it
    /// is taken for.
    fn checkout_h1(&self, key: &Key, slot: usize) -> Option<H1> {
        let mut map = lock(&self.inner.idle[slot]);
        let list = map.get_mut(key)?;
        while let Some(c) = list.pop() {
            let life = &c.conn.life;
            if life.idle_timeout.is_some_and(|t| c.since.elapsed() >= t) {
                if let Some(circuit) = key.circuit() {
                    bump(&circuit.stats.upstream_cx_idle_timeout);
                }
                continue;
            }
            if c.conn.tx.is_ready() && life.usable(key.circuit()) {
                life.start_request(key.circuit());
                return Some(c.conn);
            }
        }
        None
    }

    /// Sends `req` on an idle connection of `key`, from idle map `slot` or (`None`) any.
    async fn send_idle_h1(
        &self,
        key: Key,
        mut req: Request<ProxyBody>,
        upgrade: bool,
        slot: Option<usize>,
    ) -> Attempt {
        loop {
            let idle = match slot {
                Some(s) => self.checkout_h1(&key, s),
                None => (0..MAX_SLOTS).find_map(|s| self.checkout_h1(&key, s)),
            };
            let Some(mut conn) = idle else {
                return Err((key, req));
            };
            match conn.tx.try_send_request(req).await {
                Ok(response) => return Ok(Ok(self.exchange_h1(key, conn, response, upgrade))),
                Err(mut e) => match e.take_message() {
                    // Closed under us before anything was written: try the next one.
                    Some(r) => req = r,
                    None => return Ok(Err(SendError::sent(PoolError::Reset(e.into_error())))),
                },
            }
        }
    }

    fn exchange_h1(
        &self,
        key: Key,
        conn: H1,
        response: Response<Incoming>,
        upgrade: bool,
    ) -> Exchange {
        Exchange {
            response,
            local_addr: conn.info.local,
            peer: conn.info.peer.clone(),
            recycle: (!upgrade).then(|| Recycle(Some((self.clone(), key, conn)))),
        }
    }

    async fn send_h1(
        &self,
        key: Key,
        req: Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<Exchange, SendError> {
        let (key, req) = match self.send_idle_h1(key, req, upgrade, Some(h1_slot())).await {
            Ok(done) => return done,
            Err(back) => back,
        };
        let (key, req, slot) = match self
            .new_slot(key, req, |k, r| self.send_idle_h1(k, r, upgrade, None))
            .await
        {
            Ok(s) => s,
            Err(done) => return done,
        };
        let (permit, pending) = slot.unzip();
        let (stream, info) = match self.dial(&key, AppProtocol::Http1).await {
            Ok(c) => c,
            Err(e) => return Err(SendError::unsent(e, req)),
        };
        let stream = Slotted {
            io: stream,
            _slot: permit,
        };
        let (mut tx, conn) = match http1::Builder::new().handshake(TokioIo::new(stream)).await {
            Ok(h) => h,
            Err(e) => return Err(SendError::unsent(PoolError::Handshake(e), req)),
        };
        // The request has its connection: it is no longer pending.
        drop(pending);
        let life = Life::new(&key, &self.inner.cfg, h1_slot());
        life.start_request(key.circuit());
        let ended = self.watch(&key, &life, false);
        tokio::spawn(async move {
            let _ended = ended;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream http/1 connection ended");
            }
        });
        let tls = key.base.tls.is_some();
        let response = tx
            .send_request(req)
            .await
            .map_err(|e| SendError::sent(PoolError::on_fresh(e, tls)))?;
        Ok(self.exchange_h1(key, H1 { tx, info, life }, response, upgrade))
    }

    /// Starts the timer task of a new connection when it has an idle timeout or a most
    /// duration; the connection's task holds the returned sender until it ends.
    fn watch(&self, key: &Key, life: &Arc<Life>, http2: bool) -> Option<oneshot::Sender<()>> {
        if life.idle_timeout.is_none() && life.deadline.is_none() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        tokio::spawn(expire(
            Arc::downgrade(&self.inner),
            key.clone(),
            life.clone(),
            http2,
            rx,
        ));
        Some(tx)
    }

    /// Puts an HTTP/1 connection back once its current response has been read to the end.
    fn recycle_h1(&self, key: Key, mut conn: H1) {
        let pool = self.clone();
        tokio::spawn(async move {
            if conn.tx.ready().await.is_err() {
                return;
            }
            pool.put_h1(key, conn);
        });
    }

    /// Adds an idle (ready) HTTP/1 connection to the pool, if there is room for it and it is
    /// not retired (then dropping it closes it), and wakes requests waiting for one.
    fn put_h1(&self, key: Key, conn: H1) {
        if !conn.life.usable(key.circuit()) {
            return;
        }
        let circuit = key.circuit.clone();
        let slot = h1_slot();
        conn.life.slot.store(slot, Ordering::Relaxed);
        {
            let mut map = lock(&self.inner.idle[slot]);
            if map.len() >= MAX_KEYS && !map.contains_key(&key) {
                map.retain(|_, l| {
                    l.retain(|c| !c.conn.tx.is_closed());
                    !l.is_empty()
                });
            }
            let list = map.entry(key).or_default();
            list.retain(|c| !c.conn.tx.is_closed());
            if list.len() < self.inner.cfg.max_idle_per_key {
                list.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        }
        if let Some(c) = circuit {
            c.wake();
        }
    }

    /// When the HTTP/1 connection of `life` went idle, if it is idle in the pool now.
    fn idle_since(&self, key: &Key, life: &Life) -> Option<Instant> {
        let map = lock(&self.inner.idle[life.slot.load(Ordering::Relaxed)]);
        map.get(key)?
            .iter()
            .find(|c| c.conn.life.id == life.id)
            .map(|c| c.since)
    }

    /// Takes the HTTP/1 connection of `life` out of the pool, if it is idle there (since
    /// `cutoff` or before, when given).
    fn take_idle(&self, key: &Key, life: &Life, cutoff: Option<Instant>) -> Option<Idle> {
        let mut map = lock(&self.inner.idle[life.slot.load(Ordering::Relaxed)]);
        let list = map.get_mut(key)?;
        let i = list
            .iter()
            .position(|c| c.conn.life.id == life.id && cutoff.is_none_or(|cut| c.since <= cut))?;
        Some(list.swap_remove(i))
    }

    /// Takes a shared HTTP/2 connection of `key` from `slot` or (`None`) any, counting the
    /// request it is taken for (which may retire it: then it leaves its slot).
    fn checkout_h2(&self, key: &Key, slot: Option<usize>) -> Option<(usize, Shared)> {
        let mut map = lock(&self.inner.h2);
        let slots = map.get_mut(key)?;
        let range = match slot {
            Some(s) => s..(s + 1).min(slots.len()),
            None => 0..slots.len(),
        };
        for s in range {
            let entry = &mut slots[s];
            match entry {
                Some(sh) if !sh.tx.is_closed() && sh.life.usable(key.circuit()) => {
                    let shared = sh.clone();
                    shared.life.touch();
                    if shared.life.start_request(key.circuit()) {
                        *entry = None;
                    }
                    return Some((s, shared));
                }
                Some(_) => *entry = None,
                None => {}
            }
        }
        None
    }

    /// Forgets the connection in `key`'s `slot` if it is closed.
    fn drop_closed_h2(&self, key: &Key, slot: usize) {
        let mut map = lock(&self.inner.h2);
        if let Some(entry) = map.get_mut(key).and_then(|v| v.get_mut(slot))
            && entry.as_ref().is_some_and(|s| s.tx.is_closed())
        {
            *entry = None;
        }
    }

    /// Takes the HTTP/2 connection of `life` out of its slot: no new streams; it closes (with
    /// a GOAWAY) once its streams end and the last handle is dropped.
    fn retire_h2(&self, key: &Key, life: &Life) -> Option<Shared> {
        let mut map = lock(&self.inner.h2);
        let entry = map
            .get_mut(key)?
            .get_mut(life.slot.load(Ordering::Relaxed))?;
        if entry.as_ref().is_some_and(|s| s.life.id == life.id) {
            entry.take()
        } else {
            None
        }
    }

    /// Sends `req` on the shared HTTP/2 connection of `key` in `slot` or (`None`) any.
    async fn send_shared_h2(
        &self,
        key: Key,
        mut req: Request<ProxyBody>,
        slot: Option<usize>,
    ) -> Attempt {
        if let Some((s, mut shared)) = self.checkout_h2(&key, slot) {
            if shared.tx.ready().await.is_ok() {
                match shared.tx.try_send_request(req).await {
                    Ok(response) => {
                        return Ok(Ok(Exchange {
                            response,
                            local_addr: shared.info.local,
                            peer: shared.info.peer,
                            recycle: None,
                        }));
                    }
                    Err(mut e) => match e.take_message() {
                        Some(r) => req = r,
                        None => {
                            return Ok(Err(SendError::sent(PoolError::Reset(e.into_error()))));
                        }
                    },
                }
            }
            self.drop_closed_h2(&key, s);
        }
        Err((key, req))
    }

    async fn send_h2(&self, key: Key, req: Request<ProxyBody>) -> Result<Exchange, SendError> {
        let slot = h2_slot();
        let (key, req) = match self.send_shared_h2(key, req, Some(slot)).await {
            Ok(done) => return done,
            Err(back) => back,
        };
        let (key, req, circuit_slot) = match self
            .new_slot(key, req, |k, r| self.send_shared_h2(k, r, None))
            .await
        {
            Ok(s) => s,
            Err(done) => return done,
        };
        let (permit, pending) = circuit_slot.unzip();
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
            .handshake(TokioIo::new(exec.hold_flushes(Slotted {
                io: stream,
                _slot: permit,
            })))
            .await;
        let (tx, conn) = match handshake {
            Ok(h) => h,
            Err(e) => return Err(SendError::unsent(PoolError::Handshake(e), req)),
        };
        drop(pending);
        let life = Life::new(&key, &self.inner.cfg, slot);
        let last = life.start_request(key.circuit());
        let ended = self.watch(&key, &life, true);
        // A combinator, not an `async` block: the compiler cannot prove such a block `Send`
        // for hyper's client task behind this executor (a higher-ranked lifetime error).
        tokio::spawn(conn_exec::drive(exec, conn).map(move |r| {
            drop(ended);
            if let Err(e) = r {
                tracing::debug!(error = %e, "upstream http/2 connection ended");
            }
        }));
        let tls = key.base.tls.is_some();
        let mut shared = Shared { tx, info, life };
        // A connection retired by its first request is not shared.
        if !last {
            {
                let mut map = lock(&self.inner.h2);
                if map.len() >= MAX_KEYS && !map.contains_key(&key) {
                    map.retain(|_, slots| slots.iter().flatten().any(|s| !s.tx.is_closed()));
                }
                let slots = map.entry(key.clone()).or_default();
                if slots.len() <= slot {
                    slots.resize_with(slot + 1, || None);
                }
                slots[slot] = Some(shared.clone());
            }
            if let Some(c) = key.circuit() {
                c.wake();
            }
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

/// A connection's timer task: retires it at its most duration and closes it once idle for its
/// idle timeout (HTTP/2: no request started for that long; the streams it still carries end
/// first). Ends with the connection (`ended`), or once the connection is retired or closed.
async fn expire(
    weak: Weak<Inner>,
    key: Key,
    life: Arc<Life>,
    http2: bool,
    mut ended: oneshot::Receiver<()>,
) {
    // When the connection went idle, if it is: HTTP/1 while it sits in the pool, HTTP/2 since
    // its last request started.
    let idle_since = |pool: &Pool| {
        if http2 {
            Some(life.last_used())
        } else {
            pool.idle_since(&key, &life)
        }
    };
    loop {
        if life.retired.load(Ordering::Relaxed) {
            return;
        }
        let at = {
            // No strong reference to the pool while asleep.
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let pool = Pool { inner };
            let idle_at = life
                .idle_timeout
                .map(|t| idle_since(&pool).unwrap_or_else(Instant::now) + t);
            match [idle_at, life.deadline].into_iter().flatten().min() {
                Some(at) => at,
                None => return,
            }
        };
        tokio::select! {
            _ = &mut ended => return,
            _ = tokio::time::sleep_until(at.into()) => {}
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let pool = Pool { inner };
        let now = Instant::now();
        // `usable` retires it at its deadline, and counts that.
        let due = !life.usable(key.circuit());
        let idle_cutoff = life.idle_timeout.and_then(|t| now.checked_sub(t));
        let idle =
            !due && idle_cutoff.is_some_and(|cut| idle_since(&pool).is_some_and(|s| s <= cut));
        if !due && !idle {
            continue;
        }
        if idle && let Some(c) = key.circuit() {
            bump(&c.stats.upstream_cx_idle_timeout);
        }
        // Dropped outside the pool's locks: an idle HTTP/1 connection closes now (a busy one
        // past its deadline when its response ends), an HTTP/2 one once its streams end.
        if http2 {
            life.retire();
            drop(pool.retire_h2(&key, &life));
        } else {
            drop(pool.take_idle(&key, &life, if due { None } else { idle_cutoff }));
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::empty;
    use crate::circuit::Limits;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioExecutor;
    use std::convert::Infallible;
    use tokio::sync::Semaphore;

    /// A loopback HTTP server that counts its connections and can hold each request until the
    /// test lets it go.
    struct Server {
        addr: SocketAddr,
        accepts: Arc<AtomicUsize>,
        open: Arc<AtomicUsize>,
        most_open: Arc<AtomicUsize>,
        /// Requests wait for a permit here when the server is gated.
        gate: Arc<Semaphore>,
    }

    impl Server {
        async fn start(http2: bool, gated: bool) -> Server {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let server = Server {
                addr: listener.local_addr().expect("addr"),
                accepts: Arc::default(),
                open: Arc::default(),
                most_open: Arc::default(),
                gate: Arc::new(Semaphore::new(if gated {
                    0
                } else {
                    Semaphore::MAX_PERMITS
                })),
            };
            let (accepts, open, most) = (
                server.accepts.clone(),
                server.open.clone(),
                server.most_open.clone(),
            );
            let gate = server.gate.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    accepts.fetch_add(1, Ordering::SeqCst);
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let (open, gate) = (open.clone(), gate.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |_req| {
                            let gate = gate.clone();
                            async move {
                                if let Ok(p) = gate.acquire().await {
                                    p.forget();
                                }
                                Ok::<_, Infallible>(Response::new(crate::body::full("ok")))
                            }
                        });
                        let io = TokioIo::new(stream);
                        let _ = if http2 {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await
                        } else {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await
                        };
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
            server
        }

        fn key(&self, http2: bool) -> PoolKey {
            PoolKey {
                endpoint: EndpointAddr(self.addr),
                bind: None,
                http2,
                tls: None,
            }
        }

        fn accepts(&self) -> usize {
            self.accepts.load(Ordering::SeqCst)
        }

        fn open(&self) -> usize {
            self.open.load(Ordering::SeqCst)
        }
    }

    fn pool() -> Pool {
        Pool::new(PoolConfig {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_idle_per_key: 64,
        })
    }

    fn request(addr: SocketAddr) -> Request<ProxyBody> {
        Request::builder()
            .uri(format!("http://{addr}/get"))
            .header("host", addr.to_string())
            .body(empty())
            .expect("request")
    }

    /// Sends one request and reads its response to the end, giving the connection back
    /// (bounded: panics after 10 s).
    async fn exchange(
        pool: &Pool,
        circuit: &Arc<ClusterCircuit>,
        key: PoolKey,
    ) -> Result<(), PoolError> {
        let req = request(key.endpoint.get());
        let send = async {
            let x = pool
                .send_limited(circuit, key, req, false)
                .await
                .map_err(|e| e.error)?;
            let body = x.response.into_body().collect().await.expect("body");
            assert_eq!(body.to_bytes(), "ok");
            if let Some(r) = x.recycle {
                r.done();
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(10), send)
            .await
            .expect("exchange within 10 s")
    }

    fn spawn_exchange(
        pool: &Pool,
        circuit: &Arc<ClusterCircuit>,
        key: PoolKey,
    ) -> tokio::task::JoinHandle<Result<(), PoolError>> {
        let (pool, circuit) = (pool.clone(), circuit.clone());
        tokio::spawn(async move { exchange(&pool, &circuit, key).await })
    }

    async fn join(task: tokio::task::JoinHandle<Result<(), PoolError>>) {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("exchange finishes")
            .expect("join")
            .expect("exchange succeeds");
    }

    fn limits(cx: u32, pending: u32, per_connection: u32) -> Limits {
        Limits {
            max_connections: cx,
            max_pending_requests: pending,
            max_requests_per_connection: per_connection,
            ..Limits::default()
        }
    }

    use crate::circuit::tests::wait_for;

    #[tokio::test]
    async fn connection_cap_holds_under_20_concurrent_sends() {
        connection_cap_holds().await;
    }

    /// The same across threads: waiters woken from other threads, connections returned on them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn connection_cap_holds_across_threads() {
        connection_cap_holds().await;
    }

    async fn connection_cap_holds() {
        let server = Server::start(false, true).await;
        let pool = pool();
        let circuit = ClusterCircuit::new(limits(3, UNLIMITED_PENDING, 0));
        let tasks: Vec<_> = (0..20)
            .map(|_| spawn_exchange(&pool, &circuit, server.key(false)))
            .collect();
        // Three requests on their connections at the server, the other 17 waiting.
        wait_for(|| {
            server.accepts() == 3 && circuit.stats.snapshot().upstream_rq_pending_active == 17
        })
        .await;
        server.gate.add_permits(20);
        for t in tasks {
            join(t).await;
        }
        let s = circuit.stats.snapshot();
        assert_eq!(
            server.accepts(),
            3,
            "the waiters reused the three connections"
        );
        assert_eq!(server.most_open.load(Ordering::SeqCst), 3);
        assert_eq!(s.upstream_cx_total, 3);
        assert_eq!(s.upstream_cx_active, 3);
        assert_eq!(s.upstream_cx_overflow, 17);
        assert_eq!(s.upstream_rq_pending_total, 20);
        assert_eq!(s.upstream_rq_pending_active, 0);
        assert_eq!(s.upstream_rq_pending_overflow, 0);
        assert_eq!(pool.idle_count(&server.key(false)), 3);
    }

    const UNLIMITED_PENDING: u32 = circuit::UNLIMITED;

    #[tokio::test]
    async fn pending_cap_overflows_exactly_beyond_it() {
        let server = Server::start(false, true).await;
        let pool = pool();
        let circuit = ClusterCircuit::new(limits(1, 2, 0));
        let first = spawn_exchange(&pool, &circuit, server.key(false));
        wait_for(|| {
            server.accepts() == 1 && circuit.stats.snapshot().upstream_rq_pending_active == 0
        })
        .await;
        let waiting: Vec<_> = (0..2)
            .map(|_| spawn_exchange(&pool, &circuit, server.key(false)))
            .collect();
        wait_for(|| circuit.stats.snapshot().upstream_rq_pending_active == 2).await;
        let err = pool
            .send_limited(&circuit, server.key(false), request(server.addr), false)
            .await
            .expect_err("a third waiter overflows");
        assert!(
            matches!(err.error, PoolError::Overflow(_)),
            "{:?}",
            err.error
        );
        assert!(!err.error.is_connect_failure(), "UO is never retried as UF");
        assert!(err.request.is_some(), "the request is handed back unsent");
        assert_eq!(circuit.stats.snapshot().upstream_rq_pending_overflow, 1);
        server.gate.add_permits(3);
        join(first).await;
        for t in waiting {
            join(t).await;
        }
        assert_eq!(server.accepts(), 1);
        assert_eq!(circuit.stats.snapshot().upstream_rq_pending_active, 0);
    }

    #[tokio::test]
    async fn max_requests_per_connection_retires_connections() {
        let server = Server::start(false, false).await;
        let pool = pool();
        let circuit = ClusterCircuit::new(limits(UNLIMITED_PENDING, UNLIMITED_PENDING, 2));
        for _ in 0..5 {
            exchange(&pool, &circuit, server.key(false))
                .await
                .expect("exchange");
        }
        // Requests 1-2, 3-4 and 5 each on their own connection.
        assert_eq!(server.accepts(), 3);
        assert_eq!(circuit.stats.snapshot().upstream_cx_max_requests, 2);
        // The two retired connections close.
        wait_for(|| server.open() == 1).await;
        wait_for(|| circuit.stats.snapshot().upstream_cx_active == 1).await;
    }

    /// Istio's Circuit Breaking task: `maxConnections: 1`, `http1MaxPendingRequests: 1`,
    /// `maxRequestsPerConnection: 1` lets one request through at a time, one waits, the rest
    /// are `UO`.
    #[tokio::test]
    async fn one_connection_of_one_request_serialises_the_cluster() {
        let server = Server::start(false, true).await;
        let pool = pool();
        let circuit = ClusterCircuit::new(limits(1, 1, 1));
        let a = spawn_exchange(&pool, &circuit, server.key(false));
        wait_for(|| {
            server.accepts() == 1 && circuit.stats.snapshot().upstream_rq_pending_active == 0
        })
        .await;
        let b = spawn_exchange(&pool, &circuit, server.key(false));
        wait_for(|| circuit.stats.snapshot().upstream_rq_pending_active == 1).await;
        let c = exchange(&pool, &circuit, server.key(false)).await;
        assert!(matches!(c, Err(PoolError::Overflow(_))), "{c:?}");
        assert_eq!(server.accepts(), 1, "B waits for A's connection to close");
        server.gate.add_permits(1);
        join(a).await;
        // A's connection is retired and closes; B gets its slot and a connection of its own.
        wait_for(|| server.accepts() == 2).await;
        server.gate.add_permits(1);
        join(b).await;
        let s = circuit.stats.snapshot();
        assert_eq!(s.upstream_cx_max_requests, 2);
        assert_eq!(s.upstream_rq_pending_overflow, 1);
        assert_eq!(s.upstream_cx_overflow, 1);
        wait_for(|| circuit.stats.snapshot().upstream_cx_active == 0).await;
    }

    #[tokio::test]
    async fn a_request_that_gives_up_frees_its_pending_slot() {
        let server = Server::start(false, true).await;
        let pool = pool();
        let circuit = ClusterCircuit::new(limits(1, 1, 0));
        let a = spawn_exchange(&pool, &circuit, server.key(false));
        wait_for(|| server.accepts() == 1).await;
        let b = spawn_exchange(&pool, &circuit, server.key(false));
        wait_for(|| circuit.stats.snapshot().upstream_rq_pending_active == 1).await;
        // The client went away, or the route timeout fired.
        b.abort();
        let _ = b.await;
        assert_eq!(circuit.stats.snapshot().upstream_rq_pending_active, 0);
        let c = spawn_exchange(&pool, &circuit, server.key(false));
        wait_for(|| circuit.stats.snapshot().upstream_rq_pending_active == 1).await;
        server.gate.add_permits(2);
        join(a).await;
        join(c).await;
    }

    #[tokio::test]
    async fn idle_timeout_closes_idle_connections() {
        let server = Server::start(false, false).await;
        let pool = pool();
        let circuit = ClusterCircuit::new(Limits {
            idle_timeout: Some(Duration::from_millis(50)),
            ..Limits::default()
        });
        exchange(&pool, &circuit, server.key(false))
            .await
            .expect("exchange");
        // The server sees the connection close, without another request touching the pool.
        wait_for(|| server.accepts() == 1 && server.open() == 0).await;
        assert_eq!(pool.idle_count(&server.key(false)), 0);
        let s = circuit.stats.snapshot();
        assert_eq!(s.upstream_cx_idle_timeout, 1);
        wait_for(|| circuit.stats.snapshot().upstream_cx_active == 0).await;
    }

    #[tokio::test]
    async fn max_connection_duration_retires_gracefully() {
        let server = Server::start(false, true).await;
        let pool = pool();
        let circuit = ClusterCircuit::new(Limits {
            max_connection_duration: Some(Duration::from_millis(50)),
            ..Limits::default()
        });
        let a = spawn_exchange(&pool, &circuit, server.key(false));
        wait_for(|| circuit.stats.snapshot().upstream_cx_max_duration_reached == 1).await;
        // The request in flight when the connection was retired still completes.
        server.gate.add_permits(1);
        join(a).await;
        wait_for(|| server.open() == 0).await;
        server.gate.add_permits(1);
        exchange(&pool, &circuit, server.key(false))
            .await
            .expect("a new connection");
        assert_eq!(server.accepts(), 2);
    }

    #[tokio::test]
    async fn http2_connections_are_retired_after_max_requests() {
        let server = Server::start(true, false).await;
        let pool = pool();
        let circuit = ClusterCircuit::new(limits(UNLIMITED_PENDING, UNLIMITED_PENDING, 2));
        for _ in 0..3 {
            exchange(&pool, &circuit, server.key(true))
                .await
                .expect("exchange");
        }
        assert_eq!(server.accepts(), 2);
        assert_eq!(circuit.stats.snapshot().upstream_cx_max_requests, 1);
        // The retired connection ends (GOAWAY) once its streams are done.
        wait_for(|| server.open() == 1).await;
    }

    #[tokio::test]
    async fn http2_waits_for_the_connection_cap() {
        let server = Server::start(true, true).await;
        let pool = pool();
        // One connection of one request at a time: the second request waits for the first's
        // connection to close.
        let circuit = ClusterCircuit::new(limits(1, 1, 1));
        let a = spawn_exchange(&pool, &circuit, server.key(true));
        wait_for(|| {
            server.accepts() == 1 && circuit.stats.snapshot().upstream_rq_pending_active == 0
        })
        .await;
        let b = spawn_exchange(&pool, &circuit, server.key(true));
        wait_for(|| circuit.stats.snapshot().upstream_rq_pending_active == 1).await;
        let c = exchange(&pool, &circuit, server.key(true)).await;
        assert!(matches!(c, Err(PoolError::Overflow(_))), "{c:?}");
        server.gate.add_permits(2);
        join(a).await;
        join(b).await;
        assert_eq!(server.accepts(), 2);
    }

    /// With the cap held by another endpoint's connection, a request to an endpoint that has
    /// none opens one beyond the cap, as Envoy does, instead of waiting for the other to close
    /// (an HTTP/2 connection would stay open until its idle timeout).
    #[tokio::test]
    async fn an_endpoint_without_a_connection_gets_one_beyond_the_cap() {
        for http2 in [false, true] {
            let (a, b) = (
                Server::start(http2, false).await,
                Server::start(http2, false).await,
            );
            let pool = pool();
            let circuit = ClusterCircuit::new(limits(1, 1, 0));
            exchange(&pool, &circuit, a.key(http2)).await.expect("to a");
            exchange(&pool, &circuit, b.key(http2)).await.expect("to b");
            exchange(&pool, &circuit, b.key(http2))
                .await
                .expect("to b again");
            let s = circuit.stats.snapshot();
            assert_eq!(
                (s.upstream_cx_total, s.upstream_cx_active),
                (2, 2),
                "{http2}"
            );
            assert_eq!(s.upstream_cx_overflow, 1, "{http2}");
            assert_eq!((a.open(), b.open()), (1, 1), "{http2}");
        }
    }

    /// An upgraded connection (WebSocket) counts against `maxConnections` until its tunnel
    /// closes, though its pool task ended at the upgrade.
    #[tokio::test]
    async fn an_upgraded_connection_keeps_its_slot() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = service_fn(|mut req: Request<Incoming>| async move {
                tokio::spawn(async move {
                    // Keep the server side of the tunnel open until the client closes it.
                    if let Ok(up) = hyper::upgrade::on(&mut req).await {
                        let mut up = TokioIo::new(up);
                        let mut sink = tokio::io::sink();
                        let _ = tokio::io::copy(&mut up, &mut sink).await;
                    }
                });
                let resp = Response::builder()
                    .status(http::StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .body(empty())
                    .expect("101");
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
        let pool = pool();
        let circuit = ClusterCircuit::new(limits(1, 1, 0));
        let req = Request::builder()
            .uri(format!("http://{addr}/ws"))
            .header("host", addr.to_string())
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(empty())
            .expect("request");
        let key = PoolKey {
            endpoint: EndpointAddr(addr),
            bind: None,
            http2: false,
            tls: None,
        };
        let mut x = tokio::time::timeout(
            Duration::from_secs(10),
            pool.send_limited(&circuit, key, req, true),
        )
        .await
        .expect("within 10 s")
        .expect("101");
        assert_eq!(x.response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        let upgraded =
            tokio::time::timeout(Duration::from_secs(10), hyper::upgrade::on(&mut x.response))
                .await
                .expect("within 10 s")
                .expect("upgraded");
        // Well after the upgrade, the tunnel still holds the cluster's only slot.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(circuit.stats.snapshot().upstream_cx_active, 1);
        assert!(circuit.try_open().is_none());
        drop(upgraded);
        wait_for(|| circuit.stats.snapshot().upstream_cx_active == 0).await;
    }

    #[tokio::test]
    async fn different_clusters_never_share_a_connection() {
        let server = Server::start(false, false).await;
        let pool = pool();
        let (v1, v2) = (
            ClusterCircuit::new(Limits::default()),
            ClusterCircuit::new(Limits::default()),
        );
        exchange(&pool, &v1, server.key(false)).await.expect("v1");
        exchange(&pool, &v2, server.key(false)).await.expect("v2");
        exchange(&pool, &v1, server.key(false))
            .await
            .expect("v1 again");
        assert_eq!(server.accepts(), 2);
        assert_eq!(v1.stats.snapshot().upstream_cx_total, 1);
        assert_eq!(v2.stats.snapshot().upstream_cx_total, 1);
    }

    #[tokio::test]
    async fn keepalive_and_connect_timeout_come_from_the_cluster() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let circuit = ClusterCircuit::new(Limits {
            connect_timeout: Some(Duration::from_millis(1234)),
            tcp_keepalive: Some(Keepalive {
                probes: Some(4),
                time: Some(Duration::from_secs(7)),
                interval: Some(Duration::from_secs(3)),
            }),
            ..Limits::default()
        });
        let dial = Dial::of(Some(&circuit), Duration::from_secs(10));
        assert_eq!(dial.timeout, Duration::from_millis(1234));
        let addr = EndpointAddr(listener.local_addr().expect("addr"));
        let (io, _, _permit) = connect_limited(&circuit, addr, None, Duration::from_secs(10), None)
            .await
            .expect("connect");
        let UpstreamIo::Plain(s) = io else {
            panic!("plaintext expected");
        };
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            sock.tcp_keepalive_time().expect("idle"),
            Duration::from_secs(7)
        );
        assert_eq!(
            sock.tcp_keepalive_interval().expect("interval"),
            Duration::from_secs(3)
        );
        assert_eq!(sock.tcp_keepalive_retries().expect("probes"), 4);
        assert_eq!(circuit.stats.snapshot().upstream_cx_active, 1);
    }
}
