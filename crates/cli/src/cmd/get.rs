//! `ama get pods|services`: the local mesh's objects as kubectl shows them (`-o wide`,
//! `-o json`, `-o yaml`, `-o jsonpath=TEMPLATE`), from its state file.
//!
//! A jsonpath template is kubectl's: literal text and `{expression}`s, each expression an RFC
//! 9535 JSONPath relative to the object (`{.status.loadBalancer.ingress[0].ip}`,
//! `{.spec.ports[?(@.name=="http2")].port}`), evaluated by the `jsonpath-rust` crate; several
//! results are printed separated by spaces, strings bare, other values as JSON.

use std::process::ExitCode;

use anyhow::bail;
use local::table;
use serde_json::Value;

use super::local::MeshName;

/// Output formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// More columns.
    Wide,
    /// The objects as JSON (a List).
    Json,
    /// The objects as YAML (a List).
    Yaml,
    /// `jsonpath=TEMPLATE`: the template applied to the object (or the List).
    JsonPath(String),
}

fn parse_output(text: &str) -> Result<Output, String> {
    match text {
        "wide" => Ok(Output::Wide),
        "json" => Ok(Output::Json),
        "yaml" => Ok(Output::Yaml),
        _ => match text.split_once('=') {
            Some(("jsonpath", template)) => Ok(Output::JsonPath(template.to_string())),
            _ => Err(format!(
                "unknown output format {text:?} (wide, json, yaml, jsonpath=TEMPLATE)"
            )),
        },
    }
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
    #[arg(short = 'o', long = "output", value_parser = parse_output)]
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
            match &args.output {
                Some(output @ (Output::Json | Output::Yaml | Output::JsonPath(_))) => render(
                    output,
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
                    table::pods(&state, ns, wide == &Some(Output::Wide), now, node.trim())
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
            match &args.output {
                Some(output @ (Output::Json | Output::Yaml | Output::JsonPath(_))) => render(
                    output,
                    state.services.iter().map(table::service_object).collect(),
                    args.name.is_some(),
                )?,
                wide => table::services(&state, ns, wide == &Some(Output::Wide), now),
            }
        }
        other => bail!(
            "the server doesn't have a resource type \"{other}\" (ama get knows pods and services)"
        ),
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn render(output: &Output, mut items: Vec<Value>, single: bool) -> anyhow::Result<String> {
    let value = if single && items.len() == 1 {
        items.remove(0)
    } else {
        table::list(items)
    };
    Ok(match output {
        Output::Yaml => api::yaml::to_yaml(&value)?,
        Output::JsonPath(template) => jsonpath(template, &value)?,
        _ => serde_json::to_string_pretty(&value)? + "\n",
    })
}

/// kubectl's `-o jsonpath=TEMPLATE` on `value` (see the module's docs). An expression that
/// matches nothing prints nothing, as kubectl's does.
fn jsonpath(template: &str, value: &Value) -> anyhow::Result<String> {
    use jsonpath_rust::JsonPath;
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            bail!("jsonpath template {template:?}: unclosed '{{'");
        };
        let expression = rest[open + 1..open + close].trim();
        let path = match expression {
            "" | "." | "$" => "$".to_string(),
            e if e.starts_with('$') => e.to_string(),
            e if e.starts_with('.') || e.starts_with('[') => format!("${e}"),
            e => format!("$.{e}"),
        };
        let found = value
            .query(&path)
            .map_err(|e| anyhow::anyhow!("jsonpath {{{expression}}}: {e}"))?;
        let texts: Vec<String> = found
            .into_iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        out.push_str(&texts.join(" "));
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jsonpath_answers_istios_recipes() {
        let svc = json!({
            "spec": {"ports": [
                {"name": "status-port", "port": 15021},
                {"name": "http2", "port": 80, "nodePort": 8080},
                {"name": "https", "port": 443, "nodePort": 8443},
            ]},
            "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}},
        });
        let run = |t: &str| jsonpath(t, &svc).unwrap();
        assert_eq!(run("{.status.loadBalancer.ingress[0].ip}"), "127.0.0.1");
        assert_eq!(run("{.spec.ports[?(@.name==\"http2\")].port}"), "80");
        assert_eq!(run("{.spec.ports[?(@.name=='https')].nodePort}"), "8443");
        assert_eq!(
            run("host={.status.loadBalancer.ingress[0].hostname}!"),
            "host=!"
        );
        assert_eq!(run("{.spec.ports[*].port}"), "15021 80 443");
        assert!(jsonpath("{.spec", &svc).is_err());
        assert_eq!(
            parse_output("jsonpath={.a}"),
            Ok(Output::JsonPath("{.a}".into()))
        );
        assert!(parse_output("xml").is_err());
    }
}
