"""The Redis tier, the leases, and cross-process coalescing between two
coalescers in one test process (each with its own memory tier and Redis
clients, as two processes would have). All against a real Redis."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from coalescing import runtime
from coalescing.lease import Leases
from coalescing.tiers.redis import RedisTier, tag
from products.endpoints import ProductEndpoint
from tests.conftest import make_entry

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client(redis_url):
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def prefix(client):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    yield prefix
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def test_round_trip_and_expiry_at_the_end_of_the_last_window(client, prefix):
    tier = RedisTier(client, prefix)
    now = time.time()
    tier.set(make_entry(key_hash="h1", fetched_at=now, body=bytes(range(256))), lifetime_ms=60_000)
    got = tier.get("h1", "SKU1")
    assert got.body == bytes(range(256)) and got.name == "SKU1"
    ttl = client.pttl(tier.entry_key("h1", "SKU1"))
    assert 58_000 < ttl <= 60_000
    tier.set(
        make_entry(key_hash="h1", fetched_at=now - 100, body=b"[old]"), lifetime_ms=50
    )  # already dead: not stored
    assert tier.get("h1", "SKU1").body == bytes(range(256))


def test_keys_of_one_name_share_a_hash_tag(client, prefix):
    tier = RedisTier(client, prefix)
    assert tier.entry_key("a", "SKU1").split(":")[1] == tier.lease_key("b", "SKU1").split(":")[1]
    assert tag("SKU1") == "{SKU1}"
    assert tag("we{ird}") != "{we{ird}}" and "}" not in tag("we{ird}")[1:-1]


def test_a_lease_is_exclusive_and_released_only_by_its_holder(client, prefix):
    leases = Leases(client, ttl_ms=500)
    key = f"{prefix}:lease"
    token = leases.acquire(key)
    assert token and leases.acquire(key) is None
    assert leases.release(key, "not-the-token") is False
    assert leases.held(key)
    assert leases.release(key, token) is True
    assert not leases.held(key)


def test_a_lease_lapses_unless_renewed(client, prefix):
    leases = Leases(client, ttl_ms=300)
    key = f"{prefix}:lease"
    token = leases.acquire(key)
    with leases.renewed(key, token):
        time.sleep(0.8)
        assert leases.held(key)  # renewed while its holder works
    time.sleep(0.5)
    assert not leases.held(key)  # lapsed once renewals stopped


@pytest.fixture
def two_processes(settings, upstream, redis_url, prefix):
    """Two coalescers sharing Redis and the database, like two processes."""
    settings.PRODUCT_API_BASE = upstream.url
    settings.COALESCING = {
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": prefix,
        "UPSTREAM_TIMEOUT_MS": 2000,
    }
    runtime.reset()
    first = runtime._build()
    second = runtime._build()
    yield first, second
    for c in (first, second):
        deadline = time.monotonic() + 10
        while len(c.flights) and time.monotonic() < deadline:
            time.sleep(0.02)
        c.flush()
    runtime.reset()


def lookup(product: str = "SKU1"):
    return ProductEndpoint().lookup_query({"productId": [product], "fields": ["name"]})


def test_two_processes_make_one_upstream_call(two_processes, upstream):
    upstream.delay = 0.5
    lk = lookup()
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda i: two_processes[i % 2].get(lk), range(40)))
    assert upstream.count == 1
    assert len({a.entry.body for a in answers}) == 1
    caches = [a.x_cache for a in answers]
    assert caches.count("MISS") == 1
    assert set(caches) <= {"MISS", "COALESCED", "HIT"}


def test_the_follower_is_woken_not_left_to_poll(two_processes, upstream):
    first, second = two_processes
    upstream.delay = 0.3
    lk = lookup("SKU2")
    leader = threading.Thread(target=first.get, args=(lk,))
    leader.start()
    time.sleep(0.1)
    started = time.monotonic()
    answer = second.get(lk)
    waited = time.monotonic() - started
    leader.join()
    assert answer.x_cache == "COALESCED" and answer.source == "peer"
    assert upstream.count == 1
    assert waited < 0.3 + 0.2  # woken on the leader's word, well before a poll round trip


def test_an_upstream_failure_reaches_the_followers(two_processes, upstream):
    first, second = two_processes
    upstream.mode, upstream.status, upstream.delay = "status", 503, 0.3
    lk = lookup("SKU3")
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(first.get, lk)
        time.sleep(0.1)
        b = pool.submit(second.get, lk)
        answers = [a.result(), b.result()]
    assert upstream.count == 1
    assert [x.entry for x in answers] == [None, None]
    assert {x.error.fwd_status for x in answers} == {503}


def test_a_lapsed_lease_is_taken_over(two_processes, upstream, client, prefix):
    first, second = two_processes
    lk = lookup("SKU4")
    # A holder that died: its lease is there, nobody renews it, no value comes.
    lease_key = second.distributed.tier.lease_key(lk.key_hash, lk.name)
    client.set(lease_key, "dead-holder", px=600)
    started = time.monotonic()
    answer = second.get(lk)
    assert answer.entry is not None and answer.entry.status == 200
    assert 0.5 < time.monotonic() - started < 2.0
    assert upstream.count == 1


def test_invalidation_reaches_the_other_process_memory(two_processes, upstream):
    first, second = two_processes
    lk = lookup("SKU5")
    first.get(lk)
    assert second.get(lk).x_cache == "HIT"  # from Redis, now in its memory too
    assert second.memory.get(lk.key_hash) is not None
    second.distributed.notifier.listening.wait(5)
    first.invalidate(lk.key_hash, lk.name)
    deadline = time.monotonic() + 5
    while second.memory.get(lk.key_hash) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert second.memory.get(lk.key_hash) is None
    assert second.get(lk).x_cache == "MISS"
    assert upstream.count == 2


def test_redis_down_means_each_process_on_its_own(settings, upstream):
    settings.PRODUCT_API_BASE = upstream.url
    settings.COALESCING = {"REDIS_URL": "redis://127.0.0.1:1/0", "UPSTREAM_TIMEOUT_MS": 2000}
    runtime.reset()
    coalescer = runtime._build()
    started = time.monotonic()
    answers = [coalescer.get(lookup("SKU6")) for _ in range(5)]
    assert time.monotonic() - started < 2.0
    assert [a.x_cache for a in answers] == ["MISS", "HIT", "HIT", "HIT", "HIT"]
    assert upstream.count == 1
    coalescer.flush()


def test_redis_failing_after_the_lease_is_a_local_lead_not_an_error(
    two_processes, upstream, monkeypatch
):
    """Found by the outage test: a tier error inside the cross-process flight was a 500."""
    first, _ = two_processes
    tier = first.distributed.tier

    calls = []

    def broken(key_hash, name=""):
        from coalescing.tiers.base import TierError

        calls.append(key_hash)
        if len(calls) == 1:
            return None  # the flight's first look works; Redis fails after that
        raise TierError("redis read failed")

    lk = lookup("SKU7")
    # Another process holds the lease, so this one follows, and reads Redis while it waits.
    tier.client.set(tier.lease_key(lk.key_hash, lk.name), "other", px=2000)
    monkeypatch.setattr(tier, "get", broken)
    answer = first.get(lk)
    assert answer.entry is not None and answer.x_cache == "MISS"
    assert upstream.count == 1
