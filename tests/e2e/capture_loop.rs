//! A pod's capture ports addressed from outside, with the real capture rules and sidecar: a
//! connection from another pod to `<pod IP>:15006` or `:15001` must be refused, not forwarded.
//! Before the fix, one such connection made the sidecar connect to itself without end: 18,821
//! looping connections in 12 s, 18,658 of its 20,000 file descriptors (issue 13).

use std::time::Duration;

use e2e::sidecar::{HTTPBIN_FQDN, HTTPBIN_VIP, start_httpbin, start_sidecar};
use e2e::{Lan, Scratch, root_or_skip, venv_tool};

/// Resources with httpbin's workload and Service; resources come from a file, no mTLS.
fn resources(httpbin_ip: std::net::Ipv4Addr) -> String {
    serde_json::json!({
        "workloads": [{
            "uid": "Kubernetes//Pod/default/httpbin-0",
            "name": "httpbin-0",
            "namespace": "default",
            "addresses": [httpbin_ip.to_string()],
            "serviceAccount": "default",
            "labels": {"app": "httpbin"},
            "workloadName": "httpbin-deployment",
            "ports": [{"port": 80}],
        }],
        "services": [{
            "hostname": HTTPBIN_FQDN,
            "name": "httpbin-service",
            "namespace": "default",
            "vips": [HTTPBIN_VIP.to_string()],
            "ports": [{"name": "http", "port": 80, "targetPort": 80}],
            "endpoints": [{"address": httpbin_ip.to_string(), "workloadUid": "Kubernetes//Pod/default/httpbin-0"}],
        }],
    })
    .to_string()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn capture_ports_addressed_from_another_pod_are_refused_without_a_loop() {
    const TEST: &str = "capture_ports_addressed_from_another_pod_are_refused_without_a_loop";
    if !root_or_skip(TEST) {
        return;
    }
    let gunicorn = venv_tool(TEST, "gunicorn");
    let scratch = Scratch::new("loop");
    let dir = scratch.path();
    let mut lan = Lan::new();
    let httpbin = lan.pod("httpbin");
    let outsider = lan.pod("outsider");
    let config = dir.join("resources.json");
    std::fs::write(&config, resources(httpbin.ip)).expect("write resources");
    let source = [std::ffi::OsStr::new("--config"), config.as_os_str()];
    let _app = start_httpbin(&httpbin, "httpbin-0", &gunicorn, dir);
    let mut sidecar = start_sidecar(&httpbin, "httpbin-0", "default", &source, dir);
    let before = open_fds(sidecar.pid());

    for port in [15006, 15001] {
        // Sends a request and reads until the sidecar closes; `timeout` ends a stall (124).
        let out = outsider.ns.try_sh(&format!(
            "timeout 10 bash -c 'exec 3<>/dev/tcp/{ip}/{port}; printf \"GET /get HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n\" >&3; cat <&3'",
            ip = httpbin.ip
        ));
        assert_ne!(
            out.status.code(),
            Some(124),
            "the connection to :{port} was still open after 10 s"
        );
        // 15006 is black-holed on the inbound side: closed with no answer. 15001 is an
        // ordinary inbound port to the inbound side, forwarded to the pod's :15001, which is
        // the outbound listener: black-holed there, so the client gets Envoy's 503.
        let answer = String::from_utf8_lossy(&out.stdout);
        match port {
            15006 => assert!(answer.is_empty(), ":{port} answered: {answer}"),
            _ => assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
                ":{port} answered: {answer}"
            ),
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    sidecar.assert_running();
    let after = open_fds(sidecar.pid());
    assert!(
        after <= before + 16,
        "the sidecar holds {after} file descriptors after the two connections (before: {before})"
    );
    let log = sidecar.out();
    let black_holed = log
        .lines()
        .filter(|l| l.contains("\"upstream_cluster\":\"BlackHoleCluster\""))
        .count();
    assert!(
        black_holed >= 2,
        "a BlackHoleCluster line for each port:\n{log}"
    );

    // The app's own port still works.
    let out = outsider.ns.sh(&format!(
        "curl -s -m 10 -o /dev/null -w '%{{http_code}}' http://{}/get",
        httpbin.ip
    ));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}
