//! A light Delta ADS client for the simulation: it subscribes to every type (wildcard), ACKs
//! every response and hands each one to a callback, keeping nothing itself. Ten thousand of them
//! fit in one process, where [`xds::ads::AdsClient`] (what the proxy runs) keeps and decodes
//! every resource of every client. It reconnects after a second when the stream ends, without
//! `initial_resource_versions` (the server sends everything again).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tokio::sync::{Semaphore, mpsc};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use xds::ads::{Node, ResourceType};

/// Runs one client until the future is dropped. `on_response(response, session)` sees every
/// response; `session` counts the streams (a new one after each reconnect). Every stream that
/// ends counts in `disconnects`. `connecting` bounds the connections being opened at once, so
/// thousands of clients starting together do not overflow the server's listen backlog.
pub async fn run(
    endpoint: Endpoint,
    node: Node,
    disconnects: Arc<AtomicU64>,
    connecting: Arc<Semaphore>,
    mut on_response: impl FnMut(&DeltaDiscoveryResponse, u64) + Send,
) {
    let mut session = 0;
    loop {
        session += 1;
        let error = stream(&endpoint, &node, &connecting, session, &mut on_response).await;
        disconnects.fetch_add(1, Ordering::Relaxed);
        eprintln!("sim client {}: {error}; reconnecting", node.id);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One stream, until it ends; returns why.
async fn stream(
    endpoint: &Endpoint,
    node: &Node,
    connecting: &Semaphore,
    session: u64,
    on_response: &mut (impl FnMut(&DeltaDiscoveryResponse, u64) + Send),
) -> String {
    let turn = connecting.acquire().await;
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return format!("connecting: {e}"),
    };
    drop(turn);
    let mut grpc =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(2 * ResourceType::ALL.len());
    for (i, ty) in ResourceType::ALL.into_iter().enumerate() {
        let req = DeltaDiscoveryRequest {
            node: (i == 0).then(|| node.clone()),
            type_url: ty.type_url().to_string(),
            resource_names_subscribe: vec!["*".to_string()],
            ..DeltaDiscoveryRequest::default()
        };
        if tx.try_send(req).is_err() {
            return "request queue full".to_string();
        }
    }
    let mut inbound = match grpc
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return format!("stream: {status}"),
    };
    loop {
        let response = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return "the server closed the stream".to_string(),
            Err(status) => return format!("stream: {status}"),
        };
        on_response(&response, session);
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..DeltaDiscoveryRequest::default()
        };
        if tx.send(ack).await.is_err() {
            return "request stream closed".to_string();
        }
    }
}
