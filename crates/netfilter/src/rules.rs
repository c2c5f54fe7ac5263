//! The capture rules of a [`Config`], in the order istio-iptables installs them, and their
//! iptables-restore text. Pure: nothing here reads the host or runs a program.
//!
//! The rule set is Istio's (`tools/istio-iptables/pkg/capture/run.go`), built once per address
//! family: the same chains and rules, with the family's loopback range, inbound passthrough source
//! (`127.0.0.6` / `::6`) and the networks and DNS servers of that family.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::{
    Cidr, Config, DnsCapture, INBOUND_PASSTHROUGH_V4, INBOUND_PASSTHROUGH_V6, InboundPorts,
    OutboundRanges, OwnerGroups, Port,
};
use crate::error::Error;

/// The chains Istio creates. Every chain whose name starts with [`CHAIN_PREFIX`] is ours.
pub mod chain {
    /// Inbound TCP, jumped to from `PREROUTING`.
    pub const INBOUND: &str = "ISTIO_INBOUND";
    /// Redirects to the outbound listener (15001).
    pub const REDIRECT: &str = "ISTIO_REDIRECT";
    /// Redirects to the inbound listener (15006).
    pub const IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
    /// Outbound traffic, jumped to from `OUTPUT`.
    pub const OUTPUT: &str = "ISTIO_OUTPUT";
    /// DNS capture, in nat and raw.
    pub const OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
    /// Drops packets conntrack finds invalid (mangle).
    pub const DROP: &str = "ISTIO_DROP";
}

/// The prefix of every chain Ama and Istio create; cleanup removes all such chains.
pub const CHAIN_PREFIX: &str = "ISTIO_";

const PREROUTING: &str = "PREROUTING";
const OUTPUT: &str = "OUTPUT";

/// At most this many ports fit in one `-m multiport` match.
const MULTIPORT_MAX: usize = 15;

/// An address family: which of iptables and ip6tables a rule set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4, `iptables-restore`.
    V4,
    /// IPv6, `ip6tables-restore`.
    V6,
}

impl Family {
    /// The program that loads rules of this family.
    pub fn restore_program(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// The program that prints the rules of this family.
    pub fn save_program(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn has(self, cidr: &Cidr) -> bool {
        cidr.is_ipv6() == (self == Family::V6)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A netfilter table. The order is the one tables appear in restore text (alphabetical, as Istio).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `filter`.
    Filter,
    /// `mangle`.
    Mangle,
    /// `nat`.
    Nat,
    /// `raw`.
    Raw,
}

impl Table {
    /// Every table the capture rules may touch.
    pub const ALL: [Table; 4] = [Table::Filter, Table::Mangle, Table::Nat, Table::Raw];

    /// The table's name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }

    /// The table named `name`, if it is one of [`Table::ALL`].
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// True for a chain the kernel provides, which rules hook into and cleanup never deletes.
pub fn is_builtin_chain(chain: &str) -> bool {
    matches!(
        chain,
        "PREROUTING" | "INPUT" | "FORWARD" | "OUTPUT" | "POSTROUTING"
    )
}

/// One rule: appended to its chain, or inserted at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The table of the chain.
    pub table: Table,
    /// The chain the rule goes in.
    pub chain: &'static str,
    /// `Some(n)` inserts at position n (`-I CHAIN n`), None appends (`-A CHAIN`).
    pub insert_at: Option<u32>,
    /// Matches and target, e.g. `-p tcp -j ISTIO_INBOUND`.
    pub spec: Vec<String>,
}

impl Rule {
    /// The target chain when the rule's last words are `-j CHAIN`.
    pub fn jump_target(&self) -> Option<&str> {
        match self.spec.as_slice() {
            [.., j, target] if j == "-j" => Some(target),
            _ => None,
        }
    }

    /// The rule as iptables-save prints an appended rule: `-A CHAIN spec`.
    pub fn saved_form(&self) -> String {
        format!("-A {} {}", self.chain, self.spec.join(" "))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.insert_at {
            Some(n) => write!(f, "-I {} {n} {}", self.chain, self.spec.join(" ")),
            None => write!(f, "-A {} {}", self.chain, self.spec.join(" ")),
        }
    }
}

/// The rules of one family, in installation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// Which family the rules are for.
    pub family: Family,
    /// The rules.
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// The rules as one iptables-restore transaction: per table, the chains to create, then the
    /// rules, then `COMMIT`.
    pub fn restore_script(&self) -> RestoreScript {
        let mut script = RestoreScript::default();
        // The chains rules go in, then those that are only jumped to: all must exist.
        let own = self.rules.iter().map(|rule| (rule.table, rule.chain));
        let targets = self
            .rules
            .iter()
            .filter_map(|rule| Some((rule.table, rule.jump_target()?)));
        let mut declared: Vec<(Table, &str)> = Vec::new();
        for (table, chain) in own.chain(targets) {
            if chain.starts_with(CHAIN_PREFIX) && !declared.contains(&(table, chain)) {
                declared.push((table, chain));
                script.push(table, format!("-N {chain}"));
            }
        }
        for rule in &self.rules {
            script.push(rule.table, rule.to_string());
        }
        script
    }
}

/// Input for `iptables-restore --noflush`: lines per table, each table one atomic commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreScript {
    tables: BTreeMap<Table, Vec<String>>,
}

impl RestoreScript {
    /// Adds a line (a rule or a chain command) to `table`.
    pub fn push(&mut self, table: Table, line: String) {
        self.tables.entry(table).or_default().push(line);
    }

    /// True when the script changes nothing.
    pub fn is_empty(&self) -> bool {
        self.tables.values().all(Vec::is_empty)
    }

    /// Puts `first`'s lines before this script's, table by table, so both run in one commit.
    pub fn prepend(&mut self, first: RestoreScript) {
        for (table, mut lines) in first.tables {
            let entry = self.tables.entry(table).or_default();
            lines.append(entry);
            *entry = lines;
        }
    }

    /// The lines of one table.
    pub fn lines(&self, table: Table) -> &[String] {
        self.tables.get(&table).map_or(&[], Vec::as_slice)
    }
}

impl fmt::Display for RestoreScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (table, lines) in &self.tables {
            if lines.is_empty() {
                continue;
            }
            writeln!(f, "*{}", table.as_str())?;
            for line in lines {
                writeln!(f, "{line}")?;
            }
            writeln!(f, "COMMIT")?;
        }
        Ok(())
    }
}

/// The restore scripts for a config: always IPv4, IPv6 when `config.ipv6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// For `iptables-restore`.
    pub ipv4: RestoreScript,
    /// For `ip6tables-restore`.
    pub ipv6: Option<RestoreScript>,
}

impl fmt::Display for Rendered {
    /// Both scripts, each under a comment naming its program: what `--dry-run` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# {} --noflush", Family::V4.restore_program())?;
        write!(f, "{}", self.ipv4)?;
        if let Some(ipv6) = &self.ipv6 {
            writeln!(f, "# {} --noflush", Family::V6.restore_program())?;
            write!(f, "{ipv6}")?;
        }
        Ok(())
    }
}

/// Renders the restore scripts for `config`: the text `--dry-run` prints and `apply` loads.
pub fn render(config: &Config) -> Result<Rendered, Error> {
    Ok(Rendered {
        ipv4: rules(config, Family::V4)?.restore_script(),
        ipv6: if config.ipv6 {
            Some(rules(config, Family::V6)?.restore_script())
        } else {
            None
        },
    })
}

/// The capture rules of `config` for one family, in the order Istio installs them.
pub fn rules(config: &Config, family: Family) -> Result<RuleSet, Error> {
    config.check_supported()?;
    let mut b = Builder {
        config,
        family,
        rules: Vec::new(),
    };
    b.build();
    Ok(RuleSet {
        family,
        rules: b.rules,
    })
}

/// Builds a rule's words from anything printable: `spec!["-p", "tcp", "--dport", port]`.
macro_rules! spec {
    ($($word:expr),* $(,)?) => { vec![$($word.to_string()),*] };
}

struct Builder<'c> {
    config: &'c Config,
    family: Family,
    rules: Vec<Rule>,
}

impl Builder<'_> {
    fn append(&mut self, table: Table, chain: &'static str, spec: Vec<String>) {
        self.rules.push(Rule {
            table,
            chain,
            insert_at: None,
            spec,
        });
    }

    fn insert(&mut self, table: Table, chain: &'static str, position: u32, spec: Vec<String>) {
        self.rules.push(Rule {
            table,
            chain,
            insert_at: Some(position),
            spec,
        });
    }

    /// The loopback range that is never captured.
    fn loopback(&self) -> String {
        match self.family {
            Family::V4 => self.config.ipv4_loopback.to_string(),
            Family::V6 => "::1/128".to_string(),
        }
    }

    fn passthrough_source(&self) -> &'static str {
        match self.family {
            Family::V4 => INBOUND_PASSTHROUGH_V4,
            Family::V6 => INBOUND_PASSTHROUGH_V6,
        }
    }

    fn family_cidrs<'a>(&self, cidrs: &'a [Cidr]) -> impl Iterator<Item = &'a Cidr> + use<'a> {
        let family = self.family;
        cidrs.iter().filter(move |c| family.has(c))
    }

    fn build(&mut self) {
        let c = self.config;
        let nat = Table::Nat;

        // Interfaces that are never captured, either way.
        for nic in &c.exclude_interfaces.0 {
            self.append(nat, PREROUTING, spec!["-i", nic, "-j", "RETURN"]);
            self.append(nat, OUTPUT, spec!["-o", nic, "-j", "RETURN"]);
        }
        // Traffic from a VM's virtual interface is not inbound (it may be outbound, below).
        for nic in &c.kube_virt_interfaces.0 {
            self.insert(nat, PREROUTING, 1, spec!["-i", nic, "-j", "RETURN"]);
        }
        if c.drop_invalid {
            let invalid = spec!["-m", "conntrack", "--ctstate", "INVALID", "-j", chain::DROP];
            self.append(Table::Mangle, PREROUTING, invalid);
            self.append(Table::Mangle, chain::DROP, spec!["-j", "DROP"]);
        }

        self.append(
            nat,
            chain::INBOUND,
            spec![
                "-p",
                "tcp",
                "--dport",
                c.inbound_tunnel_port,
                "-j",
                "RETURN"
            ],
        );
        self.append(
            nat,
            chain::REDIRECT,
            spec!["-p", "tcp", "-j", "REDIRECT", "--to-ports", c.proxy_port],
        );
        self.append(
            nat,
            chain::IN_REDIRECT,
            spec![
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                c.inbound_capture_port
            ],
        );
        self.inbound();
        self.outbound();
    }

    fn inbound(&mut self) {
        let c = self.config;
        let nat = Table::Nat;
        match &c.inbound_ports {
            InboundPorts::None => {}
            InboundPorts::All => {
                self.append(nat, PREROUTING, spec!["-p", "tcp", "-j", chain::INBOUND]);
                for ports in c.inbound_ports_exclude.0.chunks(MULTIPORT_MAX) {
                    let mut rule = spec!["-p", "tcp"];
                    rule.extend(dports(ports));
                    rule.extend(spec!["-j", "RETURN"]);
                    self.append(nat, chain::INBOUND, rule);
                }
                self.append(
                    nat,
                    chain::INBOUND,
                    spec!["-p", "tcp", "-j", chain::IN_REDIRECT],
                );
            }
            InboundPorts::Only(ports) => {
                self.append(nat, PREROUTING, spec!["-p", "tcp", "-j", chain::INBOUND]);
                for port in &ports.0 {
                    self.append(
                        nat,
                        chain::INBOUND,
                        spec!["-p", "tcp", "--dport", port, "-j", chain::IN_REDIRECT],
                    );
                }
            }
        }
    }

    fn outbound(&mut self) {
        let c = self.config;
        let nat = Table::Nat;
        let out = chain::OUTPUT;
        // All protocols: UDP from the proxy is skipped in ISTIO_OUTPUT too.
        self.append(nat, OUTPUT, spec!["-j", out]);

        // Excluded ports go first, before connections back to the pod itself are redirected.
        for ports in c.outbound_ports_exclude.0.chunks(MULTIPORT_MAX) {
            for proto in ["tcp", "udp"] {
                let mut rule = spec!["-p", proto];
                rule.extend(dports(ports));
                rule.extend(spec!["-j", "RETURN"]);
                self.append(nat, out, rule);
            }
        }

        // The proxy's inbound passthrough connects to the app from 127.0.0.6 (::6).
        let passthrough = self.passthrough_source();
        self.append(
            nat,
            out,
            spec!["-o", "lo", "-s", passthrough, "-j", "RETURN"],
        );

        let dns = c.dns != DnsCapture::Off;
        let loopback = self.loopback();
        let tunnel = c.inbound_tunnel_port;
        // When the user asks to capture a loopback range, app-to-app traffic over lo is captured.
        let loopback_captured = c.outbound_ranges.cidrs().iter().any(Cidr::is_loopback);
        for (owner_flag, owners, is_uid) in [
            ("--uid-owner", &c.proxy_uids, true),
            ("--gid-owner", &c.proxy_gids, false),
        ] {
            for owner in &owners.0 {
                // The proxy calling the pod's own address through a Service VIP
                // (app -> proxy -> proxy -> app) goes through the inbound listener.
                let mut rule = spec!["-o", "lo", "!", "-d", loopback, "-p", "tcp"];
                if dns && is_uid {
                    // The agent's own DNS queries over TCP are not inbound traffic.
                    rule.extend(spec![
                        "-m",
                        "multiport",
                        "!",
                        "--dports",
                        format!("53,{tunnel}")
                    ]);
                } else {
                    rule.extend(spec!["!", "--dport", tunnel]);
                }
                rule.extend(spec![
                    "-m",
                    "owner",
                    owner_flag,
                    owner,
                    "-j",
                    chain::IN_REDIRECT
                ]);
                self.append(nat, out, rule);

                // An app calling itself over lo by the pod's address is not captured
                // (TCP DNS to a local resolver still may be).
                if !loopback_captured {
                    let mut rule = spec!["-o", "lo"];
                    if dns {
                        rule.extend(spec!["-p", "tcp", "!", "--dport", "53"]);
                    }
                    rule.extend(spec!["-m", "owner", "!", owner_flag, owner, "-j", "RETURN"]);
                    self.append(nat, out, rule);
                }

                // The proxy's own traffic, TCP and UDP, is never captured: no loops.
                self.append(
                    nat,
                    out,
                    spec!["-m", "owner", owner_flag, owner, "-j", "RETURN"],
                );
            }
        }

        match &c.owner_groups {
            OwnerGroups::All => {}
            OwnerGroups::AllExcept(groups) => {
                for group in &groups.0 {
                    self.append(
                        nat,
                        out,
                        spec!["-m", "owner", "--gid-owner", group, "-j", "RETURN"],
                    );
                }
            }
            OwnerGroups::Only(groups) => {
                let mut rule = Vec::new();
                for group in &groups.0 {
                    rule.extend(spec!["-m", "owner", "!", "--gid-owner", group]);
                }
                rule.extend(spec!["-j", "RETURN"]);
                self.append(nat, out, rule);
            }
        }

        if dns {
            self.dns();
        }

        // Localhost is never captured: proxy-aware apps and container-to-container traffic.
        self.append(nat, out, spec!["-d", loopback, "-j", "RETURN"]);
        let excluded: Vec<Cidr> = self
            .family_cidrs(&c.outbound_ranges_exclude.0)
            .copied()
            .collect();
        for cidr in excluded {
            self.append(nat, out, spec!["-d", cidr, "-j", "RETURN"]);
        }
        for port in &c.outbound_ports.0 {
            self.append(
                nat,
                out,
                spec!["-p", "tcp", "--dport", port, "-j", chain::REDIRECT],
            );
        }
        match &c.outbound_ranges {
            OutboundRanges::None => {}
            OutboundRanges::All => {
                self.append(nat, out, spec!["-j", chain::REDIRECT]);
                for nic in &c.kube_virt_interfaces.0 {
                    self.insert(nat, PREROUTING, 1, spec!["-i", nic, "-j", chain::REDIRECT]);
                }
            }
            OutboundRanges::Only(cidrs) => {
                let included: Vec<Cidr> = self.family_cidrs(&cidrs.0).copied().collect();
                for cidr in included {
                    for nic in &c.kube_virt_interfaces.0 {
                        self.insert(
                            nat,
                            PREROUTING,
                            1,
                            spec!["-i", nic, "-d", cidr, "-j", chain::REDIRECT],
                        );
                    }
                    self.append(nat, out, spec!["-d", cidr, "-j", chain::REDIRECT]);
                }
            }
        }
    }

    /// DNS to the agent's proxy on 15053, and conntrack zones that keep the app's queries and the
    /// agent's upstream queries apart (Istio's `SetupDNSRedir`).
    fn dns(&mut self) {
        let c = self.config;
        let (nat, raw) = (Table::Nat, Table::Raw);
        let dns_chain = chain::OUTPUT_DNS;
        let proxy = crate::config::DNS_PROXY_PORT;
        let host_len = match self.family {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        let all = c.dns == DnsCapture::All;
        let servers: Vec<String> = match &c.dns {
            DnsCapture::Servers(servers) => servers
                .iter()
                .filter(|s| s.is_ipv6() == (self.family == Family::V6))
                .map(|s| format!("{s}/{host_len}"))
                .collect(),
            DnsCapture::Off | DnsCapture::All => Vec::new(),
        };

        self.append(raw, OUTPUT, spec!["-j", dns_chain]);
        if all || !servers.is_empty() {
            self.append(nat, chain::OUTPUT, spec!["-j", dns_chain]);
        }
        // TCP then UDP, to every server or to port 53 anywhere.
        for (proto, to) in [("tcp", "--to-ports"), ("udp", "--to-port")] {
            if all {
                let rule = spec!["-p", proto, "--dport", "53", "-j", "REDIRECT", to, proxy];
                self.append(nat, dns_chain, rule);
            }
            for server in &servers {
                let rule = spec![
                    "-p", proto, "--dport", "53", "-d", server, "-j", "REDIRECT", to, proxy
                ];
                self.append(nat, dns_chain, rule);
            }
        }

        // Zone 1: the agent and upstream resolvers. Zone 2: apps and the agent's DNS proxy.
        for (owner_flag, owners) in [
            ("--uid-owner", &c.proxy_uids),
            ("--gid-owner", &c.proxy_gids),
        ] {
            for owner in &owners.0 {
                let upstream = spec![
                    "-p", "udp", "--dport", "53", "-m", "owner", owner_flag, owner, "-j", "CT",
                    "--zone", "1"
                ];
                self.append(raw, dns_chain, upstream);
                let answers = spec![
                    "-p", "udp", "--sport", proxy, "-m", "owner", owner_flag, owner, "-j", "CT",
                    "--zone", "2"
                ];
                self.append(raw, dns_chain, answers);
            }
        }
        if all {
            self.append(raw, PREROUTING, spec!["-j", chain::INBOUND]);
            let queries = spec!["-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2"];
            self.append(raw, dns_chain, queries);
            let replies = spec!["-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1"];
            self.append(raw, chain::INBOUND, replies);
        } else if !servers.is_empty() {
            self.append(raw, PREROUTING, spec!["-j", chain::INBOUND]);
            for server in &servers {
                let queries = spec![
                    "-p", "udp", "--dport", "53", "-d", server, "-j", "CT", "--zone", "2"
                ];
                self.append(raw, dns_chain, queries);
                let replies = spec![
                    "-p", "udp", "--sport", "53", "-s", server, "-j", "CT", "--zone", "1"
                ];
                self.append(raw, chain::INBOUND, replies);
            }
        }
    }
}

/// The destination-port match for a list of ports: `--dport P` for one, multiport for more.
fn dports(ports: &[Port]) -> Vec<String> {
    match ports {
        [port] => spec!["--dport", port],
        _ => {
            let list: Vec<String> = ports.iter().map(Port::to_string).collect();
            spec!["-m", "multiport", "--dports", list.join(",")]
        }
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
