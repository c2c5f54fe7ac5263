//! istio-iptables' capture flags as text, and the one check of them that `ama iptables` and
//! injection share.
//!
//! Injection writes these flags into the `istio-init` container's args from pod annotations,
//! values and the mesh config; `ama iptables` later parses them in the pod. Both run
//! [`CaptureFlags::check`] (the CLI through the same parsers and [`Config::check_supported`]), so
//! kube-inject can never write a flag value that `ama iptables` refuses, and a refusal names the
//! flag at injection time, where the user can still fix the annotation.

use std::fmt;

use crate::config::{
    Cidrs, Config, InboundPorts, InterceptionMode, Interfaces, OutboundRanges, ParseError, Ports,
};
use crate::error::Error;

/// The capture flags as they appear on istio-iptables' command line (`-m REDIRECT -i '*' …`).
/// An empty string is an unset flag (istio-iptables' default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureFlags<'a> {
    /// `-m`
    pub interception_mode: &'a str,
    /// `-i`
    pub outbound_ranges: &'a str,
    /// `-x`
    pub outbound_ranges_exclude: &'a str,
    /// `-b`
    pub inbound_ports: &'a str,
    /// `-d`
    pub inbound_ports_exclude: &'a str,
    /// `-q`
    pub outbound_ports: &'a str,
    /// `-o`
    pub outbound_ports_exclude: &'a str,
    /// `-k`
    pub kube_virt_interfaces: &'a str,
    /// `-c`
    pub exclude_interfaces: &'a str,
}

/// One of the capture flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// `-m`, `--istio-inbound-interception-mode`
    InterceptionMode,
    /// `-i`, `--istio-service-cidr`
    OutboundRanges,
    /// `-x`, `--istio-service-exclude-cidr`
    OutboundRangesExclude,
    /// `-b`, `--istio-inbound-ports`
    InboundPorts,
    /// `-d`, `--istio-local-exclude-ports`
    InboundPortsExclude,
    /// `-q`, `--istio-outbound-ports`
    OutboundPorts,
    /// `-o`, `--istio-local-outbound-ports-exclude`
    OutboundPortsExclude,
    /// `-k`, `--kube-virt-interfaces`
    KubeVirtInterfaces,
    /// `-c`, `--istio-exclude-interfaces`
    ExcludeInterfaces,
}

impl Flag {
    /// The short and long spelling, as `-m/--istio-inbound-interception-mode`.
    pub fn spelling(self) -> &'static str {
        match self {
            Flag::InterceptionMode => "-m/--istio-inbound-interception-mode",
            Flag::OutboundRanges => "-i/--istio-service-cidr",
            Flag::OutboundRangesExclude => "-x/--istio-service-exclude-cidr",
            Flag::InboundPorts => "-b/--istio-inbound-ports",
            Flag::InboundPortsExclude => "-d/--istio-local-exclude-ports",
            Flag::OutboundPorts => "-q/--istio-outbound-ports",
            Flag::OutboundPortsExclude => "-o/--istio-local-outbound-ports-exclude",
            Flag::KubeVirtInterfaces => "-k/--kube-virt-interfaces",
            Flag::ExcludeInterfaces => "-c/--istio-exclude-interfaces",
        }
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.spelling())
    }
}

/// A capture flag `ama iptables` would refuse, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct FlagError {
    /// The flag.
    pub flag: Flag,
    /// Why: the parser's message, or the unsupported setting.
    pub reason: String,
}

impl CaptureFlags<'_> {
    /// Parses every flag as `ama iptables` does and checks that the result is supported.
    /// Returns the config the flags give (with istio-iptables' defaults for the rest).
    pub fn check(&self) -> Result<Config, FlagError> {
        fn parse<T: std::str::FromStr<Err = ParseError>>(
            flag: Flag,
            text: &str,
        ) -> Result<T, FlagError> {
            text.parse().map_err(|e: ParseError| FlagError {
                flag,
                reason: e.to_string(),
            })
        }
        let config = Config {
            inbound_interception_mode: parse::<InterceptionMode>(
                Flag::InterceptionMode,
                self.interception_mode,
            )?,
            outbound_ranges: parse::<OutboundRanges>(Flag::OutboundRanges, self.outbound_ranges)?,
            outbound_ranges_exclude: parse::<Cidrs>(
                Flag::OutboundRangesExclude,
                self.outbound_ranges_exclude,
            )?,
            inbound_ports: parse::<InboundPorts>(Flag::InboundPorts, self.inbound_ports)?,
            inbound_ports_exclude: parse::<Ports>(
                Flag::InboundPortsExclude,
                self.inbound_ports_exclude,
            )?,
            outbound_ports: parse::<Ports>(Flag::OutboundPorts, self.outbound_ports)?,
            outbound_ports_exclude: parse::<Ports>(
                Flag::OutboundPortsExclude,
                self.outbound_ports_exclude,
            )?,
            kube_virt_interfaces: parse::<Interfaces>(
                Flag::KubeVirtInterfaces,
                self.kube_virt_interfaces,
            )?,
            exclude_interfaces: parse::<Interfaces>(
                Flag::ExcludeInterfaces,
                self.exclude_interfaces,
            )?,
            ..Config::default()
        };
        config.check_supported().map_err(|e| FlagError {
            flag: Flag::InterceptionMode,
            reason: e.to_string(),
        })?;
        Ok(config)
    }
}

impl Config {
    /// Whether Ama can install this config's rules: TPROXY is not (the sidecar does not take
    /// transparent connections). [`crate::rules::rules`] and `ama iptables` check this too.
    pub fn check_supported(&self) -> Result<(), Error> {
        if self.inbound_interception_mode == InterceptionMode::Tproxy {
            return Err(Error::TproxyUnsupported);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_injector_writes_by_default_is_accepted() {
        let flags = CaptureFlags {
            interception_mode: "REDIRECT",
            outbound_ranges: "*",
            inbound_ports: "*",
            inbound_ports_exclude: "15090,15021,15020",
            ..CaptureFlags::default()
        };
        let config = flags.check().expect("accepted");
        assert_eq!(config.outbound_ranges, OutboundRanges::All);
    }

    #[test]
    fn refusals_name_the_flag() {
        let tproxy = CaptureFlags {
            interception_mode: "TPROXY",
            ..CaptureFlags::default()
        };
        let e = tproxy.check().unwrap_err();
        assert_eq!(e.flag, Flag::InterceptionMode);
        assert!(e.reason.contains("TPROXY is not supported"), "{e}");

        let wildcard = CaptureFlags {
            outbound_ranges_exclude: "*",
            ..CaptureFlags::default()
        };
        let e = wildcard.check().unwrap_err();
        assert_eq!(e.flag, Flag::OutboundRangesExclude);
        assert_eq!(
            e.to_string(),
            "-x/--istio-service-exclude-cidr: \"*\": the wildcard is not allowed here: list CIDRs"
        );

        let port = CaptureFlags {
            outbound_ports: "80,http",
            ..CaptureFlags::default()
        };
        assert_eq!(port.check().unwrap_err().flag, Flag::OutboundPorts);
    }
}
