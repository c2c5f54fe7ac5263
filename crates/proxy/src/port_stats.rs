//! Counters kept per inbound HTTP port, as Envoy keeps an HTTP filter's stats under the prefix
//! of each inbound connection manager Istio makes (`http.inbound_0.0.0.0_<port>;.`): RBAC's
//! ([`crate::authz::RbacStats`]) and jwt_authn's ([`crate::request_authn::JwtAuthnStats`]).

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// One `T` per port that has counted something, in port order.
#[derive(Debug, Default)]
pub struct PerPort<T> {
    /// Read per request without a lock; the mutex only serialises adding a port.
    ports: ArcSwap<Vec<(u16, Arc<T>)>>,
    grow: Mutex<()>,
}

impl<T: Default> PerPort<T> {
    /// Runs `f` on `port`'s counters, adding them (zero) the first time.
    pub fn with(&self, port: u16, f: impl FnOnce(&T)) {
        if let Some((_, c)) = self.ports.load().iter().find(|(p, _)| *p == port) {
            return f(c);
        }
        let _grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.ports.load_full();
        if let Some((_, c)) = current.iter().find(|(p, _)| *p == port) {
            return f(c);
        }
        let counters = Arc::new(T::default());
        f(&counters);
        let mut next = (*current).clone();
        next.push((port, counters));
        next.sort_by_key(|(p, _)| *p);
        self.ports.store(Arc::new(next));
    }

    /// Each port's counters, in port order.
    pub fn for_each(&self, mut f: impl FnMut(u16, &T)) {
        for (port, c) in self.ports.load().iter() {
            f(*port, c);
        }
    }
}

/// Envoy's stat prefix of the inbound connection manager for `port` (Istio ends it with `;`
/// for its tag extraction, and Envoy's `/stats` prints it so).
pub fn inbound_http_prefix(port: u16) -> String {
    format!("http.inbound_0.0.0.0_{port};.")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn ports_are_added_once_and_listed_in_order() {
        let stats = PerPort::<AtomicU64>::default();
        for port in [9080, 80, 9080] {
            stats.with(port, |c| {
                c.fetch_add(1, Ordering::Relaxed);
            });
        }
        let mut seen = Vec::new();
        stats.for_each(|port, c| seen.push((port, c.load(Ordering::Relaxed))));
        assert_eq!(seen, [(80, 1), (9080, 2)]);
    }
}
