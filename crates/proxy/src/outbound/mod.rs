//! The outbound side (15001): connections from the local app to other services.
//!
//! The original destination is a service VIP:port (or anything else, passed through). HTTP is
//! routed per request ([`crate::route::outbound_http`]): endpoint chosen by the service's load
//! balancing policy, connect failures retried on another endpoint (Istio's default policy), the
//! `server` header set to the proxy's. Opaque TCP goes to one endpoint for the connection's life.

pub mod router;
pub mod routes;

use std::sync::Arc;

use crate::ProxyInputs;
use crate::http::Direction;
use crate::listener::Listener;
use crate::orig_dst::OrigDstResolver;

/// Binds the outbound capture listener on `pi.cfg.outbound_addr`.
pub async fn bind(
    pi: Arc<ProxyInputs>,
    orig_dst: Arc<dyn OrigDstResolver>,
) -> std::io::Result<Listener> {
    Listener::bind(Direction::Outbound, pi.cfg.outbound_addr, orig_dst, pi).await
}

pub mod fault;
pub mod replay;
pub mod retry;
