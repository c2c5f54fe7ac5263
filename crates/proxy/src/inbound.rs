//! The inbound side (15006): connections from other pods to the local app.
//!
//! Everything is forwarded to the app on the original destination port, from 127.0.0.6 to the
//! pod address (the capture rules let that source through), or from 127.0.0.1 to 127.0.0.1 when
//! configured so. `x-envoy-*` request headers from peers outside the mesh are removed. When mTLS
//! arrives (issue 4) this is where it is terminated: the acceptor sets the SNI and peer identity
//! on the connection context before the HTTP server or the TCP copy sees it.

use std::sync::Arc;

use crate::ProxyInputs;
use crate::http::Direction;
use crate::listener::Listener;
use crate::orig_dst::OrigDstResolver;

/// Binds the inbound capture listener on `pi.cfg.inbound_addr`.
pub async fn bind(
    pi: Arc<ProxyInputs>,
    orig_dst: Arc<dyn OrigDstResolver>,
) -> std::io::Result<Listener> {
    Listener::bind(Direction::Inbound, pi.cfg.inbound_addr, orig_dst, pi).await
}
