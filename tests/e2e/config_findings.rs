//! Nothing accepted in silence (DESIGN, "Config Ama does not implement"), with the real binary:
//!
//! - `ama kube-inject` names the sidecar annotations Ama does not act on, a kind no API server
//!   serves, and an AuthorizationPolicy Ama cannot read (an `error:`: it would deny everything it
//!   selects), on stderr ([`kube_inject_names_unimplemented_annotations`], no root needed);
//! - `ama up` of a directory with a `Deploymnet` refuses to start, naming file, document and
//!   kind ([`ama_up_refuses_a_typo_in_a_kind`]);
//! - under `ama up` of the seed and a DestinationRule with `localityLbSetting`
//!   ([`findings_and_fail_closed_policies_under_ama_up`]): `ama up` prints a `Warning:` for it
//!   on stderr; `ama apply` of a file with a `Deploymnet` and a good Service exits 1 naming file, document
//!   and kind with the nearest known kind, and still creates the Service; a VirtualService with
//!   `match.statPrefix` and `retries.retryRemoteLocalities` is applied with a `Warning:` line per field, and discovery's
//!   log (`ama logs discovery`) has them at WARN with object and field; an AuthorizationPolicy that allows the client's
//!   principal is applied without a finding and httpbin still answers 200, AUDIT is applied with
//!   a warning saying how Ama's differs from Istio's, and Istio's `allow-nothing` makes httpbin
//!   answer 403 `RBAC: access denied`; an AuthorizationPolicy with a field Ama does not know is
//!   applied with an `error:` line saying it denies every request to what it selects (and exit
//!   1), discovery logs it at ERROR, and httpbin's sidecar denies by the DENY standing in for it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::up::{UpMesh, name};
use e2e::{Scratch, ama, root_or_skip, wait_for, workspace};
use serde_json::Value;

/// `ama up` in the background ([`UpMesh`]).
struct Mesh(UpMesh);

impl std::ops::Deref for Mesh {
    type Target = UpMesh;
    fn deref(&self) -> &UpMesh {
        &self.0
    }
}

impl Mesh {
    fn start(dir: &Path, logs: &Path) -> Mesh {
        Mesh(UpMesh::start("cfg", dir, logs, &[]))
    }

    /// `ama apply -f FILE`: (exit success, stdout, stderr).
    fn apply(&self, file: &Path) -> (bool, String, String) {
        let out = self.ama(&["apply", "-f", file.to_str().expect("utf-8 path")]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The names of the mesh's pods once there are `want`, all ready.
    fn ready_pods(&self, want: usize) -> Vec<String> {
        self.wait_ready(want).iter().map(name).collect()
    }

    /// `curl http://httpbin-service/headers` from `client`: status code and body.
    fn curl(&self, client: &str) -> (String, String) {
        let out = self.ama(&[
            "exec",
            client,
            "-c",
            "ubuntu",
            "--",
            "curl",
            "-s",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            "http://httpbin-service/headers",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string())
    }
}

#[test]
fn kube_inject_names_unimplemented_annotations() {
    let scratch = Scratch::new("cfgfind-inject");
    let file = scratch.path().join("web.yaml");
    std::fs::write(
        &file,
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations:
        sidecar.istio.io/userVolume: '[]'
        sidecar.istio.io/bootstrapOverride: custom-bootstrap
        sidecar.istio.io/proxyCPU: 100m
    spec:
      containers: [{name: web, image: nginx}]
---
apiVersion: apps/v1
kind: Deploymnet
metadata: {name: typo}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-get}
spec:
  action: DENY
  rules: [{from: [{source: {bogus: [x]}}]}]
",
    )
    .unwrap();
    let out = Command::new(ama())
        .args(["kube-inject", "-f", file.to_str().unwrap()])
        .output()
        .expect("run ama kube-inject");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let f = file.display();
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!(
                "Warning: {f}:doc 1: Deployment default/web: \
                 spec.template.metadata.annotations[\"sidecar.istio.io/bootstrapOverride\"]: \
                 not implemented by Ama; ignored"
            ),
            format!(
                "Warning: {f}:doc 2: Deploymnet default/typo: kind: unknown kind \"Deploymnet\" \
                 in API group apps: did you mean Deployment?; passed through unchanged"
            ),
            format!(
                "error: {f}:doc 3: AuthorizationPolicy default/deny-get: \
                 spec.rules[0].from[0].source.bogus: unknown field `bogus` (known fields: \
                 principals, notPrincipals, requestPrincipals, notRequestPrincipals, namespaces, \
                 notNamespaces, serviceAccounts, notServiceAccounts, ipBlocks, notIpBlocks, \
                 remoteIpBlocks, notRemoteIpBlocks): Ama cannot read this policy: every request \
                 to the workloads it selects is denied until it is fixed"
            ),
        ],
        "the annotation Ama does not act on (proxyCPU and userVolume it does), the typo, and the \
         policy Ama cannot read"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("istio-proxy"));
}

const TYPO: &str = "apiVersion: apps/v1
kind: Deploymnet
metadata: {name: typo}
spec: {}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin-alias}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 80, targetPort: 80}]
";

const ROUTES: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin-service]
  http:
  - match: [{uri: {prefix: /}, statPrefix: all}]
    route: [{destination: {host: httpbin-service}}]
    retries: {attempts: 2, retryRemoteLocalities: true}
";

/// The same AuthorizationPolicy object three times: ALLOW by the client's principal, AUDIT
/// (which decides nothing), and Istio's `allow-nothing`.
fn policy(spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: httpbin-policy}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
{spec}"
    )
}

/// The seed's files and `extra` in a fresh directory of `scratch`.
fn seed_with(scratch: &Scratch, extra: &str) -> std::path::PathBuf {
    let dir = scratch.path().join("mesh");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(workspace().join("examples/seed")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.join("extra.yaml"), extra).unwrap();
    dir
}

#[test]
fn ama_up_refuses_a_typo_in_a_kind() {
    if !root_or_skip("ama_up_refuses_a_typo_in_a_kind") {
        return;
    }
    let scratch = Scratch::new("cfgfind-typo");
    let dir = seed_with(&scratch, TYPO);
    let name = format!("e2ecft{}", std::process::id() % 100_000);
    // Bounded: a regression that starts the mesh instead must not hang the test.
    let out = Command::new("timeout")
        .arg("60")
        .arg(ama())
        .arg("up")
        .arg(&dir)
        .args(["--name", &name])
        .output()
        .expect("run ama up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:doc 1: Deploymnet default/typo: kind: unknown kind \"Deploymnet\" in API group \
             apps: did you mean Deployment?",
            dir.join("extra.yaml").display()
        )),
        "{stderr}"
    );
    assert!(
        !Path::new("/run/ama").join(&name).exists(),
        "nothing started"
    );
}

const LOCALITY_LB: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin-service
  trafficPolicy: {loadBalancer: {localityLbSetting: {enabled: true}}}
";

#[test]
fn findings_and_fail_closed_policies_under_ama_up() {
    if !root_or_skip("findings_and_fail_closed_policies_under_ama_up") {
        return;
    }
    let scratch = Scratch::new("cfgfind");
    let dir = seed_with(&scratch, LOCALITY_LB);
    let mesh = Mesh::start(&dir, scratch.path());
    let pods = mesh.ready_pods(3);
    let ubuntu = pods
        .iter()
        .find(|p| p.starts_with("ubuntu-"))
        .expect("an ubuntu pod")
        .clone();
    assert_eq!(mesh.curl(&ubuntu).0, "200", "before any policy");
    let up_err = mesh.up_err();
    assert!(
        up_err.contains(&format!(
            "Warning: {}:doc 1: DestinationRule default/httpbin: \
             spec.trafficPolicy.loadBalancer.localityLbSetting: not implemented by Ama (its \
             endpoints have no localities); ignored",
            dir.join("extra.yaml").display()
        )),
        "ama up's stderr:\n{up_err}"
    );

    // A typo in a kind: an error naming file, document and kind; the good document is applied.
    let typo = scratch.path().join("typo.yaml");
    std::fs::write(&typo, TYPO).unwrap();
    let (ok, stdout, stderr) = mesh.apply(&typo);
    assert!(!ok, "a rejected document fails the command\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: {}:doc 1: Deploymnet default/typo: kind: unknown kind \"Deploymnet\" in API \
             group apps: did you mean Deployment?",
            typo.display()
        )),
        "{stderr}"
    );
    assert_eq!(stdout.trim(), "service/httpbin-alias created");
    let services = mesh.ama(&["get", "services"]);
    assert!(
        String::from_utf8_lossy(&services.stdout).contains("httpbin-alias "),
        "{}",
        String::from_utf8_lossy(&services.stdout)
    );

    // Fields Ama does not implement: a warning each on apply, and at WARN in discovery's log.
    let routes = scratch.path().join("routes.yaml");
    std::fs::write(&routes, ROUTES).unwrap();
    let (ok, _, stderr) = mesh.apply(&routes);
    assert!(ok, "{stderr}");
    let object = format!("{}:doc 1: VirtualService default/httpbin", routes.display());
    for field in [
        "spec.http[0].match[0].statPrefix: not implemented by Ama; ignored",
        "spec.http[0].retries.retryRemoteLocalities: not implemented by Ama (its endpoints have \
         no localities); ignored",
    ] {
        assert!(
            stderr.contains(&format!("Warning: {object}: {field}")),
            "{field}\n{stderr}"
        );
    }
    // Read as a user reads it: `ama logs discovery` (and istioctl's habit, `deploy/istiod`).
    let discovery_log = |name: &str| {
        let out = mesh.ama(&["logs", name, "-n", "istio-system"]);
        assert!(out.status.success(), "ama logs {name}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        discovery_log("deploy/istiod").contains("INFO"),
        "ama logs deploy/istiod prints the control plane's log"
    );
    wait_for(
        "discovery's WARN on retryRemoteLocalities",
        Duration::from_secs(30),
        || {
            let text = discovery_log("discovery");
            text.lines()
                .find(|l| {
                    l.contains("WARN")
                        && l.contains("VirtualService default/httpbin")
                        && l.contains(
                            "spec.http[0].retries.retryRemoteLocalities: not implemented by Ama",
                        )
                })
                .map(drop)
        },
    );
    assert_eq!(mesh.curl(&ubuntu).0, "200", "the route applies");

    // Security policies Ama cannot enforce deny what they select.
    let file = scratch.path().join("policy.yaml");
    let status_becomes = |want: &str| {
        wait_for(
            &format!("httpbin answers {want}"),
            Duration::from_secs(30),
            || {
                let (code, body) = mesh.curl(&ubuntu);
                (code == want).then_some(body)
            },
        )
    };
    std::fs::write(
        &file,
        policy(
            "  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/default]}}]
",
        ),
    )
    .unwrap();
    let (ok, _, stderr) = mesh.apply(&file);
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains("AuthorizationPolicy"),
        "Ama implements this policy: no finding\n{stderr}"
    );
    // The client's own principal is allowed.
    status_becomes("200");

    std::fs::write(&file, policy("  action: AUDIT\n")).unwrap();
    let (ok, _, stderr) = mesh.apply(&file);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(
            "AuthorizationPolicy default/httpbin-policy: spec.action: AUDIT: Ama's sidecar logs \
             the requests this policy matches in its own log"
        ),
        "{stderr}"
    );
    status_becomes("200");

    std::fs::write(&file, policy("")).unwrap();
    assert!(mesh.apply(&file).0);
    assert_eq!(status_becomes("403"), "RBAC: access denied");
    // The server sidecar logs it as Envoy's RBAC filter does.
    let httpbins: Vec<&String> = pods.iter().filter(|p| p.starts_with("httpbin-")).collect();
    let denied = wait_for(
        "the denial in an access log",
        Duration::from_secs(10),
        || {
            httpbins.iter().find_map(|pod| {
                let out = mesh.ama(&["logs", pod, "-c", "istio-proxy"]);
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|l| l["response_code"] == "403")
            })
        },
    );
    assert_eq!(
        denied["response_code_details"],
        "rbac_access_denied_matched_policy[none]"
    );
    assert_eq!(denied["response_flags"], "-");

    // A policy Ama cannot read (a field it does not know) fails closed: an error on apply and
    // at ERROR in discovery's log, and every request to what it selects is denied, by the
    // DENY that stands in for it.
    std::fs::write(
        &file,
        policy("  action: DENY\n  rules:\n  - from: [{source: {bogus: [x]}}]\n"),
    )
    .unwrap();
    let (ok, _, stderr) = mesh.apply(&file);
    assert!(
        !ok,
        "not accepted as written, so the command fails\n{stderr}"
    );
    let finding = format!(
        "{}:doc 1: AuthorizationPolicy default/httpbin-policy: \
         spec.rules[0].from[0].source.bogus: unknown field `bogus`",
        file.display()
    );
    let consequence = "Ama cannot read this policy: every request to the workloads it selects is denied until \
         it is fixed";
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("error: {finding}")) && l.ends_with(consequence)),
        "{stderr}"
    );
    // Discovery reads it from the file `ama apply` wrote, an item of a List.
    let field = "spec.rules[0].from[0].source.bogus: unknown field `bogus`";
    wait_for(
        "discovery's ERROR on the policy it cannot read",
        Duration::from_secs(30),
        || {
            let text = discovery_log("discovery");
            text.lines()
                .find(|l| {
                    l.contains("ERROR")
                        && l.contains("AuthorizationPolicy default/httpbin-policy: ")
                        && l.contains(field)
                        && l.contains(consequence)
                })
                .map(drop)
        },
    );
    let stand_in = "rbac_access_denied_matched_policy[ns[default]-policy[httpbin-policy]-rule[0]]";
    wait_for(
        "a denial by the policy standing in",
        Duration::from_secs(30),
        || {
            let (code, _) = mesh.curl(&ubuntu);
            (code == "403").then_some(())?;
            httpbins.iter().find_map(|pod| {
                let out = mesh.ama(&["logs", pod, "-c", "istio-proxy"]);
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|l| l["response_code_details"] == stand_in)
                    .map(drop)
            })
        },
    );
}
