//! A DENY policy that matches every request (what the control plane sends for a policy it
//! cannot translate, failing closed) on the inbound side (`proxy::authz`): the workload it
//! selects answers HTTP with Envoy's RBAC denial naming the rule and closes opaque TCP
//! connections; the app sees nothing. One that selects other workloads changes nothing.

mod harness;

use std::sync::atomic::Ordering;
use std::time::Duration;

use harness::{App, Sidecar, httpbin_yaml, server_yaml, vip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server's resources with one deny-everything policy: `namespace`, `selector` (YAML flow map).
fn server_with_policy(namespace: &str, selector: &str) -> String {
    format!(
        "{}authorizations:
- name: httpbin-policy
  namespace: {namespace}
  selector: {selector}
  policy: {{action: DENY, rules: [{{}}]}}
",
        server_yaml()
    )
}

#[tokio::test]
async fn http_gets_envoys_rbac_denial() {
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&server_with_policy("default", "{app: httpbin}"))
        .inbound_to(app.addr)
        .start()
        .await;
    let client = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""))
        .start()
        .await;
    let (resp, body) = client.get(vip(), "httpbin-service", "/headers").await;
    assert_eq!(resp.status(), 403);
    assert_eq!(&body[..], b"RBAC: access denied");
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(app.hits.load(Ordering::SeqCst), 0, "the app sees nothing");
    let line = &server.log_lines(1).await[0];
    assert_eq!(line["response_code"], "403");
    assert_eq!(
        line["response_code_details"],
        "rbac_access_denied_matched_policy[ns[default]-policy[httpbin-policy]-rule[0]]"
    );
    assert_eq!(line["response_flags"], "-");
}

#[tokio::test]
async fn policies_of_other_workloads_change_nothing() {
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&server_with_policy("default", "{app: sleep}"))
        .inbound_to(app.addr)
        .start()
        .await;
    let client = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""))
        .start()
        .await;
    let (resp, _) = client.get(vip(), "httpbin-service", "/headers").await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn opaque_tcp_is_closed_mesh_wide() {
    let banner = harness::banner_server().await;
    // A policy in the root namespace without a selector covers every workload of the mesh.
    let server = Sidecar::builder(&server_with_policy("istio-system", "{}"))
        .inbound_to(banner)
        .start()
        .await;
    let client = Sidecar::builder(&format!(
        r#"
services:
- hostname: mail.default.svc.cluster.local
  name: mail
  namespace: default
  vips: [10.0.0.25]
  ports: [{{name: tcp-smtp, port: 25}}]
  endpoints: [{{address: 127.0.0.1, ports: {{25: {}}}}}]
"#,
        server.inbound.port()
    ))
    .start()
    .await;
    let mut conn = client
        .connect_outbound("10.0.0.25:25".parse().expect("addr"))
        .await;
    // The server side waits for the client's first bytes before it knows the connection is
    // opaque (Istio's protocolDetectionTimeout: 0s), as Envoy's network RBAC filter acts on
    // the first bytes.
    conn.write_all(b"HELO x\r\n").await.expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut got))
        .await
        .expect("the connection ends");
    assert!(
        got.is_empty(),
        "no banner from the app: {:?} {read:?}",
        String::from_utf8_lossy(&got)
    );
    let line = server
        .log_lines(1)
        .await
        .into_iter()
        .find(|l| l["connection_termination_details"] != "-")
        .expect("the server's record of the closed connection");
    assert_eq!(
        line["connection_termination_details"],
        "rbac_access_denied_matched_policy[ns[istio-system]-policy[httpbin-policy]-rule[0]]"
    );
    assert_eq!(
        line["upstream_cluster"],
        format!("inbound|{}||", banner.port())
    );
}
