//! `ama kube-inject`: add the sidecar to Kubernetes manifests, like `istioctl kube-inject`.
//!
//! Reads each `-f` (a file or `-` for standard input) in turn, injects it with `inject`, and
//! writes the good documents to standard output or `-o`. Every bad document is reported on
//! standard error, one line each, prefixed with its file; the exit code is then 1. What Ama
//! does not implement of the documents (Istio's sidecar annotations it does not act on, Istio
//! config fields) is a `Warning:` line each ([`api::support`]), as `ama apply` prints it.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use api::{InjectConfigFile, MeshConfig, Values};
use inject::InjectConfig;

/// Inject the istio-proxy sidecar into Kubernetes workloads (like `istioctl kube-inject`).
#[derive(clap::Args, Debug)]
#[command(after_help = CONFIG_HELP)]
pub struct Args {
    /// Manifest to inject; `-` reads standard input. Repeat to inject several, in order.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub filenames: Vec<PathBuf>,

    /// Write the injected manifests to FILE instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// MeshConfig to use: YAML of the MeshConfig itself (the `mesh` key of the ConfigMap
    /// `istio`) or that whole ConfigMap.
    #[arg(long = "meshConfigFile", value_name = "FILE")]
    pub mesh_config_file: Option<PathBuf>,

    /// Istio values to use (YAML or JSON; the `values` key of the ConfigMap
    /// `istio-sidecar-injector`).
    #[arg(long = "valuesFile", value_name = "FILE")]
    pub values_file: Option<PathBuf>,

    /// One file holding the mesh config and/or values: the ConfigMap `istio-sidecar-injector`
    /// (key `values`), the ConfigMap `istio` (key `mesh`) or an IstioOperator (`spec.meshConfig`,
    /// `spec.values`). `--meshConfigFile` and `--valuesFile` override its parts.
    #[arg(long = "injectConfigFile", value_name = "FILE")]
    pub inject_config_file: Option<PathBuf>,

    /// Control-plane revision to inject for (overrides the values' `revision`).
    #[arg(long = "revision", short = 'r', value_name = "REV")]
    pub revision: Option<String>,
}

const CONFIG_HELP: &str = "\
Without config files, the settings are Istio's default profile, except the image:
docker.io/ama/proxy:<ama version>. From the values: global.hub, global.tag,
global.proxy.image, global.proxy.resources, global.caAddress, global.meshID,
global.trustDomain, global.multiCluster.clusterName, global.istioNamespace, global.network,
global.imagePullPolicy, global.imagePullSecrets, global.logging.level, global.pilotCertProvider,
global.mountMtlsCerts, global.proxy.{logLevel, componentLogLevel, statusPort, clusterDomain,
includeIPRanges, excludeIPRanges, includeInboundPorts, excludeInboundPorts,
includeOutboundPorts, excludeOutboundPorts, privileged, readiness*, startupProbe,
holdApplicationUntilProxyStarts}, global.sds.token.aud, pilot.cni.{enabled, provider},
pilot.env.ENABLE_NATIVE_SIDECARS (off unless \"true\"), sidecarInjectorWebhook.rewriteAppHTTPProbe,
revision. From the MeshConfig: trustDomain, enablePrometheusMerge, inboundTrafficPolicy.mode,
defaultConfig (sent to the proxy in PROXY_CONFIG; interceptionMode, statusPort,
holdApplicationUntilProxyStarts and proxyMetadata also shape injection).
Pod annotations override both. The Go template of istio-sidecar-injector is not used.";

/// Runs `ama kube-inject`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = load_config(&args)?;
    let stdin_uses = args.filenames.iter().filter(|f| is_stdin(f)).count();
    if stdin_uses > 1 {
        bail!("-f - (standard input) can be given only once");
    }

    let mut outputs = Vec::new();
    let mut failed = false;
    let stderr = io::stderr();
    let mut stderr = stderr.lock();
    for file in &args.filenames {
        let (name, text) = read_input(file)?;
        let result = inject::inject_stream(&text, &name, &config);
        // What Ama does not implement of the objects, and kinds no API server serves (a typo):
        // injection passes those through unchanged, as istioctl does, and `kubectl apply` will
        // refuse them; the other errors are injection's own to report.
        for finding in api::objects::parse(&text, &name).findings {
            if !finding.is_error() {
                writeln!(stderr, "{}", finding.for_terminal())?;
            } else if finding.field == "kind" {
                writeln!(stderr, "Warning: {finding}; passed through unchanged")?;
            }
        }
        for warning in &result.warnings {
            writeln!(stderr, "warning: {warning}")?;
        }
        for error in &result.errors {
            writeln!(stderr, "error: {error}")?;
        }
        failed |= !result.errors.is_empty();
        if !result.output.is_empty() {
            outputs.push(result.output);
        }
    }

    let output = outputs.join("---\n");
    match &args.output {
        Some(path) => {
            fs::write(path, output).with_context(|| format!("cannot write {}", path.display()))?
        }
        None => {
            let stdout = io::stdout();
            let mut stdout = stdout.lock();
            stdout.write_all(output.as_bytes())?;
            stdout.flush()?;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// The name used in messages and the text of one input.
fn read_input(path: &Path) -> anyhow::Result<(String, String)> {
    if is_stdin(path) {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        return Ok(("<stdin>".to_string(), text));
    }
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((path.display().to_string(), text))
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Builds the injection settings from the config files and flags.
fn load_config(args: &Args) -> anyhow::Result<InjectConfig> {
    let mut config = InjectConfig::default();
    if let Some(path) = &args.inject_config_file {
        let file = InjectConfigFile::from_yaml(&read_file(path)?)
            .with_context(|| format!("{}", path.display()))?;
        if let Some(mesh) = file.mesh {
            config.mesh = mesh;
        }
        if let Some(values) = file.values {
            config.values = values;
        }
    }
    if let Some(path) = &args.mesh_config_file {
        config.mesh = MeshConfig::from_yaml(&read_file(path)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    if let Some(path) = &args.values_file {
        config.values =
            Values::from_yaml(&read_file(path)?).with_context(|| format!("{}", path.display()))?;
    }
    if let Some(revision) = &args.revision {
        config.values.revision = revision.clone();
    }
    Ok(config)
}
