//! What the inbound side derives from a config snapshot for this workload (its mTLS modes,
//! AuthorizationPolicies and JWT rules), built once per snapshot version and cached, so that a
//! request pays one atomic load when the cache is current.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::config::{ProxyConfig, Snapshot};

/// A value built from a snapshot, cached by the snapshot's version; `None` stands for "nothing
/// applies to this workload".
#[derive(Debug)]
pub struct PerSnapshot<T> {
    cache: ArcSwapOption<Built<T>>,
}

#[derive(Debug)]
struct Built<T> {
    version: u64,
    value: Option<Arc<T>>,
}

impl<T> Default for PerSnapshot<T> {
    fn default() -> Self {
        PerSnapshot {
            cache: ArcSwapOption::empty(),
        }
    }
}

impl<T> PerSnapshot<T> {
    /// The value for snapshot `version`: the cached one, or `build`'s, cached unless a newer
    /// version is cached already (a request still on an older snapshot builds for itself and
    /// leaves the cache to the newer one, so a swap under way does not thrash it).
    pub fn get(&self, version: u64, build: impl FnOnce() -> Option<T>) -> Option<Arc<T>> {
        let cached = self.cache.load();
        if let Some(c) = &*cached
            && c.version == version
        {
            return c.value.clone();
        }
        let newer_cached = cached.as_ref().is_some_and(|c| c.version > version);
        drop(cached);
        let value = build().map(Arc::new);
        if !newer_cached {
            self.cache.store(Some(Arc::new(Built {
                version,
                value: value.clone(),
            })));
        }
        value
    }
}

/// This workload's namespace and labels under `snap` (the pod's namespace from the config when
/// the control plane has not named the workload): what a policy's selector is matched against.
pub fn workload_scope<'a>(
    snap: &'a Snapshot,
    cfg: &'a ProxyConfig,
    no_labels: &'a BTreeMap<String, String>,
) -> (Option<&'a str>, &'a BTreeMap<String, String>) {
    match &snap.me {
        Some(w) => (Some(w.namespace.as_str()), &w.labels),
        None => (cfg.pod_namespace.as_deref(), no_labels),
    }
}

#[cfg(test)]
mod tests {
    use super::PerSnapshot;
    use std::cell::Cell;

    #[test]
    fn built_once_per_version_and_an_older_one_does_not_evict() {
        let cache = PerSnapshot::<u64>::default();
        let builds = Cell::new(0);
        let build = |v: u64| {
            builds.set(builds.get() + 1);
            Some(v * 10)
        };
        assert_eq!(cache.get(2, || build(2)).as_deref(), Some(&20));
        assert_eq!(cache.get(2, || build(2)).as_deref(), Some(&20));
        assert_eq!(builds.get(), 1, "cached for version 2");
        assert_eq!(cache.get(1, || build(1)).as_deref(), Some(&10));
        assert_eq!(cache.get(2, || build(2)).as_deref(), Some(&20));
        assert_eq!(
            builds.get(),
            2,
            "version 1 built for itself, 2 stayed cached"
        );
        assert_eq!(cache.get(3, || None), None, "nothing applies");
    }
}
