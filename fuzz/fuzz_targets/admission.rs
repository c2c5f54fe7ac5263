//! The injection webhook's handler, `inject::review`: AdmissionReview bytes in, AdmissionReview
//! with a JSONPatch out. An even first byte sends the rest as the request body, as is; an odd
//! one builds a pod from the rest (labels, annotations with Istio's names and plausible or
//! arbitrary values, owners, containers with ports and probes, `hostNetwork`) and wraps it in a
//! valid `admission.k8s.io/v1` AdmissionReview, so the fuzzer gets past JSON parsing into
//! selection and injection. Checked for every input:
//! - the answer is an `admission.k8s.io/v1` AdmissionReview with `response.allowed`, and the
//!   request's uid when it had one;
//! - a patch is valid base64 of a JSONPatch that applies to the request's pod, and the patched
//!   pod, reviewed again, is allowed without a patch (injection is done once).

#![no_main]

use std::collections::BTreeMap;

use arbitrary::Unstructured;
use base64::Engine;
use inject::InjectConfig;
use inject::webhook::{Labels, review};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

/// A string from `known` (mostly), or any string.
fn one_of(u: &mut Unstructured<'_>, known: &[&str]) -> arbitrary::Result<String> {
    if u.ratio(3, 4)? {
        Ok((*u.choose(known)?).to_string())
    } else {
        u.arbitrary()
    }
}

const NAMESPACES: &[&str] = &[
    "default",
    "prod",
    "kube-system",
    "istio-system",
    "kube-public",
    "",
];
const LABEL_KEYS: &[&str] = &[
    "app",
    "version",
    "app.kubernetes.io/name",
    "app.kubernetes.io/version",
    "service.istio.io/canonical-name",
    "service.istio.io/canonical-revision",
    "sidecar.istio.io/inject",
    "istio.io/rev",
    "pod-template-hash",
    "security.istio.io/tlsMode",
];
const LABEL_VALUES: &[&str] = &[
    "true", "false", "httpbin", "v1", "default", "canary", "7d9f", "",
];
const ANNOTATIONS: &[(&str, &[&str])] = &[
    (
        "sidecar.istio.io/inject",
        &["true", "false", "yes", "", "no"],
    ),
    ("sidecar.istio.io/status", &["{}", "x"]),
    ("sidecar.istio.io/proxyImage", &["ama:dev", ""]),
    (
        "sidecar.istio.io/proxyCPU",
        &["100m", "2", "-1", "1Gi", "x"],
    ),
    ("sidecar.istio.io/proxyMemory", &["128Mi", "1e3", "x"]),
    ("sidecar.istio.io/proxyCPULimit", &["2", "0"]),
    ("sidecar.istio.io/proxyMemoryLimit", &["1Gi", "-"]),
    (
        "sidecar.istio.io/interceptionMode",
        &["REDIRECT", "TPROXY", "NONE", "x"],
    ),
    (
        "sidecar.istio.io/rewriteAppHTTPProbers",
        &["true", "false", "x"],
    ),
    ("sidecar.istio.io/logLevel", &["debug", "x"]),
    ("sidecar.istio.io/componentLogLevel", &["misc:error", "x"]),
    ("sidecar.istio.io/agentLogLevel", &["default:info", ":"]),
    (
        "status.sidecar.istio.io/port",
        &["15020", "0", "65536", "x"],
    ),
    (
        "traffic.sidecar.istio.io/includeInboundPorts",
        &["*", "80,8080", "", "0", "x,1"],
    ),
    (
        "traffic.sidecar.istio.io/excludeInboundPorts",
        &["15020", "1-2", "99999"],
    ),
    (
        "traffic.sidecar.istio.io/includeOutboundPorts",
        &["443", ","],
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        &["3306,5432"],
    ),
    (
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        &["*", "10.0.0.0/8", "::/0", "1.2.3.4/33"],
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        &["192.168.0.0/16,", "x"],
    ),
    (
        "proxy.istio.io/config",
        &[
            "concurrency: 2",
            "{statusPort: 15021}",
            "interceptionMode: TPROXY",
            "[",
            "proxyMetadata: {A: b}",
            "statusPort: x",
        ],
    ),
    ("istio.io/rev", &["default", "canary"]),
    ("prometheus.istio.io/merge-metrics", &["true", "false", "x"]),
    ("prometheus.io/scrape", &["true", "false"]),
    ("prometheus.io/port", &["9090", "x"]),
    ("prometheus.io/path", &["/metrics", ""]),
    (
        "kubectl.kubernetes.io/default-container",
        &["app", "istio-proxy"],
    ),
    ("kubectl.kubernetes.io/default-logs-container", &["app"]),
];

fn string_map(
    u: &mut Unstructured<'_>,
    keys: &[&str],
    values: &[&str],
) -> arbitrary::Result<Value> {
    let mut m = Map::new();
    for _ in 0..u.int_in_range(0..=4)? {
        m.insert(one_of(u, keys)?, Value::String(one_of(u, values)?));
    }
    Ok(Value::Object(m))
}

fn annotations(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    let mut m = Map::new();
    for _ in 0..u.int_in_range(0..=5)? {
        let (key, values) = *u.choose(ANNOTATIONS)?;
        let key = if u.ratio(1, 8)? {
            u.arbitrary()?
        } else {
            key.to_string()
        };
        m.insert(key, Value::String(one_of(u, values)?));
    }
    Ok(Value::Object(m))
}

/// A port: a number (maybe out of range) or a name.
fn port(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    Ok(match u.int_in_range(0..=3)? {
        0 => json!(u.int_in_range(1u32..=65535)?),
        1 => json!(u.arbitrary::<i64>()?),
        2 => json!(one_of(u, &["http", "grpc", "8080", ""])?),
        _ => json!(u.choose(&[80, 8080, 15020, 15021, 15090])?),
    })
}

fn probe(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    Ok(match u.int_in_range(0..=3)? {
        0 => json!({"httpGet": {"path": one_of(u, &["/healthz", "", "/a?b=c"])?, "port": port(u)?,
                     "scheme": one_of(u, &["HTTP", "HTTPS"])?,
                     "httpHeaders": [{"name": "X-A", "value": "b"}]}}),
        1 => json!({"tcpSocket": {"port": port(u)?}}),
        2 => json!({"grpc": {"port": port(u)?}}),
        _ => json!({"exec": {"command": ["true"]}, "periodSeconds": u.arbitrary::<i32>()?}),
    })
}

fn container(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    let mut c = Map::new();
    if u.ratio(7, 8)? {
        c.insert(
            "name".into(),
            json!(one_of(u, &["app", "istio-proxy", "istio-init", "web"])?),
        );
    }
    c.insert(
        "image".into(),
        json!(one_of(u, &["httpbin", "ubuntu:latest", ""])?),
    );
    let mut ports = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let mut p = Map::new();
        p.insert("containerPort".into(), port(u)?);
        if u.arbitrary()? {
            p.insert(
                "name".into(),
                json!(one_of(u, &["http", "grpc-web", "tcp", "metrics"])?),
            );
        }
        if u.arbitrary()? {
            p.insert(
                "protocol".into(),
                json!(one_of(u, &["TCP", "UDP", "SCTP"])?),
            );
        }
        ports.push(Value::Object(p));
    }
    if !ports.is_empty() {
        c.insert("ports".into(), Value::Array(ports));
    }
    for kind in ["readinessProbe", "livenessProbe", "startupProbe"] {
        if u.ratio(1, 3)? {
            c.insert(kind.into(), probe(u)?);
        }
    }
    if u.ratio(1, 4)? {
        c.insert(
            "securityContext".into(),
            json!({"runAsUser": u.arbitrary::<i64>()?, "runAsNonRoot": u.arbitrary::<bool>()?}),
        );
    }
    if u.ratio(1, 4)? {
        c.insert("env".into(), json!([{"name": one_of(u, &["A", "ISTIO_META_X", ""])?, "value": u.arbitrary::<String>()?}]));
    }
    Ok(Value::Object(c))
}

struct Case {
    body: Vec<u8>,
    namespace_labels: Option<Labels>,
}

fn structured(u: &mut Unstructured<'_>) -> arbitrary::Result<Case> {
    let namespace = one_of(u, NAMESPACES)?;
    let namespace_labels = if u.arbitrary()? {
        let mut l = BTreeMap::new();
        for _ in 0..u.int_in_range(0..=2)? {
            l.insert(
                one_of(u, &["istio-injection", "istio.io/rev", "name"])?,
                one_of(u, &["enabled", "disabled", "default", "canary"])?,
            );
        }
        Some(l)
    } else {
        None
    };
    let mut metadata = Map::new();
    if u.arbitrary()? {
        metadata.insert(
            "name".into(),
            json!(one_of(u, &["httpbin", "web-7d9f-abcde", ""])?),
        );
    }
    if u.arbitrary()? {
        metadata.insert(
            "generateName".into(),
            json!(one_of(u, &["httpbin-7d9f-", "job-28373-"])?),
        );
    }
    if u.arbitrary()? {
        metadata.insert("namespace".into(), json!(namespace));
    }
    metadata.insert("labels".into(), string_map(u, LABEL_KEYS, LABEL_VALUES)?);
    metadata.insert("annotations".into(), annotations(u)?);
    if u.arbitrary()? {
        metadata.insert(
            "ownerReferences".into(),
            json!([{
                "apiVersion": "apps/v1",
                "kind": one_of(u, &["ReplicaSet", "Job", "StatefulSet", "DaemonSet", "Node"])?,
                "name": one_of(u, &["httpbin-7d9f", "job-28373000", "x", ""])?,
                "controller": u.arbitrary::<bool>()?,
            }]),
        );
    }
    let mut spec = Map::new();
    let mut containers = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        containers.push(container(u)?);
    }
    spec.insert("containers".into(), Value::Array(containers));
    if u.ratio(1, 3)? {
        spec.insert("initContainers".into(), json!([container(u)?]));
    }
    if u.ratio(1, 4)? {
        spec.insert("hostNetwork".into(), json!(u.arbitrary::<bool>()?));
    }
    if u.ratio(1, 4)? {
        spec.insert(
            "securityContext".into(),
            json!({"runAsUser": u.arbitrary::<i64>()?}),
        );
    }
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec});
    if u.ratio(1, 8)? {
        pod.as_object_mut().map(|p| p.remove("kind"));
    }
    let uid: String = one_of(u, &["705ab4f5-6393-11e8-b7cc-42010a800002", ""])?;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        },
    });
    Ok(Case {
        body: serde_json::to_vec(&review).expect("a Value serialises"),
        namespace_labels,
    })
}

/// Reviews `body` and checks the answer's shape; returns `response`.
fn answer(body: &[u8], config: &InjectConfig, ns: &Option<Labels>) -> Value {
    let out = review(body, config, |_| ns.clone());
    let out: Value = serde_json::from_slice(&out).expect("the answer is JSON");
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    let response = out["response"].clone();
    assert!(
        response["allowed"].is_boolean(),
        "no response.allowed: {out}"
    );
    let uid = serde_json::from_slice::<Value>(body).ok().and_then(|r| {
        r.pointer("/request/uid")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    if let Some(uid) = uid {
        assert_eq!(
            response["uid"],
            uid.as_str(),
            "the answer lost the request's uid"
        );
    }
    response
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let config = InjectConfig::default();
    let case = if mode % 2 == 0 {
        Case {
            body: rest.to_vec(),
            namespace_labels: None,
        }
    } else {
        match structured(&mut Unstructured::new(rest)) {
            Ok(c) => c,
            Err(_) => return,
        }
    };
    let response = answer(&case.body, &config, &case.namespace_labels);
    let Some(patch) = response.get("patch").and_then(Value::as_str) else {
        assert!(response.get("patchType").is_none());
        return;
    };
    assert_eq!(
        response["allowed"], true,
        "a patch on a refusal: {response}"
    );
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("the patch is base64");
    let patch: json_patch::Patch =
        serde_json::from_slice(&patch).expect("the patch is a JSONPatch");
    let mut request: Value =
        serde_json::from_slice(&case.body).expect("a patched request was JSON");
    let pod = request
        .pointer_mut("/request/object")
        .expect("a patched request has an object");
    json_patch::patch(pod, &patch).expect("the patch applies to the pod");

    // The injected pod, reviewed again, is left alone.
    let again = serde_json::to_vec(&request).expect("a Value serialises");
    let second = answer(&again, &config, &case.namespace_labels);
    assert_eq!(
        second["allowed"], true,
        "the injected pod is refused: {second}"
    );
    assert!(
        second.get("patch").is_none(),
        "the injected pod is injected again: {second}"
    );
});
