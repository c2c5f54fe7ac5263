//! Istio's edge tasks under `ama up`, with Istio's own YAML (`tests/fixtures/edge/`):
//!
//! 1. **Ingress Gateways**: httpbin behind the task's `httpbin-gateway` and VirtualService;
//!    `curl -s -I -HHost:httpbin.example.com http://$INGRESS_HOST:$INGRESS_PORT/status/200` from
//!    the host answers `200` with `server: istio-envoy`, `/headers` (no route) 404; the
//!    gateway's access log and its `istio_requests_total` (`reporter="source"`); the task's
//!    gateway for any host (`hosts: "*"`) answers `/headers` without a Host of its own.
//! 2. **Secure Gateways**: the task's certificates (made with openssl as the task makes them),
//!    `ama create secret tls` for `kubectl create secret tls`; SIMPLE for one host answers
//!    `HTTP/2 418` with the teapot; the Secret replaced by one of another CA is served without a
//!    restart (the old CA then fails); two hosts on one port, each served its own certificate
//!    by SNI; MUTUAL refuses a client without a certificate and answers one with.
//!    A gateway of one's own from Istio's gateway Deployment (`istio-ingress`, listening on 80
//!    through the pod's `net.ipv4.ip_unprivileged_port_start` sysctl) serves the same Gateway.
//! 3. **Accessing External Services** (ours: the "external" servers are pods of a namespace
//!    without sidecars that `local.ama.dev/dns-names` names `httpbin.org` and
//!    `edition.cnn.com`): under `REGISTRY_ONLY`, `http://httpbin.org/headers` is 502 with
//!    `BlackHoleCluster` in the access log and `https://edition.cnn.com` fails the handshake
//!    (curl exit 35); with the task's ServiceEntry it answers, through
//!    `outbound|80||httpbin.org`; the task's 3 s timeout turns `/delay/5` into 504 (UT); a fault
//!    abort on the external host (ours) is 500 (FI).
//! 4. **Egress TLS Origination**: the task's ServiceEntry and DestinationRule; the app's plain
//!    `http://edition.cnn.com/politics` reaches the server over TLS with SNI `edition.cnn.com`
//!    (the server logs both). The server's certificate is signed by the test's CA, which stands
//!    for the public CAs: `ama up` runs with `SSL_CERT_FILE` naming it, which the proxies use
//!    as the system's trust store.
//! 5. **Egress Gateways**, HTTP then HTTPS: the task's ServiceEntry, Gateway, DestinationRule
//!    and VirtualService; the call goes sidecar → istio-egressgateway → edition.cnn.com, seen in
//!    the egress gateway's access log; for HTTPS the app's own TLS (curl trusting the test's CA,
//!    `--cacert`) passes through both proxies by SNI (PASSTHROUGH).
//!
//! The mesh is brought down when the test ends, passing or not.

#[path = "traffic/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::up::{UpMesh, name};
use e2e::{Scratch, root_or_skip, venv_tool, wait_for, workspace};
use serde_json::Value;

const TEST: &str = "istio_edge_tasks_under_ama_up";

fn fixture(path: &str) -> PathBuf {
    workspace().join("tests/fixtures").join(path)
}

/// The mesh, the test's directory and where the ingress gateway is reached from the host.
struct Edge {
    mesh: UpMesh,
    scratch: Scratch,
    python: PathBuf,
    certs: PathBuf,
}

impl Edge {
    /// `ama apply [-n namespace] -f file`, the file's placeholders filled in; prints what it said.
    fn apply(&self, namespace: Option<&str>, file: &str) {
        let text = std::fs::read_to_string(fixture(file))
            .expect("read fixture")
            .replace("@PYTHON@", &self.python.display().to_string())
            .replace("@APPS@", &common::apps().display().to_string())
            .replace("@CERTS@", &self.certs.display().to_string());
        let path = self
            .scratch
            .path()
            .join(Path::new(file).file_name().expect("a file name"));
        std::fs::write(&path, text).expect("write fixture");
        let mut args = vec!["apply"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        args.extend(["-f", path.to_str().expect("utf-8 path")]);
        let out = self.mesh.ama(&args);
        eprintln!(
            "$ ama {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "ama {args:?} failed");
    }

    /// `ama ARGS…`, printed with what it said; must succeed.
    fn run(&self, args: &[&str]) -> String {
        let out = self.mesh.ama(args);
        eprintln!(
            "$ ama {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "ama {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The one running pod of `namespace` whose name starts with `prefix`.
    fn pod(&self, namespace: &str, prefix: &str) -> String {
        let pods: Vec<String> = self
            .mesh
            .pods()
            .into_iter()
            .filter(|p| p["metadata"]["namespace"] == namespace)
            .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
            .map(|p| name(&p))
            .filter(|n| n.starts_with(prefix))
            .collect();
        assert_eq!(pods.len(), 1, "one {prefix}* pod in {namespace}: {pods:?}");
        pods[0].clone()
    }

    /// `curl ARGS…` in default's sleep pod (container sleep).
    fn sleep_curl(&self, args: &[&str]) -> Output {
        let pod = self.pod("default", "sleep-");
        let mut argv = vec![
            "exec",
            &pod,
            "-c",
            "sleep",
            "--",
            "curl",
            "--max-time",
            "20",
        ];
        argv.extend_from_slice(args);
        self.mesh.ama(&argv)
    }

    /// The JSON access-log records of container `container` of `pod` in `namespace`.
    fn log_records(&self, namespace: &str, pod: &str, container: &str) -> Vec<Value> {
        let out = self
            .mesh
            .ama(&["logs", "-n", namespace, pod, "-c", container]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// The `istio_requests_total` lines of `pod`'s proxy in `namespace`.
    fn request_series(&self, namespace: &str, pod: &str) -> Vec<String> {
        let out = self.mesh.ok(&[
            "exec",
            "-n",
            namespace,
            pod,
            "-c",
            "istio-proxy",
            "--",
            "curl",
            "-s",
            "http://127.0.0.1:15090/stats/prometheus",
        ]);
        out.lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .map(str::to_string)
            .collect()
    }
}

/// `curl ARGS…` on the host (the ingress gateway's side of the world).
fn host_curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl")
}

/// Runs `f` until `ok` holds of what it returns, for at most 30 s (a change reaching the
/// proxies); returns the last value, which the caller asserts on.
fn until<T>(what: &str, mut f: impl FnMut() -> T, ok: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = f();
        if ok(&v) || Instant::now() >= deadline {
            if !ok(&v) {
                eprintln!("{what}: still not as expected after 30 s");
            }
            return v;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The Secure Gateways task's certificates, made with its openssl commands, and a CA and a
/// certificate for edition.cnn.com (the TLS origination task's server).
fn make_certs(dir: &Path) {
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "{script}: {}", text(&out));
    };
    std::fs::create_dir_all(dir).expect("certs dir");
    sh("mkdir -p example_certs1 example_certs2
openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout example_certs1/example.com.key -out example_certs1/example.com.crt
openssl req -out example_certs1/httpbin.example.com.csr -newkey rsa:2048 -nodes -keyout example_certs1/httpbin.example.com.key -subj '/CN=httpbin.example.com/O=httpbin organization'
openssl x509 -req -sha256 -days 365 -CA example_certs1/example.com.crt -CAkey example_certs1/example.com.key -set_serial 0 -in example_certs1/httpbin.example.com.csr -out example_certs1/httpbin.example.com.crt
openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout example_certs2/example.com.key -out example_certs2/example.com.crt
openssl req -out example_certs2/httpbin.example.com.csr -newkey rsa:2048 -nodes -keyout example_certs2/httpbin.example.com.key -subj '/CN=httpbin.example.com/O=httpbin organization'
openssl x509 -req -sha256 -days 365 -CA example_certs2/example.com.crt -CAkey example_certs2/example.com.key -set_serial 0 -in example_certs2/httpbin.example.com.csr -out example_certs2/httpbin.example.com.crt
openssl req -out example_certs1/helloworld.example.com.csr -newkey rsa:2048 -nodes -keyout example_certs1/helloworld.example.com.key -subj '/CN=helloworld.example.com/O=helloworld organization'
openssl x509 -req -sha256 -days 365 -CA example_certs1/example.com.crt -CAkey example_certs1/example.com.key -set_serial 1 -in example_certs1/helloworld.example.com.csr -out example_certs1/helloworld.example.com.crt
openssl req -out example_certs1/client.example.com.csr -newkey rsa:2048 -nodes -keyout example_certs1/client.example.com.key -subj '/CN=client.example.com/O=client organization'
openssl x509 -req -sha256 -days 365 -CA example_certs1/example.com.crt -CAkey example_certs1/example.com.key -set_serial 1 -in example_certs1/client.example.com.csr -out example_certs1/client.example.com.crt
openssl req -x509 -sha256 -nodes -days 2 -newkey rsa:2048 -subj '/O=public CA stand-in/CN=ama-test-public-ca' -keyout public-ca.key -out public-ca.crt
openssl req -out edition.cnn.com.csr -newkey rsa:2048 -nodes -keyout edition.cnn.com.key -subj '/CN=edition.cnn.com'
printf 'subjectAltName=DNS:edition.cnn.com\\n' > san.ext
openssl x509 -req -sha256 -days 2 -CA public-ca.crt -CAkey public-ca.key -set_serial 7 -in edition.cnn.com.csr -extfile san.ext -out edition.cnn.com.crt
chmod 644 *.key example_certs1/*.key example_certs2/*.key");
}

/// The subject of the certificate the ingress gateway serves for SNI `host`.
fn served_subject(port: u16, host: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {host} </dev/null 2>/dev/null \
             | openssl x509 -noout -subject"
        ))
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn istio_edge_tasks_under_ama_up() {
    if !root_or_skip(TEST) {
        return;
    }
    let python = venv_tool(TEST, "python");
    let scratch = Scratch::new("edge");
    let certs = scratch.path().join("certs");
    make_certs(&certs);
    let dir = scratch.path().join("mesh");
    std::fs::create_dir_all(&dir).expect("create the mesh directory");
    std::fs::copy(
        fixture("traffic/namespace.yaml"),
        dir.join("namespace.yaml"),
    )
    .expect("copy namespace.yaml");
    // SAFETY: set before any thread of this test binary reads the environment (one test).
    unsafe { std::env::set_var("SSL_CERT_FILE", certs.join("public-ca.crt")) };
    // Istio's demo profile (both gateways), the ingress gateway on free host ports.
    let mesh = UpMesh::start(
        "edge",
        &dir,
        scratch.path(),
        &[
            "--profile",
            "demo",
            "--ingress-port",
            "0",
            "--secure-ingress-port",
            "0",
        ],
    );
    let t = Edge {
        mesh,
        scratch,
        python,
        certs: certs.clone(),
    };
    wait_for("ama up to run", Duration::from_secs(60), || {
        t.mesh
            .ama(&["get", "pods", "-A"])
            .status
            .success()
            .then_some(())
    });
    let (http_port, https_port) = ingress_ports(&t);

    // 1. Ingress Gateways.
    t.apply(None, "traffic/httpbin.yaml");
    t.apply(None, "edge/httpbin-gateway.yaml");
    let url = format!("http://127.0.0.1:{http_port}/status/200");
    let head = until(
        "the ingress route",
        || host_curl(&["-s", "-I", "-HHost:httpbin.example.com", &url]),
        |o| String::from_utf8_lossy(&o.stdout).starts_with("HTTP/1.1 200"),
    );
    let head = text(&head);
    eprintln!("$ curl -s -I -HHost:httpbin.example.com {url}\n{head}");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("server: istio-envoy"),
        "{head}"
    );
    let url = format!("http://127.0.0.1:{http_port}/headers");
    let head = text(&host_curl(&[
        "-s",
        "-I",
        "-HHost:httpbin.example.com",
        &url,
    ]));
    eprintln!("$ curl -s -I -HHost:httpbin.example.com {url}\n{head}");
    assert!(head.starts_with("HTTP/1.1 404 Not Found"), "{head}");
    let gw = t.pod("istio-system", "istio-ingressgateway-");
    let records = t.log_records("istio-system", &gw, "istio-proxy");
    let routed = records
        .iter()
        .find(|r| r["path"] == "/status/200" && r["response_code"] == "200")
        .unwrap_or_else(|| panic!("the gateway's access log has /status/200: {records:?}"));
    assert_eq!(
        routed["upstream_cluster"], "outbound|8000||httpbin.default.svc.cluster.local",
        "{routed}"
    );
    assert_eq!(routed["authority"], "httpbin.example.com", "{routed}");
    let unrouted = records
        .iter()
        .find(|r| r["path"] == "/headers")
        .unwrap_or_else(|| panic!("the gateway's access log has /headers: {records:?}"));
    assert_eq!(unrouted["response_code"], "404", "{unrouted}");
    assert_eq!(unrouted["response_flags"], "NR", "{unrouted}");
    let series = t.request_series("istio-system", &gw);
    assert!(
        series.iter().any(|l| l.contains(r#"reporter="source""#)
            && l.contains(r#"source_workload="istio-ingressgateway""#)
            && l.contains(r#"destination_service="httpbin.default.svc.cluster.local""#)
            && l.contains(r#"response_code="200""#)),
        "the gateway's istio_requests_total: {series:#?}"
    );

    // The task's gateway for a browser: any host, /headers (what it asked for came through).
    t.apply(None, "edge/httpbin-gateway-any-host.yaml");
    // (`show_env`: httpbin hides the X-Forwarded-* headers otherwise.)
    let url = format!("http://127.0.0.1:{http_port}/headers?show_env=1");
    let any = until(
        "the gateway for any host",
        || host_curl(&["-s", &url]),
        |o| String::from_utf8_lossy(&o.stdout).contains("\"Host\""),
    );
    let body: Value = serde_json::from_slice(&any.stdout)
        .unwrap_or_else(|_| panic!("/headers through the gateway: {}", text(&any)));
    assert_eq!(
        body["headers"]["Host"],
        format!("127.0.0.1:{http_port}"),
        "{body}"
    );
    assert!(
        body["headers"]["X-Forwarded-For"].is_string(),
        "the gateway appends the client: {body}"
    );
    assert_eq!(body["headers"]["X-Forwarded-Proto"], "http", "{body}");

    // 2. Secure Gateways: one host, SIMPLE.
    let c1 = certs.join("example_certs1");
    let c2 = certs.join("example_certs2");
    let path = |p: &Path, f: &str| p.join(f).display().to_string();
    t.run(&[
        "create",
        "-n",
        "istio-system",
        "secret",
        "tls",
        "httpbin-credential",
        &format!("--key={}", path(&c1, "httpbin.example.com.key")),
        &format!("--cert={}", path(&c1, "httpbin.example.com.crt")),
    ]);
    t.apply(None, "edge/secure-gateway-single.yaml");
    let resolve = |host: &str| format!("{host}:{https_port}:127.0.0.1");
    let https = |host: &str, path: &str| format!("https://{host}:{https_port}{path}");
    let teapot = |ca: &Path, extra: &[&str]| {
        let mut args = vec![
            "-s".to_string(),
            "-i".to_string(),
            "-HHost:httpbin.example.com".to_string(),
            "--resolve".to_string(),
            resolve("httpbin.example.com"),
            "--cacert".to_string(),
            ca.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(https("httpbin.example.com", "/status/418"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        host_curl(&args)
    };
    let out = until(
        "the SIMPLE TLS server",
        || teapot(&c1.join("example.com.crt"), &[]),
        |o| String::from_utf8_lossy(&o.stdout).starts_with("HTTP/2 418"),
    );
    let said = text(&out);
    eprintln!(
        "$ curl -HHost:httpbin.example.com --resolve … --cacert example_certs1/example.com.crt …/status/418\n{said}"
    );
    assert!(said.starts_with("HTTP/2 418"), "{said}");
    assert!(said.contains("-=[ teapot ]=-"), "{said}");

    // The Secret replaced by one of another CA: served without a restart.
    t.run(&[
        "delete",
        "-n",
        "istio-system",
        "secret",
        "httpbin-credential",
    ]);
    t.run(&[
        "create",
        "-n",
        "istio-system",
        "secret",
        "tls",
        "httpbin-credential",
        &format!("--key={}", path(&c2, "httpbin.example.com.key")),
        &format!("--cert={}", path(&c2, "httpbin.example.com.crt")),
    ]);
    let out = until(
        "the rotated certificate",
        || teapot(&c2.join("example.com.crt"), &[]),
        |o| String::from_utf8_lossy(&o.stdout).starts_with("HTTP/2 418"),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("HTTP/2 418"),
        "the new certificate: {}",
        text(&out)
    );
    let old = teapot(&c1.join("example.com.crt"), &[]);
    eprintln!(
        "old CA after the rotation: curl exit {:?}",
        old.status.code()
    );
    // The task shows curl's exit 35 (the handshake fails on the old CA); OpenSSL may say 60.
    assert!(
        matches!(old.status.code(), Some(35 | 60)),
        "the old CA no longer verifies the gateway: {:?} {}",
        old.status.code(),
        text(&old)
    );

    // Two hosts on one port, a certificate each, chosen by SNI.
    t.run(&[
        "delete",
        "-n",
        "istio-system",
        "secret",
        "httpbin-credential",
    ]);
    t.run(&[
        "create",
        "-n",
        "istio-system",
        "secret",
        "tls",
        "httpbin-credential",
        &format!("--key={}", path(&c1, "httpbin.example.com.key")),
        &format!("--cert={}", path(&c1, "httpbin.example.com.crt")),
    ]);
    t.apply(None, "edge/helloworld.yaml");
    t.run(&[
        "create",
        "-n",
        "istio-system",
        "secret",
        "tls",
        "helloworld-credential",
        &format!("--key={}", path(&c1, "helloworld.example.com.key")),
        &format!("--cert={}", path(&c1, "helloworld.example.com.crt")),
    ]);
    t.apply(None, "edge/secure-gateway-multi.yaml");
    let hello = until(
        "helloworld.example.com",
        || {
            host_curl(&[
                "-s",
                "-i",
                "-HHost:helloworld.example.com",
                "--resolve",
                &resolve("helloworld.example.com"),
                "--cacert",
                &path(&c1, "example.com.crt"),
                &https("helloworld.example.com", "/hello"),
            ])
        },
        |o| String::from_utf8_lossy(&o.stdout).starts_with("HTTP/2 200"),
    );
    assert!(
        String::from_utf8_lossy(&hello.stdout).starts_with("HTTP/2 200"),
        "helloworld: {}",
        text(&hello)
    );
    let out = teapot(&c1.join("example.com.crt"), &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("HTTP/2 418"),
        "httpbin next to helloworld: {}",
        text(&out)
    );
    for host in ["httpbin.example.com", "helloworld.example.com"] {
        let subject = served_subject(https_port, host);
        eprintln!("SNI {host}: {subject}");
        assert!(
            subject.contains(&format!("CN = {host}")),
            "SNI {host}: {subject}"
        );
    }

    // MUTUAL: a client certificate is required.
    t.run(&[
        "delete",
        "-n",
        "istio-system",
        "secret",
        "httpbin-credential",
    ]);
    t.run(&[
        "create",
        "-n",
        "istio-system",
        "secret",
        "generic",
        "httpbin-credential",
        &format!(
            "--from-file=tls.key={}",
            path(&c1, "httpbin.example.com.key")
        ),
        &format!(
            "--from-file=tls.crt={}",
            path(&c1, "httpbin.example.com.crt")
        ),
        &format!("--from-file=ca.crt={}", path(&c1, "example.com.crt")),
    ]);
    t.apply(None, "edge/secure-gateway-mutual.yaml");
    let refused = until(
        "MUTUAL to refuse a client without a certificate",
        || teapot(&c1.join("example.com.crt"), &[]),
        |o| !o.status.success(),
    );
    eprintln!(
        "MUTUAL, no client certificate: curl exit {:?}",
        refused.status.code()
    );
    assert!(
        matches!(refused.status.code(), Some(56 | 35)),
        "MUTUAL without a client certificate: {}",
        text(&refused)
    );
    let client_cert = path(&c1, "client.example.com.crt");
    let client_key = path(&c1, "client.example.com.key");
    // (The refusal above may be the moment between the Secret's replacement and the MUTUAL
    // server: the client's certificate is tried until the change is in force.)
    let out = until(
        "MUTUAL to answer the client's certificate",
        || {
            teapot(
                &c1.join("example.com.crt"),
                &["--cert", &client_cert, "--key", &client_key],
            )
        },
        |o| String::from_utf8_lossy(&o.stdout).starts_with("HTTP/2 418"),
    );
    // A version 1 certificate of another CA (example_certs2's) is refused like no certificate.
    let stranger_cert = path(&c2, "httpbin.example.com.crt");
    let stranger_key = path(&c2, "httpbin.example.com.key");
    let stranger = teapot(
        &c1.join("example.com.crt"),
        &["--cert", &stranger_cert, "--key", &stranger_key],
    );
    eprintln!(
        "MUTUAL, a certificate of another CA: curl exit {:?}",
        stranger.status.code()
    );
    assert!(
        matches!(stranger.status.code(), Some(56 | 35)),
        "MUTUAL with a certificate of another CA: {}",
        text(&stranger)
    );
    let again = teapot(&c1.join("example.com.crt"), &[]);
    assert!(
        matches!(again.status.code(), Some(56 | 35)),
        "MUTUAL without a client certificate, once in force: {}",
        text(&again)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("HTTP/2 418"),
        "MUTUAL with the client's certificate: {}",
        text(&out)
    );

    // 3. Accessing External Services, under REGISTRY_ONLY.
    t.apply(None, "edge/ours-external.yaml");
    t.apply(None, "traffic/sleep.yaml");
    t.apply(None, "edge/mesh-registry-only.yaml");
    wait_for(
        "sleep and the external servers",
        Duration::from_secs(60),
        || {
            let pods = t.mesh.pods();
            let ready = |prefix: &str| {
                pods.iter()
                    .any(|p| name(p).starts_with(prefix) && e2e::up::ready(p))
            };
            (ready("sleep-") && ready("httpbin-org-") && ready("edition-cnn-com-")).then_some(())
        },
    );
    let sleep = t.pod("default", "sleep-");

    // A gateway of one's own, from Istio's gateway Deployment (injection template `gateway`,
    // `image: auto`, the sysctl that lets it bind 80): it serves the Ingress Gateways task's
    // Gateway too (same selector), reached from sleep through its own Service.
    t.apply(None, "edge/gateway-deployment.yaml");
    t.apply(None, "edge/httpbin-gateway.yaml");
    let own = until(
        "the gateway of one's own",
        || {
            t.sleep_curl(&[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-HHost:httpbin.example.com",
                "http://istio-ingressgateway.istio-ingress/status/200",
            ])
        },
        |o| String::from_utf8_lossy(&o.stdout) == "200",
    );
    assert_eq!(
        String::from_utf8_lossy(&own.stdout),
        "200",
        "{}",
        text(&own)
    );
    let own_gw = t.pod("istio-ingress", "istio-ingressgateway-");
    let records = t.log_records("istio-ingress", &own_gw, "istio-proxy");
    assert!(
        records.iter().any(|r| r["path"] == "/status/200"
            && r["downstream_local_address"]
                .as_str()
                .is_some_and(|a| a.ends_with(":80"))),
        "the gateway of one's own listens on 80: {records:?}"
    );

    let blocked = until(
        "REGISTRY_ONLY to block httpbin.org",
        || {
            t.sleep_curl(&[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://httpbin.org/headers",
            ])
        },
        |o| String::from_utf8_lossy(&o.stdout) == "502",
    );
    assert_eq!(
        String::from_utf8_lossy(&blocked.stdout),
        "502",
        "{}",
        text(&blocked)
    );
    let records = t.log_records("default", &sleep, "istio-proxy");
    let hole = records
        .iter()
        .rev()
        .find(|r| r["authority"] == "httpbin.org")
        .unwrap_or_else(|| panic!("sleep's access log has httpbin.org: {records:?}"));
    // Istio's `block_all` route answers 502 itself (a direct response, no upstream cluster);
    // the metrics name the destination BlackHoleCluster.
    assert_eq!(hole["route_name"], "block_all", "{hole}");
    assert_eq!(hole["response_code"], "502", "{hole}");
    assert_eq!(hole["response_code_details"], "direct_response", "{hole}");
    let series = t.request_series("default", &sleep);
    assert!(
        series.iter().any(
            |l| l.contains(r#"destination_service_name="BlackHoleCluster""#)
                && l.contains(r#"response_code="502""#)
        ),
        "sleep's istio_requests_total: {series:#?}"
    );
    let tls = t.sleep_curl(&["-sI", "https://edition.cnn.com"]);
    assert_eq!(
        tls.status.code(),
        Some(35),
        "HTTPS to an unknown host under REGISTRY_ONLY: {}",
        text(&tls)
    );

    t.apply(None, "edge/egress-httpbin-ext.yaml");
    let answered = until(
        "httpbin.org through its ServiceEntry",
        || t.sleep_curl(&["-sS", "http://httpbin.org/headers"]),
        |o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("\"Host\""),
    );
    let body: Value = serde_json::from_slice(&answered.stdout)
        .unwrap_or_else(|_| panic!("httpbin.org's /headers: {}", text(&answered)));
    assert_eq!(body["headers"]["Host"], "httpbin.org", "{body}");
    let records = t.log_records("default", &sleep, "istio-proxy");
    let through = records
        .iter()
        .rev()
        .find(|r| r["authority"] == "httpbin.org" && r["response_code"] == "200")
        .unwrap_or_else(|| panic!("sleep's access log: {records:?}"));
    assert_eq!(
        through["upstream_cluster"], "outbound|80||httpbin.org",
        "{through}"
    );

    // The task's timeout, then a fault, on the external host.
    let delay = |extra: &[&str]| {
        let mut args = vec!["-o", "/dev/null", "-sS", "-w", "%{http_code}"];
        args.extend_from_slice(extra);
        args.push("http://httpbin.org/delay/5");
        t.sleep_curl(&args)
    };
    let slow = delay(&[]);
    assert_eq!(
        String::from_utf8_lossy(&slow.stdout),
        "200",
        "{}",
        text(&slow)
    );
    t.apply(None, "edge/egress-httpbin-ext-timeout.yaml");
    let cut = until(
        "the 3 s timeout",
        || delay(&[]),
        |o| String::from_utf8_lossy(&o.stdout) == "504",
    );
    assert_eq!(
        String::from_utf8_lossy(&cut.stdout),
        "504",
        "{}",
        text(&cut)
    );
    let records = t.log_records("default", &sleep, "istio-proxy");
    assert!(
        records.iter().any(|r| r["authority"] == "httpbin.org"
            && r["response_code"] == "504"
            && r["response_flags"] == "UT"),
        "UT in sleep's access log: {records:?}"
    );
    t.apply(None, "edge/ours-egress-httpbin-ext-fault.yaml");
    let aborted = until(
        "the abort for end-user jason",
        || {
            t.sleep_curl(&[
                "-o",
                "/dev/null",
                "-sS",
                "-w",
                "%{http_code}",
                "-H",
                "end-user: jason",
                "http://httpbin.org/headers",
            ])
        },
        |o| String::from_utf8_lossy(&o.stdout) == "500",
    );
    assert_eq!(
        String::from_utf8_lossy(&aborted.stdout),
        "500",
        "{}",
        text(&aborted)
    );
    let plain = t.sleep_curl(&[
        "-o",
        "/dev/null",
        "-sS",
        "-w",
        "%{http_code}",
        "http://httpbin.org/headers",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        "200",
        "{}",
        text(&plain)
    );

    // 4. Egress TLS Origination.
    t.apply(None, "edge/egress-tls-origination.yaml");
    let cnn = t.pod("external", "edition-cnn-com-");
    let originated = until(
        "TLS origination to edition.cnn.com",
        || {
            t.sleep_curl(&[
                "-sSL",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "http://edition.cnn.com/politics",
            ])
        },
        |o| String::from_utf8_lossy(&o.stdout).starts_with("HTTP/1.1 200"),
    );
    assert!(
        String::from_utf8_lossy(&originated.stdout).starts_with("HTTP/1.1 200"),
        "{}",
        text(&originated)
    );
    let seen = t.log_records("external", &cnn, "https");
    let arrived = seen
        .iter()
        .rev()
        .find(|r| r["path"] == "/politics")
        .unwrap_or_else(|| panic!("the HTTPS server saw /politics: {seen:?}"));
    assert_eq!(arrived["tls"]["sni"], "edition.cnn.com", "{arrived}");
    assert!(
        arrived["tls"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{arrived}"
    );

    // 5. Egress Gateways, HTTP.
    t.run(&[
        "delete",
        "-f",
        fixture("edge/egress-tls-origination.yaml")
            .to_str()
            .expect("utf-8"),
    ]);
    t.apply(None, "edge/egress-gateway-cnn-se.yaml");
    t.apply(None, "edge/egress-gateway-cnn.yaml");
    let egw = t.pod("istio-system", "istio-egressgateway-");
    let through_gw = until(
        "edition.cnn.com through the egress gateway",
        || {
            let out = t.sleep_curl(&[
                "-sSL",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "http://edition.cnn.com/politics",
            ]);
            let logged = t
                .log_records("istio-system", &egw, "istio-proxy")
                .into_iter()
                .any(|r| r["path"] == "/politics");
            (out, logged)
        },
        |(o, logged)| *logged && String::from_utf8_lossy(&o.stdout).starts_with("HTTP/1.1 200"),
    );
    assert!(
        String::from_utf8_lossy(&through_gw.0.stdout).starts_with("HTTP/1.1 200"),
        "{}",
        text(&through_gw.0)
    );
    let records = t.log_records("istio-system", &egw, "istio-proxy");
    let rec = records
        .iter()
        .rev()
        .find(|r| r["path"] == "/politics")
        .unwrap_or_else(|| panic!("the egress gateway's access log: {records:?}"));
    eprintln!("egress gateway: {rec}");
    assert_eq!(
        rec["upstream_cluster"], "outbound|80||edition.cnn.com",
        "{rec}"
    );
    assert_eq!(rec["authority"], "edition.cnn.com", "{rec}");
    let records = t.log_records("default", &sleep, "istio-proxy");
    let rec = records
        .iter()
        .rev()
        .find(|r| r["path"] == "/politics")
        .unwrap_or_else(|| panic!("sleep's access log: {records:?}"));
    assert_eq!(
        rec["upstream_cluster"],
        "outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.local",
        "{rec}"
    );

    // Egress Gateways, HTTPS: the app's own TLS passes through both proxies by SNI.
    for file in [
        "edge/egress-gateway-cnn.yaml",
        "edge/egress-gateway-cnn-se.yaml",
    ] {
        t.run(&["delete", "-f", fixture(file).to_str().expect("utf-8")]);
    }
    t.apply(None, "edge/egress-gateway-cnn-tls.yaml");
    let public_ca = t.certs.join("public-ca.crt").display().to_string();
    let https_through_gw = until(
        "HTTPS to edition.cnn.com through the egress gateway",
        || {
            // The app trusts the test's CA as sleep's image trusts the public ones.
            let out = t.sleep_curl(&[
                "-sSL",
                "--cacert",
                &public_ca,
                "-o",
                "/dev/null",
                "-D",
                "-",
                "https://edition.cnn.com/politics",
            ]);
            let logged = t
                .log_records("istio-system", &egw, "istio-proxy")
                .into_iter()
                .any(|r| r["upstream_cluster"] == "outbound|443||edition.cnn.com");
            (out, logged)
        },
        |(o, logged)| *logged && String::from_utf8_lossy(&o.stdout).starts_with("HTTP/1.1 200"),
    );
    assert!(
        String::from_utf8_lossy(&https_through_gw.0.stdout).starts_with("HTTP/1.1 200"),
        "{}",
        text(&https_through_gw.0)
    );
    let records = t.log_records("istio-system", &egw, "istio-proxy");
    let rec = records
        .iter()
        .rev()
        .find(|r| r["upstream_cluster"] == "outbound|443||edition.cnn.com")
        .unwrap_or_else(|| panic!("the egress gateway's access log: {records:?}"));
    eprintln!("egress gateway (TLS): {rec}");
    assert_eq!(rec["requested_server_name"], "edition.cnn.com", "{rec}");
    let records = t.log_records("default", &sleep, "istio-proxy");
    assert!(
        records.iter().any(|r| r["upstream_cluster"]
            == "outbound|443|cnn|istio-egressgateway.istio-system.svc.cluster.local"
            && r["requested_server_name"] == "edition.cnn.com"),
        "sleep's access log: {records:?}"
    );
    let seen = t.log_records("external", &cnn, "https");
    assert!(
        seen.iter().any(|r| r["path"] == "/politics"
            && r["tls"]["sni"] == "edition.cnn.com"
            && r["headers"]["user-agent"]
                .as_str()
                .is_some_and(|a| a.starts_with("curl/"))),
        "the server saw the app's own TLS: {seen:?}"
    );
}

/// The ingress gateway's ports on the host, by the Ingress Gateways task's recipe for node
/// ports (`INGRESS_HOST=127.0.0.1`, as with kind): `kubectl -n istio-system get service
/// istio-ingressgateway -o jsonpath='{.spec.ports[?(@.name=="http2")].nodePort}'`, and `https`.
fn ingress_ports(t: &Edge) -> (u16, u16) {
    wait_for(
        "the ingress gateway's node ports",
        Duration::from_secs(90),
        || {
            let port = |name: &str| -> Option<u16> {
                let out = t.mesh.ama(&[
                    "get",
                    "service",
                    "istio-ingressgateway",
                    "-n",
                    "istio-system",
                    "-o",
                    &format!("jsonpath={{.spec.ports[?(@.name==\"{name}\")].nodePort}}"),
                ]);
                String::from_utf8_lossy(&out.stdout).trim().parse().ok()
            };
            Some((port("http2")?, port("https")?))
        },
    )
}
