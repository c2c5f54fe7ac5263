//! `ama iptables` in a real pod: a network namespace on a test LAN (e2e's [`Lan`]), whose bridge
//! namespace plays "outside". Real sockets show what the rules do: the app's outbound
//! connections land on 15001 and inbound ones on 15006, each with its original destination
//! (`SO_ORIGINAL_DST`); excluded ports bypass; the proxy's own traffic (uid 1337) and its inbound
//! passthrough from 127.0.0.6 are left alone; cleanup leaves no rule.
//!
//! Root only: each test says it was skipped otherwise. The namespaces (and with them every rule
//! and socket) are removed by guards when a test ends, failed or not.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Output;
use std::time::{Duration, Instant};

use e2e::{Lan, Netns, Pod, root_or_skip};
use nix::sched::CloneFlags;
use socket2::{Domain, SockAddr, SockRef, Socket, Type};

const AMA: &str = env!("CARGO_BIN_EXE_ama");
const PROXY_UID: u32 = 1337;
const APP_UID: u32 = 1000;
/// The outside end of the LAN, in the bridge namespace.
const OUTSIDE: Ipv4Addr = e2e::GATEWAY;
const OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa3a, 0, 0, 0, 0, 0, 1);
const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa3a, 0, 0, 0, 0, 0, 2);

/// How long a connection may take to show up on a listener.
const ARRIVAL: Duration = Duration::from_secs(5);

/// Runs `f` on a thread inside `ns`'s network namespace, as `uid` when given (root otherwise).
/// Sockets made there stay in that namespace after the thread ends.
fn in_netns<T: Send>(ns: &Netns, uid: Option<u32>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let netns = File::open(format!("/run/netns/{}", ns.name)).expect("open netns");
                nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET).expect("setns");
                if let Some(uid) = uid {
                    become_on_this_thread(uid);
                }
                f()
            })
            .join()
            .expect("netns thread panicked")
    })
}

/// Switches the calling thread, and only it, to `uid`/`gid` with no supplementary groups.
/// The raw syscalls matter: libc's wrappers would switch every thread of the test process.
#[allow(unsafe_code)]
fn become_on_this_thread(id: u32) {
    let id = libc::c_long::from(id);
    // SAFETY: raw credential syscalls on the current thread with plain integer arguments;
    // the thread ends after the closure it runs, and no other thread is affected.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
            0
        );
        assert_eq!(
            libc::syscall(libc::SYS_setresgid, id, id, id),
            0,
            "setresgid"
        );
        assert_eq!(
            libc::syscall(libc::SYS_setresuid, id, id, id),
            0,
            "setresuid"
        );
    }
}

/// A listener in `ns` on `addr` (IPv6 sockets are IPv6-only), non-blocking for [`arrival`].
fn listen(ns: &Netns, addr: SocketAddr) -> TcpListener {
    in_netns(ns, None, || {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        if addr.is_ipv6() {
            socket.set_only_v6(true).expect("IPV6_V6ONLY");
        }
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket
            .bind(&addr.into())
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name));
        socket.listen(16).expect("listen");
        socket.set_nonblocking(true).expect("non-blocking");
        socket.into()
    })
}

/// Connects from `ns` (as `uid`, from `source` when given) to `to`; the connection is
/// established when this returns.
fn connect(ns: &Netns, uid: Option<u32>, source: Option<IpAddr>, to: SocketAddr) -> TcpStream {
    in_netns(ns, uid, || {
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, None).expect("socket");
        if let Some(source) = source {
            socket
                .bind(&SocketAddr::new(source, 0).into())
                .unwrap_or_else(|e| panic!("bind {source}: {e}"));
        }
        socket
            .connect_timeout(&to.into(), ARRIVAL)
            .unwrap_or_else(|e| panic!("connect to {to} from {} as {uid:?}: {e}", ns.name));
        socket.into()
    })
}

/// The next connection on `listener`, waiting up to [`ARRIVAL`].
fn arrival(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        match listener.accept() {
            Ok(accepted) => return Some(accepted),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Asserts nothing is queued on `listener` now (call after a connection has landed elsewhere).
fn assert_quiet(listener: &TcpListener, what: &str) {
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("{what}: unexpected connection from {peer}"),
        Err(e) => panic!("{what}: accept: {e}"),
    }
}

/// The destination a redirected connection was originally sent to.
fn original_dst(stream: &TcpStream) -> SocketAddr {
    let sock = SockRef::from(stream);
    let addr: SockAddr = match stream.local_addr().expect("local addr") {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    }
    .expect("SO_ORIGINAL_DST");
    addr.as_socket().expect("an IP address")
}

/// Runs `ama iptables ARGS` inside `ns` and returns its output, whatever the exit status.
fn ama_iptables(ns: &Netns, args: &[&str]) -> Output {
    ns.cmd(AMA)
        .arg("iptables")
        .args(args)
        .output()
        .expect("run ama iptables")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "ama iptables failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
}

/// The rules of `ns` as `program` (iptables-save or ip6tables-save) prints them.
fn saved(ns: &Netns, program: &str) -> String {
    stdout(&e2e::run(&mut ns.cmd(program)))
}

/// The flags `istioctl kube-inject` gives istio-init, with 9090 excluded outbound and 7070
/// inbound.
const SIDECAR: [&str; 18] = [
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
    "15090,15021,15020,7070",
    "-o",
    "9090",
];

#[test]
fn capture_in_a_pod_with_real_sockets_ipv4() {
    if !root_or_skip("capture_in_a_pod_with_real_sockets_ipv4") {
        return;
    }
    let mut lan = Lan::new();
    let Pod { ns: pod, ip } = lan.pod("ipt");
    let outside = &lan.bridge;
    let pod_ip = IpAddr::V4(ip);
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

    let installed = assert_ok(&ama_iptables(&pod, &SIDECAR));
    assert_eq!(installed.trim(), "installed capture rules for IPv4");

    let outbound = listen(&pod, SocketAddr::new(any, 15001));
    let inbound = listen(&pod, SocketAddr::new(any, 15006));
    let app = listen(&pod, SocketAddr::new(any, 8080));
    let app_excluded = listen(&pod, SocketAddr::new(any, 7070));
    let web = listen(outside, SocketAddr::new(OUTSIDE.into(), 80));
    let excluded = listen(outside, SocketAddr::new(OUTSIDE.into(), 9090));

    // The app (root here) calls out: the connection lands on 15001, not on the real server,
    // and SO_ORIGINAL_DST gives the address it called.
    let called = SocketAddr::new(OUTSIDE.into(), 80);
    let _client = connect(&pod, None, None, called);
    let (captured, _) = arrival(&outbound).expect("outbound connection on 15001");
    assert_eq!(original_dst(&captured), called);
    assert_quiet(
        &web,
        "the outside server must not see a captured connection",
    );

    // Any uid but the proxy's is captured...
    let _client = connect(&pod, Some(APP_UID), None, called);
    assert!(arrival(&outbound).is_some(), "uid {APP_UID} is captured");
    // ...the proxy's own traffic is not: it reaches the server itself.
    let _client = connect(&pod, Some(PROXY_UID), None, called);
    let (_, peer) = arrival(&web).expect("uid 1337 reaches the outside server");
    assert_eq!(peer.ip(), pod_ip);
    assert_quiet(&outbound, "uid 1337 must not be captured");

    // An excluded outbound port (-o 9090) bypasses the proxy.
    let _client = connect(&pod, None, None, SocketAddr::new(OUTSIDE.into(), 9090));
    assert!(
        arrival(&excluded).is_some(),
        "-o 9090 reaches the outside server"
    );
    assert_quiet(&outbound, "an excluded outbound port must not be captured");

    // Inbound: a client outside calls the pod's address; the connection lands on 15006.
    let called_pod = SocketAddr::new(pod_ip, 8080);
    let _client = connect(outside, None, None, called_pod);
    let (captured, peer) = arrival(&inbound).expect("inbound connection on 15006");
    assert_eq!(original_dst(&captured), called_pod);
    assert_eq!(peer.ip(), IpAddr::V4(OUTSIDE));
    assert_quiet(&app, "the app must not see a captured inbound connection");

    // An excluded inbound port (-d 7070) goes straight to the app.
    let _client = connect(outside, None, None, SocketAddr::new(pod_ip, 7070));
    assert!(arrival(&app_excluded).is_some(), "-d 7070 reaches the app");
    assert_quiet(&inbound, "an excluded inbound port must not be captured");

    // The proxy's inbound passthrough (uid 1337 from 127.0.0.6) reaches the app...
    let passthrough = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));
    let _client = connect(&pod, Some(PROXY_UID), Some(passthrough), called_pod);
    let (_, peer) = arrival(&app).expect("inbound passthrough reaches the app");
    assert_eq!(peer.ip(), passthrough);
    // ...while the proxy calling the pod's address from elsewhere goes through 15006.
    let _client = connect(&pod, Some(PROXY_UID), None, called_pod);
    let (captured, _) = arrival(&inbound).expect("proxy to its own pod goes through 15006");
    assert_eq!(original_dst(&captured), called_pod);

    // Cleanup removes every rule: nothing is captured any more.
    let removed = assert_ok(&ama_iptables(&pod, &["--cleanup"]));
    assert!(removed.contains("IPv4 nat/ISTIO_OUTPUT"), "{removed}");
    let rules = saved(&pod, "iptables-save");
    assert!(
        !rules.contains("ISTIO"),
        "rules left after cleanup:\n{rules}"
    );
    let _client = connect(&pod, None, None, called);
    assert!(
        arrival(&web).is_some(),
        "after cleanup the server is reached"
    );
    assert_quiet(&outbound, "nothing is captured after cleanup");
}

#[test]
fn capture_in_a_pod_with_real_sockets_ipv6() {
    if !root_or_skip("capture_in_a_pod_with_real_sockets_ipv6") {
        return;
    }
    let mut lan = Lan::new();
    let Pod { ns: pod, .. } = lan.pod("ip6");
    let outside = &lan.bridge;
    outside.sh(&format!("ip addr add {OUTSIDE_V6}/64 dev br0 nodad"));
    pod.sh(&format!("ip addr add {POD_V6}/64 dev eth0 nodad"));
    let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

    // The pod has an IPv6 address: ip6tables rules are installed too, and ::6 is added to lo.
    let installed = assert_ok(&ama_iptables(&pod, &SIDECAR));
    assert_eq!(
        installed.trim(),
        "installed capture rules for IPv4 and IPv6"
    );
    let lo = stdout(&e2e::run(
        pod.cmd("ip").args(["-6", "addr", "show", "dev", "lo"]),
    ));
    assert!(lo.contains("::6/128"), "::6 is on lo:\n{lo}");

    let outbound = listen(&pod, SocketAddr::new(any, 15001));
    let inbound = listen(&pod, SocketAddr::new(any, 15006));
    let app = listen(&pod, SocketAddr::new(any, 8080));
    let web = listen(outside, SocketAddr::new(OUTSIDE_V6.into(), 80));

    let called = SocketAddr::new(OUTSIDE_V6.into(), 80);
    let _client = connect(&pod, None, None, called);
    let (captured, _) = arrival(&outbound).expect("IPv6 outbound connection on 15001");
    assert_eq!(original_dst(&captured), called);
    assert_quiet(
        &web,
        "the outside server must not see a captured connection",
    );

    let _client = connect(&pod, Some(PROXY_UID), None, called);
    assert!(
        arrival(&web).is_some(),
        "uid 1337 reaches the server over IPv6"
    );
    assert_quiet(&outbound, "uid 1337 must not be captured");

    let called_pod = SocketAddr::new(POD_V6.into(), 8080);
    let _client = connect(outside, None, None, called_pod);
    let (captured, _) = arrival(&inbound).expect("IPv6 inbound connection on 15006");
    assert_eq!(original_dst(&captured), called_pod);

    let passthrough = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6));
    let _client = connect(&pod, Some(PROXY_UID), Some(passthrough), called_pod);
    let (_, peer) = arrival(&app).expect("IPv6 inbound passthrough reaches the app");
    assert_eq!(peer.ip(), passthrough);

    assert_ok(&ama_iptables(&pod, &["--cleanup"]));
    for program in ["iptables-save", "ip6tables-save"] {
        let rules = saved(&pod, program);
        assert!(
            !rules.contains("ISTIO"),
            "{program} after cleanup:\n{rules}"
        );
    }
}

#[test]
fn reapplying_replaces_the_rules_and_cleanup_is_idempotent() {
    if !root_or_skip("reapplying_replaces_the_rules_and_cleanup_is_idempotent") {
        return;
    }
    let ns = Netns::new("ama-ipt-re");
    let flags = [
        "-i",
        "*",
        "-b",
        "*",
        "-c",
        "eth9",
        "--drop-invalid",
        "--ipv6",
        "never",
    ];
    assert_ok(&ama_iptables(&ns, &flags));
    let first = saved(&ns, "iptables-save");
    let again = assert_ok(&ama_iptables(&ns, &flags));
    assert!(again.contains("replacing earlier rules"), "{again}");
    let second = saved(&ns, "iptables-save");
    let rules = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        rules(&first),
        rules(&second),
        "the same rules after a second run"
    );
    assert!(first.contains("-A PREROUTING -i eth9 -j RETURN"), "{first}");
    assert!(first.contains("-A ISTIO_DROP -j DROP"), "{first}");

    // Cleanup with the same flags takes the interface exclusions too; twice is fine.
    assert_ok(&ama_iptables(&ns, &["--cleanup", "-c", "eth9"]));
    let after = saved(&ns, "iptables-save");
    assert!(
        !after.contains("ISTIO") && !after.contains("eth9"),
        "{after}"
    );
    let twice = assert_ok(&ama_iptables(&ns, &["--cleanup"]));
    assert_eq!(twice.trim(), "no capture rules installed");
}

#[test]
fn errors_say_what_to_do() {
    if !root_or_skip("errors_say_what_to_do") {
        return;
    }
    let ns = Netns::new("ama-ipt-err");

    // No iptables on PATH.
    let out = ns
        .cmd("env")
        .args(["PATH=/nonexistent", AMA, "iptables", "-i", "*"])
        .output()
        .expect("run ama");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not found in PATH: install the iptables package"),
        "{stderr}"
    );

    // Not root, no CAP_NET_ADMIN.
    let out = ns
        .cmd("setpriv")
        .args([
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            AMA,
            "iptables",
            "-i",
            "*",
        ])
        .output()
        .expect("run ama");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("needs CAP_NET_ADMIN"), "{stderr}");

    // Nothing was installed by either.
    let rules = saved(&ns, "iptables-save");
    assert!(!rules.contains("ISTIO"), "{rules}");

    // A rule iptables refuses is reported with the line it names.
    let out = ama_iptables(&ns, &["-u", "no-such-user", "--ipv6", "never"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("iptables-restore rejected the rules"),
        "{stderr}"
    );
    assert!(stderr.contains("--uid-owner no-such-user"), "{stderr}");
    let rules = saved(&ns, "iptables-save");
    assert!(
        !rules.contains("ISTIO"),
        "a rejected transaction leaves nothing:\n{rules}"
    );
}

/// istio-validation's command (`--run-validation --skip-rule-apply`) in CNI mode: it fails,
/// saying why, in a pod nobody set capture up for, and passes once the rules are there, never
/// installing any itself.
#[test]
fn run_validation_checks_the_rules_and_installs_none() {
    if !root_or_skip("run_validation_checks_the_rules_and_installs_none") {
        return;
    }
    let mut lan = Lan::new();
    let Pod { ns: pod, .. } = lan.pod("val");
    let validate = [
        &SIDECAR[..],
        &[
            "--log_output_level=default:info",
            "--run-validation",
            "--skip-rule-apply",
        ],
    ]
    .concat();

    let out = ama_iptables(&pod, &validate);
    assert!(!out.status.success(), "no rules yet: {}", stdout(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no capture rules in this network namespace")
            && stderr.contains("ISTIO_OUTPUT"),
        "{stderr}"
    );
    assert!(
        !saved(&pod, "iptables-save").contains("ISTIO_"),
        "validation installed rules"
    );

    // Capture set up as the CNI plugin would (here by ama iptables itself): validation passes.
    assert_ok(&ama_iptables(&pod, &SIDECAR));
    let rules = saved(&pod, "iptables-save");
    let checked = assert_ok(&ama_iptables(&pod, &validate));
    assert_eq!(checked.trim(), "capture rules are installed");
    assert_eq!(
        saved(&pod, "iptables-save"),
        rules,
        "validation changed the rules"
    );
}
