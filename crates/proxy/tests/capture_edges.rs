//! The capture listeners at their edges: connections addressed to the capture ports themselves,
//! and clients that connect and wait before they speak.

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use harness::{App, Sidecar, httpbin_yaml, server_yaml, vip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads until the proxy closes `conn`; panics unless that happens within 5 s with nothing
/// sent back.
async fn closed_without_answer(conn: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("the proxy closes the connection within 5 s");
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!(
            "the proxy answered {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

/// A connection from another pod to `<pod IP>:15006` is captured with 15006 as its original
/// destination; one to 15001 that is not redirected keeps 15001. Forwarded, each would come
/// back to the same listener without end (18,821 looping connections in 12 s, issue 13): both
/// go to BlackHoleCluster, as Envoy's virtualInbound and virtualOutbound listeners do.
#[tokio::test]
async fn the_capture_ports_addressed_directly_are_black_holed() {
    let app = App::start("httpbin").await;
    let server = Sidecar::builder(&server_yaml())
        .inbound_to(app.addr)
        .start()
        .await;
    let client = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""))
        .start()
        .await;
    for (sidecar, listener) in [(&server, server.inbound), (&client, client.outbound)] {
        let mut conn = harness::connect_via(listener, &sidecar.orig_dst, listener).await;
        conn.write_all(b"GET /headers HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        closed_without_answer(&mut conn).await;
        let line = &sidecar.log_lines(1).await[0];
        assert_eq!(line["upstream_cluster"], "BlackHoleCluster", "{line}");
        assert_eq!(line["response_flags"], "UH", "{line}");
        assert_eq!(
            line["downstream_local_address"],
            listener.to_string().as_str()
        );
    }
    assert_eq!(
        app.hits.load(Ordering::SeqCst),
        0,
        "nothing reached the app"
    );
}

/// A TCP listener that counts the connections it accepts and holds them open.
async fn counting_endpoint() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });
    (addr, accepted)
}

/// Under Istio's default (`protocolDetectionTimeout: 0s`) the sidecar waits for a client's
/// first bytes: connections that stay silent open nothing upstream (5,000 idle connections
/// took a sidecar from 42 to 148 MB when each was made opaque after 100 ms and relayed), and a
/// client that speaks late is still seen as HTTP.
#[tokio::test]
async fn silent_clients_open_nothing_upstream_and_late_ones_are_still_http() {
    let (endpoint, accepted) = counting_endpoint().await;
    let client = Sidecar::builder(&httpbin_yaml(&[endpoint], "ROUND_ROBIN", ""))
        .start()
        .await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(client.connect_outbound(vip()).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "silent clients opened upstream connections"
    );
    let late = &mut idle[0];
    late.write_all(b"GET /headers HTTP/1.1\r\nHost: httpbin-service\r\n\r\n")
        .await
        .expect("write");
    for _ in 0..500 {
        if accepted.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the late request went upstream"
    );
    drop(idle);
}
