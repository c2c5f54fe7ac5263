#!/usr/bin/env python3
"""Instructions per request through ama's two sidecars, counted by callgrind, in one command.

    python3 bench/profile/instructions.py --ama PATH [--proto http1|grpc] [--tls] [-n 2000]
        [--warmup 400] [--top 20] [--access-log json|off] [--node-extra JSON|@FILE]
        [--collector zipkin|otlp-http] [--repeat R] [-o text|json] [--keep DIR]
    python3 bench/profile/instructions.py --render RESULT.json [--compare BASE.json [--top K]]

The method of bench/PROFILE.md ("Setup"): two network namespaces joined by a veth pair, the
client pod (10.244.0.4) and the server pod (10.244.0.5: nginx with the bench's 1 KiB `/1k`, and
for gRPC the bench's `ama-bench-app` on port 81), both with Istio's capture rules, and both
sidecars (`ama proxy sidecar`, as bench/run.py starts them: its resources, its certificates with
--tls, the JSON access log to stdout unless `--access-log off`) run whole under
`valgrind --tool=callgrind`. Load comes from oha in the client pod through the Service VIP
(`-c 4`). Two runs, each from fresh namespaces and processes: one with N requests after the
warm-up, one with the warm-up only, each ended by SIGTERM. Per request = (Ir(N) − Ir(0)) / N for
each sidecar, so start-up, the checks, the warm-up and the drain cancel out; per function the same
difference of `callgrind_annotate` over the two runs (`--top K` functions, self cost, or
inclusive with `--inclusive`).

`--node-extra` is merged (key by key, shallowly) into the `self` (Node) resource of both
sidecars: what the Telemetry API puts there (`tracing`, `accessLogging`, `metrics`; see
crates/xds/src/telemetry.rs). `--collector` starts bench/profile/sink.py (an HTTP server that
answers 202) in the server pod, outside the mesh (its port is left out of the server pod's
inbound capture, as for a collector pod without a sidecar; the server sidecar sends to it at
127.0.0.1, see `node_extra_for`), and points both sidecars' `tracing` at it, sampled at 100 %
unless --node-extra's `tracing` says otherwise; the run fails unless the sink heard from both
sidecars.

Run as root (namespaces, iptables, setpriv), python3 stdlib only; reuses bench/run.py's pods,
capture rules, certificates and resources. Progress goes to stderr; `-o json` prints one JSON
object on stdout (keys below, in `result()`). Every namespace and process made here is removed
before exit, also on failure and on Ctrl-C; a SIGKILLed run leaves `amabench-<pid>-*` namespaces
that the next run (or bench/run.py) removes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROFILE = Path(__file__).resolve().parent
BENCH = PROFILE.parent
sys.path.insert(0, str(BENCH))
import run as bench  # noqa: E402 (bench/run.py: pods, capture rules, certificates, resources)

CLIENT_IP = "10.244.0.4"
SERVER_IP = "10.244.0.5"
# The sink's port and the collector settings per protocol (Istio's defaults for each).
COLLECTORS = {
    "zipkin": {"protocol": "ZIPKIN", "port": 9411, "path": "/api/v2/spans"},
    "otlp-http": {"protocol": "OTLP_HTTP", "port": 4318, "path": "/v1/traces"},
}
# Bounds on every wait (seconds). Under callgrind a sidecar runs ~50 times slower than natively.
READY_TIMEOUT = 180
STOP_TIMEOUT = 180
ANNOTATE_TIMEOUT = 300


class ProfileError(Exception):
    """A failure that ends the run, with what is needed to understand it."""


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module's docstring (top of this file) for the method.")
    ap.add_argument("--ama", type=Path, help="the ama binary to profile (a release build)")
    ap.add_argument("--proto", choices=bench.PROTOCOLS, default="http1",
                    help="http1: GET /1k over HTTP/1.1; grpc: a unary call with 1 KB messages over "
                         "HTTP/2 (the Service's port 81)")
    ap.add_argument("--tls", action="store_true",
                    help="Istio mTLS between the sidecars with the bench's test certificates")
    ap.add_argument("-n", type=int, default=2000, dest="n", help="measured requests")
    ap.add_argument("--warmup", type=int, default=400, help="requests before the measured ones, in both runs")
    ap.add_argument("--repeat", type=int, default=1, metavar="R",
                    help="pairs of runs (N requests, none); per request is the mean over the pairs")
    ap.add_argument("-c", "--connections", type=int, default=4, help="oha's connections")
    ap.add_argument("--concurrency", type=int, default=2, help="worker threads of each sidecar")
    ap.add_argument("--top", type=int, default=20, metavar="K", help="functions to list per sidecar")
    ap.add_argument("--inclusive", action="store_true",
                    help="rank functions by inclusive cost (callees counted) instead of self cost")
    ap.add_argument("--access-log", choices=("json", "off"), default="json",
                    help="json: --access-log-file /dev/stdout --access-log-encoding JSON, as the "
                         "bench runs the sidecars; off: no --access-log-file")
    ap.add_argument("--node-extra", metavar="JSON",
                    help="a JSON object (or @FILE holding one) merged into both sidecars' `self` "
                         "resource, e.g. '{\"tracing\": {...}}'")
    ap.add_argument("--collector", choices=tuple(COLLECTORS),
                    help="start a sink that answers 202 in the server pod and send both sidecars' "
                         "spans to it (tracing sampled at 100 %% unless --node-extra sets it)")
    ap.add_argument("-o", "--output", choices=("text", "json"), default="text")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="copy the callgrind profiles, resources, logs and commands to DIR")
    ap.add_argument("--grpc-app", type=Path,
                    help="the gRPC app (default: ama-bench-app next to --ama, else "
                         "target/bench/release/ama-bench-app of this checkout)")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only print the text report of an earlier run's `-o json` output")
    ap.add_argument("--compare", type=Path, metavar="BASE_JSON",
                    help="with --render: per sidecar, what changed per request from BASE_JSON (another "
                         "run's -o json) to the rendered one, in total and by function (from both "
                         "results' --top lists: give both runs a large --top)")
    ap.add_argument("--oha", type=Path, default=Path(shutil.which("oha") or Path.home() / ".cargo/bin/oha"))
    args = ap.parse_args(argv)
    if args.compare and not args.render:
        ap.error("--compare goes with --render")
    if args.render:
        return args
    if args.ama is None:
        ap.error("--ama is required")
    if args.n <= 0 or args.repeat <= 0 or args.warmup < 0 or args.connections <= 0 or args.top < 0:
        ap.error("-n, -c and --repeat must be positive, --warmup and --top not negative")
    try:
        args.node_extra = load_node_extra(args.node_extra)
    except ProfileError as e:
        ap.error(str(e))
    if args.proto == "grpc" and args.grpc_app is None:
        beside = args.ama.parent / "ama-bench-app"
        args.grpc_app = beside if beside.exists() else bench.ROOT / "target/bench/release/ama-bench-app"
    return args


def load_node_extra(text: str | None) -> dict:
    """--node-extra: a JSON object, given inline or as @FILE."""
    if text is None:
        return {}
    where = "--node-extra"
    if text.startswith("@"):
        where = f"--node-extra file {text[1:]}"
        try:
            text = Path(text[1:]).read_text()
        except OSError as e:
            raise ProfileError(f"{where}: {e}") from e
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ProfileError(f"{where}: not JSON: {e}") from e
    if not isinstance(value, dict):
        raise ProfileError(f"{where}: expected a JSON object (fields of the Node resource), "
                           f"got {type(value).__name__}")
    return value


def node_extra_for(args, role: str) -> dict:
    """--node-extra for one sidecar, with --collector's `tracing.collector` (the sink) and, unless
    given, `samplingBasisPoints` 10000 (100 %). The sink listens in the server pod, its port left
    out of inbound capture; the client sidecar reaches it at the server pod's IP, the server
    sidecar at 127.0.0.1, because Istio's rules send a sidecar's own connections to its pod's IP
    through its inbound listener (`-o lo ! -d 127.0.0.1 --uid-owner 1337`), which a collector in
    another pod would not."""
    extra = dict(args.node_extra)
    if args.collector:
        c = COLLECTORS[args.collector]
        tracing = dict(extra.get("tracing") or {})
        host = SERVER_IP if role == "client" else "127.0.0.1"
        tracing["collector"] = {"protocol": c["protocol"], "host": host, "port": c["port"],
                                "path": c["path"]}
        tracing.setdefault("samplingBasisPoints", 10000)
        extra["tracing"] = tracing
    return extra


# ---------------------------------------------------------------------------------------------
# One run: fresh pods, sidecars under callgrind, load, SIGTERM
# ---------------------------------------------------------------------------------------------

def pods(world: bench.World) -> tuple[bench.Pod, bench.Pod]:
    """The client and server pods: two namespaces joined by a veth pair (no bridge, so the only
    hop between them is the pair itself)."""
    client, server = world.netns("prof-c"), world.netns("prof-s")
    world.sh(client, f"""
        ip link add eth0 type veth peer name eth0 netns {server}
        ip addr add {CLIENT_IP}/24 dev eth0
        ip link set eth0 up
        ip route add default dev eth0""")
    world.sh(server, f"""
        ip addr add {SERVER_IP}/24 dev eth0
        ip link set eth0 up
        ip route add default dev eth0""")
    return bench.Pod(client, CLIENT_IP), bench.Pod(server, SERVER_IP)


def capture(world: bench.World, ama: Path, pod: bench.Pod, exclude_inbound: list[int]) -> None:
    """Istio's capture rules (bench/run.py's), with extra inbound ports left out of capture."""
    args = list(bench.ISTIO_IPTABLES_ARGS)
    if exclude_inbound:
        i = args.index("-d") + 1
        args[i] = ",".join([args[i], *map(str, exclude_inbound)])
    bench.run(["ip", "netns", "exec", pod.ns, str(ama), "iptables", *args])


def start_sidecar(world: bench.World, arm: bench.Arm, role: str, args, certs: Path | None,
                  node_extra: dict[str, dict], profile: Path) -> None:
    """One sidecar as bench/run.py starts it, under callgrind, with `node_extra` merged into its
    `self` resource and its access log as --access-log says."""
    pod = arm.client if role == "client" else arm.server
    resources = bench.ama_resources(arm, role, args.tls)
    resources["self"].update(node_extra[role])
    cfg = world.run_dir / f"{role}.json"
    cfg.write_text(json.dumps(resources, indent=2))
    cfg.chmod(0o644)
    argv = ["valgrind", "--tool=callgrind", "--dump-instr=no", f"--callgrind-out-file={profile}",
            str(args.ama), "proxy", "sidecar", "--config", str(cfg),
            "--concurrency", str(args.concurrency), "--proxyLogLevel", "warning"]
    if certs:
        argv += ["--cert-dir", str(bench.proxy_cert_dir(world, certs, f"ama-{role}", role))]
    env = dict(os.environ, POD_NAME=f"{'sleep' if role == 'client' else 'httpbin'}-bench",
               POD_NAMESPACE="default", INSTANCE_IP=pod.ip)
    # The access log only from the flags below: an inherited AMA_ACCESS_LOG_FILE would turn it on.
    for var in ("AMA_ACCESS_LOG_FILE", "AMA_ACCESS_LOG_ENCODING"):
        env.pop(var, None)
    access = world.run_dir / f"{role}.access.log"
    if args.access_log == "json":
        argv += ["--access-log-file", "/dev/stdout", "--access-log-encoding", "JSON"]
        arm.access_logs[role] = access
    arm.proxies[role] = world.spawn(f"ama-{role}", pod.ns, argv, env=env, as_proxy=True, stdout=access)


def curl_local(pod: bench.Pod, port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:{port}{path} inside the pod: (status, body); status 0 when nothing
    answered."""
    p = bench.run(["ip", "netns", "exec", pod.ns, "curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}",
                   f"http://127.0.0.1:{port}{path}"], check=False, timeout=15)
    body, _, code = p.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def wait_ready(arm: bench.Arm) -> None:
    """Until both sidecars answer /healthz/ready on 15021 (they start slowly under callgrind)."""
    deadline = time.time() + READY_TIMEOUT
    for role, proc in arm.proxies.items():
        pod = arm.client if role == "client" else arm.server
        while True:
            if not proc.alive():
                raise ProfileError(f"the {role} sidecar exited before it was ready\n{proc.logs()}")
            if curl_local(pod, 15021, "/healthz/ready")[0] == 200:
                break
            if time.time() > deadline:
                raise ProfileError(f"the {role} sidecar was not ready within {READY_TIMEOUT} s\n{proc.logs()}")
            time.sleep(0.5)


def wait_file(path: Path, proc: bench.Proc, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if not proc.alive():
            raise ProfileError(f"{what} exited\n{proc.logs()}")
        if time.time() > deadline:
            raise ProfileError(f"{what} did not start within {timeout} s\n{proc.logs()}")
        time.sleep(0.2)


def load(arm: bench.Arm, args, n: int, request: Path, what: str) -> None:
    """n requests from the client pod through both sidecars; every one must be a 200."""
    if n == 0:
        return
    timeout = 120 + n * 0.2  # far above what callgrind's slowdown needs; only a hang reaches it
    progress(f"  {what}: {n} requests")
    out = bench.run(["ip", "netns", "exec", arm.client.ns, str(args.oha), "--no-tui",
                     "--output-format", "json", "-n", str(n), "-c", str(args.connections),
                     *bench.oha_load(args.proto, request), bench.proto_url(arm, args.proto)],
                    timeout=timeout)
    try:
        res = json.loads(out.stdout)
    except ValueError as e:
        raise ProfileError(f"{what}: oha's output is not JSON ({e}): {out.stdout[:500]!r}") from e
    codes = res.get("statusCodeDistribution", {})
    if codes != {"200": n}:
        raise ProfileError(f"{what}: oha -n {n}: status codes {codes}, errors "
                           f"{res.get('errorDistribution')}\n{arm.logs()}")
    progress(f"  {what}: {n} × 200 at {res.get('summary', {}).get('requestsPerSec') or 0:.0f} rps")


def prometheus(pod: bench.Pod) -> dict[str, float]:
    """The sidecar's 15090 metrics that say what a run did: the tracers' sent and dropped spans,
    and requests by connection security policy (reporter destination)."""
    status, text = curl_local(pod, 15090, "/stats/prometheus")
    if status != 200:
        raise ProfileError(f"{pod.ns}: 15090/stats/prometheus answered {status}")
    return parse_prometheus(text)


def parse_prometheus(text: str) -> dict[str, float]:
    """What `prometheus` keeps of a Prometheus text exposition: `*_spans_sent_total` per tracer,
    `ama_tracing_spans_dropped_total`, and `istio_requests_total{<connection_security_policy>}`
    summed over the series of reporter destination."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)", line)
        if not m or line.startswith("#"):
            continue
        name, labels, value = m.groups()
        # Spans sent per tracer (`envoy_tracing_zipkin_spans_sent_total`; newer builds also
        # `envoy_tracing_opentelemetry_spans_sent_total`), and the exporter queue's drops.
        if re.fullmatch(r"envoy_tracing_\w+_spans_sent_total", name) or name == "ama_tracing_spans_dropped_total":
            out[name] = out.get(name, 0) + float(value)
        elif name == "istio_requests_total" and 'reporter="destination"' in (labels or ""):
            policy = re.search(r'connection_security_policy="([^"]*)"', labels)
            key = f"istio_requests_total{{{policy.group(1) if policy else ''}}}"
            out[key] = out.get(key, 0) + float(value)
    return out


def mtls_evidence(args, server_metrics: dict[str, float], arm: bench.Arm) -> str | None:
    """With --tls, what showed that the sidecars spoke mTLS: check_arm's look at the SNI in the
    server sidecar's access log, else the server sidecar's `istio_requests_total` of reporter
    destination with `connection_security_policy="mutual_tls"`. Fails when the metric says the
    requests were not mTLS; when neither is there (access log off and the Telemetry API's
    `metrics` turned the counter off), says so on stderr and in the result."""
    if not args.tls:
        return None
    if arm.access_logs:
        return "access log (requested_server_name)"
    by_policy = {k: v for k, v in server_metrics.items() if k.startswith("istio_requests_total")}
    if by_policy.get("istio_requests_total{mutual_tls}"):
        return "istio_requests_total"
    if by_policy:
        raise ProfileError(f"--tls: the server sidecar counted no mutual_tls request: {by_policy}\n{arm.logs()}")
    progress("  warning: --tls with the access log off and no istio_requests_total: mTLS not verified")
    return None


def stop_sidecars(arm: bench.Arm) -> None:
    """SIGTERM to both sidecars (valgrind passes it to the program, which drains and exits), then
    wait for callgrind to write its profiles."""
    for proc in arm.proxies.values():
        if proc.alive():
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.time() + STOP_TIMEOUT
    for role, proc in arm.proxies.items():
        try:
            proc.popen.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            raise ProfileError(f"the {role} sidecar did not exit within {STOP_TIMEOUT} s of SIGTERM\n"
                               f"{proc.logs()}") from None
        if proc.popen.returncode != 0:
            raise ProfileError(f"the {role} sidecar exited {proc.popen.returncode} after SIGTERM\n"
                               f"{proc.logs()}")


def one_run(args, n: int, label: str, run_dir: Path, certs: Path | None,
            node_extra: dict[str, dict]) -> dict:
    """Fresh pods and sidecars; warm-up, then n requests; SIGTERM. Returns the profiles' paths and
    what the sidecars and the sink counted."""
    world = bench.World(run_dir / label)
    world.run_dir.mkdir(mode=0o755)
    profiles = world.run_dir / "profiles"
    profiles.mkdir()
    os.chown(profiles, bench.PROXY_UID, bench.PROXY_UID)  # callgrind writes as the proxy's uid
    try:
        progress(f"run {label} ({n} requests): pods, capture rules, app, sidecars under callgrind")
        client, server = pods(world)
        arm = bench.Arm("ama", client, server, f"http://{bench.VIP}/1k",
                        f"http://{bench.VIP}:{bench.GRPC_PORT}{bench.GRPC_PATH}")
        sink_stats = None
        exclude = []
        if args.collector:
            port = COLLECTORS[args.collector]["port"]
            exclude = [port]
            sink_stats = world.run_dir / "sink.json"
            sink = world.spawn("sink", server.ns, [sys.executable, str(PROFILE / "sink.py"),
                                                   "--port", str(port), "--stats", str(sink_stats)])
            wait_file(sink_stats, sink, "the collector sink")
        bench.start_app(world, arm, args.grpc_app if args.proto == "grpc" else None)
        capture(world, args.ama, client, [])
        capture(world, args.ama, server, exclude)
        request = world.run_dir / "grpc-1k.request"
        request.write_bytes(bench.grpc_message())
        request.chmod(0o644)
        for role in ("client", "server"):
            start_sidecar(world, arm, role, args, certs, node_extra, profiles / f"callgrind.{role}")
        wait_ready(arm)
        progress("  both sidecars ready; checking the path (bench/run.py's check_arm)")
        try:
            bench.check_arm(world, arm, args.oha, args.tls, args.proto, request)
        except bench.BenchError as e:
            raise ProfileError(str(e)) from e
        load(arm, args, args.warmup, request, "warm-up")
        load(arm, args, n, request, "measured")
        time.sleep(2)  # the access-log writers and the span exporters catch up (both runs alike)
        metrics = {role: prometheus(arm.client if role == "client" else arm.server)
                   for role in ("client", "server")}
        mtls = mtls_evidence(args, metrics["server"], arm)
        progress("  stopping the sidecars (SIGTERM); callgrind writes its profiles")
        stop_sidecars(arm)
        sink = json.loads(sink_stats.read_text()) if sink_stats else None
        out = {"profiles": {role: profiles / f"callgrind.{role}" for role in ("client", "server")},
               "metrics": metrics, "sink": sink, "mtls_verified_by": mtls}
        for role, path in out["profiles"].items():
            if not path.exists():
                raise ProfileError(f"callgrind wrote no profile for the {role} sidecar ({path})\n"
                                   f"{arm.proxies[role].logs()}")
        return out
    finally:
        with deferred_signals():
            world.close()


@contextlib.contextmanager
def deferred_signals():
    """Holds SIGINT, SIGTERM and SIGHUP back while the body runs (removing namespaces and
    processes must not be cut short), then raises KeyboardInterrupt if one came."""
    got: list[int] = []
    old = {s: signal.signal(s, lambda signum, _frame: got.append(signum))
           for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if got:
        raise KeyboardInterrupt(f"signal {got[0]}")


def remove_our_namespaces() -> None:
    """Deletes any namespace of this process left behind (a cleanup that was itself cut short)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    ours = f"{bench.PREFIX}-{os.getpid()}-"
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(ours):
            progress(f"removing namespace {name} left behind")
            bench.kill_namespace(name)


# ---------------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------------

def total_ir(profile: Path) -> int:
    """The profile's total instruction count (callgrind's `totals:` line, else `summary:`)."""
    found = {}
    with open(profile, errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("totals", "summary") and value.strip():
                found[key] = int(value.split()[0])
    if not found:
        raise ProfileError(f"{profile}: no totals: or summary: line (an incomplete profile?)")
    return found.get("totals", found.get("summary"))


# `  1,234,567 (12.34%)  file:function [object]`, callgrind_annotate's per-function line.
ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*)$")


def functions(profile: Path, inclusive: bool) -> tuple[dict[str, int], dict[str, set[str]]]:
    """Instructions per function from callgrind_annotate, summed over the source files it lists a
    function under (inlined code is charged to the function it was inlined into, one line per
    source file, and callgrind names the object on some of those lines only); and the objects
    (file names) it named for each function."""
    argv = ["callgrind_annotate", "--auto=no", "--threshold=100", f"--inclusive={'yes' if inclusive else 'no'}",
            str(profile)]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=ANNOTATE_TIMEOUT, errors="replace")
    except subprocess.TimeoutExpired as e:
        raise ProfileError(f"{shlex.join(argv)} timed out after {ANNOTATE_TIMEOUT} s") from e
    if p.returncode != 0:
        raise ProfileError(f"{shlex.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    out: dict[str, int] = {}
    objects: dict[str, set[str]] = {}
    lines = p.stdout.splitlines()
    # The function table follows the last header line `Ir  file:function`.
    start = max((i for i, l in enumerate(lines) if l.split()[-1:] == ["file:function"]), default=None)
    if start is None:
        raise ProfileError(f"{shlex.join(argv)}: no function table in its output")
    for line in lines[start + 1:]:
        m = ANNOTATE_LINE.match(line)
        if m:
            name, obj = function_name(m.group(2).strip())
            out[name] = out.get(name, 0) + int(m.group(1).replace(",", ""))
            objects.setdefault(name, set()).update([obj] if obj else [])
    return out, objects


def function_name(entry: str) -> tuple[str, str | None]:
    """`file:function [object]` as (function, the object's file name or None)."""
    m = re.match(r"^(.*?)(?: \[([^\]]*)\])?$", entry)
    body, obj = m.group(1), m.group(2)
    # The file part ends at the first ':' that is not half of a `::` path separator.
    fm = re.match(r"^(?:[^:]|::)*?(?<!:):(?!:)(.*)$", body)
    return (fm.group(1) if fm else body), (Path(obj).name if obj else None)


def per_request(args, pairs: list[tuple[dict, dict]]) -> dict:
    """Per request for each sidecar, from each pair of runs (N requests, none): the difference of
    the totals / N, then the mean over the pairs; by function the same, the mean over the pairs."""
    out = {}
    for role in ("client", "server"):
        per_pair, by_function, objects = [], {}, {}
        for with_n, without in pairs:
            ir_n, ir_0 = total_ir(with_n["profiles"][role]), total_ir(without["profiles"][role])
            per_pair.append({"ir_with_n": ir_n, "ir_without": ir_0,
                             "ir_per_request": round((ir_n - ir_0) / args.n, 1)})
            fn_n, obj_n = functions(with_n["profiles"][role], args.inclusive)
            fn_0, obj_0 = functions(without["profiles"][role], args.inclusive)
            for k in fn_n.keys() | fn_0.keys():
                objects.setdefault(k, set()).update(obj_n.get(k, ()), obj_0.get(k, ()))
                by_function[k] = by_function.get(k, 0) + (fn_n.get(k, 0) - fn_0.get(k, 0)) / args.n / len(pairs)
        top = sorted(by_function.items(), key=lambda kv: (-kv[1], kv[0]))[:args.top]
        values = [p["ir_per_request"] for p in per_pair]
        out[role] = {
            "ir_per_request": round(sum(values) / len(values), 1),
            "ir_per_request_min": min(values),
            "ir_per_request_max": max(values),
            "pairs": per_pair,
            "top": [{"function": k, "object": next(iter(objects[k])) if len(objects[k]) == 1 else None,
                     "ir_per_request": round(v, 1)} for k, v in top],
        }
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def ama_version(ama: Path) -> str:
    p = bench.run([str(ama), "--version"], check=False, timeout=20)
    return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else "?"


def result(args, node_extra: dict[str, dict], runs: dict, sidecars: dict) -> dict:
    """The JSON object of `-o json`:

    - ama, version, command, proto ("http1"/"grpc"), tls, n, warmup, repeat, connections,
      concurrency, access_log ("json"/"off"), inclusive;
    - node_extra: {client, server: what was merged into the sidecar's `self`, --collector's
      `tracing` included};
    - collector: null, or {protocol, port, received: {run label: the sink's counts (posts,
      bytes, spans, paths, errors)}};
    - metrics: {run label: {client, server: the sidecar's 15090 counters at the end of the load
      (spans sent and dropped, istio_requests_total{policy} of reporter destination)}};
    - mtls_verified_by: {run label: how --tls was checked ("access log (requested_server_name)",
      "istio_requests_total"), or null (not --tls, or nothing to check it by: a warning)};
    - sidecars: {client, server: {ir_per_request (the mean over the pairs), ir_per_request_min,
      ir_per_request_max, pairs [{ir_with_n, ir_without, ir_per_request}], top [{function,
      object (its file name; null when callgrind named none or several), ir_per_request}]}}.

    Run labels are `<pair>-n<requests>` (`1-n2000`, `1-n0`, ...)."""
    collector = None
    if args.collector:
        collector = {"protocol": args.collector, "port": COLLECTORS[args.collector]["port"],
                     "received": {k: r["sink"] for k, r in runs.items()}}
    return {
        "ama": str(args.ama), "version": ama_version(args.ama),
        "command": shlex.join(["python3", "bench/profile/instructions.py", *sys.argv[1:]]),
        "proto": args.proto, "tls": args.tls, "n": args.n, "warmup": args.warmup,
        "repeat": args.repeat, "connections": args.connections, "concurrency": args.concurrency,
        "access_log": args.access_log, "inclusive": args.inclusive, "node_extra": node_extra,
        "collector": collector, "metrics": {k: r["metrics"] for k, r in runs.items()},
        "mtls_verified_by": {k: r["mtls_verified_by"] for k, r in runs.items()},
        "sidecars": sidecars,
    }


def text_report(res: dict) -> str:
    c, s = res["sidecars"]["client"], res["sidecars"]["server"]
    k = lambda v: f"{v / 1000:.1f}k"  # noqa: E731
    lines = [
        f"{res['version']} ({res['ama']}): {res['proto']}, {'mTLS' if res['tls'] else 'plain'}, "
        f"N = {res['n']} after {res['warmup']} warm-up requests, -c {res['connections']}, "
        f"access log {res['access_log']}, {res['repeat']} pair(s) of runs",
        f"command: {res['command']}",
    ]
    for role, extra in res["node_extra"].items():
        if extra:
            lines.append(f"node extra ({role}): {json.dumps(extra, separators=(',', ':'))}")
    if res["collector"]:
        got = res["collector"]["received"]
        lines.append(f"collector ({res['collector']['protocol']}): the sink received "
                     + ", ".join(f"{r['posts']} POSTs / {r['spans']} spans / {r['bytes']} bytes ({run})"
                                 for run, r in got.items()))
    if res["tls"]:
        checked = sorted({str(v) for v in res.get("mtls_verified_by", {}).values()})
        lines.append(f"mTLS checked by: {', '.join(checked)}")
    for run, m in res["metrics"].items():
        sent = [sum(v for k, v in m[r].items() if k.endswith("_spans_sent_total")) for r in ("client", "server")]
        dropped = [m[r].get("ama_tracing_spans_dropped_total", 0) for r in ("client", "server")]
        if any(sent) or any(dropped):
            lines.append(f"spans sent / dropped ({run}, client; server): {sent[0]:.0f} / {dropped[0]:.0f}; "
                         f"{sent[1]:.0f} / {dropped[1]:.0f}")
    lines += ["", f"{'instructions':<24}{'client':>24}{'server':>24}"]
    for i, (pc, ps) in enumerate(zip(c["pairs"], s["pairs"]), 1):
        lines += [f"{f'pair {i}: run with N':<24}{pc['ir_with_n']:>24,}{ps['ir_with_n']:>24,}",
                  f"{f'pair {i}: run without':<24}{pc['ir_without']:>24,}{ps['ir_without']:>24,}",
                  f"{f'pair {i}: per request':<24}{k(pc['ir_per_request']):>24}{k(ps['ir_per_request']):>24}"]
    spread = lambda d: f" ({k(d['ir_per_request_min'])}-{k(d['ir_per_request_max'])})" if len(d["pairs"]) > 1 else ""  # noqa: E731
    lines.append(f"{'per request':<24}{k(c['ir_per_request']) + spread(c):>24}{k(s['ir_per_request']) + spread(s):>24}")
    for role, d in res["sidecars"].items():
        if not d["top"]:
            continue
        lines += ["", f"{role} sidecar, top {len(d['top'])} functions per request "
                      f"({'inclusive' if res['inclusive'] else 'self'}):"]
        for f in d["top"]:
            name = f["function"] if len(f["function"]) <= 100 else f["function"][:97] + "..."
            name += f" [{f['object']}]" if f.get("object") else ""
            lines.append(f"{f['ir_per_request']:>10,.0f}  {name}")
    return "\n".join(lines)


def compare_report(res: dict, base: dict, top: int, res_name: Path, base_name: Path) -> str:
    """Per sidecar: the change per request from `base` to `res`, and the functions that changed
    most (by the difference of their per-request cost, over the functions in either top list)."""
    lines = [f"{res_name} against {base_name}:", f"  {res['command']}", f"  {base['command']}"]
    for role in ("client", "server"):
        new, old = res["sidecars"][role], base["sidecars"][role]
        fn_new = {f["function"]: f["ir_per_request"] for f in new["top"]}
        fn_old = {f["function"]: f["ir_per_request"] for f in old["top"]}
        diff = {k: fn_new.get(k, 0) - fn_old.get(k, 0) for k in fn_new.keys() | fn_old.keys()}
        listed = sum(diff.values())
        change = new["ir_per_request"] - old["ir_per_request"]
        lines += ["", f"{role} sidecar: {old['ir_per_request']:,.0f} -> {new['ir_per_request']:,.0f} "
                      f"instructions per request ({change:+,.0f}; the listed functions: {listed:+,.0f})"]
        for k, v in sorted(diff.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:top]:
            name = k if len(k) <= 110 else k[:107] + "..."
            lines.append(f"{v:>+10,.0f}  {name}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def check_tools(args) -> None:
    needed = [("valgrind", shutil.which("valgrind")), ("callgrind_annotate", shutil.which("callgrind_annotate")),
              ("nginx", shutil.which("nginx")), ("curl", shutil.which("curl")), ("setpriv", shutil.which("setpriv")),
              ("oha", args.oha if args.oha.exists() else None), ("ama", args.ama if args.ama.exists() else None)]
    if args.tls:
        needed.append(("openssl", shutil.which("openssl")))
    if args.proto == "grpc":
        needed.append(("ama-bench-app", args.grpc_app if args.grpc_app.exists() else None))
    missing = [name for name, where in needed if not where]
    if missing:
        raise ProfileError(f"not found: {', '.join(missing)} (--ama {args.ama}, --oha {args.oha}"
                           + (f", --grpc-app {args.grpc_app}" if args.proto == "grpc" else "") + ")")
    try:
        bench.ama_sidecar_help(args.ama)
    except bench.BenchError as e:
        raise ProfileError(str(e)) from e


def main() -> int:
    args = parse_args()
    if args.render:
        res = json.loads(args.render.read_text())
        print(text_report(res) if not args.compare else
              compare_report(res, json.loads(args.compare.read_text()), args.top, args.render, args.compare))
        return 0
    if os.geteuid() != 0:
        print("bench/profile/instructions.py needs root (network namespaces, iptables, setpriv)",
              file=sys.stderr)
        return 2
    try:
        check_tools(args)
    except ProfileError as e:
        print(e, file=sys.stderr)
        return 2
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, bench.raise_interrupt)
    bench.remove_stale_namespaces()
    node_extra = {role: node_extra_for(args, role) for role in ("client", "server")}
    run_dir = Path(tempfile.mkdtemp(prefix="amaprof-"))
    run_dir.chmod(0o755)  # the sidecars (uid 1337) read their resources from here
    status = 1
    # bench/run.py's helpers print their progress on stdout: keep stdout for the result.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            certs = bench.make_certs(run_dir) if args.tls else None
            runs, pairs = {}, []
            for r in range(1, args.repeat + 1):
                pair = []
                for n in (args.n, 0):
                    label = f"{r}-n{n}"
                    runs[label] = one_run(args, n, label, run_dir, certs, node_extra)
                    peers = (runs[label]["sink"] or {}).get("peers", {})
                    if args.collector and n and not (peers.get(CLIENT_IP) and peers.get("127.0.0.1")):
                        raise ProfileError(f"--collector {args.collector}: in run {label} the sink "
                                           f"heard from {peers or 'nobody'}, not from both sidecars "
                                           f"({CLIENT_IP} and 127.0.0.1)")
                    pair.append(runs[label])
                pairs.append(tuple(pair))
            progress("annotating the profiles (callgrind_annotate)")
            sidecars = per_request(args, pairs)
            res = result(args, node_extra, runs, sidecars)
            status = 0
        except KeyboardInterrupt as e:
            progress(f"interrupted ({e}); everything this run made is removed")
            status = 130
        except (ProfileError, bench.BenchError) as e:
            progress(f"FAILED: {e}")
        finally:
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(s, signal.SIG_IGN)
            remove_our_namespaces()
            if args.keep:
                shutil.copytree(run_dir, args.keep, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.key", "key.pem"))
                progress(f"profiles, resources and logs kept in {args.keep}")
            shutil.rmtree(run_dir, ignore_errors=True)
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(s, signal.SIG_DFL)
    if status != 0:
        return status
    print(json.dumps(res, indent=2) if args.output == "json" else text_report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
