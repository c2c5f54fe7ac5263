//! `ama get TYPE[,TYPE...] [NAME...]`: the local mesh's objects as kubectl lists them, from its
//! state: pods, services, deployments, replicasets, endpoints, endpointslices, namespaces,
//! configmaps, secrets and every Istio kind (its CRD's printer columns), by kubectl's names,
//! short names and plurals ([`api::kinds::resolve`]); `all` is kubectl's pods, services,
//! daemonsets, deployments, replicasets and statefulsets; several kinds print one block each,
//! names as `kind/name`.
//! `-o wide|json|yaml|name|jsonpath=TEMPLATE`; a Secret's data only in `-o json|yaml`.
//!
//! A jsonpath template is kubectl's: literal text and `{expression}`s, each expression an RFC
//! 9535 JSONPath relative to the object (`{.status.loadBalancer.ingress[0].ip}`,
//! `{.spec.ports[?(@.name=="http2")].port}`), evaluated by the `jsonpath-rust` crate; several
//! results are printed separated by spaces, strings bare, other values as JSON.

use std::process::ExitCode;

use anyhow::bail;
use local::table::{self, Layout, Resource, Snapshot, Table};
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
    /// `kind/name` lines.
    Name,
    /// `jsonpath=TEMPLATE`: the template applied to the object (or the List).
    JsonPath(String),
}

fn parse_output(text: &str) -> Result<Output, String> {
    match text {
        "wide" => Ok(Output::Wide),
        "json" => Ok(Output::Json),
        "yaml" => Ok(Output::Yaml),
        "name" => Ok(Output::Name),
        _ => match text.split_once('=') {
            Some(("jsonpath", template)) => Ok(Output::JsonPath(template.to_string())),
            _ => Err(format!(
                "unknown output format {text:?} (wide, json, yaml, name, jsonpath=TEMPLATE)"
            )),
        },
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The kinds, comma-separated (`pods`, `deploy`, `vs`, `pods,services`, `all`), or
    /// `TYPE/NAME`.
    #[arg(value_name = "TYPE[,TYPE...]")]
    pub kind: String,
    /// Only these objects (or more `TYPE/NAME`s).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
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

/// What was asked: each kind with the names asked of it (empty: all).
type Request = Vec<(Resource, Vec<String>)>;

/// `TYPE[,TYPE...] [NAME...]` or `TYPE/NAME...`, as kubectl reads them. True when the output
/// names the kinds (several kinds, `all`, or `TYPE/NAME`).
fn parse_request(kind: &str, names: &[String]) -> anyhow::Result<(Request, bool)> {
    let resolve = |name: &str| {
        Resource::resolve(name).ok_or_else(|| {
            anyhow::anyhow!(
                "the server doesn't have a resource type \"{name}\" (e.g. pods, services, \
                 deployments, replicasets, endpoints, namespaces, configmaps, secrets, \
                 virtualservices, destinationrules, gateways, serviceentries, all)"
            )
        })
    };
    let mut request: Request = Vec::new();
    if kind.contains('/') {
        for arg in std::iter::once(kind).chain(names.iter().map(String::as_str)) {
            let Some((resource, name)) = arg.split_once('/') else {
                bail!("{arg:?}: give TYPE/NAME here too (e.g. deployment/{arg})");
            };
            let resource = resolve(resource)?;
            match request.iter_mut().find(|(r, _)| *r == resource) {
                Some((_, list)) => list.push(name.to_string()),
                None => request.push((resource, vec![name.to_string()])),
            }
        }
        return Ok((request, true));
    }
    let kinds: Vec<&str> = kind.split(',').filter(|k| !k.is_empty()).collect();
    for k in &kinds {
        if *k == "all" {
            for a in table::ALL {
                request.push((resolve(a)?, names.to_vec()));
            }
        } else {
            request.push((resolve(k)?, names.to_vec()));
        }
    }
    if request.is_empty() {
        bail!("give a resource type (e.g. `ama get pods`)");
    }
    let several = kinds.len() > 1 || kinds.contains(&"all");
    Ok((request, several))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (request, several) = parse_request(&args.kind, &args.names)?;
    let dir = args.mesh.dir()?;
    let state = dir.load()?;
    let objects = dir.load_resources()?;
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let snapshot = Snapshot {
        state: &state,
        objects: &objects,
        now: local::state::now(),
        node: node.trim(),
    };
    let namespace = (!args.all_namespaces).then_some(args.namespace.as_str());
    let selector = parse_selector(args.selector.as_deref())?;
    let got = get(
        &snapshot,
        &request,
        several,
        namespace,
        &selector,
        args.output.as_ref(),
    )?;
    print!("{}", got.out);
    if let Some(notice) = &got.notice {
        eprint!("{notice}");
    }
    for m in &got.missing {
        eprintln!("Error from server (NotFound): {m} not found");
    }
    Ok(if got.missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What `ama get` prints.
#[derive(Debug, Default)]
struct Got {
    /// On standard output.
    out: String,
    /// kubectl's "No resources found …", on standard error.
    notice: Option<String>,
    /// The objects asked for by name that are not there (`deployments.apps "x"`).
    missing: Vec<String>,
}

/// The output of `ama get`.
fn get(
    snapshot: &Snapshot<'_>,
    request: &Request,
    several: bool,
    namespace: Option<&str>,
    selector: &[(String, String)],
    output: Option<&Output>,
) -> anyhow::Result<Got> {
    let wide = output == Some(&Output::Wide);
    let mut tables: Vec<Table> = Vec::new();
    let mut missing = Vec::new();
    for (resource, names) in request {
        let mut t = table::table(snapshot, resource, wide);
        t.rows.retain(|r| {
            (t.cluster_scoped || namespace.is_none_or(|n| n == r.namespace))
                && selector.iter().all(|(k, v)| r.label(k) == Some(v.as_str()))
        });
        if !names.is_empty() {
            // In the order asked, as kubectl prints them.
            let mut rows = Vec::new();
            for name in names {
                match t.rows.iter().find(|r| &r.name == name) {
                    Some(r) => rows.push(r.clone()),
                    None => missing.push(format!("{} \"{name}\"", plural(&t.prefix))),
                }
            }
            t.rows = rows;
        }
        tables.push(t);
    }
    let nothing = tables.iter().all(|t| t.rows.is_empty());
    let mut notice = None;
    let out = match output {
        None | Some(Output::Wide | Output::Name) if nothing => {
            // Asked by name: the NotFound lines say it.
            if missing.is_empty() {
                notice = Some(table::no_resources(namespace));
            }
            String::new()
        }
        None | Some(Output::Wide) => {
            let layout = if several {
                Layout::WithKind
            } else {
                Layout::Plain
            };
            table::print(&tables, layout, namespace)
        }
        Some(Output::Name) => table::print(&tables, Layout::Names, namespace),
        Some(output) => {
            let single = !several && request.iter().map(|(_, n)| n.len()).sum::<usize>() == 1;
            let items = tables
                .into_iter()
                .flat_map(|t| t.rows.into_iter().map(|r| r.object))
                .collect();
            render(output, items, single)?
        }
    };
    Ok(Got {
        out,
        notice,
        missing,
    })
}

/// kubectl's plural of a `kind.group` prefix: `deployments.apps`, `endpoints`, `policies`.
fn plural(prefix: &str) -> String {
    let (kind, group) = prefix.split_once('.').unwrap_or((prefix, ""));
    let kind = if kind.ends_with('s') {
        kind.to_string()
    } else if let Some(stem) = kind.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{kind}s")
    };
    if group.is_empty() {
        kind
    } else {
        format!("{kind}.{group}")
    }
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
    fn kinds_and_names_as_kubectl_reads_them() {
        let kinds = |k: &str, names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let (request, several) = parse_request(k, &names).unwrap();
            let shown: Vec<String> = request
                .iter()
                .map(|(r, n)| format!("{}:{}", r.kind, n.join("+")))
                .collect();
            (shown, several)
        };
        assert_eq!(kinds("po", &[]), (vec!["Pod:".to_string()], false));
        assert_eq!(
            kinds("pods,deployments,services", &[]),
            (
                vec!["Pod:".into(), "Deployment:".into(), "Service:".into()],
                true
            )
        );
        assert_eq!(
            kinds("all", &[]).0,
            [
                "Pod:",
                "Service:",
                "DaemonSet:",
                "Deployment:",
                "ReplicaSet:",
                "StatefulSet:"
            ]
        );
        assert_eq!(
            kinds("deploy/a", &["deploy/b", "vs/c"]),
            (
                vec!["Deployment:a+b".into(), "VirtualService:c".into()],
                true
            )
        );
        assert_eq!(
            kinds("vs", &["x"]),
            (vec!["VirtualService:x".into()], false)
        );
        let err = parse_request("virtualservce", &[]).unwrap_err().to_string();
        assert!(
            err.contains("doesn't have a resource type \"virtualservce\""),
            "{err}"
        );
        assert!(parse_request("deploy/a", &["b".into()]).is_err());
        assert_eq!(plural("deployment.apps"), "deployments.apps");
        assert_eq!(plural("endpoints"), "endpoints");
        assert_eq!(
            plural("authorizationpolicy.security.istio.io"),
            "authorizationpolicies.security.istio.io"
        );
    }

    #[test]
    fn json_is_a_list_or_the_one_object_asked_for() {
        let state = local::state::State::default();
        let objects = vec![
            serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "a", "namespace": "default", "labels": {"app": "x"},
                    "creationTimestamp": "2020-03-07T06:44:22Z"},
                "spec": {"hosts": ["a"]}}),
            serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "b", "namespace": "other",
                    "creationTimestamp": "2020-03-07T06:44:22Z"},
                "spec": {"hosts": ["b"]}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "s", "namespace": "default",
                    "creationTimestamp": "2020-03-07T06:44:22Z"},
                "data": {"k": "c2VjcmV0"}}),
        ];
        let snapshot = Snapshot {
            state: &state,
            objects: &objects,
            now: 1_583_563_462 + 30,
            node: "n",
        };
        let run = |kind: &str, names: &[&str], ns: Option<&str>, output: Option<Output>| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let (request, several) = parse_request(kind, &names).unwrap();
            let got = get(&snapshot, &request, several, ns, &[], output.as_ref()).unwrap();
            (got.out, got.missing)
        };
        let (out, missing) = run("vs", &[], None, Some(Output::Json));
        assert!(missing.is_empty());
        let list: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        let (out, _) = run("vs", &["a"], Some("default"), Some(Output::Json));
        let one: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(one["kind"], "VirtualService");
        assert_eq!(one["spec"]["hosts"][0], "a");
        let (out, missing) = run("vs", &["a", "zz"], Some("default"), None);
        assert_eq!(missing, ["virtualservices.networking.istio.io \"zz\""]);
        assert_eq!(
            out,
            "NAME   GATEWAYS   HOSTS   AGE\na                 [\"a\"]   30s\n"
        );
        // A Secret's data: in -o json only.
        let (table, _) = run("secrets", &[], Some("default"), None);
        assert!(!table.contains("c2VjcmV0"), "{table}");
        assert!(table.starts_with("NAME   TYPE     DATA   AGE\ns      Opaque   1      30s"));
        let (json, _) = run("secret", &["s"], Some("default"), Some(Output::Json));
        assert!(json.contains("c2VjcmV0"));
        let names_request = parse_request("sidecars", &[]).unwrap().0;
        let got = get(&snapshot, &names_request, false, Some("default"), &[], None).unwrap();
        assert_eq!(got.out, "");
        assert_eq!(
            got.notice.as_deref(),
            Some("No resources found in default namespace.\n")
        );
        let (names, _) = run("vs,secrets", &[], None, Some(Output::Name));
        assert_eq!(
            names,
            "virtualservice.networking.istio.io/a\nvirtualservice.networking.istio.io/b\nsecret/s\n"
        );
    }

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
