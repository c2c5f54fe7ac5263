//! The outbound side (15001): connections from the local app to other services.
//!
//! The original destination is a service VIP:port (or anything else, passed through). The
//! pipeline's stages, each in its own file:
//!
//! - [`router`]: service → VirtualService route → destination → subset cluster; opaque TCP by
//!   the VirtualService's `tcp` routes;
//! - [`routes`]: the compiled route table, Envoy's matching of Istio's route matches;
//! - [`actions`]: what a route does to the request and response (rewrite, header edits,
//!   redirect, direct response, CORS);
//! - [`fault`]: delays and aborts;
//! - [`retry`] and [`replay`]: when an attempt is tried again, and the body it is sent with;
//! - then [`crate::balance`] (with [`crate::outlier`] and [`crate::hash_lb`]) picks the
//!   endpoint and [`crate::pool`] (within [`crate::circuit`]'s limits) connects.
//!
//! [`crate::http`] drives them per request; opaque TCP goes to one endpoint for the
//! connection's life.

pub mod actions;
pub mod fault;
pub mod replay;
pub mod retry;
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
