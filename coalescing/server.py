"""The gevent WSGI server of ``manage.py serve``, as strict as gunicorn.

Speed on keep-alive connections: TCP_NODELAY on every accepted socket, and a
Content-Length on every response (without it pywsgi answers chunked, and the
last chunk waits 40 ms for a delayed ACK).

Strictness, because ``serve`` may sit behind a proxy that frames requests
differently (request smuggling): :class:`StrictWSGIHandler` reads the request
head itself and refuses, with 400 and a closed connection, whatever two
parsers could read two ways (see :func:`parse_request_line`,
:func:`parse_field_line` and :func:`framing`; the decisions are gunicorn's).
A response to HEAD carries no body on the wire.

Bounds, so that slow or idle clients cannot hold the process's descriptors:

- the request head (line and headers) must arrive within ``header_timeout``
  from accept (first request) or from its first byte (the next ones);
- between requests a keep-alive connection waits at most ``idle_timeout``,
  which also bounds every read and write;
- at most ``max_connections`` connections are open (a bounded pool); past
  it new connections wait in the listen backlog. When the pool fills, the
  keep-alive connection idle the longest is closed to make room, as nginx
  does: a client may always close an idle connection, so closing one harms
  no request, where leaving it would make new clients wait the idle timeout.
"""

from __future__ import annotations

import logging
import re
import resource
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import gevent
import gevent.pool
from gevent.pywsgi import MAX_REQUEST_LINE, WSGIHandler, WSGIServer

try:
    # The header object pywsgi's own parser builds: made here from the lines
    # already read, rather than parsing them a second time with ``email``.
    from gevent.pywsgi import OldMessage as _HeaderObject
except ImportError:  # another gevent: its parser, on the lines known to be well-formed
    _HeaderObject = None

log = logging.getLogger("coalescing")

#: The address this process serves on, once ``serve`` has bound it.
bound_address: tuple[str, int] | None = None
#: Longest wait for the next request on a keep-alive connection (nginx: 75 s),
#: and for any one read or write on it.
IDLE_TIMEOUT_S = 60.0
#: Connections the kernel holds for us while the pool is full (capped by
#: ``net.core.somaxconn``).
LISTEN_BACKLOG = 2048
#: Descriptors a process needs besides its client connections (database,
#: Redis, upstream sockets, files).
SPARE_FDS = 100

#: Limits of a request head, gunicorn's defaults.
MAX_HEADER_FIELDS = 100
MAX_FIELD_LINE = 8190
#: The largest length any HTTP stack can represent (a signed 64-bit offset);
#: a longer one is not a body this server could ever read.
MAX_CONTENT_LENGTH = 2**63 - 1

# RFC 9110 5.6.2 token; 5.5 field values (controls other than HTAB refused).
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE_INVALID = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9112 3.2: a request target is printable ASCII; the rest is %-encoded.
TARGET_INVALID = re.compile(r"[^\x21-\x7e]")
# Methods are upper case by convention; a lower-case one is a probe or a bug.
METHOD_INVALID = re.compile(r"[a-z#]")
VERSION = re.compile(r"HTTP/(\d)\.(\d)")
DIGITS = re.compile(r"[0-9]+")
#: Transfer codings known to exist (RFC 9112 7); only a lone ``chunked`` is
#: one pywsgi reads, the rest are refused with 400, the unknown with 501.
KNOWN_CODINGS = frozenset({"chunked", "identity", "gzip", "x-gzip", "deflate", "compress"})

REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
}


class Refused(ValueError):
    """A request head this server will not read: answered ``status``, then closed."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status

    def response(self) -> bytes:
        return error_response(self.status)


class _IdleEvicted(Exception):
    """Thrown into a handler waiting between requests, to close its connection."""


def error_response(status: int) -> bytes:
    """A complete response with an empty body that closes the connection."""
    return (
        f"HTTP/1.1 {status} {REASONS[status]}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ).encode("ascii")


# -- parsing the head (pure functions) ------------------------------------------


@dataclass(frozen=True)
class RequestLine:
    method: str
    target: str
    version: tuple[int, int]


def parse_request_line(line: str) -> RequestLine:
    """``method SP target SP HTTP/1.x``, each part as gunicorn accepts it."""
    parts = line.split(" ", 2)
    if len(parts) != 3:
        raise Refused("request line not of three parts")
    method, target, version = parts
    if not TOKEN.fullmatch(method) or METHOD_INVALID.search(method) or not 3 <= len(method) <= 20:
        raise Refused("invalid method")
    if not target or TARGET_INVALID.search(target):
        raise Refused("invalid request target")
    if target == "*" and method != "OPTIONS":
        raise Refused("asterisk-form target is for OPTIONS only")
    if method != "CONNECT" and target != "*" and not target.startswith("/") and "://" not in target:
        raise Refused("authority-form target is for CONNECT only")
    match = VERSION.fullmatch(version)
    if match is None:
        raise Refused("invalid HTTP version")
    number = (int(match[1]), int(match[2]))
    if not (1, 0) <= number < (2, 0):
        raise Refused("unsupported HTTP version")
    return RequestLine(method, target, number)


def parse_field_line(line: str) -> tuple[str, str]:
    """``name: value`` with CRLF removed: (upper-case name, value)."""
    if line[:1] in (" ", "\t"):
        raise Refused("obsolete line folding")
    name, colon, value = line.partition(":")
    # Whitespace before the colon fails the token: RFC 9112 5.1 says 400.
    if not colon or not TOKEN.fullmatch(name):
        raise Refused("invalid header name")
    value = value.strip(" \t")
    if FIELD_VALUE_INVALID.search(value):
        raise Refused("control character in a header value")
    return name.upper(), value


def _one(fields: list[tuple[str, str]], name: str) -> str | None:
    values = [value for field, value in fields if field == name]
    if len(values) > 1:
        raise Refused(f"{name.title()} repeated")
    return values[0] if values else None


def _codings(fields: list[tuple[str, str]]) -> list[str]:
    """Every transfer coding named, in order, across repeated fields."""
    codings = [
        item.strip(" \t").lower()
        for field, value in fields
        if field == "TRANSFER-ENCODING"
        for item in value.split(",")
    ]
    unknown = [c for c in codings if c not in KNOWN_CODINGS]
    if unknown:
        raise Refused(f"unsupported transfer coding {unknown[0]!r}", 501)
    return codings


def framing(fields: list[tuple[str, str]], line: RequestLine) -> int | None:
    """The request's body length (``None``: no Content-Length; chunked or empty).

    Refuses every head whose body two parsers could delimit differently:
    Transfer-Encoding with Content-Length, a repeated or malformed
    Content-Length, any coding but one final ``chunked``, chunked in
    HTTP/1.0. Also the other fields that must be single (Host, Content-Type)
    and HTTP/1.1 without Host.
    """
    host = _one(fields, "HOST")
    if host is None and line.version >= (1, 1):
        raise Refused("HTTP/1.1 request without Host")
    _one(fields, "CONTENT-TYPE")
    length = _one(fields, "CONTENT-LENGTH")
    codings = _codings(fields)
    if codings:
        if codings != ["chunked"]:
            raise Refused("transfer codings other than one final chunked")
        if line.version < (1, 1):
            raise Refused("chunked in HTTP/1.0")
        if length is not None:
            raise Refused("both Transfer-Encoding and Content-Length")
        return None
    if length is None:
        return None
    # The length first: int() of thousands of digits is slow, then an error.
    if not DIGITS.fullmatch(length) or len(length) > 19 or int(length) > MAX_CONTENT_LENGTH:
        raise Refused("malformed Content-Length")
    value = int(length)
    if value and line.method == "HEAD":
        raise Refused("a body on HEAD")
    return value


def _expects_continue(fields: list[tuple[str, str]]) -> None:
    expect = _one(fields, "EXPECT")
    if expect is not None and expect.lower() != "100-continue":
        raise Refused(f"unknown expectation {expect!r}", 417)


def _closes(fields: list[tuple[str, str]], version: tuple[int, int]) -> bool:
    tokens = {t.strip(" \t").lower() for f, v in fields if f == "CONNECTION" for t in v.split(",")}
    if "close" in tokens:
        return True
    return version < (1, 1) and "keep-alive" not in tokens


def _peer(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) else str(address)


# -- the handler -------------------------------------------------------------------


class StrictWSGIHandler(WSGIHandler):
    """pywsgi's handler with gunicorn's strict head parsing and the head deadline."""

    server: StrictWSGIServer
    _greenlet: Any = None
    _waiting = False  # blocked between requests, nothing read: may be evicted
    _served = 0

    def handle(self) -> None:
        self._greenlet = gevent.getcurrent()
        super().handle()

    def handle_one_request(self) -> tuple[str, bytes] | bool | None:
        """One request: None closes quietly, (status, bytes) answers and closes."""
        if self.rfile.closed:
            return None
        if self._served and not self._await_next_request():
            return None
        self.response_length = 0
        deadline = gevent.Timeout(self.server.header_timeout)
        deadline.start()
        try:
            if not self._read_head():
                return None
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            # 408 once a request line has come; before, closed quietly (a
            # preconnect or a scan gets nothing).
            return ("408", error_response(408)) if self.requestline else None
        except Refused as exc:
            log.info("serve: refused a request from %s: %s", _peer(self.client_address), exc)
            return (str(exc.status), exc.response())
        except OSError:
            return None  # the client went away, or a read timed out
        finally:
            deadline.close()
        self.environ = self.get_environ()
        self.application = self.server.application
        self.handle_one_response()
        self._served += 1
        if self.close_connection or self.rfile.closed or self.server.closed:
            return None  # a stopping server finishes this request, then closes
        return True

    def _await_next_request(self) -> bool:
        """Wait for the next request's first byte; False: close the connection."""
        self._waiting = True
        self.server.idle[self] = None
        try:
            # peek reads the socket only when nothing is buffered (pipelining).
            return bool(self.rfile.peek(1))
        except (OSError, _IdleEvicted):
            return False
        finally:
            self._waiting = False
            self.server.idle.pop(self, None)

    def evict_if_idle(self) -> None:
        """Run by the hub: close the connection if it still waits between requests.

        Checked here, not when the eviction is decided: a request that
        arrived meanwhile is served, never cut.
        """
        if self._waiting and self._greenlet is not None:
            self._greenlet.throw(_IdleEvicted())

    def _read_head(self) -> bool:
        self.requestline = ""
        raw = self._read_line(MAX_REQUEST_LINE, 414)
        if raw == "\r\n":  # RFC 9112 2.2: one empty line before a request is ignored
            raw = self._read_line(MAX_REQUEST_LINE, 414)
        if not raw:
            return False
        self.requestline = raw[:-2]
        line = parse_request_line(self.requestline)
        fields, lines = self._read_fields()
        self.content_length = framing(fields, line)
        _expects_continue(fields)
        self.command, self.path = line.method, line.target
        self.request_version = f"HTTP/{line.version[0]}.{line.version[1]}"
        self.close_connection = _closes(fields, line.version)
        self.headers = self._header_object(lines)
        return True

    def _header_object(self, lines: list[str]) -> Any:
        """pywsgi's header object of the field lines (well-formed: read above)."""
        if _HeaderObject is None:
            return self.MessageClass(BytesIO("".join(lines).encode("latin-1") + b"\r\n"), 0)
        headers = _HeaderObject()
        for raw in lines:
            name, _, value = raw[:-2].partition(":")
            headers[name] = value.strip(" \t")
        return headers

    def _read_line(self, limit: int, too_long: int = 431) -> str:
        """One line ending in CRLF ('' at the end of the stream)."""
        raw = self.rfile.readline(limit + 1)
        if not raw:
            return ""
        if len(raw) > limit:
            raise Refused("line too long", too_long)
        if not raw.endswith(b"\r\n") or b"\r" in raw[:-2]:
            raise Refused("a line not ended by CRLF")
        return raw.decode("latin-1")

    def _read_fields(self) -> tuple[list[tuple[str, str]], list[str]]:
        fields: list[tuple[str, str]] = []
        lines: list[str] = []
        while True:
            raw = self._read_line(MAX_FIELD_LINE)
            if not raw:
                raise Refused("end of stream inside the head")
            if raw == "\r\n":
                return fields, lines
            if len(fields) >= MAX_HEADER_FIELDS:
                raise Refused("too many header fields", 431)
            fields.append(parse_field_line(raw[:-2]))
            lines.append(raw)

    # -- HEAD: the headers a GET would have, no body on the wire ------------------

    def finalize_headers(self) -> None:
        super().finalize_headers()
        if self.command == "HEAD":
            self.response_use_chunked = False  # no terminating chunk either

    def _write(self, data: bytes, *args: Any) -> None:
        if self.command != "HEAD":
            super()._write(data, *args)


# -- the server --------------------------------------------------------------------


class StrictWSGIServer(WSGIServer):
    """pywsgi's server with :class:`StrictWSGIHandler`, the bounds, TCP_NODELAY."""

    handler_class = StrictWSGIHandler
    idle_timeout: float = IDLE_TIMEOUT_S
    header_timeout: float = 10.0

    def __init__(self, *args: Any, max_connections: int = 1000, **kwargs: Any) -> None:
        # A pool, bounded: gevent accepts no more while it is full, and its
        # stop() waits only for handlers in a pool (requests in hand finish).
        kwargs.setdefault("spawn", gevent.pool.Pool(max_connections))
        kwargs.setdefault("backlog", LISTEN_BACKLOG)
        super().__init__(*args, **kwargs)
        #: Handlers waiting between requests, the longest-waiting first.
        self.idle: dict[StrictWSGIHandler, None] = {}

    def handle(self, sock: socket.socket, address: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a Unix socket): nothing to do
        sock.settimeout(self.idle_timeout)
        if self.pool is not None and self.pool.full():
            self.evict_idle(1)  # this connection took the last slot: free one
        super().handle(sock, address)

    def evict_idle(self, count: int | None = None) -> None:
        """Close up to ``count`` (None: all) connections idle between requests."""
        for handler in list(self.idle)[:count]:
            del self.idle[handler]
            self.loop.run_callback(handler.evict_if_idle)

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, close the idle connections, let requests in hand finish."""
        self.close()
        self.evict_idle()
        super().stop(timeout)


def fit_fd_limit(max_connections: int) -> str | None:
    """Raise the soft open-files limit to fit ``max_connections``; a warning if it cannot."""
    needed = max_connections + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target >= needed:
        return None
    return (
        f"SERVE_MAX_CONNECTIONS is {max_connections} but the open-files limit is {target} "
        f"(hard limit): past about {target - SPARE_FDS} connections accept() will fail"
    )


def with_content_length(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Buffer a body that has no Content-Length, so pywsgi never answers chunked.

    Not for 1xx, 204 and 304 answers: they have no body, and a 304's
    Content-Length may only be the full representation's (RFC 9110 8.6).
    """

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured.update(status=status, headers=headers, exc_info=exc_info)
            return lambda data: captured.setdefault("early", []).append(data)

        body_iter = app(environ, capture)
        headers = captured["headers"]
        bodiless = _bodiless(captured["status"])
        if bodiless or any(name.lower() == "content-length" for name, _ in headers):
            start_response(captured["status"], headers, captured["exc_info"])
            return body_iter
        try:
            body = b"".join([*captured.get("early", []), *body_iter])
        finally:
            close = getattr(body_iter, "close", None)
            if close is not None:
                close()
        headers = [*headers, ("Content-Length", str(len(body)))]
        start_response(captured["status"], headers, captured["exc_info"])
        return [body]

    return wrapped


def _bodiless(status: str) -> bool:
    code = status[:3]
    return code in ("204", "304") or code.startswith("1")


def local_base_url() -> str | None:
    """``http://host:port`` of this process's own server, when ``serve`` runs it."""
    if bound_address is None:
        return None
    host, port = bound_address
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
