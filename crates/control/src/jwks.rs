//! The key sets of RequestAuthentication `jwksUri`s, fetched by discovery as istiod's JWKS
//! resolver fetches them (`pilot/pkg/model/jwks_resolver.go`), so that proxies get them inline.
//!
//! - What to fetch: the model's [`crate::model::Model::jwks_sources`] (each URI with the longest
//!   `timeout` of the rules naming it, Istio's 5 s by default): a `jwksUri`, or for a rule with
//!   neither `jwks` nor `jwksUri` the issuer's `/.well-known/openid-configuration`, whose
//!   `jwks_uri` is then fetched (istiod's OpenID Connect discovery).
//! - How: `GET` over HTTP, or HTTPS verified against the system's roots (rustls with aws-lc-rs,
//!   `rustls-native-certs` through hyper-rustls); the whole exchange within the timeout; a 2xx
//!   answer whose body is a JSON Web Key Set ([`api::security::request_authentication::
//!   jwks_problem`]), at most 1 MiB.
//! - When: at once for a URI the model names for the first time, then every
//!   [`REFRESH_INTERVAL`] (istiod's 20 minutes); a failure is retried sooner, after
//!   [`RETRY_MIN`] doubling up to [`RETRY_MAX`]. A failed refresh keeps the last set fetched
//!   (istiod keeps its cached key), with a WARN.
//! - Then: a change in what the model reads ([`JwksCache::fetched`]: a set, or why there is
//!   none) triggers a push, so proxies get the new set. Until a URI's set is fetched, its rules
//!   go out with an empty set, which fails every token of their issuer (401), as istiod's fake
//!   key set does; the push logs why at WARN, naming each rule (a model warning).
//!
//! - Service names: an `http` URL naming a Service of the mesh (`jwks.foo.svc.cluster.local`,
//!   `jwks.foo.svc`, `jwks.foo`) is fetched from one of its endpoints (pod address and target
//!   port, the `Host` header as written), as istiod reaches in-cluster servers by cluster DNS:
//!   discovery may run where pod addresses are reachable but Service names and VIPs are not
//!   resolved (`ama up`'s bridge namespace). An `https` one is fetched as written (its
//!   certificate names the host).
//!
//! The model stays pure: it reads a [`FetchedJwks`] copy taken at the start of each push.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::security::{FetchedJwks, JwksSource};
use crate::push::Pusher;

/// How often a key set fetched is fetched again (istiod's `JwtPubKeyRefreshInterval`).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// The first retry after a failed fetch; each further failure doubles it.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest wait between retries of a failing fetch.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// The largest key set read.
const MAX_BODY: usize = 1 << 20;

/// Why a key set could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URI does not parse as an `http` or `https` URL.
    #[error("not an http or https URL: {0}")]
    Uri(String),
    /// Connecting, TLS or the exchange failed.
    #[error("request failed: {0}")]
    Request(String),
    /// No whole answer within the rule's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with another status than 2xx.
    #[error("answered {0}")]
    Status(http::StatusCode),
    /// The body could not be read (or is over 1 MiB).
    #[error("reading the answer: {0}")]
    Body(String),
    /// The body is not a JSON Web Key Set.
    #[error("not a JSON Web Key Set: {0}")]
    NotJwks(String),
    /// The OpenID Connect discovery document names no key set.
    #[error("OpenID Connect discovery: {0}")]
    Discovery(String),
}

/// An HTTP and HTTPS client.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A client for `http` and `https` URLs, HTTPS verified against the system's roots. Without
/// readable system roots, HTTPS fetches fail (with a WARN now) and HTTP ones still work.
pub fn client() -> HttpsClient {
    let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(
                "no system root certificates ({e}): jwksUri fetches over HTTPS will fail"
            );
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    Client::builder(TokioExecutor::new()).build(builder.https_or_http().enable_http1().build())
}

/// Fetches the key set of `source`: its `jwksUri`, or the `jwks_uri` its OpenID Connect
/// discovery document names (each exchange within the source's timeout, as istiod's).
pub async fn fetch_source(client: &HttpsClient, source: &JwksSource) -> Result<String, FetchError> {
    fetch_source_via(client, source, &ServiceRoutes::default()).await
}

/// [`fetch_source`], reaching the Services of the mesh by `routes`.
async fn fetch_source_via(
    client: &HttpsClient,
    source: &JwksSource,
    routes: &ServiceRoutes,
) -> Result<String, FetchError> {
    if !source.discover {
        return fetch_via(client, &source.uri, source.timeout, routes).await;
    }
    let text = get(client, &source.uri, source.timeout, routes).await?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| FetchError::Discovery(format!("{}: {e}", source.uri)))?;
    match doc.get("jwks_uri").and_then(serde_json::Value::as_str) {
        Some(uri) => fetch_via(client, uri, source.timeout, routes).await,
        None => Err(FetchError::Discovery(format!(
            "{} names no jwks_uri",
            source.uri
        ))),
    }
}

/// Fetches one key set: `GET uri`, the whole exchange within `timeout`.
pub async fn fetch(
    client: &HttpsClient,
    uri: &str,
    timeout: Duration,
) -> Result<String, FetchError> {
    fetch_via(client, uri, timeout, &ServiceRoutes::default()).await
}

/// [`fetch`], reaching the Services of the mesh by `routes`.
async fn fetch_via(
    client: &HttpsClient,
    uri: &str,
    timeout: Duration,
    routes: &ServiceRoutes,
) -> Result<String, FetchError> {
    let text = get(client, uri, timeout, routes).await?;
    match api::security::request_authentication::jwks_problem(&text) {
        Some(why) => Err(FetchError::NotJwks(why)),
        None => Ok(text),
    }
}

/// `GET uri`, the whole exchange within `timeout`: the body of a 2xx answer, as text.
async fn get(
    client: &HttpsClient,
    uri: &str,
    timeout: Duration,
    routes: &ServiceRoutes,
) -> Result<String, FetchError> {
    let parsed: http::Uri = uri.parse().map_err(|e| FetchError::Uri(format!("{e}")))?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
        return Err(FetchError::Uri(uri.to_string()));
    }
    let request = routes.request(parsed)?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| FetchError::Request(error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|e| FetchError::NotJwks(e.to_string()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

/// An error and its sources, `: `-separated (hyper-util's errors say little on their own).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Where the Services of the mesh are reached from discovery: one endpoint (pod address and
/// target port) per Service hostname and port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRoutes(BTreeMap<(String, u16), std::net::SocketAddr>);

impl ServiceRoutes {
    /// The first endpoint of every port of every Service of `model`.
    pub fn of(model: &crate::model::Model) -> ServiceRoutes {
        let mut routes = BTreeMap::new();
        for service in &model.services {
            let s = &service.resource;
            for sp in &s.ports {
                if let Some(ep) = s.endpoints.first() {
                    let addr = std::net::SocketAddr::new(ep.address, s.endpoint_port(ep, sp));
                    routes.insert((s.hostname.clone(), sp.port), addr);
                }
            }
        }
        ServiceRoutes(routes)
    }

    /// The endpoint an `http` URL naming a Service reaches: `name.ns.svc.cluster.local`,
    /// `name.ns.svc` or `name.ns`, on the URL's port (80 when none).
    fn endpoint(&self, uri: &http::Uri) -> Option<std::net::SocketAddr> {
        if uri.scheme_str() != Some("http") || self.0.is_empty() {
            return None;
        }
        let host = uri.host()?.to_ascii_lowercase();
        let hostname = if host.ends_with(".svc.cluster.local") {
            host
        } else if host.ends_with(".svc") {
            format!("{host}.cluster.local")
        } else if host.split('.').count() == 2 {
            format!("{host}.svc.cluster.local")
        } else {
            return None;
        };
        self.0
            .get(&(hostname, uri.port_u16().unwrap_or(80)))
            .copied()
    }

    /// The `GET` of `uri`: to the endpoint when it names a Service (with the `Host` header as
    /// written), else as it is.
    fn request(&self, uri: http::Uri) -> Result<http::Request<Empty<Bytes>>, FetchError> {
        let mut request = http::Request::builder();
        let target = match self.endpoint(&uri) {
            Some(addr) => {
                if let Some(authority) = uri.authority() {
                    request = request.header(http::header::HOST, authority.as_str());
                }
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                format!("http://{addr}{path}")
                    .parse()
                    .map_err(|e| FetchError::Uri(format!("{e}")))?
            }
            None => uri,
        };
        request
            .uri(target)
            .body(Empty::new())
            .map_err(|e| FetchError::Uri(e.to_string()))
    }
}

/// What is known of one URI.
#[derive(Debug)]
struct Entry {
    /// The last set fetched.
    set: Option<String>,
    /// Why the last fetch failed, when it did.
    error: Option<String>,
    /// When to fetch again.
    due: Instant,
    /// Failures in a row.
    failures: u32,
}

/// The key sets fetched so far, by URI; shared by the fetcher and the [`Pusher`], which reads
/// [`JwksCache::fetched`] at each push.
#[derive(Debug, Default)]
pub struct JwksCache {
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl JwksCache {
    /// An empty cache.
    pub fn new() -> JwksCache {
        JwksCache::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the model reads: by URI, the last set fetched, or why none could be; URIs never
    /// tried yet are absent.
    pub fn fetched(&self) -> FetchedJwks {
        self.lock()
            .iter()
            .filter_map(|(uri, e)| {
                let v = match (&e.set, &e.error) {
                    (Some(set), _) => Ok(set.clone()),
                    (None, Some(error)) => Err(error.clone()),
                    (None, None) => return None,
                };
                Some((uri.clone(), v))
            })
            .collect()
    }

    /// Forgets the URIs the model no longer names.
    fn retain(&self, sources: &[JwksSource]) {
        self.lock()
            .retain(|uri, _| sources.iter().any(|s| &s.uri == uri));
    }

    /// The sources to fetch now: never tried, or due.
    fn due(&self, sources: &[JwksSource], now: Instant) -> Vec<JwksSource> {
        let entries = self.lock();
        sources
            .iter()
            .filter(|s| entries.get(&s.uri).is_none_or(|e| e.due <= now))
            .cloned()
            .collect()
    }

    /// When the next of `sources` is due (now for one never tried).
    fn next_due(&self, sources: &[JwksSource]) -> Option<Instant> {
        let entries = self.lock();
        sources
            .iter()
            .map(|s| entries.get(&s.uri).map_or_else(Instant::now, |e| e.due))
            .min()
    }
}

/// Fetches the key sets the model needs and pushes when one changes (see the module docs).
#[derive(Debug)]
pub struct JwksFetcher {
    client: HttpsClient,
    cache: Arc<JwksCache>,
    /// Where the Services named by URLs are reached, from the last model seen.
    routes: Mutex<ServiceRoutes>,
    refresh: Duration,
    retry_min: Duration,
    retry_max: Duration,
}

impl JwksFetcher {
    /// A fetcher filling `cache`, with istiod's refresh interval.
    pub fn new(cache: Arc<JwksCache>) -> JwksFetcher {
        JwksFetcher {
            client: client(),
            cache,
            routes: Mutex::default(),
            refresh: REFRESH_INTERVAL,
            retry_min: RETRY_MIN,
            retry_max: RETRY_MAX,
        }
    }

    /// Other intervals: between refreshes of a set fetched, and the first and longest wait
    /// before retrying a failed fetch.
    pub fn with_intervals(
        mut self,
        refresh: Duration,
        retry_min: Duration,
        retry_max: Duration,
    ) -> JwksFetcher {
        self.refresh = refresh;
        self.retry_min = retry_min;
        self.retry_max = retry_max;
        self
    }

    /// The cache it fills.
    pub fn cache(&self) -> &Arc<JwksCache> {
        &self.cache
    }

    /// Fetches, together, those of `sources` that are due; returns whether what the model reads
    /// changed (a new or different set, or a first failure).
    pub async fn fetch_due(&self, sources: &[JwksSource]) -> bool {
        let due = self.cache.due(sources, Instant::now());
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let routes = &routes;
        let results = futures_util::future::join_all(
            due.iter()
                .map(|s| async move { (s, fetch_source_via(&self.client, s, routes).await) }),
        )
        .await;
        let now = Instant::now();
        let mut changed = false;
        let mut entries = self.cache.lock();
        for (source, result) in results {
            let uri = &source.uri;
            let entry = entries.entry(uri.clone()).or_insert(Entry {
                set: None,
                error: None,
                due: now,
                failures: 0,
            });
            match result {
                Ok(set) => {
                    if entry.set.as_deref() != Some(set.as_str()) {
                        tracing::info!(
                            "jwksUri {uri}: key set {}",
                            if entry.set.is_some() {
                                "changed"
                            } else {
                                "fetched"
                            }
                        );
                        changed = true;
                    }
                    entry.set = Some(set);
                    entry.error = None;
                    entry.failures = 0;
                    entry.due = now + self.refresh;
                }
                Err(e) => {
                    let retry = self
                        .retry_min
                        .saturating_mul(1 << entry.failures.min(16))
                        .min(self.retry_max);
                    entry.failures = entry.failures.saturating_add(1);
                    entry.due = now + retry;
                    let error = e.to_string();
                    let new = entry.error.as_deref() != Some(error.as_str());
                    if entry.set.is_some() {
                        // The model keeps the last set and says nothing: say it here, once per
                        // new reason (its retries at DEBUG).
                        if new {
                            tracing::warn!(
                                "jwksUri {uri}: refresh failed: {error}: keeping the key set \
                                 fetched before; retrying in {retry:?}"
                            );
                        } else {
                            tracing::debug!("jwksUri {uri}: refresh failed: {error}");
                        }
                    } else {
                        // The next push logs it at WARN, naming each rule it fails.
                        changed |= new;
                        tracing::debug!("jwksUri {uri}: {error}; retrying in {retry:?}");
                    }
                    entry.error = Some(error);
                }
            }
        }
        changed
    }

    /// Runs until `shutdown`: follows the model of `pusher` for the URIs it names, fetches those
    /// due, and pushes when what the model reads changed.
    pub async fn run(self, pusher: Arc<Pusher>, shutdown: CancellationToken) {
        let mut pushes = pusher.pushes();
        loop {
            let model = pusher.model();
            let sources = model.jwks_sources.clone();
            // Only a mesh with key sets to fetch needs the Services' endpoints (every push
            // would rebuild them otherwise).
            if !sources.is_empty() {
                *self.routes.lock().unwrap_or_else(PoisonError::into_inner) =
                    ServiceRoutes::of(&model);
            }
            drop(model);
            self.cache.retain(&sources);
            let changed = tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = self.fetch_due(&sources) => changed,
            };
            if changed {
                let pusher = Arc::clone(&pusher);
                if let Err(e) = tokio::task::spawn_blocking(move || pusher.push(None, 0)).await {
                    tracing::error!("push after a jwksUri fetch failed: {e}");
                }
            }
            let next = self.cache.next_due(&sources);
            let wait = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = pushes.changed() => if r.is_err() { return },
                _ = wait => {}
            }
        }
    }
}

#[cfg(test)]
mod service_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SET: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn routes(port: u16) -> ServiceRoutes {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        ServiceRoutes(BTreeMap::from([(
            ("jwks.foo.svc.cluster.local".to_string(), 80),
            addr,
        )]))
    }

    #[test]
    fn service_names_in_their_short_forms() {
        let r = routes(8080);
        let at = |uri: &str| r.endpoint(&uri.parse().expect("a URI"));
        let want = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(at("http://jwks.foo/k"), want);
        assert_eq!(at("http://jwks.foo.svc/k"), want);
        assert_eq!(at("http://JWKS.foo.svc.cluster.local:80/k"), want);
        assert_eq!(at("http://jwks.foo:8080/k"), None, "no such Service port");
        assert_eq!(at("https://jwks.foo/k"), None, "HTTPS goes as written");
        assert_eq!(at("http://jwks/k"), None);
        assert_eq!(at("http://example.com/k"), None);
    }

    /// A key set at a Service's name is fetched from its endpoint, with the name as `Host`.
    #[tokio::test]
    async fn a_service_name_is_fetched_from_its_endpoint() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.expect("read");
                assert!(n > 0, "the request ended early");
                head.extend_from_slice(&buf[..n]);
            }
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{SET}",
                SET.len()
            );
            conn.write_all(reply.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&head).to_string()
        });
        let set = fetch_via(
            &client(),
            "http://jwks.foo/keys.json",
            Duration::from_secs(5),
            &routes(port),
        )
        .await
        .expect("fetched from the endpoint");
        assert_eq!(set, SET);
        let head = server.await.expect("server").to_ascii_lowercase();
        assert!(head.starts_with("get /keys.json http/1.1"), "{head}");
        assert!(head.contains("\r\nhost: jwks.foo\r\n"), "{head}");
    }
}
