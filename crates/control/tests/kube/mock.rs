//! A recorded API server for kube-rs, as kube-rs documents testing a client: a
//! `tower_test::mock::pair()` whose service end becomes a `kube::Client`, and a scenario task
//! that answers each request from recorded JSON (lists with a `resourceVersion`, watch streams of
//! newline-delimited `ADDED`/`MODIFIED`/`DELETED` events kept open so the test can push more).
//!
//! Every request is logged (method, path, query, content type, body) for the test to assert.
//! A request nothing was recorded for is answered like an API server that does not serve the
//! resource: `404 page not found`.

#![allow(dead_code)] // each test file uses part of it

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

/// Response bodies: whole, or a stream the test keeps feeding.
pub type ResBody = UnsyncBoxBody<Bytes, Infallible>;

/// One recorded answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A JSON body with a status.
    Json(StatusCode, String),
    /// A watch: these newline-delimited events, then the stream stays open (or closes, as the
    /// API server closes it after an `ERROR` event).
    Watch { events: String, close: bool },
}

impl Reply {
    /// `200` with the recorded file `name`.
    pub fn file(name: &str) -> Reply {
        Reply::Json(StatusCode::OK, fixture(name))
    }

    /// A watch stream starting with the events of file `name` (empty: none), kept open.
    pub fn watch(name: Option<&str>) -> Reply {
        Reply::Watch {
            events: name.map(fixture).unwrap_or_default(),
            close: false,
        }
    }
}

/// The text of `tests/kube/<name>`.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kube")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A request as the API server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Seen {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").map(String::as_str) == Some("true")
    }
}

type Key = (Method, String, bool);
type Handler = fn(&Seen) -> Reply;

/// The recorded scenario.
#[derive(Default)]
pub struct ApiServer {
    replies: Mutex<HashMap<Key, VecDeque<Reply>>>,
    /// Replies to every request on a path prefix (PATCH of ConfigMaps …), given the body.
    handlers: Mutex<Vec<(Method, String, Handler)>>,
    log: Mutex<Vec<Seen>>,
    watches: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Bytes>>>>,
    seen: Notify,
}

impl ApiServer {
    pub fn new() -> Arc<ApiServer> {
        Arc::new(ApiServer::default())
    }

    /// Queues `reply` for the next list (`watch = false`) or watch of `method path`.
    pub fn expect(&self, method: Method, path: &str, watch: bool, reply: Reply) {
        self.replies
            .lock()
            .unwrap()
            .entry((method, path.to_string(), watch))
            .or_default()
            .push_back(reply);
    }

    /// A list of `path` answered with file `list`, then a watch with the events of `watch`.
    pub fn list_watch(&self, path: &str, list: &str, watch: Option<&str>) {
        self.expect(Method::GET, path, false, Reply::file(list));
        self.expect(Method::GET, path, true, Reply::watch(watch));
    }

    /// Answers every `method` request under `prefix` with `reply(request)`.
    pub fn handle(&self, method: Method, prefix: &str, reply: Handler) {
        self.handlers
            .lock()
            .unwrap()
            .push((method, prefix.to_string(), reply));
    }

    /// Sends the events of file `name` on the open watches of `path`.
    pub fn push(&self, path: &str, name: &str) {
        let events = Bytes::from(fixture(name));
        let watches = self.watches.lock().unwrap();
        let open = watches.get(path).map(Vec::as_slice).unwrap_or_default();
        assert!(!open.is_empty(), "no watch open on {path}");
        for tx in open {
            let _ = tx.send(events.clone());
        }
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until `done` holds for the log.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Seen]) -> bool) {
        let wait = async {
            loop {
                let notified = self.seen.notified();
                if done(&self.log.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            panic!(
                "timed out waiting for {what}; requests: {:#?}",
                self.summary()
            );
        }
    }

    /// `METHOD path?query` of every request, for messages.
    pub fn summary(&self) -> Vec<String> {
        self.log()
            .iter()
            .map(|s| format!("{} {} {:?}", s.method, s.path, s.query))
            .collect()
    }

    /// A client whose requests this server answers.
    pub fn client(self: &Arc<Self>) -> kube::Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<ResBody>>();
        let server = Arc::clone(self);
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    let response = server.answer(request).await;
                    send.send_response(response);
                });
            }
        });
        kube::Client::new(service, "default")
    }

    async fn answer(&self, request: Request<kube::client::Body>) -> Response<ResBody> {
        let (parts, body) = request.into_parts();
        let body = body.collect_bytes().await.unwrap_or_default();
        let seen = Seen {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            query: parse_query(parts.uri.query().unwrap_or_default()),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        let key = (seen.method.clone(), seen.path.clone(), seen.is_watch());
        let reply = {
            let mut replies = self.replies.lock().unwrap();
            replies.get_mut(&key).and_then(VecDeque::pop_front)
        };
        let reply = reply.or_else(|| {
            self.handlers
                .lock()
                .unwrap()
                .iter()
                .find(|(m, prefix, _)| *m == seen.method && seen.path.starts_with(prefix))
                .map(|(_, _, f)| f(&seen))
        });
        let path = seen.path.clone();
        self.log.lock().unwrap().push(seen);
        self.seen.notify_waiters();
        match reply {
            Some(Reply::Json(status, text)) => json(status, text),
            Some(Reply::Watch { events, close }) => {
                let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
                if !events.is_empty() {
                    let _ = tx.send(Bytes::from(events));
                }
                if !close {
                    self.watches
                        .lock()
                        .unwrap()
                        .entry(path)
                        .or_default()
                        .push(tx);
                }
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                });
                let mut response = Response::new(StreamBody::new(stream.boxed()).boxed_unsync());
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            // Like a real API server for a group or version it does not serve.
            None => {
                let mut response =
                    Response::new(Full::new(Bytes::from("404 page not found\n")).boxed_unsync());
                *response.status_mut() = StatusCode::NOT_FOUND;
                response
            }
        }
    }
}

fn json(status: StatusCode, text: String) -> Response<ResBody> {
    let mut response = Response::new(Full::new(Bytes::from(text)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// `a=1&b=x%3Dy` → {a: 1, b: x=y}.
fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
