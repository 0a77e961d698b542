"""HTTP caching towards clients (RFC 9111): what a browser, nginx or a CDN sees.

In-process with Django's test client and a clock we move, for the arithmetic
and each tier; against ``manage.py serve`` for a restart and for the framing
of HEAD and 304 on a keep-alive connection.
"""

from __future__ import annotations

import re
import socket
import time
import uuid

import pytest
from django.test import Client

from coalescing import runtime
from coalescing.entry import Entry, Policy, State, body_etag
from coalescing.errors import UpstreamOverloaded
from coalescing.reads import Answer
from coalescing.responses import build_response, cache_control, etag_matches
from testkit.servers import manage, parse_cache_status, serve, uvicorn
from tests.conftest import Clock

pytestmark = pytest.mark.django_db(transaction=True)

FRESH_MS, STALE_MS, ERROR_MS, NEGATIVE_MS = 10_000, 60_000, 300_000, 5_000
POLICY = Policy(FRESH_MS, STALE_MS, ERROR_MS, NEGATIVE_MS)
#: What every 200 says: the fresh lifetime, then the stale windows counted from
#: staleness (RFC 5861), as ours are counted from the fetch.
CACHE_CONTROL = "public, max-age=10, stale-while-revalidate=50, stale-if-error=290"
#: What a 304 repeats of the 200 it stands for.
REPEATED = ("ETag", "Cache-Control", "X-Cache", "Cache-Status", "Age")


def configure(settings, upstream, **extra: object) -> Clock:
    settings.PRODUCT_API_BASE = upstream.url
    settings.COALESCING = {
        "FRESH_TTL_MS": FRESH_MS,
        "STALE_TTL_MS": STALE_MS,
        "STALE_IF_ERROR_MS": ERROR_MS,
        "NEGATIVE_TTL_MS": NEGATIVE_MS,
        "UPSTREAM_TIMEOUT_MS": 1000,
        **extra,
    }
    runtime.reset()
    clock = Clock()
    runtime.get_coalescer().clock = clock
    return clock


def settle() -> None:
    """Let background flights land, then drop the coalescer (and its threads)."""
    coalescer = runtime.get_coalescer()
    deadline = time.monotonic() + 10
    while len(coalescer.flights) and time.monotonic() < deadline:
        time.sleep(0.01)
    runtime.reset()


@pytest.fixture
def clock(settings, upstream):
    yield configure(settings, upstream)
    settle()


@pytest.fixture
def client() -> Client:
    return Client()


def get(client: Client, product: str = "SKU1", method: str = "get", **headers: str):
    call = getattr(client, method)
    return call("/products", {"productId": product, "fields": "name,price"}, headers=headers)


def directives(value: str) -> dict[str, str | bool]:
    """``public, max-age=10`` -> ``{"public": True, "max-age": "10"}`` (RFC 9111 5.2)."""
    out: dict[str, str | bool] = {}
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        out[name.lower()] = arg if _ else True
    return out


def rfc9111_remaining_freshness(headers) -> int:
    """freshness_lifetime - current_age, as RFC 9111 4.2 computes them.

    No Date is sent and the test client adds no delay: the apparent age is 0
    and the corrected age is the ``Age`` header (4.2.3); a cache that has just
    received the answer adds no resident time.
    """
    lifetime = int(directives(headers["Cache-Control"])["max-age"])
    current_age = int(headers["Age"])
    return lifetime - current_age


# -- the arithmetic an RFC 9111 cache does with our headers -------------------


@pytest.mark.parametrize("age_ms", [0, 3_400, 9_900, 10_000, 12_500, 59_000])
def test_cache_control_and_age_give_our_freshness(clock, client, upstream, age_ms):
    first = get(client)
    fetched_at = round(clock(), 3)
    clock.advance(age_ms)
    answer = first if age_ms == 0 else get(client)
    ours = fetched_at + FRESH_MS / 1000 - clock()  # remaining fresh time, in seconds
    theirs = rfc9111_remaining_freshness(answer)
    # Whole seconds: Age is rounded down, so a cache downstream is at most
    # one second behind us, never fresh when we are stale or the reverse.
    assert 0 <= theirs - ours < 1
    assert (theirs > 0) == (ours > 0)
    assert answer["Cache-Control"] == CACHE_CONTROL
    if theirs <= 0:  # stale for both: we serve it while we refresh, and so may they
        assert answer["X-Cache"] == "STALE"
        assert -theirs <= int(directives(answer["Cache-Control"])["stale-while-revalidate"])


def test_stale_if_error_window_matches_ours(clock, client, upstream):
    get(client)
    clock.advance(STALE_MS + 30_000)  # past stale-while-revalidate, within stale-if-error
    upstream.mode, upstream.status = "status", 503
    answer = get(client)
    assert answer.status_code == 200 and answer["X-Cache"] == "STALE"
    staleness = -rfc9111_remaining_freshness(answer)
    window = directives(answer["Cache-Control"])
    assert int(window["stale-while-revalidate"]) < staleness <= int(window["stale-if-error"])
    # The last second we may serve it on error is the last they may.
    assert int(window["stale-if-error"]) == (ERROR_MS - FRESH_MS) // 1000


def test_a_cached_404_has_max_age_and_no_stale_directives(clock, client, upstream):
    upstream.mode, upstream.status = "status", 404
    miss = get(client)
    clock.advance(2_000)
    hit = get(client)
    for answer in (miss, hit):
        assert answer.status_code == 404
        assert answer["Cache-Control"] == "public, max-age=5"
        assert answer["ETag"] == miss["ETag"]
    assert hit["X-Cache"] == "HIT" and hit["Age"] == "2"
    assert rfc9111_remaining_freshness(hit) == 3
    # A conditional request for a 404 gets the 404 (RFC 9110 13.2.1: not 2xx).
    again = get(client, if_none_match=miss["ETag"])
    assert again.status_code == 404 and again.content == miss.content


def test_private_replaces_public():
    assert cache_control(POLICY, private=True) == CACHE_CONTROL.replace("public", "private")
    assert cache_control(POLICY, private=True, negative=True) == "private, max-age=5"
    entry = Entry("h", "products:k", "products", "n", 200, b"{}", "application/json", 100.0)
    response = build_response(Answer(entry, "HIT", "memory", None, POLICY), 101.0, private=True)
    assert response["Cache-Control"].startswith("private, max-age=10,")
    assert "public" not in response["Cache-Control"]


def test_cache_control_follows_the_policy():
    assert cache_control(Policy(1_500, 1_500, 1_500, 900)) == (
        "public, max-age=1, stale-while-revalidate=0, stale-if-error=0"
    )
    # The strings are built once per policy and reused.
    assert cache_control(POLICY) is cache_control(POLICY)


# -- the ETag -------------------------------------------------------------------


def test_the_etag_is_strong_and_follows_the_body(clock, client, upstream):
    first = get(client)
    hit = get(client)
    etag = first["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)  # strong: no W/
    assert hit["ETag"] == etag == body_etag(200, first.content)
    clock.advance(STALE_MS + 1)  # expired: fetched again, and the upstream's body changes
    changed = get(client)
    assert changed.content != first.content
    assert changed["ETag"] != etag


def test_the_etag_is_computed_once_per_entry_object():
    entry = Entry("h", "k", "e", "n", 200, b'{"a":1}', "application/json", 1.0)
    assert entry.etag is entry.etag
    assert entry.etag == Entry("h", "k", "e", "n", 200, b'{"a":1}', "application/json", 9.0).etag
    assert entry.etag != Entry("h", "k", "e", "n", 404, b'{"a":1}', "application/json", 1.0).etag
    assert len(entry.etag) <= entry.size - len(entry.body)  # counted in the memory budget


@pytest.mark.parametrize(
    "header, matches",
    [
        ('"abc"', True),
        ('W/"abc"', True),  # weak comparison (RFC 9110 8.8.3.2)
        ('"x", W/"abc"', True),
        ('"x" ,"abc" ', True),
        ("*", True),
        (" * ", True),
        ('"x", "y"', False),
        ('"ab"', False),
        ('"abc,def"', False),  # a comma is part of a tag, not a separator
        ("abc", False),  # unquoted: not an entity-tag
        ("", False),
    ],
)
def test_if_none_match_parsing(header, matches):
    assert etag_matches(header, '"abc"') is matches
    assert etag_matches('"x", "abc,def"', '"abc,def"')


# -- 304 ----------------------------------------------------------------------------


def assert_not_modified(conditional, full) -> None:
    assert conditional.status_code == 304
    assert conditional.content == b""
    for name in REPEATED:
        assert conditional[name] == full[name], name
    # None from us (gevent's pywsgi refuses the 200's); 0 where a layer adds it
    # (Django's CommonMiddleware, serve), as for Django's own 304s.
    assert conditional.get("Content-Length", "0") == "0"
    assert "Content-Type" not in conditional


def test_if_none_match_gets_304_from_memory(clock, client, upstream):
    first = get(client)
    clock.advance(2_000)
    for header in (first["ETag"], f"W/{first['ETag']}", f'"other", {first["ETag"]}', "*"):
        conditional = get(client, if_none_match=header)
        full = get(client)
        assert parse_cache_status(conditional["Cache-Status"])["detail"] == "memory"
        assert_not_modified(conditional, full)
    assert upstream.count == 1


def test_304_for_head_and_for_a_stale_answer(clock, client, upstream):
    first = get(client)
    clock.advance(FRESH_MS + 1_000)
    conditional = get(client, method="head", if_none_match=first["ETag"])
    assert conditional.status_code == 304 and conditional["X-Cache"] == "STALE"
    assert conditional["Age"] == "11"


def test_no_304_without_a_matching_if_none_match(clock, client, upstream):
    first = get(client)
    for headers in ({}, {"if_none_match": '"something-else"'}, {"if_modified_since": "x"}):
        again = get(client, **headers)
        assert again.status_code == 200 and again.content == first.content
    # A changed body: the old tag no longer matches, the new body is sent.
    clock.advance(STALE_MS + 1)
    changed = get(client, if_none_match=first["ETag"])
    assert changed.status_code == 200 and changed.content != first.content


@pytest.fixture(params=["redis", "db"])
def lower_tier(request, settings, upstream):
    """The coalescer with ``request.param`` as the tier a memory miss reads first."""
    extra: dict[str, object] = {}
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        extra = {"REDIS_URL": url, "REDIS_PREFIX": f"t{uuid.uuid4().hex[:8]}"}
    configure(settings, upstream, **extra)
    yield request.param
    settle()


def test_if_none_match_gets_304_from_every_lower_tier(lower_tier, client, upstream):
    first = get(client)
    coalescer = runtime.get_coalescer()
    coalescer.flush()
    coalescer.memory.clear()  # the entry is decoded again, from the tier below
    conditional = get(client, if_none_match=first["ETag"])
    assert parse_cache_status(conditional["Cache-Status"])["detail"] == lower_tier
    assert conditional["X-Cache"] == "HIT"
    coalescer.memory.clear()  # the 200 it stands for, from the same tier
    assert_not_modified(conditional, get(client))
    assert upstream.count == 1


# -- errors and HEAD ---------------------------------------------------------------


def test_errors_are_no_store(clock, client, upstream):
    bad = client.get("/products", {"productId": "not valid!"})
    assert bad.status_code == 400 and bad["Cache-Control"] == "no-store"
    upstream.mode, upstream.status = "status", 503
    failed = get(client, "SKU-502")
    assert failed.status_code == 502 and failed["Cache-Control"] == "no-store"
    assert "ETag" not in failed
    upstream.mode, upstream.delay = "ok", 1.5  # over UPSTREAM_TIMEOUT_MS
    timed_out = get(client, "SKU-504", if_none_match="*")  # no 304 without an entry
    assert timed_out.status_code == 504 and timed_out["Cache-Control"] == "no-store"


def test_503_is_no_store():
    error = UpstreamOverloaded("too many upstream calls in progress")
    error.retry_after = 1
    response = build_response(Answer(None, "", "upstream", error, POLICY), 1.0)
    assert response.status_code == 503
    assert response["Cache-Control"] == "no-store" and response["Retry-After"] == "1"


def test_head_is_answered_like_get_without_a_body(clock, client, upstream):
    head_miss = get(client, "SKU-HEAD", method="head")
    full = get(client, "SKU-HEAD")
    head_hit = get(client, "SKU-HEAD", method="head")
    assert head_miss.status_code == head_hit.status_code == 200
    assert head_miss["X-Cache"] == "MISS" and head_hit["X-Cache"] == "HIT"
    for head in (head_miss, head_hit):
        assert head.content == b""
        assert head["Content-Length"] == str(len(full.content))
        assert head["ETag"] == full["ETag"]
        assert head["Content-Type"] == "application/json"
        assert head["Cache-Control"] == CACHE_CONTROL
    assert upstream.count == 1  # a HEAD is a read like a GET: it fills the cache


def test_build_response_without_a_request_is_a_plain_get():
    entry = Entry("h", "products:k", "products", "n", 200, b'{"a":1}', "application/json", 100.0)
    response = build_response(Answer(entry, "HIT", "memory", None, POLICY), 103.5)
    assert response.status_code == 200 and response.content == b'{"a":1}'
    assert response["Age"] == "3" and response["ETag"] == entry.etag
    assert POLICY.state(entry, 103.5) is State.FRESH


# -- against manage.py serve ---------------------------------------------------------


def start_serve(upstream, database_url: str, runner=serve):
    env = {
        "PRODUCT_API_BASE": upstream.url,
        "DATABASE_URL": database_url,
        "UPSTREAM_TIMEOUT_MS": "1000",
    }
    migrated = manage("migrate", "--noinput", env=env)
    assert migrated.returncode == 0, migrated.stderr
    return runner(env)


PRODUCT_PATH = "/products?productId=SKU1&fields=name,price"


@pytest.mark.e2e
def test_304_after_a_restart(upstream, tmp_path):
    """The ETag is the body's: a restarted server, reading the database, agrees."""
    database_url = f"sqlite:///{tmp_path / 'restart.sqlite3'}"
    server = start_serve(upstream, database_url)
    try:
        first = server.get(PRODUCT_PATH)
        assert first.status_code == 200
    finally:
        assert server.stop() == 0  # a graceful stop writes the entry out
    server = start_serve(upstream, database_url)
    try:
        conditional = server.get(PRODUCT_PATH, headers={"If-None-Match": first.headers["ETag"]})
        full = server.get(PRODUCT_PATH)
    finally:
        server.stop()
    assert conditional.status_code == 304 and conditional.content == b""
    assert parse_cache_status(conditional.headers["Cache-Status"])["detail"] == "db"
    assert conditional.headers["ETag"] == first.headers["ETag"] == full.headers["ETag"]
    assert conditional.headers["Cache-Control"] == full.headers["Cache-Control"]
    assert full.content == first.content
    assert upstream.count == 1


def read_response(sock: socket.socket, buffer: bytes, has_body: bool) -> tuple[bytes, bytes]:
    """One response's head off a keep-alive socket, its body if it has one; the rest."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-head: {buffer!r}"
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    if not has_body:
        return head, rest
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


@pytest.mark.e2e
@pytest.mark.parametrize("runner", [serve, uvicorn], ids=["serve", "uvicorn"])
def test_head_and_304_are_well_framed_on_a_keep_alive_connection(upstream, tmp_path, runner):
    """HEAD, a conditional GET, then a GET on one connection: three whole answers.

    A body after the HEAD or the 304 would be read as the start of the next
    answer: the third answer's status line would be garbage.
    """
    server = start_serve(upstream, f"sqlite:///{tmp_path / 'framing.sqlite3'}", runner)
    try:
        etag = server.get(PRODUCT_PATH).headers["ETag"]
        requests_ = (
            f"HEAD {PRODUCT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            f"GET {PRODUCT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: {etag}\r\n\r\n"
            f"GET {PRODUCT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(requests_.encode())  # pipelined: framing errors cannot hide
            head, rest = read_response(sock, b"", has_body=False)
            not_modified, rest = read_response(sock, rest, has_body=False)
            full, rest = read_response(sock, rest, has_body=True)
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                rest += sock.recv(65536)  # nothing more was sent
    finally:
        server.stop()
    assert head.startswith(b"HTTP/1.1 200"), head
    assert not_modified.startswith(b"HTTP/1.1 304"), not_modified
    assert full.startswith(b"HTTP/1.1 200"), full
    assert rest == b""
    body_length = len(full.partition(b"\r\n\r\n")[2])
    assert f"content-length: {body_length}".encode() in head.lower()
    assert f"etag: {etag}".encode() in not_modified.lower()
    assert not re.search(rb"(?im)^content-type:", not_modified)
