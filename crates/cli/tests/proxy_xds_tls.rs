//! The injected-in-Kubernetes path through the real binaries: `ama discovery` (file registry,
//! file-mode tokens, its own root) listening on 15012 of a loopback address, and `ama proxy
//! sidecar` told nothing but Istio's `PROXY_CONFIG={"discoveryAddress":"<host>:15012"}`, the mesh
//! root file and the pod's token file (what injection mounts at /var/run/secrets/istio and
//! /var/run/secrets/tokens). The sidecar connects over TLS with its token because the port is
//! 15012, gets its config and reports ready; one that claims a service account other than its
//! token's is refused. Needs no privilege.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::{Proc, Scratch, wait_for};

const AMA: &str = env!("CARGO_BIN_EXE_ama");

/// The mesh both discovery-over-TLS tests serve (one fixture, shared with the other test).
const MESH: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/xds-tls-mesh.yaml"
));

/// `GET path` over HTTP/1.0: the status and the body.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// A port free on loopback now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `ama discovery` on Istio's ports of a loopback address of this test's own (`octet`: one per
/// test, as the tests of this file run at once), with the file registry serving [`MESH`] and
/// file-mode tokens in `dir/state`. Returns it, ready, with the address and the token of pod
/// `ubuntu` (namespace `default`, service account `default`).
fn start_discovery(dir: &Path, octet: u8) -> (Proc, Ipv4Addr, PathBuf) {
    let state = dir.join("state");
    let config = dir.join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(config.join("mesh.yaml"), MESH).expect("write");
    let token = control::tokens::FileTokens::open(&state)
        .expect("tokens")
        .issue("default", "default", "ubuntu")
        .expect("token")
        .path()
        .to_path_buf();
    let ip = Ipv4Addr::new(127, 78, (std::process::id() % 250) as u8 + 1, octet);
    let mut discovery = Command::new(AMA);
    discovery
        .args(["discovery", "--registry", "files", "--webhook-addr", "off"])
        .arg("--config-dir")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .args(["--grpc-addr", &format!("{ip}:15010")])
        .args(["--secure-grpc-addr", &format!("{ip}:15012")])
        .args(["--monitoring-addr", &format!("{ip}:15014")]);
    let mut discovery = Proc::spawn("discovery", dir, discovery);
    wait_for("discovery to be ready", Duration::from_secs(30), || {
        discovery.assert_running();
        (get(SocketAddr::from((ip, 15014)), "/ready")?.0 == 200).then_some(())
    });
    (discovery, ip, token)
}

#[test]
fn a_sidecar_with_only_proxy_config_gets_its_config_over_tls() {
    let scratch = Scratch::new("xds-tls");
    let dir = scratch.path();
    let (mut discovery, ip, token) = start_discovery(dir, 12);

    // Ports are picked free and then bound by the sidecar, so a parallel test can take one in
    // between: a start that fails on a taken port is retried with new ports.
    let (sidecar, admin) = (0..5)
        .find_map(|attempt| start_sidecar(dir, &token, ip, attempt))
        .expect("the sidecar starts on free ports within 5 attempts");
    let (_, dump) =
        get(SocketAddr::from(([127, 0, 0, 1], admin)), "/config_dump").expect("config_dump");
    assert!(
        dump.contains("httpbin-service.default.svc.cluster.local"),
        "{dump}"
    );
    let log = sidecar.err();
    assert!(log.contains("discovery over TLS with a token"), "{log}");
    assert!(!log.contains(std::fs::read_to_string(&token).expect("token").trim()));
    discovery.assert_running();
}

/// A pod's token says which service account it runs as; a sidecar that reports another one in
/// its node metadata (`SERVICE_ACCOUNT`, from injection's env) gets no config and never reports
/// ready, and both ends say why.
#[test]
fn a_sidecar_claiming_another_service_account_is_refused() {
    let scratch = Scratch::new("xds-tls-sa");
    let dir = scratch.path();
    let (mut discovery, ip, token) = start_discovery(dir, 13);
    let readiness = free_port();
    let mut cmd = sidecar_command(dir, &token, ip, free_port(), readiness);
    cmd.env("SERVICE_ACCOUNT", "sleep");
    let mut sidecar = Proc::spawn("sidecar", dir, cmd);
    wait_for(
        "discovery to refuse the sidecar",
        Duration::from_secs(30),
        || {
            sidecar.assert_running();
            discovery
                .err()
                .contains("the service account differs")
                .then_some(())
        },
    );
    wait_for(
        "the sidecar to log the refusal",
        Duration::from_secs(30),
        || {
            sidecar
                .err()
                .contains("the control plane refused this proxy's credentials")
                .then_some(())
        },
    );
    let ready = get(
        SocketAddr::from(([127, 0, 0, 1], readiness)),
        "/healthz/ready",
    );
    assert_ne!(ready.map(|(status, _)| status), Some(200));
    assert!(
        !sidecar
            .err()
            .contains(std::fs::read_to_string(&token).expect("token").trim())
    );
    sidecar.assert_running();
    discovery.assert_running();
}

/// `ama proxy sidecar` told only Istio's `PROXY_CONFIG`, the root and the token, as injection
/// runs it for pod `ubuntu` (service account `default`, the token's), on the given ports.
fn sidecar_command(dir: &Path, token: &Path, ip: Ipv4Addr, admin: u16, readiness: u16) -> Command {
    let mut sidecar = Command::new(AMA);
    sidecar
        .args(["proxy", "sidecar", "--proxyLogLevel", "info"])
        .arg("--ca-root-file")
        .arg(dir.join("state").join("root-cert.pem"))
        .arg("--token-file")
        .arg(token)
        .args(["--outbound-port", &free_port().to_string()])
        .args(["--inbound-port", &free_port().to_string()])
        .args(["--admin-port", &admin.to_string()])
        .args(["--status-port", &free_port().to_string()])
        .args(["--readiness-port", &readiness.to_string()])
        .args(["--prometheus-port", &free_port().to_string()])
        .env(
            "PROXY_CONFIG",
            format!(r#"{{"discoveryAddress":"{ip}:15012"}}"#),
        )
        .env("POD_NAME", "ubuntu")
        .env("POD_NAMESPACE", "default")
        .env("SERVICE_ACCOUNT", "default")
        .env("INSTANCE_IP", "10.244.0.5");
    sidecar
}

/// Starts [`sidecar_command`] on free loopback ports and waits until it is ready. Returns it
/// with its admin port, or None when a port was taken meanwhile (the caller retries).
fn start_sidecar(dir: &Path, token: &Path, ip: Ipv4Addr, attempt: u32) -> Option<(Proc, u16)> {
    let (admin, readiness) = (free_port(), free_port());
    let sidecar = sidecar_command(dir, token, ip, admin, readiness);
    let mut sidecar = Proc::spawn(&format!("sidecar-{attempt}"), dir, sidecar);
    let ready = wait_for("the sidecar to be ready", Duration::from_secs(30), || {
        if sidecar.has_exited() {
            return Some(false);
        }
        let (status, _) = get(
            SocketAddr::from(([127, 0, 0, 1], readiness)),
            "/healthz/ready",
        )?;
        (status == 200).then_some(true)
    });
    if ready {
        return Some((sidecar, admin));
    }
    let log = sidecar.err();
    assert!(
        log.contains("Address already in use"),
        "the sidecar exited:\n{log}"
    );
    None
}
