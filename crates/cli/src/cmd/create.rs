//! `ama create secret tls|generic NAME …`: a Secret in the running local mesh, with
//! `kubectl create secret`'s flags (as Istio's Secure Gateways task types them). The Secret is
//! applied as `ama apply` applies objects, so discovery's registry has it; creating it again
//! replaces it (a rotated certificate). Its data is never printed.

use std::path::PathBuf;
use std::process::ExitCode;

use local::secrets::{self, Source};

use super::local::MeshName;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// Namespace of the object (before or after the subcommand, as kubectl takes it).
    #[arg(
        short = 'n',
        long = "namespace",
        global = true,
        default_value = "default"
    )]
    namespace: String,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Create a Secret (kubectl's `create secret`).
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(clap::Subcommand, Debug)]
enum SecretCommand {
    /// A kubernetes.io/tls Secret: tls.crt and tls.key from PEM files.
    Tls(TlsArgs),
    /// An Opaque Secret from files and literals.
    Generic(GenericArgs),
}

#[derive(clap::Args, Debug)]
struct TlsArgs {
    /// The Secret's name.
    name: String,
    /// PEM certificate (chain): tls.crt.
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// PEM private key: tls.key.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    #[command(flatten)]
    mesh: MeshName,
}

#[derive(clap::Args, Debug)]
struct GenericArgs {
    /// The Secret's name.
    name: String,
    /// [KEY=]FILE: the file's content under KEY (default: its base name). Repeatable.
    #[arg(long = "from-file", value_name = "[KEY=]FILE")]
    from_file: Vec<String>,
    /// KEY=VALUE. Repeatable.
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    from_literal: Vec<String>,
    #[command(flatten)]
    mesh: MeshName,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Command::Secret(command) = args.command;
    let (secret, mesh) = match command {
        SecretCommand::Tls(a) => (
            secrets::tls(&a.name, &args.namespace, &a.cert, &a.key)?,
            a.mesh,
        ),
        SecretCommand::Generic(a) => {
            if a.from_file.is_empty() && a.from_literal.is_empty() {
                anyhow::bail!("ama create secret generic: give --from-file or --from-literal");
            }
            let sources: Vec<Source> = a
                .from_file
                .into_iter()
                .map(Source::File)
                .chain(a.from_literal.into_iter().map(Source::Literal))
                .collect();
            (
                secrets::generic(&a.name, &args.namespace, &sources)?,
                a.mesh,
            )
        }
    };
    let dir = mesh.dir()?;
    let text = secret.to_string();
    for applied in local::runtime::apply(&dir, &text, "ama create secret", None)? {
        // `created`, or `configured` for a replaced Secret; never its data.
        println!("{} {}", applied.resource, applied.verb);
    }
    Ok(ExitCode::SUCCESS)
}
