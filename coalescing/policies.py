"""The windows of every endpoint, from the settings and the endpoints' overrides.

One rule (:func:`policy_of`) makes a :class:`~coalescing.entry.Policy` from
the settings and an endpoint's own ``*_ttl_ms``; one object
(:class:`Policies`) holds them all for the code that deals with many
endpoints at once: the storage layer's state conditions (the admin's filter,
``purge_stale``), the admin's badges, tag invalidation. The storage layer is
handed a :class:`Policies` and never builds an endpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from . import registry
from .conf import CoalescingSettings, get_settings
from .entry import Policy


def policy_of(conf: CoalescingSettings, overrides: Any = None) -> Policy:
    """The windows of ``overrides`` (anything with ``fresh_ttl_ms``, ``stale_ttl_ms``,
    ``stale_if_error_ms``, ``negative_ttl_ms``; ``None`` for each: the setting).

    The stale window never ends before the fresh one.
    """

    def pick(field: str, default: int) -> int:
        value = getattr(overrides, field, None)
        return default if value is None else value

    fresh = pick("fresh_ttl_ms", conf.fresh_ttl_ms)
    return Policy(
        fresh_ms=fresh,
        stale_ms=max(fresh, pick("stale_ttl_ms", conf.stale_ttl_ms)),
        stale_if_error_ms=pick("stale_if_error_ms", conf.stale_if_error_ms),
        negative_ms=pick("negative_ttl_ms", conf.negative_ttl_ms),
    )


@dataclasses.dataclass(frozen=True)
class Group:
    """Rows that share one policy: those of ``endpoints``, or (``endpoints`` is
    ``None``) every endpoint but those of ``others``."""

    endpoints: tuple[str, ...] | None
    others: tuple[str, ...]
    policy: Policy


@dataclasses.dataclass(frozen=True)
class Policies:
    """The policy of every registered endpoint, and the settings' for the rest
    (rows of endpoints no longer registered)."""

    default: Policy
    by_endpoint: Mapping[str, Policy]

    @classmethod
    def build(cls, conf: CoalescingSettings, endpoints: Mapping[str, Any]) -> Policies:
        """From the settings and endpoint classes by name."""
        return cls(policy_of(conf), {name: policy_of(conf, e) for name, e in endpoints.items()})

    def of(self, endpoint: str) -> Policy:
        return self.by_endpoint.get(endpoint, self.default)

    def groups(self, endpoint: str | None = None) -> list[Group]:
        """The rows partitioned by the policy that applies to them.

        Endpoints whose windows are the settings' fall into one group with every
        unregistered endpoint, so that with no per-endpoint overrides a state
        condition says nothing of ``endpoint`` and uses the age index. With
        ``endpoint``, that endpoint's rows only (``KeyError`` if it is unknown).
        """
        if endpoint is not None:
            if endpoint not in self.by_endpoint:
                known = ", ".join(sorted(self.by_endpoint)) or "none"
                raise KeyError(f"unknown endpoint {endpoint!r} (known: {known})")
            return [Group((endpoint,), (), self.by_endpoint[endpoint])]
        special: dict[Policy, list[str]] = {}
        for name, policy in sorted(self.by_endpoint.items()):
            if policy != self.default:
                special.setdefault(policy, []).append(name)
        groups = [Group(tuple(names), (), policy) for policy, names in special.items()]
        overridden = tuple(name for names in special.values() for name in names)
        groups.append(Group(None, overridden, self.default))
        return groups


_current: tuple[CoalescingSettings, dict[str, Any], Policies] | None = None


def current_policies() -> Policies:
    """The policies of the settings in force and the endpoints registered now
    (built again when either changed)."""
    global _current
    conf, endpoints = get_settings(), registry.classes()
    cached = _current
    if cached is not None and cached[0] is conf and cached[1] == endpoints:
        return cached[2]
    policies = Policies.build(conf, endpoints)
    _current = (conf, endpoints, policies)
    return policies
