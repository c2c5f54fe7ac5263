//! A fast hasher for the maps looked up on every request.
//!
//! Their entries come from the proxy's own configuration and pools (endpoints, cluster names,
//! VIPs, workload addresses), never from what a peer sends, so SipHash's protection against
//! chosen keys buys nothing there, and it cost several hundred instructions a request. A peer
//! can choose what is looked up (its address), not what is stored. Maps whose entries a peer
//! can add keep the std hasher: the metric handle cache (keyed by response code and gRPC
//! status, which the upstream chooses) and the original-destination map.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FxHasher`].
pub type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The Firefox/rustc hash: a rotate, xor and multiply per word.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

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
