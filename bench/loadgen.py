"""The gevent load client of the benchmarks, run as its own process.

``python -m bench.loadgen '<json spec>'`` prints one JSON summary on stdout.
A hand-written HTTP/1.1 keep-alive client on raw sockets keeps the client's
own CPU cost per request small (the machine has two cores, shared with the
server under test). Two modes:

- ``stampede``: open ``n`` connections first (a bounded number at a time, so
  the connect storm does not overflow a listen backlog and blur the figure
  with SYN retries), then send one request on each at the same instant.
  Request ``i`` goes to ``urls[i % len(urls)]`` (several servers: a split).
- ``closed``: ``connections`` workers, each with its own keep-alive
  connection, send requests back to back for ``duration`` seconds or until
  ``max_requests``. ``order`` is ``cycle`` (worker ``w`` walks the URL list
  from ``w``) or ``once`` (a shared queue: each URL requested once, the run
  ends when the queue is empty). ``slow_ms`` (100 by default): the answers
  (2xx/3xx) that took that long or more are counted apart (``slow``).

Every loop is bounded in time and count; every request has a timeout.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter, deque  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402

MAX_LINE = 64 * 1024


class Target:
    __slots__ = ("host", "port", "request")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "User-Agent: bench-loadgen\r\nAccept: */*\r\n\r\n"
        ).encode()


class Connection:
    """One keep-alive connection; reconnects after the server closes it."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.addr = (host, port)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.rfile: Any = None

    def connect(self) -> None:
        sock = socket.create_connection(self.addr, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.rfile = sock, sock.makefile("rb")

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.rfile.close()
                self.sock.close()
            except OSError:
                pass
        self.sock = self.rfile = None

    def request(self, payload: bytes) -> tuple[int, str]:
        """Send one request, read the whole answer: (status, X-Cache or "")."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(payload)
        rfile = self.rfile
        line = rfile.readline(MAX_LINE)
        if not line:
            raise ConnectionError("closed by the server")
        status = int(line.split(None, 2)[1])
        length = -1
        x_cache = ""
        close = False
        while True:
            header = rfile.readline(MAX_LINE)
            if header in (b"\r\n", b"\n"):
                break
            if not header:
                raise ConnectionError("closed in the headers")
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"x-cache":
                x_cache = value.strip().decode("latin-1")
            elif name == b"connection" and b"close" in value.lower():
                close = True
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                length = -2
        if length >= 0:
            if length:
                body = rfile.read(length)
                if len(body) != length:
                    raise ConnectionError("body cut short")
        elif length == -2:
            self._read_chunked()
        else:
            close = True
            rfile.read()
        if close:
            self.close()
        return status, x_cache

    def _read_chunked(self) -> None:
        while True:
            size = int(self.rfile.readline(MAX_LINE).split(b";")[0], 16)
            self.rfile.read(size + 2)
            if size == 0:
                return


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, max(0, int(round(q * n + 0.5)) - 1))]

    return {
        "n": n,
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": ordered[-1],
        "mean": sum(ordered) / n,
    }


def expand_urls(spec: dict[str, Any]) -> list[str]:
    """``urls``, or ``pattern`` with ``{i}`` for ``i`` in ``range(start, start + count)``."""
    if "pattern" in spec:
        start = int(spec.get("start", 0))
        return [spec["pattern"].format(i=i) for i in range(start, start + int(spec["count"]))]
    return list(spec["urls"])


def stampede(spec: dict[str, Any]) -> dict[str, Any]:
    targets = [Target(u) for u in expand_urls(spec)]
    n = int(spec["n"])
    timeout = float(spec.get("timeout", 30))
    conns: list[Connection | None] = [None] * n
    connect_errors = 0

    def connect(i: int) -> None:
        nonlocal connect_errors
        t = targets[i % len(targets)]
        conn = Connection(t.host, t.port, timeout)
        try:
            conn.connect()
            conns[i] = conn
        except OSError:
            connect_errors += 1

    pool = gevent.pool.Pool(int(spec.get("connect_concurrency", 64)))
    started_connecting = time.perf_counter()
    for i in range(n):
        pool.spawn(connect, i)
    pool.join(timeout=timeout)
    connect_s = time.perf_counter() - started_connecting
    gevent.sleep(float(spec.get("settle_s", 0.2)))  # let the server accept them all

    go = gevent.event.Event()
    latencies: list[float] = [0.0] * n
    finished: list[float] = [0.0] * n
    statuses: Counter[str] = Counter()
    x_cache: Counter[str] = Counter()
    errors = 0

    def fire(i: int) -> None:
        nonlocal errors
        conn = conns[i]
        if conn is None:
            return
        go.wait()
        t0 = time.perf_counter()
        try:
            with gevent.Timeout(timeout):
                status, xc = conn.request(targets[i % len(targets)].request)
        except (OSError, ConnectionError, gevent.Timeout, ValueError):
            errors += 1
            statuses["error"] += 1
            return
        t1 = time.perf_counter()
        latencies[i], finished[i] = t1 - t0, t1
        statuses[str(status)] += 1
        x_cache[xc or "-"] += 1

    greenlets = [gevent.spawn(fire, i) for i in range(n)]
    gevent.sleep(0.05)
    fired = time.perf_counter()
    fired_wall = time.time()
    go.set()
    gevent.joinall(greenlets, timeout=timeout + 5)
    for conn in conns:
        if conn is not None:
            conn.close()
    ok = [lat * 1000 for lat, end in zip(latencies, finished, strict=True) if end]
    return {
        "mode": "stampede",
        "n": n,
        "connected": sum(1 for c in conns if c is not None),
        "connect_errors": connect_errors,
        "connect_s": round(connect_s, 3),
        "errors": errors,
        "statuses": dict(statuses),
        "x_cache": dict(x_cache),
        "latency_ms": percentiles(ok),
        "makespan_ms": round((max(finished) - fired) * 1000, 2) if ok else None,
        "fired_wall": fired_wall,
    }


def closed(spec: dict[str, Any]) -> dict[str, Any]:
    targets = [Target(u) for u in expand_urls(spec)]
    connections = int(spec["connections"])
    duration = float(spec.get("duration", 10))
    max_requests = int(spec.get("max_requests", 10_000_000))
    timeout = float(spec.get("timeout", 30))
    once = spec.get("order", "cycle") == "once"
    keep_latencies = bool(spec.get("latencies", False))
    slow_ms = float(spec.get("slow_ms", 100.0))
    queue: deque[Target] = deque(targets) if once else deque()

    started = time.perf_counter()
    wall_started = time.time()
    deadline = started + duration
    records_t: list[float] = []
    records_lat: list[float] = []
    statuses: Counter[str] = Counter()
    x_cache: Counter[str] = Counter()
    errors = 0
    sent = 0

    def worker(w: int) -> None:
        nonlocal errors, sent
        conns: dict[tuple[str, int], Connection] = {}
        k = w
        while sent < max_requests:
            now = time.perf_counter()
            if now >= deadline:
                break
            if once:
                if not queue:
                    break
                target = queue.popleft()
            else:
                target = targets[k % len(targets)]
                k += 1
            sent += 1
            key = (target.host, target.port)
            conn = conns.get(key)
            if conn is None:
                conn = conns[key] = Connection(target.host, target.port, timeout)
            t0 = time.perf_counter()
            try:
                with gevent.Timeout(timeout):
                    status, xc = conn.request(target.request)
            except (OSError, ConnectionError, gevent.Timeout, ValueError):
                conn.close()
                errors += 1
                statuses["error"] += 1
                records_t.append(t0 - started)
                records_lat.append(-1.0)
                gevent.sleep(0.01)  # a refused connection must not spin
                continue
            t1 = time.perf_counter()
            statuses[str(status)] += 1
            x_cache[xc or "-"] += 1
            records_t.append(t0 - started)
            records_lat.append((t1 - t0) * 1000 if 200 <= status < 400 else -(t1 - t0) * 1000)
        for conn in conns.values():
            conn.close()

    greenlets = [gevent.spawn(worker, w) for w in range(connections)]
    gevent.joinall(greenlets, timeout=duration + timeout + 5)
    gevent.killall(greenlets, timeout=1)
    elapsed = time.perf_counter() - started
    good = [lat for lat in records_lat if lat >= 0]
    all_lat = [abs(lat) for lat in records_lat if lat != -1.0]
    timeline: dict[int, list[float]] = {}
    for t, lat in zip(records_t, records_lat, strict=True):
        timeline.setdefault(int(t), []).append(lat)
    seconds = []
    for second in sorted(timeline):
        lats = timeline[second]
        ok = [x for x in lats if x >= 0]
        seconds.append(
            {
                "t": second,
                "n": len(lats),
                "errors": len(lats) - len(ok),
                "p99": percentiles(ok).get("p99"),
            }
        )
    out: dict[str, Any] = {
        "mode": "closed",
        "requests": len(records_lat),
        "elapsed_s": round(elapsed, 3),
        "wall_started": wall_started,
        "rps": round(len(records_lat) / elapsed, 1) if elapsed else 0.0,
        "errors": len(records_lat) - len(good),
        "transport_errors": errors,
        "statuses": dict(statuses),
        "x_cache": dict(x_cache),
        "latency_ms": percentiles(good),
        "latency_all_ms": percentiles(all_lat),
        "slow_ms": slow_ms,
        "slow": sum(1 for lat in good if lat >= slow_ms),
        "timeline": seconds,
    }
    if keep_latencies:
        out["latencies"] = [round(x, 3) for x in good]
    return out


def main() -> None:
    spec = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    mode = spec.get("mode")
    if mode == "stampede":
        result = stampede(spec)
    elif mode == "closed":
        result = closed(spec)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
