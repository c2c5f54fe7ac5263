//! `ama delete`: removes objects from the running local mesh, as `kubectl delete` does:
//!
//! - `ama delete -f FILE [-n NAMESPACE]`: the objects FILE holds (`-` reads standard input; `-n`
//!   as `ama apply -n`);
//! - `ama delete TYPE NAME... [-n NAMESPACE]`, or `TYPE/NAME`: TYPE as kubectl takes it (`se`,
//!   `serviceentry`, `serviceentries.networking.istio.io`, `deploy`, ...).
//!
//! A Deployment's pods stop, a Service leaves the endpoints, config leaves the proxies; deleting
//! a Namespace deletes what is in it. Each object deleted is a line as kubectl prints it
//! (`serviceentry.networking.istio.io "cnn" deleted`); one the mesh does not have is an error
//! line (`Error from server (NotFound): ...`) and exit code 1, unless `--ignore-not-found`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use local::runtime::ObjectRef;

use super::local::MeshName;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `TYPE NAME...` or `TYPE/NAME...` (instead of -f).
    #[arg(value_name = "TYPE[/NAME]")]
    pub names: Vec<String>,
    /// File (or directory, as `ama apply -f` reads it) whose objects to delete; `-` reads
    /// standard input. Repeat for several.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filenames: Vec<PathBuf>,
    /// Also the files in the subdirectories of a directory given with -f.
    #[arg(short = 'R', long = "recursive")]
    pub recursive: bool,
    /// The namespace of the objects that name none.
    #[arg(short = 'n', long = "namespace", value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// An object the mesh does not have is not an error.
    #[arg(long)]
    pub ignore_not_found: bool,
    #[command(flatten)]
    pub mesh: MeshName,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let targets = if args.filenames.is_empty() {
        by_name(&args.names, args.namespace.as_deref().unwrap_or("default"))?
    } else {
        if !args.names.is_empty() {
            bail!("give either -f FILE or TYPE NAME, not both");
        }
        let files = super::apply::files(&args.filenames, args.recursive)?;
        from_files(&files, args.namespace.as_deref())?
    };
    if targets.is_empty() {
        bail!("nothing to delete: give -f FILE, or TYPE NAME (e.g. `ama delete se cnn`)");
    }
    let dir = args.mesh.dir()?;
    let report = local::runtime::delete(&dir, &targets)?;
    for d in &report.deleted {
        println!("{d} deleted");
    }
    if args.ignore_not_found {
        return Ok(ExitCode::SUCCESS);
    }
    for m in &report.missing {
        eprintln!("Error from server (NotFound): {m} not found");
    }
    Ok(if report.missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `TYPE NAME...`, `TYPE/NAME...`.
fn by_name(names: &[String], namespace: &str) -> anyhow::Result<Vec<ObjectRef>> {
    let mut out = Vec::new();
    let mut kind_of_rest: Option<&'static str> = None;
    for (i, arg) in names.iter().enumerate() {
        if let Some((resource, name)) = arg.split_once('/') {
            out.push(object(kind(resource)?, namespace, name));
        } else if let Some(kind) = kind_of_rest {
            out.push(object(kind, namespace, arg));
        } else if i == 0 {
            kind_of_rest = Some(kind(arg)?);
        } else {
            bail!("{arg:?}: there is no resource type before it (e.g. `ama delete se {arg}`)");
        }
    }
    if kind_of_rest.is_some() && out.is_empty() {
        bail!("give the names of the objects to delete after the resource type");
    }
    Ok(out)
}

fn kind(resource: &str) -> anyhow::Result<&'static str> {
    api::kinds::resolve(resource).with_context(|| {
        format!(
            "the server doesn't have a resource type \"{resource}\" (e.g. deployment, service, \
             virtualservice, destinationrule, gateway, serviceentry, secret)"
        )
    })
}

fn object(kind: &str, namespace: &str, name: &str) -> ObjectRef {
    let cluster_scoped = kind == "Namespace";
    ObjectRef {
        kind: kind.to_string(),
        namespace: if cluster_scoped {
            String::new()
        } else {
            namespace.to_string()
        },
        name: name.to_string(),
    }
}

/// The objects of the files, named as `ama apply -f` would have created them.
fn from_files(files: &[PathBuf], namespace: Option<&str>) -> anyhow::Result<Vec<ObjectRef>> {
    let mut out = Vec::new();
    for file in files {
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
        let (docs, findings) = local::manifests::parse_in(&text, &name, namespace)?;
        for f in findings.iter().filter(|f| f.is_error()) {
            eprintln!("{}", f.for_terminal());
        }
        out.extend(docs.iter().map(|d| {
            let (kind, namespace, name) = d.key();
            ObjectRef {
                kind,
                namespace,
                name,
            }
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_as_kubectl_reads_them() {
        let got = by_name(&["se".into(), "cnn".into(), "google".into()], "default").unwrap();
        assert_eq!(
            got.iter()
                .map(|o| format!("{}/{}/{}", o.kind, o.namespace, o.name))
                .collect::<Vec<_>>(),
            ["ServiceEntry/default/cnn", "ServiceEntry/default/google"]
        );
        let got = by_name(&["deploy/sleep".into(), "ns/foo".into()], "bar").unwrap();
        assert_eq!(
            got.iter()
                .map(|o| format!("{}/{}/{}", o.kind, o.namespace, o.name))
                .collect::<Vec<_>>(),
            ["Deployment/bar/sleep", "Namespace//foo"]
        );
        assert!(by_name(&["serviceentree".into(), "x".into()], "default").is_err());
        assert!(by_name(&["se".into()], "default").is_err());
    }
}
