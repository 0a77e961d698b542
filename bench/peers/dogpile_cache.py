"""``dogpile``: dogpile.cache on Redis, its distributed lock, a background creation runner.

Configured as its documentation describes for this job: ``distributed_lock``
(one creator across processes), ``thread_local_lock=False`` (the lock is
released by the runner's thread, a greenlet under gevent), values kept in
Redis for the stale window so that an expired value is served while the
runner refreshes it, and a blocking connection pool so that a burst waits for
a connection instead of failing. The lock is redis-py's, which polls every
``lock_sleep`` (0.1 s by default) while another holds it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path
from dogpile.cache import make_region
from ninja import NinjaAPI

from .common import UpstreamFailed, bad_request, fetch, health, json_response, params


def run_in_background(cache: Any, key: str, creator: Callable[[], Any], mutex: Any) -> None:
    """dogpile's async creation runner: refresh in a thread, release the lock after."""

    def refresh() -> None:
        try:
            cache.set(key, creator())
        except UpstreamFailed:
            pass  # keep the stale value; the next request after expiry tries again
        finally:
            mutex.release()

    threading.Thread(target=refresh, daemon=True).start()


region = make_region(async_creation_runner=run_in_background).configure(
    "dogpile.cache.redis",
    expiration_time=settings.BENCH_FRESH_S,
    arguments={
        "connection_pool": redis.BlockingConnectionPool.from_url(
            settings.BENCH_REDIS_URL, max_connections=256, timeout=20
        ),
        "distributed_lock": True,
        "thread_local_lock": False,
        "lock_timeout": 10,
        "redis_expiration_time": max(1, round(settings.BENCH_STALE_S)),
    },
)

api = NinjaAPI(title="dogpile", urls_namespace="dogpile")


@api.get("/products")
def products(request: HttpRequest) -> HttpResponse:
    parsed = params(request)
    if parsed is None:
        return bad_request("bad parameters")
    product_id, fields = parsed

    def create() -> tuple[int, bytes]:
        return fetch(product_id, fields)

    try:
        status, body = region.get_or_create(f"bench-dogpile:{product_id}:{fields}", create)
    except UpstreamFailed:
        return json_response(b'{"detail":"upstream failed"}', 502)
    return json_response(body, status)


urlpatterns = [path("health", health), path("", api.urls)]
