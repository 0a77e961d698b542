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
import re
import threading
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from django.http import HttpRequest, HttpResponse

from . import asgi, metrics, registry
from .conf import get_settings
from .entry import Policy, check_tags, make_key
from .errors import BadRequest
from .params import (
    QueryLists,
    openapi_parameters,
    parse_schema,
    parse_stored_params,
    query_lists,
    stored_params,
)
from .policies import policy_of
from .reads import Answer, Lookup
from .responses import build_response, error_response
from .runtime import get_coalescer
from .upstream import UpstreamRequest

if TYPE_CHECKING:  # ninja reads Django's settings on import: not before they exist
    from ninja import Schema

P = TypeVar("P")

#: Query strings whose lookup an endpoint remembers, and the longest remembered.
LOOKUP_CACHE_SIZE = 4096
MAX_REMEMBERED_QUERY = 1024
_lookups_lock = threading.Lock()


class CoalescedEndpoint(Generic[P]):
    #: Unique name: storage, metrics, ``purge_stale --endpoint``.
    name: ClassVar[str]
    #: Default URL path for :meth:`register`; ``{name}`` segments are path parameters.
    path: ClassVar[str] = ""
    content_type: ClassVar[str] = "application/json"
    #: Per-endpoint windows; ``None`` takes the setting of the same name.
    fresh_ttl_ms: ClassVar[int | None] = None
    stale_ttl_ms: ClassVar[int | None] = None
    stale_if_error_ms: ClassVar[int | None] = None
    negative_ttl_ms: ClassVar[int | None] = None
    #: The parameters as a django-ninja ``Schema``: then :meth:`parse` validates
    #: with it and ``/docs`` shows it, one declaration for both.
    params_schema: ClassVar[type[Schema] | None] = None
    #: OpenAPI parameter objects of a hand-written :meth:`parse`, for ``/docs``.
    openapi_parameters: ClassVar[list[dict[str, Any]]] = []
    #: Answers no shared cache may keep (``Cache-Control: private``); every
    #: endpoint with :meth:`vary` is private too.
    private: ClassVar[bool] = False
    #: Refresh a key that keeps being asked for shortly before it goes stale
    #: (probabilistic early expiry), so that steady traffic never sees STALE.
    refresh_ahead: ClassVar[bool] = False
    summary: ClassVar[str] = ""
    #: Whether the subclass has a :meth:`vary` of its own (set per class).
    _varies: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._varies = cls.vary is not CoalescedEndpoint.vary
        if "name" in cls.__dict__:
            registry.add(cls)

    # -- what a subclass says ---------------------------------------------

    def parse(self, query: QueryLists) -> P:
        """Query (and path) parameters -> validated params, or :class:`BadRequest`."""
        if self.params_schema is None:
            raise NotImplementedError(f"{type(self).__name__} needs params_schema or parse()")
        return parse_schema(self.params_schema, query)  # type: ignore[return-value]

    def vary(self, request: HttpRequest) -> str | None:
        """What tells callers apart whose answers differ (a tenant, a plan, a locale).

        By default nothing of the request but its parameters counts. A value
        here becomes part of the cache key and of the single-flight name, and
        reaches :meth:`upstream_request` as its second argument.
        """
        return None

    def coalescing_name(self, params: P) -> str:
        raise NotImplementedError

    def tags(self, params: P) -> Iterable[str]:
        """Labels for invalidation (``operations.invalidate_tag``); by default none."""
        return ()

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
        policy = policy_of(conf, self)
        self._policy = (conf, policy)
        return policy

    def lookup_query(self, query: QueryLists, varied: str | None = None) -> Lookup:
        """The lookup of a query as a client sends it (path parameters merged in).

        What the entry keeps to be refreshed later is this query and the
        caller's ``varied`` value: a refresh parses them again and builds the
        upstream request anew, with the settings then in force.
        """
        params = self.parse(query)
        cache_key, name = self.cache_key(params), self.coalescing_name(params)
        if varied is not None:
            cache_key, name = f"{cache_key}#{varied}", f"{name}#{varied}"
        key, key_hash = make_key(self.name, cache_key)
        if self._varies:
            build = lambda: self.upstream_request(params, varied)  # type: ignore[call-arg]  # noqa: E731
        else:
            build = lambda: self.upstream_request(params)  # noqa: E731
        return Lookup(
            endpoint=self.name,
            key=key,
            key_hash=key_hash,
            name=name,
            policy=self.policy(),
            build_request=build,
            content_type=self.content_type,
            validate_body=self.validate_body,
            private=self.private or self._varies,
            params=stored_params(query, varied),
            refresh_ahead=self.refresh_ahead,
            tags=check_tags(self.tags(params)),
        )

    def lookup_stored(self, params: str) -> Lookup:
        """The lookup of an entry's stored parameters (refresh); ``BadRequest`` if unusable."""
        query, varied = parse_stored_params(params)
        return self.lookup_query(query, varied)

    def view(self, request: HttpRequest, **path: str) -> HttpResponse:
        """The sync view (WSGI, gevent): waits for a miss in its own greenlet or thread."""
        lk = self._request_lookup(request, path)
        if isinstance(lk, HttpResponse):
            return lk
        coalescer = get_coalescer()
        return self._respond(request, lk, coalescer.get(lk), coalescer.clock())

    async def aview(self, request: HttpRequest, **path: str) -> HttpResponse:
        """The async view (ASGI): the same read path; a waiter holds no thread."""
        lk = self._request_lookup(request, path)
        if isinstance(lk, HttpResponse):
            return lk
        coalescer = get_coalescer()
        return self._respond(request, lk, await coalescer.aget(lk), coalescer.clock())

    def _request_lookup(self, request: HttpRequest, path: dict[str, str]) -> Lookup | HttpResponse:
        """The lookup of the request (remembered), or the 400 it deserves."""
        memo: Any = request.META.get("QUERY_STRING", "")
        if path:
            memo = f"{request.path_info}?{memo}"
        varied = None
        if self._varies:
            try:
                varied = self.vary(request)
            except BadRequest as exc:
                return error_response(400, exc.detail)
            if varied is not None:
                varied = str(varied)
                memo = (memo, varied)
        lk = self._lookups.get(memo)
        if lk is None or lk.policy is not self.policy():
            try:
                query = query_lists(request)
                if path:
                    query = {**query, **{k: [str(v)] for k, v in path.items()}}
                lk = self.lookup_query(query, varied)
            except BadRequest as exc:
                return error_response(400, exc.detail)
            self._remember(memo, lk)
        return lk

    def _respond(
        self, request: HttpRequest, lk: Lookup, answer: Answer, now: float
    ) -> HttpResponse:
        metrics.labelled(metrics.REQUESTS, self.name, answer.x_cache).inc()
        return build_response(answer, now, request, private=lk.private)

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

    def _remember(self, memo: Any, lk: Lookup) -> None:
        if len(memo if isinstance(memo, str) else memo[0]) > MAX_REMEMBERED_QUERY:
            return
        lookups = self._lookups
        with _lookups_lock:
            lookups[memo] = lk
            while len(lookups) > LOOKUP_CACHE_SIZE:
                del lookups[next(iter(lookups))]

    @classmethod
    def register(cls, router: Any, path: str | None = None, **operation: Any) -> None:
        """Serve this endpoint on a django-ninja ``NinjaAPI`` or ``Router``: one line.

        The view takes its path parameters from Django's URL match, not from
        ninja: validation is the endpoint's own, for path and query alike.
        """
        endpoint = cls()
        route = path or cls.path
        if asgi.async_views():

            async def view(request: HttpRequest) -> HttpResponse:
                return await endpoint.aview(request, **_path_kwargs(request))

        else:

            def view(request: HttpRequest) -> HttpResponse:
                return endpoint.view(request, **_path_kwargs(request))

        view.__name__ = f"{cls.name}_view"
        target = getattr(router, "default_router", router)
        operation.setdefault("summary", cls.summary or cls.__doc__ or cls.name)
        operation.setdefault("operation_id", cls.name)
        parameters = cls.openapi_parameters
        if cls.params_schema is not None:
            parameters = openapi_parameters(cls.params_schema, PATH_PARAMETER.findall(route))
        operation.setdefault("openapi_extra", {"parameters": parameters})
        # The url name tells the front layer (coalescing.front) which routes are ours.
        url_name = operation.setdefault("url_name", f"coalesced_{cls.name}")
        registry.serve(url_name, endpoint)
        with warnings.catch_warnings():
            # ninja warns of path parameters missing from the view's signature:
            # on purpose, see above.
            warnings.filterwarnings("ignore", message=r"Field\(s\) .* are in the view path")
            target.add_api_operation(route, ["GET", "HEAD"], view, **operation)


#: A path parameter of a django-ninja route: ``{name}`` or ``{converter:name}``.
PATH_PARAMETER = re.compile(r"\{(?:\w+:)?(\w+)\}")


def _path_kwargs(request: HttpRequest) -> dict[str, str]:
    match = getattr(request, "resolver_match", None)
    return match.kwargs if match is not None else {}
