//! Bad input: each bad document is reported with its index, kind/name and field, left out of
//! the output, and does not stop the documents after it.

use inject::{InjectConfig, inject_stream};
use pretty_assertions::assert_eq;

const GOOD_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: good\nspec:\n  containers:\n  - name: app\n    image: app:1\n";

/// Injects `bad` between two good pods; returns the error lines and checks that both good pods
/// were still injected.
fn errors_around(bad: &str) -> Vec<String> {
    let input = format!("{GOOD_POD}---\n{bad}---\n{GOOD_POD}");
    let result = inject_stream(&input, "in.yaml", &InjectConfig::default());
    assert_eq!(
        result.output.matches("name: istio-proxy").count(),
        2,
        "both good pods injected"
    );
    assert_eq!(
        result.output.matches("\n---\n").count(),
        1,
        "bad document left out"
    );
    result.errors.iter().map(ToString::to_string).collect()
}

#[test]
fn document_that_is_not_yaml() {
    let errors = errors_around("apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n   bad: 1\n");
    // The stream starts with an 8-line pod and a separator: the bad line is line 14.
    assert_eq!(
        errors,
        [
            "in.yaml:doc 2: not YAML: line 14 column 7: mapping values are not allowed in this context"
        ]
    );
}

#[test]
fn document_that_is_not_an_object() {
    assert_eq!(
        errors_around("- just\n- a list\n"),
        ["in.yaml:doc 2: not a Kubernetes object: expected a mapping with apiVersion and kind"]
    );
    assert_eq!(
        errors_around("metadata:\n  name: x\n"),
        ["in.yaml:doc 2: kind: missing: not a Kubernetes object"]
    );
}

#[test]
fn workload_without_pod_template() {
    let deployment =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: httpbin\nspec:\n  replicas: 1\n";
    assert_eq!(
        errors_around(deployment),
        [
            "in.yaml:doc 2: Deployment default/httpbin: spec.template: missing: a Deployment needs a pod template at spec.template"
        ]
    );
    let cronjob = "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: c\n  namespace: jobs\nspec:\n  jobTemplate: {}\n";
    assert_eq!(
        errors_around(cronjob),
        [
            "in.yaml:doc 2: CronJob jobs/c: spec.jobTemplate.spec: missing: a CronJob needs a pod template at spec.jobTemplate.spec.template"
        ]
    );
}

#[test]
fn annotation_with_bad_port() {
    let bad = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: httpbin\nspec:\n  template:\n    metadata:\n      annotations:\n        traffic.sidecar.istio.io/excludeInboundPorts: \"80,abc\"\n    spec:\n      containers:\n      - name: app\n        image: app:1\n";
    assert_eq!(
        errors_around(bad),
        [
            "in.yaml:doc 2: Deployment default/httpbin: spec.template.metadata.annotations[\"traffic.sidecar.istio.io/excludeInboundPorts\"]: \"abc\" is not a port"
        ]
    );
}

#[test]
fn every_bad_annotation_is_reported() {
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns\n  labels:\n    sidecar.istio.io/inject: maybe\n  annotations:\n    sidecar.istio.io/proxyMemory: lots\n    sidecar.istio.io/interceptionMode: redirect\n    traffic.sidecar.istio.io/includeOutboundIPRanges: 10.0.0.0/40\n    proxy.istio.io/config: 'concurrency: many'\n    sidecar.istio.io/rewriteAppHTTPProbers: sure\nspec:\n  containers:\n  - name: app\n    image: app:1\n";
    assert_eq!(
        errors_around(bad),
        [
            "in.yaml:doc 2: Pod ns/p: metadata.labels[\"sidecar.istio.io/inject\"]: \"maybe\" is not a boolean (true or false)",
            "in.yaml:doc 2: Pod ns/p: metadata.annotations[\"sidecar.istio.io/proxyMemory\"]: \"lots\" is not a Kubernetes quantity (such as 100m, 2, 128Mi)",
            "in.yaml:doc 2: Pod ns/p: metadata.annotations[\"sidecar.istio.io/interceptionMode\"]: \"redirect\" is not an interception mode (REDIRECT, TPROXY or NONE)",
            "in.yaml:doc 2: Pod ns/p: metadata.annotations[\"sidecar.istio.io/rewriteAppHTTPProbers\"]: \"sure\" is not a boolean (true or false)",
            "in.yaml:doc 2: Pod ns/p: metadata.annotations[\"traffic.sidecar.istio.io/includeOutboundIPRanges\"]: \"10.0.0.0/40\" is not a CIDR range (address/prefix)",
            "in.yaml:doc 2: Pod ns/p: metadata.annotations[\"proxy.istio.io/config\"]: concurrency: \"many\" is not valid: invalid type: string \"many\", expected u32",
        ]
    );
}

#[test]
fn annotation_that_is_not_a_string() {
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    sidecar.istio.io/inject: false\nspec:\n  containers:\n  - name: app\n    image: app:1\n";
    assert_eq!(
        errors_around(bad),
        [
            "in.yaml:doc 2: Pod default/p: metadata.annotations[\"sidecar.istio.io/inject\"]: false is not a string (quote it)"
        ]
    );
}

#[test]
fn probe_on_unknown_named_port() {
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: app\n    image: app:1\n    readinessProbe:\n      httpGet:\n        port: web\n";
    assert_eq!(
        errors_around(bad),
        [
            "in.yaml:doc 2: Pod default/p: spec.containers[0].readinessProbe.httpGet.port: \"web\" names no port of container \"app\""
        ]
    );
}

#[test]
fn pod_without_containers() {
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec: {}\n";
    assert_eq!(
        errors_around(bad),
        [
            "in.yaml:doc 2: Pod default/p: spec.containers: missing: a pod needs at least one container"
        ]
    );
}

#[test]
fn bad_item_of_a_list() {
    let bad = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata:\n    name: s\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata:\n    name: d\n";
    assert_eq!(
        errors_around(bad),
        [
            "in.yaml:doc 2: List default/<unnamed>: items[1].spec: missing: a Deployment needs a pod template at spec.template"
        ]
    );
}

#[test]
fn several_bad_documents_are_all_reported() {
    let input = format!(
        "{GOOD_POD}---\nkind: [\n---\n{GOOD_POD}---\napiVersion: apps/v1\nkind: Job\nmetadata:\n  name: j\n"
    );
    let result = inject_stream(&input, "multi.yaml", &InjectConfig::default());
    let errors: Vec<String> = result.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("multi.yaml:doc 2: not YAML: line 10 column"),
        "{}",
        errors[0]
    );
    assert_eq!(
        errors[1],
        "multi.yaml:doc 4: Job default/j: spec: missing: a Job needs a pod template at spec.template"
    );
    assert_eq!(result.output.matches("name: istio-proxy").count(), 2);
}
