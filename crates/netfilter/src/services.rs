//! A stand-in for kube-proxy's iptables mode, for the network namespace of a pod without a
//! sidecar: connections to a Service's cluster IP and port are DNATed to one of its ready
//! endpoints, chosen at random with equal weight, and refused (ICMP port unreachable) while it
//! has none. A pod with a sidecar needs none of this: its capture rules send Service traffic to
//! the proxy, which resolves the VIP itself.
//!
//! The rules live in two chains of our own, [`SERVICES_CHAIN`] in `nat` (the DNATs) and in
//! `filter` (the rejections), each jumped to from `OUTPUT`. A sync is one
//! `iptables-restore --noflush` transaction that declares both chains (which flushes them) and
//! writes every rule again, so a pod never sees half a rule set; the jumps from `OUTPUT` are
//! added only when `iptables-save` does not show them yet. The chains' rules are kube-proxy's:
//!
//! ```text
//! -A AMA-SERVICES -d 10.96.0.3/32 -p tcp -m tcp --dport 8000 -m statistic --mode random
//!     --probability 0.5000000000 -j DNAT --to-destination 10.244.0.5:8080
//! -A AMA-SERVICES -d 10.96.0.3/32 -p tcp -m tcp --dport 8000 -j DNAT --to-destination 10.244.0.6:8080
//! ```
//!
//! The n-th of n endpoints is taken with probability 1/(n-i) of what is left, so each gets 1/n.
//! Replies come back to the same namespace, whose conntrack undoes the DNAT.
//!
//! [`script`] is pure (the tests and a dry run see exactly what is loaded); [`sync`] loads it
//! into the network namespace of the calling thread.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::error::Error;
use crate::restore;
use crate::rules::{Family, RestoreScript, Table};

/// Our chain in `nat` and in `filter`.
pub const SERVICES_CHAIN: &str = "AMA-SERVICES";

/// A Service port's transport protocol (Kubernetes' `protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// `TCP` (Kubernetes' default).
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP`.
    Sctp,
}

impl Protocol {
    /// The protocol of a Service port's `protocol` field (absent: TCP); None for another value.
    pub fn from_kubernetes(name: Option<&str>) -> Option<Protocol> {
        match name {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One port of one Service's cluster IP, with the endpoints that serve it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name:port-name`, as kube-proxy comments its rules.
    pub name: String,
    /// The cluster IP.
    pub vip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// The ready endpoints (pod address and target port), in a stable order.
    pub endpoints: Vec<SocketAddrV4>,
}

/// The rules for `ports`, as one iptables-restore transaction (without the jumps from
/// `OUTPUT`, which [`sync`] adds where they are missing).
pub fn script(ports: &[ServicePort]) -> RestoreScript {
    let mut script = RestoreScript::default();
    for table in [Table::Filter, Table::Nat] {
        script.push(table, format!(":{SERVICES_CHAIN} - [0:0]"));
    }
    for p in ports {
        let matches = |comment: &str| {
            format!(
                "-A {SERVICES_CHAIN} -d {}/32 -p {proto} -m {proto} --dport {} -m comment --comment {}",
                p.vip,
                p.port,
                Quoted(comment),
                proto = p.protocol.as_str()
            )
        };
        if p.endpoints.is_empty() {
            // kube-proxy's answer for a Service without endpoints: refused at once, not a
            // connection that hangs until it times out.
            let matches = matches(&format!("{} has no endpoints", p.name));
            script.push(
                Table::Filter,
                format!("{matches} -j REJECT --reject-with icmp-port-unreachable"),
            );
            continue;
        }
        let matches = matches(&p.name);
        let n = p.endpoints.len();
        for (i, endpoint) in p.endpoints.iter().enumerate() {
            let pick = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            script.push(
                Table::Nat,
                format!("{matches}{pick} -j DNAT --to-destination {endpoint}"),
            );
        }
    }
    script
}

/// The jumps into our chains that `OUTPUT` must hold, as iptables-save prints them.
fn hooks() -> [(Table, String); 2] {
    [
        (Table::Nat, format!("-A OUTPUT -j {SERVICES_CHAIN}")),
        (Table::Filter, format!("-A OUTPUT -j {SERVICES_CHAIN}")),
    ]
}

/// Loads `script` ([`script`]'s output) into the network namespace of the calling thread:
/// one `iptables-restore --noflush` that replaces the chains' rules, plus the jumps from
/// `OUTPUT` the first time.
pub fn sync(script: &RestoreScript) -> Result<(), Error> {
    let saved = restore::save(Family::V4)?;
    let mut full = script.clone();
    for (table, hook) in hooks() {
        if !has_rule(&saved, table, &hook) {
            full.push(table, hook);
        }
    }
    restore::restore(Family::V4, &full)
}

/// Whether iptables-save's `saved` output holds `rule` in `table`.
fn has_rule(saved: &str, table: Table, rule: &str) -> bool {
    let mut current = None;
    for line in saved.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            current = Table::from_name(name.trim());
        } else if current == Some(table) && line.split_whitespace().eq(rule.split_whitespace()) {
            return true;
        }
    }
    false
}

/// A comment's text in double quotes, as iptables-save prints it (quotes and backslashes
/// escaped, so a name cannot end the comment).
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, vip: [u8; 4], port: u16, endpoints: &[([u8; 4], u16)]) -> ServicePort {
        ServicePort {
            name: name.into(),
            vip: vip.into(),
            port,
            protocol: Protocol::Tcp,
            endpoints: endpoints
                .iter()
                .map(|(ip, p)| SocketAddrV4::new((*ip).into(), *p))
                .collect(),
        }
    }

    #[test]
    fn endpoints_are_picked_with_equal_weight_and_the_last_one_unconditionally() {
        let ports = [port(
            "foo/httpbin:http",
            [10, 96, 0, 3],
            8000,
            &[
                ([10, 244, 0, 5], 8080),
                ([10, 244, 0, 6], 8080),
                ([10, 244, 0, 7], 8080),
            ],
        )];
        let text = script(&ports).to_string();
        let m = "-A AMA-SERVICES -d 10.96.0.3/32 -p tcp -m tcp --dport 8000 -m comment --comment \"foo/httpbin:http\"";
        assert_eq!(
            text,
            format!(
                "*filter\n\
                 :AMA-SERVICES - [0:0]\n\
                 COMMIT\n\
                 *nat\n\
                 :AMA-SERVICES - [0:0]\n\
                 {m} -m statistic --mode random --probability 0.3333333333 -j DNAT --to-destination 10.244.0.5:8080\n\
                 {m} -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.244.0.6:8080\n\
                 {m} -j DNAT --to-destination 10.244.0.7:8080\n\
                 COMMIT\n"
            )
        );
    }

    #[test]
    fn a_service_without_endpoints_is_refused_and_udp_is_matched_as_udp() {
        let mut dns = port(
            "kube-system/dns:dns",
            [10, 96, 0, 10],
            53,
            &[([10, 244, 0, 9], 53)],
        );
        dns.protocol = Protocol::Udp;
        let ports = [port("bar/empty:", [10, 96, 0, 4], 80, &[]), dns];
        let s = script(&ports);
        assert_eq!(
            s.lines(Table::Filter),
            [
                ":AMA-SERVICES - [0:0]",
                "-A AMA-SERVICES -d 10.96.0.4/32 -p tcp -m tcp --dport 80 -m comment --comment \
                 \"bar/empty: has no endpoints\" -j REJECT --reject-with icmp-port-unreachable"
            ]
        );
        assert_eq!(
            s.lines(Table::Nat),
            [
                ":AMA-SERVICES - [0:0]",
                "-A AMA-SERVICES -d 10.96.0.10/32 -p udp -m udp --dport 53 -m comment --comment \
                 \"kube-system/dns:dns\" -j DNAT --to-destination 10.244.0.9:53"
            ]
        );
    }

    #[test]
    fn no_services_still_flushes_the_chains() {
        assert_eq!(
            script(&[]).to_string(),
            "*filter\n:AMA-SERVICES - [0:0]\nCOMMIT\n*nat\n:AMA-SERVICES - [0:0]\nCOMMIT\n"
        );
    }

    #[test]
    fn hooks_are_found_in_their_table_only() {
        let saved = "# Generated by iptables-save\n*filter\n:OUTPUT ACCEPT [0:0]\n\
                     -A OUTPUT -j AMA-SERVICES\nCOMMIT\n*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        let [nat, filter] = hooks();
        assert!(has_rule(saved, filter.0, &filter.1));
        assert!(!has_rule(saved, nat.0, &nat.1));
    }

    #[test]
    fn comments_cannot_be_closed_by_a_name() {
        assert_eq!(Quoted("a\"b\\c").to_string(), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn protocols_as_kubernetes_spells_them() {
        assert_eq!(Protocol::from_kubernetes(None), Some(Protocol::Tcp));
        assert_eq!(Protocol::from_kubernetes(Some("UDP")), Some(Protocol::Udp));
        assert_eq!(Protocol::from_kubernetes(Some("udp")), None);
    }
}
