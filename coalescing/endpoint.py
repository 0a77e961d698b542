"""``CoalescedEndpoint``: what an endpoint says; the coalescer does the rest.

A subclass gives a ``name`` and four methods, the roles of the original
``createCoalescedHandler({parse, buildDOName, buildCacheKey, buildUpstreamUrl})``:

- :meth:`parse`: query parameters -> validated params, or :class:`BadRequest`;
- :meth:`coalescing_name`: which name coalesces it (by id, region, tenant...);
- :meth:`cache_key`: what makes two requests the same answer;
- :meth:`upstream_request`: the one upstream call, from validated params only.

Nothing of the HTTP request but its query parameters reaches ``parse``, so
no header or cookie can reach the upstream call or the cache key.
"""

from __future__ import annotations

import json
import threading
from typing import Any, ClassVar, Generic, TypeVar

from django.http import HttpRequest, HttpResponse

from . import asgi, metrics, registry
from .coalescer import Answer, Lookup
from .conf import get_settings
from .entry import Entry, Policy, make_key
from .errors import BadRequest
from .params import QueryLists, query_lists
from .responses import build_response, error_response
from .runtime import get_coalescer
from .upstream import UpstreamRequest

P = TypeVar("P")

#: Query strings whose lookup an endpoint remembers, and the longest remembered.
LOOKUP_CACHE_SIZE = 4096
MAX_REMEMBERED_QUERY = 1024
_lookups_lock = threading.Lock()


class CoalescedEndpoint(Generic[P]):
    #: Unique name: storage, metrics, ``purge_stale --endpoint``.
    name: ClassVar[str]
    #: Default URL path for :meth:`register`.
    path: ClassVar[str] = ""
    content_type: ClassVar[str] = "application/json"
    #: Per-endpoint windows; ``None`` takes the setting of the same name.
    fresh_ttl_ms: ClassVar[int | None] = None
    stale_ttl_ms: ClassVar[int | None] = None
    stale_if_error_ms: ClassVar[int | None] = None
    negative_ttl_ms: ClassVar[int | None] = None
    #: OpenAPI parameter objects, for the docs page (validation is :meth:`parse`).
    openapi_parameters: ClassVar[list[dict[str, Any]]] = []
    summary: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            registry.add(cls)

    # -- what a subclass says ---------------------------------------------

    def parse(self, query: QueryLists) -> P:
        raise NotImplementedError

    def coalescing_name(self, params: P) -> str:
        raise NotImplementedError

    def cache_key(self, params: P) -> str:
        raise NotImplementedError

    def upstream_request(self, params: P) -> UpstreamRequest:
        raise NotImplementedError

    def validate_body(self, body: bytes) -> None:
        """Refuse an upstream body (raise ``ValueError``); by default, it must be JSON."""
        json.loads(body)

    # -- what the base class does -----------------------------------------

    def policy(self) -> Policy:
        conf = get_settings()
        cached = getattr(self, "_policy", None)
        if cached is not None and cached[0] is conf:
            return cached[1]
        fresh = _pick(self.fresh_ttl_ms, conf.fresh_ttl_ms)
        stale = max(fresh, _pick(self.stale_ttl_ms, conf.stale_ttl_ms))
        policy = Policy(
            fresh_ms=fresh,
            stale_ms=stale,
            stale_if_error_ms=_pick(self.stale_if_error_ms, conf.stale_if_error_ms),
            negative_ms=_pick(self.negative_ttl_ms, conf.negative_ttl_ms),
        )
        self._policy = (conf, policy)
        return policy

    def lookup(self, params: P) -> Lookup:
        key, key_hash = make_key(self.name, self.cache_key(params))
        return Lookup(
            endpoint=self.name,
            key=key,
            key_hash=key_hash,
            name=self.coalescing_name(params),
            policy=self.policy(),
            build_request=lambda: self.upstream_request(params),
            content_type=self.content_type,
            validate_body=self.validate_body,
        )

    def lookup_entry(self, entry: Entry) -> Lookup:
        """The lookup that repeats the upstream call an entry came from (refresh)."""
        return Lookup(
            endpoint=self.name,
            key=entry.key,
            key_hash=entry.key_hash,
            name=entry.name,
            policy=self.policy(),
            build_request=lambda: UpstreamRequest(entry.upstream_url),
            content_type=self.content_type,
            validate_body=self.validate_body,
        )

    def lookup_query(self, query: QueryLists) -> Lookup:
        """The lookup of a query, as a client would send it (invalidation, refresh)."""
        return self.lookup(self.parse(query))

    def view(self, request: HttpRequest) -> HttpResponse:
        """The sync view (WSGI, gevent): waits for a miss in its own greenlet or thread."""
        lk = self._request_lookup(request)
        if isinstance(lk, HttpResponse):
            return lk
        coalescer = get_coalescer()
        return self._respond(request, coalescer.get(lk), coalescer.clock())

    async def aview(self, request: HttpRequest) -> HttpResponse:
        """The async view (ASGI): the same read path; a waiter holds no thread."""
        lk = self._request_lookup(request)
        if isinstance(lk, HttpResponse):
            return lk
        coalescer = get_coalescer()
        return self._respond(request, await coalescer.aget(lk), coalescer.clock())

    def _request_lookup(self, request: HttpRequest) -> Lookup | HttpResponse:
        """The lookup of the request's query (remembered), or the 400 it deserves."""
        raw = request.META.get("QUERY_STRING", "")
        lk = self._lookups.get(raw)
        if lk is None or lk.policy is not self.policy():
            try:
                lk = self.lookup_query(query_lists(request))
            except BadRequest as exc:
                return error_response(400, exc.detail)
            self._remember(raw, lk)
        return lk

    def _respond(self, request: HttpRequest, answer: Answer, now: float) -> HttpResponse:
        metrics.labelled(metrics.REQUESTS, self.name, answer.x_cache or "ERROR").inc()
        return build_response(answer, now, request)

    @property
    def _lookups(self) -> dict[str, Lookup]:
        """The lookups of the query strings seen last, so that a hit skips parsing.

        The same query string always gives the same lookup: ``parse``,
        ``coalescing_name`` and ``cache_key`` depend on the query alone.
        Bounded (``LOOKUP_CACHE_SIZE``), the oldest forgotten first; a lookup
        made under other settings (another policy) is made again.
        """
        # Set on first use: a subclass's __init__ need not call ours.
        lookups = self.__dict__.get("_lookup_cache")
        if lookups is None:
            lookups = self.__dict__.setdefault("_lookup_cache", {})
        return lookups

    def _remember(self, raw: str, lk: Lookup) -> None:
        if len(raw) > MAX_REMEMBERED_QUERY:
            return
        lookups = self._lookups
        with _lookups_lock:
            lookups[raw] = lk
            while len(lookups) > LOOKUP_CACHE_SIZE:
                del lookups[next(iter(lookups))]

    @classmethod
    def register(cls, router: Any, path: str | None = None, **operation: Any) -> None:
        """Serve this endpoint on a django-ninja ``NinjaAPI`` or ``Router``: one line."""
        endpoint = cls()
        if asgi.async_views():

            async def view(request: HttpRequest) -> HttpResponse:
                return await endpoint.aview(request)

        else:

            def view(request: HttpRequest) -> HttpResponse:
                return endpoint.view(request)

        view.__name__ = f"{cls.name}_view"
        target = getattr(router, "default_router", router)
        operation.setdefault("summary", cls.summary or cls.__doc__ or cls.name)
        operation.setdefault("operation_id", cls.name)
        operation.setdefault("openapi_extra", {"parameters": cls.openapi_parameters})
        # The url name tells the front layer (coalescing.front) which routes are ours.
        url_name = operation.setdefault("url_name", f"coalesced_{cls.name}")
        registry.serve(url_name, endpoint)
        target.add_api_operation(path or cls.path, ["GET", "HEAD"], view, **operation)


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override
