//! Readiness checks, made from inside a pod's network namespace by a short-lived thread that
//! enters it (`setns(2)` applies to the calling thread only), so `127.0.0.1` is the pod's own
//! loopback and no helper program is needed.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use crate::launch::Probe;

/// How long one check may take.
const TIMEOUT: Duration = Duration::from_secs(1);

/// Runs `f` on a new thread inside network namespace `netns` and returns its result.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let path = Path::new("/run/netns").join(netns);
    let file = File::open(&path)?;
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("probe thread panicked"))?
}

/// Whether `probe` passes, run in the current network namespace.
pub fn check(probe: &Probe) -> bool {
    match probe {
        Probe::None => true,
        // Needs the container's view: see [`exec`].
        Probe::Exec { .. } => false,
        Probe::Tcp { port } => {
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], *port)), TIMEOUT).is_ok()
        }
        Probe::Http { port, path } => {
            http_status(*port, path).is_some_and(|s| (200..400).contains(&s))
        }
    }
}

/// Whether `cmd` (an `exec` probe's command, as [`crate::process::command`] runs it in its
/// container) exits 0 within the timeout; one that does not is killed with its process group.
pub fn exec(mut cmd: std::process::Command) -> bool {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                crate::process::signal_group(child.id(), nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// `GET path` on `127.0.0.1:port`: the status code, if an HTTP/1 answer came.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).ok()?;
    s.set_read_timeout(Some(TIMEOUT)).ok()?;
    s.set_write_timeout(Some(TIMEOUT)).ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(m) => n += m,
        }
    }
    let text = std::str::from_utf8(&head[..n]).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn http_and_tcp_checks_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf);
            c.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        });
        assert_eq!(http_status(port, "/healthz/ready"), Some(503));
        server.join().unwrap();
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!check(&Probe::Tcp { port: closed }));
        assert!(check(&Probe::None));
    }
}
