//! `ama dashboard [--port N] [--browser=false]`: the live mesh page of a local mesh, as
//! `istioctl dashboard` opens Kiali: a port on the host's loopback forwarded to discovery's
//! monitoring port (15014, in the mesh's bridge namespace), the page's URL printed, and a
//! browser opened when there is a display. It runs until interrupted (Ctrl-C), as istioctl's
//! port-forward does.
//!
//! The forwarding is `local::host_port`'s, the one `ama up` uses for the ingress gateway: each
//! connection's upstream socket is made inside the bridge's namespace.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use control::discovery::MONITORING_PORT;
use local::host_port::{Forwarder, PortSpec, Upstreams};

use super::local::MeshName;
use super::mesh_http::{discovery_json, reachable};

/// The page's path on discovery's monitoring port.
const PAGE_PATH: &str = "/mesh";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Port on 127.0.0.1 of the host (0: any free port).
    #[arg(long, default_value_t = MONITORING_PORT)]
    pub port: u16,
    /// Open the page in a browser (`xdg-open`) when there is a display.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub browser: bool,
    #[command(flatten)]
    pub mesh: MeshName,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = args.mesh.dir()?.load()?;
    reachable(&state)?;
    // Also says clearly when the mesh has no control plane or discovery does not answer.
    discovery_json(&state, "/mesh.json").context("the mesh page's data")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let spec = PortSpec {
            host: args.port,
            service: MONITORING_PORT,
        };
        let forwarder = match Forwarder::start(&state.lan_netns, &[spec]).await {
            Ok(f) => f,
            Err(e @ local::host_port::StartError::Bind { .. }) => {
                bail!("{e} (choose another with --port, or --port 0 for any free one)")
            }
            Err(e) => return Err(e.into()),
        };
        // Discovery listens on all addresses of the bridge's namespace, loopback included.
        forwarder.set_upstreams(Upstreams::from([(
            MONITORING_PORT,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, MONITORING_PORT),
        )]));
        let port = forwarder
            .host_port(MONITORING_PORT)
            .context("the forwarded port")?;
        let url = format!("http://127.0.0.1:{port}{PAGE_PATH}");
        let mut out = std::io::stdout();
        writeln!(out, "{url}")?;
        out.flush()?;
        if args.browser {
            open(&url);
        }
        eprintln!(
            "forwarding to ama discovery of mesh {:?}; Ctrl-C to stop",
            state.cluster
        );
        tokio::signal::ctrl_c().await?;
        drop(forwarder);
        Ok(ExitCode::SUCCESS)
    })
}

/// `xdg-open URL` when a display is set; otherwise (or when it fails) only the URL, printed
/// already, is there to follow.
fn open(url: &str) {
    let display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()));
    if !display {
        return;
    }
    let spawned = Command::new("xdg-open")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("xdg-open {url}: {e}: open it by hand");
    }
}
