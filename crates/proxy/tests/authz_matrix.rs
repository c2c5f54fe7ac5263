//! AuthorizationPolicy through real sidecars with mTLS (`proxy::authz`): three clients (a
//! sidecar as `foo/sleep`, a sidecar as `bar/sleep`, and a plaintext client without a
//! sidecar) × four paths × two methods against httpbin's sidecar under each of a set of
//! policies, every cell asserted allowed or denied as Istio specifies, with the denial's
//! `response_code_details`, `istio_requests_total` and the RBAC counters (with the shadow
//! counters of dry-run policies). Then gRPC's form of the denial, and opaque TCP (a denial
//! closes, an allow passes, a dry run is only counted).

mod harness;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use harness::{
    App, BoxBody, Mesh, Sidecar, h1_client, h2_client, httpbin_yaml, send, server_yaml, vip,
};
use http::Request;
use http_body_util::{BodyExt, Empty};
use identity::IdentityManager;
use proxy::admin::AdminSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// A sidecar with `spiffe://cluster.local/ns/foo/sa/sleep`.
    Foo,
    /// A sidecar with `spiffe://cluster.local/ns/bar/sa/sleep`.
    Bar,
    /// No sidecar: plaintext straight to httpbin's sidecar (PERMISSIVE).
    Plain,
}

const CLIENTS: [Client; 3] = [Client::Foo, Client::Bar, Client::Plain];
const PATHS: [&str; 4] = ["/ip", "/headers", "/admin/users", "/public/docs"];
const METHODS: [&str; 2] = ["GET", "POST"];

/// What a cell expects: the app's answer, or Envoy's RBAC denial with these details.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Allowed,
    Denied(String),
}

fn denied_none() -> Expect {
    Expect::Denied("rbac_access_denied_matched_policy[none]".into())
}

fn denied_by(ns: &str, policy: &str, rule: usize) -> Expect {
    Expect::Denied(format!(
        "rbac_access_denied_matched_policy[ns[{ns}]-policy[{policy}]-rule[{rule}]]"
    ))
}

struct Scenario {
    name: &'static str,
    /// `authorizations:` list items (the contract's YAML).
    policies: &'static str,
    expect: fn(Client, &str, &str) -> Expect,
    /// Requests an AUDIT policy matched (Ama's `ama_audit_logged` counter).
    audit_logged: usize,
    /// The shadow counters of dry-run policies, by name after `rbac.`.
    dry_run: &'static [(&'static str, usize)],
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "allow-nothing",
            policies: "- {name: allow-nothing, namespace: default, selector: {app: httpbin}, policy: {action: ALLOW}}",
            expect: |_, _, _| denied_none(),
            audit_logged: 0,
            dry_run: &[],
        },
        Scenario {
            name: "ALLOW by principal",
            policies: "- {name: allow-foo-sleep, namespace: default, selector: {app: httpbin}, policy: {action: ALLOW, rules: [{from: [{principals: [cluster.local/ns/foo/sa/sleep]}]}]}}",
            expect: |c, _, _| match c {
                Client::Foo => Expect::Allowed,
                _ => denied_none(),
            },
            audit_logged: 0,
            dry_run: &[],
        },
        Scenario {
            name: "ALLOW by namespace and method",
            policies: "- {name: allow-bar-get, namespace: default, policy: {action: ALLOW, rules: [{from: [{namespaces: [bar]}], to: [{methods: [GET]}]}]}}",
            expect: |c, _, m| match (c, m) {
                (Client::Bar, "GET") => Expect::Allowed,
                _ => denied_none(),
            },
            audit_logged: 0,
            dry_run: &[],
        },
        Scenario {
            name: "DENY by path",
            policies: "- {name: deny-admin, namespace: default, selector: {app: httpbin}, policy: {action: DENY, rules: [{to: [{paths: [/admin/*]}]}]}}",
            expect: |_, p, _| match p {
                "/admin/users" => denied_by("default", "deny-admin", 0),
                _ => Expect::Allowed,
            },
            audit_logged: 0,
            dry_run: &[],
        },
        Scenario {
            name: "when on a header",
            policies: "- {name: allow-by-header, namespace: default, selector: {app: httpbin}, policy: {action: ALLOW, rules: [{to: [{paths: [/headers]}], when: [{key: 'request.headers[x-client]', values: [foo, plain]}]}]}}",
            expect: |c, p, _| match (c, p) {
                (Client::Foo | Client::Plain, "/headers") => Expect::Allowed,
                _ => denied_none(),
            },
            audit_logged: 0,
            dry_run: &[],
        },
        Scenario {
            name: "ALLOW with an unsupported part",
            policies: "- {name: allow-partly, namespace: default, selector: {app: httpbin}, policy: {action: ALLOW, rules: [{to: [{paths: [/ip]}]}, {to: [{paths: [/public/*]}], unsupported: ['rules[1].when[0].key: experimental.envoy.filters.a[b]']}]}}",
            // The rule with the unsupported part matches nothing; the other still allows.
            expect: |_, p, _| match p {
                "/ip" => Expect::Allowed,
                _ => denied_none(),
            },
            audit_logged: 0,
            dry_run: &[],
        },
        Scenario {
            name: "mesh-wide DENY with notNamespaces",
            policies: "- {name: deny-post-outside-foo, namespace: istio-system, policy: {action: DENY, rules: [{from: [{notNamespaces: [foo]}], to: [{methods: [POST]}]}]}}",
            // A plaintext client has no namespace, so `notNamespaces` matches it.
            expect: |c, _, m| match (c, m) {
                (Client::Bar | Client::Plain, "POST") => {
                    denied_by("istio-system", "deny-post-outside-foo", 0)
                }
                _ => Expect::Allowed,
            },
            audit_logged: 0,
            dry_run: &[],
        },
        Scenario {
            name: "AUDIT only logs",
            policies: "- {name: audit-admin, namespace: default, selector: {app: httpbin}, policy: {action: AUDIT, rules: [{to: [{paths: [/admin/*]}]}]}}",
            expect: |_, _, _| Expect::Allowed,
            audit_logged: 6,
            dry_run: &[],
        },
        Scenario {
            name: "dry runs beside an enforced DENY",
            policies: "- {name: dry-deny-admin, namespace: default, selector: {app: httpbin}, policy: {action: DENY, dryRun: true, rules: [{to: [{paths: [/admin/*]}]}]}}
- {name: dry-allow-foo, namespace: default, selector: {app: httpbin}, policy: {action: ALLOW, dryRun: true, rules: [{from: [{namespaces: [foo]}]}]}}
- {name: deny-bar-post, namespace: default, selector: {app: httpbin}, policy: {action: DENY, rules: [{from: [{namespaces: [bar]}], to: [{methods: [POST]}]}]}}",
            // Only the enforced DENY decides; the dry runs are only counted.
            expect: |c, _, m| match (c, m) {
                (Client::Bar, "POST") => denied_by("default", "deny-bar-post", 0),
                _ => Expect::Allowed,
            },
            audit_logged: 0,
            dry_run: &[
                // The DENY filter's shadow engine sees all 24 requests: /admin/users by each
                // client and method would have been denied.
                ("istio_dry_run_deny_shadow_denied", 6),
                ("istio_dry_run_deny_shadow_allowed", 18),
                // The ALLOW filter's sees the 20 the DENY filter let through: foo's 8 match.
                ("istio_dry_run_allow_shadow_allowed", 8),
                ("istio_dry_run_allow_shadow_denied", 12),
            ],
        },
    ]
}

fn request(method: &str, path: &str, client: Client) -> Request<BoxBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "httpbin-service")
        .header("x-client", format!("{client:?}").to_lowercase())
        .body(Empty::<Bytes>::new().map_err(|n| match n {}).boxed())
        .expect("request")
}

struct Clients {
    foo: Sidecar,
    bar: Sidecar,
}

async fn client_sidecar(server: &Sidecar, id: Arc<IdentityManager>) -> Sidecar {
    Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""))
        .identity(id)
        .start()
        .await
}

/// Sends one cell's request; returns the status and body.
async fn cell(
    clients: &Clients,
    server: &Sidecar,
    client: Client,
    method: &str,
    path: &str,
) -> (u16, Bytes) {
    let mut tx = match client {
        Client::Foo => clients.foo.h1(vip()).await,
        Client::Bar => clients.bar.h1(vip()).await,
        Client::Plain => {
            h1_client(
                TcpStream::connect(server.inbound)
                    .await
                    .expect("connect to the server sidecar"),
            )
            .await
        }
    };
    let exchange = send(&mut tx, request(method, path, client));
    let (resp, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("the exchange ends within 30 s");
    (resp.status().as_u16(), body)
}

/// Sum of the samples of `name` whose labels contain all of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn matrix_of_clients_paths_and_methods() {
    let mesh = Mesh::new();
    let server_id = mesh.identity("default", "default").await;
    let foo_id = mesh.identity("foo", "sleep").await;
    let bar_id = mesh.identity("bar", "sleep").await;
    let mut failures = Vec::new();
    for scenario in scenarios() {
        let app = App::start("httpbin").await;
        let server = Sidecar::builder(&format!(
            "{}authorizations:\n{}\n",
            server_yaml(),
            scenario.policies
        ))
        .inbound_to(app.addr)
        .identity(server_id.clone())
        .start()
        .await;
        let clients = Clients {
            foo: client_sidecar(&server, foo_id.clone()).await,
            bar: client_sidecar(&server, bar_id.clone()).await,
        };
        let (mut allowed, mut denied, mut n) = (0usize, 0usize, 0usize);
        for client in CLIENTS {
            for path in PATHS {
                for method in METHODS {
                    let want = (scenario.expect)(client, path, method);
                    let (status, body) = cell(&clients, &server, client, method, path).await;
                    n += 1;
                    let line = server.log_lines(n).await.swap_remove(n - 1);
                    let name = format!("[{}] {client:?} {method} {path}", scenario.name);
                    let got = match status {
                        200 => Expect::Allowed,
                        403 if &body[..] == b"RBAC: access denied" => Expect::Denied(
                            line["response_code_details"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        ),
                        _ => {
                            failures.push(format!(
                                "{name}: answered {status} {:?}",
                                String::from_utf8_lossy(&body)
                            ));
                            continue;
                        }
                    };
                    if got != want {
                        failures.push(format!("{name}: expected {want:?}, got {got:?}"));
                    }
                    match got {
                        Expect::Allowed => allowed += 1,
                        Expect::Denied(_) => {
                            denied += 1;
                            if line["response_flags"] != "-" {
                                failures.push(format!(
                                    "{name}: response_flags {}",
                                    line["response_flags"]
                                ));
                            }
                        }
                    }
                }
            }
        }
        // Denied requests never reach the app, and are counted as Envoy's stats filter counts
        // a local reply.
        let hits = app.hits.load(Ordering::SeqCst);
        if hits != allowed {
            failures.push(format!(
                "[{}] the app saw {hits} requests, {allowed} were allowed",
                scenario.name
            ));
        }
        let prom = server.telemetry.encode_prometheus();
        let counted = metric_sum(
            &prom,
            "istio_requests_total",
            &[r#"reporter="destination""#, r#"response_code="403""#],
        );
        if counted != denied as f64 {
            failures.push(format!(
                "[{}] istio_requests_total{{response_code=403}} is {counted}, {denied} were denied",
                scenario.name
            ));
        }
        // Each scenario has enforced policies of one action, so one RBAC filter decides each
        // request (a filter with only dry-run policies counts no `allowed` or `denied`).
        let stats = proxy::dump::TrafficAdmin(server.inputs.clone()).cluster_stats();
        let prefix = format!("http.inbound_0.0.0.0_{};.rbac.", app.addr.port());
        for (stat, want) in [
            ("allowed", allowed),
            ("denied", denied),
            ("ama_audit_logged", scenario.audit_logged),
        ]
        .into_iter()
        .chain(scenario.dry_run.iter().copied())
        {
            let line = format!("{prefix}{stat}: {want}\n");
            if !stats.contains(&line) {
                failures.push(format!(
                    "[{}] /stats lacks {line:?}:\n{stats}",
                    scenario.name
                ));
            }
        }
    }
    let mut report = String::new();
    for f in &failures {
        let _ = writeln!(report, "{f}");
    }
    assert!(
        failures.is_empty(),
        "{} cells failed:\n{report}",
        failures.len()
    );
}

/// Envoy's RBAC filter denies with `sendLocalReply`, which answers a gRPC request in gRPC's
/// form: HTTP 200, `grpc-status: 7` (PERMISSION_DENIED), the body text as `grpc-message`.
#[tokio::test]
async fn grpc_requests_get_grpcs_denial() {
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&format!(
        "{}authorizations:\n- {{name: allow-nothing, namespace: default, policy: {{action: ALLOW}}}}\n",
        server_yaml()
    ))
    .inbound_to(app.addr)
    .start()
    .await;
    let mut tx = h2_client(TcpStream::connect(server.inbound).await.expect("connect")).await;
    let req = Request::builder()
        .method("POST")
        .uri("http://httpbin-service/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(
            http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\0"))
                .map_err(|n| match n {})
                .boxed(),
        )
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), tx.send_request(req))
        .await
        .expect("answered within 30 s")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["grpc-status"], "7");
    assert_eq!(resp.headers()["grpc-message"], "RBAC: access denied");
    assert_eq!(app.hits.load(Ordering::SeqCst), 0);
    let line = &server.log_lines(1).await[0];
    assert_eq!(line["response_code"], "200");
    assert_eq!(
        line["response_code_details"],
        "rbac_access_denied_matched_policy[none]"
    );
}

/// Client resources for an opaque TCP service (`tcp-smtp`) whose endpoint is the server's
/// sidecar, a mesh workload (so the client speaks mTLS to it).
fn mail_yaml(server: &Sidecar) -> String {
    format!(
        r#"
self: {{name: sleep, namespace: default}}
workloads:
- uid: httpbin-uid
  name: httpbin-deployment-9bfd96975-px5lv
  namespace: default
  workloadName: httpbin-deployment
  labels: {{app: httpbin}}
services:
- hostname: mail.default.svc.cluster.local
  name: mail
  namespace: default
  vips: [10.0.0.25]
  ports: [{{name: tcp-smtp, port: 25}}]
  endpoints: [{{address: 127.0.0.1, ports: {{25: {}}}, workloadUid: httpbin-uid}}]
"#,
        server.inbound.port()
    )
}

/// Opens a TCP connection through `client` to the mail service and says hello; returns what
/// came back before the connection ended or the banner arrived.
async fn smtp_hello(client: &Sidecar) -> Vec<u8> {
    let mut conn = client
        .connect_outbound("10.0.0.25:25".parse().expect("addr"))
        .await;
    let exchange = async {
        let _ = conn.write_all(b"HELO x\r\n").await;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(3).any(|w| w == b"220") {
                        break;
                    }
                }
            }
        }
        got
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("the connection answers or ends within 30 s")
}

#[tokio::test]
async fn tcp_denial_closes_and_allow_passes() {
    let mesh = Mesh::new();
    let server_id = mesh.identity("default", "default").await;
    let banner = harness::banner_server().await;
    for (policies, foo_passes, bar_passes, bar_details) in [
        (
            "- {name: allow-foo, namespace: default, policy: {action: ALLOW, rules: [{from: [{principals: [cluster.local/ns/foo/sa/sleep]}]}]}}",
            true,
            false,
            "rbac_access_denied_matched_policy[none]",
        ),
        // The HTTP-only `methods` is dropped on TCP in a DENY: the rule denies all of bar.
        (
            "- {name: deny-bar-get, namespace: default, policy: {action: DENY, rules: [{from: [{namespaces: [bar]}], to: [{methods: [GET]}]}]}}",
            true,
            false,
            "rbac_access_denied_matched_policy[ns[default]-policy[deny-bar-get]-rule[0]]",
        ),
        // A dry-run DENY of every connection decides nothing (and is counted, below).
        (
            "- {name: allow-foo, namespace: default, policy: {action: ALLOW, rules: [{from: [{principals: [cluster.local/ns/foo/sa/sleep]}]}]}}
- {name: dry-deny-all, namespace: default, policy: {action: DENY, dryRun: true, rules: [{}]}}",
            true,
            false,
            "rbac_access_denied_matched_policy[none]",
        ),
        // In an ALLOW, a rule with an HTTP-only field matches no connection: all are closed.
        (
            "- {name: allow-get, namespace: default, policy: {action: ALLOW, rules: [{to: [{methods: [GET]}]}]}}",
            false,
            false,
            "rbac_access_denied_matched_policy[none]",
        ),
    ] {
        let server = Sidecar::builder(&format!("{}authorizations:\n{policies}\n", server_yaml()))
            .inbound_to(banner)
            .identity(server_id.clone())
            .start()
            .await;
        let foo = Sidecar::builder(&mail_yaml(&server))
            .identity(mesh.identity("foo", "sleep").await)
            .start()
            .await;
        let bar = Sidecar::builder(&mail_yaml(&server))
            .identity(mesh.identity("bar", "sleep").await)
            .start()
            .await;
        for (who, client, passes) in [("foo", &foo, foo_passes), ("bar", &bar, bar_passes)] {
            let got = smtp_hello(client).await;
            let banner_seen = got.windows(3).any(|w| w == b"220");
            assert_eq!(
                banner_seen,
                passes,
                "{policies}: {who} got {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        let denied = server
            .log_lines(1)
            .await
            .into_iter()
            .filter(|l| l["connection_termination_details"] != "-")
            .map(|l| {
                l["connection_termination_details"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect::<Vec<_>>();
        assert!(
            denied.iter().any(|d| d == bar_details),
            "{policies}: {denied:?}"
        );
        let stats = proxy::dump::TrafficAdmin(server.inputs.clone()).cluster_stats();
        let want_denied = 1 + usize::from(!foo_passes);
        assert!(
            stats.contains(&format!("tcp.rbac.denied: {want_denied}\n")),
            "{policies}:\n{stats}"
        );
        // The network RBAC filter's shadow counter, under Istio's dry-run prefix, only where a
        // dry-run policy selects the workload: both connections would have been closed.
        assert_eq!(
            stats.contains("tcp.rbac.istio_dry_run_deny_shadow_denied: 2\n"),
            policies.contains("dryRun: true"),
            "{policies}:\n{stats}"
        );
    }
}

/// Envoy matches the path its connection manager normalized (Istio's default
/// `pathNormalization`): dot segments and escaped unreserved characters do not slip past a
/// DENY on a path.
#[tokio::test]
async fn normalized_paths_do_not_slip_past_a_deny() {
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&format!(
        "{}authorizations:\n- {{name: deny-admin, namespace: default, policy: {{action: DENY, rules: [{{to: [{{paths: [/admin/*]}}]}}]}}}}\n",
        server_yaml()
    ))
    .inbound_to(app.addr)
    .start()
    .await;
    for path in ["/public/../admin/users", "/./admin/users", "/%61dmin/users"] {
        let mut tx = h1_client(TcpStream::connect(server.inbound).await.expect("connect")).await;
        let exchange = send(&mut tx, request("GET", path, Client::Plain));
        let (resp, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("answered within 30 s");
        assert_eq!(
            resp.status(),
            403,
            "{path}: {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(app.hits.load(Ordering::SeqCst), 0);
}
