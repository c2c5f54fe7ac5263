//! The sidecar's discovery client to the control plane's secure port, as Istio's agent talks to
//! istiod on 15012: the real `control::Discovery` in process (file registry, file-mode tokens,
//! its own root in a temp state dir), the proxy's ADS client over TLS 1.3 with the pod's token.
//!
//! - the right root and token: the proxy gets its resources;
//! - a root from another CA: refused at the handshake, logged with what to check, nothing
//!   applied, retried; once the right root is in the file, the next attempt gets the config;
//! - a wrong token: `Unauthenticated`, logged, retried; the token file is read again at every
//!   attempt, so the right token written later is used;
//! - no token file: logged, retried;
//! - `auto` turns TLS on for port 15012 only (plaintext 15010 keeps working).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use control::{Discovery, DiscoveryOptions as ControlOptions, SecurityOptions};
use proxy::config::ProxyConfig;
use proxy::xds_client::{DiscoveryOptions, XdsTls, client_for};
use tokio::sync::{mpsc, watch};
use xds::ProxyResources;
use xds::ads::{AdsClient, Backoff, ClientStatus};

const WAIT: Duration = Duration::from_secs(15);
const HTTPBIN: &str = "httpbin-service.default.svc.cluster.local";

/// The mesh both discovery-over-TLS tests serve (one fixture, shared with the other test).
const MESH: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/xds-tls-mesh.yaml"
));

/// Every log line of the process, for the checks on what an operator would read.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits for a log line holding every one of `needles`.
async fn wait_log(needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&logs().lock().expect("logs")).to_string();
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            eprintln!("log: {line}");
            return line.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line with {needles:?} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `ama discovery` with its security servers on `secure` (loopback), its state in `state`.
async fn discovery(state: &Path, secure: SocketAddr) -> Discovery {
    let config = state.join("config");
    fs::create_dir_all(&config).expect("config dir");
    fs::write(config.join("mesh.yaml"), MESH).expect("write");
    let mut options = ControlOptions::new(&config);
    options.grpc_addr = "127.0.0.1:0".parse().expect("addr");
    options.monitoring_addr = "127.0.0.1:0".parse().expect("addr");
    let mut security = SecurityOptions::new(state);
    security.secure_grpc_addr = secure;
    security.webhook_addr = None;
    options.security = Some(security);
    Discovery::start(options).await.expect("discovery starts")
}

/// The ubuntu pod's token, issued by the control plane (`<state>/tokens/default/default/ubuntu`).
fn issue_token(discovery: &Discovery) -> PathBuf {
    discovery
        .security()
        .expect("security")
        .file_tokens
        .as_ref()
        .expect("file-mode tokens")
        .issue("default", "default", "ubuntu")
        .expect("token")
        .path()
        .to_path_buf()
}

fn ubuntu() -> ProxyConfig {
    ProxyConfig {
        pod_name: Some("ubuntu".into()),
        pod_namespace: Some("default".into()),
        instance_ip: Some("10.244.0.5".parse().expect("ip")),
        ..ProxyConfig::default()
    }
}

/// The running client: the configs it applied, and its status.
struct Running {
    configs: mpsc::Receiver<ProxyResources>,
    status: watch::Receiver<ClientStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn run(client: AdsClient) -> Running {
    let client = client.with_backoff(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    });
    let status = client.status();
    let (tx, configs) = mpsc::channel(16);
    let task = tokio::spawn(client.run(move |r: ProxyResources| {
        r.validate().map_err(|e| e.to_string())?;
        tx.try_send(r).map_err(|e| e.to_string())
    }));
    Running {
        configs,
        status,
        task,
    }
}

impl Running {
    async fn config_with_httpbin(&mut self) -> ProxyResources {
        tokio::time::timeout(WAIT, async {
            loop {
                let r = self.configs.recv().await.expect("client alive");
                if r.services.iter().any(|s| s.hostname == HTTPBIN) {
                    return r;
                }
            }
        })
        .await
        .expect("config in time")
    }

    /// Waits until the client has failed at least `n` times with `needle` in the reason; nothing
    /// applied meanwhile.
    async fn failing(&mut self, needle: &str, n: u64) -> String {
        let mut first = None;
        let result = tokio::time::timeout(WAIT, async {
            loop {
                let s = self.status.borrow_and_update().clone();
                assert_eq!(s.applied, 0, "a config was applied: {s:?}");
                let reason = s.last_disconnect.clone().unwrap_or_default();
                if reason.contains(needle) {
                    let from = *first.get_or_insert(s.disconnects);
                    if s.disconnects >= from + n - 1 {
                        return reason;
                    }
                }
                self.status.changed().await.expect("client alive");
            }
        })
        .await;
        let reason = result.unwrap_or_else(|_| {
            panic!(
                "no {n} failures with {needle:?}; status: {:?}",
                self.status.borrow()
            )
        });
        assert!(self.configs.try_recv().is_err(), "config applied");
        reason
    }
}

fn tls_to(addr: SocketAddr, root: &Path, token: &Path) -> DiscoveryOptions {
    DiscoveryOptions {
        address: addr.to_string(),
        tls: XdsTls::On,
        root_file: root.to_path_buf(),
        token_file: token.to_path_buf(),
    }
}

fn other_ca_root() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .self_signed(&rcgen::KeyPair::generate().expect("key"))
        .expect("cert")
        .pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_over_tls_with_the_token() {
    logs();
    let state = tempfile::tempdir().expect("tempdir");
    let d = discovery(state.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let secure = d.security().expect("security").secure_grpc_addr;
    let token = issue_token(&d);
    let root = d.security().expect("security").root_cert_file.clone();
    let opts = tls_to(secure, &root, &token);
    assert!(opts.uses_tls());
    let mut c = run(client_for(&opts, &ubuntu(), &BTreeMap::new()).expect("client"));
    let r = c.config_with_httpbin().await;
    assert_eq!(
        r.node.as_ref().and_then(|n| n.name.as_deref()),
        Some("ubuntu")
    );
    assert!(c.status.borrow().connected);

    // Plaintext 15010 keeps working, for the same server.
    let plain = DiscoveryOptions {
        tls: XdsTls::Auto,
        ..DiscoveryOptions::new(d.grpc_addr().to_string())
    };
    assert!(!plain.uses_tls());
    let mut p = run(client_for(&plain, &ubuntu(), &BTreeMap::new()).expect("client"));
    p.config_with_httpbin().await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_of_another_ca_is_refused_logged_and_retried() {
    logs();
    let state = tempfile::tempdir().expect("tempdir");
    let d = discovery(state.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let secure = d.security().expect("security").secure_grpc_addr;
    let token = issue_token(&d);
    let files = tempfile::tempdir().expect("tempdir");
    let root = files.path().join("wrong-root-cert.pem");
    fs::write(&root, other_ca_root()).expect("write");

    let mut c = run(
        client_for(&tls_to(secure, &root, &token), &ubuntu(), &BTreeMap::new()).expect("client"),
    );
    let reason = c.failing("UnknownIssuer", 3).await;
    assert!(reason.contains(&root.display().to_string()), "{reason}");
    assert!(reason.contains("mesh root"), "{reason}");
    let line = wait_log(&[
        "discovery stream ended",
        "UnknownIssuer",
        "wrong-root-cert.pem",
    ])
    .await;
    assert!(line.contains("WARN"), "{line}");
    assert!(
        !line.contains(
            &fs::read_to_string(&token)
                .expect("token")
                .trim()
                .to_string()
        )
    );

    // The root is read again at every attempt: the right one ends the refusals.
    fs::copy(&d.security().expect("security").root_cert_file, &root).expect("copy");
    c.config_with_httpbin().await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_is_refused_logged_and_retried() {
    logs();
    let state = tempfile::tempdir().expect("tempdir");
    let d = discovery(state.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let secure = d.security().expect("security").secure_grpc_addr;
    let root = d.security().expect("security").root_cert_file.clone();
    let good = fs::read_to_string(issue_token(&d)).expect("token");
    let files = tempfile::tempdir().expect("tempdir");
    let token = files.path().join("istio-token");
    fs::write(&token, "0123456789abcdef-not-issued\n").expect("write");

    let mut c = run(
        client_for(&tls_to(secure, &root, &token), &ubuntu(), &BTreeMap::new()).expect("client"),
    );
    let reason = c.failing("Unauthenticated", 3).await;
    assert!(
        !reason.contains("not-issued"),
        "the token is never shown: {reason}"
    );
    let line = wait_log(&[
        "refused this proxy's credentials",
        "Unauthenticated",
        "istio-token",
    ])
    .await;
    assert!(!line.contains("not-issued"), "{line}");

    // No token file at all: said so, retried.
    fs::remove_file(&token).expect("remove");
    c.failing("cannot read the token file", 2).await;
    wait_log(&["cannot read the token file", "--token-file"]).await;

    // Read again at every attempt: the pod's real token (a rotation) is taken up.
    fs::write(&token, good).expect("write");
    c.config_with_httpbin().await;
    d.shutdown().await;
}

/// `auto` (the default) turns TLS on because the port is 15012: Istio's convention, what the
/// injected `PROXY_CONFIG` carries. The server listens on 15012 of a loopback address of its own
/// and names it in its certificate (the bound IP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_is_tls_on_15012() {
    logs();
    let ip = std::net::Ipv4Addr::new(127, 77, (std::process::id() % 250) as u8 + 1, 12);
    let secure = SocketAddr::from((ip, 15012));
    let state = tempfile::tempdir().expect("tempdir");
    let d = discovery(state.path(), secure).await;
    let token = issue_token(&d);
    let root = d.security().expect("security").root_cert_file.clone();
    let opts = DiscoveryOptions {
        root_file: root,
        token_file: token,
        ..DiscoveryOptions::new(secure.to_string())
    };
    assert_eq!(opts.tls, XdsTls::Auto);
    assert!(opts.uses_tls());
    let mut c = run(client_for(&opts, &ubuntu(), &BTreeMap::new()).expect("client"));
    c.config_with_httpbin().await;
    d.shutdown().await;
}
