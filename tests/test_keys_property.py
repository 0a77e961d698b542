"""Property tests of key normalisation (hypothesis).

The cache key is what keeps one client's answer from being served for another
request: two requests that mean the same thing must share a key (and so one
upstream call), two that do not must never share one, and a key must never
stand for two different upstream calls. Every key is bounded in length, and
any input at all is either a lookup or a :class:`~coalescing.BadRequest`.
"""

from __future__ import annotations

import string
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from coalescing import BadRequest
from coalescing.entry import MAX_KEY_LENGTH, make_key
from products.endpoints import MAX_FIELDS, PriceEndpoint, ProductEndpoint

BASE = "http://upstream.internal:9000/api"
ID_CHARS = string.ascii_letters + string.digits + "_-"
FIELD_CHARS = string.ascii_letters + string.digits + "_"

product_ids = st.text(ID_CHARS, min_size=1, max_size=64)
regions = st.text(ID_CHARS, min_size=1, max_size=32)
field_names = st.text(FIELD_CHARS, min_size=1, max_size=64)
field_sets = st.lists(field_names, max_size=MAX_FIELDS, unique=True)
#: Characters that make an otherwise valid value invalid, the classic ones first.
HOSTILE = [
    "\n",
    "\r\n",
    " ",
    "/",
    "..",
    ".",
    "%2F",
    "@",
    ":",
    "?",
    "#",
    "\x00",
    "é",
    "Ｓ",
    "\u200b",
]

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(autouse=True)
def _upstream_base(settings):
    settings.PRODUCT_API_BASE = BASE


products, prices = ProductEndpoint(), PriceEndpoint()


def product_query(product_id: str, fields: list[str] | None) -> dict[str, list[str]]:
    query = {"productId": [product_id]}
    if fields is not None:
        query["fields"] = [",".join(fields)]
    return query


# -- equal parameters, equal keys ------------------------------------------------


@SETTINGS
@given(product_ids, field_sets, st.data())
def test_fields_permuted_and_duplicated_give_one_key(product_id, fields, data):
    first = products.lookup_query(product_query(product_id, fields))
    shuffled = data.draw(st.permutations(fields))
    repeats = data.draw(st.lists(st.sampled_from(fields), max_size=20)) if fields else []
    # Query parameters in another order, and unknown ones, change nothing either.
    query = {"utm_source": ["x"], **product_query(product_id, [*shuffled, *repeats])}
    second = products.lookup_query(dict(reversed(query.items())))
    assert (second.key, second.key_hash, second.name) == (first.key, first.key_hash, first.name)
    assert second.request.full_url == first.request.full_url


@SETTINGS
@given(product_ids)
def test_absent_and_empty_fields_are_one_key(product_id):
    absent = products.lookup_query(product_query(product_id, None))
    empty = products.lookup_query(product_query(product_id, []))
    assert absent.key_hash == empty.key_hash
    assert absent.request.full_url == empty.request.full_url == f"{BASE}/products/{product_id}"


# -- different parameters, different keys -------------------------------------------


@SETTINGS
@given(product_ids, field_sets, product_ids, field_sets)
def test_different_products_or_fields_never_share_a_key(id_a, fields_a, id_b, fields_b):
    assume((id_a, frozenset(fields_a)) != (id_b, frozenset(fields_b)))
    a = products.lookup_query(product_query(id_a, fields_a))
    b = products.lookup_query(product_query(id_b, fields_b))
    assert a.key != b.key
    assert a.key_hash != b.key_hash
    assert a.request.full_url != b.request.full_url


@SETTINGS
@given(product_ids, regions, product_ids, regions)
def test_different_prices_never_share_a_key(id_a, region_a, id_b, region_b):
    assume((id_a, region_a) != (id_b, region_b))
    a = prices.lookup_query({"productId": [id_a], "region": [region_a]})
    b = prices.lookup_query({"productId": [id_b], "region": [region_b]})
    assert a.key_hash != b.key_hash
    assert a.request.full_url != b.request.full_url


@SETTINGS
@given(product_ids, field_sets, product_ids, regions)
def test_the_two_endpoints_never_share_a_key(product_id, fields, price_id, region):
    a = products.lookup_query(product_query(product_id, fields))
    b = prices.lookup_query({"productId": [price_id], "region": [region]})
    assert a.key_hash != b.key_hash
    assert a.request.full_url != b.request.full_url


@SETTINGS
@given(product_ids, field_sets, regions)
def test_one_key_one_upstream_call_on_the_base_host(product_id, fields, region):
    """A key stands for exactly one upstream URL, on the configured host, below its path."""
    for lk in (
        products.lookup_query(product_query(product_id, fields)),
        prices.lookup_query({"productId": [product_id], "region": [region]}),
    ):
        url = urlsplit(lk.request.full_url)
        assert (url.scheme, url.netloc) == ("http", "upstream.internal:9000")
        assert url.path.startswith(f"/api/{lk.endpoint}/")
        assert ".." not in url.path.split("/") and "//" not in url.path


# -- bounded -------------------------------------------------------------------------------


@SETTINGS
@given(st.text(ID_CHARS, min_size=64, max_size=64), st.data())
def test_the_longest_keys_are_bounded(product_id, data):
    fields = data.draw(
        st.lists(
            st.text(FIELD_CHARS, min_size=64, max_size=64),
            min_size=MAX_FIELDS,
            max_size=MAX_FIELDS,
            unique=True,
        )
    )
    lk = products.lookup_query(product_query(product_id, fields))
    assert len(lk.key) <= MAX_KEY_LENGTH
    assert len(lk.key) <= len("products:") + 64 + 2 + MAX_FIELDS * 65
    assert len(lk.key_hash) == 32 and all(c in string.hexdigits for c in lk.key_hash)
    assert len(lk.name) <= 64


# -- invalid input: BadRequest and nothing else --------------------------------------------

names = st.sampled_from(["productId", "fields", "region", "productid", "other", ""]) | st.text(
    max_size=12
)
values = (
    st.text(max_size=80)
    | product_ids
    | st.builds(
        lambda v, h, at: v[:at] + h + v[at:],
        product_ids,
        st.sampled_from(HOSTILE),
        st.integers(0, 64),
    )
    | st.lists(field_names, max_size=60).map(",".join)
    | st.just("")
    | st.just(",")
)
queries = st.dictionaries(names, st.lists(values, max_size=3), max_size=4)


@settings(max_examples=400, deadline=None)
@given(queries)
def test_any_query_is_a_lookup_or_a_bad_request(query):
    for endpoint in (products, prices):
        try:
            lk = endpoint.lookup_query(query)
        except BadRequest as exc:
            assert isinstance(exc.detail, str) and exc.detail
            continue
        # Accepted: every parameter it used was given once and valid.
        assert len(query["productId"]) == 1
        assert set(query["productId"][0]) <= set(ID_CHARS)
        assert len(lk.key) <= MAX_KEY_LENGTH
        assert lk.request.full_url.startswith(BASE + "/")


@SETTINGS
@given(product_ids, st.sampled_from(HOSTILE), st.integers(0, 64))
def test_a_valid_id_with_anything_hostile_in_it_is_refused(product_id, hostile, at):
    bad = product_id[:at] + hostile + product_id[at:]
    short = product_id[: min(at, 16)] + hostile  # within the 32 characters of a region
    for endpoint, query in (
        (products, {"productId": [bad]}),
        (prices, {"productId": [bad], "region": ["eu"]}),
        (prices, {"productId": ["SKU1"], "region": [short]}),
        (products, {"productId": ["SKU1"], "fields": [bad]}),
        (products, {"productId": ["SKU1"], "fields": [f"name,{short}"]}),
    ):
        with pytest.raises(BadRequest):
            endpoint.lookup_query(query)


# -- make_key ------------------------------------------------------------------------------

endpoint_names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)


@SETTINGS
@given(endpoint_names, st.text(max_size=200))
def test_make_key_is_a_pure_function(endpoint, cache_key):
    assert make_key(endpoint, cache_key) == make_key(endpoint, cache_key)
    readable, key_hash = make_key(endpoint, cache_key)
    assert readable == f"{endpoint}:{cache_key}"
    assert len(key_hash) == 32


@SETTINGS
@given(endpoint_names, st.text(max_size=200), endpoint_names, st.text(max_size=200))
def test_make_key_keeps_different_inputs_apart(endpoint_a, key_a, endpoint_b, key_b):
    assume((endpoint_a, key_a) != (endpoint_b, key_b))
    assert make_key(endpoint_a, key_a)[1] != make_key(endpoint_b, key_b)[1]


@SETTINGS
@given(endpoint_names, st.integers(0, 3 * MAX_KEY_LENGTH))
def test_make_key_refuses_keys_over_the_bound(endpoint, length):
    cache_key = "k" * length
    if len(endpoint) + 1 + length <= MAX_KEY_LENGTH:
        assert len(make_key(endpoint, cache_key)[0]) <= MAX_KEY_LENGTH
    else:
        with pytest.raises(ValueError):
            make_key(endpoint, cache_key)
