//! VIPs for Services that have no `clusterIP` (file mode: nobody runs the API server's
//! allocator).
//!
//! A Service gets an address of 10.96.0.0/16 picked by hashing `namespace/name` (SHA-256, so it
//! is the same on every machine and every build); on a collision it probes `namespace/name#1`,
//! `#2` … Results are therefore a function of the set of Services alone: the same directory
//! gives the same VIPs after a restart. While running, an assigned VIP never moves when other
//! Services come and go; it moves only if a Service later declares it as its `clusterIP`
//! (declared addresses always win).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use sha2::{Digest, Sha256};

/// The range VIPs are taken from (Kubernetes' default service CIDR).
pub const VIP_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 16);

/// A Service, by namespace and name.
pub type ServiceKey = (String, String);

/// Assigns and remembers VIPs.
#[derive(Debug, Default, Clone)]
pub struct VipAllocator {
    assigned: BTreeMap<ServiceKey, Ipv4Addr>,
}

impl VipAllocator {
    /// An allocator with nothing assigned.
    pub fn new() -> Self {
        Self::default()
    }

    /// Assigns a VIP to each of `wanted` (Services without a `clusterIP`), never one of
    /// `declared` (the `clusterIP`s others set). Services not in `wanted` are forgotten.
    pub fn assign(
        &mut self,
        wanted: &BTreeSet<ServiceKey>,
        declared: &HashSet<IpAddr>,
    ) -> BTreeMap<ServiceKey, Ipv4Addr> {
        self.assigned
            .retain(|key, ip| wanted.contains(key) && !declared.contains(&IpAddr::V4(*ip)));
        let mut taken: HashSet<Ipv4Addr> = self.assigned.values().copied().collect();
        // In sorted order, so that a fresh allocator (a restart) resolves collisions the same way.
        for key in wanted {
            if self.assigned.contains_key(key) {
                continue;
            }
            let ip = (0u32..)
                .map(|probe| candidate(key, probe))
                .find(|ip| !taken.contains(ip) && !declared.contains(&IpAddr::V4(*ip)))
                .unwrap_or(VIP_RANGE.0);
            taken.insert(ip);
            self.assigned.insert(key.clone(), ip);
        }
        self.assigned.clone()
    }
}

/// The `probe`-th candidate address of a Service. Skips the network address, `.0.1` (the
/// `kubernetes` Service by convention) and the broadcast address.
fn candidate(key: &ServiceKey, probe: u32) -> Ipv4Addr {
    let text = if probe == 0 {
        format!("{}/{}", key.0, key.1)
    } else {
        format!("{}/{}#{probe}", key.0, key.1)
    };
    let digest = Sha256::digest(text.as_bytes());
    let host_bits = 32 - u32::from(VIP_RANGE.1);
    let usable = (1u32 << host_bits) - 3; // minus .0.0, .0.1 and the broadcast address
    let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % usable + 2;
    Ipv4Addr::from(u32::from(VIP_RANGE.0) | n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> ServiceKey {
        (ns.to_string(), name.to_string())
    }

    #[test]
    fn deterministic_and_in_range() {
        let wanted: BTreeSet<_> = (0..500).map(|i| key("default", &format!("s{i}"))).collect();
        let a = VipAllocator::new().assign(&wanted, &HashSet::new());
        let b = VipAllocator::new().assign(&wanted, &HashSet::new());
        assert_eq!(a, b, "a restart gives the same VIPs");
        let unique: HashSet<_> = a.values().collect();
        assert_eq!(unique.len(), 500, "no two services share a VIP");
        for ip in a.values() {
            let o = ip.octets();
            assert_eq!((o[0], o[1]), (10, 96), "{ip}");
            assert_ne!((o[2], o[3]), (0, 0));
            assert_ne!((o[2], o[3]), (0, 1));
            assert_ne!((o[2], o[3]), (255, 255));
        }
    }

    #[test]
    fn collisions_probe_and_stay_put() {
        let a = key("default", "a");
        let first = candidate(&a, 0);
        let mut alloc = VipAllocator::new();
        // Another service already declares a's first choice: a probes further.
        let declared = HashSet::from([IpAddr::V4(first)]);
        let wanted = BTreeSet::from([a.clone()]);
        let got = alloc.assign(&wanted, &declared)[&a];
        assert_eq!(got, candidate(&a, 1));
        // The declaration goes away: a keeps its VIP while running.
        assert_eq!(alloc.assign(&wanted, &HashSet::new())[&a], got);
        // New services never take an assigned VIP.
        let mut more = wanted.clone();
        more.extend((0..200).map(|i| key("x", &format!("n{i}"))));
        let all = alloc.assign(&more, &HashSet::new());
        assert_eq!(all[&a], got);
        assert_eq!(all.values().collect::<HashSet<_>>().len(), 201);
        // Forgotten when the service goes.
        alloc.assign(&BTreeSet::new(), &HashSet::new());
        assert_eq!(alloc.assign(&wanted, &HashSet::new())[&a], first);
    }
}
