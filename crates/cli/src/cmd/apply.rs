//! `ama apply -f FILE [-n NAMESPACE]`: adds or changes objects of the running local mesh
//! (Deployments, Services, Istio config …), like `kubectl apply`; `ama up` takes it at once: new
//! pods start, changed templates replace their pods, config reaches the proxies. `-n` puts the
//! objects that name no namespace into NAMESPACE, as `kubectl apply -n` does (Istio's tasks
//! apply their samples that way); a file with an object that names another is refused.
//!
//! As `kubectl apply`, the good documents are applied and each bad one (malformed, unknown kind
//! or field) is an `error:` line on standard error naming file, document, object and field;
//! the exit code is then 1. What Ama does not implement of a good document is a `Warning:`
//! line ([`api::support`]). An AuthorizationPolicy or RequestAuthentication Ama cannot read is
//! applied all the same, as the DENY of everything it selects that stands in for it
//! ([`api::objects::UnreadablePolicy`]: leaving it out would fail open), and fails the command
//! too: the document as written was not accepted.

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
