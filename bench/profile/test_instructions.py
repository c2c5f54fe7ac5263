#!/usr/bin/env python3
"""Tests of instructions.py's parsing and of the collector sink; no root, no valgrind run needed
(the whole tool is exercised by running it, see its docstring).

    python3 -m unittest discover -s bench/profile -p 'test_*.py'
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import instructions  # noqa: E402

# A callgrind_annotate table as valgrind 3.19 prints it: the same function under two source
# files (inlined code), a function without an object, a libc one.
ANNOTATE = """\
--------------------------------------------------------------------------------
Ir                 
--------------------------------------------------------------------------------
1,000,000 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                file:function
--------------------------------------------------------------------------------
500,000 (50.00%)  ./string/../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S:__memcpy_avx_unaligned_erms [/usr/lib/x86_64-linux-gnu/libc.so.6]
300,000 (30.00%)  /work/main/crates/proxy/src/telemetry/access_log.rs:std::sys::backtrace::__rust_begin_short_backtrace
 150,000 (15.00%)  /rustc/abc/library/core/src/slice/iter/macros.rs:std::sys::backtrace::__rust_begin_short_backtrace
  50,000 ( 5.00%)  ???:<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse [/work/ama]
"""


class Parsing(unittest.TestCase):
    def test_function_name_drops_the_file_keeps_paths_and_the_object(self):
        self.assertEqual(instructions.function_name(
            "/rustc/x/library/core/src/ptr/mod.rs:core::ptr::drop_in_place<h2::frame::Frame> [/work/ama]"),
            ("core::ptr::drop_in_place<h2::frame::Frame>", "ama"))
        self.assertEqual(instructions.function_name("???:malloc [/usr/lib/libc.so.6]"), ("malloc", "libc.so.6"))
        self.assertEqual(instructions.function_name("src/a.rs:std::sys::backtrace::x"),
                         ("std::sys::backtrace::x", None))

    def test_functions_sums_a_function_over_its_source_files(self):
        with tempfile.TemporaryDirectory() as d:
            fake = Path(d) / "callgrind_annotate"
            fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{ANNOTATE}EOF\n")
            fake.chmod(0o755)
            old = os.environ["PATH"]
            os.environ["PATH"] = f"{d}:{old}"
            try:
                got = instructions.functions(Path("/nonexistent"), inclusive=False)
            finally:
                os.environ["PATH"] = old
        parse = "<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse"
        self.assertEqual(got, ({
            "__memcpy_avx_unaligned_erms": 500_000,
            "std::sys::backtrace::__rust_begin_short_backtrace": 450_000,
            parse: 50_000,
        }, {
            "__memcpy_avx_unaligned_erms": {"libc.so.6"},
            "std::sys::backtrace::__rust_begin_short_backtrace": set(),
            parse: {"ama"},
        }))

    def test_total_ir_reads_totals_and_refuses_a_cut_profile(self):
        with tempfile.TemporaryDirectory() as d:
            good, cut = Path(d) / "good", Path(d) / "cut"
            good.write_text("version: 1\nevents: Ir\nfn=(1) main\n0 5\nsummary: 1234\ntotals: 1234\n")
            cut.write_text("version: 1\nevents: Ir\nfn=(1) main\n0 5\n")
            self.assertEqual(instructions.total_ir(good), 1234)
            with self.assertRaises(instructions.ProfileError):
                instructions.total_ir(cut)

    def test_node_extra_is_an_object_inline_or_from_a_file(self):
        self.assertEqual(instructions.load_node_extra('{"tracing": {"samplingBasisPoints": 1}}'),
                         {"tracing": {"samplingBasisPoints": 1}})
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            f.write('{"metrics": {}}')
            f.flush()
            self.assertEqual(instructions.load_node_extra("@" + f.name), {"metrics": {}})
        for bad in ("[1]", "{", "@/nonexistent/x.json"):
            with self.assertRaises(instructions.ProfileError, msg=bad):
                instructions.load_node_extra(bad)

    def test_collector_points_each_sidecar_at_the_sink_and_keeps_a_given_sampling(self):
        args = argparse.Namespace(collector="zipkin", node_extra={"tracing": {"samplingBasisPoints": 100}})
        client, server = (instructions.node_extra_for(args, r) for r in ("client", "server"))
        self.assertEqual(client["tracing"], {
            "samplingBasisPoints": 100,
            "collector": {"protocol": "ZIPKIN", "host": instructions.SERVER_IP, "port": 9411,
                          "path": "/api/v2/spans"}})
        self.assertEqual(server["tracing"]["collector"]["host"], "127.0.0.1")
        self.assertEqual(args.node_extra, {"tracing": {"samplingBasisPoints": 100}})  # not changed
        args = argparse.Namespace(collector="otlp-http", node_extra={})
        t = instructions.node_extra_for(args, "client")["tracing"]
        self.assertEqual((t["samplingBasisPoints"], t["collector"]["protocol"], t["collector"]["path"]),
                         (10000, "OTLP_HTTP", "/v1/traces"))


class Prometheus(unittest.TestCase):
    def test_keeps_spans_and_requests_by_security_policy_of_the_destination(self):
        text = "\n".join([
            "# TYPE envoy_tracing_zipkin_spans_sent counter",
            "envoy_tracing_zipkin_spans_sent_total 7",
            "envoy_tracing_opentelemetry_spans_sent_total 2",
            "ama_tracing_spans_dropped_total 1",
            'istio_requests_total{reporter="destination",response_code="200",connection_security_policy="mutual_tls"} 5',
            'istio_requests_total{reporter="destination",response_code="503",connection_security_policy="mutual_tls"} 1',
            'istio_requests_total{reporter="destination",connection_security_policy="none"} 2',
            'istio_requests_total{reporter="source",connection_security_policy="unknown"} 9',
            "istio_tcp_connections_opened_total 3",
        ])
        self.assertEqual(instructions.parse_prometheus(text), {
            "envoy_tracing_zipkin_spans_sent_total": 7.0,
            "envoy_tracing_opentelemetry_spans_sent_total": 2.0,
            "ama_tracing_spans_dropped_total": 1.0,
            "istio_requests_total{mutual_tls}": 6.0,
            "istio_requests_total{none}": 2.0,
        })


class Compare(unittest.TestCase):
    def test_compare_lists_the_total_and_the_largest_changes_first(self):
        def res(command, total, top):
            side = {"ir_per_request": total, "top": [{"function": f, "object": None, "ir_per_request": v}
                                                     for f, v in top.items()]}
            return {"command": command, "sidecars": {"client": side, "server": side}}
        new = res("new", 1500.0, {"malloc": 700.0, "parse": 300.0, "gone": 0.0})
        base = res("base", 1000.0, {"malloc": 200.0, "parse": 310.0, "gone": 100.0})
        text = instructions.compare_report(new, base, 2, Path("new.json"), Path("base.json"))
        client = text.split("client sidecar: ")[1].split("server sidecar")[0].strip().splitlines()
        self.assertIn("1,000 -> 1,500 instructions per request (+500; the listed functions: +390)", client[0])
        self.assertEqual([l.split()[1] for l in client[1:]], ["malloc", "gone"])
        self.assertEqual([l.split()[0] for l in client[1:]], ["+500", "-100"])


class Sink(unittest.TestCase):
    def test_answers_202_and_counts_zipkin_spans(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tempfile.TemporaryDirectory() as d:
            stats = Path(d) / "stats.json"
            p = subprocess.Popen([sys.executable, str(Path(__file__).with_name("sink.py")), "--port", str(port),
                                  "--stats", str(stats)], stderr=subprocess.DEVNULL)
            try:
                deadline = time.time() + 10
                while not stats.exists():
                    self.assertLess(time.time(), deadline, "the sink did not start")
                    time.sleep(0.05)
                for body, ctype in ((json.dumps([{"id": "1"}, {"id": "2"}]), "application/json"),
                                    ("not json", "application/json"), ("\x0a\x00", "application/x-protobuf")):
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v2/spans", data=body.encode(),
                                                 headers={"content-type": ctype}, method="POST")
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        self.assertEqual(resp.status, 202)
                got = json.loads(stats.read_text())
            finally:
                p.terminate()
                p.wait(10)
        self.assertEqual(got["posts"], 3)
        self.assertEqual(got["spans"], 2)
        self.assertEqual(got["errors"], 1)
        self.assertEqual(got["paths"], {"/api/v2/spans": 3})
        self.assertEqual(got["peers"], {"127.0.0.1": 3})


if __name__ == "__main__":
    unittest.main()
