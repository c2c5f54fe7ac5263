//! The control plane end to end, in network namespaces, with the real httpbin: `ama discovery`
//! reads a directory of the YAML a user would `kubectl apply` (file registry), pushes resources
//! over Delta ADS and signs the sidecars' certificates, both on 15012 as in a cluster (TLS
//! verified against the mesh root, per-workload bearer tokens); the sidecars talk mutual TLS.
//!
//! Checks, in order:
//! - httpbin sees `X-Forwarded-Client-Cert` with both SPIFFE ids (server `By=`, client `URI=`);
//! - under the default PERMISSIVE a plaintext client reaches httpbin; after a PeerAuthentication
//!   STRICT lands in the directory, every proxy has it (time printed) and the plaintext client is
//!   refused;
//! - a peer with a certificate from another root is refused in the TLS handshake;
//! - workload certificates of 20 s (renewed about every 10 s) rotate under steady traffic without
//!   a failed request;
//! - with `ama discovery` killed for 30 s under steady traffic (certificates of 24 h by then) no
//!   request fails; after a restart, a new edit still reaches the proxies;
//! - under DISABLE the mesh client's requests go in plaintext (no XFCC) and succeed.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::sidecar::{HTTPBIN_FQDN, HTTPBIN_VIP, start_httpbin, start_sidecar};
use e2e::{Lan, Pod, Proc, Scratch, ama, root_or_skip, run, venv_tool, wait_for};
use serde_json::Value;

const VIP: Ipv4Addr = HTTPBIN_VIP;
const FQDN: &str = HTTPBIN_FQDN;

/// The objects of the mesh, as a user would `kubectl apply` them; addresses come from the
/// `local.ama.dev/address(es)` annotations, as in `ama up`.
fn manifests(ubuntu: &Pod, httpbins: [&Pod; 2], legacy: &Pod) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    istio-injection: enabled
---
apiVersion: v1
kind: Namespace
metadata:
  name: legacy
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin-deployment
  labels:
    app: httpbin
  annotations:
    local.ama.dev/addresses: "{h0},{h1}"
spec:
  replicas: 2
  selector:
    matchLabels:
      app: httpbin
  template:
    metadata:
      labels:
        app: httpbin
    spec:
      serviceAccountName: httpbin
      containers:
      - name: httpbin
        image: kennethreitz/httpbin:latest
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin-service
spec:
  clusterIP: {VIP}
  selector:
    app: httpbin
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: ubuntu
  labels:
    app: ubuntu
  annotations:
    local.ama.dev/address: "{u}"
spec:
  serviceAccountName: sleep
  containers:
  - name: ubuntu
    image: ubuntu:latest
    command: ["sleep", "infinity"]
---
apiVersion: v1
kind: Pod
metadata:
  name: legacy
  namespace: legacy
  annotations:
    local.ama.dev/address: "{l}"
spec:
  containers:
  - name: legacy
    image: ubuntu:latest
"#,
        h0 = httpbins[0].ip,
        h1 = httpbins[1].ip,
        u = ubuntu.ip,
        l = legacy.ip,
    )
}

const STRICT: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
"#;

/// A running `ama discovery` on the `istiod` pod's address.
struct Discovery {
    proc: Option<Proc>,
    pod: Pod,
    config_dir: PathBuf,
    state_dir: PathBuf,
    logs: PathBuf,
    /// `--workload-cert-ttl`.
    cert_ttl: &'static str,
}

impl Discovery {
    fn start(&mut self) {
        let mut cmd = self.pod.ns.cmd(ama());
        cmd.args(["discovery", "--registry", "files"])
            .arg("--config-dir")
            .arg(&self.config_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--grpc-addr", "0.0.0.0:15010"])
            .args(["--secure-grpc-addr", "0.0.0.0:15012"])
            .args(["--monitoring-addr", "0.0.0.0:15014"])
            .args(["--webhook-addr", "off"])
            .args(["--dns-name", &self.pod.ip.to_string()])
            .args(["--workload-cert-ttl", self.cert_ttl]);
        let n = std::fs::read_dir(&self.logs)
            .map(|d| d.count())
            .unwrap_or(0);
        self.proc = Some(Proc::spawn(&format!("discovery-{n}"), &self.logs, cmd));
        wait_for("discovery to be ready", Duration::from_secs(30), || {
            self.pod
                .ns
                .try_sh("curl -sf -o /dev/null http://127.0.0.1:15014/ready")
                .status
                .success()
                .then_some(())
        });
    }

    fn kill(&mut self) {
        let mut proc = self.proc.take().expect("discovery runs");
        proc.signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
            .expect("discovery dies on SIGKILL");
    }
}

/// Issues the file-mode token of a workload: the control plane's copy where it looks for it
/// (`<state>/tokens/<ns>/<sa>/<pod>`), and the pod's copy that only its sidecar (uid 1337) reads,
/// as a kubelet mounts a projected token.
fn token(state: &Path, pod_dir: &Path, ns: &str, sa: &str, pod: &str) -> PathBuf {
    let dir = state.join("tokens").join(ns).join(sa);
    fs::create_dir_all(&dir).unwrap();
    let out = run(Command::new("openssl").args(["rand", "-hex", "32"]));
    fs::write(dir.join(pod), &out.stdout).unwrap();
    let mounted = pod_dir.join(format!("{pod}.istio-token"));
    fs::write(&mounted, &out.stdout).unwrap();
    run(Command::new("chown").arg("1337:1337").arg(&mounted));
    run(Command::new("chmod").arg("0400").arg(&mounted));
    mounted
}

/// Starts the sidecar of `pod`, configured over Delta ADS and certified by discovery's CA, both
/// on 15012 over TLS with the pod's token.
fn sidecar(pod: &Pod, name: &str, sa: &str, istiod: &Discovery, dir: &Path) -> Proc {
    let token = token(&istiod.state_dir, dir, "default", sa, name);
    let istiod_addr = format!("{}:15012", istiod.pod.ip);
    let root = istiod.state_dir.join("root-cert.pem");
    let source: [&std::ffi::OsStr; 8] = [
        "--discoveryAddress".as_ref(),
        istiod_addr.as_ref(),
        "--ca-addr".as_ref(),
        istiod_addr.as_ref(),
        "--ca-root-file".as_ref(),
        root.as_os_str(),
        "--token-file".as_ref(),
        token.as_os_str(),
    ];
    start_sidecar(pod, name, sa, &source, dir)
}

/// The XFCC header httpbin saw on one request from the ubuntu pod.
fn xfcc(ubuntu: &Pod) -> String {
    let out = ubuntu.ns.sh("curl -sf http://httpbin-service/headers");
    let seen: Value = serde_json::from_slice(&out.stdout).expect("httpbin answers JSON");
    seen["headers"]["X-Forwarded-Client-Cert"]
        .as_str()
        .unwrap_or_else(|| panic!("no XFCC in {seen}"))
        .to_string()
}

/// The `Hash=` of an XFCC value: the SHA-256 of the client's leaf certificate.
fn cert_hash(xfcc: &str) -> String {
    xfcc.split(';')
        .find_map(|p| p.strip_prefix("Hash="))
        .expect("XFCC has Hash=")
        .to_string()
}

/// The serial number of the workload certificate the sidecar of `pod` uses now (admin `/certs`).
fn cert_serial(pod: &Pod) -> String {
    let out = pod.ns.sh("curl -sf http://127.0.0.1:15000/certs");
    let certs: Value = serde_json::from_slice(&out.stdout).expect("/certs is JSON");
    certs["certificates"][0]["cert_chain"][0]["serial_number"]
        .as_str()
        .unwrap_or_else(|| panic!("no certificate in {certs}"))
        .to_string()
}

/// True when the sidecar of `pod` has a config in which `needle` appears.
fn config_has(pod: &Pod, needle: &str) -> bool {
    let out = pod.ns.try_sh("curl -sf http://127.0.0.1:15000/config_dump");
    String::from_utf8_lossy(&out.stdout).contains(needle)
}

/// Waits until every sidecar's config shows `needle`; returns how long each one took.
fn propagation(pods: &[&Pod], needle: &str, since: Instant) -> Vec<Duration> {
    pods.iter()
        .map(|pod| {
            wait_for(
                &format!("{needle} to reach {}", pod.ns.name),
                Duration::from_secs(30),
                || config_has(pod, needle).then(|| since.elapsed()),
            )
        })
        .collect()
}

/// Writes the namespace's PeerAuthentication with `mode` into the config directory and waits
/// until every proxy in `pods` has it; prints how long the edit took to reach each.
fn set_mode(config_dir: &Path, mode: &str, pods: &[&Pod]) {
    let edited = Instant::now();
    fs::write(
        config_dir.join("strict.yaml"),
        STRICT.replace("STRICT", mode),
    )
    .unwrap();
    let took = propagation(pods, mode, edited);
    eprintln!("file edit to every proxy ({mode}): {took:?}");
}

/// Sends requests from `ubuntu` to httpbin for `secs` seconds (about 20 a second) while
/// `meanwhile` runs; returns (succeeded, failed), printing each failure.
fn steady_traffic(ubuntu: &Pod, secs: u32, meanwhile: impl FnOnce() + Send) -> (u32, u32) {
    let out = std::thread::scope(|s| {
        let load = s.spawn(|| {
            ubuntu.ns.try_sh(&format!(
                "ok=0; bad=0; end=$((SECONDS+{secs})); while [ $SECONDS -lt $end ]; do \
                   c=$(curl -s -o /dev/null -w '%{{http_code}}' http://httpbin-service/get); \
                   if [ \"$c\" = 200 ]; then ok=$((ok+1)); else bad=$((bad+1)); echo \"failed: $c\" >&2; fi; \
                   sleep 0.05; done; echo \"$ok $bad\""
            ))
        });
        meanwhile();
        load.join().expect("traffic thread")
    });
    let counts = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let failures = String::from_utf8_lossy(&out.stderr);
    if !failures.is_empty() {
        eprintln!("{failures}");
    }
    let (ok, bad) = counts
        .split_once(' ')
        .unwrap_or_else(|| panic!("traffic loop printed {counts:?}: {failures}"));
    (ok.parse().unwrap(), bad.parse().unwrap())
}

#[test]
fn discovery_pushes_config_and_certificates_and_mtls_holds() {
    const TEST: &str = "discovery_pushes_config_and_certificates_and_mtls_holds";
    if !root_or_skip(TEST) {
        return;
    }
    let gunicorn = venv_tool(TEST, "gunicorn");
    let scratch = Scratch::new("mtls");
    let dir = scratch.path();
    let mut lan = Lan::new();
    let istiod_pod = lan.pod("istiod");
    let ubuntu = lan.pod("ubuntu");
    let httpbin0 = lan.pod("httpbin0");
    let httpbin1 = lan.pod("httpbin1");
    let legacy = lan.pod("legacy");
    ubuntu
        .ns
        .set_hosts(&format!("{VIP} httpbin-service {FQDN}\n"));

    let config_dir = dir.join("config");
    let state_dir = dir.join("state");
    fs::create_dir_all(&config_dir).unwrap();
    fs::create_dir_all(&state_dir).unwrap();
    fs::write(
        config_dir.join("mesh.yaml"),
        manifests(&ubuntu, [&httpbin0, &httpbin1], &legacy),
    )
    .unwrap();
    let mut istiod = Discovery {
        proc: None,
        pod: istiod_pod,
        config_dir: config_dir.clone(),
        state_dir: state_dir.clone(),
        logs: dir.join("istiod"),
        cert_ttl: "20s",
    };
    fs::create_dir_all(&istiod.logs).unwrap();
    istiod.start();

    let _apps = [
        start_httpbin(&httpbin0, "httpbin-0", &gunicorn, dir),
        start_httpbin(&httpbin1, "httpbin-1", &gunicorn, dir),
    ];
    let _servers = [
        sidecar(&httpbin0, "httpbin-0", "httpbin", &istiod, dir),
        sidecar(&httpbin1, "httpbin-1", "httpbin", &istiod, dir),
    ];
    let _client = sidecar(&ubuntu, "ubuntu", "sleep", &istiod, dir);

    // 1. Mutual TLS with certificates from discovery's CA: both identities in XFCC.
    let first = xfcc(&ubuntu);
    eprintln!("X-Forwarded-Client-Cert: {first}");
    assert!(
        first.starts_with("By=spiffe://cluster.local/ns/default/sa/httpbin;Hash="),
        "{first}"
    );
    assert!(
        first.ends_with(";Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/sleep"),
        "{first}"
    );
    assert_eq!(cert_hash(&first).len(), 64, "{first}");

    // 2. PERMISSIVE (Istio's default) lets a plaintext client in; STRICT, once pushed, does not.
    let plain = format!(
        "curl -s -o /dev/null -w '%{{http_code}}' http://{}/get",
        httpbin0.ip
    );
    let code = legacy.ns.try_sh(&plain);
    assert_eq!(String::from_utf8_lossy(&code.stdout), "200", "{code:?}");
    set_mode(&config_dir, "STRICT", &[&ubuntu, &httpbin0, &httpbin1]);
    let refused = legacy.ns.try_sh(&plain);
    assert_ne!(
        String::from_utf8_lossy(&refused.stdout),
        "200",
        "a plaintext client must be refused under STRICT: {refused:?}"
    );
    assert!(xfcc(&ubuntu).contains("URI=spiffe://cluster.local/ns/default/sa/sleep"));

    // 3. A peer whose certificate comes from another root is refused in the handshake.
    let evil = dir.join("evil");
    fs::create_dir_all(&evil).unwrap();
    let e = evil.display();
    let openssl = format!(
        "cd {e}
         openssl ecparam -name prime256v1 -genkey -noout -out ca.key
         openssl req -x509 -new -key ca.key -subj /O=cluster.local -days 1 -out ca.crt
         openssl ecparam -name prime256v1 -genkey -noout -out leaf.key
         openssl req -new -key leaf.key -subj / -out leaf.csr 2>/dev/null || openssl req -new -key leaf.key -subj /O=evil -out leaf.csr
         printf 'subjectAltName=URI:spiffe://cluster.local/ns/default/sa/sleep\\nextendedKeyUsage=clientAuth,serverAuth\\n' > ext
         openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile ext -out leaf.crt"
    );
    run(Command::new("bash").args(["-ec", &openssl]));
    let handshake = legacy.ns.try_sh(&format!(
        "echo | timeout 10 openssl s_client -connect {}:80 -alpn istio-http/1.1 \
         -servername outbound_.80_._.{FQDN} -cert {e}/leaf.crt -key {e}/leaf.key 2>&1; \
         printf 'GET /get HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | timeout 10 openssl s_client -quiet \
         -connect {}:80 -alpn istio-http/1.1 -cert {e}/leaf.crt -key {e}/leaf.key 2>&1",
        httpbin0.ip, httpbin0.ip
    ));
    let text = String::from_utf8_lossy(&handshake.stdout);
    assert!(
        !text.contains("HTTP/1.1 200"),
        "a certificate from another root must not reach the app:\n{text}"
    );
    assert!(
        text.contains("alert") || text.contains("error"),
        "the server must refuse the handshake:\n{text}"
    );

    // 4. Certificates of 20 s rotate under steady traffic; no request fails. (Pooled upstream
    // connections keep the certificate they were made with, as in Envoy; new ones get the new
    // one.)
    let sidecars = [&ubuntu, &httpbin0, &httpbin1];
    let before: Vec<String> = sidecars.iter().map(|p| cert_serial(p)).collect();
    let (ok, bad) = steady_traffic(&ubuntu, 25, || {});
    eprintln!("25 s of traffic across certificate rotations: {ok} ok, {bad} failed");
    assert_eq!(bad, 0);
    let after: Vec<String> = sidecars.iter().map(|p| cert_serial(p)).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b, a, "every sidecar's certificate rotated under traffic");
    }

    // 5. Kill discovery for 30 s under steady traffic: no request fails. First let every
    // sidecar renew to a 24 h certificate, so the outage tests the config path alone.
    let short: Vec<String> = sidecars.iter().map(|p| cert_serial(p)).collect();
    istiod.kill();
    istiod.cert_ttl = "24h";
    istiod.start();
    for (pod, short) in sidecars.iter().zip(&short) {
        wait_for("a 24 h certificate", Duration::from_secs(30), || {
            (&cert_serial(pod) != short).then_some(())
        });
    }
    let (ok, bad) = steady_traffic(&ubuntu, 35, || {
        std::thread::sleep(Duration::from_secs(1));
        istiod.kill();
        std::thread::sleep(Duration::from_secs(30));
        istiod.start();
    });
    eprintln!("35 s of traffic with discovery down for 30 s: {ok} ok, {bad} failed");
    assert_eq!(bad, 0);
    assert!(ok > 100, "{ok}");

    // 6. After the restart, an edit reaches every proxy again.
    set_mode(&config_dir, "PERMISSIVE", &[&ubuntu, &httpbin0, &httpbin1]);
    let code = legacy.ns.try_sh(&plain);
    assert_eq!(String::from_utf8_lossy(&code.stdout), "200", "{code:?}");

    // 7. DISABLE: discovery marks httpbin's endpoints plaintext (auto mTLS, as Istio's EDS
    // does), so the mesh client still gets its answer, now without XFCC. Sent as mTLS, it
    // would reach a DISABLE server's app as TLS bytes.
    set_mode(&config_dir, "DISABLE", &[&ubuntu, &httpbin0, &httpbin1]);
    let seen = wait_for(
        "the mesh client's request in plaintext under DISABLE",
        Duration::from_secs(30),
        || {
            let out = ubuntu.ns.try_sh("curl -sf http://httpbin-service/headers");
            let seen: Value = serde_json::from_slice(&out.stdout).ok()?;
            seen["headers"]["X-Forwarded-Client-Cert"]
                .is_null()
                .then_some(seen)
        },
    );
    assert_eq!(seen["headers"]["Host"], "httpbin-service", "{seen}");
    let (ok, bad) = steady_traffic(&ubuntu, 3, || {});
    assert_eq!(bad, 0, "{ok} ok");
    let code = legacy.ns.try_sh(&plain);
    assert_eq!(String::from_utf8_lossy(&code.stdout), "200", "{code:?}");
}
