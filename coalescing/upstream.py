"""The HTTP client of the upstream: one pooled session, a hard time budget, a size cap.

A failed call raises an :class:`~coalescing.errors.UpstreamError` (the tree
is drawn in :mod:`coalescing.errors`).

Nothing of the client's request reaches the upstream: the session sends only
the headers below and those the endpoint's :class:`UpstreamRequest` names,
keeps no cookies, follows no redirects and ignores proxy and netrc settings
of the environment. The request's headers (API keys, bearer tokens) are
sent and nowhere else: an entry keeps the endpoint's parameters, never the
request, and no log line or metric names a header.
"""

from __future__ import annotations

import dataclasses
import http.cookiejar
import json as jsonlib
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .alarms import ALARMS
from .errors import (
    UpstreamBadBody,
    UpstreamBadStatus,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

USER_AGENT = "django-coalescing/0.1"
READ_CHUNK = 16 * 1024


#: The methods an upstream read may use: GET, or POST for APIs that read with a body.
READ_METHODS = frozenset({"GET", "POST"})


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """What an endpoint asks of its upstream: built from validated parameters only.

    ``headers`` are sent with the call (``Authorization``, an API key) and
    never kept; ``json`` is a body for upstreams that read with a POST
    (GraphQL and the like).
    """

    url: str
    params: Mapping[str, str] | None = None
    method: str = "GET"
    headers: Mapping[str, str] | None = dataclasses.field(default=None, repr=False)
    json: Any = None

    def __post_init__(self) -> None:
        if self.method not in READ_METHODS:
            raise ValueError(f"an upstream read is GET or POST, not {self.method!r}")

    @property
    def full_url(self) -> str:
        """The URL with its query; commas stay literal (``fields=name,price``)."""
        if not self.params:
            return self.url
        return f"{self.url}?{urlencode(self.params, safe=',')}"

    @property
    def body(self) -> bytes | None:
        if self.json is None:
            return None
        return jsonlib.dumps(self.json, separators=(",", ":"), sort_keys=True).encode()


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int  # 200, 404, or 304 to a conditional request (then no body)
    body: bytes
    #: The upstream's validators (``ETag``, ``Last-Modified``), for the next refresh.
    etag: str = ""
    last_modified: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Validators:
    """What a conditional request sends: the validators of the answer held now."""

    etag: str = ""
    last_modified: str = ""

    def headers(self) -> dict[str, str]:
        out = {}
        if self.etag:
            out["If-None-Match"] = self.etag
        if self.last_modified:
            out["If-Modified-Since"] = self.last_modified
        return out


#: The deadline of the call this thread (greenlet) is making, for the connection.
_call = threading.local()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the call ended as the alarm rang


class _BoundedHeaders:
    """Reads the status line and headers within what is left of the call's budget.

    A socket timeout bounds each read only; at the deadline an alarm shuts the
    socket down, which ends the read at once (threads and gevent alike).
    """

    sock: socket.socket | None

    def getresponse(self, *args, **kwargs):
        deadline = getattr(_call, "deadline", None)
        sock = self.sock
        if deadline is None or sock is None:
            return super().getresponse(*args, **kwargs)
        alarm = ALARMS.at(deadline, lambda: _shut(sock))
        try:
            return super().getresponse(*args, **kwargs)
        finally:
            ALARMS.cancel(alarm)


class _HTTPConnection(_BoundedHeaders, HTTPConnection):
    pass


class _HTTPSConnection(_BoundedHeaders, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class UpstreamClient:
    def __init__(self, pool_maxsize: int = 256) -> None:
        self.pool_maxsize = pool_maxsize
        self._local_session: requests.Session | None = None
        self._lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        if self._local_session is None:
            with self._lock:
                if self._local_session is None:
                    self._local_session = self._new_session()
        return self._local_session

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        adapter = _Adapter(pool_connections=16, pool_maxsize=self.pool_maxsize, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.clear()
        session.headers.update(
            {"User-Agent": USER_AGENT, "Accept": "application/json", "Accept-Encoding": "identity"}
        )
        return session

    def fetch(
        self,
        request: UpstreamRequest,
        timeout: float,
        max_bytes: int,
        validators: Validators | None = None,
    ) -> UpstreamResponse:
        """One call within ``timeout`` seconds in all. Returns 200 and 404 answers,
        and 304 when ``validators`` made it conditional."""
        started = time.monotonic()
        deadline = started + timeout
        _call.deadline = deadline
        try:
            body = request.body
            headers = dict(request.headers or {})
            if validators is not None:
                headers.update(validators.headers())
            if body is not None:
                headers.setdefault("Content-Type", "application/json")
            response = self.session.request(
                request.method,
                request.full_url,
                data=body,
                headers=headers,
                timeout=(timeout, timeout),
                allow_redirects=False,
                stream=True,
            )
        except requests.Timeout as exc:
            raise UpstreamTimeout(f"upstream did not answer within {timeout:.1f}s") from exc
        except requests.RequestException as exc:
            if time.monotonic() >= deadline:  # the alarm cut a trickle of headers
                raise UpstreamTimeout(f"upstream did not answer within {timeout:.1f}s") from exc
            raise UpstreamUnavailable(f"upstream unreachable: {type(exc).__name__}") from exc
        finally:
            _call.deadline = None
        try:
            status = response.status_code
            conditional = validators is not None and status == 304
            if status not in (200, 404) and not conditional:
                raise UpstreamBadStatus(f"upstream answered {status}", status)
            body = b"" if status != 200 else self._read(response, deadline, max_bytes)
        finally:
            response.close()
        return UpstreamResponse(
            status,
            body,
            etag=_header_value(response.headers.get("ETag", "")),
            last_modified=_header_value(response.headers.get("Last-Modified", "")),
        )

    @staticmethod
    def _read(response: requests.Response, deadline: float, max_bytes: int) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise UpstreamBadBody(f"upstream body of {declared} bytes is over the cap", 200)
        raw = response.raw
        sock = getattr(getattr(raw, "_connection", None), "sock", None)
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UpstreamTimeout("upstream body did not end within the time budget")
                if sock is not None:
                    # Bound each read by what is left, so a trickling body cannot
                    # stretch the budget one slow chunk at a time.
                    sock.settimeout(remaining)
                chunk = raw.read1(READ_CHUNK, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise UpstreamBadBody(
                        f"upstream body is over the cap of {max_bytes} bytes", 200
                    )
                chunks.append(chunk)
        except UpstreamError:
            raise
        except (TimeoutError, requests.Timeout) as exc:
            raise UpstreamTimeout("upstream body did not end within the time budget") from exc
        except Exception as exc:  # urllib3 wraps socket errors in several types
            if "timed out" in str(exc).lower():
                raise UpstreamTimeout("upstream body did not end within the time budget") from exc
            raise UpstreamUnavailable(f"upstream body broke off: {type(exc).__name__}") from exc
        return b"".join(chunks)


#: The longest validator kept: anything longer is not a validator worth sending back.
MAX_VALIDATOR_LENGTH = 256


def _header_value(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_VALIDATOR_LENGTH or any(c in value for c in "\r\n\0"):
        return ""
    return value
