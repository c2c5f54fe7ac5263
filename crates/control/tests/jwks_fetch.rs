//! Discovery's `jwksUri` fetches against a local HTTP server the test starts: a key set, a
//! 404, a server that does not answer in time, a body that is no key set, OpenID Connect
//! discovery, a refresh that picks up a change (and a failed one that keeps the last set), a
//! fetched set reaching the model through a push, and HTTPS verified against the system's roots
//! (a server whose CA the system does not trust is refused).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::objects::parse_stream;
use bytes::Bytes;
use control::jwks::{FetchError, JwksCache, JwksFetcher, client, fetch, fetch_source};
use control::model::security::JwksSource;
use control::registry::ConfigStore;
use control::{PushOptions, Pusher};
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

const SET1: &str = r#"{"keys": [{"kty": "RSA", "kid": "1", "e": "AQAB", "n": "abc"}]}"#;
const SET2: &str = r#"{"keys": [{"kty": "RSA", "kid": "2", "e": "AQAB", "n": "def"}]}"#;

/// What the server answers.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: String,
    /// Wait this long before answering.
    delay: Duration,
}

/// A local HTTP/1 server answering `/jwks.json` with the current [`Reply`], the OpenID Connect
/// discovery document at `/.well-known/openid-configuration` (naming `/jwks.json`), and 404
/// elsewhere.
struct Server {
    addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reply = Arc::new(Mutex::new(Reply {
            status: 200,
            body: SET1.to_string(),
            delay: Duration::ZERO,
        }));
        let shared = Arc::clone(&reply);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let r = match req.uri().path() {
                            "/jwks.json" => shared.lock().expect("lock").clone(),
                            "/.well-known/openid-configuration" => Reply {
                                status: 200,
                                body: format!(
                                    "{{\"issuer\": \"http://{addr}\", \"jwks_uri\": \"http://{addr}/jwks.json\"}}"
                                ),
                                delay: Duration::ZERO,
                            },
                            _ => Reply {
                                status: 404,
                                body: String::new(),
                                delay: Duration::ZERO,
                            },
                        };
                        async move {
                            tokio::time::sleep(r.delay).await;
                            let mut resp = Response::new(Full::new(Bytes::from(r.body)));
                            *resp.status_mut() = StatusCode::from_u16(r.status).expect("status");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server { addr, reply }
    }

    fn uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn set(&self, status: u16, body: &str, delay: Duration) {
        *self.reply.lock().expect("lock") = Reply {
            status,
            body: body.to_string(),
            delay,
        };
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn fetch_success_404_timeout_and_bad_json() {
    let server = Server::start().await;
    let client = client();
    assert_eq!(
        fetch(&client, &server.uri(), TIMEOUT)
            .await
            .expect("fetched"),
        SET1
    );

    server.set(404, "not here", Duration::ZERO);
    let e = fetch(&client, &server.uri(), TIMEOUT).await.unwrap_err();
    assert!(
        matches!(e, FetchError::Status(StatusCode::NOT_FOUND)),
        "{e}"
    );
    assert_eq!(e.to_string(), "answered 404 Not Found");

    server.set(200, "{\"keys\": [", Duration::ZERO);
    let e = fetch(&client, &server.uri(), TIMEOUT).await.unwrap_err();
    assert!(matches!(e, FetchError::NotJwks(_)), "{e}");

    server.set(200, "{\"issuer\": \"x\"}", Duration::ZERO);
    let e = fetch(&client, &server.uri(), TIMEOUT).await.unwrap_err();
    assert_eq!(e.to_string(), "not a JSON Web Key Set: no \"keys\" list");

    // The rule's timeout bounds the whole exchange.
    server.set(200, SET1, Duration::from_secs(60));
    let e = fetch(&client, &server.uri(), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Timeout(_)), "{e}");

    // Nothing listens there.
    let e = fetch(&client, "http://127.0.0.1:1/jwks.json", TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Request(_)), "{e}");

    let e = fetch(&client, "ftp://127.0.0.1/jwks.json", TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Uri(_)), "{e}");
}

#[tokio::test]
async fn openid_connect_discovery() {
    let server = Server::start().await;
    let client = client();
    let source = |path: &str| JwksSource {
        uri: format!("http://{}{path}", server.addr),
        timeout: TIMEOUT,
        discover: true,
    };
    assert_eq!(
        fetch_source(&client, &source("/.well-known/openid-configuration"))
            .await
            .expect("discovered"),
        SET1
    );
    // A discovery document that names no key set.
    let e = fetch_source(&client, &source("/jwks.json"))
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Discovery(_)), "{e}");
    let e = fetch_source(&client, &source("/nothing"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, FetchError::Status(StatusCode::NOT_FOUND)),
        "{e}"
    );
}

#[tokio::test]
async fn refresh_picks_up_a_change_and_a_failure_keeps_the_last_set() {
    let server = Server::start().await;
    let fetcher = JwksFetcher::new(Arc::new(JwksCache::new())).with_intervals(
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    let sources = [JwksSource {
        uri: server.uri(),
        timeout: TIMEOUT,
        discover: false,
    }];
    let fetched = |f: &JwksFetcher| f.cache().fetched().get(&server.uri()).cloned();

    assert!(fetcher.fetch_due(&sources).await, "a first set is a change");
    assert_eq!(fetched(&fetcher), Some(Ok(SET1.to_string())));
    assert!(!fetcher.fetch_due(&sources).await, "the same set again");

    server.set(200, SET2, Duration::ZERO);
    assert!(fetcher.fetch_due(&sources).await, "a rotated key set");
    assert_eq!(fetched(&fetcher), Some(Ok(SET2.to_string())));

    server.set(500, "oops", Duration::ZERO);
    assert!(!fetcher.fetch_due(&sources).await);
    assert_eq!(
        fetched(&fetcher),
        Some(Ok(SET2.to_string())),
        "a failed refresh keeps the last set"
    );

    // Never fetched: the failure is what the model reads (and reports).
    let fresh = JwksFetcher::new(Arc::new(JwksCache::new()));
    server.set(404, "", Duration::ZERO);
    assert!(fresh.fetch_due(&sources).await);
    assert_eq!(
        fetched(&fresh),
        Some(Err("answered 404 Not Found".to_string()))
    );
    // Not due again before its retry (1 s).
    assert!(!fresh.fetch_due(&sources).await);
}

fn authn_jwks(pusher: &Pusher) -> Option<String> {
    pusher
        .model()
        .authorizations
        .iter()
        .find_map(|a| a.request_authentication.as_ref())
        .map(|r| r.jwt_rules[0].jwks.clone())
}

#[tokio::test]
async fn a_fetched_key_set_is_pushed() {
    let server = Server::start().await;
    let (store, _changes) = ConfigStore::new();
    let pusher = Arc::new(Pusher::new(
        Arc::clone(&store),
        PushOptions::default(),
        &mut Registry::default(),
    ));
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: foo}}
spec:
  jwtRules: [{{issuer: testing@secure.istio.io, jwksUri: '{}'}}]
",
        server.uri()
    );
    let (objects, errors) = parse_stream(&yaml, "mesh.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    store.replace("mesh.yaml", objects);
    pusher.push(None, 1);
    assert_eq!(authn_jwks(&pusher).as_deref(), Some(""), "not fetched yet");

    let shutdown = tokio_util::sync::CancellationToken::new();
    let fetcher = JwksFetcher::new(Arc::clone(pusher.jwks())).with_intervals(
        Duration::from_millis(50),
        Duration::from_millis(50),
        Duration::from_millis(50),
    );
    let task = tokio::spawn(fetcher.run(Arc::clone(&pusher), shutdown.clone()));
    let pushes = pusher.pushes();
    let wait_for = |want: &'static str| {
        let pusher = Arc::clone(&pusher);
        async move {
            // Bounded: a fetcher that never pushes fails the test instead of hanging it.
            tokio::time::timeout(Duration::from_secs(10), async {
                while authn_jwks(&pusher).as_deref() != Some(want) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the model never got {want}"));
        }
    };
    wait_for(SET1).await;
    assert!(pushes.has_changed().unwrap_or(false), "it was pushed");
    server.set(200, SET2, Duration::ZERO);
    wait_for(SET2).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the fetcher stops")
        .expect("no panic");
}

#[tokio::test]
async fn https_is_verified_against_the_system_roots() {
    // A TLS server whose certificate comes from a fresh mesh CA, which no system trusts.
    let ca = Arc::new(identity::ca::CertificateAuthority::generate("cluster.local").expect("ca"));
    let mut names = control::tls::ServingNames::istiod(["localhost", "127.0.0.1"]);
    names.add("127.0.0.1");
    let cert = control::tls::ServingCertificate::new(ca, names, Duration::from_secs(3600))
        .expect("serving certificate");
    let config = control::tls::server_config(&cert, &[b"http/1.1"]).expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = Arc::new(Mutex::new(0_usize));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    *count.lock().expect("lock") += 1;
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(SET1)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let e = fetch(
        &client(),
        &format!("https://localhost:{}/jwks.json", addr.port()),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, FetchError::Request(_)), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");
    assert_eq!(
        *served.lock().expect("lock"),
        0,
        "no request went over the unverified connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_fetches_before_its_first_proxy() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("jwt.yaml"),
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: foo}}
spec:
  jwtRules: [{{issuer: testing@secure.istio.io, jwksUri: '{}'}}]
",
            server.uri()
        ),
    )
    .expect("write");
    let mut options = control::DiscoveryOptions::new(dir.path());
    options.grpc_addr = "127.0.0.1:0".parse().expect("addr");
    options.monitoring_addr = "127.0.0.1:0".parse().expect("addr");
    let discovery = control::Discovery::start(options)
        .await
        .expect("discovery starts");
    // Before any proxy can connect, the model carries the fetched set.
    assert_eq!(authn_jwks(discovery.pusher()).as_deref(), Some(SET1));
    tokio::time::timeout(Duration::from_secs(10), discovery.shutdown())
        .await
        .expect("discovery stops");
}
