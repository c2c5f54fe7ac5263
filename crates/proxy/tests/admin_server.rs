//! The admin server (15000) over a real loopback socket.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxy::admin::{AdminInputs, AdminSource, LogLevelControl};
use proxy::status::Readiness;
use proxy::telemetry::{MetricLabels, Reporter, RequestRecord, Telemetry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct FakeSource;

impl AdminSource for FakeSource {
    fn config_dump(&self) -> serde_json::Value {
        serde_json::json!({"configs": [{"@type": "type.googleapis.com/ama.Workload", "name": "httpbin"}]})
    }
    fn clusters(&self) -> String {
        "outbound|80||httpbin-service.default.svc.cluster.local::172.17.0.8:80::health_flags::healthy\n".into()
    }
}

#[derive(Default)]
struct FakeLevel(Mutex<String>);

impl LogLevelControl for FakeLevel {
    fn current(&self) -> String {
        self.0.lock().unwrap().clone()
    }
    fn set(&self, spec: &str) -> Result<(), String> {
        *self.0.lock().unwrap() = spec.to_owned();
        Ok(())
    }
}

/// Sends one raw HTTP/1.1 request, returns (status, head, body).
async fn call(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

struct Admin {
    addr: SocketAddr,
    readiness: Readiness,
    level: Arc<FakeLevel>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Admin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let telemetry = Telemetry::without_access_log();
    let mut r = RequestRecord::new(
        std::time::SystemTime::now(),
        Arc::new(MetricLabels::unknown(Reporter::Destination)),
    );
    r.response_code = 200;
    telemetry.request(r);
    let readiness = Readiness::new();
    let level = Arc::new(FakeLevel(Mutex::new("info".into())));
    let shutdown = CancellationToken::new();
    let inputs = Arc::new(AdminInputs {
        source: Arc::new(FakeSource),
        telemetry,
        readiness: readiness.clone(),
        log_level: Some(level.clone()),
        shutdown: shutdown.clone(),
        started: Instant::now(),
    });
    let task = tokio::spawn(proxy::admin::serve(listener, inputs));
    Admin {
        addr,
        readiness,
        level,
        shutdown,
        task,
    }
}

#[tokio::test]
async fn endpoints() {
    let a = start().await;

    let (status, _, body) = call(a.addr, "GET", "/").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("/config_dump") && body.contains("/stats/prometheus"),
        "{body}"
    );

    let (status, head, body) = call(a.addr, "GET", "/config_dump").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["configs"][0]["name"], "httpbin");

    let (status, _, body) = call(a.addr, "GET", "/clusters").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("outbound|80||httpbin-service.default.svc.cluster.local::"),
        "{body}"
    );

    let (status, _, body) = call(a.addr, "GET", "/stats").await;
    assert_eq!(status, 200);
    assert!(
        body.lines().any(
            |l| l.starts_with("istio_requests_total{reporter=\"destination\"")
                && l.ends_with(": 1")
        ),
        "{body}"
    );
    let (_, _, body) = call(a.addr, "GET", "/stats?filter=server_live").await;
    assert_eq!(body, "envoy_server_live: 1\n");

    let (status, head, body) = call(a.addr, "GET", "/stats/prometheus").await;
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(
        body.contains("# TYPE istio_requests_total counter"),
        "{body}"
    );
    let (_, _, body2) = call(a.addr, "GET", "/stats?format=prometheus").await;
    assert!(body2.contains("# TYPE istio_requests_total counter"));

    let (status, _, body) = call(a.addr, "GET", "/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("invalid path"));
}

#[tokio::test]
async fn ready_follows_readiness() {
    let a = start().await;
    let (status, _, body) = call(a.addr, "GET", "/ready").await;
    assert_eq!((status, body.as_str()), (503, "PRE_INITIALIZING\n"));
    a.readiness.set_ready(true);
    let (status, _, body) = call(a.addr, "GET", "/ready").await;
    assert_eq!((status, body.as_str()), (200, "LIVE\n"));
    let (_, _, info) = call(a.addr, "GET", "/server_info").await;
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["state"], "LIVE");
}

#[tokio::test]
async fn logging() {
    let a = start().await;
    let (status, _, body) = call(a.addr, "GET", "/logging").await;
    assert_eq!(status, 200);
    assert!(body.contains("info"), "{body}");

    let (status, _, _) = call(a.addr, "GET", "/logging?level=debug").await;
    assert_eq!(status, 405, "changing the level needs POST, like Envoy");

    let (status, _, body) = call(a.addr, "POST", "/logging?level=debug").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.level.current(), "debug");

    let (status, _, _) = call(
        a.addr,
        "POST",
        "/logging?paths=proxy::inbound:trace,h2:warning",
    )
    .await;
    assert_eq!(status, 200);
    // Per-logger changes keep every other logger's level, as Envoy's do.
    assert_eq!(a.level.current(), "debug,proxy::inbound=trace,h2=warn");
    let (_, _, body) = call(a.addr, "POST", "/logging?h2=error").await;
    assert_eq!(a.level.current(), "debug,proxy::inbound=trace,h2=error");
    assert_eq!(
        body,
        "active loggers:\n  default: debug\n  proxy::inbound: trace\n  h2: error\n"
    );

    let (status, _, body) = call(a.addr, "POST", "/logging?level=loud").await;
    assert_eq!(status, 400);
    assert!(body.contains("loud"), "{body}");
    assert_eq!(a.level.current(), "debug,proxy::inbound=trace,h2=error");
}

#[tokio::test]
async fn quitquitquit_stops_the_server() {
    let a = start().await;
    let (status, _, _) = call(a.addr, "GET", "/quitquitquit").await;
    assert_eq!(status, 405);
    assert!(!a.shutdown.is_cancelled());
    let (status, _, _) = call(a.addr, "POST", "/quitquitquit").await;
    assert_eq!(status, 200);
    assert!(a.shutdown.is_cancelled());
    tokio::time::timeout(Duration::from_secs(5), a.task)
        .await
        .expect("server stops")
        .unwrap();
    assert!(TcpStream::connect(a.addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn oversized_request_head_is_refused() {
    let a = start().await;
    let mut s = TcpStream::connect(a.addr).await.unwrap();
    let big = "x".repeat(64 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("answered or closed");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
}
