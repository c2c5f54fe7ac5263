//! The ingress gateway on the host's loopback, as `kind` users map a port: `127.0.0.1:<port>`
//! on the host is forwarded to a ready gateway pod (the Service port 80 to its 8080, 443 to its
//! 8443).
//!
//! The forwarder lives in `ama up`'s own process. The host has no route to the pods (they sit
//! behind the bridge in a namespace of their own), so each upstream socket is made inside the
//! bridge's network namespace: one thread enters it (`setns(2)` applies to the calling thread
//! only) and makes sockets on request; a socket keeps the namespace it was made in, so it is
//! connected and used from the async side like any other. Bytes are copied both ways with
//! bounded buffers ([`BUFFER`] each way).
//!
//! When no gateway pod is ready (or the connection to it fails) a client's connection is closed
//! at once: nothing waits for a pod to come. Dropping the [`Forwarder`] (at `ama down`) closes
//! the listeners and every connection, and ends the namespace thread.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Buffer of each direction of a connection.
pub const BUFFER: usize = 16 * 1024;
/// How long a connection to the gateway pod may take before the client is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections open at once per listener; more are closed at once.
const MAX_CONNECTIONS: usize = 1024;

/// Where each Service port goes now: the Service port (80, 443) to a ready pod's address and
/// target port. Empty while no gateway pod is ready.
pub type Upstreams = BTreeMap<u16, SocketAddrV4>;

/// Makes TCP sockets inside one network namespace, from a thread that entered it.
#[derive(Clone)]
pub struct NetnsSockets {
    requests: mpsc::Sender<oneshot::Sender<io::Result<TcpSocket>>>,
}

impl NetnsSockets {
    /// Starts the thread inside the namespace `/run/netns/<netns>`; an error if it cannot enter
    /// it. The thread ends when the last clone is dropped.
    pub fn start(netns: &str) -> io::Result<NetnsSockets> {
        let path = Path::new("/run/netns").join(netns);
        let file = File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let (requests, rx) = mpsc::channel::<oneshot::Sender<io::Result<TcpSocket>>>();
        let (entered_tx, entered_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("netns-{netns}"))
            .spawn(move || {
                let entered = setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from);
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                drop(file);
                if !ok {
                    return;
                }
                // Only the socket is made here; connecting does not need the thread.
                while let Ok(reply) = rx.recv() {
                    let _ = reply.send(TcpSocket::new_v4());
                }
            })?;
        entered_rx
            .recv()
            .map_err(|_| io::Error::other("the namespace thread ended"))??;
        Ok(NetnsSockets { requests })
    }

    /// A new IPv4 TCP socket of the namespace.
    pub async fn socket(&self) -> io::Result<TcpSocket> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(tx)
            .map_err(|_| io::Error::other("the namespace thread ended"))?;
        rx.await
            .map_err(|_| io::Error::other("the namespace thread ended"))?
    }

    /// Connects to `to` from inside the namespace, within [`CONNECT_TIMEOUT`].
    pub async fn connect(&self, to: SocketAddrV4) -> io::Result<TcpStream> {
        let socket = self.socket().await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(SocketAddr::V4(to))).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {to}"),
            )),
        }
    }
}

/// One forwarded port: the host port asked for (0: any free one) and the Service port it
/// stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// Port on 127.0.0.1 of the host.
    pub host: u16,
    /// The Service port (80, 443) whose upstream it takes.
    pub service: u16,
}

/// Why a [`Forwarder`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The thread could not enter the namespace.
    #[error("cannot enter the network namespace {netns}: {source}")]
    Netns {
        /// The namespace's name.
        netns: String,
        /// Why.
        source: io::Error,
    },
    /// A host port is taken (or not allowed).
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Bind {
        /// The port.
        port: u16,
        /// Why.
        source: io::Error,
    },
}

/// The host-side listeners and their connections.
pub struct Forwarder {
    upstreams: watch::Sender<Upstreams>,
    /// The bound host port of each Service port, in the order given.
    bound: Vec<(u16, u16)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Forwarder {
    /// Binds every `ports` on 127.0.0.1 (an error names the port that is taken) and forwards
    /// each to its Service port's upstream, reached from inside `netns`. Must run inside a Tokio
    /// runtime.
    pub async fn start(netns: &str, ports: &[PortSpec]) -> Result<Forwarder, StartError> {
        let mut listeners = Vec::new();
        for spec in ports {
            let bind = |source| StartError::Bind {
                port: spec.host,
                source,
            };
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, spec.host))
                .await
                .map_err(bind)?;
            let port = listener.local_addr().map_err(bind)?.port();
            listeners.push((listener, spec.service, port));
        }
        let sockets = NetnsSockets::start(netns).map_err(|source| StartError::Netns {
            netns: netns.to_string(),
            source,
        })?;
        let (upstreams, _) = watch::channel(Upstreams::new());
        let mut bound = Vec::new();
        let mut tasks = Vec::new();
        for (listener, service, port) in listeners {
            bound.push((service, port));
            let rx = upstreams.subscribe();
            tasks.push(tokio::spawn(serve(listener, service, rx, sockets.clone())));
        }
        Ok(Forwarder {
            upstreams,
            bound,
            tasks,
        })
    }

    /// The host port bound for `service_port`.
    pub fn host_port(&self, service_port: u16) -> Option<u16> {
        self.bound
            .iter()
            .find(|(s, _)| *s == service_port)
            .map(|(_, h)| *h)
    }

    /// Where new connections go from now on (connections already open stay where they are).
    pub fn set_upstreams(&self, upstreams: Upstreams) {
        self.upstreams.send_if_modified(|current| {
            let changed = *current != upstreams;
            *current = upstreams;
            changed
        });
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // Each task owns its listener and the JoinSet of its connections: aborting it closes
        // them all, and drops its clone of the namespace thread's channel.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Accepts on `listener` and forwards each connection to the current upstream of `service`.
async fn serve(
    listener: TcpListener,
    service: u16,
    upstreams: watch::Receiver<Upstreams>,
    sockets: NetnsSockets,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while connections.try_join_next().is_some() {}
        let Ok((client, _)) = accepted else {
            // Out of descriptors and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let upstream = upstreams.borrow().get(&service).copied();
        // No ready gateway pod, or too many connections: closed at once (dropped).
        let (Some(upstream), true) = (upstream, connections.len() < MAX_CONNECTIONS) else {
            continue;
        };
        let sockets = sockets.clone();
        connections.spawn(async move {
            let Ok(mut server) = sockets.connect(upstream).await else {
                return;
            };
            let mut client = client;
            let _ =
                tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUFFER, BUFFER)
                    .await;
        });
    }
}
