"""Request coalescing and a multi-tier stale-while-revalidate cache for Django.

The names a site uses are here (and in the documented modules
``coalescing.params``, ``coalescing.operations``, ``coalescing.asgi``,
``coalescing.wsgi`` and ``coalescing.gunicorn``); every other module is
private.

Errors::

    BadRequest                 invalid parameters: the client's 400
    UpstreamError              a failed upstream call: never stored, 502 to the client
    ├── UpstreamTimeout        the budget ran out: 504
    ├── UpstreamUnavailable    connection refused, reset, DNS...
    ├── UpstreamBadStatus      a status other than 200 or 404
    ├── UpstreamBadBody        over the size cap, or not what the endpoint accepts
    └── CallFailed             a @coalesced function raised, with no stale value left
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The names are loaded on first use, not when the package is imported:
# ``coalescing.conf`` is imported by settings files, and ``coalescing.gunicorn``
# by gunicorn's master before its gevent workers patch, and neither must
# bring in the HTTP client, threads and locks with it.
_EXPORTS = {
    "BadRequest": ".errors",
    "CallFailed": ".functions",
    "CoalescedEndpoint": ".endpoint",
    "UpstreamBadBody": ".upstream",
    "UpstreamBadStatus": ".upstream",
    "UpstreamError": ".upstream",
    "UpstreamRequest": ".upstream",
    "UpstreamTimeout": ".upstream",
    "UpstreamUnavailable": ".upstream",
    "coalesced": ".functions",
}
__all__ = [
    "BadRequest",
    "CallFailed",
    "CoalescedEndpoint",
    "UpstreamBadBody",
    "UpstreamBadStatus",
    "UpstreamError",
    "UpstreamRequest",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "coalesced",
]
assert set(__all__) == set(_EXPORTS)

if TYPE_CHECKING:
    from .endpoint import CoalescedEndpoint
    from .errors import BadRequest
    from .functions import CallFailed, coalesced
    from .upstream import (
        UpstreamBadBody,
        UpstreamBadStatus,
        UpstreamError,
        UpstreamRequest,
        UpstreamTimeout,
        UpstreamUnavailable,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'coalescing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
