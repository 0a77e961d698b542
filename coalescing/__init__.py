"""Request coalescing and a multi-tier stale-while-revalidate cache for Django.

The public names are here; the modules behind them are private.
"""

from .endpoint import CoalescedEndpoint
from .errors import BadRequest
from .upstream import UpstreamRequest

__all__ = ["BadRequest", "CoalescedEndpoint", "UpstreamRequest"]
