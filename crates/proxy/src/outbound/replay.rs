//! Request bodies that a retry can send again.
//!
//! Envoy's router keeps a copy of the request body while a retry (or mirror) may still need it,
//! up to the stream's buffer limit (the listener's `per_connection_buffer_limit_bytes`, 1 MiB:
//! Istio sets none on sidecar listeners). A body that grows past the limit gives up retries
//! (`retry_or_shadow_abandoned`): the attempt in flight goes on, streaming, and no other attempt
//! follows. A retry sends what was kept and then goes on reading the client's body, so a retry
//! can start while the body is still arriving.
//!
//! [`Replay`] does the same for one request: [`Replay::new`] wraps the client's body, and each
//! [`Replay::body`] is one attempt's [`ReplayBody`], which yields the frames kept so far and then
//! reads on from the client's body, keeping each new frame for the attempts after it. Only the
//! newest attempt reads: an older one still polled (by a connection that has not dropped it
//! yet) gets an error instead of frames, so it can neither steal frames from the newest nor send
//! a truncated body as complete. The shared state sits behind a mutex local to the request,
//! never contended across workers.
//!
//! Unlike Envoy, the client's body is read only while an attempt reads it (not during the
//! back-off), so the limit cannot be passed between attempts and Envoy's 507 "exceeded request
//! buffer limit while retrying upstream" has no case here.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};

/// Envoy's default buffer limit of a stream (1 MiB), the most a retry keeps.
pub const DEFAULT_LIMIT: usize = 1024 * 1024;

/// Why an attempt's body failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A later attempt took over the client's body.
    #[error("request body superseded by a retry")]
    Superseded,
    /// The client's body failed earlier, under another attempt.
    #[error("request body failed under an earlier attempt")]
    Failed,
}

/// One request's body, shared by its attempts.
#[derive(Clone)]
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Replay")
            .field("kept_bytes", &s.kept_len)
            .field("overflowed", &s.overflowed)
            .field("ended", &s.ended)
            .finish()
    }
}

struct Shared {
    /// The client's body (`None` once it ended or failed).
    source: Option<ProxyBody>,
    /// Data frames kept, in order.
    kept: Vec<Bytes>,
    /// Their total length.
    kept_len: usize,
    /// Trailers, once read.
    trailers: Option<HeaderMap>,
    /// The client's body ended.
    ended: bool,
    /// The client's body failed.
    failed: bool,
    /// The body outgrew the limit: nothing is kept, no attempt may follow.
    overflowed: bool,
    limit: usize,
    /// The attempt allowed to read (the newest).
    generation: u64,
}

impl Replay {
    /// Wraps the client's `body`, keeping up to `limit` bytes of it for retries
    /// ([`DEFAULT_LIMIT`] as Envoy under Istio).
    pub fn new(body: ProxyBody, limit: usize) -> Replay {
        Replay {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(body),
                kept: Vec::new(),
                kept_len: 0,
                trailers: None,
                ended: false,
                failed: false,
                overflowed: false,
                limit,
                generation: 0,
            })),
        }
    }

    /// The body of the next attempt, or `None` when the request cannot be sent again: the body
    /// outgrew the limit (retries abandoned) or failed. The attempt before it is superseded.
    pub fn body(&self) -> Option<ReplayBody> {
        let mut s = self.lock();
        if s.overflowed || s.failed {
            return None;
        }
        s.generation += 1;
        Some(ReplayBody {
            shared: self.shared.clone(),
            generation: s.generation,
            next: 0,
            trailers_sent: false,
        })
    }

    /// True once the body outgrew the limit (Envoy's `retry_or_shadow_abandoned`).
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }
}

/// A poisoned lock means a panic under it elsewhere in this request; the state is still whole
/// (every update is one assignment), so go on with it.
fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One attempt's request body: the frames kept so far, then the rest of the client's body.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    /// Index of the next kept frame to send.
    next: usize,
    trailers_sent: bool,
}

impl std::fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayBody")
            .field("generation", &self.generation)
            .field("next", &self.next)
            .finish()
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut s = lock(&this.shared);
        if s.generation != this.generation {
            return Poll::Ready(Some(Err(ReplayError::Superseded.into())));
        }
        if let Some(data) = s.kept.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
        }
        if s.failed {
            return Poll::Ready(Some(Err(ReplayError::Failed.into())));
        }
        let Some(source) = s.source.as_mut() else {
            // The client's body ended: its trailers, once, then the end.
            if !this.trailers_sent
                && let Some(t) = &s.trailers
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.source = None;
                s.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.source = None;
                s.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    s.keep(data);
                    // This attempt has sent every kept frame, the new one included.
                    this.next = s.kept.len();
                } else if let Some(t) = frame.trailers_ref() {
                    if !s.overflowed {
                        s.trailers = Some(t.clone());
                    }
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.shared);
        // A client body that is over before it is read (a GET's) ends this one too, so the
        // request goes upstream as headers alone (HTTP/2 `END_STREAM` on HEADERS).
        s.generation == self.generation
            && s.source.as_ref().is_none_or(|src| src.is_end_stream())
            && !s.failed
            && self.next >= s.kept.len()
            && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.shared);
        let kept: usize = s
            .kept
            .get(self.next..)
            .map_or(0, |k| k.iter().map(Bytes::len).sum());
        let kept = kept as u64;
        match &s.source {
            Some(src) => {
                let h = src.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + kept);
                if let Some(u) = h.upper() {
                    out.set_upper(u + kept);
                }
                out
            }
            None => SizeHint::with_exact(kept),
        }
    }
}

impl Shared {
    /// Keeps `data` while the total stays within the limit (Envoy gives up when kept + new >
    /// limit), and forgets everything once it does not.
    fn keep(&mut self, data: &Bytes) {
        if self.overflowed {
            return;
        }
        if self.kept_len + data.len() > self.limit {
            self.overflowed = true;
            self.kept = Vec::new();
            self.kept_len = 0;
            // The attempt in flight keeps reading, past the frames it has sent.
            return;
        }
        self.kept_len += data.len();
        self.kept.push(data.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    fn frames(parts: &[&'static str], trailers: Option<(&'static str, &'static str)>) -> ProxyBody {
        let mut v: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        if let Some((k, val)) = trailers {
            let mut t = HeaderMap::new();
            t.insert(k, val.parse().unwrap());
            v.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(stream::iter(v))
            .map_err(|never| match never {})
            .boxed()
    }

    /// Everything an attempt's body yields: data joined, and trailers.
    async fn drain(mut b: ReplayBody) -> (String, Option<HeaderMap>) {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(f) = b.frame().await {
            let f = f.unwrap();
            if let Some(d) = f.data_ref() {
                data.extend_from_slice(d);
            } else {
                trailers = f.into_trailers().ok();
            }
        }
        assert!(b.is_end_stream());
        (String::from_utf8(data).unwrap(), trailers)
    }

    #[tokio::test]
    async fn a_retry_replays_the_whole_body_and_trailers() {
        let r = Replay::new(frames(&["hello ", "world"], Some(("x-t", "1"))), 64);
        let (d, t) = drain(r.body().unwrap()).await;
        assert_eq!(d, "hello world");
        assert_eq!(t.unwrap()["x-t"], "1");
        let second = r.body().unwrap();
        assert_eq!(second.size_hint().exact(), Some(11));
        let (d, t) = drain(second).await;
        assert_eq!(d, "hello world");
        assert_eq!(t.unwrap()["x-t"], "1");
        // And again.
        assert_eq!(drain(r.body().unwrap()).await.0, "hello world");
    }

    #[tokio::test]
    async fn a_retry_of_a_partly_read_body_replays_then_reads_on() {
        let r = Replay::new(frames(&["a", "b", "c", "d"], None), 64);
        let mut first = r.body().unwrap();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.data_ref().unwrap(), "a");
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.data_ref().unwrap(), "b");
        // The first attempt fails here; the retry gets "ab" from the copy, then "cd".
        let second = r.body().unwrap();
        // The superseded attempt may still be polled: it errs, it does not steal "c".
        let err = first.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("superseded"), "{err}");
        assert!(!first.is_end_stream());
        assert_eq!(drain(second).await.0, "abcd");
        assert_eq!(drain(r.body().unwrap()).await.0, "abcd");
    }

    #[tokio::test]
    async fn nothing_read_yet_is_replayable() {
        let r = Replay::new(frames(&["xyz"], None), 2);
        let _unused = r.body().unwrap();
        // The first attempt failed before reading (a connect failure): the retry reads it all,
        // even though it is bigger than the limit (the attempt in flight always streams).
        let second = r.body().unwrap();
        assert_eq!(drain(second).await.0, "xyz");
        assert!(r.overflowed());
        assert!(r.body().is_none());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_streams_on_but_gives_up_retries() {
        // The limit is inclusive: exactly `limit` bytes can be replayed.
        let r = Replay::new(frames(&["1234", "5678"], None), 8);
        assert_eq!(drain(r.body().unwrap()).await.0, "12345678");
        assert!(!r.overflowed());
        assert_eq!(drain(r.body().unwrap()).await.0, "12345678");

        let r = Replay::new(frames(&["1234", "5678", "9"], Some(("x-t", "1"))), 8);
        let (d, t) = drain(r.body().unwrap()).await;
        assert_eq!(d, "123456789");
        assert!(t.is_some());
        assert!(r.overflowed());
        assert!(r.body().is_none());
    }

    #[tokio::test]
    async fn an_overflow_mid_body_keeps_the_attempt_whole() {
        let r = Replay::new(frames(&["ab", "cd", "ef"], None), 3);
        let mut first = r.body().unwrap();
        let mut got = Vec::new();
        while let Some(f) = first.frame().await {
            got.extend_from_slice(f.unwrap().data_ref().unwrap());
        }
        assert_eq!(got, b"abcdef");
        assert!(first.is_end_stream());
        assert!(r.body().is_none());
    }

    #[tokio::test]
    async fn a_failed_body_is_not_replayed() {
        let src: ProxyBody = StreamBody::new(stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Err::<Frame<Bytes>, BoxError>("client went away".into()),
        ]))
        .boxed();
        let r = Replay::new(src, 64);
        let mut first = r.body().unwrap();
        assert!(first.frame().await.unwrap().is_ok());
        assert!(first.frame().await.unwrap().is_err());
        assert!(r.body().is_none());
    }

    #[tokio::test]
    async fn an_empty_body_replays_empty() {
        let r = Replay::new(crate::body::empty(), DEFAULT_LIMIT);
        // Ended before it is read: the request can go as headers alone.
        assert!(r.body().unwrap().is_end_stream());
        assert!(
            !Replay::new(frames(&["x"], None), 8)
                .body()
                .unwrap()
                .is_end_stream()
        );
        assert_eq!(drain(r.body().unwrap()).await, (String::new(), None));
        let b = r.body().unwrap();
        assert!(b.is_end_stream());
        assert_eq!(drain(b).await, (String::new(), None));
    }
}
