//! `ama-bench-app`: the gRPC side of the benchmark's app (`bench/run.py`).
//!
//! nginx serves the HTTP/1.1 load; it cannot answer a gRPC call (a POST to a static file is a
//! 405, and the HTTP/2 request body it then discards ends the stream with RST_STREAM). This is the
//! smallest real gRPC unary server: HTTP/2 with prior knowledge (h2c, as a pod's app listens
//! behind its sidecar), `POST /bench.Echo/Unary` with `content-type: application/grpc`, the
//! request read to its end and its length-prefixed message checked, then one message of
//! `--size` bytes and the trailers `grpc-status: 0`. Anything else gets the gRPC status that a
//! real server would send (UNIMPLEMENTED for another path, INVALID_ARGUMENT for a malformed
//! message).
//!
//! One thread, like the benchmark's one nginx worker, so that both protocols' apps cost the same.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The one method served.
const METHOD: &str = "/bench.Echo/Unary";
/// Largest request body read (a gRPC frame of the default 4 MB message limit).
const MAX_REQUEST: usize = 4 * 1024 * 1024 + 5;

#[derive(Debug, Parser)]
#[command(name = "ama-bench-app", version, about)]
struct Args {
    /// Address to listen on (HTTP/2 prior knowledge).
    #[arg(long, default_value = "0.0.0.0:81")]
    listen: SocketAddr,
    /// Size in bytes of the response message (before gRPC's 5-byte prefix).
    #[arg(long, default_value_t = 1024)]
    size: usize,
}

type Body = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let reply = frame(&message(args.size));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args.listen, reply))
}

async fn serve(addr: SocketAddr, reply: Bytes) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("ama-bench-app: {METHOD} on {addr} (h2c)");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let reply = reply.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, reply.clone()));
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                eprintln!("connection: {e}");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, reply: Bytes) -> Result<Response<Body>, Infallible> {
    if req.uri().path() != METHOD {
        return Ok(status_only(12, "unknown method")); // UNIMPLEMENTED
    }
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if req.method() != http::Method::POST || !grpc {
        let mut res = Response::new(body(Vec::new()));
        *res.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return Ok(res);
    }
    let request = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(status_only(8, "request too large or broken")), // RESOURCE_EXHAUSTED
    };
    if !well_framed(&request) {
        return Ok(status_only(3, "malformed message")); // INVALID_ARGUMENT
    }
    let mut res = Response::new(body(vec![
        Frame::data(reply),
        Frame::trailers(trailers(0, None)),
    ]));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(res)
}

/// A response with no message: gRPC's trailers-only form.
fn status_only(code: u32, message: &'static str) -> Response<Body> {
    let mut res = Response::new(body(Vec::new()));
    let headers = res.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.extend(trailers(code, Some(message)));
    res
}

fn trailers(code: u32, message: Option<&'static str>) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(code));
    if let Some(m) = message {
        t.insert("grpc-message", HeaderValue::from_static(m));
    }
    t
}

fn body(frames: Vec<Frame<Bytes>>) -> Body {
    StreamBody::new(stream::iter(frames.into_iter().map(Ok).collect::<Vec<_>>()))
}

/// One uncompressed gRPC frame: flag 0, the 4-byte big-endian length, the message.
fn frame(msg: &[u8]) -> Bytes {
    let len = u32::try_from(msg.len()).expect("message under 4 GiB");
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    Bytes::from(out)
}

/// A protobuf message `{ bytes payload = 1; }` of exactly `size` bytes (at least 3). Where no
/// minimal length prefix fits (129 + tag = 130 bytes, say), the length is written one byte wider
/// than needed, which protobuf decoders accept.
fn message(size: usize) -> Vec<u8> {
    let size = size.max(3);
    let (payload, width) = (1..=10)
        .map(|width| (size.saturating_sub(1 + width), width))
        .find(|(p, width)| varint_len(*p) <= *width)
        .unwrap_or((0, 1));
    let mut out = vec![0x0a];
    for i in 0..width {
        let byte = ((payload >> (7 * i)) & 0x7f) as u8;
        out.push(if i + 1 < width { byte | 0x80 } else { byte });
    }
    out.resize(out.len() + payload, b'x');
    out
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// Whether `body` is exactly one uncompressed gRPC frame.
fn well_framed(body: &[u8]) -> bool {
    match body {
        [0, a, b, c, d, rest @ ..] => u32::from_be_bytes([*a, *b, *c, *d]) as usize == rest.len(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_the_requested_size() {
        for size in [3, 100, 127, 128, 129, 130, 131, 1024, 20_000] {
            let m = message(size);
            assert_eq!(m.len(), size, "size {size}");
            // the varint length prefix says how many payload bytes follow
            let (mut len, mut shift, mut i) = (0usize, 0, 1);
            loop {
                len |= usize::from(m[i] & 0x7f) << shift;
                shift += 7;
                i += 1;
                if m[i - 1] & 0x80 == 0 {
                    break;
                }
            }
            assert_eq!(m.len() - i, len, "size {size}");
        }
    }

    #[test]
    fn frames_round_trip_and_bad_frames_are_refused() {
        let f = frame(&message(1024));
        assert_eq!(f.len(), 1029);
        assert!(well_framed(&f));
        assert!(!well_framed(&f[..1028]));
        assert!(!well_framed(&[1, 0, 0, 0, 0]));
        assert!(!well_framed(b""));
    }
}
