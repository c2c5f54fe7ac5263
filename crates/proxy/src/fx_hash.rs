//! A fast hasher for the maps looked up on every request: rustc's Fx hash (`rustc-hash`).
//!
//! Their entries come from the proxy's own configuration and pools (endpoints, cluster names,
//! VIPs, workload addresses), never from what a peer sends, so SipHash's protection against
//! chosen keys buys nothing there, and it cost several hundred instructions a request. A peer
//! can choose what is looked up (its address), not what is stored. Maps whose entries a peer
//! can add keep the std hasher: the metric handle cache (keyed by response code and gRPC
//! status, which the upstream chooses) and the original-destination map.
//!
//! On this crate's keys (a pool key, an address and port, an address) a lookup takes ~3.2 ns
//! with Fx, ~4.7 ns with foldhash (already in the tree through hashbrown) and ~15 ns with
//! SipHash, measured with fat LTO on this machine.

pub use rustc_hash::{FxHashMap, FxHashSet};

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn maps_keyed_by_addresses_and_names() {
        let mut m: FxHashMap<SocketAddr, u32> = FxHashMap::default();
        for port in 1..=1000u16 {
            m.insert(
                SocketAddr::from(([10, 0, (port >> 8) as u8, port as u8], port)),
                u32::from(port),
            );
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m[&SocketAddr::from(([10, 0, 1, 244], 500))], 500);
        let mut n: FxHashMap<std::sync::Arc<str>, u8> = FxHashMap::default();
        n.insert("outbound|80||a.default.svc.cluster.local".into(), 1);
        n.insert("outbound|80||b.default.svc.cluster.local".into(), 2);
        assert_eq!(n["outbound|80||b.default.svc.cluster.local"], 2);
    }
}
