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
//!
//! [`ConnExec::hold_flushes`] wraps the connection's I/O so that what it writes during one
//! turn of [`drive`] goes out in one write at the end of the turn. hyper and h2 flush after
//! each step of a stream: request headers, then (on the next round, once h2 has assigned
//! window capacity) the body; response headers and data, then the trailers. Each flush was a
//! `writev` and a TCP segment of its own, and the peer woke for each. Held, a unary gRPC call
//! is one segment each way when its parts arrived together.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    /// The connection's held writes ([`ConnExec::hold_flushes`]), written out at the end of
    /// each turn.
    held: Mutex<Option<Arc<dyn Drain>>>,
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
                held: Mutex::default(),
            }),
        }
    }
}

impl ConnExec {
    /// Wraps the connection's I/O so that its writes are held until the end of each turn of
    /// the [`drive`] made with this executor, then written at once (see the module docs). Call
    /// it before `drive`; the connection must run only under that `drive`.
    pub fn hold_flushes<IO>(&self, io: IO) -> HeldFlush<IO>
    where
        IO: AsyncWrite + Unpin + Send + 'static,
    {
        let state = Arc::new(Mutex::new(Held {
            io,
            buf: Vec::new(),
            written: 0,
            failed: None,
            blocked: None,
        }));
        *self.shared.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(state.clone());
        HeldFlush { state }
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
    let held = exec
        .shared
        .held
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Drive {
        held,
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
    /// The connection's held writes, if its I/O holds them.
    held: Option<Arc<dyn Drain>>,
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
        let held = this.held.as_deref();
        for _ in 0..MAX_ROUNDS {
            let mut woken = shared.woken.swap(0, SeqCst);
            if woken == 0
                && let Some(h) = held
            {
                // The turn is over: what the connection wrote goes out now, as one write. If the
                // socket is full, its readiness wakes the connection, which comes back here.
                if let Poll::Ready(Err(_)) =
                    h.poll_drain(&mut Context::from_waker(&this.conn_waker))
                {
                    // The connection learns of it on its next write.
                    woken = CONN;
                }
                woken |= shared.woken.swap(0, SeqCst);
            }
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
        // Still busy: let the worker run other tasks first, once this turn's writes are out.
        if let Some(h) = held {
            let _ = h.poll_drain(&mut Context::from_waker(&this.conn_waker));
        }
        shared.polling.store(false, SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Most bytes held before a write goes through at once.
const MAX_HELD: usize = 64 * 1024;

/// Writes held for the end of a turn, as [`Drive`] sees them.
trait Drain: Send + Sync {
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

struct Held<IO> {
    io: IO,
    /// Bytes written by the connection; `buf[written..]` has not reached `io` yet.
    buf: Vec<u8>,
    written: usize,
    /// A write of held bytes failed; the connection's next write gets this error.
    failed: Option<(io::ErrorKind, String)>,
    /// The task whose write or shutdown waits for the held bytes to go out. The socket keeps
    /// one write waker, and [`Drive`]'s own drain at the end of each turn replaces this task's
    /// with the connection's, so the drain that empties the buffer wakes this task itself.
    /// Without it, an HTTP/2 client connection, whose I/O runs as a spawned future, was never
    /// woken once its socket filled, and uploads stalled for good.
    blocked: Option<Waker>,
}

impl<IO: AsyncWrite + Unpin> Held<IO> {
    /// Writes the held bytes to `io` and flushes it.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let r = Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]);
            match r {
                Poll::Ready(Ok(0)) => return self.fail(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return self.fail(e),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > MAX_HELD {
            self.buf = Vec::new();
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Err(e)) => self.fail(e),
            other => other,
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<io::Result<()>> {
        self.failed = Some((e.kind(), e.to_string()));
        self.buf = Vec::new();
        self.written = 0;
        Poll::Ready(Err(e))
    }

    fn failed(&self) -> Option<io::Error> {
        self.failed
            .as_ref()
            .map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }
}

impl<IO: AsyncWrite + Unpin + Send> Drain for Mutex<Held<IO>> {
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = self.lock().unwrap_or_else(|e| e.into_inner());
        let drained = match held.failed {
            Some(_) => Poll::Ready(Ok(())),
            None => held.poll_drain(cx),
        };
        if drained.is_ready()
            && let Some(w) = held.blocked.take()
        {
            w.wake();
        }
        drained
    }
}

/// A connection's I/O whose writes are held until the end of its [`drive`] turn; made by
/// [`ConnExec::hold_flushes`]. A flush returns at once; [`Drive`] writes the held bytes when
/// the turn ends. Beyond [`MAX_HELD`] bytes, a write first writes what is held.
pub struct HeldFlush<IO> {
    state: Arc<Mutex<Held<IO>>>,
}

impl<IO> HeldFlush<IO> {
    fn held(&self) -> std::sync::MutexGuard<'_, Held<IO>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for HeldFlush<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.held().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> HeldFlush<IO> {
    /// Makes room for `len` more held bytes: writes what is held first when it would pass
    /// [`MAX_HELD`].
    fn poll_room(held: &mut Held<IO>, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if let Some(e) = held.failed() {
            return Poll::Ready(Err(e));
        }
        if held.buf.len() + len > MAX_HELD && held.written < held.buf.len() {
            return held.poll_drain_for(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> Held<IO> {
    /// [`Held::poll_drain`] for the connection's own write or shutdown: when the socket is
    /// full, remembers the task to wake once [`Drive`] has written the held bytes.
    fn poll_drain_for(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let drained = self.poll_drain(cx);
        if drained.is_pending() {
            self.blocked = Some(cx.waker().clone());
        }
        drained
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for HeldFlush<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut held = self.held();
        std::task::ready!(Self::poll_room(&mut held, cx, data.len()))?;
        held.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        let mut held = self.held();
        std::task::ready!(Self::poll_room(&mut held, cx, len))?;
        held.buf.reserve(len);
        for b in bufs {
            held.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Held: [`Drive`] writes and flushes at the end of the turn.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.held().failed() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = self.held();
        if held.failed.is_none() {
            std::task::ready!(held.poll_drain_for(cx))?;
        }
        Pin::new(&mut held.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the writes that reach the socket.
    struct Counting {
        io: tokio::io::DuplexStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_write(cx, data);
            if let Poll::Ready(Ok(_)) = r {
                self.writes.fetch_add(1, SeqCst);
            }
            r
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    #[tokio::test]
    async fn what_a_turn_writes_and_flushes_goes_out_in_one_write() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(1024);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let exec = ConnExec::default();
        let mut io = exec.hold_flushes(Counting {
            io: near,
            writes: writes.clone(),
        });
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        let conn = async move {
            io.write_all(b"headers").await.expect("held");
            io.flush().await.expect("held");
            io.write_all(b"+data").await.expect("held");
            io.flush().await.expect("held");
            let _ = ended.await;
            io.write_all(b"+trailers").await.expect("held");
            io.shutdown().await.expect("written");
        };
        let driven = tokio::spawn(drive(exec, conn));
        let mut got = [0u8; 12];
        far.read_exact(&mut got).await.expect("written");
        assert_eq!(&got, b"headers+data");
        assert_eq!(writes.load(SeqCst), 1, "two flushes in one turn, one write");
        end.send(()).expect("conn waits");
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.expect("shut down");
        assert_eq!(rest, b"+trailers");
        driven.await.expect("drive ends");
        assert_eq!(writes.load(SeqCst), 2);
    }
    use hyper::rt::Executor;

    /// The I/O of an HTTP/2 client connection runs in a spawned future, as hyper's `ConnTask`
    /// does. When its writes fill the socket, the drain at the end of each turn takes over the
    /// socket's one write waker; the drain that empties the held bytes must then wake the
    /// writer itself, or it waits for ever (uploads through a client sidecar stalled so).
    #[tokio::test]
    async fn a_spawned_writer_blocked_on_a_full_socket_is_woken_once_drained() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const TOTAL: usize = 4 * MAX_HELD;
        let (near, mut far) = tokio::io::duplex(4 * 1024);
        let exec = ConnExec::default();
        let mut io = exec.hold_flushes(near);
        let (wrote_all, wrote) = tokio::sync::oneshot::channel::<()>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let e = exec.clone();
        let conn = async move {
            e.execute(async move {
                for _ in 0..TOTAL / 1024 {
                    io.write_all(&[1u8; 1024]).await.expect("held");
                }
                io.flush().await.expect("held");
                let _ = wrote_all.send(());
                // Like the connection, the writer keeps the I/O until it ends.
                let _ = stopped.await;
            });
        };
        let driven = tokio::spawn(drive(exec, conn));
        let mut got = vec![0u8; TOTAL];
        tokio::time::timeout(std::time::Duration::from_secs(10), far.read_exact(&mut got))
            .await
            .expect("every byte reaches the peer within 10 s")
            .expect("read");
        tokio::time::timeout(std::time::Duration::from_secs(10), wrote)
            .await
            .expect("the writer finishes")
            .expect("writer");
        stop.send(()).expect("writer waits");
        driven.await.expect("drive ends");
    }

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
