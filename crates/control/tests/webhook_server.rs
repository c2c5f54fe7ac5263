//! The injection webhook over HTTPS, in process: `Discovery::start` with the webhook on loopback,
//! the AdmissionReview v1 payloads of the inject crate's tests (as the API server sends them),
//! and a client trusting the root the control plane published (the `caBundle`).
//!
//! - a pod in a namespace labelled `istio-injection=enabled` (labels from the control plane's
//!   model) gets a JSONPatch; the same pod in an unlabelled namespace, a `kube-system` pod and an
//!   opted-out pod get `allowed: true` without one;
//! - a review without an object, of another version, or not JSON gets `allowed: false` with the
//!   reason (an AdmissionReview, status 200);
//! - wrong method, path or content type: 405, 404, 415; a body over 8 MiB: 413, declared or
//!   streamed, and the server goes on answering;
//! - Istio's path parameters (`/inject/cluster/<c>/net/<n>`) are accepted; HTTP/2 works too.

mod ca_support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ca_support::{TlsDialer, published_root, start};
use http_body_util::{BodyExt as _, Full};
use hyper::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn payload(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../inject/tests/webhook")
        .join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn in_namespace(body: &[u8], namespace: &str) -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(body).expect("JSON");
    review["request"]["namespace"] = json!(namespace);
    review["request"]["object"]["metadata"]["namespace"] = json!(namespace);
    serde_json::to_vec(&review).expect("JSON")
}

/// One HTTP/1.1 request over a new TLS connection.
async fn request(
    dialer: &TlsDialer,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    let tls = dialer.dial().await.expect("TLS to the webhook");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1");
    tokio::spawn(conn);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "istiod.istio-system.svc");
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    let response = sender
        .send_request(builder.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

async fn review(dialer: &TlsDialer, body: Vec<u8>) -> Value {
    let (status, body) = request(dialer, "POST", "/inject", Some("application/json"), body).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).expect("JSON answer");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    answer
}

fn assert_patched(answer: &Value, uid: &str) {
    let response = &answer["response"];
    assert_eq!(response["uid"], uid);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    assert!(response["patch"].as_str().is_some_and(|p| !p.is_empty()));
}

fn assert_skipped(answer: &Value, uid: &str) {
    let response = &answer["response"];
    assert_eq!(response["uid"], uid);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
}

fn assert_refused(answer: &Value, uid: &str) -> String {
    let response = &answer["response"];
    assert_eq!(response["uid"], uid);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{response}");
    message.to_string()
}

#[tokio::test]
async fn answers_admission_reviews_over_https() {
    let state = tempfile::tempdir().expect("tempdir");
    let discovery = start(state.path(), |_| {}).await;
    let addr = discovery
        .security()
        .and_then(|s| s.webhook_addr)
        .expect("webhook");
    let root = published_root(&discovery);
    let dialer = TlsDialer::new(addr, &root, &[b"http/1.1"]);

    let create = payload("create-pod.json");
    let uid = "705ab4f5-6393-11e8-b7cc-42010a800002";
    assert_patched(&review(&dialer, create.clone()).await, uid);
    // The namespace's labels come from the control plane's model: `plain` has none.
    assert_skipped(&review(&dialer, in_namespace(&create, "plain")).await, uid);
    assert_skipped(
        &review(&dialer, payload("kube-system.json")).await,
        "4e1f9c2b-7a3d-4b8e-9f0a-2c6d1e5b7a33",
    );
    assert_skipped(
        &review(&dialer, payload("opted-out.json")).await,
        "c2a7e5d1-9b3f-4a6c-8e2d-1f0b7c9a5e44",
    );
    assert_skipped(
        &review(&dialer, payload("host-network.json")).await,
        "0b6d3e9a-1c2f-4e5b-9a7d-3e2f1c0b9a81",
    );

    // Malformed reviews: an AdmissionReview error, not an HTTP error.
    assert_refused(
        &review(&dialer, payload("missing-object.json")).await,
        "f1e2d3c4-b5a6-4978-8a9b-0c1d2e3f4a66",
    );
    let message = assert_refused(
        &review(&dialer, payload("v1beta1.json")).await,
        &v1beta1_uid(),
    );
    assert!(message.contains("admission.k8s.io/v1"), "{message}");
    assert_refused(&review(&dialer, b"{not json".to_vec()).await, "");
    assert_refused(&review(&dialer, Vec::new()).await, "");
    assert_refused(&review(&dialer, b"[1,2,3]".to_vec()).await, "");

    // Istio's path parameters are accepted and ignored; the media type may carry parameters.
    let (status, body) = request(
        &dialer,
        "POST",
        "/inject/cluster/Kubernetes/net/network1",
        Some("application/json; charset=utf-8"),
        create.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_patched(&serde_json::from_slice(&body).expect("JSON"), uid);

    // HTTP mistakes.
    let (status, _) = request(&dialer, "GET", "/inject", None, Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = request(
        &dialer,
        "POST",
        "/mutate",
        Some("application/json"),
        create.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = request(
        &dialer,
        "POST",
        "/inject",
        Some("text/plain"),
        create.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = request(&dialer, "POST", "/inject", None, create.clone()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // HTTP/2, as the API server may speak it.
    let h2 = TlsDialer::new(addr, &root, &[b"h2"]);
    let tls = h2.dial().await.expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2");
    tokio::spawn(conn);
    let response = sender
        .send_request(
            http::Request::post("https://istiod.istio-system.svc/inject")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(create)))
                .expect("request"),
        )
        .await
        .expect("h2 response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_patched(&serde_json::from_slice(&body).expect("JSON"), uid);

    discovery.shutdown().await;
}

fn v1beta1_uid() -> String {
    let review: Value = serde_json::from_slice(&payload("v1beta1.json")).expect("JSON");
    review["request"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn oversized_bodies_are_refused_and_the_server_lives_on() {
    let state = tempfile::tempdir().expect("tempdir");
    let discovery = start(state.path(), |_| {}).await;
    let addr = discovery
        .security()
        .and_then(|s| s.webhook_addr)
        .expect("webhook");
    let root = published_root(&discovery);
    let dialer = TlsDialer::new(addr, &root, &[b"http/1.1"]);
    let limit = control::webhook_server::MAX_BODY;

    // Declared too large: refused from the headers.
    let big = vec![b' '; limit + 1];
    let (status, _) = request(&dialer, "POST", "/inject", Some("application/json"), big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Streamed (chunked, no length): refused once the limit is crossed.
    let mut tls = dialer.dial().await.expect("TLS");
    tls.write_all(
        b"POST /inject HTTP/1.1\r\nhost: istiod\r\ncontent-type: application/json\r\n\
          transfer-encoding: chunked\r\n\r\n",
    )
    .await
    .expect("head");
    let (mut read, mut write) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let chunk = vec![b' '; 1024 * 1024];
        for _ in 0..=(limit / chunk.len() + 1) {
            let head = format!("{:x}\r\n", chunk.len());
            if write.write_all(head.as_bytes()).await.is_err()
                || write.write_all(&chunk).await.is_err()
                || write.write_all(b"\r\n").await.is_err()
            {
                return;
            }
        }
        let _ = write.write_all(b"0\r\n\r\n").await;
    });
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), read.read(&mut head))
        .await
        .expect("an answer in time")
        .expect("read");
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    drop(read);
    writer.abort();

    // Still serving.
    assert_patched(
        &review(&dialer, payload("create-pod.json")).await,
        "705ab4f5-6393-11e8-b7cc-42010a800002",
    );
    discovery.shutdown().await;
}

#[tokio::test]
async fn clients_trusting_another_root_are_refused() {
    let state = tempfile::tempdir().expect("tempdir");
    let discovery = start(state.path(), |_| {}).await;
    let addr = discovery
        .security()
        .and_then(|s| s.webhook_addr)
        .expect("webhook");
    let other = identity::CertificateAuthority::generate("cluster.local").expect("CA");
    let err = TlsDialer::new(addr, other.roots_pem().as_bytes(), &[b"http/1.1"])
        .dial()
        .await
        .expect_err("untrusted");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    discovery.shutdown().await;
}
