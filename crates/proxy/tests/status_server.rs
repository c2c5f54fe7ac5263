//! The status servers (15020, 15021, 15090) over real loopback sockets, with a fake app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::status::{
    AppMetrics, KubeAppProbers, Readiness, StatusInputs, response, serve_http, text,
};
use proxy::telemetry::{MetricLabels, Reporter, RequestRecord, Telemetry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

async fn call(addr: SocketAddr, method: &str, path: &str, extra: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n{extra}Content-Length: 0\r\n\r\n",
        addr.port()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A fake app: `/status/<code>`, `/redirect`, `/slow`, `/metrics`; records the last Host header.
async fn fake_app(stop: CancellationToken) -> (SocketAddr, Arc<std::sync::Mutex<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let host = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = host.clone();
    tokio::spawn(serve_http(listener, stop, move |req, peer| {
        let seen = seen.clone();
        async move {
            let h = req
                .headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            *seen.lock().unwrap() = format!("{h} from {}", peer.ip());
            let path = req.uri().path().to_owned();
            if let Some(code) = path.strip_prefix("/status/") {
                let code = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
                return text(code, "app says hi");
            }
            match path.as_str() {
                "/redirect" => {
                    let mut r = text(StatusCode::FOUND, "");
                    r.headers_mut()
                        .insert("location", "/elsewhere".parse().unwrap());
                    r
                }
                "/slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    text(StatusCode::OK, "late")
                }
                "/metrics" => response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    "# TYPE app_hits_total counter\napp_hits_total 42\n",
                ),
                _ => text(StatusCode::NOT_FOUND, ""),
            }
        }
    }));
    (addr, host)
}

/// A fake gRPC health server answering `status` (1 = SERVING, 2 = NOT_SERVING).
async fn fake_grpc(status: u8) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                            Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let body = StreamBody::new(futures_util::stream::iter(frames));
                        let mut resp = Response::new(body);
                        resp.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

struct Status {
    addr: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
    drains: Arc<AtomicUsize>,
    inputs: Arc<StatusInputs>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(app: SocketAddr, grpc_ok: SocketAddr, grpc_bad: SocketAddr) -> Status {
    let telemetry = Telemetry::without_access_log();
    let mut r = RequestRecord::new(
        SystemTime::now(),
        Arc::new(MetricLabels::unknown(Reporter::Destination)),
    );
    r.response_code = 200;
    telemetry.request(r);
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // bound then dropped: refuses
    let p = app.port();
    let probers = format!(
        r#"{{"/app-health/httpbin/livez":{{"httpGet":{{"path":"/status/200","port":{p},"scheme":"HTTP"}},"timeoutSeconds":1}},
            "/app-health/httpbin/readyz":{{"httpGet":{{"path":"status/503","port":{p}}},"timeoutSeconds":1}},
            "/app-health/httpbin/startupz":{{"httpGet":{{"path":"/redirect","port":{p}}}}},
            "/app-health/slow/livez":{{"httpGet":{{"path":"/slow","port":{p}}},"timeoutSeconds":1}},
            "/app-health/tcp/livez":{{"tcpSocket":{{"port":{p}}}}},
            "/app-health/tcp/readyz":{{"tcpSocket":{{"port":{closed}}}}},
            "/app-health/grpc/livez":{{"grpc":{{"port":{}}}}},
            "/app-health/grpc/readyz":{{"grpc":{{"port":{},"service":"x"}}}}}}"#,
        grpc_ok.port(),
        grpc_bad.port()
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let readiness = Readiness::new();
    let shutdown = CancellationToken::new();
    let drains = Arc::new(AtomicUsize::new(0));
    let d = drains.clone();
    let mut inputs = StatusInputs::new(telemetry, readiness.clone(), shutdown.clone());
    inputs.app_probers = KubeAppProbers::parse(&probers).unwrap();
    inputs.app_metrics = AppMetrics::parse(
        &format!(r#"{{"scrape":"true","path":"/metrics","port":"{p}"}}"#),
        addr.port(),
    )
    .unwrap();
    inputs.drain = Arc::new(move || {
        d.fetch_add(1, Ordering::SeqCst);
    });
    let inputs = Arc::new(inputs);
    let task = tokio::spawn(proxy::status::serve_status(listener, inputs.clone()));
    Status {
        addr,
        readiness,
        shutdown,
        drains,
        inputs,
        task,
    }
}

async fn setup() -> (Status, Arc<std::sync::Mutex<String>>, CancellationToken) {
    let stop = CancellationToken::new();
    let (app, host) = fake_app(stop.clone()).await;
    let s = start(app, fake_grpc(1).await, fake_grpc(2).await).await;
    (s, host, stop)
}

#[tokio::test]
async fn http_probes_forward_to_the_app() {
    let (s, host, _stop) = setup().await;
    let (status, _, body) = call(
        s.addr,
        "GET",
        "/app-health/httpbin/livez",
        "User-Agent: kube-probe/1.33\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, "app says hi");
    let seen = host.lock().unwrap().clone();
    let app_port = s.inputs.app_metrics.as_ref().unwrap().port;
    assert_eq!(
        seen,
        format!("localhost:{app_port} from 127.0.0.6"),
        "Host rewritten to the app port, source 127.0.0.6"
    );

    let (status, _, _) = call(s.addr, "GET", "/app-health/httpbin/readyz", "").await;
    assert_eq!(status, 503);
    let (status, _, _) = call(s.addr, "GET", "/app-health/httpbin/startupz", "").await;
    assert_eq!(status, 200, "a redirect counts as success");
    let (status, _, _) = call(s.addr, "GET", "/app-health/slow/livez", "").await;
    assert_eq!(status, 500, "timeout");
    let (status, _, body) = call(s.addr, "GET", "/app-health/nope/livez", "").await;
    assert_eq!(status, 400);
    assert!(body.contains("/app-health/nope/livez"));
}

#[tokio::test]
async fn tcp_and_grpc_probes() {
    let (s, _, _stop) = setup().await;
    assert_eq!(
        call(s.addr, "GET", "/app-health/tcp/livez", "").await.0,
        200
    );
    assert_eq!(
        call(s.addr, "GET", "/app-health/tcp/readyz", "").await.0,
        500
    );
    assert_eq!(
        call(s.addr, "GET", "/app-health/grpc/livez", "").await.0,
        200
    );
    assert_eq!(
        call(s.addr, "GET", "/app-health/grpc/readyz", "").await.0,
        500
    );
}

#[tokio::test]
async fn merged_metrics() {
    let (s, _, _stop) = setup().await;
    let (status, head, body) =
        call(s.addr, "GET", "/stats/prometheus", "Accept: text/plain\r\n").await;
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let ours = body
        .find("# TYPE istio_requests_total counter")
        .expect("proxy metrics");
    let app = body.find("app_hits_total 42").expect("app metrics");
    assert!(ours < app, "the app's metrics come last");
    assert_eq!(call(s.addr, "GET", "/metrics", "").await.0, 200);
}

#[tokio::test]
async fn merged_metrics_without_a_reachable_app_still_has_ours() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (app, _) = fake_app(CancellationToken::new()).await;
    let s = start(app, closed, closed).await;
    // Point the metrics at the closed port.
    let mut inputs = StatusInputs::new(
        s.inputs.telemetry.clone(),
        Readiness::new(),
        CancellationToken::new(),
    );
    inputs.app_metrics = Some(AppMetrics {
        port: closed.port(),
        path: "/metrics".into(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy::status::serve_status(listener, Arc::new(inputs)));
    let (status, _, body) = call(addr, "GET", "/stats/prometheus", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("istio_requests_total{"));
}

#[tokio::test]
async fn readiness_drain_and_quit() {
    let (s, _, _stop) = setup().await;
    assert_eq!(call(s.addr, "GET", "/healthz/ready", "").await.0, 503);
    s.readiness.set_ready(true);
    assert_eq!(call(s.addr, "GET", "/healthz/ready", "").await.0, 200);

    assert_eq!(call(s.addr, "GET", "/drain", "").await.0, 405);
    assert_eq!(call(s.addr, "POST", "/drain", "").await.0, 200);
    assert_eq!(s.drains.load(Ordering::SeqCst), 1);

    assert_eq!(call(s.addr, "GET", "/quitquitquit", "").await.0, 405);
    assert!(!s.shutdown.is_cancelled());
    let (status, _, body) = call(s.addr, "POST", "/quitquitquit", "").await;
    assert_eq!((status, body.as_str()), (200, "OK"));
    assert!(s.shutdown.is_cancelled());
    tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .expect("status server stops")
        .unwrap();
}

#[tokio::test]
async fn readiness_and_prometheus_ports() {
    let telemetry = Telemetry::without_access_log();
    telemetry.request(RequestRecord::new(
        SystemTime::now(),
        Arc::new(MetricLabels::unknown(Reporter::Source)),
    ));
    let readiness = Readiness::new();
    let shutdown = CancellationToken::new();
    let mut inputs = StatusInputs::new(telemetry, readiness.clone(), shutdown.clone());
    inputs.app_metrics = Some(AppMetrics {
        port: 1,
        path: "/metrics".into(),
    });
    let inputs = Arc::new(inputs);

    let l15021 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a15021 = l15021.local_addr().unwrap();
    let l15090 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a15090 = l15090.local_addr().unwrap();
    let r = tokio::spawn(proxy::status::serve_readiness(l15021, inputs.clone()));
    let p = tokio::spawn(proxy::status::serve_prometheus(l15090, inputs.clone()));

    assert_eq!(call(a15021, "GET", "/healthz/ready", "").await.0, 503);
    readiness.set_ready(true);
    assert_eq!(call(a15021, "GET", "/healthz/ready", "").await.0, 200);
    assert_eq!(call(a15021, "GET", "/stats/prometheus", "").await.0, 404);

    let (status, head, body) = call(a15090, "GET", "/stats/prometheus", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("version=0.0.4"));
    assert!(
        body.contains("# TYPE istio_requests_total counter"),
        "{body}"
    );
    assert_eq!(call(a15090, "GET", "/healthz/ready", "").await.0, 404);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), async {
        r.await.unwrap();
        p.await.unwrap();
    })
    .await
    .expect("servers stop on shutdown");
}
