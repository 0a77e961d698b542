"""Refresh-ahead: a key asked for steadily is refreshed before it goes stale, once per
window across processes."""

from __future__ import annotations

import time
import uuid

import pytest

from coalescing import runtime
from products.endpoints import PriceEndpoint
from tests.conftest import Clock

pytestmark = pytest.mark.django_db(transaction=True)

FRESH_S = 1.0
STEP_S = 0.01
WINDOWS = 5


def _settle(coalescer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(coalescer.flights) and time.monotonic() < deadline:
        time.sleep(0.002)


@pytest.fixture
def two(settings, upstream, redis_url):
    settings.PRODUCT_API_BASE = upstream.url
    settings.COALESCING = {
        "FRESH_TTL_MS": int(FRESH_S * 1000),
        "STALE_TTL_MS": 10_000,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"ahead-{uuid.uuid4().hex[:8]}",
    }
    upstream.delay = 0.1  # the last call's duration sets how early a refresh may come
    runtime.reset()
    clock = Clock()
    first, second = runtime._build(), runtime._build()
    first.clock = second.clock = clock
    yield first, second, clock
    for c in (first, second):
        _settle(c)
        c.close()
    runtime.reset()


def steady_traffic(coalescers, clock, lk) -> list[str]:
    """Both processes ask once every step for WINDOWS fresh windows; their X-Cache."""
    seen = []
    for _ in range(int(WINDOWS * FRESH_S / STEP_S)):
        for c in coalescers:
            seen.append(c.get(lk).x_cache)
            _settle(c)  # a refresh started lands before the clock moves on
        clock.now += STEP_S
    return seen


@pytest.mark.parametrize("ahead", [True, False], ids=["refresh-ahead", "plain"])
def test_steady_traffic_never_sees_stale_and_makes_one_call_per_window(two, upstream, ahead):
    first, second, clock = two
    endpoint = PriceEndpoint()
    endpoint.refresh_ahead = ahead
    lk = endpoint.lookup_query({"productId": ["SKU1"], "region": ["eu"]})
    assert lk.refresh_ahead is ahead
    seen = steady_traffic([first, second], clock, lk)
    assert upstream.count <= WINDOWS + 1  # one call per fresh window, in both processes
    if ahead:
        assert seen.count("STALE") == 0
        assert upstream.count >= WINDOWS  # and the key never went stale
    else:
        assert seen.count("STALE") >= WINDOWS - 1  # what refresh-ahead saves
