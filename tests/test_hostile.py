"""Abuse: hostile parameters, headers and cookies, a hostile upstream, strangers
at the admin, and a production start without a secret.

What tests/test_coalescer.py, test_admin.py and test_settings.py already pin
(the client's Cookie, Authorization and X-Forwarded-For not sent upstream; an
upstream Set-Cookie not replayed on a miss; anonymous and non-staff users sent
away from the list and the summary; ``check`` naming SECRET_KEY) is not
repeated here.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from urllib.parse import urlsplit

import pytest
import requests
from django.contrib.auth.models import Permission, User
from django.test import Client

from coalescing import runtime
from coalescing.models import CacheEntry
from testkit.servers import PYTHON, ROOT, free_port, manage, serve, server_env
from testkit.upstream import HOSTILE_HEADERS

# -- parameters never choose the host nor climb the path ----------------------------

#: Raw query values, percent-encoded as a client would send them.
HOSTILE_VALUES = [
    "../../x",
    "..%2F..%2Fx",
    "%2e%2e%2f%2e%2e%2fx",
    "%252e%252e%252f",  # encoded twice
    "..",
    ".",
    "%2e",
    "SKU1%2F..%2F..%2Fadmin",
    "SKU1/../../admin",
    "@evil.com",
    "%40evil.com",
    "//evil.com",
    "%2F%2Fevil.com",
    "http://evil.com/",
    "evil.com:80@x",
    "\\\\evil.com",
    "%5C%5Cevil.com",
    "SKU1%0D%0AHost:%20evil.com",
    "SKU1%0AX-Injected:%201",
    "SKU1%0D%0A%0D%0AGET%20/admin",
    "SKU1%00",
    "SKU1%09",
    "%20SKU1",
    "SKU1;evil",
    "SKU1%3Fx=1",
    "SKU1%23frag",
    "%EF%BC%B3%EF%BC%AB%EF%BC%B5%EF%BC%91",  # fullwidth SKU1
    "SKU1%E2%88%95x",  # division slash
    "%E2%80%A4%E2%80%A4",  # one-dot leaders
    "%C0%AE%C0%AE%C0%AF",  # overlong UTF-8 for ../
    "SKU%E2%80%AE1",  # right-to-left override
    "SKU%E2%80%8B1",  # zero-width space
    "%FF%FE",
]


@pytest.fixture
def base(settings, upstream) -> str:
    """The upstream mounted below a path, so that climbing out of it would show."""
    settings.PRODUCT_API_BASE = upstream.url + "/api/v1"
    runtime.reset()
    yield settings.PRODUCT_API_BASE
    runtime.reset()


def _assert_nothing_escaped(upstream) -> None:
    """Every call the upstream got stayed on its host and below its base path."""
    host = urlsplit(upstream.url).netloc
    for call in upstream.calls:
        path = str(call["path"])
        assert path.startswith(("/api/v1/products/", "/api/v1/prices/")), path
        assert ".." not in path.split("/") and "//" not in path, path
        assert "%2F" not in path.upper() and "%5C" not in path.upper(), path
        assert call["headers"]["Host"] == host


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_hostile_values_in_any_parameter_reach_nothing(client, base, upstream, value):
    for query in (
        f"/products?productId={value}",
        f"/products?productId=SKU1&fields={value}",
        f"/products?productId=SKU1&fields=name,{value}",
        f"/prices?productId={value}&region=eu",
        f"/prices?productId=SKU1&region={value}",
    ):
        answer = client.get(query)
        assert answer.status_code == 400, (query, answer.content)
        assert json.loads(answer.content)["detail"]
    assert upstream.count == 0


@pytest.mark.django_db(transaction=True)
def test_the_edge_of_what_is_accepted_stays_below_the_base(client, base, upstream):
    for query, path in [
        ("/products?productId=-", "/api/v1/products/-"),
        ("/products?productId=_", "/api/v1/products/_"),
        ("/products?productId=--x_1", "/api/v1/products/--x_1"),
        ("/products?productId=" + "Z" * 64, "/api/v1/products/" + "Z" * 64),
        ("/prices?productId=-&region=_", "/api/v1/prices/_/-"),
    ]:
        answer = client.get(query)
        assert answer.status_code == 200, answer.content
        assert json.loads(answer.content)["path"] == path
    _assert_nothing_escaped(upstream)


@pytest.mark.django_db(transaction=True)
def test_the_host_header_and_forwarded_headers_do_not_move_the_upstream(settings, base, upstream):
    settings.ALLOWED_HOSTS = ["*"]
    settings.USE_X_FORWARDED_HOST = True
    answer = Client().get(
        "/products?productId=HOSTX",
        HTTP_HOST="evil.com",
        HTTP_X_FORWARDED_HOST="evil.com",
        HTTP_X_FORWARDED_PROTO="https",
        HTTP_FORWARDED="host=evil.com;proto=https",
    )
    assert answer.status_code == 200
    assert json.loads(answer.content)["path"] == "/api/v1/products/HOSTX"
    _assert_nothing_escaped(upstream)


# -- a real server: headers, cookies, hop-by-hop ------------------------------------------

#: What a client sends that must reach neither the upstream nor anyone else.
CLIENT_SECRETS = {
    "Authorization": "Bearer client-a-token",
    "Proxy-Authorization": "Basic Y2xpZW50LWE=",
    "Cookie": "sessionid=client-a-session; csrftoken=client-a-csrf",
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Host": "client-a.example",
    "X-Forwarded-Proto": "https",
    "Forwarded": "for=203.0.113.7;host=client-a.example",
    "X-Real-IP": "203.0.113.7",
    "X-Api-Key": "client-a-api-key",
    "X-Request-Id": "client-a-request",
    "If-None-Match": '"client-a-etag"',
    "Accept-Encoding": "gzip, br",
    "Accept-Language": "de-CH",
    "User-Agent": "client-a-browser",
}
#: The only headers the upstream may see: the client's own fixed set.
UPSTREAM_HEADERS = {"host", "user-agent", "accept", "accept-encoding", "connection"}
SECRET_MARKERS = ["client-a", "203.0.113.7", "Y2xpZW50LWE"]


@pytest.fixture
def server(upstream, tmp_path):
    env = {
        "PRODUCT_API_BASE": upstream.url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'hostile.sqlite3'}",
        "UPSTREAM_TIMEOUT_MS": "2000",
        "ALLOWED_HOSTS": "*",
    }
    migrated = manage("migrate", "--noinput", env=env)
    assert migrated.returncode == 0, migrated.stderr
    srv = serve(env)
    srv.db_path = tmp_path / "hostile.sqlite3"
    yield srv
    srv.stop()


def _no_secret_in(answer: requests.Response) -> None:
    text = json.dumps(dict(answer.headers)) + answer.text
    for marker in SECRET_MARKERS:
        assert marker not in text, (marker, answer.headers, answer.text)


@pytest.mark.e2e
def test_one_clients_headers_reach_neither_the_upstream_nor_another_client(server, upstream):
    first = requests.get(
        f"{server.url}/products?productId=HDR1&fields=name",
        headers={**CLIENT_SECRETS, "Host": "client-a.example"},
        timeout=10,
    )
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    second = requests.get(f"{server.url}/products?productId=HDR1&fields=name", timeout=10)
    assert second.headers["X-Cache"] == "HIT"
    assert second.content == first.content
    for answer in (first, second):
        _no_secret_in(answer)
    # Django's CSRF middleware answers a malformed csrftoken cookie with a fresh one
    # of its own; nothing else sets a cookie, and a client who sent none gets none.
    assert set(first.cookies.keys()) <= {"csrftoken"}
    assert "Set-Cookie" not in second.headers
    sent = upstream.calls[0]["headers"]
    assert {name.lower() for name in sent} <= UPSTREAM_HEADERS, sent
    assert sent["Host"] == urlsplit(upstream.url).netloc
    assert sent["Accept-Encoding"] == "identity"
    for marker in SECRET_MARKERS:
        assert marker not in json.dumps(sent)


@pytest.mark.e2e
def test_upstream_set_cookie_and_hop_by_hop_headers_are_neither_stored_nor_replayed(
    server, upstream
):
    upstream.mode = "hop"
    answers = [requests.get(f"{server.url}/products?productId=HOP1", timeout=10) for _ in range(2)]
    assert [a.headers["X-Cache"] for a in answers] == ["MISS", "HIT"]
    for answer in answers:
        assert answer.status_code == 200
        assert json.loads(answer.content)["path"] == "/products/HOP1"
        for name, value in HOSTILE_HEADERS:
            assert answer.headers.get(name) != value, (name, answer.headers)
        for name in ("Set-Cookie", "Proxy-Authenticate", "Upgrade", "Trailer", "Keep-Alive"):
            assert name not in answer.headers, (name, answer.headers)
        assert "X-Upstream-Secret" not in answer.headers
        assert "upstream" not in answer.headers.get("Connection", "").lower()
    # The session of the upstream client keeps no cookie: the next call sends none.
    upstream.mode = "ok"
    requests.get(f"{server.url}/products?productId=HOP2", timeout=10)
    assert "Cookie" not in upstream.calls[-1]["headers"]
    # What is stored is the body and nothing else of the answer.
    assert server.stop() == 0  # written out
    with sqlite3.connect(server.db_path) as db:
        rows = db.execute("SELECT * FROM coalescing_cacheentry").fetchall()
    assert rows
    for row in rows:
        text = " ".join(str(v) for v in row)
        assert "upstream-secret" not in text and "upstream-tracker" not in text
        assert "h2c" not in text and "realm" not in text


# -- the admin refuses strangers, also by POST ------------------------------------------------

CHANGELIST = "/admin/coalescing/cacheentry/"


@pytest.fixture
def stored(upstream, settings, db):
    """One entry in the database; its key hash."""
    settings.PRODUCT_API_BASE = upstream.url
    runtime.reset()
    assert Client().get("/products", {"productId": "ADM1"}).status_code == 200
    runtime.get_coalescer().flush()
    key_hash = CacheEntry.objects.get().key_hash
    upstream.calls.clear()
    yield key_hash
    runtime.reset()


def _user(name: str, *, staff: bool, perms: str = "") -> Client:
    user = User.objects.create_user(name, password="pw", is_staff=staff)
    if perms:
        user.user_permissions.set(Permission.objects.filter(codename__in=perms.split()))
    client = Client()
    client.force_login(user)
    return client


def _strangers() -> dict[str, Client]:
    all_perms = "view_cacheentry change_cacheentry delete_cacheentry"
    return {
        "anonymous": Client(),
        "user with every permission but not staff": _user("u1", staff=False, perms=all_perms),
        "staff without permissions": _user("u2", staff=True),
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("action", ["refresh_now", "delete_entries", "delete_selected"])
def test_admin_actions_by_post_refuse_strangers(stored, upstream, action):
    for who, client in _strangers().items():
        answer = client.post(CHANGELIST, {"action": action, "_selected_action": [stored]})
        assert answer.status_code in (302, 403), who
        if answer.status_code == 302:
            assert answer["Location"].startswith("/admin/login/"), who
        assert CacheEntry.objects.filter(pk=stored).exists(), who
        assert runtime.get_coalescer().memory.get(stored) is not None, who
    assert upstream.count == 0


@pytest.mark.django_db(transaction=True)
def test_an_entry_page_and_its_delete_refuse_strangers(stored):
    for who, client in _strangers().items():
        for path in (f"{CHANGELIST}{stored}/change/", f"{CHANGELIST}{stored}/delete/"):
            assert client.get(path).status_code in (302, 403), (who, path)
            assert client.post(path, {"post": "yes"}).status_code in (302, 403), (who, path)
        assert CacheEntry.objects.filter(pk=stored).exists(), who


@pytest.mark.django_db(transaction=True)
def test_staff_who_may_only_view_cannot_refresh_or_delete(stored, upstream):
    viewer = _user("viewer", staff=True, perms="view_cacheentry")
    assert viewer.get(CHANGELIST).status_code == 200
    for action in ("refresh_now", "delete_entries"):
        viewer.post(CHANGELIST, {"action": action, "_selected_action": [stored]})
    assert viewer.post(f"{CHANGELIST}{stored}/delete/", {"post": "yes"}).status_code == 403
    assert CacheEntry.objects.filter(pk=stored).exists()
    assert upstream.count == 0


@pytest.mark.django_db(transaction=True)
def test_admin_actions_need_the_csrf_token(stored, upstream):
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    answer = client.post(CHANGELIST, {"action": "delete_entries", "_selected_action": [stored]})
    assert answer.status_code == 403
    assert CacheEntry.objects.filter(pk=stored).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_the_api_changes_nothing_on_other_methods(stored, upstream, method):
    answer = getattr(Client(), method)("/products?productId=ADM1")
    assert answer.status_code == 405
    assert CacheEntry.objects.filter(pk=stored).exists()
    assert runtime.get_coalescer().memory.get(stored) is not None
    assert upstream.count == 0


# -- no production start without a secret ---------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("server_kind", ["gunicorn", "serve"])
def test_servers_refuse_to_start_in_production_without_a_secret_key(server_kind):
    env = server_env({"DEBUG": "0", "SECRET_KEY": ""})
    port = str(free_port())
    args = {
        "gunicorn": [PYTHON, "-m", "gunicorn", "-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}"]
        + ["coalesce_project.wsgi"],
        "serve": [PYTHON, "manage.py", "serve", "--port", port],
    }[server_kind]
    started = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "SECRET_KEY" in done.stdout + done.stderr
    assert time.monotonic() - started < 60


def test_a_blank_secret_key_is_a_missing_one():
    done = manage("check", env={"DEBUG": "0", "SECRET_KEY": "   "}, timeout=60)
    assert done.returncode != 0
    assert "SECRET_KEY" in done.stderr


@pytest.mark.parametrize("name", ["a:b", "", "x" * 65, "with space", "new\nline"])
def test_an_endpoint_name_that_could_collide_or_break_a_message_is_refused(name):
    from coalescing import CoalescedEndpoint

    # ``<name>:<key>`` is the readable key: with a ':' in the name, endpoint
    # "a:b" with key "c" and endpoint "a" with key "b:c" would share entries.
    with pytest.raises(ValueError, match="name must be"):
        type("Colliding", (CoalescedEndpoint,), {"name": name})
