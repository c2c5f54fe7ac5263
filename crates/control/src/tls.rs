//! TLS of the control plane's own servers: the istiod serving certificate and the TLS accept
//! loop shared by the secure gRPC port (15012) and the injection webhook (15017).
//!
//! The serving certificate is issued by the mesh CA itself for DNS names and IP addresses
//! (`istiod.istio-system.svc`, `--dns-name` extras, the local address under `ama up`), as istiod
//! signs its own DNS certificate; clients verify it against the mesh root
//! (`/var/run/secrets/istio/root-cert.pem` in a pod, `<state>/root-cert.pem` locally). Client
//! certificates are not asked for: callers authenticate with a bearer token.
//!
//! [`ServingCertificate`] re-issues the certificate at half life, on the first handshake past it
//! (one key generation and one signature, well under a millisecond), so no timer task is needed.
//!
//! [`TlsIncoming`] accepts TCP, runs each handshake on its own task (a slow or silent client holds
//! up nobody, and is dropped after [`HANDSHAKE_TIMEOUT`]), and yields finished streams, in the
//! form tonic's `serve_with_incoming_shutdown` takes.
//!
//! I/O: the listener's sockets. The private key never appears in `Debug` output or logs.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures_util::Stream;
use identity::CertificateAuthority;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Istio's name of the control plane's Service in its namespace, the first DNS name of the
/// serving certificate.
pub const ISTIOD_SERVICE: &str = "istiod.istio-system.svc";
/// Lifetime of the serving certificate (re-issued at half life).
pub const SERVING_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress per listener; more wait in the kernel's accept queue.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA could not issue the serving certificate.
    #[error("issuing the serving certificate for {names}: {source}")]
    Issue {
        /// The names asked for.
        names: String,
        /// Why.
        source: identity::Error,
    },
    /// rustls refused the key or the protocol set.
    #[error("serving certificate: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The names the serving certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingNames {
    /// DNS SANs, [`ISTIOD_SERVICE`] first.
    pub dns: Vec<String>,
    /// IP SANs (the local address under `ama up`).
    pub ips: Vec<IpAddr>,
}

impl ServingNames {
    /// [`ISTIOD_SERVICE`], its `.cluster.local` form, `istiod` and `extra` names (deduplicated,
    /// empty entries dropped); an extra that parses as an IP address becomes an IP SAN.
    pub fn istiod(extra: impl IntoIterator<Item = impl AsRef<str>>) -> ServingNames {
        let mut names = ServingNames {
            dns: Vec::new(),
            ips: Vec::new(),
        };
        let base = [
            ISTIOD_SERVICE.to_string(),
            format!("{ISTIOD_SERVICE}.cluster.local"),
            "istiod".to_string(),
        ];
        for name in base
            .into_iter()
            .chain(extra.into_iter().map(|n| n.as_ref().trim().to_string()))
        {
            names.add(&name);
        }
        names
    }

    /// Adds one name: an IP SAN when it parses as an address, else a DNS SAN. Duplicates and
    /// empty names are skipped.
    pub fn add(&mut self, name: &str) {
        let name = name.trim();
        if name.is_empty() {
            return;
        }
        match name.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) if !self.ips.contains(&ip) => self.ips.push(ip),
            Ok(_) => {}
            Err(_) if !self.dns.iter().any(|d| d == name) => self.dns.push(name.to_string()),
            Err(_) => {}
        }
    }

    fn describe(&self) -> String {
        let ips = self.ips.iter().map(ToString::to_string);
        self.dns
            .iter()
            .cloned()
            .chain(ips)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The control plane's serving certificate, issued by the mesh CA and renewed at half life.
///
/// A rustls [`ResolvesServerCert`]: build [`server_config`]s from it once; every handshake reads
/// the current certificate.
pub struct ServingCertificate {
    ca: Arc<CertificateAuthority>,
    names: ServingNames,
    ttl: Duration,
    current: ArcSwap<Issued>,
    renewing: Mutex<()>,
}

struct Issued {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
}

impl ServingCertificate {
    /// Issues the first certificate for `names`, valid `ttl` (also capped by the CA).
    pub fn new(
        ca: Arc<CertificateAuthority>,
        names: ServingNames,
        ttl: Duration,
    ) -> Result<Arc<ServingCertificate>, TlsError> {
        let first = issue(&ca, &names, ttl)?;
        tracing::info!(
            names = %names.describe(),
            "serving certificate issued by the mesh CA"
        );
        Ok(Arc::new(ServingCertificate {
            ca,
            names,
            ttl,
            current: ArcSwap::from_pointee(first),
            renewing: Mutex::new(()),
        }))
    }

    /// The names the certificate carries.
    pub fn names(&self) -> &ServingNames {
        &self.names
    }

    /// The current certificate and key, renewed first when past half life. On a renewal
    /// failure the old certificate is kept (and the failure logged) until it expires.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let issued = self.current.load();
        if SystemTime::now() < issued.renew_at {
            return Arc::clone(&issued.key);
        }
        // One renewal at a time; the others keep serving the old certificate meanwhile.
        if let Ok(_guard) = self.renewing.try_lock()
            && SystemTime::now() >= self.current.load().renew_at
        {
            match issue(&self.ca, &self.names, self.ttl) {
                Ok(next) => {
                    tracing::info!(names = %self.names.describe(), "serving certificate renewed");
                    self.current.store(Arc::new(next));
                }
                Err(error) => tracing::warn!(%error, "serving certificate renewal failed"),
            }
        }
        Arc::clone(&self.current.load().key)
    }
}

impl fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("names", &self.names)
            .field("ttl", &self.ttl)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn issue(
    ca: &CertificateAuthority,
    names: &ServingNames,
    ttl: Duration,
) -> Result<Issued, TlsError> {
    let (chain, key) = ca
        .issue_server_certificate(&names.dns, &names.ips, ttl)
        .map_err(|source| TlsError::Issue {
            names: names.describe(),
            source,
        })?;
    let signing_key = identity::tls::crypto_provider()
        .key_provider
        .load_private_key(key.to_der())?;
    let certified = CertifiedKey::new(chain.tls_chain(), signing_key);
    let lifetime = ttl.min(ca.max_ttl());
    Ok(Issued {
        key: Arc::new(certified),
        renew_at: SystemTime::now() + lifetime / 2,
    })
}

/// A TLS 1.2/1.3 server config (aws-lc-rs) presenting `cert`, without client certificates,
/// offering `alpn` (`h2` for gRPC; `h2` and `http/1.1` for the webhook).
pub fn server_config(
    cert: &Arc<ServingCertificate>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(cert) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A TLS connection accepted by [`TlsIncoming`], carrying its TCP addresses for tonic
/// (`Request::remote_addr`).
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: tonic::transport::server::TcpConnectInfo,
}

impl TlsConnection {
    /// The client's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.info.remote_addr
    }

    /// The protocol the client and server agreed on by ALPN, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }
}

impl fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnection")
            .field("remote_addr", &self.info.remote_addr)
            .finish_non_exhaustive()
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The TLS connections of one listener, handshaken concurrently, until `stop` is cancelled.
///
/// A [`Stream`] of `io::Result<TlsConnection>` that never yields an error: failed handshakes
/// are logged at debug level (scanners and health checks make many) and dropped.
pub struct TlsIncoming {
    connections: mpsc::Receiver<TlsConnection>,
}

impl TlsIncoming {
    /// Starts accepting on `listener` with `config`; `what` names the server in logs.
    pub fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        what: &'static str,
        stop: CancellationToken,
    ) -> TlsIncoming {
        let (tx, connections) = mpsc::channel(64);
        tokio::spawn(accept_loop(listener, config, what, stop, tx));
        TlsIncoming { connections }
    }
}

impl fmt::Debug for TlsIncoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIncoming").finish_non_exhaustive()
    }
}

impl Stream for TlsIncoming {
    type Item = std::io::Result<TlsConnection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.connections.poll_recv(cx).map(|c| c.map(Ok))
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    what: &'static str,
    stop: CancellationToken,
    tx: mpsc::Sender<TlsConnection>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let Ok(permit) = Arc::clone(&pending).acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("{what} accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let info = tonic::transport::server::TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: Some(peer),
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "{what}: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "{what}: TLS handshake timed out");
                        return;
                    }
                },
            };
            drop(permit);
            let _ = tx.send(TlsConnection { stream, info }).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let names = ServingNames::istiod(["10.244.0.1", "istiod.mesh.svc", "", "istiod", "[::1]"]);
        assert_eq!(
            names.dns,
            [
                "istiod.istio-system.svc",
                "istiod.istio-system.svc.cluster.local",
                "istiod",
                "istiod.mesh.svc"
            ]
        );
        assert_eq!(
            names.ips,
            [
                "10.244.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn renews_past_half_life() {
        let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
        let cert = ServingCertificate::new(
            ca,
            ServingNames::istiod(["127.0.0.1"]),
            Duration::from_secs(3600),
        )
        .unwrap();
        let first = cert.current();
        assert!(Arc::ptr_eq(&first, &cert.current()));
        cert.current.store(Arc::new(Issued {
            key: Arc::clone(&first),
            renew_at: SystemTime::now() - Duration::from_secs(1),
        }));
        let second = cert.current();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_ne!(first.cert[0], second.cert[0]);
        assert!(format!("{cert:?}").contains("[redacted]"));
    }
}
