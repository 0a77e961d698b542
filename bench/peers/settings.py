"""Settings of the peers: the project's settings, another URL module, a Redis cache.

``BENCH_PEER`` names the peer; its module in this package serves ``/products``.
The ``bare`` peers have no middleware at all: they are the framework's floor
that a hit of ours is measured against (issue 13), not a site's full stack.
``BENCH_REDIS_URL`` (not ``REDIS_URL``, so that nothing of the coalescing app
turns on in a peer) is where ``cache_page`` and ``dogpile`` keep their values.
"""

from __future__ import annotations

import os

from coalesce_project.settings import *  # noqa: F403

MODULES = {
    "bare": "bare",
    "bare_asgi": "bare_asgi",
    "naive": "naive",
    "cache_page": "cache_page",
    "dogpile": "dogpile_cache",
}
PEER = os.environ.get("BENCH_PEER", "bare")
if PEER not in MODULES:
    raise ImproperlyConfigured(f"BENCH_PEER must be one of {sorted(MODULES)}, got {PEER!r}")  # noqa: F405
ROOT_URLCONF = f"bench.peers.{MODULES[PEER]}"
WSGI_APPLICATION = "bench.peers.wsgi.application"
if PEER in ("bare", "bare_asgi"):
    MIDDLEWARE: list[str] = []
    # The admin stays installed (the project's apps import it) but has no URL here.
    SILENCED_SYSTEM_CHECKS = ["admin.E408", "admin.E409", "admin.E410"]

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
