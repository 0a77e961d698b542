"""Settings of the peers: the project's settings, another URL module, a Redis cache.

``BENCH_PEER`` names the peer; its module in this package serves ``/products``.
``BENCH_REDIS_URL`` (not ``REDIS_URL``, so that nothing of the coalescing app
turns on in a peer) is where ``cache_page`` and ``dogpile`` keep their values.
"""

from __future__ import annotations

import os

from coalesce_project.settings import *  # noqa: F403

MODULES = {
    "bare": "bare",
    "naive": "naive",
    "cache_page": "cache_page",
    "dogpile": "dogpile_cache",
}
PEER = os.environ.get("BENCH_PEER", "bare")
if PEER not in MODULES:
    raise ImproperlyConfigured(f"BENCH_PEER must be one of {sorted(MODULES)}, got {PEER!r}")  # noqa: F405
ROOT_URLCONF = f"bench.peers.{MODULES[PEER]}"

BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
#: How long a value is fresh, and how long it may be served stale (dogpile only:
#: cache_page has no stale window), from the same variables as our server.
BENCH_FRESH_S = int(os.environ.get("FRESH_TTL_MS", "10000")) / 1000.0
BENCH_STALE_S = int(os.environ.get("STALE_TTL_MS", "60000")) / 1000.0

# django-redis, as its documentation suggests for many concurrent clients: a
# blocking pool, so a burst waits for a connection instead of failing.
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": BENCH_REDIS_URL,
        "KEY_PREFIX": "bench-cache-page",
        "OPTIONS": {
            "CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool",
            "CONNECTION_POOL_KWARGS": {"max_connections": 256, "timeout": 20},
        },
    }
}
