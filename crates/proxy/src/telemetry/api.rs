//! The Telemetry API's access logs and metric overrides, as discovery resolves them for this
//! proxy (`xds::AccessLogging` and `xds::MetricsConfig` on its Node resource), compiled once per
//! config: formats, CEL filters and tag values, the sinks (opened once and shared by the logs
//! that name one path) and the request headers the expressions read.
//!
//! [`Configurator::configure`] runs when a snapshot is installed and does nothing when the two
//! fields did not change. A log whose format, filter or path does not work is reported at WARN
//! naming its provider and field, and keeps its previous compiled config (or writes nothing
//! when it had none); a tag whose expression does not compile keeps its previous expression
//! (or is left standard). Neither stops the rest of the config from applying.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use xds::{AccessLog, AccessLogFormat, AccessLogging, MetricsConfig, ModeMetrics};

use super::access_log::{AccessLogger, CompiledLog, Format, LogSet, SharedSink};
use super::expr::{Expr, HeaderRefs};
use super::metrics::{MetricRules, TagRule, metric_index};
use super::{AccessLogEncoding, AccessLogSink, JsonValues, Reporter};

/// A Telemetry API config that does not work, naming the provider (or metric) and field.
#[derive(Debug, thiserror::Error)]
#[error("Telemetry {side} {what}: {field}: {message}")]
pub struct ConfigError {
    /// `client` or `server`.
    pub side: &'static str,
    /// `access log provider envoy`, `metric REQUEST_COUNT`.
    pub what: String,
    /// The field (`logFormat`, `filter.expression`, `path`, `tagOverrides.request_host`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn side_name(r: Reporter) -> &'static str {
    match r {
        Reporter::Source => "client",
        Reporter::Destination => "server",
    }
}

/// One config, compiled: what each side does instead of MeshConfig's log and the standard
/// metrics.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    client: Side,
    server: Side,
    /// The request headers the expressions of both sides read.
    pub(crate) headers: HeaderRefs,
    /// The writer thread of the logs; set when a side has logs.
    pub(crate) logger: Option<AccessLogger>,
}

impl Applied {
    /// The side that reports as `reporter`.
    pub(crate) fn side(&self, reporter: Reporter) -> &Side {
        match reporter {
            Reporter::Source => &self.client,
            Reporter::Destination => &self.server,
        }
    }
}

/// One side's logs and metrics; `None` keeps what the proxy does without the Telemetry API.
#[derive(Debug, Default)]
pub(crate) struct Side {
    pub(crate) logs: Option<Arc<LogSet>>,
    pub(crate) metrics: Option<MetricRules>,
}

/// Compiles configs and keeps what outlives one: the sinks, the last good compiled log per
/// side and provider, compiled expressions, the writer thread.
pub(crate) struct Configurator {
    /// The fields last applied, to skip a snapshot that did not change them.
    applied: Option<(Option<AccessLogging>, Option<MetricsConfig>)>,
    sinks: HashMap<String, Arc<SharedSink>>,
    last_logs: HashMap<(Reporter, String), Arc<CompiledLog>>,
    last_tags: HashMap<(Reporter, usize, String), Arc<Expr>>,
    exprs: HashMap<String, (Arc<Expr>, HeaderRefs)>,
    writer: Option<AccessLogger>,
    /// `writer` is MeshConfig's.
    shares_mesh_writer: bool,
    json_values: JsonValues,
    queue_capacity: usize,
    dropped: Counter,
}

impl std::fmt::Debug for Configurator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configurator")
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl Configurator {
    /// `mesh` is MeshConfig's writer and sink, when the proxy has one: Telemetry API logs use
    /// the same writer thread, and the same sink for the same path. `json_values` types the
    /// values of JSON logs as MeshConfig's log does.
    pub(crate) fn new(
        mesh: Option<(AccessLogger, Arc<SharedSink>)>,
        json_values: JsonValues,
        queue_capacity: usize,
        dropped: Counter,
    ) -> Configurator {
        let mut sinks = HashMap::new();
        let writer = mesh.map(|(writer, sink)| {
            sinks.insert(sink.name.clone(), sink);
            writer
        });
        Configurator {
            applied: None,
            sinks,
            last_logs: HashMap::new(),
            last_tags: HashMap::new(),
            exprs: HashMap::new(),
            shares_mesh_writer: writer.is_some(),
            writer,
            json_values,
            queue_capacity,
            dropped,
        }
    }

    /// Compiles the fields of a new snapshot's Node: `None` when they are the ones applied
    /// already, else the new state (`Some(None)`: neither field set, the proxy's own telemetry).
    pub(crate) fn configure(
        &mut self,
        logging: Option<&AccessLogging>,
        metrics: Option<&MetricsConfig>,
    ) -> Option<Option<Arc<Applied>>> {
        let input = (logging.cloned(), metrics.cloned());
        if self.applied.as_ref() == Some(&input) {
            return None;
        }
        self.applied = Some(input);
        if logging.is_none() && metrics.is_none() {
            return Some(None);
        }
        let mut applied = Applied::default();
        let mut headers = HeaderRefs::default();
        let mut any_logs = false;
        for reporter in [Reporter::Source, Reporter::Destination] {
            let logs = logging.and_then(|l| match reporter {
                Reporter::Source => l.client.as_ref(),
                Reporter::Destination => l.server.as_ref(),
            });
            let modes = metrics.and_then(|m| match reporter {
                Reporter::Source => m.client.as_ref(),
                Reporter::Destination => m.server.as_ref(),
            });
            let side = Side {
                logs: logs.map(|logs| Arc::new(self.logs(reporter, logs, &mut headers))),
                // Rules that change nothing leave the side on the standard path.
                metrics: modes
                    .map(|m| self.metrics(reporter, m, &mut headers))
                    .filter(|r| !r.is_standard()),
            };
            any_logs |= side.logs.as_ref().is_some_and(|l| !l.0.is_empty());
            match reporter {
                Reporter::Source => applied.client = side,
                Reporter::Destination => applied.server = side,
            }
        }
        applied.headers = headers;
        if any_logs {
            applied.logger = self.writer();
        }
        Some(Some(Arc::new(applied)))
    }

    /// The writer thread this started (MeshConfig had no log), if any.
    pub(crate) fn own_writer(&self) -> Option<&AccessLogger> {
        self.writer.as_ref().filter(|_| !self.shares_mesh_writer)
    }

    /// The writer thread, started on first use when MeshConfig has no log.
    fn writer(&mut self) -> Option<AccessLogger> {
        if self.writer.is_none() {
            match AccessLogger::spawn(None, self.queue_capacity, self.dropped.clone()) {
                Ok(w) => self.writer = Some(w),
                Err(e) => tracing::warn!("Telemetry access logs: {e}; no line is written"),
            }
        }
        self.writer.clone()
    }

    fn logs(&mut self, reporter: Reporter, logs: &[AccessLog], headers: &mut HeaderRefs) -> LogSet {
        let mut set = Vec::with_capacity(logs.len());
        for log in logs {
            let key = (reporter, log.provider.clone());
            let compiled = match self.compile_log(reporter, log) {
                Ok(c) => {
                    let c = Arc::new(c);
                    self.last_logs.insert(key, c.clone());
                    Some(c)
                }
                Err(e) => {
                    let previous = self.last_logs.get(&key).cloned();
                    let keeps = if previous.is_some() {
                        "keeping its previous config"
                    } else {
                        "writing nothing for it"
                    };
                    tracing::warn!("{e}; {keeps}");
                    previous
                }
            };
            if let Some(c) = compiled {
                headers.extend(&c.headers);
                set.push(c);
            }
        }
        LogSet(set)
    }

    fn compile_log(
        &mut self,
        reporter: Reporter,
        log: &AccessLog,
    ) -> Result<CompiledLog, ConfigError> {
        let error = |field: &str, message: String| ConfigError {
            side: side_name(reporter),
            what: format!("access log provider {}", log.provider),
            field: field.to_owned(),
            message,
        };
        let format = match &log.format {
            AccessLogFormat::Text(text) => {
                Format::from_mesh_config(AccessLogEncoding::Text, Some(text), self.json_values)
                    .map_err(|e| error("logFormat.text", e.0))?
            }
            AccessLogFormat::Json(labels) => Format::json_labels(labels, self.json_values)
                .map_err(|e| error("logFormat.labels", e.0))?,
        };
        let mut headers = HeaderRefs::default();
        format.note_request_headers(&mut headers);
        let filter = match &log.filter {
            Some(source) => Some(
                Expr::compile(source, &mut headers)
                    .map_err(|e| error("filter.expression", e.message))?,
            ),
            None => None,
        };
        let sink = self.sink(&log.path).map_err(|m| error("path", m))?;
        Ok(CompiledLog {
            format,
            filter,
            sink,
            headers,
        })
    }

    /// The sink of `path`, opened on first use.
    fn sink(&mut self, path: &str) -> Result<Arc<SharedSink>, String> {
        let key = match path {
            "-" => "/dev/stdout",
            p => p,
        };
        if let Some(s) = self.sinks.get(key) {
            return Ok(s.clone());
        }
        let sink = match key {
            "" => return Err("empty".to_owned()),
            "/dev/stdout" => AccessLogSink::Stdout,
            p => AccessLogSink::File(PathBuf::from(p)),
        };
        let sink = SharedSink::open(sink).map_err(|e| e.to_string())?;
        self.sinks.insert(key.to_owned(), sink.clone());
        Ok(sink)
    }

    fn metrics(
        &mut self,
        reporter: Reporter,
        m: &ModeMetrics,
        headers: &mut HeaderRefs,
    ) -> MetricRules {
        let mut rules = MetricRules {
            disabled: m.disabled,
            ..MetricRules::default()
        };
        for o in &m.overrides {
            let Some(i) = metric_index(o.metric) else {
                // The gRPC message counts are not reported at all: nothing to change.
                continue;
            };
            let rule = &mut rules.metrics[i];
            rule.disabled = o.disabled;
            for tag in &o.tags {
                let error = |message: String| ConfigError {
                    side: side_name(reporter),
                    what: format!("metric {}", istio_name(o.metric)),
                    field: format!("tagOverrides.{}", tag.name),
                    message,
                };
                if !is_label_name(&tag.name) {
                    tracing::warn!(
                        "{}; the tag is not applied",
                        error("not a Prometheus label name".to_owned())
                    );
                    continue;
                }
                let Some(source) = &tag.value else {
                    rule.tags.push(TagRule::Remove(tag.name.clone()));
                    continue;
                };
                let key = (reporter, i, tag.name.clone());
                let expr = match self.expr(source, headers) {
                    Ok(e) => {
                        self.last_tags.insert(key, e.clone());
                        Some(e)
                    }
                    Err(e) => {
                        let previous = self.last_tags.get(&key).cloned();
                        let keeps = if previous.is_some() {
                            "keeping its previous value"
                        } else {
                            "the label is left as it is"
                        };
                        tracing::warn!("{}; {keeps}", error(e.message));
                        if let Some(p) = &previous {
                            headers.extend(&self.exprs[p.source()].1);
                        }
                        previous
                    }
                };
                if let Some(e) = expr {
                    rule.tags.push(TagRule::Upsert(tag.name.clone(), e));
                }
            }
        }
        rules
    }

    /// `source` compiled, once for every config that uses it.
    fn expr(
        &mut self,
        source: &str,
        headers: &mut HeaderRefs,
    ) -> Result<Arc<Expr>, super::expr::ExprError> {
        if let Some((e, h)) = self.exprs.get(source) {
            headers.extend(h);
            return Ok(e.clone());
        }
        let mut h = HeaderRefs::default();
        let e = Arc::new(Expr::compile(source, &mut h)?);
        headers.extend(&h);
        self.exprs.insert(source.to_owned(), (e.clone(), h));
        Ok(e)
    }
}

/// The metric as the Telemetry API names it (`REQUEST_COUNT`).
fn istio_name(m: xds::IstioMetric) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{m:?}"))
}

/// Prometheus's label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds::{IstioMetric, MetricOverride, TagOverride};

    fn configurator() -> Configurator {
        Configurator::new(None, JsonValues::Typed, 16, Counter::default())
    }

    fn log(provider: &str, path: &Path, filter: Option<&str>) -> AccessLog {
        AccessLog {
            provider: provider.into(),
            path: path.display().to_string(),
            format: AccessLogFormat::Text(String::new()),
            filter: filter.map(str::to_owned),
        }
    }

    use std::path::Path;

    #[test]
    fn compiled_only_when_the_fields_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logging = AccessLogging {
            client: Some(vec![log("a", &dir.path().join("a.log"), None)]),
            server: None,
        };
        let mut c = configurator();
        let first = c.configure(Some(&logging), None).expect("changed");
        let first = first.expect("a config");
        assert!(first.side(Reporter::Source).logs.is_some());
        assert!(first.side(Reporter::Destination).logs.is_none());
        assert!(first.logger.is_some(), "a writer started for the logs");
        assert!(c.configure(Some(&logging), None).is_none(), "unchanged");
        assert!(
            matches!(c.configure(None, None), Some(None)),
            "back to none"
        );
        assert!(c.configure(None, None).is_none());
    }

    #[test]
    fn one_sink_per_path_and_headers_of_both_sides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = dir.path().join("shared.log");
        let logging = AccessLogging {
            client: Some(vec![
                log("a", &shared, Some("request.headers['x-a'] == '1'")),
                log("b", &shared, None),
            ]),
            server: Some(vec![log("c", &shared, Some("'x-c' in request.headers"))]),
        };
        let applied = configurator()
            .configure(Some(&logging), None)
            .flatten()
            .expect("a config");
        let client = applied.side(Reporter::Source).logs.as_ref().expect("logs");
        let server = applied
            .side(Reporter::Destination)
            .logs
            .as_ref()
            .expect("logs");
        assert!(Arc::ptr_eq(&client.0[0].sink, &client.0[1].sink));
        assert!(Arc::ptr_eq(&client.0[0].sink, &server.0[0].sink));
        let mut h = http::HeaderMap::new();
        for name in ["x-a", "x-c", "x-other"] {
            h.insert(name, http::HeaderValue::from_static("1"));
        }
        let captured = applied.headers.capture(&h).expect("captured");
        let names: Vec<&str> = captured.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-a", "x-c"]);
    }

    #[test]
    fn rules_that_change_nothing_stay_on_the_standard_path() {
        let metrics = MetricsConfig {
            client: Some(ModeMetrics::default()),
            server: Some(ModeMetrics {
                disabled: false,
                overrides: vec![MetricOverride {
                    metric: IstioMetric::RequestCount,
                    disabled: false,
                    tags: vec![TagOverride {
                        name: "request_protocol".into(),
                        value: None,
                    }],
                }],
            }),
        };
        let applied = configurator()
            .configure(None, Some(&metrics))
            .flatten()
            .expect("a config");
        assert!(applied.side(Reporter::Source).metrics.is_none());
        let server = applied
            .side(Reporter::Destination)
            .metrics
            .as_ref()
            .expect("rules");
        assert_eq!(
            server.metrics[crate::telemetry::metrics::REQUEST_COUNT].tags,
            [TagRule::Remove("request_protocol".into())]
        );
        assert!(applied.logger.is_none(), "no log, no writer");
        assert!(applied.headers.is_empty());
    }
}
