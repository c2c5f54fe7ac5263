//! `ama apply -f FILE [-n NAMESPACE]`: adds or changes objects of the running local mesh
//! (Deployments, Services, Istio config …), like `kubectl apply`; `ama up` takes it at once: new
//! pods start, changed templates replace their pods, config reaches the proxies.
//!
//! `-n` puts the objects that name no namespace into NAMESPACE, as `kubectl apply -n` does
//! (Istio's tasks apply their samples that way: `kubectl apply -f httpbin.yaml -n foo`); an
//! object that names another namespace is an error, as in kubectl, and is not applied.
//!
//! As `kubectl apply`, the good documents are applied and each bad one (malformed, unknown kind
//! or field) is an `error:` line on standard error naming file, document, object and field;
//! the exit code is then 1. What Ama does not implement of a good document is a `Warning:`
//! line ([`api::support`]).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::local::MeshName;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// File to apply; `-` reads standard input. Repeat to apply several, in order.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub filenames: Vec<PathBuf>,
    /// Namespace of the objects that name none (an object naming another one is an error).
    #[arg(short = 'n', long = "namespace", value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub mesh: MeshName,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = args.mesh.dir()?;
    let mut failed = false;
    for file in &args.filenames {
        let (text, name) = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            (text, "<stdin>".to_string())
        } else {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            (text, file.display().to_string())
        };
        let text = match &args.namespace {
            Some(ns) => {
                let (text, errors) = in_namespace(&text, ns, &name);
                for e in &errors {
                    eprintln!("error: {e}");
                }
                failed |= !errors.is_empty();
                text
            }
            None => text,
        };
        let parsed = api::objects::parse(&text, &name);
        for f in &parsed.findings {
            eprintln!("{}", f.for_terminal());
        }
        failed |= parsed.errors().next().is_some();
        if parsed.objects.is_empty() {
            continue;
        }
        for applied in local::runtime::apply(&dir, &text, &name)? {
            println!("{} {}", applied.resource, applied.verb);
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `text` with `namespace` set on every namespaced object that names none (kubectl's `-n`),
/// and an error for each object that names another namespace, which is left out. Documents that
/// are not YAML mappings stay as they are, so that the parser reports them as usual.
fn in_namespace(text: &str, namespace: &str, source: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut errors = Vec::new();
    for doc in api::yaml::split_documents(text) {
        let mut kept = doc.text.to_string();
        if let Ok(mut value) = serde_saphyr::from_str::<serde_json::Value>(doc.text) {
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let name = value["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let cluster_scoped = kind == "Namespace" || kind.starts_with("Cluster");
            if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut())
                && !cluster_scoped
            {
                match metadata.get("namespace").and_then(|n| n.as_str()) {
                    Some(ns) if ns != namespace => {
                        errors.push(format!(
                            "{source}:doc {}: {kind} {name}: the namespace from the provided \
                             object \"{ns}\" does not match the namespace \"{namespace}\": pass \
                             -n {ns}, or leave -n out",
                            doc.index
                        ));
                        continue;
                    }
                    Some(_) => {}
                    None => {
                        metadata.insert("namespace".into(), namespace.into());
                        kept = value.to_string();
                    }
                }
            }
        }
        out.push_str("---\n");
        out.push_str(&kept);
        out.push('\n');
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::in_namespace;

    #[test]
    fn namespace_goes_where_none_is_named() {
        let text = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: httpbin\n---\n\
                    apiVersion: v1\nkind: Namespace\nmetadata:\n  name: foo\n---\n\
                    apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  namespace: foo\n---\n\
                    apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: b\n  namespace: bar\n";
        let (out, errors) = in_namespace(text, "foo", "x.yaml");
        let objects = api::objects::parse(&out, "x.yaml").objects;
        let placed: Vec<(String, String)> = objects
            .iter()
            .map(|o| (o.metadata().name.clone(), o.metadata().namespace.clone()))
            .collect();
        assert_eq!(
            placed,
            [
                ("httpbin".to_string(), "foo".to_string()),
                ("foo".to_string(), String::new()),
                ("a".to_string(), "foo".to_string()),
            ]
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("x.yaml:doc 4: ServiceAccount b: the namespace"),
            "{errors:?}"
        );
    }
}
