"""Every endpoint class by name, for the commands and the admin.

Filled as endpoint classes are defined; the app imports the ``endpoints``
module of every installed app at start-up, as the admin does with ``admin``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .endpoint import CoalescedEndpoint

_endpoints: dict[str, type[CoalescedEndpoint]] = {}


#: What an endpoint name may be: it starts every cache key (``<name>:<key>``),
#: so no ``:``; it is a metrics label and fits ``CacheEntry.endpoint``.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def add(cls: type[CoalescedEndpoint]) -> None:
    if not isinstance(cls.name, str) or not NAME_PATTERN.fullmatch(cls.name):
        raise ValueError(
            f"{cls.__qualname__}.name must be 1 to 64 letters, digits, '_', '.' or '-', "
            f"got {cls.name!r}"
        )
    existing = _endpoints.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"two endpoints are named {cls.name!r}: {existing} and {cls}")
    _endpoints[cls.name] = cls


def get(name: str) -> type[CoalescedEndpoint]:
    """The endpoint class named ``name``; ``KeyError`` naming the known ones if none."""
    try:
        return _endpoints[name]
    except KeyError:
        known = ", ".join(sorted(_endpoints)) or "none"
        raise KeyError(f"unknown endpoint {name!r} (known: {known})") from None


def names() -> list[str]:
    return sorted(_endpoints)


def classes() -> dict[str, type[CoalescedEndpoint]]:
    """Every endpoint class by name (a copy)."""
    return dict(_endpoints)


#: The endpoint instance serving each route ``register`` made, by its url name.
_served: dict[str, CoalescedEndpoint] = {}


def serve(url_name: str, endpoint: CoalescedEndpoint) -> None:
    _served[url_name] = endpoint


def served(url_name: str) -> CoalescedEndpoint | None:
    """The endpoint serving the route named ``url_name``, if ``register`` made it."""
    return _served.get(url_name)
