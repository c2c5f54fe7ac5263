//! The body type that crosses the proxy, and small constructors for local replies.
//!
//! Bodies are streamed frame by frame (data and trailers), never buffered whole; the boxed type
//! lets request and response bodies from either HTTP version, wrapped for counting, share one
//! client and one server.

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;

/// Any error a body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body, boxed.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A body of `data`.
pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}
