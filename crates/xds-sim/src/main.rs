//! `ama-xds-sim`: N simulated proxies (Delta ADS clients, [`xds::ads::AdsClient`]) in one
//! process against a real `ama discovery --registry files` child process with M services.
//!
//! Generates the config dir (one file per service: a Service and a Deployment of 2 replicas with
//! `local.ama.dev/addresses`), starts discovery, connects N clients over plaintext gRPC, waits
//! until every client holds all M services, then makes K changes (one more address in one
//! Deployment's annotation, written with a rename) and measures, per change, the time from the
//! file write until each client has applied the new endpoint. Samples discovery's RSS and CPU
//! from /proc. Writes `<out>/n<N>-m<M>.json` and `.md`.

mod light;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;
use tokio::sync::mpsc;
use xds::ads::{AdsClient, ProxyId, ResourceType};
use xds::{ProxyResources, Service};

/// Which client the simulated proxies run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientKind {
    /// ACK and look only at the probed service; keep nothing.
    Light,
    /// The proxy's `AdsClient`: decode and keep every resource.
    Full,
}

#[derive(Parser, Debug)]
#[command(
    name = "ama-xds-sim",
    about = "Control-plane scale simulation against `ama discovery`"
)]
struct Args {
    /// The `ama` binary to run `ama discovery` with.
    #[arg(long, default_value = "target/bench/release/ama")]
    ama: PathBuf,
    /// Simulated proxies (Delta ADS clients).
    #[arg(long, short = 'n', default_value_t = 1000)]
    proxies: usize,
    /// Services (each a Deployment of 2 replicas).
    #[arg(long, short = 'm', default_value_t = 1000)]
    services: usize,
    /// Registry changes measured.
    #[arg(long, short = 'k', default_value_t = 20)]
    changes: usize,
    /// Pause between changes (ms).
    #[arg(long, default_value_t = 1500)]
    pause_ms: u64,
    /// How long one change may take to reach every client (s).
    #[arg(long, default_value_t = 60)]
    change_timeout: u64,
    /// How long every client may take to sync (s); default 120 + N/50.
    #[arg(long)]
    sync_timeout: Option<u64>,
    /// Where the JSON and Markdown go.
    #[arg(long, default_value = "bench/control-plane/results")]
    out: PathBuf,
    /// Kill discovery (and fail) when its RSS passes this many MB, before the machine's OOM
    /// killer does.
    #[arg(long, default_value_t = 6000)]
    max_rss_mb: u64,
    /// The client each simulated proxy runs.
    #[arg(long, value_enum, default_value_t = ClientKind::Light)]
    client: ClientKind,
    /// N=50, M=20, K=3: a few seconds, for tests.
    #[arg(long)]
    quick: bool,
}

/// What the clients are waiting for: change `id` is in when service `hostname` has `expected`
/// endpoints.
#[derive(Default)]
struct Probe {
    id: u64,
    hostname: String,
    expected: usize,
}

enum Event {
    Synced,
    Applied { change: u64, at: Instant },
}

fn hostname(s: usize) -> String {
    format!("svc{s}.default.svc.cluster.local")
}

fn address(s: usize, r: usize) -> String {
    format!("10.{}.{}.{}", 100 + s / 250, s % 250, r + 1)
}

fn service_yaml(s: usize, replicas: usize) -> String {
    let addresses: Vec<String> = (0..replicas).map(|r| address(s, r)).collect();
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app{s}\n  annotations: {{local.ama.dev/addresses: \"{}\"}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: app{s}}}}}\n  template:\n    metadata: {{labels: {{app: app{s}}}}}\n    spec: {{containers: [{{name: app, image: app, ports: [{{containerPort: 8080}}]}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}}}\nspec: {{selector: {{app: app{s}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n",
        addresses.join(",")
    )
}

/// Writes with a rename, so the poller never reads half a file.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// (RSS bytes, CPU seconds user+system) of a process.
fn proc_sample(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is field 3.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((rss_kb * 1024, (utime + stime) / hz))
}

#[derive(Default, Clone, Copy)]
struct Samples {
    peak_rss: u64,
    last_rss: u64,
    cpu: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `name_sum` and `name_count` of a histogram on discovery's `/metrics`.
async fn histogram(addr: SocketAddr, name: &str) -> Option<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let value = |suffix: &str| {
        let key = format!("{name}_{suffix}");
        text.lines()
            .find(|l| l.split([' ', '{']).next() == Some(key.as_str()))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((value("sum")?, value("count")?))
}

/// Mean seconds of the observations between two readings of a histogram.
fn mean_between(before: Option<(f64, f64)>, after: Option<(f64, f64)>) -> Option<f64> {
    let ((s0, c0), (s1, c1)) = (before?, after?);
    (c1 > c0).then(|| (s1 - s0) / (c1 - c0))
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.quick {
        args.proxies = 50;
        args.services = 20;
        args.changes = 3;
        args.pause_ms = 700;
        args.change_timeout = 30;
    }
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("ama-xds-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let (n, m) = (args.proxies, args.services);
    anyhow::ensure!(n > 0 && m > 0, "--proxies and --services must be > 0");
    let work = tempfile::tempdir()?;
    let config = work.path().join("config");
    std::fs::create_dir_all(&config)?;
    std::fs::write(
        config.join("namespace.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio-injection: enabled}}\n",
    )?;
    for s in 0..m {
        std::fs::write(config.join(format!("svc{s}.yaml")), service_yaml(s, 2))?;
    }

    let grpc_port = free_port()?;
    let mon_port = free_port()?;
    let grpc: SocketAddr = format!("127.0.0.1:{grpc_port}").parse()?;
    let started = Instant::now();
    let child = Command::new(&args.ama)
        .args(["discovery", "--registry", "files", "--config-dir"])
        .arg(&config)
        .args(["--grpc-addr", &grpc.to_string()])
        .args(["--monitoring-addr", &format!("127.0.0.1:{mon_port}")])
        .args(["--secure-grpc-addr", "off", "--webhook-addr", "off"])
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", args.ama.display()))?;
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    loop {
        if tokio::net::TcpStream::connect(grpc).await.is_ok() {
            break;
        }
        if let Some(status) = child.0.try_wait()? {
            bail!("ama discovery exited: {status}");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("ama discovery did not listen on {grpc} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listen_after = started.elapsed();
    eprintln!("discovery (pid {pid}) listening after {listen_after:?}");

    // Sampler: discovery's RSS (peak, last) and CPU, every 100 ms.
    let samples = Arc::new(Mutex::new(Samples::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let over = Arc::new(AtomicBool::new(false));
    let max_rss = args.max_rss_mb * 1_000_000;
    {
        let (samples, stop, over) = (Arc::clone(&samples), Arc::clone(&stop), Arc::clone(&over));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some((rss, cpu)) = proc_sample(pid) {
                    if rss > max_rss && !over.swap(true, Ordering::Relaxed) {
                        // SAFETY: kill(2) on our own child's pid.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                    let mut s = samples.lock().expect("samples");
                    s.peak_rss = s.peak_rss.max(rss);
                    s.last_rss = rss;
                    s.cpu = cpu;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    let snapshot = || *samples.lock().expect("samples");
    let cpu_before = proc_sample(pid).map(|s| s.1).unwrap_or(0.0);

    // The clients.
    let probe = Arc::new(Mutex::new(Probe::default()));
    let (events_tx, mut events) = mpsc::unbounded_channel::<(usize, Event)>();
    let mut statuses = Vec::with_capacity(n);
    let light_disconnects = Arc::new(AtomicU64::new(0));
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    let endpoint = xds::ads::client::endpoint(&grpc.to_string())?;
    let connect_started = Instant::now();
    for j in 0..n {
        let s = j % m;
        let node = ProxyId::sidecar(
            address(s, j % 2).parse()?,
            &format!("app{s}-sim-{j}"),
            "default",
        )
        .to_node(&Default::default());
        if args.client == ClientKind::Light {
            let probe = Arc::clone(&probe);
            let tx = events_tx.clone();
            let (mut synced, mut seen, mut services, mut session) = (false, 0u64, 0usize, 0u64);
            tokio::spawn(light::run(
                grpc,
                node,
                Arc::clone(&light_disconnects),
                Arc::clone(&connecting),
                move |response, stream| {
                    if response.type_url != ResourceType::Service.type_url() {
                        return;
                    }
                    if stream != session {
                        (session, services) = (stream, 0);
                    }
                    // Names are not kept: a removal of a name never sent would miscount, and
                    // the server sends none.
                    services = (services + response.resources.len())
                        .saturating_sub(response.removed_resources.len());
                    if !synced && services >= m {
                        synced = true;
                        let _ = tx.send((j, Event::Synced));
                    }
                    let p = probe.lock().expect("probe");
                    if p.id <= seen {
                        return;
                    }
                    let name = format!("default/{}", p.hostname);
                    let applied = response
                        .resources
                        .iter()
                        .filter(|r| r.name == name)
                        .filter_map(|r| r.resource.as_ref())
                        .filter_map(|any| serde_json::from_slice::<Service>(&any.value).ok())
                        .any(|svc| svc.endpoints.len() >= p.expected);
                    if applied {
                        seen = p.id;
                        let _ = tx.send((
                            j,
                            Event::Applied {
                                change: p.id,
                                at: Instant::now(),
                            },
                        ));
                    }
                },
            ));
            continue;
        }
        let client = AdsClient::new(endpoint.clone(), node);
        statuses.push(client.status());
        let probe = Arc::clone(&probe);
        let tx = events_tx.clone();
        let mut synced = false;
        let mut seen = 0u64;
        tokio::spawn(client.run(move |r: ProxyResources| {
            if !synced && r.services.len() >= m {
                synced = true;
                let _ = tx.send((j, Event::Synced));
            }
            let p = probe.lock().expect("probe");
            if p.id > seen
                && r.services
                    .iter()
                    .any(|svc| svc.hostname == p.hostname && svc.endpoints.len() >= p.expected)
            {
                seen = p.id;
                let _ = tx.send((
                    j,
                    Event::Applied {
                        change: p.id,
                        at: Instant::now(),
                    },
                ));
            }
            Ok(())
        }));
    }

    // Initial sync of every client.
    let mut synced = vec![false; n];
    let mut synced_count = 0;
    let sync_timeout = args.sync_timeout.unwrap_or(120 + n as u64 / 50);
    let sync_deadline = Instant::now() + Duration::from_secs(sync_timeout);
    while synced_count < n {
        if over.load(Ordering::Relaxed) {
            bail!(
                "discovery passed --max-rss-mb {} with {synced_count}/{n} clients synced after {:?}: killed",
                args.max_rss_mb,
                connect_started.elapsed()
            );
        }
        if Instant::now() > sync_deadline {
            bail!("only {synced_count}/{n} clients synced within the deadline");
        }
        match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            Ok(Some((j, Event::Synced))) if !synced[j] => {
                synced[j] = true;
                synced_count += 1;
                if synced_count % 1000 == 0 {
                    eprintln!(
                        "{synced_count}/{n} synced after {:?}",
                        connect_started.elapsed()
                    );
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("event channel closed"),
            Err(_) => {}
        }
    }
    let sync_time = connect_started.elapsed();
    let cpu_sync = snapshot().cpu - cpu_before;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = snapshot();
    let sim_rss = proc_sample(std::process::id()).map(|s| s.0).unwrap_or(0);
    eprintln!(
        "{n} clients synced in {sync_time:?}; discovery RSS {:.1} MB (peak {:.1} MB), sim RSS {:.1} MB",
        idle.last_rss as f64 / 1e6,
        idle.peak_rss as f64 / 1e6,
        sim_rss as f64 / 1e6
    );

    // Changes.
    let mut all_ms = Vec::new();
    let mut per_proxy_ms = Vec::new();
    let mut complete = true;
    let mut replicas: HashMap<usize, usize> = HashMap::new();
    let cpu_changes_start = snapshot().cpu;
    let changes_started = Instant::now();
    let monitoring: SocketAddr = format!("127.0.0.1:{mon_port}").parse()?;
    let convergence_before = histogram(monitoring, "pilot_proxy_convergence_time").await;
    let push_before = histogram(monitoring, "pilot_xds_push_time").await;
    for k in 1..=args.changes {
        let s = (k * 7919) % m;
        let count = replicas.entry(s).or_insert(2);
        *count += 1;
        let text = service_yaml(s, *count);
        {
            let mut p = probe.lock().expect("probe");
            p.hostname = hostname(s);
            p.expected = *count;
            p.id = k as u64;
        }
        // A pseudo-random offset so writes land at every phase of the registry's 500 ms poll.
        tokio::time::sleep(Duration::from_millis((k as u64 * 104_729) % 500)).await;
        let t0 = Instant::now();
        write_atomic(&config.join(format!("svc{s}.yaml")), &text)?;
        let mut got = vec![false; n];
        let mut got_count = 0;
        let mut last = Duration::ZERO;
        let deadline = t0 + Duration::from_secs(args.change_timeout);
        while got_count < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Some((j, Event::Applied { change, at }))) if change == k as u64 && !got[j] => {
                    got[j] = true;
                    got_count += 1;
                    let d = at.duration_since(t0);
                    last = last.max(d);
                    per_proxy_ms.push(d.as_secs_f64() * 1e3);
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("event channel closed"),
                Err(_) => break,
            }
        }
        if got_count < n {
            complete = false;
            eprintln!("change {k}: only {got_count}/{n} clients got it");
        } else {
            all_ms.push(last.as_secs_f64() * 1e3);
            eprintln!(
                "change {k} (svc{s} -> {count} endpoints): all {n} clients in {:.1} ms",
                last.as_secs_f64() * 1e3
            );
        }
        tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
    }
    let end = snapshot();
    let convergence_mean = mean_between(
        convergence_before,
        histogram(monitoring, "pilot_proxy_convergence_time").await,
    );
    let push_mean = mean_between(
        push_before,
        histogram(monitoring, "pilot_xds_push_time").await,
    );
    stop.store(true, Ordering::Relaxed);
    let cpu_changes = end.cpu - cpu_changes_start;
    let changes_wall = changes_started.elapsed();
    let disconnects: u64 = statuses.iter().map(|s| s.borrow().disconnects).sum::<u64>()
        + light_disconnects.load(Ordering::Relaxed);
    let sim_rss_end = proc_sample(std::process::id()).map(|s| s.0).unwrap_or(0);

    all_ms.sort_by(f64::total_cmp);
    per_proxy_ms.sort_by(f64::total_cmp);
    let result = json!({
        "proxies": n,
        "services": m,
        "changes": args.changes,
        "changes_complete": complete,
        "ama": args.ama.display().to_string(),
        "client": format!("{:?}", args.client).to_lowercase(),
        "discovery_listen_s": listen_after.as_secs_f64(),
        "sync_all_s": sync_time.as_secs_f64(),
        "discovery_cpu_sync_s": cpu_sync,
        "discovery_rss_idle_mb": idle.last_rss as f64 / 1e6,
        "discovery_rss_peak_mb": end.peak_rss as f64 / 1e6,
        "discovery_cpu_changes_s": cpu_changes,
        "discovery_cpu_changes_pct_of_wall": 100.0 * cpu_changes / changes_wall.as_secs_f64().max(1e-9),
        "sim_rss_mb": sim_rss_end.max(sim_rss) as f64 / 1e6,
        "client_disconnects": disconnects,
        "discovery_convergence_mean_ms": convergence_mean.map(|s| s * 1e3),
        "discovery_push_time_mean_ms": push_mean.map(|s| s * 1e3),
        "all_proxies_ms": {"p50": pct(&all_ms, 50.0), "p99": pct(&all_ms, 99.0), "max": all_ms.last().copied().unwrap_or(f64::NAN), "samples": all_ms},
        "per_proxy_ms": {"p50": pct(&per_proxy_ms, 50.0), "p99": pct(&per_proxy_ms, 99.0), "max": per_proxy_ms.last().copied().unwrap_or(f64::NAN), "count": per_proxy_ms.len()},
    });
    std::fs::create_dir_all(&args.out)?;
    let stem = format!("n{n}-m{m}");
    std::fs::write(
        args.out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&result)?,
    )?;
    let table = format!(
        "| N | M | changes | sync all (s) | discovery RSS idle / peak (MB) | discovery CPU sync (s) | discovery CPU per change (s) | all-proxies p50 / p99 / max (ms) | per-proxy p50 / p99 / max (ms) | disconnects |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n\
         | {n} | {m} | {}{} | {:.1} | {:.0} / {:.0} | {:.1} | {:.2} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {disconnects} |\n",
        args.changes,
        if complete { "" } else { " (INCOMPLETE)" },
        sync_time.as_secs_f64(),
        idle.last_rss as f64 / 1e6,
        end.peak_rss as f64 / 1e6,
        cpu_sync,
        cpu_changes / args.changes.max(1) as f64,
        pct(&all_ms, 50.0),
        pct(&all_ms, 99.0),
        all_ms.last().copied().unwrap_or(f64::NAN),
        pct(&per_proxy_ms, 50.0),
        pct(&per_proxy_ms, 99.0),
        per_proxy_ms.last().copied().unwrap_or(f64::NAN),
    );
    let table = format!(
        "{table}\ndiscovery's own view (pilot_proxy_convergence_time, detection to publish, incl. 100 ms debounce): mean {} ms; pilot_xds_push_time mean {} ms\n",
        convergence_mean.map_or("n/a".to_string(), |s| format!("{:.0}", s * 1e3)),
        push_mean.map_or("n/a".to_string(), |s| format!("{:.0}", s * 1e3)),
    );
    std::fs::write(args.out.join(format!("{stem}.md")), &table)?;
    println!("{table}");
    drop(child);
    Ok(complete)
}
