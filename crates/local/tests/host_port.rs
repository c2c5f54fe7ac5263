//! The host-port forwarder across a real network namespace: a namespace this test makes (and
//! removes), a real server process listening inside it on the namespace's own loopback, the
//! forwarder reaching it from the host side; a client closed at once while there is no ready
//! upstream or the upstream refuses; nothing listening on the host port once the forwarder is
//! dropped. Needs root (`ip netns`); skipped otherwise.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use local::host_port::{Forwarder, PortSpec, StartError, Upstreams};

/// The namespace, removed on drop (with whatever runs in it).
struct TestNetns(String);

impl TestNetns {
    fn create() -> TestNetns {
        let name = format!("ama-test-hostport-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip");
        assert!(ok.success(), "ip netns add {name}");
        let ok = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .expect("run ip");
        assert!(ok.success(), "lo up");
        TestNetns(name)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const UPSTREAM_PORT: u16 = 18080;

fn python() -> std::path::PathBuf {
    e2e::venv_tool("host_port", "python3")
}

/// A line server in the namespace: answers each connection with what it read, upper-cased.
fn start_server(netns: &str) -> Server {
    let script = format!(
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {UPSTREAM_PORT})); s.listen(8)\n\
         while True:\n    c, _ = s.accept(); d = c.recv(4096); c.sendall(d.upper()); c.close()\n"
    );
    let child = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(python())
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .expect("start the server");
    Server(child)
}

/// Sends `line` through the forwarder and returns what came back; "" when the connection was
/// closed without an answer. Bounded by read timeouts.
fn exchange(port: u16, line: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the host port accepts");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A closed connection may refuse the write: that is a closed connection too.
    let _ = s.write_all(line.as_bytes());
    let mut out = String::new();
    match s.read_to_string(&mut out) {
        Ok(_) => out,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => out,
        Err(e) => panic!("reading from 127.0.0.1:{port}: {e}"),
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn forwards_from_the_host_into_a_namespace_and_closes_when_not_ready() {
    if !e2e::root_or_skip("forwards_from_the_host_into_a_namespace_and_closes_when_not_ready") {
        return;
    }
    let netns = TestNetns::create();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let forwarder = runtime
        .block_on(Forwarder::start(
            &netns.0,
            &[PortSpec {
                host: 0,
                service: 80,
            }],
        ))
        .expect("start the forwarder");
    let port = forwarder.host_port(80).expect("bound");
    assert_ne!(port, 0);
    assert_eq!(forwarder.host_port(443), None);
    // The port is taken now: a second forwarder says which.
    match runtime.block_on(Forwarder::start(
        &netns.0,
        &[PortSpec {
            host: port,
            service: 80,
        }],
    )) {
        Err(StartError::Bind { port: p, .. }) => assert_eq!(p, port),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("127.0.0.1:{port} bound twice"),
    }

    // No ready gateway pod: the connection is closed at once, without an answer.
    let started = Instant::now();
    assert_eq!(exchange(port, "hello\n"), "");
    assert!(started.elapsed() < Duration::from_secs(4), "closed at once");

    // The upstream exists only inside the namespace (its loopback): reachable through the
    // forwarder alone.
    let upstream = SocketAddrV4::new(Ipv4Addr::LOCALHOST, UPSTREAM_PORT);
    forwarder.set_upstreams(Upstreams::from([(80, upstream)]));
    // Nothing listens there yet: refused, so the client is closed at once.
    assert_eq!(exchange(port, "hello\n"), "");
    let server = start_server(&netns.0);
    let answer = wait_for("the server in the namespace", || {
        let a = exchange(port, "hello through the namespace\n");
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(answer, "HELLO THROUGH THE NAMESPACE\n");
    // The host itself has no such listener: the bytes went through the namespace.
    assert!(
        TcpStream::connect(("127.0.0.1", UPSTREAM_PORT)).is_err(),
        "something on the host listens on {UPSTREAM_PORT}: the test proves nothing"
    );

    // The pod is no longer ready: closed at once again.
    forwarder.set_upstreams(Upstreams::new());
    assert_eq!(exchange(port, "hello\n"), "");
    drop(server);

    // Dropped (ama down): the host port closes.
    drop(forwarder);
    wait_for("the host port to close", || {
        TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    });
    drop(runtime);
}
