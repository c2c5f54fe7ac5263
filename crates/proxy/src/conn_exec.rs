//! An executor that runs the futures hyper spawns for one HTTP/2 connection inside that
//! connection's own task.
//!
//! hyper spawns a task per HTTP/2 stream: on a server connection each request's service future
//! (`H2Stream`), on a client connection the wait for each response (`SendWhen`), each request
//! body still being sent (`Pipe`), and the connection's I/O itself (`ConnTask`, apart from the
//! task that takes requests). With tokio's executor every stream costs a task allocation and a
//! schedule, the halves of a connection wake each other across tasks, and a spawn may wake the
//! other worker thread to steal the new task. [`ConnExec`] queues those futures instead, and
//! [`drive`] polls them in the task that polls the connection, as Envoy serves a connection and
//! all its streams on one worker. The connection's future finishes first; `drive` then keeps
//! polling what it spawned until every one has ended, as tokio would have run them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::stream::{FuturesUnordered, StreamExt};

type Spawned = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The connection's future was woken.
const CONN: u8 = 1;
/// A spawned future was woken, or a new one queued.
const SPAWNED: u8 = 2;
/// Rounds of polling in one turn of the task before it yields to others.
const MAX_ROUNDS: usize = 8;

/// What [`ConnExec`] and [`Drive`] share.
struct Shared {
    queued: Mutex<Vec<Spawned>>,
    /// What was woken since it was last polled ([`CONN`], [`SPAWNED`]).
    woken: AtomicU8,
    /// `Drive::poll` is running: a wake only sets `woken`, it looks again before it returns.
    /// Without this, each time a stream queues a frame for the connection, or the connection
    /// hands a stream its data, the task would be woken while it runs and scheduled once more.
    polling: AtomicBool,
    /// The task polling [`Drive`].
    task: Mutex<Option<Waker>>,
}

impl Shared {
    fn wake(&self, what: u8) {
        self.woken.fetch_or(what, SeqCst);
        if !self.polling.load(SeqCst)
            && let Some(w) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        {
            w.wake_by_ref();
        }
    }
}

/// The waker handed to the connection's future (`CONN`) or to the spawned ones (`SPAWNED`).
struct Flag {
    shared: Arc<Shared>,
    what: u8,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.shared.wake(self.what);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.wake(self.what);
    }
}

/// The executor handed to hyper's HTTP/2 connection builders; cheap to clone. Futures given to
/// it run only while the [`drive`] future made with the same executor is polled.
#[derive(Clone)]
pub struct ConnExec {
    shared: Arc<Shared>,
}

impl Default for ConnExec {
    fn default() -> ConnExec {
        ConnExec {
            shared: Arc::new(Shared {
                queued: Mutex::default(),
                woken: AtomicU8::new(CONN | SPAWNED),
                polling: AtomicBool::new(false),
                task: Mutex::default(),
            }),
        }
    }
}

impl std::fmt::Debug for ConnExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnExec")
    }
}

impl<F> hyper::rt::Executor<F> for ConnExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.shared
            .queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::pin(fut));
        self.shared.wake(SPAWNED);
    }
}

/// Polls `conn` and every future `exec` is given, in the calling task, until `conn` has
/// finished and all of them have ended; returns `conn`'s output.
pub fn drive<F: Future>(exec: ConnExec, conn: F) -> Drive<F> {
    let flag = |what| {
        Waker::from(Arc::new(Flag {
            shared: exec.shared.clone(),
            what,
        }))
    };
    Drive {
        conn_waker: flag(CONN),
        spawned_waker: flag(SPAWNED),
        shared: exec.shared,
        conn: Some(Box::pin(conn)),
        output: None,
        running: FuturesUnordered::new(),
    }
}

/// The future of [`drive`].
pub struct Drive<F: Future> {
    shared: Arc<Shared>,
    conn_waker: Waker,
    spawned_waker: Waker,
    conn: Option<Pin<Box<F>>>,
    output: Option<F::Output>,
    running: FuturesUnordered<Spawned>,
}

impl<F: Future> Drive<F> {
    /// The connection's future, until it has finished (to start a graceful shutdown, say); it
    /// is polled again on the next turn.
    pub fn conn_mut(&mut self) -> Option<Pin<&mut F>> {
        self.shared.woken.fetch_or(CONN, SeqCst);
        self.conn.as_mut().map(|c| c.as_mut())
    }
}

impl<F: Future> Unpin for Drive<F> {}

impl<F: Future> Future for Drive<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let shared = &*this.shared;
        {
            let mut task = shared.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        shared.polling.store(true, SeqCst);
        for _ in 0..MAX_ROUNDS {
            let woken = shared.woken.swap(0, SeqCst);
            if woken == 0 {
                shared.polling.store(false, SeqCst);
                // A wake from another thread may have come in before `polling` was cleared.
                if shared.woken.load(SeqCst) == 0 {
                    if this.conn.is_none()
                        && this.running.is_empty()
                        && let Some(out) = this.output.take()
                    {
                        return Poll::Ready(out);
                    }
                    return Poll::Pending;
                }
                shared.polling.store(true, SeqCst);
                continue;
            }
            if woken & CONN != 0
                && let Some(conn) = this.conn.as_mut()
                && let Poll::Ready(out) = conn
                    .as_mut()
                    .poll(&mut Context::from_waker(&this.conn_waker))
            {
                // Dropped at once: spawned futures may wait for the connection's handles to go.
                this.conn = None;
                this.output = Some(out);
            }
            if woken & SPAWNED != 0 {
                let queued =
                    std::mem::take(&mut *shared.queued.lock().unwrap_or_else(|e| e.into_inner()));
                for f in queued {
                    this.running.push(f);
                }
                let mut scx = Context::from_waker(&this.spawned_waker);
                while let Poll::Ready(Some(())) = this.running.poll_next_unpin(&mut scx) {}
            }
        }
        // Still busy: let the worker run other tasks first.
        shared.polling.store(false, SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;

    #[tokio::test]
    async fn runs_spawned_futures_to_their_end_after_the_connection() {
        let exec = ConnExec::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u32>();
        let e = exec.clone();
        let conn = async move {
            e.execute(async move {
                let v = rx.await.unwrap();
                done_tx.send(v + 1).unwrap();
            });
            7
        };
        let driven = tokio::spawn(drive(exec, conn));
        tokio::task::yield_now().await;
        assert!(!driven.is_finished(), "waits for the spawned future");
        tx.send(1).unwrap();
        assert_eq!(driven.await.unwrap(), 7);
        assert_eq!(done_rx.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn picks_up_futures_queued_from_another_task() {
        let exec = ConnExec::default();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let driven = tokio::spawn(drive(exec.clone(), async move {
            stop_rx.await.ok();
        }));
        tokio::task::yield_now().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        exec.execute(async move {
            tx.send(()).unwrap();
        });
        rx.await.unwrap();
        stop_tx.send(()).unwrap();
        driven.await.unwrap();
    }
}
