//! Opaque TCP: copy bytes both ways with half-close, counting what went each way.
//!
//! The counts live in shared atomics so they are right even when the copy ends in an error
//! (reset, timeout): the access log reports what actually crossed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes that crossed a proxied connection.
#[derive(Debug, Default)]
pub struct ByteCounts {
    /// Read from downstream, written upstream.
    pub downstream_to_upstream: AtomicU64,
    /// Read from upstream, written downstream.
    pub upstream_to_downstream: AtomicU64,
}

impl ByteCounts {
    /// (downstream → upstream, upstream → downstream).
    pub fn get(&self) -> (u64, u64) {
        (
            self.downstream_to_upstream.load(Ordering::Relaxed),
            self.upstream_to_downstream.load(Ordering::Relaxed),
        )
    }
}

/// Counts the bytes read from the wrapped stream.
struct CountReads<S> {
    inner: S,
    counts: Arc<ByteCounts>,
    downstream: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for CountReads<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            let c = if self.downstream {
                &self.counts.downstream_to_upstream
            } else {
                &self.counts.upstream_to_downstream
            };
            c.fetch_add(n, Ordering::Relaxed);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountReads<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways until both sides are done. When one side ends its writes (EOF), the other
/// side's write half is shut down, so half-closed protocols keep working. The counts are updated
/// as bytes flow, and are final when this returns (with or without an error).
pub async fn copy_bidirectional<D, U>(
    downstream: D,
    upstream: U,
    counts: Arc<ByteCounts>,
) -> io::Result<()>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut d = CountReads {
        inner: downstream,
        counts: counts.clone(),
        downstream: true,
    };
    let mut u = CountReads {
        inner: upstream,
        counts,
        downstream: false,
    };
    tokio::io::copy_bidirectional(&mut d, &mut u)
        .await
        .map(|_| ())
}

/// Limits on an opaque connection's life, as Envoy's tcp_proxy enforces them (Istio sets them
/// from the DestinationRule: [`crate::circuit::Limits::tcp_idle_timeout`] and
/// [`crate::circuit::Limits::max_connection_duration`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayLimits {
    /// Closed when no byte crossed either way for this long (`idle_timeout`); `None` or zero:
    /// never.
    pub idle_timeout: Option<Duration>,
    /// Closed this long after it started (`max_downstream_connection_duration`).
    pub max_duration: Option<Duration>,
}

impl RelayLimits {
    /// Envoy's tcp_proxy default when Istio sets no idle timeout.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

    /// The limits of a cluster's relays.
    pub fn of(limits: &crate::circuit::Limits) -> RelayLimits {
        RelayLimits {
            idle_timeout: Some(
                limits
                    .tcp_idle_timeout
                    .unwrap_or(RelayLimits::DEFAULT_IDLE_TIMEOUT),
            ),
            max_duration: limits.max_connection_duration,
        }
    }
}

/// Why [`copy_limited`] cut a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// No byte either way for the idle timeout (Envoy: `idle_timeout` stat, no response flag).
    Idle,
    /// The most duration was reached (Envoy: response flag `DT`).
    MaxDuration,
}

/// [`copy_bidirectional`] within `limits`: when one is reached both sides are closed at once
/// (Envoy's `NoFlush` close) and the cut is returned. The idle check samples the byte counts
/// every eighth of the timeout, so a connection is cut at most that much late.
pub async fn copy_limited<D, U>(
    downstream: D,
    upstream: U,
    counts: Arc<ByteCounts>,
    limits: RelayLimits,
) -> io::Result<Option<Cut>>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let copy = copy_bidirectional(downstream, upstream, counts.clone());
    let idle = async {
        let Some(timeout) = limits.idle_timeout.filter(|t| !t.is_zero()) else {
            return std::future::pending().await;
        };
        let step = (timeout / 8).max(Duration::from_millis(1));
        let mut last = counts.get();
        let mut changed_at = Instant::now();
        loop {
            tokio::time::sleep(step).await;
            let now = counts.get();
            if now != last {
                (last, changed_at) = (now, Instant::now());
            } else if changed_at.elapsed() >= timeout {
                return Cut::Idle;
            }
        }
    };
    let most = async {
        match limits.max_duration {
            Some(d) => {
                tokio::time::sleep(d).await;
                Cut::MaxDuration
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = copy => r.map(|()| None),
        cut = idle => Ok(Some(cut)),
        cut = most => Ok(Some(cut)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_with_half_close_and_counts() {
        let (mut client, d) = tokio::io::duplex(16);
        let (u, mut server) = tokio::io::duplex(16);
        let counts = Arc::new(ByteCounts::default());
        let task = tokio::spawn(copy_bidirectional(d, u, counts.clone()));
        client.write_all(b"hello").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        server
            .read_to_end(&mut got)
            .await
            .expect("server reads to EOF");
        assert_eq!(got, b"hello");
        server
            .write_all(b"bye!!!")
            .await
            .expect("write back after half-close");
        server.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"bye!!!");
        task.await.expect("join").expect("copy");
        assert_eq!(counts.get(), (5, 6));
    }

    #[tokio::test]
    async fn an_idle_relay_is_cut() {
        let (mut client, d) = tokio::io::duplex(64);
        let (u, mut server) = tokio::io::duplex(64);
        let counts = Arc::new(ByteCounts::default());
        let limits = RelayLimits {
            idle_timeout: Some(Duration::from_millis(100)),
            max_duration: None,
        };
        let task = tokio::spawn(copy_limited(d, u, counts.clone(), limits));
        client.write_all(b"xyz").await.expect("write");
        let mut b = [0u8; 3];
        server.read_exact(&mut b).await.expect("relayed");
        let cut = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("cut within 5 s")
            .expect("join")
            .expect("copy");
        assert_eq!(cut, Some(Cut::Idle));
        assert_eq!(counts.get(), (3, 0));
        // Both sides were closed.
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn a_relay_is_cut_at_its_most_duration() {
        let (_client, d) = tokio::io::duplex(64);
        let (u, _server) = tokio::io::duplex(64);
        let limits = RelayLimits {
            idle_timeout: None,
            max_duration: Some(Duration::from_millis(50)),
        };
        let cut = tokio::time::timeout(
            Duration::from_secs(5),
            copy_limited(d, u, Arc::default(), limits),
        )
        .await
        .expect("cut within 5 s")
        .expect("copy");
        assert_eq!(cut, Some(Cut::MaxDuration));
    }

    #[test]
    fn relay_limits_take_istio_defaults() {
        let l = RelayLimits::of(&crate::circuit::Limits::default());
        assert_eq!(l.idle_timeout, Some(RelayLimits::DEFAULT_IDLE_TIMEOUT));
        assert_eq!(l.max_duration, None);
    }
}
