#!/usr/bin/env python3
"""A trace collector that keeps nothing: answers every POST with 202 and counts what arrived.

    python3 bench/profile/sink.py --port 9411 --stats FILE

Stands in for a Zipkin (`/api/v2/spans`, v2 JSON) or OTLP/HTTP (`/v1/traces`, protobuf) collector
in `instructions.py --collector`, so that the sidecars' exporters do all their work (encode,
connect, POST, read the answer) while costing the machine little. After every request it
rewrites FILE with a JSON object: `posts` (requests answered), `bytes` (request bodies),
`spans` (the elements of Zipkin JSON arrays; OTLP protobuf is not decoded and counts 0),
`paths` (requests per path), `peers` (requests per client address) and `errors` (bodies that
were not what their content type says).
stdlib only; exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import sys
import threading
from pathlib import Path


class Stats:
    """What has arrived so far, written to a file after each change (whole, then renamed, so a
    reader never sees half of it)."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.data = {"posts": 0, "bytes": 0, "spans": 0, "paths": {}, "peers": {}, "errors": 0}

    def add(self, peer: str, path: str, body: bytes, content_type: str) -> None:
        spans, error = 0, 0
        if content_type.startswith("application/json"):
            try:
                doc = json.loads(body)
                spans = len(doc) if isinstance(doc, list) else 0
                error = 0 if isinstance(doc, list) else 1
            except ValueError:
                error = 1
        with self.lock:
            d = self.data
            d["posts"] += 1
            d["bytes"] += len(body)
            d["spans"] += spans
            d["errors"] += error
            d["paths"][path] = d["paths"].get(path, 0) + 1
            d["peers"][peer] = d["peers"].get(peer, 0) + 1
            self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)


def handler(stats: Stats) -> type[http.server.BaseHTTPRequestHandler]:
    class Sink(http.server.BaseHTTPRequestHandler):
        # HTTP/1.1: the exporters keep their connection, as they would with a real collector.
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            stats.add(self.client_address[0], self.path, body, self.headers.get("content-type", ""))
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args) -> None:  # one line per batch would only slow it down
            pass

    return Sink


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stats", type=Path, required=True, help="where to write the counts (JSON)")
    args = ap.parse_args()
    stats = Stats(args.stats)
    server = http.server.ThreadingHTTPServer(("0.0.0.0", args.port), handler(stats))
    server.daemon_threads = True
    stats.write()  # the file appears once the port is bound: the caller waits for it
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"sink listening on 0.0.0.0:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
