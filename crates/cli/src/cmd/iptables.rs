//! `ama iptables`: istio-iptables (and istio-clean-iptables) for the `istio-init` container.
//!
//! Same flags, short and long, and the same environment variables as defaults; the rules come
//! from the `netfilter` crate. `--dry-run` prints the iptables-restore input instead of loading
//! it; `--cleanup` removes the rules.

use std::env;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use netfilter::config::{
    Cidrs, Config, DEFAULT_PROXY_ID, DnsCapture, InboundPorts, InterceptionMode, Interfaces,
    OutboundRanges, OwnerGroups, Owners, Port, Ports, parse_ipv4_loopback,
};

/// `ama iptables` arguments. The flags are boxed: they are large next to other subcommands'.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub flags: Box<Flags>,
}

/// Flags of istio-iptables. A flag not given falls back to its environment variable, then to
/// istio-iptables' default. As with istio-iptables, a flag given twice takes the last value.
#[derive(Debug, clap::Args)]
#[command(args_override_self = true)]
pub struct Flags {
    /// Port to which all outbound TCP traffic is redirected.
    #[arg(
        short = 'p',
        long = "envoy-port",
        env = "ENVOY_PORT",
        default_value = "15001"
    )]
    pub envoy_port: Port,

    /// Port to which all inbound TCP traffic is redirected.
    #[arg(
        short = 'z',
        long = "inbound-capture-port",
        env = "INBOUND_CAPTURE_PORT",
        default_value = "15006"
    )]
    pub inbound_capture_port: Port,

    /// Inbound tunnel (HBONE) port, never captured.
    #[arg(
        short = 'e',
        long = "inbound-tunnel-port",
        env = "INBOUND_TUNNEL_PORT",
        default_value = "15008"
    )]
    pub inbound_tunnel_port: Port,

    /// Comma-separated UIDs whose traffic is not captured (the proxy's) [default: the uid of
    /// $ENVOY_USER (istio-proxy), else 1337].
    #[arg(short = 'u', long = "proxy-uid", env = "PROXY_UID")]
    pub proxy_uid: Option<Owners>,

    /// Comma-separated GIDs whose traffic is not captured [default: the proxy UIDs].
    #[arg(short = 'g', long = "proxy-gid", env = "PROXY_GID")]
    pub proxy_gid: Option<Owners>,

    /// How inbound connections are captured: REDIRECT (TPROXY is refused, by injection too:
    /// see `netfilter::CaptureFlags`).
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        env = "ISTIO_INBOUND_INTERCEPTION_MODE",
        default_value = "REDIRECT"
    )]
    pub inbound_interception_mode: InterceptionMode,

    /// TPROXY mark (TPROXY mode only; accepted for compatibility).
    #[arg(short = 't', long = "istio-inbound-tproxy-mark", hide = true)]
    pub inbound_tproxy_mark: Option<String>,

    /// TPROXY route table (TPROXY mode only; accepted for compatibility).
    #[arg(short = 'r', long = "istio-inbound-tproxy-route-table", hide = true)]
    pub inbound_tproxy_route_table: Option<String>,

    /// Comma-separated inbound ports to capture; "*" for all, empty for none.
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        env = "ISTIO_INBOUND_PORTS",
        default_value = ""
    )]
    pub inbound_ports: InboundPorts,

    /// Comma-separated inbound ports not captured (when -b is "*").
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        env = "ISTIO_LOCAL_EXCLUDE_PORTS",
        default_value = ""
    )]
    pub inbound_ports_exclude: Ports,

    /// Comma-separated interfaces whose traffic is never captured.
    #[arg(
        short = 'c',
        long = "istio-exclude-interfaces",
        env = "ISTIO_EXCLUDE_INTERFACES",
        default_value = ""
    )]
    pub exclude_interfaces: Interfaces,

    /// Comma-separated CIDRs whose outbound traffic is captured; "*" for all, empty for none.
    #[arg(
        short = 'i',
        long = "istio-service-cidr",
        env = "ISTIO_SERVICE_CIDR",
        default_value = ""
    )]
    pub outbound_ranges: OutboundRanges,

    /// Comma-separated CIDRs whose outbound traffic is not captured.
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        env = "ISTIO_SERVICE_EXCLUDE_CIDR",
        default_value = ""
    )]
    pub outbound_ranges_exclude: Cidrs,

    /// Comma-separated outbound ports captured whatever the destination.
    #[arg(
        short = 'q',
        long = "istio-outbound-ports",
        env = "ISTIO_OUTBOUND_PORTS",
        default_value = ""
    )]
    pub outbound_ports: Ports,

    /// Comma-separated outbound ports never captured.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        env = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        default_value = ""
    )]
    pub outbound_ports_exclude: Ports,

    /// Comma-separated virtual interfaces whose inbound traffic (from a VM) is treated as
    /// outbound.
    #[arg(
        short = 'k',
        long = "kube-virt-interfaces",
        env = "KUBE_VIRT_INTERFACES",
        default_value = ""
    )]
    pub kube_virt_interfaces: Interfaces,

    /// Send DNS to the agent's DNS proxy on port 15053.
    #[arg(long = "redirect-dns", env = "ISTIO_META_DNS_CAPTURE")]
    pub redirect_dns: bool,

    /// With --redirect-dns: capture all traffic to port 53, not only to the servers of
    /// /etc/resolv.conf.
    #[arg(long = "capture-all-dns", env = "CAPTURE_ALL_DNS")]
    pub capture_all_dns: bool,

    /// Drop packets conntrack finds invalid instead of resetting the connection.
    #[arg(long = "drop-invalid", env = "INVALID_DROP")]
    pub drop_invalid: bool,

    /// Install IPv6 rules too, as for a dual-stack pod.
    #[arg(long = "dual-stack", env = "ISTIO_DUAL_STACK")]
    pub dual_stack: bool,

    /// Whether to install IPv6 rules: auto does when the pod has an IPv6 address or a flag
    /// names an IPv6 network.
    #[arg(long, value_enum, default_value = "auto")]
    pub ipv6: Ipv6,

    /// Agent log levels (`default:info`), as injection writes for istio-iptables. `ama
    /// iptables` prints only its result and its errors, so no level changes its output.
    #[arg(long = "log_output_level", value_name = "LEVELS")]
    pub log_output_level: Option<String>,

    /// Check that capture rules are installed (by Istio's CNI plugin) instead of installing
    /// them; fails when they are not. What the `istio-validation` init container runs.
    #[arg(long = "run-validation")]
    pub run_validation: bool,

    /// Install no rules (with --run-validation: only check them).
    #[arg(long = "skip-rule-apply")]
    pub skip_rule_apply: bool,

    /// Print the iptables-restore input instead of loading it.
    #[arg(short = 'n', long = "dry-run", env = "DRY_RUN")]
    pub dry_run: bool,

    /// Remove the capture rules (what istio-clean-iptables does) instead of installing them.
    #[arg(long, visible_aliases = ["clean", "cleanup-only"], conflicts_with = "dry_run")]
    pub cleanup: bool,
}

/// When IPv6 rules are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6 {
    /// When the pod has a routable IPv6 address or a flag names an IPv6 network.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let args = args.flags;
    let config = config(&args)?;
    if args.run_validation {
        netfilter::check_installed()?;
        println!("capture rules are installed");
        if args.skip_rule_apply {
            return Ok(ExitCode::SUCCESS);
        }
    } else if args.skip_rule_apply {
        println!("--skip-rule-apply: no rules installed");
        return Ok(ExitCode::SUCCESS);
    }
    if args.cleanup {
        let cleaned = netfilter::cleanup(&config)?;
        if cleaned.chains.is_empty() && cleaned.hooks == 0 {
            println!("no capture rules installed");
        } else {
            let chains: Vec<String> = cleaned
                .chains
                .iter()
                .map(|(family, table, chain)| format!("{family} {}/{chain}", table.as_str()))
                .collect();
            println!("removed capture rules: {}", chains.join(", "));
        }
    } else if args.dry_run {
        print!("{}", netfilter::render(&config)?);
    } else {
        let applied = netfilter::apply(&config)?;
        let families: Vec<String> = applied.families.iter().map(ToString::to_string).collect();
        let replaced = if applied.replaced {
            " (replacing earlier rules)"
        } else {
            ""
        };
        println!(
            "installed capture rules for {}{replaced}",
            families.join(" and ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the netfilter config from the flags and the environment, as istio-iptables does.
fn config(args: &Flags) -> anyhow::Result<Config> {
    let proxy_uids = match &args.proxy_uid {
        Some(uids) if !uids.0.is_empty() => uids.clone(),
        _ => {
            let user = env::var("ENVOY_USER").unwrap_or_else(|_| "istio-proxy".to_string());
            Owners::id(netfilter::host::user_id(&user).unwrap_or(DEFAULT_PROXY_ID))
        }
    };
    let proxy_gids = match &args.proxy_gid {
        Some(gids) if !gids.0.is_empty() => gids.clone(),
        _ => proxy_uids.clone(),
    };
    let owner_groups = OwnerGroups::from_istio(
        &env_or("ISTIO_OUTBOUND_OWNER_GROUPS", "*"),
        &env_or("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", ""),
    )
    .context("ISTIO_OUTBOUND_OWNER_GROUPS / ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE")?;
    let ipv4_loopback =
        parse_ipv4_loopback(&env_or("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32"))
            .context("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR")?;

    let mut config = Config {
        proxy_port: args.envoy_port,
        inbound_capture_port: args.inbound_capture_port,
        inbound_tunnel_port: args.inbound_tunnel_port,
        proxy_uids,
        proxy_gids,
        inbound_interception_mode: args.inbound_interception_mode,
        inbound_ports: args.inbound_ports.clone(),
        inbound_ports_exclude: args.inbound_ports_exclude.clone(),
        outbound_ports: args.outbound_ports.clone(),
        outbound_ports_exclude: args.outbound_ports_exclude.clone(),
        outbound_ranges: args.outbound_ranges.clone(),
        outbound_ranges_exclude: args.outbound_ranges_exclude.clone(),
        kube_virt_interfaces: args.kube_virt_interfaces.clone(),
        exclude_interfaces: args.exclude_interfaces.clone(),
        owner_groups,
        dns: dns_capture(args)?,
        drop_invalid: args.drop_invalid,
        ipv6: false,
        ipv4_loopback,
    };
    // The check injection runs on the flags it writes (netfilter::CaptureFlags::check).
    config.check_supported()?;
    config.ipv6 = match args.ipv6 {
        Ipv6::Always => true,
        Ipv6::Never => false,
        Ipv6::Auto => {
            args.dual_stack || config.names_ipv6_network() || netfilter::host::has_routable_ipv6()?
        }
    };
    Ok(config)
}

/// DNS capture as istio-iptables decides it: the servers of /etc/resolv.conf unless all DNS is
/// captured, and off (with a warning) when there is no server to capture.
fn dns_capture(args: &Flags) -> anyhow::Result<DnsCapture> {
    if !args.redirect_dns {
        return Ok(DnsCapture::Off);
    }
    if args.capture_all_dns {
        return Ok(DnsCapture::All);
    }
    let servers = netfilter::host::nameservers(Path::new("/etc/resolv.conf"))?;
    if servers.is_empty() {
        eprintln!(
            "warning: --redirect-dns is set, but /etc/resolv.conf names no server and \
             --capture-all-dns is not set: DNS is not captured"
        );
        return Ok(DnsCapture::Off);
    }
    Ok(DnsCapture::Servers(servers))
}

fn env_or(name: &str, default: &str) -> String {
    env::var(name).unwrap_or_else(|_| default.to_string())
}
