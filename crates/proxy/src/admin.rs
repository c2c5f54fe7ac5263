//! Admin server on 127.0.0.1:15000, the endpoints of Envoy's admin API that Istio users and
//! `istioctl proxy-config` / `ama proxy-config` rely on.
//!
//! - `GET /config_dump`: the proxy's config as JSON (from [`AdminSource::config_dump`]).
//! - `GET /clusters`: clusters and endpoints as text (from [`AdminSource::clusters`]).
//! - `GET /stats`: metrics as `name: value` lines (`?filter=<substring>`, `?format=prometheus`).
//! - `GET /stats/prometheus`: metrics in Prometheus text format.
//! - `GET /logging`: the active log level; `POST /logging?level=debug` sets every logger,
//!   `?paths=a:debug,b:info` or `?<logger>=<level>` only those (the others keep theirs), through
//!   [`LogLevelControl`], as Envoy does (`ama proxy-config log`).
//! - `GET /ready`: `LIVE` (200) once ready, else `PRE_INITIALIZING` (503), like Envoy.
//! - `GET /server_info`: state and uptime as JSON.
//! - `POST /quitquitquit`: shut down.
//! - `GET /`: the list of endpoints.
//!
//! The server only ever binds loopback (the caller's choice of listener), reads no request body,
//! and shares the accept loop, timeouts and size limits of [`crate::status::serve_http`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::status::{Body, Readiness, prometheus_response, response, serve_http, text};
use crate::telemetry::Telemetry;

/// What the traffic side exposes to the admin server.
pub trait AdminSource: Send + Sync {
    /// The current configuration as JSON, for `/config_dump`.
    fn config_dump(&self) -> serde_json::Value;
    /// Clusters and their endpoints, for `/clusters` (Envoy's text layout).
    fn clusters(&self) -> String;
    /// Envoy's per-cluster counters as `/stats` lines (`cluster.<name>.<stat>: <value>`).
    fn cluster_stats(&self) -> String {
        String::new()
    }
    /// The workload certificates in use, for `/certs` (Envoy's JSON layout:
    /// `{"certificates": [{"ca_cert": [...], "cert_chain": [...]}]}`). Default: none.
    fn certs(&self) -> serde_json::Value {
        serde_json::json!({ "certificates": [] })
    }
}

/// A handle on the process's log filter (e.g. over a `tracing_subscriber::reload::Handle`).
pub trait LogLevelControl: Send + Sync {
    /// The active filter, e.g. `info` or `info,proxy::inbound=debug`.
    fn current(&self) -> String;
    /// Replaces the filter. `spec` is `level` or `target=level,...`, levels being
    /// `trace|debug|info|warn|error|off`. Returns a message for the user on failure.
    fn set(&self, spec: &str) -> Result<(), String>;
}

/// Everything the admin server needs.
pub struct AdminInputs {
    /// Config and clusters.
    pub source: Arc<dyn AdminSource>,
    /// Metrics for `/stats`.
    pub telemetry: Telemetry,
    /// Readiness for `/ready`.
    pub readiness: Readiness,
    /// Log level control for `/logging`; without it `/logging` only reports.
    pub log_level: Option<Arc<dyn LogLevelControl>>,
    /// The server stops when cancelled; `POST /quitquitquit` cancels it.
    pub shutdown: CancellationToken,
    /// When the proxy started, for `/server_info`.
    pub started: Instant,
}

impl std::fmt::Debug for AdminInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminInputs")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

const ENDPOINTS: &str = "admin commands are:
  /: this list
  /certs: print certs on machine (JSON)
  /clusters: upstream cluster status
  /config_dump: dump current configuration (JSON)
  /logging: query/change logging levels (POST ?level=<level> or ?paths=<logger>:<level>,...)
  /quitquitquit: exit the server (POST)
  /ready: print server state, return 200 if LIVE, otherwise 503
  /server_info: print server version/status information
  /stats: print server stats (?filter=<substring>, ?format=prometheus)
  /stats/prometheus: print server stats in prometheus format
";

/// Serves the admin API on `listener` until `inputs.shutdown` is cancelled.
pub async fn serve(listener: TcpListener, inputs: Arc<AdminInputs>) {
    let shutdown = inputs.shutdown.clone();
    serve_http(listener, shutdown, move |req, peer| {
        let inputs = inputs.clone();
        async move { route(&inputs, req, peer) }
    })
    .await;
}

/// A pretty-printed JSON response; `what` names the endpoint in the error text.
fn json(value: &serde_json::Value, what: &str) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => response(StatusCode::OK, "application/json", body),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{what}: {e}\n")),
    }
}

fn route(inputs: &AdminInputs, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    let post = req.method() == Method::POST;
    match req.uri().path() {
        "/" => text(StatusCode::OK, ENDPOINTS),
        "/config_dump" => json(&inputs.source.config_dump(), "config_dump"),
        "/clusters" => text(StatusCode::OK, &inputs.source.clusters()),
        "/certs" => json(&inputs.source.certs(), "certs"),
        "/stats/prometheus" => prometheus_response(&inputs.telemetry),
        "/stats" => stats(inputs, query),
        "/logging" => logging(inputs, query, post),
        "/ready" => {
            if inputs.readiness.is_ready() {
                text(StatusCode::OK, "LIVE\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n")
            }
        }
        "/server_info" => {
            let info = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "state": if inputs.readiness.is_ready() { "LIVE" } else { "PRE_INITIALIZING" },
                "uptime_current_epoch": format!("{}s", inputs.started.elapsed().as_secs()),
            });
            response(
                StatusCode::OK,
                "application/json",
                Bytes::from(info.to_string()),
            )
        }
        "/quitquitquit" => {
            if !post {
                return text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "This endpoint requires POST\n",
                );
            }
            tracing::info!("admin /quitquitquit: shutting down");
            inputs.shutdown.cancel();
            text(StatusCode::OK, "OK\n")
        }
        _ => text(StatusCode::NOT_FOUND, &format!("invalid path. {ENDPOINTS}")),
    }
}

/// Query parameters as (name, value) pairs, percent-decoded.
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (percent_decode(k), percent_decode(v))
    })
}

/// A query component decoded as a form does it: `+` is a space, `%XX` a byte; an invalid
/// escape stays as written.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn stats(inputs: &AdminInputs, query: &str) -> Response<Body> {
    let telemetry = &inputs.telemetry;
    let mut filter = None;
    let mut prometheus = false;
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "filter" => filter = Some(v),
            "format" if v == "prometheus" => prometheus = true,
            _ => {}
        }
    }
    if prometheus {
        return prometheus_response(telemetry);
    }
    let mut all = inputs.source.cluster_stats();
    all.push_str(&telemetry.encode_envoy_stats());
    let body = match filter {
        Some(f) => all
            .lines()
            .filter(|l| l.contains(&f))
            .flat_map(|l| [l, "\n"])
            .collect(),
        None => all,
    };
    text(StatusCode::OK, &body)
}

/// Envoy's level names mapped to tracing's.
fn level(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

fn logging(inputs: &AdminInputs, query: &str, post: bool) -> Response<Body> {
    let current = || match &inputs.log_level {
        Some(c) => active_loggers(&c.current()),
        None => "active loggers:\n  (log level control not available)\n".to_owned(),
    };
    if query.is_empty() {
        return text(StatusCode::OK, &current());
    }
    if !post {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "This endpoint requires POST\n",
        );
    }
    let mut spec = Vec::new();
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "level" => match level(&v) {
                Some(l) => spec.push(l.to_owned()),
                None => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        &format!("unknown logger level {v:?}\n"),
                    );
                }
            },
            "paths" => {
                for p in v.split(',').filter(|p| !p.is_empty()) {
                    let Some((target, lv)) = p.rsplit_once(':') else {
                        return text(
                            StatusCode::BAD_REQUEST,
                            &format!("paths: {p:?} is not <logger>:<level>\n"),
                        );
                    };
                    let Some(l) = level(lv) else {
                        return text(
                            StatusCode::BAD_REQUEST,
                            &format!("unknown logger level {lv:?}\n"),
                        );
                    };
                    spec.push(format!("{target}={l}"));
                }
            }
            target => match level(&v) {
                Some(l) => spec.push(format!("{target}={l}")),
                None => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        &format!("unknown logger level {v:?} for {target}\n"),
                    );
                }
            },
        }
    }
    let Some(control) = &inputs.log_level else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "log level control not available\n",
        );
    };
    // `?level=` sets every logger (Envoy's semantics): the filter is replaced. Per-logger
    // changes (`paths`, `?<logger>=`) leave the other loggers as they are.
    let filter = if spec.iter().any(|d| !d.contains('=')) {
        spec.join(",")
    } else {
        merge_filter(&control.current(), &spec)
    };
    match control.set(&filter) {
        Ok(()) => text(StatusCode::OK, &current()),
        Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    }
}

/// Envoy's `/logging` listing of a filter (`warn,proxy::inbound=debug`): a `logger: level`
/// line per directive, the bare level as `default` (every other logger), in Envoy's level
/// names.
fn active_loggers(filter: &str) -> String {
    let envoy = |level: &str| match level {
        "warn" => "warning".to_owned(),
        other => other.to_owned(),
    };
    let mut out = String::from("active loggers:\n");
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (logger, level) = d.rsplit_once('=').unwrap_or(("default", d));
        out.push_str(&format!("  {logger}: {}\n", envoy(level)));
    }
    out
}

/// `current` (`info,a=debug`) with the per-target directives `updates` (`a=trace`) applied:
/// a target's earlier directive is replaced, every other directive kept in its place.
fn merge_filter(current: &str, updates: &[String]) -> String {
    let target = |d: &str| d.split_once('=').map(|(t, _)| t.to_owned());
    let mut out: Vec<String> = current
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| {
            target(d).is_none_or(|t| !updates.iter().any(|u| target(u).as_deref() == Some(&*t)))
        })
        .map(str::to_owned)
        .collect();
    out.extend(updates.iter().cloned());
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_queries() {
        let pairs: Vec<_> = query_pairs("level=debug&paths=a%3Adebug,b:info&x").collect();
        assert_eq!(
            pairs,
            vec![
                ("level".into(), "debug".into()),
                ("paths".into(), "a:debug,b:info".into()),
                ("x".into(), "".into())
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("a+b%20c"), "a b c");
    }

    #[test]
    fn per_logger_changes_keep_the_others() {
        assert_eq!(
            merge_filter("warn", &["proxy::inbound=debug".into()]),
            "warn,proxy::inbound=debug"
        );
        assert_eq!(
            merge_filter(
                "info,proxy::inbound=debug,xds=trace",
                &["proxy::inbound=error".into()]
            ),
            "info,xds=trace,proxy::inbound=error"
        );
    }

    #[test]
    fn loggers_listed_as_envoy_does() {
        assert_eq!(
            active_loggers("proxy::inbound=debug,warn"),
            "active loggers:\n  proxy::inbound: debug\n  default: warning\n"
        );
    }

    #[test]
    fn levels() {
        assert_eq!(level("warning"), Some("warn"));
        assert_eq!(level("critical"), Some("error"));
        assert_eq!(level("DEBUG"), Some("debug"));
        assert_eq!(level("loud"), None);
    }
}
