"""Turns an :class:`~coalescing.coalescer.Answer` into an HTTP response.

Every 200 and 404 carries ``X-Cache``, ``Cache-Status`` (RFC 9211) and ``Age``;
a 502 or 504 carries ``Cache-Status`` with ``fwd`` and ``fwd-status``.
"""

from __future__ import annotations

import json

from django.http import HttpResponse

from .coalescer import Answer

CACHE_NAME = "coalescing"


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> HttpResponse:
    body = json.dumps({"detail": detail}).encode()
    response = HttpResponse(body, status=status, content_type="application/json")
    response["Content-Length"] = str(len(body))
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def cache_status(answer: Answer, now: float) -> str:
    entry, policy = answer.entry, answer.policy
    parts = [CACHE_NAME]
    if entry is None or answer.x_cache in ("MISS", "COALESCED"):
        parts.append("fwd=uri-miss")
        if answer.error is not None:
            parts.append(f"fwd-status={answer.error.fwd_status}")
        elif answer.x_cache == "MISS":
            if entry is not None and entry.status != 200:
                parts.append(f"fwd-status={entry.status}")
            parts.append("stored")
        else:
            parts.append("collapsed")
        return "; ".join(parts)
    parts.append("hit")
    if answer.x_cache == "STALE":
        parts.append("fwd=stale")
        if answer.error is not None:
            parts.append(f"fwd-status={answer.error.fwd_status}")
    if policy is not None:
        parts.append(f"ttl={policy.ttl_seconds(entry, now)}")
    parts.append(f"detail={answer.source}")
    return "; ".join(parts)


def build_response(answer: Answer, now: float) -> HttpResponse:
    entry = answer.entry
    if entry is None:
        error = answer.error
        status = error.http_status if error is not None else 502
        detail = str(error) if error is not None else "upstream failed"
        headers = {"Cache-Status": cache_status(answer, now)}
        if error is not None and error.retry_after:
            headers["Retry-After"] = str(error.retry_after)
        return error_response(status, detail, headers)
    response = HttpResponse(entry.body, status=entry.status, content_type=entry.content_type)
    response["Content-Length"] = str(len(entry.body))
    response["X-Cache"] = answer.x_cache
    response["Cache-Status"] = cache_status(answer, now)
    response["Age"] = str(max(0, int(now - entry.fetched_at)))
    return response
