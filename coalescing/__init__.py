"""Request coalescing and a multi-tier stale-while-revalidate cache for Django.

The names a site uses are here, and in the documented modules, each with
its ``__all__``: ``coalescing.params`` (helpers for a hand-written
``parse``), ``coalescing.operations`` (invalidate and refresh from code),
``coalescing.conf`` (``from_environ``), ``coalescing.urls`` (``/metrics``),
``coalescing.asgi``, ``coalescing.wsgi``, ``coalescing.middleware`` and
``coalescing.gunicorn`` (serving). Every other module is private.

The exceptions are all in :mod:`coalescing.errors` (its docstring draws
the tree) and exported here.
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
    "CallFailed": ".errors",
    "CoalescedEndpoint": ".endpoint",
    "UpstreamBadBody": ".errors",
    "UpstreamBadStatus": ".errors",
    "UpstreamError": ".errors",
    "UpstreamHeldBack": ".errors",
    "UpstreamOverloaded": ".errors",
    "UpstreamRequest": ".upstream",
    "UpstreamTimeout": ".errors",
    "UpstreamUnavailable": ".errors",
    "coalesced": ".functions",
}
__all__ = [
    "BadRequest",
    "CallFailed",
    "CoalescedEndpoint",
    "UpstreamBadBody",
    "UpstreamBadStatus",
    "UpstreamError",
    "UpstreamHeldBack",
    "UpstreamOverloaded",
    "UpstreamRequest",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "coalesced",
]
assert set(__all__) == set(_EXPORTS)

if TYPE_CHECKING:
    from .endpoint import CoalescedEndpoint
    from .errors import (
        BadRequest,
        CallFailed,
        UpstreamBadBody,
        UpstreamBadStatus,
        UpstreamError,
        UpstreamHeldBack,
        UpstreamOverloaded,
        UpstreamTimeout,
        UpstreamUnavailable,
    )
    from .functions import coalesced
    from .upstream import UpstreamRequest


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'coalescing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
