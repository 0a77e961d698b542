"""The products API's parameters, keys and upstream requests (CONTRACT.md)."""

from __future__ import annotations

import pytest

from coalescing import BadRequest
from products.endpoints import PriceEndpoint, ProductEndpoint, field_set


def q(**values: str | list[str]) -> dict[str, list[str]]:
    return {k: v if isinstance(v, list) else [v] for k, v in values.items()}


@pytest.fixture
def products() -> ProductEndpoint:
    return ProductEndpoint()


@pytest.mark.parametrize(
    "query",
    [
        {},
        q(productId=""),
        q(productId="a" * 65),
        q(productId="SKU 1"),
        q(productId="../etc"),
        q(productId="SKU%2F"),
        q(productId="ÄÖ"),
        q(productId=["A", "B"]),
        q(productId="A", fields=["a", "b"]),
        q(productId="A", fields="a,,b"),
        q(productId="A", fields=","),
        q(productId="A", fields="a,"),
        q(productId="A", fields="na-me"),
        q(productId="A", fields="f" * 65),
        q(productId="A", fields=",".join(f"f{i}" for i in range(51))),
    ],
)
def test_bad_input_is_a_bad_request(products, query):
    with pytest.raises(BadRequest) as info:
        products.parse(query)
    assert info.value.detail


def test_fields_order_and_duplicates_do_not_matter(products):
    a = products.lookup_query(q(productId="SKU123", fields="price,name"))
    b = products.lookup_query(q(productId="SKU123", fields="name,price,name"))
    assert a.key_hash == b.key_hash
    assert a.key == "products:SKU123::name,price"
    assert a.request.full_url.endswith("/products/SKU123?fields=name,price")


def test_fifty_distinct_fields_are_allowed(products):
    fields = ",".join(f"f{i}" for i in range(50)) + ",f0"
    assert len(field_set(products.parse(q(productId="A", fields=fields)).fields)) == 50


def test_absent_and_empty_fields_mean_all_fields(products):
    absent = products.lookup_query(q(productId="SKU1"))
    empty = products.lookup_query(q(productId="SKU1", fields=""))
    some = products.lookup_query(q(productId="SKU1", fields="name"))
    assert absent.key_hash == empty.key_hash != some.key_hash
    assert "?" not in absent.request.full_url


def test_single_flight_name_is_the_product(products):
    assert products.lookup_query(q(productId="SKU9", fields="a")).name == "SKU9"


def test_prices_are_keyed_by_region_and_product_and_coalesced_by_region():
    prices = PriceEndpoint()
    lk = prices.lookup_query(q(productId="SKU1", region="eu-west"))
    assert lk.name == "eu-west"
    assert lk.key == "prices:eu-west::SKU1"
    assert lk.request.full_url.endswith("/prices/eu-west/SKU1")
    other = prices.lookup_query(q(productId="SKU1", region="us"))
    assert other.key_hash != lk.key_hash
    with pytest.raises(BadRequest):
        prices.parse(q(productId="SKU1"))


def test_distinct_parameters_give_distinct_keys(products):
    keys = {
        products.lookup_query(query).key_hash
        for query in [
            q(productId="A"),
            q(productId="A", fields="b"),
            q(productId="A", fields="b,c"),
            q(productId="Ab"),
            q(productId="a"),
        ]
    }
    assert len(keys) == 5


def test_user_input_never_chooses_the_upstream_host(products, settings):
    settings.PRODUCT_API_BASE = "http://upstream.internal:9000/api"
    lk = products.lookup_query(q(productId="--x_1", fields="name"))
    assert lk.request.full_url == "http://upstream.internal:9000/api/products/--x_1?fields=name"
