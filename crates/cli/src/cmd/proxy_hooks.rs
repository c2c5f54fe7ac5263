//! `ama proxy wait` and `ama proxy request`: what Istio's `pilot-agent wait` and `pilot-agent
//! request` do in the lifecycle hooks injection writes.
//!
//! - `wait` is the proxy's postStart hook when a pod holds its apps until the proxy is ready
//!   (`holdApplicationUntilProxyStarts`): Kubernetes starts the next container only once the
//!   hook returns, so it polls the proxy's readiness (`/healthz/ready` on 15021) until it
//!   answers 200, and fails after `--timeoutSeconds`.
//! - `request` is a native sidecar's preStop hook (`request --debug-port=15020 POST drain`): one
//!   request to the proxy's status server, here `POST /drain`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// `ama proxy wait` (Istio's `pilot-agent wait`).
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// Seconds to wait for the proxy to be ready before failing.
    #[arg(long = "timeoutSeconds", default_value_t = 60)]
    pub timeout_seconds: u64,
    /// Milliseconds between checks.
    #[arg(long = "periodMillis", default_value_t = 500)]
    pub period_millis: u64,
    /// Milliseconds one check may take.
    #[arg(long = "requestTimeoutMillis", default_value_t = 500)]
    pub request_timeout_millis: u64,
    /// Readiness URL of the proxy.
    #[arg(long, default_value = "http://localhost:15021/healthz/ready")]
    pub url: String,
}

/// `ama proxy request` (Istio's `pilot-agent request`).
#[derive(clap::Args, Debug)]
pub struct RequestArgs {
    /// The HTTP method (`GET`, `POST`).
    pub method: String,
    /// The path on the proxy's status server, without its leading `/` (`drain`).
    pub path: String,
    /// Port of the proxy's status server (Istio's agent debug port).
    #[arg(long = "debug-port", default_value_t = 15020)]
    pub debug_port: u16,
}

/// Polls the readiness URL until it answers 200 or the timeout passes.
pub fn wait(a: WaitArgs) -> anyhow::Result<ExitCode> {
    let uri: hyper::Uri = a.url.parse().with_context(|| format!("--url {}", a.url))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(a.timeout_seconds);
        loop {
            let check = send(&uri, hyper::Method::GET);
            let last =
                match tokio::time::timeout(Duration::from_millis(a.request_timeout_millis), check)
                    .await
                {
                    Ok(Ok(200)) => {
                        println!("the proxy is ready");
                        return Ok(ExitCode::SUCCESS);
                    }
                    Ok(Ok(status)) => format!("{} answered {status}", a.url),
                    Ok(Err(e)) => format!("{}: {e:#}", a.url),
                    Err(_) => format!("{}: no answer within {}ms", a.url, a.request_timeout_millis),
                };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the proxy was not ready within {}s (last check: {last})",
                    a.timeout_seconds
                );
            }
            tokio::time::sleep(Duration::from_millis(a.period_millis)).await;
        }
    })
}

/// Sends one request to the proxy's status server; fails unless it answers 2xx.
pub fn request(a: RequestArgs) -> anyhow::Result<ExitCode> {
    let method: hyper::Method = a
        .method
        .to_ascii_uppercase()
        .parse()
        .with_context(|| format!("method {:?}", a.method))?;
    let url = format!(
        "http://localhost:{}/{}",
        a.debug_port,
        a.path.trim_start_matches('/')
    );
    let uri: hyper::Uri = url.parse().with_context(|| url.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let status = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), send(&uri, method))
            .await
            .map_err(|_| anyhow::anyhow!("{url}: no answer within 10s"))?
    })?;
    if (200..300).contains(&status) {
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("{url} answered {status}")
    }
}

/// One HTTP/1.1 request with an empty body; returns the status code.
async fn send(uri: &hyper::Uri, method: hyper::Method) -> anyhow::Result<u16> {
    let host = uri.host().context("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())
        .context("request")?;
    let response = sender.send_request(req).await.context("request")?;
    let status = response.status().as_u16();
    // Read the body so the connection ends cleanly; its content does not matter.
    let _ = response.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper::{Request, Response, StatusCode};

    use super::*;

    /// A status server on 127.0.0.1 that answers 503 to the first `unready` requests, then 200;
    /// returns its port and how many requests it saw.
    fn status_server(unready: usize) -> (u16, Arc<AtomicUsize>) {
        let seen = Arc::new(AtomicUsize::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let counter = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                            let n = counter.fetch_add(1, Ordering::SeqCst);
                            let status = if n < unready {
                                StatusCode::SERVICE_UNAVAILABLE
                            } else {
                                StatusCode::OK
                            };
                            async move {
                                let mut r = Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = status;
                                Ok::<_, Infallible>(r)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        (port, seen)
    }

    #[test]
    fn wait_returns_once_the_proxy_is_ready() {
        let (port, seen) = status_server(3);
        let code = wait(WaitArgs {
            timeout_seconds: 20,
            period_millis: 10,
            request_timeout_millis: 2000,
            url: format!("http://127.0.0.1:{port}/healthz/ready"),
        })
        .expect("ready");
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(seen.load(Ordering::SeqCst), 4, "three 503s, then the 200");
    }

    #[test]
    fn wait_fails_after_its_timeout_naming_the_last_answer() {
        let (port, _) = status_server(usize::MAX);
        let err = wait(WaitArgs {
            timeout_seconds: 0,
            period_millis: 10,
            request_timeout_millis: 2000,
            url: format!("http://127.0.0.1:{port}/healthz/ready"),
        })
        .expect_err("never ready");
        let text = format!("{err:#}");
        assert!(text.contains("not ready within 0s"), "{text}");
        assert!(text.contains("answered 503"), "{text}");
    }

    #[test]
    fn request_sends_the_method_and_path_and_fails_on_an_error_status() {
        let (port, seen) = status_server(1);
        let first = request(RequestArgs {
            method: "post".into(),
            path: "drain".into(),
            debug_port: port,
        });
        assert!(format!("{:#}", first.expect_err("503")).contains("/drain answered 503"));
        let second = request(RequestArgs {
            method: "POST".into(),
            path: "/drain".into(),
            debug_port: port,
        });
        assert_eq!(second.expect("200"), ExitCode::SUCCESS);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }
}
