//! The access log end to end through [`Telemetry`]: lines reach the sink off the data path,
//! `flush` waits for them, and a full queue drops and counts instead of blocking.

use std::io::Write;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use proxy::telemetry::{
    AccessLogEncoding, AccessLogOptions, AccessLogSink, MemorySink, MetricLabels, Reporter,
    RequestRecord, TcpRecord, Telemetry, TelemetryOptions,
};

fn record(i: u32) -> RequestRecord {
    let mut r = RequestRecord::new(
        SystemTime::now(),
        Arc::new(MetricLabels::unknown(Reporter::Source)),
    );
    r.method = Some(http::Method::GET);
    r.path = Some(format!("/r/{i}").parse().unwrap());
    r.protocol = Some(http::Version::HTTP_2);
    r.response_code = 200;
    r.upstream_cluster = Some("outbound|80||httpbin-service.default.svc.cluster.local".into());
    r
}

fn telemetry(encoding: AccessLogEncoding, sink: AccessLogSink, capacity: usize) -> Telemetry {
    let mut opts = AccessLogOptions::new(encoding, sink);
    opts.queue_capacity = capacity;
    Telemetry::new(TelemetryOptions {
        access_log: Some(opts),
        ..TelemetryOptions::default()
    })
    .unwrap()
}

#[tokio::test]
async fn json_lines_reach_the_sink_in_order() {
    let sink = MemorySink::new();
    let t = telemetry(AccessLogEncoding::Json, sink.sink(), 4096);
    for i in 0..100 {
        t.request(record(i));
    }
    let mut tcp = TcpRecord::new(SystemTime::now(), Reporter::Source);
    tcp.bytes_sent = 7;
    t.tcp_log(tcp);
    assert!(t.flush(Duration::from_secs(5)).await);
    let lines = sink.lines();
    assert_eq!(lines.len(), 101);
    for (i, line) in lines.iter().take(100).enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 24);
        assert_eq!(v["path"], format!("/r/{i}"));
        assert_eq!(v["protocol"], "HTTP/2");
        assert_eq!(
            v["response_code"], "200",
            "strings by default, as in the seed"
        );
        assert_eq!(
            v["upstream_cluster"],
            "outbound|80||httpbin-service.default.svc.cluster.local"
        );
    }
    let tcp: serde_json::Value = serde_json::from_str(&lines[100]).unwrap();
    assert_eq!(tcp["bytes_sent"], "7");
    assert_eq!(tcp["method"], "-");
    assert_eq!(t.access_log_dropped(), 0);
}

#[tokio::test]
async fn text_lines() {
    let sink = MemorySink::new();
    let t = telemetry(AccessLogEncoding::Text, sink.sink(), 16);
    t.request(record(1));
    assert!(t.flush(Duration::from_secs(5)).await);
    let lines = sink.lines();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with('['), "{}", lines[0]);
    assert!(lines[0].contains("] \"GET /r/1 HTTP/2\" 200 - - - \"-\" 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\" outbound|80||"), "{}", lines[0]);
}

/// A writer that blocks until released, to fill the queue.
struct Gate {
    release: Arc<Mutex<mpsc::Receiver<()>>>,
    out: MemorySink,
}

impl Write for Gate {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let _ = self.release.lock().unwrap().recv();
        self.out.write(data)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn full_queue_drops_and_counts_without_blocking() {
    let (open, release) = mpsc::channel();
    let out = MemorySink::new();
    let gate = Gate {
        release: Arc::new(Mutex::new(release)),
        out: out.clone(),
    };
    let t = telemetry(
        AccessLogEncoding::Json,
        AccessLogSink::Writer(Box::new(gate)),
        4,
    );

    let started = Instant::now();
    for i in 0..1000 {
        t.request(record(i));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "request() must not block on a stuck writer"
    );
    let dropped = t.access_log_dropped();
    // The writer holds one batch (up to 64 KiB of lines) and the queue four more.
    assert!(dropped >= 500, "dropped {dropped}");

    // Let the writer go: everything queued is written, nothing more.
    for _ in 0..2000 {
        let _ = open.send(());
    }
    assert!(t.flush(Duration::from_secs(5)).await);
    let written = out.lines().len() as u64;
    assert_eq!(
        written + dropped,
        1000,
        "written {written} dropped {dropped}"
    );
    let metrics = t.encode_prometheus();
    assert!(
        metrics.contains(&format!("ama_access_log_dropped_total {dropped}\n")),
        "{metrics}"
    );
}

#[tokio::test]
async fn disabled_access_log_still_counts_metrics() {
    let t = Telemetry::new(TelemetryOptions::default()).unwrap();
    t.request(record(1));
    assert!(t.flush(Duration::from_millis(10)).await);
    assert!(t.encode_prometheus().contains("istio_requests_total{"));
}

#[test]
fn bad_custom_format_is_an_error() {
    let mut opts = AccessLogOptions::new(AccessLogEncoding::Text, MemorySink::new().sink());
    opts.format = Some("%NOPE%".into());
    let err = Telemetry::new(TelemetryOptions {
        access_log: Some(opts),
        ..TelemetryOptions::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("accessLogFormat") && err.contains("NOPE"),
        "{err}"
    );
}

#[tokio::test]
async fn file_sink_appends() {
    let dir = std::env::temp_dir().join(format!("ama-al-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let t = telemetry(
        AccessLogEncoding::Text,
        AccessLogSink::from_mesh_config(path.to_str().unwrap()),
        8,
    );
    t.request(record(1));
    t.request(record(2));
    assert!(t.flush(Duration::from_secs(5)).await);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
