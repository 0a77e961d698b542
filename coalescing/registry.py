"""Every endpoint class by name, for the commands and the admin.

Filled as endpoint classes are defined; the app imports the ``endpoints``
module of every installed app at start-up, as the admin does with ``admin``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .endpoint import CoalescedEndpoint

_endpoints: dict[str, type[CoalescedEndpoint]] = {}


def add(cls: type[CoalescedEndpoint]) -> None:
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
