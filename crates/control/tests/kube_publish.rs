//! What the control plane writes to the API server, against recorded responses: the root
//! certificate ConfigMap per namespace, and the injection webhook's caBundle.

#[path = "kube/mock.rs"]
mod mock;

use control::registry::kube::publish::{
    DEFAULT_WEBHOOK_CONFIG_NAME, Published, ca_bundle_patch, root_config_map,
};
use control::registry::kube::{KubeError, patch_webhook_ca_bundle, publish_root, publish_root_to};
use http::{Method, StatusCode};
use mock::{ApiServer, Reply, fixture};
use serde_json::{Value, json};

const ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBrecorded\n-----END CERTIFICATE-----\n";
const WEBHOOK_PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector";

#[tokio::test]
async fn root_cert_is_created_or_replaced_in_every_namespace_but_kubernetes_own() {
    let api = ApiServer::new();
    api.expect(
        Method::GET,
        "/api/v1/namespaces",
        false,
        Reply::file("namespaces.list.json"),
    );
    // default: an older root is there (409 on create, read, replaced); istio-system: created.
    api.expect(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        false,
        Reply::Json(StatusCode::CONFLICT, fixture("status.409.configmap.json")),
    );
    api.expect(
        Method::GET,
        "/api/v1/namespaces/default/configmaps/istio-ca-root-cert",
        false,
        Reply::file("configmap.root.stale.json"),
    );
    api.handle(Method::PUT, "/api/v1/namespaces/default/", |seen| {
        let mut replaced = seen.body.clone();
        replaced["metadata"]["resourceVersion"] = json!("1902");
        Reply::Json(StatusCode::OK, replaced.to_string())
    });
    api.handle(Method::POST, "/api/v1/namespaces/istio-system/", |seen| {
        let mut created = seen.body.clone();
        created["metadata"]["resourceVersion"] = json!("1903");
        Reply::Json(StatusCode::CREATED, created.to_string())
    });
    let written = publish_root(&api.client(), ROOT_PEM)
        .await
        .expect("published");
    assert_eq!(written, ["default", "istio-system"]);

    let log = api.log();
    let calls: Vec<(Method, &str)> = log
        .iter()
        .map(|s| (s.method.clone(), s.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            (Method::GET, "/api/v1/namespaces"),
            (Method::POST, "/api/v1/namespaces/default/configmaps"),
            (
                Method::GET,
                "/api/v1/namespaces/default/configmaps/istio-ca-root-cert"
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/default/configmaps/istio-ca-root-cert"
            ),
            (Method::POST, "/api/v1/namespaces/istio-system/configmaps"),
        ]
    );
    let created = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "istio-ca-root-cert",
            "namespace": "istio-system",
            "labels": {"istio.io/config": "true"},
        },
        "data": {"root-cert.pem": ROOT_PEM},
    });
    assert_eq!(log[4].body, created);
    assert_eq!(
        serde_json::to_value(root_config_map("istio-system", ROOT_PEM)).expect("json"),
        created
    );
    assert_eq!(log[4].query["fieldManager"], "ama-discovery");
    // The replacement keeps what was read (uid, resourceVersion for optimistic concurrency)
    // and carries the new root.
    let put = &log[3].body;
    assert_eq!(put["metadata"]["resourceVersion"], "1377");
    assert_eq!(
        put["metadata"]["uid"],
        "6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d"
    );
    assert_eq!(put["data"]["root-cert.pem"], ROOT_PEM);
    assert_eq!(put["metadata"]["labels"]["istio.io/config"], "true");
}

#[tokio::test]
async fn root_cert_already_in_place_is_not_written() {
    let api = ApiServer::new();
    api.expect(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        false,
        Reply::Json(StatusCode::CONFLICT, fixture("status.409.configmap.json")),
    );
    let mut current: Value =
        serde_json::from_str(&fixture("configmap.root.stale.json")).expect("json");
    current["data"]["root-cert.pem"] = json!(ROOT_PEM);
    api.expect(
        Method::GET,
        "/api/v1/namespaces/default/configmaps/istio-ca-root-cert",
        false,
        Reply::Json(StatusCode::OK, current.to_string()),
    );
    let published = publish_root_to(&api.client(), "default", ROOT_PEM)
        .await
        .expect("checked");
    assert_eq!(published, Published::Unchanged);
    assert_eq!(api.log().len(), 2, "{:#?}", api.summary());
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
