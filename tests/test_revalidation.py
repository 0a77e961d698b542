"""Revalidation towards the upstream: validators kept, conditional refreshes, 304 renewals."""

from __future__ import annotations

import time
import uuid

import pytest
from django.test import Client

from coalescing import runtime
from coalescing.metrics import registry_in_force
from coalescing.models import CacheEntry
from products.endpoints import ProductEndpoint
from testkit.servers import parse_cache_status
from tests.conftest import Clock

pytestmark = pytest.mark.django_db(transaction=True)

FRESH_S, STALE_S = 10, 60


@pytest.fixture
def two(settings, upstream, redis_url):
    """Two coalescers sharing Redis and the database, as two processes, on one clock."""
    settings.PRODUCT_API_BASE = upstream.url
    settings.COALESCING = {
        "FRESH_TTL_MS": FRESH_S * 1000,
        "STALE_TTL_MS": STALE_S * 1000,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"reval-{uuid.uuid4().hex[:8]}",
    }
    upstream.mode = "etag"
    runtime.reset()
    clock = Clock()
    first, second = runtime._build(), runtime._build()
    first.clock = second.clock = clock
    yield first, second, clock
    for c in (first, second):
        _settle(c)
        c.close()
    runtime.reset()


def _settle(coalescer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(coalescer.flights) and time.monotonic() < deadline:
        time.sleep(0.01)


def lookup(product: str = "SKU1"):
    return ProductEndpoint().lookup_query({"productId": [product]})


def test_a_refresh_asks_if_changed_and_a_304_renews_every_tier(two, upstream):
    first, second, clock = two
    lk = lookup()
    made = first.get(lk)
    assert made.x_cache == "MISS"
    assert made.entry.upstream_etag.startswith('"')
    assert made.entry.upstream_modified
    clock.now += FRESH_S + 5  # stale: served, and one refresh
    assert first.get(lk).x_cache == "STALE"
    _settle(first)
    assert upstream.count == 2
    conditional = upstream.calls[1]["headers"]
    assert conditional["If-None-Match"] == made.entry.upstream_etag
    assert conditional["If-Modified-Since"] == made.entry.upstream_modified
    assert upstream.not_modified == 1  # answered 304: no body came back
    renewed_at = clock.now
    # Memory, Redis and the database all hold the renewed entry, the same body.
    for_memory = first.memory.get(lk.key_hash)
    assert for_memory.fetched_at == pytest.approx(renewed_at, abs=0.01)
    assert for_memory.body == made.entry.body
    redis_tier = first.guard("redis").tier
    assert redis_tier.get(lk.key_hash, lk.name).fetched_at == pytest.approx(renewed_at, abs=0.01)
    first.flush()
    row = CacheEntry.objects.get(pk=lk.key_hash)
    assert row.fetched_at_ms == round(renewed_at * 1000)
    assert bytes(row.body) == made.entry.body
    # Another process sees the new age: fresh, no call of its own.
    seen = second.get(lk)
    assert seen.x_cache == "HIT" and seen.source == "redis"
    assert upstream.count == 2
    text = _metrics()
    assert 'coalescing_upstream_calls_total{endpoint="products",status="304"} 1.0' in text


def test_a_changed_body_is_fetched_whole(two, upstream):
    first, _, clock = two
    lk = lookup("SKU2")
    old = first.get(lk).entry
    upstream.version = 2
    clock.now += FRESH_S + 5
    first.get(lk)
    _settle(first)
    new = first.memory.get(lk.key_hash)
    assert new.body != old.body and b'"version": 2' in new.body
    assert new.upstream_etag != old.upstream_etag
    assert upstream.not_modified == 0


def test_the_request_that_sees_the_304_says_so(settings, upstream):
    """An entry past its stale window is fetched in the foreground, conditionally."""
    settings.PRODUCT_API_BASE = upstream.url
    settings.COALESCING = {"FRESH_TTL_MS": FRESH_S * 1000, "STALE_TTL_MS": STALE_S * 1000}
    upstream.mode = "etag"
    runtime.reset()
    clock = Clock()
    runtime.get_coalescer().clock = clock
    try:
        client = Client()
        assert client.get("/products", {"productId": "SKU3"})["X-Cache"] == "MISS"
        clock.now += STALE_S + 5
        answer = client.get("/products", {"productId": "SKU3"})
        status = parse_cache_status(answer["Cache-Status"])
        assert answer["X-Cache"] == "MISS"
        assert status["fwd"] == "stale" and status["fwd-status"] == "304"
        assert answer["Age"] == "0"
        assert upstream.not_modified == 1
    finally:
        _settle(runtime.get_coalescer())
        runtime.reset()


def _metrics() -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry_in_force()).decode()
