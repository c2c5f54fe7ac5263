//! Original destination of a captured connection.
//!
//! Under `ama iptables` every connection reaches 15001/15006 through a REDIRECT; the kernel keeps
//! where it was going, and `SO_ORIGINAL_DST` reads it back. Tests have no iptables, so listeners
//! take any [`OrigDstResolver`]: [`SoOriginalDst`] in production, [`StaticOrigDst`] in the
//! in-process harness (the client registers the destination it means before it connects through).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::TcpStream;

use crate::addr::{ClientAddr, OrigDstAddr};

/// Finds where an accepted connection was originally headed.
pub trait OrigDstResolver: Send + Sync + 'static {
    /// The original destination of `stream`, accepted from `client`.
    fn orig_dst(&self, stream: &TcpStream, client: ClientAddr) -> io::Result<OrigDstAddr>;
}

/// Reads `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6) from the socket.
#[derive(Debug, Default, Clone, Copy)]
pub struct SoOriginalDst;

impl OrigDstResolver for SoOriginalDst {
    fn orig_dst(&self, stream: &TcpStream, _client: ClientAddr) -> io::Result<OrigDstAddr> {
        let sock = socket2::SockRef::from(stream);
        let local = stream.local_addr()?;
        let addr = if local.is_ipv4() {
            sock.original_dst_v4()?
        } else {
            sock.original_dst_v6()?
        };
        let addr = addr.as_socket().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "original destination is not an IP address",
            )
        })?;
        Ok(OrigDstAddr(addr))
    }
}

/// A resolver for tests: destinations registered per client address, else a default, else the
/// listener's own address (what `SO_ORIGINAL_DST` returns for a connection that was not
/// redirected).
#[derive(Debug, Default)]
pub struct StaticOrigDst {
    default: Mutex<Option<SocketAddr>>,
    by_client: Mutex<HashMap<SocketAddr, SocketAddr>>,
}

impl StaticOrigDst {
    /// A resolver that answers `default` for every connection not registered otherwise.
    pub fn new(default: Option<SocketAddr>) -> StaticOrigDst {
        StaticOrigDst {
            default: Mutex::new(default),
            by_client: Mutex::default(),
        }
    }

    /// Changes the default destination.
    pub fn set_default(&self, dst: Option<SocketAddr>) {
        *self.default.lock().unwrap_or_else(|e| e.into_inner()) = dst;
    }

    /// Says that the connection from `client` was headed to `dst`.
    pub fn register(&self, client: SocketAddr, dst: SocketAddr) {
        self.by_client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client, dst);
    }
}

impl OrigDstResolver for StaticOrigDst {
    fn orig_dst(&self, stream: &TcpStream, client: ClientAddr) -> io::Result<OrigDstAddr> {
        if let Some(dst) = self
            .by_client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client.0)
        {
            return Ok(OrigDstAddr(dst));
        }
        if let Some(dst) = *self.default.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(OrigDstAddr(dst));
        }
        stream.local_addr().map(OrigDstAddr)
    }
}
