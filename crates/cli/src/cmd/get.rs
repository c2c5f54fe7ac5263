//! `ama get pods|services`: the local mesh's objects as kubectl shows them (`-o wide`,
//! `-o json`, `-o yaml`), from its state file.

use std::process::ExitCode;

use anyhow::bail;
use local::table;
use serde_json::Value;

use super::local::MeshName;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// More columns.
    Wide,
    /// The objects as JSON (a List).
    Json,
    /// The objects as YAML (a List).
    Yaml,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// pods (po) or services (svc).
    pub kind: String,
    /// Only this object.
    pub name: Option<String>,
    /// Namespace.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    /// All namespaces.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Output>,
    /// Only objects with these labels (`app=httpbin,version=v1`).
    #[arg(short = 'l', long = "selector")]
    pub selector: Option<String>,
    #[command(flatten)]
    pub mesh: MeshName,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut state = args.mesh.dir()?.load()?;
    let ns = (!args.all_namespaces).then_some(args.namespace.as_str());
    let selector = parse_selector(args.selector.as_deref())?;
    let matches = |name: &str, namespace: &str, object: &Value| {
        args.name.as_deref().is_none_or(|n| n == name)
            && ns.is_none_or(|n| n == namespace)
            && selector.iter().all(|(k, v)| {
                object
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(k))
                    .and_then(Value::as_str)
                    == Some(v.as_str())
            })
    };
    let now = local::state::now();
    let out = match args.kind.as_str() {
        "pods" | "pod" | "po" => {
            state
                .pods
                .retain(|p| matches(&p.name, &p.namespace, &p.object));
            if let Some(name) = &args.name
                && state.pods.is_empty()
            {
                bail!("pods \"{name}\" not found");
            }
            let node_ip = local::ipam::GATEWAY.to_string();
            match args.output {
                Some(Output::Json | Output::Yaml) => render(
                    args.output,
                    state
                        .pods
                        .iter()
                        .map(|p| table::pod_object(p, &node_ip))
                        .collect(),
                    args.name.is_some(),
                )?,
                wide => {
                    let node =
                        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                    table::pods(&state, ns, wide == Some(Output::Wide), now, node.trim())
                }
            }
        }
        "services" | "service" | "svc" => {
            state
                .services
                .retain(|s| matches(&s.name, &s.namespace, &s.object));
            if let Some(name) = &args.name
                && state.services.is_empty()
            {
                bail!("services \"{name}\" not found");
            }
            match args.output {
                Some(Output::Json | Output::Yaml) => render(
                    args.output,
                    state.services.iter().map(table::service_object).collect(),
                    args.name.is_some(),
                )?,
                wide => table::services(&state, ns, wide == Some(Output::Wide), now),
            }
        }
        other => bail!(
            "the server doesn't have a resource type \"{other}\" (ama get knows pods and services)"
        ),
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn render(output: Option<Output>, mut items: Vec<Value>, single: bool) -> anyhow::Result<String> {
    let value = if single && items.len() == 1 {
        items.remove(0)
    } else {
        table::list(items)
    };
    Ok(match output {
        Some(Output::Yaml) => api::yaml::to_yaml(&value)?,
        _ => serde_json::to_string_pretty(&value)? + "\n",
    })
}

fn parse_selector(text: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => Ok((
                k.trim().to_string(),
                v.trim().trim_start_matches('=').to_string(),
            )),
            None => bail!("selector \"{p}\": use key=value"),
        })
        .collect()
}
