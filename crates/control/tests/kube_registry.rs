//! The Kubernetes registry against recorded API-server responses (tests/kube/*.json): lists and
//! watch streams reach the store and the model; deletes, re-lists after `410 Gone`, a malformed
//! VirtualService, CRD version fallback, and the root certificate published per namespace.

#[path = "kube/mock.rs"]
mod mock;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use control::model::{Model, VipAllocator};
use control::registry::ConfigStore;
use control::registry::kube::publish::root_config_map;
use control::registry::kube::{KINDS, KubeOptions, KubeRegistry};
use control::translate::{ProxyKey, proxy_resources};
use http::{Method, StatusCode};
use mock::{ApiServer, Reply, Seen, fixture};
use serde_json::json;
use xds::TlsMode;

const ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBrecorded\n-----END CERTIFICATE-----\n";

/// Every `Kind namespace/name` in the store.
fn names(store: &ConfigStore) -> Vec<String> {
    let snapshot = store.snapshot();
    let (objects, _) = snapshot.objects();
    let mut names: Vec<String> = objects.iter().map(|o| o.display()).collect();
    names.sort();
    names
}

/// Polls the store (up to 10 s) until `done`.
async fn until(store: &ConfigStore, what: &str, done: impl Fn(&[String]) -> bool) {
    for _ in 0..200 {
        if done(&names(store)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}; store: {:#?}", names(store));
}

fn model(store: &ConfigStore) -> Model {
    let snapshot = store.snapshot();
    let (objects, _) = snapshot.objects();
    Model::build(objects, &mut VipAllocator::new())
}

/// The cluster of the recordings: the seed's httpbin and sleep in `default`, PeerAuthentication
/// served only at v1beta1, no Gateway/DestinationRule/ServiceEntry/Sidecar/AuthorizationPolicy
/// CRDs; ConfigMap creations succeed (201, the object echoed).
fn cluster() -> Arc<ApiServer> {
    let api = ApiServer::new();
    api.list_watch(
        "/api/v1/namespaces",
        "namespaces.list.json",
        Some("namespaces.watch.jsonl"),
    );
    api.list_watch("/api/v1/services", "services.list.json", None);
    api.list_watch("/api/v1/pods", "pods.list.json", Some("pods.watch.jsonl"));
    api.list_watch(
        "/apis/discovery.k8s.io/v1/endpointslices",
        "endpointslices.list.json",
        None,
    );
    api.list_watch(
        "/api/v1/namespaces/istio-system/configmaps",
        "configmaps.istio.list.json",
        None,
    );
    api.list_watch(
        "/apis/networking.istio.io/v1/virtualservices",
        "virtualservices.v1.list.json",
        None,
    );
    api.expect(
        Method::GET,
        "/apis/security.istio.io/v1/peerauthentications",
        false,
        Reply::Json(StatusCode::NOT_FOUND, fixture("status.404.json")),
    );
    api.list_watch(
        "/apis/security.istio.io/v1beta1/peerauthentications",
        "peerauthentications.v1beta1.list.json",
        None,
    );
    api.handle(Method::POST, "/api/v1/namespaces/", |seen| {
        let mut created = seen.body.clone();
        created["metadata"]["resourceVersion"] = json!("1900");
        created["metadata"]["uid"] = json!("5f6a7b8c-9d0e-4f1a-8b2c-3d4e5f6a7b8c");
        created["metadata"]["creationTimestamp"] = json!("2026-11-25T10:02:12Z");
        Reply::Json(StatusCode::CREATED, created.to_string())
    });
    api
}

fn options() -> KubeOptions {
    KubeOptions {
        root_cert: Some(ROOT_PEM.to_string()),
        crd_retry: Duration::from_secs(3600),
        ..KubeOptions::default()
    }
}

#[tokio::test]
async fn cluster_objects_reach_the_store_and_the_proxies() {
    let api = cluster();
    let (store, _changes) = ConfigStore::new();
    let registry = KubeRegistry::start(api.client(), Arc::clone(&store), options());
    tokio::time::timeout(Duration::from_secs(10), registry.wait_synced())
        .await
        .expect("every kind listed");
    // The watch events: a namespace added, the sleep pod annotated.
    until(&store, "the watch events", |names| {
        names.iter().any(|n| n == "Namespace bookinfo")
    })
    .await;

    assert_eq!(
        names(&store),
        [
            "ConfigMap istio-system/istio",
            "EndpointSlice default/httpbin-service-x7k2q",
            "EndpointSlice default/kubernetes",
            "Namespace bookinfo",
            "Namespace default",
            "Namespace istio-system",
            "Namespace kube-system",
            "PeerAuthentication istio-system/default",
            // The finished Job pod (phase Succeeded) is left out.
            "Pod default/httpbin-deployment-9bfd96975-px5lv",
            "Pod default/httpbin-legacy-5d8c7b6f4-q9wzt",
            "Pod default/sleep-6c8b7f5d9-k4m2n",
            "Service default/httpbin-service",
            "Service default/kubernetes",
            "VirtualService default/httpbin",
        ]
    );
    let sources: Vec<String> = store
        .snapshot()
        .sources
        .iter()
        .map(|(s, _)| s.clone())
        .collect();
    assert!(
        sources.iter().all(|s| s.starts_with("kubernetes/")),
        "{sources:?}"
    );

    // The malformed VirtualService is reported with its field path; the other one applies.
    let errors = registry.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].object.as_deref(),
        Some("VirtualService default/reviews-bad")
    );
    assert_eq!(errors[0].field, "spec.http[0].route[0].weight");
    assert_eq!(errors[0].source_name, "kubernetes/VirtualService");

    // Newest served version of each CRD; the ones not installed are absent.
    let versions = registry.versions();
    assert_eq!(
        versions.get("VirtualService").map(String::as_str),
        Some("v1")
    );
    assert_eq!(
        versions.get("PeerAuthentication").map(String::as_str),
        Some("v1beta1")
    );
    assert_eq!(versions.get("Gateway"), None);

    // The model, as the sleep pod's proxy receives it.
    let model = model(&store);
    assert_eq!(model.trust_domain, "cluster.local");
    let sleep = ProxyKey {
        ip: "10.244.1.20".parse().expect("ip"),
        pod_name: "sleep-6c8b7f5d9-k4m2n".into(),
        namespace: "default".into(),
    };
    let resources = proxy_resources(&model, &sleep);
    let me = resources.node.as_ref().expect("self");
    assert_eq!(
        me.uid.as_deref(),
        Some("Kubernetes//Pod/default/sleep-6c8b7f5d9-k4m2n")
    );
    let httpbin = resources
        .services
        .iter()
        .find(|s| s.hostname == "httpbin-service.default.svc.cluster.local")
        .expect("httpbin-service");
    assert_eq!(
        httpbin.vips,
        ["10.96.142.17".parse::<IpAddr>().expect("ip")]
    );
    assert_eq!(httpbin.ports.len(), 1);
    assert_eq!(httpbin.ports[0].port, 80);
    let endpoints: Vec<(String, TlsMode, Option<&str>)> = httpbin
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.tls_mode, e.identity.as_deref()))
        .collect();
    assert_eq!(
        endpoints,
        [
            (
                "10.244.1.12".to_string(),
                TlsMode::Istio,
                Some("spiffe://cluster.local/ns/default/sa/httpbin")
            ),
            (
                "10.244.2.7".to_string(),
                TlsMode::Disabled,
                Some("spiffe://cluster.local/ns/default/sa/default")
            ),
        ]
    );
    let httpbin_workload = resources
        .workloads
        .iter()
        .find(|w| w.name == "httpbin-deployment-9bfd96975-px5lv")
        .expect("httpbin workload");
    assert_eq!(
        httpbin_workload.workload_name.as_deref(),
        Some("httpbin-deployment")
    );
    assert_eq!(httpbin_workload.canonical_name.as_deref(), Some("httpbin"));
    assert_eq!(httpbin_workload.service_account, "httpbin");
    let sleep_workload = resources
        .workloads
        .iter()
        .find(|w| w.name == "sleep-6c8b7f5d9-k4m2n")
        .expect("sleep workload");
    assert!(sleep_workload.tls_mode == TlsMode::Istio);
    assert_eq!(
        resources
            .http_routes
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["default/httpbin"]
    );
    let peer = resources
        .authorizations
        .iter()
        .find(|a| {
            a.namespace == "istio-system"
                && a.name
                    == control::model::config::PEER_AUTHENTICATION_PREFIX.to_string() + "default"
        })
        .expect("mesh-wide PeerAuthentication");
    assert_eq!(
        peer.peer_authentication.as_ref().map(|p| p.mode),
        Some(xds::MtlsMode::Strict)
    );

    // A DELETED pod disappears from the store and the model.
    api.push("/api/v1/pods", "pods.deleted.jsonl");
    until(&store, "the deleted pod to go", |names| {
        !names
            .iter()
            .any(|n| n == "Pod default/httpbin-legacy-5d8c7b6f4-q9wzt")
    })
    .await;
    let model = self::model(&store);
    assert!(
        model
            .workloads
            .iter()
            .all(|w| w.name != "httpbin-legacy-5d8c7b6f4-q9wzt")
    );
    assert!(
        model
            .workloads
            .iter()
            .any(|w| w.name == "sleep-6c8b7f5d9-k4m2n")
    );

    // The root certificate, created in every namespace but Kubernetes' own, bookinfo included
    // as soon as it appeared.
    api.wait_for("istio-ca-root-cert in 3 namespaces", |log| {
        log.iter().filter(|s| s.method == Method::POST).count() >= 3
    })
    .await;
    let log = api.log();
    let mut created: Vec<&str> = log
        .iter()
        .filter(|s| s.method == Method::POST)
        .map(|s| {
            assert_eq!(s.content_type.as_deref(), Some("application/json"));
            assert_eq!(s.query["fieldManager"], "ama-discovery");
            let ns = s.body["metadata"]["namespace"].as_str().expect("namespace");
            assert_eq!(s.path, format!("/api/v1/namespaces/{ns}/configmaps"));
            assert_eq!(
                s.body,
                serde_json::to_value(root_config_map(ns, ROOT_PEM)).expect("json")
            );
            ns
        })
        .collect();
    created.sort();
    assert_eq!(created, ["bookinfo", "default", "istio-system"]);

    assert_requests(&log);
    registry.shutdown().await;
}

/// What kube-rs asked: a paged list then a watch from its resourceVersion for each served kind;
/// v1, v1beta1 then v1alpha3 for a CRD that is not installed; nothing but GET and the POSTs.
fn assert_requests(log: &[Seen]) {
    for s in log.iter().filter(|s| s.method == Method::GET) {
        if s.is_watch() {
            assert_eq!(s.query["resourceVersion"], "1843", "{s:?}");
            assert_eq!(s.query["allowWatchBookmarks"], "true", "{s:?}");
            assert_eq!(s.query["timeoutSeconds"], "290", "{s:?}");
        } else {
            assert_eq!(s.query["limit"], "500", "{s:?}");
        }
    }
    let mesh = log
        .iter()
        .find(|s| s.path == "/api/v1/namespaces/istio-system/configmaps" && !s.is_watch())
        .expect("MeshConfig list");
    assert_eq!(mesh.query["fieldSelector"], "metadata.name=istio");
    let gateway: Vec<&str> = log
        .iter()
        .filter(|s| s.path.ends_with("/gateways"))
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(
        gateway,
        [
            "/apis/networking.istio.io/v1/gateways",
            "/apis/networking.istio.io/v1beta1/gateways",
            "/apis/networking.istio.io/v1alpha3/gateways",
        ]
    );
    let watched: Vec<&str> = log
        .iter()
        .filter(|s| s.is_watch())
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(watched.len(), 7, "{watched:?}");
    assert!(
        log.iter()
            .all(|s| s.method == Method::GET || s.method == Method::POST)
    );
}

#[tokio::test]
async fn relist_after_410_gone_drops_what_was_deleted_meanwhile() {
    let api = ApiServer::new();
    api.expect(
        Method::GET,
        "/api/v1/pods",
        false,
        Reply::file("pods.list.json"),
    );
    // The watch is too old: the API server sends 410 Gone and closes the stream.
    api.expect(
        Method::GET,
        "/api/v1/pods",
        true,
        Reply::Watch {
            events: fixture("pods.gone.jsonl"),
            close: true,
        },
    );
    api.expect(
        Method::GET,
        "/api/v1/pods",
        false,
        Reply::file("pods.relist.json"),
    );
    api.expect(Method::GET, "/api/v1/pods", true, Reply::watch(None));
    let pods = KINDS
        .iter()
        .find(|k| k.kind == "Pod")
        .copied()
        .expect("Pod kind");
    let (store, _changes) = ConfigStore::new();
    let registry = KubeRegistry::start(
        api.client(),
        Arc::clone(&store),
        KubeOptions {
            kinds: vec![pods],
            ..KubeOptions::default()
        },
    );
    // Only the httpbin pod is in the second list: the others were deleted while the watch was
    // down, and go with the re-list.
    until(&store, "the re-list", |names| {
        names == ["Pod default/httpbin-deployment-9bfd96975-px5lv"]
    })
    .await;
    api.wait_for("the watch after the re-list", |log| {
        log.iter().any(|s| {
            s.is_watch() && s.query.get("resourceVersion").map(String::as_str) == Some("2400")
        })
    })
    .await;
    let lists = api.log().iter().filter(|s| !s.is_watch()).count();
    assert_eq!(lists, 2, "{:#?}", api.summary());
    assert!(registry.synced());
    registry.shutdown().await;
}

#[tokio::test]
async fn a_crd_installed_later_is_found() {
    let api = ApiServer::new();
    // Not installed at first (every version 404), then served at v1.
    api.expect(
        Method::GET,
        "/apis/networking.istio.io/v1/virtualservices",
        false,
        Reply::Json(StatusCode::NOT_FOUND, fixture("status.404.json")),
    );
    api.list_watch(
        "/apis/networking.istio.io/v1/virtualservices",
        "virtualservices.v1.list.json",
        None,
    );
    let vs = KINDS
        .iter()
        .find(|k| k.kind == "VirtualService")
        .copied()
        .expect("VirtualService kind");
    let (store, _changes) = ConfigStore::new();
    let registry = KubeRegistry::start(
        api.client(),
        Arc::clone(&store),
        KubeOptions {
            kinds: vec![vs],
            crd_retry: Duration::from_millis(200),
            ..KubeOptions::default()
        },
    );
    tokio::time::timeout(Duration::from_secs(10), registry.wait_synced())
        .await
        .expect("synced while not installed");
    until(&store, "the VirtualService", |names| {
        names == ["VirtualService default/httpbin"]
    })
    .await;
    assert_eq!(
        registry
            .versions()
            .get("VirtualService")
            .map(String::as_str),
        Some("v1")
    );
    registry.shutdown().await;
}

#[tokio::test]
async fn secrets_of_credential_types_reach_the_store() {
    let api = ApiServer::new();
    let secret = |name: &str, secret_type: &str| {
        json!({
            "metadata": {"name": name, "namespace": "istio-system", "resourceVersion": "1700"},
            "type": secret_type,
            // base64 of "-----BEGIN CERTIFICATE-----\n" and "SECRETKEY"
            "data": {"tls.crt": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==", "tls.key": "U0VDUkVUS0VZ"},
        })
    };
    let list = json!({
        "apiVersion": "v1",
        "kind": "SecretList",
        "metadata": {"continue": "", "resourceVersion": "1843"},
        "items": [
            secret("httpbin-credential", "kubernetes.io/tls"),
            secret("client-credential", "Opaque"),
            secret("regcred", "kubernetes.io/dockerconfigjson"),
        ],
    });
    api.expect(
        Method::GET,
        "/api/v1/secrets",
        false,
        Reply::Json(StatusCode::OK, list.to_string()),
    );
    api.expect(Method::GET, "/api/v1/secrets", true, Reply::watch(None));
    let (store, _changes) = ConfigStore::new();
    let registry = KubeRegistry::start(
        api.client(),
        Arc::clone(&store),
        KubeOptions {
            kinds: vec![control::registry::kube::SECRET],
            ..KubeOptions::default()
        },
    );
    tokio::time::timeout(Duration::from_secs(10), registry.wait_synced())
        .await
        .expect("listed");
    until(&store, "the Secrets", |names| {
        names
            == [
                "Secret istio-system/client-credential",
                "Secret istio-system/httpbin-credential",
            ]
    })
    .await;
    let snapshot = store.snapshot();
    let (objects, _) = snapshot.objects();
    let tls = objects
        .iter()
        .find_map(|o| match o {
            api::objects::Object::Secret(s) if s.metadata.name == "httpbin-credential" => Some(s),
            _ => None,
        })
        .expect("the tls Secret");
    assert_eq!(tls.secret_type, "kubernetes.io/tls");
    assert_eq!(tls.data["tls.key"], b"SECRETKEY");
    assert!(!format!("{objects:?}").contains("SECRETKEY"));
    // The list and the watch leave out Helm releases and service-account tokens.
    let log = api.log();
    let asked: Vec<&str> = log
        .iter()
        .filter(|s| s.path == "/api/v1/secrets")
        .map(|s| s.query["fieldSelector"].as_str())
        .collect();
    assert_eq!(
        asked,
        [control::registry::kube::SECRET_FIELDS; 2],
        "{log:?}"
    );
    assert_eq!(
        control::registry::kube::SECRET_FIELDS,
        "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token"
    );
    registry.shutdown().await;
}
