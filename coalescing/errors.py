"""Every exception the package raises to its users, in one place.

::

    BadRequest                 invalid parameters: the client's 400 with {"detail": ...}
    UpstreamError              a failed upstream call: never stored, 502 to the client
    ├── UpstreamTimeout        the budget ran out (connect + read): 504
    ├── UpstreamUnavailable    connection refused, reset, DNS...
    ├── UpstreamBadStatus      a status other than 200 or 404 (5xx, 429, redirects...)
    ├── UpstreamBadBody        over the size cap, or not what the endpoint accepts
    ├── UpstreamOverloaded     UPSTREAM_MAX_CONCURRENCY calls in flight already: 503
    ├── UpstreamHeldBack       the key's last call failed moments ago: no new call yet
    └── CallFailed             a @coalesced function raised, with no stale value left

An ``UpstreamError`` that reaches a client is answered with its
``http_status`` and, when it has one, a ``Retry-After`` of ``retry_after``
seconds; a stale value is served instead whenever ``STALE_IF_ERROR_MS`` allows.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "CallFailed",
    "UpstreamBadBody",
    "UpstreamBadStatus",
    "UpstreamError",
    "UpstreamHeldBack",
    "UpstreamOverloaded",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class BadRequest(Exception):
    """Invalid parameters: answered 400 with ``{"detail": message}``."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UpstreamError(Exception):
    http_status = 502  # what the client gets when no stale value can be served
    retry_after: int | None = None  # seconds, for a ``Retry-After`` header

    def __init__(self, message: str, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status

    @property
    def fwd_status(self) -> int:
        """RFC 9211 ``fwd-status``: the upstream's status, or ours when it gave none."""
        return self.upstream_status or self.http_status


class UpstreamTimeout(UpstreamError):
    http_status = 504


class UpstreamUnavailable(UpstreamError):
    pass


class UpstreamBadStatus(UpstreamError):
    pass


class UpstreamBadBody(UpstreamError):
    pass


class UpstreamOverloaded(UpstreamError):
    http_status = 503


class UpstreamHeldBack(UpstreamError):
    """The key's last upstream call failed moments ago; no new call yet."""


class CallFailed(UpstreamError):
    """The function raised (or returned what cannot be stored) and no stale value was left."""
