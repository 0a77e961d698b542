"""The process-wide objects: one coalescer with its tiers and upstream client.

Built on first use from the settings in force, and built again when the
``COALESCING`` setting changes (tests). Forked workers build their own,
since nothing is built at import time.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.signals import setting_changed
from django.db import connections
from django.dispatch import receiver

from .coalescer import WAIT_MARGIN_S, Coalescer
from .conf import CoalescingSettings, get_settings
from .policies import current_policies
from .reads import CrossProcessFlight
from .tiers.memory import MemoryTier
from .upstream import UpstreamClient

_lock = threading.Lock()
_coalescer: Coalescer | None = None


def get_coalescer() -> Coalescer:
    global _coalescer
    coalescer = _coalescer
    if coalescer is None:
        with _lock:
            if _coalescer is None:
                _coalescer = _build()
            coalescer = _coalescer
    return coalescer


def _build() -> Coalescer:
    from .tiers.database import DatabaseTier  # imports models: only once apps are ready

    conf = get_settings()
    memory = MemoryTier(conf.memory_cache_max_bytes)
    redis_tier = listener = None
    if conf.redis_enabled:
        from .tiers.redis import RedisTier

        client, listener = _redis_clients(conf)
        redis_tier = RedisTier(client, prefix=conf.redis_prefix)
    lower = [
        t
        for t in (
            redis_tier,
            DatabaseTier.from_settings(conf),
        )
        if t is not None
    ]
    built: list[Coalescer] = []  # for the flight's tag messages, once it exists
    distributed = None
    if redis_tier is not None:
        distributed = _distributed(conf, memory, redis_tier, listener, built)
    coalescer = Coalescer(
        memory,
        lower,
        UpstreamClient(),
        upstream_timeout=conf.upstream_timeout,
        max_bytes=conf.upstream_max_bytes,
        max_concurrency=conf.upstream_max_concurrency,
        distributed=distributed,
        after_flight=close_thread_connections,
    )
    built.append(coalescer)
    return coalescer


def _redis_client(url: str, socket_timeout: float | None) -> Any:
    import redis

    # A blocking pool waits for a free connection (bounded) instead of raising
    # when a stampede exhausts it; timeouts are short: Redis is an optimisation.
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=1.0,
        socket_timeout=socket_timeout,
        socket_connect_timeout=0.5,
    )
    return redis.Redis(connection_pool=pool)


def _redis_clients(conf: CoalescingSettings) -> tuple[Any, Any]:
    """The client for commands, and one for pub/sub (whose reads block: no socket timeout).

    With ``REDIS_CACHE`` the commands go through the django-redis cache's own
    client and pool, as the site configured them; the pub/sub connection is
    made with the same connection options.
    """
    if not conf.redis_cache:
        return _redis_client(conf.redis_url, 0.5), _redis_client(conf.redis_url, None)
    import redis
    from django_redis import get_redis_connection

    client = get_redis_connection(conf.redis_cache)
    pool = client.connection_pool
    options = {**pool.connection_kwargs, "socket_timeout": None}
    listener_pool = redis.ConnectionPool(connection_class=pool.connection_class, **options)
    return client, redis.Redis(connection_pool=listener_pool)


def _distributed(
    conf: CoalescingSettings,
    memory: MemoryTier,
    tier: Any,
    listener: Any,
    built: list[Coalescer],
) -> CrossProcessFlight:
    """The cross-process flight on ``tier``'s Redis, for the coalescer that
    ``built`` will hold (a tag message from another process applies there;
    before it exists, nothing has been served to mark)."""
    from .distributed import DistributedFlight
    from .lease import Leases, Notifier

    notifier = Notifier(
        tier.client,
        listener,
        channel=f"{conf.redis_prefix}:events",
        on_evict=lambda key_hash, name: memory.delete(key_hash),
        on_tag=lambda tag, soft: [
            c.purge_tag_in_memory(tag, current_policies().of, soft=soft) for c in built
        ],
    )
    notifier.start()  # evictions must reach this process from now on
    return DistributedFlight(
        tier,
        Leases(tier.client, ttl_ms=2000),
        notifier,
        tier.health,
        wait_s=conf.upstream_timeout + WAIT_MARGIN_S,
    )


def close_thread_connections() -> None:
    """Close the database connections this flight's thread opened.

    Each flight runs in a thread (a greenlet under gevent) of its own, and
    Django's connections are per thread: left open, each would leak.
    """
    if threading.current_thread() is threading.main_thread():
        return
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close()


def reset() -> None:
    """Drop the coalescer (after writing out its buffers); the next use builds anew."""
    global _coalescer
    with _lock:
        old, _coalescer = _coalescer, None
    if old is not None:
        old.close()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("COALESCING", "DATABASES"):
        reset()
