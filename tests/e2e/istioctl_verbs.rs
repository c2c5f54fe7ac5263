//! istioctl's verbs against a real `ama up` of the seed (httpbin ×2, a client) with a
//! DestinationRule (subset v1) and a VirtualService (a `/status` route to it):
//!
//! - `ama proxy-config clusters|endpoints|listeners|routes|secret|bootstrap|all|log` on the client's
//!   sidecar: istioctl's table headers and the rows this config makes, each `-o json` parsed;
//!   the ingress gateway's listener and route for a Gateway (Istio's default profile)
//!   ([`proxy_config_shows_the_clients_sidecar`]);
//! - `ama proxy-status`: every proxy SYNCED on CDS, LDS, EDS and RDS, `-o json` parsed;
//!   `ama version`: client, control plane and the three proxies; `ama analyze` of the live mesh:
//!   no issues, then IST0101 (exit 79) once a VirtualService names a subset that does not exist
//!   ([`proxy_status_version_and_analyze`], the same mesh);
//! - `ama analyze -f DIR -R` without a mesh: messages with file and line, `-o json`
//!   ([`analyze_files_without_a_mesh`], no root needed).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use e2e::up::{UpMesh, name};
use e2e::{Scratch, ama, root_or_skip, wait_for, workspace};
use serde_json::Value;

const RULES: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: default}
spec:
  host: httpbin-service
  subsets: [{name: v1, labels: {app: httpbin}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin-service]
  http:
  - match: [{uri: {prefix: /status}}]
    route: [{destination: {host: httpbin-service, subset: v1}}]
  - route: [{destination: {host: httpbin-service}}]
";

/// The ingress gateway's Gateway and the VirtualService bound to it.
const GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [httpbin.example.com]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-ingress, namespace: default}
spec:
  hosts: [httpbin.example.com]
  gateways: [httpbin-gateway]
  http:
  - match: [{uri: {prefix: /headers}}]
    route: [{destination: {host: httpbin-service, port: {number: 80}}}]
";

const FQDN: &str = "httpbin-service.default.svc.cluster.local";

/// The seed's files, [`RULES`] and `extra` in a fresh directory of `scratch`.
fn mesh_dir(scratch: &Scratch, extra: &str) -> PathBuf {
    let dir = scratch.path().join("mesh");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(workspace().join("examples/seed")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    if !extra.is_empty() {
        std::fs::write(dir.join("extra.yaml"), extra).unwrap();
    }
    dir
}

/// The rows of a table, each split on runs of two or more spaces (cells hold single spaces).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The mesh, its `want` pods ready: the client's name and the httpbin pods' addresses.
fn start(
    scratch: &Scratch,
    tag: &str,
    extra: &str,
    flags: &[&str],
    want: usize,
) -> (UpMesh, String, Vec<String>) {
    let mesh = UpMesh::start(tag, &mesh_dir(scratch, extra), scratch.path(), flags);
    let pods = mesh.wait_ready(want);
    let client = pods
        .iter()
        .map(name)
        .find(|n| n.starts_with("ubuntu"))
        .expect("the client pod");
    let httpbin: Vec<String> = pods
        .iter()
        .filter(|p| name(p).starts_with("httpbin"))
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(httpbin.len(), 2);
    (mesh, client, httpbin)
}

#[test]
fn proxy_config_shows_the_clients_sidecar() {
    if !root_or_skip("proxy_config_shows_the_clients_sidecar") {
        return;
    }
    let scratch = Scratch::new("ictl-pc");
    // The ingress gateway too (Istio's default profile), on free host ports.
    let flags = [
        "--profile",
        "default",
        "--ingress-port",
        "0",
        "--secure-ingress-port",
        "0",
    ];
    let (mesh, client, httpbin) = start(&scratch, "ipc", GATEWAY, &flags, 4);
    let pod = format!("{client}.default");

    // Clusters: the service's and its subset's, with the DestinationRule.
    let clusters = wait_for("the subset's cluster", Duration::from_secs(30), || {
        let t = mesh.ok(&["pc", "clusters", &pod]);
        rows(&t)
            .iter()
            .any(|r| r.get(2).is_some_and(|s| s == "v1"))
            .then_some(t)
    });
    let table = rows(&clusters);
    assert_eq!(
        table[0],
        [
            "SERVICE FQDN",
            "PORT",
            "SUBSET",
            "DIRECTION",
            "TYPE",
            "DESTINATION RULE"
        ]
    );
    for subset in ["-", "v1"] {
        assert!(
            table.contains(
                &[FQDN, "80", subset, "outbound", "EDS", "httpbin.default"]
                    .map(String::from)
                    .to_vec()
            ),
            "{clusters}"
        );
    }
    assert!(
        table.contains(
            &["BlackHoleCluster", "-", "-", "-", "STATIC"]
                .map(String::from)
                .to_vec()
        )
    );
    let only = mesh.ok(&[
        "proxy-config",
        "cluster",
        &client,
        "--subset",
        "v1",
        "--fqdn",
        "httpbin",
    ]);
    assert_eq!(only.lines().count(), 2, "{only}");
    let dump = json(&mesh.ok(&["pc", "c", &client, "-o", "json"]));
    assert!(
        dump["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["hostname"] == FQDN),
        "{dump}"
    );
    assert_eq!(dump["trafficPolicies"][0]["name"], "default/httpbin");

    // Endpoints: both httpbin pods, healthy, in both clusters.
    let endpoints = mesh.ok(&["pc", "endpoints", &client, "--cluster", "|v1|"]);
    let table = rows(&endpoints);
    assert_eq!(table[0], ["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"]);
    for ip in &httpbin {
        let cluster = format!("outbound|80|v1|{FQDN}");
        assert!(
            table.contains(&vec![
                format!("{ip}:80"),
                "HEALTHY".into(),
                "OK".into(),
                cluster
            ]),
            "{endpoints}"
        );
    }
    let ep = json(&mesh.ok(&["pc", "ep", &client, "-o", "json", "--port", "80"]));
    let statuses = ep["cluster_statuses"].as_array().expect("cluster_statuses");
    assert_eq!(statuses.len(), 2, "{ep}");
    assert_eq!(
        statuses[0]["host_statuses"][0]["health_status"]["eds_health_status"],
        "HEALTHY"
    );

    // Listeners: port 80's HTTP listener with its route.
    let listeners = mesh.ok(&["pc", "listeners", &client]);
    let table = rows(&listeners);
    assert_eq!(table[0], ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]);
    assert!(
        table.contains(
            &[
                "0.0.0.0",
                "80",
                "Trans: raw_buffer; App: http/1.1,h2c",
                "Route: 80"
            ]
            .map(String::from)
            .to_vec()
        ),
        "{listeners}"
    );
    json(&mesh.ok(&["pc", "l", &client, "-o", "json"]))["services"]
        .as_array()
        .expect("services");

    // Routes: the VirtualService's match and its default.
    let routes = mesh.ok(&["pc", "routes", &client, "--route-name", "80"]);
    let table = rows(&routes);
    assert_eq!(
        table[0],
        ["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]
    );
    for m in ["/status*", "/*"] {
        assert!(
            table.iter().any(|r| r[0] == "80"
                && r[1] == format!("{FQDN}:80")
                && r[3] == m
                && r[4] == "httpbin.default"),
            "{routes}"
        );
    }
    let r = json(&mesh.ok(&["pc", "r", &client, "-o", "json"]));
    assert_eq!(r["httpRoutes"][0]["name"], "default/httpbin");

    // Secret: the workload certificate and the root, valid; JSON with certificates only.
    let secret = mesh.ok(&["pc", "secret", &client]);
    let table = rows(&secret);
    assert_eq!(
        table[0],
        [
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE"
        ]
    );
    assert_eq!(table[1][..4], ["default", "Cert Chain", "ACTIVE", "true"]);
    assert_eq!(table[2][..4], ["ROOTCA", "CA", "ACTIVE", "true"]);
    let s_json = mesh.ok(&["pc", "secret", &client, "-o", "json"]);
    let certs = json(&s_json);
    assert_eq!(
        certs["certificates"][0]["cert_chain"][0]["serial_number"],
        table[1][4].as_str()
    );
    assert!(!s_json.to_ascii_lowercase().contains("private"), "{s_json}");

    // Bootstrap: the node.
    let b = json(&mesh.ok(&["pc", "bootstrap", &client]));
    assert_eq!(b["bootstrap"]["node"]["namespace"], "default");
    assert_eq!(b["bootstrap"]["serverInfo"]["state"], "LIVE");

    // All: every table, blank-line separated; -o json the whole dump.
    let all = mesh.ok(&["pc", "all", &client]);
    let headers: Vec<&str> = all
        .split("\n\n")
        .map(|t| t.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(headers.len(), 5, "{all}");
    for (h, first) in headers.iter().zip([
        "SERVICE FQDN",
        "ADDRESSES",
        "NAME",
        "ENDPOINT",
        "RESOURCE NAME",
    ]) {
        assert!(h.starts_with(first), "{all}");
    }
    let dump = json(&mesh.ok(&["pc", "a", &client, "-o", "json"]));
    assert_eq!(dump["node"]["namespace"], "default");
    assert!(dump["resources"]["services"].is_array());

    // Log levels: one logger changed, the others kept; then every logger reset.
    let log = mesh.ok(&["pc", "log", &client, "--level", "proxy::inbound:debug"]);
    assert!(log.starts_with("active loggers:"), "{log}");
    assert!(log.contains("\n  proxy::inbound: debug\n"), "{log}");
    let reset = mesh.ok(&["pc", "log", &client, "-r"]);
    assert_eq!(reset, "active loggers:\n  default: warning\n");

    // The ingress gateway's listener and route for its Gateway server (port 80 on 8080).
    let gateway = "istio-ingressgateway.istio-system";
    let listeners = mesh.ok(&["pc", "listeners", gateway, "--port", "8080"]);
    assert_eq!(
        rows(&listeners)[1..],
        [["0.0.0.0", "8080", "ALL", "Route: http.8080"]
            .map(String::from)
            .to_vec()],
        "{listeners}"
    );
    let routes = mesh.ok(&["pc", "routes", gateway]);
    assert!(
        rows(&routes).contains(
            &[
                "http.8080",
                "httpbin.example.com:80",
                "httpbin.example.com",
                "/headers*",
                "httpbin-ingress.default"
            ]
            .map(String::from)
            .to_vec()
        ),
        "{routes}"
    );

    // Unknown pods and namespaces are named.
    let out = mesh.ama(&["pc", "clusters", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
    let out = mesh.ama(&["pc", "clusters", &format!("{client}.elsewhere")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("elsewhere"));
}

#[test]
fn proxy_status_version_and_analyze() {
    if !root_or_skip("proxy_status_version_and_analyze") {
        return;
    }
    let scratch = Scratch::new("ictl-ps");
    let (mesh, client, _) = start(&scratch, "ips", "", &[], 3);

    // proxy-status: three proxies, each synced on every type Ama sends.
    let status = wait_for("every proxy SYNCED", Duration::from_secs(30), || {
        let t = mesh.ok(&["proxy-status"]);
        let table = rows(&t);
        (table.len() == 4
            && table[1..]
                .iter()
                .all(|r| r[2..6] == ["SYNCED", "SYNCED", "SYNCED", "SYNCED"]))
        .then_some(t)
    });
    let table = rows(&status);
    assert_eq!(
        table[0],
        [
            "NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION"
        ]
    );
    let version = env!("CARGO_PKG_VERSION");
    for r in &table[1..] {
        assert_eq!(r[1], "Kubernetes");
        assert_eq!(r[6..], ["NOT SENT", "ama-discovery", version], "{status}");
    }
    let ps = json(&mesh.ok(&["ps", &client, "-o", "json"]));
    let ps = ps.as_array().expect("an array");
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0]["name"], format!("{client}.default"));
    assert_eq!(ps[0]["rds"], "SYNCED");
    assert!(ps[0]["types"]["HttpRoutes"]["acked"].is_string());

    // version: client, control plane, data plane.
    let v = mesh.ok(&["version"]);
    assert_eq!(
        v.lines().collect::<Vec<_>>(),
        [
            format!("client version: {version}"),
            format!("control plane version: {version}"),
            format!("data plane version: {version} (3 proxies)"),
        ]
    );
    let vj = json(&mesh.ok(&["version", "-o", "json"]));
    assert_eq!(vj["clientVersion"]["version"], version);
    assert_eq!(vj["meshVersion"][0]["Info"]["version"], version);
    assert_eq!(vj["dataPlaneVersion"].as_array().unwrap().len(), 3);

    // analyze of the live mesh: nothing, then the missing subset.
    let out = mesh.ama(&["analyze"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("No validation issues found when analyzing namespace: default."),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = scratch.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin-service]
  http:
  - route: [{destination: {host: httpbin-service, subset: v9}}]
",
    )
    .unwrap();
    // A file is analysed with the mesh's objects (its Service and DestinationRule), replacing
    // the mesh's VirtualService of the same name.
    let out = mesh.ama(&["analyze", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(79));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "Error [IST0101] (VirtualService default/httpbin {}:1) Referenced host+subset in \
             destinationrule not found: \"httpbin-service+v9\"\n",
            bad.display()
        )
    );
    mesh.ok(&["apply", "-f", bad.to_str().unwrap()]);
    let out = wait_for(
        "analyze to see the applied VirtualService",
        Duration::from_secs(30),
        || {
            let out = mesh.ama(&["analyze"]);
            (out.status.code() == Some(79)).then_some(out)
        },
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Error [IST0101] (VirtualService default/httpbin) Referenced host+subset in \
         destinationrule not found: \"httpbin-service+v9\"\n"
    );
    let aj = json(&String::from_utf8_lossy(
        &mesh.ama(&["analyze", "-o", "json"]).stdout,
    ));
    assert_eq!(aj[0]["code"], "IST0101");
    assert_eq!(aj[0]["origin"], "VirtualService default/httpbin");
}

#[test]
fn analyze_files_without_a_mesh() {
    let scratch = Scratch::new("ictl-analyze");
    let dir = scratch.path().join("cfg");
    std::fs::create_dir_all(dir.join("more")).unwrap();
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    let vs = dir.join("more/vs.yaml");
    std::fs::write(
        &vs,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: other, namespace: default}
spec:
  hosts: [other]
  gateways: [nosuch]
  http:
  - route: [{destination: {host: reviews}}]
",
    )
    .unwrap();
    let analyze = |args: &[&str]| {
        Command::new(ama())
            .arg("analyze")
            .args(args)
            .env("AMA_MESH", "ictl-none")
            .output()
            .expect("run ama analyze")
    };
    let d = dir.to_str().unwrap();
    // No mesh runs under this name: the files alone, and said.
    let out = analyze(&["-f", d]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("note: analysing the files alone"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&analyze(&["-f", d, "--use-kube=false"]).stderr).contains("note:")
    );
    // Without -R the subdirectory is not read: only the rules' host, which no Service declares
    // here.
    let out = analyze(&["-f", d]);
    assert_eq!(out.status.code(), Some(79));
    let rules = dir.join("rules.yaml").display().to_string();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "Error [IST0101] (DestinationRule default/httpbin {rules}:1) Referenced host not \
             found: \"httpbin-service\"\n\
             Error [IST0101] (VirtualService default/httpbin {rules}:8) Referenced host not \
             found: \"httpbin-service\"\n"
        )
    );
    // As istioctl, only the log format sets the exit code.
    let out = analyze(&["-R", d, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let messages = json(&String::from_utf8_lossy(&out.stdout));
    let texts: Vec<(&str, &str)> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["reference"].as_str().unwrap(),
                m["message"].as_str().unwrap(),
            )
        })
        .collect();
    let vs_ref = format!("{}:1", vs.display());
    for want in [
        "Referenced gateway not found: \"nosuch\"",
        "Referenced host not found: \"reviews\"",
    ] {
        assert!(texts.contains(&(vs_ref.as_str(), want)), "{texts:?}");
    }
    // Another namespace's messages only with -A.
    let out = analyze(&["-R", d, "-n", "elsewhere"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    let missing = analyze(&["-f", "/nonexistent/dir"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/dir"));
}
