//! `ama version [--short] [--remote] [-o json|yaml]`: the versions of this client, of the
//! running mesh's control plane (discovery's `/version` on 15014) and of its data plane (each
//! sidecar's admin `/server_info`), in `istioctl version`'s shape:
//!
//! ```text
//! client version: 0.1.0
//! control plane version: 0.1.0
//! data plane version: 0.1.0 (3 proxies)
//! ```
//!
//! `-o json` is istioctl's `clientVersion`, `meshVersion` (one `pilot` component: discovery)
//! and `dataPlaneVersion` (`ID` = `pod.namespace`, `IstioVersion`). With no mesh running (or
//! `--remote=false`) only the client's version is shown.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};

use super::local::MeshName;
use super::mesh_http::{Format, admin_json, discovery_json, reachable, structured};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only the version numbers (`--short=false`: every build detail).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub short: bool,
    /// Also the control and data plane's versions of the running mesh.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub remote: bool,
    /// Output format: short (text), json or yaml.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Short)]
    pub output: Format,
    #[command(flatten)]
    pub mesh: MeshName,
}

/// This binary's version.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `ama version` found.
#[derive(Debug, Default)]
struct Versions {
    client: Value,
    mesh: Vec<Value>,
    data_plane: Vec<Value>,
}

fn build_info(version: &str) -> Value {
    json!({
        "version": version,
        "revision": "unknown",
        "status": "Clean",
        "tag": version,
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut v = Versions {
        client: build_info(VERSION),
        ..Versions::default()
    };
    let mut problems = Vec::new();
    if args.remote {
        let state = args
            .mesh
            .dir()?
            .load()
            .map_err(anyhow::Error::from)
            .and_then(|state| reachable(&state).map(|()| state));
        match state {
            Err(e) => problems.push(format!("{e:#}")),
            Ok(state) => remote(&state, &mut v, &mut problems),
        }
    }
    for p in &problems {
        eprintln!("warning: {p}");
    }
    let value = json!({
        "clientVersion": v.client,
        "meshVersion": v.mesh,
        "dataPlaneVersion": v.data_plane,
    });
    let out = match structured(args.output, &value)? {
        Some(s) => s,
        None => text(&v, args.short, args.remote).context("version")?,
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The control plane's version (discovery's `/version`) and each sidecar's (`/server_info`).
fn remote(state: &local::state::State, v: &mut Versions, problems: &mut Vec<String>) {
    match discovery_json(state, "/version") {
        Ok(info) => v.mesh.push(json!({
            "Component": "pilot",
            "Revision": "default",
            "Info": info,
        })),
        Err(e) => problems.push(format!("control plane: {e:#}")),
    }
    for pod in state.pods.iter().filter(|p| p.sidecar && !p.terminating) {
        match admin_json(pod, "/server_info") {
            Ok(info) => v.data_plane.push(json!({
                "ID": format!("{}.{}", pod.name, pod.namespace),
                "IstioVersion": info.get("version").and_then(Value::as_str).unwrap_or("unknown"),
            })),
            Err(e) => problems.push(format!("data plane: {e:#}")),
        }
    }
}

/// istioctl's text: one line per plane; the data plane's versions with their proxy counts.
fn text(v: &Versions, short: bool, remote: bool) -> anyhow::Result<String> {
    let show = |info: &Value| -> String {
        let version = info
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        if short {
            version.to_string()
        } else {
            format!(
                "version.BuildInfo{{Version:{:?}, GitRevision:{:?}, BuildStatus:{:?}, GitTag:{:?}}}",
                version,
                info.get("revision").and_then(Value::as_str).unwrap_or(""),
                info.get("status").and_then(Value::as_str).unwrap_or(""),
                info.get("tag").and_then(Value::as_str).unwrap_or(""),
            )
        }
    };
    let mut out = format!("client version: {}\n", show(&v.client));
    if !remote {
        return Ok(out);
    }
    if let Some(m) = v.mesh.first() {
        out.push_str(&format!(
            "control plane version: {}\n",
            show(m.get("Info").unwrap_or(&Value::Null))
        ));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &v.data_plane {
        let version = d
            .get("IstioVersion")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        *counts.entry(version).or_default() += 1;
    }
    if !counts.is_empty() {
        let parts: Vec<String> = counts
            .iter()
            .map(|(v, n)| format!("{v} ({n} proxies)"))
            .collect();
        out.push_str(&format!("data plane version: {}\n", parts.join(", ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istioctls_text() {
        let v = Versions {
            client: build_info("0.1.0"),
            mesh: vec![
                json!({"Component": "pilot", "Revision": "default", "Info": build_info("0.1.0")}),
            ],
            data_plane: vec![
                json!({"ID": "a.default", "IstioVersion": "0.1.0"}),
                json!({"ID": "b.default", "IstioVersion": "0.1.0"}),
                json!({"ID": "c.default", "IstioVersion": "0.0.9"}),
            ],
        };
        assert_eq!(
            text(&v, true, true).unwrap(),
            "client version: 0.1.0\ncontrol plane version: 0.1.0\n\
             data plane version: 0.0.9 (1 proxies), 0.1.0 (2 proxies)\n"
        );
        assert_eq!(text(&v, true, false).unwrap(), "client version: 0.1.0\n");
        assert!(
            text(&v, false, false)
                .unwrap()
                .starts_with("client version: version.BuildInfo{Version:\"0.1.0\", ")
        );
    }
}
