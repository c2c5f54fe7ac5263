//! Opaque TCP: copy bytes both ways with half-close, counting what went each way.
//!
//! The counts live in shared atomics so they are right even when the copy ends in an error
//! (reset, timeout): the access log reports what actually crossed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

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
}
