//! Parsers for the small value languages of Istio's annotations and values: port lists, CIDR
//! lists, Kubernetes quantities, booleans and interception modes.
//!
//! Each returns the parsed value or a message that quotes the offending part, such as
//! `"abc" is not a port`; the caller adds where the value came from.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A comma-separated list of ports, or `*` where the field allows "all ports".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortList {
    /// Every port (`*`).
    All,
    /// These ports, in the order given (may be empty).
    Ports(Vec<u16>),
}

impl PortList {
    /// Parses `80,8080` (spaces around items are allowed, empty items skipped) or, when
    /// `allow_all`, `*`.
    pub fn parse(s: &str, allow_all: bool) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return if allow_all {
                Ok(PortList::All)
            } else {
                Err("\"*\" is not allowed here; list the ports".to_string())
            };
        }
        let mut ports = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            ports.push(parse_port(item)?);
        }
        Ok(PortList::Ports(ports))
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortList::All => f.write_str("*"),
            PortList::Ports(ports) => {
                for (i, p) in ports.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// Parses one port number, 1 to 65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("\"{}\" is not a port", s.trim())),
    }
}

/// A comma-separated list of CIDR ranges, or `*` for "every address".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrList {
    /// Every address (`*`).
    All,
    /// These ranges, as written (trimmed), in order (may be empty).
    Ranges(Vec<String>),
}

impl CidrList {
    /// Parses `10.0.0.0/8,fd00::/8` or `*`. Each range needs an address and a prefix length
    /// that fits it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(CidrList::All);
        }
        let mut ranges = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = || format!("\"{item}\" is not a CIDR range (address/prefix)");
            let (addr, prefix) = item.split_once('/').ok_or_else(bad)?;
            let addr = IpAddr::from_str(addr).map_err(|_| bad())?;
            let prefix: u8 = prefix.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(bad());
            }
            ranges.push(item.to_string());
        }
        Ok(CidrList::Ranges(ranges))
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrList::All => f.write_str("*"),
            CidrList::Ranges(r) => f.write_str(&r.join(",")),
        }
    }
}

/// Checks a Kubernetes resource quantity (`100m`, `128Mi`, `2`, `1e3`, `0.5`) and returns it
/// unchanged: the API server keeps the user's spelling, so do we.
pub fn parse_quantity(s: &str) -> Result<String, String> {
    let bad = || format!("\"{s}\" is not a Kubernetes quantity (such as 100m, 2, 128Mi)");
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits_end);
    let valid_number = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    if !valid_number {
        return Err(bad());
    }
    let valid_suffix = matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|exp| {
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
        })
        .unwrap_or(false);
    if valid_suffix {
        Ok(s.to_string())
    } else {
        Err(bad())
    }
}

/// Parses a boolean the way Istio's injector does (YAML 1.1 spellings, any case):
/// `true|yes|y|on` and `false|no|n|off`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "on" => Ok(true),
        "false" | "no" | "n" | "off" => Ok(false),
        _ => Err(format!("\"{s}\" is not a boolean (true or false)")),
    }
}

/// How the init container captures the pod's traffic (ProxyConfig's `interceptionMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum InterceptionMode {
    /// NAT `REDIRECT` to the proxy's ports (Istio's default).
    #[default]
    #[serde(rename = "REDIRECT")]
    Redirect,
    /// Transparent proxying: keeps the original source address, needs NET_ADMIN in the proxy.
    #[serde(rename = "TPROXY")]
    Tproxy,
    /// No capture at all: no init container; the app talks to the proxy explicitly.
    #[serde(rename = "NONE")]
    None,
}

impl InterceptionMode {
    /// The name as Istio spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            InterceptionMode::Redirect => "REDIRECT",
            InterceptionMode::Tproxy => "TPROXY",
            InterceptionMode::None => "NONE",
        }
    }
}

impl FromStr for InterceptionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "REDIRECT" => Ok(InterceptionMode::Redirect),
            "TPROXY" => Ok(InterceptionMode::Tproxy),
            "NONE" => Ok(InterceptionMode::None),
            _ => Err(format!(
                "\"{s}\" is not an interception mode (REDIRECT, TPROXY or NONE)"
            )),
        }
    }
}

impl fmt::Display for InterceptionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists() {
        assert_eq!(PortList::parse("*", true), Ok(PortList::All));
        assert!(PortList::parse("*", false).is_err());
        assert_eq!(
            PortList::parse(" 80, 8080,", false),
            Ok(PortList::Ports(vec![80, 8080]))
        );
        assert_eq!(PortList::parse("", false), Ok(PortList::Ports(vec![])));
        assert_eq!(
            PortList::parse("80,abc", false),
            Err("\"abc\" is not a port".into())
        );
        assert_eq!(
            PortList::parse("0", false),
            Err("\"0\" is not a port".into())
        );
        assert_eq!(
            PortList::parse("65536", false),
            Err("\"65536\" is not a port".into())
        );
    }

    #[test]
    fn cidr_lists() {
        assert_eq!(CidrList::parse("*"), Ok(CidrList::All));
        assert_eq!(
            CidrList::parse("10.0.0.0/8, fd00::/8").map(|c| c.to_string()),
            Ok("10.0.0.0/8,fd00::/8".into())
        );
        assert!(CidrList::parse("10.0.0.0").is_err());
        assert!(CidrList::parse("10.0.0.0/33").is_err());
        assert!(CidrList::parse("example.com/8").is_err());
    }

    #[test]
    fn quantities() {
        for ok in [
            "100m", "2", "128Mi", "1Gi", "0.5", "1e3", "1E-2", "+1", ".5",
        ] {
            assert_eq!(parse_quantity(ok), Ok(ok.to_string()), "{ok}");
        }
        for bad in ["", "abc", "1.2.3", "10MB", "m", "1e", "."] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn booleans_and_modes() {
        assert_eq!(parse_bool("False"), Ok(false));
        assert_eq!(parse_bool("yes"), Ok(true));
        assert!(parse_bool("maybe").is_err());
        assert_eq!("TPROXY".parse(), Ok(InterceptionMode::Tproxy));
        assert!("redirect".parse::<InterceptionMode>().is_err());
    }
}
