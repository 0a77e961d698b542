"""Turns an :class:`~coalescing.coalescer.Answer` into an HTTP response.

Every 200 and 404 carries ``X-Cache``, ``Cache-Status`` (RFC 9211) and ``Age``;
a 502 or 504 carries ``Cache-Status`` with ``fwd`` and ``fwd-status``.

Towards clients and shared caches (RFC 9111) every 200 and cached 404 also
carries ``ETag`` and ``Cache-Control``; errors are ``no-store``. ``max-age``
is the full freshness lifetime and ``Age`` the entry's age, so that a
downstream cache computes ``max-age - Age`` and holds the answer fresh as long
as we do; a shrinking ``max-age`` with ``Age: 0`` would be counted twice by
any cache that honours ``Age``. A conditional ``GET``/``HEAD`` whose
``If-None-Match`` matches gets ``304`` with the same headers and no body.
"""

from __future__ import annotations

import json
import re

from django.http import HttpRequest, HttpResponse

from .entry import Entry, Policy
from .reads import Answer, XCache

CACHE_NAME = "coalescing"
#: Errors are never kept by a client or a shared cache: the next try may succeed.
NO_STORE = "no-store"
#: One entity-tag of an ``If-None-Match`` list (RFC 9110 8.8.3), weak or not.
#: Split by this, not by commas: a comma is a valid character inside a tag.
_ENTITY_TAG = re.compile(r'(?:W/)?("[\x21\x23-\x7e\x80-\xff]*")')
#: Policies whose Cache-Control strings are built; bounded, policies are few.
_MAX_CACHED_POLICIES = 256
#: id(policy) -> (policy, its strings by (private, negative)). Keyed by id so
#: that a hit hashes an int, not the dataclass's fields; the policy is kept in
#: the value, so its id cannot be reused while the strings are cached.
_cache_controls: dict[int, tuple[Policy, dict[tuple[bool, bool], str]]] = {}
#: Whether Django's header store can be written directly; found on first use.
_store_usable: bool | None = None


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> HttpResponse:
    body = json.dumps({"detail": detail}).encode()
    response = HttpResponse(body, status=status, content_type="application/json")
    response["Content-Length"] = str(len(body))
    response["Cache-Control"] = NO_STORE
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def cache_status(answer: Answer, now: float) -> str:
    entry, policy = answer.entry, answer.policy
    parts = [CACHE_NAME]
    if answer.renewed:  # the upstream said 304 to our validators
        parts += [
            "fwd=stale",
            "fwd-status=304",
            "stored" if answer.x_cache == XCache.MISS else "collapsed",
        ]
        return "; ".join(parts)
    if entry is None or answer.x_cache in (XCache.MISS, XCache.COALESCED):
        parts.append("fwd=uri-miss")
        if answer.error is not None:
            parts.append(f"fwd-status={answer.error.fwd_status}")
        elif answer.x_cache == XCache.MISS:
            if entry is not None and entry.status != 200:
                parts.append(f"fwd-status={entry.status}")
            parts.append("stored")
        else:
            parts.append("collapsed")
        return "; ".join(parts)
    parts.append("hit")
    if answer.x_cache == XCache.STALE:
        parts.append("fwd=stale")
        if answer.error is not None:
            parts.append(f"fwd-status={answer.error.fwd_status}")
    if policy is not None:
        parts.append(f"ttl={policy.ttl_seconds(entry, now)}")
    parts.append(f"detail={answer.source}")
    return "; ".join(parts)


def cache_control(policy: Policy | None, *, private: bool = False, negative: bool = False) -> str:
    """The ``Cache-Control`` of an entry served under ``policy``; built once per policy.

    ``stale-while-revalidate`` and ``stale-if-error`` count from the moment
    the answer goes stale (RFC 5861), ours from its fetch: each is ours minus
    the fresh lifetime, so a downstream cache serves stale exactly as long as
    we would. A 404 has no stale window and is never served on error.
    """
    if policy is None:
        return "private, no-cache" if private else "no-cache"
    cached = _cache_controls.get(id(policy))
    if cached is None or cached[0] is not policy:
        if len(_cache_controls) >= _MAX_CACHED_POLICIES:
            _cache_controls.clear()
        cached = _cache_controls[id(policy)] = (policy, {})
    strings = cached[1]
    value = strings.get((private, negative))
    if value is None:
        value = strings[(private, negative)] = _build_cache_control(policy, private, negative)
    return value


def _build_cache_control(policy: Policy, private: bool, negative: bool) -> str:
    scope = "private" if private else "public"
    if negative:
        return f"{scope}, max-age={policy.negative_ms // 1000}"
    fresh = policy.fresh_ms // 1000
    stale = max(0, policy.stale_ms - policy.fresh_ms) // 1000
    on_error = max(0, policy.stale_if_error_ms - policy.fresh_ms) // 1000
    return f"{scope}, max-age={fresh}, stale-while-revalidate={stale}, stale-if-error={on_error}"


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 13.1.2: ``*``, or any listed tag equal to ours by weak comparison."""
    if if_none_match == etag:
        return True  # the usual case: a client sends back the one tag it got
    if if_none_match.strip() == "*":
        return True
    return etag in _ENTITY_TAG.findall(if_none_match)


def not_modified(request: HttpRequest | None, entry: Entry) -> bool:
    """Whether ``request`` asked conditionally and its copy of ``entry`` is current.

    Only a 2xx is answered 304 (RFC 9110 13.2.1): a cached 404 is sent whole.
    A request without ``If-None-Match`` never gets a 304.
    """
    if request is None or entry.status != 200:
        return False
    if_none_match = request.META.get("HTTP_IF_NONE_MATCH")
    return if_none_match is not None and etag_matches(if_none_match, entry.etag)


def build_response(
    answer: Answer, now: float, request: HttpRequest | None = None, *, private: bool = False
) -> HttpResponse:
    """The response to ``request`` (for its method and ``If-None-Match``), or to a plain GET.

    ``private``: no shared cache may keep it (per-caller answers).
    """
    entry = answer.entry
    if entry is None:
        error = answer.error
        status = error.http_status if error is not None else 502
        detail = str(error) if error is not None else "upstream failed"
        headers = {"Cache-Status": cache_status(answer, now)}
        if error is not None and error.retry_after:
            headers["Retry-After"] = str(error.retry_after)
        return error_response(status, detail, headers)
    if not_modified(request, entry):
        response = HttpResponse(status=304)
        # A 304 carries no representation metadata but the validators and
        # caching fields (RFC 9110 15.4.5); no Content-Length either, which
        # RFC 9110 8.6 allows and gevent's pywsgi requires.
        del response["Content-Type"]
        length: tuple[tuple[str, str], ...] = ()
    else:
        if request is not None and request.method == "HEAD":
            # The GET's headers and no body: no server below has to know to drop it.
            response = HttpResponse(status=entry.status, content_type=entry.content_type)
        else:
            response = HttpResponse(
                entry.body, status=entry.status, content_type=entry.content_type
            )
        # On a HEAD too: the length the GET's body has (RFC 9110 8.6).
        length = (("Content-Length", str(len(entry.body))),)
    # The fields below are ours (ASCII, no line breaks): they skip Django's
    # per-header checks, which would cost a hit a microsecond each.
    set_trusted_headers(
        response,
        (
            *length,
            ("ETag", entry.etag),
            (
                "Cache-Control",
                cache_control(answer.policy, private=private, negative=entry.negative),
            ),
            ("X-Cache", str(answer.x_cache)),
            ("Cache-Status", cache_status(answer, now)),
            ("Age", str(max(0, int(now - entry.fetched_at)))),
        ),
    )
    return response


def set_trusted_headers(response: HttpResponse, headers: tuple[tuple[str, str], ...]) -> None:
    """Set header values that need no charset check or encoding: computed by us.

    Writes to Django's header store directly where it is the dict it has
    been since Django 3.2 (checked once, on a real response); else, or for
    a value that is not plain ASCII, through the checked ``response[name]``.
    """
    global _store_usable
    if _store_usable is None:
        _store_usable = _probe_store()
    if not _store_usable:
        for name, value in headers:
            response[name] = value
        return
    store = response.headers._store
    for name, value in headers:
        if value.isascii() and "\n" not in value and "\r" not in value:
            store[name.lower()] = (name, value)
        else:
            response[name] = value


def _probe_store() -> bool:
    probe = HttpResponse()
    store = getattr(probe.headers, "_store", None)
    if not isinstance(store, dict):
        return False
    store["x-probe"] = ("X-Probe", "1")
    return probe.get("x-probe") == "1" and ("X-Probe", "1") in probe.items()
