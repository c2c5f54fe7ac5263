//! A light Delta ADS client for the simulation: it subscribes to every type (wildcard), ACKs
//! every response and hands each one to a callback, keeping nothing itself. Ten thousand of them
//! fit in one process, where [`xds::ads::AdsClient`] (what the proxy runs) keeps and decodes
//! every resource of every client. It reconnects after a second when the stream ends, without
//! `initial_resource_versions` (the server sends everything again).
//!
//! It speaks gRPC over `h2` itself rather than through tonic: tonic's response decoder keeps a
//! buffer as large as the largest message for the life of the stream (the first sync, about
//! 1.2 MB at 1k services and 6 MB at 5k), so 10k tonic clients needed 12 GB. Here a message is
//! gathered in a buffer that is dropped once it is decoded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use xds::ads::{Node, ResourceType};
use xds::grpc;

const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Flow-control windows of the client, as hyper's HTTP/2 client sets them (what tonic used).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// A reassembly buffer larger than this is dropped once empty instead of kept for the next
/// message.
const KEEP_BUFFER: usize = 64 * 1024;

/// Runs one client until the future is dropped. `on_response(response, session)` sees every
/// response; `session` counts the streams (a new one after each reconnect). Every stream that
/// ends counts in `disconnects`. `connecting` bounds the connections being opened at once, so
/// thousands of clients starting together do not overflow the server's listen backlog.
pub async fn run(
    server: SocketAddr,
    node: Node,
    disconnects: Arc<AtomicU64>,
    connecting: Arc<Semaphore>,
    mut on_response: impl FnMut(&DeltaDiscoveryResponse, u64) + Send,
) {
    let mut session = 0;
    loop {
        session += 1;
        let error = stream(server, &node, &connecting, session, &mut on_response).await;
        disconnects.fetch_add(1, Ordering::Relaxed);
        eprintln!("sim client {}: {error}; reconnecting", node.id);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A gRPC message: uncompressed flag, big-endian length, body.
fn grpc_frame(m: &DeltaDiscoveryRequest) -> Bytes {
    let len = m.encoded_len();
    let mut buf = Vec::with_capacity(grpc::HEADER_LEN + len);
    buf.extend_from_slice(&grpc::header(len));
    m.encode_raw(&mut buf);
    Bytes::from(buf)
}

/// Takes the next whole gRPC message off the front of `buf`, if it is all there.
fn next_message(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    let Some(header) = grpc::parse_header(buf) else {
        return Ok(None);
    };
    if header.compressed {
        return Err("compressed gRPC message (not requested)".to_string());
    }
    if buf.len() < grpc::HEADER_LEN + header.len {
        return Ok(None);
    }
    buf.advance(grpc::HEADER_LEN);
    Ok(Some(buf.split_to(header.len).freeze()))
}

/// `grpc-status` and `grpc-message` of a header map, when it carries a status.
fn grpc_status(headers: &http::HeaderMap) -> Option<String> {
    let code = headers.get("grpc-status")?.to_str().unwrap_or("?");
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("");
    Some(format!("grpc-status {code} {message}"))
}

/// One stream, until it ends; returns why.
async fn stream(
    server: SocketAddr,
    node: &Node,
    connecting: &Semaphore,
    session: u64,
    on_response: &mut (impl FnMut(&DeltaDiscoveryResponse, u64) + Send),
) -> String {
    let turn = connecting.acquire().await;
    let tcp = match TcpStream::connect(server).await {
        Ok(t) => t,
        Err(e) => return format!("connecting: {e}"),
    };
    let _ = tcp.set_nodelay(true);
    let (client, connection) = match h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(tcp)
        .await
    {
        Ok(c) => c,
        Err(e) => return format!("HTTP/2 handshake: {e}"),
    };
    drop(turn);
    // The connection is driven by its own task, which ends when the client and stream go.
    let driver = tokio::spawn(connection);
    let result = exchange(server, node, client, session, on_response).await;
    driver.abort();
    result
}

/// Opens the Delta ADS stream on `client`, subscribes to every type and ACKs every response.
async fn exchange(
    server: SocketAddr,
    node: &Node,
    client: h2::client::SendRequest<Bytes>,
    session: u64,
    on_response: &mut (impl FnMut(&DeltaDiscoveryResponse, u64) + Send),
) -> String {
    let mut client = match client.ready().await {
        Ok(c) => c,
        Err(e) => return format!("HTTP/2: {e}"),
    };
    let request = http::Request::post(format!("http://{server}{DELTA_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request");
    let (response, mut send) = match client.send_request(request, false) {
        Ok(r) => r,
        Err(e) => return format!("stream: {e}"),
    };
    for (i, ty) in ResourceType::ALL.into_iter().enumerate() {
        let req = DeltaDiscoveryRequest {
            node: (i == 0).then(|| node.clone()),
            type_url: ty.type_url().to_string(),
            resource_names_subscribe: vec!["*".to_string()],
            ..DeltaDiscoveryRequest::default()
        };
        if let Err(e) = send.send_data(grpc_frame(&req), false) {
            return format!("subscribing: {e}");
        }
    }
    let response = match response.await {
        Ok(r) => r,
        Err(e) => return format!("stream: {e}"),
    };
    if let Some(status) = grpc_status(response.headers()) {
        return format!("stream: {status}");
    }
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return format!("stream: {e}"),
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        loop {
            let message = match next_message(&mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return e,
            };
            let response = match DeltaDiscoveryResponse::decode(message) {
                Ok(r) => r,
                Err(e) => return format!("decoding a response: {e}"),
            };
            on_response(&response, session);
            let ack = DeltaDiscoveryRequest {
                type_url: response.type_url,
                response_nonce: response.nonce,
                ..DeltaDiscoveryRequest::default()
            };
            if let Err(e) = send.send_data(grpc_frame(&ack), false) {
                return format!("ACK: {e}");
            }
        }
        if buf.is_empty() && buf.capacity() > KEEP_BUFFER {
            buf = BytesMut::new();
        }
    }
    match body.trailers().await {
        Ok(Some(t)) => match grpc_status(&t) {
            Some(status) => format!("the server closed the stream: {status}"),
            None => "the server closed the stream".to_string(),
        },
        Ok(None) => "the server closed the stream".to_string(),
        Err(e) => format!("stream: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_taken_whole_from_split_chunks() {
        let a = DeltaDiscoveryRequest {
            type_url: "a".repeat(300),
            ..DeltaDiscoveryRequest::default()
        };
        let b = DeltaDiscoveryRequest {
            response_nonce: "7".to_string(),
            ..DeltaDiscoveryRequest::default()
        };
        let mut wire = grpc_frame(&a).to_vec();
        wire.extend_from_slice(&grpc_frame(&b));
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(7) {
            buf.extend_from_slice(chunk);
            while let Some(m) = next_message(&mut buf).expect("uncompressed") {
                got.push(DeltaDiscoveryRequest::decode(m).expect("decodes"));
            }
        }
        assert_eq!(got, vec![a, b]);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_compressed_message_is_an_error() {
        let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 0][..]);
        assert!(next_message(&mut buf).is_err());
    }
}
