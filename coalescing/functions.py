"""``@coalesced``: the same machinery in front of any function, sync or async.

::

    @coalesced("rates", key=lambda currency: currency, fresh_ttl_ms=60_000)
    def exchange_rate(currency: str) -> dict: ...

A call goes through the read path of an endpoint: the tiers, the single
flight (across processes with Redis), stale-while-revalidate and
stale-if-error, metrics, the admin, ``purge_stale`` and invalidation. The
result must be JSON-serialisable (or ``bytes``); every caller gets its own
copy, decoded from the stored bytes. When the function raises and no stale
value can be served, the caller gets :class:`CallFailed`.

The function runs in the flight's own thread (a greenlet under gevent), like
an upstream call. An async function runs on the event loop of the caller
that started the flight, so it may use that loop's resources; started
without a loop (a refresh from the admin or a command), it runs on a loop of
its own.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from collections.abc import Callable
from typing import Any

from .conf import get_settings
from .endpoint import CoalescedEndpoint
from .entry import make_key
from .errors import BadRequest, CallFailed, UpstreamError, UpstreamTimeout
from .params import QueryLists
from .reads import Answer, Lookup
from .runtime import get_coalescer

JSON = "application/json"
BYTES = "application/octet-stream"


class CoalescedFunction:
    """A function behind the cache; call it as the function itself."""

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        key: Callable[..., Any] | None,
        coalescing_name: Callable[..., Any] | None,
        windows: dict[str, int | None],
    ) -> None:
        self.fn = fn
        self.name = name
        self.key = key
        self.coalescing_name = coalescing_name
        self.is_async = inspect.iscoroutinefunction(fn)
        # The function's entry among the endpoints: one namespace of names, and
        # what the admin, purge_stale and refreshes look a name up by.
        self.endpoint = type(
            f"Coalesced_{name.replace('.', '_').replace('-', '_')}",
            (FunctionEndpoint,),
            {"name": name, "function": self, "__module__": fn.__module__, **windows},
        )()
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_async:
            return self._acall(args, kwargs)
        return _value(get_coalescer().get(self.lookup(args, kwargs)))

    async def _acall(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        lk = self.lookup(args, kwargs, asyncio.get_running_loop())
        return _value(await get_coalescer().aget(lk))

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        """Forget the result of these arguments everywhere."""
        lk = self.lookup(args, kwargs)
        get_coalescer().invalidate(lk.key_hash, lk.name)

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function now for these arguments (coalesced); its new result."""
        return _value(get_coalescer().refresh_now(self.lookup(args, kwargs)))

    def lookup(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Lookup:
        key = self.key(*args, **kwargs) if self.key else _canonical(args, kwargs)
        name = self.coalescing_name(*args, **kwargs) if self.coalescing_name else key
        readable, key_hash = make_key(self.name, str(key))
        try:
            params = _canonical(args, kwargs)
        except TypeError:
            params = ""  # not JSON: the entry cannot be refreshed from its arguments
        return Lookup(
            endpoint=self.name,
            key=readable,
            key_hash=key_hash,
            name=str(name),
            policy=self.endpoint.policy(),
            build_request=_no_request,
            content_type=JSON,
            validate_body=_accept,
            params=params,
            call=lambda: self._run(args, kwargs, loop),
        )

    def _run(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        loop: asyncio.AbstractEventLoop | None,
    ) -> tuple[bytes, str]:
        """In the flight's thread: the function's result, as stored bytes."""
        try:
            if not self.is_async:
                result = self.fn(*args, **kwargs)
            elif loop is not None and loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self.fn(*args, **kwargs), loop)
                try:
                    result = future.result(get_settings().upstream_timeout)
                except TimeoutError:
                    future.cancel()
                    raise UpstreamTimeout(f"{self.name} did not return in time") from None
            else:
                result = asyncio.run(self.fn(*args, **kwargs))
        except UpstreamError:
            raise
        except Exception as exc:
            raise CallFailed(f"{self.name} failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, bytes | bytearray | memoryview):
            return bytes(result), BYTES
        try:
            return json.dumps(result, separators=(",", ":")).encode(), JSON
        except (TypeError, ValueError) as exc:
            raise CallFailed(f"{self.name} returned what cannot be stored: {exc}") from exc


class FunctionEndpoint(CoalescedEndpoint[Any]):
    """A coalesced function's place among the endpoints (never served over HTTP)."""

    function: CoalescedFunction

    def lookup_query(self, query: QueryLists, varied: str | None = None) -> Lookup:
        """Keyword arguments from ``name=value`` pairs (``manage.py invalidate``)."""
        kwargs = {}
        for name, values in query.items():
            if len(values) != 1:
                raise BadRequest(f"{name} must be given once")
            kwargs[name] = values[0]
        return self.function.lookup((), kwargs)

    def lookup_stored(self, params: str) -> Lookup:
        try:
            data = json.loads(params)
            args, kwargs = tuple(data["a"]), dict(data["k"])
        except (ValueError, KeyError, TypeError):
            raise BadRequest("this entry keeps no arguments to refresh it from") from None
        return self.function.lookup(args, kwargs)


def coalesced(
    name: str,
    *,
    key: Callable[..., Any] | None = None,
    coalescing_name: Callable[..., Any] | None = None,
    fresh_ttl_ms: int | None = None,
    stale_ttl_ms: int | None = None,
    stale_if_error_ms: int | None = None,
) -> Callable[[Callable[..., Any]], CoalescedFunction]:
    """Put the cache and the single flight in front of a function.

    ``name`` follows the endpoint naming rules and shares their namespace.
    ``key(*args, **kwargs)`` gives what makes two calls the same (by default
    the arguments themselves, as JSON); ``coalescing_name`` who coalesces
    (by default the key). TTLs default to the settings of the same names.
    """
    windows = {
        "fresh_ttl_ms": fresh_ttl_ms,
        "stale_ttl_ms": stale_ttl_ms,
        "stale_if_error_ms": stale_if_error_ms,
    }

    def decorate(fn: Callable[..., Any]) -> CoalescedFunction:
        return CoalescedFunction(fn, name, key, coalescing_name, windows)

    return decorate


def _canonical(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return json.dumps({"a": list(args), "k": kwargs}, sort_keys=True, separators=(",", ":"))


def _value(answer: Answer) -> Any:
    entry = answer.entry
    if entry is None:  # a new exception per caller: the flight's error is shared
        raise CallFailed(str(answer.error or "the call failed"))
    if entry.content_type == BYTES:
        return entry.body
    return json.loads(entry.body)


def _no_request() -> Any:
    raise AssertionError("a coalesced function has no upstream request")


def _accept(body: bytes) -> None:
    return None
