//! The test LAN itself: pods reach each other through the bridge, and the host has no route to
//! them, so no test traffic can leave the machine.

use std::process::Command;

use e2e::{Lan, Proc, Scratch, root_or_skip};

#[test]
fn pods_reach_each_other_and_the_host_does_not() {
    if !root_or_skip("pods_reach_each_other_and_the_host_does_not") {
        return;
    }
    let scratch = Scratch::new("lan");
    let mut lan = Lan::new();
    let a = lan.pod("a");
    let b = lan.pod("b");

    let mut server = a.ns.cmd("python3");
    server.args(["-m", "http.server", "8080", "--bind", "0.0.0.0"]);
    let _server = Proc::spawn("server", scratch.path(), server);
    b.ns.wait_port(&a.ip.to_string(), 8080);

    // The host holds neither the bridge nor any address of the LAN: it has no route to the pods.
    let host_addrs = e2e::run(Command::new("ip").args(["-o", "addr", "show"]));
    let host_addrs = String::from_utf8_lossy(&host_addrs.stdout);
    assert!(
        !host_addrs.contains("10.244.0."),
        "the host must have no address on the test LAN:\n{host_addrs}"
    );
    assert!(
        !b.ns.connects("127.0.0.1", 8080),
        "a pod's loopback is its own"
    );
}
