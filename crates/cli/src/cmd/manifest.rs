//! `ama manifest generate`: print the install manifests, like `istioctl manifest generate`.
//!
//! The manifests come from the `manifest` crate; this file reads the flags and the CA file,
//! writes the YAML stream to standard output or `-o`, and the notes to standard error.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use manifest::{SET_KEYS, Settings};

/// Print the install manifests (CRDs, control plane, webhook, gateways), like `istioctl manifest`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print the manifests as one YAML stream, ready for `kubectl apply -f -`.
    Generate(GenerateArgs),
}

/// `ama manifest generate` flags.
#[derive(clap::Args, Debug)]
#[command(after_help = SET_HELP)]
pub struct GenerateArgs {
    /// Change a setting: key=value (repeatable). See below for the keys.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// Write the manifests to FILE instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// PEM certificate of the CA that signs the control plane's webhook certificate; written,
    /// base64, as the webhook's caBundle. Without it `ama discovery` sets caBundle at start-up.
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

const SET_HELP: &str = "\
Keys of --set: profile (default: the ingress gateway istio-ingressgateway; demo: also the egress
gateway istio-egressgateway; minimal: no gateway), hub and tag (the image is <hub>/proxy:<tag>; values.global.hub and
values.global.tag are the same), values.global.istioNamespace (default istio-system),
meshConfig.accessLogFile (such as /dev/stdout), meshConfig.accessLogEncoding (TEXT or JSON),
meshConfig.trustDomain (default cluster.local).";

/// Runs `ama manifest …`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Generate(args) => generate(args),
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    debug_assert!(SET_KEYS.iter().all(|k| SET_HELP.contains(k)));
    let mut settings = Settings::default();
    for assignment in &args.set {
        settings.set(assignment)?;
    }
    if let Some(path) = &args.ca_cert {
        let pem =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        settings.ca_cert_pem = Some(pem);
    }
    let generated = manifest::generate(&settings).with_context(|| match &args.ca_cert {
        Some(path) => format!("{}", path.display()),
        None => "manifest".to_string(),
    })?;
    let text = manifest::render(&generated.objects);
    match &args.output {
        Some(path) => {
            fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?
        }
        None => {
            let mut stdout = io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
        }
    }
    let mut stderr = io::stderr().lock();
    for note in &generated.notes {
        writeln!(stderr, "note: {note}")?;
    }
    Ok(ExitCode::SUCCESS)
}
