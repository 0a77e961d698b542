"""The read path in-process, with a real HTTP upstream and a clock we move."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import Client

from coalescing import operations, runtime
from coalescing.models import CacheEntry
from testkit.servers import parse_cache_status
from tests.conftest import Clock

pytestmark = pytest.mark.django_db(transaction=True)

FRESH_MS, STALE_MS, ERROR_MS, NEGATIVE_MS = 10_000, 60_000, 300_000, 5_000


@pytest.fixture
def clock(settings, upstream):
    settings.PRODUCT_API_BASE = upstream.url
    settings.COALESCING = {
        "FRESH_TTL_MS": FRESH_MS,
        "STALE_TTL_MS": STALE_MS,
        "STALE_IF_ERROR_MS": ERROR_MS,
        "NEGATIVE_TTL_MS": NEGATIVE_MS,
        "UPSTREAM_TIMEOUT_MS": 1000,
        "UPSTREAM_MAX_BYTES": 10_000,
    }
    runtime.reset()
    clock = Clock()
    coalescer = runtime.get_coalescer()
    coalescer.clock = clock
    yield clock
    # Let background flights land before the next test's database is clean.
    wait_until(lambda: len(coalescer.flights) == 0, timeout=10)
    runtime.reset()


@pytest.fixture
def client() -> Client:
    return Client()


def get(client: Client, product: str = "SKU1", fields: str = "name,price", **extra):
    return client.get("/products", {"productId": product, "fields": fields}, **extra)


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_miss_then_hit_with_headers(clock, client, upstream):
    first = get(client)
    assert first.status_code == 200
    assert first["X-Cache"] == "MISS"
    assert first["Cache-Status"] == "coalescing; fwd=uri-miss; stored"
    assert first["Content-Type"] == "application/json"
    assert json.loads(first.content)["path"] == "/products/SKU1"
    assert upstream.calls[0]["query"] == "fields=name,price"
    clock.advance(3000)
    second = get(client, fields="price,name")
    assert second["X-Cache"] == "HIT"
    assert parse_cache_status(second["Cache-Status"]) == {
        "hit": True,
        "ttl": "7",
        "detail": "memory",
    }
    assert second["Age"] == "3"
    assert second.content == first.content  # byte for byte
    assert upstream.count == 1


def test_concurrent_identical_requests_make_one_call(clock, client, upstream):
    upstream.delay = 0.3
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: get(Client()), range(50)))
    assert upstream.count == 1
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    caches = [a["X-Cache"] for a in answers]
    assert caches.count("MISS") == 1
    assert caches.count("COALESCED") == 49
    assert all(
        a["Cache-Status"] == "coalescing; fwd=uri-miss; collapsed"
        for a in answers
        if a["X-Cache"] == "COALESCED"
    )


def test_stale_is_served_at_once_with_one_refresh(clock, client, upstream):
    get(client)
    clock.advance(FRESH_MS + 2500)
    upstream.delay = 0.3
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: get(Client()), range(20)))
    assert {a["X-Cache"] for a in answers} == {"STALE"}
    status = parse_cache_status(answers[0]["Cache-Status"])
    assert status["fwd"] == "stale" and status["ttl"] == "-3" and status["hit"] is True
    wait_until(lambda: upstream.count == 2)
    wait_until(lambda: len(runtime.get_coalescer().flights) == 0)
    time.sleep(0.1)
    assert upstream.count == 2  # one refresh for twenty stale hits
    fresh = get(client)
    assert fresh["X-Cache"] == "HIT"
    assert json.loads(fresh.content)["n"] == 2


def test_expired_is_fetched_in_the_foreground(clock, client, upstream):
    get(client)
    clock.advance(STALE_MS + 1)
    again = get(client)
    assert again["X-Cache"] == "MISS"
    assert json.loads(again.content)["n"] == 2


def test_stale_if_error_serves_the_old_value(clock, client, upstream):
    first = get(client)
    clock.advance(STALE_MS + 1000)
    upstream.mode, upstream.status = "status", 503
    answer = get(client)
    assert answer.status_code == 200
    assert answer["X-Cache"] == "STALE"
    assert answer.content == first.content
    status = parse_cache_status(answer["Cache-Status"])
    assert status["fwd-status"] == "503"
    # Past the stale-if-error window, the error shows.
    clock.advance(ERROR_MS)
    late = get(client)
    assert late.status_code == 502
    assert parse_cache_status(late["Cache-Status"])["fwd-status"] == "503"
    assert "detail" in json.loads(late.content)


@pytest.mark.parametrize(
    ("mode", "status", "expected"),
    [
        ("status", 500, 502),
        ("status", 503, 502),
        ("status", 429, 502),
        ("status", 302, 502),
        ("invalid", 200, 502),
        ("big", 200, 502),
        ("reset", 200, 502),
        ("trickle", 200, 504),
    ],
)
def test_upstream_failures_without_stale_value(clock, client, upstream, mode, status, expected):
    upstream.mode, upstream.status, upstream.size = mode, status, 50_000
    started = time.monotonic()
    answer = get(client)
    assert time.monotonic() - started < 1.0 + 1.0 + 0.5  # timeout + margin
    assert answer.status_code == expected
    assert "detail" in json.loads(answer.content)
    assert "fwd-status" in parse_cache_status(answer["Cache-Status"])
    # An error is never stored: once the short hold-back after a failure is
    # over, the next request calls the upstream again.
    upstream.mode = "ok"
    clock.advance(1000)
    assert get(client)["X-Cache"] == "MISS"
    runtime.get_coalescer().flush()
    assert CacheEntry.objects.count() == 1


def test_upstream_timeout_is_504(clock, client, upstream):
    upstream.delay = 1.5
    started = time.monotonic()
    answer = get(client)
    assert answer.status_code == 504
    assert time.monotonic() - started < 2.5
    assert parse_cache_status(answer["Cache-Status"])["fwd-status"] == "504"


def test_404_is_cached_for_the_negative_ttl_then_fetched_again(clock, client, upstream):
    upstream.mode, upstream.status = "status", 404
    first = get(client)
    assert first.status_code == 404 and first["X-Cache"] == "MISS"
    assert json.loads(first.content) == {"detail": "Not found"}
    clock.advance(NEGATIVE_MS - 100)
    cached = get(client)
    assert cached.status_code == 404 and cached["X-Cache"] == "HIT"
    assert upstream.count == 1
    clock.advance(200)
    upstream.mode = "ok"
    assert get(client).status_code == 200  # no stale window for a 404
    assert upstream.count == 2


def test_a_404_is_never_served_as_stale_if_error(clock, client, upstream):
    upstream.mode, upstream.status = "status", 404
    get(client)
    clock.advance(NEGATIVE_MS + 1)
    upstream.status = 503
    assert get(client).status_code == 502


def test_values_found_in_the_database_are_served_and_written_up(clock, client, upstream):
    first = get(client)
    coalescer = runtime.get_coalescer()
    coalescer.flush()
    coalescer.memory.clear()
    again = get(client)
    assert again["X-Cache"] == "HIT"
    assert parse_cache_status(again["Cache-Status"])["detail"] == "db"
    assert again.content == first.content
    assert upstream.count == 1
    assert parse_cache_status(get(client)["Cache-Status"])["detail"] == "memory"


def test_a_stale_value_from_the_database_starts_one_refresh(clock, client, upstream):
    get(client)
    coalescer = runtime.get_coalescer()
    coalescer.flush()
    coalescer.memory.clear()
    clock.advance(FRESH_MS + 1000)
    answer = get(client)
    assert answer["X-Cache"] == "STALE"
    assert parse_cache_status(answer["Cache-Status"])["detail"] == "db"
    wait_until(lambda: upstream.count == 2)


def test_a_failing_database_is_a_miss_not_an_error(clock, client, upstream, monkeypatch):
    from coalescing.tiers.base import TierError
    from coalescing.tiers.database import DatabaseTier

    def broken(self, key_hash):
        raise TierError("database down")

    monkeypatch.setattr(DatabaseTier, "get", broken)
    assert get(client).status_code == 200
    assert get(client)["X-Cache"] == "HIT"


def test_headers_and_cookies_of_the_client_never_reach_the_upstream(clock, client, upstream):
    client.cookies["sessionid"] = "secret-session"
    get(client, HTTP_AUTHORIZATION="Bearer user-token", HTTP_X_FORWARDED_FOR="6.6.6.6")
    headers = {k.lower(): v for k, v in upstream.calls[0]["headers"].items()}
    assert "cookie" not in headers
    assert "authorization" not in headers
    assert "x-forwarded-for" not in headers
    assert "user-token" not in json.dumps(headers)


def test_upstream_cookies_are_not_kept_or_replayed(clock, client, upstream):
    upstream.mode = "cookie"
    answer = get(client)
    assert "Set-Cookie" not in answer
    assert "session" not in answer.cookies
    upstream.mode = "ok"
    get(client, product="SKU2")
    headers = {k.lower() for k in upstream.calls[1]["headers"]}
    assert "cookie" not in headers


def test_distinct_keys_never_see_each_others_data(clock, client, upstream):
    upstream.delay = 0.1
    products = [f"SKU{i}" for i in range(20)]
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda p: (p, get(Client(), product=p)), products * 2))
    for product, answer in answers:
        assert json.loads(answer.content).get("path") == f"/products/{product}", answer.content
    assert upstream.count == 20


def test_bad_input_is_400_with_detail(clock, client, upstream):
    for query in ["", "?productId=", "?productId=a&productId=b", "?productId=a&fields=a,,b"]:
        answer = client.get("/products" + query)
        assert answer.status_code == 400
        assert json.loads(answer.content)["detail"]
    assert upstream.count == 0


def test_invalidate_and_refresh_by_parameters(clock, client, upstream):
    get(client)
    key_hash = operations.invalidate("products", productId="SKU1", fields="price,name")
    runtime.get_coalescer().flush()
    assert runtime.get_coalescer().peek(key_hash) is None
    again = get(client)
    assert again["X-Cache"] == "MISS", again.headers
    answer = operations.refresh("products", productId="SKU1", fields="name,price")
    assert answer.x_cache == "MISS"
    assert upstream.count == 3
    assert operations.refresh_key(key_hash).entry.key_hash == key_hash
    assert upstream.count == 4


def test_waiters_are_answered_even_when_the_leader_is_slow(clock, client, upstream):
    upstream.delay = 5  # longer than the 1 s budget: the leader times out at 1 s
    done = threading.Event()
    results = []

    def call():
        results.append(get(Client()).status_code)
        done.set()

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [504] * 5
    assert time.monotonic() - started < 2.5


def test_calls_after_a_failure_are_held_back_for_a_growing_interval(clock, client, upstream):
    upstream.mode, upstream.status = "status", 503
    assert get(client).status_code == 502
    held = get(client)
    assert held.status_code == 502 and held["Retry-After"] == "1"
    assert upstream.count == 1  # held back: the upstream saw no second call
    clock.advance(300)  # past the first interval (250 ms)
    assert get(client).status_code == 502
    assert upstream.count == 2
    clock.advance(300)  # the second interval is 500 ms: still held back
    assert get(client).status_code == 502
    assert upstream.count == 2
    clock.advance(300)
    upstream.mode = "ok"
    assert get(client).status_code == 200  # a success clears the record
    assert upstream.count == 3


def test_stale_is_served_while_calls_are_held_back(clock, client, upstream):
    first = get(client)
    clock.advance(STALE_MS + 1)
    upstream.mode, upstream.status = "status", 500
    answers = [get(client) for _ in range(5)]
    assert {a.status_code for a in answers} == {200}
    assert all(a.content == first.content for a in answers)
    assert upstream.count == 2  # one failed call; the other four held back


def test_the_concurrency_cap_answers_503_with_retry_after(settings, clock, upstream):
    settings.COALESCING = {
        **settings.COALESCING,
        "UPSTREAM_MAX_CONCURRENCY": 2,
        "UPSTREAM_TIMEOUT_MS": 3000,
    }
    runtime.reset()
    upstream.delay = 1.5  # each call holds its slot longer than a queued call may wait
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda i: get(Client(), product=f"CAP{i}"), range(5)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 503, 503, 503]
    assert upstream.count == 2
    for a in answers:
        if a.status_code == 503:
            assert a["Retry-After"] == "1"
            assert "detail" in json.loads(a.content)
