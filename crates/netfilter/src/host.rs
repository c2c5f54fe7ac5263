//! What the capture rules need to know about, or change on, the host's network namespace: its
//! addresses, its DNS servers, the proxy user, the IPv6 passthrough address, the caller's
//! capabilities. Everything here acts on the network namespace of the calling thread.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use crate::error::Error;

/// The uid of user `name` (istio-iptables looks up `$ENVOY_USER`, default `istio-proxy`).
pub fn user_id(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|user| user.uid.as_raw())
}

/// True when an interface holds an IPv6 address a pod could be reached at: not loopback, not
/// link-local, not multicast. Istio enables ip6tables from the same test on the pod's address.
pub fn has_routable_ipv6() -> Result<bool, Error> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| Error::io("list interface addresses", io::Error::from(e)))?;
    Ok(addrs
        .filter_map(|ifaddr| ifaddr.address)
        .filter_map(|addr| addr.as_sockaddr_in6().map(|a| a.ip()))
        .any(is_routable_v6))
}

fn is_routable_v6(ip: Ipv6Addr) -> bool {
    let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
    !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast() && !link_local
}

/// The `nameserver` addresses of a resolv.conf, in order.
pub fn nameservers(resolv_conf: &Path) -> Result<Vec<IpAddr>, Error> {
    let text = fs::read_to_string(resolv_conf)
        .map_err(|e| Error::io(format!("read {}", resolv_conf.display()), e))?;
    Ok(parse_nameservers(&text))
}

fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                // A scoped address (fe80::1%eth0) cannot go in a rule; Istio drops those too.
                .and_then(|addr| addr.parse().ok())
        })
        .collect()
}

/// Linux capability number of CAP_NET_ADMIN.
const CAP_NET_ADMIN: u32 = 12;

/// Fails with a clear error when the calling process lacks CAP_NET_ADMIN.
pub fn require_net_admin() -> Result<(), Error> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("read /proc/self/status", e))?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
    match effective {
        Some(caps) if caps & (1 << CAP_NET_ADMIN) == 0 => Err(Error::PermissionDenied {
            detail: " (this process lacks CAP_NET_ADMIN)".to_string(),
        }),
        // Unknown: let iptables-restore decide, and report what it says.
        _ => Ok(()),
    }
}

/// True when the kernel has IPv6 in this namespace.
pub fn ipv6_available() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

/// Adds `::6/128` to `lo` (`ip -6 addr add ::6/128 dev lo`): the source the proxy binds for
/// inbound passthrough. IPv4 needs nothing, since 127.0.0.0/8 is all on lo already.
/// Already present is fine.
#[allow(unsafe_code)]
pub fn add_ipv6_passthrough_address() -> Result<(), Error> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let what = "add ::6/128 to lo (the IPv6 inbound passthrough source)";
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::io(what, io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if lo == 0 {
        return Err(Error::io(what, io::Error::last_os_error()));
    }
    let request = libc::in6_ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6).octets(),
        },
        ifr6_prefixlen: 128,
        ifr6_ifindex: lo as libc::c_int,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads one in6_ifreq, which lives across the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFADDR, &request) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            if err.raw_os_error() == Some(libc::EPERM) {
                return Err(Error::PermissionDenied {
                    detail: format!(" ({what}: {err})"),
                });
            }
            return Err(Error::io(what, err));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_like_resolv_conf() {
        let text = "# comment\nsearch svc.cluster.local\nnameserver 10.96.0.10\n\
                    nameserver fd00::10\nnameserver fe80::1%eth0\noptions ndots:5\n";
        assert_eq!(
            parse_nameservers(text),
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::10".parse().unwrap()
            ]
        );
    }

    #[test]
    fn routable_ipv6_excludes_local_scopes() {
        assert!(!is_routable_v6(Ipv6Addr::LOCALHOST));
        assert!(!is_routable_v6("fe80::1".parse().unwrap()));
        assert!(!is_routable_v6("ff02::1".parse().unwrap()));
        assert!(is_routable_v6("fd00::2".parse().unwrap()));
        assert!(is_routable_v6("2001:db8::1".parse().unwrap()));
    }
}
