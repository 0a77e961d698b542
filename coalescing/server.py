"""The gevent WSGI server of ``manage.py serve``.

Two things make gevent's pywsgi fast on keep-alive connections: TCP_NODELAY
on every accepted socket, and a Content-Length on every response (without it
pywsgi answers chunked, and the last chunk waits 40 ms for a delayed ACK).
A connection idle for ``IDLE_TIMEOUT_S`` is closed, so that clients which
open connections and walk away cannot hold the process's descriptors forever.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any

from gevent.pywsgi import WSGIServer

#: The address this process serves on, once ``serve`` has bound it.
bound_address: tuple[str, int] | None = None
#: Longest wait for the next request on a keep-alive connection (nginx: 75 s),
#: and for any one read or write on it.
IDLE_TIMEOUT_S = 60.0


class NoDelayWSGIServer(WSGIServer):
    idle_timeout: float = IDLE_TIMEOUT_S

    def handle(self, sock: socket.socket, address: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a Unix socket): nothing to do
        # pywsgi treats a timeout while waiting for a request line as the
        # client going away: the connection is closed quietly.
        sock.settimeout(self.idle_timeout)
        super().handle(sock, address)


def with_content_length(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Buffer a body that has no Content-Length, so pywsgi never answers chunked."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured.update(status=status, headers=headers, exc_info=exc_info)
            return lambda data: captured.setdefault("early", []).append(data)

        body_iter = app(environ, capture)
        headers = captured["headers"]
        if any(name.lower() == "content-length" for name, _ in headers):
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
