//! Graceful drain: stop accepting, let what is in flight finish, then stop.
//!
//! [`channel`] gives a [`DrainTrigger`] (held by whoever decides to stop, e.g. the SIGTERM
//! handler) and a [`DrainWatcher`] cloned into every listener and connection. A watcher learns of
//! the drain through [`DrainWatcher::signaled`]; the trigger's [`DrainTrigger::drain`] resolves
//! once every watcher has been dropped, i.e. every connection has finished.

use tokio::sync::{mpsc, watch};

/// Starts a drain and waits for it to complete.
#[derive(Debug)]
pub struct DrainTrigger {
    signal: watch::Sender<bool>,
    done: mpsc::Receiver<std::convert::Infallible>,
}

/// Held by each listener and connection: tells it to wind down, and keeps the drain waiting
/// while it lives.
#[derive(Debug, Clone)]
pub struct DrainWatcher {
    signal: watch::Receiver<bool>,
    _alive: mpsc::Sender<std::convert::Infallible>,
}

/// A new trigger and its first watcher.
pub fn channel() -> (DrainTrigger, DrainWatcher) {
    let (signal, rx) = watch::channel(false);
    let (alive, done) = mpsc::channel(1);
    (
        DrainTrigger { signal, done },
        DrainWatcher {
            signal: rx,
            _alive: alive,
        },
    )
}

impl DrainTrigger {
    /// Tells every watcher to drain, then waits until all are dropped.
    pub async fn drain(mut self) {
        let _ = self.signal.send(true);
        // `recv` returns `None` once every sender (one per watcher) is gone.
        let _ = self.done.recv().await;
    }

    /// Tells every watcher to drain without waiting.
    pub fn start(&self) {
        let _ = self.signal.send(true);
    }

    /// True once a drain has started.
    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }
}

impl DrainWatcher {
    /// Resolves when a drain starts (at once if it already has).
    pub async fn signaled(&self) {
        let mut rx = self.signal.clone();
        // An error means the trigger is gone, which also means stop.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// True once a drain has started.
    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Counts the watchers alive (every open connection holds one) without holding one itself,
    /// so it never keeps a drain waiting.
    pub fn counter(&self) -> impl Fn() -> usize + Send + 'static {
        let weak = self._alive.downgrade();
        move || weak.strong_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_watchers() {
        let (trigger, watcher) = channel();
        let w2 = watcher.clone();
        let task = tokio::spawn(async move {
            w2.signaled().await;
            "done"
        });
        drop(watcher);
        trigger.drain().await;
        assert_eq!(task.await.expect("join"), "done");
    }

    #[tokio::test]
    async fn counter_counts_watchers_and_holds_none() {
        let (trigger, watcher) = channel();
        let count = watcher.counter();
        let w2 = watcher.clone();
        assert_eq!(count(), 2);
        drop(w2);
        assert_eq!(count(), 1);
        drop(watcher);
        trigger.drain().await;
        assert_eq!(count(), 0);
    }
}
