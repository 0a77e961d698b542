"""The fake products upstream of the benchmarks: a fixed latency, and it counts calls.

Run as its own process (``python -m bench.upstream --port N``): gevent, one
greenlet per connection, HTTP/1.1 keep-alive, a listen backlog deep enough
for a 1,000-connection stampede of a peer that does not coalesce.

- ``GET /products/<id>[?fields=...]``: after ``latency_ms``, answers
  ``status`` (200 by default) with a JSON body of about ``size`` bytes. Every
  call is recorded: wall-clock time, product id, status.
- ``GET /_bench/config?latency_ms=&status=&size=``: changes how it answers
  (any subset); answers the configuration.
- ``GET /_bench/stats?prefix=P&since=T&detail=1``: calls, in all and per
  product id starting with ``P``; with ``detail``, each call
  ``[time, id, status]`` after ``since``.
- ``GET /_bench/reset``: forgets every call.

It is deliberately not Django: it must never be the bottleneck of what it
measures, and it must not share code with what it measures.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from urllib.parse import parse_qs, unquote, urlsplit  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable", 400: "Bad Request"}
MAX_HEADER_BYTES = 16 * 1024


class State:
    def __init__(self, latency_ms: float, size: int) -> None:
        self.latency_ms = latency_ms
        self.status = 200
        self.size = size
        self.calls: list[tuple[float, str, int]] = []
        self.per_key: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    def config(self) -> dict[str, object]:
        return {"latency_ms": self.latency_ms, "status": self.status, "size": self.size}

    def body(self, product_id: str, fields: str, n: int) -> bytes:
        head = {"id": product_id, "fields": fields, "n": n, "name": f"Product {product_id}"}
        base = json.dumps(head, separators=(",", ":"))
        pad = max(0, self.size - len(base) - 10)
        return (base[:-1] + ',"pad":"' + "x" * pad + '"}').encode()


def answer(status: int, body: bytes, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


def handle(state: State, sock: socket.socket, _address: object) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rfile = sock.makefile("rb")
    try:
        while True:
            line = rfile.readline(MAX_HEADER_BYTES)
            if not line:
                return
            try:
                _method, target, version = line.decode("latin-1").split()
            except ValueError:
                sock.sendall(answer(400, b'{"error":"bad request line"}', False))
                return
            keep_alive = version == "HTTP/1.1"
            while True:
                header = rfile.readline(MAX_HEADER_BYTES)
                if header in (b"\r\n", b"\n", b""):
                    break
                lower = header.lower()
                if lower.startswith(b"connection:"):
                    keep_alive = b"close" not in lower
            sock.sendall(route(state, target, keep_alive))
            if not keep_alive:
                return
    except OSError:
        return
    finally:
        rfile.close()
        sock.close()


def route(state: State, target: str, keep_alive: bool) -> bytes:
    parts = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    path = parts.path
    if path.startswith("/products/"):
        return product(state, unquote(path[len("/products/") :]), query, keep_alive)
    if path == "/_bench/config":
        for name, kind in (("latency_ms", float), ("status", int), ("size", int)):
            if name in query:
                setattr(state, name, kind(query[name]))
        return answer(200, json.dumps(state.config()).encode(), keep_alive)
    if path == "/_bench/stats":
        prefix = query.get("prefix", "")
        since = float(query.get("since", "0"))
        out: dict[str, object] = {
            "total": len(state.calls),
            "max_in_flight": state.max_in_flight,
            "per_key": {k: n for k, n in state.per_key.items() if k.startswith(prefix)},
        }
        if query.get("detail"):
            out["calls"] = [c for c in state.calls if c[0] >= since and c[1].startswith(prefix)]
        return answer(200, json.dumps(out).encode(), keep_alive)
    if path == "/_bench/reset":
        state.calls.clear()
        state.per_key.clear()
        state.max_in_flight = state.in_flight
        return answer(200, b'{"reset":true}', keep_alive)
    if path == "/health":
        return answer(200, b'{"ok":true}', keep_alive)
    return answer(404, b'{"error":"no such path"}', keep_alive)


def product(state: State, product_id: str, query: dict[str, str], keep_alive: bool) -> bytes:
    status = state.status
    state.calls.append((time.time(), product_id, status))
    state.per_key[product_id] += 1
    n = state.per_key[product_id]
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        if state.latency_ms > 0:
            gevent.sleep(state.latency_ms / 1000.0)
    finally:
        state.in_flight -= 1
    if status != 200:
        return answer(status, json.dumps({"error": status}).encode(), keep_alive)
    return answer(200, state.body(product_id, query.get("fields", ""), n), keep_alive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    state = State(args.latency_ms, args.size)
    server = StreamServer(
        (args.host, args.port), lambda s, a: handle(state, s, a), backlog=4096, spawn="default"
    )
    print(f"fake upstream on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
