//! Data-plane worker threads, each running its own single-threaded runtime: Envoy's threading
//! model. A listener accepts on the main runtime and hands each connection to the worker
//! serving the fewest; from then on the connection, its upstream requests and the pooled
//! connections they use live on that one thread (see [`crate::pool`], which keeps its pools per
//! worker).
//!
//! Why not tokio's multi-threaded runtime: its workers share one I/O driver, so a readiness
//! event is taken by whichever worker holds the driver and another parked worker is woken to
//! help. On a two-core pod that is a futex wake and a context switch for most requests, and a
//! task hops between threads as it is woken. Here a worker sleeps only in its own `epoll_wait`
//! and is woken only by its own sockets.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::watch;

thread_local! {
    /// The index of the worker this thread is, if it is one.
    static INDEX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The worker this thread is (its index), or `None` off the workers.
pub fn current() -> Option<usize> {
    INDEX.with(std::cell::Cell::get)
}

struct Worker {
    handle: Handle,
    /// Connections handed to this worker that have not ended.
    active: Arc<AtomicUsize>,
}

/// The worker threads; they stop when this is dropped (their connections are dropped with them).
pub struct Workers {
    workers: Vec<Worker>,
    /// Where the least-loaded search starts, so that ties rotate.
    next: AtomicUsize,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.workers.len())
            .finish()
    }
}

impl Workers {
    /// Starts `n` (at least one) worker threads named `ama-worker-<i>`.
    pub fn start(n: usize) -> std::io::Result<Arc<Workers>> {
        let (stop, stopped) = watch::channel(false);
        let mut workers = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("ama-worker-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(Some(i)));
                    runtime.block_on(async move {
                        // Ends on `true` or when `Workers` is gone (the sender dropped).
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                })?;
            workers.push(Worker {
                handle,
                active: Arc::default(),
            });
        }
        Ok(Arc::new(Workers {
            workers,
            next: AtomicUsize::new(0),
            stop,
        }))
    }

    /// Runs `connection` on the worker with the fewest connections (ties in turn). The future
    /// must create its I/O objects (e.g. `TcpStream::from_std`) inside, so that they register
    /// with that worker's reactor.
    pub fn spawn<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let worker = (0..n)
            .map(|k| &self.workers[(start + k) % n])
            .min_by_key(|w| w.active.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.active.fetch_add(1, Ordering::Relaxed);
        let guard = Active(worker.active.clone());
        worker.handle.spawn(async move {
            let _guard = guard;
            connection.await;
        });
    }

    /// Connections each worker is serving now (for tests and the admin).
    pub fn active(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.active.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Counts a connection as its worker's until it ends (or is dropped unfinished).
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_connections_over_workers_and_runs_them_there() {
        let workers = Workers::start(2).expect("workers start");
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, held) = watch::channel(false);
        for _ in 0..4 {
            let tx = tx.clone();
            let mut held = held.clone();
            workers.spawn(async move {
                tx.send(current()).expect("test alive");
                let _ = held.wait_for(|r| *r).await;
            });
        }
        let mut seen: Vec<Option<usize>> = (0..4).map(|_| rx.recv().expect("ran")).collect();
        seen.sort();
        assert_eq!(seen, [Some(0), Some(0), Some(1), Some(1)]);
        assert_eq!(workers.active(), [2, 2]);
        release.send(true).expect("held");
        for _ in 0..200 {
            if workers.active() == [0, 0] {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(workers.active(), [0, 0]);
        assert_eq!(current(), None, "the test thread is not a worker");
    }

    #[test]
    fn a_busy_worker_is_passed_over() {
        let workers = Workers::start(2).expect("workers start");
        let (release, held) = watch::channel(false);
        let (tx, rx) = std::sync::mpsc::channel();
        // Three long connections: whichever worker got two is passed over next.
        for _ in 0..3 {
            let mut held = held.clone();
            let tx = tx.clone();
            workers.spawn(async move {
                tx.send(current()).expect("test alive");
                let _ = held.wait_for(|r| *r).await;
            });
        }
        for _ in 0..3 {
            rx.recv().expect("ran");
        }
        let busy = workers.active();
        let idle = busy
            .iter()
            .position(|&a| a == 1)
            .expect("one worker has one");
        let tx2 = tx.clone();
        workers.spawn(async move {
            tx2.send(current()).expect("test alive");
        });
        assert_eq!(rx.recv().expect("ran"), Some(idle));
        release.send(true).expect("held");
    }
}
