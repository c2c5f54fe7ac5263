//! Golden tests: the restore text for istio-iptables' flag combinations, checked against the rule
//! sets of Istio's own goldens (`tools/istio-iptables/pkg/capture/testdata`).

use super::*;
use crate::config::{Config, DnsCapture, InterceptionMode, OwnerGroups, parse_ipv4_loopback};

/// The chains and rules every configuration starts with.
const HEAD: &str = "\
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
";

/// The proxy's own traffic (uid and gid 1337) and the passthrough source, IPv4.
const OWNER_1337: &str = "\
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
";

fn config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    edit(&mut config);
    config
}

fn v4(config: &Config) -> String {
    rules(config, Family::V4)
        .unwrap()
        .restore_script()
        .to_string()
}

fn v6(config: &Config) -> String {
    rules(config, Family::V6)
        .unwrap()
        .restore_script()
        .to_string()
}

fn nat(body: &str) -> String {
    format!("*nat\n{body}COMMIT\n")
}

#[test]
fn empty() {
    let expected = nat(&format!(
        "{HEAD}-A OUTPUT -j ISTIO_OUTPUT\n{OWNER_1337}-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
    ));
    assert_eq!(v4(&Config::default()), expected);
}

/// What `istioctl kube-inject` gives istio-init: `-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*'
/// -x "" -b '*' -d 15090,15021,15020`.
#[test]
fn injected_sidecar_defaults() {
    let config = config(|c| {
        c.inbound_ports = "*".parse().unwrap();
        c.inbound_ports_exclude = "15090,15021,15020".parse().unwrap();
        c.outbound_ranges = "*".parse().unwrap();
        c.outbound_ranges_exclude = "".parse().unwrap();
    });
    let expected = "\
*nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN
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
    assert_eq!(v4(&config), expected);
    // No IPv6 address, no IPv6 network: no ip6tables script.
    assert_eq!(render(&config).unwrap().ipv6, None);
}

#[test]
fn ports_and_interception_mode_flags() {
    let config = config(|c| {
        c.proxy_port = "15101".parse().unwrap();
        c.inbound_capture_port = "15106".parse().unwrap();
        c.inbound_tunnel_port = "15108".parse().unwrap();
        c.inbound_interception_mode = InterceptionMode::Redirect;
    });
    let text = v4(&config);
    assert!(text.contains("-A ISTIO_INBOUND -p tcp --dport 15108 -j RETURN\n"));
    assert!(text.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15101\n"));
    assert!(text.contains("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15106\n"));
    assert!(text.contains("-p tcp ! --dport 15108 -m owner --uid-owner 1337"));
}

#[test]
fn inbound_ports_include() {
    let config = config(|c| c.inbound_ports = "32000,31000".parse().unwrap());
    let expected = nat(&format!(
        "{HEAD}-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 32000 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp --dport 31000 -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
{OWNER_1337}-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
    ));
    assert_eq!(v4(&config), expected);
}

#[test]
fn inbound_exclusions_apply_only_to_the_wildcard() {
    let listed = config(|c| {
        c.inbound_ports = "4000".parse().unwrap();
        c.inbound_ports_exclude = "6000,7000,".parse().unwrap();
    });
    assert!(!v4(&listed).contains("6000"));

    let single = config(|c| {
        c.inbound_ports = "*".parse().unwrap();
        c.inbound_ports_exclude = "22".parse().unwrap();
    });
    assert!(v4(&single).contains(
        "-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN\n-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n"
    ));
}

#[test]
fn long_port_lists_are_split_for_multiport() {
    let ports: Vec<String> = (1..=17).map(|p| (9000 + p).to_string()).collect();
    let config = config(|c| {
        c.inbound_ports = "*".parse().unwrap();
        c.inbound_ports_exclude = ports.join(",").parse().unwrap();
    });
    let text = v4(&config);
    assert!(text.contains(&format!(
        "-A ISTIO_INBOUND -p tcp -m multiport --dports {} -j RETURN\n",
        ports[..15].join(",")
    )));
    assert!(text.contains("-A ISTIO_INBOUND -p tcp -m multiport --dports 9016,9017 -j RETURN\n"));
}

#[test]
fn outbound_ports_exclude() {
    let config = config(|c| c.outbound_ports_exclude = "22,80,443".parse().unwrap());
    let expected = nat(&format!(
        "{HEAD}-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp -m multiport --dports 22,80,443 -j RETURN
-A ISTIO_OUTPUT -p udp -m multiport --dports 22,80,443 -j RETURN
{OWNER_1337}-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
    ));
    assert_eq!(v4(&config), expected);

    let single = config_with_outbound_exclude("22");
    assert!(single.contains(
        "-A ISTIO_OUTPUT -p tcp --dport 22 -j RETURN\n-A ISTIO_OUTPUT -p udp --dport 22 -j RETURN\n"
    ));
}

fn config_with_outbound_exclude(ports: &str) -> String {
    v4(&config(|c| {
        c.outbound_ports_exclude = ports.parse().unwrap()
    }))
}

#[test]
fn outbound_ports_include() {
    let config = config(|c| c.outbound_ports = "32000,31000".parse().unwrap());
    assert!(v4(&config).ends_with(
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -p tcp --dport 32000 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -p tcp --dport 31000 -j ISTIO_REDIRECT
COMMIT
"
    ));
}

#[test]
fn outbound_ranges_include_and_exclude() {
    let config = config(|c| {
        c.outbound_ranges = "9.9.0.0/16".parse().unwrap();
        c.outbound_ranges_exclude = "1.1.0.0/16".parse().unwrap();
    });
    assert!(v4(&config).ends_with(
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 1.1.0.0/16 -j RETURN
-A ISTIO_OUTPUT -d 9.9.0.0/16 -j ISTIO_REDIRECT
COMMIT
"
    ));
}

#[test]
fn kube_virt_interfaces() {
    let config = config(|c| {
        c.kube_virt_interfaces = "eth1,eth2".parse().unwrap();
        c.outbound_ranges = "*".parse().unwrap();
    });
    let expected = nat(&format!(
        "-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-I PREROUTING 1 -i eth1 -j RETURN
-I PREROUTING 1 -i eth2 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A OUTPUT -j ISTIO_OUTPUT
{OWNER_1337}-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-I PREROUTING 1 -i eth1 -j ISTIO_REDIRECT
-I PREROUTING 1 -i eth2 -j ISTIO_REDIRECT
"
    ));
    assert_eq!(v4(&config), expected);

    let ipnets = config_kube_virt_ipnets();
    assert!(ipnets.ends_with(
        "-I PREROUTING 1 -i eth1 -d 10.0.0.0/8 -j ISTIO_REDIRECT
-I PREROUTING 1 -i eth2 -d 10.0.0.0/8 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT
COMMIT
"
    ));
}

fn config_kube_virt_ipnets() -> String {
    v4(&config(|c| {
        c.kube_virt_interfaces = "eth1,eth2".parse().unwrap();
        c.outbound_ranges = "10.0.0.0/8".parse().unwrap();
    }))
}

#[test]
fn exclude_interfaces() {
    let config = config(|c| c.exclude_interfaces = "not-istio-nic".parse().unwrap());
    let text = v4(&config);
    assert!(text.contains(
        "-N ISTIO_OUTPUT
-A PREROUTING -i not-istio-nic -j RETURN
-A OUTPUT -o not-istio-nic -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
"
    ));
}

#[test]
fn uid_and_gid_lists() {
    let config = config(|c| {
        c.proxy_uids = "3,4".parse().unwrap();
        c.proxy_gids = "1,2".parse().unwrap();
    });
    let text = v4(&config);
    let owner_rules: Vec<&str> = text.lines().filter(|l| l.contains("-owner")).collect();
    assert_eq!(
        owner_rules,
        [
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 3 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --uid-owner 3 -j RETURN",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 4 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 4 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --uid-owner 4 -j RETURN",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --gid-owner 1 -j RETURN",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 2 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 2 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --gid-owner 2 -j RETURN",
        ]
    );
}

#[test]
fn a_captured_loopback_range_keeps_app_to_app_lo_traffic_captured() {
    let config = config(|c| c.outbound_ranges = "127.1.2.3/32".parse().unwrap());
    let text = v4(&config);
    assert!(!text.contains("-o lo -m owner !"));
    assert!(text.ends_with(
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n-A ISTIO_OUTPUT -d 127.1.2.3/32 -j ISTIO_REDIRECT\nCOMMIT\n"
    ));
}

#[test]
fn owner_groups() {
    let only = config(|c| c.owner_groups = OwnerGroups::from_istio("java,202", "").unwrap());
    assert!(v4(&only).contains(
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner ! --gid-owner java -m owner ! --gid-owner 202 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
"
    ));
    let except = config(|c| c.owner_groups = OwnerGroups::from_istio("*", "888,ftp").unwrap());
    assert!(v4(&except).contains(
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 888 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner ftp -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
"
    ));
}

#[test]
fn dns_to_the_resolv_conf_servers() {
    let config = config(|c| {
        c.dns = DnsCapture::Servers(vec!["127.0.0.53".parse().unwrap()]);
        c.proxy_uids = "3,4".parse().unwrap();
        c.proxy_gids = "1,2".parse().unwrap();
    });
    let expected = "\
*nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-N ISTIO_OUTPUT_DNS
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 3 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 3 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 4 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 4 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 4 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --gid-owner 1 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 2 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --gid-owner 2 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 2 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -d 127.0.0.53/32 -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 127.0.0.53/32 -j REDIRECT --to-port 15053
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
*raw
-N ISTIO_OUTPUT_DNS
-N ISTIO_INBOUND
-A OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 3 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 3 -j CT --zone 2
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 4 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 4 -j CT --zone 2
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 1 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 1 -j CT --zone 2
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 2 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 2 -j CT --zone 2
-A PREROUTING -j ISTIO_INBOUND
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 127.0.0.53/32 -j CT --zone 2
-A ISTIO_INBOUND -p udp --sport 53 -s 127.0.0.53/32 -j CT --zone 1
COMMIT
";
    assert_eq!(v4(&config), expected);
    // No IPv6 server: ip6tables gets the conntrack zones but no nat jump to the DNS chain.
    let text = v6(&config);
    assert!(!text.contains("-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS"));
    assert!(!text.contains("-A PREROUTING -j ISTIO_INBOUND"));
}

#[test]
fn dns_capture_all() {
    let config = config(|c| c.dns = DnsCapture::All);
    let text = v4(&config);
    assert!(text.contains(
        "-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port 15053
"
    ));
    assert!(text.contains(
        "-A PREROUTING -j ISTIO_INBOUND
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j CT --zone 2
-A ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1
COMMIT
"
    ));
}

#[test]
fn drop_invalid() {
    let config = config(|c| c.drop_invalid = true);
    assert!(v4(&config).starts_with(
        "*mangle
-N ISTIO_DROP
-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP
-A ISTIO_DROP -j DROP
COMMIT
*nat
"
    ));
}

#[test]
fn ipv4_loopback_cidr() {
    let config = config(|c| c.ipv4_loopback = parse_ipv4_loopback("127.0.0.1/8").unwrap());
    let text = v4(&config);
    assert!(text.contains("-o lo ! -d 127.0.0.1/8 -p tcp"));
    assert!(text.contains("-A ISTIO_OUTPUT -d 127.0.0.1/8 -j RETURN\n"));
}

#[test]
fn ipv6_rules_use_ipv6_addresses_and_networks() {
    let config = config(|c| {
        c.ipv6 = true;
        c.inbound_ports = "4000,5000".parse().unwrap();
        c.inbound_ports_exclude = "6000,7000,".parse().unwrap();
        c.kube_virt_interfaces = "eth0,eth1".parse().unwrap();
        c.outbound_ranges = "2001:db8::/32".parse().unwrap();
        c.outbound_ranges_exclude = "2001:db8::/32".parse().unwrap();
    });
    let rendered = render(&config).unwrap();
    let v6_text = rendered.ipv6.as_ref().unwrap().to_string();
    assert!(v6_text.ends_with(
        "-A ISTIO_OUTPUT -d ::1/128 -j RETURN
-A ISTIO_OUTPUT -d 2001:db8::/32 -j RETURN
-I PREROUTING 1 -i eth0 -d 2001:db8::/32 -j ISTIO_REDIRECT
-I PREROUTING 1 -i eth1 -d 2001:db8::/32 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -d 2001:db8::/32 -j ISTIO_REDIRECT
COMMIT
"
    ));
    assert!(v6_text.contains("-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN\n"));
    assert!(
        v6_text.contains("-o lo ! -d ::1/128 -p tcp ! --dport 15008 -m owner --uid-owner 1337")
    );
    // IPv4 gets no IPv6 network.
    let v4_text = rendered.ipv4.to_string();
    assert!(!v4_text.contains("2001:db8"));
    assert!(v4_text.ends_with("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\nCOMMIT\n"));
}

#[test]
fn dry_run_text_names_each_program() {
    let config = config(|c| c.ipv6 = true);
    let text = render(&config).unwrap().to_string();
    assert!(text.starts_with("# iptables-restore --noflush\n*nat\n"));
    assert!(text.contains("COMMIT\n# ip6tables-restore --noflush\n*nat\n"));
}

#[test]
fn tproxy_is_refused_clearly() {
    let config = config(|c| c.inbound_interception_mode = InterceptionMode::Tproxy);
    let err = render(&config).unwrap_err();
    assert!(
        err.to_string().contains("TPROXY is not supported yet"),
        "{err}"
    );
}
