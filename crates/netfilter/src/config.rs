//! What the capture rules are made from: istio-iptables' settings as typed values.
//!
//! Every list here parses from the comma-separated strings istio-iptables takes on its command
//! line (`-b 80,8080`, `-i '*'`, `-x ""`), with Istio's leniency (empty items are skipped, spaces
//! around items are trimmed) and none of its silent failures: an item that is not a port, a CIDR,
//! a user or an interface name is an error that names it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A malformed flag value; the message names the value and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: {reason}")]
pub struct ParseError {
    value: String,
    reason: &'static str,
}

impl ParseError {
    fn new(value: &str, reason: &'static str) -> ParseError {
        ParseError {
            value: value.to_string(),
            reason,
        }
    }
}

/// Splits an istio-iptables list: comma-separated, empty items dropped (`"6000,7000,"`).
fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

fn parse_list<T: FromStr<Err = ParseError>>(list: &str) -> Result<Vec<T>, ParseError> {
    items(list).map(str::parse).collect()
}

fn join<T: fmt::Display>(f: &mut fmt::Formatter<'_>, values: &[T]) -> fmt::Result {
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{value}")?;
    }
    Ok(())
}

/// A TCP or UDP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(u16);

impl Port {
    /// The port, or None for 0, which no connection can use.
    pub const fn new(port: u16) -> Option<Port> {
        if port == 0 { None } else { Some(Port(port)) }
    }

    /// The port number.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl FromStr for Port {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Port, ParseError> {
        s.trim()
            .parse::<u16>()
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| ParseError::new(s, "not a port: expected a number from 1 to 65535"))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A list of ports (`"15090,15021,15020"`); the empty string is the empty list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports(pub Vec<Port>);

impl Ports {
    /// True when the list names no port.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for Ports {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Ports, ParseError> {
        if s.trim() == "*" {
            return Err(ParseError::new(
                s,
                "the wildcard is not allowed here: list ports",
            ));
        }
        parse_list(s).map(Ports)
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        join(f, &self.0)
    }
}

/// Which inbound ports are captured (`-b`): none (`""`), all (`"*"`), or a list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum InboundPorts {
    /// No inbound capture: the default of istio-iptables.
    #[default]
    None,
    /// Every inbound TCP port, less the excluded ones (`-d`).
    All,
    /// Only these ports.
    Only(Ports),
}

impl FromStr for InboundPorts {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<InboundPorts, ParseError> {
        if s.trim() == "*" {
            return Ok(InboundPorts::All);
        }
        let ports: Ports = s.parse()?;
        Ok(if ports.is_empty() {
            InboundPorts::None
        } else {
            InboundPorts::Only(ports)
        })
    }
}

/// An IP network in CIDR form (`10.96.0.0/12`, `2001:db8::/32`). The address is kept as given,
/// host bits and all, as Istio does; iptables masks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// The network `addr/prefix_len`, or None when the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Cidr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix_len <= max).then_some(Cidr { addr, prefix_len })
    }

    /// The address part.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// True for an IPv6 network.
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// True when the address part is a loopback address (Istio's `HasLoopBackIP`).
    pub fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }
}

impl FromStr for Cidr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Cidr, ParseError> {
        const EXPECTED: &str = "not a CIDR: expected ADDRESS/PREFIX, e.g. 10.96.0.0/12";
        let (addr, len) = s
            .trim()
            .split_once('/')
            .ok_or(ParseError::new(s, EXPECTED))?;
        let addr: IpAddr = addr.parse().map_err(|_| ParseError::new(s, EXPECTED))?;
        let len: u8 = len.parse().map_err(|_| ParseError::new(s, EXPECTED))?;
        Cidr::new(addr, len).ok_or(ParseError::new(s, "prefix length longer than the address"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A list of networks; `"*"` is refused (Istio refuses it for `-x`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cidrs(pub Vec<Cidr>);

impl FromStr for Cidrs {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Cidrs, ParseError> {
        if s.trim() == "*" {
            return Err(ParseError::new(
                s,
                "the wildcard is not allowed here: list CIDRs",
            ));
        }
        parse_list(s).map(Cidrs)
    }
}

impl fmt::Display for Cidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        join(f, &self.0)
    }
}

/// Which outbound destinations are captured (`-i`): none (`""`), all (`"*"`), or networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OutboundRanges {
    /// No outbound capture: the default of istio-iptables.
    #[default]
    None,
    /// Every destination, less the excluded networks (`-x`) and ports (`-o`).
    All,
    /// Only these networks.
    Only(Cidrs),
}

impl OutboundRanges {
    /// The listed networks (none for `None` and `All`).
    pub fn cidrs(&self) -> &[Cidr] {
        match self {
            OutboundRanges::Only(cidrs) => &cidrs.0,
            OutboundRanges::None | OutboundRanges::All => &[],
        }
    }
}

impl FromStr for OutboundRanges {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<OutboundRanges, ParseError> {
        if s.trim() == "*" {
            return Ok(OutboundRanges::All);
        }
        let cidrs: Cidrs = s.parse()?;
        Ok(if cidrs.0.is_empty() {
            OutboundRanges::None
        } else {
            OutboundRanges::Only(cidrs)
        })
    }
}

/// A user or group as the iptables owner match takes it: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A numeric uid or gid.
    Id(u32),
    /// A user or group name, resolved by iptables.
    Name(String),
}

impl FromStr for Owner {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Owner, ParseError> {
        let s = s.trim();
        if let Ok(id) = s.parse::<u32>() {
            return Ok(Owner::Id(id));
        }
        let valid = !s.is_empty()
            && s.len() <= 32
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
        if valid {
            Ok(Owner::Name(s.to_string()))
        } else {
            Err(ParseError::new(
                s,
                "not a user or group: expected a number or a name",
            ))
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Id(id) => id.fmt(f),
            Owner::Name(name) => f.write_str(name),
        }
    }
}

/// A list of users or groups (`-u 1337`, `-g 1337,1338`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners(pub Vec<Owner>);

impl Owners {
    /// One numeric id.
    pub fn id(id: u32) -> Owners {
        Owners(vec![Owner::Id(id)])
    }
}

impl FromStr for Owners {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Owners, ParseError> {
        parse_list(s).map(Owners)
    }
}

impl fmt::Display for Owners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        join(f, &self.0)
    }
}

/// Whose outbound traffic is captured, by the group of the sending process
/// (Istio's `ISTIO_OUTBOUND_OWNER_GROUPS` and `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OwnerGroups {
    /// Every group: the default.
    #[default]
    All,
    /// Only processes in one of these groups.
    Only(Owners),
    /// Every group but these.
    AllExcept(Owners),
}

impl OwnerGroups {
    /// Reads Istio's pair of settings: `include` is `"*"` or a list, `exclude` a list; setting
    /// both a list to include and a list to exclude is an error, as in Istio.
    pub fn from_istio(include: &str, exclude: &str) -> Result<OwnerGroups, ParseError> {
        let include = include.trim();
        let exclude: Owners = exclude.parse()?;
        if include.is_empty() || include == "*" {
            return Ok(if exclude.0.is_empty() {
                OwnerGroups::All
            } else {
                OwnerGroups::AllExcept(exclude)
            });
        }
        if !exclude.0.is_empty() {
            return Err(ParseError::new(
                include,
                "owner groups to include and to exclude cannot both be set",
            ));
        }
        Ok(OwnerGroups::Only(include.parse()?))
    }
}

/// A network interface name (`eth0`), as the kernel allows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Interface(String);

impl Interface {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Interface {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Interface, ParseError> {
        let s = s.trim();
        let valid = !s.is_empty()
            && s.len() < 16
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_graphic() && c != '/' && c != ',');
        if valid {
            Ok(Interface(s.to_string()))
        } else {
            Err(ParseError::new(
                s,
                "not an interface name: 1 to 15 characters, no '/' or spaces",
            ))
        }
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A list of interfaces (`-c`, `-k`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interfaces(pub Vec<Interface>);

impl FromStr for Interfaces {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Interfaces, ParseError> {
        parse_list(s).map(Interfaces)
    }
}

/// How inbound connections reach the proxy (`-m`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InterceptionMode {
    /// NAT REDIRECT to the inbound capture port; the proxy reads the original destination with
    /// `SO_ORIGINAL_DST`. The default.
    #[default]
    Redirect,
    /// TPROXY in the mangle table, keeping the client's source address. Not supported yet.
    Tproxy,
}

impl FromStr for InterceptionMode {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<InterceptionMode, ParseError> {
        match s.trim() {
            // istio-iptables treats anything but TPROXY, the empty string included, as REDIRECT.
            "" => Ok(InterceptionMode::Redirect),
            m if m.eq_ignore_ascii_case("REDIRECT") => Ok(InterceptionMode::Redirect),
            m if m.eq_ignore_ascii_case("TPROXY") => Ok(InterceptionMode::Tproxy),
            _ => Err(ParseError::new(
                s,
                "not an interception mode: expected REDIRECT or TPROXY",
            )),
        }
    }
}

impl fmt::Display for InterceptionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InterceptionMode::Redirect => "REDIRECT",
            InterceptionMode::Tproxy => "TPROXY",
        })
    }
}

/// Which DNS traffic goes to the agent's DNS proxy on port 15053 (`--redirect-dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DnsCapture {
    /// DNS is not captured: the default.
    #[default]
    Off,
    /// DNS to these servers (those of `/etc/resolv.conf`, as Istio reads them).
    Servers(Vec<IpAddr>),
    /// All traffic to port 53 (`--capture-all-dns`).
    All,
}

/// Everything the capture rules are made from. `Config::default()` is istio-iptables run with
/// no flag: ports 15001/15006/15008, proxy uid and gid 1337, REDIRECT, nothing captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where outbound connections are redirected (`-p`, Envoy's 15001).
    pub proxy_port: Port,
    /// Where inbound connections are redirected (`-z`, 15006).
    pub inbound_capture_port: Port,
    /// The inbound HBONE tunnel port, never captured (`-e`, 15008).
    pub inbound_tunnel_port: Port,
    /// Users whose traffic is the proxy's own and is never captured (`-u`).
    pub proxy_uids: Owners,
    /// Groups whose traffic is the proxy's own and is never captured (`-g`).
    pub proxy_gids: Owners,
    /// How inbound connections are captured (`-m`).
    pub inbound_interception_mode: InterceptionMode,
    /// Inbound ports captured (`-b`).
    pub inbound_ports: InboundPorts,
    /// Inbound ports left alone when all are captured (`-d`).
    pub inbound_ports_exclude: Ports,
    /// Outbound ports captured whatever the destination (`-q`).
    pub outbound_ports: Ports,
    /// Outbound ports never captured, TCP and UDP (`-o`).
    pub outbound_ports_exclude: Ports,
    /// Outbound destinations captured (`-i`).
    pub outbound_ranges: OutboundRanges,
    /// Outbound destinations never captured (`-x`).
    pub outbound_ranges_exclude: Cidrs,
    /// Interfaces whose inbound traffic (from a VM) is treated as outbound (`-k`).
    pub kube_virt_interfaces: Interfaces,
    /// Interfaces whose traffic is never captured, either way (`-c`).
    pub exclude_interfaces: Interfaces,
    /// Outbound capture by the sender's group.
    pub owner_groups: OwnerGroups,
    /// DNS capture.
    pub dns: DnsCapture,
    /// Drop packets conntrack finds invalid instead of letting the kernel reset the connection
    /// (`--drop-invalid`).
    pub drop_invalid: bool,
    /// Also install the rules with ip6tables.
    pub ipv6: bool,
    /// The loopback range that is never captured (`ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`).
    pub ipv4_loopback: Cidr,
}

/// The source address the proxy uses to reach the app (inbound passthrough): never captured.
pub const INBOUND_PASSTHROUGH_V4: &str = "127.0.0.6/32";
/// The IPv6 inbound passthrough source; `apply` adds it to `lo`.
pub const INBOUND_PASSTHROUGH_V6: &str = "::6/128";
/// The uid and gid istio-proxy runs as.
pub const DEFAULT_PROXY_ID: u32 = 1337;
/// The agent's DNS proxy port.
pub const DNS_PROXY_PORT: u16 = 15053;

impl Default for Config {
    fn default() -> Config {
        Config {
            proxy_port: Port(15001),
            inbound_capture_port: Port(15006),
            inbound_tunnel_port: Port(15008),
            proxy_uids: Owners::id(DEFAULT_PROXY_ID),
            proxy_gids: Owners::id(DEFAULT_PROXY_ID),
            inbound_interception_mode: InterceptionMode::Redirect,
            inbound_ports: InboundPorts::None,
            inbound_ports_exclude: Ports::default(),
            outbound_ports: Ports::default(),
            outbound_ports_exclude: Ports::default(),
            outbound_ranges: OutboundRanges::None,
            outbound_ranges_exclude: Cidrs::default(),
            kube_virt_interfaces: Interfaces::default(),
            exclude_interfaces: Interfaces::default(),
            owner_groups: OwnerGroups::All,
            dns: DnsCapture::Off,
            drop_invalid: false,
            ipv6: false,
            ipv4_loopback: Cidr {
                addr: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                prefix_len: 32,
            },
        }
    }
}

impl Config {
    /// True when a flag names an IPv6 network, which needs ip6tables whatever the pod's addresses.
    pub fn names_ipv6_network(&self) -> bool {
        self.outbound_ranges
            .cidrs()
            .iter()
            .chain(&self.outbound_ranges_exclude.0)
            .any(Cidr::is_ipv6)
    }
}

/// Checks `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`: an IPv4 range inside 127.0.0.0/8, /8 to /32.
pub fn parse_ipv4_loopback(s: &str) -> Result<Cidr, ParseError> {
    let cidr: Cidr = s.parse()?;
    let ok = matches!(cidr.addr, IpAddr::V4(a) if a.is_loopback()) && cidr.prefix_len >= 8;
    if ok {
        Ok(cidr)
    } else {
        Err(ParseError::new(
            s,
            "expected an IPv4 loopback range from /8 to /32, e.g. 127.0.0.1/32",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_like_istio() {
        assert_eq!("".parse::<Ports>().unwrap(), Ports::default());
        let ports: Ports = " 6000,7000, ".parse().unwrap();
        assert_eq!(ports.to_string(), "6000,7000");
        assert!("0".parse::<Ports>().is_err());
        assert!(
            "80,http"
                .parse::<Ports>()
                .unwrap_err()
                .to_string()
                .contains("\"http\"")
        );
        assert!("*".parse::<Ports>().is_err());
    }

    #[test]
    fn inbound_ports_wildcard_and_empty() {
        assert_eq!("*".parse::<InboundPorts>().unwrap(), InboundPorts::All);
        assert_eq!("".parse::<InboundPorts>().unwrap(), InboundPorts::None);
        assert_eq!(
            "80".parse::<InboundPorts>().unwrap(),
            InboundPorts::Only(Ports(vec![Port(80)]))
        );
    }

    #[test]
    fn cidrs_keep_the_given_address() {
        let cidr: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(cidr.to_string(), "10.1.2.3/8");
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.is_ipv6());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("*".parse::<Cidrs>().is_err());
        assert_eq!("*".parse::<OutboundRanges>().unwrap(), OutboundRanges::All);
        assert_eq!("".parse::<OutboundRanges>().unwrap(), OutboundRanges::None);
    }

    #[test]
    fn owners_are_ids_or_names() {
        let owners: Owners = "1337,tomcat".parse().unwrap();
        assert_eq!(
            owners.0,
            vec![Owner::Id(1337), Owner::Name("tomcat".into())]
        );
        assert!("-j".parse::<Owner>().is_err());
        assert!("a b".parse::<Owner>().is_err());
    }

    #[test]
    fn owner_groups_follow_istio() {
        assert_eq!(OwnerGroups::from_istio("*", "").unwrap(), OwnerGroups::All);
        assert_eq!(
            OwnerGroups::from_istio("*", "888,ftp").unwrap(),
            OwnerGroups::AllExcept("888,ftp".parse().unwrap())
        );
        assert_eq!(
            OwnerGroups::from_istio("java,202", "").unwrap(),
            OwnerGroups::Only("java,202".parse().unwrap())
        );
        assert!(OwnerGroups::from_istio("java", "ftp").is_err());
    }

    #[test]
    fn modes_and_interfaces() {
        assert_eq!(
            "".parse::<InterceptionMode>().unwrap(),
            InterceptionMode::Redirect
        );
        assert_eq!(
            "TPROXY".parse::<InterceptionMode>().unwrap(),
            InterceptionMode::Tproxy
        );
        assert!("NAT".parse::<InterceptionMode>().is_err());
        assert!("a-very-long-interface".parse::<Interface>().is_err());
        assert_eq!("eth0,eth1".parse::<Interfaces>().unwrap().0.len(), 2);
    }

    #[test]
    fn loopback_cidr_is_checked() {
        assert!(parse_ipv4_loopback("127.0.0.1/8").is_ok());
        assert!(parse_ipv4_loopback("10.0.0.1/32").is_err());
        assert!(parse_ipv4_loopback("127.0.0.0/4").is_err());
    }
}
