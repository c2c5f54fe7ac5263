//! The mesh CA over the secure gRPC port, in process: `Discovery::start` with its security
//! servers on loopback, file-mode workload tokens, and clients that dial 15012 over TLS trusting
//! the root the server published, as a sidecar does (`CA_ADDR`, `--ca-root-file`,
//! `--token-file`).
//!
//! - the certificate names the caller (its token's namespace and service account), whatever the
//!   CSR asks for; the chain verifies against the published root;
//! - lifetimes: as asked, 24 h when not asked, capped at 24 h or `--workload-cert-ttl`;
//! - no, malformed, unknown or revoked token → `Unauthenticated`, never echoing the token; a
//!   bad CSR or a negative lifetime → `InvalidArgument`;
//! - ADS and the CA share the port; ADS needs the token too;
//! - a client trusting another root, or dialling another name, is refused by its own TLS check.

mod ca_support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use ca_support::{TlsDialer, issue_token, published_root, secure_channel, start};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use identity::{CertChain, CertificateAuthority, CsrAndKey, SpiffeId, WorkloadCertificate};
use tonic::Code;
use tonic::transport::Channel;
use xds::ads::ProxyId;
use xds::ca::{IstioCertificateRequest, IstioCertificateResponse, IstioCertificateServiceClient};

const DAY: Duration = Duration::from_secs(24 * 3600);

async fn create(
    channel: &Channel,
    authorization: Option<&str>,
    csr: &str,
    validity_duration: i64,
) -> Result<IstioCertificateResponse, tonic::Status> {
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_string(),
        validity_duration,
        metadata: None,
    });
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("ascii"));
    }
    IstioCertificateServiceClient::new(channel.clone())
        .create_certificate(request)
        .await
        .map(tonic::Response::into_inner)
}

/// What a sidecar does with the answer: the chain must verify against the root for `id`.
fn accept(
    response: IstioCertificateResponse,
    id: &SpiffeId,
    key: identity::PrivateKey,
) -> WorkloadCertificate {
    let chain = CertChain::from_pem_list(&response.cert_chain).expect("leaf … root");
    WorkloadCertificate::new(id, key, chain).expect("the chain verifies for the caller's id")
}

fn lifetime(cert: &WorkloadCertificate) -> Duration {
    cert.not_after()
        .duration_since(cert.not_before())
        .expect("not_after is later")
}

#[tokio::test]
async fn signs_the_callers_own_identity_with_capped_lifetimes() {
    let state = tempfile::tempdir().expect("tempdir");
    let discovery = start(state.path(), |_| {}).await;
    let security = discovery.security().expect("security");
    let token = issue_token(&discovery, "shop", "httpbin", "httpbin-0");
    let bearer = format!("Bearer {}", token.token().expose());
    let root = published_root(&discovery);
    let channel = TlsDialer::new(security.secure_grpc_addr, &root, &[b"h2"])
        .channel()
        .await
        .expect("TLS to 15012 with the published root");

    // The CSR asks for a cluster admin; the certificate names the caller.
    let asked = SpiffeId::new("cluster.local", "kube-system", "admin").expect("id");
    let caller = SpiffeId::new("cluster.local", "shop", "httpbin").expect("id");
    let csr = CsrAndKey::generate(&asked).expect("csr");
    let response = create(&channel, Some(&bearer), &csr.csr_pem, 3600)
        .await
        .expect("signed");
    let chain = CertChain::from_pem_list(&response.cert_chain).expect("chain");
    assert_eq!(
        SpiffeId::from_certificate_der(chain.leaf()).expect("SPIFFE SAN"),
        caller
    );
    assert_eq!(chain.roots(), security.ca.roots());
    let cert = accept(response, &caller, csr.key.clone());
    let one_hour = lifetime(&cert);
    assert!(
        (Duration::from_secs(3600)..=Duration::from_secs(3600 + 60)).contains(&one_hour),
        "{one_hour:?}"
    );
    assert!(cert.not_after() > SystemTime::now() + Duration::from_secs(3500));

    // 30 days asked: 24 h given. None asked: 24 h.
    for asked_seconds in [30 * 24 * 3600, i64::MAX, 0] {
        let csr = CsrAndKey::generate(&caller).expect("csr");
        let response = create(&channel, Some(&bearer), &csr.csr_pem, asked_seconds)
            .await
            .expect("signed");
        let life = lifetime(&accept(response, &caller, csr.key));
        assert!(
            (DAY..=DAY + Duration::from_secs(60)).contains(&life),
            "{asked_seconds}: {life:?}"
        );
    }

    // A bad CSR or lifetime is the caller's mistake, said as such.
    let err = create(&channel, Some(&bearer), "not a CSR", 3600)
        .await
        .expect_err("bad CSR");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("csr"), "{}", err.message());
    let err = create(&channel, Some(&bearer), "", 3600)
        .await
        .expect_err("empty CSR");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = create(&channel, Some(&bearer), &csr.csr_pem, -1)
        .await
        .expect_err("negative");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("validity_duration"));

    // A CSR whose signature does not match its key (someone else's public key).
    let tampered = tamper_signature(&csr.csr_pem);
    let err = create(&channel, Some(&bearer), &tampered, 3600)
        .await
        .expect_err("tampered CSR");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    discovery.shutdown().await;
}

/// Flips a bit in the last base64 line of a PEM CSR (inside its signature).
fn tamper_signature(pem: &str) -> String {
    let mut lines: Vec<String> = pem.lines().map(str::to_string).collect();
    let last = lines.len() - 2;
    let mut bytes = lines[last].clone().into_bytes();
    let i = bytes.len().saturating_sub(6);
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    lines[last] = String::from_utf8(bytes).expect("ascii");
    lines.join("\n") + "\n"
}

#[tokio::test]
async fn refuses_callers_without_a_valid_token() {
    let state = tempfile::tempdir().expect("tempdir");
    let discovery = start(state.path(), |_| {}).await;
    let security = discovery.security().expect("security");
    let tokens = security.file_tokens.as_ref().expect("file mode");
    let token = tokens.issue("shop", "httpbin", "httpbin-0").expect("issue");
    let channel = secure_channel(&discovery).await;
    let id = SpiffeId::new("cluster.local", "shop", "httpbin").expect("id");
    let csr = CsrAndKey::generate(&id).expect("csr");

    let forged = "f".repeat(64);
    let cases = [
        None,
        Some("Bearer ".to_string()),
        Some(format!("Basic {}", token.token().expose())),
        Some(format!("Bearer {forged}")),
        Some(format!("Bearer {}x", token.token().expose())),
    ];
    for authorization in &cases {
        let err = create(&channel, authorization.as_deref(), &csr.csr_pem, 3600)
            .await
            .expect_err("refused");
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "{authorization:?}: {err:?}"
        );
        assert!(!err.message().contains(token.token().expose()));
        assert!(!err.message().contains(&forged));
    }

    // Revoked: the same token no longer works.
    let bearer = format!("Bearer {}", token.token().expose());
    create(&channel, Some(&bearer), &csr.csr_pem, 3600)
        .await
        .expect("valid before revocation");
    tokens
        .revoke("shop", "httpbin", "httpbin-0")
        .expect("revoke");
    let err = create(&channel, Some(&bearer), &csr.csr_pem, 3600)
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);

    discovery.shutdown().await;
}

#[tokio::test]
async fn workload_cert_ttl_caps_lifetimes() {
    let state = tempfile::tempdir().expect("tempdir");
    let discovery = start(state.path(), |s| {
        s.ca.max_ttl = Duration::from_secs(600);
    })
    .await;
    let token = issue_token(&discovery, "plain", "sleep", "sleep-0");
    let channel = secure_channel(&discovery).await;
    let id = SpiffeId::new("cluster.local", "plain", "sleep").expect("id");
    let csr = CsrAndKey::generate(&id).expect("csr");
    let bearer = format!("Bearer {}", token.token().expose());
    for asked in [0, 3600, 86_400] {
        let response = create(&channel, Some(&bearer), &csr.csr_pem, asked)
            .await
            .expect("signed");
        let life = lifetime(&accept(response, &id, csr.key.clone()));
        assert!(
            (Duration::from_secs(600)..=Duration::from_secs(660)).contains(&life),
            "{asked}: {life:?}"
        );
    }
    discovery.shutdown().await;
}

#[tokio::test]
async fn ads_and_the_ca_share_the_tls_port() {
    let state = tempfile::tempdir().expect("tempdir");
    let discovery = start(state.path(), |_| {}).await;
    let token = issue_token(&discovery, "shop", "httpbin", "httpbin-0");
    let channel = secure_channel(&discovery).await;
    let bearer = format!("Bearer {}", token.token().expose());

    let id = SpiffeId::new("cluster.local", "shop", "httpbin").expect("id");
    let csr = CsrAndKey::generate(&id).expect("csr");
    create(&channel, Some(&bearer), &csr.csr_pem, 3600)
        .await
        .expect("the CA answers on the secure port");

    let node = ProxyId::sidecar(
        IpAddr::V4(Ipv4Addr::new(10, 244, 0, 9)),
        "httpbin-0",
        "shop",
    )
    .to_node(&BTreeMap::new());
    let first = DeltaDiscoveryRequest {
        node: Some(node),
        type_url: xds::ads::ResourceType::ALL[0].type_url().to_string(),
        ..Default::default()
    };
    let ads = |authorization: Option<&str>| {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut request = tonic::Request::new(tokio_stream_of(rx));
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().expect("ascii"));
        }
        (tx, request)
    };

    // With the token: the stream opens and the first response comes.
    let (tx, request) = ads(Some(&bearer));
    tx.send(first.clone()).await.expect("send");
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    let mut responses = client
        .delta_aggregated_resources(request)
        .await
        .expect("ADS stream over TLS")
        .into_inner();
    let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a response in time")
        .expect("no error")
        .expect("a response");
    assert_eq!(response.type_url, first.type_url);
    drop(tx);

    // Without (or with a wrong) token: Unauthenticated, before the server reads anything.
    for authorization in [None, Some("Bearer nope")] {
        let (tx, request) = ads(authorization);
        tx.send(first.clone()).await.expect("send");
        let err = match client.delta_aggregated_resources(request).await {
            Err(status) => status,
            Ok(stream) => stream
                .into_inner()
                .message()
                .await
                .expect_err("the stream fails"),
        };
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "{authorization:?}: {err:?}"
        );
    }
    discovery.shutdown().await;
}

fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<DeltaDiscoveryRequest>,
) -> impl futures_util::Stream<Item = DeltaDiscoveryRequest> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

#[tokio::test]
async fn clients_verify_the_server_against_the_root() {
    let state = tempfile::tempdir().expect("tempdir");
    let discovery = start(state.path(), |_| {}).await;
    let security = discovery.security().expect("security");
    let root = published_root(&discovery);

    // The published root verifies the serving certificate for istiod's name.
    TlsDialer::new(security.secure_grpc_addr, &root, &[b"h2"])
        .dial()
        .await
        .expect("trusted");
    // And for the IP it listens on (what `ama up` sidecars dial).
    let mut by_ip = TlsDialer::new(security.secure_grpc_addr, &root, &[b"h2"]);
    by_ip.server_name = rustls_pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    by_ip.dial().await.expect("IP SAN");

    // Another mesh's root: refused.
    let other = CertificateAuthority::generate("cluster.local").expect("other CA");
    let err = TlsDialer::new(
        security.secure_grpc_addr,
        other.roots_pem().as_bytes(),
        &[b"h2"],
    )
    .dial()
    .await
    .expect_err("untrusted root");
    // Same subject (`O=cluster.local`), other key: the signature does not verify.
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    let err = TlsDialer::new(
        security.secure_grpc_addr,
        other.roots_pem().as_bytes(),
        &[b"h2"],
    )
    .channel()
    .await
    .expect_err("no channel either");
    drop(err);

    // The right root, another name: refused.
    let mut wrong_name = TlsDialer::new(security.secure_grpc_addr, &root, &[b"h2"]);
    wrong_name.server_name = rustls_pki_types::ServerName::try_from("evil.example").expect("name");
    let err = wrong_name.dial().await.expect_err("name mismatch");
    assert!(err.to_string().contains("not valid for name"), "{err}");

    // The server lives on.
    TlsDialer::new(security.secure_grpc_addr, &root, &[b"h2"])
        .dial()
        .await
        .expect("still serving");
    discovery.shutdown().await;
}

#[tokio::test]
async fn the_trust_domain_follows_the_mesh_config() {
    let state = tempfile::tempdir().expect("tempdir");
    let config = state.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join("mesh.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n\
         data:\n  mesh: |\n    trustDomain: example.org\n",
    )
    .expect("write");
    let discovery = start(state.path(), |_| {}).await;
    let security = discovery.security().expect("security");
    assert_eq!(security.ca.trust_domain(), "example.org");
    let token = issue_token(&discovery, "shop", "httpbin", "httpbin-0");
    let channel = TlsDialer::new(
        security.secure_grpc_addr,
        &published_root(&discovery),
        &[b"h2"],
    )
    .channel()
    .await
    .expect("TLS");
    let id = SpiffeId::new("example.org", "shop", "httpbin").expect("id");
    let csr = CsrAndKey::generate(&id).expect("csr");
    let bearer = format!("Bearer {}", token.token().expose());
    let response = create(&channel, Some(&bearer), &csr.csr_pem, 3600)
        .await
        .expect("signed");
    accept(response, &id, csr.key);
    discovery.shutdown().await;
}
