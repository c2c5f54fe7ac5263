//! What istioctl's verbs (`proxy-config`, `proxy-status`, `version`) share: reaching a pod's
//! admin server (127.0.0.1:15000 in the pod) and discovery's monitoring port (15014 in the
//! mesh's bridge namespace), istioctl's `-o` formats, and its tables (Go's `tabwriter` with
//! a padding of 5, as istioctl's writers set it up).
//!
//! A request runs on a short-lived thread that enters the target's network namespace
//! ([`local::probe::in_netns`]), so `127.0.0.1` is the pod's own loopback and no helper program
//! is needed; the HTTP/1 exchange is hyper's, bounded by [`TIMEOUT`].

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use local::state::{PodRecord, State};
use serde_json::Value;

/// How long one request to an admin or monitoring server may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The sidecar's admin port (Envoy's 15000, the default of `ama proxy --admin-port`).
const ADMIN_PORT: u16 = 15000;

/// istioctl's `-o`: `short` (a table, the default), `json` or `yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// A table.
    #[default]
    Short,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// `value` as JSON (pretty, newline-terminated) or YAML; `None` for [`Format::Short`].
pub fn structured(format: Format, value: &Value) -> anyhow::Result<Option<String>> {
    Ok(match format {
        Format::Short => None,
        Format::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        Format::Yaml => Some(api::yaml::to_yaml(value)?),
    })
}

/// An HTTP answer: status and body.
#[derive(Debug)]
struct Answer {
    /// The status code.
    status: u16,
    /// The body, as text.
    body: String,
}

/// `method path` on `127.0.0.1:port` inside network namespace `netns`.
fn request(netns: &str, port: u16, method: &str, path: &str) -> anyhow::Result<Answer> {
    let method = http::Method::from_bytes(method.as_bytes())?;
    let uri = path.to_string();
    let what = format!("{method} http://127.0.0.1:{port}{path}");
    let exchange = move || -> anyhow::Result<Answer> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            tokio::time::timeout(TIMEOUT, async move {
                let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
                    hyper_util::rt::TokioIo::new(stream),
                )
                .await?;
                tokio::spawn(conn);
                let req = http::Request::builder()
                    .method(method)
                    .uri(uri)
                    .header(http::header::HOST, format!("127.0.0.1:{port}"))
                    .body(Empty::new())?;
                let res = sender.send_request(req).await?;
                let status = res.status().as_u16();
                let body = res.into_body().collect().await?.to_bytes();
                Ok(Answer {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                })
            })
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {}s", TIMEOUT.as_secs()))?
        })
    };
    local::probe::in_netns(netns, exchange)
        .with_context(|| format!("entering network namespace {netns}"))?
        .context(what)
}

/// `GET path` on the admin server of `pod`'s sidecar; an error unless it answers 200.
pub fn admin_get(pod: &PodRecord, path: &str) -> anyhow::Result<String> {
    admin(pod, "GET", path)
}

/// `method path` on the admin server of `pod`'s sidecar; an error unless it answers 200.
pub fn admin(pod: &PodRecord, method: &str, path: &str) -> anyhow::Result<String> {
    if !pod.sidecar {
        bail!(
            "pod {}.{} has no istio-proxy sidecar (no admin server on {ADMIN_PORT})",
            pod.name,
            pod.namespace
        );
    }
    let answer = request(&pod.netns, ADMIN_PORT, method, path)
        .with_context(|| format!("the sidecar of pod {}.{}", pod.name, pod.namespace))?;
    if answer.status != 200 {
        bail!(
            "the sidecar of pod {}.{}: {method} {path}: {} {}",
            pod.name,
            pod.namespace,
            answer.status,
            answer.body.trim()
        );
    }
    Ok(answer.body)
}

/// `GET path` on the admin server of `pod`'s sidecar, as JSON.
pub fn admin_json(pod: &PodRecord, path: &str) -> anyhow::Result<Value> {
    let body = admin_get(pod, path)?;
    serde_json::from_str(&body).with_context(|| {
        format!(
            "the sidecar of pod {}.{}: {path} is not JSON",
            pod.name, pod.namespace
        )
    })
}

/// Whether this process can enter the mesh's network namespaces: a mesh started without root
/// keeps them inside its own user and mount namespaces, which these requests do not enter yet.
pub fn reachable(state: &State) -> anyhow::Result<()> {
    if state.rootless && !local::rootless::is_root() {
        bail!(
            "mesh {:?} runs without root (in a user namespace): its pods' admin servers and \
             discovery's monitoring port cannot be reached from here; use `ama exec POD -c \
             istio-proxy -- curl -s localhost:15000/config_dump`",
            state.cluster
        );
    }
    Ok(())
}

/// `GET path` on discovery's monitoring port, as JSON. An error when the mesh runs no
/// discovery (`ama up --xds files`).
pub fn discovery_json(state: &State, path: &str) -> anyhow::Result<Value> {
    reachable(state)?;
    if state.discovery.is_none() {
        bail!(
            "mesh {:?} runs no control plane (started with --xds files): nothing to ask",
            state.cluster
        );
    }
    let answer = request(
        &state.lan_netns,
        control::discovery::MONITORING_PORT,
        "GET",
        path,
    )
    .context("ama discovery's monitoring port")?;
    if answer.status != 200 {
        bail!(
            "ama discovery: GET {path}: {} {}",
            answer.status,
            answer.body.trim()
        );
    }
    serde_json::from_str(&answer.body)
        .with_context(|| format!("ama discovery: GET {path}: not JSON"))
}

/// The pod istioctl's `POD[.NAMESPACE]` names: the name as `ama get` resolves it (a unique
/// prefix is enough), in `namespace` when given by `-n` or after the dot.
pub fn find_pod<'a>(
    state: &'a State,
    pod: &str,
    namespace: Option<&str>,
) -> anyhow::Result<&'a PodRecord> {
    reachable(state)?;
    let (name, ns) = match (state.pod(pod), pod.rsplit_once('.')) {
        (Ok(p), _) => (p.name.as_str(), namespace),
        (Err(_), Some((name, ns))) => (name, Some(ns)),
        (Err(e), None) => return Err(e.into()),
    };
    let found = state.pod(name)?;
    if let Some(ns) = ns
        && found.namespace != ns
    {
        bail!("pods \"{name}\" not found in namespace {ns:?}");
    }
    Ok(found)
}

/// A table as Go's `tabwriter.NewWriter(w, 0, 8, 5, ' ', 0)` writes it, istioctl's set-up:
/// every column but the last padded to its widest cell plus five spaces; the last as it is.
pub fn tabwrite(header: &[&str], rows: &[Vec<String>]) -> String {
    const PADDING: usize = 5;
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        for (i, cell) in cells.enumerate() {
            out.push_str(cell);
            if i + 1 < columns {
                let pad = widths[i] + PADDING - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabwriter_pads_by_five_but_not_the_last_column() {
        let out = tabwrite(
            &["NAME", "PORT", "RULE"],
            &[vec!["a".into(), "80".into(), "".into()]],
        );
        assert_eq!(out, "NAME     PORT     RULE\na        80       \n");
    }
}
