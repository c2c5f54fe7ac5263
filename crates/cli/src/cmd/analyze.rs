//! `ama analyze [FILE|DIR]... [-f FILE|DIR]... [-R] [-A | -n NS] [-o log|json|yaml]`: Istio's
//! `istioctl analyze` over files and directories of YAML, or over the running `ama up` mesh's
//! objects when none is given.
//!
//! The checks are [`api::analysis`]'s (Istio's codes: IST0101 ReferencedResourceNotFound,
//! IST0102 NamespaceNotInjected, IST0106 SchemaValidationError, IST0128/IST0129 for TLS
//! origination without a CA) and every finding the parser and
//! `api::support` report (AMA0001 NotImplemented, AMA0002 FailsClosed): the same list `ama up`
//! and `ama apply` print. Output as istioctl's:
//!
//! ```text
//! Error [IST0101] (VirtualService default/reviews vs.yaml:12) Referenced host+subset in destinationrule not found: "reviews+v9"
//! ```
//!
//! The reference is the line of the object's document (istioctl points at the field's own
//! line); the live mesh's objects have none. Exit code 79 (istioctl's) when a message reaches
//! `--failure-threshold` (Error by default) in the log format (as istioctl, `-o json|yaml`
//! exit 0), 1 when a file cannot be read. Given files are
//! analysed with the running mesh's objects (a file's object replacing the mesh's of the same
//! kind, namespace and name), as istioctl does with the cluster's; `--use-kube=false`, or no
//! running mesh (said on stderr), analyses the files alone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use api::analysis::{Code, Level, Message, analyze, finding_message};
use api::objects::Object;
use serde_json::{Value, json};

use super::local::MeshName;

/// istioctl's exit code when analyzers found issues at or above the failure threshold.
const FOUND_ISSUES: u8 = 79;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// One line per message.
    #[default]
    Log,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// A message level, as istioctl's thresholds name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Threshold {
    /// Info and above.
    Info,
    /// Warning and above.
    Warning,
    /// Errors only.
    Error,
}

impl Threshold {
    fn level(self) -> Level {
        match self {
            Threshold::Info => Level::Info,
            Threshold::Warning => Level::Warning,
            Threshold::Error => Level::Error,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files or directories of YAML (*.yaml, *.yml, *.json) to analyse.
    pub files: Vec<PathBuf>,
    /// More files or directories.
    #[arg(short = 'f', long = "filename")]
    pub filename: Vec<PathBuf>,
    /// Into the subdirectories of directories too.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Messages about every namespace.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// With the running mesh's objects (`--use-kube=false`: the files alone).
    #[arg(short = 'k', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub use_kube: bool,
    /// Messages about this namespace (and cluster-wide objects).
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Log)]
    pub output: Output,
    /// The lowest level that makes the command fail (exit 79).
    #[arg(long, value_enum, default_value_t = Threshold::Error)]
    pub failure_threshold: Threshold,
    /// The lowest level shown.
    #[arg(long, value_enum, default_value_t = Threshold::Info)]
    pub output_threshold: Threshold,
    #[command(flatten)]
    pub mesh: MeshName,
}

/// One message as printed: what, about which object, where.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Report {
    /// The code.
    code: Code,
    /// `Kind namespace/name`, empty when the document could not be read.
    origin: String,
    /// The origin's namespace, empty when unknown (always shown).
    namespace: String,
    /// `file:line` of the document, empty for the live mesh's objects.
    reference: String,
    /// The text.
    text: String,
}

impl Report {
    /// istioctl's line: `Error [IST0101] (VirtualService default/reviews vs.yaml:12) text`.
    fn line(&self) -> String {
        let place = [self.origin.as_str(), self.reference.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "{} [{}] ({place}) {}",
            self.code.level().as_str(),
            self.code.id(),
            self.text
        )
    }

    /// istioctl's JSON object of a message.
    fn json(&self) -> Value {
        let mut v = json!({
            "code": self.code.id(),
            "level": self.code.level().as_str(),
            "message": self.text,
            "origin": self.origin,
            "reference": self.reference,
        });
        if let Some(url) = self.code.documentation_url() {
            v["documentationUrl"] = json!(url);
        }
        v
    }
}

/// A stream to analyse: its text, and its name in references (`None`: the live mesh's).
struct Source {
    /// The name (a path).
    name: Option<String>,
    /// The YAML.
    text: String,
}

/// Every message about the objects of `sources`: the parser's and `api::support`'s findings,
/// then [`api::analysis::analyze`]'s over all objects together. An object of a named source
/// (a file) replaces the live mesh's object of the same kind, namespace and name, as istioctl
/// lets files override the cluster's resources.
fn reports(sources: &[Source]) -> Vec<Report> {
    // Document by document, so that each object knows its document's line.
    let parsed: Vec<(&Source, usize, usize, api::objects::Parsed)> = sources
        .iter()
        .flat_map(|source| {
            api::yaml::split_documents(&source.text)
                .into_iter()
                .map(move |doc| {
                    // `doc.line` is the first line with content; the parser counts lines from
                    // the start of the document's text, blank lines included.
                    let blank = doc.text.lines().take_while(|l| l.trim().is_empty()).count();
                    let name = source.name.as_deref().unwrap_or("");
                    let parsed = api::objects::parse(doc.text, name);
                    (source, doc.line - blank, doc.line, parsed)
                })
        })
        .collect();
    // What the files declare, even where they fail to parse: the user means to replace it.
    let from_files: HashSet<String> = parsed
        .iter()
        .filter(|(source, ..)| source.name.is_some())
        .flat_map(|(.., p)| {
            p.objects
                .iter()
                .map(Object::display)
                .chain(p.findings.iter().filter_map(|f| f.object.clone()))
        })
        .collect();
    let replaced = |source: &Source, origin: Option<&str>| {
        source.name.is_none() && origin.is_some_and(|o| from_files.contains(o))
    };
    let mut objects: Vec<Object> = Vec::new();
    let mut references: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (source, start, first, p) in parsed {
        let at = |line: usize| match &source.name {
            Some(n) => format!("{n}:{line}"),
            None => String::new(),
        };
        for f in &p.findings {
            if replaced(source, f.object.as_deref()) {
                continue;
            }
            let (code, text) = finding_message(f);
            let origin = f.object.clone().unwrap_or_default();
            out.push(Report {
                code,
                namespace: namespace_of(&origin),
                origin,
                reference: at(start + f.line.saturating_sub(1)),
                text,
            });
        }
        for o in p.objects {
            if replaced(source, Some(&o.display())) {
                continue;
            }
            references.push(at(first));
            objects.push(o);
        }
    }
    out.extend(analyze(&objects).into_iter().map(|m: Message| {
        Report {
            reference: m
                .object
                .and_then(|i| references.get(i).cloned())
                .unwrap_or_default(),
            code: m.code,
            origin: m.origin,
            namespace: m.namespace,
            text: m.text,
        }
    }));
    out
}

/// The namespace of `Kind namespace/name` (empty for `Kind name` and unknown objects).
fn namespace_of(origin: &str) -> String {
    match origin.split_once(' ') {
        Some(("Namespace", name)) => name.to_string(),
        Some((_, name)) => name
            .split_once('/')
            .map(|(ns, _)| ns.to_string())
            .unwrap_or_default(),
        None => String::new(),
    }
}

/// The extensions istioctl reads.
const EXTENSIONS: [&str; 3] = ["json", "yaml", "yml"];

/// The YAML files of `path`: itself, or a directory's files in name order (and its
/// subdirectories' with `recursive`); files of other extensions are skipped, and said, as
/// istioctl does.
fn files_of(path: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_dir() {
        let known = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        if known {
            out.push(path.to_path_buf());
        } else {
            eprintln!(
                "Skipping file {}, recognized file extensions are: [.json .yaml .yml]",
                path.display()
            );
        }
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{}", path.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}", path.display()))?;
    entries.sort();
    for entry in entries {
        if !entry.is_dir() || recursive {
            files_of(&entry, recursive, out)?;
        }
    }
    Ok(())
}

/// The live mesh's objects (those its control plane reads), as unnamed sources.
fn live_sources(mesh: &MeshName) -> anyhow::Result<Vec<Source>> {
    let dir = mesh.dir()?;
    dir.load()?;
    let mut files = Vec::new();
    files_of(&dir.config_dir(), false, &mut files)?;
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).with_context(|| format!("{}", f.display()))?;
            Ok(Source { name: None, text })
        })
        .collect()
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let paths: Vec<&PathBuf> = args.files.iter().chain(&args.filename).collect();
    let mut sources = Vec::new();
    if paths.is_empty() {
        if !args.use_kube {
            bail!("nothing to analyse: give files or directories, or leave --use-kube on");
        }
        sources = live_sources(&args.mesh)?;
    } else {
        if args.use_kube {
            // istioctl analyses files together with the cluster's resources; without a running
            // mesh the files are analysed alone, and the user is told.
            match live_sources(&args.mesh) {
                Ok(live) => sources = live,
                Err(e) => eprintln!("note: analysing the files alone: {e:#}"),
            }
        }
        let mut files = Vec::new();
        for p in paths {
            files_of(p, args.recursive, &mut files)?;
        }
        if files.is_empty() {
            bail!("no YAML files (*.yaml, *.yml, *.json) in the paths given");
        }
        for f in files {
            let text = std::fs::read_to_string(&f).with_context(|| format!("{}", f.display()))?;
            sources.push(Source {
                name: Some(f.display().to_string()),
                text,
            });
        }
    }
    let mut reports = reports(&sources);
    if !args.all_namespaces {
        reports.retain(|r| r.namespace.is_empty() || r.namespace == args.namespace);
    }
    reports.retain(|r| r.code.level() >= args.output_threshold.level());
    reports
        .sort_by(|a, b| (&a.origin, a.code.id(), &a.text).cmp(&(&b.origin, b.code.id(), &b.text)));
    reports.dedup();
    let scope = if args.all_namespaces {
        "all namespaces".to_string()
    } else {
        format!("namespace: {}", args.namespace)
    };
    match args.output {
        Output::Log => {
            if reports.is_empty() {
                // istioctl names the files it read, else the namespaces.
                let files: Vec<&str> = sources.iter().filter_map(|s| s.name.as_deref()).collect();
                let what = if files.is_empty() {
                    scope.clone()
                } else {
                    files.join("\n")
                };
                eprintln!("\u{2714} No validation issues found when analyzing {what}.");
            }
            for r in &reports {
                println!("{}", r.line());
            }
        }
        Output::Json | Output::Yaml => {
            let value = Value::Array(reports.iter().map(Report::json).collect());
            if args.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", api::yaml::to_yaml(&value)?);
            }
        }
    }
    // As istioctl: only the log format sets the exit code.
    if args.output == Output::Log
        && reports
            .iter()
            .any(|r| r.code.level() >= args.failure_threshold.level())
    {
        eprintln!(
            "Error: Analyzers found issues when analyzing {scope}.\nSee \
             https://istio.io/latest/docs/reference/config/analysis for more information about \
             causes and resolutions."
        );
        return Ok(ExitCode::from(FOUND_ISSUES));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {ports: [{port: 9080, name: http}], selector: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v9}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: other}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      localityLbSetting: {enabled: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualServce
metadata: {name: typo}
";

    #[test]
    fn istioctls_lines_with_file_and_line() {
        let reports = reports(&[Source {
            name: Some("vs.yaml".into()),
            text: FILE.into(),
        }]);
        let lines: Vec<String> = reports.iter().map(Report::line).collect();
        assert!(
            lines.contains(
                &"Error [IST0101] (VirtualService default/reviews vs.yaml:6) Referenced \
                  host+subset in destinationrule not found: \"reviews+v9\""
                    .to_string()
            ),
            "{lines:#?}"
        );
        assert!(
            lines.contains(
                &"Error [IST0101] (DestinationRule other/ratings vs.yaml:15) Referenced host \
                  not found: \"ratings\""
                    .to_string()
            ),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with(
                "Warning [AMA0001] (DestinationRule other/ratings vs.yaml:15) \
                 spec.trafficPolicy.loadBalancer.localityLbSetting: not implemented by Ama"
            )),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with(
                "Error [IST0106] (VirtualServce default/typo vs.yaml:24) Schema validation \
                     error: kind: unknown kind \"VirtualServce\""
            )),
            "{lines:#?}"
        );
        let other: Vec<&Report> = reports.iter().filter(|r| r.namespace == "other").collect();
        assert_eq!(other.len(), 2, "{other:#?}");
    }

    #[test]
    fn lines_count_blank_lines_and_files_replace_live_objects() {
        let live = Source {
            name: None,
            text: FILE.into(),
        };
        // The file fixes the live VirtualService; blank lines after the separator count.
        let file = Source {
            name: Some("fix.yaml".into()),
            text: "apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio-injection: enabled}}
---


apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: 50
    - destination: {host: nowhere}
      weight: 50
"
            .into(),
        };
        let lines: Vec<String> = reports(&[live, file]).iter().map(Report::line).collect();
        assert!(
            lines.contains(
                &"Error [IST0101] (VirtualService default/reviews fix.yaml:7) Referenced host \
                  not found: \"nowhere\""
                    .to_string()
            ),
            "{lines:#?}"
        );
        // The live object's subset is gone with it; the live DestinationRule is still there.
        assert!(
            !lines.iter().any(|l| l.contains("reviews+v9")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("(DestinationRule other/ratings)")),
            "{lines:#?}"
        );
    }

    #[test]
    fn json_has_istioctls_fields() {
        let reports = reports(&[Source {
            name: None,
            text: FILE.into(),
        }]);
        let r = reports
            .iter()
            .find(|r| r.code == Code::ReferencedResourceNotFound)
            .unwrap();
        let text = serde_json::to_string(&r.json()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["code"], "IST0101");
        assert_eq!(v["level"], "Error");
        assert_eq!(v["origin"], "VirtualService default/reviews");
        // The live mesh's objects have no file.
        assert_eq!(v["reference"], "");
        assert_eq!(
            v["documentationUrl"],
            "https://istio.io/latest/docs/reference/config/analysis/ist0101/?ref=istioctl"
        );
        assert_eq!(
            r.line().split(" (").nth(1).unwrap().split(')').next(),
            Some("VirtualService default/reviews")
        );
    }

    #[test]
    fn directories_and_recursion() {
        let dir = std::env::temp_dir().join(format!("ama-analyze-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("b.yaml"), "").unwrap();
        std::fs::write(dir.join("a.yml"), "").unwrap();
        std::fs::write(dir.join("notes.txt"), "").unwrap();
        std::fs::write(dir.join("sub/c.json"), "").unwrap();
        let names = |recursive| {
            let mut out = Vec::new();
            files_of(&dir, recursive, &mut out).unwrap();
            out.iter()
                .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(false), ["a.yml", "b.yaml"]);
        assert_eq!(names(true), ["a.yml", "b.yaml", "sub/c.json"]);
        assert!(files_of(&dir.join("missing"), false, &mut Vec::new()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
