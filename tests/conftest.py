from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.upstream import FakeUpstream

SERVICES_REQUIRED = os.environ.get("REQUIRE_SERVICES") == "1"
POSTGRES_URL = os.environ.get(
    "DATABASE_URL_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("REDIS_URL_TEST", "redis://127.0.0.1:6379/15")


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


@pytest.fixture
def postgres_alias(settings) -> str:
    if "postgres" not in settings.DATABASES:
        missing_service(f"PostgreSQL does not answer at {POSTGRES_URL}")
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

    if "postgres" not in settings.DATABASES:
        return
    import psycopg

    name = settings.DATABASES["postgres"]["TEST"]["NAME"]
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=2) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
