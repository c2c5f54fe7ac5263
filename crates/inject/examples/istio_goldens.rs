//! Compares our injection with Istio's own injection goldens. Not a test, and Istio's files are
//! not part of this project: point it at a checkout of istio/istio's
//! `pkg/kube/inject/testdata/inject/`.
//!
//! ```text
//! cargo run -p inject --example istio_goldens -- <istio>/pkg/kube/inject/testdata/inject [-v]
//! ```
//!
//! Each case of Istio's `TestInjection` (`pkg/kube/inject/inject_test.go`) that applies to a
//! sidecar mesh is run through [`inject::inject_stream`] with the values and mesh settings that
//! test gives it, and the output is compared structurally with Istio's `.injected` file. Cases
//! the test does not list run with the defaults, as the test adds them. Per case the tool prints
//! `match`, `differ` (with the differing paths), `refused` (an error case, or a template Ama
//! refuses on purpose) or `n/a` (with why it does not apply), then the totals.
//!
//! What Ama does differently on purpose is not reported (see [`Normalizer`]): the image, the
//! `ama` command in place of the image's `pilot-agent` entrypoint, `iptables` in place of
//! `istio-iptables` as istio-init's first argument, `ama` in place of `pilot-agent` in the
//! lifecycle hooks, and the empty values Go's serializer writes (`status: {}`,
//! `creationTimestamp: null`, `resources: {}` of app containers, `emptyDir:` with no value,
//! which Kubernetes reads as `emptyDir: {}`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use api::InjectConfigFile;
use inject::{InjectConfig, inject_stream, split_documents};
use serde_json::{Map, Value, json};

/// One case of `TestInjection`.
struct Case {
    input: &'static str,
    want: &'static str,
    /// `setFlags`: `values.<path>=<value>` and `components.cni.enabled=true`.
    flags: &'static [&'static str],
    /// The test's `mesh` function, as fields set on the default MeshConfig.
    mesh: &'static [(&'static str, &'static str)],
    /// `inFilePath`: an IstioOperator with values and mesh config.
    iop: Option<&'static str>,
    /// `expectedError`: a substring of Istio's error.
    error: Option<&'static str>,
    /// Whether native sidecars are on (Istio's default; off where the test disables them).
    native: bool,
    /// Why the case does not apply to Ama's sidecar mesh.
    not_applicable: Option<&'static str>,
    /// Istio's `expectedLog`: a warning must be printed.
    expect_warning: bool,
    /// Why a difference in this case is deliberate (the README lists it).
    deliberate: Option<&'static str>,
}

const fn case(input: &'static str, want: &'static str) -> Case {
    Case {
        input,
        want,
        flags: &[],
        mesh: &[],
        iop: None,
        error: None,
        native: true,
        not_applicable: None,
        expect_warning: false,
        deliberate: None,
    }
}

const fn deliberate(mut c: Case, why: &'static str) -> Case {
    c.deliberate = Some(why);
    c
}

const CRONJOB: &str = "Ama labels and annotates the CronJob's pod template, where the pods \
                       get them; Istio's kube-inject writes them on spec.jobTemplate.metadata";
const STATUS_PORT: &str = "the pod's status port reaches `ama proxy sidecar` in PROXY_CONFIG";

const fn flags(mut c: Case, flags: &'static [&'static str]) -> Case {
    c.flags = flags;
    c
}

const fn mesh(mut c: Case, mesh: &'static [(&'static str, &'static str)]) -> Case {
    c.mesh = mesh;
    c
}

const fn iop(mut c: Case, file: &'static str) -> Case {
    c.iop = Some(file);
    c
}

const fn classic(mut c: Case) -> Case {
    c.native = false;
    c
}

const fn error(input: &'static str, substring: &'static str) -> Case {
    let mut c = case(input, "");
    c.error = Some(substring);
    c
}

const fn na(mut c: Case, why: &'static str) -> Case {
    c.not_applicable = Some(why);
    c
}

const STATUS_123: &[&str] = &[
    "values.global.proxy.statusPort=123",
    "values.global.proxy.readinessInitialDelaySeconds=100",
    "values.global.proxy.readinessPeriodSeconds=200",
    "values.global.proxy.readinessFailureThreshold=300",
];
const CNI: &[&str] = &["components.cni.enabled=true"];
const MULTUS: &[&str] = &["components.cni.enabled=true", "values.cni.provider=multus"];
const HOLD: &[&str] = &["values.global.proxy.holdApplicationUntilProxyStarts=true"];
const TPROXY: &[(&str, &str)] = &[("/defaultConfig/interceptionMode", "\"TPROXY\"")];
const OPENSHIFT: &str = "webhook only, on OpenShift (kube-inject is skipped by TestInjection)";
const CUSTOM_TEMPLATE: &str =
    "a custom Go template in the IstioOperator: Ama does not run Istio's Go templates";

/// `TestInjection`'s explicit cases, in its order.
fn explicit_cases() -> Vec<Case> {
    vec![
        flags(
            case("hello.yaml", "hello.yaml.cni.injected"),
            &[
                "components.cni.enabled=true",
                "values.cni.provider=default",
                "values.global.network=network1",
            ],
        ),
        flags(
            case("hello.yaml", "hello.yaml.proxyImageName.injected"),
            &["values.global.proxy.image=proxyTest"],
        ),
        flags(
            case("hello.yaml", "hello.yaml.proxyInitImageName.injected"),
            &["values.global.proxy_init.image=proxyInitTest"],
        ),
        mesh(case("hello.yaml", "hello-tproxy.yaml.injected"), TPROXY),
        flags(
            case("hello.yaml", "hello-always.yaml.injected"),
            &["values.global.imagePullPolicy=Always"],
        ),
        flags(
            case("hello.yaml", "hello-never.yaml.injected"),
            &["values.global.imagePullPolicy=Never"],
        ),
        classic(case("hello.yaml", "hello-old-version.yaml.injected")),
        mesh(
            case("format-duration.yaml", "format-duration.yaml.injected"),
            &[("/defaultConfig/drainDuration", "\"23s\"")],
        ),
        flags(
            case("traffic-params.yaml", "traffic-params.yaml.injected"),
            &[
                "values.global.proxy.includeIPRanges=127.0.0.1/24,10.96.0.1/24",
                "values.global.proxy.excludeIPRanges=10.96.0.2/24,10.96.0.3/24",
                "values.global.proxy.excludeInboundPorts=4,5,6",
                "values.global.proxy.statusPort=0",
            ],
        ),
        flags(
            case("status_params.yaml", "status_params.yaml.injected"),
            STATUS_123,
        ),
        flags(
            case(
                "kubevirtInterfaces.yaml",
                "kubevirtInterfaces.yaml.injected",
            ),
            STATUS_123,
        ),
        flags(
            case(
                "reroute-virtual-interfaces.yaml",
                "reroute-virtual-interfaces.yaml.injected",
            ),
            STATUS_123,
        ),
        iop(
            case("hello.yaml", "hello-image-secrets-in-values.yaml.injected"),
            "hello-image-secrets-in-values.iop.yaml",
        ),
        iop(
            case(
                "hello-image-pull-secret.yaml",
                "hello-multiple-image-secrets.yaml.injected",
            ),
            "hello-image-secrets-in-values.iop.yaml",
        ),
        iop(
            case("hello.yaml", "hello-template-in-values.yaml.injected"),
            "hello-template-in-values.iop.yaml",
        ),
        flags(
            case("hello.yaml", "hello-mount-mtls-certs.yaml.injected"),
            &["values.global.mountMtlsCerts=true"],
        ),
        flags(
            case("hello.yaml", "hello-cncf-networks.yaml.injected"),
            MULTUS,
        ),
        flags(
            case(
                "hello-existing-cncf-networks.yaml",
                "hello-existing-cncf-networks.yaml.injected",
            ),
            MULTUS,
        ),
        flags(
            case(
                "hello-existing-cncf-networks-json.yaml",
                "hello-existing-cncf-networks-json.yaml.injected",
            ),
            MULTUS,
        ),
        flags(
            case("hello.yaml", "hello.proxyHoldsApplication.yaml.injected"),
            HOLD,
        ),
        flags(
            case(
                "hello-probes.yaml",
                "hello-probes.proxyHoldsApplication.yaml.injected",
            ),
            HOLD,
        ),
        case(
            "hello-probes-proxyHoldApplication-ProxyConfig.yaml",
            "hello-probes-proxyHoldApplication-ProxyConfig.yaml.injected",
        ),
        flags(
            case(
                "hello-probes-noProxyHoldApplication-ProxyConfig.yaml",
                "hello-probes-noProxyHoldApplication-ProxyConfig.yaml.injected",
            ),
            HOLD,
        ),
        case("hello-service.yaml", "hello-service.yaml.injected"),
        deliberate(case("cronjob.yaml", "cronjob.yaml.injected"), CRONJOB),
        deliberate(
            classic(case("cronjob.yaml", "cronjob-old-version.yaml.injected")),
            CRONJOB,
        ),
        classic(case(
            "daemonset.yaml",
            "daemonset-old-version.yaml.injected",
        )),
        classic(case("job.yaml", "job-old-version.yaml.injected")),
        classic(case("pod.yaml", "pod-old-version.yaml.injected")),
        classic(case(
            "replicaset.yaml",
            "replicaset-old-version.yaml.injected",
        )),
        classic(case(
            "statefulset.yaml",
            "statefulset-old-version.yaml.injected",
        )),
        error(
            "traffic-annotations-bad-includeipranges.yaml",
            "includeipranges",
        ),
        error(
            "traffic-annotations-bad-excludeipranges.yaml",
            "excludeipranges",
        ),
        error(
            "traffic-annotations-bad-includeinboundports.yaml",
            "includeinboundports",
        ),
        error(
            "traffic-annotations-bad-excludeinboundports.yaml",
            "excludeinboundports",
        ),
        error(
            "traffic-annotations-bad-excludeoutboundports.yaml",
            "excludeoutboundports",
        ),
        mesh(
            case(
                "traffic-annotations.yaml",
                "traffic-annotations.yaml.injected",
            ),
            &[(
                "/defaultConfig/proxyMetadata/ISTIO_META_TLS_CLIENT_KEY",
                "\"/etc/identity/client/keys/client-key.pem\"",
            )],
        ),
        case("proxy-override.yaml", "proxy-override.yaml.injected"),
        case(
            "explicit-security-context.yaml",
            "explicit-security-context.yaml.injected",
        ),
        case(
            "only-proxy-container.yaml",
            "only-proxy-container.yaml.injected",
        ),
        case(
            "proxy-override-args.yaml",
            "proxy-override-args.yaml.injected",
        ),
        case(
            "proxy-override-runas.yaml",
            "proxy-override-runas.yaml.injected",
        ),
        flags(
            case(
                "proxy-override-runas.yaml",
                "proxy-override-runas.yaml.cni.injected",
            ),
            CNI,
        ),
        mesh(
            case(
                "proxy-override-runas.yaml",
                "proxy-override-runas.yaml.tproxy.injected",
            ),
            TPROXY,
        ),
        case(
            "proxy-override-args.yaml",
            "proxy-override-args-native.yaml.injected",
        ),
        case("gateway.yaml", "gateway.yaml.injected"),
        case("native-sidecar.yaml", "native-sidecar.yaml.injected"),
        classic(case(
            "native-sidecar.yaml",
            "native-sidecar-old-version.yaml.injected",
        )),
        case(
            "native-sidecar-opt-in.yaml",
            "native-sidecar-opt-in.yaml.injected",
        ),
        classic(case(
            "native-sidecar-opt-in.yaml",
            "native-sidecar-opt-in.yaml.injected",
        )),
        case(
            "native-sidecar-opt-out.yaml",
            "native-sidecar-opt-out.yaml.injected",
        ),
        classic(case(
            "native-sidecar-opt-out.yaml",
            "native-sidecar-opt-out.yaml.injected",
        )),
        na(
            iop(
                case("custom-template.yaml", "custom-template.yaml.injected"),
                "custom-template.iop.yaml",
            ),
            CUSTOM_TEMPLATE,
        ),
        case("tcp-probes.yaml", "tcp-probes.yaml.injected"),
        {
            let mut c = case(
                "hello-host-network-with-ns.yaml",
                "hello-host-network-with-ns.yaml.injected",
            );
            c.expect_warning = true;
            c
        },
        deliberate(
            flags(
                case("merge-probers.yaml", "merge-probers.yaml.injected"),
                HOLD,
            ),
            "injecting an injected pod again, Istio lays the old istio-proxy container over the \
             new native one (old args, env, probe timings); Ama injects a fresh one and keeps \
             the old proxy's probes",
        ),
        mesh(
            case(
                "hello-tracing-disabled.yaml",
                "hello-tracing-disabled.yaml.injected",
            ),
            &[("/defaultConfig/tracing", "{}")],
        ),
        case(
            "truncate-canonical-name-pod.yaml",
            "truncate-canonical-name-pod.yaml.injected",
        ),
        case(
            "truncate-canonical-name-custom-controller-pod.yaml",
            "truncate-canonical-name-custom-controller-pod.yaml.injected",
        ),
        na(
            case("hello-openshift.yaml", "hello-openshift.yaml.injected"),
            OPENSHIFT,
        ),
        na(
            case(
                "hello-openshift-custom-injection.yaml",
                "hello-openshift-custom-injection.yaml.injected",
            ),
            OPENSHIFT,
        ),
        na(
            case(
                "hello-openshift-tproxy.yaml",
                "hello-openshift-tproxy.yaml.injected",
            ),
            OPENSHIFT,
        ),
        mesh(
            case(
                "hello-probes-localhost.yaml",
                "hello-probes-localhost.yaml.injected",
            ),
            &[("/inboundTrafficPolicy/mode", "\"LOCALHOST\"")],
        ),
        iop(
            case(
                "proxy-resources-null.yaml",
                "proxy-resources-null.yaml.injected",
            ),
            "proxy-resources-null.iop.yaml",
        ),
        iop(
            case(
                "proxy-resources-null-no-init.yaml",
                "proxy-resources-null-no-init.yaml.injected",
            ),
            "proxy-resources-null.iop.yaml",
        ),
        iop(
            case(
                "proxy-resources-zero.yaml",
                "proxy-resources-zero.yaml.injected",
            ),
            "proxy-resources-zero.iop.yaml",
        ),
        iop(
            case(
                "proxy-resources-memory-null.yaml",
                "proxy-resources-memory-null.yaml.injected",
            ),
            "proxy-resources-memory-null.iop.yaml",
        ),
        iop(
            case(
                "proxy-resources-mixed-null.yaml",
                "proxy-resources-mixed-null.yaml.injected",
            ),
            "proxy-resources-mixed-null.iop.yaml",
        ),
        na(
            iop(
                case("sidecar-spire.yaml", "sidecar-spire.yaml.injected"),
                "spire-template.iop.yaml",
            ),
            CUSTOM_TEMPLATE,
        ),
        na(
            iop(
                case("gateway-spire.yaml", "gateway-spire.yaml.injected"),
                "spire-template.iop.yaml",
            ),
            CUSTOM_TEMPLATE,
        ),
        mesh(
            case(
                "hello-otel-semconv.yaml",
                "hello-otel-semconv.yaml.injected",
            ),
            &[(
                "/extensionProviders",
                r#"[{"name":"otel","opentelemetry":{"service":"otel-collector.observability.svc.cluster.local","port":4317,"serviceAttributeEnrichment":"OTEL_SEMANTIC_CONVENTIONS"}}]"#,
            )],
        ),
        na(
            case("hello.yaml", "hello-fips-140-3.yaml.injected"),
            "istiod's COMPLIANCE_POLICY=fips-140-3 (a build of Envoy with BoringSSL FIPS)",
        ),
    ]
}

/// Every case: the explicit ones, then each `X.yaml` whose `X.yaml.injected` none of them
/// checks, with the defaults (as `TestInjection` adds them).
fn all_cases(dir: &Path) -> std::io::Result<Vec<Case>> {
    let mut cases = explicit_cases();
    let tested: BTreeSet<String> = cases
        .iter()
        .map(|c| {
            if c.want.is_empty() {
                format!("{}.injected", c.input)
            } else {
                c.want.to_string()
            }
        })
        .collect();
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        if !name.ends_with(".yaml") || name.ends_with(".iop.yaml") {
            continue;
        }
        let want = format!("{name}.injected");
        if tested.contains(&want) {
            continue;
        }
        // Leaked so the table stays `&'static str`; a few hundred bytes for the process.
        let deliberate_note = name
            .starts_with("status_annotations")
            .then_some(STATUS_PORT);
        let input: &'static str = Box::leak(name.into_boxed_str());
        let want: &'static str = Box::leak(want.into_boxed_str());
        let mut c = case(input, want);
        c.deliberate = deliberate_note;
        cases.push(c);
    }
    Ok(cases)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: istio_goldens <istio>/pkg/kube/inject/testdata/inject [-v]");
        return ExitCode::from(2);
    };
    let verbose = args.any(|a| a == "-v");
    let cases = match all_cases(&dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot read {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    let (mut matched, mut differ, mut refused, mut na_count) = (0, 0, 0, 0);
    let mut deliberate_count = 0;
    let mut path_counts: std::collections::BTreeMap<String, usize> = Default::default();
    for (i, c) in cases.iter().enumerate() {
        let label = if c.want.is_empty() { c.input } else { c.want };
        let label = format!(
            "[{i:02}] {label}{}",
            if c.native {
                ""
            } else {
                " (native sidecars off)"
            }
        );
        if let Some(why) = c.not_applicable {
            na_count += 1;
            println!("{label}: n/a: {why}");
            continue;
        }
        match run_case(&dir, c) {
            Outcome::Match => {
                matched += 1;
                println!("{label}: match");
            }
            Outcome::Refused(why) => {
                refused += 1;
                println!("{label}: refused as expected: {why}");
            }
            Outcome::Differ(paths) => {
                differ += 1;
                match c.deliberate {
                    Some(why) => {
                        deliberate_count += 1;
                        println!("{label}: differ ({} paths; deliberate: {why})", paths.len());
                    }
                    None => println!("{label}: differ ({} paths)", paths.len()),
                }
                let shown = if verbose { paths.len() } else { 12 };
                for p in paths.iter().take(shown) {
                    println!("    {p}");
                }
                if paths.len() > shown {
                    println!("    … {} more (-v shows all)", paths.len() - shown);
                }
                for p in &paths {
                    *path_counts.entry(generalise(p)).or_default() += 1;
                }
            }
        }
    }
    println!();
    println!(
        "total {}: {matched} match, {differ} differ ({deliberate_count} of them deliberately), \
         {refused} refused as expected, {na_count} n/a",
        cases.len()
    );
    if differ > 0 {
        println!("differences by how many cases have them:");
        let mut counts: Vec<_> = path_counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (path, n) in counts.iter().take(if verbose { usize::MAX } else { 40 }) {
            println!("  {n:3} {path}");
        }
    }
    ExitCode::SUCCESS
}

/// A path without its value, to count the same difference across cases.
fn generalise(path: &str) -> String {
    path.split(": ").next().unwrap_or(path).to_string()
}

enum Outcome {
    Match,
    Differ(Vec<String>),
    Refused(String),
}

fn run_case(dir: &Path, c: &Case) -> Outcome {
    let config = match config_of(dir, c) {
        Ok(config) => config,
        Err(e) => return Outcome::Differ(vec![format!("(config): {e}")]),
    };
    let input = match fs::read_to_string(dir.join(c.input)) {
        Ok(t) => t,
        Err(e) => return Outcome::Differ(vec![format!("(input): {e}")]),
    };
    let out = inject_stream(&input, c.input, &config);
    if let Some(substring) = c.error {
        return match out.errors.first() {
            Some(e) => Outcome::Refused(format!("Istio's error has {substring:?}; ours: {e}")),
            None => Outcome::Differ(vec![format!(
                "(errors): Istio refuses this input ({substring}), we did not"
            )]),
        };
    }
    if !out.errors.is_empty() {
        let errors: Vec<String> = out.errors.iter().map(|e| e.to_string()).collect();
        // What Ama refuses on purpose: proxyless gRPC templates, and TPROXY capture (the sidecar
        // takes only REDIRECTed connections).
        if errors
            .iter()
            .any(|e| e.contains("proxyless gRPC") || e.contains("TPROXY is not supported"))
        {
            return Outcome::Refused(errors.join("; "));
        }
        return Outcome::Differ(
            errors
                .into_iter()
                .map(|e| format!("(error): {e}"))
                .collect(),
        );
    }
    let mut paths = Vec::new();
    if c.expect_warning && out.warnings.is_empty() {
        paths.push("(warnings): Istio logs that the pod is skipped; we said nothing".to_string());
    }
    let want = match fs::read_to_string(dir.join(c.want)) {
        Ok(t) => t,
        Err(e) => return Outcome::Differ(vec![format!("(want): {e}")]),
    };
    let ours = docs(&out.output);
    let theirs = docs(&want);
    if ours.len() != theirs.len() {
        paths.push(format!(
            "(documents): {} ours, {} Istio's",
            ours.len(),
            theirs.len()
        ));
    }
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        let mut o = o.clone();
        let mut t = t.clone();
        normalise(&mut o, &t, Side::Ours);
        normalise(&mut t, &Value::Null, Side::Istio);
        diff(&format!("doc{}", i + 1), &o, &t, &mut paths);
    }
    if paths.is_empty() {
        Outcome::Match
    } else {
        Outcome::Differ(paths)
    }
}

fn docs(text: &str) -> Vec<Value> {
    split_documents(text)
        .iter()
        .map(|d| serde_saphyr::from_str::<Value>(d.text).unwrap_or(Value::Null))
        .collect()
}

/// The values and mesh config of a case, as TestInjection builds them.
fn config_of(dir: &Path, c: &Case) -> Result<InjectConfig, String> {
    let mut config = InjectConfig::default();
    if let Some(file) = c.iop {
        let text = fs::read_to_string(dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
        let parsed = InjectConfigFile::from_yaml(&text).map_err(|e| format!("{file}: {e}"))?;
        if let Some(m) = parsed.mesh {
            config.mesh = m;
        }
        if let Some(v) = parsed.values {
            config.values = v;
        }
    }
    if !c.flags.is_empty() {
        let mut values = serde_json::to_value(&config.values).map_err(|e| e.to_string())?;
        for flag in c.flags {
            let (key, value) = flag.split_once('=').ok_or("flag without =")?;
            let path = match key {
                "components.cni.enabled" => "pilot.cni.enabled".to_string(),
                "values.cni.provider" => "pilot.cni.provider".to_string(),
                k => k.trim_start_matches("values.").to_string(),
            };
            let value = serde_json::from_str::<Value>(value)
                .ok()
                .filter(|v| !v.is_string() || path.ends_with("Ports"))
                .unwrap_or_else(|| json!(value));
            // Istio's flags write port lists and ranges as strings.
            let value = match value {
                Value::Number(n) if path.ends_with("Ports") => json!(n.to_string()),
                v => v,
            };
            set_path(&mut values, &path.split('.').collect::<Vec<_>>(), value);
        }
        config.values = api::Values::from_value(values).map_err(|e| e.to_string())?;
    }
    if !c.mesh.is_empty() {
        let mut mesh = mesh_to_value(&config.mesh);
        for (pointer, value) in c.mesh {
            let value: Value = serde_json::from_str(value).map_err(|e| e.to_string())?;
            let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
            set_path(&mut mesh, &parts, value);
        }
        config.mesh = api::MeshConfig::from_value(mesh).map_err(|e| e.to_string())?;
    }
    // TestInjection's nodes run kubelet 1.33 and 1.34: native sidecars are on unless the case
    // turns the feature off.
    config
        .values
        .pilot
        .env
        .insert("ENABLE_NATIVE_SIDECARS".into(), json!(c.native));
    Ok(config)
}

/// The MeshConfig fields injection reads, as a value to set more fields on.
fn mesh_to_value(mesh: &api::MeshConfig) -> Value {
    let default_config: Value =
        serde_json::from_str(&mesh.default_config.to_json()).unwrap_or_else(|_| json!({}));
    let mut m = json!({
        "trustDomain": mesh.trust_domain,
        "enablePrometheusMerge": mesh.enable_prometheus_merge,
        "defaultConfig": default_config,
    });
    if let Some(mode) = &mesh.inbound_traffic_policy {
        m["inboundTrafficPolicy"] = json!({ "mode": mode });
    }
    m
}

fn set_path(root: &mut Value, path: &[&str], value: Value) {
    let mut at = root;
    for key in &path[..path.len() - 1] {
        if !at.get(*key).is_some_and(Value::is_object) {
            at[*key] = json!({});
        }
        at = &mut at[*key];
    }
    at[path[path.len() - 1]] = value;
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Ours,
    Istio,
}

/// Rewrites what Ama does differently on purpose into Istio's form (ours), and drops Go's
/// empty values (both). `theirs` is Istio's document, to know what it left out.
fn normalise(value: &mut Value, theirs: &Value, side: Side) {
    drop_empty(value);
    let _ = theirs;
    // A workload's `status` is the API server's, written by Go with its zero values; so are a
    // DeploymentConfig's zero-valued spec fields (Go's typed serializer drops or adds them).
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    drop_deployment_config_zeros(value);
    for list in [
        "/spec/containers",
        "/spec/initContainers",
        "/spec/template/spec/containers",
        "/spec/template/spec/initContainers",
        "/spec/jobTemplate/spec/template/spec/containers",
        "/spec/jobTemplate/spec/template/spec/initContainers",
    ] {
        normalise_containers(value, list, side);
    }
    if let Some(Value::Array(items)) = value.get_mut("items") {
        for item in items {
            normalise(item, &Value::Null, side);
        }
    }
}

fn normalise_containers(doc: &mut Value, pointer: &str, side: Side) {
    let Some(Value::Array(containers)) = doc.pointer_mut(pointer) else {
        return;
    };
    for c in containers {
        let Some(map) = c.as_object_mut() else {
            continue;
        };
        let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
        if !matches!(name, "istio-proxy" | "istio-init" | "istio-validation") {
            continue;
        }
        map.remove("image");
        if side == Side::Istio {
            continue;
        }
        if map.get("command") == Some(&json!(["ama"])) {
            map.remove("command");
        }
        if let Some(Value::Array(args)) = map.get_mut("args")
            && args.first() == Some(&json!("iptables"))
        {
            args[0] = json!("istio-iptables");
        }
        if let Some(Value::Object(lifecycle)) = map.get_mut("lifecycle") {
            for hook in lifecycle.values_mut() {
                // `ama proxy wait` is `pilot-agent wait`, and so on.
                if let Some(Value::Array(cmd)) = hook.pointer_mut("/exec/command")
                    && cmd.first() == Some(&json!("ama"))
                    && cmd.get(1) == Some(&json!("proxy"))
                {
                    cmd.splice(0..2, [json!("pilot-agent")]);
                }
            }
        }
    }
}

/// Removes what Go's serializer writes for zero values, and gives an `emptyDir` volume with no
/// value (Istio's template writes `emptyDir:`) the `{}` Kubernetes reads it as.
fn drop_empty(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.contains_key("name") && map.get("emptyDir") == Some(&Value::Null) {
                map.insert("emptyDir".into(), json!({}));
            }
            // Go writes `emptyDir: {}` of a volume as nothing at all.
            if let Some(Value::Array(volumes)) = map.get_mut("volumes") {
                for v in volumes {
                    if let Some(volume) = v.as_object_mut()
                        && volume.len() == 1
                        && volume.contains_key("name")
                    {
                        volume.insert("emptyDir".into(), json!({}));
                    }
                }
            }
            for v in map.values_mut() {
                drop_empty(v);
            }
            map.retain(|k, v| {
                !(v.is_null()
                    || (k != "emptyDir" && v.as_object().is_some_and(Map::is_empty))
                    || (k == "status" && v.as_object().is_some_and(Map::is_empty)))
            });
        }
        Value::Array(items) => items.iter_mut().for_each(drop_empty),
        _ => {}
    }
}

fn drop_deployment_config_zeros(value: &mut Value) {
    if let Some(Value::Array(items)) = value.get_mut("items") {
        items.iter_mut().for_each(drop_deployment_config_zeros);
    }
    if value.get("kind").and_then(Value::as_str) != Some("DeploymentConfig") {
        return;
    }
    if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut) {
        spec.retain(|k, v| {
            !(matches!(k.as_str(), "minReadySeconds" | "paused" | "test")
                && (v == &json!(0) || v == &json!(false)))
        });
    }
}

/// A Kubernetes quantity's value (`3000m` and `3` are the same: Go writes the canonical form).
fn quantity(s: &str) -> Option<f64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let n: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * scale)
}

/// Fields whose string value is JSON: compared as JSON.
const JSON_STRINGS: &[&str] = &[
    "sidecar.istio.io/status",
    "proxy.istio.io/overrides",
    "PROXY_CONFIG",
    "ISTIO_META_POD_PORTS",
    "ISTIO_KUBE_APP_PROBERS",
];

fn diff(path: &str, ours: &Value, theirs: &Value, out: &mut Vec<String>) {
    match (ours, theirs) {
        (Value::Object(o), Value::Object(t)) => {
            // An env var, whose value is JSON.
            if let (Some(Value::String(name)), Some(Value::String(ov)), Some(Value::String(tv))) =
                (t.get("name"), o.get("value"), t.get("value"))
                && JSON_STRINGS.contains(&name.as_str())
                && o.get("name") == t.get("name")
            {
                diff_json_strings(&format!("{path}.value"), ov, tv, out);
                return;
            }
            let keys: BTreeSet<&String> = o.keys().chain(t.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (o.get(k), t.get(k)) {
                    (Some(a), Some(b)) => {
                        if let (Value::String(a), Value::String(b), true) =
                            (a, b, JSON_STRINGS.contains(&k.as_str()))
                        {
                            diff_json_strings(&p, a, b, out);
                        } else {
                            diff(&p, a, b, out);
                        }
                    }
                    (Some(a), None) => out.push(format!("{p}: extra in ours: {}", short(a))),
                    (None, Some(b)) => out.push(format!("{p}: missing in ours: {}", short(b))),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            let named = |l: &[Value]| {
                !l.is_empty()
                    && l.iter()
                        .all(|v| v.get("name").is_some_and(Value::is_string))
                    && l.iter()
                        .filter_map(|v| v.get("name").and_then(Value::as_str))
                        .collect::<BTreeSet<_>>()
                        .len()
                        == l.len()
            };
            if named(o) && named(t) {
                let name = |v: &Value| v["name"].as_str().unwrap_or_default().to_string();
                let on: Vec<String> = o.iter().map(name).collect();
                let tn: Vec<String> = t.iter().map(name).collect();
                for tv in t {
                    let n = name(tv);
                    match o.iter().find(|v| name(v) == n) {
                        Some(ov) => diff(&format!("{path}[{n}]"), ov, tv, out),
                        None => out.push(format!("{path}[{n}]: missing in ours")),
                    }
                }
                for n in on.iter().filter(|n| !tn.contains(n)) {
                    out.push(format!("{path}[{n}]: extra in ours"));
                }
                let common_o: Vec<&String> = on.iter().filter(|n| tn.contains(n)).collect();
                let common_t: Vec<&String> = tn.iter().filter(|n| on.contains(n)).collect();
                if common_o != common_t {
                    out.push(format!(
                        "{path}: order differs: ours {on:?}, Istio's {tn:?}"
                    ));
                }
                return;
            }
            if o.len() != t.len() {
                out.push(format!(
                    "{path}: ours {}, Istio's {}",
                    short(ours),
                    short(theirs)
                ));
                return;
            }
            for (i, (a, b)) in o.iter().zip(t).enumerate() {
                diff(&format!("{path}[{i}]"), a, b, out);
            }
        }
        (a, b) if a == b => {}
        // Kubernetes reads `port: 8080` and `port: "8080"` alike only for int-or-string fields;
        // quantities and such are written as strings by one side and numbers by the other.
        (Value::Number(n), Value::String(s)) | (Value::String(s), Value::Number(n))
            if n.to_string() == *s => {}
        (Value::String(a), Value::String(b))
            if path.contains(".resources.")
                && quantity(a).is_some()
                && quantity(a) == quantity(b) => {}
        (a, b) => out.push(format!("{path}: ours {}, Istio's {}", short(a), short(b))),
    }
}

fn diff_json_strings(path: &str, ours: &str, theirs: &str, out: &mut Vec<String>) {
    match (
        serde_json::from_str::<Value>(ours),
        serde_json::from_str::<Value>(theirs),
    ) {
        (Ok(a), Ok(b)) => diff(&format!("{path}(json)"), &a, &b, out),
        _ if ours == theirs => {}
        _ => out.push(format!("{path}: ours {ours:?}, Istio's {theirs:?}")),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s
    }
}
