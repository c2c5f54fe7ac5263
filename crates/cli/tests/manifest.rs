//! `ama manifest generate` through the binary: the stream parses, every document is valid
//! Kubernetes (`kubernetes-validate --strict`, 1.33), Ama's own parser accepts the objects it
//! reads, `--set` and `--ca-cert` land where they should, and `ama kube-inject
//! --injectConfigFile` accepts the generated ConfigMaps.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use e2e::{Scratch, ama, kubernetes_validate, workspace};
use serde_json::Value;

fn generate(args: &[&str]) -> Output {
    Command::new(ama())
        .args(["manifest", "generate"])
        .args(args)
        .output()
        .expect("run ama manifest generate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The documents of a stream, parsed.
fn documents(stream: &str) -> Vec<Value> {
    api::yaml::split_documents(stream)
        .iter()
        .map(|d| serde_saphyr::from_str(d.text).expect("each document is YAML"))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn default_manifest_is_valid_kubernetes() {
    let out = generate(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stream = text(&out.stdout);
    let docs = documents(&stream);
    let names: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "CustomResourceDefinition destinationrules.networking.istio.io",
            "CustomResourceDefinition gateways.networking.istio.io",
            "CustomResourceDefinition serviceentries.networking.istio.io",
            "CustomResourceDefinition sidecars.networking.istio.io",
            "CustomResourceDefinition virtualservices.networking.istio.io",
            "CustomResourceDefinition authorizationpolicies.security.istio.io",
            "CustomResourceDefinition peerauthentications.security.istio.io",
            "Namespace istio-system",
            "ServiceAccount istiod",
            "ClusterRole istiod-clusterrole-istio-system",
            "ClusterRoleBinding istiod-clusterrole-istio-system",
            "Role istiod",
            "RoleBinding istiod",
            "ConfigMap istio",
            "ConfigMap istio-sidecar-injector",
            "Deployment istiod",
            "Service istiod",
            "MutatingWebhookConfiguration istio-sidecar-injector",
            "ServiceAccount istio-ingressgateway-service-account",
            "Role istio-ingressgateway-sds",
            "RoleBinding istio-ingressgateway-sds",
            "Deployment istio-ingressgateway",
            "Service istio-ingressgateway",
        ]
    );
    assert_eq!(
        text(&out.stderr),
        "note: MutatingWebhookConfiguration istio-sidecar-injector has no caBundle: `ama \
         discovery` patches it with its CA at start-up, as istiod does (pass --ca-cert to set \
         it now)\n"
    );

    // The control plane's Deployment runs `ama discovery` from Ama's image, on Istio's ports.
    let deployment = find(&docs, "Deployment", "istiod");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"][0], "discovery");
    assert_eq!(
        container["image"],
        format!("docker.io/ama/proxy:{}", env!("CARGO_PKG_VERSION"))
    );
    let ports: Vec<i64> = container["ports"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|p| p["containerPort"].as_i64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ports, [15010, 15012, 15017, 15014]);
    let service = find(&docs, "Service", "istiod");
    assert_eq!(service["spec"]["ports"][2]["port"], 443);
    assert_eq!(service["spec"]["ports"][2]["targetPort"], 15017);
    let webhook = find(
        &docs,
        "MutatingWebhookConfiguration",
        "istio-sidecar-injector",
    );
    for hook in webhook["webhooks"].as_array().expect("webhooks") {
        assert_eq!(hook["clientConfig"]["service"]["path"], "/inject");
        assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
        assert_eq!(hook["failurePolicy"], "Fail");
    }

    // istioctl's default profile: the ingress gateway, Istio's gateway shape for injection.
    let gateway = find(&docs, "Deployment", "istio-ingressgateway");
    let template = &gateway["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]["inject.istio.io/templates"],
        "gateway"
    );
    assert_eq!(template["spec"]["containers"][0]["image"], "auto");
    let service = find(&docs, "Service", "istio-ingressgateway");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["metadata"]["namespace"], "istio-system");

    // Ama reads its own objects back without a complaint.
    let (objects, errors) = api::objects::parse_stream(&stream, "manifest.yaml");
    assert!(errors.is_empty(), "{errors:#?}");
    let mesh = objects.iter().find_map(|o| match o {
        api::objects::Object::ConfigMap(cm) => cm.mesh_config.clone(),
        _ => None,
    });
    assert_eq!(
        mesh.and_then(|m| m.default_config.discovery_address),
        Some("istiod.istio-system.svc:15012".to_string())
    );

    let scratch = Scratch::new("manifest");
    let file = scratch.path().join("manifest.yaml");
    fs::write(&file, &stream).expect("write manifest");
    let printed = kubernetes_validate::validate(&[&file]);
    assert!(printed.is_empty(), "{printed:#?}");
}

#[test]
fn set_and_ca_cert_are_applied() {
    let scratch = Scratch::new("manifest-set");
    let ca = scratch.path().join("ca.pem");
    let pem = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2FtZXNoLXRlc3QtY2E=\n-----END CERTIFICATE-----\n";
    fs::write(&ca, pem).expect("write CA");
    let output = scratch.path().join("out.yaml");
    let out = generate(&[
        "--set",
        "hub=registry.example/mesh",
        "--set",
        "tag=9.9.9",
        "--set",
        "meshConfig.accessLogFile=/dev/stdout",
        "--set",
        "meshConfig.accessLogEncoding=JSON",
        "--set",
        "values.global.istioNamespace=mesh-system",
        "--ca-cert",
        ca.to_str().expect("utf-8 path"),
        "-o",
        output.to_str().expect("utf-8 path"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "-o writes nothing to stdout");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let docs = documents(&fs::read_to_string(&output).expect("output"));

    let mesh = find(&docs, "ConfigMap", "istio");
    assert_eq!(mesh["metadata"]["namespace"], "mesh-system");
    assert_eq!(
        mesh["data"]["mesh"],
        "accessLogEncoding: JSON\naccessLogFile: /dev/stdout\ndefaultConfig:\n  \
         discoveryAddress: istiod.mesh-system.svc:15012\nenableAutoMtls: true\nrootNamespace: \
         mesh-system\ntrustDomain: cluster.local\n"
    );
    let deployment = find(&docs, "Deployment", "istiod");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/mesh/proxy:9.9.9"
    );
    let webhook = find(
        &docs,
        "MutatingWebhookConfiguration",
        "istio-sidecar-injector",
    );
    let client = &webhook["webhooks"][0]["clientConfig"];
    assert_eq!(client["service"]["namespace"], "mesh-system");
    let bundle = client["caBundle"].as_str().expect("caBundle");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(bundle)
        .expect("caBundle is base64");
    assert_eq!(decoded, pem.as_bytes());
}

#[test]
fn profiles_choose_the_gateways() {
    let gateways = |profile: &str| -> Vec<String> {
        let out = generate(&["--set", &format!("profile={profile}")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        documents(&text(&out.stdout))
            .iter()
            .filter(|d| d["kind"] == "Deployment" && d["metadata"]["name"] != "istiod")
            .map(|d| d["metadata"]["name"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    assert_eq!(gateways("default"), ["istio-ingressgateway"]);
    assert_eq!(
        gateways("demo"),
        ["istio-ingressgateway", "istio-egressgateway"]
    );
    assert!(gateways("minimal").is_empty());
    let out = generate(&["--set", "profile=demo"]);
    let docs = documents(&text(&out.stdout));
    let egress = find(&docs, "Service", "istio-egressgateway");
    assert_eq!(egress["spec"]["type"], "ClusterIP");
    assert_eq!(egress["spec"]["selector"]["istio"], "egressgateway");
}

#[test]
fn kube_inject_reads_the_generated_config_maps() {
    let scratch = Scratch::new("manifest-inject");
    let out = generate(&["--set", "hub=registry.example/mesh", "--set", "tag=9.9.9"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs = documents(&text(&out.stdout));
    let write = |name: &str| {
        let doc = find(&docs, "ConfigMap", name);
        let file = scratch.path().join(format!("{name}.yaml"));
        fs::write(&file, api::yaml::to_yaml(doc).expect("YAML")).expect("write ConfigMap");
        file
    };
    let injector = write("istio-sidecar-injector");
    let mesh = write("istio");
    let app = workspace().join("examples/httpbin.yaml");
    let inject = |config: &Path| {
        Command::new(ama())
            .arg("kube-inject")
            .arg("-f")
            .arg(&app)
            .arg("--injectConfigFile")
            .arg(config)
            .output()
            .expect("run ama kube-inject")
    };

    let out = inject(&injector);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let injected = text(&out.stdout);
    assert!(
        injected.contains("image: registry.example/mesh/proxy:9.9.9"),
        "{injected}"
    );

    let out = inject(&mesh);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The mesh's defaultConfig reaches the proxy in PROXY_CONFIG.
    let injected = text(&out.stdout);
    assert!(
        injected.contains(r#"{"discoveryAddress":"istiod.istio-system.svc:15012"}"#),
        "{injected}"
    );
}

#[test]
fn bad_flags_are_reported() {
    let out = generate(&["--set", "profiles=demo"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: --set profiles: unknown key (known: {})\n",
            manifest::SET_KEYS.join(", ")
        )
    );
    let out = generate(&["--set", "profile=ambient"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: --set profile=ambient: unknown profile (known: default, demo, minimal)\n"
    );
    let out = generate(&["--set", "meshConfig.accessLogEncoding=XML"]);
    assert_eq!(
        text(&out.stderr),
        "error: --set meshConfig.accessLogEncoding=XML: must be TEXT or JSON\n"
    );
    let scratch = Scratch::new("manifest-bad-ca");
    let ca = scratch.path().join("ca.pem");
    fs::write(&ca, "not PEM").expect("write");
    let out = generate(&["--ca-cert", ca.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}: the CA certificate is not PEM (no \"-----BEGIN CERTIFICATE-----\" block)\n",
            ca.display()
        )
    );
}
