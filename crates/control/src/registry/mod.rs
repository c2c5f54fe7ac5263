//! Registries: where objects come from. Each registry writes the objects of its sources
//! (a file, later a Kubernetes watch) into the one [`ConfigStore`], which tells the push loop
//! that something changed.
//!
//! The store holds the objects per source, replaced whole; it never holds a lock while waiting
//! and its change queue is bounded: when the queue is full a push is already pending, and that
//! push reads the store as it is then, so nothing is lost.

pub mod file;
pub mod kube;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use api::objects::Object;
use tokio::sync::mpsc;

use crate::model::Warning;

/// Capacity of the change queue between the registries and the push loop.
pub const CHANGE_QUEUE: usize = 1024;

/// One change of the store.
#[derive(Debug, Clone)]
pub struct Change {
    /// When it was made (push times are measured from here).
    pub at: Instant,
    /// The source that changed (a file name relative to the config directory).
    pub source: String,
}

/// The objects of every source, and the queue that announces changes.
#[derive(Debug)]
pub struct ConfigStore {
    sources: Mutex<BTreeMap<String, Arc<[Object]>>>,
    changes: mpsc::Sender<Change>,
}

/// The objects of all sources at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Objects by source, in source order.
    pub sources: Vec<(String, Arc<[Object]>)>,
}

impl ConfigStore {
    /// An empty store and the receiving end of its change queue (for [`crate::push::Pusher`]).
    pub fn new() -> (Arc<ConfigStore>, mpsc::Receiver<Change>) {
        let (tx, rx) = mpsc::channel(CHANGE_QUEUE);
        (
            Arc::new(ConfigStore {
                sources: Mutex::new(BTreeMap::new()),
                changes: tx,
            }),
            rx,
        )
    }

    /// Sets the objects of `source` (an empty list keeps the source, with nothing in it).
    /// Announces a change when they differ from before.
    pub fn replace(&self, source: &str, objects: Vec<Object>) {
        let changed = {
            let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
            match sources.get(source) {
                Some(old) if **old == *objects => false,
                _ => {
                    sources.insert(source.to_string(), objects.into());
                    true
                }
            }
        };
        if changed {
            self.announce(source);
        }
    }

    /// Removes `source` and its objects.
    pub fn remove(&self, source: &str) {
        let removed = self
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(source)
            .is_some();
        if removed {
            self.announce(source);
        }
    }

    /// The objects of `source`, if it is known.
    pub fn get(&self, source: &str) -> Option<Arc<[Object]>> {
        self.sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(source)
            .cloned()
    }

    /// Every source with its objects.
    pub fn snapshot(&self) -> Snapshot {
        let sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        Snapshot {
            sources: sources
                .iter()
                .map(|(k, v)| (k.clone(), Arc::clone(v)))
                .collect(),
        }
    }

    fn announce(&self, source: &str) {
        let change = Change {
            at: Instant::now(),
            source: source.to_string(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.changes.try_send(change) {
            tracing::debug!(source, "change queue full: a push is already pending");
        }
    }
}

impl Snapshot {
    /// Every object once: when two sources (or two documents) define the same kind, namespace
    /// and name, the later source wins and a warning says so.
    pub fn objects(&self) -> (Vec<&Object>, Vec<Warning>) {
        let mut by_key: BTreeMap<(&str, &str, &str), (&str, &Object)> = BTreeMap::new();
        let mut warnings = Vec::new();
        for (source, objects) in &self.sources {
            for o in objects.iter() {
                let m = o.metadata();
                let key = (o.kind(), m.namespace.as_str(), m.name.as_str());
                if let Some((previous, _)) = by_key.insert(key, (source, o)) {
                    warnings.push(Warning {
                        object: o.display(),
                        message: if previous == source {
                            format!("defined twice in {source}: the later one is used")
                        } else {
                            format!(
                                "defined in {previous} and {source}: the one in {source} is used"
                            )
                        },
                    });
                }
            }
        }
        (by_key.into_values().map(|(_, o)| o).collect(), warnings)
    }
}
