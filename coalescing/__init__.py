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
