"""``/metrics`` counts what a scripted sequence of requests did, in one process and
summed over gunicorn workers."""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from coalescing import runtime
from testkit.servers import gunicorn, manage

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a /metrics page."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def read(client: Client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return scrape(response.content.decode())


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture
def client(settings, upstream) -> Client:
    settings.PRODUCT_API_BASE = upstream.url
    runtime.reset()
    yield Client()
    runtime.reset()


def test_metrics_count_a_miss_two_hits_a_404_and_a_negative_hit(client, upstream):
    before = read(client)

    def get(product: str) -> str:
        response = client.get("/products", {"productId": product, "fields": "name"})
        return f"{response.status_code} {response['X-Cache']}"

    assert get("SKU1") == "200 MISS"
    assert get("SKU1") == "200 HIT"
    assert get("SKU1") == "200 HIT"
    upstream.mode, upstream.status = "status", 404
    assert get("NOPE") == "404 MISS"
    assert get("NOPE") == "404 HIT"
    assert upstream.count == 2
    after = read(client)

    def requests(cache: str) -> float:
        return delta(before, after, "coalescing_requests_total", endpoint="products", cache=cache)

    assert (requests("MISS"), requests("HIT"), requests("STALE")) == (2, 3, 0)
    calls = "coalescing_upstream_calls_total"
    assert delta(before, after, calls, endpoint="products", status="200") == 1
    assert delta(before, after, calls, endpoint="products", status="404") == 1
    latency = "coalescing_upstream_latency_seconds_count"
    assert delta(before, after, latency, endpoint="products") == 2
    assert delta(before, after, "coalescing_coalesced_waiters_total", endpoint="products") == 0


def test_metrics_count_upstream_errors(client, upstream):
    before = read(client)
    upstream.mode, upstream.status = "status", 503
    assert client.get("/products", {"productId": "BROKEN"}).status_code == 502
    after = read(client)
    calls = "coalescing_upstream_calls_total"
    assert delta(before, after, calls, endpoint="products", status="503") == 1
    assert (
        delta(before, after, "coalescing_requests_total", endpoint="products", cache="ERROR") == 1
    )


def test_every_name_is_prefixed(client):
    client.get("/products", {"productId": "SKU1"})
    names = {name for name, _ in read(client)}
    assert names
    assert all(name.startswith("coalescing_") for name in names), sorted(names)


@pytest.mark.e2e
def test_gunicorn_workers_are_summed_in_multiprocess_mode(tmp_path, upstream):
    """Two workers, each replaced after 10 requests: /metrics, answered by one
    process, still counts every request that any of them answered."""
    prom = tmp_path / "prom"
    prom.mkdir()
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "PRODUCT_API_BASE": upstream.url,
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "GUNICORN_CMD_ARGS": "--max-requests 10",
    }
    migrated = manage("migrate", "-v", "0", env=env)
    assert migrated.returncode == 0, migrated.stderr
    server = gunicorn(env, workers=2)
    try:
        before = scrape(server.get("/metrics").text)
        for _ in range(3):
            with ThreadPoolExecutor(4) as pool:
                answers = pool.map(lambda i: server.get(f"/products?productId=P{i % 5}"), range(15))
                assert all(a.status_code == 200 for a in answers)
            time.sleep(1.5)  # a worker past its 10 requests is replaced meanwhile
        after = scrape(server.get("/metrics").text)
    finally:
        assert server.stop() == 0, server.log()
    assert len(list(prom.glob("counter_*.db"))) >= 3  # figures of several processes
    total = sum(
        delta(before, after, "coalescing_requests_total", endpoint="products", cache=cache)
        for cache in ("MISS", "HIT", "STALE", "COALESCED")
    )
    assert total == 45
    calls = "coalescing_upstream_calls_total"
    assert delta(before, after, calls, endpoint="products", status="200") == upstream.count
