"""Where the suite's PostgreSQL and Redis are, from the environment.

Read by ``tests/settings.py`` and ``tests/conftest.py`` (and by subprocesses
that import them) without side effects: nothing here connects, and nothing
touches Django's settings.
"""

from __future__ import annotations

import os

#: ``REQUIRE_SERVICES=1`` (CI): a service that does not answer fails the tests
#: that need it, where it otherwise skips them.
SERVICES_REQUIRED = os.environ.get("REQUIRE_SERVICES") == "1"
POSTGRES_URL = os.environ.get(
    "DATABASE_URL_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("REDIS_URL_TEST", "redis://127.0.0.1:6379/15")
