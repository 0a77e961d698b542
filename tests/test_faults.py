"""The fault suite in its short form, and focused tests of what it found.

The short form runs the scenarios of :mod:`faults.scenarios` marked ``short``
against one cluster of real servers (``manage.py serve`` and two gunicorn
gevent workers sharing a Redis and a PostgreSQL of the suite's own) with
shorter phases; ``make faults`` runs them all at full length and writes
docs/reliability.md. Each scenario must miss no target (no 500, nothing lost,
nothing crossed, every wait within ``UPSTREAM_TIMEOUT_MS`` + 1 s, keys with a
stale value answering 200). Each bug the suite found has a focused test
below, so that it stays fixed.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import uuid

import pytest
import requests
from django.db.utils import OperationalError
from django.test import Client

from coalescing import runtime
from coalescing.entry import Entry
from coalescing.models import CacheEntry, CacheEntryManager
from coalescing.upstream import UpstreamClient, UpstreamRequest, UpstreamTimeout
from faults import report
from faults.cluster import WAIT_BOUND_S, Cluster
from faults.scenarios import SCENARIOS, Ctx
from faults.services import Unavailable
from products.endpoints import ProductEndpoint
from testkit.servers import manage, serve
from tests.conftest import POSTGRES_URL, missing_service

pytestmark = pytest.mark.e2e

SHORT = [name for name, scenario in SCENARIOS.items() if scenario.short]


@pytest.fixture(scope="module")
def fault_cluster(_upstream_server):
    if shutil.which("redis-server") is None:
        missing_service("redis-server is not installed (the fault suite runs one of its own)")
    cluster = Cluster(_upstream_server.url, workers=2, shared_postgres_url=POSTGRES_URL)
    try:
        cluster.start()
    except Unavailable as exc:
        missing_service(str(exc))
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("name", SHORT)
def test_fault_scenario(name, fault_cluster, upstream):
    result = SCENARIOS[name].run(Ctx(fault_cluster, upstream, scale=0.3, threads=6))
    if result.skipped:
        pytest.skip(result.skipped)
    print(report.scenario_table(result, WAIT_BOUND_S))
    assert not result.violations(WAIT_BOUND_S), report.scenario_table(result, WAIT_BOUND_S)


# -- the bugs the suite found, one focused test each ------------------------------------


def test_an_upstream_that_trickles_its_headers_is_cut_at_its_budget(upstream):
    upstream.mode, upstream.size = "slow_headers", 60  # 3 s of headers
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        UpstreamClient().fetch(UpstreamRequest(f"{upstream.url}/products/SLOW"), 1.0, 10_000)
    assert time.monotonic() - started < 1.5


@pytest.fixture
def redis_coalescer(settings, upstream, redis_url):
    prefix = f"tf{uuid.uuid4().hex[:8]}"
    settings.PRODUCT_API_BASE = upstream.url
    settings.COALESCING = {
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": prefix,
        "UPSTREAM_TIMEOUT_MS": 1000,
        "FRESH_TTL_MS": 1000,
        "STALE_TTL_MS": 2000,
    }
    runtime.reset()
    coalescer = runtime.get_coalescer()
    yield coalescer
    tier = coalescer.guard("redis").tier
    for key in tier.client.scan_iter(f"{prefix}:*"):
        tier.client.delete(key)
    runtime.reset()


@pytest.mark.django_db(transaction=True)
def test_a_waiter_given_up_on_gets_the_stale_value_of_a_lower_tier(redis_coalescer, upstream):
    lk = ProductEndpoint().lookup_query({"productId": ["GIVEUP1"]})
    old = b'{"path": "/products/GIVEUP1", "query": "", "n": 0}'
    entry = Entry(
        lk.key_hash,
        lk.key,
        lk.endpoint,
        lk.name,
        200,
        old,
        "application/json",
        round(time.time() - 30, 3),  # expired, well inside STALE_IF_ERROR_MS
        lk.request.full_url,
    )
    tier = redis_coalescer.guard("redis").tier
    tier.set(entry, 300_000)
    # Another process leads the key, then dies: its lease lapses after 1.5 s with
    # no word; this process takes over and calls an upstream slower than the budget.
    tier.client.set(tier.lease_key(lk.key_hash, lk.name), "dead-process", px=1500)
    upstream.delay = 3.0
    started = time.monotonic()
    answer = Client().get("/products", {"productId": "GIVEUP1"})
    assert time.monotonic() - started < 1.0 + 1.0 + 0.5
    assert answer.status_code == 200, answer.content
    assert answer["X-Cache"] == "STALE"
    assert answer.content == old


@pytest.mark.django_db(transaction=True)
def test_an_entry_fetched_while_the_database_is_down_reaches_it_later(
    settings, upstream, monkeypatch
):
    settings.PRODUCT_API_BASE = upstream.url
    runtime.reset()
    down = threading.Event()
    down.set()
    real_get, real_upsert = CacheEntryManager.get_entry, CacheEntryManager.upsert_many

    def get_entry(self, *args, **kwargs):
        if down.is_set():
            raise OperationalError("connection refused (the test's outage)")
        return real_get(self, *args, **kwargs)

    def upsert_many(self, *args, **kwargs):
        if down.is_set():
            raise OperationalError("connection refused (the test's outage)")
        return real_upsert(self, *args, **kwargs)

    monkeypatch.setattr(CacheEntryManager, "get_entry", get_entry)
    monkeypatch.setattr(CacheEntryManager, "upsert_many", upsert_many)
    try:
        answer = Client().get("/products", {"productId": "OUTAGE1"})
        assert answer.status_code == 200 and answer["X-Cache"] == "MISS"
        down.clear()  # the database is back
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            runtime.get_coalescer().flush()
            if CacheEntry.objects.filter(name="OUTAGE1").exists():
                break
            time.sleep(0.2)
        assert CacheEntry.objects.filter(name="OUTAGE1").exists()
    finally:
        down.clear()
        runtime.reset()


@pytest.fixture
def black_hole():
    """A TCP port that accepts connections and never answers: a frozen database."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(128)
    yield hole.getsockname()[1]
    hole.close()


def test_a_database_that_never_answers_does_not_stop_the_upstream(upstream, black_hole):
    env = {
        "PRODUCT_API_BASE": upstream.url,
        "DATABASE_URL": f"postgres://app@127.0.0.1:{black_hole}/app",
        "UPSTREAM_TIMEOUT_MS": "1000",
    }
    srv = serve(env)
    try:
        started = time.monotonic()
        answer = requests.get(f"{srv.url}/products?productId=FROZEN1", timeout=10)
        assert time.monotonic() - started < 2.0 + 0.25
        assert answer.status_code == 200, answer.text
        assert upstream.count == 1
    finally:
        srv.kill()


def test_waiters_in_other_processes_get_the_leaders_503_and_retry_after(
    upstream, redis_url, tmp_path
):
    env = {
        "PRODUCT_API_BASE": upstream.url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'cap.sqlite3'}",
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"cap{uuid.uuid4().hex[:8]}",
        "UPSTREAM_TIMEOUT_MS": "2000",
        "UPSTREAM_MAX_CONCURRENCY": "1",
    }
    assert manage("migrate", "--noinput", env=env).returncode == 0
    leader, follower = serve(env), serve(env)
    answers: dict[str, requests.Response] = {}

    def ask(name: str, url: str, product: str) -> None:
        answers[name] = requests.get(f"{url}/products?productId={product}", timeout=10)

    try:
        upstream.delay = 1.5
        threads = [threading.Thread(target=ask, args=("busy", leader.url, "CAP1"))]
        threads[0].start()  # takes the leader's only upstream slot for 1.5 s
        deadline = time.monotonic() + 10
        while upstream.inflight < 1 and time.monotonic() < deadline:  # it holds the slot now
            time.sleep(0.01)
        threads.append(threading.Thread(target=ask, args=("leader", leader.url, "CAP2")))
        threads[1].start()  # leads CAP2, waits for a slot, gives up: 503
        time.sleep(0.2)
        threads.append(threading.Thread(target=ask, args=("follower", follower.url, "CAP2")))
        threads[2].start()  # follows the leader's call for CAP2
        for thread in threads:
            thread.join(15)
        assert answers["busy"].status_code == 200
        assert answers["leader"].status_code == 503, answers["leader"].text
        assert "Retry-After" in answers["leader"].headers
        follower_answer = answers["follower"]
        assert json.loads(follower_answer.content)["detail"]
        assert follower_answer.status_code == 503, follower_answer.text
        assert "Retry-After" in follower_answer.headers
    finally:
        leader.stop()
        follower.stop()


@pytest.mark.django_db(transaction=True)
def test_bodies_over_the_cap_are_not_kept_after_the_call(settings, upstream):
    import gc
    import tracemalloc

    settings.PRODUCT_API_BASE = upstream.url
    runtime.reset()
    upstream.mode, upstream.size = "huge_unsized", 50_000_000
    client = Client()
    gc.collect()
    gc.disable()  # nor in reference cycles, left for the collector to find some day
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(30):
            answer = client.get("/products", {"productId": f"OVERCAP{i}"})
            assert answer.status_code == 502
        kept_in_cycles = tracemalloc.get_traced_memory()[0] - before
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
        runtime.reset()
    assert kept < 8 * 2**20, f"{kept / 2**20:.1f} MiB kept after 30 failed calls"
    assert kept_in_cycles < 8 * 2**20, f"{kept_in_cycles / 2**20:.1f} MiB kept until a collection"
