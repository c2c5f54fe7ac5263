//! `ama down`: stops the local mesh that `ama up` runs (from any shell), or removes what an
//! `ama up` that was killed left behind.

use std::process::ExitCode;

use local::runtime::Down;

use super::local::MeshName;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub mesh: MeshName,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = args.mesh.dir()?;
    match local::runtime::down(&dir)? {
        Down::Stopped { pods } => println!(
            "mesh \"{}\" stopped ({pods} pod(s) removed)",
            args.mesh.name
        ),
        Down::CleanedUp { pods } => println!(
            "mesh \"{}\": its ama up was gone; removed what it left ({pods} pod(s))",
            args.mesh.name
        ),
    }
    Ok(ExitCode::SUCCESS)
}
