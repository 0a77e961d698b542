"""Many processes sharing one Redis and one PostgreSQL: gunicorn with gevent
workers beside a separate ``manage.py serve``, all real processes."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from faults.services import OwnRedis, Unavailable
from testkit.servers import gunicorn, manage, serve
from tests.conftest import missing_service

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster_env(upstream, redis_url, postgres_database):
    env = {
        "PRODUCT_API_BASE": upstream.url,
        "DATABASE_URL": postgres_database,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"e2e{uuid.uuid4().hex[:8]}",
        "UPSTREAM_TIMEOUT_MS": "4000",
    }
    migrated = manage("migrate", "--noinput", env=env)
    assert migrated.returncode == 0, migrated.stderr
    return env


def fetch(url: str, product: str = "SKU1") -> requests.Response:
    return requests.get(
        f"{url}/products", params={"productId": product, "fields": "name"}, timeout=15
    )


def spread(urls: list[str], n: int, product: str = "SKU1") -> list[requests.Response]:
    targets = list(itertools.islice(itertools.cycle(urls), n))
    barrier = threading.Barrier(n)

    def one(url: str) -> requests.Response:
        barrier.wait(15)
        return fetch(url, product)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, targets))


@pytest.fixture
def gunicorn_and_serve(cluster_env):
    workers = gunicorn(cluster_env, workers=3)
    single = serve(cluster_env)
    yield workers, single
    single.stop()
    workers.stop()


def test_300_cold_requests_over_four_processes_make_one_call(gunicorn_and_serve, upstream):
    workers, single = gunicorn_and_serve
    upstream.delay = 1.0
    answers = spread([workers.url, single.url], 300)
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert upstream.count == 1
    caches = [a.headers["X-Cache"] for a in answers]
    assert caches.count("MISS") == 1


def test_a_stale_key_under_load_makes_one_refresh_in_all(cluster_env, upstream):
    env = {**cluster_env, "FRESH_TTL_MS": "1000", "STALE_TTL_MS": "30000"}
    workers, single = gunicorn(env, workers=3), serve(env)
    try:
        assert fetch(single.url).status_code == 200
        time.sleep(1.3)
        upstream.delay = 0.5
        answers = spread([workers.url, single.url], 300)
        assert {a.status_code for a in answers} == {200}
        assert "STALE" in {a.headers["X-Cache"] for a in answers}
        time.sleep(1.5)
        assert upstream.count == 2  # the first fetch and one refresh in total
    finally:
        single.stop()
        workers.stop()


def test_the_lease_holder_killed_mid_call_is_taken_over(cluster_env, upstream):
    leader, follower = serve(cluster_env), serve(cluster_env)
    try:
        upstream.delay = 1.5
        first = threading.Thread(target=lambda: _swallow(fetch, leader.url))
        first.start()
        deadline = time.monotonic() + 5
        while upstream.count == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert upstream.count == 1
        with ThreadPoolExecutor(20) as pool:
            started = time.monotonic()
            futures = [pool.submit(fetch, follower.url) for _ in range(20)]
            time.sleep(0.2)
            leader.kill()  # SIGKILL while it holds the lease and waits on the upstream
            answers = [f.result() for f in futures]
            elapsed = time.monotonic() - started
        first.join(10)
        assert {a.status_code for a in answers} == {200}
        assert elapsed < 4.0 + 1.0  # no waiter outlives the upstream budget plus a second
        assert upstream.count == 2  # the dead leader's call, and the one that took over
    finally:
        leader.kill()
        follower.stop()


def _swallow(fn, *args):
    try:
        fn(*args)
    except requests.RequestException:
        pass


def test_redis_stopped_and_started_under_load(cluster_env, upstream):
    try:
        own = OwnRedis()
    except Unavailable as exc:
        missing_service(str(exc))
    own.start()
    env = {**cluster_env, "REDIS_URL": own.url}
    a, b = serve(env), serve(env)
    statuses: list[int] = []
    stop = threading.Event()

    def load(i: int) -> None:
        for n in itertools.count():
            if stop.is_set() or n > 2000:
                return
            try:
                url = (a.url, b.url)[n % 2]
                statuses.append(fetch(url, f"SKU{(i * 7 + n) % 30}").status_code)
            except requests.RequestException:
                statuses.append(-1)

    try:
        upstream.delay = 0.05
        threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        own.stop()
        time.sleep(1.5)
        # Redis down: each process coalesces on its own (at most one call each).
        calls = upstream.count
        down = spread([a.url, b.url], 40, product="COLD1")
        assert {r.status_code for r in down} == {200}
        assert 1 <= upstream.calls_to("/products/COLD1") <= 2
        own.start()
        time.sleep(2.5)  # the breaker retries within a second; pub/sub reconnects
        stop.set()
        for t in threads:
            t.join(20)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert upstream.count > calls
        # Redis back: coalescing across processes again.
        upstream.delay = 0.5
        back = spread([a.url, b.url], 40, product="COLD2")
        assert {r.status_code for r in back} == {200}
        assert upstream.calls_to("/products/COLD2") == 1
    finally:
        stop.set()
        a.stop()
        b.stop()
        own.stop()


def test_an_invalidated_entry_is_gone_from_every_process(cluster_env, upstream):
    a, b = serve(cluster_env), serve(cluster_env)
    try:
        assert fetch(a.url).headers["X-Cache"] == "MISS"
        assert fetch(b.url).headers["X-Cache"] == "HIT"  # from Redis, now in b's memory
        assert fetch(a.url).headers["X-Cache"] == "HIT"
        done = manage("invalidate", "products", "productId=SKU1", "fields=name", env=cluster_env)
        assert done.returncode == 0, done.stderr
        assert "Invalidated" in done.stdout
        time.sleep(0.3)
        assert fetch(a.url).headers["X-Cache"] == "MISS"
        assert fetch(b.url).headers["X-Cache"] == "HIT"
        assert upstream.count == 2
    finally:
        a.stop()
        b.stop()
