"""A real HTTP upstream for tests: counts calls, and can be slow, failing or hostile.

It runs in a thread of the test process. ``mode`` decides how it answers:

- ``ok``: 200 with JSON naming the path, the query and the call number
- ``status``: the status in ``status`` with a JSON body (404, 503...)
- ``etag``: the same body for a path (until ``version`` changes) with ``ETag`` and
  ``Last-Modified``; a request whose ``If-None-Match`` matches gets a 304
- ``invalid``: 200 with a body that is not JSON
- ``big``: 200 with ``size`` bytes of valid JSON
- ``reset``: headers promising a long body, a few bytes, then a closed socket
- ``trickle``: a body that never ends, one byte at a time
- ``cookie``: 200 with a ``Set-Cookie`` header and hop-by-hop headers
- ``hop``: 200 with the ``ok`` body and every header a cache must not keep or
  replay (``Set-Cookie``, hop-by-hop headers, ``Vary``, a private header)
- ``huge``: 200 streaming ``size`` bytes of JSON, ``Content-Length`` declared
- ``huge_unsized``: the same with no ``Content-Length`` (ends when the socket closes)
- ``gzip_bomb``: 200, ``Content-Encoding: gzip`` (though the client asked for
  identity), a small compressed body that inflates to ``size`` bytes of JSON
- ``slow_headers``: the status line, then a header one byte every 50 ms for
  ``size`` bytes (default 200: ten seconds), then the ``ok`` body

``delay`` seconds pass before every answer; with ``token`` set, a request without
``Authorization: Bearer <token>`` gets a 401. ``calls`` records each request's
method, path, query, headers, body and peer address; ``max_inflight`` is the
most requests it had in hand at once since the last reset.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["HOSTILE_HEADERS", "FakeUpstream"]

#: What ``hop`` mode sends beside the body: none of it may be stored or replayed.
HOSTILE_HEADERS = [
    ("Set-Cookie", "session=upstream-secret; Path=/"),
    ("Set-Cookie", "tracker=upstream-tracker; Domain=127.0.0.1"),
    ("Connection", "keep-alive, X-Upstream-Secret"),
    ("Keep-Alive", "timeout=600, max=100000"),
    ("Proxy-Authenticate", "Basic realm=upstream"),
    ("Proxy-Connection", "keep-alive"),
    ("Upgrade", "h2c"),
    ("Trailer", "X-Checksum"),
    ("X-Upstream-Secret", "upstream-internal-token"),
    ("Vary", "Cookie, Authorization"),
    ("Cache-Control", "private, max-age=0"),
    ("Access-Control-Allow-Origin", "*"),
    ("WWW-Authenticate", "Bearer realm=upstream"),
]


class FakeUpstream:
    def __init__(self) -> None:
        self.mode = "ok"
        self.status = 200
        #: When set, every request must carry ``Authorization: Bearer <token>`` (else 401).
        self.token = ""
        #: ``etag`` mode: the body's version (change it to change the body), and
        #: how many conditional requests were answered 304.
        self.version = 1
        self.not_modified = 0
        self.delay = 0.0
        self.size = 0
        self.calls: list[dict[str, object]] = []
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()
        self._bombs: dict[int, bytes] = {}
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                upstream._handle(self)

            def do_POST(self) -> None:
                upstream._handle(self)

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # the default 5 drops connects in a stampede

            def handle_error(self, request, client_address) -> None:
                pass  # clients that hang up on a slow answer are part of the tests

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.calls)

    def calls_to(self, path: str) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c["path"] == path)

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.max_inflight = self.inflight
        self.mode, self.status, self.delay, self.size, self.token = "ok", 200, 0.0, 0, ""
        self.version, self.not_modified = 1, 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            n = len(self.calls) + 1
            self.calls.append(
                {
                    "method": h.command,
                    "path": parts.path,
                    "query": parts.query,
                    "headers": dict(h.headers),
                    "body": body,
                    "client": h.client_address,
                    "at": time.monotonic(),
                }
            )
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            self._answer(h, parts, n)
        finally:
            with self._lock:
                self.inflight -= 1

    def _answer(self, h: BaseHTTPRequestHandler, parts, n: int) -> None:
        mode, delay = self.mode, self.delay
        if delay:
            time.sleep(delay)
        body = json.dumps({"path": parts.path, "query": parts.query, "n": n}).encode()
        try:
            if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
                self._send(h, 401, b'{"error": "unauthorized"}')
            elif mode == "ok":
                self._send(h, 200, body)
            elif mode == "status":
                self._send(h, self.status, json.dumps({"error": self.status}).encode())
            elif mode == "etag":
                self._send_validated(h, parts)
            elif mode == "invalid":
                self._send(h, 200, b"<html>not json</html>")
            elif mode == "big":
                filler = b'{"x":"' + b"a" * max(0, self.size - 8) + b'"}'
                self._send(h, 200, filler)
            elif mode == "cookie":
                self._send(
                    h,
                    200,
                    body,
                    [("Set-Cookie", "session=upstream-secret"), ("Connection", "close")],
                )
            elif mode == "reset":
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", "100000")
                h.end_headers()
                h.wfile.write(b'{"partial": ')
                h.wfile.flush()
                h.close_connection = True
                h.connection.close()
            elif mode == "trickle":
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.end_headers()  # no length: the body ends when the socket does
                h.close_connection = True
                for _ in range(600):
                    h.wfile.write(b" ")
                    h.wfile.flush()
                    time.sleep(0.05)
            elif mode == "hop":
                self._send(h, 200, body, HOSTILE_HEADERS)
            elif mode in ("huge", "huge_unsized"):
                self._stream_huge(h, self.size or 50_000_000, mode == "huge")
            elif mode == "gzip_bomb":
                packed = self._bomb(self.size or 50_000_000)
                self._send(h, 200, packed, [("Content-Encoding", "gzip")])
            elif mode == "slow_headers":
                h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(self.size or 200):
                    h.wfile.write(b"a")
                    h.wfile.flush()
                    time.sleep(0.05)
                h.wfile.write(b"\r\nContent-Type: application/json\r\n")
                h.wfile.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
                h.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            pass

    @staticmethod
    def _stream_huge(h: BaseHTTPRequestHandler, size: int, declared: bool) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if declared:
            h.send_header("Content-Length", str(size))
        h.end_headers()
        h.close_connection = True
        h.wfile.write(b'{"x":"')
        sent, block = 8, b"a" * 65536
        while sent + len(block) < size:
            h.wfile.write(block)
            sent += len(block)
        h.wfile.write(b"a" * (size - sent) + b'"}')

    def _bomb(self, size: int) -> bytes:
        with self._lock:
            packed = self._bombs.get(size)
        if packed is None:
            raw = b'{"x":"' + b"a" * max(0, size - 8) + b'"}'
            packed = gzip.compress(raw, compresslevel=9)
            with self._lock:
                self._bombs[size] = packed
        return packed

    def _send_validated(self, h: BaseHTTPRequestHandler, parts) -> None:
        """The same body for a path every time, with validators; 304 when they match."""
        body = json.dumps({"path": parts.path, "query": parts.query, "version": self.version})
        tag = '"' + hashlib.sha256(body.encode()).hexdigest()[:16] + '"'
        validators = [("ETag", tag), ("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT")]
        if h.headers.get("If-None-Match") == tag:
            with self._lock:
                self.not_modified += 1
            h.send_response(304)
            for name, value in validators:
                h.send_header(name, value)
            h.end_headers()
            return
        self._send(h, 200, body.encode(), validators)

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, status: int, body: bytes, extra: list[tuple[str, str]] = ()
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)
