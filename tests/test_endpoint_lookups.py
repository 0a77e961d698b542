"""An endpoint remembers the lookup of a query string: a hit skips parsing it."""

from __future__ import annotations

import pytest
from django.test import Client

from coalescing import endpoint as endpoint_module
from coalescing import runtime
from products.endpoints import ProductEndpoint

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def products(settings, upstream, monkeypatch):
    settings.PRODUCT_API_BASE = upstream.url
    runtime.reset()
    parsed: list[dict] = []
    real_parse = ProductEndpoint.parse

    def counting_parse(self, query):
        parsed.append(query)
        return real_parse(self, query)

    monkeypatch.setattr(ProductEndpoint, "parse", counting_parse)
    yield parsed
    runtime.reset()


def test_the_same_query_string_is_parsed_once(products, upstream):
    client = Client()
    for _ in range(3):
        answer = client.get("/products?productId=LK1&fields=name")
        assert answer.status_code == 200
    assert len(products) == 1
    assert upstream.count == 1
    # Another spelling of the same request is parsed, then shares the entry.
    assert client.get("/products?fields=name&productId=LK1")["X-Cache"] == "HIT"
    assert len(products) == 2
    assert upstream.count == 1


def test_bad_queries_are_never_remembered(products):
    client = Client()
    for _ in range(2):
        answer = client.get("/products?productId=")
        assert answer.status_code == 400
        assert answer.json()["detail"]
    assert len(products) == 2


def test_remembered_lookups_are_bounded(products, monkeypatch):
    monkeypatch.setattr(endpoint_module, "LOOKUP_CACHE_SIZE", 5)
    client = Client()
    for i in range(12):
        assert client.get(f"/products?productId=BOUND{i}").status_code == 200
    view_endpoints = {
        id(e): e
        for e in _registered_endpoints()
        if isinstance(e, ProductEndpoint) and e.__dict__.get("_lookup_cache")
    }
    assert view_endpoints
    for e in view_endpoints.values():
        assert len(e.__dict__["_lookup_cache"]) <= 5
        assert "productId=BOUND11" in e.__dict__["_lookup_cache"]


def test_a_lookup_made_under_other_settings_is_made_again(products, settings):
    client = Client()
    assert client.get("/products?productId=POL1")["X-Cache"] == "MISS"
    settings.COALESCING = {**settings.COALESCING, "FRESH_TTL_MS": 0, "STALE_TTL_MS": 0}
    # A fresh window of 0: the same query is no longer a hit, whatever was remembered.
    assert client.get("/products?productId=POL1")["X-Cache"] != "HIT"
    assert len(products) == 2


def _registered_endpoints():
    """The endpoint instances behind the registered views (closures of ``register``)."""
    import gc

    return [o for o in gc.get_objects() if isinstance(o, ProductEndpoint)]
