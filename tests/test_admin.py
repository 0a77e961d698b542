"""The admin of cache entries, in-process with Django's test client."""

from __future__ import annotations

import time
import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from coalescing import registry, runtime
from coalescing.entry import Entry
from coalescing.models import CacheEntry
from products.endpoints import ProductEndpoint
from tests.conftest import make_entry

CHANGELIST = "/admin/coalescing/cacheentry/"
SUMMARY = "/admin/coalescing/cacheentry/summary/"
# The settings' windows (tests run with the defaults of CONTRACT.md).
FRESH_MS, STALE_MS, ERROR_MS, NEGATIVE_MS = 10_000, 60_000, 300_000, 5_000


@pytest.fixture(autouse=True)
def fresh_coalescer(settings, upstream):
    settings.PRODUCT_API_BASE = upstream.url
    runtime.reset()
    yield
    runtime.reset()


def lookup_params(product: str) -> str:
    """What a lookup of ``product`` stores as its parameters: how a refresh asks again."""
    return ProductEndpoint().lookup_query({"productId": [product]}).params


def store(*entries: Entry) -> dict[str, str]:
    CacheEntry.objects.upsert_many(entries)
    return {e.name: e.key_hash for e in entries}


@pytest.fixture
def staff_client(db) -> Client:
    user = User.objects.create_user("ops", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__endswith="_cacheentry"))
    client = Client()
    client.force_login(user)
    return client


def listed(response) -> set[str]:
    assert response.status_code == 200, response.content[:500]
    return {obj.name for obj in response.context["cl"].result_list}


# -- who may see it ---------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", [CHANGELIST, SUMMARY])
def test_anonymous_users_are_sent_to_the_login_page(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
@pytest.mark.parametrize("path", [CHANGELIST, SUMMARY])
def test_users_who_are_not_staff_are_refused(client, path):
    user = User.objects.create_user("someone", password="pw")
    user.user_permissions.set(Permission.objects.filter(codename__endswith="_cacheentry"))
    client.force_login(user)
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
def test_staff_without_the_model_permissions_are_refused(client):
    client.force_login(User.objects.create_user("intern", password="pw", is_staff=True))
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(SUMMARY).status_code == 403


# -- the list -----------------------------------------------------------------------


@pytest.mark.django_db
def test_changelist_shows_the_columns_newest_first(staff_client):
    store(
        make_entry("OLD", age_ms=30_000),
        make_entry("NEW", age_ms=1_000),
        make_entry("GONE", age_ms=3_000, status=404),
    )
    response = staff_client.get(CHANGELIST)
    names = [obj.name for obj in response.context["cl"].result_list]
    assert names == ["NEW", "GONE", "OLD"]
    html = response.content.decode()
    assert "products:NEW::*" in html
    for badge in (">fresh<", ">stale<", ">negative<"):
        assert badge in html
    assert "Summary" in html  # the link to the summary view
    assert "Add cache entry" not in html  # entries come from the upstream only
    assert "delete_selected" not in html  # replaced by the action that evicts every tier
    assert "delete_entries" in html and "refresh_now" in html


@pytest.mark.django_db
def test_search_finds_a_product_by_its_id_and_a_key_by_its_hash(staff_client):
    hashes = store(
        make_entry("SKU1", age_ms=1_000),
        make_entry("SKU2", age_ms=1_000),
        make_entry("SKU10", age_ms=1_000),
    )
    # prices are coalesced by region: the productId is only in the readable key
    price = make_entry(
        "eu", cache_key="eu::SKU1", endpoint="prices", body=b"{}", fetched_at=time.time()
    )
    CacheEntry.objects.upsert_many([price])

    assert listed(staff_client.get(CHANGELIST, {"q": "SKU2"})) == {"SKU2"}
    assert listed(staff_client.get(CHANGELIST, {"q": "SKU1"})) == {"SKU1", "SKU10", "eu"}
    assert listed(staff_client.get(CHANGELIST, {"q": "products:SKU1::"})) == {"SKU1"}
    assert listed(staff_client.get(CHANGELIST, {"q": hashes["SKU10"]})) == {"SKU10"}
    assert listed(staff_client.get(CHANGELIST, {"q": "eu"})) == {"eu"}
    assert listed(staff_client.get(CHANGELIST, {"q": "SKU1", "endpoint": "prices"})) == {"eu"}


@pytest.mark.django_db
def test_search_with_many_matches_takes_the_plain_path(staff_client, monkeypatch):
    from coalescing import admin as cache_admin

    monkeypatch.setattr(cache_admin, "SEARCH_PIN_LIMIT", 1)
    store(
        make_entry("SKU1", age_ms=1_000),
        make_entry("SKU2", age_ms=1_000),
        make_entry("SKU10", age_ms=1_000),
    )
    assert listed(staff_client.get(CHANGELIST, {"q": "SKU1"})) == {"SKU1", "SKU10"}
    assert listed(staff_client.get(CHANGELIST, {"q": "SKU2"})) == {"SKU2"}


@pytest.mark.django_db
def test_state_filter_is_a_query_with_each_endpoints_windows(staff_client, monkeypatch):
    class Quick(ProductEndpoint):
        pass

    Quick.name = "quick"  # set after the class statement: not registered for good
    Quick.fresh_ttl_ms, Quick.stale_ttl_ms = 2_000, 3_000
    monkeypatch.setitem(registry._endpoints, "quick", Quick)
    store(
        make_entry("FRESH", age_ms=1_000),
        make_entry("STALE", age_ms=FRESH_MS + 5_000),
        make_entry("EXPIRED", age_ms=STALE_MS + 5_000),
        make_entry("DEAD", age_ms=ERROR_MS + 5_000),
        make_entry("NEG", age_ms=1_000, status=404),
        make_entry("NEG-OLD", age_ms=NEGATIVE_MS + 1_000, status=404),
        # 5 s old: fresh by the settings, expired by its endpoint's 3 s stale window
        make_entry("QUICK", age_ms=5_000, endpoint="quick"),
        make_entry("QUICK-NEW", age_ms=0, endpoint="quick"),
        # an endpoint no longer registered: the settings' windows
        make_entry("ORPHAN", age_ms=FRESH_MS + 5_000, endpoint="retired"),
    )
    cases = {
        "fresh": {"FRESH", "QUICK-NEW"},
        "stale": {"STALE", "ORPHAN"},
        "expired": {"EXPIRED", "DEAD", "NEG-OLD", "QUICK"},
        "negative": {"NEG"},
    }
    for state, expected in cases.items():
        assert listed(staff_client.get(CHANGELIST, {"state": state})) == expected, state
    assert len(listed(staff_client.get(CHANGELIST))) == 9
    html = staff_client.get(CHANGELIST, {"state": "expired"}).content.decode()
    assert html.count("purgeable</small>") == 2  # DEAD and NEG-OLD


@pytest.mark.django_db
def test_endpoint_filter(staff_client):
    store(make_entry("A", age_ms=1_000), make_entry("B", age_ms=1_000, endpoint="prices"))
    assert listed(staff_client.get(CHANGELIST, {"endpoint": "prices"})) == {"B"}
    assert listed(staff_client.get(CHANGELIST, {"endpoint": "products"})) == {"A"}


@pytest.mark.django_db
def test_the_list_does_not_count_a_huge_table(staff_client, monkeypatch):
    from coalescing.admin import CacheEntryAdmin, CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "cap", 3)
    monkeypatch.setattr(CacheEntryAdmin, "list_per_page", 2)
    store(*(make_entry(f"P{i}", age_ms=1_000 + i) for i in range(6)))
    response = staff_client.get(CHANGELIST)
    assert "more than 3 cache entries" in response.content.decode()
    assert listed(response) == {"P0", "P1"}
    assert response.context["cl"].paginator.num_pages == 2  # pages run up to the cap


@pytest.mark.django_db
def test_an_entry_page_shows_the_body_pretty_and_read_only(staff_client):
    hashes = store(make_entry("SKU9", age_ms=1_000))
    url = f"{CHANGELIST}{hashes['SKU9']}/change/"
    response = staff_client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "{\n  &quot;id&quot;: &quot;SKU9&quot;,\n  &quot;price&quot;: 3\n}" in html
    assert 'name="_save"' not in html  # nothing to save
    assert staff_client.post(url, {"status": "500"}).status_code == 403
    assert CacheEntry.objects.get(pk=hashes["SKU9"]).status == 200


# -- the actions ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_refresh_now_makes_one_upstream_call_per_entry(staff_client, upstream):
    entries = [make_entry(p, age_ms=40_000, params=lookup_params(p)) for p in ("R1", "R2", "R3")]
    hashes = store(*entries)
    before = {e.key_hash: round(e.fetched_at * 1000) for e in entries}
    chosen = [hashes["R1"], hashes["R2"]]

    response = staff_client.post(
        CHANGELIST, {"action": "refresh_now", "_selected_action": chosen}, follow=True
    )
    assert response.status_code == 200
    assert "Refreshed 2 cache entries." in response.content.decode()
    assert upstream.count == 2
    assert sorted(c["path"] for c in upstream.calls) == ["/products/R1", "/products/R2"]
    rows = {r.key_hash: r for r in CacheEntry.objects.all()}
    for key_hash in chosen:
        assert rows[key_hash].fetched_at_ms > before[key_hash] + 30_000
        assert b'"n"' in bytes(rows[key_hash].body)  # the fake upstream's answer
    assert rows[hashes["R3"]].fetched_at_ms == before[hashes["R3"]]


@pytest.mark.django_db(transaction=True)
def test_refresh_now_reports_an_upstream_failure(staff_client, upstream):
    hashes = store(make_entry("R1", age_ms=40_000, params=lookup_params("R1")))
    upstream.mode, upstream.status = "status", 503
    response = staff_client.post(
        CHANGELIST, {"action": "refresh_now", "_selected_action": [hashes["R1"]]}, follow=True
    )
    assert "1 not refreshed" in response.content.decode()
    assert upstream.count == 1


@pytest.mark.django_db(transaction=True)
def test_delete_removes_entries_from_the_database_and_the_memory_tier(staff_client, upstream):
    for product in ("D1", "D2", "KEEP"):
        assert Client().get("/products", {"productId": product}).status_code == 200
    coalescer = runtime.get_coalescer()
    coalescer.flush()
    hashes = dict(CacheEntry.objects.values_list("name", "key_hash"))
    assert all(coalescer.memory.get(h) is not None for h in hashes.values())

    chosen = [hashes["D1"], hashes["D2"]]
    response = staff_client.post(
        CHANGELIST, {"action": "delete_entries", "_selected_action": chosen}, follow=True
    )
    assert "Deleted 2 cache entries." in response.content.decode()
    assert set(CacheEntry.objects.values_list("name", flat=True)) == {"KEEP"}
    assert coalescer.memory.get(hashes["D1"]) is None
    assert coalescer.memory.get(hashes["D2"]) is None
    assert coalescer.memory.get(hashes["KEEP"]) is not None
    # the next request goes to the upstream again
    calls = upstream.count
    assert Client().get("/products", {"productId": "D1"})["X-Cache"] == "MISS"
    assert upstream.count == calls + 1


@pytest.mark.django_db(transaction=True)
def test_delete_evicts_the_redis_tier_too(staff_client, settings, redis_url):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings.COALESCING = {"REDIS_URL": redis_url, "REDIS_PREFIX": prefix}
    assert Client().get("/products", {"productId": "R1"})["X-Cache"] == "MISS"
    coalescer = runtime.get_coalescer()
    coalescer.flush()
    row = CacheEntry.objects.get()
    redis_tier = coalescer.guard("redis").tier
    try:
        assert redis_tier.get(row.key_hash, row.name) is not None
        response = staff_client.post(
            CHANGELIST, {"action": "delete_entries", "_selected_action": [row.key_hash]}
        )
        assert response.status_code == 302
        assert redis_tier.get(row.key_hash, row.name) is None
        assert coalescer.memory.get(row.key_hash) is None
        assert not CacheEntry.objects.exists()
    finally:
        for key in redis_tier.client.scan_iter(f"{prefix}:*"):
            redis_tier.client.delete(key)


@pytest.mark.django_db(transaction=True)
def test_deleting_from_the_entry_page_evicts_the_memory_tier(staff_client):
    assert Client().get("/products", {"productId": "ONE"}).status_code == 200
    coalescer = runtime.get_coalescer()
    coalescer.flush()
    key_hash = CacheEntry.objects.get().key_hash
    response = staff_client.post(f"{CHANGELIST}{key_hash}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not CacheEntry.objects.exists()
    assert coalescer.memory.get(key_hash) is None


# -- the summary ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_summary_counts_entries_per_endpoint_and_state_and_draws_the_counters(staff_client):
    store(
        make_entry("F1", age_ms=1_000),
        make_entry("F2", age_ms=1_000),
        make_entry("S", age_ms=FRESH_MS + 1_000),
        make_entry("X", age_ms=ERROR_MS + 1_000),
        make_entry("N", age_ms=1_000, status=404),
        make_entry("P", age_ms=1_000, endpoint="prices"),
        make_entry("O", age_ms=ERROR_MS + 1_000, endpoint="retired"),
    )
    assert Client().get("/products", {"productId": "NEWONE"})["X-Cache"] == "MISS"
    runtime.get_coalescer().flush()

    response = staff_client.get(SUMMARY)
    assert response.status_code == 200
    rows = {row["endpoint"]: row for row in response.context["rows"]}
    products = rows["products"]
    assert products["by_state"] == [3, 1, 1, 1]  # fresh (F1, F2, NEWONE), stale, expired, neg.
    assert (products["purgeable"], products["total"]) == (1, 6)
    assert rows["prices"]["by_state"] == [1, 0, 0, 0]
    other = rows["retired"]
    assert (other["by_state"], other["purgeable"], other["total"]) == ([0, 0, 1, 0], 1, 1)

    html = response.content.decode()
    assert "<svg" in html and "coalesced waiters" in html and "upstream" in html
    assert "http://" not in html.split("<svg", 1)[1].split("</svg>", 1)[0].replace(
        "http://www.w3.org/2000/svg", ""
    )  # drawn here, nothing fetched from elsewhere
    bars = {row["label"]: row for row in response.context["chart"]["rows"] if "label" in row}
    assert float(bars["miss"]["value"]) >= 1
    assert float(bars["calls"]["value"]) >= 1
