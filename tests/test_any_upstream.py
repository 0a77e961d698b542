"""Any upstream: a bearer token, a POST read, per-tenant answers, refreshes rebuilt
through the endpoint, and parameters declared once (the third example, products/partner.py)."""

from __future__ import annotations

import json
import logging
import re
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from coalescing import BadRequest, runtime
from coalescing.models import CacheEntry
from products.endpoints import PriceEndpoint, ProductEndpoint
from products.partner import StockEndpoint
from testkit.upstream import FakeUpstream

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/coalescing/cacheentry/"


@pytest.fixture
def token(settings, upstream) -> str:
    """A fresh secret that the upstream requires, and the project sends."""
    secret = f"secret-{secrets.token_hex(12)}"
    settings.PRODUCT_API_BASE = upstream.url
    settings.PRODUCT_API_TOKEN = secret
    settings.COALESCING = {"UPSTREAM_TIMEOUT_MS": 2000}
    upstream.token = secret
    runtime.reset()
    yield secret
    runtime.reset()


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def stock(product: str = "SKU1", tenant: str | None = None):
    headers = {"HTTP_X_TENANT": tenant} if tenant else {}
    return Client().get(f"/stock/{product}", **headers)


def test_the_token_arrives_and_a_post_read_is_coalesced(token, upstream):
    upstream.delay = 0.3
    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(lambda _: stock("SKU1"), range(200)))
    assert [a.status_code for a in answers] == [200] * 200
    assert upstream.count == 1
    (call,) = upstream.calls
    assert call["method"] == "POST"
    assert call["headers"]["Authorization"] == f"Bearer {token}"
    assert json.loads(call["body"]) == {"productId": "SKU1", "tenant": None}


def test_without_the_token_the_upstream_refuses_and_nothing_is_stored(token, settings, upstream):
    settings.PRODUCT_API_TOKEN = "wrong"
    answer = stock("SKU2")
    assert answer.status_code == 502
    assert "no-store" in answer["Cache-Control"]
    runtime.get_coalescer().flush()
    assert not CacheEntry.objects.filter(endpoint="stock").exists()


def test_the_token_is_nowhere_but_on_the_wire(token, upstream, admin_client, settings, caplog):
    settings.COALESCING = {**settings.COALESCING, "REDIS_URL": _redis(), "REDIS_PREFIX": _prefix()}
    runtime.reset()
    caplog.set_level(logging.DEBUG)
    assert stock("SKU3", tenant="acme").status_code == 200
    assert stock("SKU3", tenant="acme")["X-Cache"] == "HIT"
    coalescer = runtime.get_coalescer()
    coalescer.flush()
    assert upstream.calls[0]["headers"]["Authorization"] == f"Bearer {token}"
    # The database rows, every column.
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT * FROM coalescing_cacheentry")
        rows = cursor.fetchall()
    assert rows
    assert token not in repr(rows) and token.encode() not in b"".join(
        bytes(v) for row in rows for v in row if isinstance(v, bytes | memoryview)
    )
    # Every value of every Redis key of this run.
    client = coalescer.guard("redis").tier.client
    keys = list(client.scan_iter(f"{settings.COALESCING['REDIS_PREFIX']}:*"))
    assert keys
    for key in keys:
        kind = client.type(key)
        value = client.hgetall(key) if kind == b"hash" else client.dump(key)
        assert token.encode() not in repr(value).encode()
    # The admin's list and entry pages, the metrics, the logs.
    (key_hash,) = CacheEntry.objects.filter(endpoint="stock").values_list("pk", flat=True)
    for page in (CHANGELIST, f"{CHANGELIST}{key_hash}/change/", "/metrics"):
        response = admin_client.get(page)
        assert response.status_code == 200, page
        assert token not in response.content.decode()
    assert token not in caplog.text
    assert "upstream call endpoint=stock" in caplog.text


def test_an_admin_refresh_repeats_the_post_with_its_body(token, upstream, admin_client):
    assert stock("SKU4", tenant="acme").status_code == 200
    runtime.get_coalescer().flush()
    (key_hash,) = CacheEntry.objects.filter(endpoint="stock").values_list("pk", flat=True)
    response = admin_client.post(
        CHANGELIST, {"action": "refresh_now", "_selected_action": [key_hash]}, follow=True
    )
    assert "Refreshed 1 cache entries." in response.content.decode()
    first, again = upstream.calls
    assert again["method"] == "POST"
    assert again["body"] == first["body"]
    assert json.loads(again["body"]) == {"productId": "SKU4", "tenant": "acme"}
    assert again["headers"]["Authorization"] == f"Bearer {token}"


def test_the_command_refresh_repeats_the_post(token, upstream):
    assert stock("SKU5").status_code == 200
    call_command("invalidate", "stock", "productId=SKU5", "--refresh")
    assert [c["method"] for c in upstream.calls] == ["POST", "POST"]
    assert upstream.calls[1]["body"] == upstream.calls[0]["body"]


def test_a_refresh_after_a_restart_reaches_the_upstream_of_todays_settings(
    token, settings, upstream, admin_client
):
    """The entry is made under one upstream address; the server comes back with
    another (a new port); the admin's refresh goes to the new one."""
    assert stock("SKU6").status_code == 200
    runtime.get_coalescer().flush()
    moved = FakeUpstream()
    try:
        moved.token = token
        settings.PRODUCT_API_BASE = moved.url
        runtime.reset()  # the restart: nothing kept in memory
        (key_hash,) = CacheEntry.objects.filter(endpoint="stock").values_list("pk", flat=True)
        admin_client.post(CHANGELIST, {"action": "refresh_now", "_selected_action": [key_hash]})
        assert moved.count == 1 and moved.calls[0]["method"] == "POST"
        assert upstream.count == 1  # the old address saw only the first call
    finally:
        moved.close()


def test_invalidate_refresh_says_so_and_fails_when_the_upstream_does(token, upstream):
    assert stock("SKU7").status_code == 200
    upstream.mode, upstream.status = "status", 503
    with pytest.raises(CommandError, match=r"refresh failed.*stale value is still served"):
        call_command("invalidate", "stock", "productId=SKU7", "--refresh")
    assert stock("SKU7").status_code == 200  # the stale value still serves clients


# -- vary: answers per caller -----------------------------------------------------


def test_two_tenants_at_once_make_two_calls_and_never_see_each_other(token, upstream):
    upstream.delay = 0.3
    tenants = ["acme", "globex"] * 50
    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(lambda t: (t, stock("SKU8", tenant=t)), tenants))
    assert upstream.count == 2
    # The upstream numbers its calls: each tenant's answers are all of its own call.
    call_of = {json.loads(c["body"])["tenant"]: n for n, c in enumerate(upstream.calls, 1)}
    for tenant, answer in answers:
        assert answer.status_code == 200
        assert answer["Cache-Control"].startswith("private")
        assert json.loads(answer.content)["n"] == call_of[tenant]


def test_tenants_stay_apart_across_processes_sharing_redis(token, settings, upstream):
    settings.COALESCING = {**settings.COALESCING, "REDIS_URL": _redis(), "REDIS_PREFIX": _prefix()}
    runtime.reset()
    first, second = runtime._build(), runtime._build()
    upstream.delay = 0.3
    endpoint = StockEndpoint()

    def ask(arg):
        coalescer, tenant = arg
        lk = endpoint.lookup_query({"productId": ["SKU9"]}, tenant)
        return tenant, coalescer.get(lk)

    work = [(c, t) for c in (first, second) for t in ("acme", "globex")] * 25
    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(ask, work))
    assert upstream.count == 2
    by_tenant = {t: {json.loads(a.entry.body)["n"] for tt, a in answers if tt == t} for t in
                 ("acme", "globex")}  # fmt: skip
    assert all(len(ns) == 1 for ns in by_tenant.values())
    assert by_tenant["acme"] != by_tenant["globex"]
    for c in (first, second):
        c.flush()
        c.close()


# -- parameters declared once --------------------------------------------------------


def _parameters(path: str) -> list[dict]:
    spec = json.loads(Client().get("/openapi.json").content)
    return spec["paths"][path]["get"]["parameters"]


@pytest.mark.parametrize(
    ("path", "endpoint", "others"),
    [
        ("/products", ProductEndpoint, {}),
        ("/prices", PriceEndpoint, {"region": "eu"}),
        ("/stock/{productId}", StockEndpoint, {}),
    ],
)
def test_the_docs_parameters_are_what_validation_enforces(path, endpoint, others):
    parameters = _parameters(path)
    declared = endpoint.params_schema.model_json_schema()
    assert {p["name"] for p in parameters} == set(declared["properties"])
    assert {p["name"] for p in parameters if p["required"]} == set(declared.get("required", ()))
    for parameter in parameters:
        _check_pattern(endpoint, parameter["name"], parameter["schema"]["pattern"], others)


def _check_pattern(endpoint, name: str, pattern: str, others: dict[str, str]) -> None:
    """Values the documented pattern allows are accepted; others refused."""

    @hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=st.one_of(st.from_regex(pattern, fullmatch=True), st.text(max_size=80)))
    def check(value):
        query = {**{k: [v] for k, v in others.items()}, "productId": ["SKU1"], name: [value]}
        # Python's $ also matches before a final newline; JSON schema's does not.
        documented = re.fullmatch(pattern, value) is not None and "\n" not in value
        if name == "fields" and documented:
            # The one rule a pattern cannot say (its description does).
            documented = len(set(value.split(",")) - {""}) <= 50
        try:
            endpoint().parse(query)
            accepted = True
        except BadRequest:
            accepted = False
        assert accepted == documented, (name, value)

    check()


def test_a_parameter_given_twice_is_refused_naming_it(token):
    answer = Client().get("/products?productId=A&productId=B")
    assert answer.status_code == 400
    assert json.loads(answer.content)["detail"].startswith("productId must be given once")
    bad = Client().get("/prices", {"productId": "A", "region": "no way"})
    assert bad.status_code == 400 and json.loads(bad.content)["detail"].startswith("region")
    assert stock("bad!id").status_code == 400


# -- helpers ------------------------------------------------------------------------------


def _redis() -> str:
    from tests.conftest import REDIS_URL

    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception:
        from tests.conftest import missing_service

        missing_service(f"Redis does not answer at {REDIS_URL}")
    return REDIS_URL


def _prefix() -> str:
    return f"any-upstream-{uuid.uuid4().hex[:8]}"
