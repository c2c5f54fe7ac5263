//! Addresses: pods take theirs from 10.244.0.0/16 (Kubernetes' usual pod CIDR), on a bridge
//! whose gateway is 10.244.0.1. Services take VIPs from 10.96.0.0/16, assigned by the control
//! plane's own allocator ([`control::model::VipAllocator`]) so that `ama up` and `ama discovery`
//! agree; VIPs exist only as routes inside pods, as with kube-proxy.
//!
//! Pod addresses are handed out in order after the last one given, wrapping around, so an
//! address freed by a stopped pod is not reused at once (a late packet for the old pod does not
//! reach a new one).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::Error;

/// The pod network.
pub const POD_CIDR: &str = "10.244.0.0/16";
/// Its first address.
const POD_NET: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 0);
/// Its prefix length.
pub const POD_PREFIX: u8 = 16;
/// The bridge's address: every pod's default gateway, and where `ama discovery` listens.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The Service network (VIPs).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The pod addresses in use, and where the next search starts.
#[derive(Debug, Clone)]
pub struct PodAddresses {
    used: BTreeSet<Ipv4Addr>,
    next: u32,
}

impl PodAddresses {
    /// A pool with `used` taken (the pods of a state file).
    pub fn new(used: impl IntoIterator<Item = Ipv4Addr>) -> PodAddresses {
        let used: BTreeSet<Ipv4Addr> = used.into_iter().collect();
        let next = used
            .iter()
            .next_back()
            .map(|ip| u32::from(*ip) + 1)
            .unwrap_or(u32::from(GATEWAY) + 1);
        PodAddresses { used, next }
    }

    /// The next free address; never the network, gateway or broadcast address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, Error> {
        let base = u32::from(POD_NET);
        let size = 1u32 << (32 - POD_PREFIX);
        let first = u32::from(GATEWAY) + 1;
        let last = base + size - 2;
        let span = last - first + 1;
        for i in 0..span {
            let candidate = first + (self.next.saturating_sub(first) + i) % span;
            let ip = Ipv4Addr::from(candidate);
            if self.used.insert(ip) {
                self.next = candidate + 1;
                return Ok(ip);
            }
        }
        Err(Error::AddressesExhausted { pool: POD_CIDR })
    }

    /// Gives `ip` back.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_in_order_after_the_gateway() {
        let mut pool = PodAddresses::new([]);
        assert_eq!(pool.allocate().unwrap(), Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(pool.allocate().unwrap(), Ipv4Addr::new(10, 244, 0, 3));
        pool.release(Ipv4Addr::new(10, 244, 0, 2));
        // Not reused at once.
        assert_eq!(pool.allocate().unwrap(), Ipv4Addr::new(10, 244, 0, 4));
    }

    #[test]
    fn resumes_after_the_addresses_of_a_state_file() {
        let mut pool =
            PodAddresses::new([Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 1, 9)]);
        assert_eq!(pool.allocate().unwrap(), Ipv4Addr::new(10, 244, 1, 10));
    }

    #[test]
    fn wraps_and_skips_broadcast_and_reports_exhaustion() {
        let mut pool = PodAddresses::new([Ipv4Addr::new(10, 244, 255, 253)]);
        assert_eq!(pool.allocate().unwrap(), Ipv4Addr::new(10, 244, 255, 254));
        assert_eq!(pool.allocate().unwrap(), Ipv4Addr::new(10, 244, 0, 2));
        let all = (2u32..65535).map(|i| Ipv4Addr::from(u32::from(POD_NET) + i));
        let mut full = PodAddresses::new(all);
        assert!(matches!(
            full.allocate(),
            Err(Error::AddressesExhausted { .. })
        ));
    }
}
