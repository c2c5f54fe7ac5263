//! Protocol detection by peeking at the first bytes of a connection.
//!
//! The bytes read while deciding are not lost: [`Rewind`] replays them before the rest of the
//! stream, so the HTTP server or the TCP copy sees the connection from its first byte. As in
//! Istio, detection waits for the client's first bytes ([`Wait`]): a server-first protocol
//! (MySQL, SMTP) needs its port declared TCP, which skips detection altogether, or a
//! MeshConfig `protocolDetectionTimeout`, after which a silent client is opaque TCP. Waiting
//! also means that an idle connection costs no upstream connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1.0 or HTTP/1.1: a request line with a known method.
    Http1,
    /// HTTP/2 with prior knowledge: the connection preface.
    Http2,
    /// A TLS ClientHello.
    Tls,
    /// Anything else, or nothing within the timeout: copied as bytes.
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Most bytes read before deciding (the longest signature is the 24-byte HTTP/2 preface).
const MAX_PEEK: usize = 64;

/// Classifies the first bytes; `None` means "need more".
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    let prefix_of = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    if prefix_of(H2_PREFACE) {
        return if buf.len() >= H2_PREFACE.len() {
            Some(Detected::Http2)
        } else {
            None
        };
    }
    if buf[0] == 0x16 {
        // TLS record: handshake, version 3.x.
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Detected::Tls),
            Some(_) => Some(Detected::Opaque),
        };
    }
    let mut partial = false;
    for m in METHODS {
        if buf.len() >= m.len() && buf.starts_with(m) {
            return Some(Detected::Http1);
        }
        if m.starts_with(buf) {
            partial = true;
        }
    }
    if partial {
        None
    } else {
        Some(Detected::Opaque)
    }
}

/// How long detection waits for a client's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// MeshConfig `protocolDetectionTimeout` set: what has not been recognised by then is
    /// opaque TCP (a server-first protocol on an undeclared port works, late clients do not).
    ThenOpaque(Duration),
    /// Istio's default (`protocolDetectionTimeout: 0s`): wait for the client to speak, as
    /// Envoy's listener filters do without a timeout. A client silent for this long (the
    /// downstream idle timeout) is closed, so a silent connection holds nothing for ever.
    UpTo(Duration),
}

impl Wait {
    /// The wait for a configured `protocolDetectionTimeout` (zero: none) and idle timeout.
    pub fn new(detection_timeout: Duration, idle_timeout: Duration) -> Wait {
        if detection_timeout.is_zero() {
            Wait::UpTo(idle_timeout)
        } else {
            Wait::ThenOpaque(detection_timeout)
        }
    }
}

/// Reads from `io` until the protocol is known or the stream ends; when `wait` runs out,
/// the connection is opaque ([`Wait::ThenOpaque`]) or fails with `TimedOut`
/// ([`Wait::UpTo`]). A stream that ends before its first byte fails with `UnexpectedEof`. Returns the protocol and the bytes read, to be replayed with [`Rewind`].
pub async fn detect<S: AsyncRead + Unpin>(io: &mut S, wait: Wait) -> io::Result<(Detected, Bytes)> {
    let mut buf = BytesMut::with_capacity(MAX_PEEK);
    let (Wait::ThenOpaque(limit) | Wait::UpTo(limit)) = wait;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(d) = classify(&buf) {
            return Ok((d, buf.freeze()));
        }
        if buf.len() >= MAX_PEEK {
            return Ok((Detected::Opaque, buf.freeze()));
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_elapsed) => {
                return match wait {
                    Wait::ThenOpaque(_) => Ok((Detected::Opaque, buf.freeze())),
                    Wait::UpTo(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing within the idle timeout",
                    )),
                };
            }
            // Closed before a byte: there is nothing to forward, and an upstream connection
            // opened for it would only be closed again (Envoy opens none either).
            Ok(Ok(0)) if buf.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection before sending anything",
                ));
            }
            Ok(Ok(0)) => return Ok((Detected::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// A stream that first yields `prefix`, then reads from `inner`; writes go straight to `inner`.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// Replays `prefix` before `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Rewind<S> {
        Rewind { prefix, inner }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_signatures() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Detected::Http2)
        );
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), Some(Detected::Tls));
        assert_eq!(classify(b"\x00\x00\x00\x01"), Some(Detected::Opaque));
        assert_eq!(classify(b"HELO example.com\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"POSTMAN"), Some(Detected::Opaque));
    }

    #[tokio::test]
    async fn replays_what_it_read() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET /x HTTP/1.1\r\n")
            .await
            .expect("write");
        let (d, prefix) = detect(&mut b, Wait::UpTo(Duration::from_secs(5)))
            .await
            .expect("detect");
        assert_eq!(d, Detected::Http1);
        drop(a);
        let mut all = Vec::new();
        Rewind::new(prefix, b)
            .read_to_end(&mut all)
            .await
            .expect("read");
        assert_eq!(all, b"GET /x HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn silent_client_is_opaque_after_a_configured_timeout() {
        let (_a, mut b) = tokio::io::duplex(64);
        let (d, prefix) = detect(&mut b, Wait::ThenOpaque(Duration::from_millis(20)))
            .await
            .expect("detect");
        assert_eq!(d, Detected::Opaque);
        assert!(prefix.is_empty());
    }

    #[tokio::test]
    async fn by_default_a_slow_client_is_waited_for_and_a_silent_one_closed() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let slow = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokio::io::AsyncWriteExt::write_all(&mut a, &[0x16, 0x03, 0x01])
                .await
                .expect("write");
        };
        let (detected, ()) = tokio::join!(
            detect(&mut b, Wait::new(Duration::ZERO, Duration::from_secs(30))),
            slow
        );
        assert_eq!(detected.expect("detect").0, Detected::Tls);

        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        let closed = detect(&mut b, Wait::UpTo(Duration::from_secs(5))).await;
        assert_eq!(
            closed.expect_err("nothing to forward").kind(),
            io::ErrorKind::UnexpectedEof
        );

        let (_a, mut b) = tokio::io::duplex(64);
        let silent = detect(&mut b, Wait::new(Duration::ZERO, Duration::from_millis(50))).await;
        assert_eq!(silent.expect_err("closed").kind(), io::ErrorKind::TimedOut);
    }
}
