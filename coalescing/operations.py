"""Invalidate or refresh entries from code, the admin or a command.

By endpoint and parameters, as a client would ask::

    from coalescing import operations
    operations.invalidate("products", productId="SKU123", fields="name,price")
    operations.refresh("products", productId="SKU123")

by tag (``operations.invalidate_tag("product:SKU123")``: soft, marked stale
everywhere; ``soft=False``: removed), or by the stored key hash (what the
admin has). Invalidation removes the
entry from every tier of this process, and from the memory tier of every
process that shares the Redis.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import registry
from .entry import check_tags
from .errors import BadRequest
from .policies import current_policies
from .reads import Answer, Lookup
from .runtime import get_coalescer

__all__ = ["invalidate", "invalidate_key", "invalidate_tag", "refresh", "refresh_key"]


def _lookup(endpoint: str, params: dict[str, str | Sequence[str]]) -> Lookup:
    query = {k: [v] if isinstance(v, str) else list(v) for k, v in params.items()}
    return registry.get(endpoint)().lookup_query(query)


def invalidate(endpoint: str, **params: str | Sequence[str]) -> str:
    """Remove the entry of these parameters everywhere; returns its key hash.

    Raises :class:`~coalescing.errors.BadRequest` for parameters the endpoint
    refuses, and ``KeyError`` for an unknown endpoint.
    """
    lk = _lookup(endpoint, params)
    get_coalescer().invalidate(lk.key_hash, lk.name)
    return lk.key_hash


def refresh(endpoint: str, **params: str | Sequence[str]) -> Answer:
    """Call the upstream now for these parameters (coalesced) and store the answer."""
    return get_coalescer().refresh_now(_lookup(endpoint, params))


def invalidate_tag(tag: str, soft: bool = True) -> int:
    """Every entry labelled ``tag``, in every tier and process; how many keys.

    ``soft`` (the default) marks them stale: each is served while one refresh
    runs, so a popular tag is not followed by a cold stampede (Fastly's soft
    purge). ``soft=False`` removes them.
    """
    check_tags([tag])
    return get_coalescer().invalidate_tag(tag, current_policies().of, soft=soft)


def invalidate_key(key_hash: str, name: str | None = None) -> None:
    """Remove an entry by its key hash; give its single-flight ``name`` when known
    (the Redis key depends on it); otherwise it is read from the entry."""
    coalescer = get_coalescer()
    if name is None:
        entry = coalescer.peek(key_hash)
        name = entry.name if entry is not None else ""
    coalescer.invalidate(key_hash, name)


def refresh_key(key_hash: str) -> Answer | None:
    """Refresh a stored entry by its key hash; ``None`` if no tier holds it or it
    keeps no parameters (made before they were kept, or too long to keep).

    The upstream request is built again by the endpoint from the entry's
    parameters, with the settings in force now.
    """
    coalescer = get_coalescer()
    entry = coalescer.peek(key_hash)
    if entry is None or not entry.params:
        return None
    try:
        lookup = registry.get(entry.endpoint)().lookup_stored(entry.params)
    except (BadRequest, KeyError):
        return None
    return coalescer.refresh_now(lookup)
