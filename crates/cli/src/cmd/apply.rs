//! `ama apply -f FILE|DIR [-R] [-n NAMESPACE]`: adds or changes objects of the running local mesh
//! (Deployments, Services, Istio config …), like `kubectl apply`; `ama up` takes it at once: new
//! pods start, changed templates replace their pods, config reaches the proxies. `-n` puts the
//! objects that name no namespace into NAMESPACE, as `kubectl apply -n` does (Istio's tasks
//! apply their samples that way); a file with an object that names another is refused. A
//! directory stands for its `.yaml`, `.yml` and `.json` files in name order, and with `-R` for
//! those of its subdirectories too, as kubectl reads them ([`files`]).
//!
//! As `kubectl apply`, the good documents are applied and each bad one (malformed, unknown kind
//! or field) is an `error:` line on standard error naming file, document, object and field;
//! the exit code is then 1. What Ama does not implement of a good document is a `Warning:`
//! line ([`api::support`]). An AuthorizationPolicy or RequestAuthentication Ama cannot read is
//! applied all the same, as the DENY of everything it selects that stands in for it
//! ([`api::objects::UnreadablePolicy`]: leaving it out would fail open), and fails the command
//! too: the document as written was not accepted.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::local::MeshName;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// File or directory to apply; `-` reads standard input. Repeat to apply several, in order.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub filenames: Vec<PathBuf>,
    /// Also the files in the subdirectories of a directory given with -f.
    #[arg(short = 'R', long = "recursive")]
    pub recursive: bool,
    /// The namespace of the objects that name none (as `kubectl apply -n`); an object that
    /// names another is refused.
    #[arg(short = 'n', long = "namespace", value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub mesh: MeshName,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = args.mesh.dir()?;
    let mut failed = false;
    for file in &files(&args.filenames, args.recursive)? {
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
        // `-n` first, so that what is reported names the objects as they are applied.
        let text = match &args.namespace {
            Some(ns) => local::manifests::in_namespace(&text, &name, ns)?,
            None => text,
        };
        let parsed = api::objects::parse(&text, &name);
        for f in &parsed.findings {
            eprintln!("{}", f.for_terminal());
        }
        failed |= parsed.errors().next().is_some()
            || parsed
                .objects
                .iter()
                .any(|o| matches!(o, api::objects::Object::UnreadablePolicy(_)));
        if parsed.objects.is_empty() {
            continue;
        }
        for applied in local::runtime::apply(&dir, &text, &name, args.namespace.as_deref())? {
            println!("{} {}", applied.resource, applied.verb);
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The files `-f` names, as kubectl reads them: a file as given (`-` too); a directory as its
/// `.yaml`, `.yml` and `.json` files in name order, and with `recursive` those of its
/// subdirectories, depth first in name order. A directory without any is an error, as kubectl's
/// "error: no objects passed to apply".
pub fn files(given: &[PathBuf], recursive: bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in given {
        if path.as_os_str() != "-" && path.is_dir() {
            let before = out.len();
            collect(path, recursive, &mut out)?;
            if out.len() == before {
                anyhow::bail!(
                    "{}: no .yaml, .yml or .json files{}",
                    path.display(),
                    if recursive {
                        ""
                    } else {
                        " (-R reads its subdirectories)"
                    }
                );
            }
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn collect(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading directory {}", dir.display()))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if recursive {
                collect(&path, recursive, out)?;
            }
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_its_manifest_files_in_name_order() {
        let base = std::env::temp_dir().join(format!("ama-apply-files-{}", std::process::id()));
        let root = base.join("dir");
        let empty = base.join("empty");
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&empty).unwrap();
        let root = root.as_path();
        for f in ["b.yaml", "a.json", "c.yml", "notes.txt", "sub/d.yaml"] {
            std::fs::write(root.join(f), "").unwrap();
        }
        let names = |recursive| {
            files(&[root.to_path_buf()], recursive)
                .unwrap()
                .iter()
                .map(|p| p.strip_prefix(root).unwrap().display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(false), ["a.json", "b.yaml", "c.yml"]);
        assert_eq!(names(true), ["a.json", "b.yaml", "c.yml", "sub/d.yaml"]);
        let err = files(&[root.join("sub/..").join("sub"), root.join("x")], false);
        assert_eq!(err.unwrap().len(), 2);
        let err = files(std::slice::from_ref(&empty), false).unwrap_err();
        assert!(err.to_string().contains("no .yaml"), "{err}");
        assert_eq!(files(&["-".into()], false).unwrap(), [PathBuf::from("-")]);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
