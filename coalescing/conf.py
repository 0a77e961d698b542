"""The app's settings: one typed object, defaults in one place.

A project configures the app with a ``COALESCING`` dict in its Django settings,
whose keys are the environment variable names of the README's settings table
(``FRESH_TTL_MS``...). :func:`from_environ` builds that dict from the process
environment, so ``settings.py`` is one line and every bad value is reported
with the name of the variable that holds it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = ["from_environ"]

#: name -> (default, minimum). Integers are milliseconds (_MS), bytes (_BYTES) or counts.
INT_SETTINGS: dict[str, tuple[int, int]] = {
    "FRESH_TTL_MS": (10_000, 0),
    "STALE_TTL_MS": (60_000, 0),
    "STALE_IF_ERROR_MS": (300_000, 0),
    "NEGATIVE_TTL_MS": (5_000, 0),
    "UPSTREAM_TIMEOUT_MS": (5_000, 1),
    "UPSTREAM_MAX_BYTES": (1_048_576, 1),
    "MEMORY_CACHE_MAX_BYTES": (67_108_864, 0),
    # Upstream calls at once per process; 0: no cap.
    "UPSTREAM_MAX_CONCURRENCY": (100, 0),
    # Bound of one read of the persistent tier: a database slower than this
    # is a miss, so that a hung database cannot hold cold requests (gevent).
    "DATABASE_TIMEOUT_MS": (500, 1),
    # Bound of the persistent tier's size (rows, indexes and free pages);
    # past it the oldest entries are dropped. 0: no bound.
    "DATABASE_MAX_BYTES": (1_073_741_824, 0),
    # ``manage.py serve``: the request line and headers must arrive within
    # this from accept (or from the first byte on a keep-alive connection).
    "SERVE_HEADER_TIMEOUT_MS": (10_000, 1),
    # ``manage.py serve``: open connections at most; past it they wait to be
    # accepted (and the keep-alive connection idle the longest is closed).
    "SERVE_MAX_CONNECTIONS": (1000, 1),
}
STR_SETTINGS: dict[str, str] = {
    "REDIS_URL": "",
    # A ``CACHES`` alias configured with django-redis: the site's own Redis
    # set-up (Sentinel, TLS, pool options) is used as it is. Wins over REDIS_URL.
    "REDIS_CACHE": "",
    # The database alias of the persistent tier.
    "DATABASE_ALIAS": "default",
    # Prefix of every Redis key and channel: several sites can share a Redis.
    "REDIS_PREFIX": "coalescing",
}


@dataclasses.dataclass(frozen=True, slots=True)
class CoalescingSettings:
    fresh_ttl_ms: int
    stale_ttl_ms: int
    stale_if_error_ms: int
    negative_ttl_ms: int
    upstream_timeout_ms: int
    upstream_max_bytes: int
    memory_cache_max_bytes: int
    upstream_max_concurrency: int
    database_timeout_ms: int
    database_max_bytes: int
    serve_header_timeout_ms: int
    serve_max_connections: int
    redis_url: str
    redis_cache: str
    database_alias: str
    redis_prefix: str

    @property
    def redis_enabled(self) -> bool:
        return bool(self.redis_cache or self.redis_url)

    @property
    def upstream_timeout(self) -> float:
        return self.upstream_timeout_ms / 1000.0


def _parse_int(name: str, raw: Any) -> int:
    default, minimum = INT_SETTINGS[name]
    if isinstance(raw, bool):
        raise ImproperlyConfigured(f"{name} must be a whole number, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    else:
        text = str(raw).strip().replace("_", "")
        if not text.isdigit():
            raise ImproperlyConfigured(f"{name} must be a whole number{_unit(name)}, got {raw!r}")
        value = int(text)
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def _unit(name: str) -> str:
    if name.endswith("_BYTES"):
        return " of bytes"
    return " of ms" if name.endswith("_MS") else ""


def build(values: Mapping[str, Any]) -> CoalescingSettings:
    """Validate a ``COALESCING`` mapping and fill in the defaults."""
    unknown = set(values) - set(INT_SETTINGS) - set(STR_SETTINGS)
    if unknown:
        raise ImproperlyConfigured(f"COALESCING has unknown keys: {', '.join(sorted(unknown))}")
    ints = {
        name: _parse_int(name, values[name]) if name in values else default
        for name, (default, _) in INT_SETTINGS.items()
    }
    strs = {name: str(values.get(name) or default) for name, default in STR_SETTINGS.items()}
    if ints["STALE_TTL_MS"] < ints["FRESH_TTL_MS"]:
        raise ImproperlyConfigured(
            f"STALE_TTL_MS ({ints['STALE_TTL_MS']}) must be >= FRESH_TTL_MS "
            f"({ints['FRESH_TTL_MS']})"
        )
    fields = {k.lower(): v for k, v in {**ints, **strs}.items()}
    return CoalescingSettings(**fields)


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``COALESCING`` dict from environment variables, validated now.

    Validating here (not at first use) makes every ``manage.py`` command fail
    at start-up with the name of the bad variable.
    """
    values: dict[str, Any] = {
        name: environ[name]
        for name in (*INT_SETTINGS, "REDIS_URL", "REDIS_CACHE", "REDIS_PREFIX")
        if environ.get(name, "") != ""
    }
    build(values)
    return values


@lru_cache(maxsize=1)
def get_settings() -> CoalescingSettings:
    from django.conf import settings

    return build(getattr(settings, "COALESCING", {}))


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "COALESCING":
        get_settings.cache_clear()
