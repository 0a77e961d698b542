"""Answering the coalesced endpoints in front of Django's request handling.

A hit of a coalesced endpoint needs its query, the memory tier and the
answer's headers, and none of what Django's handler does around a view:
the request signals (which, under ASGI, hop to a thread of their own for
every request), the middleware, URL dispatch and django-ninja's operation.
:class:`Front` answers those requests itself, hits and misses alike, with the
endpoint's own view code, so the headers, statuses and metrics are those of
the full path. Everything else goes to Django unchanged.

Which requests it takes:

- ``GET`` and ``HEAD`` with no body, whose path resolves (Django's URL
  resolver, remembered per path) to a route that ``CoalescedEndpoint.register``
  made, and whose ``Host`` passes ``ALLOWED_HOSTS``;
- only once the full path has answered that route once with a coalesced
  answer: the headers the middleware stack added to it then (security
  headers and the like) are added to every answer from here on, and a route
  that the stack refuses (a login check, say) never gets that far, so it
  stays with Django.

What it skips for them: every middleware and the request signals. A site
whose middleware must see each request to an endpoint (rate limits, an IP
allow-list, per-request headers) uses Django's own application instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, get_resolver

from . import registry

if TYPE_CHECKING:
    from .endpoint import CoalescedEndpoint

log = logging.getLogger("coalescing")

#: Paths whose route is remembered, and the longest remembered.
ROUTE_CACHE_SIZE = 4096
MAX_REMEMBERED_PATH = 1024
#: Headers that belong to one answer, or that the endpoint sets itself: never learned.
NOT_LEARNED = frozenset(
    {
        "age",
        "cache-control",
        "cache-status",
        "connection",
        "content-encoding",
        "content-language",
        "content-length",
        "content-type",
        "date",
        "etag",
        "expires",
        "keep-alive",
        "last-modified",
        "retry-after",
        "server",
        "set-cookie",
        "transfer-encoding",
        "vary",
        "x-cache",
    }
)


class Front:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _routes' size; reads need no lock
        #: path_info -> (url name of a coalesced route, its path parameters),
        #: or ("", {}) for any other path.
        self._routes: dict[str, tuple[str, dict[str, str]]] = {}
        #: url name -> the headers the full path added to a coalesced answer.
        self._learned: dict[str, list[tuple[str, str]]] = {}

    # -- which requests ----------------------------------------------------

    def route(self, path_info: str) -> str:
        """The url name of the coalesced route at ``path_info``, or ``""``."""
        return self._match(path_info)[0]

    def _match(self, path_info: str) -> tuple[str, dict[str, str]]:
        found = self._routes.get(path_info)
        if found is None:
            found = self._resolve(path_info)
            if len(path_info) <= MAX_REMEMBERED_PATH:
                with self._lock:
                    self._routes[path_info] = found
                    while len(self._routes) > ROUTE_CACHE_SIZE:
                        del self._routes[next(iter(self._routes))]
        return found

    @staticmethod
    def _resolve(path_info: str) -> tuple[str, dict[str, str]]:
        try:
            match = get_resolver().resolve(path_info)
        except Resolver404:
            return "", {}
        if match.args or registry.served(match.url_name) is None:
            return "", {}
        return match.url_name, match.kwargs

    def learned(self, url_name: str) -> bool:
        return url_name in self._learned

    def endpoint(
        self, request: HttpRequest, has_body: bool, *, learned_only: bool = True
    ) -> tuple[CoalescedEndpoint, dict[str, str]] | None:
        """The endpoint that answers ``request`` here and its path parameters,
        or ``None``: Django answers it.

        ``learned_only=False`` also gives the endpoint of a route whose first
        full answer has not been seen yet (the caller waits for it).
        """
        if request.method not in ("GET", "HEAD") or has_body:
            return None
        url_name, path = self._match(request.path_info)
        if not url_name or (learned_only and url_name not in self._learned):
            return None
        try:
            request.get_host()
        except DisallowedHost:
            return None  # Django answers it, and logs it as it does
        endpoint = registry.served(url_name)
        return None if endpoint is None else (endpoint, path)

    # -- the answer ----------------------------------------------------------

    def finish(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        """Add what the full path adds to the endpoint's own answer."""
        for name, value in self._learned.get(self.route(request.path_info), ()):
            if name not in response:
                response[name] = value
        return response

    def learn(self, path_info: str, headers: Iterable[tuple[str, str]]) -> None:
        """Note what the full path sent for ``path_info``, if it is a coalesced answer."""
        url_name = self.route(path_info)
        if not url_name or url_name in self._learned:
            return
        headers = list(headers)
        if not any(name.lower() == "x-cache" for name, _ in headers):
            return  # not the endpoint's answer (refused by the stack, a 400...)
        self._learned[url_name] = [
            (name, value) for name, value in headers if name.lower() not in NOT_LEARNED
        ]
