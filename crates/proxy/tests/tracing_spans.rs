//! Trace spans through two in-process sidecars, received by a Zipkin collector that decodes
//! what Envoy's Zipkin tracer would send (v2 JSON POSTed to `/api/v2/spans`): one request's
//! client and server spans, their parent/child structure, names and tags, and the sampling
//! decisions (the caller's flag, `x-client-trace-id`, `x-envoy-force-trace`, the percentage).

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::telemetry::{Collector, TracingOptions};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use harness::{App, Sidecar, get_req, httpbin_yaml, json, send, server_yaml, vip};

/// A Zipkin collector on 127.0.0.1: every span of every POST to `/api/v2/spans`, decoded.
struct Zipkin {
    addr: SocketAddr,
    spans: mpsc::UnboundedReceiver<Value>,
}

impl Zipkin {
    async fn start() -> Zipkin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, spans) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/api/v2/spans"
                                && req.headers()[http::header::CONTENT_TYPE] == "application/json";
                            let body = req.into_body().collect().await?.to_bytes();
                            let status = match serde_json::from_slice::<Vec<Value>>(&body) {
                                Ok(spans) if ok => {
                                    for s in spans {
                                        let _ = tx.send(s);
                                    }
                                    StatusCode::ACCEPTED
                                }
                                _ => StatusCode::BAD_REQUEST,
                            };
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = status;
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Zipkin { addr, spans }
    }

    /// The next `n` spans; panics if they do not come within 20 s.
    async fn take(&mut self, n: usize) -> Vec<Value> {
        take(&mut self.spans, n).await
    }

    /// The spans received so far.
    fn received(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(s) = self.spans.try_recv() {
            out.push(s);
        }
        out
    }
}

/// The next `n` spans a collector decoded; panics if they do not come within 20 s.
async fn take(spans: &mut mpsc::UnboundedReceiver<Value>, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), spans.recv()).await {
            Ok(Some(s)) => out.push(s),
            _ => panic!("{} of {n} spans came within 20 s: {out:?}", out.len()),
        }
    }
    out
}

fn tracing(zipkin: &Zipkin) -> TracingOptions {
    let mut o = TracingOptions::new(Collector::zipkin(zipkin.addr.to_string()), "default");
    o.node_id = "sidecar~127.0.0.1~test.default~default.svc.cluster.local".into();
    o.local_ip = Some("127.0.0.1".parse().expect("ip"));
    o.flush_interval = Duration::from_millis(50);
    o
}

/// The seed's two sidecars reporting to `zipkin`, the client sampling `percent` of new traces.
async fn mesh(zipkin: &Zipkin, percent: f64) -> (App, Sidecar, Sidecar) {
    let app = App::start("httpbin").await;
    // The server knows its service, whose port 80 its app serves on its own port: the server
    // span is named after the service port.
    let server_yaml = format!(
        "{}services:\n- {{hostname: httpbin-service.default.svc.cluster.local, name: httpbin-service, \
         namespace: default, vips: [10.109.118.31], ports: [{{name: http, port: 80}}], \
         endpoints: [{{address: 127.0.0.1, ports: {{80: {}}}, workloadUid: httpbin-uid}}]}}\n",
        server_yaml(),
        app.addr.port()
    );
    let server = Sidecar::builder(&server_yaml)
        .inbound_to(app.addr)
        .tracing(tracing(zipkin))
        .start()
        .await;
    let mut b = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""))
        .tracing(tracing(zipkin));
    b.cfg.trace_sampling = percent;
    let client = b.start().await;
    (app, server, client)
}

/// One request through the client sidecar to the seed's VIP, on a connection of its own.
async fn go(client: &Sidecar, req: Request<harness::BoxBody>) -> (Response<()>, Bytes) {
    let mut tx = client.h1(vip()).await;
    send(&mut tx, req).await
}

fn tag<'a>(span: &'a Value, k: &str) -> &'a str {
    span["tags"][k]
        .as_str()
        .unwrap_or_else(|| panic!("tag {k} missing in {span}"))
}

fn by_kind(spans: &[Value], kind: &str) -> Value {
    spans
        .iter()
        .find(|s| s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span in {spans:?}"))
        .clone()
}

/// Waits until both sidecars have sent what they queued.
async fn flush(a: &Sidecar, b: &Sidecar) {
    assert!(a.telemetry.flush(Duration::from_secs(20)).await, "flushed");
    assert!(b.telemetry.flush(Duration::from_secs(20)).await, "flushed");
}

#[tokio::test]
async fn one_request_gives_a_client_span_and_its_server_child() {
    let mut zipkin = Zipkin::start().await;
    let (_app, _server, client) = mesh(&zipkin, 100.0).await;
    let mut req = get_req("httpbin-service", "/headers?a=1");
    req.headers_mut()
        .insert("user-agent", "curl/8.5.0".parse().expect("value"));
    let (resp, body) = go(&client, req).await;
    assert_eq!(resp.status(), 200);
    let seen = json(&body);
    let h = &seen["headers"];
    assert_eq!(h["x-b3-sampled"], "1", "{seen}");

    let spans = zipkin.take(2).await;
    let c = by_kind(&spans, "CLIENT");
    let s = by_kind(&spans, "SERVER");
    // One trace: the client span is its root, the server span its child, and the app sees the
    // server span as its parent.
    assert_eq!(c["traceId"], s["traceId"]);
    assert_eq!(c["traceId"], h["x-b3-traceid"]);
    assert!(c.get("parentId").is_none(), "{c}");
    assert_eq!(s["parentId"], c["id"]);
    assert_ne!(s["id"], c["id"]);
    assert_eq!(s["id"], h["x-b3-spanid"]);
    assert_eq!(c["id"], h["x-b3-parentspanid"]);
    assert!(
        s.get("shared").is_none(),
        "Istio turns shared span context off: {s}"
    );
    assert_eq!(c["name"], "httpbin-service.default.svc.cluster.local:80/*");
    assert_eq!(s["name"], "httpbin-service.default.svc.cluster.local:80/*");
    assert_eq!(c["localEndpoint"]["serviceName"], "ubuntu.default");
    assert_eq!(s["localEndpoint"]["serviceName"], "httpbin.default");
    assert_eq!(c["localEndpoint"]["ipv4"], "127.0.0.1");
    assert!(c["timestamp"].as_u64().is_some_and(|t| t > 0), "{c}");
    assert!(c["duration"].as_u64().is_some_and(|d| d > 0), "{c}");

    for (span, service, cluster_prefix) in [
        (
            &c,
            "ubuntu",
            "outbound|80||httpbin-service.default.svc.cluster.local",
        ),
        (&s, "httpbin", "inbound|"),
    ] {
        assert_eq!(tag(span, "component"), "proxy");
        assert_eq!(tag(span, "http.method"), "GET");
        assert_eq!(tag(span, "http.status_code"), "200");
        assert_eq!(tag(span, "http.protocol"), "HTTP/1.1");
        assert_eq!(tag(span, "http.url"), "http://httpbin-service/headers?a=1");
        assert_eq!(tag(span, "user_agent"), "curl/8.5.0");
        assert_eq!(tag(span, "response_flags"), "-");
        assert_eq!(tag(span, "istio.canonical_service"), service);
        assert_eq!(tag(span, "istio.mesh_id"), "cluster.local");
        assert_eq!(tag(span, "istio.namespace"), "default");
        assert_eq!(
            tag(span, "node_id"),
            "sidecar~127.0.0.1~test.default~default.svc.cluster.local"
        );
        assert_eq!(tag(span, "guid:x-request-id"), h["x-request-id"]);
        assert!(
            tag(span, "upstream_cluster").starts_with(cluster_prefix),
            "{span}"
        );
        assert_eq!(
            tag(span, "upstream_cluster"),
            tag(span, "upstream_cluster.name")
        );
        assert_eq!(tag(span, "peer.address"), "127.0.0.1");
        assert!(
            tag(span, "response_size")
                .parse::<u64>()
                .is_ok_and(|n| n > 0)
        );
        assert!(span["tags"].get("error").is_none(), "{span}");
    }
    assert_eq!(tag(&s, "istio.canonical_revision"), "v1");
}

#[tokio::test]
async fn a_5xx_is_an_error_span() {
    let mut zipkin = Zipkin::start().await;
    let (_app, _server, client) = mesh(&zipkin, 100.0).await;
    let (resp, _) = go(&client, get_req("httpbin-service", "/status/503")).await;
    assert_eq!(resp.status(), 503);
    let spans = zipkin.take(2).await;
    for s in &spans {
        assert_eq!(tag(s, "error"), "true");
        assert_eq!(tag(s, "http.status_code"), "503");
    }
}

#[tokio::test]
async fn sampling_decisions() {
    let mut zipkin = Zipkin::start().await;
    let (_app, server, client) = mesh(&zipkin, 0.0).await;

    // 0 %, nothing asked: not sampled, no span.
    let (_, body) = go(&client, get_req("httpbin-service", "/headers")).await;
    assert_eq!(json(&body)["headers"]["x-b3-sampled"], "0");
    flush(&client, &server).await;
    assert!(zipkin.received().is_empty());

    // The caller decided yes: its decision is kept at 0 %, and both hops report.
    let mut req = get_req("httpbin-service", "/headers");
    let h = req.headers_mut();
    h.insert(
        "x-b3-traceid",
        "463ac35c9f6413ad48485a3953bb6124".parse().unwrap(),
    );
    h.insert("x-b3-spanid", "a2fb4a1d1a96d312".parse().unwrap());
    h.insert("x-b3-sampled", "1".parse().unwrap());
    go(&client, req).await;
    let spans = zipkin.take(2).await;
    let c = by_kind(&spans, "CLIENT");
    assert_eq!(c["traceId"], "463ac35c9f6413ad48485a3953bb6124");
    assert_eq!(c["parentId"], "a2fb4a1d1a96d312");

    // W3C flags: sampled, kept.
    let mut req = get_req("httpbin-service", "/headers");
    req.headers_mut().insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    go(&client, req).await;
    let spans = zipkin.take(2).await;
    assert!(
        spans
            .iter()
            .all(|s| s["traceId"] == "0af7651916cd43dd8448eb211c80319c")
    );

    // x-client-trace-id asks for a trace.
    let mut req = get_req("httpbin-service", "/headers");
    req.headers_mut()
        .insert("x-client-trace-id", "abc".parse().unwrap());
    let (_, body) = go(&client, req).await;
    assert_eq!(json(&body)["headers"]["x-b3-sampled"], "1");
    assert_eq!(zipkin.take(2).await.len(), 2);

    // The caller decided no: no span even when forced.
    let mut req = get_req("httpbin-service", "/headers");
    let h = req.headers_mut();
    h.insert(
        "x-b3-traceid",
        "463ac35c9f6413ad48485a3953bb6125".parse().unwrap(),
    );
    h.insert("x-b3-spanid", "a2fb4a1d1a96d313".parse().unwrap());
    h.insert("x-b3-sampled", "0".parse().unwrap());
    h.insert("x-client-trace-id", "abc".parse().unwrap());
    go(&client, req).await;
    flush(&client, &server).await;
    assert!(zipkin.received().is_empty());
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_spans() {
    // A collector that takes the connection and never answers: the exporter waits on its
    // first POST, the queue (1 span) fills, and the rest are dropped and counted.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let app = App::start("httpbin").await;
    let mut o = TracingOptions::new(Collector::zipkin(addr.to_string()), "default");
    o.queue_capacity = 1;
    o.min_flush_spans = 1;
    o.request_timeout = Duration::from_secs(600);
    let server = Sidecar::builder(&server_yaml())
        .inbound_to(app.addr)
        .start()
        .await;
    let mut b = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", "")).tracing(o);
    b.cfg.trace_sampling = 100.0;
    let client = b.start().await;
    for _ in 0..6 {
        let (resp, _) = go(&client, get_req("httpbin-service", "/headers")).await;
        assert_eq!(resp.status(), 200);
    }
    // At most one span in the exporter's hands and one in the queue.
    assert!(
        client.telemetry.spans_dropped() >= 4,
        "{}",
        client.telemetry.spans_dropped()
    );
    let stats = client.telemetry.encode_envoy_stats();
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("ama_tracing_spans_dropped_total: ") && !l.ends_with(" 0")),
        "{stats}"
    );
    hold.abort();
}

mod otlp {
    //! An OpenTelemetry collector on 127.0.0.1, over gRPC or HTTP: every span it receives,
    //! decoded from OTLP protobuf and turned into the Zipkin shape the other tests read
    //! (hex ids, `kind`, `localEndpoint.serviceName` from the resource's `service.name`, string
    //! attributes as `tags`).

    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::Message as _;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn string(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
        match v.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            other => panic!("not a string attribute: {other:?}"),
        }
    }

    /// The request's spans in the Zipkin shape.
    pub fn decode(req: &ExportTraceServiceRequest) -> Vec<Value> {
        let mut out = Vec::new();
        for rs in &req.resource_spans {
            let resource = rs.resource.as_ref().expect("a resource");
            let service = resource
                .attributes
                .iter()
                .find(|a| a.key == "service.name")
                .map(|a| string(&a.value))
                .expect("service.name");
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    let tags: serde_json::Map<String, Value> = s
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), Value::String(string(&a.value))))
                        .collect();
                    let mut v = serde_json::json!({
                        "traceId": hex(&s.trace_id),
                        "id": hex(&s.span_id),
                        "kind": match s.kind { 2 => "SERVER", 3 => "CLIENT", _ => "OTHER" },
                        "name": s.name,
                        "localEndpoint": {"serviceName": service},
                        "tags": tags,
                        "duration": (s.end_time_unix_nano - s.start_time_unix_nano) / 1000,
                        "statusCode": s.status.as_ref().map_or(0, |st| st.code),
                    });
                    if !s.parent_span_id.is_empty() {
                        v["parentId"] = Value::String(hex(&s.parent_span_id));
                    }
                    out.push(v);
                }
            }
        }
        out
    }

    struct Receiver(mpsc::UnboundedSender<Value>);

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            for s in decode(request.get_ref()) {
                let _ = self.0.send(s);
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// A gRPC collector.
    pub async fn grpc() -> (SocketAddr, mpsc::UnboundedReceiver<Value>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Receiver(tx)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (addr, rx)
    }

    /// An HTTP collector: protobuf POSTed to `/v1/traces`.
    pub async fn http() -> (SocketAddr, mpsc::UnboundedReceiver<Value>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/v1/traces"
                                && req.headers()[http::header::CONTENT_TYPE]
                                    == "application/x-protobuf";
                            let body = req.into_body().collect().await?.to_bytes();
                            let status = match ExportTraceServiceRequest::decode(body) {
                                Ok(r) if ok => {
                                    for s in decode(&r) {
                                        let _ = tx.send(s);
                                    }
                                    StatusCode::OK
                                }
                                _ => StatusCode::BAD_REQUEST,
                            };
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = status;
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, rx)
    }
}

/// The seed's two sidecars exporting OTLP to `collector`, the client sampling everything.
async fn otlp_mesh(collector: Collector) -> (App, Sidecar, Sidecar) {
    let opts = || {
        let mut o = TracingOptions::new(collector.clone(), "default");
        o.flush_interval = Duration::from_millis(50);
        o
    };
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&server_yaml())
        .inbound_to(app.addr)
        .tracing(opts())
        .start()
        .await;
    let mut b =
        Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", "")).tracing(opts());
    b.cfg.trace_sampling = 100.0;
    let client = b.start().await;
    (app, server, client)
}

#[tokio::test]
async fn otlp_over_grpc_and_http_carries_the_same_spans() {
    let (grpc_addr, grpc_rx) = otlp::grpc().await;
    let (http_addr, http_rx) = otlp::http().await;
    for (collector, mut rx) in [
        (
            Collector::Otlp {
                address: grpc_addr.to_string(),
                http_path: None,
            },
            grpc_rx,
        ),
        (
            Collector::Otlp {
                address: http_addr.to_string(),
                http_path: Some("/v1/traces".into()),
            },
            http_rx,
        ),
    ] {
        let (_app, _server, client) = otlp_mesh(collector.clone()).await;
        let (resp, body) = go(&client, get_req("httpbin-service", "/status/500")).await;
        assert_eq!(resp.status(), 500, "{}", String::from_utf8_lossy(&body));
        let spans = take(&mut rx, 2).await;
        let c = by_kind(&spans, "CLIENT");
        let s = by_kind(&spans, "SERVER");
        assert_eq!(c["traceId"], s["traceId"], "{collector:?}");
        assert_eq!(c["traceId"].as_str().map(str::len), Some(32));
        assert!(c.get("parentId").is_none(), "{c}");
        assert_eq!(s["parentId"], c["id"]);
        assert_eq!(c["name"], "httpbin-service.default.svc.cluster.local:80/*");
        assert_eq!(c["localEndpoint"]["serviceName"], "ubuntu.default");
        assert_eq!(s["localEndpoint"]["serviceName"], "httpbin.default");
        for span in [&c, &s] {
            assert_eq!(tag(span, "http.status_code"), "500");
            assert_eq!(tag(span, "error"), "true");
            // OpenTelemetry's STATUS_CODE_ERROR.
            assert_eq!(span["statusCode"], 2);
            assert_eq!(tag(span, "http.method"), "GET");
            assert_eq!(tag(span, "istio.namespace"), "default");
        }
        assert_eq!(tag(&c, "istio.canonical_service"), "ubuntu");
        assert_eq!(tag(&s, "istio.canonical_service"), "httpbin");
        // Counted as Envoy's OpenTelemetry tracer counts them, not as Zipkin spans (once the
        // collector has answered the export, which may come after it has the spans).
        let sent = "envoy_tracing_opentelemetry_spans_sent_total 1\n";
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !client.telemetry.encode_prometheus().contains(sent)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let metrics = client.telemetry.encode_prometheus();
        assert!(
            metrics.contains("envoy_tracing_opentelemetry_spans_sent_total 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("envoy_tracing_zipkin_spans_sent_total 0\n"),
            "{metrics}"
        );
    }
}

/// Discovery's tracing (the Telemetry API's, on the proxy's node) wins over the ProxyConfig's:
/// its sampling, collector (an address, or a service of the mesh) and tags, with no collector in
/// the ProxyConfig.
#[tokio::test]
async fn tracing_from_discovery_on_the_node() {
    let mut zipkin = Zipkin::start().await;
    let node_tracing = format!(
        "tracing: {{collector: {{protocol: ZIPKIN, host: 127.0.0.1, port: {}}}, \
         samplingBasisPoints: 10000, customTags: [{{tag: from.telemetry, literal: yes}}]}}",
        zipkin.addr.port()
    );
    // The ProxyConfig names no collector and samples nothing.
    let base = || {
        let mut o = tracing(&zipkin);
        o.collector = None;
        o
    };
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&server_yaml().replacen(
        "self: {uid: httpbin-uid}",
        &format!("self: {{uid: httpbin-uid, {node_tracing}}}"),
        1,
    ))
    .inbound_to(app.addr)
    .tracing(base())
    .start()
    .await;
    // The client's collector is a service of the mesh, reached at its endpoint as Envoy
    // reaches the provider's cluster (its VIP answers nothing).
    let zipkin_service = format!(
        "- {{hostname: zipkin.observability.svc.cluster.local, name: zipkin, namespace: observability, \
         vips: [10.96.0.99], ports: [{{name: http, port: 9411}}], \
         endpoints: [{{address: 127.0.0.1, ports: {{9411: {}}}}}]}}",
        zipkin.addr.port()
    );
    let client_tracing = "tracing: {collector: {protocol: ZIPKIN, host: zipkin.observability.svc.cluster.local, \
         port: 9411}, samplingBasisPoints: 10000, customTags: [{tag: from.telemetry, literal: yes}]}";
    let client_yaml = httpbin_yaml(&[server.inbound], "ROUND_ROBIN", &zipkin_service).replacen(
        "self: {name: ubuntu-deployment-cc86cc647-vsvbh, namespace: default}",
        &format!(
            "self: {{name: ubuntu-deployment-cc86cc647-vsvbh, namespace: default, {client_tracing}}}"
        ),
        1,
    );
    let mut b = Sidecar::builder(&client_yaml).tracing(base());
    b.cfg.trace_sampling = 0.0;
    let client = b.start().await;

    let (resp, body) = go(&client, get_req("httpbin-service", "/headers")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(&body)["headers"]["x-b3-sampled"], "1");
    let spans = zipkin.take(2).await;
    let c = by_kind(&spans, "CLIENT");
    let s = by_kind(&spans, "SERVER");
    assert_eq!(s["parentId"], c["id"]);
    assert_eq!(tag(&c, "from.telemetry"), "yes");
    assert_eq!(tag(&s, "from.telemetry"), "yes");
    drop(server);
}

/// MeshConfig `enableTracing: false` (discovery's tracing `disabled` on both proxies' nodes):
/// no tracer, as Envoy without one. No trace is started, a caller's trace headers reach the app
/// as sent (no new span id, the decision untouched), and no span is reported even for a
/// request the caller sampled.
#[tokio::test]
async fn tracing_disabled_on_the_node_passes_trace_headers_through() {
    let mut zipkin = Zipkin::start().await;
    let off = "tracing: {samplingBasisPoints: 0, disabled: true}";
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&server_yaml().replacen(
        "self: {uid: httpbin-uid}",
        &format!("self: {{uid: httpbin-uid, {off}}}"),
        1,
    ))
    .inbound_to(app.addr)
    .tracing(tracing(&zipkin))
    .start()
    .await;
    let client_yaml = httpbin_yaml(&[server.inbound], "ROUND_ROBIN", "").replacen(
        "self: {name: ubuntu-deployment-cc86cc647-vsvbh, namespace: default}",
        &format!("self: {{name: ubuntu-deployment-cc86cc647-vsvbh, namespace: default, {off}}}"),
        1,
    );
    // The ProxyConfig would sample everything: discovery's `disabled` wins.
    let client = Sidecar::builder(&client_yaml)
        .tracing(tracing(&zipkin))
        .start()
        .await;

    let (resp, body) = go(&client, get_req("httpbin-service", "/headers")).await;
    assert_eq!(resp.status(), 200);
    let seen = json(&body);
    for h in ["x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "traceparent"] {
        assert!(seen["headers"].get(h).is_none(), "{h} added: {seen}");
    }
    assert!(
        seen["headers"].get("x-request-id").is_some(),
        "x-request-id is still made: {seen}"
    );

    let mut req = get_req("httpbin-service", "/headers");
    let h = req.headers_mut();
    h.insert(
        "x-b3-traceid",
        "463ac35c9f6413ad48485a3953bb6124".parse().unwrap(),
    );
    h.insert("x-b3-spanid", "a2fb4a1d1a96d312".parse().unwrap());
    h.insert("x-b3-sampled", "1".parse().unwrap());
    let (_, body) = go(&client, req).await;
    let seen = json(&body);
    assert_eq!(
        seen["headers"]["x-b3-traceid"],
        "463ac35c9f6413ad48485a3953bb6124"
    );
    assert_eq!(seen["headers"]["x-b3-spanid"], "a2fb4a1d1a96d312");
    assert!(seen["headers"].get("x-b3-parentspanid").is_none(), "{seen}");
    flush(&client, &server).await;
    assert!(zipkin.received().is_empty(), "no span is reported");
}
