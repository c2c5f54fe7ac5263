//! `ama sample httpbin`: the part of httpbin (httpbin.org, `kennethreitz/httpbin`) the Istio
//! walkthroughs use, answering as the real one does: JSON with 2-space indent and sorted keys,
//! header names title-cased as werkzeug prints them (`X-B3-Traceid`), the proxy's
//! `X-Request-Id`, `X-Forwarded-*` … hidden unless `?show_env=1`, `origin` from
//! `X-Forwarded-For` else the peer, CORS headers on every answer.
//!
//! Endpoints: `/headers`, `/get`, `/ip`, `/user-agent`, `/status/{code[,code…]}`,
//! `/delay/{seconds}` (at most 10), `/anything[/…]` (any method: args, data, form, json).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// Headers httpbin hides unless `show_env` is in the query (its `ENV_HEADERS`).
const ENV_HEADERS: [&str; 15] = [
    "X-Varnish",
    "X-Request-Start",
    "X-Heroku-Queue-Depth",
    "X-Real-Ip",
    "X-Forwarded-Proto",
    "X-Forwarded-Protocol",
    "X-Forwarded-Ssl",
    "X-Heroku-Queue-Wait-Time",
    "X-Forwarded-For",
    "X-Heroku-Dynos-In-Use",
    "X-Forwarded-Port",
    "X-Request-Id",
    "Via",
    "Total-Route-Time",
    "Connect-Time",
];
/// The longest `/delay`.
const MAX_DELAY: u64 = 10;
/// httpbin's teapot.
const TEAPOT: &str = "\n    -=[ teapot ]=-\n\n       _...._\n     .'  _ _ `.\n    | .\"` ^ `\". _,\n    \\_;`\"---\"`|//\n      |       ;/\n      \\_     _/\n        `\"\"\"`\n";

/// How long requests in flight at shutdown may take to finish (gunicorn's `graceful_timeout`,
/// which the `kennethreitz/httpbin` image runs under).
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves httpbin on `listener` until `shutdown` completes; then stops accepting and lets the
/// requests in flight finish (up to [`GRACEFUL_TIMEOUT`]), as gunicorn does on SIGTERM, so a pod
/// being deleted answers what it was sent.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper::service::service_fn(move |req| handle(req, peer));
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACEFUL_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {GRACEFUL_TIMEOUT:?}");
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let r = Req {
        method: parts.method.clone(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| path.clone(), |p| p.to_string()),
        query: &query,
        headers: &parts.headers,
        body,
        peer,
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get_only = |resp: Response<Full<Bytes>>| {
        if r.method == Method::GET || r.method == Method::HEAD {
            resp
        } else {
            method_not_allowed()
        }
    };
    let resp = match segments.as_slice() {
        ["headers"] => get_only(json_response(json!({"headers": r.headers_json()}))),
        ["ip"] => get_only(json_response(json!({"origin": r.origin()}))),
        ["user-agent"] => get_only(json_response(
            json!({"user-agent": r.header("user-agent").unwrap_or_default()}),
        )),
        ["get"] => get_only(json_response(json!({
            "args": r.args(), "headers": r.headers_json(), "origin": r.origin(), "url": r.url(),
        }))),
        ["status", codes] => status(codes),
        ["delay", n] => match n.parse::<f64>() {
            Ok(secs) if secs >= 0.0 => {
                let secs = secs.min(MAX_DELAY as f64);
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                json_response(json!({
                    "args": r.args(), "data": r.data(), "files": {}, "form": r.form(),
                    "headers": r.headers_json(), "origin": r.origin(), "url": r.url(),
                }))
            }
            _ => not_found(),
        },
        ["anything", ..] => json_response(json!({
            "args": r.args(), "data": r.data(), "files": {}, "form": r.form(),
            "headers": r.headers_json(), "json": r.json(), "method": r.method.as_str(),
            "origin": r.origin(), "url": r.url(),
        })),
        _ => not_found(),
    };
    Ok(resp)
}

/// One request, as the handlers read it.
struct Req<'a> {
    method: Method,
    path_and_query: String,
    query: &'a str,
    headers: &'a HeaderMap,
    body: Bytes,
    peer: SocketAddr,
}

impl Req<'_> {
    fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// Headers as httpbin shows them: title-cased names, repeated ones joined by ',', the
    /// proxy's hidden unless `show_env`.
    fn headers_json(&self) -> Value {
        let show_env = query_pairs(self.query).iter().any(|(k, _)| k == "show_env");
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for name in self.headers.keys() {
            let title = title_case(name.as_str());
            if !show_env && ENV_HEADERS.contains(&title.as_str()) {
                continue;
            }
            if let Some(v) = self.header(name.as_str()) {
                out.insert(title, v);
            }
        }
        json!(out)
    }

    fn origin(&self) -> String {
        self.header("x-forwarded-for")
            .unwrap_or_else(|| self.peer.ip().to_string())
    }

    fn url(&self) -> String {
        let scheme = self
            .header("x-forwarded-proto")
            .unwrap_or_else(|| "http".to_string());
        let host = self.header("host").unwrap_or_default();
        format!("{scheme}://{host}{}", self.path_and_query)
    }

    fn args(&self) -> Value {
        multi_dict(query_pairs(self.query))
    }

    fn is_form(&self) -> bool {
        self.header("content-type")
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
    }

    fn form(&self) -> Value {
        if self.is_form() {
            multi_dict(query_pairs(&String::from_utf8_lossy(&self.body)))
        } else {
            json!({})
        }
    }

    fn data(&self) -> String {
        if self.is_form() {
            String::new()
        } else {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Python's `str.title()`: a letter after a non-letter is upper case, the others lower case
/// (`x-b3-traceid` → `X-B3-Traceid`), as werkzeug prints header names.
pub fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut prev_letter = false;
    for c in name.chars() {
        if c.is_alphabetic() {
            if prev_letter {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            prev_letter = true;
        } else {
            out.push(c);
            prev_letter = false;
        }
    }
    out
}

/// `a=1&a=2&b=3` → `[("a","1"),("a","2"),("b","3")]`, percent- and '+'-decoded.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// werkzeug's MultiDict as httpbin prints it: one value as a string, several as a list.
fn multi_dict(pairs: Vec<(String, String)>) -> Value {
    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in pairs {
        grouped.entry(k).or_default().push(v);
    }
    let map: Map<String, Value> = grouped
        .into_iter()
        .map(|(k, mut v)| {
            let value = if v.len() == 1 {
                json!(v.remove(0))
            } else {
                json!(v)
            };
            (k, value)
        })
        .collect();
    Value::Object(map)
}

/// `/status/418`, or one of `/status/200,503` at random.
fn status(codes: &str) -> Response<Full<Bytes>> {
    let choices: Option<Vec<u16>> = codes.split(',').map(|c| c.trim().parse().ok()).collect();
    let code = match choices.as_deref() {
        Some([]) | None => None,
        Some(list) => Some(list[rand::rng().random_range(0..list.len())]),
    };
    let Some(code) = code.and_then(|c| StatusCode::from_u16(c).ok()) else {
        return with_cors(
            Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .header("content-type", "text/html; charset=utf-8")
                .body(Full::new(Bytes::from_static(b"Invalid status code"))),
        );
    };
    let mut builder = Response::builder().status(code);
    let body = if code == StatusCode::IM_A_TEAPOT {
        builder = builder.header("x-more-info", "http://tools.ietf.org/html/rfc2324");
        Bytes::from_static(TEAPOT.as_bytes())
    } else {
        builder = builder.header("content-type", "text/html; charset=utf-8");
        Bytes::new()
    };
    with_cors(builder.body(Full::new(body)))
}

fn json_response(value: Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    with_cors(
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(text))),
    )
}

fn not_found() -> Response<Full<Bytes>> {
    html_error(
        StatusCode::NOT_FOUND,
        "404 Not Found",
        "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.",
    )
}

fn method_not_allowed() -> Response<Full<Bytes>> {
    html_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "405 Method Not Allowed",
        "The method is not allowed for the requested URL.",
    )
}

fn html_error(code: StatusCode, title: &str, text: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<!doctype html>\n<html lang=en>\n<title>{title}</title>\n<h1>{}</h1>\n<p>{text}</p>\n",
        title.split_once(' ').map_or(title, |(_, t)| t)
    );
    with_cors(
        Response::builder()
            .status(code)
            .header("content-type", "text/html; charset=utf-8")
            .body(Full::new(Bytes::from(body))),
    )
}

fn with_cors(built: Result<Response<Full<Bytes>>, hyper::http::Error>) -> Response<Full<Bytes>> {
    let mut resp = built.unwrap_or_else(|_| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    });
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-credentials",
        HeaderValue::from_static("true"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_case_as_werkzeug() {
        assert_eq!(title_case("x-b3-traceid"), "X-B3-Traceid");
        assert_eq!(title_case("user-agent"), "User-Agent");
        assert_eq!(
            title_case("x-forwarded-client-cert"),
            "X-Forwarded-Client-Cert"
        );
        assert_eq!(title_case("x-envoy-attempt-count"), "X-Envoy-Attempt-Count");
    }

    #[test]
    fn query_args_as_multi_dict() {
        let args = multi_dict(query_pairs("a=1&a=2&b=x+y%21&show_env"));
        assert_eq!(args, json!({"a": ["1", "2"], "b": "x y!", "show_env": ""}));
        assert_eq!(decode("%zz%4"), "%zz%4");
    }

    async fn get(port: u16, path: &str, extra: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: httpbin-service\r\nUser-Agent: curl/8\r\nAccept: */*\r\n{extra}Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_like_httpbin() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async {
            let _ = rx.await;
        }));
        let out = get(
            port,
            "/headers",
            "X-Request-Id: abc\r\nX-B3-TraceId: 1234\r\nX-Forwarded-Proto: http\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("access-control-allow-origin: *"), "{out}");
        let body = out.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(
            body,
            "{\n  \"headers\": {\n    \"Accept\": \"*/*\",\n    \"Connection\": \"close\",\n    \"Host\": \"httpbin-service\",\n    \"User-Agent\": \"curl/8\",\n    \"X-B3-Traceid\": \"1234\"\n  }\n}\n"
        );
        let out = get(port, "/headers?show_env=1", "X-Request-Id: abc\r\n").await;
        assert!(out.contains("\"X-Request-Id\": \"abc\""), "{out}");
        let out = get(port, "/get?a=1&a=2", "X-Forwarded-For: 10.0.0.9\r\n").await;
        assert!(out.contains("\"origin\": \"10.0.0.9\""), "{out}");
        assert!(
            out.contains("\"url\": \"http://httpbin-service/get?a=1&a=2\""),
            "{out}"
        );
        assert!(
            get(port, "/status/418", "")
                .await
                .starts_with("HTTP/1.1 418")
        );
        assert!(
            get(port, "/status/503", "")
                .await
                .starts_with("HTTP/1.1 503")
        );
        assert!(get(port, "/status/x", "").await.starts_with("HTTP/1.1 400"));
        assert!(get(port, "/nope", "").await.starts_with("HTTP/1.1 404"));
        let out = get(port, "/anything/x?q=1", "").await;
        assert!(out.contains("\"method\": \"GET\""), "{out}");
        assert!(out.contains("\"json\": null"), "{out}");
        let out = get(port, "/delay/0", "").await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let _ = tx.send(());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_request_in_flight_at_shutdown_is_answered() {
        // As `ama sample httpbin` runs it: its own runtime, dropped (with every task) when
        // `serve` returns.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                serve(listener, async {
                    let _ = rx.await;
                })
                .await;
            });
        });
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        // A first answer on the connection: the server has accepted it.
        conn.write_all(b"GET /get HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
        conn.write_all(b"GET /delay/1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // Let the server read the request (it is in this process) before the shutdown.
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(()).unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut out))
            .await
            .expect("the slow request ends")
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        server.join().unwrap();
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "no longer accepting"
        );
    }
}
