from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from coalescing.entry import Entry, make_key
from testkit.services import POSTGRES_URL, REDIS_URL, SERVICES_REQUIRED
from testkit.upstream import FakeUpstream


class Clock:
    """A clock the test moves: a coalescer's ``clock`` (``coalescer.clock = Clock()``)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = float(round(time.time())) if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1000.0


def make_entry(
    name: str = "SKU1",
    *,
    key_hash: str | None = None,
    cache_key: str | None = None,
    endpoint: str = "products",
    status: int | None = None,
    negative: bool = False,
    body: bytes | None = None,
    body_size: int | None = None,
    fetched_at: float | None = None,
    age_ms: float | None = None,
    now: float | Callable[[], float] | None = None,
    params: str = "",
    tags: tuple[str, ...] = (),
    upstream_etag: str = "",
    upstream_modified: str = "",
    content_type: str = "application/json",
) -> Entry:
    """The one ``Entry`` factory of the suite.

    Its key is the endpoint's ``cache_key`` (default ``"<name>::*"``, as a
    lookup without fields makes it) through :func:`make_key`; ``key_hash``
    overrides the hash, for tier tests that use short ones. The body is
    ``body``, else ``body_size`` random bytes (random: PostgreSQL would
    compress a repeated byte to nothing), else a product's JSON (a 404's for
    a negative entry). The fetch time is ``fetched_at``, else ``age_ms``
    before ``now`` (a number or a clock; the wall clock by default) rounded to
    the millisecond the tiers keep, else 1000.0 (long ago).
    """
    if status is None:
        status = 404 if negative else 200
    readable, hashed = make_key(endpoint, f"{name}::*" if cache_key is None else cache_key)
    if body is None:
        if body_size is not None:
            body = os.urandom(body_size)
        elif status == 404:
            body = b'{"detail":"Not found"}'
        else:
            body = b'{"id":"%s","price":3}' % name.encode()
    if fetched_at is None:
        if age_ms is None:
            fetched_at = 1000.0
        else:
            at = now() if callable(now) else (time.time() if now is None else now)
            fetched_at = round(at - age_ms / 1000.0, 3)
    return Entry(
        key_hash=hashed if key_hash is None else key_hash,
        key=readable,
        endpoint=endpoint,
        name=name,
        status=status,
        body=body,
        content_type=content_type,
        fetched_at=fetched_at,
        params=params,
        upstream_etag=upstream_etag,
        upstream_modified=upstream_modified,
        tags=tags,
    )


def missing_service(reason: str) -> None:
    """Skip with a one-line reason, or fail when REQUIRE_SERVICES=1."""
    if SERVICES_REQUIRED:
        pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def _upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture
def upstream(_upstream_server: FakeUpstream) -> FakeUpstream:
    """The fake upstream, reset to healthy and zero calls for each test."""
    _upstream_server.reset()
    return _upstream_server


@functools.cache
def postgres_unavailable() -> str | None:
    """Why the ``postgres`` alias's server cannot be used, or None; asked once."""
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except Exception as exc:
        return f"PostgreSQL does not answer at {POSTGRES_URL} ({type(exc).__name__})"
    return None


@pytest.fixture(scope="session")
def _postgres_or_a_stand_in() -> None:
    """Before any test database is made: if PostgreSQL does not answer, the
    ``postgres`` alias becomes an in-memory SQLite database, so that the tests
    marked for both databases still set up, and those that use PostgreSQL
    skip (or fail) through :func:`postgres_alias` with the reason."""
    if postgres_unavailable() is None:
        return
    from django.conf import settings
    from django.db import connections

    conf = settings.DATABASES["postgres"]  # the dict the connection handler reads
    conf.update(
        ENGINE="django.db.backends.sqlite3",
        NAME=":memory:",
        OPTIONS={},
        TEST={**conf.get("TEST", {}), "NAME": None},
    )
    try:
        del connections["postgres"]  # made before: it would keep the PostgreSQL backend
    except AttributeError:
        pass


@pytest.fixture(scope="session")
def django_db_setup(_postgres_or_a_stand_in, django_db_setup):
    """pytest-django's, once the ``postgres`` alias is known to be usable."""
    return django_db_setup


@pytest.fixture
def postgres_alias() -> str:
    """The PostgreSQL alias; a skip (a failure under REQUIRE_SERVICES=1) when its
    server does not answer."""
    reason = postgres_unavailable()
    if reason is not None:
        missing_service(reason)
    return "postgres"


@pytest.fixture(params=["default", "postgres"], ids=["sqlite", "postgres"])
def db_alias(request) -> str:
    """Each database the persistent tier must work on."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_alias")
    return "default"


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for server subprocesses; its URL."""
    try:
        import psycopg

        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=2)
    except Exception:
        missing_service(f"PostgreSQL does not answer at {POSTGRES_URL}")
    name = f"coalescing_e2e_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception:
        missing_service(f"Redis does not answer at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture(scope="session", autouse=True)
def _close_stray_postgres_sessions(django_db_setup, django_db_blocker):
    """Writer threads keep their own connections; end them before the test
    database is dropped, or PostgreSQL refuses to drop it."""
    yield
    from django.conf import settings

    if postgres_unavailable() is not None:
        return
    import psycopg

    name = settings.DATABASES["postgres"]["TEST"]["NAME"]
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=2) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
