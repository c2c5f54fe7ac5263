//! Mutual TLS between sidecars on the data path: Istio's auto mTLS.
//!
//! - [`MeshTls`] is the sidecar's identity made ready for traffic: the inbound server config
//!   (built once) and the outbound client configs (one per ALPN and expected server identity,
//!   built on first use and cached). Both read the current certificate from the
//!   [`IdentityManager`] at every handshake, so a rotation reaches new connections at once and
//!   established ones keep theirs.
//! - [`PeerTls`] says how to reach one endpoint: Istio's SNI
//!   (`outbound_.<port>_.<subset>_.<fqdn>`) and the SPIFFE id its sidecar must present. It is
//!   pure data, computed once per config snapshot ([`PeerTls::for_endpoint`]), and part of the
//!   pool key, so plaintext and mTLS connections never mix.
//! - [`read_client_hello`] reads an inbound ClientHello without consuming it, so the inbound side
//!   can terminate Istio mTLS (an `istio*` ALPN) and pass any other TLS through to the app.
//! - [`MeshPeer`] is what an inbound handshake proves: the client's principal and the
//!   `x-forwarded-client-cert` element Istio's sidecar appends for it.
//!
//! Costs: a handshake is one ECDHE and two ECDSA P-256 signatures each way, plus a chain
//! verification; connections are pooled, so HTTP pays it once per upstream connection. Looking
//! up a client config takes a mutex briefly, only when a new connection is dialled. Private keys
//! never leave the identity crate's types and are never logged.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use identity::tls::{
    self as itls, ALPN_ISTIO, ALPN_ISTIO_H2, ALPN_ISTIO_HTTP10, ALPN_ISTIO_HTTP11,
};
use identity::{AppProtocol, ExpectedPeer, IdentityManager, SpiffeId};
use rustls::server::Acceptor;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::config::PeerInfo;
use crate::originate::Origination;

/// Istio's ALPN values that mark a ClientHello as mesh mTLS (what Istio's inbound listener
/// matches on). `istio-peer-exchange` is recognised here, though not negotiated: Envoy clients
/// that offer it also offer `istio` or `istio-http/*`.
pub const ISTIO_ALPNS: &[&[u8]] = &[
    b"istio-peer-exchange",
    ALPN_ISTIO,
    ALPN_ISTIO_HTTP10,
    ALPN_ISTIO_HTTP11,
    ALPN_ISTIO_H2,
];

/// Longest a TLS handshake may take, inbound or outbound (after the TCP connect).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes read while looking for the end of a ClientHello. Hellos with post-quantum key
/// shares are about 2 KiB; anything beyond two full records is not a client we serve.
const MAX_CLIENT_HELLO: usize = 32 * 1024;

/// Most cached client configs; beyond it the cache starts over (each config is a few hundred
/// bytes, and there is one per distinct destination identity and protocol).
const MAX_CLIENT_CONFIGS: usize = 1024;

/// Which SPIFFE id an endpoint's sidecar must present.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerIdentity {
    /// Unknown: any id under the mesh roots and in our trust domain (what Istio does without
    /// service accounts).
    AnyInMesh,
    /// This id exactly (the endpoint's identity, or its workload's service account).
    Exactly(SpiffeId),
    /// The configured identity is not a SPIFFE id we can check: every server is refused.
    Unusable(Arc<str>),
}

impl ServerIdentity {
    fn expected(&self) -> ExpectedPeer {
        match self {
            ServerIdentity::AnyInMesh => ExpectedPeer::AnyInMesh,
            ServerIdentity::Exactly(id) => ExpectedPeer::exactly(id.clone()),
            ServerIdentity::Unusable(_) => ExpectedPeer::OneOf(Vec::new()),
        }
    }
}

/// How to reach one endpoint with Istio mTLS: the SNI to send and the identity to expect; or,
/// for a DestinationRule's `SIMPLE`/`MUTUAL` TLS, how to originate TLS ([`Origination`]).
///
/// Built once per snapshot; shared as `Arc` by the cluster, the target and the pool key. Equal
/// values are interchangeable connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerTls {
    /// `outbound_.<port>_.<subset>_.<fqdn>`, as a server name.
    pub sni: ServerName<'static>,
    /// Who must answer.
    pub identity: ServerIdentity,
    /// TLS origination instead of Istio mTLS (then `sni` and `identity` are not used: the
    /// origination has its own); needs no identity of ours.
    pub origination: Option<Arc<Origination>>,
}

impl PeerTls {
    /// Originates TLS with `origination` toward the endpoint at `ip`.
    pub fn originating(origination: Arc<Origination>, ip: std::net::IpAddr) -> Arc<PeerTls> {
        Arc::new(PeerTls {
            sni: ServerName::IpAddress(ip.into()),
            identity: ServerIdentity::AnyInMesh,
            origination: Some(origination),
        })
    }

    /// Whether the endpoint runs a sidecar we talk Istio mTLS to (not TLS origination).
    pub fn is_mesh(&self) -> bool {
        self.origination.is_none()
    }
}

/// The TLS of a connection to an endpoint whose settings are `ep`: TLS origination always;
/// Istio mTLS when this proxy has an identity (`mesh`), else none.
pub fn upstream_peer(
    mesh: Option<&Arc<MeshTls>>,
    ep: &Option<Arc<PeerTls>>,
) -> Option<Arc<PeerTls>> {
    match ep {
        Some(p) if !p.is_mesh() => Some(p.clone()),
        Some(p) => mesh.map(|_| p.clone()),
        None => None,
    }
}

impl PeerTls {
    /// The mTLS settings of endpoint `ep` of service `fqdn` on service port `port` (subset
    /// `subset`, empty for none), or `None` when the endpoint takes plaintext: its `tlsMode` or
    /// its workload's is not `istio`, or its PeerAuthentication is DISABLE on the workload port
    /// `port` reaches (`plaintextPorts`). The expected identity is the endpoint's `identity`,
    /// else its workload's service account, else any id in the mesh.
    pub fn for_endpoint(
        port: u16,
        subset: &str,
        fqdn: &str,
        ep: &xds::Endpoint,
        workload: Option<&PeerInfo>,
    ) -> Option<Arc<PeerTls>> {
        if ep.tls_mode != xds::TlsMode::Istio
            || ep.plaintext_ports.contains(&port)
            || workload.is_some_and(|w| !w.in_mesh)
        {
            return None;
        }
        let sni = match itls::outbound_server_name(port, subset, fqdn) {
            Ok(s) => s,
            Err(error) => {
                // Hostnames and subsets are validated as DNS names, so this is a bug upstream.
                tracing::warn!(%error, fqdn, "no valid SNI for endpoint; sending plaintext");
                return None;
            }
        };
        let configured = ep
            .identity
            .as_deref()
            .or_else(|| workload.map(|w| &*w.principal).filter(|p| *p != "unknown"));
        let identity = match configured {
            None => ServerIdentity::AnyInMesh,
            Some(text) => match SpiffeId::parse(text) {
                Ok(id) => ServerIdentity::Exactly(id),
                Err(error) => {
                    tracing::debug!(%error, endpoint = %ep.address, "endpoint identity unusable; its connections will be refused");
                    ServerIdentity::Unusable(Arc::from(text))
                }
            },
        };
        Some(Arc::new(PeerTls {
            sni,
            identity,
            origination: None,
        }))
    }
}

/// Why an mTLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The TLS config could not be built (no usable certificate).
    #[error("TLS config: {0}")]
    Config(#[from] identity::Error),
    /// The handshake failed: a refused certificate, an alert from the peer, a reset.
    #[error("TLS handshake: {0}")]
    Io(#[source] io::Error),
    /// The handshake did not finish within [`HANDSHAKE_TIMEOUT`].
    #[error("TLS handshake timed out")]
    Timeout,
    /// The handshake finished but the peer's identity could not be read.
    #[error("TLS peer: {0}")]
    Peer(#[source] identity::Error),
    /// Any mesh id was acceptable, but the peer's is from another trust domain.
    #[error("peer is {peer}, outside trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// What the peer presented.
        peer: Box<SpiffeId>,
        /// Ours.
        trust_domain: String,
    },
}

impl HandshakeError {
    /// `upstream_transport_failure_reason`, in Envoy's shape: `TLS_error:|<reason>:TLS_error_end`.
    pub fn failure_reason(&self) -> String {
        let reason = match self {
            HandshakeError::Io(e) => match tls_error_in(e) {
                Some(t) => t.to_string(),
                None => e.to_string(),
            },
            other => other.to_string(),
        };
        format!("TLS_error:|{reason}:TLS_error_end")
    }
}

/// The rustls error behind `e`, if any: in its source chain, or wrapped in an `io::Error` there
/// (tokio-rustls reports handshake failures as `io::Error` holding a `rustls::Error`).
pub fn tls_error_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(t) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// What an inbound mTLS handshake proved about the client, shared by every request on the
/// connection.
#[derive(Debug, Clone)]
pub struct MeshPeer {
    /// The client's SPIFFE id (`source_principal`).
    pub principal: Arc<str>,
    /// The XFCC element Istio's inbound sidecar appends:
    /// `By=<own id>;Hash=<sha256 of the client leaf>;Subject="";URI=<client id>`.
    pub xfcc: HeaderValue,
}

/// What an inbound ClientHello asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The SNI, if any (`requested_server_name`).
    pub sni: Option<Arc<str>>,
    /// It offers one of Istio's ALPN values ([`ISTIO_ALPNS`]): a mesh client.
    pub istio: bool,
}

/// Reads from `io` until the ClientHello that `already` starts is complete, and returns what it
/// asks for together with every byte read (replay them with [`crate::detect::Rewind`]). `None`
/// when the bytes are not a ClientHello rustls can parse, the client stops sending for
/// `timeout`, or the hello is larger than any client we serve; the caller then treats the
/// connection as opaque TLS.
///
/// The hello is parsed here once and again by the handshake that may follow (a few
/// microseconds), which keeps the handshake on tokio-rustls' own path.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    io: &mut S,
    already: Bytes,
    timeout: Duration,
) -> io::Result<(Option<ClientHello>, Bytes)> {
    let mut buf = BytesMut::from(already);
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        while fed < buf.len() {
            let mut rest = &buf[fed..];
            match acceptor.read_tls(&mut rest) {
                Ok(0) | Err(_) => return Ok((None, buf.freeze())),
                Ok(n) => fed += n,
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let info = ClientHello {
                    sni: hello.server_name().map(Arc::from),
                    istio: hello
                        .alpn()
                        .is_some_and(|mut offered| offered.any(|p| ISTIO_ALPNS.contains(&p))),
                };
                return Ok((Some(info), buf.freeze()));
            }
            Ok(None) => {}
            Err(_) => return Ok((None, buf.freeze())),
        }
        if buf.len() >= MAX_CLIENT_HELLO {
            return Ok((None, buf.freeze()));
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => return Ok((None, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// The sidecar's identity ready for the data path; shared as `Arc` by both listeners and the
/// pool.
pub struct MeshTls {
    manager: Arc<IdentityManager>,
    own: Arc<str>,
    acceptor: TlsAcceptor,
    clients: Mutex<HashMap<(AppProtocol, ServerIdentity), Arc<ClientConfig>>>,
    /// A gateway's ISTIO_MUTUAL server config: the inbound one, offering HTTP's ALPN too.
    gateway_server: std::sync::OnceLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("id", &self.own)
            .finish_non_exhaustive()
    }
}

impl MeshTls {
    /// Builds the inbound server config for `manager`'s identity. Costs a few small tables,
    /// once.
    pub fn new(manager: Arc<IdentityManager>) -> Result<Arc<MeshTls>, identity::Error> {
        let server: Arc<ServerConfig> = itls::server_config(&manager)?;
        Ok(Arc::new(MeshTls {
            own: Arc::from(manager.id().to_string()),
            manager,
            acceptor: TlsAcceptor::from(server),
            clients: Mutex::default(),
            gateway_server: std::sync::OnceLock::new(),
        }))
    }

    /// The server config of a gateway's ISTIO_MUTUAL servers: the workload certificate, a mesh
    /// client certificate required (as inbound), offering `h2` and `http/1.1` besides Istio's
    /// ALPN. Built on first use, then shared.
    pub fn gateway_server_config(&self) -> Result<Arc<ServerConfig>, identity::Error> {
        if let Some(c) = self.gateway_server.get() {
            return Ok(c.clone());
        }
        let mut c = (*itls::server_config(&self.manager)?).clone();
        c.alpn_protocols
            .extend([b"h2".to_vec(), b"http/1.1".to_vec()]);
        Ok(self.gateway_server.get_or_init(|| Arc::new(c)).clone())
    }

    /// The identity manager (current certificate, rotation).
    pub fn manager(&self) -> &Arc<IdentityManager> {
        &self.manager
    }

    /// Our own SPIFFE id as a label value (`destination_principal` inbound).
    pub fn own_principal(&self) -> &Arc<str> {
        &self.own
    }

    /// The client config for `protocol` toward `identity`: built on first use, then shared.
    fn client_config(
        &self,
        protocol: AppProtocol,
        identity: &ServerIdentity,
    ) -> Result<Arc<ClientConfig>, identity::Error> {
        let key = (protocol, identity.clone());
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let config =
            itls::client_config(&self.manager, identity.expected(), protocol.client_alpn())?;
        let mut map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CLIENT_CONFIGS {
            map.clear();
        }
        Ok(map.entry(key).or_insert(config).clone())
    }

    /// Runs the client side of an mTLS handshake with `peer` over `io`, offering Istio's ALPN
    /// for `protocol`. Returns the stream and the server's verified principal.
    pub async fn connect<S>(
        &self,
        io: S,
        peer: &PeerTls,
        protocol: AppProtocol,
    ) -> Result<(client::TlsStream<S>, Arc<str>), HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.client_config(protocol, &peer.identity)?;
        let connect = TlsConnector::from(config).connect(peer.sni.clone(), io);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
            Err(_) => return Err(HandshakeError::Timeout),
            Ok(r) => r.map_err(HandshakeError::Io)?,
        };
        let server = itls::peer_identity(stream.get_ref().1).map_err(HandshakeError::Peer)?;
        let ours = self.manager.id().trust_domain();
        if peer.identity == ServerIdentity::AnyInMesh && server.id.trust_domain() != ours {
            return Err(HandshakeError::ForeignTrustDomain {
                peer: Box::new(server.id),
                trust_domain: ours.to_string(),
            });
        }
        Ok((stream, Arc::from(server.id.to_string())))
    }

    /// Runs the server side of an mTLS handshake over `io` (whose ClientHello may have been
    /// peeked and replayed). Returns the stream, what the client proved, and the protocol its
    /// ALPN announced (`None`: sniff it).
    pub async fn accept<S>(
        &self,
        io: S,
    ) -> Result<(server::TlsStream<S>, MeshPeer, Option<AppProtocol>), HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(io)).await {
            Err(_) => return Err(HandshakeError::Timeout),
            Ok(r) => r.map_err(HandshakeError::Io)?,
        };
        let conn = stream.get_ref().1;
        let client = itls::peer_identity(conn).map_err(HandshakeError::Peer)?;
        let protocol = conn.alpn_protocol().and_then(AppProtocol::from_alpn);
        let xfcc = client.xfcc(self.manager.id());
        let xfcc = HeaderValue::try_from(xfcc).map_err(|_| {
            // SPIFFE ids and hex are visible ASCII; this cannot happen.
            HandshakeError::Io(io::Error::other("XFCC value is not a valid header value"))
        })?;
        let peer = MeshPeer {
            principal: Arc::from(client.id.to_string()),
            xfcc,
        };
        Ok((stream, peer, protocol))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(tls_mode: xds::TlsMode, identity: Option<&str>) -> xds::Endpoint {
        xds::Endpoint {
            address: "10.0.0.1".parse().expect("ip"),
            ports: Default::default(),
            workload_uid: None,
            labels: Default::default(),
            tls_mode,
            identity: identity.map(str::to_string),
            plaintext_ports: Default::default(),
        }
    }

    #[test]
    fn endpoint_tls_follows_tls_mode_and_identity() {
        let fqdn = "httpbin-service.default.svc.cluster.local";
        let p = PeerTls::for_endpoint(80, "", fqdn, &endpoint(xds::TlsMode::Istio, None), None)
            .expect("istio endpoint");
        assert_eq!(
            p.sni.to_str(),
            "outbound_.80_._.httpbin-service.default.svc.cluster.local"
        );
        assert_eq!(p.identity, ServerIdentity::AnyInMesh);
        assert!(
            PeerTls::for_endpoint(80, "", fqdn, &endpoint(xds::TlsMode::Disabled, None), None)
                .is_none()
        );
        // A port-level DISABLE: plaintext on that service port only.
        let mut split = endpoint(xds::TlsMode::Istio, None);
        split.plaintext_ports.insert(8000);
        assert!(PeerTls::for_endpoint(8000, "", fqdn, &split, None).is_none());
        assert!(PeerTls::for_endpoint(9000, "", fqdn, &split, None).is_some());
        let mut w = PeerInfo::unknown();
        w.in_mesh = true;
        w.principal = Arc::from("spiffe://cluster.local/ns/default/sa/httpbin");
        let p = PeerTls::for_endpoint(
            80,
            "v1",
            fqdn,
            &endpoint(xds::TlsMode::Istio, None),
            Some(&w),
        )
        .expect("istio endpoint");
        assert_eq!(
            p.identity,
            ServerIdentity::Exactly(
                SpiffeId::parse("spiffe://cluster.local/ns/default/sa/httpbin").expect("id")
            )
        );
        assert!(p.sni.to_str().starts_with("outbound_.80_.v1_."));
        let ep = endpoint(
            xds::TlsMode::Istio,
            Some("spiffe://cluster.local/ns/other/sa/x"),
        );
        let p = PeerTls::for_endpoint(80, "", fqdn, &ep, Some(&w)).expect("istio endpoint");
        assert_eq!(
            p.identity,
            ServerIdentity::Exactly(
                SpiffeId::parse("spiffe://cluster.local/ns/other/sa/x").expect("id")
            )
        );
        w.in_mesh = false;
        assert!(PeerTls::for_endpoint(80, "", fqdn, &ep, Some(&w)).is_none());
        let ep = endpoint(xds::TlsMode::Istio, Some("spiffe://td/not-k8s"));
        let p = PeerTls::for_endpoint(80, "", fqdn, &ep, None).expect("istio endpoint");
        assert!(matches!(p.identity, ServerIdentity::Unusable(_)));
    }

    #[tokio::test]
    async fn client_hello_is_read_and_replayed() {
        let ca = Arc::new(identity::CertificateAuthority::generate("cluster.local").expect("ca"));
        let id = SpiffeId::new("cluster.local", "default", "sleep").expect("id");
        let provider = Arc::new(identity::LocalCaProvider::new(ca, id.clone()));
        let manager = IdentityManager::new(id, provider, Default::default())
            .await
            .expect("manager");
        let mesh = MeshTls::new(manager).expect("mesh tls");
        let peer = PeerTls {
            origination: None,
            sni: itls::outbound_server_name(80, "", "a.b.svc.cluster.local").expect("sni"),
            identity: ServerIdentity::AnyInMesh,
        };
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let connect = tokio::spawn(async move {
            let _ = mesh.connect(client, &peer, AppProtocol::Http1).await;
        });
        let (hello, bytes) = read_client_hello(&mut server, Bytes::new(), Duration::from_secs(5))
            .await
            .expect("read");
        let hello = hello.expect("a client hello");
        assert_eq!(
            hello.sni.as_deref(),
            Some("outbound_.80_._.a.b.svc.cluster.local")
        );
        assert!(hello.istio);
        assert_eq!(bytes[0], 0x16);
        drop(server);
        let _ = connect.await;

        let (mut a, mut b) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"\x16\x03\x01\x00\x05hello")
            .await
            .expect("write");
        let (hello, bytes) = read_client_hello(&mut b, Bytes::new(), Duration::from_millis(50))
            .await
            .expect("read");
        assert!(hello.is_none());
        assert_eq!(&bytes[..], b"\x16\x03\x01\x00\x05hello");
    }
}
