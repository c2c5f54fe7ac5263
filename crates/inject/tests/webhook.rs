//! The injection webhook on AdmissionReviews shaped like the API server's (`tests/webhook/*.json`:
//! a pod of a Deployment as the ReplicaSet controller creates it, with `generateName`, owner
//! references, the service-account volume and `userInfo`).
//!
//! An injected pod's patch is applied with the `json-patch` crate (RFC 6902) to the pod as sent
//! and must give exactly the pod that `inject_pod_template` makes.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use base64::Engine;
use inject::webhook::{Labels, review, workload_of_pod};
use inject::{InjectConfig, Outcome, inject_pod_template};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

fn payload(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/webhook")
        .join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Namespaces of the test cluster and their labels.
fn cluster(namespace: &str) -> Option<Labels> {
    let labels = |pairs: &[(&str, &str)]| -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    match namespace {
        "shop" => Some(labels(&[("istio-injection", "enabled")])),
        "plain" => Some(BTreeMap::new()),
        "canary" => Some(labels(&[("istio.io/rev", "canary")])),
        "revisioned" => Some(labels(&[("istio.io/rev", "default")])),
        "kube-system" | "istio-system" => Some(BTreeMap::new()),
        _ => None,
    }
}

/// Runs a review and returns the parsed AdmissionReview.
fn answer(body: &[u8]) -> Value {
    let out = review(body, &InjectConfig::default(), cluster);
    let value: Value = serde_json::from_slice(&out).expect("the answer is JSON");
    assert_eq!(value["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(value["kind"], "AdmissionReview");
    value
}

fn request_object(body: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(body).expect("test payload is JSON");
    review["request"]["object"].clone()
}

/// The pod after applying the answer's patch to the request's object.
fn patched(body: &[u8], answer: &Value) -> Value {
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let encoded = answer["response"]["patch"]
        .as_str()
        .expect("patch is a string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is RFC 6902");
    let mut pod = request_object(body);
    json_patch::patch(&mut pod, &patch).expect("the patch applies");
    pod
}

fn with_namespace(body: &[u8], namespace: &str) -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(body).expect("JSON");
    review["request"]["namespace"] = json!(namespace);
    review["request"]["object"]["metadata"]["namespace"] = json!(namespace);
    serde_json::to_vec(&review).expect("JSON")
}

fn assert_skipped(answer: &Value, uid: &str) {
    let response = answer["response"].as_object().expect("a response");
    assert_eq!(response["uid"], uid);
    assert_eq!(response["allowed"], true);
    assert!(
        !response.contains_key("patch") && !response.contains_key("patchType"),
        "{response:?}"
    );
}

fn assert_refused(answer: &Value, uid: &str, message: &str) {
    let response = &answer["response"];
    assert_eq!(response["uid"], uid);
    assert_eq!(response["allowed"], false);
    let got = response["status"]["message"].as_str().unwrap_or_default();
    assert!(
        got.starts_with(message),
        "message {got:?} should start with {message:?}"
    );
}

#[test]
fn pod_of_a_deployment_is_injected_by_a_patch() {
    let body = payload("create-pod.json");
    let answer = answer(&body);
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(answer["response"]["allowed"], true);

    let mut expected = request_object(&body);
    let workload = workload_of_pod(&expected, "shop");
    let outcome = inject_pod_template(&mut expected, &workload, &InjectConfig::default());
    assert_eq!(outcome, Ok(Outcome::Injected));
    let pod = patched(&body, &answer);
    assert_eq!(pod, expected);

    // The injected pod is Istio's: init and proxy containers, the Deployment as its owner, and
    // the app's readiness probe sent through the proxy's status port.
    let names = |list: &str| -> Vec<String> {
        pod["spec"][list]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names("initContainers"), ["istio-init"]);
    assert_eq!(names("containers"), ["httpbin", "istio-proxy"]);
    let env = &pod["spec"]["containers"][1]["env"];
    let var = |name: &str| {
        env.as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == name))
            .map(|v| v["value"].clone())
    };
    assert_eq!(var("ISTIO_META_WORKLOAD_NAME"), Some(json!("httpbin")));
    assert_eq!(
        var("ISTIO_META_OWNER"),
        Some(json!(
            "kubernetes://apis/apps/v1/namespaces/shop/deployments/httpbin"
        ))
    );
    assert_eq!(
        pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
        15020
    );
    assert_eq!(
        pod["metadata"]["labels"]["service.istio.io/canonical-name"],
        "httpbin"
    );
    assert!(
        pod["metadata"]["annotations"]["sidecar.istio.io/status"].is_string(),
        "status annotation"
    );
    // Fields the injector does not own are untouched.
    assert_eq!(pod["metadata"]["generateName"], "httpbin-5c9d6b8f4-");
    assert_eq!(
        pod["spec"]["tolerations"],
        request_object(&body)["spec"]["tolerations"]
    );
}

#[test]
fn namespaces_select_as_the_webhook_configuration_does() {
    let body = payload("create-pod.json");
    let uid = "705ab4f5-6393-11e8-b7cc-42010a800002";
    // Not labelled, another revision: no patch.
    assert_skipped(&answer(&with_namespace(&body, "plain")), uid);
    assert_skipped(&answer(&with_namespace(&body, "canary")), uid);
    // istio.io/rev of this (default) revision, or a namespace not known yet: injected.
    for namespace in ["revisioned", "unknown-yet"] {
        let body = with_namespace(&body, namespace);
        let answer = answer(&body);
        assert_eq!(answer["response"]["allowed"], true);
        let pod = patched(&body, &answer);
        assert_eq!(pod["spec"]["containers"][1]["name"], "istio-proxy");
    }
    // A pod that opts in by label, in a namespace that is not labelled.
    let mut review: Value = serde_json::from_slice(&with_namespace(&body, "plain")).expect("JSON");
    review["request"]["object"]["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("true");
    let body = serde_json::to_vec(&review).expect("JSON");
    let answer = answer(&body);
    assert_eq!(
        patched(&body, &answer)["spec"]["containers"][1]["name"],
        "istio-proxy"
    );
}

/// Istio's gateway Deployment's pod, created in istio-system: labelled for injection, the
/// gateway template, its own istio-proxy container with `image: auto`.
#[test]
fn gateway_pod_in_istio_system_gets_the_gateway_template() {
    let body = with_namespace(&payload("create-pod.json"), "istio-system");
    let uid = "705ab4f5-6393-11e8-b7cc-42010a800002";
    // The control plane's namespace is left alone unless the pod asks.
    assert_skipped(&answer(&body), uid);

    let mut review: Value = serde_json::from_slice(&body).expect("JSON");
    let object = &mut review["request"]["object"];
    object["metadata"]["labels"] = json!({
        "app": "istio-ingressgateway",
        "istio": "ingressgateway",
        "sidecar.istio.io/inject": "true",
    });
    object["metadata"]["annotations"] = json!({"inject.istio.io/templates": "gateway"});
    object["spec"]["containers"] = json!([{
        "name": "istio-proxy",
        "image": "auto",
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "securityContext": {"runAsUser": 1337, "runAsGroup": 1337},
    }]);
    let body = serde_json::to_vec(&review).expect("JSON");
    let answer = answer(&body);
    assert_eq!(answer["response"]["allowed"], true);
    let pod = patched(&body, &answer);
    assert!(pod["spec"].get("initContainers").is_none_or(|l| {
        l.as_array()
            .is_some_and(|l| l.iter().all(|c| c["name"] != "istio-init"))
    }));
    let containers = pod["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{containers:?}");
    let proxy = &containers[0];
    assert_eq!(proxy["name"], "istio-proxy");
    assert_eq!(
        proxy["image"],
        format!("docker.io/ama/proxy:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(proxy["args"][0], "proxy");
    assert_eq!(proxy["args"][1], "router");
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15021);
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    // The pod's own port is kept, and listed for the proxy.
    assert!(
        proxy["ports"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["containerPort"] == 8080)),
        "{proxy}"
    );
    let env = proxy["env"].as_array().expect("env");
    let pod_ports = env
        .iter()
        .find(|v| v["name"] == "ISTIO_META_POD_PORTS")
        .and_then(|v| v["value"].as_str())
        .unwrap_or_default();
    assert!(pod_ports.contains("\"containerPort\":8080"), "{pod_ports}");
    assert!(
        pod["metadata"]["labels"]
            .get("security.istio.io/tlsMode")
            .is_none()
    );
}

#[test]
fn host_network_pod_is_skipped() {
    assert_skipped(
        &answer(&payload("host-network.json")),
        "0b6d3e9a-1c2f-4e5b-9a7d-3e2f1c0b9a81",
    );
}

#[test]
fn kube_system_pod_is_skipped() {
    assert_skipped(
        &answer(&payload("kube-system.json")),
        "4e1f9c2b-7a3d-4b8e-9f0a-2c6d1e5b7a33",
    );
}

#[test]
fn label_false_opts_out_over_annotation_true() {
    assert_skipped(
        &answer(&payload("opted-out.json")),
        "c2a7e5d1-9b3f-4a6c-8e2d-1f0b7c9a5e44",
    );
}

#[test]
fn garbage_is_refused_without_uid() {
    for body in [&b"not json at all"[..], b"", b"[1,2]", b"{\"kind\": 3}"] {
        let answer = answer(body);
        assert_eq!(answer["response"]["uid"], "");
        assert_eq!(answer["response"]["allowed"], false);
        assert!(answer["response"]["status"]["message"].is_string());
    }
    assert_refused(
        &answer(b"not json"),
        "",
        "could not decode the AdmissionReview: expected ident at line 1 column 2",
    );
}

#[test]
fn v1beta1_is_refused_with_its_uid() {
    assert_refused(
        &answer(&payload("v1beta1.json")),
        "8d3c1b2a-5e6f-4a7b-9c0d-e1f2a3b4c555",
        "AdmissionReview \"admission.k8s.io/v1beta1\" is not served: only admission.k8s.io/v1 is",
    );
}

#[test]
fn missing_object_is_refused() {
    assert_refused(
        &answer(&payload("missing-object.json")),
        "f1e2d3c4-b5a6-4978-8a9b-0c1d2e3f4a66",
        "the AdmissionReview request has no object",
    );
    let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    assert_refused(
        &answer(&serde_json::to_vec(&body).expect("JSON")),
        "",
        "the AdmissionReview has no request",
    );
}

#[test]
fn object_that_is_not_a_pod_is_refused() {
    let mut review: Value = serde_json::from_slice(&payload("create-pod.json")).expect("JSON");
    review["request"]["kind"]["kind"] = json!("Deployment");
    review["request"]["object"]["kind"] = json!("Deployment");
    assert_refused(
        &answer(&serde_json::to_vec(&review).expect("JSON")),
        "705ab4f5-6393-11e8-b7cc-42010a800002",
        "the object is a Deployment, not a Pod",
    );
}

#[test]
fn bad_annotation_refuses_the_pod_with_the_field() {
    let mut review: Value = serde_json::from_slice(&payload("create-pod.json")).expect("JSON");
    review["request"]["object"]["metadata"]["annotations"]["sidecar.istio.io/proxyCPU"] =
        json!("lots");
    let answer = answer(&serde_json::to_vec(&review).expect("JSON"));
    assert_refused(
        &answer,
        "705ab4f5-6393-11e8-b7cc-42010a800002",
        "cannot inject the sidecar into Deployment shop/httpbin: \
         metadata.annotations[\"sidecar.istio.io/proxyCPU\"]: \"lots\" is not a Kubernetes quantity",
    );
}
