//! A request's access-log record while it is served, and the bodies that finish it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{BoxError, ProxyBody};
use crate::pool::Recycle;
use crate::telemetry::{RequestRecord, ResponseFlags, Telemetry};

use super::labels::unrouted_labels;

/// The request's access-log record while it is being served. Dropped unfinished (the client went
/// away, so hyper dropped the request), it is logged with `DC`.
pub(super) struct Log {
    /// The side that serves the request, for the labels of a record made before it is routed.
    pub(super) direction: super::Direction,
    pub(super) rec: Option<RequestRecord>,
    pub(super) t0: Instant,
    pub(super) telemetry: Telemetry,
    pub(super) received: Arc<AtomicU64>,
}

impl Log {
    pub(super) fn rec(&mut self) -> &mut RequestRecord {
        // `rec` is only taken by `finish`/`drop`, which consume the log.
        let direction = self.direction;
        self.rec.get_or_insert_with(|| {
            RequestRecord::new(SystemTime::now(), unrouted_labels(direction))
        })
    }

    pub(super) fn finish(&mut self, sent: u64, flags: ResponseFlags, grpc_status: Option<u16>) {
        if let Some(mut rec) = self.rec.take() {
            rec.response_flags.insert(flags);
            rec.bytes_sent = sent;
            rec.bytes_received = self.received.load(Ordering::Relaxed);
            rec.duration = self.t0.elapsed();
            if grpc_status.is_some() {
                rec.grpc_status = grpc_status;
            }
            self.telemetry.request(rec);
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if self
            .rec
            .as_ref()
            .is_some_and(|r| r.response_code_details.is_none())
        {
            self.rec().response_code_details = Some("downstream_remote_disconnect".into());
        }
        self.finish(0, ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION, None);
    }
}

/// A response body that counts what it sends and finishes the request's log at its end.
struct LoggedBody {
    inner: ProxyBody,
    log: Option<Log>,
    sent: u64,
    grpc_status: Option<u16>,
    /// The upstream HTTP/1 connection, back to the pool once the response has been read.
    recycle: Option<Recycle>,
}

impl LoggedBody {
    fn finish(&mut self, flags: ResponseFlags) {
        if let Some(mut log) = self.log.take() {
            log.finish(self.sent, flags, self.grpc_status);
        }
        if let Some(r) = self.recycle.take()
            && flags == ResponseFlags::NONE
        {
            r.done();
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.sent += d.len() as u64;
                } else if let Some(t) = frame.trailers_ref() {
                    self.grpc_status = grpc_status(t).or(self.grpc_status);
                }
                if self.inner.is_end_stream() {
                    self.finish(ResponseFlags::NONE);
                }
            }
            Poll::Ready(None) => self.finish(ResponseFlags::NONE),
            Poll::Ready(Some(Err(e))) => {
                // The upstream went away mid-response.
                let flags = if is_reset(e.as_ref()) {
                    ResponseFlags::UPSTREAM_REMOTE_RESET
                } else {
                    ResponseFlags::UPSTREAM_CONNECTION_TERMINATION
                };
                if let Some(log) = self.log.as_mut() {
                    log.rec().connection_termination_details =
                        Some("upstream_reset_after_response_started".into());
                }
                self.finish(flags);
            }
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.finish(ResponseFlags::NONE);
        } else if let Some(log) = self.log.as_mut() {
            // Dropped before its end: hyper gave up on the downstream.
            log.rec()
                .response_code_details
                .get_or_insert("downstream_remote_disconnect".into());
            self.finish(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
        }
    }
}

pub(super) fn is_reset(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_reset() || h2.is_go_away();
        }
        cur = err.source();
    }
    false
}

pub(super) fn grpc_status(h: &http::HeaderMap) -> Option<u16> {
    h.get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A request body that counts what it carries.
pub(super) struct CountedBody {
    pub(super) inner: Incoming,
    pub(super) count: Arc<AtomicU64>,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.count.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub(super) fn respond_logged(
    resp: Response<ProxyBody>,
    log: Log,
    recycle: Option<Recycle>,
) -> Response<ProxyBody> {
    let (parts, inner) = resp.into_parts();
    let grpc = grpc_status(&parts.headers);
    let body = LoggedBody {
        inner,
        log: Some(log),
        sent: 0,
        grpc_status: grpc,
        recycle,
    };
    Response::from_parts(parts, body.boxed())
}
