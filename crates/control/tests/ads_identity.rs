//! The secure gRPC port checks that a proxy's node is the workload its token names (Istio's
//! connection identity check), in process: `Discovery::start` with file-mode tokens, clients
//! dialling 15012 over TLS as a sidecar does.
//!
//! - a token for `shop` whose node claims `plain` (by id, or by `NAMESPACE` metadata) is refused
//!   with `PermissionDenied`, before any resource; so is a `SERVICE_ACCOUNT` that is not the
//!   token's;
//! - the token's own node syncs, on the same connection.

mod ca_support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ca_support::{issue_token, secure_channel, start};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tonic::Code;
use tonic::transport::Channel;
use xds::ads::ProxyId;
use xds::ads::node::{META_NAMESPACE, META_SERVICE_ACCOUNT};

/// `httpbin-0`'s node in `namespace`, with `extra` metadata.
fn node(namespace: &str, extra: &[(&str, &str)]) -> Node {
    let extra: BTreeMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ProxyId::sidecar(
        IpAddr::V4(Ipv4Addr::new(10, 244, 0, 9)),
        "httpbin-0",
        namespace,
    )
    .to_node(&extra)
}

/// Opens a Delta ADS stream with `bearer` whose first request carries `node`; returns the first
/// response or the stream's error.
async fn first_response(
    channel: &Channel,
    bearer: &str,
    node: Node,
) -> Result<DeltaDiscoveryResponse, tonic::Status> {
    let first = DeltaDiscoveryRequest {
        node: Some(node),
        type_url: xds::ads::ResourceType::ALL[0].type_url().to_string(),
        ..Default::default()
    };
    // The sender stays open until the answer, as a proxy's stream would.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(first).await.expect("send");
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut request = tonic::Request::new(requests);
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().expect("ascii"));
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    let mut responses = client
        .delta_aggregated_resources(request)
        .await?
        .into_inner();
    let message = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("an answer in time");
    drop(tx);
    message?.ok_or_else(|| tonic::Status::unknown("the stream ended without a response"))
}

#[tokio::test]
async fn a_node_of_another_namespace_or_service_account_is_refused() {
    let state = tempfile::tempdir().expect("tempdir");
    let discovery = start(state.path(), |_| {}).await;
    let token = issue_token(&discovery, "shop", "httpbin", "httpbin-0");
    let channel = secure_channel(&discovery).await;
    let secret = token.token().expose().to_string();
    let bearer = format!("Bearer {secret}");

    let refused = [
        (node("plain", &[]), "plain/", "another namespace"),
        (
            node("shop", &[(META_NAMESPACE, "plain")]),
            "plain/",
            "another NAMESPACE",
        ),
        (
            node("shop", &[(META_SERVICE_ACCOUNT, "sleep")]),
            "shop/sleep",
            "another service account",
        ),
    ];
    for (node, claimed, case) in refused {
        let err = first_response(&channel, &bearer, node)
            .await
            .expect_err(case);
        assert_eq!(err.code(), Code::PermissionDenied, "{case}: {err:?}");
        let message = err.message();
        assert!(
            message.starts_with("authorization failed: no identities (shop/httpbin) matched ")
                && message.contains(claimed),
            "{case}: {message}"
        );
        assert!(!message.contains(&secret), "{case}: the token leaked");
    }

    // The token's own node syncs, with or without its service account in the metadata.
    for node in [
        node("shop", &[]),
        node("shop", &[(META_SERVICE_ACCOUNT, "httpbin")]),
    ] {
        let response = first_response(&channel, &bearer, node)
            .await
            .expect("the token's own node syncs");
        assert_eq!(response.type_url, xds::ads::ResourceType::ALL[0].type_url());
    }
    discovery.shutdown().await;
}
