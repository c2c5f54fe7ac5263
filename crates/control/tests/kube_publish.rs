//! What the control plane writes to the API server, against recorded responses: the root
//! certificate ConfigMap per namespace, and the injection webhook's caBundle.

#[path = "kube/mock.rs"]
mod mock;

use control::registry::kube::publish::{
    DEFAULT_WEBHOOK_CONFIG_NAME, ca_bundle_patch, root_config_map,
};
use control::registry::kube::{KubeError, patch_webhook_ca_bundle, publish_root};
use http::{Method, StatusCode};
use mock::{ApiServer, Reply, fixture};
use serde_json::{Value, json};

const ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBrecorded\n-----END CERTIFICATE-----\n";
const WEBHOOK_PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector";

#[tokio::test]
async fn root_cert_is_applied_in_every_namespace_but_kubernetes_own() {
    let api = ApiServer::new();
    api.expect(
        Method::GET,
        "/api/v1/namespaces",
        false,
        Reply::file("namespaces.list.json"),
    );
    api.handle(Method::PATCH, "/api/v1/namespaces/", |seen| {
        Reply::Json(StatusCode::OK, seen.body.to_string())
    });
    let written = publish_root(&api.client(), ROOT_PEM)
        .await
        .expect("published");
    assert_eq!(written, ["default", "istio-system"]);

    let log = api.log();
    assert_eq!(log.len(), 3, "{:#?}", api.summary());
    assert_eq!(log[0].method, Method::GET);
    for (seen, ns) in log[1..].iter().zip(["default", "istio-system"]) {
        assert_eq!(seen.method, Method::PATCH);
        assert_eq!(
            seen.path,
            format!("/api/v1/namespaces/{ns}/configmaps/istio-ca-root-cert")
        );
        assert_eq!(
            seen.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        assert_eq!(seen.query["fieldManager"], "ama-discovery");
        assert_eq!(seen.query["force"], "true");
        assert_eq!(
            seen.body,
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "istio-ca-root-cert",
                    "namespace": ns,
                    "labels": {"istio.io/config": "true"},
                },
                "data": {"root-cert.pem": ROOT_PEM},
            })
        );
        assert_eq!(seen.body, root_config_map(ns, ROOT_PEM));
    }
}

#[tokio::test]
async fn forbidden_publication_says_what_and_why() {
    let api = ApiServer::new();
    api.expect(
        Method::GET,
        "/api/v1/namespaces",
        false,
        Reply::Json(
            StatusCode::FORBIDDEN,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "namespaces is forbidden: User \"system:serviceaccount:istio-system:istiod\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope",
                "reason": "Forbidden", "details": {"kind": "namespaces"}, "code": 403
            })
            .to_string(),
        ),
    );
    let e = publish_root(&api.client(), ROOT_PEM)
        .await
        .expect_err("forbidden");
    assert!(matches!(e, KubeError::Api { .. }));
    let text = e.to_string();
    assert!(
        text.starts_with("listing namespaces: 403 Forbidden: namespaces is forbidden"),
        "{text}"
    );
    assert!(text.contains("RBAC"), "{text}");
}

#[tokio::test]
async fn webhook_ca_bundle_is_patched_by_webhook_name_once() {
    let api = ApiServer::new();
    let recorded = fixture("mutatingwebhookconfiguration.json");
    api.expect(
        Method::GET,
        WEBHOOK_PATH,
        false,
        Reply::Json(StatusCode::OK, recorded.clone()),
    );
    // The patched object, as the API server returns it.
    let mut patched: Value = serde_json::from_str(&recorded).expect("recorded json");
    let bundle = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJyZWNvcmRlZAotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg==";
    for webhook in patched["webhooks"].as_array_mut().expect("webhooks") {
        webhook["clientConfig"]["caBundle"] = json!(bundle);
    }
    patched["metadata"]["resourceVersion"] = json!("1901");
    api.expect(
        Method::PATCH,
        WEBHOOK_PATH,
        false,
        Reply::Json(StatusCode::OK, patched.to_string()),
    );
    api.expect(
        Method::GET,
        WEBHOOK_PATH,
        false,
        Reply::Json(StatusCode::OK, patched.to_string()),
    );
    let client = api.client();

    assert!(
        patch_webhook_ca_bundle(&client, DEFAULT_WEBHOOK_CONFIG_NAME, ROOT_PEM)
            .await
            .expect("patched")
    );
    let log = api.log();
    assert_eq!(log.len(), 2, "{:#?}", api.summary());
    let patch = &log[1];
    assert_eq!(patch.method, Method::PATCH);
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    let expected = json!({
        "webhooks": [
            {"name": "namespace.sidecar-injector.istio.io", "clientConfig": {"caBundle": bundle}},
            {"name": "object.sidecar-injector.istio.io", "clientConfig": {"caBundle": bundle}},
        ]
    });
    assert_eq!(patch.body, expected);
    assert_eq!(
        ca_bundle_patch(
            &[
                "namespace.sidecar-injector.istio.io",
                "object.sidecar-injector.istio.io"
            ],
            ROOT_PEM
        ),
        expected
    );

    // Already in place: read, nothing written.
    assert!(
        !patch_webhook_ca_bundle(&client, DEFAULT_WEBHOOK_CONFIG_NAME, ROOT_PEM)
            .await
            .expect("checked")
    );
    let log = api.log();
    assert_eq!(log.len(), 3, "{:#?}", api.summary());
    assert_eq!(log[2].method, Method::GET);
}
