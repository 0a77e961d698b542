"""Test settings: the project's, with a per-run SQLite file and, when it
answers, a PostgreSQL alias so the persistent tier is tested on both."""

from __future__ import annotations

import os
import tempfile

from coalesce_project.settings import *  # noqa: F403
from coalesce_project.settings import DATABASES

RUN_ID = os.getpid()
SERVICES_REQUIRED = os.environ.get("REQUIRE_SERVICES") == "1"
POSTGRES_URL = os.environ.get(
    "DATABASE_URL_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres"
)


def _postgres_answers(url: str) -> bool:
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=2).close()
        return True
    except Exception:
        return False


DATABASES["default"]["TEST"] = {
    "NAME": os.path.join(tempfile.gettempdir(), f"coalescing-test-{RUN_ID}.sqlite3")
}
if _postgres_answers(POSTGRES_URL):
    import dj_database_url

    DATABASES["postgres"] = dj_database_url.parse(POSTGRES_URL, conn_max_age=0)
    DATABASES["postgres"]["TEST"] = {"NAME": f"test_coalescing_{RUN_ID}"}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {"version": 1, "disable_existing_loggers": False}
