//! `ama scale deployment/NAME --replicas=N` (or `deployment NAME`; ReplicaSets and StatefulSets
//! too): sets the object's `spec.replicas` in the running local mesh, as `kubectl scale` does.
//! `ama up` takes it as it takes `ama apply`: pods are created or removed (a removed pod leaves
//! its Services' endpoints first), and the proxies get the endpoints from discovery.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::local::MeshName;

/// The kinds whose replicas can be set.
const SCALABLE: [&str; 3] = ["Deployment", "ReplicaSet", "StatefulSet"];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `TYPE/NAME...`, or `TYPE NAME...` (deployment, deploy, rs, sts).
    #[arg(value_name = "TYPE[/NAME]", required = true)]
    pub names: Vec<String>,
    /// The number of pods.
    #[arg(long)]
    pub replicas: u32,
    /// Only when the object has this many replicas now (as kubectl's precondition).
    #[arg(long)]
    pub current_replicas: Option<u32>,
    /// The namespace.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub mesh: MeshName,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let targets = targets(&args.names)?;
    let dir = args.mesh.dir()?;
    let objects = dir.load_resources()?;
    let mut changed = Vec::new();
    for (kind, name) in &targets {
        let object = scaled(
            &objects,
            kind,
            &args.namespace,
            name,
            args.replicas,
            args.current_replicas,
        )?;
        changed.push((object, format!("{}/{name}", resource_prefix(kind))));
    }
    for (object, shown) in changed {
        let text = object.to_string();
        local::runtime::apply(&dir, &text, "ama scale", None)?;
        println!("{shown} scaled");
    }
    Ok(ExitCode::SUCCESS)
}

/// `(kind, name)` of each object, from `TYPE/NAME...` or `TYPE NAME...`.
fn targets(names: &[String]) -> anyhow::Result<Vec<(&'static str, String)>> {
    let kind = |resource: &str| -> anyhow::Result<&'static str> {
        let kind = api::kinds::resolve(resource)
            .with_context(|| format!("the server doesn't have a resource type \"{resource}\""))?;
        if !SCALABLE.contains(&kind) {
            bail!("{resource}: cannot be scaled (deployments, replicasets and statefulsets can)");
        }
        Ok(kind)
    };
    let mut out = Vec::new();
    let mut rest_kind = None;
    for (i, arg) in names.iter().enumerate() {
        if let Some((resource, name)) = arg.split_once('/') {
            out.push((kind(resource)?, name.to_string()));
        } else if let Some(k) = rest_kind {
            out.push((k, arg.clone()));
        } else if i == 0 {
            rest_kind = Some(kind(arg)?);
        } else {
            bail!(
                "{arg:?}: there is no resource type before it (e.g. `ama scale deployment {arg}`)"
            );
        }
    }
    if out.is_empty() {
        bail!("give the object to scale: `ama scale deployment/NAME --replicas=N`");
    }
    Ok(out)
}

/// The object `kind` `namespace/name` of `objects` with `spec.replicas` set to `replicas`, as
/// `ama apply` takes it.
fn scaled(
    objects: &[Value],
    kind: &str,
    namespace: &str,
    name: &str,
    replicas: u32,
    current: Option<u32>,
) -> anyhow::Result<Value> {
    let text = |o: &Value, p: &str| o.pointer(p).and_then(Value::as_str).map(str::to_string);
    let Some(found) = objects.iter().find(|o| {
        text(o, "/kind").as_deref() == Some(kind)
            && text(o, "/metadata/namespace").as_deref() == Some(namespace)
            && text(o, "/metadata/name").as_deref() == Some(name)
    }) else {
        bail!(
            "Error from server (NotFound): {}s.apps \"{name}\" not found in namespace {namespace}",
            kind.to_ascii_lowercase()
        );
    };
    let now = found
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    if let Some(want) = current
        && u64::from(want) != now
    {
        bail!("Expected replicas to be {want}, was {now}");
    }
    let mut object = found.clone();
    // What the API server adds is not the user's to apply.
    if let Some(Value::Object(meta)) = object.get_mut("metadata") {
        meta.remove("creationTimestamp");
    }
    match object.get_mut("spec") {
        Some(Value::Object(spec)) => {
            spec.insert("replicas".into(), json!(replicas));
        }
        _ => bail!("{kind} {namespace}/{name} has no spec"),
    }
    Ok(object)
}

fn resource_prefix(kind: &str) -> String {
    format!("{}.apps", kind.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_the_object_with_its_new_replicas() {
        assert_eq!(
            targets(&["deployment/httpbin".into()]).unwrap(),
            [("Deployment", "httpbin".to_string())]
        );
        assert_eq!(
            targets(&["deploy".into(), "a".into(), "b".into()]).unwrap(),
            [("Deployment", "a".into()), ("Deployment", "b".into())]
        );
        assert!(targets(&["svc/httpbin".into()]).is_err());
        assert!(targets(&["deploy".into()]).is_err());
        let objects = vec![json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "httpbin", "namespace": "default",
                "creationTimestamp": "2020-03-07T06:44:22Z"},
            "spec": {"replicas": 1, "template": {}}})];
        let o = scaled(&objects, "Deployment", "default", "httpbin", 3, None).unwrap();
        assert_eq!(o["spec"]["replicas"], 3);
        assert!(o["metadata"].get("creationTimestamp").is_none());
        assert!(scaled(&objects, "Deployment", "default", "httpbin", 3, Some(2)).is_err());
        assert!(scaled(&objects, "Deployment", "default", "httpbin", 3, Some(1)).is_ok());
        let err = scaled(&objects, "Deployment", "other", "httpbin", 3, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("deployments.apps \"httpbin\" not found")
        );
    }
}
