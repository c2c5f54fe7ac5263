//! `ama sample httpbin|sleep`: the built-in apps of local meshes (see `local::sample`).

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub app: App,
}

#[derive(clap::Subcommand, Debug)]
pub enum App {
    /// httpbin: /headers, /get, /ip, /status/{code}, /delay/{n}, /anything (as httpbin.org).
    Httpbin {
        /// Port to listen on (all addresses).
        #[arg(long, default_value_t = 80)]
        port: u16,
    },
    /// Sleep until SIGTERM or SIGINT (a client pod's idle process).
    Sleep,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.app {
        App::Httpbin { port } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(async move {
                let addr = SocketAddr::from(([0, 0, 0, 0], port));
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr}"))?;
                eprintln!("httpbin listening on {addr}");
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                local::sample::httpbin::serve(listener, async move {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = tokio::signal::ctrl_c() => {},
                    }
                })
                .await;
                anyhow::Ok(())
            })?;
        }
        App::Sleep => {
            local::sample::sleep::until_signal().context("waiting for a signal")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
