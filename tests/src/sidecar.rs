//! Pods as Istio makes them, by hand: the capture rules of `istio-init`, the `istio-proxy`
//! sidecar as uid 1337, and the seed's app (the real httpbin under gunicorn).

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::{Pod, Proc, ama, wait_for};

/// The VIP the tests give `httpbin-service`.
pub const HTTPBIN_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The Service's cluster-local name.
pub const HTTPBIN_FQDN: &str = "httpbin-service.default.svc.cluster.local";

/// Istio's default capture arguments, as `ama kube-inject` writes them into istio-init.
pub const CAPTURE_ARGS: [&str; 17] = [
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
    "--log_output_level=default:info",
];

/// Installs the capture rules in `pod` and starts its sidecar as uid/gid 1337 in namespace
/// `default` with service account `sa`, a JSON access log on stdout, and `source` saying where
/// its resources and certificate come from (`--config FILE`, or discovery and CA flags).
/// Returns once the sidecar reports ready on 15021.
pub fn start_sidecar<S: AsRef<OsStr>>(
    pod: &Pod,
    name: &str,
    sa: &str,
    source: &[S],
    dir: &Path,
) -> Proc {
    let out = pod
        .ns
        .cmd(ama())
        .arg("iptables")
        .args(CAPTURE_ARGS)
        .output()
        .expect("run ama iptables");
    assert!(
        out.status.success(),
        "ama iptables in {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = pod.ns.cmd("setpriv");
    cmd.args(["--reuid", "1337", "--regid", "1337", "--clear-groups"])
        .arg(ama())
        .args(["proxy", "sidecar", "--domain", "default.svc.cluster.local"])
        .args(["--concurrency", "2"])
        .args(["--access-log-file", "/dev/stdout"])
        .args(["--access-log-encoding", "JSON"])
        .args(source)
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", "default")
        .env("INSTANCE_IP", pod.ip.to_string())
        .env("SERVICE_ACCOUNT", sa);
    let proc = Proc::spawn(&format!("{name}-istio-proxy"), dir, cmd);
    wait_for(
        &format!("{name}'s sidecar to be ready"),
        Duration::from_secs(60),
        || {
            pod.ns
                .try_sh("curl -sf -o /dev/null http://127.0.0.1:15021/healthz/ready")
                .status
                .success()
                .then_some(())
        },
    );
    proc
}

/// Starts the real httpbin (PyPI, under `gunicorn`) on :80 in `pod`; returns once it listens.
pub fn start_httpbin(pod: &Pod, name: &str, gunicorn: &Path, dir: &Path) -> Proc {
    let mut cmd = pod.ns.cmd(gunicorn);
    cmd.args(["-b", "0.0.0.0:80", "-w", "2", "--access-logfile", "-"])
        .arg("httpbin:app");
    let app = Proc::spawn(name, dir, cmd);
    // The app's own port is reachable in its namespace before any capture is installed.
    pod.ns.wait_port("127.0.0.1", 80);
    app
}
