"""Invalidation by tag: soft (marked stale everywhere, no cold stampede) and hard."""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from coalescing import operations, runtime
from coalescing.models import CacheEntry
from products.endpoints import PriceEndpoint, ProductEndpoint

pytestmark = pytest.mark.django_db(transaction=True)

KEYS = 100


@pytest.fixture
def shared(settings, upstream, redis_url):
    settings.PRODUCT_API_BASE = upstream.url
    settings.COALESCING = {
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"tags-{uuid.uuid4().hex[:8]}",
        "UPSTREAM_TIMEOUT_MS": 3000,
    }
    runtime.reset()
    yield
    _settle(runtime.get_coalescer())
    runtime.reset()


def _settle(coalescer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(coalescer.flights) and time.monotonic() < deadline:
        time.sleep(0.01)


def price(product: str, region: str = "eu"):
    return PriceEndpoint().lookup_query({"productId": [product], "region": [region]})


def test_the_examples_tag_their_entries():
    lk = ProductEndpoint().lookup_query({"productId": ["SKU1"], "fields": ["name"]})
    assert lk.tags == ("product:SKU1",)
    assert price("SKU1").tags == ("product:SKU1", "region:eu")


def test_a_soft_purge_of_a_hot_tag_under_load_makes_one_call_per_key(shared, upstream):
    coalescer = runtime.get_coalescer()
    lookups = [price(f"P{i}") for i in range(KEYS)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(coalescer.get, lookups))
    other = price("P0", region="us")
    coalescer.get(other)
    coalescer.flush()
    assert upstream.count == KEYS + 1
    upstream.reset()
    upstream.delay = 0.2  # refreshes take a while: the load keeps asking meanwhile
    answers, stop = [], threading.Event()

    def load() -> None:
        rng = random.Random()
        while not stop.is_set():
            answers.append(coalescer.get(rng.choice(lookups)))

    workers = [threading.Thread(target=load) for _ in range(16)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    assert operations.invalidate_tag("region:eu") == KEYS
    # Every key is asked again until each has been refreshed once.
    for lk in lookups:
        coalescer.get(lk)
    deadline = time.monotonic() + 20
    while upstream.count < KEYS and time.monotonic() < deadline:
        time.sleep(0.05)
    _settle(coalescer)
    time.sleep(0.3)
    stop.set()
    for w in workers:
        w.join()
    assert upstream.count == KEYS  # one refresh per key: no stampede
    assert {a.x_cache for a in answers} <= {"HIT", "STALE"}  # never cold, never an error
    assert all(a.entry is not None and a.entry.status == 200 for a in answers)
    assert "STALE" in {a.x_cache for a in answers}
    assert coalescer.get(other).x_cache == "HIT"  # another tag's entry untouched


def test_a_soft_purge_reaches_another_processes_memory(shared, upstream):
    first = runtime.get_coalescer()
    second = runtime._build()
    try:
        lk = price("X1")
        first.get(lk)
        assert second.get(lk).x_cache == "HIT"  # now in its memory too
        operations.invalidate_tag("product:X1")
        deadline = time.monotonic() + 5
        while second.memory.get(lk.key_hash).fetched_at > time.time() - 5 and (
            time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert second.get(lk).x_cache == "STALE"
    finally:
        _settle(second)
        second.close()


def test_a_hard_purge_removes_them_everywhere(shared, upstream):
    coalescer = runtime.get_coalescer()
    lk = price("H1")
    coalescer.get(lk)
    coalescer.flush()
    assert CacheEntry.objects.filter(pk=lk.key_hash).exists()
    call_command("invalidate", "--tag", "product:H1", "--hard")
    assert coalescer.memory.get(lk.key_hash) is None
    assert coalescer.guard("redis").tier.get(lk.key_hash, lk.name) is None
    assert not CacheEntry.objects.filter(pk=lk.key_hash).exists()
    assert coalescer.get(lk).x_cache == "MISS"


def test_the_command_and_the_admin_act_on_tags(shared, upstream, capsys):
    coalescer = runtime.get_coalescer()
    for product in ("A1", "A2"):
        coalescer.get(price(product))
    coalescer.flush()
    call_command("invalidate", "--tag", "region:eu")
    assert "Marked stale 2 cache entries tagged region:eu." in capsys.readouterr().out
    with pytest.raises(Exception, match="a tag is"):
        call_command("invalidate", "--tag", "no spaces")
    coalescer.get(price("A3"))
    coalescer.flush()
    client = Client()
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw"))
    (key_hash,) = CacheEntry.objects.filter(name="eu", key__endswith="A3").values_list(
        "pk", flat=True
    )
    response = client.post(
        "/admin/coalescing/cacheentry/",
        {"action": "soft_purge_tags", "_selected_action": [key_hash]},
        follow=True,
    )
    assert "Marked stale, by tag: product:A3: 1, region:eu: 3." in response.content.decode()
    assert coalescer.get(price("A3")).x_cache == "STALE"
