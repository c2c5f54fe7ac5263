//! `ama iptables --dry-run` through the real binary: istio-iptables' flags, short and long, and
//! their environment variables, give the rules Istio installs. Needs no privilege.

use std::process::{Command, Output};

const AMA: &str = env!("CARGO_BIN_EXE_ama");

/// Runs `ama iptables --dry-run --ipv6 never ARGS` with only `env` in the environment.
fn dry_run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(AMA)
        .args(["iptables", "--dry-run", "--ipv6", "never"])
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run ama")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "ama iptables failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn err(out: Output) -> String {
    assert!(!out.status.success(), "ama iptables should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The istio-init command of the seed's injected pod (`-x ""` included).
const SEED: [&str; 18] = [
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
    "15090,15020",
    "-o",
    "",
];

#[test]
fn the_seed_istio_init_command() {
    let expected = "\
# iptables-restore --noflush
*nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";
    assert_eq!(ok(dry_run(&SEED, &[])), expected);
}

#[test]
fn long_flags_mean_the_same_as_short_ones() {
    let short = ok(dry_run(
        &[
            "-p",
            "15101",
            "-z",
            "15106",
            "-e",
            "15108",
            "-u",
            "3,4",
            "-g",
            "1,2",
            "-m",
            "REDIRECT",
            "-b",
            "*",
            "-d",
            "22",
            "-c",
            "eth9",
            "-i",
            "10.0.0.0/8",
            "-x",
            "10.1.0.0/16",
            "-q",
            "5000",
            "-o",
            "9090",
            "-k",
            "vm0",
        ],
        &[],
    ));
    let long = ok(dry_run(
        &[
            "--envoy-port=15101",
            "--inbound-capture-port=15106",
            "--inbound-tunnel-port=15108",
            "--proxy-uid=3,4",
            "--proxy-gid=1,2",
            "--istio-inbound-interception-mode=REDIRECT",
            "--istio-inbound-ports=*",
            "--istio-local-exclude-ports=22",
            "--istio-exclude-interfaces=eth9",
            "--istio-service-cidr=10.0.0.0/8",
            "--istio-service-exclude-cidr=10.1.0.0/16",
            "--istio-outbound-ports=5000",
            "--istio-local-outbound-ports-exclude=9090",
            "--kube-virt-interfaces=vm0",
        ],
        &[],
    ));
    assert_eq!(short, long);
    for line in [
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15101",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15106",
        "-A ISTIO_INBOUND -p tcp --dport 15108 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 4 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --gid-owner 2 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN",
        "-A PREROUTING -i eth9 -j RETURN",
        "-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp --dport 5000 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -p udp --dport 9090 -j RETURN",
        "-I PREROUTING 1 -i vm0 -d 10.0.0.0/8 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
    ] {
        assert!(
            short.lines().any(|l| l == line),
            "missing {line:?} in\n{short}"
        );
    }
}

#[test]
fn environment_variables_are_defaults() {
    let out = ok(dry_run(
        &["-z", "15206"],
        &[
            ("ENVOY_PORT", "15101"),
            ("INBOUND_CAPTURE_PORT", "15106"),
            ("ISTIO_INBOUND_PORTS", "8080"),
            ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888"),
        ],
    ));
    assert!(out.contains("--to-ports 15101\n"), "{out}");
    // A flag beats its variable.
    assert!(out.contains("--to-ports 15206\n"), "{out}");
    assert!(out.contains("-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT\n"));
    assert!(out.contains("-A ISTIO_OUTPUT -m owner --gid-owner 888 -j RETURN\n"));
}

#[test]
fn ipv6_rules_when_asked_or_when_a_network_is_ipv6() {
    let v6_network = ok(dry_run(&["-x", "fd00::/8", "--ipv6", "auto"], &[]));
    assert!(v6_network.contains("# ip6tables-restore --noflush\n"));
    assert!(v6_network.contains("-A ISTIO_OUTPUT -d fd00::/8 -j RETURN\n"));
    let always = ok(dry_run(&["--ipv6", "always"], &[]));
    assert!(always.contains("-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN\n"));
    let never = ok(dry_run(&[], &[]));
    assert!(!never.contains("ip6tables"));
}

#[test]
fn capture_all_dns() {
    let out = ok(dry_run(&["--redirect-dns", "--capture-all-dns"], &[]));
    assert!(out.contains("-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port 15053\n"));
    assert!(out.contains("*raw\n"));
}

#[test]
fn bad_values_are_named() {
    assert!(err(dry_run(&["-p", "0"], &[])).contains("\"0\""));
    let stderr = err(dry_run(&["-i", "10.0.0.0/8,nonsense"], &[]));
    assert!(stderr.contains("\"nonsense\": not a CIDR"), "{stderr}");
    assert!(err(dry_run(&["-x", "*"], &[])).contains("wildcard is not allowed"));
    let stderr = err(dry_run(&["-m", "TPROXY"], &[]));
    assert!(stderr.contains("TPROXY is not supported yet"), "{stderr}");
    let stderr = err(dry_run(
        &[],
        &[("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.1/32")],
    ));
    assert!(
        stderr.contains("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"),
        "{stderr}"
    );
}

#[test]
fn cleanup_and_dry_run_do_not_mix() {
    let stderr = err(dry_run(&["--cleanup"], &[]));
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

/// What injection writes after the capture flags: the agent's log levels, accepted (they change
/// nothing in the rules).
#[test]
fn the_injected_log_level_flag_is_accepted() {
    let plain = ok(dry_run(&SEED, &[]));
    let with_level = ok(dry_run(
        &[&SEED[..], &["--log_output_level=default:info"]].concat(),
        &[],
    ));
    assert_eq!(plain, with_level);
}
